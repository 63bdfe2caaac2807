//! The MQTT publisher: results from the outbox, events and status to the broker; commands back.
//!
//! Two tokio tasks per publisher, joined by channels:
//!
//! - the *driver* owns rumqttc's event loop and only polls it: it forwards what happens
//!   (connected, packet written, PUBACK, incoming publish, connection lost) to the manager, and
//!   after a lost connection waits with capped exponential backoff and jitter before the next
//!   attempt. It never hands requests to rumqttc, and polling is never cancelled, so rumqttc's
//!   state stays consistent.
//! - the *manager* owns the bookkeeping ([`Session`]): it hands publishes to rumqttc while
//!   connected (the retained `online` status first, then queued events and results from the
//!   outbox in order, a bounded window of each), removes a result from the outbox when its
//!   PUBACK arrives, validates commands and runs the clean shutdown.
//!
//! Every connection is a clean MQTT session. When one ends, the driver waits until the manager
//! has seen the loss, then clears rumqttc's queues; the next connection starts again from the
//! oldest result still in the outbox. A result whose PUBACK was lost with the connection is sent
//! twice: at-least-once delivery, duplicates carrying the same Attribution id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::PublishError;
use super::backoff::Backoff;
use super::command::{Command, parse_enroll, parse_inspect};
use super::outbox::{Outbox, OutboxError, OutboxLimits, OutboxStats};
use super::session::{Sent, Session};
use super::transport::{self, MAX_PAYLOAD_BYTES};
use super::wire::{self, OfflineReason, Topics};
use crate::config::MqttSettings;
use crate::result::Attribution;

/// Results handed to rumqttc and not yet acknowledged, at most.
const RESULT_WINDOW: usize = 16;
/// Events handed to rumqttc and not yet acknowledged, at most.
const EVENT_WINDOW: usize = 8;
/// Capacity of rumqttc's request channel: above everything the manager ever has outstanding.
const REQUEST_CAPACITY: usize = 64;
/// Events kept in memory while they cannot be sent; beyond it the oldest are dropped.
const MAX_QUEUED_EVENTS: usize = 256;
/// Commands waiting for the daemon, at most; more are refused with a `command_dropped` event.
pub const COMMAND_CAPACITY: usize = 16;
/// First reconnection delay (the backoff doubles it up to `mqtt.reconnect_max_s`).
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Where the connection to the broker stands, for status lines and start-up checks
/// ([`MqttPublisher::connection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first attempt is under way.
    Connecting,
    /// Connected; the `online` status and whatever waited are on their way.
    Connected,
    /// The last attempt failed or the connection was lost; retrying with backoff.
    Disconnected {
        /// What went wrong, in words.
        reason: String,
    },
    /// The broker answered but refused the client (credentials, client id, authorisation);
    /// retrying with backoff, but a configuration change is probably needed.
    Refused {
        /// The broker's answer, in words, with the keys to check.
        reason: String,
    },
    /// Shut down (or the publisher's tasks ended).
    Stopped,
}

/// The outcome of [`MqttPublisher::shutdown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Everything sent was acknowledged, the `offline` status included, and the client said
    /// goodbye (DISCONNECT). Otherwise the connection was dropped and the broker publishes the
    /// last will (`offline`, reason `lost`).
    pub clean: bool,
    /// Results in the outbox, to be sent by the next start.
    pub outbox_entries: u64,
}

/// What the handle asks of the manager.
enum Request {
    /// Publish this event payload (not durable).
    Event(Vec<u8>),
    /// Merge these fields into the `online` status and publish it again.
    Status(Value),
    /// Publish `offline`, wait up to `grace` for acknowledgements, disconnect, report.
    Shutdown { grace: Duration, done: oneshot::Sender<ShutdownReport> },
}

/// What the driver tells the manager.
enum Link {
    /// Connected (CONNACK accepted).
    Up,
    /// rumqttc wrote a publish with this packet id.
    Written(u16),
    /// rumqttc holds a publish back until this packet id is free.
    Held(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// A publish arrived from the broker.
    Message(Publish),
    /// The broker answered the subscription: whether it granted it.
    Subscribed(bool),
    /// The connection is gone (or an attempt failed); the driver waits for `resume` before it
    /// clears rumqttc's queues and retries.
    Down { reason: String, refused: bool, resume: oneshot::Sender<()> },
    /// The goodbye (DISCONNECT) was written; the driver has stopped.
    Closed,
}

/// Publishes results, events and status to the broker and receives commands. Cheap to clone;
/// all clones share one connection and one outbox.
///
/// Dropping the last clone without [`shutdown`](Self::shutdown) stops the tasks at once,
/// like a crash: nothing more is sent, the broker publishes the last will, and the outbox keeps
/// what was not acknowledged for the next start.
#[derive(Clone)]
pub struct MqttPublisher {
    inner: Arc<Inner>,
}

/// What the clones share.
struct Inner {
    device: String,
    outbox: Arc<Outbox>,
    requests: mpsc::Sender<Request>,
    wake: mpsc::Sender<()>,
    state: watch::Receiver<ConnectionState>,
    /// Set by shutdown: no new results or events.
    closed: AtomicBool,
    /// Whether the outbox is refusing results (the `outbox_full` event was sent).
    full: AtomicBool,
    tasks: [AbortHandle; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl MqttPublisher {
    /// Checks the settings, opens the outbox and starts connecting (in the background: a broker
    /// that is down delays results, it does not fail the start). `device` is the device id of
    /// the topics; `status` holds the fields of the retained `online` status (model, camera...),
    /// an object. Returns the publisher and the receiver of validated commands.
    ///
    /// Errors, each naming the key to fix: bad settings, unreadable password, CA, certificate or
    /// key files, an outbox directory that cannot be used or is locked by another process.
    /// Must run inside a tokio runtime.
    pub async fn start(
        settings: &MqttSettings,
        device: &str,
        status: Value,
    ) -> Result<(Self, mpsc::Receiver<Command>), PublishError> {
        transport::check(settings)?;
        let topics = Topics::new(&settings.base, device)
            .map_err(|message| PublishError::Setup { key: "device.id".into(), message })?;
        let options = transport::options(settings, device, &topics)?;
        let limits = OutboxLimits { max_entries: settings.outbox_max_entries, max_bytes: settings.outbox_max_bytes };
        let dir = settings.outbox_dir.clone();
        let (outbox, recovery) = tokio::task::spawn_blocking(move || Outbox::open(&dir, limits))
            .await
            .map_err(|_| PublishError::Closed)??;
        let outbox = Arc::new(outbox);
        let broker = transport::describe(settings);
        log::info!(
            "mqtt: publishing to {broker} as {} under {}/{device}/; outbox {} holds {} results",
            transport::client_id(settings, device),
            settings.base,
            settings.outbox_dir.display(),
            recovery.entries
        );

        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (link_tx, link_rx) = mpsc::channel(64);
        let (request_tx, request_rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        let (wake_tx, wake_rx) = mpsc::channel(1);
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let backoff = Backoff::new(FIRST_RETRY, Duration::from_secs(settings.reconnect_max_s));
        let driver = tokio::spawn(drive(eventloop, link_tx, backoff, broker.clone())).abort_handle();
        let manager = Manager {
            client,
            outbox: outbox.clone(),
            topics,
            device: device.to_string(),
            status: status.clone(),
            broker,
            session: Session::default(),
            events: VecDeque::new(),
            connected: false,
            cursor: None,
            commands: command_tx,
            state: state_tx,
            last_failure: None,
            driver: driver.clone(),
            stopping: None,
            finished: false,
        };
        let manager = tokio::spawn(manager.run(link_rx, request_rx, wake_rx)).abort_handle();
        let inner = Inner {
            device: device.to_string(),
            outbox,
            requests: request_tx,
            wake: wake_tx,
            state: state_rx,
            closed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            tasks: [driver, manager],
        };
        Ok((Self { inner: Arc::new(inner) }, command_rx))
    }

    /// Queues a result for the broker: written to the outbox and synced before this returns
    /// `Ok`, so it survives a crash; sent in order as soon as the broker is reachable, and
    /// removed from the outbox only when the broker acknowledges it.
    ///
    /// When the outbox is full the result is refused ([`OutboxError::Full`] inside
    /// [`PublishError::Outbox`]) and the older ones are kept; the first refusal of an episode
    /// logs a warning and publishes an `outbox_full` event, so the caller only needs to keep
    /// the result in its other sinks.
    pub async fn publish_result(&self, attribution: &Attribution) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let payload = serde_json::to_vec(attribution).map_err(|e| PublishError::Encode(e.to_string()))?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PublishError::TooLarge { len: payload.len(), max: MAX_PAYLOAD_BYTES });
        }
        let outbox = self.inner.outbox.clone();
        let id = attribution.id.clone();
        let pushed =
            tokio::task::spawn_blocking(move || outbox.push(&id, &payload)).await.map_err(|_| PublishError::Closed)?;
        match pushed {
            Ok(_) => {
                if self.inner.full.swap(false, Ordering::AcqRel) {
                    log::info!("mqtt: the outbox has room again");
                }
                let _ = self.inner.wake.try_send(());
                Ok(())
            }
            Err(e @ OutboxError::Full { entries, bytes, max_entries, max_bytes }) => {
                if !self.inner.full.swap(true, Ordering::AcqRel) {
                    log::warn!("mqtt: {e}");
                    let detail = json!({
                        "entries": entries, "bytes": bytes,
                        "max_entries": max_entries, "max_bytes": max_bytes,
                        "refused_id": attribution.id,
                    });
                    let _ = self.publish_event("outbox_full", detail);
                } else {
                    log::debug!("mqtt: outbox still full; result {} refused", attribution.id);
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes an event (QoS 1, not retained) on the `event` topic: `{"kind", "device",
    /// "time", ...detail}` (see `wire::event`). Events are not durable: they wait in memory
    /// (at most 256) while the broker is away and are lost with the process.
    /// [`PublishError::Busy`] when that queue is full.
    pub fn publish_event(&self, kind: &str, detail: Value) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let payload = wire::event(&self.inner.device, kind, detail);
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PublishError::TooLarge { len: payload.len(), max: MAX_PAYLOAD_BYTES });
        }
        self.inner.requests.try_send(Request::Event(payload)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Busy,
            mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
        })
    }

    /// Changes fields of the retained `online` status (a new gallery version, say): `patch`'s
    /// objects are merged into the status's, its other values replace them; the new status is
    /// published at once when connected, else on the next connection.
    pub fn update_status(&self, patch: Value) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        self.inner.requests.try_send(Request::Status(patch)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Busy,
            mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
        })
    }

    /// Clean shutdown: stops taking results and events, sends what the outbox and the event
    /// queue still hold, publishes the retained `offline` status, waits up to `grace` for every
    /// PUBACK, then disconnects. What was not acknowledged in time stays in the outbox for the
    /// next start. Later calls report at once.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.closed.store(true, Ordering::Release);
        let (done, report) = oneshot::channel();
        let fallback = || ShutdownReport { clean: false, outbox_entries: self.inner.outbox.stats().entries };
        if self.inner.requests.send(Request::Shutdown { grace, done }).await.is_err() {
            return fallback();
        }
        report.await.unwrap_or_else(|_| fallback())
    }

    /// Watches the connection's state (for sd_notify STATUS lines, start-up checks, tests).
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Waits until connected. Fails at once with [`PublishError::Refused`] when the broker
    /// refuses the client (wrong credentials...), and with [`PublishError::NotConnected`] (the
    /// last error) when `timeout` passes first. The publisher keeps retrying either way.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), PublishError> {
        let mut state = self.connection();
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                match &*state.borrow_and_update() {
                    ConnectionState::Connected => return Ok(()),
                    ConnectionState::Refused { reason } => return Err(PublishError::Refused(reason.clone())),
                    ConnectionState::Stopped => return Err(PublishError::Closed),
                    _ => {}
                }
                if state.changed().await.is_err() {
                    return Err(PublishError::Closed);
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            let last = match &*state.borrow() {
                ConnectionState::Disconnected { reason } => reason.clone(),
                _ => "no answer yet".into(),
            };
            Err(PublishError::NotConnected { waited: timeout, last })
        })
    }

    /// How full the outbox is.
    pub fn outbox_stats(&self) -> OutboxStats {
        self.inner.outbox.stats()
    }
}

/// The driver task: polls rumqttc's event loop and reports to the manager (module docs).
async fn drive(mut eventloop: EventLoop, link: mpsc::Sender<Link>, mut backoff: Backoff, broker: String) {
    let mut up_since: Option<Instant> = None;
    loop {
        let message = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                up_since = Some(Instant::now());
                Link::Up
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => Link::Acked(ack.pkid),
            Ok(Event::Incoming(Packet::Publish(publish))) => Link::Message(publish),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                Link::Subscribed(ack.return_codes.iter().all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)))
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Link::Written(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => Link::Held(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = link.send(Link::Closed).await;
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                if up_since.take().is_some_and(|t| t.elapsed() >= STABLE) {
                    backoff.reset();
                }
                let (reason, refused) = explain(&error, &broker);
                let (resume, resumed) = oneshot::channel();
                if link.send(Link::Down { reason, refused, resume }).await.is_err() || resumed.await.is_err() {
                    return;
                }
                // The manager hands nothing over until the next `Up`: drop what the old
                // connection left (unacknowledged publishes, queued requests, buffered events).
                eventloop.clean();
                eventloop.state.events.clear();
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if link.send(message).await.is_err() {
            return;
        }
    }
}

/// A connection error in words, and whether the broker refused the client.
fn explain(error: &ConnectionError, broker: &str) -> (String, bool) {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => {
                    "bad user name or password (check mqtt.username and mqtt.password_file)"
                }
                ConnectReturnCode::NotAuthorized => {
                    "not authorised: wrong user name or password, or the broker's ACL (check mqtt.username and mqtt.password_file)"
                }
                ConnectReturnCode::BadClientId => "client id refused (check mqtt.client_id)",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "the broker does not accept MQTT 3.1.1",
                ConnectReturnCode::Success => "refused without a reason",
            };
            (format!("{broker} refused the connection: {why}"), true)
        }
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            (format!("nothing listens at {broker} (connection refused)"), false)
        }
        ConnectionError::NetworkTimeout => (format!("{broker} did not answer in time"), false),
        ConnectionError::Tls(e) => (format!("TLS with {broker} failed: {e} (check mqtt.ca_file and mqtt.host)"), false),
        other => (format!("{broker}: {other}"), false),
    }
}

/// Why the manager is stopping.
struct Stopping {
    deadline: Instant,
    done: oneshot::Sender<ShutdownReport>,
    /// DISCONNECT has been requested.
    disconnecting: bool,
}

/// The manager task's state (module docs).
struct Manager {
    client: AsyncClient,
    outbox: Arc<Outbox>,
    topics: Topics,
    device: String,
    /// Caller's fields of the `online` status.
    status: Value,
    /// `host:port` for log lines.
    broker: String,
    session: Session,
    /// Events not yet handed over, oldest first.
    events: VecDeque<Vec<u8>>,
    connected: bool,
    /// The last outbox entry handed over in this connection.
    cursor: Option<u64>,
    commands: mpsc::Sender<Command>,
    state: watch::Sender<ConnectionState>,
    /// The last failure logged at warning level, so a retry loop logs each new reason once.
    last_failure: Option<String>,
    driver: AbortHandle,
    stopping: Option<Stopping>,
    finished: bool,
}

impl Manager {
    async fn run(
        mut self,
        mut link: mpsc::Receiver<Link>,
        mut requests: mpsc::Receiver<Request>,
        mut wake: mpsc::Receiver<()>,
    ) {
        while !self.finished {
            let deadline = self.stopping.as_ref().map(|s| s.deadline);
            let accepting = self.stopping.is_none();
            tokio::select! {
                message = link.recv() => match message {
                    Some(message) => self.on_link(message),
                    None => self.finish(false),
                },
                request = requests.recv(), if accepting => match request {
                    Some(Request::Event(payload)) => self.queue_event(payload),
                    Some(Request::Status(patch)) => self.update_status(patch),
                    Some(Request::Shutdown { grace, done }) => self.begin_stop(grace, done),
                    None => return,
                },
                Some(()) = wake.recv(), if accepting => self.top_up(),
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    log::warn!("mqtt: shutdown grace period over with acknowledgements missing");
                    self.finish(false);
                }
            }
        }
    }

    fn on_link(&mut self, message: Link) {
        match message {
            Link::Up => self.on_up(),
            Link::Written(pkid) => {
                if let Err(e) = self.session.written(pkid) {
                    log::error!("mqtt: {e}");
                }
            }
            Link::Held(pkid) => {
                log::debug!("mqtt: packet id {pkid} still in use; rumqttc holds the next publish");
                if let Err(e) = self.session.held(pkid) {
                    log::error!("mqtt: {e}");
                }
            }
            Link::Acked(pkid) => {
                match self.session.acked(pkid) {
                    Some(Sent::Result(seq)) => {
                        if let Err(e) = self.outbox.ack(seq) {
                            log::error!("mqtt: result acknowledged but not removed (it will be sent again): {e}");
                        }
                    }
                    Some(_) => {}
                    None => log::debug!("mqtt: PUBACK for unknown packet id {pkid} ignored"),
                }
                self.top_up();
                self.check_stop();
            }
            Link::Message(publish) => self.on_message(publish),
            Link::Subscribed(true) => {
                log::debug!("mqtt: subscribed to {} and {}", self.topics.inspect, self.topics.enroll)
            }
            Link::Subscribed(false) => log::error!(
                "mqtt: the broker refused the subscription to {} or {}: commands will not arrive (check its ACL)",
                self.topics.inspect,
                self.topics.enroll
            ),
            Link::Down { reason, refused, resume } => {
                self.on_down(reason, refused);
                let _ = resume.send(());
            }
            Link::Closed => self.finish(true),
        }
    }

    fn on_up(&mut self) {
        self.connected = true;
        self.cursor = None;
        match self.last_failure.take() {
            Some(_) => log::info!("mqtt: connected to {} again", self.broker),
            None => log::info!("mqtt: connected to {}", self.broker),
        }
        self.state.send_replace(ConnectionState::Connected);
        let filters = [&self.topics.inspect, &self.topics.enroll]
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            log::error!("mqtt: cannot subscribe to {} and {}: {e}", self.topics.inspect, self.topics.enroll);
        }
        if self.stopping.is_some() {
            self.top_up();
            let payload = wire::status_offline(&self.device, OfflineReason::Shutdown);
            self.hand_status(payload, Sent::Offline);
            return;
        }
        let online = wire::status_online(&self.device, &self.status);
        self.hand_status(online, Sent::Online);
        self.top_up();
    }

    fn on_down(&mut self, reason: String, refused: bool) {
        let was_connected = std::mem::replace(&mut self.connected, false);
        let mut again: VecDeque<Vec<u8>> = self.session.reset().into();
        again.extend(self.events.drain(..));
        self.events = again;
        self.trim_events();
        let waiting = self.outbox.stats().entries;
        if was_connected {
            log::warn!("mqtt: connection lost: {reason}; retrying ({waiting} results wait in the outbox)");
            self.last_failure = Some(reason.clone());
        } else if self.last_failure.as_deref() != Some(reason.as_str()) {
            if refused {
                log::error!("mqtt: {reason}; retrying");
            } else {
                log::warn!("mqtt: cannot connect: {reason}; retrying ({waiting} results wait in the outbox)");
            }
            self.last_failure = Some(reason.clone());
        } else {
            log::debug!("mqtt: cannot connect: {reason}");
        }
        self.state.send_replace(if refused {
            ConnectionState::Refused { reason }
        } else {
            ConnectionState::Disconnected { reason }
        });
        if self.stopping.is_some() {
            self.finish(false);
        }
    }

    /// A publish from the broker: a command, checked and passed to the daemon, or refused with
    /// a `bad_command` event.
    fn on_message(&mut self, publish: Publish) {
        let parse: fn(&[u8]) -> Result<Command, super::command::BadCommand> = if publish.topic == self.topics.inspect {
            |p| parse_inspect(p).map(Command::Inspect)
        } else if publish.topic == self.topics.enroll {
            |p| parse_enroll(p).map(Command::Enroll)
        } else {
            log::debug!("mqtt: ignoring a message on {}", publish.topic);
            return;
        };
        let parsed = if publish.retain {
            Err(super::command::BadCommand(
                "retained command ignored (a retained command would run again on every connection)".into(),
            ))
        } else {
            parse(&publish.payload)
        };
        match parsed {
            Ok(command) => {
                log::info!("mqtt: command on {}: {command:?}", publish.topic);
                match self.commands.try_send(command) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        log::warn!("mqtt: command dropped: {COMMAND_CAPACITY} commands already wait");
                        let payload = wire::event(
                            &self.device,
                            "command_dropped",
                            json!({"reason": format!("busy: {COMMAND_CAPACITY} commands already wait"), "topic": publish.topic}),
                        );
                        self.queue_event(payload);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        log::warn!("mqtt: command ignored: nothing takes commands");
                    }
                }
            }
            Err(bad) => {
                log::warn!("mqtt: bad command on {}: {bad}", publish.topic);
                let detail = json!({"reason": bad.0, "topic": publish.topic, "bytes": publish.payload.len()});
                let payload = wire::event(&self.device, "bad_command", detail);
                self.queue_event(payload);
            }
        }
    }

    fn queue_event(&mut self, payload: Vec<u8>) {
        self.events.push_back(payload);
        self.trim_events();
        self.top_up();
    }

    /// Keeps the event queue bounded, dropping the oldest.
    fn trim_events(&mut self) {
        let excess = self.events.len().saturating_sub(MAX_QUEUED_EVENTS);
        if excess > 0 {
            self.events.drain(..excess);
            log::warn!("mqtt: {excess} events dropped: the broker has been away too long");
        }
    }

    /// Hands events and results to rumqttc while connected, up to their windows.
    /// Also while stopping: what is in the outbox when the shutdown begins still goes out within
    /// the grace period.
    fn top_up(&mut self) {
        if !self.connected {
            return;
        }
        while self.session.events() < EVENT_WINDOW
            && let Some(payload) = self.events.pop_front()
        {
            let topic = self.topics.event.clone();
            if !self.hand_to(&topic, false, payload.clone(), Sent::Event(payload.clone())) {
                self.events.push_front(payload);
                return;
            }
        }
        while self.session.results() < RESULT_WINDOW
            && let Some(seq) = self.outbox.next_after(self.cursor)
        {
            let entry = match self.outbox.read(seq) {
                Ok(entry) => entry,
                // Damaged entries are moved aside (and logged) by the outbox; go on.
                Err(OutboxError::Corrupt { .. }) => continue,
                Err(e) => {
                    log::error!("mqtt: cannot read the outbox: {e}");
                    return;
                }
            };
            let topic = self.topics.result.clone();
            if !self.hand_to(&topic, false, entry.payload, Sent::Result(seq)) {
                return;
            }
            self.cursor = Some(seq);
        }
    }

    fn update_status(&mut self, patch: Value) {
        merge(&mut self.status, patch);
        if self.connected {
            let online = wire::status_online(&self.device, &self.status);
            self.hand_status(online, Sent::Online);
        }
    }

    /// Hands a retained status over.
    fn hand_status(&mut self, payload: Vec<u8>, sent: Sent) -> bool {
        let topic = self.topics.status.clone();
        self.hand_to(&topic, true, payload, sent)
    }

    /// Hands one QoS 1 publish to rumqttc and records it; false when rumqttc's queue refused.
    fn hand_to(&mut self, topic: &str, retain: bool, payload: Vec<u8>, sent: Sent) -> bool {
        match self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => {
                self.session.handed(sent);
                true
            }
            Err(e) => {
                log::error!("mqtt: cannot queue a publish on {topic}: {e}");
                false
            }
        }
    }

    fn begin_stop(&mut self, grace: Duration, done: oneshot::Sender<ShutdownReport>) {
        self.stopping = Some(Stopping { deadline: Instant::now() + grace, done, disconnecting: false });
        if !self.connected {
            self.finish(false);
            return;
        }
        // Results queued just before the shutdown (their wake-up may not have been seen yet).
        self.top_up();
        let payload = wire::status_offline(&self.device, OfflineReason::Shutdown);
        self.hand_status(payload, Sent::Offline);
        self.check_stop();
    }

    /// While stopping: once the outbox is sent and everything is acknowledged, say goodbye.
    fn check_stop(&mut self) {
        let unsent = self.outbox.next_after(self.cursor).is_some() || !self.events.is_empty();
        let Some(stopping) = &mut self.stopping else { return };
        if stopping.disconnecting || !self.connected || !self.session.is_idle() || unsent {
            return;
        }
        match self.client.try_disconnect() {
            Ok(()) => stopping.disconnecting = true,
            Err(e) => {
                log::error!("mqtt: cannot disconnect: {e}");
                self.finish(false);
            }
        }
    }

    /// Ends the manager: `clean` after the goodbye was written, otherwise the connection is
    /// dropped (the broker publishes the last will).
    fn finish(&mut self, clean: bool) {
        if !clean {
            self.driver.abort();
        }
        self.finished = true;
        self.connected = false;
        self.state.send_replace(ConnectionState::Stopped);
        let outbox_entries = self.outbox.stats().entries;
        if let Some(stopping) = self.stopping.take() {
            if clean {
                log::info!("mqtt: disconnected; {outbox_entries} results wait in the outbox");
            } else {
                log::warn!("mqtt: stopped without a clean goodbye; {outbox_entries} results wait in the outbox");
            }
            let _ = stopping.done.send(ShutdownReport { clean, outbox_entries });
        } else {
            log::error!("mqtt: the connection task ended unexpectedly; publishing stopped");
        }
    }
}

/// Merges `patch` into `into`: objects key by key, anything else replaced.
fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
