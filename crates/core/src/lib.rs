//! Pure logic of DistribuSync: no runtime, no network, no filesystem.
//!
//! - [`RemotePath`]: the one validated path type every layer uses.
//! - [`Revision`] and [`ContentHash`]: how versions are named.
//! - [`limits`]: sizes every layer agrees on.
//! - [`size`]: byte sizes as written on a command line (`1GiB`).
//! - [`delta`]: content-defined chunks, manifests and delta-transfer plans.
//! - [`token`]: access tokens (text form, scopes, expiry).
//! - [`Fingerprint`]: a certificate's SHA-256, shown and parsed as openssl does.
//! - [`compute`]: the arithmetic of the Compute service ([`compute::Numbers`], checked add, sort, parsing).
//!
//! If this crate cannot do IO, nobody can make it do IO by accident.
#![forbid(unsafe_code)]

pub mod compute;
pub mod delta;
pub mod echo;
pub mod fingerprint;
pub mod hash;
pub mod limits;
pub mod path;
pub mod size;
pub mod sync;
pub mod token;

pub use echo::echo;
pub use fingerprint::{Fingerprint, FingerprintError};
pub use hash::ContentHash;
pub use path::{PathError, RESERVED_DIR, RemotePath};

/// A file's revision: the server-wide sequence number of its last change.
/// Revision 0 means "does not exist" in `if_revision` preconditions.
pub type Revision = u64;
