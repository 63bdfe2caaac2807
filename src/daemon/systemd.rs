//! systemd integration through the sd-notify crate: READY once the model is loaded and the
//! source open, STATUS lines people see in `systemctl status`, WATCHDOG pings, STOPPING.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing, so the daemon runs the same
//! from a terminal.

use std::time::Duration;

use sd_notify::NotifyState;

/// Talks to the service manager; see the module docs.
#[derive(Debug, Clone)]
pub struct Systemd {
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Reads the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`).
    pub fn from_env() -> Self {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        if let Some(w) = watchdog {
            log::info!("systemd watchdog every {:.1} s: pings come from the inference loop", w.as_secs_f64());
        }
        Self { watchdog }
    }

    /// How often to ping the watchdog: half its timeout, as systemd recommends; `None` when off.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// The service is up: models loaded, source open.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A one-line status for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The pipeline is alive.
    pub fn ping(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// A clean shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing the part in flight")]);
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(false, states) {
            log::debug!("sd_notify: {e}");
        }
    }
}
