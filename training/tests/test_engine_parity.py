"""The daemon, on each of its engines, and the training side (Python onnxruntime, numpy) agree
on the same ROIs.

`amfp identify --save-rois DIR` writes the exact normalised ROIs the daemon fed its engine, their
corners, and the engine's SoftMax outputs. Here the same ROIs go through Python's onnxruntime,
and the same corners are cut from the image by the training code's own loader:

- f32: the daemon's probabilities equal Python onnxruntime's within 1e-4, on tract and on amfp's
  onnxruntime (docs/engines.md);
- int8: the same argmax for at least 99 % of ROIs (tract's quantized kernels round differently
  from onnxruntime's);
- preprocessing: the daemon's ROIs equal the training pipeline's crops of the same corners,
  normalised with the model's mean and std (so the model sees in the field what it saw in training).

Needs the amfp binary: AMFP_BIN, else ../target/release/amfp (built by `bash .ci/test`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from amfp_train.dataset import load_gray_raw

REPO = Path(__file__).resolve().parents[2]
MODELS = {"f32": REPO / "models" / "amfp-synth-v3.onnx", "int8": REPO / "models" / "amfp-synth-v3.int8.onnx"}
FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"
MACHINES = "4200-1,F3B-2,M2-3,S900-1,L1-2,5200-2"


def amfp() -> str:
    b = os.environ.get("AMFP_BIN") or str(REPO / "target" / "release" / "amfp")
    if not Path(b).exists():
        pytest.fail(f"amfp binary {b} not found: run `cargo build --release` or set AMFP_BIN")
    return b


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("parity")
    subprocess.run([amfp(), "synth", "--fleet", str(FLEET), "--machines", MACHINES, "--seed", "31337",
                    "--parts-per-machine", "2", "--out", str(d), "--threads", "1"],
                   check=True, capture_output=True, timeout=600)
    return sorted((d / "scans").glob("*.png"))


def saved_rois(model: Path, images: list[Path], out: Path, engine: str = "auto") -> list[dict]:
    r = subprocess.run([amfp(), "identify", "--json", "--early-stop", "off", "--model", str(model),
                        "--engine", engine, "--save-rois", str(out), *map(str, images)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "AMFP_CONFIG": str(REPO / "tests" / "data" / "empty.toml")})
    assert r.returncode in (0, 3), r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == len(images)
    return results


def meta(model: Path) -> dict:
    return {p.key: p.value for p in onnx.load(str(model)).metadata_props}


@pytest.mark.parametrize("engine", ["tract", "onnxruntime"])
@pytest.mark.parametrize("kind", ["f32", "int8"])
def test_each_engine_and_python_onnxruntime_agree_on_the_same_rois(kind, engine, parts, tmp_path):
    model = MODELS[kind]
    results = saved_rois(model, parts, tmp_path, engine)
    assert {r["model"]["engine"]["name"] for r in results} == {engine}
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    tract_p, ort_p = [], []
    for img in parts:
        x = np.load(tmp_path / f"{img.stem}.rois.npy")
        p = np.load(tmp_path / f"{img.stem}.probs.npy")
        assert x.shape == (16, 1, 192, 192) and p.shape == (16, 21)
        logits = sess.run(None, {name: x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        tract_p.append(p)
        ort_p.append(e / e.sum(axis=1, keepdims=True))
    tract_p, ort_p = np.concatenate(tract_p), np.concatenate(ort_p)
    agree = float((tract_p.argmax(1) == ort_p.argmax(1)).mean())
    diff = float(np.abs(tract_p - ort_p).max())
    print(f"{kind} on {engine}: {len(tract_p)} ROIs, max |p_amfp - p_ort| = {diff:.2e}, argmax agreement {agree:.4f}")
    if kind == "f32":
        assert diff <= 1e-4
    else:
        assert agree >= 0.99


def test_the_daemon_cuts_and_normalises_rois_as_training_does(parts, tmp_path):
    model = MODELS["int8"]
    m = meta(model)
    mean, std, roi = float(m["amfp.mean"]), float(m["amfp.std"]), int(m["amfp.roi_px"])
    saved_rois(model, parts[:4], tmp_path)
    for img in parts[:4]:
        x = np.load(tmp_path / f"{img.stem}.rois.npy")
        corners = np.load(tmp_path / f"{img.stem}.corners.npy")
        raw, scale = load_gray_raw(img)
        frame = raw.astype(np.float32) * np.float32(scale)
        for k, (cx, cy) in enumerate(corners):
            crop = frame[cy:cy + roi, cx:cx + roi]
            want = (crop - np.float32(mean)) / np.float32(std)
            np.testing.assert_allclose(x[k, 0], want, rtol=0, atol=1e-5)
