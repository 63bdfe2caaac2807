//! `amfp run` as a process, against a real mosquitto broker on its own loopback port per test:
//! parts dropped into a watched directory come out as results on a subscriber, through a broker
//! restart and a `kill -9`, on command, with systemd notifications, evidence and a results log.
//!
//! Waiting is on observable conditions (a file appears, a message arrives, the process exits),
//! each bounded by [`PATIENCE`]; no sleep stands in for synchronisation.

mod common;
mod mqtt_support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{AMFP_BIN, INT8_GALLERY, INT8_MODEL, Part, amfp, amfp_process, identify_json, isolate, repo, simulate};
use mqtt_support::{Broker, ClientOptions, PATIENCE, Subscriber, free_port};
use serde_json::{Value, json};

/// A test's directories: simulated parts, the watched directory, the daemon's state.
struct Station {
    root: tempfile::TempDir,
    parts: Vec<Part>,
    /// Device id, one per test so that tests sharing a broker port by chance cannot mix.
    device: String,
}

impl Station {
    /// Simulates 2 parts of each of three machines (seed `seed`).
    fn new(seed: u64) -> Self {
        let root = tempfile::tempdir().unwrap();
        let machines = ["L1-1", "S450-1", "M2-1"].map(String::from);
        let parts = simulate(&root.path().join("sim"), &machines, 2, seed);
        std::fs::create_dir_all(root.path().join("incoming")).unwrap();
        Self { root, parts, device: format!("dock-{seed}") }
    }

    /// `amfp/<device>/<leaf>`.
    fn topic(&self, leaf: &str) -> String {
        format!("amfp/{}/{leaf}", self.device)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// Moves part `i` into the watched directory (atomically, as a rename).
    fn drop_part(&self, i: usize) -> PathBuf {
        let to = self.path("incoming").join(self.parts[i].file.file_name().unwrap());
        std::fs::rename(&self.parts[i].file, &to).unwrap();
        to
    }

    /// Writes the daemon's configuration: the watched directory, state under the root,
    /// MQTT to `port` when given, and `extra` TOML appended.
    fn config(&self, port: Option<u16>, extra: &str) -> PathBuf {
        let mqtt = match port {
            Some(port) => format!(
                "[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\noutbox_dir = \"{}\"\nreconnect_max_s = 1\nshutdown_grace_s = 5\n",
                self.path("state/outbox").display()
            ),
            None => String::new(),
        };
        let text = format!(
            "[device]\nid = \"{}\"\n[source]\nkind = \"directory\"\ndir = \"{}\"\nsettle_ms = 100\npoll_ms = 20\n\
             [daemon]\nstate_dir = \"{}\"\n[output]\njsonl = true\n{mqtt}{extra}",
            self.device,
            self.path("incoming").display(),
            self.path("state").display()
        );
        let path = self.path("amfp.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Lines of the results log.
    fn logged(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("state/results/results.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Files in a subdirectory of the watched directory.
    fn files_in(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("incoming").join(sub))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// The daemon as a child process; killed if the test ends without stopping it.
struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Daemon {
    fn start(station: &Station, config: &Path, args: &[&str]) -> Self {
        Self::start_with(station, amfp_process(config), args)
    }

    fn start_with(station: &Station, mut cmd: std::process::Command, args: &[&str]) -> Self {
        let stderr = station.path(&format!("daemon-{}.log", ulid::Ulid::generate()));
        cmd.arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        Self { child: Some(cmd.spawn().unwrap()), stderr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `KILL`...).
    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    /// Waits for the process to exit; returns its exit code (None: killed by a signal) and how
    /// long it took.
    async fn exit(&mut self) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            assert!(start.elapsed() < PATIENCE, "the daemon did not exit; its log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` until it holds, failing after [`PATIENCE`] with `what`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE * 3;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `amfp identify` says about the same image: the daemon must say the same.
fn identified(file: &Path) -> Value {
    let (mut out, _) = identify_json(&[], &[file]);
    out.remove(0)
}

/// N parts arrive as N results, each saying what `amfp identify` says about the same image,
/// in the results log too; the images move into done/, and `--parts N` ends the run cleanly
/// with the broker's acknowledgements and the `offline` status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_from_a_directory_arrive_as_results() {
    let station = Station::new(301);
    let broker = Broker::start(station.root.path());
    let mut sub = Subscriber::connect(broker.port, &station.topic("#"), ClientOptions::default()).await;
    let expected: Vec<Value> = station.parts.iter().map(|p| identified(&p.file)).collect();
    let names: Vec<String> = (0..station.parts.len())
        .map(|i| station.drop_part(i).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let config = station.config(Some(broker.port), "");
    let mut daemon = Daemon::start(&station, &config, &["--parts", &names.len().to_string()]);

    let online = sub.status(&station.topic("status"), "online").await;
    assert_eq!(online["model"]["name"], "amfp-synth-v3-int8");
    // The status says how verdicts are reached: the bundled gallery, its version and hash.
    assert_eq!(online["model"]["open_set"], "gallery");
    assert_eq!(online["model"]["gallery"]["version"], 1);
    assert_eq!(online["model"]["gallery"]["machines"], 21);
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(online["camera"]["kind"], "directory");
    assert_eq!(online["source"]["kind"], "directory");
    let (results, _) = sub.results(&station.topic("result"), names.len()).await;
    for r in &results {
        let name = Path::new(r["source"]["name"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        let i = names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("unexpected source {name}"));
        let e = &expected[i];
        assert_eq!(
            (r["device"].as_str(), r["source"]["kind"].as_str()),
            (Some(station.device.as_str()), Some("directory"))
        );
        for key in ["verdict", "label", "score", "margin", "top", "rois", "envelope", "model", "mode", "gallery"] {
            assert_eq!(r[key], e[key], "{key} of {name}");
        }
    }
    sub.status(&station.topic("status"), "offline").await;
    let (code, _) = daemon.exit().await;
    assert_eq!(code, Some(0), "{}", daemon.log());
    let mut done = station.files_in("done");
    let mut sorted = names.clone();
    sorted.sort();
    done.sort();
    assert_eq!(done, sorted);
    let logged: Vec<Value> = station.logged();
    assert_eq!(
        logged.iter().map(|l| &l["id"]).collect::<Vec<_>>(),
        results.iter().map(|r| &r["id"]).collect::<Vec<_>>()
    );
}

/// The broker goes away in the middle of a run and comes back: every result arrives, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_result() {
    let station = Station::new(302);
    let mut broker = Broker::start(station.root.path());
    let how = ClientOptions { persistent_id: Some("fleet-manager".into()), ..Default::default() };
    let mut sub = Subscriber::connect(broker.port, &station.topic("result"), how.clone()).await;
    let config = station.config(Some(broker.port), "");
    let mut daemon = Daemon::start(&station, &config, &[]);
    for i in 0..3 {
        station.drop_part(i);
    }
    let (before, _) = sub.results(&station.topic("result"), 3).await;

    broker.stop();
    for i in 3..6 {
        station.drop_part(i);
    }
    // Judged and logged while the broker is away: they wait in the outbox.
    until("three more parts judged", || station.logged().len() == 6).await;
    broker.restart();
    let (after, _) = sub.results(&station.topic("result"), 3).await;
    let arrived: Vec<&Value> = before.iter().chain(&after).map(|r| &r["id"]).collect();
    let logged: Vec<Value> = station.logged().into_iter().map(|r| r["id"].clone()).collect();
    assert_eq!(arrived, logged.iter().collect::<Vec<_>>(), "every result, in order");
    daemon.signal("TERM");
    let (code, _) = daemon.exit().await;
    assert_eq!(code, Some(0), "{}", daemon.log());
}

/// A daemon killed with `kill -9` while the broker is away sends, once restarted, what it had
/// not delivered, with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_kill_9() {
    let station = Station::new(303);
    let port = free_port();
    let config = station.config(Some(port), "");
    let mut daemon = Daemon::start(&station, &config, &[]);
    for i in 0..3 {
        station.drop_part(i);
    }
    until("three parts judged with no broker", || station.logged().len() == 3).await;
    // No broker is no crash loop: a clear warning, and the parts are judged all the same.
    let warning = format!("mqtt: cannot connect: nothing listens at 127.0.0.1:{port}");
    until("a clear warning about the broker", || daemon.log().contains(&warning)).await;
    daemon.signal("KILL");
    assert_eq!(daemon.exit().await.0, None, "killed by the signal");

    let broker = Broker::start_with(station.root.path(), port, "allow_anonymous true\n", &[]);
    let mut sub = Subscriber::connect(broker.port, &station.topic("result"), ClientOptions::default()).await;
    let mut daemon = Daemon::start(&station, &config, &[]);
    let (arrived, _) = sub.results(&station.topic("result"), 3).await;
    let logged: Vec<Value> = station.logged().into_iter().map(|l| l["id"].clone()).collect();
    assert_eq!(arrived.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(), logged);
    daemon.signal("TERM");
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
}

/// With `trigger = "command"`, each `cmd/inspect` judges one part, with its claim checked and
/// its reference echoed; a malformed command raises a `bad_command` event and changes nothing.
/// SIGTERM stops the daemon cleanly, with the retained `offline` status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_trigger_inspections_and_bad_ones_are_events() {
    let station = Station::new(304);
    let broker = Broker::start(station.root.path());
    let mut sub = Subscriber::connect(broker.port, &station.topic("#"), ClientOptions::default()).await;
    let config = station.config(Some(broker.port), "");
    let mut cmd = amfp_process(&config);
    cmd.env("AMFP__DAEMON__TRIGGER", "command");
    let mut daemon = Daemon::start_with(&station, cmd, &[]);
    sub.status(&station.topic("status"), "online").await;
    let first = station.drop_part(0);
    let second = station.drop_part(1);

    sub.publish(&station.topic("cmd/inspect"), br#"{"claim": "L1-1", "ref": "PO-17"}"#, false).await;
    let r = sub.next_on(&station.topic("result")).await.json();
    assert_eq!(r["ref"], "PO-17");
    assert_eq!(r["claim"]["label"], "L1-1");
    assert!(r["claim"]["status"].is_string());
    assert_eq!(station.logged().len(), 1, "one command, one part");

    sub.publish(&station.topic("cmd/inspect"), br#"{"claim": 5, "extra": true}"#, false).await;
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!(e["kind"], "bad_command", "{e}");

    // A claim of a machine amfp does not know is refused, with the reason; nothing is judged.
    sub.publish(&station.topic("cmd/inspect"), br#"{"claim": "L1-9", "ref": "PO-18"}"#, false).await;
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!((e["kind"].as_str(), e["ref"].as_str()), (Some("command_refused"), Some("PO-18")), "{e}");
    assert!(e["reason"].as_str().unwrap().contains("\"L1-9\" is not known"), "{e}");

    sub.publish(&station.topic("cmd/inspect"), b"", false).await;
    let r2 = sub.next_on(&station.topic("result")).await.json();
    assert!(r2.get("ref").is_none() && r2.get("claim").is_none(), "{r2}");
    let judged: Vec<String> = [&r, &r2].iter().map(|r| r["source"]["name"].as_str().unwrap().to_string()).collect();
    let mut want = vec![first.display().to_string(), second.display().to_string()];
    want.sort();
    let mut got = judged.clone();
    got.sort();
    assert_eq!(got, want);

    daemon.signal("TERM");
    let offline = sub.status(&station.topic("status"), "offline").await;
    assert_eq!(offline["reason"], "shutdown", "{offline}");
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
}

/// systemd sees READY once the model and source are up, WATCHDOG pings while the daemon idles,
/// STATUS lines as parts are judged, and STOPPING on SIGTERM; the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_gets_ready_status_watchdog_and_stopping() {
    let station = Station::new(305);
    let socket_path = station.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let config = station.config(None, "");
    // systemd names the watched process in WATCHDOG_PID; `exec` keeps the shell's pid.
    let mut cmd = std::process::Command::new("sh");
    isolate(&mut cmd, &config);
    cmd.args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\"", AMFP_BIN]);
    cmd.env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "200000");
    let mut daemon = Daemon::start_with(&station, cmd, &[]);
    let next = || {
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no notification: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.contains("READY=1") && ready.contains("STATUS=ready"), "{ready}");
    // Idle: pings keep coming.
    for _ in 0..3 {
        assert_eq!(next().trim_end(), "WATCHDOG=1");
    }
    station.drop_part(0);
    let mut seen = Vec::new();
    loop {
        let m = next();
        if m.starts_with("STATUS=1 parts judged") {
            break;
        }
        seen.push(m);
        assert!(seen.len() < 1000, "no status after a part: {seen:?}");
    }
    daemon.signal("TERM");
    loop {
        let m = next();
        if m.contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
}

/// Evidence images show the ROIs that voted; an unreadable image goes to failed/ with the
/// reason, and the daemon goes on; a restart does not judge again what is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_failed_files_and_restarts() {
    let station = Station::new(306);
    let config = station.config(None, "evidence = true\n");
    std::fs::write(station.path("incoming/broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    station.drop_part(0);
    let mut daemon = Daemon::start(&station, &config, &["--parts", "1"]);
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
    assert_eq!(station.files_in("failed"), ["broken.png", "broken.png.error.txt"]);
    let why = std::fs::read_to_string(station.path("incoming/failed/broken.png.error.txt")).unwrap();
    assert!(why.contains("PNG") || why.contains("decode") || why.contains("image"), "{why}");
    let logged = station.logged();
    assert_eq!(logged.len(), 1);
    let evidence = logged[0]["evidence"].as_str().unwrap();
    assert_eq!(evidence, format!("evidence/{}.jpg", logged[0]["id"].as_str().unwrap()));
    let img = image::open(station.path("state").join(evidence)).unwrap().into_rgb8();
    let frame = image::open(
        station
            .path("incoming/done")
            .join(Path::new(logged[0]["source"]["name"].as_str().unwrap()).file_name().unwrap()),
    )
    .unwrap();
    assert_eq!(img.dimensions(), (frame.width(), frame.height()));
    let outlined = img.pixels().filter(|p| p.0[1] > 180 && p.0[0] < 100 && p.0[2] < 120).count();
    let used = logged[0]["rois"]["used"].as_u64().unwrap() as usize;
    assert!(outlined > used * 100, "ROI outlines drawn: {outlined} green pixels for {used} ROIs");

    // A restart with the done image still in done/ judges only the new part.
    station.drop_part(1);
    let mut daemon = Daemon::start(&station, &config, &["--parts", "1"]);
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
    assert_eq!(station.logged().len(), 2);
    assert_eq!(station.files_in("done").len(), 2);
}

/// `amfp run --source SOURCE --parts PARTS` from the repository with no configuration and
/// `env` set, as the README runs it: the Attributions it printed.
fn run_from_checkout(source: &str, parts: u32, env: &[(&str, &str)]) -> Vec<Value> {
    let root = tempfile::tempdir().unwrap();
    let out = amfp_process(&common::repo("tests/data/empty.toml"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--source", source, "--parts", &parts.to_string()])
        .env("AMFP__DAEMON__STATE_DIR", root.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), parts as usize);
    lines
}

/// The README's demo: the simulator as source, attributions on stdout, no camera or broker.
#[test]
fn the_demo_runs_on_the_simulator() {
    let lines = run_from_checkout("synth", 3, &[]);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["source"]["kind"], "synth");
        assert_eq!(l["source"]["frame"], json!(i + 1));
        assert!(["identified", "unknown"].contains(&l["verdict"].as_str().unwrap()), "{l}");
    }
}

/// A line station: the `continuous` trigger on a simulated conveyor judges each part once, while
/// it rests under the camera, never the empty stage or a moving part.
#[test]
fn a_line_station_judges_each_part_once_at_rest() {
    use amfp::capture::conveyor::{EMPTY_FRAMES, MOVE_FRAMES, REST_FRAMES};
    let lines = run_from_checkout("conveyor", 3, &[("AMFP__SOURCE__CONVEYOR_FPS", "60")]);
    let period = u64::from(EMPTY_FRAMES + 2 * MOVE_FRAMES + REST_FRAMES);
    let rest = u64::from(EMPTY_FRAMES + MOVE_FRAMES)..u64::from(EMPTY_FRAMES + MOVE_FRAMES + REST_FRAMES);
    let mut passages = Vec::new();
    for l in &lines {
        assert_eq!(l["source"]["kind"], "conveyor");
        let frame = l["source"]["frame"].as_u64().unwrap();
        assert!(rest.contains(&((frame - 1) % period)), "frame {frame} is not one of a part at rest: {l}");
        assert_ne!(l["verdict"], "rejected", "{l}");
        passages.push((frame - 1) / period);
    }
    assert_eq!(passages, [0, 1, 2], "one judgement per part, in order");
}

/// A configuration that cannot work is a clear error at start, with the exit status that tells
/// systemd not to retry (2), never a crash loop; a missing model exits 1 naming the file.
#[test]
fn bad_configuration_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str, args: &[&str]| {
        let path = dir.path().join("amfp.toml");
        std::fs::write(&path, config).unwrap();
        let out = amfp_process(&path).current_dir(env!("CARGO_MANIFEST_DIR")).arg("run").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("[daemon]\ntriger = \"each\"\n", &["--source", "synth", "--parts", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("daemon") && err.contains("triger") && err.contains("trigger"), "{err}");
    let (code, err) =
        run("[mqtt]\nenabled = true\nhost = \"mqtt://broker:1883\"\n", &["--source", "synth", "--parts", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("mqtt.host"), "{err}");
    let (code, err) = run("", &["--source", "directory", "--parts", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("source.dir"), "{err}");
    let (code, err) = run("", &["--source", "synth", "--trigger", "continuous", "--parts", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("continuous"), "{err}");
    let (code, err) = run("", &["--source", "synth", "--model", "/nonexistent/model.onnx", "--parts", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/model.onnx"), "{err}");
    let (code, err) = run("[daemon]\nexpect = \"NO-SUCH-MACHINE\"\n", &["--source", "synth", "--parts", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("NO-SUCH-MACHINE") && err.contains("S450-1"), "{err}");
}

/// A machine enrolled while the daemon runs is used from the next part on: the daemon sees the
/// gallery file change (and reloads on SIGHUP too), says so in an event, and results name the
/// new version; a damaged file is reported and the daemon keeps judging with the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_gallery_version_is_picked_up_without_a_restart() {
    let station = Station::new(307);
    let broker = Broker::start(station.root.path());
    let mut sub = Subscriber::connect(broker.port, &station.topic("#"), ClientOptions::default()).await;
    let gallery = station.path("gallery.json");
    std::fs::copy(repo(INT8_GALLERY), &gallery).unwrap();
    let config = station.config(Some(broker.port), &format!("[model]\ngallery = \"{}\"\n", gallery.display()));
    let mut daemon = Daemon::start(&station, &config, &[]);
    sub.status(&station.topic("status"), "online").await;

    let unit = simulate(&station.path("unit"), &["5200-3".to_string()], 10, 307_001);
    let mut enroll = amfp();
    enroll.args(["enroll", "--label", "5200-3", "--process", "MJF", "--model"]).arg(repo(INT8_MODEL));
    enroll.arg("--gallery").arg(&gallery);
    enroll.args(unit.iter().map(|p| &p.file)).assert().success();
    // The event, and the retained online status published again with the new version.
    let (mut event, mut status) = (None, None);
    while event.is_none() || status.is_none() {
        let m = sub.next().await;
        if m.topic == station.topic("event") {
            event = Some(m.json());
        } else if m.topic == station.topic("status") && m.json()["model"]["gallery"]["version"] == 2 {
            status = Some(m.json());
        }
    }
    let (e, status) = (event.unwrap(), status.unwrap());
    assert_eq!((e["kind"].as_str(), e["version"].as_u64()), (Some("gallery_reloaded"), Some(2)), "{e}");
    assert_eq!(e["machines"], 22);
    assert_eq!((status["state"].as_str(), status["model"]["gallery"]["machines"].as_u64()), (Some("online"), Some(22)));
    assert_eq!(status["model"]["name"], "amfp-synth-v3-int8", "the rest of the status stays: {status}");

    daemon.signal("HUP");
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!((e["kind"].as_str(), e["trigger"].as_str()), (Some("gallery_reloaded"), Some("SIGHUP")), "{e}");

    std::fs::write(&gallery, b"{ damaged").unwrap();
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!(e["kind"], "gallery_reload_failed", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("not JSON"), "{e}");
    station.drop_part(0);
    let r = sub.next_on(&station.topic("result")).await.json();
    assert_eq!(r["gallery"]["version"], 2, "judged with the last good gallery: {r}");

    daemon.signal("TERM");
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
}

/// Drift monitoring end to end: with a gallery whose reference says L1-1's parts lie far nearer
/// than they do (as if L1-1 had changed since it was fitted), L1-1's second part raises one
/// `drift` event over MQTT and the alarm in its result and the results log; the state is on
/// disk, and `amfp drift report` reads it back (exit 3: an alarm stands) and draws it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_machine_raises_a_drift_event_and_the_report_shows_it() {
    let station = Station::new(311);
    let broker = Broker::start(station.root.path());
    let mut sub = Subscriber::connect(broker.port, &station.topic("#"), ClientOptions::default()).await;
    let mut g: Value = serde_json::from_str(&std::fs::read_to_string(repo(INT8_GALLERY)).unwrap()).unwrap();
    for m in g["machines"].as_array_mut().unwrap() {
        if m["label"] == "L1-1" {
            // Its parts' distances are 10-100 (ln d 2.3-4.6); a reference of ln d = 0 ± 0.3 puts
            // each part at z > 7.
            m["drift"] = json!({"parts": 56, "mean_log": 0.0, "sd_log": 0.3});
        }
    }
    let gallery = station.path("gallery.json");
    std::fs::write(&gallery, serde_json::to_vec(&g).unwrap()).unwrap();
    let extra = format!("[model]\ngallery = \"{}\"\n[drift]\nthreshold = 5.0\n", gallery.display());
    let config = station.config(Some(broker.port), &extra);
    let mut daemon = Daemon::start(&station, &config, &[]);
    sub.status(&station.topic("status"), "online").await;

    let l1: Vec<usize> = (0..station.parts.len()).filter(|&i| station.parts[i].machine == "L1-1").collect();
    assert_eq!(l1.len(), 2);
    station.drop_part(l1[0]);
    let r = sub.next_on(&station.topic("result")).await.json();
    assert_eq!((r["drift"]["machine"].as_str(), r["drift"]["parts"].as_u64()), (Some("L1-1"), Some(1)), "{r}");
    assert_eq!(r["drift"]["alarm"], false, "{r}");
    assert!(r["drift"]["z"].as_f64().unwrap() > 4.0, "{r}");
    station.drop_part(l1[1]);
    // The event is sent as the part is judged, the result after the sinks: either may come first.
    let (mut result, mut event) = (None, None);
    while result.is_none() || event.is_none() {
        let m = sub.next().await;
        if m.topic == station.topic("result") {
            result = Some(m.json());
        } else if m.topic == station.topic("event") && m.json()["kind"] == "drift" {
            assert!(event.is_none(), "a second drift event: {}", m.json());
            event = Some(m.json());
        }
    }
    let (r, e) = (result.unwrap(), event.unwrap());
    assert_eq!(r["drift"]["alarm"], true, "{r}");
    let raised = &r["drift"]["raised"];
    assert_eq!((raised["part"].as_u64(), raised["result_id"].as_str()), (Some(2), r["id"].as_str()), "{r}");
    assert_eq!(
        (e["machine"].as_str(), e["parts"].as_u64(), e["threshold"].as_f64()),
        (Some("L1-1"), Some(2), Some(5.0))
    );
    assert_eq!(station.logged().last().unwrap()["drift"], r["drift"]);
    daemon.signal("TERM");
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());

    let png = station.path("drift.png");
    let out = amfp()
        .arg("drift")
        .arg("report")
        .arg("--state-dir")
        .arg(station.path("state"))
        .arg("--png")
        .arg(&png)
        .assert()
        .code(3)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.lines().any(|l| l.starts_with("L1-1") && l.contains("ALARM since part 2")), "{text}");
    assert!(image::open(&png).is_ok());
}

/// Enrollment at the station: `cmd/enroll` takes the next parts the daemon judges (here, files
/// dropped into its directory), writes the gallery's next version and judges with it from the
/// next part on, without a restart; the enrollment's parts raise no `odd_part` alarm. A
/// request that does not fit the gallery is refused with the reason, and a cancelled
/// enrollment writes nothing. `amfp enroll --from-source` takes parts from the same source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_is_enrolled_at_the_station_over_mqtt() {
    let station = Station::new(312);
    let broker = Broker::start(station.root.path());
    let mut sub = Subscriber::connect(broker.port, &station.topic("#"), ClientOptions::default()).await;
    let gallery = station.path("gallery.json");
    std::fs::copy(repo(INT8_GALLERY), &gallery).unwrap();
    let extra = format!("[model]\ngallery = \"{}\"\n[enroll]\ncommands = true\n", gallery.display());
    let config = station.config(Some(broker.port), &extra);
    let mut daemon = Daemon::start(&station, &config, &[]);
    sub.status(&station.topic("status"), "online").await;
    let enroll = station.topic("cmd/enroll");
    let unit = simulate(&station.path("unit"), &["M2-7".to_string()], 14, 312_001);
    let drop_unit = |i: usize| {
        std::fs::rename(&unit[i].file, station.path("incoming").join(unit[i].file.file_name().unwrap())).unwrap()
    };

    // A machine the gallery has is refused, with the way to re-enroll it.
    sub.publish(&enroll, br#"{"label": "L1-1", "ref": "T-0"}"#, false).await;
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!((e["kind"].as_str(), e["ref"].as_str()), (Some("command_refused"), Some("T-0")), "{e}");
    assert!(e["reason"].as_str().unwrap().contains("already has machine \"L1-1\""), "{e}");
    // Started, then cancelled: nothing is written.
    sub.publish(&enroll, br#"{"label": "X-1", "parts": 3}"#, false).await;
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!(
        (e["kind"].as_str(), e["state"].as_str(), e["of"].as_u64()),
        (Some("enrollment"), Some("started"), Some(3))
    );
    sub.publish(&enroll, br#"{"cancel": true, "ref": "T-1"}"#, false).await;
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!(
        (e["state"].as_str(), e["label"].as_str(), e["ref"].as_str()),
        (Some("cancelled"), Some("X-1"), Some("T-1"))
    );

    sub.publish(
        &enroll,
        br#"{"label": "M2-7", "process": "DLS", "parts": 10, "why": "new supplier", "ref": "T-2"}"#,
        false,
    )
    .await;
    let e = sub.next_on(&station.topic("event")).await.json();
    assert_eq!((e["state"].as_str(), e["gallery"]["version"].as_u64()), (Some("started"), Some(1)), "{e}");
    for i in 0..10 {
        drop_unit(i);
    }
    // Ten results marked as enrollment parts, six `part` events, `done`, the new gallery; no alarm.
    let (mut results, mut parts, mut done, mut reloaded) = (Vec::new(), 0, None, None);
    while results.len() < 10 || done.is_none() || reloaded.is_none() {
        let m = sub.next().await;
        if m.topic == station.topic("result") {
            results.push(m.json());
        } else if m.topic == station.topic("event") {
            let e = m.json();
            match (e["kind"].as_str().unwrap(), e["state"].as_str()) {
                ("enrollment", Some("part")) => parts += 1,
                ("enrollment", Some("done")) => done = Some(e),
                ("gallery_reloaded", _) => reloaded = Some(e),
                _ => panic!("unexpected event during the enrollment: {e}"),
            }
        }
    }
    assert_eq!(parts, 10);
    for r in &results {
        let note = &r["enrollment"];
        assert_eq!(
            (note["label"].as_str(), note["taken"].as_bool(), note["of"].as_u64()),
            (Some("M2-7"), Some(true), Some(10))
        );
        assert_eq!(r["gallery"]["version"], 1, "judged with the gallery of before: {r}");
        assert!(r["embedding"].is_null(), "the embedding is not published: {r}");
    }
    let (done, reloaded) = (done.unwrap(), reloaded.unwrap());
    assert_eq!(
        (done["version"].as_u64(), done["parts"].as_u64(), done["ref"].as_str()),
        (Some(2), Some(10), Some("T-2")),
        "{done}"
    );
    assert_eq!(
        (reloaded["version"].as_u64(), reloaded["trigger"].as_str()),
        (Some(2), Some("enrollment")),
        "{reloaded}"
    );
    let written: Value = serde_json::from_slice(&std::fs::read(&gallery).unwrap()).unwrap();
    let last = written["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["action"].as_str(), last["why"].as_str()), (Some("enroll"), Some("new supplier")), "{last}");
    assert_eq!(last["by"], format!("station {}", station.device));

    // The next part of the machine is judged with the new version and named.
    drop_unit(10);
    let r = sub.next_on(&station.topic("result")).await.json();
    assert_eq!((r["gallery"]["version"].as_u64(), r["label"].as_str()), (Some(2), Some("M2-7")), "{r}");
    assert!(r.get("enrollment").is_none(), "{r}");
    daemon.signal("TERM");
    assert_eq!(daemon.exit().await.0, Some(0), "{}", daemon.log());
    // The file watch sees the new file too, but announces nothing: it is the gallery in use.
    assert_eq!(daemon.log().matches(" reloaded (").count(), 1, "{}", daemon.log());

    // The command line takes parts from the configured source too (here the same directory).
    for i in 11..14 {
        drop_unit(i);
    }
    let out = amfp_process(&config)
        .args(["enroll", "--label", "M2-7", "--reenroll", "--why", "nozzle replaced", "--from-source", "3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["action"].as_str(), v["parts"].as_u64()),
        (Some(3), Some("reenroll"), Some(3)),
        "{v}"
    );
    assert_eq!(station.files_in("done").len(), 14, "each part moved into done/ once judged");
}
