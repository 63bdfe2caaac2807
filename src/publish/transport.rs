//! From `[mqtt]` settings to a connection: client options, credentials, TLS and last will.
//!
//! Everything that can be wrong with the settings is found here, when publishing starts, with an
//! error naming the key ([`PublishError::Setup`]): unreadable or empty files, PEM without
//! certificates, a key that does not fit. The password is read from its file into the client
//! options and nowhere else; it is never logged (rumqttc's `Debug` of its options would print it,
//! so they are never logged either).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::PublishError;
use super::wire::{self, OfflineReason, Topics};
use crate::config::{MqttSettings, Settings};

/// Largest result or event payload sent; larger ones are refused before they are queued, so
/// that one oversized entry can never block the outbox.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;
/// Largest packet accepted from the broker (commands are far smaller; see `command`).
const MAX_INCOMING_BYTES: usize = 1024 * 1024;
/// Room for the topic and header on top of the payload.
const MAX_OUTGOING_BYTES: usize = MAX_PAYLOAD_BYTES + 64 * 1024;
/// QoS 1 publishes rumqttc may have unacknowledged; above what the publisher ever has in flight
/// (`session`), so packet ids are never reused while in use.
pub const MAX_INFLIGHT: u16 = 100;

/// The checked settings' verdict, as a start-up error naming every bad `mqtt.*` key.
pub fn check(settings: &MqttSettings) -> Result<(), PublishError> {
    let all = Settings { mqtt: settings.clone(), ..Settings::default() };
    let problems: Vec<_> = all.check().into_iter().filter(|p| p.key.starts_with("mqtt.")).collect();
    match problems.first() {
        None => Ok(()),
        Some(first) => Err(PublishError::Setup {
            key: first.key.to_string(),
            message: problems
                .iter()
                .map(|p| if p.key == first.key { p.message.clone() } else { format!("{}: {}", p.key, p.message) })
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// The client id: configured, or `amfp-<device>`.
pub fn client_id(settings: &MqttSettings, device: &str) -> String {
    settings.client_id.clone().unwrap_or_else(|| format!("amfp-{device}"))
}

/// rumqttc options for these settings: broker, client id, clean session, keep-alive, packet
/// limits, the retained `offline` last will on `topics.status`, credentials and TLS.
pub fn options(settings: &MqttSettings, device: &str, topics: &Topics) -> Result<MqttOptions, PublishError> {
    check(settings)?;
    let mut options = MqttOptions::new(client_id(settings, device), settings.host.clone(), settings.port);
    options
        .set_keep_alive(Duration::from_secs(settings.keep_alive_s))
        // The outbox, not the broker's session, carries results across connections (docs/mqtt.md).
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_BYTES, MAX_OUTGOING_BYTES)
        .set_inflight(MAX_INFLIGHT)
        .set_last_will(LastWill::new(
            topics.status.clone(),
            wire::status_offline(device, OfflineReason::Lost),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &settings.username {
        let password = match &settings.password_file {
            Some(path) => read_secret(path).map_err(|message| setup("mqtt.password_file", message))?,
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    if let Some(ca) = &settings.ca_file {
        ServerName::try_from(settings.host.as_str()).map_err(|e| {
            setup("mqtt.host", format!("{:?} cannot be checked against a TLS certificate: {e}", settings.host))
        })?;
        let tls = tls_config(ca, settings.client_cert_file.as_deref(), settings.client_key_file.as_deref())?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(options)
}

/// `host:port`, with `tls` when on, for log lines.
pub fn describe(settings: &MqttSettings) -> String {
    let tls = if settings.ca_file.is_some() { " (TLS)" } else { "" };
    format!("{}:{}{tls}", settings.host, settings.port)
}

/// A setup error for `key`.
fn setup(key: &str, message: String) -> PublishError {
    PublishError::Setup { key: key.to_string(), message }
}

/// Reads a secret from a file (e.g. a systemd credential): one trailing newline is dropped,
/// an empty secret is an error. The error names the file, never the content.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

/// The rustls client configuration (ring provider): trust `ca`, and authenticate with `cert`
/// and `key` when given.
fn tls_config(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<rustls::ClientConfig, PublishError> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_certs = read_certs(ca).map_err(|m| setup("mqtt.ca_file", m))?;
    let (added, _ignored) = roots.add_parsable_certificates(ca_certs);
    if added == 0 {
        return Err(setup("mqtt.ca_file", format!("{}: no usable CA certificate", ca.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup("mqtt.ca_file", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert).map_err(|m| setup("mqtt.client_cert_file", m))?;
            let key_der = std::fs::read(key)
                .map_err(|e| format!("cannot read {}: {e}", key.display()))
                .and_then(|pem| {
                    PrivateKeyDer::from_pem_slice(&pem)
                        .map_err(|e| format!("{}: no PEM private key ({e})", key.display()))
                })
                .map_err(|m| setup("mqtt.client_key_file", m))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| setup("mqtt.client_key_file", format!("does not fit mqtt.client_cert_file: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The PEM certificates in a file; an error when it cannot be read or holds none.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn topics() -> Topics {
        Topics::new("amfp", "dev").unwrap()
    }

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn err(settings: &MqttSettings) -> String {
        options(settings, "dev", &topics()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_give_a_clean_session_with_a_will() {
        let o = options(&MqttSettings::default(), "dock-3", &topics()).unwrap();
        assert_eq!(o.client_id(), "amfp-dock-3");
        assert_eq!(o.broker_address(), ("localhost".to_string(), 1883));
        assert!(o.clean_session());
        assert_eq!(o.keep_alive(), Duration::from_secs(30));
        let will = o.last_will().unwrap();
        assert_eq!(will.topic, "amfp/dev/status");
        assert!(will.retain);
        assert!(o.credentials().is_none());
    }

    #[test]
    fn password_comes_from_its_file() {
        let pw = file(b"s3cret\n");
        let s = MqttSettings {
            username: Some("dock".into()),
            password_file: Some(pw.path().to_path_buf()),
            ..MqttSettings::default()
        };
        let login = options(&s, "dev", &topics()).unwrap().credentials().unwrap();
        assert_eq!((login.username.as_str(), login.password.as_str()), ("dock", "s3cret"));
        assert_eq!(read_secret(file(b"a b\r\n").path()).unwrap(), "a b");
    }

    #[test]
    fn bad_files_name_the_key_and_never_the_secret() {
        let s = MqttSettings {
            username: Some("dock".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..MqttSettings::default()
        };
        let e = err(&s);
        assert!(e.starts_with("mqtt.password_file: cannot read /nonexistent/pw"), "{e}");
        let empty = file(b"\n");
        let e = err(&MqttSettings { password_file: Some(empty.path().into()), ..s.clone() });
        assert!(e.contains("is empty"), "{e}");

        let e = err(&MqttSettings { ca_file: Some("/nonexistent/ca.pem".into()), ..MqttSettings::default() });
        assert!(e.starts_with("mqtt.ca_file: cannot read /nonexistent/ca.pem"), "{e}");
        let junk = file(b"not a certificate\n");
        let e = err(&MqttSettings { ca_file: Some(junk.path().into()), ..MqttSettings::default() });
        assert!(e.starts_with("mqtt.ca_file: ") && e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_at_start_too() {
        let e = err(&MqttSettings { host: "mqtt://broker:1883".into(), ..MqttSettings::default() });
        assert!(e.starts_with("mqtt.host: \"mqtt://broker:1883\" is not allowed"), "{e}");
        let e = err(&MqttSettings { port: 0, keep_alive_s: 1, ..MqttSettings::default() });
        assert!(e.contains("mqtt.keep_alive_s: 1 is not allowed"), "{e}");
        assert!(e.starts_with("mqtt.port:") || e.starts_with("mqtt.keep_alive_s:"), "{e}");
    }
}
