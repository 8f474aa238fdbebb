//! One upload in progress: bytes stream into a staging file while being
//! hashed; only a complete, verified, fsynced file is installed.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use distribusync_core::{ContentHash, RemotePath, Revision};

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

/// An upload being received. Dropping it before [`Upload::finish`] (a broken
/// stream, a refused chunk) removes the staging file; the previous version
/// of the file is never touched.
#[derive(Debug)]
pub struct Upload {
    store: Store,
    header: UploadHeader,
    staged: PathBuf,
    state: Option<(File, blake3::Hasher)>,
    received: u64,
    installed: bool,
}

impl Upload {
    pub(super) fn new(store: Store, header: UploadHeader, (staged, file): (PathBuf, File)) -> Self {
        Self {
            store,
            header,
            staged,
            state: Some((file, blake3::Hasher::new())),
            received: 0,
            installed: false,
        }
    }

    /// Appends a chunk.
    ///
    /// # Errors
    /// InvalidArgument when the data runs past the announced size.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let total = self.received + chunk.len() as u64;
        if total > self.header.size {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: received more than the {} bytes announced in the header",
                self.header.path, self.header.size
            )));
        }
        let (mut file, mut hasher) = self
            .state
            .take()
            .expect("state is restored after each write");
        let (file, hasher) = blocking(move || {
            hasher.update(&chunk);
            file.write_all(&chunk)
                .map_err(|e| ServiceError::io("staging file", e))?;
            Ok((file, hasher))
        })
        .await?;
        self.state = Some((file, hasher));
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
        let h = &self.header;
        if self.received != h.size {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: stream ended after {} of the {} bytes announced",
                h.path, self.received, h.size
            )));
        }
        let (file, hasher) = self
            .state
            .take()
            .expect("state is restored after each write");
        let actual: ContentHash = hasher.finalize().into();
        if actual != h.hash {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: content hash mismatch: header says {}, data hashes to {}",
                h.path, h.hash, actual
            )));
        }
        let modified = h.modified;
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

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.staged);
        }
    }
}
