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
        "pixel size {camera_um:.2} µm (from {pixel_source}) is coarser than the model's {model_um:.2} µm: the surface texture is not resolved; use a finer pixel (scan at >= {min_dpi:.0} dpi, or raise the magnification), or a model trained at this pixel size"
    )]
    PixelTooCoarse { camera_um: f64, model_um: f64, pixel_source: PixelSizeSource, min_dpi: f64 },
    /// After resampling, the view is smaller than one ROI.
    #[error(
        "field of view {view_w_mm:.2} x {view_h_mm:.2} mm is smaller than the model's sample of {sample_mm:.2} mm: zoom out or use a larger image"
    )]
    ViewTooSmall { view_w_mm: f64, view_h_mm: f64, sample_mm: f64 },
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
            Self::Blank { .. } => "blank",
            Self::TooDark { .. } => "too_dark",
            Self::Saturated { .. } => "saturated",
            Self::NoPart { .. } => "no_part",
            Self::TooLittleSurface { .. } => "too_little_surface",
        }
    }
}
