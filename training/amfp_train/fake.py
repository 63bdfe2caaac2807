"""A tiny stand-in dataset in `amfp synth`'s layout, for tests and for trying the pipeline.

Not a simulator: each machine gets a striped texture (period, angle, noise
and brightness of its own, so that classes are learnable and processes
differ more than machines do), drawn on a brighter part with a hole on a
dark background (scanner mode) or filling the frame (microscope mode).
Written with numpy/PIL in exactly the layout the real simulator writes
(labels.csv + scans/*.png, or the ImageFolder tree), so the readers are
tested on the contract, not on this generator.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLUMNS = ["file", "serial", "machine", "process", "material", "design", "build", "tray_row",
           "tray_col", "pixel_size_um", "mode", "seed", "split"]

FAKE_FLEET = {"MJF": ["4200-1", "5200-1"], "SLA": ["F3B-1", "F3B-2"], "FDM": ["S450-1", "S900-1"]}
MATERIAL = {"MJF": "PA12", "SLA": "Grey V4", "DLS": "RPU 70", "FDM": "ABS-M30"}


def texture(machine_idx: int, proc_idx: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    period = 6.0 + 5.0 * proc_idx + 2.0 * (machine_idx % 2)  # px
    angle = 0.4 * machine_idx + 0.9 * proc_idx
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    phase = rng.uniform(0, 2 * np.pi)
    t = 0.5 + 0.25 * np.sin(2 * np.pi * u / period + phase)
    t += rng.normal(0, 0.05 + 0.04 * (machine_idx % 2), (h, w)).astype(np.float32)
    return t.astype(np.float32)


def write_fake(out: str | Path, parts_per_machine: int = 4, size: int = 160, seed: int = 0,
               fleet: dict[str, list[str]] | None = None, mode: str = "scanner",
               layout: str = "csv", pixel_um: float = 10.6, bits: int = 16,
               splits=(0.5, 0.25, 0.25)) -> Path:
    """Write the dataset; returns `out`. layout: 'csv' (scans/ + labels.csv) or 'imagefolder'
    (<split>/<machine>/ + labels.csv) or 'imagefolder-nocsv'."""
    out = Path(out)
    fleet = fleet or FAKE_FLEET
    rng = np.random.default_rng(seed)
    rows = []
    machines = [(proc, m) for proc in fleet for m in fleet[proc]]
    for mi, (proc, m) in enumerate(machines):
        pi = list(fleet).index(proc)
        n_train = max(1, int(round(parts_per_machine * splits[0])))
        n_val = max(1, int(round(parts_per_machine * splits[1])))
        for k in range(parts_per_machine):
            split = "train" if k < n_train else "val" if k < n_train + n_val else "test"
            serial = f"{m}-{k:06d}"
            img = texture(mi, pi, size, size, rng)
            if mode == "scanner":
                bg = rng.normal(0.05, 0.01, (size, size)).astype(np.float32)
                mask = np.zeros((size, size), bool)
                mg = size // 10
                mask[mg:size - mg, mg:size - mg] = True
                yy, xx = np.mgrid[0:size, 0:size]
                mask &= (yy - size * 0.3) ** 2 + (xx - size * 0.3) ** 2 > (size * 0.08) ** 2  # a hole
                img = np.where(mask, img, bg)
            img = np.clip(img, 0, 1)
            if bits == 16:
                im = Image.fromarray((img * 65535).astype(np.uint16))
            else:
                im = Image.fromarray((img * 255).astype(np.uint8))
            if layout == "csv":
                rel = f"scans/{serial}.png"
            else:
                rel = f"{split}/{m}/{serial}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            im.save(out / rel)
            rows.append({"file": rel, "serial": serial, "machine": m, "process": proc,
                         "material": MATERIAL.get(proc, "x"), "design": "D1", "build": str(k % 2),
                         "tray_row": str(k % 3), "tray_col": str(k % 2), "pixel_size_um": str(pixel_um),
                         "mode": mode, "seed": str(seed * 1000 + len(rows)), "split": split})
    if layout != "imagefolder-nocsv":
        with open(out / "labels.csv", "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return out


if __name__ == "__main__":  # python -m amfp_train.fake OUT [parts_per_machine]
    import sys

    write_fake(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)
