//! The files API of the page: list a folder, download (with `Range`),
//! upload in pieces with resume, rename or move, delete.
//!
//! Invariant: every operation goes through the session's
//! [`View`](crate::store::View) and checks the scope of its gRPC twin
//! first, so what a token may do here is exactly what it may do over gRPC.
//! Uploads go through the store's one upload path (staging, size check,
//! fsync, commit); a piece that is not the last is kept as an interrupted
//! upload is, and the next piece resumes from it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use distribusync_core::{ContentHash, RemotePath};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::range::{Span, span};
use super::session::Signed;
use super::{ApiError, ApiResult, Web, need};
use crate::store::{FileRecord, UploadHeader, View};

/// Files read per index page while a folder is listed.
const LIST_PAGE: u32 = 1000;
/// Most files one folder listing reads (deeper trees are cut, saying so).
const LIST_MAX_FILES: usize = 200_000;

/// A path from the page: NFC-normalised (a Mac's browser may send NFD),
/// then validated as every path is.
pub(crate) fn remote(s: &str) -> ApiResult<RemotePath> {
    Ok(RemotePath::normalized(s.trim_matches('/'))?)
}

/// True for a conflict copy's name, as the sync engine makes them
/// (`NAME.conflict-<host>-<yyyymmdd-hhmmss>[-n][.EXT]`).
pub(crate) fn is_conflict_copy(name: &str) -> bool {
    let Some(i) = name.find(".conflict-") else {
        return false;
    };
    let rest = &name[i + ".conflict-".len()..];
    // <host>-<8 digits>-<6 digits>
    rest.as_bytes().windows(16).any(|w| {
        w[0] == b'-'
            && w[1..9].iter().all(u8::is_ascii_digit)
            && w[9] == b'-'
            && w[10..16].iter().all(u8::is_ascii_digit)
    })
}

fn view(web: &Web, s: &Signed) -> ApiResult<View> {
    Ok(web.store()?.view(s.0.identity.clone()))
}

fn millis(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// One row of a listing.
#[derive(Debug, Serialize)]
pub(crate) struct Entry {
    name: String,
    path: String,
    folder: bool,
    size: u64,
    /// Milliseconds since the epoch (the newest file inside, for a folder).
    modified_ms: i64,
    /// The file's revision; for a folder, the number of files inside.
    revision: u64,
    files: u64,
    conflict: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    dir: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Listing {
    dir: String,
    entries: Vec<Entry>,
    truncated: bool,
}

/// Folds the files under `dir` into its immediate children.
pub(crate) fn children(dir: Option<&RemotePath>, files: &[FileRecord]) -> Vec<Entry> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for f in files {
        let rel = match dir {
            Some(d) => match f.path.as_str().strip_prefix(d.as_str()) {
                Some(r) if r.starts_with('/') => &r[1..],
                _ => continue,
            },
            None => f.path.as_str(),
        };
        let (name, inside) = match rel.split_once('/') {
            Some((n, _)) => (n, true),
            None => (rel, false),
        };
        let path = match dir {
            Some(d) => format!("{}/{name}", d.as_str()),
            None => name.to_owned(),
        };
        let key = format!("{}{name}", if inside { "d" } else { "f" });
        let modified_ms = millis(f.modified_ns);
        let e = out.entry(key).or_insert_with(|| Entry {
            name: name.to_owned(),
            path,
            folder: inside,
            size: 0,
            modified_ms,
            revision: if inside { 0 } else { f.revision },
            files: 0,
            conflict: !inside && is_conflict_copy(name),
        });
        e.size += f.size;
        e.files += 1;
        e.modified_ms = e.modified_ms.max(modified_ms);
    }
    out.into_values().collect()
}

/// `GET /api/list?dir=`: the folder's files and subfolders.
pub(crate) async fn list(
    State(web): State<Web>,
    s: Signed,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    need(&s.0.identity, "Files/List")?;
    let view = view(&web, &s)?;
    let dir = if q.dir.trim_matches('/').is_empty() {
        None
    } else {
        Some(remote(&q.dir)?)
    };
    let mut files = Vec::new();
    let mut truncated = false;
    if let Some(prefix) = view.list_prefix(dir.clone()) {
        let mut after = None;
        loop {
            let page = view
                .list_page(prefix.clone(), after.clone(), LIST_PAGE)
                .await?;
            let last = page.len() < LIST_PAGE as usize;
            after = page.last().map(|f| f.path.as_str().to_owned());
            files.extend(page);
            if files.len() >= LIST_MAX_FILES {
                truncated = true;
                break;
            }
            if last || after.is_none() {
                break;
            }
        }
    }
    let listing = Listing {
        dir: dir
            .as_ref()
            .map(|d| d.as_str().to_owned())
            .unwrap_or_default(),
        entries: children(dir.as_ref(), &files),
        truncated,
    };
    let mut r = Json(listing).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub(crate) struct FileQuery {
    path: String,
    /// Set: `Content-Disposition: attachment` (save), else inline (view).
    #[serde(default)]
    dl: Option<String>,
}

/// `GET /api/file?path=&dl=1`: the file, streamed, with `Range`.
pub(crate) async fn download(
    State(web): State<Web>,
    s: Signed,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    need(&s.0.identity, "Files/Download")?;
    let view = view(&web, &s)?;
    let path = remote(&q.path)?;
    let opened = view.open_read(&path).await?;
    Ok(send_file(opened, &headers, q.dl.is_some()).await)
}

/// A content type from the name, for viewing in the browser; anything that
/// could run script here is sent as plain text (and all of it sandboxed).
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "md" | "log" | "csv" | "json" | "html" | "htm" | "svg" | "xml" | "js") => {
            "text/plain; charset=utf-8"
        }
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("pdf") => "application/pdf",
        Some("mp4" | "m4v") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        _ => "application/octet-stream",
    }
}

/// `Content-Disposition` for `name`: RFC 6266 with the UTF-8 name
/// percent-encoded and an ASCII stand-in for old clients.
fn disposition(name: &str, attachment: bool) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if attachment { "attachment" } else { "inline" };
    HeaderValue::from_str(&format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Streams an opened file, honouring a single `Range`.
pub(crate) async fn send_file(
    (record, file): (FileRecord, std::fs::File),
    headers: &HeaderMap,
    attachment: bool,
) -> Response {
    let size = record.size;
    let etag = format!("\"{}\"", record.hash.to_hex());
    // A range applies only to the version it was asked of.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let (status, start, len) = match span(range, size) {
        Span::Whole => (StatusCode::OK, 0, size),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    if start > 0
        && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
    {
        return ApiError::from(crate::ServiceError::io("download", e)).into_response();
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(len),
        256 * 1024,
    ));
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    let name = record.path.file_name();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_DISPOSITION, disposition(name, attachment));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self'; media-src 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    r
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    path: String,
    size: u64,
    /// The file's modified time (ms since the epoch): with path and size,
    /// what names an interrupted upload for resuming.
    modified_ms: i64,
    #[serde(default)]
    offset: u64,
}

fn modified(ms: i64) -> SystemTime {
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Offset {
    offset: u64,
}

/// `GET /api/upload?path=&size=&modified_ms=`: where an interrupted upload
/// of this file resumes (0: from the start).
pub(crate) async fn upload_offset(
    State(web): State<Web>,
    s: Signed,
    Query(q): Query<UploadQuery>,
) -> ApiResult<Json<Offset>> {
    need(&s.0.identity, "Files/UploadOffset")?;
    let view = view(&web, &s)?;
    let offset = view
        .upload_offset(remote(&q.path)?, q.size, modified(q.modified_ms))
        .await?;
    Ok(Json(Offset { offset }))
}

/// Bytes an unprivileged writer may still put on the disk holding `root`
/// (`None` when that cannot be read: the write itself will tell).
async fn free_space(root: &std::path::Path) -> Option<u64> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || {
        let s = rustix::fs::statvfs(&root).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    })
    .await
    .ok()
    .flatten()
}

#[derive(Debug, Serialize)]
pub(crate) struct Uploaded {
    /// Bytes the server holds of the file now.
    received: u64,
    /// The file is installed (the last piece).
    done: bool,
    revision: Option<u64>,
}

/// `PUT /api/upload?path=&size=&modified_ms=&offset=`: one piece of a
/// file, from `offset`. The last piece installs it; an earlier one is
/// kept for the next.
pub(crate) async fn upload(
    State(web): State<Web>,
    s: Signed,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<Json<Uploaded>> {
    need(&s.0.identity, "Files/Upload")?;
    let view = view(&web, &s)?;
    let header = UploadHeader {
        path: remote(&q.path)?,
        size: q.size,
        // Replaced by the data's own hash (see `Upload::unannounced`).
        hash: ContentHash::of(b""),
        modified: modified(q.modified_ms),
        if_revision: None,
        offset: q.offset,
        resumable: true,
        locks: Default::default(),
    };
    let missing = q.size.saturating_sub(q.offset);
    if let Some(free) = free_space(web.store()?.root()).await
        && missing > free
    {
        // Refused before a byte is staged: nothing to leave behind.
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "{}: {missing} bytes do not fit: the server's disk has {free} bytes free",
                header.path.shown()
            ),
        ));
    }
    let mut upload = view.begin_upload(header).await?;
    upload.unannounced(true);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        // A broken connection drops the upload: what arrived is kept for
        // resuming (as a broken gRPC stream's is).
        let chunk = chunk.map_err(|e| ApiError::bad(format!("upload interrupted: {e}")))?;
        upload.write(chunk.to_vec()).await?;
    }
    if upload.received() == upload.size() {
        let record = upload.finish().await?;
        tracing::info!(path = %record.path, size = record.size, "web: uploaded");
        return Ok(Json(Uploaded {
            received: record.size,
            done: true,
            revision: Some(record.revision),
        }));
    }
    let received = upload.pause().await?;
    Ok(Json(Uploaded {
        received,
        done: false,
        revision: None,
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Rename {
    from: String,
    to: String,
}

/// `POST /api/rename {from, to}`: renames or moves a file or a folder;
/// never overwrites.
pub(crate) async fn rename(
    State(web): State<Web>,
    s: Signed,
    Json(body): Json<Rename>,
) -> ApiResult<Json<serde_json::Value>> {
    need(&s.0.identity, "Files/Rename")?;
    let view = view(&web, &s)?;
    let (from, to) = (remote(&body.from)?, remote(&body.to)?);
    let (seq, moved) = view.rename(&from, &to, false, None).await?;
    Ok(Json(serde_json::json!({ "seq": seq, "moved": moved })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Delete {
    path: String,
    /// Delete every file under this folder.
    #[serde(default)]
    folder: bool,
}

/// `POST /api/delete {path, folder}`: deletes a file, or every file in a
/// folder (the store deletes files one by one).
pub(crate) async fn delete(
    State(web): State<Web>,
    s: Signed,
    Json(body): Json<Delete>,
) -> ApiResult<Json<serde_json::Value>> {
    need(&s.0.identity, "Files/Delete")?;
    let view = view(&web, &s)?;
    let path = remote(&body.path)?;
    if !body.folder {
        view.delete(&path, None).await?;
        return Ok(Json(serde_json::json!({ "deleted": 1 })));
    }
    view.who().confine(&path)?;
    let mut deleted = 0u64;
    let mut after = None;
    loop {
        let page = view
            .list_page(Some(path.clone()), after.clone(), LIST_PAGE)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.path.as_str().to_owned());
        for f in page {
            match view.delete(&f.path, None).await {
                Ok(_) => deleted += 1,
                // Deleted meanwhile by someone else: fine.
                Err(crate::ServiceError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if deleted == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{}: no such folder", path.shown()),
        ));
    }
    Ok(Json(serde_json::json!({ "deleted": deleted })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_copies_are_told_by_their_marker() {
        assert!(is_conflict_copy("a.conflict-host-20240101-120000.txt"));
        assert!(is_conflict_copy("a.conflict-my-host-20240101-120000-2"));
        assert!(!is_conflict_copy("a.conflict-notes.txt"));
        assert!(!is_conflict_copy("plain.txt"));
    }

    #[test]
    fn a_listing_folds_files_into_children() {
        let rec = |p: &str, size| FileRecord {
            path: RemotePath::parse(p).expect("valid"),
            size,
            hash: ContentHash::of(b""),
            revision: 3,
            modified_ns: 5_000_000,
        };
        let files = [rec("a/x", 1), rec("a/y/z", 2), rec("a/y/w", 3), rec("b", 4)];
        let top = children(None, &files);
        assert_eq!(top.len(), 2);
        assert!(top[0].folder && top[0].name == "a" && top[0].size == 6 && top[0].files == 3);
        assert!(!top[1].folder && top[1].name == "b" && top[1].revision == 3);
        let a = children(Some(&RemotePath::parse("a").expect("valid")), &files);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].name.as_str(), a[0].folder), ("y", true));
        assert_eq!((a[1].path.as_str(), a[1].folder), ("a/x", false));
    }
}
