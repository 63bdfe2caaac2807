//! Signed models and galleries (docs/trust.md).
//!
//! A forged gallery would let counterfeit parts pass as a trusted supplier's, and a swapped model
//! would judge with another network. So a model or a gallery can be signed with an ed25519 key
//! (ring, the crate rustls already brings), and when the configuration's `[trust]` names public
//! keys, amfp refuses any model or gallery that is not signed by one of them.
//!
//! A signature lives beside the file it signs, in `<file>.sig`: a small JSON document with one
//! entry per signature, each naming the sha256 of the bytes it signs, the signer's public key and
//! the ed25519 signature of the file's bytes. More than one entry is allowed: two signers, or,
//! while a gallery version replaces another, the old version's and the new one's, so that a
//! `kill -9` at any point leaves a current file with a valid signature.
//!
//! Keys are PEM files in the standard forms (PKCS#8 private keys, SubjectPublicKeyInfo public
//! keys), the same as `openssl genpkey -algorithm ed25519` writes; a signature entry holds the
//! raw 64-byte signature that `openssl pkeyutl -sign -rawin` makes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::hex;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
const SIGNATURE_FORMAT: &str = "amfp-signature";

/// Why a key, a signature or a signed file cannot be used. Each message names the file, the
/// problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ed25519 {kind} in PEM form: {detail} (make one with `amfp key generate`, docs/trust.md)")]
    Key { path: PathBuf, kind: &'static str, detail: String },
    #[error("signature file {path} is damaged: {detail}; sign the file again (`amfp sign`)")]
    SignatureFile { path: PathBuf, detail: String },
    #[error(
        "{what} {path} is not signed ({sig} does not exist), and [trust] requires a signature by one of {keys}; sign \
         it with `amfp sign --key <private key> {path}` or use a signed file (docs/trust.md)"
    )]
    Unsigned { what: &'static str, path: PathBuf, sig: PathBuf, keys: String },
    #[error("{what} {path} is refused: {reasons}; [trust] accepts signatures by {keys} (docs/trust.md)")]
    Refused { what: &'static str, path: PathBuf, reasons: String, keys: String },
}

/// `[trust]`: which keys' signatures models and galleries must carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSettings {
    /// Public key files (PEM). Empty: nothing needs a signature. Any: every model and gallery
    /// amfp loads must be signed by one of them.
    pub keys: Vec<PathBuf>,
}

/// What each `[trust]` key accepts, in words (for the configuration's messages).
pub const ALLOWED: &[(&str, &str)] =
    &[("trust.keys", "a list of paths to ed25519 public keys in PEM form (amfp key generate writes them)")];

/// The `[trust]` keys whose values are not allowed, with the value as shown.
pub fn check(s: &TrustSettings) -> Vec<(&'static str, String)> {
    s.keys.iter().filter(|p| p.as_os_str().is_empty()).map(|_| ("trust.keys", "an empty path".to_string())).collect()
}

/// What to tell someone who writes a gallery version signed with `signer` (or not signed): on a
/// device whose `[trust]` requires signatures, an unsigned version, or one signed by a key
/// `[trust]` does not name, is refused until a trusted key signs it.
pub fn signing_warning(trust: &TrustSettings, signer: Option<&SecretKey>) -> Option<String> {
    if trust.keys.is_empty() {
        return None;
    }
    let Some(key) = signer else {
        return Some(
            "the new version is not signed and [trust] requires signatures: amfp refuses it until it is signed \
             (amfp sign --key <private key> <gallery>, or --sign-key)"
                .into(),
        );
    };
    let trusted: Vec<PublicKey> = trust.keys.iter().filter_map(|p| PublicKey::read(p).ok()).collect();
    let public = key.public();
    (!trusted.is_empty() && !trusted.iter().any(|k| k.id() == public.id())).then(|| {
        format!(
            "key {} ({}) is not among this device's [trust] keys: what it signs is refused here until its public key \
             is listed",
            public.id(),
            key.path.display()
        )
    })
}

/// An ed25519 public key that signatures are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    /// The file it was read from (reported in errors and logs).
    pub path: Option<PathBuf>,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` file (SubjectPublicKeyInfo, as `amfp key generate` and
    /// `openssl pkey -pubout` write it).
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = read_text(path)?;
        let der = pem_body(&text, "PUBLIC KEY").map_err(|detail| TrustError::Key {
            path: path.to_owned(),
            kind: "public key",
            detail,
        })?;
        let key = der.strip_prefix(&SPKI_PREFIX[..]).and_then(|k| <[u8; 32]>::try_from(k).ok()).ok_or_else(|| {
            TrustError::Key {
                path: path.to_owned(),
                kind: "public key",
                detail: "it holds a public key of another algorithm or size".into(),
            }
        })?;
        Ok(Self { bytes: key, path: Some(path.to_owned()) })
    }

    /// A key from its 32 raw bytes.
    pub fn from_raw(bytes: [u8; 32]) -> Self {
        Self { bytes, path: None }
    }

    /// The key's id: the first 16 hex digits of the sha256 of its 32 bytes, as reported
    /// wherever a signer is named.
    pub fn id(&self) -> String {
        hex(&Sha256::digest(self.bytes))[..16].to_string()
    }

    /// The key as a PEM `PUBLIC KEY` file's text.
    pub fn to_pem(&self) -> String {
        let der: Vec<u8> = SPKI_PREFIX.iter().copied().chain(self.bytes).collect();
        pem("PUBLIC KEY", &der)
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.bytes).verify(message, signature).is_ok()
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("key {} ({})", self.id(), p.display()),
            None => format!("key {}", self.id()),
        }
    }
}

/// An ed25519 private key that signs models and galleries.
pub struct SecretKey {
    pair: Ed25519KeyPair,
    /// The file it was read from.
    pub path: PathBuf,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, public key {})", self.path.display(), self.public().id())
    }
}

impl SecretKey {
    /// Reads a PEM `PRIVATE KEY` file (PKCS#8 v1 or v2, as `amfp key generate` and `openssl
    /// genpkey -algorithm ed25519` write it).
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = read_text(path)?;
        let key_error = |detail: String| TrustError::Key { path: path.to_owned(), kind: "private key", detail };
        let der = pem_body(&text, "PRIVATE KEY").map_err(key_error)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| key_error(e.to_string()))?;
        Ok(Self { pair, path: path.to_owned() })
    }

    /// Its public key, which `[trust]` names to accept what this key signs.
    pub fn public(&self) -> PublicKey {
        let bytes = <[u8; 32]>::try_from(self.pair.public_key().as_ref()).expect("an ed25519 public key is 32 bytes");
        PublicKey::from_raw(bytes)
    }

    /// Signs `bytes` (a file's whole content).
    pub fn sign(&self, bytes: &[u8]) -> SignatureEntry {
        SignatureEntry {
            sha256: hex(&Sha256::digest(bytes)),
            public_key: b64(self.public().bytes.as_slice()),
            ed25519: b64(self.pair.sign(bytes).as_ref()),
            signed: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .to_string(),
        }
    }
}

/// Makes a new key pair and writes it as `<name>.key.pem` (the private key, readable by its owner
/// only) and `<name>.pub.pem` (the public key, for `[trust]`). Refuses to overwrite either.
pub fn generate(name: &Path) -> Result<(PathBuf, PathBuf, PublicKey), TrustError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret_path = with_suffix(name, ".key.pem");
    let public_path = with_suffix(name, ".pub.pem");
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| TrustError::Key {
        path: secret_path.clone(),
        kind: "private key",
        detail: format!("the system's random generator failed ({e})"),
    })?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ring reads the key it made");
    let public = PublicKey::from_raw(pair.public_key().as_ref().try_into().expect("32 bytes"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(TrustError::Io {
                path: p.clone(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it exists; choose another name"),
            });
        }
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TrustError::Io { path, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .map_err(io(&secret_path))?;
    f.write_all(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).map_err(io(&secret_path))?;
    f.sync_all().map_err(io(&secret_path))?;
    crate::atomic_file::write(&public_path, public.to_pem().as_bytes()).map_err(io(&public_path))?;
    Ok((secret_path, public_path, public))
}

/// One signature of a file, as kept in its `.sig` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEntry {
    /// sha256 of the bytes signed: which content of the file this entry is for.
    pub sha256: String,
    /// The signer's public key, base64 of its 32 bytes.
    pub public_key: String,
    /// The ed25519 signature of the file's bytes, base64 of 64 bytes.
    pub ed25519: String,
    /// When it was signed (for people; not checked).
    #[serde(default)]
    pub signed: String,
}

impl SignatureEntry {
    /// The signer's key, when the entry names a well-formed one.
    pub fn key(&self) -> Option<PublicKey> {
        let raw = base64::engine::general_purpose::STANDARD.decode(&self.public_key).ok()?;
        Some(PublicKey::from_raw(raw.try_into().ok()?))
    }

    /// Whether the entry's signature is `key`'s valid signature of `bytes`.
    fn verifies(&self, key: &PublicKey, bytes: &[u8]) -> bool {
        base64::engine::general_purpose::STANDARD.decode(&self.ed25519).is_ok_and(|sig| key.verify(bytes, &sig))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SignatureFile {
    format: String,
    signatures: Vec<SignatureEntry>,
}

/// The signature file of `file`: `<file>.sig`.
pub fn signature_path(file: &Path) -> PathBuf {
    with_suffix(file, ".sig")
}

/// Reads the signature entries kept for `file` (none when it has no `.sig`).
pub fn read_signatures(file: &Path) -> Result<Vec<SignatureEntry>, TrustError> {
    let path = signature_path(file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(TrustError::Io { path, source }),
    };
    let parsed: SignatureFile = serde_json::from_slice(&bytes)
        .map_err(|e| TrustError::SignatureFile { path: path.clone(), detail: format!("not a signature file ({e})") })?;
    if parsed.format != SIGNATURE_FORMAT {
        return Err(TrustError::SignatureFile {
            path,
            detail: format!("its \"format\" is not \"{SIGNATURE_FORMAT}\""),
        });
    }
    Ok(parsed.signatures)
}

/// Replaces `file`'s signature entries, atomically; no entries removes the `.sig` file.
pub fn write_signatures(file: &Path, entries: &[SignatureEntry]) -> Result<(), TrustError> {
    let path = signature_path(file);
    if entries.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrustError::Io { path, source: e }),
            _ => Ok(()),
        };
    }
    let doc = SignatureFile { format: SIGNATURE_FORMAT.into(), signatures: entries.to_vec() };
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("a signature file serialises");
    bytes.push(b'\n');
    crate::atomic_file::write(&path, &bytes).map_err(|source| TrustError::Io { path, source })
}

/// Signs `file` as it is now with `key`: its `.sig` keeps the other signers' entries for the same
/// content, replaces this key's, and drops entries for content the file no longer has.
pub fn sign_file(file: &Path, key: &SecretKey) -> Result<SignatureEntry, TrustError> {
    let bytes = std::fs::read(file).map_err(|source| TrustError::Io { path: file.to_owned(), source })?;
    let entry = key.sign(&bytes);
    let mut entries = read_signatures(file).unwrap_or_default();
    entries.retain(|e| e.sha256 == entry.sha256 && e.public_key != entry.public_key);
    entries.push(entry.clone());
    write_signatures(file, &entries)?;
    Ok(entry)
}

/// The ids of the keys whose signatures in `file`'s `.sig` are valid for `bytes`, trusted or
/// not (for `amfp gallery history`, which shows who signed each version).
pub fn valid_signers(file: &Path, bytes: &[u8]) -> Vec<String> {
    let sha256 = hex(&Sha256::digest(bytes));
    read_signatures(file)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.sha256 == sha256)
        .filter_map(|e| e.key().filter(|key| e.verifies(key, bytes)).map(|key| key.id()))
        .collect()
}

/// Who signed a file that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The signing key's id ([`PublicKey::id`]).
    pub key_id: String,
    /// The trusted key file that accepted it.
    pub key_path: Option<PathBuf>,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key_path {
            Some(p) => write!(f, "key {} ({})", self.key_id, p.display()),
            None => write!(f, "key {}", self.key_id),
        }
    }
}

/// The keys whose signatures amfp accepts (`[trust] keys`). With none, nothing needs a
/// signature; with any, every model and gallery must be signed by one of them.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Arc<Vec<PublicKey>>,
}

impl Trust {
    /// Trusts these keys.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys: Arc::new(keys) }
    }

    /// Reads the public key files `[trust] keys` names.
    pub fn load(paths: &[PathBuf]) -> Result<Self, TrustError> {
        Ok(Self::new(paths.iter().map(|p| PublicKey::read(p)).collect::<Result<_, _>>()?))
    }

    /// Whether signatures are required.
    pub fn is_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks `bytes`, the content of the model or gallery (`what`) at `path`, against its
    /// `.sig` file. `Ok(None)` when no keys are trusted (nothing is required); the signer when a
    /// trusted key signed exactly these bytes; otherwise an error naming every reason.
    pub fn check(&self, what: &'static str, path: &Path, bytes: &[u8]) -> Result<Option<Signer>, TrustError> {
        if !self.is_required() {
            return Ok(None);
        }
        let keys = self.keys.iter().map(PublicKey::describe).collect::<Vec<_>>().join(", ");
        let sig = signature_path(path);
        let entries = read_signatures(path)?;
        if entries.is_empty() {
            return Err(TrustError::Unsigned { what, path: path.to_owned(), sig, keys });
        }
        let sha256 = hex(&Sha256::digest(bytes));
        let mut reasons = Vec::new();
        for entry in &entries {
            let Some(signer) = entry.key() else {
                reasons.push(format!("an entry of {} names no valid public key", sig.display()));
                continue;
            };
            let Some(trusted) = self.keys.iter().find(|k| k.bytes == signer.bytes) else {
                reasons.push(format!("it is signed by key {}, which [trust] does not name", signer.id()));
                continue;
            };
            if entry.sha256 != sha256 {
                reasons.push(format!(
                    "the signature by key {} is for content with sha256 {}, but the file's is {}: it was changed \
                     after it was signed",
                    signer.id(),
                    entry.sha256,
                    sha256
                ));
                continue;
            }
            if entry.verifies(trusted, bytes) {
                return Ok(Some(Signer { key_id: trusted.id(), key_path: trusted.path.clone() }));
            }
            reasons.push(format!(
                "the signature by key {} does not verify: the file or its signature was tampered with",
                signer.id()
            ));
        }
        Err(TrustError::Refused { what, path: path.to_owned(), reasons: reasons.join("; "), keys })
    }
}

fn read_text(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Io { path: path.to_owned(), source })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = b64(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// The DER bytes of the first PEM block labelled `label` in `text`.
fn pem_body(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| format!("it has no \"{begin}\" line"))? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(|| format!("it has no \"{end}\" line"))? + start;
    let body: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| format!("its base64 is damaged ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path, name: &str) -> (SecretKey, PublicKey) {
        let (secret, public, _) = generate(&dir.join(name)).unwrap();
        (SecretKey::read(&secret).unwrap(), PublicKey::read(&public).unwrap())
    }

    #[test]
    fn a_signed_file_is_accepted_and_every_way_of_failing_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (secret, public) = keys(tmp.path(), "vendor");
        let (other_secret, _) = keys(tmp.path(), "other");
        let file = tmp.path().join("m.gallery.json");
        std::fs::write(&file, b"{\"format\": \"amfp-gallery\"}").unwrap();
        let trust = Trust::new(vec![public.clone()]);
        let bytes = std::fs::read(&file).unwrap();

        assert!(Trust::default().check("gallery", &file, &bytes).unwrap().is_none(), "no keys: nothing required");
        let e = trust.check("gallery", &file, &bytes).unwrap_err().to_string();
        assert!(e.contains("is not signed") && e.contains("amfp sign"), "{e}");

        sign_file(&file, &secret).unwrap();
        let signer = trust.check("gallery", &file, &bytes).unwrap().unwrap();
        assert_eq!(signer.key_id, public.id());

        // Changed after signing.
        let e = trust.check("gallery", &file, b"{\"format\": \"amfp-gallery\", \"x\": 1}").unwrap_err().to_string();
        assert!(e.contains("changed after it was signed"), "{e}");

        // The entry's hash edited to match, the signature left: it does not verify.
        let forged = b"{\"format\": \"amfp-gallery\", \"x\": 2}";
        let mut entries = read_signatures(&file).unwrap();
        entries[0].sha256 = hex(&Sha256::digest(forged));
        write_signatures(&file, &entries).unwrap();
        let e = trust.check("gallery", &file, forged).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        // Signed by a key [trust] does not name.
        std::fs::remove_file(signature_path(&file)).unwrap();
        sign_file(&file, &other_secret).unwrap();
        let e = trust.check("gallery", &file, &bytes).unwrap_err().to_string();
        assert!(e.contains("which [trust] does not name"), "{e}");
        // A second signer's entry for the same content is kept beside it, and the trusted one accepts.
        sign_file(&file, &secret).unwrap();
        assert_eq!(read_signatures(&file).unwrap().len(), 2);
        assert_eq!(valid_signers(&file, &bytes).len(), 2);
        assert!(valid_signers(&file, b"other content").is_empty());
        assert!(trust.check("gallery", &file, &bytes).unwrap().is_some());
    }

    #[test]
    fn damaged_keys_and_signature_files_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, public) = keys(tmp.path(), "vendor");
        let bad = tmp.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        let e = PublicKey::read(&bad).unwrap_err().to_string();
        assert!(e.contains("not an ed25519 public key") && e.contains("BEGIN PUBLIC KEY"), "{e}");
        let e = SecretKey::read(&tmp.path().join("vendor.pub.pem")).unwrap_err().to_string();
        assert!(e.contains("BEGIN PRIVATE KEY"), "{e}");
        let file = tmp.path().join("m.onnx");
        std::fs::write(&file, b"model").unwrap();
        std::fs::write(signature_path(&file), b"garbage").unwrap();
        let e = Trust::new(vec![public]).check("model", &file, b"model").unwrap_err().to_string();
        assert!(e.contains("is damaged"), "{e}");
        let e = generate(&tmp.path().join("vendor")).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
    }

    #[test]
    fn the_private_key_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let (secret, public, _) = generate(&tmp.path().join("k")).unwrap();
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(public).unwrap().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    /// The key and signature forms are the standard ones: a key pair made by openssl signs a
    /// file with `openssl pkeyutl`, and amfp accepts that signature; amfp's public key reads in
    /// openssl.
    #[test]
    fn keys_and_signatures_interoperate_with_openssl() {
        let tmp = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(tmp.path()).output().expect(
                "openssl must be installed for this test (Debian: apt-get install openssl; .ci/test installs it)",
            );
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        run(&["genpkey", "-algorithm", "ed25519", "-out", "o.key.pem"]);
        run(&["pkey", "-in", "o.key.pem", "-pubout", "-out", "o.pub.pem"]);
        std::fs::write(tmp.path().join("m.onnx"), b"a model's bytes").unwrap();
        run(&["pkeyutl", "-sign", "-rawin", "-inkey", "o.key.pem", "-in", "m.onnx", "-out", "m.sig.raw"]);
        let public = PublicKey::read(&tmp.path().join("o.pub.pem")).unwrap();
        let raw = std::fs::read(tmp.path().join("m.sig.raw")).unwrap();
        let file = tmp.path().join("m.onnx");
        let entry = SignatureEntry {
            sha256: hex(&Sha256::digest(b"a model's bytes")),
            public_key: b64(&public.bytes),
            ed25519: b64(&raw),
            signed: String::new(),
        };
        write_signatures(&file, &[entry]).unwrap();
        let trust = Trust::new(vec![public.clone()]);
        assert!(trust.check("model", &file, b"a model's bytes").unwrap().is_some());
        // openssl's private key signs in amfp to the same signature (ed25519 is deterministic).
        let secret = SecretKey::read(&tmp.path().join("o.key.pem")).unwrap();
        assert_eq!(secret.sign(b"a model's bytes").ed25519, b64(&raw));
        // amfp's public key form is what openssl writes.
        assert_eq!(public.to_pem(), std::fs::read_to_string(tmp.path().join("o.pub.pem")).unwrap());
    }
}
