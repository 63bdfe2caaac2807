"""In-memory store of parts at the model's pixel size, and class-balanced ROI batches.

Why a store: ROIs are cut at random every step (the paper's augmentation), so
the same scans are read thousands of times. Decoding a PNG and resampling it
costs far more than cutting a crop, so each part is decoded once and kept
(float16 at the model's pixel size) up to a memory cap; past the cap the
least recently used part is dropped and decoded again when needed (real
5.3 um/px scans of thousands of parts do not fit in memory).

Why balanced: the paper samples classes evenly. Each ROI of a batch draws a
class uniformly, then a training part of that class, then a crop: a machine
with fewer parts is seen as often as one with many.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from .dataset import Part
from .roi import PartImage, augment, load_part_images, sample_rois

log = logging.getLogger(__name__)


class PartStore:
    """Parts decoded, resampled to `pixel_um`, masked for `roi`/`min_fg`, with an LRU cap in MiB."""

    def __init__(self, pixel_um: float, roi: int, min_fg: float, cache_mb: float = 8000,
                 mask_mode: str = "auto"):
        self.pixel_um, self.roi, self.min_fg = pixel_um, roi, min_fg
        self.cap = cache_mb * 2**20
        self.mask_mode = mask_mode
        self._cache: OrderedDict[str, list[PartImage]] = OrderedDict()
        self._bytes = 0

    def get(self, part: Part) -> list[PartImage]:
        hit = self._cache.get(part.serial)
        if hit is not None:
            self._cache.move_to_end(part.serial)
            return hit
        ims = load_part_images(part, self.pixel_um, self.roi, self.min_fg, self.mask_mode)
        size = sum(p.nbytes for p in ims)
        self._cache[part.serial] = ims
        self._bytes += size
        while self._bytes > self.cap and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= sum(p.nbytes for p in old)
        return ims

    @property
    def nbytes(self) -> int:
        return self._bytes

    def preload(self, parts: list[Part], threads: int = 2) -> None:
        """Decode parts in a thread pool (PNG decoding and numpy release the GIL), then cache them
        in order. Stops early once the cache would overflow (the rest load on demand)."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [p for p in parts if p.serial not in self._cache]
        chunk = max(1, 4 * threads)
        with ThreadPoolExecutor(max(1, threads)) as ex:
            for i in range(0, len(todo), chunk):
                group = todo[i:i + chunk]
                loaded = list(ex.map(lambda p: load_part_images(p, self.pixel_um, self.roi, self.min_fg,
                                                                 self.mask_mode), group))
                for p, ims in zip(group, loaded):
                    self._cache[p.serial] = ims
                    self._bytes += sum(x.nbytes for x in ims)
                if self._bytes > self.cap:
                    while self._bytes > self.cap and len(self._cache) > 1:
                        _, old = self._cache.popitem(last=False)
                        self._bytes -= sum(x.nbytes for x in old)
                    log.warning("part cache full (%.0f MiB): the rest loads on demand", self.cap / 2**20)
                    return


def to_input(rois: np.ndarray, mean: float, std: float, channels: int) -> np.ndarray:
    """[n, roi, roi] intensities -> normalised NCHW float32 (gray repeated for 3 channels)."""
    x = ((rois - mean) / std).astype(np.float32)[:, None]
    if channels > 1:
        x = np.repeat(x, channels, axis=1)
    return np.ascontiguousarray(x)


def norm_stats(parts: list[Part], store: PartStore, seed: int, n_rois: int = 1024) -> tuple[float, float]:
    """Mean and std of pixel intensities over random training ROIs (stored in the model)."""
    rng = np.random.default_rng(seed)
    per = max(1, n_rois // max(1, len(parts)))
    chosen = parts if len(parts) * per <= 2 * n_rois else [parts[i] for i in rng.choice(len(parts), n_rois, replace=False)]
    s = s2 = 0.0
    n = 0
    for p in chosen:
        r = sample_rois(store.get(p), per, rng).astype(np.float64)
        s += r.sum()
        s2 += (r * r).sum()
        n += r.size
    mean = s / n
    std = max(np.sqrt(max(s2 / n - mean * mean, 0.0)), 1e-6)
    return float(mean), float(std)


class BalancedRois(torch.utils.data.IterableDataset):
    """Endless class-balanced batches of augmented, normalised ROIs.

    Works in the main process (num_workers=0, the CPU path: crops are cheap
    next to the convs) or in DataLoader workers (the GPU path), each worker
    with its own generator and store.

    ``augmenter`` (amfp_train.augment) changes the ROIs' intensities after the flips and turns,
    before normalisation. ``crop`` (settable between batches in the main process: progressive
    crops) cuts each ROI's centre before augmenting, so that the augmentations pay for the
    pixels the net sees only; a centre crop commutes with the square's symmetries, so the ROIs
    are exactly those the training loop's own centre crop would give. ``class_weights`` (one
    per label) makes some classes more frequent than others (auxiliary classes); None: even.
    """

    def __init__(self, parts: list[Part], labels: list[str], pixel_um: float, roi: int,
                 min_fg: float, batch: int, mean: float, std: float, channels: int, seed: int,
                 cache_mb: float = 8000, mask_mode: str = "auto", rois_per_part: int = 1,
                 store: PartStore | None = None, augmenter=None, class_weights=None):
        self.by_class = [[p for p in parts if p.label == lab] for lab in labels]
        self.classes = [i for i, g in enumerate(self.by_class) if g]
        if not self.classes:
            raise ValueError("no training parts")
        self.class_p = None
        if class_weights is not None:
            w = np.array([float(class_weights[i]) for i in self.classes])
            if len(class_weights) != len(labels) or (w < 0).any() or w.sum() <= 0:
                raise ValueError("class_weights: one non-negative weight per label, not all zero")
            self.class_p = w / w.sum()
        self.augmenter = augmenter
        self.crop = 0
        self.pixel_um, self.roi, self.min_fg, self.batch = pixel_um, roi, min_fg, batch
        self.mean, self.std, self.channels, self.seed = mean, std, channels, seed
        self.cache_mb, self.mask_mode = cache_mb, mask_mode
        self.rois_per_part = rois_per_part
        self.store = store

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = np.random.default_rng([self.seed, wid])
        store = self.store if (self.store is not None and info is None) else PartStore(
            self.pixel_um, self.roi, self.min_fg, self.cache_mb, self.mask_mode)
        k = self.rois_per_part
        while True:
            n_draw = -(-self.batch // k)
            cls = rng.choice(self.classes, size=n_draw, p=self.class_p)
            xs, ys = [], []
            for c in cls:
                group = self.by_class[c]
                p = group[rng.integers(len(group))]
                xs.append(sample_rois(store.get(p), k, rng))
                ys.extend([c] * k)
            rois = np.concatenate(xs)[: self.batch]
            if self.crop and self.crop != self.roi:
                off = (self.roi - self.crop) // 2
                rois = rois[:, off:off + self.crop, off:off + self.crop]
            rois = augment(rois, rng)
            if self.augmenter:
                rois = self.augmenter(rois, rng)
            yield (torch.from_numpy(to_input(rois, self.mean, self.std, self.channels)),
                   torch.tensor(ys[: self.batch], dtype=torch.long))
