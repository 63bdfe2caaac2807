//! Imaging: how a flatbed scanner or a USB microscope turns a part's surface into pixels.
//!
//! The surface relief is shaded by the instrument's light (a scanner's lamp from one side, a
//! microscope's ring light from all around), multiplied by the material's albedo, lit with the
//! instrument's non-uniform illumination, dirtied with dust, blurred by slight defocus, and
//! recorded with shot and read noise, gamma-encoded and quantised. The part lies on the glass
//! in a random one of its 8 orientations (90° turns and flips) with a small placement angle.

use std::f64::consts::{FRAC_PI_2, PI};

use rand::RngExt;
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use super::design::Design;
use super::fields::{gaussian_blur, smooth_field};
use super::presets::Material;
use super::process::{Grid, PartContext, ProcessParams, Surface, gauss};
use super::seeds::SimRng;

/// How the part is imaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A flatbed scan of the whole part on a dark background.
    Scanner,
    /// A USB microscope's field of view, entirely on the part's surface.
    Microscope,
}

impl Mode {
    /// The name written in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Scanner => "scanner",
            Mode::Microscope => "microscope",
        }
    }
}

/// The imaging set-up of a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImagingSpec {
    pub mode: Mode,
    /// Pixel size on the part, µm.
    pub pixel_um: f64,
    /// Microscope frame size in pixels (width, height); scanner frames fit the part.
    pub microscope_px: (usize, usize),
    /// 8 or 16 bits per pixel.
    pub bit_depth: u8,
}

/// Empty glass around the part in a scanner image, mm.
const SCANNER_MARGIN_MM: f64 = 0.8;

/// One recorded grayscale image.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub width: usize,
    pub height: usize,
    pub bit_depth: u8,
    /// Pixel values, 0..=2^bit_depth - 1, row-major.
    pub pixels: Vec<u16>,
    /// Which of the 8 orientations the part was placed in (0-3: quarter turns, 4-7: flipped).
    pub orientation: u8,
    /// Pixel size on the part, µm; recorded in the file so that readers need no side channel.
    pub pixel_um: f64,
}

/// The image-to-part rotation for an orientation (quarter turns, then a flip) and a small angle.
fn placement(orientation: u8, tilt_rad: f64) -> [[f64; 2]; 2] {
    let angle = f64::from(orientation % 4) * FRAC_PI_2 + tilt_rad;
    let (c, s) = (angle.cos(), angle.sin());
    let flip = if orientation >= 4 { -1.0 } else { 1.0 };
    // Columns: where one step right and one step down in the image land in the part frame.
    [[c * flip, s * flip], [-s, c]]
}

/// Images one part: returns the scan.
pub fn capture(
    params: &ProcessParams,
    material: &Material,
    design: Design,
    part: &PartContext,
    spec: &ImagingSpec,
    rng: &mut SimRng,
) -> Scan {
    let orientation = rng.random_range(0..8u8);
    let tilt = match spec.mode {
        Mode::Scanner => 2f64.to_radians() * gauss(rng),
        Mode::Microscope => 3f64.to_radians() * gauss(rng),
    };
    let m = placement(orientation, tilt);
    let pixel_mm = spec.pixel_um * 1e-3;
    let (hx, hy) = design.half_extent();
    let (width, height, centre) = match spec.mode {
        Mode::Scanner => {
            // Bounding box of the turned part in image axes (m is orthonormal: image = m^T part).
            let ex = m[0][0].abs() * hx + m[0][1].abs() * hy;
            let ey = m[1][0].abs() * hx + m[1][1].abs() * hy;
            let w = (2.0 * (ex + SCANNER_MARGIN_MM) / pixel_mm).ceil() as usize;
            let h = (2.0 * (ey + SCANNER_MARGIN_MM) / pixel_mm).ceil() as usize;
            (w, h, (0.0, 0.0))
        }
        Mode::Microscope => {
            let c = ((rng.random::<f64>() - 0.5) * hx, (rng.random::<f64>() - 0.5) * hy);
            (spec.microscope_px.0, spec.microscope_px.1, c)
        }
    };
    let d_col = (m[0][0] * pixel_mm, m[0][1] * pixel_mm);
    let d_row = (m[1][0] * pixel_mm, m[1][1] * pixel_mm);
    let (u0, v0) = ((0.5 - width as f64 / 2.0) * pixel_mm, (0.5 - height as f64 / 2.0) * pixel_mm);
    let grid = Grid {
        width,
        height,
        origin: (centre.0 + m[0][0] * u0 + m[1][0] * v0, centre.1 + m[0][1] * u0 + m[1][1] * v0),
        d_col,
        d_row,
        pixel_mm,
    };

    let mut surface = Surface::new(width, height);
    params.render(part, &grid, &mut surface);
    warp(&mut surface, &grid, rng);
    vary_locally(&mut surface, &grid, rng);
    let coverage = match spec.mode {
        Mode::Scanner => Some(part_coverage(design, &grid)),
        Mode::Microscope => None,
    };
    let mut radiance = shade(&surface, material, spec, rng);
    let background = smooth_field(&grid, rng.random::<u32>(), 3.0, 0.0, 1.0);
    if let Some(cov) = &coverage {
        for ((r, &c), &b) in radiance.iter_mut().zip(cov).zip(&background) {
            *r = *r * c + (0.035 * (1.0 + 0.15 * b)) * (1.0 - c);
        }
    }
    illuminate(&mut radiance, width, height, spec.mode, rng);
    add_dust(&mut radiance, width, height, pixel_mm, rng);
    let radiance = defocus(radiance, &grid, spec, rng);
    let pixels = record(&radiance, spec, rng);
    Scan { width, height, bit_depth: spec.bit_depth, pixels, orientation, pixel_um: spec.pixel_um }
}

/// How much a part's relief and albedo vary from place to place on its surface, and over what
/// distance (mm). A part's faces see different local conditions while they are made (the heat
/// of nearby geometry, resin flow, powder packing), so the machine's signature is the same
/// everywhere only on average: one ROI alone can mislead, a vote over many does not.
const LOCAL_RELIEF: f32 = 0.3;
const LOCAL_ALBEDO: f32 = 0.05;
const LOCAL_SCALE_MM: f64 = 1.5;

/// Local strain of the part (shrinkage and warping vary with the geometry): the surface is
/// displaced by a smooth field whose gradient, the strain, reaches about this fraction. Every
/// periodic texture's local pitch wanders by as much, so a unit's pitch is exact only on average.
const LOCAL_STRAIN: f64 = 0.012;

fn warp(surface: &mut Surface, grid: &Grid, rng: &mut SimRng) {
    let amplitude_px = (LOCAL_STRAIN * LOCAL_SCALE_MM / grid.pixel_mm) as f32;
    let dx = smooth_field(grid, rng.random::<u32>(), LOCAL_SCALE_MM, 0.0, 1.0);
    let dy = smooth_field(grid, rng.random::<u32>(), LOCAL_SCALE_MM, 0.0, 1.0);
    let (w, h) = (surface.width, surface.height);
    let sample = |plane: &[f32], x: f32, y: f32| {
        let x = x.clamp(0.0, (w - 1) as f32);
        let y = y.clamp(0.0, (h - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (tx, ty) = (x - x0 as f32, y - y0 as f32);
        let top = plane[y0 * w + x0] * (1.0 - tx) + plane[y0 * w + x1] * tx;
        let bottom = plane[y1 * w + x0] * (1.0 - tx) + plane[y1 * w + x1] * tx;
        top * (1.0 - ty) + bottom * ty
    };
    let mut relief = vec![0f32; w * h];
    let mut albedo = vec![0f32; w * h];
    for row in 0..h {
        for col in 0..w {
            let i = row * w + col;
            let (x, y) = (col as f32 + amplitude_px * dx[i], row as f32 + amplitude_px * dy[i]);
            relief[i] = sample(&surface.relief_um, x, y);
            albedo[i] = sample(&surface.albedo, x, y);
        }
    }
    surface.relief_um = relief;
    surface.albedo = albedo;
}

fn vary_locally(surface: &mut Surface, grid: &Grid, rng: &mut SimRng) {
    let relief = smooth_field(grid, rng.random::<u32>(), LOCAL_SCALE_MM, 0.0, 1.0);
    let albedo = smooth_field(grid, rng.random::<u32>(), LOCAL_SCALE_MM, 0.0, 1.0);
    for (((z, a), r), b) in surface.relief_um.iter_mut().zip(surface.albedo.iter_mut()).zip(&relief).zip(&albedo) {
        *z *= 1.0 + LOCAL_RELIEF * r;
        *a *= 1.0 + LOCAL_ALBEDO * b;
    }
}

/// Defocus that varies across the frame: a part never lies perfectly flat in a shallow depth of
/// field. The frame is blurred at the sharpest and the softest focus of the instrument's range
/// and the two are mixed by a smooth field.
fn defocus(radiance: Vec<f32>, grid: &Grid, spec: &ImagingSpec, rng: &mut SimRng) -> Vec<f32> {
    let (sharp_um, soft_um) = match spec.mode {
        Mode::Scanner => (rng.random_range(3.0..5.0), rng.random_range(7.0..12.0)),
        Mode::Microscope => (rng.random_range(1.0..2.5), rng.random_range(3.0..6.0)),
    };
    let (w, h) = (grid.width, grid.height);
    let mix = smooth_field(grid, rng.random::<u32>(), 2.0 * LOCAL_SCALE_MM, 0.0, 1.0);
    let soft = gaussian_blur(w, h, radiance.clone(), (soft_um / spec.pixel_um) as f32);
    let sharp = gaussian_blur(w, h, radiance, (sharp_um / spec.pixel_um) as f32);
    sharp
        .iter()
        .zip(&soft)
        .zip(&mix)
        .map(|((&a, &b), &m)| {
            let t = (0.5 + m).clamp(0.0, 1.0);
            a + (b - a) * t
        })
        .collect()
}

/// Fraction of each pixel covered by the part (anti-aliased edge from the signed distance).
fn part_coverage(design: Design, grid: &Grid) -> Vec<f32> {
    let mut cov = Vec::with_capacity(grid.width * grid.height);
    for row in 0..grid.height {
        for col in 0..grid.width {
            let (x, y) = grid.part_xy(col, row);
            cov.push((0.5 - design.sdf(x, y) / grid.pixel_mm).clamp(0.0, 1.0) as f32);
        }
    }
    cov
}

/// Lambertian shading of the relief under the instrument's light, times albedo.
fn shade(surface: &Surface, material: &Material, spec: &ImagingSpec, rng: &mut SimRng) -> Vec<f32> {
    let (w, h) = (surface.width, surface.height);
    let inv_2p = (1.0 / (2.0 * spec.pixel_um)) as f32;
    // Light directions (towards the light) in image axes: x right, y down, z up.
    let lights: Vec<(f32, f32, f32)> = match spec.mode {
        // The scanner's lamp sweeps along with the sensor and lights from the top of the image.
        Mode::Scanner => {
            let e = (45.0f64 + rng.random_range(-2.0..2.0)).to_radians();
            vec![(0.0, -e.cos() as f32, e.sin() as f32)]
        }
        // A ring light: four quadrants at a steeper angle. Real rings are never even (LEDs
        // differ, the microscope leans a little), and the imbalance is what lets slopes show.
        Mode::Microscope => {
            let e = 55f64.to_radians();
            (0..4)
                .map(|k| {
                    let a = f64::from(k) * PI / 2.0 + 0.3;
                    let weight = rng.random_range(0.4..1.0);
                    (
                        (weight * a.cos() * e.cos()) as f32,
                        (weight * a.sin() * e.cos()) as f32,
                        (weight * e.sin()) as f32,
                    )
                })
                .collect()
        }
    };
    let norm: f32 = lights.iter().map(|l| l.2).sum();
    let keep = (1.0 - material.translucency) as f32;
    let albedo = material.albedo as f32;
    let z = &surface.relief_um;
    let mut out = vec![0f32; w * h];
    for row in 0..h {
        let (up, down) = (row.saturating_sub(1), (row + 1).min(h - 1));
        for col in 0..w {
            let (left, right) = (col.saturating_sub(1), (col + 1).min(w - 1));
            let gx = (z[row * w + right] - z[row * w + left]) * inv_2p;
            let gy = (z[down * w + col] - z[up * w + col]) * inv_2p;
            let inv_n = 1.0 / (1.0 + gx * gx + gy * gy).sqrt();
            let lit: f32 = lights.iter().map(|l| ((-gx * l.0 - gy * l.1 + l.2) * inv_n).max(0.0)).sum();
            let s = 1.0 + (lit / norm - 1.0) * keep;
            out[row * w + col] = albedo * surface.albedo[row * w + col] * s;
        }
    }
    out
}

/// The instrument's uneven light: a scanner lamp falls off towards its ends, a microscope vignettes.
fn illuminate(radiance: &mut [f32], w: usize, h: usize, mode: Mode, rng: &mut SimRng) {
    let gain = rng.random_range(0.94..1.06f32);
    match mode {
        Mode::Scanner => {
            let a = rng.random_range(0.02..0.06f32);
            let x0 = rng.random_range(-0.3..0.3f32);
            for (i, r) in radiance.iter_mut().enumerate() {
                let x = 2.0 * (i % w) as f32 / w as f32 - 1.0 - x0;
                *r *= gain * (1.0 - a * x * x);
            }
        }
        Mode::Microscope => {
            let v = rng.random_range(0.15..0.35f32);
            let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
            let inv_d2 = 1.0 / (cx * cx + cy * cy);
            for (i, r) in radiance.iter_mut().enumerate() {
                let (dx, dy) = ((i % w) as f32 - cx, (i / w) as f32 - cy);
                *r *= gain * (1.0 - v * (dx * dx + dy * dy) * inv_d2);
            }
        }
    }
}

/// Dust specks and the odd fibre on the glass or lens, each blocking part of the light.
fn add_dust(radiance: &mut [f32], w: usize, h: usize, pixel_mm: f64, rng: &mut SimRng) {
    let area_mm2 = w as f64 * h as f64 * pixel_mm * pixel_mm;
    let specks = Poisson::new(area_mm2 * 0.03 + 1e-9).expect("positive rate").sample(rng) as usize;
    let fibres = Poisson::new(area_mm2 * 0.002 + 1e-9).expect("positive rate").sample(rng) as usize;
    let disc = |radiance: &mut [f32], cx: f64, cy: f64, r: f64, keep: f32| {
        let (x0, x1) = ((cx - r).floor().max(0.0) as usize, ((cx + r).ceil().max(0.0) as usize).min(w));
        let (y0, y1) = ((cy - r).floor().max(0.0) as usize, ((cy + r).ceil().max(0.0) as usize).min(h));
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy <= r * r {
                    radiance[y * w + x] *= keep;
                }
            }
        }
    };
    for _ in 0..specks {
        let (cx, cy) = (rng.random::<f64>() * w as f64, rng.random::<f64>() * h as f64);
        let r = rng.random_range(0.008..0.04) / pixel_mm;
        disc(radiance, cx, cy, r.max(0.5), rng.random_range(0.3..0.8));
    }
    for _ in 0..fibres {
        let (mut x, mut y) = (rng.random::<f64>() * w as f64, rng.random::<f64>() * h as f64);
        let mut heading = rng.random::<f64>() * 2.0 * PI;
        let steps = (rng.random_range(0.5..3.0) / pixel_mm).ceil() as usize;
        let r = (rng.random_range(0.004..0.008) / pixel_mm).max(0.5);
        let keep: f32 = rng.random_range(0.4..0.8);
        for _ in 0..steps {
            disc(radiance, x, y, r, keep.powf(1.0 / (2.0 * r as f32).max(1.0)));
            heading += 0.05 * gauss(rng);
            x += heading.cos();
            y += heading.sin();
        }
    }
}

/// Exposure, shot and read noise, gamma encoding and quantisation.
fn record(radiance: &[f32], spec: &ImagingSpec, rng: &mut SimRng) -> Vec<u16> {
    let (full_well, read_noise) = match spec.mode {
        Mode::Scanner => (30_000.0f32, 8.0f32),
        Mode::Microscope => (8_000.0, 4.0),
    };
    let exposure = 0.85f32;
    let max = ((1u32 << spec.bit_depth) - 1) as f32;
    radiance
        .iter()
        .map(|&r| {
            let electrons = (r * exposure).max(0.0) * full_well;
            let noisy = electrons + (electrons + read_noise * read_noise).sqrt() * gauss(rng) as f32;
            let v = (noisy / full_well).clamp(0.0, 1.0).powf(1.0 / 2.2);
            (v * max).round() as u16
        })
        .collect()
}

impl Scan {
    /// Encodes as PNG (8 or 16 bit gray), or as JPEG at the given quality (8 bit only), with
    /// the pixel size recorded (PNG `pHYs` in pixels per metre, JPEG JFIF density in dots per
    /// inch or per cm, whichever is closer), so that `amfp identify` reads it from the file.
    pub fn encode(&self, jpeg_quality: Option<u8>) -> Result<Vec<u8>, image::ImageError> {
        use image::ImageEncoder;
        let (w, h) = (self.width as u32, self.height as u32);
        let mut out = Vec::new();
        match jpeg_quality {
            Some(q) => {
                let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q);
                enc.set_pixel_density(jfif_density(self.pixel_um));
                // JPEG holds 8 bits: the encoder refuses L16 with an error rather than truncating.
                let color =
                    if self.bit_depth == 8 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::L16 };
                enc.write_image(&self.sample_bytes(u16::to_ne_bytes), w, h, color)?;
            }
            None => self.encode_png(&mut out).map_err(|e| image::ImageError::IoError(e.into()))?,
        }
        Ok(out)
    }

    /// The samples as bytes: one per 8-bit sample, two per 16-bit sample in the given order
    /// (native for `image`'s encoders, big-endian for PNG).
    fn sample_bytes(&self, order: fn(u16) -> [u8; 2]) -> Vec<u8> {
        if self.bit_depth == 8 {
            self.pixels.iter().map(|&v| v as u8).collect()
        } else {
            self.pixels.iter().flat_map(|&v| order(v)).collect()
        }
    }

    /// PNG with a `pHYs` chunk, through the `png` crate (`image`'s encoder writes no `pHYs`),
    /// with `image`'s defaults (fast deflate, adaptive filter) so only the chunk is new.
    fn encode_png(&self, out: &mut Vec<u8>) -> Result<(), png::EncodingError> {
        let mut enc = png::Encoder::new(out, self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_compression(png::Compression::Fast);
        enc.set_filter(png::Filter::Adaptive);
        let per_metre = (1e6 / self.pixel_um).round() as u32;
        enc.set_pixel_dims(Some(png::PixelDimensions { xppu: per_metre, yppu: per_metre, unit: png::Unit::Meter }));
        enc.set_depth(if self.bit_depth == 8 { png::BitDepth::Eight } else { png::BitDepth::Sixteen });
        let mut writer = enc.write_header()?;
        writer.write_image_data(&self.sample_bytes(u16::to_be_bytes))?;
        writer.finish()
    }
}

/// The JFIF density closest to a pixel size: dots per inch or per cm, whichever unit's
/// whole-number density comes back nearer to `pixel_um`.
fn jfif_density(pixel_um: f64) -> image::codecs::jpeg::PixelDensity {
    use image::codecs::jpeg::{PixelDensity, PixelDensityUnit};
    let candidate = |um_per_unit: f64, unit| {
        let d = (um_per_unit / pixel_um).round().clamp(1.0, f64::from(u16::MAX));
        let err = (um_per_unit / d - pixel_um).abs();
        (err, PixelDensity { density: (d as u16, d as u16), unit })
    };
    let inch = candidate(25_400.0, PixelDensityUnit::Inches);
    let cm = candidate(10_000.0, PixelDensityUnit::Centimeters);
    if cm.0 < inch.0 { cm.1 } else { inch.1 }
}
