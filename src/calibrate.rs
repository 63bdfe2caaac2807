//! Pixel size from an image of a calibration target: a line grating or a grid of known pitch
//! (a stage micrometer, a Ronchi ruling), for `amfp calibrate`.
//!
//! The grating's period in pixels is the inverse of the frequency of the strongest periodic
//! component of the image. The image (mean removed, Hann-windowed) is Fourier-transformed with
//! rustfft, zero-padded twice; the lowest-frequency strong peak in the grating's direction is the
//! fundamental (harmonics of thin or sharp lines can be as strong); it is then located to a small
//! fraction of a frequency bin by fitting a paraboloid to the log power of the exact discrete-time
//! Fourier transform around it, iterated with shrinking steps. µm per pixel = pitch x frequency.
//! The uncertainty is the spread of the same estimate on the four quadrants of the image (noise,
//! distortion, an uneven target), with a floor for the method's own precision. A grid gives one
//! estimate per axis; their mean is reported, and a difference says the pixels are not square or
//! the target is tilted. See docs/capture.md.

use std::f64::consts::PI;

use rustfft::algorithm::Radix4;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftDirection};
use serde::Serialize;

use crate::capture::Frame;

/// Largest square of the image analysed (the centre): plenty of periods, a fast transform.
pub const MAX_SIDE: usize = 1024;
/// Smallest image side accepted.
pub const MIN_SIDE: usize = 32;
/// Fewest periods the grating must show across the analysed area.
pub const MIN_PERIODS: f64 = 4.0;
/// Shortest period measured, pixels: finer gratings alias.
pub const MIN_PERIOD_PX: f64 = 2.5;
/// A peak counts as strong when its power is at least this fraction of the strongest one's.
const STRONG: f64 = 0.25;
/// The strongest peak must stand this far above the median power of the spectrum.
const MIN_PROMINENCE: f64 = 50.0;
/// Relative precision floor of the estimate (the peak fit's own precision, simulated).
const PRECISION_FLOOR: f64 = 2e-4;

/// What kind of target was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Parallel lines: one period.
    Lines,
    /// Crossed lines or dots: two perpendicular periods.
    Grid,
}

/// The period along one direction of the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Axis {
    /// Grating period in pixels.
    pub period_px: f64,
    /// Direction of the period (normal to the lines), degrees from the image's x axis, [0, 180).
    pub angle_deg: f64,
    /// µm per pixel from this axis alone.
    pub um_per_px: f64,
}

/// The result of a calibration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// µm per pixel on the target (the mean over the axes of a grid).
    pub um_per_px: f64,
    /// Standard uncertainty of `um_per_px`, µm.
    pub uncertainty_um: f64,
    /// The target's pitch, µm, as given.
    pub pitch_um: f64,
    pub pattern: Pattern,
    /// One entry for lines, two for a grid.
    pub axes: Vec<Axis>,
    /// Power of the fundamental over the spectrum's median: how clearly the grating stands out.
    pub prominence: f64,
}

impl Calibration {
    /// Relative uncertainty.
    pub fn relative_uncertainty(&self) -> f64 {
        self.uncertainty_um / self.um_per_px
    }

    /// Relative difference between a grid's two axes (0 for lines): non-square pixels or a
    /// tilted target when it exceeds the uncertainty.
    pub fn anisotropy(&self) -> f64 {
        match self.axes.as_slice() {
            [a, b] => (a.um_per_px - b.um_per_px).abs() / self.um_per_px,
            _ => 0.0,
        }
    }
}

/// Why a calibration image could not be measured; each message says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("--pitch-um {0} is not a pitch; expected the target's line spacing, a positive number of µm")]
    BadPitch(f64),
    #[error("the image is {width}x{height} pixels; a calibration image needs at least {MIN_SIDE}x{MIN_SIDE}")]
    TooSmall { width: u32, height: u32 },
    #[error(
        "no grating found: the strongest periodic component stands only {prominence:.0} times above the background (at least {MIN_PROMINENCE:.0} needed); focus on the target, light it evenly and fill the view with its lines"
    )]
    NoGrating { prominence: f64 },
    #[error(
        "the grating's period is {period_px:.2} pixels, too fine to measure (at least {MIN_PERIOD_PX} needed): use a target with a coarser pitch or a lower magnification"
    )]
    TooFine { period_px: f64 },
}

/// Measures µm per pixel from an image of a grating or grid of `pitch_um`.
pub fn calibrate(frame: &Frame, pitch_um: f64) -> Result<Calibration, CalibrationError> {
    if !(pitch_um.is_finite() && pitch_um > 0.0) {
        return Err(CalibrationError::BadPitch(pitch_um));
    }
    let (w, h) = (frame.width as usize, frame.height as usize);
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(CalibrationError::TooSmall { width: frame.width, height: frame.height });
    }
    let region = Region::centre(frame, MAX_SIDE);
    let spectrum = Spectrum::of(&region);
    let (peaks, prominence) = spectrum.peaks();
    let Some(strongest) = peaks.first().copied() else {
        return Err(CalibrationError::NoGrating { prominence: 0.0 });
    };
    if prominence < MIN_PROMINENCE {
        return Err(CalibrationError::NoGrating { prominence });
    }
    let strong: Vec<Peak> = peaks.iter().copied().filter(|p| p.power >= STRONG * strongest.power).collect();
    let mut fundamentals = vec![fundamental(&strong, strongest)];
    // A second, perpendicular family of strong peaks: a grid.
    if let Some(across) = strong
        .iter()
        .copied()
        .filter(|p| angle_between(p, &strongest) > 87.0)
        .max_by(|a, b| a.power.total_cmp(&b.power))
    {
        fundamentals.push(fundamental(&strong, across));
    }
    let mut axes = Vec::new();
    let mut rel_var = 0.0;
    for peak in &fundamentals {
        let f = region.refine(peak.fx, peak.fy, spectrum.bin());
        let freq = f.0.hypot(f.1);
        if freq <= 0.0 || 1.0 / freq < MIN_PERIOD_PX {
            return Err(CalibrationError::TooFine { period_px: if freq > 0.0 { 1.0 / freq } else { 0.0 } });
        }
        // The same estimate on each quadrant: its spread is the uncertainty of the whole.
        let quads: Vec<f64> = region
            .quadrants()
            .iter()
            .filter(|q| (q.w.min(q.h) as f64) * freq >= MIN_PERIODS)
            .map(|q| {
                let g = q.refine(f.0, f.1, 1.0 / q.w.max(q.h) as f64);
                g.0.hypot(g.1)
            })
            .collect();
        let rel_sd = if quads.len() >= 2 {
            let mean = quads.iter().sum::<f64>() / quads.len() as f64;
            let var = quads.iter().map(|q| (q - mean).powi(2)).sum::<f64>() / (quads.len() - 1) as f64;
            var.sqrt() / mean / (quads.len() as f64).sqrt()
        } else {
            // Too few periods per quadrant: a quarter of a frequency bin.
            0.25 * spectrum.bin() / freq
        };
        rel_var += rel_sd.powi(2) + PRECISION_FLOOR.powi(2);
        let angle = f.1.atan2(f.0).to_degrees().rem_euclid(180.0);
        let angle = if 180.0 - angle < 1e-6 { 0.0 } else { angle };
        axes.push(Axis { period_px: 1.0 / freq, angle_deg: angle, um_per_px: pitch_um * freq });
    }
    let n = axes.len() as f64;
    let um_per_px = axes.iter().map(|a| a.um_per_px).sum::<f64>() / n;
    let uncertainty_um = um_per_px * (rel_var / (n * n)).sqrt();
    let pattern = if axes.len() == 2 { Pattern::Grid } else { Pattern::Lines };
    Ok(Calibration { um_per_px, uncertainty_um, pitch_um, pattern, axes, prominence })
}

/// A spectral peak: frequency in cycles per pixel and power.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Peak {
    fx: f64,
    fy: f64,
    power: f64,
}

impl Peak {
    fn freq(&self) -> f64 {
        self.fx.hypot(self.fy)
    }
}

/// Angle between two peaks' directions, degrees in [0, 90].
fn angle_between(a: &Peak, b: &Peak) -> f64 {
    let d = (a.fy.atan2(a.fx) - b.fy.atan2(b.fx)).to_degrees().rem_euclid(180.0);
    d.min(180.0 - d)
}

/// The fundamental of `peak`'s family: the lowest-frequency strong peak in its direction of
/// which `peak` is a harmonic (thin or sharp lines have harmonics as strong as the fundamental).
fn fundamental(strong: &[Peak], peak: Peak) -> Peak {
    strong
        .iter()
        .copied()
        .filter(|p| angle_between(p, &peak) < 3.0 && p.freq() <= peak.freq() * 1.01)
        .filter(|p| {
            let ratio = peak.freq() / p.freq();
            (ratio - ratio.round()).abs() < 0.05 * ratio.round().max(1.0)
        })
        .min_by(|a, b| a.freq().total_cmp(&b.freq()))
        .unwrap_or(peak)
}

/// A windowed, mean-free crop of the image.
struct Region {
    w: usize,
    h: usize,
    /// `w * h` values as captured.
    raw: Vec<f64>,
    /// `w * h` values, mean removed and windowed.
    values: Vec<f64>,
}

impl Region {
    /// The centre of the frame, at most `max` pixels a side, mean removed and Hann-windowed.
    fn centre(frame: &Frame, max: usize) -> Region {
        let (fw, fh) = (frame.width as usize, frame.height as usize);
        let (w, h) = (fw.min(max), fh.min(max));
        let (x0, y0) = ((fw - w) / 2, (fh - h) / 2);
        let raw: Vec<f64> = (0..h)
            .flat_map(|y| frame.pixels[(y0 + y) * fw + x0..(y0 + y) * fw + x0 + w].iter().map(|&v| f64::from(v)))
            .collect();
        Region::windowed(raw, w, h)
    }

    fn windowed(raw: Vec<f64>, w: usize, h: usize) -> Region {
        let mean = raw.iter().sum::<f64>() / raw.len() as f64;
        let mut values = raw.clone();
        let hann = |i: usize, n: usize| 0.5 - 0.5 * (2.0 * PI * (i as f64 + 0.5) / n as f64).cos();
        let wx: Vec<f64> = (0..w).map(|x| hann(x, w)).collect();
        for y in 0..h {
            let wy = hann(y, h);
            for x in 0..w {
                let v = &mut values[y * w + x];
                *v = (*v - mean) * wx[x] * wy;
            }
        }
        Region { w, h, raw, values }
    }

    /// The four quadrants, each windowed anew.
    fn quadrants(&self) -> Vec<Region> {
        let (hw, hh) = (self.w / 2, self.h / 2);
        [(0, 0), (hw, 0), (0, hh), (hw, hh)]
            .into_iter()
            .map(|(qx, qy)| {
                let raw = (0..hh)
                    .flat_map(|y| self.raw[(qy + y) * self.w + qx..(qy + y) * self.w + qx + hw].iter().copied())
                    .collect();
                Region::windowed(raw, hw, hh)
            })
            .collect()
    }

    /// Power of the discrete-time Fourier transform at (fx, fy) cycles per pixel, for three
    /// values of fx at once (one pass over the rows per fx).
    fn dtft_power(&self, fxs: [f64; 3], fys: [f64; 3]) -> [[f64; 3]; 3] {
        let mut out = [[0.0; 3]; 3];
        for (i, &fx) in fxs.iter().enumerate() {
            let step = Complex::from_polar(1.0, -2.0 * PI * fx);
            let mut rows = Vec::with_capacity(self.h);
            for y in 0..self.h {
                let mut acc = Complex::new(0.0, 0.0);
                let mut phase = Complex::new(1.0, 0.0);
                for &v in &self.values[y * self.w..(y + 1) * self.w] {
                    acc += phase * v;
                    phase *= step;
                }
                rows.push(acc);
            }
            for (j, &fy) in fys.iter().enumerate() {
                let step = Complex::from_polar(1.0, -2.0 * PI * fy);
                let mut phase = Complex::new(1.0, 0.0);
                let mut acc = Complex::new(0.0, 0.0);
                for r in &rows {
                    acc += phase * r;
                    phase *= step;
                }
                out[i][j] = acc.norm_sqr();
            }
        }
        out
    }

    /// Locates the spectral peak near (fx, fy) precisely: paraboloid fits to the log power on
    /// 3x3 grids of shrinking spacing, starting at `bin` (cycles per pixel).
    fn refine(&self, mut fx: f64, mut fy: f64, bin: f64) -> (f64, f64) {
        let mut d = 0.5 * bin;
        for _ in 0..12 {
            let p = self.dtft_power([fx - d, fx, fx + d], [fy - d, fy, fy + d]);
            let l = p.map(|r| r.map(|v| v.max(1e-300).ln()));
            let col = |i: usize| (l[i][0] + l[i][1] + l[i][2]) / 3.0;
            let row = |j: usize| (l[0][j] + l[1][j] + l[2][j]) / 3.0;
            let b = (col(2) - col(0)) / (2.0 * d);
            let c = (row(2) - row(0)) / (2.0 * d);
            let dd = (col(2) + col(0) - 2.0 * col(1)) / (2.0 * d * d);
            let ee = (row(2) + row(0) - 2.0 * row(1)) / (2.0 * d * d);
            let ff = (l[2][2] - l[2][0] - l[0][2] + l[0][0]) / (4.0 * d * d);
            // Vertex of a + b x + c y + dd x^2 + ee y^2 + ff x y.
            let det = 4.0 * dd * ee - ff * ff;
            let (mut sx, mut sy) = if dd < 0.0 && det > 0.0 {
                ((-2.0 * ee * b + ff * c) / det, (-2.0 * dd * c + ff * b) / det)
            } else {
                // Not concave here: climb towards the larger neighbour.
                (d * b.signum(), d * c.signum())
            };
            let moved = sx.hypot(sy);
            if moved > d {
                sx *= d / moved;
                sy *= d / moved;
            }
            fx += sx;
            fy += sy;
            if moved < 0.5 * d {
                d *= 0.5;
            }
        }
        (fx, fy)
    }
}

/// The power spectrum of a region, zero-padded twice, over the half plane fy >= 0.
struct Spectrum {
    nx: usize,
    ny: usize,
    power: Vec<f64>,
    /// Frequency resolution of the region (not of the padding), cycles per pixel.
    bin: f64,
    min_freq: f64,
}

impl Spectrum {
    fn of(r: &Region) -> Spectrum {
        let (nx, ny) = ((2 * r.w).next_power_of_two(), (2 * r.h).next_power_of_two());
        let mut data = vec![Complex::new(0.0, 0.0); nx * ny];
        for y in 0..r.h {
            for x in 0..r.w {
                data[y * nx + x] = Complex::new(r.values[y * r.w + x], 0.0);
            }
        }
        // Both sides are powers of two, so rustfft's radix-4 algorithm is taken directly: its
        // planner would bring every other algorithm (prime sizes, Rader, Bluestein) and every
        // SIMD variant into the binary, about 1 MB, for a one-off measurement.
        let row_fft = Radix4::new(nx, FftDirection::Forward);
        for row in data.chunks_exact_mut(nx).take(r.h) {
            row_fft.process(row);
        }
        let col_fft = Radix4::new(ny, FftDirection::Forward);
        let mut col = vec![Complex::new(0.0, 0.0); ny];
        for x in 0..nx {
            for y in 0..ny {
                col[y] = data[y * nx + x];
            }
            col_fft.process(&mut col);
            for y in 0..ny {
                data[y * nx + x] = col[y];
            }
        }
        let power = data.iter().map(|c| c.norm_sqr()).collect();
        let side = r.w.min(r.h) as f64;
        Spectrum { nx, ny, power, bin: 1.0 / r.w.max(r.h) as f64, min_freq: MIN_PERIODS / side }
    }

    fn bin(&self) -> f64 {
        self.bin
    }

    fn freq(&self, kx: usize, ky: usize) -> (f64, f64) {
        let f = |k: usize, n: usize| if k <= n / 2 { k as f64 / n as f64 } else { k as f64 / n as f64 - 1.0 };
        (f(kx, self.nx), f(ky, self.ny))
    }

    /// Local maxima in the half plane (fy > 0, or fy = 0 and fx > 0) between the lowest
    /// measurable frequency and the Nyquist limit, strongest first, and the strongest one's
    /// power over the median power.
    fn peaks(&self) -> (Vec<Peak>, f64) {
        let (nx, ny) = (self.nx, self.ny);
        let at = |kx: usize, ky: usize| self.power[ky * nx + kx];
        let mut peaks = Vec::new();
        let mut all = Vec::with_capacity(nx * ny / 2);
        for ky in 0..=ny / 2 {
            for kx in 0..nx {
                let (fx, fy) = self.freq(kx, ky);
                if fy == 0.0 && fx <= 0.0 {
                    continue;
                }
                let f = fx.hypot(fy);
                if f > 0.5 {
                    continue;
                }
                let p = at(kx, ky);
                all.push(p);
                if f < self.min_freq {
                    continue;
                }
                let is_max = (-1i64..=1).all(|dy| {
                    (-1i64..=1).all(|dx| {
                        (dx == 0 && dy == 0) || {
                            let x = (kx as i64 + dx).rem_euclid(nx as i64) as usize;
                            let y = (ky as i64 + dy).rem_euclid(ny as i64) as usize;
                            at(x, y) <= p
                        }
                    })
                });
                if is_max {
                    peaks.push(Peak { fx, fy, power: p });
                }
            }
        }
        peaks.sort_by(|a, b| b.power.total_cmp(&a.power));
        peaks.truncate(64);
        let mid = all.len() / 2;
        let median = if all.is_empty() { 0.0 } else { *all.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1 };
        let prominence = match peaks.first() {
            Some(p) if median > 0.0 => p.power / median,
            Some(p) if p.power > 1e-12 => f64::INFINITY,
            Some(_) => 0.0,
            None => 0.0,
        };
        (peaks, prominence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grating(w: u32, h: u32, period: f64, angle_deg: f64) -> Frame {
        let (s, c) = angle_deg.to_radians().sin_cos();
        let pixels = (0..h)
            .flat_map(|y| {
                (0..w).map(move |x| (0.5 + 0.4 * (2.0 * PI * (x as f64 * c + y as f64 * s) / period).cos()) as f32)
            })
            .collect();
        Frame { width: w, height: h, pixels, pixel_um: None, bit_depth: 8 }
    }

    #[test]
    fn a_clean_sinusoid_is_measured_to_a_tiny_fraction() {
        for (period, angle) in [(9.7, 0.0), (23.3, 31.0), (5.1, 90.0)] {
            let c = calibrate(&grating(320, 240, period, angle), 10.0).unwrap();
            let truth = 10.0 / period;
            assert!((c.um_per_px / truth - 1.0).abs() < 1e-3, "{period} {angle}: {c:?}");
            assert_eq!(c.pattern, Pattern::Lines);
            assert!((c.axes[0].angle_deg - angle).abs() < 0.5, "{c:?}");
        }
    }

    #[test]
    fn flat_images_and_bad_pitches_are_refused() {
        let flat = Frame { width: 64, height: 64, pixels: vec![0.5; 64 * 64], pixel_um: None, bit_depth: 8 };
        assert!(matches!(calibrate(&flat, 10.0), Err(CalibrationError::NoGrating { .. })));
        assert!(matches!(calibrate(&flat, -1.0), Err(CalibrationError::BadPitch(_))));
        let tiny = Frame { width: 8, height: 8, pixels: vec![0.5; 64], pixel_um: None, bit_depth: 8 };
        assert!(matches!(calibrate(&tiny, 10.0), Err(CalibrationError::TooSmall { .. })));
    }
}
