//! Logging through `log` + `env_logger`. (Skeleton: being written.)

use crate::config::LogSettings;

/// Installs the global logger.
pub fn init(settings: &LogSettings) {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(&settings.level)).try_init();
}
