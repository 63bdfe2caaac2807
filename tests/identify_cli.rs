//! `amfp identify` and `amfp model inspect` through the binary: verdicts, claims, several
//! models, exit codes, and every kind of bad input named in issue 4, each with its message.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use predicates::prelude::*;
use prost::Message;
use sha2::Digest;
use tract_onnx::pb;

/// A few simulated parts, made once per test binary run in a temporary directory.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    parts: Vec<Part>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let machines: Vec<String> = ["M2-1", "S450-2", "5200-1"].iter().map(|s| s.to_string()).collect();
    let parts = simulate(&root.join("parts"), &machines, 1, 424_242);
    Fixture { _dir: dir, root, parts }
}

fn model_arg(rel: &str) -> String {
    repo(rel).to_str().unwrap().to_string()
}

#[test]
fn identifies_a_part_prints_a_table_and_confirms_or_contradicts_a_claim() {
    let fx = fixture();
    let part = &fx.parts[0];
    // People's table.
    amfp()
        .args(["identify", "--model", &model_arg(INT8_MODEL)])
        .arg(&part.file)
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!("IDENTIFIED {} ({})", part.machine, part.process)))
        .stdout(predicate::str::contains("envelope   10.60 µm/px (file)"));
    // The claim of the right machine is confirmed ...
    let (a, out) = identify_json(&["--model", &model_arg(INT8_MODEL), "--claim", &part.machine], &[&part.file]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(a[0]["claim"]["status"], "confirmed");
    assert_eq!(a[0]["claim"]["consistent"], true);
    // ... of another is contradicted: exit 5.
    let (a, out) = identify_json(&["--model", &model_arg(INT8_MODEL), "--claim", "F3B-1"], &[&part.file]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(a[0]["claim"]["status"], "contradicted");
    assert_eq!(a[0]["claim"]["consistent"], false);
    assert!(a[0]["claim"]["score"].as_f64().unwrap() < 0.1);
}

#[test]
fn the_attribution_follows_the_design_contract() {
    let fx = fixture();
    let part = &fx.parts[1];
    let (a, out) = identify_json(&["--model", &model_arg(INT8_MODEL), "--early-stop", "off"], &[&part.file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let a = &a[0];
    let sha = sha2::Sha256::digest(std::fs::read(repo(INT8_MODEL)).unwrap());
    let sha: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(a["model"]["sha256"], sha.as_str());
    assert_eq!(a["model"]["name"], "amfp-synth-v3-int8");
    assert_eq!(a["model"]["task"], "machine");
    assert_eq!(a["verdict"], "identified");
    assert_eq!(a["label"], part.machine.as_str());
    assert_eq!(a["process"], part.process.as_str());
    assert_eq!(a["source"]["kind"], "file");
    assert_eq!(a["rois"]["used"], 16);
    assert_eq!(a["rois"]["max"], 16);
    assert_eq!(a["rois"]["early_stop"], false);
    assert_eq!(a["top"].as_array().unwrap().len(), 3);
    let score = a["score"].as_f64().unwrap();
    let second = a["top"][1]["score"].as_f64().unwrap();
    assert!((a["margin"].as_f64().unwrap() - (score - second)).abs() < 2e-4);
    assert_eq!(a["envelope"]["camera_pixel_um"].as_f64().map(|v| (v * 100.0).round()), Some(1060.0));
    assert_eq!(a["envelope"]["ok"], true);
    assert_eq!(a["envelope"]["pixel_source"], "file");
    assert_eq!(a["id"].as_str().unwrap().len(), 26, "a ULID");
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    for k in ["capture", "preprocess", "inference", "total"] {
        assert!(a["timing_ms"][k].as_f64().unwrap() >= 0.0);
    }
    // The same image and seed give the same ROIs, so the same vote.
    let (b, _) = identify_json(&["--model", &model_arg(INT8_MODEL), "--early-stop", "off"], &[&part.file]);
    assert_eq!(a["top"], b[0]["top"]);
    assert_ne!(a["id"], b[0]["id"]);
    // Another seed draws other ROIs.
    let (c, _) =
        identify_json(&["--model", &model_arg(INT8_MODEL), "--early-stop", "off", "--seed", "99"], &[&part.file]);
    assert_ne!(a["top"][0]["score"], c[0]["top"][0]["score"]);
}

#[test]
fn several_models_report_each_attribute_in_one_attribution() {
    let fx = fixture();
    let part = &fx.parts[2];
    let (a, out) = identify_json(&["--model", &model_arg(F32_MODEL), "--model", &model_arg(INT8_MODEL)], &[&part.file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(a[0]["model"]["name"], "amfp-synth-v3");
    let attrs = a[0]["attributes"].as_array().unwrap();
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs[0]["model"]["name"], "amfp-synth-v3-int8");
    assert_eq!(attrs[0]["label"], part.machine.as_str());
    assert_eq!(a[0]["label"], part.machine.as_str());
}

#[test]
fn model_inspect_shows_the_contract_and_the_camera_it_needs() {
    amfp()
        .args(["model", "inspect"])
        .arg(repo(INT8_MODEL))
        .assert()
        .success()
        .stdout(predicate::str::contains("amfp-synth-v3-int8"))
        .stdout(predicate::str::contains("input      input float32 [n, 1, 192, 192]"))
        .stdout(predicate::str::contains("FDM: S450-1, S450-2, S900-1, S900-2"))
        .stdout(predicate::str::contains("scanner at >= 2397 dpi"));
    let out = amfp().args(["model", "inspect", "--json"]).arg(repo(F32_MODEL)).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["roi_px"], 192);
    assert_eq!(v["metadata"]["labels"].as_array().unwrap().len(), 21);
    assert!((v["camera"]["sample_mm"].as_f64().unwrap() - 2.0352).abs() < 1e-9);
}

/// Writes `bytes` to `name` in `dir` and runs identify on it.
fn identify_file(dir: &Path, name: &str, bytes: &[u8], extra: &[&str]) -> assert_cmd::assert::Assert {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    amfp().args(["identify", "--model", &model_arg(INT8_MODEL)]).args(extra).arg(&path).assert()
}

fn png(img: &image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn unreadable_images_are_errors_that_say_what_is_wrong() {
    let fx = fixture();
    let good = std::fs::read(&fx.parts[0].file).unwrap();
    identify_file(&fx.root, "truncated.png", &good[..good.len() / 2], &[])
        .code(1)
        .stderr(predicate::str::contains("truncated.png"))
        .stderr(predicate::str::is_match("(?i)truncated|corrupt").unwrap());
    identify_file(&fx.root, "notes.png", b"these are not pixels\n", &[])
        .code(1)
        .stderr(predicate::str::contains("notes.png"))
        .stderr(predicate::str::is_match("(?i)not an image|not recogni[sz]ed|unknown format").unwrap());
    amfp()
        .args(["identify", "--model", &model_arg(INT8_MODEL)])
        .arg(fx.root.join("missing.png"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing.png"))
        .stderr(predicate::str::is_match("(?i)no such file|not found").unwrap());
}

#[test]
fn images_that_cannot_be_judged_are_rejected_with_a_reason() {
    let fx = fixture();
    let tiny = png(&image::GrayImage::from_fn(10, 10, |x, y| image::Luma([((x * 37 + y * 91) % 200 + 40) as u8])));
    identify_file(&fx.root, "tiny.png", &tiny, &["--pixel-um", "10.6"]).code(4).stdout(predicate::str::contains(
        "REJECTED: field of view 0.11 x 0.11 mm is smaller than the model's sample of 2.04 mm",
    ));
    let black = png(&image::GrayImage::new(800, 600));
    identify_file(&fx.root, "black.png", &black, &["--pixel-um", "10.6"])
        .code(4)
        .stdout(predicate::str::contains("REJECTED: blank image"));
    // The scanner with no part on it: the lid above a part in a real scan, repeated (mirrored) to fill a frame.
    let scan = image::open(&fx.parts[0].file).unwrap().to_luma8();
    let strip = image::imageops::crop_imm(&scan, 0, 0, scan.width(), 60).to_image();
    let corner = image::GrayImage::from_fn(scan.width(), 600, |x, y| {
        let (band, row) = (y / 60, y % 60);
        *strip.get_pixel(x, if band % 2 == 0 { row } else { 59 - row })
    });
    let path = fx.root.join("background.png");
    std::fs::write(&path, png(&corner)).unwrap();
    let (a, out) = identify_json(&["--model", &model_arg(INT8_MODEL), "--pixel-um", "10.6"], &[&path]);
    assert_eq!(out.status.code(), Some(4), "{a:?}");
    assert_eq!(a[0]["verdict"], "rejected");
    assert_eq!(a[0]["reason_code"], "no_part");
    // No pixel size from anywhere: rejected, saying how to give one.
    identify_file(&fx.root, "plain.png", &png(&corner), &[])
        .code(4)
        .stdout(predicate::str::contains("pixel size unknown"));
    // Pixels coarser than the model's.
    amfp()
        .args(["identify", "--model", &model_arg(INT8_MODEL), "--pixel-um", "40"])
        .arg(&fx.parts[0].file)
        .assert()
        .code(4)
        .stdout(predicate::str::contains("coarser than the model's 10.60 µm"));
}

#[test]
fn the_worst_outcome_over_several_images_sets_the_exit_status() {
    let fx = fixture();
    let black = fx.root.join("black.png");
    std::fs::write(&black, png(&image::GrayImage::new(800, 600))).unwrap();
    // identified + rejected -> 4, in the order given.
    let (a, out) = identify_json(&["--model", &model_arg(INT8_MODEL)], &[&fx.parts[0].file, &black]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["verdict"], "identified");
    assert_eq!(a[1]["verdict"], "rejected");
    // ... + a missing file -> 1, and the other images are still judged.
    let missing = fx.root.join("gone.png");
    let (a, out) =
        identify_json(&["--model", &model_arg(INT8_MODEL)], &[&fx.parts[0].file, &missing, &fx.parts[1].file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(a.len(), 2);
}

/// The shipped model's proto, to derive broken models from.
fn shipped_proto() -> pb::ModelProto {
    pb::ModelProto::decode(&std::fs::read(repo(F32_MODEL)).unwrap()[..]).unwrap()
}

fn run_with_model(dir: &Path, name: &str, proto: &pb::ModelProto) -> assert_cmd::assert::Assert {
    let path = dir.join(name);
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    let fx_image = dir.join("any.png");
    std::fs::write(&fx_image, png(&image::GrayImage::from_pixel(400, 400, image::Luma([128])))).unwrap();
    amfp().args(["identify", "--model"]).arg(&path).arg(&fx_image).assert()
}

#[test]
fn models_that_break_the_contract_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // No metadata at all.
    let mut bare = shipped_proto();
    bare.metadata_props.clear();
    run_with_model(dir.path(), "bare.onnx", &bare)
        .code(1)
        .stderr(predicate::str::contains("bare.onnx"))
        .stderr(predicate::str::contains("no amfp.* metadata"));
    // One key missing, one malformed: both named.
    let mut partial = shipped_proto();
    partial.metadata_props.retain(|p| p.key != "amfp.roi_px");
    for p in partial.metadata_props.iter_mut().filter(|p| p.key == "amfp.unknown_threshold") {
        p.value = "high".into();
    }
    run_with_model(dir.path(), "partial.onnx", &partial)
        .code(1)
        .stderr(predicate::str::contains("amfp.roi_px is missing"))
        .stderr(predicate::str::contains("amfp.unknown_threshold = \"high\" is not a fraction in [0, 1]"));
    // A model whose input is not an image: 10 features -> 21 logits through one MatMul.
    let mut features = shipped_proto();
    features.graph = Some(feature_graph(21));
    run_with_model(dir.path(), "features.onnx", &features)
        .code(1)
        .stderr(predicate::str::contains("does not take images"))
        .stderr(predicate::str::contains("[N, 10]"));
    // Not ONNX at all.
    std::fs::write(dir.path().join("junk.onnx"), b"\x00\x01junk").unwrap();
    amfp()
        .args(["model", "inspect"])
        .arg(dir.path().join("junk.onnx"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not an ONNX model"));
}

/// A valid ONNX graph whose input is a feature vector, not an image.
fn feature_graph(classes: i64) -> pb::GraphProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dims = |ds: &[Value]| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: 1,
            shape: Some(pb::TensorShapeProto {
                dim: ds.iter().map(|v| Dimension { value: Some(v.clone()), ..Default::default() }).collect(),
            }),
        })),
        ..Default::default()
    };
    let n = Value::DimParam("N".into());
    pb::GraphProto {
        name: "features".into(),
        node: vec![pb::NodeProto {
            op_type: "MatMul".into(),
            input: vec!["x".into(), "w".into()],
            output: vec!["logits".into()],
            ..Default::default()
        }],
        initializer: vec![pb::TensorProto {
            name: "w".into(),
            dims: vec![10, classes],
            data_type: 1,
            float_data: vec![0.01; 10 * classes as usize],
            ..Default::default()
        }],
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: Some(dims(&[n.clone(), Value::DimValue(10)])),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: "logits".into(),
            r#type: Some(dims(&[n, Value::DimValue(classes)])),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn a_missing_model_is_an_error_naming_where_to_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    std::fs::write(&img, png(&image::GrayImage::new(4, 4))).unwrap();
    amfp()
        .args(["identify", "--model"])
        .arg(dir.path().join("nope.onnx"))
        .arg(&img)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nope.onnx"))
        .stderr(predicate::str::contains("--model or model.path"));
}
