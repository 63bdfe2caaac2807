//! Where frames come from: image files, watched directories, the simulator and V4L2 cameras,
//! all behind one [`source::FrameSource`] trait.
//!
//! Every source produces the same [`Frame`]: gray intensities in [0, 1] and, when the
//! source knows it, the size of a pixel on the part. The rest of the pipeline never sees
//! file formats, bit depths or colour.

pub mod conveyor;
pub mod directory;
pub mod file;
pub mod pixels;
pub mod source;
pub mod synth;
pub mod v4l2;

/// One grayscale image with intensities in [0, 1], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// `width * height` intensities in [0, 1]: 8-bit values / 255, 16-bit / 65535.
    pub pixels: Vec<f32>,
    /// µm per pixel on the part, when the source records it (e.g. a scan's dpi).
    pub pixel_um: Option<f64>,
    /// Bits per sample of the source (8 or 16), for reports.
    pub bit_depth: u8,
}
