"""Non-AM textures (amfp_train.textures): deterministic, laid out like scans, physically distinct."""

import csv
import itertools

import numpy as np
import pytest
from PIL import Image

from amfp_train import textures as tx

SMALL = (192, 192)
SURFACES = [f for f, fam in tx.FAMILIES.items() if not fam.needs_scan]


def surface(family: str, seed: int, variant: str, shape=SMALL) -> np.ndarray:
    """A family's surface over a whole small frame (no outline), gray."""
    rng = np.random.default_rng(seed)
    img = tx.FAMILIES[family].fn(rng, tx.make_frame(rng, part=False, shape=shape), variant)
    return img.mean(2) if img.ndim == 3 else img.astype(np.float64)


def band_power(img: np.ndarray) -> np.ndarray:
    """log10 of the share of the power in octave bands of spatial frequency (cycles/px)."""
    a = img - img.mean()
    p = np.abs(np.fft.fft2(a)) ** 2
    r = np.hypot(np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :])
    edges = [0.004, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.71]
    b = np.array([p[(r >= lo) & (r < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    return np.log10(b / b.sum() + 1e-9)


def peak_period_um(img: np.ndarray, pixel_um: float = tx.SCANNER_PIXEL_UM, min_cycles: int = 4) -> float:
    """Period (µm) of the strongest non-DC spatial frequency."""
    a = img - img.mean()
    p = np.abs(np.fft.fft2(a)) ** 2
    fy, fx = np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :]
    r = np.hypot(fx, fy)
    p[r < min_cycles / max(a.shape)] = 0
    i = np.unravel_index(np.argmax(p), p.shape)
    return pixel_um / r[i]


def test_deterministic_per_seed_and_seeds_differ():
    for family in SURFACES:
        fam = tx.FAMILIES[family]
        v = fam.variants[-1]
        a, ia = tx.generate(family, 12345, v, shape=(96, 128))
        b, ib = tx.generate(family, 12345, v, shape=(96, 128))
        c, _ = tx.generate(family, 12346, v, shape=(96, 128))
        assert np.array_equal(a, b) and ia == ib, family
        assert not np.array_equal(a, c), family
    # the seed of image i of a family depends on the base seed, the family's name and i only
    assert tx.image_seed(7, "paper", 3) == tx.image_seed(7, "paper", 3)
    assert len({tx.image_seed(7, f, i) for f in tx.FAMILIES for i in range(5)}) == 5 * len(tx.FAMILIES)


@pytest.mark.parametrize("family,variant", [("machined", "turned"), ("uniform_noise", "rgb"), ("blank", "black")])
def test_scan_sized_8bit_frames(family, variant):
    img, info = tx.generate(family, 3, variant)
    assert img.dtype == np.uint8
    # the frame is a scan's of one of the three designs (15 x 9 or 12 x 12 mm + 2 x 0.8 mm of glass) at 10.6 µm
    sizes = {int(np.ceil((2 * e + 1.6) / 0.0106)) for e in (7.5, 4.5, 6.0)}
    assert min(img.shape[:2]) >= min(sizes) - 40 and max(img.shape[:2]) <= max(sizes) + 60
    assert info["channels"] == (3 if variant == "rgb" else 1) and img.ndim == (3 if variant == "rgb" else 2)
    assert info["pixel_size_um"] == 10.6


def test_part_layout_is_a_bright_part_on_the_dark_lid():
    rng = np.random.default_rng(5)
    frame = tx.make_frame(rng)
    cov = frame.coverage
    assert 0.3 < cov.mean() < 0.9  # the outline fills much of the frame, the holes and glass do not
    img, _ = tx.generate("paper", 5, "copy")
    border = np.concatenate([img[:5].ravel(), img[-5:].ravel(), img[:, :5].ravel(), img[:, -5:].ravel()])
    assert border.mean() < 80 < 150 < np.percentile(img, 90)  # dark glass (lid 0.035 -> ~45/255), white paper


def test_cli_writes_images_and_csv(tmp_path):
    rows = tx.main(["--out", str(tmp_path), "--per-family", "3", "--seed", "9", "--families", "uniform_noise,blank"])
    assert len(rows) == 6
    with open(tmp_path / "textures.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["family"] for r in got] == ["uniform_noise"] * 3 + ["blank"] * 3
    assert got[1]["variant"] == "rgb" and got[1]["channels"] == "3"  # variants cycle
    for r in got:
        with Image.open(tmp_path / r["file"]) as im:
            assert im.size == (int(r["width"]), int(r["height"]))
            assert im.mode == ("RGB" if r["channels"] == "3" else "L")
            assert abs(25400 / im.info["dpi"][0] - 10.6) < 0.01  # pixel size recorded, as amfp synth does
        again, _ = tx.generate(r["family"], int(r["seed"]), r["variant"])  # reproducible from the row alone
        assert np.array_equal(np.asarray(Image.open(tmp_path / r["file"])), again)
    # gray only
    rows = tx.main(["--out", str(tmp_path / "g"), "--per-family", "2", "--seed", "9", "--families", "uniform_noise",
                    "--rgb", "none"])
    assert {r["channels"] for r in rows} == {1}


def test_families_differ():
    """Surface families differ in how their power spreads over spatial frequency; the two white
    noises (same flat spectrum) differ in their histograms."""
    feats = {}
    for family in [f for f in SURFACES if f not in ("blank",)]:
        fam = tx.FAMILIES[family]
        feats[family] = np.mean([band_power(surface(family, 40 + i, fam.variants[i % len(fam.variants)]))
                                 for i in range(3)], axis=0)
    for a, b in itertools.combinations(feats, 2):
        if {a, b} == {"uniform_noise", "gaussian_noise"}:
            continue
        assert np.abs(feats[a] - feats[b]).sum() > 0.8, (a, b, feats[a], feats[b])

    def kurtosis(x):
        x = x.ravel() - x.mean()
        return (x ** 4).mean() / (x ** 2).mean() ** 2

    for seed in range(3):  # uniform: 1.8; Gaussian: 3, less where the tails clip
        assert kurtosis(surface("uniform_noise", seed, "gray")) + 0.4 < kurtosis(surface("gaussian_noise", seed, "gray"))


def test_noise_is_white_and_rgb_channels_independent():
    rng = np.random.default_rng(0)
    img = tx.uniform_noise(rng, tx.make_frame(rng, part=False, shape=(256, 256)), "rgb")
    assert img.shape == (256, 256, 3)
    c = np.corrcoef(img.reshape(-1, 3).T.astype(float))
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 0.02
    bp = band_power(img[..., 0].astype(float))
    assert bp[-1] > bp[0] + 2  # flat spectrum: the top octave holds most of the power


def test_machined_grooves_at_the_feed_pitch():
    # straight turning grooves repeat at the feed, 50-300 µm
    for seed in range(3):
        period = peak_period_um(surface("machined", seed, "turned", shape=(256, 256)))
        assert 45 < period < 320, period


def test_halftone_screen_and_fabric_pitch():
    for seed in range(2):
        cell = peak_period_um(surface("halftone", seed, "am", shape=(256, 256)))
        # an AM screen's strongest frequency is along its axes (cell 145-300 µm) or diagonal (/sqrt 2)
        assert 145 / 1.5 < cell < 300 * 1.05, cell


def test_jpeg_blocking_has_8px_blocks():
    img = surface("jpeg_blocking", 2, "low", shape=(256, 256))
    d = np.abs(np.diff(img, axis=1)).mean(axis=0)  # column-to-column steps
    at_edges = d[7::8].mean()
    inside = np.delete(d, np.arange(7, d.size, 8)).mean()
    assert at_edges > 2 * inside


def test_blank_frames_are_flat():
    for variant, lo, hi in (("black", 0, 40), ("gray", 100, 210), ("white", 235, 256)):
        img = surface("blank", 1, variant, shape=(64, 64))
        assert lo <= img.mean() < hi and img.std() < 4, (variant, img.mean(), img.std())


def test_defocus_removes_fine_texture(tmp_path):
    # a "scan": a fine checkerboard of 4 px (42 µm) on a part, with its pixel size recorded
    yy, xx = np.mgrid[:160, :200]
    scan = np.where(((xx // 4 + yy // 4) % 2) == 0, 200, 120).astype(np.uint8)
    scan[:20] = 50
    path = tmp_path / "scan.png"
    tx.save(scan, path, 10.6)
    for variant in ("gaussian", "disk"):
        img, info = tx.generate("defocus", 4, variant, scans=[path])
        assert img.shape == scan.shape and info["pixel_size_um"] == pytest.approx(10.6, abs=0.01)
        hi = lambda a: band_power(a.astype(float))[-2:]  # noqa: E731  top two octaves
        assert (hi(img) < hi(scan) - 1).all() or img[40:].std() < 0.2 * scan[40:].std()
    with pytest.raises(ValueError, match="scans"):
        tx.generate("defocus", 4)
