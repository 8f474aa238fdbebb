//! What the sync engine's transfers move, as they move it: the bytes sent
//! and received, the bytes of the current pass still to move, and each
//! transfer running now (for `sync --metrics-listen` and the live status
//! line).
//!
//! Invariant: each [`Tracker`] stands for a transfer's planned bytes in
//! [`SyncStatus::bytes_pending`]; every byte it takes off is one it had
//! put there (a transfer moving more than planned, a file that grew, a
//! restart from zero, takes off no more), and [`Tracker::finish`] takes
//! off whatever is left. So when every transfer of a pass has finished,
//! whether it succeeded, failed or moved only a delta, nothing of that
//! pass is pending.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use super::engine::SyncStatus;
use crate::files::Progress;

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// To the server.
    Up,
    /// From the server.
    Down,
}

/// A transfer running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moving {
    /// The file (or "N small files" for a batch).
    pub what: String,
    pub direction: Direction,
    /// Bytes moved so far (a resumed transfer starts part-way).
    pub done: u64,
    /// Bytes the transfer moves in all.
    pub total: u64,
    /// Which transfer this is (unique within the process).
    pub id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One transfer's reporting; see the module's invariant.
#[derive(Debug)]
pub(super) struct Tracker {
    status: watch::Sender<SyncStatus>,
    id: u64,
    what: String,
    direction: Direction,
    /// Planned bytes still counted in `bytes_pending`.
    planned_left: AtomicU64,
    /// Counted in `moving` (from the first `start` to `finish`).
    shown: AtomicBool,
}

impl Tracker {
    /// A transfer of `planned` bytes; the caller has counted them in
    /// `bytes_pending` (from [`Tracker::planned`]).
    pub(super) fn new(
        status: watch::Sender<SyncStatus>,
        what: String,
        direction: Direction,
        planned: u64,
    ) -> Self {
        Tracker {
            status,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            what,
            direction,
            planned_left: AtomicU64::new(planned),
            shown: AtomicBool::new(false),
        }
    }

    /// The bytes this transfer plans to move (to add to `bytes_pending`).
    pub(super) fn planned(&self) -> u64 {
        self.planned_left.load(Ordering::Relaxed)
    }

    /// Takes up to `n` bytes off this transfer's pending ones; returns how
    /// many it took.
    fn take(&self, n: u64) -> u64 {
        let mut taken = 0;
        let _ = self
            .planned_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                taken = left.min(n);
                Some(left - taken)
            });
        taken
    }

    /// `n` bytes went over the wire (a batch, which reports no progress).
    pub(super) fn moved(&self, n: u64) {
        self.advance(n);
    }

    /// The transfer ended (whatever the outcome): it is no longer shown
    /// and nothing of it stays pending.
    pub(super) fn finish(&self) {
        let left = self.take(u64::MAX);
        let shown = self.shown.swap(false, Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.bytes_pending = s.bytes_pending.saturating_sub(left);
            if shown {
                s.moving.retain(|m| m.id != self.id);
            }
        });
    }
}

impl Progress for Tracker {
    fn start(&self, total: u64, done: u64) {
        // A resumed transfer does not move its first `done` bytes.
        let skipped = self.take(done);
        self.shown.store(true, Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.bytes_pending = s.bytes_pending.saturating_sub(skipped);
            match s.moving.iter_mut().find(|m| m.id == self.id) {
                // Started again (a restart from zero, a delta falling back).
                Some(m) => {
                    m.total = total;
                    m.done = done;
                }
                None => s.moving.push(Moving {
                    what: self.what.clone(),
                    direction: self.direction,
                    done,
                    total,
                    id: self.id,
                }),
            }
        });
    }

    fn advance(&self, n: u64) {
        let taken = self.take(n);
        self.status.send_modify(|s| {
            s.bytes_pending = s.bytes_pending.saturating_sub(taken);
            match self.direction {
                Direction::Up => s.bytes_sent += n,
                Direction::Down => s.bytes_received += n,
            }
            if let Some(m) = s.moving.iter_mut().find(|m| m.id == self.id) {
                m.done += n;
            }
        });
    }
}
