//! Delta uploads on the store side: which chunks of a new file the caller
//! lets the server find in its own files ([`Store::delta_plan`], and
//! [`Store::find_chunks`] for a probe before it), and the
//! assembly of the new file in staging from those files and the bytes the
//! client sends ([`DeltaWrite`]).
//!
//! Invariants:
//! - only files `who` may read are sources (confinement: dedup must not
//!   tell one user what another stores);
//! - every byte written to staging, copied or received, belongs to an op
//!   whose hash it matches, and the whole file must match the manifest's
//!   hash and size before it is installed, through the one commit path of
//!   every upload ([`Store::commit_staged`]: locks, `if_revision`, fsync,
//!   rename, index);
//! - the previous version is never written; a failure at any point removes
//!   the staging file ([`super::StagedGuard`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use distribusync_core::delta::{
    ChunkRef, CopyError, DeltaPlan, KnownChunks, MAX_REFINE_BYTES, Manifest, Op, PARAMS_V1,
    RebuiltChunks, Region, SourceId, copy_blocks, copy_pipelined, fine_chunks, hash_checking,
    manifest_of_reader, regions_to_refine, worth_refining,
};
use distribusync_core::{ContentHash, RemotePath, Revision};

use super::chunks::ChunkIndex;
use super::disk::FileMeta;
use super::{FileRecord, StagedGuard, Store, UploadHeader};
use crate::auth::Identity;
use crate::error::{Result, ServiceError};

/// Bytes copied from the server's own files per blocking task.
const COPY_STEP: u64 = 64 << 20;

/// Most bytes read, checked and written at once by a copy (consecutive
/// chunks of one source file); at least one chunk. Three are in flight
/// (read, hashed, written: `copy_pipelined`).
const COPY_BLOCK: u64 = 4 << 20;

/// What a delta upload will build: the plan and the files it copies from.
#[derive(Debug)]
pub struct DeltaSources {
    pub plan: DeltaPlan,
    files: Vec<Arc<File>>,
    /// Per file: its size and modified time when they are those the index
    /// records for the version whose manifest named its chunks (the rule
    /// reconcile uses for "unchanged"); `None`: not trusted, every chunk
    /// copied from it is checked (a kept part, a file changed by hand).
    stamps: Vec<Option<Trusted>>,
    known: KnownChunks,
    /// Where the fine round looks for pieces: the current version of the
    /// path, or else the file that holds most of the new file's chunks.
    base: Option<(SourceId, Manifest)>,
}

impl DeltaSources {
    /// Bytes the client must send.
    pub fn literal_bytes(&self) -> u64 {
        self.plan.literal_bytes()
    }

    /// The base regions a fine round would read, when one is worth it
    /// (empty: ask for whole chunks).
    pub fn regions_to_refine(&self, new: &Manifest) -> Vec<Region> {
        let Some((_, base)) = &self.base else {
            return Vec::new();
        };
        let regions = regions_to_refine(base, new);
        if worth_refining(self.plan.literal_bytes(), &regions) {
            regions
        } else {
            Vec::new()
        }
    }
}

/// What the client announced for a delta upload.
#[derive(Debug, Clone)]
pub struct DeltaHeader {
    pub path: RemotePath,
    pub manifest: Manifest,
    pub modified: SystemTime,
    pub if_revision: Option<Revision>,
    pub base_revision: Option<Revision>,
    /// As [`UploadHeader::locks`].
    pub locks: super::LockPass,
}

impl Store {
    /// The manifest of `path`'s current version with the version's record
    /// and an open handle on it; computed (and recorded) on first need when
    /// the index has none (a file put there by hand, an upload that resumed).
    ///
    /// # Errors
    /// NotFound, a folder at `path`, or a read error.
    pub async fn manifest_of(&self, path: &RemotePath) -> Result<(FileRecord, Manifest, File)> {
        if self.cluster().is_some() {
            return Err(Self::unsupported("delta transfer"));
        }
        let (record, file) = self.open_read(path).await?;
        let s = self.clone();
        let p = path.clone();
        let recorded = self
            .run(move || s.inner.index.manifest(&p, record.revision))
            .await?;
        if let Some(m) = recorded {
            return Ok((record, m, file));
        }
        // Computing one holds three threads and ~32 MiB: at most
        // `max_manifests` at once, the others wait here, on the async side
        // (holding no thread), and then find the manifest recorded when a
        // request before them computed it.
        let permit = self.inner.manifests.acquire().await?;
        let s = self.clone();
        let p = path.clone();
        self.run(move || {
            // Held until the manifest is recorded, for those waiting on it.
            let _permit = permit;
            let index = &s.inner.index;
            if let Some(m) = index.manifest(&p, record.revision)? {
                return Ok((record, m, file));
            }
            let computing = s.inner.manifests.computing();
            let m = manifest_of_reader(&file, &PARAMS_V1)
                .map_err(|e| ServiceError::io(p.to_string(), e))?;
            drop(computing);
            if m.hash != record.hash || m.size != record.size {
                // Changed on disk behind the index's back: not recorded.
                return Err(ServiceError::Aborted(format!(
                    "{}: the file changed on the server while it was read; try again",
                    p.shown()
                )));
            }
            index.set_manifest(&p, record.revision, &m)?;
            tracing::debug!(path = %p, revision = record.revision, chunks = m.chunks.len(), "manifest computed");
            Ok((record, m, file))
        })
        .await
    }

    /// Finds which chunks of `h.manifest` (validated) the server holds in
    /// files `who` may read: the current version of `h.path` first, then
    /// any file the chunk index names.
    ///
    /// # Errors
    /// A base revision that is no longer current, a stale `if_revision`,
    /// or the index's errors.
    pub async fn delta_plan(&self, who: &Identity, h: &DeltaHeader) -> Result<DeltaSources> {
        if self.cluster().is_some() {
            return Err(Self::unsupported("delta transfer"));
        }
        let current = self.stat_opt(&h.path).await?;
        super::check_revision(&h.path, current.as_ref(), h.if_revision)?;
        if let Some(base) = h.base_revision {
            let now = current.as_ref().map(|f| f.revision);
            if now != Some(base) {
                return Err(ServiceError::Conflict(format!(
                    "{}: base revision {base} no longer exists (the file is {}); \
                     upload the whole file or start from the current version",
                    h.path.shown(),
                    now.map_or_else(|| "gone".to_owned(), |r| format!("at revision {r}"))
                )));
            }
        }
        let mut known = KnownChunks::new(&PARAMS_V1);
        let mut files: Vec<Arc<File>> = Vec::new();
        let mut stamps: Vec<Option<Trusted>> = Vec::new();
        let mut opened: std::collections::HashMap<RemotePath, Option<(u32, Revision)>> =
            Default::default();
        let mut base = None;
        if current.is_some() {
            match self.manifest_of(&h.path).await {
                Ok((record, m, file)) => {
                    known.add_manifest(SourceId(0), &m).map_err(plan_error)?;
                    stamps.push(trusted(&file, &record));
                    files.push(Arc::new(file));
                    opened.insert(h.path.clone(), Some((0, record.revision)));
                    base = Some((SourceId(0), m));
                }
                // Replaced or removed meanwhile: no base, the chunk index may
                // still find its chunks.
                Err(ServiceError::NotFound(_) | ServiceError::Aborted(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let s = self.clone();
        let who = who.clone();
        let chunks = h.manifest.chunks.clone();
        let part = super::disk::partial_name(
            &h.path,
            h.manifest.size,
            distribusync_proto::unix_nanos(h.modified),
        );
        let (known, files, stamps, base) = self
            .run(move || {
                let Inner { index, disk, .. } = &*s.inner;
                // A part kept of an interrupted upload of this very file
                // (same path, size and modified time; whole or delta) is a
                // prefix of it: its whole chunks need not be sent again.
                if let Ok(f) = File::open(disk.partials_dir().join(&part))
                    && let Ok(len) = f.metadata().map(|m| m.len())
                {
                    let mut end = 0u64;
                    let whole = chunks
                        .iter()
                        .take_while(|c| {
                            end += u64::from(c.len);
                            end <= len
                        })
                        .count();
                    if whole > 0 {
                        let id = u32::try_from(files.len()).unwrap_or(u32::MAX);
                        files.push(Arc::new(f));
                        stamps.push(None);
                        known.add_pieces(SourceId(id), 0, &chunks[..whole]);
                        tracing::debug!(part = %part, len, chunks = whole, "delta upload resumes from a kept part");
                    }
                }
                // Chunks found per source other than the path's own version,
                // and what each source is: the best one is the fine round's
                // base when the path has no version (a copy, then edited).
                let mut hits: std::collections::HashMap<u32, (usize, RemotePath, Revision)> =
                    Default::default();
                for c in &chunks {
                    if known.locate(&c.hash).is_some() {
                        continue;
                    }
                    for at in index.locate(&c.hash)? {
                        if at.len != c.len || !who.sees(&at.path) {
                            continue;
                        }
                        let source = match opened.get(&at.path) {
                            Some(Some((id, rev))) if *rev == at.revision => *id,
                            Some(_) => continue,
                            None => {
                                // Opened once; its current revision must be
                                // the one indexed (bytes are checked anyway).
                                let record =
                                    index.get(&at.path)?.filter(|f| f.revision == at.revision);
                                let file = record
                                    .as_ref()
                                    .and_then(|_| disk.open_file(&at.path).ok());
                                let (Some(record), Some(file)) = (record, file) else {
                                    opened.insert(at.path.clone(), None);
                                    continue;
                                };
                                let id = u32::try_from(files.len()).unwrap_or(u32::MAX);
                                stamps.push(trusted(&file, &record));
                                files.push(Arc::new(file));
                                opened.insert(at.path.clone(), Some((id, at.revision)));
                                id
                            }
                        };
                        known.add_pieces(
                            SourceId(source),
                            at.offset,
                            &[ChunkRef {
                                len: c.len,
                                hash: c.hash,
                            }],
                        );
                        hits.entry(source)
                            .or_insert_with(|| (0, at.path.clone(), at.revision))
                            .0 += 1;
                        break;
                    }
                }
                if base.is_none()
                    && let Some((id, (_, path, revision))) = hits
                        .into_iter()
                        .max_by_key(|(id, (n, _, _))| (*n, std::cmp::Reverse(*id)))
                {
                    base = index
                        .manifest(&path, revision)?
                        .map(|m| (SourceId(id), m));
                }
                Ok((known, files, stamps, base))
            })
            .await?;
        let plan = DeltaPlan::new(&h.manifest, &known, &PARAMS_V1).map_err(plan_error)?;
        Ok(DeltaSources {
            plan,
            files,
            stamps,
            known,
            base,
        })
    }

    /// Which of `chunks` the server holds (by the chunk index, current
    /// versions only) in files `who` may read: the probe before a new
    /// file's delta upload. A hint, as the index is: an upload checks every
    /// byte it copies.
    ///
    /// # Errors
    /// The index's.
    pub async fn find_chunks(&self, who: &Identity, chunks: Vec<ChunkRef>) -> Result<Vec<bool>> {
        let s = self.clone();
        let who = who.clone();
        self.run(move || {
            let index = &s.inner.index;
            chunks
                .iter()
                .map(|c| {
                    let at = index.locate(&c.hash)?;
                    Ok(at.iter().any(|at| at.len == c.len && who.sees(&at.path)))
                })
                .collect()
        })
        .await
    }

    /// The fine round of a delta upload: cuts the base `regions` (from
    /// [`DeltaSources::regions_to_refine`]) into pieces and looks up the
    /// client's pieces of each missing chunk (`lists`, in order) among
    /// them. Afterwards the plan asks for missing pieces only.
    ///
    /// # Errors
    /// Piece lists that do not describe the missing chunks
    /// (InvalidArgument), or a read error of the base.
    pub async fn refine_delta(
        &self,
        mut sources: DeltaSources,
        regions: Vec<Region>,
        lists: Vec<Vec<ChunkRef>>,
    ) -> Result<DeltaSources> {
        let Some(id) = sources.base.as_ref().map(|(id, _)| *id) else {
            return Err(ServiceError::InvalidArgument(
                "pieces sent for an upload with no base to compare them with".into(),
            ));
        };
        let file = sources.files.get(id.0 as usize).cloned().ok_or_else(gone)?;
        self.run(move || {
            sources
                .known
                .add_regions(id, &regions, &PARAMS_V1, |r, buf| {
                    file.read_exact_at(buf, r.offset)
                })
                .map_err(|e| ServiceError::io("delta base", e))?;
            let known = &sources.known;
            sources.plan.refine(lists, known).map_err(plan_error)?;
            Ok(sources)
        })
        .await
    }

    /// The fine pieces of chunks `chunks` (ascending indexes) of `path`'s
    /// version `revision`, for a delta download's fine round.
    ///
    /// # Errors
    /// ABORTED when the file is no longer at `revision` or changed while it
    /// was read; InvalidArgument for indexes out of order or past the end;
    /// RESOURCE_EXHAUSTED for more than [`MAX_REFINE_BYTES`] of chunks.
    pub async fn fine_pieces(
        &self,
        path: &RemotePath,
        revision: Revision,
        chunks: Vec<u32>,
    ) -> Result<Vec<Vec<ChunkRef>>> {
        let (record, manifest, file) = self.manifest_of(path).await?;
        if record.revision != revision {
            return Err(ServiceError::Aborted(format!(
                "{}: now at revision {}, not {revision}; fetch the manifest again",
                path.shown(),
                record.revision
            )));
        }
        let starts: Vec<(u64, ChunkRef)> = manifest.offsets().collect();
        let mut total = 0u64;
        let mut last: Option<u32> = None;
        for &i in &chunks {
            if last.is_some_and(|l| l >= i) || i as usize >= starts.len() {
                return Err(ServiceError::InvalidArgument(format!(
                    "{}: chunk indexes must be ascending and below {} (got {i})",
                    path.shown(),
                    starts.len()
                )));
            }
            last = Some(i);
            total += u64::from(starts[i as usize].1.len);
        }
        if total > MAX_REFINE_BYTES {
            return Err(ServiceError::TooLarge {
                what: format!("pieces of {total} bytes of chunks"),
                limit: format!("{MAX_REFINE_BYTES} bytes per request"),
            });
        }
        let p = path.clone();
        self.run(move || {
            let mut buf = Vec::new();
            let mut out = Vec::with_capacity(chunks.len());
            for i in chunks {
                let (offset, c) = starts[i as usize];
                buf.resize(c.len as usize, 0);
                let read = file.read_exact_at(&mut buf, offset);
                if read.is_err() || ContentHash::of(&buf) != c.hash {
                    return Err(ServiceError::Aborted(format!(
                        "{}: the file changed on the server while it was read; try again",
                        p.shown()
                    )));
                }
                out.push(fine_chunks(&buf, &PARAMS_V1));
            }
            Ok(out)
        })
        .await
    }

    /// Starts assembling the file of `h` in a fresh staging file.
    ///
    /// # Errors
    /// When no staging file can be made.
    pub async fn begin_delta(&self, h: DeltaHeader, sources: DeltaSources) -> Result<DeltaWrite> {
        if self.cluster().is_some() {
            return Err(Self::unsupported("delta transfer"));
        }
        let s = self.clone();
        let (staged, file) = self
            .run(move || {
                let (path, file) = s.inner.disk.stage()?;
                Ok((StagedGuard::new(&s, path, None), file))
            })
            .await?;
        let ops = sources.plan.ops();
        let rebuilt = RebuiltChunks::new(&sources.plan);
        let exact = exact_copy(&ops, &sources.stamps, &h.manifest);
        Ok(DeltaWrite {
            store: self.clone(),
            staged,
            state: Some(WriteState {
                hasher: blake3::Hasher::new(),
                sink: Sink {
                    file,
                    written: 0,
                    flushed: 0,
                    rebuilt,
                    path: h.path.clone(),
                },
            }),
            header: h,
            ops,
            next: 0,
            files: sources.files,
            exact,
            stamps: sources.stamps,
            unchecked: false,
        })
    }
}

use super::Inner;

/// How many manifests are being computed, and the most at once so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManifestLoad {
    pub running: u64,
    pub most: u64,
}

/// The bound on manifests computed at once: a semaphore, and a count of
/// the computations actually running (taken around the computation itself,
/// not the permit), which the metrics show and a test checks the bound by.
#[derive(Debug)]
pub(super) struct ManifestGate {
    permits: Arc<tokio::sync::Semaphore>,
    running: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
}

/// One manifest being computed; counted while it lives.
#[derive(Debug)]
pub(super) struct Computing(Arc<AtomicU64>);

impl Drop for Computing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ManifestGate {
    pub(super) fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            running: Arc::default(),
            most: Arc::default(),
        }
    }

    /// Waits for a turn to compute a manifest.
    pub(super) async fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.map_err(|_| {
            ServiceError::io("manifests", std::io::Error::other("the store is closing"))
        })
    }

    /// Counts one computation until the value returned is dropped.
    pub(super) fn computing(&self) -> Computing {
        let now = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.most.fetch_max(now, Ordering::Relaxed);
        Computing(self.running.clone())
    }

    pub(super) fn load(&self) -> ManifestLoad {
        ManifestLoad {
            running: self.running.load(Ordering::Relaxed),
            most: self.most.load(Ordering::Relaxed),
        }
    }
}

fn plan_error(e: distribusync_core::delta::PlanError) -> ServiceError {
    ServiceError::InvalidArgument(e.to_string())
}

#[derive(Debug)]
struct WriteState {
    /// The whole file's hash, fed every byte written, in order.
    hasher: blake3::Hasher,
    sink: Sink,
}

/// The staging file and what was written to it.
#[derive(Debug)]
struct Sink {
    file: File,
    written: u64,
    /// Bytes written when the last writeback hint was given.
    flushed: u64,
    /// The chunks rebuilt from fine pieces, each checked against its hash
    /// in the manifest as its last byte is written.
    rebuilt: RebuiltChunks,
    /// The file being uploaded, for errors.
    path: RemotePath,
}

/// A delta upload being assembled in staging, op by op: copies from the
/// server's files run on the blocking pool in bounded steps; literal bytes
/// are handed in by the caller as they arrive from the client.
#[derive(Debug)]
pub struct DeltaWrite {
    store: Store,
    header: DeltaHeader,
    staged: StagedGuard,
    state: Option<WriteState>,
    ops: Vec<Op>,
    next: usize,
    files: Vec<Arc<File>>,
    /// As [`DeltaSources::stamps`].
    stamps: Vec<Option<Trusted>>,
    /// The whole file is one trusted source's bytes, copied in the kernel
    /// and not hashed (see [`exact_copy`]).
    exact: bool,
    /// Some copied bytes were taken on the whole-file hash alone (their
    /// source trusted): a mismatch at the end is then looked into.
    unchecked: bool,
}

impl DeltaWrite {
    /// Does every copy up to the next literal; returns that literal's
    /// length, or `None` when no op is left.
    ///
    /// # Errors
    /// A source that no longer holds the chunk (it changed meanwhile:
    /// ABORTED, try again), or an IO error.
    pub async fn next_literal(&mut self) -> Result<Option<u32>> {
        loop {
            match self.ops.get(self.next) {
                None => return Ok(None),
                Some(Op::Literal { len, .. }) => return Ok(Some(*len)),
                Some(Op::Copy { .. }) => {}
            }
            // A run of copies, at most COPY_STEP bytes, in one blocking task.
            let mut end = self.next;
            let mut bytes = 0u64;
            while let Some(op @ Op::Copy { .. }) = self.ops.get(end) {
                if bytes > 0 && bytes + u64::from(op.len()) > COPY_STEP {
                    break;
                }
                bytes += u64::from(op.len());
                end += 1;
            }
            let stamps = self.stamps.clone();
            let (blocks, used) =
                copy_blocks(&self.ops[self.next..end], COPY_BLOCK, u64::MAX, |s| {
                    stamps.get(s.0 as usize).is_none_or(Option::is_none)
                });
            self.unchecked |= blocks.iter().any(|b| !b.check);
            let (files, exact) = (self.files.clone(), self.exact);
            let mut state = self.state.take().ok_or_else(gone)?;
            let path = self.header.path.clone();
            let state = self
                .store
                .run(move || {
                    let changed = || {
                        ServiceError::Aborted(format!(
                            "{}: a file the server copies from changed during the upload; \
                             try again",
                            path.shown()
                        ))
                    };
                    let WriteState { hasher, sink } = &mut state;
                    if exact {
                        // One trusted file, whole: its bytes need not
                        // come into the process (see `exact_copy`).
                        for b in &blocks {
                            let file = files.get(b.source.0 as usize).ok_or_else(gone)?;
                            if !sink.copy_from(file, b.offset, b.len)? {
                                return Err(changed());
                            }
                        }
                    } else {
                        // Read ahead and written behind while each block
                        // is hashed. A chunk of an untrusted source is
                        // checked against its hash (it may have changed
                        // since it was indexed); one of a trusted source
                        // only feeds the whole-file hash (docs/DESIGN.md,
                        // "Time (round 7)").
                        copy_pipelined(
                            &blocks,
                            hasher,
                            |b, buf| match files.get(b.source.0 as usize) {
                                Some(f) => f.read_exact_at(buf, b.offset),
                                None => Err(std::io::Error::other("no such source")),
                            },
                            |bytes| sink.write(bytes),
                        )
                        .map_err(|e| match e {
                            CopyError::Write(e) => e,
                            CopyError::Read { .. } | CopyError::Mismatch { .. } => changed(),
                        })?;
                    }
                    // A trusted source written meanwhile no longer is.
                    for b in blocks.iter().filter(|b| !b.check) {
                        let i = b.source.0 as usize;
                        let now = files.get(i).and_then(|f| FileMeta::of_open(f));
                        let then = stamps.get(i).copied().flatten().map(|t| t.meta);
                        if now.is_none() || now != then {
                            return Err(changed());
                        }
                    }
                    Ok(state)
                })
                .await?;
            self.state = Some(state);
            self.next += used;
        }
    }

    /// Writes the bytes of the literal op [`Self::next_literal`] named.
    ///
    /// # Errors
    /// InvalidArgument when the bytes do not match the chunk's length or
    /// hash (naming its offsets), or an IO error.
    pub async fn literal(&mut self, bytes: Vec<u8>) -> Result<()> {
        let Some(Op::Literal { len, hash }) = self.ops.get(self.next).copied() else {
            return Err(ServiceError::InvalidArgument(
                "data sent after every chunk asked for arrived".into(),
            ));
        };
        let mut state = self.state.take().ok_or_else(gone)?;
        let path = self.header.path.clone();
        let state = self
            .store
            .run(move || {
                let (offset, end) = (state.sink.written, state.sink.written + bytes.len() as u64);
                let piece = [ChunkRef { len, hash }];
                let fits = bytes.len() == len as usize;
                if !fits || hash_checking(&mut state.hasher, &bytes, &piece).is_err() {
                    return Err(ServiceError::InvalidArgument(format!(
                        "{}: the data for bytes {offset}..{} does not match chunk {hash} of the \
                         manifest (got {} bytes)",
                        path.shown(),
                        offset + u64::from(len),
                        end - offset
                    )));
                }
                state.sink.write(&bytes)?;
                Ok(state)
            })
            .await?;
        self.state = Some(state);
        self.next += 1;
        Ok(())
    }

    /// Verifies the whole file, makes it durable and installs it.
    ///
    /// # Errors
    /// InvalidArgument when the file is not what the manifest announced;
    /// a revision mismatch or conflict found at commit time.
    pub async fn finish(mut self) -> Result<FileRecord> {
        if self.next != self.ops.len() {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: the upload ended before every chunk asked for arrived",
                self.header.path.shown()
            )));
        }
        let state = self.state.take().ok_or_else(gone)?;
        let h = self.header.clone();
        let (path, size, hash, modified) =
            (h.path.clone(), h.manifest.size, h.manifest.hash, h.modified);
        let exact = self.exact;
        let recheck = self.unchecked.then(|| {
            let staged = self.staged.path.clone();
            (staged, self.ops.clone(), self.stamps.clone())
        });
        self.store
            .run(move || {
                // An exact copy's bytes are those of a file whose hash is
                // the manifest's: not hashed again.
                let got: ContentHash = if exact {
                    hash
                } else {
                    state.hasher.finalize().into()
                };
                if got != hash || state.sink.written != size {
                    // Some bytes were copied on trust: if one of them is
                    // not its chunk, a source changed (try again), else
                    // the manifest is wrong (the client's error).
                    if let Some((Some(staged), ops, stamps)) = recheck
                        && !copies_hold(&staged, &ops, &stamps)
                    {
                        return Err(ServiceError::Aborted(format!(
                            "{}: a file the server copies from changed during the upload; \
                             try again",
                            path.shown()
                        )));
                    }
                    return Err(ServiceError::InvalidArgument(format!(
                        "{}: the assembled file ({} bytes, hash {got}) is not the one the \
                         manifest announced ({size} bytes, hash {hash})",
                        path.shown(),
                        state.sink.written,
                    )));
                }
                super::disk::set_modified(&state.sink.file, &path, modified)?;
                state
                    .sink
                    .file
                    .sync_all()
                    .map_err(|e| ServiceError::io("staging file", e))
            })
            .await?;
        let header = UploadHeader {
            path: h.path.clone(),
            size: h.manifest.size,
            hash: h.manifest.hash,
            modified: h.modified,
            if_revision: h.if_revision,
            offset: 0,
            resumable: false,
            locks: h.locks.clone(),
        };
        let staged = self.staged.path.clone().ok_or_else(gone)?;
        let record = self
            .store
            .commit_upload(&header, staged, Some(h.manifest))
            .await?;
        // Installed: the staging name is gone.
        self.staged.take();
        // The last handle on a file it replaced frees that file's blocks
        // and cached pages when it closes (about 0.5 s for 1 GiB here):
        // not on the way to the client's answer.
        let files = std::mem::take(&mut self.files);
        tokio::task::spawn_blocking(move || drop(files));
        // A part kept of an earlier attempt of this file is of no use now.
        let modified_ns = distribusync_proto::unix_nanos(header.modified);
        let s = self.store.clone();
        let _ = self
            .store
            .run(move || {
                let (path, size) = (&header.path, header.size);
                let name = super::disk::partial_name(path, size, modified_ns);
                let _ = std::fs::remove_file(s.inner.disk.partials_dir().join(name));
                s.forget_part_hash(path, size, modified_ns);
                Ok(())
            })
            .await;
        Ok(record)
    }

    /// Keeps what was assembled so far, verified op by op, as the kept part
    /// of this file (the key of whole uploads: path, size, modified time),
    /// so that a retry, by delta or whole, sends only the rest; within the
    /// bound on kept parts (`--max-kept-bytes`). Nothing is kept when an
    /// existing part holds as much, or nothing was written.
    pub async fn keep(mut self) {
        let Some(state) = self.state.take() else {
            return; // lost mid-step: the guard removes the file
        };
        if self.exact {
            // Not hashed as it was copied, and cheap to copy again.
            return;
        }
        let Some(staged) = self.staged.path.clone() else {
            return;
        };
        let h = self.header.clone();
        let s = self.store.clone();
        let guard = self.staged;
        let _ = self
            .store
            .run(move || {
                let modified_ns = distribusync_proto::unix_nanos(h.modified);
                let (path, size) = (&h.path, h.manifest.size);
                let name = super::disk::partial_name(path, size, modified_ns);
                let existing = std::fs::metadata(s.inner.disk.partials_dir().join(name))
                    .map_or(0, |m| m.len());
                if state.sink.written == 0 || state.sink.written <= existing {
                    drop(guard); // removes the staging file
                    return Ok(());
                }
                s.remember_part_hash(path, size, modified_ns, state.hasher.clone());
                let kept = state
                    .sink
                    .file
                    .set_modified(SystemTime::now())
                    .and_then(|()| state.sink.file.sync_data())
                    .and_then(|()| s.inner.disk.keep_partial(&staged, path, size, modified_ns));
                match kept {
                    Ok(()) => {
                        guard.take();
                        tracing::info!(path = %path, bytes = state.sink.written, "kept the part of an interrupted delta upload");
                        s.trim_kept_parts();
                    }
                    Err(_) => {
                        s.forget_part_hash(path, size, modified_ns);
                        drop(guard);
                    }
                }
                Ok(())
            })
            .await;
    }
}

impl Sink {
    /// Writes bytes already fed to the whole-file hash, starting their
    /// writeback every [`super::upload::WRITEBACK_STEP`] so that the fsync
    /// before install has little left to do.
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        // Before the write: a chunk the client's pieces do not rebuild is
        // its error (each piece matched its own hash), and nothing of it
        // reaches the staging file.
        self.rebuilt
            .feed(bytes)
            .map_err(|e| ServiceError::InvalidArgument(format!("{}: {e}", self.path.shown())))?;
        self.file
            .write_all(bytes)
            .map_err(|e| ServiceError::io("staging file", e))?;
        self.written += bytes.len() as u64;
        self.hint();
        Ok(())
    }

    /// Starts the writeback of what was written since the last hint, every
    /// [`super::upload::WRITEBACK_STEP`].
    fn hint(&mut self) {
        if self.written - self.flushed >= super::upload::WRITEBACK_STEP {
            super::upload::start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
    }

    /// Appends `len` bytes of `src` from `offset`, copied inside the kernel
    /// (`copy_file_range`) where it can, else through a buffer, and not
    /// hashed (see `exact_copy`). `Ok(false)` when `src` ends first.
    fn copy_from(&mut self, src: &File, mut offset: u64, len: u64) -> Result<bool> {
        let io = |e| ServiceError::io("staging file", e);
        let end = offset + len;
        let mut buf: Vec<u8> = Vec::new();
        while offset < end {
            let want = usize::try_from(end - offset)
                .unwrap_or(usize::MAX)
                .min(COPY_BLOCK as usize);
            let n = if buf.is_empty() {
                match rustix::fs::copy_file_range(src, Some(&mut offset), &self.file, None, want) {
                    Ok(0) => return Ok(false),
                    Ok(n) => n,
                    // Not between these files (another filesystem, an
                    // old kernel): through a buffer from here on.
                    Err(_) => {
                        buf.resize(COPY_BLOCK as usize, 0);
                        continue;
                    }
                }
            } else {
                let n = src.read_at(&mut buf[..want], offset).map_err(io)?;
                if n == 0 {
                    return Ok(false);
                }
                self.file.write_all(&buf[..n]).map_err(io)?;
                offset += n as u64;
                n
            };
            self.written += n as u64;
            self.hint();
        }
        Ok(true)
    }
}

/// A copy source whose size and modified time are those the index records
/// for the version whose manifest named its chunks (the rule reconcile
/// uses for "unchanged"): its bytes are taken to be what that manifest and
/// `hash` say (docs/DESIGN.md, "Time (round 7)").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trusted {
    meta: FileMeta,
    hash: ContentHash,
}

/// `file` as a trusted source of `record`'s version, if it is one.
fn trusted(file: &File, record: &FileRecord) -> Option<Trusted> {
    FileMeta::of_open(file)
        .filter(|m| m.len == record.size && m.modified_ns == record.modified_ns)
        .map(|meta| Trusted {
            meta,
            hash: record.hash,
        })
}

/// Whether `ops` copy all of one trusted source, in order, and that
/// source's recorded hash and size are the manifest's: the new file is
/// then byte for byte a file whose hash the index already holds (and which
/// downloads serve on that trust), so its bytes are copied in the kernel
/// and not hashed again; a copy under a new name costs a copy, not a read
/// and two hash passes.
fn exact_copy(ops: &[Op], stamps: &[Option<Trusted>], m: &Manifest) -> bool {
    let Some(Op::Copy { from: first, .. }) = ops.first() else {
        return false;
    };
    let Some(t) = stamps.get(first.source.0 as usize).copied().flatten() else {
        return false;
    };
    if t.hash != m.hash || t.meta.len != m.size {
        return false;
    }
    let mut at = 0u64;
    for op in ops {
        match op {
            Op::Copy { from, len, .. } if from.source == first.source && from.offset == at => {
                at += u64::from(*len);
            }
            _ => return false,
        }
    }
    at == m.size
}

/// Whether every chunk copied from a trusted source is, in the staging
/// file `staged`, what its hash says (read back after a whole-file
/// mismatch, to tell a changed source from a wrong manifest).
fn copies_hold(staged: &std::path::Path, ops: &[Op], stamps: &[Option<Trusted>]) -> bool {
    let Ok(file) = File::open(staged) else {
        return false;
    };
    let mut at = 0u64;
    let mut buf = Vec::new();
    for op in ops {
        if let Op::Copy { from, len, hash } = op
            && stamps
                .get(from.source.0 as usize)
                .is_some_and(Option::is_some)
        {
            buf.resize(*len as usize, 0);
            if file.read_exact_at(&mut buf, at).is_err() || ContentHash::of(&buf) != *hash {
                return false;
            }
        }
        at += u64::from(op.len());
    }
    true
}

fn gone() -> ServiceError {
    ServiceError::io("delta upload", std::io::Error::other("assembly state lost"))
}
