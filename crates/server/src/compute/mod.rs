//! The Compute service: [`ComputeService`] implements the generated
//! `distribusync.v1.Compute` trait with synchronous Add and (streamed) Sort,
//! and asynchronous jobs (see [`jobs`]) whose results are pushed over
//! Callbacks streams. [`ComputeConfig`] holds its limits.
//!
//! The arithmetic itself (checked add, sort order, NaN policy) lives in
//! [`distribusync_core::compute`]; this module adds limits, scheduling and
//! the wire.
//!
//! Everything that holds numbers for a while takes its bytes from one
//! memory budget first ([`budget`], `memory_budget`): a Sort reserves each
//! run before allocating it, and its answer stream keeps the reservation
//! until the numbers are freed.

mod budget;
mod cluster;
mod error;
mod inbound;
pub use inbound::Budgeted;
mod jobs;
mod work;

use std::{pin::Pin, sync::Arc, time::Duration};

use distribusync_core::compute::{self as arith, CHUNK_NUMBERS, MergeRuns, Numbers, Order};
use distribusync_proto::{
    compute::std_duration,
    timestamp,
    v1::{self, compute_server::Compute, compute_server::ComputeServer},
};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};
use uuid::Uuid;

use crate::auth::Identity;
use budget::Reservation;
pub use error::ComputeError;
pub use jobs::{CallbackStream, JobCounts, JobsEnded};
use jobs::{Jobs, RESULT_STREAM_RESERVE, SORT_STREAM_RESERVE, Task, numbers_bytes};

/// Adds of at most this many numbers are computed on the request's own task;
/// bigger ones go to the rayon pool.
const INLINE_ADD_MAX: usize = 4096;
/// A big sort is cut into about this many runs, sorted as they arrive.
const RUNS: usize = 4;
/// Run length when the client does not announce its total.
const DEFAULT_RUN: usize = 2 << 20;

/// Limits and timings of the Compute service.
#[derive(Clone, Debug)]
pub struct ComputeConfig {
    /// Most numbers one Add, Sort or job may carry.
    pub max_numbers: usize,
    /// Most jobs queued or running at once; one more is RESOURCE_EXHAUSTED.
    pub job_queue_capacity: usize,
    /// Jobs computing at once (each may itself use the whole rayon pool).
    pub workers: usize,
    /// Deadline of a job that asks for none.
    pub default_deadline: Duration,
    /// Longest deadline a job may ask for (longer ones are capped).
    pub max_deadline: Duration,
    /// How long a finished job's result stays available to GetJob.
    pub result_ttl: Duration,
    /// Smallest run a streamed Sort is cut into while it arrives (each run
    /// is sorted as soon as it is complete, and the runs are merged while
    /// the answer streams out); smaller sorts are sorted in one piece.
    pub sort_run_min: usize,
    /// Bytes the service may hold for numbers: sorts in flight, inputs of
    /// queued and running jobs, kept results, and the transport buffers of
    /// open result and callback streams. Past it a request is
    /// RESOURCE_EXHAUSTED (after evicting kept results, oldest first).
    pub memory_budget: u64,
    /// Most Callbacks streams open at once for one client id.
    pub max_callback_streams_per_client: usize,
    /// Most Callbacks streams open at once in all.
    pub max_callback_streams: usize,
    /// A Sort whose client sends nothing for this long ends
    /// DEADLINE_EXCEEDED (`serve --idle-timeout`): an announced total holds
    /// its share of the memory budget while the input arrives.
    pub idle_timeout: Duration,
    /// Cluster backend: how long a claimed job stays an instance's without
    /// a renewal (renewed every third of it while the job runs); an
    /// instance that dies loses its jobs to the others after this.
    pub job_lease: Duration,
    /// Cluster backend: most tries of a job whose instances keep dying
    /// mid-job; past them it fails, saying so.
    pub job_attempts: u32,
    /// Test only (`DISTRIBUSYNC_TEST_HOLD_JOBS=true`, docs/DESIGN.md, "Cluster
    /// backend"): on the cluster backend this instance claims jobs and
    /// holds them without computing, so a test can kill it mid-job.
    pub hold_claimed_jobs: bool,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            max_numbers: 16 * 1024 * 1024,
            job_queue_capacity: 1024,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            default_deadline: Duration::from_secs(60),
            max_deadline: Duration::from_secs(3600),
            result_ttl: Duration::from_secs(600),
            sort_run_min: 1 << 20,
            memory_budget: 1 << 30,
            max_callback_streams_per_client: 64,
            max_callback_streams: 1024,
            idle_timeout: crate::TransportConfig::default().idle_timeout,
            job_lease: Duration::from_secs(30),
            job_attempts: 3,
            hold_claimed_jobs: false,
        }
    }
}

impl ComputeConfig {
    /// The gRPC message size the service needs to receive and send
    /// `max_numbers` numbers in one message (Add, Submit, a job result):
    /// eight bytes a number plus headroom.
    pub fn max_message_size(&self) -> usize {
        self.max_numbers
            .saturating_mul(8)
            .saturating_add(1024 * 1024)
    }
}

/// The `distribusync.v1.Compute` service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ComputeService {
    config: Arc<ComputeConfig>,
    jobs: Jobs,
    /// The cluster backend's jobs (`cluster`): asynchronous jobs go there
    /// instead of `jobs`, which then keeps the memory budget and the
    /// callback subscribers only.
    cluster: Option<cluster::ClusterJobs>,
    shutdown: CancellationToken,
}

impl ComputeService {
    /// A service with its own shutdown token (see [`ComputeService::shutdown`]).
    pub fn new(config: ComputeConfig) -> Self {
        Self::with_shutdown(config, CancellationToken::new())
    }

    /// A service that stops when `shutdown` is cancelled: Callbacks streams
    /// end, running jobs are cancelled, new jobs are refused (UNAVAILABLE).
    pub fn with_shutdown(config: ComputeConfig, shutdown: CancellationToken) -> Self {
        ComputeService {
            jobs: Jobs::new(config.clone(), shutdown.clone()),
            config: Arc::new(config),
            cluster: None,
            shutdown,
        }
    }

    /// A service whose asynchronous jobs live in the cluster's job queue
    /// (see `cluster`): any instance on the database may run them, and
    /// their results reach callback streams on every instance.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn on_cluster(
        config: ComputeConfig,
        shutdown: CancellationToken,
        queue: crate::store::PgJobQueue,
    ) -> crate::error::Result<Self> {
        let mut service = Self::with_shutdown(config, shutdown);
        service.cluster = Some(
            cluster::ClusterJobs::start(
                queue,
                service.jobs.clone(),
                (*service.config).clone(),
                service.shutdown.clone(),
            )
            .await?,
        );
        Ok(service)
    }

    /// Triggers the shutdown described in [`ComputeService::with_shutdown`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every job task has ended; call after shutdown.
    pub async fn drained(&self) {
        self.jobs.drained().await;
        if let Some(cluster) = &self.cluster {
            cluster.drained().await;
        }
    }

    /// Number of open Callbacks streams (a disconnected client leaves none).
    pub fn callback_subscribers(&self) -> usize {
        self.jobs.subscriber_count()
    }

    /// Jobs queued and running now, and finished since start. On the
    /// cluster backend: the jobs queued in the shared queue (the same
    /// figure on every instance; none when the database does not answer),
    /// those running on this instance, and those whose end this instance
    /// recorded (each job's end is counted by one instance).
    pub async fn job_counts(&self) -> JobCounts {
        match &self.cluster {
            Some(cluster) => cluster.counts().await,
            None => self.jobs.counts(),
        }
    }

    /// Bytes of the compute memory budget in use now.
    pub fn memory_in_use(&self) -> u64 {
        self.jobs.memory().0
    }

    /// Bytes held by kept job results (each counted once, however many
    /// clients read it).
    pub fn kept_result_bytes(&self) -> u64 {
        self.jobs.memory().1
    }

    /// The tonic server for this service, with message limits sized for
    /// `max_numbers`.
    /// The gRPC service, with the bytes of Add and Submit requests counted
    /// against the compute memory budget while they arrive (see `inbound`).
    pub fn into_server(self) -> inbound::Budgeted<ComputeServer<ComputeService>> {
        let size = self.config.max_message_size();
        let jobs = self.jobs.clone();
        let server = ComputeServer::new(self)
            .max_decoding_message_size(size)
            .max_encoding_message_size(size);
        inbound::Budgeted::new(server, jobs)
    }

    /// Grows `reserved` to at least `bytes`.
    fn reserve_up_to(&self, reserved: &mut Reservation, bytes: u64) -> Result<(), ComputeError> {
        if bytes > reserved.bytes() {
            reserved.absorb(self.jobs.reserve(bytes - reserved.bytes())?);
        }
        Ok(())
    }

    fn check_count(&self, count: u64) -> Result<(), ComputeError> {
        if count > self.config.max_numbers as u64 {
            return Err(ComputeError::TooMany {
                count,
                limit: self.config.max_numbers,
            });
        }
        Ok(())
    }
}

fn numbers(n: Option<v1::Numbers>) -> Result<Numbers, ComputeError> {
    Ok(
        n.ok_or(distribusync_proto::compute::MissingField("numbers"))?
            .try_into()?,
    )
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Compute for ComputeService {
    type SortStream = ResponseStream<v1::SortResponse>;
    type GetJobResultStream = ResponseStream<v1::JobResultChunk>;
    type CallbacksStream = CallbackStream;

    #[instrument(skip_all)]
    async fn add(&self, req: Request<v1::AddRequest>) -> Result<Response<v1::AddResponse>, Status> {
        let n = numbers(req.into_inner().numbers)?;
        self.check_count(n.len() as u64)?;
        let sum = if n.len() <= INLINE_ADD_MAX {
            arith::add(&n)
        } else {
            // Decoded before the budget could be asked; held while summed.
            let reserved = self.jobs.reserve(numbers_bytes(n.len()))?;
            work::on_rayon(move || {
                let sum = arith::add(&n);
                drop((n, reserved));
                sum
            })
            .await?
        }
        .map_err(ComputeError::from)?;
        Ok(Response::new(v1::AddResponse {
            sum: Some(sum.into()),
        }))
    }

    #[instrument(skip_all)]
    async fn sort(
        &self,
        req: Request<Streaming<v1::SortRequest>>,
    ) -> Result<Response<Self::SortStream>, Status> {
        // The numbers are cut into runs as they arrive; each full run is
        // sorted on the rayon pool while the rest is still arriving, and the
        // sorted runs are merged while the answer streams out. Every run is
        // allocated at its final size once its bytes are reserved (all of
        // them at once when the first message announces the total).
        let started = std::time::Instant::now();
        let mut input = req.into_inner();
        let mut order = Order::Ascending;
        let mut run_len = DEFAULT_RUN.max(self.config.sort_run_min.max(1));
        let mut announced: usize = 0;
        let mut first = true;
        let mut count: u64 = 0;
        let mut floats: Option<bool> = None;
        let mut current: Option<Numbers> = None;
        let mut run_cap = 0;
        let mut allocated: usize = 0;
        let mut reserved = self.jobs.unreserved();
        // Bytes of `reserved` lent to runs being sorted on rayon: each run
        // carries its share there, so a sort that fails or is refused while
        // runs are still being sorted (rayon cannot stop them) keeps them
        // counted until they are freed.
        let mut lent: u64 = 0;
        let mut sorting = Vec::new();
        while let Some(msg) =
            crate::transport::next_message(&mut input, self.config.idle_timeout, "sort").await?
        {
            if first {
                first = false;
                order = msg.order().into();
                self.check_count(msg.total)?;
                if msg.total > 0 {
                    announced = msg.total as usize;
                    run_len = announced
                        .div_ceil(RUNS)
                        .max(self.config.sort_run_min.max(1));
                    // All of it at once, so a sort is refused before any
                    // of its data is taken, or never.
                    self.reserve_up_to(&mut reserved, sort_bytes(announced))?;
                }
            }
            let Some(chunk) = msg.numbers else { continue };
            let chunk = numbers(Some(chunk))?;
            if chunk.is_empty() {
                continue;
            }
            let is_float = matches!(chunk, Numbers::Floats(_));
            if *floats.get_or_insert(is_float) != is_float {
                return Err(ComputeError::InvalidArgument(
                    "a sort's chunks must all be integers or all be decimals".into(),
                )
                .into());
            }
            chunk.validate().map_err(ComputeError::from)?;
            count += chunk.len() as u64;
            self.check_count(count)?;
            let mut taken = 0;
            while taken < chunk.len() {
                if current.is_none() {
                    // Runs end where the announced total does; past it
                    // (a client that announced too few), runs of run_len.
                    run_cap = if allocated < announced {
                        run_len.min(announced - allocated)
                    } else {
                        run_len
                    };
                    self.reserve_up_to(&mut reserved, numbers_bytes(allocated + run_cap) - lent)?;
                    allocated += run_cap;
                    current = Some(if is_float {
                        Numbers::Floats(Vec::with_capacity(run_cap))
                    } else {
                        Numbers::Ints(Vec::with_capacity(run_cap))
                    });
                }
                let Some(run) = current.as_mut() else { break };
                taken += append_front(run, &chunk, taken, run_cap - run.len());
                if run.len() >= run_cap
                    && let Some(mut run) = current.take()
                {
                    let share = reserved.split(numbers_bytes(run_cap));
                    lent += share.bytes();
                    sorting.push(work::start_on_rayon(move || {
                        work::seq_sort(&mut run, order);
                        (run, share)
                    }));
                }
            }
        }
        let received = started.elapsed();
        // What the answer stream buffers on its way out.
        self.reserve_up_to(&mut reserved, sort_bytes(allocated) - lent)?;
        if let Some(mut run) = current.take() {
            let alone = sorting.is_empty();
            let share = reserved.split(numbers_bytes(run_cap));
            lent += share.bytes();
            sorting.push(work::start_on_rayon(move || {
                if alone {
                    work::par_sort(&mut run, order);
                } else {
                    work::seq_sort(&mut run, order);
                }
                (run, share)
            }));
        }
        let mut runs = Vec::with_capacity(sorting.len());
        for task in sorting {
            let (run, share) = task.join().await?;
            lent -= share.bytes();
            reserved.absorb(share);
            runs.push(run);
        }
        debug_assert_eq!(lent, 0);
        debug!(count, runs = runs.len(), ?received, sorted = ?(started.elapsed() - received), reserved = reserved.bytes(), "sort");
        Ok(Response::new(match runs.len() {
            0 => chunked(Arc::new(Numbers::default()), reserved, sort_response),
            1 => chunked(
                Arc::new(runs.pop().unwrap_or_default()),
                reserved,
                sort_response,
            ),
            _ => merged(runs, order, reserved),
        }))
    }

    #[instrument(skip_all)]
    async fn submit(
        &self,
        req: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let who = Identity::of(&req);
        let req = req.into_inner();
        let task = match req.task {
            Some(v1::submit_request::Task::Add(a)) => Task::Add(numbers(a.numbers)?),
            Some(v1::submit_request::Task::Sort(s)) => {
                let order = s.order().into();
                Task::Sort(numbers(s.numbers)?, order)
            }
            None => return Err(ComputeError::InvalidArgument("missing field `task`".into()).into()),
        };
        let job_id = if req.job_id.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(&req.job_id).map_err(|_| {
                ComputeError::InvalidArgument(format!(
                    "job_id {:?} is not a UUID",
                    distribusync_core::echo(&req.job_id)
                ))
            })?)
        };
        let deadline = match &req.deadline {
            None => None,
            Some(d) => Some(std_duration(d).ok_or_else(|| {
                ComputeError::InvalidArgument("deadline must not be negative".into())
            })?),
        };
        let (id, deadline) = match &self.cluster {
            Some(cluster) => {
                cluster
                    .submit(&who.owner, req.client_id, job_id, deadline, task)
                    .await?
            }
            None => self
                .jobs
                .submit(who.owner, req.client_id, job_id, deadline, task)?,
        };
        Ok(Response::new(v1::SubmitResponse {
            job_id: id.to_string(),
            deadline: Some(timestamp(deadline)),
        }))
    }

    #[instrument(skip_all)]
    async fn callbacks(
        &self,
        req: Request<v1::CallbacksRequest>,
    ) -> Result<Response<Self::CallbacksStream>, Status> {
        let who = Identity::of(&req);
        Ok(Response::new(self.jobs.subscribe(
            &who.owner,
            req.into_inner().client_id,
            who.revoked(),
        )?))
    }

    #[instrument(skip_all)]
    async fn get_job(&self, req: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        let who = Identity::of(&req);
        let id = req.into_inner().job_id;
        Ok(Response::new(match &self.cluster {
            Some(cluster) => cluster.get(&who.owner, &id).await?,
            None => self.jobs.get(&who.owner, &id)?,
        }))
    }

    #[instrument(skip_all)]
    async fn get_job_result(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<Self::GetJobResultStream>, Status> {
        // Reserved first: making room may evict results, this one too
        // (which then answers NOT_FOUND, as GetJob would).
        let reserved = self.jobs.reserve(RESULT_STREAM_RESERVE)?;
        let who = Identity::of(&req);
        let id = req.into_inner().job_id;
        let kept = match &self.cluster {
            Some(cluster) => cluster.result(&who.owner, &id).await?,
            None => self.jobs.result(&who.owner, &id)?,
        };
        Ok(Response::new(chunked(kept, reserved, |numbers| {
            v1::JobResultChunk {
                numbers: Some(numbers),
            }
        })))
    }

    #[instrument(skip_all)]
    async fn cancel_job(
        &self,
        req: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let who = Identity::of(&req);
        let id = req.into_inner().job_id;
        Ok(Response::new(match &self.cluster {
            Some(cluster) => cluster.cancel(&who.owner, &id).await?,
            None => self.jobs.cancel(&who.owner, &id)?,
        }))
    }

    #[instrument(skip_all)]
    async fn list_jobs(
        &self,
        req: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let owner = Identity::of(&req).owner;
        let client_id = req.into_inner().client_id;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: match &self.cluster {
                Some(cluster) => cluster.list(&owner, &client_id).await?,
                None => self.jobs.list(&owner, &client_id),
            },
        }))
    }
}

/// Moves up to `room` numbers of `chunk`, from position `from`, onto the
/// end of `run` (of the same kind); returns how many.
fn append_front(run: &mut Numbers, chunk: &Numbers, from: usize, room: usize) -> usize {
    match (run, chunk) {
        (Numbers::Ints(r), Numbers::Ints(c)) => {
            let n = room.min(c.len() - from);
            r.extend_from_slice(&c[from..from + n]);
            n
        }
        (Numbers::Floats(r), Numbers::Floats(c)) => {
            let n = room.min(c.len() - from);
            r.extend_from_slice(&c[from..from + n]);
            n
        }
        // Kinds are checked before a chunk is appended; taking all of it
        // ends the caller's loop either way.
        _ => chunk.len() - from,
    }
}

/// Bytes a sort of `n` numbers holds: its runs, and its answer stream's
/// buffers (no more than the numbers themselves for a small sort).
fn sort_bytes(n: usize) -> u64 {
    numbers_bytes(n) + SORT_STREAM_RESERVE.min(numbers_bytes(n))
}

fn sort_response(numbers: v1::Numbers) -> v1::SortResponse {
    v1::SortResponse {
        numbers: Some(numbers),
    }
}

/// The merge of sorted runs as a stream of chunks, produced a few chunks
/// ahead of the transport, one chunk per short step on the blocking pool:
/// no thread waits while the client is slow to read (a producer that did
/// held one of the pool's threads per unread answer, which file
/// operations share). The producer stops when the client goes away;
/// `reserved` (the runs' bytes and the stream's) is given back when it ends
/// and the runs are freed.
fn merged(
    runs: Vec<Numbers>,
    order: Order,
    reserved: Reservation,
) -> ResponseStream<v1::SortResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _reserved = reserved;
        if matches!(runs.first(), Some(Numbers::Floats(_))) {
            let runs = runs
                .into_iter()
                .map(|r| match r {
                    Numbers::Floats(v) => v,
                    Numbers::Ints(_) => Vec::new(), // excluded when receiving
                })
                .collect();
            let cmp = move |a: &f64, b: &f64| arith::cmp_floats(a, b, order);
            feed(MergeRuns::new(runs, cmp), Numbers::Floats, &tx).await;
        } else {
            let runs = runs
                .into_iter()
                .map(|r| match r {
                    Numbers::Ints(v) => v,
                    Numbers::Floats(_) => Vec::new(), // excluded when receiving
                })
                .collect();
            let cmp = move |a: &i64, b: &i64| arith::cmp_ints(a, b, order);
            feed(MergeRuns::new(runs, cmp), Numbers::Ints, &tx).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Sends the chunks of a merge until it ends or the client goes away.
async fn feed<T, F>(
    mut merge: MergeRuns<T, F>,
    wrap: fn(Vec<T>) -> Numbers,
    tx: &tokio::sync::mpsc::Sender<Result<v1::SortResponse, Status>>,
) where
    T: Copy + Send + 'static,
    F: Fn(&T, &T) -> std::cmp::Ordering + Send + 'static,
{
    loop {
        let step = tokio::task::spawn_blocking(move || {
            let chunk = merge.next_chunk(CHUNK_NUMBERS);
            (merge, chunk)
        })
        .await;
        let (back, chunk) = match step {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "a sort's merge failed");
                let _ = tx
                    .send(Err(Status::internal("the sort's merge failed")))
                    .await;
                return;
            }
        };
        let Some(chunk) = chunk else { return };
        merge = back;
        let msg = v1::SortResponse {
            numbers: Some(wrap(chunk).into()),
        };
        if tx.send(Ok(msg)).await.is_err() {
            return;
        }
    }
}

/// Sorted numbers (shared, never copied whole) as a stream of chunks, each
/// encoded only when the transport asks for it, so a client that does not
/// read holds at most a chunk in flight. `reserved` lives as long as the
/// stream.
fn chunked<N, T>(
    sorted: Arc<N>,
    reserved: Reservation,
    wrap: fn(v1::Numbers) -> T,
) -> ResponseStream<T>
where
    N: AsRef<Numbers> + Send + Sync + 'static,
    T: Send + 'static,
{
    let len = (*sorted).as_ref().len();
    let chunks = len.div_ceil(CHUNK_NUMBERS);
    Box::pin(futures::stream::iter(0..chunks).map(move |i| {
        let _reserved = &reserved;
        let range = i * CHUNK_NUMBERS..((i + 1) * CHUNK_NUMBERS).min(len);
        let numbers = match (*sorted).as_ref() {
            Numbers::Ints(v) => v1::Numbers::from(&v[range]),
            Numbers::Floats(v) => v1::Numbers::from(&v[range]),
        };
        Ok(wrap(numbers))
    }))
}
