//! The four AM processes and the surface texture each leaves on a part.
//!
//! Each process module holds the machine parameters of that process (with the physical range
//! of each, the spread between units of one machine model, and drift with build number) and a
//! renderer that writes the part's surface relief (µm) and albedo onto a pixel grid. The
//! renderers work in the part's own coordinates (mm), so the same part looks the same at any
//! pixel size, orientation or position in the image. See docs/simulator.md for the physics.

pub mod dls;
pub mod fdm;
pub mod mjf;
pub mod sla;

use serde::{Deserialize, Serialize};

use super::seeds::SimRng;

/// An additive-manufacturing process family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Process {
    /// Fused deposition modelling: extruded thermoplastic roads.
    #[serde(rename = "FDM")]
    Fdm,
    /// Digital light synthesis: a projector cures resin one pixel grid per layer.
    #[serde(rename = "DLS")]
    Dls,
    /// Stereolithography with a scanning laser.
    #[serde(rename = "SLA")]
    Sla,
    /// Multi jet fusion: inkjet fusing agent on polymer powder, fused by infrared.
    #[serde(rename = "MJF")]
    Mjf,
}

impl Process {
    /// All processes, in a fixed order.
    pub const ALL: [Process; 4] = [Process::Fdm, Process::Dls, Process::Sla, Process::Mjf];

    /// The short name used in labels and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Process::Fdm => "FDM",
            Process::Dls => "DLS",
            Process::Sla => "SLA",
            Process::Mjf => "MJF",
        }
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parameters of one machine, by process.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ProcessParams {
    Fdm(fdm::FdmParams),
    Dls(dls::DlsParams),
    Sla(sla::SlaParams),
    Mjf(mjf::MjfParams),
}

impl ProcessParams {
    /// The process these parameters belong to.
    pub fn process(&self) -> Process {
        match self {
            ProcessParams::Fdm(_) => Process::Fdm,
            ProcessParams::Dls(_) => Process::Dls,
            ProcessParams::Sla(_) => Process::Sla,
            ProcessParams::Mjf(_) => Process::Mjf,
        }
    }

    /// Deserialises the parameter table of a given process (unknown keys are errors).
    pub fn from_toml(process: Process, table: toml::Value) -> Result<Self, String> {
        fn de<T: serde::de::DeserializeOwned>(v: toml::Value) -> Result<T, String> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
            })
        }
        Ok(match process {
            Process::Fdm => ProcessParams::Fdm(de(table)?),
            Process::Dls => ProcessParams::Dls(de(table)?),
            Process::Sla => ProcessParams::Sla(de(table)?),
            Process::Mjf => ProcessParams::Mjf(de(table)?),
        })
    }

    /// Checks every parameter against its physical range; each error names the key and the range.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut check = |key: &str, v: f64, lo: f64, hi: f64, unit: &str| {
            if !(v.is_finite() && v >= lo && v <= hi) {
                errs.push(format!("params.{key} = {v} is outside the physical range {lo}..={hi} {unit}"));
            }
        };
        match self {
            ProcessParams::Fdm(p) => p.check_ranges(&mut check),
            ProcessParams::Dls(p) => p.check_ranges(&mut check),
            ProcessParams::Sla(p) => p.check_ranges(&mut check),
            ProcessParams::Mjf(p) => p.check_ranges(&mut check),
        }
        errs
    }

    /// This machine's parameters drawn as one unit of its model: each parameter moves by its
    /// unit-to-unit spread, scaled by `spread` (0 gives the nominal model).
    pub fn deviate(&self, rng: &mut SimRng, spread: f64) -> Self {
        match self {
            ProcessParams::Fdm(p) => ProcessParams::Fdm(p.deviate(rng, spread)),
            ProcessParams::Dls(p) => ProcessParams::Dls(p.deviate(rng, spread)),
            ProcessParams::Sla(p) => ProcessParams::Sla(p.deviate(rng, spread)),
            ProcessParams::Mjf(p) => ProcessParams::Mjf(p.deviate(rng, spread)),
        }
    }

    /// Renders this machine's surface for one part onto the grid.
    pub fn render(&self, part: &PartContext, grid: &Grid, surface: &mut Surface) {
        match self {
            ProcessParams::Fdm(p) => fdm::render(p, part, grid, surface),
            ProcessParams::Dls(p) => dls::render(p, part, grid, surface),
            ProcessParams::Sla(p) => sla::render(p, part, grid, surface),
            ProcessParams::Mjf(p) => mjf::render(p, part, grid, surface),
        }
    }
}

/// Applies a unit-to-unit deviation: `x * (1 + N(0, rel * spread))`, or additive with `abs`.
pub(crate) fn jitter_rel(rng: &mut SimRng, x: f64, rel: f64, spread: f64) -> f64 {
    x * (1.0 + gauss(rng) * rel * spread)
}

/// Log-normal deviation `x * exp(N(0, sigma * spread))`: for rates that vary by factors
/// from unit to unit (dead pixels per million), never below zero.
pub(crate) fn jitter_log(rng: &mut SimRng, x: f64, sigma: f64, spread: f64) -> f64 {
    x * (gauss(rng) * sigma * spread).exp()
}

/// Additive deviation `x + N(0, sd * spread)`.
pub(crate) fn jitter_abs(rng: &mut SimRng, x: f64, sd: f64, spread: f64) -> f64 {
    x + gauss(rng) * sd * spread
}

/// A standard normal draw.
pub(crate) fn gauss(rng: &mut SimRng) -> f64 {
    use rand_distr::{Distribution, StandardNormal};
    StandardNormal.sample(rng)
}

/// Everything about one physical part that a surface renderer needs besides the machine.
#[derive(Debug, Clone)]
pub struct PartContext {
    /// Seed of this part's own randomness (per-part variation, phases).
    pub seed: u64,
    /// Seed of the machine (fixed patterns of the machine, e.g. its projector's pixel gains).
    pub machine_seed: u64,
    /// Build number, 1-based: machine parameters drift with it.
    pub build: u32,
    /// Where the part sat on the build platform: its centre in platform mm.
    pub platform_xy_mm: (f64, f64),
    /// Normalised squared distance of the part from the platform centre, in [0, 1].
    pub tray_r2: f64,
    /// Half the platform's diagonal in mm (normalises platform positions).
    pub platform_half_diag_mm: f64,
}

/// Maps image pixels to part coordinates (mm): part = origin + col * d_col + row * d_row.
///
/// The mapping carries the part's placement in the image: rotation, flip and pixel size.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    /// Part coordinates of the centre of pixel (0, 0).
    pub origin: (f64, f64),
    /// Part-coordinate step for one pixel to the right.
    pub d_col: (f64, f64),
    /// Part-coordinate step for one pixel down.
    pub d_row: (f64, f64),
    /// Pixel size in mm.
    pub pixel_mm: f64,
}

impl Grid {
    /// Part coordinates (mm) of the centre of pixel (col, row).
    #[inline]
    pub fn part_xy(&self, col: usize, row: usize) -> (f64, f64) {
        let (c, r) = (col as f64, row as f64);
        (self.origin.0 + c * self.d_col.0 + r * self.d_row.0, self.origin.1 + c * self.d_col.1 + r * self.d_row.1)
    }
}

/// A rendered surface: relief in µm and albedo (relative reflectance, 1 = the material's).
pub struct Surface {
    pub width: usize,
    pub height: usize,
    pub relief_um: Vec<f32>,
    pub albedo: Vec<f32>,
}

impl Surface {
    /// A flat surface of the given size.
    pub fn new(width: usize, height: usize) -> Self {
        Self { width, height, relief_um: vec![0.0; width * height], albedo: vec![1.0; width * height] }
    }
}

/// Sensor pixels integrate light over their area: a sinusoid of period `period_mm` sampled by
/// pixels `pixel_mm` wide keeps `sinc(pixel / period)` of its amplitude.
pub fn pixel_mtf(pixel_mm: f64, period_mm: f64) -> f64 {
    let x = std::f64::consts::PI * pixel_mm / period_mm;
    if x < 1e-9 { 1.0 } else { (x.sin() / x).max(0.0) }
}
