//! A part seen in several frames (`amfp synth --views`, `amfp identify --same-part`): a USB
//! microscope shows 6.8 x 5.1 mm of a part, so an inspector images it in a few places and amfp
//! votes over the ROIs of all of them. Proven here: the frames of a part differ and are listed
//! in views.csv; the vote draws its ROIs from every frame in turn and reports each frame's
//! share; a frame that cannot be used is left out with its reason while the others still
//! judge the part; and three microscope frames of a part are identified at least as well as
//! one, and as well as scans of the same machines.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{INT8_MODEL, amfp, identify_json, repo};

/// Frames per part in these tests.
const VIEWS: usize = 3;

/// One simulated part and its frames, view 0 first.
struct Part {
    machine: String,
    frames: Vec<PathBuf>,
}

/// Simulates `parts` parts of each of `machines` with `extra` synth flags; reads views.csv when
/// the dataset has several frames per part, labels.csv otherwise.
fn simulate(out: &Path, machines: &[String], parts: u32, extra: &[&str]) -> Vec<Part> {
    amfp()
        .args(["synth", "--overwrite", "--threads", "2", "--fleet"])
        .arg(repo(common::FLEET))
        .args(["--seed", "20261124", "--parts-per-machine", &parts.to_string(), "--machines", &machines.join(",")])
        .args(extra)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
    let mut labels = csv::Reader::from_path(out.join("labels.csv")).unwrap();
    let mut by_serial: BTreeMap<String, Part> = BTreeMap::new();
    for row in labels.deserialize::<BTreeMap<String, String>>() {
        let row = row.unwrap();
        by_serial.insert(
            row["serial"].clone(),
            Part { machine: row["machine"].clone(), frames: vec![out.join(&row["file"])] },
        );
    }
    if out.join("views.csv").exists() {
        for part in by_serial.values_mut() {
            part.frames.clear();
        }
        let mut views = csv::Reader::from_path(out.join("views.csv")).unwrap();
        for row in views.deserialize::<BTreeMap<String, String>>() {
            let row = row.unwrap();
            let part = by_serial.get_mut(&row["serial"]).expect("views.csv names only parts of labels.csv");
            assert_eq!(row["view"], part.frames.len().to_string(), "views.csv lists a part's frames in order");
            part.frames.push(out.join(&row["file"]));
        }
    }
    by_serial.into_values().collect()
}

fn accuracy(parts: &[Part], results: &[serde_json::Value]) -> f64 {
    assert_eq!(parts.len(), results.len());
    parts.iter().zip(results).filter(|(p, r)| r["label"] == p.machine.as_str()).count() as f64 / parts.len() as f64
}

/// Every known machine of the shipped model, 3 parts each: one frame against three frames of
/// the same parts, and against scans of the same machines and seed.
#[test]
fn three_microscope_frames_of_a_part_vote_together_at_scanner_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let machines = common::labels(INT8_MODEL);
    let microscope = simulate(
        &dir.path().join("microscope"),
        &machines,
        3,
        &["--mode", "microscope", "--pixel-um", "5.3", "--views", &VIEWS.to_string()],
    );
    assert_eq!(microscope.len(), machines.len() * 3);
    for part in &microscope {
        assert_eq!(part.frames.len(), VIEWS, "{} frames per part", VIEWS);
        let bytes: Vec<Vec<u8>> = part.frames.iter().map(|f| std::fs::read(f).unwrap()).collect();
        assert!(bytes[0] != bytes[1] && bytes[1] != bytes[2], "the frames of a part are different pictures");
    }
    let scans = simulate(&dir.path().join("scanner"), &machines, 3, &[]);

    let args = ["--early-stop", "off", "--model", INT8_MODEL];
    let first_frames: Vec<&Path> = microscope.iter().map(|p| p.frames[0].as_path()).collect();
    let (single, _) = identify_json(&args, &first_frames);
    let scan_files: Vec<&Path> = scans.iter().map(|p| p.frames[0].as_path()).collect();
    let (scanned, _) = identify_json(&args, &scan_files);
    let mut together = Vec::new();
    for part in &microscope {
        let frames: Vec<&Path> = part.frames.iter().map(PathBuf::as_path).collect();
        let (mut lines, output) = identify_json(&[&args[..], &["--same-part"]].concat(), &frames);
        assert_eq!(lines.len(), 1, "one verdict for the part: {}", String::from_utf8_lossy(&output.stderr));
        let r = lines.remove(0);
        // 16 ROIs drawn from the three frames in turn: 6, 5 and 5.
        let views = r["views"].as_array().unwrap_or_else(|| panic!("no views in {r}"));
        let shares: Vec<u64> = views.iter().map(|v| v["rois"].as_u64().unwrap()).collect();
        assert_eq!(shares, [6, 5, 5], "{r}");
        assert_eq!(r["rois"]["used"], 16, "{r}");
        assert_eq!(views[1]["source"]["name"], part.frames[1].display().to_string());
        assert_eq!(r["source"]["name"], part.frames[0].display().to_string());
        assert!(views.iter().all(|v| v.get("reason").is_none()), "{r}");
        together.push(r);
    }
    let (single, together, scanner) =
        (accuracy(&microscope, &single), accuracy(&microscope, &together), accuracy(&scans, &scanned));
    let n = microscope.len() as f64;
    println!(
        "machine accuracy over {n} parts: microscope 1 frame {single:.3}, 3 frames {together:.3}; scanner {scanner:.3}"
    );
    assert!(together >= single, "three frames {together:.3} must do at least as well as one {single:.3}");
    let se = (scanner.max(0.5) * (1.0 - scanner).max(0.04) / n).sqrt();
    assert!(together >= scanner - 2.0 * se, "3 microscope frames {together:.3} vs scanner {scanner:.3} (se {se:.3})");
    // An absolute floor besides the comparisons: all at 0 % must not pass.
    assert!(scanner >= 0.9, "scans: machine accuracy {scanner:.3}");
}

/// A black frame among the frames of a part is left out, named with its reason, and the part is
/// judged on the others; a part with no usable frame is rejected (exit 4); a missing frame is
/// an error (exit 1). One frame with --same-part is judged as without it.
#[test]
fn unusable_frames_are_left_out_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let parts = simulate(
        &dir.path().join("m"),
        &["M2-1".to_string()],
        1,
        &["--mode", "microscope", "--pixel-um", "5.3", "--views", "2"],
    );
    let black = dir.path().join("black.png");
    image::GrayImage::new(1280, 960).save(&black).unwrap();
    let frames = [parts[0].frames[0].as_path(), black.as_path(), parts[0].frames[1].as_path()];
    let args = ["--early-stop", "off", "--same-part", "--pixel-um", "5.3", "--model", INT8_MODEL];
    let (lines, output) = identify_json(&args, &frames);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let r = &lines[0];
    assert_eq!(r["verdict"], "identified", "{r}");
    assert_eq!(r["label"], "M2-1", "{r}");
    let views = r["views"].as_array().unwrap();
    assert_eq!(views.iter().map(|v| v["rois"].as_u64().unwrap()).collect::<Vec<_>>(), [8, 0, 8], "{r}");
    let reason = views[1]["reason"].as_str().unwrap_or_else(|| panic!("the black frame has no reason: {r}"));
    assert!(reason.contains("blank image"), "{reason}");

    // For people: every frame on its own line, the black one marked.
    let out = amfp()
        .args(["identify", "--early-stop", "off", "--same-part", "--pixel-um", "5.3"])
        .args(frames)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("and 2 more frames of the same part") && text.contains("LEFT OUT"), "{text}");

    // Nothing usable: rejected, with the first frame's reason.
    let (lines, output) = identify_json(&args, &[black.as_path(), black.as_path()]);
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(lines[0]["verdict"], "rejected");
    assert_eq!(lines[0]["views"].as_array().unwrap().len(), 2);

    // A frame that cannot be read stops the part: nothing is judged on part of the evidence.
    let missing = dir.path().join("missing.png");
    let (lines, output) = identify_json(&args, &[parts[0].frames[0].as_path(), missing.as_path()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(lines.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.png"));

    // One frame: the same vote as without --same-part, and no `views`.
    let (alone, _) = identify_json(&args, &frames[..1]);
    let (plain, _) = identify_json(&args[..2].iter().chain(&args[3..]).copied().collect::<Vec<_>>(), &frames[..1]);
    assert!(alone[0].get("views").is_none(), "{}", alone[0]);
    assert_eq!(
        (&alone[0]["label"], &alone[0]["score"], &alone[0]["top"]),
        (&plain[0]["label"], &plain[0]["score"], &plain[0]["top"])
    );
}

/// `--views` needs microscope mode; out-of-range counts are refused with the fix.
#[test]
fn synth_views_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = amfp()
        .args(["synth", "--views", "3", "--parts-per-machine", "1", "--machines", "M2-1", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs --mode microscope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = amfp().args(["synth", "--mode", "microscope", "--views", "0", "--out"]).arg(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be 1..=64"));
}
