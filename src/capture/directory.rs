//! A watched directory: every image dropped into it is one part, judged exactly once.
//!
//! Scanners, other machines and people copy images into a directory (often over SMB or NFS,
//! where inotify sees nothing of remote writes), so the directory is listed every `poll` and a
//! file is taken only once its size and modification time have stayed the same for `settle`:
//! a file still being copied is never read half-written. Hidden files and names that copy
//! tools use while writing (`.part`, `.tmp`, `~`) are ignored.
//!
//! A judged file is moved into `done/` once its Attribution is in every sink (the daemon runs
//! [`Captured::on_done`](super::source::Captured)), so a restart judges again only what had not
//! been delivered; an unreadable file is moved into `failed/` beside a `.error.txt` saying why.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::file::read_frame;
use super::source::{CaptureError, Captured, FrameSource, Grab};
use crate::identify::elapsed_ms;
use crate::result::SourceInfo;

/// Extensions of the images taken (compared in lower case).
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff"];
/// Subdirectory that judged images are moved into.
pub const DONE_DIR: &str = "done";
/// Subdirectory that unreadable images are moved into.
pub const FAILED_DIR: &str = "failed";

/// What a file looked like when last listed, and since when.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
    since: Instant,
}

/// A directory source; see the module docs.
#[derive(Debug)]
pub struct WatchedDirectory {
    dir: PathBuf,
    settle: Duration,
    poll: Duration,
    /// Files seen but not yet settled.
    pending: BTreeMap<PathBuf, Seen>,
    /// Settled files waiting to be read, oldest name first.
    ready: VecDeque<PathBuf>,
    /// Files handed out whose results are not yet in every sink: not taken again.
    in_flight: Arc<Mutex<HashSet<PathBuf>>>,
    last_listing: Option<Instant>,
}

impl WatchedDirectory {
    /// Watches `dir`, which must exist; creates `done/` and `failed/` in it.
    pub fn open(dir: &Path, settle: Duration, poll: Duration) -> Result<Self, CaptureError> {
        if !dir.is_dir() {
            return Err(CaptureError::Fatal(format!(
                "source.dir {} is not a directory; create it or set source.dir to the directory images are copied into",
                dir.display()
            )));
        }
        for sub in [DONE_DIR, FAILED_DIR] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                CaptureError::Fatal(format!(
                    "cannot create {}: {e}; the daemon needs write access to source.dir",
                    dir.join(sub).display()
                ))
            })?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            settle,
            poll,
            pending: BTreeMap::new(),
            ready: VecDeque::new(),
            in_flight: Arc::default(),
            last_listing: None,
        })
    }

    /// Lists the directory: new files start settling, settled ones become ready.
    fn list(&mut self, now: Instant) -> Result<(), CaptureError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| CaptureError::Lost(format!("cannot list {}: {e}", self.dir.display())))?;
        let in_flight = self.in_flight.lock().expect("in-flight set poisoned").clone();
        let mut present = HashSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !is_candidate(&path) || in_flight.contains(&path) || self.ready.contains(&path) {
                continue;
            }
            present.insert(path.clone());
            let now_seen = Seen { len: meta.len(), modified: meta.modified().ok(), since: now };
            match self.pending.get(&path) {
                Some(s) if s.len == now_seen.len && s.modified == now_seen.modified => {
                    if now.duration_since(s.since) >= self.settle {
                        self.pending.remove(&path);
                        self.ready.push_back(path);
                    }
                }
                _ => {
                    self.pending.insert(path, now_seen);
                }
            }
        }
        // Files that went away before settling (renamed by the copier, deleted) are forgotten.
        self.pending.retain(|p, _| present.contains(p));
        Ok(())
    }

    /// Reads one ready file into a frame, or moves it into `failed/`.
    fn take(&mut self, path: PathBuf) -> Result<Grab, CaptureError> {
        let start = Instant::now();
        match read_frame(&path) {
            Ok(frame) => {
                self.in_flight.lock().expect("in-flight set poisoned").insert(path.clone());
                let in_flight = self.in_flight.clone();
                let done_dir = self.dir.join(DONE_DIR);
                let name = path.display().to_string();
                Ok(Grab::Frame(Captured {
                    frame,
                    source: SourceInfo { kind: "directory".into(), name, frame: None },
                    capture_ms: elapsed_ms(start),
                    on_done: Some(Box::new(move |_| {
                        let moved = move_into(&path, &done_dir);
                        in_flight.lock().expect("in-flight set poisoned").remove(&path);
                        moved.map(|_| ())
                    })),
                }))
            }
            Err(e) => {
                let failed = self.dir.join(FAILED_DIR);
                let why = format!("{e}");
                let moved = move_into(&path, &failed).and_then(|to| {
                    let mut note = to.into_os_string();
                    note.push(".error.txt");
                    std::fs::write(note, format!("{why}\n"))
                });
                let whereto = match moved {
                    Ok(()) => format!("moved into {}", failed.display()),
                    Err(m) => format!("and could not be moved into {}: {m}", failed.display()),
                };
                Err(CaptureError::Skipped(format!("{why}; {whereto}")))
            }
        }
    }
}

impl FrameSource for WatchedDirectory {
    fn describe(&self) -> SourceInfo {
        SourceInfo { kind: "directory".into(), name: self.dir.display().to_string(), frame: None }
    }

    fn is_live(&self) -> bool {
        false
    }

    fn grab(&mut self, wait: Duration) -> Result<Grab, CaptureError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(path) = self.ready.pop_front() {
                return self.take(path);
            }
            let now = Instant::now();
            if self.last_listing.is_none_or(|t| now.duration_since(t) >= self.poll) {
                self.last_listing = Some(now);
                self.list(now)?;
                if !self.ready.is_empty() {
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Grab::Idle);
            }
            let next_listing = self.last_listing.map_or(now, |t| t + self.poll);
            std::thread::sleep(next_listing.min(deadline).saturating_duration_since(now).max(Duration::from_millis(1)));
        }
    }
}

/// Whether a file name is an image that is not being written by a copy tool.
pub(crate) fn is_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Moves `path` into `dir`, adding `-1`, `-2`... before the extension if the name is taken.
/// Returns where it went.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut to = dir.join(name);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let mut n = 1;
    while to.exists() {
        to = dir.join(format!("{stem}-{n}{ext}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn only_finished_images_are_candidates() {
        for name in ["a.png", "b.JPG", "c.tiff", "d.jpeg"] {
            assert!(is_candidate(Path::new(name)), "{name}");
        }
        for name in [".a.png", "a.png.part", "a.png~", "a.tmp", "notes.txt", "noext"] {
            assert!(!is_candidate(Path::new(name)), "{name}");
        }
    }

    /// A file being copied (its size still changing) is not taken; once it has kept its size
    /// for `settle`, it is.
    #[test]
    fn a_file_is_taken_only_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WatchedDirectory::open(dir.path(), Duration::from_secs(1), Duration::ZERO).unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"first half").unwrap();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        w.list(at(0)).unwrap();
        w.list(at(500)).unwrap();
        assert!(w.ready.is_empty(), "not settled yet");
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b" and the rest").unwrap();
        w.list(at(1200)).unwrap();
        assert!(w.ready.is_empty(), "it grew: the settling starts again");
        w.list(at(2000)).unwrap();
        assert!(w.ready.is_empty(), "800 ms unchanged is not 1 s");
        w.list(at(2300)).unwrap();
        assert_eq!(w.ready, std::slice::from_ref(&file));
        // Taken once: listing again does not queue it twice.
        w.list(at(2400)).unwrap();
        assert_eq!(w.ready.len(), 1);
    }

    #[test]
    fn a_taken_name_gets_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        std::fs::create_dir(&done).unwrap();
        for _ in 0..2 {
            let p = dir.path().join("x.png");
            std::fs::write(&p, b"x").unwrap();
            move_into(&p, &done).unwrap();
        }
        assert!(done.join("x.png").exists() && done.join("x-1.png").exists());
    }
}
