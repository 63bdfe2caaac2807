"""The open-set benchmark: what `amfp identify` says about parts it knows, parts of printers it
has never seen, and surfaces no printer made (docs/openset.md).

Every image is simulated afresh, with seeds that no training, calibration or test of the project
uses (``BASE_SEED`` = 31 000 and offsets from it, ``SEED_OFFSETS``), and judged through the
amfp binary exactly as a user's images are (``amfp identify --json``). Cases:

==============  ===========================================================================
``known``       the model's machines (its labels, simulated from its fleet file), scanner PNG
``heldout``     eight new units of the known printer models, two per process, in a benchmark
                fleet (``HELDOUT_UNITS``): names never used elsewhere, so the simulator draws
                new unit-to-unit deviations for them; no training or calibration saw them
``textures``    surfaces no printer made (`amfp_train.textures`: noise, blank, blurred,
                machined, sanded, cast, paper, fabric, JPEG-blocked, halftone)
``jpeg75/85/95`` the first parts of ``known`` again, written as JPEG at that quality
``micro3/5``    the known machines through a USB microscope at 3 and 5 µm/px
``builds``      the known machines' parts of later builds (``--first-build`` 50, 100, 150)
==============  ===========================================================================

For each model (f32 and int8: ``--model`` twice) one table: per case, parts, identified right,
wrong, unknown and rejected (counts and rates with standard errors sqrt(p(1-p)/n)), the share
caught at 1 % and 5 % false reject (thresholds set on this run's known parts' scores) and the
AUROC against the known parts. The score is the gallery's distance when the model has a gallery
(``mode: "gallery"``; both of its tests, relative and plain distance, as ranks among the known
parts, the larger of the two), else one minus the vote share. Every number is measured on
SIMULATED parts.

::

    python -m amfp_train.openset --amfp target/release/amfp \\
        --model models/amfp-synth-v3.onnx --model models/amfp-synth-v3.int8.onnx --out build/openset

``--quick`` runs a tiny version (a few parts per case) for CI.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"

# Seeds: the benchmark's own range. The project's other seeds (grep -rn seed): 1-11, 42, 77, 99,
# 1001, 1234, 2024, 4321, 31337 (test_engine_parity), 20261121-20261124 (Rust tests), 7 (the
# reference fleet and its training set). Each case adds its offset to --seed (default BASE_SEED).
BASE_SEED = 31_000
SEED_OFFSETS = {
    "known": 10,      # also jpeg75/85/95: the same parts, written as JPEG (a paired comparison)
    "heldout": 20,
    "textures": 30,   # textures; the defocus family blurs the known case's scans
    "micro3": 40,
    "micro5": 41,
    "builds": 50,     # + 0, 1, 2 for the first builds 50, 100, 150
}

# Held-out units: two per process, covering all seven printer models of the reference fleet.
# Their names appear nowhere else (not in the model's fleet, nor reproduce.EXTRA_MACHINES), so the
# simulator draws each a new unit-to-unit deviation from the fleet seed and the name.
HELDOUT_UNITS = [
    ("4200-11", "hp-mjf-4200", "MJF"), ("5200-11", "hp-mjf-5200", "MJF"),
    ("F3B-11", "formlabs-form3b", "SLA"), ("F3B-12", "formlabs-form3b", "SLA"),
    ("M2-11", "carbon-m2", "DLS"), ("L1-11", "carbon-l1", "DLS"),
    ("S450-11", "stratasys-f450mc", "FDM"), ("S900-11", "stratasys-f900", "FDM"),
]

JPEG_QUALITIES = (75, 85, 95)
MICRO_PIXEL_UM = {"micro3": 3.0, "micro5": 5.0}
FIRST_BUILDS = (50, 100, 150)

# kinds of case: "known" parts should be named right; "novel" ones (held-out units, textures)
# should end unknown or rejected
KIND = {"known": "known", "heldout": "novel", "textures": "novel", "jpeg75": "known", "jpeg85": "known",
        "jpeg95": "known", "micro3": "known", "micro5": "known", "builds": "known"}
CASES = list(KIND)

FULL = {"known_parts": 40, "heldout_parts": 40, "texture_parts": 20, "jpeg_parts": 20, "micro_parts": 20,
        "build_parts": 10}
QUICK = {"known_parts": 2, "heldout_parts": 2, "texture_parts": 1, "jpeg_parts": 1, "micro_parts": 1,
         "build_parts": 1}
# --quick judges the known-machine variants (JPEG, microscope, later builds) on one unit of each
# printer model only (the simulation is most of a quick run's time)
QUICK_VARIANT_MACHINES = ["4200-1", "5200-1", "F3B-1", "L1-1", "M2-1", "S450-1", "S900-1"]

# simulation cost per part on one core of the project's 2-core x86-64 machine, seconds (measured
# with target/ci/amfp; used only to print an estimate before simulating)
# with target/ci/amfp; used only to print an estimate before simulating). Textures are drawn in
# Python on one core whatever --threads says.
SIM_COST_S = {"scanner": 0.45, "jpeg": 0.45, "microscope": 0.35}
TEXTURE_COST_S = 1.4
IDENTIFY_COST_S = 0.2  # per image and model, one core

# the bars (issue 17), checked on every model's table
BARS = {
    "known_right": 0.98, "known_unknown": 0.01, "known_wrong": 0.005,
    "heldout_caught": 0.90, "textures_caught": 0.99,
    "jpeg_points": 0.02, "jpeg_wrong": 0.005, "micro_points": 0.02, "builds_wrong": 0.01,
    "int8_points": 0.005,
}


# --------------------------------------------------------------------------------------------
# Statistics (pure; tested in tests/test_openset.py)


def rate(k: int, n: int) -> tuple[float, float]:
    """(p, standard error sqrt(p(1-p)/n)); (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    return p, math.sqrt(p * (1 - p) / n)


def frr_threshold(known: np.ndarray, frr: float) -> float:
    """The threshold t on a score (larger: more unlike the known machines) at which at most a
    fraction ``frr`` of the known parts score above t: the (n - 1 - floor(frr n))-th smallest
    known score. Parts above t are caught (called novel)."""
    k = np.sort(np.asarray(known, dtype=np.float64))
    if k.size == 0:
        return float("nan")
    allowed = int(math.floor(frr * k.size + 1e-9))
    return float(k[k.size - 1 - min(allowed, k.size - 1)])


def caught_at_frr(known: np.ndarray, scores: np.ndarray, frr: float) -> float:
    """Share of ``scores`` above the known parts' threshold at false-reject rate ``frr``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or np.size(known) == 0:
        return float("nan")
    return float(np.mean(s > frr_threshold(known, frr)))


def auroc(known: np.ndarray, scores: np.ndarray) -> float:
    """P(a part of the case scores above a known part), ties counting half (Mann-Whitney U / n m).
    Infinite scores (rejected parts) compare as the largest, equal to each other."""
    k = np.sort(np.asarray(known, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    if k.size == 0 or s.size == 0:
        return float("nan")
    below = np.searchsorted(k, s, side="left")
    equal = np.searchsorted(k, s, side="right") - below
    return float((below + 0.5 * equal).sum() / (k.size * s.size))


def rank_among(known: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's position among the known values: the share of known values below it plus
    half of those equal (0-1). Scale-free, so that two distances can be combined."""
    k = np.sort(np.asarray(known, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    if k.size == 0:
        return np.full(v.shape, np.nan)
    lo = np.searchsorted(k, v, side="left")
    hi = np.searchsorted(k, v, side="right")
    r = (lo + 0.5 * (hi - lo)) / k.size
    # beyond every known value: keep the order among them (they are all "caught" anyway)
    return np.where(v > k[-1], 1.0 + np.arctan(v - k[-1]) / math.pi / 1e3, r)


# --------------------------------------------------------------------------------------------
# One judged image


@dataclass
class Record:
    case: str
    path: str
    truth: str | None  # the machine for known kinds; None for novel ones
    group: str  # held-out unit, texture family, first build...
    verdict: str = "missing"  # identified | unknown | rejected | missing (no result)
    label: str | None = None
    mode: str = "vote"
    vote: float | None = None  # the leader's vote share
    distance: float | None = None
    plain_distance: float | None = None
    threshold: float | None = None
    outlier_threshold: float | None = None
    nearest: str | None = None
    reason_code: str | None = None
    top: str | None = None
    extra: dict = field(default_factory=dict)

    def outcome(self) -> str:
        """right | wrong | unknown | rejected | missing."""
        if self.verdict == "identified":
            return "right" if self.truth is not None and self.label == self.truth else "wrong"
        if self.verdict in ("unknown", "rejected"):
            return self.verdict
        return "missing"


def parse_attribution(rec: Record, a: dict) -> Record:
    """Fill a record from one `amfp identify --json` line (with or without the gallery fields)."""
    rec.verdict = a.get("verdict", "missing")
    rec.label = a.get("label")
    rec.vote = a.get("score")
    rec.reason_code = a.get("reason_code")
    top = a.get("top") or []
    rec.top = top[0]["label"] if top else None
    g = a.get("gallery")
    # no mode: a rejected image, judged by neither rule (older binaries: the vote)
    rec.mode = a.get("mode") or ("gallery" if isinstance(g, dict) else "none" if rec.verdict == "rejected" else "vote")
    if isinstance(g, dict):
        rec.extra["runner_up"] = g.get("runner_up")
        rec.extra["runner_up_distance"] = g.get("runner_up_distance")
        rec.distance = g.get("distance")
        rec.plain_distance = g.get("plain_distance")
        rec.threshold = g.get("threshold")
        rec.outlier_threshold = g.get("outlier_threshold")
        n = g.get("nearest")
        rec.nearest = n.get("label") if isinstance(n, dict) else n
    c = a.get("claim")  # with --claim LABEL: status, consistent, distance... (amfp_train.enrollment)
    if isinstance(c, dict):
        rec.extra["claim"] = c
    return rec


def scores(records: list[Record], which: str, known: list[Record] | None = None) -> np.ndarray:
    """A score per record, larger meaning more unlike the known machines; rejected and missing
    parts score +inf (no judgement is "caught" for a novel surface, a false reject for a known
    one). ``which``: ``vote`` (1 - vote share), ``distance`` (relative), ``plain_distance``, or
    ``combined`` (each distance's rank among ``known``'s, the larger: the gallery's two tests)."""
    def raw(rs: list[Record], attr: str) -> np.ndarray:
        out = []
        for r in rs:
            v = getattr(r, attr)
            if attr == "vote":
                v = None if v is None else 1.0 - v
            out.append(math.inf if r.verdict in ("rejected", "missing") or v is None else float(v))
        return np.array(out, dtype=np.float64)

    if which != "combined":
        return raw(records, which)
    if known is None:
        raise ValueError("combined scores need the known parts")
    out = None
    for attr in ("distance", "plain_distance"):
        k = raw(known, attr)
        k = k[np.isfinite(k)]
        r = rank_among(k, raw(records, attr))
        out = r if out is None else np.maximum(out, r)
    return out


def has_gallery(records: list[Record]) -> bool:
    return any(r.distance is not None for r in records)


def summarize(records: list[Record], known: list[Record], which: str) -> dict:
    """One row of the table for the records of one case (or group)."""
    n = len(records)
    c = Counter(r.outcome() for r in records)
    row: dict = {"parts": n}
    for o in ("right", "wrong", "unknown", "rejected", "missing"):
        p, se = rate(c.get(o, 0), n)
        row[o] = {"count": c.get(o, 0), "rate": p, "se": se}
    p, se = rate(c.get("unknown", 0) + c.get("rejected", 0), n)
    row["not_identified"] = {"count": c.get("unknown", 0) + c.get("rejected", 0), "rate": p, "se": se}
    ks = scores(known, which, known)
    s = scores(records, which, known)
    for frr in (0.01, 0.05):
        p = caught_at_frr(ks, s, frr)
        se = rate(round(p * n), n)[1] if n and not math.isnan(p) else float("nan")
        row[f"caught_at_{int(frr * 100)}pct"] = {"rate": p, "se": se,
                                                 "threshold": frr_threshold(ks, frr)}
    row["auroc"] = auroc(ks, s)
    named = Counter(r.label for r in records if r.verdict == "identified" and r.outcome() == "wrong")
    row["named_as"] = dict(named.most_common(5))
    reasons = Counter(r.reason_code for r in records if r.verdict == "rejected")
    row["rejected_reasons"] = dict(reasons)
    return row


def reference_parts(case: list[Record], known: list[Record]) -> list[Record]:
    """The known scanner-PNG parts a variant case is compared with: the very same parts where the
    case holds them (JPEG: the same serials), else the known parts of the same machines."""
    serials = {r.extra.get("serial") for r in case} - {None}
    same = [r for r in known if r.extra.get("serial") in serials]
    if same:
        return same
    machines = {r.truth for r in case}
    return [r for r in known if r.truth in machines]


def model_report(records: list[Record]) -> dict:
    """Tables of one model: per case (and per group within the case), on the primary score and
    on every score the results allow."""
    known = [r for r in records if r.case == "known"]
    gallery = has_gallery(records)
    primary = "combined" if gallery else "vote"
    avail = ["combined", "distance", "plain_distance", "vote"] if gallery else ["vote"]
    rep: dict = {"mode": "gallery" if gallery else "vote", "primary_score": primary, "cases": {}, "groups": {},
                 "by_score": {}}
    by_case: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_case[r.case].append(r)
    for case in [c for c in CASES if c in by_case] + [c for c in by_case if c not in CASES]:
        rs = by_case[case]
        rep["cases"][case] = dict(summarize(rs, known, primary), kind=KIND.get(case, "?"))
        if KIND.get(case) == "known" and case != "known":
            ref = reference_parts(rs, known)
            rep["cases"][case]["reference"] = {"parts": len(ref), "paired": case.startswith("jpeg"),
                                               "right": rate(sum(r.outcome() == "right" for r in ref), len(ref))[0]}
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in rs:
            groups[r.group].append(r)
        if len(groups) > 1 and any(r.group != r.truth for r in rs):  # held-out units, families, builds
            rep["groups"][case] = {g: summarize(v, known, primary) for g, v in sorted(groups.items())}
        rep["by_score"][case] = {}
        for w in avail:
            ks, s = scores(known, w, known), scores(rs, w, known)
            rep["by_score"][case][w] = {"caught_at_1pct": caught_at_frr(ks, s, 0.01),
                                        "caught_at_5pct": caught_at_frr(ks, s, 0.05), "auroc": auroc(ks, s)}
    modes = Counter(r.mode for r in records)
    rep["modes"] = dict(modes)
    rep["bars"] = check_bars(rep["cases"])
    return rep


def bar_row(what: str, value: float | None, limit: float, higher: bool) -> dict:
    """One bar: what, measured, limit, at_least or at_most, pass (None: not measured)."""
    ok = None if value is None or (isinstance(value, float) and math.isnan(value)) else \
        (value >= limit if higher else value <= limit)
    return {"bar": what, "measured": value, "limit": limit, "at_least" if higher else "at_most": True, "pass": ok}


def check_bars(cases: dict) -> list[dict]:
    """The issue's bars against one model's table: what, measured, bar, pass (None: not run)."""
    out = []

    def bar(what: str, value: float | None, limit: float, higher: bool) -> None:
        out.append(bar_row(what, value, limit, higher))

    k = cases.get("known")
    if k:
        bar("known: identified right", k["right"]["rate"], BARS["known_right"], True)
        bar("known: called unknown", k["unknown"]["rate"], BARS["known_unknown"], False)
        bar("known: wrong", k["wrong"]["rate"], BARS["known_wrong"], False)
    if "heldout" in cases:
        bar("held-out units: unknown or rejected", cases["heldout"]["not_identified"]["rate"], BARS["heldout_caught"], True)
    if "textures" in cases:
        t = cases["textures"]
        bar("textures: unknown or rejected", t["not_identified"]["rate"], BARS["textures_caught"], True)
        bar("textures: identified (count)", float(t["wrong"]["count"]), 0.0, False)
    def below(c: dict) -> float:  # points of accuracy below the same parts (or machines) as scanner PNG
        ref = c.get("reference") or {}
        return ref["right"] - c["right"]["rate"] if ref.get("parts") else float("nan")

    for q in JPEG_QUALITIES:
        c = cases.get(f"jpeg{q}")
        if c:
            bar(f"jpeg{q}: points below the same parts as PNG", below(c), BARS["jpeg_points"], False)
            bar(f"jpeg{q}: wrong", c["wrong"]["rate"], BARS["jpeg_wrong"], False)
    for m in MICRO_PIXEL_UM:
        c = cases.get(m)
        if c:
            bar(f"{m}: points below scans of the same machines", below(c), BARS["micro_points"], False)
    if "builds" in cases:
        bar("builds 50-150: wrong", cases["builds"]["wrong"]["rate"], BARS["builds_wrong"], False)
    return out


def compare_models(reports: dict[str, dict]) -> list[dict]:
    """int8 against f32 (the first model against each other): the headline rate of every case
    (right for known kinds, unknown or rejected for novel ones) within 0.5 points."""
    names = list(reports)
    out = []
    for other in names[1:]:
        for case, row in reports[other]["cases"].items():
            ref = reports[names[0]]["cases"].get(case)
            if not ref:
                continue
            key = "right" if KIND.get(case) == "known" else "not_identified"
            d = row[key]["rate"] - ref[key]["rate"]
            out.append({"model": other, "against": names[0], "case": case, "rate": key, "difference": d,
                        "limit": BARS["int8_points"], "pass": abs(d) <= BARS["int8_points"] + 1e-12})
    return out


def clean_json(x):
    """NaN and infinities as null (strict JSON), numpy numbers as Python's."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# --------------------------------------------------------------------------------------------
# Markdown


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _f3(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _cell(row: dict, key: str) -> str:
    c = row[key]
    if not row["parts"]:
        return "—"
    return f"{c['count']} ({_pct(c['rate'])} ± {_pct(c['se'])})"


def table_md(rep: dict, title: str) -> str:
    score = {"combined": "the gallery's two distances (relative, plain), each as its rank among this run's known "
                         "parts, the larger", "vote": "1 - vote share"}[rep["primary_score"]]
    lines = [f"### {title}", "",
             f"Mode: {', '.join(f'{k} ({v} parts)' for k, v in rep['modes'].items())}. Rates in %, ± one "
             f"standard error. Caught / AUROC: score = {score}; thresholds at 1 % and 5 % false reject "
             "of this run's known parts; rejected parts count as caught."
             + (f" **{missing} images got no result** (amfp could not read them: see its messages)."
                if (missing := sum(r["missing"]["count"] for r in rep["cases"].values())) else ""), "",
             "| case | parts | right | wrong | unknown | rejected | caught @1 % FRR | caught @5 % FRR | AUROC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, row in rep["cases"].items():
        right = "—" if row["kind"] == "novel" else _cell(row, "right")
        c1 = row["caught_at_1pct"]["rate"]
        c5 = row["caught_at_5pct"]["rate"]
        au = "—" if case == "known" else _f3(row["auroc"])
        lines.append(f"| {case} | {row['parts']} | {right} | {_cell(row, 'wrong')} | {_cell(row, 'unknown')} | "
                     f"{_cell(row, 'rejected')} | {_pct(c1)} | {_pct(c5)} | {au} |")
    for case, groups in rep["groups"].items():
        lines += ["", f"{case}, by {'unit' if case == 'heldout' else 'family' if case == 'textures' else 'group'}:", "",
                  "| group | parts | right | wrong | unknown | rejected | caught @1 % | AUROC | named as |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        kind = KIND.get(case)
        for g, row in groups.items():
            right = "—" if kind == "novel" else _cell(row, "right")
            named = ", ".join(f"{k} {v}" for k, v in row["named_as"].items()) or ""
            lines.append(f"| {g} | {row['parts']} | {right} | {_cell(row, 'wrong')} | {_cell(row, 'unknown')} | "
                         f"{_cell(row, 'rejected')} | {_pct(row['caught_at_1pct']['rate'])} | "
                         f"{_f3(row['auroc'])} | {named} |")
    if len(next(iter(rep["by_score"].values()), {})) > 1:
        lines += ["", "By score (caught @1 % / @5 % FRR, AUROC):", "",
                  "| case | " + " | ".join(next(iter(rep["by_score"].values()))) + " |",
                  "|---|" + "---|" * len(next(iter(rep["by_score"].values())))]
        for case, ws in rep["by_score"].items():
            if case == "known":
                continue
            lines.append(f"| {case} | " + " | ".join(
                f"{_pct(v['caught_at_1pct'])} / {_pct(v['caught_at_5pct'])} / {_f3(v['auroc'])}"
                for v in ws.values()) + " |")
    lines += ["", "Bars (issue 17):", ""] + bars_md(rep["bars"])
    return "\n".join(lines)


def bars_md(bars: list[dict]) -> list[str]:
    """The bars as a markdown table: a rate in % (a bar naming a count: the count)."""
    lines = ["| bar | measured | limit | pass |", "|---|---:|---:|---|"]
    for b in bars:
        m = b["measured"]
        ms = "—" if m is None else (f"{m:.0f}" if "count" in b["bar"] else f"{100 * m:.2f} %")
        lim = f"{b['limit']:.0f}" if "count" in b["bar"] else f"{'>=' if 'at_least' in b else '<='} {100 * b['limit']:.1f} %"
        lines.append(f"| {b['bar']} | {ms} | {lim} | {'—' if b['pass'] is None else 'yes' if b['pass'] else '**no**'} |")
    return lines


# --------------------------------------------------------------------------------------------
# Simulation


def read_fleet_header(path: Path) -> dict:
    """The fleet file's seed and unit_spread, and its machine names and models."""
    try:
        import tomllib

        d = tomllib.loads(path.read_text())
        return {"seed": d.get("seed", 7), "unit_spread": d.get("unit_spread", 1.0),
                "machines": {m["name"]: m.get("model") for m in d.get("machine", [])}}
    except ModuleNotFoundError:  # Python 3.10
        text = path.read_text()
        seed = re.search(r"^seed\s*=\s*(\d+)", text, re.M)
        spread = re.search(r"^unit_spread\s*=\s*([0-9.]+)", text, re.M)
        names = re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M)
        models = re.findall(r'^model\s*=\s*"([^"]+)"', text, re.M)
        return {"seed": int(seed.group(1)) if seed else 7, "unit_spread": float(spread.group(1)) if spread else 1.0,
                "machines": dict(zip(names, models))}


def benchmark_fleet(model_fleet: Path, units: list[tuple[str, str, str]] | None = None,
                    what: str = "amfp open-set benchmark: held-out units of known printer models (amfp_train.openset)") -> str:
    """The held-out units (``units``: (name, printer model, process); default ``HELDOUT_UNITS``)
    as a fleet file: the model fleet's seed and spread (so the units are drawn as the model's own
    were), new names of its printer models."""
    units = HELDOUT_UNITS if units is None else units
    head = read_fleet_header(model_fleet)
    clash = [n for n, _, _ in units if n in head["machines"]]
    if clash:
        raise SystemExit(f"{model_fleet} already has machines named {', '.join(clash)}: they would not be held out")
    text = [f"# {what}.",
            f"# Drawn like the model's fleet ({model_fleet.name}): same seed and spread, new names.", "",
            f"seed = {head['seed']}", f"unit_spread = {head['unit_spread']}", ""]
    for name, model, _ in units:
        text += ["[[machine]]", f'name = "{name}"', f'model = "{model}"', ""]
    return "\n".join(text)


def run_cmd(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log.debug("$ %s", " ".join(map(str, cmd)))
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def synth(amfp: str, fleet: Path, out: Path, machines: list[str], parts: int, seed: int, threads: int,
          extra: list[str] | None = None, reuse: bool = False) -> list[dict]:
    """Simulate (unless ``reuse`` and the dataset is complete) and return labels.csv's rows."""
    if not (reuse and (out / "labels.csv").is_file()):
        cmd = [amfp, "synth", "--fleet", fleet, "--machines", ",".join(machines), "--parts-per-machine", parts,
               "--seed", seed, "--out", out, "--overwrite", "--threads", threads, *(extra or [])]
        r = run_cmd(cmd)
        if r.returncode != 0:
            raise SystemExit(f"amfp synth failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr}")
    with open(out / "labels.csv", newline="") as f:
        return [dict(row, path=str(out / row["file"])) for row in csv.DictReader(f)]


@dataclass
class Plan:
    sizes: dict
    cases: list[str]
    known_machines: list[str]
    variant_machines: list[str]  # the known machines the JPEG, microscope and builds cases use

    def counts(self) -> dict[str, tuple[int, str]]:
        """(images, cost kind) per case."""
        k, s = len(self.variant_machines), self.sizes
        n = {"known": (len(self.known_machines) * s["known_parts"], "scanner"),
             "heldout": (len(HELDOUT_UNITS) * s["heldout_parts"], "scanner"),
             "textures": (len(texture_families()) * s["texture_parts"], "texture"),
             "micro3": (k * s["micro_parts"], "microscope"), "micro5": (k * s["micro_parts"], "microscope"),
             "builds": (k * s["build_parts"] * len(FIRST_BUILDS), "scanner")}
        for q in JPEG_QUALITIES:
            n[f"jpeg{q}"] = (k * min(s["jpeg_parts"], s["known_parts"]), "jpeg")
        return {c: n[c] for c in self.cases}

    def estimate(self, threads: int, models: int) -> tuple[float, float]:
        counts = self.counts().values()
        sim = sum(n * SIM_COST_S[kind] for n, kind in counts if kind != "texture") / max(1, threads)
        sim += sum(n * TEXTURE_COST_S for n, kind in counts if kind == "texture")
        ident = sum(n for n, _ in counts) * IDENTIFY_COST_S * models / max(1, threads)
        return sim, ident


def texture_families() -> list[str]:
    from .textures import FAMILIES

    return list(FAMILIES)


def simulate_all(a, plan: Plan, fleet: Path, out: Path) -> list[Record]:
    """Every case's images (simulated, or reused with --reuse) as records without verdicts."""
    from . import textures

    sim = out / "sim"
    sim.mkdir(parents=True, exist_ok=True)
    seed = a.seed
    known = plan.known_machines
    variants = plan.variant_machines
    s = plan.sizes
    th = a.threads
    recs: list[Record] = []
    times = {}

    def timed(case, fn):
        t = time.time()
        r = fn()
        times[case] = round(time.time() - t, 1)
        log.info("simulated %s: %d images in %.1f s", case, len(r), times[case])
        return r

    known_rows = []
    if any(c in plan.cases for c in ("known", "textures", *[f"jpeg{q}" for q in JPEG_QUALITIES])):
        known_rows = timed("known", lambda: synth(a.amfp, fleet, sim / "known", known, s["known_parts"],
                                                   seed + SEED_OFFSETS["known"], th, reuse=a.reuse))
    if "known" in plan.cases:
        recs += [Record("known", r["path"], r["machine"], r["machine"], extra={"serial": r["serial"]})
                 for r in known_rows]
    if "heldout" in plan.cases:
        bf = out / "benchmark-fleet.toml"
        bf.write_text(benchmark_fleet(fleet))
        rows = timed("heldout", lambda: synth(a.amfp, bf, sim / "heldout", [n for n, _, _ in HELDOUT_UNITS],
                                              s["heldout_parts"], seed + SEED_OFFSETS["heldout"], th, reuse=a.reuse))
        recs += [Record("heldout", r["path"], None, r["machine"]) for r in rows]
    if "textures" in plan.cases:
        tdir = sim / "textures"

        def make():
            if a.reuse and (tdir / "textures.csv").is_file():
                return textures.read_textures(tdir)
            scans = [Path(r["path"]) for r in known_rows]
            textures.write_textures(tdir, s["texture_parts"], seed + SEED_OFFSETS["textures"], scans=scans,
                                    log=log.info)
            return textures.read_textures(tdir)

        rows = timed("textures", make)
        recs += [Record("textures", str(r["path"]), None, r["family"], extra={"variant": r["variant"]}) for r in rows]
    for q in JPEG_QUALITIES:
        case = f"jpeg{q}"
        if case in plan.cases:
            n = min(s["jpeg_parts"], s["known_parts"])  # a prefix of the known case's parts, as JPEG
            rows = timed(case, lambda: synth(a.amfp, fleet, sim / case, variants, n, seed + SEED_OFFSETS["known"], th,
                                             ["--jpeg-quality", str(q)], reuse=a.reuse))
            recs += [Record(case, r["path"], r["machine"], r["machine"], extra={"serial": r["serial"]}) for r in rows]
    for case, um in MICRO_PIXEL_UM.items():
        if case in plan.cases:
            rows = timed(case, lambda: synth(a.amfp, fleet, sim / case, variants, s["micro_parts"],
                                             seed + SEED_OFFSETS[case], th,
                                             ["--mode", "microscope", "--pixel-um", str(um)], reuse=a.reuse))
            recs += [Record(case, r["path"], r["machine"], r["machine"]) for r in rows]
    if "builds" in plan.cases:
        for i, b in enumerate(FIRST_BUILDS):
            rows = timed(f"builds{b}", lambda: synth(a.amfp, fleet, sim / f"builds{b}", variants, s["build_parts"],
                                                     seed + SEED_OFFSETS["builds"] + i, th,
                                                     ["--first-build", str(b)], reuse=a.reuse))
            recs += [Record("builds", r["path"], r["machine"], f"from build {b}") for r in rows]
    (out / "simulation-times.json").write_text(json.dumps(times, indent=1))
    return recs


# --------------------------------------------------------------------------------------------
# Judging


def identify(amfp: str, model: str, records: list[Record], threads: int, chunk: int, extra: list[str],
             raw_out: Path | None = None) -> list[Record]:
    """Judge every record's image with `amfp identify --json`, in chunks; fills the records."""
    out: list[Record] = []
    raw = open(raw_out, "w") if raw_out else None
    try:
        for i in range(0, len(records), chunk):
            part = records[i:i + chunk]
            cmd = [amfp, "identify", "--model", model, "--json", "--threads", str(threads), *extra,
                   *[r.path for r in part]]
            r = run_cmd(cmd)
            if r.returncode not in (0, 3, 4, 5):  # 5: a claim contradicted (--claim)
                log.warning("amfp identify exit %d on %d images: %s", r.returncode, len(part), r.stderr.strip()[-2000:])
            by_name = {}
            lines = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("{")]
            for ln in lines:
                a = json.loads(ln)
                by_name[(a.get("source") or {}).get("name")] = a
                if raw:
                    raw.write(ln + "\n")
            for j, rec in enumerate(part):
                a = by_name.get(rec.path)
                if a is None and len(lines) == len(part):  # names rewritten: fall back to the order
                    a = json.loads(lines[j])
                rec2 = Record(**{**rec.__dict__, "extra": dict(rec.extra)})
                out.append(parse_attribution(rec2, a) if a is not None else rec2)
    finally:
        if raw:
            raw.close()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amfp", default=str(REPO / "target" / "release" / "amfp"), help="amfp binary")
    ap.add_argument("--model", action="append", required=True,
                    help="ONNX model (repeatable: f32 and int8); its gallery, if any, is the binary's to find")
    ap.add_argument("--fleet", default=str(DEFAULT_FLEET),
                    help="the model's fleet file (its known machines and the fleet seed the held-out units are drawn with)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=BASE_SEED, help=f"base seed (default {BASE_SEED}); cases add {SEED_OFFSETS}")
    ap.add_argument("--quick", action="store_true", help="a few parts per case (CI smoke test)")
    ap.add_argument("--cases", default="", help=f"only these cases (comma-separated; default all: {','.join(CASES)})")
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None,
                        help=f"per machine / unit / texture family (default {v}, --quick {QUICK[k]})")
    ap.add_argument("--variant-machines", default="",
                    help="known machines for the JPEG, microscope and builds cases (default: all the model's labels; "
                         f"--quick: {','.join(QUICK_VARIANT_MACHINES)})")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="amfp synth and identify threads")
    ap.add_argument("--chunk", type=int, default=250, help="images per `amfp identify` call")
    ap.add_argument("--identify-arg", action="append", default=[],
                    help="extra argument for amfp identify (repeatable), e.g. --identify-arg=--early-stop=off")
    ap.add_argument("--reuse", action="store_true", help="reuse images simulated into OUT by an earlier run")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, simulate nothing")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from .evaluate import read_meta

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fleet = Path(a.fleet)
    sizes = dict(QUICK if a.quick else FULL)
    for k in FULL:
        if getattr(a, k) is not None:
            sizes[k] = getattr(a, k)
    cases = [c for c in a.cases.split(",") if c] or CASES
    bad = [c for c in cases if c not in KIND]
    if bad:
        ap.error(f"unknown case(s) {', '.join(bad)}; known: {', '.join(CASES)}")
    metas = {m: read_meta(m) for m in a.model}
    labels = metas[a.model[0]].get("amfp.labels") or []
    for m, meta in metas.items():
        if (meta.get("amfp.labels") or []) != labels:
            raise SystemExit(f"{m}: labels differ from {a.model[0]}'s: the models must know the same machines")
    in_fleet = read_fleet_header(fleet)["machines"]
    missing = [lab for lab in labels if lab not in in_fleet]
    if missing:
        raise SystemExit(f"{fleet} has no machines named {', '.join(missing)} (the model's labels): "
                         "pass its fleet with --fleet")
    variant_machines = list(labels)
    if a.variant_machines:
        variant_machines = [m for m in a.variant_machines.split(",") if m]
    elif a.quick:
        variant_machines = [m for m in QUICK_VARIANT_MACHINES if m in labels] or list(labels)
    unknown = [m for m in variant_machines if m not in labels]
    if unknown:
        ap.error(f"--variant-machines: {', '.join(unknown)} not among the model's labels")
    plan = Plan(sizes, cases, list(labels), variant_machines)
    sim_s, id_s = plan.estimate(a.threads, len(a.model))
    total = sum(n for n, _ in plan.counts().values())
    print(f"open-set benchmark: {total} images ({', '.join(f'{c} {n}' for c, (n, _) in plan.counts().items())}); "
          f"estimated simulation {sim_s / 60:.1f} min, identification {id_s / 60:.1f} min on {a.threads} threads",
          flush=True)
    if a.dry_run:
        return {"counts": {c: n for c, (n, _) in plan.counts().items()}, "estimate_s": [sim_s, id_s]}

    t0 = time.time()
    records = simulate_all(a, plan, fleet, out)
    sim_took = time.time() - t0
    print(f"simulated in {sim_took / 60:.1f} min", flush=True)

    reports, md = {}, []
    res_dir = out / "results"
    res_dir.mkdir(exist_ok=True)
    for m in a.model:
        t = time.time()
        stem = Path(m).name.removesuffix(".onnx")
        judged = identify(a.amfp, m, records, a.threads, a.chunk, a.identify_arg, res_dir / f"{stem}.jsonl")
        rep = model_report(judged)
        rep["model"] = {"path": str(m), "name": metas[m].get("amfp.name", stem), "identify_s": round(time.time() - t, 1)}
        with open(res_dir / f"{stem}.parts.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "group", "path", "truth", "verdict", "label", "mode", "vote", "distance",
                        "plain_distance", "nearest", "reason_code"])
            for r in judged:
                w.writerow([r.case, r.group, r.path, r.truth or "", r.verdict, r.label or "", r.mode, r.vote,
                            r.distance, r.plain_distance, r.nearest or "", r.reason_code or ""])
        reports[stem] = rep
        md.append(table_md(rep, f"{stem} ({rep['mode']} mode)"))
        print("\n" + md[-1] + "\n", flush=True)
    comparison = compare_models(reports)
    head = [f"# Open-set benchmark ({'quick' if a.quick else 'full'})", "",
            "**Every number here is measured on SIMULATED parts and simulated non-AM textures** "
            "(`amfp synth`, `amfp_train.textures`), not on real scans; see docs/openset.md.", "",
            f"Base seed {a.seed} (cases: {', '.join(f'{c} +{o}' for c, o in SEED_OFFSETS.items())}); "
            f"fleet {fleet.name}; held-out units {', '.join(n for n, _, _ in HELDOUT_UNITS)}; sizes {sizes}; "
            f"simulation {sim_took / 60:.1f} min; binary {a.amfp}.", ""]
    if comparison:
        head += ["Models against the first (headline rate per case; bar: within 0.5 points):", "",
                 "| model | case | rate | difference (points) | pass |", "|---|---|---|---:|---|"]
        head += [f"| {c['model']} | {c['case']} | {c['rate']} | {100 * c['difference']:+.2f} | "
                 f"{'yes' if c['pass'] else '**no**'} |" for c in comparison]
        head.append("")
    (out / "openset.md").write_text("\n".join(head) + "\n" + "\n\n".join(md) + "\n")
    result = {"quick": a.quick, "seed": a.seed, "seed_offsets": SEED_OFFSETS, "sizes": sizes, "cases": cases,
              "fleet": str(fleet), "heldout_units": [list(u) for u in HELDOUT_UNITS],
              "simulation_s": round(sim_took, 1), "models": reports, "comparison": comparison,
              "note": "simulated parts and textures, not real scans"}
    (out / "openset.json").write_text(json.dumps(clean_json(result), indent=1))
    if comparison:
        print("\n".join(head[6:]))
    print(f"wrote {out / 'openset.md'} and {out / 'openset.json'}")
    return result


if __name__ == "__main__":
    main()
