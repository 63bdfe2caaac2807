//! The MQTT publisher against a real mosquitto broker, one per test on its own loopback port
//! (`mqtt_support`): delivery in order, status and last will, broker restarts, crashes with
//! results in the outbox, a full outbox, TLS with credentials, commands.

mod mqtt_support;

use std::time::Duration;

use amfp::publish::outbox::OutboxError;
use amfp::publish::{Command, ConnectionState, EnrollCommand, MqttPublisher, PublishError};
use mqtt_support::{Broker, ClientOptions, PATIENCE, Pki, Subscriber, attribution, free_port, password_file, settings};
use serde_json::json;

const STATUS: &str = "amfp/dev/status";
const RESULT: &str = "amfp/dev/result";
const EVENT: &str = "amfp/dev/event";
const INSPECT: &str = "amfp/dev/cmd/inspect";
const ENROLL: &str = "amfp/dev/cmd/enroll";

/// The fields the daemon puts in its `online` status.
fn status_fields() -> serde_json::Value {
    json!({"model": "amfp-synth-v3", "camera": {"kind": "file"}})
}

/// Waits until the outbox holds `n` results.
async fn outbox_holds(mqtt: &MqttPublisher, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while mqtt.outbox_stats().entries != n {
        assert!(tokio::time::Instant::now() < deadline, "outbox holds {:?}, not {n}", mqtt.outbox_stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the connection reaches a state that `pred` accepts.
async fn connection_becomes(mqtt: &MqttPublisher, pred: impl Fn(&ConnectionState) -> bool) {
    let mut state = mqtt.connection();
    tokio::time::timeout(PATIENCE, state.wait_for(|s| pred(s)))
        .await
        .expect("connection state not reached in time")
        .unwrap();
}

/// Runs `f` on a runtime of its own, then drops the runtime: every task and socket of what
/// `f` started ends at once, without a goodbye, as with kill -9.
fn in_runtime_then_crash<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(f);
    drop(rt);
    out
}

#[tokio::test]
async fn results_arrive_in_order_with_status_online_then_offline() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let mut sub = Subscriber::connect(broker.port, "amfp/dev/#", ClientOptions::default()).await;
    let (mqtt, _commands) =
        MqttPublisher::start(&settings(broker.port, dir.path()), "dev", status_fields()).await.unwrap();
    mqtt.wait_connected(PATIENCE).await.unwrap();

    let online = sub.status(STATUS, "online").await;
    assert_eq!(online["model"], "amfp-synth-v3");
    assert_eq!(online["device"], "dev");
    assert_eq!(online["camera"]["kind"], "file");
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));

    let sent: Vec<_> = (0..25).map(attribution).collect();
    for a in &sent {
        mqtt.publish_result(a).await.unwrap();
    }
    let (got, duplicates) = sub.results(RESULT, sent.len()).await;
    assert_eq!(duplicates, 0);
    for (a, v) in sent.iter().zip(&got) {
        assert_eq!(v, &serde_json::to_value(a).unwrap());
    }
    outbox_holds(&mqtt, 0).await;

    mqtt.publish_event("camera_lost", json!({"reason": "unplugged"})).unwrap();
    let event = sub.next_on(EVENT).await.json();
    assert_eq!((event["kind"].as_str(), event["reason"].as_str()), (Some("camera_lost"), Some("unplugged")));

    let report = mqtt.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean, "{report:?}");
    assert_eq!(report.outbox_entries, 0);
    assert_eq!(sub.status(STATUS, "offline").await["reason"], "shutdown");
    assert!(matches!(mqtt.publish_result(&attribution(99)).await, Err(PublishError::Closed)));

    // The status is retained: whoever subscribes later learns the device is offline.
    let mut late = Subscriber::connect(broker.port, STATUS, ClientOptions::default()).await;
    let retained = late.next().await;
    assert!(retained.retain);
    assert_eq!(retained.json()["state"], "offline");
}

#[test]
fn last_will_says_offline_when_the_publisher_dies() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sub = rt.block_on(Subscriber::connect(broker.port, STATUS, ClientOptions::default()));
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let (mqtt, _commands) =
        doomed.block_on(MqttPublisher::start(&settings(broker.port, dir.path()), "dev", status_fields())).unwrap();
    rt.block_on(sub.status(STATUS, "online"));
    // kill -9: the publisher's tasks and sockets end at once, without a goodbye.
    drop(doomed);
    drop(mqtt);
    let will = rt.block_on(sub.status(STATUS, "offline"));
    assert_eq!(will["reason"], "lost");
}

#[tokio::test]
async fn broker_restart_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let persistent = ClientOptions { persistent_id: Some("fleet-manager".into()), ..ClientOptions::default() };
    let mut sub = Subscriber::connect(broker.port, RESULT, persistent).await;
    let (mqtt, _commands) =
        MqttPublisher::start(&settings(broker.port, dir.path()), "dev", status_fields()).await.unwrap();
    mqtt.wait_connected(PATIENCE).await.unwrap();

    let sent: Vec<_> = (0..20).map(attribution).collect();
    for a in &sent[..10] {
        mqtt.publish_result(a).await.unwrap();
    }
    let (first, _) = sub.results(RESULT, 10).await;
    outbox_holds(&mqtt, 0).await;

    broker.stop();
    connection_becomes(&mqtt, |s| matches!(s, ConnectionState::Disconnected { .. })).await;
    for a in &sent[10..] {
        mqtt.publish_result(a).await.unwrap();
    }
    assert_eq!(mqtt.outbox_stats().entries, 10, "results wait in the outbox while the broker is away");
    broker.restart();

    let (rest, _duplicates) = sub.results(RESULT, 10).await;
    let ids: Vec<_> = first.iter().chain(&rest).map(|v| v["id"].as_str().unwrap().to_string()).collect();
    let expected: Vec<_> = sent.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids, expected);
    outbox_holds(&mqtt, 0).await;
    assert!(mqtt.shutdown(Duration::from_secs(5)).await.clean);
}

#[test]
fn killed_while_the_broker_is_down_then_restarted_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sent: Vec<_> = (0..12).map(attribution).collect();

    // No broker yet: every result goes to the outbox, then the process dies.
    in_runtime_then_crash(async {
        let (mqtt, _commands) =
            MqttPublisher::start(&settings(port, dir.path()), "dev", status_fields()).await.unwrap();
        for a in &sent {
            mqtt.publish_result(a).await.unwrap();
        }
        assert_eq!(mqtt.outbox_stats().entries, 12);
        let e = mqtt.wait_connected(Duration::from_millis(300)).await.unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
    });

    let broker = Broker::start_with(dir.path(), port, "allow_anonymous true\n", &[]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut sub = Subscriber::connect(broker.port, RESULT, ClientOptions::default()).await;
        let (mqtt, _commands) =
            MqttPublisher::start(&settings(port, dir.path()), "dev", status_fields()).await.unwrap();
        let (got, _) = sub.results(RESULT, sent.len()).await;
        for (a, v) in sent.iter().zip(&got) {
            assert_eq!(v, &serde_json::to_value(a).unwrap());
        }
        outbox_holds(&mqtt, 0).await;
        assert!(mqtt.shutdown(Duration::from_secs(5)).await.clean);
    });
}

#[tokio::test]
async fn a_full_outbox_refuses_new_results_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    // A persistent subscriber, so that it gets what is published while it reconnects.
    let persistent = ClientOptions { persistent_id: Some("fleet".into()), ..ClientOptions::default() };
    let mut sub = Subscriber::connect(broker.port, "amfp/dev/+", persistent).await;
    broker.stop();

    let s = amfp::config::MqttSettings { outbox_max_entries: 3, ..settings(broker.port, dir.path()) };
    let (mqtt, _commands) = MqttPublisher::start(&s, "dev", status_fields()).await.unwrap();
    for i in 0..3 {
        mqtt.publish_result(&attribution(i)).await.unwrap();
    }
    let e = mqtt.publish_result(&attribution(3)).await.unwrap_err();
    assert!(matches!(e, PublishError::Outbox(OutboxError::Full { entries: 3, .. })), "{e}");
    assert!(matches!(mqtt.publish_result(&attribution(4)).await, Err(PublishError::Outbox(OutboxError::Full { .. }))));
    let stats = mqtt.outbox_stats();
    assert!(stats.full);
    assert_eq!((stats.entries, stats.refused), (3, 2));

    broker.restart();
    let event = sub.next_on(EVENT).await.json();
    assert_eq!(event["kind"], "outbox_full");
    assert_eq!(event["refused_id"], attribution(3).id);
    let (got, _) = sub.results(RESULT, 3).await;
    let ids: Vec<_> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [attribution(0).id, attribution(1).id, attribution(2).id]);
    outbox_holds(&mqtt, 0).await;
    assert!(!mqtt.outbox_stats().full);
    mqtt.publish_result(&attribution(5)).await.unwrap();
    assert_eq!(sub.next_on(RESULT).await.json()["id"], attribution(5).id);
}

#[tokio::test]
async fn tls_with_credentials_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "good");
    let other = Pki::generate(dir.path(), "other");
    let passwd = password_file(dir.path(), "dock", "right horse");
    let tls = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let broker = Broker::start_with(
        dir.path(),
        free_port(),
        &format!("allow_anonymous false\npassword_file {}\n", passwd.display()),
        &[&tls, &format!("{tls}require_certificate true\n")],
    );
    let (tls_port, mtls_port) = (broker.extra_ports[0], broker.extra_ports[1]);
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // Each publisher gets its own outbox: a directory is locked by the publisher that has it.
    let good = |outbox: &str| amfp::config::MqttSettings {
        host: "localhost".into(),
        ca_file: Some(pki.ca.clone()),
        username: Some("dock".into()),
        password_file: Some(secret("pw", "right horse\n")),
        outbox_dir: dir.path().join(outbox),
        ..settings(tls_port, dir.path())
    };

    // The right CA and password: results flow (the subscriber uses the plain listener).
    let login = ClientOptions { login: Some(("dock".into(), "right horse".into())), ..ClientOptions::default() };
    let mut sub = Subscriber::connect(broker.port, RESULT, login).await;
    let (mqtt, _commands) = MqttPublisher::start(&good("ok"), "dev", status_fields()).await.unwrap();
    mqtt.wait_connected(PATIENCE).await.unwrap();
    mqtt.publish_result(&attribution(1)).await.unwrap();
    assert_eq!(sub.next_on(RESULT).await.json()["id"], attribution(1).id);
    assert!(mqtt.shutdown(Duration::from_secs(5)).await.clean);

    // A wrong password: refused, and the error says what to check.
    let wrong = amfp::config::MqttSettings { password_file: Some(secret("pw2", "wrong horse")), ..good("wrong") };
    let (mqtt, _commands) = MqttPublisher::start(&wrong, "dev", status_fields()).await.unwrap();
    let e = mqtt.wait_connected(PATIENCE).await.unwrap_err();
    assert!(matches!(e, PublishError::Refused(_)), "{e}");
    assert!(e.to_string().contains("mqtt.password_file"), "{e}");
    assert!(!mqtt.shutdown(Duration::ZERO).await.clean);

    // A broker whose certificate the configured CA did not sign: never connected, and why.
    let untrusted = amfp::config::MqttSettings { ca_file: Some(other.ca.clone()), ..good("untrusted") };
    let (mqtt, _commands) = MqttPublisher::start(&untrusted, "dev", status_fields()).await.unwrap();
    let e = mqtt.wait_connected(Duration::from_secs(3)).await.unwrap_err();
    assert!(e.to_string().contains("TLS") && e.to_string().contains("certificate"), "{e}");
    mqtt.shutdown(Duration::ZERO).await;

    // A listener that requires client certificates: accepted with one signed by the CA.
    let mtls = amfp::config::MqttSettings {
        port: mtls_port,
        client_cert_file: Some(pki.client_cert.clone()),
        client_key_file: Some(pki.client_key.clone()),
        ..good("mtls")
    };
    let (mqtt, _commands) = MqttPublisher::start(&mtls, "dev", status_fields()).await.unwrap();
    mqtt.wait_connected(PATIENCE).await.unwrap();
    assert!(mqtt.shutdown(Duration::from_secs(5)).await.clean);

    // Unreadable files are errors at start that name the key.
    let missing = amfp::config::MqttSettings { ca_file: Some(dir.path().join("nope.pem")), ..good("missing") };
    let e = MqttPublisher::start(&missing, "dev", status_fields()).await.err().unwrap();
    assert!(e.to_string().starts_with("mqtt.ca_file: cannot read "), "{e}");
}

#[tokio::test]
async fn commands_reach_the_daemon_and_bad_ones_become_events() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let mut sub = Subscriber::connect(broker.port, "amfp/dev/+", ClientOptions::default()).await;
    let (mqtt, mut commands) =
        MqttPublisher::start(&settings(broker.port, dir.path()), "dev", status_fields()).await.unwrap();
    // The publisher subscribes before it publishes `online`: once that is seen, commands arrive.
    sub.status(STATUS, "online").await;

    sub.publish(INSPECT, br#"{"claim": "DLS-3", "ref": "PO-17"}"#, false).await;
    let command = tokio::time::timeout(PATIENCE, commands.recv()).await.unwrap().unwrap();
    let Command::Inspect(command) = command else { panic!("{command:?}") };
    assert_eq!(command.claim.as_deref(), Some("DLS-3"));
    assert_eq!(command.reference.as_deref(), Some("PO-17"));

    // Enrollments have their own topic and checks.
    sub.publish(ENROLL, br#"{"label": "F3B-9", "parts": 4, "ref": "T-1"}"#, false).await;
    let command = tokio::time::timeout(PATIENCE, commands.recv()).await.unwrap().unwrap();
    let Command::Enroll(EnrollCommand::Start(start)) = command else { panic!("{command:?}") };
    assert_eq!((start.label.as_str(), start.parts, start.reference.as_deref()), ("F3B-9", 4, Some("T-1")));
    sub.publish(ENROLL, br#"{"claim": "F3B-9"}"#, false).await;
    let event = sub.next_on(EVENT).await.json();
    assert_eq!((event["kind"].as_str(), event["topic"].as_str()), (Some("bad_command"), Some(ENROLL)), "{event}");
    assert!(event["reason"].as_str().unwrap().contains("unknown field `claim`"), "{event}");

    for (payload, why) in [
        (&br#"{"claim": 5}"#[..], "invalid type"),
        (b"inspect now", "not a JSON object"),
        (br#"{"claim": "DLS-3", "priority": "high"}"#, "unknown field `priority`"),
    ] {
        sub.publish(INSPECT, payload, false).await;
        let event = sub.next_on(EVENT).await.json();
        assert_eq!(event["kind"], "bad_command");
        assert!(event["reason"].as_str().unwrap().contains(why), "{event}");
        assert_eq!(event["topic"], INSPECT);
    }
    // Still alive: the next good command (an empty one) arrives.
    sub.publish(INSPECT, b"", false).await;
    let command = tokio::time::timeout(PATIENCE, commands.recv()).await.unwrap().unwrap();
    assert_eq!(command, Command::Inspect(amfp::publish::InspectCommand::default()));
    assert!(commands.try_recv().is_err(), "exactly one command per good message");
    assert!(mqtt.shutdown(Duration::from_secs(5)).await.clean);
}

#[tokio::test]
async fn bad_settings_and_a_second_publisher_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = settings(free_port(), dir.path());
    let cases = [
        (amfp::config::MqttSettings { host: "broker:1883".into(), ..base.clone() }, "mqtt.host: "),
        (
            amfp::config::MqttSettings {
                username: Some("u".into()),
                password_file: Some(dir.path().join("missing")),
                ..base.clone()
            },
            "mqtt.password_file: cannot read ",
        ),
        (
            amfp::config::MqttSettings { client_cert_file: Some("c.pem".into()), ..base.clone() },
            "mqtt.client_cert_file: ",
        ),
    ];
    for (s, start) in cases {
        let e = MqttPublisher::start(&s, "dev", status_fields()).await.err().unwrap();
        assert!(e.to_string().starts_with(start), "{e}");
    }
    let e = MqttPublisher::start(&base, "a/b", status_fields()).await.err().unwrap();
    assert!(e.to_string().starts_with("device.id: "), "{e}");

    let (_first, _commands) = MqttPublisher::start(&base, "dev", status_fields()).await.unwrap();
    let e = MqttPublisher::start(&base, "dev", status_fields()).await.err().unwrap();
    assert!(e.to_string().contains("in use by another process"), "{e}");
}

/// A result queued right before the shutdown still goes out within the grace period: the
/// shutdown sends what the outbox holds before it says goodbye.
#[tokio::test]
async fn shutdown_sends_what_was_queued_just_before() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let mut sub = Subscriber::connect(broker.port, RESULT, ClientOptions::default()).await;
    for round in 0..5 {
        let (mqtt, _commands) =
            MqttPublisher::start(&settings(broker.port, dir.path()), "dev", status_fields()).await.unwrap();
        mqtt.wait_connected(PATIENCE).await.unwrap();
        let sent: Vec<_> = (round * 3..round * 3 + 3).map(attribution).collect();
        for a in &sent {
            mqtt.publish_result(a).await.unwrap();
        }
        let report = mqtt.shutdown(Duration::from_secs(5)).await;
        assert_eq!((report.clean, report.outbox_entries), (true, 0), "round {round}");
        let (got, _) = sub.results(RESULT, 3).await;
        assert_eq!(
            got.iter().map(|v| v["id"].as_str().unwrap()).collect::<Vec<_>>(),
            sent.iter().map(|a| a.id.as_str()).collect::<Vec<_>>()
        );
    }
}
