"""Reading datasets: labels.csv, ImageFolder with and without CSV, split by part, pixel values."""

import csv

import numpy as np
import pytest
from PIL import Image

from amfp_train.dataset import SPLITS, assign_splits, load_gray, read_dataset, resample
from amfp_train.fake import write_fake


def test_csv_dataset(dataset):
    ds = read_dataset(dataset["dir"], "machine")
    assert ds.layout == "csv" and len(ds.sha256) == 64
    assert len(ds.parts) >= 8
    assert all(p.files[0].is_file() for p in ds.parts)
    assert {p.split for p in ds.parts} <= set(SPLITS)
    assert all(p.pixel_size_um > 0 for p in ds.parts)
    lp = ds.label_process()
    assert set(lp) == set(ds.labels()) and "unknown" not in lp.values()


def test_any_column_is_a_task(dataset):
    ds = read_dataset(dataset["dir"], "process")
    assert len(ds.labels()) >= 3
    assert all(ds.label_process()[lab] == lab for lab in ds.labels())
    with pytest.raises(ValueError, match="no column"):
        read_dataset(dataset["dir"], "no_such_column")


def test_split_by_part_no_part_in_two_splits(dataset):
    ds = read_dataset(dataset["dir"])
    seen = {}
    for p in ds.parts:
        assert seen.setdefault(p.serial, p.split) == p.split
    # every machine has training parts
    train_labels = {p.label for p in ds.split("train")}
    assert train_labels == set(ds.labels())


def test_csv_part_in_two_splits_is_refused(tmp_path):
    d = write_fake(tmp_path / "d", parts_per_machine=2, size=64)
    rows = list(csv.DictReader(open(d / "labels.csv")))
    extra = dict(rows[0], split="test" if rows[0]["split"] != "test" else "train")
    with open(d / "labels.csv", "a", newline="") as f:
        csv.DictWriter(f, rows[0].keys()).writerow(extra)
    with pytest.raises(ValueError, match="two splits"):
        read_dataset(d)


def test_missing_split_column_assigns_by_part_stratified(tmp_path):
    d = write_fake(tmp_path / "d", parts_per_machine=10, size=48)
    rows = list(csv.DictReader(open(d / "labels.csv")))
    # two images of each part: both must land in the same split
    with open(d / "labels.csv", "w", newline="") as f:
        cols = [c for c in rows[0] if c != "split"]
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in rows:
            r.pop("split")
            w.writerow(r)
            w.writerow(r)
    ds = read_dataset(d, seed=5)
    assert all(len(p.files) == 2 for p in ds.parts)
    for lab in ds.labels():
        n = {s: sum(1 for p in ds.split(s) if p.label == lab) for s in SPLITS}
        assert n == {"train": 8, "val": 1, "test": 1}
    before = {p.serial: p.split for p in ds.parts}
    assign_splits(ds.parts, 5, 0.1, 0.1)
    assert before == {p.serial: p.split for p in ds.parts}  # reproducible


@pytest.mark.parametrize("layout", ["imagefolder", "imagefolder-nocsv"])
def test_imagefolder(tmp_path, layout):
    d = write_fake(tmp_path / "d", parts_per_machine=4, size=48, layout=layout)
    ds = read_dataset(d)
    assert ds.layout == ("csv" if layout == "imagefolder" else "imagefolder")
    assert len(ds.parts) == 24
    for p in ds.parts:  # the folder a file sits in agrees with its split and label
        assert p.files[0].parent.name == p.label
        assert p.files[0].parent.parent.name == p.split


def test_no_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        read_dataset(tmp_path)


def test_bit_depths_read_as_unit_intensity(tmp_path):
    a16 = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    a8 = np.array([[0, 255], [128, 4]], dtype=np.uint8)
    Image.fromarray(a16).save(tmp_path / "a16.png")
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(a8).save(tmp_path / "a8.jpg", quality=100)
    g16, g8 = load_gray(tmp_path / "a16.png"), load_gray(tmp_path / "a8.png")
    assert g16.dtype == np.float32 and g16.max() == 1.0 and abs(g16[1, 0] - 0.5) < 1e-3
    assert g8.max() == 1.0 and abs(g8[1, 0] - 128 / 255) < 1e-6
    assert load_gray(tmp_path / "a8.jpg").shape == (2, 2)


def test_resample_is_area_mean():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    r = resample(img, 10.6, 21.2)
    assert r.shape == (2, 2) and r[0, 0] == np.mean([0, 1, 4, 5])
    assert resample(img, 10.6, 10.6) is img
    assert resample(np.ones((30, 30), np.float32), 10.0, 15.0).shape == (20, 20)
    with pytest.raises(ValueError):
        resample(img, 21.2, 10.6)
