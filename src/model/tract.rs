//! The pure-Rust engine: tract's optimised plan for one ROI (or one batch).
//!
//! tract runs everywhere amfp builds (armv7 included) and needs no library; it is the fallback
//! when onnxruntime's library cannot be loaded, and 2.7-7x slower on amfp's graphs
//! (BENCHMARKS.md). By default the plan is optimised for one ROI and a batch runs as that many
//! one-ROI calls, because tract convolves a single image with lazy im2col (fused into the matrix
//! product) but a batch with an eager im2col that costs more than the product itself.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::{InferenceError, LoadOptions, ModelError, Outputs, Shape, run_in_order};

/// tract's version, as reported in results.
pub(super) const VERSION: &str = "0.23.9";

/// A runnable tract plan and how a batch is split into calls.
pub(super) struct TractEngine {
    /// ROIs per tract call: 1 (per-ROI plan) or the whole batch.
    plan_batch: usize,
    threads: usize,
    plan: Arc<TypedRunnableModel>,
}

impl TractEngine {
    /// Optimises `proto` for calls of one ROI (or `shape.batch`, without `per_roi`), keeping
    /// the logits and, when the model has one, the embedding output, and checks their shapes.
    pub(super) fn load(
        path: &Path,
        proto: &pb::ModelProto,
        shape: &Shape,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let tract_err =
            |e: TractError| ModelError::Engine { path: path.to_owned(), engine: "tract", detail: format!("{e:#}") };
        let plan_batch = if options.per_roi { 1 } else { shape.batch };
        let threads = options.threads.max(1);
        let mut outputs = vec![shape.logits_output.clone()];
        outputs.extend(shape.embedding.iter().map(|(name, _)| name.clone()));
        let typed = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_proto_model(proto)
            .and_then(|mut m| m.select_outputs_by_name(&outputs).map(|()| m))
            .and_then(|m| m.with_input_fact(0, f32::fact([plan_batch, shape.channels, shape.roi, shape.roi]).into()))
            .and_then(|m| m.into_optimized())
            .map_err(tract_err)?;
        let not_image = |detail: String| ModelError::NotAnImageModel { path: path.to_owned(), detail };
        let out = typed.output_fact(0).map_err(tract_err)?;
        let want = [plan_batch, shape.labels];
        if out.shape.as_concrete() != Some(&want[..]) {
            return Err(not_image(format!(
                "for an input of {plan_batch} ROIs its output has shape {:?}, not {want:?} (one logit per each of the {} labels)",
                out.shape, shape.labels
            )));
        }
        if let Some((name, dim)) = &shape.embedding {
            let out = typed.output_fact(1).map_err(tract_err)?;
            let want = [plan_batch, *dim];
            if out.shape.as_concrete() != Some(&want[..]) {
                return Err(not_image(format!(
                    "for an input of {plan_batch} ROIs its embedding output {name:?} has shape {:?}, not {want:?} (amfp.embedding_dim)",
                    out.shape
                )));
            }
        }
        let run_options = RunOptions { executor: batch_executor(threads, options.per_roi)?, ..Default::default() };
        let plan = typed.into_runnable_with_options(&run_options).map_err(tract_err)?;
        Ok(Self { plan_batch, threads, plan })
    }

    /// Runs one batch of `shape.batch` ROIs, sharing the plan's calls between the threads.
    pub(super) fn run(&self, shape: &Shape, input: &[f32], name: &str) -> Result<Outputs, InferenceError> {
        let err = |e: TractError| InferenceError { name: name.to_owned(), detail: format!("{e:#}") };
        let call = |x: &[f32]| -> Result<Vec<Outputs>, InferenceError> {
            let tensor =
                Tensor::from_shape(&[self.plan_batch, shape.channels, shape.roi, shape.roi], x).map_err(err)?;
            let out = self.plan.run(tvec!(tensor.into_tvalue())).map_err(err)?;
            let rows = |i: usize| -> Result<Vec<f32>, InferenceError> {
                Ok(out[i].to_plain_array_view::<f32>().map_err(err)?.iter().copied().collect())
            };
            let embeddings = if out.len() > 1 { rows(1)? } else { Vec::new() };
            Ok(vec![Outputs { logits: rows(0)?, embeddings }])
        };
        let calls: Vec<&[f32]> = input.chunks(self.plan_batch * shape.roi_len()).collect();
        let parts = run_in_order(&calls, self.threads, |x| call(x))?;
        let mut all = Outputs { logits: Vec::new(), embeddings: Vec::new() };
        for part in parts {
            all.logits.extend(part.logits);
            all.embeddings.extend(part.embeddings);
        }
        Ok(all)
    }
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
