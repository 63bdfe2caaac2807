//! `amfp cameras`: the V4L2 devices of this machine with their formats, sizes and controls, so
//! that `[camera]` can be filled in (device, formats, width, height, controls by name).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::capture::pixels::PixelFormat;
use crate::capture::v4l2::{CameraInfo, describe_camera, list_cameras};
use crate::config::Settings;

/// Arguments of `amfp cameras`.
#[derive(Debug, Args)]
pub struct CamerasArgs {
    /// Only this device node (default: every /dev/video*).
    #[arg(value_name = "DEVICE")]
    pub device: Option<PathBuf>,
    /// One JSON object per device and line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `amfp cameras`: exit 0 when at least one capture device is listed, 1 when none is.
pub fn run(settings: &Settings, args: CamerasArgs) -> ExitCode {
    let cameras = match &args.device {
        Some(path) => vec![describe_camera(path)],
        None => list_cameras(),
    };
    for camera in &cameras {
        if args.json {
            println!("{}", serde_json::to_string(camera).expect("camera descriptions serialise"));
        } else {
            print!("{}", text(camera, settings));
        }
    }
    if cameras.iter().any(|c| c.capture) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: no V4L2 capture device found{}; plug in the camera (and check `dmesg`), or run amfp as a member of group video",
            args.device.as_ref().map(|d| format!(" at {}", d.display())).unwrap_or_default()
        );
        ExitCode::FAILURE
    }
}

/// The text block of one device.
fn text(c: &CameraInfo, settings: &Settings) -> String {
    let mut s = String::new();
    let kind = if c.capture { "video capture" } else { "not a capture device" };
    let _ = writeln!(s, "{}  {} (driver {}, {})  {kind}", c.path.display(), c.card, c.driver, c.bus);
    if let Some(e) = &c.error {
        let _ = writeln!(s, "  cannot query it: {e}");
    }
    if !c.formats.is_empty() {
        let chosen = settings
            .camera
            .formats
            .iter()
            .find(|f| PixelFormat::from_name(f).is_some() && c.formats.iter().any(|o| &o.fourcc == *f));
        let _ = writeln!(s, "  formats{}", chosen.map(|f| format!(" (camera.formats picks {f})")).unwrap_or_default());
        for f in &c.formats {
            let sizes: Vec<String> = f.sizes.iter().map(ToString::to_string).collect();
            let usable = if f.usable { "" } else { " [amfp does not read it]" };
            let _ = writeln!(
                s,
                "    {:<5} {}{usable}: {}",
                f.fourcc,
                f.description,
                if sizes.is_empty() { "sizes not listed".into() } else { sizes.join(", ") }
            );
        }
    }
    if !c.controls.is_empty() {
        let _ = writeln!(s, "  controls (camera.controls names)");
        for k in &c.controls {
            let value = k.value.map(|v| format!(" = {v}")).unwrap_or_default();
            let flags = if k.flags.is_empty() { String::new() } else { format!(" [{}]", k.flags.join(", ")) };
            let menu = if k.menu.is_empty() {
                String::new()
            } else {
                format!(" ({})", k.menu.iter().map(|(v, n)| format!("{v}: {n}")).collect::<Vec<_>>().join(", "))
            };
            let _ = writeln!(
                s,
                "    {:<32} {:<7} {} to {}, step {}, default {}{value}{flags}{menu}",
                k.name, k.kind, k.min, k.max, k.step, k.default
            );
        }
    }
    s
}
