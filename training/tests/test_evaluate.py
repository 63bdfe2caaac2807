"""Part-level evaluation, open-set calibration and the report files."""

import json

import numpy as np
import onnx

from amfp_train.calibrate import calibrate_models
from amfp_train.dataset import Part
from amfp_train.evaluate import metrics, read_meta, run_evaluation, vote_scores


def test_vote_sums_softmax_over_rois():
    # ROI 0 says class 1 weakly, ROIs 1-2 say class 0 strongly
    probs = np.array([[[0.4, 0.6], [0.9, 0.1], [0.8, 0.2]]])
    pred1, s1 = vote_scores(probs, 1)
    pred3, s3 = vote_scores(probs)
    assert pred1[0] == 1 and pred3[0] == 0
    assert np.isclose(s3[0], 2.1 / 3)
    parts = [Part("p", "b", "test", [], 10.6, meta={"process": "X"})]
    m = metrics(probs, parts, ["a", "b"], {"a": "X", "b": "X"}, ns=(1, 2))
    assert m["accuracy_vs_rois"] == {"1": 1.0, "2": 0.0}
    assert m["confusion"] == [[0, 0], [1, 0]]


def test_calibrate_and_evaluate(exported, quantized, dataset, tmp_path):
    rep = calibrate_models([exported["path"], quantized["path"]], dataset["dir"], max_parts=8,
                           out=tmp_path / "cal.json")
    r = rep[str(exported["path"])]
    assert r["unknown_parts"] > 0, "the held-out machine's parts calibrate"
    thr = read_meta(exported["path"])["amfp.unknown_threshold"]
    assert thr == round(r["threshold"], 4) and 0 <= thr <= 1
    assert len(onnx.load(str(quantized["path"])).graph.value_info) == 0

    out = tmp_path / "eval"
    report = run_evaluation(exported["path"], quantized["path"], dataset["dir"], "test", out, threads=1)
    f32 = report["f32"]
    assert set(f32["accuracy_vs_rois"]) == {"1", "2", "4", "8", "16"}
    assert f32["accuracy_per_process"]
    assert f32["open_set"]["unknown_parts"] > 0
    assert dataset["holdout"] in f32["open_set"]["unknown_labels"]
    assert 0 <= report["int8"]["agreement"]["roi_argmax"] <= 1
    assert (out / "confusion_f32.png").stat().st_size > 1000
    assert (out / "confusion_int8.png").is_file()
    card = (out / "model_card.md").read_text()
    assert "simulated" in card and "int8" in card and "false reject" in card
    assert json.loads((out / "report.json").read_text())["f32"]["parts"] == f32["parts"]
