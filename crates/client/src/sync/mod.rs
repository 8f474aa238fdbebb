//! The sync engine: keeps a local folder and the server in agreement.
//!
//! `scan` (local view) + the server's change log (remote view) + `state`
//! (merge base) → [`distribusync_core::sync::plan`] → `exec` carries the
//! plan out. [`SyncEngine::run`] keeps going on filesystem events, server
//! changes and a periodic rescan; [`SyncEngine::run_once`] does one pass.

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
