//! The real V4L2 path, end to end, against the Linux kernel's vivid virtual video driver.
//!
//! Boots Debian's kernel (`linux-image-amd64`, downloaded with `apt-get download`) in qemu with
//! TCG (no KVM: nested virtualisation hangs on CI machines, see docs/capture.md) from an
//! initramfs holding busybox, vivid and its dependencies, v4l2-ctl, the amfp binary, this test
//! binary and a simulated part. Inside the VM:
//!
//! 1. `amfp cameras --json` lists vivid's capture device with its formats and controls;
//! 2. v4l2-ctl streams the simulated part (8-bit gray, 1280x720) into vivid's HDMI output, which
//!    vivid loops back to its HDMI capture (the `loop_video` control, set by amfp from
//!    `camera.controls`), and `amfp identify --camera --json` captures it through mmap buffers
//!    and judges it: the attribution must be the one `amfp identify` gives on the host for the
//!    same image, and name the machine that made the part;
//! 3. this binary, run as `v4l2_vivid unplug`, streams from the camera through `V4l2Source`,
//!    unbinds vivid's platform device (what a USB disconnect does; `rmmod` refuses while a
//!    program holds the device), checks that the loss is reported once and that grabs then
//!    wait without spinning, binds vivid again and checks that frames flow again.
//!
//! Results come back on the serial console as marker lines. Boot artefacts live under
//! `target/tmp/vivid/`. Every missing tool is a loud failure (`.ci/test` installs them).
//! `harness = false`: the binary is also the program run inside the VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use amfp::capture::source::{CaptureError, FrameSource, Grab};
use amfp::capture::v4l2::V4l2Source;
use amfp::config::CameraSettings;

/// vivid with one capture and one output node, each with one HDMI connector (so that the output
/// can loop to the capture).
const VIVID_OPTS: &str = "n_devs=1 node_types=0x101 num_inputs=1 input_types=0x3 num_outputs=1 output_types=0x1";
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const PIXEL_UM: f64 = 5.3;
const MACHINE: &str = "M2-1";
const SEED: u64 = 5;
/// The VM's whole run, boot to power-off.
const VM_TIMEOUT: Duration = Duration::from_secs(420);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("unplug") {
        std::process::exit(in_vm_unplug(&args[2]));
    }
    // `cargo test` passes harness flags (--nocapture, filters); a filter that excludes this
    // test's name skips it, as the harness would.
    if let Some(filter) = args.iter().skip(1).find(|a| !a.starts_with('-'))
        && !"vivid_vm_real_v4l2".contains(filter.as_str())
    {
        println!("running 0 tests");
        return;
    }
    let t0 = Instant::now();
    vivid_vm_real_v4l2();
    println!("test vivid_vm_real_v4l2 ... ok ({:.0} s)", t0.elapsed().as_secs_f64());
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn need(tool: &str, package: &str) -> PathBuf {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} is missing: install Debian package {package} (.ci/test does: bash .ci/test, or apt-get install {package})"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The kernel image and module tree of Debian's current linux-image-amd64, cached.
fn kernel(work: &Path) -> (PathBuf, PathBuf, String) {
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let package = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
        .unwrap_or_else(|| panic!("apt-cache depends linux-image-amd64 names no kernel package:\n{deps}"))
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    let tree = work.join(format!("kernel-{version}"));
    if !tree.join("boot").is_dir() {
        let dl = work.join("download");
        let _ = std::fs::remove_dir_all(&dl);
        std::fs::create_dir_all(&dl).unwrap();
        run(Command::new("apt-get").args(["download", &package]).current_dir(&dl));
        let deb = std::fs::read_dir(&dl)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .unwrap();
        let tmp = work.join("kernel-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp));
        run(Command::new("depmod").arg("-b").arg(&tmp).arg(&version));
        std::fs::rename(&tmp, &tree).unwrap();
        let _ = std::fs::remove_dir_all(&dl);
    }
    (tree.join(format!("boot/vmlinuz-{version}")), tree.join(format!("lib/modules/{version}")), version)
}

/// Copies `file` to the same absolute path under `root`, with the shared libraries it needs.
fn install_with_libs(root: &Path, file: &Path, at: &str) {
    let dest = root.join(at.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(file, &dest).unwrap();
    let ldd = run(Command::new("ldd").arg(file));
    for line in ldd.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            let dest = root.join(path.trim_start_matches('/'));
            if !dest.exists() {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::copy(path, &dest).unwrap();
            }
        }
    }
}

/// The simulated part as raw 8-bit gray for v4l2-ctl, and as the PNG `amfp synth` wrote.
fn part(work: &Path) -> PathBuf {
    let out = work.join("part");
    common::amfp()
        .args(["synth", "--overwrite", "--mode", "microscope", "--microscope-size", &format!("{WIDTH}x{HEIGHT}")])
        .args(["--pixel-um", &PIXEL_UM.to_string(), "--fleet"])
        .arg(common::repo(common::FLEET))
        .args(["--machines", MACHINE, "--parts-per-machine", "1", "--seed", &SEED.to_string(), "--out"])
        .arg(&out)
        .assert()
        .success();
    out.join(format!("scans/{MACHINE}-00000.png"))
}

fn initramfs(work: &Path, modules: &Path, version: &str, png: &Path) -> PathBuf {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "models"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(need("busybox", "busybox-static"), root.join("bin/busybox")).unwrap();
    // vivid and what it depends on, with the module index busybox's modprobe reads.
    let dep_text = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    let line = dep_text.lines().find(|l| l.contains("/vivid.ko")).expect("the kernel package has vivid.ko");
    let (module, deps) = line.split_once(':').unwrap();
    let mdest = root.join(format!("lib/modules/{version}"));
    for rel in std::iter::once(module).chain(deps.split_whitespace()) {
        let dest = mdest.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(modules.join(rel), dest).unwrap();
    }
    for f in ["modules.dep", "modules.alias", "modules.symbols", "modules.builtin", "modules.order"] {
        if modules.join(f).exists() {
            std::fs::copy(modules.join(f), mdest.join(f)).unwrap();
        }
    }
    install_with_libs(&root, Path::new(common::AMFP_BIN), "/amfp");
    install_with_libs(&root, &std::env::current_exe().unwrap(), "/v4l2_vivid");
    install_with_libs(&root, &need("v4l2-ctl", "v4l-utils"), "/usr/bin/v4l2-ctl");
    std::fs::copy(common::repo(common::INT8_MODEL), root.join("models/amfp-synth-v3.int8.onnx")).unwrap();
    let img = image::open(png).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
    std::fs::write(root.join("part.gray"), img.as_raw()).unwrap();
    std::fs::write(
        root.join("amfp.toml"),
        format!(
            "[camera]\ndevice = \"/dev/video0\"\npixel_um = {PIXEL_UM}\nformats = [\"GREY\"]\nwidth = {WIDTH}\nheight = {HEIGHT}\n\
             controls = {{ loop_video = 1, osd_text_mode = 2 }}\n[log]\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
cd /
modprobe vivid {VIVID_OPTS}; echo "AMFP-RC modprobe $?"
echo "AMFP-BEGIN cameras"; /amfp --config /amfp.toml cameras --json; rc=$?; echo "AMFP-END cameras"; echo "AMFP-RC cameras $rc"
v4l2-ctl -d /dev/video1 --set-fmt-video-out=width={WIDTH},height={HEIGHT},pixelformat=GREY --stream-out-mmap=4 --stream-from=/part.gray --stream-loop --stream-poll > /tmp/feed.log 2>&1 &
feed=$!
# Wait (bounded) until the feeder streams: it prints a '>' per buffer it queues.
n=0; until grep -q '>' /tmp/feed.log || [ $n -ge 600 ]; do sleep 0.1; n=$((n+1)); done
echo "AMFP-BEGIN identify"; /amfp --config /amfp.toml identify --camera --json; rc=$?; echo "AMFP-END identify"; echo "AMFP-RC identify $rc"
kill $feed; wait $feed
echo "AMFP-BEGIN feed"; head -c 400 /tmp/feed.log; echo; echo "AMFP-END feed"
/v4l2_vivid unplug "{VIVID_OPTS}"; echo "AMFP-RC unplug $?"
echo "AMFP-DONE"
poweroff -f
"#
    );
    std::fs::write(root.join("init"), init).unwrap();
    run(Command::new("chmod")
        .args(["755", "init", "bin/busybox", "amfp", "v4l2_vivid", "usr/bin/v4l2-ctl"])
        .current_dir(&root));
    let cpio = work.join("initrd.cpio");
    need("cpio", "cpio");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet > {}", cpio.display()))
        .current_dir(&root));
    cpio
}

/// The text between `AMFP-BEGIN name` and `AMFP-END name`, and the `AMFP-RC name` code.
fn block<'a>(log: &'a str, name: &str) -> (Vec<&'a str>, Option<i32>) {
    // The console's escape sequences may precede a marker on its line.
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    let begin = lines.iter().position(|l| l.ends_with(&format!("AMFP-BEGIN {name}")));
    let end = lines.iter().position(|l| l.ends_with(&format!("AMFP-END {name}")));
    let body = match (begin, end) {
        (Some(b), Some(e)) if b < e => lines[b + 1..e].to_vec(),
        _ => Vec::new(),
    };
    let marker = format!("AMFP-RC {name} ");
    let rc = lines.iter().find_map(|l| l.find(&marker).and_then(|i| l[i + marker.len()..].trim().parse().ok()));
    (body, rc)
}

fn vivid_vm_real_v4l2() {
    let qemu = need("qemu-system-x86_64", "qemu-system-x86");
    need("depmod", "kmod");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vivid");
    std::fs::create_dir_all(&work).unwrap();
    let (vmlinuz, modules, version) = kernel(&work);
    let png = part(&work);
    let initrd = initramfs(&work, &modules, &version, &png);

    // What amfp says about the same frame on the host.
    let (host, out) = common::identify_json(&["--pixel-um", &PIXEL_UM.to_string()], &[&png]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let host = &host[0];
    assert_eq!(host["label"], MACHINE, "the simulated part is identified on the host: {host}");

    let t0 = Instant::now();
    let log_path = work.join("serial.log");
    let serial = std::fs::File::create(&log_path).unwrap();
    let status = Command::new("timeout")
        .arg(VM_TIMEOUT.as_secs().to_string())
        .arg(&qemu)
        .args(["-accel", "tcg", "-m", "1536", "-smp", "2", "-nographic", "-no-reboot", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 edd=off loglevel=4"])
        .stdin(std::process::Stdio::null())
        .stdout(serial.try_clone().unwrap())
        .stderr(serial)
        .status()
        .unwrap();
    let log = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()).into_owned();
    let tail: String = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let ctx = format!(
        "VM ran {:.0} s, {status}; serial log {} ends:\n{tail}",
        t0.elapsed().as_secs_f64(),
        log_path.display()
    );
    assert!(log.contains("AMFP-DONE"), "the VM did not finish. {ctx}");
    println!("VM boot to power-off: {:.0} s", t0.elapsed().as_secs_f64());

    assert_eq!(block(&log, "modprobe").1, Some(0), "modprobe vivid failed. {ctx}");

    // 1. The camera list.
    let (cameras, rc) = block(&log, "cameras");
    assert_eq!(rc, Some(0), "amfp cameras failed. {ctx}");
    let cameras: Vec<serde_json::Value> =
        cameras.iter().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let video0 = cameras
        .iter()
        .find(|c| c["path"] == "/dev/video0")
        .unwrap_or_else(|| panic!("no /dev/video0 listed: {cameras:?}"));
    assert_eq!(video0["driver"], "vivid");
    assert_eq!(video0["capture"], true);
    let formats: Vec<&str> =
        video0["formats"].as_array().unwrap().iter().map(|f| f["fourcc"].as_str().unwrap()).collect();
    for f in ["GREY", "Y16", "YUYV"] {
        assert!(formats.contains(&f), "vivid offers {f}: {formats:?}");
    }
    let controls: Vec<&str> =
        video0["controls"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(controls.contains(&"loop_video") && controls.contains(&"gain"), "{controls:?}");
    let video1 = cameras.iter().find(|c| c["path"] == "/dev/video1").expect("the output node is listed");
    assert_eq!(video1["capture"], false, "the output node is no camera");

    // 2. The part looped through vivid, captured and judged.
    let (identify, rc) = block(&log, "identify");
    let vm: serde_json::Value = identify
        .iter()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no attribution from amfp identify --camera (rc {rc:?}). {ctx}"));
    assert_eq!(rc, Some(0), "{vm}");
    assert_eq!(vm["source"]["kind"], "v4l2");
    assert_eq!(vm["source"]["name"], "/dev/video0");
    assert_eq!(vm["envelope"]["pixel_source"], "config");
    assert_eq!(vm["envelope"]["camera_pixel_um"], PIXEL_UM);
    assert_eq!(vm["label"], MACHINE, "{vm}");
    // The frame through V4L2 is the image: the same ROIs, the same vote.
    for key in ["verdict", "label", "score", "margin", "top", "rois"] {
        assert_eq!(vm[key], host[key], "{key}: VM {vm} vs host {host}");
    }

    // 3. Unplugged mid-stream, reported once, recovered.
    let (_, rc) = block(&log, "unplug");
    let unplug: Vec<&str> = log.lines().filter(|l| l.starts_with("AMFP-UNPLUG")).collect();
    assert_eq!(rc, Some(0), "unplug scenario failed: {unplug:?}. {ctx}");
    println!("{}", unplug.join("\n"));
}

/// Inside the VM: stream, unplug (unbind vivid), check the loss is reported once and that the
/// source waits without spinning, plug it back (bind), check that frames flow again.
fn in_vm_unplug(vivid_opts: &str) -> i32 {
    let say = |m: String| println!("AMFP-UNPLUG {m}");
    let settings = CameraSettings {
        device: "/dev/video0".into(),
        formats: vec!["GREY".into()],
        width: Some(WIDTH),
        height: Some(HEIGHT),
        pixel_um: Some(PIXEL_UM),
        ..CameraSettings::default()
    };
    let mut source = match V4l2Source::open(&settings) {
        Ok(s) => s,
        Err(e) => {
            say(format!("FAIL open: {e}"));
            return 1;
        }
    };
    let wait = Duration::from_millis(500);
    let deadline = |s: u64| Instant::now() + Duration::from_secs(s);
    // Frames flow.
    let until = deadline(60);
    let mut frames = 0;
    while frames < 3 {
        match source.grab(wait) {
            Ok(Grab::Frame(c)) => {
                // A camera frame carries no pixel size of its own: `camera.pixel_um` is applied
                // (and reported as coming from the configuration) by the pipeline.
                assert_eq!((c.frame.width, c.frame.height, c.frame.pixel_um), (WIDTH, HEIGHT, None));
                frames += 1;
            }
            Ok(_) if Instant::now() < until => {}
            other => {
                say(format!("FAIL before unplug: {other:?}"));
                return 1;
            }
        }
    }
    say(format!("streaming: {frames} frames"));
    // Unplug: unbind the platform device, as a USB disconnect removes a camera.
    let unbind = std::fs::write("/sys/bus/platform/drivers/vivid/unbind", "vivid.0");
    say(format!("unbound vivid.0: {unbind:?}; /dev/video0 exists: {}", Path::new("/dev/video0").exists()));
    let t_unplug = Instant::now();
    let mut lost = 0;
    let mut idle = 0;
    let until = deadline(30);
    while idle < 4 {
        match source.grab(wait) {
            Err(CaptureError::Lost(reason)) => {
                lost += 1;
                say(format!("lost after {} ms: {reason}", t_unplug.elapsed().as_millis()));
            }
            Ok(Grab::Idle) if lost > 0 => idle += 1,
            Ok(Grab::Frame(_)) | Ok(Grab::Idle) if Instant::now() < until => {} // frames already queued
            other => {
                say(format!("FAIL after unplug: {other:?} (lost {lost})"));
                return 1;
            }
        }
    }
    let spent = t_unplug.elapsed();
    say(format!("{idle} idle grabs while unplugged in {} ms", spent.as_millis()));
    if lost != 1 || spent < Duration::from_millis(500) {
        say(format!("FAIL: lost reported {lost} times; {idle} grabs took {} ms (spinning?)", spent.as_millis()));
        return 1;
    }
    // Plug it back.
    let bind = std::fs::write("/sys/bus/platform/drivers/vivid/bind", "vivid.0");
    say(format!("bound vivid.0: {bind:?} (module options {vivid_opts})"));
    let t_plug = Instant::now();
    let until = deadline(60);
    loop {
        match source.grab(wait) {
            Ok(Grab::Frame(c)) => {
                say(format!("frames again after {} ms (frame {:?})", t_plug.elapsed().as_millis(), c.source.frame));
                break;
            }
            Ok(Grab::Idle) if Instant::now() < until => {}
            other => {
                say(format!("FAIL after plugging back: {other:?}"));
                return 1;
            }
        }
    }
    say("OK".into());
    0
}
