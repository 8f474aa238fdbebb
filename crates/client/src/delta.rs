//! Delta transfers on the client: [`FilesClient::upload_delta`] sends only
//! the chunks the server lacks; [`FilesClient::download_delta`] fetches
//! only the ranges of the new version that the local old version lacks.
//! [`FilesClient::put`] and [`FilesClient::get`] choose between them and
//! the whole-file transfers by a [`DeltaPolicy`].
//!
//! Invariants: the local file is replaced only by a file whose whole-file
//! hash is the server's (assembled in a partial file beside it, fsynced,
//! renamed); an upload sends bytes read from the file it chunked, and the
//! server checks each chunk and the whole (a file edited meanwhile is
//! refused, never installed half old, half new).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use distribusync_core::delta::{
    Bitmap, ChunkRef, CopyError, DeltaPlan, KnownChunks, Manifest, ManifestBuilder, ManifestLimits,
    Op, PARAMS_V1, Region, SourceId, chunks_requested, copy_blocks, copy_pipelined, fine_chunks,
    hash_checking, manifest_of_reader, ranges_to_send, regions_to_refine, worth_refining,
};
use distribusync_core::{ContentHash, RemotePath, Revision, limits};
use distribusync_proto::delta::{
    ManifestReceiver, manifest_header, manifest_pages, pieces_of_page, pieces_page,
};
use distribusync_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ClientError, Result};
use crate::files::{BeforeReplace, FileInfo, FilesClient, Progress, protocol};

/// When a transfer goes by delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaPolicy {
    /// Files smaller than this go whole (the manifest exchange costs a
    /// round trip and a chunking pass; for small files whole is as quick).
    pub min_size: u64,
}

/// Largest new file (no version at its path) whose chunks are looked for
/// in the server's other files when the server cannot be asked first
/// (an older server without FindChunks): the search reads the whole file
/// once before sending anything. 1 GiB covers the copies the issue names
/// (a 500 MiB video under a second name); bigger new files go whole.
pub const NEW_PATH_SEARCH_MAX: u64 = 1 << 30;

/// Bytes at the start of a new file chunked for the probe
/// ([`FilesClient::probe`]): about a dozen coarse chunks.
const PROBE_BYTES: u64 = 16 << 20;

/// Most chunks a probe asks about (the server's limit is 64).
const PROBE_CHUNKS: usize = 64;

/// Most bytes of the base read, hashed and written at once by a delta
/// download (consecutive chunks); at least one chunk. Three are in flight
/// (read, hashed, written: `copy_pipelined`).
const COPY_BLOCK: u64 = 4 << 20;

/// Data written between writeback hints (as whole downloads do).
const WRITEBACK_STEP: u64 = 8 << 20;

/// The default threshold: 8 MiB (bench/RESULTS.md, "Delta transfer").
pub const DEFAULT_DELTA_MIN_SIZE: u64 = 8 << 20;

impl Default for DeltaPolicy {
    fn default() -> Self {
        Self {
            min_size: DEFAULT_DELTA_MIN_SIZE,
        }
    }
}

impl DeltaPolicy {
    /// Never delta (every file is below the threshold).
    pub fn off() -> Self {
        Self { min_size: u64::MAX }
    }
}

/// How a delta upload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// Installed; `sent` chunk bytes went over the wire.
    Done { file: FileInfo, sent: u64 },
    /// The server lacks more than half of the file: nothing was sent and
    /// nothing installed; a whole-file (resumable) upload is better.
    Declined { missing: u64 },
}

fn local_err(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::local(path, e)
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::local(path, std::io::Error::other(e)))?
}

/// The manifest of a local file.
///
/// # Errors
/// When the file cannot be read.
pub async fn local_manifest(path: &Path) -> Result<Manifest> {
    let p = path.to_owned();
    blocking(path, move || {
        let f = File::open(&p).map_err(local_err(&p))?;
        manifest_of_reader(f, &PARAMS_V1).map_err(local_err(&p))
    })
    .await
}

/// The fine pieces of chunks `wanted` of `local` (whose manifest is
/// `manifest`), read one chunk at a time.
async fn chunk_pieces(
    local: &Path,
    manifest: &Arc<Manifest>,
    wanted: &[usize],
) -> Result<Vec<Vec<ChunkRef>>> {
    let (p, m, wanted) = (local.to_owned(), manifest.clone(), wanted.to_vec());
    blocking(local, move || {
        let file = File::open(&p).map_err(local_err(&p))?;
        let starts: Vec<(u64, ChunkRef)> = m.offsets().collect();
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(wanted.len());
        for i in wanted {
            let (offset, c) = starts[i];
            buf.resize(c.len as usize, 0);
            file.read_exact_at(&mut buf, offset)
                .map_err(local_err(&p))?;
            out.push(fine_chunks(&buf, &PARAMS_V1));
        }
        Ok(out)
    })
    .await
}

impl FilesClient {
    /// Uploads `local` as `remote` sending only the chunks the server does
    /// not already hold in files this caller may read (the current version
    /// of `remote`, or any other: a copy sends no chunk at all). With
    /// `decline_over_half`, gives up before sending anything when the server
    /// lacks more than half of the bytes ([`DeltaOutcome::Declined`]).
    ///
    /// # Errors
    /// Local read errors, a revision mismatch (`if_revision`), a base that
    /// is no longer current (`base_revision`), or the server's refusal.
    pub async fn upload_delta(
        &self,
        local: &Path,
        remote: &RemotePath,
        if_revision: Option<Revision>,
        base_revision: Option<Revision>,
        decline_over_half: bool,
        progress: Arc<dyn Progress>,
    ) -> Result<DeltaOutcome> {
        let meta = fs::metadata(local).map_err(local_err(local))?;
        let manifest = local_manifest(local).await?;
        let modified = meta.modified().map_err(local_err(local))?;
        let (tx, rx) = mpsc::channel::<v1::DeltaUploadRequest>(4);
        use v1::delta_upload_request::Msg;
        let begin = v1::DeltaUploadRequest {
            msg: Some(Msg::Begin(v1::DeltaBegin {
                path: remote.to_string(),
                manifest: Some(manifest_header(&manifest)),
                modified: Some(distribusync_proto::timestamp(modified)),
                if_revision,
                base_revision,
                fine: true,
            })),
        };
        let manifest = Arc::new(manifest);
        let m = manifest.clone();
        let sender = tokio::spawn({
            let tx = tx.clone();
            async move {
                if tx.send(begin).await.is_err() {
                    return;
                }
                for page in manifest_pages(&m) {
                    let msg = v1::DeltaUploadRequest {
                        msg: Some(Msg::Page(page)),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut inner = self.inner.clone();
        let mut replies = inner
            .delta_upload(ReceiverStream::new(rx))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        use v1::delta_upload_response::Msg as Reply;
        let need = match replies.message().await.map_err(|s| self.err(s))? {
            Some(v1::DeltaUploadResponse {
                msg: Some(Reply::Need(n)),
            }) => n,
            _ => return Err(protocol("delta upload: no DeltaNeed")),
        };
        let _ = sender.await;
        let bad = |e: &dyn std::fmt::Display| protocol(&format!("delta upload: {e}"));
        let bitmap =
            Bitmap::from_bytes(need.missing, manifest.chunks.len()).map_err(|e| bad(&e))?;
        let wanted = chunks_requested(&manifest, &bitmap).map_err(|e| bad(&e))?;
        let whole = ranges_to_send(&manifest, &wanted, None).map_err(|e| bad(&e))?;
        let mut total: u64 = whole.iter().map(|r| r.len).sum();
        if total != need.bytes {
            return Err(protocol("delta upload: the bytes asked for do not add up"));
        }
        if decline_over_half && total > manifest.size / 2 {
            // Dropping the stream ends the upload on the server; nothing
            // was staged beyond an empty file, which it removes.
            return Ok(DeltaOutcome::Declined { missing: total });
        }
        let ranges = if need.pieces {
            // The fine round: the pieces of each missing chunk, then the
            // server says which pieces it lacks.
            let lists = chunk_pieces(local, &manifest, &wanted).await?;
            for l in &lists {
                let msg = v1::DeltaUploadRequest {
                    msg: Some(Msg::Pieces(pieces_page(l))),
                };
                if tx.send(msg).await.is_err() {
                    break; // the server ended the stream: its reply says why
                }
            }
            let need = match replies.message().await.map_err(|s| self.err(s))? {
                Some(v1::DeltaUploadResponse {
                    msg: Some(Reply::PiecesNeed(n)),
                }) => n,
                _ => return Err(protocol("delta upload: no PiecesNeed")),
            };
            let count = lists.iter().map(Vec::len).sum();
            let bitmap = Bitmap::from_bytes(need.missing, count).map_err(|e| bad(&e))?;
            let ranges =
                ranges_to_send(&manifest, &wanted, Some((&lists, &bitmap))).map_err(|e| bad(&e))?;
            total = ranges.iter().map(|r| r.len).sum();
            if total != need.bytes {
                return Err(protocol("delta upload: the pieces asked for do not add up"));
            }
            ranges
        } else {
            whole
        };
        progress.start(total, 0);
        let path = local.to_owned();
        let reader = tokio::task::spawn_blocking(move || -> Result<()> {
            let file = File::open(&path).map_err(local_err(&path))?;
            for r in ranges {
                let mut at = r.offset;
                let end = r.offset + r.len;
                while at < end {
                    let n = usize::try_from(end - at)
                        .unwrap_or(usize::MAX)
                        .min(limits::CHUNK_SIZE);
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, at).map_err(local_err(&path))?;
                    at += n as u64;
                    progress.advance(n as u64);
                    let msg = v1::DeltaUploadRequest {
                        msg: Some(Msg::Data(buf)),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return Ok(()); // the server ended the stream: its reply says why
                    }
                }
            }
            Ok(())
        });
        let reply = replies.message().await;
        reader
            .await
            .map_err(|e| ClientError::local(local, std::io::Error::other(e)))??;
        match reply.map_err(|s| self.err(s))? {
            Some(v1::DeltaUploadResponse {
                msg: Some(Reply::File(f)),
            }) => Ok(DeltaOutcome::Done {
                file: f.try_into()?,
                sent: total,
            }),
            _ => Err(protocol("delta upload: no file in the reply")),
        }
    }

    /// The manifest of `remote`'s current version, with the version.
    ///
    /// # Errors
    /// NotFound, or a malformed answer.
    pub async fn manifest(&self, remote: &RemotePath) -> Result<(FileInfo, Manifest)> {
        use v1::get_manifest_response::Msg;
        let mut inner = self.inner.clone();
        let mut s = inner
            .get_manifest(v1::GetManifestRequest {
                path: remote.to_string(),
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        let bad = || protocol("GetManifest: file, header, pages");
        let info: FileInfo = match s.message().await.map_err(|st| self.err(st))? {
            Some(v1::GetManifestResponse {
                msg: Some(Msg::File(f)),
            }) => f.try_into()?,
            _ => return Err(bad()),
        };
        let limits = ManifestLimits::default();
        let mut receiver = match s.message().await.map_err(|st| self.err(st))? {
            Some(v1::GetManifestResponse {
                msg: Some(Msg::Header(h)),
            }) => ManifestReceiver::new(&h, &limits).map_err(|e| protocol(&e.to_string()))?,
            _ => return Err(bad()),
        };
        while !receiver.is_complete() {
            match s.message().await.map_err(|st| self.err(st))? {
                Some(v1::GetManifestResponse {
                    msg: Some(Msg::Page(p)),
                }) => receiver.add(p).map_err(|e| protocol(&e.to_string()))?,
                _ => return Err(bad()),
            }
        }
        let m = receiver.finish().map_err(|e| protocol(&e.to_string()))?;
        m.validate(&PARAMS_V1, &limits)
            .map_err(|e| protocol(&e.to_string()))?;
        if m.hash != info.hash || m.size != info.size {
            return Err(protocol("GetManifest: the manifest is not the file's"));
        }
        Ok((info, m))
    }

    /// Downloads `remote` into `local`, fetching only the ranges of the new
    /// version that `local`'s current contents (the base) do not hold.
    /// Returns the file and the bytes of file data fetched.
    ///
    /// # Errors
    /// NotFound, local IO errors, a file that changed on the server while
    /// it was fetched ([`ClientError::Stale`]), or a hash mismatch.
    pub async fn download_delta(
        &self,
        remote: &RemotePath,
        local: &Path,
        progress: Arc<dyn Progress>,
    ) -> Result<(FileInfo, u64)> {
        self.download_delta_checked(remote, local, progress, Box::new(|_| Ok(())))
            .await
            .map(|(info, fetched, _)| (info, fetched))
    }

    /// As [`FilesClient::download_delta`], with `check` run just before the
    /// new file replaces `local` (see [`FilesClient::download_checked`]);
    /// also returns the new file's metadata.
    ///
    /// # Errors
    /// As [`FilesClient::download_delta`], or what `check` returns.
    pub async fn download_delta_checked(
        &self,
        remote: &RemotePath,
        local: &Path,
        progress: Arc<dyn Progress>,
        check: BeforeReplace,
    ) -> Result<(FileInfo, u64, fs::Metadata)> {
        // The base's size and modified time before it is chunked: if they
        // are the same when it is copied from, its chunks are taken to be
        // what its manifest says (the whole file's hash checks the result).
        let stamp = fs::metadata(local)
            .ok()
            .map(|m| (m.len(), m.modified().ok()));
        // The server's manifest comes while the base is chunked.
        let ((info, new), base) = tokio::try_join!(self.manifest(remote), local_manifest(local))?;
        let mut known = KnownChunks::new(&PARAMS_V1);
        known
            .add_manifest(SourceId(0), &base)
            .map_err(|e| protocol(&e.to_string()))?;
        let mut plan =
            DeltaPlan::new(&new, &known, &PARAMS_V1).map_err(|e| protocol(&e.to_string()))?;
        let regions = regions_to_refine(&base, &new);
        let refined = if worth_refining(plan.literal_bytes(), &regions) {
            self.refine_download(remote, &info, local, &mut plan, known, &regions)
                .await?
        } else {
            None
        };
        let ranges = match &refined {
            Some((lists, bitmap)) => ranges_to_send(
                &new,
                plan.missing_chunks(),
                Some((lists.as_slice(), bitmap)),
            ),
            None => ranges_to_send(&new, plan.missing_chunks(), None),
        }
        .map_err(|e| protocol(&e.to_string()))?;
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        progress.start(total, 0);
        let partial = delta_partial(local, &info.hash);
        let ops = plan.ops();
        // Literal bytes arrive range by range (in op order) through this
        // channel; the assembler on the blocking pool copies the rest from
        // the base.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let (old, part) = (local.to_owned(), partial.clone());
        let expected = (new.hash, new.size);
        let assembler = tokio::task::spawn_blocking(move || -> Result<File> {
            let base = File::open(&old).map_err(local_err(&old))?;
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&part)
                .map_err(local_err(&part))?;
            let mut hasher = blake3::Hasher::new();
            let mut carry: Vec<u8> = Vec::new();
            let (mut written, mut flushed) = (0u64, 0u64);
            let mut write = |bytes: &[u8]| -> Result<()> {
                out.write_all(bytes).map_err(local_err(&part))?;
                // Writeback starts as we go, so the fsync below is short.
                written += bytes.len() as u64;
                if written - flushed >= WRITEBACK_STEP {
                    let range = std::num::NonZeroU64::new(written - flushed);
                    let advice = rustix::fs::Advice::DontNeed;
                    let _ = rustix::fs::fadvise(&out, flushed, range, advice);
                    flushed = written;
                }
                Ok(())
            };
            let stale = || {
                ClientError::Stale(format!(
                    "{}: changed while it was being updated; try again",
                    old.display()
                ))
            };
            let now = || {
                let m = base.metadata().ok()?;
                Some((m.len(), m.modified().ok()))
            };
            // The base as it was chunked: its chunks and pieces are what
            // they were hashed to be, and only the whole-file hash takes
            // them (docs/DESIGN.md, "Time (round 7)"); else each is checked.
            let trusted = stamp.is_some() && now() == stamp;
            let mut rest = &ops[..];
            while let Some(&first) = rest.first() {
                let (blocks, used) = copy_blocks(rest, COPY_BLOCK, u64::MAX, |_| !trusted);
                if used > 0 {
                    // Base bytes: read ahead and written behind while
                    // each block is hashed.
                    copy_pipelined(
                        &blocks,
                        &mut hasher,
                        |b, buf| base.read_exact_at(buf, b.offset),
                        &mut write,
                    )
                    .map_err(|e| match e {
                        CopyError::Write(e) => e,
                        CopyError::Read { error, .. } => ClientError::local(&old, error),
                        CopyError::Mismatch { .. } => stale(),
                    })?;
                    rest = &rest[used..];
                    continue;
                }
                let Op::Literal { len, hash } = first else {
                    return Err(protocol("a copy that is not one"));
                };
                while carry.len() < len as usize {
                    match rx.blocking_recv() {
                        Some(d) => carry.extend_from_slice(&d),
                        None => return Err(protocol("download ended early")),
                    }
                }
                let tail = carry.split_off(len as usize);
                let buf = std::mem::replace(&mut carry, tail);
                // The server's bytes are checked as they come.
                if hash_checking(&mut hasher, &buf, &[ChunkRef { len, hash }]).is_err() {
                    return Err(stale());
                }
                write(&buf)?;
                rest = &rest[1..];
            }
            let got: ContentHash = hasher.finalize().into();
            if (got, hasher.count()) != expected {
                // Bytes copied on trust that are not their chunk: the base
                // changed (try again); else the server's bytes are wrong.
                let changed = |op: &Op| match *op {
                    Op::Copy { from, len, hash } => {
                        let mut b = vec![0u8; len as usize];
                        base.read_exact_at(&mut b, from.offset).is_err()
                            || ContentHash::of(&b) != hash
                    }
                    Op::Literal { .. } => false,
                };
                if trusted && ops.iter().any(changed) {
                    return Err(stale());
                }
                return Err(ClientError::Corrupt {
                    path: old.display().to_string(),
                });
            }
            out.sync_all().map_err(local_err(&part))?;
            Ok(out)
        });
        let fetched = self
            .fetch_ranges(remote, &info, &ranges, &tx, progress.as_ref())
            .await;
        drop(tx);
        let assembled = assembler
            .await
            .map_err(|e| ClientError::local(local, std::io::Error::other(e)));
        let file = match (fetched, assembled) {
            (Ok(()), Ok(Ok(f))) => f,
            (Err(e), _) | (_, Err(e)) | (_, Ok(Err(e))) => {
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
        };
        let (part, dest, modified) = (partial.clone(), local.to_owned(), info.modified);
        let meta = blocking(local, move || install(file, &part, &dest, modified, check)).await?;
        Ok((info, total, meta))
    }

    /// As [`FilesClient::get_checked`], first trying `copies`: local files
    /// that the caller's records say hold the bytes of `remote`'s current
    /// version (a copy or a rename made on another machine, seen here by
    /// its hash). The first whose bytes hash to the server's hash is copied
    /// into place and nothing is downloaded; otherwise as `get_checked`.
    ///
    /// # Errors
    /// As [`FilesClient::get_checked`].
    pub async fn get_with_copies(
        &self,
        remote: &RemotePath,
        local: &Path,
        expect: Option<crate::files::Expected>,
        copies: Vec<PathBuf>,
        progress: Arc<dyn Progress>,
        mut check: BeforeReplace,
    ) -> Result<(FileInfo, fs::Metadata)> {
        if !copies.is_empty() {
            let info = self.stat(remote).await?;
            for copy in copies {
                let (dest, i) = (local.to_owned(), info.clone());
                match blocking(local, move || copy_local(&copy, &dest, &i, check)).await? {
                    Ok(meta) => {
                        tracing::debug!(path = %remote, "built from a local copy");
                        return Ok((info, meta));
                    }
                    Err(back) => check = back,
                }
            }
        }
        self.get_checked(remote, local, expect, progress, check)
            .await
    }

    /// The fine round of a delta download: asks the server for the pieces
    /// of the chunks `plan` lacks, cuts the local `regions` into pieces, and
    /// refines `plan`. Returns the piece lists and the missing-piece bitmap
    /// for [`ranges_to_send`]; `None` from a server without GetPieces.
    async fn refine_download(
        &self,
        remote: &RemotePath,
        info: &FileInfo,
        local: &Path,
        plan: &mut DeltaPlan,
        mut known: KnownChunks,
        regions: &[Region],
    ) -> Result<Option<(Vec<Vec<ChunkRef>>, Bitmap)>> {
        let chunks: Vec<u32> = plan
            .missing_chunks()
            .iter()
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        let mut inner = self.inner.clone();
        let request = v1::GetPiecesRequest {
            path: remote.to_string(),
            revision: info.revision,
            chunks,
        };
        let mut s = match inner.get_pieces(request).await {
            Ok(s) => s.into_inner(),
            Err(st) if st.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(st) if st.code() == tonic::Code::Aborted => {
                return Err(ClientError::Stale(format!(
                    "{remote}: changed on the server while it was downloaded; try again"
                )));
            }
            Err(st) => return Err(self.err(st)),
        };
        let count = plan.missing_chunks().len();
        let mut lists = Vec::with_capacity(count);
        while let Some(msg) = s.message().await.map_err(|st| self.err(st))? {
            if lists.len() == count {
                return Err(protocol("GetPieces: more lists than chunks asked for"));
            }
            let page = msg
                .pieces
                .ok_or_else(|| protocol("GetPieces: a message without pieces"))?;
            lists.push(
                pieces_of_page(page, PARAMS_V1.max_fine_per_chunk())
                    .map_err(|e| protocol(&e.to_string()))?,
            );
        }
        let (p, regions) = (local.to_owned(), regions.to_vec());
        let known = blocking(local, move || {
            let file = File::open(&p).map_err(local_err(&p))?;
            known
                .add_regions(SourceId(0), &regions, &PARAMS_V1, |r, buf| {
                    file.read_exact_at(buf, r.offset)
                })
                .map_err(local_err(&p))?;
            Ok(known)
        })
        .await?;
        plan.refine(lists.clone(), &known)
            .map_err(|e| protocol(&e.to_string()))?;
        let bitmap = plan
            .missing_pieces_bitmap()
            .ok_or_else(|| protocol("refined plan without pieces"))?;
        Ok(Some((lists, bitmap)))
    }

    /// Streams the bytes of `ranges` of `remote` (which must still be the
    /// version `info`) into `tx`, in order.
    async fn fetch_ranges(
        &self,
        remote: &RemotePath,
        info: &FileInfo,
        ranges: &[distribusync_core::delta::Region],
        tx: &mpsc::Sender<Vec<u8>>,
        progress: &dyn Progress,
    ) -> Result<()> {
        use v1::download_response::Msg;
        for r in ranges {
            let mut inner = self.inner.clone();
            let mut s = inner
                .download(v1::DownloadRequest {
                    path: remote.to_string(),
                    offset: r.offset,
                    length: Some(r.len),
                })
                .await
                .map_err(|st| self.err(st))?
                .into_inner();
            match s.message().await.map_err(|st| self.err(st))? {
                Some(v1::DownloadResponse {
                    msg: Some(Msg::Info(i)),
                }) if i.revision == info.revision => {}
                Some(v1::DownloadResponse {
                    msg: Some(Msg::Info(_)),
                }) => {
                    return Err(ClientError::Stale(format!(
                        "{remote}: changed on the server while it was downloaded; try again"
                    )));
                }
                _ => return Err(protocol("download did not start with file info")),
            }
            let mut got = 0u64;
            while let Some(msg) = s.message().await.map_err(|st| self.err(st))? {
                let Some(Msg::Chunk(data)) = msg.msg else {
                    return Err(protocol("unexpected message in download"));
                };
                got += data.len() as u64;
                progress.advance(data.len() as u64);
                if tx.send(data).await.is_err() {
                    return Ok(()); // the assembler failed: its error says why
                }
            }
            if got != r.len {
                return Err(protocol("a ranged download returned the wrong length"));
            }
        }
        Ok(())
    }

    /// Whether the server holds any of the first chunks of `local` (its
    /// first [`PROBE_BYTES`], cut as a whole manifest cuts them) in files
    /// this caller may read: the question asked before a new file is
    /// chunked whole for a delta upload, so that new content goes at once
    /// and a copy still goes by delta. `None` from a server that cannot
    /// answer (no FindChunks).
    ///
    /// # Errors
    /// Local read errors, or the server's refusal.
    pub async fn probe(&self, local: &Path) -> Result<Option<bool>> {
        let p = local.to_owned();
        let chunks = blocking(local, move || {
            use std::io::Read;
            let file = File::open(&p).map_err(local_err(&p))?;
            let whole = file.metadata().map_err(local_err(&p))?.len() <= PROBE_BYTES;
            let mut builder = ManifestBuilder::new(&PARAMS_V1);
            let mut input = file.take(PROBE_BYTES);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => builder.update(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ClientError::local(&p, e)),
                }
            }
            // All of a short file is cut; of a longer one, the chunks
            // that the rest cannot change.
            let mut chunks = if whole {
                builder.finish().chunks
            } else {
                builder.chunks().to_vec()
            };
            chunks.truncate(PROBE_CHUNKS);
            Ok(chunks)
        })
        .await?;
        if chunks.is_empty() {
            return Ok(Some(false));
        }
        let mut inner = self.inner.clone();
        let request = v1::FindChunksRequest {
            params: PARAMS_V1.id(),
            chunks: Some(pieces_page(&chunks)),
        };
        match inner.find_chunks(request).await {
            Ok(r) => {
                let known = Bitmap::from_bytes(r.into_inner().known, chunks.len())
                    .map_err(|e| protocol(&format!("FindChunks: {e}")))?;
                Ok(Some(known.ones().next().is_some()))
            }
            Err(st) if st.code() == tonic::Code::Unimplemented => Ok(None),
            Err(st) => Err(self.err(st)),
        }
    }

    /// Bytes the server's Files service received and sent since it
    /// started (needs the admin scope).
    ///
    /// # Errors
    /// An unreachable server, or a token without the scope.
    pub async fn stats(&self) -> Result<(u64, u64)> {
        let mut inner = self.inner.clone();
        let r = inner
            .stats(v1::StatsRequest {})
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok((r.bytes_received, r.bytes_sent))
    }

    /// Uploads `local` as `remote` the cheaper way: by delta when the file
    /// is at least the client's [`DeltaPolicy::min_size`] and the server
    /// holds at least half of its bytes, in the version of `remote` (the
    /// base), in any other file this caller may read (a copy, a rename seen
    /// as a delete and a create: no chunk bytes at all) or in a kept part
    /// of an interrupted upload of this file; otherwise whole (resumable).
    ///
    /// # Errors
    /// As [`FilesClient::upload`] and [`FilesClient::upload_delta`].
    pub async fn put(
        &self,
        local: &Path,
        remote: &RemotePath,
        if_revision: Option<Revision>,
        progress: Arc<dyn Progress>,
    ) -> Result<FileInfo> {
        let policy = self.delta_policy();
        let meta = fs::metadata(local).map_err(local_err(local))?;
        if meta.len() >= policy.min_size {
            // A new path (`if_revision` 0) has no base; the server still
            // looks for its chunks in every file this caller may read.
            let base = match if_revision {
                Some(0) => None,
                _ => match self.stat(remote).await {
                    Ok(f) => Some(f.revision),
                    Err(ClientError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                },
            };
            // Without a base, the search for known chunks costs a chunking
            // pass over the whole file before the first byte goes: the
            // server is first asked about the file's first chunks, and
            // new content goes whole at once. A server that cannot be
            // asked gets the search up to NEW_PATH_SEARCH_MAX (past it the
            // pass would hold the upload back too long: a 64 GiB file,
            // about a minute).
            let search = match base {
                Some(_) => true,
                None => match self.probe(local).await? {
                    Some(known) => known,
                    None => meta.len() <= NEW_PATH_SEARCH_MAX,
                },
            };
            let tried = if !search {
                Ok(DeltaOutcome::Declined {
                    missing: meta.len(),
                })
            } else {
                self.upload_delta(local, remote, if_revision, base, true, progress.clone())
                    .await
            };
            match tried {
                Ok(DeltaOutcome::Done { file, .. }) => return Ok(file),
                // Mostly new content: whole, which resumes any kept part.
                Ok(DeltaOutcome::Declined { .. }) => {}
                // A server without the RPC: whole.
                Err(ClientError::Server(m)) if m.contains("Unimplemented") => {}
                // Replaced meanwhile (the base is gone): whole, and
                // `if_revision` decides.
                Err(ClientError::Rejected(m)) if m.contains("no longer exists") => {}
                Err(e) => return Err(e),
            }
        }
        self.upload(local, remote, if_revision, progress).await
    }

    /// Downloads `remote` into `local` the cheaper way: by delta when
    /// `local` exists and is at least the client's
    /// [`DeltaPolicy::min_size`] (its contents are the base), otherwise
    /// whole (resumable).
    ///
    /// # Errors
    /// As [`FilesClient::download`] and [`FilesClient::download_delta`].
    pub async fn get(
        &self,
        remote: &RemotePath,
        local: &Path,
        progress: Arc<dyn Progress>,
    ) -> Result<FileInfo> {
        self.get_checked(remote, local, None, progress, Box::new(|_| Ok(())))
            .await
            .map(|(info, _)| info)
    }

    /// As [`FilesClient::get`], with `check` run just before the new file
    /// replaces `local` (see [`FilesClient::download_checked`]).
    ///
    /// # Errors
    /// As [`FilesClient::get`], or what `check` returns.
    /// With `expect`, see [`FilesClient::download_checked`].
    pub async fn get_checked(
        &self,
        remote: &RemotePath,
        local: &Path,
        expect: Option<crate::files::Expected>,
        progress: Arc<dyn Progress>,
        check: BeforeReplace,
    ) -> Result<(FileInfo, fs::Metadata)> {
        let base = fs::metadata(local).ok().filter(|m| m.is_file());
        if base.is_some_and(|m| m.len() >= self.delta_policy().min_size) {
            return self
                .download_delta_checked(remote, local, progress, check)
                .await
                .map(|(info, _, meta)| (info, meta));
        }
        self.download_checked(remote, local, expect, progress, check)
            .await
    }
}

/// Name of the file a delta download (or a local copy) assembles into,
/// beside `local`: a partial download's name, which sync ignores, but never
/// one a download resumes from.
fn delta_partial(local: &Path, hash: &ContentHash) -> PathBuf {
    let p = crate::files::partial_path(local, hash);
    p.with_extension("delta.distribusync-part")
}

/// Gives the verified, fsynced `file` (written at `part`) its modified
/// time, runs `check`, and renames it over `dest`; removes `part` on any
/// failure. Returns the new file's metadata, read before it took the name.
fn install(
    file: File,
    part: &Path,
    dest: &Path,
    modified: std::time::SystemTime,
    check: BeforeReplace,
) -> Result<fs::Metadata> {
    let meta = file
        .set_modified(modified)
        .and_then(|()| file.metadata())
        .map_err(local_err(part));
    drop(file);
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_file(part);
            return Err(e);
        }
    };
    if let Err(e) = check(dest) {
        let _ = fs::remove_file(part);
        return Err(e);
    }
    if let Err(e) = fs::rename(part, dest) {
        let _ = fs::remove_file(part);
        return Err(ClientError::local(dest, e));
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(meta)
}

/// Writes `data`, the content of the version `info` names (a small
/// file's bytes the change log carried), to `local` as a download would:
/// checked against `info`'s hash and size, written beside it, fsynced,
/// then `check`, then renamed into place (and the folder fsynced).
///
/// # Errors
/// When `data` is not `info`'s content, a local write fails, or `check`
/// fails (then `local` is untouched).
pub async fn install_content(
    local: &Path,
    info: &FileInfo,
    data: Arc<[u8]>,
    check: BeforeReplace,
) -> Result<fs::Metadata> {
    if data.len() as u64 != info.size || ContentHash::of(&data) != info.hash {
        return Err(ClientError::Corrupt {
            path: local.display().to_string(),
        });
    }
    let (dest, hash, modified) = (local.to_owned(), info.hash, info.modified);
    blocking(local, move || {
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(local_err(dir))?;
        }
        let part = delta_partial(&dest, &hash);
        let written = (|| -> Result<File> {
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&part)
                .map_err(local_err(&part))?;
            out.write_all(&data).map_err(local_err(&part))?;
            out.sync_all().map_err(local_err(&part))?;
            Ok(out)
        })();
        match written {
            Ok(out) => install(out, &part, &dest, modified, check),
            Err(e) => {
                let _ = fs::remove_file(&part);
                Err(e)
            }
        }
    })
    .await
}

/// Copies `copy` to `dest` when its bytes are `info`'s (same size and
/// hash, checked while copying); `Err(check)` hands the check back when
/// they are not (or `copy` cannot be read), having left nothing behind.
fn copy_local(
    copy: &Path,
    dest: &Path,
    info: &FileInfo,
    check: BeforeReplace,
) -> Result<std::result::Result<fs::Metadata, BeforeReplace>> {
    use std::io::Read;
    let Ok(mut src) = File::open(copy) else {
        return Ok(Err(check));
    };
    if src.metadata().map(|m| m.len()).ok() != Some(info.size) {
        return Ok(Err(check));
    }
    let part = delta_partial(dest, &info.hash);
    let copied = (|| -> Result<Option<File>> {
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&part)
            .map_err(local_err(&part))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(None),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(local_err(&part))?;
        }
        let got: ContentHash = hasher.finalize().into();
        if got != info.hash || hasher.count() != info.size {
            return Ok(None); // changed since the caller's records
        }
        out.sync_all().map_err(local_err(&part))?;
        Ok(Some(out))
    })();
    match copied {
        Ok(Some(out)) => install(out, &part, dest, info.modified, check).map(Ok),
        Ok(None) => {
            let _ = fs::remove_file(&part);
            Ok(Err(check))
        }
        Err(e) => {
            let _ = fs::remove_file(&part);
            Err(e)
        }
    }
}
