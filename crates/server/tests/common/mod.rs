//! A real server on 127.0.0.1:0 in a temp dir, for integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use distribusync_client::FilesClient;
use distribusync_core::{ContentHash, RemotePath};
use distribusync_server::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: String,
    pub root: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Binds first, then spawns: the address is live when this returns.
    pub async fn start(root: &Path) -> Self {
        Self::start_with(ServerConfig::new(root)).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel();
        let root = config.root.clone();
        let task = tokio::spawn(async move {
            distribusync_server::serve(listener, config, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            addr,
            root,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> FilesClient {
        FilesClient::connect(&self.addr).await.expect("connects")
    }

    /// Triggers shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .expect("server stops in time")
            .expect("server task");
    }
}

/// Polls `check` until it holds; a safety net, not a timing.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay in front of a server whose connections can be cut at any
/// moment, as a network failure or a killed client would.
pub struct Relay {
    pub addr: String,
    task: JoinHandle<()>,
    links: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(server_addr: &str) -> Self {
        let target = server_addr.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Self { addr, task, links }
    }

    /// Closes every relayed connection, mid-message if need be.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A validated remote path (tests only: panics on a bad one).
pub fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

/// A local name derived from a remote path, distinct per path.
fn local_name(s: &str) -> String {
    ContentHash::of(s.as_bytes()).to_hex()[..16].to_owned()
}

/// Uploads `data` as `path` through the real client.
pub async fn put_bytes(
    c: &FilesClient,
    dir: &Path,
    path: &str,
    data: &[u8],
) -> distribusync_client::FileInfo {
    let local = dir.join(format!("src-{}", local_name(path)));
    std::fs::write(&local, data).unwrap();
    c.upload(&local, &p(path), None, Arc::new(()))
        .await
        .unwrap()
}

/// Downloads `path` through the real client and returns its bytes.
pub async fn get_bytes(c: &FilesClient, dir: &Path, path: &str) -> Vec<u8> {
    let local = dir.join(format!("dst-{}", local_name(path)));
    let _ = std::fs::remove_file(&local);
    c.download(&p(path), &local, Arc::new(())).await.unwrap();
    std::fs::read(local).unwrap()
}

/// Files in a server's staging area under `root`: one per upload in
/// progress (none once every upload ended, however it ended).
pub fn staged_files(root: &Path) -> usize {
    fn under(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            under(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    under(&root.join(".distribusync/staging"))
}
