//! `amfp envelope --camera-pixel-um X --fov-mm W,H`: can this camera serve this model? Prints
//! the verdict with what to change, and with `--png` draws it like the paper's Figure 7.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Settings;
use crate::envelope::{CameraView, Status, judge};
use crate::model::Model;
use crate::optics::ModelGeometry;

/// Arguments of `amfp envelope`.
#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    /// The camera's pixel size on the part, µm (default: camera.pixel_um).
    #[arg(long, value_name = "UM")]
    pub camera_pixel_um: Option<f64>,
    /// The camera's field of view on the part, mm, as WIDTH,HEIGHT.
    #[arg(long, value_name = "W,H", value_parser = parse_fov)]
    pub fov_mm: [f64; 2],
    /// The model (default: model.path, else the bundled model).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Draw the envelope into this PNG file.
    #[arg(long, value_name = "OUT")]
    pub png: Option<PathBuf>,
    /// The verdict as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_fov(s: &str) -> Result<[f64; 2], String> {
    let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
    let bad = || format!("{s:?} is not a field of view; expected WIDTH,HEIGHT in mm, e.g. 3.84,2.88");
    let [w, h] = parts.as_slice() else { return Err(bad()) };
    let (w, h): (f64, f64) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0 && w <= 10_000.0 && h <= 10_000.0) {
        return Err(bad());
    }
    Ok([w, h])
}

/// Runs `amfp envelope`: exit 0 inside, 3 at the edge, 4 outside the envelope; 1 when the model
/// or the PNG cannot be read or written; 2 for bad arguments.
pub fn run(settings: &Settings, args: EnvelopeArgs) -> ExitCode {
    let Some(pixel_um) = args.camera_pixel_um.or(settings.camera.pixel_um) else {
        eprintln!(
            "error: the camera's pixel size is unknown: pass --camera-pixel-um, or set camera.pixel_um (amfp calibrate measures it)"
        );
        return ExitCode::from(crate::config::EXIT_INVALID);
    };
    if !(pixel_um.is_finite() && pixel_um > 0.0 && pixel_um <= 1000.0) {
        eprintln!(
            "error: --camera-pixel-um {pixel_um} is not a pixel size; expected a positive number of µm, at most 1000"
        );
        return ExitCode::from(crate::config::EXIT_INVALID);
    }
    let path = crate::identify::model_paths(settings, args.model.as_slice()).remove(0);
    let model = match Model::load_with(&path, 1, &settings.load_options()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let meta = &model.meta;
    let geometry = ModelGeometry { pixel_um: meta.pixel_size_um, roi_px: meta.roi_px };
    let processes: Vec<String> = meta.label_process.iter().flat_map(|m| m.values().cloned()).collect();
    let camera = CameraView { pixel_um, fov_mm: args.fov_mm };
    let verdict = judge(&camera, &geometry, &processes, settings.identify.min_surface_rois);
    if args.json {
        let mut v = serde_json::to_value(&verdict).expect("a verdict serialises");
        v["model"] = serde_json::json!({"name": meta.name, "path": path, "sha256": model.sha256});
        println!("{v}");
    } else {
        let [nw, nh] = camera.pixels();
        println!(
            "camera     {pixel_um:.2} µm/px, view {:.2} x {:.2} mm ({nw:.0} x {nh:.0} px)",
            args.fov_mm[0], args.fov_mm[1]
        );
        println!(
            "model      {} ({:.2} µm/px, ROI {} px = {:.2} mm)",
            meta.name, geometry.pixel_um, geometry.roi_px, verdict.sample_mm
        );
        println!(
            "verdict    {}: the view holds {:.1} ROI areas (the vote needs {:.1})",
            verdict.status.word(),
            verdict.rois_in_view,
            verdict.min_surface_rois
        );
        if let Some([lo, hi]) = verdict.zoom_range_um {
            println!("zoom       this sensor serves the model at {lo:.2} to {hi:.2} µm per pixel");
        }
        for f in &verdict.findings {
            println!("  {:<9}  {}", f.status.word().to_lowercase(), f.message);
        }
    }
    if let Some(png) = &args.png {
        if let Err(e) = crate::envelope_plot::write_png(&verdict, &meta.name, png) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("drew the envelope into {}", png.display());
    }
    ExitCode::from(match verdict.status {
        Status::Inside => 0,
        Status::Edge => 3,
        Status::Outside => 4,
    })
}
