//! `amfp enroll`: add a machine to a model's fingerprint gallery from images of its parts, on
//! the CPU, without retraining (docs/gallery.md, "Enrollment").
//!
//! Each image is one part. It is judged as `identify` would (same envelope, same ROIs, every
//! ROI), and its mean embedding goes to [`Gallery::enroll`], which refuses parts that disagree
//! with the rest. The result is written as a new version of the gallery; the previous versions
//! are kept (`amfp gallery history`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::capture::Frame;
use crate::capture::file::read_frame;
use crate::capture::source::{CaptureError, Captured, Grab};
use crate::config::{GalleryChoice, Settings};
use crate::daemon::enrollment::{FRAMES_PER_PART, part_of};
use crate::daemon::trigger::{DetectorSettings, PartDetector, Sighting};
use crate::gallery::{self, Document, EnrollRequest, Enrolled, PartEmbedding, Refused};
use crate::identify::{Identifier, IdentifyOptions, Inspection, load_models, model_paths, resolve_pixel_size};
use crate::result::{Attribution, SourceInfo};
use crate::trust::SecretKey;

/// Arguments of `amfp enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Images of the machine's parts, one part each, or folders of them. 10 or more parts from
    /// at least two builds are recommended.
    #[arg(value_name = "IMAGE|DIR", required_unless_present_any = ["labels", "from_source"])]
    pub images: Vec<PathBuf>,
    /// Take N parts from the configured source instead of files: the camera (`[camera]`; each
    /// part placed under it and held still, as the `continuous` trigger finds parts), a watched
    /// directory or the simulator (`[source]`).
    #[arg(long, value_name = "N", conflicts_with_all = ["images", "labels"],
          value_parser = clap::value_parser!(u32).range(gallery::MIN_PARTS as i64..=crate::publish::command::MAX_ENROLL_PARTS as i64))]
    pub from_source: Option<u32>,
    /// A labels.csv (`file` and `machine` columns, as `amfp synth` writes): its rows of --label.
    #[arg(long, value_name = "CSV")]
    pub labels: Option<PathBuf>,
    /// The machine's label, as verdicts will name it.
    #[arg(long)]
    pub label: String,
    /// Its process (FDM, SLA, DLS, MJF...), reported with verdicts.
    #[arg(long)]
    pub process: Option<String>,
    /// Free text kept with the machine (supplier, serial number, site).
    #[arg(long)]
    pub notes: Option<String>,
    /// Why the machine is enrolled: kept in the gallery's history. Required with --reenroll.
    #[arg(long)]
    pub why: Option<String>,
    /// Who enrolls it (default: the user and host).
    #[arg(long)]
    pub by: Option<String>,
    /// Replace the fingerprint of a machine the gallery already has (after maintenance, a
    /// repair): an explicit act, recorded with --why.
    #[arg(long)]
    pub reenroll: bool,
    /// The model (default: model.path, else the bundled reference model).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// The gallery to enroll into (default: model.gallery, else the one beside the model).
    #[arg(long, value_name = "PATH")]
    pub gallery: Option<PathBuf>,
    /// Where to write the new version (default: the gallery itself). Use a writable place when
    /// the gallery is installed read-only, and point model.gallery at it.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// µm per pixel of the images (default: the file's recorded resolution, then camera.pixel_um).
    #[arg(long, value_name = "UM")]
    pub pixel_um: Option<f64>,
    /// Images judged at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Largest estimated share of parts the new machine and any other may swap (0-1): a machine
    /// the model cannot tell from another is refused, since it would take that machine's parts.
    #[arg(long, value_name = "RATE", default_value_t = gallery::MAX_CONFUSION)]
    pub max_confusion: f64,
    /// Sign the new version with this private key (docs/trust.md); devices whose [trust] names
    /// its public key refuse an unsigned gallery.
    #[arg(long, value_name = "PATH")]
    pub sign_key: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `amfp enroll`.
pub fn run(settings: &Settings, args: EnrollArgs) -> ExitCode {
    match enroll(settings, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The gallery a command works on: `--gallery`, else model.gallery, else the one beside the model.
pub fn gallery_path(settings: &Settings, model: &Path, flag: Option<&Path>) -> Result<PathBuf> {
    match (flag, &settings.model.gallery) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, GalleryChoice::Path(p)) => Ok(p.clone()),
        (None, GalleryChoice::Auto) => Ok(gallery::beside(model)),
        (None, GalleryChoice::Off) => {
            bail!("model.gallery is \"off\" in the configuration: name the gallery with --gallery PATH")
        }
    }
}

/// Who makes a change, by default: `user@host`.
pub fn default_by() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::identify::host_name())
}

fn enroll(settings: &Settings, args: &EnrollArgs) -> Result<()> {
    if let Some(um) = args.pixel_um
        && !(um.is_finite() && um > 0.0 && um <= 1000.0)
    {
        bail!("--pixel-um {um} is not a pixel size; expected a positive number of µm, at most 1000");
    }
    let model_path = model_paths(settings, args.model.as_slice()).remove(0);
    let source = gallery_path(settings, &model_path, args.gallery.as_deref())?;
    let out = args.out.clone().unwrap_or_else(|| source.clone());
    let mut options = IdentifyOptions::from_settings(settings);
    options.with_embedding = true;
    let load = settings.load_options();
    let (models, galleries) = load_models(&[model_path], options.batch, &load, &GalleryChoice::Path(source.clone()))?;
    let gallery = galleries.into_iter().next().flatten().context("the model's gallery did not load")?;
    let parent = Document::read(&source)?;
    let request = EnrollRequest {
        label: args.label.trim().to_string(),
        process: args.process.clone(),
        notes: args.notes.clone(),
        why: args.why.clone(),
        by: args.by.clone().unwrap_or_else(default_by),
        reenroll: args.reenroll,
        max_confusion: args.max_confusion,
    };
    request.check(&gallery)?;
    let label = request.label.as_str();
    let identifier = Identifier::new(models, options);
    let (parts, unusable, images) = match args.from_source {
        Some(n) => {
            let (parts, unusable, judged) = from_source(&identifier, settings, n)?;
            (parts, unusable, judged as usize)
        }
        None => {
            let images = collect_images(&args.images, args.labels.as_deref(), label)?;
            if images.is_empty() {
                bail!("no images of {label} given (files, folders of images, or --labels CSV rows of this machine)");
            }
            let threads = args
                .threads
                .map(usize::from)
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let (parts, unusable) = embed_all(&identifier, settings, args.pixel_um, &images, threads)?;
            (parts, unusable, images.len())
        }
    };
    let signer = args.sign_key.as_deref().map(SecretKey::read).transpose()?;
    let Enrolled { enrollment, committed, action } =
        request.commit(&gallery, &identifier.models()[0], &parent, &out, &parts, signer.as_ref())?;
    let existing = action == "reenroll";
    let mut warnings = enrollment.warnings.clone();
    warnings.extend(crate::trust::signing_warning(&settings.trust, signer.as_ref()));
    let refused: Vec<Refused> = unusable.into_iter().chain(enrollment.refused.iter().cloned()).collect();
    if args.json {
        let v = json!({
            "gallery": committed.path, "version": committed.version, "sha256": committed.sha256,
            "action": action, "label": label, "parts": enrollment.parts, "images": images,
            "refused": refused.iter().map(|r| json!({"image": r.source, "reason": r.reason})).collect::<Vec<_>>(),
            "offset": enrollment.offset, "spread": enrollment.spread, "reference_parts": enrollment.reference_parts,
            "nearest": enrollment.nearest.as_ref().map(|(l, d)| json!({"label": l, "distance": d})),
            "confusion": enrollment.confusion.as_ref().map(|(l, c)| json!({"label": l, "rate": c})),
            "named_before": enrollment.named_before.iter().map(|(l, c)| json!({"label": l, "parts": c})).collect::<Vec<_>>(),
            "signed_by": committed.signed_by,
            "warnings": warnings,
        });
        println!("{v}");
    } else {
        println!(
            "{} {label}: {} of {} images taken; gallery {} is now version {} (sha256 {})",
            if existing { "re-enrolled" } else { "enrolled" },
            enrollment.parts,
            images,
            committed.path.display(),
            committed.version,
            &committed.sha256[..12]
        );
        if let Some(key) = &committed.signed_by {
            println!("  signed with key {key}");
        }
        if let Some((other, d)) = &enrollment.nearest {
            println!("  nearest other machine: {other} (fingerprints {d:.1} apart)");
        }
        if let Some((other, c)) = &enrollment.confusion {
            println!("  most confusable with {other}: about {:.2} % of parts either way", 100.0 * c);
        }
        println!(
            "  small-N offset {:.1} (spread {:.1}, {} parts against {})",
            enrollment.offset, enrollment.spread, enrollment.parts, enrollment.reference_parts
        );
        for r in &refused {
            println!("  refused {}: {}", r.source, r.reason);
        }
        for w in &warnings {
            println!("  warning: {w}");
        }
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    Ok(())
}

/// The image files to enroll: the files given, the images in the folders given (sorted), and
/// the rows of `label` in a labels.csv.
fn collect_images(paths: &[PathBuf], labels: Option<&Path>, label: &str) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && crate::capture::directory::is_candidate(f))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{} holds no images (png, jpg, tif)", p.display());
            }
            images.extend(found);
        } else {
            images.push(p.clone());
        }
    }
    if let Some(csv_path) = labels {
        let mut reader =
            csv::Reader::from_path(csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
        let header = reader.headers()?.clone();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("{} has no {name:?} column", csv_path.display()))
        };
        let (file, machine) = (column("file")?, column("machine")?);
        let base = csv_path.parent().unwrap_or(Path::new("."));
        let before = images.len();
        for row in reader.records() {
            let row = row.with_context(|| format!("cannot read {}", csv_path.display()))?;
            if row.get(machine) == Some(label) {
                images.push(base.join(row.get(file).unwrap_or_default()));
            }
        }
        if images.len() == before {
            bail!("{} has no rows of machine {label:?}", csv_path.display());
        }
    }
    Ok(images)
}

/// Each image's part embedding, on `threads` workers; images that cannot be judged (the
/// envelope, too little surface) are returned as refused with the reason. An image that cannot
/// be read at all is an error: the person enrolling should know.
fn embed_all(
    identifier: &Identifier,
    settings: &Settings,
    pixel_um: Option<f64>,
    images: &[PathBuf],
    threads: usize,
) -> Result<(Vec<PartEmbedding>, Vec<Refused>)> {
    let next = AtomicUsize::new(0);
    let results: Vec<(usize, Result<Result<PartEmbedding, Refused>>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, images.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = images.get(i) else { break };
                        done.push((i, embed_one(identifier, settings, pixel_um, path)));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("an enrollment worker panicked")).collect()
    });
    let mut ordered: Vec<Option<Result<Result<PartEmbedding, Refused>>>> = (0..images.len()).map(|_| None).collect();
    for (i, r) in results {
        ordered[i] = Some(r);
    }
    let (mut parts, mut refused) = (Vec::new(), Vec::new());
    for r in ordered.into_iter().flatten() {
        match r? {
            Ok(p) => parts.push(p),
            Err(r) => refused.push(r),
        }
    }
    Ok((parts, refused))
}

fn embed_one(
    identifier: &Identifier,
    settings: &Settings,
    pixel_um: Option<f64>,
    path: &Path,
) -> Result<Result<PartEmbedding, Refused>> {
    let frame = read_frame(path).with_context(|| format!("cannot enroll {}", path.display()))?;
    let source = SourceInfo { kind: "file".into(), name: path.display().to_string(), frame: None };
    let (a, _) = embed_frame(identifier, settings, pixel_um, &frame, source, 0.0)
        .with_context(|| format!("cannot enroll {}", path.display()))?;
    Ok(a)
}

/// One frame judged for enrollment: its part embedding, or why it cannot be used; and the
/// Attribution (for the source's `on_done`).
fn embed_frame(
    identifier: &Identifier,
    settings: &Settings,
    pixel_um: Option<f64>,
    frame: &Frame,
    source: SourceInfo,
    capture_ms: f64,
) -> Result<(Result<PartEmbedding, Refused>, Attribution)> {
    let inspection = Inspection {
        pixel: resolve_pixel_size(pixel_um, frame, settings.camera.pixel_um),
        frame,
        source,
        claim: None,
        capture_ms,
    };
    let (mut a, _) = identifier.identify_for_enrollment(&inspection, false)?;
    Ok((part_of(&mut a), a))
}

/// `n` parts from the configured source: each frame of a part source (a watched directory,
/// the simulator), or each part a live view shows once it is still (the `continuous` trigger's
/// detector). Frames that cannot be judged are refused and do not count. Returns the parts,
/// the refused frames and how many frames were judged.
fn from_source(
    identifier: &Identifier,
    settings: &Settings,
    n: u32,
) -> Result<(Vec<PartEmbedding>, Vec<Refused>, u32)> {
    let mut source = crate::daemon::open_source(settings, &identifier.models()[0].path)?;
    let live = source.is_live();
    let mut detector = PartDetector::new(DetectorSettings::from_settings(&settings.daemon));
    let described = source.describe();
    eprintln!(
        "taking {n} parts from {} {}{}",
        described.kind,
        described.name,
        if live {
            ": the first frame is the empty stage, so start with the stage empty; then place each part under \
             the camera, hold it still until it is taken, and take it away"
        } else {
            ""
        }
    );
    let (mut parts, mut refused, mut judged) = (Vec::new(), Vec::new(), 0u32);
    let mut lost = false;
    while parts.len() < n as usize {
        if judged >= FRAMES_PER_PART * n {
            bail!(
                "{judged} frames judged, {} of {n} parts usable; the others: {}",
                parts.len(),
                refused.iter().map(|r: &Refused| format!("{}: {}", r.source, r.reason)).collect::<Vec<_>>().join("; ")
            );
        }
        let captured = match source.grab(Duration::from_millis(250)) {
            Ok(Grab::Frame(c)) => {
                if std::mem::take(&mut lost) {
                    eprintln!("frames flow again from {}", c.source.name);
                }
                c
            }
            Ok(Grab::Idle) => continue,
            Ok(Grab::End) => bail!("{} {} ran out after {} of {n} parts", described.kind, described.name, parts.len()),
            Err(CaptureError::Lost(why)) => {
                if !std::mem::replace(&mut lost, true) {
                    eprintln!("warning: source lost: {why}; reopening");
                }
                continue;
            }
            Err(CaptureError::Skipped(why)) => {
                eprintln!("warning: frame skipped: {why}");
                continue;
            }
            Err(CaptureError::Fatal(why)) => bail!("source: {why}"),
        };
        if live && detector.observe(&captured.frame) != Sighting::Inspect {
            continue;
        }
        judged += 1;
        let Captured { frame, source: info, capture_ms, on_done } = captured;
        let (part, attribution) = embed_frame(identifier, settings, None, &frame, info, capture_ms)?;
        match part {
            Ok(p) => {
                eprintln!("part {} of {n} taken ({})", parts.len() + 1, p.source);
                parts.push(p);
            }
            Err(r) => {
                eprintln!("frame {} refused: {}", r.source, r.reason);
                refused.push(r);
            }
        }
        if let Some(done) = on_done
            && let Err(e) = done(&attribution)
        {
            eprintln!("warning: {}: {e}", attribution.source.name);
        }
    }
    Ok((parts, refused, judged))
}
