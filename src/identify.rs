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
use std::sync::Arc;
use std::time::Instant;

use crate::capture::Frame;
use crate::config::{GalleryChoice, Settings};
use crate::gallery::{Gallery, GalleryError, Match};
use crate::model::{InferenceError, LoadOptions, Model, ModelError};
use crate::optics::{self, ModelGeometry};
use crate::reject::{PixelSizeSource, Rejection};
use crate::result::{
    AttributeResult, Attribution, Candidate, ClaimCheck, ClaimStatus, EngineRef, EnvelopeReport, GalleryReport,
    Judgement, ModelRef, OpenSetMode, RoiUse, SourceInfo, Timing, Verdict, ViewReport,
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

/// A model or its gallery cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gallery(#[from] GalleryError),
}

/// Loads the models to judge with (see [`model_paths`]) and the primary model's fingerprint
/// gallery (`gallery`: the file beside the model when there is one, a given file, or none;
/// docs/gallery.md). Further models use the gallery beside them when there is one.
pub fn load_models(
    paths: &[PathBuf],
    batch: usize,
    load: &LoadOptions,
    gallery: &GalleryChoice,
) -> Result<(Vec<Model>, Vec<Option<Gallery>>), LoadError> {
    let mut models = Vec::with_capacity(paths.len());
    let mut galleries = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let model = Model::load_with(path, batch, load)?;
        log::info!(
            "model {} ({}, {} labels, sha256 {}) on {}",
            model.meta.name,
            path.display(),
            model.meta.labels.len(),
            &model.sha256[..12],
            model.engine
        );
        if let Some(why) = &model.fallback {
            log::warn!("model {} runs on tract, the slower engine: {why}", model.meta.name);
        }
        let choice = if i == 0 { gallery } else { &GalleryChoice::Auto };
        let loaded = crate::gallery::chosen(choice, &model).map(|p| Gallery::load(&p, &model)).transpose()?;
        match &loaded {
            Some(g) => log::info!(
                "gallery {} (version {}, {} machines, sha256 {}): verdicts by distance to each machine's fingerprint",
                g.path.display(),
                g.version,
                g.machines.len(),
                &g.sha256[..12]
            ),
            None if matches!(gallery, GalleryChoice::Off) && i == 0 => {
                log::info!(
                    "model {}: no gallery (model.gallery = \"off\"): verdicts by the vote alone",
                    model.meta.name
                )
            }
            None => log::warn!(
                "model {} has no fingerprint gallery ({} {}): verdicts by the vote alone, which names a known machine \
                 even for surfaces the model has never seen (docs/gallery.md)",
                model.meta.name,
                if model.meta.embedding.is_some() { "none at" } else { "it has no embedding output; looked for" },
                crate::gallery::beside(path).display()
            ),
        }
        models.push(model);
        galleries.push(loaded);
    }
    Ok((models, galleries))
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
    /// Report each part's mean embedding in its judgement (`amfp identify --with-embedding`).
    pub with_embedding: bool,
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
            with_embedding: false,
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
    /// Embedding rows, `corners.len()` x the model's embedding width (empty without one).
    pub embeddings: Vec<f32>,
    /// [channels, roi, roi].
    pub roi_shape: [usize; 3],
    pub classes: usize,
}

/// The loaded models and options: judges frames.
#[derive(Debug)]
pub struct Identifier {
    models: Vec<Model>,
    /// Each model's fingerprint gallery, when it has one. Behind a lock so that a new gallery
    /// version can replace the old while parts are judged ([`Identifier::replace_gallery`]);
    /// each part is judged with the galleries current when it started.
    galleries: std::sync::RwLock<Vec<Option<Arc<Gallery>>>>,
    options: IdentifyOptions,
}

/// How much of a part is judged: early stopping, and whether its mean embedding is reported.
#[derive(Debug, Clone, Copy)]
struct Effort {
    stop: StopRule,
    with_embedding: bool,
}

/// Why a frame cannot be judged by a model, and what is known of its envelope.
struct Refusal {
    rejection: Rejection,
    envelope: Option<EnvelopeReport>,
}

/// One model's run over a frame (its outcome and costs) before it becomes part of an Attribution.
struct ModelRun {
    outcome: Result<Reading, Rejection>,
    max_rois: usize,
    envelope: Option<EnvelopeReport>,
    preprocess_ms: f64,
    inference_ms: f64,
    record: Option<RoiRecord>,
    /// Each frame's share of the vote, or why it was left out.
    views: Vec<ViewReport>,
    /// The part's mean embedding, when asked for and the model has one.
    embedding: Option<Vec<f32>>,
}

/// What a model made of a part it could judge: the vote, the gallery's reading (gallery mode)
/// and the label it names, or why it names none.
struct Reading {
    tally: Tally,
    matched: Option<Match>,
    label: Result<String, String>,
}

impl Identifier {
    /// An identifier over `models` (the first is the primary; at least one), judging by the
    /// vote alone.
    pub fn new(models: Vec<Model>, options: IdentifyOptions) -> Self {
        let galleries = vec![None; models.len()];
        Self::with_galleries(models, galleries, options)
    }

    /// An identifier over `models`, each judging by the distance to its gallery's fingerprints
    /// when it has one (`galleries[i]` for `models[i]`), by the vote otherwise.
    pub fn with_galleries(models: Vec<Model>, galleries: Vec<Option<Gallery>>, options: IdentifyOptions) -> Self {
        assert!(!models.is_empty(), "an identifier needs at least one model");
        assert_eq!(models.len(), galleries.len(), "one gallery slot per model");
        let galleries = std::sync::RwLock::new(galleries.into_iter().map(|g| g.map(Arc::new)).collect());
        Self { models, galleries, options }
    }

    /// The galleries as they are now, one slot per model.
    fn galleries(&self) -> Vec<Option<Arc<Gallery>>> {
        self.galleries.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The primary model's gallery as it is now.
    pub fn gallery(&self) -> Option<Arc<Gallery>> {
        self.galleries().swap_remove(0)
    }

    /// Loads the gallery at `path` for the primary model and, when it loads and belongs to the
    /// model, makes it the one parts are judged with from the next part on (a new version after
    /// an enrollment, without a restart). On any error the current gallery stays.
    pub fn replace_gallery(&self, path: &Path) -> Result<Arc<Gallery>, GalleryError> {
        let gallery = Arc::new(Gallery::load(path, &self.models[0])?);
        self.galleries.write().unwrap_or_else(|e| e.into_inner())[0] = Some(gallery.clone());
        Ok(gallery)
    }

    /// The loaded models, primary first.
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// The labels a claim may name: the primary gallery's machines, else the primary model's labels.
    pub fn known_labels(&self) -> Vec<String> {
        match self.gallery() {
            Some(g) => g.machines.iter().map(|m| m.label.clone()).collect(),
            None => self.models[0].meta.labels.clone(),
        }
    }

    /// Refuses a claim of a machine that amfp does not know: it could never be confirmed, and a
    /// mistyped label must not pass as "consistent" (docs/identify.md, "Claims").
    pub fn check_claim(&self, claim: &str) -> Result<(), String> {
        let known = self.known_labels();
        if known.iter().any(|l| l == claim) {
            return Ok(());
        }
        let (what, fix) = match self.gallery() {
            Some(g) => {
                (format!("the gallery {} (version {})", g.path.display(), g.version), "enroll it first (amfp enroll)")
            }
            None => (format!("model {}", self.models[0].meta.name), "check the label"),
        };
        Err(format!("claimed machine {claim:?} is not known to {what}; {fix}; known: {}", known.join(", ")))
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
        let effort = Effort { stop: self.options.stop, with_embedding: self.options.with_embedding };
        self.identify_with(views, record, effort)
    }

    /// Judges one part to enroll its machine: every ROI (no early stopping, whatever the options
    /// say: a fingerprint is made once and used for every verdict after it) and the part's mean
    /// embedding in the judgement.
    pub fn identify_for_enrollment(
        &self,
        inspection: &Inspection,
        record: bool,
    ) -> Result<(Attribution, Option<RoiRecord>), InferenceError> {
        let effort = Effort { stop: StopRule::Off, with_embedding: true };
        self.identify_with(std::slice::from_ref(inspection), record, effort)
    }

    fn identify_with(
        &self,
        views: &[Inspection],
        record: bool,
        effort: Effort,
    ) -> Result<(Attribution, Option<RoiRecord>), InferenceError> {
        assert!(!views.is_empty(), "a part needs at least one frame");
        let start = Instant::now();
        let exposures: Vec<Result<(), Rejection>> = views.iter().map(|v| optics::check_exposure(v.frame)).collect();
        let galleries = self.galleries();
        let mut judgements = Vec::with_capacity(self.models.len());
        for (i, model) in self.models.iter().enumerate() {
            judgements.push(self.judge(model, galleries[i].as_deref(), views, &exposures, record && i == 0, effort)?);
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
        let attributes =
            (1..self.models.len()).zip(&others).map(|(i, j)| self.attribute(i, galleries[i].as_deref(), j)).collect();
        let head = self.attribute(0, galleries[0].as_deref(), &primary);
        let first = &views[0];
        let claim = first.claim.map(|c| claim_check(&self.models[0], galleries[0].as_deref(), c, &primary.outcome));
        let source = primary.views.iter().position(|v| v.reason.is_none()).map_or(&first.source, |i| &views[i].source);
        let attribution = Attribution {
            id: ulid::Ulid::generate().to_string(),
            device: self.options.device.clone(),
            time: jiff::Timestamp::now()
                .round(jiff::Unit::Millisecond)
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .to_string(),
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
            drift: None,
            enrollment: None,
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
        let (image, envelope) = optics::fit_to_model(frame, inspection.pixel, &geometry).map_err(|rejection| {
            Box::new(Refusal { rejection, envelope: Some(refused_envelope(inspection, frame, &geometry)) })
        })?;
        let mut report = envelope_report(&envelope);
        match PartSurface::new(
            image,
            meta.roi_px,
            meta.min_foreground,
            self.options.mask,
            self.options.min_surface_rois,
        ) {
            Ok(surface) => Ok((surface, report)),
            Err(rejection) => {
                report.ok = false;
                Err(Box::new(Refusal { rejection, envelope: Some(report) }))
            }
        }
    }

    /// Envelope, part mask, ROIs, the vote and the gallery's reading of one model over the
    /// frames of one part.
    fn judge(
        &self,
        model: &Model,
        gallery: Option<&Gallery>,
        views: &[Inspection],
        exposures: &[Result<(), Rejection>],
        record: bool,
        effort: Effort,
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
                embedding: None,
            });
        };
        let order = interleave_rois(&surfaces, max_rois, self.options.seed);
        let roi_len = model.roi_len();
        let classes = meta.labels.len();
        let batch = model.batch();
        // In gallery mode the vote only has to settle its leader: the gallery says known or not.
        let vote_threshold = if gallery.is_some() { 0.0 } else { meta.unknown_threshold as f64 };
        let rule = VoteRule {
            max_rois,
            stop: effort.stop,
            min_rois: self.options.min_rois,
            z: self.options.z,
            unknown_threshold: vote_threshold,
        };
        let mut ballot = Ballot::new(classes);
        let mut print = gallery.map(Gallery::part);
        let dim = model.embedding_dim().unwrap_or(0);
        let mut embedding_sum = (effort.with_embedding && dim > 0).then(|| vec![0.0f64; dim]);
        let mut input = vec![0.0f32; batch * roi_len];
        let mut rec = record.then(|| RoiRecord {
            corners: Vec::new(),
            views: Vec::new(),
            inputs: Vec::new(),
            probabilities: Vec::new(),
            embeddings: Vec::new(),
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
            let mut out = model.run(&input)?;
            model.softmax_rows(&mut out.logits);
            let probs = out.logits;
            inference_ms += elapsed_ms(t);
            let mut rows = out.embeddings.chunks(dim.max(1));
            for (k, row) in probs.chunks(classes).take(chunk.len()).enumerate() {
                ballot.add(row);
                let embedding = rows.next().unwrap_or_default();
                if let Some(p) = print.as_mut() {
                    p.add(embedding);
                }
                if let Some(sum) = embedding_sum.as_mut() {
                    sum.iter_mut().zip(embedding).for_each(|(s, &v)| *s += v as f64);
                }
                let (s, corner) = chunk[k];
                let view = surfaces[s].0;
                view_reports[view].rois += 1;
                if let Some(r) = rec.as_mut() {
                    r.corners.push(corner);
                    r.views.push(view as u32);
                    r.inputs.extend_from_slice(&input[k * roi_len..(k + 1) * roi_len]);
                    r.probabilities.extend_from_slice(row);
                    r.embeddings.extend_from_slice(embedding);
                }
            }
            if ballot.settled(&rule) && print.as_ref().is_none_or(|p| p.settled(max_rois, rule.z)) {
                break;
            }
        }
        let tally = ballot.tally(rule.unknown_threshold);
        let used = tally.used;
        let reading = match (gallery, print) {
            (Some(g), Some(p)) => gallery_reading(model, g, tally, p.matched_for(max_rois)),
            _ => vote_reading(model, tally),
        };
        // An identified part's process may need larger samples than this model's (docs/envelope.md).
        let process = reading.label.as_ref().ok().and_then(|l| process_of(model, gallery, l));
        let outcome = match process {
            Some(process) => optics::check_process_sample(&geometry, &process).map(|()| reading),
            None => Ok(reading),
        };
        report.ok &= outcome.is_ok();
        let embedding = embedding_sum.map(|s| s.iter().map(|v| (v / used.max(1) as f64) as f32).collect());
        Ok(ModelRun {
            outcome,
            max_rois,
            envelope: Some(report),
            preprocess_ms,
            inference_ms,
            record: rec,
            views: view_reports,
            embedding,
        })
    }

    /// One model's judgement as reported (`index` into the models).
    fn attribute(&self, index: usize, gallery: Option<&Gallery>, j: &ModelRun) -> AttributeResult {
        let model = &self.models[index];
        let meta = &model.meta;
        let model_ref = ModelRef {
            name: meta.name.clone(),
            task: meta.task.clone(),
            sha256: model.sha256.clone(),
            engine: Some(EngineRef { name: model.engine.name, version: model.engine.version.clone() }),
        };
        let judgement = match &j.outcome {
            Err(rejection) => Judgement {
                verdict: Verdict::Rejected,
                reason: Some(rejection.to_string()),
                reason_code: Some(rejection.code().into()),
                label: None,
                process: None,
                score: None,
                margin: None,
                top: Vec::new(),
                rois: None,
                mode: None,
                gallery: None,
                embedding: None,
            },
            Ok(reading) => {
                let tally = &reading.tally;
                let top = tally
                    .ranking
                    .iter()
                    .take(self.options.top_k)
                    .map(|&(i, score)| Candidate { label: meta.labels[i].clone(), score: round4(score) })
                    .collect();
                let (verdict, label, reason) = match &reading.label {
                    Ok(label) => (Verdict::Identified, Some(label.clone()), None),
                    Err(why) => (Verdict::Unknown, None, Some(why.clone())),
                };
                let process = label.as_deref().and_then(|l| process_of(model, gallery, l));
                let report = gallery.zip(reading.matched.as_ref()).map(|(g, m)| GalleryReport {
                    distance: round4(m.distance),
                    plain_distance: round4(m.plain_distance),
                    threshold: round4(g.threshold),
                    outlier_threshold: round4(g.outlier_threshold),
                    nearest: g.machines[m.nearest].label.clone(),
                    runner_up: g.machines[m.runner_up.0].label.clone(),
                    runner_up_distance: round4(m.runner_up.1),
                    version: g.version,
                    sha256: g.sha256.clone(),
                    projected_distance: round4(m.projected_distance),
                });
                Judgement {
                    verdict,
                    reason,
                    reason_code: None,
                    label,
                    process,
                    score: Some(round4(tally.score)),
                    margin: Some(round4(tally.margin)),
                    top,
                    rois: Some(RoiUse { used: tally.used, max: j.max_rois, early_stop: tally.used < j.max_rois }),
                    mode: Some(if report.is_some() { OpenSetMode::Gallery } else { OpenSetMode::Vote }),
                    gallery: report,
                    embedding: j.embedding.clone(),
                }
            }
        };
        AttributeResult { model: model_ref, judgement }
    }
}

/// The vote's reading (the paper's mode, for models without a gallery): the leader is named
/// when its share reaches the model's `amfp.unknown_threshold`.
fn vote_reading(model: &Model, tally: Tally) -> Reading {
    let meta = &model.meta;
    let leader = &meta.labels[tally.leader];
    let label = if tally.known {
        Ok(leader.clone())
    } else {
        Err(format!(
            "no known {} fits: the nearest, {leader}, has {:.2} of the vote, under the model's threshold {:.2}",
            meta.task, tally.score, meta.unknown_threshold
        ))
    };
    Reading { tally, matched: None, label }
}

/// The gallery's reading: the nearest machine is named when the part is near enough to its
/// fingerprint and the vote does not name another of the model's labels (docs/gallery.md).
fn gallery_reading(model: &Model, gallery: &Gallery, tally: Tally, matched: Match) -> Reading {
    let labels = &model.meta.labels;
    let nearest = &gallery.machines[matched.nearest].label;
    let voted = &labels[tally.leader];
    let label = if let Some(why) = matched.unknown_because(gallery) {
        Err(why)
    } else if voted != nearest && labels.contains(nearest) {
        Err(format!(
            "the evidence disagrees with itself: the nearest fingerprint is {nearest} (distance {:.1}), but the vote \
             names {voted} ({:.2} of it)",
            matched.distance, tally.score
        ))
    } else {
        Ok(nearest.clone())
    };
    Reading { tally, matched: Some(matched), label }
}

/// The process of a label: the gallery's record of it, else the model's.
fn process_of(model: &Model, gallery: Option<&Gallery>, label: &str) -> Option<String> {
    gallery
        .and_then(|g| g.machines.iter().find(|m| m.label == label))
        .and_then(|m| m.process.clone())
        .or_else(|| model.meta.process_of(label).map(String::from))
}

/// Whether the evidence is consistent with a claimed label (docs/identify.md, "Claims"). With a
/// gallery the claimed machine's fingerprint is the reference: its distance is reported.
fn claim_check(
    model: &Model,
    gallery: Option<&Gallery>,
    claim: &str,
    outcome: &Result<Reading, Rejection>,
) -> ClaimCheck {
    let labels = &model.meta.labels;
    let index = labels.iter().position(|l| l == claim);
    let machine = gallery.and_then(|g| g.machines.iter().position(|m| m.label == claim));
    let known_label = match gallery {
        Some(_) => machine.is_some(),
        None => index.is_some(),
    };
    let (status, score, distance) = match outcome {
        Err(_) => (ClaimStatus::Unjudged, None, None),
        Ok(reading) => {
            let tally = &reading.tally;
            let score = index.and_then(|i| tally.ranking.iter().find(|r| r.0 == i)).map(|r| round4(r.1));
            let distance = reading
                .matched
                .as_ref()
                .zip(machine)
                .and_then(|(m, k)| m.ranking.iter().find(|r| r.0 == k))
                .map(|r| round4(r.1));
            // With a gallery the claim is its own 1:1 test at the claim threshold; without one it
            // follows the vote's verdict.
            let supported = match (gallery, &reading.matched, machine) {
                (Some(g), Some(m), Some(k)) => Some(m.supports_claim(g, k)),
                _ => None,
            };
            let status = match (&reading.label, supported) {
                (_, Some(true)) => ClaimStatus::Confirmed,
                (Ok(label), _) if label != claim => ClaimStatus::Contradicted,
                (Ok(_), None) => ClaimStatus::Confirmed,
                _ => ClaimStatus::Unconfirmed,
            };
            (status, score, distance)
        }
    };
    let consistent = match status {
        ClaimStatus::Unjudged => None,
        ClaimStatus::Confirmed => Some(true),
        ClaimStatus::Contradicted => Some(false),
        // Unknown part: a known machine is not supported, but a source amfp does not know fits.
        ClaimStatus::Unconfirmed => Some(!known_label),
    };
    ClaimCheck { label: claim.to_string(), consistent, status, known_label, score, distance }
}

/// The order in which ROIs are voted over the usable frames of one part: `(index into
/// surfaces, corner)`, one ROI from each frame in turn, `max_rois` in all. Each frame's corners
/// are drawn with their own seed (the first frame's is `seed` itself, so one frame draws what
/// it always drew).
fn interleave_rois(surfaces: &[(usize, PartSurface)], max_rois: usize, seed: u64) -> Vec<(usize, (u32, u32))> {
    let per_frame = max_rois.div_ceil(surfaces.len().max(1));
    let drawn: Vec<Vec<(u32, u32)>> =
        surfaces.iter().map(|(view, s)| s.sample(per_frame, view_seed(seed, *view))).collect();
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
