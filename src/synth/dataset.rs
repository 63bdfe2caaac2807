//! Datasets: which parts to make, how they are labelled and split, and writing them to disk.
//!
//! Each machine makes `parts_per_machine` parts, numbered in print order: consecutive parts
//! fill the cells of a build's tray, then the next build starts, so build number and tray
//! position follow from the serial. Everything about a part (design, material, placement,
//! noise) is drawn from a seed derived from the dataset seed, the machine and the serial.
//! Splits are by part, stratified by machine: no part's ROIs can leak across splits.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use rand::RngExt;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;

use super::design::Design;
use super::fleet::{Fleet, Machine};
use super::imaging::{ImagingSpec, Scan, capture};
use super::presets;
use super::process::PartContext;
use super::seeds::{derive, name_hash, rng_for};

/// How image files are laid out under the output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `scans/<serial>.png`, with labels.csv saying everything about each.
    Flat,
    /// `<split>/<machine>/<serial>.png` (PyTorch ImageFolder), with labels.csv as well.
    Imagefolder,
}

/// Fractions of each machine's parts that go to train, validation and test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    pub train: f64,
    pub val: f64,
    pub test: f64,
}

/// 70 % train, 15 % validation, 15 % test: the default of `amfp synth --split`.
impl Default for SplitFractions {
    fn default() -> Self {
        Self { train: 0.7, val: 0.15, test: 0.15 }
    }
}

/// Written as `amfp synth --split` takes it: "0.7,0.15,0.15".
impl std::fmt::Display for SplitFractions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.train, self.val, self.test)
    }
}

impl SplitFractions {
    /// Parses "0.7,0.15,0.15"; the three must be non-negative and sum to 1.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>().map_err(|_| format!("{p:?} is not a number")))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [train, val, test]
                if parts.iter().all(|&f| (0.0..=1.0).contains(&f)) && (train + val + test - 1.0).abs() < 1e-6 =>
            {
                Ok(Self { train, val, test })
            }
            _ => Err(format!(
                "split {s:?} must be three fractions train,val,test in 0..1 that sum to 1, e.g. 0.7,0.15,0.15"
            )),
        }
    }
}

/// Everything that defines a dataset.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub fleet: Fleet,
    /// Master seed: with the fleet, it fixes every byte of the dataset.
    pub seed: u64,
    pub parts_per_machine: u32,
    /// Build number of each machine's first part (later builds show more drift).
    pub first_build: u32,
    pub imaging: ImagingSpec,
    pub jpeg_quality: Option<u8>,
    pub split: SplitFractions,
    pub layout: Layout,
    /// Frames of each part (1: one). More than one images each part again from another place
    /// and angle, as an inspector moving a USB microscope over it would (microscope mode only):
    /// view 0 is the file in labels.csv, every view is listed in views.csv.
    pub views: u32,
}

/// One row of views.csv: one frame of a part seen in several views (`amfp synth --views`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewRecord {
    /// Image path relative to the dataset directory.
    pub file: String,
    /// The part's serial, as in labels.csv.
    pub serial: String,
    /// 0 for the file labels.csv names, then 1, 2...
    pub view: u32,
}

/// One row of labels.csv: everything known about one part and its image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartRecord {
    /// Image path relative to the dataset directory.
    pub file: String,
    pub serial: String,
    pub machine: String,
    pub process: String,
    pub material: String,
    pub design: String,
    pub build: u32,
    pub tray_row: u32,
    pub tray_col: u32,
    pub pixel_size_um: f64,
    pub mode: String,
    pub seed: u64,
    pub split: String,
}

/// The plan of one part, before it is imaged.
#[derive(Debug, Clone)]
pub struct PartPlan {
    pub machine: usize,
    pub record: PartRecord,
    pub design: Design,
    pub context: PartContext,
}

impl DatasetSpec {
    /// Plans every part of the dataset, in a fixed order (machine, then serial).
    pub fn plan(&self) -> Vec<PartPlan> {
        let mut plans = Vec::new();
        for (mi, machine) in self.fleet.machines.iter().enumerate() {
            let splits = self.assign_splits(machine);
            for index in 0..self.parts_per_machine {
                plans.push(self.plan_part(mi, machine, index, splits[index as usize]));
            }
        }
        plans
    }

    fn assign_splits(&self, machine: &Machine) -> Vec<&'static str> {
        let n = self.parts_per_machine as usize;
        let n_train = (n as f64 * self.split.train).round() as usize;
        let n_val = ((n as f64 * self.split.val).round() as usize).min(n - n_train);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng_for(&[self.seed, name_hash(&machine.name), name_hash("split")]));
        let mut splits = vec!["test"; n];
        for (rank, &i) in order.iter().enumerate() {
            splits[i] = if rank < n_train {
                "train"
            } else if rank < n_train + n_val {
                "val"
            } else {
                "test"
            };
        }
        splits
    }

    fn plan_part(&self, mi: usize, machine: &Machine, index: u32, split: &str) -> PartPlan {
        let seed = derive(&[self.seed, name_hash(&machine.name), u64::from(index)]);
        let mut rng = rng_for(&[seed, name_hash("plan")]);
        let cells = machine.tray_cells();
        let build = self.first_build + index / cells;
        let cell = index % cells;
        let (tray_row, tray_col) = (cell / machine.tray[1], cell % machine.tray[1]);
        let [pw, pd] = machine.platform_mm;
        let x = (f64::from(tray_col) + 0.5) / f64::from(machine.tray[1]) * pw - pw / 2.0 + rng.random_range(-2.0..2.0);
        let y = (f64::from(tray_row) + 0.5) / f64::from(machine.tray[0]) * pd - pd / 2.0 + rng.random_range(-2.0..2.0);
        let half_diag = 0.5 * (pw * pw + pd * pd).sqrt();
        let design = Design::ALL[rng.random_range(0..Design::ALL.len())];
        let material = machine.materials[rng.random_range(0..machine.materials.len())].clone();
        let serial = format!("{}-{:05}", machine.name, index);
        let ext = if self.jpeg_quality.is_some() { "jpg" } else { "png" };
        let file = match self.layout {
            Layout::Flat => format!("scans/{serial}.{ext}"),
            Layout::Imagefolder => format!("{split}/{}/{serial}.{ext}", machine.name),
        };
        PartPlan {
            machine: mi,
            design,
            context: PartContext {
                seed,
                machine_seed: machine.seed(self.fleet.seed),
                build,
                platform_xy_mm: (x, y),
                tray_r2: ((x * x + y * y) / (half_diag * half_diag)).min(1.0),
                platform_half_diag_mm: half_diag,
            },
            record: PartRecord {
                file,
                serial,
                machine: machine.name.clone(),
                process: machine.process.to_string(),
                material,
                design: design.as_str().to_string(),
                build,
                tray_row,
                tray_col,
                pixel_size_um: self.imaging.pixel_um,
                mode: self.imaging.mode.as_str().to_string(),
                seed,
                split: split.to_string(),
            },
        }
    }

    /// Images one planned part (its first view).
    pub fn render(&self, plan: &PartPlan) -> Scan {
        self.render_view(plan, 0)
    }

    /// Images view `view` of a planned part: the same part (machine, design, material, build,
    /// tray position), framed from another place and angle with its own light and noise.
    pub fn render_view(&self, plan: &PartPlan, view: u32) -> Scan {
        let machine = &self.fleet.machines[plan.machine];
        let material = presets::material(&plan.record.material).expect("fleet materials were validated");
        let mut rng = match view {
            0 => rng_for(&[plan.context.seed, name_hash("imaging")]),
            v => rng_for(&[plan.context.seed, name_hash("imaging"), u64::from(v)]),
        };
        capture(&machine.params, material, plan.design, &plan.context, &self.imaging, &mut rng)
    }

    /// Every frame of a planned part, view 0 first (see [`DatasetSpec::views`]).
    pub fn view_records(&self, plan: &PartPlan) -> Vec<ViewRecord> {
        (0..self.views.max(1))
            .map(|view| ViewRecord {
                file: view_file(&plan.record.file, view),
                serial: plan.record.serial.clone(),
                view,
            })
            .collect()
    }

    /// Checks the spec for combinations that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.parts_per_machine == 0 {
            bail!("--parts-per-machine must be at least 1");
        }
        if !(self.imaging.pixel_um.is_finite() && (0.5..=200.0).contains(&self.imaging.pixel_um)) {
            bail!("pixel size {} µm is outside 0.5..=200 µm", self.imaging.pixel_um);
        }
        if !matches!(self.imaging.bit_depth, 8 | 16) {
            bail!("bit depth {} is not supported: use 8 or 16", self.imaging.bit_depth);
        }
        if self.jpeg_quality.is_some() && self.imaging.bit_depth != 8 {
            bail!("JPEG holds 8-bit images only: drop --jpeg-quality or use --bit-depth 8");
        }
        if let Some(q) = self.jpeg_quality
            && !(1..=100).contains(&q)
        {
            bail!("--jpeg-quality {q} must be 1..=100");
        }
        if self.views == 0 || self.views > 64 {
            bail!("--views {} must be 1..=64", self.views);
        }
        if self.views > 1 && self.imaging.mode != super::imaging::Mode::Microscope {
            bail!("--views {} needs --mode microscope: a scanner images the whole part at once", self.views);
        }
        let (w, h) = self.imaging.microscope_px;
        if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
            bail!("microscope frame {w}x{h} must be 16..=8192 pixels on each side");
        }
        Ok(())
    }
}

/// What a generation run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    pub parts: usize,
    pub seconds: f64,
    pub labels: PathBuf,
}

/// Generates the dataset into `out`: images, labels.csv (written last, atomically, so a
/// directory with labels.csv is complete) and fleet.toml (the resolved fleet).
pub fn generate(spec: &DatasetSpec, out: &Path, overwrite: bool) -> anyhow::Result<Summary> {
    spec.validate()?;
    let labels_path = out.join("labels.csv");
    if labels_path.exists() && !overwrite {
        bail!(
            "{} already holds a dataset (labels.csv exists); pass --overwrite or choose another --out",
            out.display()
        );
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create output directory {}", out.display()))?;
    let plans = spec.plan();
    let start = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = plans.len();
    plans.par_iter().try_for_each(|plan| -> anyhow::Result<()> {
        for view in spec.view_records(plan) {
            let scan = spec.render_view(plan, view.view);
            let bytes = scan.encode(spec.jpeg_quality).context("encoding image")?;
            write_atomically(&out.join(&view.file), &bytes)?;
        }
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_multiple_of(100) || n == total {
            log::info!("synth: {n}/{total} parts, {:.1} parts/s", n as f64 / start.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    write_atomically(&out.join("fleet.toml"), spec.fleet.to_toml().as_bytes())?;
    if spec.views > 1 {
        let mut csv = csv::Writer::from_writer(Vec::new());
        for record in plans.iter().flat_map(|plan| spec.view_records(plan)) {
            csv.serialize(&record)?;
        }
        write_atomically(&out.join("views.csv"), &csv.into_inner().context("writing views")?)?;
    }
    let mut csv = csv::Writer::from_writer(Vec::new());
    for plan in &plans {
        csv.serialize(&plan.record)?;
    }
    write_atomically(&labels_path, &csv.into_inner().context("writing labels")?)?;
    Ok(Summary { parts: total, seconds: start.elapsed().as_secs_f64(), labels: labels_path })
}

/// The file of view `view` of a part whose first view is `file`: `scans/X.png`, then
/// `scans/X.view1.png`, `scans/X.view2.png`...
fn view_file(file: &str, view: u32) -> String {
    if view == 0 {
        return file.to_string();
    }
    match file.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.view{view}.{ext}"),
        None => format!("{file}.view{view}"),
    }
}

/// Writes a file through a temporary name and a rename, so no reader sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("part");
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_fractions_parse_and_reject() {
        assert_eq!(SplitFractions::parse("0.7,0.15,0.15").unwrap().val, 0.15);
        assert!(SplitFractions::parse("0.7,0.2").is_err());
        assert!(SplitFractions::parse("0.7,0.2,0.2").is_err());
        assert!(SplitFractions::parse("a,b,c").is_err());
    }

    #[test]
    fn view_files_keep_the_first_view_and_extension() {
        assert_eq!(view_file("scans/M2-1-00003.png", 0), "scans/M2-1-00003.png");
        assert_eq!(view_file("scans/M2-1-00003.png", 2), "scans/M2-1-00003.view2.png");
        assert_eq!(view_file("test/M2-1/M2-1-00003.jpg", 1), "test/M2-1/M2-1-00003.view1.jpg");
    }
}
