//! `amfp config ...`. (Skeleton: being written.)

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

/// `amfp config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, or the errors in it.
    Check,
}

/// Runs `amfp config ...`.
pub fn run(path: Option<&Path>, _cmd: ConfigCommand) -> ExitCode {
    match crate::config::load(path) {
        Ok(s) => {
            println!("{}", toml::to_string_pretty(&s).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
