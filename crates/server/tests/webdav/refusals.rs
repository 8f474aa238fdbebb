//! Refusals say what they refuse: partial PUTs, sizes past the limit or
//! the free space, locked files.

use super::*;

/// Sends `request` as it is and reads the whole answer, until the server
/// closes the connection.
async fn raw_all(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, stream.read_to_end(&mut got))
        .await
        .expect("the server answers and closes in time");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_put_with_content_range_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    send(s.dav, "PUT", "/f.txt", &[], b"0123456789").await;
    let partial = send(
        s.dav,
        "PUT",
        "/f.txt",
        &[("content-range", "bytes 0-1/10")],
        b"XY",
    )
    .await;
    assert_eq!(
        partial.status,
        StatusCode::BAD_REQUEST,
        "{}",
        partial.text()
    );
    assert!(
        partial.text().contains("Content-Range"),
        "{}",
        partial.text()
    );
    let tail = send(
        s.dav,
        "PUT",
        "/f.txt",
        &[("content-range", "bytes 8-9/10")],
        b"XY",
    )
    .await;
    assert_eq!(tail.status, StatusCode::BAD_REQUEST, "{}", tail.text());
    assert_eq!(
        send(s.dav, "GET", "/f.txt", &[], b"").await.body,
        b"0123456789"
    );
    // Nor may it create a file.
    let new = send(
        s.dav,
        "PUT",
        "/g.txt",
        &[("content-range", "bytes 0-1/2")],
        b"XY",
    )
    .await;
    assert_eq!(new.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(s.dav, "HEAD", "/g.txt", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

#[tokio::test]
async fn size_and_space_refusals_name_the_limit_and_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start_with(&root, |c| c.store.max_file_size = 8).await;
    // Announced past the limit: refused before the body is read (so the
    // body is not sent here).
    let big = raw_all(
        s.dav,
        "PUT /big.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 16\r\n\r\n",
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert!(big.contains("16 bytes"), "{big}");
    assert!(big.contains("8 bytes"), "{big}");
    assert!(big.contains("max file size"), "{big}");
    // Not announced (chunked): found out while it arrives.
    let chunked = raw_all(
        s.dav,
        "PUT /chunked.bin HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
         10\r\n0123456789ABCDEF\r\n0\r\n\r\n",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("8 bytes"), "{chunked}");
    s.stop().await;

    // More than the disk holds.
    let s = DavServer::start_with(&root, |c| c.store.max_file_size = u64::MAX / 2).await;
    let full = raw_all(
        s.dav,
        "PUT /huge.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 1152921504606846976\r\n\r\n",
    )
    .await;
    assert!(full.starts_with("HTTP/1.1 507"), "{full}");
    assert!(full.contains("no space"), "{full}");
    assert!(full.contains("1152921504606846976 bytes"), "{full}");
    s.stop().await;
}

#[tokio::test]
async fn a_locked_refusal_names_the_path_and_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    send(s.dav, "PUT", "/report.odt", &[], b"v1").await;
    let body = br#"<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>
<D:locktype><D:write/></D:locktype><D:owner>alice</D:owner></D:lockinfo>"#;
    let lock = send(s.dav, "LOCK", "/report.odt", &[("depth", "0")], body).await;
    assert_eq!(lock.status, StatusCode::OK, "{}", lock.text());
    let token = lock.header("lock-token").expect("token").to_owned();
    let token = token.trim_matches(|c| c == '<' || c == '>');

    let put = send(s.dav, "PUT", "/report.odt", &[], b"x").await;
    assert_eq!(put.status, StatusCode::LOCKED);
    assert!(put.text().contains("report.odt"), "{}", put.text());
    assert!(put.text().contains(token), "{}", put.text());
    let again = send(s.dav, "LOCK", "/report.odt", &[("depth", "0")], body).await;
    assert_eq!(again.status, StatusCode::LOCKED);
    assert!(again.text().contains("report.odt"), "{}", again.text());
    let del = send(s.dav, "DELETE", "/report.odt", &[], b"").await;
    assert_eq!(del.status, StatusCode::LOCKED);
    assert!(del.text().contains("locked"), "{}", del.text());
    s.stop().await;
}
