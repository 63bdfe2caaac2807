//! The durable outbox: results waiting for the broker's acknowledgement, one file each.
//!
//! A result is written here, and the file and its directory are synced, before
//! [`Outbox::push`] returns; it is removed by [`Outbox::ack`] only once the broker has
//! acknowledged it (PUBACK). A crash, a power cut or a broker outage therefore delays results but
//! never loses one that `push` accepted.
//!
//! Layout (docs/mqtt.md): one file per result, `<seq>.msg`, with `seq` a 20-digit zero-padded
//! sequence number so that `ls` lists them in sending order. Each file is one text header line,
//! then the payload exactly as published:
//!
//! ```text
//! amfp-outbox 1 <payload bytes> <crc32 of payload, 8 hex digits> <result id>\n
//! <payload>
//! ```
//!
//! A file is first written as `<seq>.tmp`, synced, renamed to `<seq>.msg` and the directory
//! synced, so a `.msg` file is complete unless the storage lied. At [`Outbox::open`] every
//! `.msg` file is checked (header, length, CRC); one that fails, a torn write after power loss,
//! is renamed to `<seq>.bad` and skipped with a warning, and leftover `.tmp` files (pushes that
//! never returned) are deleted. A lock file (`.lock`, `flock`) keeps two processes from sharing a
//! directory.
//!
//! Policy when full (`max_entries` or `max_bytes` reached): new results are refused with
//! [`OutboxError::Full`] and the oldest are kept. The oldest undelivered results are the ones a
//! fleet is most likely to be missing, and a refusal is visible at once (an error, an event, a
//! log line) while the result still reaches the other sinks (stdout, the local JSONL log);
//! dropping the oldest instead would lose results silently, long after they were accepted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// First word of every entry's header: tells an outbox file from anything else.
const MAGIC: &str = "amfp-outbox";
/// Version of the entry format, second word of the header.
const FORMAT: u32 = 1;
/// Longest accepted header line; a longer one means the file is not an entry.
const MAX_HEADER: usize = 512;
/// Longest result id accepted in a header.
const MAX_ID: usize = 128;
/// Digits of the sequence number in file names.
const SEQ_DIGITS: usize = 20;
/// Name of the lock file that keeps a second process out.
const LOCK_FILE: &str = ".lock";

/// The outbox's bounds, from `mqtt.outbox_max_entries` and `mqtt.outbox_max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most entries kept.
    pub max_entries: u64,
    /// Most bytes kept, counting each file whole (header and payload).
    pub max_bytes: u64,
}

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file system operation failed; the path says where.
    #[error("outbox {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The outbox is full: the result was refused and the oldest ones are kept (module docs).
    #[error(
        "outbox full ({entries} results, {bytes} bytes; limits {max_entries} results, {max_bytes} bytes): result refused until the broker takes the backlog"
    )]
    Full {
        /// Entries held.
        entries: u64,
        /// Bytes held.
        bytes: u64,
        /// `mqtt.outbox_max_entries`.
        max_entries: u64,
        /// `mqtt.outbox_max_bytes`.
        max_bytes: u64,
    },
    /// One result is larger than the whole outbox may be.
    #[error("result of {len} bytes is larger than the outbox ({max_bytes} bytes, mqtt.outbox_max_bytes)")]
    TooLarge {
        /// Size of the entry.
        len: u64,
        /// `mqtt.outbox_max_bytes`.
        max_bytes: u64,
    },
    /// The id cannot be stored in a header (empty, too long, spaces or control characters).
    #[error("result id {0:?} cannot be stored: expected 1 to 128 characters without spaces")]
    BadId(String),
    /// Another process holds the outbox's lock.
    #[error("outbox {} is in use by another process (is a second amfp running?)", .0.display())]
    Locked(PathBuf),
    /// An entry failed its check when read; it was moved aside as `<seq>.bad`.
    #[error("outbox entry {} is damaged ({why}); moved aside as .bad", path.display())]
    Corrupt {
        /// The entry's file, before it was moved.
        path: PathBuf,
        /// What was wrong with it.
        why: String,
    },
}

/// One undelivered result, read back from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in sending order.
    pub seq: u64,
    /// The result's id (the Attribution's ULID).
    pub id: String,
    /// The payload exactly as it is published.
    pub payload: Vec<u8>,
}

/// How full the outbox is, for status lines and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held (whole files).
    pub bytes: u64,
    /// The limits in force.
    pub limits: OutboxLimits,
    /// Whether the outbox is refusing results: a push was refused and nothing has been
    /// acknowledged since.
    pub full: bool,
    /// Results refused since the outbox was opened.
    pub refused: u64,
}

/// What [`Outbox::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Intact entries found, in order: they will be sent.
    pub entries: u64,
    /// Files that were not usable, and why: damaged entries (moved aside as `.bad`) and
    /// unfinished writes (`.tmp`, deleted). Each was also logged as a warning.
    pub discarded: Vec<(PathBuf, String)>,
}

/// Size and id of an entry held, without its payload.
#[derive(Debug, Clone)]
struct Meta {
    id: String,
    len: u64,
}

/// The in-memory index of the directory.
#[derive(Debug, Default)]
struct Index {
    entries: BTreeMap<u64, Meta>,
    bytes: u64,
    next_seq: u64,
    refusing: bool,
    refused: u64,
}

/// A durable FIFO of result payloads in a directory (module docs). Shared between tasks by
/// reference: every method takes `&self`.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    index: Mutex<Index>,
    /// Serialises pushes so that entries become visible in sequence order.
    writer: Mutex<()>,
    /// Held open for its `flock` for as long as the outbox lives.
    _lock: File,
}

impl Outbox {
    /// Opens (creating it, mode 0700) the outbox in `dir`, takes its lock, checks every entry and
    /// indexes the intact ones in order. Damaged entries are moved aside and unfinished writes
    /// deleted, each with a warning; see [`Recovery`].
    pub fn open(dir: &Path, limits: OutboxLimits) -> Result<(Self, Recovery), OutboxError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OutboxError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let mut index = Index { next_seq: 1, ..Index::default() };
        let mut recovery = Recovery::default();
        let mut discard = |path: PathBuf, why: String| {
            log::warn!("outbox: skipping {}: {why}", path.display());
            recovery.discarded.push((path, why));
        };
        let mut names: Vec<(u64, String)> = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some((seq, ext)) = parse_name(&name) {
                index.next_seq = index.next_seq.max(seq + 1);
                names.push((seq, ext.to_string()));
            }
        }
        names.sort();
        for (seq, ext) in names {
            let path = dir.join(file_name(seq, &ext));
            match ext.as_str() {
                "tmp" => {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    discard(path, "unfinished write (the push never returned); deleted".into());
                }
                "msg" => match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| decode(&b)) {
                    Ok((id, payload_len)) => {
                        let len = fs::metadata(&path).map_err(io_err(&path))?.len();
                        debug_assert!(len >= payload_len);
                        index.bytes += len;
                        index.entries.insert(seq, Meta { id, len });
                    }
                    Err(why) => {
                        let bad = dir.join(file_name(seq, "bad"));
                        fs::rename(&path, &bad).map_err(io_err(&path))?;
                        discard(path, format!("{why}; moved aside as {}", bad.display()));
                    }
                },
                _ => {}
            }
        }
        recovery.entries = index.entries.len() as u64;
        let outbox =
            Self { dir: dir.to_path_buf(), limits, index: Mutex::new(index), writer: Mutex::new(()), _lock: lock };
        Ok((outbox, recovery))
    }

    /// The directory this outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a result and makes it durable (file and directory synced) before returning its
    /// sequence number. Refuses it, keeping the older ones, when the outbox is full.
    pub fn push(&self, id: &str, payload: &[u8]) -> Result<u64, OutboxError> {
        if id.is_empty() || id.len() > MAX_ID || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(OutboxError::BadId(id.to_string()));
        }
        let bytes = encode(id, payload);
        let len = bytes.len() as u64;
        let _writing = lock(&self.writer);
        let seq = {
            let mut index = lock(&self.index);
            if len > self.limits.max_bytes {
                index.refused += 1;
                return Err(OutboxError::TooLarge { len, max_bytes: self.limits.max_bytes });
            }
            let entries = index.entries.len() as u64;
            if entries >= self.limits.max_entries || index.bytes + len > self.limits.max_bytes {
                index.refusing = true;
                index.refused += 1;
                return Err(OutboxError::Full {
                    entries,
                    bytes: index.bytes,
                    max_entries: self.limits.max_entries,
                    max_bytes: self.limits.max_bytes,
                });
            }
            let seq = index.next_seq;
            index.next_seq += 1;
            seq
        };
        let tmp = self.dir.join(file_name(seq, "tmp"));
        let path = self.dir.join(file_name(seq, "msg"));
        if let Err(e) = write_durably(&self.dir, &tmp, &path, &bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut index = lock(&self.index);
        index.bytes += len;
        index.entries.insert(seq, Meta { id: id.to_string(), len });
        Ok(seq)
    }

    /// Removes an entry once the broker has acknowledged it. Not synced: after a power cut an
    /// acknowledged entry may come back and be sent again, a duplicate with the same id.
    /// Acknowledging an entry that is not there is not an error.
    pub fn ack(&self, seq: u64) -> Result<(), OutboxError> {
        let mut index = lock(&self.index);
        if let Some(meta) = index.entries.remove(&seq) {
            index.bytes -= meta.len;
            index.refusing = false;
            drop(index);
            let path = self.dir.join(file_name(seq, "msg"));
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(OutboxError::Io { path, source: e });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The sequence number of the oldest entry after `after` (all entries: `None`), in
    /// sending order.
    pub fn next_after(&self, after: Option<u64>) -> Option<u64> {
        let index = lock(&self.index);
        let from = after.map_or(0, |s| s.saturating_add(1));
        index.entries.range(from..).next().map(|(seq, _)| *seq)
    }

    /// Reads an entry back, checking it. A damaged entry is moved aside as `.bad` and
    /// dropped from the outbox ([`OutboxError::Corrupt`]); one whose file vanished is dropped too.
    pub fn read(&self, seq: u64) -> Result<Entry, OutboxError> {
        let path = self.dir.join(file_name(seq, "msg"));
        let checked = match fs::read(&path) {
            Ok(bytes) => decode(&bytes).map(|(id, payload_len)| {
                let start = bytes.len() - payload_len as usize;
                Entry { seq, id, payload: bytes[start..].to_vec() }
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err("the file is gone".into()),
            Err(e) => return Err(OutboxError::Io { path, source: e }),
        };
        checked.map_err(|why| {
            self.forget(seq);
            let bad = self.dir.join(file_name(seq, "bad"));
            let _ = fs::rename(&path, &bad);
            log::warn!("outbox: skipping {}: {why}", path.display());
            OutboxError::Corrupt { path, why }
        })
    }

    /// How full the outbox is.
    pub fn stats(&self) -> OutboxStats {
        let index = lock(&self.index);
        OutboxStats {
            entries: index.entries.len() as u64,
            bytes: index.bytes,
            limits: self.limits,
            full: index.refusing,
            refused: index.refused,
        }
    }

    /// Ids of the entries held, oldest first (for diagnostics and tests).
    pub fn ids(&self) -> Vec<String> {
        lock(&self.index).entries.values().map(|m| m.id.clone()).collect()
    }

    /// Drops an entry from the index without touching its file.
    fn forget(&self, seq: u64) {
        let mut index = lock(&self.index);
        if let Some(meta) = index.entries.remove(&seq) {
            index.bytes -= meta.len;
        }
    }
}

/// Locks a mutex; a panic elsewhere while holding it leaves the index consistent (every
/// update is a single insert or remove), so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `<seq>.<ext>` with the sequence number zero-padded.
fn file_name(seq: u64, ext: &str) -> String {
    format!("{seq:0SEQ_DIGITS$}.{ext}")
}

/// The sequence number and extension of an outbox file name, if it is one.
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != SEQ_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !matches!(ext, "msg" | "tmp" | "bad") {
        return None;
    }
    stem.parse().ok().map(|seq| (seq, ext))
}

/// An entry's bytes: header line, then payload.
fn encode(id: &str, payload: &[u8]) -> Vec<u8> {
    let crc = crc32fast::hash(payload);
    let mut out = format!("{MAGIC} {FORMAT} {} {crc:08x} {id}\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Checks an entry's bytes; returns its id and payload length, or what is wrong.
fn decode(bytes: &[u8]) -> Result<(String, u64), String> {
    let head_end =
        bytes.iter().take(MAX_HEADER).position(|&b| b == b'\n').ok_or("no complete header line (torn write?)")?;
    let header = std::str::from_utf8(&bytes[..head_end]).map_err(|_| "header is not text")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, format, len, crc, id] = fields[..] else {
        return Err(format!("malformed header {header:?}"));
    };
    if magic != MAGIC || format != FORMAT.to_string() {
        return Err(format!("not an amfp outbox entry (header {header:?})"));
    }
    let len: u64 = len.parse().map_err(|_| format!("malformed length in header {header:?}"))?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("malformed checksum in header {header:?}"))?;
    let payload = &bytes[head_end + 1..];
    if payload.len() as u64 != len {
        return Err(format!("payload is {} bytes, header says {len} (torn write?)", payload.len()));
    }
    if crc32fast::hash(payload) != crc {
        return Err("payload checksum mismatch".into());
    }
    Ok((id.to_string(), len))
}

/// Writes `bytes` to `tmp`, syncs it, renames it to `path` and syncs the directory.
fn write_durably(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), OutboxError> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |source| OutboxError::Io { path: p, source }
    };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp).map_err(at(tmp))?;
    f.write_all(bytes).map_err(at(tmp))?;
    f.sync_all().map_err(at(tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(at(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: OutboxLimits = OutboxLimits { max_entries: 1000, max_bytes: 1 << 20 };

    fn open(dir: &Path) -> (Outbox, Recovery) {
        Outbox::open(dir, ROOMY).unwrap()
    }

    fn drain(outbox: &Outbox) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = None;
        while let Some(seq) = outbox.next_after(at) {
            let e = outbox.read(seq).unwrap();
            out.push((e.id, e.payload));
            at = Some(seq);
        }
        out
    }

    #[test]
    fn keeps_order_and_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, recovery) = open(dir.path());
        assert_eq!(recovery, Recovery::default());
        for i in 0..5 {
            outbox.push(&format!("id{i}"), format!("{{\"n\":{i}}}").as_bytes()).unwrap();
        }
        let got = drain(&outbox);
        assert_eq!(got.len(), 5);
        for (i, (id, payload)) in got.iter().enumerate() {
            assert_eq!(id, &format!("id{i}"));
            assert_eq!(payload, format!("{{\"n\":{i}}}").as_bytes());
        }
        // Names sort in sending order and the payload is readable as is.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".msg"))
            .collect();
        names.sort();
        assert_eq!(names[0], "00000000000000000001.msg");
        let text = fs::read_to_string(dir.path().join(&names[4])).unwrap();
        assert!(text.starts_with("amfp-outbox 1 7 "), "{text}");
        assert!(text.ends_with(" id4\n{\"n\":4}"), "{text}");
    }

    #[test]
    fn ack_removes_only_that_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = open(dir.path());
        let a = outbox.push("a", b"1").unwrap();
        let b = outbox.push("b", b"22").unwrap();
        let c = outbox.push("c", b"333").unwrap();
        outbox.ack(b).unwrap();
        outbox.ack(b).unwrap(); // twice is harmless
        assert_eq!(outbox.ids(), ["a", "c"]);
        assert_eq!(outbox.next_after(Some(a)), Some(c));
        assert!(!dir.path().join(file_name(b, "msg")).exists());
        let stats = outbox.stats();
        assert_eq!(stats.entries, 2);
        assert_eq!(stats.bytes, (encode("a", b"1").len() + encode("c", b"333").len()) as u64);
    }

    #[test]
    fn survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (outbox, _) = open(dir.path());
            for id in ["x", "y", "z"] {
                outbox.push(id, id.as_bytes()).unwrap();
            }
            let first = outbox.next_after(None).unwrap();
            outbox.ack(first).unwrap();
        }
        let (outbox, recovery) = open(dir.path());
        assert_eq!(recovery.entries, 2);
        assert_eq!(outbox.ids(), ["y", "z"]);
        // New entries go after the old ones.
        outbox.push("w", b"w").unwrap();
        let ids: Vec<_> = drain(&outbox).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["y", "z", "w"]);
    }

    #[test]
    fn torn_entries_are_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (outbox, _) = open(dir.path());
            for id in ["a", "b", "c"] {
                outbox.push(id, b"{\"payload\":true}").unwrap();
            }
        }
        // Power loss: the last entry's payload cut short, a push that never finished, and a
        // middle entry with a flipped byte.
        let last = dir.path().join(file_name(3, "msg"));
        let bytes = fs::read(&last).unwrap();
        fs::write(&last, &bytes[..bytes.len() - 4]).unwrap();
        fs::write(dir.path().join(file_name(4, "tmp")), b"amfp-outbox 1 9").unwrap();
        let middle = dir.path().join(file_name(2, "msg"));
        let mut bytes = fs::read(&middle).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&middle, bytes).unwrap();

        let (outbox, recovery) = open(dir.path());
        assert_eq!(outbox.ids(), ["a"]);
        assert_eq!(recovery.entries, 1);
        let whys: Vec<&str> = recovery.discarded.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(whys.len(), 3, "{whys:?}");
        assert!(whys[0].contains("checksum mismatch"), "{whys:?}");
        assert!(whys[1].contains("torn write"), "{whys:?}");
        assert!(whys[2].contains("unfinished write"), "{whys:?}");
        assert!(dir.path().join(file_name(3, "bad")).exists());
        assert!(!dir.path().join(file_name(4, "tmp")).exists());
        // Sequence numbers are not reused.
        assert_eq!(outbox.push("d", b"d").unwrap(), 5);
    }

    #[test]
    fn damage_found_when_reading_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = open(dir.path());
        let a = outbox.push("a", b"aaaa").unwrap();
        outbox.push("b", b"bbbb").unwrap();
        fs::write(dir.path().join(file_name(a, "msg")), b"garbage").unwrap();
        assert!(matches!(outbox.read(a), Err(OutboxError::Corrupt { .. })));
        assert_eq!(outbox.ids(), ["b"]);
        assert!(dir.path().join(file_name(a, "bad")).exists());
    }

    #[test]
    fn full_refuses_new_and_keeps_old() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits { max_entries: 2, max_bytes: 1 << 20 };
        let (outbox, _) = Outbox::open(dir.path(), limits).unwrap();
        let a = outbox.push("a", b"1").unwrap();
        outbox.push("b", b"2").unwrap();
        let e = outbox.push("c", b"3").unwrap_err();
        assert!(matches!(e, OutboxError::Full { entries: 2, .. }), "{e}");
        assert!(e.to_string().contains("result refused"), "{e}");
        let stats = outbox.stats();
        assert!(stats.full);
        assert_eq!(stats.refused, 1);
        assert_eq!(outbox.ids(), ["a", "b"]);
        outbox.ack(a).unwrap();
        assert!(!outbox.stats().full);
        outbox.push("c", b"3").unwrap();
        assert_eq!(outbox.ids(), ["b", "c"]);

        // The byte bound works the same way, and one result larger than the outbox says so.
        let dir = tempfile::tempdir().unwrap();
        let one = encode("a", &[b'x'; 100]).len() as u64;
        let limits = OutboxLimits { max_entries: 100, max_bytes: 2 * one };
        let (outbox, _) = Outbox::open(dir.path(), limits).unwrap();
        outbox.push("a", &[b'x'; 100]).unwrap();
        outbox.push("b", &[b'x'; 100]).unwrap();
        assert!(matches!(outbox.push("c", &[b'x'; 100]), Err(OutboxError::Full { .. })));
        assert!(matches!(outbox.push("d", &[b'x'; 1000]), Err(OutboxError::TooLarge { .. })));
    }

    #[test]
    fn one_process_per_directory_and_ids_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = open(dir.path());
        assert!(matches!(Outbox::open(dir.path(), ROOMY), Err(OutboxError::Locked(_))));
        for bad in ["", "a b", "a\nb", &"x".repeat(129)] {
            assert!(matches!(outbox.push(bad, b"1"), Err(OutboxError::BadId(_))), "{bad:?}");
        }
        drop(outbox);
        open(dir.path());
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let e = Outbox::open(&file.path().join("outbox"), ROOMY).unwrap_err();
        assert!(e.to_string().starts_with("outbox "), "{e}");
    }
}
