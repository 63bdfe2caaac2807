"""The one-command pipeline, shrunk (--quick): simulate (real binary when AMFP_BIN is set),
train, export, quantize, calibrate, evaluate, install the files."""

import json
import subprocess
from pathlib import Path

import onnx

from amfp_train.reproduce import main

from .conftest import amfp_bin


def test_reproduce_quick(dataset, tmp_path):
    out, models = tmp_path / "build", tmp_path / "models"
    args = ["--out", str(out), "--models-dir", str(models), "--quick", "--threads", "1", "--name", "amfp-quick"]
    b = amfp_bin()
    if b:  # the real simulator, two machines plus the four extra held-out units
        args += ["--amfp", b, "--machines", "5200-1,S450-1", "--parts-per-machine", "4", "--seed", "11",
                 "--synth-arg=--split=0.5,0.25,0.25", "--synth-arg=--threads=1"]
    else:
        args += ["--data", str(dataset["dir"]), "--holdout", dataset["holdout"]]
    print("reproduce ran on:", "real simulator" if b else dataset["source"])
    m = main(args)
    for f in ("amfp-quick.onnx", "amfp-quick.int8.onnx", "amfp-quick.md", "amfp-quick.report.json",
              "amfp-quick.confusion.png", "amfp-quick.manifest.json"):
        assert (models / f).is_file(), f
    meta = {p.key: p.value for p in onnx.load(str(models / "amfp-quick.onnx")).metadata_props}
    assert meta["amfp.name"] == "amfp-quick"
    manifest = json.loads((models / "amfp-quick.manifest.json").read_text())
    assert manifest["files"] == m["files"]
    # The run names the commit it came from (this test runs in the project's git checkout).
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    assert manifest["source"]["git_commit"] == commit
    if b:
        assert meta["amfp.trained_on"].startswith("synth:seed=11")
        assert "M2-7" not in json.loads(meta["amfp.labels"])
