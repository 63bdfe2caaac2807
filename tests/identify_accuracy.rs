//! What the shipped model does through the full CLI path, on parts simulated with seeds it never
//! saw: machine accuracy of the vote (the paper's), the verdicts of its fingerprint gallery
//! (docs/gallery.md) against the gallery's calibration record, early stopping against the full
//! vote, and open-set rejection of machines held out of training. The numbers are printed
//! (`cargo test -- --nocapture`) and recorded in docs/identify.md.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// Seeds of the test parts: the model was trained, validated and calibrated on seed 7.
const KNOWN_SEED: u64 = 20_261_121;
const HELD_OUT_SEED: u64 = 20_261_122;
/// Parts per machine: 4 runs of 5 parts at builds spread over each machine's training range,
/// 21 x 20 = 420 parts, so that 98 % means at most 8 errors.
const KNOWN_RUNS: u32 = 4;
const KNOWN_PARTS_PER_RUN: u32 = 5;
const HELD_OUT_PARTS: u32 = 25;

struct Run {
    /// The vote's leader is the part's machine.
    correct: usize,
    /// Named (gallery mode), as the part's machine or as another.
    identified: usize,
    /// Named as another machine: the worst outcome.
    wrong: usize,
    total: usize,
    rois_used: usize,
}

fn score(parts: &[Part], results: &[serde_json::Value]) -> Run {
    assert_eq!(parts.len(), results.len());
    let mut run = Run { correct: 0, identified: 0, wrong: 0, total: parts.len(), rois_used: 0 };
    for (part, a) in parts.iter().zip(results) {
        assert_eq!(a["source"]["name"], part.file.display().to_string());
        assert_ne!(a["verdict"], "rejected", "simulated part rejected: {a}");
        assert_eq!(a["mode"], "gallery", "the shipped model judges with its gallery: {a}");
        // Machine accuracy is the paper's: the vote's leader, whatever its score.
        if a["top"][0]["label"] == part.machine.as_str() {
            run.correct += 1;
        }
        if a["verdict"] == "identified" {
            run.identified += 1;
            // Named only when the fingerprint and the vote agree.
            assert_eq!(a["label"], a["top"][0]["label"]);
            assert_eq!(a["label"], a["gallery"]["nearest"]);
            if a["label"] != part.machine.as_str() {
                run.wrong += 1;
            }
        }
        run.rois_used += a["rois"]["used"].as_u64().unwrap() as usize;
    }
    run
}

/// The full 16-ROI vote and the sequential early-stopping vote of the shipped int8 model over
/// fresh parts of every known machine, through the CLI: measured once per test run (two tests
/// read it; the second waits for the first's measurement).
fn known_parts() -> &'static (Run, Run) {
    &measured().0
}

/// The full vote on the default engine and on tract, part by part: (file, verdict, label) of
/// each part whose verdict or label differs, and tract's run.
fn engines() -> &'static (Vec<String>, Run) {
    &measured().1
}

type Measured = ((Run, Run), (Vec<String>, Run));

fn measured() -> &'static Measured {
    static MEASURED: std::sync::OnceLock<Measured> = std::sync::OnceLock::new();
    MEASURED.get_or_init(measure_known_parts)
}

fn measure_known_parts() -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let machines = labels(INT8_MODEL);
    let parts = simulate_across_builds(dir.path(), &machines, KNOWN_PARTS_PER_RUN, KNOWN_RUNS, KNOWN_SEED);
    let files: Vec<&Path> = parts.iter().map(|p| p.file.as_path()).collect();
    let model = repo(INT8_MODEL);
    let model = model.to_str().unwrap();
    let (full, out) = identify_json(&["--model", model, "--early-stop", "off"], &files);
    assert!(out.status.code().is_some_and(|c| c == 0 || c == 3), "{out:?}");
    let (early, _) = identify_json(&["--model", model, "--early-stop", "sequential"], &files);
    // The same parts on tract, the fallback engine (the default is onnxruntime: docs/engines.md).
    let (on_tract, _) = identify_json(&["--model", model, "--early-stop", "off", "--engine", "tract"], &files);
    assert!(
        full.iter().all(|a| a["model"]["engine"]["name"] == "onnxruntime"),
        "the default engine is not onnxruntime"
    );
    assert!(on_tract.iter().all(|a| a["model"]["engine"]["name"] == "tract"));
    let differ: Vec<String> = full
        .iter()
        .zip(&on_tract)
        .filter(|(a, b)| a["verdict"] != b["verdict"] || a["label"] != b["label"])
        .map(|(a, b)| {
            format!(
                "{}: {} {} on onnxruntime, {} {} on tract",
                a["source"]["name"], a["verdict"], a["label"], b["verdict"], b["label"]
            )
        })
        .collect();
    let tract_full = score(&parts, &on_tract);
    let (full, early) = (score(&parts, &full), score(&parts, &early));
    eprintln!(
        "int8, {} fresh parts: full 16-ROI vote accuracy {:.4} ({} ROIs/part), sequential early stop {:.4} ({:.2} ROIs/part); \
         gallery: false reject (known parts called unknown) {:.4} full / {:.4} early, wrong {} full / {} early",
        full.total,
        accuracy(&full),
        rois_per_part(&full),
        accuracy(&early),
        rois_per_part(&early),
        false_reject(&full),
        false_reject(&early),
        full.wrong,
        early.wrong,
    );
    eprintln!(
        "int8 on tract, the same parts: full 16-ROI vote accuracy {:.4}, false reject {:.4}, wrong {}; \
         {} of {} part verdicts differ from onnxruntime's{}",
        accuracy(&tract_full),
        false_reject(&tract_full),
        tract_full.wrong,
        differ.len(),
        full.total,
        differ.iter().map(|d| format!("\n  {d}")).collect::<String>()
    );
    ((full, early), (differ, tract_full))
}

fn accuracy(r: &Run) -> f64 {
    r.correct as f64 / r.total as f64
}

fn rois_per_part(r: &Run) -> f64 {
    r.rois_used as f64 / r.total as f64
}

fn false_reject(r: &Run) -> f64 {
    1.0 - r.identified as f64 / r.total as f64
}

fn model_card() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo(REPORT)).unwrap()).unwrap()
}

/// The int8 gallery's calibration record (docs/gallery.md).
fn calibration() -> serde_json::Value {
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo(INT8_GALLERY)).unwrap()).unwrap();
    g["calibration"].clone()
}

/// Whether a rate measured on `n` fresh parts agrees with the model card's rate on `card_n` parts:
/// within 3 standard errors of the difference of two binomial samples (plus one part's worth).
fn agrees(rate: f64, n: usize, card: f64, card_n: f64) -> bool {
    let se = (card * (1.0 - card) * (1.0 / n as f64 + 1.0 / card_n)).sqrt();
    (rate - card).abs() <= 3.0 * se + 1.0 / n as f64
}

/// Both engines give every part the same verdict and label (docs/engines.md): tract, the
/// fallback, judges as onnxruntime does, and reaches the model card's accuracy too.
#[test]
fn tract_and_onnxruntime_give_the_same_part_verdicts() {
    let (differ, tract) = engines();
    assert!(differ.is_empty(), "{} part verdicts differ between the engines:\n{}", differ.len(), differ.join("\n"));
    let card = &model_card()["int8"];
    let (card_n, card_acc) = (card["parts"].as_f64().unwrap(), card["accuracy"].as_f64().unwrap());
    assert!(
        agrees(accuracy(tract), tract.total, card_acc, card_n),
        "tract accuracy {:.4} vs card {card_acc:.4}",
        accuracy(tract)
    );
}

#[test]
fn the_cli_reproduces_the_model_card_and_early_stopping_keeps_the_accuracy_with_fewer_rois() {
    let (full, early) = known_parts();
    let card = &model_card()["int8"];
    let card_n = card["parts"].as_f64().unwrap();
    let card_acc = card["accuracy"].as_f64().unwrap();
    assert!(
        agrees(accuracy(full), full.total, card_acc, card_n),
        "accuracy {:.4} vs model card {card_acc:.4}",
        accuracy(full)
    );
    // Known parts called unknown: the distance tests' calibrated rate plus the parts whose vote
    // and nearest fingerprint disagree, as the gallery's calibration counted them.
    let cal = calibration();
    let cal_n = cal["known_parts"].as_f64().unwrap();
    let cal_frr = cal["false_rejects_with_vote_disagreements"].as_f64().unwrap() / cal_n;
    let frr = false_reject(full);
    assert!(agrees(frr, full.total, cal_frr, cal_n), "false reject {frr:.3} vs the gallery's calibration {cal_frr:.3}");
    let cal_wrong = (cal["misnamed"].as_f64().unwrap() / cal_n).min(cal_frr);
    let wrong = full.wrong as f64 / full.total as f64;
    assert!(
        wrong <= cal_wrong + 3.0 * (cal_wrong / full.total as f64).sqrt() + 1.0 / full.total as f64,
        "wrong {wrong:.4}"
    );
    assert_eq!(rois_per_part(full), 16.0);
    assert!((accuracy(early) - accuracy(full)).abs() <= 0.005, "early stop moved accuracy by more than 0.5 points");
    // Early stopping must not settle a verdict the full vote would not give (docs/identify.md).
    assert!(
        (false_reject(early) - frr).abs() <= 0.005,
        "early stop moved the false-reject rate by more than 0.5 points"
    );
    assert!(
        early.wrong <= full.wrong + 1,
        "early stop named {} parts wrongly, the full vote {}",
        early.wrong,
        full.wrong
    );
    assert!(rois_per_part(early) < 16.0, "early stopping saved nothing");
}

/// Issue 4's bar: the shipped int8 model through the CLI on fresh parts. amfp-synth-v3 passes it
/// (docs/identify.md "Accuracy"); amfp-synth-v2 did not (97.6 %). Its weakest pair is still
/// F3B-1/F3B-2 (two SLA units whose hatch pitch differs by 0.1 %).
#[test]
fn shipped_int8_model_identifies_fresh_parts_at_98_percent() {
    let (full, _) = known_parts();
    assert!(accuracy(full) >= 0.98, "machine accuracy {:.4} < 0.98", accuracy(full));
}

/// The four units held out of training (new units of known printer models) are measured in the
/// gallery's calibration record; fresh parts of them come out unknown at that rate.
#[test]
fn machines_held_out_of_training_come_out_unknown_at_the_gallerys_rate() {
    let cal = calibration();
    let open = &cal["held_out"];
    let held_out: Vec<String> =
        open["labels"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let card_rate = open["unknown_rate"].as_f64().unwrap();
    let card_n = open["parts"].as_f64().unwrap();
    assert!(!held_out.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let parts = simulate(dir.path(), &held_out, HELD_OUT_PARTS, HELD_OUT_SEED);
    let files: Vec<&Path> = parts.iter().map(|p| p.file.as_path()).collect();
    let (results, _) = identify_json(&["--model", repo(INT8_MODEL).to_str().unwrap()], &files);
    let mut per_machine: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (part, a) in parts.iter().zip(&results) {
        assert_ne!(a["verdict"], "rejected", "{a}");
        assert!(a["label"].is_null() || a["verdict"] == "identified");
        let e = per_machine.entry(part.machine.as_str()).or_default();
        e.1 += 1;
        if a["verdict"] == "unknown" {
            e.0 += 1;
            let reason = a["reason"].as_str().unwrap();
            assert!(
                ["far from every known machine", "fingerprint is near enough", "disagrees with itself"]
                    .iter()
                    .any(|r| reason.contains(r)),
                "{a}"
            );
        }
    }
    let unknown: usize = per_machine.values().map(|v| v.0).sum();
    let rate = unknown as f64 / parts.len() as f64;
    eprintln!(
        "held-out machines: unknown rate {rate:.3} over {} parts (gallery calibration {card_rate:.3}); per machine {per_machine:?}",
        parts.len()
    );
    assert!(
        agrees(rate, parts.len(), card_rate, card_n),
        "unknown rate {rate:.3} vs the gallery's calibration {card_rate:.3}"
    );
    assert!(rate > 0.0, "no held-out part was called unknown");
}
