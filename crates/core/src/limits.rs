//! Sizes shared by server and client.

/// Bytes per data chunk in an upload or download stream. Big enough that
/// per-message overhead vanishes, small enough to keep memory flat.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Largest gRPC message either side accepts (a chunk plus headroom).
pub const MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

/// Largest HTTP/2 frame either side accepts (the protocol's default is 16 KiB).
pub const HTTP2_MAX_FRAME: u32 = 1 << 20;

/// HTTP/2 flow-control windows (bytes a peer may send before it must wait
/// for the receiver to read). Fixed rather than hyper's adaptive windows:
/// on loopback the adaptive estimate stays small, and a 10-million-number
/// sort spent a third of its time waiting on it (0.44 s, now 0.25–0.33 s;
/// bench/RESULTS.md). The server's are smaller because they bound what one
/// connection can make it buffer: an upload to a slow disk holds at most a
/// connection window in memory (server peak RSS in bench/files.sh: 40 MiB).
pub const CLIENT_STREAM_WINDOW: u32 = 16 << 20;
/// See [`CLIENT_STREAM_WINDOW`].
pub const CLIENT_CONNECTION_WINDOW: u32 = 32 << 20;
/// See [`CLIENT_STREAM_WINDOW`].
pub const SERVER_STREAM_WINDOW: u32 = 4 << 20;
/// See [`CLIENT_STREAM_WINDOW`].
pub const SERVER_CONNECTION_WINDOW: u32 = 8 << 20;

/// An interrupted upload of a file at least this big is kept by the server
/// (for a day) so that sending it again resumes where it broke; smaller
/// ones just start over.
pub const RESUME_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Files per page of a List stream.
pub const LIST_PAGE_SIZE: u32 = 1000;

/// Largest file the server accepts by default (configurable).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;

/// Most files in one UploadBatch.
pub const MAX_BATCH_FILES: usize = 1000;

/// Most data bytes in one UploadBatch.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Files up to this size travel in batches (sync, `put -r`).
pub const BATCH_FILE_MAX: u64 = 256 * 1024;

/// Data bytes a client puts in one batch: a quarter of what the server
/// accepts, so a few batches in flight stay small in memory on both sides.
pub const BATCH_TARGET_BYTES: u64 = (MAX_BATCH_BYTES / 4) as u64;

/// Cuts a list of file sizes into consecutive batches of at most
/// [`MAX_BATCH_FILES`] files and [`BATCH_TARGET_BYTES`] bytes (a file larger
/// than that goes alone). Fewer, fuller batches mean fewer group commits.
pub fn batches(sizes: &[u64]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        let full = i - start >= MAX_BATCH_FILES || (i > start && bytes + size > BATCH_TARGET_BYTES);
        if full {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_limits() {
        assert!(batches(&[]).is_empty());
        assert_eq!(batches(&[1; 2500]), [0..1000, 1000..2000, 2000..2500]);
        let quarter = BATCH_TARGET_BYTES / 4;
        assert_eq!(batches(&[quarter; 9]), [0..4, 4..8, 8..9]);
        // A file over the budget still goes, alone.
        assert_eq!(batches(&[1, BATCH_TARGET_BYTES + 1, 1]), [0..1, 1..2, 2..3]);
    }
}
