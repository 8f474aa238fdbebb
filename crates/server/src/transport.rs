//! Accepting connections: a bound on how many are open, and a deadline for
//! the HTTP/2 handshake.
//!
//! Invariants: at most [`TransportConfig::max_connections`] accepted
//! connections are open at once (each holds a semaphore permit until it is
//! dropped); one over the bound is accepted and closed at once, so the
//! client learns at once and established connections are not touched. A
//! connection whose peer has not sent the HTTP/2 preface and its first
//! frame header within [`TransportConfig::handshake_timeout`] is closed.
//! Silent or half-open connections therefore cannot pile up until the
//! process runs out of descriptors and locks every client out.
//!
//! With TLS the same bound and deadline cover the TLS handshake: it runs
//! here, inside the accept stream (several at once, so a slow client
//! delays nobody), holding the connection's permit, and the deadline is one
//! for the TLS handshake and the HTTP/2 preface together. tonic's own TLS
//! would run the handshake after this stream hands the connection over,
//! outside both (docs/DESIGN.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use distribusync_core::limits;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Timeouts and bounds of the transport; `serve` flags set them.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// A new connection must complete the HTTP/2 handshake within this.
    pub handshake_timeout: Duration,
    /// An upload that receives nothing for this long ends (its part is kept
    /// for resuming, as after a broken connection).
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings; a peer that does not answer one
    /// within [`KEEPALIVE_TIMEOUT`] is disconnected. `None`: no pings.
    pub keepalive: Option<Duration>,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// How long a keepalive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive: Some(Duration::from_secs(30)),
            max_connections: default_max_connections(),
        }
    }
}

/// Raises the process's soft limit on open descriptors to its hard limit
/// (as nginx's `worker_rlimit_nofile` and Go's runtime do) and returns the
/// limit in force. Every connection and every file in transfer holds one;
/// the default soft limit (1,024 here) is what let a thousand silent
/// connections lock everyone out, while the hard limit is far higher.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Half the descriptors the process may open (the rest are for the files
/// being transferred, the index and the listener), at least 16.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(limit / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 1 << 20)
}

/// Bytes a client sends first: the 24-byte preface and the header of its
/// SETTINGS frame.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// How often refused connections are logged, at most.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    handshake_timeout: Duration,
    max: usize,
    /// Refused since the last log line, and when that was.
    refused: u64,
    logged: Option<Instant>,
}

impl Acceptor {
    fn refuse(&mut self, tcp: TcpStream) {
        drop(tcp);
        self.refused += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= REFUSED_LOG_EVERY) {
            tracing::warn!(
                refused = self.refused,
                max_connections = self.max,
                "connection limit reached: new connections are closed (--max-connections)"
            );
            self.refused = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// Connections accepted on `listener`, bounded and with a handshake
/// deadline (see the module's invariants). An accept that fails (out of
/// descriptors, most often) is retried after a pause that grows to a
/// second, rather than at once in a loop that would take a core.
pub(crate) fn incoming(
    listener: TcpListener,
    config: &TransportConfig,
    tls: Option<crate::tls::SharedTls>,
) -> impl Stream<Item = std::io::Result<Conn>> + Send + 'static {
    let max = config.max_connections.max(1);
    let accepted = accept(listener, config, max);
    match tls {
        None => accepted.left_stream(),
        Some(shared) => accepted
            .map(move |conn| {
                // The identity as it is now: a reload swaps it for new
                // handshakes; connections already made keep theirs.
                let acceptor = shared.grpc();
                async move { conn?.into_tls(&acceptor).await }
            })
            // At most `max` handshakes at once: each holds a permit.
            .buffer_unordered(max)
            .right_stream(),
    }
}

fn accept(
    listener: TcpListener,
    config: &TransportConfig,
    max: usize,
) -> impl Stream<Item = std::io::Result<Conn>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        permits: Arc::new(Semaphore::new(max)),
        handshake_timeout: config.handshake_timeout,
        max,
        refused: 0,
        logged: None,
    };
    futures::stream::unfold(acceptor, |mut a| async move {
        let mut pause = Duration::from_millis(5);
        loop {
            match a.listener.accept().await {
                Ok((tcp, _)) => {
                    let Ok(permit) = a.permits.clone().try_acquire_owned() else {
                        a.refuse(tcp);
                        continue;
                    };
                    // Small messages must not wait for Nagle (docs/DESIGN.md).
                    let _ = tcp.set_nodelay(true);
                    let conn = Conn {
                        io: Either::Left(tcp),
                        _permit: permit,
                        handshake: Some(Handshake {
                            deadline: Box::pin(tokio::time::sleep(a.handshake_timeout)),
                            left: HANDSHAKE_BYTES,
                        }),
                    };
                    return Some((Ok(conn), a));
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?pause, "cannot accept a connection; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    })
}

struct Handshake {
    deadline: Pin<Box<Sleep>>,
    /// Handshake bytes not yet received.
    left: usize,
}

/// An accepted connection: holds its place under the bound until dropped,
/// and fails its reads once the handshake deadline passes unmet.
pub(crate) struct Conn {
    io: Io,
    _permit: OwnedSemaphorePermit,
    handshake: Option<Handshake>,
}

/// The byte stream under a connection: plain, or TLS over it.
type Io = Either<TcpStream, Box<tokio_rustls::server::TlsStream<BufReader<TcpStream>>>>;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

impl Conn {
    /// Runs the TLS handshake under the connection's deadline. A client
    /// that speaks plaintext HTTP/2 gets a TLS alert back, which the
    /// DistribuSync client reads as "this server speaks TLS" (a plain
    /// close would look like any broken connection).
    async fn into_tls(self, acceptor: &tokio_rustls::TlsAcceptor) -> std::io::Result<Conn> {
        let Conn {
            io,
            _permit,
            handshake,
        } = self;
        let Either::Left(tcp) = io else {
            return Err(std::io::Error::other("TLS over TLS"));
        };
        let deadline = handshake
            .as_ref()
            .map(|h| h.deadline.deadline())
            .unwrap_or_else(Instant::now);
        let peer = tcp.peer_addr().ok();
        let handshake_io = async {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
                refuse_plaintext(tcp).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the client does not speak TLS",
                ));
            }
            // Read ahead below rustls, which reads one record at a time,
            // and let it buffer more than its default before writing
            // (docs/DESIGN.md, "TLS buffering").
            let mut tls = acceptor
                .accept(BufReader::with_capacity(limits::TLS_READ_BUFFER, tcp))
                .await?;
            tls.get_mut()
                .1
                .set_buffer_limit(Some(limits::TLS_WRITE_BUFFER));
            Ok(tls)
        };
        match tokio::time::timeout_at(deadline, handshake_io).await {
            Ok(Ok(tls)) => Ok(Conn {
                io: Either::Right(Box::new(tls)),
                _permit,
                handshake,
            }),
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                Err(e)
            }
            Err(_) => {
                tracing::debug!(
                    ?peer,
                    "closing a connection that did not complete its TLS handshake"
                );
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no TLS handshake within --handshake-timeout",
                ))
            }
        }
    }
}

/// Answers a client that sent plaintext to a TLS port with a fatal TLS
/// alert record (protocol_version), then closes. What the client sent is
/// read and dropped for a moment first: closing with unread data would
/// reset the connection, and the client could see the reset (a broken
/// pipe) instead of the alert.
async fn refuse_plaintext(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Alert record: type 21, version TLS 1.2, length 2, fatal (2),
    // protocol_version (70).
    const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];
    const DRAIN_FOR: Duration = Duration::from_secs(1);
    const DRAIN_BYTES: usize = 64 << 10;
    if tcp.write_all(&ALERT).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while drained < DRAIN_BYTES {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.io {
            Either::Left(tcp) => tcp.connect_info(),
            Either::Right(tls) => tls.get_ref().0.get_ref().connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(h) = &mut this.handshake {
                    h.left = h.left.saturating_sub(buf.filled().len() - before);
                    if h.left == 0 {
                        this.handshake = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .handshake
                    .as_mut()
                    .is_some_and(|h| h.deadline.as_mut().poll(cx).is_ready());
                if expired {
                    tracing::debug!("closing a connection that did not complete its handshake");
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 handshake within --handshake-timeout",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
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

/// The next message of a client stream (an upload, a sort's input), or
/// DEADLINE_EXCEEDED naming `--idle-timeout` when none arrives within
/// `idle`: a stalled client must not hold what its stream holds (a staging
/// file, a descriptor, a share of the compute memory budget) for ever. For
/// an upload the caller treats it as a broken stream, so a resumable upload
/// keeps what arrived.
pub(crate) async fn next_message<T>(
    stream: &mut tonic::Streaming<T>,
    idle: Duration,
    what: &str,
) -> Result<Option<T>, tonic::Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "the {what} sent nothing for {} (the server's --idle-timeout)",
            humanize(idle)
        ))),
    }
}

/// "60s", "1.5s": a duration as a flag would take it.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
