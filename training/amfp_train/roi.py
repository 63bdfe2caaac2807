"""Finding the part in a scan and cutting ROIs that lie on it.

The paper cuts 448x448 ROIs at random and resamples a crop until its mean
brightness passes a threshold, so that ROIs show part surface and not the
scanner lid. We do the same thing more explicitly, and exactly as the daemon
does (docs/preprocessing.md, "Part mask and surface"): an Otsu threshold separates the (brighter)
part from the dark background, and a crop is accepted when at least
``min_foreground`` of its pixels are on the part. Holes in a part are
background, so ROIs over holes are rejected too.

Microscope frames are entirely part surface; Otsu would cut the texture in
two. Such images get a full mask (mode=microscope in labels.csv, or 'auto'
when Otsu finds no clear two-class structure).

Acceptance is precomputed per image from an integral image of the mask (a
bit map of valid ROI corners), so testing a candidate crop costs O(1) and
resampling is cheap even on parts with many holes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Part, load_gray_raw, resample

# Otsu's between-class / total variance ratio above which 'auto' believes a
# scan shows a part on a background (scanner mode). A dark flat background
# and a brighter part give ~0.9 or more; a surface texture alone rarely
# exceeds 0.8.
AUTO_ETA = 0.85


def otsu(img: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Otsu threshold of `img` and its separability eta = var_between / var_total."""
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1e-9:
        return lo, 0.0
    hist, edges = np.histogram(img, bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    mt = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0.0
    k = int(np.argmax(between))
    var_t = float((p * (centers - mt) ** 2).sum())
    eta = float(between[k] / var_t) if var_t > 0 else 0.0
    return float(edges[k + 1]), eta


def foreground_mask(img: np.ndarray, mode: str = "auto") -> np.ndarray:
    """Boolean mask of the part: Otsu (brighter class) for scans, all-true for microscope frames."""
    if mode == "microscope" or mode == "full":
        return np.ones(img.shape, dtype=bool)
    t, eta = otsu(img)
    if mode == "auto" or mode == "unknown":
        if eta < AUTO_ETA:
            return np.ones(img.shape, dtype=bool)
    return img > t


def integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column: sum of mask[y0:y1, x0:x1] in O(1)."""
    if mask.size >= 2**31:
        raise ValueError("image too large for an int32 integral image")
    s = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    inner = s[1:, 1:]
    np.cumsum(mask, axis=1, dtype=np.int32, out=inner)  # in place: 5x faster than astype + cumsum
    np.cumsum(inner, axis=0, dtype=np.int32, out=inner)
    return s


@dataclass
class PartImage:
    """One scan at the model's pixel size, with where an ROI may start.

    ``valid`` holds, bit-packed along x, whether the ROI whose top-left corner
    is at (y, x) has at least min_fg of its pixels on the part: computed once
    from an integral image of the mask, so drawing an accepted crop is a bit
    lookup, and the cache costs ~1.1 bytes per pixel for 8-bit scans kept at
    their own resolution (uint8 + bits) or ~2.1 (float16 + bits) for resampled
    or 16-bit ones, instead of 6 with a kept int32 integral image. ``best`` keeps the corners
    with the most foreground for parts where no ROI passes (thin lattices).
    """

    img: np.ndarray  # uint8 (scale 1/255) or float16 intensities (~11 bits is plenty)
    valid: np.ndarray  # packbits of bool [H - roi + 1, W - roi + 1] along axis 1
    n_valid: int
    roi: int
    min_fg: float
    best: np.ndarray  # [k, 2] corners with the most foreground, best first (only when n_valid == 0)
    best_fg: np.ndarray  # their foreground fractions
    dense: np.ndarray | None = None  # explicit valid corners when they are rare
    scale: float = 1.0  # img * scale = intensity in [0, 1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.img.shape

    @property
    def nbytes(self) -> int:
        return self.img.nbytes + self.valid.nbytes + (0 if self.dense is None else self.dense.nbytes)

    def is_valid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return ((self.valid[ys, xs >> 3] >> (7 - (xs & 7))) & 1).astype(bool)


def make_part_image(img: np.ndarray, mask: np.ndarray, roi: int, min_fg: float, keep_best: int = 64,
                    raw: np.ndarray | None = None, scale: float = 1.0) -> PartImage:
    """Precompute the valid-corner map of an image for ROIs of side `roi`.

    `raw`/`scale`: keep these values (e.g. the 8-bit original) instead of `img` as float16."""
    h, w = img.shape
    if h < roi or w < roi:
        raise RoiError(f"image {w}x{h} is smaller than the ROI {roi}")
    s = integral(mask)
    fg = s[roi:, roi:] - s[:-roi, roi:]  # int32 is enough: roi^2 < 2^31
    fg -= s[roi:, :-roi]
    fg += s[:-roi, :-roi]
    need = int(np.ceil(min_fg * roi * roi - 1e-9))
    ok = fg >= need
    n_valid = int(ok.sum())
    if n_valid == 0:  # only then are the most-foreground corners needed
        flat = fg.ravel()
        k = min(keep_best, flat.size)
        top = np.argpartition(-flat, k - 1)[:k]
        top = top[np.argsort(-flat[top], kind="stable")]
        best = np.stack(np.unravel_index(top, fg.shape), 1).astype(np.int32)
        best_fg = flat[top] / float(roi * roi)
    else:
        best, best_fg = np.zeros((0, 2), np.int32), np.zeros(0)
    dense = None
    if 0 < n_valid < 0.02 * ok.size:  # rejection sampling would be slow: list them
        dense = np.argwhere(ok).astype(np.int32)
    keep = raw if raw is not None else img.astype(np.float16)
    return PartImage(keep, np.packbits(ok, axis=1), n_valid, roi, min_fg, best,
                     best_fg, dense, scale if raw is not None else 1.0)


def load_part_images(part: Part, model_pixel_um: float, roi: int, min_fg: float,
                     mask_mode: str = "auto") -> list[PartImage]:
    """Read, area-resample to the model's pixel size and mask every image of a part."""
    out = []
    for f in part.files:
        raw, scale = load_gray_raw(f)
        img = resample(np.clip(raw.astype(np.float32) * scale, 0.0, 1.0), part.pixel_size_um, model_pixel_um)
        mode = part.mode if mask_mode == "auto" else mask_mode
        same = raw.dtype == np.uint8 and img.shape == raw.shape
        out.append(make_part_image(img, foreground_mask(img, mode), roi, min_fg,
                                   raw=raw if same else None, scale=scale))
    return out


class RoiError(RuntimeError):
    pass


def sample_positions(pim: PartImage, n: int, rng: np.random.Generator, max_tries: int = 64) -> np.ndarray:
    """Top-left corners of `n` crops each with >= min_fg foreground.

    Draws candidates uniformly over the image and keeps those that pass, as the
    paper resamples rejected crops (when valid corners are rare they are
    listed and drawn directly). A part where no ROI passes still votes with
    its most-foreground crops, so thin parts are not silently dropped.
    """
    h, w = pim.shape
    r = pim.roi
    if pim.n_valid == 0:
        return pim.best[rng.integers(0, min(len(pim.best), max(n, 8)), size=n)].astype(np.int64)
    if pim.dense is not None:
        return pim.dense[rng.integers(0, len(pim.dense), size=n)].astype(np.int64)
    got: list[np.ndarray] = []
    need = n
    batch = max(16, 2 * n)
    for _ in range(max_tries):
        ys = rng.integers(0, h - r + 1, size=batch)
        xs = rng.integers(0, w - r + 1, size=batch)
        ok = pim.is_valid(ys, xs)
        if ok.any():
            pos = np.stack([ys[ok], xs[ok]], 1)[:need]
            got.append(pos)
            need -= len(pos)
            if need == 0:
                break
    if need > 0:  # unlucky: fall back to listing (rare; valid corners were >= 2%)
        allv = np.argwhere(np.unpackbits(pim.valid, axis=1, count=w - r + 1).astype(bool))
        got.append(allv[rng.integers(0, len(allv), size=need)])
    return np.concatenate(got)[:n].astype(np.int64)


def crop(pim: PartImage, pos: np.ndarray) -> np.ndarray:
    """Crops at the given corners as float32 [n, roi, roi]."""
    roi = pim.roi
    out = np.empty((len(pos), roi, roi), dtype=np.float32)
    for i, (y, x) in enumerate(pos):
        out[i] = pim.img[y:y + roi, x:x + roi]
    if pim.scale != 1.0:
        out *= np.float32(pim.scale)
    return out


def augment(rois: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90-degree turns (the 8 symmetries of the square), per ROI.

    A part lies on the scanner in any orientation, so the model must not rely
    on the direction of layer lines or scan tracks, only on their character.
    """
    out = np.empty_like(rois)
    ks = rng.integers(0, 4, size=len(rois))
    fl = rng.integers(0, 2, size=len(rois))
    for i in range(len(rois)):
        r = np.rot90(rois[i], ks[i])
        out[i] = r[:, ::-1] if fl[i] else r
    return out


def sample_rois(images: list[PartImage], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` ROIs from a part (its images chosen at random), float32 [n, roi, roi]."""
    if len(images) == 1:
        return crop(images[0], sample_positions(images[0], n, rng))
    roi = images[0].roi
    which = rng.integers(0, len(images), size=n)
    out = np.empty((n, roi, roi), dtype=np.float32)
    for k in np.unique(which):
        idx = np.nonzero(which == k)[0]
        out[idx] = crop(images[k], sample_positions(images[k], len(idx), rng))
    return out


def part_rng(seed: int, serial: str) -> np.random.Generator:
    """A reproducible generator per (seed, part): evaluation ROIs don't depend on order."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(serial.encode())])
