//! The HTTP endpoint that answers `GET /metrics` with Prometheus text:
//! the server's (`serve --metrics-listen`) and the sync daemon's
//! (`sync --metrics-listen`) are this one function, each with its own way
//! to render the text.
//!
//! Invariants: at most [`METRICS_MAX_CONNECTIONS`] scrapers are served at
//! once (a connection past it is closed unserved, as the web page, WebDAV
//! and gRPC listeners do); a scraper must send its request headers within
//! [`METRICS_HEADER_TIMEOUT`], so idle connections cannot pile up; the
//! text is rendered when asked, never cached; only `GET /metrics` is
//! answered; nothing is accepted after `stop` is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

/// Scrapers served at once; a connection past it is closed unserved.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// A scraper must send its request headers within this.
pub const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until `stop` is cancelled, to at
/// most [`METRICS_MAX_CONNECTIONS`] connections at once; each scrape
/// answers what `render` returns then.
pub async fn serve_metrics<R, F>(
    listener: tokio::net::TcpListener,
    render: R,
    stop: CancellationToken,
) where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = String> + Send + 'static,
{
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
                    // Out of descriptors, most likely: let some close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("metrics: too many connections; closed one");
            continue;
        };
        let render = render.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let render = render.clone();
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
                        let mut r = plain(http::StatusCode::OK, render().await);
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
