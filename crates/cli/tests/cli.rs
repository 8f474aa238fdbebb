//! The real `distribusync` binary, run in a fresh folder per test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_distribusync");

mod cluster;
mod compute;
mod delta;
mod failover;
mod ops;
mod tls;
mod token;

/// `distribusync serve` on a free port; killed (SIGTERM) on drop.
struct Server {
    child: Child,
    addr: String,
    /// What the server logged so far (its stderr).
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Notified after each line added to `logs`.
    logged_more: std::sync::Arc<std::sync::Condvar>,
}

impl Server {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// `serve` with extra flags (e.g. `--services compute`).
    fn start_with(dir: &Path, extra: &[&str]) -> Self {
        Self::start_env(dir, extra, &[])
    }

    /// `serve` with extra flags and environment variables.
    fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(dir.join("MASTER"))
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            // The line that says where it serves (log lines before it may
            // name other URLs: the cluster backend's S3 endpoint).
            if line.starts_with("distribusync: serving")
                && let Some(i) = line.rfind("http://")
            {
                break line[i..].trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let logged_more = std::sync::Arc::new(std::sync::Condvar::new());
        let (kept, more) = (logs.clone(), logged_more.clone());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
                more.notify_all();
            }
        });
        Self {
            child,
            addr,
            logs,
            logged_more,
        }
    }

    /// Waits (safety net: one minute) until the server logged a line
    /// containing every one of `words`.
    ///
    /// # Panics
    /// When it did not.
    fn wait_logged(&self, words: &[&str]) {
        let has = |logs: &Vec<String>| logs.iter().any(|l| words.iter().all(|w| l.contains(w)));
        let logs = self.logs.lock().unwrap();
        let (logs, waited) = self
            .logged_more
            .wait_timeout_while(logs, std::time::Duration::from_secs(60), |l| !has(l))
            .unwrap();
        assert!(
            !waited.timed_out(),
            "the server did not log {words:?}: {logs:#?}"
        );
    }

    /// True once the server logged a line containing every one of `words`.
    fn logged(&self, words: &[&str]) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| words.iter().all(|w| l.contains(w)))
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary in `dir`, with its own config folder (so a persisted client
/// id is this test's), none of the caller's DistribuSync settings, and
/// `env` on top.
fn cmd(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("DISTRIBUSYNC_CLIENT_ID")
        .env_remove("DISTRIBUSYNC_COMPUTE_SERVER")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(dir: &Path, server: &str, args: &[&str]) -> Output {
    cmd(dir, &[("DISTRIBUSYNC_SERVER", server)], args)
        .output()
        .expect("runs")
}

fn ok(dir: &Path, server: &str, args: &[&str]) -> String {
    let out = run(dir, server, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fail(dir: &Path, server: &str, args: &[&str], code: i32) -> String {
    let out = run(dir, server, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("distribusync: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_owned();
    (t, p)
}

#[test]
fn put_ls_get_mv_rm_stat_tour() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::write(dir.join("report.pdf"), b"%PDF pretend").unwrap();
    std::fs::create_dir_all(dir.join("photos/sub")).unwrap();
    std::fs::write(dir.join("photos/a.jpg"), b"jpg a").unwrap();
    std::fs::write(dir.join("photos/sub/b.jpg"), b"jpg b").unwrap();

    ok(&dir, s, &["put", "report.pdf"]);
    ok(&dir, s, &["put", "-r", "photos/", "trips/2026"]);
    assert_eq!(
        ok(&dir, s, &["ls"]),
        "report.pdf\ntrips/2026/a.jpg\ntrips/2026/sub/b.jpg\n"
    );
    let long = ok(&dir, s, &["ls", "-l", "trips/"]);
    assert_eq!(long.lines().count(), 2);
    assert!(
        long.contains("trips/2026/a.jpg") && long.contains("5"),
        "{long}"
    );

    let json = ok(&dir, s, &["ls", "--json", "trips"]);
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["path", "size", "revision", "hash", "modified"] {
            assert!(v.get(key).is_some(), "{key} in {line}");
        }
        assert_eq!(v["hash"].as_str().unwrap().len(), 64);
        assert!(v["modified"].as_str().unwrap().ends_with('Z'));
    }

    ok(&dir, s, &["get", "trips/2026/a.jpg", "./a.jpg"]);
    assert_eq!(std::fs::read(dir.join("a.jpg")).unwrap(), b"jpg a");

    ok(&dir, s, &["mv", "report.pdf", "archive/report.pdf"]);
    let stat = ok(&dir, s, &["stat", "archive/report.pdf", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stat).unwrap();
    assert_eq!(v["path"], "archive/report.pdf");
    assert_eq!(v["size"], 12);
    ok(&dir, s, &["rm", "archive/report.pdf"]);
    let err = fail(&dir, s, &["stat", "archive/report.pdf"], 1);
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn mistakes_get_one_clear_line_and_the_right_exit_code() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::write(dir.join("a"), b"a").unwrap();
    std::fs::write(dir.join("b"), b"b").unwrap();
    ok(&dir, s, &["put", "a"]);
    ok(&dir, s, &["put", "b"]);

    let err = fail(&dir, s, &["mv", "a", "b"], 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    ok(&dir, s, &["mv", "a", "b", "--force"]);
    let err = fail(&dir, s, &["mv", "b", "b"], 1);
    assert!(err.contains("onto itself"), "{err}");
    let err = fail(&dir, s, &["rm", "missing"], 1);
    assert!(err.contains("missing: no such file"), "{err}");
    for bad in ["../x", "/etc/passwd", "a//b", "a\\b"] {
        let err = fail(&dir, s, &["put", "a", bad], 2);
        assert!(err.contains("invalid path"), "{err}");
    }
    let err = fail(&dir, s, &["put", "no-such-local-file"], 1);
    assert!(err.contains("no-such-local-file"), "{err}");
    std::fs::create_dir(dir.join("folder")).unwrap();
    fail(&dir, s, &["put", "folder"], 2);
    // Nothing bad landed.
    assert_eq!(ok(&dir, s, &["ls"]), "b\n");
    // Unknown flags are usage errors too.
    assert_eq!(run(&dir, s, &["ls", "--bogus"]).status.code(), Some(2));
}

#[test]
fn put_r_sends_what_it_can_and_names_what_it_cannot() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub/.distribusync")).unwrap();
    std::fs::write(tree.join("top.txt"), b"top").unwrap();
    std::fs::write(tree.join("sub/ok.txt"), b"ok").unwrap();
    std::fs::write(tree.join("sub/back\\slash.txt"), b"bad name").unwrap();
    std::fs::write(tree.join("sub/.distribusync/state.db"), b"sync state").unwrap();
    std::os::unix::fs::symlink("top.txt", tree.join("link.txt")).unwrap();

    let out = run(&dir, s, &["put", "-r", "tree"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("back\\slash.txt") && err.contains("skipped"),
        "{err}"
    );
    assert!(
        err.contains("link.txt") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(
        err.contains(".distribusync") && err.contains("sync state"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with("put: 1 of 3 file(s) failed"),
        "{err}"
    );
    // Everything else arrived; the sync state and the link did not.
    assert_eq!(ok(&dir, s, &["ls"]), "tree/sub/ok.txt\ntree/top.txt\n");

    // `put LINK` names the file after the link, not its target.
    ok(&dir, s, &["put", "tree/link.txt"]);
    assert_eq!(
        ok(&dir, s, &["ls"]),
        "link.txt\ntree/sub/ok.txt\ntree/top.txt\n"
    );
}

#[test]
fn put_r_of_more_folders_than_open_files_allowed_sends_them_all() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    for i in 0..300 {
        let sub = dir.join(format!("tree/d{i:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("f"), i.to_string()).unwrap();
    }
    // Run with at most 100 open files (the walk must not hold a handle per
    // folder still to visit).
    let out = Command::new("sh")
        .current_dir(&dir)
        .env("DISTRIBUSYNC_SERVER", s)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .arg("-c")
        .arg(format!("ulimit -n 100 && exec {BIN} put -r tree"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(ok(&dir, s, &["ls"]).lines().count(), 300);
}

#[test]
fn mv_into_a_folder_and_get_onto_a_folder() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::write(dir.join("a.txt"), b"a").unwrap();
    std::fs::write(dir.join("b.txt"), b"b").unwrap();
    ok(&dir, s, &["put", "a.txt", "docs/"]);
    ok(&dir, s, &["put", "b.txt"]);
    // A trailing slash means "into this folder", as for put.
    let err = fail(&dir, s, &["mv", "b.txt", "docs"], 1);
    assert!(err.contains("end TO with /"), "{err}");
    ok(&dir, s, &["mv", "b.txt", "docs/"]);
    assert_eq!(ok(&dir, s, &["ls"]), "docs/a.txt\ndocs/b.txt\n");
    // A named folder is saved into; a folder where the file would go is
    // refused at once, in one line.
    std::fs::create_dir(dir.join("into")).unwrap();
    ok(&dir, s, &["get", "docs/a.txt", "into"]);
    assert_eq!(std::fs::read(dir.join("into/a.txt")).unwrap(), b"a");
    std::fs::remove_file(dir.join("a.txt")).unwrap();
    std::fs::create_dir(dir.join("a.txt")).unwrap();
    let err = fail(&dir, s, &["get", "docs/a.txt"], 1);
    assert!(err.contains("a.txt: is a folder"), "{err}");
}

#[test]
fn a_second_server_on_the_same_folder_is_refused() {
    let (_t, dir) = tmp();
    let _first = Server::start(&dir);
    let out = cmd(
        &dir,
        &[],
        &["serve", "--listen", "127.0.0.1:0", "--root", "MASTER"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("another distribusync server is already serving this folder"),
        "{err}"
    );
}

#[test]
fn no_server_means_a_clear_message() {
    let (_t, dir) = tmp();
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let err = fail(&dir, &addr, &["ls"], 1);
    assert_eq!(
        err.trim_end(),
        format!("distribusync: cannot reach server at {addr} (is \"distribusync serve\" running?)")
    );
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let (_t, dir) = tmp();
    let mut server = Server::start(&dir);
    std::fs::write(dir.join("a"), b"a").unwrap();
    ok(&dir, &server.addr, &["put", "a"]);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(dir.join("MASTER/a").exists());
}

#[test]
fn put_r_of_many_files_fits_them_in_batches_within_the_server_limits() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::create_dir_all(dir.join("pics")).unwrap();
    // 120 files of 200 KiB: 24 MiB, more than one upload batch may carry.
    for i in 0..120 {
        std::fs::write(
            dir.join(format!("pics/{i:03}.jpg")),
            vec![i as u8; 200 * 1024],
        )
        .unwrap();
    }
    ok(&dir, s, &["put", "-r", "pics"]);
    let listed = ok(&dir, s, &["ls", "pics"]);
    assert_eq!(listed.lines().count(), 120);
    ok(&dir, s, &["get", "pics/077.jpg", "back.jpg"]);
    assert_eq!(
        std::fs::read(dir.join("back.jpg")).unwrap(),
        vec![77u8; 200 * 1024]
    );
}

#[test]
fn get_r_brings_a_remote_folder_back_as_put_r_sent_it() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::create_dir_all(dir.join("photos/sub/deeper")).unwrap();
    let mut sent = Vec::new();
    for (i, rel) in ["a.jpg", "sub/b.jpg", "sub/deeper/c.jpg", "sub/d.jpg"]
        .iter()
        .enumerate()
    {
        let data = noise(1000 + i * 70_000, i as u64);
        std::fs::write(dir.join("photos").join(rel), &data).unwrap();
        sent.push((*rel, data));
    }
    ok(&dir, s, &["put", "-r", "photos", "trips/2026"]);
    std::fs::write(dir.join("outside.txt"), b"not under the folder").unwrap();
    ok(&dir, s, &["put", "outside.txt", "trips/2026.txt"]);

    // Into a named folder (made), and by default under the folder's name.
    ok(&dir, s, &["get", "-r", "trips/2026", "back"]);
    ok(&dir, s, &["get", "-r", "trips/2026/"]);
    for root in ["back", "2026"] {
        assert_eq!(visible_files(&dir.join(root)).len(), sent.len(), "{root}");
        for (rel, data) in &sent {
            assert_eq!(
                &std::fs::read(dir.join(root).join(rel)).unwrap(),
                data,
                "{root}/{rel}"
            );
        }
    }
    // A sibling whose name merely starts with the folder's is not part of it.
    assert!(!dir.join("back.txt").exists() && !dir.join("2026.txt").exists());

    let err = fail(&dir, s, &["get", "-r", "nothing/here", "x"], 1);
    assert!(
        err.contains("nothing/here") && err.contains("no files"),
        "{err}"
    );
    assert!(
        !dir.join("x").exists(),
        "nothing made for a folder that is not there"
    );
}

/// `get -r` reads the folder's listing a page at a time as it downloads
/// (a page is 1,000 files): a folder of more than one page still comes
/// back whole, and a sibling listed on the same pages is left out.
#[test]
fn get_r_of_a_folder_longer_than_one_listing_page_gets_every_file() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let n = 1_000 + 60;
    std::fs::create_dir_all(dir.join("many/sub")).unwrap();
    for i in 0..n {
        // Some in a subfolder, so that pages end inside it and outside.
        let rel = if i % 3 == 0 {
            format!("sub/{i:05}.txt")
        } else {
            format!("{i:05}.txt")
        };
        std::fs::write(dir.join("many").join(rel), format!("file {i}")).unwrap();
    }
    ok(&dir, s, &["put", "-r", "many"]);
    std::fs::write(dir.join("sibling.txt"), b"not under the folder").unwrap();
    ok(&dir, s, &["put", "sibling.txt", "many.txt"]);

    ok(&dir, s, &["get", "-r", "many", "back"]);
    let back = visible_files(&dir.join("back"));
    assert_eq!(back.len(), n, "files brought back");
    for i in [0, 1, 999, 1000, 1001, n - 1] {
        let rel = if i % 3 == 0 {
            format!("sub/{i:05}.txt")
        } else {
            format!("{i:05}.txt")
        };
        assert_eq!(
            std::fs::read_to_string(dir.join("back").join(&rel)).unwrap(),
            format!("file {i}"),
            "{rel}"
        );
    }
    assert!(!dir.join("back.txt").exists());
}
#[test]
fn sync_once_uploads_a_folder_with_the_transfers_asked_for() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let local = dir.join("work");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    for i in 0..30 {
        std::fs::write(
            local.join("sub").join(format!("f{i}.txt")),
            format!("file {i}"),
        )
        .unwrap();
    }
    let dir_arg = local.to_str().unwrap();
    // Zero transfers in flight is a usage mistake, named.
    let out = run(&dir, s, &["sync", dir_arg, "--once", "--transfers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--transfers"), "{err}");
    ok(&dir, s, &["sync", dir_arg, "--once", "--transfers", "1"]);
    let listed = ok(&dir, s, &["ls"]);
    assert_eq!(listed.lines().count(), 30, "{listed}");
    assert!(listed.contains("sub/f29.txt"), "{listed}");
    ok(&dir, s, &["get", "sub/f7.txt", "got.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("got.txt")).unwrap(),
        "file 7"
    );
}

/// Bytes that do not compress or repeat (xorshift), `len` of them.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Every regular file below `root`, outside `.distribusync`, relative.
fn visible_files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_name() == ".distribusync" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Polls until `found` says yes (or panics after 60 s).
fn wait_until(what: &str, mut found: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !found() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "never saw {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A file below `dir` whose name passes `pick`, with some bytes but not all.
fn part_way(dir: &Path, total: u64, pick: &dyn Fn(&str) -> bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            return part_way(&p, total, pick);
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        pick(&name) && len > 0 && len < total
    })
}

#[test]
fn sync_killed_mid_transfer_leaves_nothing_partial_and_finishes_on_restart() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let master = dir.join("MASTER");
    let big = noise(128 << 20, 7);
    let total = big.len() as u64;

    // Upload: killed (SIGKILL) while the big file is being staged.
    let a = dir.join("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("small.txt"), b"small").unwrap();
    std::fs::write(a.join("big.bin"), &big).unwrap();
    let mut up = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", s)],
        &["sync", a.to_str().unwrap()],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let staging = master.join(".distribusync").join("staging");
    wait_until("the upload half way", || {
        part_way(&staging, total, &|_| true)
    });
    up.kill().unwrap();
    up.wait().unwrap();
    // On the server: nothing partial where a user (or `ls`) can see it.
    for f in visible_files(&master) {
        match f.as_str() {
            "small.txt" => assert_eq!(std::fs::read(master.join(&f)).unwrap(), b"small"),
            "big.bin" => assert!(
                std::fs::read(master.join(&f)).unwrap() == big,
                "torn big.bin"
            ),
            other => panic!("unexpected file on the server: {other}"),
        }
    }
    assert!(!ok(&dir, s, &["ls"]).contains("part"));
    // Restarted, it finishes: the server has the whole file.
    ok(&dir, s, &["sync", a.to_str().unwrap(), "--once"]);
    assert!(std::fs::read(master.join("big.bin")).unwrap() == big);

    // Download: a second folder, killed while the big file comes down.
    let b = dir.join("b");
    std::fs::create_dir_all(&b).unwrap();
    let mut down = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", s)],
        &["sync", b.to_str().unwrap()],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_until("the download half way", || {
        part_way(&b, total, &|n| n.ends_with(".distribusync-part"))
    });
    down.kill().unwrap();
    down.wait().unwrap();
    // Only whole files under their real names (the partial is hidden).
    if b.join("big.bin").exists() {
        assert!(
            std::fs::read(b.join("big.bin")).unwrap() == big,
            "torn big.bin"
        );
    }
    ok(&dir, s, &["sync", b.to_str().unwrap(), "--once"]);
    assert!(std::fs::read(b.join("big.bin")).unwrap() == big);
    assert_eq!(std::fs::read(b.join("small.txt")).unwrap(), b"small");
    assert_eq!(
        visible_files(&b),
        ["big.bin", "small.txt"],
        "partial files left behind"
    );
}

#[test]
fn a_put_killed_mid_transfer_resumes_when_run_again() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let master = dir.join("MASTER");
    std::fs::write(dir.join("big.iso"), b"old").unwrap();
    ok(&dir, s, &["put", "big.iso"]);
    let big = noise(128 << 20, 11);
    let total = big.len() as u64;
    std::fs::write(dir.join("big.iso"), &big).unwrap();
    let mut put = cmd(&dir, &[("DISTRIBUSYNC_SERVER", s)], &["put", "big.iso"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let meta = master.join(".distribusync");
    wait_until("the upload part way", || {
        part_way(&meta.join("staging"), total, &|_| true)
    });
    put.kill().unwrap();
    put.wait().unwrap();
    // The old version is still what the server has.
    assert_eq!(std::fs::read(master.join("big.iso")).unwrap(), b"old");
    wait_until("the server keeping the part it received", || {
        part_way(&meta.join("partial"), total, &|_| true)
    });
    let out = run(&dir, s, &["put", "big.iso"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("big.iso: resuming at "), "{err}");
    assert!(std::fs::read(master.join("big.iso")).unwrap() == big);
}

#[test]
fn an_unreadable_file_is_reported_and_skipped_and_sent_once_readable() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("ok.txt"), b"fine").unwrap();
    std::fs::write(work.join("secret.txt"), b"hidden").unwrap();
    std::fs::set_permissions(
        work.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    // Root reads anything; as root, the sync runs as `nobody` (setpriv), who
    // owns the folder but cannot read the file.
    let as_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if as_root {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&work)
            .status();
        assert!(chown.unwrap().success());
    }
    let sync_once = |dir: &Path| -> Output {
        let args = ["sync", work.to_str().unwrap(), "--once"];
        let mut c = if as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
                .args(args)
                .env_clear()
                .env("DISTRIBUSYNC_SERVER", s)
                .env("HOME", &work)
                .current_dir(&work);
            c
        } else {
            cmd(dir, &[("DISTRIBUSYNC_SERVER", s)], &args)
        };
        c.output().unwrap()
    };
    let out = sync_once(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Reported by name, skipped, and the rest went on.
    assert!(
        err.contains("secret.txt") && err.contains("cannot read"),
        "{err}"
    );
    assert_eq!(ok(&dir, s, &["ls"]), "ok.txt\n");
    // Readable again: the next pass sends it.
    std::fs::set_permissions(
        work.join("secret.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = sync_once(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(&dir, s, &["ls"]), "ok.txt\nsecret.txt\n");
    ok(&dir, s, &["get", "secret.txt", "got.txt"]);
    assert_eq!(std::fs::read(dir.join("got.txt")).unwrap(), b"hidden");
}

/// The soft and hard limits on open files of a process, from /proc.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let (_t, dir) = tmp();
    // Started with a low soft limit (as a login shell's 1,024 is), through
    // prlimit, which then runs the server as itself.
    let mut child = Command::new("prlimit")
        .arg("--nofile=64:")
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.join("MASTER"))
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Serving means the limit was raised already (it is raised first).
    while !lines
        .next()
        .expect("server printed its address")
        .unwrap()
        .contains("http://")
    {}
    let (soft, hard) = open_file_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "soft limit not raised");
}
