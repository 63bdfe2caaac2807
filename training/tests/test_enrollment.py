"""The enrollment benchmark's arithmetic (claims planned, accepted and rejected; units identified,
parts taken, the known machines' accuracy before and after; bars), its checks of `amfp enroll`'s
output, its units and seeds, and (with AMFP_BIN pointing to a binary that has `enroll`) a quick run
through the real binary."""

import hashlib
import json
import math
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from amfp_train import enrollment as en
from amfp_train import openset, reproduce
from amfp_train.openset import Record

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"
MODEL = REPO / "models" / "amfp-synth-v3.int8.onnx"
GALLERY = REPO / "models" / "amfp-synth-v3.int8.gallery.json"

MODEL_OF = {"F3B-1": "form3b", "F3B-2": "form3b", "F3B-31": "form3b", "M2-1": "m2", "M2-31": "m2", "S450-1": "f450"}
LABELS = list(MODEL_OF)


def part(case, truth, i=0):
    return Record(case, f"{truth}-{i}.png", truth, truth)


def judged(case, truth, verdict, label=None, i=0):
    r = part(case, truth, i)
    r.verdict, r.label = verdict, label
    return r


def test_claims_planned_genuine_siblings_and_a_fixed_sample():
    parts = [part("known", "F3B-1"), part("unit", "F3B-31"), part("known", "S450-1")]
    plan = en.plan_claims(parts, LABELS, MODEL_OF, 2, seed=5)
    by = {}
    for r in plan:
        by.setdefault((r.truth, r.extra["kind"]), []).append(r.extra["claimed"])
    assert by[("F3B-1", "genuine")] == ["F3B-1"]
    assert by[("F3B-1", "sibling")] == ["F3B-2", "F3B-31"]  # the enrolled unit is a sibling too
    assert by[("F3B-31", "sibling")] == ["F3B-1", "F3B-2"]
    assert ("S450-1", "sibling") not in by  # no other unit of its printer model
    for t in ("F3B-1", "F3B-31", "S450-1"):
        other = by[(t, "other")]
        assert len(other) == 2 and len(set(other)) == 2
        assert all(MODEL_OF[o] != MODEL_OF[t] for o in other)
    assert [r.extra["origin"] for r in plan if r.extra["kind"] == "genuine"] == ["known", "unit", "known"]
    again = en.plan_claims(parts, LABELS, MODEL_OF, 2, seed=5)
    assert [r.extra["claimed"] for r in again] == [r.extra["claimed"] for r in plan]
    # more other labels asked for than there are: all of them, once
    plan = en.plan_claims([part("known", "S450-1")], LABELS, MODEL_OF, 99, seed=1)
    assert sorted(r.extra["claimed"] for r in plan if r.extra["kind"] == "other") == sorted(set(LABELS) - {"S450-1"})


def claim(truth, claimed, kind, status, origin="known", label=None):
    r = Record("claim", f"{truth}.png", truth, kind, extra={"claimed": claimed, "kind": kind, "origin": origin,
                                                             "part": truth})
    if status != "missing":
        r.extra["claim"] = {"label": label or claimed, "status": status}
    return r


def test_claims_scored_by_hand():
    cl = ([claim("F3B-1", "F3B-1", "genuine", "confirmed")] * 9 + [claim("F3B-1", "F3B-1", "genuine", "unconfirmed")]
          + [claim("F3B-31", "F3B-31", "genuine", "confirmed", "unit")] * 9
          + [claim("F3B-31", "F3B-31", "genuine", "missing", "unit")]
          + [claim("F3B-1", "F3B-31", "sibling", "confirmed")]
          + [claim("F3B-1", "F3B-2", "sibling", "contradicted")] * 19
          + [claim("F3B-31", "F3B-1", "sibling", "contradicted", "unit")] * 20
          + [claim("M2-1", "S450-1", "other", "contradicted")] * 39
          + [claim("M2-1", "S450-1", "other", "unconfirmed", label="S450-2")])
    s = en.score_claims(cl, ["F3B-31"])
    assert s["false_reject"]["count"] == 2 and s["false_reject"]["of"] == 20
    assert s["false_reject"]["rate"] == 0.1 and s["false_reject"]["se"] == pytest.approx(math.sqrt(0.1 * 0.9 / 20))
    assert s["rows"]["genuine, known machines' parts"]["accepted"]["count"] == 9
    assert s["rows"]["genuine, enrolled units' parts"]["statuses"] == {"confirmed": 9, "missing": 1}
    assert s["false_accept"]["count"] == 1 and s["false_accept"]["of"] == 80
    assert s["false_accept_sibling"]["rate"] == 1 / 40
    assert s["rows"]["sibling, naming an enrolled unit"]["claims"] == 1
    assert s["rows"]["sibling, enrolled units' parts"]["accepted"]["count"] == 0
    assert s["rows"]["other (sampled)"]["claims"] == 40
    assert s["false_accepts"] == [{"part_of": "F3B-1", "claimed": "F3B-31", "count": 1}]
    assert s["claims_naming_another_label"] == 1
    assert en.claim_status(cl[9]) == "unconfirmed" and en.claim_status(cl[19]) == "missing"


def test_claims_against_the_plain_verdicts():
    enrolled = [judged("known", "F3B-1", "identified", "F3B-1"), judged("known", "M2-1", "unknown", i=1)]
    enrolled[0].path, enrolled[1].path = "F3B-1.png", "M2-1.png"
    cl = [claim("F3B-1", "F3B-1", "genuine", "confirmed"), claim("F3B-1", "F3B-2", "sibling", "contradicted"),
          claim("M2-1", "M2-1", "genuine", "confirmed")]
    a = en.claims_against_verdicts(cl, enrolled)
    assert a["compared"] == 3 and a["disagree"] == 1 and a["examples"][0]["claimed"] == "M2-1"
    assert a["unexplained"] == 0  # confirmed but unknown: the vote-disagreement rule
    # Identified as F3B-1, its claim unconfirmed: by design only between the two thresholds.
    between = claim("F3B-1", "F3B-1", "genuine", "unconfirmed")
    between.extra["claim"]["distance"] = 100.0
    a = en.claims_against_verdicts([between], enrolled, claim_threshold=96.0, threshold=107.0)
    assert (a["disagree"], a["unexplained"]) == (1, 0)
    between.extra["claim"]["distance"] = 90.0  # within the claim threshold: unconfirmed is unexplained
    a = en.claims_against_verdicts([between], enrolled, claim_threshold=96.0, threshold=107.0)
    assert (a["disagree"], a["unexplained"]) == (1, 1)
    assert en.claims_against_verdicts([between], enrolled)["unexplained"] == 1  # no thresholds: not excused


def identification():
    """Two units (40 parts each), one known machine (200 parts), base and enrolled verdicts."""
    base, enr = [], []
    for u, right in (("F3B-31", 39), ("M2-31", 37)):
        for i in range(40):
            base.append(judged("unit", u, "unknown" if i else "identified", None if i else "F3B-1", i))
            enr.append(judged("unit", u, "identified", u, i) if i < right else
                       judged("unit", u, "identified", "F3B-31", i) if u == "M2-31" and i == right else
                       judged("unit", u, "unknown", None, i))
    for i in range(200):
        base.append(judged("known", "F3B-1", "identified", "F3B-1", i) if i < 196 else judged("known", "F3B-1", "unknown", i=i))
        enr.append(judged("known", "F3B-1", "identified", "F3B-1", i) if i < 194 else
                   judged("known", "F3B-1", "identified", "F3B-31", i) if i == 194 else
                   judged("known", "F3B-1", "identified", "F3B-1", i) if i == 199 else
                   judged("known", "F3B-1", "unknown", i=i))
    return base, enr


def test_identification_scored_by_hand():
    base, enr = identification()
    s = en.score_identification(base, enr, ["F3B-31", "M2-31"])
    assert s["units"]["F3B-31"]["enrolled"]["right"]["count"] == 39
    assert s["units"]["M2-31"]["enrolled"]["right"]["rate"] == 37 / 40
    assert s["units"]["M2-31"]["enrolled"]["named_as"] == {"F3B-31": 1}
    assert s["units"]["F3B-31"]["base"]["unknown"]["count"] == 39 and s["units"]["F3B-31"]["base"]["wrong"]["count"] == 1
    assert s["units_pooled"]["enrolled"]["right"]["count"] == 76
    # taken by an enrolled unit: one M2-31 part (as F3B-31) and one F3B-1 part, of 280
    t = s["taken"]
    assert (t["all"]["count"], t["all"]["of"]) == (2, 280)
    assert t["known machines' parts"]["by"] == {"F3B-1 -> F3B-31": 1}
    assert t["enrolled units' parts"]["count"] == 1
    k = s["known"]
    assert k["base"]["right"]["count"] == 196 and k["enrolled"]["right"]["count"] == 195
    d = k["difference"]
    assert (d["parts"], d["lost"], d["gained"]) == (200, 2, 1)
    assert d["difference"] == pytest.approx(-0.005)
    # per-part differences: two -1, one +1: var = 3/200 - 0.005^2
    assert d["se"] == pytest.approx(math.sqrt((3 / 200 - 0.005 ** 2) / 200))
    bars = {b["bar"]: b for b in en.check_bars(s, None)}
    assert bars["F3B-31: fresh parts identified as it"]["pass"] is True  # 97.5 %
    assert bars["M2-31: fresh parts identified as it"]["pass"] is False  # 92.5 %
    assert bars["every unit: the lowest share identified as it"]["measured"] == 37 / 40
    assert bars["other machines' parts taken by an enrolled unit"]["pass"] is False  # 0.71 %
    assert bars["known machines: accuracy change, |enrolled - base| (points)"]["measured"] == pytest.approx(0.005)
    assert bars["known machines: accuracy change, |enrolled - base| (points)"]["pass"] is True
    assert not any(b.startswith("claims") for b in bars)


def test_claim_bars_need_both_rates():
    s = en.score_identification(*identification(), ["F3B-31", "M2-31"])

    def c(k, n):
        return en.cnt(k, n)

    ok = {"false_accept": c(1, 200), "false_accept_sibling": c(1, 100), "false_reject": c(2, 100)}
    bars = {b["bar"]: b["pass"] for b in en.check_bars(s, ok)}
    assert bars["claims: false accepts (impostor claims confirmed)"] and bars["claims of sibling units: false accepts"]
    assert bars["claims: false rejects (genuine claims not confirmed)"]
    bad = dict(ok, false_reject=c(3, 100), false_accept_sibling=c(2, 100))
    bars = {b["bar"]: b["pass"] for b in en.check_bars(s, bad)}
    assert bars["claims: false rejects (genuine claims not confirmed)"] is False
    assert bars["claims of sibling units: false accepts"] is False


def gallery(version, labels, history=1):
    return {"format": "amfp-gallery", "version": version, "whitening": [1], "global_mean": [0], "threshold": 5.0,
            "machines": [{"label": lab, "process": "SLA", "parts": 10} for lab in labels],
            "history": [{}] * history}


def test_enrollment_output_checked():
    before, after = gallery(3, ["F3B-1"], 3), gallery(4, ["F3B-1", "F3B-31"], 4)
    after["parent_sha256"] = "b" * 64
    step = {"unit": "F3B-31", "process": "SLA", "images": 10, "exit": 0, "before_sha": "b" * 64,
            "json": {"gallery": "g.json", "version": 4, "sha256": "a" * 64, "label": "F3B-31", "parts": 10, "refused": [],
                     "offset": 0.1, "nearest": {"label": "F3B-1", "distance": 40.0}, "warnings": []}}
    assert en.check_enrollment(step, before, after, "a" * 64) == []
    assert any("sha256" in p for p in en.check_enrollment(step, before, after, "c" * 64))
    assert any("version" in p for p in en.check_enrollment(dict(step, json=dict(step["json"], version=5)), before, after,
                                                           "a" * 64))
    refused = dict(step["json"], parts=9, refused=[{"image": "x.png", "reason": "far"}])
    after9 = json.loads(json.dumps(after))
    after9["machines"][1]["parts"] = 9
    assert en.check_enrollment(dict(step, json=refused), before, after9, "a" * 64) == []
    assert any("+ refused" in p for p in en.check_enrollment(dict(step, json=dict(refused, refused=[])), before, after9,
                                                             "a" * 64))
    assert any("parent_sha256" in p for p in en.check_enrollment(dict(step, before_sha="d" * 64), before, after, "a" * 64))
    twice = gallery(4, ["F3B-1", "F3B-31", "F3B-31"], 4)
    assert any("machines" in p for p in en.check_enrollment(step, before, twice, "a" * 64))
    assert en.check_enrollment(dict(step, exit=1, stderr="boom"), before, before, None) == ["F3B-31: exit 1: boom"]
    assert en.changed_fields(before, after) == []
    moved = json.loads(json.dumps(after))
    moved["threshold"] = 6.0
    moved["machines"][0]["parts"] = 11
    assert en.changed_fields(before, moved) == ["threshold", "machine F3B-1"]


def test_earlier_versions_found(tmp_path):
    cur = tmp_path / "g.gallery.json"
    cur.write_text(json.dumps(gallery(3, ["a"])))
    (tmp_path / "g.gallery.versions").mkdir()
    (tmp_path / "g.gallery.versions" / "v1.json").write_text(json.dumps(gallery(1, ["a"])))
    (tmp_path / "other.json").write_text("{}")
    k = en.versions_kept(tmp_path, cur, range(1, 3))
    assert list(k["kept"]) == [1] and k["missing"] == [2]


def test_units_are_new_units_of_known_printer_models():
    fleet = tomllib.loads(FLEET.read_text())
    models = {m["model"]: m.get("process") for m in fleet["machine"] if "process" in m}
    names = [n for n, _, _ in en.UNITS]
    assert len(names) >= 8 and len(set(names)) == len(names)
    taken = {m["name"] for m in fleet["machine"]} | {n for n, _ in reproduce.EXTRA_MACHINES}
    taken |= {n for n, _, _ in openset.HELDOUT_UNITS}
    taken |= {n for n, _ in reproduce.aux_units([(m["name"], m["model"]) for m in fleet["machine"][:21]],
                                                reproduce.AUX_MAX_UNITS)}
    taken |= {m["label"] for m in json.loads(GALLERY.read_text())["machines"]}
    assert not set(names) & taken
    for n, model, process in en.UNITS:
        assert models[model] == process, n
    assert set(en.QUICK_UNITS) <= set(names)
    assert len({dict((u[0], u[1]) for u in en.UNITS)[n] for n in en.QUICK_UNITS}) == 1  # siblings
    # nothing else in the repository names them
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    mine = {"enrollment.py", "test_enrollment.py", "gallery.md"}
    for f in files_to_search():
        if f.name not in mine and not f.name.endswith(".enrollment.md") and not f.name.endswith(".enrollment.json"):
            m = pattern.search(f.read_text(errors="ignore"))
            assert m is None, f"{f}: uses the enrollment benchmark's unit {m.group(0)}"


def files_to_search():
    for sub in ("src", "tests", "training", "benches", ".ci", "docs", "models"):
        for f in (REPO / sub).rglob("*"):
            if f.is_file() and f.suffix in {".rs", ".py", ".md", ".toml", ".sh", ".json", ""} \
                    and "__pycache__" not in f.parts and f.stat().st_size < 5_000_000:
                yield f


def test_benchmark_seeds_are_used_nowhere_else():
    seeds = {en.BASE_SEED + o for o in en.SEED_OFFSETS.values()}
    assert len(seeds) == len(en.SEED_OFFSETS)
    assert not seeds & {openset.BASE_SEED + o for o in openset.SEED_OFFSETS.values()}
    pattern = re.compile(r"\b(" + "|".join(f"{s}|{s // 1000}_{s % 1000:03d}" for s in seeds) + r")\b")
    mine = {"enrollment.py", "test_enrollment.py", "gallery.md"}
    for f in files_to_search():
        if f.name in mine or f.name.endswith(".enrollment.md") or f.name.endswith(".enrollment.json") \
                or f.name.endswith(".gallery.json") or f.name.endswith(".fleet.toml"):
            continue  # galleries and fleets: base64 and long decimals, no seeds
        m = pattern.search(f.read_text(errors="ignore"))
        assert m is None, f"{f}: uses the enrollment benchmark's seed {m.group(0)}"


def test_cli_refuses_unknown_units(tmp_path):
    with pytest.raises(SystemExit):
        en.main(["--model", str(MODEL), "--out", str(tmp_path), "--units", "F3B-99"])


def test_dry_run_plans_the_issue_sizes(tmp_path):
    r = en.main(["--model", str(MODEL), "--out", str(tmp_path), "--dry-run"])
    assert len(r["units"]) == 8 and len(r["known_machines"]) == 21
    assert r["sizes"] == {"enroll_parts": 5, "fresh_parts": 40, "known_parts": 20, "other_claims": 2}
    q = en.main(["--model", str(MODEL), "--out", str(tmp_path), "--dry-run", "--quick"])
    assert q["units"] == en.QUICK_UNITS and q["known_machines"] == en.QUICK_KNOWN


def has_enroll(b: str) -> bool:
    try:
        return subprocess.run([b, "enroll", "--help"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


AMFP = os.environ.get("AMFP_BIN")


@pytest.mark.skipif(not AMFP, reason="needs the amfp binary (AMFP_BIN)")
def test_quick_run_through_the_binary(tmp_path):
    """Two sibling units enrolled one after the other, a few fresh parts, claims, through the real
    binary (about half a minute on 2 cores). F3B-31 is enrolled; F3B-32 lies so near F3B-1 that
    amfp refuses it (it would take F3B-1's parts), and its parts stay impostors for F3B claims."""
    if not has_enroll(AMFP):
        pytest.skip(f"{AMFP} has no `enroll` subcommand (`{AMFP} enroll --help` fails)")
    sha = hashlib.sha256(GALLERY.read_bytes()).hexdigest()
    md = tmp_path / "copy.md"
    res = en.main(["--amfp", AMFP, "--model", str(MODEL), "--gallery", str(GALLERY), "--fleet", str(FLEET),
                   "--out", str(tmp_path / "out"), "--quick", "--threads", "2", "--md", str(md)])
    assert hashlib.sha256(GALLERY.read_bytes()).hexdigest() == sha  # the model's gallery is only read
    assert res["problems"] == []
    assert [e["unit"] for e in res["enrollments"]] == en.QUICK_UNITS
    first, second = res["enrollments"]
    assert first["exit"] == 0 and first["json"]["parts"] + len(first["json"]["refused"]) == 10
    assert second["exit"] == 1 and "cannot be told apart from F3B-1" in second["stderr"], second["stderr"]
    base_v = json.loads(GALLERY.read_text())["version"]
    assert res["enrolled_gallery"]["version"] == base_v + 1
    labels = [m["label"] for m in json.loads((tmp_path / "out" / "enrolled.gallery.json").read_text())["machines"]]
    assert labels[-1] == "F3B-31" and "F3B-32" not in labels
    ident = res["identification"]
    assert {u: r["enrolled"]["parts"] for u, r in ident["units"].items()} == {u: 3 for u in en.QUICK_UNITS}
    assert ident["known"]["base"]["parts"] == 2 * len(en.QUICK_KNOWN)
    assert ident["units_pooled"]["enrolled"]["missing"]["count"] == 0
    # the base gallery cannot name a unit it does not have; the enrolled one names most of them
    assert all(r.get("label") not in en.QUICK_UNITS for r in map(json.loads, (tmp_path / "out" / "results" / "base.jsonl")
                                                               .read_text().splitlines()))
    assert ident["units"]["F3B-31"]["enrolled"]["right"]["count"] >= 2
    assert ident["units"]["F3B-32"]["enrolled"]["right"]["count"] == 0
    c = res["claims"]
    # genuine: 3 parts of F3B-31 and 2 of each known machine; F3B-32's parts have no label to claim
    assert c["rows"]["genuine"]["claims"] == 9 and c["rows"]["other (sampled)"]["claims"] == 12
    # siblings: F3B-31 and F3B-1/2 parts claim the 6 other F3B labels, F3B-32's parts all 7; M2-1 the 5 others
    assert c["rows"]["sibling"]["claims"] == 3 * 6 + 3 * 7 + 4 * 6 + 2 * 5
    # a claim differs from the verdict only where the verdict's vote-disagreement rule called a
    # part unknown (the claim test has no such rule; claim_threshold = threshold in this gallery)
    assert c["against_verdicts"]["unexplained"] == 0
    assert sum(c["rows"]["genuine"]["statuses"].values()) == 9 and "missing" not in c["rows"]["genuine"]["statuses"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "SIMULATED" in text and "## Bars (issue 21)" in text and md.read_text() == text
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(rep["bars"]) == len(en.QUICK_UNITS) + 1 + 2 + 3


def test_report_renders_and_survives_json():
    base, enr = identification()
    ident = en.score_identification(base, enr, ["F3B-31", "M2-31"])
    claims = en.score_claims([claim("F3B-1", "F3B-1", "genuine", "confirmed"),
                              claim("F3B-1", "F3B-31", "sibling", "confirmed")], ["F3B-31", "M2-31"])
    step = {"unit": "F3B-31", "process": "SLA", "images": 10, "exit": 0, "took_s": 1.5, "changed": ["threshold"],
            "json": {"version": 2, "parts": 9, "refused": [{"image": "x.png", "reason": "far from the rest"}],
                     "offset": 5.3, "nearest": {"label": "F3B-3", "distance": 642.9},
                     "named_before": [{"label": "F3B-1", "parts": 8}], "warnings": ["may not be told apart"]}}
    failed = {"unit": "M2-31", "process": "DLS", "images": 10, "exit": 1, "took_s": 0.5, "json": None,
              "stderr": "<6>amfp::identify: model m (21 labels)\nerror: too few parts:\n  - a.png: far"}
    res = {"quick": False, "sizes": dict(en.FULL), "identification": ident, "claims": claims, "claims_sampled": "sampled.",
           "model": "m.onnx", "gallery": "g.json", "base_gallery": {"version": 1, "machines": 21, "sha256": "ab" * 32},
           "fleet": "f.toml", "amfp": "amfp", "seed": en.BASE_SEED, "known_machines": ["F3B-1"], "threads": 2,
           "enrollments": [step, failed], "problems": ["M2-31: exit 1: error: too few parts"]}
    res["bars"] = en.check_bars(ident, claims)
    md = en.report_md(res)
    assert "| 1 | F3B-31 | SLA | 10 | 9 | 1 | 2 | 5.30 | F3B-3 (642.90) | F3B-1 8 | 1 | 1.5 |" in md
    assert "**exit 1**: error: too few parts: - a.png: far |" in md and "- F3B-31: `x.png`: far from the rest" in md
    assert "- F3B-31: may not be told apart" in md and "F3B-31: threshold" in md
    assert "| M2-31: fresh parts identified as it | 92.50 % | >= 95.0 % | **no** |" in md
    assert "-0.50 ± 0.87 points (2 parts lost, 1 gained)" in md
    assert "- M2-31: exit 1" in md
    assert en.report_md(json.loads(json.dumps(openset.clean_json(res)))) == md
