//! When a live view shows a part worth judging: the `continuous` trigger of a line station.
//!
//! A camera looks at a stage. The detector keeps a small picture of the empty stage (learnt from
//! the first frame, then followed slowly while the stage stays empty, so that lighting drift is
//! not a part), and walks through three states:
//!
//! ```text
//! empty ──part in view──► arriving ──still for N frames──► inspect once ──► inspected
//!   ▲                        │ (gone)                                         │
//!   └────────────────────────┴──────────── empty for N frames ◄───────────────┘
//! ```
//! "In view": more than `presence_fraction` of the view differs from the empty stage by more
//! than [`PRESENCE_DELTA`]. "Still": the mean change from the previous frame is under
//! `still_tolerance`. Frames are compared at [`THUMB_SIDE`] pixels on the long side, so the
//! detector costs microseconds per frame and ignores sensor noise.

use crate::capture::Frame;

/// Long side of the thumbnails compared, in pixels.
pub const THUMB_SIDE: u32 = 64;
/// Change of a thumbnail pixel (intensity 0..1) from the empty stage that counts as "part".
pub const PRESENCE_DELTA: f32 = 0.08;
/// How fast the empty-stage picture follows slow changes while the stage is empty.
const BACKGROUND_RATE: f32 = 0.05;

/// What the detector makes of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// The stage is empty.
    Empty,
    /// A part is in view but moving (or just arrived).
    Arriving,
    /// A part has been still long enough: judge this frame.
    Inspect,
    /// The part in view was already judged; waiting for it to leave.
    Inspected,
}

/// The `continuous` trigger's settings (`[daemon]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorSettings {
    pub presence_fraction: f64,
    pub still_frames: u32,
    pub still_tolerance: f64,
}

impl DetectorSettings {
    /// The `continuous` trigger's settings in `[daemon]`.
    pub fn from_settings(d: &super::settings::DaemonSettings) -> Self {
        Self {
            presence_fraction: d.presence_fraction,
            still_frames: d.still_frames,
            still_tolerance: d.still_tolerance,
        }
    }
}

/// Finds parts arriving in a live view; see the module docs.
#[derive(Debug, Clone)]
pub struct PartDetector {
    settings: DetectorSettings,
    background: Option<Thumb>,
    previous: Option<Thumb>,
    state: Sighting,
    /// Consecutive still frames (arriving) or empty frames (inspected).
    run: u32,
}

/// A small copy of a frame.
#[derive(Debug, Clone, PartialEq)]
struct Thumb {
    width: u32,
    height: u32,
    pixels: Vec<f32>,
}

impl Thumb {
    /// Box-averages `frame` down to at most [`THUMB_SIDE`] pixels on its long side.
    fn of(frame: &Frame) -> Self {
        let step = frame.width.max(frame.height).div_ceil(THUMB_SIDE).max(1);
        let (width, height) = (frame.width.div_ceil(step), frame.height.div_ceil(step));
        let mut sums = vec![0f32; (width * height) as usize];
        let mut counts = vec![0u32; sums.len()];
        for y in 0..frame.height {
            let row = &frame.pixels[(y * frame.width) as usize..][..frame.width as usize];
            let ty = (y / step) * width;
            for (x, &v) in row.iter().enumerate() {
                let i = (ty + x as u32 / step) as usize;
                sums[i] += v;
                counts[i] += 1;
            }
        }
        let pixels = sums.iter().zip(&counts).map(|(s, &c)| s / c.max(1) as f32).collect();
        Self { width, height, pixels }
    }

    /// Mean absolute difference to another thumbnail of the same size.
    fn mean_change(&self, other: &Thumb) -> f64 {
        let sum: f64 = self.pixels.iter().zip(&other.pixels).map(|(a, b)| f64::from((a - b).abs())).sum();
        sum / self.pixels.len().max(1) as f64
    }

    /// Share of pixels that differ from `other` by more than [`PRESENCE_DELTA`].
    fn share_changed(&self, other: &Thumb) -> f64 {
        let n = self.pixels.iter().zip(&other.pixels).filter(|(a, b)| (*a - *b).abs() > PRESENCE_DELTA).count();
        n as f64 / self.pixels.len().max(1) as f64
    }
}

impl PartDetector {
    /// A detector that takes the first frame it sees as the empty stage.
    pub fn new(settings: DetectorSettings) -> Self {
        Self { settings, background: None, previous: None, state: Sighting::Empty, run: 0 }
    }

    /// Looks at the next frame of the view.
    pub fn observe(&mut self, frame: &Frame) -> Sighting {
        let thumb = Thumb::of(frame);
        let background = match &mut self.background {
            Some(bg) if bg.width == thumb.width && bg.height == thumb.height => bg,
            // First frame, or the camera's size changed: start again from an empty stage.
            _ => {
                self.background = Some(thumb.clone());
                self.previous = Some(thumb);
                self.state = Sighting::Empty;
                self.run = 0;
                return Sighting::Empty;
            }
        };
        let present = thumb.share_changed(background) > self.settings.presence_fraction;
        let still = self.previous.as_ref().is_some_and(|p| thumb.mean_change(p) < self.settings.still_tolerance);
        let n = self.settings.still_frames;
        self.state = match self.state {
            Sighting::Empty if present => {
                self.run = 0;
                Sighting::Arriving
            }
            Sighting::Empty => {
                for (b, &t) in background.pixels.iter_mut().zip(&thumb.pixels) {
                    *b += BACKGROUND_RATE * (t - *b);
                }
                Sighting::Empty
            }
            Sighting::Arriving if !present => Sighting::Empty,
            Sighting::Arriving => {
                self.run = if still { self.run + 1 } else { 0 };
                if self.run >= n { Sighting::Inspect } else { Sighting::Arriving }
            }
            Sighting::Inspect | Sighting::Inspected => {
                self.run = if present { 0 } else { self.run + 1 };
                if self.run >= n {
                    self.run = 0;
                    Sighting::Empty
                } else {
                    Sighting::Inspected
                }
            }
        };
        self.previous = Some(thumb);
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// A 320x240 view of a dark stage with sensor noise and, optionally, a bright textured part
    /// whose left edge is at `part_x`.
    fn view(rng: &mut rand_chacha::ChaCha8Rng, part_x: Option<i32>) -> Frame {
        let (w, h) = (320u32, 240u32);
        let mut pixels = Vec::with_capacity((w * h) as usize);
        for y in 0..h as i32 {
            for x in 0..w as i32 {
                let noise = rng.random_range(-0.02f32..0.02);
                let on_part = part_x.is_some_and(|px| (px..px + 120).contains(&x) && (60..180).contains(&y));
                let v = if on_part { 0.6 + 0.1 * (((x + y) % 7) as f32 / 7.0) } else { 0.15 };
                pixels.push((v + noise).clamp(0.0, 1.0));
            }
        }
        Frame { width: w, height: h, pixels, pixel_um: Some(10.0), bit_depth: 8 }
    }

    fn settings() -> DetectorSettings {
        DetectorSettings { presence_fraction: 0.05, still_frames: 3, still_tolerance: 0.01 }
    }

    /// A conveyor: empty, a part slides in, stops, slides out; twice. One inspection per part,
    /// only once it is still, and none while the stage is empty or the part moves.
    #[test]
    fn each_part_on_a_conveyor_is_inspected_once_when_still() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut d = PartDetector::new(settings());
        let mut script: Vec<Option<i32>> = vec![None; 5];
        for _ in 0..2 {
            script.extend((0..6).map(|i| Some(-100 + 30 * i))); // sliding in
            script.extend(std::iter::repeat_n(Some(100), 6)); // still under the camera
            script.extend((0..8).map(|i| Some(130 + 30 * i))); // sliding out
            script.extend(std::iter::repeat_n(None, 5));
        }
        let sightings: Vec<Sighting> = script.iter().map(|&p| d.observe(&view(&mut rng, p))).collect();
        let inspect_at: Vec<usize> =
            sightings.iter().enumerate().filter(|(_, s)| **s == Sighting::Inspect).map(|(i, _)| i).collect();
        assert_eq!(inspect_at.len(), 2, "{sightings:?}");
        for &i in &inspect_at {
            // Inspected while the part is at rest, after `still_frames` still frames.
            assert_eq!(script[i], Some(100), "inspected at frame {i}: {sightings:?}");
            assert_eq!(script[i - 3], Some(100));
        }
        assert_eq!(*sightings.last().unwrap(), Sighting::Empty);
    }

    /// Slow lighting drift on an empty stage is followed, not taken for a part.
    #[test]
    fn lighting_drift_is_not_a_part() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let mut d = PartDetector::new(settings());
        for i in 0..200 {
            let mut f = view(&mut rng, None);
            let gain = 1.0 + 0.002 * i as f32; // +40 % over the run
            f.pixels.iter_mut().for_each(|v| *v = (*v * gain).min(1.0));
            assert_eq!(d.observe(&f), Sighting::Empty, "frame {i}");
        }
    }

    /// A part that is already judged and stays is not judged again; after it leaves, the
    /// trigger rearms for the next.
    #[test]
    fn a_part_that_stays_is_judged_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut d = PartDetector::new(settings());
        d.observe(&view(&mut rng, None));
        let n = (0..40).filter(|_| d.observe(&view(&mut rng, Some(100))) == Sighting::Inspect).count();
        assert_eq!(n, 1);
    }
}
