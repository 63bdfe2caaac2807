//! The `Attribution`: one value per inspected part, the same for every sink.
//!
//! The CLI prints it (a table or one JSON line), the daemon publishes it over MQTT, and the
//! tests read it back. Its JSON form is the contract with fleet managers (docs/identify.md,
//! "The Attribution"): fields are only ever added, never renamed.

use serde::{Deserialize, Serialize};

pub use crate::vote::Candidate;

/// What amfp concluded about a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A known machine (label) fits: the part is near its fingerprint (or, without a gallery,
    /// the vote's share reaches the model's threshold).
    Identified,
    /// No known machine fits well enough: the part may come from a machine the model never saw.
    Unknown,
    /// The image cannot be judged (out of envelope, no part, badly exposed): see `reason`.
    Rejected,
}

impl Verdict {
    /// Lower-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identified => "identified",
            Self::Unknown => "unknown",
            Self::Rejected => "rejected",
        }
    }
}

/// Where the frame came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `file`, `v4l2`, `synth`...
    pub kind: String,
    /// File path or device name.
    pub name: String,
    /// Frame counter of a stream, absent for files.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub frame: Option<u64>,
}

/// Which model judged the part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub task: String,
    pub sha256: String,
    /// The engine that ran it (absent in results written before amfp had two engines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineRef>,
}

/// The engine that ran a model, in an Attribution: enough to tell results of the two engines apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRef {
    pub name: crate::model::Engine,
    pub version: String,
}

/// The outcome of checking a claimed source (a label, a purchase order) against the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimStatus {
    /// Identified as the claimed label.
    Confirmed,
    /// Identified as another label.
    Contradicted,
    /// The evidence does not support the claimed machine well enough (in gallery mode: the 1:1
    /// test at the claim threshold failed), and names no other machine either.
    Unconfirmed,
    /// The image was rejected: nothing to check against.
    Unjudged,
}

/// The claim check of an Attribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimCheck {
    /// The claimed label.
    pub label: String,
    /// Whether the evidence is consistent with the claim (absent when the image was rejected).
    pub consistent: Option<bool>,
    pub status: ClaimStatus,
    /// Whether the model has the claimed label among its classes.
    pub known_label: bool,
    /// The claimed label's share of the vote (absent for labels the model does not know).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// The part's relative distance to the claimed machine's fingerprint (gallery mode, when the
    /// gallery knows the machine; docs/gallery.md).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub distance: Option<f64>,
}

/// How a judged part's verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenSetMode {
    /// By the distance to each known machine's fingerprint in the model's gallery.
    Gallery,
    /// By the vote's share alone (the paper's rule; models without a gallery).
    Vote,
}

/// The gallery's reading of a part (docs/gallery.md): the distances behind the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GalleryReport {
    /// Relative Mahalanobis distance to the nearest machine's fingerprint.
    pub distance: f64,
    /// Plain (squared) Mahalanobis distance to it.
    pub plain_distance: f64,
    /// The gallery's threshold on `distance`.
    pub threshold: f64,
    /// The gallery's threshold on `plain_distance`.
    pub outlier_threshold: f64,
    /// The nearest machine (named as the label only when the part is near enough).
    pub nearest: String,
    /// The second-nearest machine and its relative distance.
    pub runner_up: String,
    pub runner_up_distance: f64,
    /// The gallery's version and file hash.
    pub version: u32,
    pub sha256: String,
    /// `plain_distance` projected to the model's full ROI count, for a part the vote stopped
    /// early on: what drift monitoring follows (docs/drift.md).
    #[serde(default)]
    pub projected_distance: f64,
}

/// How many ROIs the vote used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoiUse {
    pub used: usize,
    pub max: usize,
    /// Whether the vote stopped before `max`.
    pub early_stop: bool,
}

/// The pixel-size / sample-size envelope as checked for this frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeReport {
    /// µm per pixel of the frame, if known.
    pub camera_pixel_um: Option<f64>,
    /// Where that pixel size came from: `cli`, `file` or `config`.
    pub pixel_source: Option<crate::reject::PixelSizeSource>,
    pub model_pixel_um: f64,
    /// Side of one ROI on the part, mm.
    pub sample_mm: f64,
    /// Field of view [width, height] in mm, if the pixel size is known.
    pub view_mm: Option<[f64; 2]>,
    /// Whether the frame was resampled to the model's pixel size.
    pub resampled: bool,
    /// Whether the frame is inside the envelope.
    pub ok: bool,
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timing {
    pub capture: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub total: f64,
}

/// One model's judgement of a part: the verdict and the vote behind it. Flattened into the
/// Attribution (for the primary model) and into each entry of its `attributes` (for the others),
/// so both read the same in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Why the part is unknown or rejected, for people.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Stable code of a rejection (e.g. `pixel_too_coarse`), for machines.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason_code: Option<String>,
    /// The identified label (only when identified).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    /// Process of the identified label, when the model knows it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub process: Option<String>,
    /// Leader's share of the vote, in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// Leader's share minus the runner-up's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub margin: Option<f64>,
    /// The leading candidates, largest share first (also for unknown parts: the nearest machines).
    #[serde(default)]
    pub top: Vec<Candidate>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rois: Option<RoiUse>,
    /// How the verdict was reached (absent for rejected images).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<OpenSetMode>,
    /// The distances behind a gallery-mode verdict.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gallery: Option<GalleryReport>,
    /// The part's mean embedding, when asked for (`amfp identify --with-embedding`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub embedding: Option<Vec<f32>>,
}

/// Another model's judgement of the part (e.g. the build tray position), under `attributes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeResult {
    pub model: ModelRef,
    #[serde(flatten)]
    pub judgement: Judgement,
}

/// The result of inspecting one part: what amfp publishes and prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// ULID: unique, and sorts by time.
    pub id: String,
    /// The inspecting device (config `device.id`, default the hostname).
    pub device: String,
    /// RFC 3339 UTC time of the inspection.
    pub time: String,
    pub source: SourceInfo,
    /// The primary model (the first loaded).
    pub model: ModelRef,
    /// The primary model's verdict, label, score, margin, top and ROIs, at the top level.
    #[serde(flatten)]
    pub judgement: Judgement,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub claim: Option<ClaimCheck>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub envelope: Option<EnvelopeReport>,
    pub timing_ms: Timing,
    /// The requester's own reference (a purchase order, a job), echoed from an MQTT
    /// `cmd/inspect` command so the fleet can match the result to its request.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
    pub reference: Option<String>,
    /// Path of the saved evidence image relative to the state directory, when the daemon keeps one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub evidence: Option<String>,
    /// The other models' judgements (e.g. build tray position), when several models are loaded.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub attributes: Vec<AttributeResult>,
    /// The frames of a part judged from several (`amfp identify --same-part`), in the order
    /// given; absent for a part seen in one frame. `source` and `envelope` are the first used
    /// frame's.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub views: Vec<ViewReport>,
    /// What the part says about its nearest machine's drift (`amfp run` with drift monitoring,
    /// docs/drift.md); absent for parts that are not followed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drift: Option<DriftNote>,
    /// The part was judged to enroll a machine at the station (`cmd/enroll`, docs/gallery.md,
    /// "Enrollment at the station"): evidence for a fingerprint, not an inspection, so it raises
    /// no `odd_part` event and is not followed for drift.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enrollment: Option<EnrollmentNote>,
}

/// What became of a part judged for an enrollment at the station.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentNote {
    /// The machine being enrolled.
    pub label: String,
    /// Whether the part's embedding was taken (a frame that cannot be judged is not).
    pub taken: bool,
    /// Parts taken so far, this one included, and how many the enrollment wants.
    pub parts: u32,
    pub of: u32,
    /// Why it was not taken.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The `ref` of the `cmd/enroll` command.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
    pub reference: Option<String>,
}

/// One part's contribution to its machine's drift monitoring (docs/drift.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftNote {
    /// The machine followed: the part's nearest in the gallery.
    pub machine: String,
    /// The part's distance to it, projected to the model's full ROI count.
    pub distance: f64,
    /// That distance against the machine's reference, in standard deviations of its log.
    pub z: f64,
    /// The CUSUM statistic after this part, and the threshold it alarms at.
    pub statistic: f64,
    pub threshold: f64,
    /// Parts followed since the machine's reference (its fitting or enrollment).
    pub parts: u64,
    /// An alarm stands for this machine (raised by this part or earlier).
    pub alarm: bool,
    /// The alarm this part raised.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raised: Option<DriftAlarm>,
}

/// A drift alarm: the machine's parts have moved away from its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    /// When, and the Attribution that raised it.
    pub time: String,
    pub result_id: String,
    /// Parts followed since the reference when it was raised.
    pub part: u64,
    pub statistic: f64,
    /// Whether the distances ramped up or jumped.
    pub change: DriftChange,
    /// Parts since the change began, as estimated.
    pub change_parts_ago: u64,
}

/// How a machine's parts moved away from its fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftChange {
    /// The distances ramp up: wear (a nozzle, a projector, a recoater), recalibration due.
    Gradual,
    /// The distances jump: another machine, a substitution, a repair or a new build plate.
    Sudden,
}

impl DriftChange {
    /// Lower-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftChange::Gradual => "gradual",
            DriftChange::Sudden => "sudden",
        }
    }
}

/// One frame of a part seen in several: a USB microscope shows a few millimetres of a part, so
/// an inspector images it in several places and amfp votes over the ROIs of all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewReport {
    pub source: SourceInfo,
    /// ROIs of the primary model's vote cut from this frame.
    pub rois: usize,
    /// Why the frame was left out of the vote (too dark, no part in view...), absent when used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}
