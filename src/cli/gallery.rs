//! `amfp gallery list | show | history | remove | rollback`: look after a model's fingerprint
//! gallery and its versions (docs/gallery.md, "Versions and the audit chain").
//!
//! Every change writes a new version; nothing is ever edited in place, and a rollback is itself
//! a new version whose content is an older one's, so the history only grows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::enroll::{default_by, gallery_path};
use crate::config::Settings;
use crate::gallery::{self, Document};
use crate::identify::model_paths;
use crate::trust::SecretKey;

/// Which gallery: `--gallery`, else model.gallery, else the one beside `--model` or the
/// configured (or bundled) model.
#[derive(Debug, Args)]
pub struct Which {
    /// The gallery file.
    #[arg(long, value_name = "PATH", global = true)]
    pub gallery: Option<PathBuf>,
    /// The model whose gallery it is (default: model.path, else the bundled reference model).
    #[arg(long, value_name = "PATH", global = true)]
    pub model: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Sign the new version a change writes with this private key (docs/trust.md).
    #[arg(long, value_name = "PATH", global = true)]
    pub sign_key: Option<PathBuf>,
}

/// `amfp gallery` subcommands.
#[derive(Debug, Subcommand)]
pub enum GalleryCommand {
    /// The machines of the current version.
    List,
    /// One machine: its entry and every change that concerned it.
    Show {
        /// The machine's label.
        label: String,
    },
    /// Every version kept, and whether the audit chain holds (exit 1 when it does not).
    History,
    /// Remove a machine (a new version without it).
    Remove {
        /// The machine's label.
        label: String,
        /// Why: kept in the history.
        #[arg(long)]
        why: String,
        /// Who (default: the user and host).
        #[arg(long)]
        by: Option<String>,
    },
    /// Make an earlier version's content current again (a new version; nothing is deleted).
    Rollback {
        /// The version to return to (`amfp gallery history` lists them).
        version: u32,
        /// Why: kept in the history.
        #[arg(long)]
        why: String,
        /// Who (default: the user and host).
        #[arg(long)]
        by: Option<String>,
    },
}

/// Arguments of `amfp gallery`.
#[derive(Debug, Args)]
pub struct GalleryArgs {
    #[command(flatten)]
    pub which: Which,
    #[command(subcommand)]
    pub command: GalleryCommand,
}

/// Runs `amfp gallery`.
pub fn run(settings: &Settings, args: GalleryArgs) -> ExitCode {
    match command(settings, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command(settings: &Settings, args: GalleryArgs) -> Result<ExitCode> {
    let model = model_paths(settings, args.which.model.as_slice()).remove(0);
    let path = gallery_path(settings, &model, args.which.gallery.as_deref())?;
    let json = args.which.json;
    let doc = Document::read(&path)?;
    let signer = args.which.sign_key.as_deref().map(SecretKey::read).transpose()?;
    let change = |next: &Document, what: &str| -> Result<()> {
        let c = gallery::commit(&path, &doc, next, signer.as_ref())?;
        report_change(json, what, &c);
        if let Some(w) = crate::trust::signing_warning(&settings.trust, signer.as_ref()) {
            eprintln!("warning: {w}");
        }
        Ok(())
    };
    match args.command {
        GalleryCommand::List => list(&doc, json),
        GalleryCommand::Show { label } => show(&doc, &label, json)?,
        GalleryCommand::History => return history(&path, json),
        GalleryCommand::Remove { label, why, by } => {
            let mut next = doc.clone();
            if !next.remove_machine(&label) {
                bail!("gallery {} has no machine {label:?} (amfp gallery list)", path.display());
            }
            if next.labels().len() < 2 {
                bail!("removing {label:?} would leave fewer than two machines in gallery {}", path.display());
            }
            next.next_version("remove", &by.unwrap_or_else(default_by), &why, std::slice::from_ref(&label));
            change(&next, &format!("removed {label}"))?;
        }
        GalleryCommand::Rollback { version, why, by } => {
            if version >= doc.version() {
                bail!("gallery {} is at version {}: roll back to an earlier one", path.display(), doc.version());
            }
            let old = gallery::read_version(&path, version)?;
            if old.model() != doc.model() {
                bail!("version {version} belongs to another model ({}) than the current one", old.model().0);
            }
            let mut next = doc.clone();
            next.restore_from(&old);
            next.next_version(
                "rollback",
                &by.unwrap_or_else(default_by),
                &format!("to version {version}: {why}"),
                &old.labels(),
            );
            change(&next, &format!("rolled back to the content of version {version}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_change(json: bool, what: &str, c: &gallery::Committed) {
    if json {
        println!(
            "{}",
            json!({"gallery": c.path, "version": c.version, "sha256": c.sha256, "change": what, "signed_by": c.signed_by})
        );
    } else {
        let signed = c.signed_by.as_ref().map(|k| format!(", signed with key {k}")).unwrap_or_default();
        println!(
            "{what}: gallery {} is now version {} (sha256 {}){signed}",
            c.path.display(),
            c.version,
            &c.sha256[..12]
        );
    }
}

/// The change that last concerned `label`, if any.
fn last_change<'a>(history: &'a [gallery::HistoryEntry], label: &str) -> Option<&'a gallery::HistoryEntry> {
    history.iter().rev().find(|e| e.labels.iter().any(|l| l == label))
}

fn list(doc: &Document, json: bool) {
    let history = doc.history();
    let rows: Vec<serde_json::Value> = doc
        .machines()
        .iter()
        .map(|m| {
            let label = m["label"].as_str().unwrap_or("");
            let change = last_change(&history, label);
            json!({
                "label": label, "process": m["process"], "parts": m["parts"],
                "offset": m.get("offset").cloned().unwrap_or(0.0.into()), "notes": m.get("notes"),
                "changed": change.map(|e| json!({"version": e.version, "action": e.action, "time": e.time, "by": e.by})),
            })
        })
        .collect();
    if json {
        println!("{}", json!({"gallery": doc.path, "version": doc.version(), "sha256": doc.sha256, "machines": rows}));
        return;
    }
    println!(
        "gallery {} version {} (sha256 {}), model {}",
        doc.path.display(),
        doc.version(),
        &doc.sha256[..12],
        doc.model().0
    );
    println!("{:<16} {:<8} {:>6} {:>8}  last change", "machine", "process", "parts", "offset");
    for r in rows {
        let change = r["changed"]
            .as_object()
            .map(|c| {
                format!(
                    "v{} {} {} by {}",
                    c["version"],
                    c["action"].as_str().unwrap_or(""),
                    c["time"].as_str().unwrap_or(""),
                    c["by"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default();
        println!(
            "{:<16} {:<8} {:>6} {:>8.1}  {change}",
            r["label"].as_str().unwrap_or(""),
            r["process"].as_str().unwrap_or("-"),
            r["parts"],
            r["offset"].as_f64().unwrap_or(0.0)
        );
    }
}

fn show(doc: &Document, label: &str, json: bool) -> Result<()> {
    let Some(m) = doc.machines().iter().find(|m| m["label"] == label) else {
        bail!("gallery {} has no machine {label:?} (amfp gallery list)", doc.path.display());
    };
    let changes: Vec<gallery::HistoryEntry> =
        doc.history().into_iter().filter(|e| e.labels.iter().any(|l| l == label)).collect();
    let mut entry = m.clone();
    if let Some(o) = entry.as_object_mut() {
        o.remove("mean");
    }
    if json {
        println!("{}", json!({"gallery": doc.path, "version": doc.version(), "machine": entry, "changes": changes}));
        return Ok(());
    }
    println!("{label} in gallery {} version {}", doc.path.display(), doc.version());
    for (k, v) in entry.as_object().into_iter().flatten() {
        println!("  {k}: {v}");
    }
    for e in &changes {
        println!("  v{} {} {} by {}: {}", e.version, e.action, e.time, e.by, e.why);
    }
    Ok(())
}

fn history(path: &std::path::Path, json: bool) -> Result<ExitCode> {
    let audit = gallery::audit(path)?;
    // Who signed each version: valid signatures by any key (docs/trust.md).
    let signers: Vec<Vec<String>> = audit
        .versions
        .iter()
        .map(|v| std::fs::read(&v.path).map(|b| crate::trust::valid_signers(&v.path, &b)).unwrap_or_default())
        .collect();
    if json {
        let versions: Vec<_> = audit
            .versions
            .iter()
            .zip(&signers)
            .map(|(v, s)| {
                json!({"version": v.version, "sha256": v.sha256, "created": v.created, "change": v.change,
                                 "machines": v.labels.len(), "signed_by": s})
            })
            .collect();
        println!(
            "{}",
            json!({"gallery": path, "current": audit.current, "versions": versions, "chain_ok": audit.problems.is_empty(),
                   "problems": audit.problems, "notes": audit.notes})
        );
    } else {
        println!("gallery {} (current version {})", path.display(), audit.current);
        for (v, s) in audit.versions.iter().zip(&signers) {
            let change = v
                .change
                .as_ref()
                .map(|c| format!("{} {} by {}: {} [{}]", c.action, c.time, c.by, c.why, c.labels.join(", ")))
                .unwrap_or_default();
            let signed =
                if s.is_empty() { "no valid signature".to_string() } else { format!("signed by key {}", s.join(", ")) };
            println!("  v{:<3} {}  {:>3} machines  {signed}  {change}", v.version, &v.sha256[..12], v.labels.len());
        }
        for n in &audit.notes {
            println!("  note: {n}");
        }
        if audit.problems.is_empty() {
            println!("audit chain: intact ({} versions)", audit.versions.len());
        } else {
            for p in &audit.problems {
                println!("audit chain BROKEN: {p}");
            }
        }
    }
    Ok(if audit.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
