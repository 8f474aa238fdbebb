//! DistribuSync server: the Files service over MASTER and its index, the
//! Compute service (add, sort, jobs with callbacks), plus gRPC health checking
//! and reflection.
//!
//! Main types: [`ServerConfig`] and [`serve`] (the caller binds the listener
//! and passes the shutdown trigger), [`store::Store`] (MASTER on disk and
//! the SQLite index), [`files::FilesService`], [`ComputeService`] with its
//! [`ComputeConfig`], [`TlsIdentity`] (the certificate it serves TLS with).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod compute;
mod delta_rpc;
mod download;
pub mod error;
pub mod files;
mod inline;
pub mod locks;
mod metrics;
mod metrics_endpoint;
pub use metrics_endpoint::{METRICS_HEADER_TIMEOUT, METRICS_MAX_CONNECTIONS, serve_metrics};
mod observe;
mod oversize;
mod serve;
pub mod stats;
pub mod store;
mod tls;
mod transport;
pub mod web;

/// The version and the commit built from: `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DISTRIBUSYNC_COMMIT"),
    ")"
);
mod webdav;

pub use auth::{AuthConfig, AuthMode, Identity};
pub use compute::{ComputeConfig, ComputeService};
pub use error::ServiceError;
pub use serve::{Reloadable, ServeError, ServerConfig, Services, serve, serve_with_webdav};
pub use tls::{TLS_DIR, TlsError, TlsIdentity, fingerprint_of};
pub use transport::{KEEPALIVE_TIMEOUT, TransportConfig, raise_descriptor_limit};
pub use web::{WEB_MAX_CONNECTIONS, WebListener};
pub use webdav::{DEPTH_INFINITY_MAX, WebDavConfig};
