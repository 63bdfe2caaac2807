//! `amfp calibrate IMAGE --pitch-um P`: the camera's pixel size from an image of a line grating
//! or grid of known pitch (a stage micrometer), optionally written into a configuration file as
//! `camera.pixel_um`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::calibrate::{Calibration, Pattern, calibrate};
use crate::capture::file::read_frame;
use crate::config::Settings;

/// Arguments of `amfp calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Image of the calibration target (PNG, JPEG or TIFF), in focus, its lines filling the view.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The target's line spacing (pitch) in µm: 10 for a stage micrometer with 0.01 mm divisions.
    #[arg(long, value_name = "UM")]
    pub pitch_um: f64,
    /// Write the result as camera.pixel_um into this configuration file (created if missing;
    /// comments and other keys are kept).
    #[arg(long, value_name = "PATH")]
    pub write_config: Option<PathBuf>,
    /// The result as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `amfp calibrate`: exit 0 on success, 1 when the image cannot be read or shows no
/// measurable grating (the message says what to change), 2 for bad arguments.
pub fn run(_settings: &Settings, args: CalibrateArgs) -> ExitCode {
    let frame = match read_frame(&args.image) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let c = match calibrate(&frame, args.pitch_um) {
        Ok(c) => c,
        Err(e @ crate::calibrate::CalibrationError::BadPitch(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(crate::config::EXIT_INVALID);
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.image.display());
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&c).expect("a calibration serialises"));
    } else {
        print!("{}", text(&args.image, &c));
    }
    if c.pattern == Pattern::Grid && c.anisotropy() > 3.0 * c.relative_uncertainty() && c.anisotropy() > 0.01 {
        log::warn!(
            "the grid's two axes differ by {:.1} %: the pixels are not square or the target is tilted against the sensor; the mean is used",
            100.0 * c.anisotropy()
        );
    }
    if let Some(path) = &args.write_config {
        if let Err(e) = write_pixel_um(path, c.um_per_px) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("wrote camera.pixel_um = {} into {}", rounded(c.um_per_px, c.uncertainty_um), path.display());
    }
    ExitCode::SUCCESS
}

fn text(image: &Path, c: &Calibration) -> String {
    let mut s = format!("{}\n", image.display());
    let what = match c.pattern {
        Pattern::Lines => "lines",
        Pattern::Grid => "grid",
    };
    let periods: Vec<String> = c.axes.iter().map(|a| format!("{:.3} px at {:.1}°", a.period_px, a.angle_deg)).collect();
    s += &format!("  target     {what} of {} µm pitch, period {}\n", c.pitch_um, periods.join(" and "));
    s += &format!(
        "  pixel      {} ± {:.2e} µm ({:.2} %)\n",
        rounded(c.um_per_px, c.uncertainty_um),
        c.uncertainty_um,
        100.0 * c.relative_uncertainty()
    );
    s
}

/// The value with as many decimals as its uncertainty supports (and two more).
fn rounded(value: f64, uncertainty: f64) -> String {
    let decimals = if uncertainty > 0.0 { (2.0 - uncertainty.log10().floor()).clamp(1.0, 8.0) as usize } else { 4 };
    format!("{value:.decimals$}")
}

/// Sets `camera.pixel_um` in a TOML file, keeping everything else, after checking that the
/// result is still a valid configuration; written through a temporary file and a rename.
pub fn write_pixel_um(path: &Path, um: f64) -> Result<(), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML ({e}); fix it or write to a new file", path.display()))?;
    if !doc.contains_key("camera") {
        doc["camera"] = toml_edit::table();
    }
    let Some(camera) = doc["camera"].as_table_like_mut() else {
        return Err(format!("{}: `camera` is not a table; it must be the [camera] section", path.display()));
    };
    let value: f64 = rounded(um, um * 1e-5).parse().unwrap_or(um);
    camera.insert("pixel_um", toml_edit::value(value));
    let out = doc.to_string();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "amfp.toml".into());
    let tmp = path.with_file_name(format!(".{name}.amfp-calibrate.toml"));
    std::fs::write(&tmp, out.as_bytes()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    if let Err(e) = crate::config::load(Some(&tmp)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{} would not be a valid configuration with camera.pixel_um = {value}:\n{e}",
            path.display()
        ));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })?;
    Ok(())
}
