//! Opening the byte stream under a channel: TCP (no Nagle), then TLS when
//! the server's URL is `https://`, with errors a person can act on.
//!
//! Invariants: whether TLS is spoken is decided by the configuration, never
//! by the URI tonic hands over (the endpoint is always given to tonic as
//! `http://`, so no tonic TLS feature can intervene). The first byte the
//! server sends is looked at: TLS records start 0x15/0x16, HTTP/2 frames a
//! small length (0x00), so a plaintext client meeting a TLS server, or the
//! reverse, is named as such instead of surfacing as a transport error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll};

use distribusync_core::limits;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::ConnectError;
use super::tls::Mismatch;

/// No byte received yet (a value no byte has).
const NOTHING_YET: u16 = 0x100;

/// Where to connect and how; one per channel, reused for reconnects.
#[derive(Clone)]
pub(crate) struct Connector {
    /// `host`, `port` to dial (IPv6 without brackets).
    pub host: Arc<str>,
    pub port: u16,
    /// The URL as the user gave it, for messages.
    pub url: Arc<str>,
    /// `host:port` as written in the URL.
    pub authority: Arc<str>,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// What went wrong with the last connection, for the channel to name.
    pub failure: super::FailureSlot,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    pub(crate) fn record(&self, failure: Option<ConnectError>) {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = failure;
        }
    }

    pub(crate) async fn open(&self) -> Result<ClientIo, ConnectError> {
        let tcp = TcpStream::connect((&*self.host, self.port))
            .await
            .map_err(|e| ConnectError::Unreachable {
                addr: self.url.to_string(),
                why: e.to_string(),
            })?;
        // Small messages must not wait for Nagle (docs/DESIGN.md).
        let _ = tcp.set_nodelay(true);
        let first = Arc::new(AtomicU16::new(NOTHING_YET));
        let sniff = Sniff {
            io: tcp,
            first: first.clone(),
            refuse_tls: self.tls.is_none().then(|| self.clone()),
        };
        let Some((config, name)) = &self.tls else {
            return Ok(Either::Left(sniff));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        // Read ahead below rustls, which reads one record at a time, and
        // let it buffer more than its default before writing
        // (docs/DESIGN.md, "TLS buffering").
        let buffered = BufReader::with_capacity(limits::TLS_READ_BUFFER, sniff);
        match connector.connect(name.clone(), buffered).await {
            Ok(mut tls) => {
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(limits::TLS_WRITE_BUFFER));
                Ok(Either::Right(Box::new(tls)))
            }
            Err(e) => Err(self.handshake_error(&e, first.load(Ordering::Relaxed))),
        }
    }

    fn speaks_tls(&self) -> ConnectError {
        ConnectError::ServerSpeaksTls {
            addr: self.url.to_string(),
            authority: self.authority.to_string(),
        }
    }

    /// Names what went wrong in a TLS handshake.
    fn handshake_error(&self, e: &std::io::Error, first: u16) -> ConnectError {
        let addr = self.url.to_string();
        let rustls_error = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(c)) = rustls_error {
            if let rustls::CertificateError::Other(other) = c
                && let Some(m) = other.0.downcast_ref::<Mismatch>()
            {
                return ConnectError::FingerprintChanged {
                    addr,
                    expected: m.expected,
                    presented: m.presented,
                };
            }
            return ConnectError::Untrusted {
                addr,
                why: certificate_why(c),
            };
        }
        // Something other than a TLS record came back: HTTP/2's SETTINGS.
        if first != NOTHING_YET && !(0x14..=0x17).contains(&first) {
            return ConnectError::ServerSpeaksPlaintext {
                addr,
                authority: self.authority.to_string(),
            };
        }
        ConnectError::Handshake {
            addr,
            why: e.to_string(),
        }
    }
}

/// Why a certificate was refused, in words.
fn certificate_why(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match c {
        E::UnknownIssuer => "it is not signed by a trusted authority (give the CA with --ca FILE, or pin it with --fingerprint / `distribusync login`)".into(),
        E::NotValidForName | E::NotValidForNameContext { .. } => "it is not valid for this host name (connect by a name it was made for, or pin it with --fingerprint)".into(),
        E::Expired | E::ExpiredContext { .. } => "it has expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet (check the clocks)".into(),
        E::Revoked => "it has been revoked".into(),
        other => format!("{other:?}"),
    }
}

/// The stream under a channel: plain, or TLS over it.
pub(crate) type ClientIo = Either<Sniff, Box<tokio_rustls::client::TlsStream<BufReader<Sniff>>>>;

/// Several servers that share their state (issue 12: instances on one
/// PostgreSQL and one bucket), given as `--server a,b`: a connection goes
/// to the server that took the last one, else to the next that answers,
/// in the order given. A lazy channel reconnects through here, so a client
/// whose server dies continues on another at its next connection; what was
/// in flight fails and is retried as after any cut connection.
#[derive(Clone, Debug)]
pub(crate) struct Failover {
    pub targets: Arc<[Connector]>,
    /// Index of the server that took the last connection.
    pub preferred: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long one server of several may take to accept a connection before
/// the next is tried (one server alone has the channel's own timeout).
pub(crate) const FAILOVER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Failover {
    pub(crate) fn new(targets: Vec<Connector>) -> Self {
        Self {
            targets: targets.into(),
            preferred: Arc::default(),
        }
    }

    /// The first server's settings (for what needs one: the fingerprint
    /// `login` shows, messages).
    pub(crate) fn first(&self) -> &Connector {
        &self.targets[0]
    }

    pub(crate) async fn open(&self) -> Result<ClientIo, ConnectError> {
        let n = self.targets.len();
        if n == 1 {
            return self.targets[0].open().await;
        }
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::with_capacity(n);
        for i in 0..n {
            let at = (start + i) % n;
            let target = &self.targets[at];
            let opened = tokio::time::timeout(FAILOVER_CONNECT_TIMEOUT, target.open())
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::Unreachable {
                        addr: target.url.to_string(),
                        why: format!("no connection within {FAILOVER_CONNECT_TIMEOUT:?}"),
                    })
                });
            match opened {
                Ok(io) => {
                    if at != start {
                        tracing::info!(server = %target.url, "connected to another server of the list");
                    }
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(io);
                }
                Err(e) => {
                    tracing::debug!(server = %target.url, error = %e, "server of the list not reachable");
                    failures.push(e);
                }
            }
        }
        Err(none_answered(failures))
    }
}

/// What to say when no server of a list took the connection: a refusal
/// that needs the person's action (TLS trust, wrong scheme) first, as one
/// server alone would say it; else that none could be reached, each with
/// its reason.
fn none_answered(failures: Vec<ConnectError>) -> ConnectError {
    if let Some(e) = failures
        .iter()
        .find(|e| !matches!(e, ConnectError::Unreachable { .. }))
    {
        return e.clone();
    }
    let (addrs, whys): (Vec<String>, Vec<String>) = failures
        .into_iter()
        .map(|e| match e {
            ConnectError::Unreachable { addr, why } => (addr.clone(), format!("{addr}: {why}")),
            other => (String::new(), other.to_string()),
        })
        .unzip();
    ConnectError::Unreachable {
        addr: addrs.join(", "),
        why: whys.join("; "),
    }
}

impl tower_service::Service<http::Uri> for Failover {
    type Response = TokioIo<ClientIo>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let opened = this.open().await;
            this.first().record(opened.as_ref().err().cloned());
            opened.map(TokioIo::new)
        })
    }
}

/// A TCP stream that remembers the first byte the server sent and, on a
/// plaintext connection, fails at once if that byte starts a TLS record.
pub(crate) struct Sniff {
    io: TcpStream,
    first: Arc<AtomicU16>,
    /// Set on plaintext connections: whom to name in the error.
    refuse_tls: Option<Connector>,
}

impl AsyncRead for Sniff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && let Some(&b) = buf.filled().get(before)
            && self.first.load(Ordering::Relaxed) == NOTHING_YET
        {
            self.first.store(u16::from(b), Ordering::Relaxed);
            if let Some(c) = self.refuse_tls.take()
                && (b == 0x15 || b == 0x16)
            {
                let e = c.speaks_tls();
                c.record(Some(e.clone()));
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
            }
        }
        r
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
