//! Opening a channel to a server, tuned as PITFALLS.md says (no Nagle,
//! big fixed HTTP/2 windows and frames).

use std::time::Duration;

use distribusync_core::limits;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, Result};

/// `host:port` becomes `http://host:port`; a full URL is kept.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    Endpoint::from_shared(addr.to_owned())
        .map_err(|e| ClientError::BadAddress {
            addr: addr.to_owned(),
            why: e.to_string(),
        })
        .map(|e| {
            e.tcp_nodelay(true)
                // Big frames: bulk streams (files, number lists) cost far
                // fewer frames than with HTTP/2's 16 KiB default.
                .max_frame_size(limits::HTTP2_MAX_FRAME)
                .initial_stream_window_size(Some(limits::CLIENT_STREAM_WINDOW))
                .initial_connection_window_size(Some(limits::CLIENT_CONNECTION_WINDOW))
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })
}

/// Connects to `addr` now, so an absent server is reported at once.
///
/// # Errors
/// [`ClientError::BadAddress`] or [`ClientError::Unreachable`].
pub async fn channel(addr: &str) -> Result<Channel> {
    let addr = normalize_addr(addr);
    endpoint(&addr)?
        .connect()
        .await
        .map_err(|_| ClientError::Unreachable { addr })
}

/// A channel that connects on first use and reconnects after failures; for
/// long-running clients (sync, menu) that must survive a server restart.
///
/// # Errors
/// [`ClientError::BadAddress`].
pub fn lazy_channel(addr: &str) -> Result<Channel> {
    Ok(endpoint(&normalize_addr(addr))?.connect_lazy())
}

/// What a probe of a server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// It answers health checks and serves the service asked about.
    Serving,
    /// It answers, but does not serve that service.
    NotServing,
    /// A connection opens but nothing answers in time (a hung server).
    NotResponding,
    /// No connection.
    Unreachable,
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Serving => "connected",
            Self::NotServing => "connected, but not serving this",
            Self::NotResponding => "not responding",
            Self::Unreachable => "unreachable",
        })
    }
}

/// Asks the server at `addr`, over a fresh connection and within `timeout`,
/// whether it serves `service` (a full gRPC service name, e.g.
/// `distribusync.v1.Files`), with a standard gRPC health check.
pub async fn probe(addr: &str, service: &str, timeout: Duration) -> Reachability {
    use tonic_health::pb::health_check_response::ServingStatus;
    let check = async {
        let Ok(channel) = channel(addr).await else {
            return Reachability::Unreachable;
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        };
        match health.check(request).await {
            Ok(r) if r.get_ref().status() == ServingStatus::Serving => Reachability::Serving,
            Ok(_) => Reachability::NotServing,
            Err(s) if s.code() == tonic::Code::NotFound => Reachability::NotServing,
            Err(_) => Reachability::NotResponding,
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(r) => r,
        // Connected (or connecting) but silent.
        Err(_) => Reachability::NotResponding,
    }
}
