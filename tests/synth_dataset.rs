//! `amfp synth` end to end: datasets written by the real binary into temporary directories,
//! checked for determinism, labels, splits, drift and fleet-file errors; the library API where
//! it is handier.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use amfp::synth::Fleet;
use amfp::synth::process::fdm::FdmParams;
use amfp::synth::process::{Grid, PartContext, ProcessParams, Surface};
use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

const HEADER: &str =
    "file,serial,machine,process,material,design,build,tray_row,tray_col,pixel_size_um,mode,seed,split";

/// One machine of each process, from the built-in fleet.
const FOUR: &str = "S450-1,M2-1,F3B-1,4200-1";

/// A scratch directory holding an empty configuration file, so that no /etc/amfp/amfp.toml or
/// AMFP__* variable of the machine running the tests changes the defaults.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("amfp-synth-").tempdir().unwrap();
        std::fs::write(dir.path().join("amfp.toml"), "").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `amfp synth` with the scratch configuration and a clean environment.
    fn synth(&self) -> Command {
        let mut cmd = common::amfp_clean_env();
        cmd.arg("--config").arg(self.path("amfp.toml")).arg("synth");
        cmd
    }

    /// Generates a dataset into `name` with these extra arguments; panics on failure.
    fn generate(&self, name: &str, args: &[&str]) -> PathBuf {
        let out = self.path(name);
        self.synth().arg("--out").arg(&out).args(args).assert().success();
        out
    }

    /// Writes a file into the scratch directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Microscope frames of 64x48 pixels: quick, and every frame is all surface.
const SMALL: &[&str] = &["--mode", "microscope", "--microscope-size", "64x48"];

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

type Row = HashMap<String, String>;

/// labels.csv as rows keyed by column; also checks the header.
fn labels(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    assert_eq!(text.lines().next().unwrap(), HEADER, "labels.csv header");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader.records().map(|r| header.iter().cloned().zip(r.unwrap().iter().map(String::from)).collect()).collect()
}

fn num(row: &Row, key: &str) -> u64 {
    row[key].parse().unwrap_or_else(|_| panic!("{key} = {:?} is not a number", row[key]))
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

#[test]
fn same_seed_gives_identical_bytes_whatever_the_thread_count() {
    let s = Scratch::new();
    let args = |threads: &'static str| -> Vec<&'static str> {
        let mut a = vec!["--machines", FOUR, "--parts-per-machine", "4", "--seed", "3", "--threads", threads];
        a.extend_from_slice(SMALL);
        a
    };
    let a = tree(&s.generate("a", &args("1")));
    let b = tree(&s.generate("b", &args("1")));
    let c = tree(&s.generate("c", &args("2")));
    // 16 images, labels.csv and fleet.toml.
    assert_eq!(a.len(), 18, "{:?}", a.keys().collect::<Vec<_>>());
    assert!(a.contains_key("labels.csv") && a.contains_key("fleet.toml"));
    for (name, other) in [("same seed", &b), ("2 threads", &c)] {
        assert_eq!(a.keys().collect::<Vec<_>>(), other.keys().collect::<Vec<_>>(), "{name}: file lists differ");
        for (file, bytes) in &a {
            assert!(bytes == &other[file], "{name}: {file} differs");
        }
    }

    // Scanner mode (whole parts, 8 bit) too, on one part of each process.
    let scan = |name: &str, threads: &str| {
        tree(&s.generate(name, &["--machines", FOUR, "--parts-per-machine", "1", "--threads", threads]))
    };
    let (s1, s2) = (scan("s1", "1"), scan("s2", "2"));
    assert_eq!(s1.len(), 6);
    assert!(s1 == s2, "scanner datasets differ between 1 and 2 threads");
}

#[test]
fn another_seed_changes_every_image_but_not_the_fleet() {
    let s = Scratch::new();
    let base = ["--machines", FOUR, "--parts-per-machine", "3"];
    let with = |seed: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(SMALL);
        a.extend_from_slice(&["--seed", seed]);
        a.extend_from_slice(extra);
        a
    };
    let a = tree(&s.generate("a", &with("1", &[])));
    let b = tree(&s.generate("b", &with("2", &[])));
    for (file, bytes) in a.iter().filter(|(f, _)| f.ends_with(".png")) {
        assert!(bytes != &b[file], "{file} is the same under seeds 1 and 2");
    }
    assert_ne!(a["labels.csv"], b["labels.csv"]);
    assert_eq!(
        String::from_utf8_lossy(&a["fleet.toml"]),
        String::from_utf8_lossy(&b["fleet.toml"]),
        "--seed must not change the machines"
    );

    // The fleet seed defines the machines: another one changes every unit's parameters.
    let c = tree(&s.generate("c", &with("1", &["--fleet-seed", "8"])));
    assert_ne!(a["fleet.toml"], c["fleet.toml"]);
    let (fa, fc) = (Fleet::load(&s.path("a/fleet.toml")).unwrap(), Fleet::load(&s.path("c/fleet.toml")).unwrap());
    for (ma, mc) in fa.machines.iter().zip(&fc.machines) {
        assert_eq!(ma.name, mc.name);
        assert_ne!(ma.params, mc.params, "{}: --fleet-seed did not change its parameters", ma.name);
    }

    // --print-fleet agrees: the same under any --seed, another under another --fleet-seed.
    let print =
        |args: &[&str]| s.synth().arg("--print-fleet").args(args).assert().success().get_output().stdout.clone();
    assert_eq!(print(&["--seed", "1"]), print(&["--seed", "99"]));
    assert_ne!(print(&["--fleet-seed", "7"]), print(&["--fleet-seed", "8"]));
}

// ---------------------------------------------------------------------------------------------
// Labels and files
// ---------------------------------------------------------------------------------------------

/// Checks every row against the fleet: files, processes, materials, serials, builds and trays.
fn check_rows(dir: &Path, rows: &[Row], fleet: &Fleet, parts: u64, first_build: u64) {
    let serials: BTreeSet<&str> = rows.iter().map(|r| r["serial"].as_str()).collect();
    assert_eq!(serials.len(), rows.len(), "serials are not unique");
    let seeds: BTreeSet<&str> = rows.iter().map(|r| r["seed"].as_str()).collect();
    assert_eq!(seeds.len(), rows.len(), "part seeds are not unique");
    for m in &fleet.machines {
        let mine: Vec<&Row> = rows.iter().filter(|r| r["machine"] == m.name).collect();
        assert_eq!(mine.len() as u64, parts, "{} has {} rows", m.name, mine.len());
        let cells = u64::from(m.tray[0] * m.tray[1]);
        let cols = u64::from(m.tray[1]);
        for r in mine {
            assert!(dir.join(&r["file"]).is_file(), "{} is missing", r["file"]);
            assert_eq!(r["process"], m.process.as_str(), "{}", r["serial"]);
            assert!(
                m.materials.contains(&r["material"]),
                "{}: material {} not printed by {}",
                r["serial"],
                r["material"],
                m.name
            );
            assert!(["connector", "plug", "lattice"].contains(&r["design"].as_str()), "{}", r["design"]);
            // Serials count a machine's parts in print order: a tray fills, then the next build.
            let index: u64 = r["serial"].strip_prefix(&format!("{}-", m.name)).unwrap().parse().unwrap();
            assert!(index < parts);
            assert_eq!(num(r, "build"), first_build + index / cells, "{}", r["serial"]);
            assert_eq!(num(r, "tray_row"), index % cells / cols, "{}", r["serial"]);
            assert_eq!(num(r, "tray_col"), index % cells % cols, "{}", r["serial"]);
            assert!(["train", "val", "test"].contains(&r["split"].as_str()));
        }
    }
    assert_eq!(rows.len() as u64, parts * fleet.machines.len() as u64, "rows of machines not in the fleet");
}

#[test]
fn labels_describe_every_16_bit_microscope_frame() {
    let s = Scratch::new();
    // 14 parts: more than one tray of M2 (12 cells) and F3B (9 cells), so builds advance.
    let dir = s.generate(
        "d",
        &[
            "--machines",
            FOUR,
            "--parts-per-machine",
            "14",
            "--first-build",
            "3",
            "--mode",
            "microscope",
            "--microscope-size",
            "40x24",
            "--bit-depth",
            "16",
            "--pixel-um",
            "2.5",
        ],
    );
    let rows = labels(&dir);
    let fleet = Fleet::load(&dir.join("fleet.toml")).unwrap();
    assert_eq!(fleet, Fleet::paper(7).select(&FOUR.split(',').map(String::from).collect::<Vec<_>>()).unwrap());
    check_rows(&dir, &rows, &fleet, 14, 3);
    assert!(rows.iter().any(|r| num(r, "build") == 4), "no part of a second build");
    for r in &rows {
        assert_eq!(r["mode"], "microscope");
        assert_eq!(r["pixel_size_um"].parse::<f64>().unwrap(), 2.5);
        assert!(
            r["file"].starts_with("scans/") && r["file"].ends_with(&format!("{}.png", r["serial"])),
            "{}",
            r["file"]
        );
        let img = image::open(dir.join(&r["file"])).unwrap();
        assert_eq!(img.color(), image::ColorType::L16, "{}", r["file"]);
        assert_eq!((img.width(), img.height()), (40, 24), "{}", r["file"]);
        // 16 bits are used: values beyond 8-bit steps.
        let px = img.to_luma16();
        assert!(px.pixels().any(|p| p.0[0] % 256 != 0), "{} looks 8-bit", r["file"]);
    }
}

#[test]
fn scanner_scans_are_8_bit_whole_parts() {
    let s = Scratch::new();
    let dir = s.generate("d", &["--machines", "S450-1,M2-1", "--parts-per-machine", "2"]);
    let rows = labels(&dir);
    let fleet = Fleet::paper(7).select(&["S450-1".into(), "M2-1".into()]).unwrap();
    check_rows(&dir, &rows, &fleet, 2, 1);
    for r in &rows {
        assert_eq!(r["mode"], "scanner");
        assert_eq!(r["pixel_size_um"].parse::<f64>().unwrap(), 10.6);
        let img = image::open(dir.join(&r["file"])).unwrap();
        assert_eq!(img.color(), image::ColorType::L8, "{}", r["file"]);
        // The whole part (at most 15 x 12 mm) with a margin, at 10.6 µm: about 1000-1700 px.
        let (w, h) = (img.width(), img.height());
        assert!((900..1800).contains(&w) && (900..1800).contains(&h), "{}: {w}x{h}", r["file"]);
        // A dark background around a lighter part: the border is darker than the centre.
        let g = img.to_luma8();
        let border: f64 = (0..w).map(|x| f64::from(g.get_pixel(x, 0).0[0])).sum::<f64>() / f64::from(w);
        let centre: f64 = (0..w).map(|x| f64::from(g.get_pixel(x, h / 2).0[0])).sum::<f64>() / f64::from(w);
        assert!(centre > border + 10.0, "{}: border {border}, centre row {centre}", r["file"]);
    }
}

#[test]
fn imagefolder_layout_puts_files_under_split_and_machine() {
    let s = Scratch::new();
    let mut args = vec!["--machines", "M2-1,F3B-1", "--parts-per-machine", "10", "--layout", "imagefolder"];
    args.extend_from_slice(SMALL);
    let dir = s.generate("d", &args);
    let rows = labels(&dir);
    assert_eq!(rows.len(), 20);
    for r in &rows {
        assert_eq!(r["file"], format!("{}/{}/{}.png", r["split"], r["machine"], r["serial"]));
        assert!(dir.join(&r["file"]).is_file());
    }
    let images = tree(&dir).into_keys().filter(|f| f.ends_with(".png")).count();
    assert_eq!(images, 20, "files outside labels.csv");
    assert!(!dir.join("scans").exists());
}

#[test]
fn jpeg_output_and_its_limits() {
    let s = Scratch::new();
    let mut args = vec!["--machines", "S450-1,4200-1", "--parts-per-machine", "2", "--jpeg-quality", "85"];
    args.extend_from_slice(SMALL);
    let dir = s.generate("d", &args);
    for r in labels(&dir) {
        assert!(r["file"].ends_with(".jpg"), "{}", r["file"]);
        let bytes = std::fs::read(dir.join(&r["file"])).unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), image::ImageFormat::Jpeg);
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.color(), img.width(), img.height()), (image::ColorType::L8, 64, 48));
    }
    // A lower quality gives smaller files of the same images.
    let mut low = args.clone();
    low[5] = "20";
    let dir_low = s.generate("low", &low);
    let size = |d: &Path| tree(d).iter().filter(|(f, _)| f.ends_with(".jpg")).map(|(_, b)| b.len()).sum::<usize>();
    assert!(size(&dir_low) < size(&dir), "quality 20 is not smaller than 85");

    s.synth()
        .args(["--out"])
        .arg(s.path("bad"))
        .args(["--bit-depth", "16", "--jpeg-quality", "90", "--parts-per-machine", "1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("JPEG holds 8-bit images only"));
    s.synth()
        .arg("--out")
        .arg(s.path("bad"))
        .args(["--jpeg-quality", "0", "--parts-per-machine", "1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--jpeg-quality 0 must be 1..=100"));
    assert!(!s.path("bad").join("labels.csv").exists());
}

// ---------------------------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------------------------

/// serial -> split of a dataset.
fn splits(rows: &[Row]) -> BTreeMap<String, String> {
    rows.iter().map(|r| (r["serial"].clone(), r["split"].clone())).collect()
}

#[test]
fn splits_are_by_part_stratified_and_stable() {
    let s = Scratch::new();
    let n = 40u64;
    let common =
        ["--parts-per-machine", "40", "--mode", "microscope", "--microscope-size", "16x16", "--split", "0.6,0.25,0.15"];
    let all = s.generate("all", &common);
    let rows = labels(&all);
    let fleet = Fleet::paper(7);
    assert_eq!(rows.len() as u64, 21 * n);
    for m in &fleet.machines {
        let mut count: HashMap<&str, u64> = HashMap::new();
        for r in rows.iter().filter(|r| r["machine"] == m.name) {
            *count.entry(r["split"].as_str()).or_default() += 1;
        }
        // Each machine's parts are split by the fractions: 24 / 10 / 6 of 40.
        assert_eq!((count["train"], count["val"], count["test"]), (24, 10, 6), "{}: {count:?}", m.name);
    }
    // By part: a serial is in exactly one split (one row per part).
    let map = splits(&rows);
    assert_eq!(map.len(), rows.len());
    // The split is a shuffle, not the print order: train is not just the first parts.
    let first: Vec<&String> = (0..24).map(|i| &map[&format!("M2-1-{i:05}")]).collect();
    assert!(first.iter().any(|s| *s != "train"), "M2-1's first 24 parts are all train");

    // The same machines in a smaller fleet keep their parts' splits, and their images.
    let mut args = vec!["--machines", "M2-3,S900-2,5200-1"];
    args.extend_from_slice(&common);
    let some = s.generate("some", &args);
    let some_rows = labels(&some);
    assert_eq!(some_rows.len() as u64, 3 * n);
    for (serial, split) in splits(&some_rows) {
        assert_eq!(map[&serial], split, "{serial} changed split when other machines were dropped");
    }
    let (ta, ts) = (tree(&all), tree(&some));
    for r in &some_rows {
        assert!(ts[&r["file"]] == ta[&r["file"]], "{} changed when other machines were dropped", r["file"]);
    }

    // Another seed shuffles differently.
    let mut args: Vec<&str> = common.to_vec();
    args.extend_from_slice(&["--machines", "M2-1", "--seed", "8"]);
    let other = splits(&labels(&s.generate("other", &args)));
    assert!(other.iter().any(|(serial, split)| map[serial] != *split), "--seed 8 gives the same split");

    // Fractions that do not sum to one are refused.
    s.synth()
        .arg("--out")
        .arg(s.path("bad"))
        .args(["--split", "0.7,0.2,0.2"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("must be three fractions train,val,test"));
}

// ---------------------------------------------------------------------------------------------
// Drift with build number
// ---------------------------------------------------------------------------------------------

/// The flank asymmetry of an FDM part's beads: across the roads, the mean steepness of the
/// steeper flanks over that of the gentler ones. A symmetric bead gives 1; a bead whose halves
/// are (1 - a) and (1 + a) half-widths wide gives about (1 + a) / (1 - a).
fn fdm_flank_ratio(params: &ProcessParams, build: u32) -> f64 {
    // Roughness, width ripple and wobble blur the flanks; the asymmetry is what is measured.
    let ProcessParams::Fdm(p) = params else { unreachable!() };
    let clean = ProcessParams::Fdm(FdmParams {
        roughness_um: 0.0,
        ripple_amp: 0.0,
        wobble_amp_um: 0.0,
        seam_amp_um: 0.0,
        ..p.clone()
    });
    let (n, px) = (400, 0.005);
    let half = (n as f64 - 1.0) / 2.0 * px;
    let grid = Grid { width: n, height: n, origin: (-half, -half), d_col: (px, 0.0), d_row: (0.0, px), pixel_mm: px };
    let part = PartContext {
        seed: 3,
        machine_seed: 1,
        build,
        platform_xy_mm: (20.0, 10.0),
        tray_r2: 0.3,
        platform_half_diag_mm: 270.0,
    };
    let mut s = Surface::new(n, n);
    clean.render(&part, &grid, &mut s);
    let h = |c: usize, r: usize| f64::from(s.relief_um[r * n + c]);
    // Roads run at +-45 degrees: slopes along both diagonals; the one across the roads varies most.
    let mut diag = [Vec::new(), Vec::new()];
    for r in 0..n - 1 {
        for c in 1..n - 1 {
            diag[0].push(h(c - 1, r + 1) - h(c, r));
            diag[1].push(h(c + 1, r + 1) - h(c, r));
        }
    }
    let energy = |v: &Vec<f64>| v.iter().map(|d| d * d).sum::<f64>();
    let across = if energy(&diag[0]) > energy(&diag[1]) { &diag[0] } else { &diag[1] };
    let mean = |f: &dyn Fn(f64) -> bool| {
        let sel: Vec<f64> = across.iter().copied().filter(|&d| f(d)).collect();
        sel.iter().map(|d| d.abs()).sum::<f64>() / sel.len() as f64
    };
    let (rise, fall) = (mean(&|d| d > 1e-6), mean(&|d| d < -1e-6));
    rise.max(fall) / rise.min(fall)
}

#[test]
fn nozzle_wear_drifts_with_build_number() {
    let fleet = Fleet::paper(7);
    let ProcessParams::Fdm(p) = &fleet.machine("S450-1").unwrap().params else { unreachable!() };
    // The model: asymmetry grows linearly with builds.
    let (a1, a60) = (p.asymmetry_at(1), p.asymmetry_at(60));
    assert!((a60 - a1 - 59.0 * p.nozzle_wear_per_build).abs() < 1e-12);
    assert!(a60 - a1 > 0.1, "S450-1 wears too little to test: {a1} -> {a60}");
    // On the surface: the bead's flanks grow lopsided as the nozzle wears.
    let params = &fleet.machine("S450-1").unwrap().params;
    let (r1, r60) = (fdm_flank_ratio(params, 1), fdm_flank_ratio(params, 60));
    let predicted = |a: f64| (1.0 + a) / (1.0 - a);
    eprintln!(
        "flank ratio {r1:.3} -> {r60:.3}; from the nozzle asymmetry {a1:.3} -> {a60:.3} the model says {:.3} -> {:.3}",
        predicted(a1),
        predicted(a60)
    );
    for (measured, a) in [(r1, a1), (r60, a60)] {
        assert!(
            (measured / predicted(a) - 1.0).abs() < 0.15,
            "flank ratio {measured} at asymmetry {a}, the model says {}",
            predicted(a)
        );
    }
    assert!(r60 > r1 * 1.1, "the flanks did not grow lopsided: {r1} -> {r60}");

    // Through the binary: the same parts (same serials, so the same seeds, placement and sensor
    // noise) at builds 60.. instead of 1..: labels say so, and the images differ on the part's
    // surface while the background around it stays the same to the bit.
    let s = Scratch::new();
    let args = |first: &'static str| ["--machines", "S450-1", "--parts-per-machine", "2", "--first-build", first];
    let early = s.generate("early", &args("1"));
    let late = s.generate("late", &args("60"));
    let (re, rl) = (labels(&early), labels(&late));
    for (e, l) in re.iter().zip(&rl) {
        assert_eq!((e["serial"].as_str(), e["seed"].as_str()), (l["serial"].as_str(), l["seed"].as_str()));
        assert_eq!(num(l, "build"), num(e, "build") + 59);
        let (ie, il) = (
            image::open(early.join(&e["file"])).unwrap().to_luma8(),
            image::open(late.join(&l["file"])).unwrap().to_luma8(),
        );
        assert_eq!(ie.dimensions(), il.dimensions());
        let (w, h) = ie.dimensions();
        // Background: pixels with only dark pixels (below the midpoint) within 6 px.
        let dark: Vec<bool> = ie.pixels().map(|p| p.0[0] < 90).collect();
        let far_from_part = |x: u32, y: u32| {
            (y.saturating_sub(6)..(y + 7).min(h))
                .all(|yy| (x.saturating_sub(6)..(x + 7).min(w)).all(|xx| dark[(yy * w + xx) as usize]))
        };
        let (mut bg_n, mut bg_diff, mut part_n, mut part_diff) = (0u64, 0u64, 0u64, 0u64);
        for y in (0..h).step_by(2) {
            for x in (0..w).step_by(2) {
                let d = u64::from(ie.get_pixel(x, y).0[0].abs_diff(il.get_pixel(x, y).0[0]));
                if far_from_part(x, y) {
                    (bg_n, bg_diff) = (bg_n + 1, bg_diff + d);
                } else if ie.get_pixel(x, y).0[0] > 120 {
                    (part_n, part_diff) = (part_n + 1, part_diff + d);
                }
            }
        }
        assert!(bg_n > 10_000 && part_n > 10_000, "{}: {bg_n} background, {part_n} part pixels", e["serial"]);
        let part_mean = part_diff as f64 / part_n as f64;
        eprintln!(
            "{}: build 1 vs 60: mean |difference| {part_mean:.2} on the part, {bg_diff} summed on the background",
            e["serial"]
        );
        assert_eq!(bg_diff, 0, "{}: the background changed with the build number", e["serial"]);
        assert!(part_mean > 2.0, "{}: the part's surface hardly changed after 59 builds ({part_mean})", e["serial"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Fleet files
// ---------------------------------------------------------------------------------------------

/// Runs `amfp synth --fleet <file> --out <dir>` on a bad fleet file; returns stderr after
/// checking that it failed, wrote nothing and named the file.
fn refused(s: &Scratch, name: &str, text: &str) -> String {
    let path = s.file(name, text);
    let out = s.path(&format!("out-{name}"));
    let assert = s.synth().arg("--fleet").arg(&path).arg("--out").arg(&out).assert().failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(stderr.contains(&path.display().to_string()), "{name}: the file is not named:\n{stderr}");
    assert!(!out.exists(), "{name}: output was written for a bad fleet");
    stderr
}

fn contains_all(stderr: &str, parts: &[&str]) {
    for p in parts {
        assert!(stderr.contains(p), "{p:?} missing from:\n{stderr}");
    }
}

#[test]
fn bad_fleet_files_are_refused_with_clear_errors() {
    let s = Scratch::new();
    let ok = "[[machine]]\nname = \"M2-a\"\nmodel = \"carbon-m2\"\n";

    let e = refused(&s, "model.toml", &format!("{ok}[[machine]]\nname = \"Q-1\"\nmodel = \"carbon-m3\"\n"));
    contains_all(
        &e,
        &["machine[1] (\"Q-1\")", "unknown model \"carbon-m3\"", "known models:", "carbon-m2", "hp-mjf-4200"],
    );

    let e = refused(&s, "key.toml", &format!("{ok}params = {{ pixel_pitch = 80 }}\n"));
    contains_all(
        &e,
        &[
            "machine[0] (\"M2-a\")",
            "params.pixel_pitch is not a DLS parameter",
            "allowed:",
            "pixel_pitch_um",
            "tray_falloff",
        ],
    );

    let e = refused(&s, "range.toml", &format!("{ok}params = {{ pixel_pitch_um = 900.0 }}\n"));
    contains_all(&e, &["machine[0] (\"M2-a\")", "params.pixel_pitch_um = 900", "10..=300"]);

    let e = refused(&s, "type.toml", &format!("{ok}params = {{ pixel_pitch_um = \"wide\" }}\n"));
    contains_all(&e, &["machine[0] (\"M2-a\")", "pixel_pitch_um", "invalid type"]);

    let e = refused(&s, "dup.toml", &format!("{ok}{}", ok.replace("carbon-m2", "carbon-l1")));
    contains_all(&e, &["machine[1] (\"M2-a\")", "used twice"]);

    let e = refused(&s, "empty.toml", "seed = 3\n");
    contains_all(&e, &["no machines", "[[machine]]"]);

    let e = refused(&s, "syntax.toml", &format!("seed = 3\n{ok}tray = [3, 4\n"));
    contains_all(&e, &["not valid TOML", "line 5"]);

    let e = refused(&s, "material.toml", &format!("{ok}materials = [\"RPU 70\", \"Unobtainium\"]\n"));
    contains_all(&e, &["machine[0] (\"M2-a\")", "unknown material \"Unobtainium\"", "known materials:", "RPU 70"]);

    let e = refused(&s, "machinekey.toml", &format!("{ok}colour = \"red\"\n"));
    contains_all(&e, &["line 4", "unknown field `colour`", "params"]);

    let e = refused(&s, "tray.toml", &format!("{ok}tray = [0, 4]\n"));
    contains_all(&e, &["machine[0] (\"M2-a\")", "tray", "1..=50"]);

    // Several problems are all reported at once.
    let e = refused(
        &s,
        "many.toml",
        &format!(
            "unit_spread = -1\n{ok}params = {{ cure_relief_um = 99.0 }}\n[[machine]]\nname = \"S\"\nmodel = \"stratasys-f900\"\nparams = {{ road_pitch_um = 5.0 }}\n"
        ),
    );
    contains_all(
        &e,
        &[
            "3 problem(s)",
            "unit_spread",
            "params.cure_relief_um = 99",
            "machine[1] (\"S\")",
            "params.road_pitch_um = 5",
        ],
    );

    // An unknown machine in --machines is named with the fleet's machines.
    s.synth()
        .args(["--machines", "M2-1,M9-9", "--out"])
        .arg(s.path("none"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("no machine named \"M9-9\"").and(predicate::str::contains("M2-1, M2-2")));
}

#[test]
fn printed_fleet_reloads_to_the_same_fleet() {
    let s = Scratch::new();
    let print = |args: &[&str]| {
        String::from_utf8(s.synth().arg("--print-fleet").args(args).assert().success().get_output().stdout.clone())
            .unwrap()
    };
    // The built-in fleet, then a fleet file with defaults, overrides and a machine given by
    // process only.
    let custom = s.file(
        "custom.toml",
        "seed = 11\nunit_spread = 1.5\n[[machine]]\nname = \"a\"\nmodel = \"carbon-m2\"\nparams = { pixel_pitch_um = 76, tray_falloff = 0.2 }\n\
         [[machine]]\nname = \"b\"\nprocess = \"MJF\"\ntray = [2, 2]\nmaterials = [\"PA11\"]\n",
    );
    for (name, args) in [("builtin", vec![]), ("custom", vec!["--fleet", custom.to_str().unwrap()])] {
        let first = print(&args);
        let path = s.file(&format!("{name}-printed.toml"), &first);
        let second = print(&["--fleet", path.to_str().unwrap()]);
        assert_eq!(first, second, "{name}: the printed fleet does not reload to itself");
        assert_eq!(Fleet::load(&path).unwrap().to_toml(), first);
    }
    let fleet = Fleet::load(&custom).unwrap();
    let ProcessParams::Dls(p) = &fleet.machines[0].params else { unreachable!() };
    assert_eq!((p.pixel_pitch_um, p.tray_falloff), (76.0, 0.2), "explicit overrides win over the unit deviation");
    assert_eq!(fleet.machines[1].model, "generic-mjf");
    assert_eq!(fleet.machines[1].tray, [2, 2]);
}

// ---------------------------------------------------------------------------------------------
// Output directory
// ---------------------------------------------------------------------------------------------

#[test]
fn an_existing_dataset_is_kept_unless_overwrite() {
    let s = Scratch::new();
    let mut args = vec!["--machines", "M2-1", "--parts-per-machine", "2", "--seed", "1"];
    args.extend_from_slice(SMALL);
    let dir = s.generate("d", &args);
    let before = tree(&dir);
    let mut again = args.clone();
    again[5] = "2";
    s.synth()
        .arg("--out")
        .arg(&dir)
        .args(&again)
        .assert()
        .failure()
        .stderr(predicate::str::contains("already holds a dataset").and(predicate::str::contains("--overwrite")));
    assert!(tree(&dir) == before, "a refused run changed the dataset");
    s.synth().arg("--out").arg(&dir).args(&again).arg("--overwrite").assert().success();
    let after = tree(&dir);
    assert_ne!(after["labels.csv"], before["labels.csv"]);
}
