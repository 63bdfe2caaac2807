//! DLS: a DLP projector cures each resin layer as an image on a square pixel grid.
//!
//! The down-facing surface keeps the projector's pixel grid as a faint relief. What differs from
//! machine to machine: the projected pixel pitch (optics magnification, slightly different in x
//! and y), the grid's rotation against the platform, how sharp the pixel edges are (lens blur),
//! each micromirror's gain (a fixed pattern, with a few dead and hot pixels), the projector's
//! low-frequency illumination non-uniformity (growing as the lamp ages) and its fall-off towards
//! the platform's edge, and the layer lines.

use std::f64::consts::TAU;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::{Grid, PartContext, Surface, gauss, jitter_abs, jitter_log, jitter_rel};
use crate::synth::seeds::{SimRng, cell_uniform, name_hash, rng_for};

/// Machine parameters of a DLS (projector) printer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlsParams {
    /// Projected pixel pitch along the projector's x axis, µm.
    pub pixel_pitch_um: f64,
    /// Ratio of the y pitch to the x pitch.
    pub pitch_aspect: f64,
    /// Rotation of the pixel grid against the platform axes, degrees.
    pub grid_rotation_deg: f64,
    /// Relief of one cured pixel, µm.
    pub cure_relief_um: f64,
    /// Width of a pixel's blurred edge as a fraction of the pitch.
    pub edge_softness: f64,
    /// Relative standard deviation of the micromirror gains.
    pub fixed_pattern: f64,
    /// Fraction of dead (dark) micromirrors.
    pub dead_pixel_fraction: f64,
    /// Fraction of hot (bright) micromirrors.
    pub hot_pixel_fraction: f64,
    /// Relative amplitude of the illumination non-uniformity at build 1.
    pub nonuniformity: f64,
    /// Spatial period of the illumination non-uniformity, mm.
    pub nonuniformity_period_mm: f64,
    /// Growth of the non-uniformity per build (lamp ageing).
    pub nonuniformity_growth_per_build: f64,
    /// Layer thickness, µm.
    pub layer_pitch_um: f64,
    /// Relief of the layer lines, µm.
    pub layer_line_um: f64,
    /// Relative loss of cure dose from the platform centre to its corner.
    pub tray_falloff: f64,
}

impl DlsParams {
    /// Nominal parameters of a DLS machine model with the given pixel pitch and layer.
    pub fn nominal(pixel_pitch_um: f64, layer_pitch_um: f64) -> Self {
        Self {
            pixel_pitch_um,
            pitch_aspect: 1.0,
            grid_rotation_deg: 0.0,
            cure_relief_um: 3.0,
            edge_softness: 0.2,
            fixed_pattern: 0.08,
            dead_pixel_fraction: 0.0008,
            hot_pixel_fraction: 0.0005,
            nonuniformity: 0.12,
            nonuniformity_period_mm: 35.0,
            nonuniformity_growth_per_build: 0.002,
            layer_pitch_um,
            layer_line_um: 0.5,
            tray_falloff: 0.1,
        }
    }

    pub(super) fn check_ranges(&self, check: &mut impl FnMut(&str, f64, f64, f64, &str)) {
        check("pixel_pitch_um", self.pixel_pitch_um, 10.0, 300.0, "µm");
        check("pitch_aspect", self.pitch_aspect, 0.9, 1.1, "");
        check("grid_rotation_deg", self.grid_rotation_deg, -10.0, 10.0, "degrees");
        check("cure_relief_um", self.cure_relief_um, 0.0, 20.0, "µm");
        check("edge_softness", self.edge_softness, 0.01, 0.5, "of the pitch");
        check("fixed_pattern", self.fixed_pattern, 0.0, 0.5, "");
        check("dead_pixel_fraction", self.dead_pixel_fraction, 0.0, 0.05, "");
        check("hot_pixel_fraction", self.hot_pixel_fraction, 0.0, 0.05, "");
        check("nonuniformity", self.nonuniformity, 0.0, 0.6, "");
        check("nonuniformity_period_mm", self.nonuniformity_period_mm, 1.0, 1000.0, "mm");
        check("nonuniformity_growth_per_build", self.nonuniformity_growth_per_build, 0.0, 0.05, "per build");
        check("layer_pitch_um", self.layer_pitch_um, 10.0, 300.0, "µm");
        check("layer_line_um", self.layer_line_um, 0.0, 10.0, "µm");
        check("tray_falloff", self.tray_falloff, 0.0, 0.5, "");
    }

    pub(super) fn deviate(&self, rng: &mut SimRng, k: f64) -> Self {
        Self {
            pixel_pitch_um: jitter_rel(rng, self.pixel_pitch_um, 0.012, k),
            pitch_aspect: jitter_abs(rng, self.pitch_aspect, 0.003, k),
            grid_rotation_deg: jitter_abs(rng, self.grid_rotation_deg, 0.5, k),
            cure_relief_um: jitter_rel(rng, self.cure_relief_um, 0.2, k),
            edge_softness: jitter_rel(rng, self.edge_softness, 0.25, k).clamp(0.01, 0.5),
            fixed_pattern: jitter_rel(rng, self.fixed_pattern, 0.4, k).max(0.0),
            dead_pixel_fraction: jitter_log(rng, self.dead_pixel_fraction, 1.0, k),
            hot_pixel_fraction: jitter_log(rng, self.hot_pixel_fraction, 1.0, k),
            nonuniformity: jitter_rel(rng, self.nonuniformity, 0.25, k).max(0.0),
            nonuniformity_period_mm: jitter_rel(rng, self.nonuniformity_period_mm, 0.2, k),
            nonuniformity_growth_per_build: jitter_rel(rng, self.nonuniformity_growth_per_build, 0.3, k).max(0.0),
            layer_pitch_um: self.layer_pitch_um,
            layer_line_um: jitter_rel(rng, self.layer_line_um, 0.2, k).max(0.0),
            tray_falloff: jitter_rel(rng, self.tray_falloff, 0.2, k).max(0.0),
        }
    }

    /// Illumination non-uniformity at a given build: the lamp ages.
    pub fn nonuniformity_at(&self, build: u32) -> f64 {
        self.nonuniformity + self.nonuniformity_growth_per_build * f64::from(build.saturating_sub(1))
    }
}

/// A pixel's cured profile across one period: flat top, blurred edges (smoothstep ramps).
#[inline]
fn pixel_profile(f: f64, edge: f64) -> f64 {
    let ramp = |t: f64| {
        let t = (t / edge).clamp(0.0, 1.0);
        t * t * (3.0 - 2.0 * t)
    };
    ramp(f) * ramp(1.0 - f)
}

/// Renders the projector's pixel grid onto the grid.
pub fn render(p: &DlsParams, part: &PartContext, grid: &Grid, s: &mut Surface) {
    let mut rng = rng_for(&[part.seed, name_hash("dls")]);
    // Resin shrinkage differs a little from part to part and scales the printed grid with it.
    let shrink = 1.0 + 0.0008 * gauss(&mut rng);
    let pitch_x = p.pixel_pitch_um * 1e-3 * shrink;
    let pitch_y = pitch_x * p.pitch_aspect;
    let rot = p.grid_rotation_deg.to_radians();
    let (cr, sr) = (rot.cos(), rot.sin());
    let mut machine_rng = rng_for(&[part.machine_seed, name_hash("dls-illumination")]);
    let phase_x = machine_rng.random::<f64>() * TAU;
    let phase_y = machine_rng.random::<f64>() * TAU;
    let pattern_seed = machine_rng.random::<u64>();
    let nonuni = p.nonuniformity_at(part.build);
    let k_illum = TAU / p.nonuniformity_period_mm;
    let inv_diag2 = 1.0 / (part.platform_half_diag_mm * part.platform_half_diag_mm);
    let layer_k = TAU / (p.layer_pitch_um * 1e-3);
    let layer_phase = rng.random::<f64>() * TAU;
    let relief = p.cure_relief_um * (1.0 + 0.03 * gauss(&mut rng));
    let dead = p.dead_pixel_fraction as f32;
    let hot = dead + p.hot_pixel_fraction as f32;
    let (px0, py0) = part.platform_xy_mm;
    for row in 0..grid.height {
        for col in 0..grid.width {
            let (x, y) = grid.part_xy(col, row);
            // Platform coordinates: the projector is fixed to the machine, not to the part.
            let (qx, qy) = (x + px0, y + py0);
            let gx = (qx * cr + qy * sr) / pitch_x;
            let gy = (-qx * sr + qy * cr) / pitch_y;
            let (ix, iy) = (gx.floor(), gy.floor());
            let bump = pixel_profile(gx - ix, p.edge_softness) * pixel_profile(gy - iy, p.edge_softness);
            let u = cell_uniform(ix as i64, iy as i64, pattern_seed);
            let gain = if u < dead {
                0.15
            } else if u < hot {
                1.7
            } else {
                1.0 + p.fixed_pattern * 3.46 * f64::from(cell_uniform(ix as i64, iy as i64, !pattern_seed) - 0.5)
            };
            let illum = (1.0 + nonuni * (k_illum * qx + phase_x).cos() * (0.8 * k_illum * qy + phase_y).cos())
                * (1.0 - p.tray_falloff * ((qx * qx + qy * qy) * inv_diag2).min(1.0));
            let layer = p.layer_line_um * (layer_k * y + layer_phase).sin();
            let i = row * grid.width + col;
            s.relief_um[i] = (relief * bump * gain * illum + layer) as f32;
            // Over-cured resin is slightly darker; the under-cured seams between pixels lighter.
            s.albedo[i] = (1.0 - 0.08 * (gain * illum - 1.0) + 0.05 * (1.0 - bump)) as f32;
        }
    }
}
