"""Foreground mask and ROI sampling: the foreground threshold is respected, ROIs are reproducible."""

import numpy as np
import pytest

from amfp_train.dataset import read_dataset
from amfp_train.evaluate import eval_rois
from amfp_train.roi import (RoiError, augment, foreground_mask, make_part_image, otsu,
                            sample_positions, sample_rois)
from amfp_train.store import PartStore


def part_with_hole(h=120, w=160):
    rng = np.random.default_rng(0)
    img = rng.normal(0.05, 0.01, (h, w)).astype(np.float32)
    mask = np.zeros((h, w), bool)
    mask[20:100, 30:140] = True
    mask[40:70, 60:90] = False  # a hole
    img[mask] = rng.normal(0.6, 0.08, mask.sum())
    return img, mask


def test_otsu_finds_the_part():
    img, mask = part_with_hole()
    t, eta = otsu(img)
    assert 0.1 < t < 0.5 and eta > 0.85
    m = foreground_mask(img, "scanner")
    assert (m == mask).mean() > 0.99
    assert foreground_mask(img, "auto").sum() == m.sum()


def test_microscope_frames_are_all_foreground():
    rng = np.random.default_rng(1)
    tex = (0.5 + 0.2 * np.sin(np.arange(200) / 3.0)[None, :] + rng.normal(0, 0.05, (100, 200))).astype(np.float32)
    assert foreground_mask(tex, "microscope").all()
    assert foreground_mask(tex, "auto").all()  # no clear part/background split


@pytest.mark.parametrize("min_fg", [0.5, 0.9, 1.0])
def test_sampler_respects_min_foreground(min_fg):
    img, mask = part_with_hole()
    roi = 24
    pim = make_part_image(img, mask, roi, min_fg)
    pos = sample_positions(pim, 200, np.random.default_rng(2))
    assert len(pos) == 200
    for y, x in pos:
        assert mask[y:y + roi, x:x + roi].mean() >= min_fg
    # and the ROIs spread over the part, not one spot
    assert len({tuple(p) for p in pos}) > 100


def test_sampler_falls_back_to_best_when_nothing_fits():
    img, mask = part_with_hole()
    pim = make_part_image(img, mask, 90, 0.99)
    assert pim.n_valid == 0
    pos = sample_positions(pim, 4, np.random.default_rng(3))
    assert len(pos) == 4  # best effort: the most-foreground corners
    fg = [mask[y:y + 90, x:x + 90].mean() for y, x in pos]
    assert min(fg) >= pim.best_fg[7] - 1e-9 and pim.best_fg[0] == max(
        mask[y:y + 90, x:x + 90].mean() for y in range(0, 31) for x in range(0, 71))
    with pytest.raises(RoiError):
        make_part_image(img, mask, 200, 0.5)


def test_sampler_with_rare_valid_corners():
    img, mask = part_with_hole()
    pim = make_part_image(img, mask, 50, 0.98)  # only a few corners fit beside the hole
    assert 0 < pim.n_valid and pim.dense is not None
    pos = sample_positions(pim, 50, np.random.default_rng(5))
    assert all(mask[y:y + 50, x:x + 50].mean() >= 0.98 for y, x in pos)


def test_rois_from_dataset_lie_on_the_part(dataset):
    ds = read_dataset(dataset["dir"])
    from amfp_train.dataset import load_gray, resample

    store = PartStore(42.4, 32, 0.8)
    rng = np.random.default_rng(4)
    for p in ds.parts[:4]:
        ims = store.get(p)
        pim = ims[0]
        img = resample(load_gray(p.files[0]), p.pixel_size_um, 42.4)
        mask = foreground_mask(img, p.mode)
        assert 0.2 < mask.mean() < 0.95, "a part on a background"
        pos = sample_positions(pim, 32, rng)
        fg = np.array([mask[y:y + 32, x:x + 32].mean() for y, x in pos])
        assert (fg >= 0.8).all(), f"{dataset['source']}: part {p.serial}"
        rois = sample_rois(ims, 8, rng)
        assert rois.shape == (8, 32, 32) and rois.dtype == np.float32


def test_eval_rois_are_reproducible(dataset):
    ds = read_dataset(dataset["dir"])
    p = ds.parts[0]
    a = eval_rois(p, PartStore(42.4, 32, 0.8), 16, seed=9)
    b = eval_rois(p, PartStore(42.4, 32, 0.8), 16, seed=9)
    c = eval_rois(p, PartStore(42.4, 32, 0.8), 16, seed=10)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augment_is_a_square_symmetry():
    r = np.arange(2 * 16, dtype=np.float32).reshape(2, 4, 4)
    out = augment(r, np.random.default_rng(0))
    for a, b in zip(r, out):
        syms = [np.rot90(a, k) for k in range(4)] + [np.rot90(a, k)[:, ::-1] for k in range(4)]
        assert any(np.array_equal(b, s) for s in syms)


def test_8bit_scans_stay_uint8_at_native_pixel_size(tmp_path):
    from PIL import Image

    from amfp_train.dataset import Part, load_gray
    from amfp_train.roi import crop, load_part_images

    img, _ = part_with_hole()
    Image.fromarray((img * 255).clip(0, 255).astype(np.uint8)).save(tmp_path / "p.png")
    part = Part("p", "a", "train", [tmp_path / "p.png"], 10.6, "scanner")
    native = load_part_images(part, 10.6, 24, 0.9)[0]
    half = load_part_images(part, 21.2, 12, 0.9)[0]
    assert native.img.dtype == np.uint8 and half.img.dtype == np.float16
    pos = sample_positions(native, 5, np.random.default_rng(0))
    ref = load_gray(tmp_path / "p.png")
    for r, (y, x) in zip(crop(native, pos), pos):
        assert np.allclose(r, ref[y:y + 24, x:x + 24], atol=1e-6)
