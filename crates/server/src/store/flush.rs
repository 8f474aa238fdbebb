//! [`FlushGroup`]: one `syncfs` for every upload batch staged before it
//! started, so concurrent batches (a sync client keeps several in flight)
//! share their flushes instead of queueing one whole-filesystem flush each.
//!
//! Invariant (durability): a batch takes its ticket only after its files
//! are written, and returns only once a flush that *started after* its
//! ticket was issued has succeeded; `syncfs` writes back everything dirty
//! when it starts, so every file of the batch is durable before its
//! commit is acknowledged, as with a flush of its own. At most one flush
//! runs at a time; the batches that arrive meanwhile wait for it, then one
//! of them flushes for all of them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// See the module header.
#[derive(Debug, Default)]
pub(crate) struct FlushGroup {
    /// Tickets handed out so far.
    issued: AtomicU64,
    /// The last ticket a finished flush covers. Held while a flush runs
    /// (a std lock: taken on the blocking pool, never across an await).
    covered: Mutex<u64>,
    /// Flushes made.
    flushes: AtomicU64,
}

impl FlushGroup {
    /// Returns once the data written before the call is durable: by a
    /// flush `f` of this caller's, or by one another caller started after
    /// this call began. Blocking.
    ///
    /// # Errors
    /// The error of this caller's own flush (a flush that failed covers
    /// nobody: each waiting caller then flushes for itself).
    pub(crate) fn flush<E>(&self, f: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let ticket = self.issued.fetch_add(1, SeqCst) + 1;
        let mut covered = self
            .covered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *covered >= ticket {
            return Ok(());
        }
        // Every ticket issued by now belongs to a batch whose data was
        // written before the flush below starts.
        let upto = self.issued.load(SeqCst);
        f()?;
        self.flushes.fetch_add(1, SeqCst);
        *covered = upto;
        Ok(())
    }

    /// Flushes made so far.
    #[cfg(test)]
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn batches_arriving_during_a_flush_share_the_next_one() {
        // One flush runs (held until three more callers have their
        // tickets); the three then need one flush between them, not three.
        let group = Arc::new(FlushGroup::default());
        let flushing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first = {
            let (g, flushing) = (group.clone(), flushing.clone());
            std::thread::spawn(move || {
                g.flush(|| {
                    flushing.store(true, SeqCst);
                    while g.issued.load(SeqCst) < 4 {
                        std::thread::yield_now();
                    }
                    Ok::<(), ()>(())
                })
            })
        };
        // The others come once the first flush has started.
        while !flushing.load(SeqCst) {
            std::thread::yield_now();
        }
        let others: Vec<_> = (0..3)
            .map(|_| {
                let g = group.clone();
                std::thread::spawn(move || g.flush(|| Ok::<(), ()>(())))
            })
            .collect();
        assert_eq!(first.join().unwrap(), Ok(()));
        for t in others {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
        assert_eq!(
            group.flushes(),
            2,
            "the first flush, then one for the three"
        );
        // Alone, each caller flushes.
        group.flush(|| Ok::<(), ()>(())).unwrap();
        assert_eq!(group.flushes(), 3);
    }

    #[test]
    fn a_failed_flush_covers_nobody() {
        let group = FlushGroup::default();
        assert_eq!(group.flush(|| Err("disk full")), Err("disk full"));
        assert_eq!(group.flushes(), 0);
        // The next caller flushes again rather than trusting the failure.
        let mut ran = false;
        group
            .flush(|| {
                ran = true;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!(ran);
    }
}
