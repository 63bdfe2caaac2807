"""The embedding output (docs/gallery.md): surgery on exported models keeps the logits bit for bit
and exposes exactly the head's input; export and quantize write it natively."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from amfp_train.embedding import (KEYS, SurgeryError, add_embedding_output, find_head, has_embedding, main,
                                  strip_embedding_output)
from amfp_train.export import export, load_checkpoint
from amfp_train.models import fold_batchnorm


def sess(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def x_batch(n=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def plain(trained, tmp_path_factory):
    """The tiny model exported the old way: logits only."""
    path = tmp_path_factory.mktemp("plain") / "plain.onnx"
    export(trained["checkpoint"], path, embedding=False)
    return path


def test_surgery_keeps_logits_and_exposes_the_heads_input(plain, tmp_path):
    out = tmp_path / "with.onnx"
    info = add_embedding_output(plain, out)
    m = onnx.load(str(out))
    assert [o.name for o in m.graph.output] == ["logits", "embedding"]
    assert len(m.graph.value_info) == 0
    p = props(out)
    d = int(p["amfp.embedding_dim"])
    assert (p["amfp.embedding_output"], p["amfp.embedding_kind"]) == ("embedding", "pre-logits")
    e = m.graph.output[1].type.tensor_type
    assert e.elem_type == TensorProto.FLOAT
    assert e.shape.dim[0].dim_param == "n" and e.shape.dim[1].dim_value == d == info["dim"]
    x = x_batch()
    y0 = sess(plain).run(None, {"input": x})[0]
    y1, emb = sess(out).run(["logits", "embedding"], {"input": x})
    assert np.array_equal(y0, y1)  # bit-identical
    # the embedding is the Gemm's input: its initializers give the logits back
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"][0]
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    w, b = init[gemm.input[1]].astype(np.float64), init[gemm.input[2]].astype(np.float64)
    assert w.shape == (y1.shape[1], d)  # transB=1: [classes, D]
    np.testing.assert_allclose(emb.astype(np.float64) @ w.T + b, y1, rtol=0, atol=1e-5)
    # unchanged elsewhere: every contract key kept
    assert {k: v for k, v in p.items() if k not in KEYS} == props(plain)


def test_surgery_in_place_is_idempotent(plain, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(plain.read_bytes())
    main(["--model", str(path), "--out", str(path)])
    first = path.read_bytes()
    add_embedding_output(path, path)
    m = onnx.load(str(path))
    assert [o.name for o in m.graph.output] == ["logits", "embedding"]
    assert sum(n.op_type == "Identity" for n in m.graph.node) == 1
    assert has_embedding(path) and not has_embedding(plain)
    assert path.read_bytes() == first
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed


def test_int8_embedding_is_the_float_before_the_heads_quantizer(quantized, exported, tmp_path):
    q = onnx.load(str(quantized["path"]))
    # quantize.py keeps the output: float32, same name, and copies the three keys
    assert [o.name for o in q.graph.output] == ["logits", "embedding"]
    assert q.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT
    p8, p32 = props(quantized["path"]), props(exported["path"])
    assert {k: p8[k] for k in KEYS} == {k: p32[k] for k in KEYS}
    head = find_head(q)
    prod = {o: n for n in q.graph.node for o in n.output}
    dq = prod[head["input"]]
    assert dq.op_type == "DequantizeLinear" and prod[dq.input[0]].op_type == "QuantizeLinear"
    assert prod[dq.input[0]].input[0] == head["source"]  # the float tensor the head's Q reads
    # surgery on the int8 model without the output: logits bit-identical, output as quantize wrote it
    bare = tmp_path / "bare.int8.onnx"
    onnx.save(strip_embedding_output(onnx.load(str(quantized["path"]))), str(bare))
    assert not has_embedding(bare)
    redo = tmp_path / "redo.int8.onnx"
    add_embedding_output(bare, redo)
    x = x_batch(8, 3)
    yb = sess(bare).run(None, {"input": x})[0]
    yr, er = sess(redo).run(["logits", "embedding"], {"input": x})
    yq, eq = sess(quantized["path"]).run(["logits", "embedding"], {"input": x})
    assert np.array_equal(yb, yr) and np.array_equal(yr, yq) and np.array_equal(er, eq)
    # near the f32 model's embedding (int8 activations before it; random inputs, a 2-epoch net)
    e32 = sess(exported["path"]).run(["embedding"], {"input": x})[0]
    assert np.corrcoef(er.ravel(), e32.ravel())[0, 1] > 0.95


def test_export_writes_both_outputs_matching_torch(exported, trained):
    m = onnx.load(str(exported["path"]))
    assert [o.name for o in m.graph.output] == ["logits", "embedding"]
    p = props(exported["path"])
    assert int(p["amfp.embedding_dim"]) == exported["info"]["embedding_dim"] == 24  # widths 8,16,24, avg pool
    assert exported["info"]["embedding_max_abs_diff"] < 1e-4
    model, _ = load_checkpoint(trained["checkpoint"])
    fold_batchnorm(model)
    x = x_batch(5, 1)
    y, e = sess(exported["path"]).run(["logits", "embedding"], {"input": x})
    with torch.no_grad():
        et = model.embed(torch.from_numpy(x)).numpy()
        yt = model(torch.from_numpy(x)).numpy()
    assert np.abs(e - et).max() < 1e-4 and np.abs(y - yt).max() < 1e-4
    assert json.loads(p["amfp.labels"])  # the contract keys are still there


def _tiny(nodes, inits, out_dims=3):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", out_dims])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_matmul_plus_bias_head_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    m = _tiny([helper.make_node("Relu", ["input"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["mm"]),
               helper.make_node("Add", ["mm", "b"], ["logits"])], [w, b])
    onnx.save(m, str(tmp_path / "mm.onnx"))
    info = add_embedding_output(tmp_path / "mm.onnx", tmp_path / "mm2.onnx")
    assert info["dim"] == 4 and info["source"] == "h"
    x = rng.standard_normal((2, 4)).astype(np.float32)
    e = sess(tmp_path / "mm2.onnx").run(["embedding"], {"input": x})[0]
    assert np.array_equal(e, np.maximum(x, 0))
    # logits not from a linear head: refused with a reason
    onnx.save(_tiny([helper.make_node("Relu", ["input"], ["logits"])], [], 4), str(tmp_path / "relu.onnx"))
    with pytest.raises(SurgeryError, match="Gemm/MatMul"):
        add_embedding_output(tmp_path / "relu.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_timm_embedding_is_the_pre_logits_vector():
    pytest.importorskip("timm")
    from amfp_train.models import WithEmbedding, build_model

    m = build_model("tf_efficientnetv2_b0", 3, 1).eval()
    x = torch.from_numpy(x_batch(2, 4))
    with torch.no_grad():
        y, e = WithEmbedding(m)(x)
        assert torch.equal(y, m(x))  # the wrapper changes nothing about the logits
        assert torch.equal(e, m.forward_head(m.forward_features(x), pre_logits=True))
    assert e.shape == (2, m.num_features)
