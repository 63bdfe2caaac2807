//! The virtual fleet: which machines exist, their models, and each unit's own parameters.
//!
//! A fleet file (TOML) lists machines by name and model. Each unit's parameters are the model's
//! nominal ones moved by a small unit-to-unit deviation drawn from the fleet seed and the
//! machine's name (so adding a machine does not change the others), then by any explicit
//! overrides. `amfp synth --print-fleet` writes the resolved fleet back as a fleet file whose
//! every parameter is explicit; loading that file gives the same fleet.
//!
//! ```toml
//! seed = 7            # seeds the unit-to-unit deviations
//! unit_spread = 1.0   # 0 = all units of a model identical; 2 = twice the default spread
//!
//! [[machine]]
//! name = "M2-1"
//! model = "carbon-m2"
//!
//! [[machine]]
//! name = "M2-7"
//! model = "carbon-m2"
//! params = { pixel_pitch_um = 75.6 }
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::presets::{self, MODELS, PAPER_FLEET};
use super::process::{Process, ProcessParams};
use super::seeds::{name_hash, rng_for};

/// One machine of the fleet, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// Unique name; the class label of machine identification.
    pub name: String,
    /// Id of the machine model it is a unit of.
    pub model: String,
    pub process: Process,
    /// Materials it prints; each part gets one at random.
    pub materials: Vec<String>,
    /// Build platform size, mm.
    pub platform_mm: [f64; 2],
    /// Parts per build as rows x columns.
    pub tray: [u32; 2],
    /// This unit's process parameters.
    pub params: ProcessParams,
}

impl Machine {
    /// The seed of this machine's fixed patterns (e.g. its projector's pixel gains).
    pub fn seed(&self, fleet_seed: u64) -> u64 {
        super::seeds::derive(&[fleet_seed, name_hash(&self.name), name_hash("machine")])
    }

    /// Parts per build.
    pub fn tray_cells(&self) -> u32 {
        self.tray[0] * self.tray[1]
    }
}

/// A set of machines with the seed their unit deviations were drawn from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub seed: u64,
    pub unit_spread: f64,
    #[serde(rename = "machine")]
    pub machines: Vec<Machine>,
}

/// What can be wrong with a fleet description; every message names the file, the machine and
/// the key, and says what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read fleet file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("fleet file {path} is not valid TOML or has a wrong key: {message}")]
    Parse { path: String, message: String },
    #[error("fleet file {path} has {} problem(s):\n  {}", .problems.len(), .problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_spread")]
    unit_spread: f64,
    #[serde(default)]
    machine: Vec<MachineEntry>,
}

fn default_seed() -> u64 {
    7
}

fn default_spread() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineEntry {
    name: String,
    model: Option<String>,
    process: Option<Process>,
    materials: Option<Vec<String>>,
    platform_mm: Option<[f64; 2]>,
    tray: Option<[u32; 2]>,
    params: Option<toml::Table>,
}

impl Fleet {
    /// The paper's 21 machines in 4 processes.
    pub fn paper(seed: u64) -> Fleet {
        let entries = PAPER_FLEET
            .iter()
            .map(|(name, model)| MachineEntry {
                name: (*name).to_string(),
                model: Some((*model).to_string()),
                process: None,
                materials: None,
                platform_mm: None,
                tray: None,
                params: None,
            })
            .collect();
        let file = FleetFile { seed, unit_spread: default_spread(), machine: entries };
        resolve(file).expect("the built-in fleet is valid")
    }

    /// Loads a fleet file.
    pub fn load(path: &Path) -> Result<Fleet, FleetError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    /// Parses a fleet description; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Fleet, FleetError> {
        let file: FleetFile =
            toml::from_str(text).map_err(|e| FleetError::Parse { path: origin.to_string(), message: e.to_string() })?;
        resolve(file).map_err(|problems| FleetError::Invalid { path: origin.to_string(), problems })
    }

    /// Keeps only the named machines, in the fleet's order; an unknown name is an error.
    pub fn select(&self, names: &[String]) -> Result<Fleet, String> {
        if let Some(missing) = names.iter().find(|n| !self.machines.iter().any(|m| &m.name == *n)) {
            let known: Vec<&str> = self.machines.iter().map(|m| m.name.as_str()).collect();
            return Err(format!("no machine named {missing:?} in the fleet; it has: {}", known.join(", ")));
        }
        let machines = self.machines.iter().filter(|m| names.contains(&m.name)).cloned().collect();
        Ok(Fleet { machines, ..self.clone() })
    }

    /// Looks a machine up by name.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// The fleet as a fleet file with every parameter explicit.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a fleet serialises");
        format!(
            "# amfp virtual fleet: {} machines, every unit's parameters resolved.\n\
             # Loading this file with --fleet reproduces exactly this fleet.\n\n{body}",
            self.machines.len()
        )
    }
}

fn resolve(file: FleetFile) -> Result<Fleet, Vec<String>> {
    let mut problems = Vec::new();
    if !(file.unit_spread.is_finite() && (0.0..=10.0).contains(&file.unit_spread)) {
        problems.push(format!("unit_spread = {} must be between 0 and 10", file.unit_spread));
    }
    if file.machine.is_empty() {
        problems.push("the fleet has no machines: add [[machine]] tables with a name and a model".to_string());
    }
    let mut machines = Vec::new();
    for (i, entry) in file.machine.into_iter().enumerate() {
        let at = format!("machine[{i}] ({:?})", entry.name);
        match resolve_machine(entry, file.seed, file.unit_spread) {
            Ok(m) => {
                if machines.iter().any(|o: &Machine| o.name == m.name) {
                    problems.push(format!("{at}: name is used twice; machine names must be unique"));
                }
                machines.push(m);
            }
            Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{at}: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(Fleet { seed: file.seed, unit_spread: file.unit_spread, machines })
    } else {
        Err(problems)
    }
}

fn resolve_machine(entry: MachineEntry, seed: u64, spread: f64) -> Result<Machine, Vec<String>> {
    let mut errs = Vec::new();
    if !entry.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !entry.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push(
            "name must start with a letter or digit and use only letters, digits, '-', '_' and '.' (it names files and folders)".into(),
        );
    }
    let model = match (&entry.model, entry.process) {
        (Some(id), process) => match presets::model(id) {
            Some(m) if process.is_none_or(|p| p == m.process) => m,
            Some(m) => {
                return Err(vec![format!(
                    "model {id:?} is a {} machine but process = {:?} was given",
                    m.process,
                    process.map(|p| p.as_str()).unwrap_or_default()
                )]);
            }
            None => {
                let ids: Vec<&str> = MODELS.iter().map(|m| m.id).collect();
                return Err(vec![format!("unknown model {id:?}; known models: {}", ids.join(", "))]);
            }
        },
        (None, Some(p)) => presets::generic_model(p),
        (None, None) => {
            return Err(vec!["give a model (e.g. model = \"carbon-m2\") or a process (FDM, DLS, SLA, MJF)".into()]);
        }
    };
    let materials: Vec<String> =
        entry.materials.unwrap_or_else(|| model.materials.iter().map(|s| s.to_string()).collect());
    if materials.is_empty() {
        errs.push("materials must list at least one material".into());
    }
    for m in &materials {
        if presets::material(m).is_none() {
            let known: Vec<&str> = presets::MATERIALS.iter().map(|m| m.name).collect();
            errs.push(format!("unknown material {m:?}; known materials: {}", known.join(", ")));
        }
    }
    let tray = entry.tray.unwrap_or(model.tray);
    if !tray.iter().all(|&n| (1..=50).contains(&n)) {
        errs.push(format!("tray = {tray:?} must be [rows, columns], each 1..=50"));
    }
    let platform_mm = entry.platform_mm.unwrap_or(model.platform_mm);
    if !platform_mm.iter().all(|&s| s.is_finite() && (20.0..=2000.0).contains(&s)) {
        errs.push(format!("platform_mm = {platform_mm:?} must be [width, depth] in mm, each 20..=2000"));
    }
    let mut rng = rng_for(&[seed, name_hash(&entry.name), name_hash("unit")]);
    let unit = (model.params)().deviate(&mut rng, spread);
    let params = match entry.params {
        None => unit,
        Some(overrides) => match apply_overrides(&unit, overrides) {
            Ok(p) => p,
            Err(e) => {
                errs.push(e);
                unit
            }
        },
    };
    errs.extend(params.validate());
    if errs.is_empty() {
        Ok(Machine {
            name: entry.name,
            model: model.id.to_string(),
            process: model.process,
            materials,
            platform_mm,
            tray,
            params,
        })
    } else {
        Err(errs)
    }
}

/// Replaces parameters by the keys given; unknown keys and wrong types are errors naming them.
fn apply_overrides(unit: &ProcessParams, overrides: toml::Table) -> Result<ProcessParams, String> {
    let toml::Value::Table(mut table) = toml::Value::try_from(unit).expect("parameters serialise") else {
        unreachable!("parameters serialise to a table")
    };
    let allowed: Vec<String> = table.keys().cloned().collect();
    for (key, value) in overrides {
        if !table.contains_key(&key) {
            return Err(format!("params.{key} is not a {} parameter; allowed: {}", unit.process(), allowed.join(", ")));
        }
        // Integers are accepted where a float is expected.
        let value = match value {
            toml::Value::Integer(i) => toml::Value::Float(i as f64),
            v => v,
        };
        table.insert(key, value);
    }
    ProcessParams::from_toml(unit.process(), toml::Value::Table(table)).map_err(|e| format!("params.{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_fleet_round_trips_through_toml() {
        let fleet = Fleet::paper(7);
        assert_eq!(fleet.machines.len(), 21);
        let again = Fleet::parse(&fleet.to_toml(), "printed").unwrap();
        assert_eq!(fleet, again);
    }

    #[test]
    fn units_of_one_model_differ_and_seeds_matter() {
        let fleet = Fleet::paper(7);
        let (a, b) = (&fleet.machine("M2-1").unwrap().params, &fleet.machine("M2-2").unwrap().params);
        assert_ne!(a, b);
        assert_ne!(Fleet::paper(8).machine("M2-1").unwrap().params, *a);
        let flat = Fleet::parse(
            "unit_spread = 0\n[[machine]]\nname='a'\nmodel='carbon-m2'\n[[machine]]\nname='b'\nmodel='carbon-m2'",
            "t",
        )
        .unwrap();
        assert_eq!(flat.machines[0].params, flat.machines[1].params);
    }

    #[test]
    fn override_applies_and_unknown_key_is_named() {
        let f = Fleet::parse("[[machine]]\nname='x'\nmodel='carbon-m2'\nparams={pixel_pitch_um=80}", "t").unwrap();
        match &f.machines[0].params {
            ProcessParams::Dls(p) => assert_eq!(p.pixel_pitch_um, 80.0),
            other => panic!("{other:?}"),
        }
        let err = Fleet::parse("[[machine]]\nname='x'\nmodel='carbon-m2'\nparams={pitch=80}", "f.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("f.toml") && msg.contains("params.pitch") && msg.contains("pixel_pitch_um"), "{msg}");
    }
}
