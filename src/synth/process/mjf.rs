//! MJF: an inkjet printhead prints fusing agent onto polymer powder, and infrared fuses it.
//!
//! The surface is made of partly fused powder grains. What differs from machine to machine: the
//! grain-size distribution that survives fusing (powder refresh ratio, fusing energy), how many
//! grains stick to the skin, how proud they stand, the printhead's droplet grid (1200 dpi,
//! visible as faint agent density), the recoater's streaks along its travel (growing with
//! wear), and the thermal field that makes grains coarser at the centre of the bed.

use std::f64::consts::TAU;

use rand::RngExt;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};

use super::{Grid, PartContext, Surface, gauss, jitter_abs, jitter_rel, pixel_mtf};
use crate::synth::fields::smooth_field;
use crate::synth::seeds::{SimRng, name_hash, rng_for};

/// Machine parameters of an MJF printer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MjfParams {
    /// Median diameter of the fused grains on the skin, µm.
    pub grain_median_um: f64,
    /// Log-normal shape (sigma of the log diameter) of the grain sizes.
    pub grain_sigma: f64,
    /// Total grain cross-section per unit area (1 = one layer's worth).
    pub grain_coverage: f64,
    /// Height of a grain's cap as a fraction of its radius.
    pub grain_relief: f64,
    /// Pitch of the printhead's droplet grid, µm (1200 dpi = 21.17 µm).
    pub droplet_pitch_um: f64,
    /// Albedo contrast of the fusing-agent droplet grid.
    pub droplet_contrast: f64,
    /// Recoater travel direction against the platform's x axis, degrees.
    pub streak_angle_deg: f64,
    /// Albedo contrast of the recoater streaks at build 1.
    pub streak_strength: f64,
    /// Width of the recoater streaks, mm.
    pub streak_width_mm: f64,
    /// Growth of the streak contrast per build (recoater wear).
    pub streak_growth_per_build: f64,
    /// Relative growth of the grains at the bed centre against its corner (thermal field).
    pub thermal_tray: f64,
}

impl MjfParams {
    /// Nominal parameters of an MJF machine model with the given median grain.
    pub fn nominal(grain_median_um: f64) -> Self {
        Self {
            grain_median_um,
            grain_sigma: 0.3,
            grain_coverage: 1.5,
            grain_relief: 0.45,
            droplet_pitch_um: 21.17,
            droplet_contrast: 0.05,
            streak_angle_deg: 0.0,
            streak_strength: 0.04,
            streak_width_mm: 0.25,
            streak_growth_per_build: 0.001,
            thermal_tray: 0.05,
        }
    }

    pub(super) fn check_ranges(&self, check: &mut impl FnMut(&str, f64, f64, f64, &str)) {
        check("grain_median_um", self.grain_median_um, 10.0, 200.0, "µm");
        check("grain_sigma", self.grain_sigma, 0.0, 1.0, "");
        check("grain_coverage", self.grain_coverage, 0.1, 5.0, "");
        check("grain_relief", self.grain_relief, 0.0, 1.0, "of the radius");
        check("droplet_pitch_um", self.droplet_pitch_um, 5.0, 200.0, "µm");
        check("droplet_contrast", self.droplet_contrast, 0.0, 0.5, "");
        check("streak_angle_deg", self.streak_angle_deg, -90.0, 90.0, "degrees");
        check("streak_strength", self.streak_strength, 0.0, 0.5, "");
        check("streak_width_mm", self.streak_width_mm, 0.02, 10.0, "mm");
        check("streak_growth_per_build", self.streak_growth_per_build, 0.0, 0.05, "per build");
        check("thermal_tray", self.thermal_tray, 0.0, 0.3, "");
    }

    pub(super) fn deviate(&self, rng: &mut SimRng, k: f64) -> Self {
        Self {
            grain_median_um: jitter_rel(rng, self.grain_median_um, 0.08, k),
            grain_sigma: jitter_rel(rng, self.grain_sigma, 0.15, k).clamp(0.0, 1.0),
            grain_coverage: jitter_rel(rng, self.grain_coverage, 0.15, k),
            grain_relief: jitter_rel(rng, self.grain_relief, 0.15, k).clamp(0.0, 1.0),
            droplet_pitch_um: jitter_rel(rng, self.droplet_pitch_um, 0.002, k),
            droplet_contrast: jitter_rel(rng, self.droplet_contrast, 0.2, k).max(0.0),
            streak_angle_deg: jitter_abs(rng, self.streak_angle_deg, 1.5, k),
            streak_strength: jitter_rel(rng, self.streak_strength, 0.25, k).max(0.0),
            streak_width_mm: jitter_rel(rng, self.streak_width_mm, 0.15, k),
            streak_growth_per_build: jitter_rel(rng, self.streak_growth_per_build, 0.3, k).max(0.0),
            thermal_tray: jitter_rel(rng, self.thermal_tray, 0.25, k).max(0.0),
        }
    }

    /// Median grain diameter of a part at a normalised squared distance from the bed centre.
    pub fn grain_median_at(&self, tray_r2: f64) -> f64 {
        self.grain_median_um * (1.0 + self.thermal_tray * (1.0 - tray_r2))
    }
}

/// Renders fused powder grains, droplet grid and streaks onto the grid.
pub fn render(p: &MjfParams, part: &PartContext, grid: &Grid, s: &mut Surface) {
    let mut rng = rng_for(&[part.seed, name_hash("mjf")]);
    let (w, h) = (grid.width, grid.height);
    let px_um = grid.pixel_mm * 1e3;
    let median_px = p.grain_median_at(part.tray_r2) * (1.0 + 0.01 * gauss(&mut rng)) / px_um;
    let radii = LogNormal::new((0.5 * median_px).ln(), p.grain_sigma.max(1e-6)).expect("valid log-normal");
    // Expected grain area from the log-normal's second moment.
    let mean_area = std::f64::consts::PI * (0.5 * median_px).powi(2) * (2.0 * p.grain_sigma * p.grain_sigma).exp();
    let count = (p.grain_coverage * (w * h) as f64 / mean_area).round() as usize;
    // A gently undulating base, then grains, each a spherical cap; the highest wins.
    let base = smooth_field(grid, (rng.random::<u64>() >> 32) as u32, 0.3, 0.0, 1.0);
    for (r, b) in s.relief_um.iter_mut().zip(&base) {
        *r = 2.0 * b;
    }
    for _ in 0..count {
        let cx = rng.random::<f64>() * w as f64;
        let cy = rng.random::<f64>() * h as f64;
        let r = radii.sample(&mut rng).min(6.0 * median_px).max(0.3);
        let cap = (p.grain_relief * r * px_um) as f32;
        let (x0, x1) = (((cx - r).floor().max(0.0)) as usize, ((cx + r).ceil() as usize).min(w));
        let (y0, y1) = (((cy - r).floor().max(0.0)) as usize, ((cy + r).ceil() as usize).min(h));
        let inv_r2 = 1.0 / (r * r);
        for yy in y0..y1 {
            let dy = yy as f64 + 0.5 - cy;
            let line = &mut s.relief_um[yy * w..(yy + 1) * w];
            for (xx, out) in line.iter_mut().enumerate().take(x1).skip(x0) {
                let dx = xx as f64 + 0.5 - cx;
                let q = 1.0 - (dx * dx + dy * dy) * inv_r2;
                if q > 0.0 {
                    let z = cap * (q as f32).sqrt();
                    let base_z = 2.0 * base[yy * w + xx];
                    if z + base_z > *out {
                        *out = z + base_z;
                    }
                }
            }
        }
    }
    // Agent density on the printhead's droplet grid, fixed to the platform.
    let pitch = p.droplet_pitch_um * 1e-3;
    let droplet = p.droplet_contrast * pixel_mtf(grid.pixel_mm, pitch).powi(2);
    let k = TAU / pitch;
    let (px0, py0) = part.platform_xy_mm;
    let streak_strength = p.streak_strength + p.streak_growth_per_build * f64::from(part.build.saturating_sub(1));
    let streak_seed = (rng.random::<u64>() >> 32) as u32;
    let angle = p.streak_angle_deg.to_radians();
    let streaks = smooth_field(grid, streak_seed, 6.0, angle, p.streak_width_mm / 6.0);
    for row in 0..h {
        for col in 0..w {
            let (x, y) = grid.part_xy(col, row);
            let dots = 0.25 * (1.0 + (k * (x + px0)).cos()) * (1.0 + (k * (y + py0)).cos());
            let i = row * w + col;
            s.albedo[i] = (1.0 - droplet * dots + streak_strength * f64::from(streaks[i])) as f32;
        }
    }
}
