//! The web page (`serve --web-listen ADDR`): a small HTTP/1.1 server with
//! its assets built into the binary, a JSON API over the same store and
//! compute service as gRPC, share links, and live updates by server-sent
//! events.
//!
//! Main types: [`WebListener`] (the socket the caller bound, handed to
//! [`crate::serve`] in [`crate::ServerConfig::web`]), [`Web`] (the shared
//! state of the handlers).
//!
//! Invariants:
//! - Every API call but sign-in and share links goes through a session
//!   ([`session`]): the session holds the [`Identity`] the token gave, and
//!   every file operation goes through [`crate::store::View`] with it, so a
//!   token's folder confines the page exactly as it confines gRPC; the scope
//!   a call needs is the one its gRPC twin needs ([`crate::auth::required_scope`]).
//! - Every call that changes something carries the session's CSRF token in
//!   a header and, when the browser sends one, a same-origin `Origin`: a
//!   cross-site form cannot set either.
//! - File names reach the page as JSON text and are shown with
//!   `textContent`, never as HTML; downloads are served with
//!   `Content-Security-Policy: sandbox` and `nosniff`, so an uploaded page
//!   cannot run script on this origin.

mod api;
mod compute;
mod events;
mod range;
mod session;
mod share;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Identity};
use crate::compute::ComputeService;
use crate::error::ServiceError;
use crate::store::Store;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests without a byte for this long are dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once by default; past it a new one is closed at
/// once (as the WebDAV listener does), so idle keep-alive connections
/// cannot pile up without limit.
pub const WEB_MAX_CONNECTIONS: usize = 1024;

/// The socket the web page is served on: bound by the caller (so a test
/// binds port 0 and reads the address), taken once by [`crate::serve`].
#[derive(Debug, Clone)]
pub struct WebListener {
    socket: Arc<Mutex<Option<std::net::TcpListener>>>,
    max_connections: usize,
}

impl WebListener {
    /// Wraps a bound, listening socket.
    ///
    /// # Errors
    /// When the socket cannot be made non-blocking.
    pub fn new(listener: std::net::TcpListener) -> std::io::Result<WebListener> {
        listener.set_nonblocking(true)?;
        Ok(WebListener {
            socket: Arc::new(Mutex::new(Some(listener))),
            max_connections: WEB_MAX_CONNECTIONS,
        })
    }

    /// Serves at most `n` connections at once (default
    /// [`WEB_MAX_CONNECTIONS`]); a connection past it is closed unserved.
    #[must_use]
    pub fn with_max_connections(mut self, n: usize) -> WebListener {
        self.max_connections = n.max(1);
        self
    }

    /// The bound address (`None` once taken or unreadable).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().and_then(|l| l.local_addr().ok())
    }

    fn take(&self) -> Option<std::net::TcpListener> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What every handler shares: a cheap clone.
#[derive(Debug, Clone)]
pub(crate) struct Web {
    store: Option<Store>,
    compute: Option<ComputeService>,
    auth: Auth,
    sessions: session::Sessions,
    shares: Option<share::Shares>,
    /// Cookies are `Secure` and origins `https://` under TLS.
    tls: bool,
    shutdown: CancellationToken,
}

/// An API error: a status and a message for the person at the page.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The HTTP status for a gRPC code: the one mapping of [`ServiceError`]
/// (to a `Status`) decides, this only translates.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::InvalidArgument | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted | C::FailedPrecondition => StatusCode::CONFLICT,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        C::Unavailable | C::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let status = match (s.code(), s.message()) {
            // A limit (too many numbers, a file over the size limit) is
            // the request's fault, not the disk's.
            (tonic::Code::ResourceExhausted, m) if m.contains("limit") => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            (c, _) => http_status(c),
        };
        ApiError::new(status, s.message())
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        ApiError::from(tonic::Status::from(e))
    }
}

impl From<distribusync_core::PathError> for ApiError {
    fn from(e: distribusync_core::PathError) -> ApiError {
        ApiError::bad(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let body = serde_json::json!({ "error": self.message });
        let mut r = (self.status, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The parts of [`crate::serve`] the page works with.
#[derive(Debug)]
pub(crate) struct Parts {
    pub store: Option<Store>,
    pub compute: Option<ComputeService>,
    pub auth: Auth,
    /// Shared with the other listeners, so a reload reaches the page too.
    pub tls: Option<crate::tls::SharedTls>,
    pub root: std::path::PathBuf,
}

/// Serves the page on `listener` until `shutdown`; in-flight requests are
/// tracked by `tracker`.
///
/// # Errors
/// When the listener cannot be used, or the share-link key cannot be read
/// or made.
pub(crate) async fn start(
    listener: WebListener,
    parts: Parts,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> std::io::Result<Option<SocketAddr>> {
    let max_connections = listener.max_connections;
    let Some(listener) = listener.take() else {
        return Ok(None);
    };
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let shares = match &parts.store {
        Some(_) => Some(share::Shares::open(&parts.root).await?),
        None => None,
    };
    let web = Web {
        store: parts.store,
        compute: parts.compute,
        auth: parts.auth,
        sessions: session::Sessions::default(),
        shares,
        tls: parts.tls.is_some(),
        shutdown: shutdown.clone(),
    };
    let app = router(web);
    let acceptor = parts.tls;
    tracing::info!(%addr, tls = acceptor.is_some(), "serving the web page");
    let inner_tracker = tracker.clone();
    tracker.spawn(accept_loop(
        listener,
        app,
        acceptor,
        shutdown,
        inner_tracker,
        max_connections,
    ));
    Ok(Some(addr))
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/session", get(session::current))
        .route("/api/signin", post(session::sign_in))
        .route("/api/signout", post(session::sign_out))
        .route("/api/list", get(api::list))
        .route("/api/file", get(api::download))
        .route("/api/upload", get(api::upload_offset).put(api::upload))
        .route("/api/rename", post(api::rename))
        .route("/api/delete", post(api::delete))
        .route("/api/events", get(events::events))
        .route("/api/shares", get(share::list).post(share::create))
        .route("/api/shares/revoke", post(share::revoke))
        .route("/api/compute", post(compute::run))
        .route("/api/jobs", get(compute::jobs))
        .route("/api/jobs/result", get(compute::result))
        .route("/api/jobs/events", get(compute::events))
        .route("/s/{token}", get(share::open))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .with_state(web)
}

/// The peer's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    acceptor: Option<crate::tls::SharedTls>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    max_connections: usize,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "web: accept failed");
                    // Out of descriptors, most likely: let some close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "web: too many connections; closed one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        // The identity as it is now: a reload swaps it for new handshakes.
        let acceptor = acceptor.as_ref().map(crate::tls::SharedTls::http1);
        let watcher = graceful.watcher();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let app = app.clone();
                    async move {
                        use tower_service::Service;
                        let mut app = app;
                        app.call(req.map(Body::new)).await
                    }
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let served = match acceptor {
                None => {
                    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "web: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "web: connection ended");
            }
        });
    }
    // Event streams end with the shutdown token; other requests finish.
    graceful.shutdown().await;
}

/// Response headers every page and API answer carries.
fn hardened(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    hardened(r)
}

async fn index() -> Response<Body> {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

async fn app_js() -> Response<Body> {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn app_css() -> Response<Body> {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

/// The scope the gRPC method `Service/Method` needs, checked on `who`.
pub(crate) fn need(who: &Identity, method: &str) -> ApiResult<()> {
    let path = format!("/distribusync.v1.{method}");
    match crate::auth::required_scope(&path) {
        Some(Some(scope)) if !who.scopes.contains(scope) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token lacks the `{}` scope this needs", scope.name()),
        )),
        _ => Ok(()),
    }
}

impl Web {
    pub(crate) fn store(&self) -> ApiResult<&Store> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "this server does not host files (serve --services)",
            )
        })
    }
}
