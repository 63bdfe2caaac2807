"""The drift benchmark's pieces (the stable fleet, the build where a machine falls below 95 %
right, its seeds) and, with AMFP_BIN, a quick run through the real binary's `amfp drift report`."""

import json
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from amfp_train import drift, enrollment, openset
from tests.test_enrollment import files_to_search

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"
MODEL = REPO / "models" / "amfp-synth-v3.int8.onnx"
AMFP = os.environ.get("AMFP_BIN")


def test_the_stable_fleet_holds_every_rate_at_zero_and_changes_nothing_else():
    before = tomllib.loads(FLEET.read_text())
    after = tomllib.loads(drift.stable_fleet(FLEET.read_text()))
    rates = 0

    def walk(a, b, where):
        nonlocal rates
        for key, v in a.items():
            if isinstance(v, dict):
                walk(v, b[key], f"{where}.{key}")
            elif key.endswith("_per_build"):
                rates += 1
                assert b[key] == 0.0, (where, key)
            else:
                assert b[key] == v, (where, key)

    for m0, m1 in zip(before["machine"], after["machine"], strict=True):
        walk(m0, m1, m0["name"])
    assert rates >= 21
    with pytest.raises(ValueError):
        drift.stable_fleet("[[machine]]\nname = \"x\"\n")


def test_the_build_below_95_percent_comes_from_a_non_increasing_fit():
    builds = np.repeat(np.arange(1, 201, 5), 4)
    # Right until build 100, then wrong: below from the first build past 100.
    assert drift.build_below(builds, builds < 100) == 101
    assert drift.build_below(builds, np.ones(len(builds), dtype=bool)) is None
    # One early miss among right parts is pooled away; a late drop is found where it is.
    right = builds < 150
    right[8] = False  # a part of build 11
    assert drift.build_below(builds, right) == 151
    # Wrong at first and right later, or never right: below from the first build.
    assert drift.build_below(builds, builds > 20) == 1
    assert drift.build_below(builds, np.zeros(len(builds), dtype=bool)) == 1
    xs, fit = drift.decreasing_fit(builds, builds > 20)
    assert (np.diff(fit) <= 0).all() and len(xs) == 40


def test_benchmark_seeds_are_used_nowhere_else():
    n = max(len(range(1, p["last_build"] + 1, p["step"])) for p in (drift.FULL, drift.STATION))
    seeds = {drift.BASE_SEED + o + i for o in drift.SEED_OFFSETS.values() for i in range(n)}
    assert len(seeds) == n * len(drift.SEED_OFFSETS)
    others = {openset.BASE_SEED + o for o in openset.SEED_OFFSETS.values()}
    others |= {enrollment.BASE_SEED + o for o in enrollment.SEED_OFFSETS.values()}
    assert not seeds & others
    # Not inside a decimal number (benchmark timings hold digits like 0.62517).
    alternatives = "|".join(f"{s}|{s // 1000}_{s % 1000:03d}" for s in sorted(seeds))
    pattern = re.compile(r"(?<![\d.])(" + alternatives + r")(?![\d.])")
    mine = {"drift.py", "test_drift.py", "drift.md"}
    for f in files_to_search():
        if f.name in mine or f.name.endswith(".drift.md") or f.name.endswith(".drift.json") \
                or f.name.endswith(".gallery.json") or f.name.endswith(".fleet.toml"):
            continue
        m = pattern.search(f.read_text(errors="ignore"))
        assert m is None, f"{f}: uses the drift benchmark's seed {m.group(0)}"


@pytest.mark.skipif(not AMFP, reason="needs the amfp binary (AMFP_BIN)")
def test_quick_run_through_the_binary(tmp_path):
    """Two machines over three builds, both streams judged and replayed by the real binary."""
    res = drift.main(["--amfp", AMFP, "--model", str(MODEL), "--out", str(tmp_path), "--quick"])
    for mode in ("claimed", "nearest"):
        m = res["modes"][mode]
        assert [r["machine"] for r in m["drifting"]] == drift.QUICK_MACHINES
        for r in m["drifting"]:
            assert r["parts"] == 3 and r["right_first_fifth"][1] == 1
        assert [t["threshold"] for t in m["thresholds"]] == list(drift.THRESHOLDS)
        assert (tmp_path / mode / "drifting.png").stat().st_size > 0
        lines = (tmp_path / f"drifting-{mode}.jsonl").read_text().splitlines()
        assert len(lines) == 6 and all("drift" not in json.loads(ln) for ln in lines)  # identify does not monitor
    # Claimed: every stable part claims its own machine and is followed against it.
    assert res["modes"]["claimed"]["stable"]["parts_followed"] == 6
    claims = [json.loads(ln)["claim"]["label"] for ln in (tmp_path / "drifting-claimed.jsonl").read_text().splitlines()]
    assert sorted(claims) == sorted(drift.QUICK_MACHINES * 3)
    assert "Bars (issue 21)" in (tmp_path / "drift.md").read_text()
