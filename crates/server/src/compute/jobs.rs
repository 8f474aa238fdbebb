//! Asynchronous jobs: the registry of jobs by id, the bounded queue, the
//! workers, deadlines, cancellation, result retention and the callback
//! subscribers results are pushed to.
//!
//! Every job runs in its own task (tracked for shutdown) that waits for a
//! worker slot, then runs the computation on the rayon pool, racing its
//! cancellation token and its deadline. The registry lives behind a std
//! `Mutex`: no `.await` happens while it is held.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use distribusync_core::compute::{self as arith, Number, Numbers, Order};
use distribusync_proto::{timestamp, v1};
use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFutureOwned},
    task::TaskTracker,
};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{ComputeConfig, ComputeError, work};

/// Events a callback subscriber may have waiting before it counts as stuck;
/// a stuck subscriber's stream is ended and the client library resubscribes
/// and fetches what it missed with GetJob.
const SUBSCRIBER_BUFFER: usize = 1024;
/// Longest accepted client id, in bytes.
const MAX_CLIENT_ID_BYTES: usize = 128;
/// Most jobs one ListJobs answer carries.
const LIST_LIMIT: usize = 1000;

/// What a job computes.
#[derive(Debug)]
pub(crate) enum Task {
    Add(Numbers),
    Sort(Numbers, Order),
}

impl Task {
    fn kind(&self) -> v1::JobKind {
        match self {
            Task::Add(_) => v1::JobKind::Add,
            Task::Sort(..) => v1::JobKind::Sort,
        }
    }
    fn len(&self) -> usize {
        match self {
            Task::Add(n) | Task::Sort(n, _) => n.len(),
        }
    }
}

/// A job's result once it succeeded.
#[derive(Debug)]
enum Output {
    Sum(Number),
    Sorted(Numbers),
}

#[derive(Debug)]
struct JobEntry {
    client_id: String,
    kind: v1::JobKind,
    count: usize,
    state: v1::JobState,
    submitted: SystemTime,
    deadline_wall: SystemTime,
    finished: Option<SystemTime>,
    output: Option<Output>,
    error: Option<ComputeError>,
    cancel: CancellationToken,
}

impl JobEntry {
    fn is_final(&self) -> bool {
        !matches!(self.state, v1::JobState::Queued | v1::JobState::Running)
    }

    fn to_wire(&self, id: &Uuid, with_result: bool) -> v1::Job {
        let result = match (&self.output, with_result) {
            (Some(Output::Sum(n)), true) => Some(v1::JobResult {
                value: Some(v1::job_result::Value::Sum((*n).into())),
            }),
            (Some(Output::Sorted(n)), true) => Some(v1::JobResult {
                value: Some(v1::job_result::Value::Sorted(n.clone().into())),
            }),
            _ => None,
        };
        v1::Job {
            job_id: id.to_string(),
            client_id: self.client_id.clone(),
            kind: self.kind as i32,
            state: self.state as i32,
            count: self.count as u64,
            submitted: Some(timestamp(self.submitted)),
            deadline: Some(timestamp(self.deadline_wall)),
            finished: self.finished.map(timestamp),
            result,
            error_code: self.error.as_ref().map_or(0, |e| e.code() as i32),
            error: self
                .error
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
        }
    }
}

/// Words for a final state, as error messages use them.
fn state_word(s: v1::JobState) -> &'static str {
    match s {
        v1::JobState::Succeeded => "succeeded",
        v1::JobState::Failed => "failed",
        v1::JobState::Cancelled => "cancelled",
        v1::JobState::DeadlineExceeded => "deadline exceeded",
        v1::JobState::Queued => "queued",
        v1::JobState::Running => "running",
        v1::JobState::Unspecified => "unknown",
    }
}

type Subscriber = (u64, mpsc::Sender<v1::JobEvent>);

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<Uuid, JobEntry>,
    /// Queued plus running jobs: bounded by `job_queue_capacity`.
    active: usize,
    /// Finished jobs in the order they finished, for eviction after the TTL.
    finished: VecDeque<(Instant, Uuid)>,
    subscribers: HashMap<String, Vec<Subscriber>>,
    next_subscriber: u64,
}

impl State {
    fn evict_expired(&mut self, ttl: Duration, now: Instant) {
        while let Some(&(at, id)) = self.finished.front() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.finished.pop_front();
            self.jobs.remove(&id);
            debug!(job = %id, "evicted");
        }
    }

    /// Pushes the event for a finished job to its client's subscribers,
    /// dropping those that left or fell too far behind.
    fn notify(&mut self, id: &Uuid) {
        let Some(job) = self.jobs.get(id) else { return };
        let Some(subs) = self.subscribers.get_mut(&job.client_id) else {
            return;
        };
        let event = v1::JobEvent {
            job: Some(job.to_wire(id, true)),
        };
        subs.retain(|(sub, tx)| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(
                    subscriber = sub,
                    "callback subscriber fell behind: ending its stream"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if subs.is_empty() {
            let client = job.client_id.clone();
            self.subscribers.remove(&client);
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: ComputeConfig,
    state: Mutex<State>,
    workers: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    sweeper_started: AtomicBool,
}

/// The job registry: a cheap `Clone` handle.
#[derive(Debug, Clone)]
pub(crate) struct Jobs {
    shared: Arc<Shared>,
}

/// How a job ended, as its task saw it.
enum Outcome {
    Done(Result<Output, ComputeError>),
    Cancelled,
    DeadlineExceeded,
}

impl Jobs {
    pub(crate) fn new(config: ComputeConfig, shutdown: CancellationToken) -> Jobs {
        Jobs {
            shared: Arc::new(Shared {
                workers: Arc::new(Semaphore::new(config.workers.max(1))),
                config,
                state: Mutex::new(State::default()),
                shutdown,
                tasks: TaskTracker::new(),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the registry half
        // updated in a way later calls would trip over, so poisoning is
        // ignored rather than turned into a crash of every later request.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks the registry and evicts what outlived the result TTL.
    fn lock_fresh(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        st.evict_expired(self.shared.config.result_ttl, Instant::now());
        st
    }

    /// Waits until every job task has ended (after shutdown).
    pub(crate) async fn drained(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Accepts a job: validates it, reserves a queue slot and starts its task.
    pub(crate) fn submit(
        &self,
        client_id: String,
        job_id: Option<Uuid>,
        deadline: Option<Duration>,
        task: Task,
    ) -> Result<(Uuid, SystemTime), ComputeError> {
        let cfg = &self.shared.config;
        if self.shared.shutdown.is_cancelled() {
            return Err(ComputeError::ShuttingDown);
        }
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(ComputeError::InvalidArgument(format!(
                "client_id must be 1 to {MAX_CLIENT_ID_BYTES} bytes"
            )));
        }
        if task.len() > cfg.max_numbers {
            return Err(ComputeError::TooMany {
                count: task.len() as u64,
                limit: cfg.max_numbers,
            });
        }
        match &task {
            Task::Add(n) => {
                if n.len() < 2 {
                    return Err(arith::ArithError::TooFew(n.len()).into());
                }
                n.validate()?;
            }
            Task::Sort(n, _) => n.validate()?,
        }
        let timeout = match deadline {
            None | Some(Duration::ZERO) => cfg.default_deadline,
            Some(d) => d.min(cfg.max_deadline),
        };
        self.start_sweeper();
        let id = job_id.unwrap_or_else(Uuid::new_v4);
        let now = Instant::now();
        let submitted = SystemTime::now();
        let deadline_wall = submitted + timeout;
        let cancel = self.shared.shutdown.child_token();
        {
            let mut st = self.lock_fresh();
            if st.jobs.contains_key(&id) {
                return Err(ComputeError::AlreadyExists(id.to_string()));
            }
            if st.active >= cfg.job_queue_capacity {
                return Err(ComputeError::QueueFull {
                    capacity: cfg.job_queue_capacity,
                });
            }
            st.active += 1;
            st.jobs.insert(
                id,
                JobEntry {
                    client_id,
                    kind: task.kind(),
                    count: task.len(),
                    state: v1::JobState::Queued,
                    submitted,
                    deadline_wall,
                    finished: None,
                    output: None,
                    error: None,
                    cancel: cancel.clone(),
                },
            );
        }
        debug!(job = %id, kind = ?task.kind(), count = task.len(), ?timeout, "job accepted");
        let jobs = self.clone();
        self.shared.tasks.spawn(async move {
            let outcome = jobs.run(id, task, cancel, now + timeout).await;
            jobs.finish(id, outcome, timeout);
        });
        Ok((id, deadline_wall))
    }

    async fn run(
        &self,
        id: Uuid,
        task: Task,
        cancel: CancellationToken,
        deadline: Instant,
    ) -> Outcome {
        // Set when this future is dropped (cancel or deadline won the race),
        // so an add in progress stops at its next check.
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = StopOnDrop(stop.clone());
        let work = async {
            let permit = self
                .shared
                .workers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ComputeError::ShuttingDown)?;
            {
                let mut st = self.lock();
                match st.jobs.get_mut(&id) {
                    Some(j) if !j.is_final() => j.state = v1::JobState::Running,
                    _ => return Err(ComputeError::Cancelled),
                }
            }
            // The permit moves into the computation, so a worker slot stays
            // taken until the CPU work really ends, even after a cancel.
            work::on_rayon(move || {
                let _permit = permit;
                match task {
                    Task::Add(n) => {
                        arith::add_cancellable(&n, || stop.load(Ordering::Relaxed)).map(Output::Sum)
                    }
                    Task::Sort(mut n, order) => {
                        // A sort is one unit of work that cannot stop midway
                        // (at most about a second for ten million numbers);
                        // a cancelled sort's result is discarded.
                        if stop.load(Ordering::Relaxed) {
                            return Err(arith::ArithError::Cancelled);
                        }
                        work::par_sort(&mut n, order);
                        Ok(Output::Sorted(n))
                    }
                }
            })
            .await?
            .map_err(ComputeError::from)
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Outcome::Cancelled,
            () = tokio::time::sleep_until(deadline.into()) => Outcome::DeadlineExceeded,
            r = work => Outcome::Done(r),
        }
    }

    /// Records how a job ended (unless CancelJob already did), frees its
    /// queue slot and pushes the event.
    fn finish(&self, id: Uuid, outcome: Outcome, timeout: Duration) {
        let shutting_down = self.shared.shutdown.is_cancelled();
        let mut st = self.lock();
        let Some(job) = st.jobs.get_mut(&id) else {
            return;
        };
        if job.is_final() {
            return;
        }
        let (state, output, error) = match outcome {
            Outcome::Done(Ok(o)) => (v1::JobState::Succeeded, Some(o), None),
            Outcome::Done(Err(ComputeError::Arith(arith::ArithError::Cancelled)))
            | Outcome::Done(Err(ComputeError::Cancelled))
            | Outcome::Cancelled => {
                let e = if shutting_down {
                    ComputeError::ShuttingDown
                } else {
                    ComputeError::Cancelled
                };
                (v1::JobState::Cancelled, None, Some(e))
            }
            Outcome::Done(Err(e)) => (v1::JobState::Failed, None, Some(e)),
            Outcome::DeadlineExceeded => (
                v1::JobState::DeadlineExceeded,
                None,
                Some(ComputeError::DeadlineExceeded(timeout)),
            ),
        };
        debug!(job = %id, state = state_word(state), "job finished");
        job.state = state;
        job.output = output;
        job.error = error;
        job.finished = Some(SystemTime::now());
        st.active -= 1;
        st.finished.push_back((Instant::now(), id));
        st.notify(&id);
        st.evict_expired(self.shared.config.result_ttl, Instant::now());
    }

    pub(crate) fn get(&self, id: &str) -> Result<v1::Job, ComputeError> {
        let uuid = parse_id(id)?;
        let st = self.lock_fresh();
        st.jobs
            .get(&uuid)
            .map(|j| j.to_wire(&uuid, true))
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))
    }

    pub(crate) fn cancel(&self, id: &str) -> Result<v1::Job, ComputeError> {
        let uuid = parse_id(id)?;
        let mut st = self.lock_fresh();
        let job = st
            .jobs
            .get_mut(&uuid)
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))?;
        if job.is_final() {
            return Err(ComputeError::AlreadyFinished {
                id: id.to_owned(),
                state: state_word(job.state),
            });
        }
        job.cancel.cancel();
        job.state = v1::JobState::Cancelled;
        job.error = Some(ComputeError::Cancelled);
        job.finished = Some(SystemTime::now());
        let wire = job.to_wire(&uuid, false);
        st.active -= 1;
        st.finished.push_back((Instant::now(), uuid));
        st.notify(&uuid);
        info!(job = %uuid, "job cancelled");
        Ok(wire)
    }

    pub(crate) fn list(&self, client_id: &str) -> Vec<v1::Job> {
        let st = self.lock_fresh();
        let mut jobs: Vec<(&Uuid, &JobEntry)> = st
            .jobs
            .iter()
            .filter(|(_, j)| client_id.is_empty() || j.client_id == client_id)
            .collect();
        jobs.sort_by(|a, b| b.1.submitted.cmp(&a.1.submitted).then(a.0.cmp(b.0)));
        jobs.into_iter()
            .take(LIST_LIMIT)
            .map(|(id, j)| j.to_wire(id, false))
            .collect()
    }

    /// Opens a callback subscription for `client_id`. The returned stream
    /// ends at shutdown, and unsubscribes when dropped (the client left).
    pub(crate) fn subscribe(&self, client_id: String) -> Result<CallbackStream, ComputeError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(ComputeError::ShuttingDown);
        }
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(ComputeError::InvalidArgument(format!(
                "client_id must be 1 to {MAX_CLIENT_ID_BYTES} bytes"
            )));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let sub = {
            let mut st = self.lock();
            st.next_subscriber += 1;
            let sub = st.next_subscriber;
            st.subscribers
                .entry(client_id.clone())
                .or_default()
                .push((sub, tx));
            sub
        };
        debug!(client = %client_id, subscriber = sub, "callbacks subscribed");
        Ok(CallbackStream {
            rx,
            shutdown: Box::pin(self.shared.shutdown.clone().cancelled_owned()),
            _guard: Unsubscribe {
                shared: Arc::downgrade(&self.shared),
                client_id,
                sub,
            },
        })
    }

    /// Number of open callback subscriptions (for tests and metrics).
    pub(crate) fn subscriber_count(&self) -> usize {
        self.lock().subscribers.values().map(Vec::len).sum()
    }

    /// Starts, once, the task that evicts expired results even when no
    /// request comes in to do it.
    fn start_sweeper(&self) {
        if self.shared.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let shutdown = self.shared.shutdown.clone();
        let period = (self.shared.config.result_ttl / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(shared) = weak.upgrade() else { return };
                drop(Jobs { shared }.lock_fresh());
            }
        });
    }
}

fn parse_id(id: &str) -> Result<Uuid, ComputeError> {
    Uuid::parse_str(id).map_err(|_| ComputeError::NotFound(id.to_owned()))
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Unsubscribe {
    shared: Weak<Shared>,
    client_id: String,
    sub: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut st = shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subs) = st.subscribers.get_mut(&self.client_id) {
            subs.retain(|(s, _)| *s != self.sub);
            if subs.is_empty() {
                st.subscribers.remove(&self.client_id);
            }
        }
        debug!(client = %self.client_id, subscriber = self.sub, "callbacks unsubscribed");
    }
}

/// The server side of a Callbacks stream.
pub struct CallbackStream {
    rx: mpsc::Receiver<v1::JobEvent>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: Unsubscribe,
}

impl std::fmt::Debug for CallbackStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackStream")
            .field("client_id", &self._guard.client_id)
            .finish_non_exhaustive()
    }
}

impl Stream for CallbackStream {
    type Item = Result<v1::JobEvent, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|e| e.map(Ok))
    }
}
