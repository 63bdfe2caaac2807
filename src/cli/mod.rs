//! Command-line interface: the clap definitions of every subcommand and their dispatch.
//!
//! Each subcommand has its own module holding its arguments and a `run` function, so that
//! `main.rs` stays a two-liner and a subcommand can be read in one file.

pub mod config;
pub mod synth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default location of the configuration file, as installed by the Debian package.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/amfp/amfp.toml";

/// Identify the machine that made an additively manufactured part from a photograph of its surface.
#[derive(Debug, Parser)]
#[command(name = "amfp", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Keys can be overridden by AMFP__SECTION__KEY environment variables.
    #[arg(long, global = true, env = "AMFP_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. One exists only once it works.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Simulate labelled scans of printed parts from a virtual fleet of machines.
    Synth(synth::SynthArgs),
}

/// Runs a parsed command line and turns its outcome into the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Config(cmd) => config::run(cli.config.as_deref(), cmd),
        Command::Synth(args) => synth::run(cli.config.as_deref(), args),
    }
}
