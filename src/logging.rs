//! Logging through `log` + `env_logger`, readable on a terminal and level-aware under journald.
//!
//! `RUST_LOG` wins over `log.level` from the configuration. When stderr is not a terminal, or
//! systemd says it is collecting the output (`JOURNAL_STREAM`), each event becomes one line with
//! an sd-daemon priority prefix (`<6>amfp::synth: ...`) and no timestamp or colour, so journald
//! records the level and its own time. On a terminal lines carry a timestamp, level and target.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogSettings;

/// The installed logger: installed once, its filter and format replaced by later [`init`] calls.
struct Switch(RwLock<env_logger::Logger>);

impl Log for Switch {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        self.0.read().unwrap_or_else(PoisonError::into_inner).log(record);
    }

    fn flush(&self) {
        self.0.read().unwrap_or_else(PoisonError::into_inner).flush();
    }
}

/// Our logger, once [`init`] has run and `log` accepted it.
static ACTIVE: OnceLock<&'static Switch> = OnceLock::new();
/// The logger handed to `log`; it lives for the whole process.
static SWITCH: OnceLock<Switch> = OnceLock::new();
/// Debug messages from before [`init`] (configuration loading), emitted by the first `init`.
static EARLY: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());
/// Most early messages kept; they are few, this only guards against a loop.
const MAX_EARLY: usize = 64;

/// Installs the global logger for `settings`, or reconfigures it when already installed, so it is
/// safe to call again (e.g. with defaults first, then with the loaded configuration). When some
/// other logger was installed first, it is left alone.
pub fn init(settings: &LogSettings) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = effective_filter(rust_log.as_deref(), settings);
    let journal = use_journal(std::env::var_os("JOURNAL_STREAM").is_some(), std::io::stderr().is_terminal());
    let logger = build(filter, journal);
    let max = logger.filter();

    let mut logger = Some(logger);
    let switch = SWITCH.get_or_init(|| Switch(RwLock::new(logger.take().expect("logger is set"))));
    if let Some(logger) = logger {
        *switch.0.write().unwrap_or_else(PoisonError::into_inner) = logger;
    }
    if ACTIVE.get().is_none() {
        if log::set_logger(switch).is_err() {
            return; // Someone else's logger (a test harness): keep it.
        }
        let _ = ACTIVE.set(switch);
        log::set_max_level(max);
        let early = std::mem::take(&mut *EARLY.lock().unwrap_or_else(PoisonError::into_inner));
        for (target, message) in early {
            log::debug!(target: target, "{message}");
        }
    } else {
        log::set_max_level(max);
    }
}

/// Logs `message` at debug level now if logging is set up, else keeps it for the first [`init`].
/// Exists because the configuration is loaded before logging can be configured from it.
pub fn early_debug(target: &'static str, message: String) {
    if ACTIVE.get().is_some() || log::max_level() != LevelFilter::Off {
        log::debug!(target: target, "{message}");
    } else {
        let mut early = EARLY.lock().unwrap_or_else(PoisonError::into_inner);
        if early.len() < MAX_EARLY {
            early.push((target, message));
        }
    }
}

/// The filter in force: a non-empty `RUST_LOG`, else the configured level, else `info`.
fn effective_filter<'a>(rust_log: Option<&'a str>, settings: &'a LogSettings) -> &'a str {
    [rust_log, Some(settings.level.as_str())].into_iter().flatten().find(|f| !f.trim().is_empty()).unwrap_or("info")
}

/// Whether to write journald-style lines: under systemd, or whenever stderr is not a terminal.
fn use_journal(journal_stream: bool, stderr_is_terminal: bool) -> bool {
    journal_stream || !stderr_is_terminal
}

/// The sd-daemon priority of a level: what journald files the line under.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One journald line: priority prefix, target, message; inner newlines escaped so that one event
/// stays one journal entry with one priority.
fn journal_line(level: Level, target: &str, message: &str) -> String {
    let message = message.trim_end_matches('\n').replace('\n', "\\n");
    format!("<{}>{target}: {message}", priority(level))
}

/// Builds the `env_logger` logger for `filter` in the chosen style.
fn build(filter: &str, journal: bool) -> env_logger::Logger {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    if journal {
        builder.write_style(env_logger::WriteStyle::Never).format(|buf, record| {
            let line = journal_line(record.level(), record.target(), &record.args().to_string());
            writeln!(buf, "{line}")
        });
    } else {
        builder.format_timestamp_millis().format_target(true);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_then_settings_then_info() {
        let s = LogSettings { level: "debug".into() };
        assert_eq!(effective_filter(Some("trace"), &s), "trace");
        assert_eq!(effective_filter(Some(" "), &s), "debug");
        assert_eq!(effective_filter(None, &s), "debug");
        assert_eq!(effective_filter(None, &LogSettings { level: String::new() }), "info");
        assert_eq!(effective_filter(None, &LogSettings::default()), "info");
    }

    #[test]
    fn journal_style_when_not_a_terminal_or_under_systemd() {
        assert!(use_journal(true, true));
        assert!(use_journal(false, false));
        assert!(!use_journal(false, true));
    }

    #[test]
    fn journal_lines_carry_sd_daemon_priorities() {
        assert_eq!(journal_line(Level::Error, "amfp", "boom"), "<3>amfp: boom");
        assert_eq!(journal_line(Level::Warn, "amfp", "hm"), "<4>amfp: hm");
        assert_eq!(journal_line(Level::Info, "amfp::synth", "ok"), "<6>amfp::synth: ok");
        assert_eq!(journal_line(Level::Debug, "a", "d"), "<7>a: d");
        assert_eq!(journal_line(Level::Trace, "a", "t"), "<7>a: t");
        assert_eq!(journal_line(Level::Info, "a", "two\nlines\n"), "<6>a: two\\nlines");
    }

    #[test]
    fn init_twice_is_safe() {
        init(&LogSettings::default());
        init(&LogSettings { level: "warn".into() });
        log::info!("not shown, and no panic");
    }
}
