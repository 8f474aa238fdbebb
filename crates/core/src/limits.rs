//! Sizes shared by server and client.

/// Bytes per data chunk in an upload or download stream. Big enough that
/// per-message overhead vanishes, small enough to keep memory flat.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Largest gRPC message either side accepts (a chunk plus headroom).
pub const MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

/// Largest HTTP/2 frame either side accepts (the protocol's default is 16 KiB).
pub const HTTP2_MAX_FRAME: u32 = 1 << 20;

/// Files per page of a List stream.
pub const LIST_PAGE_SIZE: u32 = 1000;

/// Largest file the server accepts by default (configurable).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;

/// Most files in one UploadBatch.
pub const MAX_BATCH_FILES: usize = 1000;

/// Most data bytes in one UploadBatch.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Files up to this size travel in batches during sync.
pub const BATCH_FILE_MAX: u64 = 256 * 1024;
