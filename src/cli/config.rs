//! `amfp config ...`: look at the configuration the other commands would run with.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::{self, Loaded};

/// `amfp config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML (secrets masked), or every error in it.
    ///
    /// Exit status: 0 when the configuration is valid, 2 when it is not (errors on stderr, one
    /// per line).
    Check,
}

/// Runs `amfp config ...`.
pub fn run(path: Option<&Path>, cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check => check(path),
    }
}

/// `amfp config check`: the effective configuration on stdout, or its problems on stderr.
fn check(path: Option<&Path>) -> ExitCode {
    let loaded = match config::load_sourced(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            e.eprint();
            return ExitCode::from(config::EXIT_INVALID);
        }
    };
    crate::logging::init(&loaded.settings.log);
    match loaded.settings.to_masked_toml() {
        Ok(body) => {
            print!("{}\n{body}", header(&loaded));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot print the configuration as TOML: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first line of the output: where the configuration came from.
fn header(loaded: &Loaded) -> String {
    let file = match &loaded.file {
        Some(p) => format!("from {}", p.display()),
        None => "from built-in defaults (no configuration file)".to_string(),
    };
    let env = if loaded.env.is_empty() {
        "no environment overrides".to_string()
    } else {
        format!("environment overrides: {}", loaded.env.join(", "))
    };
    format!("# amfp configuration {file}; {env}")
}
