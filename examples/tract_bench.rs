//! The tract side of the benchmark (BENCHMARKS.md, `benches/bench.py`): loads one ONNX model
//! with tract the way amfp does, runs it on a fixed batch of ROIs and prints one JSON object
//! with the timings, the start-up cost and the peak RSS of this process.
//!
//! Not a user command: `benches/bench.py` drives it next to onnxruntime and PyTorch so that
//! every engine sees the same model file and the same ROIs in the same run.
//!
//! ```sh
//! cargo build --profile ci --example tract_bench
//! target/ci/examples/tract_bench --model models/amfp-synth-v3.onnx --input rois.npy --rois 16 \
//!     --mode split --threads 2 --reps 10
//! ```
//!
//! Modes (how `--rois` ROIs are run on `--threads` threads):
//! - `seq`: one batch of `--rois` on the calling thread (tract's default single-thread executor);
//! - `batches`: `--rois / --batch` batches one after the other (amfp's vote: batches of 4);
//! - `executor`: one batch of `--rois`, tract's multithread executor (a `--threads` rayon pool
//!   inside each op; tract-linalg's `multithread-mm`, only with amfp's `tract-executor` feature:
//!   `cargo build --profile ci --features tract-executor --example tract_bench`);
//! - `split`: batches of `--batch` shared out between `--threads` scoped threads that run them
//!   at once against one shared plan;
//! - `amfp`: `amfp::model::Model` itself (what `amfp identify` loads) with `--batch` ROIs per
//!   call, `--threads` and `--batched` (`LoadOptions::per_roi` false), as `Model::load_with` runs it;
//!   `--engine onnxruntime` runs that `Model` on onnxruntime instead (docs/engines.md).
//!
//! `--profile` adds the time per op type (one extra run, single-threaded; per node with
//! `--profile-nodes`), `--dump` the optimised graph's ops with their output shapes and info
//! (the matrix kernel of each product), `--transform NAME` applies one of tract's model
//! transforms (e.g. `conv_nhwc`) before code generation. `--features` prints which optional
//! ways this build has (`{"tract_executor": bool}`) and exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde_json::json;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, OpState};
use tract_onnx::tract_hir::infer::Factoid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Seq,
    Batches,
    Executor,
    Split,
    Amfp,
}

#[derive(Debug, Parser)]
struct Args {
    /// ONNX model (input NCHW float32).
    #[arg(long)]
    model: PathBuf,
    /// ROIs as a float32 .npy [n, C, H, W]; n is cycled to fill --rois. Default: seeded noise.
    #[arg(long)]
    input: Option<PathBuf>,
    /// ROIs per measured run (one part's vote).
    #[arg(long, default_value_t = 16)]
    rois: usize,
    /// ROIs per tract call in `batches` and `split` modes, per `Model::logits` call in `amfp` mode.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// `amfp` mode: optimise tract's plan for the whole batch (LoadOptions::per_roi = false).
    #[arg(long)]
    batched: bool,
    #[arg(long, value_enum, default_value = "seq")]
    mode: Mode,
    /// `amfp` mode: the engine `Model` runs on (`onnxruntime`: amfp's onnxruntime, to compare
    /// with Python's on the same ROIs).
    #[arg(long, value_enum, default_value = "tract")]
    engine: amfp::model::EngineChoice,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured runs (after --warmup unmeasured ones).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Time per op type (one extra single-threaded run).
    #[arg(long)]
    profile: bool,
    /// With --profile: time per node (op type and node name) instead of per op type.
    #[arg(long)]
    profile_nodes: bool,
    /// A tract model transform applied to the decluttered model before optimising (e.g.
    /// `conv_nhwc`: every convolution channel-last), for the plain-tract modes.
    #[arg(long)]
    transform: Option<String>,
    /// List the optimised graph's ops (with each op's info: the matrix kernel tract picked).
    #[arg(long)]
    dump: bool,
    /// Write the logits of the first measured run here (.npy), to check parity with onnxruntime.
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// Print `{"tract_executor": bool}` (whether the `executor` mode and `amfp --batched` on
    /// several threads are built in) and exit.
    #[arg(long)]
    features: bool,
}

type Plan = Arc<TypedRunnableModel>;
/// One inference call: a batch of ROIs in, its logits out.
type Runner = Box<dyn Fn(&[f32]) -> TractResult<Vec<f32>> + Sync>;

fn main() -> TractResult<()> {
    env_logger::init();
    let a = Args::parse();
    if a.features {
        println!("{}", json!({ "tract_executor": cfg!(feature = "tract-executor") }));
        return Ok(());
    }
    let (c, h, w, data) = load_input(&a)?;
    let roi_len = c * h * w;
    let rss_before_load = peak_rss_kb();

    // Model-only runs load exactly as src/model/mod.rs does: value_info ignored, fixed batch,
    // into_optimized, into_runnable.
    let per_call = match a.mode {
        Mode::Seq | Mode::Executor => a.rois,
        Mode::Batches | Mode::Amfp | Mode::Split => a.batch,
    };
    let t0 = Instant::now();
    let (runner, typed): (Runner, Option<TypedModel>) = if a.mode == Mode::Amfp {
        let model = amfp::model::Model::load_with(
            &a.model,
            per_call,
            &amfp::model::LoadOptions {
                threads: a.threads,
                per_roi: !a.batched,
                engine: a.engine,
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        (Box::new(move |x: &[f32]| model.logits(x).map_err(|e| anyhow::anyhow!("{e}"))), None)
    } else {
        let typed = load_typed(&a.model, per_call, c, h, w, a.transform.as_deref())?;
        let options = RunOptions { executor: executor(a.mode, a.threads)?, ..Default::default() };
        let plan: Plan = typed.clone().into_runnable_with_options(&options)?;
        let shape = [per_call, c, h, w];
        (
            Box::new(move |x: &[f32]| {
                let t = Tensor::from_shape(&shape, x)?;
                let out = plan.run(tvec!(t.into_tvalue()))?;
                Ok(out[0].to_plain_array_view::<f32>()?.iter().copied().collect())
            }),
            Some(typed),
        )
    };
    let load_s = t0.elapsed().as_secs_f64();

    let input: Vec<f32> =
        (0..a.rois).flat_map(|i| data[(i % (data.len() / roi_len)) * roi_len..][..roi_len].to_vec()).collect();
    let run_all = || -> TractResult<Vec<f32>> {
        let chunks: Vec<&[f32]> = input.chunks(per_call * roi_len).collect();
        let pad = |chunk: &[f32]| -> Vec<f32> {
            let mut v = chunk.to_vec();
            while v.len() < per_call * roi_len {
                v.extend_from_slice(&chunk[..roi_len]);
            }
            v
        };
        let n = a.rois;
        // 1-ROI calls shared between threads exactly as amfp::model::Model shares them.
        let threads = if a.mode == Mode::Split { a.threads } else { 1 };
        let logits = amfp::model::run_in_order(&chunks, threads, |ch| runner(&pad(ch)))?;
        let classes = logits.len() / (chunks.len() * per_call);
        // Drop the padding rows of a short last batch.
        let mut out = Vec::with_capacity(n * classes);
        for (k, ch) in chunks.iter().enumerate() {
            let rows = ch.len() / roi_len;
            out.extend_from_slice(&logits[k * per_call * classes..][..rows * classes]);
        }
        Ok(out)
    };

    for _ in 0..a.warmup {
        run_all()?;
    }
    let mut times = Vec::with_capacity(a.reps);
    let mut first = None;
    for _ in 0..a.reps {
        let t = Instant::now();
        let out = run_all()?;
        times.push(t.elapsed().as_secs_f64());
        first.get_or_insert(out);
    }
    if let (Some(p), Some(l)) = (&a.logits_out, &first) {
        let classes = l.len() / a.rois;
        write_npy(p, l, &[a.rois as u64, classes as u64])?;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() { f64::NAN } else { sorted[sorted.len() / 2] };

    let engine =
        if a.mode == Mode::Amfp && a.engine != amfp::model::EngineChoice::Tract { "onnxruntime" } else { "tract" };
    let mut report = json!({
        "engine": engine, "model": a.model, "mode": format!("{:?}", a.mode).to_lowercase(),
        "threads": a.threads, "rois": a.rois, "per_call": per_call, "batched": a.batched,
        "load_s": load_s, "times_s": times, "median_s": median,
        "rss_before_load_kb": rss_before_load, "peak_rss_kb": peak_rss_kb(),
    });
    if let Some(typed) = &typed {
        if a.profile {
            report["profile_s"] =
                json!(profile(typed, &input[..per_call * roi_len], [per_call, c, h, w], a.profile_nodes)?);
        }
        if a.dump {
            report["ops"] = json!(
                typed
                    .nodes()
                    .iter()
                    .map(|n| {
                        // info(): for OptMatMul, the matrix kernel tract picked for this shape.
                        let info = n.op().info().map(|i| i.join("; ")).unwrap_or_default();
                        format!("{} {} -> {:?} [{info}]", n.op().name(), n.name, n.outputs[0].fact.shape)
                    })
                    .collect::<Vec<_>>()
            );
        }
    }
    println!("{report}");
    Ok(())
}

/// tract's multithread executor for the `executor` mode on several threads (an error naming
/// the feature when this build leaves it out).
fn executor(mode: Mode, threads: usize) -> TractResult<Option<multithread::Executor>> {
    (mode == Mode::Executor && threads > 1)
        .then(|| amfp::model::multithread_executor(threads).map_err(|e| anyhow::anyhow!("the executor mode: {e}")))
        .transpose()
}

fn load_typed(
    path: &Path,
    batch: usize,
    c: usize,
    h: usize,
    w: usize,
    transform: Option<&str>,
) -> TractResult<TypedModel> {
    let mut model = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_path(path)?
        .with_input_fact(0, f32::fact([batch, c, h, w]).into())?
        .into_typed()?
        .into_decluttered()?;
    if let Some(name) = transform {
        let t = tract_onnx::tract_core::transform::get_transform(name)?
            .ok_or_else(|| anyhow::anyhow!("tract has no transform named {name:?}"))?;
        t.transform(&mut model)?;
    }
    // Codegen only: decluttered once above (a second declutter would also fold a transform's
    // axis moves back).
    model.optimize()?;
    Ok(model)
}

/// Seconds per op type (or per node, `by_node`) for one run of one batch (single thread).
fn profile(typed: &TypedModel, x: &[f32], shape: [usize; 4], by_node: bool) -> TractResult<BTreeMap<String, f64>> {
    let plan = typed.clone().into_runnable()?;
    let mut state = plan.spawn()?;
    let mut per_op: BTreeMap<String, f64> = BTreeMap::new();
    for round in 0..3 {
        let mut times: BTreeMap<String, f64> = BTreeMap::new();
        state.run_plan_with_eval(
            tvec!(Tensor::from_shape(&shape, x)?.into_tvalue()),
            |ctx: &EvalContext, st: Option<&mut (dyn OpState + 'static)>, node: &TypedNode, inputs: TVec<TValue>| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                let key =
                    if by_node { format!("{} {}", node.op().name(), node.name) } else { node.op().name().to_string() };
                *times.entry(key).or_default() += t.elapsed().as_secs_f64();
                r
            },
        )?;
        if round > 0 {
            // keep the faster of the two measured rounds per op type
            for (k, v) in times {
                let e = per_op.entry(k).or_insert(f64::INFINITY);
                *e = e.min(v);
            }
        }
    }
    Ok(per_op)
}

fn load_input(a: &Args) -> TractResult<(usize, usize, usize, Vec<f32>)> {
    if let Some(p) = &a.input {
        let bytes = std::fs::read(p)?;
        let npy = npyz::NpyFile::new(&bytes[..])?;
        let shape = npy.shape().to_vec();
        anyhow::ensure!(shape.len() == 4, "{}: want [n, C, H, W], got {shape:?}", p.display());
        let data: Vec<f32> = npy.into_vec()?;
        return Ok((shape[1] as usize, shape[2] as usize, shape[3] as usize, data));
    }
    // No ROIs given: the model's declared input shape, seeded noise.
    let m = tract_onnx::onnx().with_ignore_value_info(true).model_for_path(&a.model)?;
    let fact = m.input_fact(0)?.clone();
    let dims: Vec<usize> = fact
        .shape
        .dims()
        .skip(1)
        .map(|d| {
            d.concretize()
                .and_then(|d| d.to_i64().ok())
                .map(|d| d as usize)
                .ok_or_else(|| anyhow::anyhow!("the input's C, H, W must be fixed"))
        })
        .collect::<TractResult<_>>()?;
    anyhow::ensure!(dims.len() == 3, "want an NCHW input");
    let n = dims.iter().product::<usize>();
    let mut s = 0x2545F4914F6CDD1Du64;
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    Ok((dims[0], dims[1], dims[2], data))
}

fn write_npy(path: &Path, data: &[f32], shape: &[u64]) -> TractResult<()> {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut writer = npyz::WriteOptions::<f32>::new().default_dtype().shape(shape).writer(file).begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    Ok(())
}

/// Peak resident set of this process (VmHWM), in KiB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
