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

Split across machines (a GPU box for the training, this one for the rest): ``--stop-after
train`` on the GPU box leaves ``OUT/checkpoint.pt``; here, the same command with
``--reuse-simulation --checkpoint PATH`` simulates the same dataset (``amfp synth`` is
deterministic: same binary, same seeds, same files) and goes on from export without training.
``--stop-after simulate`` only simulates.

``--recipe v4`` (issue 17's robust training; docs/training.md, "The v4 recipe") trains the next
model the same way with, in addition: photometric augmentations of the training ROIs (JPEG
60-95, exposure, gamma, defocus, sensor noise, polarity: amfp_train.augment); ``--aux-units``
more units of every known printer model (``AUX_UNITS``: names that no fleet, held-out set or
benchmark uses), simulated with other seeds and trained as auxiliary classes whose head rows are
dropped at export; a 60/25/15 split, so that the gallery is calibrated on more than 1,000 known
validation parts::

    python -m amfp_train.reproduce --amfp ../target/release/amfp --out ../build/model4 \
        --recipe v4 --name amfp-synth-v4
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
    # robust training (recipe v4; off for v3, which trained before they existed)
    "augment": "none", "aux_share": 0.0, "center_loss": 0.0,
}

QUICK = dict(SHIPPED, pixel_um=42.4, roi=32, stem_stride=1, batch=16, epochs=2, steps=10,
             widths="8,16,24", depths="1,1,1", warmup_steps=5, time_budget_min=0.0, val_parts=16,
             warm_roi=0, warm_epochs=0, val_from_epoch=0)

# recipe v4 (issue 17, robust training): the v3 schedule with every photometric augmentation
# (amfp_train.augment's v4 preset), auxiliary units taking 30 % of the ROIs, the training's
# validation capped at 700 parts (the val split is larger: it calibrates the gallery), and a
# budget that lets the 36 epochs finish on the 2-core box (augmentations and the auxiliary parts'
# decoding cost ~3 min), and a part cache that holds every training and validation part (~7.6 GB
# estimated: 1.84 MB a scan, 0.65 MB a microscope frame; over the cap, parts are decoded again and
# again and the budget runs out)
V4 = dict(SHIPPED, augment="v4", aux_share=0.3, time_budget_min=31.0, val_parts=700, cache_mb=11000.0)
QUICK_V4 = dict(QUICK, augment="v4", aux_share=0.3)

# what a recipe simulates besides the paper fleet and EXTRA_MACHINES: auxiliary units per printer
# model (scans and microscope frames each) and the synth split of the main dataset ("": synth's
# 70/15/15). v4's 60/25/15 gives ~1,050 known validation parts (gallery calibration: a 1 % rate
# rests on >= 10 parts) and 2,520 training parts of the known machines.
SIMULATION = {
    "v3": {"aux_units": 0, "aux_parts": 0, "aux_micro_parts": 0, "split": ""},
    "v4": {"aux_units": 3, "aux_parts": 60, "aux_micro_parts": 20, "split": "0.6,0.25,0.15"},
}
SIMULATION_QUICK = {
    "v3": SIMULATION["v3"],
    "v4": {"aux_units": 1, "aux_parts": 2, "aux_micro_parts": 1, "split": ""},
}
RECIPES = {"v3": (SHIPPED, QUICK), "v4": (V4, QUICK_V4)}
MIN_CALIBRATION_PARTS = 1000  # known validation parts the gallery should be calibrated on

# Auxiliary units (recipe v4): more units of each known printer model, trained as extra classes.
# Named <prefix>-21, -22, ... (the prefix of the model's units in the fleet, e.g. F3B): disjoint
# from the paper fleet (-1..-6), EXTRA_MACHINES (-3, -7), the open-set benchmark's held-out units
# (openset.HELDOUT_UNITS: -11, -12) and anything else in the project (tests/test_augment.py checks).
# The simulator draws a unit's deviations from the fleet seed and its name: new names are new units.
AUX_FIRST = 21
AUX_MAX_UNITS = 9
# their parts' seeds: --seed plus these (other parts than the known machines' scans and frames)
AUX_SEED_OFFSET = 2000
AUX_MICROSCOPE_SEED_OFFSET = 3000

# simulation cost per part on one core of the 2-core box (s; openset.SIM_COST_S, measured) and the
# gallery's amfp identify cost per image (docs/training.md): for the time estimate only
SIM_S = {"scanner": 0.45, "microscope": 0.35}
IDENTIFY_S = 0.09


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


def fleet_machines(text: str) -> list[tuple[str, str]]:
    """(name, model) of every machine of a fleet file's text, in order."""
    import re

    out = []
    for block in text.split("[[machine]]")[1:]:
        name = re.search(r'^name\s*=\s*"([^"]+)"', block, re.M)
        model = re.search(r'^model\s*=\s*"([^"]+)"', block, re.M)
        if name and model:
            out.append((name.group(1), model.group(1)))
    return out


def aux_units(machines: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """`k` auxiliary units per printer model of `machines`: (prefix-21.., model), the prefix that
    model's first unit has (F3B-1 -> F3B), models in the order they first appear."""
    if not 0 <= k <= AUX_MAX_UNITS:
        raise ValueError(f"aux units per model: 0..{AUX_MAX_UNITS}, got {k}")
    prefix: dict[str, str] = {}
    for name, model in machines:
        prefix.setdefault(model, name.rsplit("-", 1)[0])
    return [(f"{p}-{AUX_FIRST + i}", model) for model, p in prefix.items() for i in range(k)]


def aux_fleet_text(fleet_text: str, units: list[tuple[str, str]]) -> str:
    """A fleet file of the auxiliary units, drawn like `fleet_text`'s (its seed and spread)."""
    head = [ln for ln in fleet_text.split("[[machine]]")[0].splitlines() if ln.strip() and not ln.startswith("#")]
    text = "\n".join(["# auxiliary units (amfp_train.reproduce): other units of the known printer models,",
                      "# drawn with the model fleet's seed and spread", "", *head]) + "\n"
    for name, model in units:
        text += f'\n[[machine]]\nname = "{name}"\nmodel = "{model}"\n'
    return text


def without_split(synth_args: list[str] | None) -> list[str]:
    """`synth_args` without a --split (the auxiliary units' parts all train)."""
    out, skip = [], False
    for a in synth_args or []:
        if skip:
            skip = False
            continue
        if a == "--split":
            skip = True
            continue
        if a.startswith("--split="):
            continue
        out.append(a)
    return out


def simulate_aux(amfp: str, out: Path, units: list[tuple[str, str]], parts: int, micro_parts: int, seed: int,
                 synth_args: list[str] | None = None, micro_size: str | None = None, reuse: bool = False) -> Path:
    """Scans and microscope frames of the auxiliary units (every part in the train split) as one
    dataset, out/aux-dataset, from out/aux-fleet.toml (written from out/fleet.toml's header)."""
    fleet = out / "aux-fleet.toml"
    fleet.write_text(aux_fleet_text((out / "fleet.toml").read_text(), units))
    args = without_split(synth_args) + ["--split=1,0,0"]
    sets = {}
    scans = out / "data-aux"
    if not (reuse and (scans / "labels.csv").exists()):
        _synth(amfp, fleet, scans, parts, seed + AUX_SEED_OFFSET, args)
    sets["aux-scanner"] = scans
    if micro_parts:
        micro = out / "data-aux-microscope"
        if not (reuse and (micro / "labels.csv").exists()):
            margs = ["--mode", "microscope", "--pixel-um", str(MICROSCOPE_PIXEL_UM), *args]
            if micro_size:
                margs += ["--microscope-size", micro_size]
            _synth(amfp, fleet, micro, micro_parts, seed + AUX_MICROSCOPE_SEED_OFFSET, margs)
        sets["aux-microscope"] = micro
    return combine(out, sets, name="aux-dataset")


def estimate_minutes(machines: int, parts: int, micro_parts: int, aux: int, aux_parts: int, aux_micro_parts: int,
                     settings: dict, split_val: float, cores: int = 2, gpu: bool = False) -> dict:
    """Rough minutes per stage on `cores` cores (CPU training), or with a GPU (training then
    bound by the ROI pipeline in one process: ~25 ms a batch with the v4 augmentations)."""
    sim = (machines * (parts * SIM_S["scanner"] + micro_parts * SIM_S["microscope"])
           + aux * (aux_parts * SIM_S["scanner"] + aux_micro_parts * SIM_S["microscope"])) / max(1, cores) / 60
    steps = settings["epochs"] * settings["steps"]
    if gpu:
        train = steps * 0.025 / 60 + 2.0  # + decoding and validations
    else:
        train = settings["time_budget_min"] or 30.0
    known_val = machines * (parts + micro_parts) * split_val
    gallery = 2 * (known_val + 40 * machines) * IDENTIFY_S * 2 / max(1, cores) / 60
    rest = 3.0 * 2 / max(2, min(cores, 8))  # export, int8, vote calibration, evaluation
    total = sim + train + gallery + rest
    return {"simulate": round(sim, 1), "train": round(train, 1), "galleries": round(gallery, 1),
            "other": round(rest, 1), "total": round(total, 1)}


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


def combine(out: Path, datasets: dict[str, Path], name: str = "dataset") -> Path:
    """One dataset, out/<name>, over several simulated ones (scanner, microscope): a labels.csv
    whose files point through symlinks into each, serials made unique per dataset (each dataset
    numbers its parts from 0). Splits stay as the simulator drew them: by part, per machine."""
    import csv

    root = out / name
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
    ap.add_argument("--name", default=None, help="model name (default: amfp-synth-<recipe>)")
    ap.add_argument("--recipe", default="v3", choices=sorted(RECIPES),
                    help="v3: the shipped model's recipe; v4: robust training (augmentations, auxiliary "
                         "units, a larger validation split; docs/training.md)")
    ap.add_argument("--aux-units", type=int, default=None,
                    help=f"auxiliary units per printer model trained as extra classes (default: the recipe's; "
                         f"0..{AUX_MAX_UNITS})")
    ap.add_argument("--aux-parts-per-machine", type=int, default=None,
                    help="scanner parts per auxiliary unit (default: the recipe's)")
    ap.add_argument("--aux-microscope-parts-per-machine", type=int, default=None,
                    help="microscope parts per auxiliary unit (default: the recipe's)")
    ap.add_argument("--aux-data", default="", help="existing auxiliary dataset(s), comma-separated (with --data)")
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader workers cutting ROIs (a GPU box: e.g. 6; 0: in the training process)")
    ap.add_argument("--estimate", action="store_true", help="print the time estimate and exit")
    ap.add_argument("--models-dir", default="models", help="where the shipped files go ('' = nowhere)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--synth-arg", action="append", default=[], help="extra argument for amfp synth")
    ap.add_argument("--gallery-source", default="auto", choices=["auto", "amfp", "onnxruntime"],
                    help="who computes the gallery's embeddings (auto: --amfp when it has "
                         "`identify --with-embedding`, else onnxruntime)")
    ap.add_argument("--gallery-fit-parts", type=int, default=40,
                    help="training parts per known machine that fit the gallery (0: all)")
    ap.add_argument("--stop-after", choices=["simulate", "train"], default=None,
                    help="stop after this step (e.g. train on a GPU box, the rest elsewhere)")
    ap.add_argument("--checkpoint", default=None,
                    help="a checkpoint.pt trained on this same dataset elsewhere: skip the training")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a training setting ({', '.join(SHIPPED)}); not for the shipped model")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    a.name = a.name or f"amfp-synth-{a.recipe}"
    sim = dict((SIMULATION_QUICK if a.quick else SIMULATION)[a.recipe])
    for key, given in (("aux_units", a.aux_units), ("aux_parts", a.aux_parts_per_machine),
                       ("aux_micro_parts", a.aux_microscope_parts_per_machine)):
        if given is not None:
            sim[key] = given
    s = dict(RECIPES[a.recipe][1 if a.quick else 0])
    for kv in a.set:
        k, _, v = kv.partition("=")
        if k not in s:
            raise SystemExit(f"--set {kv}: unknown setting {k!r}")
        s[k] = type(s[k])(v)
    synth_args = list(a.synth_arg)
    if sim["split"] and not any(x == "--split" or x.startswith("--split=") for x in synth_args):
        synth_args.append(f"--split={sim['split']}")
    split_val = float(sim["split"].split(",")[1]) if sim["split"] else 0.15
    micro_parts = a.microscope_parts_per_machine
    if micro_parts is None:
        micro_parts = 2 if a.quick else 50
    n_main = len([m for m in a.machines.split(",") if m]) or 21
    n_models = 7 if not a.machines else len({m.rsplit("-", 1)[0] for m in a.machines.split(",") if m})
    n_aux = n_models * sim["aux_units"] if not a.data else 0
    est_cpu = estimate_minutes(n_main + (0 if a.no_extra else len(EXTRA_MACHINES)), a.parts_per_machine,
                               micro_parts, n_aux, sim["aux_parts"], sim["aux_micro_parts"], s, split_val, cores=2)
    est_gpu = estimate_minutes(n_main + (0 if a.no_extra else len(EXTRA_MACHINES)), a.parts_per_machine,
                               micro_parts, n_aux, sim["aux_parts"], sim["aux_micro_parts"], s, split_val,
                               cores=16, gpu=True)
    est = (f"recipe {a.recipe} ({'quick' if a.quick else 'full'}): estimated {est_cpu['total']:.0f} min on the "
           f"project's 2-core CPU box ({est_cpu}), ~{est_gpu['total']:.0f} min on a GPU box with 16 cores "
           f"(not measured; CUDA is used when present, --workers 6 --threads 16 there) ({est_gpu})")
    log.info("%s", est)
    if a.estimate:
        print(est)
        return {"estimate": {"cpu_2_cores": est_cpu, "gpu": est_gpu}, "settings": s, "simulation": sim}

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
    aux_data = [d for d in a.aux_data.split(",") if d]
    units: list[tuple[str, str]] = []
    if a.data:
        data = Path(a.data)
        source = f"dataset:{data.name}"
        holdout = a.holdout or ""
        if sim["aux_units"] and not aux_data:
            log.warning("recipe %s: no auxiliary units with --data (give --aux-data to train with some)", a.recipe)
    else:
        if a.reuse_simulation and (out / "data" / "labels.csv").exists():
            data = out / "data"
            log.info("reusing the simulated dataset in %s", data)
        else:
            data = simulate(a.amfp, out, a.parts_per_machine, a.seed, not a.no_extra, a.machines, synth_args)
        source = f"synth:seed={a.seed};machines={'paper' if not a.machines else a.machines}" + \
                 ("+" + ",".join(n for n, _ in EXTRA_MACHINES) if not a.no_extra else "") + \
                 f";parts_per_machine={a.parts_per_machine}"
        if micro_parts:
            micro = out / "data-microscope"
            if a.reuse_simulation and (micro / "labels.csv").exists():
                log.info("reusing the simulated microscope dataset in %s", micro)
            else:
                micro = simulate_microscope(a.amfp, out, micro_parts, a.seed, MICROSCOPE_PIXEL_UM, synth_args,
                                            size="640x480" if a.quick else None)
            data = combine(out, {"scanner": data, "microscope": micro})
            source += f";microscope_parts_per_machine={micro_parts}@{MICROSCOPE_PIXEL_UM}um"
        if sim["split"]:
            source += f";split={sim['split']}"
        holdout = a.holdout if a.holdout is not None else ("" if a.no_extra else ",".join(n for n, _ in EXTRA_MACHINES))
        if sim["aux_units"]:
            extra_names = {n for n, _ in EXTRA_MACHINES}
            paper = [(n, m) for n, m in fleet_machines((out / "fleet.toml").read_text()) if n not in extra_names]
            units = aux_units(paper, sim["aux_units"])
            aux_data.append(str(simulate_aux(a.amfp, out, units, sim["aux_parts"], sim["aux_micro_parts"], a.seed,
                                             synth_args, "640x480" if a.quick else None, a.reuse_simulation)))
            source += (f";aux_units={len(units)}x({sim['aux_parts']}+{sim['aux_micro_parts']}@"
                       f"{MICROSCOPE_PIXEL_UM}um),seed+{AUX_SEED_OFFSET}")
    timings["simulate_s"] = round(time.time() - t0, 1)
    if a.stop_after == "simulate":
        log.info("simulated in %.1f min: %s", timings["simulate_s"] / 60, data)
        return {"data": str(data), "aux_data": aux_data, "timings": timings}
    if a.recipe != "v3":
        from .dataset import read_dataset

        labels_held = {h for h in holdout.split(",") if h}
        n_val = sum(1 for p in read_dataset(data).split("val") if p.label not in labels_held)
        if n_val < MIN_CALIBRATION_PARTS and not a.quick:
            log.warning("only %d known validation parts calibrate the gallery (issue 17 asks for >= %d)",
                        n_val, MIN_CALIBRATION_PARTS)

    t = time.time()
    targs = ["--data", str(data), "--out", str(out), "--name", a.name, "--source", source,
             "--seed", str(a.seed), "--holdout", holdout, "--threads", str(a.threads), "--workers", str(a.workers)]
    if aux_data:
        targs += ["--aux-data", ",".join(aux_data)]
    for k, v in s.items():  # every setting is a train flag of the same name: lr_decay -> --lr-decay
        targs += ["--" + k.replace("_", "-"), str(v)]
    if a.checkpoint:
        ckpt = Path(a.checkpoint)
        log.info("not training: the checkpoint %s (trained elsewhere on this dataset)", ckpt)
    else:
        ckpt = train(train_args(targs))
    timings["train_s"] = round(time.time() - t, 1)
    if a.stop_after == "train":
        log.info("trained in %.1f min: %s", timings["train_s"] / 60, ckpt)
        return {"checkpoint": str(ckpt), "timings": timings}

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
        "recipe": a.recipe, "simulation": dict(sim, aux_units_names=[n for n, _ in units], aux_data=aux_data,
                                               synth_args=synth_args),
        "estimate_min": {"cpu_2_cores": est_cpu, "gpu": est_gpu},
        "trained_elsewhere": {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt)} if a.checkpoint else None,
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
