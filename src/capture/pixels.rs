//! Camera pixel formats to gray intensities, and averaging of consecutive frames.
//!
//! Kept apart from the V4L2 device code (`capture::v4l2`) so that the conversions can be tested
//! without a camera. Intensities are scaled as for image files (`capture::file`): 8-bit / 255,
//! 16-bit / 65535, so a frame from a camera and the same picture saved as a PNG look alike to
//! the model.

use super::Frame;

/// The pixel formats amfp reads from cameras (V4L2 FourCC), in the default order of preference:
/// gray first (no conversion, no loss), then YUYV (its luma), then MJPEG (decoded, lossy).
pub const KNOWN_FORMATS: &[&str] = &["GREY", "Y16", "YUYV", "MJPG"];

/// A camera pixel format amfp can turn into a gray [`Frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit gray (`GREY`).
    Grey,
    /// 16-bit little-endian gray (`Y16 `).
    Y16,
    /// Packed 4:2:2 Y'CbCr (`YUYV`); the luma samples are the gray image.
    Yuyv,
    /// Motion JPEG (`MJPG`): every buffer is a JPEG image.
    Mjpg,
}

impl PixelFormat {
    /// The format of a configuration name (`GREY`, `Y16`, `YUYV`, `MJPG`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "GREY" => Some(Self::Grey),
            "Y16" => Some(Self::Y16),
            "YUYV" => Some(Self::Yuyv),
            "MJPG" => Some(Self::Mjpg),
            _ => None,
        }
    }

    /// The V4L2 FourCC bytes (`Y16` is padded with a space, as the kernel defines it).
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            Self::Grey => *b"GREY",
            Self::Y16 => *b"Y16 ",
            Self::Yuyv => *b"YUYV",
            Self::Mjpg => *b"MJPG",
        }
    }

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grey => "GREY",
            Self::Y16 => "Y16",
            Self::Yuyv => "YUYV",
            Self::Mjpg => "MJPG",
        }
    }

    /// Bits per gray sample of the converted frame.
    pub fn bit_depth(self) -> u8 {
        if self == Self::Y16 { 16 } else { 8 }
    }
}

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PixelError {
    /// The buffer holds fewer bytes than its format and size need (a short or damaged frame).
    #[error("{format} frame of {width}x{height} (stride {stride}) needs {needed} bytes, the buffer holds {got}")]
    Short { format: &'static str, width: u32, height: u32, stride: u32, needed: usize, got: usize },
    /// An MJPEG buffer that is not a decodable JPEG of the negotiated size.
    #[error("MJPG frame: {0}")]
    Jpeg(String),
}

/// Converts one buffer of `format` at `width` x `height` with `stride` bytes per line (0: packed)
/// into a gray frame (its `pixel_um` not set: the caller knows the camera's).
pub fn to_frame(format: PixelFormat, bytes: &[u8], width: u32, height: u32, stride: u32) -> Result<Frame, PixelError> {
    let (w, h) = (width as usize, height as usize);
    let bytes_per_px = match format {
        PixelFormat::Grey => 1,
        PixelFormat::Y16 | PixelFormat::Yuyv => 2,
        PixelFormat::Mjpg => return decode_mjpg(bytes, width, height),
    };
    let stride = if stride == 0 { w * bytes_per_px } else { stride as usize };
    let needed = if h == 0 { 0 } else { stride * (h - 1) + w * bytes_per_px };
    if bytes.len() < needed || stride < w * bytes_per_px {
        return Err(PixelError::Short {
            format: format.name(),
            width,
            height,
            stride: stride as u32,
            needed,
            got: bytes.len(),
        });
    }
    let mut pixels = Vec::with_capacity(w * h);
    for row in 0..h {
        let line = &bytes[row * stride..row * stride + w * bytes_per_px];
        match format {
            PixelFormat::Grey => pixels.extend(line.iter().map(|&v| f32::from(v) * (1.0 / 255.0))),
            PixelFormat::Yuyv => pixels.extend(line.chunks_exact(2).map(|p| f32::from(p[0]) * (1.0 / 255.0))),
            PixelFormat::Y16 => pixels
                .extend(line.chunks_exact(2).map(|p| f32::from(u16::from_le_bytes([p[0], p[1]])) * (1.0 / 65535.0))),
            PixelFormat::Mjpg => unreachable!("decoded above"),
        }
    }
    Ok(Frame { width, height, pixels, pixel_um: None, bit_depth: format.bit_depth() })
}

/// Decodes an MJPEG buffer (a JPEG image; cameras pad the buffer after the end marker) to gray.
fn decode_mjpg(bytes: &[u8], width: u32, height: u32) -> Result<Frame, PixelError> {
    let frame = super::file::decode_frame(bytes).map_err(|e| PixelError::Jpeg(e.to_string()))?;
    if (frame.width, frame.height) != (width, height) {
        return Err(PixelError::Jpeg(format!(
            "the image is {}x{}, the camera said {width}x{height}",
            frame.width, frame.height
        )));
    }
    // A JFIF density in a camera's JPEG is not the size of a pixel on the part.
    Ok(Frame { pixel_um: None, ..frame })
}

/// The pixel-wise mean of frames of one size, to cut sensor noise by sqrt(n).
#[derive(Debug, Clone)]
pub struct Average {
    sums: Vec<f64>,
    width: u32,
    height: u32,
    bit_depth: u8,
    count: u32,
}

impl Average {
    /// Starts an average with its first frame.
    pub fn new(first: &Frame) -> Self {
        Self {
            sums: first.pixels.iter().map(|&v| f64::from(v)).collect(),
            width: first.width,
            height: first.height,
            bit_depth: first.bit_depth,
            count: 1,
        }
    }

    /// Adds a frame; `false` (and nothing added) when its size differs from the first's.
    pub fn add(&mut self, frame: &Frame) -> bool {
        if (frame.width, frame.height) != (self.width, self.height) {
            return false;
        }
        for (s, &v) in self.sums.iter_mut().zip(&frame.pixels) {
            *s += f64::from(v);
        }
        self.count += 1;
        true
    }

    /// Frames added so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The mean frame.
    pub fn finish(self) -> Frame {
        let inv = 1.0 / f64::from(self.count);
        Frame {
            width: self.width,
            height: self.height,
            pixels: self.sums.into_iter().map(|s| (s * inv) as f32).collect(),
            pixel_um: None,
            bit_depth: self.bit_depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_with_stride_padding() {
        let bytes = [0, 255, 9, 9, 51, 102, 9, 9];
        let f = to_frame(PixelFormat::Grey, &bytes, 2, 2, 4).unwrap();
        assert_eq!(f.pixels, [0.0f32, 255.0, 51.0, 102.0].map(|v| v * (1.0 / 255.0)).to_vec());
        assert_eq!(f.bit_depth, 8);
    }

    #[test]
    fn y16_is_little_endian_and_16_bit() {
        let f = to_frame(PixelFormat::Y16, &[0xff, 0xff, 0x00, 0x80], 2, 1, 0).unwrap();
        assert_eq!(f.pixels, vec![1.0, 32768.0 * (1.0 / 65535.0)]);
        assert_eq!(f.bit_depth, 16);
    }

    #[test]
    fn yuyv_keeps_the_luma() {
        let f = to_frame(PixelFormat::Yuyv, &[10, 128, 20, 200, 30, 0, 40, 255], 4, 1, 0).unwrap();
        assert_eq!(f.pixels, [10.0f32, 20.0, 30.0, 40.0].map(|v| v * (1.0 / 255.0)).to_vec());
    }

    #[test]
    fn short_buffers_are_refused() {
        let e = to_frame(PixelFormat::Grey, &[0; 7], 4, 2, 0).unwrap_err();
        assert!(e.to_string().contains("needs 8 bytes, the buffer holds 7"), "{e}");
        assert!(to_frame(PixelFormat::Mjpg, b"not a jpeg", 4, 2, 0).is_err());
    }

    #[test]
    fn mjpg_decodes_to_gray_of_the_negotiated_size() {
        let img = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
        let mut jpeg = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        jpeg.extend([0u8; 64]); // cameras pad their buffers
        let f = to_frame(PixelFormat::Mjpg, &jpeg, 16, 8, 0).unwrap();
        assert_eq!((f.width, f.height, f.pixel_um), (16, 8, None));
        assert!((f.pixels[15] - 240.0 / 255.0).abs() < 0.05, "{}", f.pixels[15]);
        assert!(to_frame(PixelFormat::Mjpg, &jpeg, 32, 8, 0).unwrap_err().to_string().contains("camera said 32x8"));
    }

    #[test]
    fn average_of_frames() {
        let a = Frame { width: 2, height: 1, pixels: vec![0.0, 1.0], pixel_um: None, bit_depth: 8 };
        let b = Frame { pixels: vec![0.5, 0.0], ..a.clone() };
        let mut avg = Average::new(&a);
        assert!(avg.add(&b));
        assert!(!avg.add(&Frame { width: 1, height: 2, ..a.clone() }));
        assert_eq!(avg.count(), 2);
        assert_eq!(avg.finish().pixels, vec![0.25, 0.5]);
    }
}
