//! [`TransferStats`]: bytes the Files service moved, for the Stats RPC
//! (and, later, metrics). Counted as protobuf-encoded message bytes, so a
//! delta upload's manifest and a whole upload's headers count too.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by every request of one server; cheap to bump.
#[derive(Debug, Default)]
pub struct TransferStats {
    received: AtomicU64,
    sent: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferSnapshot {
    /// Bytes of upload request messages received (Upload, UploadBatch,
    /// DeltaUpload).
    pub received: u64,
    /// Bytes of file data, manifests and pieces sent (Download,
    /// GetManifest, GetPieces, DeltaUpload's answers).
    pub sent: u64,
}

impl TransferStats {
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TransferSnapshot {
        TransferSnapshot {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
        }
    }
}
