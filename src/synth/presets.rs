//! Built-in machine models and materials, and the default fleet: the paper's 21 machines.
//!
//! A machine model gives the nominal parameters shared by every unit of that model; each unit
//! in a fleet then deviates from them by its own small amounts (see [`super::fleet`]).

use super::process::dls::DlsParams;
use super::process::fdm::FdmParams;
use super::process::mjf::MjfParams;
use super::process::sla::SlaParams;
use super::process::{Process, ProcessParams};

/// A printer model: what every unit of it has in common.
pub struct MachineModel {
    /// Identifier used in fleet files.
    pub id: &'static str,
    /// Human-readable name.
    pub name: &'static str,
    pub process: Process,
    /// Materials this model prints (names from [`MATERIALS`]).
    pub materials: &'static [&'static str],
    /// Build platform size, mm.
    pub platform_mm: [f64; 2],
    /// Parts per build as rows x columns on the platform.
    pub tray: [u32; 2],
    /// Nominal machine parameters.
    pub params: fn() -> ProcessParams,
}

/// The built-in machine models. `generic-*` models exist for fleets of machines not listed.
pub const MODELS: &[MachineModel] = &[
    MachineModel {
        id: "stratasys-f450mc",
        name: "Stratasys Fortus 450mc",
        process: Process::Fdm,
        materials: &["ABS-M30", "PC", "ULTEM 9085"],
        platform_mm: [406.0, 355.0],
        tray: [4, 4],
        params: || ProcessParams::Fdm(FdmParams::nominal(254.0)),
    },
    MachineModel {
        id: "stratasys-f900",
        name: "Stratasys F900",
        process: Process::Fdm,
        materials: &["ABS-M30", "PC", "ULTEM 9085"],
        platform_mm: [914.0, 610.0],
        tray: [4, 6],
        params: || ProcessParams::Fdm(FdmParams { bead_flatness: 2.8, ..FdmParams::nominal(330.0) }),
    },
    MachineModel {
        id: "generic-fdm",
        name: "Generic FDM printer",
        process: Process::Fdm,
        materials: &["PLA", "PETG"],
        platform_mm: [220.0, 220.0],
        tray: [3, 3],
        params: || ProcessParams::Fdm(FdmParams::nominal(200.0)),
    },
    MachineModel {
        id: "carbon-m2",
        name: "Carbon M2",
        process: Process::Dls,
        materials: &["RPU 70", "EPX 82", "UMA 90"],
        platform_mm: [189.0, 118.0],
        tray: [3, 4],
        params: || ProcessParams::Dls(DlsParams::nominal(75.0, 100.0)),
    },
    MachineModel {
        id: "carbon-l1",
        name: "Carbon L1",
        process: Process::Dls,
        materials: &["RPU 70", "EPX 82", "UMA 90"],
        platform_mm: [400.0, 250.0],
        tray: [4, 6],
        params: || ProcessParams::Dls(DlsParams { edge_softness: 0.24, ..DlsParams::nominal(100.0, 100.0) }),
    },
    MachineModel {
        id: "generic-dls",
        name: "Generic DLP resin printer",
        process: Process::Dls,
        materials: &["Standard resin"],
        platform_mm: [130.0, 80.0],
        tray: [2, 3],
        params: || ProcessParams::Dls(DlsParams::nominal(50.0, 50.0)),
    },
    MachineModel {
        id: "formlabs-form3b",
        name: "Formlabs Form 3B",
        process: Process::Sla,
        materials: &["Grey V4", "Clear V4", "Tough 2000"],
        platform_mm: [145.0, 145.0],
        tray: [3, 3],
        params: || ProcessParams::Sla(SlaParams::nominal(85.0, 50.0)),
    },
    MachineModel {
        id: "generic-sla",
        name: "Generic laser SLA printer",
        process: Process::Sla,
        materials: &["Standard resin"],
        platform_mm: [145.0, 145.0],
        tray: [3, 3],
        params: || ProcessParams::Sla(SlaParams::nominal(140.0, 100.0)),
    },
    MachineModel {
        id: "hp-mjf-4200",
        name: "HP Jet Fusion 4200",
        process: Process::Mjf,
        materials: &["PA12", "PA11"],
        platform_mm: [380.0, 284.0],
        tray: [4, 5],
        params: || ProcessParams::Mjf(MjfParams::nominal(60.0)),
    },
    MachineModel {
        id: "hp-mjf-5200",
        name: "HP Jet Fusion 5200",
        process: Process::Mjf,
        materials: &["PA12", "PA11"],
        platform_mm: [380.0, 284.0],
        tray: [4, 5],
        params: || {
            ProcessParams::Mjf(MjfParams { grain_sigma: 0.27, streak_strength: 0.03, ..MjfParams::nominal(55.0) })
        },
    },
    MachineModel {
        id: "generic-mjf",
        name: "Generic powder-bed fusion printer",
        process: Process::Mjf,
        materials: &["PA12"],
        platform_mm: [300.0, 300.0],
        tray: [4, 4],
        params: || ProcessParams::Mjf(MjfParams::nominal(65.0)),
    },
];

/// Looks up a built-in machine model by id.
pub fn model(id: &str) -> Option<&'static MachineModel> {
    MODELS.iter().find(|m| m.id == id)
}

/// The generic model of a process, for fleet entries that name a process but no model.
pub fn generic_model(process: Process) -> &'static MachineModel {
    let id = match process {
        Process::Fdm => "generic-fdm",
        Process::Dls => "generic-dls",
        Process::Sla => "generic-sla",
        Process::Mjf => "generic-mjf",
    };
    model(id).expect("every process has a generic model")
}

/// A print material as the scanner sees it.
pub struct Material {
    pub name: &'static str,
    /// Diffuse reflectance (0..1) of the material's colour seen through a gray sensor.
    pub albedo: f64,
    /// Fraction of the relief's shading contrast lost to light scattered under the surface.
    pub translucency: f64,
}

/// The built-in materials.
pub const MATERIALS: &[Material] = &[
    Material { name: "ABS-M30", albedo: 0.78, translucency: 0.1 },
    Material { name: "PC", albedo: 0.72, translucency: 0.25 },
    Material { name: "ULTEM 9085", albedo: 0.42, translucency: 0.15 },
    Material { name: "PLA", albedo: 0.6, translucency: 0.15 },
    Material { name: "PETG", albedo: 0.55, translucency: 0.35 },
    Material { name: "RPU 70", albedo: 0.2, translucency: 0.05 },
    Material { name: "EPX 82", albedo: 0.3, translucency: 0.1 },
    Material { name: "UMA 90", albedo: 0.45, translucency: 0.2 },
    Material { name: "Standard resin", albedo: 0.4, translucency: 0.3 },
    Material { name: "Grey V4", albedo: 0.38, translucency: 0.15 },
    Material { name: "Clear V4", albedo: 0.28, translucency: 0.55 },
    Material { name: "Tough 2000", albedo: 0.5, translucency: 0.25 },
    Material { name: "PA12", albedo: 0.3, translucency: 0.05 },
    Material { name: "PA11", albedo: 0.36, translucency: 0.05 },
];

/// Looks up a material by name.
pub fn material(name: &str) -> Option<&'static Material> {
    MATERIALS.iter().find(|m| m.name == name)
}

/// The default fleet: the paper's 21 machines in 4 processes, as (name, model id).
pub const PAPER_FLEET: &[(&str, &str)] = &[
    ("4200-1", "hp-mjf-4200"),
    ("5200-1", "hp-mjf-5200"),
    ("5200-2", "hp-mjf-5200"),
    ("F3B-1", "formlabs-form3b"),
    ("F3B-2", "formlabs-form3b"),
    ("F3B-3", "formlabs-form3b"),
    ("F3B-4", "formlabs-form3b"),
    ("F3B-5", "formlabs-form3b"),
    ("F3B-6", "formlabs-form3b"),
    ("L1-1", "carbon-l1"),
    ("L1-2", "carbon-l1"),
    ("M2-1", "carbon-m2"),
    ("M2-2", "carbon-m2"),
    ("M2-3", "carbon-m2"),
    ("M2-4", "carbon-m2"),
    ("M2-5", "carbon-m2"),
    ("M2-6", "carbon-m2"),
    ("S450-1", "stratasys-f450mc"),
    ("S450-2", "stratasys-f450mc"),
    ("S900-1", "stratasys-f900"),
    ("S900-2", "stratasys-f900"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for m in MODELS {
            assert_eq!((m.params)().process(), m.process, "{}", m.id);
            assert!((m.params)().validate().is_empty(), "{}: {:?}", m.id, (m.params)().validate());
            for mat in m.materials {
                assert!(material(mat).is_some(), "{} lists unknown material {mat}", m.id);
            }
        }
        assert_eq!(PAPER_FLEET.len(), 21);
        assert!(PAPER_FLEET.iter().all(|(_, id)| model(id).is_some()));
    }
}
