//! Random fields shared by the process and imaging models: smooth low-frequency variation
//! (illumination, streaks, non-uniformity) and fine correlated roughness.

use image::{ImageBuffer, Luma};
use noise::{NoiseFn, Perlin};
use rand::RngExt;

use super::process::Grid;
use super::seeds::SimRng;

/// Pixels between the nodes where smooth fields are evaluated; values in between are
/// interpolated. Smooth fields vary over hundreds of pixels, so this loses nothing.
const NODE_STEP: usize = 8;

/// A smooth random field in [-1, 1] (Perlin noise, two octaves) over the grid, defined in part
/// coordinates so it moves with the part. `scale_mm` is its feature size along `angle_rad`;
/// `aspect` stretches it across that direction (aspect < 1 gives streaks along `angle_rad`).
pub fn smooth_field(grid: &Grid, seed: u32, scale_mm: f64, angle_rad: f64, aspect: f64) -> Vec<f32> {
    let perlin = Perlin::new(seed);
    let (ca, sa) = (angle_rad.cos(), angle_rad.sin());
    let along = 1.0 / scale_mm;
    let across = 1.0 / (scale_mm * aspect);
    eval_on_nodes(grid, |x, y| {
        let u = (x * ca + y * sa) * along;
        let v = (-x * sa + y * ca) * across;
        let n = perlin.get([u, v]) + 0.5 * perlin.get([2.03 * u + 17.1, 2.03 * v - 5.3]);
        (n / 1.5) as f32
    })
}

/// Evaluates `f(part_x, part_y)` on a coarse lattice of nodes and interpolates bilinearly.
fn eval_on_nodes(grid: &Grid, f: impl Fn(f64, f64) -> f32) -> Vec<f32> {
    let nx = grid.width.div_ceil(NODE_STEP) + 1;
    let ny = grid.height.div_ceil(NODE_STEP) + 1;
    let mut nodes = vec![0f32; nx * ny];
    for j in 0..ny {
        for i in 0..nx {
            let (x, y) = grid.part_xy(i * NODE_STEP, j * NODE_STEP);
            nodes[j * nx + i] = f(x, y);
        }
    }
    let mut out = vec![0f32; grid.width * grid.height];
    let inv = 1.0 / NODE_STEP as f32;
    for row in 0..grid.height {
        let j = row / NODE_STEP;
        let ty = (row % NODE_STEP) as f32 * inv;
        let line = &mut out[row * grid.width..(row + 1) * grid.width];
        for (col, o) in line.iter_mut().enumerate() {
            let i = col / NODE_STEP;
            let tx = (col % NODE_STEP) as f32 * inv;
            let a = nodes[j * nx + i] * (1.0 - tx) + nodes[j * nx + i + 1] * tx;
            let b = nodes[(j + 1) * nx + i] * (1.0 - tx) + nodes[(j + 1) * nx + i + 1] * tx;
            *o = a * (1.0 - ty) + b * ty;
        }
    }
    out
}

/// Gaussian-correlated noise with unit standard deviation and correlation length `sigma_px`
/// pixels: surface micro-roughness, sensor-independent when `sigma_px` comes from a length in mm.
pub fn rough_field(width: usize, height: usize, rng: &mut SimRng, sigma_px: f32) -> Vec<f32> {
    let white: Vec<f32> = (0..width * height).map(|_| rng.random::<f32>() - 0.5).collect();
    let mut field = gaussian_blur(width, height, white, sigma_px);
    let n = field.len().max(1) as f64;
    let mean = field.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = field.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let inv_sd = if var > 0.0 { (1.0 / var.sqrt()) as f32 } else { 0.0 };
    for v in &mut field {
        *v = (*v - mean as f32) * inv_sd;
    }
    field
}

/// A Gaussian blur of a row-major f32 plane (no-op for sigma under 0.05 px).
pub fn gaussian_blur(width: usize, height: usize, data: Vec<f32>, sigma_px: f32) -> Vec<f32> {
    if sigma_px < 0.05 || width == 0 || height == 0 {
        return data;
    }
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(width as u32, height as u32, data).expect("plane size matches");
    let params = image::imageops::GaussianBlurParameters::new_from_sigma(sigma_px);
    image::imageops::blur_advanced(&img, params).into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::seeds::rng_for;

    fn grid(w: usize, h: usize) -> Grid {
        Grid { width: w, height: h, origin: (0.0, 0.0), d_col: (0.01, 0.0), d_row: (0.0, 0.01), pixel_mm: 0.01 }
    }

    #[test]
    fn rough_field_has_unit_variance_and_correlation() {
        let f = rough_field(200, 200, &mut rng_for(&[1]), 3.0);
        let var: f32 = f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32;
        assert!((var - 1.0).abs() < 0.01);
        // Neighbours are strongly correlated at a 3 px correlation length.
        let corr: f32 = f.windows(2).map(|w| w[0] * w[1]).sum::<f32>() / (f.len() - 1) as f32;
        assert!(corr > 0.8, "lag-1 correlation {corr}");
    }

    #[test]
    fn smooth_field_is_bounded_and_varies() {
        let f = smooth_field(&grid(300, 200), 5, 0.5, 0.3, 1.0);
        assert!(f.iter().all(|v| v.abs() <= 1.0));
        let spread = f.iter().cloned().fold(f32::MIN, f32::max) - f.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 0.3, "spread {spread}");
    }
}
