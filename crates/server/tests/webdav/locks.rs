//! WebDAV locks: bounded, every one expires, checked when a write
//! commits (not when it starts), kept across a restart.

use super::*;
use distribusync_proto::v1;

const LOCK_BODY: &[u8] = br#"<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>
<D:locktype><D:write/></D:locktype><D:owner>alice</D:owner></D:lockinfo>"#;

/// LOCKs `path` (exclusive, depth 0) with these extra headers.
async fn lock(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("depth", "0")];
    all.extend_from_slice(headers);
    send(addr, "LOCK", path, &all, LOCK_BODY).await
}

/// The `<D:timeout>` a LOCK answer grants.
fn granted(a: &Answer) -> String {
    let text = a.text();
    let start = text.find("<D:timeout>").map(|i| i + "<D:timeout>".len());
    let end = text.find("</D:timeout>");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => text[s..e].to_owned(),
        _ => panic!("no timeout in {text}"),
    }
}

/// Files in the staging area (its shard folders).
fn staged(root: &Path) -> usize {
    let staging = root.join(".distribusync").join("staging");
    std::fs::read_dir(&staging)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| std::fs::read_dir(e.path()).map_or(0, |f| f.count()))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn every_lock_gets_a_bounded_lifetime_and_is_gone_when_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    for f in ["/a.txt", "/b.txt", "/c.txt", "/d.txt"] {
        assert_eq!(
            send(s.dav, "PUT", f, &[], b"x").await.status,
            StatusCode::CREATED
        );
    }
    // No Timeout header, or `Infinite`: the longest lifetime, not forever.
    let none = lock(s.dav, "/a.txt", &[]).await;
    assert_eq!(none.status, StatusCode::OK, "{}", none.text());
    assert_eq!(granted(&none), "Second-1800");
    let infinite = lock(s.dav, "/b.txt", &[("timeout", "Infinite")]).await;
    assert_eq!(granted(&infinite), "Second-1800");
    let long = lock(s.dav, "/c.txt", &[("timeout", "Second-86400")]).await;
    assert_eq!(granted(&long), "Second-1800");
    // A shorter one is granted as asked.
    let short = lock(s.dav, "/d.txt", &[("timeout", "Second-1")]).await;
    assert_eq!(short.status, StatusCode::OK, "{}", short.text());
    assert_eq!(granted(&short), "Second-1");
    // Once it expires, it binds nobody: a PUT without its token goes
    // through and nothing reports it any more.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let put = send(s.dav, "PUT", "/d.txt", &[], b"after").await;
        if put.status.is_success() {
            break;
        }
        assert_eq!(put.status, StatusCode::LOCKED, "{}", put.text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = send(
        s.dav,
        "PROPFIND",
        "/d.txt",
        &[("depth", "0")],
        br#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/></D:prop></D:propfind>"#,
    )
    .await;
    assert!(!found.text().contains("activelock"), "{}", found.text());
    s.stop().await;
}

#[tokio::test]
async fn locks_are_bounded_per_token_and_per_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    std::fs::create_dir_all(&root).unwrap();
    let alice = basic(&make(&root, "alice", "read,write", None));
    let bob = basic(&make(&root, "bob", "read,write", None));
    let s = DavServer::start_with(&root, |c| {
        c.webdav.max_locks = 3;
        c.webdav.max_locks_per_token = 2;
    })
    .await;
    for f in ["/a", "/b", "/c", "/d", "/e"] {
        let put = send(s.dav, "PUT", f, &[("authorization", &alice)], b"x").await;
        assert_eq!(put.status, StatusCode::CREATED);
    }
    let a = lock(s.dav, "/a", &[("authorization", &alice)]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a_token = a.header("lock-token").expect("token").to_owned();
    assert_eq!(
        lock(s.dav, "/b", &[("authorization", &alice)]).await.status,
        StatusCode::OK
    );
    // A third for alice: past the per-token bound, named in the answer.
    let over = lock(s.dav, "/c", &[("authorization", &alice)]).await;
    assert_eq!(
        over.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        over.text()
    );
    assert!(over.text().contains("alice"), "{}", over.text());
    assert!(over.text().contains("2 locks"), "{}", over.text());
    // Bob has room of his own, until the server's bound.
    assert_eq!(
        lock(s.dav, "/c", &[("authorization", &bob)]).await.status,
        StatusCode::OK
    );
    let full = lock(s.dav, "/d", &[("authorization", &bob)]).await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.text()
    );
    assert!(full.text().contains("3 locks"), "{}", full.text());
    // A lock given back makes room.
    let unlock = send(
        s.dav,
        "UNLOCK",
        "/a",
        &[("authorization", &alice), ("lock-token", &a_token)],
        b"",
    )
    .await;
    assert_eq!(unlock.status, StatusCode::NO_CONTENT);
    assert_eq!(
        lock(s.dav, "/d", &[("authorization", &bob)]).await.status,
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test]
async fn a_grpc_upload_begun_before_a_lock_does_not_replace_the_locked_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    assert_eq!(
        send(s.dav, "PUT", "/report.odt", &[], b"v1").await.status,
        StatusCode::CREATED
    );

    // A sync client starts replacing the file, and is slow about it.
    let data = vec![7u8; 64 << 10];
    let ch = tonic::transport::Endpoint::from_shared(s.grpc.clone())
        .unwrap()
        .connect_lazy();
    let mut raw = v1::files_client::FilesClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
            path: "report.odt".into(),
            size: data.len() as u64,
            hash: blake3::hash(&data).as_bytes().to_vec(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    tx.send(v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Chunk(data[..1024].to_vec())),
    })
    .await
    .unwrap();
    let call = tokio::spawn(async move {
        raw.upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // The server has begun it (its staging file exists)...
    common::eventually("the upload is staged", || staged(&root) > 0).await;
    // ...when someone opens the file over WebDAV and locks it.
    let locked = lock(s.dav, "/report.odt", &[("timeout", "Second-600")]).await;
    assert_eq!(locked.status, StatusCode::OK, "{}", locked.text());
    tx.send(v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Chunk(data[1024..].to_vec())),
    })
    .await
    .unwrap();
    drop(tx);
    let done = tokio::time::timeout(T, call)
        .await
        .expect("the upload ends")
        .unwrap();
    let err = done.expect_err("the file is locked by now");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("locked"), "{err:?}");
    assert_eq!(
        send(s.dav, "GET", "/report.odt", &[], b"").await.body,
        b"v1"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_lock_outlives_a_restart_and_still_serves_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    assert_eq!(
        send(s.dav, "PUT", "/report.odt", &[], b"v1").await.status,
        StatusCode::CREATED
    );
    let locked = lock(s.dav, "/report.odt", &[("timeout", "Second-600")]).await;
    assert_eq!(locked.status, StatusCode::OK, "{}", locked.text());
    let token = locked.header("lock-token").expect("token").to_owned();
    s.stop().await;

    let s = DavServer::start(&root).await;
    let grpc = FilesClient::connect(s.grpc.as_str()).await.unwrap();
    let local = dir.path().join("v2");
    std::fs::write(&local, b"v2").unwrap();
    let refused = grpc
        .upload(&local, &p("report.odt"), None, Arc::new(()))
        .await
        .expect_err("still locked after the restart");
    assert!(
        refused.to_string().contains("locked by a WebDAV client"),
        "{refused}"
    );
    // The holder's token still works: to write, then to unlock.
    holder_writes_then_unlocks(&s, &grpc, &local, &token).await;
    s.stop().await;
}
