//! One upload in progress: bytes stream into a staging file while being
//! hashed; only a complete, verified, fsynced file is installed.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

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
}

type Written = std::io::Result<(File, blake3::Hasher)>;

/// An upload being received. Chunks go to a writer on the blocking pool
/// through a short queue, so receiving the next chunk overlaps writing and
/// hashing the last. The previous version of the file is never touched
/// before [`Upload::finish`].
///
/// Dropped unfinished because the stream broke (the client went away, the
/// connection failed), an upload of at least
/// [`limits::RESUME_MIN_BYTES`](distribusync_core::limits::RESUME_MIN_BYTES)
/// keeps what it received for resuming; any other failure (a refused chunk,
/// a wrong hash, see [`Upload::discard`]) removes the staging file.
#[derive(Debug)]
pub struct Upload {
    store: Store,
    header: UploadHeader,
    staged: PathBuf,
    chunks: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<JoinHandle<Written>>,
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

/// Writes and hashes chunks until the sender goes away.
fn writer(start: Start, mut rx: mpsc::Receiver<Vec<u8>>) -> Written {
    let Start {
        mut file,
        mut hasher,
        written,
    } = start;
    let (mut written, mut flushed) = (written, written);
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
        if written - flushed >= WRITEBACK_STEP {
            start_writeback(&file, flushed, written - flushed);
            flushed = written;
        }
    }
    Ok((file, hasher))
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
        let (tx, rx) = mpsc::channel(4);
        let received = start.written;
        let keep = header.resumable && header.size >= distribusync_core::limits::RESUME_MIN_BYTES;
        Self {
            store,
            header,
            staged,
            chunks: Some(tx),
            writer: Some(tokio::task::spawn_blocking(move || writer(start, rx))),
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

    /// Ends the writer and returns the file and the hash of what it wrote.
    async fn written(&mut self) -> Result<(File, blake3::Hasher)> {
        self.chunks = None;
        let handle = self.writer.take().ok_or_else(|| {
            ServiceError::io("staging file", std::io::Error::other("writer gone"))
        })?;
        handle
            .await
            .map_err(|e| ServiceError::io("staging file", std::io::Error::other(e)))?
            .map_err(|e| ServiceError::io("staging file", e).on_disk(self.store.root()))
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
                self.header.path.shown(),
                self.header.size
            )));
        }
        let sent = match &self.chunks {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped early: report its error.
            self.written().await?;
            return Err(ServiceError::io(
                "staging file",
                std::io::Error::other("writer stopped"),
            ));
        }
        self.received = total;
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
        let (file, hasher) = self.written().await?;
        let checked = verify(&self.header, self.received, hasher.finalize().into());
        if let (Err(e), true) = (&checked, self.header.offset > 0) {
            // The kept part may not be what this client has: start over.
            return Err(ServiceError::Aborted(format!(
                "{e} (the upload resumed at byte {}; send the whole file again)",
                self.header.offset
            )));
        }
        checked?;
        let (modified, path) = (self.header.modified, self.header.path.clone());
        self.store
            .run(move || {
                super::disk::set_modified(&file, &path, modified)?;
                file.sync_all()
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
        let (writer, runtime) = (
            self.writer.take(),
            tokio::runtime::Handle::try_current().ok(),
        );
        let (Some(writer), true, Some(runtime)) = (writer, keep, runtime.clone()) else {
            // Unlinking a big file takes a while: off the async threads
            // when there are any.
            match runtime {
                Some(rt) => drop(rt.spawn_blocking(move || std::fs::remove_file(&staged))),
                None => drop(std::fs::remove_file(&staged)),
            }
            return;
        };
        // The writer may still hold queued chunks: let it finish, make what
        // it wrote durable, then keep it under the file's resume name.
        self.chunks = None;
        let (store, header) = (self.store.clone(), self.header.clone());
        runtime.spawn(async move {
            let Ok(Ok((file, hasher))) = writer.await else {
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
                let kept = file.sync_data().and_then(|()| {
                    store
                        .inner
                        .disk
                        .keep_partial(&staged, path, size, modified_ns)
                });
                if kept.is_err() {
                    let _ = std::fs::remove_file(&staged);
                    store.forget_part_hash(path, size, modified_ns);
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
