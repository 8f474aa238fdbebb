//! `distribusync status`: what the server is and holds (the Admin
//! service's Status call), or with `--sync DIR` what the sync daemon of
//! that folder is doing, asked over a Unix socket in the folder's state
//! directory (`DIR/.distribusync/status.sock`), which the daemon serves.
//!
//! Invariant: the socket answers one JSON object and closes; it carries
//! only the daemon's status (no command is accepted), and it lives in the
//! state directory, which only the folder's owner can reach when the
//! folder is private.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;
use distribusync_client::sync::{SyncPhase, SyncStatus};
use distribusync_proto::v1::{self, admin_client::AdminClient};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object instead of aligned lines.
    #[arg(long)]
    pub json: bool,
    /// Ask the sync daemon running for this folder instead of the server.
    #[arg(long, value_name = "DIR")]
    pub sync: Option<PathBuf>,
}

pub async fn run(global: &Global, args: StatusArgs) -> anyhow::Result<()> {
    match &args.sync {
        Some(dir) => sync_status(dir, args.json).await,
        None => server_status(global, args.json).await,
    }
}

/// The server's answer, as `--json` prints it.
#[derive(Debug, Serialize)]
struct ServerStatus {
    server: String,
    version: String,
    uptime_seconds: u64,
    backend: String,
    root: String,
    services: Vec<String>,
    files: u64,
    bytes: u64,
    open_streams: u64,
    uploads_in_progress: u64,
    kept_parts: u64,
    kept_part_bytes: u64,
    jobs_queued: u64,
    jobs_running: u64,
    jobs_finished: u64,
    tls: bool,
    auth_required: bool,
}

async fn server_status(global: &Global, json: bool) -> anyhow::Result<()> {
    let config = crate::connection::resolve(global)?;
    let channel = config.connect().await?;
    let r = AdminClient::new(channel)
        .status(v1::StatusRequest {})
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unimplemented => anyhow::anyhow!(
                "status: the server at {} does not answer status (an older version?)",
                config.endpoint
            ),
            _ => anyhow::anyhow!("status: {} ({:?})", s.message(), s.code()),
        })?
        .into_inner();
    let s = ServerStatus {
        server: config.endpoint.clone(),
        version: r.version,
        uptime_seconds: r.uptime_seconds,
        backend: r.backend,
        root: r.root,
        services: r.services,
        files: r.files,
        bytes: r.bytes,
        open_streams: r.open_streams,
        uploads_in_progress: r.uploads_in_progress,
        kept_parts: r.kept_parts,
        kept_part_bytes: r.kept_part_bytes,
        jobs_queued: r.jobs_queued,
        jobs_running: r.jobs_running,
        jobs_finished: r.jobs_finished,
        tls: r.tls,
        auth_required: r.auth_required,
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &s)?;
        writeln!(out)?;
        return Ok(());
    }
    let uptime = humantime::format_duration(std::time::Duration::from_secs(s.uptime_seconds));
    let rows = [
        ("server", s.server.clone()),
        ("version", s.version.clone()),
        ("uptime", uptime.to_string()),
        ("backend", s.backend.clone()),
        (
            "root",
            if s.root.is_empty() {
                "-".into()
            } else {
                s.root.clone()
            },
        ),
        ("services", s.services.join(",")),
        ("files", format!("{} ({} bytes)", s.files, s.bytes)),
        ("open streams", s.open_streams.to_string()),
        ("uploads", format!("{} in progress", s.uploads_in_progress)),
        (
            "kept parts",
            format!("{} ({} bytes)", s.kept_parts, s.kept_part_bytes),
        ),
        (
            "jobs",
            format!(
                "{} queued, {} running, {} finished",
                s.jobs_queued, s.jobs_running, s.jobs_finished
            ),
        ),
        ("tls", if s.tls { "on" } else { "off" }.into()),
        (
            "tokens",
            if s.auth_required {
                "required"
            } else {
                "not required"
            }
            .into(),
        ),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<13}{v}")?;
    }
    Ok(())
}

/// The sync daemon's answer on its socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub dir: String,
    pub server: String,
    /// starting, syncing, idle, offline, stopped.
    pub state: String,
    pub pending: u64,
    pub in_flight: u64,
    pub last_error: Option<String>,
    /// RFC 3339, UTC.
    pub last_pass: Option<String>,
    pub last_action: Option<String>,
    pub uploaded: u64,
    pub downloaded: u64,
    pub passes: u64,
}

impl DaemonStatus {
    fn of(dir: &Path, server: &str, s: &SyncStatus) -> Self {
        DaemonStatus {
            dir: dir.display().to_string(),
            server: server.to_owned(),
            state: match s.phase {
                SyncPhase::Starting => "starting",
                SyncPhase::Syncing => "syncing",
                SyncPhase::Idle => "idle",
                SyncPhase::Offline => "offline",
                SyncPhase::Stopped => "stopped",
            }
            .to_owned(),
            pending: s.pending,
            in_flight: s.in_flight,
            last_error: s.last_error.clone(),
            last_pass: s.last_pass.map(crate::output::rfc3339),
            last_action: s.last_action.clone(),
            uploaded: s.uploaded,
            downloaded: s.downloaded,
            passes: s.passes,
        }
    }
}

/// Where the daemon of `dir` answers.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(distribusync_core::RESERVED_DIR)
        .join("status.sock")
}

/// A Unix socket address can hold ~107 bytes: a longer path is reached
/// through `/proc/self/fd/N/`, N an open handle on its folder (kept open
/// by the caller while it binds or connects).
fn short_path(path: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    if path.as_os_str().len() < 100 {
        return Ok((path.to_owned(), None));
    }
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((path.to_owned(), None));
    };
    let handle = std::fs::File::open(folder)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd())).join(name);
    Ok((short, Some(handle)))
}

/// Removes the socket file when dropped (the daemon ends).
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves the daemon's status on [`socket_path`] until `stop`; the socket
/// file is removed when the guard is dropped. A failure to bind is logged,
/// not fatal: syncing matters more than being asked about it.
pub fn serve_socket(
    dir: &Path,
    server: String,
    status: watch::Receiver<SyncStatus>,
    stop: CancellationToken,
) -> Option<SocketGuard> {
    let path = socket_path(dir);
    let listener = (|| -> std::io::Result<tokio::net::UnixListener> {
        let (short, _handle) = short_path(&path)?;
        // Left by a daemon that was killed: nobody answers on it. (Two
        // daemons on one folder cannot run: the folder is locked.)
        if std::os::unix::net::UnixStream::connect(&short).is_err() {
            let _ = std::fs::remove_file(&path);
        }
        tokio::net::UnixListener::bind(&short)
    })();
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot serve `status --sync`");
            return None;
        }
    };
    let guard = SocketGuard(path);
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    tokio::spawn(async move {
        loop {
            let mut stream = tokio::select! {
                () = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "status socket: accept failed");
                        continue;
                    }
                },
            };
            let answer = DaemonStatus::of(&dir, &server, &status.borrow());
            let mut line = serde_json::to_vec(&answer).unwrap_or_default();
            line.push(b'\n');
            // A client that does not read is its own problem: bounded.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let _ = stream.write_all(&line).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    });
    Some(guard)
}

async fn sync_status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let path = socket_path(dir);
    let (short, _handle) = short_path(&path)
        .with_context(|| format!("status: no sync daemon is running for {}", dir.display()))?;
    let mut stream = tokio::net::UnixStream::connect(&short)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "status: no sync daemon is answering for {} ({}: {e}); start one with `distribusync sync {}`",
                dir.display(),
                path.display(),
                dir.display()
            )
        })?;
    let mut text = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut text),
    )
    .await
    .context("status: the sync daemon did not answer in 10 s")?
    .context("status: reading the sync daemon's answer")?;
    let s: DaemonStatus =
        serde_json::from_str(text.trim()).context("status: the sync daemon's answer")?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &s)?;
        writeln!(out)?;
        return Ok(());
    }
    let last_pass = match &s.last_pass {
        Some(t) => {
            let ago = humantime::parse_rfc3339(t)
                .ok()
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .map(|d| {
                    humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
                        .to_string()
                });
            match ago {
                Some(a) => format!("{t} ({a} ago)"),
                None => t.clone(),
            }
        }
        None => "none yet".into(),
    };
    let rows = [
        ("folder", s.dir.clone()),
        ("server", s.server.clone()),
        ("state", s.state.clone()),
        ("pending", s.pending.to_string()),
        ("in flight", s.in_flight.to_string()),
        ("last pass", last_pass),
        (
            "last error",
            s.last_error.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "last action",
            s.last_action.clone().unwrap_or_else(|| "none".into()),
        ),
        ("moved", format!("{} up, {} down", s.uploaded, s.downloaded)),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<12}{v}")?;
    }
    Ok(())
}
