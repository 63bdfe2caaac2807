//! `amfp identify IMAGE...`: judge parts from image files, for inspectors and scripts.
//!
//! Prints one block per image for people, or with `--json` one Attribution per line for
//! machines. Images are judged in parallel (`--threads`) and printed in the order given;
//! with `--same-part` they are frames of one part, judged together in one vote.
//! The exit status says the worst outcome over all images (see [`Outcome`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::Args;

use crate::capture::file::read_frame;
use crate::config::{GalleryChoice, Settings};
use crate::identify::{
    Identifier, IdentifyOptions, Inspection, RoiRecord, elapsed_ms, load_models, model_paths, resolve_pixel_size,
};
use crate::model::EngineChoice;
use crate::result::{Attribution, ClaimStatus, SourceInfo, Verdict};
use crate::roi::MaskMode;
use crate::vote::StopRule;

/// Arguments of `amfp identify`. Flags win over the configuration.
#[derive(Debug, Args)]
pub struct IdentifyArgs {
    /// Images of parts (PNG, JPEG or TIFF; 8 or 16 bit; gray or colour).
    #[arg(required_unless_present = "camera", value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Judge one frame from the camera instead of files: DEVICE, or camera.device when none is
    /// given. Its [camera] settings apply (format, size, controls, frames averaged).
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, default_missing_value = "", conflicts_with = "images")]
    pub camera: Option<String>,
    /// Model(s) to judge with; repeat for several (the first is the primary). Default:
    /// model.path and model.extra from the configuration, else the bundled reference model.
    #[arg(long = "model", value_name = "PATH")]
    pub models: Vec<PathBuf>,
    /// µm per pixel of the images (default: the file's recorded resolution, then camera.pixel_um).
    #[arg(long, value_name = "UM")]
    pub pixel_um: Option<f64>,
    /// ROIs in the full vote (default: identify.rois, else the model's amfp.votes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub votes: Option<u16>,
    /// The claimed source (a label, e.g. from a purchase order): say whether the evidence fits it.
    #[arg(long, value_name = "LABEL")]
    pub claim: Option<String>,
    /// One Attribution JSON per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Early stopping of the vote (default: identify.early_stop).
    #[arg(long, value_enum, value_name = "RULE")]
    pub early_stop: Option<StopRule>,
    /// Seed of the ROI positions (default: identify.seed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// How the part is found (default: camera.mask).
    #[arg(long, value_enum, value_name = "MODE")]
    pub mask: Option<MaskMode>,
    /// The images are frames of one part (a USB microscope moved over it): one vote over the
    /// ROIs of all of them, one verdict. Frames that cannot be used are left out and named.
    #[arg(long, conflicts_with = "camera")]
    pub same_part: bool,
    /// The inference engine (default: model.engine; docs/engines.md).
    #[arg(long, value_enum, value_name = "ENGINE")]
    pub engine: Option<EngineChoice>,
    /// Images judged at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// The primary model's fingerprint gallery (default: model.gallery, else the one beside the
    /// model): verdicts by the distance to each known machine's fingerprint (docs/gallery.md).
    #[arg(long, value_name = "PATH", conflicts_with = "no_gallery")]
    pub gallery: Option<PathBuf>,
    /// Judge by the vote alone (the paper's rule), even when the model has a gallery.
    #[arg(long)]
    pub no_gallery: bool,
    /// Add each part's mean embedding to its result (`embedding`, for fitting galleries).
    #[arg(long)]
    pub with_embedding: bool,
    /// Write the primary model's ROIs and probabilities per image as NumPy files into DIR
    /// (<stem>.rois.npy, <stem>.probs.npy, <stem>.corners.npy): for parity checks and debugging.
    #[arg(long, value_name = "DIR")]
    pub save_rois: Option<PathBuf>,
}

/// The outcome of a whole run, from best to worst; the exit status is the worst image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Exit 0: every image identified (and every claim consistent).
    Identified,
    /// Exit 3: at least one part is from no known machine.
    Unknown,
    /// Exit 4: at least one image could not be judged.
    Rejected,
    /// Exit 5: at least one claim is contradicted by the evidence.
    ClaimInconsistent,
    /// Exit 1: an image or model could not be read (message on stderr).
    Error,
}

impl Outcome {
    /// The process exit status of this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Identified => 0,
            Self::Error => 1,
            Self::Unknown => 3,
            Self::Rejected => 4,
            Self::ClaimInconsistent => 5,
        }
    }

    /// The outcome of one Attribution.
    pub fn of(a: &Attribution) -> Self {
        if a.claim.as_ref().is_some_and(|c| c.consistent == Some(false)) {
            return Self::ClaimInconsistent;
        }
        match a.judgement.verdict {
            Verdict::Identified => Self::Identified,
            Verdict::Unknown => Self::Unknown,
            Verdict::Rejected => Self::Rejected,
        }
    }
}

/// Runs `amfp identify`.
pub fn run(settings: &Settings, args: IdentifyArgs) -> ExitCode {
    let mut options = IdentifyOptions::from_settings(settings);
    if let Some(n) = args.votes {
        options.rois = Some(n as usize);
    }
    if let Some(rule) = args.early_stop {
        options.stop = rule;
    }
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    if let Some(mask) = args.mask {
        options.mask = mask;
    }
    if let Some(um) = args.pixel_um
        && !(um.is_finite() && um > 0.0 && um <= 1000.0)
    {
        eprintln!("error: --pixel-um {um} is not a pixel size; expected a positive number of µm, at most 1000");
        return ExitCode::from(crate::config::EXIT_INVALID);
    }
    options.with_embedding = args.with_embedding;
    let paths = model_paths(settings, &args.models);
    let mut load = settings.load_options();
    if let Some(engine) = args.engine {
        load.engine = engine;
    }
    let gallery = match (&args.gallery, args.no_gallery) {
        (Some(path), _) => GalleryChoice::Path(path.clone()),
        (None, true) => GalleryChoice::Off,
        (None, false) => settings.model.gallery.clone(),
    };
    let (models, galleries) = match load_models(&paths, options.batch, &load, &gallery) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = &args.save_rois
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: cannot create --save-rois directory {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let identifier = Identifier::with_galleries(models, galleries, options);
    if let Some(claim) = &args.claim
        && let Err(e) = identifier.check_claim(claim)
    {
        eprintln!("error: --claim: {e}");
        return ExitCode::from(crate::config::EXIT_INVALID);
    }
    if let Some(device) = &args.camera {
        return ExitCode::from(judge_camera(&identifier, settings, &args, Path::new(device)).exit_code());
    }
    let threads = args
        .threads
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let worst = judge_all(&identifier, settings, &args, threads);
    ExitCode::from(worst.exit_code())
}

/// Judges every part on up to `threads` workers and prints the results in the order given: each
/// image is a part, or with `--same-part` all of them are frames of one.
fn judge_all(identifier: &Identifier, settings: &Settings, args: &IdentifyArgs, threads: usize) -> Outcome {
    let parts: Vec<&[PathBuf]> = if args.same_part { vec![&args.images[..]] } else { args.images.chunks(1).collect() };
    let threads = threads.min(parts.len());
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<Attribution, String>)>();
    let mut worst = Outcome::Identified;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, parts) = (&next, &parts);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(frames) = parts.get(i) else { break };
                    if tx.send((i, judge_one(identifier, settings, args, frames))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut printed = 0;
        let stdout = std::io::stdout();
        for (i, result) in rx {
            pending.insert(i, result);
            while let Some(result) = pending.remove(&printed) {
                let path = &parts[printed][0];
                printed += 1;
                let outcome = match result {
                    Ok(a) => {
                        let text = if args.json { json_line(&a) } else { table(path, &a) };
                        let mut out = stdout.lock();
                        // A closed stdout (e.g. `| head`) is not an error of the inspection.
                        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
                        Outcome::of(&a)
                    }
                    Err(message) => {
                        eprintln!("error: {message}");
                        Outcome::Error
                    }
                };
                worst = worst.max(outcome);
            }
        }
    });
    worst
}

/// Longest wait for a camera's first frame (a camera starting up, a slow board).
const CAMERA_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Captures one frame (averaged as configured) from a camera and judges it.
fn judge_camera(identifier: &Identifier, settings: &Settings, args: &IdentifyArgs, device: &Path) -> Outcome {
    use crate::capture::source::{FrameSource, Grab};
    let mut camera = settings.camera.clone();
    if !device.as_os_str().is_empty() {
        camera.device = device.to_path_buf();
    }
    let mut source = match crate::capture::v4l2::V4l2Source::open(&camera) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Error;
        }
    };
    let t0 = Instant::now();
    let captured = loop {
        match source.grab(std::time::Duration::from_secs(1)) {
            Ok(Grab::Frame(c)) => break c,
            Ok(Grab::Idle) if t0.elapsed() < CAMERA_WAIT => continue,
            Ok(Grab::Idle | Grab::End) => {
                eprintln!(
                    "error: no frame from camera {} within {} s; check that it is connected and streaming (amfp cameras)",
                    camera.device.display(),
                    CAMERA_WAIT.as_secs()
                );
                return Outcome::Error;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Outcome::Error;
            }
        }
    };
    // A camera frame carries the configured pixel size: it comes from the configuration.
    let pixel = args
        .pixel_um
        .map(|v| (v, crate::reject::PixelSizeSource::Cli))
        .or(camera.pixel_um.map(|v| (v, crate::reject::PixelSizeSource::Config)));
    let inspection = Inspection {
        pixel,
        frame: &captured.frame,
        source: captured.source.clone(),
        claim: args.claim.as_deref(),
        capture_ms: captured.capture_ms,
    };
    match identifier.identify(&inspection) {
        Ok(a) => {
            let text = if args.json { json_line(&a) } else { table(&camera.device, &a) };
            print!("{text}");
            Outcome::of(&a)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", camera.device.display());
            Outcome::Error
        }
    }
}

/// Reads and judges one part from its frames (one image, or all of them with `--same-part`);
/// an Err is a message naming the file. A frame that cannot be read stops the part: nothing is
/// judged on part of the evidence.
fn judge_one(
    identifier: &Identifier,
    settings: &Settings,
    args: &IdentifyArgs,
    paths: &[PathBuf],
) -> Result<Attribution, String> {
    let mut frames = Vec::with_capacity(paths.len());
    for path in paths {
        let t0 = Instant::now();
        let frame = read_frame(path).map_err(|e| e.to_string())?;
        frames.push((path, frame, elapsed_ms(t0)));
    }
    let views: Vec<Inspection> = frames
        .iter()
        .map(|(path, frame, ms)| Inspection {
            pixel: resolve_pixel_size(args.pixel_um, frame, settings.camera.pixel_um),
            frame,
            source: SourceInfo { kind: "file".into(), name: path.display().to_string(), frame: None },
            claim: args.claim.as_deref(),
            capture_ms: *ms,
        })
        .collect();
    let path = &paths[0];
    let (attribution, record) =
        identifier.identify_views(&views, args.save_rois.is_some()).map_err(|e| format!("{}: {e}", path.display()))?;
    if let (Some(dir), Some(record)) = (&args.save_rois, record) {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        save_rois(dir, &stem, &record)
            .map_err(|e| format!("cannot write ROIs of {} into {}: {e}", path.display(), dir.display()))?;
    }
    Ok(attribution)
}

/// Writes a RoiRecord as three .npy files (four when the ROIs come from several frames).
fn save_rois(dir: &Path, stem: &str, r: &RoiRecord) -> std::io::Result<()> {
    let n = r.corners.len() as u64;
    let [c, h, w] = r.roi_shape.map(|d| d as u64);
    write_npy(&dir.join(format!("{stem}.rois.npy")), &r.inputs, &[n, c, h, w])?;
    write_npy(&dir.join(format!("{stem}.probs.npy")), &r.probabilities, &[n, r.classes as u64])?;
    if !r.embeddings.is_empty() {
        let dim = (r.embeddings.len() as u64) / n.max(1);
        write_npy(&dir.join(format!("{stem}.embeddings.npy")), &r.embeddings, &[n, dim])?;
    }
    if r.views.iter().any(|&v| v != 0) {
        write_npy(&dir.join(format!("{stem}.views.npy")), &r.views, &[n])?;
    }
    let corners: Vec<u32> = r.corners.iter().flat_map(|&(x, y)| [x, y]).collect();
    write_npy(&dir.join(format!("{stem}.corners.npy")), &corners, &[n, 2])
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, data: &[T], shape: &[u64]) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    use npyz::WriterBuilder;
    let mut writer = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(file).begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()
}

fn json_line(a: &Attribution) -> String {
    // Serialising plain data cannot fail.
    let mut s = serde_json::to_string(a).expect("an Attribution serialises");
    s.push('\n');
    s
}

/// The block printed for people.
fn table(path: &Path, a: &Attribution) -> String {
    let mut s = match a.views.len() {
        0 | 1 => format!("{}\n", path.display()),
        n => format!("{} and {} more frames of the same part\n", path.display(), n - 1),
    };
    let mut row = |key: &str, value: String| {
        let _ = writeln!(s, "  {key:<10} {value}");
    };
    let j = &a.judgement;
    match j.verdict {
        Verdict::Identified => {
            let process = j.process.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
            row("verdict", format!("IDENTIFIED {}{process}", j.label.as_deref().unwrap_or("?")));
        }
        Verdict::Unknown => row("verdict", format!("UNKNOWN SOURCE: {}", j.reason.as_deref().unwrap_or(""))),
        Verdict::Rejected => row("verdict", format!("REJECTED: {}", j.reason.as_deref().unwrap_or(""))),
    }
    if let (Some(score), Some(margin), Some(rois)) = (j.score, j.margin, j.rois) {
        let stop = if rois.early_stop { ", stopped early" } else { "" };
        row("score", format!("{score:.3} (margin {margin:.3}), {} of {} ROIs{stop}", rois.used, rois.max));
    }
    if let Some(g) = &j.gallery {
        row(
            "distance",
            format!(
                "{:.1} to {} (threshold {:.1}), plain {:.1} (outlier threshold {:.1}); next {} at {:.1}",
                g.distance,
                g.nearest,
                g.threshold,
                g.plain_distance,
                g.outlier_threshold,
                g.runner_up,
                g.runner_up_distance
            ),
        );
    }
    if !j.top.is_empty() {
        row("top", j.top.iter().map(|c| format!("{} {:.3}", c.label, c.score)).collect::<Vec<_>>().join(", "));
    }
    if let Some(c) = &a.claim {
        let status = match c.status {
            ClaimStatus::Confirmed => "confirmed: the evidence fits the claim",
            ClaimStatus::Contradicted => "CONTRADICTED: the evidence points to another source",
            ClaimStatus::Unconfirmed if c.known_label => {
                "NOT CONFIRMED: the part does not match the claimed machine well enough"
            }
            ClaimStatus::Unconfirmed => {
                "consistent: the claimed source is not a machine the model knows, and no known machine fits"
            }
            ClaimStatus::Unjudged => "not checked: the image was rejected",
        };
        row("claim", format!("{}: {status}", c.label));
    }
    for attr in &a.attributes {
        let what = match attr.judgement.verdict {
            Verdict::Identified => format!(
                "{} (score {:.3})",
                attr.judgement.label.as_deref().unwrap_or("?"),
                attr.judgement.score.unwrap_or(0.0)
            ),
            Verdict::Unknown => format!("unknown ({})", attr.judgement.reason.as_deref().unwrap_or("")),
            Verdict::Rejected => format!("rejected ({})", attr.judgement.reason.as_deref().unwrap_or("")),
        };
        row(&attr.model.task, what);
    }
    if let Some(e) = &a.envelope {
        let camera = match (e.camera_pixel_um, e.pixel_source) {
            (Some(um), Some(src)) => format!("{um:.2} µm/px ({})", src.code()),
            _ => "pixel size unknown".into(),
        };
        let view = e.view_mm.map(|[w, h]| format!(", view {w:.1} x {h:.1} mm")).unwrap_or_default();
        row(
            "envelope",
            format!(
                "{camera} -> model {:.2} µm/px, sample {:.2} mm{view}{}",
                e.model_pixel_um,
                e.sample_mm,
                if e.ok { "" } else { ", OUT" }
            ),
        );
    }
    for (i, v) in a.views.iter().enumerate() {
        let what = match &v.reason {
            None => format!("{}: {} ROIs", v.source.name, v.rois),
            Some(reason) => format!("{}: LEFT OUT: {reason}", v.source.name),
        };
        row(if i == 0 { "frames" } else { "" }, what);
    }
    row(
        "model",
        format!("{} ({}, sha256 {})", a.model.name, a.model.task, &a.model.sha256[..12.min(a.model.sha256.len())]),
    );
    let t = a.timing_ms;
    row(
        "time",
        format!(
            "read {:.0} ms, preprocess {:.0} ms, inference {:.0} ms, total {:.0} ms",
            t.capture, t.preprocess, t.inference, t.total
        ),
    );
    s
}
