"""Photometric augmentations of training ROIs: what changes between the scanner in the lab and the
camera, the phone or the JPEG an inspector hands amfp, while the part's surface stays the same.

Issue 17 measured the shipped model (trained on clean 8-bit PNG scans and microscope frames)
13 % confidently wrong on JPEGs of quality 85, and its microscope frames' embeddings far from
the fingerprints. The recipe therefore shows the net, during training only, the same surfaces
through other imaging chains, so that what it learns is the surface, not the chain. Each
augmentation models one physical stage; they are applied in the order light takes through the
chain, each to a random subset of the batch's ROIs (independently, with its own probability):

========  =====================================================================================
invert    part polarity: ``1 - x``. amfp's masks assume a bright part on a dark lid; a dark part
          (black PA12, grey resin) on a light background, or relief seen in dark-field light,
          inverts which side of the histogram the surface's shading lies on
blur      defocus: a Gaussian point spread of sigma 0.4-1.5 model pixels (4-16 µm at 10.6 µm/px):
          a microscope held a little off its focus, a warped part lifting off the scanner glass
gain      exposure: intensities times a gain, log-uniform in [0.7, 1.4], clipped at 0 and 1
          (saturation): another lamp, auto exposure, a darker or brighter material
noise     sensor noise, Poisson-Gaussian: a read-noise floor (std 0.002-0.02) plus shot noise
          whose variance grows with the signal (std 0-0.03 at mid grey): small pixels, short
          exposures, a phone's sensor
gamma     the tone curve: ``x ** gamma``, gamma log-uniform in [0.7, 1.4]: a camera's sRGB or
          "vivid" curve against the scanner's near-linear one
jpeg      JPEG re-encoding of the 8-bit ROI at quality 60-95 (Pillow, libjpeg's tables, 4:4:4:
          the image is gray), with the 8x8 block grid at a random offset (an ROI lies anywhere
          in a frame, so does the grid): blocking, ringing and lost fine texture, what phones
          and most cameras write
========  =====================================================================================

Everything is drawn from the generator passed in (the training loop's, seeded), so a batch is a
function of the seed. Shapes and dtype (float32 [n, h, w] in [0, 1]) are kept. The cost is small
next to a training step (docs/training.md, "The v4 recipe", has the measurement).

A spec names the augmentations and their probabilities: ``none``, a preset (``v4``), or a list
such as ``jpeg,gamma:0.3,blur`` (a name alone takes its default probability).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# the order light takes through the imaging chain: scene (polarity), optics (defocus), exposure
# (gain), sensor (noise, clipping), tone curve (gamma), encoding (JPEG)
ORDER = ("invert", "blur", "gain", "noise", "gamma", "jpeg")

# probability per ROI when a spec names an augmentation without one
DEFAULT_P = {"invert": 0.15, "blur": 0.25, "gain": 0.5, "noise": 0.3, "gamma": 0.5, "jpeg": 0.3}

# parameter ranges (documented in the module docstring and docs/training.md)
BLUR_SIGMA = (0.4, 1.5)        # model pixels, uniform
GAIN = (0.7, 1.4)              # log-uniform
READ_NOISE = (0.002, 0.02)     # std of the additive floor, uniform
SHOT_NOISE_MID = (0.0, 0.03)   # std of the shot noise at intensity 0.5, uniform
GAMMA = (0.7, 1.4)             # log-uniform
JPEG_QUALITY = (60, 95)        # inclusive, uniform integers

PRESETS = {
    "none": {},
    "v4": dict(DEFAULT_P),
}


def parse_spec(spec: str) -> dict[str, float]:
    """``none`` | a preset | ``name[:p],...`` -> {name: probability} in ORDER."""
    spec = (spec or "none").strip()
    if spec in PRESETS:
        return dict(PRESETS[spec])
    probs: dict[str, float] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, p = item.partition(":")
        if name not in DEFAULT_P:
            raise ValueError(f"augmentation {name!r}: one of {', '.join(ORDER)} (or a preset: {', '.join(PRESETS)})")
        prob = float(p) if p else DEFAULT_P[name]
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"augmentation {name}: probability {prob} not in [0, 1]")
        probs[name] = prob
    return {k: probs[k] for k in ORDER if k in probs}


# ---------------------------------------------------------------------------------------------
# The stages, each on a batch [n, h, w] with explicit parameters (tests call them directly)


def invert(x: np.ndarray) -> np.ndarray:
    return (1.0 - x).astype(np.float32)


def gaussian_kernels(sigmas: np.ndarray) -> np.ndarray:
    """Normalised 1-D Gaussian kernels [n, 2R+1], R = ceil(3 max sigma)."""
    r = max(1, int(np.ceil(3.0 * float(np.max(sigmas)))))
    t = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t[None, :] / np.asarray(sigmas, np.float32)[:, None]) ** 2)
    return (k / k.sum(1, keepdims=True)).astype(np.float32)


def gaussian_blur(x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of each ROI with its own sigma (reflected borders)."""
    n, h, w = x.shape
    k = gaussian_kernels(sigmas)
    r = (k.shape[1] - 1) // 2
    p = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    rows = np.zeros((n, h + 2 * r, w), np.float32)
    for j in range(2 * r + 1):
        rows += k[:, j, None, None] * p[:, :, j:j + w]
    out = np.zeros((n, h, w), np.float32)
    for j in range(2 * r + 1):
        out += k[:, j, None, None] * rows[:, j:j + h, :]
    return out


def gain(x: np.ndarray, gains: np.ndarray) -> np.ndarray:
    return np.clip(x * np.asarray(gains, np.float32)[:, None, None], 0.0, 1.0)


def sensor_noise(x: np.ndarray, read: np.ndarray, shot_mid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian noise: std(x) = sqrt(read^2 + shot_mid^2 * x / 0.5), clipped to [0, 1]."""
    read = np.asarray(read, np.float32)[:, None, None]
    shot = np.asarray(shot_mid, np.float32)[:, None, None]
    std = np.sqrt(read * read + shot * shot * (np.maximum(x, 0.0) / 0.5))
    z = rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(x + std * z, 0.0, 1.0)


def gamma(x: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), np.asarray(gammas, np.float32)[:, None, None]).astype(np.float32)


def jpeg(x: np.ndarray, qualities, offsets=None) -> np.ndarray:
    """Each ROI as 8-bit, JPEG-encoded at its quality and decoded back to [0, 1].

    ``offsets`` [n, 2] (0-7) put the 8x8 block grid at (dy, dx) within the ROI: the ROI is
    padded by reflection above and left by (8 - dy) % 8 and (8 - dx) % 8 rows and columns, so
    that a block boundary falls on ROI row dy and column dx (and every 8 after)."""
    n, h, w = x.shape
    out = np.empty_like(x, dtype=np.float32)
    if offsets is None:
        offsets = np.zeros((n, 2), np.int64)
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    for i in range(n):
        py, px = (8 - int(offsets[i][0])) % 8, (8 - int(offsets[i][1])) % 8
        a = np.pad(u8[i], ((py, 0), (px, 0)), mode="reflect") if py or px else u8[i]
        buf = io.BytesIO()
        Image.fromarray(a, mode="L").save(buf, format="JPEG", quality=int(qualities[i]))
        buf.seek(0)
        with Image.open(buf) as im:
            dec = np.asarray(im, dtype=np.uint8)
        out[i] = dec[py:, px:]
    out *= np.float32(1.0 / 255.0)
    return out


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=n)).astype(np.float32)


@dataclass
class Augmenter:
    """The photometric augmentations of a spec, applied to a batch of ROIs with a generator.

    Picklable (DataLoader workers get a copy). Empty specs draw nothing from the generator, so a
    run without augmentations is bit-identical to one before this module existed."""

    spec: str = "none"
    probs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.probs = parse_spec(self.spec)

    def __bool__(self) -> bool:
        return any(p > 0 for p in self.probs.values())

    def describe(self) -> dict:
        """What the checkpoint and the manifest record."""
        ranges = {"invert": None, "blur": {"sigma_px": BLUR_SIGMA}, "gain": {"log_uniform": GAIN},
                  "noise": {"read_std": READ_NOISE, "shot_std_at_0.5": SHOT_NOISE_MID},
                  "gamma": {"log_uniform": GAMMA}, "jpeg": {"quality": JPEG_QUALITY, "grid_offset": "random 0-7"}}
        return {"spec": self.spec, "order": [k for k in ORDER if k in self.probs],
                "p": dict(self.probs), "ranges": {k: ranges[k] for k in self.probs}}

    def __call__(self, rois: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self:
            return rois
        x = np.array(rois, dtype=np.float32, copy=True)
        n = len(x)
        for name in ORDER:
            p = self.probs.get(name, 0.0)
            if p <= 0:
                continue
            idx = np.nonzero(rng.random(n) < p)[0]
            if len(idx) == 0:
                continue
            k = len(idx)
            sub = x[idx]
            if name == "invert":
                sub = invert(sub)
            elif name == "blur":
                sub = gaussian_blur(sub, rng.uniform(*BLUR_SIGMA, size=k))
            elif name == "gain":
                sub = gain(sub, _log_uniform(rng, *GAIN, k))
            elif name == "noise":
                read = rng.uniform(*READ_NOISE, size=k)
                shot = rng.uniform(*SHOT_NOISE_MID, size=k)
                sub = sensor_noise(sub, read, shot, rng)
            elif name == "gamma":
                sub = gamma(sub, _log_uniform(rng, *GAMMA, k))
            elif name == "jpeg":
                q = rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, size=k)
                off = rng.integers(0, 8, size=(k, 2))
                sub = jpeg(sub, q, off)
            x[idx] = sub
        return x


def measure(batch: int = 48, roi: int = 192, spec: str = "v4", repeats: int = 20, seed: int = 0) -> dict:
    """Seconds per batch of each augmentation (applied to every ROI) and of the spec as trained."""
    import time

    rng = np.random.default_rng(seed)
    # a textured stand-in for ROIs: mid-grey with fine structure
    x = np.clip(0.58 + 0.14 * rng.standard_normal((batch, roi, roi), dtype=np.float32), 0, 1)
    out = {}
    for name in ORDER:
        a = Augmenter(f"{name}:1")
        a(x, rng)
        t = time.perf_counter()
        for _ in range(repeats):
            a(x, rng)
        out[f"{name}@p=1"] = (time.perf_counter() - t) / repeats
    a = Augmenter(spec)
    t = time.perf_counter()
    for _ in range(repeats):
        a(x, rng)
    out[spec] = (time.perf_counter() - t) / repeats
    return out


if __name__ == "__main__":  # python -m amfp_train.augment [spec]: the cost per batch of 48 x 192 px
    import json
    import sys

    print(json.dumps({k: round(v * 1000, 2) for k, v in measure(spec=(sys.argv[1:] or ["v4"])[0]).items()},
                     indent=1), "(ms per batch of 48 ROIs of 192 px)")
