//! The Files service through the real client against a real server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, eventually, get_bytes, p, put_bytes};
use distribusync_client::{ChangeKind, ClientError, FilesClient, WatchEvent};
use distribusync_core::ContentHash;
use distribusync_proto::v1::{self, files_client};
use tokio_stream::wrappers::ReceiverStream;

fn raw(addr: &str) -> files_client::FilesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect_lazy();
    files_client::FilesClient::new(ch)
}

fn header(path: &str, size: u64, data: &[u8]) -> v1::UploadRequest {
    v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
            path: path.into(),
            size,
            hash: ContentHash::of(data).0.to_vec(),
            modified: None,
            if_revision: None,
            offset: 0,
        })),
    }
}

fn chunk(data: &[u8]) -> v1::UploadRequest {
    v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Chunk(data.to_vec())),
    }
}

/// True when no staged upload is left anywhere under the staging folder.
fn staging_is_empty(root: &std::path::Path) -> bool {
    fn files_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            files_under(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    root.join(".distribusync/staging").is_dir()
        && files_under(&root.join(".distribusync/staging")) == 0
}

#[tokio::test]
async fn upload_download_stat_list_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let info = put_bytes(&c, tmp.path(), "trips/2026/a.bin", &big).await;
    assert_eq!(
        (info.size, info.hash),
        (big.len() as u64, ContentHash::of(&big))
    );
    put_bytes(&c, tmp.path(), "trips-old/b", b"b").await;
    put_bytes(&c, tmp.path(), "empty", b"").await;
    assert_eq!(get_bytes(&c, tmp.path(), "trips/2026/a.bin").await, big);
    assert_eq!(get_bytes(&c, tmp.path(), "empty").await, b"");
    let stat = c.stat(&p("trips/2026/a.bin")).await.unwrap();
    assert_eq!(stat, info);
    let names: Vec<String> = c
        .list_all(Some(&p("trips")))
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(names, ["trips/2026/a.bin"]);
    assert_eq!(c.list_all(None).await.unwrap().len(), 3);
    // The file is really in MASTER, whole.
    assert_eq!(
        std::fs::read(server.root.join("trips/2026/a.bin")).unwrap(),
        big
    );
    server.stop().await;
}

#[tokio::test]
async fn large_listings_arrive_in_pages_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let src = tmp.path().join("one");
    std::fs::write(&src, b"x").unwrap();
    let uploads = (0..2100).map(|i| {
        let c = c.clone();
        let src = src.clone();
        async move {
            c.upload(&src, &p(&format!("d/f{i:05}")), None, Arc::new(()))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(uploads).await;
    let mut pages = c.list(Some(&p("d"))).await.unwrap();
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        sizes.push(page.len());
        all.extend(page.into_iter().map(|f| f.path.to_string()));
    }
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|s| *s <= 1000),
        "{sizes:?}"
    );
    let expected: Vec<String> = (0..2100).map(|i| format!("d/f{i:05}")).collect();
    assert_eq!(all, expected);
    server.stop().await;
}

#[tokio::test]
async fn wrong_hash_and_overlong_data_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "doc", b"old version").await;
    let mut rc = raw(&server.addr);

    // Hash of other data.
    let msgs = vec![header("doc", 3, b"xyz"), chunk(b"abc")];
    let err = rc.upload(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hash mismatch"), "{}", err.message());

    // 10 bytes announced, 11 sent.
    let data = b"0123456789A";
    let msgs = vec![header("doc", 10, &data[..10]), chunk(data)];
    let err = rc.upload(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("more than the 10 bytes"),
        "{}",
        err.message()
    );

    // Fewer bytes than announced.
    let msgs = vec![header("doc", 10, b"0123456789"), chunk(b"01234")];
    let err = rc.upload(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A header without a hash promises a trailer; ending without it is refused.
    let mut no_hash = header("doc", 3, b"abc");
    if let Some(v1::upload_request::Msg::Header(h)) = &mut no_hash.msg {
        h.hash.clear();
    }
    let err = rc
        .upload(tokio_stream::iter(vec![no_hash.clone(), chunk(b"abc")]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("without its content hash"),
        "{}",
        err.message()
    );
    // And a trailer that does not match the data is a hash mismatch.
    let trailer = v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::TrailerHash(
            ContentHash::of(b"xyz").0.to_vec(),
        )),
    };
    let err = rc
        .upload(tokio_stream::iter(vec![no_hash, chunk(b"abc"), trailer]))
        .await
        .unwrap_err();
    assert!(err.message().contains("hash mismatch"), "{}", err.message());

    // Chunks without a header.
    let err = rc
        .upload(tokio_stream::iter(vec![chunk(b"x")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    assert_eq!(get_bytes(&c, tmp.path(), "doc").await, b"old version");
    assert_eq!(c.stat(&p("doc")).await.unwrap().revision, 1);
    eventually("staging cleaned", || staging_is_empty(&server.root)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stream_cut_mid_upload_leaves_the_old_version() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "doc", b"old version").await;
    let new = vec![7u8; 4 << 20];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("doc", new.len() as u64, &new))
        .await
        .unwrap();
    tx.send(chunk(&new[..1 << 20])).await.unwrap();
    let mut rc = raw(&server.addr);
    let call = tokio::spawn(async move { rc.upload(ReceiverStream::new(rx)).await });
    // Wait until the server has the partial data staged, then cut.
    eventually("data staged", || !staging_is_empty(&server.root)).await;
    call.abort();
    drop(tx);
    eventually("staging cleaned after the cut", || {
        staging_is_empty(&server.root)
    })
    .await;
    assert_eq!(get_bytes(&c, tmp.path(), "doc").await, b"old version");
    let listed = c.list_all(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    server.stop().await;
}

/// Records where each transfer started.
#[derive(Default)]
struct Starts(std::sync::Mutex<Vec<(u64, u64)>>);

impl distribusync_client::Progress for Starts {
    fn start(&self, total: u64, done: u64) {
        self.0.lock().unwrap().push((total, done));
    }
}

/// Sends the first `sent` bytes of `data` as an upload of `path` announced
/// as the local file `local` (its size and modified time), then breaks the
/// connection once the server holds them; returns what the server kept.
async fn break_upload(
    server: &TestServer,
    c: &FilesClient,
    local: &std::path::Path,
    path: &str,
    data: &[u8],
    sent: usize,
) -> u64 {
    let meta = std::fs::metadata(local).unwrap();
    let modified = meta.modified().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
            path: path.into(),
            size: meta.len(),
            hash: Vec::new(),
            modified: Some(distribusync_proto::timestamp(modified)),
            if_revision: None,
            offset: 0,
        })),
    })
    .await
    .unwrap();
    let relay = common::Relay::start(&server.addr).await;
    let mut rc = raw(&relay.addr);
    let call = tokio::spawn(async move { rc.upload(ReceiverStream::new(rx)).await });
    for part in data[..sent].chunks(1 << 20) {
        tx.send(chunk(part)).await.unwrap();
    }
    // The data is on its way; wait until the server has written all of it,
    // then cut the connection under the stream.
    eventually("data staged", || staged_bytes(&server.root) == sent as u64).await;
    relay.cut();
    assert!(call.await.unwrap().is_err(), "a cut upload fails");
    drop(tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let kept = c
            .upload_offset(&p(path), meta.len(), modified)
            .await
            .unwrap();
        if kept > 0 {
            return kept;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes in staging files.
fn staged_bytes(root: &std::path::Path) -> u64 {
    fn under(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => under(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    under(&root.join(".distribusync/staging"))
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn an_interrupted_upload_resumes_where_it_broke() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "big.iso", b"old version").await;
    let data = pseudo_random(12 << 20, 1);
    let local = tmp.path().join("big.iso");
    std::fs::write(&local, &data).unwrap();

    let kept = break_upload(&server, &c, &local, "big.iso", &data, 5 << 20).await;
    assert_eq!(kept, 5 << 20);
    // The break changed nothing a user can see.
    assert_eq!(get_bytes(&c, tmp.path(), "big.iso").await, b"old version");
    assert_eq!(c.list_all(None).await.unwrap().len(), 1);
    // The part outlives a restart of the server (which then reads it back
    // to hash it, having no hash state of it in memory).
    server.stop().await;
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;

    let starts = Arc::new(Starts::default());
    let info = c
        .upload(&local, &p("big.iso"), None, starts.clone())
        .await
        .unwrap();
    assert_eq!(*starts.0.lock().unwrap(), [(12 << 20, 5 << 20)]);
    assert_eq!(info.hash, ContentHash::of(&data));
    assert_eq!(get_bytes(&c, tmp.path(), "big.iso").await, data);
    // The kept part was used up.
    let modified = std::fs::metadata(&local).unwrap().modified().unwrap();
    let left = c
        .upload_offset(&p("big.iso"), 12 << 20, modified)
        .await
        .unwrap();
    assert_eq!(left, 0);
    server.stop().await;
}

#[tokio::test]
async fn an_upload_the_client_gives_up_on_is_kept_for_resuming() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let data = pseudo_random(64 << 20, 4);
    let local = tmp.path().join("movie");
    std::fs::write(&local, &data).unwrap();
    // The caller drops the upload part way (Ctrl-C in the menu, a sync
    // that stops): the stream ends early, not broken.
    let (c2, l2) = (c.clone(), local.clone());
    let upload = tokio::spawn(async move { c2.upload(&l2, &p("movie"), None, Arc::new(())).await });
    eventually("data staged", || staged_bytes(&server.root) > 0).await;
    upload.abort();
    assert!(upload.await.unwrap_err().is_cancelled());
    let modified = std::fs::metadata(&local).unwrap().modified().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let kept = loop {
        let kept = c
            .upload_offset(&p("movie"), 64 << 20, modified)
            .await
            .unwrap();
        if kept > 0 {
            break kept;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(c.stat(&p("movie")).await.is_err(), "nothing installed");
    let starts = Arc::new(Starts::default());
    let info = c
        .upload(&local, &p("movie"), None, starts.clone())
        .await
        .unwrap();
    assert_eq!(*starts.0.lock().unwrap(), [(64 << 20, kept)]);
    assert_eq!(info.hash, ContentHash::of(&data));
    server.stop().await;
}

#[tokio::test]
async fn a_resume_from_a_kept_part_that_differs_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let data = pseudo_random(8 << 20, 2);
    let local = tmp.path().join("video");
    std::fs::write(&local, &data).unwrap();
    // Another client's bytes under the same path, size and modified time.
    let other = pseudo_random(8 << 20, 3);
    break_upload(&server, &c, &local, "video", &other, 6 << 20).await;

    let starts = Arc::new(Starts::default());
    let info = c
        .upload(&local, &p("video"), None, starts.clone())
        .await
        .unwrap();
    // Resumed, found the whole did not hash right, sent it all again.
    assert_eq!(
        *starts.0.lock().unwrap(),
        [(8 << 20, 6 << 20), (8 << 20, 0)]
    );
    assert_eq!(info.hash, ContentHash::of(&data));
    assert_eq!(get_bytes(&c, tmp.path(), "video").await, data);
    server.stop().await;
}

#[tokio::test]
async fn resuming_without_a_kept_part_is_aborted_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "doc", b"old version").await;
    let data = vec![1u8; 5 << 20];
    let mut first = header("doc", data.len() as u64, &data);
    if let Some(v1::upload_request::Msg::Header(h)) = &mut first.msg {
        h.offset = 1 << 20;
    }
    let stream = tokio_stream::iter(vec![first, chunk(&data[1 << 20..])]);
    let err = raw(&server.addr).upload(stream).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(
        err.message().contains("send the whole file again"),
        "{err:?}"
    );
    assert_eq!(get_bytes(&c, tmp.path(), "doc").await, b"old version");
    server.stop().await;
}

#[tokio::test]
async fn revisions_guard_against_lost_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let src = tmp.path().join("src");
    std::fs::write(&src, b"one").unwrap();
    let first = c
        .upload(&src, &p("f"), Some(0), Arc::new(()))
        .await
        .unwrap();
    // 0 means "must not exist": a second create fails and names the revision.
    match c.upload(&src, &p("f"), Some(0), Arc::new(())).await {
        Err(ClientError::RevisionMismatch { current, .. }) => {
            assert_eq!(current, Some(first.revision))
        }
        other => panic!("expected a revision mismatch, got {other:?}"),
    }
    std::fs::write(&src, b"two").unwrap();
    let second = c
        .upload(&src, &p("f"), Some(first.revision), Arc::new(()))
        .await
        .unwrap();
    assert!(second.revision > first.revision);
    assert!(matches!(
        c.delete(&p("f"), Some(first.revision)).await,
        Err(ClientError::RevisionMismatch { current: Some(r), .. }) if r == second.revision
    ));
    assert!(matches!(
        c.rename(&p("f"), &p("g"), false, Some(first.revision))
            .await,
        Err(ClientError::RevisionMismatch { .. })
    ));
    c.delete(&p("f"), Some(second.revision)).await.unwrap();
    assert!(matches!(
        c.stat(&p("f")).await,
        Err(ClientError::NotFound(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn rename_rules_and_folder_renames() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "a", b"A").await;
    put_bytes(&c, tmp.path(), "b", b"B").await;
    for i in 0..50 {
        put_bytes(
            &c,
            tmp.path(),
            &format!("dir/sub/f{i}"),
            format!("{i}").as_bytes(),
        )
        .await;
    }
    assert!(matches!(
        c.rename(&p("a"), &p("a"), false, None).await,
        Err(ClientError::Rejected(_))
    ));
    assert!(matches!(
        c.rename(&p("a"), &p("b"), false, None).await,
        Err(ClientError::AlreadyExists(_))
    ));
    assert!(matches!(
        c.rename(&p("nope"), &p("x"), false, None).await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        c.rename(&p("dir"), &p("dir/sub/x"), false, None).await,
        Err(ClientError::Rejected(_))
    ));
    assert!(matches!(
        c.rename(&p("a"), &p("dir"), true, None).await,
        Err(ClientError::Rejected(m)) if m.contains("never replaces a folder")
    ));
    c.rename(&p("a"), &p("b"), true, None).await.unwrap();
    assert_eq!(get_bytes(&c, tmp.path(), "b").await, b"A");
    assert!(matches!(
        c.stat(&p("a")).await,
        Err(ClientError::NotFound(_))
    ));

    let (_, moved) = c
        .rename(&p("dir"), &p("archive/2026"), false, None)
        .await
        .unwrap();
    assert_eq!(moved, 50);
    assert_eq!(
        c.list_all(Some(&p("archive/2026/sub")))
            .await
            .unwrap()
            .len(),
        50
    );
    assert!(c.list_all(Some(&p("dir"))).await.unwrap().is_empty());
    assert_eq!(get_bytes(&c, tmp.path(), "archive/2026/sub/f7").await, b"7");
    // The emptied folder is gone from disk too.
    assert!(!server.root.join("dir").exists());
    server.stop().await;
}

#[tokio::test]
async fn a_folder_rename_that_would_make_a_path_too_long_is_refused_and_moves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    // 20 folders of 200 bytes under "d": a file path of 4,023 bytes, near the
    // 4,096-byte limit; renaming "d" to a 200-byte name would pass it.
    let deep = (0..20)
        .map(|_| "s".repeat(200))
        .collect::<Vec<_>>()
        .join("/");
    let file = format!("d/{deep}/f");
    put_bytes(&c, tmp.path(), &file, b"deep").await;
    put_bytes(&c, tmp.path(), "d/short", b"short").await;
    let long_name = "n".repeat(200);
    match c.rename(&p("d"), &p(&long_name), false, None).await {
        Err(ClientError::Rejected(m)) => {
            assert!(m.contains("longer than 4096 bytes"), "{m}")
        }
        other => panic!("expected a refusal naming the limit, got {other:?}"),
    }
    // Nothing moved: both files are where they were, with their contents.
    assert_eq!(get_bytes(&c, tmp.path(), &file).await, b"deep");
    assert_eq!(get_bytes(&c, tmp.path(), "d/short").await, b"short");
    assert!(c.list_all(Some(&p(&long_name))).await.unwrap().is_empty());
    // A rename that keeps the length within the limit still works.
    let (_, moved) = c.rename(&p("d"), &p("e"), false, None).await.unwrap();
    assert_eq!(moved, 2);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "f", b"12345").await;
    let mut rc = raw(&server.addr);
    let long = "x".repeat(300);
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "a\\b",
        "a//b",
        ".",
        "..",
        "",
        "a\0b",
        &long,
        ".distribusync/index.db",
    ] {
        let err = rc
            .stat(v1::StatRequest { path: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(
            err.message().contains("invalid path"),
            "{bad:?}: {}",
            err.message()
        );
        let err = rc
            .upload(tokio_stream::iter(vec![header(bad, 1, b"x"), chunk(b"x")]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    // Nothing was written anywhere.
    assert_eq!(c.list_all(None).await.unwrap().len(), 1);
    assert!(!tmp.path().join("x").exists());

    let err = rc
        .download(v1::DownloadRequest {
            path: "f".into(),
            offset: 6,
            length: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(err.message().contains("past the end"));
    assert!(matches!(
        c.delete(&p("missing"), None).await,
        Err(ClientError::NotFound(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn symlinks_inside_master_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let root = tmp.path().join("MASTER");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("file-link")).unwrap();
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    let dest = tmp.path().join("got");
    assert!(
        c.download(&p("link/secret"), &dest, Arc::new(()))
            .await
            .is_err()
    );
    assert!(
        c.download(&p("file-link"), &dest, Arc::new(()))
            .await
            .is_err()
    );
    let src = tmp.path().join("src");
    std::fs::write(&src, b"evil").unwrap();
    let err = c
        .upload(&src, &p("link/new"), None, Arc::new(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!outside.join("new").exists());
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    server.stop().await;
}

#[tokio::test]
async fn resumed_download_continues_from_the_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let info = put_bytes(&c, tmp.path(), "big", &data).await;
    let dest = tmp.path().join("out/big");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    // What an interrupted download leaves: the first part of this version.
    let partial = dest.with_file_name(format!(
        ".big.{}.distribusync-part",
        &info.hash.to_hex()[..16]
    ));
    std::fs::write(&partial, &data[..1_000_000]).unwrap();
    struct Count(std::sync::Mutex<(u64, u64)>);
    impl distribusync_client::Progress for Count {
        fn start(&self, total: u64, done: u64) {
            *self.0.lock().unwrap() = (total, done);
        }
    }
    let count = Arc::new(Count(std::sync::Mutex::new((0, 0))));
    c.download(&p("big"), &dest, count.clone()).await.unwrap();
    assert_eq!(*count.0.lock().unwrap(), (data.len() as u64, 1_000_000));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!partial.exists());

    // A new version: a part that went bad is noticed by the hash and the
    // download starts over by itself; a part of an older version is
    // removed, never continued.
    let new = pseudo_random(2_500_000, 9);
    let info2 = put_bytes(&c, tmp.path(), "big", &new).await;
    let part_of = |h: &ContentHash| {
        dest.with_file_name(format!(".big.{}.distribusync-part", &h.to_hex()[..16]))
    };
    std::fs::write(part_of(&info.hash), &data[..500_000]).unwrap();
    std::fs::write(part_of(&info2.hash), vec![0u8; 700_000]).unwrap();
    let starts = Arc::new(Starts::default());
    c.download(&p("big"), &dest, starts.clone()).await.unwrap();
    assert_eq!(
        *starts.0.lock().unwrap(),
        [(2_500_000, 700_000), (2_500_000, 0)]
    );
    assert!(std::fs::read(&dest).unwrap() == new);
    let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["big"]);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_clients_lose_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let mut tasks = Vec::new();
    for client in 0..12 {
        let c = FilesClient::connect(&server.addr).await.unwrap();
        let dir = tmp.path().to_owned();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..8 {
                let content = format!("client {client} write {i}");
                let src = dir.join(format!("c{client}-{i}"));
                std::fs::write(&src, &content).unwrap();
                let own = c
                    .upload(&src, &p(&format!("own/{client}/{i}")), None, Arc::new(()))
                    .await
                    .unwrap();
                let shared = c
                    .upload(&src, &p("shared"), None, Arc::new(()))
                    .await
                    .unwrap();
                acked.push((own, shared, content));
            }
            acked
        }));
    }
    let mut revisions = std::collections::HashSet::new();
    let mut shared_acks = Vec::new();
    let c = server.client().await;
    for t in tasks {
        for (own, shared, content) in t.await.unwrap() {
            assert!(revisions.insert(own.revision) && revisions.insert(shared.revision));
            assert_eq!(
                get_bytes(&c, tmp.path(), own.path.as_str()).await,
                content.as_bytes()
            );
            shared_acks.push((shared.revision, content));
        }
    }
    // The shared file holds the last acknowledged write.
    shared_acks.sort();
    let last = shared_acks.last().unwrap();
    let now = c.stat(&p("shared")).await.unwrap();
    assert_eq!(now.revision, last.0);
    assert_eq!(get_bytes(&c, tmp.path(), "shared").await, last.1.as_bytes());
    assert_eq!(c.list_all(Some(&p("own"))).await.unwrap().len(), 96);
    server.stop().await;
}

#[tokio::test]
async fn reconcile_at_start_sees_changes_made_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "keep", b"keep").await;
    put_bytes(&c, tmp.path(), "edit", b"before").await;
    put_bytes(&c, tmp.path(), "gone", b"gone").await;
    put_bytes(&c, tmp.path(), "emptied/sub/x", b"x").await;
    server.stop().await;

    std::fs::write(root.join("edit"), b"after, by hand").unwrap();
    std::fs::remove_file(root.join("gone")).unwrap();
    std::fs::remove_file(root.join("emptied/sub/x")).unwrap();
    std::fs::create_dir_all(root.join("made/by/hand")).unwrap();
    std::fs::create_dir_all(root.join("new/dir")).unwrap();
    std::fs::write(root.join("new/dir/file"), b"dropped in").unwrap();

    let server = TestServer::start(&root).await;
    let c = server.client().await;
    let names: Vec<String> = c
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(names, ["edit", "keep", "new/dir/file"]);
    // Folders holding no file went, as they would have through the service,
    // so those names are free for files.
    assert!(!root.join("emptied").exists() && !root.join("made").exists());
    put_bytes(&c, tmp.path(), "emptied", b"now a file").await;
    let edit = c.stat(&p("edit")).await.unwrap();
    assert_eq!(edit.hash, ContentHash::of(b"after, by hand"));
    assert!(edit.revision > 3);
    assert_eq!(c.stat(&p("keep")).await.unwrap().revision, 1);
    // An empty folder made while the server runs gives way to a file too;
    // one that holds a file does not.
    std::fs::create_dir_all(root.join("later")).unwrap();
    put_bytes(&c, tmp.path(), "later", b"file").await;
    std::fs::write(tmp.path().join("onto-a-folder"), b"no").unwrap();
    let err = c
        .upload(
            &tmp.path().join("onto-a-folder"),
            &p("new"),
            None,
            Arc::new(()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("new: is a folder"), "{err}");

    // The change log tells watchers what happened.
    let mut w = c.watch(3).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Change(ch)) => seen.push(ch.kind),
            Some(WatchEvent::CaughtUp(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|k| matches!(k, ChangeKind::Delete(p) if p.as_str() == "gone"))
    );
    assert!(
        seen.iter()
            .any(|k| matches!(k, ChangeKind::Put(f) if f.path.as_str() == "new/dir/file"))
    );
    assert!(
        seen.iter()
            .any(|k| matches!(k, ChangeKind::Put(f) if f.path.as_str() == "edit"))
    );
    // A second restart with nothing changed records nothing new.
    let before = c.stat(&p("edit")).await.unwrap().revision;
    server.stop().await;
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    assert_eq!(c.stat(&p("edit")).await.unwrap().revision, before);
    server.stop().await;
}

async fn next(w: &mut distribusync_client::WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn watch_streams_the_log_then_live_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "one", b"1").await;
    let mut w = c.watch(0).await.unwrap();
    assert!(matches!(next(&mut w).await, WatchEvent::Change(ch) if ch.seq == 1));
    assert_eq!(next(&mut w).await, WatchEvent::CaughtUp(1));
    put_bytes(&c, tmp.path(), "two", b"2").await;
    c.rename(&p("two"), &p("three"), false, None).await.unwrap();
    c.delete(&p("one"), None).await.unwrap();
    assert!(matches!(next(&mut w).await, WatchEvent::Change(ch) if ch.seq == 2));
    assert!(
        matches!(next(&mut w).await, WatchEvent::Change(ch) if matches!(&ch.kind, ChangeKind::Rename { to, .. } if to.as_str() == "three"))
    );
    assert!(
        matches!(next(&mut w).await, WatchEvent::Change(ch) if ch.kind == ChangeKind::Delete(p("one")))
    );
    // A position the server never had: resync.
    let mut w2 = c.watch(999).await.unwrap();
    assert_eq!(next(&mut w2).await, WatchEvent::Resync(4));
    server.stop().await;
}

#[tokio::test]
async fn health_service_reports_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let ch = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "distribusync.v1.Files".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn a_batch_commits_each_file_on_its_own_merits() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let taken = put_bytes(&c, tmp.path(), "taken", b"already here").await;
    let mut items = Vec::new();
    for i in 0..300 {
        let local = tmp.path().join(format!("b{i}"));
        std::fs::write(&local, format!("batch file {i}")).unwrap();
        items.push((local, p(&format!("batch/{i:03}")), None));
    }
    let stale = tmp.path().join("stale");
    std::fs::write(&stale, b"new").unwrap();
    items.push((stale, p("taken"), Some(0))); // must not exist: refused
    items.push((tmp.path().join("missing-local"), p("never"), None));
    let results = c.upload_batch(items).await.unwrap();
    assert_eq!(results.len(), 302);
    assert!(results[..300].iter().all(Result::is_ok));
    assert!(
        matches!(&results[300], Err(ClientError::RevisionMismatch { current: Some(r), .. }) if *r == taken.revision)
    );
    assert!(matches!(&results[301], Err(ClientError::Local { .. })));
    assert_eq!(
        get_bytes(&c, tmp.path(), "batch/123").await,
        b"batch file 123"
    );
    assert_eq!(get_bytes(&c, tmp.path(), "taken").await, b"already here");
    assert_eq!(c.list_all(Some(&p("batch"))).await.unwrap().len(), 300);
    // Revisions are distinct and the log has one entry per file.
    let mut revs: Vec<u64> = results[..300]
        .iter()
        .map(|r| r.as_ref().unwrap().revision)
        .collect();
    revs.dedup();
    assert_eq!(revs.len(), 300);
    assert!(staging_is_empty(&server.root));

    // A wrong hash inside a batch is refused for that file only.
    let mut rc = raw(&server.addr);
    let msgs = vec![
        header("ok", 2, b"ok"),
        chunk(b"ok"),
        header("bad", 3, b"xyz"),
        chunk(b"abc"),
    ];
    let reply = rc
        .upload_batch(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        reply.results[0].result,
        Some(v1::upload_result::Result::File(_))
    ));
    match &reply.results[1].result {
        Some(v1::upload_result::Result::Error(e)) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
            assert!(e.message.contains("hash mismatch"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Over the data limit: refused as a whole, naming the limit.
    let big = vec![0u8; 6 << 20];
    let msgs: Vec<_> = (0..3)
        .flat_map(|i| {
            [
                header(&format!("big{i}"), big.len() as u64, &big),
                chunk(&big),
            ]
        })
        .collect();
    let err = rc.upload_batch(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().contains("bytes of data per batch"),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_batch_naming_one_path_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let mut rc = raw(&server.addr);
    let msgs = vec![
        header("same", 1, b"a"),
        chunk(b"a"),
        header("same", 1, b"b"),
        chunk(b"b"),
    ];
    let err = rc.upload_batch(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("same: appears twice"),
        "{}",
        err.message()
    );
    assert!(
        server
            .client()
            .await
            .list_all(None)
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn deletes_and_uploads_in_one_folder_do_not_trip_over_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    // Each round: the folder's only file goes while a new one arrives, so
    // the delete prunes the folder just as the upload needs it.
    for round in 0..40 {
        put_bytes(&c, tmp.path(), &format!("d/old{round}"), b"x").await;
        let (c1, c2) = (c.clone(), c.clone());
        let dir = tmp.path().to_owned();
        let del = tokio::spawn(async move { c1.delete(&p(&format!("d/old{round}")), None).await });
        let up = tokio::spawn(async move {
            let src = dir.join(format!("new{round}"));
            std::fs::write(&src, b"y").unwrap();
            c2.upload(&src, &p(&format!("d/new{round}")), None, Arc::new(()))
                .await
        });
        del.await.unwrap().unwrap();
        up.await.unwrap().unwrap();
        c.delete(&p(&format!("d/new{round}")), None).await.unwrap();
    }
    assert!(c.list_all(None).await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_index_commit_that_fails_after_the_install_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "doc", b"old version").await;
    put_bytes(&c, tmp.path(), "gone", b"to delete").await;

    // Another process holds the index locked: the server's commits fail
    // (after it has put the new content in place).
    let blocker = rusqlite::Connection::open(root.join(".distribusync/index.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The new version has the old one's size and modified time (as after
    // `cp -p`): only its hash tells them apart.
    let old = c.stat(&p("doc")).await.unwrap();
    std::fs::write(tmp.path().join("new"), b"new version").unwrap();
    assert_eq!(old.size, b"new version".len() as u64);
    std::fs::File::options()
        .write(true)
        .open(tmp.path().join("new"))
        .unwrap()
        .set_modified(old.modified)
        .unwrap();
    let err = c
        .upload(&tmp.path().join("new"), &p("doc"), None, Arc::new(()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Server(_)), "{err:?}");
    assert!(c.delete(&p("gone"), None).await.is_err());
    // Until the lock goes, the index cannot be written at all.
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);

    // The server brings the index in step with what is on disk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let doc = c.stat(&p("doc")).await.unwrap();
        let gone = c.stat(&p("gone")).await;
        if doc.hash == ContentHash::of(b"new version") && gone.is_err() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never repaired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_bytes(&c, tmp.path(), "doc").await, b"new version");
    server.stop().await;
}

#[tokio::test]
async fn bad_resume_requests_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let mut rc = raw(&server.addr);
    let offset_request =
        |path: &str, modified: Option<prost_types::Timestamp>| v1::UploadOffsetRequest {
            path: path.into(),
            size: 10,
            modified,
        };
    let now = Some(distribusync_proto::timestamp(std::time::SystemTime::now()));
    let err = rc
        .upload_offset(offset_request("../x", now))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("../x"), "{err:?}");
    let err = rc
        .upload_offset(offset_request("a", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("modified time"), "{err:?}");
    // Nothing kept: 0.
    let kept = rc.upload_offset(offset_request("a", now)).await.unwrap();
    assert_eq!(kept.into_inner().offset, 0);

    // A resume offset past the announced size.
    let data = b"0123456789";
    let mut first = header("a", data.len() as u64, data);
    if let Some(v1::upload_request::Msg::Header(h)) = &mut first.msg {
        h.offset = 11;
    }
    let err = rc
        .upload(tokio_stream::iter(vec![first]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("past the announced size"), "{err:?}");
    // A batch cannot resume.
    let mut first = header("b", data.len() as u64, data);
    if let Some(v1::upload_request::Msg::Header(h)) = &mut first.msg {
        h.offset = 1;
    }
    let err = rc
        .upload_batch(tokio_stream::iter(vec![first, chunk(&data[1..])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cannot resume"), "{err:?}");
    let c = server.client().await;
    assert!(c.list_all(None).await.unwrap().is_empty());
    server.stop().await;
}
