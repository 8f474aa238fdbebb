//! Prometheus metrics: the recorder the [`observe`](crate::observe) layer
//! writes per-RPC figures into, the figures read at each scrape (files,
//! bytes, kept parts, index size, jobs), and the HTTP endpoint serving
//! `/metrics` (`serve --metrics-listen`).
//!
//! Invariants: each server has its own recorder (nothing global, so two
//! servers in one process, as in tests, never mix figures); the state
//! figures are read when scraped, never cached, so a scrape shows the
//! store as it is; the endpoint answers only `GET /metrics` and stops
//! accepting when the server shuts down.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
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
    let jobs = sources.compute.as_ref().map(ComputeService::job_counts);
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

/// Scrapers served at once; a connection past it is closed unserved.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// A scraper must send its request headers within this.
const METRICS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until `stop` is cancelled, to at
/// most [`METRICS_MAX_CONNECTIONS`] connections at once.
pub(crate) async fn serve_endpoint(
    listener: tokio::net::TcpListener,
    recorder: Arc<PrometheusRecorder>,
    sources: Sources,
    stop: CancellationToken,
) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("metrics: too many connections; closed one");
            continue;
        };
        let recorder = recorder.clone();
        let sources = sources.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let recorder = recorder.clone();
                let sources = sources.clone();
                async move {
                    let response = if req.uri().path() != "/metrics" {
                        plain(
                            http::StatusCode::NOT_FOUND,
                            "not found: try /metrics\n".into(),
                        )
                    } else if req.method() != http::Method::GET {
                        plain(
                            http::StatusCode::METHOD_NOT_ALLOWED,
                            "only GET /metrics\n".into(),
                        )
                    } else {
                        let text = render(&recorder, &sources).await;
                        let mut r = plain(http::StatusCode::OK, text);
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics: connection ended");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

fn plain(status: http::StatusCode, body: String) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
