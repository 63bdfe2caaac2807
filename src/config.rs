//! Configuration: a TOML file overridden by `AMFP__SECTION__KEY` environment variables,
//! deserialised into typed structs and checked before anything runs.
//!
//! The `config` crate reads and merges the sources and remembers where each value came from.
//! Deserialisation is strict (a string is never silently turned into a number, a float is
//! never rounded into an integer) and every problem is reported with the dotted key, the file
//! or environment variable that set it, and what would have been allowed. All problems are
//! collected, so a broken file is fixed in one round. See `docs/configuration.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Map, Value, ValueKind};
use serde::de::{self, IntoDeserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::model::{EngineChoice, LoadOptions};

/// Prefix of the environment variables that override keys: `AMFP__SYNTH__SEED` sets `synth.seed`.
pub const ENV_PREFIX: &str = "AMFP";
/// Separator between the prefix, the section and the key of an overriding environment variable.
pub const ENV_SEPARATOR: &str = "__";
/// Exit code of a command whose configuration cannot be loaded, shared by every subcommand.
pub const EXIT_INVALID: u8 = 2;
/// What a key whose name looks secret is printed as by [`mask_secrets`].
pub const MASK: &str = "********";

/// Most problems reported for one load: beyond this the file is probably not an amfp file.
const MAX_PROBLEMS: usize = 50;

/// The whole effective configuration: one field per section of the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[log]`: how much the process logs.
    pub log: LogSettings,
    /// `[synth]`: defaults of `amfp synth`.
    pub synth: SynthSettings,
    /// `[device]`: who this device is in results.
    pub device: DeviceSettings,
    /// `[model]`: which models judge the parts.
    pub model: ModelSettings,
    /// `[camera]`: what is known about the camera's optics.
    pub camera: CameraSettings,
    /// `[identify]`: how ROIs are drawn and voted.
    pub identify: IdentifySettings,
    /// `[mqtt]`: publishing to a fleet manager over MQTT.
    pub mqtt: MqttSettings,
    /// `[source]`: where the daemon's parts come from.
    pub source: crate::daemon::settings::SourceSettings,
    /// `[daemon]`: when the daemon inspects a part, its state and shutdown.
    pub daemon: crate::daemon::settings::DaemonSettings,
    /// `[output]`: the daemon's local sinks (stdout, results log, evidence images).
    pub output: crate::daemon::settings::OutputSettings,
    /// `[enroll]`: enrollment at the station over MQTT.
    pub enroll: crate::daemon::settings::EnrollSettings,
    /// `[drift]`: drift monitoring of the known machines in `amfp run`.
    pub drift: crate::drift::DriftSettings,
    /// `[trust]`: the keys whose signatures models and galleries must carry (docs/trust.md).
    pub trust: crate::trust::TrustSettings,
}

/// Identity of the device in results and MQTT topics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSettings {
    /// Device id; not set: the host name.
    pub id: Option<String>,
}

/// The models that judge each part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// The primary model (ONNX). Not set: the bundled reference model (see `model::bundled_model_path`).
    pub path: Option<PathBuf>,
    /// Further models judging the same part (e.g. build tray position); reported as `attributes`.
    pub extra: Vec<PathBuf>,
    /// Threads per inference call: a batch's ROIs are shared out between them. A daemon judging
    /// one part at a time can cut its latency with 2 on a multi-core board; `amfp identify
    /// --threads` judges several parts at once instead (docs/performance.md).
    pub threads: usize,
    /// The primary model's fingerprint gallery (docs/gallery.md): `auto` (the one beside the
    /// model, when there is one), `off` (the vote alone) or a path.
    pub gallery: GalleryChoice,
    /// Which engine runs the models (docs/engines.md): `auto` (onnxruntime when its library
    /// loads, else tract), `onnxruntime` or `tract`.
    pub engine: EngineChoice,
    /// onnxruntime's library (`libonnxruntime.so`); not set: amfp's own places (docs/engines.md).
    pub onnxruntime: Option<PathBuf>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            path: None,
            extra: Vec::new(),
            threads: 1,
            gallery: GalleryChoice::Auto,
            engine: EngineChoice::Auto,
            onnxruntime: None,
        }
    }
}

impl Settings {
    /// How to load the models: threads, engine and onnxruntime's library (`[model]`), and the
    /// keys their signatures are checked against (`[trust]`), as configured.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            threads: self.model.threads,
            engine: self.model.engine,
            onnxruntime_library: self.model.onnxruntime.clone(),
            trusted_keys: self.trust.keys.clone(),
            ..LoadOptions::default()
        }
    }
}

/// Which fingerprint gallery the primary model judges with (`model.gallery`, `--gallery`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum GalleryChoice {
    /// `<model>.gallery.json` beside the model, when it exists.
    Auto,
    /// None: verdicts by the vote alone (the paper's rule).
    Off,
    /// This file.
    Path(PathBuf),
}

impl From<String> for GalleryChoice {
    fn from(s: String) -> Self {
        match s.as_str() {
            "auto" => Self::Auto,
            "off" => Self::Off,
            _ => Self::Path(PathBuf::from(s)),
        }
    }
}

impl From<GalleryChoice> for String {
    fn from(c: GalleryChoice) -> Self {
        match c {
            GalleryChoice::Auto => "auto".into(),
            GalleryChoice::Off => "off".into(),
            GalleryChoice::Path(p) => p.display().to_string(),
        }
    }
}

/// The camera's optics, as configured or calibrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraSettings {
    /// µm per pixel on the part. Used when neither `--pixel-um` nor the image file says.
    pub pixel_um: Option<f64>,
    /// How the part is found in a frame: auto, otsu (part on a background) or full (all surface).
    pub mask: crate::roi::MaskMode,
    /// V4L2 device node of the camera or USB microscope (`capture::v4l2`, docs/capture.md).
    pub device: PathBuf,
    /// Pixel formats (FourCC) in order of preference; the first the camera offers is used.
    pub formats: Vec<String>,
    /// Frame width in pixels; not set: the largest the camera offers in the chosen format.
    pub width: Option<u32>,
    /// Frame height in pixels; not set: the largest the camera offers in the chosen format.
    pub height: Option<u32>,
    /// Frames per second asked of the camera; not set: the camera's default.
    pub fps: Option<f64>,
    /// Frames averaged into one to cut sensor noise (1: no averaging).
    pub average_frames: u32,
    /// Turn automatic exposure, gain, focus and white balance off, so that every part is imaged alike.
    pub lock_controls: bool,
    /// Exposure time in µs (V4L2 exposure_time_absolute, in units of 100 µs); not set: as the camera is.
    pub exposure_us: Option<u32>,
    /// Analogue gain in the camera's own units; not set: as the camera is.
    pub gain: Option<i64>,
    /// Focus position in the camera's own units (focus_absolute); not set: as the camera is.
    pub focus: Option<i64>,
    /// White balance colour temperature in kelvin; not set: as the camera is.
    pub white_balance_k: Option<u32>,
    /// Further V4L2 controls by their v4l2-ctl name (`power_line_frequency = 1`), set after the others.
    pub controls: BTreeMap<String, i64>,
}

impl Default for CameraSettings {
    fn default() -> Self {
        Self {
            pixel_um: None,
            mask: crate::roi::MaskMode::Auto,
            device: PathBuf::from("/dev/video0"),
            formats: ["GREY", "Y16", "YUYV", "MJPG"].map(String::from).to_vec(),
            width: None,
            height: None,
            fps: None,
            average_frames: 1,
            lock_controls: true,
            exposure_us: None,
            gain: None,
            focus: None,
            white_balance_k: None,
            controls: BTreeMap::new(),
        }
    }
}

/// How ROIs are drawn and voted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentifySettings {
    /// ROIs in the full vote; not set: the model's `amfp.votes`.
    pub rois: Option<usize>,
    /// ROIs per inference batch (and per early-stopping step).
    pub batch: usize,
    /// Early stopping: off, exact or sequential.
    pub early_stop: crate::vote::StopRule,
    /// Fewest ROIs before the sequential rule may stop.
    pub min_rois: usize,
    /// Confidence of the sequential rule in standard deviations.
    pub z: f64,
    /// Seed of the ROI positions.
    pub seed: u64,
    /// Candidates listed in results.
    pub top_k: usize,
    /// Least part surface, in ROI areas, for a vote.
    pub min_surface_rois: f64,
}

impl Default for IdentifySettings {
    fn default() -> Self {
        Self {
            rois: None,
            batch: 4,
            early_stop: crate::vote::StopRule::Sequential,
            min_rois: 4,
            z: 3.0,
            seed: 0,
            top_k: 3,
            min_surface_rois: 2.0,
        }
    }
}

/// Logging defaults; `RUST_LOG` wins when set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// An `env_logger` filter: a level (`info`) and/or `module=level` directives.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// Defaults for `amfp synth`; its flags win.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        Self { fleet: None, seed: 7, scanner_pixel_um: 10.6, microscope_pixel_um: 3.0, bit_depth: 8, threads: 0 }
    }
}

/// Allowed values of `log.level`, as told to the user.
const LEVEL_ALLOWED: &str = "a log filter: error, warn, info, debug, trace or off, \
     optionally followed by module=level directives (e.g. `info,amfp::synth=debug`)";
/// Allowed values of the pixel sizes.
const PIXEL_ALLOWED: &str = "a positive number of µm, at most 1000";
/// Largest accepted pixel size in µm: beyond a millimetre per pixel no surface texture is left.
const MAX_PIXEL_UM: f64 = 1000.0;
/// Largest accepted worker count: more is a typo, not a machine.
const MAX_THREADS: usize = 1024;
/// Smallest MQTT outbox: room for a few results of any realistic size.
const MQTT_MIN_OUTBOX_BYTES: u64 = 64 * 1024;
/// Largest MQTT outbox: more is a typo, not a disk.
const MQTT_MAX_OUTBOX_BYTES: u64 = 1 << 40;

/// What each key accepts, in words; used by type errors and value checks alike.
const ALLOWED: &[(&str, &str)] = &[
    ("log.level", LEVEL_ALLOWED),
    ("synth.fleet", "a path to a fleet TOML file"),
    ("synth.seed", "a whole number (0 or more)"),
    ("synth.scanner_pixel_um", PIXEL_ALLOWED),
    ("synth.microscope_pixel_um", PIXEL_ALLOWED),
    ("synth.bit_depth", "8 or 16"),
    ("synth.threads", "a whole number from 0 (one per core) to 1024"),
    ("device.id", "a non-empty name without / + # or spaces (it becomes part of MQTT topics)"),
    ("model.path", "a path to an ONNX model exported for amfp"),
    ("model.extra", "a list of paths to ONNX models exported for amfp"),
    ("model.threads", "a whole number of threads per inference call from 1 to 64"),
    ("model.gallery", "auto (the gallery beside the model), off (the vote alone) or a path to a gallery file"),
    ("model.engine", "auto, onnxruntime or tract"),
    ("model.onnxruntime", "a path to libonnxruntime.so"),
    ("camera.pixel_um", PIXEL_ALLOWED),
    ("camera.mask", "auto, otsu or full"),
    ("camera.device", "a path to a V4L2 device node, e.g. /dev/video0"),
    ("camera.formats", "a non-empty list of pixel formats from GREY, Y16, YUYV and MJPG, most preferred first"),
    ("camera.width", "a whole number of pixels from 16 to 20000"),
    ("camera.height", "a whole number of pixels from 16 to 20000"),
    ("camera.fps", "a number of frames per second above 0, at most 1000"),
    ("camera.average_frames", "a whole number of frames from 1 to 64"),
    ("camera.lock_controls", "true or false"),
    ("camera.exposure_us", "a whole number of µs from 100 to 10000000"),
    ("camera.gain", "a whole number in the camera's units (amfp cameras lists its range)"),
    ("camera.focus", "a whole number in the camera's units (amfp cameras lists its range)"),
    ("camera.white_balance_k", "a whole number of kelvin from 1000 to 20000"),
    ("camera.controls", "a table of V4L2 control names as amfp cameras lists them (lower case, _) to whole numbers"),
    ("identify.rois", "a whole number of ROIs from 1 to 256"),
    ("identify.batch", "a whole number of ROIs from 1 to 64"),
    ("identify.early_stop", "off, exact or sequential"),
    ("identify.min_rois", "a whole number from 1 to 256"),
    ("identify.z", "a number of standard deviations from 0.5 to 10"),
    ("identify.seed", "a whole number (0 or more)"),
    ("identify.top_k", "a whole number from 1 to 50"),
    ("identify.min_surface_rois", "a number of ROI areas from 0 to 1000"),
    ("mqtt.enabled", "true or false"),
    ("mqtt.host", "a host name or IPv4 address, without scheme, port or spaces"),
    ("mqtt.port", "a TCP port from 1 to 65535"),
    ("mqtt.base", "a topic prefix without spaces, + or #, not starting or ending with /"),
    ("mqtt.client_id", "a client id of 1 to 128 characters without spaces"),
    ("mqtt.keep_alive_s", "a whole number of seconds from 5 to 3600"),
    ("mqtt.username", "a non-empty user name"),
    ("mqtt.password_file", "a path to a file holding the password (e.g. a systemd credential)"),
    ("mqtt.ca_file", "a path to PEM CA certificates (setting it turns TLS on)"),
    ("mqtt.client_cert_file", "a path to a PEM client certificate"),
    ("mqtt.client_key_file", "a path to the PEM private key of the client certificate"),
    ("mqtt.outbox_dir", "a path to a directory for undelivered results"),
    ("mqtt.outbox_max_bytes", "a whole number of bytes from 65536 (64 KiB) to 1099511627776 (1 TiB)"),
    ("mqtt.outbox_max_entries", "a whole number from 1 to 10000000"),
    ("mqtt.reconnect_max_s", "a whole number of seconds from 1 to 3600"),
    ("mqtt.shutdown_grace_s", "a whole number of seconds from 0 to 300"),
];

/// What `key` accepts, in words, when the key is known.
fn allowed(key: &str) -> Option<&'static str> {
    all_allowed().find(|(k, _)| *k == key).map(|(_, a)| *a)
}

/// Every key with what it accepts: this module's table, the daemon's sections' and drift monitoring's.
fn all_allowed() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    ALLOWED.iter().chain(crate::daemon::settings::ALLOWED).chain(crate::drift::ALLOWED).chain(crate::trust::ALLOWED)
}

/// A value that deserialised but is not allowed, found by [`Settings::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Dotted key, e.g. `synth.bit_depth`.
    pub key: &'static str,
    /// Why the value is refused and what would be allowed.
    pub message: String,
}

impl Settings {
    /// Checks the values that types alone cannot: ranges, enumerations, filter syntax.
    /// Returns every problem, empty when the settings are usable.
    pub fn check(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        let mut bad = |key: &'static str, message: String| out.push(Invalid { key, message });
        if let Err(why) = check_log_filter(&self.log.level) {
            bad("log.level", why);
        }
        let s = &self.synth;
        if let Some(fleet) = &s.fleet
            && fleet.as_os_str().is_empty()
        {
            bad("synth.fleet", "must not be empty; leave the key out for the built-in fleet".into());
        }
        for (key, um) in
            [("synth.scanner_pixel_um", s.scanner_pixel_um), ("synth.microscope_pixel_um", s.microscope_pixel_um)]
        {
            if !(um.is_finite() && um > 0.0 && um <= MAX_PIXEL_UM) {
                bad(key, format!("{um} is not allowed; expected {PIXEL_ALLOWED}"));
            }
        }
        if !matches!(s.bit_depth, 8 | 16) {
            bad("synth.bit_depth", format!("{} is not allowed; expected 8 or 16", s.bit_depth));
        }
        self.check_identify(&mut bad);
        self.check_mqtt(&mut bad);
        for (key, shown) in crate::daemon::settings::check(&self.source, &self.daemon, &self.output, &self.enroll) {
            bad(key, format!("{shown} is not allowed; expected {}", allowed(key).unwrap_or_default()));
        }
        for (key, shown) in crate::drift::check(&self.drift) {
            bad(key, format!("{shown} is not allowed; expected {}", allowed(key).unwrap_or_default()));
        }
        for (key, shown) in crate::trust::check(&self.trust) {
            bad(key, format!("{shown} is not allowed; expected {}", allowed(key).unwrap_or_default()));
        }
        if let Some((key, message)) = crate::daemon::settings::check_together(&self.source) {
            bad(key, message);
        }
        if s.threads > MAX_THREADS {
            bad(
                "synth.threads",
                format!("{} is not allowed; expected {}", s.threads, allowed("synth.threads").unwrap_or_default()),
            );
        }
        out
    }
}

impl Settings {
    /// The checks of `[device]`, `[model]`, `[camera]` and `[identify]`.
    fn check_identify(&self, bad: &mut impl FnMut(&'static str, String)) {
        let mut out_of = |key: &'static str, shown: String| {
            bad(key, format!("{shown} is not allowed; expected {}", allowed(key).unwrap_or_default()))
        };
        if let Some(id) = &self.device.id
            && (id.is_empty() || id.contains(['/', '+', '#']) || id.chars().any(char::is_whitespace))
        {
            out_of("device.id", format!("{id:?}"));
        }
        if !(1..=64).contains(&self.model.threads) {
            out_of("model.threads", self.model.threads.to_string());
        }
        if self.model.gallery == GalleryChoice::Path(PathBuf::new()) {
            out_of("model.gallery", "an empty path".into());
        }
        if self.model.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            out_of("model.path", "an empty path".into());
        }
        if self.model.onnxruntime.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            out_of("model.onnxruntime", "an empty path".into());
        }
        if let Some(um) = self.camera.pixel_um
            && !(um.is_finite() && um > 0.0 && um <= MAX_PIXEL_UM)
        {
            out_of("camera.pixel_um", um.to_string());
        }
        self.check_camera(&mut out_of);
        let i = &self.identify;
        if let Some(n) = i.rois
            && !(1..=256).contains(&n)
        {
            out_of("identify.rois", n.to_string());
        }
        if !(1..=64).contains(&i.batch) {
            out_of("identify.batch", i.batch.to_string());
        }
        if !(1..=256).contains(&i.min_rois) {
            out_of("identify.min_rois", i.min_rois.to_string());
        }
        if !(0.5..=10.0).contains(&i.z) {
            out_of("identify.z", i.z.to_string());
        }
        if !(1..=50).contains(&i.top_k) {
            out_of("identify.top_k", i.top_k.to_string());
        }
        if !(0.0..=1000.0).contains(&i.min_surface_rois) {
            out_of("identify.min_surface_rois", i.min_surface_rois.to_string());
        }
    }
}

/// `[mqtt]`: publishing attributions, events and status to a fleet manager's MQTT broker
/// (`publish::mqtt`, docs/mqtt.md). Secrets are never in this file: the password is read from
/// `password_file` and the TLS key from `client_key_file`, so systemd credentials can supply them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// Whether the daemon publishes over MQTT at all.
    pub enabled: bool,
    /// Broker host name or IPv4 address.
    pub host: String,
    /// Broker TCP port (1883 plain, 8883 is usual for TLS).
    pub port: u16,
    /// First topic level(s): topics are `<base>/<device>/status|result|event|cmd/inspect`.
    pub base: String,
    /// MQTT client id; not set: `amfp-<device>`.
    pub client_id: Option<String>,
    /// Seconds between keep-alive pings when nothing else is sent.
    pub keep_alive_s: u64,
    /// User name for the broker; not set: anonymous.
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored), e.g. a systemd credential.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to verify the broker with; set: TLS is on.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that require one.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Directory of the durable outbox of undelivered results (the service's StateDirectory).
    pub outbox_dir: PathBuf,
    /// Most bytes the outbox holds; beyond it new results are refused (docs/mqtt.md).
    pub outbox_max_bytes: u64,
    /// Most results the outbox holds; beyond it new results are refused.
    pub outbox_max_entries: u64,
    /// Longest wait between reconnection attempts, seconds (the backoff's cap).
    pub reconnect_max_s: u64,
    /// How long a clean shutdown waits for the broker's acknowledgements, seconds.
    pub shutdown_grace_s: u64,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "localhost".into(),
            port: 1883,
            base: "amfp".into(),
            client_id: None,
            keep_alive_s: 30,
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            outbox_dir: PathBuf::from("/var/lib/amfp/outbox"),
            outbox_max_bytes: 64 * 1024 * 1024,
            outbox_max_entries: 20_000,
            reconnect_max_s: 60,
            shutdown_grace_s: 5,
        }
    }
}

impl Settings {
    /// The checks of `[mqtt]`: ranges, topic-safe names, and keys that need each other. Whether
    /// the files can be read is checked when publishing starts (`publish::mqtt`).
    fn check_mqtt(&self, bad: &mut impl FnMut(&'static str, String)) {
        let m = &self.mqtt;
        let mut out_of = |key: &'static str, shown: String| {
            bad(key, format!("{shown} is not allowed; expected {}", allowed(key).unwrap_or_default()))
        };
        let host = m.host.as_str();
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || "/:@?#".contains(c)) {
            out_of("mqtt.host", format!("{host:?}"));
        }
        if m.port == 0 {
            out_of("mqtt.port", "0".into());
        }
        let base = m.base.as_str();
        if base.is_empty()
            || base.starts_with('/')
            || base.ends_with('/')
            || base.contains("//")
            || base.chars().any(|c| c.is_whitespace() || c == '+' || c == '#')
        {
            out_of("mqtt.base", format!("{base:?}"));
        }
        if let Some(id) = &m.client_id
            && (id.is_empty() || id.chars().count() > 128 || id.chars().any(char::is_whitespace))
        {
            out_of("mqtt.client_id", format!("{id:?}"));
        }
        if !(5..=3600).contains(&m.keep_alive_s) {
            out_of("mqtt.keep_alive_s", m.keep_alive_s.to_string());
        }
        if m.username.as_ref().is_some_and(String::is_empty) {
            out_of("mqtt.username", "an empty name".into());
        }
        for (key, path) in [
            ("mqtt.password_file", &m.password_file),
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.client_cert_file", &m.client_cert_file),
            ("mqtt.client_key_file", &m.client_key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                out_of(key, "an empty path".into());
            }
        }
        if m.outbox_dir.as_os_str().is_empty() {
            out_of("mqtt.outbox_dir", "an empty path".into());
        }
        if !(MQTT_MIN_OUTBOX_BYTES..=MQTT_MAX_OUTBOX_BYTES).contains(&m.outbox_max_bytes) {
            out_of("mqtt.outbox_max_bytes", m.outbox_max_bytes.to_string());
        }
        if !(1..=10_000_000).contains(&m.outbox_max_entries) {
            out_of("mqtt.outbox_max_entries", m.outbox_max_entries.to_string());
        }
        if !(1..=3600).contains(&m.reconnect_max_s) {
            out_of("mqtt.reconnect_max_s", m.reconnect_max_s.to_string());
        }
        if m.shutdown_grace_s > 300 {
            out_of("mqtt.shutdown_grace_s", m.shutdown_grace_s.to_string());
        }
        // Keys that only make sense together.
        if m.password_file.is_some() && m.username.is_none() {
            bad(
                "mqtt.password_file",
                "is set but mqtt.username is not; MQTT sends a password only with a user name".into(),
            );
        }
        match (&m.client_cert_file, &m.client_key_file) {
            (Some(_), None) => {
                bad("mqtt.client_cert_file", "is set but mqtt.client_key_file is not; set both or neither".into())
            }
            (None, Some(_)) => {
                bad("mqtt.client_key_file", "is set but mqtt.client_cert_file is not; set both or neither".into())
            }
            _ => {}
        }
        if m.client_cert_file.is_some() && m.ca_file.is_none() {
            bad(
                "mqtt.client_cert_file",
                "is set but mqtt.ca_file is not; a client certificate needs TLS, which mqtt.ca_file turns on".into(),
            );
        }
    }
}

impl Settings {
    /// The checks of the capture keys of `[camera]` (`capture::v4l2`). Whether the camera
    /// offers the formats, sizes and controls is checked when it is opened.
    fn check_camera(&self, out_of: &mut impl FnMut(&'static str, String)) {
        let c = &self.camera;
        if c.device.as_os_str().is_empty() {
            out_of("camera.device", "an empty path".into());
        }
        if c.formats.is_empty() {
            out_of("camera.formats", "an empty list".into());
        }
        if let Some(f) = c.formats.iter().find(|f| !crate::capture::pixels::KNOWN_FORMATS.contains(&f.as_str())) {
            out_of("camera.formats", format!("{f:?}"));
        }
        for (key, v) in [("camera.width", c.width), ("camera.height", c.height)] {
            if let Some(v) = v
                && !(16..=20_000).contains(&v)
            {
                out_of(key, v.to_string());
            }
        }
        if let Some(fps) = c.fps
            && !(fps.is_finite() && fps > 0.0 && fps <= 1000.0)
        {
            out_of("camera.fps", fps.to_string());
        }
        if !(1..=64).contains(&c.average_frames) {
            out_of("camera.average_frames", c.average_frames.to_string());
        }
        if let Some(us) = c.exposure_us
            && !(100..=10_000_000).contains(&us)
        {
            out_of("camera.exposure_us", us.to_string());
        }
        if let Some(k) = c.white_balance_k
            && !(1000..=20_000).contains(&k)
        {
            out_of("camera.white_balance_k", k.to_string());
        }
        if let Some(name) = c
            .controls
            .keys()
            .find(|n| n.is_empty() || !n.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'))
        {
            out_of("camera.controls", format!("a control named {name:?}"));
        }
    }
}

/// Checks that `spec` is an `env_logger` filter meant as one: every bare word must be a level
/// (a bare word is a module name to `env_logger`, but in a config file it is a typo).
pub fn check_log_filter(spec: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];
    if spec.trim().is_empty() {
        return Err(format!("must not be empty; expected {LEVEL_ALLOWED}"));
    }
    if let Err(e) = env_filter::Builder::new().try_parse(spec) {
        return Err(format!("{spec:?} is not a log filter ({e}); expected {LEVEL_ALLOWED}"));
    }
    let directives = spec.split('/').next().unwrap_or_default();
    for part in directives.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (module, level) = match part.split_once('=') {
            Some((m, l)) => (Some(m.trim()), l.trim()),
            None => (None, part),
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let hint = suggest(&level.to_ascii_lowercase(), LEVELS.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            let what = match module {
                Some(m) => format!("`{level}` (for `{m}`) is not a log level"),
                None => format!("`{level}` is not a log level"),
            };
            return Err(format!("{what}; expected {LEVEL_ALLOWED}{hint}"));
        }
    }
    Ok(())
}

/// Where a configured value came from, so that an error points at what to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file, as named on the command line or by default.
    File(PathBuf),
    /// An environment variable, by its exact name.
    Env(String),
    /// Nothing set it: the built-in default.
    Defaults,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Defaults => write!(f, "built-in defaults"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where the offending value (or file) came from.
    pub origin: Origin,
    /// Dotted key such as `synth.bit_depth`; none for problems with the file as a whole.
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Why the configuration could not be loaded: every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// Every problem found, sorted by key.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Writes the problems to stderr, one `error: ...` line each, the way every command reports them.
    pub fn eprint(&self) {
        for problem in &self.problems {
            eprintln!("error: {problem}");
        }
    }

    fn one(origin: Origin, key: Option<String>, message: String) -> Self {
        Self { problems: vec![Problem { origin, key, message }] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The effective configuration together with where it came from, for `amfp config check`.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The checked settings.
    pub settings: Settings,
    /// The file that was read; none when the built-in defaults were used.
    pub file: Option<PathBuf>,
    /// Names of the `AMFP__*` environment variables that were applied, sorted.
    pub env: Vec<String>,
}

/// Loads the effective configuration: `path` (or the default file, if it exists) overridden by
/// `AMFP__SECTION__KEY` environment variables, then checked.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    load_sourced(path).map(|l| l.settings)
}

/// Like [`load`], and also says which file and environment variables were applied.
pub fn load_sourced(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_from(path, Path::new(crate::cli::DEFAULT_CONFIG_PATH), std::env::vars_os())
}

/// The loader proper, with the default path and the environment passed in so tests can vary them.
fn load_from(
    path: Option<&Path>,
    default_path: &Path,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Loaded, ConfigError> {
    let (env, mut problems) = collect_env(vars);

    let file = match path {
        Some(p) => Some(p.to_path_buf()),
        None if default_path.exists() => Some(default_path.to_path_buf()),
        None => {
            crate::logging::early_debug(
                module_path!(),
                format!("no configuration file at {}; using built-in defaults", default_path.display()),
            );
            None
        }
    };
    let file_source = match &file {
        Some(p) => Some(read_toml(p)?),
        None => None,
    };

    let mut builder = config::Config::builder();
    if let Some(source) = file_source {
        builder = builder.add_source(source);
    }
    let env_source: Map<String, String> = env.values().map(|v| (v.name.clone(), v.raw.clone())).collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(env_source)),
    );
    let root = builder.build().map_err(|e| ConfigError::one(Origin::Defaults, None, e.to_string()))?.cache;

    let ctx = Ctx { env, file: file.clone() };
    let (settings, errors) = deserialize_all(root.clone(), &ctx);
    problems.extend(errors);
    for invalid in settings.check() {
        problems.push(Problem {
            origin: ctx.origin_of(&root, invalid.key),
            key: Some(invalid.key.to_string()),
            message: invalid.message,
        });
    }
    if !problems.is_empty() {
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        return Err(ConfigError { problems });
    }
    let env = ctx.env.values().map(|v| v.name.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    Ok(Loaded { settings, file, env })
}

/// A configuration file, parsed, as a `config` source whose values remember the file's name.
#[derive(Debug, Clone)]
struct TomlSource(Map<String, Value>);

impl config::Source for TomlSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// Reads and parses one TOML file; errors name the path exactly as the user gave it.
fn read_toml(path: &Path) -> Result<TomlSource, ConfigError> {
    let origin = || Origin::File(path.to_path_buf());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(origin(), None, format!("cannot read configuration file: {e}")))?;
    // Syntax first, with toml's own error, so the message fits on one line with its position.
    if let Err(e) = text.parse::<toml::Table>() {
        let at = e.span().map(|span| line_column(&text, span.start)).map(|(l, c)| format!(" at line {l}, column {c}"));
        let message = e.message().trim_end().replace('\n', "; ");
        return Err(ConfigError::one(origin(), None, format!("not valid TOML{}: {message}", at.unwrap_or_default())));
    }
    let uri = path.display().to_string();
    let map = config::Format::parse(&config::FileFormat::Toml, Some(&uri), &text)
        .map_err(|e| ConfigError::one(origin(), None, format!("not valid TOML: {}", e.to_string().trim_end())))?;
    Ok(TomlSource(map))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (line, column)
}

/// One `AMFP__*` environment variable.
#[derive(Debug, Clone)]
struct EnvVar {
    /// Its exact name.
    name: String,
    /// Its value as written, for string keys (try_parsing would turn `0042` into 42).
    raw: String,
}

/// The `AMFP__*` variables by the dotted key they set, the same mapping `config::Environment`
/// applies; plus problems with variables that cannot be used.
fn collect_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> (BTreeMap<String, EnvVar>, Vec<Problem>) {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_ascii_lowercase();
    let mut env = BTreeMap::<String, EnvVar>::new();
    let mut problems = Vec::new();
    for (name, value) in vars {
        let Ok(name) = name.into_string() else {
            continue;
        };
        let lower = name.to_lowercase();
        let Some(rest) = lower.strip_prefix(&prefix) else {
            continue;
        };
        let key = rest.replace(ENV_SEPARATOR, ".");
        let origin = Origin::Env(name.clone());
        let Ok(raw) = value.into_string() else {
            problems.push(Problem { origin, key: Some(key), message: "value is not valid UTF-8".into() });
            continue;
        };
        if raw.is_empty() {
            // Empty means unset, as systemd's `Environment=AMFP__X=` intends.
            continue;
        }
        if let Some(other) = env.get(&key) {
            problems.push(Problem {
                origin,
                key: Some(key.clone()),
                message: format!("also set by {}; set it once", other.name),
            });
            continue;
        }
        env.insert(key, EnvVar { name, raw });
    }
    (env, problems)
}

/// What the strict deserializer needs to know besides the values.
struct Ctx {
    /// Environment variables by dotted key.
    env: BTreeMap<String, EnvVar>,
    /// The file that was read.
    file: Option<PathBuf>,
}

impl Ctx {
    /// Where the value at dotted `key` came from.
    fn origin_of(&self, root: &Value, key: &str) -> Origin {
        if let Some(var) = self.env.get(key) {
            return Origin::Env(var.name.clone());
        }
        let found = key.split('.').try_fold(root, |v, seg| match &v.kind {
            ValueKind::Table(t) => t.get(seg),
            _ => None,
        });
        let file_uri = self.file.as_ref().map(|p| p.display().to_string());
        if let Some(v) = found
            && v.origin().is_some()
            && v.origin() == file_uri.as_deref()
        {
            return Origin::File(self.file.clone().unwrap_or_default());
        }
        // A table made by an environment variable that set a key below it.
        let below = format!("{key}.");
        if let Some((_, var)) = self.env.iter().find(|(k, _)| k.starts_with(&below)) {
            return Origin::Env(var.name.clone());
        }
        match (&self.file, found) {
            (Some(p), Some(_)) => Origin::File(p.clone()),
            _ => Origin::Defaults,
        }
    }

    /// The raw text of the environment variable that set the scalar at `path`, if any.
    fn env_raw(&self, path: &str, value: &Value) -> Option<String> {
        match value.kind {
            ValueKind::Table(_) | ValueKind::Array(_) => None,
            _ => self.env.get(path).map(|v| v.raw.clone()),
        }
    }
}

/// Deserialises `root`, and after each error drops the offending key and tries again, so that all
/// type errors and unknown keys are found in one run. Dropped keys fall back to their defaults.
fn deserialize_all(mut root: Value, ctx: &Ctx) -> (Settings, Vec<Problem>) {
    let mut problems = Vec::new();
    while problems.len() < MAX_PROBLEMS {
        let node = Node { value: root.clone(), path: String::new(), ctx };
        let err = match serde_path_to_error::deserialize::<_, Settings>(node) {
            Ok(settings) => return (settings, problems),
            Err(e) => e,
        };
        let mut segments = Vec::new();
        for seg in err.path().iter() {
            match seg {
                serde_path_to_error::Segment::Map { key } => segments.push(key.clone()),
                // Drop a whole list or enum on error: the key above it is what the user sees.
                _ => break,
            }
        }
        // For an unknown key the path already ends with that key.
        let inner = err.into_inner();
        let key = segments.join(".");
        let message = inner.describe(&key, segments.len());
        problems.push(Problem { origin: ctx.origin_of(&root, &key), key: (!key.is_empty()).then_some(key), message });
        if segments.is_empty() || !remove(&mut root, &segments) {
            break;
        }
    }
    (Settings::default(), problems)
}

/// Removes the value at `path` from the tree; false when it is not there.
fn remove(root: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut v = root;
    for seg in parents {
        v = match &mut v.kind {
            ValueKind::Table(t) => match t.get_mut(seg) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match &mut v.kind {
        ValueKind::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

/// The closest of `candidates` to a mistyped `word`, if one is close enough to be meant.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lc = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let d = edit_distance(&word_lc, c);
            let prefix = word_lc.len() >= 3 && (c.starts_with(&word_lc) || word_lc.starts_with(c));
            (if prefix { d.min(1) } else { d }, c)
        })
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, for typo suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A deserialisation error, kept structured so the message can name the key and what is allowed.
#[derive(Debug)]
enum DeError {
    /// A key or enum value that is not one of `expected`.
    Unknown { name: String, expected: &'static [&'static str], variant: bool },
    /// A value of the wrong type (`wrong_type`), or of the right type but out of its range.
    Type { unexpected: String, expected: String, wrong_type: bool },
    /// Anything else serde reports.
    Other(String),
}

impl DeError {
    /// The message shown to the user for the error at dotted `key`, `depth` segments deep.
    fn describe(&self, key: &str, depth: usize) -> String {
        match self {
            DeError::Unknown { name, expected, variant } => {
                let what = match (variant, depth) {
                    (true, _) => "unknown value",
                    (false, 1) => "unknown section",
                    (false, _) => "unknown key",
                };
                let hint = suggest(name, expected.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                if expected.is_empty() {
                    format!("{what}; this section takes no keys")
                } else {
                    format!("{what}; expected one of: {}{hint}", expected.join(", "))
                }
            }
            DeError::Type { unexpected, expected, wrong_type } => {
                let expected = allowed(key).map(str::to_string).unwrap_or_else(|| humanize(expected));
                if *wrong_type {
                    format!("wrong type: found {unexpected}; expected {expected}")
                } else {
                    format!("{unexpected} is not allowed; expected {expected}")
                }
            }
            DeError::Other(msg) => msg.clone(),
        }
    }
}

/// Serde's names for expected types, in words for people who write TOML.
fn humanize(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "path string" => "a path (a string)".into(),
        e if e.starts_with("struct ") => "a table (a [section])".into(),
        e => e.to_string(),
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("", 2))
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Other(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::Type { unexpected: unexp.to_string(), expected: exp.to_string(), wrong_type: true }
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::Type { unexpected: unexp.to_string(), expected: exp.to_string(), wrong_type: false }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::Unknown { name: field.to_string(), expected, variant: false }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::Unknown { name: variant.to_string(), expected, variant: true }
    }
}

/// Describes a value the way serde's messages do (`string "x"`, `integer `5``).
fn unexpected(kind: &ValueKind) -> de::Unexpected<'_> {
    match kind {
        ValueKind::Nil => de::Unexpected::Unit,
        ValueKind::Boolean(b) => de::Unexpected::Bool(*b),
        ValueKind::I64(i) => de::Unexpected::Signed(*i),
        ValueKind::I128(_) | ValueKind::U128(_) => de::Unexpected::Other("128-bit integer"),
        ValueKind::U64(u) => de::Unexpected::Unsigned(*u),
        ValueKind::Float(f) => de::Unexpected::Float(*f),
        ValueKind::String(s) => de::Unexpected::Str(s),
        ValueKind::Table(_) => de::Unexpected::Map,
        ValueKind::Array(_) => de::Unexpected::Seq,
    }
}

/// A strict serde deserializer over a merged `config` value: each value is handed to serde as what
/// it is, so serde's own type checks apply. Only strings from the environment are taken verbatim,
/// because there every value starts as text.
struct Node<'a> {
    value: Value,
    /// Dotted path of this value, for environment look-ups.
    path: String,
    ctx: &'a Ctx,
}

impl<'de> de::Deserializer<'de> for Node<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Node { value, path, ctx } = self;
        match value.kind {
            ValueKind::Nil => visitor.visit_unit(),
            ValueKind::Boolean(b) => visitor.visit_bool(b),
            ValueKind::I64(i) => visitor.visit_i64(i),
            ValueKind::I128(i) => visitor.visit_i128(i),
            ValueKind::U64(u) => visitor.visit_u64(u),
            ValueKind::U128(u) => visitor.visit_u128(u),
            ValueKind::Float(f) => visitor.visit_f64(f),
            ValueKind::String(s) => visitor.visit_string(s),
            ValueKind::Array(items) => visitor.visit_seq(SeqNode { items: items.into_iter().enumerate(), path, ctx }),
            ValueKind::Table(table) => {
                let mut entries: Vec<(String, Value)> = table.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                visitor.visit_map(TableNode { entries: entries.into_iter(), pending: None, path, ctx })
            }
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.ctx.env_raw(&self.path, &self.value) {
            Some(raw) => visitor.visit_string(raw),
            None => self.deserialize_any(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value.kind {
            ValueKind::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let name = match (self.ctx.env_raw(&self.path, &self.value), self.value.kind) {
            (Some(raw), _) => raw,
            (None, ValueKind::String(s)) => s,
            (None, kind) => return Err(de::Error::invalid_type(unexpected(&kind), &"a string")),
        };
        visitor.visit_enum(name.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// The entries of a table, handed to serde one key at a time.
struct TableNode<'a> {
    entries: std::vec::IntoIter<(String, Value)>,
    pending: Option<(String, Value)>,
    path: String,
    ctx: &'a Ctx,
}

impl<'de> de::MapAccess<'de> for TableNode<'_> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key.clone(), value));
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, value) = self.pending.take().ok_or_else(|| DeError::Other("value without key".into()))?;
        let path = if self.path.is_empty() { key } else { format!("{}.{key}", self.path) };
        seed.deserialize(Node { value, path, ctx: self.ctx })
    }
}

/// The items of a list, handed to serde one at a time.
struct SeqNode<'a> {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: String,
    ctx: &'a Ctx,
}

impl<'de> de::SeqAccess<'de> for SeqNode<'_> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.path);
        seed.deserialize(Node { value, path, ctx: self.ctx }).map(Some)
    }
}

/// Whether a key holds a secret: `password`, `token`, or a name ending in `_secret`.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "password" || key == "token" || key.ends_with("_secret")
}

/// Replaces the value of every secret key (see [`is_secret_key`]) at any depth by [`MASK`],
/// so that printed configurations can be pasted into tickets.
pub fn mask_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) {
                    *v = toml::Value::String(MASK.into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

impl Settings {
    /// The settings as TOML text with secrets masked, as `amfp config check` prints them.
    pub fn to_masked_toml(&self) -> Result<String, toml::ser::Error> {
        let mut value = toml::Value::try_from(self)?;
        mask_secrets(&mut value);
        toml::to_string_pretty(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    fn nowhere() -> &'static Path {
        Path::new("/nonexistent/amfp/amfp.toml")
    }

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let f = write(text);
        load_from(Some(f.path()), nowhere(), vars(env))
    }

    fn messages(e: &ConfigError) -> Vec<String> {
        e.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_when_no_file_and_no_env() {
        let l = load_from(None, nowhere(), vars(&[("PATH", "/bin"), ("AMFP_CONFIG_X", "1")])).unwrap();
        assert_eq!(l.settings, Settings::default());
        assert_eq!(l.file, None);
        assert!(l.env.is_empty());
    }

    #[test]
    fn file_then_env() {
        let l = load_text(
            "[log]\nlevel = \"debug\"\n[synth]\nseed = 3\nscanner_pixel_um = 5\n",
            &[("AMFP__SYNTH__SEED", "9"), ("AMFP__SYNTH__MICROSCOPE_PIXEL_UM", "2.5")],
        )
        .unwrap();
        assert_eq!(l.settings.log.level, "debug");
        assert_eq!(l.settings.synth.seed, 9);
        assert_eq!(l.settings.synth.scanner_pixel_um, 5.0);
        assert_eq!(l.settings.synth.microscope_pixel_um, 2.5);
        assert_eq!(l.env, vec!["AMFP__SYNTH__MICROSCOPE_PIXEL_UM", "AMFP__SYNTH__SEED"]);
    }

    #[test]
    fn env_strings_are_verbatim() {
        let l =
            load_from(None, nowhere(), vars(&[("AMFP__SYNTH__FLEET", "0042"), ("AMFP__LOG__LEVEL", "WARN")])).unwrap();
        assert_eq!(l.settings.synth.fleet, Some(PathBuf::from("0042")));
        assert_eq!(l.settings.log.level, "WARN");
    }

    #[test]
    fn empty_env_is_unset() {
        let l = load_from(None, nowhere(), vars(&[("AMFP__SYNTH__SEED", "")])).unwrap();
        assert_eq!(l.settings.synth.seed, 7);
        assert!(l.env.is_empty());
    }

    #[test]
    fn strict_types() {
        // A quoted number is a string, and a float is not an integer.
        let e = load_text("[synth]\nseed = \"42\"\nthreads = 2.5\n", &[]).unwrap_err();
        let m = messages(&e);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("synth.seed: wrong type: found string \"42\"; expected a whole number"), "{m:?}");
        assert!(m[1].contains("synth.threads: wrong type: found floating point `2.5`"), "{m:?}");
    }

    #[test]
    fn all_problems_at_once() {
        let e = load_text(
            "[log]\nlevel = \"loud\"\n[synth]\nsed = 1\nbit_depth = 12\nscanner_pixel_um = -1\nseed = \"x\"\n[sinth]\n",
            &[("AMFP__SYNTH__THREADS", "many")],
        )
        .unwrap_err();
        let keys: Vec<_> = e.problems().iter().map(|p| p.key.clone().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "log.level",
                "sinth",
                "synth.bit_depth",
                "synth.scanner_pixel_um",
                "synth.sed",
                "synth.seed",
                "synth.threads"
            ]
        );
        let threads = e.problems().last().unwrap();
        assert_eq!(threads.origin, Origin::Env("AMFP__SYNTH__THREADS".into()));
        let sinth = &e.problems()[1];
        assert!(
            sinth
                .message
                .contains("unknown section; expected one of: log, synth, device, model, camera, identify, mqtt, source, daemon, output, enroll, drift, trust; did you mean `synth`?"),
            "{sinth}"
        );
        let sed = &e.problems()[4];
        assert!(sed.message.contains("did you mean `seed`?"), "{sed}");
    }

    #[test]
    fn model_threads_from_file_or_env_within_range() {
        assert_eq!(Settings::default().model.threads, 1);
        let l = load_text("[model]\nthreads = 2\n", &[]).unwrap();
        assert_eq!(l.settings.model.threads, 2);
        let l = load_text("", &[("AMFP__MODEL__THREADS", "4")]).unwrap();
        assert_eq!(l.settings.model.threads, 4);
        for bad in ["0", "65"] {
            let e = load_text(&format!("[model]\nthreads = {bad}\n"), &[]).unwrap_err();
            let p = &e.problems()[0];
            assert_eq!(p.key.as_deref(), Some("model.threads"));
            assert!(p.message.contains("from 1 to 64"), "{p}");
        }
    }

    #[test]
    fn unknown_env_key_names_variable() {
        let e = load_from(None, nowhere(), vars(&[("AMFP__SYNTH__SEEDS", "1")])).unwrap_err();
        let p = &e.problems()[0];
        assert_eq!(p.origin, Origin::Env("AMFP__SYNTH__SEEDS".into()));
        assert_eq!(p.key.as_deref(), Some("synth.seeds"));
        let e = load_from(None, nowhere(), vars(&[("AMFP__BROKER__HOST", "x")])).unwrap_err();
        assert_eq!(e.problems()[0].origin, Origin::Env("AMFP__BROKER__HOST".into()));
        assert_eq!(e.problems()[0].key.as_deref(), Some("broker"));
    }

    #[test]
    fn duplicate_env_spellings() {
        let e =
            load_from(None, nowhere(), vars(&[("AMFP__SYNTH__SEED", "1"), ("amfp__synth__seed", "2")])).unwrap_err();
        assert!(e.to_string().contains("also set by"), "{e}");
    }

    #[test]
    fn missing_and_broken_files() {
        let e = load_from(Some(Path::new("/nonexistent/x.toml")), nowhere(), vars(&[])).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/x.toml: cannot read configuration file"), "{e}");
        let e = load_text("[synth]\nseed = \n", &[]).unwrap_err();
        assert!(e.to_string().contains(": not valid TOML at line 2, column 8: "), "{e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }

    #[test]
    fn default_file_is_used_when_present() {
        let f = write("[synth]\nseed = 11\n");
        let l = load_from(None, f.path(), vars(&[])).unwrap();
        assert_eq!(l.settings.synth.seed, 11);
        assert_eq!(l.file.as_deref(), Some(f.path()));
    }

    #[test]
    fn log_filters() {
        for ok in ["info", "DEBUG", "off", "warn,amfp::synth=trace", "amfp=debug", "info,"] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["", "loud", "amfp=loud", "warning"] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
        assert!(check_log_filter("warning").unwrap_err().contains("did you mean `warn`?"));
    }

    #[test]
    fn masks_secret_keys_at_any_depth() {
        let mut v: toml::Value = toml::from_str(
            "[mqtt]\nhost = \"h\"\npassword = \"p\"\ntoken = 5\nclient_secret = \"s\"\n[[mqtt.brokers]]\ntls_secret = \"k\"\nsecretive = \"no\"\n",
        )
        .unwrap();
        mask_secrets(&mut v);
        let mqtt = &v["mqtt"];
        assert_eq!(mqtt["host"].as_str(), Some("h"));
        for key in ["password", "token", "client_secret"] {
            assert_eq!(mqtt[key].as_str(), Some(MASK), "{key}");
        }
        assert_eq!(mqtt["brokers"][0]["tls_secret"].as_str(), Some(MASK));
        assert_eq!(mqtt["brokers"][0]["secretive"].as_str(), Some("no"));
    }

    /// Every key of the settings is documented and present in the packaged default file, whose
    /// values, once uncommented, are the built-in defaults.
    #[test]
    fn docs_and_packaged_file_match_the_code() {
        let docs = include_str!("../docs/configuration.md");
        let packaged = include_str!("../systemd/amfp.toml");
        for (key, _) in all_allowed() {
            assert!(docs.contains(&format!("`{key}`")), "docs/configuration.md lacks `{key}`");
            let (_, name) = key.split_once('.').unwrap();
            assert!(packaged.contains(&format!("# {name} = ")), "systemd/amfp.toml lacks {key}");
        }
        assert_eq!(toml::from_str::<Settings>(packaged).unwrap(), Settings::default());
        let uncommented: String = packaged
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
            // Keys whose default is "not set" are shown with an example value.
            .filter(|l| {
                ![
                    "fleet",
                    "id",
                    "path",
                    "pixel_um",
                    "width",
                    "height",
                    "fps",
                    "exposure_us",
                    "gain",
                    "focus",
                    "white_balance_k",
                    "controls",
                    "rois",
                    "client_id",
                    "username",
                    "password_file",
                    "ca_file",
                    "client_cert_file",
                    "client_key_file",
                    "dir",
                    "expect",
                    "onnxruntime",
                    "sign_key",
                ]
                .iter()
                .any(|k| l.starts_with(&format!("{k} = ")))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: Settings = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed, Settings::default(), "{uncommented}");
    }

    #[test]
    fn mqtt_section_is_checked() {
        let l = load_text(
            "[mqtt]\nenabled = true\nhost = \"broker.local\"\nport = 8883\nusername = \"dock\"\npassword_file = \"/run/credentials/amfp.service/mqtt-password\"\nca_file = \"/etc/amfp/ca.pem\"\n",
            &[("AMFP__MQTT__BASE", "factory/amfp")],
        )
        .unwrap();
        assert!(l.settings.mqtt.enabled);
        assert_eq!(l.settings.mqtt.port, 8883);
        assert_eq!(l.settings.mqtt.base, "factory/amfp");
        let e = load_text(
            "[mqtt]\nhost = \"mqtt://b:1883\"\nport = 70000\nbase = \"amfp/#\"\nkeep_alive_s = 0\npassword_file = \"/p\"\nclient_key_file = \"/k\"\noutbox_max_bytes = 10\n",
            &[],
        )
        .unwrap_err();
        let m = messages(&e);
        let keys: Vec<_> = e.problems().iter().map(|p| p.key.clone().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "mqtt.base",
                "mqtt.client_key_file",
                "mqtt.host",
                "mqtt.keep_alive_s",
                "mqtt.outbox_max_bytes",
                "mqtt.password_file",
                "mqtt.port"
            ],
            "{m:?}"
        );
        assert!(m[1].contains("is set but mqtt.client_cert_file is not"), "{m:?}");
        assert!(m[5].contains("mqtt.username is not"), "{m:?}");
        assert!(m[6].contains("expected a TCP port from 1 to 65535"), "{m:?}");
    }

    #[test]
    fn masked_toml_round_trips() {
        let text = Settings::default().to_masked_toml().unwrap();
        assert_eq!(toml::from_str::<Settings>(&text).unwrap(), Settings::default());
    }
}
