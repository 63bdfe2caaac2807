"""Shared fixtures: a tiny dataset (the real simulator when AMFP_BIN is set, else the stand-in),
a tiny trained model, its ONNX export and its int8 quantization.

Which dataset ran is printed in pytest's header and attached to each test
that uses it: a run without AMFP_BIN says so plainly instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from amfp_train.fake import write_fake

# small and considerate: the 2 cores are shared with Rust builds
torch.set_num_threads(1)

# machines for the real simulator run: one per process plus one held out
SIM_MACHINES = "4200-1,5200-1,F3B-1,S450-1,M2-1"
HOLDOUT = {"real": "M2-1", "fake": "S900-1"}

# model settings for tests: 4x downscale of 10.6 um/px, 32 px ROIs, a tiny net
MODEL_PX = 42.4
ROI = 32
NET = ["--widths", "8,16,24", "--depths", "1,1,1"]


def amfp_bin() -> str | None:
    b = os.environ.get("AMFP_BIN")
    return b if b else None


def pytest_report_header(config):
    b = amfp_bin()
    if b:
        return f"amfp_train dataset: REAL simulator `{b} synth` (AMFP_BIN)"
    return "amfp_train dataset: stand-in fixture (amfp_train.fake); set AMFP_BIN=target/release/amfp for the real simulator"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict:
    """{'dir', 'source', 'holdout'}: 4-5 parts per machine."""
    d = tmp_path_factory.mktemp("data")
    b = amfp_bin()
    if b:
        cmd = [b, "synth", "--out", str(d), "--parts-per-machine", "4", "--seed", "3",
               "--machines", SIM_MACHINES, "--split", "0.5,0.25,0.25", "--threads", "1"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        return {"dir": d, "source": f"real simulator ({' '.join(cmd)})", "holdout": HOLDOUT["real"]}
    write_fake(d, parts_per_machine=4, size=240, seed=3)
    return {"dir": d, "source": "stand-in fixture (amfp_train.fake)", "holdout": HOLDOUT["fake"]}


@pytest.fixture(autouse=True)
def _which_data(request, record_property):
    if "dataset" in request.fixturenames:
        record_property("dataset", request.getfixturevalue("dataset")["source"])


def train_args(data: Path, out: Path, holdout: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--pixel-um", str(MODEL_PX), "--roi", str(ROI),
            "--min-fg", "0.8", "--epochs", "2", "--steps", "15", "--batch", "16", "--warmup-steps", "5",
            "--lr", "3e-3", "--threads", "1", "--holdout", holdout, "--name", "amfp-test", *NET, *extra]


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> dict:
    from amfp_train.train import parse_args, train

    out = tmp_path_factory.mktemp("model")
    cfg = parse_args(train_args(dataset["dir"], out, dataset["holdout"], "--source", "test:seed=3"))
    ckpt = train(cfg)
    return {"out": out, "checkpoint": ckpt, "config": cfg}


@pytest.fixture(scope="session")
def exported(trained) -> dict:
    from amfp_train.export import export

    path = trained["out"] / "amfp.onnx"
    info = export(trained["checkpoint"], path)
    return {"path": path, "info": info}


@pytest.fixture(scope="session")
def quantized(exported, dataset) -> dict:
    from amfp_train.quantize import quantize

    path = exported["path"].with_name("amfp.int8.onnx")
    info = quantize(exported["path"], dataset["dir"], path, n_rois=64)
    return {"path": path, "info": info}
