"""ONNX export: every contract key, onnx.checker, BN folded, onnxruntime == PyTorch."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from amfp_train.export import REQUIRED_KEYS, export, load_checkpoint
from amfp_train.models import fold_batchnorm


def props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_every_metadata_key_and_checker(exported):
    m = onnx.load(str(exported["path"]))
    onnx.checker.check_model(m, full_check=True)
    p = props(exported["path"])
    for k in REQUIRED_KEYS:
        assert k in p, k
    labels = json.loads(p["amfp.labels"])
    assert p["amfp.schema"] == "1"
    assert set(json.loads(p["amfp.label_process"])) == set(labels)
    assert float(p["amfp.pixel_size_um"]) == 42.4 and int(p["amfp.roi_px"]) == 32
    assert int(p["amfp.channels"]) == 1 and int(p["amfp.votes"]) == 16
    assert 0 <= float(p["amfp.unknown_threshold"]) <= 1
    assert float(p["amfp.std"]) > 0
    assert "sha256=" in p["amfp.trained_on"]
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    inp = m.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.shape.dim][1:] == [1, 32, 32]
    out = m.graph.output[0].type.tensor_type.shape.dim
    assert out[1].dim_value == len(labels)


def test_onnxruntime_matches_torch(exported, trained):
    assert exported["info"]["max_abs_diff"] < 1e-4
    model, meta = load_checkpoint(trained["checkpoint"])
    fold_batchnorm(model)
    x = np.random.default_rng(1).standard_normal((5, 1, 32, 32)).astype(np.float32)
    y = ort.InferenceSession(str(exported["path"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        yt = model(torch.from_numpy(x)).numpy()
    assert np.abs(y - yt).max() < 1e-4


def test_fixed_batch_export(trained, tmp_path):
    info = export(trained["checkpoint"], tmp_path / "b16.onnx", batch=16, name="fixed")
    m = onnx.load(str(tmp_path / "b16.onnx"))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 16
    assert props(tmp_path / "b16.onnx")["amfp.name"] == "fixed"
    assert info["max_abs_diff"] < 1e-4
