//! Asynchronous jobs: the registry of jobs by id, the bounded queue, the
//! workers, deadlines, cancellation, result retention and the callback
//! subscribers results are pushed to.
//!
//! Every job runs in its own task (tracked for shutdown) that waits for a
//! worker slot, then runs the computation on the rayon pool, racing its
//! cancellation token and its deadline. The registry lives behind a std
//! `Mutex`: no `.await` happens while it is held.
//!
//! Memory (see [`super::budget`]): a job reserves its input's bytes when it
//! is accepted; a sort's result is its input sorted in place, so the
//! reservation moves into the kept result ([`KeptNumbers`], behind an `Arc`
//! that every reader shares: a result is never copied per subscriber).
//! When new work does not fit the budget, kept results are evicted oldest
//! first to make room (their jobs then answer NOT_FOUND, saying so). Events
//! carry a sorted result only up to [`INLINE_RESULT_MAX`] numbers; bigger
//! ones are streamed by GetJobResult a chunk at a time as the client reads,
//! so a client that does not read holds at most a chunk in the transport.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFutureOwned},
    task::TaskTracker,
};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{
    ComputeConfig, ComputeError,
    budget::{MemoryBudget, Reservation},
    work,
};

/// Events a callback subscriber may have waiting before it counts as stuck;
/// a stuck subscriber's stream is ended and the client library resubscribes
/// and fetches what it missed with GetJob.
const SUBSCRIBER_BUFFER: usize = 1024;
/// Longest accepted client id, in bytes.
const MAX_CLIENT_ID_BYTES: usize = 128;
/// Most jobs one ListJobs answer carries.
const LIST_LIMIT: usize = 1000;
/// Largest sorted result carried inside a JobEvent or a GetJob answer
/// (64 KiB); bigger ones are streamed by GetJobResult.
pub(crate) const INLINE_RESULT_MAX: usize = 8192;
/// Bytes of the budget an open Callbacks stream holds: what the transport
/// may buffer for a subscriber that does not read (hyper's 400 KiB send
/// buffer plus one event, at most [`INLINE_RESULT_MAX`] numbers).
pub(crate) const SUBSCRIBER_RESERVE: u64 = 512 * 1024;
/// Bytes of the budget a Sort's answer stream holds besides its numbers:
/// the merge's buffers, four chunks queued ahead, one being encoded and
/// the transport's send buffer.
pub(crate) const SORT_STREAM_RESERVE: u64 = 6 * 1024 * 1024;
/// Bytes of the budget a GetJobResult stream holds: one encoded chunk and
/// the transport's send buffer (the numbers are the kept result's).
pub(crate) const RESULT_STREAM_RESERVE: u64 = 2 * 1024 * 1024;
/// Bytes a list of `n` numbers holds.
pub(crate) fn numbers_bytes(n: usize) -> u64 {
    (n as u64).saturating_mul(8)
}

/// What a job computes.
#[derive(Debug)]
pub(crate) enum Task {
    Add(Numbers),
    Sort(Numbers, Order),
}

impl Task {
    pub(crate) fn kind(&self) -> v1::JobKind {
        match self {
            Task::Add(_) => v1::JobKind::Add,
            Task::Sort(..) => v1::JobKind::Sort,
        }
    }
    pub(crate) fn len(&self) -> usize {
        match self {
            Task::Add(n) | Task::Sort(n, _) => n.len(),
        }
    }
}

/// A job's result once it succeeded.
#[derive(Debug)]
enum Output {
    Sum(Number),
    Sorted(Arc<KeptNumbers>),
}

/// A sorted result and the share of the memory budget it holds, together:
/// the reservation ends when the last reader of the numbers lets go.
#[derive(Debug)]
pub(crate) struct KeptNumbers {
    numbers: Numbers,
    _reservation: Reservation,
}

impl KeptNumbers {
    /// `numbers`, holding `reservation` (their bytes) while kept.
    pub(crate) fn new(numbers: Numbers, reservation: Reservation) -> Self {
        Self {
            numbers,
            _reservation: reservation,
        }
    }

    /// The numbers as a wire result (a copy: small results only).
    fn inline(&self) -> v1::JobResult {
        v1::JobResult {
            value: Some(v1::job_result::Value::Sorted(match &self.numbers {
                Numbers::Ints(v) => v1::Numbers::from(&v[..]),
                Numbers::Floats(v) => v1::Numbers::from(&v[..]),
            })),
        }
    }
}

/// A finished job's event as subscriber queues hold it: one per job, shared
/// by every queue, pointing at the kept result rather than holding a copy
/// (so what a queue keeps alive is counted in the budget, once). Each
/// subscriber's message is built from it as its transport takes it.
#[derive(Debug)]
struct Event {
    /// The job without an inline sorted result.
    job: v1::Job,
    /// A sorted result small enough to go inline, filled in when sent.
    inline: Option<Arc<KeptNumbers>>,
}

impl AsRef<Numbers> for KeptNumbers {
    fn as_ref(&self) -> &Numbers {
        &self.numbers
    }
}

/// Whose jobs and callbacks these are: an identity's device (an
/// identity's devices tell themselves apart by client id).
fn owner_key(owner: &str, client_id: &str) -> String {
    format!("{owner}\n{client_id}")
}

#[derive(Debug)]
struct JobEntry {
    /// The identity that submitted the job ([`crate::Identity::owner`]):
    /// nobody else sees it.
    owner: Arc<str>,
    client_id: String,
    kind: v1::JobKind,
    count: usize,
    state: v1::JobState,
    submitted: SystemTime,
    deadline_wall: SystemTime,
    finished: Option<SystemTime>,
    output: Option<Output>,
    /// The result was evicted to make room (see [`Jobs::reserve`]).
    evicted: bool,
    error: Option<ComputeError>,
    cancel: CancellationToken,
}

impl JobEntry {
    fn is_final(&self) -> bool {
        !matches!(self.state, v1::JobState::Queued | v1::JobState::Running)
    }

    fn to_wire(&self, id: &Uuid, with_result: bool) -> v1::Job {
        let mut result_in_stream = false;
        let result = match (&self.output, with_result) {
            (Some(Output::Sum(n)), true) => Some(v1::JobResult {
                value: Some(v1::job_result::Value::Sum((*n).into())),
            }),
            (Some(Output::Sorted(n)), true) if n.numbers.len() <= INLINE_RESULT_MAX => {
                Some(n.inline())
            }
            (Some(Output::Sorted(_)), true) => {
                result_in_stream = true;
                None
            }
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
            result_in_stream,
        }
    }
}

/// Words for a final state, as error messages use them.
pub(crate) fn state_word(s: v1::JobState) -> &'static str {
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

type Subscriber = (u64, mpsc::Sender<Arc<Event>>);

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<Uuid, JobEntry>,
    /// Queued plus running jobs: bounded by `job_queue_capacity`.
    active: usize,
    /// Finished jobs in the order they finished, for eviction after the TTL.
    finished: VecDeque<(Instant, Uuid)>,
    subscribers: HashMap<String, Vec<Subscriber>>,
    next_subscriber: u64,
    /// Jobs finished since start, by final state (for metrics).
    ended: JobsEnded,
}

/// Jobs finished since the server started, by how they ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JobsEnded {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub deadline_exceeded: u64,
}

impl JobsEnded {
    fn count(&mut self, state: v1::JobState) {
        match state {
            v1::JobState::Succeeded => self.succeeded += 1,
            v1::JobState::Failed => self.failed += 1,
            v1::JobState::Cancelled => self.cancelled += 1,
            v1::JobState::DeadlineExceeded => self.deadline_exceeded += 1,
            v1::JobState::Queued | v1::JobState::Running | v1::JobState::Unspecified => {}
        }
    }
}

/// The job registry's counts now (see [`Jobs::counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JobCounts {
    pub queued: u64,
    pub running: u64,
    pub ended: JobsEnded,
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

    /// Takes the oldest kept sorted result out of the registry (its job
    /// then answers NOT_FOUND, saying it was evicted for space).
    fn evict_oldest_result(&mut self) -> Option<Arc<KeptNumbers>> {
        let jobs = &mut self.jobs;
        self.finished.iter().find_map(|(_, id)| {
            let job = jobs.get_mut(id)?;
            if !matches!(job.output, Some(Output::Sorted(_))) {
                return None;
            }
            job.evicted = true;
            match job.output.take() {
                Some(Output::Sorted(kept)) => {
                    info!(job = %id, bytes = numbers_bytes(kept.numbers.len()), "result evicted for space");
                    Some(kept)
                }
                _ => None,
            }
        })
    }

    /// Pushes the event for a finished job to its client's subscribers,
    /// dropping those that left or fell too far behind.
    fn notify(&mut self, id: &Uuid) {
        let Some(job) = self.jobs.get(id) else { return };
        let key = owner_key(&job.owner, &job.client_id);
        if !self.subscribers.contains_key(&key) {
            return;
        }
        // One event shared by every subscriber (at most INLINE_RESULT_MAX
        // numbers: bigger results are streamed by GetJobResult).
        let inline = match &job.output {
            Some(Output::Sorted(k)) if k.numbers.len() <= INLINE_RESULT_MAX => Some(k.clone()),
            _ => None,
        };
        // With `inline` set, the wire job leaves the result out: each
        // subscriber's message gets it when sent.
        let wire = job.to_wire(id, inline.is_none());
        self.fan_out(&key, Event { job: wire, inline });
    }

    /// Sends `event` to every subscriber under `key` without waiting: one
    /// whose queue is full fell too far behind and has its stream ended
    /// (its client asks again with GetJob), one that left is dropped, and
    /// the key goes when none is left.
    fn fan_out(&mut self, key: &str, event: Event) {
        let Some(subs) = self.subscribers.get_mut(key) else {
            return;
        };
        let event = Arc::new(event);
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
            self.subscribers.remove(key);
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: ComputeConfig,
    budget: MemoryBudget,
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
                budget: MemoryBudget::new(config.memory_budget),
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

    /// Reserves `bytes` of the memory budget, evicting kept results oldest
    /// first while that makes room. Never waits.
    ///
    /// # Errors
    /// [`ComputeError::MemoryBudget`] when what is left (after evicting
    /// every kept result nobody is reading) is too small.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<Reservation, ComputeError> {
        loop {
            let refused = match self.shared.budget.try_reserve(bytes) {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if bytes > self.shared.budget.limit() {
                return Err(refused);
            }
            let victim = self.lock().evict_oldest_result();
            match victim {
                // Dropped outside the lock: freeing a big result takes time.
                // Its bytes come back now unless a stream still reads it.
                Some(kept) => drop(kept),
                None => return Err(refused),
            }
        }
    }

    /// A reservation of nothing, grown with [`Reservation::absorb`].
    pub(crate) fn unreserved(&self) -> Reservation {
        self.shared.budget.empty()
    }

    /// Bytes of the memory budget in use, and by kept results.
    pub(crate) fn memory(&self) -> (u64, u64) {
        let kept = self
            .lock()
            .jobs
            .values()
            .filter_map(|j| match &j.output {
                Some(Output::Sorted(k)) => Some(k._reservation.bytes()),
                _ => None,
            })
            .sum();
        (self.shared.budget.in_use(), kept)
    }

    /// Waits until every job task has ended (after shutdown).
    pub(crate) async fn drained(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Checks a job before it is accepted (on either backend); the time it
    /// has to finish.
    ///
    /// # Errors
    /// ShuttingDown, a bad client id, too many numbers, bad numbers.
    pub(crate) fn check(
        &self,
        client_id: &str,
        task: &Task,
        deadline: Option<Duration>,
    ) -> Result<Duration, ComputeError> {
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
        match task {
            Task::Add(n) => {
                if n.len() < 2 {
                    return Err(arith::ArithError::TooFew(n.len()).into());
                }
                n.validate()?;
            }
            Task::Sort(n, _) => n.validate()?,
        }
        Ok(match deadline {
            None | Some(Duration::ZERO) => cfg.default_deadline,
            Some(d) => d.min(cfg.max_deadline),
        })
    }

    /// Pushes `job` (finished, its result inline when small) to the
    /// subscribers of `owner`'s device `client_id` on this instance (the
    /// cluster backend's jobs end on any instance).
    pub(crate) fn publish(&self, owner: &str, client_id: &str, job: v1::Job) {
        let key = owner_key(owner, client_id);
        self.lock().fan_out(&key, Event { job, inline: None });
    }

    /// Ends every callback stream (each client library opens its stream
    /// again and asks for the jobs it waits for with GetJob): events may
    /// have been missed.
    pub(crate) fn end_all_subscribers(&self) {
        self.lock().subscribers.clear();
    }

    /// Accepts a job: validates it, reserves a queue slot and starts its task.
    pub(crate) fn submit(
        &self,
        owner: Arc<str>,
        client_id: String,
        job_id: Option<Uuid>,
        deadline: Option<Duration>,
        task: Task,
    ) -> Result<(Uuid, SystemTime), ComputeError> {
        let cfg = &self.shared.config;
        let timeout = self.check(&client_id, &task, deadline)?;
        // The input is already decoded; it stays held while the job waits
        // and runs, and a sort's result is the same memory.
        let reservation = self.reserve(numbers_bytes(task.len()))?;
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
                    owner,
                    client_id,
                    kind: task.kind(),
                    count: task.len(),
                    state: v1::JobState::Queued,
                    submitted,
                    deadline_wall,
                    finished: None,
                    output: None,
                    evicted: false,
                    error: None,
                    cancel: cancel.clone(),
                },
            );
        }
        debug!(job = %id, kind = ?task.kind(), count = task.len(), ?timeout, "job accepted");
        let jobs = self.clone();
        self.shared.tasks.spawn(async move {
            let (outcome, worker) = jobs.run(id, task, reservation, cancel, now + timeout).await;
            jobs.finish(id, outcome, timeout);
            // The worker slot frees only once the outcome is recorded, so
            // jobs queued behind this one never finish before it is final.
            drop(worker);
        });
        Ok((id, deadline_wall))
    }

    async fn run(
        &self,
        id: Uuid,
        task: Task,
        reservation: Reservation,
        cancel: CancellationToken,
        deadline: Instant,
    ) -> (Outcome, Option<OwnedSemaphorePermit>) {
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
                .map_err(|_| ComputeError::ShuttingDown);
            let permit = match permit {
                Ok(p) => p,
                Err(e) => return (Err(e), None),
            };
            {
                let mut st = self.lock();
                match st.jobs.get_mut(&id) {
                    Some(j) if !j.is_final() => j.state = v1::JobState::Running,
                    _ => return (Err(ComputeError::Cancelled), None),
                }
            }
            // The permit moves into the computation and comes back with its
            // result, so a worker slot stays taken until the CPU work really
            // ends, even after a cancel (the unreceived result drops it).
            match work::on_rayon(move || {
                let result = match task {
                    Task::Add(n) => {
                        let sum = arith::add_cancellable(&n, || stop.load(Ordering::Relaxed));
                        drop((n, reservation));
                        sum.map(Output::Sum)
                    }
                    Task::Sort(mut n, order) => {
                        // A sort is one unit of work that cannot stop midway
                        // (at most about a second for ten million numbers);
                        // a cancelled sort's result is discarded.
                        if stop.load(Ordering::Relaxed) {
                            Err(arith::ArithError::Cancelled)
                        } else {
                            work::par_sort(&mut n, order);
                            Ok(Output::Sorted(Arc::new(KeptNumbers {
                                numbers: n,
                                _reservation: reservation,
                            })))
                        }
                    }
                };
                (result, permit)
            })
            .await
            {
                Ok((result, permit)) => (result.map_err(ComputeError::from), Some(permit)),
                Err(e) => (Err(e), None),
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => (Outcome::Cancelled, None),
            () = tokio::time::sleep_until(deadline.into()) => (Outcome::DeadlineExceeded, None),
            (r, permit) = work => (Outcome::Done(r), permit),
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
        st.ended.count(state);
        st.finished.push_back((Instant::now(), id));
        st.notify(&id);
        st.evict_expired(self.shared.config.result_ttl, Instant::now());
    }

    /// Counts a job of the cluster backend whose end this instance
    /// recorded (its own table holds no jobs; see `compute/cluster.rs`).
    pub(crate) fn count_ended(&self, state: v1::JobState) {
        self.lock().ended.count(state);
    }

    /// Jobs queued and running now, and finished since start.
    pub(crate) fn counts(&self) -> JobCounts {
        let st = self.lock();
        let (mut queued, mut running) = (0, 0);
        for job in st.jobs.values() {
            match job.state {
                v1::JobState::Queued => queued += 1,
                v1::JobState::Running => running += 1,
                _ => {}
            }
        }
        JobCounts {
            queued,
            running,
            ended: st.ended,
        }
    }

    pub(crate) fn get(&self, owner: &str, id: &str) -> Result<v1::Job, ComputeError> {
        let uuid = parse_id(id)?;
        let st = self.lock_fresh();
        match st.jobs.get(&uuid).filter(|j| &*j.owner == owner) {
            None => Err(ComputeError::NotFound(id.to_owned())),
            Some(j) if j.evicted => Err(ComputeError::Evicted(id.to_owned())),
            Some(j) => Ok(j.to_wire(&uuid, true)),
        }
    }

    /// The kept sorted result of job `id`, shared (not copied).
    pub(crate) fn result(&self, owner: &str, id: &str) -> Result<Arc<KeptNumbers>, ComputeError> {
        let uuid = parse_id(id)?;
        let st = self.lock_fresh();
        let job = st
            .jobs
            .get(&uuid)
            .filter(|j| &*j.owner == owner)
            .ok_or_else(|| ComputeError::NotFound(id.to_owned()))?;
        match &job.output {
            Some(Output::Sorted(kept)) => Ok(kept.clone()),
            _ if job.evicted => Err(ComputeError::Evicted(id.to_owned())),
            Some(Output::Sum(_)) => Err(ComputeError::NoStreamedResult {
                id: id.to_owned(),
                why: "an add's sum comes with GetJob",
            }),
            None => Err(ComputeError::NoStreamedResult {
                id: id.to_owned(),
                why: if job.is_final() {
                    "the job did not succeed"
                } else {
                    "the job has not finished"
                },
            }),
        }
    }

    pub(crate) fn cancel(&self, owner: &str, id: &str) -> Result<v1::Job, ComputeError> {
        let uuid = parse_id(id)?;
        let mut st = self.lock_fresh();
        let job = st
            .jobs
            .get_mut(&uuid)
            .filter(|j| &*j.owner == owner)
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
        st.ended.count(v1::JobState::Cancelled);
        st.finished.push_back((Instant::now(), uuid));
        st.notify(&uuid);
        info!(job = %uuid, "job cancelled");
        Ok(wire)
    }

    /// `owner`'s jobs: those of one device (`client_id`), or of all its
    /// devices (an empty `client_id`); never another identity's.
    pub(crate) fn list(&self, owner: &str, client_id: &str) -> Vec<v1::Job> {
        let st = self.lock_fresh();
        let mut jobs: Vec<(&Uuid, &JobEntry)> = st
            .jobs
            .iter()
            .filter(|(_, j)| &*j.owner == owner)
            .filter(|(_, j)| client_id.is_empty() || j.client_id == client_id)
            .collect();
        jobs.sort_by(|a, b| b.1.submitted.cmp(&a.1.submitted).then(a.0.cmp(b.0)));
        jobs.into_iter()
            .take(LIST_LIMIT)
            .map(|(id, j)| j.to_wire(id, false))
            .collect()
    }

    /// Opens a callback subscription for `owner`'s device `client_id`. The
    /// returned stream ends at shutdown, ends with UNAUTHENTICATED when
    /// `revoked` completes (the token was revoked), and unsubscribes when
    /// dropped (the client left).
    pub(crate) fn subscribe(
        &self,
        owner: &str,
        client_id: String,
        revoked: WaitForCancellationFutureOwned,
    ) -> Result<CallbackStream, ComputeError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(ComputeError::ShuttingDown);
        }
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(ComputeError::InvalidArgument(format!(
                "client_id must be 1 to {MAX_CLIENT_ID_BYTES} bytes"
            )));
        }
        let client_id = owner_key(owner, &client_id);
        let cfg = &self.shared.config;
        let reservation = self.reserve(SUBSCRIBER_RESERVE)?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let sub = {
            let mut st = self.lock();
            let total: usize = st.subscribers.values().map(Vec::len).sum();
            if total >= cfg.max_callback_streams {
                return Err(ComputeError::TooManyStreams {
                    scope: "on this server",
                    limit: cfg.max_callback_streams,
                });
            }
            let mine = st.subscribers.get(&client_id).map_or(0, Vec::len);
            if mine >= cfg.max_callback_streams_per_client {
                return Err(ComputeError::TooManyStreams {
                    scope: "for this client id",
                    limit: cfg.max_callback_streams_per_client,
                });
            }
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
            revoked: Some(Box::pin(revoked)),
            _guard: Unsubscribe {
                shared: Arc::downgrade(&self.shared),
                client_id,
                sub,
            },
            _reservation: reservation,
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
    /// The [`owner_key`].
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
        drop(st);
        debug!(client = %self.client_id, subscriber = self.sub, "callbacks unsubscribed");
    }
}

/// The server side of a Callbacks stream.
pub struct CallbackStream {
    rx: mpsc::Receiver<Arc<Event>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Taken once it completed (the stream then ends).
    revoked: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _guard: Unsubscribe,
    _reservation: Reservation,
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
        match self.revoked.as_mut().map(|r| r.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                self.revoked = None;
                return Poll::Ready(Some(Err(crate::auth::Identity::revoked_status())));
            }
            Some(Poll::Pending) => {}
            // Revoked and already told.
            None => return Poll::Ready(None),
        }
        // The shared event becomes this subscriber's own message only as
        // the transport takes it (at most INLINE_RESULT_MAX numbers).
        self.rx.poll_recv(cx).map(|e| {
            e.map(|e| {
                let mut job = e.job.clone();
                if let Some(kept) = &e.inline {
                    job.result = Some(kept.inline());
                }
                Ok(v1::JobEvent { job: Some(job) })
            })
        })
    }
}
