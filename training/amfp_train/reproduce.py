"""Reproduce the shipped model end to end, with fixed seeds:

1. simulate the dataset with ``amfp synth``: the paper's 21 machines plus
   four extra units of known models (5200-3, F3B-7, M2-7, S450-3) that are held
   out of training as the open-set "unknown machines" (a sibling unit of a
   known model is the hardest unknown there is); flatbed-scanner parts, and
   other parts of the same machines seen through a USB microscope (ring light,
   vignetting, finer pixels resampled to the model's), because a model that
   never saw microscope frames cannot judge them (docs/envelope.md); both go
   into one dataset, ``OUT/dataset``, split by part;
2. train the edge net (CPU, < 30 min on 2 cores; see docs/training.md);
3. export f32 ONNX with the metadata contract, check parity with PyTorch;
4. quantize to int8 QDQ (calibrated on training ROIs);
5. calibrate amfp.unknown_threshold of both models (the vote's open-set rule, for amfp without
   a gallery);
6. the fingerprint gallery of each model (docs/gallery.md): the embedding output is added if
   the models lack it, then ``amfp_train.gallery`` fits ``<model>.gallery.json`` beside each on
   the known machines' training parts (``--gallery-fit-parts`` per machine) and calibrates it on
   the validation split, embeddings from ``amfp identify --with-embedding`` when the binary has
   it, else onnxruntime (``--gallery-source``). After step 5, which rewrites the models'
   metadata: a gallery names the sha256 of the final model file;
7. evaluate both on the test split: report.json, confusion PNGs, model card;
8. copy the models, their galleries, card and report into ``--models-dir`` (default ``models``).

::

    cargo build --release
    python -m amfp_train.reproduce --amfp target/release/amfp --out build/model

``--data DIR`` skips the simulation and trains on an existing dataset (real
scans in the same layout, for example; then ``--holdout`` names held-out
machines, if any). ``--quick`` shrinks everything for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .dataset import sha256_file

log = logging.getLogger(__name__)

# extra units simulated for the open set: one per process, each a new unit of a known model
EXTRA_MACHINES = [("5200-3", "hp-mjf-5200"), ("F3B-7", "formlabs-form3b"),
                  ("M2-7", "carbon-m2"), ("S450-3", "stratasys-f450mc")]

# microscope-mode parts beside the scanner ones: other seeds (other parts), this pixel size
# (resampled 2:1 to the model's 10.6 um, as a 5.3 um camera's frames are in the field)
MICROSCOPE_PIXEL_UM = 5.3
MICROSCOPE_SEED_OFFSET = 1000

# the shipped model's training settings (measured: docs/training.md): native 10.6 um/px scans,
# 192 px ROIs (2.0 mm), the stem learns the 2x downsampling, mean+std pooling
SHIPPED = {
    "pixel_um": 10.6, "roi": 192, "stem_stride": 2, "pool": "avgstd", "min_fg": 0.8, "batch": 48,
    "epochs": 36, "steps": 250, "widths": "16,32,64,96,128", "depths": "1,2,2,2,2", "lr": 3e-3,
    "lr_decay": 0.91, "warmup_steps": 100, "time_budget_min": 28.0, "val_parts": 0,
    # progressive crops: 18 epochs on 128 px centre crops (2.1x cheaper), then 18 on whole ROIs;
    # validation from epoch 29 (docs/training.md, "Training speed")
    "warm_roi": 128, "warm_epochs": 18, "val_from_epoch": 29,
}

QUICK = dict(SHIPPED, pixel_um=42.4, roi=32, stem_stride=1, batch=16, epochs=2, steps=10,
             widths="8,16,24", depths="1,1,1", warmup_steps=5, time_budget_min=0.0, val_parts=16,
             warm_roi=0, warm_epochs=0, val_from_epoch=0)


def source_revision() -> dict:
    """The git commit the run was made from, and whether the tree had uncommitted changes: the
    simulator's code fixes every pixel of the training data, so a model is reproducible only
    from the commit that made it."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src", "training"],
                               check=True, capture_output=True, text=True).stdout.strip() != ""
        return {"git_commit": commit, "uncommitted_changes": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "uncommitted_changes": None}


def run(cmd: list[str], **kw) -> str:
    log.info("$ %s", " ".join(cmd))
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return r.stdout


def simulate(amfp: str, out: Path, parts: int, seed: int, extra: bool, machines: str = "",
             synth_args: list[str] | None = None) -> Path:
    """Write the fleet (paper + extra units) and simulate the scanner dataset into out/data."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    fleet = out / "fleet.toml"
    base = [amfp, "synth", "--seed", str(seed)]
    if machines:
        base += ["--machines", machines]
    text = run(base + ["--print-fleet"])
    if extra:
        for name, model in EXTRA_MACHINES:
            text += f'\n[[machine]]\nname = "{name}"\nmodel = "{model}"\n'
    fleet.write_text(text)
    _synth(amfp, fleet, data, parts, seed, synth_args)
    return data


def simulate_microscope(amfp: str, out: Path, parts: int, seed: int, pixel_um: float,
                        synth_args: list[str] | None = None, size: str | None = None) -> Path:
    """Simulate other parts of the same fleet (out/fleet.toml) through a USB microscope into
    out/data-microscope: other seeds than the scanner parts, so they are other parts."""
    data = out / "data-microscope"
    args = ["--mode", "microscope", "--pixel-um", str(pixel_um), *(synth_args or [])]
    if size:
        args += ["--microscope-size", size]
    _synth(amfp, out / "fleet.toml", data, parts, seed + MICROSCOPE_SEED_OFFSET, args)
    return data


def _synth(amfp: str, fleet: Path, data: Path, parts: int, seed: int, synth_args: list[str] | None) -> None:
    cmd = [amfp, "synth", "--fleet", str(fleet), "--seed", str(seed), "--out", str(data),
           "--parts-per-machine", str(parts), "--overwrite", *(synth_args or [])]
    t0 = time.time()
    run(cmd)
    log.info("simulated %s in %.1f s", data, time.time() - t0)


def combine(out: Path, datasets: dict[str, Path]) -> Path:
    """One dataset, out/dataset, over several simulated ones (scanner, microscope): a labels.csv
    whose files point through symlinks into each, serials made unique per dataset (each dataset
    numbers its parts from 0). Splits stay as the simulator drew them: by part, per machine."""
    import csv

    root = out / "dataset"
    root.mkdir(parents=True, exist_ok=True)
    rows, fields = [], None
    for name, data in datasets.items():
        link = root / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(data.resolve(), target_is_directory=True)
        with open(data / "labels.csv", newline="") as f:
            reader = csv.DictReader(f)
            fields = fields or reader.fieldnames
            if reader.fieldnames != fields:
                raise ValueError(f"{data}/labels.csv: columns differ from the other datasets'")
            for r in reader:
                r["file"] = f"{name}/{r['file']}"
                r["serial"] = f"{r['serial']}@{name}"
                rows.append(r)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return root


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amfp", default="target/release/amfp", help="amfp binary (for `amfp synth`)")
    ap.add_argument("--out", default="build/model")
    ap.add_argument("--data", help="existing dataset: skip the simulation")
    ap.add_argument("--reuse-simulation", action="store_true",
                    help="reuse OUT/data from an earlier run with the same seed and parts (the simulator's "
                         "pixels must not have changed since): skip the simulation, keep the synth source")
    ap.add_argument("--parts-per-machine", type=int, default=150)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--machines", default="", help="simulate only these (comma-separated; default all 21)")
    ap.add_argument("--microscope-parts-per-machine", type=int, default=None,
                    help="microscope-mode parts simulated per machine beside the scanner parts "
                         "(default: 50, or 2 with --quick; 0: scanner parts only)")
    ap.add_argument("--no-extra", action="store_true", help="don't simulate extra held-out machines")
    ap.add_argument("--holdout", default=None, help="held-out labels (default: the extra machines)")
    ap.add_argument("--name", default="amfp-synth-v3")
    ap.add_argument("--models-dir", default="models", help="where the shipped files go ('' = nowhere)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--synth-arg", action="append", default=[], help="extra argument for amfp synth")
    ap.add_argument("--gallery-source", default="auto", choices=["auto", "amfp", "onnxruntime"],
                    help="who computes the gallery's embeddings (auto: --amfp when it has "
                         "`identify --with-embedding`, else onnxruntime)")
    ap.add_argument("--gallery-fit-parts", type=int, default=40,
                    help="training parts per known machine that fit the gallery (0: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a training setting ({', '.join(SHIPPED)}); not for the shipped model")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from .calibrate import calibrate_models
    from .embedding import add_embedding_output, has_embedding
    from .evaluate import run_evaluation
    from .gallery import fit_for_models, gallery_path
    from .export import export
    from .quantize import quantize
    from .train import parse_args as train_args
    from .train import train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings = {}
    s = dict(QUICK if a.quick else SHIPPED)
    for kv in a.set:
        k, _, v = kv.partition("=")
        if k not in s:
            raise SystemExit(f"--set {kv}: unknown setting {k!r}")
        s[k] = type(s[k])(v)
    if a.data:
        data = Path(a.data)
        source = f"dataset:{data.name}"
        holdout = a.holdout or ""
    else:
        micro_parts = a.microscope_parts_per_machine
        if micro_parts is None:
            micro_parts = 2 if a.quick else 50
        if a.reuse_simulation and (out / "data" / "labels.csv").exists():
            data = out / "data"
            log.info("reusing the simulated dataset in %s", data)
        else:
            data = simulate(a.amfp, out, a.parts_per_machine, a.seed, not a.no_extra, a.machines, a.synth_arg)
        source = f"synth:seed={a.seed};machines={'paper' if not a.machines else a.machines}" + \
                 ("+" + ",".join(n for n, _ in EXTRA_MACHINES) if not a.no_extra else "") + \
                 f";parts_per_machine={a.parts_per_machine}"
        if micro_parts:
            micro = out / "data-microscope"
            if a.reuse_simulation and (micro / "labels.csv").exists():
                log.info("reusing the simulated microscope dataset in %s", micro)
            else:
                micro = simulate_microscope(a.amfp, out, micro_parts, a.seed, MICROSCOPE_PIXEL_UM, a.synth_arg,
                                            size="640x480" if a.quick else None)
            data = combine(out, {"scanner": data, "microscope": micro})
            source += f";microscope_parts_per_machine={micro_parts}@{MICROSCOPE_PIXEL_UM}um"
        holdout = a.holdout if a.holdout is not None else ("" if a.no_extra else ",".join(n for n, _ in EXTRA_MACHINES))
    timings["simulate_s"] = round(time.time() - t0, 1)

    t = time.time()
    targs = ["--data", str(data), "--out", str(out), "--name", a.name, "--source", source,
             "--seed", str(a.seed), "--holdout", holdout, "--threads", str(a.threads)]
    for k, v in s.items():  # every setting is a train flag of the same name: lr_decay -> --lr-decay
        targs += ["--" + k.replace("_", "-"), str(v)]
    ckpt = train(train_args(targs))
    timings["train_s"] = round(time.time() - t, 1)

    t = time.time()
    f32 = out / f"{a.name}.onnx"
    int8 = out / f"{a.name}.int8.onnx"
    exp = export(ckpt, f32)
    q = quantize(f32, data, int8, n_rois=512 if not a.quick else 64)
    timings["export_quantize_s"] = round(time.time() - t, 1)

    t = time.time()
    cal = calibrate_models([f32, int8], data, out=out / "calibration.json",
                           max_parts=16 if a.quick else None)
    timings["calibrate_s"] = round(time.time() - t, 1)

    # the galleries come after every change to the model files: they name their sha256
    t = time.time()
    for m in (f32, int8):
        if not has_embedding(m):
            add_embedding_output(m, m)
    # --quick's 1.4 mm samples are too small for amfp's envelope on FDM parts (it rejects them,
    # without an embedding): its galleries take onnxruntime's embeddings unless told otherwise
    gsource = "onnxruntime" if a.quick and a.gallery_source == "auto" else a.gallery_source
    galleries = fit_for_models([f32, int8], data, [h for h in holdout.split(",") if h], a.amfp, gsource,
                               a.gallery_fit_parts or None, threads=a.threads or 2)
    timings["gallery_s"] = round(time.time() - t, 1)
    t = time.time()
    rep = run_evaluation(f32, int8, data, "test", out / "eval",
                         max_parts=24 if a.quick else None, threads=a.threads or 2)
    timings["evaluate_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)

    import onnxruntime
    import torch

    manifest = {
        "source": source_revision(),
        "name": a.name, "command": " ".join([sys.executable, "-m", "amfp_train.reproduce", *(argv or sys.argv[1:])]),
        "seed": a.seed, "data": str(data), "holdout": holdout, "settings": s, "timings": timings,
        "export": exp, "quantize": q, "calibration": cal, "gallery": galleries,
        "accuracy": {"f32": rep["f32"].get("accuracy"), "int8": rep.get("int8", {}).get("accuracy")},
        "files": {p.name: sha256_file(p) for p in (f32, int8, gallery_path(f32), gallery_path(int8))},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__, "machine": platform.machine()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if a.models_dir:
        md = Path(a.models_dir)
        md.mkdir(parents=True, exist_ok=True)
        for m in (f32, int8):
            shutil.copy2(m, md / m.name)
            shutil.copy2(gallery_path(m), md / gallery_path(m).name)
        shutil.copy2(out / "eval" / "model_card.md", md / f"{a.name}.md")
        shutil.copy2(out / "eval" / "report.json", md / f"{a.name}.report.json")
        shutil.copy2(out / "eval" / "confusion_f32.png", md / f"{a.name}.confusion.png")
        shutil.copy2(out / "manifest.json", md / f"{a.name}.manifest.json")
        if (out / "fleet.toml").exists():  # the simulated fleet, held-out machines included: tests and users
            shutil.copy2(out / "fleet.toml", md / f"{a.name}.fleet.toml")  # simulate parts of the same machines
        log.info("shipped files in %s", md)
    log.info("done in %.1f min: f32 accuracy %s, int8 %s", timings["total_s"] / 60,
             manifest["accuracy"]["f32"], manifest["accuracy"]["int8"])
    return manifest


if __name__ == "__main__":
    main()
