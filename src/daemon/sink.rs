//! Where each Attribution goes: evidence image, stdout, the rotating results log, MQTT.
//!
//! Every configured sink gets every Attribution, in that order (the evidence first, so its path
//! is in what the others receive). A part counts as delivered when every sink took it; only
//! then does the source learn it is done (a watched directory moves the image into `done/`), so
//! a result that could not be stored (an MQTT outbox that is full, a full disk) leaves its image
//! in place for a later run instead of losing it.
//!
//! Odd parts raise MQTT events besides their result, so a fleet manager can alarm on them
//! without parsing every result: `odd_part` (unknown source, or a contradicted expectation) and
//! `rejected` (the frame could not be judged).

use std::io::Write as _;
use std::path::Path;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use serde_json::json;

use super::evidence::{EvidenceStore, RoiBox};
use super::settings::OutputSettings;
use crate::capture::Frame;
use crate::capture::source::OnDone;
use crate::publish::MqttPublisher;
use crate::result::{Attribution, ClaimStatus, Verdict};

/// Subdirectory of the state directory holding the results log.
pub const RESULTS_DIR: &str = "results";
/// File name of the current results log.
pub const RESULTS_FILE: &str = "results.jsonl";

/// A judged part on its way to the sinks.
pub struct Judged {
    pub attribution: Attribution,
    /// The frame, kept only when evidence is saved.
    pub frame: Option<Frame>,
    /// The ROIs that voted, in frame pixels (for the evidence image).
    pub rois: Vec<RoiBox>,
    pub on_done: Option<OnDone>,
}

/// The configured sinks; see the module docs.
pub struct Sinks {
    stdout: bool,
    results: Option<FileRotate<AppendCount>>,
    evidence: Option<EvidenceStore>,
    mqtt: Option<MqttPublisher>,
    /// Set once stdout was found closed, so it is reported once.
    stdout_closed: bool,
}

/// What happened to one part in the sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Every sink took the Attribution.
    pub complete: bool,
    /// What went wrong, one line per sink that failed.
    pub problems: Vec<String>,
}

impl Sinks {
    /// Opens the local sinks under `state_dir` as `output` says; `mqtt` when publishing.
    /// An error names the directory that cannot be used.
    pub fn open(output: &OutputSettings, state_dir: &Path, mqtt: Option<MqttPublisher>) -> Result<Self, String> {
        let results = if output.jsonl {
            let dir = state_dir.join(RESULTS_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| {
                format!(
                    "cannot create the results log directory {}: {e}; set daemon.state_dir to a writable directory",
                    dir.display()
                )
            })?;
            let limit = usize::try_from(output.jsonl_max_bytes).unwrap_or(usize::MAX);
            Some(FileRotate::new(
                dir.join(RESULTS_FILE),
                AppendCount::new(output.jsonl_keep),
                ContentLimit::BytesSurpassed(limit),
                Compression::None,
                None,
            ))
        } else {
            None
        };
        let evidence = if output.evidence {
            Some(EvidenceStore::open(state_dir, output.evidence_max_bytes, output.evidence_quality).map_err(|e| {
                format!(
                    "cannot open the evidence directory under {}: {e}; set daemon.state_dir to a writable directory",
                    state_dir.display()
                )
            })?)
        } else {
            None
        };
        Ok(Self { stdout: output.stdout, results, evidence, mqtt, stdout_closed: false })
    }

    /// Whether judged frames must be kept for evidence images.
    pub fn wants_evidence(&self) -> bool {
        self.evidence.is_some()
    }

    /// Gives one judged part to every sink, then, if all took it, runs its `on_done`.
    pub async fn deliver(&mut self, judged: Judged) -> Delivery {
        let Judged { mut attribution, frame, rois, on_done } = judged;
        let mut problems = Vec::new();
        if let (Some(store), Some(frame)) = (self.evidence.take(), frame) {
            let id = attribution.id.clone();
            let (store, saved) = tokio::task::spawn_blocking(move || {
                let mut store = store;
                let saved = store.save(&id, &frame, &rois);
                (store, saved)
            })
            .await
            .expect("evidence task panicked");
            self.evidence = Some(store);
            match saved {
                Ok(path) => attribution.evidence = Some(path),
                // Evidence is an extra: the result is complete without it.
                Err(e) => log::warn!("evidence: cannot save the image of {}: {e}", attribution.id),
            }
        }
        // One buffer per line: file-rotate rotates after a write that passes the size, so a
        // line written in two calls would be split across two files.
        let mut line = serde_json::to_string(&attribution).expect("an Attribution serialises");
        line.push('\n');
        if self.stdout && !self.stdout_closed {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
                log::warn!("stdout is closed ({e}); results go to the other sinks only");
                self.stdout_closed = true;
            }
        }
        if let Some(log) = &mut self.results
            && let Err(e) = log.write_all(line.as_bytes()).and_then(|_| log.flush())
        {
            problems.push(format!("results log: {e}"));
        }
        if let Some(mqtt) = &self.mqtt {
            if let Err(e) = mqtt.publish_result(&attribution).await {
                problems.push(format!("mqtt: {e}"));
            }
            for (kind, detail) in events_for(&attribution) {
                if let Err(e) = mqtt.publish_event(kind, detail) {
                    log::warn!("mqtt: {kind} event of {} not sent: {e}", attribution.id);
                }
            }
        }
        let complete = problems.is_empty();
        if complete && let Some(done) = on_done {
            if let Err(e) = done(&attribution) {
                log::warn!("source: cannot mark {} as done: {e}", attribution.source.name);
            }
        } else if !complete {
            log::warn!(
                "result {} of {} not stored everywhere ({}); its source is kept for a later run",
                attribution.id,
                attribution.source.name,
                problems.join("; ")
            );
        }
        Delivery { complete, problems }
    }
}

/// The events an Attribution raises besides its result: `odd_part` for a part from no known
/// machine or one that contradicts its claim, `rejected` for a frame that could not be judged.
/// A part judged for an enrollment raises none: its machine is not known yet, and the
/// `enrollment` events say what became of it.
pub fn events_for(a: &Attribution) -> Vec<(&'static str, serde_json::Value)> {
    if a.enrollment.is_some() {
        return Vec::new();
    }
    let j = &a.judgement;
    let claim_broken = a.claim.as_ref().is_some_and(|c| {
        matches!(c.status, ClaimStatus::Contradicted) || (c.status == ClaimStatus::Unconfirmed && c.known_label)
    });
    let mut events = Vec::new();
    if j.verdict == Verdict::Rejected {
        events.push((
            "rejected",
            json!({"id": a.id, "source": a.source, "reason": j.reason, "reason_code": j.reason_code}),
        ));
    } else if j.verdict == Verdict::Unknown || claim_broken {
        events.push((
            "odd_part",
            json!({
                "id": a.id, "source": a.source, "verdict": j.verdict, "label": j.label, "reason": j.reason,
                "claim": a.claim, "top": j.top,
            }),
        ));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribution(i: usize, verdict: &str) -> Attribution {
        serde_json::from_value(json!({
            "id": format!("01SINK{i:020}"), "device": "dev", "time": "2026-11-21T12:00:00Z",
            "source": {"kind": "file", "name": format!("part-{i}.png")},
            "model": {"name": "m", "task": "machine", "sha256": "00"},
            "verdict": verdict, "label": "DLS-3", "score": 0.9, "margin": 0.8, "top": [],
            "timing_ms": {"capture": 1.0, "preprocess": 2.0, "inference": 3.0, "total": 6.0}
        }))
        .unwrap()
    }

    /// The results log rotates by size without splitting a line, keeps `jsonl_keep` old files,
    /// and runs `on_done` only after the write.
    #[tokio::test]
    async fn the_results_log_rotates_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let output =
            OutputSettings { stdout: false, jsonl: true, jsonl_max_bytes: 4096, jsonl_keep: 2, ..Default::default() };
        let mut sinks = Sinks::open(&output, dir.path(), None).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..40 {
            let d = done.clone();
            let on_done: OnDone = Box::new(move |_| {
                d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            });
            let delivery = sinks
                .deliver(Judged {
                    attribution: attribution(i, "identified"),
                    frame: None,
                    rois: vec![],
                    on_done: Some(on_done),
                })
                .await;
            assert!(delivery.complete, "{delivery:?}");
        }
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 40);
        let results = dir.path().join(RESULTS_DIR);
        let mut names: Vec<String> = std::fs::read_dir(&results)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["results.jsonl", "results.jsonl.1", "results.jsonl.2"]);
        let mut ids = Vec::new();
        for name in ["results.jsonl.2", "results.jsonl.1", "results.jsonl"] {
            for line in std::fs::read_to_string(results.join(name)).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("whole lines only");
                ids.push(v["id"].as_str().unwrap().to_string());
            }
        }
        // The newest results, in order, with nothing missing between the kept files.
        let first: usize = ids[0][6..].parse().unwrap();
        let want: Vec<String> = (first..40).map(|i| format!("01SINK{i:020}")).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn odd_parts_and_rejections_raise_events() {
        assert!(events_for(&attribution(0, "identified")).is_empty());
        assert_eq!(events_for(&attribution(1, "unknown"))[0].0, "odd_part");
        assert_eq!(events_for(&attribution(2, "rejected"))[0].0, "rejected");
        let mut contradicted = attribution(3, "identified");
        contradicted.claim = Some(crate::result::ClaimCheck {
            label: "DLS-1".into(),
            consistent: Some(false),
            status: ClaimStatus::Contradicted,
            known_label: true,
            score: Some(0.01),
            distance: None,
        });
        assert_eq!(events_for(&contradicted)[0].0, "odd_part");
        // A part taken for an enrollment is unknown by design: no alarm.
        let mut enrolling = attribution(4, "unknown");
        enrolling.enrollment = Some(crate::result::EnrollmentNote {
            label: "F3B-9".into(),
            taken: true,
            parts: 1,
            of: 10,
            reason: None,
            reference: None,
        });
        assert!(events_for(&enrolling).is_empty());
    }
}
