//! amfp: tells which additive-manufacturing machine made a part from a photograph of its surface.
//!
//! The crate is a library with a thin CLI on top (`src/main.rs`), so that the one-shot commands,
//! the daemon and the tests share one pipeline. See `docs/` for the design of each part.
//!
//! The pipeline, module by module (docs/preprocessing.md, docs/identify.md):
//! `capture` (frames) → `optics` (exposure, envelope, resampling) → `roi` (part mask, ROIs) →
//! `model` (onnxruntime or tract) → `vote` and `gallery` → `result` (the Attribution); `identify`
//! strings them together.

pub mod atomic_file;
pub mod calibrate;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod drift;
pub mod envelope;
pub mod envelope_plot;
pub mod gallery;
pub mod identify;
pub mod logging;
pub mod memory;
pub mod model;
pub mod optics;
pub mod publish;
pub mod reject;
pub mod result;
pub mod roi;
pub mod synth;
pub mod trust;
pub mod vote;
