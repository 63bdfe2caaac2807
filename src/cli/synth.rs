//! `amfp synth`. (Skeleton: being written.)

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `amfp synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {}

/// Runs `amfp synth`.
pub fn run(_path: Option<&Path>, _args: SynthArgs) -> ExitCode {
    ExitCode::FAILURE
}
