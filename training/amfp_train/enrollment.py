"""The enrollment benchmark (issue 21): enroll new machines into a model's fingerprint gallery
without retraining (`amfp enroll`), then verify claimed sources (`amfp identify --claim`), through
the real amfp binary (docs/gallery.md, "Enrollment benchmark").

Eight new units of printer models the model knows (``UNITS``: names no other file of the project
uses, so the simulator draws new unit-to-unit deviations for them from the fleet seed and the
name) are enrolled **one after another into one copy of the gallery**, each from 10 parts of two
builds (5 parts of build 1, 5 of build 4), so that every later enrollment competes with the
earlier ones. Then fresh parts (other seeds, builds from 6) of the units and of the model's known
machines are judged with the base gallery and with the enrolled one:

- enrollment: each unit's fresh parts identified as it (bar >= 95 % per unit); other machines'
  parts taken by an enrolled unit (bar <= 0.5 %); accuracy on the known machines, base against
  enrolled on the same parts (bar: within 0.5 points); the base gallery's verdicts on the units'
  parts (mostly unknown); each enrollment's refused parts, warnings, offset, nearest machine and
  time;
- claims (1:1): each fresh part claimed as its own machine (genuine), as every sibling unit of its
  printer model in the enrolled gallery and as ``--other-claims`` labels of other printer models
  drawn at random (impostor). A claim is accepted when ``claim.status == "confirmed"``. Bar: <= 1 %
  false accepts (overall, and for sibling claims alone) at <= 2 % false rejects.

Every rate comes with its count and its standard error sqrt(p(1-p)/n). Every number is measured on
SIMULATED parts.

Seeds: ``BASE_SEED`` = 61 000 plus ``SEED_OFFSETS`` (enrollment parts of build 1: +1, of build 4:
+2; the units' fresh parts: +10; the known machines' fresh parts: +20; the sample of other labels
claimed: +30). No other file of the project uses them (tests/test_enrollment.py checks).

::

    python -m amfp_train.enrollment --amfp ../target/ci/amfp --model ../models/amfp-synth-v3.int8.onnx \\
        --gallery ../models/amfp-synth-v3.int8.gallery.json --fleet ../models/amfp-synth-v3.fleet.toml \\
        --out ../build/enroll-bench [--quick] [--threads N] [--reuse] [--md PATH]

The model's gallery is only read: the enrollments go into ``OUT/galleries/enrolled.gallery.json``,
a copy made afresh on every run. ``--quick``: two sibling units, three known machines, a few parts
(under a minute on 2 cores), for tests.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .openset import (DEFAULT_FLEET, IDENTIFY_COST_S, REPO, SIM_COST_S, Record, _pct, bar_row, bars_md,
                      benchmark_fleet, clean_json, identify, rate, read_fleet_header, run_cmd, synth)

log = logging.getLogger(__name__)

BASE_SEED = 61_000
SEED_OFFSETS = {
    "enroll_a": 1,       # enrollment parts of the first build (ENROLL_BUILDS[0])
    "enroll_b": 2,       # enrollment parts of the second build (ENROLL_BUILDS[1])
    "fresh_units": 10,   # the units' fresh parts, builds from FRESH_FIRST_BUILD
    "fresh_known": 20,   # the known machines' fresh parts, builds from FRESH_FIRST_BUILD
    "claim_sample": 30,  # numpy's generator drawing the other labels claimed
}
ENROLL_BUILDS = (1, 4)
FRESH_FIRST_BUILD = 6

# New units of the reference fleet's seven printer models (two of the Form 3B): names used nowhere
# else in the project (not the model's fleet -1..-7, reproduce's auxiliary units -21..-29, the
# open-set benchmark's -11/-12), so the simulator draws each a new unit from the fleet seed.
UNITS = [
    ("4200-31", "hp-mjf-4200", "MJF"), ("5200-31", "hp-mjf-5200", "MJF"),
    ("F3B-31", "formlabs-form3b", "SLA"), ("F3B-32", "formlabs-form3b", "SLA"),
    ("M2-31", "carbon-m2", "DLS"), ("L1-31", "carbon-l1", "DLS"),
    ("S450-31", "stratasys-f450mc", "FDM"), ("S900-31", "stratasys-f900", "FDM"),
]
# --quick: two sibling units (the second competes with the first) and three known machines
QUICK_UNITS = ["F3B-31", "F3B-32"]
QUICK_KNOWN = ["F3B-1", "F3B-2", "M2-1"]

FULL = {"enroll_parts": 5, "fresh_parts": 40, "known_parts": 20, "other_claims": 2}
QUICK = {"enroll_parts": 5, "fresh_parts": 3, "known_parts": 2, "other_claims": 1}

# the issue's bars (issue 21)
BARS = {"unit_right": 0.95, "taken": 0.005, "known_points": 0.005, "false_accept": 0.01, "false_reject": 0.02}

ENROLL_COST_S = 0.3  # per enrollment image, one core (embedding with every ROI); for the estimate only


# --------------------------------------------------------------------------------------------
# Pure parts: claims, scores, bars (tested in tests/test_enrollment.py)


def cnt(k: int, n: int) -> dict:
    """A count with its rate and standard error."""
    p, se = rate(k, n)
    return {"count": k, "of": n, "rate": p, "se": se}


def plan_claims(parts: list[Record], labels: list[str], model_of: dict[str, str], others: int,
                seed: int) -> list[Record]:
    """The claims judged for ``parts`` (fresh parts, ``truth`` their machine): its own label
    (genuine), every other label of the same printer model (sibling), and ``others`` labels of
    other printer models drawn without replacement by numpy's generator seeded with ``seed``
    (other). ``labels``: every label of the enrolled gallery; ``model_of``: label -> printer model.
    Returns records of case ``claim`` with ``extra`` = {claimed, kind, origin, part}."""
    rng = np.random.default_rng(seed)
    out = []
    for p in parts:
        own = model_of.get(p.truth)
        sib = [lab for lab in labels if lab != p.truth and own is not None and model_of.get(lab) == own]
        pool = [lab for lab in labels if lab != p.truth and lab not in sib]
        k = min(others, len(pool))
        drawn = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))] if k else []
        # a part of a unit that was not enrolled (refused) has no genuine claim: amfp refuses a
        # claim of a label its gallery does not know; it is an impostor for its siblings
        genuine = [p.truth] if p.truth in labels else []
        for kind, claimed in [("genuine", genuine), ("sibling", sib), ("other", drawn)]:
            for lab in claimed:
                out.append(Record("claim", p.path, p.truth, kind,
                                  extra={"claimed": lab, "kind": kind, "origin": p.case, "part": p.group}))
    return out


def claim_status(r: Record) -> str:
    """confirmed | contradicted | unconfirmed | unjudged (amfp's claim.status), or missing (no result
    or no claim in it)."""
    c = r.extra.get("claim")
    return c.get("status", "missing") if isinstance(c, dict) else "missing"


def claim_row(rs: list[Record]) -> dict:
    """Claims accepted (status confirmed) among ``rs``, with every status counted."""
    n = len(rs)
    st = Counter(claim_status(r) for r in rs)
    return {"claims": n, "parts": len({r.path for r in rs}), "accepted": cnt(st.get("confirmed", 0), n),
            "statuses": dict(st)}


def score_claims(claims: list[Record], units: list[str]) -> dict:
    """False rejects (genuine claims not confirmed) and false accepts (impostor claims confirmed),
    overall and by kind of claim and origin of the part."""
    unit_set = set(units)
    sel = {
        "genuine": lambda r: r.extra["kind"] == "genuine",
        "genuine, known machines' parts": lambda r: r.extra["kind"] == "genuine" and r.extra["origin"] == "known",
        "genuine, enrolled units' parts": lambda r: r.extra["kind"] == "genuine" and r.extra["origin"] == "unit",
        "impostor": lambda r: r.extra["kind"] != "genuine",
        "sibling": lambda r: r.extra["kind"] == "sibling",
        "sibling, known machines' parts": lambda r: r.extra["kind"] == "sibling" and r.extra["origin"] == "known",
        "sibling, enrolled units' parts": lambda r: r.extra["kind"] == "sibling" and r.extra["origin"] == "unit",
        "sibling, naming an enrolled unit": lambda r: r.extra["kind"] == "sibling" and r.extra["claimed"] in unit_set,
        "other (sampled)": lambda r: r.extra["kind"] == "other",
    }
    rows = {name: claim_row([r for r in claims if f(r)]) for name, f in sel.items()}
    g = rows["genuine"]
    fr = cnt(g["claims"] - g["accepted"]["count"], g["claims"])
    accepted = Counter((r.truth, r.extra["claimed"]) for r in claims
                       if r.extra["kind"] != "genuine" and claim_status(r) == "confirmed")
    mislabelled = sum(1 for r in claims if isinstance(r.extra.get("claim"), dict)
                      and r.extra["claim"].get("label") not in (None, r.extra["claimed"]))
    return {"rows": rows, "false_reject": fr, "false_accept": rows["impostor"]["accepted"],
            "false_accept_sibling": rows["sibling"]["accepted"],
            "false_accepts": [{"part_of": t, "claimed": c, "count": k} for (t, c), k in accepted.most_common()],
            "claims_naming_another_label": mislabelled}


def claims_against_verdicts(claims: list[Record], enrolled: list[Record],
                            claim_threshold: float | None = None, threshold: float | None = None) -> dict:
    """Whether each claim's status agrees with the same image's verdict in the plain run with the
    enrolled gallery (confirmed exactly when identified as the claimed label). They may differ by
    design: a claim is a 1:1 test at the gallery's claim_threshold, without the vote-disagreement
    rule (docs/gallery.md, "Claims"); the count says how often. With both thresholds given, a part
    identified as the claimed machine whose claim distance lies between the stricter claim threshold
    and the identification threshold is the other difference by design."""
    by_path = {r.path: r for r in enrolled}
    n, bad = 0, []
    for c in claims:
        v = by_path.get(c.path)
        st = claim_status(c)
        if v is None or st == "missing" or v.verdict == "missing":
            continue
        n += 1
        expect = v.verdict == "identified" and v.label == c.extra["claimed"]
        if (st == "confirmed") != expect:
            bad.append({"path": c.path, "claimed": c.extra["claimed"], "status": st, "verdict": v.verdict,
                        "label": v.label, "distance": c.extra["claim"].get("distance")})
    def by_design(b: dict) -> bool:
        if b["status"] == "confirmed" and b["verdict"] == "unknown":
            return True  # the verdict's vote-disagreement rule
        d = b.get("distance")
        return (b["status"] == "unconfirmed" and b["verdict"] == "identified" and b["label"] == b["claimed"]
                and None not in (d, claim_threshold, threshold) and claim_threshold < d <= threshold)

    unexplained = [b for b in bad if not by_design(b)]
    return {"compared": n, "disagree": len(bad), "unexplained": len(unexplained), "examples": (unexplained + bad)[:10]}


def outcome_row(rs: list[Record]) -> dict:
    """right / wrong / unknown / rejected / missing counts of judged fresh parts, and the labels
    wrongly named."""
    n = len(rs)
    c = Counter(r.outcome() for r in rs)
    row = {o: cnt(c.get(o, 0), n) for o in ("right", "wrong", "unknown", "rejected", "missing")}
    row["parts"] = n
    row["named_as"] = dict(Counter(r.label for r in rs if r.outcome() == "wrong").most_common())
    return row


def paired_difference(before: list[bool], after: list[bool]) -> dict:
    """after - before on the same parts: the difference of the two rates and its standard error
    sqrt((var of the per-part differences) / n)."""
    n = len(before)
    if n == 0 or len(after) != n:
        return {"parts": n, "difference": float("nan"), "se": float("nan"), "lost": 0, "gained": 0}
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    return {"parts": n, "difference": float(d.mean()), "se": float(math.sqrt(max(0.0, (d * d).mean() - d.mean() ** 2) / n)),
            "lost": int((d < 0).sum()), "gained": int((d > 0).sum())}


def score_identification(base: list[Record], enrolled: list[Record], units: list[str]) -> dict:
    """The fresh parts (case ``unit`` or ``known``, truth their machine) judged with the base and
    with the enrolled gallery: each unit's parts identified as it, parts taken by an enrolled unit,
    the known machines' accuracy before and after, and the base gallery's verdicts on the units."""
    unit_set = set(units)
    per_unit = {}
    for u in units:
        e = [r for r in enrolled if r.truth == u]
        b = [r for r in base if r.truth == u]
        per_unit[u] = {"enrolled": outcome_row(e), "base": outcome_row(b)}

    def taken(rs):
        return [r for r in rs if r.verdict == "identified" and r.label in unit_set and r.label != r.truth]

    tk = {}
    for name, rs in [("all", enrolled), ("known machines' parts", [r for r in enrolled if r.case == "known"]),
                     ("enrolled units' parts", [r for r in enrolled if r.case == "unit"])]:
        t = taken(rs)
        tk[name] = dict(cnt(len(t), len(rs)), by=dict(Counter(f"{r.truth} -> {r.label}" for r in t).most_common()))
    kb = {r.path: r for r in base if r.case == "known"}
    pairs = [(kb[r.path], r) for r in enrolled if r.case == "known" and r.path in kb]
    diff = paired_difference([b.outcome() == "right" for b, _ in pairs], [e.outcome() == "right" for _, e in pairs])
    changes = Counter(f"{b.outcome()}{'' if b.outcome() == 'right' else ' ' + str(b.label or '')} -> "
                      f"{e.outcome()}{'' if e.outcome() == 'right' else ' ' + str(e.label or '')}"
                      for b, e in pairs if (b.verdict, b.label) != (e.verdict, e.label))
    ub = [r for r in base if r.case == "unit"]
    ue = [r for r in enrolled if r.case == "unit"]
    return {
        "units": per_unit,
        "units_pooled": {"enrolled": outcome_row(ue), "base": outcome_row(ub)},
        "taken": tk,
        "known": {"base": outcome_row([b for b, _ in pairs]), "enrolled": outcome_row([e for _, e in pairs]),
                  "difference": diff, "changes": dict(changes.most_common())},
    }


def check_bars(ident: dict, claims: dict | None) -> list[dict]:
    """The issue's bars: per unit, taken, known accuracy, claims."""
    out = []
    for u, row in ident["units"].items():
        out.append(bar_row(f"{u}: fresh parts identified as it", row["enrolled"]["right"]["rate"], BARS["unit_right"], True))
    rates = [row["enrolled"]["right"]["rate"] for row in ident["units"].values()]
    out.append(bar_row("every unit: the lowest share identified as it", min(rates) if rates else None,
                       BARS["unit_right"], True))
    out.append(bar_row("other machines' parts taken by an enrolled unit", ident["taken"]["all"]["rate"], BARS["taken"],
                       False))
    d = ident["known"]["difference"]["difference"]
    out.append(bar_row("known machines: accuracy change, |enrolled - base| (points)",
                       abs(d) if not math.isnan(d) else None, BARS["known_points"], False))
    if claims:
        out.append(bar_row("claims: false accepts (impostor claims confirmed)", claims["false_accept"]["rate"],
                           BARS["false_accept"], False))
        out.append(bar_row("claims of sibling units: false accepts", claims["false_accept_sibling"]["rate"],
                           BARS["false_accept"], False))
        out.append(bar_row("claims: false rejects (genuine claims not confirmed)", claims["false_reject"]["rate"],
                           BARS["false_reject"], False))
    return out


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# what `amfp enroll` says when it refuses a unit the model cannot tell from a known machine
REFUSED_AS_INDISTINGUISHABLE = "cannot be told apart from"


def check_enrollment(step: dict, before: dict | None, after: dict | None, after_sha: str | None) -> list[str]:
    """What is wrong with one `amfp enroll --json` run, judged from its exit status, its JSON
    (``step["json"]``), the gallery before and after (parsed files) and the written file's sha256.
    Empty when nothing is."""
    p = []
    u = step["unit"]
    if step["exit"] == 1 and REFUSED_AS_INDISTINGUISHABLE in step.get("stderr", ""):
        return []  # refused by design: the model cannot tell the unit from a known machine
    if step["exit"] != 0:
        return [f"{u}: exit {step['exit']}: {step.get('stderr', '')[-500:]}"]
    j = step.get("json")
    if not isinstance(j, dict):
        return [f"{u}: exit 0 but no JSON object on stdout ({step.get('stdout', '')[:200]!r})"]
    for k in ("gallery", "version", "sha256", "label", "parts", "refused", "offset", "nearest", "warnings"):
        if k not in j:
            p.append(f"{u}: the JSON has no {k!r}")
    if j.get("label") != u:
        p.append(f"{u}: the JSON names label {j.get('label')!r}")
    given, refused = step["images"], j.get("refused") or []
    if isinstance(j.get("parts"), int) and j["parts"] + len(refused) != given:
        p.append(f"{u}: parts {j['parts']} + refused {len(refused)} != {given} images given")
    if after_sha is not None and j.get("sha256") != after_sha:
        p.append(f"{u}: JSON sha256 {j.get('sha256')} is not the written file's {after_sha}")
    if before is not None and after is not None:
        if j.get("version") != before.get("version", 0) + 1 or after.get("version") != j.get("version"):
            p.append(f"{u}: version {before.get('version')} -> JSON {j.get('version')}, file {after.get('version')} "
                     "(expected +1)")
        if before_sha := step.get("before_sha"):
            if after.get("parent_sha256") != before_sha:
                p.append(f"{u}: parent_sha256 {after.get('parent_sha256')} is not the previous file's {before_sha}")
        la = [m.get("label") for m in after.get("machines", [])]
        lb = [m.get("label") for m in before.get("machines", [])]
        if la.count(u) != 1 or [x for x in la if x != u] != [x for x in lb if x != u]:
            p.append(f"{u}: machines {lb} -> {la}: expected the same plus {u} once")
        m = next((m for m in after.get("machines", []) if m.get("label") == u), None)
        if m is not None:
            if m.get("process") != step.get("process"):
                p.append(f"{u}: process {m.get('process')!r} in the gallery, {step.get('process')!r} given")
            if isinstance(j.get("parts"), int) and m.get("parts") != j["parts"]:
                p.append(f"{u}: the gallery says {m.get('parts')} parts, the JSON {j['parts']}")
        if len(after.get("history", [])) != len(before.get("history", [])) + 1:
            p.append(f"{u}: history {len(before.get('history', []))} -> {len(after.get('history', []))} entries")
    return p


SHARED_FIELDS = ("score", "shrinkage", "whitening", "global_mean", "global_whitening", "threshold", "outlier_threshold")


def versions_kept(folder: Path, current: Path, wanted: range) -> dict:
    """The earlier versions of a gallery kept anywhere under ``folder`` (files other than
    ``current`` that parse as a gallery): {version: path}, and the ``wanted`` ones missing."""
    found: dict[int, str] = {}
    for f in sorted(folder.rglob("*.json")):
        if f.resolve() == current.resolve():
            continue
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("format") == "amfp-gallery" and isinstance(d.get("version"), int):
            found.setdefault(d["version"], str(f))
    return {"kept": found, "missing": [v for v in wanted if v not in found]}


def changed_fields(before: dict, after: dict) -> list[str]:
    """The gallery's shared fields (whitening, global statistics, thresholds) that an enrollment
    changed, and the known machines whose fingerprint it changed (recorded, not judged: adding a
    machine need not leave them alone, but then the calibration no longer describes them)."""
    out = [k for k in SHARED_FIELDS if after.get(k) != before.get(k)]
    old = {m.get("label"): m for m in before.get("machines", [])}
    out += [f"machine {m.get('label')}" for m in after.get("machines", [])
            if m.get("label") in old and m != old[m.get("label")]]
    return out


# --------------------------------------------------------------------------------------------
# Markdown


def num(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "—" if x is None else str(x)


def error_message(stderr: str) -> str:
    """amfp's ``error:`` line(s) from its stderr (its log lines left out), else the last 300 characters."""
    lines = stderr.strip().splitlines()
    i = next((k for k, ln in enumerate(lines) if ln.startswith("error:")), None)
    return " ".join(ln.strip() for ln in lines[i:]) if i is not None else stderr.strip()[-300:]


def cell(c: dict) -> str:
    return "—" if not c["of"] else f"{c['count']} ({_pct(c['rate'])} ± {_pct(c['se'])})"


def report_md(res: dict) -> str:
    s = res["sizes"]
    ident, claims = res["identification"], res.get("claims")
    lines = [f"# Enrollment benchmark ({'quick' if res['quick'] else 'full'})", "",
             "**Every number here is measured on SIMULATED parts** (`amfp synth`), not on real scans; "
             "see docs/gallery.md, \"Enrollment benchmark\".", "",
             f"Model {res['model']}; base gallery {res['gallery']} (version {res['base_gallery']['version']}, "
             f"{res['base_gallery']['machines']} machines, sha256 {res['base_gallery']['sha256'][:12]}); fleet "
             f"{Path(res['fleet']).name}; binary {res['amfp']}. Base seed {res['seed']} "
             f"({', '.join(f'{k} +{v}' for k, v in SEED_OFFSETS.items())}). Units enrolled one after another into one "
             f"copy of the gallery, each from {2 * s['enroll_parts']} parts ({s['enroll_parts']} of build "
             f"{ENROLL_BUILDS[0]}, {s['enroll_parts']} of build {ENROLL_BUILDS[1]}); fresh parts from build "
             f"{FRESH_FIRST_BUILD}: {s['fresh_parts']} per unit, {s['known_parts']} per known machine "
             f"({len(res['known_machines'])} machines). Rates in %, ± one standard error.", "",
             "## Bars (issue 21)", ""] + bars_md(res["bars"])
    lines += ["", "## Enrollments", "",
              "| # | unit | process | images | used | refused | version | offset | nearest (distance) | named before "
              "| warnings | s |", "|---:|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for i, e in enumerate(res["enrollments"], 1):
        j = e.get("json") or {}
        near = j.get("nearest") or {}
        near_s = f"{near.get('label')} ({num(near.get('distance'))})" if isinstance(near, dict) and near else "—"
        warn = str(len(j.get("warnings") or []))
        before = ", ".join(f"{x.get('label')} {x.get('parts')}" for x in j.get("named_before") or []
                           if isinstance(x, dict))
        if e["exit"] != 0:
            warn = f"**exit {e['exit']}**: {error_message(e.get('stderr', ''))}"
        lines.append(f"| {i} | {e['unit']} | {e['process']} | {e['images']} | {j.get('parts', '—')} | "
                     f"{len(j.get('refused') or [])} | {j.get('version', '—')} | {num(j.get('offset'))} | {near_s} | "
                     f"{before} | {warn.replace('|', '/')} | {e['took_s']:.1f} |")
    warnings = [(e["unit"], w) for e in res["enrollments"] for w in ((e.get("json") or {}).get("warnings") or [])]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {u}: {w}" for u, w in warnings]
    refused = [(e["unit"], x) for e in res["enrollments"] for x in ((e.get("json") or {}).get("refused") or [])]
    if refused:
        lines += ["", "Refused parts:", ""] + [f"- {u}: `{x.get('image')}`: {x.get('reason')}" for u, x in refused]
    changed = [(e["unit"], e.get("changed") or []) for e in res["enrollments"] if e.get("changed")]
    if changed:
        lines += ["", "What enrolling changed besides adding the unit: "
                  + "; ".join(f"{u}: {', '.join(c)}" for u, c in changed) + "."]
    t = [e["took_s"] for e in res["enrollments"]]
    if t:
        lines += ["", f"Time per enrollment: mean {np.mean(t):.1f} s (min {min(t):.1f}, max {max(t):.1f}) with "
                      f"--threads {res['threads']}."]

    lines += ["", "## The units' fresh parts", "",
              "Base gallery (before enrolling: should be unknown) and enrolled gallery:", "",
              "| unit | parts | base: unknown | base: identified (as) | base: rejected | enrolled: right | wrong (as) | "
              "unknown | rejected |", "|---|---:|---:|---|---:|---:|---|---:|---:|"]

    def named(row):
        return ", ".join(f"{k} {v}" for k, v in row["named_as"].items())

    for u, row in list(ident["units"].items()) + [("all units", ident["units_pooled"])]:
        b, e = row["base"], row["enrolled"]
        lines.append(f"| {u} | {e['parts']} | {cell(b['unknown'])} | {cell(b['wrong'])} {named(b)} | {cell(b['rejected'])} | "
                     f"{cell(e['right'])} | {cell(e['wrong'])} {named(e)} | {cell(e['unknown'])} | {cell(e['rejected'])} |")
    k = ident["known"]
    d = k["difference"]
    lines += ["", "## The known machines' fresh parts, base against enrolled gallery", "",
              "| gallery | parts | right | wrong | unknown | rejected |", "|---|---:|---:|---:|---:|---:|"]
    for g in ("base", "enrolled"):
        r = k[g]
        lines.append(f"| {g} | {r['parts']} | {cell(r['right'])} | {cell(r['wrong'])} | {cell(r['unknown'])} | "
                     f"{cell(r['rejected'])} |")
    lines += ["", f"Accuracy change (enrolled - base, same parts): {100 * d['difference']:+.2f} ± {100 * d['se']:.2f} "
                  f"points ({d['lost']} parts lost, {d['gained']} gained)."
              if d["difference"] is not None and not math.isnan(d["difference"]) else "Accuracy change: no parts."]
    if k["changes"]:
        lines += ["", "Verdicts that changed (base -> enrolled): "
                  + "; ".join(f"{c} ({n})" for c, n in k["changes"].items()) + "."]
    lines += ["", "## Parts taken by an enrolled unit", "", "| parts of | parts | taken | by |", "|---|---:|---:|---|"]
    for name, row in ident["taken"].items():
        by = ", ".join(f"{x} ({n})" for x, n in row["by"].items())
        lines.append(f"| {name} | {row['of']} | {cell(row)} | {by} |")
    if claims:
        lines += ["", "## Claims (1:1), with the enrolled gallery", "", res["claims_sampled"], "",
                  "A claim is accepted when amfp says `claim.status: confirmed`. Claims of one part are not "
                  "independent; the standard errors treat them as if they were.", "",
                  "| claims | parts | claims | accepted | statuses |", "|---|---:|---:|---:|---|"]
        for name, row in claims["rows"].items():
            st = ", ".join(f"{k} {v}" for k, v in sorted(row["statuses"].items()))
            lines.append(f"| {name} | {row['parts']} | {row['claims']} | {cell(row['accepted'])} | {st} |")
        lines += ["", f"False rejects (genuine claims not confirmed): {cell(claims['false_reject'])}; false accepts "
                      f"(impostor claims confirmed): {cell(claims['false_accept'])}, of sibling claims "
                      f"{cell(claims['false_accept_sibling'])}."]
        if claims["false_accepts"]:
            lines += ["", "Impostor claims accepted: " + "; ".join(
                f"part of {x['part_of']} claimed as {x['claimed']} ({x['count']})" for x in claims["false_accepts"]) + "."]
    lines += ["", "## Checks of `amfp enroll` and `amfp identify`", ""]
    lines += [f"- {p}" for p in res["problems"]] or ["- none failed"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Running it


def enroll(amfp: str, model: str, gallery: Path, unit: tuple[str, str, str], images: list[str], threads: int,
           notes: str, why: str) -> dict:
    """One `amfp enroll --json` run into ``gallery`` (read and written back): what it said and took."""
    name, _, process = unit
    cmd = [amfp, "enroll", "--model", model, "--gallery", gallery, "--out", gallery, "--label", name,
           "--process", process, "--notes", notes, "--why", why, "--by", "amfp_train.enrollment",
           "--threads", threads, "--json", *images]
    t = time.time()
    r = run_cmd(cmd)
    took = time.time() - t
    j = None
    objs = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("{")]
    try:
        j = json.loads(r.stdout) if r.stdout.strip() else None
    except json.JSONDecodeError:  # other lines beside the one object: recorded in stdout
        try:
            j = json.loads(objs[0]) if len(objs) == 1 else None
        except json.JSONDecodeError:
            j = None
    return {"unit": name, "process": process, "images": len(images), "exit": r.returncode, "took_s": round(took, 2),
            "json": j, "stdout": r.stdout[-2000:], "stderr": r.stderr[-4000:],
            "command": " ".join(map(str, cmd[:18])) + f" ... ({len(images)} images)"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amfp", default=str(REPO / "target" / "release" / "amfp"), help="amfp binary (with `enroll`)")
    ap.add_argument("--model", required=True, help="ONNX model with an embedding output")
    ap.add_argument("--gallery", default=None, help="its gallery (default: beside the model); only read")
    ap.add_argument("--fleet", default=str(DEFAULT_FLEET), help="the model's fleet file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", default=None, help="also write the markdown report here")
    ap.add_argument("--seed", type=int, default=BASE_SEED, help=f"base seed (default {BASE_SEED}); + {SEED_OFFSETS}")
    ap.add_argument("--quick", action="store_true",
                    help=f"units {','.join(QUICK_UNITS)}, known machines {','.join(QUICK_KNOWN)}, sizes {QUICK}")
    ap.add_argument("--units", default="", help=f"only these units (default all: {','.join(n for n, _, _ in UNITS)})")
    ap.add_argument("--known-machines", default="", help="the known machines' fresh parts: these (default: the gallery's)")
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {v} (--quick {QUICK[k]})")
    ap.add_argument("--threads", type=int, default=2, help="amfp synth, enroll and identify threads")
    ap.add_argument("--chunk", type=int, default=250, help="images per `amfp identify` call")
    ap.add_argument("--reuse", action="store_true", help="reuse the images simulated into OUT by an earlier run")
    ap.add_argument("--no-claims", action="store_true", help="skip the claim runs")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate only")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    sizes = dict(QUICK if a.quick else FULL)
    for k in FULL:
        if getattr(a, k) is not None:
            sizes[k] = getattr(a, k)
    by_name = {u[0]: u for u in UNITS}
    names = [n for n in a.units.split(",") if n] or (QUICK_UNITS if a.quick else [n for n, _, _ in UNITS])
    bad = [n for n in names if n not in by_name]
    if bad:
        ap.error(f"--units: {', '.join(bad)} not among {', '.join(by_name)}")
    units = [by_name[n] for n in names]
    model = Path(a.model)
    gallery = Path(a.gallery) if a.gallery else model.with_name(model.name.removesuffix(".onnx") + ".gallery.json")
    if not gallery.is_file():
        raise SystemExit(f"no gallery {gallery}: pass --gallery")
    fleet = Path(a.fleet)
    base_g = json.loads(gallery.read_text())
    base_labels = [m["label"] for m in base_g.get("machines", [])]
    head = read_fleet_header(fleet)
    model_of = {lab: head["machines"].get(lab) for lab in base_labels}
    missing = [lab for lab in base_labels if model_of[lab] is None]
    if missing:
        raise SystemExit(f"{fleet} has no machines named {', '.join(missing)} (the gallery's): pass its fleet with --fleet")
    clash = [n for n, _, _ in units if n in base_labels]
    if clash:
        raise SystemExit(f"the gallery already has {', '.join(clash)}: they would not be new")
    model_of.update({n: m for n, m, _ in units})
    known = [m for m in a.known_machines.split(",") if m] or ([m for m in QUICK_KNOWN if m in base_labels] if a.quick
                                                               else base_labels)
    bad = [m for m in known if m not in base_labels]
    if bad:
        ap.error(f"--known-machines: {', '.join(bad)} not in the gallery")
    unit_names = [n for n, _, _ in units]
    labels_after = base_labels + unit_names

    n_enroll = 2 * sizes["enroll_parts"] * len(units)
    n_fresh = sizes["fresh_parts"] * len(units) + sizes["known_parts"] * len(known)
    sim_s = (n_enroll + n_fresh) * SIM_COST_S["scanner"] / max(1, a.threads)
    id_s = 2 * n_fresh * IDENTIFY_COST_S / max(1, a.threads) + n_enroll * ENROLL_COST_S / max(1, a.threads)
    print(f"enrollment benchmark: {len(units)} units x {2 * sizes['enroll_parts']} enrollment parts, {n_fresh} fresh "
          f"parts ({sizes['fresh_parts']} per unit, {sizes['known_parts']} per known machine x {len(known)}); estimated "
          f"simulation {sim_s / 60:.1f} min, enrollment and identification {id_s / 60:.1f} min + claims on {a.threads} "
          "threads", flush=True)
    if a.dry_run:
        return {"units": unit_names, "known_machines": known, "sizes": sizes, "estimate_s": [sim_s, id_s]}

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = out / "sim"
    res_dir = out / "results"
    res_dir.mkdir(exist_ok=True)
    gal_sha = sha256_file(gallery)
    timing = {}
    problems: list[str] = []

    # -- simulate
    t0 = time.time()
    uf = out / "enroll-fleet.toml"
    uf.write_text(benchmark_fleet(fleet, units, "amfp enrollment benchmark: new units of known printer models, "
                                              "enrolled without retraining (amfp_train.enrollment)"))
    enroll_rows = []
    for key, b in zip(("enroll_a", "enroll_b"), ENROLL_BUILDS):
        rows = synth(a.amfp, uf, sim / f"enroll-build{b}", unit_names, sizes["enroll_parts"], a.seed + SEED_OFFSETS[key],
                     a.threads, ["--first-build", str(b)], reuse=a.reuse)
        enroll_rows += rows
    fresh_rows = synth(a.amfp, uf, sim / "fresh-units", unit_names, sizes["fresh_parts"],
                       a.seed + SEED_OFFSETS["fresh_units"], a.threads, ["--first-build", str(FRESH_FIRST_BUILD)],
                       reuse=a.reuse)
    known_rows = synth(a.amfp, fleet, sim / "fresh-known", known, sizes["known_parts"],
                       a.seed + SEED_OFFSETS["fresh_known"], a.threads, ["--first-build", str(FRESH_FIRST_BUILD)],
                       reuse=a.reuse)
    timing["simulation_s"] = round(time.time() - t0, 1)
    log.info("simulated in %.1f s", timing["simulation_s"])
    fresh = ([Record("known", r["path"], r["machine"], r["machine"], extra={"build": r["build"]}) for r in known_rows]
             + [Record("unit", r["path"], r["machine"], r["machine"], extra={"build": r["build"]}) for r in fresh_rows])

    # -- the base gallery's verdicts
    t = time.time()
    base = identify(a.amfp, str(model), fresh, a.threads, a.chunk, ["--gallery", str(gallery)], res_dir / "base.jsonl")
    timing["identify_base_s"] = round(time.time() - t, 1)

    # -- enroll, one unit after another, into one copy of the gallery
    gdir = out / "galleries"
    if gdir.exists():
        shutil.rmtree(gdir)
    gdir.mkdir()
    enrolled_g = gdir / "enrolled.gallery.json"
    shutil.copyfile(gallery, enrolled_g)
    enrollments = []
    for u in units:
        imgs = [r["path"] for r in enroll_rows if r["machine"] == u[0]]
        before = json.loads(enrolled_g.read_text())
        before_sha = sha256_file(enrolled_g)
        builds = sorted({int(r["build"]) for r in enroll_rows if r["machine"] == u[0]})
        step = enroll(a.amfp, str(model), enrolled_g, u, imgs, a.threads,
                      f"simulated unit {u[0]} ({u[1]}): amfp synth seeds {a.seed + SEED_OFFSETS['enroll_a']}, "
                      f"{a.seed + SEED_OFFSETS['enroll_b']}; builds {', '.join(map(str, builds))}",
                      "enrollment benchmark (issue 21, amfp_train.enrollment)")
        step["builds"] = builds
        step["before_sha"] = before_sha
        after = json.loads(enrolled_g.read_text()) if enrolled_g.is_file() else None
        after_sha = sha256_file(enrolled_g) if enrolled_g.is_file() else None
        if step["exit"] == 0 and isinstance(step["json"], dict) and step["json"].get("gallery"):
            gp = Path(step["json"]["gallery"])
            if gp.resolve() != enrolled_g.resolve():
                problems.append(f"{u[0]}: the JSON's gallery {gp} is not --out {enrolled_g}")
        step["problems"] = check_enrollment(step, before, after, after_sha)
        step["changed"] = changed_fields(before, after) if after else []
        problems += step["problems"]
        step["sha256_after"] = after_sha
        log.info("enrolled %s: exit %d in %.1f s: %s", u[0], step["exit"], step["took_s"],
                 json.dumps(step["json"]) if step["json"] else step["stderr"].strip()[-300:])
        enrollments.append(step)
    timing["enroll_s"] = round(sum(e["took_s"] for e in enrollments), 1)
    if sha256_file(gallery) != gal_sha:
        problems.append(f"the base gallery {gallery} changed during the run (it is only passed to --gallery of "
                        "identify and copied)")
    final = json.loads(enrolled_g.read_text())
    final_sha = sha256_file(enrolled_g)
    kept = versions_kept(gdir, enrolled_g, range(base_g.get("version", 1), final.get("version", 1)))
    if kept["missing"]:
        problems.append(f"earlier gallery versions not kept under {gdir}: {kept['missing']} (found {sorted(kept['kept'])})")
    shutil.copyfile(enrolled_g, out / "enrolled.gallery.json")

    # -- the enrolled gallery's verdicts
    t = time.time()
    enrolled = identify(a.amfp, str(model), fresh, a.threads, a.chunk, ["--gallery", str(enrolled_g)],
                        res_dir / "enrolled.jsonl")
    timing["identify_enrolled_s"] = round(time.time() - t, 1)
    seen = set()
    for ln in (res_dir / "enrolled.jsonl").read_text().splitlines():
        g = json.loads(ln).get("gallery")
        if isinstance(g, dict):
            seen.add((g.get("version"), g.get("sha256")))
    if seen and seen != {(final.get("version"), final_sha)}:
        problems.append(f"identify with the enrolled gallery reports {sorted(seen, key=str)}, the file is version "
                        f"{final.get('version')} sha256 {final_sha}")
    for name, rs in (("base", base), ("enrolled", enrolled)):
        n_missing = sum(r.verdict == "missing" for r in rs)
        if n_missing:
            problems.append(f"{name} gallery: {n_missing} images got no result from amfp identify")

    # -- claims
    claims_rep, claimed, sampled = None, [], ""
    if not a.no_claims:
        t = time.time()
        labels_after = [m["label"] for m in final["machines"]]  # the units refused are not among them
        plan = plan_claims(fresh, labels_after, model_of, sizes["other_claims"], a.seed + SEED_OFFSETS["claim_sample"])
        by_label: dict[str, list[Record]] = defaultdict(list)
        for r in plan:
            by_label[r.extra["claimed"]].append(r)
        cdir = res_dir / "claims"
        cdir.mkdir(exist_ok=True)
        for lab in sorted(by_label):
            claimed += identify(a.amfp, str(model), by_label[lab], a.threads, a.chunk,
                                ["--gallery", str(enrolled_g), "--claim", lab], cdir / f"{lab}.jsonl")
        timing["claims_s"] = round(time.time() - t, 1)
        claims_rep = score_claims(claimed, unit_names)
        kinds = Counter(r.extra["kind"] for r in claimed)
        sampled = (f"Every fresh part ({len(fresh)}) claimed as its own machine ({kinds['genuine']} genuine claims), "
                   f"as every other label of its printer model in the enrolled gallery ({kinds['sibling']} sibling "
                   f"claims: known units and enrolled ones) and as {sizes['other_claims']} label(s) of other "
                   f"printer models drawn at random (seed {a.seed + SEED_OFFSETS['claim_sample']}; {kinds['other']} claims).")
        eg = json.loads(enrolled_g.read_text())
        claims_rep["against_verdicts"] = claims_against_verdicts(claimed, enrolled, eg.get("claim_threshold"),
                                                                 eg.get("threshold"))
        av = claims_rep["against_verdicts"]
        if av["unexplained"]:
            problems.append(f"identify --claim: {av['unexplained']} of {av['compared']} claim statuses disagree with the "
                            f"same image's verdict without --claim (e.g. {av['examples'][:3]})")
        if claims_rep["claims_naming_another_label"]:
            problems.append(f"identify --claim: {claims_rep['claims_naming_another_label']} results name another "
                            "claim label than the one given")
        n_missing = sum(claim_status(r) == "missing" for r in claimed)
        if n_missing:
            problems.append(f"identify --claim: {n_missing} claims got no claim object")

    ident = score_identification(base, enrolled, unit_names)
    result = {
        "quick": a.quick, "seed": a.seed, "seed_offsets": SEED_OFFSETS, "enroll_builds": ENROLL_BUILDS,
        "fresh_first_build": FRESH_FIRST_BUILD, "sizes": sizes, "units": [list(u) for u in units],
        "known_machines": known, "model": str(model), "gallery": str(gallery), "fleet": str(fleet), "amfp": a.amfp,
        "threads": a.threads,
        "base_gallery": {"version": base_g.get("version"), "machines": len(base_labels), "sha256": gal_sha},
        "enrolled_gallery": {"path": str(out / "enrolled.gallery.json"), "version": final.get("version"),
                             "machines": len(final.get("machines", [])), "sha256": final_sha,
                             "history": final.get("history"), "versions_kept": kept["kept"]},
        "enrollments": enrollments, "identification": ident, "claims": claims_rep, "claims_sampled": sampled,
        "problems": problems, "timing": timing, "note": "simulated parts, not real scans",
    }
    result["bars"] = check_bars(ident, claims_rep)
    with open(res_dir / "parts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "truth", "path", "base_verdict", "base_label", "base_distance", "enrolled_verdict",
                    "enrolled_label", "enrolled_distance", "enrolled_nearest"])
        for b, e in zip(base, enrolled):
            w.writerow([b.case, b.truth, b.path, b.verdict, b.label or "", b.distance, e.verdict, e.label or "",
                        e.distance, e.nearest or ""])
    if claimed:
        with open(res_dir / "claims.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["origin", "truth", "path", "kind", "claimed", "status", "claim_distance", "verdict", "label"])
            for r in claimed:
                c = r.extra.get("claim") or {}
                w.writerow([r.extra["origin"], r.truth, r.path, r.extra["kind"], r.extra["claimed"], claim_status(r),
                            c.get("distance"), r.verdict, r.label or ""])
    md = report_md(result)
    (out / "report.md").write_text(md)
    if a.md:
        Path(a.md).write_text(md)
    (out / "report.json").write_text(json.dumps(clean_json(result), indent=1))
    print("\n" + md, flush=True)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}" + (f" and {a.md}" if a.md else ""))
    return result


if __name__ == "__main__":
    main()
