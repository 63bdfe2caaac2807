//! Simulator throughput: parts per second, per process and for a mix of all four, in scanner
//! mode at 10.6 µm/px and microscope mode (1280x960 at 3 µm/px).
//!
//! One iteration renders and PNG-encodes one part (what `amfp synth` does per part, less the
//! disk write) on one thread; consecutive iterations take consecutive parts, so designs,
//! materials and orientations vary as in a dataset. `generate` runs the whole pipeline
//! (planning, rendering on the rayon pool, writing files and labels) for a small fleet.
//!
//! Run: `cargo bench --bench synth` (criterion reports "thrpt" in elem/s = parts/s).

use std::hint::black_box;
use std::time::Duration;

use amfp::synth::{DatasetSpec, Fleet, ImagingSpec, Layout, Mode, SplitFractions, generate};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// One machine of each process from the built-in fleet.
const MACHINES: [(&str, &str); 4] = [("FDM", "S450-1"), ("DLS", "M2-1"), ("SLA", "F3B-1"), ("MJF", "4200-1")];

fn spec(machines: &[&str], mode: Mode, parts: u32) -> DatasetSpec {
    let names: Vec<String> = machines.iter().map(|s| s.to_string()).collect();
    let pixel_um = match mode {
        Mode::Scanner => 10.6,
        Mode::Microscope => 3.0,
    };
    DatasetSpec {
        fleet: Fleet::paper(7).select(&names).expect("built-in machines"),
        seed: 7,
        parts_per_machine: parts,
        first_build: 1,
        imaging: ImagingSpec { mode, pixel_um, microscope_px: (1280, 960), bit_depth: 8 },
        jpeg_quality: None,
        split: SplitFractions::default(),
        layout: Layout::Flat,
        views: 1,
    }
}

fn parts(c: &mut Criterion) {
    for mode in [Mode::Scanner, Mode::Microscope] {
        let mut group = c.benchmark_group(format!("part/{}", mode.as_str()));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(1));
        for (process, machine) in MACHINES {
            let spec = spec(&[machine], mode, 12);
            let plans = spec.plan();
            let mut next = 0;
            group.bench_function(process, |b| {
                b.iter(|| {
                    let plan = &plans[next % plans.len()];
                    next += 1;
                    black_box(spec.render(plan).encode(None).expect("encodes"))
                })
            });
        }
        // The four processes in turn: the mean cost of a part of a mixed fleet.
        let spec = spec(&MACHINES.map(|(_, m)| m), mode, 3);
        let plans = spec.plan();
        let mut next = 0;
        group.bench_function("mix", |b| {
            b.iter(|| {
                // plan() orders by machine: step through machines first.
                let i = next % plans.len();
                next += 1;
                let plan = &plans[(i % 4) * 3 + i / 4];
                black_box(spec.render(plan).encode(None).expect("encodes"))
            })
        });
        group.finish();
    }
}

fn whole_pipeline(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let spec = spec(&MACHINES.map(|(_, m)| m), Mode::Scanner, 2);
    let parts = spec.fleet.machines.len() as u64 * u64::from(spec.parts_per_machine);
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group(format!("generate/{threads}_threads"));
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(parts));
    group.bench_function("scanner_4x2_parts", |b| {
        b.iter(|| pool.install(|| generate(&spec, dir.path(), true).expect("generates")))
    });
    group.finish();
}

criterion_group!(benches, parts, whole_pipeline);
criterion_main!(benches);
