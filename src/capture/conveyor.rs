//! A simulated line station: a camera looking down on a conveyor that brings simulated parts
//! under it one at a time. A live source, so it exercises what a real line does: the
//! `continuous` trigger has to find each part, wait until it is still, judge it once, and rearm
//! when the stage is empty again. For demos and tests of a line station without a camera.
//!
//! Each part (from [`SynthSource`], so the same fleet and seeds) slides in from the left over
//! [`MOVE_FRAMES`] frames, rests under the camera for [`REST_FRAMES`], slides out to the right,
//! and the empty stage shows for [`EMPTY_FRAMES`] before the next. Frames come at
//! `fps` frames per second; the empty stage is the scanner's background level with sensor noise.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Frame;
use super::source::{CaptureError, Captured, FrameSource, Grab};
use super::synth::SynthSource;
use crate::result::SourceInfo;

/// Frames a part takes to slide in (and out).
pub const MOVE_FRAMES: u32 = 6;
/// Frames a part rests under the camera.
pub const REST_FRAMES: u32 = 12;
/// Frames of empty stage between parts.
pub const EMPTY_FRAMES: u32 = 6;
/// Empty stage around the largest part, in pixels on each side.
const MARGIN_PX: u32 = 120;

/// The part in view and where it is in its passage.
struct Passage {
    scan: Frame,
    name: String,
    /// Frames since the part started sliding in.
    t: u32,
}

/// A conveyor source; see the module docs.
pub struct Conveyor {
    parts: SynthSource,
    /// The view's size, fixed by the first part (a camera's sensor does not change size).
    view: Option<(u32, u32)>,
    background: f32,
    /// The next part, simulated but not yet on the belt.
    queued: Option<Passage>,
    passage: Option<Passage>,
    /// Empty frames shown since the last part left.
    empty: u32,
    frame: u64,
    interval: Duration,
    next_at: Option<Instant>,
    noise: ChaCha8Rng,
}

impl Conveyor {
    /// A line bringing the parts of `parts` at `fps` frames per second.
    pub fn new(parts: SynthSource, fps: f64, seed: u64) -> Self {
        Self {
            parts,
            view: None,
            background: 0.0,
            queued: None,
            passage: None,
            empty: 0,
            frame: 0,
            interval: Duration::from_secs_f64(1.0 / fps.max(0.1)),
            next_at: None,
            noise: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Simulates the next part (the first also fixes the view's size).
    fn load(&mut self) -> Result<(), CaptureError> {
        let captured = loop {
            match self.parts.grab(Duration::ZERO)? {
                Grab::Frame(c) => break c,
                Grab::Idle => continue,
                Grab::End => return Err(CaptureError::Fatal("the simulator ran out of parts".into())),
            }
        };
        let scan = captured.frame;
        if self.view.is_none() {
            self.view = Some((scan.width + 2 * MARGIN_PX, scan.height + 2 * MARGIN_PX));
            // The scanner's empty glass: the median of the scan's border rows.
            let mut border: Vec<f32> = scan.pixels[..scan.width as usize].to_vec();
            border.sort_by(f32::total_cmp);
            self.background = border[border.len() / 2];
        }
        self.queued = Some(Passage { scan, name: captured.source.name, t: 0 });
        Ok(())
    }

    /// The view with the part's left edge at `x` (None: empty stage).
    fn compose(&mut self, part: Option<(&Frame, i64)>) -> Frame {
        let (w, h) = self.view.expect("the view is set by the first part");
        let mut pixels: Vec<f32> = (0..w as usize * h as usize)
            .map(|_| (self.background + self.noise.random_range(-0.01f32..0.01)).clamp(0.0, 1.0))
            .collect();
        if let Some((scan, x0)) = part {
            let y0 = (i64::from(h) - i64::from(scan.height)) / 2;
            for sy in 0..scan.height as i64 {
                let vy = y0 + sy;
                if !(0..i64::from(h)).contains(&vy) {
                    continue;
                }
                let (from, to) = (x0.max(0), (x0 + i64::from(scan.width)).min(i64::from(w)));
                if from >= to {
                    break;
                }
                let src = (sy * i64::from(scan.width) + (from - x0)) as usize;
                let dst = (vy * i64::from(w) + from) as usize;
                let n = (to - from) as usize;
                pixels[dst..dst + n].copy_from_slice(&scan.pixels[src..src + n]);
            }
        }
        Frame { width: w, height: h, pixels, pixel_um: Some(self.parts.pixel_um()), bit_depth: 8 }
    }
}

impl FrameSource for Conveyor {
    fn describe(&self) -> SourceInfo {
        SourceInfo {
            kind: "conveyor".into(),
            name: format!("simulated line: {}", self.parts.describe().name),
            frame: None,
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn grab(&mut self, wait: Duration) -> Result<Grab, CaptureError> {
        let now = Instant::now();
        let due = self.next_at.unwrap_or(now);
        if due > now + wait {
            std::thread::sleep(wait);
            return Ok(Grab::Idle);
        }
        std::thread::sleep(due.saturating_duration_since(now));
        self.next_at = Some(due.max(now) + self.interval);
        let start = Instant::now();
        if self.view.is_none() {
            self.load()?;
        }
        if self.passage.is_none() && self.empty >= EMPTY_FRAMES {
            if self.queued.is_none() {
                self.load()?;
            }
            self.passage = self.queued.take();
            self.empty = 0;
        }
        let (w, _) = self.view.expect("set by the first part");
        let (frame, name) = match self.passage.take() {
            Some(mut p) => {
                let width = i64::from(p.scan.width);
                let rest_x = i64::from(MARGIN_PX);
                let step = (rest_x + width) / i64::from(MOVE_FRAMES);
                let x = match p.t {
                    t if t < MOVE_FRAMES => rest_x - width + step * i64::from(t),
                    t if t < MOVE_FRAMES + REST_FRAMES => rest_x,
                    t => {
                        rest_x
                            + (i64::from(w) - rest_x) * i64::from(t + 1 - MOVE_FRAMES - REST_FRAMES)
                                / i64::from(MOVE_FRAMES)
                    }
                };
                let frame = self.compose(Some((&p.scan, x)));
                let name = p.name.clone();
                p.t += 1;
                if p.t < 2 * MOVE_FRAMES + REST_FRAMES {
                    self.passage = Some(p);
                }
                (frame, format!("simulated line: {name}"))
            }
            None => {
                self.empty += 1;
                (self.compose(None), "simulated line: empty stage".to_string())
            }
        };
        self.frame += 1;
        Ok(Grab::Frame(Captured {
            frame,
            source: SourceInfo { kind: "conveyor".into(), name, frame: Some(self.frame) },
            capture_ms: crate::identify::elapsed_ms(start),
            on_done: None,
        }))
    }
}
