//! Signed models and galleries (docs/trust.md): with `[trust]` keys, amfp refuses an unsigned,
//! tampered or foreign-signed model or gallery with a clear error; a signed enrollment stays
//! signed and loadable whenever a `kill -9` lands in its write; a daemon's gallery reload keeps
//! the last good gallery when the new one is not trusted.

mod common;

use std::path::{Path, PathBuf};

use common::{INT8_GALLERY, INT8_MODEL, amfp, amfp_clean_env, repo, simulate};

/// A folder with the shipped int8 model and gallery, two key pairs, and a configuration that
/// trusts the first.
struct Bench {
    dir: tempfile::TempDir,
    model: PathBuf,
    gallery: PathBuf,
    config: PathBuf,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let gallery = dir.path().join("m.gallery.json");
        std::fs::copy(repo(INT8_MODEL), &model).unwrap();
        std::fs::copy(repo(INT8_GALLERY), &gallery).unwrap();
        for name in ["vendor", "other"] {
            amfp().args(["key", "generate"]).arg(dir.path().join(name)).assert().success();
        }
        let config = dir.path().join("amfp.toml");
        let key = dir.path().join("vendor.pub.pem");
        std::fs::write(&config, format!("[trust]\nkeys = [{:?}]\n", key.to_str().unwrap())).unwrap();
        Self { dir, model, gallery, config }
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sign(&self, key: &str, file: &Path) {
        amfp().args(["sign", "--key"]).arg(self.key(key)).arg(file).assert().success();
    }

    /// `amfp identify --json` under the trusting configuration: (exit code, stdout, stderr).
    fn identify(&self, files: &[&Path]) -> (Option<i32>, String, String) {
        let out = amfp_clean_env()
            .env("AMFP_CONFIG", &self.config)
            .arg("identify")
            .arg("--json")
            .arg("--model")
            .arg(&self.model)
            .args(files)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }
}

#[test]
fn a_trusting_device_refuses_unsigned_tampered_and_foreign_signed_files() {
    let b = Bench::new();
    let parts = simulate(&b.dir.path().join("parts"), &["S450-2".to_string()], 1, 20_261_205);
    let part = parts[0].file.as_path();

    let (code, _, err) = b.identify(&[part]);
    assert_ne!(code, Some(0));
    assert!(err.contains("model") && err.contains("is not signed") && err.contains("amfp sign"), "{err}");

    b.sign("vendor.key.pem", &b.model);
    let (code, _, err) = b.identify(&[part]);
    assert_ne!(code, Some(0));
    assert!(err.contains("gallery") && err.contains("is not signed"), "{err}");

    b.sign("vendor.key.pem", &b.gallery);
    let (code, out, err) = b.identify(&[part]);
    assert_eq!(code, Some(0), "{err}");
    let a: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((a["mode"].as_str(), a["label"].as_str()), (Some("gallery"), Some("S450-2")), "{a}");
    let inspect = amfp_clean_env()
        .env("AMFP_CONFIG", &b.config)
        .args(["model", "inspect", "--json"])
        .arg(&b.model)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let vendor_id = doc["signed_by"].as_str().unwrap().to_string();
    assert_eq!(doc["gallery"]["signed_by"].as_str(), Some(vendor_id.as_str()), "{doc}");

    // A forged gallery: a threshold widened after signing, so that more parts would pass.
    let signed = std::fs::read_to_string(&b.gallery).unwrap();
    let forged = signed.replacen("\"threshold\": ", "\"threshold\": 9", 1);
    assert_ne!(forged, signed);
    std::fs::write(&b.gallery, &forged).unwrap();
    let (code, _, err) = b.identify(&[part]);
    assert_ne!(code, Some(0));
    assert!(err.contains("changed after it was signed"), "{err}");

    // Re-signed by a key the device does not trust.
    std::fs::remove_file(b.dir.path().join("m.gallery.json.sig")).unwrap();
    b.sign("other.key.pem", &b.gallery);
    let (code, _, err) = b.identify(&[part]);
    assert_ne!(code, Some(0));
    assert!(err.contains("which [trust] does not name"), "{err}");

    // `amfp verify` says the same, file by file, and exits 1.
    let out =
        amfp_clean_env().env("AMFP_CONFIG", &b.config).arg("verify").arg(&b.model).arg(&b.gallery).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("m.onnx: signed by key {vendor_id}")), "{text}");
    assert!(text.contains("m.gallery.json: REFUSED"), "{text}");
    // Without [trust] nothing is required: the same forged files load.
    amfp().arg("identify").arg("--model").arg(&b.model).arg(part).assert().success();
}

/// The newest version number of `gallery` and whether the audit chain holds.
fn history(gallery: &Path) -> (u64, bool) {
    let out = amfp().args(["gallery", "--json", "--gallery"]).arg(gallery).arg("history").output().unwrap();
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (h["current"].as_u64().unwrap(), h["chain_ok"].as_bool().unwrap())
}

/// A signed enrollment writes a signed new version; `amfp enroll` killed with SIGKILL at each
/// step of its write (the new version's file, its signature, the current file's signatures)
/// leaves a current gallery that loads and verifies on a trusting device, and an intact chain.
#[test]
fn a_signed_enrollment_killed_at_any_step_leaves_a_signed_loadable_gallery() {
    let b = Bench::new();
    b.sign("vendor.key.pem", &b.model);
    b.sign("vendor.key.pem", &b.gallery);
    let unit = vec!["5200-3".to_string()];
    let parts = simulate(&b.dir.path().join("enroll"), &unit, 10, 20_261_206);
    let fresh = simulate(&b.dir.path().join("fresh"), &unit, 1, 20_261_207);
    let enroll = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(common::AMFP_BIN);
        common::isolate(&mut cmd, &b.config);
        cmd.args(["enroll", "--json", "--threads", "2", "--label", "5200-3", "--process", "MJF", "--sign-key"])
            .arg(b.key("vendor.key.pem"))
            .arg("--model")
            .arg(&b.model)
            .args(extra)
            .args(parts.iter().map(|p| &p.file))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let out = enroll(&[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["version"], 2);
    assert!(e["signed_by"].is_string() && e["warnings"].as_array().unwrap().is_empty(), "{e}");
    let (code, text, err) = b.identify(&[fresh[0].file.as_path()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("\"version\":2"), "{text}");

    let versions = b.dir.path().join("m.gallery.versions");
    let current_sig = b.dir.path().join("m.gallery.json.sig");
    // Each trigger fires once the write has reached that step; the kill follows at once.
    type Reached = Box<dyn Fn(u64) -> bool>;
    let vdir = versions.clone();
    let vdir2 = versions.clone();
    let triggers: Vec<(&str, Reached)> = vec![
        ("the new version's file", Box::new(move |n| vdir.join(format!("v{n}.json")).exists())),
        ("the new version's signature", Box::new(move |n| vdir2.join(format!("v{n}.json.sig")).exists())),
        (
            "both signatures on the current file",
            Box::new(move |_| {
                std::fs::read_to_string(&current_sig).is_ok_and(|t| t.matches("\"sha256\"").count() == 2)
            }),
        ),
    ];
    for (step, reached) in &triggers {
        let (before, _) = history(&b.gallery);
        let next = before + 1;
        // An earlier interrupted change may have left this version's files: the write replaces them.
        let _ = std::fs::remove_file(versions.join(format!("v{next}.json")));
        let _ = std::fs::remove_file(versions.join(format!("v{next}.json.sig")));
        let mut child =
            enroll(&["--reenroll", "--why", &format!("maintenance, interrupted at {step}")]).spawn().unwrap();
        let interrupted = loop {
            if reached(next) {
                break child.kill().is_ok();
            }
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            std::hint::spin_loop();
        };
        let _ = child.wait();
        let (now, chain_ok) = history(&b.gallery);
        assert!(chain_ok, "the chain is broken after a kill at {step}");
        assert!(now == before || now == next, "version {now} after a kill at {step} (was {before})");
        let (code, text, err) = b.identify(&[fresh[0].file.as_path()]);
        assert_eq!(code, Some(0), "after a kill at {step} (interrupted: {interrupted}): {err}");
        assert!(text.contains(&format!("\"version\":{now}")), "{text}");
        eprintln!("killed at {step}: interrupted {interrupted}, current version {now}");
    }
    // A change after the interrupted ones goes through, signed, and the chain still holds;
    // history names the signer of every version.
    let out = enroll(&["--reenroll", "--why", "after the kills"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(history(&b.gallery).1);
    let out = amfp().args(["gallery", "--json", "--gallery"]).arg(&b.gallery).arg("history").output().unwrap();
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vendor = e["signed_by"].as_str().unwrap();
    for v in h["versions"].as_array().unwrap() {
        assert_eq!(v["signed_by"], serde_json::json!([vendor]), "{h}");
    }
}

/// The daemon reloads a gallery through `Identifier::replace_gallery`: under `[trust]` an
/// unsigned new version is refused and the last good gallery stays in use.
#[test]
fn a_reload_of_an_untrusted_gallery_keeps_the_last_good_one() {
    let b = Bench::new();
    b.sign("vendor.key.pem", &b.model);
    b.sign("vendor.key.pem", &b.gallery);
    let load = amfp::model::LoadOptions { trusted_keys: vec![b.key("vendor.pub.pem")], ..Default::default() };
    let model = amfp::model::Model::load_with(&b.model, 8, &load).unwrap();
    assert!(model.signed_by.is_some());
    let gallery = amfp::gallery::Gallery::load(&b.gallery, &model).unwrap();
    let good = gallery.sha256.clone();
    let settings = amfp::config::Settings::default();
    let identifier = amfp::identify::Identifier::with_galleries(
        vec![model],
        vec![Some(gallery)],
        amfp::identify::IdentifyOptions::from_settings(&settings),
    );
    let unsigned = b.dir.path().join("new.gallery.json");
    std::fs::copy(&b.gallery, &unsigned).unwrap();
    let e = identifier.replace_gallery(&unsigned).unwrap_err().to_string();
    assert!(e.contains("is not signed"), "{e}");
    assert_eq!(identifier.gallery().unwrap().sha256, good);
    b.sign("vendor.key.pem", &unsigned);
    assert_eq!(identifier.replace_gallery(&unsigned).unwrap().signed_by.as_ref().unwrap().key_id.len(), 16);
}
