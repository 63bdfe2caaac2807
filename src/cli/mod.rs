//! Command-line interface: the clap definitions of every subcommand and their dispatch.
//!
//! Each subcommand has its own module holding its arguments and a `run` function, so that
//! `main.rs` stays a two-liner and a subcommand can be read in one file.

pub mod calibrate;
pub mod cameras;
pub mod config;
pub mod drift;
pub mod enroll;
pub mod envelope;
pub mod gallery;
pub mod identify;
pub mod model;
pub mod run;
pub mod synth;
pub mod trust;

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
    /// Identify the machine that made each part in the given images.
    ///
    /// Exit status: 0 all identified, 3 some part from an unknown source, 4 some image rejected
    /// (cannot be judged), 5 some claim contradicted, 1 an image or model could not be read,
    /// 2 invalid configuration or arguments. With several images, the worst wins (1 > 5 > 4 > 3 > 0).
    Identify(identify::IdentifyArgs),
    /// Look at models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Add a machine to the model's fingerprint gallery from images of its parts, without
    /// retraining (a new gallery version; the previous ones are kept).
    Enroll(enroll::EnrollArgs),
    /// List, show, audit, remove from or roll back the model's fingerprint gallery.
    Gallery(gallery::GalleryArgs),
    /// Where each known machine's drift monitoring stands, with a picture of its parts over time.
    ///
    /// Exit status: 0 no alarm, 3 a drift alarm stands, 1 the state or results could not be read.
    #[command(subcommand)]
    Drift(drift::DriftCommand),
    /// Run the daemon: inspect parts from a camera, a watched directory or the simulator, and
    /// send each attribution to stdout, the results log and MQTT, until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// List the V4L2 cameras and USB microscopes with their formats, sizes and controls.
    Cameras(cameras::CamerasArgs),
    /// Measure the camera's pixel size from an image of a line grating or grid of known pitch.
    Calibrate(calibrate::CalibrateArgs),
    /// Say whether a camera (pixel size, field of view) can serve a model, and draw it.
    ///
    /// Exit status: 0 inside the envelope, 3 at its edge, 4 outside, 1 the model or the PNG
    /// could not be read or written, 2 invalid configuration or arguments.
    Envelope(envelope::EnvelopeArgs),
    /// Make the ed25519 keys that sign models and galleries (docs/trust.md).
    #[command(subcommand)]
    Key(trust::KeyCommand),
    /// Sign models and galleries (FILE.sig beside each), for devices whose [trust] names the key.
    Sign(trust::SignArgs),
    /// Check that files are signed by a trusted key (--key, or [trust] keys).
    ///
    /// Exit status: 0 every file is, 1 one is not or cannot be read.
    Verify(trust::VerifyArgs),
}

/// Runs a parsed command line and turns its outcome into the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Config(cmd) => config::run(cli.config.as_deref(), cmd),
        Command::Synth(args) => synth::run(cli.config.as_deref(), args),
        Command::Identify(args) => with_settings(cli.config.as_deref(), |s| identify::run(s, args)),
        Command::Model(cmd) => with_settings(cli.config.as_deref(), |s| model::run(s, cmd)),
        Command::Enroll(args) => with_settings(cli.config.as_deref(), |s| enroll::run(s, args)),
        Command::Gallery(args) => with_settings(cli.config.as_deref(), |s| gallery::run(s, args)),
        Command::Drift(cmd) => with_settings(cli.config.as_deref(), |s| drift::run(s, cmd)),
        Command::Run(args) => with_settings(cli.config.as_deref(), |s| run::run(s, args)),
        Command::Cameras(args) => with_settings(cli.config.as_deref(), |s| cameras::run(s, args)),
        Command::Calibrate(args) => with_settings(cli.config.as_deref(), |s| calibrate::run(s, args)),
        Command::Envelope(args) => with_settings(cli.config.as_deref(), |s| envelope::run(s, args)),
        Command::Key(cmd) => trust::run_key(cmd),
        Command::Sign(args) => trust::run_sign(args),
        Command::Verify(args) => with_settings(cli.config.as_deref(), |s| trust::run_verify(s, args)),
    }
}

/// Loads the configuration and starts logging, then runs `f`; an invalid configuration is
/// reported (every problem) and exits with [`crate::config::EXIT_INVALID`].
pub fn with_settings(path: Option<&std::path::Path>, f: impl FnOnce(&crate::config::Settings) -> ExitCode) -> ExitCode {
    match crate::config::load(path) {
        Ok(settings) => {
            crate::logging::init(&settings.log);
            f(&settings)
        }
        Err(e) => {
            e.eprint();
            ExitCode::from(crate::config::EXIT_INVALID)
        }
    }
}
