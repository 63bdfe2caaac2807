"""The open-set benchmark's arithmetic (rates, standard errors, thresholds at a false-reject rate,
AUROC), its reading of `amfp identify --json`, and its held-out fleet and seeds."""

import math
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from amfp_train import openset as os_
from amfp_train.openset import Record
from amfp_train.reproduce import EXTRA_MACHINES

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"


def test_rate_and_standard_error():
    assert os_.rate(1, 4) == (0.25, pytest.approx(math.sqrt(0.25 * 0.75 / 4)))
    assert os_.rate(0, 10) == (0.0, 0.0)
    assert os_.rate(10, 10) == (1.0, 0.0)
    p, se = os_.rate(0, 0)
    assert math.isnan(p) and math.isnan(se)


def test_threshold_and_caught_at_false_reject_rate():
    known = np.arange(1, 101, dtype=float)  # 1..100
    # at 1 %, one known part of 100 may score above the threshold: t = 99
    assert os_.frr_threshold(known, 0.01) == 99
    assert os_.frr_threshold(known, 0.05) == 95
    assert os_.frr_threshold(known, 0.0) == 100
    assert np.mean(known > os_.frr_threshold(known, 0.01)) == 0.01
    assert os_.caught_at_frr(known, np.array([99.5, 100, 50, 200]), 0.01) == 0.75
    assert os_.caught_at_frr(known, np.array([96, 10]), 0.05) == 0.5
    # fewer than 1/frr known parts: none may be exceeded, the threshold is the largest
    assert os_.frr_threshold(np.array([3.0, 1.0, 2.0]), 0.01) == 3.0
    # rejected parts score +inf: always caught, unless as many known parts were rejected
    assert os_.caught_at_frr(known, np.array([np.inf]), 0.01) == 1.0


def test_auroc_with_ties_and_infinities():
    assert os_.auroc(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])) == pytest.approx(4.5 / 6)
    assert os_.auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert os_.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert os_.auroc(np.array([1.0, np.inf]), np.array([np.inf])) == 0.75
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 400), rng.normal(1, 1, 300)
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in b for y in a])
    assert os_.auroc(a, b) == pytest.approx(brute)


def test_rank_among_known():
    k = np.array([1.0, 2.0, 3.0, 4.0])
    r = os_.rank_among(k, np.array([0.0, 2.0, 2.5, 10.0, 20.0]))
    assert r[:3].tolist() == [0.0, 0.375, 0.5]
    assert 1.0 < r[3] < r[4]  # beyond every known part, order kept


def line(verdict, label=None, score=0.9, gallery=None, name="a.png", reason=None):
    a = {"source": {"kind": "file", "name": name}, "verdict": verdict, "score": score,
         "top": [{"label": label or "M2-1", "score": score}]}
    if label:
        a["label"] = label
    if reason:
        a["reason_code"] = reason
    if gallery:
        a["mode"] = "gallery"
        a["gallery"] = gallery
    return a


def test_reads_attributions_with_and_without_gallery():
    r = os_.parse_attribution(Record("known", "a.png", "M2-1", "M2-1"), line("identified", "M2-1"))
    assert (r.verdict, r.label, r.mode, r.vote, r.distance) == ("identified", "M2-1", "vote", 0.9, None)
    assert r.outcome() == "right"
    g = {"distance": -3.5, "plain_distance": 250.0, "threshold": 20.0, "outlier_threshold": 900.0,
         "nearest": {"label": "M2-2", "distance": -3.5}}
    r = os_.parse_attribution(Record("known", "a.png", "M2-1", "M2-1"), line("identified", "M2-2", gallery=g))
    assert (r.mode, r.distance, r.plain_distance, r.nearest) == ("gallery", -3.5, 250.0, "M2-2")
    assert r.outcome() == "wrong"
    r = os_.parse_attribution(Record("textures", "t.png", None, "blank"), line("rejected", reason="blank", score=None))
    assert r.outcome() == "rejected" and r.reason_code == "blank"
    assert os_.parse_attribution(Record("heldout", "h.png", None, "M2-11"), line("identified", "M2-3")).outcome() == "wrong"


def recs(case, outcomes, truth="M2-1", vote=None, dist=None, plain=None):
    out = []
    for i, o in enumerate(outcomes):
        r = Record(case, f"{case}{i}.png", truth, truth or "g")
        r.verdict = {"right": "identified", "wrong": "identified"}.get(o, o)
        r.label = truth if o == "right" else "S450-1" if o == "wrong" else None
        r.vote = None if vote is None else vote[i]
        r.distance = None if dist is None else dist[i]
        r.plain_distance = None if plain is None else plain[i]
        out.append(r)
    return out


def test_summary_row_by_hand():
    known = recs("known", ["right"] * 8 + ["wrong", "unknown"], vote=[0.99] * 8 + [0.6, 0.3])
    held = recs("heldout", ["wrong", "unknown", "rejected", "unknown"], truth=None, vote=[0.95, 0.4, None, 0.2])
    row = os_.summarize(held, known, "vote")
    assert row["parts"] == 4
    assert row["wrong"]["count"] == 1 and row["unknown"]["count"] == 2 and row["rejected"]["count"] == 1
    assert row["not_identified"]["rate"] == 0.75
    assert row["unknown"]["se"] == pytest.approx(math.sqrt(0.5 * 0.5 / 4))
    # known scores 1 - vote: eight 0.01, 0.4, 0.7; at 5 % of 10 parts none may be exceeded -> t = 0.7
    # held-out scores: 0.05, 0.6, inf, 0.8 -> caught 2 of 4
    assert row["caught_at_5pct"]["rate"] == 0.5
    # AUROC: 0.05 beats 8 (of 10); 0.6 beats 9; inf beats 10; 0.8 beats 10 -> 37 / 40
    assert row["auroc"] == pytest.approx(37 / 40)
    assert row["named_as"] == {"S450-1": 1}
    rep = os_.model_report(known + held)
    assert rep["mode"] == "vote" and rep["primary_score"] == "vote"
    assert rep["cases"]["known"]["right"]["rate"] == 0.8
    bars = {b["bar"]: b["pass"] for b in rep["bars"]}
    assert bars["known: identified right"] is False and bars["held-out units: unknown or rejected"] is False
    md = os_.table_md(rep, "test")
    assert "| heldout | 4 | — | 1 (25.0 ± 21.7) |" in md


def test_combined_gallery_score_is_the_larger_rank():
    known = recs("known", ["right"] * 4, dist=[1.0, 2.0, 3.0, 4.0], plain=[10.0, 20.0, 30.0, 40.0])
    # relative distance ordinary but plain distance beyond every known part: caught by the plain test
    far = recs("textures", ["unknown", "identified"], truth=None, dist=[2.0, 1.0], plain=[500.0, 20.0])
    s = os_.scores(far, "combined", known)
    assert s[0] > 1.0 and s[1] == pytest.approx(0.375)
    rep = os_.model_report(known + far)
    assert rep["mode"] == "gallery" and rep["primary_score"] == "combined"
    assert set(rep["by_score"]["textures"]) == {"combined", "distance", "plain_distance", "vote"}


def test_compare_models_within_half_a_point():
    a = os_.model_report(recs("known", ["right"] * 200, vote=[0.9] * 200))
    b = os_.model_report(recs("known", ["right"] * 199 + ["unknown"], vote=[0.9] * 199 + [0.2]))
    c = os_.model_report(recs("known", ["right"] * 198 + ["unknown"] * 2, vote=[0.9] * 198 + [0.2] * 2))
    cmp = os_.compare_models({"f32": a, "int8": b, "other": c})
    assert [(x["model"], x["pass"]) for x in cmp] == [("int8", True), ("other", False)]


def test_heldout_units_are_new_and_cover_every_process():
    fleet = tomllib.loads(FLEET.read_text())
    fleet_names = {m["name"] for m in fleet["machine"]}
    models = {m.get("model") for m in fleet["machine"]}
    names = [n for n, _, _ in os_.HELDOUT_UNITS]
    assert len(names) >= 8 and len(set(names)) == len(names)
    assert not set(names) & fleet_names
    assert not set(names) & {n for n, _ in EXTRA_MACHINES}
    assert {p for _, _, p in os_.HELDOUT_UNITS} == {"MJF", "SLA", "DLS", "FDM"}
    assert {m for _, m, _ in os_.HELDOUT_UNITS} <= models  # known printer models only
    # the benchmark fleet draws them like the model's own units: same seed and spread
    bf = tomllib.loads(os_.benchmark_fleet(FLEET))
    assert bf["seed"] == fleet["seed"] and bf["unit_spread"] == fleet["unit_spread"]
    assert [m["name"] for m in bf["machine"]] == names


def test_benchmark_seeds_are_used_nowhere_else():
    seeds = {os_.BASE_SEED + o for o in os_.SEED_OFFSETS.values()} | {os_.BASE_SEED + os_.SEED_OFFSETS["builds"] + i
                                                                      for i in range(len(os_.FIRST_BUILDS))}
    assert len(seeds) == len(os_.SEED_OFFSETS) + len(os_.FIRST_BUILDS) - 1
    mine = {"openset.py", "test_openset.py", "openset.md", "textures.py", "non-am-textures.md"}
    pattern = re.compile(r"\b(" + "|".join(f"{s}|{s // 1000}_{s % 1000:03d}" for s in seeds) + r")\b")
    for sub in ("src", "tests", "training", "benches", ".ci", "docs", "models"):
        for f in (REPO / sub).rglob("*"):
            if f.suffix not in {".rs", ".py", ".md", ".toml", ".sh", ""} or not f.is_file() or f.name in mine:
                continue
            if "__pycache__" in f.parts:
                continue
            text = f.read_text(errors="ignore")
            m = pattern.search(text)
            assert m is None, f"{f}: uses the open-set benchmark's seed {m.group(0)}"


def test_cli_refuses_unknown_cases(tmp_path):
    with pytest.raises(SystemExit):
        os_.main(["--model", "x.onnx", "--out", str(tmp_path), "--cases", "nonsense"])


@pytest.mark.skipif(not os.environ.get("AMFP_BIN"), reason="needs the amfp binary (AMFP_BIN)")
def test_end_to_end_on_held_out_units(tmp_path):
    """A tiny run through the real binary: one part of each held-out unit, simulated and judged."""
    model = REPO / "models" / "amfp-synth-v3.int8.onnx"
    res = os_.main(["--amfp", os.environ["AMFP_BIN"], "--model", str(model), "--out", str(tmp_path), "--cases",
                    "heldout", "--heldout-parts", "1", "--threads", "2"])
    rep = res["models"]["amfp-synth-v3.int8"]
    row = rep["cases"]["heldout"]
    assert row["parts"] == len(os_.HELDOUT_UNITS) and row["missing"]["count"] == 0
    assert row["wrong"]["count"] + row["unknown"]["count"] + row["rejected"]["count"] == row["parts"]
    assert set(rep["groups"]["heldout"]) == {n for n, _, _ in os_.HELDOUT_UNITS}
    assert (tmp_path / "openset.md").read_text().count("SIMULATED") >= 1
    assert (tmp_path / "benchmark-fleet.toml").is_file()
