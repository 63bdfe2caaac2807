//! The identification pipeline: from a frame to an [`Attribution`].
//!
//! ```text
//! frame ─► exposure ─► envelope (resample) ─► part mask ─► seeded ROIs ─► model batches ─► vote
//! ```
//! The one-shot CLI, the daemon and the tests all call [`Identifier::identify`]; nothing of it
//! is written twice. Several models may judge the same part (machine, build tray position...):
//! the first is the primary, whose verdict is the Attribution's; the others are reported under
//! `attributes`. See docs/identify.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::capture::Frame;
use crate::config::Settings;
use crate::model::{InferenceError, Model};
use crate::optics::{self, ModelGeometry};
use crate::reject::{PixelSizeSource, Rejection};
use crate::result::{
    AttributeResult, Attribution, Candidate, ClaimCheck, ClaimStatus, EnvelopeReport, Judgement, ModelRef, RoiUse,
    SourceInfo, Timing, Verdict, ViewReport,
};
use crate::roi::{MaskMode, PartSurface};
use crate::vote::{Ballot, StopRule, Tally, VoteRule};

/// File name of the bundled reference model.
pub const BUNDLED_MODEL: &str = "amfp-synth-v3.int8.onnx";

/// Where the bundled model is looked for when none is configured: `../share/amfp/models/`
/// beside the binary (the Debian package), then `models/` in the working directory (a checkout).
pub fn bundled_model_path() -> PathBuf {
    let beside_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(|p| p.join("share/amfp/models").join(BUNDLED_MODEL)));
    match beside_binary {
        Some(p) if p.is_file() => p,
        _ => Path::new("models").join(BUNDLED_MODEL),
    }
}

/// The models to load, primary first: `flags` (`--model`), else `model.path` and `model.extra`
/// from the configuration, else the bundled model.
pub fn model_paths(settings: &Settings, flags: &[PathBuf]) -> Vec<PathBuf> {
    if !flags.is_empty() {
        return flags.to_vec();
    }
    let primary = settings.model.path.clone().unwrap_or_else(bundled_model_path);
    std::iter::once(primary).chain(settings.model.extra.iter().cloned()).collect()
}

/// How the pipeline draws ROIs and votes, from the configuration and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentifyOptions {
    /// ROIs in the full vote; `None`: each model's `amfp.votes`.
    pub rois: Option<usize>,
    /// ROIs per inference batch and early-stopping step.
    pub batch: usize,
    pub stop: StopRule,
    pub min_rois: usize,
    pub z: f64,
    pub seed: u64,
    pub top_k: usize,
    pub min_surface_rois: f64,
    pub mask: MaskMode,
    /// Device id reported in results.
    pub device: String,
}

impl IdentifyOptions {
    /// The options a configuration gives.
    pub fn from_settings(s: &Settings) -> Self {
        let i = &s.identify;
        Self {
            rois: i.rois,
            batch: i.batch,
            stop: i.early_stop,
            min_rois: i.min_rois,
            z: i.z,
            seed: i.seed,
            top_k: i.top_k,
            min_surface_rois: i.min_surface_rois,
            mask: s.camera.mask,
            device: s.device.id.clone().unwrap_or_else(host_name),
        }
    }
}

impl Default for IdentifyOptions {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}

/// The host name, the default device id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "amfp".into())
}

/// The pixel size to judge a frame at: `--pixel-um` wins, then the file's recorded resolution,
/// then the configured camera.
pub fn resolve_pixel_size(cli: Option<f64>, frame: &Frame, config: Option<f64>) -> Option<(f64, PixelSizeSource)> {
    cli.map(|v| (v, PixelSizeSource::Cli))
        .or(frame.pixel_um.map(|v| (v, PixelSizeSource::File)))
        .or(config.map(|v| (v, PixelSizeSource::Config)))
}

/// One part to judge.
#[derive(Debug, Clone)]
pub struct Inspection<'a> {
    pub frame: &'a Frame,
    /// Pixel size and where it came from (see [`resolve_pixel_size`]).
    pub pixel: Option<(f64, PixelSizeSource)>,
    pub source: SourceInfo,
    /// A claimed source label to check the evidence against.
    pub claim: Option<&'a str>,
    /// Milliseconds spent getting the frame (decode, capture), for the timing report.
    pub capture_ms: f64,
}

/// The exact ROIs the primary model voted on and what it said about each: for parity checks
/// against other runtimes and for looking at the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiRecord {
    /// Top-left corners (x, y) in the frame at the model's pixel size.
    pub corners: Vec<(u32, u32)>,
    /// Which frame (index into the views judged) each ROI was cut from: all 0 for one frame.
    pub views: Vec<u32>,
    /// Normalised model inputs, `corners.len()` x channels x roi x roi.
    pub inputs: Vec<f32>,
    /// SoftMax rows, `corners.len()` x classes.
    pub probabilities: Vec<f32>,
    /// [channels, roi, roi].
    pub roi_shape: [usize; 3],
    pub classes: usize,
}

/// The loaded models and options: judges frames.
#[derive(Debug)]
pub struct Identifier {
    models: Vec<Model>,
    options: IdentifyOptions,
}

/// Why a frame cannot be judged by a model, and what is known of its envelope.
struct Refusal {
    rejection: Rejection,
    envelope: Option<EnvelopeReport>,
}

/// One model's run over a frame (its outcome and costs) before it becomes part of an Attribution.
struct ModelRun {
    outcome: Result<Tally, Rejection>,
    max_rois: usize,
    envelope: Option<EnvelopeReport>,
    preprocess_ms: f64,
    inference_ms: f64,
    record: Option<RoiRecord>,
    /// Each frame's share of the vote, or why it was left out.
    views: Vec<ViewReport>,
}

impl Identifier {
    /// An identifier over `models` (the first is the primary; at least one).
    pub fn new(models: Vec<Model>, options: IdentifyOptions) -> Self {
        assert!(!models.is_empty(), "an identifier needs at least one model");
        Self { models, options }
    }

    /// The loaded models, primary first.
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    pub fn options(&self) -> &IdentifyOptions {
        &self.options
    }

    /// Judges one part.
    pub fn identify(&self, inspection: &Inspection) -> Result<Attribution, InferenceError> {
        Ok(self.identify_recorded(inspection, false)?.0)
    }

    /// Judges one part, and with `record` also returns the primary model's ROIs and probabilities.
    pub fn identify_recorded(
        &self,
        inspection: &Inspection,
        record: bool,
    ) -> Result<(Attribution, Option<RoiRecord>), InferenceError> {
        self.identify_views(std::slice::from_ref(inspection), record)
    }

    /// Judges one part seen in several frames (`views`, at least one): each frame goes through
    /// the exposure check, the envelope and the part mask on its own; the ROIs are drawn from
    /// every usable frame in turn (frame 1, 2, 3, 1, 2, 3...) into one vote, so early stopping
    /// still ends the vote as soon as it is settled. A frame that cannot be used is left out
    /// and reported under `views`; the part is rejected only when no frame can be used. With
    /// one frame this is exactly [`Identifier::identify_recorded`]. The claim and the source
    /// are the first frame's.
    pub fn identify_views(
        &self,
        views: &[Inspection],
        record: bool,
    ) -> Result<(Attribution, Option<RoiRecord>), InferenceError> {
        assert!(!views.is_empty(), "a part needs at least one frame");
        let start = Instant::now();
        let exposures: Vec<Result<(), Rejection>> = views.iter().map(|v| optics::check_exposure(v.frame)).collect();
        let mut judgements = Vec::with_capacity(self.models.len());
        for (i, model) in self.models.iter().enumerate() {
            judgements.push(self.judge(model, views, &exposures, record && i == 0)?);
        }
        let mut judgements = judgements.into_iter();
        let primary = judgements.next().expect("at least one model");
        let elapsed = elapsed_ms(start);
        let others: Vec<ModelRun> = judgements.collect();
        let capture_ms: f64 = views.iter().map(|v| v.capture_ms).sum();
        let timing = Timing {
            capture: capture_ms,
            preprocess: primary.preprocess_ms + others.iter().map(|j| j.preprocess_ms).sum::<f64>(),
            inference: primary.inference_ms + others.iter().map(|j| j.inference_ms).sum::<f64>(),
            total: capture_ms + elapsed,
        };
        let attributes = self.models[1..].iter().zip(&others).map(|(m, j)| self.attribute(m, j)).collect();
        let head = self.attribute(&self.models[0], &primary);
        let model = &self.models[0];
        let first = &views[0];
        let claim = first.claim.map(|c| claim_check(model, c, &primary.outcome));
        let source = primary.views.iter().position(|v| v.reason.is_none()).map_or(&first.source, |i| &views[i].source);
        let attribution = Attribution {
            id: ulid::Ulid::generate().to_string(),
            device: self.options.device.clone(),
            time: jiff::Timestamp::now().round(jiff::Unit::Millisecond).unwrap_or_else(|_| jiff::Timestamp::now()).to_string(),
            source: source.clone(),
            model: head.model,
            judgement: head.judgement,
            claim,
            envelope: primary.envelope,
            timing_ms: timing,
            reference: None,
            evidence: None,
            attributes,
            views: if views.len() > 1 { primary.views } else { Vec::new() },
        };
        Ok((attribution, primary.record))
    }

    fn max_rois(&self, model: &Model) -> usize {
        self.options.rois.unwrap_or(model.meta.votes as usize).max(1)
    }

    /// One frame made ready for a model: its exposure, the envelope (resampled to the model's
    /// pixel size) and the part surface to cut ROIs from; or why the frame cannot be judged.
    fn prepare(
        &self,
        model: &Model,
        inspection: &Inspection,
        exposure: &Result<(), Rejection>,
    ) -> Result<(PartSurface, EnvelopeReport), Box<Refusal>> {
        if let Err(rejection) = exposure {
            return Err(Box::new(Refusal { rejection: rejection.clone(), envelope: None }));
        }
        let meta = &model.meta;
        let geometry = ModelGeometry { pixel_um: meta.pixel_size_um, roi_px: meta.roi_px };
        let frame = inspection.frame;
        let (image, envelope) = optics::fit_to_model(frame, inspection.pixel, &geometry)
            .map_err(|rejection| Box::new(Refusal { rejection, envelope: Some(refused_envelope(inspection, frame, &geometry)) }))?;
        let mut report = envelope_report(&envelope);
        match PartSurface::new(image, meta.roi_px, meta.min_foreground, self.options.mask, self.options.min_surface_rois) {
            Ok(surface) => Ok((surface, report)),
            Err(rejection) => {
                report.ok = false;
                Err(Box::new(Refusal { rejection, envelope: Some(report) }))
            }
        }
    }

    /// Envelope, part mask, ROIs and the vote of one model over the frames of one part.
    fn judge(
        &self,
        model: &Model,
        views: &[Inspection],
        exposures: &[Result<(), Rejection>],
        record: bool,
    ) -> Result<ModelRun, InferenceError> {
        let t0 = Instant::now();
        let meta = &model.meta;
        let max_rois = self.max_rois(model);
        let geometry = ModelGeometry { pixel_um: meta.pixel_size_um, roi_px: meta.roi_px };
        let mut surfaces = Vec::with_capacity(views.len());
        let mut view_reports = Vec::with_capacity(views.len());
        let mut report = None;
        let mut refusal = None;
        for (inspection, exposure) in views.iter().zip(exposures) {
            let reason = match self.prepare(model, inspection, exposure) {
                Ok((surface, envelope)) => {
                    surfaces.push((view_reports.len(), surface));
                    report.get_or_insert(envelope);
                    None
                }
                Err(refused) => {
                    let reason = refused.rejection.to_string();
                    refusal.get_or_insert(refused);
                    Some(reason)
                }
            };
            view_reports.push(ViewReport { source: inspection.source.clone(), rois: 0, reason });
        }
        let Some(mut report) = report else {
            let refused = refusal.expect("no usable frame means a refused one");
            return Ok(ModelRun {
                outcome: Err(refused.rejection),
                max_rois,
                envelope: refused.envelope,
                // Frames refused by the exposure check cost nothing here (as before the envelope).
                preprocess_ms: if exposures.iter().all(|e| e.is_err()) { 0.0 } else { elapsed_ms(t0) },
                inference_ms: 0.0,
                record: None,
                views: view_reports,
            });
        };
        let order = interleave_rois(&surfaces, max_rois, self.options.seed);
        let roi_len = model.roi_len();
        let classes = meta.labels.len();
        let batch = model.batch();
        let rule = VoteRule {
            max_rois,
            stop: self.options.stop,
            min_rois: self.options.min_rois,
            z: self.options.z,
            unknown_threshold: meta.unknown_threshold as f64,
        };
        let mut ballot = Ballot::new(classes);
        let mut input = vec![0.0f32; batch * roi_len];
        let mut rec = record.then(|| RoiRecord {
            corners: Vec::new(),
            views: Vec::new(),
            inputs: Vec::new(),
            probabilities: Vec::new(),
            roi_shape: [meta.channels as usize, meta.roi_px as usize, meta.roi_px as usize],
            classes,
        });
        let mut preprocess_ms = elapsed_ms(t0);
        let mut inference_ms = 0.0;
        for chunk in order.chunks(batch) {
            let t = Instant::now();
            for (k, slot) in input.chunks_mut(roi_len).enumerate() {
                // A short last batch is padded with its first ROI; the padding's outputs are dropped.
                let (s, corner) = chunk.get(k).copied().unwrap_or(chunk[0]);
                surfaces[s].1.write_roi(corner, meta.mean, meta.std, meta.channels as usize, slot);
            }
            preprocess_ms += elapsed_ms(t);
            let t = Instant::now();
            let probs = model.probabilities(&input)?;
            inference_ms += elapsed_ms(t);
            for (k, row) in probs.chunks(classes).take(chunk.len()).enumerate() {
                ballot.add(row);
                let (s, corner) = chunk[k];
                let view = surfaces[s].0;
                view_reports[view].rois += 1;
                if let Some(r) = rec.as_mut() {
                    r.corners.push(corner);
                    r.views.push(view as u32);
                    r.inputs.extend_from_slice(&input[k * roi_len..(k + 1) * roi_len]);
                    r.probabilities.extend_from_slice(row);
                }
            }
            if ballot.settled(&rule) {
                break;
            }
        }
        let tally = ballot.tally(rule.unknown_threshold);
        // An identified part's process may need larger samples than this model's (docs/envelope.md).
        let outcome = match meta.process_of(&meta.labels[tally.leader]) {
            Some(process) if tally.known => optics::check_process_sample(&geometry, process).map(|()| tally),
            _ => Ok(tally),
        };
        report.ok &= outcome.is_ok();
        Ok(ModelRun {
            outcome,
            max_rois,
            envelope: Some(report),
            preprocess_ms,
            inference_ms,
            record: rec,
            views: view_reports,
        })
    }

    /// One model's judgement as reported.
    fn attribute(&self, model: &Model, j: &ModelRun) -> AttributeResult {
        let meta = &model.meta;
        let model_ref = ModelRef { name: meta.name.clone(), task: meta.task.clone(), sha256: model.sha256.clone() };
        match &j.outcome {
            Err(rejection) => AttributeResult {
                model: model_ref,
                judgement: Judgement {
                    verdict: Verdict::Rejected,
                    reason: Some(rejection.to_string()),
                    reason_code: Some(rejection.code().into()),
                    label: None,
                    process: None,
                    score: None,
                    margin: None,
                    top: Vec::new(),
                    rois: None,
                },
            },
            Ok(tally) => {
                let top = tally
                    .ranking
                    .iter()
                    .take(self.options.top_k)
                    .map(|&(i, score)| Candidate { label: meta.labels[i].clone(), score: round4(score) })
                    .collect();
                let leader = &meta.labels[tally.leader];
                let (verdict, label, reason) = if tally.known {
                    (Verdict::Identified, Some(leader.clone()), None)
                } else {
                    let why = format!(
                        "no known {} fits: the nearest, {leader}, has {:.2} of the vote, under the model's threshold {:.2}",
                        meta.task, tally.score, meta.unknown_threshold
                    );
                    (Verdict::Unknown, None, Some(why))
                };
                let process = label.as_deref().and_then(|l| meta.process_of(l)).map(String::from);
                AttributeResult {
                    model: model_ref,
                    judgement: Judgement {
                        verdict,
                        reason,
                        reason_code: None,
                        label,
                        process,
                        score: Some(round4(tally.score)),
                        margin: Some(round4(tally.margin)),
                        top,
                        rois: Some(RoiUse { used: tally.used, max: j.max_rois, early_stop: tally.used < j.max_rois }),
                    },
                }
            }
        }
    }
}

/// Whether the evidence is consistent with a claimed label (docs/identify.md, "Claims").
fn claim_check(model: &Model, claim: &str, outcome: &Result<Tally, Rejection>) -> ClaimCheck {
    let labels = &model.meta.labels;
    let index = labels.iter().position(|l| l == claim);
    let known_label = index.is_some();
    let (status, score) = match outcome {
        Err(_) => (ClaimStatus::Unjudged, None),
        Ok(tally) => {
            let score = index.and_then(|i| tally.ranking.iter().find(|r| r.0 == i)).map(|r| round4(r.1));
            let status = if !tally.known {
                ClaimStatus::Unconfirmed
            } else if Some(tally.leader) == index {
                ClaimStatus::Confirmed
            } else {
                ClaimStatus::Contradicted
            };
            (status, score)
        }
    };
    let consistent = match status {
        ClaimStatus::Unjudged => None,
        ClaimStatus::Confirmed => Some(true),
        ClaimStatus::Contradicted => Some(false),
        // Unknown part: the model cannot back a machine it knows, but a source it does not know fits.
        ClaimStatus::Unconfirmed => Some(!known_label),
    };
    ClaimCheck { label: claim.to_string(), consistent, status, known_label, score }
}

/// The order in which ROIs are voted over the usable frames of one part: `(index into
/// surfaces, corner)`, one ROI from each frame in turn, `max_rois` in all. Each frame's corners
/// are drawn with their own seed (the first frame's is `seed` itself, so one frame draws what
/// it always drew).
fn interleave_rois(surfaces: &[(usize, PartSurface)], max_rois: usize, seed: u64) -> Vec<(usize, (u32, u32))> {
    let per_frame = max_rois.div_ceil(surfaces.len().max(1));
    let drawn: Vec<Vec<(u32, u32)>> = surfaces.iter().map(|(view, s)| s.sample(per_frame, view_seed(seed, *view))).collect();
    (0..per_frame)
        .flat_map(|k| drawn.iter().enumerate().map(move |(s, corners)| (s, corners[k])))
        .take(max_rois)
        .collect()
}

/// The ROI seed of frame `view` of a part: `seed` for the first, a different one for each other.
fn view_seed(seed: u64, view: usize) -> u64 {
    seed.wrapping_add((view as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn envelope_report(e: &optics::Envelope) -> EnvelopeReport {
    EnvelopeReport {
        camera_pixel_um: Some(e.camera_pixel_um),
        pixel_source: Some(e.pixel_source),
        model_pixel_um: e.model_pixel_um,
        sample_mm: e.sample_mm,
        view_mm: Some(e.view_mm),
        resampled: e.resampled,
        ok: true,
    }
}

/// The envelope of a frame the optics refused: what is known of it.
fn refused_envelope(inspection: &Inspection, frame: &Frame, geometry: &ModelGeometry) -> EnvelopeReport {
    let camera = inspection.pixel.map(|p| p.0);
    EnvelopeReport {
        camera_pixel_um: camera,
        pixel_source: inspection.pixel.map(|p| p.1),
        model_pixel_um: geometry.pixel_um,
        sample_mm: geometry.sample_mm(),
        view_mm: camera.map(|um| [frame.width as f64 * um / 1000.0, frame.height as f64 * um / 1000.0]),
        resampled: false,
        ok: false,
    }
}

/// Milliseconds since `since`, to 0.01 ms: the resolution of the timings in results.
pub fn elapsed_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}
