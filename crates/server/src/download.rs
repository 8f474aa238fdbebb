//! A file read out to a download stream, one chunk at a time, as the peer
//! takes them.
//!
//! Invariant: no thread ever waits on the peer. Each chunk is read by a
//! short task on the blocking pool; the stream asks for the next one only
//! when polled, i.e. when the transport has room to send it. A peer that
//! stops reading therefore costs the chunk the transport holds for it plus
//! at most one chunk read ahead (only once chunks are big), and no thread (the previous producer held
//! one of the pool's 512 threads per unread download; 512 of them starved
//! every file operation of every client).
//!
//! Chunks start small and double after every [`STREAK`] chunks the peer
//! takes promptly, so a download that is never read holds
//! [`MIN_CHUNK`]-sized buffers, while a fast one reaches
//! [`limits::CHUNK_SIZE`] messages (see docs/DESIGN.md, "Stalled peers").

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distribusync_core::{RemotePath, limits};
use futures::Stream;
use tokio::task::JoinHandle;

use crate::error::ServiceError;

/// The first chunk of a download, and the smallest.
pub(crate) const MIN_CHUNK: usize = 16 * 1024;

/// Chunks the peer must take promptly, one after another, before the size
/// doubles: a peer that reads nothing still takes its first flow-control
/// window (64 KiB by default) without being asked, and should not be
/// mistaken for a fast one. Twice that window, so such a peer never gets a
/// bigger chunk (with 4, it got 32 KiB ones; bench/RESULTS.md).
const STREAK: u32 = 8;

/// From this chunk size on, the next chunk is read while this one is sent
/// (below it the overlap gains little, and a stalled peer would hold it).
const READ_AHEAD_FROM: usize = 256 * 1024;

/// The peer came back for more within this time: it keeps up.
const KEEPS_UP: Duration = Duration::from_millis(10);

/// The peer took longer than this: the next chunk halves.
const FALLS_BEHIND: Duration = Duration::from_millis(100);

struct Reader {
    path: RemotePath,
    file: Arc<File>,
    /// Where the next read starts, and where the data ends.
    next: u64,
    end: u64,
    /// Size of the next read.
    chunk: usize,
    /// The chunk being read ahead.
    ahead: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
    /// When the last chunk was handed on.
    handed: Option<Instant>,
    /// Chunks taken promptly since the size last changed.
    streak: u32,
}

impl Reader {
    /// Starts reading the next chunk on the blocking pool; `None` at the end.
    fn read_ahead(&mut self) -> Option<JoinHandle<std::io::Result<Vec<u8>>>> {
        if self.next >= self.end {
            return None;
        }
        let n = usize::try_from(self.end - self.next)
            .unwrap_or(usize::MAX)
            .min(self.chunk);
        let (file, at) = (self.file.clone(), self.next);
        self.next += n as u64;
        Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, at)?;
            Ok(buf)
        }))
    }

    /// Sizes the next read by how soon the peer asked for more.
    fn adapt(&mut self) {
        let Some(handed) = self.handed else { return };
        let gap = handed.elapsed();
        if gap <= KEEPS_UP {
            self.streak += 1;
            if self.streak >= STREAK {
                self.chunk = (self.chunk * 2).min(limits::CHUNK_SIZE);
                self.streak = 0;
            }
        } else if gap >= FALLS_BEHIND {
            self.chunk = (self.chunk / 2).max(MIN_CHUNK);
            self.streak = 0;
        }
    }
}

/// The bytes of `file` from `offset` to `size`, in chunks read only as the
/// stream is polled (plus one read ahead once the peer has shown it keeps
/// up). Ends after the first error.
pub(crate) fn file_chunks(
    path: RemotePath,
    file: File,
    offset: u64,
    size: u64,
) -> impl Stream<Item = Result<Vec<u8>, ServiceError>> + Send + 'static {
    let reader = Reader {
        path,
        file: Arc::new(file),
        next: offset,
        end: size,
        chunk: MIN_CHUNK,
        ahead: None,
        handed: None,
        streak: 0,
    };
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut r = reader?;
        r.adapt();
        let task = match r.ahead.take() {
            Some(t) => t,
            None => r.read_ahead()?,
        };
        let read = task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match read {
            Ok(data) => {
                if r.chunk >= READ_AHEAD_FROM {
                    r.ahead = r.read_ahead();
                }
                r.handed = Some(Instant::now());
                Some((Ok(data), Some(r)))
            }
            Err(e) => Some((Err(ServiceError::io(r.path.to_string(), e)), None)),
        }
    })
}

/// The bytes of `content` from `offset` to `end`: a local file as
/// [`file_chunks`] reads it, or the chunks of the cluster's bucket (see
/// `store/cluster.rs`).
pub(crate) fn content_chunks(
    path: RemotePath,
    content: crate::store::Content,
    offset: u64,
    end: u64,
) -> crate::store::ContentStream {
    match content {
        crate::store::Content::File(file) => Box::pin(file_chunks(path, file, offset, end)),
        crate::store::Content::Chunks { manifest, blobs } => {
            crate::store::chunk_stream(&manifest, blobs, offset, end)
        }
    }
}
