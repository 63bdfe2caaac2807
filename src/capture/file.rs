//! Image files: PNG, JPEG and TIFF, 8 or 16 bit, gray or colour, decoded into a [`Frame`].
//!
//! The format is told from the content, never from the name, so a scan saved as `.png` that is
//! really a TIFF still reads. Intensities are scaled as training scales them (8-bit / 255,
//! 16-bit / 65535); colour becomes gray with the ITU-R BT.601 luma weights exactly as Pillow's
//! `convert("L")` computes them, and alpha is dropped. The pixel size on the part comes from
//! the resolution the file records (PNG `pHYs`, TIFF `XResolution`/`YResolution`, JPEG JFIF
//! density) when it records one with a physical unit.
//!
//! Files come from operators and from other programs: every input, however broken, ends in a
//! [`FrameError`] that names the file and says what to do, never in a panic, and decoding
//! memory is capped so that a hostile or absurd header cannot exhaust a small board.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::Frame;

/// Largest accepted image side, pixels. A flatbed scan of a whole A4 page at 2400 dpi is
/// 19843 x 28063; parts are far smaller, and frames from cameras are a few thousand pixels.
pub const MAX_SIDE: u32 = 20_000;

/// Largest accepted image, pixels: 2^28 (268 megapixels), so the f32 frame stays within 1 GiB.
pub const MAX_PIXELS: u64 = 1 << 28;

/// Most memory the decoder may allocate, bytes (1 GiB): a 16-bit RGBA image of [`MAX_PIXELS`]
/// would need 2 GiB and is refused before decoding.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Largest accepted file, bytes (1 GiB); compressed images of accepted sizes are far smaller.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why an image file could not be turned into a frame. Each message names the file and says
/// what the operator can do; none of these is a verdict on the part (see `Rejection`).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file could not be read at all (missing, no permission, a directory, an I/O error).
    #[error("cannot read {name}: {source}{}", io_hint(.source))]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The content is not an image in any format amfp knows.
    #[error("{name} is not an image amfp can read: {found}; supported formats are PNG, JPEG and TIFF")]
    NotAnImage { name: String, found: String },
    /// The content is an image, but in a format amfp does not decode.
    #[error("{name} is a {format} image; amfp reads PNG, JPEG and TIFF: convert it to PNG or TIFF (lossless)")]
    UnsupportedFormat { name: String, format: String },
    /// The image is cut short or damaged.
    #[error("{name} is a truncated or corrupt {format} file ({detail}); copy or export it again")]
    Corrupt { name: String, format: String, detail: String },
    /// The image's pixel layout (float samples, CMYK, an exotic bit depth or compression) is not handled.
    #[error("{name}: {format} with {detail} is not supported; save it as 8- or 16-bit gray or RGB")]
    UnsupportedPixelFormat { name: String, format: String, detail: String },
    /// The image has no pixels.
    #[error("{name} has zero size ({width}x{height} pixels); the camera or the program that wrote it failed")]
    Empty { name: String, width: u32, height: u32 },
    /// The image is larger than amfp will decode.
    #[error(
        "{name} is too large: {detail}; amfp decodes at most {MAX_SIDE} pixels per side, {} megapixels and {} MiB of decoder memory: crop it to the part or scan at a lower resolution",
        MAX_PIXELS >> 20,
        MAX_DECODE_BYTES >> 20
    )]
    TooLarge { name: String, detail: String },
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (check the path)",
        std::io::ErrorKind::PermissionDenied => " (check the file's permissions: the service runs as its own user)",
        _ => "",
    }
}

/// Reads and decodes an image file. The name in errors is the path as given.
pub fn read_frame(path: &Path) -> Result<Frame, FrameError> {
    let name = path.display().to_string();
    let io = |source| FrameError::Io { name: name.clone(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(FrameError::TooLarge { name, detail: format!("the file holds {} MiB", size >> 20) });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode_named(&bytes, &name)
}

/// Decodes an image held in memory (an upload, a message payload). Errors call it "image data".
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    decode_named(bytes, "image data")
}

fn decode_named(bytes: &[u8], name: &str) -> Result<Frame, FrameError> {
    let format = detect_format(bytes, name)?;
    let format_name = format_name(format);
    if let Some((width, height)) = png_header_size(bytes)
        && (width == 0 || height == 0)
    {
        return Err(FrameError::Empty { name: name.to_string(), width, height });
    }
    let classify = |e: ImageError| classify(e, name, format_name);

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(FrameError::Empty { name: name.to_string(), width, height });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(FrameError::TooLarge { name: name.to_string(), detail: format!("{width}x{height} pixels") });
    }
    let image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    let (pixels, bit_depth) = to_gray(image).map_err(|detail| FrameError::UnsupportedPixelFormat {
        name: name.to_string(),
        format: format_name.to_string(),
        detail,
    })?;
    let pixel_um = recorded_pixel_um(format, bytes, name);
    Ok(Frame { width, height, pixels, pixel_um, bit_depth })
}

/// The format from the first bytes; only PNG, JPEG and TIFF pass.
fn detect_format(bytes: &[u8], name: &str) -> Result<ImageFormat, FrameError> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Tiff)) => Ok(f),
        Ok(other) => {
            Err(FrameError::UnsupportedFormat { name: name.to_string(), format: format!("{other:?}").to_uppercase() })
        }
        Err(_) => Err(FrameError::NotAnImage { name: name.to_string(), found: describe_start(bytes) }),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        _ => "TIFF",
    }
}

/// What the start of an unrecognised file looks like, so the operator can tell a text file,
/// an HTML error page or an empty download from a damaged image.
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "the file is empty (0 bytes)".to_string();
    }
    let head = &bytes[..bytes.len().min(24)];
    let text = String::from_utf8_lossy(head);
    let printable = text.chars().all(|c| !c.is_control() || c.is_whitespace()) && !text.contains('\u{FFFD}');
    if printable {
        format!("it starts with the text {:?}", text.trim_end())
    } else {
        let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("its first bytes are {}, which is no known image signature", hex.join(" "))
    }
}

/// Width and height from a PNG's IHDR, read before decoding so that a zero-sized PNG gets its
/// own message rather than a decoder's "invalid dimensions".
fn png_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
        return None;
    }
    Some((be_u32(&bytes[16..20]), be_u32(&bytes[20..24])))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn classify(e: ImageError, name: &str, format: &str) -> FrameError {
    let (name, format) = (name.to_string(), format.to_string());
    match e {
        ImageError::Limits(l) => FrameError::TooLarge { name, detail: l.to_string() },
        ImageError::Unsupported(u) => FrameError::UnsupportedPixelFormat { name, format, detail: u.to_string() },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            FrameError::Corrupt { name, format, detail: "the data ends early".to_string() }
        }
        other => FrameError::Corrupt { name, format, detail: other.to_string() },
    }
}

/// Gray intensities in [0, 1] and the source's bits per sample, or what cannot be converted.
fn to_gray(image: DynamicImage) -> Result<(Vec<f32>, u8), String> {
    Ok(match image {
        DynamicImage::ImageLuma8(b) => (gray(b.as_raw(), 1), 8),
        DynamicImage::ImageLumaA8(b) => (gray(b.as_raw(), 2), 8),
        DynamicImage::ImageRgb8(b) => (gray(b.as_raw(), 3), 8),
        DynamicImage::ImageRgba8(b) => (gray(b.as_raw(), 4), 8),
        DynamicImage::ImageLuma16(b) => (gray(b.as_raw(), 1), 16),
        DynamicImage::ImageLumaA16(b) => (gray(b.as_raw(), 2), 16),
        DynamicImage::ImageRgb16(b) => (gray(b.as_raw(), 3), 16),
        DynamicImage::ImageRgba16(b) => (gray(b.as_raw(), 4), 16),
        other => return Err(format!("{:?} pixels", other.color())),
    })
}

/// An integer sample type of an image buffer.
trait Sample: Copy + Into<u64> {
    /// 1 / full scale, as training multiplies (`float32(raw) * float32(1 / 255)`).
    const SCALE: f32;
}

impl Sample for u8 {
    const SCALE: f32 = 1.0 / 255.0;
}

impl Sample for u16 {
    const SCALE: f32 = 1.0 / 65535.0;
}

/// Gray of interleaved samples with `channels` per pixel: the first channel of gray(+alpha),
/// BT.601 luma of colour in Pillow's fixed point, `(19595 R + 38470 G + 7471 B + 2^15) >> 16`,
/// which for 8-bit images is exactly what training's `convert("L")` gives. Alpha is ignored.
fn gray<T: Sample>(samples: &[T], channels: usize) -> Vec<f32> {
    samples
        .chunks_exact(channels)
        .map(|p| {
            let v = if channels >= 3 {
                (19595 * p[0].into() + 38470 * p[1].into() + 7471 * p[2].into() + 0x8000) >> 16
            } else {
                p[0].into()
            };
            v as f32 * T::SCALE
        })
        .collect()
}

/// Relative difference between the x and y pixel sizes above which pixels count as non-square.
const SQUARE_TOLERANCE: f64 = 0.01;

/// The pixel size the file records, µm, or None when it records none with a physical unit.
fn recorded_pixel_um(format: ImageFormat, bytes: &[u8], name: &str) -> Option<f64> {
    let (x_um, y_um) = match format {
        ImageFormat::Png => png_phys_um(bytes)?,
        ImageFormat::Jpeg => jfif_density_um(bytes)?,
        _ => tiff_resolution_um(bytes)?,
    };
    if !(x_um.is_finite() && y_um.is_finite() && x_um > 0.0 && y_um > 0.0) {
        return None;
    }
    if (x_um - y_um).abs() > SQUARE_TOLERANCE * x_um.min(y_um) {
        log::warn!(
            "{name}: the recorded pixels are not square ({x_um:.3} x {y_um:.3} µm); ignoring the recorded resolution"
        );
        return None;
    }
    Some(0.5 * (x_um + y_um))
}

/// µm per pixel from a density in pixels per unit.
fn um_per_pixel(per_unit: f64, um_per_unit: f64) -> f64 {
    um_per_unit / per_unit
}

/// PNG `pHYs` in pixels per metre (unit 1); the chunk must precede the image data.
fn png_phys_um(bytes: &[u8]) -> Option<(f64, f64)> {
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = be_u32(&bytes[pos..pos + 4]) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        match kind {
            b"pHYs" if len == 9 && data[8] == 1 => {
                let (x, y) = (be_u32(&data[0..4]), be_u32(&data[4..8]));
                return Some((um_per_pixel(f64::from(x), 1e6), um_per_pixel(f64::from(y), 1e6)));
            }
            b"IDAT" | b"IEND" => return None,
            _ => pos = pos + 12 + len,
        }
    }
    None
}

/// JPEG JFIF (APP0) density in dots per inch (unit 1) or per cm (unit 2).
fn jfif_density_um(bytes: &[u8]) -> Option<(f64, f64)> {
    let mut pos = 2; // after SOI
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return None;
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return None; // start of scan or end of image: no JFIF header before the data
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        let data = bytes.get(pos + 4..(pos + 2 + len).max(pos + 4))?;
        if marker == 0xE0 && data.len() >= 12 && data.starts_with(b"JFIF\0") {
            let um_per_unit = match data[7] {
                1 => 25_400.0,
                2 => 10_000.0,
                _ => return None, // 0: aspect ratio only
            };
            let x = f64::from(u16::from_be_bytes([data[8], data[9]]));
            let y = f64::from(u16::from_be_bytes([data[10], data[11]]));
            return Some((um_per_pixel(x, um_per_unit), um_per_pixel(y, um_per_unit)));
        }
        pos += 2 + len;
    }
    None
}

/// TIFF `XResolution`/`YResolution` in the `ResolutionUnit` (2 inch, the default; 3 cm).
fn tiff_resolution_um(bytes: &[u8]) -> Option<(f64, f64)> {
    use tiff::tags::Tag;
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(bytes)).ok()?;
    let x = number(decoder.find_tag(Tag::XResolution).ok()??)?;
    let y = number(decoder.find_tag(Tag::YResolution).ok()??)?;
    let um_per_unit = match decoder.find_tag_unsigned::<u16>(Tag::ResolutionUnit).ok()?.unwrap_or(2) {
        2 => 25_400.0,
        3 => 10_000.0,
        _ => return None, // 1: no absolute unit
    };
    Some((um_per_pixel(x, um_per_unit), um_per_pixel(y, um_per_unit)))
}

/// A TIFF tag's value as a number: resolutions are RATIONAL, but some writers use other types.
fn number(v: tiff::decoder::ifd::Value) -> Option<f64> {
    use tiff::decoder::ifd::Value;
    match v {
        Value::Rational(n, d) if d != 0 => Some(f64::from(n) / f64::from(d)),
        Value::SRational(n, d) if d != 0 => Some(f64::from(n) / f64::from(d)),
        Value::Double(x) => Some(x),
        Value::Float(x) => Some(f64::from(x)),
        Value::Unsigned(x) => Some(f64::from(x)),
        Value::Short(x) => Some(f64::from(x)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pillow_fixed_point() {
        // Pillow: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
        let px: [u8; 6] = [255, 0, 0, 10, 200, 30];
        let g = gray(&px, 3);
        assert_eq!(g[0], 76.0 / 255.0); // (19595 * 255 + 32768) >> 16 = 76
        assert_eq!(g[1], ((19595 * 10 + 38470 * 200 + 7471 * 30 + 32768) >> 16) as f32 * (1.0 / 255.0));
        assert_eq!(gray(&[65535u16, 65535, 65535], 3), vec![1.0]);
    }

    #[test]
    fn start_of_unknown_files_is_described() {
        assert!(describe_start(b"").contains("empty"));
        assert!(describe_start(b"hello world\n").contains("\"hello world\""));
        assert!(describe_start(&[0, 1, 2, 0xFE]).contains("00 01 02 fe"));
    }

    #[test]
    fn broken_headers_yield_no_pixel_size() {
        assert_eq!(png_phys_um(b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffpHYs"), None);
        assert_eq!(jfif_density_um(&[0xFF, 0xD8, 0xFF, 0xE0, 0xFF, 0xFF, b'J']), None);
        assert_eq!(jfif_density_um(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x00]), None);
        assert_eq!(tiff_resolution_um(b"II*\0garbage"), None);
    }
}
