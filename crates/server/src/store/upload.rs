//! One upload in progress: bytes stream into a staging file while being
//! hashed; only a complete, verified, fsynced file is installed.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use distribusync_core::{ContentHash, RemotePath, Revision};
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
}

/// An upload being received. Chunks are written and hashed on the blocking
/// pool in short, bounded pieces (one batch of queued chunks per task);
/// waiting for the next chunk from the network happens on the async side,
/// so a client that stalls holds no thread, only its file and hash state.
/// While one batch is written the next chunks queue (up to
/// [`QUEUE_BYTES`]), so receiving overlaps writing. The previous version of
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
    hasher: blake3::Hasher,
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
            self.hasher.update(&chunk);
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

/// Chunks received while a write is in progress, at most this many bytes,
/// before receiving waits for the write (the same depth as the four-chunk
/// queue it replaces).
const QUEUE_BYTES: usize = 4 * distribusync_core::limits::CHUNK_SIZE;

/// Writes chunks on the blocking pool, one bounded task at a time.
#[derive(Debug)]
struct Writer {
    /// The state when no write runs.
    idle: Option<WriteState>,
    /// The write in progress, which hands the state back.
    running: Option<JoinHandle<std::io::Result<WriteState>>>,
    queued: Vec<Vec<u8>>,
    queued_bytes: usize,
    /// A write failed: later writes fail too.
    failed: bool,
}

fn writer_gone(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::io("staging file", std::io::Error::other(e.to_string()))
}

impl Writer {
    fn new(start: Start) -> Self {
        Self {
            idle: Some(WriteState {
                file: start.file,
                hasher: start.hasher,
                written: start.written,
                flushed: start.written,
            }),
            running: None,
            queued: Vec::new(),
            queued_bytes: 0,
            failed: false,
        }
    }

    /// Waits for the write in progress, if any, and takes the state back.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.running.take() {
            let state = task
                .await
                .map_err(writer_gone)?
                .map_err(|e| ServiceError::io("staging file", e));
            match state {
                Ok(s) => self.idle = Some(s),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        if self.failed {
            return Err(writer_gone("an earlier write failed"));
        }
        Ok(())
    }

    /// Starts writing the queued chunks; the state must be idle.
    fn start(&mut self) -> Result<()> {
        let state = self.idle.take().ok_or_else(|| writer_gone("writer busy"))?;
        let chunks = std::mem::take(&mut self.queued);
        self.queued_bytes = 0;
        self.running = Some(tokio::task::spawn_blocking(move || state.write(chunks)));
        Ok(())
    }

    /// Queues a chunk; starts a write when none runs, waits for the one
    /// running only when the queue is full.
    async fn push(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.queued_bytes += chunk.len();
        self.queued.push(chunk);
        let busy = self.running.as_ref().is_some_and(|t| !t.is_finished());
        if busy && self.queued_bytes < QUEUE_BYTES {
            return Ok(());
        }
        self.settle().await?;
        self.start()
    }

    /// Takes the writer out of an upload being dropped.
    fn take(&mut self) -> Self {
        std::mem::replace(
            self,
            Self {
                idle: None,
                running: None,
                queued: Vec::new(),
                queued_bytes: 0,
                failed: true,
            },
        )
    }

    /// Writes everything queued and returns the file and its hash.
    async fn finish(&mut self) -> Result<(File, blake3::Hasher)> {
        self.settle().await?;
        if !self.queued.is_empty() {
            self.start()?;
            self.settle().await?;
        }
        let s = self.idle.take().ok_or_else(|| writer_gone("writer gone"))?;
        Ok((s.file, s.hasher))
    }
}

/// Data written since the last writeback hint before the next one.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing a range to disk now (and not to keep it
/// cached), so the fsync at the end of a big upload has little left to do
/// and the upload does not fill the page cache. A hint: failure is ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
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
        Self {
            store,
            header,
            staged,
            writer: Writer::new(start),
            received,
            done: false,
            keep,
        }
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

    /// Appends a chunk.
    ///
    /// # Errors
    /// InvalidArgument when the data runs past the announced size; an IO
    /// error when the staging file cannot be written.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let total = self.received + chunk.len() as u64;
        if total > self.header.size {
            self.keep = false;
            return Err(ServiceError::InvalidArgument(format!(
                "{}: received more than the {} bytes announced in the header",
                self.header.path, self.header.size
            )));
        }
        let len = chunk.len() as u64;
        self.writer.push(chunk).await?;
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
        let (file, hasher) = self.writer.finish().await?;
        let checked = verify(&self.header, self.received, hasher.finalize().into());
        if let (Err(e), true) = (&checked, self.header.offset > 0) {
            // The kept part may not be what this client has: start over.
            return Err(ServiceError::Aborted(format!(
                "{e} (the upload resumed at byte {}; send the whole file again)",
                self.header.offset
            )));
        }
        checked?;
        let modified = self.header.modified;
        blocking(move || {
            file.set_modified(modified)
                .and_then(|()| file.sync_all())
                .map_err(|e| ServiceError::io("staging file", e))
        })
        .await?;
        let record = self
            .store
            .commit_upload(&self.header, self.staged.clone())
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
            header.path, header.size
        )));
    }
    if actual != header.hash {
        return Err(ServiceError::InvalidArgument(format!(
            "{}: content hash mismatch: header says {}, data hashes to {actual}",
            header.path, header.hash
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
        let mut writer = self.writer.take();
        let (store, header) = (self.store.clone(), self.header.clone());
        runtime.spawn(async move {
            let Ok((file, hasher)) = writer.finish().await else {
                let _ = std::fs::remove_file(&staged);
                return;
            };
            let kept = blocking(move || {
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
            .await;
            if let Err(e) = kept {
                tracing::warn!(error = %e, "could not keep an interrupted upload for resuming");
            }
        });
    }
}
