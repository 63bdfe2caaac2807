//! The surface simulator behind `amfp synth`: labelled scans of printed parts from a virtual
//! fleet of machines.
//!
//! No labelled photographs of real AM parts can be downloaded, so amfp simulates them from the
//! physics of each process (see docs/simulator.md). The pieces, in the order data flows:
//! [`fleet`] (machines and their parameters, [`presets`] for the built-in models), [`dataset`]
//! (which parts, their labels and splits), [`design`] (part outlines), [`process`] (surface
//! relief per process), [`imaging`] (scanner or microscope optics and sensor), with [`seeds`]
//! and [`fields`] as shared tools.

pub mod dataset;
pub mod design;
pub mod fields;
pub mod fleet;
pub mod imaging;
pub mod presets;
pub mod process;
pub mod seeds;

pub use dataset::{DatasetSpec, Layout, PartRecord, SplitFractions, ViewRecord, generate};
pub use fleet::{Fleet, FleetError, Machine};
pub use imaging::{ImagingSpec, Mode, Scan};
pub use process::Process;
