//! Compute benchmark against a running server (bench/compute.sh starts the
//! release `distribusync serve --services compute` and runs this):
//!
//! - add round trip, p50/p99 and calls/s, at concurrency 1 and 64 over one
//!   connection;
//! - sort of N random i64 end to end, against sorting the same numbers in
//!   this process (single-threaded `sort_unstable` and rayon's
//!   `par_sort_unstable`, which the server uses);
//! - async overhead: submit until the result arrives through the callback.
//!
//! Usage: compute_bench ADDR [SORT_N]   (BENCH_ONLY=sort: the sort alone;
//! BENCH_ONLY=add: the add round trips alone; BENCH_FINGERPRINT=FP: an
//! https:// ADDR pinned by FP)
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use distribusync_client::compute::{ComputeClient, JobOutput};
use distribusync_client::{ConnectionConfig, TlsTrust, Token};
use distribusync_core::compute::{Number, Numbers, Order};
use rayon::slice::ParallelSliceMut;

/// The same allocator as the `distribusync` binary, so this client behaves
/// like the CLI's `sort`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn random_ints(n: usize, seed: u64) -> Vec<i64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as i64
        })
        .collect()
}

async fn add_bench(client: &ComputeClient, concurrency: usize, calls: usize) -> anyhow::Result<()> {
    // Warm up the connection and the server.
    for _ in 0..1000 {
        client.add(vec![1i64, 2]).await?;
    }
    let per_task = calls / concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let a = (t * per_task + i) as i64;
                let t0 = Instant::now();
                let sum = client.add(vec![a, 1]).await?;
                lat.push(t0.elapsed());
                anyhow::ensure!(sum == Number::Int(a + 1), "wrong sum");
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = start.elapsed();
    all.sort();
    println!(
        "add  concurrency {concurrency:>2}: {} calls, p50 {:.0} us, p99 {:.0} us, {:.0} calls/s",
        all.len(),
        us(pct(&all, 0.5)),
        us(pct(&all, 0.99)),
        all.len() as f64 / wall.as_secs_f64()
    );
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn sort_bench(client: &ComputeClient, n: usize, runs: usize) -> anyhow::Result<()> {
    let input = random_ints(n, 42);
    let mut expected = input.clone();
    expected.sort_unstable();

    // One sort first, not counted: the first big request of a server's life
    // also pays for faulting in its buffers (printed, for the record).
    let t0 = Instant::now();
    client.sort(input.clone(), Order::Ascending).await?;
    let cold = t0.elapsed();

    let mut single = Vec::new();
    let mut parallel = Vec::new();
    let mut remote = Vec::new();
    for _ in 0..runs {
        let mut v = input.clone();
        let t0 = Instant::now();
        v.sort_unstable();
        single.push(t0.elapsed());

        let mut v = input.clone();
        let t0 = Instant::now();
        v.par_sort_unstable();
        parallel.push(t0.elapsed());

        let v = input.clone();
        let t0 = Instant::now();
        let sorted = client.sort(v, Order::Ascending).await?;
        remote.push(t0.elapsed());
        let Numbers::Ints(sorted) = sorted else {
            anyhow::bail!("sort answered decimals")
        };
        anyhow::ensure!(sorted == expected, "sort answer differs");
    }
    let each: Vec<String> = remote
        .iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect();
    println!(
        "sort {n} end to end, first (cold) {:.3} s, then: {} s",
        cold.as_secs_f64(),
        each.join(" ")
    );
    let (s, p, r) = (median(single), median(parallel), median(remote));
    println!(
        "sort {n} random i64 (median of {runs}): end to end {:.3} s; in process sort_unstable {:.3} s (ratio {:.2}), par_sort_unstable {:.3} s (ratio {:.2})",
        r.as_secs_f64(),
        s.as_secs_f64(),
        r.as_secs_f64() / s.as_secs_f64(),
        p.as_secs_f64(),
        r.as_secs_f64() / p.as_secs_f64(),
    );
    Ok(())
}

async fn async_bench(client: &ComputeClient, jobs: usize) -> anyhow::Result<()> {
    for _ in 0..200 {
        client.add_async(vec![1i64, 2]).await?.await?;
    }
    let mut lat = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let t0 = Instant::now();
        let h = client.add_async(vec![i as i64, 1]).await?;
        let r = h.await?;
        lat.push(t0.elapsed());
        anyhow::ensure!(r == JobOutput::Sum(Number::Int(i as i64 + 1)), "wrong sum");
    }
    lat.sort();
    println!(
        "async add submit -> callback: {jobs} jobs, p50 {:.0} us, p99 {:.0} us",
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.99))
    );
    Ok(())
}

/// The client runtime: BENCH_RUNTIME=multi_thread or current_thread
/// (default).
fn main() -> anyhow::Result<()> {
    let flavor = std::env::var("BENCH_RUNTIME").unwrap_or_else(|_| "current_thread".into());
    let rt = match flavor.as_str() {
        "multi_thread" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    println!("client runtime: {flavor}");
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50000".into());
    let sort_n: usize = args.next().map_or(Ok(10_000_000), |s| s.parse())?;
    // BENCH_FINGERPRINT: an https:// ADDR pinned by this fingerprint
    // (bench/tls.sh); BENCH_TOKEN: a token sent with every call.
    let trust = match std::env::var("BENCH_FINGERPRINT") {
        Ok(f) => TlsTrust::Pinned(f.parse()?),
        Err(_) => TlsTrust::SystemRoots,
    };
    let token = std::env::var("BENCH_TOKEN")
        .ok()
        .map(|t| Token::new(&t))
        .transpose()?;
    let client = ComputeClient::connect(ConnectionConfig::new(&addr, trust, token)).await?;
    // BENCH_ONLY=sort skips the rest (for iterating on the sort);
    // BENCH_ONLY=add runs only the add round trips.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "sort" {
        add_bench(&client, 1, 20_000).await?;
        add_bench(&client, 64, 200_000).await?;
    }
    if only.is_empty() {
        async_bench(&client, 5_000).await?;
    }
    if only != "add" {
        sort_bench(&client, sort_n, 5).await?;
    }
    Ok(())
}
