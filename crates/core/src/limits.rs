//! Sizes shared by server and client.

/// Bytes per data chunk in an upload or download stream. Big enough that
/// per-message overhead vanishes, small enough to keep memory flat.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Largest gRPC message either side accepts (a chunk plus headroom).
pub const MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

/// Files per page of a List stream.
pub const LIST_PAGE_SIZE: u32 = 1000;

/// Largest file the server accepts by default (configurable).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;
