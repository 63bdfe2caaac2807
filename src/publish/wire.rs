//! What goes on the wire: topic names and the status and event payloads (docs/mqtt.md).
//!
//! Results are published as the Attribution's own JSON (`result` module); this module builds
//! everything else, so the fleet-facing contract is in one place.

use serde_json::{Map, Value, json};

/// The topics of one device: `<base>/<device>/status|result|event|cmd/inspect|cmd/enroll`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Retained `online`/`offline` status, also the last will.
    pub status: String,
    /// One Attribution per inspected part.
    pub result: String,
    /// Warnings and errors worth a fleet manager's attention.
    pub event: String,
    /// Subscribed: requests to inspect a part.
    pub inspect: String,
    /// Subscribed: requests to enroll a machine from the next parts.
    pub enroll: String,
}

impl Topics {
    /// The topics under `base` for `device`; refuses names that would break the topic tree
    /// (empty, wildcards, spaces, a device containing `/`).
    pub fn new(base: &str, device: &str) -> Result<Self, String> {
        let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '+' || c == '#';
        if base.is_empty() || base.starts_with('/') || base.ends_with('/') || base.chars().any(bad_char) {
            return Err(format!("{base:?} cannot be a topic prefix"));
        }
        if device.is_empty() || device.contains('/') || device.chars().any(bad_char) {
            return Err(format!("device id {device:?} cannot be a topic level (no spaces, /, + or #)"));
        }
        let at = |leaf: &str| format!("{base}/{device}/{leaf}");
        Ok(Self {
            status: at("status"),
            result: at("result"),
            event: at("event"),
            inspect: at("cmd/inspect"),
            enroll: at("cmd/enroll"),
        })
    }
}

/// Why a device went offline, in its `offline` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// A clean shutdown published it.
    Shutdown,
    /// The broker published the last will: the connection was lost without a goodbye (crash,
    /// power cut, network cut).
    Lost,
}

/// The retained `online` status: the caller's fields (model, camera...) plus `state`, `device`,
/// `version` and `time`, which the caller cannot override.
pub fn status_online(device: &str, extra: &Value) -> Vec<u8> {
    let mut map = match extra {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    map.insert("state".into(), "online".into());
    map.insert("device".into(), device.into());
    map.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    map.insert("time".into(), now().into());
    serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
}

/// The retained `offline` status, published on clean shutdown or as the last will.
pub fn status_offline(device: &str, reason: OfflineReason) -> Vec<u8> {
    let reason = match reason {
        OfflineReason::Shutdown => "shutdown",
        OfflineReason::Lost => "lost",
    };
    json!({"state": "offline", "device": device, "reason": reason}).to_string().into_bytes()
}

/// An event: `kind`, `device` and `time`, then the fields of `detail` when it is an object, or
/// `detail` itself under that name otherwise (nothing for null).
pub fn event(device: &str, kind: &str, detail: Value) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("kind".into(), kind.into());
    map.insert("device".into(), device.into());
    map.insert("time".into(), now().into());
    match detail {
        Value::Object(fields) => {
            for (k, v) in fields {
                map.entry(k).or_insert(v);
            }
        }
        Value::Null => {}
        other => {
            map.insert("detail".into(), other);
        }
    }
    serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
}

/// The current time as RFC 3339 UTC with milliseconds, like the Attribution's `time`.
fn now() -> String {
    let t = jiff::Timestamp::now();
    t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_design() {
        let t = Topics::new("factory/amfp", "dock-3").unwrap();
        assert_eq!(t.status, "factory/amfp/dock-3/status");
        assert_eq!(t.result, "factory/amfp/dock-3/result");
        assert_eq!(t.event, "factory/amfp/dock-3/event");
        assert_eq!(t.inspect, "factory/amfp/dock-3/cmd/inspect");
        assert_eq!(t.enroll, "factory/amfp/dock-3/cmd/enroll");
        for (base, device) in [("amfp", "a/b"), ("amfp", "a+"), ("amfp", ""), ("", "d"), ("a#", "d"), ("/amfp", "d")] {
            assert!(Topics::new(base, device).is_err(), "{base:?} {device:?}");
        }
    }

    #[test]
    fn payloads() {
        let on: Value = serde_json::from_slice(&status_online(
            "dock-3",
            &json!({"model": "amfp-synth-v3", "state": "hacked", "camera": {"kind": "file"}}),
        ))
        .unwrap();
        assert_eq!(on["state"], "online");
        assert_eq!(on["device"], "dock-3");
        assert_eq!(on["model"], "amfp-synth-v3");
        assert_eq!(on["camera"]["kind"], "file");
        assert!(on["time"].as_str().unwrap().ends_with('Z'));
        let off: Value = serde_json::from_slice(&status_offline("d", OfflineReason::Lost)).unwrap();
        assert_eq!(off, json!({"state": "offline", "device": "d", "reason": "lost"}));
        let e: Value =
            serde_json::from_slice(&event("d", "camera_lost", json!({"kind": "x", "why": "unplugged"}))).unwrap();
        assert_eq!(e["kind"], "camera_lost");
        assert_eq!(e["why"], "unplugged");
        let e: Value = serde_json::from_slice(&event("d", "note", json!("text"))).unwrap();
        assert_eq!(e["detail"], "text");
    }
}
