//! The fingerprint gallery: which machine a part's embedding is near, and whether it is near
//! enough to name it.
//!
//! A SoftMax vote always names one of the machines a model was trained on. The gallery
//! (docs/gallery.md) instead holds, per known machine, the mean embedding of its parts, plus
//! the shared whitening that turns a difference of embeddings into a Mahalanobis distance and
//! the thresholds calibrated on known parts. A part is named only when it is near a machine's
//! fingerprint; otherwise it is unknown, with the distance and the threshold to show why.
//!
//! The gallery is a file of its own beside the model (so machines can be enrolled without
//! changing the model's sha256) and names the model it belongs to; a gallery of another model
//! is refused.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

mod enroll;
mod request;
mod store;

pub use enroll::{
    EnrollError, Enrollment, MAX_CONFUSION, MIN_PARTS, PartEmbedding, RECOMMENDED_PARTS, Refused, confusion,
    small_n_offset,
};
pub use request::{EnrollRequest, Enrolled};
pub use store::{
    Audit, Committed, Document, HistoryEntry, NewMachine, Version, audit, commit, read_version, versions_dir,
};

use crate::config::GalleryChoice;
use crate::model::{EmbeddingSpec, Model, hex};

/// The gallery file format version this amfp reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a gallery cannot be used. Each message names the file, the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("cannot read gallery {path}: {source}; check --gallery or model.gallery in the configuration")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("gallery {path} is not an amfp gallery file: {detail} (docs/gallery.md)")]
    Format { path: PathBuf, detail: String },
    #[error("gallery {path} is invalid (docs/gallery.md):\n  - {}", .problems.join("\n  - "))]
    Invalid { path: PathBuf, problems: Vec<String> },
    #[error(
        "gallery {path} belongs to model {gallery_model} (sha256 {gallery_sha}), not to the loaded model {model} \
         (sha256 {model_sha}); use the gallery written for this model (beside it, named <model>.gallery.json) \
         or fit one with `python -m amfp_train.gallery`"
    )]
    WrongModel { path: PathBuf, gallery_model: String, gallery_sha: String, model: String, model_sha: String },
    /// `[trust]` names keys and the gallery is not signed by one of them.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(
        "model {model} has no embedding output, so gallery {path} cannot be used; export the model with one \
         (`python -m amfp_train.embedding`, docs/gallery.md) or run without a gallery (the vote alone)"
    )]
    NoEmbedding { path: PathBuf, model: String },
}

/// One machine of the gallery, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub label: String,
    /// Its process, when the gallery says.
    pub process: Option<String>,
    /// Parts its mean was made from.
    pub parts: u32,
    /// The small-N correction subtracted from the squared distances to it: a mean of few
    /// enrolled parts lies farther from its own parts than a fitted one (docs/gallery.md,
    /// "Enrollment"). 0 for fitted machines.
    pub offset: f64,
    /// Free text from whoever enrolled it (supplier, serial number).
    pub notes: Option<String>,
    /// How far its own parts lie from it when it was fitted or enrolled: the yardstick of
    /// drift monitoring (docs/drift.md). `None`: not recorded, the machine is not monitored.
    pub drift: Option<DriftReference>,
    /// Hex sha256 over the label, the mean, the offset and the drift reference: changes exactly
    /// when the machine is refitted or re-enrolled (drift monitoring starts again then).
    pub id: String,
}

/// The distribution of a machine's own parts' distances to its fingerprint when it was fitted
/// or enrolled (docs/drift.md): the natural log of the plain distance of a part judged on the
/// model's full ROI count, as mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftReference {
    /// Parts the reference was measured on.
    pub parts: u32,
    /// Mean of ln(distance).
    pub mean_log: f64,
    /// Standard deviation of ln(distance).
    pub sd_log: f64,
}

/// A loaded, checked gallery, ready to score part embeddings.
#[derive(Debug, Clone)]
pub struct Gallery {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Hex sha256 of the file: identifies the exact gallery in results.
    pub sha256: String,
    /// The gallery's version (docs/gallery.md).
    pub version: u32,
    /// The known machines, in file order.
    pub machines: Vec<Fingerprint>,
    /// Threshold on the relative distance of the nearest machine.
    pub threshold: f64,
    /// Threshold on the plain distance of the nearest machine.
    pub outlier_threshold: f64,
    /// Threshold on the relative distance to a claimed machine, calibrated for a stated false
    /// accept rate (docs/gallery.md, "Claims"); `threshold` when the file has none.
    pub claim_threshold: f64,
    /// The calibration record, as in the file (reported by `amfp model inspect`).
    pub calibration: serde_json::Value,
    /// The trusted key that signed the file, when `[trust]` requires signatures.
    pub signed_by: Option<crate::trust::Signer>,
    dim: usize,
    /// `W`, row-major D x D.
    whitening: Vec<f64>,
    /// `W_0`, row-major D x D.
    global_whitening: Vec<f64>,
    /// `W μ_k` per machine.
    whitened_means: Vec<Vec<f64>>,
    /// `W_0 μ_0`.
    whitened_global_mean: Vec<f64>,
}

/// An array as stored in the file: shape and base64 of little-endian float32 values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArrayFile {
    shape: Vec<usize>,
    f32le: String,
}

#[derive(Deserialize)]
struct ModelRefFile {
    name: String,
    sha256: String,
}

#[derive(Deserialize)]
struct EmbeddingFile {
    output: String,
    dim: usize,
}

#[derive(Deserialize)]
struct MachineFile {
    label: String,
    process: Option<String>,
    parts: u32,
    mean: ArrayFile,
    #[serde(default)]
    offset: f64,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    drift: Option<DriftReference>,
}

/// The fields amfp reads (docs/gallery.md); `format` is checked before, the rest (history,
/// created...) are for people and tools.
#[derive(Deserialize)]
struct GalleryFile {
    schema: u32,
    model: ModelRefFile,
    embedding: EmbeddingFile,
    version: u32,
    score: String,
    whitening: ArrayFile,
    global_mean: ArrayFile,
    global_whitening: ArrayFile,
    machines: Vec<MachineFile>,
    threshold: f64,
    outlier_threshold: f64,
    #[serde(default)]
    claim_threshold: Option<f64>,
    #[serde(default)]
    calibration: serde_json::Value,
}

/// The gallery path that goes with a model: `<model without .onnx>.gallery.json` beside it.
pub fn beside(model: &Path) -> PathBuf {
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".onnx").unwrap_or(&name);
    model.with_file_name(format!("{stem}.gallery.json"))
}

/// The gallery file `choice` names for `model`: the given path, none, or (`auto`) the one beside
/// the model when the model has an embedding output and the file exists.
pub fn chosen(choice: &GalleryChoice, model: &Model) -> Option<PathBuf> {
    match choice {
        GalleryChoice::Path(p) => Some(p.clone()),
        GalleryChoice::Off => None,
        GalleryChoice::Auto => {
            let path = beside(&model.path);
            (model.meta.embedding.is_some() && path.is_file()).then_some(path)
        }
    }
}

impl Gallery {
    /// Loads a gallery and checks that it belongs to `model`.
    pub fn load(path: &Path, model: &Model) -> Result<Self, GalleryError> {
        let bytes = std::fs::read(path).map_err(|source| GalleryError::Io { path: path.to_owned(), source })?;
        Self::from_bytes(path, &bytes, model)
    }

    /// As [`Gallery::load`], from the file's bytes (`path` is only reported). When the model was
    /// loaded under `[trust]` keys, the gallery must be signed by one of them too.
    pub fn from_bytes(path: &Path, bytes: &[u8], model: &Model) -> Result<Self, GalleryError> {
        let signed_by = model.trust().check("gallery", path, bytes)?;
        let mut gallery = Self::for_model(path, bytes, &model.meta.name, &model.sha256, model.meta.embedding.as_ref())?;
        gallery.signed_by = signed_by;
        Ok(gallery)
    }

    /// As [`Gallery::from_bytes`], for the model named `model` with file hash `model_sha256`
    /// and embedding output `spec`.
    pub fn for_model(
        path: &Path,
        bytes: &[u8],
        model: &str,
        model_sha256: &str,
        spec: Option<&EmbeddingSpec>,
    ) -> Result<Self, GalleryError> {
        let Some(spec) = spec else {
            return Err(GalleryError::NoEmbedding { path: path.to_owned(), model: model.to_string() });
        };
        let not_gallery = |detail: String| GalleryError::Format { path: path.to_owned(), detail };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| not_gallery(format!("not JSON ({e})")))?;
        // Checked first, so that any other JSON file is named as such rather than by its first missing field.
        if value.get("format").and_then(|f| f.as_str()) != Some("amfp-gallery") {
            return Err(not_gallery("its \"format\" is not \"amfp-gallery\"".into()));
        }
        let file: GalleryFile = serde_path_to_error::deserialize(value)
            .map_err(|e| not_gallery(format!("field {}: {}", e.path(), e.inner())))?;
        if file.model.sha256 != model_sha256 {
            return Err(GalleryError::WrongModel {
                path: path.to_owned(),
                gallery_model: file.model.name,
                gallery_sha: file.model.sha256,
                model: model.to_string(),
                model_sha: model_sha256.to_string(),
            });
        }
        let mut problems = Vec::new();
        if file.schema != SCHEMA_VERSION {
            problems
                .push(format!("schema is {}, but this amfp reads schema {SCHEMA_VERSION}: upgrade amfp", file.schema));
        }
        if file.score != "relative_mahalanobis" {
            problems.push(format!("score is {:?}; this amfp scores \"relative_mahalanobis\"", file.score));
        }
        let dim = spec.dim as usize;
        if file.embedding.dim != dim || file.embedding.output != spec.output {
            problems.push(format!(
                "embedding is {:?} with {} features, but the model's is {:?} with {dim}",
                file.embedding.output, file.embedding.dim, spec.output
            ));
        }
        if file.version == 0 {
            problems.push("version is 0; versions start at 1".into());
        }
        for (name, t) in [
            ("threshold", file.threshold),
            ("outlier_threshold", file.outlier_threshold),
            ("claim_threshold", file.claim_threshold.unwrap_or(0.0)),
        ] {
            if !t.is_finite() {
                problems.push(format!("{name} is not a finite number"));
            }
        }
        if file.outlier_threshold <= 0.0 {
            problems.push(format!(
                "outlier_threshold is {}; a squared distance threshold must be > 0",
                file.outlier_threshold
            ));
        }
        let mut array = |name: &str, a: &ArrayFile, shape: &[usize]| -> Vec<f64> {
            match decode(a, shape) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    Vec::new()
                }
            }
        };
        let whitening = array("whitening", &file.whitening, &[dim, dim]);
        let global_whitening = array("global_whitening", &file.global_whitening, &[dim, dim]);
        let global_mean = array("global_mean", &file.global_mean, &[dim]);
        let means: Vec<Vec<f64>> =
            file.machines.iter().map(|m| array(&format!("machine {:?} mean", m.label), &m.mean, &[dim])).collect();
        if file.machines.len() < 2 {
            problems.push(format!("it has {} machine(s); a gallery needs at least two", file.machines.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &file.machines {
            if m.label.trim().is_empty() {
                problems.push("a machine has an empty label".into());
            } else if !seen.insert(m.label.as_str()) {
                problems.push(format!("machine {:?} appears twice", m.label));
            }
            if m.parts == 0 {
                problems.push(format!("machine {:?} was made from 0 parts", m.label));
            }
            if !(m.offset.is_finite() && m.offset >= 0.0) {
                problems.push(format!("machine {:?} has offset {}; expected a number >= 0", m.label, m.offset));
            }
            if let Some(r) = &m.drift
                && !(r.parts >= 2 && r.mean_log.is_finite() && r.sd_log.is_finite() && r.sd_log > 0.0)
            {
                problems.push(format!(
                    "machine {:?} has drift reference {r:?}; expected parts >= 2, a finite mean_log and sd_log > 0",
                    m.label
                ));
            }
        }
        if !problems.is_empty() {
            return Err(GalleryError::Invalid { path: path.to_owned(), problems });
        }
        let whitened_means = means.iter().map(|m| mat_vec(&whitening, m, dim)).collect();
        let whitened_global_mean = mat_vec(&global_whitening, &global_mean, dim);
        Ok(Self {
            path: path.to_owned(),
            sha256: hex(&Sha256::digest(bytes)),
            version: file.version,
            signed_by: None,
            machines: file
                .machines
                .into_iter()
                .map(|m| Fingerprint {
                    id: machine_id(&m),
                    label: m.label,
                    process: m.process,
                    parts: m.parts,
                    offset: m.offset,
                    notes: m.notes,
                    drift: m.drift,
                })
                .collect(),
            threshold: file.threshold,
            outlier_threshold: file.outlier_threshold,
            claim_threshold: file.claim_threshold.unwrap_or(file.threshold),
            calibration: file.calibration,
            dim,
            whitening,
            global_whitening,
            whitened_means,
            whitened_global_mean,
        })
    }

    /// Starts the fingerprint of one part: add its ROIs' embedding rows with
    /// [`PartPrint::add`].
    pub fn part(&self) -> PartPrint<'_> {
        PartPrint { gallery: self, rois: Vec::new() }
    }

    /// `d_k` of a part whose whitened mean is `wz`: the squared distance to machine `k`'s
    /// fingerprint less its small-N offset.
    fn distance_to(&self, k: usize, wz: &[f64]) -> f64 {
        sq_dist(wz, &self.whitened_means[k]) - self.machines[k].offset
    }

    /// The distances of a part whose two whitened means are `wz` and `w0z`.
    fn distances(&self, wz: &[f64], w0z: &[f64]) -> Distances {
        let d0 = sq_dist(w0z, &self.whitened_global_mean);
        let mut ranking: Vec<(usize, f64)> = (0..self.machines.len()).map(|k| (k, self.distance_to(k, wz))).collect();
        ranking.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        Distances { ranking, d0 }
    }
}

/// Squared distances of a part to every machine (plain, nearest first) and to the fleet.
#[derive(Debug, Clone, PartialEq)]
struct Distances {
    /// `(machine, d_k)`, smallest first.
    ranking: Vec<(usize, f64)>,
    /// `d_0`.
    d0: f64,
}

/// The gallery's reading of one part.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// Index of the nearest machine in [`Gallery::machines`].
    pub nearest: usize,
    /// Its relative distance `r = d - d_0`.
    pub distance: f64,
    /// Its plain distance `d`.
    pub plain_distance: f64,
    /// The second-nearest machine and its relative distance.
    pub runner_up: (usize, f64),
    /// Machines by relative distance, nearest first: `(machine, r)`.
    pub ranking: Vec<(usize, f64)>,
    /// Whether the part is near enough to the nearest machine (both thresholds).
    pub known: bool,
    /// ROIs the embedding was averaged over.
    pub rois: usize,
    /// The plain distance projected to the model's full ROI count (drift monitoring,
    /// [`PartPrint::projected_distance`]); `plain_distance` from [`PartPrint::matched`], which
    /// does not know the count.
    pub projected_distance: f64,
}

impl Match {
    /// Whether the part supports a claim of machine `k` (docs/gallery.md, "Claims"): `k` is
    /// the nearest machine, within the outlier threshold, and within the claim threshold.
    pub fn supports_claim(&self, gallery: &Gallery, k: usize) -> bool {
        let Some(&(_, r)) = self.ranking.iter().find(|e| e.0 == k) else { return false };
        // d_k = r_k + d_0, and d_0 is the same for every machine.
        let d0 = self.plain_distance - self.distance;
        self.nearest == k && r + d0 <= gallery.outlier_threshold && r <= gallery.claim_threshold
    }

    /// Why a part is not named, when it is not (`None` when it is known).
    pub fn unknown_because(&self, gallery: &Gallery) -> Option<String> {
        let nearest = &gallery.machines[self.nearest].label;
        if self.plain_distance > gallery.outlier_threshold {
            Some(format!(
                "the surface is far from every known machine (distance {:.1} to the nearest, {nearest}, beyond the \
                 gallery's outlier threshold {:.1}): not like any surface this model was fitted on",
                self.plain_distance, gallery.outlier_threshold
            ))
        } else if self.distance > gallery.threshold {
            Some(format!(
                "no known machine's fingerprint is near enough: the nearest, {nearest}, is at distance {:.1}, beyond \
                 the threshold {:.1}",
                self.distance, gallery.threshold
            ))
        } else {
            None
        }
    }
}

/// One part's ROI embeddings, whitened as they arrive.
#[derive(Debug, Clone)]
pub struct PartPrint<'g> {
    gallery: &'g Gallery,
    /// Per ROI: `W e` and `W_0 e`.
    rois: Vec<(Vec<f64>, Vec<f64>)>,
}

impl PartPrint<'_> {
    /// Adds one ROI's embedding row.
    pub fn add(&mut self, row: &[f32]) {
        let g = self.gallery;
        assert_eq!(row.len(), g.dim, "an embedding row has the gallery's dimension");
        let e: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        self.rois.push((mat_vec(&g.whitening, &e, g.dim), mat_vec(&g.global_whitening, &e, g.dim)));
    }

    /// ROIs added so far.
    pub fn rois(&self) -> usize {
        self.rois.len()
    }

    /// The part's mean embedding whitened both ways, leaving out ROI `skip` (if any).
    fn means(&self, skip: Option<usize>) -> (Vec<f64>, Vec<f64>) {
        let d = self.gallery.dim;
        let (mut wz, mut w0z) = (vec![0.0; d], vec![0.0; d]);
        let mut n = 0.0;
        for (i, (a, b)) in self.rois.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            n += 1.0;
            for k in 0..d {
                wz[k] += a[k];
                w0z[k] += b[k];
            }
        }
        for v in wz.iter_mut().chain(w0z.iter_mut()) {
            *v /= n;
        }
        (wz, w0z)
    }

    /// Spread of the whitened ROI rows (`W e`, or `W_0 e` when `fleet`) around `mean`: the
    /// expected excess of a squared distance over a mean of n ROIs is this / n. Needs 2 ROIs.
    fn spread(&self, fleet: bool, mean: &[f64]) -> f64 {
        let ss: f64 = self.rois.iter().map(|r| sq_dist(if fleet { &r.1 } else { &r.0 }, mean)).sum();
        ss / (self.rois.len() as f64 - 1.0)
    }

    /// The plain distance `d_k` to machine `k` projected to `max_rois` ROIs: what drift
    /// monitoring follows (docs/drift.md), so that a part the vote stopped early on is measured
    /// on the scale of the reference's full-ROI parts. The part of a mean's excess (the ROIs'
    /// spread / n) that `max_rois` ROIs would average away is removed. Panics without ROIs.
    pub fn projected_distance(&self, k: usize, max_rois: usize) -> f64 {
        let n = self.rois.len();
        let (wz, _) = self.means(None);
        let d = self.gallery.distance_to(k, &wz);
        if n < 2 || n >= max_rois {
            return d;
        }
        d - self.spread(false, &wz) * (1.0 / n as f64 - 1.0 / max_rois as f64)
    }

    /// The gallery's reading of the part from the ROIs so far. Panics without ROIs.
    pub fn matched(&self) -> Match {
        assert!(!self.rois.is_empty(), "a part's fingerprint needs at least one ROI");
        let g = self.gallery;
        let (wz, w0z) = self.means(None);
        let dist = g.distances(&wz, &w0z);
        let ranking: Vec<(usize, f64)> = dist.ranking.iter().map(|&(k, d)| (k, d - dist.d0)).collect();
        let (nearest, plain) = dist.ranking[0];
        let distance = plain - dist.d0;
        let known = distance <= g.threshold && plain <= g.outlier_threshold;
        Match {
            nearest,
            distance,
            plain_distance: plain,
            runner_up: ranking[1],
            ranking,
            known,
            rois: self.rois.len(),
            projected_distance: plain,
        }
    }

    /// [`PartPrint::matched`] for a model that judges a part on up to `max_rois` ROIs, with
    /// the projected distance to the nearest machine.
    pub fn matched_for(&self, max_rois: usize) -> Match {
        let mut m = self.matched();
        m.projected_distance = self.projected_distance(m.nearest, max_rois);
        m
    }

    /// Whether more ROIs (up to `max_rois` in all) could plausibly change the verdict: the
    /// nearest machine, and each distance's side of its threshold. Each quantity `q` seen on
    /// `n` ROIs is projected to `max_rois` by removing the part of its expected excess that
    /// the extra ROIs would average away (a mean of `n` ROIs overshoots a squared distance by
    /// the ROIs' spread / `n`), and its standard error comes from the jackknife over the ROIs
    /// seen, scaled to the ROIs still to come as in the vote's sequential rule
    /// (docs/identify.md). Settled when every projected margin exceeds `z` standard errors.
    pub fn settled(&self, max_rois: usize, z: f64) -> bool {
        let n = self.rois.len();
        if n >= max_rois {
            return true;
        }
        if n < 3 {
            return false;
        }
        let g = self.gallery;
        let m = self.matched();
        let (k1, k2) = (m.nearest, m.runner_up.0);
        // The three quantities the verdict depends on, for a mean over all ROIs but `skip`.
        let quantities = |skip: Option<usize>| -> [f64; 3] {
            let (wz, w0z) = self.means(skip);
            let d0 = sq_dist(&w0z, &g.whitened_global_mean);
            let d1 = g.distance_to(k1, &wz);
            let d2 = g.distance_to(k2, &wz);
            [d1 - d0, d1, d2 - d1]
        };
        let now = quantities(None);
        let loo: Vec<[f64; 3]> = (0..n).map(|i| quantities(Some(i))).collect();
        let (wz, w0z) = self.means(None);
        let (v, v0) = (self.spread(false, &wz), self.spread(true, &w0z));
        let shrink = 1.0 / n as f64 - 1.0 / max_rois as f64;
        let projected = [now[0] - (v - v0) * shrink, now[1] - v * shrink, now[2]];
        let targets = [g.threshold, g.outlier_threshold, 0.0];
        let remaining = ((max_rois - n) as f64 / max_rois as f64).sqrt();
        (0..3).all(|q| {
            let mean = loo.iter().map(|l| l[q]).sum::<f64>() / n as f64;
            let se = ((n as f64 - 1.0) / n as f64 * loo.iter().map(|l| (l[q] - mean).powi(2)).sum::<f64>()).sqrt();
            (projected[q] - targets[q]).abs() > z * se * remaining
        })
    }
}

/// [`Fingerprint::id`].
fn machine_id(m: &MachineFile) -> String {
    let mut h = Sha256::new();
    for part in [m.label.as_str(), m.mean.f32le.as_str(), &m.offset.to_string(), &format!("{:?}", m.drift)] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

fn decode(a: &ArrayFile, shape: &[usize]) -> Result<Vec<f64>, String> {
    if a.shape != shape {
        return Err(format!("shape {:?}, expected {shape:?}", a.shape));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(a.f32le.as_bytes())
        .map_err(|e| format!("bad base64 ({e})"))?;
    let want: usize = shape.iter().product();
    if bytes.len() != want * 4 {
        return Err(format!("{} bytes of data, expected {} ({want} float32 values)", bytes.len(), want * 4));
    }
    let values: Vec<f64> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err("holds a value that is not a finite number".into());
    }
    Ok(values)
}

fn mat_vec(m: &[f64], v: &[f64], dim: usize) -> Vec<f64> {
    m.chunks_exact(dim).map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum()).collect()
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn array(shape: &[usize], values: &[f32]) -> serde_json::Value {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        serde_json::json!({"shape": shape, "f32le": base64::engine::general_purpose::STANDARD.encode(bytes)})
    }

    fn spec() -> EmbeddingSpec {
        EmbeddingSpec { output: "embedding".into(), dim: 2, kind: "pre-logits".into() }
    }

    /// Two machines at (0, 0) and (10, 0), identity whitening within machines, the fleet's
    /// whitening half as strong around (5, 0).
    pub(crate) fn file() -> serde_json::Value {
        serde_json::json!({
            "format": "amfp-gallery", "schema": 1,
            "model": {"name": "m", "sha256": "abc"},
            "embedding": {"output": "embedding", "dim": 2, "kind": "pre-logits"},
            "version": 1, "parent_sha256": null, "created": "2026-12-04T00:00:00Z", "history": [],
            "score": "relative_mahalanobis", "shrinkage": 0.1,
            "whitening": array(&[2, 2], &[1.0, 0.0, 0.0, 1.0]),
            "global_mean": array(&[2], &[5.0, 0.0]),
            "global_whitening": array(&[2, 2], &[0.2, 0.0, 0.0, 0.2]),
            "machines": [
                {"label": "A-1", "process": "FDM", "parts": 20, "mean": array(&[2], &[0.0, 0.0])},
                {"label": "B-1", "process": null, "parts": 20, "mean": array(&[2], &[10.0, 0.0])},
            ],
            "threshold": 2.0, "outlier_threshold": 9.0,
            "calibration": {"false_reject_target": 0.01},
        })
    }

    pub(crate) fn load(v: &serde_json::Value) -> Result<Gallery, GalleryError> {
        Gallery::for_model(Path::new("g.json"), v.to_string().as_bytes(), "m", "abc", Some(&spec()))
    }

    fn matched(g: &Gallery, rows: &[[f32; 2]]) -> Match {
        let mut p = g.part();
        for r in rows {
            p.add(r);
        }
        p.matched()
    }

    #[test]
    fn distances_are_relative_mahalanobis_and_both_thresholds_apply() {
        let g = load(&file()).unwrap();
        assert_eq!(
            g.machines[0],
            Fingerprint {
                label: "A-1".into(),
                process: Some("FDM".into()),
                parts: 20,
                offset: 0.0,
                notes: None,
                drift: None,
                id: g.machines[0].id.clone()
            }
        );
        // Mean of the two ROIs: (1, 0). d_A = 1, d_B = 81, d_0 = 0.04 * 16 = 0.64.
        let m = matched(&g, &[[0.0, 0.0], [2.0, 0.0]]);
        assert_eq!((m.nearest, m.rois), (0, 2));
        assert!((m.plain_distance - 1.0).abs() < 1e-9);
        assert!((m.distance - (1.0 - 0.64)).abs() < 1e-6, "{m:?}");
        assert_eq!(m.runner_up.0, 1);
        assert!((m.runner_up.1 - (81.0 - 0.64)).abs() < 1e-6);
        assert!(m.known && m.unknown_because(&g).is_none());
        // (0, 2): d_A = 4, d_0 = 0.04 * 29 = 1.16, r = 2.84 > 2: not near enough.
        let m = matched(&g, &[[0.0, 2.0]]);
        assert!(!m.known);
        assert!(m.unknown_because(&g).unwrap().contains("fingerprint is near enough"), "{:?}", m.unknown_because(&g));
        // (0, 30): both terms are huge and r = 900 - 0.04 * 925 = 863; the plain test names it.
        let m = matched(&g, &[[0.0, 30.0]]);
        assert!(!m.known);
        assert!(m.unknown_because(&g).unwrap().contains("far from every known machine"), "{:?}", m.unknown_because(&g));
    }

    #[test]
    fn a_gallery_of_another_model_or_without_an_embedding_is_refused() {
        let e = Gallery::for_model(Path::new("g.json"), file().to_string().as_bytes(), "m2", "def", Some(&spec()))
            .unwrap_err();
        assert!(matches!(e, GalleryError::WrongModel { .. }), "{e}");
        assert!(e.to_string().contains("sha256 abc") && e.to_string().contains("sha256 def"), "{e}");
        let e = Gallery::for_model(Path::new("g.json"), file().to_string().as_bytes(), "m", "abc", None).unwrap_err();
        assert!(e.to_string().contains("no embedding output"), "{e}");
    }

    #[test]
    fn every_problem_of_a_broken_gallery_is_named() {
        let mut v = file();
        v["schema"] = 2.into();
        v["machines"][1]["label"] = "A-1".into();
        v["whitening"] = array(&[2, 3], &[0.0; 6]);
        v["global_mean"]["f32le"] = "!!".into();
        v["outlier_threshold"] = (-1.0).into();
        let e = load(&v).unwrap_err();
        let GalleryError::Invalid { problems, .. } = &e else { panic!("{e}") };
        let text = problems.join("\n");
        for want in [
            "schema is 2",
            "\"A-1\" appears twice",
            "whitening: shape [2, 3]",
            "global_mean: bad base64",
            "outlier_threshold is -1",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        assert_eq!(problems.len(), 5, "{text}");

        let mut v = file();
        v["global_mean"] = array(&[2], &[f32::NAN, 0.0]);
        assert!(load(&v).unwrap_err().to_string().contains("not a finite number"));
        let mut v = file();
        v["format"] = "something".into();
        assert!(matches!(load(&v).unwrap_err(), GalleryError::Format { .. }));
        let mut v = file();
        v.as_object_mut().unwrap().remove("threshold");
        let e = load(&v).unwrap_err().to_string();
        assert!(e.contains("threshold"), "{e}");
        assert!(matches!(
            Gallery::for_model(Path::new("g.json"), b"{ not json", "m", "abc", Some(&spec())).unwrap_err(),
            GalleryError::Format { .. }
        ));
    }

    #[test]
    fn the_gallery_path_sits_beside_the_model() {
        assert_eq!(beside(Path::new("models/m.int8.onnx")), Path::new("models/m.int8.gallery.json"));
        assert_eq!(beside(Path::new("/x/model")), Path::new("/x/model.gallery.json"));
    }

    /// A part whose ROIs agree and sit far inside a machine's fingerprint settles after a few
    /// ROIs; one whose distance sits on the threshold, or whose ROIs scatter widely, does not.
    #[test]
    fn the_fingerprint_settles_only_when_more_rois_cannot_change_the_verdict() {
        let g = load(&file()).unwrap();
        let mut clear = g.part();
        for i in 0..4 {
            clear.add(&[0.1 * (i % 2) as f32, 0.05 * (i % 3) as f32]);
        }
        assert!(clear.settled(16, 3.0));
        assert!(!g.part().settled(16, 3.0));

        // ROIs scattered around (1.6, 0): r sits near the threshold 2 with a wide spread.
        let mut edge = g.part();
        for i in 0..6 {
            let x = if i % 2 == 0 { 0.1 } else { 3.1 };
            edge.add(&[x, 0.0]);
        }
        assert!(!edge.settled(16, 3.0));
        // With every ROI drawn it is settled whatever the distance.
        for _ in 0..10 {
            edge.add(&[1.6, 0.0]);
        }
        assert!(edge.settled(16, 3.0));
    }
}
