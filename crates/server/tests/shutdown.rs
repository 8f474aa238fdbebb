//! Shutdown: an upload in progress finishes (within the grace period),
//! while the server stops taking new calls (GOAWAY on open connections,
//! the listener closed).

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use distribusync_core::ContentHash;
use distribusync_proto::v1::{self, files_client};
use tokio_stream::wrappers::ReceiverStream;

fn raw(addr: &str) -> files_client::FilesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect_lazy();
    files_client::FilesClient::new(ch)
}

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

#[tokio::test]
async fn shutdown_lets_an_upload_in_progress_finish_and_takes_no_new_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let addr = server.addr.clone();
    let root = server.root.clone();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
            path: "a.bin".into(),
            size: data.len() as u64,
            hash: ContentHash::of(&data).0.to_vec(),
            modified: None,
            if_revision: None,
            offset: 0,
        })),
    })
    .await
    .unwrap();
    let first = 1 << 20;
    tx.send(v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Chunk(data[..first].to_vec())),
    })
    .await
    .unwrap();
    let mut rc = raw(&addr);
    let call = tokio::spawn(async move { rc.upload(ReceiverStream::new(rx)).await });
    eventually("the first MiB staged", || {
        staged_bytes(&root) == first as u64
    })
    .await;

    // Stop while the upload is half way.
    let stopping = tokio::spawn(server.stop());
    // New calls are refused: the listener is closed, and the open
    // connection was told to go away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = raw(&addr)
            .stat(v1::StatRequest {
                path: "a.bin".into(),
            })
            .await;
        if r.as_ref()
            .is_err_and(|s| s.code() == tonic::Code::Unavailable)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still answering: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stopping.is_finished(), "the server waits for the upload");

    // The rest arrives: the upload completes and is stored.
    for part in data[first..].chunks(1 << 20) {
        tx.send(v1::UploadRequest {
            msg: Some(v1::upload_request::Msg::Chunk(part.to_vec())),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the upload ends")
        .unwrap()
        .expect("the upload in progress completes during shutdown");
    assert_eq!(answer.into_inner().file.unwrap().size, data.len() as u64);
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the server stops once the upload is done")
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), data);
}
