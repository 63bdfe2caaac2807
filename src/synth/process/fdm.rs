//! FDM: a heated nozzle lays thermoplastic roads side by side at the layer pitch.
//!
//! The surface is a train of rounded beads. What differs from machine to machine: the realised
//! pitch (Z calibration), the bead's height and cross-section, a periodic lateral wobble of the
//! roads (lead-screw Z-wobble), a ripple of the extruded width along each road (extruder gear
//! teeth), an asymmetric bead from a worn nozzle (growing with every build), seam blobs where
//! each road starts, and filament roughness. A tilted bed changes bead height across the tray.

use std::f64::consts::{PI, TAU};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::{PartContext, Surface, gauss, jitter_abs, jitter_rel};
use crate::synth::fields::rough_field;
use crate::synth::process::Grid;
use crate::synth::seeds::{SimRng, cell_uniform, name_hash, rng_for};

/// Machine parameters of an FDM printer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdmParams {
    /// Centre-to-centre spacing of adjacent roads (the layer pitch), µm.
    pub road_pitch_um: f64,
    /// Height of a bead's crown above the valley between roads, µm.
    pub bead_height_um: f64,
    /// Superellipse exponent of the bead cross-section: 2 is elliptical, larger is flatter.
    pub bead_flatness: f64,
    /// Period of the lateral road wobble along each road, mm.
    pub wobble_period_mm: f64,
    /// Amplitude of the lateral road wobble, µm.
    pub wobble_amp_um: f64,
    /// Period of the extrusion-width ripple along a road, mm.
    pub ripple_period_mm: f64,
    /// Relative amplitude of the extrusion-width ripple.
    pub ripple_amp: f64,
    /// Asymmetry of the bead cross-section from nozzle wear at build 1 (0 = symmetric).
    pub nozzle_asym: f64,
    /// Growth of the nozzle asymmetry per build.
    pub nozzle_wear_per_build: f64,
    /// Height of the seam blob where a road starts, µm.
    pub seam_amp_um: f64,
    /// RMS filament surface roughness, µm.
    pub roughness_um: f64,
    /// Relative change of bead height from the tray centre to its corner (bed tilt).
    pub bed_tilt: f64,
}

impl FdmParams {
    /// Nominal parameters of an FDM machine model with the given road pitch.
    pub fn nominal(road_pitch_um: f64) -> Self {
        Self {
            road_pitch_um,
            bead_height_um: 0.12 * road_pitch_um,
            bead_flatness: 2.4,
            wobble_period_mm: 2.0,
            wobble_amp_um: 6.0,
            ripple_period_mm: 0.9,
            ripple_amp: 0.05,
            nozzle_asym: 0.08,
            nozzle_wear_per_build: 0.004,
            seam_amp_um: 10.0,
            roughness_um: 1.5,
            bed_tilt: 0.06,
        }
    }

    pub(super) fn check_ranges(&self, check: &mut impl FnMut(&str, f64, f64, f64, &str)) {
        check("road_pitch_um", self.road_pitch_um, 100.0, 600.0, "µm");
        check("bead_height_um", self.bead_height_um, 1.0, 150.0, "µm");
        check("bead_flatness", self.bead_flatness, 1.2, 8.0, "");
        check("wobble_period_mm", self.wobble_period_mm, 0.2, 20.0, "mm");
        check("wobble_amp_um", self.wobble_amp_um, 0.0, 60.0, "µm");
        check("ripple_period_mm", self.ripple_period_mm, 0.1, 20.0, "mm");
        check("ripple_amp", self.ripple_amp, 0.0, 0.3, "");
        check("nozzle_asym", self.nozzle_asym, 0.0, 0.6, "");
        check("nozzle_wear_per_build", self.nozzle_wear_per_build, 0.0, 0.05, "per build");
        check("seam_amp_um", self.seam_amp_um, 0.0, 80.0, "µm");
        check("roughness_um", self.roughness_um, 0.0, 10.0, "µm");
        check("bed_tilt", self.bed_tilt, 0.0, 0.3, "");
    }

    pub(super) fn deviate(&self, rng: &mut SimRng, k: f64) -> Self {
        Self {
            road_pitch_um: jitter_rel(rng, self.road_pitch_um, 0.004, k),
            bead_height_um: jitter_rel(rng, self.bead_height_um, 0.08, k),
            bead_flatness: jitter_rel(rng, self.bead_flatness, 0.06, k).max(1.2),
            wobble_period_mm: jitter_rel(rng, self.wobble_period_mm, 0.2, k),
            wobble_amp_um: jitter_rel(rng, self.wobble_amp_um, 0.4, k).max(0.0),
            ripple_period_mm: jitter_rel(rng, self.ripple_period_mm, 0.2, k),
            ripple_amp: jitter_rel(rng, self.ripple_amp, 0.4, k).max(0.0),
            nozzle_asym: jitter_abs(rng, self.nozzle_asym, 0.04, k).clamp(0.0, 0.6),
            nozzle_wear_per_build: jitter_rel(rng, self.nozzle_wear_per_build, 0.3, k).max(0.0),
            seam_amp_um: jitter_rel(rng, self.seam_amp_um, 0.25, k).max(0.0),
            roughness_um: jitter_rel(rng, self.roughness_um, 0.15, k).max(0.0),
            bed_tilt: jitter_rel(rng, self.bed_tilt, 0.3, k).max(0.0),
        }
    }

    /// Nozzle asymmetry at a given build: wear accumulates linearly.
    pub fn asymmetry_at(&self, build: u32) -> f64 {
        (self.nozzle_asym + self.nozzle_wear_per_build * f64::from(build.saturating_sub(1))).min(0.9)
    }
}

/// Renders FDM roads onto the grid.
pub fn render(p: &FdmParams, part: &PartContext, grid: &Grid, s: &mut Surface) {
    let mut rng = rng_for(&[part.seed, name_hash("fdm")]);
    // Per-part variation: thermal history and slicing differ a little from part to part.
    let pitch = p.road_pitch_um * 1e-3 * (1.0 + 0.0008 * gauss(&mut rng));
    let tray = 1.0 + p.bed_tilt * (2.0 * part.tray_r2 - 1.0);
    let crown = p.bead_height_um * tray * (1.0 + 0.04 * gauss(&mut rng));
    let asym = p.asymmetry_at(part.build);
    let inv_flat = 1.0 / p.bead_flatness;
    // Top-layer raster at +45 or -45 degrees in the part frame.
    let theta = if rng.random_bool(0.5) { PI / 4.0 } else { -PI / 4.0 } + 0.003 * gauss(&mut rng);
    let (ct, st) = (theta.cos(), theta.sin());
    let offset = rng.random::<f64>() * pitch;
    let wobble_k = TAU / p.wobble_period_mm;
    let wobble_amp = p.wobble_amp_um * 1e-3;
    let wobble_phase = rng.random::<f64>() * TAU;
    // The wobble's phase advances from road to road as the lead screw turns.
    let wobble_step = TAU * pitch / (p.wobble_period_mm * 1.37);
    let ripple_k = TAU / p.ripple_period_mm;
    let seam_v0 = (rng.random::<f64>() - 0.5) * 8.0;
    let seam_width = 0.12;
    let road_seed = rng.random::<u64>();
    let rough = rough_field(grid.width, grid.height, &mut rng, (0.025 / grid.pixel_mm) as f32);
    // How far (in pitches) the widest possible bead reaches past its road's edge.
    let reach = (0.5 * (1.0 + p.ripple_amp) * (1.0 + asym) - 0.5).max(0.0);
    for row in 0..grid.height {
        for col in 0..grid.width {
            let (x, y) = grid.part_xy(col, row);
            let along = x * ct + y * st;
            let across = -x * st + y * ct;
            let displaced =
                across - wobble_amp * (wobble_k * along + wobble_phase + across / pitch * wobble_step).sin();
            let pos = (displaced - offset) / pitch;
            let road = pos.floor();
            let u = pos - road;
            let road_i = road as i64;
            // A bead wider than its road (width ripple, a worn nozzle's wide side) spills onto
            // its neighbours' ground: near a road's edge the neighbour's bead may stand higher.
            let neighbours = if u < reach {
                -1..=0
            } else if u > 1.0 - reach {
                0..=1
            } else {
                0..=0
            };
            let (mut bead, mut t_top, mut top_road) = (0.0f64, 1.0f64, road_i);
            for d in neighbours {
                let r = road_i + d;
                let psi = TAU * f64::from(cell_uniform(r, 0, road_seed));
                let width = 1.0 + p.ripple_amp * (ripple_k * along + psi).sin();
                let mut t = (u - d as f64 - 0.5) / (0.5 * width);
                t = if t < 0.0 { t / (1.0 - asym) } else { t / (1.0 + asym) };
                let t = t.abs().min(1.0);
                let h = crown * (1.0 - t.powf(p.bead_flatness)).max(0.0).powf(inv_flat);
                if h > bead || d == 0 && bead == 0.0 {
                    (bead, t_top, top_road) = (h, t, r);
                }
            }
            let (t, road_i) = (t_top, top_road);
            let seam_v = seam_v0 + 0.3 * (f64::from(cell_uniform(road_i, 1, road_seed)) - 0.5);
            let dv = (along - seam_v) / seam_width;
            let seam = if dv.abs() < 3.0 { p.seam_amp_um * (-dv * dv).exp() * (1.0 - t) } else { 0.0 };
            let i = row * grid.width + col;
            s.relief_um[i] = (bead + seam) as f32 + p.roughness_um as f32 * rough[i];
        }
    }
}
