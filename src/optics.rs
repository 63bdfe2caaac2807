//! The optical envelope: can this frame be judged by this model, and at what scale?
//!
//! A model has learned textures at one pixel size (`amfp.pixel_size_um`) in ROIs of one size
//! (`amfp.roi_px`). A frame must be exposed well enough to show texture ([`check_exposure`]),
//! resolve at least the model's pixel size, and show at least one ROI's worth of view; a frame
//! with finer pixels is area-resampled to the model's pixel size exactly as training resamples
//! scans ([`fit_to_model`], `training/amfp_train/dataset.py: resample`). See
//! docs/preprocessing.md for the rules and how the thresholds were chosen.

use serde::Serialize;

use crate::capture::Frame;
use crate::reject::{PixelSizeSource, Rejection};

/// A gray image at a known pixel size: a frame brought to the model's scale.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayF32 {
    pub width: u32,
    pub height: u32,
    /// `width * height` intensities, row-major, in [0, 1] for frames from a camera or a file.
    pub pixels: Vec<f32>,
    /// µm per pixel on the part; after [`fit_to_model`], the model's.
    pub pixel_um: f64,
}

impl GrayF32 {
    /// Side of the view in mm, `[width, height]`.
    pub fn view_mm(&self) -> [f64; 2] {
        [f64::from(self.width) * self.pixel_um / 1000.0, f64::from(self.height) * self.pixel_um / 1000.0]
    }
}

/// What the envelope needs to know about a model: the scale and size of what it looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelGeometry {
    /// µm per pixel of the model's input (`amfp.pixel_size_um`).
    pub pixel_um: f64,
    /// ROI side in model pixels (`amfp.roi_px`).
    pub roi_px: u32,
}

impl ModelGeometry {
    /// Side of the patch of surface one ROI shows, mm.
    pub fn sample_mm(&self) -> f64 {
        f64::from(self.roi_px) * self.pixel_um / 1000.0
    }
}

/// How a frame was fitted to a model: reported with every result (the Attribution's
/// `envelope`), so that a verdict can be traced to the camera's scale and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// µm per pixel of the frame as captured.
    pub camera_pixel_um: f64,
    /// Who said so: `--pixel-um`, the file, or the configuration.
    pub pixel_source: PixelSizeSource,
    /// µm per pixel of the model's input.
    pub model_pixel_um: f64,
    /// camera / model pixel size: 1 for a native frame, below 1 for a finer camera.
    pub scale: f64,
    /// Side of one ROI on the part, mm.
    pub sample_mm: f64,
    /// The frame's field of view on the part, mm, `[width, height]`.
    pub view_mm: [f64; 2],
    /// Whether the frame was resampled (its pixel size differs from the model's by more than
    /// [`SAME_PIXEL_TOLERANCE`]).
    pub resampled: bool,
    /// Always true: [`fit_to_model`] returns an envelope only for frames that fit. A caller
    /// reporting a frame refused later (no part in view) may set it false.
    pub ok: bool,
}

/// Frames whose max - min is below this (4 grey levels of 8 bits) carry no texture at all.
/// Simulated frames span at least 0.10 (microscope) and 0.37 (scanner).
pub const BLANK_RANGE: f32 = 4.0 / 255.0;

/// A pixel at or above this is clipped white.
pub const SATURATED_LEVEL: f32 = 0.995;

/// More than this fraction of clipped pixels: the exposure is too high. Simulated frames have
/// none (their brightest pixel is 0.94); 25 % leaves room for specular glints on real parts.
pub const SATURATED_FRACTION: f64 = 0.25;

/// A frame whose 99th percentile is below this is too dark: its texture is buried in read
/// noise. Simulated frames' 99th percentile is at least 0.45 (the darkest material, RPU 70,
/// under the microscope); an empty scanner lid alone reaches 0.2.
pub const TOO_DARK_P99: f32 = 0.05;

/// Relative difference between the camera's and the model's pixel size within which the frame
/// is used as it is: 0.5 % is below the local strain a part's texture shows anyway (1.2 % in the
/// simulator), and covers the rounding of recorded resolutions (PNG pHYs, whole dpi).
pub const SAME_PIXEL_TOLERANCE: f64 = 0.005;

/// A resampling factor within this of a whole number is treated as that number (exact block
/// means): recorded resolutions are rounded (5.3 µm in pHYs reads back as 5.300007 µm).
pub const INTEGER_FACTOR_TOLERANCE: f64 = 1e-3;

/// Refuses frames that cannot show texture: mostly clipped white, blank, or too dark.
/// Run it on the frame as captured, before the envelope, so that its verdict does not depend on
/// the model.
pub fn check_exposure(frame: &Frame) -> Result<(), Rejection> {
    let px = &frame.pixels;
    if px.is_empty() {
        return Err(Rejection::Blank { level: 0.0 });
    }
    let levels = Levels::of(px);
    // Clipping first: an all-white frame is over-exposed (lower the light), not blank.
    let clipped = levels.saturated as f64 / px.len() as f64;
    if clipped > SATURATED_FRACTION {
        return Err(Rejection::Saturated { percent: 100.0 * clipped });
    }
    if levels.max - levels.min < BLANK_RANGE {
        return Err(Rejection::Blank { level: f64::from(0.5 * (levels.min + levels.max)) });
    }
    let p99 = levels.percentile(0.99);
    if p99 < TOO_DARK_P99 {
        return Err(Rejection::TooDark { p99: f64::from(p99) });
    }
    Ok(())
}

/// What the exposure check needs of a frame, gathered in one pass over its pixels: range,
/// clipped count and a histogram for percentiles.
struct Levels {
    min: f32,
    max: f32,
    saturated: usize,
    /// Pixel counts in [`Levels::BINS`] bins over [0, 1].
    hist: Vec<u32>,
    count: usize,
}

const _: () = assert!(Levels::BINS.is_power_of_two());

impl Levels {
    /// A power of two: bin indices are masked with `BINS - 1`.
    const BINS: usize = 4096;

    fn of(px: &[f32]) -> Self {
        // The range and the clipped count in eight independent lanes (vector min, max and
        // compare), the histogram in four sub-histograms (pixel i counts into i % 4, summed at
        // the end), so that neighbouring pixels of one level do not wait on each other's
        // increment. The same counts as a plain loop, about twice as fast.
        const LANES: usize = 8;
        const SUBS: usize = 4;
        let top = (Self::BINS - 1) as f32;
        // The bin of v clamped to [0, 1] (NaN: f32::max returns 0.0, bin 0). Clamping after the
        // scaling and masking the index leave no check or saturating conversion in the loop.
        let bin = |v: f32| ((v * top).max(0.0).min(top) as u32 as usize) & (Self::BINS - 1);
        let mut sub = vec![[0u32; Self::BINS]; SUBS];
        let (mut lo, mut hi, mut clipped) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES], [0usize; LANES]);
        let chunks = px.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for k in 0..LANES {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k]);
                clipped[k] += usize::from(c[k] >= SATURATED_LEVEL);
            }
            let mut idx = [0usize; LANES];
            for (i, &v) in idx.iter_mut().zip(c) {
                *i = bin(v);
            }
            for (k, &i) in idx.iter().enumerate() {
                sub[k % SUBS][i] += 1;
            }
        }
        for (k, &v) in rest.iter().enumerate() {
            lo[k] = lo[k].min(v);
            hi[k] = hi[k].max(v);
            clipped[k] += usize::from(v >= SATURATED_LEVEL);
            sub[k % SUBS][bin(v)] += 1;
        }
        let mut hist = vec![0u32; Self::BINS];
        for s in &sub {
            for (h, &c) in hist.iter_mut().zip(s) {
                *h += c;
            }
        }
        Self {
            min: lo.iter().copied().fold(f32::INFINITY, f32::min),
            max: hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            saturated: clipped.iter().sum(),
            hist,
            count: px.len(),
        }
    }

    /// The `q`-quantile of the values (the value at rank floor(q * (n - 1))), to 1/4096 of full
    /// scale: exact enough for exposure checks, and O(n) without a copy.
    fn percentile(&self, q: f64) -> f32 {
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.hist.iter().enumerate() {
            seen += u64::from(c);
            if seen > rank {
                return i as f32 / (Self::BINS - 1) as f32;
            }
        }
        1.0
    }
}

/// Brings a frame to the model's pixel size, or says why it cannot be judged by this model.
///
/// `pixel` is the frame's pixel size and who gave it; the caller decides the precedence
/// (`--pixel-um`, then the file's recorded resolution, then `camera.pixel_um`). A camera
/// coarser than the model is refused (upsampling would invent texture); one within
/// [`SAME_PIXEL_TOLERANCE`] is used as it is; a finer one is area-resampled ([`area_resample`]).
/// Finally the view must hold at least one ROI.
pub fn fit_to_model(
    frame: &Frame,
    pixel: Option<(f64, PixelSizeSource)>,
    geom: &ModelGeometry,
) -> Result<(GrayF32, Envelope), Rejection> {
    let (camera_um, source) = match pixel {
        Some((um, source)) if um.is_finite() && um > 0.0 => (um, source),
        _ => return Err(Rejection::PixelSizeUnknown),
    };
    let model_um = geom.pixel_um;
    let scale = camera_um / model_um;
    if scale > 1.0 + SAME_PIXEL_TOLERANCE {
        return Err(Rejection::PixelTooCoarse {
            camera_um,
            model_um,
            pixel_source: source,
            min_dpi: 25_400.0 / model_um,
        });
    }
    let view_mm = [f64::from(frame.width) * camera_um / 1000.0, f64::from(frame.height) * camera_um / 1000.0];
    let resampled = (scale - 1.0).abs() > SAME_PIXEL_TOLERANCE;
    let (pixels, width, height) = if resampled {
        resample(&frame.pixels, frame.width, frame.height, model_um / camera_um)
    } else {
        (frame.pixels.clone(), frame.width, frame.height)
    };
    let image = GrayF32 { width, height, pixels, pixel_um: model_um };
    if image.width < geom.roi_px || image.height < geom.roi_px {
        let [view_w_mm, view_h_mm] = view_mm;
        return Err(Rejection::ViewTooSmall { view_w_mm, view_h_mm, sample_mm: geom.sample_mm() });
    }
    let envelope = Envelope {
        camera_pixel_um: camera_um,
        pixel_source: source,
        model_pixel_um: model_um,
        scale,
        sample_mm: geom.sample_mm(),
        view_mm,
        resampled,
        ok: true,
    };
    Ok((image, envelope))
}

/// What one process's surface texture needs to tell machines apart, after Bimrose et al. (2025,
/// Figure 7 and its discussion): the smallest sample (ROI side on the part) at which accuracy
/// holds, and the coarsest pixel. DLS projector pixels repeat within 0.2 mm; MJF powder grain
/// and SLA hatching need about 1 mm; FDM tracks need 2 to 3 mm (2 mm is where accuracy starts to
/// fall) with pixels under 64 µm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessNeeds {
    /// `DLS`, `MJF`, `SLA` or `FDM`, as models name them in `amfp.label_process`.
    pub process: &'static str,
    /// Smallest sample side, mm.
    pub min_sample_mm: f64,
    /// Coarsest pixel, µm (infinite: no limit beyond the model's own).
    pub max_pixel_um: f64,
}

/// The paper's limits per process (see [`ProcessNeeds`]).
pub const PROCESS_NEEDS: &[ProcessNeeds] = &[
    ProcessNeeds { process: "DLS", min_sample_mm: 0.2, max_pixel_um: f64::INFINITY },
    ProcessNeeds { process: "MJF", min_sample_mm: 1.0, max_pixel_um: f64::INFINITY },
    ProcessNeeds { process: "SLA", min_sample_mm: 1.0, max_pixel_um: f64::INFINITY },
    ProcessNeeds { process: "FDM", min_sample_mm: 2.0, max_pixel_um: 64.0 },
];

/// The needs of `process` (case-insensitive), when the paper measured it.
pub fn process_needs(process: &str) -> Option<&'static ProcessNeeds> {
    PROCESS_NEEDS.iter().find(|n| n.process.eq_ignore_ascii_case(process))
}

/// Whether a model's samples are large and fine enough for parts of `process`: a model whose
/// ROI is smaller than the process's texture repeats (or whose pixels are coarser than it
/// resolves) cannot tell its machines apart, whatever the camera. Processes the paper did not
/// measure pass.
pub fn check_process_sample(geom: &ModelGeometry, process: &str) -> Result<(), Rejection> {
    let Some(needs) = process_needs(process) else { return Ok(()) };
    let sample_mm = geom.sample_mm();
    if sample_mm < needs.min_sample_mm || geom.pixel_um > needs.max_pixel_um {
        return Err(Rejection::SampleTooSmall {
            process: needs.process.to_string(),
            sample_mm,
            min_sample_mm: needs.min_sample_mm,
            model_um: geom.pixel_um,
            max_pixel_um: needs.max_pixel_um,
            roi_px: geom.roi_px,
        });
    }
    Ok(())
}

/// Area downsampling by `factor` (>= 1: output pixel / input pixel), as training's `resample`:
/// a whole factor k takes exact means of k x k blocks over the image cropped to multiples of k
/// (output floor(size / k)); any other factor uses the box filter of Pillow's `Image.BOX`
/// (through fast_image_resize, whose box filter is Pillow's), output floor(size / factor).
/// The result keeps `img.pixel_um * factor`. Factors below 1 (upsampling) are clamped to 1.
pub fn area_resample(img: &GrayF32, factor: f64) -> GrayF32 {
    let (pixels, width, height) = resample(&img.pixels, img.width, img.height, factor);
    GrayF32 { width, height, pixels, pixel_um: img.pixel_um * factor.max(1.0) }
}

/// [`area_resample`] on raw pixels: the resampled pixels and their width and height (0 x 0
/// when the image is smaller than one output pixel).
fn resample(pixels: &[f32], width: u32, height: u32, factor: f64) -> (Vec<f32>, u32, u32) {
    let factor = if factor.is_finite() { factor.max(1.0) } else { 1.0 };
    let k = factor.round();
    let whole = (factor - k).abs() < INTEGER_FACTOR_TOLERANCE;
    let (w, h) = if whole {
        (width / k as u32, height / k as u32)
    } else {
        ((f64::from(width) / factor) as u32, (f64::from(height) / factor) as u32)
    };
    if w == 0 || h == 0 {
        return (Vec::new(), 0, 0);
    }
    let out =
        if whole { block_means(pixels, width, k as usize, w, h) } else { box_resize(pixels, width, height, w, h) };
    (out, w, h)
}

/// Means of k x k blocks, summed in f64 row by row and, within a row, left to right (the order
/// fixes the rounding, so it stays the same however the loop is written).
fn block_means(pixels: &[f32], width: u32, k: usize, w: u32, h: u32) -> Vec<f32> {
    let (w, h) = (w as usize, h as usize);
    let mut sums = vec![0f64; w * h];
    for (out, rows) in sums.chunks_exact_mut(w).zip(pixels.chunks_exact(width as usize * k)) {
        for row in rows.chunks_exact(width as usize) {
            for (o, block) in out.iter_mut().zip(row[..w * k].chunks_exact(k)) {
                for &v in block {
                    *o += f64::from(v);
                }
            }
        }
    }
    let inv = 1.0 / (k * k) as f64;
    sums.into_iter().map(|s| (s * inv) as f32).collect()
}

fn box_resize(pixels: &[f32], width: u32, height: u32, w: u32, h: u32) -> Vec<f32> {
    use fast_image_resize::images::{TypedImage, TypedImageRef};
    use fast_image_resize::pixels::F32;
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

    let src: Vec<F32> = pixels.iter().map(|&v| F32::new(v)).collect();
    let src = TypedImageRef::new(width, height, &src).expect("a frame holds width x height pixels");
    let mut dst = TypedImage::<F32>::new(w, h);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    Resizer::new().resize_typed(&src, &mut dst, &options).expect("same pixel type, no cropping: resizing cannot fail");
    dst.pixels().iter().map(|p| p.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane-split pass counts exactly what one plain loop over the pixels counts, for
    /// lengths that are and are not a multiple of the lanes, NaN and values outside [0, 1].
    #[test]
    fn levels_match_a_plain_loop() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for n in [0usize, 1, 7, 8, 9, 31, 1000, 4099] {
            let mut px: Vec<f32> = (0..n).map(|_| rng.random_range(-0.1f32..1.1)).collect();
            if n > 3 {
                px[n / 2] = f32::NAN;
                px[1] = 1.0;
            }
            let top = (Levels::BINS - 1) as f32;
            let mut hist = vec![0u32; Levels::BINS];
            let (mut min, mut max, mut saturated) = (f32::INFINITY, f32::NEG_INFINITY, 0usize);
            for &v in &px {
                min = min.min(v);
                max = max.max(v);
                saturated += usize::from(v >= SATURATED_LEVEL);
                hist[(v.clamp(0.0, 1.0) * top) as usize] += 1;
            }
            let l = Levels::of(&px);
            assert_eq!(
                (l.min.to_bits(), l.max.to_bits(), l.saturated, l.count),
                (min.to_bits(), max.to_bits(), saturated, n),
                "n = {n}"
            );
            assert_eq!(l.hist, hist, "n = {n}");
        }
    }

    #[test]
    fn percentile_of_a_ramp() {
        let px: Vec<f32> = (0..=1000).map(|i| i as f32 / 1000.0).collect();
        assert!((Levels::of(&px).percentile(0.99) - 0.99).abs() < 1e-3);
        assert!(Levels::of(&px).percentile(0.0).abs() < 1e-3);
    }

    #[test]
    fn whole_factor_crops_and_averages_blocks() {
        let img = GrayF32 { width: 5, height: 3, pixels: (0..15).map(|v| v as f32).collect(), pixel_um: 1.0 };
        let out = area_resample(&img, 2.0);
        assert_eq!((out.width, out.height), (2, 1));
        assert_eq!(out.pixels, vec![(0.0 + 1.0 + 5.0 + 6.0) / 4.0, (2.0 + 3.0 + 7.0 + 8.0) / 4.0]);
        assert_eq!(out.pixel_um, 2.0);
    }

    /// Block means round as f64 sums taken row by row, left to right, then scaled: the same
    /// bits as that plain loop on values of mixed magnitudes (where the order of the sums shows).
    #[test]
    fn block_means_sum_in_a_fixed_order() {
        let (width, height) = (23u32, 17u32);
        let mut state = 3u64;
        let pixels: Vec<f32> = (0..width * height)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 10f32.powi((state % 9) as i32 - 6)
            })
            .collect();
        for k in [2usize, 3, 4] {
            let (w, h) = (width as usize / k, height as usize / k);
            let mut want = Vec::new();
            for by in 0..h {
                for bx in 0..w {
                    let mut sum = 0f64;
                    for y in by * k..(by + 1) * k {
                        for x in bx * k..(bx + 1) * k {
                            sum += f64::from(pixels[y * width as usize + x]);
                        }
                    }
                    want.push((sum * (1.0 / (k * k) as f64)) as f32);
                }
            }
            let got = block_means(&pixels, width, k, w as u32, h as u32);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "k = {k}"
            );
        }
    }

    #[test]
    fn too_few_pixels_resample_to_an_empty_image() {
        let img = GrayF32 { width: 1, height: 1, pixels: vec![0.5], pixel_um: 1.0 };
        assert_eq!(area_resample(&img, 2.5).pixels, Vec::<f32>::new());
        assert_eq!(area_resample(&img, 3.0).width, 0);
    }
}
