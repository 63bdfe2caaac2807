"""Reading a dataset of part scans: `labels.csv` (preferred) or a plain ImageFolder tree.

Why parts, not images: the paper splits by part and votes by part, and a real
dataset may hold several scans of one part (both faces, rescans). Every image
row is therefore grouped by its `serial` into a `Part`; a part belongs to one
split only, and `read_dataset` refuses a CSV where one serial sits in two
splits (that would leak the test set into training).

Layouts accepted (the one `amfp synth` writes, and real scans the same way):

* ``DIR/labels.csv`` with at least ``file`` and a label column; usually
  ``file,serial,machine,process,material,design,build,tray_row,tray_col,
  pixel_size_um,mode,seed,split``. ``file`` is relative to DIR. Any column can
  be the task (``--task machine|process|material|tray_row|...``).
* ``DIR/<split>/<label>/<image>`` (ImageFolder) with no CSV: the split comes
  from the first folder, the label from the second, each image is its own part.

Pixel values are read as intensities in [0, 1] (8-bit / 255, 16-bit / 65535):
the daemon must scale the same way before applying ``amfp.mean``/``amfp.std``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DEFAULT_PIXEL_UM = 10.6


@dataclass
class Part:
    """One physical part: its label for the task, split and image files."""

    serial: str
    label: str
    split: str
    files: list[Path]
    pixel_size_um: float
    mode: str = "unknown"  # scanner | microscope | unknown
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def process(self) -> str:
        return self.meta.get("process", "unknown")


@dataclass
class Dataset:
    """All parts of a dataset plus what identifies it (for amfp.trained_on)."""

    root: Path
    task: str
    parts: list[Part]
    sha256: str
    layout: str  # "csv" | "imagefolder"

    def split(self, name: str) -> list[Part]:
        return [p for p in self.parts if p.split == name]

    def labels(self) -> list[str]:
        return sorted({p.label for p in self.parts}, key=natural_key)

    def label_process(self, labels: list[str] | None = None) -> dict[str, str]:
        """Process of each label. A label spanning processes (e.g. a material
        used by two processes) maps to the processes joined with '|'."""
        seen: dict[str, set[str]] = defaultdict(set)
        for p in self.parts:
            seen[p.label].add(p.process)
        out = {}
        for lab in labels or self.labels():
            procs = sorted(seen.get(lab, {"unknown"}))
            out[lab] = procs[0] if len(procs) == 1 else "|".join(procs)
        return out


def natural_key(s: str):
    """Sort 'M2-10' after 'M2-9'."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_dataset(root: str | Path, task: str = "machine", seed: int = 0,
                 val_frac: float = 0.1, test_frac: float = 0.1) -> Dataset:
    """Read `root` as a labels-CSV dataset if it has labels.csv, else as ImageFolder."""
    root = Path(root)
    if (root / "labels.csv").is_file():
        return _read_csv(root, task, seed, val_frac, test_frac)
    return _read_imagefolder(root, task)


def _read_csv(root: Path, task: str, seed: int, val_frac: float, test_frac: float) -> Dataset:
    path = root / "labels.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    cols = rows[0].keys()
    for need in ("file", task):
        if need not in cols:
            raise ValueError(f"{path}: no column {need!r} (columns: {', '.join(cols)})")
    has_serial = "serial" in cols
    has_split = "split" in cols
    parts: dict[str, Part] = {}
    for i, r in enumerate(rows):
        serial = r["serial"] if has_serial and r["serial"] else r["file"]
        label = r[task].strip()
        if label == "":
            raise ValueError(f"{path}: row {i + 2} has an empty {task!r}")
        split = r.get("split", "").strip() if has_split else ""
        if split and split not in SPLITS:
            raise ValueError(f"{path}: row {i + 2}: split {split!r} not in {SPLITS}")
        px = float(r["pixel_size_um"]) if r.get("pixel_size_um") else DEFAULT_PIXEL_UM
        mode = (r.get("mode") or "unknown").strip() or "unknown"
        file = root / r["file"]
        if serial in parts:
            p = parts[serial]
            if p.split != split:
                raise ValueError(f"{path}: part {serial!r} is in two splits ({p.split}, {split})")
            if p.label != label:
                raise ValueError(f"{path}: part {serial!r} has two labels ({p.label}, {label})")
            p.files.append(file)
        else:
            meta = {k: (v or "") for k, v in r.items() if k not in ("file",)}
            parts[serial] = Part(serial, label, split, [file], px, mode, meta)
    plist = list(parts.values())
    if not has_split or any(p.split == "" for p in plist):
        assign_splits(plist, seed, val_frac, test_frac)
    return Dataset(root, task, plist, sha256_file(path), "csv")


def _read_imagefolder(root: Path, task: str) -> Dataset:
    parts = []
    h = hashlib.sha256()
    for split in SPLITS:
        sdir = root / split
        if not sdir.is_dir():
            continue
        for ldir in sorted(d for d in sdir.iterdir() if d.is_dir()):
            for f in sorted(ldir.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                rel = f.relative_to(root).as_posix()
                h.update(rel.encode() + b"\n")
                parts.append(Part(f"{split}/{ldir.name}/{f.stem}", ldir.name, split, [f],
                                  DEFAULT_PIXEL_UM, "unknown", {}))
    if not parts:
        raise ValueError(f"{root}: neither labels.csv nor <split>/<label>/<image> folders")
    return Dataset(root, task, parts, h.hexdigest(), "imagefolder")


def assign_splits(parts: list[Part], seed: int, val_frac: float, test_frac: float) -> None:
    """Split by part, stratified per label, reproducibly (used when the CSV has no split)."""
    by_label: dict[str, list[Part]] = defaultdict(list)
    for p in parts:
        by_label[p.label].append(p)
    rng = random.Random(seed)
    for lab in sorted(by_label):
        group = sorted(by_label[lab], key=lambda p: p.serial)
        rng.shuffle(group)
        n = len(group)
        n_test = int(round(n * test_frac))
        n_val = int(round(n * val_frac))
        for i, p in enumerate(group):
            p.split = "test" if i < n_test else "val" if i < n_test + n_val else "train"


def load_gray(path: Path) -> np.ndarray:
    """Load an image as float32 intensities in [0, 1], whatever its bit depth."""
    a, scale = load_gray_raw(path)
    return np.clip(a.astype(np.float32) * scale, 0.0, 1.0)


def load_gray_raw(path: Path) -> tuple[np.ndarray, float]:
    """The image's own values (uint8, or float32 for other depths) and the factor to [0, 1]."""
    with Image.open(path) as im:
        if im.mode == "L":
            return np.asarray(im, dtype=np.uint8).copy(), 1.0 / 255.0
        return _load_float(im)


def _load_float(im: Image.Image) -> tuple[np.ndarray, float]:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG/TIFF
        return np.asarray(im, dtype=np.float32), 1.0 / 65535.0
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32), 1.0
    return np.asarray(im.convert("L"), dtype=np.float32), 1.0 / 255.0


def resample(img: np.ndarray, src_um: float, dst_um: float) -> np.ndarray:
    """Area-resample from the scan's pixel size to the model's.

    Integer factors are exact block means (what an area filter does); other
    factors use PIL's BOX filter on float data. Upsampling is refused: the
    model would learn interpolation artefacts, and the daemon's envelope
    refuses a camera whose pixels are coarser than the model's.
    """
    f = dst_um / src_um
    if abs(f - 1.0) < 1e-6:
        return img
    if f < 1.0 - 1e-6:
        raise ValueError(f"scan pixel {src_um} um is coarser than the model's {dst_um} um")
    k = int(round(f))
    if abs(f - k) < 1e-6:
        h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
        return img[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float32)
    h, w = int(img.shape[0] / f), int(img.shape[1] / f)
    return np.asarray(Image.fromarray(np.ascontiguousarray(img, dtype=np.float32)).resize((w, h), Image.BOX), dtype=np.float32)


def describe(ds: Dataset) -> dict:
    """Counts per split and label, for logs and reports."""
    out: dict = {"root": str(ds.root), "task": ds.task, "layout": ds.layout, "sha256": ds.sha256}
    for s in SPLITS:
        c: dict[str, int] = defaultdict(int)
        for p in ds.split(s):
            c[p.label] += 1
        out[s] = dict(sorted(c.items(), key=lambda kv: natural_key(kv[0])))
    return out


if __name__ == "__main__":  # python -m amfp_train.dataset DIR [task]
    import sys

    print(json.dumps(describe(read_dataset(sys.argv[1], *(sys.argv[2:3] or ["machine"]))), indent=1))
