//! Test harness for `tests/mqtt.rs`: a real mosquitto broker per test on its own loopback port,
//! a subscribing rumqttc client, test certificates, and Attributions to publish.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amfp::config::MqttSettings;
use amfp::result::Attribution;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long any wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The mosquitto binary: on PATH, or where Debian installs it.
fn mosquitto_bin() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let candidate = Path::new(dir).join("mosquitto");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("mosquitto is not installed: `apt-get install mosquitto mosquitto-clients` (.ci/test does)");
}

/// A free loopback TCP port (bound and released, so a broker can take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A mosquitto broker run by a test, stopped when dropped.
pub struct Broker {
    child: Option<Child>,
    /// The plain listener's port.
    pub port: u16,
    /// Extra listeners' ports, in the order given to [`Broker::start_with`].
    pub extra_ports: Vec<u16>,
    dir: PathBuf,
    conf: PathBuf,
}

impl Broker {
    /// A broker with one anonymous plain listener and persistence (sessions and retained
    /// messages survive a restart), in `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, free_port(), "allow_anonymous true\n", &[])
    }

    /// A broker on `port` with `settings` (global options) and extra listeners, each given as
    /// the lines that follow its `listener PORT 127.0.0.1` line.
    pub fn start_with(dir: &Path, port: u16, settings: &str, listeners: &[&str]) -> Self {
        let dir = dir.join("broker");
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf_text = format!(
            "per_listener_settings false\n{settings}persistence true\npersistence_location {}/\n\
             log_dest file {}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n\
             log_type information\nuser root\nlistener {port} 127.0.0.1\n",
            dir.display(),
            dir.display()
        );
        let mut extra_ports = Vec::new();
        for lines in listeners {
            let p = free_port();
            extra_ports.push(p);
            conf_text.push_str(&format!("listener {p} 127.0.0.1\n{lines}\n"));
        }
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, conf_text).unwrap();
        let mut broker = Self { child: None, port, extra_ports, dir, conf };
        broker.run();
        broker
    }

    /// Starts the broker process and waits until every listener accepts connections.
    fn run(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        for port in std::iter::once(self.port).chain(self.extra_ports.clone()) {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("mosquitto exited ({status}) at start:\n{}", self.log());
                }
                assert!(Instant::now() < deadline, "mosquitto did not listen on {port}:\n{}", self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops the broker as `systemctl stop` would (SIGTERM: it saves its persistent state).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + PATIENCE;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the stopped broker again on the same ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.run();
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publisher settings for a broker on `port`, with the outbox in `dir` and quick reconnects.
/// Also routes the publisher's log to the test output (`RUST_LOG=amfp=debug` for more).
pub fn settings(port: u16, dir: &Path) -> MqttSettings {
    let _ = env_logger::builder().is_test(true).parse_filters("amfp=info").parse_default_env().try_init();
    MqttSettings {
        enabled: true,
        host: "127.0.0.1".into(),
        port,
        outbox_dir: dir.join("outbox"),
        reconnect_max_s: 1,
        shutdown_grace_s: 5,
        ..MqttSettings::default()
    }
}

/// A message seen by the subscriber.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    /// The payload as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.payload)))
    }
}

/// A test client subscribed to topics, collecting what arrives; it reconnects by itself.
pub struct Subscriber {
    pub client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
    /// Result ids returned by [`Subscriber::results`] so far: a persistent session may be sent
    /// them again after a broker restart (at least once), which is not a new result.
    results_seen: std::collections::HashSet<String>,
}

/// How the test client connects.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Fixed client id and a persistent session (survives broker restarts with persistence).
    pub persistent_id: Option<String>,
    /// User name and password.
    pub login: Option<(String, String)>,
}

impl Subscriber {
    /// Connects to the broker's plain listener on `port`, subscribes to `filter` (QoS 1) and
    /// returns once the broker has granted the subscription.
    pub async fn connect(port: u16, filter: &str, how: ClientOptions) -> Self {
        let id = how.persistent_id.clone().unwrap_or_else(|| format!("test-{}", rand_suffix()));
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(how.persistent_id.is_none());
        if let Some((user, password)) = &how.login {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Message { topic: p.topic, payload: p.payload.to_vec(), retain: p.retain });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(_) => {}
                    // The broker is away (a test stopped it): try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(PATIENCE, subscribed.recv()).await.expect("no SUBACK").unwrap();
        Self { client, messages, task, results_seen: Default::default() }
    }

    /// The next message, failing the test after [`PATIENCE`].
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(PATIENCE, self.messages.recv())
            .await
            .expect("no message in time")
            .expect("subscriber ended")
    }

    /// The next message on `topic`, skipping others.
    pub async fn next_on(&mut self, topic: &str) -> Message {
        loop {
            let m = self.next().await;
            if m.topic == topic {
                return m;
            }
        }
    }

    /// The next status message with this `state`, skipping others.
    pub async fn status(&mut self, topic: &str, state: &str) -> Value {
        loop {
            let v = self.next_on(topic).await.json();
            if v["state"] == state {
                return v;
            }
        }
    }

    /// Results on `topic` until `n` ids not returned before (by this or an earlier call) have
    /// arrived; returns them in order of first arrival, and how many duplicates came along
    /// (at-least-once allows them: a broker restart may resend what a persistent session had).
    pub async fn results(&mut self, topic: &str, n: usize) -> (Vec<Value>, usize) {
        let mut seen = Vec::<Value>::new();
        let mut duplicates = 0;
        while seen.len() < n {
            let v = self.next_on(topic).await.json();
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if self.results_seen.insert(id) {
                seen.push(v);
            } else {
                duplicates += 1;
            }
        }
        (seen, duplicates)
    }

    /// Publishes as this client (e.g. a command), QoS 1.
    pub async fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload.to_vec()).await.unwrap();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A short random suffix for client ids.
fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A plausible Attribution numbered `i`, with a unique id.
pub fn attribution(i: usize) -> Attribution {
    serde_json::from_value(json!({
        "id": format!("01TEST{i:020}"),
        "device": "dev",
        "time": "2026-11-21T12:00:00Z",
        "source": {"kind": "file", "name": format!("part-{i}.png")},
        "model": {"name": "amfp-synth-v3", "task": "machine", "sha256": "00"},
        "verdict": "identified",
        "label": "DLS-3", "process": "DLS", "score": 0.97, "margin": 0.81,
        "top": [{"label": "DLS-3", "score": 0.97}],
        "timing_ms": {"capture": 1.0, "preprocess": 2.0, "inference": 3.0, "total": 6.0}
    }))
    .unwrap()
}

/// Test certificates: a CA, a server certificate for `localhost` and 127.0.0.1, and a client
/// certificate, all as PEM files in a directory.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes a fresh CA and its certificates in `dir`.
    pub fn generate(dir: &Path, name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("amfp test CA {name}"));
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_cert, client_key) = leaf(vec!["dev".into()], "dev");
        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }
}

/// A mosquitto password file with one user, made by `mosquitto_passwd`.
pub fn password_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&path)
        .args([user, password])
        .stdout(Stdio::null())
        .status()
        .expect("mosquitto_passwd is missing: `apt-get install mosquitto`");
    assert!(status.success());
    path
}
