//! Sign-in sessions: a token is exchanged once for a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS); the page never
//! holds the token itself.
//!
//! Invariants:
//! - A session holds the [`Identity`] its token gave; it ends when the token
//!   is revoked or expires (the identity is cancelled), on sign-out, or after
//!   [`SESSION_LIFETIME`]. Sessions live in memory: a restart signs
//!   everyone out.
//! - On loopback with no token required (as the CLI), the page gets a
//!   session as [`Identity::local`] without signing in; such a session ends
//!   as soon as tokens become required.
//! - Every request that changes something must carry the session's CSRF
//!   token in [`CSRF_HEADER`] and, if the browser sends `Origin`, come from
//!   this origin; see [`Session::check_csrf`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, Peer, Web};
use crate::auth::{Identity, Refusal};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "ds_session";
/// The header carrying the CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A session's longest life.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Session {
    pub identity: Identity,
    pub csrf: String,
    expires: Instant,
}

/// The live sessions by id: a cheap clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions {
    // A std Mutex: held for a map lookup, never across an await.
    map: Arc<Mutex<HashMap<String, Arc<Session>>>>,
}

/// 32 random bytes as hex.
pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 32];
    // The OS generator failing is not something a request can recover from.
    getrandom::fill(&mut b).expect("the OS random generator works");
    hex(&b)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares in time independent of where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(&self, identity: Identity) -> (String, Arc<Session>) {
        let id = random_hex();
        let s = Arc::new(Session {
            identity,
            csrf: random_hex(),
            expires: Instant::now() + SESSION_LIFETIME,
        });
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now && !s.identity.is_revoked());
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.lock();
        let s = map.get(id)?.clone();
        if s.expires <= Instant::now() || s.identity.is_revoked() {
            map.remove(id);
            return None;
        }
        Some(s)
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The session cookie's value in `headers`.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn set_cookie(web: &Web, id: &str, max_age: u64) -> HeaderValue {
    let secure = if web.tls { "; Secure" } else { "" };
    let v = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&v).expect("hex and fixed text make a valid header")
}

/// Refuses a request whose `Origin` (or `Sec-Fetch-Site`) says it comes
/// from another site or origin.
pub(crate) fn check_origin(web: &Web, headers: &HeaderMap) -> ApiResult<()> {
    let refused = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "refused: this request came from another site (cross-site request forgery)",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(refused());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(refused)?;
        let scheme = if web.tls { "https" } else { "http" };
        let expected = format!("{scheme}://{host}");
        if origin.to_str().ok() != Some(expected.as_str()) {
            return Err(refused());
        }
    }
    Ok(())
}

/// The session of a request, extracted by handlers that need one; a
/// state-changing method is checked against CSRF here, before any body is
/// read.
#[derive(Debug)]
pub(crate) struct Signed(pub Arc<Session>);

impl FromRequestParts<Web> for Signed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> ApiResult<Signed> {
        let unsigned = || ApiError::new(StatusCode::UNAUTHORIZED, "signed out: sign in again");
        let session = cookie(&parts.headers)
            .and_then(|id| web.sessions.get(id))
            .ok_or_else(unsigned)?;
        // A loopback session without a token ends when tokens are required.
        if session.identity.owner.as_ref() == "local" && web.auth.required() {
            return Err(unsigned());
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            check_origin(web, &parts.headers)?;
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !same(sent, session.csrf.as_bytes()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "refused: missing or wrong CSRF token (cross-site request forgery)",
                ));
            }
        }
        Ok(Signed(session))
    }
}

/// What the page learns about its session.
#[derive(Debug, Serialize)]
pub(crate) struct SessionInfo {
    signed_in: bool,
    /// Tokens are required here (else the page opens as on loopback).
    auth_required: bool,
    name: String,
    scopes: Vec<&'static str>,
    prefix: String,
    csrf: String,
}

fn info(web: &Web, s: &Session) -> SessionInfo {
    SessionInfo {
        signed_in: true,
        auth_required: web.auth.required(),
        name: s.identity.name.to_string(),
        scopes: s.identity.scopes.iter().map(|s| s.name()).collect(),
        prefix: s
            .identity
            .prefix
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        csrf: s.csrf.clone(),
    }
}

/// `GET /api/session`: the current session; on loopback without tokens a
/// new local one.
pub(crate) async fn current(State(web): State<Web>, headers: HeaderMap) -> Response {
    let live = cookie(&headers)
        .and_then(|id| web.sessions.get(id))
        .filter(|s| !(s.identity.owner.as_ref() == "local" && web.auth.required()));
    if let Some(s) = live {
        return no_store(Json(info(&web, &s)).into_response());
    }
    if !web.auth.required() {
        let (id, s) = web.sessions.create(Identity::local());
        let mut r = Json(info(&web, &s)).into_response();
        r.headers_mut().insert(
            header::SET_COOKIE,
            set_cookie(&web, &id, SESSION_LIFETIME.as_secs()),
        );
        return no_store(r);
    }
    no_store(Json(serde_json::json!({ "signed_in": false, "auth_required": true })).into_response())
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignIn {
    token: String,
}

/// `POST /api/signin {token}`: checks the token as gRPC does (the same
/// cache, the same failure limit per address) and opens a session.
pub(crate) async fn sign_in(
    State(web): State<Web>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Json(body): Json<SignIn>,
) -> ApiResult<Response> {
    check_origin(&web, &headers)?;
    let peer: Option<SocketAddr> = peer.map(|p| p.0.0);
    let bearer = format!("Bearer {}", body.token.trim());
    let identity = web
        .auth
        .authenticate(Some(bearer.as_bytes()), peer.map(|p| p.ip()))
        .map_err(|r| match r {
            Refusal::Unauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid, expired or revoked token",
            ),
            Refusal::Limited => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed sign-ins from this address: wait a little",
            ),
        })?;
    if let Some(old) = cookie(&headers) {
        web.sessions.remove(old);
    }
    let (id, s) = web.sessions.create(identity);
    tracing::info!(token = %s.identity.name, "web: signed in");
    let mut r = Json(info(&web, &s)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&web, &id, SESSION_LIFETIME.as_secs()),
    );
    Ok(no_store(r))
}

/// `POST /api/signout`: ends the session and clears the cookie.
pub(crate) async fn sign_out(
    State(web): State<Web>,
    _s: Signed,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(id) = cookie(&headers) {
        web.sessions.remove(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&web, "", 0));
    Ok(r)
}
