"""Training: it runs, the loss falls, classes are sampled evenly, held-out machines stay out."""

import json

import numpy as np
import torch

from amfp_train.dataset import read_dataset
from amfp_train.store import BalancedRois, PartStore

from .conftest import train_args


def test_training_runs_and_loss_falls(trained, dataset):
    log = json.loads((trained["out"] / "train_log.json").read_text())
    h = log["history"]
    assert len(h) == 2
    assert all(np.isfinite(e["loss"]) for e in h)
    assert h[-1]["loss_last10"] < h[0]["loss_first"], f"loss did not fall on {dataset['source']}: {h}"
    assert "val_acc" in h[0] and 0.0 <= h[-1]["val_acc"] <= 1.0


def test_progressive_crops_and_late_validation(dataset, tmp_path):
    """--warm-roi/--warm-epochs train the first epochs on centre crops; --val-from-epoch validates
    only the late epochs, and the checkpoint is the best validated one (the model still takes
    whole ROIs)."""
    from amfp_train.train import parse_args, train

    cfg = parse_args(train_args(dataset["dir"], tmp_path, dataset["holdout"], "--epochs", "3",
                                "--warm-roi", "24", "--warm-epochs", "2", "--val-from-epoch", "3"))
    ckpt = train(cfg)
    h = json.loads((tmp_path / "train_log.json").read_text())["history"]
    assert [e["crop"] for e in h] == [24, 24, 32]
    assert ["val_acc" in e for e in h] == [False, False, True]
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert ck["epoch"] == 3 and ck["meta"]["roi_px"] == 32


def test_warm_roi_larger_than_the_roi_is_refused(dataset, tmp_path):
    import pytest

    from amfp_train.train import parse_args, train

    cfg = parse_args(train_args(dataset["dir"], tmp_path, dataset["holdout"],
                                "--warm-roi", "40", "--warm-epochs", "1"))
    with pytest.raises(ValueError, match="warm_roi 40"):
        train(cfg)


def test_checkpoint_knows_everything_the_contract_needs(trained, dataset):
    ck = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    meta = ck["meta"]
    assert dataset["holdout"] not in meta["labels"]
    assert meta["roi_px"] == 32 and meta["pixel_size_um"] == 42.4
    assert meta["std"] > 0 and 0 < meta["mean"] < 1
    assert meta["trained_on"].startswith("test:seed=3;parts=")
    ds = read_dataset(dataset["dir"])
    assert meta["trained_on"].endswith("sha256=" + ds.sha256)
    assert set(meta["label_process"]) == set(meta["labels"])


def test_classes_are_sampled_evenly(tmp_path):
    from amfp_train.fake import write_fake

    d = write_fake(tmp_path / "d", parts_per_machine=4, size=64, fleet={"A": ["a1", "a2"]},
                   splits=(0.5, 0.25, 0.25))
    ds = read_dataset(d)
    train = ds.split("train")
    # make a1 ten times as common as a2
    a1 = [p for p in train if p.label == "a1"]
    a2 = [p for p in train if p.label == "a2"][:1]
    parts = a1 * 10 + a2
    it = iter(BalancedRois(parts, ["a1", "a2"], 21.2, 16, 0.5, 64, 0.5, 0.2, 1, seed=0,
                           store=PartStore(21.2, 16, 0.5)))
    ys = np.concatenate([next(it)[1].numpy() for _ in range(20)])
    frac = (ys == 1).mean()
    assert 0.4 < frac < 0.6
    x, _ = next(it)
    assert x.shape == (64, 1, 16, 16) and x.dtype == torch.float32


def test_roi_batches_in_dataloader_workers(dataset):
    """The GPU path cuts ROIs in DataLoader worker processes, each with its own part cache."""
    ds = read_dataset(dataset["dir"])
    labels = ds.labels()
    data = BalancedRois(ds.split("train"), labels, 42.4, 32, 0.8, 8, 0.5, 0.2, 3, seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1)
    it = iter(loader)
    x, y = next(it)
    assert x.shape == (8, 3, 32, 32) and y.max() < len(labels)
    del it


def test_optimizers_and_schedule():
    import pytest

    from amfp_train.train import lr_factor, make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_optimizer("adamw", params, 1e-3, 0.01), torch.optim.AdamW)
    pytest.importorskip("timm")
    assert type(make_optimizer("lamb", params, 1e-3, 0.01)).__name__ == "Lamb"
    # warm-up, then exponential decay per epoch
    assert lr_factor(0, 100, 10, 0.5) == 0.1
    assert abs(lr_factor(100, 100, 10, 0.5) - 0.5) < 1e-12
    assert abs(lr_factor(200, 100, 10, 0.5) - 0.25) < 1e-12
