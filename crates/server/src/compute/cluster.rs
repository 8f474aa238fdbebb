//! Jobs on the cluster backend (issue 12): [`ClusterJobs`] keeps the
//! Compute service's asynchronous jobs in the PostgreSQL job queue
//! ([`PgJobQueue`]), shared by every instance on the database, so a job
//! submitted through one instance may run on another and its result
//! reaches the client's callback stream on whichever instance the client
//! is connected to.
//!
//! Invariants:
//! - a job is in the database before Submit answers; each instance's
//!   dispatcher claims jobs (`FOR UPDATE SKIP LOCKED`) while it has a free
//!   worker slot, woken by `NOTIFY … 'queued'` and, for the leases of
//!   instances that died, by a poll every half lease;
//! - an instance runs a job only while it holds its claim: it renews the
//!   lease every third of it and drops the job as soon as a renewal says
//!   the claim is gone (cancelled, or the lease ran out and another
//!   instance took it). Only the current claim can record an outcome, so a
//!   job completes once; a job whose instances keep dying is tried at most
//!   `job_attempts` times, then failed saying so;
//! - results travel through the database: the statement that ends a job
//!   sends `NOTIFY … 'done ID'`; every instance reads that job by id and
//!   pushes it to its own callback subscribers of the job's owner and
//!   client id (the local registry's, `jobs.rs`). A lost listening session
//!   ends this instance's callback streams: their client libraries open
//!   them again and ask GetJob for the jobs they wait for, so no result is
//!   missed;
//! - jobs belong to the identity that submitted them: every read, list and
//!   cancel is keyed by its owner, as on the local backend;
//! - the memory budget is this instance's: a submit holds the input while
//!   it is encoded and stored, a worker holds it while it runs, a streamed
//!   result while it is read.

use std::collections::HashMap;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant, SystemTime};

use distribusync_core::compute::{self as arith, Numbers};
use distribusync_proto::{timestamp, v1};
use prost::Message;
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::jobs::{INLINE_RESULT_MAX, Jobs, KeptNumbers, Task, numbers_bytes, state_word};
use super::{ComputeConfig, ComputeError, work};
use crate::store::{
    ClaimedJob, FinalState, JOBS_CHANNEL, JobQueue, JobRow, JobSpec, JobState, KeptResults,
    Notifications, PgJobQueue, SubmitRefused,
};

/// Most jobs one ListJobs answer carries (as on the local backend).
const LIST_LIMIT: u32 = 1000;
/// Largest stored result read along with a job (an inline result of
/// [`INLINE_RESULT_MAX`] numbers, eight bytes each, and its framing).
const INLINE_RESULT_BYTES: u64 = INLINE_RESULT_MAX as u64 * 8 + 1024;

/// The cluster backend's jobs: a cheap clone.
#[derive(Debug, Clone)]
pub(crate) struct ClusterJobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: PgJobQueue,
    /// This instance's registry: the memory budget and the callback
    /// subscribers (its own jobs table stays empty).
    jobs: Jobs,
    config: ComputeConfig,
    /// This instance's name in claims.
    worker: String,
    slots: Arc<Semaphore>,
    /// Wakes the dispatcher: a job was queued or a claim given back.
    wake: Notify,
    /// Jobs running here, to stop at once when cancelled elsewhere.
    // A std Mutex: held for a map update, never across an await.
    running: Mutex<HashMap<String, CancellationToken>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

fn store_error(e: crate::ServiceError) -> ComputeError {
    ComputeError::JobStore(e.to_string())
}

fn wire_numbers(n: &Numbers) -> v1::Numbers {
    match n {
        Numbers::Ints(v) => v1::Numbers::from(&v[..]),
        Numbers::Floats(v) => v1::Numbers::from(&v[..]),
    }
}

/// A job's payload in the queue: its task as a `SubmitRequest`.
fn encode_task(task: &Task) -> Vec<u8> {
    let task = match task {
        Task::Add(n) => v1::submit_request::Task::Add(v1::AddTask {
            numbers: Some(wire_numbers(n)),
        }),
        Task::Sort(n, order) => v1::submit_request::Task::Sort(v1::SortTask {
            numbers: Some(wire_numbers(n)),
            order: v1::SortOrder::from(*order) as i32,
        }),
    };
    v1::SubmitRequest {
        task: Some(task),
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode_task(payload: &[u8]) -> Result<Task, ComputeError> {
    let damaged =
        |what: String| ComputeError::JobStore(format!("damaged job in the queue: {what}"));
    let req = v1::SubmitRequest::decode(payload).map_err(|e| damaged(e.to_string()))?;
    match req.task {
        Some(v1::submit_request::Task::Add(a)) => Ok(Task::Add(super::numbers(a.numbers)?)),
        Some(v1::submit_request::Task::Sort(s)) => {
            let order = s.order().into();
            Ok(Task::Sort(super::numbers(s.numbers)?, order))
        }
        None => Err(damaged("no task".into())),
    }
}

fn succeeded(result: &v1::JobResult) -> FinalState {
    FinalState {
        outcome: v1::JobState::Succeeded as i16,
        done: true,
        result: Some(result.encode_to_vec()),
        error_code: 0,
        error: None,
    }
}

fn ended(state: v1::JobState, e: &ComputeError) -> FinalState {
    FinalState {
        outcome: state as i16,
        done: false,
        result: None,
        error_code: e.code() as i32,
        error: Some(e.to_string()),
    }
}

/// The bound on the results kept in the database, over every instance:
/// sorted results, within what the memory budget lets the local backend
/// keep (`--compute-memory`; docs/DESIGN.md, "Kept results on the
/// cluster").
fn kept_results(config: &ComputeConfig) -> KeptResults {
    KeptResults {
        kind: v1::JobKind::Sort as i16,
        bytes: super::budget::usable(config.memory_budget),
    }
}

/// The job as the wire shows it; its result inline when it was read and
/// is small enough (a big sorted result is streamed by GetJobResult).
fn to_wire(row: &JobRow) -> Result<v1::Job, ComputeError> {
    let state = match row.state {
        JobState::Queued => v1::JobState::Queued,
        JobState::Running => v1::JobState::Running,
        JobState::Done | JobState::Failed => {
            let fallback = if row.state == JobState::Done {
                v1::JobState::Succeeded
            } else {
                v1::JobState::Failed
            };
            row.outcome
                .and_then(|o| v1::JobState::try_from(i32::from(o)).ok())
                .unwrap_or(fallback)
        }
    };
    let kind = v1::JobKind::try_from(i32::from(row.kind)).unwrap_or(v1::JobKind::Unspecified);
    let result_in_stream = state == v1::JobState::Succeeded
        && kind == v1::JobKind::Sort
        && row.count > INLINE_RESULT_MAX as u64;
    let result = match (&row.result, result_in_stream) {
        (Some(bytes), false) if state == v1::JobState::Succeeded => {
            Some(v1::JobResult::decode(&bytes[..]).map_err(|e| {
                ComputeError::JobStore(format!("damaged result of job {}: {e}", row.id))
            })?)
        }
        _ => None,
    };
    let failed = matches!(
        state,
        v1::JobState::Failed | v1::JobState::Cancelled | v1::JobState::DeadlineExceeded
    );
    // A job the queue gave up on (its workers kept dying) has no code of
    // the service's: ABORTED, as a retry may succeed.
    let error_code = match row.error_code {
        Some(c) if c != 0 => c,
        _ if failed => tonic::Code::Aborted as i32,
        _ => 0,
    };
    Ok(v1::Job {
        job_id: row.id.clone(),
        client_id: row.client_id.clone(),
        kind: kind as i32,
        state: state as i32,
        count: row.count,
        submitted: Some(timestamp(row.submitted)),
        deadline: row.deadline.map(timestamp),
        finished: row.finished.map(timestamp),
        result,
        error_code,
        error: row.error.clone().unwrap_or_default(),
        result_in_stream,
    })
}

/// Sets its flag when dropped: an add in progress stops at its next check.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ClusterJobs {
    /// Starts this instance's dispatcher and its listener on the queue;
    /// listening before it returns, so no job that ends after a callback
    /// stream opened here goes unannounced.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub(crate) async fn start(
        queue: PgJobQueue,
        jobs: Jobs,
        config: ComputeConfig,
        shutdown: CancellationToken,
    ) -> crate::error::Result<Self> {
        let session = queue.db().listen_to(JOBS_CHANNEL).await?;
        let me = ClusterJobs {
            inner: Arc::new(Inner {
                queue,
                jobs,
                slots: Arc::new(Semaphore::new(config.workers.max(1))),
                config,
                worker: Uuid::new_v4().to_string(),
                wake: Notify::new(),
                running: Mutex::default(),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        info!(worker = %me.inner.worker, "compute jobs in the cluster's job queue");
        me.inner.tasks.spawn(me.clone().dispatch());
        me.inner.tasks.spawn(me.clone().listen(session));
        Ok(me)
    }

    /// Waits until the dispatcher, the listener and every job task ended
    /// (after shutdown).
    pub(crate) async fn drained(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a job for any instance; its id and deadline.
    ///
    /// # Errors
    /// As the local backend's submit, and JobStore when the database fails.
    pub(crate) async fn submit(
        &self,
        owner: &str,
        client_id: String,
        job_id: Option<Uuid>,
        deadline: Option<Duration>,
        task: Task,
    ) -> Result<(Uuid, SystemTime), ComputeError> {
        let inner = &self.inner;
        let timeout = inner.jobs.check(&client_id, &task, deadline)?;
        // The decoded input and its encoding, while they are stored.
        let _held = inner.jobs.reserve(numbers_bytes(task.len()) * 2)?;
        let id = job_id.unwrap_or_else(Uuid::new_v4);
        let deadline = SystemTime::now() + timeout;
        let spec = JobSpec {
            id: id.to_string(),
            owner: owner.to_owned(),
            client_id,
            kind: task.kind() as i16,
            count: task.len() as u64,
            deadline,
            payload: encode_task(&task),
        };
        drop(task);
        let capacity = inner.config.job_queue_capacity;
        match inner
            .queue
            .submit_job(&spec, capacity)
            .await
            .map_err(store_error)?
        {
            Ok(_) => {
                debug!(job = %id, count = spec.count, "job queued in the cluster");
                Ok((id, deadline))
            }
            Err(SubmitRefused::Full) => Err(ComputeError::QueueFull { capacity }),
            Err(SubmitRefused::Exists) => Err(ComputeError::AlreadyExists(id.to_string())),
        }
    }

    /// `owner`'s job `id`, with its result when small.
    ///
    /// # Errors
    /// NotFound; JobStore when the database fails.
    pub(crate) async fn get(&self, owner: &str, id: &str) -> Result<v1::Job, ComputeError> {
        let row = self
            .inner
            .queue
            .job(id, Some(owner), Some(INLINE_RESULT_BYTES))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))?;
        if row.evicted {
            return Err(ComputeError::Evicted(id.to_owned()));
        }
        to_wire(&row)
    }

    /// The sorted result of `owner`'s job `id`, read from the database
    /// into this instance's memory budget.
    ///
    /// # Errors
    /// NotFound, NoStreamedResult, MemoryBudget; JobStore when the
    /// database fails.
    pub(crate) async fn result(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Arc<KeptNumbers>, ComputeError> {
        let inner = &self.inner;
        let row = inner
            .queue
            .job(id, Some(owner), None)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))?;
        if row.evicted {
            return Err(ComputeError::Evicted(id.to_owned()));
        }
        let job = to_wire(&row)?;
        let state = job.state();
        let why = match state {
            v1::JobState::Succeeded if job.kind() == v1::JobKind::Sort => None,
            v1::JobState::Succeeded => Some("an add's sum comes with GetJob"),
            v1::JobState::Queued | v1::JobState::Running => Some("the job has not finished"),
            _ => Some("the job did not succeed"),
        };
        if let Some(why) = why {
            return Err(ComputeError::NoStreamedResult {
                id: id.to_owned(),
                why,
            });
        }
        // The encoded result and the numbers, while decoded.
        let reservation = inner.jobs.reserve(numbers_bytes(row.count as usize) * 2)?;
        let row = inner
            .queue
            .job(id, Some(owner), Some(u64::MAX))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))?;
        // Evicted for the bound since it was first read.
        if row.evicted {
            return Err(ComputeError::Evicted(id.to_owned()));
        }
        let damaged =
            |what: &str| ComputeError::JobStore(format!("damaged result of job {id}: {what}"));
        let bytes = row.result.ok_or_else(|| damaged("missing"))?;
        let result = v1::JobResult::decode(&bytes[..]).map_err(|e| damaged(&e.to_string()))?;
        drop(bytes);
        let numbers = match result.value {
            Some(v1::job_result::Value::Sorted(n)) => super::numbers(Some(n))?,
            _ => return Err(damaged("not a sorted list")),
        };
        let mut reservation = reservation;
        let kept = reservation.split(numbers_bytes(numbers.len()));
        drop(reservation);
        Ok(Arc::new(KeptNumbers::new(numbers, kept)))
    }

    /// Cancels `owner`'s job `id` wherever it runs.
    ///
    /// # Errors
    /// NotFound, AlreadyFinished; JobStore when the database fails.
    pub(crate) async fn cancel(&self, owner: &str, id: &str) -> Result<v1::Job, ComputeError> {
        let end = ended(v1::JobState::Cancelled, &ComputeError::Cancelled);
        let (cancelled, row) = self
            .inner
            .queue
            .cancel_job(id, owner, &end)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))?;
        let job = to_wire(&row)?;
        if !cancelled {
            return Err(ComputeError::AlreadyFinished {
                id: id.to_owned(),
                state: state_word(job.state()),
            });
        }
        info!(job = %id, "job cancelled");
        self.inner.jobs.count_ended(v1::JobState::Cancelled);
        Ok(job)
    }

    /// Jobs queued in the shared queue, running here, and ended by this
    /// instance (see [`super::ComputeService::job_counts`]).
    pub(crate) async fn counts(&self) -> super::JobCounts {
        let queued = match self.inner.queue.queued().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "compute jobs: cannot count the queued jobs");
                0
            }
        };
        super::JobCounts {
            queued,
            running: self.running().len() as u64,
            ended: self.inner.jobs.counts().ended,
        }
    }

    /// `owner`'s jobs (of device `client_id`, or all when empty).
    ///
    /// # Errors
    /// JobStore when the database fails.
    pub(crate) async fn list(
        &self,
        owner: &str,
        client_id: &str,
    ) -> Result<Vec<v1::Job>, ComputeError> {
        let rows = self
            .inner
            .queue
            .list(owner, client_id, LIST_LIMIT)
            .await
            .map_err(store_error)?;
        rows.iter().map(to_wire).collect()
    }

    /// Claims jobs while a worker slot is free; waits for a wake-up or the
    /// next poll (leases of dead instances run out without a word).
    async fn dispatch(self) {
        let inner = &self.inner;
        let lease = inner.config.job_lease;
        let poll = (lease / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let sweep_every =
            (inner.config.result_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut swept = Instant::now();
        let mut pause = poll;
        loop {
            let slot = tokio::select! {
                () = inner.shutdown.cancelled() => return,
                slot = inner.slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            match inner.queue.claim(inner.worker.clone(), lease).await {
                Ok(Some(job)) => {
                    pause = poll;
                    let me = self.clone();
                    inner.tasks.spawn(async move {
                        me.run(job).await;
                        drop(slot);
                    });
                    continue;
                }
                Ok(None) => pause = poll,
                Err(e) => {
                    warn!(error = %e, "compute jobs: cannot claim a job; trying again");
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
            drop(slot);
            if swept.elapsed() >= sweep_every {
                swept = Instant::now();
                match inner.queue.forget_finished(inner.config.result_ttl).await {
                    Ok(n) if n > 0 => debug!(jobs = n, "forgot finished jobs past the result TTL"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "compute jobs: cannot forget old jobs"),
                }
            }
            tokio::select! {
                () = inner.shutdown.cancelled() => return,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Runs a claimed job while holding its claim, then records how it
    /// ended (or gives it back at shutdown).
    async fn run(&self, job: ClaimedJob) {
        let inner = &self.inner;
        info!(job = %job.id, attempt = job.attempt, worker = %inner.worker, "job claimed");
        let row = match inner.queue.job(&job.id, None, None).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                warn!(job = %job.id, error = %e, "cannot read a claimed job; its lease will run out");
                return;
            }
        };
        let deadline = row
            .deadline
            .unwrap_or_else(|| SystemTime::now() + inner.config.default_deadline);
        let timeout = deadline
            .duration_since(row.submitted)
            .unwrap_or(Duration::ZERO);
        let cancel = inner.shutdown.child_token();
        self.running().insert(job.id.clone(), cancel.clone());
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            () = self.keep_claim(&job) => {
                info!(job = %job.id, "job's claim lost (cancelled, or taken over): stopped");
                None
            }
            end = self.work(&job, deadline, timeout) => Some(end),
        };
        self.running().remove(&job.id);
        match outcome {
            None if inner.shutdown.is_cancelled() => {
                if let Err(e) = inner
                    .queue
                    .release(&job.id, &inner.worker, job.attempt)
                    .await
                {
                    warn!(job = %job.id, error = %e, "cannot give a job back at shutdown; its lease will run out");
                }
            }
            None => {}
            Some(end) => match inner
                .queue
                .finish_job(
                    &job.id,
                    &inner.worker,
                    job.attempt,
                    &end,
                    kept_results(&inner.config),
                )
                .await
            {
                Ok(true) => {
                    debug!(job = %job.id, "job finished");
                    let state = v1::JobState::try_from(i32::from(end.outcome))
                        .unwrap_or(v1::JobState::Unspecified);
                    inner.jobs.count_ended(state);
                }
                Ok(false) => {
                    info!(job = %job.id, "job's claim lost before it finished: outcome dropped");
                }
                Err(e) => {
                    warn!(job = %job.id, error = %e, "cannot record a job's outcome; it will run again");
                }
            },
        }
    }

    /// Renews the claim every third of the lease; returns when it is lost.
    async fn keep_claim(&self, job: &ClaimedJob) {
        let inner = &self.inner;
        let lease = inner.config.job_lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            match inner
                .queue
                .renew(&job.id, &inner.worker, job.attempt, lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                // Kept running: if the database stays away past the lease,
                // another instance may take the job, and this outcome is
                // then dropped.
                Err(e) => warn!(job = %job.id, error = %e, "cannot renew a job's lease"),
            }
        }
    }

    /// The computation itself, within its deadline.
    async fn work(&self, job: &ClaimedJob, deadline: SystemTime, timeout: Duration) -> FinalState {
        let inner = &self.inner;
        if inner.config.hold_claimed_jobs {
            // Test only (docs/DESIGN.md, "Cluster backend"): hold the
            // claim without computing, so a test can kill this instance
            // mid-job.
            info!(job = %job.id, "holding the job (test knob)");
            std::future::pending::<()>().await;
        }
        let remaining = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let compute = async {
            let task = decode_task(&job.payload)?;
            // Waits for room in this instance's budget (the deadline still
            // runs).
            let mut wait = Duration::from_millis(50);
            let reservation = loop {
                match inner.jobs.reserve(numbers_bytes(task.len())) {
                    Ok(r) => break r,
                    Err(e) if numbers_bytes(task.len()) > inner.config.memory_budget => {
                        return Err(e);
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(1));
                    }
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            let _stop = StopOnDrop(stop.clone());
            work::on_rayon(move || {
                let result = match task {
                    Task::Add(n) => arith::add_cancellable(&n, || stop.load(Ordering::Relaxed))
                        .map(|sum| v1::job_result::Value::Sum(sum.into())),
                    Task::Sort(mut n, order) => {
                        work::par_sort(&mut n, order);
                        Ok(v1::job_result::Value::Sorted(wire_numbers(&n)))
                    }
                };
                drop(reservation);
                result
            })
            .await?
            .map_err(ComputeError::from)
        };
        tokio::select! {
            () = tokio::time::sleep(remaining) => {
                ended(v1::JobState::DeadlineExceeded, &ComputeError::DeadlineExceeded(timeout))
            }
            r = compute => match r {
                Ok(value) => succeeded(&v1::JobResult { value: Some(value) }),
                Err(e) => ended(v1::JobState::Failed, &e),
            },
        }
    }

    /// Follows the queue's notifications: wakes the dispatcher, stops jobs
    /// cancelled elsewhere, pushes ended jobs to this instance's
    /// subscribers. Listens again (backing off) when the session ends.
    async fn listen(self, first: Notifications) {
        let inner = &self.inner;
        let mut pause = Duration::from_millis(100);
        let mut first = Some(first);
        loop {
            let mut session = match first.take() {
                Some(s) => s,
                None => {
                    let session = tokio::select! {
                        () = inner.shutdown.cancelled() => return,
                        s = inner.queue.db().listen_to(JOBS_CHANNEL) => s,
                    };
                    match session {
                        Ok(s) => {
                            // Events may have been missed meanwhile.
                            inner.jobs.end_all_subscribers();
                            inner.wake.notify_one();
                            s
                        }
                        Err(e) => {
                            warn!(error = %e, "compute jobs: cannot listen to the job queue; retrying");
                            tokio::select! {
                                () = inner.shutdown.cancelled() => return,
                                () = tokio::time::sleep(pause) => {}
                            }
                            pause = (pause * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    }
                }
            };
            pause = Duration::from_millis(100);
            loop {
                let payload = tokio::select! {
                    () = inner.shutdown.cancelled() => return,
                    p = session.payloads.recv() => p,
                };
                let Some(payload) = payload else {
                    warn!("compute jobs: the listening session ended; listening again");
                    break;
                };
                if payload == "queued" {
                    inner.wake.notify_one();
                } else if let Some(id) = payload.strip_prefix("done ") {
                    self.ended(id).await;
                }
            }
        }
    }

    /// Job `id` ended (on any instance): stop it here if it runs here;
    /// push it to this instance's subscribers.
    async fn ended(&self, id: &str) {
        let inner = &self.inner;
        if let Some(cancel) = self.running().get(id) {
            cancel.cancel();
        }
        if inner.jobs.subscriber_count() == 0 {
            return;
        }
        let row = match inner.queue.job(id, None, Some(INLINE_RESULT_BYTES)).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                // Its subscribers ask GetJob when their stream is reopened.
                warn!(job = %id, error = %e, "cannot read an ended job: ending the callback streams");
                inner.jobs.end_all_subscribers();
                return;
            }
        };
        match to_wire(&row) {
            Ok(job) => inner.jobs.publish(&row.owner, &row.client_id, job),
            Err(e) => warn!(job = %id, error = %e, "cannot show an ended job"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distribusync_core::compute::Order;

    #[test]
    fn a_task_comes_back_from_its_payload() {
        let task = Task::Sort(Numbers::Ints(vec![3, -1, 2]), Order::Descending);
        match decode_task(&encode_task(&task)).unwrap() {
            Task::Sort(Numbers::Ints(v), Order::Descending) => assert_eq!(v, vec![3, -1, 2]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_task(b"\xff\xff"),
            Err(ComputeError::JobStore(_))
        ));
    }
}
