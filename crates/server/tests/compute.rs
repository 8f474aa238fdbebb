//! The Compute service through a real server on 127.0.0.1:0 and the real
//! client library.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use distribusync_client::compute::{ComputeClient, ComputeError, JobOutput, JobRequest, JobState};
use distribusync_core::compute::{Number, Numbers, Order};
use distribusync_server::{ComputeConfig, ComputeService};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle, time::timeout};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::{Server, server::TcpIncoming},
};

/// Safety net for awaits that should finish promptly.
const LIMIT: Duration = Duration::from_secs(60);

struct TestServer {
    addr: SocketAddr,
    svc: ComputeService,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(config: ComputeConfig) -> TestServer {
        Self::start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// On a given address (port reuse allowed: for restarts).
    async fn start_on(addr: SocketAddr, config: ComputeConfig) -> TestServer {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener: TcpListener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let shutdown = CancellationToken::new();
        let svc = ComputeService::with_shutdown(config, shutdown.clone());
        let task = tokio::spawn(
            Server::builder()
                .add_service(svc.clone().into_server())
                .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned()),
        );
        TestServer {
            addr,
            svc,
            shutdown,
            task,
        }
    }

    async fn client(&self) -> ComputeClient {
        ComputeClient::connect(&format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Shuts down and waits for the server, its streams and its jobs.
    async fn stop(self) {
        self.shutdown.cancel();
        timeout(LIMIT, self.task)
            .await
            .expect("server stops (callback streams end at shutdown)")
            .unwrap()
            .unwrap();
        timeout(LIMIT, self.svc.drained())
            .await
            .expect("jobs end at shutdown");
    }
}

/// Deterministic pseudo-random numbers (no dependency needed).
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

/// A sort big enough to keep a worker busy while a test acts on other jobs.
const BIG: usize = 1_500_000;

fn code(e: &ComputeError) -> Option<Code> {
    e.code()
}

#[tokio::test]
async fn sync_add_exact_integers_decimals_and_errors() {
    let server = TestServer::start(ComputeConfig {
        max_numbers: 1000,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;

    assert_eq!(c.add(vec![2i64, 3, 4]).await.unwrap(), Number::Int(9));
    assert_eq!(c.add(vec![1.5f64, 1.5]).await.unwrap(), Number::Float(3.0));
    let mixed = [Number::Int(1), Number::Float(0.5)];
    assert_eq!(c.add(&mixed[..]).await.unwrap(), Number::Float(1.5));

    let e = c.add(vec![i64::MAX, 1]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::OutOfRange));
    assert!(e.to_string().contains("overflow"), "{e}");

    let e = c.add(vec![1i64]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument));
    assert!(e.to_string().contains("at least two"), "{e}");

    let e = c.add(vec![1.0, f64::NAN]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument));
    assert!(e.to_string().contains("NaN"), "{e}");

    let e = c.add(vec![1i64; 1001]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::ResourceExhausted));
    assert!(e.to_string().contains("limit of 1000"), "{e}");

    server.stop().await;
}

#[tokio::test]
async fn sync_sort_streams_big_inputs_both_ways() {
    let server = TestServer::start(ComputeConfig::default()).await;
    let c = server.client().await;

    assert_eq!(
        c.sort(vec![5i64, 1, 4], Order::Descending).await.unwrap(),
        Numbers::Ints(vec![5, 4, 1])
    );
    assert_eq!(
        c.sort(vec![2.5f64, -1.0, 0.0], Order::Ascending)
            .await
            .unwrap(),
        Numbers::Floats(vec![-1.0, 0.0, 2.5])
    );
    assert!(
        c.sort(Vec::<i64>::new(), Order::Ascending)
            .await
            .unwrap()
            .is_empty()
    );

    // Several chunks each way.
    let v = random_ints(300_001, 7);
    let mut expected = v.clone();
    expected.sort_unstable();
    assert_eq!(
        c.sort(v, Order::Ascending).await.unwrap(),
        Numbers::Ints(expected)
    );

    // Cut into runs sorted while arriving and merged while sent back, both
    // ways, for integers and decimals.
    let server_runs = TestServer::start(ComputeConfig {
        sort_run_min: 40_000,
        ..ComputeConfig::default()
    })
    .await;
    let runs = server_runs.client().await;
    let v = random_ints(300_007, 11);
    let mut expected = v.clone();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        runs.sort(v, Order::Descending).await.unwrap(),
        Numbers::Ints(expected)
    );
    let f: Vec<f64> = random_ints(200_003, 13)
        .into_iter()
        .map(|x| x as f64 / 3.0)
        .collect();
    let mut expected = f.clone();
    expected.sort_unstable_by(f64::total_cmp);
    assert_eq!(
        runs.sort(f, Order::Ascending).await.unwrap(),
        Numbers::Floats(expected)
    );
    server_runs.stop().await;

    let e = c
        .sort(vec![1.0, f64::INFINITY], Order::Ascending)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument));
    server.stop().await;
}

#[tokio::test]
async fn sort_over_the_limit_names_it() {
    let server = TestServer::start(ComputeConfig {
        max_numbers: 200_000,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;
    let e = c
        .sort(random_ints(200_001, 3), Order::Ascending)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::ResourceExhausted));
    assert!(e.to_string().contains("200000"), "{e}");
    assert!(e.to_string().contains("max_numbers"), "{e}");
    // The server still serves.
    assert_eq!(c.add(vec![1i64, 1]).await.unwrap(), Number::Int(2));
    server.stop().await;
}

#[tokio::test]
async fn async_results_arrive_through_callbacks_in_finishing_order() {
    let server = TestServer::start(ComputeConfig {
        workers: 2,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;
    let (tx, mut rx) = mpsc::unbounded_channel();

    let big = random_ints(BIG, 1);
    let t = tx.clone();
    let slow = c
        .sort_async_with(big, Order::Ascending, move |r| {
            t.send(("sort", r)).unwrap();
        })
        .await
        .unwrap();
    let t = tx.clone();
    let fast = c
        .add_async_with(vec![20i64, 22], move |r| {
            t.send(("add", r)).unwrap();
        })
        .await
        .unwrap();
    assert_ne!(slow, fast);

    let (first, r) = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        first, "add",
        "the small job submitted second finishes first"
    );
    assert_eq!(r.unwrap(), JobOutput::Sum(Number::Int(42)));
    let (second, r) = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(second, "sort");
    let JobOutput::Sorted(Numbers::Ints(s)) = r.unwrap() else {
        panic!("not a sorted int list")
    };
    assert_eq!(s.len(), BIG);
    assert!(s.windows(2).all(|w| w[0] <= w[1]));

    // Awaitable handles, several in flight, completed in any order.
    let handles: Vec<_> = futures::future::join_all((0..10i64).map(|i| c.add_async(vec![i, i])))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, h) in handles.into_iter().enumerate().rev() {
        let r = timeout(LIMIT, h).await.unwrap().unwrap();
        assert_eq!(r, JobOutput::Sum(Number::Int(2 * i as i64)));
    }

    // A failure comes back as a typed error naming the cause.
    let h = c.add_async(vec![i64::MAX, 1]).await.unwrap();
    let e = timeout(LIMIT, h.result()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            ComputeError::JobFailed {
                code: Code::OutOfRange,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("overflow"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn result_fetched_by_id_from_a_second_connection() {
    let server = TestServer::start(ComputeConfig::default()).await;
    let first = server.client().await;
    let client_id = first.client_id().to_owned();
    let h = first
        .sort_async(vec![3i64, 1, 2], Order::Ascending)
        .await
        .unwrap();
    let id = h.id().to_owned();
    timeout(LIMIT, h).await.unwrap().unwrap();
    drop(first);

    let second = server.client().await;
    let job = second.get_job(&id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        job.output,
        Some(JobOutput::Sorted(Numbers::Ints(vec![1, 2, 3])))
    );

    // The first client's jobs, listed by its id over the new connection.
    let listed = second.with_client_id(client_id).list_jobs().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(second.list_jobs().await.unwrap().is_empty());

    for bad in ["not-a-job", "6f1c1a52-8a8e-4c1e-9f0e-2d7a3c1b9e10"] {
        let e = second.get_job(bad).await.unwrap_err();
        assert_eq!(code(&e), Some(Code::NotFound), "{bad}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cancel_stops_queued_and_running_jobs_and_refuses_finished_ones() {
    let server = TestServer::start(ComputeConfig {
        workers: 1,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;
    let running = c
        .sort_async(random_ints(BIG, 2), Order::Ascending)
        .await
        .unwrap();
    let queued = c.add_async(vec![1i64, 2]).await.unwrap();

    let info = c.cancel_job(queued.id()).await.unwrap();
    assert_eq!(info.state, JobState::Cancelled);
    let e = c.cancel_job(queued.id()).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains("already finished: cancelled"), "{e}");
    let e = timeout(LIMIT, queued).await.unwrap().unwrap_err();
    assert!(matches!(e, ComputeError::JobCancelled { .. }), "{e:?}");

    running.cancel().await.unwrap();
    let e = timeout(LIMIT, running).await.unwrap().unwrap_err();
    assert!(matches!(e, ComputeError::JobCancelled { .. }), "{e:?}");

    // The worker is free again, and a finished job cannot be cancelled.
    let done = c.add_async(vec![1i64, 2]).await.unwrap();
    let id = done.id().to_owned();
    assert_eq!(
        timeout(LIMIT, done).await.unwrap().unwrap(),
        JobOutput::Sum(Number::Int(3))
    );
    let e = c.cancel_job(&id).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains("already finished: succeeded"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn a_job_past_its_deadline_ends_deadline_exceeded() {
    let server = TestServer::start(ComputeConfig::default()).await;
    let c = server.client().await;
    let h = c
        .submit(
            JobRequest::sort(random_ints(BIG, 4), Order::Ascending)
                .deadline(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    let id = h.id().to_owned();
    let e = timeout(LIMIT, h).await.unwrap().unwrap_err();
    assert!(
        matches!(e, ComputeError::JobDeadlineExceeded { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("deadline"), "{e}");
    let job = c.get_job(&id).await.unwrap();
    assert_eq!(job.state, JobState::DeadlineExceeded);
    assert_eq!(job.error.unwrap().0, Code::DeadlineExceeded);
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_is_resource_exhausted() {
    let server = TestServer::start(ComputeConfig {
        workers: 1,
        job_queue_capacity: 1,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;
    let busy = c
        .sort_async(random_ints(BIG, 5), Order::Ascending)
        .await
        .unwrap();
    let e = c.add_async(vec![1i64, 2]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::ResourceExhausted));
    assert!(e.to_string().contains("job_queue_capacity"), "{e}");
    busy.cancel().await.unwrap();
    // The slot is free again.
    let h = c.add_async(vec![1i64, 2]).await.unwrap();
    assert_eq!(
        timeout(LIMIT, h).await.unwrap().unwrap(),
        JobOutput::Sum(Number::Int(3))
    );
    server.stop().await;
}

#[tokio::test]
async fn finished_results_are_evicted_after_their_ttl() {
    let server = TestServer::start(ComputeConfig {
        result_ttl: Duration::ZERO,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;
    let h = c.add_async(vec![1i64, 2]).await.unwrap();
    let id = h.id().to_owned();
    // Pushed at once, then gone.
    assert_eq!(
        timeout(LIMIT, h).await.unwrap().unwrap(),
        JobOutput::Sum(Number::Int(3))
    );
    let e = c.get_job(&id).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::NotFound));
    assert!(e.to_string().contains("evicted"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn a_client_dropped_with_jobs_in_flight_leaks_nothing() {
    let server = TestServer::start(ComputeConfig {
        workers: 1,
        ..ComputeConfig::default()
    })
    .await;
    let gone = server.client().await;
    let slow = gone
        .sort_async(random_ints(BIG, 6), Order::Ascending)
        .await
        .unwrap();
    let slow_id = slow.id().to_owned();
    let queued = gone.add_async(vec![1i64, 2]).await.unwrap();
    let queued_id = queued.id().to_owned();
    assert_eq!(server.svc.callback_subscribers(), 1);
    drop((slow, queued, gone));

    // The server notices the stream is gone and drops the subscription.
    let svc = server.svc.clone();
    timeout(LIMIT, async {
        while svc.callback_subscribers() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("subscription removed after the client left");

    // The jobs still finish and their results wait for a later fetch.
    let other = server.client().await;
    let h = other.add_async(vec![2i64, 2]).await.unwrap();
    assert_eq!(
        timeout(LIMIT, h).await.unwrap().unwrap(),
        JobOutput::Sum(Number::Int(4))
    );
    // The worker ran the three jobs in order, so both earlier ones are done.
    assert_eq!(
        other.get_job(&slow_id).await.unwrap().state,
        JobState::Succeeded
    );
    let q = other.get_job(&queued_id).await.unwrap();
    assert_eq!(q.output, Some(JobOutput::Sum(Number::Int(3))));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_callback_streams_and_cancels_jobs() {
    let server = TestServer::start(ComputeConfig {
        workers: 1,
        ..ComputeConfig::default()
    })
    .await;
    let c = server.client().await;
    let done = c.add_async(vec![1i64, 2]).await.unwrap();
    timeout(LIMIT, done).await.unwrap().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let running = c
        .sort_async(random_ints(BIG, 8), Order::Ascending)
        .await
        .unwrap();
    let waiter = running.on_result(move |r| *s.lock().unwrap() = Some(r.is_err()));
    // The open callback stream must not keep the server from stopping.
    server.stop().await;
    timeout(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(true));
}

#[tokio::test]
async fn the_callback_stream_is_reopened_after_a_server_restart() {
    let config = ComputeConfig {
        workers: 1,
        ..ComputeConfig::default()
    };
    let first = TestServer::start(config.clone()).await;
    let addr = first.addr;
    let c = first.client().await;
    let h = c.add_async(vec![1i64, 2]).await.unwrap();
    assert_eq!(
        timeout(LIMIT, h).await.unwrap().unwrap(),
        JobOutput::Sum(Number::Int(3))
    );
    // A job still running when the server goes away: its handle resolves
    // with an error (cancelled by the shutdown, or gone after the restart),
    // never hangs.
    let pending = c
        .sort_async(random_ints(BIG, 9), Order::Ascending)
        .await
        .unwrap();
    first.stop().await;
    let second = TestServer::start_on(addr, config).await;
    let e = timeout(LIMIT, pending).await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            ComputeError::JobCancelled { .. }
                | ComputeError::Rejected {
                    code: Code::NotFound,
                    ..
                }
                | ComputeError::CallbacksLost { .. }
        ),
        "{e:?}"
    );
    // The same client reconnects and gets results over a new stream.
    let h = timeout(LIMIT, c.add_async(vec![40i64, 2]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        timeout(LIMIT, h).await.unwrap().unwrap(),
        JobOutput::Sum(Number::Int(42))
    );
    assert_eq!(second.svc.callback_subscribers(), 1);
    second.stop().await;
}

#[path = "compute/memory.rs"]
mod memory;
