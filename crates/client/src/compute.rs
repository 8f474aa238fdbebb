//! The Compute client: [`ComputeClient`] for synchronous add and sort, and
//! asynchronous jobs whose results arrive as [`JobHandle`]s that can be
//! awaited or given a callback.
//!
//! One callback stream per client (opened with the first async job, reopened
//! after it breaks) carries every result of this client id; results are
//! dispatched to their handles by job id, in whatever order jobs finish.
//! Job ids are chosen here (UUIDs) and registered before the job is
//! submitted, so a result that beats the acknowledgment is not lost. When the
//! stream has to be reopened, results that finished meanwhile are fetched
//! with GetJob. A big sorted result does not travel inside the event or the
//! GetJob answer (`result_in_stream`): it is fetched with GetJobResult, a
//! chunk at a time, before the handle sees it.

use std::{
    collections::HashMap,
    future::IntoFuture,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, SystemTime},
};

use distribusync_core::compute::{CHUNK_NUMBERS, Number, Numbers, Order};
use distribusync_proto::{
    compute::duration,
    system_time,
    v1::{self, compute_client::ComputeClient as Grpc},
};
use futures::StreamExt;
use tokio::{sync::oneshot, task::AbortHandle};
use tonic::{Code, Status, transport::Channel};
use tracing::{debug, warn};
use uuid::Uuid;

/// How many times a broken callback stream is reopened (with backoff)
/// before the handles waiting on it fail.
const REOPEN_ATTEMPTS: u32 = 8;
/// Largest message the client accepts (sorted results of async jobs come in
/// one message; the server enforces its own, smaller limit).
const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Why a Compute call failed. Messages name the problem.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ComputeError {
    #[error("cannot reach server at {addr} (is \"distribusync serve\" running?)")]
    Unreachable { addr: String },
    #[error(
        "the server at {addr} does not host the Compute service (started with `serve --services files`?); point --compute-server at one that does"
    )]
    NotHosted { addr: String },
    #[error("invalid server address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The server refused the request; `message` says why.
    #[error("{message}")]
    Rejected { code: Code, message: String },
    #[error("job {id} failed: {message}")]
    JobFailed {
        id: String,
        code: Code,
        message: String,
    },
    #[error("job {id} was cancelled{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    JobCancelled { id: String, message: String },
    #[error("job {id}: {message}")]
    JobDeadlineExceeded { id: String, message: String },
    #[error(
        "lost the callback stream to {addr} and could not reopen it; fetch the result of job {id} later with `distribusync job {id}`"
    )]
    CallbacksLost { addr: String, id: String },
    #[error("the server sent a malformed answer: {0}")]
    Protocol(String),
    /// TLS or connection set-up refused (see [`crate::ConnectError`]).
    #[error(transparent)]
    Connect(crate::ConnectError),
}

impl ComputeError {
    /// The gRPC code of a refusal or failed job, if that is what this is.
    pub fn code(&self) -> Option<Code> {
        match self {
            ComputeError::Rejected { code, .. } | ComputeError::JobFailed { code, .. } => {
                Some(*code)
            }
            ComputeError::JobCancelled { .. } => Some(Code::Cancelled),
            ComputeError::JobDeadlineExceeded { .. } => Some(Code::DeadlineExceeded),
            _ => None,
        }
    }

    fn from_client(e: crate::ClientError) -> Self {
        match e {
            crate::ClientError::BadAddress { addr, why } => {
                ComputeError::BadAddress { addr, reason: why }
            }
            crate::ClientError::Connect(c) => ComputeError::Connect(c),
            crate::ClientError::Unreachable { addr }
            | crate::ClientError::ConnectionLost { addr } => ComputeError::Unreachable { addr },
            crate::ClientError::Unavailable { message, .. } => ComputeError::Rejected {
                code: Code::Unavailable,
                message,
            },
            other => ComputeError::Protocol(other.to_string()),
        }
    }

    fn from_status(s: Status, addr: &str) -> Self {
        if let Some(c) = crate::connect::find_connect_error(&s) {
            return Self::from_client(c.into());
        }
        // Transport failures (connection refused, reset) carry a source;
        // an UNAVAILABLE the server itself sent (shutting down) does not.
        if s.code() == Code::Unavailable && std::error::Error::source(&s).is_some() {
            return ComputeError::Unreachable {
                addr: addr.to_owned(),
            };
        }
        if s.code() == Code::Unimplemented {
            return ComputeError::NotHosted {
                addr: addr.to_owned(),
            };
        }
        ComputeError::Rejected {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// What a job computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Add,
    Sort,
    Unknown,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    DeadlineExceeded,
    Unknown,
}

impl JobState {
    /// Whether the job has ended (and will not change again).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Unknown
        )
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobKind::Add => "add",
            JobKind::Sort => "sort",
            JobKind::Unknown => "unknown",
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::DeadlineExceeded => "deadline-exceeded",
            JobState::Unknown => "unknown",
        })
    }
}

/// The result of a job that succeeded.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutput {
    Sum(Number),
    Sorted(Numbers),
}

/// A job as the server reports it.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: String,
    pub client_id: String,
    pub kind: JobKind,
    pub state: JobState,
    /// How many numbers the job was given.
    pub count: u64,
    pub submitted: Option<SystemTime>,
    pub deadline: Option<SystemTime>,
    pub finished: Option<SystemTime>,
    /// Set when the job succeeded (not in [`ComputeClient::list_jobs`]).
    pub output: Option<JobOutput>,
    /// Set when the job failed, was cancelled or ran out of time.
    pub error: Option<(Code, String)>,
}

impl JobInfo {
    fn from_wire(j: v1::Job) -> Result<JobInfo, ComputeError> {
        let kind = match j.kind() {
            v1::JobKind::Add => JobKind::Add,
            v1::JobKind::Sort => JobKind::Sort,
            v1::JobKind::Unspecified => JobKind::Unknown,
        };
        let state = match j.state() {
            v1::JobState::Queued => JobState::Queued,
            v1::JobState::Running => JobState::Running,
            v1::JobState::Succeeded => JobState::Succeeded,
            v1::JobState::Failed => JobState::Failed,
            v1::JobState::Cancelled => JobState::Cancelled,
            v1::JobState::DeadlineExceeded => JobState::DeadlineExceeded,
            v1::JobState::Unspecified => JobState::Unknown,
        };
        let output = match j.result.and_then(|r| r.value) {
            Some(v1::job_result::Value::Sum(n)) => Some(JobOutput::Sum(
                n.try_into()
                    .map_err(|e| ComputeError::Protocol(format!("{e}")))?,
            )),
            Some(v1::job_result::Value::Sorted(n)) => Some(JobOutput::Sorted(
                n.try_into()
                    .map_err(|e| ComputeError::Protocol(format!("{e}")))?,
            )),
            None => None,
        };
        let error = (!j.error.is_empty()).then(|| (Code::from(j.error_code), j.error.clone()));
        Ok(JobInfo {
            id: j.job_id,
            client_id: j.client_id,
            kind,
            state,
            count: j.count,
            submitted: j.submitted.as_ref().and_then(system_time),
            deadline: j.deadline.as_ref().and_then(system_time),
            finished: j.finished.as_ref().and_then(system_time),
            output,
            error,
        })
    }

    /// The job's result once it is final: its output, or why there is none.
    pub fn outcome(self) -> Option<Result<JobOutput, ComputeError>> {
        let (code, message) = self.error.unwrap_or((Code::Unknown, String::new()));
        let id = self.id;
        Some(match self.state {
            JobState::Queued | JobState::Running | JobState::Unknown => return None,
            JobState::Succeeded => self.output.ok_or_else(|| {
                ComputeError::Protocol(format!("job {id} succeeded without a result"))
            }),
            JobState::Failed => Err(ComputeError::JobFailed { id, code, message }),
            JobState::Cancelled => Err(ComputeError::JobCancelled { id, message }),
            JobState::DeadlineExceeded => Err(ComputeError::JobDeadlineExceeded { id, message }),
        })
    }
}

type Waiter = oneshot::Sender<Result<JobOutput, ComputeError>>;

#[derive(Debug, Default)]
struct Dispatch {
    /// Handles waiting for a result, by job id, and whether the server
    /// acknowledged the job yet (only those are looked up after a reopen).
    waiters: HashMap<String, (Waiter, bool)>,
    /// The task reading the callback stream, while it runs.
    reader: Option<AbortHandle>,
}

#[derive(Debug)]
struct Inner {
    rpc: Grpc<crate::connect::AuthChannel>,
    addr: String,
    client_id: String,
    /// Only ever locked briefly, never across an `.await`.
    dispatch: Mutex<Dispatch>,
    /// Serialises opening the callback stream.
    opening: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reader) = self.dispatch.get_mut().ok().and_then(|d| d.reader.take()) {
            reader.abort();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Dispatch> {
        self.dispatch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands a final job to its waiting handle, if any.
    fn deliver(&self, job: JobInfo) {
        let id = job.id.clone();
        let Some(outcome) = job.outcome() else { return };
        if let Some((waiter, _)) = self.lock().waiters.remove(&id) {
            // The handle may have been dropped: nobody wants the result.
            let _ = waiter.send(outcome);
        }
    }
}

/// A client of the Compute service. Cheap to clone; clones share one
/// connection, one client id and one callback stream.
#[derive(Debug, Clone)]
pub struct ComputeClient {
    inner: Arc<Inner>,
}

impl ComputeClient {
    /// Connects now to the compute server of `config` (a
    /// [`crate::ConnectionConfig`] or just an address: `http://host:port`,
    /// `https://…` or `host:port`) with a fresh client id.
    ///
    /// # Errors
    /// [`ComputeError::BadAddress`], [`ComputeError::Unreachable`],
    /// [`ComputeError::Connect`].
    pub async fn connect(config: impl Into<crate::ConnectionConfig>) -> Result<Self, ComputeError> {
        let config = config.into().for_compute();
        let channel = config.connect().await.map_err(ComputeError::from_client)?;
        Ok(Self::with_channel(
            channel,
            &config.endpoint,
            Uuid::new_v4().to_string(),
        ))
    }

    /// A client that connects on first use and reconnects after failures.
    ///
    /// # Errors
    /// [`ComputeError::BadAddress`] or a TLS set-up that cannot be used.
    pub fn lazy(
        config: impl Into<crate::ConnectionConfig>,
        client_id: String,
    ) -> Result<Self, ComputeError> {
        let config = config.into().for_compute();
        let channel = config.connect_lazy().map_err(ComputeError::from_client)?;
        Ok(Self::with_channel(channel, &config.endpoint, client_id))
    }

    /// A client over an existing channel, sending no token. `client_id`
    /// names this client's jobs (for ListJobs and callbacks); reuse one to
    /// see jobs of an earlier process. `addr` is only used in messages.
    pub fn new(channel: Channel, addr: &str, client_id: String) -> Self {
        Self::with_channel(
            crate::connect::AuthChannel::new(channel, crate::connect::Bearer::default()),
            addr,
            client_id,
        )
    }

    /// A client over a channel from [`crate::ConnectionConfig`] (token
    /// attached).
    pub fn with_channel(
        channel: crate::connect::AuthChannel,
        addr: &str,
        client_id: String,
    ) -> Self {
        let rpc = Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        ComputeClient {
            inner: Arc::new(Inner {
                rpc,
                addr: addr.to_owned(),
                client_id,
                dispatch: Mutex::new(Dispatch::default()),
                opening: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The same connection with another client id (a new callback stream).
    pub fn with_client_id(&self, client_id: String) -> Self {
        ComputeClient {
            inner: Arc::new(Inner {
                rpc: self.inner.rpc.clone(),
                addr: self.inner.addr.clone(),
                client_id,
                dispatch: Mutex::new(Dispatch::default()),
                opening: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// This client's id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    fn status(&self, s: Status) -> ComputeError {
        ComputeError::from_status(s, &self.inner.addr)
    }

    /// The sum of two or more numbers (all integers: exact, overflow is an
    /// error; any decimal: f64).
    ///
    /// # Errors
    /// [`ComputeError::Rejected`] with INVALID_ARGUMENT (fewer than two
    /// numbers, NaN/infinity), OUT_OF_RANGE (overflow), RESOURCE_EXHAUSTED
    /// (over the server's limit); transport errors.
    pub async fn add(&self, numbers: impl Into<Numbers>) -> Result<Number, ComputeError> {
        let req = v1::AddRequest {
            numbers: Some(numbers.into().into()),
        };
        let resp = self
            .inner
            .rpc
            .clone()
            .add(req)
            .await
            .map_err(|s| self.status(s))?;
        resp.into_inner()
            .sum
            .ok_or_else(|| ComputeError::Protocol("add answered without a sum".into()))?
            .try_into()
            .map_err(|e| ComputeError::Protocol(format!("{e}")))
    }

    /// Sorts numbers on the server, streaming them both ways in chunks, so
    /// any count up to the server's limit works.
    ///
    /// # Errors
    /// As [`ComputeClient::add`].
    pub async fn sort(
        &self,
        numbers: impl Into<Numbers>,
        order: Order,
    ) -> Result<Numbers, ComputeError> {
        let numbers = Arc::new(numbers.into());
        let total = numbers.len();
        let chunks = total.div_ceil(CHUNK_NUMBERS).max(1);
        let input = {
            let numbers = numbers.clone();
            futures::stream::iter(0..chunks).map(move |i| {
                let range = i * CHUNK_NUMBERS..((i + 1) * CHUNK_NUMBERS).min(total);
                let chunk = match &*numbers {
                    Numbers::Ints(v) => v1::Numbers::from(&v[range]),
                    Numbers::Floats(v) => v1::Numbers::from(&v[range]),
                };
                v1::SortRequest {
                    order: if i == 0 {
                        v1::SortOrder::from(order) as i32
                    } else {
                        0
                    },
                    numbers: Some(chunk),
                    total: if i == 0 { total as u64 } else { 0 },
                }
            })
        };
        let mut out = self
            .inner
            .rpc
            .clone()
            .sort(input)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        drop(numbers);
        let mut sorted: Option<Numbers> = None;
        while let Some(msg) = out.message().await.map_err(|s| self.status(s))? {
            let chunk: Numbers = msg
                .numbers
                .ok_or_else(|| ComputeError::Protocol("sort chunk without numbers".into()))?
                .try_into()
                .map_err(|e| ComputeError::Protocol(format!("{e}")))?;
            let acc = sorted.get_or_insert_with(|| match &chunk {
                Numbers::Ints(_) => Numbers::Ints(Vec::with_capacity(total)),
                Numbers::Floats(_) => Numbers::Floats(Vec::with_capacity(total)),
            });
            acc.extend(chunk)
                .map_err(|_| ComputeError::Protocol("sort chunks of mixed kinds".into()))?;
        }
        Ok(sorted.unwrap_or_default())
    }

    /// Submits an add job; see [`ComputeClient::submit`].
    ///
    /// # Errors
    /// As [`ComputeClient::submit`].
    pub async fn add_async(&self, numbers: impl Into<Numbers>) -> Result<JobHandle, ComputeError> {
        self.submit(JobRequest::add(numbers)).await
    }

    /// Submits a sort job; see [`ComputeClient::submit`].
    ///
    /// # Errors
    /// As [`ComputeClient::submit`].
    pub async fn sort_async(
        &self,
        numbers: impl Into<Numbers>,
        order: Order,
    ) -> Result<JobHandle, ComputeError> {
        self.submit(JobRequest::sort(numbers, order)).await
    }

    /// Submits an add job and runs `callback` with its result when it
    /// arrives, while the caller goes on. Returns the job id.
    ///
    /// # Errors
    /// As [`ComputeClient::submit`] (the callback then never runs).
    pub async fn add_async_with<F>(
        &self,
        numbers: impl Into<Numbers>,
        callback: F,
    ) -> Result<String, ComputeError>
    where
        F: FnOnce(Result<JobOutput, ComputeError>) + Send + 'static,
    {
        let handle = self.add_async(numbers).await?;
        let id = handle.id().to_owned();
        handle.on_result(callback);
        Ok(id)
    }

    /// Submits a sort job and runs `callback` with its result when it
    /// arrives. Returns the job id.
    ///
    /// # Errors
    /// As [`ComputeClient::submit`].
    pub async fn sort_async_with<F>(
        &self,
        numbers: impl Into<Numbers>,
        order: Order,
        callback: F,
    ) -> Result<String, ComputeError>
    where
        F: FnOnce(Result<JobOutput, ComputeError>) + Send + 'static,
    {
        let handle = self.sort_async(numbers, order).await?;
        let id = handle.id().to_owned();
        handle.on_result(callback);
        Ok(id)
    }

    /// Submits a job. Returns once the server acknowledged it; the result
    /// comes through the returned handle (pushed over this client's callback
    /// stream, opened now if it is not open yet).
    ///
    /// # Errors
    /// [`ComputeError::Rejected`]: RESOURCE_EXHAUSTED (queue full, over the
    /// number limit), INVALID_ARGUMENT; transport errors.
    pub async fn submit(&self, job: JobRequest) -> Result<JobHandle, ComputeError> {
        self.ensure_callbacks().await?;
        let id = Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.inner.lock().waiters.insert(id.clone(), (tx, false));
        let req = v1::SubmitRequest {
            client_id: self.inner.client_id.clone(),
            job_id: id.clone(),
            deadline: job.deadline.map(duration),
            task: Some(job.task),
        };
        if let Err(s) = self.inner.rpc.clone().submit(req).await {
            self.inner.lock().waiters.remove(&id);
            return Err(self.status(s));
        }
        if let Some((_, acked)) = self.inner.lock().waiters.get_mut(&id) {
            *acked = true;
        }
        // The stream may have broken between the check above and the
        // registration; reopening it fetches what was missed.
        self.ensure_callbacks().await?;
        Ok(JobHandle {
            id,
            rx,
            client: self.clone(),
        })
    }

    /// Submits a job whose result nobody waits for here (`--detach`): it
    /// can be fetched later with [`ComputeClient::get_job`]. No callback
    /// stream is opened. Returns the job id.
    ///
    /// # Errors
    /// As [`ComputeClient::submit`].
    pub async fn submit_detached(&self, job: JobRequest) -> Result<String, ComputeError> {
        let req = v1::SubmitRequest {
            client_id: self.inner.client_id.clone(),
            job_id: String::new(),
            deadline: job.deadline.map(duration),
            task: Some(job.task),
        };
        let resp = self
            .inner
            .rpc
            .clone()
            .submit(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(resp.into_inner().job_id)
    }

    /// Status, and result once done, of any job (also one submitted by
    /// another client or process).
    ///
    /// # Errors
    /// [`ComputeError::Rejected`] with NOT_FOUND for an unknown or evicted id.
    pub async fn get_job(&self, id: &str) -> Result<JobInfo, ComputeError> {
        let req = v1::GetJobRequest {
            job_id: id.to_owned(),
        };
        let job = self
            .inner
            .rpc
            .clone()
            .get_job(req)
            .await
            .map_err(|s| self.status(s))?;
        complete(&self.inner, job.into_inner()).await
    }

    /// Cancels a queued or running job.
    ///
    /// # Errors
    /// NOT_FOUND (unknown id), FAILED_PRECONDITION (already finished; the
    /// message says how).
    pub async fn cancel_job(&self, id: &str) -> Result<JobInfo, ComputeError> {
        let req = v1::CancelJobRequest {
            job_id: id.to_owned(),
        };
        let job = self
            .inner
            .rpc
            .clone()
            .cancel_job(req)
            .await
            .map_err(|s| self.status(s))?;
        JobInfo::from_wire(job.into_inner())
    }

    /// This client id's retained jobs, newest first, without results.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>, ComputeError> {
        let req = v1::ListJobsRequest {
            client_id: self.inner.client_id.clone(),
        };
        let resp = self
            .inner
            .rpc
            .clone()
            .list_jobs(req)
            .await
            .map_err(|s| self.status(s))?;
        resp.into_inner()
            .jobs
            .into_iter()
            .map(JobInfo::from_wire)
            .collect()
    }

    /// Opens the callback stream unless it is open. After opening, results
    /// of jobs already waited for are fetched, in case they finished while
    /// no stream was open.
    async fn ensure_callbacks(&self) -> Result<(), ComputeError> {
        if self.inner.lock().reader.is_some() {
            return Ok(());
        }
        let _opening = self.inner.opening.lock().await;
        if self.inner.lock().reader.is_some() {
            return Ok(());
        }
        let stream = open_callbacks(&self.inner).await?;
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(read_callbacks(weak, stream));
        self.inner.lock().reader = Some(task.abort_handle());
        reconcile(&self.inner).await;
        Ok(())
    }
}

async fn open_callbacks(inner: &Inner) -> Result<tonic::Streaming<v1::JobEvent>, ComputeError> {
    let req = v1::CallbacksRequest {
        client_id: inner.client_id.clone(),
    };
    inner
        .rpc
        .clone()
        .callbacks(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| ComputeError::from_status(s, &inner.addr))
}

/// The job with its result: fetched with GetJobResult when the server did
/// not carry it inline.
async fn complete(inner: &Inner, job: v1::Job) -> Result<JobInfo, ComputeError> {
    let streamed = job.result_in_stream;
    let mut info = JobInfo::from_wire(job)?;
    if streamed {
        info.output = Some(JobOutput::Sorted(fetch_result(inner, &info.id).await?));
    }
    Ok(info)
}

/// A sorted result streamed by GetJobResult.
async fn fetch_result(inner: &Inner, id: &str) -> Result<Numbers, ComputeError> {
    let req = v1::GetJobRequest {
        job_id: id.to_owned(),
    };
    let status = |s| ComputeError::from_status(s, &inner.addr);
    let mut stream = inner
        .rpc
        .clone()
        .get_job_result(req)
        .await
        .map_err(status)?
        .into_inner();
    let mut sorted = Numbers::default();
    while let Some(chunk) = stream.message().await.map_err(status)? {
        let chunk: Numbers = chunk
            .numbers
            .ok_or_else(|| ComputeError::Protocol("a result chunk without numbers".into()))?
            .try_into()
            .map_err(|e| ComputeError::Protocol(format!("{e}")))?;
        sorted
            .extend(chunk)
            .map_err(|_| ComputeError::Protocol("a result of mixed kinds".into()))?;
    }
    Ok(sorted)
}

/// Fetches the state of every job a handle waits for and delivers those
/// that finished (or are gone) meanwhile.
async fn reconcile(inner: &Inner) {
    let ids: Vec<String> = inner
        .lock()
        .waiters
        .iter()
        .filter(|(_, (_, acked))| *acked)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        let req = v1::GetJobRequest { job_id: id.clone() };
        match inner.rpc.clone().get_job(req).await {
            Ok(job) => match complete(inner, job.into_inner()).await {
                Ok(info) => inner.deliver(info),
                // A transient error: the stream will bring it, or the next
                // reconcile.
                Err(ComputeError::Unreachable { .. }) => {}
                Err(e) => fail(inner, &id, e),
            },
            Err(s) if s.code() == Code::NotFound => {
                fail(inner, &id, ComputeError::from_status(s, &inner.addr));
            }
            // A transient error: the stream will bring it, or the next
            // reconcile.
            Err(_) => {}
        }
    }
}

fn fail(inner: &Inner, id: &str, e: ComputeError) {
    if let Some((w, _)) = inner.lock().waiters.remove(id) {
        let _ = w.send(Err(e));
    }
}

/// Reads the callback stream and dispatches results; reopens the stream
/// with backoff while handles wait, and gives up on them after
/// [`REOPEN_ATTEMPTS`]. Holds only a weak reference, so dropping the last
/// client clone ends it.
async fn read_callbacks(inner: Weak<Inner>, mut stream: tonic::Streaming<v1::JobEvent>) {
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                match event.job {
                    // The result is fetched on its own task, so a big one
                    // does not hold up the events behind it.
                    Some(job) if job.result_in_stream => {
                        let weak = inner.clone();
                        tokio::spawn(async move {
                            let Some(inner) = weak.upgrade() else { return };
                            let id = job.job_id.clone();
                            match complete(&inner, job).await {
                                Ok(info) => inner.deliver(info),
                                Err(e) => fail(&inner, &id, e),
                            }
                        });
                    }
                    Some(job) => match JobInfo::from_wire(job) {
                        Ok(job) => strong.deliver(job),
                        Err(e) => warn!(error = %e, "malformed job event"),
                    },
                    None => warn!("job event without a job"),
                }
                continue;
            }
            Ok(None) => debug!("callback stream ended"),
            Err(s) => debug!(status = %s, "callback stream broke"),
        }
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        stream = loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.lock().waiters.is_empty() {
                // Nobody waits: reopen lazily with the next job.
                strong.lock().reader = None;
                return;
            }
            match open_callbacks(&strong).await {
                Ok(s) => {
                    reconcile(&strong).await;
                    break s;
                }
                Err(e) if attempt + 1 >= REOPEN_ATTEMPTS => {
                    warn!(error = %e, "giving up on the callback stream");
                    let mut d = strong.lock();
                    d.reader = None;
                    for (id, (w, _)) in d.waiters.drain() {
                        let _ = w.send(Err(ComputeError::CallbacksLost {
                            addr: strong.addr.clone(),
                            id,
                        }));
                    }
                    return;
                }
                Err(e) => {
                    debug!(error = %e, attempt, "reopening the callback stream");
                    attempt += 1;
                }
            }
            drop(strong);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
    }
}

/// A job to submit: what to compute and, optionally, its deadline.
#[derive(Debug, Clone)]
pub struct JobRequest {
    task: v1::submit_request::Task,
    deadline: Option<Duration>,
}

impl JobRequest {
    /// An add job.
    pub fn add(numbers: impl Into<Numbers>) -> Self {
        JobRequest {
            task: v1::submit_request::Task::Add(v1::AddTask {
                numbers: Some(numbers.into().into()),
            }),
            deadline: None,
        }
    }

    /// A sort job.
    pub fn sort(numbers: impl Into<Numbers>, order: Order) -> Self {
        JobRequest {
            task: v1::submit_request::Task::Sort(v1::SortTask {
                numbers: Some(numbers.into().into()),
                order: v1::SortOrder::from(order) as i32,
            }),
            deadline: None,
        }
    }

    /// The time the job has from acceptance to finish (the server caps it
    /// at its maximum; none: the server's default).
    #[must_use]
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
}

/// A submitted job. Await it (or [`JobHandle::result`]) for its result, or
/// hand it a callback with [`JobHandle::on_result`].
#[derive(Debug)]
pub struct JobHandle {
    id: String,
    rx: oneshot::Receiver<Result<JobOutput, ComputeError>>,
    client: ComputeClient,
}

impl JobHandle {
    /// The job id the server acknowledged.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Asks the server to cancel the job; the handle then resolves to
    /// [`ComputeError::JobCancelled`].
    ///
    /// # Errors
    /// As [`ComputeClient::cancel_job`].
    pub async fn cancel(&self) -> Result<JobInfo, ComputeError> {
        self.client.cancel_job(&self.id).await
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// [`ComputeError::JobFailed`], [`ComputeError::JobCancelled`],
    /// [`ComputeError::JobDeadlineExceeded`], [`ComputeError::CallbacksLost`].
    pub async fn result(self) -> Result<JobOutput, ComputeError> {
        let lost = ComputeError::CallbacksLost {
            addr: self.client.inner.addr.clone(),
            id: self.id.clone(),
        };
        let r = self.rx.await.unwrap_or(Err(lost));
        drop(self.client);
        r
    }

    /// Runs `callback` with the result when it arrives, on a spawned task,
    /// while the caller goes on.
    pub fn on_result<F>(self, callback: F) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce(Result<JobOutput, ComputeError>) + Send + 'static,
    {
        tokio::spawn(async move { callback(self.result().await) })
    }
}

impl IntoFuture for JobHandle {
    type Output = Result<JobOutput, ComputeError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.result())
    }
}
