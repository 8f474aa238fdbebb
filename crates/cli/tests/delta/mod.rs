//! Delta transfer through the real binary: a server killed (SIGKILL)
//! during a delta upload keeps the old version whole; `put` and `get` go by
//! delta for an edit.

use std::path::Path;

use distribusync_core::delta::{
    Bitmap, PARAMS_V1, chunks_requested, manifest_of_bytes, ranges_to_send,
};
use distribusync_proto::v1::{self, files_client::FilesClient};
use tokio_stream::wrappers::ReceiverStream;

use super::{Server, noise, ok, tmp, wait_until};

/// Bytes of the biggest staging file of `master` (0 if none).
fn staged(master: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p)
                        } else {
                            e.metadata().map(|m| m.len()).unwrap_or(0)
                        }
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }
    walk(&master.join(".distribusync/staging"))
}

/// Starts a delta upload of `new` as `path` and sends `send` of the bytes
/// the server asks for; returns the stream's sender (kept open) and how
/// many bytes the staging file holds once those have been written.
async fn start_delta(
    addr: &str,
    path: &str,
    new: &[u8],
    send: f64,
) -> (tokio::sync::mpsc::Sender<v1::DeltaUploadRequest>, u64) {
    use v1::delta_upload_request::Msg;
    let m = manifest_of_bytes(new, &PARAMS_V1);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let msg = |m| v1::DeltaUploadRequest { msg: Some(m) };
    tx.send(msg(Msg::Begin(v1::DeltaBegin {
        path: path.into(),
        manifest: Some(distribusync_proto::delta::manifest_header(&m)),
        ..Default::default()
    })))
    .await
    .unwrap();
    for page in distribusync_proto::delta::manifest_pages(&m) {
        tx.send(msg(Msg::Page(page))).await.unwrap();
    }
    let mut client = FilesClient::connect(addr.to_owned()).await.unwrap();
    let mut replies = client
        .delta_upload(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::delta_upload_response::Msg::Need(need)) =
        replies.message().await.unwrap().unwrap().msg
    else {
        panic!("no DeltaNeed")
    };
    let bits = Bitmap::from_bytes(need.missing, m.chunks.len()).unwrap();
    let ranges = ranges_to_send(&m, &chunks_requested(&m, &bits).unwrap(), None).unwrap();
    let first = ranges.first().expect("something to send");
    let literal: Vec<u8> = ranges
        .iter()
        .flat_map(|r| new[r.offset as usize..(r.offset + r.len) as usize].to_vec())
        .collect();
    let n = (literal.len() as f64 * send) as usize;
    // Sent in whole chunks' worth: the server writes a chunk once all of
    // it is here; the first literal range is one run of whole chunks.
    let n = n.min(first.len as usize);
    let chunk_ends: Vec<u64> = m.offsets().map(|(o, c)| o + u64::from(c.len)).collect();
    let end = chunk_ends
        .iter()
        .copied()
        .filter(|&e| e > first.offset && e - first.offset <= n as u64)
        .max()
        .unwrap_or(first.offset);
    let take = (end - first.offset) as usize;
    if take > 0 {
        tx.send(msg(Msg::Data(literal[..take].to_vec())))
            .await
            .unwrap();
    }
    // Keep the reply stream alive with the sender.
    std::mem::forget(replies);
    (tx, first.offset + take as u64)
}

#[test]
fn a_server_killed_during_a_delta_upload_keeps_the_old_version_whole() {
    let (_t, dir) = tmp();
    let master = dir.join("MASTER");
    let mut server = Server::start(&dir);
    let base = noise(32 << 20, 21);
    std::fs::write(dir.join("big.bin"), &base).unwrap();
    ok(&dir, &server.addr, &["put", "big.bin"]);
    let mut new = base[..24 << 20].to_vec();
    new.extend(noise(8 << 20, 22));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Killed after the copies (no data yet), then half way through the data.
    for send in [0.0, 0.5] {
        let (tx, staged_len) = rt.block_on(start_delta(&server.addr, "big.bin", &new, send));
        wait_until("the staging file to hold what was sent", || {
            staged(&master) >= staged_len
        });
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        drop(tx);
        assert!(
            std::fs::read(master.join("big.bin")).unwrap() == base,
            "after a kill at {send}"
        );
        server = Server::start(&dir);
        let got = dir.join(format!("got-{send}"));
        ok(
            &dir,
            &server.addr,
            &["get", "big.bin", got.to_str().unwrap()],
        );
        assert!(std::fs::read(&got).unwrap() == base);
        // Answered only once the store is open, which empties staging.
        assert_eq!(staged(&master), 0, "a restart empties staging");
    }
    // Done to the end, by `put`: delta, and the new version is whole.
    std::fs::write(dir.join("big.bin"), &new).unwrap();
    ok(&dir, &server.addr, &["put", "big.bin"]);
    assert!(std::fs::read(master.join("big.bin")).unwrap() == new);
    wait_until("the server to log the delta upload", || {
        server.logged(&["uploaded by delta", "big.bin"])
    });
    // And `get` into the old version brings the edit.
    std::fs::write(dir.join("old.bin"), &base).unwrap();
    ok(&dir, &server.addr, &["get", "big.bin", "old.bin"]);
    assert!(std::fs::read(dir.join("old.bin")).unwrap() == new);
}
