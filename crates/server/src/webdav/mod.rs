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
//! folder is the root it sees. Locks are recorded by full path, so every
//! caller sees the same lock, and gRPC writes to a locked path are refused.

mod fs;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dav_server::body::Body;
use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use dav_server::memls::MemLs;
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
use crate::store::{DavLockNote, Store};
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
}

impl Default for WebDavConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// What every request shares.
#[derive(Clone)]
struct Front {
    store: Store,
    auth: Auth,
    handler: Arc<DavHandler>,
    locks: MemLs,
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
    let locks = *MemLs::new();
    let front = Front {
        store,
        auth,
        handler: Arc::new(handler),
        locks,
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
        let view = self.store.view(who.clone()).for_webdav();
        if method.as_str() == "PROPFIND" {
            self.bound_depth(&mut req, &view, path.as_ref()).await?;
        }
        // A PUT's If-Match is checked again, atomically, when it commits.
        let if_revision = (method == Method::PUT)
            .then(|| req.headers().get(header::IF_MATCH))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(revision_of_etag);
        let fs = DavFs { view, if_revision };
        let locks = PrefixLocks {
            inner: self.locks.clone(),
            store: self.store.clone(),
            prefix,
            owner: who.name.to_string(),
        };
        let config = DavConfig::new()
            .filesystem(Box::new(fs))
            .locksystem(Box::new(locks))
            .principal(who.name.to_string());
        Ok(self.handler.handle_with(config, req).await)
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

/// Percent-encodes a path for a URL (everything but unreserved bytes and
/// `/`).
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The one lock table, seen from a caller's root: paths are made full
/// (`/team/a` for a token of folder `team` locking `/a`) on the way in and
/// relative on the way out, so callers of different folders see the same
/// locks; each lock taken is noted in the store for gRPC writes to respect.
#[derive(Debug, Clone)]
struct PrefixLocks {
    inner: MemLs,
    store: Store,
    prefix: Option<RemotePath>,
    owner: String,
}

impl PrefixLocks {
    fn url_prefix(&self) -> String {
        self.prefix
            .as_ref()
            .map(|p| format!("/{}", encode(p.as_str())))
            .unwrap_or_default()
    }

    fn full(&self, path: &DavPath) -> DavPath {
        let pre = self.url_prefix();
        if pre.is_empty() {
            return path.clone();
        }
        DavPath::new(&format!("{pre}{}", path.as_url_string())).unwrap_or_else(|_| path.clone())
    }

    fn relative(&self, mut lock: DavLock) -> DavLock {
        let pre = self.url_prefix();
        if !pre.is_empty() {
            let full = lock.path.as_url_string();
            if let Some(rest) = full.strip_prefix(&pre)
                && let Ok(p) = DavPath::new(if rest.is_empty() { "/" } else { rest })
            {
                lock.path = Box::new(p);
            }
        }
        lock
    }

    /// The store's path of a full lock path (`None`: the server's root).
    fn remote(full: &DavPath) -> Option<RemotePath> {
        remote_path(full.as_bytes(), None).ok().flatten()
    }

    fn note(&self, lock: &DavLock) {
        self.store.note_dav_lock(
            Self::remote(&lock.path),
            DavLockNote {
                token: lock.token.clone(),
                owner: self.owner.clone(),
                deep: lock.deep,
                until: lock.timeout_at,
            },
        );
    }
}

impl DavLockSystem for PrefixLocks {
    fn lock(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&xmltree::Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let full = self.full(path);
        let principal = principal.map(str::to_owned);
        let owner = owner.cloned();
        Box::pin(async move {
            let r = self
                .inner
                .lock(
                    &full,
                    principal.as_deref(),
                    owner.as_ref(),
                    timeout,
                    shared,
                    deep,
                )
                .await;
            if let Ok(lock) = &r {
                self.note(lock);
            }
            r.map(|l| self.relative(l)).map_err(|l| self.relative(l))
        })
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let full = self.full(path);
        let token = token.to_owned();
        Box::pin(async move {
            let r = self.inner.unlock(&full, &token).await;
            if r.is_ok() {
                self.store.drop_dav_lock(None, Some(&token));
            }
            r
        })
    }

    fn refresh(
        &'_ self,
        path: &DavPath,
        token: &str,
        timeout: Option<Duration>,
    ) -> LsFuture<'_, Result<DavLock, ()>> {
        let full = self.full(path);
        let token = token.to_owned();
        Box::pin(async move {
            let r = self.inner.refresh(&full, &token, timeout).await;
            if let Ok(lock) = &r {
                self.note(lock);
            }
            r.map(|l| self.relative(l))
        })
    }

    fn check(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let full = self.full(path);
        let principal = principal.map(str::to_owned);
        let tokens = submitted_tokens.to_vec();
        Box::pin(async move {
            self.inner
                .check(&full, principal.as_deref(), ignore_principal, deep, &tokens)
                .await
                .map_err(|l| self.relative(l))
        })
    }

    fn discover(&'_ self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let full = self.full(path);
        Box::pin(async move {
            self.inner
                .discover(&full)
                .await
                .into_iter()
                .map(|l| self.relative(l))
                .collect()
        })
    }

    fn delete(&'_ self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let full = self.full(path);
        Box::pin(async move {
            let r = self.inner.delete(&full).await;
            self.store.drop_dav_lock(Self::remote(&full).as_ref(), None);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn prefixes_are_percent_encoded() {
        assert_eq!(encode("a b/ü"), "a%20b/%C3%BC");
    }
}
