//! Preprocessing, from image bytes to normalised ROIs: decoding and recorded pixel sizes
//! (`capture::file`), exposure and the optical envelope (`optics`), the part mask and ROI
//! sampling (`roi`). Simulated parts are rendered through the library; expected values that
//! come from training's Python (Pillow's BOX filter, numpy's Otsu) were computed offline with
//! `training/amfp_train` and are checked by hand in the comments.

use std::io::Cursor;
use std::path::Path;

use amfp::capture::Frame;
use amfp::capture::file::{FrameError, decode_frame, read_frame};
use amfp::optics::{self, GrayF32, ModelGeometry, check_exposure, fit_to_model};
use amfp::reject::{PixelSizeSource, Rejection};
use amfp::roi::{DEFAULT_MIN_SURFACE_ROIS, MaskMode, PartSurface, otsu};
use amfp::synth::design::Design;
use amfp::synth::{DatasetSpec, Fleet, ImagingSpec, Layout, Mode, Scan, SplitFractions};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use proptest::prelude::*;

/// The shipped model's geometry.
const SHIPPED: ModelGeometry = ModelGeometry { pixel_um: 10.6, roi_px: 192 };
const MIN_FG: f32 = 0.8;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).expect("encodes");
    out
}

fn gray_image(w: u32, h: u32, f: impl Fn(u32, u32) -> f32) -> GrayF32 {
    let pixels = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
    GrayF32 { width: w, height: h, pixels, pixel_um: SHIPPED.pixel_um }
}

fn frame(w: u32, h: u32, pixel_um: Option<f64>, f: impl Fn(u32, u32) -> f32) -> Frame {
    let g = gray_image(w, h, f);
    Frame { width: w, height: h, pixels: g.pixels, pixel_um, bit_depth: 8 }
}

fn at(um: f64) -> Option<(f64, PixelSizeSource)> {
    Some((um, PixelSizeSource::Cli))
}

/// A PNG chunk with its CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG header claiming `w` x `h` 8-bit gray pixels, with a token of image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0]));
    out.extend(chunk(b"IEND", &[]));
    out
}

/// A gray PNG with a pHYs chunk of `x` x `y` pixels per unit (1: metre, 0: unspecified).
fn png_with_phys(x: u32, y: u32, unit: png::Unit) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 4, 3);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_pixel_dims(Some(png::PixelDimensions { xppu: x, yppu: y, unit }));
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&[100; 12]).unwrap();
    w.finish().unwrap();
    out
}

fn tiff_with_resolution(unit: tiff::tags::ResolutionUnit, x: u32, y: u32) -> Vec<u8> {
    use tiff::encoder::{Rational, TiffEncoder, colortype::Gray8};
    let mut out = Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut out).unwrap();
    let mut img = enc.new_image::<Gray8>(4, 3).unwrap();
    img.resolution_unit(unit);
    img.x_resolution(Rational { n: x, d: 1 });
    img.y_resolution(Rational { n: y, d: 1 });
    img.write_data(&[100; 12]).unwrap();
    out.into_inner()
}

fn jpeg_with_density(density: image::codecs::jpeg::PixelDensity) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    enc.set_pixel_density(density);
    enc.write_image(&[100; 64], 8, 8, image::ExtendedColorType::L8).unwrap();
    out
}

fn spec(mode: Mode, machines: &[&str], parts: u32, bit_depth: u8) -> DatasetSpec {
    let names: Vec<String> = machines.iter().map(|s| s.to_string()).collect();
    DatasetSpec {
        fleet: Fleet::paper(7).select(&names).unwrap(),
        seed: 7,
        parts_per_machine: parts,
        first_build: 1,
        imaging: ImagingSpec {
            mode,
            pixel_um: if mode == Mode::Scanner { 10.6 } else { 3.0 },
            microscope_px: (1280, 960),
            bit_depth,
        },
        jpeg_quality: None,
        split: SplitFractions::default(),
        layout: Layout::Flat,
        views: 1,
    }
}

/// One machine of each process.
const FOUR: [&str; 4] = ["S450-1", "M2-1", "F3B-1", "4200-1"];

/// Scans of the first `n` parts of `spec` with the given design (any design: None).
fn scans(spec: &DatasetSpec, design: Option<Design>, n: usize) -> Vec<Scan> {
    spec.plan().iter().filter(|p| design.is_none_or(|d| p.design == d)).take(n).map(|p| spec.render(p)).collect()
}

/// A scan as the daemon receives it: encoded to PNG and decoded.
fn through_png(scan: &Scan) -> Frame {
    decode_frame(&scan.encode(None).unwrap()).unwrap()
}

fn crop(f: &Frame, x0: u32, y0: u32, w: u32, h: u32) -> Frame {
    let pixels = (y0..y0 + h).flat_map(|y| (x0..x0 + w).map(move |x| f.pixels[(y * f.width + x) as usize])).collect();
    Frame { width: w, height: h, pixels, pixel_um: f.pixel_um, bit_depth: f.bit_depth }
}

/// Exposure, envelope and part surface with the shipped model's geometry and defaults.
fn judge(f: &Frame, mode: MaskMode) -> Result<PartSurface, Rejection> {
    check_exposure(f)?;
    let (img, _) = fit_to_model(f, f.pixel_um.map(|um| (um, PixelSizeSource::File)), &SHIPPED)?;
    PartSurface::new(img, SHIPPED.roi_px, MIN_FG, mode, DEFAULT_MIN_SURFACE_ROIS)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A test image: name, image, bits per sample, and the expected intensity at (x, y).
type Case = (&'static str, DynamicImage, u8, Box<dyn Fn(u32, u32) -> f32>);

#[test]
fn decodes_png_jpeg_tiff_in_8_and_16_bit_gray_and_colour() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (37u32, 23u32);
    // Smooth ramps, so that JPEG keeps them within a few grey levels.
    let v8 = |x: u32, y: u32| (x * 5 + y * 3) as u8;
    let v16 = |x: u32, y: u32| (x * 1000 + y * 1200) as u16;
    let rgb8 = move |x: u32, y: u32| [v8(x, y), 255 - v8(x, y), (x * 6) as u8];
    let luma = |p: [u64; 3]| (19595 * p[0] + 38470 * p[1] + 7471 * p[2] + 0x8000) >> 16;
    let images: Vec<Case> = vec![
        (
            "L8",
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([v8(x, y)]))),
            8,
            Box::new(move |x, y| f32::from(v8(x, y)) / 255.0),
        ),
        (
            "L16",
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([v16(x, y)]))),
            16,
            Box::new(move |x, y| f32::from(v16(x, y)) / 65535.0),
        ),
        (
            "RGB8",
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| Rgb(rgb8(x, y)))),
            8,
            Box::new(move |x, y| luma(rgb8(x, y).map(u64::from)) as f32 / 255.0),
        ),
        (
            "RGBA16",
            DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| Rgba([v16(x, y), v16(y, x), 300, 7]))),
            16,
            Box::new(move |x, y| luma([v16(x, y), v16(y, x), 300].map(u64::from)) as f32 / 65535.0),
        ),
    ];
    for (name, img, depth, expect) in &images {
        for format in [ImageFormat::Png, ImageFormat::Tiff, ImageFormat::Jpeg] {
            let lossy = format == ImageFormat::Jpeg;
            if lossy && (*depth == 16 || name.starts_with("RGBA")) {
                continue; // JPEG holds 8-bit gray or RGB only
            }
            // A misleading extension: the content decides.
            let path = dir.path().join(format!("{name}-{format:?}.bmp"));
            std::fs::write(&path, encode(img, format)).unwrap();
            let f = read_frame(&path).unwrap_or_else(|e| panic!("{name} {format:?}: {e}"));
            assert_eq!((f.width, f.height), (w, h), "{name} {format:?}");
            assert_eq!(f.bit_depth, if lossy { 8 } else { *depth }, "{name} {format:?}");
            assert_eq!(f.pixel_um, None, "{name} {format:?} records no resolution");
            let mut worst = 0f32;
            for y in 0..h {
                for x in 0..w {
                    worst = worst.max((f.pixels[(y * w + x) as usize] - expect(x, y)).abs());
                }
            }
            let tolerance = if lossy { 0.06 } else { 1e-6 };
            assert!(worst <= tolerance, "{name} {format:?}: off by {worst}");
        }
    }
}

#[test]
fn recorded_resolutions_give_the_pixel_size() {
    use image::codecs::jpeg::{PixelDensity, PixelDensityUnit};
    use tiff::tags::ResolutionUnit;
    let um = |bytes: &[u8]| decode_frame(bytes).unwrap().pixel_um;
    let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1e-9 * want);

    assert!(close(um(&png_with_phys(94_340, 94_340, png::Unit::Meter)), 1e6 / 94_340.0));
    assert_eq!(um(&png_with_phys(94_340, 94_340, png::Unit::Unspecified)), None, "aspect only");
    assert_eq!(um(&png_with_phys(94_340, 47_170, png::Unit::Meter)), None, "non-square pixels");
    let mean = 0.5 * (1e6 / 94_340.0 + 1e6 / 94_900.0);
    assert!(close(um(&png_with_phys(94_340, 94_900, png::Unit::Meter)), mean), "0.6 % apart is square");

    assert!(close(um(&tiff_with_resolution(ResolutionUnit::Inch, 2400, 2400)), 25_400.0 / 2400.0));
    assert!(close(um(&tiff_with_resolution(ResolutionUnit::Centimeter, 1000, 1000)), 10.0));
    assert_eq!(um(&tiff_with_resolution(ResolutionUnit::None, 1000, 1000)), None);

    assert!(close(um(&jpeg_with_density(PixelDensity::dpi(2400))), 25_400.0 / 2400.0));
    let per_cm = PixelDensity { density: (3333, 3333), unit: PixelDensityUnit::Centimeters };
    assert!(close(um(&jpeg_with_density(per_cm)), 10_000.0 / 3333.0));
    assert_eq!(um(&jpeg_with_density(PixelDensity::default())), None, "JFIF aspect ratio only");
}

/// A frame's intensities back on the integer scale they were recorded on.
fn levels(f: &Frame, full: f32) -> Vec<u16> {
    f.pixels.iter().map(|v| (v * full).round() as u16).collect()
}

#[test]
fn simulated_files_record_their_pixel_size_and_keep_their_pixels() {
    // Microscope frames (small, to keep the test fast) as PNG and JPEG, and one 16-bit scan.
    let mut s = spec(Mode::Microscope, &FOUR, 1, 8);
    s.imaging.microscope_px = (96, 64);
    s.imaging.pixel_um = 2.7;
    for jpeg in [None, Some(92)] {
        for plan in s.plan() {
            let scan = s.render(&plan);
            let f = decode_frame(&scan.encode(jpeg).unwrap()).unwrap();
            let um = f.pixel_um.expect("the simulator records its pixel size");
            // pHYs: round(1e6 / 2.7) px/m; JFIF: round(25400 / 2.7) dpi, the closer of dpi and dots/cm.
            let tolerance = if jpeg.is_some() { 1e-4 } else { 1e-5 };
            assert!((um / 2.7 - 1.0).abs() < tolerance, "{}: {um} µm", plan.record.serial);
            if jpeg.is_none() {
                assert_eq!(levels(&f, 255.0), scan.pixels, "PNG pixels are the simulator's");
            }
        }
    }
    let mut s16 = spec(Mode::Microscope, &FOUR[..1], 1, 16);
    s16.imaging.microscope_px = (40, 30);
    let scan = s16.render(&s16.plan()[0]);
    let f = through_png(&scan);
    assert_eq!(f.bit_depth, 16);
    assert!((f.pixel_um.unwrap() - 3.0).abs() < 1e-5);
    assert_eq!(levels(&f, 65535.0), scan.pixels);
}

#[test]
fn broken_files_are_named_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let message = |p: &Path| {
        let e = read_frame(p).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&p.display().to_string()), "{text:?} names the file");
        (e, text)
    };

    let missing = dir.path().join("nowhere.png");
    let (e, text) = message(&missing);
    assert!(matches!(e, FrameError::Io { .. }) && text.contains("check the path"), "{text}");

    let (e, text) = message(dir.path());
    assert!(matches!(e, FrameError::Io { .. }), "a directory: {text}");

    let (e, text) = message(&write("notes.png", b"exposure 40 ms, part 17\n"));
    assert!(matches!(e, FrameError::NotAnImage { .. }), "{text}");
    assert!(text.contains("starts with the text \"exposure 40 ms") && text.contains("PNG, JPEG and TIFF"), "{text}");

    let (e, text) = message(&write("empty.png", b""));
    assert!(matches!(e, FrameError::NotAnImage { .. }) && text.contains("empty"), "{text}");

    let (e, text) = message(&write("binary.png", &[0, 1, 2, 3, 250, 251, 252, 253, 9]));
    assert!(matches!(e, FrameError::NotAnImage { .. }) && text.contains("00 01 02 03"), "{text}");

    let (e, text) = message(&write("anim.png", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"));
    assert!(matches!(e, FrameError::UnsupportedFormat { .. }) && text.contains("GIF"), "{text}");

    let noise = DynamicImage::ImageLuma8(ImageBuffer::from_fn(64, 64, |x, y| Luma([((x * 131 + y * 71) % 251) as u8])));
    let png = encode(&noise, ImageFormat::Png);
    let (e, text) = message(&write("cut.png", &png[..png.len() / 2]));
    assert!(matches!(e, FrameError::Corrupt { .. }) && text.contains("truncated or corrupt PNG"), "{text}");

    let (e, text) = message(&write("zero.png", &png_header(0, 10)));
    assert!(matches!(e, FrameError::Empty { width: 0, height: 10, .. }), "{text}");

    let (e, text) = message(&write("wide.png", &png_header(30_000, 100)));
    assert!(matches!(e, FrameError::TooLarge { .. }) && text.contains("too large"), "{text}");
    let (e, text) = message(&write("huge.png", &png_header(20_000, 20_000)));
    assert!(matches!(e, FrameError::TooLarge { .. }) && text.contains("20000x20000"), "{text}");

    // Float samples: decodable TIFF, but not an intensity scale amfp knows.
    let mut tiff = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut tiff)
        .unwrap()
        .write_image::<tiff::encoder::colortype::RGB32Float>(2, 2, &[0.5f32; 12])
        .unwrap();
    let (e, text) = message(&write("float.tif", &tiff.into_inner()));
    assert!(matches!(e, FrameError::UnsupportedPixelFormat { .. }), "{text}");

    // decode_frame names its input too.
    assert!(decode_frame(b"{}").unwrap_err().to_string().starts_with("image data"));
}

// ---------------------------------------------------------------------------------------------
// Exposure and envelope
// ---------------------------------------------------------------------------------------------

#[test]
fn exposure_refuses_blank_white_and_dark_frames() {
    let code = |f: &Frame| check_exposure(f).map_err(|r| r.code());
    assert_eq!(code(&frame(50, 40, None, |_, _| 0.0)), Err("blank"));
    assert_eq!(code(&frame(50, 40, None, |_, _| 0.5)), Err("blank"));
    assert_eq!(code(&frame(50, 40, None, |_, _| 1.0)), Err("saturated"), "all white is over-exposed, not blank");
    assert_eq!(code(&frame(50, 40, None, |x, _| if x < 15 { 1.0 } else { 0.5 })), Err("saturated"), "30 % clipped");
    assert_eq!(code(&frame(50, 40, None, |x, _| if x < 10 { 1.0 } else { 0.5 })), Ok(()), "20 % clipped");
    let dark_noise = |x: u32, y: u32| ((x * 7919 + y * 104_729) % 97) as f32 / 97.0 * 0.04;
    assert_eq!(code(&frame(50, 40, None, dark_noise)), Err("too_dark"));
}

#[test]
fn envelope_refuses_unknown_and_coarse_pixels_and_small_views() {
    let f = frame(400, 300, None, |x, y| ((x + y) % 7) as f32 / 7.0);
    assert_eq!(fit_to_model(&f, None, &SHIPPED).unwrap_err(), Rejection::PixelSizeUnknown);
    assert_eq!(fit_to_model(&f, at(f64::NAN), &SHIPPED).unwrap_err(), Rejection::PixelSizeUnknown);

    match fit_to_model(&f, Some((21.2, PixelSizeSource::File)), &SHIPPED).unwrap_err() {
        Rejection::PixelTooCoarse { camera_um, model_um, pixel_source, min_dpi } => {
            assert_eq!((camera_um, model_um, pixel_source), (21.2, 10.6, PixelSizeSource::File));
            assert!((min_dpi - 2396.2).abs() < 0.1, "{min_dpi}");
        }
        other => panic!("{other:?}"),
    }
    // 0.4 % coarser is the model's pixel size, used as it is.
    let (img, env) = fit_to_model(&f, at(10.64), &SHIPPED).unwrap();
    assert!(!env.resampled && env.ok && img.pixels == f.pixels && img.pixel_um == 10.6);
    assert!((env.sample_mm - 2.0352).abs() < 1e-9 && (env.view_mm[0] - 4.256).abs() < 1e-9);
    assert!(fit_to_model(&f, at(10.66), &SHIPPED).is_err(), "0.6 % coarser is refused");

    // Finer pixels are resampled: 3.0 µm -> floor(400 * 3 / 10.6) x floor(300 * 3 / 10.6).
    let big = frame(1280, 960, None, |x, y| ((x ^ y) % 13) as f32 / 13.0);
    let (img, env) = fit_to_model(&big, at(3.0), &SHIPPED).unwrap();
    assert!(env.resampled && (env.scale - 3.0 / 10.6).abs() < 1e-12);
    assert_eq!((img.width, img.height), (362, 271));
    assert!(img.pixels.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));

    // A microscope at 3 µm with a 640x480 frame sees 1.92 x 1.44 mm: less than one 2.04 mm ROI.
    let small = frame(640, 480, None, |x, _| x as f32 / 640.0);
    match fit_to_model(&small, at(3.0), &SHIPPED).unwrap_err() {
        Rejection::ViewTooSmall { view_w_mm, view_h_mm, sample_mm } => {
            assert!(
                (view_w_mm - 1.92).abs() < 1e-9 && (view_h_mm - 1.44).abs() < 1e-9 && (sample_mm - 2.0352).abs() < 1e-9
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn whole_factors_average_blocks() {
    // 5.3 µm to 10.6 µm: 2x2 block means over the image cropped to even sides (5x5 -> 2x2).
    let f = frame(5, 5, None, |x, y| (x + 10 * y) as f32);
    let (img, _) = fit_to_model(&f, at(5.3), &ModelGeometry { pixel_um: 10.6, roi_px: 1 }).unwrap();
    assert_eq!((img.width, img.height), (2, 2));
    assert_eq!(img.pixels, vec![5.5, 7.5, 25.5, 27.5]); // e.g. (0 + 1 + 10 + 11) / 4
    // A recorded 5.300007 µm (pHYs rounding) is still a factor of 2.
    let (img2, _) = fit_to_model(&f, at(1e6 / 188_679.0), &ModelGeometry { pixel_um: 10.6, roi_px: 1 }).unwrap();
    assert_eq!(img2.pixels, img.pixels);
}

#[test]
fn other_factors_match_pillow_box() {
    // training's resample(img, 1.0, 1.5) on img[y][x] = x + 10 y (6 x 4), via Pillow BOX:
    // output 4 x 2; along x the scale is 6/4 = 1.5 and an output pixel averages the input
    // pixels whose centres fall in its window ((0, 1.5] -> x 0, 1; (1.5, 3] -> x 2; ...),
    // along y the scale is 4/2 = 2 (rows 0-1, 2-3).
    let f = frame(6, 4, None, |x, y| (x + 10 * y) as f32);
    let img = optics::area_resample(&GrayF32 { width: 6, height: 4, pixels: f.pixels, pixel_um: 1.0 }, 1.5);
    assert_eq!((img.width, img.height), (4, 2));
    assert_eq!(img.pixels, vec![5.5, 7.0, 8.5, 10.0, 25.5, 27.0, 28.5, 30.0]);
    // resample(img, 1.0, 2.5) on x^2 + 7 y (7 x 5): [[10.5, 32.666668], [28.0, 50.166668]].
    let f = frame(7, 5, None, |x, y| (x * x + 7 * y) as f32);
    let img = optics::area_resample(&GrayF32 { width: 7, height: 5, pixels: f.pixels, pixel_um: 1.0 }, 2.5);
    let want = [10.5, 32.666_668, 28.0, 50.166_668];
    assert_eq!((img.width, img.height, img.pixel_um), (2, 2, 2.5));
    assert!(img.pixels.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", img.pixels);
}

// ---------------------------------------------------------------------------------------------
// Part mask, surface and ROIs
// ---------------------------------------------------------------------------------------------

#[test]
fn otsu_agrees_with_training() {
    // Values 0, 0, 0, 1, 1, 2: 256 bins over [0, 2]; splitting {0} | {1, 2} gives a between-class
    // variance of 0.25 (1.3346 - 0.0039)^2 = 0.4427, {0, 1} | {2} only 0.3521, so the threshold is
    // the upper edge of bin 0, 2/256; eta = 0.4427 / 0.5521. training's otsu(): (0.0078125, 0.80188).
    let o = otsu(&[0.0, 0.0, 0.0, 1.0, 1.0, 2.0]);
    assert_eq!(o.threshold, 0.007_812_5);
    assert!((o.eta - 0.801_877_550_769_721_9).abs() < 1e-12, "{}", o.eta);
    // Two levels separate perfectly: threshold f32(0.2 + 0.6 / 256), eta 1.
    let o = otsu(&[0.2, 0.2, 0.8, 0.2, 0.8]);
    assert_eq!(o.threshold, 0.202_343_75);
    assert!((o.eta - 1.0).abs() < 1e-12);
    assert_eq!(otsu(&[0.3; 9]).eta, 0.0, "a constant image has no classes");
}

#[test]
fn simulated_microscope_frames_are_all_surface() {
    // One machine of each process, the simulator's default microscope (1280x960 at 3 µm), one
    // frame in 16 bit: the shipped model's envelope and default surface must accept them all.
    let mut frames: Vec<Frame> = scans(&spec(Mode::Microscope, &FOUR, 1, 8), None, 4).iter().map(through_png).collect();
    frames.extend(scans(&spec(Mode::Microscope, &FOUR[3..], 1, 16), None, 1).iter().map(through_png));
    for f in &frames {
        let s = judge(f, MaskMode::Auto).unwrap_or_else(|r| panic!("refused: {r}"));
        assert_eq!(s.mask_mode(), MaskMode::Full);
        assert_eq!((s.width(), s.height()), (362, 271));
        assert!((s.surface_rois() - 362.0 * 271.0 / 192.0 / 192.0).abs() < 1e-9);
        assert_eq!(s.valid_corners(), 171 * 80);
    }
}

#[test]
fn scanner_background_alone_is_no_part() {
    // Plugs (a D-shaped disc with a 4 mm bore, centred in the scan): the whole scan is a part,
    // a 240 px square inside the bore and a 200 px square in a corner are empty lid.
    let plugs = scans(&spec(Mode::Scanner, &["S450-1", "M2-1"], 6, 8), Some(Design::Plug), 2);
    assert_eq!(plugs.len(), 2);
    for scan in &plugs {
        let f = through_png(scan);
        let s = judge(&f, MaskMode::Auto).unwrap_or_else(|r| panic!("whole scan refused: {r}"));
        assert_eq!(s.mask_mode(), MaskMode::Otsu);
        assert!(s.surface_rois() > 20.0, "{}", s.surface_rois());

        let (cx, cy) = (f.width / 2, f.height / 2);
        for (x0, y0, side) in [(cx - 120, cy - 120, 240), (0, 0, 200), (f.width - 200, f.height - 200, 200)] {
            let bg = crop(&f, x0, y0, side, side);
            for mode in [MaskMode::Auto, MaskMode::Otsu] {
                match judge(&bg, mode) {
                    Err(Rejection::NoPart { detail }) => {
                        assert!(detail.contains("background") || detail.contains("stands out"), "{detail}")
                    }
                    other => panic!("background at ({x0}, {y0}) under {mode:?}: {other:?}"),
                }
            }
        }
    }
    // A frame of dark noise at the lid's level (0.17-0.23) is no part either.
    let lid = frame(300, 300, Some(10.6), |x, y| 0.17 + ((x * 7919 + y * 104_729) % 101) as f32 / 100.0 * 0.06);
    for mode in [MaskMode::Auto, MaskMode::Otsu] {
        assert_eq!(judge(&lid, mode).map(|_| ()).map_err(|r| r.code()), Err("no_part"), "{mode:?}");
    }
    // ... unless the operator says the whole frame is surface.
    assert!(judge(&lid, MaskMode::Full).is_ok());
}

#[test]
fn thin_or_small_parts_are_too_little_surface() {
    let part = |x0: u32, x1: u32, y0: u32, y1: u32| {
        move |x: u32, y: u32| {
            let on = (x0..x1).contains(&x) && (y0..y1).contains(&y);
            if on { 0.7 + 0.01 * ((x + y) % 3) as f32 } else { 0.2 }
        }
    };
    // A bar 100 px wide: no 192 px ROI is 80 % on it, though it covers a quarter of the frame.
    let bar = gray_image(400, 400, part(150, 250, 0, 400));
    match PartSurface::new(bar, 192, MIN_FG, MaskMode::Auto, 2.0).unwrap_err() {
        Rejection::TooLittleSurface { surface_rois, needed, sample_mm } => {
            assert_eq!((surface_rois, needed), (0.0, 2.0));
            assert!((sample_mm - 2.0352).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    // A 180 x 200 patch: ROIs 80 % on it exist, but together they cover only 1.74 ROI areas
    // (numpy on the same mask: 2773 valid corners, 1.7384).
    let patch = gray_image(500, 500, part(100, 280, 100, 300));
    let s = PartSurface::new(patch.clone(), 192, MIN_FG, MaskMode::Otsu, 0.0).unwrap();
    assert_eq!(s.valid_corners(), 2773);
    assert!((s.surface_rois() - 1.738_389_756_944_444_4).abs() < 1e-12, "{}", s.surface_rois());
    assert_eq!(PartSurface::new(patch, 192, MIN_FG, MaskMode::Otsu, 2.0).unwrap_err().code(), "too_little_surface");
    // A speck: nothing fits and almost nothing is bright.
    let speck = gray_image(400, 400, part(10, 20, 10, 20));
    assert_eq!(PartSurface::new(speck, 192, MIN_FG, MaskMode::Otsu, 2.0).unwrap_err().code(), "no_part");
    // An image smaller than an ROI.
    let tiny = gray_image(100, 300, |_, _| 0.5);
    assert_eq!(PartSurface::new(tiny, 192, MIN_FG, MaskMode::Full, 0.0).unwrap_err().code(), "view_too_small");
}

/// Foreground pixels in the ROI at `c`, counted independently of the sampler.
fn roi_foreground(img: &GrayF32, threshold: f32, c: (u32, u32), r: u32) -> u32 {
    let mut n = 0;
    for y in c.1..c.1 + r {
        for x in c.0..c.0 + r {
            n += u32::from(img.pixels[(y * img.width + x) as usize] > threshold);
        }
    }
    n
}

#[test]
fn sampling_is_reproducible_and_on_the_part() {
    // A simulated plug (many valid corners: rejection sampling), and a square just larger than
    // an ROI that must lie wholly on it (81 valid corners out of 43681: listed).
    let scan = &scans(&spec(Mode::Scanner, &["F3B-1"], 6, 8), Some(Design::Plug), 1)[0];
    let f = through_png(scan);
    let (plug, _) = fit_to_model(&f, at(10.6), &SHIPPED).unwrap();
    let square =
        gray_image(400, 400, |x, y| if (100..300).contains(&x) && (100..300).contains(&y) { 0.6 } else { 0.2 });
    for (img, min_fg) in [(plug, MIN_FG), (square, 1.0)] {
        let need = (f64::from(min_fg) * 192.0 * 192.0).ceil() as u32;
        let threshold = otsu(&img.pixels).threshold;
        let s = PartSurface::new(img.clone(), 192, min_fg, MaskMode::Otsu, 0.5).unwrap();
        let a = s.sample(64, 11);
        assert_eq!(a.len(), 64);
        assert_eq!(a, s.sample(64, 11), "same seed, same ROIs");
        assert_ne!(a, s.sample(64, 12), "another seed, other ROIs");
        for &c in &a {
            assert!(s.is_valid(c));
            assert!(roi_foreground(&img, threshold, c, 192) >= need, "ROI at {c:?} is under {min_fg} part");
        }
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 32, "{} distinct corners of 64", distinct.len());
    }
}

#[test]
fn rois_are_normalised_and_repeated_per_channel() {
    let img = gray_image(300, 250, |x, y| ((x * 3 + y * 5) % 17) as f32 / 17.0 * 0.5 + 0.4);
    let s = PartSurface::new(img.clone(), 192, MIN_FG, MaskMode::Full, 1.0).unwrap();
    let r = 192usize;
    let mut out = vec![0f32; 3 * r * r];
    s.write_roi((7, 40), 0.5, 0.25, 3, &mut out);
    for (dy, dx) in [(0usize, 0usize), (191, 191), (17, 100)] {
        let v = img.pixels[(40 + dy) * 300 + 7 + dx];
        let want = (v - 0.5) / 0.25;
        for c in 0..3 {
            assert_eq!(out[c * r * r + dy * r + dx], want);
        }
    }
    let mut one = vec![0f32; r * r];
    s.write_roi((108, 58), 0.0, 1.0, 1, &mut one);
    assert_eq!(one[r * r - 1], img.pixels[(58 + 191) * 300 + 108 + 191]);
}

// ---------------------------------------------------------------------------------------------
// Robustness: nothing panics, outputs are finite
// ---------------------------------------------------------------------------------------------

fn seed_image(format: u8) -> Vec<u8> {
    let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(24, 16, |x, y| Luma([((x * 37 + y * 11) % 256) as u8])));
    match format % 4 {
        0 => encode(&img, ImageFormat::Png),
        1 => encode(&img, ImageFormat::Jpeg),
        2 => encode(&img, ImageFormat::Tiff),
        _ => png_with_phys(39_370, 39_370, png::Unit::Meter),
    }
}

/// Cases per property: 256 in the test suite; a longer fuzzing run sets PROPTEST_CASES
/// (docs/preprocessing.md, "Fuzzing"). Failures are kept in tests/preprocess.proptest-regressions
/// and replayed first on every run.
fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = decode_frame(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn damaged_images_decode_or_fail_cleanly(
        format in 0u8..4,
        cut in 0usize..2000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let mut bytes = seed_image(format);
        for (pos, b) in flips {
            let n = bytes.len();
            bytes[pos % n] = b;
        }
        bytes.truncate(cut.max(1));
        if let Ok(f) = decode_frame(&bytes) {
            prop_assert_eq!(f.pixels.len(), (f.width * f.height) as usize);
            prop_assert!(f.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn small_images_pass_the_pipeline_without_panic(
        w in 1u32..80,
        h in 1u32..80,
        pattern in 0u8..4,
        seed in any::<u32>(),
        sixteen in any::<bool>(),
        pixel_um in prop_oneof![1 => Just(None), 7 => (0.5f64..12.0).prop_map(Some)],
        roi in 1u32..24,
        min_fg in 0.0f32..=1.0,
        mode in prop_oneof![Just(MaskMode::Auto), Just(MaskMode::Otsu), Just(MaskMode::Full)],
        min_surface in 0.0f64..3.0,
        n in 0usize..20,
        channels in prop_oneof![Just(1usize), Just(3usize)],
    ) {
        let value = |x: u32, y: u32| -> u32 {
            let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed).wrapping_mul(2_246_822_519) >> 16;
            match pattern {
                0 => noise,
                1 => if x > w / 3 && y > h / 4 { 50_000 + noise % 4000 } else { 9000 + noise % 3000 },
                2 => seed % 65536,
                _ => (x * 65535 / w.max(1)) ^ (noise & 0xff),
            }
        };
        let img = if sixteen {
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([(value(x, y) % 65536) as u16])))
        } else {
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([(value(x, y) % 256) as u8])))
        };
        let f = decode_frame(&encode(&img, ImageFormat::Png)).unwrap();
        let _ = check_exposure(&f);
        let geom = ModelGeometry { pixel_um: 10.6, roi_px: roi };
        let Ok((img, env)) = fit_to_model(&f, pixel_um.map(|um| (um, PixelSizeSource::Config)), &geom) else {
            return Ok(());
        };
        prop_assert!(env.scale.is_finite() && env.sample_mm.is_finite());
        prop_assert!(img.pixels.iter().all(|v| v.is_finite()));
        let Ok(s) = PartSurface::new(img, roi, min_fg, mode, min_surface) else {
            return Ok(());
        };
        prop_assert!(s.surface_rois() >= min_surface && s.valid_corners() > 0);
        let corners = s.sample(n, u64::from(seed));
        prop_assert_eq!(corners.len(), n);
        let len = channels * (roi * roi) as usize;
        let mut out = vec![0f32; len];
        for c in corners {
            prop_assert!(s.is_valid(c));
            s.write_roi(c, 0.3, 0.2, channels, &mut out);
            prop_assert!(out.iter().all(|v| v.is_finite()));
        }
    }
}
