"""Robust training (issue 17): the photometric augmentations, the auxiliary units' names, the
auxiliary classes in training and the v4 recipe's settings reaching train.py. Fixed seeds, seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amfp_train import augment as A
from amfp_train import openset, reproduce

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"


def texture(n=4, size=96, seed=0, mean=0.5, amp=0.12) -> np.ndarray:
    """Smooth random texture (noise blurred at sigma 2 px) around `mean`: like a scan's surface."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, size, size), dtype=np.float32)
    z = A.gaussian_blur(z, np.full(n, 2.0))
    z /= z.std()
    return np.clip(mean + amp * z, 0.0, 1.0).astype(np.float32)


def hf_energy(x: np.ndarray) -> float:
    """Mean squared difference of neighbouring pixels (both axes): fine texture."""
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


# ----------------------------------------------------------------------------------------------
# the augmentations


def test_augmenter_is_deterministic_per_seed_and_keeps_shape_and_dtype():
    x = texture(8, 64)
    a = A.Augmenter("v4")
    y1 = a(x, np.random.default_rng(5))
    y2 = a(x, np.random.default_rng(5))
    y3 = a(x, np.random.default_rng(6))
    assert y1.shape == x.shape and y1.dtype == np.float32
    assert np.array_equal(y1, y2)
    assert not np.array_equal(y1, y3)
    assert y1.min() >= 0.0 and y1.max() <= 1.0
    assert np.array_equal(x, texture(8, 64))  # the input is not changed in place


def test_no_augmentation_draws_nothing_and_changes_nothing():
    """A spec of none must leave the training's random stream (hence v3's batches) untouched."""
    x = texture(2, 32)
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    a = A.Augmenter("none")
    assert not a
    assert a(x, rng) is x
    assert rng.bit_generator.state == before


def test_spec_parsing():
    assert A.parse_spec("v4") == A.DEFAULT_P
    assert list(A.parse_spec("jpeg,gamma:0.3,blur")) == ["blur", "gamma", "jpeg"]  # the chain's order
    assert A.parse_spec("jpeg,gamma:0.3")["gamma"] == 0.3
    assert A.parse_spec("none") == {} and A.parse_spec("") == {}
    with pytest.raises(ValueError, match="sharpen"):
        A.parse_spec("sharpen")
    with pytest.raises(ValueError, match="probability"):
        A.parse_spec("jpeg:1.5")
    d = A.Augmenter("gain:0.2,jpeg").describe()
    assert d["p"] == {"gain": 0.2, "jpeg": A.DEFAULT_P["jpeg"]} and d["ranges"]["jpeg"]["quality"] == (60, 95)


def test_each_stage_is_applied_with_its_probability():
    x = texture(400, 16)
    for name in A.ORDER:
        y = A.Augmenter(f"{name}:0.25")(x, np.random.default_rng(3))
        changed = np.mean([not np.array_equal(a, b) for a, b in zip(x, y)])
        assert 0.15 < changed < 0.35, (name, changed)


def test_invert_is_the_other_polarity():
    x = texture()
    y = A.invert(x)
    assert np.allclose(y, 1.0 - x) and np.allclose(A.invert(y), x, atol=1e-6)
    assert abs(y.mean() - (1 - x.mean())) < 1e-5


def test_blur_removes_fine_texture_and_keeps_the_mean():
    x = texture(3, 96)
    rough = np.clip(x + 0.05 * np.random.default_rng(2).standard_normal(x.shape, dtype=np.float32), 0, 1)
    small = A.gaussian_blur(rough, np.full(3, 0.5))
    large = A.gaussian_blur(rough, np.full(3, 1.5))
    assert hf_energy(large) < hf_energy(small) < hf_energy(rough)
    assert abs(large.mean() - rough.mean()) < 2e-3
    flat = np.full((2, 32, 32), 0.37, np.float32)
    assert np.allclose(A.gaussian_blur(flat, np.array([0.4, 1.5])), 0.37, atol=1e-6)
    # each ROI its own sigma
    two = A.gaussian_blur(np.stack([rough[0], rough[0]]), np.array([0.4, 1.5]))
    assert hf_energy(two[1:]) < hf_energy(two[:1])


def test_gain_scales_exposure_and_saturates():
    x = texture(2, 32, mean=0.5, amp=0.1)
    dark = A.gain(x, np.array([0.7, 0.7]))
    assert np.allclose(dark, 0.7 * x, atol=1e-6)
    bright = A.gain(x, np.array([1.4, 1.4]))
    assert bright.max() <= 1.0 and bright.mean() > x.mean() * 1.3
    assert np.allclose(A.gain(np.ones((1, 4, 4), np.float32), np.array([1.4])), 1.0)  # saturated


def test_sensor_noise_is_zero_mean_and_grows_with_the_signal():
    rng = np.random.default_rng(4)
    flat = np.concatenate([np.full((1, 128, 128), 0.5, np.float32), np.full((1, 128, 128), 0.125, np.float32)])
    y = A.sensor_noise(flat, np.array([0.01, 0.01]), np.array([0.03, 0.03]), rng)
    d = y - flat
    assert abs(d.mean()) < 1e-3
    # Poisson-Gaussian: std = sqrt(read^2 + shot^2 x / 0.5)
    assert abs(d[0].std() - np.sqrt(0.01**2 + 0.03**2)) < 0.002
    assert abs(d[1].std() - np.sqrt(0.01**2 + 0.03**2 * 0.25)) < 0.002
    assert d[1].std() < d[0].std()


def test_gamma_bends_the_tone_curve():
    x = texture(2, 32)
    darker = A.gamma(x, np.array([1.4, 1.4]))
    lighter = A.gamma(x, np.array([0.7, 0.7]))
    assert (darker <= x + 1e-6).all() and (lighter >= x - 1e-6).all()
    assert darker.mean() < x.mean() < lighter.mean()
    ends = np.array([[[0.0, 1.0]]], np.float32)
    assert np.allclose(A.gamma(ends, np.array([1.4])), ends)


def blockiness(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mean |column step| of the compression error per column phase (mod 8)."""
    e = (y - x).astype(np.float64)
    step = np.abs(np.diff(e, axis=2))  # step[..., c] is between columns c and c + 1
    return np.array([step[..., (np.arange(step.shape[2]) + 1) % 8 == ph].mean() for ph in range(8)])


@pytest.mark.parametrize("offset", [(0, 0), (3, 5)])
def test_jpeg_introduces_8x8_block_artefacts_on_its_grid(offset):
    x = texture(4, 96, seed=7)
    y = A.jpeg(x, [60] * 4, np.array([offset] * 4))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.allclose(y * 255, np.rint(y * 255), atol=1e-3)  # 8-bit values, decoded
    b = blockiness(y, x)
    # the error jumps where one 8x8 block meets the next: at columns offset[1] (mod 8)
    assert int(np.argmax(b)) == offset[1]
    assert b[offset[1]] > 1.5 * np.median(b)
    # rows too
    bt = blockiness(np.swapaxes(y, 1, 2), np.swapaxes(x, 1, 2))
    assert int(np.argmax(bt)) == offset[0]


def test_jpeg_quality_sets_the_loss():
    x = texture(4, 96, seed=8)
    err = {q: float(np.sqrt(((A.jpeg(x, [q] * 4) - x) ** 2).mean())) for q in (60, 80, 95)}
    assert err[60] > err[80] > err[95] > 0
    # fine, pixel-scale texture is what JPEG drops first
    rough = np.clip(x + 0.05 * np.random.default_rng(9).standard_normal(x.shape, dtype=np.float32), 0, 1)
    assert hf_energy(A.jpeg(rough, [60] * 4)) < 0.7 * hf_energy(rough)


def test_measure_reports_every_stage():
    t = A.measure(batch=4, roi=32, repeats=1)
    assert set(t) == {f"{n}@p=1" for n in A.ORDER} | {"v4"}
    assert all(v >= 0 for v in t.values())


# ----------------------------------------------------------------------------------------------
# auxiliary units


def paper_fleet() -> list[tuple[str, str]]:
    extra = {n for n, _ in reproduce.EXTRA_MACHINES}
    return [(n, m) for n, m in reproduce.fleet_machines(FLEET.read_text()) if n not in extra]


def test_aux_unit_names_are_new_units():
    """Auxiliary units must not be any machine the project uses elsewhere: the shipped model's
    labels and fleet, the held-out units of training (EXTRA_MACHINES) and of the open-set benchmark
    (openset.HELDOUT_UNITS). Checked at the largest number of units per model allowed."""
    import onnx

    paper = paper_fleet()
    assert len(paper) == 21
    units = reproduce.aux_units(paper, reproduce.AUX_MAX_UNITS)
    names = [n for n, _ in units]
    models = {m for _, m in paper}
    assert len(names) == len(set(names)) == len(models) * reproduce.AUX_MAX_UNITS
    taken = {n for n, _ in reproduce.fleet_machines(FLEET.read_text())}
    taken |= {n for n, _ in reproduce.EXTRA_MACHINES}
    taken |= {n for n, _, _ in openset.HELDOUT_UNITS}
    meta = {p.key: p.value for p in onnx.load(str(REPO / "models" / "amfp-synth-v3.onnx"),
                                              load_external_data=False).metadata_props}
    taken |= set(json.loads(meta["amfp.labels"]))
    assert not set(names) & taken, sorted(set(names) & taken)
    # each a unit of a printer model the fleet has, under that model's prefix
    for name, model in units:
        assert any(n.rsplit("-", 1)[0] == name.rsplit("-", 1)[0] and m == model for n, m in paper)
    with pytest.raises(ValueError):
        reproduce.aux_units(paper, reproduce.AUX_MAX_UNITS + 1)


def test_aux_fleet_keeps_the_model_fleets_seed_and_spread():
    units = reproduce.aux_units(paper_fleet(), 2)
    text = reproduce.aux_fleet_text(FLEET.read_text(), units)
    assert reproduce.fleet_machines(text) == units
    head = openset.read_fleet_header(FLEET)
    assert f"seed = {head['seed']}" in text and "unit_spread" in text
    assert reproduce.without_split(["--split=0.5,0.25,0.25", "--threads=1", "--split", "1,0,0"]) == ["--threads=1"]


def write_aux(tmp: Path, fleet: dict) -> Path:
    from amfp_train.fake import write_fake

    return write_fake(tmp, parts_per_machine=3, size=240, seed=5, fleet=fleet)


def test_training_with_auxiliary_classes_augmentations_and_centre_loss(dataset, tmp_path):
    """Auxiliary units train as extra classes, the checkpoint keeps only the known machines' head
    rows (export then works unchanged), and the robustness settings are in its meta."""
    from amfp_train.export import export
    from amfp_train.train import parse_args, train

    from .conftest import train_args

    aux = write_aux(tmp_path / "aux", {"SLA": ["F3B-21", "F3B-22"], "MJF": ["5200-21"]})
    cfg = parse_args(train_args(dataset["dir"], tmp_path / "m", dataset["holdout"], "--augment", "v4",
                                "--aux-data", str(aux), "--aux-share", "0.3", "--center-loss", "0.1",
                                "--epochs", "1", "--steps", "8"))
    ck = torch.load(train(cfg), map_location="cpu", weights_only=False)
    labels = ck["meta"]["labels"]
    assert not {"F3B-21", "F3B-22", "5200-21"} & set(labels)
    assert ck["state_dict"]["head.weight"].shape[0] == len(labels)
    assert ck["aux"]["labels"] == ["5200-21", "F3B-21", "F3B-22"] and ck["aux"]["head"]["weight"].shape[0] == 3
    t = ck["meta"]["training"]
    assert t["augment"]["spec"] == "v4" and t["aux_labels"] == ck["aux"]["labels"] and t["aux_parts"] == 9
    assert t["center_loss"] == 0.1 and t["aux_share"] == 0.3
    assert ";aux_parts=9;aux_sha256=" in ck["meta"]["trained_on"]
    h = json.loads((tmp_path / "m" / "train_log.json").read_text())["history"]
    assert np.isfinite(h[0]["center_loss"]) and "val_acc" in h[0]
    info = export(tmp_path / "m" / "checkpoint.pt", tmp_path / "m" / "m.onnx")
    assert info["max_abs_diff"] < 1e-4


def test_auxiliary_labels_must_be_new_units(dataset, tmp_path):
    from amfp_train.train import parse_args, train

    from .conftest import train_args

    known = "F3B-1"
    aux = write_aux(tmp_path / "aux", {"SLA": [known, "F3B-21"]})
    cfg = parse_args(train_args(dataset["dir"], tmp_path / "m", dataset["holdout"], "--aux-data", str(aux)))
    with pytest.raises(ValueError, match="auxiliary labels"):
        train(cfg)


def test_aux_share_sets_the_class_weights():
    from amfp_train.train import class_weights

    w = class_weights(3, 2, 0.4)
    assert np.isclose(sum(w[3:]), 0.4) and np.isclose(sum(w), 1.0)
    assert class_weights(3, 0, 0.4) is None and class_weights(3, 2, 0.0) is None
    with pytest.raises(ValueError):
        class_weights(3, 2, 1.0)


# ----------------------------------------------------------------------------------------------
# the v4 recipe reaches train.py


class Stop(Exception):
    pass


def capture_train(monkeypatch) -> list:
    import amfp_train.train as T

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(T, "train", fake_train)
    return seen


def test_recipe_v4_settings_reach_train(dataset, tmp_path, monkeypatch):
    seen = capture_train(monkeypatch)
    aux = write_aux(tmp_path / "aux", {"SLA": ["F3B-21"]})
    with pytest.raises(Stop):
        reproduce.main(["--data", str(dataset["dir"]), "--holdout", dataset["holdout"], "--out", str(tmp_path / "o"),
                        "--recipe", "v4", "--aux-data", str(aux), "--models-dir", ""])
    cfg = seen[0]
    v4 = reproduce.V4
    assert cfg.augment == "v4" == v4["augment"]
    assert cfg.aux_share == v4["aux_share"] == 0.3 and cfg.aux_data == [str(aux)]
    assert cfg.time_budget_min == v4["time_budget_min"] and cfg.val_parts == v4["val_parts"]
    assert (cfg.epochs, cfg.steps, cfg.roi, cfg.warm_roi, cfg.warm_epochs) == (36, 250, 192, 128, 18)
    assert cfg.center_loss == 0.0 and cfg.name == "amfp-synth-v4"
    # v3 stays what it was: no augmentation, no auxiliary classes
    seen.clear()
    with pytest.raises(Stop):
        reproduce.main(["--data", str(dataset["dir"]), "--holdout", dataset["holdout"], "--out", str(tmp_path / "o3"),
                        "--models-dir", ""])
    assert seen[0].augment == "none" and seen[0].aux_data == [] and seen[0].name == "amfp-synth-v3"
    # --set still overrides a recipe's setting
    seen.clear()
    with pytest.raises(Stop):
        reproduce.main(["--data", str(dataset["dir"]), "--out", str(tmp_path / "o4"), "--recipe", "v4",
                        "--set", "augment=jpeg,gamma", "--set", "center_loss=0.05", "--models-dir", ""])
    assert seen[0].augment == "jpeg,gamma" and seen[0].center_loss == 0.05


def test_recipe_v4_simulates_auxiliary_units_and_a_larger_validation_split(dataset, tmp_path, monkeypatch):
    """Without the simulator: the simulation steps are replaced, and what they are asked for is
    checked (21 auxiliary units of the 7 printer models, their parts, the 60/25/15 split)."""
    seen = capture_train(monkeypatch)
    calls = {}

    def fake_simulate(amfp, out, parts, seed, extra, machines="", synth_args=None):
        calls["scanner"] = (parts, seed, list(synth_args or []))
        out.mkdir(parents=True, exist_ok=True)
        (out / "fleet.toml").write_text(FLEET.read_text())
        return Path(dataset["dir"])

    def fake_micro(amfp, out, parts, seed, pixel_um, synth_args=None, size=None):
        calls["microscope"] = (parts, list(synth_args or []))
        return Path(dataset["dir"])

    def fake_aux(amfp, out, units, parts, micro_parts, seed, synth_args=None, micro_size=None, reuse=False):
        calls["aux"] = (units, parts, micro_parts)
        return write_aux(out / "aux-dataset", {"SLA": ["F3B-21"]})

    monkeypatch.setattr(reproduce, "simulate", fake_simulate)
    monkeypatch.setattr(reproduce, "simulate_microscope", fake_micro)
    monkeypatch.setattr(reproduce, "combine", lambda out, sets, name="dataset": Path(dataset["dir"]))
    monkeypatch.setattr(reproduce, "simulate_aux", fake_aux)
    with pytest.raises(Stop):
        reproduce.main(["--out", str(tmp_path / "o"), "--recipe", "v4", "--holdout", dataset["holdout"],
                        "--models-dir", ""])
    sim = reproduce.SIMULATION["v4"]
    assert "--split=0.6,0.25,0.15" in calls["scanner"][2] and "--split=0.6,0.25,0.15" in calls["microscope"][1]
    units, parts, micro = calls["aux"]
    assert len(units) == 21 and (parts, micro) == (sim["aux_parts"], sim["aux_micro_parts"]) == (60, 20)
    assert seen[0].aux_data == [str(tmp_path / "o" / "aux-dataset")]
    assert "aux_units=21x(60+20@5.3um)" in seen[0].source and "split=0.6,0.25,0.15" in seen[0].source


def test_estimate(tmp_path, capsys):
    r = reproduce.main(["--recipe", "v4", "--estimate", "--out", str(tmp_path)])
    cpu, gpu = r["estimate"]["cpu_2_cores"], r["estimate"]["gpu"]
    assert 45 < cpu["total"] < 80 and gpu["total"] < cpu["total"] / 2
    assert "2-core" in capsys.readouterr().out
    assert r["simulation"]["aux_units"] == 3 and r["settings"]["augment"] == "v4"
