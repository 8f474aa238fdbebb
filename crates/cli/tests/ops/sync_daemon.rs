//! The sync daemon as an operator sees it: `sync --metrics-listen` and the
//! live status line in a terminal.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{get, read_by_prometheus_client, samples, scrape};
use crate::{Server, cmd, ok, tmp};

/// `sync SYNC --metrics-listen 127.0.0.1:0` against `server`; its stderr
/// collected. Killed on drop.
struct Daemon {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(dir: &Path, server: &str) -> Self {
        let mut child = cmd(
            dir,
            &[("DISTRIBUSYNC_SERVER", server)],
            &["sync", "SYNC", "--metrics-listen", "127.0.0.1:0"],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(l);
            }
        });
        Daemon { child, logs }
    }

    /// Where it serves metrics (safety net: 30 s).
    fn metrics_addr(&self) -> String {
        super::logged_metrics_addr(&self.logs)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scrapes until `done` holds for the samples (safety net: 60 s).
fn scrape_until(
    addr: &str,
    what: &str,
    done: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> (String, std::collections::HashMap<String, f64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(addr);
        let s = samples(&text);
        if done(&s) {
            return (text, s);
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `data` beside the folder, then renames it in: the daemon sees
/// the whole file at once, never one half written.
fn drop_in(dir: &Path, name: &str, data: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, dir.join("SYNC").join(name)).unwrap();
}

#[test]
fn sync_metrics_move_by_exactly_the_syncs_made_and_parse_with_prometheus_client() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let sync_dir = dir.join("SYNC");
    std::fs::create_dir_all(&sync_dir).unwrap();
    // A conflict waiting for the daemon: c.txt in sync once, then changed
    // on both sides (11 bytes here, 14 on the server).
    std::fs::write(sync_dir.join("c.txt"), "base").unwrap();
    ok(&dir, s, &["sync", "SYNC", "--once"]);
    std::fs::write(sync_dir.join("c.txt"), "local edit!").unwrap();
    std::fs::write(dir.join("c.txt"), "server edition").unwrap();
    ok(&dir, s, &["put", "c.txt"]);

    let daemon = Daemon::start(&dir, s);
    let m = daemon.metrics_addr();
    // The first pass: the server's version comes down, the local one is
    // kept as a copy and sent up.
    let (_, first) = scrape_until(&m, "the conflict handled", |x| {
        get(x, "distribusync_sync_conflicts_total") == 1.0
            && get(x, "distribusync_sync_pending_files") == 0.0
            && x.contains_key("distribusync_sync_last_pass_timestamp_seconds")
    });
    assert_eq!(get(&first, "distribusync_sync_received_bytes_total"), 14.0);
    assert_eq!(get(&first, "distribusync_sync_sent_bytes_total"), 11.0);
    assert_eq!(get(&first, "distribusync_sync_errors_total"), 0.0);

    // Known syncs: a small file (sent in a batch) and a larger one (sent
    // on its own) up, one file down.
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let before = samples(&scrape(&m));
    drop_in(&dir, "small.bin", &[3u8; 3_000]);
    drop_in(&dir, "large.bin", &[4u8; 600_000]);
    std::fs::write(dir.join("down.txt"), vec![b'd'; 1_234]).unwrap();
    ok(&dir, s, &["put", "down.txt"]);
    let up0 = get(&before, "distribusync_sync_uploaded_files_total");
    let down0 = get(&before, "distribusync_sync_downloaded_files_total");
    let (text, after) = scrape_until(&m, "two files up and one down", |x| {
        get(x, "distribusync_sync_uploaded_files_total") == up0 + 2.0
            && get(x, "distribusync_sync_downloaded_files_total") == down0 + 1.0
            && get(x, "distribusync_sync_pending_files") == 0.0
            // The pass that moved them has ended.
            && get(x, "distribusync_sync_last_pass_timestamp_seconds") >= started
    });
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        delta("distribusync_sync_sent_bytes_total"),
        603_000.0,
        "{text}"
    );
    assert_eq!(
        delta("distribusync_sync_received_bytes_total"),
        1_234.0,
        "{text}"
    );
    assert_eq!(delta("distribusync_sync_conflicts_total"), 0.0, "{text}");
    assert_eq!(get(&after, "distribusync_sync_errors_total"), 0.0, "{text}");
    assert!(delta("distribusync_sync_passes_total") >= 1.0, "{text}");
    assert_eq!(
        get(&after, "distribusync_sync_pending_bytes"),
        0.0,
        "{text}"
    );
    assert_eq!(
        get(&after, "distribusync_sync_transfers_in_flight"),
        0.0,
        "{text}"
    );
    let last = get(&after, "distribusync_sync_last_pass_timestamp_seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        last >= started && last <= now,
        "{last} not in [{started}, {now}]"
    );
    // Nothing failed in it: it is the last successful pass too.
    assert_eq!(
        get(&after, "distribusync_sync_last_success_timestamp_seconds"),
        last,
        "{text}"
    );

    read_by_prometheus_client(
        &text,
        &[
            "distribusync_sync_pending_files gauge",
            "distribusync_sync_pending_bytes gauge",
            "distribusync_sync_transfers_in_flight gauge",
            "distribusync_sync_last_pass_timestamp_seconds gauge",
            "distribusync_sync_last_success_timestamp_seconds gauge",
            "distribusync_sync_passes counter",
            "distribusync_sync_sent_bytes counter",
            "distribusync_sync_received_bytes counter",
            "distribusync_sync_conflicts counter",
            "distribusync_sync_errors counter",
        ],
    );
}

#[test]
fn a_sync_metrics_address_in_use_is_one_line_and_exit_2() {
    let (_t, dir) = tmp();
    super::refuses_a_taken_metrics_address(
        &dir,
        &[("DISTRIBUSYNC_SERVER", "http://127.0.0.1:1")],
        &["sync", "SYNC"],
    );
    // Nothing started: the folder was not even made.
    assert!(!dir.join("SYNC").exists());
}

/// A TCP proxy to `target` that forwards freely until `hold_after` bytes
/// went towards the server, then holds that direction until released:
/// a transfer that stays in progress for as long as a test needs.
struct Gate {
    addr: String,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    fn new(target: &str, hold_after: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let target = target.trim_start_matches("http://").to_owned();
        let gate = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    return;
                };
                let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
                let (mut s_in, mut s_out) = (server.try_clone().unwrap(), server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if sent >= hold_after {
                            let (lock, cv) = &*gate;
                            let mut open = lock.lock().unwrap();
                            while !*open {
                                open = cv.wait(open).unwrap();
                            }
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Gate { addr, open }
    }

    fn release(&self) {
        let (lock, cv) = &*self.open;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

#[test]
fn sync_in_a_terminal_shows_a_live_status_line_with_the_transfer_and_logs_above_it() {
    use rexpect::session::spawn_command;
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    std::fs::create_dir_all(dir.join("SYNC")).unwrap();
    drop_in(&dir, "big.bin", &vec![5u8; 32 << 20]);
    // The upload stalls after 1 MiB until the line has been seen.
    let gate = Gate::new(&server.addr, 1 << 20);
    let daemon = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", &format!("http://{}", gate.addr))],
        &["sync", "SYNC"],
    );
    let mut p = spawn_command(daemon, Some(60_000)).expect("spawns in a pseudo-terminal");
    p.exp_string("distribusync: syncing SYNC").unwrap();
    // The line names the file on its way and how much of it has gone.
    p.exp_string("sending big.bin").unwrap();
    p.exp_string("/32.00 MiB").unwrap();
    gate.release();
    // The log line of the upload, then the line again, now in sync.
    p.exp_string("uploaded").unwrap();
    p.exp_string("in sync").unwrap();
    p.exp_string("1 up, 0 down").unwrap();
    let listed = ok(&dir, &server.addr, &["ls"]);
    assert!(listed.contains("big.bin"), "{listed}");
    p.process_mut()
        .signal(rexpect::process::Signal::SIGTERM)
        .unwrap();
    p.exp_eof().unwrap();
    assert!(matches!(
        p.process().wait().unwrap(),
        rexpect::process::WaitStatus::Exited(_, 0)
    ));
}

#[test]
fn no_status_line_without_a_terminal_or_with_json_logs() {
    use rexpect::session::spawn_command;
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    std::fs::create_dir_all(dir.join("SYNC")).unwrap();
    std::fs::write(dir.join("SYNC/a.txt"), "a").unwrap();
    // Piped: log lines only.
    let out = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", &server.addr)],
        &["sync", "SYNC", "--once"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("last pass") && !err.contains('\r'), "{err:?}");
    // A terminal, but JSON logs: every line is JSON or the binary's own.
    std::fs::write(dir.join("SYNC/b.txt"), "b").unwrap();
    let once = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", &server.addr), ("RUST_LOG", "info")],
        &["sync", "SYNC", "--once", "--log-format", "json"],
    );
    let mut p = spawn_command(once, Some(60_000)).expect("spawns in a pseudo-terminal");
    let all = p.exp_eof().unwrap();
    assert!(all.contains("\"uploaded\""), "{all:?}");
    for l in all.lines().map(|l| l.trim_matches(['\r', '\n'])) {
        assert!(
            l.is_empty()
                || l.starts_with("distribusync:")
                || serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l:?} in {all:?}"
        );
    }
    assert!(!all.contains("last pass"), "{all:?}");
}
