//! `amfp run`: the long-running service that inspects parts and tells the fleet what it found.
//!
//! Three tasks joined by bounded channels, so a slow stage makes the one before it wait and
//! nothing is dropped or piles up in memory:
//!
//! ```text
//!  capture ──jobs (daemon.queue)──► inference ──judged──► sinks
//!  source + trigger                 blocking thread       evidence, stdout, results log, MQTT
//!  (blocking grabs)                 watchdog pings        odd-part events, on_done
//! ```
//! - **capture** asks the source for frames on a blocking thread and decides, by the trigger
//!   (`each`, `continuous`, `interval`, `command`), which frame is a part to judge.
//! - **inference** runs [`Identifier::identify`](crate::identify::Identifier) on a blocking
//!   thread (never on the reactor) and pings the systemd watchdog between parts, so a hung
//!   inference stops the pings and systemd restarts the service.
//! - **sinks** hand each Attribution to every sink ([`sink::Sinks`]) and only then tell the source
//!   the part is done.
//!
//! One shutdown signal (SIGINT, SIGTERM, or the source running out) stops the capture; what was
//! already captured is judged and delivered, the MQTT publisher says `offline` and waits for the
//! broker's acknowledgements, all within `daemon.shutdown_grace_s`. A result not acknowledged in
//! time stays in the MQTT outbox and goes out after the next start. See docs/daemon.md.

pub mod enrollment;
pub mod evidence;
pub mod settings;
pub mod sink;
pub mod systemd;
pub mod trigger;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::conveyor::Conveyor;
use crate::capture::directory::WatchedDirectory;
use crate::capture::source::{CaptureError, Captured, FrameSource, Grab};
use crate::capture::synth::SynthSource;
use crate::capture::v4l2::V4l2Source;
use crate::config::Settings;
use crate::drift::Monitor;
use crate::gallery::Gallery;
use crate::identify::{Identifier, IdentifyOptions, Inspection, load_models, model_paths, resolve_pixel_size};
use crate::publish::{Command, EnrollCommand, InspectCommand, MqttPublisher};
use crate::result::Verdict;
use crate::synth::fleet::Fleet;
use enrollment::{Station, Step};
use evidence::RoiBox;
use settings::{SourceKind, TriggerKind};
use sink::{Judged, Sinks};
use systemd::Systemd;
use trigger::{DetectorSettings, PartDetector, Sighting};

/// How long one grab may block, so the capture task sees a shutdown promptly.
const GRAB_WAIT: Duration = Duration::from_millis(250);

/// Why the daemon could not start or had to stop. The message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting or combination of settings cannot work (exit status 2).
    #[error("{0}")]
    Config(String),
    /// A model, the source or a sink could not be opened, or the source failed for good (exit 1).
    #[error("{0}")]
    Failed(String),
}

/// What the command line adds to the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Models from `--model`, overriding `[model]`.
    pub models: Vec<PathBuf>,
    /// Stop after this many parts (demos, batch jobs, tests).
    pub max_parts: Option<u64>,
}

/// What a run did, for the last log line and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Parts judged.
    pub judged: u64,
    /// Parts delivered to every sink.
    pub delivered: u64,
    /// MQTT shut down cleanly (every result acknowledged); `None` without MQTT.
    pub mqtt_clean: Option<bool>,
    /// Results left in the MQTT outbox for the next start.
    pub outbox_left: u64,
}

/// One part to judge, with the claim and reference of the command that asked for it.
struct Job {
    captured: Captured,
    claim: Option<String>,
    reference: Option<String>,
}

/// What the capture task hands the inference task, in order: parts, and enrollment commands
/// (which apply to the parts captured after them).
enum Work {
    Part(Job),
    Enroll(EnrollCommand),
}

/// What the source and trigger need to run.
struct Capture {
    source: Box<dyn FrameSource>,
    trigger: TriggerKind,
    interval: Duration,
    detector: DetectorSettings,
    max_parts: Option<u64>,
}

/// Runs the daemon until `shutdown` is cancelled or the source runs out. See the module docs.
pub async fn run(
    settings: Settings,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunSummary, DaemonError> {
    let systemd = Systemd::from_env();
    let identify = IdentifyOptions::from_settings(&settings);
    let device = identify.device.clone();
    let paths = model_paths(&settings, &options.models);
    let (batch, load) = (identify.batch, settings.load_options());
    let gallery = settings.model.gallery.clone();
    let (models, galleries) = tokio::task::spawn_blocking(move || load_models(&paths, batch, &load, &gallery))
        .await
        .expect("model loading panicked")
        .map_err(|e| DaemonError::Failed(e.to_string()))?;
    let gallery_status =
        galleries[0].as_ref().map(|g| json!({"version": g.version, "sha256": g.sha256, "machines": g.machines.len()}));
    let model_status = json!({
        "name": models[0].meta.name, "task": models[0].meta.task, "sha256": models[0].sha256,
        "engine": models[0].engine,
        "pixel_size_um": models[0].meta.pixel_size_um, "roi_px": models[0].meta.roi_px,
        "open_set": if gallery_status.is_some() { "gallery" } else { "vote" }, "gallery": gallery_status,
    });
    let identifier = Arc::new(Identifier::with_galleries(models, galleries, identify));
    if let Some(expect) = &settings.daemon.expect
        && let Err(why) = identifier.check_claim(expect)
    {
        return Err(DaemonError::Config(format!("daemon.expect: {why}")));
    }

    let source_settings = settings.clone();
    let model_path = identifier.models()[0].path.clone();
    let source = tokio::task::spawn_blocking(move || open_source(&source_settings, &model_path))
        .await
        .expect("source opening panicked")?;
    let described = source.describe();
    let trigger = resolve_trigger(settings.daemon.trigger, source.is_live(), settings.mqtt.enabled)?;
    log::info!(
        "source: {} {} ({}), trigger {trigger:?}",
        described.kind,
        described.name,
        if source.is_live() { "live view" } else { "one part per frame" }
    );

    let (mqtt, commands) = if settings.mqtt.enabled {
        let status = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "model": model_status,
            "source": {"kind": described.kind, "name": described.name},
            // What the fleet needs to judge this device's verdicts: how it sees the parts.
            "camera": {"kind": described.kind, "name": described.name, "pixel_um": settings.camera.pixel_um, "mask": settings.camera.mask},
            "trigger": format!("{trigger:?}").to_lowercase(),
            "expect": settings.daemon.expect,
        });
        let (publisher, commands) = MqttPublisher::start(&settings.mqtt, &device, status)
            .await
            .map_err(|e| DaemonError::Config(format!("mqtt: {e}")))?;
        (Some(publisher), Some(commands))
    } else {
        (None, None)
    };
    let sinks = Sinks::open(&settings.output, &settings.daemon.state_dir, mqtt.clone()).map_err(DaemonError::Failed)?;
    let drift = match (settings.drift.enabled, identifier.gallery()) {
        (true, Some(g)) => {
            let dir = settings.daemon.state_dir.join(crate::drift::DRIFT_DIR);
            let monitor = Monitor::open(&dir, settings.drift).map_err(|e| DaemonError::Failed(e.to_string()))?;
            let followed = g.machines.iter().filter(|m| m.drift.is_some()).count();
            log::info!(
                "drift monitoring: {followed} of {} machines have a drift reference; state in {}",
                g.machines.len(),
                dir.display()
            );
            Some(Arc::new(Mutex::new(monitor)))
        }
        _ => None,
    };

    let station =
        Station::new(settings.enroll.clone(), settings.trust.clone(), &device).map_err(DaemonError::Config)?;
    if settings.enroll.commands {
        log::info!("enrollment at the station: cmd/enroll commands are taken (enroll.commands)");
    }
    let capture = Capture {
        source,
        trigger,
        interval: Duration::from_secs_f64(settings.daemon.interval_s),
        detector: DetectorSettings::from_settings(&settings.daemon),
        max_parts: options.max_parts,
    };
    let (jobs_tx, jobs_rx) = mpsc::channel(settings.daemon.queue);
    let (judged_tx, judged_rx) = mpsc::channel(settings.daemon.queue);
    let stop_capture = shutdown.child_token();
    systemd.ready(&format!("ready: {} {}, model {}", described.kind, described.name, identifier.models()[0].meta.name));
    log::info!("amfp {} running as device {device}", env!("CARGO_PKG_VERSION"));

    let capture_task =
        tokio::spawn(capture_loop(capture, jobs_tx, commands, stop_capture.clone(), mqtt.clone(), identifier.clone()));
    let reload_task =
        identifier.gallery().map(|g| tokio::spawn(reload_gallery(identifier.clone(), g.path.clone(), mqtt.clone())));
    let inference_task = tokio::spawn(inference_loop(
        Judge { identifier, drift, station },
        settings.clone(),
        jobs_rx,
        judged_tx,
        sinks.wants_evidence(),
        systemd.clone(),
        mqtt.clone(),
    ));
    let sink_task = tokio::spawn(sink_loop(sinks, judged_rx, systemd.clone()));

    // The capture ends on a signal, when the source runs out or fails for good, or after
    // --parts; the other two then drain what was captured.
    let captured = capture_task.await.expect("capture task panicked");
    let grace = Duration::from_secs(settings.daemon.shutdown_grace_s);
    let drain = async {
        let judged = inference_task.await.expect("inference task panicked");
        let delivered = sink_task.await.expect("sink task panicked");
        (judged, delivered)
    };
    tokio::pin!(drain);
    let mut deadline = shutdown.is_cancelled().then(|| Instant::now() + grace);
    let (judged, delivered) = loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => shutdown.cancelled().await,
            }
        };
        tokio::select! {
            done = &mut drain => break done,
            _ = timer => match deadline {
                Some(_) => {
                    log::warn!("shutdown: parts still in flight after {} s (daemon.shutdown_grace_s); their images stay at the source", grace.as_secs());
                    break (0, 0);
                }
                None => deadline = Some(Instant::now() + grace),
            },
        }
    };
    if let Some(task) = reload_task {
        task.abort();
    }
    systemd.stopping();
    let mut summary = RunSummary { judged, delivered, ..Default::default() };
    if let Some(mqtt) = &mqtt {
        let left = deadline.map_or(grace, |d| d.saturating_duration_since(Instant::now()));
        let report = mqtt
            .shutdown(left.min(Duration::from_secs(settings.mqtt.shutdown_grace_s)).max(Duration::from_millis(100)))
            .await;
        summary.mqtt_clean = Some(report.clean);
        summary.outbox_left = report.outbox_entries;
        if report.outbox_entries > 0 {
            log::info!("mqtt: {} results wait in the outbox for the next start", report.outbox_entries);
        }
    }
    log::info!("stopped: {judged} parts judged, {delivered} delivered to every sink");
    captured.map(|()| summary)
}

/// Opens the configured source (`[source]`, `[camera]`): the daemon's, and `amfp enroll
/// --from-source`'s.
pub fn open_source(settings: &Settings, model_path: &Path) -> Result<Box<dyn FrameSource>, DaemonError> {
    let s = &settings.source;
    let failed = |e: CaptureError| DaemonError::Failed(e.to_string());
    Ok(match s.kind {
        SourceKind::Directory => {
            let dir = s
                .dir
                .as_ref()
                .ok_or_else(|| DaemonError::Config("source.dir is not set; set the directory to watch".into()))?;
            Box::new(
                WatchedDirectory::open(dir, Duration::from_millis(s.settle_ms), Duration::from_millis(s.poll_ms))
                    .map_err(failed)?,
            )
        }
        SourceKind::Synth | SourceKind::Conveyor => {
            let fleet = match settings.synth.fleet.clone().or_else(|| fleet_beside(model_path)) {
                Some(path) => {
                    log::info!("synth source: fleet {}", path.display());
                    Fleet::load(&path).map_err(|e| DaemonError::Failed(format!("synth source: {e}")))?
                }
                None => {
                    log::info!(
                        "synth source: the built-in fleet (no fleet file beside the model, synth.fleet not set)"
                    );
                    Fleet::paper(7)
                }
            };
            let parts =
                SynthSource::new(fleet, s.synth_seed, settings.synth.scanner_pixel_um, settings.synth.bit_depth);
            if s.kind == SourceKind::Conveyor {
                Box::new(Conveyor::new(parts, s.conveyor_fps, s.synth_seed))
            } else {
                Box::new(parts)
            }
        }
        SourceKind::V4l2 => Box::new(V4l2Source::open(&settings.camera).map_err(failed)?),
    })
}

/// The fleet file shipped beside a model: `models/amfp-synth-v3.int8.onnx` → `models/amfp-synth-v3.fleet.toml`.
pub fn fleet_beside(model: &Path) -> Option<PathBuf> {
    let name = model.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    let path = model.with_file_name(format!("{stem}.fleet.toml"));
    path.is_file().then_some(path)
}

/// The trigger to use, from the setting and the kind of source; combinations that cannot work
/// are configuration errors.
fn resolve_trigger(setting: TriggerKind, live: bool, mqtt: bool) -> Result<TriggerKind, DaemonError> {
    let trigger = match setting {
        TriggerKind::Auto if live => TriggerKind::Continuous,
        TriggerKind::Auto => TriggerKind::Each,
        t => t,
    };
    match trigger {
        TriggerKind::Each if live => Err(DaemonError::Config(
            "daemon.trigger = \"each\" judges every frame, which suits a directory or the simulator, not a camera; use continuous, interval or command".into(),
        )),
        TriggerKind::Continuous if !live => Err(DaemonError::Config(
            "daemon.trigger = \"continuous\" watches a live camera view; with a directory or the simulator use each (every image is a part) or interval".into(),
        )),
        TriggerKind::Command if !mqtt => Err(DaemonError::Config(
            "daemon.trigger = \"command\" waits for MQTT cmd/inspect commands, but mqtt.enabled is false; enable MQTT or choose another trigger".into(),
        )),
        t => Ok(t),
    }
}

/// Publishes an event when MQTT is on (the log has it either way).
fn event(mqtt: &Option<MqttPublisher>, kind: &str, detail: Value) {
    if let Some(m) = mqtt
        && let Err(e) = m.publish_event(kind, detail)
    {
        log::warn!("mqtt: {kind} event not sent: {e}");
    }
}

/// How often the gallery file is looked at for a new version.
const GALLERY_POLL: Duration = Duration::from_secs(2);

/// Replaces the primary gallery with the file at `path` when it changes (a new version written
/// by `amfp enroll` or `amfp gallery`; looked at every [`GALLERY_POLL`]) or on SIGHUP
/// (`systemctl reload amfp`). A file that does not load (damaged, another model's) is reported
/// and the daemon keeps judging with the gallery it has (docs/daemon.md, "Gallery updates").
async fn reload_gallery(identifier: Arc<Identifier>, path: PathBuf, mqtt: Option<MqttPublisher>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| log::warn!("cannot listen for SIGHUP ({e}): the gallery is reloaded when its file changes"))
        .ok();
    let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    let mut seen = stamp(&path);
    let mut poll = tokio::time::interval(GALLERY_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = poll.tick() => {
                let now = stamp(&path);
                if now == seen || now.is_none() { continue }
                seen = now;
                "the file changed"
            }
        };
        let before = identifier.gallery().map(|g| g.sha256.clone());
        let loading = path.clone();
        let id = identifier.clone();
        match tokio::task::spawn_blocking(move || id.replace_gallery(&loading)).await.expect("gallery loading panicked")
        {
            // The same file again: the daemon's own enrollment wrote it and announced it.
            Ok(g) if why != "SIGHUP" && before.as_deref() == Some(g.sha256.as_str()) => {
                log::debug!("gallery {} unchanged ({why})", g.path.display())
            }
            Ok(g) => announce_gallery(&mqtt, &g, before, why),
            Err(e) => {
                log::error!("gallery not reloaded ({why}): {e}; still judging with the one loaded before");
                event(
                    &mqtt,
                    "gallery_reload_failed",
                    json!({"path": path, "reason": e.to_string(), "kept_sha256": before}),
                );
            }
        }
    }
}

/// Says that `g` is now the gallery parts are judged with: the log, the `online` status and a
/// `gallery_reloaded` event naming what made the change (`why`).
fn announce_gallery(mqtt: &Option<MqttPublisher>, g: &Gallery, before: Option<String>, why: &str) {
    log::info!(
        "gallery {} reloaded ({why}): version {}, {} machines, sha256 {}",
        g.path.display(),
        g.version,
        g.machines.len(),
        &g.sha256[..12]
    );
    if let Some(m) = mqtt
        && let Err(e) = m.update_status(
            json!({"model": {"gallery": {"version": g.version, "sha256": g.sha256, "machines": g.machines.len()}}}),
        )
    {
        log::warn!("mqtt: the online status does not show the new gallery: {e}");
    }
    event(
        mqtt,
        "gallery_reloaded",
        json!({"path": g.path, "version": g.version, "sha256": g.sha256, "machines": g.machines.len(),
               "previous_sha256": before, "trigger": why,
               "signed_by": g.signed_by.as_ref().map(|s| s.key_id.clone())}),
    );
}

/// The capture task: asks the source for frames and turns the trigger's picks into jobs.
/// Returns when `stop` is cancelled, the source ends, `max_parts` were captured, or the source
/// fails for good (the error).
async fn capture_loop(
    capture: Capture,
    jobs: mpsc::Sender<Work>,
    mut commands: Option<mpsc::Receiver<Command>>,
    stop: CancellationToken,
    mqtt: Option<MqttPublisher>,
    identifier: Arc<Identifier>,
) -> Result<(), DaemonError> {
    let Capture { source, trigger, interval, detector, max_parts } = capture;
    let mut source = Some(source);
    let mut detector = PartDetector::new(detector);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    let mut lost = false;
    // Parts asked for by a trigger or command and not yet captured: (claim, reference).
    let mut wanted: Option<(Option<String>, Option<String>)> = None;
    let live = source.as_ref().is_some_and(|s| s.is_live());
    loop {
        if max_parts.is_some_and(|m| sent >= m) || stop.is_cancelled() {
            return Ok(());
        }
        // What makes the next part: a tick, a command, or simply the next frame.
        if wanted.is_none() {
            // An enrollment command goes to the inference task in line with the parts, so
            // that it applies to the parts captured after it.
            let inspect = match trigger {
                TriggerKind::Interval => tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = ticker.tick() => { wanted = Some((None, None)); None },
                    Some(cmd) = recv(&mut commands) => Some(cmd),
                },
                TriggerKind::Command => tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    cmd = recv(&mut commands) => match cmd {
                        Some(cmd) => Some(cmd),
                        None => return Err(DaemonError::Failed("the MQTT command stream ended".into())),
                    },
                },
                _ => commands.as_mut().and_then(|rx| rx.try_recv().ok()),
            };
            let inspect = match inspect {
                Some(Command::Enroll(cmd)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        sent_ok = jobs.send(Work::Enroll(cmd)) => if sent_ok.is_err() { return Ok(()) },
                    }
                    continue;
                }
                Some(Command::Inspect(cmd)) => Some(cmd),
                None => None,
            };
            // `each` and `continuous` look at every frame; a command on a live view judges
            // the next frame at once.
            match inspect {
                None => {}
                Some(cmd) if live || matches!(trigger, TriggerKind::Interval | TriggerKind::Command) => {
                    wanted = accepted(cmd, &identifier, &mqtt)
                }
                Some(cmd) => {
                    log::warn!("inspect command ignored: every part of a part source is judged anyway");
                    event(
                        &mqtt,
                        "command_ignored",
                        json!({"reason": "this device judges every part its source delivers; commands are for camera stations with trigger command or interval", "ref": cmd.reference}),
                    );
                }
            }
        }
        let mut src = source.take().expect("source is back after each grab");
        let (src, grabbed) = tokio::task::spawn_blocking(move || {
            let g = src.grab(GRAB_WAIT);
            (src, g)
        })
        .await
        .expect("grab panicked");
        source = Some(src);
        let captured = match grabbed {
            Ok(Grab::Frame(c)) => {
                if std::mem::take(&mut lost) {
                    log::info!("source: frames flow again from {}", c.source.name);
                    event(&mqtt, "source_back", json!({"source": c.source}));
                }
                c
            }
            Ok(Grab::Idle) => continue,
            Ok(Grab::End) => {
                log::info!("source: no more parts");
                return Ok(());
            }
            Err(CaptureError::Lost(why)) => {
                log::warn!("source lost: {why}; reopening with backoff");
                lost = true;
                event(&mqtt, "source_lost", json!({"reason": why}));
                continue;
            }
            Err(CaptureError::Skipped(why)) => {
                log::warn!("source: skipped: {why}");
                event(&mqtt, "frame_skipped", json!({"reason": why}));
                continue;
            }
            Err(CaptureError::Fatal(why)) => return Err(DaemonError::Failed(format!("source: {why}"))),
        };
        let (claim, reference) = match (trigger, wanted.take()) {
            (_, Some(w)) => w,
            (TriggerKind::Continuous, None) => match detector.observe(&captured.frame) {
                Sighting::Inspect => (None, None),
                _ => continue,
            },
            _ => (None, None),
        };
        let job = Job { captured, claim, reference };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            sent_ok = jobs.send(Work::Part(job)) => if sent_ok.is_err() { return Ok(()) },
        }
        sent += 1;
    }
}

/// What an inspect command asks for, `(claim, reference)`; none when its claim names a machine
/// amfp does not know (refused with a `command_refused` event: docs/identify.md, "Claims").
fn accepted(
    cmd: InspectCommand,
    identifier: &Identifier,
    mqtt: &Option<MqttPublisher>,
) -> Option<(Option<String>, Option<String>)> {
    if let Some(claim) = &cmd.claim
        && let Err(why) = identifier.check_claim(claim)
    {
        log::warn!("inspect command refused: {why}");
        event(mqtt, "command_refused", json!({"reason": why, "claim": claim, "ref": cmd.reference}));
        return None;
    }
    Some((cmd.claim, cmd.reference))
}

/// The next command, or never when there is no command stream.
async fn recv(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What judges a part: the identifier, drift monitoring when it is on, and the station's
/// enrollment.
struct Judge {
    identifier: Arc<Identifier>,
    drift: Option<Arc<Mutex<Monitor>>>,
    station: Station,
}

/// The inference task: judges each job on a blocking thread; pings the watchdog while idle and
/// after each part. Returns the number of parts judged.
async fn inference_loop(
    judge: Judge,
    settings: Settings,
    mut jobs: mpsc::Receiver<Work>,
    judged: mpsc::Sender<Judged>,
    keep_frames: bool,
    systemd: Systemd,
    mqtt: Option<MqttPublisher>,
) -> u64 {
    let Judge { identifier, drift, mut station } = judge;
    let mut pings = systemd.ping_every().map(tokio::time::interval);
    let mut count = 0;
    loop {
        let work = tokio::select! {
            work = jobs.recv() => work,
            _ = async { match &mut pings { Some(p) => { p.tick().await; } None => std::future::pending().await } } => {
                systemd.ping();
                continue;
            }
        };
        let Job { captured, claim, reference } = match work {
            None => return count,
            Some(Work::Enroll(cmd)) => {
                enroll_command(&mut station, cmd, &identifier, &mqtt);
                continue;
            }
            Some(Work::Part(job)) => job,
        };
        let enrolling = station.is_active();
        // A part taken for an enrollment is not checked against the line's expected source.
        let claim = claim.or_else(|| settings.daemon.expect.clone().filter(|_| !enrolling));
        let id = identifier.clone();
        let config_pixel = settings.camera.pixel_um;
        let monitor = drift.clone().filter(|_| !enrolling);
        let (captured, outcome) = tokio::task::spawn_blocking(move || {
            let inspection = Inspection {
                pixel: resolve_pixel_size(None, &captured.frame, config_pixel),
                frame: &captured.frame,
                source: captured.source.clone(),
                claim: claim.as_deref(),
                capture_ms: captured.capture_ms,
            };
            let mut outcome = if enrolling {
                id.identify_for_enrollment(&inspection, keep_frames)
            } else {
                id.identify_recorded(&inspection, keep_frames)
            };
            if let (Some(monitor), Some(gallery), Ok((attribution, _))) = (monitor, id.gallery(), outcome.as_mut()) {
                let mut monitor = monitor.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                attribution.drift = monitor.observe(&gallery, attribution);
            }
            (captured, outcome)
        })
        .await
        .expect("inference panicked");
        systemd.ping();
        let (mut attribution, record) = match outcome {
            Ok(r) => r,
            Err(e) => {
                log::error!("inference failed on {}: {e}", captured.source.name);
                event(&mqtt, "inference_failed", json!({"source": captured.source, "reason": e.to_string()}));
                continue;
            }
        };
        count += 1;
        attribution.reference = reference;
        if let Some(step) = station.take(&mut attribution) {
            enrollment_step(step, &identifier, &mqtt).await;
        }
        if let Some(note) = &attribution.drift
            && let Some(alarm) = &note.raised
        {
            log::warn!(
                "drift alarm: {}'s parts have moved away from its fingerprint ({} change, statistic {:.1} > {:.1} \
                 after {} parts); confirm and re-enroll it (`amfp enroll --reenroll`, docs/drift.md)",
                note.machine,
                alarm.change.as_str(),
                alarm.statistic,
                note.threshold,
                alarm.part
            );
            event(
                &mqtt,
                "drift",
                json!({"machine": note.machine, "statistic": alarm.statistic, "threshold": note.threshold,
                       "parts": alarm.part, "change": alarm.change, "change_parts_ago": alarm.change_parts_ago,
                       "result_id": alarm.result_id, "time": alarm.time}),
            );
        }
        let rois = match (&record, &attribution.envelope) {
            (Some(r), Some(env)) => {
                let scale = env.camera_pixel_um.map_or(1.0, |cam| env.model_pixel_um / cam);
                let side = (r.roi_shape[1] as f64 * scale).round() as u32;
                r.corners
                    .iter()
                    .map(|&(x, y)| RoiBox {
                        x: (f64::from(x) * scale).round() as u32,
                        y: (f64::from(y) * scale).round() as u32,
                        side,
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let Captured { frame, on_done, .. } = captured;
        let part = Judged { attribution, frame: keep_frames.then_some(frame), rois, on_done };
        if judged.send(part).await.is_err() {
            return count;
        }
    }
}

/// Starts or cancels an enrollment at the station; a command that cannot be carried out is
/// refused with a `command_refused` event saying why.
fn enroll_command(station: &mut Station, cmd: EnrollCommand, identifier: &Identifier, mqtt: &Option<MqttPublisher>) {
    let (label, reference, outcome) = match cmd {
        EnrollCommand::Start(start) => {
            let (label, reference) = (Some(start.label.clone()), start.reference.clone());
            (label, reference, station.start(start, identifier))
        }
        EnrollCommand::Cancel { reference } => (None, reference.clone(), station.cancel(reference)),
    };
    match outcome {
        Ok(detail) => {
            log::info!("enrollment {}: {}", text(&detail["state"]), text(&detail["label"]));
            event(mqtt, "enrollment", detail);
        }
        Err(why) => {
            log::warn!("enroll command refused: {why}");
            event(mqtt, "command_refused", json!({"reason": why, "label": label, "ref": reference}));
        }
    }
}

/// Reports what a part did to the enrollment under way; with its last part, writes the new
/// gallery version (on a blocking thread) and announces it as the gallery now in use.
async fn enrollment_step(step: Step, identifier: &Arc<Identifier>, mqtt: &Option<MqttPublisher>) {
    match step {
        Step::More(detail) => {
            log::info!("enrollment of {}: {} of {} parts", text(&detail["label"]), detail["parts"], detail["of"]);
            event(mqtt, "enrollment", detail);
        }
        Step::Failed(detail) => {
            log::warn!("enrollment of {} failed: {}", text(&detail["label"]), text(&detail["reason"]));
            event(mqtt, "enrollment", detail);
        }
        Step::Ready(detail, ready) => {
            event(mqtt, "enrollment", detail);
            let label = ready.label().to_string();
            let before = identifier.gallery().map(|g| g.sha256.clone());
            let id = identifier.clone();
            let (detail, gallery) =
                tokio::task::spawn_blocking(move || ready.commit(&id)).await.expect("enrollment panicked");
            match &gallery {
                Some(g) => {
                    log::info!("enrollment of {label} done: gallery {} is now version {}", g.path.display(), g.version)
                }
                None => log::warn!("enrollment of {label} failed: {}", text(&detail["reason"])),
            }
            event(mqtt, "enrollment", detail);
            if let Some(g) = gallery {
                announce_gallery(mqtt, &g, before, "enrollment");
            }
        }
    }
}

/// A JSON string's text (other values as JSON), for log lines.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The sink task: delivers every judged part; returns how many reached every sink.
async fn sink_loop(mut sinks: Sinks, mut judged: mpsc::Receiver<Judged>, systemd: Systemd) -> u64 {
    let (mut delivered, mut seen) = (0u64, 0u64);
    while let Some(part) = judged.recv().await {
        let verdict = part.attribution.judgement.verdict;
        let what = match verdict {
            Verdict::Identified => part.attribution.judgement.label.clone().unwrap_or_default(),
            v => v.as_str().to_string(),
        };
        seen += 1;
        if sinks.deliver(part).await.complete {
            delivered += 1;
        }
        systemd.status(&format!("{seen} parts judged; last: {what}"));
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_fit_their_sources() {
        assert_eq!(resolve_trigger(TriggerKind::Auto, true, false).unwrap(), TriggerKind::Continuous);
        assert_eq!(resolve_trigger(TriggerKind::Auto, false, false).unwrap(), TriggerKind::Each);
        assert_eq!(resolve_trigger(TriggerKind::Interval, false, false).unwrap(), TriggerKind::Interval);
        for (t, live, mqtt) in [
            (TriggerKind::Each, true, true),
            (TriggerKind::Continuous, false, true),
            (TriggerKind::Command, true, false),
        ] {
            assert!(matches!(resolve_trigger(t, live, mqtt), Err(DaemonError::Config(_))), "{t:?}");
        }
    }

    #[test]
    fn the_fleet_file_beside_a_model_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m1.fleet.toml"), "").unwrap();
        assert_eq!(fleet_beside(&dir.path().join("m1.int8.onnx")), Some(dir.path().join("m1.fleet.toml")));
        assert_eq!(fleet_beside(&dir.path().join("m2.onnx")), None);
    }
}
