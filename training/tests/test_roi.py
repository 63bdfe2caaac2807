"""Foreground mask and ROI sampling: the foreground threshold is respected, ROIs are reproducible."""

import numpy as np
import pytest

from amfp_train.dataset import read_dataset
from amfp_train.evaluate import eval_rois
from amfp_train.roi import (PartImage, RoiError, augment, foreground_mask, integral, otsu,
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
    pim = PartImage(img.astype(np.float16), integral(mask))
    roi = 24
    pos = sample_positions(pim, 200, roi, min_fg, np.random.default_rng(2))
    assert len(pos) == 200
    for y, x in pos:
        assert mask[y:y + roi, x:x + roi].mean() >= min_fg
    # and the ROIs spread over the part, not one spot
    assert len({tuple(p) for p in pos}) > 100


def test_sampler_falls_back_to_best_when_nothing_fits():
    img, mask = part_with_hole()
    pim = PartImage(img.astype(np.float16), integral(mask))
    pos = sample_positions(pim, 4, 90, 0.99, np.random.default_rng(3), max_tries=8)
    assert len(pos) == 4  # best effort: the most foreground found
    with pytest.raises(RoiError):
        sample_positions(pim, 1, 200, 0.5, np.random.default_rng(3))


def test_rois_from_dataset_lie_on_the_part(dataset):
    ds = read_dataset(dataset["dir"])
    store = PartStore(42.4)
    rng = np.random.default_rng(4)
    for p in ds.parts[:4]:
        ims = store.get(p)
        pim = ims[0]
        pos = sample_positions(pim, 32, 32, 0.8, rng)
        fg = pim.fg_fraction(pos[:, 0], pos[:, 1], 32)
        assert (fg >= 0.8).all(), f"{dataset['source']}: part {p.serial}"
        rois = sample_rois(ims, 8, 32, 0.8, rng)
        assert rois.shape == (8, 32, 32) and rois.dtype == np.float32


def test_eval_rois_are_reproducible(dataset):
    ds = read_dataset(dataset["dir"])
    p = ds.parts[0]
    a = eval_rois(p, PartStore(42.4), 16, 32, 0.8, seed=9)
    b = eval_rois(p, PartStore(42.4), 16, 32, 0.8, seed=9)
    c = eval_rois(p, PartStore(42.4), 16, 32, 0.8, seed=10)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augment_is_a_square_symmetry():
    r = np.arange(2 * 16, dtype=np.float32).reshape(2, 4, 4)
    out = augment(r, np.random.default_rng(0))
    for a, b in zip(r, out):
        syms = [np.rot90(a, k) for k in range(4)] + [np.rot90(a, k)[:, ::-1] for k in range(4)]
        assert any(np.array_equal(b, s) for s in syms)
