//! The compute memory budget (issue 9, item 3): sorts in flight, job inputs,
//! kept results and open streams share one configured byte budget; past it
//! a request is RESOURCE_EXHAUSTED naming `serve --compute-memory`, kept
//! results are evicted oldest first to make room, and a result is held once
//! however many subscribers receive it.

use distribusync_proto::v1::{self, compute_client::ComputeClient as Grpc};
use tonic::transport::Channel;

use super::*;

const MIB: u64 = 1 << 20;

fn small_budget(bytes: u64) -> ComputeConfig {
    ComputeConfig {
        memory_budget: bytes,
        ..ComputeConfig::default()
    }
}

async fn grpc(server: &TestServer) -> Grpc<Channel> {
    Grpc::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Waits (with a safety net) until the server's budget is back to `bytes`:
/// a stream's reservation ends when the transport drops the stream, just
/// after the client saw its end.
async fn memory_settles_at(server: &TestServer, bytes: u64) {
    timeout(LIMIT, async {
        while server.svc.memory_in_use() != bytes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "memory in use stayed at {} instead of {bytes}",
            server.svc.memory_in_use()
        )
    });
}

fn sorted(mut v: Vec<i64>) -> Numbers {
    v.sort_unstable();
    Numbers::Ints(v)
}

#[tokio::test]
async fn a_sort_bigger_than_the_budget_is_refused_naming_it_and_the_server_still_answers() {
    let server = TestServer::start(small_budget(4 * MIB)).await;
    let c = server.client().await;
    // 8 MiB of numbers, announced up front by the client library.
    let e = c
        .sort(random_ints(1 << 20, 1), Order::Ascending)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::ResourceExhausted), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("compute memory budget (4 MiB, serve --compute-memory)"),
        "{msg}"
    );
    // Not announced: refused while it arrives, as soon as a run does not fit.
    let mut rpc = grpc(&server).await;
    let chunks: Vec<v1::SortRequest> = random_ints(1 << 20, 2)
        .chunks(100_000)
        .map(|c| v1::SortRequest {
            order: 0,
            numbers: Some(c.into()),
            total: 0,
        })
        .collect();
    let status = rpc
        .sort(tokio_stream::iter(chunks))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("serve --compute-memory"),
        "{status:?}"
    );
    // The server still answers, and a sort that fits is right.
    let v = random_ints(100_000, 3);
    assert_eq!(
        c.sort(v.clone(), Order::Ascending).await.unwrap(),
        sorted(v)
    );
    assert_eq!(c.add(vec![1i64, 1]).await.unwrap(), Number::Int(2));
    memory_settles_at(&server, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn concurrent_sorts_past_the_budget_are_refused_or_right_and_leave_nothing_reserved() {
    // Each sort of 256 Ki numbers holds 2 MiB of numbers and 2 MiB of
    // answer buffers: three fit in 13 MiB, not eight.
    let server = TestServer::start(small_budget(13 * MIB)).await;
    let c = server.client().await;
    let mut tasks = Vec::new();
    for seed in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let v = random_ints(256 * 1024, 10 + seed);
            let got = c.sort(v.clone(), Order::Ascending).await;
            (v, got)
        }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for t in tasks {
        let (v, got) = timeout(LIMIT, t).await.unwrap().unwrap();
        match got {
            Ok(s) => {
                assert_eq!(s, sorted(v));
                accepted += 1;
            }
            Err(e) => {
                assert_eq!(code(&e), Some(Code::ResourceExhausted), "{e}");
                assert!(e.to_string().contains("serve --compute-memory"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(accepted >= 1, "{accepted} accepted, {refused} refused");
    memory_settles_at(&server, 0).await;
    // Sequentially every one fits.
    let v = random_ints(256 * 1024, 99);
    assert_eq!(
        c.sort(v.clone(), Order::Ascending).await.unwrap(),
        sorted(v)
    );
    server.stop().await;
}

#[tokio::test]
async fn kept_results_past_the_budget_are_evicted_oldest_first() {
    // Each job's result is 4 MiB; while a job's request arrives it also
    // holds its message and the list decoded from it (8 MiB). Five results
    // fit at rest in 24 MiB (21 MiB of it reservable, less 0.5 MiB for the
    // callback stream), but the fifth job's arrival beside four does not:
    // room is made by evicting the oldest results.
    let server = TestServer::start(small_budget(24 * MIB)).await;
    let c = server.client().await;
    let mut ids = Vec::new();
    for seed in 0..5 {
        let v = random_ints(512 * 1024, 20 + seed);
        let handle = c.sort_async(v.clone(), Order::Ascending).await.unwrap();
        ids.push((handle.id().to_owned(), v));
        let got = timeout(LIMIT, handle.result()).await.unwrap().unwrap();
        assert_eq!(got, JobOutput::Sorted(sorted(ids[seed as usize].1.clone())));
    }
    let mut kept = Vec::new();
    for (id, v) in &ids {
        match c.get_job(id).await {
            Ok(job) => {
                assert_eq!(job.output, Some(JobOutput::Sorted(sorted(v.clone()))));
                kept.push(true);
            }
            Err(e) => {
                assert_eq!(code(&e), Some(Code::NotFound), "{e}");
                assert!(e.to_string().contains("evicted to make room"), "{e}");
                assert!(e.to_string().contains("serve --compute-memory"), "{e}");
                kept.push(false);
            }
        }
    }
    // Oldest first: no kept result is older than an evicted one.
    assert!(!kept[0] && kept[4], "{kept:?}");
    assert!(kept.windows(2).all(|w| w[0] <= w[1]), "{kept:?}");
    let n = kept.iter().filter(|k| **k).count() as u64;
    assert_eq!(server.svc.kept_result_bytes(), n * 4 * MIB);
    server.stop().await;
}

#[tokio::test]
async fn two_subscribers_of_one_client_id_get_the_same_result_held_once() {
    let server = TestServer::start(ComputeConfig::default()).await;
    let mut rpc = grpc(&server).await;
    let client_id = "two-subscribers".to_owned();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let req = v1::CallbacksRequest {
            client_id: client_id.clone(),
        };
        streams.push(rpc.callbacks(req).await.unwrap().into_inner());
    }
    let before = server.svc.memory_in_use();
    // A big result (past what an event carries) and a small one.
    let big = random_ints(100_000, 7);
    let small = random_ints(100, 8);
    let mut job_ids = Vec::new();
    for v in [&big, &small] {
        let req = v1::SubmitRequest {
            client_id: client_id.clone(),
            job_id: String::new(),
            deadline: None,
            task: Some(v1::submit_request::Task::Sort(v1::SortTask {
                numbers: Some(v.as_slice().into()),
                order: 0,
            })),
        };
        job_ids.push(rpc.submit(req).await.unwrap().into_inner().job_id);
    }
    for stream in &mut streams {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let event = timeout(LIMIT, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push(event.job.unwrap());
        }
        seen.sort_by_key(|j| job_ids.iter().position(|id| *id == j.job_id));
        let (b, s) = (&seen[0], &seen[1]);
        assert_eq!(b.job_id, job_ids[0]);
        assert_eq!(b.state(), v1::JobState::Succeeded);
        assert!(b.result_in_stream && b.result.is_none(), "{b:?}");
        assert!(!s.result_in_stream, "{s:?}");
        let Some(v1::job_result::Value::Sorted(inline)) = s.result.clone().and_then(|r| r.value)
        else {
            panic!("small result inline: {s:?}")
        };
        assert_eq!(Numbers::try_from(inline).unwrap(), sorted(small.clone()));
    }
    // Both subscribers read the big result; the server holds it once.
    let big_bytes = 8 * big.len() as u64;
    assert_eq!(
        server.svc.kept_result_bytes(),
        big_bytes + 8 * small.len() as u64
    );
    assert_eq!(
        server.svc.memory_in_use(),
        before + big_bytes + 8 * small.len() as u64
    );
    let mut readers = Vec::new();
    for _ in 0..2 {
        let req = v1::GetJobRequest {
            job_id: job_ids[0].clone(),
        };
        readers.push(rpc.get_job_result(req).await.unwrap().into_inner());
    }
    for mut r in readers {
        let mut got = Numbers::default();
        while let Some(chunk) = r.message().await.unwrap() {
            got.extend(chunk.numbers.unwrap().try_into().unwrap())
                .unwrap();
        }
        assert_eq!(got, sorted(big.clone()));
    }
    memory_settles_at(&server, before + big_bytes + 8 * small.len() as u64).await;
    drop(streams);
    server.stop().await;
}

#[tokio::test]
async fn callback_streams_are_bounded_per_client_id_and_in_total() {
    let server = TestServer::start(ComputeConfig {
        max_callback_streams_per_client: 2,
        max_callback_streams: 3,
        ..ComputeConfig::default()
    })
    .await;
    let mut rpc = grpc(&server).await;
    let open = |id: &str| v1::CallbacksRequest {
        client_id: id.to_owned(),
    };
    let a1 = rpc.callbacks(open("a")).await.unwrap();
    let a2 = rpc.callbacks(open("a")).await.unwrap();
    let e = rpc.callbacks(open("a")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("for this client id (limit 2)"),
        "{e:?}"
    );
    let b1 = rpc.callbacks(open("b")).await.unwrap();
    let e = rpc.callbacks(open("c")).await.unwrap_err();
    assert!(e.message().contains("on this server (limit 3)"), "{e:?}");
    // A closed stream frees its place.
    drop(a1);
    timeout(LIMIT, async {
        while server.svc.callback_subscribers() != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let c1 = rpc.callbacks(open("c")).await.unwrap();
    drop((a2, b1, c1));
    server.stop().await;
}

#[tokio::test]
async fn sorts_that_announce_no_total_or_a_wrong_one_are_cut_into_runs_and_come_back_right() {
    let server = TestServer::start(ComputeConfig {
        sort_run_min: 30_000,
        memory_budget: 64 * MIB,
        ..ComputeConfig::default()
    })
    .await;
    let mut rpc = grpc(&server).await;
    let v = random_ints(250_003, 31);
    // Uneven chunks, so runs end in the middle of chunks.
    for total in [0u64, 100_000, 250_003, 400_000] {
        let mut reqs = Vec::new();
        let mut at = 0;
        for (i, len) in [1usize, 77_777, 12_345, 99_999].iter().cycle().enumerate() {
            if at >= v.len() {
                break;
            }
            let end = (at + len).min(v.len());
            reqs.push(v1::SortRequest {
                order: 0,
                numbers: Some(v[at..end].into()),
                total: if i == 0 { total } else { 0 },
            });
            at = end;
        }
        let mut answer = rpc
            .sort(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let mut got = Numbers::default();
        while let Some(chunk) = answer.message().await.unwrap() {
            got.extend(chunk.numbers.unwrap().try_into().unwrap())
                .unwrap();
        }
        assert_eq!(got, sorted(v.clone()), "total {total}");
    }
    memory_settles_at(&server, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn an_add_is_counted_while_its_message_arrives_not_only_once_decoded() {
    // 8 MiB budget: 7 MiB of it reservable.
    let server = TestServer::start(small_budget(8 * MIB)).await;
    let mut g = grpc(&server).await;
    let add = |n: i64| v1::AddRequest {
        numbers: Some(Numbers::Ints((0..n).collect()).into()),
    };
    // 3.8 MB of numbers fit once decoded, but not beside the 3.8 MB message
    // they were decoded from: refused before tonic decodes them.
    let e = g.add(add(475_000)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("serve --compute-memory"), "{e:?}");
    memory_settles_at(&server, 0).await;
    // Half that fits both ways, and gives everything back.
    let sum = g.add(add(200_000)).await.unwrap().into_inner();
    assert!(format!("{sum:?}").contains("19999900000"), "{sum:?}");
    memory_settles_at(&server, 0).await;
}

#[tokio::test]
async fn a_sort_that_announces_a_total_then_sends_nothing_ends_at_the_idle_timeout() {
    let server = TestServer::start(ComputeConfig {
        idle_timeout: Duration::from_millis(300),
        ..small_budget(64 * MIB)
    })
    .await;
    let mut g = grpc(&server).await;
    // Announces 4M numbers (32 MiB of the budget), then goes silent while
    // keeping its stream open.
    let (tx, rx) = mpsc::channel(1);
    tx.send(v1::SortRequest {
        order: 0,
        numbers: Some(Numbers::Ints(vec![3, 1, 2]).into()),
        total: 4 << 20,
    })
    .await
    .unwrap();
    let e = timeout(
        LIMIT,
        g.sort(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("--idle-timeout"), "{e:?}");
    drop(tx);
    memory_settles_at(&server, 0).await;
}
