//! Share links: a read-only link to one file or folder, with an expiry,
//! revocable, that works without signing in.
//!
//! A link is `/s/<id>.<sig>`: `id` is 16 random bytes (unguessable) and
//! `sig` an HMAC-SHA256, under a server key kept in MASTER's `.distribusync`
//! folder, of the id, path and expiry (so a link cannot be altered into
//! another). The table of links is a small JSON file beside it, rewritten
//! (fsynced, renamed into place) on every change, so links survive a
//! restart and a revoked one stays revoked.
//!
//! Invariants: a link is made only by a session that may read the path
//! (scope and folder as for Download); it reads only what lies at or under
//! its path; an expired, revoked or altered link answers 404, the same for
//! each.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use distribusync_core::RemotePath;
use serde::{Deserialize, Serialize};

use super::api::{remote, send_file};
use super::session::{Signed, hex, same};
use super::{ApiError, ApiResult, Web, need};

/// The longest a link may live.
const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Links kept at most (expired ones are dropped first).
const MAX_SHARES: usize = 10_000;
/// Files a folder link's page lists at most.
const SHARE_LIST_MAX: u32 = 5000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Share {
    id: String,
    path: String,
    folder: bool,
    /// Seconds since the epoch.
    expires: u64,
    owner: String,
}

#[derive(Debug)]
struct Inner {
    key: ring::hmac::Key,
    file: PathBuf,
    // A std Mutex: held for map work, never across an await.
    map: Mutex<HashMap<String, Share>>,
}

/// The link table: a cheap clone.
#[derive(Debug, Clone)]
pub(crate) struct Shares(Arc<Inner>);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io(context: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{context}: {e}"))
}

/// Reads the key, making it (0600) if missing.
fn load_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join("web-share.key");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            return Ok(k);
        }
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not a 32-byte key: remove it to make a new one (every share link ends)",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path.display().to_string(), e)),
    }
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!("web-share.key.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&k)?;
    f.sync_all()?;
    // Two servers starting at once: the first key in place wins.
    if std::fs::hard_link(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return load_key(dir);
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(k)
}

impl Shares {
    /// Opens (or starts) the link table of MASTER at `root`.
    ///
    /// # Errors
    /// When the key or the table cannot be read or made.
    pub(crate) async fn open(root: &Path) -> std::io::Result<Shares> {
        let dir = root.join(distribusync_core::RESERVED_DIR);
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let key = load_key(&dir)?;
            let file = dir.join("web-shares.json");
            let list: Vec<Share> = match std::fs::read(&file) {
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", file.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io(&file.display().to_string(), e)),
            };
            let map = list.into_iter().map(|s| (s.id.clone(), s)).collect();
            Ok(Shares(Arc::new(Inner {
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
                file,
                map: Mutex::new(map),
            })))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Share>> {
        self.0.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sign(&self, s: &Share) -> String {
        let msg = format!("{}\n{}\n{}\n{}", s.id, s.path, s.folder, s.expires);
        let tag = ring::hmac::sign(&self.0.key, msg.as_bytes());
        hex(&tag.as_ref()[..16])
    }

    /// The live link named by `token` (`id.sig`).
    fn find(&self, token: &str) -> Option<Share> {
        let (id, sig) = token.split_once('.')?;
        let share = self.lock().get(id).cloned()?;
        (same(sig.as_bytes(), self.sign(&share).as_bytes()) && share.expires > now_secs())
            .then_some(share)
    }

    /// Writes the table (expired links dropped), durably.
    async fn save(&self) -> std::io::Result<()> {
        let now = now_secs();
        let list: Vec<Share> = {
            let mut map = self.lock();
            map.retain(|_, s| s.expires > now);
            map.values().cloned().collect()
        };
        let file = self.0.file.clone();
        tokio::task::spawn_blocking(move || {
            let tmp = file.with_extension(format!("json.{}", std::process::id()));
            let data = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

fn shares(web: &Web) -> ApiResult<&Shares> {
    web.shares.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this server does not host files (serve --services)",
        )
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct Create {
    path: String,
    #[serde(default)]
    folder: bool,
    /// Hours until the link stops working.
    hours: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Link {
    id: String,
    path: String,
    folder: bool,
    expires: u64,
    url: String,
}

fn link(shares: &Shares, s: &Share) -> Link {
    Link {
        id: s.id.clone(),
        path: s.path.clone(),
        folder: s.folder,
        expires: s.expires,
        url: format!("/s/{}.{}", s.id, shares.sign(s)),
    }
}

fn save_error(e: std::io::Error) -> ApiError {
    ApiError::from(crate::ServiceError::io("the share link table", e))
}

/// `POST /api/shares {path, folder, hours}`: a new link.
pub(crate) async fn create(
    State(web): State<Web>,
    s: Signed,
    Json(body): Json<Create>,
) -> ApiResult<Json<Link>> {
    need(&s.0.identity, "Files/Download")?;
    let shares = shares(&web)?;
    let path = remote(&body.path)?;
    let who = &s.0.identity;
    who.confine(&path)?;
    let store = web.store()?;
    if body.folder {
        let page = store
            .view(who.clone())
            .list_page(Some(path.clone()), None, 1)
            .await?;
        if page.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{}: no such folder", path.shown()),
            ));
        }
    } else {
        store.view(who.clone()).stat(&path).await?;
    }
    if !(body.hours.is_finite() && body.hours > 0.0)
        || Duration::from_secs_f64(body.hours * 3600.0) > MAX_LIFETIME
    {
        return Err(ApiError::bad(format!(
            "a link lives more than 0 and at most {} days",
            MAX_LIFETIME.as_secs() / 86400
        )));
    }
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| ApiError::bad(e.to_string()))?;
    let share = Share {
        id: hex(&id),
        path: path.as_str().to_owned(),
        folder: body.folder,
        expires: now_secs() + (body.hours * 3600.0) as u64,
        owner: who.owner.to_string(),
    };
    {
        let mut map = shares.lock();
        if map.len() >= MAX_SHARES {
            let now = now_secs();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SHARES {
                return Err(ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("too many share links ({MAX_SHARES}): revoke some"),
                ));
            }
        }
        map.insert(share.id.clone(), share.clone());
    }
    shares.save().await.map_err(save_error)?;
    tracing::info!(path = %path, folder = body.folder, "web: share link made");
    Ok(Json(link(shares, &share)))
}

/// `GET /api/shares`: this token's live links.
pub(crate) async fn list(State(web): State<Web>, s: Signed) -> ApiResult<Json<Vec<Link>>> {
    let shares = shares(&web)?;
    let now = now_secs();
    let owner = s.0.identity.owner.as_ref();
    let mut mine: Vec<Share> = shares
        .lock()
        .values()
        .filter(|x| x.owner == owner && x.expires > now)
        .cloned()
        .collect();
    mine.sort_by(|a, b| a.path.cmp(&b.path).then(a.expires.cmp(&b.expires)));
    Ok(Json(mine.iter().map(|x| link(shares, x)).collect()))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Revoke {
    id: String,
}

/// `POST /api/shares/revoke {id}`: ends one of this token's links.
pub(crate) async fn revoke(
    State(web): State<Web>,
    s: Signed,
    Json(body): Json<Revoke>,
) -> ApiResult<StatusCode> {
    let shares = shares(&web)?;
    let removed = {
        let mut map = shares.lock();
        match map.get(&body.id) {
            Some(x) if x.owner == s.0.identity.owner.as_ref() => map.remove(&body.id),
            _ => None,
        }
    };
    if removed.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such link"));
    }
    shares.save().await.map_err(save_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(crate) struct OpenQuery {
    /// In a folder link: the file, relative to the folder.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    dl: Option<String>,
}

fn gone() -> Response {
    let mut r = (
        StatusCode::NOT_FOUND,
        "This link does not exist, has expired or was revoked.\n",
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Text made safe inside HTML (element content and quoted attributes).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A size as a person reads it (`20.0 MiB`).
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `s` percent-encoded for a query value.
fn query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /s/<id.sig>[?path=REL][&dl=1]`: the shared file, or a folder's
/// page of files, or one file in it. No session needed.
pub(crate) async fn open(
    State(web): State<Web>,
    UrlPath(token): UrlPath<String>,
    Query(q): Query<OpenQuery>,
    headers: HeaderMap,
) -> Response {
    let (Ok(shares), Ok(store)) = (shares(&web), web.store()) else {
        return gone();
    };
    let Some(share) = shares.find(&token) else {
        return gone();
    };
    let Ok(root) = RemotePath::parse(&share.path) else {
        return gone();
    };
    let attachment = q.dl.is_some();
    if !share.folder {
        return match store.open_read(&root).await {
            Ok(opened) => send_file(opened, &headers, attachment).await,
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    if let Some(rel) = q.path.as_deref().filter(|r| !r.is_empty()) {
        let Ok(path) = remote(&format!("{}/{}", share.path, rel.trim_matches('/'))) else {
            return gone();
        };
        if !path.is_inside(&root) {
            return gone();
        }
        return match store.open_read(&path).await {
            Ok(opened) => send_file(opened, &headers, attachment).await,
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    let files = match store
        .list_page(Some(root.clone()), None, SHARE_LIST_MAX)
        .await
    {
        Ok(f) => f,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut rows = String::new();
    for f in files.iter().filter(|f| f.path.is_inside(&root)) {
        let rel = &f.path.as_str()[share.path.len() + 1..];
        rows.push_str(&format!(
            "<li><a href=\"?path={q}&amp;dl=1\">{name}</a> <span>{size}</span></li>\n",
            q = query_value(rel),
            name = escape(rel),
            size = human(f.size),
        ));
    }
    let title = escape(root.file_name());
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — shared</title><link rel=\"stylesheet\" href=\"/app.css\"></head>\
         <body class=\"share\"><main><h1>{title}</h1><p>Shared folder (read-only), {n} files.</p>\
         <ul class=\"shared\">\n{rows}</ul></main></body></html>\n",
        n = files.len()
    );
    let mut r = Response::new(axum::body::Body::from(page));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; base-uri 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
