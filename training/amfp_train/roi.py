"""Finding the part in a scan and cutting ROIs that lie on it.

The paper cuts 448x448 ROIs at random and resamples a crop until its mean
brightness passes a threshold, so that ROIs show part surface and not the
scanner lid. We do the same thing more explicitly, and exactly as the daemon
does (DESIGN.md, "ROI sampler"): an Otsu threshold separates the (brighter)
part from the dark background, and a crop is accepted when at least
``min_foreground`` of its pixels are on the part. Holes in a part are
background, so ROIs over holes are rejected too.

Microscope frames are entirely part surface; Otsu would cut the texture in
two. Such images get a full mask (mode=microscope in labels.csv, or 'auto'
when Otsu finds no clear two-class structure).

Acceptance uses an integral image of the mask, so testing a candidate crop
costs O(1) and resampling is cheap even on parts with many holes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Part, load_gray, resample

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
    s[1:, 1:] = mask.astype(np.int32).cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    return s


@dataclass
class PartImage:
    """One scan at the model's pixel size, with its part mask."""

    img: np.ndarray  # float16 intensities in [0, 1] (half the memory of float32; ~11 bits is plenty)
    sat: np.ndarray  # integral image of the mask

    @property
    def shape(self) -> tuple[int, int]:
        return self.img.shape

    def fg_fraction(self, ys: np.ndarray, xs: np.ndarray, roi: int) -> np.ndarray:
        s = self.sat
        tot = (s[ys + roi, xs + roi].astype(np.int64) - s[ys, xs + roi] - s[ys + roi, xs] + s[ys, xs])
        return tot / float(roi * roi)


def load_part_images(part: Part, model_pixel_um: float, mask_mode: str = "auto") -> list[PartImage]:
    """Read, area-resample to the model's pixel size and mask every image of a part."""
    out = []
    for f in part.files:
        img = resample(load_gray(f), part.pixel_size_um, model_pixel_um)
        mode = part.mode if mask_mode == "auto" else mask_mode
        mask = foreground_mask(img, mode)
        out.append(PartImage(img.astype(np.float16), integral(mask)))
    return out


class RoiError(RuntimeError):
    pass


def sample_positions(pim: PartImage, n: int, roi: int, min_fg: float, rng: np.random.Generator,
                     max_tries: int = 64) -> np.ndarray:
    """Top-left corners of `n` crops each with >= min_fg foreground.

    Draws candidates uniformly over the image and keeps those that pass, as the
    paper resamples rejected crops. After `max_tries` rounds the best candidates
    seen fill what is missing, so a part that barely fits still votes (its
    crops are then the least-background ones). Raises RoiError when the
    image is smaller than one ROI.
    """
    h, w = pim.shape
    if h < roi or w < roi:
        raise RoiError(f"image {w}x{h} is smaller than the ROI {roi}")
    got: list[np.ndarray] = []
    need = n
    best_pos = np.zeros((0, 2), dtype=np.int64)
    best_fg = np.zeros(0)
    batch = max(16, 2 * n)
    for _ in range(max_tries):
        ys = rng.integers(0, h - roi + 1, size=batch)
        xs = rng.integers(0, w - roi + 1, size=batch)
        fg = pim.fg_fraction(ys, xs, roi)
        ok = fg >= min_fg
        if ok.any():
            pos = np.stack([ys[ok], xs[ok]], 1)[:need]
            got.append(pos)
            need -= len(pos)
            if need == 0:
                break
        # keep the best rejected candidates as a fallback
        cand = np.stack([ys, xs], 1)
        best_pos = np.concatenate([best_pos, cand])
        best_fg = np.concatenate([best_fg, fg])
        order = np.argsort(-best_fg)[:n]
        best_pos, best_fg = best_pos[order], best_fg[order]
    if need > 0:
        got.append(best_pos[:need])
    return np.concatenate(got)[:n]


def crop(pim: PartImage, pos: np.ndarray, roi: int) -> np.ndarray:
    """Crops at the given corners as float32 [n, roi, roi]."""
    out = np.empty((len(pos), roi, roi), dtype=np.float32)
    for i, (y, x) in enumerate(pos):
        out[i] = pim.img[y:y + roi, x:x + roi]
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


def sample_rois(images: list[PartImage], n: int, roi: int, min_fg: float,
                rng: np.random.Generator) -> np.ndarray:
    """`n` ROIs from a part (its images chosen at random), float32 [n, roi, roi]."""
    if len(images) == 1:
        return crop(images[0], sample_positions(images[0], n, roi, min_fg, rng), roi)
    which = rng.integers(0, len(images), size=n)
    out = np.empty((n, roi, roi), dtype=np.float32)
    for k in np.unique(which):
        idx = np.nonzero(which == k)[0]
        out[idx] = crop(images[k], sample_positions(images[k], len(idx), roi, min_fg, rng), roi)
    return out


def part_rng(seed: int, serial: str) -> np.random.Generator:
    """A reproducible generator per (seed, part): evaluation ROIs don't depend on order."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(serial.encode())])
