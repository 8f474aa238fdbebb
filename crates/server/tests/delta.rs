//! Delta transfer through the real client against a real server: bytes
//! counted by the server's Stats RPC, results compared byte for byte.

mod common;

use std::sync::Arc;

use common::{TestServer, get_bytes, p, put_bytes};
use distribusync_client::{ClientError, DeltaOutcome, FilesClient};
use distribusync_core::ContentHash;
use distribusync_core::delta::{PARAMS_V1, manifest_of_bytes};
use distribusync_proto::v1::{self, files_client};
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1 << 20;

/// Deterministic incompressible bytes.
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The edits of the issue, each applied to `base`.
fn edits(base: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mid = base.len() / 2;
    let mut overwrite = base.to_vec();
    overwrite[mid] ^= 0xff;
    let mut insert = base.to_vec();
    insert.splice(1000..1000, random(100, 7));
    let mut delete = base.to_vec();
    delete.drain(mid..mid + 100);
    let mut append = base.to_vec();
    append.extend(random(MIB, 9));
    let truncate = base[..base.len() - MIB].to_vec();
    vec![
        ("overwrite", overwrite),
        ("insert", insert),
        ("delete", delete),
        ("append", append),
        ("truncate", truncate),
    ]
}

/// Bytes a transfer of `data` may move: three average chunks plus the
/// manifest (35 bytes a chunk) and 64 KiB of message framing.
fn allowance(data: &[u8]) -> u64 {
    let chunks = data.len() / PARAMS_V1.coarse().avg as usize + 1;
    3 * u64::from(PARAMS_V1.coarse().avg) + 40 * chunks as u64 + 64 * 1024
}

async fn stats(c: &FilesClient) -> (u64, u64) {
    c.stats().await.unwrap()
}

#[tokio::test]
async fn each_edit_of_a_64_mib_file_uploads_and_downloads_only_near_the_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let base = random(64 * MIB, 1);
    for (kind, new) in edits(&base) {
        // Upload: the server holds `base` (sent whole), the client `new`.
        let remote = format!("up-{kind}.bin");
        put_bytes(&c, tmp.path(), &remote, &base).await;
        let local = tmp.path().join(format!("new-{kind}"));
        std::fs::write(&local, &new).unwrap();
        let before = stats(&c).await;
        let out = c
            .upload_delta(&local, &p(&remote), None, None, false, Arc::new(()))
            .await
            .unwrap();
        let received = stats(&c).await.0 - before.0;
        let DeltaOutcome::Done { file, sent } = out else {
            panic!("{kind}: declined");
        };
        assert_eq!(file.hash, ContentHash::of(&new), "{kind}");
        assert!(
            received <= allowance(&new),
            "{kind}: uploading moved {received} bytes ({sent} of chunks), more than {}",
            allowance(&new)
        );
        assert_eq!(get_bytes(&c, tmp.path(), &remote).await, new, "{kind}");

        // Download: the server holds `new`, the client `base`.
        let remote = format!("down-{kind}.bin");
        put_bytes(&c, tmp.path(), &remote, &new).await;
        let old = tmp.path().join(format!("old-{kind}"));
        std::fs::write(&old, &base).unwrap();
        let before = stats(&c).await;
        let (info, fetched) = c
            .download_delta(&p(&remote), &old, Arc::new(()))
            .await
            .unwrap();
        let sent = stats(&c).await.1 - before.1;
        assert_eq!(info.hash, ContentHash::of(&new), "{kind}");
        assert!(
            sent <= allowance(&new),
            "{kind}: downloading moved {sent} bytes ({fetched} of chunks), more than {}",
            allowance(&new)
        );
        assert!(std::fs::read(&old).unwrap() == new, "{kind}: not byte-identical");
    }
    server.stop().await;
}
