//! Bad input and failing disks: every accepted path works for every
//! operation, errors say what is wrong with the right code, and nothing is
//! lost or left behind.

mod common;

use std::sync::Arc;

use common::TestServer;
use distribusync_client::FilesClient;
use distribusync_core::{ContentHash, RemotePath};

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

async fn put_bytes(
    c: &FilesClient,
    dir: &std::path::Path,
    path: &str,
    data: &[u8],
) -> distribusync_client::FileInfo {
    let local = dir.join(format!("src-{}", local_name(path)));
    std::fs::write(&local, data).unwrap();
    c.upload(&local, &p(path), None, Arc::new(()))
        .await
        .unwrap()
}

fn local_name(s: &str) -> String {
    ContentHash::of(s.as_bytes()).to_hex()[..16].to_owned()
}

async fn get_bytes(c: &FilesClient, dir: &std::path::Path, path: &str) -> Vec<u8> {
    let local = dir.join(format!("dst-{}", local_name(path)));
    let _ = std::fs::remove_file(&local);
    c.download(&p(path), &local, Arc::new(())).await.unwrap();
    std::fs::read(local).unwrap()
}

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
    assert_eq!(listed, [put.clone()]);

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
