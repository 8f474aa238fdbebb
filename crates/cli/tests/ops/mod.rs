//! Operations: metrics, logs, status (issue 13).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Server, cmd, ok, tmp};

mod reload;
mod sync_daemon;

/// Waits (safety net: 30 s) until the server logged the metrics address,
/// and returns it.
pub(crate) fn metrics_addr(server: &Server) -> String {
    logged_metrics_addr(&server.logs)
}

/// The metrics address a process logged (`… metrics on http://ADDR/metrics`)
/// in `logs`, once it has (safety net: 30 s).
fn logged_metrics_addr(logs: &std::sync::Mutex<Vec<String>>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = logs.lock().unwrap().iter().find_map(|l| {
            l.split_once("metrics on http://")
                .map(|(_, a)| a.trim_end_matches("/metrics").to_owned())
        });
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address: {:?}",
            logs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics` over plain HTTP/1.0: the status line and the body.
pub(crate) fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    body.to_owned()
}

/// Samples by their full name with labels (`name{a="b",c="d"}`, labels as
/// the exporter renders them).
pub(crate) fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

pub(crate) fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// A Python venv under target/ with `prometheus-client` (made once).
fn prometheus_python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops-prometheus-venv");
    let python = venv.join("bin/python");
    let has = |p: &Path| {
        std::process::Command::new(p)
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let st = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (.ci/run installs python3-venv)");
        assert!(st.success(), "python3 -m venv failed");
        let st = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "prometheus-client==0.26.0"])
            .status()
            .unwrap();
        assert!(st.success(), "pip install prometheus-client failed");
    }
    python
}

/// Checks that the reference parser reads the whole scrape `text` and
/// finds each of `families` (`name type`) in it.
fn read_by_prometheus_client(text: &str, families: &[&str]) {
    let found = parse_with_prometheus_client(text);
    for want in families {
        assert!(
            found.lines().any(|l| l.starts_with(want)),
            "{want} missing from {found}"
        );
    }
}

/// The whole scrape through the reference parser: every family it finds,
/// as `name type samples` lines.
fn parse_with_prometheus_client(text: &str) -> String {
    let python = prometheus_python();
    let mut child = std::process::Command::new(python)
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             for f in text_string_to_metric_families(sys.stdin.read()):\n\
             \x20   print(f.name, f.type, len(f.samples))\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn metrics_move_by_exactly_the_calls_made_and_parse_with_prometheus_client() {
    let (_t, dir) = tmp();
    let server = Server::start_with(&dir, &["--metrics-listen", "127.0.0.1:0"]);
    let s = &server.addr;
    let m = metrics_addr(&server);
    let before = samples(&scrape(&m));

    for _ in 0..3 {
        assert_eq!(ok(&dir, s, &["add", "2", "3"]), "5\n");
    }
    ok(&dir, s, &["add", "1", "2", "--async"]);
    super::fail(&dir, s, &["stat", "missing.txt"], 1);
    std::fs::write(dir.join("a.bin"), vec![7u8; 10_000]).unwrap();
    ok(&dir, s, &["put", "a.bin"]);
    std::fs::write(dir.join("b.bin"), vec![8u8; 3_000]).unwrap();
    ok(&dir, s, &["put", "b.bin"]);

    let text = scrape(&m);
    let after = samples(&text);
    let delta = |k: &str| get(&after, k) - get(&before, k);
    let add_ok = r#"distribusync_rpc_requests_total{service="distribusync.v1.Compute",method="Add",code="OK"}"#;
    assert_eq!(delta(add_ok), 3.0, "{text}");
    let stat_nf = r#"distribusync_rpc_requests_total{service="distribusync.v1.Files",method="Stat",code="NOT_FOUND"}"#;
    assert_eq!(delta(stat_nf), 1.0, "{text}");
    // The latency histogram has real buckets, and counted the same calls.
    let add_count = r#"distribusync_rpc_duration_seconds_count{service="distribusync.v1.Compute",method="Add"}"#;
    assert_eq!(delta(add_count), 3.0, "{text}");
    let add_inf = r#"distribusync_rpc_duration_seconds_bucket{service="distribusync.v1.Compute",method="Add",le="+Inf"}"#;
    assert_eq!(delta(add_inf), 3.0, "{text}");
    assert!(text.contains(r#"method="Add",le="0.005"}"#), "{text}");
    // One job ran and succeeded.
    assert_eq!(
        delta(r#"distribusync_jobs_finished_total{state="succeeded"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(get(&after, r#"distribusync_jobs{state="queued"}"#), 0.0);
    assert_eq!(get(&after, r#"distribusync_jobs{state="running"}"#), 0.0);
    // Two files of 13,000 bytes are stored; the index has a size.
    assert_eq!(get(&after, "distribusync_files"), 2.0, "{text}");
    assert_eq!(get(&after, "distribusync_file_bytes"), 13_000.0, "{text}");
    assert!(get(&after, "distribusync_index_bytes") > 0.0, "{text}");
    assert_eq!(get(&after, "distribusync_kept_parts"), 0.0, "{text}");
    assert_eq!(get(&after, "distribusync_uploads_in_progress"), 0.0);
    // The uploads' bytes arrived (gRPC framing and headers on top).
    let received: f64 = after
        .iter()
        .filter(|(k, _)| {
            k.starts_with("distribusync_rpc_received_bytes_total")
                && k.contains(r#"service="distribusync.v1.Files""#)
                && k.contains(r#"method="Upload"#)
        })
        .map(|(_, v)| v)
        .sum();
    assert!(received >= 13_000.0, "{received}\n{text}");
    let sent = delta(
        r#"distribusync_rpc_sent_bytes_total{service="distribusync.v1.Compute",method="Add"}"#,
    );
    assert!(sent > 0.0, "{text}");

    read_by_prometheus_client(
        &text,
        &[
            "distribusync_rpc_requests counter",
            "distribusync_rpc_duration_seconds histogram",
            "distribusync_files gauge",
            "distribusync_jobs_finished counter",
        ],
    );
}

#[test]
fn a_metrics_address_in_use_is_one_line_and_exit_2() {
    let (_t, dir) = tmp();
    refuses_a_taken_metrics_address(&dir, &[], &["serve", "--listen", "127.0.0.1:0"]);
}

/// `args` with `--metrics-listen` at an address in use: exit 2 and one
/// line, `distribusync: COMMAND: cannot listen for metrics on ADDR: …`.
fn refuses_a_taken_metrics_address(dir: &Path, env: &[(&str, &str)], args: &[&str]) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut all = args.to_vec();
    all.extend(["--metrics-listen", &addr]);
    let out = cmd(dir, env, &all).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "distribusync: {}: cannot listen for metrics on {addr}:",
            args[0]
        )),
        "{err}"
    );
}

/// Log lines (stderr lines that are not the binary's own `distribusync:`
/// messages) parsed as JSON; panics on one that is not.
fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|l| !l.starts_with("distribusync: ") && !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_name_each_failed_call_once_with_its_code() {
    let (_t, dir) = tmp();
    let server = Server::start_with(&dir, &["--log-format", "json"]);
    let s = &server.addr;
    super::fail(&dir, s, &["stat", "missing.txt"], 1);
    assert_eq!(ok(&dir, s, &["add", "1", "2"]), "3\n");
    // A refused call is logged by the same layer.
    super::fail(&dir, s, &["add", "9223372036854775807", "1"], 1);
    // The add after the failures is answered, so their lines are written.
    assert_eq!(ok(&dir, s, &["add", "1", "1"]), "2\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let lines = server.logs.lock().unwrap().clone();
        let failed: Vec<serde_json::Value> = json_lines(&lines)
            .into_iter()
            .filter(|v| v["message"] == "request failed")
            .collect();
        if failed.len() >= 2 || Instant::now() > deadline {
            break failed;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(failed.len(), 2, "{failed:?}");
    let stat = &failed[0];
    assert_eq!(stat["method"], "Stat", "{stat}");
    assert_eq!(stat["service"], "distribusync.v1.Files", "{stat}");
    assert_eq!(stat["code"], "NOT_FOUND", "{stat}");
    assert_eq!(stat["level"], "INFO", "{stat}");
    assert!(
        stat["error"].as_str().unwrap().contains("missing.txt"),
        "{stat}"
    );
    assert_eq!(failed[1]["method"], "Add", "{}", failed[1]);
    assert_ne!(failed[1]["code"], "OK");
}

#[test]
fn sync_logs_json_too() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    std::fs::create_dir_all(dir.join("SYNC")).unwrap();
    std::fs::write(dir.join("SYNC/a.txt"), "a").unwrap();
    let out = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", &server.addr), ("RUST_LOG", "info")],
        &["sync", "SYNC", "--once", "--log-format", "json"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let logs = json_lines(&lines);
    assert!(!logs.is_empty(), "no log lines at RUST_LOG=info: {lines:?}");
    assert!(
        logs.iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string())
    );
}

#[test]
fn status_names_version_uptime_root_files_streams_and_jobs() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::write(dir.join("a.txt"), "hello").unwrap();
    ok(&dir, s, &["put", "a.txt"]);
    ok(&dir, s, &["add", "1", "2", "--async"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&dir, s, &["status", "--json"])).unwrap();
    let version = v["version"].as_str().unwrap();
    assert!(
        version.starts_with(env!("CARGO_PKG_VERSION")) && version.contains("commit"),
        "{v}"
    );
    assert_eq!(v["backend"], "local", "{v}");
    assert!(v["root"].as_str().unwrap().ends_with("/MASTER"), "{v}");
    assert!(Path::new(v["root"].as_str().unwrap()).is_absolute(), "{v}");
    assert_eq!(
        v["services"],
        serde_json::json!(["files", "compute"]),
        "{v}"
    );
    assert_eq!(v["files"], 1, "{v}");
    assert_eq!(v["bytes"], 5, "{v}");
    assert_eq!(v["jobs_finished"], 1, "{v}");
    assert_eq!(v["jobs_queued"], 0, "{v}");
    assert_eq!(v["open_streams"], 0, "{v}");
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert_eq!(v["auth_required"], false, "{v}");
    let plain = ok(&dir, s, &["status"]);
    assert!(plain.contains("files        1 (5 bytes)"), "{plain}");
    assert!(
        plain.contains("jobs         0 queued, 0 running, 1 finished"),
        "{plain}"
    );
}

#[test]
fn status_sync_asks_the_running_daemon_over_its_socket() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let sync_dir = dir.join("SYNC");
    std::fs::create_dir_all(&sync_dir).unwrap();
    std::fs::write(sync_dir.join("a.txt"), "a").unwrap();
    std::fs::write(sync_dir.join("b.txt"), "bb").unwrap();
    // No daemon yet: one line, exit 1.
    let out = cmd(&dir, &[], &["status", "--sync", "SYNC"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("no sync daemon is answering for SYNC"),
        "{err}"
    );

    let mut daemon = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", &server.addr)],
        &["sync", "SYNC"],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let out = cmd(&dir, &[], &["status", "--sync", "SYNC", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["state"] == "idle" && v["uploaded"] == 2 {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never reported a pass: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["pending"], 0, "{v}");
    assert_eq!(v["in_flight"], 0, "{v}");
    assert!(v["last_error"].is_null(), "{v}");
    assert!(v["last_pass"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(v["server"], server.addr.as_str(), "{v}");
    let plain = String::from_utf8(
        cmd(&dir, &[], &["status", "--sync", "SYNC"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(plain.contains("state       idle"), "{plain}");
    assert!(plain.contains("last error  none"), "{plain}");

    // Stopped: the socket is gone with it.
    std::process::Command::new("kill")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(!sync_dir.join(".distribusync/status.sock").exists());
    let out = cmd(&dir, &[], &["status", "--sync", "SYNC"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// `distribusync config` output: key → (value, source).
fn effective(out: &str) -> HashMap<String, (String, String)> {
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, source) = l.split_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_owned(), (v.to_owned(), source.to_owned())))
        })
        .collect()
}

#[test]
fn config_precedence_is_flags_then_environment_then_file_then_defaults() {
    let (_t, dir) = tmp();
    std::fs::write(
        dir.join("serve.toml"),
        "# a comment\n\
         listen = \"127.0.0.1:50123\"\n\
         max-kept-parts = 7\n\
         job-deadline = \"30s\"\n\
         max-file-size = 1000\n\
         services = [\"files\"]\n\
         insecure = true\n",
    )
    .unwrap();
    let out = cmd(
        &dir,
        &[
            ("DISTRIBUSYNC_JOB_DEADLINE", "45s"),
            ("DISTRIBUSYNC_MAX_NUMBERS", "99"),
        ],
        &[
            "config",
            "--config",
            "serve.toml",
            "--max-file-size",
            "5000",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let e = effective(&text);
    let row = |k: &str| {
        e.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} missing: {text}"))
    };
    // (key, value, source): one row per layer, and a layer beaten by a
    // higher one.
    let table = [
        ("listen", "\"127.0.0.1:50123\"", "file serve.toml:2"),
        ("max-kept-parts", "7", "file serve.toml:3"),
        ("job-deadline", "\"45s\"", "env DISTRIBUSYNC_JOB_DEADLINE"),
        ("max-file-size", "5000", "flag --max-file-size"),
        ("max-numbers", "99", "env DISTRIBUSYNC_MAX_NUMBERS"),
        ("services", "[\"files\"]", "file serve.toml:6"),
        ("insecure", "true", "file serve.toml:7"),
        ("idle-timeout", "\"60s\"", "default"),
        ("auth", "\"auto\"", "default"),
    ];
    for (k, v, source) in table {
        assert_eq!(row(k), (v.to_owned(), source.to_owned()), "{k}\n{text}");
    }
    // Every serve flag is a key (none forgotten), and the output is a
    // config file that reads back to the same settings.
    let serve_help = String::from_utf8(
        cmd(&dir, &[], &["serve", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for flag in serve_help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
    {
        let flag = flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
        if ["config", "print-fingerprint", "help", "version"].contains(&flag) {
            continue;
        }
        assert!(
            text.contains(&format!("{flag} ")),
            "--{flag} has no key:\n{text}"
        );
    }
    let uncommented: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.split_once("  # ").unwrap().0))
        .collect();
    std::fs::write(dir.join("again.toml"), uncommented).unwrap();
    let again = cmd(&dir, &[], &["config", "--config", "again.toml"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    let again = effective(&String::from_utf8(again.stdout).unwrap());
    for (k, (v, _)) in &e {
        assert_eq!(&again[k].0, v, "{k}");
    }
}

#[test]
fn serve_takes_its_settings_from_the_file() {
    let (_t, dir) = tmp();
    std::fs::write(dir.join("serve.toml"), "max-file-size = 10\n").unwrap();
    let file = dir.join("serve.toml");
    let server = Server::start_with(&dir, &["--config", file.to_str().unwrap()]);
    std::fs::write(dir.join("small"), "0123456789").unwrap();
    std::fs::write(dir.join("big"), "0123456789a").unwrap();
    ok(&dir, &server.addr, &["put", "small"]);
    let err = super::fail(&dir, &server.addr, &["put", "big"], 1);
    assert!(err.contains("10"), "{err}");
}

#[test]
fn a_bad_config_file_is_one_line_naming_file_line_and_key() {
    let (_t, dir) = tmp();
    let cases: [(&str, &str, &str); 5] = [
        (
            "listen = \"127.0.0.1:0\"\n\nlisten-port = 5\n",
            "unknown.toml:3: unknown key `listen-port`",
            "unknown.toml",
        ),
        (
            "max-kept-parts = \"many\"\n",
            "wrong.toml:1: `max-kept-parts` = \"many\"",
            "wrong.toml",
        ),
        (
            "insecure = \"yes\"\n",
            "flag.toml:1: `insecure` must be true or false",
            "flag.toml",
        ),
        ("listen = \n", "broken.toml:1:", "broken.toml"),
        ("", "missing.toml: cannot read it", "missing.toml"),
    ];
    for (content, want, name) in cases {
        if name != "missing.toml" {
            std::fs::write(dir.join(name), content).unwrap();
        }
        for command in ["serve", "config"] {
            let out = cmd(&dir, &[], &[command, "--config", name])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!("distribusync: config {want}")),
                "{err}"
            );
        }
    }
}

#[test]
fn version_names_the_commit_and_completions_and_man_page_are_generated() {
    let (_t, dir) = tmp();
    let run = |args: &[&str]| {
        let out = cmd(&dir, &[], args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    assert!(
        version.starts_with(&format!(
            "distribusync {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    if let Some(c) = commit {
        // Built from this checkout (the test binary and the program are
        // built together, so HEAD is the commit named).
        assert!(version.contains(&c), "{version} vs {c}");
    }
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("_distribusync()"),
        "{}",
        &bash[..200.min(bash.len())]
    );
    for sub in ["serve", "status", "config", "completions", "sync"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(
        bash.contains("--metrics-listen"),
        "serve's flags are completed"
    );
    assert!(run(&["completions", "zsh"]).contains("#compdef distribusync"));
    assert!(run(&["completions", "fish"]).contains("complete -c distribusync"));
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH distribusync"),
        "{man}"
    );
    assert!(man.contains("status"), "{man}");
    let out = cmd(&dir, &[], &["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A self-signed leaf for localhost: (certificate PEM, key PEM).
fn leaf() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// `serve` with TLS and a config file; its stderr collected.
struct Reloading {
    child: std::process::Child,
    url: String,
    fingerprint: String,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Reloading {
    fn start(dir: &Path, config: &Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(super::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--root")
            .arg(dir.join("MASTER"))
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(l);
            }
        });
        let mut s = Reloading {
            child,
            url: String::new(),
            fingerprint: String::new(),
            logs,
        };
        s.url = s.wait_for("https://", |l| {
            l[l.find("https://").unwrap()..].trim().to_owned()
        });
        s.fingerprint = s.wait_for("SHA-256 fingerprint ", |l| {
            l.rsplit(' ').next().unwrap().to_owned()
        });
        s
    }

    fn wait_for(&self, needle: &str, take: impl Fn(&str) -> String) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return take(l);
            }
            assert!(
                Instant::now() < deadline,
                "never logged {needle}: {:?}",
                self.logs
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP and waits until the server logged `needle` once more.
    fn hup(&self, needle: &str) {
        let before = self.count(needle);
        std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count(needle) == before {
            assert!(
                Instant::now() < deadline,
                "never logged {needle}: {:?}",
                self.logs
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_reloads_the_certificate_and_a_setting_without_dropping_connections() {
    let (_t, dir) = tmp();
    let (cert_a, key_a) = leaf();
    let (cert_b, key_b) = leaf();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_a).unwrap();
    std::fs::write(&key, &key_a).unwrap();
    let config = dir.join("serve.toml");
    let settings = |max: &str| {
        format!(
            "tls = \"on\"\ntls-cert = {:?}\ntls-key = {:?}\nmax-file-size = {max}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        )
    };
    std::fs::write(&config, settings("10")).unwrap();
    let server = Reloading::start(&dir, &config);
    let fp_a = server.fingerprint.clone();
    let with = |fp: &str, args: &[&str]| {
        cmd(
            &dir,
            &[],
            &[args, &["--server", &server.url, "--fingerprint", fp][..]].concat(),
        )
        .output()
        .unwrap()
    };
    std::fs::write(dir.join("big"), vec![1u8; 50]).unwrap();
    assert_eq!(with(&fp_a, &["put", "big"]).status.code(), Some(1));

    // A sync daemon pinned to the old certificate, connected before the
    // reload: its connection must survive it (a new one would be refused).
    let sync_dir = dir.join("SYNC");
    std::fs::create_dir_all(&sync_dir).unwrap();
    let mut daemon = cmd(
        &dir,
        &[],
        &[
            "sync",
            "SYNC",
            "--server",
            &server.url,
            "--fingerprint",
            &fp_a,
        ],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    std::fs::write(sync_dir.join("before.txt"), "1").unwrap();
    let listed = |fp: &str| String::from_utf8(with(fp, &["ls"]).stdout).unwrap();
    super::wait_until("the daemon's first upload", || {
        listed(&fp_a).contains("before.txt")
    });

    // New certificate and a larger limit, then SIGHUP.
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    std::fs::write(&config, settings("100")).unwrap();
    server.hup("reloaded the largest file accepted");
    let fp_b = String::from_utf8(
        cmd(
            &dir,
            &[],
            &[
                "serve",
                "--print-fingerprint",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap()
        .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert_ne!(fp_a, fp_b);
    assert!(server.count(&format!("fingerprint={fp_b}")) >= 1 || server.count(&fp_b) >= 1);
    // New connections get the new certificate; the old pin is refused.
    assert!(with(&fp_b, &["put", "big"]).status.success());
    let refused = with(&fp_a, &["ls"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    // The daemon's connection, made before, still carries its changes.
    std::fs::write(sync_dir.join("after.txt"), "2").unwrap();
    super::wait_until("the daemon's upload after the reload", || {
        listed(&fp_b).contains("after.txt")
    });

    // A broken file: the running settings stay, and the log says why.
    std::fs::write(&config, "max-file-size = \"lots\"\n").unwrap();
    server.hup("reload failed");
    let failed = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("reload failed"))
        .cloned()
        .unwrap();
    assert!(
        failed.contains("serve.toml:1") && failed.contains("max-file-size"),
        "{failed}"
    );
    std::fs::write(dir.join("mid"), vec![1u8; 90]).unwrap();
    assert!(with(&fp_b, &["put", "mid"]).status.success());
    std::fs::write(dir.join("huge"), vec![1u8; 150]).unwrap();
    assert_eq!(with(&fp_b, &["put", "huge"]).status.code(), Some(1));
    let _ = daemon.kill();
    let _ = daemon.wait();
}
