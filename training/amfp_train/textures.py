"""Surfaces that no additive-manufacturing machine made, laid out like `amfp synth` scans.

The open-set benchmark (`amfp_train.openset`, docs/openset.md) must show that amfp does not name
a printer for a surface the model has never seen: noise, a blank or blurred frame, a machined or
cast metal part, paper, fabric, a JPEG ruined by blocking, a printed halftone. This module draws
such images itself, deterministically from a seed, at the simulator's scale: 8-bit grayscale PNG
at 10.6 µm per pixel with the pixel size recorded in the file (PNG ``pHYs``, as `amfp synth`
writes it), the part's outline (one of the simulator's three designs: connector, plug, lattice,
in one of 8 orientations with a small tilt and 0.8 mm of empty glass around it) on the scanner's
dark lid, lit by the scanner's lamp from the top of the frame at 45°, recorded with the same
shot and read noise and gamma 1/2.2. Noise and blank frames fill the whole frame instead
(the size of a scan of one of the designs), in gray or, for noise, RGB: a phone writes RGB JPEGs.

Families (docs/non-am-textures.md; each function's docstring gives the physics and the scales):

==================  ==========================================================================
``uniform_noise``   i.i.d. uniform pixels over the whole frame (gray or RGB)
``gaussian_noise``  i.i.d. Gaussian pixels: whole frame (gray, RGB) or as a part's surface
``blank``           flat frames (black, gray, white, with sensor noise) and a featureless part
``defocus``         a real `amfp synth` scan blurred far out of focus (needs scans)
``machined``        turned / face-turned / face-milled metal: tool-mark grooves, chatter, scratches
``sanded``          abrasive-sanded (directional scratches) and bead-blasted (dimples) metal
``cast``            sand- or die-cast metal: mottled, grainy, with gas pores
``paper``           paper: fibres, formation flocs
``fabric``          woven cloth: plain, twill, basket weaves of twisted yarns
``jpeg_blocking``   a smooth image saved as JPEG at quality 5-20 and decoded again
``halftone``        a printed image: amplitude-modulated dot screens and stochastic screens
==================  ==========================================================================

None of this is a measurement of any real surface: the scales are plausible textbook values, so
that the images are far from every simulated AM surface in the ways real ones would be.

CLI::

    python -m amfp_train.textures --out DIR --per-family N --seed S \\
        [--families a,b] [--rgb noise|all|none] [--jpeg-quality Q] [--scans DIR | --amfp BIN]

writes ``DIR/<family>/<family>-<i>.png`` and ``DIR/textures.csv``
(``file,family,variant,seed,channels,layout,width,height,pixel_size_um``; ``file`` relative to
DIR, as in a dataset's labels.csv). Every image is reproduced by ``generate(family, seed,
variant=...)`` from its row alone; ``seed`` is drawn from the base seed, the family and the index.
The open-set benchmark draws its textures from its own base seed (docs/openset.md); textures for
training (outlier exposure) must come from other base seeds, so that the benchmark's images stay
unseen.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

SCANNER_PIXEL_UM = 10.6
SCANNER_MARGIN_MM = 0.8  # empty glass around the part (src/synth/imaging.rs)
BACKGROUND = 0.035  # radiance of the scanner's dark lid (src/synth/imaging.rs)
FULL_WELL, READ_NOISE, EXPOSURE = 30_000.0, 8.0, 0.85  # the scanner's sensor (imaging.rs, record)
DESIGNS = ("connector", "plug", "lattice")
CSV_FIELDS = ["file", "family", "variant", "seed", "channels", "layout", "width", "height", "pixel_size_um"]


# --------------------------------------------------------------------------------------------
# Geometry and imaging shared by the families


def design_half_extent(design: str) -> tuple[float, float]:
    return {"connector": (7.5, 4.5), "plug": (6.0, 6.0), "lattice": (6.0, 6.0)}[design]


def _circle(x, y, r):
    return np.hypot(x, y) - r


def _rounded_box(x, y, hx, hy, r):
    qx = np.abs(x) - hx + r
    qy = np.abs(y) - hy + r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def design_sdf(design: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the design's boundary, negative inside material: the simulator's
    three part outlines (src/synth/design.rs)."""
    if design == "connector":
        body = _rounded_box(x, y, 7.5, 4.5, 1.5)
        holes = np.minimum(_circle(x - 4.6, y, 1.5), _circle(x + 4.6, y, 1.5))
        slot = _rounded_box(x, y, 1.6, 0.6, 0.6)
        return np.maximum(np.maximum(body, -holes), -slot)
    if design == "plug":
        return np.maximum(np.maximum(_circle(x, y, 6.0), y - 4.6), -_circle(x, y, 2.0))
    if design == "lattice":
        frame = _rounded_box(x, y, 6.0, 6.0, 0.8)
        windows = np.full_like(x, np.inf)
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                windows = np.minimum(windows, _rounded_box(x - i * 3.7, y - j * 3.7, 1.2, 1.2, 0.3))
        return np.maximum(frame, -windows)
    raise ValueError(f"unknown design {design!r}")


@dataclass
class Frame:
    """An image's geometry: size, pixel size, and (scanner layout) the part's coverage."""

    height: int
    width: int
    pixel_um: float
    design: str
    coverage: np.ndarray | None  # [H, W] in [0, 1]; None for a whole-frame image

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates in mm, centred: x to the right, y down; [H, W] each."""
        p = self.pixel_um * 1e-3
        x = (np.arange(self.width, dtype=np.float64) - (self.width - 1) / 2) * p
        y = (np.arange(self.height, dtype=np.float64) - (self.height - 1) / 2) * p
        return np.meshgrid(x, y)


def make_frame(rng: np.random.Generator, pixel_um: float = SCANNER_PIXEL_UM, part: bool = True,
               shape: tuple[int, int] | None = None) -> Frame:
    """A frame as `amfp synth` lays out a scan: one of the three designs in one of 8 orientations
    (quarter turns and flips) turned by a small angle (2° rms), with 0.8 mm of glass around its
    bounding box. ``part=False``: the same frame size without an outline (whole-frame images).
    ``shape=(H, W)`` forces the frame size (tests); the part is then scaled to fit."""
    design = DESIGNS[int(rng.integers(3))]
    orientation = int(rng.integers(8))
    tilt = math.radians(2.0) * float(rng.standard_normal())
    angle = (orientation % 4) * math.pi / 2 + tilt
    c, s = math.cos(angle), math.sin(angle)
    flip = -1.0 if orientation >= 4 else 1.0
    m = ((c * flip, s * flip), (-s, c))  # columns: image right/down in the part frame
    hx, hy = design_half_extent(design)
    p = pixel_um * 1e-3
    ex = abs(m[0][0]) * hx + abs(m[0][1]) * hy
    ey = abs(m[1][0]) * hx + abs(m[1][1]) * hy
    scale = 1.0
    if shape is None:
        w = int(math.ceil(2 * (ex + SCANNER_MARGIN_MM) / p))
        h = int(math.ceil(2 * (ey + SCANNER_MARGIN_MM) / p))
    else:
        h, w = shape
        scale = min(w * p / (2 * (ex + SCANNER_MARGIN_MM)), h * p / (2 * (ey + SCANNER_MARGIN_MM)))
    frame = Frame(h, w, pixel_um, design, None)
    if part:
        u, v = frame.mm()
        px = (m[0][0] * u + m[1][0] * v) / scale
        py = (m[0][1] * u + m[1][1] * v) / scale
        sdf = design_sdf(design, px, py) * scale
        frame.coverage = np.clip(0.5 - sdf / p, 0.0, 1.0).astype(np.float32)
    return frame


def blur(img: np.ndarray, sigma_px: float | tuple[float, float], angle: float = 0.0) -> np.ndarray:
    """Gaussian blur through the FFT (periodic edges). ``sigma_px=(along, across)`` with
    ``angle`` (radians, from the image x axis) blurs anisotropically: long streaks along it."""
    if np.isscalar(sigma_px):
        sa = sc = float(sigma_px)
    else:
        sa, sc = (float(v) for v in sigma_px)
    if sa <= 0 and sc <= 0:
        return img
    h, w = img.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    fa = fx * math.cos(angle) + fy * math.sin(angle)
    fc = -fx * math.sin(angle) + fy * math.cos(angle)
    g = np.exp(-2 * math.pi ** 2 * ((sa * fa) ** 2 + (sc * fc) ** 2))
    return np.fft.irfft2(np.fft.rfft2(img) * g, s=(h, w))


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Periodic convolution with a small centred kernel, through the FFT."""
    h, w = img.shape
    k = np.zeros((h, w))
    kh, kw = kernel.shape
    k[:kh, :kw] = kernel
    k = np.roll(k, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return np.fft.irfft2(np.fft.rfft2(img) * np.fft.rfft2(k), s=(h, w))


def field(rng: np.random.Generator, shape: tuple[int, int], corr_px: float | tuple[float, float],
          angle: float = 0.0) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit standard deviation, correlation length
    ``corr_px`` pixels (a pair: along and across ``angle``)."""
    f = blur(rng.standard_normal(shape), corr_px, angle)
    sd = f.std()
    return (f - f.mean()) / (sd if sd > 0 else 1.0)


def splat_lines(shape: tuple[int, int], x0: np.ndarray, y0: np.ndarray, theta: np.ndarray,
                length_px: np.ndarray, weight: np.ndarray, curvature: np.ndarray | None = None,
                step: float = 1.0) -> np.ndarray:
    """Accumulate line segments (or arcs, with ``curvature`` in radians per pixel) into an image,
    one sample per ``step`` pixels, each adding its segment's ``weight``: blur the result for a
    width. Segments are clipped to the frame."""
    h, w = shape
    n = np.maximum(1, np.ceil(length_px / step).astype(np.int64))
    seg = np.repeat(np.arange(len(n)), n)
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    t = (np.arange(seg.size) - first[seg]) * step - length_px[seg] / 2
    if curvature is None:
        ang = theta[seg]
        xs, ys = x0[seg] + t * np.cos(ang), y0[seg] + t * np.sin(ang)
    else:  # an arc of constant curvature through (x0, y0), tangent theta there
        k = curvature[seg]
        ang = theta[seg] + k * t
        safe = np.where(np.abs(k) < 1e-9, 1e-9, k)
        xs = x0[seg] + (np.sin(ang) - np.sin(theta[seg])) / safe
        ys = y0[seg] - (np.cos(ang) - np.cos(theta[seg])) / safe
    xi, yi = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    img = np.bincount(yi[ok] * w + xi[ok], weights=weight[seg][ok], minlength=h * w)
    return img.reshape(h, w)


def splat_points(shape: tuple[int, int], rng: np.random.Generator, density_per_px: float,
                 weight: float = 1.0) -> np.ndarray:
    """Poisson points, ``density_per_px`` per pixel on average: an image of counts x weight."""
    return rng.poisson(density_per_px, size=shape).astype(np.float64) * weight


def shade(height_um: np.ndarray, pixel_um: float) -> np.ndarray:
    """Lambertian shading of a relief (µm) under the scanner's lamp: light from the top of the
    frame at 45° elevation, as `amfp synth` lights its scans; 1 on a flat surface."""
    gy, gx = np.gradient(height_um, pixel_um)
    c = math.sqrt(0.5)
    # normal (-gx, -gy, 1)/n; light towards (0, -c, c) (row 0 is the top of the frame)
    lam = (gy * c + c) / np.sqrt(1 + gx * gx + gy * gy)
    return np.clip(lam / c, 0.0, None)


def compose(frame: Frame, rng: np.random.Generator, radiance: np.ndarray) -> np.ndarray:
    """The part's radiance on the scanner's dark, faintly textured lid (scanner layout), the
    lamp's fall-off towards its ends (2-6 %) and a random gain (±6 %)."""
    out = radiance.astype(np.float64)
    if frame.coverage is not None:
        lid = BACKGROUND * (1 + 0.15 * field(rng, frame.shape, 3000 / frame.pixel_um / 2))
        out = out * frame.coverage + lid * (1 - frame.coverage)
    x = np.linspace(-1, 1, frame.width)[None, :]
    fall = rng.uniform(0.02, 0.06)
    gain = 1 + rng.uniform(-0.06, 0.06)
    return out * (1 - fall * x ** 2) * gain


def record(radiance: np.ndarray, rng: np.random.Generator, focus_um: float | None = None,
           pixel_um: float = SCANNER_PIXEL_UM) -> np.ndarray:
    """The scanner's sensor: slight defocus (``focus_um`` rms; default 3-8 µm as a scanner's),
    shot and read noise, gamma 1/2.2 and 8-bit quantisation; uint8 [H, W]."""
    sigma = (rng.uniform(3.0, 8.0) if focus_um is None else focus_um) / pixel_um
    r = blur(radiance, sigma) if sigma > 0.05 else radiance
    e = np.maximum(r * EXPOSURE, 0) * FULL_WELL
    noisy = e + np.sqrt(e + READ_NOISE ** 2) * rng.standard_normal(e.shape)
    v = np.clip(noisy / FULL_WELL, 0, 1) ** (1 / 2.2)
    return np.rint(v * 255).astype(np.uint8)


def to_linear(img8: np.ndarray) -> np.ndarray:
    """8-bit gamma-encoded pixels back to linear radiance (the inverse of ``record``'s curve)."""
    return (img8.astype(np.float64) / 255.0) ** 2.2 / EXPOSURE


# --------------------------------------------------------------------------------------------
# The families. Each takes (rng, frame, variant) and returns uint8 [H, W] or [H, W, 3].


def uniform_noise(rng, frame: Frame, variant: str) -> np.ndarray:
    """Independent uniform pixel values 0-255 over the whole frame, no part: the classic
    "random image" (a JPEG of random RGB noise was named as a printer in issue 17). No scale:
    every pixel is its own sample, so all spatial frequencies carry equal power up to the
    Nyquist limit (47 cycles/mm at 10.6 µm). Variants: ``gray``; ``rgb`` (three independent
    channels, as a phone's image; amfp reads it as luma)."""
    shape = frame.shape + ((3,) if variant == "rgb" else ())
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def gaussian_noise(rng, frame: Frame, variant: str) -> np.ndarray:
    """Independent Gaussian pixel values (mean 0.3-0.7 of full scale, standard deviation
    0.05-0.2, clipped): white noise of another amplitude distribution than ``uniform_noise``.
    Variants: ``gray`` and ``rgb`` over the whole frame; ``part``: the noise is the part's
    surface (its radiance) inside the outline, on the scanner's lid, recorded by the sensor."""
    mean, sd = rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.2)
    if variant == "part":
        rad = np.clip(mean + sd * rng.standard_normal(frame.shape), 0, None) ** 2.2 / EXPOSURE
        return record(compose(frame, rng, rad), rng, focus_um=0.0)
    shape = frame.shape + ((3,) if variant == "rgb" else ())
    return np.rint(np.clip(mean + sd * rng.standard_normal(shape), 0, 1) * 255).astype(np.uint8)


def blank(rng, frame: Frame, variant: str) -> np.ndarray:
    """Frames with nothing on them. ``black`` (lid closed, lamp off: radiance 0-0.5 %), ``gray``
    (a uniform card, 20-60 %), ``white`` (an open lid or overexposure, 95-120 %, clipped), each
    over the whole frame through the sensor's noise; ``part``: the part's outline with a
    featureless surface (uniform albedo 0.2-0.8, no relief: a mirror-smooth or painted part,
    nothing below the sensor's noise of ~0.5 % at any scale)."""
    if variant == "part":
        rad = np.full(frame.shape, rng.uniform(0.2, 0.8))
        return record(compose(frame, rng, rad), rng)
    lo, hi = {"black": (0.0, 0.005), "gray": (0.2, 0.6), "white": (0.95, 1.2)}[variant]
    return record(np.full(frame.shape, rng.uniform(lo, hi)), rng, focus_um=0.0)


def defocus(rng, frame: Frame, variant: str, scan: np.ndarray, scan_pixel_um: float) -> np.ndarray:
    """A real `amfp synth` part scan far out of focus: in linear light, blurred by a Gaussian of
    60-250 µm rms (``gaussian``) or a pillbox (the geometric defocus of a lens; radius
    100-400 µm, ``disk``), then recorded again through the sensor's noise. Every printed
    texture (DLS pixels 75-100 µm, SLA hatches ~120 µm, FDM roads 250-330 µm, MJF grains
    ~60 µm) is gone; the part's outline and its shading at millimetres stay. The frame is the
    scan's own (size and pixel size)."""
    lin = to_linear(scan)
    if variant == "gaussian":
        out = blur(lin, rng.uniform(60, 250) / scan_pixel_um)
    else:
        r = rng.uniform(100, 400) / scan_pixel_um
        n = int(math.ceil(r)) + 1
        yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
        k = np.clip(r + 0.5 - np.hypot(xx, yy), 0, 1)
        out = convolve(lin, k / k.sum())
    return record(out, rng, focus_um=0.0, pixel_um=scan_pixel_um)


def machined(rng, frame: Frame, variant: str) -> np.ndarray:
    """Metal cut by a single-point tool or a milling cutter: the tool's nose (radius r = 0.4-1.6
    mm) advancing by the feed f = 50-300 µm per revolution (or per tooth) leaves periodic
    grooves of cusp height f²/8r (0.2-28 µm) at pitch f. ``turned``: straight grooves (a turned
    shaft seen along its length, or a shaped face); ``faced``: concentric arcs of a face-turned
    disc about a centre 3-40 mm off the frame's; ``milled``: the arcs of a face mill of radius
    12-40 mm stepped by the feed per tooth. Chatter (tool vibration) moves the grooves by 2-15
    µm and varies their depth by ±5-30 % at a wavelength of 0.5-4 mm along them; built-up-edge
    tearing adds 0.1-0.8 µm of roughness at 10-40 µm; 5-40 scratches (5-20 µm wide, 0.5-3 µm
    deep, 1-15 mm long) cross the part. Metal albedo 0.45-0.75, mottled by ±3 % at ~2 mm, and
    2-8 % brighter on the burnished lands than in the grooves."""
    x, y = frame.mm()
    p = frame.pixel_um
    feed = rng.uniform(50, 300) * 1e-3  # mm
    nose = rng.uniform(0.4, 1.6)  # mm
    theta = rng.uniform(0, math.pi)
    if variant == "turned":
        s = x * math.cos(theta) + y * math.sin(theta)
        q = -x * math.sin(theta) + y * math.cos(theta)
    elif variant == "faced":
        d, a = rng.uniform(3, 40), rng.uniform(0, 2 * math.pi)
        cx, cy = d * math.cos(a), d * math.sin(a)
        s = np.hypot(x - cx, y - cy)
        q = np.arctan2(y - cy, x - cx) * s
    else:  # milled
        radius = rng.uniform(12, 40)
        t0 = rng.uniform(-0.4, 0.4) * radius
        along = x * math.cos(theta) + y * math.sin(theta)
        q = -x * math.sin(theta) + y * math.cos(theta) - t0
        s = along - np.sqrt(np.maximum(radius ** 2 - q ** 2, 0))
    wl = rng.uniform(0.5, 4.0)
    ph = rng.uniform(0, 2 * math.pi)
    s = s + rng.uniform(2, 15) * 1e-3 * np.sin(2 * math.pi * q / wl + ph)
    depth = 1 + rng.uniform(0.05, 0.3) * np.sin(2 * math.pi * q / (wl * rng.uniform(0.7, 1.4)) + ph * 2)
    u = np.mod(s, feed) - feed / 2
    h = (u ** 2 / (2 * nose)) * 1e3 * depth  # µm, cusps between grooves
    h += rng.uniform(0.1, 0.8) * field(rng, frame.shape, rng.uniform(10, 40) / p)
    n = int(rng.integers(5, 41))
    hh, ww = frame.shape
    lines = splat_lines(frame.shape, rng.uniform(0, ww, n), rng.uniform(0, hh, n),
                        np.where(rng.random(n) < 0.5, theta + math.pi / 2 + rng.normal(0, 0.1, n),
                                 rng.uniform(0, math.pi, n)),
                        rng.uniform(1, 15, n) * 1e3 / p, rng.uniform(0.5, 3, n))
    w_px = rng.uniform(5, 20) / p / 2.355
    h -= blur(lines, w_px) * (2 * math.pi) ** 0.5 * w_px
    albedo = rng.uniform(0.45, 0.75) * (1 + 0.03 * field(rng, frame.shape, 2000 / p))
    albedo = albedo * (1 + rng.uniform(0.02, 0.08) * np.cos(2 * math.pi * u / feed))  # burnished lands
    return record(compose(frame, rng, albedo * shade(h, p)), rng)


def sanded(rng, frame: Frame, variant: str) -> np.ndarray:
    """Abrasive-finished metal. ``sanded``: an abrasive of grit P80-P400 leaves scratches 10-60
    µm wide and 0.3-3 mm long along the stroke, 0.3-3 µm rms deep; one stroke direction, or
    two crossing (``crosshatch``). ``blasted``: glass beads or grit leave overlapping craters
    (dimples) of 20-120 µm diameter (log-normal over three sizes), depth 5-15 % of their
    diameter, covering the surface 2-4 times: an isotropic, matte grain with no direction.
    Albedo 0.4-0.7."""
    p = frame.pixel_um
    if variant in ("sanded", "crosshatch"):
        theta = rng.uniform(0, math.pi)
        width = rng.uniform(10, 60) / p
        length = rng.uniform(300, 3000) / p
        h = field(rng, frame.shape, (length / 4, width / 2.355), theta)
        if variant == "crosshatch":
            h = h + field(rng, frame.shape, (length / 4, width / 2.355), theta + rng.uniform(0.6, 1.2))
            h /= math.sqrt(2)
        h *= rng.uniform(0.3, 3.0)
    else:
        median = rng.uniform(20, 120)
        coverage = rng.uniform(2, 4)
        h = np.zeros(frame.shape)
        for d_um in median * np.exp(np.array([-0.4, 0.0, 0.4])):
            r = d_um / 2 / p
            n = int(math.ceil(r)) + 1
            yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
            rho2 = (xx ** 2 + yy ** 2) / r ** 2
            dimple = -np.sqrt(np.clip(1 - rho2, 0, None))  # spherical-ish cap, unit depth
            dens = coverage / 3 / (math.pi * r * r)
            h += convolve(splat_points(frame.shape, rng, dens), dimple) * rng.uniform(0.05, 0.15) * d_um
    albedo = rng.uniform(0.4, 0.7)
    return record(compose(frame, rng, albedo * shade(h, p)), rng)


def _discs(rng, shape, centres_x, centres_y, radii_px) -> np.ndarray:
    """Coverage image of soft-edged discs (max over discs)."""
    out = np.zeros(shape)
    h, w = shape
    for cx, cy, r in zip(centres_x, centres_y, radii_px):
        n = int(math.ceil(r)) + 2
        x0, x1 = max(0, int(cx) - n), min(w, int(cx) + n + 1)
        y0, y1 = max(0, int(cy) - n), min(h, int(cy) + n + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        c = np.clip(r + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], c)
    return out


def cast(rng, frame: Frame, variant: str) -> np.ndarray:
    """As-cast metal. ``sand``: the mould's sand grains (0.1-0.3 mm) print a rough relief of
    3-15 µm rms; ``die``: a die-cast skin, 0.5-2 µm rms at 50-150 µm. Both: low-frequency
    mottling of the albedo (oxide, segregation) by ±5-20 % over 0.5-3 mm, and gas or shrinkage
    pores, 0.5-5 per mm², log-normal diameters (median 80-250 µm), dark (albedo x0.15-0.5)
    and 5-30 µm deep. Albedo 0.3-0.6."""
    p = frame.pixel_um
    if variant == "sand":
        h = rng.uniform(3, 15) * field(rng, frame.shape, rng.uniform(100, 300) / p / 2)
        h += 0.3 * rng.uniform(3, 15) * field(rng, frame.shape, rng.uniform(20, 50) / p)
    else:
        h = rng.uniform(0.5, 2.0) * field(rng, frame.shape, rng.uniform(50, 150) / p / 2)
    albedo = rng.uniform(0.3, 0.6) * (1 + rng.uniform(0.05, 0.2) * field(rng, frame.shape, rng.uniform(500, 3000) / p / 2))
    area_mm2 = frame.height * frame.width * (p * 1e-3) ** 2
    n = rng.poisson(rng.uniform(0.5, 5) * area_mm2)
    radii = rng.uniform(80, 250) * np.exp(0.5 * rng.standard_normal(n)) / 2 / p
    pores = _discs(rng, frame.shape, rng.uniform(0, frame.width, n), rng.uniform(0, frame.height, n), radii)
    pores = blur(pores, 1.0)
    h = h - pores * rng.uniform(5, 30)
    albedo = albedo * (1 - pores * (1 - rng.uniform(0.15, 0.5)))
    return record(compose(frame, rng, np.clip(albedo, 0.01, None) * shade(h, p)), rng)


def paper(rng, frame: Frame, variant: str) -> np.ndarray:
    """Paper: a felt of cellulose fibres. Fibres 15-40 µm wide and 0.5-3.5 mm long (log-normal;
    hardwood ~1 mm, softwood ~3 mm), gently curved, lying in the sheet's plane with a slight
    preference for the machine direction, 3-8 deep, each 2-6 µm of relief; the formation (flocs
    of fibres) varies the albedo by 3-8 % over 1-4 mm. ``copy``: white (albedo 0.78-0.92),
    short fibres; ``kraft``: brown (0.4-0.55), long fibres; ``blotting``: white, loose and
    deep (more relief)."""
    p = frame.pixel_um
    hh, ww = frame.shape
    median_len = {"copy": 0.9, "kraft": 2.2, "blotting": 1.5}[variant]
    width = rng.uniform(15, 40)
    layers = rng.uniform(3, 8)
    area = hh * ww * (p * 1e-3) ** 2
    n = int(min(layers * area / (median_len * width * 1e-3), 60_000))
    lengths = np.clip(median_len * np.exp(0.4 * rng.standard_normal(n)), 0.3, 3.5) * 1e3 / p
    md = rng.uniform(0, math.pi)
    theta = np.where(rng.random(n) < 0.3, md + rng.normal(0, 0.3, n), rng.uniform(0, math.pi, n))
    lines = splat_lines(frame.shape, rng.uniform(0, ww, n), rng.uniform(0, hh, n), theta, lengths,
                        rng.uniform(0.5, 1.5, n), curvature=rng.normal(0, 1.0 / (2e3 / p), n), step=1.5)
    sig = width / p / 2.355
    relief = {"copy": 2.0, "kraft": 4.0, "blotting": 6.0}[variant]
    h = blur(lines, sig) * (2 * math.pi) ** 0.5 * sig * 1.5 / layers * relief * rng.uniform(0.7, 1.3)
    base = {"copy": (0.78, 0.92), "kraft": (0.4, 0.55), "blotting": (0.8, 0.9)}[variant]
    albedo = rng.uniform(*base) * (1 + rng.uniform(0.03, 0.08) * field(rng, frame.shape, rng.uniform(1000, 4000) / p / 2))
    return record(compose(frame, rng, albedo * shade(h, p)), rng)


WEAVES = {
    "plain": lambda i, j: (i + j) % 2 == 0,
    "twill": lambda i, j: (i - j) % 4 < 2,  # 2/2 twill: diagonal ribs
    "basket": lambda i, j: (i // 2 + j // 2) % 2 == 0,
}


def fabric(rng, frame: Frame, variant: str) -> np.ndarray:
    """Woven cloth: warp and weft yarns crossing over and under each other in the weave's
    pattern (``plain``, 2/2 ``twill``, ``basket``). Thread pitch 150-600 µm (warp) and 0.8-1.25
    times that (weft); yarns are elliptical in section, 10-60 µm high, crimped up and down by
    0.6 of that where they cross (the yarn on top shows), and twisted (fibre striations of 4 %
    of the height at a quarter of the pitch, 20-35° to the yarn); the cloth is turned at any
    angle and its threads wander by ~2 % of the pitch over millimetres. Warp and weft differ in
    albedo by up to 15 % (0.3-0.8: a denim's dyed warp and white weft)."""
    x, y = frame.mm()
    p = frame.pixel_um
    pw = rng.uniform(0.15, 0.6)
    pf = pw * rng.uniform(0.8, 1.25)
    a = rng.uniform(0, math.pi)
    u = x * math.cos(a) + y * math.sin(a) + 0.02 * pw * field(rng, frame.shape, 1500 / p / 2)
    v = -x * math.sin(a) + y * math.cos(a) + 0.02 * pf * field(rng, frame.shape, 1500 / p / 2)
    i, j = np.floor(u / pw).astype(np.int64), np.floor(v / pf).astype(np.int64)
    fa, fb = u / pw - i, v / pf - j
    weave = WEAVES[variant]
    height = rng.uniform(10, 60)
    crimp = 0.6 * height  # the yarn on top rises, the one below sinks: the weave shows
    tw = math.tan(math.radians(rng.uniform(20, 35)))

    def crimp_along(t: np.ndarray, sign_at) -> np.ndarray:
        # +1 at the centre of a cell where the yarn is on top, -1 where below, a cosine between
        t = t - 0.5
        k0 = np.floor(t).astype(np.int64)
        wgt = (1 - np.cos(math.pi * (t - k0))) / 2
        return sign_at(k0) * (1 - wgt) + sign_at(k0 + 1) * wgt

    warp = height * np.sqrt(np.clip(1 - (2 * fa - 1) ** 2, 0, None))
    warp += crimp * crimp_along(v / pf, lambda jj: np.where(weave(i, jj), 1.0, -1.0))
    warp += 0.04 * height * np.sin(2 * math.pi * (v + tw * u) / (pw / 4))
    weft = height * np.sqrt(np.clip(1 - (2 * fb - 1) ** 2, 0, None))
    weft += crimp * crimp_along(u / pw, lambda ii: np.where(weave(ii, j), -1.0, 1.0))
    weft += 0.04 * height * np.sin(2 * math.pi * (u + tw * v) / (pf / 4))
    top_warp = warp >= weft
    h = np.where(top_warp, warp, weft)
    a_warp = rng.uniform(0.3, 0.8)
    a_weft = a_warp * (1 + rng.uniform(-0.15, 0.15))
    albedo = np.where(top_warp, a_warp, a_weft)
    return record(compose(frame, rng, albedo * shade(blur(h, 0.7), p)), rng)


def jpeg_blocking(rng, frame: Frame, variant: str) -> np.ndarray:
    """A smooth image ruined by JPEG: smooth shading at 1-5 mm (a few gradients and soft
    blobs, no texture finer than ~0.5 mm) on the part's outline, recorded, saved as JPEG at
    quality 5-20 (``low``: 5-10, ``mid``: 11-20) and decoded again. The 8x8-pixel DCT blocks
    (85 µm at 10.6 µm/px) and their ringing are the only fine structure: a strong periodic
    pattern at 85 µm, near the DLS pixel pitch (75-100 µm), that no printer made."""
    p = frame.pixel_um
    rad = rng.uniform(0.3, 0.7) * (1 + 0.25 * field(rng, frame.shape, rng.uniform(1000, 5000) / p / 2))
    x, y = frame.mm()
    g = rng.normal(0, 0.02, 2)
    rad = rad * (1 + g[0] * x + g[1] * y)
    img = record(compose(frame, rng, np.clip(rad, 0.01, None)), rng)
    q = int(rng.integers(5, 11)) if variant == "low" else int(rng.integers(11, 21))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.uint8).copy()


def halftone(rng, frame: Frame, variant: str) -> np.ndarray:
    """A printed image on paper. ``am``: an amplitude-modulated dot screen of 85-175 lines per
    inch (cell 145-300 µm), turned 15°, 45° or 75°: ink dots grow with the tone; ``fm``: a
    stochastic screen of 20-40 µm dots whose density follows the tone. The tone is a smooth
    picture (features of 1-6 mm); ink albedo 0.05-0.2 on paper of 0.8-0.9 with ±3 %
    formation; dot gain blurs the dots by 5-15 µm."""
    p = frame.pixel_um
    x, y = frame.mm()
    tone = np.clip(0.5 + 0.22 * field(rng, frame.shape, rng.uniform(1000, 6000) / p / 2), 0.02, 0.98)
    if variant == "am":
        cell = 25.4 / rng.uniform(85, 175)  # mm
        a = math.radians(float(rng.choice([15, 45, 75])))
        u = x * math.cos(a) + y * math.sin(a)
        v = -x * math.sin(a) + y * math.cos(a)
        spot = 0.5 + 0.25 * (np.cos(2 * math.pi * u / cell) + np.cos(2 * math.pi * v / cell))
        ink = (spot < tone).astype(np.float64)
    else:
        noise = field(rng, frame.shape, rng.uniform(20, 40) / p / 2.355)
        # the noise's rank is uniform: ink where it is below the tone
        ranks = np.argsort(np.argsort(noise, axis=None)).reshape(frame.shape) / noise.size
        ink = (ranks < tone).astype(np.float64)
    ink = np.clip(blur(ink, rng.uniform(5, 15) / p), 0, 1)
    paper_a = rng.uniform(0.8, 0.9) * (1 + 0.03 * field(rng, frame.shape, 2000 / p / 2))
    albedo = paper_a * (1 - ink) + rng.uniform(0.05, 0.2) * ink
    return record(compose(frame, rng, albedo), rng)


@dataclass(frozen=True)
class Family:
    fn: Callable
    variants: tuple[str, ...]
    layout: str  # "part" (outline on the lid) or "frame" (whole frame) or "scan" (from a scan)
    needs_scan: bool = False

    def layout_of(self, variant: str) -> str:
        if self.layout == "mixed":
            return "part" if variant == "part" else "frame"
        return self.layout


FAMILIES: dict[str, Family] = {
    "uniform_noise": Family(uniform_noise, ("gray", "rgb"), "frame"),
    "gaussian_noise": Family(gaussian_noise, ("gray", "rgb", "part"), "mixed"),
    "blank": Family(blank, ("black", "gray", "white", "part"), "mixed"),
    "defocus": Family(defocus, ("gaussian", "disk"), "scan", needs_scan=True),
    "machined": Family(machined, ("turned", "faced", "milled"), "part"),
    "sanded": Family(sanded, ("sanded", "crosshatch", "blasted"), "part"),
    "cast": Family(cast, ("sand", "die"), "part"),
    "paper": Family(paper, ("copy", "kraft", "blotting"), "part"),
    "fabric": Family(fabric, ("plain", "twill", "basket"), "part"),
    "jpeg_blocking": Family(jpeg_blocking, ("low", "mid"), "part"),
    "halftone": Family(halftone, ("am", "fm"), "part"),
}
NOISE_FAMILIES = ("uniform_noise", "gaussian_noise")


def image_seed(base_seed: int, family: str, index: int) -> int:
    """The seed of image ``index`` of ``family`` under a base seed: stable across runs,
    platforms and the other families (a hash of the family's name, not its position)."""
    ss = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, zlib.crc32(family.encode()), int(index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def read_scan(path: str | Path) -> tuple[np.ndarray, float]:
    """An 8-bit gray scan and its recorded pixel size (PNG pHYs; 10.6 µm when absent)."""
    with Image.open(path) as im:
        dpi = im.info.get("dpi")
        a = np.asarray(im.convert("L"), dtype=np.uint8).copy()
    um = 25400.0 / float(dpi[0]) if dpi and dpi[0] else SCANNER_PIXEL_UM
    return a, um


def generate(family: str, seed: int, variant: str | None = None, *, pixel_um: float = SCANNER_PIXEL_UM,
             shape: tuple[int, int] | None = None, scans: list[Path] | None = None,
             rgb: bool = False) -> tuple[np.ndarray, dict]:
    """One image of ``family`` from ``seed`` alone: (uint8 [H, W] or [H, W, 3], info).

    ``variant`` defaults to one drawn from the seed. ``shape=(H, W)`` forces the frame size
    (tests); otherwise it is a scan's of a random design. ``scans``: the scans ``defocus``
    blurs (one is chosen from the seed). ``rgb``: write three channels (gray surfaces are
    replicated with a slight colour cast, as a phone's camera would record them; the noise
    families' ``rgb`` variants are independent per channel anyway)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown texture family {family!r}; known: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    rng = np.random.default_rng(seed)
    if variant is None:
        variant = fam.variants[int(rng.integers(len(fam.variants)))]
    elif variant not in fam.variants:
        raise ValueError(f"{family}: unknown variant {variant!r}; known: {', '.join(fam.variants)}")
    layout = fam.layout_of(variant)
    if fam.needs_scan:
        if not scans:
            raise ValueError(f"{family} blurs real `amfp synth` scans: pass scans (--scans DIR or --amfp BIN)")
        path = scans[int(rng.integers(len(scans)))]
        scan, pixel_um = read_scan(path)
        if shape is not None:
            scan = scan[: shape[0], : shape[1]]
        img = fam.fn(rng, Frame(scan.shape[0], scan.shape[1], pixel_um, "scan", None), variant, scan, pixel_um)
    else:
        frame = make_frame(rng, pixel_um, part=(layout == "part"), shape=shape)
        img = fam.fn(rng, frame, variant)
    if rgb and img.ndim == 2:
        cast_ = 1 + rng.uniform(-0.04, 0.04, 3)
        img = np.clip(np.rint(img[..., None].astype(np.float64) * cast_), 0, 255).astype(np.uint8)
    info = {"family": family, "variant": variant, "seed": int(seed), "layout": layout,
            "channels": 1 if img.ndim == 2 else img.shape[2], "height": img.shape[0], "width": img.shape[1],
            "pixel_size_um": round(float(pixel_um), 4)}
    return img, info


def save(img: np.ndarray, path: Path, pixel_um: float, jpeg_quality: int | None = None) -> None:
    """PNG with the pixel size in ``pHYs`` (as `amfp synth` writes it), or JPEG with it in the
    JFIF density."""
    dpi = 25400.0 / pixel_um
    im = Image.fromarray(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    if jpeg_quality is not None:
        im.save(path, format="JPEG", quality=int(jpeg_quality), dpi=(round(dpi), round(dpi)))
    else:
        im.save(path, format="PNG", dpi=(dpi, dpi), compress_level=1)


def simulate_scans(amfp: str, out: Path, seed: int, machines: str = "M2-1,F3B-1,S450-1,5200-1",
                   parts: int = 2) -> list[Path]:
    """Real `amfp synth` scans for ``defocus`` to blur (a few parts of one machine per process)."""
    if not (out / "labels.csv").exists():
        subprocess.run([amfp, "synth", "--out", str(out), "--machines", machines, "--parts-per-machine",
                        str(parts), "--seed", str(seed), "--overwrite", "--threads", "2"],
                       check=True, capture_output=True, text=True)
    with open(out / "labels.csv", newline="") as f:
        return [out / r["file"] for r in csv.DictReader(f)]


def write_textures(out: str | Path, per_family: int, seed: int, families: list[str] | None = None,
                   rgb: str = "noise", jpeg_quality: int | None = None, scans: list[Path] | None = None,
                   pixel_um: float = SCANNER_PIXEL_UM, shape: tuple[int, int] | None = None,
                   log: Callable[[str], None] | None = None) -> list[dict]:
    """Write ``per_family`` images of each family under ``out`` and ``out/textures.csv``.

    Variants cycle within a family (image i gets variant i mod their number), so every variant
    is represented once ``per_family`` reaches their number. ``rgb``: ``noise`` (the noise
    families' ``rgb`` variants are RGB, all else gray), ``all`` (every image RGB), ``none``
    (the noise families' ``rgb`` variants are skipped: all gray). A family that needs scans is
    skipped (with a message) when none are given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    suffix = ".jpg" if jpeg_quality is not None else ".png"
    for fam_name in families or list(FAMILIES):
        fam = FAMILIES[fam_name]
        if fam.needs_scan and not scans:
            if log:
                log(f"{fam_name}: skipped (needs `amfp synth` scans: --scans DIR or --amfp BIN)")
            continue
        variants = [v for v in fam.variants if not (rgb == "none" and v == "rgb")]
        t0 = time.time()
        for i in range(per_family):
            s = image_seed(seed, fam_name, i)
            img, info = generate(fam_name, s, variants[i % len(variants)], pixel_um=pixel_um, shape=shape,
                                 scans=scans, rgb=(rgb == "all"))
            rel = f"{fam_name}/{fam_name}-{i:04d}{suffix}"
            save(img, out / rel, info["pixel_size_um"], jpeg_quality)
            rows.append({"file": rel, **info})
        if log:
            log(f"{fam_name}: {per_family} images in {time.time() - t0:.1f} s")
    with open(out / "textures.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return rows


def read_textures(out: str | Path) -> list[dict]:
    """The rows of ``out/textures.csv``, ``file`` made a path."""
    out = Path(out)
    with open(out / "textures.csv", newline="") as f:
        return [dict(r, path=out / r["file"]) for r in csv.DictReader(f)]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-family", type=int, default=6)
    ap.add_argument("--seed", type=int, required=True,
                    help="base seed; the open-set benchmark uses its own (docs/openset.md): training and "
                         "calibration must use others, so that no evaluation texture is seen before")
    ap.add_argument("--families", default="", help=f"comma-separated (default all: {', '.join(FAMILIES)})")
    ap.add_argument("--rgb", choices=["noise", "all", "none"], default="noise",
                    help="noise: the noise families' rgb variants are RGB (default); all: every image RGB; none: gray only")
    ap.add_argument("--jpeg-quality", type=int, default=None, help="write JPEG at this quality instead of PNG")
    ap.add_argument("--pixel-um", type=float, default=SCANNER_PIXEL_UM)
    ap.add_argument("--scans", help="directory of `amfp synth` scans (its labels.csv) for the defocus family")
    ap.add_argument("--amfp", help="amfp binary: simulate the scans that defocus blurs (into OUT/_scans)")
    a = ap.parse_args(argv)
    families = [f for f in a.families.split(",") if f] or None
    for f in families or []:
        if f not in FAMILIES:
            ap.error(f"unknown family {f!r}; known: {', '.join(FAMILIES)}")
    scans = None
    if a.scans:
        with open(Path(a.scans) / "labels.csv", newline="") as f:
            scans = [Path(a.scans) / r["file"] for r in csv.DictReader(f)]
    elif a.amfp:
        scans = simulate_scans(a.amfp, Path(a.out) / "_scans", a.seed)
    rows = write_textures(a.out, a.per_family, a.seed, families, a.rgb, a.jpeg_quality, scans, a.pixel_um,
                          log=lambda m: print(m, file=sys.stderr))
    print(f"{len(rows)} images in {a.out} (textures.csv)")
    return rows


if __name__ == "__main__":
    main()
