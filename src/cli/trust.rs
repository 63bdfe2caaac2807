//! `amfp key generate`, `amfp sign` and `amfp verify`: the keys and signatures that `[trust]`
//! checks models and galleries against (docs/trust.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::Settings;
use crate::trust::{self, SecretKey, Trust};

/// `amfp key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new ed25519 key pair: NAME.key.pem (private, readable by you only: keep it off the
    /// devices) and NAME.pub.pem (public: list it in [trust] keys on every device).
    Generate {
        /// Path and name of the pair, without suffix (e.g. keys/acme-quality).
        name: PathBuf,
    },
}

/// Arguments of `amfp sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The private key (PEM), from `amfp key generate` or `openssl genpkey -algorithm ed25519`.
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// Models and galleries to sign: each gets FILE.sig beside it.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// Arguments of `amfp verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A public key to check against (repeatable; default: the configuration's [trust] keys).
    #[arg(long, value_name = "PATH")]
    pub key: Vec<PathBuf>,
    /// Files to check against their FILE.sig.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON object per file.
    #[arg(long)]
    pub json: bool,
}

/// Runs `amfp key`.
pub fn run_key(cmd: KeyCommand) -> ExitCode {
    let KeyCommand::Generate { name } = cmd;
    match trust::generate(&name) {
        Ok((secret, public, key)) => {
            println!("key {}: private {} (keep it secret), public {}", key.id(), secret.display(), public.display());
            println!("devices trust it with: [trust] keys = [\"{}\"]", public.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `amfp sign`.
pub fn run_sign(args: SignArgs) -> ExitCode {
    let signed = || -> Result<()> {
        let key = SecretKey::read(&args.key)?;
        for file in &args.files {
            let entry = trust::sign_file(file, &key)?;
            println!(
                "signed {} (sha256 {}) with key {}: {}",
                file.display(),
                &entry.sha256[..12],
                key.public().id(),
                trust::signature_path(file).display()
            );
        }
        Ok(())
    };
    match signed() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `amfp verify`: exit 0 when every file is signed by a trusted key, 1 otherwise.
pub fn run_verify(settings: &Settings, args: VerifyArgs) -> ExitCode {
    match verify(settings, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify(settings: &Settings, args: &VerifyArgs) -> Result<bool> {
    let paths = if args.key.is_empty() { &settings.trust.keys } else { &args.key };
    if paths.is_empty() {
        bail!("no key to verify against: give --key PUBLIC.pem, or list keys in the configuration's [trust] keys");
    }
    let trust = Trust::load(paths)?;
    let mut all = true;
    for file in &args.files {
        let outcome = std::fs::read(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))
            .and_then(|bytes| Ok(trust.check("file", file, &bytes)?));
        all &= outcome.is_ok();
        match (&outcome, args.json) {
            (Ok(signer), true) => {
                println!("{}", json!({"file": file, "ok": true, "key": signer.as_ref().map(|s| s.key_id.clone())}))
            }
            (Err(e), true) => println!("{}", json!({"file": file, "ok": false, "error": format!("{e:#}")})),
            (Ok(signer), false) => println!(
                "{}: signed by {}",
                file.display(),
                signer.as_ref().map(ToString::to_string).unwrap_or_default()
            ),
            (Err(e), false) => println!("{}: REFUSED: {e:#}", file.display()),
        }
    }
    Ok(all)
}
