//! The fast engine: onnxruntime, loaded at run time from `libonnxruntime.so`.
//!
//! amfp links nothing of onnxruntime at build time (the `ort` crate's `load-dynamic`): the
//! library is found when the first model loads, in this order (docs/engines.md):
//!
//! 1. `model.onnxruntime` in the configuration (only that file is tried);
//! 2. `ORT_DYLIB_PATH`, the `ort` crate's own variable;
//! 3. beside the binary: `<bin>/../lib/amfp/libonnxruntime.so` (the Debian package's
//!    /usr/lib/amfp/) and `<bin>/libonnxruntime.so`;
//! 4. a source checkout: `build/onnxruntime/<arch>/libonnxruntime.so` in a folder above the
//!    binary, where `scripts/fetch-onnxruntime` puts the library of the pinned PyPI wheel;
//! 5. the system's loader path (`libonnxruntime.so.1`, e.g. Debian 13's libonnxruntime1.21).
//!
//! The library is probed before `ort` sees it: it must open on this architecture, export
//! onnxruntime's C API and be version 1.17 or newer (the API level `ort` is built for). Once one
//! has loaded it serves the whole process (onnxruntime keeps one global API table).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::{InferenceError, ModelError, Outputs, Shape};

/// The oldest onnxruntime whose C API `ort` is built for (no `api-*` feature: API level 17).
const MIN_MINOR: u32 = ort::MINOR_VERSION;

/// Where a source checkout keeps the fetched library, relative to a folder above the binary.
const CHECKOUT_DIR: &str = "build/onnxruntime";

/// The library's file name in amfp's own layouts.
const LIBRARY_NAME: &str = "libonnxruntime.so";

/// The loaded library: which file, which version, and the environment every session shares.
#[derive(Clone)]
pub(super) struct Runtime {
    pub(super) library: PathBuf,
    pub(super) version: String,
    env: ort::environment::Environment,
}

/// The process's runtime, once one library has loaded.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Why onnxruntime's library could not be used: each place tried and what went wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "onnxruntime's library could not be loaded ({}); fetch it with `scripts/fetch-onnxruntime` in a source checkout, \
     install the amfp package (it ships /usr/lib/amfp/libonnxruntime.so on amd64 and arm64), or set model.onnxruntime \
     to a libonnxruntime.so for {}, version 1.{MIN_MINOR} or newer; model.engine = \"tract\" runs without it",
    tried.iter().map(|(place, why)| format!("{place}: {why}")).collect::<Vec<_>>().join("; "),
    std::env::consts::ARCH
)]
pub struct LibraryError {
    /// Each candidate and why it failed, in the order tried.
    pub tried: Vec<(String, String)>,
}

/// Loads (once per process) the onnxruntime library: `explicit` only, when given, else the
/// first candidate that works. Returns its path and version.
fn runtime(explicit: Option<&Path>) -> Result<Runtime, LibraryError> {
    let mut loaded = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = loaded.as_ref() {
        if let Some(want) = explicit
            && want != runtime.library
        {
            return Err(LibraryError {
                tried: vec![(
                    want.display().to_string(),
                    format!(
                        "this process already runs onnxruntime from {} (one library per process)",
                        runtime.library.display()
                    ),
                )],
            });
        }
        return Ok(runtime.clone());
    }
    let mut tried = Vec::new();
    for candidate in candidates(explicit) {
        let place = candidate.display().to_string();
        match probe(&candidate).and_then(|version| {
            let env = ort::init_from(&candidate)
                .map_err(|e| e.to_string())?
                .with_name("amfp")
                .build()
                .map_err(|e| format!("onnxruntime could not start: {e}"))?;
            Ok((version, env))
        }) {
            Ok((version, env)) => {
                let runtime = Runtime { library: candidate, version, env };
                *loaded = Some(runtime.clone());
                return Ok(runtime);
            }
            // A file that is not there is not worth a line unless it was asked for.
            Err(why) if why == NOT_FOUND && explicit.is_none() && candidate.is_absolute() => {}
            Err(why) => tried.push((place, why)),
        }
    }
    if tried.is_empty() {
        tried.push(("every place amfp looks (docs/engines.md)".into(), "no libonnxruntime.so found".into()));
    }
    Err(LibraryError { tried })
}

/// What [`probe`] says of a file that does not exist.
const NOT_FOUND: &str = "no such file";

/// The places to look, in order (module docs).
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(bin) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)) {
        if let Some(prefix) = bin.parent() {
            out.push(prefix.join("lib/amfp").join(LIBRARY_NAME));
        }
        out.push(bin.join(LIBRARY_NAME));
        for dir in bin.ancestors().take(5) {
            out.push(dir.join(CHECKOUT_DIR).join(std::env::consts::ARCH).join(LIBRARY_NAME));
        }
    }
    // Bare names: the system loader's search path.
    out.push(PathBuf::from("libonnxruntime.so.1"));
    out
}

/// Opens `path` and asks it for its version: an onnxruntime library of this architecture, with
/// the C API `ort` needs, or the reason it is not.
fn probe(path: &Path) -> Result<String, String> {
    if path.is_absolute() {
        if !path.exists() {
            return Err(NOT_FOUND.into());
        }
        check_architecture(path)?;
    }
    // SAFETY: opening a shared library runs its initialisers; the file is either the one the
    // configuration names or one in amfp's own library locations, which is what amfp is for.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| with_sources(&e))?;
    // SAFETY: OrtGetApiBase is onnxruntime's entry point, `const OrtApiBase* (void)`.
    let get_base = unsafe { lib.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase") }
        .map_err(|_| "not an onnxruntime library (it has no OrtGetApiBase)".to_string())?;
    // SAFETY: the base is a static table in the library; GetVersionString returns a static,
    // NUL-terminated string. Both stay valid while `lib` is open.
    let version = unsafe {
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned nothing".into());
        }
        std::ffi::CStr::from_ptr(((*base).GetVersionString)()).to_string_lossy().into_owned()
    };
    let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok());
    match (version.split('.').next(), minor) {
        (Some("1"), Some(m)) if m >= MIN_MINOR => Ok(version),
        _ => Err(format!("it is onnxruntime {version}; amfp needs 1.{MIN_MINOR} or newer")),
    }
}

/// ELF machine codes of the architectures amfp builds for.
const ELF_MACHINES: [(u16, &str); 4] = [(0x3e, "x86_64"), (0xb7, "aarch64"), (0x28, "arm"), (0x03, "x86")];

/// Refuses a shared library built for another architecture by its ELF header: the loader
/// would only say "No such file or directory".
fn check_architecture(path: &Path) -> Result<(), String> {
    let mut header = [0u8; 20];
    let read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
    if read.is_err() || header[..4] != *b"\x7fELF" {
        return Err("not a shared library (no ELF header)".into());
    }
    let machine = if header[5] == 2 {
        u16::from_be_bytes([header[18], header[19]])
    } else {
        u16::from_le_bytes([header[18], header[19]])
    };
    let name = |m: u16| ELF_MACHINES.iter().find(|(code, _)| *code == m).map(|(_, n)| *n);
    match name(machine) {
        Some(arch) if arch == std::env::consts::ARCH => Ok(()),
        Some(arch) => Err(format!("it is a library for {arch}, and this amfp runs on {}", std::env::consts::ARCH)),
        None => Err(format!("it is a library for another architecture (ELF machine {machine:#x})")),
    }
}

/// An error and its sources, as one line (libloading's "dlopen failed" keeps the loader's
/// reason, e.g. "wrong ELF class", in its source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        text.push_str(": ");
        text.push_str(&source.to_string());
        next = source.source();
    }
    text
}

/// Sessions of one model. `ort` runs a session from one thread at a time, so concurrent callers
/// (`amfp identify --threads`) each take a session from the pool, made on first need.
pub(super) struct OrtEngine {
    bytes: Vec<u8>,
    threads: usize,
    idle: Mutex<Vec<Session>>,
    /// The library it runs on (its path and version go into results and `model inspect`).
    pub(super) runtime: Runtime,
}

impl OrtEngine {
    /// Loads the library (once per process) and makes the first session of `bytes`.
    pub(super) fn load(
        path: &Path,
        bytes: &[u8],
        shape: &Shape,
        threads: usize,
        library: Option<&Path>,
    ) -> Result<Self, ModelError> {
        let runtime = runtime(library).map_err(ModelError::OnnxRuntimeLibrary)?;
        let engine = Self { bytes: bytes.to_vec(), threads: threads.max(1), idle: Mutex::new(Vec::new()), runtime };
        let session = engine.session().map_err(|detail| ModelError::Engine {
            path: path.to_owned(),
            engine: "onnxruntime",
            detail,
        })?;
        check_outputs(&session, shape)
            .map_err(|detail| ModelError::NotAnImageModel { path: path.to_owned(), detail })?;
        engine.idle.lock().unwrap_or_else(PoisonError::into_inner).push(session);
        Ok(engine)
    }

    /// A new session of the model on this engine's threads, all graph optimisations on.
    fn session(&self) -> Result<Session, String> {
        let text = |e: ort::Error<_>| e.to_string();
        let builder = Session::builder(&self.runtime.env).map_err(|e| e.to_string())?;
        let builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(text)?;
        let builder = builder.with_intra_threads(self.threads).map_err(text)?;
        let mut builder = builder.with_inter_threads(1).map_err(text)?;
        builder.commit_from_memory(&self.bytes).map_err(|e| e.to_string())
    }

    /// Runs one batch of `shape.batch` ROIs in one call.
    pub(super) fn run(&self, shape: &Shape, input: &[f32], name: &str) -> Result<Outputs, InferenceError> {
        let err = |detail: String| InferenceError { name: name.to_owned(), detail };
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut session = match pooled {
            Some(s) => s,
            None => self.session().map_err(err)?,
        };
        let result = run_session(&mut session, shape, input).map_err(err);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(session);
        result
    }
}

/// One call of `session` on a batch; checks that each output has one row per ROI.
fn run_session(session: &mut Session, shape: &Shape, input: &[f32]) -> Result<Outputs, String> {
    let dims = [shape.batch, shape.channels, shape.roi, shape.roi];
    let tensor = TensorRef::from_array_view((dims, input)).map_err(|e| e.to_string())?;
    let input_name = session.inputs()[0].name().to_owned();
    let outputs = session.run(ort::inputs![input_name => tensor]).map_err(|e| e.to_string())?;
    let rows = |name: &str, width: usize| -> Result<Vec<f32>, String> {
        let value = outputs.get(name).ok_or_else(|| format!("the model gave no output {name:?}"))?;
        let (got, data) = value.try_extract_tensor::<f32>().map_err(|e| format!("output {name:?}: {e}"))?;
        if **got != [shape.batch as i64, width as i64] {
            return Err(format!("output {name:?} has shape {:?}, not [{}, {width}]", &**got, shape.batch));
        }
        Ok(data.to_vec())
    };
    let logits = rows(&shape.logits_output, shape.labels)?;
    let embeddings = match &shape.embedding {
        Some((name, dim)) => rows(name, *dim)?,
        None => Vec::new(),
    };
    Ok(Outputs { logits, embeddings })
}

/// Checks what the session declares: the logits (and embedding) outputs exist as float
/// matrices whose fixed widths match the metadata. Dynamic dimensions are checked on each run.
fn check_outputs(session: &Session, shape: &Shape) -> Result<(), String> {
    let mut wanted = vec![(shape.logits_output.as_str(), shape.labels, "one logit per label")];
    if let Some((name, dim)) = &shape.embedding {
        wanted.push((name.as_str(), *dim, "amfp.embedding_dim"));
    }
    for (name, width, what) in wanted {
        let outlet = session
            .outputs()
            .iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| format!("onnxruntime finds no output {name:?}"))?;
        let dims = outlet.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        let fits = dims.len() == 2 && (dims[1] < 0 || dims[1] == width as i64);
        if !fits {
            return Err(format!("its output {name:?} has shape {dims:?}, not [N, {width}] ({what})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not a shared library, and one that is a library but not onnxruntime,
    /// are refused with the reason; a missing one is "no such file".
    #[test]
    fn probe_names_what_is_wrong_with_a_library() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("libonnxruntime.so");
        std::fs::write(&text, b"not a library").unwrap();
        assert_eq!(probe(&text).unwrap_err(), "not a shared library (no ELF header)");
        // A library of another architecture (an x86-64 header on ARM, an aarch64 one elsewhere).
        let other = if std::env::consts::ARCH == "x86_64" { (0xb7u16, "aarch64") } else { (0x3e, "x86_64") };
        let mut header = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0];
        header.extend(other.0.to_le_bytes());
        header.resize(64, 0);
        let foreign = dir.path().join("foreign.so");
        std::fs::write(&foreign, header).unwrap();
        let why = probe(&foreign).unwrap_err();
        assert!(why.contains(&format!("a library for {}", other.1)), "{why}");
        assert_eq!(probe(&dir.path().join("absent.so")).unwrap_err(), NOT_FOUND);
        // The C library is a real shared library without onnxruntime's entry point.
        let why = probe(Path::new("libc.so.6")).unwrap_err();
        assert!(why.contains("not an onnxruntime library"), "{why}");
    }

    /// The explicit library is the only candidate; otherwise the package's and the checkout's
    /// places come before the system's.
    #[test]
    fn candidates_put_an_explicit_library_alone_and_the_system_last() {
        let explicit = Path::new("/opt/ort/libonnxruntime.so");
        assert_eq!(candidates(Some(explicit)), vec![explicit.to_owned()]);
        let all = candidates(None);
        assert_eq!(all.last().unwrap(), Path::new("libonnxruntime.so.1"));
        assert!(all.iter().any(|p| p.ends_with("lib/amfp/libonnxruntime.so")), "{all:?}");
        let arch = format!("build/onnxruntime/{}/libonnxruntime.so", std::env::consts::ARCH);
        assert!(all.iter().any(|p| p.ends_with(&arch)), "{all:?}");
    }
}
