//! The open set through the CLI with the shipped model and its fingerprint gallery
//! (docs/gallery.md): surfaces the model has never seen must not be named as a known machine,
//! known parts are named with the distances behind the verdict, and a gallery that does not
//! belong to the model is refused with a clear error. The rates themselves are measured by the
//! open-set benchmark (docs/openset.md) and `tests/identify_accuracy.rs`.

mod common;

use std::path::Path;

use common::*;
use rand::{RngExt, SeedableRng};

/// Writes a `w` x `h` image of uniform random RGB noise as a JPEG of quality 85 (what a phone
/// or camera writes), with a pixel size in its JFIF header so the envelope accepts it.
fn noise_jpeg(path: &Path, seed: u64, w: u32, h: u32) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()]));
    let file = std::fs::File::create(path).unwrap();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 85);
    // 10.6 µm per pixel: 2396 dots per inch.
    enc.set_pixel_density(image::codecs::jpeg::PixelDensity::dpi(2396));
    enc.encode_image(&img).unwrap();
}

/// Uniform noise was the new user's first surprise ("IDENTIFIED 5200-2 (MJF), score 0.946"):
/// with the gallery it is far from every machine. Fresh parts of known machines are named, with
/// the distance under the threshold; every judged result says it used the gallery.
#[test]
fn noise_is_never_named_and_known_parts_are_named_with_their_distance() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for seed in 0..3 {
        let path = dir.path().join(format!("noise-{seed}.jpg"));
        noise_jpeg(&path, 900 + seed, 1400, 1400);
        files.push(path);
    }
    let machines: Vec<String> = ["M2-1", "S450-2", "F3B-4", "5200-1"].map(String::from).to_vec();
    let parts = simulate(&dir.path().join("known"), &machines, 1, 20_261_204);
    let mut all: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    all.extend(parts.iter().map(|p| p.file.as_path()));
    let (results, out) = identify_json(&["--model", repo(INT8_MODEL).to_str().unwrap()], &all);
    assert_eq!(results.len(), all.len(), "{out:?}");
    for a in &results[..files.len()] {
        assert_ne!(a["verdict"], "identified", "noise was named: {a}");
        if a["verdict"] == "unknown" {
            assert_eq!(a["mode"], "gallery", "{a}");
            assert!(a["reason"].as_str().unwrap().contains("far from every known machine"), "{a}");
            assert!(
                a["gallery"]["plain_distance"].as_f64().unwrap() > a["gallery"]["outlier_threshold"].as_f64().unwrap()
            );
        }
    }
    for (part, a) in parts.iter().zip(&results[files.len()..]) {
        assert_eq!(a["mode"], "gallery", "{a}");
        assert_eq!(a["verdict"], "identified", "{a}");
        assert_eq!(a["label"], part.machine.as_str(), "{a}");
        assert_eq!(a["process"], part.process.as_str(), "{a}");
        let g = &a["gallery"];
        assert_eq!(g["nearest"], part.machine.as_str());
        assert!(g["distance"].as_f64().unwrap() <= g["threshold"].as_f64().unwrap(), "{a}");
        assert!(g["runner_up_distance"].as_f64().unwrap() > g["distance"].as_f64().unwrap(), "{a}");
        assert_eq!(g["version"], 1);
        assert_eq!(g["sha256"].as_str().unwrap().len(), 64);
    }
    // A claim is checked against the claimed machine's fingerprint: its distance is reported.
    let first = parts[0].file.as_path();
    let (claimed, _) = identify_json(&["--model", repo(INT8_MODEL).to_str().unwrap(), "--claim", "S450-2"], &[first]);
    let claim = &claimed[0]["claim"];
    assert_eq!(claim["status"], "contradicted", "{claim}");
    assert!(claim["distance"].as_f64().unwrap() > claimed[0]["gallery"]["distance"].as_f64().unwrap(), "{claim}");
    // A claim of a machine the gallery does not know is refused before anything is judged.
    let out = amfp()
        .args(["identify", "--model", repo(INT8_MODEL).to_str().unwrap(), "--claim", "S450-9"])
        .arg(first)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"S450-9\" is not known") && err.contains("amfp enroll"), "{err}");
    // --no-gallery is the paper's vote, and says so.
    let (vote, _) = identify_json(&["--model", repo(INT8_MODEL).to_str().unwrap(), "--no-gallery"], &[first]);
    assert_eq!(vote[0]["mode"], "vote");
    assert!(vote[0].get("gallery").is_none());
}

/// A gallery belongs to one model file: the f32 model's gallery is refused for the int8 model,
/// and a damaged file is named as such; both before any image is judged.
#[test]
fn a_foreign_or_damaged_gallery_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("noise.jpg");
    noise_jpeg(&image, 1, 400, 400);
    let int8 = repo(INT8_MODEL);
    // `amfp identify` of the int8 model with `gallery`: it must fail (exit 1); its stderr.
    let refused = |gallery: &Path| -> String {
        let out = amfp()
            .args(["identify", "--model", int8.to_str().unwrap(), "--gallery", gallery.to_str().unwrap()])
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&repo(F32_GALLERY));
    assert!(
        err.contains("belongs to model amfp-synth-v3 ") && err.contains("not to the loaded model amfp-synth-v3-int8"),
        "{err}"
    );

    let text = std::fs::read_to_string(repo(INT8_GALLERY)).unwrap();
    let damaged = dir.path().join("damaged.gallery.json");
    std::fs::write(&damaged, &text[..text.len() / 2]).unwrap();
    let err = refused(&damaged);
    assert!(err.contains("is not an amfp gallery file") && err.contains("not JSON"), "{err}");

    // `amfp model inspect` names the gallery the model judges with, and refuses a foreign one.
    let out = amfp().args(["model", "inspect", int8.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("amfp-synth-v3.int8.gallery.json (version 1"), "{text}");
    assert!(text.contains("embedding  embedding float32 [n, 256]"), "{text}");
    let out = amfp()
        .args(["model", "inspect", int8.to_str().unwrap(), "--gallery", repo(F32_GALLERY).to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Runs `amfp` with `args` and returns its stdout parsed as one JSON object.
fn amfp_json(args: &[&str]) -> serde_json::Value {
    let out = amfp().args(args).output().unwrap();
    assert!(out.status.success(), "amfp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A new unit of a known printer model, which the shipped gallery calls unknown, is enrolled
/// from its parts (a part of another machine among them is refused by name), and its fresh
/// parts are named as it by the new gallery version; the chain of versions is audited, a
/// tampered version is found, and a rollback makes the unit unknown again (docs/gallery.md).
#[test]
fn a_new_unit_is_enrolled_named_audited_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = dir.path().join("g.gallery.json");
    std::fs::copy(repo(INT8_GALLERY), &gallery).unwrap();
    let g = gallery.to_str().unwrap();
    let unit = vec!["5200-3".to_string()];
    let enroll_parts = simulate(&dir.path().join("enroll"), &unit, 10, 20_261_205);
    let fresh = simulate(&dir.path().join("fresh"), &unit, 4, 20_261_206);
    let stray = simulate(&dir.path().join("stray"), &["S450-2".to_string()], 1, 20_261_207);
    let fresh_files: Vec<&Path> = fresh.iter().map(|p| p.file.as_path()).collect();
    let model = repo(INT8_MODEL);
    let m = model.to_str().unwrap();

    let (before, _) = identify_json(&["--model", m, "--gallery", g], &fresh_files);
    assert!(before.iter().all(|a| a["label"] != "5200-3"), "{before:?}");

    let mut args = vec!["enroll", "--model", m, "--gallery", g, "--label", "5200-3", "--process", "MJF", "--json"];
    let files: Vec<String> = enroll_parts.iter().chain(&stray).map(|p| p.file.to_str().unwrap().to_string()).collect();
    args.extend(files.iter().map(String::as_str));
    let e = amfp_json(&args);
    assert_eq!(
        (e["version"].as_u64(), e["parts"].as_u64(), e["images"].as_u64()),
        (Some(2), Some(10), Some(11)),
        "{e}"
    );
    let refused = e["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{e}");
    assert_eq!(refused[0]["image"], files[10].as_str());
    assert!(refused[0]["reason"].as_str().unwrap().contains("far from the other parts"), "{e}");

    let (after, _) = identify_json(&["--model", m, "--gallery", g], &fresh_files);
    let named = after.iter().filter(|a| a["label"] == "5200-3").count();
    assert!(named >= 3, "{named} of 4 fresh parts named 5200-3: {after:?}");
    assert!(after.iter().all(|a| a["gallery"]["version"] == 2 && a["process"] != "FDM"), "{after:?}");

    // Enrolling it again is an explicit act with a reason.
    let out = amfp().args(&args[..args.len() - 1]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reenroll"), "{out:?}");

    let h = amfp_json(&["gallery", "--gallery", g, "--json", "history"]);
    assert_eq!((h["current"].as_u64(), h["chain_ok"].as_bool()), (Some(2), Some(true)), "{h}");
    assert_eq!(h["versions"][1]["change"]["action"], "enroll");

    let r = amfp_json(&["gallery", "--gallery", g, "--json", "rollback", "1", "--why", "test"]);
    assert_eq!(r["version"], 3);
    let list = amfp_json(&["gallery", "--gallery", g, "--json", "list"]);
    assert!(list["machines"].as_array().unwrap().iter().all(|m| m["label"] != "5200-3"), "{list}");
    let (rolled, _) = identify_json(&["--model", m, "--gallery", g], &fresh_files[..1]);
    assert_ne!(rolled[0]["label"], "5200-3");

    // A kept version altered by hand breaks the chain: history says so and exits 1.
    let v2 = dir.path().join("g.gallery.versions/v2.json");
    let text = std::fs::read_to_string(&v2).unwrap().replace("\"MJF\"", "\"FDM\"");
    std::fs::write(&v2, text).unwrap();
    let out = amfp().args(["gallery", "--gallery", g, "history"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain BROKEN"), "{out:?}");
}
