//! One client must never stop or exhaust the service: clients that stall,
//! stay silent, open too many connections or leave many interrupted uploads
//! behind (issue 9).

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::TestServer;
use distribusync_client::FilesClient;
use distribusync_core::{ContentHash, RemotePath};
use distribusync_proto::v1::{self, files_client};
use distribusync_server::ServerConfig;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Safety net for waits on events; never a measured time.
const SAFETY: Duration = Duration::from_secs(30);

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

/// A raw client whose stream windows are small (HTTP/2's default), as a
/// client that reads slowly or not at all would have.
fn raw_small_window(addr: &str) -> files_client::FilesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(16 << 20))
        .connect_lazy();
    files_client::FilesClient::new(ch)
        .max_decoding_message_size(distribusync_core::limits::MAX_MESSAGE_SIZE)
}

/// An upload header; an empty `hash` means it follows the data.
fn header(path: &str, size: u64, hash: &[u8], modified: Option<SystemTime>) -> v1::UploadRequest {
    v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
            path: path.into(),
            size,
            hash: hash.to_vec(),
            modified: modified.map(distribusync_proto::timestamp),
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

/// Polls `check` until it holds (a safety net, not a timing).
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a raw connection to its end: true when the server closed it
/// (end of file, or a reset), false when it stayed open past the safety net.
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut sink = Vec::new();
    match tokio::time::timeout(SAFETY, tcp.read_to_end(&mut sink)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        Err(_) => false,
    }
}

/// Stat, List, Upload and Download from a new client all work (within the
/// safety net).
async fn still_served(server: &TestServer, dir: &std::path::Path, big: &[u8], while_: &str) {
    let other = FilesClient::connect(&server.addr).await.unwrap();
    let work = async {
        assert_eq!(
            other.stat(&p("big.bin")).await.unwrap().size,
            big.len() as u64
        );
        let listed = other.list_all(None).await.unwrap();
        assert!(listed.iter().any(|f| f.path == p("big.bin")));
        let small = dir.join("small.txt");
        std::fs::write(&small, b"still served").unwrap();
        other
            .upload(&small, &p("small.txt"), None, Arc::new(()))
            .await
            .unwrap();
        let back = dir.join("back.bin");
        let _ = std::fs::remove_file(&back);
        other
            .download(&p("big.bin"), &back, Arc::new(()))
            .await
            .unwrap();
        assert!(std::fs::read(&back).unwrap() == big);
    };
    tokio::time::timeout(SAFETY, work)
        .await
        .unwrap_or_else(|_| panic!("other clients are served while {while_}"));
}

/// Uploads that sent a header and then nothing, and downloads nobody
/// reads, twice as many of each as the blocking pool has threads: every
/// other client's Stat, List, Upload and Download still work. (Each used to
/// hold a pool thread while it waited on the network; a full pool froze all
/// file operations.)
#[test]
fn stalled_uploads_and_unread_downloads_starve_no_other_client() {
    const POOL: usize = 8;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(POOL)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(&dir.path().join("master")).await;
        let client = server.client().await;
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let local = dir.path().join("big.bin");
        std::fs::write(&local, &big).unwrap();
        client
            .upload(&local, &p("big.bin"), None, Arc::new(()))
            .await
            .unwrap();

        let staller = raw_small_window(&server.addr);
        let stalled = 2 * POOL;
        let mut uploads = Vec::new();
        for i in 0..stalled {
            let mut c = staller.clone();
            let first = header(
                &format!("stall/{i}.bin"),
                8 << 20,
                &ContentHash::of(b"x").0,
                None,
            );
            let stream = futures::stream::iter([first]).chain(futures::stream::pending());
            uploads.push(tokio::spawn(async move { c.upload(stream).await }));
        }
        let root = server.root.clone();
        until("every stalled upload to begin", || {
            let n = common::staged_files(&root);
            async move { n == stalled }
        })
        .await;
        still_served(&server, dir.path(), &big, "uploads stall").await;
        let mut downloads = Vec::new();
        for _ in 0..stalled {
            let mut c = staller.clone();
            let req = v1::DownloadRequest {
                path: "big.bin".into(),
                offset: 0,
                length: None,
            };
            let mut s = tokio::time::timeout(SAFETY, c.download(req))
                .await
                .expect("a download starts")
                .unwrap()
                .into_inner();
            // The file's info arrives; the data is never read.
            let first = tokio::time::timeout(SAFETY, s.message())
                .await
                .expect("info arrives");
            assert!(first.unwrap().is_some());
            downloads.push(s);
        }

        still_served(&server, dir.path(), &big, "downloads stall").await;

        drop(downloads);
        for u in uploads {
            u.abort();
        }
        drop(staller);
        server.stop().await;
    });
}

/// An upload that stops sending ends after the idle timeout with
/// DEADLINE_EXCEEDED naming the flag, and keeps what arrived for resuming,
/// as a broken connection would.
#[tokio::test]
async fn an_upload_idle_past_the_idle_timeout_ends_and_keeps_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().join("master"));
    config.transport.idle_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8).collect();
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let first = header(
        "idle.bin",
        data.len() as u64,
        &ContentHash::of(&data).0,
        Some(modified),
    );
    let stream =
        futures::stream::iter([first, chunk(&data[..1 << 20])]).chain(futures::stream::pending());
    let mut raw = raw_small_window(&server.addr);
    let status = tokio::time::timeout(SAFETY, raw.upload(stream))
        .await
        .expect("the idle upload ends")
        .expect_err("an idle upload fails");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("--idle-timeout"), "{status:?}");

    let client = server.client().await;
    until("the received part to be kept", || {
        let client = client.clone();
        async move {
            client
                .upload_offset(&p("idle.bin"), 8 << 20, modified)
                .await
                .unwrap()
                == 1 << 20
        }
    })
    .await;
    server.stop().await;
}

/// Past `max_connections`, new connections are closed at once; the
/// established ones keep working, and a freed place is taken again.
#[tokio::test]
async fn connections_over_the_bound_are_closed_and_established_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().join("master"));
    config.transport.max_connections = 2;
    let server = TestServer::start_with(config).await;
    let tcp_addr = server.addr.trim_start_matches("http://").to_owned();
    let a = FilesClient::connect(&server.addr).await.unwrap();
    let b = FilesClient::connect(&server.addr).await.unwrap();
    let local = dir.path().join("f.txt");
    std::fs::write(&local, b"hello").unwrap();
    a.upload(&local, &p("f.txt"), None, Arc::new(()))
        .await
        .unwrap();
    b.stat(&p("f.txt")).await.unwrap();

    let mut third = tokio::net::TcpStream::connect(&tcp_addr).await.unwrap();
    assert!(
        closed_by_server(&mut third).await,
        "a third connection is closed"
    );
    a.stat(&p("f.txt")).await.unwrap();
    b.stat(&p("f.txt")).await.unwrap();

    drop(b);
    let addr = server.addr.clone();
    until("a freed place to be taken by a new client", || {
        let addr = addr.clone();
        async move {
            match FilesClient::connect(&addr).await {
                Ok(c) => c.stat(&p("f.txt")).await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    a.stat(&p("f.txt")).await.unwrap();
    server.stop().await;
}

/// A connection that sends nothing, or only half the HTTP/2 preface, is
/// closed after the handshake timeout; a client connected before it keeps
/// working.
#[tokio::test]
async fn a_connection_without_a_handshake_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().join("master"));
    config.transport.handshake_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let tcp_addr = server.addr.trim_start_matches("http://").to_owned();
    let a = FilesClient::connect(&server.addr).await.unwrap();
    let local = dir.path().join("f.txt");
    std::fs::write(&local, b"hello").unwrap();
    a.upload(&local, &p("f.txt"), None, Arc::new(()))
        .await
        .unwrap();

    let mut silent = tokio::net::TcpStream::connect(&tcp_addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(&tcp_addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_by_server(&mut silent).await,
        "a silent connection is closed"
    );
    assert!(
        closed_by_server(&mut half).await,
        "a half preface is closed"
    );
    // Older than both, past its own deadline: still served.
    a.stat(&p("f.txt")).await.unwrap();
    server.stop().await;
}

/// Sends a header (hash to follow) and the first MiB of an 8 MiB file,
/// then ends the stream without the hash: the server keeps the MiB for
/// resuming. Waits until it shows.
async fn leave_part(server: &TestServer, client: &FilesClient, path: &str, modified: SystemTime) {
    let first = header(path, 8 << 20, &[], Some(modified));
    let stream = futures::stream::iter([first, chunk(&[7u8; 1 << 20])]);
    let mut raw = raw_small_window(&server.addr);
    let ended = tokio::time::timeout(SAFETY, raw.upload(stream))
        .await
        .expect("the upload ends");
    assert_eq!(ended.unwrap_err().code(), tonic::Code::InvalidArgument);
    until("the part to be kept", || async {
        client
            .upload_offset(&p(path), 8 << 20, modified)
            .await
            .unwrap()
            == 1 << 20
    })
    .await;
}

/// Past the bound on kept parts (by count, then by bytes), the oldest part
/// goes: resuming it starts from 0, the newer ones still resume.
#[tokio::test]
async fn kept_parts_over_the_bound_go_oldest_first() {
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let kept = |c: FilesClient, path: &'static str| async move {
        c.upload_offset(&p(path), 8 << 20, modified).await.unwrap()
    };

    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().join("by-count"));
    config.store.max_kept_parts = 2;
    let server = TestServer::start_with(config).await;
    let c = server.client().await;
    for path in ["a.bin", "b.bin", "c.bin"] {
        leave_part(&server, &c, path, modified).await;
    }
    assert_eq!(kept(c.clone(), "a.bin").await, 0, "the oldest part is gone");
    assert_eq!(kept(c.clone(), "b.bin").await, 1 << 20);
    assert_eq!(kept(c.clone(), "c.bin").await, 1 << 20);
    server.stop().await;

    let mut config = ServerConfig::new(dir.path().join("by-bytes"));
    config.store.max_kept_bytes = (1 << 20) + (1 << 19);
    let server = TestServer::start_with(config).await;
    let c = server.client().await;
    for path in ["a.bin", "b.bin"] {
        leave_part(&server, &c, path, modified).await;
    }
    assert_eq!(kept(c.clone(), "a.bin").await, 0, "the oldest part is gone");
    assert_eq!(kept(c.clone(), "b.bin").await, 1 << 20);
    server.stop().await;
}
