//! Connection settings and opening channels: one [`ConnectionConfig`]
//! (server URLs, how to trust a TLS server, the token) from which every
//! client is built (files, compute, health probe, sync, menu).
//!
//! Invariants: every request on a channel made here carries the token as
//! `authorization: Bearer …` metadata (an interceptor on the channel, so
//! streaming calls, Watch and every reconnect of a lazy channel carry it
//! too). Channels are tuned as docs/DESIGN.md says: no Nagle, big fixed
//! HTTP/2 windows and frames. TLS is rustls with ring, done by our own
//! connector (see `connector`), so errors name what went wrong: a changed
//! fingerprint, an untrusted certificate, TLS against plaintext.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distribusync_core::{Fingerprint, limits};
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, Result};

mod channel;
mod connector;
mod tls;

pub use channel::AuthChannel;
use channel::FailureSlot;
use connector::Connector;
pub use tls::{TlsTrust, fingerprint_of};

/// Why a connection could not be set up or was refused at the TLS level.
/// Each says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach server at {addr} ({why}; is \"distribusync serve\" running?)")]
    Unreachable { addr: String, why: String },
    #[error("the server at {addr} speaks TLS: use https://{authority}")]
    ServerSpeaksTls { addr: String, authority: String },
    #[error("the server at {addr} does not speak TLS: use http://{authority}")]
    ServerSpeaksPlaintext { addr: String, authority: String },
    #[error(
        "the certificate of the server at {addr} has CHANGED: expected fingerprint {expected}, the server presented {presented}; \
         someone may be intercepting the connection, or the server has a new certificate \
         (check on the server with `distribusync serve --print-fingerprint`, then `distribusync login` again or pass --fingerprint)"
    )]
    FingerprintChanged {
        addr: String,
        expected: Fingerprint,
        presented: Fingerprint,
    },
    #[error("the certificate of the server at {addr} is not trusted: {why}")]
    Untrusted { addr: String, why: String },
    #[error("TLS handshake with the server at {addr} failed: {why}")]
    Handshake { addr: String, why: String },
    #[error("--ca {}: {why}", path.display())]
    CaFile { path: PathBuf, why: String },
    #[error(
        "the system trusts no certificate authority (no CA certificates found); give one with --ca FILE or pin the server with --fingerprint"
    )]
    NoSystemRoots,
    #[error("invalid server address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("{0}")]
    BadToken(String),
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// The token a client presents; shown nowhere (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token as given (surrounding white space removed).
    ///
    /// # Errors
    /// [`ConnectError::BadToken`] when it is empty or not printable ASCII
    /// (it travels in an HTTP/2 header).
    pub fn new(token: &str) -> std::result::Result<Self, ConnectError> {
        let t = token.trim();
        if t.is_empty() {
            return Err(ConnectError::BadToken("the token is empty".into()));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConnectError::BadToken(
                "the token has characters a token cannot have (spaces, control or non-ASCII characters)".into(),
            ));
        }
        Ok(Self(t.into()))
    }

    /// The token in the file at `path` (its first line).
    ///
    /// # Errors
    /// [`ConnectError::BadToken`] naming the file.
    pub fn from_file(path: &Path) -> std::result::Result<Self, ConnectError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConnectError::BadToken(format!("--token-file {}: {e}", path.display())))?;
        Self::new(text.lines().next().unwrap_or(""))
            .map_err(|e| ConnectError::BadToken(format!("--token-file {}: {e}", path.display())))
    }

    /// The token itself (to save it in a profile).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The `authorization: Bearer <token>` header value sent with every
/// request (none without a token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<http::HeaderValue>);

impl Bearer {
    pub fn new(token: Option<&Token>) -> Self {
        // A Token is printable ASCII, so this cannot fail; if it did,
        // sending no token gets a clear UNAUTHENTICATED.
        Self(token.and_then(|t| {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", t.0)).ok()?;
            v.set_sensitive(true);
            Some(v)
        }))
    }

    pub(crate) fn header(&self) -> Option<&http::HeaderValue> {
        self.0.as_ref()
    }
}

/// Everything a client needs to talk to a server: where, how to trust it,
/// and who it is. Built once (flags > environment > profile > defaults)
/// and handed to every client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// The file server: `https://host:port` (TLS) or `http://host:port`.
    pub endpoint: String,
    /// The compute server when it is another one than `endpoint`.
    pub compute_endpoint: Option<String>,
    /// How a TLS server's certificate is checked (unused over http).
    pub tls: TlsTrust,
    /// Sent with every request when set.
    pub token: Option<Token>,
}

impl ConnectionConfig {
    /// Plaintext, no token: what a plain `host:port` or `http://` address
    /// means (an `https://` one means TLS checked by the system's CAs).
    pub fn plain(addr: &str) -> Self {
        Self::new(addr, TlsTrust::SystemRoots, None)
    }

    /// A server at `addr` trusted as `tls` says. An address without a
    /// scheme is `https://` when `tls` names a CA or a fingerprint, else
    /// `http://`.
    pub fn new(addr: &str, tls: TlsTrust, token: Option<Token>) -> Self {
        let endpoint = if addr.contains("://") {
            addr.to_owned()
        } else if tls.is_explicit() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        Self {
            endpoint,
            compute_endpoint: None,
            tls,
            token,
        }
    }

    /// The same settings with the compute server at `addr` (normalised as
    /// the file server's).
    #[must_use]
    pub fn with_compute(mut self, addr: Option<&str>) -> Self {
        self.compute_endpoint = addr.map(|a| Self::new(a, self.tls.clone(), None).endpoint);
        self
    }

    /// The compute server's URL.
    pub fn compute(&self) -> &str {
        self.compute_endpoint.as_deref().unwrap_or(&self.endpoint)
    }

    /// These settings aimed at the compute server.
    pub fn for_compute(&self) -> Self {
        Self {
            endpoint: self.compute().to_owned(),
            compute_endpoint: None,
            ..self.clone()
        }
    }

    /// Whether the file server is spoken to over TLS.
    pub fn is_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// The interceptor that adds this configuration's token.
    pub fn bearer(&self) -> Bearer {
        Bearer::new(self.token.as_ref())
    }

    /// Connects to the file server now, so an absent or refusing server
    /// is reported at once.
    ///
    /// # Errors
    /// [`ClientError::Connect`] or [`ClientError::BadAddress`].
    pub async fn connect(&self) -> Result<AuthChannel> {
        let (endpoint, connector) = self.endpoint_and_connector(None)?;
        let slot = connector.failure.clone();
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| self.connect_failed(&e))?;
        Ok(AuthChannel::with_slot(channel, self.bearer(), slot))
    }

    /// As [`ConnectionConfig::connect`], without the token.
    ///
    /// # Errors
    /// As [`ConnectionConfig::connect`].
    pub async fn connect_bare(&self) -> Result<Channel> {
        let (endpoint, connector) = self.endpoint_and_connector(None)?;
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| self.connect_failed(&e))
    }

    /// A channel that connects on first use and reconnects after failures
    /// (for long-running clients: sync, menu).
    ///
    /// # Errors
    /// [`ClientError::BadAddress`], or a CA file that cannot be used.
    pub fn connect_lazy(&self) -> Result<AuthChannel> {
        let (endpoint, connector) = self.endpoint_and_connector(None)?;
        let slot = connector.failure.clone();
        Ok(AuthChannel::with_slot(
            endpoint.connect_with_connector_lazy(connector),
            self.bearer(),
            slot,
        ))
    }

    /// As [`ConnectionConfig::connect_lazy`], without the token.
    ///
    /// # Errors
    /// As [`ConnectionConfig::connect_lazy`].
    pub fn connect_lazy_bare(&self) -> Result<Channel> {
        let (endpoint, connector) = self.endpoint_and_connector(None)?;
        Ok(endpoint.connect_with_connector_lazy(connector))
    }

    /// Opens a TLS connection to the file server accepting whatever
    /// certificate it presents, and returns that certificate's
    /// fingerprint: for `login` to show a person before they decide to
    /// trust it. Nothing is sent over the connection.
    ///
    /// # Errors
    /// As [`ConnectionConfig::connect`]; an `http://` URL is refused.
    pub async fn fetch_fingerprint(&self) -> Result<Fingerprint> {
        if !self.is_tls() {
            return Err(ClientError::BadAddress {
                addr: self.endpoint.clone(),
                why: "a fingerprint is only presented over TLS (https://)".into(),
            });
        }
        let seen = Arc::new(Mutex::new(None));
        let (_, connector) = self.endpoint_and_connector(Some(seen.clone()))?;
        connector.open().await?;
        let found = seen.lock().ok().and_then(|s| *s);
        found.ok_or_else(|| {
            ClientError::Protocol(format!(
                "the server at {} presented no certificate",
                self.endpoint
            ))
        })
    }

    fn bad_address(&self, why: impl Into<String>) -> ClientError {
        ClientError::BadAddress {
            addr: self.endpoint.clone(),
            why: why.into(),
        }
    }

    /// The channel's endpoint and connector. A list of servers (`https://a:50000,https://b:50000`:
    /// instances of one cluster) is one connector that dials them in
    /// order, each new connection going to the first that answers; an
    /// address without a scheme in the list takes the first one's.
    fn endpoint_and_connector(
        &self,
        record: Option<Arc<Mutex<Option<Fingerprint>>>>,
    ) -> Result<(Endpoint, Connector)> {
        let mut urls = self.endpoint.split(',').map(str::trim);
        let first = urls.next().unwrap_or_default();
        let scheme = first.split_once("://").map_or("http", |(s, _)| s);
        let (endpoint, mut connector) = self.endpoint_and_connector_for(first, record.clone())?;
        let alternates = urls
            .map(|u| {
                let url = if u.contains("://") {
                    u.to_owned()
                } else {
                    format!("{scheme}://{u}")
                };
                self.endpoint_and_connector_for(&url, record.clone())
                    .map(|(_, c)| c)
            })
            .collect::<Result<Vec<_>>>()?;
        connector.alternates = alternates.into();
        Ok((endpoint, connector))
    }

    fn endpoint_and_connector_for(
        &self,
        url: &str,
        record: Option<Arc<Mutex<Option<Fingerprint>>>>,
    ) -> Result<(Endpoint, Connector)> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| self.bad_address(e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(self.bad_address("the address must start with http:// or https://")),
        };
        let Some(host) = uri.host() else {
            return Err(self.bad_address("no host name"));
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        let tls = if https {
            let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| self.bad_address(e.to_string()))?;
            Some((tls::client_config(&self.tls, record)?, name))
        } else {
            None
        };
        // tonic is always given http://: TLS is the connector's business,
        // and no tonic TLS feature enabled elsewhere in a build can then
        // refuse an https:// URI (docs/DESIGN.md).
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| self.bad_address(e.to_string()))?;
        let origin: http::Uri = format!("{}://{authority}", if https { "https" } else { "http" })
            .parse()
            .map_err(|e: http::uri::InvalidUri| self.bad_address(e.to_string()))?;
        let connector = Connector {
            host: bare.into(),
            port,
            url: url.into(),
            authority: authority.into(),
            tls,
            failure: FailureSlot::default(),
            alternates: Arc::new([]),
        };
        Ok((tuned(endpoint).origin(origin), connector))
    }

    fn connect_failed(&self, e: &tonic::transport::Error) -> ClientError {
        match find_connect_error(e) {
            Some(c) => c.into(),
            None => ClientError::Unreachable {
                addr: self.endpoint.clone(),
            },
        }
    }
}

impl From<&str> for ConnectionConfig {
    fn from(addr: &str) -> Self {
        Self::plain(addr)
    }
}

impl From<&String> for ConnectionConfig {
    fn from(addr: &String) -> Self {
        Self::plain(addr)
    }
}

impl From<String> for ConnectionConfig {
    fn from(addr: String) -> Self {
        Self::plain(&addr)
    }
}

impl From<&ConnectionConfig> for ConnectionConfig {
    fn from(c: &ConnectionConfig) -> Self {
        c.clone()
    }
}

/// The [`ConnectError`] somewhere in `e`'s chain of causes, also inside an
/// `io::Error` (whose `source()` skips the error it wraps).
pub fn find_connect_error(e: &(dyn std::error::Error + 'static)) -> Option<ConnectError> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(c) = find_connect_error(inner)
        {
            return Some(c);
        }
        next = err.source();
    }
    None
}

/// `host:port` becomes `http://host:port`; a full URL is kept.
pub fn normalize_addr(addr: &str) -> String {
    ConnectionConfig::plain(addr).endpoint
}

fn tuned(e: Endpoint) -> Endpoint {
    e.tcp_nodelay(true)
        // Big frames: bulk streams (files, number lists) cost far
        // fewer frames than with HTTP/2's 16 KiB default.
        .max_frame_size(limits::HTTP2_MAX_FRAME)
        .initial_stream_window_size(Some(limits::CLIENT_STREAM_WINDOW))
        .initial_connection_window_size(Some(limits::CLIENT_CONNECTION_WINDOW))
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
}

/// Connects to the server at `addr` now (plaintext unless `https://`, no
/// token), so an absent server is reported at once.
///
/// # Errors
/// [`ClientError::BadAddress`], [`ClientError::Unreachable`] or
/// [`ClientError::Connect`].
pub async fn channel(addr: &str) -> Result<Channel> {
    ConnectionConfig::plain(addr).connect_bare().await
}

/// A channel to `addr` that connects on first use and reconnects after
/// failures (no token).
///
/// # Errors
/// [`ClientError::BadAddress`].
pub fn lazy_channel(addr: &str) -> Result<Channel> {
    ConnectionConfig::plain(addr).connect_lazy_bare()
}

/// What a probe of a server found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// It answers health checks and serves the service asked about.
    Serving,
    /// It answers, but does not serve that service.
    NotServing,
    /// A connection opens but nothing answers in time (a hung server).
    NotResponding,
    /// No connection.
    Unreachable,
    /// A connection opens but is refused at the TLS level: TLS spoken to
    /// a plaintext server or the reverse, an untrusted or changed
    /// certificate. The message says which and what to do.
    Refused(String),
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Serving => "connected",
            Self::NotServing => "connected, but not serving this",
            Self::NotResponding => "not responding",
            Self::Unreachable => "unreachable",
            Self::Refused(why) => why,
        })
    }
}

/// Asks the file server of `config`, over a fresh connection and within
/// `timeout`, whether it serves `service` (a full gRPC service name, e.g.
/// `distribusync.v1.Files`), with a standard gRPC health check.
pub async fn probe(
    config: impl Into<ConnectionConfig>,
    service: &str,
    timeout: Duration,
) -> Reachability {
    use tonic_health::pb::health_check_response::ServingStatus;
    let config = config.into();
    let check = async {
        let channel = match config.connect().await {
            Ok(channel) => channel,
            Err(ClientError::Connect(c)) => return Reachability::Refused(c.to_string()),
            Err(_) => return Reachability::Unreachable,
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        };
        match health.check(request).await {
            Ok(r) if r.get_ref().status() == ServingStatus::Serving => Reachability::Serving,
            Ok(_) => Reachability::NotServing,
            Err(s) if s.code() == tonic::Code::NotFound => Reachability::NotServing,
            Err(s) => match find_connect_error(&s) {
                Some(c) => Reachability::Refused(c.to_string()),
                None => Reachability::NotResponding,
            },
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(r) => r,
        // Connected (or connecting) but silent.
        Err(_) => Reachability::NotResponding,
    }
}
