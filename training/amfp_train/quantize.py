"""INT8: static QDQ quantization with onnxruntime, calibrated on training ROIs.

* QDQ format, per-channel int8 weights, uint8 activations (ORT's defaults
  for QDQ, which tract reads as QuantizeLinear/DequantizeLinear pairs).
* Calibration data: class-balanced training ROIs, normalised like the
  model's input (never validation or test ROIs: calibration is training).
* ``graph.value_info`` is cleared afterwards: ORT's shape inference leaves a
  symbolic batch dim (``n``) on every intermediate tensor, and tract then
  fails to unify it with a fixed ROI batch (tract-speed.md).
* ``--format qoperator --per-tensor`` instead writes QLinearConv nodes (Conv and Relu only, so
  no com.microsoft contrib ops that tract cannot read): the only int8 form tract runs with
  integer kernels. With QDQ, tract dequantizes every activation and convolves in f32, so QDQ
  int8 costs it more than f32; per-channel QLinearConv it requantizes with generic element-wise
  ops, slower still (BENCHMARKS.md, "int8 in tract"). Not the shipped default yet: its accuracy
  must be evaluated on a retrained model first.
* All ``amfp.*`` metadata of the f32 model is copied (quantize_static does not
  promise to keep it) and ``amfp.name`` gets an ``-int8`` suffix.
* The embedding output (docs/gallery.md), when the f32 model has one, stays float32 under the
  same name: the graph is quantized without it (so the quantizer neither quantizes it to uint8
  nor changes anything for it) and ``embedding.add_embedding_output``'s surgery puts it back on
  the int8 graph, taking the float tensor before the head's QuantizeLinear. The int8 logits are
  therefore exactly those of a model quantized without the output.

CLI::

    python -m amfp_train.quantize --model build/model/amfp.onnx --data DIR \
        --out build/model/amfp.int8.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from .dataset import read_dataset
from .store import BalancedRois

log = logging.getLogger(__name__)


class _NoPreprocessNag(logging.Filter):
    """onnxruntime advises shape-inference pre-processing on every call; our graphs are plain convs."""

    def filter(self, record):
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


logging.getLogger().addFilter(_NoPreprocessNag())


class RoiReader:
    """onnxruntime CalibrationDataReader over pre-drawn normalised training ROIs."""

    def __init__(self, batches: list[np.ndarray], input_name: str = "input"):
        self.batches = batches
        self.name = input_name
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def calibration_batches(meta: dict, data, n_rois: int = 256, batch: int = 16, seed: int = 99,
                        ds=None) -> list[np.ndarray]:
    """Class-balanced training ROIs with flips/turns, normalised, in batches of `batch`."""
    ds = ds or read_dataset(data, meta.get("amfp.task", "machine"))
    labels = meta["amfp.labels"]
    parts = [p for p in ds.split("train") if p.label in set(labels)]
    it = iter(BalancedRois(parts, labels, meta["amfp.pixel_size_um"], meta["amfp.roi_px"],
                           meta["amfp.min_foreground"], batch, meta["amfp.mean"], meta["amfp.std"],
                           meta["amfp.channels"], seed))
    return [next(it)[0].numpy() for _ in range(max(1, n_rois // batch))]


def fixed_batch(model_proto) -> int | None:
    d = model_proto.graph.input[0].type.tensor_type.shape.dim[0]
    return d.dim_value if d.HasField("dim_value") else None


def quantize(model: str | Path, data, out: str | Path, n_rois: int = 256, method: str = "minmax",
             seed: int = 99, ds=None, fmt: str = "qdq", per_channel: bool = True) -> dict:
    """Quantize `model` to `out`; returns a summary (node counts, sizes)."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from .embedding import add_embedding_to_proto, check_embedding, strip_embedding_output
    from .evaluate import ort_session, read_meta

    meta = read_meta(model)
    src = onnx.load(str(model))
    props = {p.key: p.value for p in src.metadata_props}
    emb_name = props.get("amfp.embedding_output")
    emb_kind = props.get("amfp.embedding_kind")
    b = fixed_batch(src) or 16
    batches = calibration_batches(meta, data, n_rois, b, seed, ds)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    out = Path(out)
    if fmt not in ("qdq", "qoperator"):
        raise ValueError(f"format {fmt!r}: qdq or qoperator")
    plain = model
    if emb_name:  # quantize the graph without the embedding output (added back below)
        plain = out.with_name(out.name + ".no-embedding.tmp.onnx")
        onnx.save(strip_embedding_output(onnx.load(str(model))), str(plain))
    try:
        quantize_static(
            str(plain), str(out), RoiReader(batches),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator, per_channel=per_channel,
            op_types_to_quantize=None if fmt == "qdq" else ["Conv", "Relu"],
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        if plain != model:
            Path(plain).unlink(missing_ok=True)
    q = onnx.load(str(out))
    del q.graph.value_info[:]
    del q.metadata_props[:]
    props["amfp.name"] = props.get("amfp.name", "model") + "-int8"
    for k, v in props.items():
        q.metadata_props.add(key=k, value=v)
    q.doc_string = src.doc_string + f" (int8 {'QDQ' if fmt == 'qdq' else 'QOperator'}, " \
        f"{'per-channel' if per_channel else 'per-tensor'} weights)"
    emb_info = None
    if emb_name:
        before = onnx.load(str(out))  # as quantized, without the output
        head = add_embedding_to_proto(q, emb_name, emb_kind)  # sets the three keys again
        if props.get("amfp.embedding_dim") != str(head["dim"]):
            raise ValueError(f"int8 embedding width {head['dim']} != f32's {props.get('amfp.embedding_dim')}")
        emb_info = check_embedding(before, q, name=emb_name)
    onnx.checker.check_model(q, full_check=False)
    onnx.save(q, str(out))

    # it runs, and agrees with f32 on the calibration ROIs (a smoke test; evaluate.py does parts)
    s32, s8 = ort_session(model), ort_session(out)
    x = np.concatenate(batches[:4])
    y32 = np.concatenate([s32.run(None, {"input": x[i:i + b]})[0] for i in range(0, len(x), b)])
    y8 = np.concatenate([s8.run(None, {"input": x[i:i + b]})[0] for i in range(0, len(x), b)])
    ops: dict[str, int] = {}
    for nd in q.graph.node:
        ops[nd.op_type] = ops.get(nd.op_type, 0) + 1
    info = {"path": str(out), "ops": ops, "calibration_rois": sum(len(x) for x in batches),
            "bytes_f32": Path(model).stat().st_size, "bytes_int8": out.stat().st_size,
            "argmax_agreement_calib": float((y32.argmax(1) == y8.argmax(1)).mean()),
            "max_abs_logit_diff_calib": float(np.abs(y32 - y8).max())}
    if emb_name:
        e32 = np.concatenate([s32.run([emb_name], {"input": x[i:i + b]})[0] for i in range(0, len(x), b)])
        e8 = np.concatenate([s8.run([emb_name], {"input": x[i:i + b]})[0] for i in range(0, len(x), b)])
        info["embedding"] = {"output": emb_name, "dim": int(e8.shape[1]), "source": emb_info["source"],
                             "max_abs_diff_calib": float(np.abs(e32 - e8).max()),
                             "scale_calib": float(np.abs(e32).max())}
    log.info("int8 %s: %s", out, json.dumps(info))
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="dataset whose training ROIs calibrate")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rois", type=int, default=256)
    ap.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--format", default="qdq", choices=["qdq", "qoperator"],
                    help="qdq (default, shipped) or qoperator (QLinearConv: tract's integer kernels)")
    ap.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (tract's fast QLinearConv)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(quantize(a.model, a.data, a.out, a.rois, a.method, fmt=a.format, per_channel=not a.per_tensor),
                     indent=1))


if __name__ == "__main__":
    main()
