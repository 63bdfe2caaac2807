//! `amfp synth`: simulate a labelled dataset of part scans, or print the virtual fleet.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::SynthSettings;
use crate::synth::{DatasetSpec, Fleet, ImagingSpec, Layout, Mode, SplitFractions, generate};

/// Arguments of `amfp synth`. Flags win over the `[synth]` section of the configuration.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output directory; receives labels.csv, fleet.toml and the images.
    #[arg(long, value_name = "DIR", required_unless_present = "print_fleet")]
    pub out: Option<PathBuf>,
    /// Fleet file (TOML). Default: the built-in 21 machines of the paper.
    #[arg(long, value_name = "PATH")]
    pub fleet: Option<PathBuf>,
    /// Seed of the built-in fleet's unit-to-unit deviations. It defines the machines, so keep it
    /// fixed across datasets (training, testing) of one fleet; vary --seed instead.
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub fleet_seed: u64,
    /// Print the resolved fleet as a fleet file and exit.
    #[arg(long)]
    pub print_fleet: bool,
    /// Only these machines (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub machines: Vec<String>,
    /// Parts simulated per machine.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub parts_per_machine: u32,
    /// Master seed of the dataset (default from the configuration, else 7).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Imaging mode.
    #[arg(long, value_enum, default_value_t = Mode::Scanner)]
    pub mode: Mode,
    /// Pixel size in µm (default: the configuration's for the mode; 10.6 scanner, 3.0 microscope).
    #[arg(long, value_name = "UM")]
    pub pixel_um: Option<f64>,
    /// Frames of each part, each from another place on it and another angle (microscope mode):
    /// what an inspector moving a USB microscope over a part collects for `amfp identify
    /// --same-part`. View 0 is in labels.csv as usual; views.csv lists every frame.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub views: u32,
    /// Microscope frame size in pixels.
    #[arg(long, default_value = "1280x960", value_parser = parse_size, value_name = "WxH")]
    pub microscope_size: (usize, usize),
    /// Bits per pixel of the images: 8 or 16.
    #[arg(long, value_name = "BITS")]
    pub bit_depth: Option<u8>,
    /// Write JPEG at this quality (1-100) instead of PNG (8-bit only).
    #[arg(long, value_name = "Q")]
    pub jpeg_quality: Option<u8>,
    /// File layout.
    #[arg(long, value_enum, default_value_t = Layout::Flat)]
    pub layout: Layout,
    /// Train, validation and test fractions of each machine's parts.
    #[arg(long, default_value_t = SplitFractions::default(), value_parser = SplitFractions::parse, value_name = "T,V,T")]
    pub split: SplitFractions,
    /// Build number of each machine's first part (machines drift with builds).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub first_build: u32,
    /// Worker threads (default from the configuration; 0 = one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Replace a dataset already in --out.
    #[arg(long)]
    pub overwrite: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT"))?;
    let num = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("{v:?} in {s:?} is not a whole number"));
    Ok((num(w)?, num(h)?))
}

/// Runs `amfp synth`.
pub fn run(config_path: Option<&Path>, args: SynthArgs) -> ExitCode {
    super::with_settings(config_path, |settings| match synth(&settings.synth, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    })
}

fn synth(defaults: &SynthSettings, args: SynthArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or(defaults.seed);
    let fleet_path = args.fleet.as_ref().or(defaults.fleet.as_ref());
    let mut fleet = match fleet_path {
        Some(p) => Fleet::load(p)?,
        None => Fleet::paper(args.fleet_seed),
    };
    if !args.machines.is_empty() {
        fleet = fleet.select(&args.machines).map_err(anyhow::Error::msg)?;
    }
    if args.print_fleet {
        print!("{}", fleet.to_toml());
        return Ok(());
    }
    let out = args.out.expect("clap requires --out unless --print-fleet");
    let pixel_um = args.pixel_um.unwrap_or(match args.mode {
        Mode::Scanner => defaults.scanner_pixel_um,
        Mode::Microscope => defaults.microscope_pixel_um,
    });
    let spec = DatasetSpec {
        fleet,
        seed,
        parts_per_machine: args.parts_per_machine,
        first_build: args.first_build,
        imaging: ImagingSpec {
            mode: args.mode,
            pixel_um,
            microscope_px: args.microscope_size,
            bit_depth: args.bit_depth.unwrap_or(defaults.bit_depth),
        },
        jpeg_quality: args.jpeg_quality,
        split: args.split,
        layout: args.layout,
        views: args.views,
    };
    let threads = args.threads.unwrap_or(defaults.threads);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("starting worker threads")?;
    log::info!(
        "synth: {} machines x {} parts, {} mode at {} µm/px, seed {seed}, into {}",
        spec.fleet.machines.len(),
        spec.parts_per_machine,
        spec.imaging.mode.as_str(),
        pixel_um,
        out.display()
    );
    let summary = pool.install(|| generate(&spec, &out, args.overwrite))?;
    log::info!(
        "synth: wrote {} parts in {:.1} s ({:.1} parts/s); labels in {}",
        summary.parts,
        summary.seconds,
        summary.parts as f64 / summary.seconds.max(1e-9),
        summary.labels.display()
    );
    Ok(())
}
