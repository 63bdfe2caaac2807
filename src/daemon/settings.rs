//! The daemon's configuration sections: `[source]` (where parts come from), `[daemon]` (when a
//! part is inspected, shutdown), `[output]` (where attributions go besides MQTT) and `[enroll]`
//! (enrollment at the station).
//!
//! They live beside the daemon that reads them; `config` embeds them in `Settings` and runs
//! [`check`] with the other sections' checks. Every key is documented in docs/configuration.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where parts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A V4L2 camera or USB microscope (`[camera]`): a live view, judged when a trigger fires.
    #[default]
    V4l2,
    /// A watched directory: each completely written image is one part, judged once.
    Directory,
    /// The simulator: parts of the model's fleet, for demos and tests without a camera.
    Synth,
    /// A simulated line station: the simulator's parts passing under a camera on a conveyor, a
    /// live view for the `continuous` trigger (demos and tests of a line without a camera).
    Conveyor,
}

impl SourceKind {
    /// The name used in config, logs and `source.kind` of results.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4l2 => "v4l2",
            Self::Directory => "directory",
            Self::Synth => "synth",
            Self::Conveyor => "conveyor",
        }
    }
}

/// `[source]`: where parts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// v4l2, directory or synth.
    pub kind: SourceKind,
    /// The directory watched by `kind = "directory"`.
    pub dir: Option<PathBuf>,
    /// A new file is taken once its size and modification time have not changed for this long.
    pub settle_ms: u64,
    /// How often the directory is listed.
    pub poll_ms: u64,
    /// Seed of the simulator's parts (`kind = "synth"` or `"conveyor"`); the fleet is
    /// `synth.fleet`, else the fleet file shipped beside the model, else the built-in fleet.
    pub synth_seed: u64,
    /// Frames per second of the simulated line (`kind = "conveyor"`).
    pub conveyor_fps: f64,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self { kind: SourceKind::V4l2, dir: None, settle_ms: 1000, poll_ms: 250, synth_seed: 1001, conveyor_fps: 10.0 }
    }
}

/// When a part is inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// `each` for part sources (directory, simulator), `continuous` for cameras.
    #[default]
    Auto,
    /// Every frame of the source is one part (directories, the simulator).
    Each,
    /// A line station: a part entering the camera's view is inspected once it is still; the
    /// trigger rearms when the view is empty again.
    Continuous,
    /// One inspection every `daemon.interval_s`.
    Interval,
    /// One inspection per MQTT `cmd/inspect` command.
    Command,
}

/// `[daemon]`: triggers, the line's expected source, state and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// auto, each, continuous, interval or command.
    pub trigger: TriggerKind,
    /// Seconds between inspections with `trigger = "interval"`.
    pub interval_s: f64,
    /// The source every part is expected to come from (a line station's machine): each part is
    /// checked against it as a claim, and a part that contradicts it raises an `odd_part` event.
    pub expect: Option<String>,
    /// Where the daemon keeps results and evidence (the service's StateDirectory).
    pub state_dir: PathBuf,
    /// Longest a clean shutdown (SIGINT, SIGTERM) takes: finishing the part in flight, flushing
    /// the sinks and the MQTT goodbye.
    pub shutdown_grace_s: u64,
    /// Frames waiting for inference; a full queue makes the source wait (never drops a part).
    pub queue: usize,
    /// `continuous`: share of the view that must differ from the empty stage for a part to be there.
    pub presence_fraction: f64,
    /// `continuous`: consecutive still frames before a part is inspected.
    pub still_frames: u32,
    /// `continuous`: mean change between consecutive frames (intensity 0..1) under which the view is still.
    pub still_tolerance: f64,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            trigger: TriggerKind::Auto,
            interval_s: 10.0,
            expect: None,
            state_dir: PathBuf::from("/var/lib/amfp"),
            shutdown_grace_s: 10,
            queue: 2,
            presence_fraction: 0.05,
            still_frames: 3,
            still_tolerance: 0.01,
        }
    }
}

/// `[output]`: the local sinks of attributions (MQTT is `[mqtt]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSettings {
    /// One Attribution JSON per line on standard output (the journal, under systemd).
    pub stdout: bool,
    /// Append every Attribution to `<state_dir>/results/results.jsonl`, rotated by size.
    pub jsonl: bool,
    /// Size at which the results log is rotated.
    pub jsonl_max_bytes: u64,
    /// Rotated results logs kept (results.jsonl.1 is the newest).
    pub jsonl_keep: usize,
    /// Save each judged frame with its ROIs drawn as `<state_dir>/evidence/<id>.jpg`.
    pub evidence: bool,
    /// Most bytes of evidence kept; the oldest images are deleted beyond it.
    pub evidence_max_bytes: u64,
    /// JPEG quality of evidence images.
    pub evidence_quality: u8,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            stdout: true,
            jsonl: false,
            jsonl_max_bytes: 16 * 1024 * 1024,
            jsonl_keep: 8,
            evidence: false,
            evidence_max_bytes: 256 * 1024 * 1024,
            evidence_quality: 85,
        }
    }
}

/// `[enroll]`: enrollment at the station, started by MQTT `cmd/enroll` (docs/gallery.md,
/// "Enrollment at the station").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollSettings {
    /// Take `cmd/enroll` commands. Off by default: whoever may publish on the broker could
    /// otherwise add machines to the gallery.
    pub commands: bool,
    /// Sign the gallery versions the station writes with this private key (docs/trust.md);
    /// needed when `[trust]` names keys, else the station refuses enrollments.
    pub sign_key: Option<PathBuf>,
    /// Largest estimated share of parts a new machine and a known one may swap (as `amfp enroll
    /// --max-confusion`).
    pub max_confusion: f64,
}

impl Default for EnrollSettings {
    fn default() -> Self {
        Self { commands: false, sign_key: None, max_confusion: crate::gallery::MAX_CONFUSION }
    }
}

/// What each key of these sections accepts, in words (merged into the config's table).
pub const ALLOWED: &[(&str, &str)] = &[
    ("source.kind", "v4l2, directory, synth or conveyor"),
    ("source.dir", "a path to the directory to watch"),
    ("source.settle_ms", "a whole number of milliseconds from 0 to 600000"),
    ("source.poll_ms", "a whole number of milliseconds from 10 to 60000"),
    ("source.synth_seed", "a whole number (0 or more)"),
    ("source.conveyor_fps", "a number of frames per second from 0.1 to 60"),
    ("daemon.trigger", "auto, each, continuous, interval or command"),
    ("daemon.interval_s", "a number of seconds from 0.1 to 86400"),
    ("daemon.expect", "a label of the primary model, e.g. \"DLS-3\""),
    ("daemon.state_dir", "a path to a directory for results and evidence"),
    ("daemon.shutdown_grace_s", "a whole number of seconds from 1 to 600"),
    ("daemon.queue", "a whole number of frames from 1 to 64"),
    ("daemon.presence_fraction", "a fraction from 0.001 to 1"),
    ("daemon.still_frames", "a whole number of frames from 1 to 100"),
    ("daemon.still_tolerance", "a mean intensity change from 0.0001 to 0.5"),
    ("output.stdout", "true or false"),
    ("output.jsonl", "true or false"),
    ("output.jsonl_max_bytes", "a whole number of bytes from 4096 to 1099511627776 (1 TiB)"),
    ("output.jsonl_keep", "a whole number of files from 1 to 1000"),
    ("output.evidence", "true or false"),
    ("output.evidence_max_bytes", "a whole number of bytes from 1048576 (1 MiB) to 1099511627776 (1 TiB)"),
    ("output.evidence_quality", "a JPEG quality from 1 to 100"),
    ("enroll.commands", "true or false"),
    ("enroll.sign_key", "a path to an ed25519 private key in PEM form (amfp key generate writes it)"),
    ("enroll.max_confusion", "a rate from 0 to 1"),
];

/// The range checks of `[source]`, `[daemon]`, `[output]` and `[enroll]`: each problem as (key,
/// value shown). Whether the directory exists is checked when the daemon starts.
pub fn check(
    source: &SourceSettings,
    daemon: &DaemonSettings,
    output: &OutputSettings,
    enroll: &EnrollSettings,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut bad = |ok: bool, key: &'static str, shown: String| {
        if !ok {
            out.push((key, shown));
        }
    };
    let empty = |p: &PathBuf| p.as_os_str().is_empty();
    bad(!source.dir.as_ref().is_some_and(empty), "source.dir", "an empty path".into());
    bad(source.settle_ms <= 600_000, "source.settle_ms", source.settle_ms.to_string());
    bad((10..=60_000).contains(&source.poll_ms), "source.poll_ms", source.poll_ms.to_string());
    bad((0.1..=60.0).contains(&source.conveyor_fps), "source.conveyor_fps", source.conveyor_fps.to_string());
    let d = daemon;
    bad(
        d.interval_s.is_finite() && (0.1..=86_400.0).contains(&d.interval_s),
        "daemon.interval_s",
        d.interval_s.to_string(),
    );
    bad(!d.expect.as_ref().is_some_and(|e| e.trim().is_empty()), "daemon.expect", "an empty label".into());
    bad(!empty(&d.state_dir), "daemon.state_dir", "an empty path".into());
    bad((1..=600).contains(&d.shutdown_grace_s), "daemon.shutdown_grace_s", d.shutdown_grace_s.to_string());
    bad((1..=64).contains(&d.queue), "daemon.queue", d.queue.to_string());
    bad((0.001..=1.0).contains(&d.presence_fraction), "daemon.presence_fraction", d.presence_fraction.to_string());
    bad((1..=100).contains(&d.still_frames), "daemon.still_frames", d.still_frames.to_string());
    bad((0.0001..=0.5).contains(&d.still_tolerance), "daemon.still_tolerance", d.still_tolerance.to_string());
    let o = output;
    bad((4096..=1 << 40).contains(&o.jsonl_max_bytes), "output.jsonl_max_bytes", o.jsonl_max_bytes.to_string());
    bad((1..=1000).contains(&o.jsonl_keep), "output.jsonl_keep", o.jsonl_keep.to_string());
    bad(
        (1 << 20..=1 << 40).contains(&o.evidence_max_bytes),
        "output.evidence_max_bytes",
        o.evidence_max_bytes.to_string(),
    );
    bad((1..=100).contains(&o.evidence_quality), "output.evidence_quality", o.evidence_quality.to_string());
    bad(!enroll.sign_key.as_ref().is_some_and(empty), "enroll.sign_key", "an empty path".into());
    bad((0.0..=1.0).contains(&enroll.max_confusion), "enroll.max_confusion", enroll.max_confusion.to_string());
    out
}

/// Checks that need two sections at once: a directory source needs its directory.
pub fn check_together(source: &SourceSettings) -> Option<(&'static str, String)> {
    (source.kind == SourceKind::Directory && source.dir.is_none())
        .then(|| ("source.dir", "is not set but source.kind is \"directory\"; set the directory to watch".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_out_of_range_values_are_named() {
        let (s, d, o) = (SourceSettings::default(), DaemonSettings::default(), OutputSettings::default());
        let e = EnrollSettings::default();
        assert!(check(&s, &d, &o, &e).is_empty());
        let d2 = DaemonSettings { queue: 0, interval_s: f64::NAN, ..d };
        let o2 = OutputSettings { evidence_quality: 0, ..o };
        let e2 = EnrollSettings { max_confusion: 1.5, ..e };
        let keys: Vec<_> = check(&s, &d2, &o2, &e2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["daemon.interval_s", "daemon.queue", "output.evidence_quality", "enroll.max_confusion"]);
        for (key, _) in ALLOWED {
            assert!(matches!(key.split('.').next(), Some("source" | "daemon" | "output" | "enroll")), "{key}");
        }
    }

    #[test]
    fn a_directory_source_needs_its_directory() {
        let s = SourceSettings { kind: SourceKind::Directory, ..Default::default() };
        assert_eq!(check_together(&s).map(|(k, _)| k), Some("source.dir"));
        let s = SourceSettings { dir: Some("/srv/parts".into()), ..s };
        assert_eq!(check_together(&s), None);
    }
}
