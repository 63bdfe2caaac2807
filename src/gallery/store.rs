//! Gallery versions on disk: every change (an enrollment, a removal, a rollback) writes a new
//! version of the gallery file, atomically, and keeps every earlier one in a folder beside it,
//! so that a change can be undone and the chain of changes audited (docs/gallery.md,
//! "Versions and the audit chain").
//!
//! `models/m.gallery.json` is the current version; `models/m.gallery.versions/v<N>.json` holds
//! version N, byte for byte as it was current. Each version names the sha256 of its parent and
//! extends its parent's `history` by one entry. A write goes: the new version's file, then the
//! current file replaced by rename; a process killed between the two leaves the previous
//! version current and intact.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::GalleryError;
use crate::model::hex;
use crate::trust::{self, SecretKey};

/// A gallery file as an editable JSON document: what `amfp enroll` and `amfp gallery` change.
/// Fields this amfp does not know are kept as they are.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it was read from.
    pub path: PathBuf,
    /// sha256 of the bytes it was read from: the parent of the next version.
    pub sha256: String,
    value: Value,
}

/// One entry of a gallery's `history`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub version: u32,
    /// `fit`, `enroll`, `reenroll`, `remove` or `rollback`.
    pub action: String,
    pub time: String,
    pub by: String,
    pub why: String,
    /// The machines the change concerns.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One machine's entry as `amfp enroll` writes it.
#[derive(Debug, Clone)]
pub struct NewMachine {
    pub label: String,
    pub process: Option<String>,
    pub parts: u32,
    /// Its mean part embedding.
    pub mean: Vec<f32>,
    /// The small-N offset (docs/gallery.md, "Enrollment").
    pub offset: f64,
    pub notes: Option<String>,
    /// Drift monitoring's reference (docs/drift.md).
    pub drift: Option<super::DriftReference>,
}

fn format_error(path: &Path, detail: impl Into<String>) -> GalleryError {
    GalleryError::Format { path: path.to_owned(), detail: detail.into() }
}

fn io_error(path: &Path, source: std::io::Error) -> GalleryError {
    GalleryError::Io { path: path.to_owned(), source }
}

impl Document {
    /// Reads a gallery file. Only its form is checked here; [`super::Gallery::load`] checks it
    /// against a model.
    pub fn read(path: &Path) -> Result<Self, GalleryError> {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// As [`Document::read`], from the file's bytes.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, GalleryError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format_error(path, format!("not JSON ({e})")))?;
        if value.get("format").and_then(Value::as_str) != Some("amfp-gallery") {
            return Err(format_error(path, "its \"format\" is not \"amfp-gallery\""));
        }
        let doc = Self { path: path.to_owned(), sha256: hex(&Sha256::digest(bytes)), value };
        if doc.version() == 0 || !doc.value["machines"].is_array() {
            return Err(format_error(path, "it has no \"version\" >= 1 or no \"machines\" array"));
        }
        Ok(doc)
    }

    /// The version number.
    pub fn version(&self) -> u32 {
        self.value["version"].as_u64().unwrap_or(0) as u32
    }

    /// sha256 of the parent version (none for a freshly fitted gallery).
    pub fn parent_sha256(&self) -> Option<&str> {
        self.value["parent_sha256"].as_str()
    }

    /// When this version was written.
    pub fn created(&self) -> &str {
        self.value["created"].as_str().unwrap_or("")
    }

    /// The model the gallery belongs to: name and sha256.
    pub fn model(&self) -> (&str, &str) {
        let m = &self.value["model"];
        (m["name"].as_str().unwrap_or(""), m["sha256"].as_str().unwrap_or(""))
    }

    /// The change history, oldest first (entries that do not parse are left out).
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.value["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|e| serde_json::from_value(e.clone()).ok()).collect())
            .unwrap_or_default()
    }

    /// The machines' labels, in file order.
    pub fn labels(&self) -> Vec<String> {
        self.machines().iter().filter_map(|m| m["label"].as_str().map(String::from)).collect()
    }

    /// The machine entries as stored (label, process, parts, offset, notes; `mean` included).
    pub fn machines(&self) -> &[Value] {
        self.value["machines"].as_array().map(Vec::as_slice).unwrap_or(&[])
    }

    fn machines_mut(&mut self) -> &mut Vec<Value> {
        self.value["machines"].as_array_mut().expect("checked on read")
    }

    /// Adds a machine, or replaces the one with the same label (re-enrollment), keeping its place.
    pub fn put_machine(&mut self, m: &NewMachine) {
        let bytes: Vec<u8> = m.mean.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut entry = json!({
            "label": m.label,
            "process": m.process,
            "parts": m.parts,
            "mean": {"shape": [m.mean.len()], "f32le": base64::engine::general_purpose::STANDARD.encode(bytes)},
            "offset": m.offset,
        });
        if let Some(notes) = &m.notes {
            entry["notes"] = notes.clone().into();
        }
        if let Some(drift) = &m.drift {
            entry["drift"] = serde_json::to_value(drift).expect("a drift reference serialises");
        }
        let machines = self.machines_mut();
        match machines.iter().position(|e| e["label"] == m.label.as_str()) {
            Some(i) => machines[i] = entry,
            None => machines.push(entry),
        }
    }

    /// Removes a machine; false when it is not there.
    pub fn remove_machine(&mut self, label: &str) -> bool {
        let machines = self.machines_mut();
        let before = machines.len();
        machines.retain(|e| e["label"] != label);
        machines.len() < before
    }

    /// Takes the content of `other` (an earlier version: machines, thresholds, statistics),
    /// keeping this document's version, parent and history.
    pub fn restore_from(&mut self, other: &Document) {
        let keep: Vec<(String, Value)> = ["version", "parent_sha256", "created", "history"]
            .iter()
            .map(|k| (k.to_string(), self.value[*k].clone()))
            .collect();
        self.value = other.value.clone();
        for (k, v) in keep {
            self.value[k] = v;
        }
    }

    /// Turns this document into the next version: version + 1, this document's file as the
    /// parent, the time, and one history entry saying who did what and why.
    pub fn next_version(&mut self, action: &str, by: &str, why: &str, labels: &[String]) -> HistoryEntry {
        let version = self.version() + 1;
        let time =
            jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string();
        let entry = HistoryEntry {
            version,
            action: action.into(),
            time: time.clone(),
            by: by.into(),
            why: why.into(),
            labels: labels.to_vec(),
        };
        self.value["version"] = version.into();
        self.value["parent_sha256"] = self.sha256.clone().into();
        self.value["created"] = time.into();
        if !self.value["history"].is_array() {
            self.value["history"] = json!([]);
        }
        let history = self.value["history"].as_array_mut().expect("made an array above");
        history.push(serde_json::to_value(&entry).expect("a history entry serialises"));
        entry
    }

    /// The file's bytes (JSON, indented by one space as `amfp_train.gallery` writes it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        serde::Serialize::serialize(&self.value, &mut ser).expect("a JSON value serialises");
        out.push(b'\n');
        out
    }
}

/// The folder that keeps every version of the gallery at `gallery`:
/// `m.gallery.json` → `m.gallery.versions/`.
pub fn versions_dir(gallery: &Path) -> PathBuf {
    let name = gallery.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".json").unwrap_or(&name);
    gallery.with_file_name(format!("{stem}.versions"))
}

/// The file of version `n` in `dir`.
pub fn version_file(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("v{n}.json"))
}

/// What [`commit`] wrote.
#[derive(Debug, Clone)]
pub struct Committed {
    pub path: PathBuf,
    pub version: u32,
    pub sha256: String,
    /// The id of the key that signed it, when one did.
    pub signed_by: Option<String>,
}

/// Writes `doc` (made with [`Document::next_version`] from `parent`) as the current gallery at
/// `out`, keeping `parent` and the new version in `out`'s versions folder, signed with `signer`
/// when one is given (docs/trust.md). Refuses when `out` already holds a gallery other than
/// `parent` (another chain, or a change made meanwhile).
/// Atomic: a crash at any point leaves a loadable current version, the old or the new, and its
/// signature file holds a valid entry for whichever it is.
pub fn commit(
    out: &Path,
    parent: &Document,
    doc: &Document,
    signer: Option<&SecretKey>,
) -> Result<Committed, GalleryError> {
    let dir = versions_dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let _lock = lock(&dir)?;
    if out.exists() {
        let current = Document::read(out)?;
        if current.sha256 != parent.sha256 {
            return Err(GalleryError::Invalid {
                path: out.to_owned(),
                problems: vec![format!(
                    "it is version {} (sha256 {}), not the version {} (sha256 {}) this change was made from: it was \
                     changed meanwhile, or holds another gallery; make the change again from it (--gallery {})",
                    current.version(),
                    current.sha256,
                    parent.version(),
                    parent.sha256,
                    out.display()
                )],
            });
        }
    }
    // The parent must be in the chain: a gallery fitted elsewhere (or shipped read-only) gets
    // its first version file here, with its signatures.
    let parent_file = version_file(&dir, parent.version());
    if !parent_file.exists() {
        write_atomic(&parent_file, &std::fs::read(&parent.path).map_err(|e| io_error(&parent.path, e))?)?;
        let signatures = trust::read_signatures(&parent.path)?;
        trust::write_signatures(&parent_file, &signatures)?;
    }
    let bytes = doc.to_bytes();
    let sha256 = hex(&Sha256::digest(&bytes));
    let signature = signer.map(|k| k.sign(&bytes));
    let version_path = version_file(&dir, doc.version());
    write_atomic(&version_path, &bytes)?;
    trust::write_signatures(&version_path, signature.as_slice())?;
    // The current file's signatures: the parent's entries and the new one side by side while the
    // file is replaced, then the new one alone.
    let mut signatures = trust::read_signatures(out)?;
    if let Some(entry) = &signature {
        signatures.push(entry.clone());
        trust::write_signatures(out, &signatures)?;
    }
    write_atomic(out, &bytes)?;
    signatures.retain(|e| e.sha256 == sha256);
    trust::write_signatures(out, &signatures)?;
    Ok(Committed { path: out.to_owned(), version: doc.version(), sha256, signed_by: signer.map(|k| k.public().id()) })
}

/// An exclusive lock on the versions folder, so two changes cannot interleave.
fn lock(dir: &Path) -> Result<File, GalleryError> {
    let path = dir.join(".lock");
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io_error(&path, e))?;
    file.lock().map_err(|e| io_error(&path, e))?;
    Ok(file)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GalleryError> {
    crate::atomic_file::write(path, bytes).map_err(|e| io_error(path, e))
}

/// One version found in a gallery's versions folder.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: u32,
    pub path: PathBuf,
    pub sha256: String,
    pub created: String,
    /// Its own history entry (the change that made it).
    pub change: Option<HistoryEntry>,
    pub labels: Vec<String>,
}

/// The audit of a gallery's chain of versions.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Every version found, oldest first.
    pub versions: Vec<Version>,
    /// The current file's version.
    pub current: u32,
    /// Breaks of the chain; empty when it holds.
    pub problems: Vec<String>,
    /// Not breaks: e.g. a version written by a change that was interrupted before it became current.
    pub notes: Vec<String>,
}

/// Reads every version of the gallery at `gallery` and checks the chain: each version's parent
/// hash is its predecessor's sha256, its history extends its predecessor's by its own entry,
/// version numbers follow each other, and the current file is the newest version of the chain.
pub fn audit(gallery: &Path) -> Result<Audit, GalleryError> {
    let current = Document::read(gallery)?;
    let dir = versions_dir(gallery);
    let mut docs: Vec<Document> = Vec::new();
    if dir.is_dir() {
        let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| io_error(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?.strip_prefix('v')?.strip_suffix(".json")?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        numbered.sort();
        for (_, p) in numbered {
            docs.push(Document::read(&p)?);
        }
    }
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    // Versions above the current one are changes that never became current (interrupted).
    while docs.last().is_some_and(|d| d.version() > current.version()) {
        let d = docs.pop().expect("checked");
        notes.push(format!(
            "version {} ({}) was written but never became current (an interrupted change); the next change replaces it",
            d.version(),
            d.path.display()
        ));
    }
    match docs.last() {
        Some(last) if last.sha256 == current.sha256 => {}
        Some(last) => problems.push(format!(
            "the current file (version {}, sha256 {}) is not the newest version kept, {} (sha256 {}): it was changed \
             outside amfp",
            current.version(),
            current.sha256,
            last.path.display(),
            last.sha256
        )),
        None => docs.push(current.clone()),
    }
    for (i, d) in docs.iter().enumerate() {
        let named = d.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if d.path != current.path && named != format!("v{}.json", d.version()) {
            problems.push(format!("{} holds version {}", d.path.display(), d.version()));
        }
        let history = d.history();
        match history.last() {
            Some(e) if e.version == d.version() => {}
            _ => problems.push(format!("version {}: its history does not end with its own change", d.version())),
        }
        let Some(prev) = i.checked_sub(1).map(|j| &docs[j]) else {
            if d.parent_sha256().is_some() && d.version() > 1 {
                notes.push(format!(
                    "the chain starts at version {}: its parent (sha256 {}) is not kept here",
                    d.version(),
                    d.parent_sha256().unwrap_or("")
                ));
            }
            continue;
        };
        if d.version() != prev.version() + 1 {
            problems.push(format!("version {} follows version {}: a version is missing", d.version(), prev.version()));
        }
        if d.parent_sha256() != Some(prev.sha256.as_str()) {
            problems.push(format!(
                "version {} names parent sha256 {}, but version {} has sha256 {}: the chain is broken (a version was \
                 altered or replaced)",
                d.version(),
                d.parent_sha256().unwrap_or("null"),
                prev.version(),
                prev.sha256
            ));
        }
        let before = prev.history();
        if history.len() != before.len() + 1 || history[..before.len()] != before[..] {
            problems.push(format!(
                "version {}: its history does not extend version {}'s by one entry: the record was rewritten",
                d.version(),
                prev.version()
            ));
        }
        if d.model() != prev.model() {
            problems.push(format!("version {} belongs to another model than version {}", d.version(), prev.version()));
        }
    }
    let versions = docs
        .iter()
        .map(|d| Version {
            version: d.version(),
            path: d.path.clone(),
            sha256: d.sha256.clone(),
            created: d.created().to_string(),
            change: d.history().into_iter().rfind(|e| e.version == d.version()),
            labels: d.labels(),
        })
        .collect();
    Ok(Audit { versions, current: current.version(), problems, notes })
}

/// The kept file of version `n` of the gallery at `gallery`.
pub fn read_version(gallery: &Path, n: u32) -> Result<Document, GalleryError> {
    let path = version_file(&versions_dir(gallery), n);
    if !path.exists() {
        return Err(GalleryError::Invalid {
            path: gallery.to_owned(),
            problems: vec![format!(
                "version {n} is not kept ({} does not exist); see `amfp gallery history`",
                path.display()
            )],
        });
    }
    Document::read(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gallery(dir: &Path) -> PathBuf {
        let path = dir.join("m.gallery.json");
        let v = json!({
            "format": "amfp-gallery", "schema": 1, "model": {"name": "m", "sha256": "abc"},
            "version": 1, "parent_sha256": null, "created": "2026-12-04T00:00:00Z",
            "history": [{"version": 1, "action": "fit", "time": "2026-12-04T00:00:00Z", "by": "t", "why": "w", "labels": ["A"]}],
            "machines": [{"label": "A", "process": null, "parts": 3, "mean": {"shape": [1], "f32le": "AACAPw=="}}],
        });
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        path
    }

    fn change(path: &Path, label: &str) -> Committed {
        let parent = Document::read(path).unwrap();
        let mut doc = parent.clone();
        doc.put_machine(&NewMachine {
            label: label.into(),
            process: Some("FDM".into()),
            parts: 10,
            mean: vec![2.0],
            offset: 1.5,
            notes: None,
            drift: Some(super::super::DriftReference { parts: 10, mean_log: 1.0, sd_log: 0.3 }),
        });
        doc.next_version("enroll", "tester", "new supplier", &[label.into()]);
        commit(path, &parent, &doc, None).unwrap()
    }

    #[test]
    fn each_change_is_a_new_version_chained_to_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = gallery(tmp.path());
        let first = Document::read(&path).unwrap();
        let c = change(&path, "B");
        assert_eq!(c.version, 2);
        let now = Document::read(&path).unwrap();
        assert_eq!(now.labels(), ["A", "B"]);
        assert_eq!(now.parent_sha256(), Some(first.sha256.as_str()));
        assert_eq!(now.history().last().unwrap().why, "new supplier");
        // version 1 was archived byte for byte
        assert_eq!(read_version(&path, 1).unwrap().sha256, first.sha256);
        change(&path, "C");
        let audit = audit(&path).unwrap();
        assert!(audit.problems.is_empty(), "{:?}", audit.problems);
        assert_eq!(audit.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(audit.current, 3);
    }

    /// Rewriting a gallery leaves every number it does not change as it was, to the last bit
    /// (serde_json's float_roundtrip), so a version changes only what its history entry says.
    #[test]
    fn numbers_a_change_does_not_touch_survive_to_the_last_bit() {
        let tmp = tempfile::tempdir().unwrap();
        let path = gallery(tmp.path());
        change(&path, "B");
        let text = std::fs::read_to_string(&path).unwrap().replace("\"offset\": 1.5", "\"offset\": 2.0033998518284846");
        std::fs::write(&path, text).unwrap();
        let doc = Document::read(&path).unwrap();
        let again = String::from_utf8(doc.to_bytes()).unwrap();
        assert!(again.contains("\"offset\": 2.0033998518284846"), "{again}");
    }

    #[test]
    fn a_change_made_from_a_stale_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = gallery(tmp.path());
        let stale = Document::read(&path).unwrap();
        change(&path, "B");
        let mut doc = stale.clone();
        doc.remove_machine("A");
        doc.next_version("remove", "t", "w", &["A".into()]);
        let e = commit(&path, &stale, &doc, None).unwrap_err().to_string();
        assert!(e.contains("changed meanwhile"), "{e}");
        assert_eq!(Document::read(&path).unwrap().labels(), ["A", "B"]);
    }

    #[test]
    fn the_audit_finds_an_altered_version_a_rewritten_history_and_an_edited_current_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = gallery(tmp.path());
        change(&path, "B");
        change(&path, "C");
        let dir = versions_dir(&path);
        // An altered middle version breaks the parent hash of the next.
        let v2 = version_file(&dir, 2);
        let text = std::fs::read_to_string(&v2).unwrap().replace("new supplier", "forged");
        std::fs::write(&v2, &text).unwrap();
        let a = audit(&path).unwrap();
        assert!(a.problems.iter().any(|p| p.contains("version 3 names parent")), "{:?}", a.problems);
        assert!(a.problems.iter().any(|p| p.contains("history does not extend")), "{:?}", a.problems);
        // The current file edited by hand no longer matches the newest version kept.
        let tmp = tempfile::tempdir().unwrap();
        let path = gallery(tmp.path());
        change(&path, "B");
        let text = std::fs::read_to_string(&path).unwrap().replace("\"parts\": 10", "\"parts\": 11");
        std::fs::write(&path, text).unwrap();
        let a = audit(&path).unwrap();
        assert!(a.problems.iter().any(|p| p.contains("changed outside amfp")), "{:?}", a.problems);
    }

    #[test]
    fn an_interrupted_change_leaves_the_previous_version_current() {
        let tmp = tempfile::tempdir().unwrap();
        let path = gallery(tmp.path());
        change(&path, "B");
        // As if killed after the new version's file was written, before the current was replaced.
        let parent = Document::read(&path).unwrap();
        let mut doc = parent.clone();
        doc.remove_machine("A");
        doc.next_version("remove", "t", "w", &["A".into()]);
        write_atomic(&version_file(&versions_dir(&path), 3), &doc.to_bytes()).unwrap();
        let a = audit(&path).unwrap();
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(a.current, 2);
        assert!(a.notes.iter().any(|n| n.contains("never became current")), "{:?}", a.notes);
        // The next change goes through and replaces the orphan.
        let c = change(&path, "C");
        assert_eq!(c.version, 3);
        assert!(audit(&path).unwrap().problems.is_empty());
    }
}
