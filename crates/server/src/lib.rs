//! DistribuSync server: the Files service over MASTER and its index, plus
//! gRPC health checking and reflection.
//!
//! Main types: [`ServerConfig`] and [`serve`] (the caller binds the listener
//! and passes the shutdown trigger), [`store::Store`] (MASTER on disk and
//! the SQLite index), [`files::FilesService`].
#![forbid(unsafe_code)]

pub mod error;
pub mod files;
pub mod locks;
mod serve;
pub mod store;

pub use error::ServiceError;
pub use serve::{ServeError, ServerConfig, serve};
