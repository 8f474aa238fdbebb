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
