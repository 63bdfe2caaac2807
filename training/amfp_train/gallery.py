"""The fingerprint gallery (docs/gallery.md): fit it from known parts' embeddings, calibrate its
two thresholds on other known parts, and write (or read) the ``*.gallery.json`` file.

**Fit** (``fit_gallery``), from part embeddings ``z`` (each the mean of a part's ROI embedding
rows) with their machine labels, in float64:

* ``μ_k``: the mean embedding of machine k's parts;
* ``Σ``: the pooled within-machine covariance, ``Σ_k Σ_i (z_i - μ_k)(z_i - μ_k)^T / (n - K)``
  (n parts, K machines), shrunk toward a scaled identity:
  ``Σ_λ = (1 - λ) Σ + λ (tr Σ / D) I``. λ is ``--shrinkage`` (default 0.1: the open-set pilot
  measured 0.01-0.3 alike on the shipped model, /work/shared/notes/openset-pilot.md; with tens
  of parts per machine and D = 256 the unshrunk covariance is near singular). ``--shrinkage
  auto`` chooses among 0.01, 0.03, 0.1, 0.3 by 5-fold cross-validation on the *fit* parts
  alone (the Gaussian log-likelihood of held-out parts' within-machine residuals), never on
  calibration or evaluation parts;
* ``W = Σ_λ^{-1/2}``, the inverse symmetric square root (``numpy.linalg.eigh``);
* ``μ_0``, ``W_0``: the same for all fit parts as one Gaussian (mean of all parts, their
  covariance with divisor n - 1, the same λ).

The arrays are then rounded to float32, as the file stores them, and everything after (the
calibration, ``Gallery.judge``) uses the rounded values, so the thresholds fit the distances amfp
computes from the file. A part's distances: ``d_k = |W (z - μ_k)|²``, ``d_0 = |W_0 (z - μ_0)|²``,
``r_k = d_k - d_0``; the nearest machine has the smallest ``d_k``; the part is identified when
``r_nearest <= threshold`` and ``d_nearest <= outlier_threshold``.

**Calibration rule** (``calibrate``), on n known calibration parts (other parts than the fit's,
of machines in the gallery; >= 1000 recommended: at 1 % the rate rests on floor(0.01 n) parts)
and a target false-reject rate t (``--false-reject``, default 0.01):

1. ``outlier_threshold``: the outlier test gets a fifth of the budget. With
   ``n_o = floor(n t / 5)``, the threshold lies midway between the (n - n_o)-th and the
   (n - n_o + 1)-th smallest ``d_nearest`` (the largest value when n_o = 0), so exactly the n_o
   parts farthest from every machine fail it (fewer on ties). It is a safety net for surfaces
   unlike anything the model knows, where ``r`` alone can be small.
2. ``threshold``: with ``n_a = floor(n t)`` false rejects allowed in all and the ``m`` parts
   that pass step 1, the relative test may reject ``b = n_a - (parts failing step 1)`` of
   them: the threshold lies midway between the (m - b)-th and (m - b + 1)-th smallest ``r_nearest``
   among those m (the largest when b = 0). This is the strictest threshold with at most n_a
   calibration parts failing either test.

Midpoints rather than the order statistics themselves keep a calibration part's verdict from
hanging on the last bit of a float (amfp's arithmetic and numpy's differ in rounding).
``calibration`` records the rule, the counts (``false_rejects`` failing either test,
``outlier_rejects``, ``relative_rejects``), ``misnamed`` (known parts whose nearest machine is
not their own), ``vote_disagreements`` (when the vote's leader is known: parts whose leader
differs from the nearest machine, which amfp also calls unknown) and, for calibration parts of
machines not in the gallery (``--exclude``, held-out units), the share caught as unknown.

**Embeddings** come from a pluggable source: ``AmfpSource`` runs ``amfp identify --json
--with-embedding --early-stop off --no-gallery`` on the images in chunks (what the daemon
computes: its ROI sampler, its model runtime); ``OrtSource`` cuts the ROIs with ``roi.py`` (the
Python mirror of amfp's sampler, other random positions) and runs onnxruntime. A part with
several image files gets the ROI-weighted mean of its files' embeddings. ``load_identify_jsonl``
reads JSON lines written by ``amfp identify --json --with-embedding`` and matches them to a
dataset's labels.csv by image path.

CLI::

    python -m amfp_train.gallery --model M.onnx --amfp ../target/release/amfp \\
        --fit DIR [DIR...] --calibrate DIR [DIR...] --out M.gallery.json \\
        [--false-reject 0.01] [--shrinkage 0.1|auto] [--exclude LABEL,LABEL] \\
        [--fit-splits train] [--calibrate-splits val] [--source amfp|onnxruntime]

Each DIR is a dataset with labels.csv (``amfp synth``'s layout); ``--*-splits`` picks splits
(default: every part). ``--out`` defaults to the model's path with ``.onnx`` replaced by
``.gallery.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "amfp-gallery"
SCHEMA = 1
SCORE = "relative_mahalanobis"
DEFAULT_SHRINKAGE = 0.1
SHRINKAGE_CANDIDATES = (0.01, 0.03, 0.1, 0.3)
DEFAULT_FALSE_REJECT = 0.01
DEFAULT_FALSE_ACCEPT = 0.01  # claims: sibling impostor claims accepted (docs/gallery.md, "Claims")
OUTLIER_SHARE = 0.2  # the outlier test's part of the false-reject budget (t / 5)
RECOMMENDED_CALIBRATION_PARTS = 1000
BY = "amfp_train.gallery"


# ---------------------------------------------------------------------------------------------
# the gallery and its maths


@dataclass
class Machine:
    label: str
    process: str | None
    parts: int
    mean: np.ndarray  # [D] float32
    offset: float = 0.0  # the small-N correction of an enrolled machine (docs/gallery.md, "Enrollment")
    notes: str | None = None
    drift: dict | None = None  # {"parts", "mean_log", "sd_log"}: drift monitoring's reference (docs/drift.md)


@dataclass
class Gallery:
    """A gallery in memory: arrays as stored (float32), distances computed in float64."""

    model: dict  # {"name", "sha256"}
    embedding: dict  # {"output", "dim", "kind"}
    shrinkage: float
    whitening: np.ndarray  # [D, D] float32
    global_mean: np.ndarray  # [D] float32
    global_whitening: np.ndarray  # [D, D] float32
    machines: list[Machine]
    threshold: float | None = None
    outlier_threshold: float | None = None
    claim_threshold: float | None = None  # on r to a claimed machine (docs/gallery.md, "Claims")
    calibration: dict = field(default_factory=dict)
    version: int = 1
    parent_sha256: str | None = None
    created: str = ""
    history: list[dict] = field(default_factory=list)
    score: str = SCORE

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.machines]

    @property
    def dim(self) -> int:
        return int(self.global_mean.shape[0])

    def distances(self, z: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(d [n, K], d_0 [n]) for part embeddings z [n, D], in float64, computed as amfp does:
        whiten the part (W z) and compare with the whitened means (W μ_k)."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        if z.shape[1] != self.dim:
            raise ValueError(f"embeddings have {z.shape[1]} values, the gallery {self.dim}")
        w = self.whitening.astype(np.float64)
        w0 = self.global_whitening.astype(np.float64)
        wm = np.stack([m.mean.astype(np.float64) for m in self.machines]) @ w.T  # [K, D]
        w0m = w0 @ self.global_mean.astype(np.float64)
        d = np.empty((len(z), len(self.machines)))
        for i in range(0, len(z), chunk):
            wz = z[i:i + chunk] @ w.T
            d[i:i + chunk] = ((wz[:, None, :] - wm[None]) ** 2).sum(-1)
        d0 = ((z @ w0.T - w0m) ** 2).sum(-1)
        d -= np.array([m.offset for m in self.machines], dtype=np.float64)[None, :]
        return d, d0

    def judge(self, z: np.ndarray) -> dict:
        """Per part: nearest machine (index, label), d_nearest, r_nearest, and the verdict."""
        d, d0 = self.distances(z)
        k = d.argmin(1)
        dn = d[np.arange(len(d)), k]
        rn = dn - d0
        out = {"nearest": k, "label": [self.machines[i].label for i in k], "d": dn, "r": rn, "d0": d0}
        if self.threshold is not None and self.outlier_threshold is not None:
            out["outlier"] = dn > self.outlier_threshold
            out["far"] = rn > self.threshold
            out["identified"] = ~(out["outlier"] | out["far"])
        return out


def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    """Inverse symmetric square root of a symmetric positive definite matrix (eigh)."""
    vals, vecs = np.linalg.eigh(cov)
    if vals.min() <= 0 or not np.isfinite(vals).all():
        raise ValueError(f"covariance is not positive definite (smallest eigenvalue {vals.min():.3g}): "
                         "use a shrinkage > 0 or more fit parts")
    w = (vecs * (1.0 / np.sqrt(vals))) @ vecs.T
    return (w + w.T) / 2


def shrink(cov: np.ndarray, lam: float) -> np.ndarray:
    """(1 - λ) Σ + λ (tr Σ / D) I."""
    d = cov.shape[0]
    return (1.0 - lam) * cov + lam * (np.trace(cov) / d) * np.eye(d)


def _group(labels: Iterable[str]) -> tuple[list[str], np.ndarray]:
    from .dataset import natural_key

    labels = list(labels)
    uniq = sorted(set(labels), key=natural_key)
    idx = {lab: i for i, lab in enumerate(uniq)}
    return uniq, np.array([idx[lab] for lab in labels], dtype=np.int64)


def pooled_within(z: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class means [K, D], pooled within-class covariance with divisor n - K)."""
    n = len(z)
    if n - k < 1:
        raise ValueError(f"{n} parts of {k} machines: a within-machine covariance needs more parts than machines")
    means = np.stack([z[y == c].mean(0) for c in range(k)])
    r = z - means[y]
    return means, (r.T @ r) / (n - k)


def fit_gallery(z: np.ndarray, labels: list[str], shrinkage: float = DEFAULT_SHRINKAGE,
                processes: dict[str, str | None] | None = None, model: dict | None = None,
                embedding: dict | None = None) -> Gallery:
    """Fit a gallery (uncalibrated: thresholds None) from part embeddings z [n, D] and labels."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) != len(labels):
        raise ValueError(f"embeddings {z.shape} and {len(labels)} labels")
    if not np.isfinite(z).all():
        raise ValueError("embeddings contain NaN or infinity")
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage {shrinkage}: must be in [0, 1)")
    uniq, y = _group(labels)
    if len(uniq) < 2:
        raise ValueError(f"a gallery needs at least two machines (got {uniq})")
    means, cov = pooled_within(z, y, len(uniq))
    w = _inv_sqrt(shrink(cov, shrinkage))
    mu0 = z.mean(0)
    c0 = z - mu0
    cov0 = (c0.T @ c0) / max(1, len(z) - 1)
    w0 = _inv_sqrt(shrink(cov0, shrinkage))
    counts = np.bincount(y, minlength=len(uniq))
    processes = processes or {}
    d = z.shape[1]
    machines = [Machine(lab, processes.get(lab), int(counts[i]), means[i].astype(np.float32))
                for i, lab in enumerate(uniq)]
    return Gallery(model=model or {"name": "", "sha256": ""},
                   embedding=embedding or {"output": "embedding", "dim": d, "kind": "pre-logits"},
                   shrinkage=float(shrinkage), whitening=w.astype(np.float32),
                   global_mean=mu0.astype(np.float32), global_whitening=w0.astype(np.float32),
                   machines=machines)


def choose_shrinkage(z: np.ndarray, labels: list[str], candidates=SHRINKAGE_CANDIDATES, folds: int = 5,
                     seed: int = 0) -> tuple[float, dict]:
    """λ with the best mean held-out Gaussian log-likelihood of within-machine residuals, by
    `folds`-fold cross-validation over the fit parts (stratified per machine). Returns (λ, scores)."""
    z = np.asarray(z, dtype=np.float64)
    uniq, y = _group(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(z), dtype=np.int64)
    for c in range(len(uniq)):
        idx = np.nonzero(y == c)[0]
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    scores = {float(lam): [] for lam in candidates}
    for f in range(folds):
        tr, te = fold != f, fold == f
        seen = np.unique(y[tr])
        te &= np.isin(y, seen)
        if not te.any() or tr.sum() - len(seen) < 1:
            continue
        remap = -np.ones(len(uniq), dtype=np.int64)
        remap[seen] = np.arange(len(seen))
        means, cov = pooled_within(z[tr], remap[y[tr]], len(seen))
        r = z[te] - means[remap[y[te]]]
        for lam in candidates:
            vals, vecs = np.linalg.eigh(shrink(cov, lam))
            if vals.min() <= 0:
                scores[float(lam)].append(-np.inf)
                continue
            proj = r @ vecs
            maha = (proj ** 2 / vals).sum(1)
            scores[float(lam)].append(float(-0.5 * (np.log(vals).sum() + maha.mean())))
    mean = {lam: (float(np.mean(s)) if s else -np.inf) for lam, s in scores.items()}
    if all(not np.isfinite(v) for v in mean.values()):
        raise ValueError("cannot choose a shrinkage: too few fit parts per machine for cross-validation")
    best = max(mean, key=lambda lam: (mean[lam], lam))
    return best, mean


# ---------------------------------------------------------------------------------------------
# calibration


def _between(sorted_vals: np.ndarray, keep: int) -> float:
    """A threshold keeping the `keep` smallest of `sorted_vals` (ascending) and rejecting the rest:
    midway between the keep-th and the next value, or the largest value when all are kept."""
    if keep >= len(sorted_vals):
        return float(sorted_vals[-1])
    if keep <= 0:
        raise ValueError("a threshold must keep at least one calibration part")
    return float((sorted_vals[keep - 1] + sorted_vals[keep]) / 2)


def calibrate(g: Gallery, z: np.ndarray, labels: list[str], target: float = DEFAULT_FALSE_REJECT,
              rois: int | None = None, data: str = "", vote_labels: list[str | None] | None = None,
              extra: dict | None = None, claim_target: float = DEFAULT_FALSE_ACCEPT) -> dict:
    """Set g.threshold and g.outlier_threshold from calibration parts (module doc's rule) and
    fill g.calibration. Parts whose label is not in the gallery are measured as held-out parts
    (share caught as unknown), not used for the thresholds. Returns g.calibration."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"false-reject target {target}: must be in [0, 1)")
    z = np.asarray(z, dtype=np.float64)
    labels = list(labels)
    known_set = set(g.labels)
    known = np.array([lab in known_set for lab in labels], dtype=bool)
    n = int(known.sum())
    if n == 0:
        raise ValueError("no calibration part of a machine in the gallery")
    if n < RECOMMENDED_CALIBRATION_PARTS:
        log.warning("calibrating on %d known parts (>= %d recommended): the %.1f %% rate rests on %d parts",
                    n, RECOMMENDED_CALIBRATION_PARTS, 100 * target, int(np.floor(n * target + 1e-9)))
    res = g.judge(z)
    dk, rk = res["d"][known], res["r"][known]
    allowed = int(np.floor(n * target + 1e-9))
    n_o = int(np.floor(n * target * OUTLIER_SHARE + 1e-9))
    outlier_thr = _between(np.sort(dk), n - n_o)
    if outlier_thr <= 0:  # amfp refuses a non-positive outlier threshold (a squared distance)
        outlier_thr = float(np.nextafter(0.0, 1.0))
    passing = dk <= outlier_thr
    budget = allowed - int((~passing).sum())
    rp = np.sort(rk[passing])
    thr = _between(rp, len(rp) - max(0, budget))
    g.threshold, g.outlier_threshold = float(thr), float(outlier_thr)
    res = g.judge(z)
    out_k, far_k = res["outlier"][known], res["far"][known]
    rejected = out_k | far_k
    kl = np.array(labels, dtype=object)[known]
    misnamed = int((np.array(res["label"], dtype=object)[known] != kl).sum())
    cal = {
        "false_reject_target": float(target),
        "known_parts": n,
        "false_rejects": int(rejected.sum()),
        "false_reject_rate": float(rejected.mean()),
        "rois": int(rois) if rois is not None else None,
        "data": data,
        "rule": (f"outlier_threshold: midway past the {n - n_o} smallest d_nearest (floor(n*t/5) = {n_o} "
                 f"rejected); threshold: the strictest r_nearest cut with at most floor(n*t) = {allowed} "
                 "parts failing either test (midpoints between order statistics)"),
        "allowed_false_rejects": allowed,
        "outlier_rejects": int(out_k.sum()),
        "relative_rejects": int((far_k & ~out_k).sum()),
        "misnamed": misnamed,
        "misnamed_rate": float(misnamed / n),
        "distance_quantiles": _quantiles(rk),
        "plain_distance_quantiles": _quantiles(dk),
    }
    if vote_labels is not None:
        vl = np.array(vote_labels, dtype=object)[known]
        has = np.array([v is not None for v in vl])
        dis = has & (vl != np.array(res["label"], dtype=object)[known])
        cal["vote_disagreements"] = int(dis.sum())
        cal["false_rejects_with_vote_disagreements"] = int((rejected | dis).sum())
    if (~known).any():
        held = sorted({lab for lab, k in zip(labels, known) if not k})
        caught = ~res["identified"][~known]
        cal["held_out"] = {"parts": int((~known).sum()), "labels": held,
                           "unknown_rate": float(caught.mean()),
                           "caught_by_outlier_test": int(res["outlier"][~known].sum())}
    cal["claims"] = calibrate_claims(g, z, labels, claim_target)
    cal["drift"] = set_drift_references(g, z, labels)
    if extra:
        cal.update(extra)
    g.calibration = cal
    return cal


DRIFT_MIN_PARTS = 5


def set_drift_references(g: Gallery, z: np.ndarray, labels: list[str]) -> dict:
    """Give each machine its drift reference from its own calibration parts (docs/drift.md): mean
    and standard deviation of ln d_k, the plain distance of machine k's parts to k (what amfp
    projects each judged part to on the model's full ROI count). Machines with fewer than
    DRIFT_MIN_PARTS such parts get none (not monitored). Returns the calibration record."""
    d, _ = g.distances(z)
    lab = np.array(labels, dtype=object)
    parts = {}
    for k, m in enumerate(g.machines):
        own = d[lab == m.label, k]
        own = own[own > 0]
        if len(own) < DRIFT_MIN_PARTS:
            m.drift = None
            continue
        logs = np.log(own)
        m.drift = {"parts": int(len(own)), "mean_log": float(logs.mean()), "sd_log": float(logs.std(ddof=1))}
        parts[m.label] = int(len(own))
    return {"rule": "per machine: mean and standard deviation (n - 1) of ln d_k over its own calibration parts "
                    f"(at least {DRIFT_MIN_PARTS})",
            "machines": len(parts), "parts": int(sum(parts.values()))}


def printer_model(label: str) -> str:
    """The printer model a unit's label names: `F3B-7` -> `F3B` (the fleet's naming)."""
    return label.rsplit("-", 1)[0]


def calibrate_claims(g: Gallery, z: np.ndarray, labels: list[str], target: float = DEFAULT_FALSE_ACCEPT) -> dict:
    """Set g.claim_threshold from calibration parts and return its record (docs/gallery.md, "Claims").

    amfp confirms a claim of machine k when k is the part's nearest machine, d_k <= outlier_threshold
    and r_k <= claim_threshold. Genuine claims: each known part claimed as its own machine.
    Impostor claims: each part claimed as every *sibling* machine of the gallery (same printer
    model, not its own machine; parts of held-out units are impostors for all their siblings),
    the hardest claims there are. claim_threshold is the loosest cut on r with at most
    floor(n t) of the n sibling impostor claims accepted (midway between order statistics; when
    fewer can be accepted at all, the cut accepts every genuine claim that the other two
    conditions allow). Other impostor claims are counted at that threshold too."""
    z = np.asarray(z, dtype=np.float64)
    d, d0 = g.distances(z)
    r = d - d0[:, None]
    nearest = d.argmin(1)
    index = {lab: i for i, lab in enumerate(g.labels)}
    models = np.array([printer_model(lab) for lab in g.labels], dtype=object)
    rows = np.arange(len(z))
    eligible = (nearest[:, None] == np.arange(len(g.labels))[None, :]) & (d <= g.outlier_threshold)
    r_acc = np.where(eligible, r, np.inf)  # the r a claim needs to pass, inf if it cannot pass
    own = np.array([index.get(lab, -1) for lab in labels])
    sib = models[None, :] == np.array([printer_model(lab) for lab in labels], dtype=object)[:, None]
    not_own = np.ones_like(sib)
    known = own >= 0
    not_own[rows[known], own[known]] = False
    imp_sib = r_acc[sib & not_own]
    genuine = r_acc[rows[known], own[known]]
    n_imp = int(imp_sib.size)
    allowed = int(np.floor(n_imp * target + 1e-9))
    finite = np.sort(imp_sib[np.isfinite(imp_sib)])
    if len(finite) > allowed:
        below = finite[allowed - 1] if allowed > 0 else -np.inf
        t = float((below + finite[allowed]) / 2) if np.isfinite(below) else float(finite[0] - 1.0)
    else:
        fg = genuine[np.isfinite(genuine)]
        t = float(fg.max() + 1.0) if len(fg) else float(g.threshold)
    g.claim_threshold = t
    imp_all = r_acc[not_own]
    return {
        "false_accept_target": float(target),
        "rule": "confirmed when the claimed machine is the nearest, within outlier_threshold and r <= claim_threshold; "
                "claim_threshold: the loosest r cut with at most floor(n t) sibling impostor claims accepted",
        "claim_threshold": t,
        "genuine_claims": int(genuine.size),
        "false_rejects": int((genuine > t).sum()),
        "false_reject_rate": float((genuine > t).mean()) if genuine.size else None,
        "sibling_impostor_claims": n_imp,
        "sibling_false_accepts": int((imp_sib <= t).sum()),
        "sibling_false_accept_rate": float((imp_sib <= t).mean()) if n_imp else None,
        "impostor_claims": int(imp_all.size),
        "false_accepts": int((imp_all <= t).sum()),
        "false_accept_rate": float((imp_all <= t).mean()) if imp_all.size else None,
    }


def _quantiles(x: np.ndarray) -> dict:
    x = np.asarray(x, float)
    if len(x) == 0:
        return {}
    return {str(q): float(np.quantile(x, q)) for q in (0.0, 0.01, 0.5, 0.99, 1.0)}


# ---------------------------------------------------------------------------------------------
# the file


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "f32le": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(obj: dict, shape: tuple[int, ...] | None = None) -> np.ndarray:
    raw = base64.b64decode(obj["f32le"], validate=True)
    want = tuple(int(s) for s in obj["shape"])
    if len(raw) != 4 * int(np.prod(want)):
        raise ValueError(f"array of shape {list(want)} has {len(raw)} bytes")
    if shape is not None and want != tuple(shape):
        raise ValueError(f"array of shape {list(want)}, expected {list(shape)}")
    return np.frombuffer(raw, dtype="<f4").reshape(want).astype(np.float32)


def to_json(g: Gallery) -> dict:
    if g.threshold is None or g.outlier_threshold is None:
        raise ValueError("the gallery is not calibrated (no thresholds): run calibrate() first")
    for name, v in (("threshold", g.threshold), ("outlier_threshold", g.outlier_threshold)):
        if not np.isfinite(v):
            raise ValueError(f"{name} {v} is not finite")
    if len({m.label for m in g.machines}) != len(g.machines):
        raise ValueError("machine labels are not distinct")
    return {
        "format": FORMAT,
        "schema": SCHEMA,
        "model": {"name": g.model["name"], "sha256": g.model["sha256"]},
        "embedding": {"output": g.embedding["output"], "dim": int(g.embedding["dim"]),
                      "kind": g.embedding["kind"]},
        "version": int(g.version),
        "parent_sha256": g.parent_sha256,
        "created": g.created or _now(),
        "history": g.history,
        "score": g.score,
        "shrinkage": float(g.shrinkage),
        "whitening": encode_array(g.whitening),
        "global_mean": encode_array(g.global_mean),
        "global_whitening": encode_array(g.global_whitening),
        "machines": [_machine_json(m) for m in g.machines],
        "threshold": float(g.threshold),
        "outlier_threshold": float(g.outlier_threshold),
        **({"claim_threshold": float(g.claim_threshold)} if g.claim_threshold is not None else {}),
        "calibration": g.calibration,
    }


def _machine_json(m: Machine) -> dict:
    out = {"label": m.label, "process": m.process, "parts": int(m.parts), "mean": encode_array(m.mean)}
    if m.offset:
        out["offset"] = float(m.offset)
    if m.notes is not None:
        out["notes"] = m.notes
    if m.drift is not None:
        out["drift"] = {"parts": int(m.drift["parts"]), "mean_log": float(m.drift["mean_log"]),
                        "sd_log": float(m.drift["sd_log"])}
    return out


def from_json(obj: dict) -> Gallery:
    if obj.get("format") != FORMAT:
        raise ValueError(f"not an amfp gallery (format {obj.get('format')!r})")
    if obj.get("schema") != SCHEMA:
        raise ValueError(f"gallery schema {obj.get('schema')!r}; this reads schema {SCHEMA}")
    if obj.get("score") != SCORE:
        raise ValueError(f"score {obj.get('score')!r}; this reads {SCORE!r}")
    d = int(obj["embedding"]["dim"])
    machines = [Machine(m["label"], m.get("process"), int(m["parts"]), decode_array(m["mean"], (d,)),
                        float(m.get("offset", 0.0)), m.get("notes"), m.get("drift")) for m in obj["machines"]]
    if len({m.label for m in machines}) != len(machines):
        raise ValueError("machine labels are not distinct")
    return Gallery(model=dict(obj["model"]), embedding=dict(obj["embedding"]), shrinkage=float(obj["shrinkage"]),
                   whitening=decode_array(obj["whitening"], (d, d)),
                   global_mean=decode_array(obj["global_mean"], (d,)),
                   global_whitening=decode_array(obj["global_whitening"], (d, d)), machines=machines,
                   threshold=float(obj["threshold"]), outlier_threshold=float(obj["outlier_threshold"]),
                   claim_threshold=float(obj["claim_threshold"]) if "claim_threshold" in obj else None,
                   calibration=obj.get("calibration", {}), version=int(obj["version"]),
                   parent_sha256=obj.get("parent_sha256"), created=obj.get("created", ""),
                   history=list(obj.get("history", [])), score=obj["score"])


def write_gallery(g: Gallery, path: str | Path) -> Path:
    """Write the gallery atomically: a temporary file beside `path`, flushed, then renamed over it
    (a reader sees the old file or the new one, never half of one)."""
    path = Path(path)
    text = json.dumps(to_json(g), indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_gallery(path: str | Path) -> Gallery:
    return from_json(json.loads(Path(path).read_text()))


def gallery_path(model: str | Path) -> Path:
    """`M.onnx` -> `M.gallery.json` beside it (docs/gallery.md)."""
    model = Path(model)
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(stem + ".gallery.json")


# ---------------------------------------------------------------------------------------------
# embeddings of parts


@dataclass
class Embeddings:
    """Part embeddings: z [n, D] (float64 of the float32 rows' mean), one label, key (first file),
    ROI count and vote leader (or None) per part; `skipped` names parts that gave none."""

    z: np.ndarray
    labels: list[str]
    keys: list[str]
    rois: list[int]
    votes: list[str | None]
    skipped: list[str] = field(default_factory=list)

    def select(self, mask) -> "Embeddings":
        idx = np.nonzero(np.asarray(mask, dtype=bool))[0]
        return Embeddings(self.z[idx], [self.labels[i] for i in idx], [self.keys[i] for i in idx],
                          [self.rois[i] for i in idx], [self.votes[i] for i in idx], list(self.skipped))

    @staticmethod
    def concat(items: list["Embeddings"]) -> "Embeddings":
        items = [e for e in items if len(e.labels)]
        if not items:
            return Embeddings(np.zeros((0, 0)), [], [], [], [], [])
        return Embeddings(np.concatenate([e.z for e in items]), sum((e.labels for e in items), []),
                          sum((e.keys for e in items), []), sum((e.rois for e in items), []),
                          sum((e.votes for e in items), []), sum((e.skipped for e in items), []))


class EmbeddingSource(Protocol):
    description: str

    def embed(self, model: str | Path, parts: list) -> Embeddings: ...


def _combine(parts: list, per_file: dict[str, tuple[np.ndarray, int, str | None]]) -> Embeddings:
    """Per part, the ROI-weighted mean of its files' embeddings (files missing from `per_file`
    were rejected or unreadable; a part with none is skipped)."""
    zs, labels, keys, rois, votes, skipped = [], [], [], [], [], []
    for p in parts:
        got = [per_file[str(f)] for f in p.files if str(f) in per_file]
        if not got:
            skipped.append(p.serial)
            continue
        w = np.array([max(1, r) for _, r, _ in got], dtype=np.float64)
        zs.append((np.stack([e for e, _, _ in got]) * w[:, None]).sum(0) / w.sum())
        labels.append(p.label)
        keys.append(str(p.files[0]))
        rois.append(int(sum(r for _, r, _ in got)))
        votes.append(got[0][2])
    z = np.stack(zs) if zs else np.zeros((0, 0))
    return Embeddings(z, labels, keys, rois, votes, skipped)


class OrtSource:
    """ROIs cut by roi.py (seeded per part), the model's embedding output in onnxruntime."""

    def __init__(self, seed: int = 4242, threads: int = 2, votes: int | None = None, batch: int = 16,
                 cache_mb: float = 4000):
        self.seed, self.threads, self.votes, self.batch, self.cache_mb = seed, threads, votes, batch, cache_mb
        self.description = f"onnxruntime on ROIs cut by amfp_train.roi (seed {seed})"

    def embed(self, model, parts) -> Embeddings:
        from .evaluate import ort_session, read_meta, shared_store, softmax
        from .roi import RoiError, part_rng, sample_rois
        from .store import to_input

        meta = read_meta(model)
        name = meta.get("amfp.embedding_output")
        if not name:
            raise ValueError(f"{model} has no embedding output (python -m amfp_train.embedding)")
        labels = meta["amfp.labels"]
        n = self.votes or meta["amfp.votes"]
        store = shared_store(meta, self.cache_mb)
        sess = ort_session(model, self.threads)
        inp = sess.get_inputs()[0]
        lname = sess.get_outputs()[0].name
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        step = fixed or self.batch
        zs, labs, keys, rois, votes, skipped = [], [], [], [], [], []
        for p in parts:
            try:
                r = sample_rois(store.get(p), n, part_rng(self.seed, p.serial))
            except RoiError as e:
                log.warning("part %s: %s", p.serial, e)
                skipped.append(p.serial)
                continue
            x = to_input(r, meta["amfp.mean"], meta["amfp.std"], meta["amfp.channels"])
            embs, logits = [], []
            for j in range(0, n, step):
                chunk = x[j:j + step]
                pad = (fixed - len(chunk)) if fixed else 0
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
                lo, em = sess.run([lname, name], {inp.name: chunk})
                embs.append(em[:len(em) - pad])
                logits.append(lo[:len(lo) - pad])
            e = np.concatenate(embs).astype(np.float64)
            zs.append(e.mean(0))
            labs.append(p.label)
            keys.append(str(p.files[0]))
            rois.append(len(e))
            votes.append(labels[int(softmax(np.concatenate(logits).astype(np.float64)).sum(0).argmax())])
        z = np.stack(zs) if zs else np.zeros((0, 0))
        return Embeddings(z, labs, keys, rois, votes, skipped)


def identify_help(amfp: str | Path) -> str:
    """`amfp identify --help`: which flags this binary has. Raises OSError or TimeoutExpired."""
    return subprocess.run([str(amfp), "identify", "--help"], capture_output=True, text=True, timeout=60).stdout


def amfp_supports_embeddings(amfp: str | Path) -> bool:
    """Whether `amfp identify` has --with-embedding (older binaries don't)."""
    try:
        return "--with-embedding" in identify_help(amfp)
    except (OSError, subprocess.TimeoutExpired):
        return False


class AmfpSource:
    """`amfp identify --json --with-embedding --early-stop off --no-gallery` on the parts' image
    files, a chunk of paths per run: the daemon's own ROIs and runtime."""

    def __init__(self, amfp: str | Path, chunk: int = 200, threads: int | None = None, seed: int | None = None,
                 extra_args: list[str] | None = None):
        self.amfp, self.chunk, self.threads, self.seed = str(amfp), chunk, threads, seed
        self.extra = list(extra_args or [])
        self.description = f"amfp identify --with-embedding --early-stop off ({Path(self.amfp).name})"
        try:
            help_text = identify_help(self.amfp)
        except OSError as e:
            raise ValueError(f"cannot run {self.amfp}: {e}") from e
        if "--with-embedding" not in help_text:
            raise ValueError(f"{self.amfp} identify has no --with-embedding: rebuild amfp, or use --source onnxruntime")
        self.no_gallery = "--no-gallery" in help_text

    def command(self, model, paths: list[str]) -> list[str]:
        cmd = [self.amfp, "identify", "--model", str(model), "--json", "--with-embedding", "--early-stop", "off"]
        if self.no_gallery:  # a stale gallery beside the model must not get in the way
            cmd.append("--no-gallery")
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        return cmd + self.extra + paths

    def embed(self, model, parts) -> Embeddings:
        files = [str(f) for p in parts for f in p.files]
        real = {os.path.realpath(f): f for f in files}
        per_file: dict[str, tuple[np.ndarray, int, str | None]] = {}
        for i in range(0, len(files), self.chunk):
            paths = files[i:i + self.chunk]
            r = subprocess.run(self.command(model, paths), capture_output=True, text=True)
            if r.returncode not in (0, 1, 3, 4, 5):  # 3/4/5: unknown, rejected, contradicted claims
                raise RuntimeError(f"amfp identify failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
            if r.returncode == 1:
                log.warning("amfp identify could not read some images: %s", r.stderr.strip()[-500:])
            for line in r.stdout.splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                got = record_embedding(rec)
                name = rec["source"]["name"]
                if got is not None:
                    per_file[real.get(os.path.realpath(name), name)] = got
            log.info("amfp identify: %d of %d images", min(i + self.chunk, len(files)), len(files))
        return _combine(parts, per_file)


def record_embedding(rec: dict) -> tuple[np.ndarray, int, str | None] | None:
    """(embedding as float64 of its float32 values, ROIs used, the vote's leader) of one
    `amfp identify --json --with-embedding` line, or None for a rejected image."""
    e = rec.get("embedding")
    if not e:
        return None
    z = np.asarray(e, dtype=np.float32).astype(np.float64)
    used = int((rec.get("rois") or {}).get("used") or 0)
    top = rec.get("top") or []
    vote = top[0]["label"] if top and rec.get("mode", "vote") == "vote" else None
    return z, used, vote


def load_identify_jsonl(lines: str | Path | Iterable[str], data: str | Path, cwd: str | Path | None = None,
                        splits: Iterable[str] | None = None, task: str = "machine") -> Embeddings:
    """Embeddings from `amfp identify --json --with-embedding` output matched to `data`'s
    labels.csv by image path.

    `source.name` is the path as it was given to amfp; it matches a labels.csv file when it
    resolves (relative to `cwd`, default the current directory) to the same file, or else when
    its trailing path components are the file's path relative to the dataset (e.g. run from
    inside the dataset). Lines for images not in the dataset are ignored; parts with no line
    are listed in `skipped`.
    """
    from .dataset import read_dataset

    if isinstance(lines, Path) or (isinstance(lines, str) and "\n" not in lines and Path(lines).is_file()):
        lines = Path(lines).read_text().splitlines()
    elif isinstance(lines, str):  # the output itself
        lines = lines.splitlines()
    ds = read_dataset(data, task)
    parts = [p for p in ds.parts if splits is None or p.split in set(splits)]
    by_real = {os.path.realpath(f): str(f) for p in parts for f in p.files}
    root = Path(data)
    by_rel = {tuple(Path(f).relative_to(root).parts): str(f) for p in parts for f in p.files}
    base = Path(cwd) if cwd else Path.cwd()
    per_file: dict[str, tuple[np.ndarray, int, str | None]] = {}
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        name = (rec.get("source") or {}).get("name")
        if not name:
            continue
        key = by_real.get(os.path.realpath(base / name))
        if key is None:
            comps = Path(name).parts
            for k in range(1, len(comps) + 1):
                key = by_rel.get(tuple(comps[-k:]))
                if key is not None:
                    break
        if key is None:
            continue
        got = record_embedding(rec)
        if got is not None:
            per_file[key] = got
    return _combine(parts, per_file)


def dataset_parts(dirs: list[str | Path], splits: Iterable[str] | None = None, task: str = "machine") -> list:
    """Parts of one or more datasets (labels.csv), of the given splits (None: all)."""
    from .dataset import read_dataset

    out = []
    for d in dirs:
        ds = read_dataset(d, task)
        out += [p for p in ds.parts if splits is None or p.split in set(splits)]
    return out


def _splits(s: str | None):
    if not s or s == "all":
        return None
    return [x.strip() for x in s.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------
# the whole step


def model_ref(model: str | Path) -> tuple[dict, dict, dict]:
    """({'name', 'sha256'}, embedding {'output', 'dim', 'kind'}, the model's metadata)."""
    from .dataset import sha256_file
    from .evaluate import read_meta

    meta = read_meta(model)
    try:
        emb = {"output": meta["amfp.embedding_output"], "dim": int(meta["amfp.embedding_dim"]),
               "kind": meta["amfp.embedding_kind"]}
    except KeyError as e:
        raise ValueError(f"{model} has no amfp.embedding_* metadata: add the output first "
                         "(python -m amfp_train.embedding)") from e
    return {"name": meta.get("amfp.name", Path(model).stem), "sha256": sha256_file(Path(model))}, emb, meta


def build_gallery(model: str | Path, fit: Embeddings, calib: Embeddings, out: str | Path | None = None,
                  target: float = DEFAULT_FALSE_REJECT, shrinkage: float | str = DEFAULT_SHRINKAGE,
                  exclude: Iterable[str] = (), data: str = "", why: str = "fitted from known parts",
                  processes: dict[str, str] | None = None, extra: dict | None = None) -> Gallery:
    """Fit on `fit` (without `exclude`d labels), calibrate on `calib`, write `out` (default: beside
    the model). Returns the gallery."""
    ref, emb, meta = model_ref(model)
    both = set(fit.keys) & set(calib.keys)
    if both:
        raise ValueError(f"{len(both)} parts are in both the fit and the calibration set, e.g. {sorted(both)[:3]}")
    exclude = set(exclude)
    fit = fit.select([lab not in exclude for lab in fit.labels])
    if len(fit.labels) == 0:
        raise ValueError("no fit parts left")
    if fit.z.shape[1] != emb["dim"]:
        raise ValueError(f"fit embeddings have {fit.z.shape[1]} values, the model's output {emb['dim']}")
    lam_scores = None
    if shrinkage == "auto":
        shrinkage, lam_scores = choose_shrinkage(fit.z, fit.labels)
        log.info("shrinkage %.3g chosen on the fit parts (cross-validated log-likelihood %s)", shrinkage, lam_scores)
    lp = dict(meta.get("amfp.label_process", {}))
    lp.update({k: v for k, v in (processes or {}).items() if k not in lp})
    g = fit_gallery(fit.z, fit.labels, float(shrinkage), lp, ref, emb)
    # calibration parts of excluded machines are held-out parts (measured, never fitted)
    rois = int(np.median(calib.rois)) if calib.rois else None
    ext = {"fit_parts": len(fit.labels)}
    for what, e in (("fit", fit), ("calibration", calib)):
        if e.skipped:  # rejected by amfp (no embedding): say so, they are not in the counts
            log.warning("%d %s parts gave no embedding (rejected images), e.g. %s", len(e.skipped), what, e.skipped[:3])
            ext[f"{what}_parts_without_embedding"] = len(e.skipped)
    if lam_scores is not None:
        ext["shrinkage_cv_loglik"] = {str(k): v for k, v in lam_scores.items()}
    if extra:
        ext.update(extra)
    calibrate(g, calib.z, calib.labels, target, rois, data, calib.votes, ext)
    when = _now()
    g.created = when
    g.history = [{"version": 1, "action": "fit", "time": when, "by": BY, "why": why, "labels": g.labels}]
    if out is None:
        out = gallery_path(model)
    write_gallery(g, out)
    c = g.calibration
    log.info("gallery %s: %d machines, D=%d, λ=%.3g; threshold %.3f, outlier %.3f; calibration: %d/%d known "
             "parts rejected (target %.3f), %d misnamed%s", out, len(g.machines), g.dim, g.shrinkage, g.threshold,
             g.outlier_threshold, c["false_rejects"], c["known_parts"], target, c["misnamed"],
             f", held-out caught {c['held_out']['unknown_rate']:.3f}" if "held_out" in c else "")
    return g


def pick_per_label(parts: list, n: int | None, seed: int = 0) -> list:
    """At most `n` parts per label, drawn at random with a fixed seed (all when n is None or 0),
    in the parts' own order."""
    if not n:
        return list(parts)
    by: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(parts):
        by[p.label].append(i)
    rng = np.random.default_rng(seed)
    keep = set()
    for lab in sorted(by):
        idx = by[lab]
        keep.update(idx if len(idx) <= n else rng.choice(idx, n, replace=False).tolist())
    return [p for i, p in enumerate(parts) if i in keep]


def fit_for_models(models: list[str | Path], data: str | Path, exclude: Iterable[str] = (), amfp: str | None = None,
                   source: str = "auto", fit_parts_per_label: int | None = None,
                   target: float = DEFAULT_FALSE_REJECT, shrinkage: float | str = DEFAULT_SHRINKAGE,
                   threads: int = 2, seed: int = 4242) -> dict:
    """The reproduce step: a gallery beside each model, fitted on the training split's parts of
    the known machines (at most `fit_parts_per_label` each) and calibrated on the validation
    split (parts of `exclude`d machines there are the held-out measurement). Returns a summary
    per model."""
    from .dataset import read_dataset

    exclude = set(exclude)
    ds = read_dataset(data)
    fit_parts = pick_per_label([p for p in ds.split("train") if p.label not in exclude], fit_parts_per_label)
    cal_parts = ds.split("val")
    src = make_source(source, amfp, threads, seed)
    report = {}
    for m in models:
        fit = src.embed(m, fit_parts)
        cal = src.embed(m, cal_parts)
        desc = (f"{ds.root}: fit on the train split ({len(fit.labels)} parts"
                f"{f', at most {fit_parts_per_label} per machine' if fit_parts_per_label else ''}), calibrated on "
                f"the val split; embeddings: {src.description}")
        g = build_gallery(m, fit, cal, None, target, shrinkage, exclude, desc,
                          why=f"reproduce: fitted with the model on {ds.root.name}")
        path = gallery_path(m)
        c = g.calibration
        report[str(m)] = {"path": str(path), "machines": len(g.machines), "shrinkage": g.shrinkage,
                          "threshold": g.threshold, "outlier_threshold": g.outlier_threshold,
                          **{k: c.get(k) for k in ("known_parts", "false_rejects", "false_reject_rate",
                                                   "misnamed", "vote_disagreements", "held_out", "fit_parts")},
                          "embeddings": src.description}
    return report


def make_source(kind: str, amfp: str | None, threads: int = 2, seed: int = 4242, chunk: int = 200) -> EmbeddingSource:
    if kind == "auto":
        kind = "amfp" if amfp and amfp_supports_embeddings(amfp) else "onnxruntime"
        if amfp and kind == "onnxruntime":
            log.warning("%s is missing or has no `identify --with-embedding`: embeddings from onnxruntime instead",
                        amfp)
    if kind == "amfp":
        if not amfp:
            raise ValueError("--source amfp needs --amfp")
        return AmfpSource(amfp, chunk=chunk, seed=seed)
    if kind == "onnxruntime":
        return OrtSource(seed=seed, threads=threads)
    raise ValueError(f"source {kind!r}: amfp, onnxruntime or auto")


def main(argv=None) -> Gallery:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="ONNX model with an embedding output")
    ap.add_argument("--amfp", help="amfp binary (embeddings by `amfp identify --with-embedding`)")
    ap.add_argument("--fit", nargs="+", required=True, metavar="DIR", help="datasets whose parts fit the gallery")
    ap.add_argument("--calibrate", nargs="+", required=True, metavar="DIR",
                    help="datasets of other known parts that set the thresholds (>= 1000 parts recommended)")
    ap.add_argument("--out", help="gallery file (default: beside the model, .onnx -> .gallery.json)")
    ap.add_argument("--false-reject", type=float, default=DEFAULT_FALSE_REJECT,
                    help="target share of known calibration parts failing either test (default 0.01)")
    ap.add_argument("--shrinkage", default=str(DEFAULT_SHRINKAGE),
                    help="covariance shrinkage λ in [0, 1), or 'auto' (cross-validated on the fit parts)")
    ap.add_argument("--exclude", default="", help="comma-separated labels kept out of the gallery "
                    "(their calibration parts are measured as held-out machines)")
    ap.add_argument("--fit-splits", default="all", help="splits of the --fit datasets (e.g. train; default all)")
    ap.add_argument("--calibrate-splits", default="all", help="splits of the --calibrate datasets (default all)")
    ap.add_argument("--source", default="auto", choices=["auto", "amfp", "onnxruntime"],
                    help="who computes embeddings (auto: amfp when --amfp supports it)")
    ap.add_argument("--seed", type=int, default=4242, help="ROI seed")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads (--source onnxruntime)")
    ap.add_argument("--chunk", type=int, default=200, help="image paths per `amfp identify` run")
    ap.add_argument("--why", default="fitted from known parts", help="the history entry's reason")
    ap.add_argument("--save-embeddings", help="also write the part embeddings (.npz) for later study")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    src = make_source(a.source, a.amfp, a.threads, a.seed, a.chunk)
    fit = src.embed(a.model, dataset_parts(a.fit, _splits(a.fit_splits)))
    cal = src.embed(a.model, dataset_parts(a.calibrate, _splits(a.calibrate_splits)))
    if a.save_embeddings:
        np.savez_compressed(a.save_embeddings, fit_z=fit.z, fit_labels=np.array(fit.labels),
                            fit_keys=np.array(fit.keys), cal_z=cal.z, cal_labels=np.array(cal.labels),
                            cal_keys=np.array(cal.keys))
    data = (f"fit: {', '.join(a.fit)} ({a.fit_splits}); calibration: {', '.join(a.calibrate)} "
            f"({a.calibrate_splits}); embeddings: {src.description}")
    shrink_arg = a.shrinkage if a.shrinkage == "auto" else float(a.shrinkage)
    g = build_gallery(a.model, fit, cal, a.out, a.false_reject, shrink_arg,
                      [x.strip() for x in a.exclude.split(",") if x.strip()], data, a.why)
    print(json.dumps({"out": str(a.out or gallery_path(a.model)), "machines": len(g.machines), "dim": g.dim,
                      "shrinkage": g.shrinkage, "threshold": g.threshold, "outlier_threshold": g.outlier_threshold,
                      "calibration": g.calibration}, indent=1))
    return g


if __name__ == "__main__":
    main()
