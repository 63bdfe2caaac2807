//! SLA: a laser spot scans each resin layer in parallel hatch lines.
//!
//! The surface shows the hatch lines as a ripple whose depth depends on how the line spacing
//! compares to the spot. What differs from machine to machine: the realised hatch pitch, the
//! spot size (growing as the optics gather dirt, and towards the platform's edge where the beam
//! meets the resin at an angle), the scan direction, the galvanometer's periodic ripple, the
//! laser's line-to-line power noise, and the layer lines.

use std::f64::consts::TAU;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::{Grid, PartContext, Surface, gauss, jitter_abs, jitter_rel};
use crate::synth::seeds::{SimRng, cell_uniform, name_hash, rng_for};

/// Machine parameters of a laser SLA printer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaParams {
    /// Spacing of adjacent hatch lines, µm.
    pub hatch_pitch_um: f64,
    /// Laser spot diameter (FWHM) at build 1 and the platform centre, µm.
    pub spot_um: f64,
    /// Scan direction against the platform's x axis, degrees.
    pub scan_angle_deg: f64,
    /// Relief of one hatch line, µm.
    pub line_relief_um: f64,
    /// Darkening of the resin per unit of extra cure dose (more dose, more yellowing).
    pub dose_albedo: f64,
    /// Period of the galvanometer ripple along a line, mm.
    pub galvo_ripple_period_mm: f64,
    /// Lateral amplitude of the galvanometer ripple, µm.
    pub galvo_ripple_um: f64,
    /// Relative standard deviation of laser power from line to line.
    pub power_noise: f64,
    /// Layer thickness, µm.
    pub layer_pitch_um: f64,
    /// Relief of the layer lines, µm.
    pub layer_line_um: f64,
    /// Relative growth of the spot per build.
    pub spot_growth_per_build: f64,
    /// Relative growth of the spot from the platform centre to its corner.
    pub tray_falloff: f64,
}

impl SlaParams {
    /// Nominal parameters of an SLA machine model with the given spot and layer.
    pub fn nominal(spot_um: f64, layer_pitch_um: f64) -> Self {
        Self {
            hatch_pitch_um: 1.4 * spot_um,
            spot_um,
            scan_angle_deg: 90.0,
            line_relief_um: 5.0,
            dose_albedo: 0.12,
            galvo_ripple_period_mm: 1.1,
            galvo_ripple_um: 3.0,
            power_noise: 0.08,
            layer_pitch_um,
            layer_line_um: 0.7,
            spot_growth_per_build: 0.002,
            tray_falloff: 0.08,
        }
    }

    pub(super) fn check_ranges(&self, check: &mut impl FnMut(&str, f64, f64, f64, &str)) {
        check("hatch_pitch_um", self.hatch_pitch_um, 10.0, 400.0, "µm");
        check("spot_um", self.spot_um, 10.0, 400.0, "µm");
        check("scan_angle_deg", self.scan_angle_deg, -180.0, 180.0, "degrees");
        check("line_relief_um", self.line_relief_um, 0.0, 20.0, "µm");
        check("dose_albedo", self.dose_albedo, 0.0, 0.5, "");
        check("galvo_ripple_period_mm", self.galvo_ripple_period_mm, 0.1, 50.0, "mm");
        check("galvo_ripple_um", self.galvo_ripple_um, 0.0, 30.0, "µm");
        check("power_noise", self.power_noise, 0.0, 0.5, "");
        check("layer_pitch_um", self.layer_pitch_um, 10.0, 300.0, "µm");
        check("layer_line_um", self.layer_line_um, 0.0, 10.0, "µm");
        check("spot_growth_per_build", self.spot_growth_per_build, 0.0, 0.05, "per build");
        check("tray_falloff", self.tray_falloff, 0.0, 0.5, "");
    }

    pub(super) fn deviate(&self, rng: &mut SimRng, k: f64) -> Self {
        Self {
            hatch_pitch_um: jitter_rel(rng, self.hatch_pitch_um, 0.015, k),
            spot_um: jitter_rel(rng, self.spot_um, 0.1, k),
            scan_angle_deg: jitter_abs(rng, self.scan_angle_deg, 0.5, k),
            line_relief_um: jitter_rel(rng, self.line_relief_um, 0.1, k),
            dose_albedo: jitter_rel(rng, self.dose_albedo, 0.3, k).max(0.0),
            galvo_ripple_period_mm: jitter_rel(rng, self.galvo_ripple_period_mm, 0.25, k),
            galvo_ripple_um: jitter_rel(rng, self.galvo_ripple_um, 0.45, k).max(0.0),
            power_noise: jitter_rel(rng, self.power_noise, 0.45, k).max(0.0),
            layer_pitch_um: self.layer_pitch_um,
            layer_line_um: jitter_rel(rng, self.layer_line_um, 0.2, k).max(0.0),
            spot_growth_per_build: jitter_rel(rng, self.spot_growth_per_build, 0.3, k).max(0.0),
            tray_falloff: jitter_rel(rng, self.tray_falloff, 0.2, k).max(0.0),
        }
    }

    /// Spot diameter at a given build and normalised squared distance from the platform centre.
    pub fn spot_at(&self, build: u32, tray_r2: f64) -> f64 {
        self.spot_um
            * (1.0 + self.spot_growth_per_build * f64::from(build.saturating_sub(1)))
            * (1.0 + self.tray_falloff * tray_r2)
    }
}

/// Renders laser hatch lines onto the grid.
pub fn render(p: &SlaParams, part: &PartContext, grid: &Grid, s: &mut Surface) {
    let mut rng = rng_for(&[part.seed, name_hash("sla")]);
    let shrink = 1.0 + 0.0008 * gauss(&mut rng);
    let hatch = p.hatch_pitch_um * 1e-3 * shrink;
    let sigma = p.spot_at(part.build, part.tray_r2) * 1e-3 / 2.355;
    let inv_2s2 = 1.0 / (2.0 * sigma * sigma);
    let angle = p.scan_angle_deg.to_radians();
    let (ca, sa) = (angle.cos(), angle.sin());
    let galvo_k = TAU / p.galvo_ripple_period_mm;
    let galvo_amp = p.galvo_ripple_um * 1e-3;
    let galvo_phase = rng.random::<f64>() * TAU;
    let line_seed = rng.random::<u64>();
    let layer_k = TAU / (p.layer_pitch_um * 1e-3);
    let layer_phase = rng.random::<f64>() * TAU;
    let relief = p.line_relief_um * (1.0 + 0.03 * gauss(&mut rng));
    // The mean dose of overlapping Gaussian lines, so the albedo varies around 1.
    let mean_dose = (TAU).sqrt() * sigma / hatch;
    let power = |k: i64| 1.0 + p.power_noise * 3.46 * f64::from(cell_uniform(k, 0, line_seed) - 0.5);
    let (px0, py0) = part.platform_xy_mm;
    for row in 0..grid.height {
        for col in 0..grid.width {
            let (x, y) = grid.part_xy(col, row);
            let (qx, qy) = (x + px0, y + py0);
            let along = qx * ca + qy * sa;
            let across = -qx * sa + qy * ca - galvo_amp * (galvo_k * along + galvo_phase).sin();
            let pos = across / hatch;
            let k = pos.floor() as i64;
            let mut cured = 0.0;
            for line in k - 1..=k + 1 {
                let d = across - (line as f64 + 0.5) * hatch;
                cured += power(line) * (-d * d * inv_2s2).exp();
            }
            let layer = p.layer_line_um * (layer_k * y + layer_phase).sin();
            let i = row * grid.width + col;
            s.relief_um[i] = (relief * cured + layer) as f32;
            s.albedo[i] = (1.0 - p.dose_albedo * (cured / mean_dose - 1.0)) as f32;
        }
    }
}
