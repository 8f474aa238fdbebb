//! [`JobQueue`]: asynchronous jobs that any instance may run (issue 12),
//! with [`LocalJobQueue`] (in memory, one process) and [`PgJobQueue`]
//! (PostgreSQL, shared by every instance on the database).
//!
//! Invariants both keep (one suite, `crates/server/tests/backends.rs`):
//! - a job is claimed by one worker at a time, for a lease; a claim whose
//!   lease ran out (its worker died or stalled) may be taken by another
//!   worker, as a new attempt;
//! - only the current attempt's claim can finish a job: a worker that lost
//!   its claim is told so ([`JobQueue::finish`] answers false) and its
//!   outcome is dropped, so a job completes once;
//! - a job is tried at most `max_attempts` times; past that it fails,
//!   saying how often it was tried.
//!
//! In PostgreSQL a claim is `SELECT … FOR UPDATE SKIP LOCKED` inside the
//! claiming statement: claimers on any instance never wait on each other
//! and never take the same job.
//!
//! The Compute service uses [`PgJobQueue`] on the cluster backend
//! (`compute/cluster.rs`), with the columns and calls it adds for the
//! service ([`JobSpec`], [`PgJobQueue::submit_job`], …): a job's final
//! state as the service shows it, and `NOTIFY distribusync_jobs` sent by
//! the statement that changes a job (so on commit) to wake the workers of
//! every instance (`queued`) and to tell every instance a job ended
//! (`done ID`, then read by id). On the local backend the service keeps
//! its own in-memory registry (`compute/jobs.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::info;

use super::backend::BoxFuture;
use super::postgres::PgMetadata;
use crate::error::{Result, ServiceError};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued = 0,
    Running = 1,
    Done = 2,
    Failed = 3,
}

/// A job handed to a worker by [`JobQueue::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub id: String,
    pub owner: String,
    pub payload: Vec<u8>,
    /// 1 for the first try; passed back to [`JobQueue::finish`].
    pub attempt: u32,
}

/// How a worker's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Done(Vec<u8>),
    Failed(String),
}

/// A job as the queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub owner: String,
    pub state: JobState,
    pub attempts: u32,
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
}

/// Jobs that any worker may run.
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    /// Queues a job; its id.
    ///
    /// # Errors
    /// The backend's.
    fn submit(&self, owner: String, payload: Vec<u8>) -> BoxFuture<'_, Result<String>>;

    /// Claims the oldest runnable job (queued, or running with its lease
    /// run out) for `worker` until `lease` has passed; `None` when there is
    /// none. A job out of attempts is failed, not claimed.
    ///
    /// # Errors
    /// The backend's.
    fn claim(&self, worker: String, lease: Duration) -> BoxFuture<'_, Result<Option<ClaimedJob>>>;

    /// Records the outcome of `worker`'s `attempt` at job `id`; false (and
    /// nothing recorded) when that claim is no longer the job's current one.
    ///
    /// # Errors
    /// The backend's.
    fn finish(
        &self,
        id: String,
        worker: String,
        attempt: u32,
        outcome: JobOutcome,
    ) -> BoxFuture<'_, Result<bool>>;

    /// The job `id`, if the queue holds it.
    ///
    /// # Errors
    /// The backend's.
    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>>>;
}

fn gave_up(attempts: u32) -> String {
    format!("gave up after {attempts} attempts: each worker stopped before finishing")
}

/// The job queue of one process.
#[derive(Debug, Clone)]
pub struct LocalJobQueue {
    // A std Mutex: held for short bookkeeping, never across an await.
    state: Arc<Mutex<LocalJobs>>,
    max_attempts: u32,
}

#[derive(Debug, Default)]
struct LocalJobs {
    jobs: HashMap<String, LocalJob>,
    /// Ids in submission order.
    order: Vec<String>,
}

#[derive(Debug)]
struct LocalJob {
    record: JobRecord,
    payload: Vec<u8>,
    worker: Option<String>,
    lease_until: Option<Instant>,
}

impl LocalJobQueue {
    pub fn new(max_attempts: u32) -> Self {
        Self {
            state: Arc::default(),
            max_attempts: max_attempts.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalJobs> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl JobQueue for LocalJobQueue {
    fn submit(&self, owner: String, payload: Vec<u8>) -> BoxFuture<'_, Result<String>> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut st = self.lock();
        st.order.push(id.clone());
        st.jobs.insert(
            id.clone(),
            LocalJob {
                record: JobRecord {
                    id: id.clone(),
                    owner,
                    state: JobState::Queued,
                    attempts: 0,
                    result: None,
                    error: None,
                },
                payload,
                worker: None,
                lease_until: None,
            },
        );
        Box::pin(async move { Ok(id) })
    }

    fn claim(&self, worker: String, lease: Duration) -> BoxFuture<'_, Result<Option<ClaimedJob>>> {
        let now = Instant::now();
        let mut st = self.lock();
        let LocalJobs { jobs, order } = &mut *st;
        let mut claimed = None;
        for id in order.iter() {
            let Some(job) = jobs.get_mut(id) else {
                continue;
            };
            let expired =
                job.record.state == JobState::Running && job.lease_until.is_some_and(|t| t <= now);
            if job.record.state != JobState::Queued && !expired {
                continue;
            }
            if job.record.attempts >= self.max_attempts {
                job.record.state = JobState::Failed;
                job.record.error = Some(gave_up(job.record.attempts));
                job.worker = None;
                continue;
            }
            job.record.state = JobState::Running;
            job.record.attempts += 1;
            job.worker = Some(worker.clone());
            job.lease_until = Some(now + lease);
            claimed = Some(ClaimedJob {
                id: id.clone(),
                owner: job.record.owner.clone(),
                payload: job.payload.clone(),
                attempt: job.record.attempts,
            });
            break;
        }
        // Finished jobs leave the order (their records stay for `get`).
        order.retain(|id| {
            jobs.get(id)
                .is_some_and(|j| matches!(j.record.state, JobState::Queued | JobState::Running))
        });
        Box::pin(async move { Ok(claimed) })
    }

    fn finish(
        &self,
        id: String,
        worker: String,
        attempt: u32,
        outcome: JobOutcome,
    ) -> BoxFuture<'_, Result<bool>> {
        let mut st = self.lock();
        let current = st.jobs.get_mut(&id).filter(|j| {
            j.record.state == JobState::Running
                && j.record.attempts == attempt
                && j.worker.as_deref() == Some(worker.as_str())
        });
        let done = match current {
            Some(job) => {
                match outcome {
                    JobOutcome::Done(result) => {
                        job.record.state = JobState::Done;
                        job.record.result = Some(result);
                    }
                    JobOutcome::Failed(error) => {
                        job.record.state = JobState::Failed;
                        job.record.error = Some(error);
                    }
                }
                job.worker = None;
                job.lease_until = None;
                true
            }
            None => false,
        };
        Box::pin(async move { Ok(done) })
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>>> {
        let record = self.lock().jobs.get(&id).map(|j| j.record.clone());
        Box::pin(async move { Ok(record) })
    }
}

const JOBS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    payload BYTEA NOT NULL,
    state SMALLINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until TIMESTAMPTZ,
    result BYTEA,
    error TEXT,
    submitted BIGSERIAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs (submitted) WHERE state IN (0, 1);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS client_id TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS kind SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS submitted_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp();
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS deadline TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS finished_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS outcome SMALLINT;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS error_code INTEGER;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS evicted BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS jobs_kept_results ON jobs (kind, finished_at DESC, id DESC)
    WHERE state = 2 AND result IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, submitted_at DESC);
"#;

/// Taken (transaction-scoped) while kept results are trimmed to their
/// bound, so that instances finishing jobs together trim one after the
/// other (each seeing what the other kept) and never lock the same rows
/// in two orders.
const KEPT_RESULTS_LOCK: i64 = 0x6469_7374_6b65_7074; // "distkept"

/// The channel job changes are announced on (see the module docs).
pub const JOBS_CHANNEL: &str = "distribusync_jobs";

/// Taken (transaction-scoped) while the jobs table is made, so that
/// instances starting together do not race on it.
const JOBS_SCHEMA_LOCK: i64 = 0x6469_7374_6a6f_6273; // "distjobs"

/// A job as the Compute service submits it to [`PgJobQueue::submit_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub id: String,
    pub owner: String,
    pub client_id: String,
    /// The service's job kind (its wire number).
    pub kind: i16,
    /// How many numbers the job was given.
    pub count: u64,
    pub deadline: SystemTime,
    pub payload: Vec<u8>,
}

/// Why [`PgJobQueue::submit_job`] did not queue a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitRefused {
    /// `capacity` jobs are queued or running already.
    Full,
    /// A job with that id exists.
    Exists,
}

/// How a job ended, as the Compute service records it with
/// [`PgJobQueue::finish_job`] or [`PgJobQueue::cancel_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalState {
    /// The service's final state (its wire number).
    pub outcome: i16,
    /// Done (the result kept) or failed, for the queue.
    pub done: bool,
    pub result: Option<Vec<u8>>,
    /// The gRPC code the job failed with (0 when it did not).
    pub error_code: i32,
    pub error: Option<String>,
}

/// The bound on stored results [`PgJobQueue::finish_job`] keeps: the
/// results of jobs of `kind` (the service's wire number) take at most
/// `bytes` in all, over every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptResults {
    pub kind: i16,
    pub bytes: u64,
}

/// A job as the Compute service shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub owner: String,
    pub client_id: String,
    pub kind: i16,
    pub count: u64,
    pub state: JobState,
    /// The service's final state, once recorded by it (`None`: the queue
    /// failed the job itself, out of attempts).
    pub outcome: Option<i16>,
    pub attempts: u32,
    pub submitted: SystemTime,
    pub deadline: Option<SystemTime>,
    pub finished: Option<SystemTime>,
    /// Read only when asked for.
    pub result: Option<Vec<u8>>,
    pub error_code: Option<i32>,
    pub error: Option<String>,
    /// Its result was dropped for the bound on kept results (see
    /// [`PgJobQueue::finish_job`]).
    pub evicted: bool,
}

const ROW_COLS: &str = "id, owner, client_id, kind, count, state, outcome, attempts, \
                        submitted_at, deadline, finished_at, error_code, error, evicted";

fn row_from(row: &tokio_postgres::Row, with_result: bool) -> Result<JobRow> {
    Ok(JobRow {
        id: row.try_get(0)?,
        owner: row.try_get(1)?,
        client_id: row.try_get(2)?,
        kind: row.try_get(3)?,
        count: u64::try_from(row.try_get::<_, i64>(4)?).unwrap_or(0),
        state: state_from(row.try_get(5)?)?,
        outcome: row.try_get(6)?,
        attempts: u32::try_from(row.try_get::<_, i32>(7)?).unwrap_or(0),
        submitted: row.try_get(8)?,
        deadline: row.try_get(9)?,
        finished: row.try_get(10)?,
        error_code: row.try_get(11)?,
        error: row.try_get(12)?,
        evicted: row.try_get(13)?,
        result: if with_result { row.try_get(14)? } else { None },
    })
}

/// The job queue in PostgreSQL, on the database of a [`PgMetadata`]; a
/// cheap clone.
#[derive(Debug, Clone)]
pub struct PgJobQueue {
    db: PgMetadata,
    max_attempts: u32,
}

fn state_from(v: i16) -> Result<JobState> {
    Ok(match v {
        0 => JobState::Queued,
        1 => JobState::Running,
        2 => JobState::Done,
        3 => JobState::Failed,
        other => {
            return Err(ServiceError::Database(format!(
                "metadata database: damaged row: job state {other}"
            )));
        }
    })
}

impl PgJobQueue {
    /// The queue on `db`'s database (its table made if missing); a job is
    /// tried at most `max_attempts` times.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn open(db: PgMetadata, max_attempts: u32) -> Result<Self> {
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&JOBS_SCHEMA_LOCK])
            .await?;
        tx.batch_execute(JOBS_SCHEMA).await?;
        tx.commit().await?;
        Ok(Self {
            db,
            max_attempts: max_attempts.max(1),
        })
    }
}

impl JobQueue for PgJobQueue {
    fn submit(&self, owner: String, payload: Vec<u8>) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let client = self.db.client().await?;
            client
                .execute(
                    "INSERT INTO jobs (id, owner, payload, state) VALUES ($1, $2, $3, 0)",
                    &[&id, &owner, &payload],
                )
                .await?;
            Ok(id)
        })
    }

    fn claim(&self, worker: String, lease: Duration) -> BoxFuture<'_, Result<Option<ClaimedJob>>> {
        Box::pin(async move {
            let client = self.db.client().await?;
            let max = i32::try_from(self.max_attempts).unwrap_or(i32::MAX);
            // Out of attempts with the last lease run out: failed, not retried.
            client
                .execute(
                    "WITH gave_up AS ( \
                         UPDATE jobs SET state = 3, worker = NULL, lease_until = NULL, \
                         finished_at = clock_timestamp(), \
                         error = 'gave up after ' || attempts || ' attempts: each worker stopped before finishing' \
                         WHERE state = 1 AND lease_until <= clock_timestamp() AND attempts >= $1 \
                         RETURNING id) \
                     SELECT pg_notify($2, 'done ' || id) FROM gave_up",
                    &[&max, &JOBS_CHANNEL],
                )
                .await?;
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let row = client
                .query_opt(
                    "WITH next AS ( \
                         SELECT id FROM jobs \
                         WHERE (state = 0 OR (state = 1 AND lease_until <= clock_timestamp())) \
                           AND attempts < $3 \
                         ORDER BY submitted LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     UPDATE jobs j SET state = 1, attempts = j.attempts + 1, worker = $1, \
                         lease_until = clock_timestamp() + $2 * interval '1 millisecond' \
                     FROM next WHERE j.id = next.id \
                     RETURNING j.id, j.owner, j.payload, j.attempts",
                    &[&worker, &(lease_ms as f64), &max],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(ClaimedJob {
                id: row.try_get(0)?,
                owner: row.try_get(1)?,
                payload: row.try_get(2)?,
                attempt: u32::try_from(row.try_get::<_, i32>(3)?).unwrap_or(0),
            }))
        })
    }

    fn finish(
        &self,
        id: String,
        worker: String,
        attempt: u32,
        outcome: JobOutcome,
    ) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let client = self.db.client().await?;
            let (state, result, error) = match outcome {
                JobOutcome::Done(r) => (JobState::Done as i16, Some(r), None),
                JobOutcome::Failed(e) => (JobState::Failed as i16, None, Some(e)),
            };
            let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
            let n = client
                .execute(
                    "UPDATE jobs SET state = $4, result = $5, error = $6, worker = NULL, lease_until = NULL, \
                     finished_at = clock_timestamp() \
                     WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 1",
                    &[&id, &worker, &attempt, &state, &result, &error],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>>> {
        Box::pin(async move {
            let client = self.db.client().await?;
            let Some(row) = client
                .query_opt(
                    "SELECT id, owner, state, attempts, result, error FROM jobs WHERE id = $1",
                    &[&id],
                )
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(JobRecord {
                id: row.try_get(0)?,
                owner: row.try_get(1)?,
                state: state_from(row.try_get(2)?)?,
                attempts: u32::try_from(row.try_get::<_, i32>(3)?).unwrap_or(0),
                result: row.try_get(4)?,
                error: row.try_get(5)?,
            }))
        })
    }
}

impl PgJobQueue {
    /// The database the queue is on.
    pub fn db(&self) -> &PgMetadata {
        &self.db
    }

    /// How often a job is tried at most.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Queues `spec` unless `capacity` jobs are queued or running already
    /// (counted over every instance) or its id is taken; wakes the workers
    /// of every instance. Its submission time.
    ///
    /// # Errors
    /// The database's.
    pub async fn submit_job(
        &self,
        spec: &JobSpec,
        capacity: usize,
    ) -> Result<std::result::Result<SystemTime, SubmitRefused>> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let active: i64 = tx
            .query_one("SELECT count(*) FROM jobs WHERE state IN (0, 1)", &[])
            .await?
            .try_get(0)?;
        if usize::try_from(active).unwrap_or(usize::MAX) >= capacity {
            return Ok(Err(SubmitRefused::Full));
        }
        let count = i64::try_from(spec.count).unwrap_or(i64::MAX);
        let row = tx
            .query_opt(
                "INSERT INTO jobs (id, owner, payload, state, client_id, kind, count, deadline) \
                 VALUES ($1, $2, $3, 0, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING \
                 RETURNING submitted_at",
                &[
                    &spec.id,
                    &spec.owner,
                    &spec.payload,
                    &spec.client_id,
                    &spec.kind,
                    &count,
                    &spec.deadline,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Err(SubmitRefused::Exists));
        };
        tx.execute("SELECT pg_notify($1, 'queued')", &[&JOBS_CHANNEL])
            .await?;
        tx.commit().await?;
        Ok(Ok(row.try_get(0)?))
    }

    /// Extends `worker`'s claim on `attempt` of job `id` to `lease` from
    /// now; false when the claim is no longer the job's current one (the
    /// job was cancelled, or its lease ran out and another worker took it).
    ///
    /// # Errors
    /// The database's.
    pub async fn renew(
        &self,
        id: &str,
        worker: &str,
        attempt: u32,
        lease: Duration,
    ) -> Result<bool> {
        let client = self.db.client().await?;
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX) as f64;
        let n = client
            .execute(
                "UPDATE jobs SET lease_until = clock_timestamp() + $4 * interval '1 millisecond' \
                 WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 1",
                &[&id, &worker, &attempt, &lease_ms],
            )
            .await?;
        Ok(n == 1)
    }

    /// Gives `worker`'s claim on `attempt` of job `id` back, without
    /// counting the attempt (the worker did not run it: it is shutting
    /// down, or had no memory for it), and wakes the workers.
    ///
    /// # Errors
    /// The database's.
    pub async fn release(&self, id: &str, worker: &str, attempt: u32) -> Result<()> {
        let client = self.db.client().await?;
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        client
            .execute(
                "WITH released AS ( \
                     UPDATE jobs SET state = 0, attempts = attempts - 1, worker = NULL, lease_until = NULL \
                     WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 1 RETURNING id) \
                 SELECT pg_notify($4, 'queued') FROM released",
                &[&id, &worker, &attempt, &JOBS_CHANNEL],
            )
            .await?;
        Ok(())
    }

    /// Records how `worker`'s `attempt` at job `id` ended and tells every
    /// instance (`done ID`); false (nothing recorded) when that claim is no
    /// longer the job's current one.
    ///
    /// Kept results are bounded (`kept`): in the same transaction, the
    /// stored results of finished jobs of `kept.kind` beyond `kept.bytes`
    /// in all (the newest kept first) are dropped and their jobs marked
    /// `evicted`.
    ///
    /// # Errors
    /// The database's.
    pub async fn finish_job(
        &self,
        id: &str,
        worker: &str,
        attempt: u32,
        end: &FinalState,
        kept: KeptResults,
    ) -> Result<bool> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let state = if end.done {
            JobState::Done as i16
        } else {
            JobState::Failed as i16
        };
        let rows = tx
            .query(
                "WITH ended AS ( \
                     UPDATE jobs SET state = $4, outcome = $5, result = $6, error_code = $7, error = $8, \
                     worker = NULL, lease_until = NULL, finished_at = clock_timestamp() \
                     WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 1 RETURNING id) \
                 SELECT pg_notify($9, 'done ' || id) FROM ended",
                &[
                    &id,
                    &worker,
                    &attempt,
                    &state,
                    &end.outcome,
                    &end.result,
                    &end.error_code,
                    &end.error,
                    &JOBS_CHANNEL,
                ],
            )
            .await?;
        if rows.len() != 1 {
            return Ok(false);
        }
        if end.result.is_some() {
            let keep = i64::try_from(kept.bytes).unwrap_or(i64::MAX);
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEPT_RESULTS_LOCK])
                .await?;
            let evicted = tx
                .query(
                    "UPDATE jobs SET result = NULL, evicted = true WHERE id IN ( \
                         SELECT id FROM ( \
                             SELECT id, sum(octet_length(result)) OVER \
                                 (ORDER BY finished_at DESC, id DESC) AS newer_and_own \
                             FROM jobs WHERE state = 2 AND kind = $2 AND result IS NOT NULL \
                         ) kept WHERE newer_and_own > $1) \
                     RETURNING id",
                    &[&keep, &kept.kind],
                )
                .await?;
            for row in &evicted {
                let id: String = row.try_get(0)?;
                info!(job = %id, "result evicted: the kept results passed their bound");
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ends `owner`'s job `id` as `end` says if it is queued or running
    /// (its worker, on any instance, loses its claim and is told); the
    /// job as it is after.
    ///
    /// # Errors
    /// The database's.
    pub async fn cancel_job(
        &self,
        id: &str,
        owner: &str,
        end: &FinalState,
    ) -> Result<Option<(bool, JobRow)>> {
        let client = self.db.client().await?;
        let cancelled = client
            .query_opt(
                &format!(
                    "WITH ended AS ( \
                         UPDATE jobs SET state = 3, outcome = $3, error_code = $4, error = $5, \
                         worker = NULL, lease_until = NULL, finished_at = clock_timestamp() \
                         WHERE id = $1 AND owner = $2 AND state IN (0, 1) RETURNING {ROW_COLS}), \
                     told AS (SELECT pg_notify($6, 'done ' || id) FROM ended) \
                     SELECT {ROW_COLS} FROM ended, told"
                ),
                &[
                    &id,
                    &owner,
                    &end.outcome,
                    &end.error_code,
                    &end.error,
                    &JOBS_CHANNEL,
                ],
            )
            .await?;
        match cancelled {
            Some(row) => Ok(Some((true, row_from(&row, false)?))),
            None => Ok(self.job(id, Some(owner), None).await?.map(|r| (false, r))),
        }
    }

    /// Job `id` (only if `owner`'s, when given), with its result when it
    /// is at most `result_up_to` bytes.
    ///
    /// # Errors
    /// The database's.
    pub async fn job(
        &self,
        id: &str,
        owner: Option<&str>,
        result_up_to: Option<u64>,
    ) -> Result<Option<JobRow>> {
        let client = self.db.client().await?;
        let row = match result_up_to {
            Some(max) => {
                let max = i64::try_from(max).unwrap_or(i64::MAX);
                client
                    .query_opt(
                        &format!(
                            "SELECT {ROW_COLS}, \
                             CASE WHEN octet_length(result) > $3::BIGINT THEN NULL ELSE result END \
                             FROM jobs WHERE id = $1 AND ($2::TEXT IS NULL OR owner = $2)"
                        ),
                        &[&id, &owner, &max],
                    )
                    .await?
            }
            None => {
                client
                    .query_opt(
                        &format!(
                            "SELECT {ROW_COLS} FROM jobs WHERE id = $1 AND ($2::TEXT IS NULL OR owner = $2)"
                        ),
                        &[&id, &owner],
                    )
                    .await?
            }
        };
        row.map(|r| row_from(&r, result_up_to.is_some()))
            .transpose()
    }

    /// Up to `limit` of `owner`'s jobs (of device `client_id`, or of all
    /// its devices when empty), newest first, without results.
    ///
    /// # Errors
    /// The database's.
    pub async fn list(&self, owner: &str, client_id: &str, limit: u32) -> Result<Vec<JobRow>> {
        let client = self.db.client().await?;
        let limit = i64::from(limit);
        let rows = client
            .query(
                &format!(
                    "SELECT {ROW_COLS} FROM jobs WHERE owner = $1 AND ($2 = '' OR client_id = $2) \
                     ORDER BY submitted_at DESC, id LIMIT $3"
                ),
                &[&owner, &client_id, &limit],
            )
            .await?;
        rows.iter().map(|r| row_from(r, false)).collect()
    }

    /// How many jobs wait in the queue (over every instance).
    ///
    /// # Errors
    /// The database's.
    pub async fn queued(&self) -> Result<u64> {
        let client = self.db.client().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM jobs WHERE state = 0", &[])
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Removes the jobs that finished more than `ttl` ago; how many.
    ///
    /// # Errors
    /// The database's.
    pub async fn forget_finished(&self, ttl: Duration) -> Result<u64> {
        let client = self.db.client().await?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX) as f64;
        Ok(client
            .execute(
                "DELETE FROM jobs WHERE state IN (2, 3) \
                 AND finished_at < clock_timestamp() - $1 * interval '1 millisecond'",
                &[&ttl_ms],
            )
            .await?)
    }
}
