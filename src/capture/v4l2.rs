//! V4L2 cameras and USB microscopes: format negotiation, locked controls, mmap streaming,
//! frame averaging, and reopening a camera that went away.
//!
//! [`V4l2Source`] is the [`FrameSource`] the daemon uses for `source.kind = "v4l2"` and
//! `amfp identify --camera` uses for one frame. [`list_cameras`] is what `amfp cameras` prints.
//! The `[camera]` keys of the configuration choose the device, the pixel format (gray first,
//! then YUYV, then MJPEG), the size, the rate, the controls and the number of frames averaged;
//! see docs/capture.md.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use v4l::buffer::Type as BufType;
use v4l::capability::Flags as CapFlags;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC, Fraction};

use super::Frame;
use super::pixels::{self, Average, PixelFormat};
use super::source::{CaptureError, Captured, FrameSource, Grab};
use crate::config::CameraSettings;
use crate::publish::backoff::Backoff;
use crate::result::SourceInfo;

/// Buffers the driver fills while amfp works on a frame.
const BUFFERS: u32 = 4;
/// First wait before reopening a lost camera; doubled after each failed attempt...
const REOPEN_FIRST: Duration = Duration::from_millis(250);
/// ...up to this.
const REOPEN_CAP: Duration = Duration::from_secs(5);
/// A streaming camera that delivers no frame for this long is treated as lost (a USB stall).
const STALL: Duration = Duration::from_secs(10);

// V4L2 control ids (linux/v4l2-controls.h).
const CID_BASE: u32 = 0x0098_0900;
const CID_CAMERA_BASE: u32 = 0x009a_0900;
const CID_AUTO_WHITE_BALANCE: u32 = CID_BASE + 12;
const CID_AUTOGAIN: u32 = CID_BASE + 18;
const CID_GAIN: u32 = CID_BASE + 19;
const CID_WHITE_BALANCE_TEMPERATURE: u32 = CID_BASE + 26;
const CID_EXPOSURE_AUTO: u32 = CID_CAMERA_BASE + 1;
const CID_EXPOSURE_ABSOLUTE: u32 = CID_CAMERA_BASE + 2;
const CID_FOCUS_ABSOLUTE: u32 = CID_CAMERA_BASE + 10;
const CID_FOCUS_AUTO: u32 = CID_CAMERA_BASE + 12;
/// `V4L2_EXPOSURE_MANUAL` of the exposure_auto menu.
const EXPOSURE_MANUAL: i64 = 1;
/// `V4L2_CTRL_FLAG_NEXT_CTRL`: enumerate controls in order.
const CTRL_FLAG_NEXT_CTRL: u32 = 0x8000_0000;
/// Control flags: disabled, read-only, inactive (another control governs it).
const CTRL_FLAG_DISABLED: u32 = 0x0001;
const CTRL_FLAG_READ_ONLY: u32 = 0x0004;
const CTRL_FLAG_INACTIVE: u32 = 0x0010;
/// Control types that hold one integer: integer, boolean, menu, integer menu.
const CTRL_TYPES_INTEGER: [u32; 4] = [1, 2, 3, 9];

/// A camera frame source: a live view of the stage, one (averaged) frame per grab.
pub struct V4l2Source {
    settings: CameraSettings,
    state: State,
    backoff: Backoff,
    frames: u64,
}

enum State {
    Open(Box<Camera>),
    /// Not open; the next attempt is due at this instant.
    Lost {
        retry_at: Instant,
    },
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Open(c) => format!("open {}", c.negotiated),
            State::Lost { .. } => "lost".into(),
        };
        f.debug_struct("V4l2Source").field("device", &self.settings.device).field("state", &state).finish()
    }
}

/// What was agreed with the camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Negotiated {
    /// `GREY`, `Y16`, `YUYV` or `MJPG`.
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// Bytes per line.
    pub stride: u32,
    /// Frames per second the camera reports, when it does.
    pub fps: Option<f64>,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}x{}", self.format, self.width, self.height)?;
        if let Some(fps) = self.fps {
            write!(f, " at {fps:.1} fps")?;
        }
        Ok(())
    }
}

/// Why a camera could not be opened.
#[derive(Debug)]
enum OpenError {
    /// Not there (unplugged, not yet enumerated) or gone while being set up: try again later.
    Absent(String),
    /// There, but it cannot work as configured: a message naming the key and what to do.
    Unusable(String),
}

/// An open, configured and streaming camera.
struct Camera {
    path: PathBuf,
    format: PixelFormat,
    negotiated: Negotiated,
    // Declared before `device`: the stream unmaps its buffers before the device is closed.
    stream: Option<MmapStream<'static>>,
    /// Holds the file descriptor the stream uses; polled for ready frames.
    device: Device,
    last_frame: Instant,
}

impl Drop for Camera {
    fn drop(&mut self) {
        // v4l's stream panics in its Drop when STREAMOFF fails with anything but ENODEV (a
        // device that went away in another way): contain that here, the camera is being closed.
        if let Some(stream) = self.stream.take()
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream))).is_err()
        {
            log::warn!("camera {}: stopping the stream failed while closing it", self.path.display());
        }
    }
}

impl V4l2Source {
    /// Opens the camera of `[camera]`, negotiates its format and controls and starts streaming.
    ///
    /// A camera that is not there (yet) is not an error: the source starts lost, reports it on
    /// the first grab and opens the camera once it appears. A camera that is there but cannot
    /// work as configured (not a capture device, none of `camera.formats`, a control it lacks)
    /// is [`CaptureError::Fatal`], with a message naming the key to change.
    pub fn open(camera: &CameraSettings) -> Result<V4l2Source, CaptureError> {
        let mut source = V4l2Source {
            settings: camera.clone(),
            state: State::Lost { retry_at: Instant::now() },
            backoff: Backoff::new(REOPEN_FIRST, REOPEN_CAP),
            frames: 0,
        };
        match Camera::open(camera) {
            Ok(c) => {
                log::info!("camera {}: {}", camera.device.display(), c.negotiated);
                source.state = State::Open(Box::new(c));
            }
            Err(OpenError::Unusable(m)) => return Err(CaptureError::Fatal(m)),
            Err(OpenError::Absent(m)) => {
                log::warn!("{m}; waiting for it");
                source.state = State::Lost { retry_at: Instant::now() + source.backoff.next_delay() };
            }
        }
        Ok(source)
    }

    /// The format, size and rate agreed with the camera; `None` while it is lost.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.state {
            State::Open(c) => Some(&c.negotiated),
            State::Lost { .. } => None,
        }
    }

    fn lose(&mut self, reason: String) -> CaptureError {
        self.state = State::Lost { retry_at: Instant::now() + self.backoff.next_delay() };
        CaptureError::Lost(format!("camera {} lost: {reason}; reopening it", self.settings.device.display()))
    }
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> SourceInfo {
        SourceInfo { kind: "v4l2".into(), name: self.settings.device.display().to_string(), frame: None }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn grab(&mut self, wait: Duration) -> Result<Grab, CaptureError> {
        let start = Instant::now();
        if let State::Lost { retry_at } = self.state {
            let now = Instant::now();
            if now < retry_at {
                // Never spin: wait out the backoff, or as much of it as the caller allows.
                std::thread::sleep((retry_at - now).min(wait));
                if Instant::now() < retry_at {
                    return Ok(Grab::Idle);
                }
            }
            match Camera::open(&self.settings) {
                Ok(c) => {
                    log::info!("camera {} is back: {}", self.settings.device.display(), c.negotiated);
                    self.backoff.reset();
                    self.state = State::Open(Box::new(c));
                }
                Err(OpenError::Absent(m)) => {
                    log::debug!("{m}");
                    self.state = State::Lost { retry_at: Instant::now() + self.backoff.next_delay() };
                    return Ok(Grab::Idle);
                }
                Err(OpenError::Unusable(m)) => return Err(CaptureError::Fatal(m)),
            }
        }
        let State::Open(camera) = &mut self.state else { unreachable!("opened above") };
        match camera.capture(self.settings.average_frames, wait) {
            // The sensor does not know the size of a pixel on the part: that is the camera's
            // configured (or calibrated) `camera.pixel_um`, which the pipeline reports as such.
            Ok(Some(frame)) => {
                self.frames += 1;
                let mut source = self.describe();
                source.frame = Some(self.frames);
                Ok(Grab::Frame(Captured {
                    frame,
                    source,
                    capture_ms: crate::identify::elapsed_ms(start),
                    on_done: None,
                }))
            }
            Ok(None) if camera.last_frame.elapsed() > STALL => {
                let reason = format!("no frame for {} s", STALL.as_secs());
                Err(self.lose(reason))
            }
            Ok(None) => Ok(Grab::Idle),
            Err(e) => Err(self.lose(e)),
        }
    }
}

impl Camera {
    fn open(s: &CameraSettings) -> Result<Camera, OpenError> {
        let path = s.device.clone();
        let shown = path.display().to_string();
        let device = Device::with_path(&path).map_err(|e| open_error(&shown, &e))?;
        let caps = device.query_caps().map_err(|e| open_error(&shown, &e))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) || !caps.capabilities.contains(CapFlags::STREAMING) {
            return Err(OpenError::Unusable(format!(
                "camera.device {shown} ({}, driver {}) is not a streaming video capture device; `amfp cameras` lists the cameras",
                caps.card, caps.driver
            )));
        }
        let offered: Vec<String> =
            device.enum_formats().map_err(|e| open_error(&shown, &e))?.iter().map(|d| fourcc_name(&d.fourcc)).collect();
        let format = s
            .formats
            .iter()
            .filter_map(|n| PixelFormat::from_name(n))
            .find(|f| offered.iter().any(|o| o == f.name()))
            .ok_or_else(|| {
                OpenError::Unusable(format!(
                    "camera {shown} offers none of camera.formats {:?}; it offers {}; amfp reads {}",
                    s.formats,
                    offered.join(", "),
                    pixels::KNOWN_FORMATS.join(", ")
                ))
            })?;
        let fourcc = FourCC::new(&format.fourcc());
        let (width, height) = match (s.width, s.height) {
            (Some(w), Some(h)) => (w, h),
            (w, h) => {
                let (lw, lh) = largest_size(&device, fourcc)
                    .unwrap_or_else(|| device.format().map(|f| (f.width, f.height)).unwrap_or((640, 480)));
                (w.unwrap_or(lw), h.unwrap_or(lh))
            }
        };
        let got = device.set_format(&Format::new(width, height, fourcc)).map_err(|e| open_error(&shown, &e))?;
        if got.fourcc != fourcc {
            return Err(OpenError::Unusable(format!(
                "camera {shown} did not accept pixel format {} (it chose {}); remove it from camera.formats",
                format.name(),
                fourcc_name(&got.fourcc)
            )));
        }
        if (got.width, got.height) != (width, height) {
            log::warn!(
                "camera {shown}: asked for {width}x{height}, the camera gives {}x{}; set camera.width and camera.height to a size `amfp cameras` lists",
                got.width,
                got.height
            );
        }
        let fps = match s.fps {
            Some(fps) => {
                let interval = Fraction::new(1000, (fps * 1000.0).round().max(1.0) as u32);
                match device.set_params(&v4l::video::capture::Parameters::new(interval)) {
                    Ok(p) => interval_fps(p.interval),
                    Err(e) => {
                        log::warn!("camera {shown}: cannot set camera.fps = {fps} ({e}); using its own rate");
                        device.params().ok().and_then(|p| interval_fps(p.interval))
                    }
                }
            }
            None => device.params().ok().and_then(|p| interval_fps(p.interval)),
        };
        if let Some((want, have)) = s.fps.zip(fps)
            && (want - have).abs() > 0.01 * want
        {
            log::warn!("camera {shown}: asked for {want} fps, the camera runs at {have:.2} fps");
        }
        apply_controls(&device, s, &shown)?;
        let mut stream =
            MmapStream::with_buffers(&device, BufType::VideoCapture, BUFFERS).map_err(|e| open_error(&shown, &e))?;
        // Start streaming and take the first frame now, so that a camera that cannot stream
        // fails here. (v4l's `next` re-queues the buffer it returned last at the next call, so
        // after a timeout inside `next` its bookkeeping is off: later calls to `next` are only
        // made once `poll` says a frame is ready, and a first frame that does not come makes
        // the camera count as absent.)
        stream.set_timeout(STALL);
        match stream.next() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(OpenError::Absent(format!("camera {shown} sent no frame within {} s", STALL.as_secs())));
            }
            Err(e) => return Err(open_error(&shown, &e)),
        }
        stream.clear_timeout();
        let negotiated =
            Negotiated { format: format.name().into(), width: got.width, height: got.height, stride: got.stride, fps };
        Ok(Camera { path, format, negotiated, stream: Some(stream), device, last_frame: Instant::now() })
    }

    /// The mean of `count` fresh frames, each waited for at most `wait`; `None` when the first
    /// did not come in time; an error (the reason) when the stream failed.
    fn capture(&mut self, count: u32, wait: Duration) -> Result<Option<Frame>, String> {
        let handle = self.device.handle();
        let ready = |timeout: Duration| -> Result<bool, String> {
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            handle.poll(libc::POLLIN, ms).map(|n| n > 0).map_err(|e| e.to_string())
        };
        let stream = self.stream.as_mut().expect("an open camera streams");
        // Frames that queued up while amfp worked on the last part are stale: drop them.
        for _ in 0..BUFFERS {
            if !ready(Duration::ZERO)? {
                break;
            }
            stream.next().map_err(|e| e.to_string())?;
        }
        let mut average: Option<Average> = None;
        while average.as_ref().map_or(0, Average::count) < count {
            if !ready(wait.max(Duration::from_millis(1)))? {
                if average.is_none() {
                    return Ok(None);
                }
                return Err(format!("the camera stopped sending frames while {count} were being averaged"));
            }
            let frame = match stream.next() {
                Ok((bytes, meta)) => {
                    let used = (meta.bytesused as usize).min(bytes.len());
                    let n = &self.negotiated;
                    let bytes = if used > 0 { &bytes[..used] } else { bytes };
                    match pixels::to_frame(self.format, bytes, n.width, n.height, n.stride) {
                        Ok(f) => f,
                        Err(e) => {
                            // One damaged frame (an MJPEG glitch) is not a lost camera.
                            log::warn!("camera {}: frame skipped: {e}", self.path.display());
                            continue;
                        }
                    }
                }
                Err(e) => return Err(e.to_string()),
            };
            self.last_frame = Instant::now();
            match &mut average {
                None => average = Some(Average::new(&frame)),
                Some(a) => {
                    a.add(&frame);
                }
            }
        }
        Ok(average.map(Average::finish))
    }
}

/// ENOENT/ENODEV/ENXIO mean the camera is not there (yet, or any more); anything else is a
/// camera that is there but refuses, with a hint for the usual causes.
fn open_error(shown: &str, e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::EIO | libc::EPIPE) => {
            OpenError::Absent(format!("camera {shown} is not connected ({e})"))
        }
        Some(libc::EACCES | libc::EPERM) => OpenError::Unusable(format!(
            "cannot open camera {shown}: {e}; run amfp as a member of group video (the packaged service is)"
        )),
        Some(libc::EBUSY) => {
            OpenError::Absent(format!("camera {shown} is busy ({e}): another program is streaming from it"))
        }
        _ => OpenError::Unusable(format!("camera {shown}: {e}")),
    }
}

fn fourcc_name(f: &FourCC) -> String {
    f.str().map(|s| s.trim_end().to_string()).unwrap_or_else(|_| format!("{:?}", f.repr))
}

fn interval_fps(f: Fraction) -> Option<f64> {
    (f.numerator > 0).then(|| f64::from(f.denominator) / f64::from(f.numerator))
}

/// The largest frame size the camera offers in `fourcc`.
fn largest_size(device: &Device, fourcc: FourCC) -> Option<(u32, u32)> {
    sizes(device, fourcc).into_iter().map(|s| s.max()).max_by_key(|&(w, h)| u64::from(w) * u64::from(h))
}

/// The frame sizes of one format, as the camera states them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SizeRange {
    /// One size.
    Discrete { width: u32, height: u32 },
    /// Any size in a range, in steps.
    Stepwise { min_width: u32, max_width: u32, step_width: u32, min_height: u32, max_height: u32, step_height: u32 },
}

impl SizeRange {
    fn max(&self) -> (u32, u32) {
        match *self {
            Self::Discrete { width, height } => (width, height),
            Self::Stepwise { max_width, max_height, .. } => (max_width, max_height),
        }
    }
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Discrete { width, height } => write!(f, "{width}x{height}"),
            Self::Stepwise { min_width, max_width, step_width, min_height, max_height, step_height } => {
                write!(f, "{min_width}x{min_height} to {max_width}x{max_height} (steps {step_width}x{step_height})")
            }
        }
    }
}

fn sizes(device: &Device, fourcc: FourCC) -> Vec<SizeRange> {
    use v4l::framesize::FrameSizeEnum;
    device
        .enum_framesizes(fourcc)
        .unwrap_or_default()
        .into_iter()
        .map(|s| match s.size {
            FrameSizeEnum::Discrete(d) => SizeRange::Discrete { width: d.width, height: d.height },
            FrameSizeEnum::Stepwise(s) => SizeRange::Stepwise {
                min_width: s.min_width,
                max_width: s.max_width,
                step_width: s.step_width,
                min_height: s.min_height,
                max_height: s.max_height,
                step_height: s.step_height,
            },
        })
        .collect()
}

/// One control of a camera, as `amfp cameras` lists it and `camera.controls` names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlInfo {
    /// The v4l2-ctl style name: lower case, words joined by `_` (`exposure_time_absolute`).
    pub name: String,
    /// The driver's name for people (`Exposure Time, Absolute`).
    pub label: String,
    pub id: u32,
    /// `int`, `bool`, `menu`, `intmenu`, `button`, `int64`, `string`, `bitmask` or `other`.
    pub kind: &'static str,
    pub min: i64,
    pub max: i64,
    pub step: i64,
    pub default: i64,
    /// The current value, for controls holding one integer.
    pub value: Option<i64>,
    /// Menu entries (value, name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub menu: Vec<(i64, String)>,
    /// Read-only, inactive (governed by an automatic control) and so on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
}

/// The v4l2-ctl name of a control: lower case, non-alphanumeric runs become one `_`.
pub fn control_name(label: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Every control of the device (VIDIOC_QUERYCTRL with NEXT_CTRL), read defensively: a driver's
/// odd control types or names never stop the listing.
fn query_controls(device: &Device) -> Vec<ControlInfo> {
    use v4l::v4l_sys::{v4l2_queryctrl, v4l2_querymenu};
    let fd = device.handle().fd();
    let mut out = Vec::new();
    let mut id = 0u32;
    for _ in 0..1024 {
        // SAFETY: plain C structs, zero is a valid value of each.
        let mut q: v4l2_queryctrl = unsafe { std::mem::zeroed() };
        q.id = id | CTRL_FLAG_NEXT_CTRL;
        // SAFETY: the request matches the struct passed.
        if unsafe { v4l::v4l2::ioctl(fd, v4l::v4l2::vidioc::VIDIOC_QUERYCTRL, &mut q as *mut _ as *mut _) }.is_err() {
            break;
        }
        id = q.id;
        let kind = match q.type_ {
            1 => "int",
            2 => "bool",
            3 => "menu",
            4 => "button",
            5 => "int64",
            6 => continue, // a control class heading, not a control
            7 => "string",
            8 => "bitmask",
            9 => "intmenu",
            _ => "other",
        };
        let label = c_string(&q.name);
        let mut menu = Vec::new();
        if q.type_ == 3 || q.type_ == 9 {
            for index in q.minimum..=q.maximum.min(q.minimum + 255) {
                // SAFETY: as above.
                let mut m: v4l2_querymenu = unsafe { std::mem::zeroed() };
                m.id = q.id;
                m.index = index as u32;
                // SAFETY: as above.
                if unsafe { v4l::v4l2::ioctl(fd, v4l::v4l2::vidioc::VIDIOC_QUERYMENU, &mut m as *mut _ as *mut _) }
                    .is_ok()
                {
                    // SAFETY: the union holds a name for menus and a value for integer menus.
                    let name = unsafe {
                        if q.type_ == 3 {
                            c_string(&{ m.__bindgen_anon_1.name })
                        } else {
                            { m.__bindgen_anon_1.value }.to_string()
                        }
                    };
                    menu.push((i64::from(index), name));
                }
            }
        }
        let mut flags = Vec::new();
        for (bit, name) in
            [(CTRL_FLAG_DISABLED, "disabled"), (CTRL_FLAG_READ_ONLY, "read-only"), (CTRL_FLAG_INACTIVE, "inactive")]
        {
            if q.flags & bit != 0 {
                flags.push(name);
            }
        }
        let value = (CTRL_TYPES_INTEGER.contains(&q.type_) && q.flags & CTRL_FLAG_DISABLED == 0)
            .then(|| get_control(device, q.id).ok())
            .flatten();
        out.push(ControlInfo {
            name: control_name(&label),
            label,
            id: q.id,
            kind,
            min: i64::from(q.minimum),
            max: i64::from(q.maximum),
            step: i64::from(q.step),
            default: i64::from(q.default_value),
            value,
            menu,
            flags,
        });
    }
    out
}

fn get_control(device: &Device, id: u32) -> io::Result<i64> {
    use v4l::v4l_sys::v4l2_control;
    let mut c = v4l2_control { id, value: 0 };
    // SAFETY: the request matches the struct passed.
    unsafe { v4l::v4l2::ioctl(device.handle().fd(), v4l::v4l2::vidioc::VIDIOC_G_CTRL, &mut c as *mut _ as *mut _) }?;
    Ok(i64::from(c.value))
}

fn set_control(device: &Device, id: u32, value: i64) -> io::Result<()> {
    use v4l::v4l_sys::v4l2_control;
    let mut c = v4l2_control { id, value: value as i32 };
    // SAFETY: the request matches the struct passed.
    unsafe { v4l::v4l2::ioctl(device.handle().fd(), v4l::v4l2::vidioc::VIDIOC_S_CTRL, &mut c as *mut _ as *mut _) }
}

/// Turns the automatic controls off (`camera.lock_controls`) and sets the configured values,
/// each checked against the camera's range and read back.
fn apply_controls(device: &Device, s: &CameraSettings, shown: &str) -> Result<(), OpenError> {
    let controls = query_controls(device);
    let by_id: BTreeMap<u32, &ControlInfo> = controls.iter().map(|c| (c.id, c)).collect();
    let set = |c: &ControlInfo, value: i64, key: &str| -> Result<(), OpenError> {
        if c.flags.contains(&"read-only") {
            return Err(OpenError::Unusable(format!("camera {shown}: control {} is read-only; remove {key}", c.name)));
        }
        if value < c.min || value > c.max {
            return Err(OpenError::Unusable(format!(
                "{key} = {value} is outside camera {shown}'s range for {} ({} to {})",
                c.name, c.min, c.max
            )));
        }
        set_control(device, c.id, value).map_err(|e| match open_error(shown, &e) {
            OpenError::Absent(m) => OpenError::Absent(m),
            OpenError::Unusable(_) => {
                OpenError::Unusable(format!("camera {shown}: cannot set {} to {value} ({key}): {e}", c.name))
            }
        })?;
        match get_control(device, c.id) {
            Ok(v) if v != value => log::warn!("camera {shown}: {} is {v}, not {value} as {key} asks", c.name),
            Ok(_) => log::debug!("camera {shown}: {} = {value}", c.name),
            Err(e) => log::debug!("camera {shown}: cannot read back {}: {e}", c.name),
        }
        Ok(())
    };
    if s.lock_controls {
        for (id, manual, what) in [
            (CID_EXPOSURE_AUTO, EXPOSURE_MANUAL, "automatic exposure"),
            (CID_AUTOGAIN, 0, "automatic gain"),
            (CID_FOCUS_AUTO, 0, "autofocus"),
            (CID_AUTO_WHITE_BALANCE, 0, "automatic white balance"),
        ] {
            match by_id.get(&id) {
                Some(c) if !c.flags.contains(&"read-only") && !c.flags.contains(&"disabled") => {
                    set(c, manual, "camera.lock_controls")?;
                    log::info!("camera {shown}: {what} off");
                }
                _ => log::debug!("camera {shown} has no {what} to turn off"),
            }
        }
    }
    let fixed = [
        (
            "camera.exposure_us",
            CID_EXPOSURE_ABSOLUTE,
            s.exposure_us.map(|us| (i64::from(us) + 50) / 100),
            "an exposure time control",
        ),
        ("camera.gain", CID_GAIN, s.gain, "a gain control"),
        ("camera.focus", CID_FOCUS_ABSOLUTE, s.focus, "a focus control"),
        (
            "camera.white_balance_k",
            CID_WHITE_BALANCE_TEMPERATURE,
            s.white_balance_k.map(i64::from),
            "a white balance temperature control",
        ),
    ];
    for (key, id, value, what) in fixed {
        let Some(value) = value else { continue };
        let c =
            by_id.get(&id).ok_or_else(|| OpenError::Unusable(format!("camera {shown} has no {what}; remove {key}")))?;
        set(c, value, key)?;
    }
    for (name, &value) in &s.controls {
        let c = controls.iter().find(|c| &c.name == name).ok_or_else(|| {
            let names: Vec<&str> = controls
                .iter()
                .filter(|c| CTRL_TYPES_INTEGER.contains(&kind_code(c.kind)))
                .map(|c| c.name.as_str())
                .collect();
            OpenError::Unusable(format!(
                "camera.controls.{name}: camera {shown} has no such control; it has {}",
                names.join(", ")
            ))
        })?;
        set(c, value, &format!("camera.controls.{name}"))?;
    }
    Ok(())
}

fn kind_code(kind: &str) -> u32 {
    match kind {
        "int" => 1,
        "bool" => 2,
        "menu" => 3,
        "intmenu" => 9,
        _ => 0,
    }
}

/// One pixel format of a camera with its sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatInfo {
    /// FourCC (`GREY`, `YUYV`...).
    pub fourcc: String,
    pub description: String,
    /// Whether amfp reads this format.
    pub usable: bool,
    pub sizes: Vec<SizeRange>,
}

/// One V4L2 device node, as `amfp cameras` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraInfo {
    pub path: PathBuf,
    pub card: String,
    pub driver: String,
    pub bus: String,
    /// Whether it is a streaming video capture device (a camera amfp can use).
    pub capture: bool,
    /// Why it could not be queried, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<FormatInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<ControlInfo>,
}

/// Every `/dev/video*` node, sorted by number, with its formats, sizes and controls.
pub fn list_cameras() -> Vec<CameraInfo> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("video")))
                .collect()
        })
        .unwrap_or_default();
    paths.sort_by_key(|p| {
        let n = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("video"))
            .and_then(|n| n.parse::<u32>().ok());
        (n.unwrap_or(u32::MAX), p.clone())
    });
    paths.iter().map(|p| describe_camera(p)).collect()
}

/// One device node's description (see [`list_cameras`]).
pub fn describe_camera(path: &Path) -> CameraInfo {
    let mut info = CameraInfo {
        path: path.to_path_buf(),
        card: String::new(),
        driver: String::new(),
        bus: String::new(),
        capture: false,
        error: None,
        formats: Vec::new(),
        controls: Vec::new(),
    };
    let device = match Device::with_path(path) {
        Ok(d) => d,
        Err(e) => {
            info.error = Some(e.to_string());
            return info;
        }
    };
    let caps = match device.query_caps() {
        Ok(c) => c,
        Err(e) => {
            info.error = Some(e.to_string());
            return info;
        }
    };
    info.card = caps.card;
    info.driver = caps.driver;
    info.bus = caps.bus;
    info.capture =
        caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) && caps.capabilities.contains(CapFlags::STREAMING);
    if !info.capture {
        return info;
    }
    info.formats = device
        .enum_formats()
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            let fourcc = fourcc_name(&d.fourcc);
            FormatInfo {
                usable: PixelFormat::from_name(&fourcc).is_some(),
                sizes: sizes(&device, d.fourcc),
                fourcc,
                description: d.description,
            }
        })
        .collect();
    info.controls = query_controls(&device);
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_names_as_v4l2_ctl_writes_them() {
        assert_eq!(control_name("Exposure Time, Absolute"), "exposure_time_absolute");
        assert_eq!(control_name("White Balance, Automatic"), "white_balance_automatic");
        assert_eq!(control_name("Loop Video"), "loop_video");
        assert_eq!(control_name(" U8 4D Array "), "u8_4d_array");
    }

    #[test]
    fn a_missing_camera_starts_lost_and_never_spins() {
        let settings = CameraSettings { device: "/dev/amfp-no-such-camera".into(), ..CameraSettings::default() };
        let mut source = V4l2Source::open(&settings).unwrap();
        assert!(source.is_live());
        assert!(source.negotiated().is_none());
        let t0 = Instant::now();
        let mut idle = 0;
        while t0.elapsed() < Duration::from_millis(600) {
            match source.grab(Duration::from_millis(100)) {
                Ok(Grab::Idle) => idle += 1,
                other => panic!("{other:?}"),
            }
        }
        // Each grab waits (up to 100 ms, the backoff or the attempt): a handful, not thousands.
        assert!((3..=12).contains(&idle), "{idle} grabs in 600 ms");
    }

    #[test]
    fn a_file_that_is_no_camera_is_fatal() {
        let settings = CameraSettings { device: "/dev/null".into(), ..CameraSettings::default() };
        match V4l2Source::open(&settings) {
            Err(CaptureError::Fatal(m)) => assert!(m.contains("/dev/null"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
