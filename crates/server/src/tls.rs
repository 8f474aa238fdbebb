//! The server's TLS identity: a certificate chain and its private key,
//! brought by the operator (PEM files) or generated once and kept under
//! `ROOT/.distribusync/tls/`.
//!
//! Invariants: an identity that exists has been checked before the server
//! listens: the files are PEM, the key belongs to the first certificate,
//! and that certificate is valid now. So a bad file is one clear error at
//! start, never a handshake failure each client meets later. A generated
//! identity is a self-signed *leaf* (not a CA: webpki refuses a CA
//! certificate used as the server's own), its key written with mode 0600
//! before any byte of it, and it is reused on every later start, so the
//! fingerprint clients pinned stays the same.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use distribusync_core::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Folder under the root holding a generated identity.
pub const TLS_DIR: &str = ".distribusync/tls";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// A generated certificate is valid this many years.
const GENERATED_YEARS: i32 = 20;

/// Why an identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: not a usable PEM file: {why}", path.display())]
    NotPem { path: PathBuf, why: String },
    #[error("{}: cannot read the certificate: {why}", path.display())]
    BadCertificate { path: PathBuf, why: String },
    #[error("{}: the private key does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: the private key cannot be used: {why}", path.display())]
    BadKey { path: PathBuf, why: String },
    #[error("{}: the certificate expired on {when}; renew it (or remove the file to have a new self-signed one made)", path.display())]
    Expired { path: PathBuf, when: String },
    #[error("{}: the certificate is not valid before {when}", path.display())]
    NotYetValid { path: PathBuf, when: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("{}: cannot write: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A checked certificate chain and key, ready to accept TLS connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
    fingerprint: Fingerprint,
    not_after: String,
    cert_path: PathBuf,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a certificate's DER bytes.
pub fn fingerprint_of(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint::from_digest(out)
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key,
    /// as an ACME client writes them.
    ///
    /// # Errors
    /// Missing or unreadable files, files that are not PEM, a key that does
    /// not belong to the certificate, a certificate not valid now.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|error| TlsError::Read {
                path: path.to_owned(),
                error,
            })
        };
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::NotPem {
                path: cert.to_owned(),
                why: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate {
                path: cert.to_owned(),
            });
        };
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: key.to_owned(),
            },
            e => TlsError::NotPem {
                path: key.to_owned(),
                why: e.to_string(),
            },
        })?;
        let not_after = check_validity(cert, leaf)?;
        let fingerprint = fingerprint_of(leaf);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    key: key.to_owned(),
                    cert: cert.to_owned(),
                },
                e => TlsError::BadKey {
                    path: key.to_owned(),
                    why: e.to_string(),
                },
            })?;
        let mut config = config;
        // gRPC is HTTP/2 only; clients that negotiate ALPN must see it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
            not_after,
            cert_path: cert.to_owned(),
        })
    }

    /// The identity kept under `root`'s `.distribusync/tls/`, generated
    /// first if there is none, for the DNS names and IP addresses in
    /// `names`. An existing one is reused as it is (its fingerprint is what
    /// clients pinned); remove the folder to have a new one made.
    ///
    /// # Errors
    /// As [`TlsIdentity::from_pem_files`], or when it cannot be generated
    /// and written.
    pub fn self_signed(root: &Path, names: &[String]) -> Result<Self, TlsError> {
        let dir = root.join(TLS_DIR);
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert.exists() && key.exists() {
            return Self::from_pem_files(&cert, &key);
        }
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |error| TlsError::Write { path, error }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(write_err(&dir))?;
        // Two processes making the identity at once (a server starting and
        // `serve --print-fingerprint`) take turns: the second finds what the
        // first wrote, instead of mixing one's key with the other's
        // certificate.
        let lock_path = dir.join("generate.lock");
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(write_err(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| write_err(&lock_path)(e.into()))?;
        if cert.exists() || key.exists() {
            return Self::from_pem_files(&cert, &key);
        }
        let (cert_pem, key_pem) = generate(names)?;
        // Key first, so a crash between the two leaves no certificate
        // without its key; both through a temporary name, so a half-written
        // file is never taken for an identity.
        write_new(&key, key_pem.as_bytes(), 0o600)?;
        write_new(&cert, cert_pem.as_bytes(), 0o644)?;
        tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
        Self::from_pem_files(&cert, &key)
    }

    /// SHA-256 of the leaf certificate (what clients pin).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// When the leaf certificate expires, as a person reads it.
    pub fn not_after(&self) -> &str {
        &self.not_after
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The same identity for HTTP/1.1 (WebDAV): clients that negotiate
    /// ALPN must be offered `http/1.1`, not gRPC's `h2`.
    pub(crate) fn acceptor_http1(&self) -> tokio_rustls::TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// The identity every TLS listener of one server presents (gRPC, the web
/// page, WebDAV), swapped whole by a reload. Each listener reads it once
/// per accepted connection, so new handshakes get the new certificate and
/// connections already made keep theirs; no listener can be left behind
/// on the old one. A std lock: held only to clone or replace the
/// acceptors, never across an await.
#[derive(Clone)]
pub(crate) struct SharedTls(Arc<RwLock<Acceptors>>);

/// One identity, as gRPC (ALPN `h2`) and as HTTP/1.1 (ALPN `http/1.1`:
/// the web page and WebDAV; a browser offered `h2` would speak HTTP/2 to
/// an HTTP/1.1 server).
struct Acceptors {
    grpc: tokio_rustls::TlsAcceptor,
    http1: tokio_rustls::TlsAcceptor,
}

impl Acceptors {
    fn of(id: &TlsIdentity) -> Self {
        Acceptors {
            grpc: id.acceptor(),
            http1: id.acceptor_http1(),
        }
    }
}

impl std::fmt::Debug for SharedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTls").finish_non_exhaustive()
    }
}

impl SharedTls {
    pub(crate) fn new(id: &TlsIdentity) -> Self {
        SharedTls(Arc::new(RwLock::new(Acceptors::of(id))))
    }

    /// New handshakes on every listener present `id` from now on.
    pub(crate) fn replace(&self, id: &TlsIdentity) {
        let new = Acceptors::of(id);
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
    }

    /// The acceptor for a new gRPC connection.
    pub(crate) fn grpc(&self) -> tokio_rustls::TlsAcceptor {
        self.read(|a| a.grpc.clone())
    }

    /// The acceptor for a new HTTP/1.1 connection (web page, WebDAV).
    pub(crate) fn http1(&self) -> tokio_rustls::TlsAcceptor {
        self.read(|a| a.http1.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&Acceptors) -> T) -> T {
        f(&self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// The one crypto provider the server uses (ring), passed explicitly so no
/// process-wide default is needed and none can be chosen by accident.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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

/// Refuses a leaf not valid now; returns its expiry as text.
fn check_validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    let validity = parsed.validity();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if validity.not_after.timestamp() < now {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            when: validity.not_after.to_string(),
        });
    }
    if validity.not_before.timestamp() > now {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            when: validity.not_before.to_string(),
        });
    }
    Ok(validity.not_after.to_string())
}

/// A self-signed leaf for `names` (PEM certificate, PEM key).
fn generate(names: &[String]) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "DistribuSync server");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + GENERATED_YEARS, 1, 1);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Close enough for a validity window that starts a year back.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Writes `data` to `path` (which must not exist) with `mode`, fsynced,
/// through a temporary name in the same folder.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |error| TlsError::Write {
        path: path.to_owned(),
        error,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
