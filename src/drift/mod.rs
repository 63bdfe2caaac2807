//! Drift monitoring: has a known machine changed since it was fitted or enrolled?
//!
//! Printers change over time (a worn nozzle, a recalibrated projector, a new build plate), and a
//! part's distance to its machine's fingerprint grows long before the vote starts naming it
//! wrongly. For every machine whose gallery entry carries a drift reference (the log-distance
//! of its own parts when it was fitted or enrolled), the [`Monitor`] standardises the distance of
//! each part judged near it and runs a one-sided CUSUM on it:
//!
//! ```text
//! z_t = clamp((ln d_t - mean_log) / sd_log, -max_z, max_z)
//! S_t = max(0, S_{t-1} + z_t - allowance)          alarm when S_t > threshold
//! ```
//!
//! An alarm is raised once, with the machine, the statistic, the parts since the reference and
//! whether the change looks gradual (wear: the distances ramp up) or sudden (substitution or
//! another machine: they jump), and then stands until a person re-enrolls the machine (a new
//! fingerprint restarts its monitoring). The monitor never changes a fingerprint itself.
//!
//! The state (per machine: the statistic, the parts seen, the recent z values, a standing
//! alarm) is written atomically after each observed part to `<state_dir>/drift/state.json`, so
//! it survives restarts; each observation is appended to `history.jsonl` beside it for
//! `amfp drift report`. See docs/drift.md.

pub mod plot;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use serde::{Deserialize, Serialize};

use crate::gallery::{DriftReference, Gallery};
use crate::result::{Attribution, DriftAlarm, DriftChange, DriftNote, OpenSetMode, Verdict};

/// Subdirectory of the daemon's state directory holding the drift state and history.
pub const DRIFT_DIR: &str = "drift";
/// The state file in [`DRIFT_DIR`].
pub const STATE_FILE: &str = "state.json";
/// The history file in [`DRIFT_DIR`] (rotated: `history.jsonl.1` is the older part).
pub const HISTORY_FILE: &str = "history.jsonl";
/// Recent z values kept per machine, for telling a gradual change from a sudden one.
const RECENT: usize = 100;
/// Size at which the history is rotated, and rotated files kept.
const HISTORY_MAX_BYTES: usize = 8 * 1024 * 1024;
const HISTORY_KEEP: usize = 2;

/// `[drift]`: the sequential test of drift monitoring (docs/drift.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    /// Follow the machines' distances in `amfp run` (machines with a drift reference).
    pub enabled: bool,
    /// The CUSUM's allowance k, in standard deviations: a shift smaller than about 2k is
    /// tolerated.
    pub allowance: f64,
    /// The CUSUM's decision threshold h: an alarm when the statistic exceeds it.
    pub threshold: f64,
    /// Each part's z is clamped to ±this, so that one odd part cannot raise an alarm alone.
    pub max_z: f64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self { enabled: true, allowance: 0.5, threshold: 10.0, max_z: 4.0 }
    }
}

/// What each `[drift]` key accepts, in words.
pub const ALLOWED: &[(&str, &str)] = &[
    ("drift.enabled", "true or false"),
    ("drift.allowance", "a number of standard deviations from 0 to 5"),
    ("drift.threshold", "a number from 0.5 to 1000"),
    ("drift.max_z", "a number of standard deviations from 1 to 100"),
];

/// The `[drift]` keys whose values are out of range, with the value as shown.
pub fn check(s: &DriftSettings) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !(0.0..=5.0).contains(&s.allowance) {
        out.push(("drift.allowance", s.allowance.to_string()));
    }
    if !(0.5..=1000.0).contains(&s.threshold) {
        out.push(("drift.threshold", s.threshold.to_string()));
    }
    if !(1.0..=100.0).contains(&s.max_z) {
        out.push(("drift.max_z", s.max_z.to_string()));
    }
    out
}

/// Why the drift state cannot be read or written. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("cannot use the drift state directory {path}: {source}; set daemon.state_dir to a writable directory")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot write the drift state {path}: {source}; the state is kept in memory until it can be")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the drift state {path}: {detail}")]
    Read { path: PathBuf, detail: String },
}

/// One machine's monitoring since its fingerprint was fitted or enrolled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// [`crate::gallery::Fingerprint::id`] of the fingerprint followed.
    pub fingerprint: String,
    pub reference: DriftReference,
    /// Time of the first part observed against this fingerprint.
    pub since: String,
    /// Parts observed against it.
    pub parts: u64,
    /// The CUSUM statistic.
    pub statistic: f64,
    /// The last z values (unclamped), oldest first.
    pub recent: VecDeque<f64>,
    /// The standing alarm, if one was raised.
    pub alarm: Option<DriftAlarm>,
}

/// The persisted state: every monitored machine by label.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub machines: BTreeMap<String, MachineState>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    schema: u32,
    updated: String,
    machines: BTreeMap<String, MachineState>,
}

/// One observed part as appended to the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub time: String,
    /// The Attribution's id.
    pub id: String,
    pub machine: String,
    pub fingerprint: String,
    /// Parts observed against this fingerprint, this one included.
    pub part: u64,
    pub distance: f64,
    pub z: f64,
    pub statistic: f64,
    /// This part raised the alarm.
    #[serde(default)]
    pub alarm: bool,
}

/// Follows every monitored machine's distances; see the module docs.
pub struct Monitor {
    settings: DriftSettings,
    state: State,
    store: Option<Store>,
    /// Every observation, when kept in memory (a replay for `amfp drift report`).
    kept: Option<Vec<HistoryPoint>>,
}

struct Store {
    state_path: PathBuf,
    history: FileRotate<AppendCount>,
}

impl Monitor {
    /// A monitor whose state lives under `dir` (the daemon's `<state_dir>/drift`): the state
    /// there is read back; a state file that cannot be read is moved aside (named in the log)
    /// and monitoring starts afresh.
    pub fn open(dir: &Path, settings: DriftSettings) -> Result<Self, DriftError> {
        std::fs::create_dir_all(dir).map_err(|source| DriftError::Dir { path: dir.to_owned(), source })?;
        let state_path = dir.join(STATE_FILE);
        let state = match read_state(&state_path) {
            Ok(s) => s,
            Err(e) => {
                let aside = dir.join(format!("{STATE_FILE}.unreadable-{}", jiff::Timestamp::now().as_second()));
                log::error!("{e}; moved to {} and monitoring starts afresh", aside.display());
                std::fs::rename(&state_path, &aside)
                    .map_err(|source| DriftError::Write { path: state_path.clone(), source })?;
                State::default()
            }
        };
        let history = FileRotate::new(
            dir.join(HISTORY_FILE),
            AppendCount::new(HISTORY_KEEP),
            ContentLimit::BytesSurpassed(HISTORY_MAX_BYTES),
            Compression::None,
            None,
        );
        Ok(Self { settings, state, store: Some(Store { state_path, history }), kept: None })
    }

    /// A monitor that writes nothing and keeps every observation (a replay of results).
    pub fn in_memory(settings: DriftSettings) -> Self {
        Self { settings, state: State::default(), store: None, kept: Some(Vec::new()) }
    }

    /// The machines monitored so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The observations kept by an [`Monitor::in_memory`] monitor.
    pub fn kept(&self) -> &[HistoryPoint] {
        self.kept.as_deref().unwrap_or_default()
    }

    /// Follows one judged part. Parts judged by `gallery`'s distances count, identified or
    /// unknown (a part unlike its machine is evidence of change too). A part counts for the
    /// machine it claims to come from (a claim or `daemon.expect`, checked against the gallery),
    /// else for its nearest machine unless it lies beyond the outlier threshold (like no machine
    /// at all); that machine needs a drift reference. Returns what the part says about its machine, for the Attribution; a
    /// state that cannot be written is logged and kept in memory.
    pub fn observe(&mut self, gallery: &Gallery, a: &Attribution) -> Option<DriftNote> {
        let j = &a.judgement;
        if j.mode != Some(OpenSetMode::Gallery) || !matches!(j.verdict, Verdict::Identified | Verdict::Unknown) {
            return None;
        }
        let report = j.gallery.as_ref()?;
        // The machine the part should come from when the station says (a claim, or the line's
        // `daemon.expect`), else its nearest. Every machine's distance differs from the nearest's
        // by the difference of their relative distances, and shares its ROI projection. A part
        // beyond the outlier threshold counts only for a machine it claims: unclaimed, it is like
        // no machine at all (noise, a machined part), not evidence about its nearest.
        let (label, distance) = match &a.claim {
            Some(c) if c.distance.is_some() => {
                (c.label.as_str(), c.distance.unwrap_or_default() - report.distance + report.projected_distance)
            }
            _ if report.plain_distance > report.outlier_threshold => return None,
            _ => (report.nearest.as_str(), report.projected_distance),
        };
        let machine = gallery.machines.iter().find(|m| m.label == label)?;
        let reference = machine.drift?;
        let s = self.settings;
        let fresh = || MachineState {
            fingerprint: machine.id.clone(),
            reference,
            since: a.time.clone(),
            parts: 0,
            statistic: 0.0,
            recent: VecDeque::new(),
            alarm: None,
        };
        let state = self.state.machines.entry(machine.label.clone()).or_insert_with(fresh);
        if state.fingerprint != machine.id {
            log::info!(
                "drift: {} has a new fingerprint (re-enrolled or refitted); its monitoring starts again",
                machine.label
            );
            *state = fresh();
        }
        let z = standardise(distance, &reference);
        state.parts += 1;
        state.statistic = (state.statistic + z.clamp(-s.max_z, s.max_z) - s.allowance).max(0.0);
        state.recent.push_back(z);
        while state.recent.len() > RECENT {
            state.recent.pop_front();
        }
        let raised = (state.alarm.is_none() && state.statistic > s.threshold).then(|| {
            let recent: Vec<f64> = state.recent.iter().copied().collect();
            let (change, since) = classify(&recent);
            DriftAlarm {
                time: a.time.clone(),
                result_id: a.id.clone(),
                part: state.parts,
                statistic: round4(state.statistic),
                change,
                change_parts_ago: since as u64,
            }
        });
        if let Some(alarm) = &raised {
            state.alarm = Some(alarm.clone());
        }
        let note = DriftNote {
            machine: machine.label.clone(),
            distance: round4(distance),
            z: round4(z),
            statistic: round4(state.statistic),
            threshold: s.threshold,
            parts: state.parts,
            alarm: state.alarm.is_some(),
            raised,
        };
        let point = HistoryPoint {
            time: a.time.clone(),
            id: a.id.clone(),
            machine: machine.label.clone(),
            fingerprint: machine.id.clone(),
            part: state.parts,
            distance: note.distance,
            z: note.z,
            statistic: note.statistic,
            alarm: note.raised.is_some(),
        };
        if let Some(kept) = &mut self.kept {
            kept.push(point.clone());
        }
        if let Err(e) = self.persist(&point, &a.time) {
            log::warn!("{e}");
        }
        Some(note)
    }

    fn persist(&mut self, point: &HistoryPoint, time: &str) -> Result<(), DriftError> {
        let Some(store) = &mut self.store else { return Ok(()) };
        let history_path = store.state_path.with_file_name(HISTORY_FILE);
        let mut line = serde_json::to_vec(point).expect("a history point serialises");
        line.push(b'\n');
        store
            .history
            .write_all(&line)
            .and_then(|()| store.history.flush())
            .map_err(|source| DriftError::Write { path: history_path, source })?;
        let file = StateFile {
            format: "amfp-drift".into(),
            schema: 1,
            updated: time.to_string(),
            machines: self.state.machines.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the drift state serialises");
        crate::atomic_file::write(&store.state_path, &bytes)
            .map_err(|source| DriftError::Write { path: store.state_path.clone(), source })
    }
}

/// z of a distance against a machine's reference (unclamped; a distance <= 0, possible after
/// the small-N offset and the ROI projection, is far below any reference).
pub fn standardise(distance: f64, r: &DriftReference) -> f64 {
    if distance <= 0.0 {
        return -100.0;
    }
    (distance.ln() - r.mean_log) / r.sd_log
}

/// Whether the recent z values (oldest first) look like a step (sudden: substitution or
/// another machine) or a ramp (gradual: wear), and how many parts ago the change began. Each
/// shape is fitted by least squares at every change point (flat before it; after it a new
/// level, or a line rising from the old level), and the better fit wins.
pub fn classify(z: &[f64]) -> (DriftChange, usize) {
    let n = z.len();
    if n < 3 {
        return (DriftChange::Sudden, n);
    }
    let ss = |x: &[f64]| -> f64 {
        if x.is_empty() {
            return 0.0;
        }
        let m = x.iter().sum::<f64>() / x.len() as f64;
        x.iter().map(|v| (v - m) * (v - m)).sum()
    };
    let mut step = (f64::INFINITY, 0);
    let mut ramp = (f64::INFINITY, 0);
    for tau in 0..n - 1 {
        let rss = ss(&z[..tau]) + ss(&z[tau..]);
        if rss < step.0 {
            step = (rss, tau);
        }
        // z_t = a + c * max(0, t - tau + 1): a simple regression of z on the hinge.
        let h: Vec<f64> = (0..n).map(|t| (t as f64 - tau as f64 + 1.0).max(0.0)).collect();
        let (mh, mz) = (h.iter().sum::<f64>() / n as f64, z.iter().sum::<f64>() / n as f64);
        let sxx: f64 = h.iter().map(|v| (v - mh) * (v - mh)).sum();
        let sxy: f64 = h.iter().zip(z).map(|(a, b)| (a - mh) * (b - mz)).sum();
        let rss = ss(z) - if sxx > 0.0 { sxy * sxy / sxx } else { 0.0 };
        if rss < ramp.0 {
            ramp = (rss, tau);
        }
    }
    if step.0 <= ramp.0 { (DriftChange::Sudden, n - step.1) } else { (DriftChange::Gradual, n - ramp.1) }
}

/// Reads the state file; a missing file is an empty state.
pub fn read_state(path: &Path) -> Result<State, DriftError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(DriftError::Read { path: path.to_owned(), detail: e.to_string() }),
    };
    let file: StateFile = serde_json::from_slice(&bytes)
        .map_err(|e| DriftError::Read { path: path.to_owned(), detail: format!("not a drift state file ({e})") })?;
    if file.format != "amfp-drift" || file.schema != 1 {
        return Err(DriftError::Read {
            path: path.to_owned(),
            detail: format!("format {:?} schema {}, expected \"amfp-drift\" schema 1", file.format, file.schema),
        });
    }
    Ok(State { machines: file.machines })
}

/// Reads the history under `dir` (the rotated file first), oldest first; lines that cannot be
/// read (a line cut by a crash) are skipped and counted.
pub fn read_history(dir: &Path) -> Result<(Vec<HistoryPoint>, usize), DriftError> {
    let mut points = Vec::new();
    let mut bad = 0;
    for name in [format!("{HISTORY_FILE}.1"), HISTORY_FILE.to_string()] {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DriftError::Read { path, detail: e.to_string() }),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(p) => points.push(p),
                Err(_) => bad += 1,
            }
        }
    }
    Ok((points, bad))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_sudden_and_a_ramp_is_gradual() {
        // Fixed pseudo-noise (a small LCG), so the test does not depend on a random crate's stream.
        let mut x = 12345u64;
        let mut noise = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.6
        };
        let step: Vec<f64> = (0..60).map(|t| if t < 45 { 0.0 } else { 3.0 } + noise()).collect();
        let (c, since) = classify(&step);
        assert_eq!(c, DriftChange::Sudden);
        assert!((13..=17).contains(&since), "{since}");
        let ramp: Vec<f64> = (0..60).map(|t| if t < 20 { 0.0 } else { 0.1 * (t - 20) as f64 } + noise()).collect();
        let (c, since) = classify(&ramp);
        assert_eq!(c, DriftChange::Gradual);
        assert!((30..=50).contains(&since), "{since}");
    }

    #[test]
    fn z_is_the_log_distance_in_reference_deviations() {
        let r = DriftReference { parts: 20, mean_log: 100f64.ln(), sd_log: 0.5 };
        assert!(standardise(100.0, &r).abs() < 1e-12);
        assert!((standardise(100.0 * 1f64.exp(), &r) - 2.0).abs() < 1e-9);
        assert!(standardise(0.0, &r) < -10.0);
    }

    /// The test gallery of `gallery::tests` (A-1 at the origin, identity whitening), with a
    /// drift reference for A-1 only: ln d ~ N(0, 0.5²).
    fn gallery(mean_a: f32) -> Gallery {
        let mut file = crate::gallery::tests::file();
        file["machines"][0]["drift"] = serde_json::json!({"parts": 20, "mean_log": 0.0, "sd_log": 0.5});
        let bytes: Vec<u8> = [mean_a, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        use base64::Engine as _;
        file["machines"][0]["mean"]["f32le"] = base64::engine::general_purpose::STANDARD.encode(bytes).into();
        crate::gallery::tests::load(&file).unwrap()
    }

    /// A part judged near `nearest` at plain distance `d` (projected: the same).
    fn part(i: usize, nearest: &str, d: f64, verdict: &str) -> Attribution {
        serde_json::from_value(serde_json::json!({
            "id": format!("01DRIFT{i:019}"), "device": "dev", "time": format!("2026-12-05T10:{:02}:{:02}Z", i / 60 % 60, i % 60),
            "source": {"kind": "file", "name": format!("part-{i}.png")},
            "model": {"name": "m", "task": "machine", "sha256": "abc"},
            "verdict": verdict, "label": if verdict == "identified" { Some(nearest) } else { None },
            "score": 0.9, "margin": 0.8, "top": [], "mode": "gallery",
            "gallery": {"distance": d - 1.0, "plain_distance": d, "threshold": 2.0, "outlier_threshold": 1000.0,
                        "nearest": nearest, "runner_up": "B-1", "runner_up_distance": 50.0, "version": 1,
                        "sha256": "00", "projected_distance": d},
            "timing_ms": {"capture": 1.0, "preprocess": 2.0, "inference": 3.0, "total": 6.0}
        }))
        .unwrap()
    }

    /// Distances of a stable machine's parts: ln d ~ N(0, 0.5²), from a fixed seed.
    fn stable(n: usize) -> Vec<f64> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let normal = rand_distr::Normal::new(0.0, 0.5).unwrap();
        (0..n).map(|_| f64::exp(normal.sample(&mut rng))).collect()
    }

    #[test]
    fn a_stable_machine_stays_quiet_and_a_substitution_alarms_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let g = gallery(0.0);
        let mut m = Monitor::open(dir.path(), DriftSettings::default()).unwrap();
        let stable = stable(320);
        for (i, &d) in stable.iter().enumerate().take(300) {
            let note = m.observe(&g, &part(i, "A-1", d, "identified")).expect("A-1 is followed");
            assert!(!note.alarm, "a false alarm at part {i}: {note:?}");
        }
        // B-1 has no reference; surfaces beyond the outlier threshold are not followed.
        assert!(m.observe(&g, &part(300, "B-1", 1.0, "identified")).is_none());
        assert!(m.observe(&g, &part(301, "A-1", 2000.0, "unknown")).is_none());
        // Another machine's parts: distances e^2 = 7.4 times the reference, z = 4 each (unknown
        // verdicts count).
        let mut raised = None;
        for (i, &d) in stable.iter().enumerate().skip(302) {
            let note = m.observe(&g, &part(i, "A-1", 2f64.exp() * d, "unknown")).unwrap();
            if let Some(a) = note.raised {
                assert!(raised.is_none(), "raised twice");
                raised = Some((i, a));
            }
        }
        let (at, alarm) = raised.expect("the alarm fires");
        assert!(at <= 306, "alarm after {} parts of another machine", at - 301);
        assert_eq!(alarm.change, DriftChange::Sudden);
        assert!((3..=6).contains(&alarm.change_parts_ago), "{alarm:?}");
        let before = m.state().clone();
        drop(m);
        // The state and the history survive a restart.
        let m = Monitor::open(dir.path(), DriftSettings::default()).unwrap();
        assert_eq!(m.state(), &before);
        let (history, bad) = read_history(dir.path()).unwrap();
        assert_eq!((history.len(), bad), (318, 0));
        assert_eq!(history.iter().filter(|p| p.alarm).count(), 1);
        // A new fingerprint (re-enrolled) starts the machine's monitoring again.
        let mut m = m;
        let note = m.observe(&gallery(0.5), &part(400, "A-1", 1.0, "identified")).unwrap();
        assert_eq!((note.parts, note.alarm), (1, false));
    }

    /// A part that claims a machine (a line station's `daemon.expect`) counts for that machine,
    /// at its distance: the nearest's, moved by the difference of the relative distances.
    #[test]
    fn a_claimed_part_counts_for_the_claimed_machine() {
        let mut g = crate::gallery::tests::file();
        g["machines"][1]["drift"] = serde_json::json!({"parts": 20, "mean_log": 0.0, "sd_log": 0.5});
        let g = crate::gallery::tests::load(&g).unwrap();
        let mut m = Monitor::in_memory(DriftSettings::default());
        let mut a = part(1, "A-1", 5.0, "identified");
        // Relative distance 3.0 to A-1 (nearest, projected 5.0), 20.0 to the claimed B-1.
        a.claim = Some(
            serde_json::from_value(serde_json::json!({
                "label": "B-1", "consistent": false, "status": "contradicted", "known_label": true, "distance": 20.0
            }))
            .unwrap(),
        );
        let note = m.observe(&g, &a).expect("B-1 is followed");
        assert_eq!(note.machine, "B-1");
        assert!((note.distance - (20.0 - 4.0 + 5.0)).abs() < 1e-9, "{note:?}");
        // Beyond the outlier threshold a claimed part still counts for its machine.
        let mut far = part(2, "A-1", 5000.0, "unknown");
        far.claim = a.claim.clone();
        assert_eq!(m.observe(&g, &far).expect("claimed: followed").machine, "B-1");
        // Without the claim the nearest, A-1, has no reference here.
        a.claim = None;
        assert!(m.observe(&g, &a).is_none());
    }

    #[test]
    fn an_unreadable_state_file_is_moved_aside_and_monitoring_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        let m = Monitor::open(dir.path(), DriftSettings::default()).unwrap();
        assert!(m.state().machines.is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.unreadable-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), b"{ not json");
    }

    #[test]
    fn out_of_range_settings_are_named() {
        assert!(check(&DriftSettings::default()).is_empty());
        let bad = DriftSettings { allowance: -1.0, threshold: 0.0, max_z: 0.5, enabled: true };
        let keys: Vec<_> = check(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["drift.allowance", "drift.threshold", "drift.max_z"]);
        for (key, _) in ALLOWED {
            assert!(key.starts_with("drift."), "{key}");
        }
    }
}
