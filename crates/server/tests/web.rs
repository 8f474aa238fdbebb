//! The web page's HTTP API through a real server (gRPC on 127.0.0.1:0 and
//! the page on its own 127.0.0.1:0 listener), spoken to with raw HTTP/1.1
//! so every header is what a test wrote: sessions, CSRF, scopes and folder
//! confinement, Range, bad input, share links, live events.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::TestServer;
use distribusync_server::auth::{NewToken, TokenStore};
use distribusync_server::{AuthConfig, ServerConfig, WebListener};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

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

/// Polls `check` until it holds; a safety net, not a timing.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + T;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Web {
    server: TestServer,
    addr: String,
}

async fn start(root: &Path) -> Web {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let mut c = ServerConfig::new(root);
    c.auth = AuthConfig {
        failure_burst: 100_000,
        ..AuthConfig::default()
    };
    c.web = Some(WebListener::new(l).expect("listener"));
    Web {
        server: TestServer::start_with(c).await,
        addr,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One request on its own connection (`Connection: close`).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut raw))
        .await
        .expect("answers in time")
        .expect("read");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .expect("status line")
        .split(' ')
        .nth(1)
        .expect("code")
        .parse()
        .expect("number");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).expect("hex").trim(), 16)
                    .expect("hex");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// A signed-in browser: its cookie and CSRF token.
struct Browser {
    addr: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    async fn sign_in(addr: &str, token: &str) -> Browser {
        let body = serde_json::json!({ "token": token }).to_string();
        let r = http(
            addr,
            "POST",
            "/api/signin",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        Browser::from_reply(addr, &r)
    }

    /// On loopback without tokens: the page opens directly.
    async fn open(addr: &str) -> Browser {
        let r = http(addr, "GET", "/api/session", &[], b"").await;
        assert_eq!(r.status, 200);
        Browser::from_reply(addr, &r)
    }

    fn from_reply(addr: &str, r: &Reply) -> Browser {
        let set = r.header("set-cookie").expect("a session cookie");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let cookie = set.split(';').next().expect("name=value").to_owned();
        let csrf = r.json()["csrf"].as_str().expect("csrf").to_owned();
        Browser {
            addr: addr.to_owned(),
            cookie,
            csrf,
        }
    }

    async fn get(&self, path: &str, extra: &[(&str, &str)]) -> Reply {
        let mut h = vec![("Cookie", self.cookie.as_str())];
        h.extend_from_slice(extra);
        http(&self.addr, "GET", path, &h, b"").await
    }

    async fn send(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let h = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", self.csrf.as_str()),
            ("Content-Type", "application/json"),
        ];
        http(&self.addr, method, path, &h, body).await
    }

    async fn post(&self, path: &str, json: serde_json::Value) -> Reply {
        self.send("POST", path, json.to_string().as_bytes()).await
    }

    async fn upload(&self, path: &str, data: &[u8], offset: u64, size: u64) -> Reply {
        let q = format!(
            "/api/upload?path={}&size={size}&modified_ms=1700000000000&offset={offset}",
            enc(path)
        );
        self.send("PUT", &q, data).await
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn names(listing: &serde_json::Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn tokens_sign_in_to_a_session_and_scopes_and_folders_apply_as_for_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    std::fs::create_dir_all(&root).unwrap();
    let rw = make(&root, "rw", "read,write", None);
    let ro = make(&root, "ro", "read", None);
    let photos = make(&root, "ph", "read,write", Some("photos"));
    let web = start(&root).await;
    let a = &web.addr;

    // Without a session nothing is listed; a wrong token does not sign in.
    assert_eq!(http(a, "GET", "/api/list", &[], b"").await.status, 401);
    let bad = serde_json::json!({ "token": "dsy_nope" }).to_string();
    let r = http(
        a,
        "POST",
        "/api/signin",
        &[("Content-Type", "application/json")],
        bad.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
    let s = http(a, "GET", "/api/session", &[], b"").await;
    assert_eq!(
        s.json()["signed_in"],
        false,
        "tokens exist: no open session"
    );

    let w = Browser::sign_in(a, &rw).await;
    assert_eq!(w.upload("photos/a.jpg", b"abc", 0, 3).await.status, 200);
    assert_eq!(w.upload("notes.txt", b"hello", 0, 5).await.status, 200);

    // Read-only: lists and downloads, but upload, rename, delete are refused.
    let r = Browser::sign_in(a, &ro).await;
    assert_eq!(
        names(&r.get("/api/list", &[]).await.json()),
        ["photos", "notes.txt"]
    );
    assert_eq!(r.get("/api/file?path=notes.txt", &[]).await.body, b"hello");
    assert_eq!(r.upload("x.txt", b"x", 0, 1).await.status, 403);
    assert_eq!(
        r.post("/api/delete", serde_json::json!({"path": "notes.txt"}))
            .await
            .status,
        403
    );
    assert_eq!(
        r.post(
            "/api/rename",
            serde_json::json!({"from": "notes.txt", "to": "n2"})
        )
        .await
        .status,
        403
    );

    // A folder token sees only its folder, and cannot reach beside it.
    let p = Browser::sign_in(a, &photos).await;
    assert_eq!(names(&p.get("/api/list", &[]).await.json()), ["photos"]);
    assert_eq!(p.get("/api/file?path=notes.txt", &[]).await.status, 403);
    assert_eq!(p.upload("elsewhere.txt", b"x", 0, 1).await.status, 403);
    assert_eq!(p.upload("photos/b.jpg", b"x", 0, 1).await.status, 200);

    // Revoking the token ends its session.
    TokenStore::open(&root)
        .unwrap()
        .revoke("rw", SystemTime::now())
        .unwrap();
    eventually("the revoked token's session to end", || async {
        w.get("/api/list", &[]).await.status == 401
    })
    .await;

    // Sign-out ends a session.
    assert_eq!(
        r.post("/api/signout", serde_json::json!({})).await.status,
        204
    );
    assert_eq!(r.get("/api/list", &[]).await.status, 401);
    web.server.stop().await;
}

#[tokio::test]
async fn a_cross_site_request_is_refused_before_it_does_anything() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let b = Browser::open(&web.addr).await;
    assert_eq!(b.upload("keep.txt", b"keep", 0, 4).await.status, 200);
    let body = br#"{"path":"keep.txt"}"#;
    let (cookie, csrf) = (b.cookie.as_str(), b.csrf.as_str());
    let json = ("Content-Type", "application/json");
    let origin = format!("http://{}", web.addr);
    // Each refused, and nothing deleted.
    // (what, headers, body)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8]);
    let refused: [Case; 5] = [
        (
            "no CSRF token (a form another page submits)",
            vec![("Cookie", cookie), json],
            body,
        ),
        (
            "a form-encoded post with the cookie",
            vec![
                ("Cookie", cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"path=keep.txt",
        ),
        (
            "the right token from another origin",
            vec![
                ("Cookie", cookie),
                ("X-CSRF-Token", csrf),
                ("Origin", "http://evil.example"),
                json,
            ],
            body,
        ),
        (
            "the right token from a cross-site fetch",
            vec![
                ("Cookie", cookie),
                ("X-CSRF-Token", csrf),
                ("Sec-Fetch-Site", "cross-site"),
                json,
            ],
            body,
        ),
        (
            "a wrong CSRF token",
            vec![("Cookie", cookie), ("X-CSRF-Token", "0000"), json],
            body,
        ),
    ];
    for (what, headers, payload) in &refused {
        let answer = http(&web.addr, "POST", "/api/delete", headers, payload).await;
        assert_eq!(answer.status, 403, "{what}");
    }
    assert_eq!(b.get("/api/file?path=keep.txt", &[]).await.body, b"keep");
    // Same origin with the token: done.
    let h = [
        ("Cookie", cookie),
        ("X-CSRF-Token", csrf),
        ("Origin", origin.as_str()),
        json,
    ];
    assert_eq!(
        http(&web.addr, "POST", "/api/delete", &h, body)
            .await
            .status,
        200
    );
    assert_eq!(b.get("/api/file?path=keep.txt", &[]).await.status, 404);
    web.server.stop().await;
}

#[tokio::test]
async fn downloads_honour_range_and_odd_names_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let b = Browser::open(&web.addr).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let odd = [
        "a b#c%d.bin",
        "ünïcödé.bin",
        "שלום.bin",
        "<script>alert(1).html",
    ];
    for name in odd {
        assert_eq!(
            b.upload(name, &data, 0, data.len() as u64).await.status,
            200,
            "{name}"
        );
    }
    let listed = names(&b.get("/api/list", &[]).await.json());
    for name in odd {
        assert!(listed.iter().any(|n| n == name), "{name} in {listed:?}");
        let path = format!("/api/file?path={}&dl=1", enc(name));
        let r = b.get(&path, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, data, "{name}");
        let cd = r.header("content-disposition").expect("disposition");
        assert!(
            cd.starts_with("attachment;") && cd.contains("filename*=UTF-8''"),
            "{cd}"
        );
    }
    // The uploaded page is never served as HTML to run on this origin.
    let r = b.get(&format!("/api/file?path={}", enc(odd[3])), &[]).await;
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .starts_with("sandbox")
    );

    let path = format!("/api/file?path={}", enc(odd[0]));
    let r = b.get(&path, &[("Range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/100000"));
    assert_eq!(r.body, &data[1000..2000]);
    let r = b.get(&path, &[("Range", "bytes=99990-")]).await;
    assert_eq!((r.status, &r.body[..]), (206, &data[99_990..]));
    let r = b.get(&path, &[("Range", "bytes=-10")]).await;
    assert_eq!((r.status, &r.body[..]), (206, &data[99_990..]));
    let r = b.get(&path, &[("Range", "bytes=100000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */100000"));
    // A range of an older version (If-Range with another ETag): the whole new file.
    let r = b
        .get(&path, &[("Range", "bytes=0-9"), ("If-Range", "\"old\"")])
        .await;
    assert_eq!((r.status, r.body.len()), (200, data.len()));

    // Bad input: answered 4xx with a message, never a crash.
    for bad in [
        "/api/file?path=..%2Fetc%2Fpasswd",
        "/api/file?path=.distribusync%2Findex.db",
        "/api/file?path=",
        "/api/file",
        "/api/list?dir=%2F..%2F",
    ] {
        let r = b.get(bad, &[]).await;
        assert!((400..500).contains(&r.status), "{bad}: {}", r.status);
    }
    assert_eq!(b.get("/api/file?path=nothing", &[]).await.status, 404);
    // More data than announced: refused, nothing installed.
    let r = b.upload("over.bin", b"0123456789", 0, 5).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // Less data than announced in one piece of a small file: refused.
    let r = b.upload("under.bin", b"01", 0, 5).await;
    assert!((400..500).contains(&r.status));
    let listed = names(&b.get("/api/list", &[]).await.json());
    assert!(
        !listed.iter().any(|n| n == "over.bin" || n == "under.bin"),
        "{listed:?}"
    );
    let r = b.send("POST", "/api/rename", b"{not json").await;
    assert!((400..500).contains(&r.status));
    web.server.stop().await;
}

#[tokio::test]
async fn a_big_upload_in_pieces_resumes_where_the_server_kept_it() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let b = Browser::open(&web.addr).await;
    let size = 10 * 1024 * 1024 + 123;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
    let piece = 6 * 1024 * 1024;
    let r = b.upload("big/f.bin", &data[..piece], 0, size as u64).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["done"], false);
    // Where to resume, as the page asks after a dropped connection.
    let q = format!(
        "/api/upload?path={}&size={size}&modified_ms=1700000000000",
        enc("big/f.bin")
    );
    assert_eq!(b.get(&q, &[]).await.json()["offset"], piece as u64);
    assert_eq!(
        b.get("/api/file?path=big%2Ff.bin", &[]).await.status,
        404,
        "not installed yet"
    );
    let r = b
        .upload("big/f.bin", &data[piece..], piece as u64, size as u64)
        .await;
    assert_eq!(r.json()["done"], true);
    assert_eq!(b.get("/api/file?path=big%2Ff.bin", &[]).await.body, data);
    web.server.stop().await;
}

#[tokio::test]
async fn share_links_work_without_a_session_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let b = Browser::open(&web.addr).await;
    b.upload("docs/a <b>.txt", b"shared text", 0, 11).await;
    b.upload("secret.txt", b"secret", 0, 6).await;
    let file = b
        .post(
            "/api/shares",
            serde_json::json!({"path": "docs/a <b>.txt", "hours": 1}),
        )
        .await;
    assert_eq!(file.status, 200);
    let url = file.json()["url"].as_str().unwrap().to_owned();
    assert_eq!(
        http(&web.addr, "GET", &url, &[], b"").await.body,
        b"shared text"
    );
    // An altered signature, or another id, opens nothing.
    let forged = format!("{}0", &url[..url.len() - 1]);
    let forged = if forged == url {
        format!("{}1", &url[..url.len() - 1])
    } else {
        forged
    };
    assert_eq!(http(&web.addr, "GET", &forged, &[], b"").await.status, 404);
    // A folder link lists its files (as text) and serves them, nothing beside.
    let folder = b
        .post(
            "/api/shares",
            serde_json::json!({"path": "docs", "folder": true, "hours": 1}),
        )
        .await;
    let furl = folder.json()["url"].as_str().unwrap().to_owned();
    let page = String::from_utf8(http(&web.addr, "GET", &furl, &[], b"").await.body).unwrap();
    assert!(
        page.contains("a &lt;b&gt;.txt") && !page.contains("a <b>"),
        "{page}"
    );
    let inside = format!("{furl}?path={}", enc("a <b>.txt"));
    assert_eq!(
        http(&web.addr, "GET", &inside, &[], b"").await.body,
        b"shared text"
    );
    let outside = format!("{furl}?path={}", enc("../secret.txt"));
    assert_eq!(http(&web.addr, "GET", &outside, &[], b"").await.status, 404);
    // Expiry limits and revocation.
    let r = b
        .post(
            "/api/shares",
            serde_json::json!({"path": "secret.txt", "hours": 100000}),
        )
        .await;
    assert_eq!(r.status, 400);
    let id = file.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        b.post("/api/shares/revoke", serde_json::json!({"id": id}))
            .await
            .status,
        204
    );
    assert_eq!(http(&web.addr, "GET", &url, &[], b"").await.status, 404);
    web.server.stop().await;
}

#[tokio::test]
async fn the_change_feed_pushes_a_change_made_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let b = Browser::open(&web.addr).await;
    let mut s = TcpStream::connect(&web.addr).await.unwrap();
    let req = format!(
        "GET /api/events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
        web.addr, b.cookie
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut next = async || {
        tokio::time::timeout(T, lines.next_line())
            .await
            .expect("in time")
            .unwrap()
            .expect("a line")
    };
    while !next().await.starts_with("event: ready") {}
    let client = web.server.client().await;
    common::put_bytes(&client, dir.path(), "from-cli.txt", b"hi").await;
    loop {
        let l = next().await;
        if l.starts_with("data:") && l.contains("from-cli.txt") {
            assert!(l.contains("\"op\":\"put\""), "{l}");
            break;
        }
    }
    web.server.stop().await;
}

#[tokio::test]
async fn compute_adds_and_sorts_at_once_and_as_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let b = Browser::open(&web.addr).await;
    let r = b
        .post(
            "/api/compute",
            serde_json::json!({"op": "add", "numbers": "1 2, 3\n4"}),
        )
        .await;
    assert_eq!(r.json()["sum"], "10");
    let r = b
        .post(
            "/api/compute",
            serde_json::json!({"op": "sort", "numbers": "3 -1 2", "descending": true}),
        )
        .await;
    assert_eq!(r.json()["sorted"], serde_json::json!(["3", "2", "-1"]));
    let r = b
        .post(
            "/api/compute",
            serde_json::json!({"op": "add", "numbers": "1 x"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = b
        .post(
            "/api/compute",
            serde_json::json!({"op": "add", "numbers": "9223372036854775807 1"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let job = b
        .post(
            "/api/compute",
            serde_json::json!({"op": "sort", "numbers": "5 4 6", "job": true}),
        )
        .await;
    let id = job.json()["job_id"].as_str().unwrap().to_owned();
    eventually("the job to finish", || async {
        let jobs = b.get("/api/jobs", &[]).await.json();
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id.as_str() && j["state"] == "done")
    })
    .await;
    let r = b.get(&format!("/api/jobs/result?id={id}"), &[]).await;
    assert_eq!(r.json()["sorted"], serde_json::json!(["4", "5", "6"]));
    web.server.stop().await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(dir.path()).await;
    let r = http(&web.addr, "GET", "/", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("<script src=\"/app.js\""));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(
        http(&web.addr, "GET", "/app.js", &[], b"").await.status,
        200
    );
    assert_eq!(http(&web.addr, "GET", "/nope", &[], b"").await.status, 404);
    web.server.stop().await;
}

#[tokio::test]
async fn under_tls_the_page_uses_the_grpc_certificate_and_a_secure_cookie() {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let dir = tempfile::tempdir().unwrap();
    let id = distribusync_server::TlsIdentity::self_signed(dir.path(), &["localhost".into()])
        .expect("a certificate");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut c = ServerConfig::new(dir.path());
    c.tls = Some(id.clone());
    c.web = Some(WebListener::new(l).unwrap());
    let server = TestServer::start_with(c).await;

    let pem = std::fs::read(id.cert_path()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the page speaks TLS with the server's certificate");
    let req = "GET /api/session HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after the answer.
    let _ = tokio::time::timeout(T, tls.read_to_end(&mut raw))
        .await
        .expect("in time");
    let r = parse(&raw);
    assert_eq!(r.status, 200);
    let cookie = r.header("set-cookie").expect("a local session on loopback");
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plaintext to the TLS port gets no page.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, plain.read_to_end(&mut got))
        .await
        .expect("closed in time");
    assert!(!String::from_utf8_lossy(&got).contains("DistribuSync"));
    server.stop().await;
}

#[tokio::test]
async fn an_upload_larger_than_the_free_space_fails_saying_so_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut c = ServerConfig::new(dir.path());
    c.store.max_file_size = u64::MAX;
    c.web = Some(WebListener::new(l).unwrap());
    let server = TestServer::start_with(c).await;
    let b = Browser::open(&addr).await;
    // 1 PiB announced: more than this disk has; refused before any data.
    let huge = 1u64 << 50;
    let r = b.upload("huge.bin", &[7u8; 4096], 0, huge).await;
    assert_eq!(r.status, 507, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(msg.contains("free"), "{msg}");
    let q = format!("/api/upload?path=huge.bin&size={huge}&modified_ms=1700000000000");
    assert_eq!(b.get(&q, &[]).await.json()["offset"], 0, "no part kept");
    assert!(names(&b.get("/api/list", &[]).await.json()).is_empty());
    server.stop().await;
}

/// Sends a plain GET of `/` on an open connection and reads the status line
/// (`None`: the server closed the connection without answering).
async fn status_line(conn: &mut TcpStream) -> Option<String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
        .await
        .expect("an answer or a close")
        .ok()?;
    (n > 0).then_some(line)
}

#[tokio::test]
async fn connections_past_the_bound_are_closed_unserved_and_a_freed_slot_serves_again() {
    let tmp = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = ServerConfig::new(tmp.path().join("MASTER"));
    c.web = Some(WebListener::new(l).unwrap().with_max_connections(2));
    let server = TestServer::start_with(c).await;

    // Two idle keep-alive connections hold both slots (each answered once).
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(status_line(&mut first).await.unwrap().contains("200"));
    assert!(status_line(&mut second).await.unwrap().contains("200"));
    // A third is closed without an answer.
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(status_line(&mut third).await, None);
    // Once one is gone, a new connection is served again (its slot is
    // freed when the server sees the close: retry until then).
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut again = TcpStream::connect(addr).await.unwrap();
            if let Some(line) = status_line(&mut again).await {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a freed slot serves a new connection");
    assert!(served.contains("200"), "{served}");
    drop(second);
    server.stop().await;
}

/// The metrics endpoint (`serve --metrics-listen`) bounds its connections
/// the same way: idle scrapers past the bound are closed unanswered.
#[tokio::test]
async fn metrics_connections_past_the_bound_are_closed_unserved() {
    let tmp = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = ServerConfig::new(tmp.path().join("MASTER"));
    c.metrics = Some(std::sync::Arc::new(l));
    let server = TestServer::start_with(c).await;

    let mut held = Vec::new();
    for _ in 0..distribusync_server::METRICS_MAX_CONNECTIONS {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        // `/` is not the metrics path: a 404 still shows the connection served.
        assert!(status_line(&mut conn).await.unwrap().contains("404"));
        held.push(conn);
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert_eq!(status_line(&mut extra).await, None);
    drop(held);
    server.stop().await;
}
