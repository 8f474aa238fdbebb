//! Delta transfer through the real client against a real server: bytes
//! counted by the server's Stats RPC, results compared byte for byte.

mod common;

use std::sync::Arc;

use common::{TestServer, get_bytes, p, put_bytes};
use distribusync_client::{DeltaOutcome, FilesClient};
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

/// Bytes an edit in place (overwrite, insert, delete) may move with the
/// fine round: the "no more than rsync" (96 KiB measured for a
/// 64 MiB file) rounded up. Without it a whole coarse chunk (1-4 MiB) goes.
const NEAR_EDIT: u64 = 128 * 1024;

/// What a transfer of one `kind` of edit of `new` may move.
fn bound(kind: &str, new: &[u8]) -> u64 {
    match kind {
        "overwrite" | "insert" | "delete" => NEAR_EDIT,
        _ => allowance(new),
    }
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
    put_bytes(&c, tmp.path(), "base.bin", &base).await;
    for (kind, new) in edits(&base) {
        // Upload: the server holds `base` (as base.bin: chunks are found
        // in any file), the client `new`.
        let remote = p(&format!("{kind}.bin"));
        let local = tmp.path().join(format!("new-{kind}"));
        std::fs::write(&local, &new).unwrap();
        let before = stats(&c).await;
        let out = c
            .upload_delta(&local, &remote, None, None, false, Arc::new(()))
            .await
            .unwrap();
        let received = stats(&c).await.0 - before.0;
        let DeltaOutcome::Done { file, sent } = out else {
            panic!("{kind}: declined");
        };
        assert_eq!(file.hash, ContentHash::of(&new), "{kind}");
        assert!(
            received <= bound(kind, &new),
            "{kind}: uploading moved {received} bytes ({sent} of chunks), more than {}",
            bound(kind, &new)
        );
        eprintln!("{kind}: upload moved {received} bytes ({sent} of data)");
        let stored = std::fs::read(server.root.join(remote.as_str())).unwrap();
        assert!(
            stored == new,
            "{kind}: the server's copy is not byte-identical"
        );

        // Download: the server holds `new`, the client `base`.
        let old = tmp.path().join(format!("old-{kind}"));
        std::fs::write(&old, &base).unwrap();
        let before = stats(&c).await;
        let (info, fetched) = c.download_delta(&remote, &old, Arc::new(())).await.unwrap();
        let sent = stats(&c).await.1 - before.1;
        assert_eq!(info.hash, ContentHash::of(&new), "{kind}");
        assert!(
            sent <= bound(kind, &new),
            "{kind}: downloading moved {sent} bytes ({fetched} of chunks), more than {}",
            bound(kind, &new)
        );
        eprintln!("{kind}: download moved {sent} bytes ({fetched} of data)");
        assert!(
            std::fs::read(&old).unwrap() == new,
            "{kind}: not byte-identical"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_copy_uploads_with_zero_chunk_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let data = random(8 * MIB, 3);
    put_bytes(&c, tmp.path(), "videos/a.bin", &data).await;
    let local = tmp.path().join("copy");
    std::fs::write(&local, &data).unwrap();
    let before = stats(&c).await;
    let out = c
        .upload_delta(
            &local,
            &p("videos/b.bin"),
            Some(0),
            None,
            true,
            Arc::new(()),
        )
        .await
        .unwrap();
    let received = stats(&c).await.0 - before.0;
    let DeltaOutcome::Done { file, sent } = out else {
        panic!("declined");
    };
    assert_eq!((sent, file.hash), (0, ContentHash::of(&data)));
    // Only the manifest and the request's framing.
    assert!(received < 4096, "{received} bytes for a copy");
    assert_eq!(get_bytes(&c, tmp.path(), "videos/b.bin").await, data);
    // A file put there by hand has no manifest yet: computed on first need.
    std::fs::write(server.root.join("by-hand.bin"), &data).unwrap();
    server.stop().await;
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let local = tmp.path().join("edited");
    let mut edited = data.clone();
    edited[100] ^= 1;
    std::fs::write(&local, &edited).unwrap();
    let before = stats(&c).await;
    let out = c
        .upload_delta(&local, &p("by-hand.bin"), None, None, true, Arc::new(()))
        .await
        .unwrap();
    let DeltaOutcome::Done { sent, .. } = out else {
        panic!("declined");
    };
    assert!(sent <= 4 * MIB as u64, "{sent}");
    assert!(stats(&c).await.0 - before.0 <= allowance(&edited));
    assert_eq!(get_bytes(&c, tmp.path(), "by-hand.bin").await, edited);
    server.stop().await;
}

#[tokio::test]
async fn put_and_get_choose_delta_above_the_threshold_and_whole_below() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let policy = distribusync_client::DeltaPolicy {
        min_size: 4 * MIB as u64,
    };
    let c = server.client().await.with_delta(policy);
    let data = random(16 * MIB, 5);
    let local = tmp.path().join("f");
    std::fs::write(&local, &data).unwrap();
    // New content: the server lacks all of it, so it goes whole.
    let before = stats(&c).await;
    c.put(&local, &p("f.bin"), None, Arc::new(()))
        .await
        .unwrap();
    assert!(stats(&c).await.0 - before.0 >= data.len() as u64);
    // An edit: delta.
    let mut edited = data.clone();
    edited[8 * MIB] ^= 1;
    std::fs::write(&local, &edited).unwrap();
    let before = stats(&c).await;
    let info = c
        .put(&local, &p("f.bin"), None, Arc::new(()))
        .await
        .unwrap();
    assert_eq!(info.hash, ContentHash::of(&edited));
    assert!(stats(&c).await.0 - before.0 <= NEAR_EDIT);
    // Get into the old version: delta; into nothing: whole.
    let old = tmp.path().join("old");
    std::fs::write(&old, &data).unwrap();
    let before = stats(&c).await;
    c.get(&p("f.bin"), &old, Arc::new(())).await.unwrap();
    assert!(stats(&c).await.1 - before.1 <= NEAR_EDIT);
    assert!(std::fs::read(&old).unwrap() == edited);
    let fresh = tmp.path().join("fresh");
    c.get(&p("f.bin"), &fresh, Arc::new(())).await.unwrap();
    assert!(std::fs::read(&fresh).unwrap() == edited);
    server.stop().await;
}

fn raw(addr: &str) -> files_client::FilesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect_lazy();
    files_client::FilesClient::new(ch).max_decoding_message_size(16 << 20)
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
    files_under(&root.join(".distribusync/staging")) == 0
}

/// Sends a raw delta upload and returns the server's final status: the
/// manifest of `m`, then (if asked for anything) `data`.
async fn raw_delta(
    addr: &str,
    begin: v1::DeltaBegin,
    m: &distribusync_core::delta::Manifest,
    data: Vec<u8>,
) -> Result<v1::DeltaUploadResponse, tonic::Status> {
    use v1::delta_upload_request::Msg;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let send = |msg| v1::DeltaUploadRequest { msg: Some(msg) };
    tx.send(send(Msg::Begin(begin))).await.unwrap();
    for page in distribusync_proto::delta::manifest_pages(m) {
        let _ = tx.send(send(Msg::Page(page))).await;
    }
    let mut replies = raw(addr)
        .delta_upload(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = replies.message().await?.expect("a reply");
    if let Some(v1::delta_upload_response::Msg::Need(_)) = first.msg {
        let _ = tx.send(send(Msg::Data(data))).await;
        return Ok(replies.message().await?.expect("a reply"));
    }
    Ok(first)
}

fn begin(path: &str, m: &distribusync_core::delta::Manifest) -> v1::DeltaBegin {
    v1::DeltaBegin {
        path: path.into(),
        manifest: Some(distribusync_proto::delta::manifest_header(m)),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_delta_input_is_refused_naming_the_problem_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let old = random(3 * MIB, 11);
    let info = put_bytes(&c, tmp.path(), "f.bin", &old).await;
    let new = random(3 * MIB, 12);
    let m = manifest_of_bytes(&new, &PARAMS_V1);
    let check =
        |what: &str, r: Result<v1::DeltaUploadResponse, tonic::Status>, code, text: &str| {
            let e = r.expect_err(what);
            assert_eq!(e.code(), code, "{what}: {e:?}");
            assert!(e.message().contains(text), "{what}: {}", e.message());
        };

    // A manifest whose chunks do not add up to its size.
    let mut wrong = m.clone();
    wrong.size += 1;
    let r = raw_delta(&server.addr, begin("f.bin", &wrong), &wrong, new.clone()).await;
    check("size", r, tonic::Code::InvalidArgument, "add up to");

    // Bytes that do not match their chunk's hash.
    let mut bad = new.clone();
    bad[10] ^= 1;
    let r = raw_delta(&server.addr, begin("f.bin", &m), &m, bad).await;
    check(
        "hash",
        r,
        tonic::Code::InvalidArgument,
        "does not match chunk",
    );

    // Ten million chunks: refused at the header, naming the limit.
    let mut huge = v1::DeltaBegin {
        ..begin("f.bin", &m)
    };
    huge.manifest.as_mut().unwrap().chunk_count = 10_000_000;
    let empty = distribusync_core::delta::Manifest {
        chunks: vec![],
        ..m.clone()
    };
    let r = raw_delta(&server.addr, huge, &empty, vec![]).await;
    check(
        "count",
        r,
        tonic::Code::ResourceExhausted,
        "10000000 chunks",
    );

    // A base revision that no longer exists.
    let gone = v1::DeltaBegin {
        base_revision: Some(info.revision + 1000),
        ..begin("f.bin", &m)
    };
    let r = raw_delta(&server.addr, gone, &m, new.clone()).await;
    check(
        "base",
        r,
        tonic::Code::FailedPrecondition,
        "no longer exists",
    );

    // A range past the end of the file.
    let r = raw(&server.addr)
        .download(v1::DownloadRequest {
            path: "f.bin".into(),
            offset: old.len() as u64 - 10,
            length: Some(20),
        })
        .await
        .map(|_| ());
    let e = r.expect_err("range");
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert!(e.message().contains("past the end"), "{}", e.message());

    // Nothing installed, nothing left in staging.
    assert_eq!(c.stat(&p("f.bin")).await.unwrap(), info);
    assert_eq!(get_bytes(&c, tmp.path(), "f.bin").await, old);
    assert!(staging_is_empty(&server.root));

    // And the same request done right works.
    let r = raw_delta(&server.addr, begin("f.bin", &m), &m, new.clone()).await;
    assert!(matches!(
        r.unwrap().msg,
        Some(v1::delta_upload_response::Msg::File(_))
    ));
    assert_eq!(get_bytes(&c, tmp.path(), "f.bin").await, new);
    server.stop().await;
}

#[tokio::test]
async fn bytes_changed_by_hand_behind_the_index_are_not_copied_into_a_new_version() {
    // The index still names the file's old chunks there.
    edit_on_a_source_scribbled_on_by_hand(51, false, false).await;
}

/// Uploads 24 MiB, writes into the middle of the server's file in place
/// (its modified time put back with `put_time_back`), then sends an edit
/// near the start as a delta, which would copy the rest from that file:
/// the upload fails as a changed source (try again), the file is left as
/// it was by hand and nothing stays in staging. `decline_over_half` is
/// the client's flag of that name.
async fn edit_on_a_source_scribbled_on_by_hand(
    seed: u64,
    put_time_back: bool,
    decline_over_half: bool,
) {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let data = random(24 * MIB, seed);
    put_bytes(&c, tmp.path(), "disk.img", &data).await;
    let on_server = server.root.join("disk.img");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&on_server)
        .unwrap();
    let time = file.metadata().unwrap().modified().unwrap();
    file.write_all_at(b"scribbled", 12 * MIB as u64).unwrap();
    if put_time_back {
        file.set_modified(time).unwrap();
    }
    drop(file);
    let by_hand = std::fs::read(&on_server).unwrap();
    let mut edited = data.clone();
    edited[100] ^= 1;
    let local = tmp.path().join("edited");
    std::fs::write(&local, &edited).unwrap();
    let e = c
        .upload_delta(
            &local,
            &p("disk.img"),
            None,
            None,
            decline_over_half,
            Arc::new(()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, distribusync_client::ClientError::Restart(m) if m.contains("changed during the upload")),
        "{e:?}"
    );
    assert!(
        std::fs::read(&on_server).unwrap() == by_hand,
        "left as it was"
    );
    assert!(staging_is_empty(&server.root));
    server.stop().await;
}

/// Makes a token on `root` as `distribusync token create` does.
fn make_token(root: &std::path::Path, name: &str, scopes: &str, prefix: Option<&str>) -> String {
    use distribusync_server::auth::{NewToken, TokenStore};
    let now = std::time::SystemTime::now();
    let store = TokenStore::open(root).expect("token table");
    let new = NewToken::parse(name, scopes, prefix, None, now).expect("valid");
    store
        .create(&new, now)
        .expect("create")
        .0
        .reveal()
        .to_owned()
}

async fn client_with(addr: &str, token: &str) -> FilesClient {
    use distribusync_client::{ConnectionConfig, TlsTrust, Token};
    let config = ConnectionConfig::new(
        addr,
        TlsTrust::SystemRoots,
        Some(Token::new(token).unwrap()),
    );
    FilesClient::connect(config).await.unwrap()
}

#[tokio::test]
async fn a_token_confined_to_a_folder_finds_no_chunks_outside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    std::fs::create_dir_all(&root).unwrap();
    let admin = make_token(&root, "admin", "read,write,admin", None);
    let bob = make_token(&root, "bob", "read,write", Some("bob"));
    let server = TestServer::start(&root).await;
    let (admin, bob) = (
        client_with(&server.addr, &admin).await,
        client_with(&server.addr, &bob).await,
    );
    let secret = random(8 * MIB, 13);
    put_bytes(&admin, tmp.path(), "alice/secret.bin", &secret).await;
    let local = tmp.path().join("guess");
    std::fs::write(&local, &secret).unwrap();
    // Bob holds the same bytes: the server must not let on that it has
    // them, neither to a probe nor to a delta upload.
    assert_eq!(bob.probe(&local).await.unwrap(), Some(false));
    assert_eq!(admin.probe(&local).await.unwrap(), Some(true));
    let out = bob
        .upload_delta(&local, &p("bob/guess.bin"), None, None, false, Arc::new(()))
        .await
        .unwrap();
    assert!(
        matches!(out, DeltaOutcome::Done { sent, .. } if sent == secret.len() as u64),
        "{out:?}"
    );
    // Inside his folder, his own file is found: his second copy is free.
    let out = bob
        .upload_delta(&local, &p("bob/again.bin"), None, None, false, Arc::new(()))
        .await
        .unwrap();
    assert!(matches!(out, DeltaOutcome::Done { sent: 0, .. }), "{out:?}");
    // The counters are the admin's business.
    assert!(matches!(
        bob.stats().await,
        Err(distribusync_client::ClientError::PermissionDenied(_))
    ));
    assert!(admin.stats().await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn put_of_a_copy_under_a_new_name_sends_no_chunk_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let policy = distribusync_client::DeltaPolicy {
        min_size: 4 * MIB as u64,
    };
    let c = server.client().await.with_delta(policy);
    let data = random(12 * MIB, 31);
    put_bytes(&c, tmp.path(), "videos/a.bin", &data).await;
    let local = tmp.path().join("copy");
    std::fs::write(&local, &data).unwrap();
    // A new name, as `put` and sync's uploads of new files ask (0: must
    // not exist yet): only the manifest goes.
    let before = stats(&c).await;
    let info = c
        .put(&local, &p("videos/b.bin"), Some(0), Arc::new(()))
        .await
        .unwrap();
    let received = stats(&c).await.0 - before.0;
    assert_eq!(info.hash, ContentHash::of(&data));
    assert!(received < 4096, "{received} bytes for a copy");
    assert!(std::fs::read(server.root.join("videos/b.bin")).unwrap() == data);
    // A copy edited near its start: found in a.bin, refined against it.
    let mut edited = data.clone();
    edited.splice(5000..5000, random(100, 32));
    std::fs::write(&local, &edited).unwrap();
    let before = stats(&c).await;
    c.put(&local, &p("videos/c.bin"), None, Arc::new(()))
        .await
        .unwrap();
    let received = stats(&c).await.0 - before.0;
    assert!(received <= NEAR_EDIT, "{received} bytes for an edited copy");
    assert!(std::fs::read(server.root.join("videos/c.bin")).unwrap() == edited);
    server.stop().await;
}

#[tokio::test]
async fn a_new_file_the_server_lacks_is_probed_then_sent_whole_without_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let policy = distribusync_client::DeltaPolicy {
        min_size: 4 * MIB as u64,
    };
    let c = server.client().await.with_delta(policy);
    // What a whole upload of 64 MiB of new content costs, request framing
    // included...
    let whole = tmp.path().join("whole");
    std::fs::write(&whole, random(64 * MIB, 41)).unwrap();
    let before = stats(&c).await;
    c.upload(&whole, &p("new-1.bin"), None, Arc::new(()))
        .await
        .unwrap();
    let plain = stats(&c).await.0 - before.0;
    // ...and what `put` of other new content of the same size costs: the
    // probe of its first chunks (about 16 of them, ~40 bytes each) on top,
    // not the manifest of all 64 (which a search of the whole file sends
    // before the server declines it).
    let new = tmp.path().join("new");
    let data = random(64 * MIB, 42);
    std::fs::write(&new, &data).unwrap();
    assert_eq!(c.probe(&new).await.unwrap(), Some(false));
    let before = stats(&c).await;
    let info = c
        .put(&new, &p("new-2.bin"), None, Arc::new(()))
        .await
        .unwrap();
    let received = stats(&c).await.0 - before.0;
    assert_eq!(info.hash, ContentHash::of(&data));
    assert!(
        received <= plain + 1024,
        "{received} bytes received for a new file, {plain} for a whole upload"
    );
    // A copy of it under a third name: the probe finds its chunks.
    assert_eq!(c.probe(&new).await.unwrap(), Some(true));
    let before = stats(&c).await;
    c.put(&new, &p("new-3.bin"), None, Arc::new(()))
        .await
        .unwrap();
    let received = stats(&c).await.0 - before.0;
    assert!(received < 8192, "{received} bytes for a copy");
    server.stop().await;
}

#[tokio::test]
async fn a_probe_of_too_many_chunks_or_other_parameters_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let mut raw = raw(&server.addr);
    let chunk = distribusync_core::delta::ChunkRef {
        len: 1 << 20,
        hash: ContentHash::of(b"x"),
    };
    let ask = |params, n| v1::FindChunksRequest {
        params,
        chunks: Some(distribusync_proto::delta::pieces_page(&vec![chunk; n])),
    };
    let e = raw.find_chunks(ask(PARAMS_V1.id(), 65)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("65 chunks"), "{}", e.message());
    let e = raw.find_chunks(ask(9, 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("v9"), "{}", e.message());
    let ok = raw.find_chunks(ask(PARAMS_V1.id(), 64)).await.unwrap();
    assert_eq!(ok.into_inner().known, vec![0u8; 8]);
    server.stop().await;
}

/// A sync client of `dir` using `c`; one pass to the end.
async fn sync_once(dir: &std::path::Path, c: &FilesClient, host: &str) {
    let mut o = distribusync_client::sync::SyncOptions::new(dir);
    o.host = host.into();
    let mut e = distribusync_client::sync::SyncEngine::open(o, c.clone()).unwrap();
    e.run_once().await.unwrap();
}

#[tokio::test]
async fn a_copy_made_on_one_sync_client_costs_no_chunk_bytes_either_way() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Above the default threshold (8 MiB).
    let data = random(9 * MIB, 41);
    let other = random(9 * MIB, 42);
    std::fs::write(a.join("big.bin"), &data).unwrap();
    std::fs::write(a.join("other.bin"), &other).unwrap();
    sync_once(&a, &c, "a").await;
    sync_once(&b, &c, "b").await;
    assert!(std::fs::read(b.join("big.bin")).unwrap() == data);

    // A copies the file: its upload is the manifest only.
    std::fs::copy(a.join("big.bin"), a.join("copy.bin")).unwrap();
    let before = stats(&c).await;
    sync_once(&a, &c, "a").await;
    let after = stats(&c).await;
    assert!(std::fs::read(server.root.join("copy.bin")).unwrap() == data);
    let received = after.0 - before.0;
    assert!(received < 4096, "{received} bytes uploaded for a copy");

    // B builds it from its own big.bin: nothing downloaded.
    sync_once(&b, &c, "b").await;
    assert!(std::fs::read(b.join("copy.bin")).unwrap() == data);
    let sent = stats(&c).await.1 - after.1;
    assert!(sent < 4096, "{sent} bytes downloaded for a copy");

    // A rename that reaches B as a delete and a create (made here
    // through the API): B's old file, its only copy of those bytes, is
    // the source, and is deleted afterwards.
    let moved = tmp.path().join("moved");
    std::fs::write(&moved, &other).unwrap();
    c.put(&moved, &p("moved.bin"), Some(0), Arc::new(()))
        .await
        .unwrap();
    c.delete(&p("other.bin"), None).await.unwrap();
    let before = stats(&c).await;
    sync_once(&b, &c, "b").await;
    let sent = stats(&c).await.1 - before.1;
    assert!(sent < 4096, "{sent} bytes downloaded for a rename");
    assert!(std::fs::read(b.join("moved.bin")).unwrap() == other);
    assert!(!b.join("other.bin").exists());
    server.stop().await;
}

#[tokio::test]
async fn a_delta_upload_cut_mid_way_sends_only_the_rest_when_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let relay = common::Relay::start(&server.addr).await;
    let size = 16 * MIB;
    let data = random(size, 51);
    let local = tmp.path().join("new.bin");
    std::fs::write(&local, &data).unwrap();
    let modified = std::fs::metadata(&local).unwrap().modified().unwrap();
    let m = manifest_of_bytes(&data, &PARAMS_V1);

    // A raw upload through the relay: everything is new, so every chunk
    // is asked for; half of the bytes go, then the connection is cut.
    use v1::delta_upload_request::Msg;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let send = |msg| v1::DeltaUploadRequest { msg: Some(msg) };
    let begin = v1::DeltaBegin {
        modified: Some(distribusync_proto::timestamp(modified)),
        ..begin("new.bin", &m)
    };
    tx.send(send(Msg::Begin(begin))).await.unwrap();
    for page in distribusync_proto::delta::manifest_pages(&m) {
        tx.send(send(Msg::Page(page))).await.unwrap();
    }
    let mut replies = raw(&relay.addr)
        .delta_upload(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::delta_upload_response::Msg::Need(need)) =
        replies.message().await.unwrap().unwrap().msg
    else {
        panic!("no DeltaNeed");
    };
    assert_eq!(need.bytes, size as u64);
    for piece in data[..size / 2].chunks(MIB) {
        tx.send(send(Msg::Data(piece.to_vec()))).await.unwrap();
    }
    let staging = server.root.join(".distribusync/staging");
    // The biggest staging file (staging is sharded into folders).
    let staged = move || {
        std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|shard| std::fs::read_dir(shard.path()).ok())
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    common::eventually("a few chunks to be written", || staged() >= 4 * MIB as u64).await;
    relay.cut();
    drop(replies);
    drop(tx);

    // The server keeps what it verified, like a part of a whole upload.
    let partials = server.root.join(".distribusync/partial");
    common::eventually("the part to be kept", || {
        std::fs::read_dir(&partials).is_ok_and(|mut d| d.next().is_some())
    })
    .await;
    let kept = c
        .upload_offset(&p("new.bin"), size as u64, modified)
        .await
        .unwrap();
    assert!(kept >= 4 * MIB as u64, "kept {kept} bytes");

    // The retry sends only what is missing after the kept part.
    let before = stats(&c).await;
    let out = c
        .upload_delta(&local, &p("new.bin"), None, None, false, Arc::new(()))
        .await
        .unwrap();
    let received = stats(&c).await.0 - before.0;
    let DeltaOutcome::Done { file, sent } = out else {
        panic!("declined");
    };
    assert_eq!(file.hash, ContentHash::of(&data));
    let max_chunk = u64::from(PARAMS_V1.coarse().max);
    assert!(
        sent + kept <= size as u64 + max_chunk,
        "sent {sent} after keeping {kept}"
    );
    assert!(
        received < size as u64 - kept + max_chunk + 64 * 1024,
        "{received}"
    );
    assert!(std::fs::read(server.root.join("new.bin")).unwrap() == data);
    // Installed: the kept part is gone.
    assert_eq!(
        c.upload_offset(&p("new.bin"), size as u64, modified)
            .await
            .unwrap(),
        0
    );
    server.stop().await;
}

/// A raw delta upload that takes the fine round: the manifest `m` (the
/// client's word), the true pieces of each chunk asked for cut from `new`,
/// then the bytes of the pieces asked for. Returns the server's last reply.
async fn raw_fine_delta(
    addr: &str,
    m: &distribusync_core::delta::Manifest,
    path: &str,
    new: &[u8],
) -> Result<v1::DeltaUploadResponse, tonic::Status> {
    use distribusync_core::delta::{
        Bitmap, ChunkRef, chunks_requested, fine_chunks, ranges_to_send,
    };
    use v1::delta_upload_request::Msg;
    use v1::delta_upload_response::Msg as Reply;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let send = |msg| v1::DeltaUploadRequest { msg: Some(msg) };
    let begin = v1::DeltaBegin {
        fine: true,
        ..begin(path, m)
    };
    tx.send(send(Msg::Begin(begin))).await.unwrap();
    for page in distribusync_proto::delta::manifest_pages(m) {
        let _ = tx.send(send(Msg::Page(page))).await;
    }
    let mut replies = raw(addr)
        .delta_upload(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let Some(Reply::Need(need)) = replies.message().await?.expect("a reply").msg else {
        panic!("no DeltaNeed");
    };
    assert!(need.pieces, "the server asks for the pieces");
    let bitmap = Bitmap::from_bytes(need.missing, m.chunks.len()).unwrap();
    let wanted = chunks_requested(m, &bitmap).unwrap();
    let starts: Vec<u64> = m.offsets().map(|(o, _)| o).collect();
    let lists: Vec<Vec<ChunkRef>> = wanted
        .iter()
        .map(|&i| {
            let at = starts[i] as usize;
            fine_chunks(&new[at..at + m.chunks[i].len as usize], &PARAMS_V1)
        })
        .collect();
    for l in &lists {
        let page = distribusync_proto::delta::pieces_page(l);
        let _ = tx.send(send(Msg::Pieces(page))).await;
    }
    let Some(Reply::PiecesNeed(asked)) = replies.message().await?.expect("a reply").msg else {
        panic!("no PiecesNeed");
    };
    let count = lists.iter().map(Vec::len).sum();
    let pieces = Bitmap::from_bytes(asked.missing, count).unwrap();
    let ranges = ranges_to_send(m, &wanted, Some((&lists, &pieces))).unwrap();
    for r in ranges {
        let bytes = new[r.offset as usize..(r.offset + r.len) as usize].to_vec();
        let _ = tx.send(send(Msg::Data(bytes))).await;
    }
    Ok(replies.message().await?.expect("a reply"))
}

/// The fine round's pieces come from the client: each is checked against
/// its own hash, but only the chunk's hash in the manifest says they are
/// that chunk. A manifest naming one hash for a chunk whose pieces build
/// other bytes (the whole file still matching) is refused, not installed
/// with a manifest that lies about it.
#[tokio::test]
async fn pieces_that_do_not_rebuild_the_chunk_the_manifest_names_install_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let c = server.client().await;
    let old = random(8 * MIB, 61);
    let info = put_bytes(&c, tmp.path(), "f.bin", &old).await;
    let mut new = old.clone();
    new[4 * MIB] ^= 0xff;
    let honest = manifest_of_bytes(&new, &PARAMS_V1);
    let base = manifest_of_bytes(&old, &PARAMS_V1);
    let i = honest
        .chunks
        .iter()
        .position(|ch| !base.chunks.contains(ch))
        .expect("the edited chunk");
    let mut lying = honest.clone();
    lying.chunks[i].hash = ContentHash::of(b"not the bytes of this chunk");

    let e = raw_fine_delta(&server.addr, &lying, "f.bin", &new)
        .await
        .expect_err("a chunk its pieces do not rebuild");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(&format!("chunk {i} (bytes"))
            && e.message().contains("rebuilt from its pieces"),
        "{}",
        e.message()
    );
    assert_eq!(c.stat(&p("f.bin")).await.unwrap(), info);
    assert_eq!(get_bytes(&c, tmp.path(), "f.bin").await, old);
    assert!(staging_is_empty(&server.root));

    // The same upload with the true manifest goes through.
    let r = raw_fine_delta(&server.addr, &honest, "f.bin", &new).await;
    assert!(
        matches!(
            r.unwrap().msg,
            Some(v1::delta_upload_response::Msg::File(_))
        ),
        "installed"
    );
    assert!(get_bytes(&c, tmp.path(), "f.bin").await == new);
    server.stop().await;
}

/// `GET /metrics` of a server started with a metrics listener: the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.contains(" 200"), "{head}");
    body.to_owned()
}

/// The value of an unlabelled gauge in a scrape.
fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}")) as u64
}

/// Each manifest the server computes (for a file it has none for) holds
/// three threads and ~32 MiB: a burst of requests that all need one
/// computes at most `max_manifests` at once; the others wait their turn,
/// and every answer is right.
#[tokio::test]
async fn a_burst_of_manifest_requests_computes_at_most_the_bound_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    std::fs::create_dir_all(&root).unwrap();
    // Files put there by hand: found at start, with no manifest recorded.
    const FILES: u64 = 8;
    let mut expected = Vec::new();
    for n in 0..FILES {
        let data = random(16 * MIB, 100 + n);
        std::fs::write(root.join(format!("f{n}.bin")), &data).unwrap();
        expected.push(manifest_of_bytes(&data, &PARAMS_V1));
    }
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let mut config = distribusync_server::ServerConfig::new(&root);
    config.metrics = Some(Arc::new(metrics));
    config.store.max_manifests = 2;
    let server = TestServer::start_with(config).await;
    let c = server.client().await;

    let asked = (0..FILES).map(|n| {
        let c = c.clone();
        async move { c.manifest(&p(&format!("f{n}.bin"))).await }
    });
    let got = futures::future::join_all(asked).await;
    for (n, (r, want)) in got.into_iter().zip(&expected).enumerate() {
        let (_, m) = r.unwrap_or_else(|e| panic!("f{n}.bin: {e}"));
        assert_eq!(&m, want, "f{n}.bin");
    }
    let scraped = scrape(metrics_addr).await;
    let most = gauge(&scraped, "distribusync_manifests_computing_max");
    assert!(
        (1..=2).contains(&most),
        "{most} manifests were computed at once; the bound is 2"
    );
    assert_eq!(gauge(&scraped, "distribusync_manifests_computing"), 0);
    server.stop().await;
}

/// A source whose size and modified time are those the index records is
/// copied from on trust: its chunks feed the whole-file hash without a
/// check of their own. Bytes changed by hand with the modified time put
/// back are then caught by the whole-file hash, and named as a changed
/// source (try again), not blamed on the client; nothing is installed.
#[tokio::test]
async fn a_source_changed_by_hand_with_its_time_put_back_is_caught_and_named() {
    edit_on_a_source_scribbled_on_by_hand(71, true, true).await;
}
