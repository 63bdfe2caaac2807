"""The model's embedding output (docs/gallery.md): the vector its linear head reads, as a second
graph output, for the fingerprint gallery.

``add_embedding_output`` is graph surgery on an exported amfp model, f32 or ORT's int8 QDQ:

* from the graph's ``logits`` output it walks back through QuantizeLinear/DequantizeLinear (the
  int8 model's output pair) and a bias Add to the Gemm or MatMul head;
* the head's input tensor is the embedding. In an int8 QDQ model that input is
  ``DequantizeLinear(QuantizeLinear(x))``; the embedding is ``x``, the float tensor before the
  quantization, so it keeps the precision of the layers that made it;
* an Identity node copies it to a new graph output ``embedding`` (or, when the tensor already
  has that name, as the native export names it, the tensor itself becomes the output),
  ``[N, D]`` float32 with N the logits' batch dim and D read from the head's weight;
* the metadata keys ``amfp.embedding_output``, ``amfp.embedding_dim`` and
  ``amfp.embedding_kind`` (``pre-logits``) are set, ``graph.value_info`` is cleared (tract wants
  the fixed ROI batch free of symbolic dims, as export.py and quantize.py do);
* the result is checked with onnxruntime on random inputs: the logits must be bit-identical to
  the input model's, the embedding ``[N, D]``; for a float head also ``emb @ W^T + b == logits``.

Nothing else changes, so the logits the daemon votes with stay what they were. The model file's
sha256 does change (it is another file): a gallery names the sha256 of the model it was fitted
with.

``strip_embedding_output`` undoes it (quantize.py quantizes the graph without the output and
adds it back to the int8 model, so the quantizer neither quantizes nor reorders it).

CLI (OUT may be IN: it is replaced atomically)::

    python -m amfp_train.embedding --model IN.onnx --out OUT.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OUTPUT = "embedding"
KIND = "pre-logits"
KEYS = ("amfp.embedding_output", "amfp.embedding_dim", "amfp.embedding_kind")


class SurgeryError(ValueError):
    pass


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _initializer_shape(graph, name: str, prod: dict) -> list[int] | None:
    """Shape of a weight given directly, as a Constant, or through DequantizeLinear/Transpose-free
    QDQ (int8 weights)."""
    for init in graph.initializer:
        if init.name == name:
            return list(init.dims)
    node = prod.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return list(a.t.dims)
        return None
    if node.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast"):
        return _initializer_shape(graph, node.input[0], prod)
    return None


def _is_const(graph, name: str, prod: dict) -> bool:
    return _initializer_shape(graph, name, prod) is not None


def find_head(model_proto, logits: str | None = None) -> dict:
    """The linear head behind the logits output.

    Returns {'node', 'input' (the head's input tensor), 'source' (the float tensor the embedding
    copies), 'dim', 'logits', 'weight', 'bias' (names; bias may be None), 'trans_b'}.
    """
    g = model_proto.graph
    outs = [o.name for o in g.output]
    if logits is None:
        logits = "logits" if "logits" in outs else outs[0]
    if logits not in outs:
        raise SurgeryError(f"no graph output {logits!r} (outputs: {outs})")
    prod = _producers(g)
    t = logits
    bias = None
    node = prod.get(t)
    seen = 0
    while node is not None and node.op_type not in ("Gemm", "MatMul"):
        seen += 1
        if seen > 16:
            break
        if node.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity"):
            t = node.input[0]
        elif node.op_type == "Add":  # MatMul + bias
            a, b = node.input[0], node.input[1]
            if _is_const(g, b, prod):
                t, bias = a, b
            elif _is_const(g, a, prod):
                t, bias = b, a
            else:
                raise SurgeryError(f"the logits come from an Add of two computed tensors ({node.name})")
        else:
            raise SurgeryError(f"the logits come from {node.op_type} ({node.name}), not a Gemm/MatMul head")
        node = prod.get(t)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        raise SurgeryError(f"no Gemm/MatMul head found behind {logits!r}")
    head = node
    attrs = {a.name: a for a in head.attribute}
    trans_b = False
    if head.op_type == "Gemm":
        if "transA" in attrs and attrs["transA"].i:
            raise SurgeryError("Gemm head with transA=1 is not supported")
        trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
        if len(head.input) > 2 and head.input[2]:
            bias = head.input[2]
    wshape = _initializer_shape(g, head.input[1], prod)
    if wshape is None or len(wshape) != 2:
        raise SurgeryError(f"the head's weight {head.input[1]!r} is not a constant 2-D tensor")
    dim = wshape[1] if trans_b else wshape[0]
    x = head.input[0]
    src = x
    # int8 QDQ: the head reads DequantizeLinear(QuantizeLinear(float)); take the float
    while True:
        dq = prod.get(src)
        if dq is None or dq.op_type != "DequantizeLinear":
            break
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            break
        src = q.input[0]
    if dim < 2:
        raise SurgeryError(f"embedding width {dim} < 2")
    return {"node": head, "input": x, "source": src, "dim": int(dim), "logits": logits,
            "weight": head.input[1], "bias": bias, "trans_b": trans_b}


def _batch_dim(model_proto, logits: str):
    for o in model_proto.graph.output:
        if o.name == logits:
            d = o.type.tensor_type.shape.dim
            if d:
                return d[0].dim_param if d[0].HasField("dim_param") else (d[0].dim_value or None)
    return None


def strip_embedding_output(model_proto, name: str | None = None):
    """Remove the embedding graph output (and the Identity that only fed it) and its metadata keys,
    in place; returns the model. A model without one is returned unchanged."""
    props = {p.key: p.value for p in model_proto.metadata_props}
    name = name or props.get("amfp.embedding_output", OUTPUT)
    g = model_proto.graph
    keep = [o for o in g.output if o.name != name]
    if len(keep) != len(g.output):
        del g.output[:]
        g.output.extend(keep)
        used = {i for n in g.node for i in n.input}
        for n in list(g.node):
            if n.op_type == "Identity" and list(n.output) == [name] and name not in used:
                g.node.remove(n)
    _set_props(model_proto, {k: None for k in KEYS})
    return model_proto


def _set_props(model_proto, values: dict) -> None:
    """Set (or, for None, remove) metadata keys, keeping the others in their order."""
    props = [(p.key, p.value) for p in model_proto.metadata_props]
    out = [(k, v) for k, v in props if k not in values]
    out += [(k, v) for k, v in values.items() if v is not None]
    del model_proto.metadata_props[:]
    for k, v in out:
        model_proto.metadata_props.add(key=k, value=v)


def embedding_props(dim: int, name: str = OUTPUT, kind: str = KIND) -> dict[str, str]:
    return {"amfp.embedding_output": name, "amfp.embedding_dim": str(int(dim)), "amfp.embedding_kind": kind}


def add_embedding_to_proto(model_proto, name: str = OUTPUT, kind: str = KIND) -> dict:
    """Graph surgery in place (see the module doc); returns the head description."""
    from onnx import TensorProto, helper

    strip_embedding_output(model_proto, name)
    head = find_head(model_proto)
    g = model_proto.graph
    src = head["source"]
    if src != name:
        taken = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {i.name for i in g.initializer}
        if name in taken:
            raise SurgeryError(f"a tensor named {name!r} exists and is not the head's input")
        g.node.append(helper.make_node("Identity", [src], [name], name=f"{name}_output"))
    g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                  [_batch_dim(model_proto, head["logits"]), head["dim"]]))
    del g.value_info[:]
    _set_props(model_proto, embedding_props(head["dim"], name, kind))
    return head


def atomic_save(model_proto, out: str | Path) -> None:
    """onnx.save to a temporary file beside `out`, then rename over it."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model_proto, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _input_shape(model_proto, batch: int) -> list[int]:
    dims = model_proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if shape[0] is None:
        shape[0] = batch
    if any(s is None for s in shape):
        raise SurgeryError(f"input shape {shape} is not fixed apart from the batch")
    return shape


def check_embedding(before, after, seed: int = 0, batch: int = 4, name: str = OUTPUT) -> dict:
    """Run both models in onnxruntime on the same random normalised inputs: logits bit-identical,
    embedding [N, D] float32 and finite; for a float Gemm head the logits recomputed from it."""
    import onnxruntime as ort
    from onnx import numpy_helper

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    shape = _input_shape(after, batch)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    inp = after.graph.input[0].name
    s0 = ort.InferenceSession(before.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(after.SerializeToString(), so, providers=["CPUExecutionProvider"])
    head = find_head(after)
    y0 = s0.run([head["logits"]], {inp: x})[0]
    y1, emb = s1.run([head["logits"], name], {inp: x})
    if not np.array_equal(y0, y1):
        raise SurgeryError(f"the logits changed (max |diff| {np.abs(y0 - y1).max():.3g})")
    if emb.dtype != np.float32 or emb.shape != (shape[0], head["dim"]) or not np.isfinite(emb).all():
        raise SurgeryError(f"embedding output {emb.dtype} {emb.shape}, expected float32 {(shape[0], head['dim'])}")
    info = {"dim": head["dim"], "head": head["node"].op_type, "source": head["source"],
            "logits_identical": True, "rois": int(shape[0])}
    inits = {i.name: i for i in after.graph.initializer}
    if head["source"] == head["input"] and head["weight"] in inits:  # a float head: check the algebra
        w = numpy_helper.to_array(inits[head["weight"]]).astype(np.float64)
        w = w.T if head["trans_b"] else w  # [D, C]
        b = numpy_helper.to_array(inits[head["bias"]]).astype(np.float64) if head["bias"] in inits else 0.0
        rec = emb.astype(np.float64) @ w + b
        err = float(np.abs(rec - y1).max())
        info["recomputed_logits_max_abs_diff"] = err
        if err > 1e-4 * max(1.0, float(np.abs(y1).max())):
            raise SurgeryError(f"logits recomputed from the embedding differ by {err:.3g}")
    return info


def add_embedding_output(in_path: str | Path, out_path: str | Path, name: str = OUTPUT,
                         kind: str = KIND, check: bool = True) -> dict:
    """Add the embedding output to the model at `in_path`, write `out_path` (may be the same file)."""
    import onnx

    before = onnx.load(str(in_path))
    after = onnx.load(str(in_path))
    had = any(o.name == name for o in before.graph.output)
    head = add_embedding_to_proto(after, name, kind)
    onnx.checker.check_model(after, full_check=False)
    info = {"path": str(out_path), "dim": head["dim"], "source": head["source"], "had_embedding": had}
    if check:
        info.update(check_embedding(before, after, name=name))
    atomic_save(after, out_path)
    log.info("embedding output %r (D=%d, from %s) added: %s", name, head["dim"], head["source"], out_path)
    return info


def has_embedding(path: str | Path) -> bool:
    """Whether the model declares (all three keys) and has its embedding output."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    return all(k in props for k in KEYS) and props["amfp.embedding_output"] in {o.name for o in m.graph.output}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="exported amfp model (f32 or int8 QDQ)")
    ap.add_argument("--out", required=True, help="where to write it (may be --model)")
    ap.add_argument("--name", default=OUTPUT, help="graph output name (default: embedding)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(add_embedding_output(a.model, a.out, a.name), indent=1))


if __name__ == "__main__":
    main()
