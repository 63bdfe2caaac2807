"""The fingerprint gallery (docs/gallery.md): fit, the two tests, calibration within its budget,
the file format (exact round trip, atomic write), embedding sources and the CLI."""

import base64
import csv
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from amfp_train import gallery as G
from amfp_train.dataset import sha256_file

D, K = 12, 5


def clusters(seed=0):
    """K machines: Gaussian clusters with a shared, correlated within-machine covariance."""
    rng = np.random.default_rng(seed)
    mus = rng.normal(0, 3, (K, D))
    a = np.eye(D) + 0.3 * rng.normal(0, 1, (D, D))

    def draw(k, n, centre=None):
        c = mus[k] if centre is None else centre
        return c + rng.standard_normal((n, D)) @ a.T

    return mus, draw


def labelled(draw, n):
    z = np.concatenate([draw(k, n) for k in range(K)])
    return z, [f"M{k}" for k in range(K) for _ in range(n)]


@pytest.fixture(scope="module")
def fitted():
    mus, draw = clusters()
    z, y = labelled(draw, 40)
    g = G.fit_gallery(z, y, 0.1, {"M0": "FDM"}, {"name": "m", "sha256": "0" * 64})
    zc, yc = labelled(draw, 240)
    G.calibrate(g, zc, yc, 0.01, 16, "synthetic clusters")
    return g, mus, draw


def test_fit_names_the_nearest_machine_and_its_statistics(fitted):
    g, mus, draw = fitted
    assert g.labels == [f"M{k}" for k in range(K)] and g.machines[0].process == "FDM"
    assert g.machines[1].process is None and all(m.parts == 40 for m in g.machines)
    for arr in (g.whitening, g.global_whitening, g.global_mean, g.machines[0].mean):
        assert arr.dtype == np.float32
    np.testing.assert_array_equal(g.whitening, g.whitening.T)
    fresh, y = labelled(draw, 50)
    res = g.judge(fresh)
    assert np.mean(np.array(res["label"]) == np.array(y)) > 0.98
    assert res["identified"].mean() > 0.95  # fresh known parts pass both tests
    # the machine means themselves: nearest is their own, r < 0
    res = g.judge(mus)
    assert res["label"] == g.labels and (res["r"] < 0).all() and res["identified"].all()


def test_far_surface_fails_the_outlier_test_and_a_new_unit_the_relative_test(fitted):
    g, mus, draw = fitted
    far = g.judge(mus[0] + 40.0)
    assert far["outlier"][0] and not far["identified"][0]
    # a new unit near known ones: between M0 and M1, a cluster of its own
    new = draw(0, 200, centre=(mus[0] + mus[1]) / 2)
    res = g.judge(new)
    assert res["far"].mean() > 0.9  # caught by the relative distance
    assert (res["far"] & ~res["outlier"]).mean() > 0.5  # mostly by it alone: near enough for the outlier test
    assert not res["identified"].any() or res["identified"].mean() < 0.1


@pytest.mark.parametrize("n_per,target", [(200, 0.01), (47, 0.05), (10, 0.01), (333, 0.1)])
def test_calibration_false_rejects_within_budget(n_per, target):
    mus, draw = clusters(1)
    z, y = labelled(draw, 30)
    g = G.fit_gallery(z, y, 0.1)
    zc, yc = labelled(draw, n_per)
    # calibration parts of a held-out unit are measured, not used for the thresholds
    held = draw(2, 25, centre=mus[2] + 2.5)
    cal = G.calibrate(g, np.concatenate([zc, held]), yc + ["NEW"] * 25, target, 16, "x")
    n = K * n_per
    allowed = int(np.floor(target * n + 1e-9))
    assert cal["known_parts"] == n and cal["allowed_false_rejects"] == allowed
    res = g.judge(zc)
    fails = int((~res["identified"]).sum())
    assert fails == cal["false_rejects"] <= allowed
    assert cal["false_reject_rate"] == fails / n
    assert int(res["outlier"].sum()) == cal["outlier_rejects"] <= int(np.floor(target / 5 * n + 1e-9))
    assert cal["misnamed"] == int((np.array(res["label"]) != np.array(yc)).sum())
    assert cal["held_out"]["parts"] == 25 and cal["held_out"]["labels"] == ["NEW"]
    assert 0 <= cal["held_out"]["unknown_rate"] <= 1
    # the strictest such threshold (continuous data, no ties): the budget is used up, and a
    # threshold just below the largest kept r_nearest would reject one part more
    assert cal["false_rejects"] == allowed
    kept = res["r"][res["identified"]].max()
    assert int((res["outlier"] | (res["r"] >= kept)).sum()) == allowed + 1


def test_round_trip_is_exact_and_the_format_is_the_documented_one(fitted, tmp_path):
    g, _, draw = fitted
    g.history = [{"version": 1, "action": "fit", "time": "2026-12-04T00:00:00Z", "by": G.BY, "why": "test",
                  "labels": g.labels}]
    path = G.write_gallery(g, tmp_path / "m.gallery.json")
    obj = json.loads(path.read_text())
    assert obj["format"] == "amfp-gallery" and obj["schema"] == 1 and obj["version"] == 1
    assert obj["parent_sha256"] is None and obj["score"] == "relative_mahalanobis"
    assert obj["embedding"] == {"output": "embedding", "dim": D, "kind": "pre-logits"}
    assert set(obj["history"][0]) == {"version", "action", "time", "by", "why", "labels"}
    for k in ("false_reject_target", "known_parts", "false_rejects", "false_reject_rate", "rois", "data"):
        assert k in obj["calibration"], k
    # arrays: base64 of little-endian float32, row-major, with padding
    w = obj["whitening"]
    assert w["shape"] == [D, D]
    raw = base64.b64decode(w["f32le"], validate=True)
    assert np.array_equal(np.frombuffer(raw, "<f4").reshape(D, D), g.whitening)
    assert len(w["f32le"]) % 4 == 0
    back = G.read_gallery(path)
    for a, b in ((back.whitening, g.whitening), (back.global_whitening, g.global_whitening),
                 (back.global_mean, g.global_mean)):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    for m1, m2 in zip(back.machines, g.machines):
        assert (m1.label, m1.process, m1.parts) == (m2.label, m2.process, m2.parts)
        assert np.array_equal(m1.mean, m2.mean)
    assert (back.threshold, back.outlier_threshold, back.shrinkage) == (g.threshold, g.outlier_threshold, g.shrinkage)
    assert back.calibration == json.loads(json.dumps(g.calibration)) and back.model == g.model
    z = draw(3, 20)
    for k in ("d", "r", "identified"):  # the same verdicts from the file as from memory
        assert np.array_equal(back.judge(z)[k], g.judge(z)[k])
    # written again, byte for byte the same
    G.write_gallery(back, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_reader_refuses_other_formats(fitted, tmp_path):
    g, _, _ = fitted
    obj = G.to_json(g)
    for change, msg in (({"schema": 2}, "schema"), ({"format": "x"}, "not an amfp gallery"),
                        ({"score": "cosine"}, "score")):
        with pytest.raises(ValueError, match=msg):
            G.from_json(dict(obj, **change))
    bad = json.loads(json.dumps(obj))
    bad["machines"][1]["label"] = bad["machines"][0]["label"]
    with pytest.raises(ValueError, match="distinct"):
        G.from_json(bad)
    bad = json.loads(json.dumps(obj))
    bad["global_mean"]["shape"] = [D + 1]
    with pytest.raises(ValueError, match="shape"):
        G.from_json(bad)
    unc = G.fit_gallery(np.random.default_rng(0).standard_normal((20, 3)), ["a", "b"] * 10)
    with pytest.raises(ValueError, match="not calibrated"):
        G.write_gallery(unc, tmp_path / "u.json")
    assert not (tmp_path / "u.json").exists()


def test_write_is_atomic(fitted, tmp_path, monkeypatch):
    g, _, _ = fitted
    path = tmp_path / "g.json"
    path.write_text("old gallery")
    real = os.replace

    def fail(src, dst):
        assert Path(src).parent == path.parent and Path(src).read_text().startswith("{")  # complete beside it
        raise OSError("disk full")

    monkeypatch.setattr(G.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        G.write_gallery(g, path)
    assert path.read_text() == "old gallery"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json"]  # no temporary file left
    monkeypatch.setattr(G.os, "replace", real)
    G.write_gallery(g, path)
    assert G.read_gallery(path).labels == g.labels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json"]


def test_shrinkage_choice_uses_the_fit_parts():
    rng = np.random.default_rng(5)
    few = rng.standard_normal((24, 20)) * np.linspace(0.5, 2, 20)  # 6 parts per machine, D = 20
    lam, scores = G.choose_shrinkage(few, [f"m{i % 4}" for i in range(24)])
    assert lam in G.SHRINKAGE_CANDIDATES and set(scores) == set(G.SHRINKAGE_CANDIDATES)
    many = rng.standard_normal((2000, 4)) @ np.array([[3, 0, 0, 0], [2.9, 0.3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0.1]])
    lam2, _ = G.choose_shrinkage(many, [f"m{i % 4}" for i in range(2000)])
    assert lam2 == min(G.SHRINKAGE_CANDIDATES) < lam  # plenty of parts, strong correlation: little shrinkage


def _dataset(root: Path, rows):
    """A labels.csv dataset with the given (file, serial, machine, split); files exist, empty."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "serial", "machine", "process", "pixel_size_um", "mode", "split"])
        for file, serial, machine, split in rows:
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            (root / file).write_bytes(b"")
            w.writerow([file, serial, machine, "FDM", "10.6", "scanner", split])
    return root


def _line(name, emb, used=16, vote="A", verdict="identified"):
    rec = {"source": {"kind": "file", "name": name}, "verdict": verdict, "mode": "vote",
           "top": [{"label": vote, "score": 0.9}], "rois": {"used": used, "max": 16, "early_stop": False}}
    if emb is not None:
        rec["embedding"] = emb
    return json.dumps(rec)


def test_identify_json_lines_are_matched_to_labels_by_path(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "ds", [("scans/A-0.png", "A-0", "A", "train"), ("scans/A-1.png", "A-1", "A", "val"),
                                      ("scans/B-0.png", "B-0", "B", "train"),
                                      ("scans/B-1.png", "B-1", "B", "train"),
                                      ("scans/B-1.view1.png", "B-1", "B", "train")])
    lines = [
        _line(str(data / "scans/A-0.png"), [1.0, 2.0]),  # absolute
        _line("scans/B-0.png", [3.0, 4.0], vote="B"),  # relative to the dataset (cwd below)
        _line("elsewhere/ds/scans/B-1.png", [0.0, 0.0], used=8),  # trailing components
        _line(str(data / "scans/B-1.view1.png"), [4.0, 8.0], used=24),  # second frame of B-1
        _line(str(data / "scans/A-1.png"), None, verdict="rejected"),  # no embedding: skipped
        _line("/nowhere/C-0.png", [9.0, 9.0]),  # not in the dataset: ignored
    ]
    e = G.load_identify_jsonl(lines, data, cwd=data)
    assert e.labels == ["A", "B", "B"] and e.skipped == ["A-1"]
    assert e.votes == ["A", "B", "A"] and e.rois == [16, 16, 32]
    np.testing.assert_array_equal(e.z[:2], [[1, 2], [3, 4]])
    np.testing.assert_allclose(e.z[2], [3.0, 6.0])  # ROI-weighted: (8*[0,0] + 24*[4,8]) / 32
    assert G.load_identify_jsonl("\n".join(lines), data, cwd=data).keys == e.keys  # the text itself
    jl = tmp_path / "out.jsonl"
    jl.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(data)
    assert G.load_identify_jsonl(jl, data, splits=["train"]).labels == ["A", "B", "B"]


FAKE_AMFP = r'''#!{python}
"""A stand-in for `amfp identify --json --with-embedding`: embedding = per-machine centre + noise
from the file name, so the gallery is learnable."""
import json, sys, zlib
args = sys.argv[1:]
if args[:2] == ["identify", "--help"]:
    print("  --json\n  --with-embedding\n  --no-gallery\n"); sys.exit(0)
assert args[0] == "identify" and "--with-embedding" in args and "--no-gallery" in args
assert args[args.index("--early-stop") + 1] == "off"
open({log!r}, "a").write(" ".join(args) + "\n")
paths = [a for a in args if a.endswith(".png")]
worst = 0
for p in paths:
    name = p.rsplit("/", 1)[-1]
    m = name.split("-")[0]
    h = zlib.crc32(name.encode())
    if "bad" in name:
        print(json.dumps({{"source": {{"kind": "file", "name": p}}, "verdict": "rejected"}})); worst = 4; continue
    c = [float(ord(m[0]) % 7), float(ord(m[0]) % 5), 1.0]
    e = [v + ((h >> (8 * i)) % 256) / 256.0 - 0.5 for i, v in enumerate(c)]
    print(json.dumps({{"source": {{"kind": "file", "name": p}}, "verdict": "identified", "mode": "vote",
                      "top": [{{"label": m, "score": 1.0}}], "rois": {{"used": 16}}, "embedding": e}}))
sys.exit(worst)
'''


def test_amfp_source_and_cli_with_a_stand_in_binary(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    log = tmp_path / "calls.log"
    amfp = tmp_path / "amfp"
    amfp.write_text(FAKE_AMFP.format(python=sys.executable, log=str(log)))
    amfp.chmod(amfp.stat().st_mode | stat.S_IEXEC)
    # a model with a 3-wide embedding output and the keys (the CLI reads name, sha256, keys)
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    gr = helper.make_graph([helper.make_node("Identity", ["input"], ["embedding"]),
                            helper.make_node("MatMul", ["embedding", "w"], ["logits"])], "t",
                           [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3])],
                           [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]),
                            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 3])], [w])
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for k, v in {"amfp.name": "fake", "amfp.labels": '["A", "B", "C"]', "amfp.label_process": '{"A": "MJF", "B": "SLA", "C": "FDM"}',
                 "amfp.embedding_output": "embedding", "amfp.embedding_dim": "3", "amfp.embedding_kind": "pre-logits"}.items():
        m.metadata_props.add(key=k, value=v)
    model = tmp_path / "fake.onnx"
    onnx.save(m, str(model))
    rows = lambda tag, n: [(f"scans/{c}-{tag}{i}.png", f"{c}-{tag}{i}", c, "train") for c in "ABC" for i in range(n)]
    fit = _dataset(tmp_path / "fit", rows("f", 12))
    cal = _dataset(tmp_path / "cal", rows("c", 40) + [("scans/A-bad.png", "A-bad", "A", "train"),
                                                     ("scans/D-c0.png", "D-c0", "D", "train")])
    out = tmp_path / "g" / "fake.gallery.json"
    g = G.main(["--model", str(model), "--amfp", str(amfp), "--fit", str(fit), "--calibrate", str(cal),
                "--out", str(out), "--false-reject", "0.05", "--exclude", "D", "--chunk", "7"])
    calls = log.read_text().splitlines()
    assert len(calls) == -(-36 // 7) + -(-122 // 7)  # chunks
    assert all(f"--model {model}" in c for c in calls)
    obj = json.loads(out.read_text())
    assert obj["model"] == {"name": "fake", "sha256": sha256_file(model)}
    assert obj["embedding"] == {"output": "embedding", "dim": 3, "kind": "pre-logits"}
    assert [m["label"] for m in obj["machines"]] == ["A", "B", "C"]
    assert [m["process"] for m in obj["machines"]] == ["MJF", "SLA", "FDM"]
    assert [m["parts"] for m in obj["machines"]] == [12, 12, 12]
    h = obj["history"]
    assert len(h) == 1 and h[0]["action"] == "fit" and h[0]["by"] == "amfp_train.gallery" and h[0]["version"] == 1
    assert h[0]["labels"] == ["A", "B", "C"] and h[0]["time"] == obj["created"]
    c = obj["calibration"]
    assert c["known_parts"] == 120 and c["false_rejects"] <= 6 and c["rois"] == 16
    assert c["held_out"]["labels"] == ["D"] and "amfp identify" in c["data"]
    assert c["vote_disagreements"] == c["misnamed"]  # the stand-in's vote is the true machine
    assert g.threshold == obj["threshold"]
    # the default path: beside the model
    assert G.gallery_path(Path("m/amfp-synth-v3.int8.onnx")) == Path("m/amfp-synth-v3.int8.gallery.json")


def test_end_to_end_on_the_tiny_model_with_onnxruntime(exported, dataset, tmp_path):
    """Embeddings cut by roi.py and run in onnxruntime; the gallery names the model file's sha256."""
    model = tmp_path / "amfp.onnx"
    model.write_bytes(Path(exported["path"]).read_bytes())
    g = G.main(["--model", str(model), "--source", "onnxruntime", "--fit", str(dataset["dir"]), "--fit-splits",
                "train", "--calibrate", str(dataset["dir"]), "--calibrate-splits", "val,test",
                "--exclude", dataset["holdout"], "--threads", "1", "--shrinkage", "0.3"])
    path = model.with_name("amfp.gallery.json")
    obj = json.loads(path.read_text())
    assert obj["model"]["sha256"] == sha256_file(model)
    assert obj["embedding"]["dim"] == 24 and obj["shrinkage"] == 0.3
    assert dataset["holdout"] not in [m["label"] for m in obj["machines"]]
    assert obj["calibration"]["held_out"]["labels"] == [dataset["holdout"]]
    assert obj["calibration"]["false_rejects"] <= int(0.01 * obj["calibration"]["known_parts"])
    assert G.read_gallery(path).labels == g.labels


def test_claim_threshold_bounds_sibling_false_accepts_and_offsets_shift_distances():
    """Two sibling units of one printer model close together, a third machine far away: the claim
    threshold admits at most floor(n t) sibling impostor claims (parts of a held-out sibling
    included), and is applied as amfp applies it (nearest machine, outlier test, r <= t)."""
    rng = np.random.default_rng(5)
    centres = {"P-1": np.zeros(D), "P-2": np.full(D, 0.9), "Q-1": np.full(D, 12.0)}
    draw = lambda lab, n, c=None: (centres[lab] if c is None else c) + rng.standard_normal((n, D))
    z = np.concatenate([draw(lab, 40) for lab in centres])
    y = [lab for lab in centres for _ in range(40)]
    g = G.fit_gallery(z, y, 0.1)
    zc = np.concatenate([draw(lab, 150) for lab in centres] + [draw("P-1", 60, np.full(D, -0.9))])
    yc = [lab for lab in centres for _ in range(150)] + ["P-3"] * 60
    cal = G.calibrate(g, zc, yc, 0.02, 16, "x", claim_target=0.02)["claims"]
    assert g.claim_threshold == cal["claim_threshold"]
    # sibling claims: P-1 parts as P-2 and back (150 each), the held-out P-3 as P-1 and P-2 (60 each)
    assert cal["sibling_impostor_claims"] == 2 * 150 + 2 * 60
    assert cal["sibling_false_accepts"] <= int(np.floor(0.02 * cal["sibling_impostor_claims"]))
    d, d0 = g.distances(zc)
    near = d.argmin(1)
    idx = {lab: i for i, lab in enumerate(g.labels)}
    ok = lambda i, k: near[i] == k and d[i, k] <= g.outlier_threshold and d[i, k] - d0[i] <= g.claim_threshold
    genuine = [ok(i, idx[lab]) for i, lab in enumerate(yc) if lab in idx]
    assert cal["genuine_claims"] == 450 and cal["false_rejects"] == genuine.count(False)
    # an enrolled machine's offset is subtracted from its squared distances
    before = g.distances(zc[:3])[0][:, 0]
    g.machines[0].offset = 2.5
    assert np.allclose(g.distances(zc[:3])[0][:, 0], before - 2.5)
    back = G.from_json(json.loads(json.dumps(G.to_json(g))))
    assert back.machines[0].offset == 2.5 and back.claim_threshold == g.claim_threshold
