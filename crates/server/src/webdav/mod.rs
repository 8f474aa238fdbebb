//! WebDAV (RFC 4918, classes 1 and 2) over the same store, accounts and
//! guarantees as the gRPC Files service: `serve --webdav-listen ADDR`.
//!
//! The protocol is `dav-server`'s; this module is the front that decides
//! who may do what before a request reaches it, and [`fs::DavFs`] connects
//! it to the store through the caller's [`View`].
//!
//! Invariants: a request is authenticated like a gRPC call (HTTP Basic,
//! the password is a token, the user name is ignored; open on loopback
//! while no token exists, as the CLI); it needs the `read` scope, and a
//! method that changes anything needs `write` (403 naming the scope). Every
//! path in the URL and in `Destination` is checked by the store's path
//! rules before anything runs: a hostile one is 400 naming it. A token's
//! folder is the root it sees. Locks live in the store's one table
//! ([`locks::LockFront`]), so every caller sees the same lock and every
//! write, whoever sends it, obeys it when it commits. A refusal names what
//! it refuses in a short text body ([`Said`]): `dav-server` answers its
//! errors with none. A partial PUT (`Content-Range`) is refused 400 (RFC
//! 9110 §14.5): the store installs only whole versions.

mod fs;
mod locks;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dav_server::body::{Body, BodyType};
use dav_server::davpath::DavPath;
use dav_server::{DavConfig, DavHandler};
use distribusync_core::RemotePath;
use distribusync_core::token::Scope;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Identity, Refusal};
use crate::store::{LockLimits, Store};
use fs::{DavFs, remote_path, revision_of_etag};

/// Most entries a PROPFIND with `Depth: infinity` may cover; beyond it the
/// server answers 403 `propfind-finite-depth` (RFC 4918 §9.1) and the
/// client walks the tree with `Depth: 1`.
pub const DEPTH_INFINITY_MAX: u32 = 10_000;

/// Bytes read from a file per step of a GET.
const READ_STEP: usize = 1 << 20;

/// Settings of the WebDAV listener.
#[derive(Debug, Clone)]
pub struct WebDavConfig {
    /// The request head must arrive within this.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most WebDAV locks alive at once on the server; past it a LOCK is
    /// 503 naming the limit.
    pub max_locks: usize,
    /// Most WebDAV locks alive at once per token name.
    pub max_locks_per_token: usize,
    /// The longest a lock lives without a refresh (what a LOCK without
    /// Timeout, or with `Infinite`, gets).
    pub max_lock_lifetime: Duration,
}

impl Default for WebDavConfig {
    fn default() -> Self {
        let locks = LockLimits::default();
        Self {
            header_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_locks: locks.max_locks,
            max_locks_per_token: locks.max_per_token,
            max_lock_lifetime: locks.max_lifetime,
        }
    }
}

impl WebDavConfig {
    fn lock_limits(&self) -> LockLimits {
        LockLimits {
            max_locks: self.max_locks.max(1),
            max_per_token: self.max_locks_per_token.max(1),
            max_lifetime: self.max_lock_lifetime.max(Duration::from_secs(1)),
        }
    }
}

/// What the file system and the lock table tell each other and the
/// front while `dav-server` runs one request: why it was refused (its own
/// error answers carry no body; [`Said::explain`] gives them this text),
/// and the lock tokens it was granted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Said(Arc<std::sync::Mutex<Told>>);

#[derive(Debug, Default)]
struct Told {
    reason: Option<Reason>,
    granted: Vec<String>,
}

#[derive(Debug, Clone)]
struct Reason {
    /// Set by the lock table, whose refusals `dav-server` answers as 423:
    /// the status to answer instead (423 itself, or 503 for a bound).
    status: Option<StatusCode>,
    text: String,
}

impl Said {
    // A std Mutex: set and read without an await in between.
    fn told(&self) -> std::sync::MutexGuard<'_, Told> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records why the request is being refused (the last word wins).
    pub(crate) fn say(&self, status: Option<StatusCode>, text: String) {
        self.told().reason = Some(Reason { status, text });
    }

    /// Records a lock granted to this request.
    pub(crate) fn granted_lock(&self, token: String) {
        self.told().granted.push(token);
    }

    /// The lock tokens granted to this request.
    pub(crate) fn granted(&self) -> Vec<String> {
        self.told().granted.clone()
    }

    /// `res`, with the reason as its body if it is a bodiless refusal.
    fn explain(&self, res: Response<Body>) -> Response<Body> {
        let status = res.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return res;
        }
        let Some(reason) = self.told().reason.take() else {
            return res;
        };
        let status = match reason.status {
            Some(told) if status == StatusCode::LOCKED => told,
            Some(_) => return res,
            None if matches!(res.body().inner, BodyType::Empty) => status,
            None => return res,
        };
        let mut out = answer(status, reason.text);
        if let Some(close) = res.headers().get(header::CONNECTION) {
            out.headers_mut().insert(header::CONNECTION, close.clone());
        }
        *out
    }
}

/// What every request shares.
#[derive(Clone)]
struct Front {
    store: Store,
    auth: Auth,
    handler: Arc<DavHandler>,
    limits: LockLimits,
}

/// Serves WebDAV on `listener` until `shutdown` is cancelled; then stops
/// accepting and lets each connection finish its request.
pub(crate) async fn run(
    listener: TcpListener,
    store: Store,
    auth: Auth,
    tls: Option<crate::tls::SharedTls>,
    config: WebDavConfig,
    shutdown: CancellationToken,
) {
    let handler = DavHandler::builder()
        .read_buf_size(READ_STEP)
        .autoindex(false)
        .build_handler();
    let front = Front {
        store,
        auth,
        handler: Arc::new(handler),
        limits: config.lock_limits(),
    };
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tracing::info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "serving WebDAV");
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webdav accept failed");
                    // Out of descriptors: give others a moment to close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "webdav: too many connections; closed one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The identity as it is now: a reload swaps it for new handshakes.
        let tls = tls.as_ref().map(crate::tls::SharedTls::http1);
        let (front, shutdown, config) = (front.clone(), shutdown.clone(), config.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, peer, front, config, shutdown).await,
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(config.header_timeout, acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(s)) => connection(s, peer, front, config, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "webdav TLS handshake"),
                        Err(_) => tracing::debug!(%peer, "webdav TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    front: Front,
    config: WebDavConfig,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let front = front.clone();
        async move { Ok::<_, Infallible>(front.handle(req, peer.ip()).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "webdav connection");
        },
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// An answer given instead of running the request (boxed: a response is
/// large, and an error path should not make every result that large).
type Refused = Box<Response<Body>>;

/// A plain-text answer.
fn answer(status: StatusCode, text: impl Into<String>) -> Refused {
    let mut text = text.into();
    text.push('\n');
    let mut res = Response::new(Body::from(text));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Box::new(res)
}

/// Methods that change nothing.
fn reads_only(m: &Method) -> bool {
    matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS" | "PROPFIND")
}

/// The lifetime a LOCK's `Timeout` header asks for (RFC 4918 §10.7): its
/// first value, `Second-N`; `None` for `Infinite`, no header, or one not
/// understood (the lock table grants its longest then).
fn asked_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("timeout")?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    let secs = first
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("second-"))
        .and(first.get(7..))?;
    secs.parse::<u64>().ok().map(Duration::from_secs)
}

/// The lock tokens an `If` header submits (RFC 4918 §10.4): every
/// `<urn:uuid:…>` (or `opaquelocktoken:`) in it; resource tags and ETags
/// are not tokens. `dav-server` evaluates the conditions themselves; the
/// store needs only which locks the request may pass when it commits.
fn submitted_tokens(headers: &http::HeaderMap) -> Vec<String> {
    let mut tokens = Vec::new();
    for value in headers.get_all("if") {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let Some(len) = rest[open..].find('>') else {
                break;
            };
            let item = &rest[open + 1..open + len];
            if item.starts_with("urn:uuid:") || item.starts_with("opaquelocktoken:") {
                tokens.push(item.to_owned());
            }
            rest = &rest[open + len + 1..];
        }
    }
    tokens
}

/// The token in an `Authorization` header: the password of Basic (the
/// user name is ignored: the token alone says who it is), or a Bearer.
fn token_of(value: &[u8]) -> Option<String> {
    use base64::Engine;
    let value = std::str::from_utf8(value).ok()?;
    if let Some(b) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        return Some(decoded.split_once(':')?.1.to_owned());
    }
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(|t| t.trim().to_owned())
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").finish_non_exhaustive()
    }
}

impl Front {
    async fn handle(&self, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let who = match self.identify(&req, peer) {
            Ok(who) => who,
            Err(res) => return *res,
        };
        match self.admit(req, who).await {
            Ok(res) => res,
            Err(res) => *res,
        }
    }

    fn identify(&self, req: &Request<Incoming>, peer: IpAddr) -> Result<Identity, Refused> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| token_of(v.as_bytes()))
            .map(|t| format!("Bearer {t}"));
        match self
            .auth
            .authenticate(bearer.as_deref().map(str::as_bytes), Some(peer))
        {
            Ok(who) => Ok(who),
            Err(Refusal::Limited) => Err(answer(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; wait a few seconds",
            )),
            Err(Refusal::Unauthenticated) => {
                let mut res = answer(
                    StatusCode::UNAUTHORIZED,
                    "a token is required: log in with any user name and a token \
                     (`distribusync token create`) as the password",
                );
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"DistribuSync\", charset=\"UTF-8\""),
                );
                Err(res)
            }
        }
    }

    /// Checks scope and paths, then hands the request to `dav-server`.
    async fn admit(
        &self,
        mut req: Request<Incoming>,
        who: Identity,
    ) -> Result<Response<Body>, Refused> {
        let method = req.method().clone();
        let needed = if reads_only(&method) {
            Scope::Read
        } else {
            Scope::Write
        };
        for scope in [Scope::Read, needed] {
            if !who.scopes.contains(scope) {
                return Err(answer(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{method} needs a token with the `{}` scope; token {} lacks it",
                        scope.name(),
                        who.name
                    ),
                ));
            }
        }
        let prefix = who.prefix.clone();
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            answer(StatusCode::BAD_REQUEST, format!("{what}: {e}"))
        };
        // Decoded and with `.` and `..` resolved, as dav-server will see it;
        // a `..` above the root is refused here.
        let url = DavPath::new(req.uri().path()).map_err(|_| {
            answer(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: not a valid path",
                    distribusync_core::echo(req.uri().path())
                ),
            )
        })?;
        let path = remote_path(url.as_bytes(), prefix.as_ref()).map_err(|e| bad("path", &e))?;
        if let Some(dest) = req.headers().get("destination") {
            let dest = dest
                .to_str()
                .ok()
                .and_then(|d| d.parse::<http::Uri>().ok())
                .and_then(|u| DavPath::new(u.path()).ok())
                .ok_or_else(|| answer(StatusCode::BAD_REQUEST, "Destination: not a valid URL"))?;
            remote_path(dest.as_bytes(), prefix.as_ref()).map_err(|e| bad("Destination", &e))?;
        }
        if method == Method::PUT && req.headers().contains_key(header::CONTENT_RANGE) {
            return Err(answer(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: a PUT with Content-Range (a partial update) is not supported; \
                     send the whole file",
                    path.as_ref()
                        .map_or_else(|| "/".to_owned(), |p| p.shown().into_owned())
                ),
            ));
        }
        let view = self
            .store
            .view(who.clone())
            .with_lock_tokens(submitted_tokens(req.headers()));
        if method.as_str() == "PROPFIND" {
            self.bound_depth(&mut req, &view, path.as_ref()).await?;
        }
        // A PUT's If-Match is checked again, atomically, when it commits.
        let if_revision = (method == Method::PUT)
            .then(|| req.headers().get(header::IF_MATCH))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(revision_of_etag);
        // The lock table decides a lock's lifetime from what was asked:
        // `dav-server` would cap an exclusive lock at 600 s and leave one
        // without Timeout unbounded, so it is not told.
        let asked = (method.as_str() == "LOCK")
            .then(|| {
                let asked = asked_timeout(req.headers());
                req.headers_mut().remove("timeout");
                asked
            })
            .flatten();
        let said = Said::default();
        let fs = DavFs {
            view,
            if_revision,
            said: said.clone(),
            lock_request: method.as_str() == "LOCK",
            child_props: (method.as_str() == "PROPFIND").then(Default::default),
        };
        let locks = locks::LockFront {
            store: self.store.clone(),
            prefix,
            limits: self.limits,
            asked,
            said: said.clone(),
        };
        let config = DavConfig::new()
            .filesystem(Box::new(fs))
            .locksystem(Box::new(locks))
            .principal(who.name.to_string());
        Ok(said.explain(self.handler.handle_with(config, req).await))
    }

    /// Lets a PROPFIND with `Depth: infinity` through when the tree under
    /// the path holds at most [`DEPTH_INFINITY_MAX`] files; else 403
    /// `propfind-finite-depth`.
    async fn bound_depth(
        &self,
        req: &mut Request<Incoming>,
        view: &crate::store::View,
        path: Option<&RemotePath>,
    ) -> Result<(), Refused> {
        let infinite = req
            .headers()
            .get("depth")
            .is_some_and(|d| d.as_bytes().eq_ignore_ascii_case(b"infinity"));
        if !infinite {
            return Ok(());
        }
        let Some(prefix) = view.list_prefix(path.cloned()) else {
            return Ok(());
        };
        let page = view
            .list_page(prefix, None, DEPTH_INFINITY_MAX + 1)
            .await
            .map_err(|e| answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if page.len() > DEPTH_INFINITY_MAX as usize {
            let mut res = Response::new(Body::from(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
                 <D:error xmlns:D=\"DAV:\"><D:propfind-finite-depth/></D:error>\n",
            ));
            *res.status_mut() = StatusCode::FORBIDDEN;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=utf-8"),
            );
            return Err(Box::new(res));
        }
        // dav-server answers Depth: infinity only for requests marked as
        // its test suite's; within the bound, mark this one so.
        req.headers_mut().insert(
            "x-litmus",
            HeaderValue::from_static("depth-infinity-bounded"),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_asks_for_the_first_timeout_and_infinite_is_none() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("timeout", HeaderValue::from_static(v));
            asked_timeout(&h)
        };
        assert_eq!(with("Second-60"), Some(Duration::from_secs(60)));
        assert_eq!(with("second-5, Infinite"), Some(Duration::from_secs(5)));
        assert_eq!(with("Infinite, Second-4100000000"), None);
        assert_eq!(with("Second-x"), None);
        assert_eq!(asked_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn lock_tokens_are_read_from_the_if_header_and_nothing_else() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "if",
            HeaderValue::from_static(
                "<http://h/a> (<urn:uuid:1-2> [\"e-1\"]) (Not <opaquelocktoken:x> <DAV:no-lock>)",
            ),
        );
        assert_eq!(submitted_tokens(&h), ["urn:uuid:1-2", "opaquelocktoken:x"]);
        assert!(submitted_tokens(&http::HeaderMap::new()).is_empty());
    }

    #[test]
    fn the_token_is_the_basic_password_or_a_bearer() {
        // "anyone:ds_secret"
        assert_eq!(
            token_of(b"Basic YW55b25lOmRzX3NlY3JldA==").as_deref(),
            Some("ds_secret")
        );
        assert_eq!(token_of(b"Bearer ds_x").as_deref(), Some("ds_x"));
        assert_eq!(token_of(b"Basic !!!"), None);
        assert_eq!(token_of(b"Digest x"), None);
    }
}
