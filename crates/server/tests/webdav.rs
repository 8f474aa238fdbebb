//! WebDAV through a real server on 127.0.0.1:0 and a real HTTP/1.1 client
//! (hyper), beside the gRPC client: the two see one store.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use distribusync_client::FilesClient;
use distribusync_core::RemotePath;
use distribusync_server::auth::{NewToken, TokenStore};
use distribusync_server::{AuthConfig, ServerConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(30);

struct DavServer {
    grpc: String,
    dav: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DavServer {
    async fn start(root: &Path) -> Self {
        Self::start_with(root, |_| {}).await
    }

    async fn start_with(root: &Path, tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::new(root);
        tune(&mut config);
        config.auth = AuthConfig {
            failure_burst: 100_000,
            ..AuthConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dav = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = format!("http://{}", listener.local_addr().unwrap());
        let dav_addr = dav.local_addr().unwrap();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            distribusync_server::serve_with_webdav(listener, Some(dav), config, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            grpc,
            dav: dav_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.dav)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(T, self.task.take().unwrap())
            .await
            .expect("server stops in time")
            .expect("server task");
    }
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh connection.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let res = tokio::time::timeout(T, sender.send_request(req))
        .await
        .expect("answers in time")
        .expect("answers");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Writes `request` as it is (optionally ending the sending side) and
/// returns what the server answers, up to the end of its head.
async fn raw(addr: std::net::SocketAddr, request: &str, end: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream.write_all(request.as_bytes()).await.expect("sends");
    if end {
        stream.shutdown().await.expect("shutdown");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .expect("answers in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn basic(token: &str) -> String {
    let raw = format!("anyone:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn make(root: &Path, name: &str, scopes: &str, prefix: Option<&str>) -> String {
    let store = TokenStore::open(root).expect("token table");
    let new = NewToken::parse(name, scopes, prefix, None, SystemTime::now()).expect("valid");
    store
        .create(&new, SystemTime::now())
        .expect("create")
        .0
        .reveal()
        .to_owned()
}

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

#[tokio::test]
async fn a_put_reaches_grpc_and_etags_follow_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    let grpc = FilesClient::connect(s.grpc.as_str()).await.unwrap();

    let put = send(s.dav, "PUT", "/notes%20a.txt", &[], b"hello webdav").await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let etag = put.header("etag").expect("etag").to_owned();

    // gRPC sees the same file, hash and all.
    let info = grpc.stat(&p("notes a.txt")).await.unwrap();
    assert_eq!(info.size, 12);
    assert!(etag.contains(&format!("-{}", info.revision)), "{etag}");
    assert_eq!(
        common::get_bytes(&grpc, dir.path(), "notes a.txt").await,
        b"hello webdav"
    );

    // A range.
    let part = send(
        s.dav,
        "GET",
        "/notes%20a.txt",
        &[("range", "bytes=6-11")],
        b"",
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, b"webdav");

    // A change made over gRPC shows as a new ETag.
    common::put_bytes(&grpc, dir.path(), "notes a.txt", b"changed by sync").await;
    let head = send(s.dav, "HEAD", "/notes%20a.txt", &[], b"").await;
    let new_tag = head.header("etag").expect("etag").to_owned();
    assert_ne!(new_tag, etag);

    // If-Match with the old ETag is refused and changes nothing.
    let stale = send(
        s.dav,
        "PUT",
        "/notes%20a.txt",
        &[("if-match", &etag)],
        b"lost",
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        common::get_bytes(&grpc, dir.path(), "notes a.txt").await,
        b"changed by sync"
    );
    let fresh = send(
        s.dav,
        "PUT",
        "/notes%20a.txt",
        &[("if-match", &new_tag)],
        b"kept",
    )
    .await;
    assert_eq!(fresh.status, StatusCode::NO_CONTENT, "{}", fresh.text());
    // If-None-Match: * refuses to replace.
    let none = send(
        s.dav,
        "PUT",
        "/notes%20a.txt",
        &[("if-none-match", "*")],
        b"x",
    )
    .await;
    assert_eq!(none.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        common::get_bytes(&grpc, dir.path(), "notes a.txt").await,
        b"kept"
    );

    // A body of several write steps, not a multiple of any of them.
    let big: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
    let put = send(s.dav, "PUT", "/big.bin", &[], &big).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let info = grpc.stat(&p("big.bin")).await.unwrap();
    assert_eq!(info.hash, distribusync_core::ContentHash::of(&big));
    assert_eq!(send(s.dav, "GET", "/big.bin", &[], b"").await.body, big);
    s.stop().await;
}

#[tokio::test]
async fn collections_copy_move_and_delete_are_changes_sync_clients_see() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    let grpc = FilesClient::connect(s.grpc.as_str()).await.unwrap();

    // An empty collection lives for WebDAV, though no file is in it.
    assert_eq!(
        send(s.dav, "MKCOL", "/docs", &[], b"").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        send(s.dav, "MKCOL", "/docs", &[], b"").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        send(s.dav, "MKCOL", "/none/deeper", &[], b"").await.status,
        StatusCode::CONFLICT
    );
    let list = send(s.dav, "PROPFIND", "/", &[("depth", "1")], b"").await;
    assert_eq!(list.status, StatusCode::MULTI_STATUS);
    assert!(
        list.text().contains("<D:href>/docs/</D:href>"),
        "{}",
        list.text()
    );

    assert_eq!(
        send(s.dav, "PUT", "/docs/a.txt", &[], b"A").await.status,
        StatusCode::CREATED
    );
    // Depth: infinity, within its bound, lists the whole tree.
    let all = send(s.dav, "PROPFIND", "/", &[("depth", "infinity")], b"").await;
    assert_eq!(all.status, StatusCode::MULTI_STATUS, "{}", all.text());
    assert!(all.text().contains("/docs/a.txt"), "{}", all.text());
    let dest = format!("{}/docs/b.txt", s.url());
    let copy = send(s.dav, "COPY", "/docs/a.txt", &[("destination", &dest)], b"").await;
    assert_eq!(copy.status, StatusCode::CREATED, "{}", copy.text());
    let no = send(
        s.dav,
        "COPY",
        "/docs/a.txt",
        &[("destination", &dest), ("overwrite", "F")],
        b"",
    )
    .await;
    assert_eq!(no.status, StatusCode::PRECONDITION_FAILED);

    let moved = format!("{}/archive", s.url());
    let mv = send(s.dav, "MOVE", "/docs", &[("destination", &moved)], b"").await;
    assert_eq!(mv.status, StatusCode::CREATED, "{}", mv.text());
    let names: Vec<String> = grpc
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(names, ["archive/a.txt", "archive/b.txt"]);

    let del = send(s.dav, "DELETE", "/archive", &[], b"").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text());
    assert!(grpc.list_all(None).await.unwrap().is_empty());
    assert_eq!(
        send(s.dav, "PROPFIND", "/archive", &[("depth", "0")], b"")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

#[tokio::test]
async fn tokens_decide_who_reads_writes_and_which_folder_is_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    std::fs::create_dir_all(&root).unwrap();
    let rw = make(&root, "laptop", "read,write", None);
    let ro = make(&root, "viewer", "read", None);
    let team = make(&root, "team", "read,write", Some("team"));
    let s = DavServer::start(&root).await;

    // Tokens exist: no token, a wrong one, are refused with a challenge.
    let anon = send(s.dav, "PROPFIND", "/", &[("depth", "0")], b"").await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    assert!(
        anon.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );
    let wrong = send(
        s.dav,
        "GET",
        "/",
        &[("authorization", &basic("ds_nope"))],
        b"",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let w = basic(&rw);
    let mk = send(s.dav, "MKCOL", "/team", &[("authorization", &w)], b"").await;
    assert_eq!(mk.status, StatusCode::CREATED);
    let put = send(
        s.dav,
        "PUT",
        "/team/plan.txt",
        &[("authorization", &w)],
        b"plan",
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED);
    let put = send(s.dav, "PUT", "/secret.txt", &[("authorization", &w)], b"s").await;
    assert_eq!(put.status, StatusCode::CREATED);

    // Read-only: reads work, writes are 403 naming the scope.
    let r = basic(&ro);
    let got = send(s.dav, "GET", "/secret.txt", &[("authorization", &r)], b"").await;
    assert_eq!(got.body, b"s");
    let refused = send(s.dav, "PUT", "/x.txt", &[("authorization", &r)], b"x").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.text().contains("write"), "{}", refused.text());
    let refused = send(
        s.dav,
        "DELETE",
        "/secret.txt",
        &[("authorization", &r)],
        b"",
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // A folder token sees its folder as the root, and nothing else.
    let t = basic(&team);
    let mine = send(s.dav, "GET", "/plan.txt", &[("authorization", &t)], b"").await;
    assert_eq!(mine.body, b"plan");
    let list = send(
        s.dav,
        "PROPFIND",
        "/",
        &[("authorization", &t), ("depth", "1")],
        b"",
    )
    .await;
    assert!(list.text().contains("/plan.txt"), "{}", list.text());
    assert!(!list.text().contains("secret"), "{}", list.text());
    let outside = send(s.dav, "GET", "/secret.txt", &[("authorization", &t)], b"").await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    let up = send(s.dav, "PUT", "/new.txt", &[("authorization", &t)], b"n").await;
    assert_eq!(up.status, StatusCode::CREATED);
    let full = send(s.dav, "GET", "/team/new.txt", &[("authorization", &w)], b"").await;
    assert_eq!(full.body, b"n");
    s.stop().await;
}

#[tokio::test]
async fn hostile_paths_and_impossible_bodies_are_refused_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    // No size limit in the way: the disk's free space is.
    let s = DavServer::start_with(&root, |c| c.store.max_file_size = u64::MAX / 2).await;

    let meta = send(s.dav, "GET", "/.distribusync/index.db", &[], b"").await;
    assert_eq!(meta.status, StatusCode::BAD_REQUEST);
    assert!(meta.text().contains(".distribusync"), "{}", meta.text());
    let put = send(s.dav, "PUT", "/.distribusync/evil", &[], b"x").await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    let ctl = send(s.dav, "PUT", "/a%01b", &[], b"x").await;
    assert_eq!(ctl.status, StatusCode::BAD_REQUEST);
    assert!(ctl.text().contains("control"), "{}", ctl.text());
    let up = send(s.dav, "PUT", "/%2e%2e/escape", &[], b"x").await;
    assert!(up.status.is_client_error(), "{}", up.status);
    assert!(!dir.path().join("escape").exists());
    send(s.dav, "PUT", "/ok.txt", &[], b"ok").await;
    let dest = format!("{}/.distribusync/stolen", s.url());
    let mv = send(s.dav, "MOVE", "/ok.txt", &[("destination", &dest)], b"").await;
    assert_eq!(mv.status, StatusCode::BAD_REQUEST);
    assert!(mv.text().contains("Destination"), "{}", mv.text());

    // More than the disk holds: refused before a byte is stored.
    let big = raw(
        s.dav,
        "PUT /big.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 1152921504606846976\r\n\r\n",
        false,
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 507"), "{big}");
    // Past the size limit: 413.
    let s = {
        s.stop().await;
        DavServer::start(&root).await
    };
    let big = raw(
        s.dav,
        "PUT /big.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 1152921504606846976\r\n\r\n",
        false,
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    // A body that ends before its announced length installs nothing.
    let short = raw(
        s.dav,
        "PUT /short.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc",
        true,
    )
    .await;
    assert!(!short.starts_with("HTTP/1.1 2"), "{short}");
    assert_eq!(
        send(s.dav, "HEAD", "/short.bin", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    let staging = root.join(".distribusync").join("staging");
    // Staging files (in the staging area's shard folders).
    let left = || -> usize {
        std::fs::read_dir(&staging)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| std::fs::read_dir(e.path()).map_or(0, |f| f.count()))
                    .sum()
            })
            .unwrap_or(0)
    };
    common::eventually("the staging area is empty", || left() == 0).await;
    s.stop().await;
}

#[tokio::test]
async fn a_webdav_lock_stops_grpc_writes_naming_it_until_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    let grpc = FilesClient::connect(s.grpc.as_str()).await.unwrap();
    common::put_bytes(&grpc, dir.path(), "report.odt", b"v1").await;

    let body = br#"<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>
<D:locktype><D:write/></D:locktype><D:owner>alice</D:owner></D:lockinfo>"#;
    let lock = send(
        s.dav,
        "LOCK",
        "/report.odt",
        &[("timeout", "Second-600")],
        body,
    )
    .await;
    assert_eq!(lock.status, StatusCode::OK, "{}", lock.text());
    let token = lock.header("lock-token").expect("lock token").to_owned();

    let local = dir.path().join("v2");
    std::fs::write(&local, b"v2").unwrap();
    let refused = grpc
        .upload(&local, &p("report.odt"), None, Arc::new(()))
        .await
        .expect_err("locked");
    let text = refused.to_string();
    assert!(text.contains("locked by a WebDAV client"), "{text}");
    assert!(text.contains("report.odt"), "{text}");
    assert!(grpc.delete(&p("report.odt"), None).await.is_err());

    holder_writes_then_unlocks(&s, &grpc, &local, &token).await;
    s.stop().await;
}

/// With `/report.odt` locked by `token`: a PUT without the token is 423,
/// the holder's PUT with it goes through, and after the holder's UNLOCK a
/// sync client (gRPC) may replace the file again.
async fn holder_writes_then_unlocks(s: &DavServer, grpc: &FilesClient, local: &Path, token: &str) {
    let other = send(s.dav, "PUT", "/report.odt", &[], b"x").await;
    assert_eq!(other.status, StatusCode::LOCKED);
    let cond = format!("({token})");
    let mine = send(s.dav, "PUT", "/report.odt", &[("if", &cond)], b"v3").await;
    assert_eq!(mine.status, StatusCode::NO_CONTENT, "{}", mine.text());
    let unlock = send(
        s.dav,
        "UNLOCK",
        "/report.odt",
        &[("lock-token", token)],
        b"",
    )
    .await;
    assert_eq!(unlock.status, StatusCode::NO_CONTENT);
    grpc.upload(local, &p("report.odt"), None, Arc::new(()))
        .await
        .expect("unlocked");
}

/// The `litmus` WebDAV compliance suite (Debian package `litmus`), every
/// group the issue names, against a real server: all must pass.
#[tokio::test]
async fn the_litmus_suite_passes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    let url = format!("{}/", s.url());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("litmus")
            .arg(&url)
            .env("TESTS", "basic copymove props locks http")
            .current_dir(dir.path())
            .output(),
    )
    .await
    .expect("litmus finishes")
    .expect("litmus runs (apt-get install litmus)");
    let text = String::from_utf8_lossy(&out.stdout);
    let summaries: Vec<&str> = text.lines().filter(|l| l.contains("summary for")).collect();
    assert_eq!(summaries.len(), 5, "{text}");
    for line in &summaries {
        // Shown with --nocapture: the pass counts bench/RESULTS.md quotes.
        eprintln!("{line}");
        assert!(line.contains(" 0 failed"), "{line}\n{text}");
    }
    s.stop().await;
}

#[path = "webdav/locks.rs"]
mod locks;
#[path = "webdav/props.rs"]
mod props;
#[path = "webdav/refusals.rs"]
mod refusals;
