//! Publishing to a fleet manager over MQTT, without losing a result (docs/mqtt.md).
//!
//! The daemon's whole interface is [`MqttPublisher`]:
//!
//! ```no_run
//! # async fn daemon(settings: amfp::config::Settings, attribution: amfp::result::Attribution) -> Result<(), amfp::publish::PublishError> {
//! use std::time::Duration;
//! use amfp::publish::MqttPublisher;
//!
//! let device = settings.device.id.clone().unwrap_or_else(amfp::identify::host_name);
//! let status = serde_json::json!({"model": "amfp-synth-v3", "camera": {"kind": "file"}});
//! let (mqtt, mut commands) = MqttPublisher::start(&settings.mqtt, &device, status).await?;
//! mqtt.publish_result(&attribution).await?;                // durable once it returns
//! mqtt.publish_event("camera_lost", serde_json::json!({"reason": "unplugged"}))?;
//! if let Some(command) = commands.recv().await { /* Command::Inspect or Command::Enroll */ }
//! mqtt.shutdown(Duration::from_secs(settings.mqtt.shutdown_grace_s)).await;
//! # Ok(()) }
//! ```
//!
//! Modules, one concern each: [`outbox`] (the durable queue on disk), [`session`] (matching
//! PUBACKs to what was sent), [`mqtt`] (the tasks around rumqttc), [`transport`] (settings to
//! connection options: TLS, credentials, will), [`wire`] (topics and payloads), [`command`]
//! (validating commands), [`backoff`] (reconnection delays).

pub mod backoff;
pub mod command;
pub mod mqtt;
pub mod outbox;
pub mod session;
pub mod transport;
pub mod wire;

use std::time::Duration;

pub use command::{Command, EnrollCommand, EnrollStart, InspectCommand};
pub use mqtt::{ConnectionState, MqttPublisher, ShutdownReport};
pub use outbox::{OutboxError, OutboxStats};

/// Why publishing could not start, or a result or event was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A setting cannot be used (found at start): the dotted key, and what is wrong.
    #[error("{key}: {message}")]
    Setup {
        /// The key to fix, e.g. `mqtt.ca_file`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The outbox refused the result (full, see [`OutboxError::Full`]) or failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The payload is larger than amfp ever sends in one message.
    #[error("payload of {len} bytes is larger than the {max} bytes amfp sends in one message")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The result could not be turned into JSON.
    #[error("cannot encode the result: {0}")]
    Encode(String),
    /// Too many events wait for the broker; this one was dropped.
    #[error("event dropped: too many events wait for the broker")]
    Busy,
    /// The publisher has been shut down (or its tasks have ended).
    #[error("the MQTT publisher has stopped")]
    Closed,
    /// The broker refused the client; what it said, with the keys to check.
    #[error("{0}")]
    Refused(String),
    /// No connection within the time asked for; the last error.
    #[error("not connected to the broker after {waited:?}: {last}")]
    NotConnected {
        /// How long it waited.
        waited: Duration,
        /// The last connection error, in words.
        last: String,
    },
}
