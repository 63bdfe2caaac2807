#!/usr/bin/env python3
"""Side by side: two builds of amfp judging the same images, stage by stage.

Why: a build setting that shrinks the binary (opt-level "s", a Cargo feature left out) can cost
speed, and the cost is what decides it. This runs `amfp identify --json --threads 1` of each build
on the same images, in turn (A, B, A, B, ...) so that a busy machine slows both alike, sums each
stage's `timing_ms` per run, checks that both builds give the same verdicts, and prints the median
per-part times and the ratio B / A. Run it where the binary will run (on a Raspberry Pi for the
edge profile: copy both binaries and a directory of scans there).

    python3 benches/compare_builds.py target/ci/amfp /tmp/other/amfp --images DIR [--rounds 3]

Images: every PNG/JPEG/TIFF in DIR (e.g. `amfp synth --out DIR` makes DIR/scans/). Both builds
use the bundled model unless --model is given, and an empty configuration (no user config).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("capture", "preprocess", "inference", "total")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def judge(binary: Path, images: list[Path], model: Path | None, config: Path) -> tuple[dict[str, float], list[str]]:
    """One run of `amfp identify` over every image: summed ms per stage, and the verdicts."""
    cmd = [str(binary), "identify", "--json", "--threads", "1", "--config", str(config)]
    if model is not None:
        cmd += ["--model", str(model)]
    p = subprocess.run(cmd + [str(i) for i in images], capture_output=True, text=True)
    # Exit status 3-5 are verdicts (unknown source, rejected image, contradicted claim), not failures.
    if p.returncode not in (0, 3, 4, 5):
        sys.exit(f"{binary} identify exited {p.returncode}:\n{p.stderr[-3000:]}")
    sums = dict.fromkeys(STAGES, 0.0)
    verdicts = []
    for line in p.stdout.splitlines():
        r = json.loads(line)
        for s in STAGES:
            sums[s] += r.get("timing_ms", {}).get(s, 0.0)
        verdicts.append(json.dumps({k: r.get(k) for k in ("verdict", "label", "process", "score", "margin", "top")}, sort_keys=True))
    if len(verdicts) != len(images):
        sys.exit(f"{binary}: {len(verdicts)} results for {len(images)} images")
    return sums, verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="build A (the reference)")
    ap.add_argument("b", type=Path, help="build B (the candidate)")
    ap.add_argument("--images", type=Path, required=True, help="directory of images (searched recursively)")
    ap.add_argument("--model", type=Path, help="model for both (default: the bundled one)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each build, in turn (default 3)")
    a = ap.parse_args()

    images = sorted(p for p in a.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        sys.exit(f"no PNG, JPEG or TIFF images under {a.images}")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "empty.toml"
        config.write_text("")
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        verdicts: dict[str, list[str]] = {}
        for _ in range(a.rounds):
            for name, binary in (("A", a.a), ("B", a.b)):
                sums, v = judge(binary, images, a.model, config)
                runs[name].append(sums)
                if verdicts.setdefault(name, v) != v:
                    sys.exit(f"build {name} gave different verdicts on a repeated run")
    same = verdicts["A"] == verdicts["B"]
    n = len(images)
    print(f"{n} images, {a.rounds} runs of each build in turn; A = {a.a}, B = {a.b}")
    print(f"verdicts: {'identical' if same else 'DIFFERENT'}")
    print("| stage | A ms/part (median) | B ms/part (median) | B / A |")
    print("| --- | ---: | ---: | ---: |")
    for s in STAGES:
        ma = statistics.median(r[s] for r in runs["A"]) / n
        mb = statistics.median(r[s] for r in runs["B"]) / n
        print(f"| {s} | {ma:.1f} | {mb:.1f} | {mb / ma:.2f} |" if ma > 0 else f"| {s} | {ma:.1f} | {mb:.1f} | - |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
