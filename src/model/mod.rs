//! Loading an ONNX model and running it on batches of ROIs, on onnxruntime or tract.
//!
//! A model is loaded once: the file is hashed (the sha256 goes into every result, so a fleet
//! manager knows exactly which model judged a part), its metadata contract is checked, its
//! input and output are checked to be an image batch and one logit per label, and an engine
//! prepares it for batches of ROIs. Two engines run the same contract (docs/engines.md):
//! onnxruntime (the `onnxruntime` module: fast, a library loaded at run time) and tract (the
//! `tract` module: pure Rust, everywhere). `model.engine = "auto"` takes onnxruntime when its
//! library loads and tract otherwise; nothing above this module knows which runs, beyond the
//! [`EngineInfo`] it reports. The loaded [`Model`] is immutable and can be shared between
//! threads.

pub mod metadata;
mod onnxruntime;
mod tract;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::Framework;

use crate::trust::{Signer, Trust, TrustError};

pub use metadata::{EmbeddingSpec, MetadataError, ModelMetadata};
pub use onnxruntime::LibraryError;
pub use tract::multithread_executor;

/// ONNX's code for float32 tensors (TensorProto.DataType.FLOAT).
const ONNX_FLOAT: i32 = 1;

/// A model amfp can run: its metadata, identity, and the engine prepared to run it.
pub struct Model {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Hex sha256 of the file: identifies the exact model in results.
    pub sha256: String,
    /// The `amfp.*` contract.
    pub meta: ModelMetadata,
    /// The graph's declared input and output, as in the file (for `amfp model inspect`).
    pub signature: Signature,
    /// Which engine runs it (reported in results, the status and `amfp model inspect`).
    pub engine: EngineInfo,
    /// Why `auto` runs on tract: onnxruntime's library could not be loaded (with the fix).
    pub fallback: Option<String>,
    /// The trusted key that signed the file, when `[trust]` requires signatures.
    pub signed_by: Option<Signer>,
    /// The keys this model was checked against; its galleries are checked against the same.
    trust: Trust,
    shape: Shape,
    backend: Backend,
}

/// The engine that runs a loaded model.
enum Backend {
    Tract(tract::TractEngine),
    OnnxRuntime(onnxruntime::OrtEngine),
}

/// What the engines need to know of a model's tensors (from the metadata and the signature).
#[derive(Debug, Clone)]
struct Shape {
    /// ROIs per [`Model::run`] call.
    batch: usize,
    channels: usize,
    roi: usize,
    labels: usize,
    logits_output: String,
    /// The embedding output's name and width, when the model has one.
    embedding: Option<(String, usize)>,
}

impl Shape {
    /// Floats in one ROI.
    fn roi_len(&self) -> usize {
        self.channels * self.roi * self.roi
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("name", &self.meta.name)
            .field("batch", &self.shape.batch)
            .field("engine", &self.engine)
            .finish()
    }
}

/// Which engine to run models on (`model.engine`, `--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// onnxruntime when its library loads, tract otherwise (said once in the log).
    #[default]
    Auto,
    /// onnxruntime, or an error naming where its library was looked for and the fix.
    Onnxruntime,
    /// tract, the pure-Rust engine: no library, slower (BENCHMARKS.md).
    Tract,
}

/// An engine that runs models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Onnxruntime,
    Tract,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Onnxruntime => "onnxruntime",
            Engine::Tract => "tract",
        })
    }
}

/// The engine a model runs on, as results and the status report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub name: Engine,
    /// The engine's version (onnxruntime's library's own, or tract's crate version).
    pub version: String,
    /// onnxruntime's library file; absent for tract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
}

impl fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)?;
        if let Some(lib) = &self.library {
            write!(f, " ({})", lib.display())?;
        }
        Ok(())
    }
}

/// A tensor as the ONNX file declares it: name, element type and dimensions (numbers or names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSignature {
    pub name: String,
    pub elem_type: String,
    pub dims: Vec<String>,
}

/// The declared input and output of a model's graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signature {
    pub input: TensorSignature,
    pub output: TensorSignature,
}

/// Why a model cannot be used. Each message names the file, the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}: {source}; check --model or model.path in the configuration")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ONNX model ({detail}); amfp runs ONNX files exported by amfp_train.export")]
    NotOnnx { path: PathBuf, detail: String },
    #[error("model {path}: {source}")]
    Metadata { path: PathBuf, source: MetadataError },
    #[error(
        "model {path} does not take images: {detail}; amfp needs one float32 input [N, C, H, W] and one output [N, classes]"
    )]
    NotAnImageModel { path: PathBuf, detail: String },
    #[error("{engine} cannot run model {path}: {detail}")]
    Engine { path: PathBuf, engine: &'static str, detail: String },
    /// `model.engine = "onnxruntime"` and its library cannot be loaded.
    #[error(transparent)]
    OnnxRuntimeLibrary(LibraryError),
    #[error(
        "a whole-batch plan on {threads} threads needs tract's multithread executor, which this build leaves out; \
         build with `--features tract-executor`, or keep the per-ROI plan (the default), which shares ROIs between threads"
    )]
    NoExecutor { threads: usize },
    /// `[trust]` names keys and the model is not signed by one of them, or a key is unreadable.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Inference failed on a loaded model (an engine's runtime error: rare, and a bug when it happens).
#[derive(Debug, thiserror::Error)]
#[error("inference with model {name} failed: {detail}")]
pub struct InferenceError {
    pub name: String,
    pub detail: String,
}

/// How a model runs (BENCHMARKS.md measures the choices). The results do not depend on them
/// beyond float rounding (each ROI's logits are computed on their own either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Threads per [`Model::logits`] call. onnxruntime: its intra-op threads. tract with
    /// `per_roi`: the batch's ROIs are shared out between that many scoped threads; without,
    /// tract's multithread executor (a private rayon pool) runs inside each op, which only
    /// builds with the `tract-executor` feature (it is the slowest way to use two cores,
    /// BENCHMARKS.md, and adds megabytes to the binary). 1 runs everything on the caller's thread.
    pub threads: usize,
    /// tract only: optimise the plan for one ROI and run a batch ROI by ROI (default): tract's
    /// lazy im2col only applies to a batch of one. `false` optimises for the whole batch (eager
    /// im2col). onnxruntime always runs the whole batch in one call.
    pub per_roi: bool,
    /// Which engine.
    pub engine: EngineChoice,
    /// onnxruntime's library: this file only (`model.onnxruntime`); `None` looks in amfp's
    /// places (docs/engines.md).
    pub onnxruntime_library: Option<PathBuf>,
    /// Public keys (`[trust] keys`): when any is given, the model, and every gallery loaded for
    /// it, must be signed by one of them (docs/trust.md).
    pub trusted_keys: Vec<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            per_roi: true,
            engine: EngineChoice::Auto,
            onnxruntime_library: None,
            trusted_keys: Vec::new(),
        }
    }
}

impl Model {
    /// The keys the model was checked against (`[trust]`): its galleries must be signed by one
    /// of them too.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Loads, checks and prepares a model for batches of `batch` ROIs on the default engine.
    pub fn load(path: &Path, batch: usize) -> Result<Self, ModelError> {
        Self::load_with(path, batch, &LoadOptions::default())
    }

    /// As [`Model::load`], with run options.
    pub fn load_with(path: &Path, batch: usize, options: &LoadOptions) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        Self::from_bytes_with(path, &bytes, batch, options)
    }

    /// As [`Model::load`], from the file's bytes (`path` is only reported).
    pub fn from_bytes(path: &Path, bytes: &[u8], batch: usize) -> Result<Self, ModelError> {
        Self::from_bytes_with(path, bytes, batch, &LoadOptions::default())
    }

    /// As [`Model::load_with`], from the file's bytes (`path` is only reported).
    pub fn from_bytes_with(path: &Path, bytes: &[u8], batch: usize, options: &LoadOptions) -> Result<Self, ModelError> {
        assert!(batch >= 1, "ROI batch must be at least 1");
        let trust = Trust::load(&options.trusted_keys)?;
        let signed_by = trust.check("model", path, bytes)?;
        let sha256 = hex(&Sha256::digest(bytes));
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| ModelError::NotOnnx { path: path.to_owned(), detail: format!("{e:#}") })?;
        let graph = proto
            .graph
            .as_ref()
            .filter(|g| !g.node.is_empty())
            .ok_or_else(|| ModelError::NotOnnx { path: path.to_owned(), detail: "it holds no graph".into() })?;
        let meta = ModelMetadata::from_props(proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())))
            .map_err(|source| ModelError::Metadata { path: path.to_owned(), source })?;
        let not_image = |detail: String| ModelError::NotAnImageModel { path: path.to_owned(), detail };
        let signature = check_signature(graph, &meta).map_err(not_image)?;
        if let Some(spec) = &meta.embedding
            && !graph.output.iter().any(|o| o.name == spec.output)
        {
            let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
            return Err(not_image(format!(
                "amfp.embedding_output names {:?}, but the graph's outputs are {}; re-export the model or add the \
                 output with `python -m amfp_train.embedding` (docs/gallery.md)",
                spec.output,
                names.join(", ")
            )));
        }
        let shape = Shape {
            batch,
            channels: meta.channels as usize,
            roi: meta.roi_px as usize,
            labels: meta.labels.len(),
            logits_output: signature.output.name.clone(),
            embedding: meta.embedding.as_ref().map(|e| (e.output.clone(), e.dim as usize)),
        };
        let ort = || {
            let threads = options.threads;
            onnxruntime::OrtEngine::load(path, bytes, &shape, threads, options.onnxruntime_library.as_deref())
        };
        let mut fallback = None;
        let backend = match options.engine {
            EngineChoice::Tract => Backend::Tract(tract::TractEngine::load(path, &proto, &shape, options)?),
            EngineChoice::Onnxruntime => Backend::OnnxRuntime(ort()?),
            EngineChoice::Auto => match ort() {
                Ok(engine) => Backend::OnnxRuntime(engine),
                Err(ModelError::OnnxRuntimeLibrary(why)) => {
                    fallback = Some(why.to_string());
                    Backend::Tract(tract::TractEngine::load(path, &proto, &shape, options)?)
                }
                Err(e) => return Err(e),
            },
        };
        let engine = match &backend {
            Backend::Tract(_) => EngineInfo { name: Engine::Tract, version: tract::VERSION.into(), library: None },
            Backend::OnnxRuntime(e) => {
                let (version, library) = (e.runtime.version.clone(), Some(e.runtime.library.clone()));
                EngineInfo { name: Engine::Onnxruntime, version, library }
            }
        };
        Ok(Self { path: path.to_owned(), sha256, meta, signature, engine, fallback, signed_by, trust, shape, backend })
    }

    /// ROIs per inference call: inputs must hold exactly this many.
    pub fn batch(&self) -> usize {
        self.shape.batch
    }

    /// Floats in one ROI of the input (channels x roi x roi).
    pub fn roi_len(&self) -> usize {
        self.shape.roi_len()
    }

    /// Features per ROI of the embedding output, when the model has one.
    pub fn embedding_dim(&self) -> Option<usize> {
        self.meta.embedding.as_ref().map(|e| e.dim as usize)
    }

    /// Runs one batch: `input` holds `batch()` normalised ROIs (NCHW); the result holds
    /// `batch()` rows of logits and, when the model has an embedding output, `batch()` rows of it.
    pub fn run(&self, input: &[f32]) -> Result<Outputs, InferenceError> {
        assert_eq!(input.len(), self.shape.batch * self.roi_len(), "input must hold exactly one batch of ROIs");
        match &self.backend {
            Backend::Tract(engine) => engine.run(&self.shape, input, &self.meta.name),
            Backend::OnnxRuntime(engine) => engine.run(&self.shape, input, &self.meta.name),
        }
    }

    /// Runs one batch: `input` holds `batch()` normalised ROIs (NCHW), the result `batch()` rows of logits.
    pub fn logits(&self, input: &[f32]) -> Result<Vec<f32>, InferenceError> {
        self.run(input).map(|o| o.logits)
    }

    /// Runs one batch and turns each row of logits into probabilities (SoftMax).
    pub fn probabilities(&self, input: &[f32]) -> Result<Vec<f32>, InferenceError> {
        let mut p = self.logits(input)?;
        self.softmax_rows(&mut p);
        Ok(p)
    }

    /// Turns rows of this model's logits into probabilities, in place.
    pub fn softmax_rows(&self, logits: &mut [f32]) {
        for row in logits.chunks_mut(self.meta.labels.len()) {
            softmax_in_place(row);
        }
    }
}

/// What one batch gives: per ROI a row of logits and, for models with an embedding output
/// (docs/gallery.md), a row of embedding features (empty otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `batch` rows of one logit per label.
    pub logits: Vec<f32>,
    /// `batch` rows of `embedding_dim` features, or nothing.
    pub embeddings: Vec<f32>,
}

/// Runs `call` on every item and concatenates the results in item order, sharing the items
/// between up to `threads` scoped threads in contiguous shares (one thread: in turn, here).
/// How a batch's per-ROI calls use several cores against one tract plan (`model.threads`);
/// the benchmark (examples/tract_bench.rs) times the same sharing on plain tract plans.
pub fn run_in_order<I: Sync, T: Send, E: Send>(
    items: &[I],
    threads: usize,
    call: impl Fn(&I) -> Result<Vec<T>, E> + Sync,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    if threads <= 1 || items.len() <= 1 {
        for x in items {
            out.extend(call(x)?);
        }
        return Ok(out);
    }
    let share = items.len().div_ceil(threads);
    let parts: Vec<Result<Vec<T>, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(share)
            .map(|group| {
                let call = &call;
                s.spawn(move || -> Result<Vec<T>, E> {
                    let mut v = Vec::new();
                    for x in group {
                        v.extend(call(x)?);
                    }
                    Ok(v)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("inference thread panicked")).collect()
    });
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Numerically stable SoftMax of one row of logits.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Lower-case hex of a digest, as amfp reports file hashes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn elem_type_name(t: i32) -> String {
    match t {
        1 => "float32".into(),
        2 => "uint8".into(),
        3 => "int8".into(),
        6 => "int32".into(),
        7 => "int64".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        other => format!("type {other}"),
    }
}

fn tensor_signature(v: &pb::ValueInfoProto) -> (TensorSignature, i32) {
    let (elem, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => {
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(n)) => n.to_string(),
                            Some(DimValue::DimParam(p)) => p.clone(),
                            None => "?".into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (t.elem_type, dims)
        }
        _ => (0, Vec::new()),
    };
    (TensorSignature { name: v.name.clone(), elem_type: elem_type_name(elem), dims }, elem)
}

/// Checks that the graph takes one float32 image batch that matches the metadata and gives one
/// row of logits per ROI; returns the declared signature.
fn check_signature(graph: &pb::GraphProto, meta: &ModelMetadata) -> Result<Signature, String> {
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
    let [input] = inputs[..] else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(format!("it has {} inputs ({})", inputs.len(), names.join(", ")));
    };
    let Some(output) = graph.output.first() else {
        return Err("it has no output".into());
    };
    let (input_sig, elem) = tensor_signature(input);
    let (output_sig, _) = tensor_signature(output);
    if elem != ONNX_FLOAT {
        return Err(format!("its input {:?} is {}, not float32", input_sig.name, input_sig.elem_type));
    }
    let dims = &input_sig.dims;
    let fixed = |i: usize, want: u32| dims[i].parse::<u32>().map(|n| n == want).unwrap_or(true);
    if dims.len() != 4 {
        return Err(format!(
            "its input {:?} has shape [{}], not an image batch [N, C, H, W]",
            input_sig.name,
            dims.join(", ")
        ));
    }
    if !fixed(1, meta.channels) || !fixed(2, meta.roi_px) || !fixed(3, meta.roi_px) {
        return Err(format!(
            "its input {:?} has shape [{}] but the metadata says {} channel(s) of {r}x{r} (amfp.channels, amfp.roi_px)",
            input_sig.name,
            dims.join(", "),
            meta.channels,
            r = meta.roi_px
        ));
    }
    if output_sig.dims.len() != 2 {
        return Err(format!(
            "its output {:?} has shape [{}], not [N, classes]",
            output_sig.name,
            output_sig.dims.join(", ")
        ));
    }
    Ok(Signature { input: input_sig, output: output_sig })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results come back in item order whatever the thread count, and an error from any
    /// share is returned.
    #[test]
    fn run_in_order_keeps_the_order_and_returns_errors() {
        let items: Vec<u32> = (0..11).collect();
        let twice = |x: &u32| -> Result<Vec<u32>, String> { Ok(vec![*x, *x]) };
        let want: Vec<u32> = items.iter().flat_map(|&x| [x, x]).collect();
        for threads in [0, 1, 2, 3, 4, 16] {
            assert_eq!(run_in_order(&items, threads, twice).unwrap(), want, "{threads} threads");
        }
        let fails_at_7 = |x: &u32| if *x == 7 { Err(format!("item {x}")) } else { Ok(vec![*x]) };
        for threads in [1, 2, 3] {
            assert_eq!(run_in_order(&items, threads, fails_at_7), Err("item 7".to_string()));
        }
    }

    /// Every way of running a batch, on either engine, gives the same probabilities (up to
    /// float rounding), and a whole-batch tract plan on several threads is refused with the fix
    /// when tract's multithread executor is not built in (the shipped configuration: Cargo.toml
    /// `tract-executor`). onnxruntime's library must be where amfp looks for it
    /// (`scripts/fetch-onnxruntime`, which `.ci/test` runs).
    #[test]
    fn run_options_and_engines_agree_and_a_missing_executor_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/amfp-synth-v3.onnx");
        let batch = 3;
        let tract =
            |threads, per_roi| LoadOptions { threads, per_roi, engine: EngineChoice::Tract, ..Default::default() };
        let ort = |threads| LoadOptions { threads, engine: EngineChoice::Onnxruntime, ..Default::default() };
        let reference = Model::load_with(&path, batch, &tract(1, true)).unwrap();
        assert_eq!(reference.engine.name, Engine::Tract);
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let input: Vec<f32> = (0..batch * reference.roi_len()).map(|_| rng.random::<f32>()).collect();
        let want = reference.probabilities(&input).unwrap();
        for options in [tract(2, true), tract(1, false), tract(2, false), ort(1), ort(2)] {
            let refused = !cfg!(feature = "tract-executor") && options == tract(2, false);
            match Model::load_with(&path, batch, &options) {
                Ok(model) => {
                    assert!(!refused, "{options:?} loaded without tract's multithread executor");
                    let engine =
                        if options.engine == EngineChoice::Tract { Engine::Tract } else { Engine::Onnxruntime };
                    assert_eq!(model.engine.name, engine);
                    let got = model.probabilities(&input).unwrap();
                    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(worst < 1e-5, "{options:?}: probabilities differ by {worst}");
                }
                Err(e) => {
                    assert!(refused, "{options:?}: {e}");
                    assert!(matches!(e, ModelError::NoExecutor { threads: 2 }), "{e}");
                    assert!(e.to_string().contains("--features tract-executor"), "{e}");
                }
            }
        }
    }

    /// `onnxruntime` with a library that is not one is an error naming the file and the fix;
    /// `auto` with the same falls back to tract and says why.
    #[test]
    fn a_bad_onnxruntime_library_is_an_error_or_a_fallback_with_the_reason() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/amfp-synth-v3.int8.onnx");
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libonnxruntime.so");
        std::fs::write(&fake, b"not a library").unwrap();
        let options = |engine| LoadOptions { engine, onnxruntime_library: Some(fake.clone()), ..Default::default() };
        let e = Model::load_with(&path, 2, &options(EngineChoice::Onnxruntime)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ModelError::OnnxRuntimeLibrary(_)), "{text}");
        assert!(text.contains(&fake.display().to_string()) && text.contains("scripts/fetch-onnxruntime"), "{text}");
        let model = Model::load_with(&path, 2, &options(EngineChoice::Auto)).unwrap();
        assert_eq!(model.engine.name, Engine::Tract);
        assert!(model.fallback.as_deref().is_some_and(|why| why.contains(&fake.display().to_string())));
    }

    /// The tract version reported in results is the one Cargo.lock builds.
    #[test]
    fn the_reported_tract_version_is_the_locked_one() {
        let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap();
        let want = format!("name = \"tract-onnx\"\nversion = \"{}\"", tract::VERSION);
        assert!(lock.contains(&want), "Cargo.lock does not lock tract-onnx {}", tract::VERSION);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut row = [1000.0, 1001.0, 999.0];
        softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] > row[0] && row[0] > row[2]);
    }
}
