//! Loading an ONNX model with tract and running it on batches of ROIs.
//!
//! A model is loaded once: the file is hashed (the sha256 goes into every result, so a fleet
//! manager knows exactly which model judged a part), its metadata contract is checked, its
//! input and output are checked to be an image batch and one logit per label, the ROI batch is
//! fixed, and tract optimises the graph for that shape. The loaded [`Model`] is immutable and
//! can be shared between threads; each [`Model::logits`] call runs on its own state.

pub mod metadata;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::*;

pub use metadata::{EmbeddingSpec, MetadataError, ModelMetadata};

/// ONNX's code for float32 tensors (TensorProto.DataType.FLOAT).
const ONNX_FLOAT: i32 = 1;

/// A model amfp can run: its metadata, identity and tract's optimised plan for one ROI batch.
///
/// How tract runs a batch is a [`LoadOptions`] choice measured in BENCHMARKS.md: by default the
/// plan is optimised for one ROI and a batch runs as that many one-ROI calls, because tract
/// convolves a single image with lazy im2col (fused into the matrix product) but a batch with an
/// eager im2col that costs more than the product itself.
pub struct Model {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Hex sha256 of the file: identifies the exact model in results.
    pub sha256: String,
    /// The `amfp.*` contract.
    pub meta: ModelMetadata,
    /// The graph's declared input and output, as in the file (for `amfp model inspect`).
    pub signature: Signature,
    batch: usize,
    /// ROIs per tract call: 1 (per-ROI plan) or `batch`.
    plan_batch: usize,
    threads: usize,
    plan: Arc<TypedRunnableModel>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("name", &self.meta.name)
            .field("batch", &self.batch)
            .finish()
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
    #[error("tract cannot run model {path}: {detail}")]
    Tract { path: PathBuf, detail: String },
    #[error(
        "a whole-batch plan on {threads} threads needs tract's multithread executor, which this build leaves out; \
         build with `--features tract-executor`, or keep the per-ROI plan (the default), which shares ROIs between threads"
    )]
    NoExecutor { threads: usize },
}

/// Inference failed on a loaded model (a tract runtime error: rare, and a bug when it happens).
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
    /// Threads per [`Model::logits`] call. With `per_roi`, the batch's ROIs are shared out
    /// between that many scoped threads; without, tract's multithread executor (a private rayon
    /// pool) runs inside each op, which only builds with the `tract-executor` feature (it is the
    /// slowest way to use two cores, BENCHMARKS.md, and adds megabytes to the binary).
    /// 1 runs everything on the caller's thread.
    pub threads: usize,
    /// Optimise the plan for one ROI and run a batch ROI by ROI (default): tract's lazy im2col
    /// only applies to a batch of one. `false` optimises for the whole batch (eager im2col).
    pub per_roi: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { threads: 1, per_roi: true }
    }
}

impl Model {
    /// Loads, checks and optimises a model for batches of `batch` ROIs.
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
        let sha256 = hex(&Sha256::digest(bytes));
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let proto = onnx
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

        let tract_err = |e: TractError| ModelError::Tract { path: path.to_owned(), detail: format!("{e:#}") };
        let (c, r) = (meta.channels as usize, meta.roi_px as usize);
        let plan_batch = if options.per_roi { 1 } else { batch };
        let threads = options.threads.max(1);
        let mut outputs = vec![signature.output.name.clone()];
        if let Some(spec) = &meta.embedding {
            if !graph.output.iter().any(|o| o.name == spec.output) {
                let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
                return Err(not_image(format!(
                    "amfp.embedding_output names {:?}, but the graph's outputs are {}; re-export the model or add the \
                     output with `python -m amfp_train.embedding` (docs/gallery.md)",
                    spec.output,
                    names.join(", ")
                )));
            }
            outputs.push(spec.output.clone());
        }
        let typed = onnx
            .model_for_proto_model(&proto)
            .and_then(|mut m| m.select_outputs_by_name(&outputs).map(|()| m))
            .and_then(|m| m.with_input_fact(0, f32::fact([plan_batch, c, r, r]).into()))
            .and_then(|m| m.into_optimized())
            .map_err(tract_err)?;
        let out = typed.output_fact(0).map_err(tract_err)?;
        let want = [plan_batch, meta.labels.len()];
        if out.shape.as_concrete() != Some(&want[..]) {
            return Err(not_image(format!(
                "for an input of {plan_batch} ROIs its output has shape {:?}, not {want:?} (one logit per each of the {} labels)",
                out.shape,
                meta.labels.len()
            )));
        }
        if let Some(spec) = &meta.embedding {
            let out = typed.output_fact(1).map_err(tract_err)?;
            let want = [plan_batch, spec.dim as usize];
            if out.shape.as_concrete() != Some(&want[..]) {
                return Err(not_image(format!(
                    "for an input of {plan_batch} ROIs its embedding output {:?} has shape {:?}, not {want:?} (amfp.embedding_dim)",
                    spec.output, out.shape
                )));
            }
        }
        let run_options = RunOptions { executor: batch_executor(threads, options.per_roi)?, ..Default::default() };
        let plan = typed.into_runnable_with_options(&run_options).map_err(tract_err)?;
        Ok(Self { path: path.to_owned(), sha256, meta, signature, batch, plan_batch, threads, plan })
    }

    /// ROIs per inference call: inputs must hold exactly this many.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Floats in one ROI of the input (channels x roi x roi).
    pub fn roi_len(&self) -> usize {
        let r = self.meta.roi_px as usize;
        self.meta.channels as usize * r * r
    }

    /// Features per ROI of the embedding output, when the model has one.
    pub fn embedding_dim(&self) -> Option<usize> {
        self.meta.embedding.as_ref().map(|e| e.dim as usize)
    }

    /// Runs one batch: `input` holds `batch()` normalised ROIs (NCHW); the result holds
    /// `batch()` rows of logits and, when the model has an embedding output, `batch()` rows of it.
    pub fn run(&self, input: &[f32]) -> Result<Outputs, InferenceError> {
        let err = |e: TractError| InferenceError { name: self.meta.name.clone(), detail: format!("{e:#}") };
        let (c, r) = (self.meta.channels as usize, self.meta.roi_px as usize);
        assert_eq!(input.len(), self.batch * self.roi_len(), "input must hold exactly one batch of ROIs");
        let call = |x: &[f32]| -> Result<Vec<Outputs>, InferenceError> {
            let tensor = Tensor::from_shape(&[self.plan_batch, c, r, r], x).map_err(err)?;
            let out = self.plan.run(tvec!(tensor.into_tvalue())).map_err(err)?;
            let rows = |i: usize| -> Result<Vec<f32>, InferenceError> {
                Ok(out[i].to_plain_array_view::<f32>().map_err(err)?.iter().copied().collect())
            };
            let embeddings = if out.len() > 1 { rows(1)? } else { Vec::new() };
            Ok(vec![Outputs { logits: rows(0)?, embeddings }])
        };
        let calls: Vec<&[f32]> = input.chunks(self.plan_batch * self.roi_len()).collect();
        let parts = run_in_order(&calls, self.threads, |x| call(x))?;
        let mut all = Outputs { logits: Vec::new(), embeddings: Vec::new() };
        for part in parts {
            all.logits.extend(part.logits);
            all.embeddings.extend(part.embeddings);
        }
        Ok(all)
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

/// tract's executor for a plan: its multithread one (a rayon pool inside each op) only for a
/// whole-batch plan on several threads; per-ROI plans share ROIs between threads themselves.
fn batch_executor(threads: usize, per_roi: bool) -> Result<Option<multithread::Executor>, ModelError> {
    if threads <= 1 || per_roi { Ok(None) } else { multithread_executor(threads).map(Some) }
}

/// tract's multithread executor on `threads` threads: the one place that knows it exists only
/// with the `tract-executor` feature (the benchmark's `tract_bench` asks here too).
#[cfg(feature = "tract-executor")]
pub fn multithread_executor(threads: usize) -> Result<multithread::Executor, ModelError> {
    Ok(multithread::Executor::multithread(threads))
}

/// Without the `tract-executor` feature tract has no multithread executor to give.
#[cfg(not(feature = "tract-executor"))]
pub fn multithread_executor(threads: usize) -> Result<multithread::Executor, ModelError> {
    Err(ModelError::NoExecutor { threads })
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

    /// Every way of running a batch gives the same probabilities (up to float rounding), and a
    /// whole-batch plan on several threads is refused with the fix when tract's multithread
    /// executor is not built in (the shipped configuration: Cargo.toml `tract-executor`).
    #[test]
    fn run_options_agree_and_a_missing_executor_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/amfp-synth-v3.onnx");
        let batch = 3;
        let reference = Model::load(&path, batch).unwrap();
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let input: Vec<f32> = (0..batch * reference.roi_len()).map(|_| rng.random::<f32>()).collect();
        let want = reference.probabilities(&input).unwrap();
        for options in [
            LoadOptions { threads: 2, per_roi: true },
            LoadOptions { threads: 1, per_roi: false },
            LoadOptions { threads: 2, per_roi: false },
        ] {
            let refused = !cfg!(feature = "tract-executor") && options == LoadOptions { threads: 2, per_roi: false };
            match Model::load_with(&path, batch, &options) {
                Ok(model) => {
                    assert!(!refused, "{options:?} loaded without tract's multithread executor");
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

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut row = [1000.0, 1001.0, 999.0];
        softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] > row[0] && row[0] > row[2]);
    }
}
