//! Faults on the cluster backend through real `serve` processes (issue
//! 12): an instance killed (SIGKILL) mid-upload commits nothing, the file
//! stays whole-old until the client, continuing on the other instance,
//! makes it whole-new.

use std::sync::{Arc, Condvar, Mutex};

use distribusync_client::{ConnectionConfig, FilesClient, Progress};
use distribusync_core::RemotePath;

use super::super::{noise, ok, part_way, tmp, wait_until};
use super::KEYS;
use super::jobs::{cluster_flags, start};

/// Holds the upload (blocking the thread that reports its progress) once
/// half of it was sent, until [`HalfWay::release`].
#[derive(Default)]
struct HalfWay {
    /// (bytes sent, released)
    state: Mutex<(u64, bool)>,
    changed: Condvar,
    half: u64,
}

impl HalfWay {
    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl Progress for HalfWay {
    fn advance(&self, n: u64) {
        let mut st = self.state.lock().unwrap();
        st.0 += n;
        if st.0 >= self.half {
            let _held = self.changed.wait_while(st, |s| !s.1).unwrap();
        }
    }
}

#[test]
fn an_instance_killed_mid_upload_commits_nothing_and_the_client_finishes_on_the_other() {
    let (_t, dir) = tmp();
    let (flags, _) = cluster_flags("killed_mid_upload", 3);
    let mut a = start(&dir, "a", &flags, &KEYS);
    let b = start(&dir, "b", &flags, &KEYS);
    let old = noise(1 << 20, 3);
    std::fs::write(dir.join("old.bin"), &old).unwrap();
    ok(&dir, &a.addr, &["put", "old.bin", "report.bin"]);
    let new = noise(32 << 20, 4);
    let total = new.len() as u64;
    std::fs::write(dir.join("new.bin"), &new).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let files =
        FilesClient::lazy(ConnectionConfig::plain(&format!("{},{}", a.addr, b.addr))).unwrap();
    let report = RemotePath::parse("report.bin").unwrap();
    let gate = Arc::new(HalfWay {
        half: total / 2,
        ..Default::default()
    });
    let first = rt.spawn({
        let (files, report, gate, local) = (
            files.clone(),
            report.clone(),
            gate.clone(),
            dir.join("new.bin"),
        );
        async move { files.upload(&local, &report, None, gate).await }
    });
    // A holds part of it: killed then.
    let staging = dir.join("a/MASTER/.distribusync/staging");
    wait_until("the upload part way on A", || {
        part_way(&staging, total, &|_| true)
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    gate.release();
    let first = rt.block_on(first).unwrap();
    rt.block_on(async {
        // Nothing half-committed: B serves the old file, whole.
        let seen = files.stat(&report).await;
        let seen = match seen {
            Ok(info) => info,
            // What was in flight when A died fails once; the next call
            // goes to B.
            Err(e) if e.is_unreachable() => files.stat(&report).await.expect("B answers"),
            Err(e) => panic!("{e}"),
        };
        match &first {
            Err(e) => {
                assert!(e.is_unreachable(), "{e}");
                assert_eq!(seen.size, old.len() as u64, "not whole-old: {seen:?}");
                // The client carries on with B.
                let done = files
                    .upload(&dir.join("new.bin"), &report, None, Arc::new(()))
                    .await
                    .expect("B takes the upload");
                assert_eq!(done.size, total);
            }
            // The client's own retry already went to B.
            Ok(done) => assert_eq!(done.size, total),
        }
    });
    let back = dir.join("back.bin");
    ok(
        &dir,
        &b.addr,
        &["get", "report.bin", back.to_str().unwrap()],
    );
    assert!(std::fs::read(&back).unwrap() == new, "not whole-new");
}
