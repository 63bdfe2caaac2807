//! The frame-source abstraction shared by the daemon and the CLI.
//!
//! A source is anything that yields [`Frame`]s: a V4L2 camera, a watched directory, a list of
//! files, the simulator. Sources are blocking (a camera read, a file read, a render), so the
//! daemon drives each one from a blocking thread and never from the async reactor.
//!
//! Two kinds exist, told apart by [`FrameSource::is_live`]:
//! - *part* sources (files, a watched directory, the simulator): every frame is one part to
//!   judge;
//! - *live* sources (cameras): frames are a view of a stage; a trigger (`daemon::trigger`)
//!   decides which frame shows a part worth judging.

use std::time::Duration;

use crate::capture::Frame;
use crate::result::{Attribution, SourceInfo};

/// What a source does once a part's Attribution is safely in every sink: e.g. move the image
/// into `done/`, so that a restart does not judge it again.
pub type OnDone = Box<dyn FnOnce(&Attribution) -> std::io::Result<()> + Send>;

/// One frame from a source, with where it came from.
pub struct Captured {
    pub frame: Frame,
    /// Reported in the Attribution's `source`.
    pub source: SourceInfo,
    /// Milliseconds spent getting the frame (read and decode, or capture and convert).
    pub capture_ms: f64,
    /// Run after the Attribution reached every sink; `None`: nothing to do.
    pub on_done: Option<OnDone>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("frame", &format_args!("{}x{}", self.frame.width, self.frame.height))
            .field("source", &self.source)
            .field("capture_ms", &self.capture_ms)
            .field("on_done", &self.on_done.is_some())
            .finish()
    }
}

/// The outcome of asking a source for a frame.
#[derive(Debug)]
pub enum Grab {
    /// A frame.
    Frame(Captured),
    /// Nothing within the wait (no new file yet, a camera being reopened); ask again.
    Idle,
    /// The source is exhausted (the last file of a list, the simulator's last part).
    End,
}

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source went away (camera unplugged, stream error). It is reported once; the source
    /// reopens itself with backoff on the next grabs, which return [`Grab::Idle`] meanwhile.
    #[error("{0}")]
    Lost(String),
    /// One item could not be read (a corrupt file). Reported, skipped, and the source goes on.
    #[error("{0}")]
    Skipped(String),
    /// The source cannot work at all (no such directory, a format no camera offers): the
    /// daemon stops with this message.
    #[error("{0}")]
    Fatal(String),
}

/// A place frames come from. See the module docs.
pub trait FrameSource: Send {
    /// Kind (`v4l2`, `directory`, `files`, `synth`) and name (device, path) for logs and status.
    fn describe(&self) -> SourceInfo;

    /// Whether frames are a live view that needs a trigger (cameras), rather than one part each.
    fn is_live(&self) -> bool;

    /// The next frame, blocking at most about `wait`; [`Grab::Idle`] when none came.
    fn grab(&mut self, wait: Duration) -> Result<Grab, CaptureError>;
}
