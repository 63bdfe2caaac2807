//! Commands from the fleet: `cmd/inspect` payloads, checked before they reach the daemon.
//!
//! Anyone who may publish on the broker can send a command, so a payload is parsed strictly:
//! a size limit, a JSON object with only known fields, bounded strings without control
//! characters. What fails is reported ([`BadCommand`]) and never reaches the daemon.

use serde::{Deserialize, Serialize};

/// Largest accepted command payload in bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Longest accepted claim, in characters.
const MAX_CLAIM_CHARS: usize = 128;
/// Longest accepted reference, in characters.
const MAX_REF_CHARS: usize = 256;

/// A request to inspect one part, from `<base>/<device>/cmd/inspect`: what the daemon's
/// `command` trigger acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectCommand {
    /// The claimed source of the part (a machine label), checked against the evidence and
    /// echoed in the Attribution's `claim`.
    #[serde(default)]
    pub claim: Option<String>,
    /// The sender's own reference (a purchase order, a job), for correlating the result.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

/// Why a command payload was refused, in words for the `bad_command` event and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCommand(pub String);

/// Parses and checks an inspect command. An empty payload is a command without claim or
/// reference (`mosquitto_pub -n`); anything else must be a JSON object with at most the fields
/// `claim` and `ref`, each a string or null.
pub fn parse_inspect(payload: &[u8]) -> Result<InspectCommand, BadCommand> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(BadCommand(format!("payload of {} bytes is larger than {MAX_COMMAND_BYTES}", payload.len())));
    }
    let text = std::str::from_utf8(payload).map_err(|_| BadCommand("payload is not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Ok(InspectCommand::default());
    }
    if !text.trim_start().starts_with('{') {
        return Err(BadCommand(
            "payload is not a JSON object; expected e.g. {\"claim\": \"DLS-3\", \"ref\": \"PO-17\"}".into(),
        ));
    }
    let command: InspectCommand =
        serde_json::from_str(text).map_err(|e| BadCommand(format!("invalid command: {e}")))?;
    check_text("claim", command.claim.as_deref(), MAX_CLAIM_CHARS)?;
    check_text("ref", command.reference.as_deref(), MAX_REF_CHARS)?;
    Ok(command)
}

/// A present string field must be non-empty, short enough and free of control characters.
fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<(), BadCommand> {
    let Some(value) = value else { return Ok(()) };
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(BadCommand(format!("`{field}` must be 1 to {max} characters without control characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> InspectCommand {
        parse_inspect(text.as_bytes()).unwrap()
    }

    fn bad(payload: &[u8]) -> String {
        parse_inspect(payload).unwrap_err().0
    }

    #[test]
    fn accepts_claim_ref_and_nothing() {
        let c = ok(r#"{"claim": "DLS-3", "ref": "PO-17"}"#);
        assert_eq!(c.claim.as_deref(), Some("DLS-3"));
        assert_eq!(c.reference.as_deref(), Some("PO-17"));
        assert_eq!(ok(""), InspectCommand::default());
        assert_eq!(ok(" {} "), InspectCommand::default());
        assert_eq!(ok(r#"{"claim": null}"#), InspectCommand::default());
    }

    #[test]
    fn refuses_what_is_not_a_command() {
        assert!(bad(br#"{"claim": "x", "colour": 1}"#).contains("unknown field `colour`"));
        assert!(bad(br#"{"claim": 5}"#).contains("invalid type"));
        assert!(bad(b"[1,2]").contains("not a JSON object"));
        assert!(bad(b"inspect please").contains("not a JSON object"));
        assert!(bad(b"{\"claim\": ").contains("invalid command"));
        assert!(bad(&[0xff, 0xfe]).contains("not UTF-8"));
        assert!(bad(br#"{"claim": ""}"#).contains("`claim` must be"));
        assert!(bad(br#"{"ref": "a\u0007b"}"#).contains("`ref` must be"));
        let long = format!(r#"{{"claim": "{}"}}"#, "x".repeat(129));
        assert!(bad(long.as_bytes()).contains("1 to 128"));
        let huge = format!(r#"{{"ref": "{}"}}"#, "x".repeat(MAX_COMMAND_BYTES));
        assert!(bad(huge.as_bytes()).contains("larger than 4096"));
    }
}
