//! `amfp drift report`: per machine, where its drift monitoring stands (docs/drift.md), from the
//! daemon's state or from a replay of results logs, with a PNG of the parts over time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::enroll::gallery_path;
use crate::config::Settings;
use crate::drift::{self, DRIFT_DIR, DriftSettings, HistoryPoint, MachineState, Monitor};
use crate::gallery::Gallery;
use crate::identify::model_paths;
use crate::model::Model;
use crate::result::Attribution;

/// `amfp drift` subcommands.
#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Each monitored machine's state (statistic, parts, alarm); exit 3 when an alarm stands.
    Report(ReportArgs),
}

/// Arguments of `amfp drift report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The daemon's state directory, whose drift/ is read (default: daemon.state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Instead of the daemon's state, replay these results (Attribution JSON lines: a results
    /// log, or `amfp identify --json` output) in order through a fresh monitor.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub results: Vec<PathBuf>,
    /// Replay: the model whose gallery holds the references (default: model.path, else the
    /// bundled reference model).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Replay: the gallery (default: model.gallery, else the one beside the model).
    #[arg(long, value_name = "PATH")]
    pub gallery: Option<PathBuf>,
    /// Replay: the CUSUM's decision threshold h (default: drift.threshold).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Replay: the CUSUM's allowance k (default: drift.allowance).
    #[arg(long)]
    pub allowance: Option<f64>,
    /// Draw each machine's parts over time with its alarm into this PNG.
    #[arg(long, value_name = "PATH")]
    pub png: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `amfp drift`.
pub fn run(settings: &Settings, cmd: DriftCommand) -> ExitCode {
    let DriftCommand::Report(args) = cmd;
    match report(settings, &args) {
        Ok(alarm) => ExitCode::from(if alarm { 3 } else { 0 }),
        Err(e) => {
            eprintln!("amfp drift report: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Prints the report; true when an alarm stands.
fn report(settings: &Settings, args: &ReportArgs) -> Result<bool> {
    let mut s = settings.drift;
    if args.results.is_empty() && (args.threshold.is_some() || args.allowance.is_some()) {
        bail!("--threshold and --allowance apply to a replay (--results); the daemon's state was made with its own");
    }
    s.threshold = args.threshold.unwrap_or(s.threshold);
    s.allowance = args.allowance.unwrap_or(s.allowance);
    if let Some((key, shown)) = drift::check(&s).into_iter().next() {
        bail!("{} {shown} is out of range ({key})", key.trim_start_matches("drift."));
    }
    let (state, history, source) = if args.results.is_empty() {
        let dir = args.state_dir.clone().unwrap_or_else(|| settings.daemon.state_dir.clone()).join(DRIFT_DIR);
        if !dir.is_dir() {
            bail!(
                "{} does not exist: the daemon has not monitored drift there (no gallery with drift references, \
                 drift.enabled false, or another daemon.state_dir); name it with --state-dir",
                dir.display()
            );
        }
        let state = drift::read_state(&dir.join(drift::STATE_FILE))?;
        let (history, bad) = drift::read_history(&dir)?;
        if bad > 0 {
            log::warn!("{bad} lines of the drift history could not be read and were skipped");
        }
        (state, history, dir.display().to_string())
    } else {
        let monitor = replay(settings, args, s)?;
        (monitor.state().clone(), monitor.kept().to_vec(), format!("replay of {} file(s)", args.results.len()))
    };
    if let Some(png) = &args.png {
        drift::plot::write_png(&history, s.threshold, png)?;
    }
    let alarm = state.machines.values().any(|m| m.alarm.is_some());
    if args.json {
        let machines: Vec<_> = state.machines.iter().map(|(label, m)| machine_json(label, m, &history)).collect();
        let out = json!({"source": source, "threshold": s.threshold, "allowance": s.allowance, "machines": machines,
                         "png": args.png});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&source, &state.machines, s.threshold);
        if let Some(png) = &args.png {
            println!("picture: {}", png.display());
        }
    }
    Ok(alarm)
}

/// Replays the results files through an in-memory monitor.
fn replay(settings: &Settings, args: &ReportArgs, s: DriftSettings) -> Result<Monitor> {
    let flags: Vec<PathBuf> = args.model.iter().cloned().collect();
    let model_path = model_paths(settings, &flags).remove(0);
    let model = Model::load_with(&model_path, 1, &settings.load_options())
        .with_context(|| format!("cannot load model {}", model_path.display()))?;
    let path = gallery_path(settings, &model_path, args.gallery.as_deref())?;
    let gallery = Gallery::load(&path, &model)?;
    if !gallery.machines.iter().any(|m| m.drift.is_some()) {
        bail!(
            "gallery {} has no drift references: refit it (`python -m amfp_train.gallery`) or re-enroll its machines \
             (docs/drift.md)",
            path.display()
        );
    }
    let mut monitor = Monitor::in_memory(s);
    for file in &args.results {
        for (n, line) in read_lines(file)?.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let a: Attribution = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not an Attribution", file.display(), n + 1))?;
            monitor.observe(&gallery, &a);
        }
    }
    Ok(monitor)
}

fn read_lines(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read results {}", file.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

fn machine_json(label: &str, m: &MachineState, history: &[HistoryPoint]) -> serde_json::Value {
    let z: Vec<f64> =
        history.iter().filter(|p| p.machine == label && p.fingerprint == m.fingerprint).map(|p| p.z).collect();
    json!({
        "machine": label, "fingerprint": m.fingerprint, "since": m.since, "parts": m.parts,
        "statistic": m.statistic, "alarm": m.alarm, "reference": m.reference,
        "median_z": median(&z),
    })
}

fn print_table(source: &str, machines: &std::collections::BTreeMap<String, MachineState>, threshold: f64) {
    println!("drift monitoring ({source}), alarm when the statistic exceeds {threshold}");
    if machines.is_empty() {
        println!("no part followed yet");
        return;
    }
    println!("{:<14} {:>7} {:>10}  state", "machine", "parts", "statistic");
    for (label, m) in machines {
        let state = match &m.alarm {
            Some(a) => format!(
                "ALARM since part {} ({}): {} change, began about {} parts before; confirm and re-enroll",
                a.part,
                a.time,
                a.change.as_str(),
                a.change_parts_ago
            ),
            None => "ok".into(),
        };
        println!("{label:<14} {:>7} {:>10.2}  {state}", m.parts, m.statistic);
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}
