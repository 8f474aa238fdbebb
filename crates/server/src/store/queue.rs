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
//! Not yet wired to the Compute service, which keeps its own in-memory
//! registry (`compute/jobs.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
"#;

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
        let client = db.client().await?;
        client.batch_execute(JOBS_SCHEMA).await?;
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
                    "UPDATE jobs SET state = 3, worker = NULL, lease_until = NULL, \
                     error = 'gave up after ' || attempts || ' attempts: each worker stopped before finishing' \
                     WHERE state = 1 AND lease_until <= clock_timestamp() AND attempts >= $1",
                    &[&max],
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
                    "UPDATE jobs SET state = $4, result = $5, error = $6, worker = NULL, lease_until = NULL \
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
