//! The sync engine: keeps a local folder and the server in agreement.
//!
//! `scan` (local view, in memory), the server's change log (remote view)
//! and the merge base, the last two kept in `state` (the SQLite state
//! database, read by path, by folder or in path order, never loaded
//! whole), go to [`distribusync_core::sync::plan_with`]; `exec` carries
//! the plan out. [`SyncEngine::run`] keeps going on filesystem events,
//! server changes and a periodic rescan; [`SyncEngine::run_once`] does
//! one pass.

mod engine;
mod exec;
mod ignore;
mod remote;
mod scan;
mod state;
mod traffic;
mod watcher;

pub use distribusync_core::sync::Mode;
pub use engine::{SyncEngine, SyncError, SyncOptions, SyncPhase, SyncStatus};
pub use ignore::{BUILTIN as BUILTIN_IGNORES, IgnoreRules};
pub use traffic::{Direction, Moving};
