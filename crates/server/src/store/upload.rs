//! One upload in progress: bytes stream into a staging file while being
//! hashed; only a complete, verified, fsynced file is installed.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use distribusync_core::delta::{ManifestBuilder, PARAMS_V1};
use distribusync_core::{ContentHash, RemotePath, Revision};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{FileRecord, Store, blocking};
use crate::error::{Result, ServiceError};

/// What the client announced before the data.
#[derive(Debug, Clone)]
pub struct UploadHeader {
    pub path: RemotePath,
    pub size: u64,
    pub hash: ContentHash,
    pub modified: SystemTime,
    pub if_revision: Option<Revision>,
    /// Resume an interrupted upload: the data starts at this byte.
    pub offset: u64,
    /// Whether a later request can name this upload (the client sent its
    /// modified time), so an interrupted one is worth keeping.
    pub resumable: bool,
    /// The WebDAV lock tokens the write may pass (set by the [`View`]
    /// that begins it; see `store/dav_locks.rs`).
    ///
    /// [`View`]: super::View
    pub locks: super::LockPass,
}

/// An upload being received. Chunks are written and hashed on the blocking
/// pool in short, bounded pieces (one batch of queued chunks per task);
/// waiting for the next chunk from the network happens on the async side,
/// so a client that stalls holds no thread, only its file and hash state.
/// While one batch is written the next chunks queue (up to
/// [`QUEUE_CHUNKS`]), so receiving overlaps writing. The previous version of
/// the file is never touched before [`Upload::finish`].
///
/// Dropped unfinished because the stream broke (the client went away, the
/// connection failed, the stream stayed idle too long), an upload of at
/// least [`limits::RESUME_MIN_BYTES`](distribusync_core::limits::RESUME_MIN_BYTES)
/// keeps what it received for resuming; any other failure (a refused chunk,
/// a wrong hash, see [`Upload::discard`]) removes the staging file.
#[derive(Debug)]
pub struct Upload {
    store: Store,
    header: UploadHeader,
    staged: PathBuf,
    writer: Writer,
    received: u64,
    /// The staging file is gone (installed) or handed on.
    done: bool,
    /// Keep the received part for resuming if dropped unfinished.
    keep: bool,
    /// The sender announced the content hash (a gRPC client); else the
    /// data is taken as it hashes (WebDAV has no hash to announce).
    hash_given: bool,
    /// The sender announced the size; else it is what arrives, up to the
    /// header's size (the limit).
    size_given: bool,
}

/// What a writer starts from: the file positioned where the data goes, the
/// hash of the bytes before it and their count.
pub(super) struct Start {
    pub file: File,
    pub hasher: blake3::Hasher,
    pub written: u64,
}

/// The staging file between writes: owned by at most one blocking task at
/// a time.
struct WriteState {
    file: File,
    /// Hashes the bytes when no manifest is being built (a resumed upload).
    hasher: blake3::Hasher,
    /// The manifest, cut as the bytes arrive (it hashes the whole file
    /// too); only for an upload that started at byte 0.
    manifest: Option<ManifestBuilder>,
    written: u64,
    /// Bytes written when the last writeback hint was given.
    flushed: u64,
}

impl std::fmt::Debug for WriteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteState")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl WriteState {
    /// Writes and hashes one batch of chunks: bounded work, never a wait.
    fn write(mut self, chunks: Vec<Vec<u8>>) -> std::io::Result<Self> {
        for chunk in chunks {
            match &mut self.manifest {
                Some(m) => m.update(&chunk),
                None => {
                    self.hasher.update(&chunk);
                }
            }
            self.file.write_all(&chunk)?;
            self.written += chunk.len() as u64;
            if self.written - self.flushed >= WRITEBACK_STEP {
                start_writeback(&self.file, self.flushed, self.written - self.flushed);
                self.flushed = self.written;
            }
        }
        Ok(self)
    }
}

/// Uploads smaller than this get no manifest as they stream in (one coarse
/// chunk's minimum: below it a file is one chunk, and delta transfer is for
/// bigger files); one is computed if ever needed (`Store::manifest_of`).
const MANIFEST_MIN_SIZE: u64 = PARAMS_V1.coarse().min as u64;

/// Chunks received but not yet written, at most (the queue between the
/// stream and the writer).
const QUEUE_CHUNKS: usize = 4;

/// Writes an upload's chunks as they arrive: an async task waits for them
/// (holding no thread) and hands each batch of queued chunks to one short
/// task on the blocking pool.
#[derive(Debug)]
struct Writer {
    chunks: Option<mpsc::Sender<Vec<u8>>>,
    task: Option<JoinHandle<std::io::Result<WriteState>>>,
}

/// The writer's loop: everything queued goes to disk in one blocking task,
/// then it waits (async) for more, until the sender goes away.
async fn write_chunks(
    mut state: WriteState,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<WriteState> {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        state = tokio::task::spawn_blocking(move || state.write(batch))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
    }
    Ok(state)
}

fn writer_gone(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::io("staging file", std::io::Error::other(e.to_string()))
}

impl Writer {
    fn new(start: Start, size: u64) -> Self {
        let state = WriteState {
            file: start.file,
            manifest: (start.written == 0 && size >= MANIFEST_MIN_SIZE)
                .then(|| ManifestBuilder::new(&PARAMS_V1)),
            hasher: start.hasher,
            written: start.written,
            flushed: start.written,
        };
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        Self {
            chunks: Some(tx),
            task: Some(tokio::spawn(write_chunks(state, rx))),
        }
    }

    /// Queues a chunk; waits only while the queue is full.
    async fn push(&mut self, chunk: Vec<u8>) -> Result<()> {
        let sent = match &self.chunks {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped early: report its error.
        self.finish().await?;
        Err(writer_gone("writer stopped"))
    }

    /// Takes the writer out of an upload being dropped.
    fn take(&mut self) -> Self {
        Self {
            chunks: self.chunks.take(),
            task: self.task.take(),
        }
    }

    /// Writes everything queued and returns the file, its hash and the
    /// manifest builder (if one ran).
    async fn finish(&mut self) -> Result<(File, blake3::Hasher, Option<ManifestBuilder>)> {
        self.chunks = None;
        let task = self.task.take().ok_or_else(|| writer_gone("writer gone"))?;
        let state = task
            .await
            .map_err(writer_gone)?
            .map_err(|e| ServiceError::io("staging file", e))?;
        let hasher = match &state.manifest {
            Some(m) => m.hasher(),
            None => state.hasher,
        };
        Ok((state.file, hasher, state.manifest))
    }
}

/// Data written since the last writeback hint before the next one.
pub(super) const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing a range to disk now (and not to keep it
/// cached), so the fsync at the end of a big upload has little left to do
/// and the upload does not fill the page cache. A hint: failure is ignored.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

impl Upload {
    pub(super) fn new(store: Store, header: UploadHeader, staged: PathBuf, start: Start) -> Self {
        let received = start.written;
        let keep = header.resumable && header.size >= distribusync_core::limits::RESUME_MIN_BYTES;
        let size = header.size;
        Self {
            store,
            header,
            staged,
            writer: Writer::new(start, size),
            received,
            done: false,
            keep,
            hash_given: true,
            size_given: true,
        }
    }

    /// For a sender that announces no content hash (WebDAV, the web page,
    /// which cannot hash BLAKE3 as it sends): the data is
    /// taken as it hashes, still hashed as it arrives and installed only
    /// when complete and durable. With `size_given` false (a chunked body
    /// without a length), the size is what arrives, up to the header's.
    pub fn unannounced(&mut self, size_given: bool) {
        self.hash_given = false;
        self.size_given = size_given;
    }

    /// Bytes received so far (with a resumed upload's kept part).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The size the header announced.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// Makes a failure final: the received part is removed, not kept for
    /// resuming (for a client that broke the protocol, not the connection).
    pub fn discard(&mut self) {
        self.keep = false;
    }

    /// Sets the content hash given after the data (a trailer).
    pub fn set_hash(&mut self, hash: ContentHash) {
        self.header.hash = hash;
    }

    /// Ends this request of a piecewise upload: what was received is kept
    /// under the file's resume name, exactly as when a stream breaks, but
    /// awaited, so the next piece (resuming at [`Upload::received`]) finds
    /// it. Returns the bytes kept.
    ///
    /// # Errors
    /// InvalidArgument when the upload is too small to be kept
    /// ([`limits::RESUME_MIN_BYTES`](distribusync_core::limits::RESUME_MIN_BYTES))
    /// or was not announced as resumable; an IO error when it cannot be kept.
    pub async fn pause(mut self) -> Result<u64> {
        if !self.keep || self.received == 0 {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: an upload of {} bytes cannot be sent in pieces",
                self.header.path.shown(),
                self.header.size
            )));
        }
        self.done = true;
        let staged = std::mem::take(&mut self.staged);
        let writer = self.writer.take();
        let received = self.received;
        keep_part(self.store.clone(), self.header.clone(), staged, writer).await?;
        Ok(received)
    }

    /// Appends a chunk.
    ///
    /// # Errors
    /// InvalidArgument when the data runs past the announced size; an IO
    /// error when the staging file cannot be written.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let total = self.received + chunk.len() as u64;
        if total > self.header.size && !self.size_given {
            self.keep = false;
            return Err(ServiceError::TooLarge {
                what: format!(
                    "{}: more than {} bytes",
                    self.header.path.shown(),
                    self.header.size
                ),
                limit: format!("{} bytes (max file size)", self.header.size),
            });
        }
        if total > self.header.size {
            self.keep = false;
            return Err(ServiceError::InvalidArgument(format!(
                "{}: received more than the {} bytes announced in the header",
                self.header.path.shown(),
                self.header.size
            )));
        }
        let len = chunk.len() as u64;
        let root = self.store.root();
        self.writer.push(chunk).await.map_err(|e| e.on_disk(root))?;
        self.received += len;
        Ok(())
    }

    /// Verifies size and hash, makes the data durable and installs it as the
    /// new version.
    ///
    /// # Errors
    /// InvalidArgument when the size or hash does not match; a revision
    /// mismatch or conflict found at commit time.
    pub async fn finish(mut self) -> Result<FileRecord> {
        self.keep = false;
        let root = self.store.root().to_owned();
        let (file, hasher, manifest) = self.writer.finish().await.map_err(|e| e.on_disk(&root))?;
        let hash = ContentHash::from(hasher.finalize());
        if !self.hash_given {
            self.header.hash = hash;
        }
        if !self.size_given {
            self.header.size = self.received;
        }
        let checked = verify(&self.header, self.received, hash);
        if let (Err(e), true) = (&checked, self.header.offset > 0) {
            // The kept part may not be what this client has: start over.
            return Err(ServiceError::Aborted(format!(
                "{e} (the upload resumed at byte {}; send the whole file again)",
                self.header.offset
            )));
        }
        checked?;
        let (modified, path) = (self.header.modified, self.header.path.clone());
        let flush = self.store.flushes_staging();
        let manifest = self
            .store
            .run(move || {
                super::disk::set_modified(&file, &path, modified)?;
                if flush {
                    file.sync_all()
                        .map_err(|e| ServiceError::io("staging file", e))?;
                }
                // The last chunks are cut here (up to two coarse maxima).
                Ok(manifest.map(ManifestBuilder::finish))
            })
            .await?;
        let record = self
            .store
            .commit_upload(&self.header, self.staged.clone(), manifest)
            .await;
        // Once installed the staging name no longer exists; on failure Drop
        // removes it.
        self.done = record.is_ok();
        if record.is_ok() && self.header.size >= distribusync_core::limits::RESUME_MIN_BYTES {
            // A part an earlier attempt left of this very file is moot now.
            let (store, h) = (self.store.clone(), self.header.clone());
            let _ = blocking(move || {
                let modified_ns = distribusync_proto::unix_nanos(h.modified);
                store.inner.disk.drop_partial(&h.path, h.size, modified_ns);
                Ok(())
            })
            .await;
        }
        record
    }
}

/// The one check every upload passes: the data is exactly what the header
/// announced, in size and in content.
///
/// # Errors
/// InvalidArgument naming the path and what differs.
pub fn verify(header: &UploadHeader, received: u64, actual: ContentHash) -> Result<()> {
    if received != header.size {
        return Err(ServiceError::InvalidArgument(format!(
            "{}: received {received} bytes, the header announced {}",
            header.path.shown(),
            header.size
        )));
    }
    if actual != header.hash {
        return Err(ServiceError::InvalidArgument(format!(
            "{}: content hash mismatch: header says {}, data hashes to {actual}",
            header.path.shown(),
            header.hash
        )));
    }
    Ok(())
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        let keep = self.keep && self.received > 0;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (true, Some(runtime)) = (keep, runtime.clone()) else {
            // Unlinking a big file takes a while: off the async threads
            // when there are any.
            match runtime {
                Some(rt) => drop(rt.spawn_blocking(move || std::fs::remove_file(&staged))),
                None => drop(std::fs::remove_file(&staged)),
            }
            return;
        };
        // Chunks may still be queued or being written: let the writer
        // finish, make what it wrote durable, then keep it under the file's
        // resume name.
        let writer = self.writer.take();
        let (store, header) = (self.store.clone(), self.header.clone());
        runtime.spawn(async move {
            if let Err(e) = keep_part(store, header, staged, writer).await {
                tracing::warn!(error = %e, "could not keep an interrupted upload for resuming");
            }
        });
    }
}

/// Lets `writer` finish, makes what it wrote durable, then keeps it under
/// the file's resume name (removed instead when that fails).
async fn keep_part(
    store: Store,
    header: UploadHeader,
    staged: PathBuf,
    mut writer: Writer,
) -> Result<()> {
    let Ok((file, hasher, _)) = writer.finish().await else {
        let _ = std::fs::remove_file(&staged);
        return Err(writer_gone("writer stopped"));
    };
    blocking(move || {
        let modified_ns = distribusync_proto::unix_nanos(header.modified);
        let (path, size) = (&header.path, header.size);
        // Its hash so far, so a resume need not read it back;
        // remembered before the part shows, so a client that sees
        // the part at once finds its hash too.
        store.remember_part_hash(path, size, modified_ns, hasher);
        // Dated now: the bound removes the least recently kept
        // parts first, and the age limit counts from here.
        let kept = file.set_modified(std::time::SystemTime::now());
        let kept = kept.and_then(|()| file.sync_data()).and_then(|()| {
            store
                .inner
                .disk
                .keep_partial(&staged, path, size, modified_ns)
        });
        if kept.is_err() {
            let _ = std::fs::remove_file(&staged);
            store.forget_part_hash(path, size, modified_ns);
        } else {
            store.trim_kept_parts();
        }
        kept.map_err(|e| ServiceError::io("kept upload part", e))
    })
    .await
}
