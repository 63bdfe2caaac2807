"""Export a checkpoint to the ONNX model the daemon loads (the metadata contract, docs/model-contract.md).

* opset 17, ``torch.onnx.export(..., dynamo=False)``: the TorchScript exporter
  gives the plain Conv/Relu/GlobalAveragePool/Gemm graph tract loads; the
  dynamo exporter's output has been less predictable for tract.
* BatchNorm folded into the convs before export (EdgeNet.fuse); the export
  check below fails if a BatchNormalization node survives.
* Input ``input`` NCHW float32 [N, C, roi, roi], outputs ``logits`` [N, classes] and
  ``embedding`` [N, D] (docs/gallery.md: the vector the linear head reads; EdgeNet's pooled
  vector before dropout, a timm net's ``forward_head(pre_logits=True)``), declared by the
  ``amfp.embedding_*`` keys. ``--no-embedding`` exports the logits alone.
  The batch is dynamic by default (``--batch 0``); ``--batch 16`` fixes it,
  which tract prefers (the daemon runs a fixed ROI batch).
* Every ``amfp.*`` key of the contract is written; onnx.checker must pass and
  onnxruntime must reproduce PyTorch's logits and embedding (max abs diff reported, 1e-4
  tolerance relative to each output's scale by default).

CLI::

    python -m amfp_train.export --checkpoint build/model/checkpoint.pt --out build/model/amfp.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .embedding import KEYS as EMBEDDING_KEYS
from .embedding import OUTPUT as EMBEDDING_OUTPUT
from .embedding import embedding_props
from .models import WithEmbedding, build_model, fold_batchnorm

log = logging.getLogger(__name__)

REQUIRED_KEYS = (
    "amfp.schema", "amfp.name", "amfp.task", "amfp.labels", "amfp.label_process",
    "amfp.pixel_size_um", "amfp.roi_px", "amfp.channels", "amfp.mean", "amfp.std",
    "amfp.min_foreground", "amfp.votes", "amfp.unknown_threshold", "amfp.trained_on",
)


def metadata_props(meta: dict) -> dict[str, str]:
    """Checkpoint meta -> the contract's string-valued metadata_props."""
    return {
        "amfp.schema": "1",
        "amfp.name": str(meta["name"]),
        "amfp.task": str(meta["task"]),
        "amfp.labels": json.dumps(list(meta["labels"])),
        "amfp.label_process": json.dumps(dict(meta["label_process"])),
        "amfp.pixel_size_um": repr(float(meta["pixel_size_um"])),
        "amfp.roi_px": str(int(meta["roi_px"])),
        "amfp.channels": str(int(meta["channels"])),
        "amfp.mean": f"{float(meta['mean']):.7g}",
        "amfp.std": f"{float(meta['std']):.7g}",
        "amfp.min_foreground": repr(float(meta["min_foreground"])),
        "amfp.votes": str(int(meta["votes"])),
        "amfp.unknown_threshold": f"{float(meta['unknown_threshold']):.4f}",
        "amfp.trained_on": str(meta["trained_on"]),
    }


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    ck = torch.load(str(path), map_location="cpu", weights_only=False)
    meta = ck["meta"]
    model = build_model(ck["arch"], len(meta["labels"]), meta["channels"], **ck.get("model_kw", {}))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, meta


def check_metadata(model_proto) -> None:
    """Raise if a contract key is missing or a JSON value does not parse / match the output size."""
    props = {p.key: p.value for p in model_proto.metadata_props}
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise ValueError(f"missing metadata keys: {missing}")
    labels = json.loads(props["amfp.labels"])
    lp = json.loads(props["amfp.label_process"])
    if set(lp) != set(labels):
        raise ValueError("amfp.label_process keys differ from amfp.labels")
    out = model_proto.graph.output[0].type.tensor_type.shape.dim
    if out and out[-1].HasField("dim_value") and out[-1].dim_value != len(labels):
        raise ValueError(f"output has {out[-1].dim_value} classes, amfp.labels {len(labels)}")
    given = [k for k in EMBEDDING_KEYS if k in props]
    if given and len(given) != len(EMBEDDING_KEYS):
        raise ValueError(f"the amfp.embedding_* keys come together: only {given}")
    if given:
        outs = {o.name: o for o in model_proto.graph.output}
        name, dim = props["amfp.embedding_output"], int(props["amfp.embedding_dim"])
        if name not in outs:
            raise ValueError(f"amfp.embedding_output {name!r} is not a graph output")
        e = outs[name].type.tensor_type
        if e.elem_type != 1 or len(e.shape.dim) != 2 or (e.shape.dim[1].HasField("dim_value")
                                                         and e.shape.dim[1].dim_value != dim):
            raise ValueError(f"output {name!r} is not float32 [N, {dim}]")


def export(checkpoint: str | Path, out: str | Path, batch: int = 0, name: str | None = None,
           atol: float = 1e-4, parity_rois: int = 16, seed: int = 0, embedding: bool = True) -> dict:
    """Export, attach metadata, check; returns {'path', 'max_abs_diff', ...}."""
    import onnx

    model, meta = load_checkpoint(checkpoint)
    if name:
        meta = dict(meta, name=name)
    fold_batchnorm(model)
    c, r = meta["channels"], meta["roi_px"]
    n = batch or 2
    dummy = torch.zeros(n, c, r, r)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = WithEmbedding(model).eval() if embedding else model
    outputs = ["logits", EMBEDDING_OUTPUT] if embedding else ["logits"]
    with torch.no_grad():
        dim = int(net(dummy)[1].shape[1]) if embedding else 0
    with warnings.catch_warnings():  # the TorchScript exporter is chosen on purpose (tract)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (dummy,), str(out), dynamo=False, opset_version=17,
            input_names=["input"], output_names=outputs, do_constant_folding=True,
            dynamic_axes=None if batch else {k: {0: "n"} for k in ["input", *outputs]},
        )
    m = onnx.load(str(out))
    del m.graph.value_info[:]  # keep tract's fixed batch free of symbolic dims
    del m.metadata_props[:]
    props = metadata_props(meta)
    if embedding:
        props.update(embedding_props(dim))
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.doc_string = f"amfp model {meta['name']}: {meta['task']} from {r}px ROIs at {meta['pixel_size_um']} um/px"
    onnx.checker.check_model(m, full_check=True)
    check_metadata(m)
    bn = [nd.name for nd in m.graph.node if nd.op_type == "BatchNormalization"]
    if bn:
        log.warning("BatchNormalization nodes left in the graph: %s", bn[:5])
    onnx.save(m, str(out))

    # parity: random normalised inputs (what ROIs look like after mean/std)
    from .evaluate import ort_session

    g = np.random.default_rng(seed)
    x = g.standard_normal((batch or parity_rois, c, r, r)).astype(np.float32)
    sess = ort_session(out)
    got = sess.run(outputs, {"input": x})
    with torch.no_grad():
        y_pt = model(torch.from_numpy(x)).numpy()  # the plain model: the wrapper must not change the logits
        e_pt = net(torch.from_numpy(x))[1].numpy() if embedding else None
    diff = float(np.abs(got[0] - y_pt).max())
    scale = float(np.abs(y_pt).max())
    info = {"path": str(out), "max_abs_diff": diff, "logit_scale": scale, "batch": batch or "dynamic",
            "batchnorm_nodes": len(bn), "ops": sorted({nd.op_type for nd in m.graph.node})}
    log.info("exported %s: ORT vs torch max |diff| %.2e (logits up to %.1f), ops %s", out, diff, scale,
             info["ops"])
    if diff > atol * max(1.0, scale):
        raise AssertionError(f"ONNX Runtime differs from PyTorch by {diff:.3g} (> {atol} x {max(1.0, scale):.3g})")
    if embedding:
        ediff = float(np.abs(got[1] - e_pt).max())
        escale = float(np.abs(e_pt).max())
        info.update(embedding_dim=dim, embedding_max_abs_diff=ediff, embedding_scale=escale)
        log.info("embedding [N, %d]: ORT vs torch max |diff| %.2e (values up to %.2f)", dim, ediff, escale)
        if got[1].shape != (len(x), dim) or ediff > atol * max(1.0, escale):
            raise AssertionError(f"embedding: ONNX Runtime {got[1].shape} differs from PyTorch by {ediff:.3g}")
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=0, help="fixed batch (0: dynamic)")
    ap.add_argument("--name", help="amfp.name (default: the checkpoint's)")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--no-embedding", action="store_true", help="logits only (no embedding output)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(export(a.checkpoint, a.out, a.batch, a.name, a.atol, embedding=not a.no_embedding),
                     indent=1))


if __name__ == "__main__":
    main()
