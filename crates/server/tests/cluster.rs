//! Two server instances on one cluster backend (issue 12): the same
//! PostgreSQL database and S3 bucket, each with its own folder, serving
//! through the real client. What one instance does, the other serves.
//!
//! PostgreSQL (`common/postgres.rs`) and SeaweedFS (`common/seaweedfs.rs`)
//! are real servers started once for this binary; each test has its own
//! database and bucket.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/seaweedfs.rs"]
mod seaweedfs;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, get_bytes, p, put_bytes};
use distribusync_client::{ChangeKind, ClientError, FilesClient, WatchEvent};
use distribusync_core::ContentHash;
use distribusync_core::delta::{PARAMS_V1, manifest_of_bytes};
use distribusync_proto::v1::{self, files_client};
use distribusync_server::ServerConfig;
use distribusync_server::store::{Blobs, BlobsConfig, ClusterBackend, S3Blobs};
use postgres::postgres;
use seaweedfs::seaweedfs;

/// Generous: a loaded 2-core machine; only a safety net.
const WAIT: Duration = Duration::from_secs(30);

/// The bucket `bucket` of the shared endpoint.
fn blobs_config(bucket: String) -> BlobsConfig {
    BlobsConfig {
        bucket,
        endpoint: Some(seaweedfs().endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id: seaweedfs::ACCESS_KEY.into(),
        secret_access_key: seaweedfs::SECRET_KEY.into(),
    }
}

/// The backend of one instance; waits for the endpoint, which makes its
/// buckets in the first seconds after it starts.
async fn backend(url: &str, blobs: &BlobsConfig) -> ClusterBackend {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match ClusterBackend::open(url, blobs, 1000).await {
            Ok(b) => return b,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the cluster backend opens: {e}"),
        }
    }
}

/// Held shared by every test of this binary, exclusively by the one that
/// stops PostgreSQL (which all of them use).
static OUTAGE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held for its drop only.
#[allow(dead_code)]
enum Gate {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// Two instances of one cluster, each in its own folder under `dir`.
struct Cluster {
    a: TestServer,
    b: TestServer,
    /// A third instance's backend, without a server: for the collector.
    backend: ClusterBackend,
    _gate: Gate,
}

impl Cluster {
    async fn start(dir: &Path, name: &str) -> Self {
        Self::start_gated(dir, name, Gate::Shared(OUTAGE.read().await)).await
    }

    /// A cluster for a test that stops PostgreSQL: no other test runs meanwhile.
    async fn start_alone(dir: &Path, name: &str) -> Self {
        Self::start_gated(dir, name, Gate::Alone(OUTAGE.write().await)).await
    }

    async fn start_gated(dir: &Path, name: &str, gate: Gate) -> Self {
        Self::start_on(dir, name, gate, &seaweedfs().endpoint).await
    }

    /// Two instances reaching the S3 endpoint at `endpoint`.
    async fn start_on(dir: &Path, name: &str, gate: Gate, endpoint: &str) -> Self {
        let url = postgres().database(name);
        let blobs = BlobsConfig {
            endpoint: Some(endpoint.to_owned()),
            ..blobs_config(seaweedfs().bucket())
        };
        let mut servers = Vec::new();
        for instance in ["a", "b"] {
            let mut config = ServerConfig::new(dir.join(instance));
            config.cluster = Some(backend(&url, &blobs).await);
            servers.push(TestServer::start_with(config).await);
        }
        let b = servers.pop().expect("two");
        let a = servers.pop().expect("two");
        let backend = backend(&url, &blobs).await;
        Self {
            a,
            b,
            backend,
            _gate: gate,
        }
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// `len` bytes that differ from any other `seed`'s.
fn data(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

async fn next_change(w: &mut distribusync_client::WatchStream) -> ChangeKind {
    loop {
        let event = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("a change arrives in time")
            .expect("the watch runs")
            .expect("the watch goes on");
        if let WatchEvent::Change(c) = event {
            return c.kind;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_through_one_instance_downloads_byte_identical_through_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "byte_identical").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    // Empty, small, and several chunks (FastCDC cuts 256 KiB..4 MiB).
    let files = [
        ("empty", Vec::new()),
        ("small.txt", b"hello cluster".to_vec()),
        ("big/several-chunks.bin", data("big", 9 << 20)),
    ];
    for (path, bytes) in &files {
        let info = put_bytes(&a, dir.path(), path, bytes).await;
        assert_eq!(info.size, bytes.len() as u64);
    }
    for (path, bytes) in &files {
        let got = get_bytes(&b, dir.path(), path).await;
        assert!(
            got == *bytes,
            "{path}: different bytes through the other instance"
        );
        let stat = b.stat(&p(path)).await.unwrap();
        assert_eq!(stat.hash, ContentHash::of(bytes));
    }
    // A range across a chunk boundary, through the raw API.
    let big = &files[2].1;
    let mut raw = files_client::FilesClient::new(
        tonic::transport::Endpoint::from_shared(cluster.b.addr.clone())
            .unwrap()
            .connect_lazy(),
    );
    let (offset, len) = (3_000_000u64, 4_000_000u64);
    let mut s = raw
        .download(v1::DownloadRequest {
            path: "big/several-chunks.bin".into(),
            offset,
            length: Some(len),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        if let Some(v1::download_response::Msg::Chunk(c)) = m.msg {
            got.extend_from_slice(&c);
        }
    }
    assert!(
        got == big[offset as usize..(offset + len) as usize],
        "the range differs"
    );
    // The staging folders of both instances are empty again.
    for instance in ["a", "b"] {
        let left = common::staged_files(&dir.path().join(instance));
        assert_eq!(left, 0, "{instance}: staging files left");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_through_one_instance_appears_in_a_watch_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "watch").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    let mut watch = b.watch(0).await.unwrap();
    put_bytes(&a, dir.path(), "notes/first.txt", b"one").await;
    match next_change(&mut watch).await {
        ChangeKind::Put(f) => {
            assert_eq!(f.path, p("notes/first.txt"));
            assert_eq!(f.hash, ContentHash::of(b"one"));
        }
        other => panic!("expected the upload, got {other:?}"),
    }
    // Then a rename and a delete through A, in order, without gaps.
    a.rename(&p("notes"), &p("kept"), false, None)
        .await
        .unwrap();
    a.delete(&p("kept/first.txt"), None).await.unwrap();
    match next_change(&mut watch).await {
        ChangeKind::Rename {
            from, to, folder, ..
        } => {
            assert_eq!((from, to, folder), (p("notes"), p("kept"), true));
        }
        other => panic!("expected the rename, got {other:?}"),
    }
    assert_eq!(
        next_change(&mut watch).await,
        ChangeKind::Delete(p("kept/first.txt"))
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_if_revision_writers_on_two_instances_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "race").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    let mut revision = put_bytes(&a, dir.path(), "shared.txt", b"v0")
        .await
        .revision;
    for round in 0..5 {
        let (from_a, from_b) = (dir.path().join("from-a"), dir.path().join("from-b"));
        std::fs::write(&from_a, format!("a{round}")).unwrap();
        std::fs::write(&from_b, format!("b{round}")).unwrap();
        let target = p("shared.txt");
        let (ra, rb) = tokio::join!(
            a.upload(&from_a, &target, Some(revision), Arc::new(())),
            b.upload(&from_b, &target, Some(revision), Arc::new(()))
        );
        let (winner, loser, bytes) = match (ra, rb) {
            (Ok(w), Err(l)) => (w, l, format!("a{round}")),
            (Err(l), Ok(w)) => (w, l, format!("b{round}")),
            (ra, rb) => panic!("round {round}: exactly one must win: {ra:?} / {rb:?}"),
        };
        assert!(
            matches!(loser, ClientError::RevisionMismatch { .. }),
            "round {round}: {loser:?}"
        );
        // Both instances serve the winner's bytes.
        for c in [&a, &b] {
            assert_eq!(
                get_bytes(c, dir.path(), "shared.txt").await,
                bytes.as_bytes()
            );
        }
        revision = winner.revision;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_delete_and_list_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "rename").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    let big = data("moved", 1 << 20);
    put_bytes(&a, dir.path(), "d/one.bin", &big).await;
    put_bytes(&a, dir.path(), "d/two.txt", b"two").await;
    put_bytes(&a, dir.path(), "f.txt", b"file").await;
    // A folder renamed through B: A lists and serves it at its new place.
    let (_, moved) = b.rename(&p("d"), &p("e"), false, None).await.unwrap();
    assert_eq!(moved, 2);
    let names = |list: Vec<distribusync_client::FileInfo>| -> Vec<String> {
        list.into_iter().map(|f| f.path.to_string()).collect()
    };
    assert_eq!(
        names(a.list_all(None).await.unwrap()),
        ["e/one.bin", "e/two.txt", "f.txt"]
    );
    assert!(get_bytes(&a, dir.path(), "e/one.bin").await == big);
    assert_eq!(get_bytes(&a, dir.path(), "e/two.txt").await, b"two");
    // A file renamed through A, deleted through B.
    a.rename(&p("f.txt"), &p("g.txt"), false, None)
        .await
        .unwrap();
    assert_eq!(get_bytes(&b, dir.path(), "g.txt").await, b"file");
    b.delete(&p("g.txt"), None).await.unwrap();
    assert!(matches!(
        a.stat(&p("g.txt")).await,
        Err(ClientError::NotFound(_))
    ));
    // A folder is not a file on either instance.
    assert!(b.stat(&p("e")).await.is_err());
    assert_eq!(
        names(b.list_all(Some(&p("e"))).await.unwrap()),
        ["e/one.bin", "e/two.txt"]
    );
    cluster.stop().await;
}

/// Instances hold nothing of their own: with the one that stored a file
/// gone, the other still serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_outlive_the_instance_that_stored_them() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "outlive").await;
    let a = cluster.a.client().await;
    put_bytes(&a, dir.path(), "kept.txt", b"still here").await;
    let b_addr = cluster.b.addr.clone();
    cluster.a.stop().await;
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    let b = FilesClient::connect(&b_addr).await.unwrap();
    assert_eq!(get_bytes(&b, dir.path(), "kept.txt").await, b"still here");
    cluster.b.stop().await;
}

/// The chunks of `data` as stored.
fn chunk_hashes(data: &[u8]) -> Vec<ContentHash> {
    manifest_of_bytes(data, &PARAMS_V1)
        .chunks
        .iter()
        .map(|c| c.hash)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_keeps_what_files_and_uploads_in_flight_need_and_reclaims_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "collect").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    let backend = &cluster.backend;
    let stored = move || async move {
        let mut all: Vec<ContentHash> = backend
            .blobs
            .list_chunks()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.hash)
            .collect();
        all.sort_by_key(|h| h.0);
        all
    };
    let kept = data("kept", 3 << 20);
    let gone = data("gone", 3 << 20);
    put_bytes(&a, dir.path(), "kept.bin", &kept).await;
    put_bytes(&a, dir.path(), "gone.bin", &gone).await;
    let (kept_chunks, gone_chunks) = (chunk_hashes(&kept), chunk_hashes(&gone));
    assert!(gone_chunks.len() > 1);
    b.delete(&p("gone.bin"), None).await.unwrap();

    // Within the grace period nothing goes, referenced or not.
    let report = backend
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("no other collector");
    assert_eq!(report.removed, 0);
    assert_eq!(report.young, gone_chunks.len());

    // An upload in flight: its chunks pinned and stored, not committed.
    let pending = data("pending", 2 << 20);
    let manifest = manifest_of_bytes(&pending, &PARAMS_V1);
    let staged = dir.path().join("pending");
    std::fs::write(&staged, &pending).unwrap();
    backend.pin("an upload in flight", &manifest).await.unwrap();
    backend
        .blobs
        .install(Arc::new(std::fs::File::open(&staged).unwrap()), &manifest)
        .await
        .unwrap();

    // With no grace: the deleted file's chunks go, nothing else.
    let before = stored().await;
    let report = backend
        .collect_garbage(Duration::ZERO)
        .await
        .unwrap()
        .expect("no other collector");
    assert_eq!(report.removed, gone_chunks.len());
    let after = stored().await;
    for h in &gone_chunks {
        assert!(
            before.contains(h) && !after.contains(h),
            "{h}: not reclaimed"
        );
    }
    for h in kept_chunks.iter().chain(&chunk_hashes(&pending)) {
        assert!(after.contains(h), "{h}: removed though needed");
    }
    assert!(get_bytes(&b, dir.path(), "kept.bin").await == kept);
    cluster.stop().await;
}

/// Chunks on their way to the bucket are held in memory; however many
/// uploads send at once, an instance holds at most its budget of them
/// (64 MiB), and every upload still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_on_their_way_to_the_bucket_stay_within_the_instance_budget() {
    let _gate = OUTAGE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = S3Blobs::open(&blobs_config(seaweedfs().bucket()))
        .await
        .unwrap();
    // 12 files of 8 MiB (chunks of up to 4 MiB, 8 at a time a file):
    // up to 96 MiB would be sent at once.
    let files: Vec<_> = (0..12)
        .map(|i| {
            let bytes = data(&format!("budget {i}"), 8 << 20);
            let manifest = manifest_of_bytes(&bytes, &PARAMS_V1);
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &bytes).unwrap();
            (path, manifest)
        })
        .collect();
    let installed = futures::future::join_all(files.iter().map(|(path, manifest)| {
        let blobs = blobs.clone();
        async move {
            blobs
                .install(Arc::new(std::fs::File::open(path).unwrap()), manifest)
                .await
        }
    }))
    .await;
    for (done, (_, manifest)) in installed.into_iter().zip(&files) {
        assert_eq!(done.unwrap().sent, manifest.chunks.len());
    }
    let peak = blobs.sending_peak();
    assert!(peak > 0 && peak <= S3Blobs::SENDING_BUDGET, "peak {peak}");
    let stored: std::collections::HashSet<_> = blobs
        .list_chunks()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.hash)
        .collect();
    for (_, m) in &files {
        assert!(m.chunks.iter().all(|c| stored.contains(&c.hash)));
    }
}

/// A group of small files (UploadBatch, what `put -r` and sync send) is
/// one commit on the cluster too: each file gets its own result, a stale
/// `if_revision` refuses that file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_through_one_instance_is_served_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "batch").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    put_bytes(&a, dir.path(), "batch/taken.txt", b"first").await;
    let mut items = Vec::new();
    for i in 0..40 {
        let local = dir.path().join(format!("small-{i}"));
        std::fs::write(&local, format!("small file {i}")).unwrap();
        items.push((local, p(&format!("batch/{i:02}.txt")), None));
    }
    let taken = dir.path().join("taken");
    std::fs::write(&taken, b"second").unwrap();
    // Must not exist: it does.
    items.push((taken, p("batch/taken.txt"), Some(0)));
    let results = a.upload_batch(items).await.unwrap();
    assert_eq!(results.len(), 41);
    assert!(results[..40].iter().all(Result::is_ok), "{results:?}");
    assert!(
        matches!(results[40], Err(ClientError::RevisionMismatch { .. })),
        "{:?}",
        results[40]
    );
    let listed = b.list_all(Some(&p("batch"))).await.unwrap();
    assert_eq!(listed.len(), 41);
    assert_eq!(
        get_bytes(&b, dir.path(), "batch/07.txt").await,
        b"small file 7"
    );
    assert_eq!(get_bytes(&b, dir.path(), "batch/taken.txt").await, b"first");
    cluster.stop().await;
}

/// A client that has an older version fetches only what changed (the
/// cluster answers the manifest from its metadata; pieces finer than a
/// chunk are not offered there, so whole chunks travel), and ends with
/// the new bytes exactly; a delta upload is declined and goes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_transfers_fall_back_where_the_cluster_has_no_delta_and_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "delta").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    let old = data("delta", 12 << 20);
    put_bytes(&a, dir.path(), "big.bin", &old).await;
    let local = dir.path().join("copy.bin");
    b.get(&p("big.bin"), &local, Arc::new(())).await.unwrap();
    assert!(std::fs::read(&local).unwrap() == old);
    // An edit in the middle, sent by delta (declined: whole) through A.
    let mut new = old.clone();
    new[6 << 20..(6 << 20) + 1000].fill(7);
    let edited = dir.path().join("edited.bin");
    std::fs::write(&edited, &new).unwrap();
    a.put(&edited, &p("big.bin"), None, Arc::new(()))
        .await
        .unwrap();
    // B has the old version: it fetches by delta.
    b.get(&p("big.bin"), &local, Arc::new(())).await.unwrap();
    assert!(
        std::fs::read(&local).unwrap() == new,
        "the delta download differs"
    );
    cluster.stop().await;
}

/// Bytes of staging files under an instance's folder.
fn staged_bytes(root: &Path) -> u64 {
    fn under(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            under(&e.path())
                        } else {
                            e.metadata().map(|m| m.len()).unwrap_or(0)
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    under(&root.join(".distribusync/staging"))
}

/// An upload given up part way is kept by the instance that received it
/// and resumes there; the file it makes is served by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_on_its_instance_and_is_served_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "resume").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    let movie = data("movie", 64 << 20);
    let local = dir.path().join("movie");
    std::fs::write(&local, &movie).unwrap();
    let (a2, l2) = (a.clone(), local.clone());
    let upload = tokio::spawn(async move { a2.upload(&l2, &p("movie"), None, Arc::new(())).await });
    common::eventually("data staged", || staged_bytes(&cluster.a.root) > 0).await;
    upload.abort();
    assert!(upload.await.unwrap_err().is_cancelled());
    let modified = std::fs::metadata(&local).unwrap().modified().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let kept = a
            .upload_offset(&p("movie"), 64 << 20, modified)
            .await
            .unwrap();
        if kept > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.stat(&p("movie")).await.is_err(), "nothing committed yet");
    let info = a
        .upload(&local, &p("movie"), None, Arc::new(()))
        .await
        .unwrap();
    assert_eq!(info.hash, ContentHash::of(&movie));
    assert!(get_bytes(&b, dir.path(), "movie").await == movie);
    cluster.stop().await;
}

/// A client given both instances (`--server a,b`) carries on with the
/// second when the first stops: the next call connects to it, and finds
/// the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_both_instances_carries_on_with_the_other_when_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "failover").await;
    let both = format!("{},{}", cluster.a.addr, cluster.b.addr);
    let c = FilesClient::lazy(distribusync_client::ConnectionConfig::plain(&both)).unwrap();
    put_bytes(&c, dir.path(), "before.txt", b"sent to the first").await;
    let b_addr = cluster.b.addr.clone();
    cluster.a.stop().await;
    // Calls in flight when it stopped may fail; a new call goes to B.
    let deadline = tokio::time::Instant::now() + WAIT;
    let stat = loop {
        match c.stat(&p("before.txt")).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never carried on: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(stat.hash, ContentHash::of(b"sent to the first"));
    put_bytes(&c, dir.path(), "after.txt", b"sent to the second").await;
    let b = FilesClient::connect(&b_addr).await.unwrap();
    assert_eq!(
        get_bytes(&b, dir.path(), "after.txt").await,
        b"sent to the second"
    );
    cluster.b.stop().await;
}

/// With PostgreSQL stopped, requests fail at once saying why (UNAVAILABLE,
/// naming the metadata database), nothing is half-committed, and the
/// service resumes by itself once it is back: requests succeed again and a
/// Watch that was open carries on without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_requests_fail_clearly_and_service_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_alone(dir.path(), "outage").await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    put_bytes(&a, dir.path(), "before.txt", b"before").await;
    let mut watch = b.watch(0).await.unwrap();
    assert!(
        matches!(next_change(&mut watch).await, ChangeKind::Put(f) if f.path == p("before.txt"))
    );

    postgres().stop();
    let mut raw = files_client::FilesClient::new(
        tonic::transport::Endpoint::from_shared(cluster.a.addr.clone())
            .unwrap()
            .connect_lazy(),
    );
    let status = raw
        .stat(v1::StatRequest {
            path: "before.txt".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("metadata database"), "{status:?}");
    // The client shows the server's reason, not "cannot reach server".
    let err = a.stat(&p("before.txt")).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Unavailable { message, .. } if message.contains("metadata database")),
        "{err}"
    );
    let during = dir.path().join("during.txt");
    std::fs::write(&during, b"during").unwrap();
    assert!(
        a.upload(&during, &p("during.txt"), None, Arc::new(()))
            .await
            .is_err()
    );

    postgres().start_again();
    // Back by itself: the first requests may meet connections the
    // restart closed; they succeed again without anything being restarted.
    upload_once_back(&a, &during, "after.txt").await;
    assert!(matches!(
        b.stat(&p("during.txt")).await,
        Err(ClientError::NotFound(_))
    ));
    assert_eq!(get_bytes(&b, dir.path(), "after.txt").await, b"during");
    // B's watch: the next change is the one made after the outage.
    match next_change(&mut watch).await {
        ChangeKind::Put(f) => assert_eq!(f.path, p("after.txt")),
        other => panic!("expected after.txt, got {other:?}"),
    }
    cluster.stop().await;
}

/// Uploads `local` as `name` through `client` until the service takes it
/// again after an outage (safety net: [`WAIT`]): the first requests may
/// meet connections the outage closed.
async fn upload_once_back(client: &FilesClient, local: &Path, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.upload(local, &p(name), None, Arc::new(())).await {
            Ok(_) => return,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "never resumed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TCP relay in front of the S3 endpoint that can be stopped (its port
/// then refuses connections and those open are cut, as when the endpoint
/// itself stops) and started again on the same port: an outage of the
/// endpoint for this test's instances only.
struct S3Relay {
    endpoint: String,
    port: u16,
    running: std::sync::Mutex<Option<tokio_util::sync::CancellationToken>>,
}

impl S3Relay {
    async fn start() -> Self {
        let relay = S3Relay {
            endpoint: String::new(),
            port: 0,
            running: std::sync::Mutex::new(None),
        };
        let port = relay.listen(0).await;
        S3Relay {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            ..relay
        }
    }

    /// Relays from `port` (0: any) to the endpoint; the port.
    async fn listen(&self, port: u16) -> u16 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap();
        let listener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = seaweedfs()
            .endpoint
            .trim_start_matches("http://")
            .to_owned();
        let stop = tokio_util::sync::CancellationToken::new();
        *self.running.lock().unwrap() = Some(stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                };
                let (stop, upstream) = (stop.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                    }
                });
            }
        });
        port
    }

    /// The endpoint goes away: connections refused, open ones cut.
    fn stop(&self) {
        if let Some(stop) = self.running.lock().unwrap().take() {
            stop.cancel();
        }
    }

    /// The endpoint is back, on the same port.
    async fn start_again(&self) {
        self.listen(self.port).await;
    }
}

/// With the S3 endpoint stopped, uploads and downloads fail at once saying
/// which storage (UNAVAILABLE, naming the blob store), nothing is
/// half-committed, and the service resumes by itself once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_stopped_transfers_fail_naming_the_storage_and_service_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let relay = S3Relay::start().await;
    let cluster = Cluster::start_on(
        dir.path(),
        "s3_outage",
        Gate::Shared(OUTAGE.read().await),
        &relay.endpoint,
    )
    .await;
    let (a, b) = (cluster.a.client().await, cluster.b.client().await);
    put_bytes(&a, dir.path(), "before.bin", &data("before", 3 << 20)).await;

    relay.stop();
    let during = dir.path().join("during.bin");
    std::fs::write(&during, data("during", 3 << 20)).unwrap();
    let err = a
        .upload(&during, &p("during.bin"), None, Arc::new(()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Unavailable { message, .. } if message.contains("blob store")),
        "{err}"
    );
    // The old file's metadata is there, its contents are not reachable:
    // a clear refusal, not a torn download.
    let back = dir.path().join("back.bin");
    let err = b
        .download(&p("before.bin"), &back, Arc::new(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("blob store"), "{err}");

    relay.start_again().await;
    upload_once_back(&a, &during, "after.bin").await;
    assert!(matches!(
        b.stat(&p("during.bin")).await,
        Err(ClientError::NotFound(_))
    ));
    assert_eq!(
        get_bytes(&b, dir.path(), "after.bin").await,
        data("during", 3 << 20)
    );
    assert_eq!(
        get_bytes(&b, dir.path(), "before.bin").await,
        data("before", 3 << 20)
    );
    cluster.stop().await;
    relay.stop();
}
