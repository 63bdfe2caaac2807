//! Helpers shared by the integration tests that run the `amfp` binary on simulated parts.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The shipped reference models and the fleet they were trained on.
pub const INT8_MODEL: &str = "models/amfp-synth-v3.int8.onnx";
pub const F32_MODEL: &str = "models/amfp-synth-v3.onnx";
pub const INT8_GALLERY: &str = "models/amfp-synth-v3.int8.gallery.json";
pub const F32_GALLERY: &str = "models/amfp-synth-v3.gallery.json";
pub const FLEET: &str = "models/amfp-synth-v3.fleet.toml";
pub const REPORT: &str = "models/amfp-synth-v3.report.json";

/// Absolute path of a file in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The `amfp` binary with no inherited AMFP settings, RUST_LOG or systemd variables, so that
/// the environment the tests run in cannot change what they see.
pub fn amfp_clean_env() -> Command {
    let mut cmd = Command::cargo_bin("amfp").unwrap();
    for name in foreign_env() {
        cmd.env_remove(&name);
    }
    cmd
}

/// The environment variables that would change what amfp does: AMFP settings, RUST_LOG and
/// systemd's (journal, notify socket, watchdog).
fn foreign_env() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| {
            let upper = name.to_string_lossy().to_ascii_uppercase();
            upper.starts_with("AMFP")
                || ["RUST_LOG", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]
                    .contains(&upper.as_str())
        })
        .collect()
}

/// Like [`amfp`], as a plain `std::process::Command` for processes a test starts and stops
/// itself (the daemon), configured by `config`.
pub fn amfp_process(config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(AMFP_BIN);
    isolate(&mut cmd, config);
    cmd
}

/// The amfp binary under test.
pub const AMFP_BIN: &str = env!("CARGO_BIN_EXE_amfp");

/// Gives `cmd` (amfp, or a shell that execs it) the clean environment of [`amfp_process`].
pub fn isolate(cmd: &mut std::process::Command, config: &Path) {
    for name in foreign_env() {
        cmd.env_remove(&name);
    }
    cmd.env("AMFP_CONFIG", config);
}

/// The `amfp` binary under test, with no configuration file and no environment overrides.
pub fn amfp() -> Command {
    let mut cmd = amfp_clean_env();
    cmd.env("AMFP_CONFIG", repo("tests/data/empty.toml"));
    cmd
}

/// One simulated part: its image and its machine.
#[derive(Debug, Clone)]
pub struct Part {
    pub file: PathBuf,
    pub machine: String,
    pub process: String,
}

/// Simulates `parts` parts of each of `machines` of the shipped model's fleet with `seed`.
pub fn simulate(out: &Path, machines: &[String], parts: u32, seed: u64) -> Vec<Part> {
    amfp()
        .args(["synth", "--overwrite", "--fleet"])
        .arg(repo(FLEET))
        .args([
            "--seed",
            &seed.to_string(),
            "--parts-per-machine",
            &parts.to_string(),
            "--machines",
            &machines.join(","),
        ])
        .arg("--out")
        .arg(out)
        .assert()
        .success();
    read_labels(out)
}

/// Simulates fresh parts of `machines` spread over the builds each machine went through in the
/// training data, as the model card's test split is: machines drift from build to build, and a
/// test that only looked at the first builds (what one `amfp synth` run gives) would measure
/// another distribution. `runs` runs of `parts` parts each start at builds spread evenly over
/// machine m's range 1..=ceil(training_parts / tray cells of m); run k uses seed `seed + k`.
pub fn simulate_across_builds(out: &Path, machines: &[String], parts: u32, runs: u32, seed: u64) -> Vec<Part> {
    let fleet: toml::Value = toml::from_str(&std::fs::read_to_string(repo(FLEET)).unwrap()).unwrap();
    let trained_on = ::amfp::model::Model::load(&repo(INT8_MODEL), 1).unwrap().meta.trained_on;
    let training_parts: u32 = trained_on
        .split(';')
        .find_map(|kv| kv.strip_prefix("parts_per_machine="))
        .and_then(|v| v.parse().ok())
        .expect("amfp.trained_on names parts_per_machine");
    let mut all = Vec::new();
    for name in machines {
        let machine = fleet["machine"].as_array().unwrap().iter().find(|m| m["name"].as_str() == Some(name)).unwrap();
        let tray = machine["tray"].as_array().unwrap();
        let cells = (tray[0].as_integer().unwrap() * tray[1].as_integer().unwrap()) as u32;
        let builds = training_parts.div_ceil(cells);
        for k in 0..runs {
            let first_build = 1 + k * builds / runs;
            let dir = out.join(format!("{name}-{k}"));
            amfp()
                .args(["synth", "--overwrite", "--threads", "2", "--fleet"])
                .arg(repo(FLEET))
                .args(["--seed", &(seed + u64::from(k)).to_string(), "--parts-per-machine", &parts.to_string()])
                .args(["--machines", name, "--first-build", &first_build.to_string(), "--out"])
                .arg(&dir)
                .assert()
                .success();
            all.extend(read_labels(&dir));
        }
    }
    all
}

/// The parts listed in a simulated dataset's labels.csv.
fn read_labels(out: &Path) -> Vec<Part> {
    let mut reader = csv::Reader::from_path(out.join("labels.csv")).unwrap();
    reader
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|row| {
            let row = row.unwrap();
            Part { file: out.join(&row["file"]), machine: row["machine"].clone(), process: row["process"].clone() }
        })
        .collect()
}

/// Runs `amfp identify --json` with `args` on `files`; returns the Attributions and the output.
pub fn identify_json(args: &[&str], files: &[&Path]) -> (Vec<serde_json::Value>, Output) {
    let output = amfp().arg("identify").arg("--json").args(args).args(files).output().unwrap();
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    let lines = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    (lines, output)
}

/// The labels of a model, from its metadata.
pub fn labels(model: &str) -> Vec<String> {
    ::amfp::model::Model::load(&repo(model), 1).unwrap().meta.labels
}
