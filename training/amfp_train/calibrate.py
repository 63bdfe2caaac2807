"""Open-set threshold: when is a vote too weak to name a machine?

The score of a part is the top class's share of the SoftMax outputs summed
over its ROIs (the vote fraction, in [0, 1]); the daemon answers "unknown"
when it is below ``amfp.unknown_threshold``. The threshold is calibrated on

* known parts: validation parts of the machines the model was trained on, and
* unknown parts: parts of machines held out of training (``--holdout``) from
  the train and val splits; their test-split parts are kept apart so that
  the evaluation reports the detection rate on parts calibration never saw.

Rules (``--rule``):

* ``balanced`` (default): maximise balanced accuracy
  ``(known kept + unknown rejected) / 2`` subject to a false-reject rate on
  known parts of at most ``--max-false-reject`` (5%). Ties go to the lowest
  threshold (fewest false rejects). Why: with a handful of held-out machines
  the unknown scores are few and lumpy; the cap keeps the daemon from turning
  a usable model into one that says "unknown" to a real fleet.
* ``keep``: the highest threshold that keeps at least ``--keep`` (99%) of
  known parts, ignoring unknowns. Used automatically when there is no held-out
  machine.

CLI (writes the threshold into each model's metadata, in place)::

    python -m amfp_train.calibrate --model build/model/amfp.onnx \
        --model build/model/amfp.int8.onnx --data DIR --out build/model/calibration.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def open_set_rates(known: np.ndarray, unknown: np.ndarray, thr: float) -> dict:
    """False-reject rate of known parts and detection rate of unknown parts at `thr`."""
    known, unknown = np.asarray(known, float), np.asarray(unknown, float)
    return {
        "threshold": float(thr),
        "known_parts": int(len(known)),
        "unknown_parts": int(len(unknown)),
        "false_reject_rate": float((known < thr).mean()) if len(known) else 0.0,
        "unknown_detection_rate": float((unknown < thr).mean()) if len(unknown) else None,
    }


def keep_threshold(known: np.ndarray, keep: float = 0.99) -> float:
    """Highest threshold rejecting at most floor((1 - keep) * n) known parts (scores < thr are rejected)."""
    k = np.sort(np.asarray(known, float))
    if len(k) == 0:
        return 0.0
    m = int(np.floor((1.0 - keep) * len(k) + 1e-9))
    return float(k[min(m, len(k) - 1)])


def balanced_threshold(known: np.ndarray, unknown: np.ndarray, max_false_reject: float = 0.05) -> float:
    """Threshold maximising balanced accuracy with false rejects <= max_false_reject."""
    known, unknown = np.asarray(known, float), np.asarray(unknown, float)
    u = np.unique(np.concatenate([known, unknown, [0.0, 1.0 + 1e-9]]))
    cands = np.concatenate([[0.0], (u[:-1] + u[1:]) / 2])
    best_t, best_b = 0.0, -1.0
    for t in cands:  # ascending, so strict '>' keeps the lowest threshold on ties
        frr = (known < t).mean() if len(known) else 0.0
        if frr > max_false_reject + 1e-12:
            continue
        det = (unknown < t).mean()
        b = 0.5 * ((1.0 - frr) + det)
        if b > best_b + 1e-12:
            best_t, best_b = float(t), b
    return best_t


def choose_threshold(known, unknown, rule: str = "balanced", keep: float = 0.99,
                     max_false_reject: float = 0.05) -> tuple[float, str]:
    """The threshold and the rule actually used (falls back to `keep` without unknowns)."""
    if rule == "balanced" and len(unknown) > 0:
        return balanced_threshold(known, unknown, max_false_reject), "balanced"
    if rule not in ("balanced", "keep"):
        raise ValueError(f"rule {rule!r}: balanced or keep")
    return keep_threshold(known, keep), "keep"


def set_metadata(path: str | Path, values: dict[str, str]) -> None:
    """Set amfp.* metadata keys of an ONNX file in place, keeping the rest."""
    import onnx

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    props.update(values)
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def calibration_scores(model_path, ds, seed: int = 4321, threads: int = 2, cache_mb: float = 8000,
                       max_parts: int | None = None):
    """Vote-fraction scores of known val parts and of held-out parts (train+val splits)."""
    from .evaluate import ort_predictor, part_probs, read_meta, shared_store, vote_scores

    meta = read_meta(model_path)
    labels = set(meta["amfp.labels"])
    known = [p for p in ds.split("val") if p.label in labels]
    unknown = [p for p in ds.parts if p.label not in labels and p.split in ("train", "val")]
    if max_parts:
        known, unknown = known[:max_parts], unknown[:max_parts]
    store = shared_store(meta, cache_mb)
    pred = ort_predictor(model_path, threads)
    out = []
    for group in (known, unknown):
        if not group:
            out.append(np.zeros(0))
            continue
        pr = part_probs(pred, group, store, meta["amfp.votes"], seed, meta["amfp.mean"],
                        meta["amfp.std"], meta["amfp.channels"])
        pr = pr[~np.isnan(pr).any(axis=(1, 2))]
        out.append(vote_scores(pr)[1])
    return out[0], out[1]


def calibrate_models(models, data, rule="balanced", keep=0.99, max_false_reject=0.05, seed=4321,
                     threads=2, max_parts=None, out=None) -> dict:
    """Calibrate and write amfp.unknown_threshold into each model; returns a report per model."""
    from .dataset import read_dataset
    from .evaluate import read_meta

    report = {}
    ds = None
    for mpath in models:
        meta = read_meta(mpath)
        ds = ds or read_dataset(data, meta.get("amfp.task", "machine"))
        known, unknown = calibration_scores(mpath, ds, seed, threads, max_parts=max_parts)
        thr, used = choose_threshold(known, unknown, rule, keep, max_false_reject)
        set_metadata(mpath, {"amfp.unknown_threshold": f"{thr:.4f}"})
        r = open_set_rates(known, unknown, thr)
        r.update(rule=used, keep=keep, max_false_reject=max_false_reject,
                 known_score_quantiles=_q(known), unknown_score_quantiles=_q(unknown))
        log.info("%s: threshold %.4f (%s), calibration false reject %.3f, unknown detection %s",
                 mpath, thr, used, r["false_reject_rate"], r["unknown_detection_rate"])
        report[str(mpath)] = r
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    return report


def _q(x) -> dict:
    x = np.asarray(x, float)
    if len(x) == 0:
        return {}
    return {str(q): float(np.quantile(x, q)) for q in (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 1.0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="ONNX model (repeatable)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rule", default="balanced", choices=["balanced", "keep"])
    ap.add_argument("--keep", type=float, default=0.99)
    ap.add_argument("--max-false-reject", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="calibration report JSON")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    calibrate_models(a.model, a.data, a.rule, a.keep, a.max_false_reject, a.seed, a.threads, out=a.out)


if __name__ == "__main__":
    main()
