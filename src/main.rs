//! The `amfp` command line. Parsing and dispatch only: every subcommand lives in
//! `amfp::cli`, and the work itself in the library modules they call.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = amfp::cli::Cli::parse();
    amfp::cli::run(cli)
}
