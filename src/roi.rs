//! Finding the part in a frame and drawing ROIs that lie on it, exactly as training does
//! (`training/amfp_train/roi.py`): the model only knows ROIs cut the way it was trained on.
//!
//! The part is the brighter class of an Otsu threshold (a scan shows a part on a dark lid), or
//! the whole frame (a microscope sees nothing but surface). An ROI is acceptable when at least
//! `min_foreground` of its pixels are on the part; acceptability of every corner is counted once
//! per frame (separable box sums), so drawing ROIs is O(1) per draw. Beyond training, the daemon refuses frames
//! with no part in view or too little surface for a vote ([`PartSurface::new`]); the rules and
//! thresholds are in docs/preprocessing.md.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::optics::GrayF32;
use crate::reject::Rejection;

/// Otsu separability (between-class / total variance) at and above which `auto` takes a frame
/// for a part on a background; below it, for all surface. Training's `AUTO_ETA`: simulated
/// scans reach 0.92-0.997, microscope frames 0.61-0.72.
pub const AUTO_ETA: f64 = 0.85;

/// The part's median intensity must reach this, or what was found is background, not a part.
/// Simulated empty scanner lids have medians of 0.19-0.21 (99th percentile at most 0.36),
/// while the darkest simulated material (RPU 70, albedo 0.2) has a median of 0.42 under the
/// microscope and 0.45 on the scanner; 0.30 sits in between (2x the lid's radiance after the
/// 1/2.2 gamma) with margin on both sides.
pub const PART_MIN_LEVEL: f32 = 0.30;

/// When no ROI fits, a foreground below this fraction of the frame means no part is in view
/// (specks or a glint), rather than a part too small or too thin.
pub const NO_PART_FOREGROUND: f64 = 0.01;

/// Default of `identify.min_surface_rois`: at least two ROIs' worth of distinct surface, so that
/// the vote does not rest on one patch seen over and over.
pub const DEFAULT_MIN_SURFACE_ROIS: f64 = 2.0;

/// Valid corners below this fraction of all corners are listed and drawn from directly, since
/// rejection sampling would need many draws (training's rule).
const DENSE_BELOW: f64 = 0.02;

/// Rejection-sampling rounds of max(16, 2n) draws before falling back to listing valid corners.
const MAX_TRIES: usize = 64;

/// How the part is told from the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MaskMode {
    /// Otsu when the frame shows two clear classes (eta >= [`AUTO_ETA`]), else the whole frame.
    Auto,
    /// A part on a darker background (flatbed scans): the brighter Otsu class.
    Otsu,
    /// The whole frame is part surface (microscope frames).
    Full,
}

/// An Otsu threshold and how well it separates the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Otsu {
    /// Foreground is strictly brighter than this (the upper edge of the best bin).
    pub threshold: f32,
    /// Between-class / total variance, in [0, 1]; 0 for a constant image.
    pub eta: f64,
}

/// Otsu's threshold as training computes it (`roi.otsu`): 256 bins spanning [min, max] with
/// numpy's bin edges (computed in f64, stored as f32), bin centres as class values, the first
/// bin of maximal between-class variance, and its upper edge as the threshold. Keeping this
/// identical keeps the daemon's mask identical to the one the model was trained with.
pub fn otsu(pixels: &[f32]) -> Otsu {
    const BINS: usize = OTSU_BINS;
    let (lo, hi) = min_max(pixels);
    if pixels.is_empty() || f64::from(hi) - f64::from(lo) < 1e-9 {
        return Otsu { threshold: if lo.is_finite() { lo } else { 0.0 }, eta: 0.0 };
    }
    let edges = otsu_edges(lo, hi);
    let hist = otsu_counts(pixels, lo, hi, &edges);
    let total = hist.iter().sum::<u64>() as f64;
    let centers: Vec<f64> = (0..BINS).map(|i| f64::from((edges[i] + edges[i + 1]) / 2.0)).collect();
    let p: Vec<f64> = hist.iter().map(|&c| c as f64 / total).collect();
    let mt: f64 = p.iter().zip(&centers).fold(0.0, |acc, (p, c)| acc + p * c);
    let (mut w0, mut m0) = (0.0f64, 0.0f64);
    let (mut best, mut best_k) = (f64::NEG_INFINITY, 0);
    for k in 0..BINS {
        w0 += p[k];
        m0 += p[k] * centers[k];
        let w1 = 1.0 - w0;
        let mut between = (mt * w0 - m0).powi(2) / (w0 * w1);
        if !between.is_finite() {
            between = 0.0;
        }
        if between > best {
            (best, best_k) = (between, k);
        }
    }
    let var_t: f64 = p.iter().zip(&centers).map(|(p, c)| p * (c - mt).powi(2)).sum();
    let eta = if var_t > 0.0 { best / var_t } else { 0.0 };
    Otsu { threshold: edges[best_k + 1], eta }
}

/// Bins of Otsu's histogram: `OTSU_BINS` bins between `lo` and `hi`, the smallest and largest
/// value.
const OTSU_BINS: usize = 256;

/// numpy's bin edges for `OTSU_BINS` bins over [lo, hi]: computed in f64, stored as f32, the
/// last one `hi` itself.
fn otsu_edges(lo: f32, hi: f32) -> [f32; OTSU_BINS + 1] {
    let (lo64, hi64) = (f64::from(lo), f64::from(hi));
    let step = (hi64 - lo64) / OTSU_BINS as f64;
    let mut edges = [0f32; OTSU_BINS + 1];
    for (i, e) in edges.iter_mut().enumerate() {
        *e = (lo64 + i as f64 * step) as f32;
    }
    edges[OTSU_BINS] = hi;
    edges
}

/// Counts `pixels` into the bins between `edges` as numpy.histogram does (NaN not counted).
///
/// The exact rule ([`otsu_bin`]) estimates a bin and corrects it by one step against the
/// stored f32 edges. Unless the range is so narrow for its magnitude that the f32 edges are
/// coarse, an f32 estimate is within a bin of the true one too, and the same correction done
/// without branches gives the same bin: quantised frames put many pixels exactly on edges,
/// where the branches of the exact rule mispredict. Counted by [`count_bins`].
fn otsu_counts(pixels: &[f32], lo: f32, hi: f32, edges: &[f32; OTSU_BINS + 1]) -> [u64; OTSU_BINS] {
    const BINS: usize = OTSU_BINS;
    let norm = BINS as f64 / (f64::from(hi) - f64::from(lo));
    let scale = norm as f32;
    // How far, in bins, an estimate may stray from the real position of a value (three f32
    // roundings of a number up to BINS) plus how far the f32 edges stray from the real ones
    // (half an ulp of the largest magnitude, in bins). Well under one bin, a one-step
    // correction from either estimate lands on the same bin.
    let edge_err = f64::from(lo.abs().max(hi.abs())) * f64::from(f32::EPSILON) * norm;
    let stray = 3.0 * BINS as f64 * f64::from(f32::EPSILON) + edge_err;
    if scale.is_finite() && stray < 0.05 {
        // The edges with the last bin closed: nothing is at or above the upper edge. The
        // estimate is at most BINS - 1, so both reads stay inside, and no value (NaN aside, which
        // the last line drops) is below edges[0] = lo.
        let mut upper = [f32::INFINITY; BINS + 1];
        upper[..BINS].copy_from_slice(&edges[..BINS]);
        count_bins(pixels, |v| {
            let i = (((v - lo) * scale) as u32).min(BINS as u32 - 1) as usize;
            let i = i + usize::from(v >= upper[i + 1]) - usize::from(v < upper[i]);
            if v.is_nan() { BINS } else { i }
        })
    } else {
        count_bins(pixels, |v| otsu_bin(v, lo, hi, norm, edges))
    }
}

/// Counts `pixels` by `bin` (which returns `OTSU_BINS` for a value not counted), eight at a time
/// into four sub-histograms (pixel k into k % 4, so that neighbouring pixels of one level do not
/// wait on each other's increment), summed at the end. Generic over `bin`, so each
/// rule gets its own loop with nothing to decide per pixel.
fn count_bins(pixels: &[f32], bin: impl Fn(f32) -> usize) -> [u64; OTSU_BINS] {
    const LANES: usize = 8;
    let mut sub = [[0u64; OTSU_BINS + 1]; 4];
    let chunks = pixels.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        let idx: [usize; LANES] = std::array::from_fn(|k| bin(c[k]));
        for (k, &i) in idx.iter().enumerate() {
            sub[k % 4][i] += 1;
        }
    }
    for &v in rest {
        sub[0][bin(v)] += 1;
    }
    let mut hist = [0u64; OTSU_BINS];
    for (i, h) in hist.iter_mut().enumerate() {
        *h = sub.iter().map(|s| s[i]).sum();
    }
    hist
}

/// The bin of one value for [`otsu_counts`], numpy's rule: an estimate from `norm` (bins per
/// unit) corrected against the stored edges, `edges[i] <= v < edges[i + 1]` (the last bin
/// closed); `OTSU_BINS` (a bin that is not counted) for NaN.
fn otsu_bin(v: f32, lo: f32, hi: f32, norm: f64, edges: &[f32; OTSU_BINS + 1]) -> usize {
    const BINS: usize = OTSU_BINS;
    if !(v >= lo && v <= hi) {
        return BINS;
    }
    let mut i = ((f64::from(v - lo)) * norm) as usize;
    i = i.min(BINS - 1);
    if v < edges[i] && i > 0 {
        i -= 1;
    } else if v >= edges[i + 1] && i < BINS - 1 {
        i += 1;
    }
    i
}

/// The smallest and largest value, NaN ignored (infinite for no values), in eight independent
/// lanes that the compiler turns into vector min and max: a frame's range in one fast pass.
pub fn min_max(values: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
        }
    }
    for (k, &v) in rest.iter().enumerate() {
        lo[k] = lo[k].min(v);
        hi[k] = hi[k].max(v);
    }
    (lo.iter().copied().fold(f32::INFINITY, f32::min), hi.iter().copied().fold(f32::NEG_INFINITY, f32::max))
}

/// A frame at the model's pixel size with where the part is and where ROIs may be drawn.
/// Built once per frame; sampling and cutting ROIs are then cheap.
#[derive(Debug, Clone)]
pub struct PartSurface {
    img: GrayF32,
    roi: u32,
    mode: MaskMode,
    foreground_fraction: f64,
    /// Whether the ROI with its top-left corner at (x, y) is acceptable, row-major over
    /// (width - roi + 1) x (height - roi + 1) corners.
    valid: Vec<bool>,
    valid_corners: usize,
    /// The valid corners listed, when they are rare.
    dense: Option<Vec<(u32, u32)>>,
    surface_rois: f64,
}

impl PartSurface {
    /// Finds the part and its acceptable ROI corners, or says why the frame cannot be judged.
    ///
    /// `img` is at the model's pixel size (from `optics::fit_to_model`); `roi_px`,
    /// `min_foreground` come from the model; `min_surface_rois` is the least surface, in ROI
    /// areas covered by the union of all acceptable ROIs, that a vote may rest on.
    /// Rejections: [`Rejection::ViewTooSmall`] for an image smaller than an ROI;
    /// [`Rejection::NoPart`] when the found region is as dark as an empty scanner lid
    /// ([`PART_MIN_LEVEL`], under `auto` and `otsu`) or, with no acceptable ROI, covers under
    /// [`NO_PART_FOREGROUND`] of the frame; [`Rejection::TooLittleSurface`] otherwise when
    /// the surface is below `min_surface_rois`.
    ///
    /// # Panics
    /// If `roi_px` is 0 or above 65535 (the model loader refuses such models), or if
    /// `img.pixels` does not hold `width * height` values.
    pub fn new(
        img: GrayF32,
        roi_px: u32,
        min_foreground: f32,
        mode: MaskMode,
        min_surface_rois: f64,
    ) -> Result<Self, Rejection> {
        assert!((1..=65535).contains(&roi_px), "ROI side {roi_px} must be 1..=65535 pixels");
        let (w, h, r) = (img.width as usize, img.height as usize, roi_px as usize);
        assert_eq!(img.pixels.len(), w * h, "a {w}x{h} image needs {} pixels", w * h);
        let sample_mm = f64::from(roi_px) * img.pixel_um / 1000.0;
        if w < r || h < r {
            let [view_w_mm, view_h_mm] = img.view_mm();
            return Err(Rejection::ViewTooSmall { view_w_mm, view_h_mm, sample_mm });
        }

        let threshold = mask_threshold(&img.pixels, mode);
        let used = if threshold.is_some() { MaskMode::Otsu } else { MaskMode::Full };
        // Acceptable corners: training's make_part_image.
        let need = (decimal_f64(min_foreground) * (r * r) as f64 - 1e-9).ceil().max(0.0) as u64;
        let (cw, ch) = (w - r + 1, h - r + 1);
        // Beyond training: unless the caller vouches that the frame is all surface (`full`),
        // what was found must be brighter than an empty background.
        let too_dark = |level: f32| Rejection::NoPart {
            detail: format!(
                "the brightest region has a median of {level:.2} of full scale, as dark as an empty background (a part reaches at least {PART_MIN_LEVEL:.2})"
            ),
        };
        let (foreground, valid) = match threshold {
            // All surface: every pixel is on the part and every corner acceptable (a microscope
            // frame), so there is nothing to count.
            None => {
                if mode != MaskMode::Full
                    && let Some(level) = median_below(img.pixels.iter().copied(), w * h, PART_MIN_LEVEL)
                {
                    return Err(too_dark(level));
                }
                (w * h, vec![need <= (r * r) as u64; cw * ch])
            }
            Some(t) => {
                let (valid, foreground) = valid_corner_map(&img.pixels, w, t, r, need);
                // Only a threshold below the level can let darker pixels into the part.
                if foreground > 0 && t < PART_MIN_LEVEL {
                    let on = img.pixels.iter().copied().filter(|&v| v > t);
                    if let Some(level) = median_below(on, foreground, PART_MIN_LEVEL) {
                        return Err(too_dark(level));
                    }
                }
                (foreground, valid)
            }
        };
        let foreground_fraction = foreground as f64 / (w * h) as f64;
        let valid_corners = valid.iter().filter(|&&v| v).count();
        let too_little =
            |surface_rois: f64| Rejection::TooLittleSurface { surface_rois, needed: min_surface_rois, sample_mm };
        if valid_corners == 0 {
            if foreground_fraction < NO_PART_FOREGROUND {
                return Err(Rejection::NoPart {
                    detail: format!(
                        "only {:.2}% of the frame stands out from the background",
                        100.0 * foreground_fraction
                    ),
                });
            }
            return Err(too_little(0.0));
        }
        let surface_rois = covered_pixels(&valid, cw, ch, w, h, r) as f64 / (r * r) as f64;
        if surface_rois < min_surface_rois {
            return Err(too_little(surface_rois));
        }
        let dense = ((valid_corners as f64) < DENSE_BELOW * valid.len() as f64).then(|| list_valid(&valid, cw));
        Ok(Self { img, roi: roi_px, mode: used, foreground_fraction, valid, valid_corners, dense, surface_rois })
    }

    /// `n` top-left corners (x, y) of acceptable ROIs, uniform among them, reproducible for a
    /// `seed` (ChaCha8). Candidates are drawn over the whole frame and kept when acceptable, as
    /// the paper redraws rejected crops; when acceptable corners are rare they are listed and
    /// drawn from directly.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<(u32, u32)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pick = |rng: &mut ChaCha8Rng, list: &[(u32, u32)]| list[rng.random_range(0..list.len())];
        if let Some(dense) = &self.dense {
            return (0..n).map(|_| pick(&mut rng, dense)).collect();
        }
        let (cw, ch) = self.corner_grid();
        let mut out = Vec::with_capacity(n);
        let mut draws = MAX_TRIES * n.saturating_mul(2).max(16);
        while out.len() < n && draws > 0 {
            draws -= 1;
            let (x, y) = (rng.random_range(0..cw), rng.random_range(0..ch));
            if self.valid[y * cw + x] {
                out.push((x as u32, y as u32));
            }
        }
        if out.len() < n {
            let all = list_valid(&self.valid, cw);
            while out.len() < n {
                out.push(pick(&mut rng, &all));
            }
        }
        out
    }

    /// Writes the ROI at `corner` (x, y), normalised as `(x - mean) / std`, into `out` in CHW
    /// order, the gray plane repeated `channels` times: one slot of the model's input batch.
    ///
    /// # Panics
    /// If the ROI leaves the image or `out` does not hold `channels * roi_px^2` values.
    pub fn write_roi(&self, corner: (u32, u32), mean: f32, std: f32, channels: usize, out: &mut [f32]) {
        let (r, w) = (self.roi as usize, self.img.width as usize);
        let (x0, y0) = (corner.0 as usize, corner.1 as usize);
        assert!(
            x0 + r <= w && y0 + r <= self.img.height as usize,
            "ROI at ({x0}, {y0}) leaves the {}x{} image",
            w,
            self.img.height
        );
        assert_eq!(out.len(), channels * r * r, "an ROI slot holds channels x roi x roi values");
        let (plane, rest) = out.split_at_mut(r * r);
        for (dy, dst) in plane.chunks_exact_mut(r).enumerate() {
            let src = &self.img.pixels[(y0 + dy) * w + x0..][..r];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - mean) / std;
            }
        }
        for copy in rest.chunks_exact_mut(r * r) {
            copy.copy_from_slice(plane);
        }
    }

    /// The image at the model's pixel size.
    pub fn image(&self) -> &GrayF32 {
        &self.img
    }

    /// Width of the image at the model's pixel size.
    pub fn width(&self) -> u32 {
        self.img.width
    }

    /// Height of the image at the model's pixel size.
    pub fn height(&self) -> u32 {
        self.img.height
    }

    /// ROI side, pixels.
    pub fn roi_px(&self) -> u32 {
        self.roi
    }

    /// The mask actually used: `otsu` or `full` (what `auto` decided).
    pub fn mask_mode(&self) -> MaskMode {
        self.mode
    }

    /// Fraction of the image on the part.
    pub fn foreground_fraction(&self) -> f64 {
        self.foreground_fraction
    }

    /// Number of acceptable ROI corners.
    pub fn valid_corners(&self) -> usize {
        self.valid_corners
    }

    /// Part surface the ROIs can cover: the area of the union of all acceptable ROIs, in ROI
    /// areas. A vote over many ROIs inside a smaller area keeps re-reading the same patch.
    pub fn surface_rois(&self) -> f64 {
        self.surface_rois
    }

    /// Whether the ROI with its top-left corner at (x, y) is acceptable.
    pub fn is_valid(&self, corner: (u32, u32)) -> bool {
        let (cw, ch) = self.corner_grid();
        let (x, y) = (corner.0 as usize, corner.1 as usize);
        x < cw && y < ch && self.valid[y * cw + x]
    }

    /// Corners per row and per column.
    fn corner_grid(&self) -> (usize, usize) {
        let r = self.roi as usize;
        (self.img.width as usize - r + 1, self.img.height as usize - r + 1)
    }
}

/// The Otsu threshold above which pixels are part, or None for the whole frame (training's
/// `foreground_mask`: `auto` takes the whole frame when Otsu's eta is below [`AUTO_ETA`]).
fn mask_threshold(pixels: &[f32], mode: MaskMode) -> Option<f32> {
    match mode {
        MaskMode::Full => None,
        MaskMode::Otsu => Some(otsu(pixels).threshold),
        MaskMode::Auto => Some(otsu(pixels)).filter(|o| o.eta >= AUTO_ETA).map(|o| o.threshold),
    }
}

/// Whether each ROI corner has at least `need` part pixels (brighter than `t`), row-major over
/// (w - r + 1) x (h - r + 1) corners, and how many pixels of the `w`-wide frame are part.
///
/// Separable box counts, with no mask or integral image: `column[x]` counts the part pixels of
/// column x in the last `r` rows (one row enters and one leaves per row, vectorised passes), and
/// a corner's count is the sum of `r` neighbouring columns.
fn valid_corner_map(pixels: &[f32], w: usize, t: f32, r: usize, need: u64) -> (Vec<bool>, usize) {
    let h = pixels.len() / w;
    let (cw, ch) = (w - r + 1, h - r + 1);
    let need = u32::try_from(need).unwrap_or(u32::MAX);
    let row = |y: usize| &pixels[y * w..(y + 1) * w];
    let mut column = vec![0u32; w];
    let mut valid = vec![false; cw * ch];
    let (mut prefix, mut sums) = (vec![0u32; w + 1], vec![0u32; cw]);
    let mut foreground = 0usize;
    // Row y enters the window and row y - r leaves it; once r rows are in, the window's top row
    // y + 1 - r is a corner row.
    for y in 0..h {
        let mut on = 0u32;
        for (c, &v) in column.iter_mut().zip(row(y)) {
            let m = u32::from(v > t);
            *c += m;
            on += m;
        }
        foreground += on as usize;
        if y >= r {
            for (c, &v) in column.iter_mut().zip(row(y - r)) {
                *c -= u32::from(v > t);
            }
        }
        if let Some(corner_y) = (y + 1).checked_sub(r) {
            window_sums(&column, r, &mut prefix, &mut sums);
            for (v, &s) in valid[corner_y * cw..(corner_y + 1) * cw].iter_mut().zip(&sums) {
                *v = s >= need;
            }
        }
    }
    (valid, foreground)
}

/// `out[x]` = the sum of `values[x..x + r]`, for every x with a whole window
/// (`out.len() == values.len() - r + 1`), from a running prefix sum (`prefix.len() ==
/// values.len() + 1`) in wrapping u32 arithmetic: exact while a window sums below 2^32.
fn window_sums(values: &[u32], r: usize, prefix: &mut [u32], out: &mut [u32]) {
    debug_assert!(prefix.len() == values.len() + 1 && out.len() + r == values.len() + 1);
    let mut run = 0u32;
    prefix[0] = 0;
    for (p, &v) in prefix[1..].iter_mut().zip(values) {
        run = run.wrapping_add(v);
        *p = run;
    }
    for ((o, &end), &start) in out.iter_mut().zip(&prefix[r..]).zip(prefix.iter()) {
        *o = end.wrapping_sub(start);
    }
}

/// The f64 that an f32 read from decimal text stood for (0.8f32 -> 0.8, not 0.800000011920929),
/// so that the acceptance count matches training, which used the f64.
fn decimal_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// The median of `count` values (the upper one of an even count) when it is below `level`,
/// else None. Deciding takes one count (the median is below `level` exactly when more than
/// half of the values are); only a frame about to be refused pays for the median itself.
fn median_below(values: impl Iterator<Item = f32> + Clone, count: usize, level: f32) -> Option<f32> {
    let mid = count / 2;
    if values.clone().filter(|&v| v < level).count() <= mid {
        return None;
    }
    let mut all: Vec<f32> = values.collect();
    Some(*all.select_nth_unstable_by(mid, f32::total_cmp).1)
}

/// Pixels covered by at least one acceptable ROI: pixel (x, y) is covered when some valid
/// corner lies in [x - r + 1, x] x [y - r + 1, y]. Separable, like [`valid_corner_map`]:
/// `column` counts the valid corners of each corner column among the last `r` corner rows,
/// placed `r - 1` slots to the right in a zero-padded row so that the window sums of `r`
/// neighbouring slots are the corners within reach of each pixel.
fn covered_pixels(valid: &[bool], cw: usize, ch: usize, w: usize, h: usize, r: usize) -> usize {
    let corner_row = |y: usize| &valid[y * cw..(y + 1) * cw];
    let mut column = vec![0u32; w + r - 1];
    let (mut prefix, mut sums) = (vec![0u32; w + r], vec![0u32; w]);
    let mut covered = 0;
    for y in 0..h {
        if y < ch {
            for (c, &v) in column[r - 1..].iter_mut().zip(corner_row(y)) {
                *c += u32::from(v);
            }
        }
        if y >= r && y - r < ch {
            for (c, &v) in column[r - 1..].iter_mut().zip(corner_row(y - r)) {
                *c -= u32::from(v);
            }
        }
        window_sums(&column, r, &mut prefix, &mut sums);
        covered += sums.iter().filter(|&&s| s > 0).count();
    }
    covered
}

fn list_valid(valid: &[bool], cw: usize) -> Vec<(u32, u32)> {
    valid.iter().enumerate().filter(|(_, v)| **v).map(|(i, _)| ((i % cw) as u32, (i / cw) as u32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane-split range is the plain fold's: random frames with NaN and lengths that are
    /// not a multiple of eight.
    #[test]
    fn range_matches_a_plain_fold() {
        use rand::{RngExt, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in [1usize, 7, 8, 9, 100, 1001, 5000] {
            let mut px: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            if n > 8 {
                px[3] = f32::NAN;
            }
            let plain = px.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let (lo, hi) = min_max(&px);
            assert_eq!((lo.to_bits(), hi.to_bits()), (plain.0.to_bits(), plain.1.to_bits()), "n = {n}");
        }
        assert_eq!(min_max(&[]), (f32::INFINITY, f32::NEG_INFINITY));
    }

    /// Otsu's histogram counts, per pixel, the bin of the exact rule ([`otsu_bin`], numpy's):
    /// continuous values, values on, just above and just below every edge, 64 and 8-bit levels,
    /// narrow ranges far from zero (where the f32 edges are coarse and the exact rule is used),
    /// NaN, and lengths that are not a multiple of eight.
    #[test]
    fn otsu_counts_are_the_exact_rule_per_pixel() {
        use rand::{RngExt, SeedableRng};
        let check = |px: &[f32], lo: f32, hi: f32| {
            let edges = otsu_edges(lo, hi);
            let norm = OTSU_BINS as f64 / (f64::from(hi) - f64::from(lo));
            let mut px = px.to_vec();
            px.extend_from_slice(&edges);
            px.extend(edges.iter().map(|e| e.next_up().min(hi)));
            px.extend(edges.iter().map(|e| e.next_down().max(lo)));
            let mut want = [0u64; OTSU_BINS];
            for &v in &px {
                let i = otsu_bin(v, lo, hi, norm, &edges);
                if i < OTSU_BINS {
                    want[i] += 1;
                }
            }
            assert_eq!(otsu_counts(&px, lo, hi, &edges), want, "range [{lo}, {hi}], {} pixels", px.len());
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (lo, hi) in [(0.0f32, 1.0f32), (0.13, 0.91), (-3.0, 250.0), (1000.0, 1000.01), (0.5, 0.500_01), (0.0, 1e-6)]
        {
            let mut px: Vec<f32> =
                (0..20_003).map(|_| (lo + rng.random_range(0.0f32..1.0) * (hi - lo)).clamp(lo, hi)).collect();
            px.extend([lo, hi, f32::NAN, lo, hi]);
            px[17] = f32::NAN;
            check(&px, lo, hi);
        }
        // 64 levels (short frames too) and 8-bit frames: levels k / 255 over ranges of 128, 200
        // and 255 levels, where many levels fall exactly on bin edges.
        for n in [1usize, 7, 9, 1001] {
            let px: Vec<f32> = (0..n).map(|_| (rng.random_range(0.0f32..1.0) * 64.0).round() / 64.0).collect();
            let (lo, hi) = min_max(&px);
            if hi > lo {
                check(&px, lo, hi);
            }
        }
        for (k0, k1) in [(60u32, 188u32), (20, 220), (0, 255)] {
            let px: Vec<f32> = (0..30_001).map(|i| (k0 + i % (k1 - k0 + 1)) as f32 / 255.0).collect();
            check(&px, k0 as f32 / 255.0, k1 as f32 / 255.0);
        }
    }

    fn image(width: u32, height: u32, f: impl Fn(u32, u32) -> f32) -> GrayF32 {
        let pixels = (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
        GrayF32 { width, height, pixels, pixel_um: 10.0 }
    }

    #[test]
    fn surface_of_one_valid_corner_is_one_roi() {
        // A bright 8x8 square in a 20x20 dark frame, ROI 8 at 100 %: exactly one corner.
        let img = image(20, 20, |x, y| if (5..13).contains(&x) && (6..14).contains(&y) { 0.8 } else { 0.1 });
        let s = PartSurface::new(img, 8, 1.0, MaskMode::Otsu, 0.5).unwrap();
        assert_eq!(s.valid_corners(), 1);
        assert!(s.is_valid((5, 6)));
        assert_eq!(s.surface_rois(), 1.0);
        assert_eq!(s.sample(3, 1), vec![(5, 6); 3]);
    }

    /// Tiny deterministic generator for the brute-force checks below.
    fn lcg(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn corner_map_and_covered_pixels_match_brute_force() {
        let mut seed = 11;
        for case in 0..200 {
            let (w, h) = (1 + lcg(&mut seed) as usize % 23, 1 + lcg(&mut seed) as usize % 19);
            let r = 1 + lcg(&mut seed) as usize % w.min(h);
            let density = lcg(&mut seed) % 100;
            let mask: Vec<u8> = (0..w * h).map(|_| u8::from(lcg(&mut seed) % 100 < density)).collect();
            // Part pixels above the threshold 0.5, NaN for some background ones.
            let pixels: Vec<f32> = mask
                .iter()
                .enumerate()
                .map(|(i, &m)| match (m, i % 7) {
                    (1, _) => 0.51 + (i % 5) as f32 / 10.0,
                    (_, 3) => f32::NAN,
                    _ => 0.5 - (i % 3) as f32 / 10.0,
                })
                .collect();
            let need = lcg(&mut seed) % (r * r + 1) as u64;
            let (valid, foreground) = valid_corner_map(&pixels, w, 0.5, r, need);
            assert_eq!(foreground, mask.iter().filter(|&&m| m == 1).count(), "case {case}");
            let (cw, ch) = (w - r + 1, h - r + 1);
            for (y, x) in (0..ch).flat_map(|y| (0..cw).map(move |x| (y, x))) {
                let sum: u64 = (y..y + r)
                    .flat_map(|yy| (x..x + r).map(move |xx| (yy, xx)))
                    .map(|(yy, xx)| u64::from(mask[yy * w + xx]))
                    .sum();
                assert_eq!(valid[y * cw + x], sum >= need, "case {case}: corner ({x}, {y})");
            }
            let brute = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    (y.saturating_sub(r - 1)..=y.min(ch - 1))
                        .any(|cy| (x.saturating_sub(r - 1)..=x.min(cw - 1)).any(|cx| valid[cy * cw + cx]))
                })
                .count();
            assert_eq!(covered_pixels(&valid, cw, ch, w, h, r), brute, "case {case}: {w}x{h}, r {r}");
        }
    }

    #[test]
    fn median_below_a_level_is_decided_by_a_count() {
        let values = [0.1f32, 0.5, 0.2, 0.9, 0.25];
        assert_eq!(median_below(values.iter().copied(), 5, 0.3), Some(0.25));
        assert_eq!(median_below(values.iter().copied(), 5, 0.25), None);
        // Even count: the upper of the two middle values (0.2, 0.5 -> 0.5).
        let even = [0.1f32, 0.2, 0.5, 0.9];
        assert_eq!(median_below(even.iter().copied(), 4, 0.5), None);
        assert_eq!(median_below(even.iter().copied(), 4, 0.51), Some(0.5));
    }

    #[test]
    fn mask_modes_are_lowercase_words() {
        assert_eq!(serde_json::to_string(&MaskMode::Full).unwrap(), "\"full\"");
        assert_eq!(serde_json::from_str::<MaskMode>("\"otsu\"").unwrap(), MaskMode::Otsu);
    }

    #[test]
    fn decimal_text_of_f32() {
        assert_eq!(decimal_f64(0.8), 0.8);
        assert_eq!(decimal_f64(0.9), 0.9);
    }
}
