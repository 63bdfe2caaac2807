//! What `amfp identify` spends on a part besides the model, stage by stage: PNG decode, the
//! exposure check, the envelope (resampling to the model's pixel), the part mask with its
//! acceptable ROI corners (`PartSurface::new`), drawing and normalising 16 ROIs, and the vote.
//!
//! Issue 8 asks that preprocessing and voting do not show up next to inference; this bench is
//! where each stage's cost is seen on its own (BENCHMARKS.md, "Preprocessing"). Inputs are
//! simulated parts of each process: scanner scans at the shipped model's 10.6 µm (no resampling)
//! and at 5.3 µm (2:1 resampling), and a microscope frame (1280x960 at 5.3 µm, all surface).
//!
//! Run: `cargo bench --bench preprocess`.

use std::hint::black_box;
use std::time::Duration;

use amfp::capture::Frame;
use amfp::capture::file::decode_frame;
use amfp::optics::{ModelGeometry, check_exposure, fit_to_model};
use amfp::reject::PixelSizeSource;
use amfp::roi::{DEFAULT_MIN_SURFACE_ROIS, MaskMode, PartSurface};
use amfp::synth::{DatasetSpec, Fleet, ImagingSpec, Layout, Mode, SplitFractions};
use amfp::vote::Ballot;
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

/// The shipped model's geometry and ROI acceptance.
const SHIPPED: ModelGeometry = ModelGeometry { pixel_um: 10.6, roi_px: 192 };
const MIN_FOREGROUND: f32 = 0.8;
const VOTES: usize = 16;
const CLASSES: usize = 21;

/// One simulated part of `machine` as encoded PNG bytes.
fn part_png(machine: &str, mode: Mode, pixel_um: f64) -> Vec<u8> {
    let spec = DatasetSpec {
        fleet: Fleet::paper(7).select(&[machine.to_string()]).expect("built-in machine"),
        seed: 8,
        parts_per_machine: 1,
        first_build: 1,
        imaging: ImagingSpec { mode, pixel_um, microscope_px: (1280, 960), bit_depth: 8 },
        jpeg_quality: None,
        split: SplitFractions::default(),
        layout: Layout::Flat,
        views: 1,
    };
    let plan = spec.plan();
    spec.render(&plan[0]).encode(None).expect("encodes")
}

fn pixel(frame: &Frame) -> Option<(f64, PixelSizeSource)> {
    frame.pixel_um.map(|um| (um, PixelSizeSource::File))
}

fn stages(c: &mut Criterion) {
    let inputs = [
        ("FDM scan 10.6um", part_png("S450-1", Mode::Scanner, 10.6)),
        ("SLA scan 10.6um", part_png("F3B-1", Mode::Scanner, 10.6)),
        ("MJF scan 5.3um", part_png("4200-1", Mode::Scanner, 5.3)),
        ("DLS microscope 5.3um", part_png("M2-1", Mode::Microscope, 5.3)),
    ];
    let mut group = c.benchmark_group("preprocess");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    for (name, png) in &inputs {
        let frame = decode_frame(png).expect("decodes");
        let (image, _) = fit_to_model(&frame, pixel(&frame), &SHIPPED).expect("inside the envelope");
        let surface =
            PartSurface::new(image.clone(), SHIPPED.roi_px, MIN_FOREGROUND, MaskMode::Auto, DEFAULT_MIN_SURFACE_ROIS)
                .expect("a part in view");
        let label = format!("{name} {}x{}", frame.width, frame.height);
        group.bench_with_input(BenchmarkId::new("decode", &label), png, |b, png| {
            b.iter(|| decode_frame(black_box(png)).expect("decodes"))
        });
        group.bench_with_input(BenchmarkId::new("exposure", &label), &frame, |b, f| {
            b.iter(|| check_exposure(black_box(f)).expect("well exposed"))
        });
        group.bench_with_input(BenchmarkId::new("envelope", &label), &frame, |b, f| {
            b.iter(|| fit_to_model(black_box(f), pixel(f), &SHIPPED).expect("inside"))
        });
        // The pipeline hands its image over; the copy each iteration needs is made untimed.
        group.bench_with_input(BenchmarkId::new("part_surface", &label), &image, |b, img| {
            b.iter_batched(
                || img.clone(),
                |img| {
                    PartSurface::new(img, SHIPPED.roi_px, MIN_FOREGROUND, MaskMode::Auto, DEFAULT_MIN_SURFACE_ROIS)
                        .expect("a part")
                },
                BatchSize::LargeInput,
            )
        });
        let roi_len = (SHIPPED.roi_px * SHIPPED.roi_px) as usize;
        let mut input = vec![0.0f32; VOTES * roi_len];
        group.bench_with_input(BenchmarkId::new("rois_16", &label), &surface, |b, s| {
            b.iter(|| {
                for (corner, slot) in s.sample(VOTES, 7).into_iter().zip(input.chunks_mut(roi_len)) {
                    s.write_roi(corner, 0.5, 0.2, 1, slot);
                }
                black_box(&input);
            })
        });
    }
    let probs: Vec<f32> = (0..VOTES * CLASSES).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
    group.bench_function("vote_16", |b| {
        b.iter(|| {
            let mut ballot = Ballot::new(CLASSES);
            for row in probs.chunks(CLASSES) {
                ballot.add(black_box(row));
            }
            black_box(ballot.tally(0.5))
        })
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
