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
}

type Written = std::io::Result<(File, blake3::Hasher)>;

/// An upload being received. Chunks go to a writer on the blocking pool
/// through a short queue, so receiving the next chunk overlaps writing and
/// hashing the last. Dropping it before [`Upload::finish`] (a broken stream,
/// a refused chunk) removes the staging file; the previous version of the
/// file is never touched.
#[derive(Debug)]
pub struct Upload {
    store: Store,
    header: UploadHeader,
    staged: PathBuf,
    chunks: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<JoinHandle<Written>>,
    received: u64,
    installed: bool,
}

/// Writes and hashes chunks until the sender goes away.
fn writer(mut file: File, mut rx: mpsc::Receiver<Vec<u8>>) -> Written {
    let mut hasher = blake3::Hasher::new();
    let (mut written, mut flushed) = (0u64, 0u64);
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
    pub(super) fn new(store: Store, header: UploadHeader, (staged, file): (PathBuf, File)) -> Self {
        let (tx, rx) = mpsc::channel(4);
        Self {
            store,
            header,
            staged,
            chunks: Some(tx),
            writer: Some(tokio::task::spawn_blocking(move || writer(file, rx))),
            received: 0,
            installed: false,
        }
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
            .map_err(|e| ServiceError::io("staging file", e))
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
            return Err(ServiceError::InvalidArgument(format!(
                "{}: received more than the {} bytes announced in the header",
                self.header.path, self.header.size
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
        let (file, hasher) = self.written().await?;
        verify(&self.header, self.received, hasher.finalize().into())?;
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
        self.installed = record.is_ok();
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
        if !self.installed {
            let _ = std::fs::remove_file(&self.staged);
        }
    }
}
