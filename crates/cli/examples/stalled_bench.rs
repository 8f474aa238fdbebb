//! Stalled-stream benchmark against a running server (bench/stalled.sh
//! starts the release `distribusync serve` and runs this):
//!
//! opens N uploads that send a header and then nothing, and N downloads of
//! FILE that are never read (small HTTP/2 windows, as a client that stops
//! reading has), then times another client's Stat calls (p50/p99/max, each
//! with a 2 s limit) and reads the server's memory from /proc/PID/status.
//! Prints one line of `key=value`.
//!
//! Usage: stalled_bench ADDR SERVER_PID ROOT FILE N
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use distribusync_client::FilesClient;
use distribusync_core::{ContentHash, RemotePath};
use distribusync_proto::v1::{self, files_client};
use futures::StreamExt;

/// Streams per connection (the server allows 200).
const PER_CONNECTION: usize = 100;
const STATS: usize = 1000;
const STAT_LIMIT: Duration = Duration::from_secs(2);

fn raw(addr: &str) -> files_client::FilesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .expect("address")
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(16 << 20))
        .connect_lazy();
    files_client::FilesClient::new(ch).max_decoding_message_size(8 << 20)
}

/// Staging files: one per upload the server has begun.
fn staged(root: &std::path::Path) -> usize {
    fn under(dir: &std::path::Path) -> usize {
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

/// VmRSS and VmHWM of a process, in MiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, pid, root, file, n] = &args[..] else {
        eprintln!("usage: stalled_bench ADDR SERVER_PID ROOT FILE N");
        std::process::exit(2);
    };
    let (pid, n): (u32, usize) = (pid.parse().expect("pid"), n.parse().expect("N"));
    // STALL=uploads or STALL=downloads: only that kind (to see what each costs).
    let only = std::env::var("STALL").unwrap_or_default();
    let (n_up, n_down) = match only.as_str() {
        "uploads" => (n, 0),
        "downloads" => (0, n),
        _ => (n, n),
    };
    let root = std::path::PathBuf::from(root);
    let conns = n.div_ceil(PER_CONNECTION).max(1);
    let up_clients: Vec<_> = (0..conns).map(|_| raw(addr)).collect();
    let down_clients: Vec<_> = (0..conns).map(|_| raw(addr)).collect();

    let before = staged(&root);
    let mut uploads = Vec::new();
    for i in 0..n_up {
        let mut c = up_clients[i % conns].clone();
        let header = v1::UploadRequest {
            msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
                path: format!("stalled/{i}.bin"),
                size: 16 << 20,
                hash: ContentHash::of(b"never sent").0.to_vec(),
                modified: None,
                if_revision: None,
                offset: 0,
            })),
        };
        let stream = futures::stream::iter([header]).chain(futures::stream::pending());
        uploads.push(tokio::spawn(async move { c.upload(stream).await }));
    }
    let started = Instant::now();
    while staged(&root) < before + n_up && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let uploads_begun = staged(&root) - before;

    let mut opening = Vec::new();
    for i in 0..n_down {
        let mut c = down_clients[i % conns].clone();
        let path = file.clone();
        opening.push(tokio::spawn(async move {
            let req = v1::DownloadRequest {
                path,
                offset: 0,
                length: None,
            };
            let mut s = c.download(req).await.ok()?.into_inner();
            // The info arrives; the data is never read.
            s.message().await.ok()??;
            Some(s)
        }));
    }
    let mut downloads = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for o in opening {
        if let Ok(Ok(Some(s))) = tokio::time::timeout_at(deadline, o).await {
            downloads.push(s);
        }
    }
    // Let the server settle (chunks read ahead, buffers filled).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let other = FilesClient::connect(addr).await.expect("connects");
    let path = RemotePath::parse(file).expect("path");
    let (mut times, mut timeouts) = (Vec::with_capacity(STATS), 0);
    for _ in 0..STATS {
        let t = Instant::now();
        match tokio::time::timeout(STAT_LIMIT, other.stat(&path)).await {
            Ok(Ok(_)) => times.push(t.elapsed()),
            _ => {
                timeouts += 1;
                if timeouts >= 5 {
                    break;
                }
            }
        }
    }
    times.sort();
    let (rss, hwm) = memory(pid);
    println!(
        "stalled={n}{only} uploads_begun={uploads_begun} downloads_open={} stats_ok={} stat_timeouts={timeouts} \
         stat_p50_ms={:.2} stat_p99_ms={:.2} stat_max_ms={:.2} server_rss_mib={rss} server_peak_mib={hwm}",
        downloads.len(),
        times.len(),
        pct(&times, 0.5),
        pct(&times, 0.99),
        times.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
    );
    for u in uploads {
        u.abort();
    }
    // Exit without tearing down thousands of streams one by one.
    std::process::exit(0);
}
