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
    /// The other servers of a list (`--server a,b`), tried in order when
    /// this one cannot be reached.
    pub alternates: Arc<[Connector]>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientIo>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let opened = this.open_any().await;
            this.record(opened.as_ref().err().cloned());
            opened.map(TokioIo::new)
        })
    }
}

impl Connector {
    /// Opens a connection to this server or, when it cannot be reached,
    /// to the first of the alternates that can; the first error if none.
    async fn open_any(&self) -> Result<ClientIo, ConnectError> {
        let first = match self.open().await {
            Err(e @ ConnectError::Unreachable { .. }) => e,
            done => return done,
        };
        for other in self.alternates.iter() {
            match other.open().await {
                Err(ConnectError::Unreachable { .. }) => continue,
                done => return done,
            }
        }
        Err(first)
    }

    fn record(&self, failure: Option<ConnectError>) {
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
            return Ok(ClientIo::Plain(sniff));
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
                Ok(ClientIo::Tls(Box::new(tls)))
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

/// The stream under a channel.
pub(crate) enum ClientIo {
    Plain(Sniff),
    Tls(Box<tokio_rustls::client::TlsStream<BufReader<Sniff>>>),
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

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ClientIo::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ClientIo::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_flush(cx),
            ClientIo::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ClientIo::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ClientIo::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(io) => io.is_write_vectored(),
            ClientIo::Tls(io) => io.is_write_vectored(),
        }
    }
}
