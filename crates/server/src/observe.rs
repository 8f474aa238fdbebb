//! The tower layer that watches every call: per-RPC metrics (requests by
//! service, method and status code; latency; bytes in and out; open
//! streams; uploads in progress) and one log line for each call that fails.
//!
//! Invariants: every call that enters the layer is finished exactly once,
//! when its response ends (the trailers, or a trailers-only answer) or,
//! when the client goes away first, when the response is dropped (counted
//! as CANCELLED, as grpc-go's server statistics do). Labels come only from
//! the method table built from the served descriptors, so a client sending
//! made-up paths cannot grow the number of series (they count as
//! `unknown`). It sits outside the auth layer, so refusals are counted and
//! logged too, and outside the oversize rewrite, so it sees the code the
//! client gets.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusRecorder;
use prost::Message;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

/// Streams and uploads in flight, shared by the layer and `status`.
#[derive(Debug, Default)]
pub struct Live {
    /// Streaming calls (client, server or both ways) in flight.
    pub streams: std::sync::atomic::AtomicU64,
    /// Upload and UploadBatch calls in flight.
    pub uploads: std::sync::atomic::AtomicU64,
}

/// How a method streams, from its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streaming {
    Unary,
    Client,
    Server,
    Bidi,
}

impl Streaming {
    fn label(self) -> &'static str {
        match self {
            Streaming::Unary => "unary",
            Streaming::Client => "client",
            Streaming::Server => "server",
            Streaming::Bidi => "bidi",
        }
    }
}

/// One method's labels and metric handles, made once at start.
#[derive(Debug)]
struct MethodInfo {
    service: Arc<str>,
    method: Arc<str>,
    streaming: Streaming,
    upload: bool,
    duration: Histogram,
    received: Counter,
    sent: Counter,
    open: Gauge,
    /// `distribusync_rpc_requests_total` of this method, one handle per
    /// status code (indexed by its number), registered at its first use:
    /// a call then costs an atomic add, not a lookup of its labels.
    requests: [OnceLock<Counter>; STATUS_CODES],
}

/// gRPC status codes are 0 (OK) to 16 (UNAUTHENTICATED).
const STATUS_CODES: usize = 17;

/// The per-method table and the recorder (`None`: metrics off; the layer
/// still logs failures).
#[derive(Debug)]
struct Table {
    methods: HashMap<String, Arc<MethodInfo>>,
    unknown: Arc<MethodInfo>,
    recorder: Option<Arc<PrometheusRecorder>>,
    live: Arc<Live>,
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    table: Arc<Table>,
}

impl ObserveLayer {
    /// A layer for the methods of the `descriptor_sets` (encoded
    /// `FileDescriptorSet`s), recording into `recorder` when given.
    pub fn new(
        descriptor_sets: &[&[u8]],
        recorder: Option<Arc<PrometheusRecorder>>,
        live: Arc<Live>,
    ) -> Self {
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("a descriptor set does not decode; its methods count as unknown");
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let full: Arc<str> = if package.is_empty() {
                        service.name().into()
                    } else {
                        format!("{package}.{}", service.name()).into()
                    };
                    for m in &service.method {
                        let streaming = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => Streaming::Unary,
                            (true, false) => Streaming::Client,
                            (false, true) => Streaming::Server,
                            (true, true) => Streaming::Bidi,
                        };
                        let upload = &*full == "distribusync.v1.Files"
                            && matches!(m.name(), "Upload" | "UploadBatch");
                        let info = MethodInfo::new(
                            recorder.as_deref(),
                            full.clone(),
                            m.name().into(),
                            streaming,
                            upload,
                        );
                        methods.insert(format!("/{full}/{}", m.name()), Arc::new(info));
                    }
                }
            }
        }
        let unknown = Arc::new(MethodInfo::new(
            recorder.as_deref(),
            "unknown".into(),
            "unknown".into(),
            Streaming::Unary,
            false,
        ));
        ObserveLayer {
            table: Arc::new(Table {
                methods,
                unknown,
                recorder,
                live,
            }),
        }
    }
}

impl MethodInfo {
    fn new(
        recorder: Option<&PrometheusRecorder>,
        service: Arc<str>,
        method: Arc<str>,
        streaming: Streaming,
        upload: bool,
    ) -> Self {
        let Some(recorder) = recorder else {
            return MethodInfo {
                service,
                method,
                streaming,
                upload,
                duration: Histogram::noop(),
                received: Counter::noop(),
                sent: Counter::noop(),
                open: Gauge::noop(),
                requests: Default::default(),
            };
        };
        metrics::with_local_recorder(recorder, || {
            let (s, m) = (service.clone(), method.clone());
            MethodInfo {
                duration: metrics::histogram!(
                    "distribusync_rpc_duration_seconds",
                    "service" => s.clone(), "method" => m.clone()
                ),
                received: metrics::counter!(
                    "distribusync_rpc_received_bytes_total",
                    "service" => s.clone(), "method" => m.clone()
                ),
                sent: metrics::counter!(
                    "distribusync_rpc_sent_bytes_total",
                    "service" => s.clone(), "method" => m.clone()
                ),
                open: if streaming == Streaming::Unary {
                    Gauge::noop()
                } else {
                    metrics::gauge!(
                        "distribusync_open_streams",
                        "service" => s, "method" => m, "kind" => streaming.label()
                    )
                },
                requests: Default::default(),
                service,
                method,
                streaming,
                upload,
            }
        })
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    table: Arc<Table>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower_service::Service<http::Request<B>> for Observe<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let info = self
            .table
            .methods
            .get(req.uri().path())
            .unwrap_or(&self.table.unknown)
            .clone();
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let call = Call::start(self.table.clone(), info.clone(), peer);
        let req = req.map(|b| {
            Body::new(CountIn {
                inner: b,
                counter: info.received.clone(),
            })
        });
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            let mut call = call;
            if let Some(code) = grpc_code(response.headers()) {
                // Trailers-only: the status is in the headers.
                call.finish(code, Some(response.headers()));
            }
            Ok(response.map(|b| Body::new(CountOut { inner: b, call })))
        })
    }
}

/// The status code `headers` carry, if any.
fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?;
    let n: i32 = v.to_str().ok()?.parse().ok()?;
    Some(Code::from(n))
}

/// The code's name as gRPC writes it (`NOT_FOUND`), for labels and logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call between its start and its end.
struct Call {
    table: Arc<Table>,
    info: Arc<MethodInfo>,
    peer: Option<std::net::SocketAddr>,
    start: Instant,
    done: bool,
}

impl Call {
    fn start(table: Arc<Table>, info: Arc<MethodInfo>, peer: Option<std::net::SocketAddr>) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        if info.streaming != Streaming::Unary {
            info.open.increment(1.0);
            table.live.streams.fetch_add(1, Relaxed);
        }
        if info.upload {
            table.live.uploads.fetch_add(1, Relaxed);
        }
        Call {
            table,
            info,
            peer,
            start: Instant::now(),
            done: false,
        }
    }

    /// Records the end of the call with `code`; `headers` (or trailers)
    /// carry the message of a failure. Only the first call counts.
    fn finish(&mut self, code: Code, headers: Option<&HeaderMap>) {
        use std::sync::atomic::Ordering::Relaxed;
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let info = &self.info;
        let elapsed = self.start.elapsed();
        info.duration.record(elapsed.as_secs_f64());
        if info.streaming != Streaming::Unary {
            info.open.decrement(1.0);
            self.table.live.streams.fetch_sub(1, Relaxed);
        }
        if info.upload {
            self.table.live.uploads.fetch_sub(1, Relaxed);
        }
        if let Some(recorder) = &self.table.recorder {
            let slot = usize::try_from(i32::from(code))
                .ok()
                .and_then(|i| info.requests.get(i));
            let register = || {
                metrics::with_local_recorder(&**recorder, || {
                    metrics::counter!(
                        "distribusync_rpc_requests_total",
                        "service" => info.service.clone(),
                        "method" => info.method.clone(),
                        "code" => code_name(code)
                    )
                })
            };
            match slot {
                Some(slot) => slot.get_or_init(register).increment(1),
                None => register().increment(1),
            }
        }
        if code != Code::Ok {
            let message = headers
                .and_then(tonic::Status::from_header_map)
                .map(|s| s.message().to_owned())
                .unwrap_or_default();
            log_failure(
                &info.service,
                &info.method,
                code,
                &message,
                self.peer,
                elapsed,
            );
        }
    }
}

/// The one log line of a failed call: ERROR for the server's own faults,
/// WARN for refusals an operator may want to see (load, auth), INFO for
/// the rest (a missing file, a bad argument: the client's business).
fn log_failure(
    service: &str,
    method: &str,
    code: Code,
    message: &str,
    peer: Option<std::net::SocketAddr>,
    elapsed: std::time::Duration,
) {
    let code = code_name_of(code);
    let ms = elapsed.as_millis() as u64;
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    match code.1 {
        tracing::Level::ERROR => {
            tracing::error!(
                service,
                method,
                code = code.0,
                error = message,
                peer,
                ms,
                "request failed"
            );
        }
        tracing::Level::WARN => {
            tracing::warn!(
                service,
                method,
                code = code.0,
                error = message,
                peer,
                ms,
                "request failed"
            );
        }
        _ => {
            tracing::info!(
                service,
                method,
                code = code.0,
                error = message,
                peer,
                ms,
                "request failed"
            );
        }
    }
}

/// The code's name and the level its failure is logged at.
fn code_name_of(code: Code) -> (&'static str, tracing::Level) {
    let level = match code {
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => {
            tracing::Level::ERROR
        }
        Code::ResourceExhausted
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::PermissionDenied
        | Code::Unauthenticated => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    (code_name(code), level)
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response ended without a status (the client left, or the
        // connection broke): as grpc-go's server statistics, CANCELLED.
        self.finish(Code::Cancelled, None);
    }
}

/// A request body whose data bytes are counted.
struct CountIn<B> {
    inner: B,
    counter: Counter,
}

impl<B> HttpBody for CountIn<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.increment(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose data bytes are counted and whose trailers end
/// the call.
struct CountOut {
    inner: Body,
    call: Call,
}

impl HttpBody for CountOut {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.call.info.sent.increment(data.len() as u64);
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_code(trailers).unwrap_or(Code::Unknown);
                    this.call.finish(code, Some(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Internal, None),
            Poll::Ready(None) => this.call.finish(Code::Unknown, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
