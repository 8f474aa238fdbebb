//! CPU work off the async runtime: closures run on the rayon pool and their
//! result comes back through a oneshot, so a big sort never holds a runtime
//! worker thread.

use std::panic::AssertUnwindSafe;

use distribusync_core::compute::{Numbers, Order, cmp_floats, cmp_ints};
use rayon::slice::ParallelSliceMut;
use tokio::sync::oneshot;

use super::ComputeError;

/// Runs `f` on the rayon pool and awaits its result.
///
/// # Errors
/// [`ComputeError::WorkerLost`] if `f` panicked (logged), rather than the
/// panic aborting the process as it would inside `rayon::spawn`.
pub(crate) async fn on_rayon<T, F>(f: F) -> Result<T, ComputeError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    start_on_rayon(f).join().await
}

/// Work started on the rayon pool; [`RayonTask::join`] awaits it.
#[derive(Debug)]
pub(crate) struct RayonTask<T>(oneshot::Receiver<std::thread::Result<T>>);

impl<T> RayonTask<T> {
    /// # Errors
    /// As [`on_rayon`].
    pub(crate) async fn join(self) -> Result<T, ComputeError> {
        match self.0.await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(ComputeError::WorkerLost),
        }
    }
}

/// Starts `f` on the rayon pool now (unlike [`on_rayon`], whose work starts
/// when first polled).
pub(crate) fn start_on_rayon<T, F>(f: F) -> RayonTask<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        if r.is_err() {
            tracing::error!("a computation panicked");
        }
        // The receiver is gone when the request was dropped: nothing to do.
        let _ = tx.send(r);
    });
    RayonTask(rx)
}

/// Sequential unstable sort with the core comparators (for one run of a
/// sort sorted in pieces while it arrives).
pub(crate) fn seq_sort(numbers: &mut Numbers, order: Order) {
    distribusync_core::compute::sort(numbers, order);
}

/// Parallel unstable sort with the core comparators.
pub(crate) fn par_sort(numbers: &mut Numbers, order: Order) {
    match numbers {
        Numbers::Ints(v) => match order {
            // The plain comparator lets the sort use its fastest path.
            Order::Ascending => v.par_sort_unstable(),
            Order::Descending => v.par_sort_unstable_by(|a, b| cmp_ints(a, b, order)),
        },
        Numbers::Floats(v) => v.par_sort_unstable_by(|a, b| cmp_floats(a, b, order)),
    }
}
