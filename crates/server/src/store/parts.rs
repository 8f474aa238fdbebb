//! Kept parts of interrupted uploads: how many there are and how much they
//! hold, and the bound on both.
//!
//! Invariant: after every part kept (and at start), at most
//! [`StoreConfig::max_kept_parts`](super::StoreConfig) parts holding at most
//! [`StoreConfig::max_kept_bytes`](super::StoreConfig) bytes remain; the
//! least recently written go first. A header may announce any size, and
//! parts are invisible to List and cannot be removed over the API, so
//! without this bound killed uploads could fill the disk for a day (the
//! age limit, [`disk`](super::disk)'s `PARTIAL_TTL`, still applies).

use std::fs;
use std::time::SystemTime;

use super::Store;

/// What kept parts hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeptParts {
    pub count: usize,
    pub bytes: u64,
}

/// One kept part, as found on disk.
struct Part {
    name: String,
    written: SystemTime,
    len: u64,
}

impl Store {
    /// Parts of interrupted uploads kept for resuming (blocking: reads a
    /// folder).
    pub fn kept_parts(&self) -> KeptParts {
        let parts = self.scan_parts();
        KeptParts {
            count: parts.len(),
            bytes: parts.iter().map(|p| p.len).sum(),
        }
    }

    fn scan_parts(&self) -> Vec<Part> {
        let Ok(entries) = fs::read_dir(self.inner.disk.partials_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some(Part {
                    name: e.file_name().into_string().ok()?,
                    written: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    len: meta.len(),
                })
            })
            .collect()
    }

    /// Removes the least recently written parts until the bound holds
    /// (blocking); returns what is left. Best effort: a part that cannot
    /// be removed is counted as gone (the next pass tries again).
    pub(crate) fn trim_kept_parts(&self) -> KeptParts {
        let (max_count, max_bytes) = (
            self.inner.config.max_kept_parts,
            self.inner.config.max_kept_bytes,
        );
        let mut parts = self.scan_parts();
        parts.sort_by_key(|p| p.written);
        let mut left = KeptParts {
            count: parts.len(),
            bytes: parts.iter().map(|p| p.len).sum(),
        };
        let mut removed = Vec::new();
        for part in parts {
            if left.count <= max_count && left.bytes <= max_bytes {
                break;
            }
            let _ = fs::remove_file(self.inner.disk.partials_dir().join(&part.name));
            left.count -= 1;
            left.bytes -= part.len;
            removed.push(part.name);
        }
        if !removed.is_empty() {
            let mut hashes = self
                .inner
                .part_hashes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for name in &removed {
                hashes.remove(name);
            }
            tracing::info!(
                removed = removed.len(),
                kept = left.count,
                kept_bytes = left.bytes,
                max_kept_parts = max_count,
                max_kept_bytes = max_bytes,
                "oldest kept upload parts removed to stay within the bound"
            );
        }
        left
    }
}
