"""Training: the paper's recipe, sized for the backbone and the hardware at hand.

Recipe (Bimrose et al. 2025, adapted; docs/training.md gives the reasons):
random ROIs on the part (Otsu mask, min_foreground), random flips and 90°
turns, normalisation by mean/std of training ROIs (stored in the model),
classes sampled evenly, LAMB or AdamW with a short warm-up and exponential
learning-rate decay, split by part, model selection by part-level accuracy
on the validation parts (SoftMax summed over `votes` ROIs).

CLI (CPU, edge net)::

    python -m amfp_train.train --data DIR --out build/model --task machine \
        --pixel-um 21.2 --roi 96 --epochs 12 --steps 200 --batch 48

GPU, the paper's backbone::

    python -m amfp_train.train --data DIR --out build/effnet --arch efficientnetv2 \
        --pixel-um 5.3 --roi 448 --channels 3 --optimizer lamb --lr 2e-3 --batch 32 --workers 8

The output is `checkpoint.pt` (weights + everything the ONNX metadata needs)
and `train_log.json`; `amfp_train.export` turns it into the ONNX model.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .dataset import Dataset, natural_key, read_dataset
from .evaluate import metrics, part_probs, torch_predictor
from .models import EDGE_DEFAULT, build_model, flops_per_roi
from .store import BalancedRois, PartStore, norm_stats

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    task: str = "machine"
    arch: str = "edge"
    widths: list[int] = field(default_factory=lambda: list(EDGE_DEFAULT["widths"]))
    depths: list[int] = field(default_factory=lambda: list(EDGE_DEFAULT["depths"]))
    pool: str = "avg"
    stem_stride: int = 1
    dropout: float = 0.1
    channels: int = 1
    pretrained: bool = False
    pixel_um: float = 21.2
    roi: int = 96
    min_fg: float = 0.9
    votes: int = 16
    batch: int = 48
    rois_per_part: int = 1
    epochs: int = 12
    steps: int = 200
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.02
    lr_decay: float = 0.8  # per epoch (exponential)
    warmup_steps: int = 100
    label_smoothing: float = 0.0
    holdout: list[str] = field(default_factory=list)
    holdout_column: str = ""  # default: the task column
    seed: int = 7
    name: str = "amfp-model"
    source: str = ""  # prefix of amfp.trained_on, e.g. synth:seed=7
    val_parts: int = 0  # 0: all validation parts
    time_budget_min: float = 0.0  # stop early (after a whole epoch) past this; 0 = none
    cache_mb: float = 8000
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = ""  # "", cpu, cuda
    mask: str = "auto"  # auto (mode column / Otsu separability), otsu, full
    # NHWC activations: oneDNN's CPU convolutions run them faster than NCHW (docs/training.md,
    # "Training speed"); the weights and the exported graph are the same either way
    channels_last: bool = True
    # progressive crops (EfficientNetV2's progressive learning, fast.ai's progressive resizing): the
    # first `warm_epochs` train on centre crops of `warm_roi` px of each ROI, which cost
    # (warm_roi/roi)^2 of a full ROI; the rest on whole ROIs. 0 = whole ROIs throughout.
    warm_roi: int = 0
    warm_epochs: int = 0
    # validate from this epoch on (1-based; 0 = every epoch): under an exponential LR decay the best
    # epoch is a late one, and part-level validation costs ~20 % of a CPU epoch
    val_from_epoch: int = 0


def select_device(pref: str = "") -> str:
    if pref:
        return pref
    return "cuda" if torch.cuda.is_available() else "cpu"


def known_labels(ds: Dataset, cfg: TrainConfig) -> tuple[list[str], list]:
    """Labels the model learns and its training parts, with held-out machines removed."""
    col = cfg.holdout_column or cfg.task
    hold = set(cfg.holdout)

    def held(p):
        v = p.label if col == cfg.task else p.meta.get(col, "")
        return v in hold

    if hold:
        missing = hold - {(p.label if col == cfg.task else p.meta.get(col, "")) for p in ds.parts}
        if missing:
            raise ValueError(f"held-out values not in column {col!r}: {sorted(missing)}")
    train = [p for p in ds.split("train") if not held(p)]
    labels = sorted({p.label for p in train}, key=natural_key)
    return labels, train


def make_optimizer(name: str, params, lr: float, wd: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "lamb":
        try:
            from timm.optim import Lamb
        except ImportError as e:  # pragma: no cover
            raise RuntimeError("--optimizer lamb needs timm") from e
        return Lamb(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    raise ValueError(f"optimizer {name!r}: adamw, lamb or sgd")


def lr_factor(step: int, steps_per_epoch: int, warmup: int, decay: float) -> float:
    """Linear warm-up, then exponential decay by `decay` per epoch (smoothly, per step)."""
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return w * decay ** (step / steps_per_epoch)


def trained_on(ds: Dataset, cfg: TrainConfig, n_train_parts: int) -> str:
    src = cfg.source or f"{ds.layout}:{Path(ds.root).name}"
    return f"{src};parts={n_train_parts};sha256={ds.sha256}"


def train(cfg: TrainConfig) -> Path:
    """Train, keep the best epoch by part-level validation accuracy; returns checkpoint.pt."""
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = read_dataset(cfg.data, cfg.task, cfg.seed)
    labels, train_parts = known_labels(ds, cfg)
    if len(labels) < 2:
        raise ValueError(f"need at least 2 classes to train, got {labels}")
    lab_set = set(labels)
    val_parts = [p for p in ds.split("val") if p.label in lab_set]
    if cfg.val_parts and len(val_parts) > cfg.val_parts:
        rng = np.random.default_rng(cfg.seed)
        val_parts = [val_parts[i] for i in sorted(rng.choice(len(val_parts), cfg.val_parts, replace=False))]
    label_process = ds.label_process(labels)
    log.info("task %s: %d classes, %d train parts, %d val parts, device %s",
             cfg.task, len(labels), len(train_parts), len(val_parts), device)

    store = PartStore(cfg.pixel_um, cfg.roi, cfg.min_fg, cfg.cache_mb, cfg.mask)
    t0 = time.time()
    # decode once up front: errors surface now, and the training timing is clean
    store.preload(train_parts + val_parts, cfg.threads or torch.get_num_threads())
    log.info("loaded %d parts in %.1fs (%.0f MiB cached)", len(train_parts) + len(val_parts),
             time.time() - t0, store.nbytes / 2**20)
    mean, std = norm_stats(train_parts, store, cfg.seed)
    log.info("normalisation: mean %.5f std %.5f", mean, std)

    kw = dict(widths=cfg.widths, depths=cfg.depths, pool=cfg.pool, dropout=cfg.dropout,
              stem_stride=cfg.stem_stride) if cfg.arch == "edge" else {}
    model = build_model(cfg.arch, len(labels), cfg.channels, cfg.pretrained, **kw).to(device)
    gflop = flops_per_roi(model.cpu(), cfg.channels, cfg.roi) / 1e9
    model.to(device)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    log.info("model %s: %.2fM params, %.3f GFLOP per ROI", cfg.arch,
             sum(p.numel() for p in model.parameters()) / 1e6, gflop)

    data = BalancedRois(train_parts, labels, cfg.pixel_um, cfg.roi, cfg.min_fg, cfg.batch, mean, std,
                        cfg.channels, cfg.seed, cfg.cache_mb, cfg.mask, cfg.rois_per_part,
                        store=store if cfg.workers == 0 else None)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=cfg.workers,
                                         pin_memory=device == "cuda",
                                         persistent_workers=cfg.workers > 0)
    batches = iter(loader)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.lr_decay))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp = device == "cuda"

    history = []
    best_acc, best_epoch = -float("inf"), -1
    ckpt = out / "checkpoint.pt"
    meta = {
        "name": cfg.name, "task": cfg.task, "labels": labels, "label_process": label_process,
        "pixel_size_um": cfg.pixel_um, "roi_px": cfg.roi, "channels": cfg.channels,
        "mean": mean, "std": std, "min_foreground": cfg.min_fg, "votes": cfg.votes,
        "unknown_threshold": 0.0, "trained_on": trained_on(ds, cfg, len(train_parts)),
    }
    if cfg.warm_epochs and not 0 < cfg.warm_roi <= cfg.roi:
        raise ValueError(f"warm_roi {cfg.warm_roi} must be in 1..roi ({cfg.roi})")
    step = 0
    for epoch in range(cfg.epochs):
        crop = cfg.warm_roi if epoch < cfg.warm_epochs else cfg.roi
        off = (cfg.roi - crop) // 2
        model.train()
        t_ep = time.time()
        losses, correct, seen = [], 0, 0
        for _ in range(cfg.steps):
            x, y = next(batches)
            if crop != cfg.roi:  # a centre crop of an ROI on the part is on the part too
                x = x[..., off:off + crop, off:off + crop]
            x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        train_s = time.time() - t_ep
        ep = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "loss_first": losses[0],
              "loss_last10": float(np.mean(losses[-10:])), "train_roi_acc": correct / seen,
              "lr": sched.get_last_lr()[0], "train_s": round(train_s, 1),
              "rois_per_s": round(seen / train_s, 1), "crop": crop}
        if val_parts and epoch + 1 >= cfg.val_from_epoch:
            model.eval()
            t_v = time.time()
            pr = part_probs(torch_predictor(model, device), val_parts, store, cfg.votes, cfg.seed + 1,
                            mean, std, cfg.channels, batch=64)
            m = metrics(pr, val_parts, labels, label_process)
            ep.update(val_acc=m["accuracy"], val_roi_acc=m["roi_accuracy"],
                      val_acc_vs_rois=m["accuracy_vs_rois"], val_per_process=m["accuracy_per_process"],
                      val_s=round(time.time() - t_v, 1))
        history.append(ep)
        log.info("epoch %d: %s", epoch + 1, json.dumps({k: v for k, v in ep.items() if k != "val_per_process"}))
        if "val_acc" in ep or not val_parts:
            score = ep.get("val_acc", -ep["loss"])
            keep = score > best_acc
            best_acc = max(best_acc, score)
        else:  # not validated yet (--val-from-epoch): the latest epoch stands in until one is
            keep = best_acc == -float("inf")
        if keep:
            best_epoch = epoch + 1
            torch.save({"state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}, "arch": cfg.arch, "model_kw": kw,
                        "meta": meta, "config": asdict(cfg), "epoch": epoch + 1}, ckpt)
        elapsed = (time.time() - t_start) / 60
        if cfg.time_budget_min and elapsed > cfg.time_budget_min and epoch + 1 < cfg.epochs:
            log.warning("time budget %.1f min reached after epoch %d", cfg.time_budget_min, epoch + 1)
            break
    summary = {"config": asdict(cfg), "meta": meta, "history": history, "best_epoch": best_epoch,
               "best_val_acc": best_acc, "gflop_per_roi": gflop, "device": device,
               "minutes": round((time.time() - t_start) / 60, 2),
               "train_parts": len(train_parts), "val_parts": len(val_parts)}
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    log.info("best epoch %d (val part accuracy %.4f); %.1f min; %s", best_epoch, best_acc,
             summary["minutes"], ckpt)
    return ckpt


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig(data="", out="")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset dir (labels.csv or ImageFolder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default=d.task, help="label column: machine, process, material, tray_row, ...")
    ap.add_argument("--arch", default=d.arch, help="edge | efficientnetv2 | any timm name")
    ap.add_argument("--widths", type=_ints, default=d.widths)
    ap.add_argument("--depths", type=_ints, default=d.depths)
    ap.add_argument("--pool", default=d.pool, choices=["avg", "avgstd"])
    ap.add_argument("--stem-stride", type=int, default=d.stem_stride, choices=[1, 2])
    ap.add_argument("--dropout", type=float, default=d.dropout)
    ap.add_argument("--channels", type=int, default=d.channels, choices=[1, 3])
    ap.add_argument("--pretrained", action="store_true", help="timm pretrained weights (needs a hub)")
    ap.add_argument("--pixel-um", type=float, default=d.pixel_um, help="model pixel size after downscale")
    ap.add_argument("--roi", type=int, default=d.roi, help="ROI side in model pixels")
    ap.add_argument("--min-fg", type=float, default=d.min_fg)
    ap.add_argument("--votes", type=int, default=d.votes)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--rois-per-part", type=int, default=d.rois_per_part)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--steps", type=int, default=d.steps, help="steps per epoch")
    ap.add_argument("--optimizer", default=d.optimizer, choices=["adamw", "lamb", "sgd"])
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--lr-decay", type=float, default=d.lr_decay, help="LR factor per epoch")
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    ap.add_argument("--holdout", default="", help="comma-separated values held out of training (open set)")
    ap.add_argument("--holdout-column", default=d.holdout_column)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--name", default=d.name)
    ap.add_argument("--source", default=d.source)
    ap.add_argument("--val-parts", type=int, default=d.val_parts)
    ap.add_argument("--time-budget-min", type=float, default=d.time_budget_min)
    ap.add_argument("--cache-mb", type=float, default=d.cache_mb)
    ap.add_argument("--workers", type=int, default=d.workers)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--mask", default=d.mask, choices=["auto", "otsu", "full"])
    ap.add_argument("--warm-roi", type=int, default=d.warm_roi,
                    help="ROI side of the first --warm-epochs (centre crops; cheaper epochs)")
    ap.add_argument("--warm-epochs", type=int, default=d.warm_epochs)
    ap.add_argument("--val-from-epoch", type=int, default=d.val_from_epoch,
                    help="validate only from this epoch on (0: every epoch)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="NCHW activations instead of NHWC (same results, slower on CPU)")
    a = ap.parse_args(argv)
    v = vars(a)
    v["holdout"] = [s for s in a.holdout.split(",") if s]
    return TrainConfig(**v)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
