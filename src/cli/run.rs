//! `amfp run`: the daemon (src/daemon). Flags override the configuration for one run, which is
//! what demos and tests need; a service is configured in /etc/amfp/amfp.toml.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::{EXIT_INVALID, Settings};
use crate::daemon::settings::{SourceKind, TriggerKind};
use crate::daemon::{self, DaemonError, RunOptions};
use crate::model::EngineChoice;

/// Arguments of `amfp run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where parts come from (default: source.kind).
    #[arg(long, value_enum, value_name = "KIND")]
    pub source: Option<SourceKind>,
    /// Directory to watch (sets --source directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When a part is judged (default: daemon.trigger).
    #[arg(long, value_enum, value_name = "TRIGGER")]
    pub trigger: Option<TriggerKind>,
    /// Seconds between inspections with --trigger interval (default: daemon.interval_s).
    #[arg(long, value_name = "S")]
    pub interval_s: Option<f64>,
    /// The source every part should come from; others raise an odd_part event (default: daemon.expect).
    #[arg(long, value_name = "LABEL")]
    pub expect: Option<String>,
    /// Model(s) to judge with; repeat for several (default: model.path and model.extra, else the bundled model).
    #[arg(long = "model", value_name = "PATH")]
    pub models: Vec<PathBuf>,
    /// State directory for the results log and evidence (default: daemon.state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Stop after this many parts (default: run until SIGINT or SIGTERM, or the source ends).
    #[arg(long, value_name = "N")]
    pub parts: Option<u64>,
    /// The inference engine (default: model.engine; docs/engines.md).
    #[arg(long, value_enum, value_name = "ENGINE")]
    pub engine: Option<EngineChoice>,
}

/// Runs `amfp run`: 0 after a clean stop, 1 when a model, the source or a sink failed,
/// 2 for a configuration that cannot work.
pub fn run(settings: &Settings, args: RunArgs) -> ExitCode {
    let mut settings = settings.clone();
    if let Some(kind) = args.source {
        settings.source.kind = kind;
    }
    if let Some(dir) = args.dir {
        settings.source.kind = SourceKind::Directory;
        settings.source.dir = Some(dir);
    }
    if let Some(t) = args.trigger {
        settings.daemon.trigger = t;
    }
    if let Some(s) = args.interval_s {
        settings.daemon.interval_s = s;
    }
    if let Some(e) = args.expect {
        settings.daemon.expect = Some(e);
    }
    if let Some(d) = args.state_dir {
        settings.daemon.state_dir = d;
    }
    if let Some(engine) = args.engine {
        settings.model.engine = engine;
    }
    let problems = settings.check();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("error: {}: {}", p.key, p.message);
        }
        return ExitCode::from(EXIT_INVALID);
    }
    // A long-running service: frame buffers go back to the kernel once freed (before any
    // worker thread exists; see amfp::memory).
    crate::memory::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = RunOptions { models: args.models, max_parts: args.parts };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        daemon::run(settings, options, shutdown).await
    });
    // A part still being judged after the grace period must not hold the exit: its image stays
    // at the source and is judged after the next start.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ DaemonError::Config(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(e @ DaemonError::Failed(_)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one ends the process at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        log::error!(
            "cannot listen for SIGINT and SIGTERM; stop the daemon with SIGKILL (the outbox keeps undelivered results)"
        );
        return;
    };
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    log::info!("{name}: stopping (again to stop at once)");
    shutdown.cancel();
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    log::warn!("second signal: stopping at once; undelivered results stay in the MQTT outbox");
    std::process::exit(130);
}
