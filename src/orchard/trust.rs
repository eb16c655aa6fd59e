//! Whom the driver trusts to be the Orchard controller: the system's roots, a pinned PEM file
//! (the controller's own certificate or its CA), or the SHA-256 fingerprint of the
//! controller's certificate.
//!
//! A controller's default certificate is self-signed, a non-CA leaf with the SAN
//! `orchard-controller` (spec/orchard.md §1.1), which WebPKI path validation does not accept
//! as its own anchor. Orchard's Go client trusts exactly that certificate; so do we: a
//! presented certificate byte-identical to one in the pinned file, or whose fingerprint is
//! the pinned one, is trusted; anything else in the pinned file is used as a CA. The
//! handshake signatures are always checked. Whatever happens, the presented certificate's
//! fingerprint is kept, so `doctor` can show it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::url::ControllerUrl;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    SystemRoots,
    CaFile(PathBuf),
    Fingerprint([u8; 32]),
}

impl Trust {
    /// 64 hex digits, upper or lower case, colons or spaces between bytes allowed.
    pub fn fingerprint(text: &str) -> Result<Trust> {
        let hex: String = text
            .chars()
            .filter(|c| !matches!(c, ':' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        let hex = hex.strip_prefix("sha256").unwrap_or(&hex);
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("`{text}` is not a SHA-256 fingerprint (64 hex digits)");
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Trust::Fingerprint(out))
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A TLS client configuration for one controller, and the fingerprint of the certificate
/// it was last shown.
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    pub seen: Arc<Mutex<Option<String>>>,
}

pub fn client_config(trust: &Trust, url: &ControllerUrl) -> Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mode = match trust {
        Trust::Fingerprint(want) => Mode::Fingerprint(*want),
        Trust::CaFile(path) => {
            let pinned = read_pem(path)?;
            let mut roots = rustls::RootCertStore::empty();
            let _ = roots.add_parsable_certificates(pinned.iter().cloned());
            let webpki =
                WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .ok();
            Mode::Pinned { pinned, webpki }
        }
        Trust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let _ = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                bail!("no system root certificates found: pin the controller's certificate with --orchard-ca-file or --orchard-ca-fingerprint");
            }
            Mode::WebPki(
                WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .context("system root certificates")?,
            )
        }
    };
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(Verifier {
        mode,
        seen: seen.clone(),
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(url.host.clone())
        .with_context(|| format!("`{}` is not a host name or address", url.host))?;
    Ok(Tls {
        config: Arc::new(config),
        server_name,
        seen,
    })
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read --orchard-ca-file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("--orchard-ca-file {} is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "--orchard-ca-file {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

#[derive(Debug)]
enum Mode {
    Fingerprint([u8; 32]),
    Pinned {
        pinned: Vec<CertificateDer<'static>>,
        webpki: Option<Arc<WebPkiServerVerifier>>,
    },
    WebPki(Arc<WebPkiServerVerifier>),
}

#[derive(Debug)]
struct Verifier {
    mode: Mode,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = fingerprint_hex(end_entity);
        *self.seen.lock().unwrap() = Some(fingerprint.clone());
        let refuse = |why: &str| {
            Err(rustls::Error::General(format!(
                "the controller's certificate (SHA-256 {fingerprint}) {why}"
            )))
        };
        match &self.mode {
            Mode::Fingerprint(want) => {
                let got = ring::digest::digest(&ring::digest::SHA256, end_entity);
                if got.as_ref() == want {
                    Ok(ServerCertVerified::assertion())
                } else {
                    refuse("is not the pinned one")
                }
            }
            Mode::Pinned { pinned, webpki } => {
                if pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                    return Ok(ServerCertVerified::assertion());
                }
                match webpki {
                    Some(v) => {
                        v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                    }
                    None => refuse("is neither the pinned certificate nor signed by it"),
                }
            }
            Mode::WebPki(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_with_or_without_colons_and_in_any_case() {
        let plain = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(
            Trust::fingerprint(&plain).unwrap(),
            Trust::fingerprint(&colons).unwrap()
        );
        assert_eq!(
            Trust::fingerprint(&plain).unwrap(),
            Trust::Fingerprint([0xab; 32])
        );
    }

    #[test]
    fn a_short_or_non_hex_fingerprint_is_refused() {
        assert!(Trust::fingerprint("abcd").is_err());
        assert!(Trust::fingerprint(&"zz".repeat(32)).is_err());
    }
}
