//! Configuration: a TOML file overridden by `AMFP__SECTION__KEY` environment variables,
//! deserialised into typed structs. (Skeleton: being written.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole effective configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub log: LogSettings,
    pub synth: SynthSettings,
}

/// Logging defaults; RUST_LOG wins when set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// Defaults for `amfp synth`; its flags win.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthSettings {
    /// Fleet description (TOML); none means the built-in 21-machine fleet of the paper.
    pub fleet: Option<PathBuf>,
    /// Master seed of the dataset.
    pub seed: u64,
    /// Pixel size of scanner-mode images in µm.
    pub scanner_pixel_um: f64,
    /// Pixel size of microscope-mode images in µm.
    pub microscope_pixel_um: f64,
    /// 8 or 16.
    pub bit_depth: u8,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
}

impl Default for SynthSettings {
    fn default() -> Self {
        Self {
            fleet: None,
            seed: 7,
            scanner_pixel_um: 10.6,
            microscope_pixel_um: 3.0,
            bit_depth: 8,
            threads: 0,
        }
    }
}

/// Loads the effective configuration. (Skeleton.)
pub fn load(_path: Option<&Path>) -> anyhow::Result<Settings> {
    Ok(Settings::default())
}
