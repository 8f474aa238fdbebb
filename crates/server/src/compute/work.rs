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
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        if r.is_err() {
            tracing::error!("a computation panicked");
        }
        // The receiver is gone when the request was dropped: nothing to do.
        let _ = tx.send(r);
    });
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(ComputeError::WorkerLost),
    }
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
