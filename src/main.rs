//! The `amfp` command line. Parsing and dispatch only: every subcommand lives in
//! `amfp::cli`, and the work itself in the library modules they call.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread exists: large frame buffers go back to the kernel once freed.
    amfp::memory::tune_allocator();
    let cli = amfp::cli::Cli::parse();
    amfp::cli::run(cli)
}
