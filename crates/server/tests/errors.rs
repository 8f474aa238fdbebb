//! Bad input and failing disks: every accepted path works for every
//! operation, errors say what is wrong with the right code, and nothing is
//! lost or left behind.

mod common;

use std::sync::Arc;

use common::{TestServer, get_bytes, p, put_bytes};
use distribusync_client::FilesClient;
use distribusync_core::ContentHash;

/// Names in `root` other than the server's own folder.
fn served_names(root: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".distribusync")
        .collect();
    names.sort();
    names
}

/// A path of exactly `MAX_PATH_BYTES` (4,096) bytes, first segment `first`:
/// 17 names of 240 bytes, one of them in two-byte characters.
fn longest_path(first: char, last: char) -> String {
    let mut segs: Vec<String> = (0..17)
        .map(|i| char::from(b'b' + i).to_string().repeat(240))
        .collect();
    segs[0] = first.to_string().repeat(240);
    segs[8] = "é".repeat(120);
    segs[16] = last.to_string().repeat(240);
    let s = segs.join("/");
    assert_eq!(s.len(), distribusync_core::path::MAX_PATH_BYTES);
    s
}

#[tokio::test]
async fn the_longest_paths_work_for_every_operation_whatever_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    // Root and path together are far past what the kernel takes in one
    // call (PATH_MAX, 4,096 bytes).
    let root = tmp.path().join("r".repeat(200));
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    let long = longest_path('a', 'x');
    let put = put_bytes(&c, tmp.path(), &long, b"deep").await;
    assert_eq!(c.stat(&p(&long)).await.unwrap(), put);
    assert_eq!(get_bytes(&c, tmp.path(), &long).await, b"deep");
    let listed = c.list_all(Some(&p(&long[..240]))).await.unwrap();
    assert_eq!(listed, std::slice::from_ref(&put));

    // A file rename, then a folder rename, between paths of that length.
    let renamed = longest_path('a', 'y');
    c.rename(&p(&long), &p(&renamed), false, None)
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, tmp.path(), &renamed).await, b"deep");
    let moved = longest_path('z', 'y');
    c.rename(&p(&renamed[..240]), &p(&moved[..240]), false, None)
        .await
        .unwrap();
    let info = c.stat(&p(&moved)).await.unwrap();
    assert_eq!(info.hash, ContentHash::of(b"deep"));

    // A restart reconciles the index with the disk: the file is found
    // where it is, unchanged (no delete, no new revision).
    server.stop().await;
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    assert_eq!(c.stat(&p(&moved)).await.unwrap(), info);
    assert_eq!(get_bytes(&c, tmp.path(), &moved).await, b"deep");

    // And it can be removed: nothing is left behind, no folder either.
    c.delete(&p(&moved), None).await.unwrap();
    assert!(c.list_all(None).await.unwrap().is_empty());
    assert_eq!(served_names(&root), Vec::<String>::new());
    server.stop().await;
}

/// A small tmpfs mounted for one test (mounting needs root; CI runs as
/// root here). Unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs (this test needs root)");
            return None;
        }
        Some(Self {
            dir: dir.to_owned(),
        })
    }

    /// Fills the disk with a file `name`, until no byte more fits.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join(name)).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block).and_then(|()| f.flush()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Smaller writes too, so not even a page is left.
        while f.write_all(&[0]).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_naming_the_disk_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&tmp.path().join("disk"), "2m") else {
        return;
    };
    let root = disk.dir.join("MASTER");
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    let old = put_bytes(&c, tmp.path(), "doc", b"old version").await;
    put_bytes(&c, tmp.path(), "trip/a", b"a").await;
    put_bytes(&c, tmp.path(), "trip/b", b"b").await;
    disk.fill("filler");

    let local = tmp.path().join("new-doc");
    std::fs::write(&local, vec![7u8; 256 << 10]).unwrap();
    let err = c
        .upload(&local, &p("doc"), None, Arc::new(()))
        .await
        .unwrap_err();
    let shown = root.canonicalize().unwrap().display().to_string();
    assert!(
        matches!(&err, distribusync_client::ClientError::LimitExceeded(m)
            if m.contains(&format!("no space left on the server's disk ({shown})"))),
        "{err:?}"
    );
    // Nothing lost, nothing left behind.
    assert_eq!(c.stat(&p("doc")).await.unwrap(), old);
    assert_eq!(get_bytes(&c, tmp.path(), "doc").await, b"old version");
    // Staged files are removed off the async threads: soon, not at once.
    common::eventually("staging emptied", || staging_is_empty(&root)).await;

    // A folder rename on the full disk says truthfully what happened.
    let err = c
        .rename(&p("trip"), &p("trip2"), false, None)
        .await
        .unwrap_err();
    let distribusync_client::ClientError::LimitExceeded(m) = &err else {
        panic!("{err:?}")
    };
    assert!(m.contains("no space left on the server's disk"), "{m}");
    let made = m.contains("the rename of trip to trip2 was done on the server's disk");
    assert_eq!(
        served_names(&root),
        ["doc", if made { "trip2" } else { "trip" }]
    );

    // Room again: everything works as before.
    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    put_bytes(&c, tmp.path(), "doc", b"new version").await;
    // A rename made but not recorded is recorded (once there is room) as
    // the one rename it was.
    let at = if made { "trip2/a" } else { "trip/a" };
    let mut listed = Vec::new();
    for _ in 0..1000 {
        listed = c.list_all(None).await.unwrap();
        if listed.iter().any(|f| f.path.as_str() == at) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let names: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    let want = if made {
        ["doc", "trip2/a", "trip2/b"]
    } else {
        ["doc", "trip/a", "trip/b"]
    };
    assert_eq!(names, want);
    server.stop().await;
}

/// True when no staged upload is left under the staging folder.
fn staging_is_empty(root: &std::path::Path) -> bool {
    let staging = root.join(".distribusync/staging");
    staging.is_dir()
        && std::fs::read_dir(&staging).unwrap().all(|shard| {
            std::fs::read_dir(shard.unwrap().path())
                .unwrap()
                .next()
                .is_none()
        })
}

/// The change log from the start: (op, path, new path, folder).
async fn log(c: &FilesClient) -> Vec<(String, String, bool)> {
    let mut w = c.watch(0).await.unwrap();
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap();
        match event {
            Some(distribusync_client::WatchEvent::Change(ch)) => out.push(match ch.kind {
                distribusync_client::ChangeKind::Put(f) => {
                    ("put".into(), f.path.to_string(), false)
                }
                distribusync_client::ChangeKind::Delete(p) => {
                    ("delete".into(), p.to_string(), false)
                }
                distribusync_client::ChangeKind::Rename {
                    from, to, folder, ..
                } => ("rename".into(), format!("{from} -> {to}"), folder),
            }),
            Some(distribusync_client::WatchEvent::CaughtUp(_)) => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The state a crash leaves between a rename on disk and its commit: the
/// intent recorded, the disk renamed, the index not.
fn crash_mid_rename(root: &std::path::Path, from: &str, to: &str, on_disk: bool) {
    let db = rusqlite::Connection::open(root.join(".distribusync/index.db")).unwrap();
    db.execute(
        "INSERT INTO pending_renames (from_path, to_path, folder) VALUES (?1, ?2, 1)",
        [from, to],
    )
    .unwrap();
    drop(db);
    if on_disk {
        std::fs::rename(root.join(from), root.join(to)).unwrap();
    }
}

#[tokio::test]
async fn a_folder_rename_cut_short_by_a_crash_is_completed_as_one_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    let mut before = Vec::new();
    for i in 0..50 {
        before.push(
            put_bytes(
                &c,
                tmp.path(),
                &format!("trip/{i}"),
                format!("{i}").as_bytes(),
            )
            .await,
        );
    }
    put_bytes(&c, tmp.path(), "other/x", b"x").await;
    server.stop().await;

    crash_mid_rename(&root, "trip", "trip2", true);
    // A rename begun whose disk part never happened is forgotten.
    crash_mid_rename(&root, "other", "other2", false);

    let server = TestServer::start(&root).await;
    let c = server.client().await;
    let changes = log(&c).await;
    assert_eq!(changes.len(), 52, "{changes:?}");
    assert_eq!(
        changes[51],
        ("rename".to_owned(), "trip -> trip2".to_owned(), true)
    );
    for f in &before {
        let moved = format!("trip2/{}", f.path.file_name());
        let now = c.stat(&p(&moved)).await.unwrap();
        assert_eq!((now.hash, now.size), (f.hash, f.size));
        assert_eq!(
            now.revision, 52,
            "moved with the rename, as any folder rename"
        );
    }
    assert!(c.stat(&p("other/x")).await.is_ok());
    // Nothing left to complete: a second start records nothing new.
    server.stop().await;
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    assert_eq!(log(&c).await.len(), 52);
    server.stop().await;
}

#[tokio::test]
async fn a_batch_that_fails_on_a_full_disk_leaves_no_staged_file() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&tmp.path().join("disk"), "2m") else {
        return;
    };
    let root = disk.dir.join("MASTER");
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    // The server has opened its folder (it does so after binding).
    assert!(c.list_all(None).await.unwrap().is_empty());
    disk.fill("filler");
    // Room for about two of the four files.
    let filler = std::fs::OpenOptions::new()
        .write(true)
        .open(disk.dir.join("filler"))
        .unwrap();
    let len = filler.metadata().unwrap().len();
    filler.set_len(len - (450 << 10)).unwrap();
    let mut items = Vec::new();
    for i in 0..4 {
        let local = tmp.path().join(format!("f{i}"));
        std::fs::write(&local, vec![i as u8; 200 << 10]).unwrap();
        items.push((local, p(&format!("f{i}")), None));
    }
    let err = c.upload_batch(items).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no space left on the server's disk"),
        "{err}"
    );
    common::eventually("staged files of a failed batch removed", || {
        staging_is_empty(&root)
    })
    .await;
    assert!(c.list_all(None).await.unwrap().is_empty());
    server.stop().await;
}

fn raw(addr: &str) -> distribusync_proto::v1::files_client::FilesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect_lazy();
    // Sends what the server will refuse.
    distribusync_proto::v1::files_client::FilesClient::new(ch).max_encoding_message_size(64 << 20)
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted() {
    use distribusync_proto::v1;
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let mut c = raw(&server.addr);
    let over = distribusync_core::limits::MAX_MESSAGE_SIZE + (1 << 20);

    // A unary call: refused before any handler runs.
    let err = c
        .stat(v1::StatRequest {
            path: "x".repeat(over),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");

    // A message of a stream: the upload is refused, nothing is stored.
    let data = vec![1u8; over];
    let msgs = vec![
        v1::UploadRequest {
            msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
                path: "big".into(),
                size: data.len() as u64,
                hash: ContentHash::of(&data).0.to_vec(),
                modified: None,
                if_revision: None,
                offset: 0,
            })),
        },
        v1::UploadRequest {
            msg: Some(v1::upload_request::Msg::Chunk(data)),
        },
    ];
    let err = c.upload(futures::stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // Other errors keep their code.
    let err = c
        .stat(v1::StatRequest {
            path: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn client_strings_are_echoed_bounded() {
    use distribusync_proto::v1::{self, compute_client::ComputeClient};
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("MASTER")).await;
    let ch = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect_lazy();
    let mut compute = ComputeClient::new(ch).max_encoding_message_size(16 << 20);
    let huge = "j".repeat(1 << 20);
    let err = compute
        .get_job(v1::GetJobRequest {
            job_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    assert!(
        err.message().contains("(1048576 bytes)"),
        "{}",
        err.message()
    );
    let numbers: &[i64] = &[1, 2];
    let err = compute
        .submit(v1::SubmitRequest {
            client_id: "me".into(),
            job_id: huge.clone(),
            deadline: None,
            task: Some(v1::submit_request::Task::Add(v1::AddTask {
                numbers: Some(numbers.into()),
            })),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());

    // A path is echoed bounded too, so a message naming two long paths
    // still says what is wrong.
    let c = server.client().await;
    let long = longest_path('a', 'x');
    let err = c
        .rename(&p(&long[..240]), &p(&long), false, None)
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(shown.len() < 1024, "{} bytes", shown.len());
    assert!(shown.contains("into itself"), "{shown}");
    let mut files = raw(&server.addr);
    let err = files
        .stat(v1::StatRequest {
            path: format!("{}\u{1}", "y".repeat(4000)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    server.stop().await;
}

/// Uploads `data` to `path` with the modified time `modified`, raw.
async fn upload_with_time(
    addr: &str,
    path: &str,
    data: &[u8],
    modified: prost_types::Timestamp,
) -> Result<distribusync_proto::v1::UploadResponse, tonic::Status> {
    use distribusync_proto::v1;
    let msgs = vec![
        v1::UploadRequest {
            msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
                path: path.into(),
                size: data.len() as u64,
                hash: ContentHash::of(data).0.to_vec(),
                modified: Some(modified),
                if_revision: None,
                offset: 0,
            })),
        },
        v1::UploadRequest {
            msg: Some(v1::upload_request::Msg::Chunk(data.to_vec())),
        },
    ];
    raw(addr)
        .upload(futures::stream::iter(msgs))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_modified_time_the_server_cannot_keep_is_refused_and_others_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MASTER");
    let server = TestServer::start(&root).await;
    let far = prost_types::Timestamp {
        seconds: 1 << 62,
        nanos: 0,
    };
    let err = upload_with_time(&server.addr, "f", b"data", far)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("modified time out of range") && err.message().contains("2262"),
        "{}",
        err.message()
    );
    assert!(!root.join("f").exists());

    // Far, but within range: kept to the nanosecond, in the index and on disk.
    let c = server.client().await;
    for (seconds, nanos) in [
        (7_258_118_400, 123_456_789),
        (1, 1),
        (9_000_000_000, 999_999_999),
        // 1969 and 1905: before the epoch, kept too (once came back as 1970).
        (-1, 750_000_000),
        (-2_051_222_400, 5),
    ] {
        let t = prost_types::Timestamp { seconds, nanos };
        upload_with_time(&server.addr, "f", b"data", t)
            .await
            .unwrap();
        let want = distribusync_proto::system_time(&t).unwrap();
        assert_eq!(c.stat(&p("f")).await.unwrap().modified, want);
        assert_eq!(
            std::fs::metadata(root.join("f"))
                .unwrap()
                .modified()
                .unwrap(),
            want
        );
    }
    // And a restart finds index and disk agreeing: no new revision.
    let rev = c.stat(&p("f")).await.unwrap().revision;
    server.stop().await;
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    assert_eq!(c.stat(&p("f")).await.unwrap().revision, rev);
    server.stop().await;
}

#[tokio::test]
async fn a_folder_that_cannot_be_made_on_a_full_disk_names_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for data, but few inodes: the staged file takes the last one,
    // so the folder it goes into cannot be made.
    let Some(disk) = SmallDisk::mount(&tmp.path().join("disk"), "4m,nr_inodes=64") else {
        return;
    };
    let root = disk.dir.join("MASTER");
    let server = TestServer::start(&root).await;
    let c = server.client().await;
    put_bytes(&c, tmp.path(), "first", b"1").await;
    let mut n = 0;
    while std::fs::File::create(disk.dir.join(format!("inode-{n}"))).is_ok() {
        n += 1;
    }
    std::fs::remove_file(disk.dir.join(format!("inode-{}", n - 1))).unwrap();
    let local = tmp.path().join("src");
    std::fs::write(&local, b"data").unwrap();
    let err = c
        .upload(&local, &p("new-folder/f"), None, Arc::new(()))
        .await
        .unwrap_err();
    let shown = root.canonicalize().unwrap().display().to_string();
    assert!(
        matches!(&err, distribusync_client::ClientError::LimitExceeded(m)
            if m.contains(&format!("no space left on the server's disk ({shown})"))),
        "{err:?}"
    );
    // Staged files are removed off the async threads: soon, not at once.
    common::eventually("staging emptied", || staging_is_empty(&root)).await;
    assert!(!root.join("new-folder").exists());
    server.stop().await;
}
