//! Commands from the fleet: `cmd/inspect` and `cmd/enroll` payloads, checked before they reach
//! the daemon.
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
/// Longest accepted machine label, process name, `by` or `why`, in characters.
const MAX_NAME_CHARS: usize = 128;
/// Longest accepted enrollment note, in characters.
const MAX_NOTES_CHARS: usize = 1024;
/// Most parts one station enrollment may ask for.
pub const MAX_ENROLL_PARTS: u32 = 200;

/// A validated command, as the daemon receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// From `cmd/inspect`: judge one part.
    Inspect(InspectCommand),
    /// From `cmd/enroll`: start or cancel an enrollment at the station.
    Enroll(EnrollCommand),
}

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

/// A request from `<base>/<device>/cmd/enroll`: enroll a machine from the next parts the
/// station judges (docs/gallery.md, "Enrollment at the station"), or cancel the enrollment under
/// way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollCommand {
    /// Take the next `parts` parts as the machine's.
    Start(EnrollStart),
    /// Drop the enrollment under way; nothing is written.
    Cancel {
        /// The sender's reference, echoed in the `enrollment` event.
        reference: Option<String>,
    },
}

/// What a station enrollment is asked to do: the fields of `amfp enroll`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollStart {
    /// The machine's label, as verdicts will name it.
    pub label: String,
    /// Its process (FDM, SLA, DLS, MJF...).
    pub process: Option<String>,
    /// Free text kept with the machine.
    pub notes: Option<String>,
    /// Why it is enrolled; required to re-enroll.
    pub why: Option<String>,
    /// Who asks (default: the station).
    pub by: Option<String>,
    /// Replace the fingerprint of a machine the gallery already has.
    pub reenroll: bool,
    /// How many parts to take.
    pub parts: u32,
    /// The sender's reference, echoed in every `enrollment` event.
    pub reference: Option<String>,
}

/// The wire form of [`EnrollCommand`], before its fields are checked together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollPayload {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    process: Option<String>,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    why: Option<String>,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    reenroll: bool,
    #[serde(default)]
    parts: Option<u32>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    cancel: bool,
}

/// Why a command payload was refused, in words for the `bad_command` event and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCommand(pub String);

/// Parses and checks an inspect command. An empty payload is a command without claim or
/// reference (`mosquitto_pub -n`); anything else must be a JSON object with at most the fields
/// `claim` and `ref`, each a string or null.
pub fn parse_inspect(payload: &[u8]) -> Result<InspectCommand, BadCommand> {
    let Some(command) = parse_object::<InspectCommand>(payload, r#"{"claim": "DLS-3", "ref": "PO-17"}"#)? else {
        return Ok(InspectCommand::default());
    };
    check_text("claim", command.claim.as_deref(), MAX_CLAIM_CHARS)?;
    check_text("ref", command.reference.as_deref(), MAX_REF_CHARS)?;
    Ok(command)
}

/// Parses and checks an enroll command: a JSON object with `label` and optionally `process`,
/// `notes`, `why`, `by`, `reenroll`, `parts` (default [`RECOMMENDED_PARTS`](crate::gallery::RECOMMENDED_PARTS),
/// at least [`MIN_PARTS`](crate::gallery::MIN_PARTS)) and `ref`; or `{"cancel": true}` with
/// at most a `ref`.
pub fn parse_enroll(payload: &[u8]) -> Result<EnrollCommand, BadCommand> {
    let example = r#"{"label": "F3B-9", "process": "SLA", "parts": 10}"#;
    let p = parse_object::<EnrollPayload>(payload, example)?
        .ok_or_else(|| BadCommand(format!("empty enroll command; expected e.g. {example}")))?;
    check_text("ref", p.reference.as_deref(), MAX_REF_CHARS)?;
    if p.cancel {
        let given = [p.label.is_some(), p.process.is_some(), p.notes.is_some(), p.why.is_some(), p.by.is_some()];
        if given.into_iter().any(|g| g) || p.reenroll || p.parts.is_some() {
            return Err(BadCommand("a cancel command takes no other field than `ref`".into()));
        }
        return Ok(EnrollCommand::Cancel { reference: p.reference });
    }
    let label = p.label.ok_or_else(|| BadCommand(format!("`label` is missing: name the machine, e.g. {example}")))?;
    check_text("label", Some(label.trim()), MAX_NAME_CHARS)?;
    for (field, value) in [("process", &p.process), ("why", &p.why), ("by", &p.by)] {
        check_text(field, value.as_deref(), MAX_NAME_CHARS)?;
    }
    check_text("notes", p.notes.as_deref(), MAX_NOTES_CHARS)?;
    let parts = p.parts.unwrap_or(crate::gallery::RECOMMENDED_PARTS as u32);
    let min = crate::gallery::MIN_PARTS as u32;
    if !(min..=MAX_ENROLL_PARTS).contains(&parts) {
        return Err(BadCommand(format!(
            "`parts` must be {min} to {MAX_ENROLL_PARTS} (an enrollment needs {min} parts, {} or more recommended)",
            crate::gallery::RECOMMENDED_PARTS
        )));
    }
    if p.reenroll && p.why.is_none() {
        return Err(BadCommand(
            "`reenroll` needs `why`: the gallery's history records why a fingerprint was replaced".into(),
        ));
    }
    Ok(EnrollCommand::Start(EnrollStart {
        label: label.trim().to_string(),
        process: p.process,
        notes: p.notes,
        why: p.why,
        by: p.by,
        reenroll: p.reenroll,
        parts,
        reference: p.reference,
    }))
}

/// The JSON object in `payload`, or `None` for an empty payload; refuses payloads that are too
/// large, not UTF-8, not an object, or have unknown fields or wrong types. `example` is shown
/// in the error.
fn parse_object<T: serde::de::DeserializeOwned>(payload: &[u8], example: &str) -> Result<Option<T>, BadCommand> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(BadCommand(format!("payload of {} bytes is larger than {MAX_COMMAND_BYTES}", payload.len())));
    }
    let text = std::str::from_utf8(payload).map_err(|_| BadCommand("payload is not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    if !text.trim_start().starts_with('{') {
        return Err(BadCommand(format!("payload is not a JSON object; expected e.g. {example}")));
    }
    serde_json::from_str(text).map(Some).map_err(|e| BadCommand(format!("invalid command: {e}")))
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

    fn start(text: &str) -> EnrollStart {
        match parse_enroll(text.as_bytes()).unwrap() {
            EnrollCommand::Start(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn bad_enroll(text: &str) -> String {
        parse_enroll(text.as_bytes()).unwrap_err().0
    }

    #[test]
    fn enroll_commands_start_and_cancel() {
        let s = start(r#"{"label": " F3B-9 ", "process": "SLA", "ref": "T-1"}"#);
        assert_eq!((s.label.as_str(), s.parts, s.reenroll), ("F3B-9", 10, false));
        assert_eq!((s.process.as_deref(), s.reference.as_deref()), (Some("SLA"), Some("T-1")));
        let s = start(r#"{"label": "M2-3", "parts": 3, "reenroll": true, "why": "new projector"}"#);
        assert_eq!((s.parts, s.reenroll, s.why.as_deref()), (3, true, Some("new projector")));
        assert_eq!(
            parse_enroll(br#"{"cancel": true, "ref": "T-1"}"#).unwrap(),
            EnrollCommand::Cancel { reference: Some("T-1".into()) }
        );
    }

    #[test]
    fn refuses_what_is_not_an_enrollment() {
        assert!(bad_enroll("").contains("empty enroll command"));
        assert!(bad_enroll(r#"{"process": "SLA"}"#).contains("`label` is missing"));
        assert!(bad_enroll(r#"{"label": "  "}"#).contains("`label` must be"));
        assert!(bad_enroll(r#"{"label": "A", "parts": 2}"#).contains("`parts` must be 3 to 200"));
        assert!(bad_enroll(r#"{"label": "A", "parts": 201}"#).contains("`parts` must be 3 to 200"));
        assert!(bad_enroll(r#"{"label": "A", "parts": -1}"#).contains("invalid command"));
        assert!(bad_enroll(r#"{"label": "A", "reenroll": true}"#).contains("`reenroll` needs `why`"));
        assert!(bad_enroll(r#"{"label": "A", "machine": "B"}"#).contains("unknown field `machine`"));
        assert!(bad_enroll(r#"{"cancel": true, "label": "A"}"#).contains("no other field than `ref`"));
        let notes = format!(r#"{{"label": "A", "notes": "{}"}}"#, "x".repeat(1025));
        assert!(bad_enroll(&notes).contains("`notes` must be 1 to 1024"));
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
