"""The one-command pipeline, shrunk (--quick): simulate (real binary when AMFP_BIN is set),
train, export, quantize, calibrate, evaluate, install the files."""

import json
import subprocess
from pathlib import Path

import onnx

from amfp_train.dataset import read_dataset, sha256_file
from amfp_train.reproduce import combine, main

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
              "amfp-quick.confusion.png", "amfp-quick.manifest.json", "amfp-quick.gallery.json",
              "amfp-quick.int8.gallery.json"):
        assert (models / f).is_file(), f
    # each model's gallery names that model file's sha256 (the galleries come after every change to it)
    for name in ("amfp-quick", "amfp-quick.int8"):
        g = json.loads((models / f"{name}.gallery.json").read_text())
        assert g["model"]["sha256"] == sha256_file(models / f"{name}.onnx")
        assert g["embedding"]["output"] == "embedding" and g["version"] == 1
        assert m["gallery"][str(out / f"{name}.onnx")]["known_parts"] == g["calibration"]["known_parts"] > 0
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
        assert "microscope_parts_per_machine=2@5.3um" in meta["amfp.trained_on"]
        assert "M2-7" not in json.loads(meta["amfp.labels"])
        # scanner and microscope parts in one dataset; the report says how each mode fares
        ds = read_dataset(out / "dataset")
        assert {p.mode for p in ds.parts} == {"scanner", "microscope"}
        report = json.loads((models / "amfp-quick.report.json").read_text())
        assert set(report["f32"]["parts_per_mode"]) <= {"scanner", "microscope"}
        assert sum(report["f32"]["parts_per_mode"].values()) == report["f32"]["parts"]


def test_combine_keeps_every_part_apart_and_reachable(tmp_path):
    """Two simulations number their parts alike: the combined dataset must not merge them."""
    for name, mode, px in (("a", "scanner", "10.6"), ("b", "microscope", "5.3")):
        d = tmp_path / name
        (d / "scans").mkdir(parents=True)
        rows = ["file,serial,machine,process,pixel_size_um,mode,split"]
        for i, split in enumerate(("train", "val", "test")):
            (d / "scans" / f"X-{i}.png").write_bytes(name.encode())
            rows.append(f"scans/X-{i}.png,X-{i},X,FDM,{px},{mode},{split}")
        (d / "labels.csv").write_text("\n".join(rows) + "\n")
    root = combine(tmp_path / "out", {"scanner": tmp_path / "a", "microscope": tmp_path / "b"})
    ds = read_dataset(root)
    assert len(ds.parts) == 6
    for p in ds.parts:
        assert p.files[0].read_bytes() == (b"a" if p.mode == "scanner" else b"b")
        assert p.pixel_size_um == (10.6 if p.mode == "scanner" else 5.3)
    assert sorted(p.split for p in ds.parts) == ["test", "test", "train", "train", "val", "val"]
    # run again (a reused simulation): the same dataset, no error from the existing links
    assert len(read_dataset(combine(tmp_path / "out", {"scanner": tmp_path / "a", "microscope": tmp_path / "b"})).parts) == 6
