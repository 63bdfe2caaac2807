"""Part-level evaluation: sum SoftMax over N random ROIs per part, as the paper and the daemon do.

Each part gets `votes` (16) ROIs drawn with a generator seeded by (seed,
serial), so the same ROIs are used for the PyTorch model, the f32 ONNX and
the int8 ONNX, and for any order of parts. Accuracy for N = 1, 2, 4, 8, 16
uses the first N of those ROIs, so the curve shows what more votes buy.

Parts whose label the model does not know (machines held out of training)
are the open-set test: with the model's ``amfp.unknown_threshold`` a part is
called unknown when the top class's share of the summed SoftMax (its vote
fraction) is below the threshold.

CLI::

    python -m amfp_train.evaluate --model build/model/amfp.onnx \
        [--int8 build/model/amfp.int8.onnx] --data DIR --split test --out build/model/eval
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import Part, read_dataset
from .roi import RoiError, part_rng, sample_rois
from .store import PartStore, to_input

log = logging.getLogger(__name__)

NS = (1, 2, 4, 8, 16)
Predict = Callable[[np.ndarray], np.ndarray]  # NCHW float32 -> logits [n, C]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def eval_rois(part: Part, store: PartStore, n: int, seed: int) -> np.ndarray:
    """The part's `n` evaluation ROIs (no augmentation), the same on every call."""
    return sample_rois(store.get(part), n, part_rng(seed, part.serial))


def part_probs(predict: Predict, parts: list[Part], store: PartStore, n: int, seed: int,
               mean: float, std: float, channels: int, batch: int = 16) -> np.ndarray:
    """SoftMax outputs [parts, n, classes] for each part's evaluation ROIs.

    Parts too small for one ROI are skipped with a warning and get NaN rows.
    """
    if not parts:
        return np.zeros((0, n, 0))
    res = None
    for i, p in enumerate(parts):
        try:
            rois = eval_rois(p, store, n, seed)
        except RoiError as e:
            log.warning("part %s: %s", p.serial, e)
            continue
        x = to_input(rois, mean, std, channels)
        logits = np.concatenate([predict(x[j:j + batch]) for j in range(0, n, batch)])
        pr = softmax(logits.astype(np.float64))
        if res is None:
            res = np.full((len(parts), n, pr.shape[1]), np.nan)
        res[i] = pr
    if res is None:
        raise RoiError("no part could be evaluated")
    return res


def vote_scores(probs: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, vote fraction of that class) per part using the first n ROIs."""
    s = probs[:, :n].sum(axis=1)
    frac = s / s.sum(axis=1, keepdims=True)
    return frac.argmax(1), frac.max(1)


def metrics(probs: np.ndarray, parts: list[Part], labels: list[str], label_process: dict[str, str],
            ns=NS) -> dict:
    """Accuracy vs number of ROIs, per process, per class, and the confusion matrix (known parts)."""
    idx = {lab: i for i, lab in enumerate(labels)}
    ok = [i for i, p in enumerate(parts) if p.label in idx and not np.isnan(probs[i]).any()]
    if not ok:
        return {"parts": 0}
    pr = probs[ok]
    y = np.array([idx[parts[i].label] for i in ok])
    nmax = pr.shape[1]
    out: dict = {"parts": len(ok), "rois_per_part": nmax}
    out["accuracy_vs_rois"] = {str(k): float((vote_scores(pr, k)[0] == y).mean())
                               for k in ns if k <= nmax}
    pred, _ = vote_scores(pr)
    out["accuracy"] = float((pred == y).mean())
    out["roi_accuracy"] = float((pr.argmax(2) == y[:, None]).mean())
    per_proc: dict[str, list[bool]] = defaultdict(list)
    proc_ok: dict[str, list[bool]] = defaultdict(list)
    for t, q in zip(y, pred):
        pt, pq = label_process.get(labels[t], "unknown"), label_process.get(labels[q], "unknown")
        per_proc[pt].append(bool(t == q))
        proc_ok[pt].append(pt == pq)
    out["accuracy_per_process"] = {k: float(np.mean(v)) for k, v in sorted(per_proc.items())}
    # imaging modes (scanner, microscope): a model must judge each mode it will see in the field
    per_mode: dict[str, list[bool]] = defaultdict(list)
    for i, t, q in zip(ok, y, pred):
        per_mode[parts[i].mode].append(bool(t == q))
    out["accuracy_per_mode"] = {k: float(np.mean(v)) for k, v in sorted(per_mode.items())}
    out["parts_per_mode"] = {k: len(v) for k, v in sorted(per_mode.items())}
    out["process_accuracy"] = float(np.mean([x for v in proc_ok.values() for x in v]))
    out["process_accuracy_per_process"] = {k: float(np.mean(v)) for k, v in sorted(proc_ok.items())}
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for t, q in zip(y, pred):
        cm[t, q] += 1
    out["per_class_accuracy"] = {labels[c]: (float(cm[c, c] / cm[c].sum()) if cm[c].sum() else None)
                                 for c in range(len(labels))}
    out["confusion"] = cm.tolist()
    return out


def torch_predictor(model, device: str = "cpu") -> Predict:
    import torch

    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return predict


def ort_session(path: str | Path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_predictor(path: str | Path, threads: int = 2) -> Predict:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) else None

    def predict(x: np.ndarray) -> np.ndarray:
        if fixed is None or len(x) == fixed:
            return sess.run(None, {name: x})[0]
        # a fixed-batch model: pad the last batch
        out = []
        for j in range(0, len(x), fixed):
            chunk = x[j:j + fixed]
            pad = fixed - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            out.append(sess.run(None, {name: chunk})[0][: fixed - pad])
        return np.concatenate(out)

    return predict


def read_meta(path: str | Path) -> dict:
    """The model's amfp.* metadata, JSON values decoded, numbers as numbers."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    out = dict(meta)
    for k in ("amfp.labels", "amfp.label_process"):
        if k in meta:
            out[k] = json.loads(meta[k])
    for k in ("amfp.pixel_size_um", "amfp.mean", "amfp.std", "amfp.min_foreground",
              "amfp.unknown_threshold"):
        if k in meta:
            out[k] = float(meta[k])
    for k in ("amfp.roi_px", "amfp.channels", "amfp.votes", "amfp.schema"):
        if k in meta:
            out[k] = int(meta[k])
    return out


_STORES: dict = {}


def shared_store(meta: dict, cache_mb: float = 8000) -> PartStore:
    """One decoded-parts cache per (pixel size, ROI, min_fg), shared by f32/int8 evaluation and
    calibration in one process: decoding the scans costs more than running the models."""
    key = (meta["amfp.pixel_size_um"], meta["amfp.roi_px"], meta["amfp.min_foreground"])
    if key not in _STORES:
        _STORES.clear()
        _STORES[key] = PartStore(*key, cache_mb)
    return _STORES[key]


def confusion_png(cm: np.ndarray | list, labels: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with counts (rows: true, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=float)
    rown = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    im = ax.imshow(rown, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if rown[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_model(model_path: str | Path, data: str | Path, split: str = "test", seed: int = 1234,
                   votes: int | None = None, threads: int = 2, cache_mb: float = 8000,
                   max_parts: int | None = None, ds=None, store: PartStore | None = None
                   ) -> tuple[dict, np.ndarray, list[Part]]:
    """Evaluate an ONNX model on a dataset split: metrics on known parts, open set on unknown ones."""
    from .calibrate import open_set_rates

    meta = read_meta(model_path)
    labels, lp = meta["amfp.labels"], meta["amfp.label_process"]
    task = meta.get("amfp.task", "machine")
    ds = ds or read_dataset(data, task)
    parts = ds.split(split)
    if max_parts:
        parts = parts[:max_parts]
    store = store or shared_store(meta, cache_mb)
    n = votes or meta["amfp.votes"]
    t0 = time.time()
    probs = part_probs(ort_predictor(model_path, threads), parts, store, n, seed, meta["amfp.mean"],
                       meta["amfp.std"], meta["amfp.channels"])
    rep = metrics(probs, parts, labels, lp)
    rep["model"] = str(model_path)
    rep["split"] = split
    rep["seconds"] = round(time.time() - t0, 1)
    known = np.array([p.label in labels for p in parts])
    valid = ~np.isnan(probs).any(axis=(1, 2))
    _, score = vote_scores(np.nan_to_num(probs))
    thr = meta.get("amfp.unknown_threshold", 0.0)
    rep["unknown_threshold"] = thr
    rep["open_set"] = open_set_rates(score[known & valid], score[~known & valid], thr)
    rep["open_set"]["unknown_labels"] = sorted({p.label for p in parts if p.label not in labels})
    # accuracy of known parts counting a false reject as a miss (what a user sees)
    pred, _ = vote_scores(np.nan_to_num(probs))
    idx = {lab: i for i, lab in enumerate(labels)}
    kk = [i for i in range(len(parts)) if known[i] and valid[i]]
    if kk:
        rep["accuracy_with_rejects"] = float(np.mean(
            [(pred[i] == idx[parts[i].label]) and score[i] >= thr for i in kk]))
    return rep, probs, parts


def model_card(f32: dict, int8: dict | None, meta: dict, dataset_desc: str) -> str:
    """A markdown fragment for models/README or a release note."""
    L = []
    L.append(f"### {meta.get('amfp.name', 'model')} ({meta.get('amfp.task')})\n")
    L.append("**These numbers are measured on simulated parts (`amfp synth`), not on real scans. "
             "They say that the pipeline learns what the simulator puts in; they say nothing about "
             "real-world accuracy, which needs real scans of real machines.**\n")
    L.append(f"- Trained on: `{meta.get('amfp.trained_on')}`")
    L.append(f"- Evaluated on: {dataset_desc}, split `{f32.get('split')}`, {f32.get('parts')} known parts, "
             f"{f32.get('rois_per_part')} ROIs per part")
    L.append(f"- Input: {meta.get('amfp.roi_px')} px ROIs at {meta.get('amfp.pixel_size_um')} µm/px "
             f"({meta.get('amfp.roi_px') * meta.get('amfp.pixel_size_um') / 1000:.2f} mm), "
             f"min foreground {meta.get('amfp.min_foreground')}, {len(meta.get('amfp.labels', []))} classes\n")
    L.append("| ROIs voted | " + " | ".join(f32["accuracy_vs_rois"]) + " |")
    L.append("|---|" + "---|" * len(f32["accuracy_vs_rois"]))
    L.append("| f32 accuracy | " + " | ".join(f"{v:.3f}" for v in f32["accuracy_vs_rois"].values()) + " |")
    if int8:
        L.append("| int8 accuracy | " + " | ".join(f"{v:.3f}" for v in int8["accuracy_vs_rois"].values()) + " |")
    L.append("")
    L.append("| process | machine accuracy (f32) | " + ("machine accuracy (int8) | " if int8 else "")
             + "process accuracy (f32) |")
    L.append("|---|---|" + ("---|" if int8 else "") + "---|")
    for proc, acc in f32["accuracy_per_process"].items():
        row = f"| {proc} | {acc:.3f} | "
        if int8:
            row += f"{int8['accuracy_per_process'].get(proc, float('nan')):.3f} | "
        row += f"{f32['process_accuracy_per_process'].get(proc, float('nan')):.3f} |"
        L.append(row)
    L.append("")
    if len(f32.get("accuracy_per_mode", {})) > 1:
        L.append("| imaging mode | parts | machine accuracy (f32) | " + ("machine accuracy (int8) |" if int8 else ""))
        L.append("|---|---|---|" + ("---|" if int8 else ""))
        for mode, acc in f32["accuracy_per_mode"].items():
            row = f"| {mode} | {f32['parts_per_mode'][mode]} | {acc:.3f} | "
            if int8:
                row += f"{int8.get('accuracy_per_mode', {}).get(mode, float('nan')):.3f} |"
            L.append(row)
        L.append("")
    os_ = f32.get("open_set", {})
    if os_.get("unknown_parts"):
        L.append(f"- Open set: threshold {f32['unknown_threshold']:.3f} on the top class's vote fraction; "
                 f"held-out machines {', '.join(os_.get('unknown_labels', []))}: "
                 f"unknown detection rate {os_['unknown_detection_rate']:.3f} "
                 f"({os_['unknown_parts']} parts of unknown machines), false reject rate {os_['false_reject_rate']:.3f} "
                 f"({os_['known_parts']} known parts).")
        if int8 and int8.get("open_set", {}).get("unknown_parts"):
            o8 = int8["open_set"]
            L.append(f"- int8 open set: threshold {int8['unknown_threshold']:.3f}, unknown detection "
                     f"{o8['unknown_detection_rate']:.3f}, false reject {o8['false_reject_rate']:.3f}.")
    else:
        L.append(f"- Open set: threshold {f32.get('unknown_threshold', 0):.3f}; false reject rate "
                 f"{os_.get('false_reject_rate', 0):.3f}; no held-out machine in this split.")
    if int8 and "agreement" in int8:
        L.append(f"- int8 vs f32: ROI argmax agreement {int8['agreement']['roi_argmax']:.4f}, "
                 f"part verdict agreement {int8['agreement']['part']:.4f}.")
    return "\n".join(L) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="f32 ONNX model with amfp metadata")
    ap.add_argument("--int8", help="int8 ONNX model to compare")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--votes", type=int, default=None, help="ROIs per part (default: amfp.votes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-parts", type=int, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run_evaluation(a.model, a.int8, a.data, a.split, a.out, a.seed, a.votes, a.threads, a.max_parts)


def run_evaluation(model, int8, data, split, out, seed=1234, votes=None, threads=2, max_parts=None) -> dict:
    """Evaluate f32 (and int8), write report.json, confusion PNG(s), model_card.md; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_meta(model)
    ds = read_dataset(data, meta.get("amfp.task", "machine"))
    f32, p32, parts = evaluate_model(model, data, split, seed, votes, threads, max_parts=max_parts, ds=ds)
    log.info("f32: accuracy %.4f %s", f32.get("accuracy", float("nan")), f32.get("accuracy_vs_rois"))
    report = {"f32": f32}
    confusion_png(f32["confusion"], meta["amfp.labels"], out / "confusion_f32.png",
                  f"{meta['amfp.name']} f32, {split} (simulated parts)")
    r8 = None
    if int8:
        r8, p8, _ = evaluate_model(int8, data, split, seed, votes, threads, max_parts=max_parts, ds=ds)
        valid = ~np.isnan(p32).any(axis=(1, 2))
        r8["agreement"] = {
            "roi_argmax": float((p32[valid].argmax(2) == p8[valid].argmax(2)).mean()),
            "part": float((vote_scores(p32[valid])[0] == vote_scores(p8[valid])[0]).mean()),
            "max_abs_prob_diff": float(np.abs(p32[valid] - p8[valid]).max()),
        }
        log.info("int8: accuracy %.4f, agreement %s", r8.get("accuracy", float("nan")), r8["agreement"])
        report["int8"] = r8
        confusion_png(r8["confusion"], meta["amfp.labels"], out / "confusion_int8.png",
                      f"{meta['amfp.name']} int8, {split} (simulated parts)")
    report["dataset"] = {"root": str(ds.root), "sha256": ds.sha256, "layout": ds.layout}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "model_card.md").write_text(model_card(f32, r8, meta, f"`{ds.root}`"))
    return report


if __name__ == "__main__":
    main()
