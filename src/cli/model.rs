//! `amfp model inspect PATH`: what a model is, and what it needs of a camera.
//!
//! Loads the model exactly as `identify` does (so a model that inspects cleanly will run) and
//! prints its contract, its declared input and output, the optics it expects, and how it
//! tells known machines from unknown ones (its fingerprint gallery, or the vote alone).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use crate::config::GalleryChoice;
use crate::gallery::Gallery;
use crate::identify::bundled_model_path;
use crate::model::{EngineInfo, Model, ModelMetadata, Signature};

/// `amfp model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's metadata, input/output shapes and what it expects of a camera.
    ///
    /// Exit status: 0 when the model is usable, 1 when it is not (the reason on stderr).
    Inspect {
        /// The ONNX model (default: the bundled reference model).
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The fingerprint gallery to check against the model (default: model.gallery, else the
        /// one beside the model).
        #[arg(long, value_name = "PATH")]
        gallery: Option<PathBuf>,
    },
}

/// What a camera must deliver for a model, derived from its metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraNeeds {
    /// Largest usable pixel on the part, µm: coarser pixels do not resolve the texture.
    pub max_pixel_um: f64,
    /// The same as a flatbed scanner resolution: at least this many dpi.
    pub min_scanner_dpi: f64,
    /// Side of one ROI on the part, mm: the smallest field of view that holds one.
    pub sample_mm: f64,
    /// Least flat part surface in view for one vote, mm² (identify.min_surface_rois ROI areas).
    pub min_surface_mm2: f64,
}

impl CameraNeeds {
    /// Derives the needs from the metadata and the configured least surface.
    pub fn of(meta: &ModelMetadata, min_surface_rois: f64) -> Self {
        let sample_mm = meta.sample_mm();
        Self {
            max_pixel_um: meta.pixel_size_um,
            min_scanner_dpi: (25_400.0 / meta.pixel_size_um).ceil(),
            sample_mm,
            min_surface_mm2: min_surface_rois * sample_mm * sample_mm,
        }
    }
}

#[derive(Serialize)]
struct Inspection<'a> {
    path: String,
    sha256: &'a str,
    metadata: &'a ModelMetadata,
    signature: &'a Signature,
    /// The engine it runs on here, and why not onnxruntime when `auto` fell back to tract.
    engine: &'a EngineInfo,
    engine_fallback: Option<&'a str>,
    /// The trusted key that signed the model; null when `[trust]` names no keys.
    signed_by: Option<&'a str>,
    camera: CameraNeeds,
    /// The gallery the model judges with; null: the vote alone.
    gallery: Option<GalleryInfo<'a>>,
}

#[derive(Serialize)]
struct GalleryInfo<'a> {
    path: String,
    sha256: &'a str,
    version: u32,
    machines: Vec<&'a str>,
    threshold: f64,
    outlier_threshold: f64,
    claim_threshold: f64,
    calibration: &'a serde_json::Value,
    /// The trusted key that signed the gallery; null when `[trust]` names no keys.
    signed_by: Option<&'a str>,
}

/// Runs `amfp model ...`.
pub fn run(settings: &crate::config::Settings, cmd: ModelCommand) -> ExitCode {
    match cmd {
        ModelCommand::Inspect { path, json, gallery } => {
            let path = path.or_else(|| settings.model.path.clone()).unwrap_or_else(bundled_model_path);
            let model = match Model::load_with(&path, settings.identify.batch, &settings.load_options()) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let choice = gallery.map_or_else(|| settings.model.gallery.clone(), GalleryChoice::Path);
            let gallery = match crate::gallery::chosen(&choice, &model).map(|p| Gallery::load(&p, &model)).transpose() {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let camera = CameraNeeds::of(&model.meta, settings.identify.min_surface_rois);
            if json {
                let doc = Inspection {
                    path: path.display().to_string(),
                    sha256: &model.sha256,
                    metadata: &model.meta,
                    signature: &model.signature,
                    engine: &model.engine,
                    engine_fallback: model.fallback.as_deref(),
                    signed_by: model.signed_by.as_ref().map(|s| s.key_id.as_str()),
                    camera,
                    gallery: gallery.as_ref().map(|g| GalleryInfo {
                        path: g.path.display().to_string(),
                        sha256: &g.sha256,
                        version: g.version,
                        machines: g.machines.iter().map(|m| m.label.as_str()).collect(),
                        threshold: g.threshold,
                        outlier_threshold: g.outlier_threshold,
                        claim_threshold: g.claim_threshold,
                        calibration: &g.calibration,
                        signed_by: g.signed_by.as_ref().map(|s| s.key_id.as_str()),
                    }),
                };
                println!("{}", serde_json::to_string_pretty(&doc).expect("plain data serialises"));
            } else {
                print!("{}{}", text(&model, &camera), open_set_text(&model, gallery.as_ref()));
            }
            ExitCode::SUCCESS
        }
    }
}

fn text(model: &Model, camera: &CameraNeeds) -> String {
    let m = &model.meta;
    let sig = &model.signature;
    let processes = m
        .label_process
        .as_ref()
        .map(|lp| {
            let mut by: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for l in &m.labels {
                by.entry(lp[l].as_str()).or_default().push(l);
            }
            by.iter().map(|(p, ls)| format!("    {p}: {}\n", ls.join(", "))).collect::<String>()
        })
        .unwrap_or_else(|| format!("    {}\n", m.labels.join(", ")));
    format!(
        "model      {name} (schema {schema})\n\
         file       {path}\n\
         sha256     {sha}\n\
         task       {task}: {n} labels\n{processes}\
         input      {in_name} {in_type} [{in_dims}]\n\
         output     {out_name} {out_type} [{out_dims}]\n\
         engine     {engine}{fallback}\n\
         roi        {roi} px at {px} µm/px = {sample:.2} mm of surface, {ch} channel(s), normalised (x - {mean}) / {std}\n\
         vote       {votes} ROIs, min foreground {fg}, unknown below a share of {thr}\n\
         trained on {trained}\n\
         camera     pixels of at most {px} µm on the part (a scanner at >= {dpi} dpi); finer pixels are\n\
         \x20          resampled, coarser ones refused. Field of view at least {sample:.2} x {sample:.2} mm,\n\
         \x20          with at least {surf:.1} mm² of flat part surface in view.\n",
        name = m.name,
        schema = m.schema,
        path = model.path.display(),
        sha = model.sha256,
        task = m.task,
        n = m.labels.len(),
        in_name = sig.input.name,
        in_type = sig.input.elem_type,
        in_dims = sig.input.dims.join(", "),
        out_name = sig.output.name,
        out_type = sig.output.elem_type,
        out_dims = sig.output.dims.join(", "),
        engine = model.engine,
        fallback =
            model.fallback.as_deref().map(|why| format!("\n           (not onnxruntime: {why})")).unwrap_or_default(),
        roi = m.roi_px,
        px = m.pixel_size_um,
        sample = camera.sample_mm,
        ch = m.channels,
        mean = m.mean,
        std = m.std,
        votes = m.votes,
        fg = m.min_foreground,
        thr = m.unknown_threshold,
        trained = m.trained_on,
        dpi = camera.min_scanner_dpi,
        surf = camera.min_surface_mm2,
    )
}

/// How the model tells known machines from unknown ones, for people.
fn open_set_text(model: &Model, gallery: Option<&Gallery>) -> String {
    let embedding = match &model.meta.embedding {
        Some(e) => format!("embedding  {} float32 [n, {}] ({})\n", e.output, e.dim, e.kind),
        None => "embedding  none: the model cannot use a fingerprint gallery (docs/gallery.md)\n".into(),
    };
    let open_set = match gallery {
        Some(g) => {
            let calibrated = match (
                g.calibration.get("false_reject_target").and_then(|v| v.as_f64()),
                g.calibration.get("known_parts").and_then(|v| v.as_u64()),
            ) {
                (Some(t), Some(n)) => format!(", set for {:.1} % false rejects on {n} known parts", t * 100.0),
                _ => String::new(),
            };
            format!(
                "gallery    {} (version {}, sha256 {})\n\x20          {} machines; unknown beyond distance {:.1} (outlier {:.1}){calibrated}\n\x20          claims confirmed within distance {:.1}\n",
                g.path.display(),
                g.version,
                &g.sha256[..12],
                g.machines.len(),
                g.threshold,
                g.outlier_threshold,
                g.claim_threshold
            )
        }
        None => "gallery    none: verdicts by the vote alone, which names a known machine even for surfaces it has never seen\n"
            .into(),
    };
    let trust = match (&model.signed_by, gallery.and_then(|g| g.signed_by.as_ref())) {
        (Some(m), Some(g)) => format!("trust      model signed by {m}\n\x20          gallery signed by {g}\n"),
        (Some(m), None) => format!("trust      model signed by {m}\n"),
        _ => "trust      signatures not checked: [trust] names no keys (docs/trust.md)\n".into(),
    };
    format!("{embedding}{open_set}{trust}")
}
