//! How a client decides to trust a server's certificate, and the rustls
//! configuration built from that.
//!
//! Invariants: a pinned fingerprint accepts exactly the one leaf whose
//! SHA-256 it is, whatever its names or dates (as ssh accepts a known host
//! key), and the handshake signature is still verified against that leaf's
//! key, so a copy of the certificate without its private key is useless.
//! A different leaf is refused with both fingerprints named. The one
//! crypto provider (ring) is passed explicitly; nothing here depends on a
//! process-wide default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use distribusync_core::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::ConnectError;

/// How a TLS server's certificate is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsTrust {
    /// By the certificate authorities the operating system trusts
    /// (`/etc/ssl/certs`, or `SSL_CERT_FILE`): a certificate from a public
    /// CA (e.g. Let's Encrypt) works with no set-up.
    #[default]
    SystemRoots,
    /// By the CA certificates in a PEM file (`--ca FILE`; a chain is
    /// fine, every certificate in it is trusted).
    Ca {
        path: PathBuf,
        certs: Vec<CertificateDer<'static>>,
    },
    /// By the SHA-256 of the server's own certificate (`--fingerprint`,
    /// or the one `login` saved): a self-signed certificate works.
    Pinned(Fingerprint),
}

impl TlsTrust {
    /// Reads the CA certificates of a PEM file.
    ///
    /// # Errors
    /// [`ConnectError::CaFile`] when it cannot be read or holds no PEM
    /// certificate.
    pub fn ca_file(path: &Path) -> Result<Self, ConnectError> {
        let bad = |why: String| ConnectError::CaFile {
            path: path.to_owned(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM file ({e})")))?;
        if certs.is_empty() {
            return Err(bad(
                "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Ok(Self::Ca {
            path: path.to_owned(),
            certs,
        })
    }

    /// Whether this asks for more than the default (a CA file or a pin).
    pub fn is_explicit(&self) -> bool {
        !matches!(self, Self::SystemRoots)
    }
}

/// SHA-256 of a certificate's DER bytes.
pub fn fingerprint_of(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint::from_digest(out)
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first (ring lists AES-256 first): both are safe, and
    // 10 AES rounds instead of 14 take ~0.1 s of CPU per GiB off each end
    // of a transfer (bench/RESULTS.md, "TLS cipher"). TLS 1.3's mandatory
    // suite; what Go and the browsers prefer too.
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(provider)
}

/// What a pinned handshake found wrong: carried inside rustls's error and
/// found again by the connector.
#[derive(Debug)]
pub(crate) struct Mismatch {
    pub expected: Fingerprint,
    pub presented: Fingerprint,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected fingerprint {}, presented {}",
            self.expected, self.presented
        )
    }
}

impl std::error::Error for Mismatch {}

/// Accepts the one pinned leaf ([`PinMode::Exactly`]), or any leaf while
/// recording its fingerprint ([`PinMode::Record`], only to show it to a
/// person in `login` before they decide; nothing is sent over such a
/// connection).
#[derive(Debug)]
pub(crate) struct PinVerifier {
    mode: PinMode,
    seen: Arc<Mutex<Option<Fingerprint>>>,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PinMode {
    Exactly(Fingerprint),
    Record,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint_of(end_entity);
        // A poisoned lock only loses the record of a fingerprint.
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(presented);
        }
        match self.mode {
            PinMode::Exactly(expected) if expected != presented => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(Mismatch {
                        expected,
                        presented,
                    }))),
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
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

/// The rustls client configuration for `trust` (ALPN h2). With
/// [`PinMode::Record`] any certificate is accepted and its fingerprint
/// lands in `seen`.
pub(crate) fn client_config(
    trust: &TlsTrust,
    record: Option<Arc<Mutex<Option<Fingerprint>>>>,
) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Setup(e.to_string()))?;
    let pin = |mode| PinVerifier {
        mode,
        seen: record.clone().unwrap_or_default(),
        provider: provider.clone(),
    };
    let mut config = match (trust, &record) {
        (_, Some(_)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin(PinMode::Record)))
            .with_no_client_auth(),
        (TlsTrust::Pinned(f), None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin(PinMode::Exactly(*f))))
            .with_no_client_auth(),
        (TlsTrust::Ca { path, certs }, None) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots.add(c.clone()).map_err(|e| ConnectError::CaFile {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (TlsTrust::SystemRoots, None) => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ConnectError::NoSystemRoots);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
