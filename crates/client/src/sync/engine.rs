//! [`SyncEngine`]: the loop around scan → plan → execute.
//!
//! Invariant of incremental passes: every path whose local, remote or base
//! entry changed since the last plan is either in the next pass's focus
//! (named by an event, `touched` by the change log, re-listed, or a failed
//! step's paths) or waits in `pending`/`recheck`, which brings it back;
//! anything else is caught by the periodic full pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use distribusync_core::sync::{
    IGNORE_FILE, Mode, Operation, RemoteFile, Side, SyncInput, SyncPlan, Views, plan, plan_with,
};
use distribusync_core::{ContentHash, RemotePath};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::remote::{self, RemoteMsg};
use super::scan::{LocalView, Scanner};
use super::state::{FileStat, PAGE, State, StateError, StateWrite};
use super::watcher::{self, LocalEvent};
use crate::files::{ChangeKind, FilesClient};

/// How a sync runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The synced folder (created if missing).
    pub dir: PathBuf,
    pub mode: Mode,
    /// Full rescan even without events (default 5 minutes).
    pub rescan_every: Duration,
    /// A file still being written is sent once it has been quiet this long
    /// (or at once when its writer closes it).
    pub settle: Duration,
    /// Transfers in flight at once.
    pub parallel: usize,
    /// Host name used in conflict copy names.
    pub host: String,
    /// Full rescan this often while some folders cannot be watched (the
    /// system's inotify watch limit is too low for the tree).
    pub rescan_unwatched: Duration,
    /// Watch at most this many folders (`None`: as many as the system
    /// allows): stands in for a low system limit in tests.
    pub watch_limit: Option<usize>,
    /// A first pass (nothing in sync yet) sends new files in slices of
    /// this many while it goes on scanning (see `pipelined_scan`).
    pub first_pass_slice: usize,
}

impl SyncOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            mode: Mode::TwoWay,
            rescan_every: Duration::from_secs(300),
            settle: Duration::from_millis(300),
            parallel: 8,
            host: hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "host".into()),
            rescan_unwatched: Duration::from_secs(30),
            watch_limit: None,
            first_pass_slice: FIRST_PASS_SLICE,
        }
    }
}

/// Why sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}: the synced folder has disappeared; stopping so nothing is deleted on the server")]
    FolderGone(String),
    #[error("{0}")]
    SafetyStop(String),
    /// The IO error is in the message only (see `ClientError::Local`).
    #[error("{path}: {error}")]
    Local { path: String, error: std::io::Error },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot watch the folder: {0}")]
    Watch(#[from] notify::Error),
    #[error(transparent)]
    Client(#[from] crate::ClientError),
    #[error("not in sync after {passes} passes; {failures} operations failed (last: {last})")]
    NotConverged {
        passes: u32,
        failures: usize,
        last: String,
    },
}

/// What the engine is doing, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPhase {
    Starting,
    Syncing,
    Idle,
    Offline,
    Stopped,
}

impl std::fmt::Display for SyncPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncPhase::Starting => "starting",
            SyncPhase::Syncing => "syncing",
            SyncPhase::Idle => "idle (in sync)",
            SyncPhase::Offline => "offline (changes wait for the server)",
            SyncPhase::Stopped => "stopped",
        })
    }
}

/// A snapshot of the engine's state.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    pub phase: SyncPhase,
    /// The last thing that moved, e.g. "uploaded notes.txt".
    pub last_action: Option<String>,
    pub last_error: Option<String>,
    pub uploaded: u64,
    pub downloaded: u64,
    pub passes: u64,
    /// Paths all passes so far looked at: stat-ed or listed on disk, plus
    /// those they planned. An incremental pass (one file saved, one
    /// change from the server) adds a handful; a full rescan every file.
    pub examined: u64,
    /// Passes that looked at the whole tree (the first, reconnections,
    /// the periodic rescan, new ignore rules).
    pub full_passes: u64,
    /// Set (once) when the folder has more folders than the system lets
    /// the engine watch: the numbers, and the command that raises it.
    pub watch_notice: Option<String>,
    /// How many times the watcher hit the limit (the notice is given on
    /// the first).
    pub watch_limit_hits: u32,
    /// Operations of the current pass not done yet (0 between passes).
    pub pending: u64,
    /// Transfers (files, or batches of small ones) running now.
    pub in_flight: u64,
    /// When the last pass ended.
    pub last_pass: Option<std::time::SystemTime>,
    /// When the last pass in which nothing failed ended.
    pub last_success: Option<std::time::SystemTime>,
    /// Slices of new files a first pass sent while it was still scanning.
    pub first_pass_slices: u64,
    /// The most files a first pass held hashed but not yet sent at once:
    /// bounded by the slice size, whatever the size of the tree.
    pub unsent_peak: u64,
    /// The most local entries one scan held at once (the old view's not
    /// yet taken into the new one, the new one's, those waiting to be
    /// hashed): about the tree's size for a full rescan, not twice it.
    pub scan_peak: u64,
    /// The most entries of the server view and the merge base held in
    /// memory at once: both live in the state database, and a pass holds
    /// only the entries of the paths it plans, an operation only those it
    /// changes. A pass over a tree in sync holds none, however big the
    /// tree.
    pub views_held: u64,
    /// Entries of the local view the engine held in memory after the last
    /// pass: the files that differ from the merge base and the base paths
    /// gone from disk (see `scan`), not the files as the base records
    /// them, which stay in the state database. A folder in sync holds
    /// none, however big.
    pub local_held: u64,
    /// Bytes the current pass's transfers have still to move (0 between
    /// passes).
    pub bytes_pending: u64,
    /// File content sent to the server since start, in bytes: what was
    /// read and sent (a delta only what it carried; a resumed upload from
    /// where it resumed), not the protocol around it.
    pub bytes_sent: u64,
    /// File content received from the server since start, in bytes (as
    /// `bytes_sent`).
    pub bytes_received: u64,
    /// Conflicts met since start: both sides changed a file, and the local
    /// version was kept as a copy.
    pub conflicts: u64,
    /// Steps (transfers, deletions, renames) that failed since start; each
    /// is tried again later.
    pub errors: u64,
    /// The transfers running now, with how far each has got.
    pub moving: Vec<super::traffic::Moving>,
}

/// Outcome of executing one plan.
#[derive(Debug, Default)]
pub(super) struct PassReport {
    pub transfers: usize,
    pub failures: Vec<String>,
    /// The paths (relative, as on disk) of the failures that were not the
    /// server being unreachable: each is looked at again on its own
    /// schedule, and left alone until then.
    pub failed: Vec<String>,
    /// Files left for later because they are still being written.
    pub busy_paths: BTreeSet<String>,
    /// A failure that means "the server is not there".
    pub offline: bool,
    /// Some files were left for later because they are still being written.
    pub busy: bool,
    /// The plan only sent files (no download, deletion, rename or conflict
    /// copy): the one kind of pass `run_once` trusts without a second look.
    pub only_uploads: bool,
}

/// Keeps one folder in sync with the server.
#[derive(Debug)]
pub struct SyncEngine {
    pub(super) opts: SyncOptions,
    pub(super) client: FilesClient,
    pub(super) scanner: Arc<Scanner>,
    pub(super) state: State,
    // The server view and the merge base are not here: they live in the
    // state database (see `state`), read by path or by folder as a pass
    // needs them, walked in path order by a full pass.
    /// Newest change-log sequence known per path (including deletions), so
    /// an older change arriving late never overrides a newer one.
    pub(super) seen: HashMap<RemotePath, u64>,
    pub(super) last_seq: u64,
    pub(super) local: LocalView,
    pub(super) status: watch::Sender<SyncStatus>,
    /// The synced folder's inode when the engine opened it.
    pub(super) dir_inode: u64,
    /// Files the engine itself just wrote (relative, as on disk), with
    /// their stat, so the watcher's events about them are not taken for
    /// the user's: an event whose file is still exactly as the engine left
    /// it is the engine's own echo.
    pub(super) own: HashMap<String, (FileStat, Instant)>,
    /// Partial downloads (relative) that may be on disk: found by a scan,
    /// or where a download of this session kept its data. Each pass
    /// removes those no download will continue.
    pub(super) parts: BTreeSet<String>,
    /// Paths whose remote (or base) entry changed since the last plan:
    /// an incremental pass plans them, whatever the local events were.
    pub(super) touched: BTreeSet<RemotePath>,
    /// The whole remote view was replaced (a snapshot): the next pass is
    /// a full one.
    pub(super) remote_reset: bool,
    /// Paths a folder rename's listing brought into the remote view
    /// during a pass: planned by the next one.
    pub(super) relisted: BTreeSet<RemotePath>,
    /// A first pass started (by this process or an earlier one) and has
    /// not finished: the next full pass sends as it scans, as the first
    /// did (kept in the state database, so a restart resumes it).
    pub(super) first_pass_unfinished: bool,
    /// The scan's own read-only connection to the base, kept between
    /// passes (lent to each scan's thread and handed back), so a pass
    /// over one saved file does not open the database again.
    pub(super) reader: Option<super::state::BaseReader>,
    /// A full scan of this process has read the folder: a full pass is
    /// no longer a first one.
    pub(super) scanned: bool,
    /// Small files' content the change log brought with their puts (the
    /// server sends it for live changes), by path: the next pass's
    /// download of exactly that version writes it without asking the
    /// server. Emptied by every pass; at most [`INLINE_KEPT`] entries.
    pub(super) inline: HashMap<RemotePath, (crate::files::FileInfo, Arc<[u8]>)>,
}

/// How long the engine's own changes are recognised in events (they
/// arrive within milliseconds; this is a bound for a loaded machine).
const OWN_FOR: Duration = Duration::from_secs(5);

/// A path to look at again.
#[derive(Debug, Clone, Copy)]
struct Recheck {
    at: Instant,
    /// Still being written (looked at once quiet), or a step that failed.
    busy: bool,
}

/// Most small files' contents from the change log kept for the next pass
/// (each at most the server's inline limit, a few KiB).
const INLINE_KEPT: usize = 256;

/// Most passes `run_once` makes before giving up on converging.
const MAX_ONCE_PASSES: u32 = 5;
/// Events closer together than this are handled in one pass.
const BATCH: Duration = Duration::from_millis(10);
/// Files per slice of a first pass: several upload batches' worth, so a
/// slice keeps `parallel` transfers busy.
pub const FIRST_PASS_SLICE: usize = 8192;
/// Files in the first slice of a first pass (see `SliceSink::next`).
const FIRST_SLICE_START: usize = 512;
/// Slices waiting between the scan and the sending.
const SLICES_QUEUED: usize = 2;

impl SyncEngine {
    /// Opens the folder's state (creating the folder and
    /// `DIR/.distribusync/state.db` if needed).
    ///
    /// # Errors
    /// When the folder or its state cannot be opened.
    pub fn open(opts: SyncOptions, client: FilesClient) -> Result<Self, SyncError> {
        let meta = opts.dir.join(distribusync_core::RESERVED_DIR);
        std::fs::create_dir_all(&meta).map_err(|source| SyncError::Local {
            path: meta.display().to_string(),
            error: source,
        })?;
        let state = State::open(&meta.join("state.db"))?;
        let dir_inode = std::fs::metadata(&opts.dir)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .map_err(|source| SyncError::Local {
                path: opts.dir.display().to_string(),
                error: source,
            })?;
        let last_seq = state.last_seq()?;
        let first_pass_unfinished = state.first_pass_unfinished()?;
        let (status, _) = watch::channel(SyncStatus {
            phase: SyncPhase::Starting,
            last_action: None,
            last_error: None,
            uploaded: 0,
            downloaded: 0,
            passes: 0,
            examined: 0,
            full_passes: 0,
            watch_notice: None,
            watch_limit_hits: 0,
            pending: 0,
            in_flight: 0,
            last_pass: None,
            last_success: None,
            first_pass_slices: 0,
            unsent_peak: 0,
            scan_peak: 0,
            views_held: 0,
            local_held: 0,
            bytes_pending: 0,
            bytes_sent: 0,
            bytes_received: 0,
            conflicts: 0,
            errors: 0,
            moving: Vec::new(),
        });
        Ok(Self {
            scanner: Arc::new(Scanner::new(&opts.dir)),
            opts,
            client,
            state,
            seen: HashMap::new(),
            last_seq,
            local: LocalView::default(),
            status,
            dir_inode,
            own: HashMap::new(),
            parts: BTreeSet::new(),
            touched: BTreeSet::new(),
            remote_reset: false,
            relisted: BTreeSet::new(),
            first_pass_unfinished,
            reader: None,
            scanned: false,
            inline: HashMap::new(),
        })
    }

    /// Follow the engine's status.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    pub(super) fn set_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.status.send_modify(f);
    }

    /// Brings the remote view up to date, then makes full passes until
    /// nothing is left to move.
    ///
    /// # Errors
    /// Unreachable server, the safety stop, or operations that keep failing.
    pub async fn run_once(&mut self) -> Result<(), SyncError> {
        self.catch_up().await?;
        let mut last_failures = Vec::new();
        for _ in 0..MAX_ONCE_PASSES {
            let report = self.pass(None, None, &BTreeSet::new()).await?;
            if report.offline {
                return Err(crate::ClientError::Unreachable {
                    addr: self.client.addr().to_owned(),
                }
                .into());
            }
            if report.transfers == 0 && report.failures.is_empty() {
                self.set_status(|s| s.phase = SyncPhase::Idle);
                return Ok(());
            }
            last_failures = report.failures;
            // Our own changes and any concurrent ones: read them back.
            let news = self.catch_up().await?;
            // A plan carried out whole converges (the planner's property
            // tests check exactly that). So after a pass that only sent
            // files, with nothing failed, no file still being written and
            // no change from anyone else, another full pass would find
            // nothing to move. (A rename re-lists folders, which can take in
            // others' changes unseen: such passes are looked at again.)
            if report.only_uploads && last_failures.is_empty() && !report.busy && news == 0 {
                self.set_status(|s| s.phase = SyncPhase::Idle);
                return Ok(());
            }
        }
        Err(SyncError::NotConverged {
            passes: MAX_ONCE_PASSES,
            failures: last_failures.len(),
            last: last_failures
                .pop()
                .unwrap_or_else(|| "still changing".into()),
        })
    }

    /// Reads the change log until caught up (one-shot use); returns how
    /// many changes were news.
    async fn catch_up(&mut self) -> Result<usize, SyncError> {
        let mut w = self.client.watch(self.last_seq).await?;
        let mut msgs = Vec::new();
        let mut news = 0;
        loop {
            match w.next().await? {
                Some(crate::WatchEvent::Change(c)) => msgs.push(RemoteMsg::Change(c)),
                Some(crate::WatchEvent::Resync(seq)) => {
                    let all = self.client.list_all(None).await?;
                    msgs.push(RemoteMsg::Snapshot(all, seq));
                }
                Some(crate::WatchEvent::CaughtUp(_)) | None => break,
            }
            // A page at a time: a log of any length is never held whole.
            if msgs.len() >= PAGE {
                news += self.apply_remote(std::mem::take(&mut msgs))?;
            }
        }
        Ok(news + self.apply_remote(msgs)?)
    }

    /// Runs until `shutdown` is cancelled: watches the folder and the
    /// server and syncs every change.
    ///
    /// # Errors
    /// The safety stop, a vanished folder, or a state database failure.
    /// An unreachable server is not an error: changes wait for it.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SyncError> {
        let result = self.run_inner(shutdown).await;
        let err = result.as_ref().err().map(ToString::to_string);
        self.set_status(|s| {
            s.phase = SyncPhase::Stopped;
            if err.is_some() {
                s.last_error = err;
            }
        });
        result
    }

    async fn run_inner(&mut self, shutdown: CancellationToken) -> Result<(), SyncError> {
        let (_watcher, mut local_rx) = watcher::start(&self.opts.dir, self.opts.watch_limit)?;
        // Lowered to `rescan_unwatched` once some folders cannot be watched.
        let mut rescan_every = self.opts.rescan_every;
        let (remote_tx, mut remote_rx) = mpsc::channel(1024);
        let follower = shutdown.child_token();
        let _stop_follower = follower.clone().drop_guard();
        tokio::spawn(remote::follow(
            self.client.clone(),
            self.last_seq,
            remote_tx,
            follower,
        ));

        let mut online = false;
        let mut full_due = true; // the first pass is a full one
        let mut pending: HashMap<String, (Instant, bool)> = HashMap::new();
        // Paths looked at again on their own schedule, and left alone
        // until then: files still being written, steps that failed.
        let mut recheck: HashMap<String, Recheck> = HashMap::new();
        // Failures in a row per path: its own backoff.
        let mut failing: HashMap<String, u32> = HashMap::new();
        let mut remote_dirty = false;
        let mut next_rescan = Instant::now() + rescan_every;
        // The server was unreachable: when to try it again.
        let mut retry_at: Option<Instant> = None;
        let mut retry_attempt = 0u32;
        let mut batch_until: Option<Instant> = None;
        // When the folder last saw an event of the user's: unsettled
        // changes (writes without a close, deletions) wait until it has
        // been quiet.
        let mut last_event = Instant::now();

        loop {
            // When to wake up next without an event. Offline, only the
            // retry (or the rescan) can do anything.
            let now = Instant::now();
            let settle_at = pending
                .values()
                .filter(|(_, settled)| !settled)
                .map(|(t, _)| (*t).max(last_event) + self.opts.settle)
                .min();
            let recheck_at = recheck.values().map(|r| r.at).min();
            let wake = if online {
                [
                    Some(next_rescan),
                    retry_at,
                    settle_at,
                    batch_until,
                    recheck_at,
                ]
            } else {
                [Some(next_rescan), retry_at, None, None, None]
            }
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600));

            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                ev = local_rx.recv() => match ev {
                    Some(LocalEvent::Path { rel, settled }) => {
                        if rel == IGNORE_FILE && self.scanner.reload_ignore() {
                            full_due = true;
                        }
                        // Neither our own partial downloads and echoes nor
                        // ignored files keep the folder from being quiet.
                        if !self.scanner.ignore().is_ignored(&rel, false) && !self.is_own(&rel) {
                            // The latest event decides: a write after a close
                            // means the file is being written again.
                            last_event = Instant::now();
                            pending.insert(rel, (last_event, settled));
                            batch_until.get_or_insert(last_event + BATCH);
                        } else if full_due {
                            batch_until.get_or_insert(Instant::now() + BATCH);
                        }
                    }
                    Some(LocalEvent::Rescan) => full_due = true,
                    Some(LocalEvent::LimitReached) => {
                        self.set_status(|s| s.watch_limit_hits += 1);
                        if self.status.borrow().watch_notice.is_none() {
                            rescan_every = rescan_every.min(self.opts.rescan_unwatched);
                            next_rescan = next_rescan.min(Instant::now() + rescan_every);
                            // What it missed while the watches were being
                            // added: a full pass soon.
                            full_due = true;
                            batch_until.get_or_insert(Instant::now() + BATCH);
                            self.watch_limit_notice(rescan_every).await;
                        }
                    }
                    None => return Err(SyncError::FolderGone(self.opts.dir.display().to_string())),
                },
                msg = remote_rx.recv() => {
                    // Take everything already queued: one state write for a burst.
                    let mut msgs: Vec<RemoteMsg> = msg.into_iter().collect();
                    while let Ok(more) = remote_rx.try_recv() {
                        msgs.push(more);
                    }
                    let mut changes = Vec::new();
                    for m in msgs {
                        match m {
                            RemoteMsg::Offline(e) => {
                                if online || retry_at.is_none() {
                                    tracing::warn!(error = %e, "server unreachable; changes will wait");
                                }
                                online = false;
                                self.set_status(|s| { s.phase = SyncPhase::Offline; s.last_error = Some(e); });
                            }
                            RemoteMsg::CaughtUp if !online => {
                                online = true;
                                full_due = true; // (re)connected: look at everything
                                self.set_status(|s| s.phase = SyncPhase::Idle);
                            }
                            RemoteMsg::CaughtUp => {}
                            m => changes.push(m),
                        }
                    }
                    if !changes.is_empty() {
                        let _news = self.apply_remote(changes)?;
                        remote_dirty = true;
                        // No window: what the server had already sent was
                        // taken above (one pass for a burst), and waiting
                        // for more would delay every change from the
                        // server by the window.
                        batch_until.get_or_insert(Instant::now());
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }

            let now = Instant::now();
            if now >= next_rescan {
                full_due = true;
                next_rescan = now + rescan_every;
            }
            let retry_due = retry_at.is_some_and(|t| now >= t);
            if retry_due {
                retry_at = None;
                full_due = true;
            }
            // Offline, only a retry tries the server (and finds out if it
            // is back); events wait.
            if batch_until.is_some_and(|t| now < t) || (!online && !retry_due) {
                continue;
            }
            batch_until = None;
            let quiet = now >= last_event + self.opts.settle;
            let mut ready: BTreeSet<String> = pending
                .iter()
                .filter(|(_, (t, settled))| *settled || (quiet && now >= *t + self.opts.settle))
                .map(|(rel, _)| rel.clone())
                .collect();
            for (rel, r) in recheck.iter_mut().filter(|(_, r)| now >= r.at) {
                // A file still being written is looked at once it has not
                // been modified for `settle`.
                match r.busy.then(|| self.young(rel)).flatten() {
                    Some(until) => r.at = until.max(now + BATCH),
                    None => {
                        ready.insert(rel.clone());
                    }
                }
            }
            if !full_due && ready.is_empty() && !remote_dirty {
                continue;
            }
            for rel in &ready {
                pending.remove(rel);
                recheck.remove(rel);
            }
            // Everything still waiting is left alone by this pass: a path
            // with a change not yet settled must not be planned from what
            // the engine saw of it before that change.
            let hold: BTreeSet<String> = pending.keys().chain(recheck.keys()).cloned().collect();
            let scope = if full_due { None } else { Some(ready.clone()) };
            full_due = false;
            remote_dirty = false;
            let report = self.pass(scope, Some(self.opts.settle), &hold).await?;
            let now = Instant::now();
            if !report.offline {
                online = true;
            }
            for rel in &report.busy_paths {
                recheck.insert(
                    rel.clone(),
                    Recheck {
                        at: now + self.opts.settle,
                        busy: true,
                    },
                );
            }
            let failed: BTreeSet<&String> = report.failed.iter().collect();
            for rel in &failed {
                let n = failing.entry((*rel).clone()).or_insert(0);
                let delay = remote::backoff(*n);
                *n += 1;
                tracing::debug!(path = %rel, retry_in = ?delay, "will look at it again");
                recheck.insert(
                    (*rel).clone(),
                    Recheck {
                        at: now + delay,
                        busy: false,
                    },
                );
            }
            // A path whose look came and went without failing is fine again.
            failing.retain(|rel, _| failed.contains(rel) || recheck.contains_key(rel));
            if report.offline {
                let delay = remote::backoff(retry_attempt);
                retry_attempt += 1;
                retry_at = Some(now + delay);
                online = false;
                tracing::warn!(retry_in = ?delay, "the server is unreachable; will retry");
            } else {
                retry_attempt = 0;
            }
            if !report.failed.is_empty() {
                tracing::warn!(
                    failed = report.failed.len(),
                    "some changes did not go through; will look at them again"
                );
            }
        }
    }

    /// Says (once) that not every folder can be watched: how many there
    /// are, what the system allows, and the command that raises it.
    async fn watch_limit_notice(&mut self, rescan_every: Duration) {
        let dir = self.opts.dir.clone();
        let count = tokio::task::spawn_blocking(move || watcher::folders(&dir).len())
            .await
            .unwrap_or(0);
        let system: Option<usize> =
            std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                .ok()
                .and_then(|s| s.trim().parse().ok());
        let allowed = match (self.opts.watch_limit, system) {
            (Some(limit), _) => format!("this sync may watch {limit}"),
            (None, Some(max)) => {
                format!("the system allows {max} per user in all (fs.inotify.max_user_watches)")
            }
            (None, None) => "the system's limit (fs.inotify.max_user_watches) is lower".into(),
        };
        // Room for the tree to grow and for other programs' watches.
        let suggest = (count * 2).max(system.unwrap_or(0) + count).max(65_536);
        let notice = format!(
            "{}: {count} folders need one inotify watch each, but {allowed}; changes in              the folders not watched are found by a full rescan every {} s until the limit              is raised: sudo sysctl fs.inotify.max_user_watches={suggest} (add              fs.inotify.max_user_watches={suggest} to /etc/sysctl.conf to keep it)",
            self.opts.dir.display(),
            rescan_every.as_secs().max(1),
        );
        tracing::warn!("{notice}");
        self.set_status(|s| s.watch_notice = Some(notice));
    }

    /// When a file seen as still being written will have been left alone
    /// long enough (`None`: it has, or it is gone).
    fn young(&self, rel: &str) -> Option<Instant> {
        let meta = std::fs::symlink_metadata(self.opts.dir.join(rel)).ok()?;
        let age = std::time::SystemTime::now()
            .duration_since(meta.modified().ok()?)
            .unwrap_or_default();
        (age < self.opts.settle).then(|| Instant::now() + (self.opts.settle - age))
    }

    /// Notes that the engine wrote the file `local`, so the events it
    /// raises are recognised as its own. Only files, whose stat (inode,
    /// size, mtime) names one version: not folders (a folder's event makes
    /// the engine walk it, and that walk is what finds files put into a
    /// new folder before the watcher watched it), and not removals (a path
    /// can be gone, come back and go again before the events are read; the
    /// simulation lost a user's folder rename to that). With `written`, the
    /// stat the engine left the file with: a file already changed since
    /// (by the user, before this is noted) is not taken for the engine's,
    /// or the user's change would be dropped as an echo.
    pub(super) fn expect_written(
        &mut self,
        local: &std::path::Path,
        written: Option<super::state::FileStat>,
    ) {
        let Ok(m) = std::fs::symlink_metadata(local) else {
            return;
        };
        if written.is_some_and(|w| w != super::scan::stat_of(&m)) {
            return;
        }
        let Some(rel) = local
            .strip_prefix(&self.opts.dir)
            .ok()
            .and_then(|r| r.to_str())
            .filter(|r| !r.is_empty() && m.is_file())
        else {
            return;
        };
        let now = Instant::now();
        if self.own.len() > 4096 {
            self.own.retain(|_, (_, at)| now < *at + OWN_FOR);
        }
        self.own
            .insert(rel.to_owned(), (super::scan::stat_of(&m), now));
    }

    /// True when `rel` is a file still exactly as the engine itself wrote
    /// it a moment ago: the event about it is the engine's own echo.
    fn is_own(&mut self, rel: &str) -> bool {
        let Some((stat, at)) = self.own.get(rel).copied() else {
            return false;
        };
        if at.elapsed() > OWN_FOR {
            self.own.remove(rel);
            return false;
        }
        std::fs::symlink_metadata(self.opts.dir.join(rel))
            .is_ok_and(|m| m.is_file() && super::scan::stat_of(&m) == stat)
    }

    /// One pass: refresh the local view (all of it, or just `scope`),
    /// plan, execute.
    /// Paths (relative, as on disk) in `hold` are left alone: neither read
    /// nor planned.
    pub(super) async fn pass(
        &mut self,
        scope: Option<BTreeSet<String>>,
        settle: Option<Duration>,
        hold: &BTreeSet<String>,
    ) -> Result<PassReport, SyncError> {
        // Gone, or replaced by another folder of the same name: stop rather
        // than read the absence of files as deletions.
        let same_folder = std::fs::metadata(&self.opts.dir)
            .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::ino(&m) == self.dir_inode);
        if !same_folder {
            return Err(SyncError::FolderGone(self.opts.dir.display().to_string()));
        }
        self.set_status(|s| {
            s.phase = SyncPhase::Syncing;
            s.passes += 1;
        });
        // New ignore rules (edited here, or downloaded): everything is
        // judged by them again.
        let scope = if self.scanner.reload_ignore() || std::mem::take(&mut self.remote_reset) {
            None
        } else {
            scope
        };
        // A first pass: nothing is known on this side, so every file found
        // that the server does not have is new there, whatever else the
        // tree holds; those are sent while the scan goes on. So is a first
        // pass an earlier run started and did not finish (stopped, killed,
        // the machine went down): the base then holds what it sent.
        let pipelined = scope.is_none()
            && hold.is_empty()
            && self.opts.mode != Mode::Pull
            && !self.scanned
            && (self.first_pass_unfinished || self.state.base_each(|_, _| false)?);
        let full_scan = scope.is_none();
        let mut slice_transfers = 0;
        // Where the server view and the base differ, for a full pass's
        // plan (see `disagreeing`): read from the state database beside
        // the scan, which does not write it.
        let mut differing = None;
        let scope = if pipelined {
            if !self.first_pass_unfinished {
                self.state.write(&[StateWrite::FirstPass(true)])?;
                self.first_pass_unfinished = true;
            }
            let (view, sent) = self.pipelined_scan(settle).await?;
            self.local = view;
            slice_transfers = sent;
            scope
        } else {
            let scanner = self.scanner.clone();
            // The base is read by the scan through its own connection.
            let base = match self.reader.take() {
                Some(r) => r,
                None => self.state.reader()?,
            };
            let views = match &scope {
                None => {
                    let views = self.state.views_reader()?;
                    Some(tokio::task::spawn_blocking(move || views.differing()))
                }
                Some(_) => None,
            };
            // Moved into the scan and back rather than copied: with 100,000
            // files every copy of a view costs megabytes.
            let mut view = std::mem::take(&mut self.local);
            let (view, scope, base) = tokio::task::spawn_blocking(move || {
                match &scope {
                    None => view = scanner.full(std::mem::take(&mut view), &base, settle, None),
                    Some(rels) => scanner.refresh(&mut view, rels, &base, settle),
                }
                (view, scope, base)
            })
            .await
            .map_err(|e| SyncError::Local {
                path: self.opts.dir.display().to_string(),
                error: std::io::Error::other(e),
            })?;
            self.local = view;
            self.reader = Some(base);
            if let Some(views) = views {
                differing = Some(views.await.map_err(|e| SyncError::Local {
                    path: self.opts.dir.display().to_string(),
                    error: std::io::Error::other(e),
                })??);
            }
            scope
        };
        if full_scan {
            self.scanned = true;
        }
        let scan_peak = self.local.held_peak as u64;
        self.set_status(|s| s.scan_peak = s.scan_peak.max(scan_peak));
        if let Some(e) = self.local.root_error.take() {
            return Err(SyncError::Local {
                path: e,
                error: std::io::Error::other("the synced folder cannot be read"),
            });
        }
        // What an incremental pass plans: the paths its events named
        // (a folder with everything known inside it) and those the server
        // changed. A folder emptied on either side is planned whole, so
        // the safety stop judges it as before.
        // A full pass plans the paths where the three views disagree
        // (found by one merge of the sorted views, see `disagreeing`):
        // its plan is the plan of every path, and on a tree in sync it
        // plans nothing.
        let focus = match scope.as_ref() {
            Some(rels) => self.focus_of(rels)?,
            None => None,
        };
        let full = focus.is_none();
        let focus = match focus {
            Some(f) => f,
            None => self.disagreeing(hold, differing)?,
        };
        let planned = focus.len();
        if full {
            self.touched.clear();
        }
        let examined = (self.local.examined + planned) as u64;
        self.set_status(|s| {
            s.examined += examined;
            if full {
                s.full_passes += 1;
            }
        });
        let plan = self.plan(hold, focus, full)?;
        tracing::debug!(
            examined,
            full,
            files = self.local.files.len(),
            left_alone = self.local.unreadable.len(),
            operations = plan.operations.len(),
            "scanned and planned"
        );
        if let Some(why) = plan.refused {
            return Err(SyncError::SafetyStop(format!(
                "{}: {why}",
                self.opts.dir.display()
            )));
        }
        let only_uploads = plan
            .operations
            .iter()
            .all(|op| matches!(op, Operation::Upload { .. } | Operation::SetBase { .. }));
        // What the plan's own steps record agrees on every side already:
        // not worth planning again. (Folders a rename re-listed are: they
        // can hold others' files, which `relisted` brings.)
        let touched = std::mem::take(&mut self.touched);
        let result = self.execute(plan).await;
        // Content not used by this pass is not trusted for a later one.
        self.inline.clear();
        self.touched = touched;
        self.touched.append(&mut self.relisted);
        let mut report = result?;
        // A full pass that reached the server has done what a first pass
        // does: the next start need not send as it scans.
        if full_scan && self.first_pass_unfinished && !report.offline {
            self.state.write(&[StateWrite::FirstPass(false)])?;
            self.first_pass_unfinished = false;
        }
        report.transfers += slice_transfers;
        report.busy = self.local.busy;
        report.busy_paths = std::mem::take(&mut self.local.busy_paths);
        self.sweep_parts();
        self.compact_local()?;
        report.only_uploads = only_uploads;
        let views_held = self.state.held_peak() as u64;
        let local_held = (self.local.files.len() + self.local.deleted.len()) as u64;
        self.set_status(|s| {
            s.views_held = views_held;
            s.local_held = local_held;
            s.phase = SyncPhase::Idle;
            s.pending = 0;
            s.in_flight = 0;
            s.bytes_pending = 0;
            let now = std::time::SystemTime::now();
            s.last_pass = Some(now);
            if report.failures.is_empty() {
                s.last_error = None;
                s.last_success = Some(now);
            } else {
                s.last_error = report.failures.last().cloned();
            }
        });
        Ok(report)
    }

    /// The scan of a first pass, with new files sent slice by slice while
    /// it goes on (a pipeline: walking and hashing on the blocking pool,
    /// sending here, the server committing each batch as it comes). The
    /// scan waits when [`SLICES_QUEUED`] slices are waiting, so what is
    /// held between scanning and sending is bounded by the slice size,
    /// not by the tree. Each slice is planned by the core planner on its
    /// own paths only, with nothing on the server or in the base there
    /// (paths the server has are left to the pass's own full plan); a step
    /// that fails is planned again by that full plan. Returns the scan's
    /// whole view and how many transfers the slices made.
    ///
    /// The base (empty, or what an unfinished first pass sent) is lent to
    /// the scan, which does not read again the files it holds unchanged;
    /// what the slices record meanwhile joins it afterwards.
    async fn pipelined_scan(
        &mut self,
        settle: Option<Duration>,
    ) -> Result<(LocalView, usize), SyncError> {
        let held = Arc::new(super::scan::Held::default());
        let (tx, mut rx) = mpsc::channel(SLICES_QUEUED);
        let size = self.opts.first_pass_slice.max(1);
        let sink = super::scan::SliceSink {
            tx,
            size,
            next: size.min(FIRST_SLICE_START),
            keep: super::scan::KEEP_TOTAL_MAX / (SLICES_QUEUED as u64 + 2),
            held: held.clone(),
        };
        let scanner = self.scanner.clone();
        // The scan reads the base (empty, or what an unfinished first pass
        // sent) through its own connection, while the slices record what
        // they send through the engine's.
        let base = self.state.reader()?;
        let scan = tokio::task::spawn_blocking(move || {
            scanner.full(LocalView::default(), &base, settle, Some(sink))
        });
        let sent = self.send_slices(&mut rx, &held).await;
        // Whatever happened, the scan hands on no more slices.
        drop(rx);
        let view = scan.await.map_err(|e| SyncError::Local {
            path: self.opts.dir.display().to_string(),
            error: std::io::Error::other(e),
        });
        let transfers = sent?;
        let view = view?;
        let peak = held.peak() as u64;
        self.set_status(|s| s.unsent_peak = s.unsent_peak.max(peak));
        tracing::debug!(
            transfers,
            peak,
            files = view.files.len(),
            "first pass sent while scanning"
        );
        Ok((view, transfers))
    }

    /// Sends the slices of a pipelined scan as they come (see
    /// `pipelined_scan`). Returns how many transfers they made.
    async fn send_slices(
        &mut self,
        rx: &mut mpsc::Receiver<super::scan::Slice>,
        held: &super::scan::Held,
    ) -> Result<usize, SyncError> {
        let mut transfers = 0;
        let mut offline = false;
        while let Some(slice) = rx.recv().await {
            let n = slice.files.len();
            // Offline: the rest is only scanned; the full plan reports it.
            if !offline {
                let report = self.send_slice(slice).await;
                // Whatever happened, the slice is no longer held.
                held.done(n);
                let report = report?;
                // The pass's own full plan looks at everything: what the
                // slices recorded need not wait in `touched` meanwhile.
                self.touched.clear();
                transfers += report.transfers;
                offline = report.offline;
                self.set_status(|s| s.first_pass_slices += 1);
            } else {
                held.done(n);
            }
        }
        Ok(transfers)
    }

    /// Plans and sends one slice of a first pass: its files that are
    /// neither on the server nor in the base (what an unfinished first
    /// pass sent, or the slices before it), as new files.
    async fn send_slice(&mut self, slice: super::scan::Slice) -> Result<PassReport, SyncError> {
        let rules = self.scanner.ignore();
        // A first sync to an empty server (the common case) asks nothing
        // per file; otherwise one look-up of each path (and in the base,
        // when a first pass resumes or the slices before it sent some).
        let server_empty = self.state.remote_each(|_, _| false)?;
        let base_empty = self.state.base_each(|_, _| false)?;
        let mut kept = Vec::with_capacity(slice.files.len());
        for (p, e) in slice.files {
            let known = (!server_empty && self.state.remote_get(&p)?.is_some())
                || (!base_empty && self.state.base_get(&p)?.is_some());
            if !known {
                kept.push((p, e));
            }
        }
        let files: BTreeMap<RemotePath, super::scan::LocalEntry> = kept
            .into_iter()
            .filter(|(p, _)| !rules.is_ignored(p.as_str(), false) && p.as_str() != IGNORE_FILE)
            .collect();
        if files.is_empty() {
            return Ok(PassReport::default());
        }
        let input = SyncInput {
            focus: Some(files.keys().cloned().collect()),
            local: files,
            // Nothing there for these paths, as filtered above.
            remote: BTreeMap::new(),
            base: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            held: BTreeSet::new(),
            ignored: BTreeSet::new(),
            mode: self.opts.mode,
            host: self.opts.host.clone(),
            stamp: stamp(std::time::SystemTime::now()),
        };
        let plan = plan(&input);
        let operations: Vec<Operation> = plan
            .operations
            .into_iter()
            .filter(|op| matches!(op, Operation::Upload { .. }))
            .collect();
        // The executor works on the engine's local view: for this slice,
        // the slice (the scan's view replaces it when the scan is done).
        self.local = LocalView {
            files: input.local,
            contents: slice.contents,
            ..LocalView::default()
        };
        self.execute(SyncPlan {
            operations,
            refused: None,
        })
        .await
    }

    /// The focus of an incremental pass over `rels` (relative, as on
    /// disk), taking the paths the server changed; `None` when the pass
    /// must plan everything: a side that may be empty (the safety stop
    /// needs the whole picture).
    fn focus_of(
        &mut self,
        rels: &BTreeSet<String>,
    ) -> Result<Option<BTreeSet<RemotePath>>, SyncError> {
        let rules = self.scanner.ignore();
        // Each test stops at the first file that is not the ignore file /
        // not ignored: O(1) for any folder with files in it.
        let local_empty = self.local_is_empty()?;
        let remote_empty = self
            .state
            .remote_each(|p, _| rules.is_ignored(p.as_str(), false))?;
        if local_empty || remote_empty {
            return Ok(None);
        }
        let mut focus = std::mem::take(&mut self.touched);
        for rel in rels {
            let Ok(at) = RemotePath::normalized(rel) else {
                continue;
            };
            focus.extend(self.known_at_or_inside(&at)?);
            focus.insert(at);
        }
        Ok(Some(focus))
    }

    /// Every path at `at` or inside it that a view holds: range queries
    /// (the server view's in the state database), so the cost follows
    /// the folder, not the tree.
    fn known_at_or_inside(&self, at: &RemotePath) -> Result<Vec<RemotePath>, SyncError> {
        let mut found: Vec<RemotePath> =
            distribusync_core::path::at_or_inside(&self.local.files, at)
                .map(|(p, _)| p)
                .cloned()
                .collect();
        found.extend(self.state.remote_inside(at)?.into_keys());
        found.extend(self.state.base_inside(at)?.into_keys());
        Ok(found)
    }

    /// The focus of a full pass: every path whose entries in the three
    /// views do not all agree (the same content, revision and size on
    /// every side), plus everything at or inside a path held this time.
    /// A path on which all sides agree makes no step and takes part in no
    /// other's (see `distribusync_core::sync::plan_with`), so planning
    /// these alone is the full plan. A file this folder ignores is never
    /// in the local view (the scan skips it), so every ignored path the
    /// server or the base holds is here too, and the planner's
    /// "ignored" and "is the server empty?" see all of them.
    fn disagreeing(
        &self,
        hold: &BTreeSet<String>,
        differing: Option<Vec<RemotePath>>,
    ) -> Result<BTreeSet<RemotePath>, SyncError> {
        let mut out = match differing {
            Some(d) => self.disagreeing_with(d)?,
            None => self.disagreeing_merged()?,
        };
        for rel in hold {
            let Ok(at) = RemotePath::normalized(rel) else {
                continue;
            };
            out.extend(self.known_at_or_inside(&at)?);
        }
        Ok(out)
    }

    /// [`Self::disagreeing`] from where the server view and the base
    /// differ (`differing`, read beside the scan): those paths, the paths
    /// still pending a write, and the local view's own entries that do
    /// not agree with both, each looked up by path. The cost follows the
    /// view (what differs on disk), not the tree.
    fn disagreeing_with(
        &self,
        differing: Vec<RemotePath>,
    ) -> Result<BTreeSet<RemotePath>, SyncError> {
        let mut out: BTreeSet<RemotePath> = differing.into_iter().collect();
        out.extend(self.state.pending_paths().cloned());
        for (p, e) in &self.local.files {
            if out.contains(p) {
                continue;
            }
            let agree = match (self.state.remote_get(p)?, self.state.base_get(p)?) {
                (Some(rf), Some(bf)) => {
                    e.hash == bf.hash
                        && rf.hash == bf.hash
                        && (rf.revision, rf.size) == (bf.revision, bf.size)
                }
                _ => false,
            };
            if !agree {
                out.insert(p.clone());
            }
        }
        for p in &self.local.deleted {
            if !self.local.files.contains_key(p)
                && (self.state.remote_get(p)?.is_some() || self.state.base_get(p)?.is_some())
            {
                out.insert(p.clone());
            }
        }
        Ok(out)
    }

    /// [`Self::disagreeing`] by one merge of the local view with both
    /// views in the database (a first pass, whose view holds every file).
    fn disagreeing_merged(&self) -> Result<BTreeSet<RemotePath>, SyncError> {
        let mut out = BTreeSet::new();
        let mut l = self.local.files.iter().peekable();
        // One merge of the local view with the server view and the base,
        // both read in path order from the state database: no look-ups, no
        // copies, a row of each held at a time. Only a path all three
        // hold can agree.
        // A path the local view does not hold (nor mark as gone) is on
        // disk as the base records it (see `scan`).
        let deleted = &self.local.deleted;
        self.state.both_each(|path, re, be| {
            while let Some((p, _)) = l.next_if(|(p, _)| *p < path) {
                out.insert(p.clone());
            }
            let le = match l.next_if(|(p, _)| *p == path) {
                Some((_, v)) => Some(v.hash),
                None if deleted.contains(path) => None,
                None => be.map(|b| b.hash),
            };
            let agree = match (le, re, be) {
                (Some(lh), Some(rf), Some(bf)) => {
                    lh == bf.hash
                        && rf.hash == bf.hash
                        && (rf.revision, rf.size) == (bf.revision, bf.size)
                }
                _ => false,
            };
            if !agree {
                out.insert(path.clone());
            }
            true
        })?;
        out.extend(l.map(|(p, _)| p.clone()));
        Ok(out)
    }

    fn plan(
        &mut self,
        hold: &BTreeSet<String>,
        focus: BTreeSet<RemotePath>,
        full: bool,
    ) -> Result<SyncPlan, SyncError> {
        let now = std::time::SystemTime::now();
        // Files on the server (or in the base) that this folder ignores are
        // never touched: the scan cannot see them, which must not read as
        // a deletion. (A pass only plans its focus, which holds every
        // ignored path the views have: see `disagreeing`, `focus_of`.)
        let rules = self.scanner.ignore();
        let ignored = focus
            .iter()
            .filter(|p| rules.is_ignored(p.as_str(), false))
            .cloned()
            .collect();
        let mut unreadable = self.local.unreadable.clone();
        let mut held = BTreeSet::new();
        if !hold.is_empty() {
            // Each held path (a file or a folder), and whether it is on
            // disk: only then is it evidence that the folder is not empty.
            let roots: BTreeMap<RemotePath, bool> = hold
                .iter()
                .filter_map(|r| {
                    let exists = std::fs::symlink_metadata(self.opts.dir.join(r)).is_ok();
                    RemotePath::normalized(r).ok().map(|p| (p, exists))
                })
                .collect();
            let held_as = |p: &RemotePath| {
                roots
                    .get(p)
                    .or_else(|| p.ancestors().iter().find_map(|a| roots.get(a)))
                    .copied()
            };
            for p in &focus {
                match held_as(p) {
                    Some(true) => {
                        unreadable.insert(p.clone());
                    }
                    Some(false) => {
                        held.insert(p.clone());
                    }
                    None => {}
                }
            }
        }
        // Paths left alone this time are planned again next time: what the
        // server changed there (a folder renamed while a deletion in it
        // settles) must not wait for the next full rescan.
        if !hold.is_empty() && !full {
            self.touched.extend(focus.iter().cloned());
        }
        // The server's and the base's entries of the paths planned: all
        // the planner reads of those views beyond what `DbViews` answers
        // (see `plan_with`), so a plan holds what it plans, not the tree.
        let (mut remote, mut base) = (BTreeMap::new(), BTreeMap::new());
        for p in &focus {
            if let Some(f) = self.state.remote_get(p)? {
                remote.insert(p.clone(), f);
            }
            if let Some(b) = self.state.base_get(p)? {
                base.insert(p.clone(), b);
            }
        }
        self.state.note_held(remote.len() + base.len());
        // The local entries of the paths planned that are on disk as the
        // base records them: taken out of the base for this pass (and
        // dropped again by `compact_local` once it is done).
        for (p, b) in &base {
            if !self.local.files.contains_key(p) && !self.local.deleted.contains(p) {
                self.local.files.insert(
                    p.clone(),
                    super::scan::LocalEntry {
                        size: b.size,
                        stat: b.stat,
                        hash: b.hash,
                        disk_name: None,
                    },
                );
            }
        }
        let input = SyncInput {
            // Lent to the planner and taken back below.
            local: std::mem::take(&mut self.local.files),
            remote,
            base,
            unreadable,
            held,
            ignored,
            mode: self.opts.mode,
            host: self.opts.host.clone(),
            stamp: stamp(now),
            focus: Some(focus),
        };
        let plan = plan_with(
            &input,
            &DbViews {
                input: &input,
                deleted: &self.local.deleted,
                state: &self.state,
                rules: &rules,
            },
        );
        self.local.files = input.local;
        let peak = self.state.held_peak() as u64;
        self.set_status(|s| s.views_held = peak);
        Ok(plan)
    }

    /// True when the local view holds nothing but the ignore file.
    fn local_is_empty(&self) -> Result<bool, SyncError> {
        Ok(local_is_empty(
            &self.local.files,
            &self.local.deleted,
            &self.state,
        )?)
    }

    /// The content hash of the local file at `path` as the view knows it
    /// (its own entry, else the base's unless marked gone).
    fn local_hash(&self, path: &RemotePath) -> Option<ContentHash> {
        if let Some(e) = self.local.files.get(path) {
            return Some(e.hash);
        }
        if self.local.deleted.contains(path) {
            return None;
        }
        self.state.base_get(path).ok().flatten().map(|b| b.hash)
    }

    /// Drops from the local view what agrees with the base again (see
    /// `scan`): an entry with the base's content (whose stat the base
    /// takes, when only that differs: a file touched), a deletion marker
    /// whose path the base no longer holds or the view holds again. What
    /// stays is what differs: a file changed and not sent yet, one left
    /// for later, a deletion not carried out. Costs a look-up per entry
    /// the view holds, never a pass over the tree.
    fn compact_local(&mut self) -> Result<(), SyncError> {
        let files = std::mem::take(&mut self.local.files);
        let mut deleted = std::mem::take(&mut self.local.deleted);
        let mut gone = Vec::new();
        for p in &deleted {
            if files.contains_key(p) || self.state.base_get(p)?.is_none() {
                gone.push(p.clone());
            }
        }
        for p in gone {
            deleted.remove(&p);
        }
        let mut kept = BTreeMap::new();
        let mut writes = Vec::new();
        for (p, e) in files {
            let base = match e.disk_name {
                Some(_) => None,
                None if self.local.unreadable.contains(&p) => None,
                None => self.state.base_get(&p)?,
            };
            match base {
                Some(b) if b.hash == e.hash && b.size == e.size => {
                    if b.stat != e.stat {
                        let b = super::state::BaseEntry { stat: e.stat, ..b };
                        writes.push(StateWrite::Base(p, Some(b)));
                        if writes.len() >= PAGE {
                            self.state.write(&writes)?;
                            writes.clear();
                        }
                    }
                }
                _ => {
                    kept.insert(p, e);
                }
            }
        }
        if !writes.is_empty() {
            self.state.write(&writes)?;
        }
        self.local.files = kept;
        self.local.deleted = deleted;
        Ok(())
    }

    /// Removes the partial downloads known (see `parts`) that no download
    /// will continue: the server no longer has that version for that
    /// name, or the file already holds it. (Called at the end of a pass:
    /// no download is under way.)
    fn sweep_parts(&mut self) {
        self.parts.extend(std::mem::take(&mut self.local.parts));
        for rel in std::mem::take(&mut self.parts) {
            let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
            let target = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(super::scan::PART_SUFFIX))
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(file, hash)| {
                    let path = if dir.is_empty() {
                        file.to_owned()
                    } else {
                        format!("{dir}/{file}")
                    };
                    RemotePath::normalized(&path).ok().map(|p| (p, hash))
                });
            // (A read that fails keeps the part: the next pass looks again.)
            let wanted = target.is_some_and(|(p, hash)| match self.state.remote_get(&p) {
                Ok(r) => r.is_some_and(|r| {
                    r.hash.to_hex().starts_with(hash)
                        && self.local_hash(&p).is_none_or(|l| r.hash != l)
                }),
                Err(_) => true,
            });
            let local = self.opts.dir.join(&rel);
            if wanted {
                if local.exists() {
                    self.parts.insert(rel);
                }
            } else {
                match std::fs::remove_file(&local) {
                    Ok(()) => {
                        tracing::debug!(part = %rel, "removed a partial download no longer wanted")
                    }
                    Err(e) => {
                        tracing::debug!(part = %rel, error = %e, "could not remove a partial download")
                    }
                }
            }
        }
    }

    /// Records server-side changes in the remote view, a page of writes
    /// per transaction ([`PAGE`]: what the overlay holds stays bounded
    /// however many changes one read of the log brings, e.g. a restart
    /// reading back the thousands a first sync made). Returns how many
    /// changes were news: not already known, as the engine's own changes
    /// are from the replies to them (in this run: `seen`; after a restart:
    /// the view already holds exactly that entry).
    pub(super) fn apply_remote(&mut self, msgs: Vec<RemoteMsg>) -> Result<usize, SyncError> {
        tracing::debug!(changes = msgs.len(), "server changes");
        let mut writes = Vec::new();
        let mut news = 0;
        for msg in msgs {
            match msg {
                RemoteMsg::Change(c) => {
                    let seq = c.seq;
                    match c.kind {
                        ChangeKind::Put(info) => {
                            let file = RemoteFile {
                                revision: info.revision,
                                hash: info.hash,
                                size: info.size,
                            };
                            let new =
                                self.remote_change(&info.path, Some(file), seq, &mut writes)?;
                            news += new;
                            match c.content {
                                Some(data) if new > 0 && self.inline.len() < INLINE_KEPT => {
                                    self.inline.insert(info.path.clone(), (info, data));
                                }
                                _ => {}
                            }
                        }
                        ChangeKind::Delete(path) => {
                            news += self.remote_change(&path, None, seq, &mut writes)?;
                        }
                        ChangeKind::Rename {
                            from, to, revision, ..
                        } => {
                            news += self.move_remote(&from, &to, revision, seq, &mut writes)?;
                        }
                    }
                    self.last_seq = self.last_seq.max(seq);
                    if writes.len() >= PAGE {
                        writes.push(StateWrite::LastSeq(self.last_seq));
                        self.state.write(&writes)?;
                        writes.clear();
                    }
                }
                RemoteMsg::Snapshot(all, seq) => {
                    self.remote_reset = true;
                    self.seen.clear();
                    // Replaces the whole view (and what this burst set
                    // before it), written at once: later changes of the
                    // burst read it from the database.
                    writes.clear();
                    writes.push(StateWrite::ClearRemote);
                    news += all.len();
                    for f in all {
                        let file = RemoteFile {
                            revision: f.revision,
                            hash: f.hash,
                            size: f.size,
                        };
                        writes.push(StateWrite::Remote(f.path, Some(file)));
                    }
                    self.last_seq = seq;
                    writes.push(StateWrite::LastSeq(seq));
                    self.state.write(&writes)?;
                    writes.clear();
                }
                RemoteMsg::CaughtUp | RemoteMsg::Offline(_) => {}
            }
        }
        writes.push(StateWrite::LastSeq(self.last_seq));
        self.state.write(&writes)?;
        // Guards at or below last_seq are spent: the stream is past them.
        if self.seen.len() > 4096 {
            let floor = self.last_seq;
            self.seen.retain(|_, seq| *seq > floor);
        }
        Ok(news)
    }

    /// Sets one path of the remote view, unless a newer change already
    /// did; true when it did set it.
    pub(super) fn set_remote(
        &mut self,
        path: &RemotePath,
        file: Option<RemoteFile>,
        seq: u64,
        writes: &mut Vec<StateWrite>,
    ) -> bool {
        if self.seen.get(path).is_some_and(|s| *s >= seq) {
            return false;
        }
        self.seen.insert(path.clone(), seq);
        self.touched.insert(path.clone());
        writes.push(StateWrite::Remote(path.clone(), file.clone()));
        self.state.stage_remote(path, file);
        true
    }

    /// A change read from the log: set as [`SyncEngine::set_remote`] does,
    /// unless the view already holds that change or a later one at the
    /// path (an entry's revision is the sequence of the change that made
    /// it): the engine's own changes, recorded from the replies and read
    /// back after a restart (when `seen` is empty), or older changes to a
    /// path changed again since. Then nothing is staged, written or
    /// planned. Returns 1 when it was news.
    fn remote_change(
        &mut self,
        path: &RemotePath,
        file: Option<RemoteFile>,
        seq: u64,
        writes: &mut Vec<StateWrite>,
    ) -> Result<usize, StateError> {
        if self.seen.get(path).is_some_and(|s| *s >= seq) {
            return Ok(0);
        }
        let held = self.state.remote_get(path)?;
        if held == file || held.is_some_and(|h| h.revision >= seq) {
            self.seen.insert(path.clone(), seq);
            return Ok(0);
        }
        Ok(usize::from(self.set_remote(path, file, seq, writes)))
    }

    /// Moves `from` (a file, or everything inside a folder) to `to` in the
    /// remote view, with the rename's revision; returns how many entries
    /// it set. A page of the folder at a time, each written once it fills
    /// a page of writes ([`PAGE`]), so a folder of any size holds about a
    /// page in memory (the writes before the last page may be written
    /// before the caller's own transaction: each is a fact the server
    /// already committed).
    pub(super) fn move_remote(
        &mut self,
        from: &RemotePath,
        to: &RemotePath,
        revision: u64,
        seq: u64,
        writes: &mut Vec<StateWrite>,
    ) -> Result<usize, StateError> {
        let mut set = 0;
        let mut after: Option<RemotePath> = None;
        loop {
            let page = self.state.remote_inside_page(from, after.as_ref(), PAGE)?;
            for (old, f) in page.entries {
                let Some(new) = old.rebase(from, to) else {
                    continue;
                };
                if self.seen.get(&old).is_some_and(|s| *s >= seq) {
                    continue;
                }
                self.set_remote(&old, None, seq, writes);
                self.set_remote(&new, Some(RemoteFile { revision, ..f }), seq, writes);
                set += 2;
            }
            if writes.len() >= PAGE {
                self.state.write(writes)?;
                writes.clear();
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(set),
            }
        }
    }
}

/// The planner's whole-view questions (see `distribusync_core::sync::Views`)
/// answered from the engine's views: the local view from the input's map
/// (lent whole), the server view and the base from the state database.
/// A read that fails gives the cautious answer (a name taken, a folder not
/// wholly moved, the server empty: the safety stop), never a step that
/// could lose a file.
struct DbViews<'a> {
    input: &'a SyncInput,
    /// The local view's deletion markers (its `files` are the input's).
    deleted: &'a BTreeSet<RemotePath>,
    state: &'a State,
    rules: &'a super::ignore::IgnoreRules,
}

impl DbViews<'_> {
    fn cautious<T>(&self, r: Result<T, StateError>, cautious: T) -> T {
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the server view; planning cautiously");
            cautious
        })
    }
}

impl Views for DbViews<'_> {
    fn contains(&self, side: Side, path: &RemotePath) -> bool {
        match side {
            Side::Remote => self.cautious(self.state.remote_get(path).map(|f| f.is_some()), true),
            Side::Base => self.cautious(self.state.base_get(path).map(|f| f.is_some()), true),
            Side::Local => {
                self.input.local.contains_key(path)
                    || (!self.deleted.contains(path)
                        && self.cautious(self.state.base_get(path).map(|f| f.is_some()), true))
            }
        }
    }

    fn count_inside(&self, side: Side, dir: &RemotePath) -> u64 {
        match side {
            Side::Remote => self.cautious(self.state.remote_count_inside(dir), u64::MAX),
            Side::Base => self.cautious(self.state.base_count_inside(dir), u64::MAX),
            Side::Local => self.cautious(
                local_count_inside(&self.input.local, self.deleted, self.state, dir),
                u64::MAX,
            ),
        }
    }

    fn holds_inside(&self, side: Side, dir: &RemotePath) -> bool {
        self.count_inside(side, dir) > 0
    }

    fn local_is_empty(&self) -> bool {
        self.cautious(
            local_is_empty(&self.input.local, self.deleted, self.state),
            false,
        )
    }

    fn remote_is_empty(&self) -> bool {
        // Stops at the first file this folder does not ignore.
        let rules = self.rules;
        self.cautious(
            self.state
                .remote_each(|p, _| rules.is_ignored(p.as_str(), false)),
            true,
        )
    }

    fn synced(&self) -> u64 {
        // Asked only when a side looks empty (the safety stop): a pass
        // over the base then, counting what this folder does not ignore.
        let (rules, mut n) = (self.rules, 0u64);
        let counted = self.state.base_each(|p, _| {
            if !rules.is_ignored(p.as_str(), false) {
                n += 1;
            }
            true
        });
        // Unreadable: as many as it takes to stop.
        self.cautious(counted.map(|_| n), u64::MAX)
    }
}

/// How many paths the local view holds strictly inside `dir`: the base's
/// count, with the view's own files and deletion markers laid over it
/// (both small: see `scan`), so the cost follows what differs.
fn local_count_inside(
    files: &BTreeMap<RemotePath, super::scan::LocalEntry>,
    deleted: &BTreeSet<RemotePath>,
    state: &State,
    dir: &RemotePath,
) -> Result<u64, StateError> {
    let mut n = state.base_count_inside(dir)?;
    for (p, _) in distribusync_core::path::at_or_inside(files, dir) {
        if p != dir && state.base_get(p)?.is_none() {
            n += 1;
        }
    }
    let lo = format!("{dir}/");
    for p in deleted
        .range::<str, _>((
            std::ops::Bound::Included(lo.as_str()),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|p| p.as_str().starts_with(&lo))
    {
        if !files.contains_key(p) && state.base_get(p)?.is_some() {
            n = n.saturating_sub(1);
        }
    }
    Ok(n)
}

/// True when the local view holds nothing but the ignore file: its own
/// files, then the base's paths not marked gone (stops at the first).
fn local_is_empty(
    files: &BTreeMap<RemotePath, super::scan::LocalEntry>,
    deleted: &BTreeSet<RemotePath>,
    state: &State,
) -> Result<bool, StateError> {
    if !files.keys().all(|p| p.as_str() == IGNORE_FILE) {
        return Ok(false);
    }
    state.base_each(|p, _| p.as_str() == IGNORE_FILE || deleted.contains(p))
}

/// `yyyymmdd-hhmmss` in UTC, for conflict copy names.
pub(super) fn stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_civil_time() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_599_330);
        assert_eq!(stamp(t), "20261125-093530");
        assert_eq!(stamp(std::time::UNIX_EPOCH), "19700101-000000");
    }
}
