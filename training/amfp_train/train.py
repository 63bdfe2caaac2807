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

Robust training (issue 17; docs/training.md, "The v4 recipe"): ``--augment`` changes the
training ROIs' intensities the way other imaging chains would (JPEG, exposure, gamma, defocus,
sensor noise, polarity: amfp_train.augment); ``--aux-data`` adds datasets of other units of the
known printer models as auxiliary classes, trained beside the known machines so that the
embedding learns what sets units apart, and dropped from the head when the checkpoint is
written (the model's labels stay the known machines); ``--center-loss`` adds a scale-free
centre loss on the embedding (off by default).

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

from .augment import Augmenter
from .dataset import Dataset, Part, natural_key, read_dataset
from .evaluate import metrics, part_probs, torch_predictor
from .models import EDGE_DEFAULT, WithEmbedding, build_model, flops_per_roi
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
    # photometric augmentations of the training ROIs (amfp_train.augment): none, a preset (v4) or
    # name[:p],... of invert, blur, gain, noise, gamma, jpeg
    augment: str = "none"
    # datasets of other units (auxiliary classes: every part of them trains, whatever its split;
    # their head rows are dropped from the checkpoint, so the model's labels stay the known ones)
    aux_data: list[str] = field(default_factory=list)
    # share of each batch's ROIs drawn from auxiliary classes; 0: every class alike
    aux_share: float = 0.0
    # weight of the centre loss (within-class over total scatter of the embedding); 0: off
    center_loss: float = 0.0


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


def trained_on(ds: Dataset, cfg: TrainConfig, n_train_parts: int, aux: list[Dataset] | None = None,
               n_aux_parts: int = 0) -> str:
    src = cfg.source or f"{ds.layout}:{Path(ds.root).name}"
    extra = ""
    if aux:
        extra = f";aux_parts={n_aux_parts};aux_sha256={','.join(a.sha256 for a in aux)}"
    return f"{src};parts={n_train_parts}{extra};sha256={ds.sha256}"


def aux_classes(cfg: TrainConfig, known: list[str], held: set[str]) -> tuple[list[str], list[Part], list[Dataset]]:
    """Auxiliary labels (after the known ones), their parts (all splits) and datasets.

    An auxiliary label must be a new unit: one that is also a known machine or a held-out one
    would teach the net the wrong thing (or leak the open-set measurement), and is refused."""
    labels: set[str] = set()
    parts: list[Part] = []
    sets = []
    for d in cfg.aux_data:
        ads = read_dataset(d, cfg.task, cfg.seed)
        sets.append(ads)
        parts += ads.parts
        labels |= {p.label for p in ads.parts}
    clash = sorted(labels & (set(known) | held))
    if clash:
        raise ValueError(f"auxiliary labels that are also known or held-out machines: {clash}")
    return sorted(labels, key=natural_key), parts, sets


def class_weights(n_known: int, n_aux: int, aux_share: float) -> list[float] | None:
    """Per-class sampling weights giving the auxiliary classes `aux_share` of the ROIs (None: even)."""
    if not n_aux or not aux_share:
        return None
    if not 0.0 < aux_share < 1.0:
        raise ValueError(f"aux_share {aux_share} must be in (0, 1)")
    return [(1.0 - aux_share) / n_known] * n_known + [aux_share / n_aux] * n_aux


class KnownLogits(nn.Module):
    """The model's logits of the first `n` classes: what the exported model will have."""

    def __init__(self, model: nn.Module, n: int):
        super().__init__()
        self.model, self.n = model, n

    def forward(self, x):
        return self.model(x)[:, : self.n]


def classifier_name(model: nn.Module) -> str:
    """The state_dict prefix of the final linear layer (EdgeNet's head, a timm net's classifier)."""
    head = model.head if hasattr(model, "head") and isinstance(model.head, nn.Linear) else model.get_classifier()
    for name, mod in model.named_modules():
        if mod is head:
            return name
    raise ValueError("no classifier found")


def known_state_dict(model: nn.Module, n_known: int) -> tuple[dict, dict]:
    """The state_dict with the head cut to the known classes, and the auxiliary rows cut off."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    name = classifier_name(model)
    aux = {}
    for suffix in ("weight", "bias"):
        k = f"{name}.{suffix}"
        if k in sd and sd[k].shape[0] > n_known:
            aux[suffix] = sd[k][n_known:].clone()
            sd[k] = sd[k][:n_known].contiguous()
    return sd, aux


class CenterLoss(nn.Module):
    """Within-class over total scatter of a batch's embeddings around learned class centres.

    ``sum_i |e_i - c_{y_i}|^2 / sum_i |e_i - mean(e)|^2``: the relative Mahalanobis distance the
    gallery uses rewards parts that sit tight around their machine's mean, far from the others.
    Wen et al.'s centre loss (2016) pulls embeddings to their centres; divided by the batch's own
    scatter it cannot be lowered by shrinking every embedding (it is scale-free)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(n_classes, dim))
        self.initialised = False

    def forward(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.initialised:  # start the centres at the first batch's class means (else its mean)
            with torch.no_grad():
                self.centers.copy_(e.detach().mean(0).expand_as(self.centers))
                for c in y.unique():
                    self.centers[c] = e.detach()[y == c].mean(0)
            self.initialised = True
        within = ((e - self.centers[y]) ** 2).sum()
        total = ((e - e.mean(0, keepdim=True)) ** 2).sum() + 1e-6
        return within / total


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
    aux_labels, aux_parts, aux_sets = aux_classes(cfg, labels, set(cfg.holdout))
    all_labels = labels + aux_labels
    if aux_labels:
        log.info("auxiliary classes: %d (%d parts): %s", len(aux_labels), len(aux_parts), ", ".join(aux_labels))
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
    store.preload(train_parts + aux_parts + val_parts, cfg.threads or torch.get_num_threads())
    log.info("loaded %d parts in %.1fs (%.0f MiB cached)", len(train_parts) + len(aux_parts) + len(val_parts),
             time.time() - t0, store.nbytes / 2**20)
    mean, std = norm_stats(train_parts, store, cfg.seed)
    log.info("normalisation: mean %.5f std %.5f", mean, std)

    kw = dict(widths=cfg.widths, depths=cfg.depths, pool=cfg.pool, dropout=cfg.dropout,
              stem_stride=cfg.stem_stride) if cfg.arch == "edge" else {}
    model = build_model(cfg.arch, len(all_labels), cfg.channels, cfg.pretrained, **kw).to(device)
    gflop = flops_per_roi(model.cpu(), cfg.channels, cfg.roi) / 1e9
    model.to(device)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    log.info("model %s: %.2fM params, %.3f GFLOP per ROI", cfg.arch,
             sum(p.numel() for p in model.parameters()) / 1e6, gflop)

    augmenter = Augmenter(cfg.augment)
    if augmenter:
        log.info("augmentations: %s", json.dumps(augmenter.describe()["p"]))
    data = BalancedRois(train_parts + aux_parts, all_labels, cfg.pixel_um, cfg.roi, cfg.min_fg, cfg.batch,
                        mean, std, cfg.channels, cfg.seed, cfg.cache_mb, cfg.mask, cfg.rois_per_part,
                        store=store if cfg.workers == 0 else None, augmenter=augmenter,
                        class_weights=class_weights(len(labels), len(aux_labels), cfg.aux_share))
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=cfg.workers,
                                         pin_memory=device == "cuda",
                                         persistent_workers=cfg.workers > 0)
    batches = iter(loader)
    params = list(model.parameters())
    center = None
    if cfg.center_loss:
        with torch.no_grad():
            was = model.training
            model.eval()
            dim = WithEmbedding(model)(torch.zeros(1, cfg.channels, cfg.roi, cfg.roi, device=device))[1].shape[1]
            model.train(was)
        center = CenterLoss(len(all_labels), int(dim)).to(device)
        emb_net = WithEmbedding(model)
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    if center is not None:  # the centres learn at the same rate, without weight decay
        opt.add_param_group({"params": list(center.parameters()), "weight_decay": 0.0})
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
        "unknown_threshold": 0.0,
        "trained_on": trained_on(ds, cfg, len(train_parts), aux_sets, len(aux_parts)),
        # how it was trained (not part of the ONNX contract): the robustness settings
        "training": {"augment": augmenter.describe(), "aux_labels": aux_labels, "aux_parts": len(aux_parts),
                     "aux_share": cfg.aux_share if aux_labels else 0.0, "center_loss": cfg.center_loss},
    }
    if cfg.warm_epochs and not 0 < cfg.warm_roi <= cfg.roi:
        raise ValueError(f"warm_roi {cfg.warm_roi} must be in 1..roi ({cfg.roi})")
    step = 0
    for epoch in range(cfg.epochs):
        crop = cfg.warm_roi if epoch < cfg.warm_epochs else cfg.roi
        off = (cfg.roi - crop) // 2
        data.crop = crop  # in this process: the ROIs come cropped (workers crop below)
        model.train()
        t_ep = time.time()
        losses, correct, seen = [], 0, 0
        center_losses: list[float] = []
        for _ in range(cfg.steps):
            x, y = next(batches)
            if x.shape[-1] != crop:  # a centre crop of an ROI on the part is on the part too
                x = x[..., off:off + crop, off:off + crop]
            x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                if center is None:
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                else:
                    logits, emb = emb_net(x)
                    ce = loss_fn(logits.float(), y)
                    cl = center(emb.float(), y)
                    loss = ce + cfg.center_loss * cl
                    center_losses.append(cl.item())
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
        if center_losses:
            ep["center_loss"] = float(np.mean(center_losses))
        if val_parts and epoch + 1 >= cfg.val_from_epoch:
            model.eval()
            t_v = time.time()
            judge = KnownLogits(model, len(labels)) if aux_labels else model  # as exported
            pr = part_probs(torch_predictor(judge, device), val_parts, store, cfg.votes, cfg.seed + 1,
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
            sd, aux_head = known_state_dict(model, len(labels))
            torch.save({"state_dict": sd, "arch": cfg.arch, "model_kw": kw, "meta": meta, "config": asdict(cfg),
                        "epoch": epoch + 1, "aux": {"labels": aux_labels, "head": aux_head}}, ckpt)
        elapsed = (time.time() - t_start) / 60
        if cfg.time_budget_min and elapsed > cfg.time_budget_min and epoch + 1 < cfg.epochs:
            log.warning("time budget %.1f min reached after epoch %d", cfg.time_budget_min, epoch + 1)
            break
    summary = {"config": asdict(cfg), "meta": meta, "history": history, "best_epoch": best_epoch,
               "best_val_acc": best_acc, "gflop_per_roi": gflop, "device": device,
               "minutes": round((time.time() - t_start) / 60, 2),
               "train_parts": len(train_parts), "aux_parts": len(aux_parts), "val_parts": len(val_parts)}
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
    ap.add_argument("--augment", default=d.augment,
                    help="photometric augmentations of training ROIs: none, v4, or name[:p],... of "
                         "invert, blur, gain, noise, gamma, jpeg (amfp_train.augment)")
    ap.add_argument("--aux-data", default="", help="comma-separated datasets of other units: auxiliary "
                    "classes (all their parts train; dropped from the exported head)")
    ap.add_argument("--aux-share", type=float, default=d.aux_share,
                    help="share of ROIs from auxiliary classes (0: every class alike)")
    ap.add_argument("--center-loss", type=float, default=d.center_loss,
                    help="weight of the scale-free centre loss on the embedding (0: off)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="NCHW activations instead of NHWC (same results, slower on CPU)")
    a = ap.parse_args(argv)
    v = vars(a)
    v["holdout"] = [s for s in a.holdout.split(",") if s]
    v["aux_data"] = [s for s in a.aux_data.split(",") if s]
    return TrainConfig(**v)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
