//! An enrollment as a person asks for it, from the command line (`amfp enroll`) or from the
//! station (`cmd/enroll` over MQTT): which machine, why and by whom; checked against the gallery
//! before any part is taken, then written as the gallery's next version.

use std::path::Path;

use super::{Committed, Document, EnrollError, Enrollment, Gallery, NewMachine, PartEmbedding, commit};
use crate::model::Model;
use crate::trust::SecretKey;

/// What to enroll: the fields `amfp enroll` and `cmd/enroll` share.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// The machine's label, as verdicts will name it.
    pub label: String,
    /// Its process (FDM, SLA, DLS, MJF...); a re-enrollment keeps the old one when `None`.
    pub process: Option<String>,
    /// Free text kept with the machine (supplier, serial number, site).
    pub notes: Option<String>,
    /// Why it is enrolled, for the gallery's history; required to re-enroll.
    pub why: Option<String>,
    /// Who asks, for the gallery's history.
    pub by: String,
    /// Replace the fingerprint of a machine the gallery already has: an explicit act.
    pub reenroll: bool,
    /// Largest estimated share of parts the new machine and another may swap (0-1).
    pub max_confusion: f64,
}

/// What [`EnrollRequest::commit`] did.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The fingerprint and what was found on the way (refused parts, nearest machine, warnings).
    pub enrollment: Enrollment,
    /// The version written.
    pub committed: Committed,
    /// `enroll` or `reenroll`, as the history records it.
    pub action: &'static str,
}

impl EnrollRequest {
    /// Refuses a request that does not fit `gallery` (an empty label, a label it already has
    /// without `reenroll`, a re-enrollment of a machine it does not have or without a reason, a
    /// confusion limit that is not a rate); otherwise the index of the machine it replaces.
    pub fn check(&self, gallery: &Gallery) -> Result<Option<usize>, EnrollError> {
        let label = self.label.trim();
        if label.is_empty() {
            return Err(EnrollError::Request("the machine's label is empty; give its label".into()));
        }
        if !(0.0..=1.0).contains(&self.max_confusion) {
            return Err(EnrollError::Request(format!(
                "the confusion limit {} is not a rate between 0 and 1",
                self.max_confusion
            )));
        }
        let existing = gallery.machines.iter().position(|m| m.label == label);
        let path = gallery.path.display();
        match (existing, self.reenroll, &self.why) {
            (Some(_), false, _) => Err(EnrollError::Request(format!(
                "gallery {path} already has machine {label:?}: to replace its fingerprint (after maintenance, a \
                 repair), re-enroll it and say why (`amfp enroll --reenroll --why`, or `reenroll` and `why` in cmd/enroll); \
                 to add another machine, give it its own label"
            ))),
            (None, true, _) => {
                Err(EnrollError::Request(format!("gallery {path} has no machine {label:?} to re-enroll")))
            }
            (Some(_), true, None) => Err(EnrollError::Request(
                "a re-enrollment needs a reason: the gallery's history records why a fingerprint was replaced".into(),
            )),
            _ => Ok(existing),
        }
    }

    /// Takes the machine's fingerprint from `parts` (refusing parts that disagree with the rest,
    /// and a machine the model cannot tell from another: [`Gallery::enroll`]) and writes it as
    /// the next version of `parent`, the document `gallery` was loaded from, at `out`, signed
    /// with `signer` when given. The new version is loaded for `model` before it replaces the old.
    pub fn commit(
        &self,
        gallery: &Gallery,
        model: &Model,
        parent: &Document,
        out: &Path,
        parts: &[PartEmbedding],
        signer: Option<&SecretKey>,
    ) -> Result<Enrolled, EnrollError> {
        let existing = self.check(gallery)?;
        let label = self.label.trim();
        let enrollment = gallery.enroll(label, parts, existing, self.max_confusion)?;
        let mut doc = parent.clone();
        doc.put_machine(&NewMachine {
            label: label.to_string(),
            process: self.process.clone().or_else(|| existing.and_then(|k| gallery.machines[k].process.clone())),
            parts: enrollment.parts as u32,
            mean: enrollment.mean.clone(),
            offset: enrollment.offset,
            notes: self.notes.clone(),
            drift: enrollment.drift,
        });
        let action = if existing.is_some() { "reenroll" } else { "enroll" };
        let why = self.why.clone().unwrap_or_else(|| format!("enrolled {label}"));
        doc.next_version(action, &self.by, &why, &[label.to_string()]);
        // The new version must load as the old one did before it replaces it.
        Gallery::for_model(out, &doc.to_bytes(), &model.meta.name, &model.sha256, model.meta.embedding.as_ref())?;
        let committed = commit(out, parent, &doc, signer)?;
        Ok(Enrolled { enrollment, committed, action })
    }
}
