//! Compute memory benchmark (issue 9, item 3), against a running server
//! (bench/compute-memory.sh starts the release `distribusync serve` with its
//! default 1 GiB compute memory budget, runs this, and reads the server's
//! peak RSS). Three loads run at the same time:
//!
//! - kept: 40 sort jobs of 4,000,000 numbers, one after another, whose
//!   results nobody fetches (before: 1.49 GB kept);
//! - idle: 10 Callbacks streams for one client id that never read, and 4
//!   sort jobs of 4,000,000 numbers for that client id (before: 1.93 GB);
//! - sync: 20 concurrent Sorts of 16,000,000 numbers (before: 2.76 GB).
//!
//! Prints, per load, what was accepted and what was refused with
//! RESOURCE_EXHAUSTED. Usage: compute_memory_bench ADDR
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use distribusync_proto::v1::{self, compute_client::ComputeClient as Grpc};
use tonic::{Code, transport::Channel, transport::Endpoint};

const KEPT_JOBS: usize = 40;
const JOB_N: usize = 4_000_000;
const IDLE_SUBSCRIBERS: usize = 10;
const IDLE_JOBS: usize = 4;
const SYNC_SORTS: usize = 20;
const SYNC_N: usize = 16_000_000;
const CHUNK: usize = 128 * 1024;

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

/// A connection of its own; `big_windows`: read as fast as the client
/// library does (else HTTP/2's 64 KiB defaults: a client that barely reads).
async fn connect(addr: &str, big_windows: bool) -> anyhow::Result<Grpc<Channel>> {
    let mut ep = Endpoint::from_shared(addr.to_owned())?.tcp_nodelay(true);
    if big_windows {
        ep = ep
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20);
    }
    Ok(Grpc::new(ep.connect().await?)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    exhausted: usize,
    other: Vec<String>,
}

impl Tally {
    fn count(&mut self, r: Result<(), tonic::Status>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => self.exhausted += 1,
            Err(s) => self.other.push(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// Submits a sort job and waits until it finished.
async fn run_job(
    rpc: &mut Grpc<Channel>,
    client_id: &str,
    numbers: &[i64],
) -> Result<String, tonic::Status> {
    let req = v1::SubmitRequest {
        client_id: client_id.to_owned(),
        job_id: String::new(),
        deadline: None,
        task: Some(v1::submit_request::Task::Sort(v1::SortTask {
            numbers: Some(numbers.into()),
            order: 0,
        })),
    };
    let id = rpc.submit(req).await?.into_inner().job_id;
    loop {
        let job = rpc
            .get_job(v1::GetJobRequest { job_id: id.clone() })
            .await?
            .into_inner();
        match job.state() {
            v1::JobState::Queued | v1::JobState::Running => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            v1::JobState::Succeeded => return Ok(id),
            _ => return Err(tonic::Status::new(Code::from(job.error_code), job.error)),
        }
    }
}

async fn kept(addr: String, input: Arc<Vec<i64>>) -> anyhow::Result<String> {
    let mut rpc = connect(&addr, true).await?;
    let mut t = Tally::default();
    let mut ids = Vec::new();
    for _ in 0..KEPT_JOBS {
        match run_job(&mut rpc, "bench-kept", &input).await {
            Ok(id) => {
                ids.push(id);
                t.count(Ok(()));
            }
            Err(e) => t.count(Err(e)),
        }
    }
    let (mut still, mut evicted) = (0, 0);
    for id in ids {
        match rpc.get_job(v1::GetJobRequest { job_id: id }).await {
            Ok(_) => still += 1,
            Err(s) if s.code() == Code::NotFound => evicted += 1,
            Err(s) => t.other.push(s.to_string()),
        }
    }
    Ok(format!(
        "kept: {KEPT_JOBS} sort jobs of {JOB_N} numbers, results never fetched: {} ran, {} refused (RESOURCE_EXHAUSTED), other errors {:?}; at the end {still} results kept, {evicted} evicted for space",
        t.ok, t.exhausted, t.other
    ))
}

async fn idle(addr: String, input: Arc<Vec<i64>>) -> anyhow::Result<String> {
    let mut streams = Vec::new();
    let mut refused_streams = 0;
    for _ in 0..IDLE_SUBSCRIBERS {
        let mut rpc = connect(&addr, false).await?;
        let req = v1::CallbacksRequest {
            client_id: "bench-idle".into(),
        };
        match rpc.callbacks(req).await {
            // Kept open and never read.
            Ok(s) => streams.push((rpc, s.into_inner())),
            Err(_) => refused_streams += 1,
        }
    }
    let mut rpc = connect(&addr, true).await?;
    let mut t = Tally::default();
    for _ in 0..IDLE_JOBS {
        t.count(run_job(&mut rpc, "bench-idle", &input).await.map(|_| ()));
    }
    Ok(format!(
        "idle: {} callback streams that never read ({refused_streams} refused); {IDLE_JOBS} sort jobs of {JOB_N} numbers for them: {} ran, {} refused (RESOURCE_EXHAUSTED), other errors {:?}",
        streams.len(),
        t.ok,
        t.exhausted,
        t.other
    ))
}

async fn one_sort(addr: String, input: Arc<Vec<i64>>) -> Result<(), tonic::Status> {
    let mut rpc = connect(&addr, true)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let n = input.len();
    let chunks = n.div_ceil(CHUNK);
    let reqs = futures::stream::iter((0..chunks).map(move |i| v1::SortRequest {
        order: 0,
        numbers: Some((&input[i * CHUNK..((i + 1) * CHUNK).min(n)]).into()),
        total: if i == 0 { n as u64 } else { 0 },
    }));
    let mut answer = rpc.sort(reqs).await?.into_inner();
    let (mut got, mut last) = (0usize, i64::MIN);
    while let Some(chunk) = answer.message().await? {
        if let Some(v1::numbers::Kind::Ints(l)) = chunk.numbers.and_then(|n| n.kind) {
            for &x in &l.values {
                if x < last {
                    return Err(tonic::Status::internal("answer out of order"));
                }
                last = x;
            }
            got += l.values.len();
        }
    }
    if got != n {
        return Err(tonic::Status::internal(format!(
            "{got} numbers back of {n}"
        )));
    }
    Ok(())
}

async fn sync(addr: String) -> anyhow::Result<String> {
    let input = Arc::new(random_ints(SYNC_N, 3));
    let tasks: Vec<_> = (0..SYNC_SORTS)
        .map(|_| tokio::spawn(one_sort(addr.clone(), input.clone())))
        .collect();
    let mut t = Tally::default();
    for task in tasks {
        t.count(task.await?);
    }
    Ok(format!(
        "sync: {SYNC_SORTS} concurrent sorts of {SYNC_N} numbers: {} answered in order, {} refused (RESOURCE_EXHAUSTED), other errors {:?}",
        t.ok, t.exhausted, t.other
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50000".into());
    let input = Arc::new(random_ints(JOB_N, 1));
    let started = std::time::Instant::now();
    let (k, i, s) = tokio::join!(
        tokio::spawn(kept(addr.clone(), input.clone())),
        tokio::spawn(idle(addr.clone(), input.clone())),
        tokio::spawn(sync(addr.clone())),
    );
    for line in [k??, i??, s??] {
        println!("{line}");
    }
    println!("mix took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
