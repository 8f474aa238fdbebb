//! DistribuSync client library: the typed clients the CLI, the menu and the
//! sync engine share.
//!
//! Main types: [`FilesClient`] (upload, download with resume, stat, list,
//! delete, rename, watch), [`FileInfo`], [`ClientError`], [`Progress`];
//! [`ComputeClient`] (add, sort, jobs whose results arrive as awaitable
//! [`JobHandle`]s or callbacks).
#![forbid(unsafe_code)]

pub mod compute;
pub mod connect;
pub mod delta;
pub mod error;
pub mod files;
pub mod profile;
pub mod sync;
pub mod tree;

pub use compute::{ComputeClient, JobHandle};
pub use connect::{
    AuthChannel, Bearer, ConnectError, ConnectionConfig, Reachability, TlsTrust, Token, channel,
    find_connect_error, fingerprint_of, lazy_channel, normalize_addr, probe,
};
pub use delta::{DEFAULT_DELTA_MIN_SIZE, DeltaOutcome, DeltaPolicy};
pub use error::{ClientError, Result};
pub use files::{
    BatchFile, Change, ChangeKind, Expected, FileInfo, FilesClient, ListPages, Progress,
    WatchEvent, WatchStream, hash_local,
};
pub use profile::{DEFAULT_PROFILE, Profile, ProfileError, Profiles};
pub use tree::{LocalTree, Skipped, local_tree};
