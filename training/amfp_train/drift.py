"""The drift benchmark (docs/drift.md, issue 21's drift bars): does amfp's drift alarm fire before a
machine's parts stop being named right, and how often does it fire on machines that do not change?

Two streams of fresh simulated parts of the model's known machines, judged by ``amfp identify``
(the station's settings: early stopping on) and replayed in order through ``amfp drift report
--results`` (the daemon's own monitor, src/drift/):

- **drifting**: the model's fleet as it is: every machine's parameters move with the build number
  (nozzle wear in FDM, projector non-uniformity in DLS, laser spot growth in SLA, streaks in MJF;
  docs/simulator.md). Parts at builds 1, 1 + step, ... up to ``--last-build``, all machines' parts
  of one build before the next build's.
- **stable**: the same fleet with every per-build rate set to 0, over the same builds: any alarm
  is a false alarm.

Both streams are judged twice: as a line station that knows which machine made each part (each
part claims its machine, as `daemon.expect` does; the monitor follows the claimed machine) and
without any expectation (each part followed against its nearest machine).

Per drifting machine: the build of its alarm, and the build where its parts fall below 95 %
right, from an isotonic (non-increasing) fit of right/not right on the build over its parts in
the stream (none when the fit stays at or above 95 % over the builds simulated). Per process: machines whose accuracy
fell below 95 % (drift visible), and how many of them alarmed first. Stable: false alarms and the
parts followed, with the average run length (parts followed per false alarm; a lower bound when
there were none).

Seeds: BASE_SEED + offset (62_000...), used nowhere else. Nothing was tuned on them: the
monitor's defaults (k = 0.5, h = 10, clamp 4) were set before the first run; the other thresholds
in the report show the trade-off, not the shipped setting.

    python -m amfp_train.drift --amfp ../target/release/amfp --model ../models/amfp-synth-v3.int8.onnx \\
        --out ../build/drift [--quick | --station] [--md ../models/amfp-synth-v3.drift.md]

``--station`` runs the station-rate preset (every build, 2 parts per machine and build, builds
1-100; its own seeds): whether the alarm comes first when the monitor sees parts as often as a
line station does.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from .openset import DEFAULT_FLEET, Record, identify, run_cmd, synth

log = logging.getLogger("amfp_train.drift")

BASE_SEED = 62_000
# + the build point's index; the station preset has its own seeds.
SEED_OFFSETS = {"drifting": 1, "stable": 501, "station-drifting": 1001, "station-stable": 1501}
FULL = {"last_build": 200, "step": 5, "drifting_parts": 2, "stable_parts": 3}
# A line station sees every build's parts: 2 per machine and build (5x the full run's rate),
# every build up to 100, where the SLA and FDM machines have long drifted.
STATION = {"last_build": 100, "step": 1, "drifting_parts": 2, "stable_parts": 1}
QUICK = {"last_build": 41, "step": 20, "drifting_parts": 1, "stable_parts": 1}
QUICK_MACHINES = ["F3B-1", "M2-1"]
RIGHT_BAR = 0.95
THRESHOLDS = (5.0, 8.0, 10.0, 15.0, 20.0)  # replayed besides the default, for the trade-off
STABLE_MAX_FALSE_ALARMS, STABLE_MIN_PARTS = 1, 2000


def stable_fleet(fleet_text: str) -> str:
    """The fleet with every per-build rate (drift) set to 0."""
    out, n = re.subn(r"(?m)^(\s*\w*_per_build\s*=\s*)[-+0-9.eE]+\s*$", r"\g<1>0.0", fleet_text)
    if n == 0:
        raise ValueError("the fleet file has no *_per_build rates: nothing to hold still")
    return out


def known_machines(gallery: Path) -> list[tuple[str, str | None]]:
    g = json.loads(gallery.read_text())
    return [(m["label"], m.get("process")) for m in g["machines"] if m.get("drift")]


def decreasing_fit(builds: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The share right per build as a non-increasing function of the build (isotonic regression,
    pool adjacent violators, weighted by the parts of each build): (builds, fitted share)."""
    xs = np.unique(builds)
    blocks = [[float(right[builds == x].sum()), float((builds == x).sum()), 1] for x in xs]  # sum, n, builds
    merged: list[list[float]] = []
    for blk in blocks:
        merged.append(blk)
        while len(merged) > 1 and merged[-2][0] / merged[-2][1] < merged[-1][0] / merged[-1][1]:
            s2, n2, k2 = merged.pop()
            merged[-1] = [merged[-1][0] + s2, merged[-1][1] + n2, merged[-1][2] + k2]
    fit = np.concatenate([np.full(int(k), sm / n) for sm, n, k in merged])
    return xs, fit


def build_below(builds: np.ndarray, right: np.ndarray, bar: float = RIGHT_BAR) -> float | None:
    """The first build at which the share right, fitted as non-increasing in the build, is below
    `bar` (None when it never is over the builds seen)."""
    xs, fit = decreasing_fit(np.asarray(builds), np.asarray(right, dtype=bool))
    below = np.nonzero(fit < bar)[0]
    return float(xs[below[0]]) if len(below) else None


def stream(amfp: str, fleet: Path, out: Path, machines: list[str], builds: list[int], parts: int, seed0: int,
           threads: int) -> list[dict]:
    """Simulate `parts` parts of each machine at each build; rows in stream order."""
    rows = []
    for i, b in enumerate(builds):
        rows += synth(amfp, fleet, out / f"b{b:03d}", machines, parts, seed0 + i, threads,
                      extra=["--first-build", str(b)], reuse=True)
    return rows


def judge(amfp: str, model: str, gallery: Path, rows: list[dict], out: Path, threads: int, claim: bool) -> Path:
    """`amfp identify --json` on the stream; the Attributions in stream order, one per line. With
    `claim`, each part claims its machine (a line station that knows which printer made it)."""
    if out.is_file() and len(out.read_text().splitlines()) == len(rows):
        log.info("reusing %s", out)  # the images are reused too (stream): a rerun rescores
        return out
    raw = out.with_suffix(".raw.jsonl")
    groups = sorted({r["machine"] for r in rows}) if claim else [None]
    by_name = {}
    for machine in groups:
        mine = [r for r in rows if machine is None or r["machine"] == machine]
        recs = [Record(case="drift", path=r["path"], truth=r["machine"], group=r["build"]) for r in mine]
        extra = ["--gallery", str(gallery)] + (["--claim", machine] if machine else [])
        identify(amfp, model, recs, threads, 200, extra, raw_out=raw)
        for ln in raw.read_text().splitlines():
            a = json.loads(ln)
            by_name[a["source"]["name"]] = ln
    missing = [r["path"] for r in rows if r["path"] not in by_name]
    if missing:
        raise SystemExit(f"amfp identify gave no result for {len(missing)} images, e.g. {missing[0]}")
    out.write_text("".join(by_name[r["path"]] + "\n" for r in rows))
    return out


def replay(amfp: str, model: str, gallery: Path, results: Path, threshold: float | None = None,
           png: Path | None = None) -> dict:
    cmd = [amfp, "drift", "report", "--results", results, "--model", model, "--gallery", gallery, "--json"]
    if threshold is not None:
        cmd += ["--threshold", threshold]
    if png is not None:
        cmd += ["--png", png]
    r = run_cmd(cmd)
    if r.returncode not in (0, 3):
        raise SystemExit(f"amfp drift report failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def score_drifting(rows: list[dict], results: Path, report: dict, processes: dict[str, str | None]) -> list[dict]:
    by_id = {}
    attributions = [json.loads(ln) for ln in results.read_text().splitlines()]
    for a, r in zip(attributions, rows):
        by_id[a["id"]] = r
    alarms = {m["machine"]: m["alarm"] for m in report["machines"] if m.get("alarm")}
    out = []
    for label, process in processes.items():
        mine = [(int(r["build"]), a.get("verdict") == "identified" and a.get("label") == label)
                for a, r in zip(attributions, rows) if r["machine"] == label]
        builds = np.array([b for b, _ in mine])
        right = np.array([ok for _, ok in mine], dtype=bool)
        below = build_below(builds, right)
        alarm = alarms.get(label)
        alarm_build = int(by_id[alarm["result_id"]]["build"]) if alarm else None
        first = builds <= builds.min() + 2 * (builds.max() - builds.min()) / 10
        last = builds >= builds.max() - 2 * (builds.max() - builds.min()) / 10
        out.append({
            "machine": label, "process": process, "parts": len(mine),
            "right_first_fifth": [int(right[first].sum()), int(first.sum())],
            "right_last_fifth": [int(right[last].sum()), int(last.sum())],
            "below_95_build": None if below is None else round(below, 1),
            "alarm_build": alarm_build, "alarm_part": alarm["part"] if alarm else None,
            "change": alarm["change"] if alarm else None,
            "below_from_start": bool(below is not None and below <= builds.min()),
            "drift_visible": bool(below is not None and below > builds.min()),
            "alarm_first": None if below is None or below <= builds.min()
            else bool(alarm_build is not None and alarm_build <= below),
        })
    return out


def per_process(rows: list[dict]) -> dict:
    out = {}
    for p in sorted({r["process"] or "?" for r in rows}):
        mine = [r for r in rows if (r["process"] or "?") == p]
        visible = [r for r in mine if r["drift_visible"]]
        out[p] = {"machines": len(mine), "below_from_start": sum(1 for r in mine if r["below_from_start"]),
                  "drift_visible": len(visible),
                  "alarm_first": sum(1 for r in visible if r["alarm_first"]),
                  "alarmed": sum(1 for r in mine if r["alarm_build"] is not None)}
    return out


def score_stable(report: dict) -> dict:
    parts = sum(m["parts"] for m in report["machines"])
    alarms = [m["machine"] for m in report["machines"] if m.get("alarm")]
    return {"parts_followed": parts, "false_alarms": len(alarms), "machines_alarmed": alarms,
            "arl_parts": parts / len(alarms) if alarms else None, "arl_lower_bound": None if alarms else parts}


def evaluate(amfp: str, model: str, gallery: Path, d_rows: list[dict], d_res: Path, s_res: Path,
             processes: dict, out: Path) -> dict:
    """Replays both streams (the default threshold and the others) and scores them."""
    out.mkdir(parents=True, exist_ok=True)
    d_rep = replay(amfp, model, gallery, d_res, png=out / "drifting.png")
    s_rep = replay(amfp, model, gallery, s_res, png=out / "stable.png")
    drifting = score_drifting(d_rows, d_res, d_rep, processes)
    stable = score_stable(s_rep)
    thresholds = []
    for h in THRESHOLDS:
        dr = score_drifting(d_rows, d_res, replay(amfp, model, gallery, d_res, threshold=h), processes)
        sr = score_stable(replay(amfp, model, gallery, s_res, threshold=h))
        visible = [r for r in dr if r["drift_visible"]]
        thresholds.append({"threshold": h, "drift_visible": len(visible),
                           "alarm_first": sum(1 for r in visible if r["alarm_first"]),
                           "alarmed": sum(1 for r in dr if r["alarm_build"] is not None),
                           "false_alarms": sr["false_alarms"], "stable_parts": sr["parts_followed"]})
    visible = [r for r in drifting if r["drift_visible"]]
    from_start = [r for r in drifting if r["below_from_start"]]
    bars = [
        {"bar": "every drifting machine whose parts fall below 95 % right alarms first",
         "value": f"{sum(1 for r in visible if r['alarm_first'])} of {len(visible)} (and {len(from_start)} machines "
                  "below 95 % from the first builds, where no alarm can come first)",
         "met": all(r["alarm_first"] for r in visible)},
        {"bar": f"at most {STABLE_MAX_FALSE_ALARMS} false alarm over at least {STABLE_MIN_PARTS} stable parts",
         "value": f"{stable['false_alarms']} over {stable['parts_followed']}",
         "met": stable["false_alarms"] <= STABLE_MAX_FALSE_ALARMS and stable["parts_followed"] >= STABLE_MIN_PARTS},
    ]
    return {"report": d_rep, "drifting": drifting, "per_process": per_process(drifting), "stable": stable,
            "thresholds": thresholds, "bars": bars}


MODE_TITLES = {
    "claimed": "Line station: each part claims its machine (`daemon.expect` or a claim), followed against it",
    "nearest": "No expectation: each part followed against its nearest machine",
}


def report_md(res: dict) -> str:
    lines = [f"# Drift benchmark: {res['model']}", "",
             f"Command: `{res['command']}`", "",
             f"**Simulated parts** (amfp's simulator, not real machines), seeds {res['seeds']}, builds "
             f"{res['builds'][0]}-{res['builds'][-1]} every {res['step']}; {res['seconds']:.0f} s on this machine. "
             f"Monitor: allowance {res['allowance']}, threshold {res['threshold']} (the defaults, set before the "
             "first run). \"Falls below 95 %\": the first build where an isotonic (non-increasing) fit of "
             "right/not right on the build is below 95 % (`from start`: below 95 % over the first builds already, so no alarm can come first).",
             ""]
    for mode, m in res["modes"].items():
        lines += [f"## {MODE_TITLES[mode]}", "",
                  "| machine | process | parts | right, first fifth of builds | right, last fifth | falls below 95 % "
                  "at build | alarm at build (part) | change | alarm first |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in m["drifting"]:
            f, la = r["right_first_fifth"], r["right_last_fifth"]
            below = "from start" if r["below_from_start"] else ("-" if r["below_95_build"] is None
                                                               else r["below_95_build"])
            alarm = "-" if r["alarm_build"] is None else f"{r['alarm_build']} ({r['alarm_part']})"
            first = "-" if r["alarm_first"] is None else ("yes" if r["alarm_first"] else "**no**")
            lines.append(f"| {r['machine']} | {r['process']} | {r['parts']} | {f[0]}/{f[1]} | {la[0]}/{la[1]} | "
                         f"{below} | {alarm} | {r['change'] or '-'} | {first} |")
        lines += ["", "| process | machines | below 95 % from the start | falls below 95 % later (drift visible) | "
                      "of those, alarm first | alarmed at all |", "|---|---|---|---|---|---|"]
        for p, st in m["per_process"].items():
            lines.append(f"| {p} | {st['machines']} | {st['below_from_start']} | {st['drift_visible']} | "
                         f"{st['alarm_first']} | {st['alarmed']} |")
        st = m["stable"]
        arl = f"{st['arl_parts']:.0f}" if st["arl_parts"] else f"> {st['arl_lower_bound']} (no false alarm)"
        lines += ["", f"Stable machines (per-build rates 0): parts followed {st['parts_followed']}; false alarms "
                      f"{st['false_alarms']} ({', '.join(st['machines_alarmed']) or 'none'}); average run length "
                      f"{arl} parts.", "",
                  "Other thresholds (replays of the same streams; not the shipped setting):", "",
                  "| threshold h | drifting: alarm first / drift visible | drifting: alarmed | stable: false alarms |",
                  "|---|---|---|---|"]
        for t in m["thresholds"]:
            lines.append(f"| {t['threshold']} | {t['alarm_first']}/{t['drift_visible']} | {t['alarmed']} | "
                         f"{t['false_alarms']} |")
        lines += ["", "Bars (issue 21):", ""]
        for bar in m["bars"]:
            lines.append(f"- {bar['bar']}: {bar['value']} — **{'met' if bar['met'] else 'not met'}**")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--amfp", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--gallery", help="default: the one beside the model")
    ap.add_argument("--fleet", default=str(DEFAULT_FLEET))
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="two machines, three builds: keeps the harness working")
    ap.add_argument("--station", action="store_true", help="station rate: every build, 2 parts per machine and build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--md")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.time()
    size = QUICK if a.quick else STATION if a.station else FULL
    prefix = "station-" if a.station else ""
    d_seed, s_seed = (BASE_SEED + SEED_OFFSETS[prefix + k] for k in ("drifting", "stable"))
    model = str(Path(a.model).resolve())
    gallery = Path(a.gallery) if a.gallery else Path(re.sub(r"\.onnx$", "", model) + ".gallery.json")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    processes = dict(known_machines(gallery))
    if not processes:
        raise SystemExit(f"gallery {gallery} has no machine with a drift reference: refit it (docs/drift.md)")
    if a.quick:
        processes = {k: v for k, v in processes.items() if k in QUICK_MACHINES}
    machines = list(processes)
    builds = list(range(1, size["last_build"] + 1, size["step"]))
    fleet = Path(a.fleet)
    still = out / "stable.fleet.toml"
    still.write_text(stable_fleet(fleet.read_text()))

    log.info("drifting stream: %d machines x %d builds x %d parts", len(machines), len(builds), size["drifting_parts"])
    d_rows = stream(a.amfp, fleet, out / "drifting", machines, builds, size["drifting_parts"],
                    d_seed, a.threads)
    log.info("stable stream: %d machines x %d builds x %d parts", len(machines), len(builds), size["stable_parts"])
    s_rows = stream(a.amfp, still, out / "stable", machines, builds, size["stable_parts"],
                    s_seed, a.threads)
    modes = {}
    for mode, claim in (("claimed", True), ("nearest", False)):
        d_res = judge(a.amfp, model, gallery, d_rows, out / f"drifting-{mode}.jsonl", a.threads, claim)
        s_res = judge(a.amfp, model, gallery, s_rows, out / f"stable-{mode}.jsonl", a.threads, claim)
        modes[mode] = evaluate(a.amfp, model, gallery, d_rows, d_res, s_res, processes, out / mode)
    d_rep = modes["claimed"]["report"]
    bars = modes["claimed"]["bars"]
    res = {"model": Path(model).name, "gallery": str(gallery), "quick": a.quick,
           "command": "python -m amfp_train.drift " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
           "seeds": f"{d_seed}-{d_seed + len(builds) - 1} (drifting), {s_seed}-{s_seed + len(builds) - 1} (stable)",
           "builds": builds, "step": size["step"], "allowance": d_rep["allowance"], "threshold": d_rep["threshold"],
           "modes": {k: {kk: vv for kk, vv in v.items() if kk != "report"} for k, v in modes.items()},
           "bars": bars, "seconds": time.time() - t0}
    md = report_md(res)
    (out / "drift.md").write_text(md)
    (out / "drift.json").write_text(json.dumps(res, indent=1))
    if a.md:
        Path(a.md).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    print(md)
    return res


if __name__ == "__main__":
    main()
