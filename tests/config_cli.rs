//! `amfp config check` end to end: the built binary with temporary configuration files and a
//! controlled environment.

mod common;

use std::io::Write;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::NamedTempFile;

/// A config file with `text`, deleted when dropped.
fn config_file(text: &str) -> NamedTempFile {
    let mut f = tempfile::Builder::new().prefix("amfp-").suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// `amfp config check` with no inherited AMFP settings, RUST_LOG or systemd variables.
fn check(config: Option<&Path>) -> Command {
    let mut cmd = common::amfp_clean_env();
    cmd.args(["config", "check"]);
    if let Some(path) = config {
        cmd.arg("--config").arg(path);
    }
    cmd
}

/// The path as amfp prints it.
fn shown(f: &NamedTempFile) -> String {
    f.path().display().to_string()
}

#[test]
fn valid_file_is_printed_with_its_source() {
    let f = config_file("[log]\nlevel = \"warn\"\n\n[synth]\nseed = 3\nbit_depth = 16\nscanner_pixel_um = 5\n");
    let out = check(Some(f.path())).assert().success().get_output().stdout.clone();
    let out = String::from_utf8(out).unwrap();
    let first = out.lines().next().unwrap();
    assert_eq!(first, format!("# amfp configuration from {}; no environment overrides", shown(&f)));
    for line in [
        "level = \"warn\"",
        "seed = 3",
        "bit_depth = 16",
        "scanner_pixel_um = 5.0",
        "microscope_pixel_um = 3.0",
        "threads = 0",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}` in:\n{out}");
    }
    // The output is itself a valid configuration with the same values.
    let again = config_file(&out);
    let out2 = check(Some(again.path())).assert().success().get_output().stdout.clone();
    let body = |s: &str| s.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(body(&out), body(&String::from_utf8(out2).unwrap()));
}

#[test]
fn config_can_come_from_amfp_config_variable() {
    let f = config_file("[synth]\nseed = 77\n");
    check(None)
        .env("AMFP_CONFIG", f.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("from {}", shown(&f))))
        .stdout(predicate::str::contains("seed = 77"));
}

#[test]
fn env_override_is_applied_and_named() {
    let f = config_file("[synth]\nseed = 3\n");
    check(Some(f.path()))
        .env("AMFP__SYNTH__SEED", "42")
        .env("AMFP__LOG__LEVEL", "debug")
        .assert()
        .success()
        .stdout(predicate::str::contains("seed = 42\n"))
        .stdout(predicate::str::contains("level = \"debug\"\n"))
        .stdout(predicate::str::contains("environment overrides: AMFP__LOG__LEVEL, AMFP__SYNTH__SEED"));
}

/// Without `--config`, the installed file is read when it exists (on a machine with the Debian
/// package), else the built-in defaults; either way the output says which, and the defaults case
/// is also covered by the loader's unit tests with another default path.
#[test]
fn no_file_means_built_in_defaults() {
    if Path::new(amfp::cli::DEFAULT_CONFIG_PATH).exists() {
        check(None).assert().stdout(predicate::str::starts_with(format!(
            "# amfp configuration from {}",
            amfp::cli::DEFAULT_CONFIG_PATH
        )));
        return;
    }
    check(None)
        .env("RUST_LOG", "debug")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("# amfp configuration from built-in defaults"))
        .stdout(predicate::str::contains("seed = 7\n"))
        // stderr is a pipe here: journald style, with the debug priority.
        .stderr(predicate::str::contains(format!(
            "<7>amfp::config: no configuration file at {}",
            amfp::cli::DEFAULT_CONFIG_PATH
        )));
}

#[test]
fn unknown_key_names_key_file_and_choices() {
    let f = config_file("[synth]\nsed = 3\n");
    check(Some(f.path()))
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(format!(
            "{}: synth.sed: unknown key; expected one of: fleet, seed,",
            shown(&f)
        )))
        .stderr(predicate::str::contains("did you mean `seed`?"));
}

#[test]
fn unknown_section_names_the_sections() {
    let f = config_file("[sinth]\nseed = 3\n");
    check(Some(f.path()))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}: sinth: unknown section; expected one of: log, synth, device, model, camera, identify, mqtt, source, daemon, output, enroll, drift, trust; did you mean `synth`?",
            shown(&f)
        )));
}

#[test]
fn wrong_type_names_key_file_and_expected() {
    let f = config_file("[synth]\nseed = \"forty-two\"\n");
    check(Some(f.path())).assert().code(2).stderr(predicate::str::contains(format!(
        "{}: synth.seed: wrong type: found string \"forty-two\"; expected a whole number (0 or more)",
        shown(&f)
    )));
}

#[test]
fn impossible_values_are_all_reported() {
    let f = config_file(
        "[log]\nlevel = \"loud\"\n[synth]\nbit_depth = 12\nscanner_pixel_um = -1.5\nmicroscope_pixel_um = 0\n",
    );
    let out = check(Some(f.path())).assert().code(2).get_output().stderr.clone();
    let err = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    let p = shown(&f);
    assert!(
        lines[0].starts_with(&format!("error: {p}: log.level: `loud` is not a log level; expected a log filter")),
        "{err}"
    );
    assert_eq!(lines[1], format!("error: {p}: synth.bit_depth: 12 is not allowed; expected 8 or 16"));
    assert_eq!(
        lines[2],
        format!(
            "error: {p}: synth.microscope_pixel_um: 0 is not allowed; expected a positive number of µm, at most 1000"
        )
    );
    assert_eq!(
        lines[3],
        format!(
            "error: {p}: synth.scanner_pixel_um: -1.5 is not allowed; expected a positive number of µm, at most 1000"
        )
    );
}

#[test]
fn out_of_range_integer_is_named() {
    let f = config_file("[synth]\nbit_depth = 300\nthreads = -1\n");
    check(Some(f.path()))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}: synth.bit_depth: integer `300` is not allowed; expected 8 or 16",
            shown(&f)
        )))
        .stderr(predicate::str::contains(format!("{}: synth.threads: integer `-1` is not allowed;", shown(&f))));
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    check(Some(&missing))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("error: {}: cannot read configuration file:", missing.display())));
}

#[test]
fn broken_toml_is_named_with_position() {
    let f = config_file("[synth]\nseed = \n");
    check(Some(f.path()))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("error: {}: not valid TOML", shown(&f))))
        .stderr(predicate::str::contains("at line 2, column 8: "));
}

#[test]
fn bad_env_value_names_the_variable() {
    let f = config_file("[synth]\nseed = 3\n");
    check(Some(f.path()))
        .env("AMFP__SYNTH__SEED", "many")
        .env("AMFP__SYNTH__BIT_DEPTH", "12")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: environment variable AMFP__SYNTH__SEED: synth.seed: wrong type: found string \"many\"; expected a whole number",
        ))
        .stderr(predicate::str::contains(
            "error: environment variable AMFP__SYNTH__BIT_DEPTH: synth.bit_depth: 12 is not allowed; expected 8 or 16",
        ));
}

#[test]
fn unknown_env_key_names_the_variable() {
    check(None).env("AMFP__SYNTH__SEEDS", "1").assert().code(2).stderr(predicate::str::contains(
        "error: environment variable AMFP__SYNTH__SEEDS: synth.seeds: unknown key; expected one of:",
    ));
}
