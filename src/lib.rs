//! amfp: tells which additive-manufacturing machine made a part from a photograph of its surface.
//!
//! The crate is a library with a thin CLI on top (`src/main.rs`), so that the one-shot commands,
//! the daemon and the tests share one pipeline. See `docs/` for the design of each part.

pub mod cli;
pub mod config;
pub mod logging;
pub mod synth;
