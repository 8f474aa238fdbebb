//! Prometheus metrics: the recorder the [`observe`](crate::observe) layer
//! writes per-RPC figures into, the figures read at each scrape (files,
//! bytes, kept parts, index size, jobs), and the HTTP endpoint serving
//! `/metrics` (`serve --metrics-listen`, through the endpoint shared with
//! the sync daemon, [`crate::metrics_endpoint`]).
//!
//! Invariants: each server has its own recorder (nothing global, so two
//! servers in one process, as in tests, never mix figures); the state
//! figures are read when scraped, never cached, so a scrape shows the
//! store as it is; the endpoint answers only `GET /metrics` and stops
//! accepting when the server shuts down.

use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio_util::sync::CancellationToken;

use crate::compute::ComputeService;
use crate::observe::Live;
use crate::store::Store;

/// Latency buckets, in seconds: 0.5 ms to 5 min (Watch and Callbacks
/// streams live long; Add on loopback takes well under a millisecond).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// A new recorder whose histograms have [`LATENCY_BUCKETS`] (without
/// buckets the exporter renders summaries).
pub(crate) fn recorder() -> Arc<PrometheusRecorder> {
    let builder = PrometheusBuilder::new();
    let builder = match builder.set_buckets(LATENCY_BUCKETS) {
        Ok(b) => b,
        // Only an empty bucket list is refused; this one is not empty.
        Err(_) => PrometheusBuilder::new(),
    };
    let recorder = builder.build_recorder();
    metrics::with_local_recorder(&recorder, describe);
    Arc::new(recorder)
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "distribusync_rpc_requests_total",
        "Calls finished, by service, method and gRPC status code"
    );
    describe_histogram!(
        "distribusync_rpc_duration_seconds",
        Unit::Seconds,
        "Time from a call's arrival to the end of its response"
    );
    describe_counter!(
        "distribusync_rpc_received_bytes_total",
        Unit::Bytes,
        "Request message bytes received (gRPC framing included)"
    );
    describe_counter!(
        "distribusync_rpc_sent_bytes_total",
        Unit::Bytes,
        "Response message bytes sent (gRPC framing included)"
    );
    describe_gauge!(
        "distribusync_open_streams",
        "Streaming calls in flight, by method and kind (client, server, bidi)"
    );
    describe_gauge!(
        "distribusync_uploads_in_progress",
        "Upload and UploadBatch calls in flight"
    );
    describe_gauge!(
        "distribusync_kept_parts",
        "Parts of interrupted uploads kept for resuming"
    );
    describe_gauge!(
        "distribusync_kept_part_bytes",
        Unit::Bytes,
        "Bytes held by kept parts"
    );
    describe_gauge!(
        "distribusync_manifests_computing",
        "File manifests being computed for delta transfers (bounded)"
    );
    describe_gauge!(
        "distribusync_manifests_computing_max",
        "The most file manifests computed at once since the server started"
    );
    describe_gauge!("distribusync_files", "Files stored");
    describe_gauge!(
        "distribusync_file_bytes",
        Unit::Bytes,
        "Bytes of the files stored"
    );
    describe_gauge!(
        "distribusync_index_bytes",
        Unit::Bytes,
        "Size of the index on disk (database and write-ahead log)"
    );
    describe_gauge!("distribusync_jobs", "Compute jobs queued or running");
    describe_counter!(
        "distribusync_jobs_finished_total",
        "Compute jobs finished since start, by final state"
    );
    describe_gauge!(
        "distribusync_uptime_seconds",
        Unit::Seconds,
        "Seconds since the server started"
    );
}

/// What a scrape reads besides the recorder.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub store: Option<Store>,
    pub compute: Option<ComputeService>,
    pub live: Arc<Live>,
    pub started: Instant,
}

/// Renders the exposition text, after setting the state figures.
async fn render(recorder: &PrometheusRecorder, sources: &Sources) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = match &sources.store {
        Some(store) => match store.stats().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the store's figures");
                None
            }
        },
        None => None,
    };
    let jobs = match &sources.compute {
        Some(compute) => Some(compute.job_counts().await),
        None => None,
    };
    metrics::with_local_recorder(recorder, || {
        use metrics::{counter, gauge};
        gauge!("distribusync_uptime_seconds").set(sources.started.elapsed().as_secs_f64());
        gauge!("distribusync_uploads_in_progress").set(sources.live.uploads.load(Relaxed) as f64);
        if let Some(s) = stats {
            gauge!("distribusync_files").set(s.files as f64);
            gauge!("distribusync_file_bytes").set(s.bytes as f64);
            gauge!("distribusync_index_bytes").set(s.index_bytes as f64);
            gauge!("distribusync_kept_parts").set(s.kept.count as f64);
            gauge!("distribusync_kept_part_bytes").set(s.kept.bytes as f64);
            gauge!("distribusync_manifests_computing").set(s.manifests.running as f64);
            gauge!("distribusync_manifests_computing_max").set(s.manifests.most as f64);
        }
        if let Some(j) = jobs {
            gauge!("distribusync_jobs", "state" => "queued").set(j.queued as f64);
            gauge!("distribusync_jobs", "state" => "running").set(j.running as f64);
            for (state, n) in [
                ("succeeded", j.ended.succeeded),
                ("failed", j.ended.failed),
                ("cancelled", j.ended.cancelled),
                ("deadline_exceeded", j.ended.deadline_exceeded),
            ] {
                counter!("distribusync_jobs_finished_total", "state" => state).absolute(n);
            }
        }
    });
    recorder.handle().render()
}

/// Serves the server's `/metrics` on `listener` until `stop` (the
/// endpoint is [`crate::metrics_endpoint`], shared with the sync daemon).
pub(crate) async fn serve_endpoint(
    listener: tokio::net::TcpListener,
    recorder: Arc<PrometheusRecorder>,
    sources: Sources,
    stop: CancellationToken,
) {
    let scrape = move || {
        let (recorder, sources) = (recorder.clone(), sources.clone());
        async move { render(&recorder, &sources).await }
    };
    crate::metrics_endpoint::serve_metrics(listener, scrape, stop).await;
}
