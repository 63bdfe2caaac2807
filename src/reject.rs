//! Why an image cannot be judged.
//!
//! A rejection is not an error of amfp: the image was read, but it cannot support a verdict
//! (out of the optical envelope, no part in view, badly exposed). Each variant names the
//! problem and what the operator can do about it, and has a stable machine-readable code,
//! so an inspector reads the message and a fleet manager counts the codes.

use serde::{Deserialize, Serialize};

/// Where a frame's pixel size came from; reported with every envelope so that a wrong value
/// can be traced to the flag, the file or the configuration that supplied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelSizeSource {
    /// `--pixel-um` on the command line.
    Cli,
    /// The resolution recorded in the image file (PNG pHYs, TIFF resolution, JPEG JFIF density).
    File,
    /// `camera.pixel_um` in the configuration (configured or calibrated).
    Config,
}

impl PixelSizeSource {
    /// Stable short name, as in JSON (`cli`, `file`, `config`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::File => "file",
            Self::Config => "config",
        }
    }
}

impl std::fmt::Display for PixelSizeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cli => "--pixel-um",
            Self::File => "the image file's recorded resolution",
            Self::Config => "camera.pixel_um in the configuration",
        })
    }
}

/// The reasons amfp refuses to judge an image. The `Display` text is for people; `code()` for machines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// No pixel size from the flag, the file or the configuration: the envelope cannot be checked.
    #[error(
        "pixel size unknown: the image records no resolution; pass --pixel-um, or set camera.pixel_um in the configuration (calibrate with a stage micrometer)"
    )]
    PixelSizeUnknown,
    /// The camera's pixels are coarser than the model's: the texture the model needs is not resolved.
    #[error(
        "pixel size {camera_um:.2} µm (from {pixel_source}) is coarser than the model's {model_um:.2} µm: the surface texture is not resolved; move the camera closer or raise the magnification until a pixel is at most {model_um:.2} µm (scan at >= {min_dpi:.0} dpi), or use a model trained at {} µm",
        trained_at(*camera_um)
    )]
    PixelTooCoarse { camera_um: f64, model_um: f64, pixel_source: PixelSizeSource, min_dpi: f64 },
    /// After resampling, the view is smaller than one ROI.
    #[error(
        "field of view {view_w_mm:.2} x {view_h_mm:.2} mm is smaller than the model's sample of {sample_mm:.2} mm: zoom out or move the camera farther away (keeping pixels at most the model's size), or use a larger image"
    )]
    ViewTooSmall { view_w_mm: f64, view_h_mm: f64, sample_mm: f64 },
    /// The model's sample (ROI side on the part) is smaller, or its pixels coarser, than the
    /// texture of the identified part's process needs (Bimrose et al. 2025, Figure 7).
    #[error(
        "the model's sample of {sample_mm:.2} mm ({roi_px} px at {model_um:.2} µm) is too small or too coarse for {process} parts, which need at least {min_sample_mm:.1} mm{}: its verdict on them is not reliable; use a model trained on samples of at least {min_sample_mm:.1} mm (more pixels per ROI, or coarser pixels)",
        if max_pixel_um.is_finite() { format!(" with pixels under {max_pixel_um:.0} µm") } else { String::new() }
    )]
    SampleTooSmall {
        process: String,
        sample_mm: f64,
        min_sample_mm: f64,
        model_um: f64,
        max_pixel_um: f64,
        roi_px: u32,
    },
    /// Every pixel has (nearly) the same value: lens cap, light off, or a blank file.
    #[error("blank image: every pixel is about {level:.3} of full scale; check the lens cap, the light and the camera")]
    Blank { level: f64 },
    /// The image is too dark for its texture to rise above the noise.
    #[error(
        "image too dark: its brightest 1% of pixels reach only {p99:.3} of full scale; raise the exposure or the light"
    )]
    TooDark { p99: f64 },
    /// Too much of the image is clipped white: the texture there is lost.
    #[error("image saturated: {percent:.0}% of the part's pixels are clipped white; lower the exposure or the light")]
    Saturated { percent: f64 },
    /// Nothing in view looks like a part.
    #[error("no part in view: {detail}; place the part in the field of view")]
    NoPart { detail: String },
    /// A part is in view, but too little of its surface for the vote.
    #[error(
        "too little part surface: {surface_rois:.1} ROIs' worth of surface of {sample_mm:.2} mm where at least {needed:.1} is needed; show a larger flat area of the part"
    )]
    TooLittleSurface { surface_rois: f64, needed: f64, sample_mm: f64 },
}

impl Rejection {
    /// Stable snake_case identifier, for result JSON and for counting rejections across a fleet.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PixelSizeUnknown => "pixel_size_unknown",
            Self::PixelTooCoarse { .. } => "pixel_too_coarse",
            Self::ViewTooSmall { .. } => "view_too_small",
            Self::SampleTooSmall { .. } => "sample_too_small",
            Self::Blank { .. } => "blank",
            Self::TooDark { .. } => "too_dark",
            Self::Saturated { .. } => "saturated",
            Self::NoPart { .. } => "no_part",
            Self::TooLittleSurface { .. } => "too_little_surface",
        }
    }
}

/// A pixel size a model could be trained at for a camera of `camera_um`: the camera's pixel
/// rounded up to a figure people write (2 significant digits), so the model never asks for
/// finer pixels than the camera has.
pub fn trained_at(camera_um: f64) -> String {
    if !(camera_um.is_finite() && camera_um > 0.0) {
        return "this pixel size".into();
    }
    let scale = 10f64.powf(camera_um.log10().floor() - 1.0);
    let rounded = (camera_um / scale - 1e-9).ceil() * scale;
    let decimals = (-(scale.log10().round()) as i32).max(0) as usize;
    format!("{rounded:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_at_rounds_up_to_two_digits() {
        assert_eq!(trained_at(20.0), "20");
        assert_eq!(trained_at(19.37), "20");
        assert_eq!(trained_at(352.8), "360");
        assert_eq!(trained_at(3.13), "3.2");
        assert_eq!(trained_at(0.523), "0.53");
    }
}
