//! Enrollment at the station: a `cmd/enroll` command turns the next parts the daemon judges into
//! a machine's fingerprint, written as the gallery's next version and used from the next part on,
//! without a restart (docs/gallery.md, "Enrollment at the station").
//!
//! The parts come from whatever the station's trigger makes a part (each file of a watched
//! directory, each still part under the camera, each tick or `cmd/inspect`). Each is judged on
//! every ROI; a frame that cannot be judged is refused and does not count. Once enough parts
//! are taken, [`EnrollRequest::commit`] does what `amfp enroll` does: it refuses parts that
//! disagree with the rest and a machine the model cannot tell from another, and writes the
//! version atomically. Nothing is written before that, so a cancel, a failure or a restart
//! leaves the gallery as it was.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::settings::EnrollSettings;
use crate::gallery::{self, Document, EnrollRequest, Enrolled, Gallery, PartEmbedding, Refused};
use crate::identify::Identifier;
use crate::publish::EnrollStart;
use crate::result::{Attribution, EnrollmentNote, Verdict};
use crate::trust::{SecretKey, TrustSettings};

/// How many frames may be judged per part asked for before an enrollment gives up: frames
/// that cannot be judged (off the stage, out of focus) are refused and do not count.
pub const FRAMES_PER_PART: u32 = 3;

/// The station's enrollment state: at most one enrollment at a time.
pub struct Station {
    settings: EnrollSettings,
    trust: TrustSettings,
    signer: Option<Arc<SecretKey>>,
    /// Who enrolls when the command does not say: the station.
    by: String,
    active: Option<Active>,
}

/// An enrollment under way.
struct Active {
    request: EnrollRequest,
    want: u32,
    reference: Option<String>,
    parts: Vec<PartEmbedding>,
    refused: Vec<Refused>,
    judged: u32,
}

/// An enrollment with all its parts, ready to be written ([`Ready::commit`], blocking).
pub struct Ready {
    active: Active,
    signer: Option<Arc<SecretKey>>,
}

/// What a judged part did to the enrollment under way.
pub enum Step {
    /// Taken or refused; more parts are wanted. The `enrollment` event's fields.
    More(Value),
    /// The last part wanted was taken: write the version.
    Ready(Value, Box<Ready>),
    /// Too many frames could not be used: the enrollment ended without a version.
    Failed(Value),
}

impl Station {
    /// The station of a daemon whose configuration is `settings` and `trust`, on device
    /// `device`. Reads the signing key now, so that a bad key stops the start, not an
    /// enrollment an hour later.
    pub fn new(settings: EnrollSettings, trust: TrustSettings, device: &str) -> Result<Self, String> {
        let signer = match (&settings.sign_key, settings.commands) {
            (Some(path), true) => Some(Arc::new(SecretKey::read(path).map_err(|e| format!("enroll.sign_key: {e}"))?)),
            _ => None,
        };
        Ok(Self { settings, trust, signer, by: format!("station {device}"), active: None })
    }

    /// Whether parts are being taken: they are then judged on every ROI, with their embedding.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Starts an enrollment, or says why not (the `command_refused` event's reason): commands
    /// are off, one is already under way, the daemon has no gallery, the request does not fit
    /// it, the gallery cannot be written here, or `[trust]` would refuse what the station signs.
    pub fn start(&mut self, cmd: EnrollStart, identifier: &Identifier) -> Result<Value, String> {
        if !self.settings.commands {
            return Err("this station does not take enrollments: enroll.commands is false in its configuration \
                        (docs/gallery.md, \"Enrollment at the station\")"
                .into());
        }
        if let Some(a) = &self.active {
            return Err(format!(
                "an enrollment of {} is under way ({} of {} parts); cancel it first ({{\"cancel\": true}})",
                a.request.label,
                a.parts.len(),
                a.want
            ));
        }
        let Some(gallery) = identifier.gallery() else {
            return Err("this station judges by the vote alone (no fingerprint gallery): enrollment needs one \
                        (model.gallery, docs/gallery.md)"
                .into());
        };
        let request = EnrollRequest {
            label: cmd.label,
            process: cmd.process,
            notes: cmd.notes,
            why: cmd.why,
            by: cmd.by.unwrap_or_else(|| self.by.clone()),
            reenroll: cmd.reenroll,
            max_confusion: self.settings.max_confusion,
        };
        request.check(&gallery).map_err(|e| e.to_string())?;
        writable(&gallery.path)?;
        if let Some(why) = crate::trust::signing_warning(&self.trust, self.signer.as_deref()) {
            return Err(format!("{why}; set enroll.sign_key to a key [trust] lists"));
        }
        let event = json!({
            "state": "started", "label": request.label, "parts": 0, "of": cmd.parts, "ref": cmd.reference,
            "gallery": {"path": gallery.path, "version": gallery.version},
        });
        self.active = Some(Active {
            request,
            want: cmd.parts,
            reference: cmd.reference,
            parts: Vec::new(),
            refused: Vec::new(),
            judged: 0,
        });
        Ok(event)
    }

    /// Drops the enrollment under way; nothing is written. Refused when none is.
    pub fn cancel(&mut self, reference: Option<String>) -> Result<Value, String> {
        let a = self.active.take().ok_or("no enrollment is under way to cancel")?;
        Ok(json!({"state": "cancelled", "label": a.request.label, "parts": a.parts.len(), "of": a.want,
                  "ref": reference.or(a.reference)}))
    }

    /// Takes a part judged with [`Identifier::identify_for_enrollment`] into the enrollment under
    /// way, if any: notes it in the Attribution (whose embedding is not published) and says
    /// what comes next. `None`: no enrollment is under way.
    pub fn take(&mut self, attribution: &mut Attribution) -> Option<Step> {
        let a = self.active.as_mut()?;
        a.judged += 1;
        let reason = match part_of(attribution) {
            Ok(part) => {
                a.parts.push(part);
                None
            }
            Err(refused) => {
                let reason = refused.reason.clone();
                a.refused.push(refused);
                Some(reason)
            }
        };
        attribution.enrollment = Some(EnrollmentNote {
            label: a.request.label.clone(),
            taken: reason.is_none(),
            parts: a.parts.len() as u32,
            of: a.want,
            reason: reason.clone(),
            reference: a.reference.clone(),
        });
        let event = json!({
            "state": "part", "label": a.request.label, "taken": reason.is_none(), "reason": reason,
            "parts": a.parts.len(), "of": a.want, "result_id": attribution.id, "source": attribution.source.name,
            "ref": a.reference,
        });
        if a.parts.len() as u32 >= a.want {
            let active = self.active.take().expect("checked above");
            return Some(Step::Ready(event, Box::new(Ready { active, signer: self.signer.clone() })));
        }
        if a.judged >= FRAMES_PER_PART * a.want {
            let a = self.active.take().expect("checked above");
            let reason = format!(
                "{} frames judged, only {} of {} parts usable: check the part, the focus and the lighting",
                a.judged,
                a.parts.len(),
                a.want
            );
            return Some(Step::Failed(failed(&a, &reason)));
        }
        Some(Step::More(event))
    }
}

impl Ready {
    /// The machine being enrolled.
    pub fn label(&self) -> &str {
        &self.active.request.label
    }

    /// Writes the enrollment as the next version of the identifier's gallery and makes it the
    /// one parts are judged with. Returns the `enrollment` event (`done` or `failed`) and, when
    /// done, the new gallery. Blocking: reads, writes and syncs files.
    pub fn commit(self, identifier: &Identifier) -> (Value, Option<Arc<Gallery>>) {
        let a = &self.active;
        let Some(gallery) = identifier.gallery() else {
            return (failed(a, "the gallery is gone"), None);
        };
        let written = Document::read(&gallery.path).map_err(gallery::EnrollError::from).and_then(|parent| {
            a.request.commit(
                &gallery,
                &identifier.models()[0],
                &parent,
                &gallery.path,
                &a.parts,
                self.signer.as_deref(),
            )
        });
        let Enrolled { enrollment, committed, action } = match written {
            Ok(done) => done,
            Err(e) => return (failed(a, &e.to_string()), None),
        };
        let new = match identifier.replace_gallery(&committed.path) {
            Ok(g) => g,
            Err(e) => {
                return (failed(a, &format!("version {} was written but does not load: {e}", committed.version)), None);
            }
        };
        let refused: Vec<&Refused> = a.refused.iter().chain(&enrollment.refused).collect();
        let event = json!({
            "state": "done", "label": a.request.label, "action": action, "parts": enrollment.parts, "of": a.want,
            "refused": refused, "version": committed.version, "sha256": committed.sha256,
            "offset": enrollment.offset,
            "nearest": enrollment.nearest.as_ref().map(|(l, d)| json!({"label": l, "distance": d})),
            "confusion": enrollment.confusion.as_ref().map(|(l, c)| json!({"label": l, "rate": c})),
            "warnings": enrollment.warnings, "signed_by": committed.signed_by, "ref": a.reference,
        });
        (event, Some(new))
    }
}

/// Takes the embedding out of a part judged with [`Identifier::identify_for_enrollment`]: the
/// part to enroll, or why it cannot be used. `amfp enroll` and the station both use it.
pub fn part_of(attribution: &mut Attribution) -> Result<PartEmbedding, Refused> {
    let source = attribution.source.name.clone();
    let judgement = &mut attribution.judgement;
    match (judgement.verdict, judgement.embedding.take()) {
        (Verdict::Rejected, _) => Err(Refused {
            source,
            reason: format!("cannot be judged: {}", judgement.reason.as_deref().unwrap_or_default()),
        }),
        (_, Some(embedding)) => Ok(PartEmbedding { source, embedding }),
        (_, None) => Err(Refused { source, reason: "the model gave no embedding".into() }),
    }
}

/// The `failed` event of an enrollment.
fn failed(a: &Active, reason: &str) -> Value {
    json!({"state": "failed", "label": a.request.label, "reason": reason, "parts": a.parts.len(), "of": a.want,
           "refused": a.refused, "ref": a.reference})
}

/// Refuses a gallery the daemon cannot write a new version of: its folder (the new file is
/// renamed into it) and its versions folder must be writable by this process.
fn writable(gallery: &Path) -> Result<(), String> {
    let folder = gallery.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A versions folder that does not exist yet is made by the commit, in the gallery's folder.
    let versions = Some(gallery::versions_dir(gallery)).filter(|v| v.exists());
    for dir in std::iter::once(folder).chain(versions.as_deref()) {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| "a path with a NUL byte")?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
            return Err(format!(
                "the gallery cannot be written here ({} is not writable: {}): copy it to a writable place (e.g. \
                 /var/lib/amfp/gallery.json) and point model.gallery at it (docs/gallery.md)",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn station(want: u32) -> Station {
        let mut s = Station::new(EnrollSettings::default(), TrustSettings::default(), "dock-1").unwrap();
        let request = EnrollRequest {
            label: "F3B-9".into(),
            process: None,
            notes: None,
            why: None,
            by: "t".into(),
            reenroll: false,
            max_confusion: 0.01,
        };
        s.active = Some(Active {
            request,
            want,
            reference: Some("T-1".into()),
            parts: Vec::new(),
            refused: Vec::new(),
            judged: 0,
        });
        s
    }

    fn part(i: usize, verdict: &str) -> Attribution {
        serde_json::from_value(json!({
            "id": format!("01ENR{i:021}"), "device": "dock-1", "time": "2026-12-05T12:00:00Z",
            "source": {"kind": "directory", "name": format!("part-{i}.png")},
            "model": {"name": "m", "task": "machine", "sha256": "00"},
            "verdict": verdict, "label": null, "score": 0.5, "margin": 0.1, "top": [], "reason": "too dark",
            "embedding": [0.5, 0.25],
            "timing_ms": {"capture": 1.0, "preprocess": 2.0, "inference": 3.0, "total": 6.0}
        }))
        .unwrap()
    }

    #[test]
    fn parts_are_taken_until_the_enrollment_is_ready() {
        let mut s = station(3);
        for i in 0..2 {
            let mut a = part(i, "unknown");
            assert!(matches!(s.take(&mut a), Some(Step::More(_))));
            let note = a.enrollment.as_ref().unwrap();
            assert_eq!((note.taken, note.parts, note.of), (true, i as u32 + 1, 3));
            assert!(a.judgement.embedding.is_none(), "the embedding is taken, not published");
        }
        let mut rejected = part(2, "rejected");
        let Some(Step::More(e)) = s.take(&mut rejected) else { panic!() };
        assert_eq!((e["taken"].as_bool(), e["reason"].as_str()), (Some(false), Some("cannot be judged: too dark")));
        let Some(Step::Ready(e, ready)) = s.take(&mut part(3, "unknown")) else { panic!() };
        assert_eq!((e["parts"].as_u64(), ready.label(), ready.active.parts.len()), (Some(3), "F3B-9", 3));
        assert!(!s.is_active() && s.take(&mut part(4, "unknown")).is_none());
    }

    #[test]
    fn an_enrollment_gives_up_after_too_many_unusable_frames() {
        let mut s = station(3);
        for i in 0..FRAMES_PER_PART * 3 - 1 {
            assert!(matches!(s.take(&mut part(i as usize, "rejected")), Some(Step::More(_))));
        }
        let Some(Step::Failed(e)) = s.take(&mut part(99, "rejected")) else { panic!() };
        assert_eq!((e["state"].as_str(), e["ref"].as_str()), (Some("failed"), Some("T-1")));
        assert!(e["reason"].as_str().unwrap().contains("9 frames judged, only 0 of 3 parts usable"), "{e}");
        assert_eq!(e["refused"].as_array().unwrap().len(), 9);
        assert!(!s.is_active());
    }

    #[test]
    fn a_cancel_needs_an_enrollment_under_way() {
        let mut s = Station::new(EnrollSettings::default(), TrustSettings::default(), "dock-1").unwrap();
        assert!(s.cancel(None).unwrap_err().contains("no enrollment is under way"));
        let mut s = station(3);
        let e = s.cancel(None).unwrap();
        assert_eq!((e["state"].as_str(), e["ref"].as_str()), (Some("cancelled"), Some("T-1")));
    }
}
