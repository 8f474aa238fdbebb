//! The compute memory budget: one byte count shared by everything the
//! Compute service holds in memory for a while — the numbers of sorts in
//! flight, the inputs of queued and running jobs, kept job results, and the
//! transport buffer each open result or callback stream may fill.
//!
//! Invariant: whatever holds such memory holds a [`Reservation`] of at
//! least its size, and drops it only after the memory is gone (a kept result
//! keeps its reservation inside the same `Arc` as its numbers, so a result
//! still being streamed when it is evicted stays counted until the last
//! reader lets go). A reservation is taken before the memory is allocated,
//! and never waited for: past the budget the request is refused at once
//! (RESOURCE_EXHAUSTED naming `serve --compute-memory`).
//!
//! The budget bounds the whole process's compute memory, so only seven
//! eighths of it can be reserved ([`usable`]): the rest is headroom for what
//! is held before a request can be checked (a Submit or Add arrives as one
//! message that the transport buffers and decodes first, a refused sort's
//! data in flight) and for what the allocator keeps after it is freed. With
//! the whole budget reservable, the mix of bench/compute-memory.sh peaked
//! 6.5-9.7% above it (bench/RESULTS.md).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::ComputeError;

/// The shared byte budget. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: u64,
    used: AtomicU64,
}

/// The part of a budget of `limit` bytes that reservations may take (see
/// the module header for why not all of it).
pub(crate) fn usable(limit: u64) -> u64 {
    limit - limit / 8
}

impl MemoryBudget {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicU64::new(0),
            }),
        }
    }

    /// The configured budget, in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// Bytes reserved now.
    pub(crate) fn in_use(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes` if they fit in what is left.
    ///
    /// # Errors
    /// [`ComputeError::MemoryBudget`] when they do not (now, or ever: the
    /// error says which).
    pub(crate) fn try_reserve(&self, bytes: u64) -> Result<Reservation, ComputeError> {
        let limit = self.inner.limit;
        let mut used = self.inner.used.load(Ordering::Acquire);
        loop {
            if used.saturating_add(bytes) > usable(limit) {
                return Err(ComputeError::MemoryBudget {
                    needed: bytes,
                    limit,
                });
            }
            match self.inner.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        budget: self.inner.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// A reservation of nothing, to grow later with [`Reservation::absorb`].
    pub(crate) fn empty(&self) -> Reservation {
        Reservation {
            budget: self.inner.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from the budget until this is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Inner>,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Splits off up to `bytes` of this reservation as one of its own
    /// (held by a piece of work that may outlive the rest).
    pub(crate) fn split(&mut self, bytes: u64) -> Reservation {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Reservation {
            budget: self.budget.clone(),
            bytes,
        }
    }

    /// Takes over `other`'s bytes (both from the same budget).
    pub(crate) fn absorb(&mut self, mut other: Reservation) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_to_the_limit_and_come_back_when_dropped() {
        // 875 bytes of a 1,000-byte budget are usable.
        let b = MemoryBudget::new(1000);
        let r1 = b.try_reserve(475).unwrap();
        assert!(matches!(
            b.try_reserve(401),
            Err(ComputeError::MemoryBudget {
                needed: 401,
                limit: 1000
            })
        ));
        let mut r2 = b.try_reserve(400).unwrap();
        assert_eq!(b.in_use(), 875);
        drop(r1);
        assert_eq!(b.in_use(), 400);
        let mut grow = b.empty();
        grow.absorb(b.try_reserve(10).unwrap());
        r2.absorb(grow);
        assert_eq!((r2.bytes(), b.in_use()), (410, 410));
        drop(r2);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn a_split_share_stays_counted_until_it_is_dropped_itself() {
        let b = MemoryBudget::new(1000);
        let mut whole = b.try_reserve(300).unwrap();
        let share = whole.split(100);
        assert_eq!((whole.bytes(), share.bytes()), (200, 100));
        // The rest goes (a refused sort), its run still being sorted.
        drop(whole);
        assert_eq!(b.in_use(), 100);
        drop(share);
        assert_eq!(b.in_use(), 0);
        let mut small = b.try_reserve(10).unwrap();
        assert_eq!(small.split(50).bytes(), 10);
        assert_eq!(small.bytes(), 0);
    }
}
