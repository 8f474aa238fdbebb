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

/// Read-ahead under TLS: bytes read from the socket at once below rustls.
/// rustls asks for at most one record (about 16 KiB) per read, so without
/// it a 1 GiB download cost ~65,000 `recvfrom` calls where plaintext HTTP/2
/// made ~4,000 (bench/RESULTS.md, "TLS buffering").
pub const TLS_READ_BUFFER: usize = 256 * 1024;

/// Encrypted bytes rustls may hold before they must be written (its default
/// is 64 KiB): with HTTP/2 frames of [`HTTP2_MAX_FRAME`], a larger limit
/// lets one `writev` carry many records instead of four.
pub const TLS_WRITE_BUFFER: usize = 1024 * 1024;

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

/// How a set of uploads travels (see [`plan_uploads`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadPlan {
    /// Indexes of small files, grouped into batches (one UploadBatch each).
    pub batches: Vec<Vec<usize>>,
    /// Indexes of files that stream on their own (Upload, resumable).
    pub singles: Vec<usize>,
}

/// Splits uploads by size: files up to [`BATCH_FILE_MAX`] go many to a
/// batch (shared round trips, fsyncs and index transactions, cut by
/// [`batches`]); bigger ones stream one by one. Order is kept within each.
pub fn plan_uploads(sizes: &[u64]) -> UploadPlan {
    let (small, singles): (Vec<usize>, Vec<usize>) =
        (0..sizes.len()).partition(|&i| sizes[i] <= BATCH_FILE_MAX);
    let small_sizes: Vec<u64> = small.iter().map(|&i| sizes[i]).collect();
    let batches = batches(&small_sizes)
        .into_iter()
        .map(|r| small[r].to_vec())
        .collect();
    UploadPlan { batches, singles }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_batch_and_big_ones_stream_alone() {
        let big = BATCH_FILE_MAX + 1;
        let plan = plan_uploads(&[1, big, 2, BATCH_FILE_MAX, big]);
        assert_eq!(plan.batches, [vec![0, 2, 3]]);
        assert_eq!(plan.singles, [1, 4]);
        assert_eq!(plan_uploads(&[]), UploadPlan::default());
        let many = plan_uploads(&vec![1; MAX_BATCH_FILES + 1]);
        assert_eq!(many.batches.len(), 2);
        assert!(many.singles.is_empty());
    }

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
