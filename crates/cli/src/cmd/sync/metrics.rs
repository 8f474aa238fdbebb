//! `sync --metrics-listen ADDR`: the sync daemon's figures as Prometheus
//! text on `GET /metrics`, served by the server's own bounded endpoint
//! ([`distribusync_server::serve_metrics`]: the same connection bound and
//! header timeout).
//!
//! Invariant: nothing is recorded for metrics on the sync path. Each
//! scrape copies the engine's [`SyncStatus`] (the same snapshot `status
//! --sync` answers from) into this daemon's own recorder and renders it,
//! so the two can never disagree and a daemon without the flag pays
//! nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use distribusync_client::sync::SyncStatus;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::UsageError;

/// Binds the metrics address before anything else starts, so an address
/// in use is the command's one-line usage error (exit 2).
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, UsageError> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| UsageError(format!("sync: cannot listen for metrics on {addr}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| UsageError(format!("sync: cannot listen for metrics on {addr}: {e}")))?;
    Ok(listener)
}

/// Serves the figures of `status` on `listener` until `stop`.
///
/// # Errors
/// The listener cannot be handed to the runtime.
pub fn serve(
    listener: std::net::TcpListener,
    status: watch::Receiver<SyncStatus>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
    metrics::with_local_recorder(&*recorder, describe);
    let scrape = move || {
        // A copy, so the engine is never kept waiting on the render.
        let snapshot = status.borrow().clone();
        let text = render(&recorder, &snapshot);
        async move { text }
    };
    tokio::spawn(distribusync_server::serve_metrics(listener, scrape, stop));
    Ok(())
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "distribusync_sync_pending_files",
        "Operations (files to send, receive, delete or rename) of the current pass not done yet"
    );
    describe_gauge!(
        "distribusync_sync_pending_bytes",
        Unit::Bytes,
        "Bytes the current pass's transfers have still to move"
    );
    describe_gauge!(
        "distribusync_sync_transfers_in_flight",
        "Transfers (single files, or batches of small ones) running now"
    );
    describe_gauge!(
        "distribusync_sync_last_pass_timestamp_seconds",
        Unit::Seconds,
        "When the last pass ended (Unix time); absent before the first"
    );
    describe_gauge!(
        "distribusync_sync_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the last pass in which nothing failed ended (Unix time); absent before the first"
    );
    describe_counter!("distribusync_sync_passes_total", "Passes started");
    describe_counter!(
        "distribusync_sync_uploaded_files_total",
        "Files sent to the server"
    );
    describe_counter!(
        "distribusync_sync_downloaded_files_total",
        "Files received from the server"
    );
    describe_counter!(
        "distribusync_sync_sent_bytes_total",
        Unit::Bytes,
        "File content sent to the server (not the protocol around it)"
    );
    describe_counter!(
        "distribusync_sync_received_bytes_total",
        Unit::Bytes,
        "File content received from the server (not the protocol around it)"
    );
    describe_counter!(
        "distribusync_sync_conflicts_total",
        "Files changed on both sides; the local version was kept as a copy"
    );
    describe_counter!(
        "distribusync_sync_errors_total",
        "Steps (transfers, deletions, renames) that failed; each is tried again"
    );
}

/// The exposition text of `s`.
fn render(recorder: &PrometheusRecorder, s: &SyncStatus) -> String {
    metrics::with_local_recorder(recorder, || {
        use metrics::{counter, gauge};
        gauge!("distribusync_sync_pending_files").set(s.pending as f64);
        gauge!("distribusync_sync_pending_bytes").set(s.bytes_pending as f64);
        gauge!("distribusync_sync_transfers_in_flight").set(s.in_flight as f64);
        let unix = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
        };
        if let Some(at) = unix(s.last_pass) {
            gauge!("distribusync_sync_last_pass_timestamp_seconds").set(at);
        }
        if let Some(at) = unix(s.last_success) {
            gauge!("distribusync_sync_last_success_timestamp_seconds").set(at);
        }
        counter!("distribusync_sync_passes_total").absolute(s.passes);
        counter!("distribusync_sync_uploaded_files_total").absolute(s.uploaded);
        counter!("distribusync_sync_downloaded_files_total").absolute(s.downloaded);
        counter!("distribusync_sync_sent_bytes_total").absolute(s.bytes_sent);
        counter!("distribusync_sync_received_bytes_total").absolute(s.bytes_received);
        counter!("distribusync_sync_conflicts_total").absolute(s.conflicts);
        counter!("distribusync_sync_errors_total").absolute(s.errors);
    });
    recorder.handle().render()
}
