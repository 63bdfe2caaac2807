//! The simulator as a source: a stream of freshly simulated parts, for demos and tests on a
//! machine with no camera.
//!
//! Parts come in rounds: each round simulates one new part of every machine of the fleet (from
//! a seed of the source's own, so no model was trained on them), in a shuffled order, so a demo
//! shows every machine, the held-out ones (which a model must call unknown) included.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::Frame;
use super::source::{CaptureError, Captured, FrameSource, Grab};
use crate::identify::elapsed_ms;
use crate::result::SourceInfo;
use crate::synth::dataset::{DatasetSpec, Layout, PartPlan, SplitFractions};
use crate::synth::fleet::Fleet;
use crate::synth::imaging::{ImagingSpec, Mode};
use crate::synth::seeds::derive;

/// Rounds cycle through builds 1..=BUILDS: the span of the reference model's training set (150
/// parts per machine on trays of about 20), since machines drift with the build number and a
/// model knows a machine only as it was over the builds it saw. The parts themselves are new:
/// their seeds are the source's own.
const BUILDS: u32 = 8;

/// A simulator source; see the module docs.
#[derive(Debug)]
pub struct SynthSource {
    seed: u64,
    fleet: Fleet,
    imaging: ImagingSpec,
    round: u32,
    queue: Vec<(DatasetSpec, PartPlan)>,
    produced: u64,
}

impl SynthSource {
    /// Parts of `fleet` imaged as a flatbed scan at `pixel_um` µm per pixel.
    pub fn new(fleet: Fleet, seed: u64, pixel_um: f64, bit_depth: u8) -> Self {
        let imaging = ImagingSpec { mode: Mode::Scanner, pixel_um, microscope_px: (1280, 960), bit_depth };
        Self { seed, fleet, imaging, round: 0, queue: Vec::new(), produced: 0 }
    }

    /// µm per pixel of the parts' images.
    pub fn pixel_um(&self) -> f64 {
        self.imaging.pixel_um
    }

    /// Plans the next round: one part per machine, shuffled.
    fn plan_round(&mut self) {
        let spec = DatasetSpec {
            fleet: self.fleet.clone(),
            seed: derive(&[self.seed, u64::from(self.round)]),
            parts_per_machine: 1,
            first_build: 1 + self.round % BUILDS,
            imaging: self.imaging,
            jpeg_quality: None,
            split: SplitFractions { train: 0.0, val: 0.0, test: 1.0 },
            layout: Layout::Flat,
            views: 1,
        };
        let mut plans = spec.plan();
        plans.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(derive(&[self.seed, u64::from(self.round), 1])));
        // Popped from the back.
        plans.reverse();
        self.queue = plans.into_iter().map(|p| (spec.clone(), p)).collect();
        self.round += 1;
    }
}

impl FrameSource for SynthSource {
    fn describe(&self) -> SourceInfo {
        SourceInfo {
            kind: "synth".into(),
            name: format!("simulated fleet of {} machines, seed {}", self.fleet.machines.len(), self.seed),
            frame: None,
        }
    }

    fn is_live(&self) -> bool {
        false
    }

    fn grab(&mut self, _wait: Duration) -> Result<Grab, CaptureError> {
        if self.queue.is_empty() {
            self.plan_round();
        }
        let Some((spec, plan)) = self.queue.pop() else {
            return Err(CaptureError::Fatal("the simulator's fleet has no machines".into()));
        };
        let start = Instant::now();
        let scan = spec.render(&plan);
        let full = f32::from(u16::MAX >> (16 - scan.bit_depth));
        let frame = Frame {
            width: scan.width as u32,
            height: scan.height as u32,
            pixels: scan.pixels.iter().map(|&v| f32::from(v) / full).collect(),
            pixel_um: Some(scan.pixel_um),
            bit_depth: scan.bit_depth,
        };
        self.produced += 1;
        let r = &plan.record;
        Ok(Grab::Frame(Captured {
            frame,
            // The true machine is in the name, so a demo shows whether the verdict is right.
            source: SourceInfo {
                kind: "synth".into(),
                name: format!("{} {} (made by {})", r.serial, r.design, r.machine),
                frame: Some(self.produced),
            },
            capture_ms: elapsed_ms(start),
            on_done: None,
        }))
    }
}
