//! Two sync clients and one real server, in process: what a user of two
//! machines would see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use distribusync_client::sync::{Mode, SyncEngine, SyncError, SyncOptions};
use distribusync_client::{FilesClient, WatchEvent, lazy_channel};
use distribusync_server::ServerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Server {
    addr: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start_server(root: &Path, addr: Option<std::net::SocketAddr>) -> Server {
    let listener =
        tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
    serve_on(listener, ServerConfig::new(root))
}

/// A server of `root` with a metrics listener, and where to scrape it.
async fn start_server_with_metrics(root: &Path) -> (Server, std::net::SocketAddr) {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = metrics.local_addr().unwrap();
    let mut config = ServerConfig::new(root);
    config.metrics = Some(std::sync::Arc::new(metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (serve_on(listener, config), at)
}

/// Serves `config` on `listener` until [`Server::shutdown`].
fn serve_on(listener: tokio::net::TcpListener, config: ServerConfig) -> Server {
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        distribusync_server::serve(listener, config, async move { s.cancelled().await })
            .await
            .unwrap();
    });
    Server { addr, stop, task }
}

impl Server {
    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn options(dir: &Path, host: &str) -> SyncOptions {
    let mut o = SyncOptions::new(dir);
    o.host = host.into();
    o
}

fn client(addr: &str) -> FilesClient {
    FilesClient::new(lazy_channel(addr).unwrap(), addr)
}

async fn once(dir: &Path, addr: &str, host: &str) -> Result<SyncEngine, SyncError> {
    let mut e = SyncEngine::open(options(dir, host), client(addr))?;
    e.run_once().await?;
    Ok(e)
}

/// A live sync client; stopped on drop.
struct Live {
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), SyncError>>>,
}

fn live(dir: &Path, addr: &str, host: &str) -> Live {
    live_with(options(dir, host), addr).0
}

impl Live {
    async fn stop(mut self) {
        self.stop.cancel();
        let r = self.task.take().unwrap().await.unwrap();
        r.unwrap();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until `check` holds; a safety net, not a timing.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the server's change log holds after `seq`.
async fn logged_since(fc: &FilesClient, seq: u64) -> Vec<distribusync_client::ChangeKind> {
    let mut w = fc.watch(seq).await.unwrap();
    let mut changes = Vec::new();
    loop {
        match w.next().await.unwrap().unwrap() {
            WatchEvent::Change(c) => changes.push(c.kind),
            WatchEvent::CaughtUp(_) => return changes,
            WatchEvent::Resync(_) => panic!("unexpected resync"),
        }
    }
}

fn read(p: PathBuf) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// Every file under `dir` (outside .distribusync), with its contents.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == ".distribusync" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

fn setup() -> Setup {
    // RUST_LOG=distribusync_client=debug shows what the engines do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    let a = tmp.path().join("A");
    let b = tmp.path().join("B");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    Setup {
        _tmp: tmp,
        root,
        a,
        b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_one_folder_appear_in_the_other() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    std::fs::write(s.a.join("before.txt"), "was here first").unwrap();
    let la = live(&s.a, &server.addr, "a");
    let lb = live(&s.b, &server.addr, "b");
    eventually("initial file reaches B", || {
        read(s.b.join("before.txt")).as_deref() == Some("was here first")
    })
    .await;

    // Create, with odd names.
    std::fs::create_dir_all(s.a.join("docs/deep")).unwrap();
    std::fs::write(s.a.join("docs/deep/notes with space é.txt"), "v1").unwrap();
    std::fs::write(s.a.join("empty"), "").unwrap();
    let long = "n".repeat(250) + ".txt";
    std::fs::write(s.a.join(&long), "long name").unwrap();
    eventually("creates reach B", || {
        read(s.b.join("docs/deep/notes with space é.txt")).as_deref() == Some("v1")
            && s.b.join("empty").exists()
            && s.b.join(&long).exists()
    })
    .await;

    // Modify.
    std::fs::write(s.a.join("docs/deep/notes with space é.txt"), "v2").unwrap();
    eventually("modification reaches B", || {
        read(s.b.join("docs/deep/notes with space é.txt")).as_deref() == Some("v2")
    })
    .await;

    // Rename a file, then a folder; both travel as renames.
    std::fs::rename(s.a.join("before.txt"), s.a.join("after.txt")).unwrap();
    for i in 0..30 {
        std::fs::write(s.a.join(format!("docs/f{i}")), format!("file {i}")).unwrap();
    }
    eventually("files reach B", || {
        s.b.join("docs/f29").exists() && s.b.join("after.txt").exists()
    })
    .await;
    let fc = client(&server.addr);
    eventually("all uploads done", || tree(&s.a) == tree(&s.b)).await;
    let seq_before = fc
        .list_all(None)
        .await
        .unwrap()
        .iter()
        .map(|f| f.revision)
        .max()
        .unwrap();
    std::fs::rename(s.a.join("docs"), s.a.join("papers")).unwrap();
    eventually("folder rename reaches B", || {
        read(s.b.join("papers/f7")).as_deref() == Some("file 7") && !s.b.join("docs").exists()
    })
    .await;
    // One rename on the server, not 33 uploads and deletes.
    let changes = logged_since(&fc, seq_before).await;
    assert_eq!(changes.len(), 1, "{changes:?}");

    // Delete.
    std::fs::remove_file(s.a.join("after.txt")).unwrap();
    eventually("delete reaches B", || !s.b.join("after.txt").exists()).await;
    // And the other way round.
    std::fs::write(s.b.join("from-b.txt"), "hello from B").unwrap();
    eventually("B's file reaches A", || {
        read(s.a.join("from-b.txt")).as_deref() == Some("hello from B")
    })
    .await;
    eventually("trees agree", || tree(&s.a) == tree(&s.b)).await;
    la.stop().await;
    lb.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_both_sides_keep_both_versions() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    std::fs::write(s.a.join("report.txt"), "original").unwrap();
    once(&s.a, &server.addr, "hosta").await.unwrap();
    once(&s.b, &server.addr, "hostb").await.unwrap();
    std::fs::write(s.a.join("report.txt"), "A's edit").unwrap();
    std::fs::write(s.b.join("report.txt"), "B's edit").unwrap();
    once(&s.a, &server.addr, "hosta").await.unwrap();
    once(&s.b, &server.addr, "hostb").await.unwrap();
    once(&s.a, &server.addr, "hosta").await.unwrap();
    let ta = tree(&s.a);
    assert_eq!(ta, tree(&s.b));
    assert_eq!(ta.len(), 2, "{ta:?}");
    // The server's version (A's, first there) keeps the name; B's edit is
    // kept as a conflict copy named after B's host.
    assert_eq!(read(s.a.join("report.txt")).unwrap(), "A's edit");
    let copy = &ta.iter().find(|(n, _)| n != "report.txt").unwrap();
    assert!(
        copy.0.starts_with("report.conflict-hostb-") && copy.0.ends_with(".txt"),
        "{copy:?}"
    );
    assert_eq!(copy.1, "B's edit");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_nothing_changed_moves_nothing() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    for i in 0..20 {
        std::fs::write(s.a.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    once(&s.a, &server.addr, "a").await.unwrap();
    let fc = client(&server.addr);
    let before = fc.list_all(None).await.unwrap();
    let engine = once(&s.a, &server.addr, "a").await.unwrap();
    let status = engine.status().borrow().clone();
    assert_eq!((status.uploaded, status.downloaded), (0, 0));
    assert_eq!(fc.list_all(None).await.unwrap(), before);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_rules_and_editor_temporaries_stay_local() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    std::fs::write(s.a.join(".distribusyncignore"), "*.log\nbuild/\n").unwrap();
    for f in [
        "debug.log",
        ".notes.txt.swp",
        "draft~",
        "4913",
        ".#lock",
        "~$report.docx",
        "keep.txt",
    ] {
        std::fs::write(s.a.join(f), "x").unwrap();
    }
    std::fs::create_dir_all(s.a.join("build")).unwrap();
    std::fs::write(s.a.join("build/out.o"), "x").unwrap();
    once(&s.a, &server.addr, "a").await.unwrap();
    let names: Vec<String> = client(&server.addr)
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(names, [".distribusyncignore", "keep.txt"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_style_save_is_one_modification() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    std::fs::write(s.a.join("doc.txt"), "v1").unwrap();
    let la = live(&s.a, &server.addr, "a");
    let lb = live(&s.b, &server.addr, "b");
    eventually("doc reaches B", || {
        read(s.b.join("doc.txt")).as_deref() == Some("v1")
    })
    .await;
    let fc = client(&server.addr);
    let seq = fc.stat(&"doc.txt".parse().unwrap()).await.unwrap().revision;
    // Save as editors do: write a temporary, then rename it over the original.
    std::fs::write(s.a.join(".doc.txt.tmp~"), "v2 saved by an editor").unwrap();
    std::fs::rename(s.a.join(".doc.txt.tmp~"), s.a.join("doc.txt")).unwrap();
    eventually("save reaches B", || {
        read(s.b.join("doc.txt")).as_deref() == Some("v2 saved by an editor")
    })
    .await;
    let changes = logged_since(&fc, seq).await;
    assert_eq!(changes.len(), 1, "one modification: {changes:?}");
    assert!(
        matches!(&changes[0], distribusync_client::ChangeKind::Put(f) if f.path.as_str() == "doc.txt")
    );
    la.stop().await;
    lb.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_folder_stops_instead_of_deleting_the_server() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    for f in ["a", "b", "c"] {
        std::fs::write(s.a.join(f), f).unwrap();
    }
    once(&s.a, &server.addr, "a").await.unwrap();
    for f in ["a", "b", "c"] {
        std::fs::remove_file(s.a.join(f)).unwrap();
    }
    let err = once(&s.a, &server.addr, "a").await.unwrap_err();
    assert!(matches!(err, SyncError::SafetyStop(_)), "{err}");
    assert!(err.to_string().contains("refusing to delete"), "{err}");
    assert_eq!(client(&server.addr).list_all(None).await.unwrap().len(), 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_server_does_not_empty_the_folder() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    for f in ["a", "b", "c"] {
        std::fs::write(s.a.join(f), f).unwrap();
    }
    once(&s.a, &server.addr, "a").await.unwrap();
    server.shutdown().await;
    // The same address, but a fresh, empty server.
    let other = start_server(&s.b.join("OTHER-MASTER"), None).await;
    let err = once(&s.a, &other.addr, "a").await.unwrap_err();
    assert!(err.to_string().contains("server has none"), "{err}");
    assert_eq!(tree(&s.a).len(), 3);
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_wait_for_a_restarted_server() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let addr: std::net::SocketAddr = server.addr.trim_start_matches("http://").parse().unwrap();
    let la = live(&s.a, &server.addr, "a");
    let lb = live(&s.b, &server.addr, "b");
    std::fs::write(s.a.join("first"), "1").unwrap();
    eventually("first reaches B", || s.b.join("first").exists()).await;
    server.shutdown().await;
    // Written while the server is down: must not be lost.
    std::fs::write(s.a.join("while-down"), "kept").unwrap();
    let server = start_server(&s.root, Some(addr)).await;
    eventually("the change made while down reaches B", || {
        read(s.b.join("while-down")).as_deref() == Some("kept")
    })
    .await;
    la.stop().await;
    lb.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mirrors_the_folder_and_pull_mirrors_the_server() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let extra = s.b.join("server-only");
    std::fs::write(&extra, "on the server only").unwrap();
    fc.upload(
        &extra,
        &"server-only".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();
    std::fs::remove_file(&extra).unwrap();
    std::fs::write(s.a.join("mine"), "pushed").unwrap();
    let mut e = SyncEngine::open(
        SyncOptions {
            mode: Mode::Push,
            ..options(&s.a, "a")
        },
        client(&server.addr),
    )
    .unwrap();
    e.run_once().await.unwrap();
    let names: Vec<String> = fc
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(names, ["mine"]);
    assert!(!s.a.join("server-only").exists());

    std::fs::write(s.b.join("local-only"), "stays").unwrap();
    let mut e = SyncEngine::open(
        SyncOptions {
            mode: Mode::Pull,
            ..options(&s.b, "b")
        },
        client(&server.addr),
    )
    .unwrap();
    e.run_once().await.unwrap();
    assert_eq!(read(s.b.join("mine")).as_deref(), Some("pushed"));
    assert_eq!(read(s.b.join("local-only")).as_deref(), Some("stays"));
    assert_eq!(fc.list_all(None).await.unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_this_folder_ignores_stay_on_the_server() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let src = s.b.join("x");
    std::fs::write(&src, "made elsewhere").unwrap();
    for p in [".DS_Store", "build/out.o", "keep.txt"] {
        fc.upload(&src, &p.parse().unwrap(), None, std::sync::Arc::new(()))
            .await
            .unwrap();
    }
    std::fs::write(s.a.join(".distribusyncignore"), "build/\n").unwrap();
    once(&s.a, &server.addr, "a").await.unwrap();
    once(&s.a, &server.addr, "a").await.unwrap();
    assert!(s.a.join("keep.txt").exists());
    assert!(!s.a.join(".DS_Store").exists() && !s.a.join("build").exists());
    let names: Vec<String> = fc
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(
        names,
        [
            ".DS_Store",
            ".distribusyncignore",
            "build/out.o",
            "keep.txt"
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_the_folder_under_a_running_sync_stops_it() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    for i in 0..20 {
        std::fs::write(s.a.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    once(&s.a, &server.addr, "a").await.unwrap();
    let engine = SyncEngine::open(options(&s.a, "a"), client(&server.addr)).unwrap();
    let mut status = engine.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    // Wait until the engine is up and idle, then empty the folder the way
    // `rm -rf DIR/*` does: one file after another.
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.passes > 0 && s.phase == distribusync_client::sync::SyncPhase::Idle),
    )
    .await
    .unwrap()
    .unwrap();
    for i in 0..20 {
        std::fs::remove_file(s.a.join(format!("f{i}"))).unwrap();
    }
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, SyncError::SafetyStop(_)), "{err}");
    assert_eq!(client(&server.addr).list_all(None).await.unwrap().len(), 20);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_folder_is_never_written_through() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let outside = s.b.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.a.join("docs")).unwrap();
    let fc = client(&server.addr);
    let src = s.b.join("x");
    std::fs::write(&src, "from the server").unwrap();
    fc.upload(
        &src,
        &"docs/new.txt".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();
    let err = once(&s.a, &server.addr, "a").await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
    // And the server keeps its file.
    assert_eq!(fc.list_all(None).await.unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_trees_unicode_forms_and_a_file_replaced_by_a_folder() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    // A name written in NFD (as macOS does) travels in NFC.
    std::fs::write(s.a.join("cafe\u{301}.txt"), "nfd").unwrap();
    std::fs::write(s.a.join("x"), "a file first").unwrap();
    once(&s.a, &server.addr, "a").await.unwrap();
    let fc = client(&server.addr);
    let names: Vec<String> = fc
        .list_all(None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(names, ["caf\u{e9}.txt", "x"]);
    // Re-syncing does not see the NFD file as new or deleted.
    let engine = once(&s.a, &server.addr, "a").await.unwrap();
    assert_eq!(engine.status().borrow().uploaded, 0);
    once(&s.b, &server.addr, "b").await.unwrap();
    assert_eq!(read(s.b.join("caf\u{e9}.txt")).as_deref(), Some("nfd"));

    // The file `x` becomes a folder `x` with a file in it.
    std::fs::remove_file(s.a.join("x")).unwrap();
    std::fs::create_dir(s.a.join("x")).unwrap();
    std::fs::write(s.a.join("x/inside"), "now a folder").unwrap();
    once(&s.a, &server.addr, "a").await.unwrap();
    once(&s.b, &server.addr, "b").await.unwrap();
    assert!(s.b.join("x").is_dir());
    assert_eq!(read(s.b.join("x/inside")).as_deref(), Some("now a folder"));
    server.shutdown().await;
}

fn live_with(
    opts: SyncOptions,
    addr: &str,
) -> (
    Live,
    tokio::sync::watch::Receiver<distribusync_client::sync::SyncStatus>,
) {
    let engine = SyncEngine::open(opts, client(addr)).unwrap();
    let status = engine.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    (
        Live {
            stop,
            task: Some(task),
        },
        status,
    )
}

async fn until_idle(
    status: &mut tokio::sync::watch::Receiver<distribusync_client::sync::SyncStatus>,
) {
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.passes > 0 && s.phase == distribusync_client::sync::SyncPhase::Idle),
    )
    .await
    .unwrap()
    .unwrap();
}

/// Partial downloads left anywhere under `dir`.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".distribusync-part") {
                out.push(p);
            }
        }
    }
    out
}

async fn server_has(fc: &FilesClient, path: &str) -> Option<distribusync_core::ContentHash> {
    fc.stat(&path.parse().unwrap()).await.ok().map(|i| i.hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_deletion_racing_a_remote_edit_takes_the_edit_and_leaves_no_part() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    std::fs::create_dir_all(s.a.join("dir")).unwrap();
    for f in ["f.txt", "g.txt", "h.txt"] {
        std::fs::write(s.a.join("dir").join(f), format!("{f} v1")).unwrap();
    }
    once(&s.a, &server.addr, "a").await.unwrap();
    // A long settle time: the remote edit surely arrives while the local
    // deletion still waits for the folder to be quiet.
    let mut opts = options(&s.a, "a");
    opts.settle = Duration::from_secs(1);
    let (la, mut status) = live_with(opts, &server.addr);
    until_idle(&mut status).await;

    let passes_before = status.borrow().passes;
    // Here: f.txt and g.txt deleted. Elsewhere, at the same time: f.txt edited.
    std::fs::remove_file(s.a.join("dir/f.txt")).unwrap();
    std::fs::remove_file(s.a.join("dir/g.txt")).unwrap();
    let fc = client(&server.addr);
    let src = s.b.join("edit");
    std::fs::write(&src, "f.txt v2 from elsewhere").unwrap();
    fc.upload(
        &src,
        &"dir/f.txt".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();

    // The edit wins over the deletion (modification beats deletion), the
    // other deletion goes through, and no partial download is left.
    let mut done = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {:?}",
            tree(&s.a)
        );
        done = read(s.a.join("dir/f.txt")).as_deref() == Some("f.txt v2 from elsewhere")
            && server_has(&fc, "dir/g.txt").await.is_none();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server_has(&fc, "dir/f.txt").await,
        Some(distribusync_core::ContentHash::of(
            b"f.txt v2 from elsewhere"
        ))
    );
    assert!(part_files(&s.a).is_empty(), "{:?}", part_files(&s.a));
    // The engine did not keep itself busy: a handful of passes, not the
    // hundreds a second of a pass that re-runs the same failing step.
    let passes = status.borrow().passes - passes_before;
    assert!(passes < 50, "{passes} passes");
    assert_eq!(
        tree(&s.a),
        [
            ("dir/f.txt".to_owned(), "f.txt v2 from elsewhere".to_owned()),
            ("dir/h.txt".to_owned(), "h.txt v1".to_owned())
        ]
    );
    la.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_being_written_is_sent_soon_whatever_else_keeps_failing() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    // Something that fails on every pass: a server file whose local
    // folder is a symbolic link (never written through).
    let outside = s.b.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.a.join("docs")).unwrap();
    let src = s.b.join("x");
    std::fs::write(&src, "from the server").unwrap();
    fc.upload(
        &src,
        &"docs/new.txt".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    until_idle(&mut status).await;
    // Passes that each fail on it again (the failure backoff grows).
    for i in 0..8 {
        let name = format!("step{i}");
        std::fs::write(s.a.join(&name), &name).unwrap();
        let mut arrived = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !arrived {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {name}");
            arrived = server_has(&fc, &name).await.is_some();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A new folder with a file written at once: the folder's walk finds
    // the file too young to send; it is looked at again once quiet, not
    // after the failing path's backoff.
    std::fs::create_dir(s.a.join("new")).unwrap();
    std::fs::write(s.a.join("new/file.txt"), "fresh").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while server_has(&fc, "new/file.txt").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a settled file waited for another path's backoff"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    la.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_rules_edited_while_running_apply_at_once() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    std::fs::write(s.a.join("first.txt"), "1").unwrap();
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    until_idle(&mut status).await;
    let wait_for = |name: &'static str| {
        let fc = fc.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while server_has(&fc, name).await.is_none() {
                assert!(tokio::time::Instant::now() < deadline, "timed out: {name}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for("first.txt").await;

    // A rule added while the daemon runs, then a file it matches, then
    // one it does not: once the second is on the server, the first would
    // have been sent with it or before.
    std::fs::write(s.a.join(".distribusyncignore"), "*.log\n").unwrap();
    std::fs::write(s.a.join("debug.log"), "noise").unwrap();
    std::fs::write(s.a.join("marker.txt"), "after").unwrap();
    wait_for("marker.txt").await;
    assert_eq!(server_has(&fc, "debug.log").await, None);

    // The rule removed: the file is no longer ignored and is sent.
    std::fs::write(s.a.join(".distribusyncignore"), "*.tmp\n").unwrap();
    wait_for("debug.log").await;
    la.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_the_folder_stops_sync_even_while_a_path_waits_for_a_retry() {
    let s = setup();
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    for i in 0..20 {
        std::fs::write(s.a.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    once(&s.a, &server.addr, "a").await.unwrap();
    // A path that fails on every pass, so it is left alone, waiting for
    // its retry: a server file whose local folder is a symbolic link.
    let outside = s.b.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.a.join("docs")).unwrap();
    let src = s.b.join("x");
    std::fs::write(&src, "from the server").unwrap();
    fc.upload(
        &src,
        &"docs/new.txt".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();
    let engine = SyncEngine::open(options(&s.a, "a"), client(&server.addr)).unwrap();
    let mut status = engine.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("symbolic link"))
        }),
    )
    .await
    .unwrap()
    .unwrap();
    for i in 0..20 {
        std::fs::remove_file(s.a.join(format!("f{i}"))).unwrap();
    }
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, SyncError::SafetyStop(_)), "{err}");
    assert_eq!(fc.list_all(None).await.unwrap().len(), 21);
    server.shutdown().await;
}

/// Waits until the server holds `want` at `path`.
async fn until_on_server(fc: &FilesClient, path: &str, want: &str) {
    let want = distribusync_core::ContentHash::of(want.as_bytes());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server_has(fc, path).await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {path} on the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_in_a_big_tree_examines_a_handful_of_paths_not_the_tree() {
    // 3,000 files in 30 folders of 100: a pass over the tree examines
    // thousands of paths; one over a change, a handful.
    const FILES: usize = 3000;
    let s = setup();
    files_in_folders(&s.a, FILES, 100);
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    until_idle(&mut status).await;
    until_on_server(&fc, "d29/f2999", "file 2999").await;
    // Files written just before the engine started are still "being
    // written" to it: the first pass leaves them for a look of their own a
    // moment later, and the engine is idle in between. Wait for them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fc.list_all(None).await.unwrap().len() < FILES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the first sync"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_idle(&mut status).await;
    let before = status.borrow().clone();
    assert!(
        before.examined >= FILES as u64,
        "the first pass looks at every file"
    );
    let full_passes = before.full_passes;
    // Work a change costs: what the passes examined since `from`. Waits
    // for the engine to be idle first, so every pass of it is counted.
    let cost = |from: u64, status: &mut tokio::sync::watch::Receiver<_>| {
        let status: &mut tokio::sync::watch::Receiver<distribusync_client::sync::SyncStatus> =
            status;
        status.borrow_and_update().examined - from
    };

    // 1. Saved in place.
    std::fs::write(s.a.join("d07/f0712"), "edited in place").unwrap();
    until_on_server(&fc, "d07/f0712", "edited in place").await;
    until_idle(&mut status).await;
    let after_edit = cost(before.examined, &mut status);

    // 2. Saved by writing a new file and renaming it over the old one.
    let mark = status.borrow().examined;
    std::fs::write(s.a.join("d11/f1105.new"), "replaced by rename").unwrap();
    std::fs::rename(s.a.join("d11/f1105.new"), s.a.join("d11/f1105")).unwrap();
    until_on_server(&fc, "d11/f1105", "replaced by rename").await;
    until_idle(&mut status).await;
    let after_rename = cost(mark, &mut status);

    // 3. Changed on the server by someone else.
    let mark = status.borrow().examined;
    changed_on_server(&fc, &s, "d23/f2301").await;
    eventually("the server's change arrives", || {
        read(s.a.join("d23/f2301")).as_deref() == Some("changed on the server")
    })
    .await;
    until_idle(&mut status).await;
    let after_remote = cost(mark, &mut status);

    // A handful of paths each (the file, its temporary name, the echo of
    // the engine's own upload), nowhere near the 3,000 of a full pass.
    for (what, n) in [
        ("an edit in place", after_edit),
        ("a write-then-rename save", after_rename),
        ("a change from the server", after_remote),
    ] {
        assert!(
            n <= 30,
            "{what} made the engine examine {n} paths in a tree of {FILES}"
        );
    }
    assert_eq!(
        status.borrow().full_passes,
        full_passes,
        "no pass over the whole tree"
    );
    assert_eq!(tree(&s.a).len(), FILES);
    la.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_the_watch_limit_says_so_once_and_syncs_by_rescans() {
    let s = setup();
    // Seven folders (the root included); only two may be watched.
    for d in ["p", "p/q", "r", "r/s", "r/s/t", "u"] {
        std::fs::create_dir_all(s.a.join(d)).unwrap();
        std::fs::write(s.a.join(d).join("f.txt"), d).unwrap();
    }
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let mut opts = options(&s.a, "a");
    opts.watch_limit = Some(2);
    opts.rescan_unwatched = Duration::from_millis(300);
    let (la, mut status) = live_with(opts, &server.addr);
    until_idle(&mut status).await;
    let notice = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.watch_notice.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .watch_notice
    .clone()
    .unwrap();
    assert!(
        notice.contains("7 folders") && notice.contains("this sync may watch 2"),
        "{notice}"
    );
    assert!(
        notice.contains("sudo sysctl fs.inotify.max_user_watches="),
        "{notice}"
    );
    // A change deep in a folder no watch covers (the two watched are the
    // root and one of its folders), and a new folder (which cannot be
    // watched either: the limit is hit again): both arrive.
    std::fs::write(s.a.join("r/s/t/f.txt"), "changed unwatched").unwrap();
    std::fs::create_dir(s.a.join("v")).unwrap();
    std::fs::write(s.a.join("v/g.txt"), "new and unwatched").unwrap();
    until_on_server(&fc, "r/s/t/f.txt", "changed unwatched").await;
    until_on_server(&fc, "v/g.txt", "new and unwatched").await;
    // And from the server to a folder no watch covers.
    let src = s.b.join("src");
    std::fs::write(&src, "from the server").unwrap();
    fc.upload(
        &src,
        &"u/h.txt".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();
    eventually("the server's file arrives", || {
        read(s.a.join("u/h.txt")).as_deref() == Some("from the server")
    })
    .await;
    // Said once, however often the limit is hit again and rescans run.
    let passes = status.borrow().full_passes;
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.full_passes >= passes + 2 && s.watch_limit_hits >= 2),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        status.borrow().watch_notice.as_deref(),
        Some(notice.as_str())
    );
    la.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_sends_while_it_scans_holding_a_bounded_number_of_files() {
    // 1,200 files in folders of 37, slices of 50: the scan may run at most
    // four slices (one filling, two queued, one sending) ahead of what the
    // server has, so it never holds more than 200 files unsent, whatever
    // the size of the tree. (Scanning everything first held all 1,200.)
    const FILES: usize = 1200;
    const SLICE: usize = 50;
    let s = setup();
    files_in_folders(&s.a, FILES, 37);
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    // One path the server already has, with other content: not sent
    // blindly by a slice, but a conflict for the pass's full plan.
    let theirs = s.b.join("theirs");
    std::fs::write(&theirs, "the server's version").unwrap();
    fc.upload(
        &theirs,
        &"d03/f0120".parse().unwrap(),
        None,
        std::sync::Arc::new(()),
    )
    .await
    .unwrap();

    let mut e = SyncEngine::open(
        SyncOptions {
            first_pass_slice: SLICE,
            ..options(&s.a, "a")
        },
        client(&server.addr),
    )
    .unwrap();
    let status = e.status();
    e.run_once().await.unwrap();
    let st = status.borrow().clone();
    assert!(
        st.unsent_peak > 0 && st.unsent_peak <= (SLICE * 4) as u64,
        "held {} files unsent at once (bound {})",
        st.unsent_peak,
        SLICE * 4
    );
    assert!(
        st.first_pass_slices >= (FILES / SLICE - 4) as u64,
        "only {} slices were sent while scanning",
        st.first_pass_slices
    );

    // Everything arrived, and the file both sides had is a conflict.
    let on_server = fc.list_all(None).await.unwrap();
    assert_eq!(
        on_server.len(),
        FILES + 1,
        "every file plus a conflict copy"
    );
    for i in [0, 1, 36, 37, 599, 1199] {
        let path = format!("d{:02}/f{i:04}", i / 37);
        assert_eq!(
            server_has(&fc, &path).await,
            Some(distribusync_core::ContentHash::of(
                format!("file {i}").as_bytes()
            )),
            "{path}"
        );
    }
    assert_eq!(
        read(s.a.join("d03/f0120")).as_deref(),
        Some("the server's version")
    );
    let copies: Vec<_> = tree(&s.a)
        .into_iter()
        .filter(|(p, _)| p.starts_with("d03/f0120.conflict-a-"))
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].1, "file 120");

    // A restart finds everything in sync: nothing moves.
    let uploaded = st.uploaded;
    drop(e);
    let mut e = SyncEngine::open(options(&s.a, "a"), client(&server.addr)).unwrap();
    let again = e.status();
    e.run_once().await.unwrap();
    assert_eq!(again.borrow().uploaded, 0);
    assert_eq!(again.borrow().first_pass_slices, 0);
    // Each file once (the conflicting one went up as its copy).
    assert_eq!(uploaded as usize, FILES - 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_stopped_part_way_resumes_sending_while_it_scans() {
    // 600 files, slices of 20. The first run is stopped as soon as one
    // slice has gone up; the next start must go on the same way (sending
    // while it scans, holding a bounded number of files unsent), not scan
    // and plan the whole tree at once because a base now exists.
    const FILES: usize = 600;
    const SLICE: usize = 20;
    let s = setup();
    files_in_folders(&s.a, FILES, 37);
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let opts = SyncOptions {
        first_pass_slice: SLICE,
        ..options(&s.a, "a")
    };

    let mut e = SyncEngine::open(opts.clone(), client(&server.addr)).unwrap();
    let mut status = e.status();
    tokio::select! {
        biased;
        r = status.wait_for(|s| s.first_pass_slices >= 1) => {
            r.unwrap();
        }
        r = e.run_once() => panic!("the first sync ended before it could be stopped: {r:?}"),
    }
    drop(e);
    let sent_before = fc.list_all(None).await.unwrap().len();
    assert!(
        (SLICE..FILES).contains(&sent_before),
        "the first run was not stopped part way ({sent_before} files on the server)"
    );

    let mut e = SyncEngine::open(opts.clone(), client(&server.addr)).unwrap();
    let again = e.status();
    e.run_once().await.unwrap();
    let st = again.borrow().clone();
    assert!(
        st.first_pass_slices > 0,
        "the restarted first sync did not send while scanning"
    );
    assert!(
        st.unsent_peak > 0 && st.unsent_peak <= (SLICE * 4) as u64,
        "held {} files unsent at once (bound {})",
        st.unsent_peak,
        SLICE * 4
    );
    assert!(
        (st.uploaded as usize) <= FILES - SLICE,
        "the restart sent {} files again, not just the rest",
        st.uploaded
    );
    let on_server = fc.list_all(None).await.unwrap();
    assert_eq!(on_server.len(), FILES);
    for i in [0, 299, 599] {
        let path = format!("d{:02}/f{i:04}", i / 37);
        assert_eq!(
            server_has(&fc, &path).await,
            Some(distribusync_core::ContentHash::of(
                format!("file {i}").as_bytes()
            )),
            "{path}"
        );
    }

    // Finished now: a further start is an ordinary restart.
    drop(e);
    let mut e = SyncEngine::open(opts, client(&server.addr)).unwrap();
    let third = e.status();
    e.run_once().await.unwrap();
    assert_eq!(third.borrow().first_pass_slices, 0);
    assert_eq!(third.borrow().uploaded, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_plans_only_what_changed_while_stopped() {
    // 1,000 files in folders of 100. A restart walks the tree (1,010
    // entries) but plans only the paths whose views disagree: none when
    // nothing changed (planning every path of the three views added
    // 3,000), two after an edit and a deletion made while stopped.
    const FILES: usize = 1000;
    let s = setup();
    for i in 0..FILES {
        let dir = s.a.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:04}")), format!("file {i}")).unwrap();
    }
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    once(&s.a, &server.addr, "a").await.unwrap();

    let e = once(&s.a, &server.addr, "a").await.unwrap();
    let st = e.status().borrow().clone();
    assert_eq!((st.uploaded, st.downloaded, st.passes), (0, 0, 1));
    assert!(
        st.examined <= FILES as u64 + 20,
        "a restart with nothing changed examined {} paths for {FILES} files",
        st.examined
    );
    drop(e);

    std::fs::write(s.a.join("d3/f0345"), "edited while stopped").unwrap();
    std::fs::remove_file(s.a.join("d7/f0777")).unwrap();
    let e = once(&s.a, &server.addr, "a").await.unwrap();
    let st = e.status().borrow().clone();
    assert_eq!((st.uploaded, st.downloaded), (1, 0));
    assert!(
        st.examined <= st.passes * (FILES as u64 + 20),
        "{} paths examined in {} passes",
        st.examined,
        st.passes
    );
    assert_eq!(
        server_has(&fc, "d3/f0345").await,
        Some(distribusync_core::ContentHash::of(b"edited while stopped"))
    );
    assert_eq!(server_has(&fc, "d7/f0777").await, None);
    assert_eq!(fc.list_all(None).await.unwrap().len(), FILES - 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rescan_holds_the_local_view_once() {
    // 1,500 files in folders of 100, rescanned by the same engine after a
    // folder rename and an edit: the old view moves into the new one as
    // the walk goes (before, the scan built a second view beside the old
    // one plus an index of every old entry by stat: three times the tree).
    const FILES: usize = 1500;
    let s = setup();
    files_in_folders(&s.a, FILES, 100);
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let mut e = once(&s.a, &server.addr, "a").await.unwrap();
    let status = e.status();

    std::fs::rename(s.a.join("d03"), s.a.join("e03")).unwrap();
    std::fs::write(s.a.join("d07/f0705"), "edited").unwrap();
    let uploaded = status.borrow().uploaded;
    e.run_once().await.unwrap();
    let st = status.borrow().clone();
    // The tree once, plus what changed (101 files to hash, and the 100
    // that disappeared, by stat, for the renamed ones to take their
    // hashes from).
    assert!(
        st.scan_peak <= FILES as u64 + 2 * 101,
        "a rescan of {FILES} files held {} entries at once",
        st.scan_peak
    );
    assert_eq!(st.uploaded - uploaded, 1, "only the edit is sent");
    assert_eq!(server_has(&fc, "d03/f0300").await, None);
    assert_eq!(
        server_has(&fc, "e03/f0300").await,
        Some(distribusync_core::ContentHash::of(b"file 300"))
    );
    assert_eq!(
        server_has(&fc, "d07/f0705").await,
        Some(distribusync_core::ContentHash::of(b"edited"))
    );
    assert_eq!(fc.list_all(None).await.unwrap().len(), FILES);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_renamed_moments_after_its_files_were_saved_travels_as_one_rename() {
    // The files are younger than the settle window when their folder is
    // renamed. A young file is normally left alone until it settles, but
    // one with the stat (inode, size, mtime) of a file the view knew is
    // that file renamed: its content is known, so the folder travels as
    // one rename, not as deletes now and uploads once the files settle.
    let s = setup();
    std::fs::create_dir_all(s.a.join("docs")).unwrap();
    for i in 0..10 {
        std::fs::write(s.a.join(format!("docs/f{i}")), format!("file {i}")).unwrap();
    }
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    drop(once(&s.a, &server.addr, "a").await.unwrap());
    let seq_before = fc
        .list_all(None)
        .await
        .unwrap()
        .iter()
        .map(|f| f.revision)
        .max()
        .unwrap();

    let mut opts = options(&s.a, "a");
    opts.settle = Duration::from_secs(3600);
    let engine = SyncEngine::open(opts, client(&server.addr)).unwrap();
    let status = engine.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    // The daemon's first pass sees the folder as it is before the rename.
    eventually("the daemon's first pass", || status.borrow().passes >= 1).await;
    std::fs::rename(s.a.join("docs"), s.a.join("papers")).unwrap();
    let mut arrived = false;
    for _ in 0..1200 {
        if server_has(&fc, "papers/f9").await.is_some()
            && server_has(&fc, "docs/f0").await.is_none()
        {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(arrived, "the rename did not reach the server within 60 s");
    let changes = logged_since(&fc, seq_before).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    stop.cancel();
    task.await.unwrap().unwrap();
    server.shutdown().await;
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

/// Calls of a Files method the server has finished, whatever their code.
fn calls(metrics: &str, method: &str) -> u64 {
    let label = format!(r#"service="distribusync.v1.Files",method="{method}","#);
    metrics
        .lines()
        .filter(|l| l.starts_with("distribusync_rpc_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The metrics of the server at `metrics` once they count `downloads`
/// Download calls (counted when each call ends; safety net: 30 s, then
/// they are returned as they are).
async fn once_downloads_counted(metrics: std::net::SocketAddr, downloads: u64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = scrape(metrics).await;
        if calls(&now, "Download") >= downloads || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A live sync client of `s.a` on the server at `addr`, once a first
/// file went through it to the server (`fc`): in sync and idle.
async fn live_a_in_sync(
    s: &Setup,
    fc: &FilesClient,
    addr: &str,
) -> (
    Live,
    tokio::sync::watch::Receiver<distribusync_client::sync::SyncStatus>,
) {
    std::fs::write(s.a.join("first"), "synced before").unwrap();
    let (la, mut status) = live_with(options(&s.a, "a"), addr);
    until_idle(&mut status).await;
    until_on_server(fc, "first", "synced before").await;
    (la, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_the_server_costs_one_download_and_no_stat() {
    // The change log already says which version the server has (revision,
    // hash, size): a client fetching it need not ask again first. With a
    // hundred clients, that question was a hundred round trips per change.
    let s = setup();
    let (server, metrics) = start_server_with_metrics(&s.root).await;
    let fc = client(&server.addr);
    let (la, _) = live_a_in_sync(&s, &fc, &server.addr).await;

    let before = scrape(metrics).await;
    const CHANGES: u64 = 5;
    for i in 0..CHANGES {
        // Bigger than what the change log carries (see the next test).
        let src = s.b.join(format!("src{i}"));
        std::fs::write(&src, big(i)).unwrap();
        fc.upload(
            &src,
            &format!("new/f{i}").parse().unwrap(),
            Some(0),
            std::sync::Arc::new(()),
        )
        .await
        .unwrap();
    }
    eventually("the server's changes arrive", || {
        (0..CHANGES).all(|i| read(s.a.join(format!("new/f{i}"))) == Some(big(i)))
    })
    .await;
    // Counted when each call ends: wait for the last download's count.
    let after = once_downloads_counted(metrics, calls(&before, "Download") + CHANGES).await;
    assert_eq!(
        calls(&after, "Download") - calls(&before, "Download"),
        CHANGES,
        "one download per file changed on the server"
    );
    assert_eq!(
        calls(&after, "Stat") - calls(&before, "Stat"),
        0,
        "no Stat before a download whose version the change log gave"
    );
    la.stop().await;
    server.shutdown().await;
}

/// A file of 8 KiB: more than a change record carries.
fn big(i: u64) -> String {
    format!("from elsewhere {i}\n").repeat(8192 / 16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_changed_on_the_server_comes_with_its_change_and_no_download() {
    // A put of a file of at most 4 KiB reaches watching clients with its
    // content: a sync client writes it (verified, fsynced, renamed into
    // place as a download would) without a Download call, so a hundred
    // clients of one change make no hundred downloads. A bigger file is
    // still downloaded, once. (Before: one Download per client per change,
    // whatever the size.)
    let s = setup();
    let (server, metrics) = start_server_with_metrics(&s.root).await;
    let fc = client(&server.addr);
    let (la, mut status) = live_a_in_sync(&s, &fc, &server.addr).await;

    let before = scrape(metrics).await;
    let put = |name: String, data: String| {
        let (fc, src) = (
            fc.clone(),
            s.b.join(format!("src-{}", name.replace('/', "-"))),
        );
        async move {
            std::fs::write(&src, &data).unwrap();
            let at = name.parse().unwrap();
            let known = fc.stat(&at).await.map_or(0, |i| i.revision);
            fc.upload(&src, &at, Some(known), std::sync::Arc::new(()))
                .await
                .unwrap();
        }
    };
    const CHANGES: u64 = 5;
    for i in 0..CHANGES {
        put(format!("small/f{i}"), format!("small {i}")).await;
    }
    // An existing file replaced, and one of exactly 4 KiB.
    put("first".into(), "replaced on the server".into()).await;
    put("small/edge".into(), "x".repeat(4096)).await;
    eventually("the server's small changes arrive", || {
        (0..CHANGES).all(|i| {
            read(s.a.join(format!("small/f{i}"))).as_deref() == Some(format!("small {i}").as_str())
        }) && read(s.a.join("first")).as_deref() == Some("replaced on the server")
            && read(s.a.join("small/edge")) == Some("x".repeat(4096))
    })
    .await;
    // Then a big one, whose download is counted: once it is, any download
    // of the small ones (made before it) would be counted too.
    put("big".into(), big(0)).await;
    eventually("the big file arrives", || {
        read(s.a.join("big")) == Some(big(0))
    })
    .await;
    let after = once_downloads_counted(metrics, calls(&before, "Download") + 1).await;
    assert_eq!(
        calls(&after, "Download") - calls(&before, "Download"),
        1,
        "only the file bigger than 4 KiB was downloaded"
    );
    until_idle(&mut status).await;
    la.stop().await;
    // Recorded as in sync: a restart moves nothing.
    let e = once(&s.a, &server.addr, "a").await.unwrap();
    let st = e.status().borrow().clone();
    assert_eq!((st.uploaded, st.downloaded), (0, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_view_and_the_base_stay_in_the_state_database_not_in_memory() {
    // 2,000 files, sent in the first pass's own slices (512, 1,024, the
    // rest) and batches of up to 1,000 files: the engine records them a
    // page of the state database's writes at a time (256), so it never
    // holds more than about a page of entries of the server view and the
    // base, whatever the tree, the batch or the burst of changes read
    // from the log; a restart that reads back every change the first sync
    // made holds none of them, and a change from the server holds its own.
    // (Before: a batch's 1,000 files were held with their results, 2,000
    // entries, and a read of the log held every change it brought.)
    const FILES: usize = 2000;
    const BOUND: u64 = 300;
    let s = setup();
    files_in_folders(&s.a, FILES, 100);
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    until_idle(&mut status).await;
    until_on_server(&fc, "d19/f1999", "file 1999").await;
    until_idle(&mut status).await;
    let first = status.borrow().clone();
    assert_eq!(first.uploaded, FILES as u64);
    assert!(
        first.views_held <= BOUND,
        "a first sync of {FILES} files held {} entries of the server view and base",
        first.views_held
    );

    // Changed on the server by someone else: the change's own entries.
    for path in ["d03/f0301", "d17/f1702"] {
        changed_on_server(&fc, &s, path).await;
    }
    eventually("the server's changes arrive", || {
        ["d03/f0301", "d17/f1702"]
            .iter()
            .all(|p| read(s.a.join(p)).as_deref() == Some("changed on the server"))
    })
    .await;
    until_idle(&mut status).await;
    assert!(status.borrow().views_held <= BOUND);
    la.stop().await;

    // A restart that reads the whole change log back (as after a daemon
    // killed before it recorded how far it had read: here the record is
    // taken back to the start, so it is every one of the 2,002 changes,
    // whatever the timing): each is what the view already holds, or
    // older than it (the two files changed later), so nothing is held,
    // written or planned for them, and the full pass compares the walk
    // with the database.
    let db = s.a.join(".distribusync/state.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE meta SET value = 0 WHERE key = 'last_seq'", [])
        .unwrap();
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    until_idle(&mut status).await;
    let restarted = status.borrow().clone();
    assert_eq!(
        restarted.views_held, 0,
        "a restart with nothing to plan held entries of the server view and base"
    );
    assert_eq!(restarted.uploaded + restarted.downloaded, 0);
    assert!(
        restarted.examined <= FILES as u64 + 50,
        "the restart examined {} paths",
        restarted.examined
    );
    la.stop().await;
    assert_eq!(tree(&s.a).len(), FILES);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_view_held_between_passes_follows_what_differs_not_the_tree() {
    // 3,000 files in folders of 100. Between passes the engine holds in
    // memory only the local files that differ from the merge base (which
    // lives in the state database) and the base paths gone from disk: a
    // few entries after a first sync, after edits, a deletion, a folder
    // renamed and a change from the server, and after a restart that
    // finds an edit and a deletion made while stopped. (Before, the local
    // view held every file of the tree between passes: 3,000 entries
    // here, 150-250 MB at a million files.)
    const FILES: usize = 3000;
    const BOUND: u64 = 200;
    let s = setup();
    files_in_folders(&s.a, FILES, 100);
    let server = start_server(&s.root, None).await;
    let fc = client(&server.addr);
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| {
            s.uploaded == FILES as u64 && s.phase == distribusync_client::sync::SyncPhase::Idle
        }),
    )
    .await
    .expect("the first sync ends")
    .unwrap();
    let first = status.borrow().clone();
    assert!(
        first.local_held <= BOUND,
        "after a first sync of {FILES} files the engine held {} local entries",
        first.local_held
    );

    // Changes here and on the server while it runs.
    std::fs::write(s.a.join("d05/f0505"), "edited here").unwrap();
    std::fs::remove_file(s.a.join("d06/f0606")).unwrap();
    std::fs::rename(s.a.join("d07"), s.a.join("e07")).unwrap();
    changed_on_server(&fc, &s, "d08/f0808").await;
    until_on_server(&fc, "d05/f0505", "edited here").await;
    until_on_server(&fc, "e07/f0700", "file 700").await;
    eventually("the server's change arrives", || {
        read(s.a.join("d08/f0808")).as_deref() == Some("changed on the server")
    })
    .await;
    until_gone_from_server(&fc, "d06/f0606").await;
    until_gone_from_server(&fc, "d07/f0700").await;
    until_idle(&mut status).await;
    let live = status.borrow().clone();
    assert!(
        live.local_held <= BOUND,
        "after a few changes the engine held {} local entries",
        live.local_held
    );
    la.stop().await;
    assert_eq!(server_has(&fc, "d06/f0606").await, None);
    assert_eq!(server_has(&fc, "d07/f0700").await, None);

    // Changed while stopped: the restart's full scan finds the edit (a
    // file that differs) and the deletion (a base path not on disk),
    // though neither the walk nor the view holds the files in sync.
    std::fs::write(s.a.join("d10/f1010"), "edited while stopped").unwrap();
    std::fs::remove_file(s.a.join("d11/f1111")).unwrap();
    let (la, mut status) = live_with(options(&s.a, "a"), &server.addr);
    until_on_server(&fc, "d10/f1010", "edited while stopped").await;
    until_gone_from_server(&fc, "d11/f1111").await;
    until_idle(&mut status).await;
    let restarted = status.borrow().clone();
    assert_eq!(server_has(&fc, "d11/f1111").await, None);
    assert_eq!((restarted.uploaded, restarted.downloaded), (1, 0));
    assert!(
        restarted.local_held <= BOUND,
        "after a restart the engine held {} local entries",
        restarted.local_held
    );
    la.stop().await;
    assert_eq!(fc.list_all(None).await.unwrap().len(), FILES - 2);
    server.shutdown().await;
}

/// `n` files `f0000`, `f0001`, … ("file 0", …) under `dir`, in folders
/// of `per_folder` (`d00`, `d01`, …).
fn files_in_folders(dir: &Path, n: usize, per_folder: usize) {
    for i in 0..n {
        let d = dir.join(format!("d{:02}", i / per_folder));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i:04}")), format!("file {i}")).unwrap();
    }
}

/// Replaces `path` on the server (through `fc`, as another machine
/// would) with "changed on the server".
async fn changed_on_server(fc: &FilesClient, s: &Setup, path: &str) {
    let src = s.b.join("src");
    std::fs::write(&src, "changed on the server").unwrap();
    let at = path.parse().unwrap();
    let info = fc.stat(&at).await.unwrap();
    fc.upload(&src, &at, Some(info.revision), std::sync::Arc::new(()))
        .await
        .unwrap();
}

async fn until_gone_from_server(fc: &FilesClient, path: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server_has(fc, path).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {path} to leave the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
