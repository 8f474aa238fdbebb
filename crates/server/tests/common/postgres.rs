//! A real PostgreSQL for the tests of one test binary, started on first
//! use and shared: each test takes a fresh database of its own
//! ([`Postgres::database`]), so tests stay independent and the server
//! starts once (a few seconds) per binary.
//!
//! `initdb` refuses to run as root: as root, the cluster is made and run
//! as the `postgres` user, in a folder it owns under /tmp. The server binaries come from
//! `$DISTRIBUSYNC_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package; `.ci/run` installs it), else `PATH`.
//!
//! Stopped at the end: a watchdog shell (also as `postgres`) waits on a
//! pipe from this process; when the test binary exits, however it exits,
//! the pipe closes and the watchdog stops the server and removes its folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    /// Its folder (data and log) and the options it runs with.
    dir: PathBuf,
    options: String,
    /// Held open for the life of the test binary (see the module's header).
    _watchdog: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();

/// The shared server, started on first use.
///
/// # Panics
/// When PostgreSQL is not installed or does not start, saying why.
pub fn postgres() -> &'static Postgres {
    SERVER.get_or_init(|| {
        start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"))
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when this process is root.
fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("DISTRIBUSYNC_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v pg_ctl"])
        .output()
        .map_err(|e| e.to_string())?;
    let path = String::from_utf8_lossy(&on_path.stdout).trim().to_owned();
    match Path::new(&path).parent() {
        Some(dir) if !path.is_empty() => Ok(dir.to_owned()),
        _ => Err(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: \
                  apt-get install postgresql, or set DISTRIBUSYNC_PG_BIN"
                .into(),
        ),
    }
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

fn start() -> Result<Postgres, String> {
    let bin = bin_dir()?;
    // A folder the server's user owns (and may remove at the end).
    let mut mktemp = as_postgres("mktemp");
    mktemp.args(["-d", "/tmp/distribusync-pg.XXXXXX"]);
    let dir = PathBuf::from(run(mktemp, "mktemp")?);
    let data = dir.join("data");
    let mut initdb = as_postgres(bin.join("initdb"));
    initdb.arg("-D").arg(&data).args([
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    ]);
    run(initdb, "initdb")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?
        .port();
    // Durability is not what these tests check: no fsync, for speed.
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=300",
        dir.display()
    );
    pg_start(&bin, &dir, &options)?;
    let mut watchdog = as_postgres("sh");
    watchdog
        .args([
            "-c",
            r#"read _ignored; "$0/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1; rm -rf "$1""#,
        ])
        .arg(&bin)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = watchdog.spawn().map_err(|e| format!("the watchdog: {e}"))?;
    let stdin = child.stdin.take().ok_or("the watchdog's stdin")?;
    Ok(Postgres {
        port,
        bin,
        dir,
        options,
        _watchdog: Mutex::new(stdin),
    })
}

fn pg_start(bin: &Path, dir: &Path, options: &str) -> Result<(), String> {
    let mut pg_ctl = as_postgres(bin.join("pg_ctl"));
    pg_ctl
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-o", options, "-l"])
        .arg(dir.join("log"))
        .args(["-w", "-t", "60", "start"]);
    if let Err(e) = run(pg_ctl, "pg_ctl start") {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        return Err(format!("{e}\n{log}"));
    }
    Ok(())
}

impl Postgres {
    /// A new, empty database named after `name` (made unique); its URL.
    pub fn database(&self, name: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let db = format!(
            "{}_{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut createdb = Command::new(self.bin.join("createdb"));
        createdb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            &db,
        ]);
        run(createdb, "createdb").unwrap_or_else(|e| panic!("{e}"));
        self.url(&db)
    }

    /// Stops the server (fast: sessions are ended), as an outage would.
    ///
    /// # Panics
    /// When pg_ctl fails.
    pub fn stop(&self) {
        let mut pg_ctl = as_postgres(self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(pg_ctl, "pg_ctl stop").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts it again after [`Postgres::stop`], on the same port.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_again(&self) {
        pg_start(&self.bin, &self.dir, &self.options).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `sql` in the database of `url` (made by [`Postgres::database`]).
    ///
    /// # Panics
    /// When psql fails, with its output.
    pub fn sql(&self, url: &str, sql: &str) {
        self.query(url, sql);
    }

    /// Runs `sql` in the database of `url`; what it printed, unaligned,
    /// fields separated by `|`, one row a line.
    ///
    /// # Panics
    /// When psql fails, with its output.
    pub fn query(&self, url: &str, sql: &str) -> String {
        let db = url.rsplit('/').next().expect("a database in the URL");
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-A",
            "-t",
            "-c",
            sql,
        ]);
        run(psql, "psql").unwrap_or_else(|e| panic!("{e}"))
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}
