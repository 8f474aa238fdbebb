//! Compute jobs on the cluster backend, through two real `serve`
//! processes on one PostgreSQL database (issue 12, "Jobs across
//! instances"): a job submitted on one instance reaches the callback
//! stream on the other; an instance killed (SIGKILL) mid-job loses the job
//! to the other when its lease runs out, and the job completes once, or
//! fails saying so once it was tried as often as allowed.

use std::path::Path;
use std::time::Duration;

use distribusync_core::compute::Numbers;
use distribusync_proto::v1::{self, compute_client::ComputeClient};
use tonic::transport::Channel;

use super::super::{Server, tmp};
use super::KEYS;
use super::postgres::postgres;
use super::seaweedfs::seaweedfs;

/// The client id the tests' jobs and callbacks use.
const CLIENT: &str = "laptop";

/// Flags of an instance on a new database named after `name` (its URL
/// second), with a short job lease so a dead instance's jobs move on fast.
pub(super) fn cluster_flags(name: &str, attempts: u32) -> (Vec<String>, String) {
    let url = postgres().database(name);
    let flags = vec![
        "--metadata".into(),
        url.clone(),
        "--blobs".into(),
        format!("s3://{}", seaweedfs().bucket()),
        "--s3-endpoint".into(),
        seaweedfs().endpoint.clone(),
        "--job-lease".into(),
        "1s".into(),
        "--job-attempts".into(),
        attempts.to_string(),
    ];
    (flags, url)
}

/// `serve` with `flags` in its own folder `dir/name`.
pub(super) fn start(dir: &Path, name: &str, flags: &[String], env: &[(&str, &str)]) -> Server {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_env(&root, &args, env)
}

async fn client(addr: &str) -> ComputeClient<Channel> {
    ComputeClient::connect(addr.to_owned())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

fn sort_job(numbers: &[i64]) -> v1::SubmitRequest {
    v1::SubmitRequest {
        client_id: CLIENT.into(),
        task: Some(v1::submit_request::Task::Sort(v1::SortTask {
            numbers: Some(v1::Numbers::from(numbers)),
            order: v1::SortOrder::Ascending as i32,
        })),
        ..Default::default()
    }
}

/// Submits a sort of `numbers` through `on`; its id.
async fn submit_sort(on: &mut ComputeClient<Channel>, numbers: &[i64]) -> String {
    on.submit(sort_job(numbers))
        .await
        .unwrap()
        .into_inner()
        .job_id
}

async fn callbacks(addr: &str) -> tonic::Streaming<v1::JobEvent> {
    client(addr)
        .await
        .callbacks(v1::CallbacksRequest {
            client_id: CLIENT.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next event of `events` (safety net: one minute).
async fn next_event(events: &mut tonic::Streaming<v1::JobEvent>) -> v1::Job {
    tokio::time::timeout(Duration::from_secs(60), events.message())
        .await
        .expect("an event within a minute")
        .expect("the callback stream works")
        .expect("the callback stream stays open")
        .job
        .expect("the event has a job")
}

fn ints(n: v1::Numbers) -> Vec<i64> {
    match Numbers::try_from(n).unwrap() {
        Numbers::Ints(v) => v,
        Numbers::Floats(v) => panic!("decimals: {v:?}"),
    }
}

/// Job `id`'s sorted result, read whole with GetJobResult.
async fn streamed_result(on: &mut ComputeClient<Channel>, id: &str) -> Vec<i64> {
    let mut chunks = on
        .get_job_result(v1::GetJobRequest {
            job_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        back.extend(ints(chunk.numbers.unwrap()));
    }
    back
}

fn sorted(job: &v1::Job) -> Vec<i64> {
    match job.result.clone().and_then(|r| r.value) {
        Some(v1::job_result::Value::Sorted(n)) => ints(n),
        other => panic!("no sorted result: {other:?} in {job:?}"),
    }
}

#[test]
fn a_job_submitted_on_one_instance_reaches_the_callback_stream_on_the_other() {
    let (_t, dir) = tmp();
    let (flags, _) = cluster_flags("jobs_across", 3);
    let a = start(&dir, "a", &flags, &KEYS);
    let b = start(&dir, "b", &flags, &KEYS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut events = callbacks(&b.addr).await;
        let mut on_a = client(&a.addr).await;
        let mut on_b = client(&b.addr).await;
        let small = submit_sort(&mut on_a, &[3, -1, 2]).await;
        let job = next_event(&mut events).await;
        assert_eq!(job.job_id, small);
        assert_eq!(job.state(), v1::JobState::Succeeded, "{job:?}");
        assert_eq!(sorted(&job), vec![-1, 2, 3]);

        // Too big for an event: streamed by GetJobResult through B.
        let big: Vec<i64> = (0..20_000).rev().collect();
        let id = submit_sort(&mut on_a, &big).await;
        let job = next_event(&mut events).await;
        assert_eq!(job.job_id, id);
        assert!(job.result_in_stream, "{job:?}");
        let back = streamed_result(&mut on_b, &id).await;
        assert!(back == (0..20_000).collect::<Vec<i64>>(), "not sorted");

        // Either instance shows both jobs; a finished job cannot be cancelled.
        let shown = on_a
            .get_job(v1::GetJobRequest {
                job_id: small.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sorted(&shown), vec![-1, 2, 3]);
        let listed = on_b
            .list_jobs(v1::ListJobsRequest {
                client_id: CLIENT.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        let mut ids: Vec<&str> = listed.iter().map(|j| j.job_id.as_str()).collect();
        ids.sort_unstable();
        let mut want = vec![small.as_str(), id.as_str()];
        want.sort_unstable();
        assert_eq!(ids, want);
        let refused = on_b
            .cancel_job(v1::CancelJobRequest { job_id: small })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("already finished"),
            "{refused:?}"
        );
    });
}

/// Kept results are bounded on the cluster as on the local backend
/// (`--compute-memory`): past the bound the oldest result is dropped from
/// the database, and its job answers NOT_FOUND saying it was evicted and
/// to submit it again; the newer results are still whole.
#[test]
fn kept_results_are_bounded_over_the_instances_oldest_evicted_first() {
    const N: i64 = 410_000;
    let (_t, dir) = tmp();
    let (mut flags, _) = cluster_flags("jobs_kept", 3);
    // 8.75 MiB of it usable: two results of 410,000 numbers (3.13 MiB
    // each) fit, three do not; reading one back (twice its size, and a
    // stream's 2 MiB) fits too.
    flags.extend(["--compute-memory", "10MiB", "--job-workers", "1"].map(String::from));
    let a = start(&dir, "a", &flags, &KEYS);
    let b = start(&dir, "b", &flags, &KEYS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut events = callbacks(&b.addr).await;
        let (mut on_a, mut on_b) = (client(&a.addr).await, client(&b.addr).await);
        let mut ids = Vec::new();
        for i in 0..3i64 {
            let numbers: Vec<i64> = (0..N).map(|n| (n * 7919 + i) % (N + 1)).collect();
            let on = if i == 1 { &mut on_b } else { &mut on_a };
            let id = submit_sort(on, &numbers).await;
            // One at a time: each finishes after the one before.
            let job = next_event(&mut events).await;
            assert_eq!(job.job_id, id);
            assert_eq!(job.state(), v1::JobState::Succeeded, "{job:?}");
            ids.push(id);
        }
        for on in [&mut on_a, &mut on_b] {
            let gone = on
                .get_job(v1::GetJobRequest {
                    job_id: ids[0].clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
            assert!(
                gone.message().contains("evicted")
                    && gone.message().contains("submit the job again"),
                "{gone:?}"
            );
            let gone = on
                .get_job_result(v1::GetJobRequest {
                    job_id: ids[0].clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
        }
        // The newer two are kept: shown, and the newest read back whole.
        for id in &ids[1..] {
            let job = on_b
                .get_job(v1::GetJobRequest { job_id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            assert!(job.result_in_stream, "{job:?}");
        }
        let back = streamed_result(&mut on_a, &ids[2]).await;
        let mut want: Vec<i64> = (0..N).map(|n| (n * 7919 + 2) % (N + 1)).collect();
        want.sort_unstable();
        assert!(back == want, "the newest result not whole");
    });
}

/// The jobs' `/metrics` figures count on the cluster backend too: each
/// job's end once over the instances (by the instance that recorded it),
/// a cancellation by the instance asked, and the shared queue empty once
/// the jobs are done.
#[test]
fn job_metrics_count_every_job_once_over_the_instances() {
    use super::super::ops::{get, metrics_addr, samples, scrape};
    let (_t, dir) = tmp();
    let (mut flags, _) = cluster_flags("jobs_metrics", 3);
    flags.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let a = start(&dir, "a", &flags, &KEYS);
    let b = start(&dir, "b", &flags, &KEYS);
    let metrics = [metrics_addr(&a), metrics_addr(&b)];
    // One figure summed over both instances.
    let total = |key: &str| -> f64 { metrics.iter().map(|m| get(&samples(&scrape(m)), key)).sum() };
    let succeeded = r#"distribusync_jobs_finished_total{state="succeeded"}"#;
    let cancelled = r#"distribusync_jobs_finished_total{state="cancelled"}"#;
    assert_eq!(total(succeeded), 0.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut events = callbacks(&b.addr).await;
        let (mut on_a, mut on_b) = (client(&a.addr).await, client(&b.addr).await);
        for i in 0..3 {
            let on = if i % 2 == 0 { &mut on_a } else { &mut on_b };
            on.submit(sort_job(&[3, i, -1])).await.unwrap();
        }
        for _ in 0..3 {
            let job = next_event(&mut events).await;
            assert_eq!(job.state(), v1::JobState::Succeeded, "{job:?}");
        }
    });
    // The instance that ran a job counts it just after it recorded the
    // end, which is when the event left: wait for the figure.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while total(succeeded) < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "succeeded jobs never counted: {}",
            total(succeeded)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(total(succeeded), 3.0, "a job counted twice");
    assert_eq!(total(r#"distribusync_jobs{state="queued"}"#), 0.0);
    assert_eq!(total(r#"distribusync_jobs{state="running"}"#), 0.0);
    assert_eq!(total(cancelled), 0.0);
    drop((a, b));

    // A job held by its instance (the test knob), cancelled through the
    // other: counted once, as cancelled, by the instance asked.
    let (mut flags, _) = cluster_flags("jobs_metrics_cancel", 3);
    flags.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let mut holding = KEYS.to_vec();
    holding.push(("DISTRIBUSYNC_TEST_HOLD_JOBS", "true"));
    let a = start(&dir, "a2", &flags, &holding);
    let m_a = metrics_addr(&a);
    let running = r#"distribusync_jobs{state="running"}"#;
    let (b, m_b) = rt.block_on(async {
        let mut on_a = client(&a.addr).await;
        let id = submit_sort(&mut on_a, &[2, 1]).await;
        // A is the only instance yet: it claims the job and holds it, and
        // shows it running.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while get(&samples(&scrape(&m_a)), running) != 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the job never ran on A"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let job = on_a
            .get_job(v1::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.state(), v1::JobState::Running, "{job:?}");
        let b = start(&dir, "b2", &flags, &KEYS);
        let m_b = metrics_addr(&b);
        client(&b.addr)
            .await
            .cancel_job(v1::CancelJobRequest { job_id: id })
            .await
            .unwrap();
        (b, m_b)
    });
    assert_eq!(get(&samples(&scrape(&m_b)), cancelled), 1.0);
    assert_eq!(get(&samples(&scrape(&m_a)), cancelled), 0.0);
    drop((a, b));
}

/// Submits a sort on instance A, which claims the job and holds it
/// without computing (the test knob); once it does, starts B, kills A
/// (SIGKILL) and returns the job as B's callback stream tells it ended,
/// with the database's URL.
fn killed_mid_job(name: &str, attempts: u32) -> (v1::Job, String) {
    let (_t, dir) = tmp();
    let (flags, url) = cluster_flags(name, attempts);
    let mut holding = KEYS.to_vec();
    holding.push(("DISTRIBUSYNC_TEST_HOLD_JOBS", "true"));
    let mut a = start(&dir, "a", &flags, &holding);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let job = rt.block_on(async {
        let id = submit_sort(&mut client(&a.addr).await, &[5, 4, 3]).await;
        a.wait_logged(&["holding the job", &id]);
        let b = start(&dir, "b", &flags, &KEYS);
        let mut events = callbacks(&b.addr).await;
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        let job = next_event(&mut events).await;
        assert_eq!(job.job_id, id);
        job
    });
    (job, url)
}

#[test]
fn a_job_whose_instance_is_killed_mid_job_runs_again_on_another_and_completes_once() {
    let (job, url) = killed_mid_job("killed_mid_job", 3);
    assert_eq!(job.state(), v1::JobState::Succeeded, "{job:?}");
    assert_eq!(sorted(&job), vec![3, 4, 5]);
    // Tried twice (A's claim, then B's), recorded done once.
    let row = postgres().query(
        &url,
        &format!(
            "SELECT attempts, state FROM jobs WHERE id = '{}'",
            job.job_id
        ),
    );
    assert_eq!(row, "2|2");
}

#[test]
fn a_job_out_of_attempts_fails_saying_so() {
    let (job, _) = killed_mid_job("out_of_attempts", 1);
    assert_eq!(job.state(), v1::JobState::Failed, "{job:?}");
    assert_eq!(job.error_code, tonic::Code::Aborted as i32, "{job:?}");
    assert!(
        job.error.contains("gave up after 1 attempts"),
        "{}",
        job.error
    );
}
