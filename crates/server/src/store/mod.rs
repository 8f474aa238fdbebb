//! The store: MASTER on disk plus its index, kept in step.
//!
//! Every mutation follows one path: lock the paths involved (see
//! [`crate::locks`]), check preconditions against the index, change the
//! disk durably, commit the index and change log in one transaction, then
//! announce the change to watchers. Uploads are staged and verified before
//! they take any lock, so a slow client never holds one.
//!
//! A store opened with [`Store::open_cluster`] is the other backend: each
//! operation then goes through [`Metadata`], [`ChangeFeed`] and [`Blobs`]
//! (PostgreSQL and S3, shared by several instances) instead, see
//! `store/cluster.rs`; only staging stays on this instance's disk.

mod backend;
mod blobs;
mod chunks;
mod cluster;
mod dav;
mod dav_locks;
mod delta;
mod disk;
mod flush;
mod index;
mod parts;
mod postgres;
mod queue;
mod upload;
mod view;

use std::path::Path;
use std::sync::Arc;

use distribusync_core::delta::Manifest;
use distribusync_core::{ContentHash, RemotePath, Revision, path::MAX_PATH_BYTES};
use tokio::sync::broadcast;

pub use backend::{
    BoxFuture, ChangeFeed, Committed, Metadata, NewVersion, RenameFacts, check_rename,
    check_rename_paths,
};
pub use blobs::{Blobs, BlobsConfig, Installed, S3Blobs, StoredChunk};
pub use chunks::{ChunkIndex, ChunkLocation};
pub use cluster::{
    COLLECT_GRACE, ClusterBackend, CollectReport, Content, ContentStream, PIN_TTL, chunk_stream,
    chunks_covering,
};
pub use dav::{Entry, FolderTimes};
pub use dav_locks::{LockLimits, LockPass, LockRecord, NewLock};
pub use delta::{DeltaHeader, DeltaSources, DeltaWrite, ManifestLoad};
pub use disk::Kind;
pub use index::backend::LocalMetadata;
pub use index::{ChangeOp, ChangeRecord, DeadProp, FileRecord};
pub use parts::KeptParts;
pub use postgres::{Notifications, PgFeed, PgMetadata, SCHEMA_VERSION};
pub use queue::{
    ClaimedJob, FinalState, JOBS_CHANNEL, JobOutcome, JobQueue, JobRecord, JobRow, JobSpec,
    JobState, KeptResults, LocalJobQueue, PgJobQueue, SubmitRefused,
};
pub use upload::{Upload, UploadHeader, verify};
pub use view::View;

use crate::error::{Result, ServiceError};
use crate::locks::PathLocks;
use disk::Disk;
use index::Index;

/// A staging file between its creation (or claim) on the blocking pool and
/// the [`Upload`] that takes it over. If the request goes away in between,
/// the file is removed, or, if it was a kept part being resumed, put back.
#[derive(Debug)]
struct StagedGuard {
    path: Option<std::path::PathBuf>,
    store: Store,
    kept_as: Option<(UploadHeader, i64)>,
}

impl StagedGuard {
    fn new(store: &Store, path: std::path::PathBuf, kept_as: Option<(UploadHeader, i64)>) -> Self {
        Self {
            path: Some(path),
            store: store.clone(),
            kept_as,
        }
    }

    /// Hands the file on; the guard no longer cares for it.
    fn take(mut self) -> std::path::PathBuf {
        self.path.take().expect("taken once")
    }
}

impl Drop for StagedGuard {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        let back = self.kept_as.as_ref().is_some_and(|(h, modified_ns)| {
            let disk = &self.store.inner.disk;
            disk.keep_partial(&path, &h.path, h.size, *modified_ns)
                .is_ok()
        });
        if !back {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The staging files of a batch not installed (yet): whatever ends the
/// batch early (a failed write, a full disk, a failed commit, a client that
/// goes away while it commits) removes them at once, not at the next start.
#[derive(Debug, Default)]
struct StagedFiles(Vec<std::path::PathBuf>);

impl Drop for StagedFiles {
    fn drop(&mut self) {
        // Small files (a batch holds at most 16 MiB): removed at once, so
        // the answer to the client comes after they are gone.
        for f in self.0.drain(..) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Limits and tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// How many change-log entries are kept for watchers.
    pub max_changes: u64,
    /// Most parts of interrupted uploads kept for resuming; the oldest go
    /// first (see `store/parts.rs`).
    pub max_kept_parts: usize,
    /// Most bytes those parts may hold together.
    pub max_kept_bytes: u64,
    /// Most file manifests computed at once (for delta transfers of files
    /// the index has none for): each holds three threads and up to ~32 MiB
    /// while it runs (see `store/delta.rs`). At least 1.
    pub max_manifests: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_file_size: distribusync_core::limits::DEFAULT_MAX_FILE_SIZE,
            max_changes: 1_000_000,
            max_kept_parts: 64,
            max_kept_bytes: 8 << 30,
            max_manifests: 2,
        }
    }
}

/// What the store holds (see [`Store::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Files and their bytes, as the index records them.
    pub files: u64,
    pub bytes: u64,
    /// The index's size on disk (database and write-ahead log).
    pub index_bytes: u64,
    /// Parts of interrupted uploads kept for resuming.
    pub kept: KeptParts,
    /// Manifests being computed now, and the most computed at once since
    /// the store opened (bounded by [`StoreConfig::max_manifests`]).
    pub manifests: delta::ManifestLoad,
}

/// A cheap, cloneable handle on the store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    disk: Disk,
    index: Index,
    locks: PathLocks,
    changes: broadcast::Sender<ChangeRecord>,
    config: StoreConfig,
    /// `config.max_file_size`, changeable while serving (a reload).
    max_file_size: std::sync::atomic::AtomicU64,
    /// The hash state of kept upload parts at their end, by part name: a
    /// resume continues from it instead of reading the part back (which
    /// the upload told the kernel not to cache). Only a shortcut: lost at a
    /// restart, and the whole file's hash is checked at the end anyway.
    part_hashes: std::sync::Mutex<PartHashes>,
    /// WebDAV locks, which every write obeys when it commits.
    dav_locks: dav_locks::DavLocks,
    /// The cluster backend, when the store is on one: files, revisions and
    /// contents are there, and `disk` and `index` hold only this
    /// instance's staging (see `store/cluster.rs`).
    cluster: Option<ClusterBackend>,
    /// Bounds the manifests computed at once ([`StoreConfig::max_manifests`]).
    manifests: delta::ManifestGate,
}

/// Hash state (and byte count) of kept upload parts, by part name.
type PartHashes = std::collections::HashMap<String, (u64, blake3::Hasher)>;

/// Most part hashes remembered (a few KiB each).
const PART_HASHES_MAX: usize = 1024;

/// Upload batches of up to this many files flush each file with its own
/// fsync instead of one `syncfs` of the whole filesystem (see
/// `upload_batch`).
const FSYNC_EACH_MAX: usize = 4;

/// Runs blocking store work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::io("blocking task", std::io::Error::other(e)))?
}

/// A folder rename moves every file inside it to a path `to.len() -
/// from.len()` bytes longer: refused before anything moves when the longest
/// of them would pass [`MAX_PATH_BYTES`], since no client could name the
/// result.
fn check_rebased_lengths(from: &RemotePath, to: &RemotePath, longest: Option<usize>) -> Result<()> {
    let Some(longest) = longest else {
        return Ok(());
    };
    let rebased = longest - from.as_str().len() + to.as_str().len();
    if rebased > MAX_PATH_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "cannot rename {} to {}: a file inside would get a path of {rebased} bytes, longer than {MAX_PATH_BYTES} bytes",
            from.shown(),
            to.shown()
        )));
    }
    Ok(())
}

fn check_revision(
    path: &RemotePath,
    current: Option<&FileRecord>,
    expected: Option<Revision>,
) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current = current.map_or(0, |f| f.revision);
    if current == expected {
        Ok(())
    } else {
        Err(ServiceError::RevisionMismatch {
            path: path.clone(),
            expected,
            current,
        })
    }
}

impl Store {
    /// Opens MASTER at `root` and reconciles the index with the disk: files
    /// added, changed or removed by hand while the server was down are
    /// recorded as changes.
    ///
    /// # Errors
    /// When the folder or the index cannot be opened.
    pub async fn open(root: &Path, config: StoreConfig) -> Result<Self> {
        Self::open_parts(root, config, None).await
    }

    /// [`Store::open`], or [`Store::open_cluster`] with `cluster`.
    async fn open_parts(
        root: &Path,
        config: StoreConfig,
        cluster: Option<ClusterBackend>,
    ) -> Result<Self> {
        let local = cluster.is_none();
        let shown = root.to_owned();
        let root = root.to_owned();
        let store = blocking(move || {
            let disk = Disk::open(&root)?;
            let index = Index::open(&disk.meta_dir().join("index.db"), config.max_changes)?;
            let dav_locks = dav_locks::DavLocks::new(index.load_locks()?);
            let (changes, _) = broadcast::channel(1024);
            Ok(Self {
                inner: Arc::new(Inner {
                    disk,
                    index,
                    locks: PathLocks::default(),
                    changes,
                    max_file_size: config.max_file_size.into(),
                    manifests: delta::ManifestGate::new(config.max_manifests),
                    config,
                    part_hashes: Default::default(),
                    dav_locks,
                    cluster,
                }),
            })
        })
        .await
        .map_err(|e| e.on_disk(&shown))?;
        if local {
            let s = store.clone();
            store.run(move || s.reconcile()).await?;
        }
        let s = store.clone();
        let kept = store.run(move || Ok(s.trim_kept_parts())).await?;
        tracing::info!(
            kept_parts = kept.count,
            kept_bytes = kept.bytes,
            "parts of interrupted uploads kept for resuming"
        );
        // Kept parts of interrupted uploads expire also while the server
        // runs; the task ends with the store.
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            every.tick().await; // the first tick is now: done at open
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || inner.disk.expire_partials()).await;
            }
        });
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        self.inner.disk.root()
    }

    /// Runs blocking store work on the blocking pool; an error of a full
    /// disk names the server's root.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        blocking(f).await.map_err(|e| e.on_disk(self.root()))
    }

    /// Completes the renames recorded as begun and not committed (the
    /// server stopped, or the commit failed, in between): one made on disk
    /// (its source gone, its target there) is recorded as the one rename it
    /// was; one not made is forgotten. Returns the changes recorded.
    ///
    /// With `only`, just the renames between those paths (which the caller
    /// holds locked): a rename of other paths may be in flight, between its
    /// disk rename and its own commit.
    fn complete_renames(&self, only: Option<&[RemotePath]>) -> Result<Vec<ChangeRecord>> {
        let Inner { disk, index, .. } = &*self.inner;
        let mut changes = Vec::new();
        let pending = index
            .pending_renames()?
            .into_iter()
            .filter(|r| only.is_none_or(|paths| paths.contains(&r.from) && paths.contains(&r.to)));
        for r in pending {
            let made = disk.kind(&r.from)? == Kind::Missing && disk.kind(&r.to)? != Kind::Missing;
            if made {
                let (change, files) = index.commit_rename(&r.from, &r.to, r.folder)?;
                tracing::info!(from = %r.from, to = %r.to, files, "completed a rename begun before a stop");
                changes.push(change);
            } else {
                index.drop_rename(r.id)?;
            }
        }
        Ok(changes)
    }

    fn reconcile(&self) -> Result<()> {
        // At start: nothing is in flight.
        self.complete_renames(None)?;
        let Inner { disk, index, .. } = &*self.inner;
        let known: std::collections::HashMap<RemotePath, FileRecord> = index
            .all_files()?
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        let walk = disk.walk();
        let mut seen = std::collections::HashSet::with_capacity(walk.files.len());
        let (mut added, mut changed, mut removed) = (0u64, 0u64, 0u64);
        for (path, meta) in &walk.files {
            let (path, meta) = (path.clone(), *meta);
            let old = known.get(&path);
            seen.insert(path.clone());
            if self
                .reconcile_one(&path, Some(&meta), old, false)?
                .is_some()
            {
                if old.is_some() {
                    changed += 1;
                } else {
                    added += 1;
                }
            }
        }
        // A file under a folder that could not be read is not known to be
        // gone: it stays in the index (the reconcile at the next start sees
        // it again).
        for path in known.keys().filter(|p| !seen.contains(*p)) {
            if walk.unknown(path) {
                continue;
            }
            index.commit_delete(path)?;
            removed += 1;
        }
        let folders = disk.prune_empty_folders();
        if added + changed + removed + folders as u64 > 0 {
            tracing::info!(
                added,
                changed,
                removed,
                empty_folders_removed = folders,
                "reconciled the index with MASTER"
            );
        }
        Ok(())
    }

    /// Records what the disk holds at `path` (`meta`: its metadata, `None`
    /// if nothing) where the index says `old`; the change, if one was made.
    /// With `rehash`, the file is hashed even when its size and modified
    /// time match the index (a repair: a new version may have kept both).
    fn reconcile_one(
        &self,
        path: &RemotePath,
        meta: Option<&disk::FileMeta>,
        old: Option<&FileRecord>,
        rehash: bool,
    ) -> Result<Option<ChangeRecord>> {
        let Inner { disk, index, .. } = &*self.inner;
        let Some(meta) = meta else {
            return match old {
                Some(_) => index.commit_delete(path).map(Some),
                None => Ok(None),
            };
        };
        let mtime = meta.modified_ns;
        if !rehash && old.is_some_and(|f| f.size == meta.len && f.modified_ns == mtime) {
            return Ok(None);
        }
        // Opened beneath the root like every read, never through a link.
        let hashed = disk.open_file(path).and_then(|f| {
            let mut hasher = blake3::Hasher::new();
            hasher
                .update_reader(f)
                .map_err(|e| ServiceError::io(path.to_string(), e))?;
            Ok(ContentHash::from(hasher.finalize()))
        });
        let hash = match hashed {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot read file in MASTER; skipped");
                return Ok(None);
            }
        };
        match old {
            Some(f) if f.hash == hash && f.size == meta.len => {
                index.touch(path, mtime)?;
                Ok(None)
            }
            _ => Ok(Some(index.commit_put(path, meta.len, hash, mtime)?.1)),
        }
    }

    /// After the disk changed but the index commit failed (an IO error, a
    /// locked database), brings the index in step with the disk for
    /// everything at or under `paths`, retrying (after 1 s, then backing
    /// off to 30 s) until it succeeds or the store is gone, so clients never keep seeing the old
    /// metadata of a file whose new content is in place.
    fn repair_later(&self, paths: Vec<RemotePath>) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut pause = std::time::Duration::from_secs(1);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                let targets: Vec<&RemotePath> = paths.iter().collect();
                let guard = store.inner.locks.lock(&targets).await;
                let s = store.clone();
                let p = paths.clone();
                let repaired = store.run(move || s.repair(&p)).await;
                drop(guard);
                match repaired {
                    Ok(changes) => {
                        tracing::info!(
                            files = changes.len(),
                            "index repaired after a failed commit"
                        );
                        for change in changes {
                            store.announce(change);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "index still out of step with the disk; retrying")
                    }
                }
                drop(store);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
        });
    }

    /// One attempt of [`Store::repair_later`].
    fn repair(&self, paths: &[RemotePath]) -> Result<Vec<ChangeRecord>> {
        // A rename whose commit failed is recorded as the rename it was.
        let mut changes = self.complete_renames(Some(paths))?;
        let Inner { disk, index, .. } = &*self.inner;
        let mut state: std::collections::BTreeMap<
            RemotePath,
            (Option<FileRecord>, Option<disk::FileMeta>),
        > = Default::default();
        for p in paths {
            for f in index.list_page(Some(p), None, u32::MAX)? {
                let path = f.path.clone();
                state.entry(path).or_default().0 = Some(f);
            }
            let walk = disk.walk_under(p);
            if let Some(unread) = walk.unread.first() {
                // Not known to be gone: try again later.
                let shown = unread
                    .as_ref()
                    .map_or_else(|| ".".to_owned(), |u| u.to_string());
                return Err(ServiceError::io(
                    shown,
                    std::io::Error::other("cannot read it to bring the index in step"),
                ));
            }
            for (path, meta) in walk.files {
                state.entry(path).or_default().1 = Some(meta);
            }
        }
        for (path, (old, meta)) in &state {
            changes.extend(self.reconcile_one(path, meta.as_ref(), old.as_ref(), true)?);
        }
        Ok(changes)
    }

    fn announce(&self, change: ChangeRecord) {
        // No receivers is fine: nobody is watching.
        let _ = self.inner.changes.send(change);
    }

    /// The largest file accepted now.
    pub fn max_file_size(&self) -> u64 {
        self.inner
            .max_file_size
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the largest file accepted, for uploads that start from now
    /// on (a reload: SIGHUP).
    pub fn set_max_file_size(&self, bytes: u64) {
        self.inner
            .max_file_size
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Live changes, announced after they are committed. Changes may arrive
    /// slightly out of order; watchers fill gaps from [`Store::changes_since`].
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeRecord> {
        if let Some(c) = self.cluster() {
            return c.feed.subscribe();
        }
        self.inner.changes.subscribe()
    }

    /// Starts an upload; see [`Upload`].
    ///
    /// # Errors
    /// When the header breaks a limit or a precondition already fails.
    pub async fn begin_upload(&self, header: UploadHeader) -> Result<Upload> {
        let max = self.max_file_size();
        if header.size > max {
            return Err(ServiceError::TooLarge {
                what: format!("{}: size {} bytes", header.path.shown(), header.size),
                limit: format!("{max} bytes (max file size)"),
            });
        }
        // Fail fast on a stale precondition; it is checked again at commit.
        if header.if_revision.is_some() {
            let current = self.stat_opt(&header.path).await?;
            check_revision(&header.path, current.as_ref(), header.if_revision)?;
        }
        if header.offset > header.size {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: resume offset {} is past the announced size {}",
                header.path.shown(),
                header.offset,
                header.size
            )));
        }
        let s = self.clone();
        let h = header.clone();
        let (staged, start) = self.run(move || {
            if h.offset == 0 {
                let (staged, file) = s.inner.disk.stage()?;
                let start = upload::Start {
                    file,
                    hasher: blake3::Hasher::new(),
                    written: 0,
                };
                return Ok((StagedGuard::new(&s, staged, None), start));
            }
            let modified_ns = distribusync_proto::unix_nanos(h.modified);
            let claimed = s
                .inner
                .disk
                .claim_partial(&h.path, h.size, modified_ns, h.offset)?;
            let Some((staged, file)) = claimed else {
                return Err(ServiceError::Aborted(format!(
                    "{}: the server no longer holds the first {} bytes of this upload; \
                     send the whole file again",
                    h.path.shown(),
                    h.offset
                )));
            };
            // Should the client go away while the prefix is hashed, the part
            // goes back where it was kept.
            let staged = StagedGuard::new(&s, staged, Some((h.clone(), modified_ns)));
            // The bytes before the offset count towards the hash: from the
            // state remembered when the part was kept, or read back in
            // pieces (memory stays flat; mapping the file would count it
            // all in the server's RSS), each hashed on all cores.
            let remembered = s.take_part_hash(&h.path, h.size, modified_ns, h.offset);
            let reread = remembered.is_none();
            let mut hasher = remembered.unwrap_or_default();
            let prefix = (|| {
                if !reread {
                    return std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(h.offset));
                }
                let mut buf = vec![0u8; 8 << 20];
                let mut reader = &file;
                std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0))?;
                loop {
                    let n = std::io::Read::read(&mut reader, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update_rayon(&buf[..n]);
                }
                std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(h.offset))
            })();
            if let Err(e) = prefix {
                tracing::warn!(path = %h.path, error = %e, "cannot read a kept upload part; dropped");
                let _ = std::fs::remove_file(staged.take());
                return Err(ServiceError::Aborted(format!(
                    "{}: the part kept of this upload cannot be read; send the whole file again",
                    h.path.shown()
                )));
            }
            let start = upload::Start {
                file,
                hasher,
                written: h.offset,
            };
            Ok((staged, start))
        })
        .await?;
        Ok(Upload::new(self.clone(), header, staged.take(), start))
    }

    /// Runs `f` on the remembered part hashes and the name of this file's
    /// part.
    fn part_hashes<T>(
        &self,
        path: &RemotePath,
        size: u64,
        modified_ns: i64,
        f: impl FnOnce(&mut PartHashes, String) -> T,
    ) -> T {
        let name = disk::partial_name(path, size, modified_ns);
        let mut map = self
            .inner
            .part_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut map, name)
    }

    /// Remembers the hash state at the end of a part just kept.
    pub(crate) fn remember_part_hash(
        &self,
        path: &RemotePath,
        size: u64,
        modified_ns: i64,
        hasher: blake3::Hasher,
    ) {
        self.part_hashes(path, size, modified_ns, |map, name| {
            if map.len() >= PART_HASHES_MAX {
                map.clear();
            }
            map.insert(name, (hasher.count(), hasher));
        });
    }

    /// Forgets the hash state of a part that could not be kept.
    pub(crate) fn forget_part_hash(&self, path: &RemotePath, size: u64, modified_ns: i64) {
        self.part_hashes(path, size, modified_ns, |map, name| map.remove(&name));
    }

    /// Takes the remembered hash state of a part, if it covers exactly
    /// `len` bytes.
    fn take_part_hash(
        &self,
        path: &RemotePath,
        size: u64,
        modified_ns: i64,
        len: u64,
    ) -> Option<blake3::Hasher> {
        self.part_hashes(path, size, modified_ns, |map, name| {
            map.remove(&name)
                .and_then(|(count, hasher)| (count == len).then_some(hasher))
        })
    }

    /// Bytes kept of an interrupted upload of this file (same path, size
    /// and modified time), from which it can resume; 0 if none.
    ///
    /// # Errors
    /// Only when the blocking pool fails.
    pub async fn upload_offset(
        &self,
        path: RemotePath,
        size: u64,
        modified: std::time::SystemTime,
    ) -> Result<u64> {
        let s = self.clone();
        let modified_ns = distribusync_proto::unix_nanos(modified);
        self.run(move || Ok(s.inner.disk.partial_len(&path, size, modified_ns).min(size)))
            .await
    }

    /// Installs a verified staging file as the new version of a file.
    async fn commit_upload(
        &self,
        header: &UploadHeader,
        staged: std::path::PathBuf,
        manifest: Option<Manifest>,
    ) -> Result<FileRecord> {
        let mut results = self
            .commit_staged(vec![(header.clone(), staged)], vec![manifest])
            .await?;
        results.pop().expect("one result per staged file")
    }

    /// The one commit path of every upload: installs verified, durable
    /// staging files as new versions (group commit). Locks every target,
    /// checks each precondition, renames what passes into place, fsyncs
    /// each changed folder once, then records all of them in one index
    /// transaction. Returns one result per file, in order; the outer error
    /// is a failure of the whole group (the index or a folder fsync).
    async fn commit_staged(
        &self,
        staged: Vec<(UploadHeader, std::path::PathBuf)>,
        manifests: Vec<Option<Manifest>>,
    ) -> Result<Vec<Result<FileRecord>>> {
        if let Some(c) = self.cluster() {
            return self.cluster_commit(c, staged, manifests).await;
        }
        let started = std::time::Instant::now();
        let targets: Vec<&RemotePath> = staged.iter().map(|(h, _)| &h.path).collect();
        let _guard = self.inner.locks.lock(&targets).await;
        let locked = started.elapsed();
        let s = self.clone();
        let (results, changes) = self.run(move || {
            let Inner { disk, index, .. } = &*s.inner;
            let mut results: Vec<Option<Result<FileRecord>>> = Vec::with_capacity(staged.len());
            let mut installed = Vec::new();
            let mut folders = std::collections::BTreeSet::new();
            let mut checked = std::collections::HashSet::new();
            let current = index.get_many(staged.iter().map(|(h, _)| &h.path))?;
            for (i, ((h, file), current)) in staged.iter().zip(current).enumerate() {
                // The disk says whether a folder is in the way (folders exist
                // only while files are in them, so it agrees with the index).
                // Under the path lock, just before the install: a WebDAV
                // lock taken while the data arrived is obeyed.
                let attempt = s
                    .obey_dav_locks(&[&h.path], &h.locks)
                    .and_then(|()| check_revision(&h.path, current.as_ref(), h.if_revision))
                    .and_then(|()| disk.install(file, &h.path, &mut checked));
                match attempt {
                    Ok(folder) => {
                        folders.insert(folder);
                        installed.push(i);
                        results.push(None);
                    }
                    Err(e) => results.push(Some(Err(e))),
                }
            }
            let installed_at = started.elapsed();
            // The files are in place: a folder that cannot be flushed must
            // not make them look absent (they are recorded below).
            for folder in &folders {
                if let Err(e) = disk.sync_folder(folder.as_ref()) {
                    tracing::error!(error = %e, "installed, but the folder could not be flushed");
                }
            }
            tracing::debug!(files = staged.len(), folders = folders.len(), ?locked, installed = ?installed_at, dirs_synced = ?started.elapsed(), "group installed");
            let puts: Vec<_> = installed
                .iter()
                .map(|&i| {
                    let h = &staged[i].0;
                    (
                        h.path.clone(),
                        h.size,
                        h.hash,
                        distribusync_proto::unix_nanos(h.modified),
                    )
                })
                .collect();
            // A manifest is recorded only with a content it describes.
            let manifests: Vec<Option<&Manifest>> = installed
                .iter()
                .map(|&i| {
                    manifests
                        .get(i)
                        .and_then(Option::as_ref)
                        .filter(|m| m.hash == staged[i].0.hash && m.size == staged[i].0.size)
                })
                .collect();
            let committed = match index.commit_puts(&puts, &manifests) {
                Ok(c) => c,
                Err(e) => {
                    let what = match puts.as_slice() {
                        [(p, ..)] => format!("the upload of {}", p.shown()),
                        _ => format!("the upload of {} files", puts.len()),
                    };
                    s.repair_later(puts.into_iter().map(|(p, ..)| p).collect());
                    return Err(e.unrecorded(what));
                }
            };
            tracing::debug!(files = puts.len(), committed = ?started.elapsed(), "group committed");
            let mut changes = Vec::with_capacity(puts.len());
            for (&i, (record, change)) in installed.iter().zip(committed) {
                results[i] = Some(Ok(record));
                changes.push(change);
            }
            let results: Vec<Result<FileRecord>> = results
                .into_iter()
                .map(|r| r.expect("every file has a result"))
                .collect();
            Ok((results, changes))
        })
        .await?;
        // A file refused for want of space names the disk, as a group's
        // failure does.
        let results = results
            .into_iter()
            .map(|r| r.map_err(|e| e.on_disk(self.root())))
            .collect();
        // One line per file for a single upload; a group logs one summary
        // (per file at debug): a first sync of 10,000 files otherwise spends
        // a noticeable share of its time formatting and writing log lines.
        if let [change] = changes.as_slice() {
            tracing::info!(path = %change.path, revision = change.revision, size = change.size, "uploaded");
        } else if !changes.is_empty() {
            let bytes: u64 = changes.iter().map(|c| c.size).sum();
            let (first, last) = (&changes[0], &changes[changes.len() - 1]);
            tracing::info!(files = changes.len(), bytes, first = %first.path, last = %last.path, "uploaded a group");
        }
        for change in changes {
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(path = %change.path, revision = change.revision, size = change.size, "uploaded");
            }
            self.announce(change);
        }
        Ok(results)
    }

    /// Uploads several small files held in memory as one group: each is
    /// verified, staged, all are flushed (one `syncfs`, or an fsync each
    /// for up to [`FSYNC_EACH_MAX`] files), then committed
    /// together. One result per file, in order.
    ///
    /// # Errors
    /// A failure of the whole group (staging, the index).
    pub async fn upload_batch(
        &self,
        files: Vec<(UploadHeader, Vec<u8>)>,
    ) -> Result<Vec<Result<FileRecord>>> {
        let s = self.clone();
        let max = self.max_file_size();
        let started = std::time::Instant::now();
        // A few files are flushed one by one; more, with one `syncfs`.
        // syncfs flushes whatever anyone wrote to the filesystem: on a
        // busy disk it took 40 ms at the median and 200 ms at p90 where an
        // fsync took 16 and 60, and a sync client's save is one file.
        let flush = self.flushes_staging();
        let fsync_each = flush && files.len() <= FSYNC_EACH_MAX;
        let (mut results, staged, slots, mut guard) = self.run(move || {
            let mut results: Vec<Option<Result<FileRecord>>> = Vec::with_capacity(files.len());
            let mut staged = Vec::new();
            let mut slots = Vec::new();
            // Removes what was staged should anything below fail.
            let mut guard = StagedFiles::default();
            for (i, (h, data)) in files.into_iter().enumerate() {
                let verdict = if h.size > max {
                    Err(ServiceError::TooLarge {
                        what: format!("{}: size {} bytes", h.path.shown(), h.size),
                        limit: format!("{max} bytes (max file size)"),
                    })
                } else {
                    upload::verify(&h, data.len() as u64, ContentHash::of(&data))
                };
                if let Err(e) = verdict {
                    results.push(Some(Err(e)));
                    continue;
                }
                let (path, mut file) = s.inner.disk.stage()?;
                guard.0.push(path.clone());
                use std::io::Write;
                file.write_all(&data)
                    .map_err(|e| ServiceError::io("staging file", e))?;
                match disk::set_modified(&file, &h.path, h.modified) {
                    Ok(()) => {}
                    // This file's own fault: it alone is refused.
                    Err(e @ ServiceError::InvalidArgument(_)) => {
                        guard.0.pop();
                        let _ = std::fs::remove_file(&path);
                        results.push(Some(Err(e)));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if fsync_each {
                    // After the modification time is set: it is flushed too.
                    file.sync_all()
                        .map_err(|e| ServiceError::io("staging file", e))?;
                }
                results.push(None);
                slots.push(i);
                staged.push((h, path));
            }
            let written = started.elapsed();
            if flush && !fsync_each {
                s.inner.disk.sync_staging()?;
            }
            tracing::debug!(files = staged.len(), ?written, synced = ?started.elapsed(), "batch staged");
            Ok((results, staged, slots, guard))
        })
        .await?;
        // On a failure of the whole group, or if this future is dropped
        // (the client left), the guard removes every staging file left.
        let committed = self.commit_staged(staged, Vec::new()).await?;
        // Installed files left their staging name; a refused file's staging
        // copy is not needed any more: the guard removes those.
        let mut left = Vec::new();
        for ((i, r), name) in slots.into_iter().zip(committed).zip(guard.0.drain(..)) {
            if r.is_err() {
                left.push(name);
            }
            results[i] = Some(r);
        }
        guard.0 = left;
        Ok(results
            .into_iter()
            .map(|r| r.expect("every file has a result"))
            .collect())
    }

    async fn stat_opt(&self, path: &RemotePath) -> Result<Option<FileRecord>> {
        if let Some(c) = self.cluster() {
            return c.metadata.get(path.clone()).await;
        }
        let s = self.clone();
        let p = path.clone();
        self.run(move || s.inner.index.get(&p)).await
    }

    /// The metadata of one file.
    ///
    /// # Errors
    /// NotFound when there is no such file.
    pub async fn stat(&self, path: &RemotePath) -> Result<FileRecord> {
        match self.stat_opt(path).await? {
            Some(f) => Ok(f),
            None if self.is_folder(path).await? => Err(ServiceError::Conflict(format!(
                "{}: is a folder",
                path.shown()
            ))),
            None => Err(ServiceError::NotFound(path.clone())),
        }
    }

    async fn is_folder(&self, path: &RemotePath) -> Result<bool> {
        if let Some(c) = self.cluster() {
            return c.metadata.is_folder(path.clone()).await;
        }
        let s = self.clone();
        let p = path.clone();
        self.run(move || s.inner.index.is_folder(&p)).await
    }

    /// Opens a file for download: its metadata and an open handle on exactly
    /// that version (later replacements do not affect the handle).
    pub async fn open_read(&self, path: &RemotePath) -> Result<(FileRecord, std::fs::File)> {
        if self.cluster().is_some() {
            return Err(Self::unsupported("reading a file as a local file"));
        }
        let _guard = self.inner.locks.lock(&[path]).await;
        let s = self.clone();
        let p = path.clone();
        self.run(move || {
            let record = s.inner.index.get(&p)?;
            let Some(record) = record else {
                if s.inner.index.is_folder(&p)? {
                    return Err(ServiceError::Conflict(format!(
                        "{}: is a folder",
                        p.shown()
                    )));
                }
                return Err(ServiceError::NotFound(p));
            };
            let file = s.inner.disk.open_file(&p)?;
            Ok((record, file))
        })
        .await
    }

    /// Opens a file for download: its metadata and its content, exactly
    /// that version (later replacements do not affect it).
    ///
    /// # Errors
    /// NotFound; Conflict for a folder; the backend's.
    pub async fn open_content(&self, path: &RemotePath) -> Result<(FileRecord, Content)> {
        if let Some(c) = self.cluster() {
            return Self::cluster_open(c, path).await;
        }
        let (record, file) = self.open_read(path).await?;
        Ok((record, Content::File(file)))
    }

    /// One page of a listing; see [`Index::list_page`].
    pub async fn list_page(
        &self,
        prefix: Option<RemotePath>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<FileRecord>> {
        if let Some(c) = self.cluster() {
            return c.metadata.list_page(prefix, after, limit).await;
        }
        let s = self.clone();
        self.run(move || {
            s.inner
                .index
                .list_page(prefix.as_ref(), after.as_deref(), limit)
        })
        .await
    }

    /// Deletes a file.
    ///
    /// # Errors
    /// NotFound, a revision mismatch, a folder at `path`, or a WebDAV
    /// lock `pass` does not hold.
    pub async fn delete(
        &self,
        path: &RemotePath,
        if_revision: Option<Revision>,
        pass: &LockPass,
    ) -> Result<u64> {
        if let Some(c) = self.cluster() {
            self.obey_dav_locks(&[path], pass)?;
            let change = c.metadata.commit_delete(path.clone(), if_revision).await?;
            tracing::info!(%path, seq = change.seq, "deleted");
            return Ok(change.seq);
        }
        let _guard = self.inner.locks.lock(&[path]).await;
        let s = self.clone();
        let p = path.clone();
        let pass = pass.clone();
        let change = self
            .run(move || {
                s.obey_dav_locks(&[&p], &pass)?;
                let Inner { disk, index, .. } = &*s.inner;
                let current = index.get(&p)?;
                if current.is_none() {
                    if index.is_folder(&p)? {
                        return Err(ServiceError::Conflict(format!(
                            "{}: is a folder; delete the files in it one by one",
                            p.shown()
                        )));
                    }
                    return Err(ServiceError::NotFound(p));
                }
                check_revision(&p, current.as_ref(), if_revision)?;
                match disk.remove_file(&p) {
                    // Removed by hand behind the server's back: still record it.
                    Ok(()) | Err(ServiceError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                index.commit_delete(&p).map_err(|e| {
                    s.repair_later(vec![p.clone()]);
                    e.unrecorded(format!("the delete of {}", p.shown()))
                })
            })
            .await?;
        let seq = change.seq;
        tracing::info!(%path, seq, "deleted");
        self.announce(change);
        Ok(seq)
    }

    /// Renames a file or a whole folder. Returns the change's sequence number
    /// and how many files moved.
    ///
    /// # Errors
    /// NotFound for a missing source; AlreadyExists when `to` exists and
    /// `overwrite` is false (a folder is never overwritten); InvalidArgument
    /// for a rename onto itself or into itself; a WebDAV lock `pass` does
    /// not hold on either end (or inside a folder).
    pub async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        overwrite: bool,
        if_revision: Option<Revision>,
        pass: &LockPass,
    ) -> Result<(u64, u64)> {
        if from == to {
            return Err(ServiceError::InvalidArgument(format!(
                "cannot rename {} onto itself",
                from.shown()
            )));
        }
        if to.is_inside(from) {
            return Err(ServiceError::InvalidArgument(format!(
                "cannot move {} into itself ({})",
                from.shown(),
                to.shown()
            )));
        }
        if let Some(c) = self.cluster() {
            self.obey_dav_locks(&[from, to], pass)?;
            let (change, moved) = c
                .metadata
                .commit_rename(from.clone(), to.clone(), overwrite, if_revision)
                .await?;
            tracing::info!(%from, %to, seq = change.seq, files = moved, "renamed");
            return Ok((change.seq, moved));
        }
        let _guard = self.inner.locks.lock(&[from, to]).await;
        let s = self.clone();
        let (f, t) = (from.clone(), to.clone());
        let pass = pass.clone();
        let (change, moved) = self
            .run(move || {
                s.obey_dav_locks(&[&f, &t], &pass)?;
                let Inner { disk, index, .. } = &*s.inner;
                let file = index.get(&f)?;
                let folder = file.is_none() && index.is_folder(&f)?;
                if file.is_none() && !folder {
                    return Err(ServiceError::NotFound(f));
                }
                if folder && if_revision.is_some() {
                    return Err(ServiceError::InvalidArgument(format!(
                        "{}: is a folder; if_revision applies to files only",
                        f.shown()
                    )));
                }
                check_revision(&f, file.as_ref(), if_revision)?;
                if folder {
                    check_rebased_lengths(&f, &t, index.longest_inside(&f)?)?;
                }
                if index.is_folder(&t)? {
                    return Err(ServiceError::Conflict(format!(
                        "{}: is a folder; a rename never replaces a folder",
                        t.shown()
                    )));
                }
                if index.get(&t)?.is_some() && (folder || !overwrite) {
                    return Err(ServiceError::AlreadyExists(t));
                }
                // A folder's intent first: if it cannot be recorded, nothing
                // is done; if the server stops before the commit, the next
                // start completes the rename from it (instead of seeing every
                // file deleted and added anew). A file rename goes without
                // (a fsynced index write each): a crash there costs one
                // delete and one add, which the reconcile records.
                let intent = folder
                    .then(|| index.begin_rename(&f, &t, folder))
                    .transpose()?;
                if let Err(e) = disk.rename(&f, &t) {
                    if let Some(Err(dropped)) = intent.map(|i| index.drop_rename(i)) {
                        // Harmless: the next start sees the rename was not made.
                        tracing::warn!(error = %dropped, "could not forget a rename not made");
                    }
                    return Err(e);
                }
                index.commit_rename(&f, &t, folder).map_err(|e| {
                    s.repair_later(vec![f.clone(), t.clone()]);
                    e.unrecorded(format!("the rename of {} to {}", f.shown(), t.shown()))
                })
            })
            .await?;
        let seq = change.seq;
        tracing::info!(%from, %to, seq, files = moved, "renamed");
        self.announce(change);
        Ok((seq, moved))
    }

    /// Up to `limit` changes after `since`.
    pub async fn changes_since(&self, since: u64, limit: u32) -> Result<Vec<ChangeRecord>> {
        if let Some(c) = self.cluster() {
            return c.metadata.changes_since(since, limit).await;
        }
        let s = self.clone();
        self.run(move || s.inner.index.changes_since(since, limit))
            .await
    }

    /// What the store holds now, for metrics and `status` (one scan of
    /// the index and of the kept parts' folder).
    ///
    /// # Errors
    /// When the index cannot be read.
    pub async fn stats(&self) -> Result<StoreStats> {
        if let Some(c) = self.cluster() {
            let (files, bytes) = c.metadata.totals().await?;
            let s = self.clone();
            let kept = self.run(move || Ok(s.kept_parts())).await?;
            return Ok(StoreStats {
                files,
                bytes,
                index_bytes: 0,
                kept,
                manifests: self.inner.manifests.load(),
            });
        }
        let s = self.clone();
        self.run(move || {
            let (files, bytes) = s.inner.index.totals()?;
            let meta = s.inner.disk.meta_dir();
            let index_bytes = ["index.db", "index.db-wal"]
                .iter()
                .filter_map(|n| std::fs::metadata(meta.join(n)).ok())
                .map(|m| m.len())
                .sum();
            Ok(StoreStats {
                files,
                bytes,
                index_bytes,
                kept: s.kept_parts(),
                manifests: s.inner.manifests.load(),
            })
        })
        .await
    }

    /// `(floor, newest)`: watchers with `since < floor` must resync.
    pub async fn log_bounds(&self) -> Result<(u64, u64)> {
        if let Some(c) = self.cluster() {
            return c.metadata.log_bounds().await;
        }
        let s = self.clone();
        self.run(move || s.inner.index.log_bounds()).await
    }
}
