//! The cluster backend of the [`Store`] (issue 12): metadata and the
//! change feed in PostgreSQL ([`super::PgMetadata`], [`super::PgFeed`]),
//! contents as chunks in S3 ([`super::S3Blobs`]), shared by every server
//! instance opened on the same database and bucket.
//!
//! The store's public operations keep their shape; for a store opened with
//! [`Store::open_cluster`] each one goes through the traits instead of
//! MASTER and the local index (the branches in `store/mod.rs` call the
//! functions here). What stays per instance: the staging and kept parts of
//! uploads (its `--root`), and the path locks, which are only a local
//! shortcut: every precondition is checked again inside the committing
//! PostgreSQL transaction (see `store/postgres.rs`).
//!
//! Invariants:
//! - a file's content is in the bucket (every chunk of its manifest) before
//!   the metadata naming it commits; its manifest commits with it, in the
//!   same transaction;
//! - changes are announced by the feed (NOTIFY, then the log read by
//!   revision), on every instance alike, never by the instance that made
//!   them: the local broadcast is not used;
//! - what the cluster backend does not offer yet (WebDAV, the web page,
//!   delta transfer) is refused with UNIMPLEMENTED, never served from the
//!   instance's local folder.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use distribusync_core::delta::{ChunkRef, Manifest, PARAMS_V1, manifest_of_reader};
use distribusync_core::{RemotePath, limits};
use futures::{Stream, StreamExt, TryStreamExt};

use super::blobs::{Blobs, BlobsConfig, S3Blobs};
use super::upload::UploadHeader;
use super::{ChangeFeed, FileRecord, Metadata, NewVersion, PgFeed, PgMetadata, Store};
use crate::error::{Result, ServiceError};

/// Files of one group whose chunks are stored at once. A small file's
/// store is a round trip or two to the bucket: a batch of them is bound by
/// latency, so many go at once; the bytes held are bounded by the blob
/// store's sending budget, not by this.
const PARALLEL_FILES: usize = 32;

/// Reads of a download's chunks in flight: the one being sent and the next.
const READ_AHEAD: usize = 2;

/// How long an upload's pins keep its chunks from the collector: the time
/// it may take between pinning them and committing the file (storing the
/// chunks of a big file in the bucket).
pub const PIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often each instance tries to collect unreferenced chunks (one
/// collects at a time; the others skip their turn).
const COLLECT_EVERY: Duration = Duration::from_secs(3600);

/// A chunk written this recently is never collected, referenced or not.
pub const COLLECT_GRACE: Duration = Duration::from_secs(3600);

/// What one collection of unreferenced chunks did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Chunks in the bucket when it started.
    pub stored: usize,
    /// Unreferenced, but written within the grace period: kept.
    pub young: usize,
    /// Unreferenced and old enough: removed.
    pub removed: usize,
}

/// The shared state of the cluster: a cheap clone.
#[derive(Debug, Clone)]
pub struct ClusterBackend {
    pub metadata: Arc<dyn Metadata>,
    pub feed: Arc<dyn ChangeFeed>,
    pub blobs: Arc<dyn Blobs>,
    /// The same database as `metadata`, for the chunk pins and the
    /// collector (PostgreSQL only).
    pg: PgMetadata,
}

impl ClusterBackend {
    /// Connects to the metadata database at `metadata_url` and to the
    /// bucket, and starts following the change log.
    ///
    /// # Errors
    /// One line naming what cannot be used and why: a URL that does not
    /// parse, a database that cannot be reached or has a newer schema, a
    /// bucket that is missing or refuses the credentials.
    pub async fn open(metadata_url: &str, blobs: &BlobsConfig, max_changes: u64) -> Result<Self> {
        let metadata = PgMetadata::open(metadata_url, max_changes).await?;
        let blobs = S3Blobs::open(blobs).await?;
        let feed = PgFeed::start(metadata.clone()).await?;
        Ok(Self {
            metadata: Arc::new(metadata.clone()),
            feed: Arc::new(feed),
            blobs: Arc::new(blobs),
            pg: metadata,
        })
    }

    /// The cluster's database (tokens live there too).
    pub fn database(&self) -> &PgMetadata {
        &self.pg
    }

    /// The job queue on the cluster's database (its table made if
    /// missing); a job is tried at most `max_attempts` times.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn job_queue(&self, max_attempts: u32) -> Result<super::PgJobQueue> {
        super::PgJobQueue::open(self.pg.clone(), max_attempts).await
    }

    /// Pins the chunks of `manifest` for [`PIN_TTL`] on behalf of `owner`
    /// (see [`PgMetadata::pin_chunks`]).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn pin(&self, owner: &str, manifest: &Manifest) -> Result<()> {
        self.pin_all(owner, [manifest]).await
    }

    /// Pins the chunks of several manifests under `owner` in one
    /// transaction (see [`Self::pin`]).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn pin_all<'m>(
        &self,
        owner: &str,
        manifests: impl IntoIterator<Item = &'m Manifest>,
    ) -> Result<()> {
        let hashes: Vec<_> = manifests
            .into_iter()
            .flat_map(|m| m.chunks.iter().map(|c| c.hash))
            .collect();
        self.pg.pin_chunks(owner, &hashes, PIN_TTL).await
    }

    /// Drops the pins of `owner`; a failure is only logged (pins expire).
    pub async fn unpin(&self, owner: &str) {
        if let Err(e) = self.pg.unpin(owner).await {
            tracing::warn!(error = %e, "could not drop an upload's chunk pins; they expire by themselves");
        }
    }

    /// Removes the chunks no file references, no upload has pinned and
    /// that were written more than `grace` ago (mark and sweep; see
    /// [`PgMetadata::collect`]). `None`: another instance is collecting.
    ///
    /// # Errors
    /// When the bucket or the database fails.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<Option<CollectReport>> {
        // Listed before the collector's lock: a chunk stored after this is
        // not considered at all.
        let stored = self.blobs.list_chunks().await?;
        let blobs = self.blobs.clone();
        let report = self
            .pg
            .collect(stored, grace, move |hash| {
                let blobs = blobs.clone();
                async move { blobs.delete_chunk(hash).await }
            })
            .await?;
        if let Some(r) = &report {
            tracing::info!(
                stored = r.stored,
                removed = r.removed,
                young = r.young,
                "collected unreferenced chunks"
            );
        }
        Ok(report)
    }
}

/// Collects unreferenced chunks every [`COLLECT_EVERY`] while the store
/// lives.
fn collect_periodically(store: &Store) {
    let weak = Arc::downgrade(&store.inner);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(COLLECT_EVERY);
        every.tick().await; // the first tick is now: not at start
        loop {
            every.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let Some(cluster) = inner.cluster.clone() else {
                return;
            };
            drop(inner);
            if let Err(e) = cluster.collect_garbage(COLLECT_GRACE).await {
                tracing::warn!(error = %e, "could not collect unreferenced chunks; trying again later");
            }
        }
    });
}

/// The content of a file being downloaded: an open local file, or the
/// chunks of a manifest in the cluster's bucket.
#[derive(Debug)]
pub enum Content {
    File(std::fs::File),
    Chunks {
        manifest: Manifest,
        blobs: Arc<dyn Blobs>,
    },
}

/// A download's bytes, in messages of at most [`limits::CHUNK_SIZE`].
pub type ContentStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>>> + Send>>;

/// The pieces of `manifest`'s chunks that cover `[offset, end)`: each
/// chunk with the range of its bytes wanted.
pub fn chunks_covering(
    manifest: &Manifest,
    offset: u64,
    end: u64,
) -> Vec<(ChunkRef, std::ops::Range<usize>)> {
    manifest
        .offsets()
        .filter_map(|(at, c)| {
            let (lo, hi) = (at.max(offset), (at + u64::from(c.len)).min(end));
            // Bounded by the chunk's length (a u32).
            (lo < hi).then(|| (c, (lo - at) as usize..(hi - at) as usize))
        })
        .collect()
}

/// The bytes `[offset, end)` of the content of `manifest`, read from
/// `blobs` one chunk (and one ahead) at a time, each checked against its
/// hash.
pub fn chunk_stream(
    manifest: &Manifest,
    blobs: Arc<dyn Blobs>,
    offset: u64,
    end: u64,
) -> ContentStream {
    let pieces = chunks_covering(manifest, offset, end);
    Box::pin(
        futures::stream::iter(pieces)
            .map(move |(chunk, range)| {
                let blobs = blobs.clone();
                async move {
                    let bytes = blobs.read_chunk(chunk).await?;
                    let wanted = bytes.slice(range);
                    let messages: Vec<Result<Vec<u8>>> = wanted
                        .chunks(limits::CHUNK_SIZE)
                        .map(|m| Ok(m.to_vec()))
                        .collect();
                    Ok::<_, ServiceError>(futures::stream::iter(messages))
                }
            })
            .buffered(READ_AHEAD)
            .try_flatten(),
    )
}

impl Store {
    /// Opens a store on the cluster backend: `scratch` is this instance's
    /// own folder (staging and kept parts of uploads); files, revisions and
    /// contents are `backend`'s, shared with every other instance.
    ///
    /// # Errors
    /// When `scratch` cannot be opened.
    pub async fn open_cluster(
        scratch: &std::path::Path,
        config: super::StoreConfig,
        backend: ClusterBackend,
    ) -> Result<Self> {
        let store = Self::open_parts(scratch, config, Some(backend)).await?;
        collect_periodically(&store);
        tracing::info!(scratch = %scratch.display(), "serving the cluster backend");
        Ok(store)
    }

    /// The cluster backend, when this store is on one.
    pub(super) fn cluster(&self) -> Option<&ClusterBackend> {
        self.inner.cluster.as_ref()
    }

    /// Whether a staging file must be flushed before it is committed: on
    /// the local backend it becomes the file (and must survive a crash);
    /// on the cluster it is a scratch copy whose bytes go to the bucket,
    /// which keeps them (and a crash before the commit leaves nothing).
    pub(super) fn flushes_staging(&self) -> bool {
        self.inner.cluster.is_none()
    }

    /// The refusal of what the cluster backend does not offer yet.
    pub(super) fn unsupported(what: &str) -> ServiceError {
        ServiceError::Unsupported(format!(
            "{what} is not available on the cluster backend (PostgreSQL + S3) yet"
        ))
    }

    /// The record of `path` on the cluster, or why there is none: Conflict
    /// for a folder, else NotFound.
    pub(super) async fn cluster_stat(c: &ClusterBackend, path: &RemotePath) -> Result<FileRecord> {
        match c.metadata.get(path.clone()).await? {
            Some(f) => Ok(f),
            None if c.metadata.is_folder(path.clone()).await? => Err(ServiceError::Conflict(
                format!("{}: is a folder", path.shown()),
            )),
            None => Err(ServiceError::NotFound(path.clone())),
        }
    }

    /// The current record of `path` and its content.
    pub(super) async fn cluster_open(
        c: &ClusterBackend,
        path: &RemotePath,
    ) -> Result<(FileRecord, Content)> {
        let (record, manifest) = Self::cluster_manifest(c, path).await?;
        let blobs = c.blobs.clone();
        Ok((record, Content::Chunks { manifest, blobs }))
    }

    /// The current record of `path` and the manifest of its content.
    pub(super) async fn cluster_manifest(
        c: &ClusterBackend,
        path: &RemotePath,
    ) -> Result<(FileRecord, Manifest)> {
        // A file replaced between the two reads: read both again (its
        // manifest is answered for its current revision only).
        for _ in 0..8 {
            let record = Self::cluster_stat(c, path).await?;
            if let Some(manifest) = c.metadata.manifest(path.clone(), record.revision).await? {
                return Ok((record, manifest));
            }
            if c.metadata.get(path.clone()).await?.map(|f| f.revision) == Some(record.revision) {
                return Err(ServiceError::Corrupt(format!(
                    "{}: revision {} has no content recorded in the metadata database",
                    path.shown(),
                    record.revision
                )));
            }
        }
        Err(ServiceError::Aborted(format!(
            "{}: replaced again and again while it was opened; try again",
            path.shown()
        )))
    }

    /// The cluster's commit of verified, durable staging files (see
    /// `commit_staged`): each file's chunks go to the bucket, then all are
    /// recorded in one transaction, each checked against its
    /// `if_revision` there. Staging files of committed versions are
    /// removed; the others are left to the caller, as on the local path.
    pub(super) async fn cluster_commit(
        &self,
        c: &ClusterBackend,
        staged: Vec<(UploadHeader, PathBuf)>,
        manifests: Vec<Option<Manifest>>,
    ) -> Result<Vec<Result<FileRecord>>> {
        let started = std::time::Instant::now();
        let mut manifests = manifests.into_iter();
        let prepared: Vec<_> = staged
            .iter()
            .map(|(h, file)| {
                let given = manifests
                    .next()
                    .flatten()
                    .filter(|m| m.hash == h.hash && m.size == h.size);
                (h.clone(), file.clone(), given)
            })
            .collect();
        // The chunks of this group are pinned under one name, dropped once
        // the group is committed (or refused).
        let owner = uuid::Uuid::new_v4().to_string();
        let owner = owner.as_str();
        let committed = self
            .cluster_commit_pinned(c, owner, &staged, prepared, started)
            .await;
        c.unpin(owner).await;
        committed
    }

    async fn cluster_commit_pinned(
        &self,
        c: &ClusterBackend,
        owner: &str,
        staged: &[(UploadHeader, PathBuf)],
        prepared: Vec<(UploadHeader, PathBuf, Option<Manifest>)>,
        started: std::time::Instant,
    ) -> Result<Vec<Result<FileRecord>>> {
        // Per file: WebDAV locks (none in the cluster, which serves no
        // WebDAV, but obeyed as everywhere) and its manifest.
        let described: Vec<Result<(Arc<std::fs::File>, Manifest)>> =
            futures::stream::iter(prepared)
                .map(|(h, file, given)| async move {
                    self.obey_dav_locks(&[&h.path], &h.locks)?;
                    let f = Arc::new(
                        std::fs::File::open(&file)
                            .map_err(|e| ServiceError::io("staging file", e))?,
                    );
                    let manifest = match given {
                        Some(m) => m,
                        None => {
                            // Bounded with every manifest this server
                            // computes ([`super::StoreConfig::max_manifests`]).
                            let permit = self.inner.manifests.acquire().await?;
                            let (reader, s) = (f.clone(), self.clone());
                            super::blocking(move || {
                                let _running = (permit, s.inner.manifests.computing());
                                manifest_of_reader(&*reader, &PARAMS_V1)
                                    .map_err(|e| ServiceError::io("staging file", e))
                            })
                            .await?
                        }
                    };
                    if manifest.hash != h.hash || manifest.size != h.size {
                        // Verified when it arrived: the staging file changed.
                        return Err(ServiceError::io(
                            "staging file",
                            std::io::Error::other("changed after it was verified"),
                        ));
                    }
                    Ok((f, manifest))
                })
                .buffered(PARALLEL_FILES)
                .collect()
                .await;
        // The group's chunks are pinned in one transaction, before any is
        // looked for in the bucket: the collector leaves a pinned chunk
        // alone, so one found there stays there. (One transaction a group,
        // not one a file: a batch of small files is one commit of pins.)
        c.pin_all(
            owner,
            described
                .iter()
                .filter_map(|d| d.as_ref().ok())
                .map(|(_, m)| m),
        )
        .await?;
        // Then each file's chunks go to the bucket.
        let stored: Vec<Result<Manifest>> = futures::stream::iter(described)
            .map(|d| {
                let blobs = c.blobs.clone();
                async move {
                    let (f, manifest) = d?;
                    let done = blobs.install(f, &manifest).await?;
                    tracing::debug!(
                        sent = done.sent,
                        sent_bytes = done.sent_bytes,
                        skipped = done.skipped,
                        "chunks stored (sent: some small ones the store may have had)"
                    );
                    Ok(manifest)
                }
            })
            .buffered(PARALLEL_FILES)
            .collect()
            .await;
        let mut results: Vec<Option<Result<FileRecord>>> = Vec::with_capacity(staged.len());
        let mut puts = Vec::new();
        let mut slots = Vec::new();
        for (i, ((h, _), m)) in staged.iter().zip(stored).enumerate() {
            match m {
                // A failure of the bucket fails the group, as a failure of
                // the disk does on the local path.
                Err(
                    e @ (ServiceError::Blobs(_)
                    | ServiceError::Database(_)
                    | ServiceError::Io { .. }
                    | ServiceError::NoSpace { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => results.push(Some(Err(e))),
                Ok(manifest) => {
                    results.push(None);
                    slots.push(i);
                    puts.push(NewVersion {
                        path: h.path.clone(),
                        size: h.size,
                        hash: h.hash,
                        modified_ns: distribusync_proto::unix_nanos(h.modified),
                        if_revision: h.if_revision,
                        manifest: Some(manifest),
                    });
                }
            }
        }
        let stored_in = started.elapsed();
        let committed = if puts.is_empty() {
            Vec::new()
        } else {
            c.metadata.commit_puts(puts).await?
        };
        let mut changes = Vec::new();
        for (i, r) in slots.into_iter().zip(committed) {
            match r {
                Ok((record, change)) => {
                    let file = staged[i].1.clone();
                    // Its content is in the bucket now.
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(file)).await;
                    changes.push(change);
                    results[i] = Some(Ok(record));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if let [change] = changes.as_slice() {
            tracing::info!(path = %change.path, revision = change.revision, size = change.size, ?stored_in, "uploaded");
        } else if !changes.is_empty() {
            let bytes: u64 = changes.iter().map(|c| c.size).sum();
            tracing::info!(files = changes.len(), bytes, ?stored_in, "uploaded a group");
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every file has a result"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distribusync_core::ContentHash;

    fn manifest(lens: &[u32]) -> Manifest {
        Manifest {
            params: PARAMS_V1.id(),
            size: lens.iter().map(|&l| u64::from(l)).sum(),
            hash: ContentHash::of(b"whole"),
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, &len)| ChunkRef {
                    len,
                    hash: ContentHash::of(&[i as u8]),
                })
                .collect(),
        }
    }

    #[test]
    fn a_range_maps_to_the_pieces_of_the_chunks_it_covers() {
        let m = manifest(&[10, 20, 30]);
        let ranges = |o, e| -> Vec<_> {
            chunks_covering(&m, o, e)
                .into_iter()
                .map(|(c, r)| (c.len, r))
                .collect()
        };
        assert_eq!(ranges(0, 60), vec![(10, 0..10), (20, 0..20), (30, 0..30)]);
        assert_eq!(ranges(5, 15), vec![(10, 5..10), (20, 0..5)]);
        assert_eq!(ranges(10, 30), vec![(20, 0..20)]);
        assert_eq!(ranges(59, 60), vec![(30, 29..30)]);
        assert_eq!(ranges(60, 60), vec![]);
        assert_eq!(ranges(0, 0), vec![]);
    }
}
