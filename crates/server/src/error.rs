//! Errors of the Files service and how they reach clients.
//!
//! Policy: every error a client can cause names the path and what is wrong
//! with it, and maps to the gRPC code a client can act on (one `From` impl,
//! below). Failures of the server itself (IO, the index) are logged with
//! their cause and reach the client as INTERNAL with a short description.

use distribusync_core::{PathError, RemotePath, Revision};
use tonic::{Code, Status};

/// Metadata key carrying the current revision on FAILED_PRECONDITION.
pub const CURRENT_REVISION_KEY: &str = "x-distribusync-current-revision";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}: no such file")]
    NotFound(RemotePath),
    #[error("{0}: already exists")]
    AlreadyExists(RemotePath),
    #[error("{path}: revision mismatch: expected {expected}, current is {current}")]
    RevisionMismatch {
        path: RemotePath,
        expected: Revision,
        current: Revision,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OutOfRange(String),
    /// The operation cannot go on as asked, but the same request from the
    /// start can (a resumed upload whose kept part is gone).
    #[error("{0}")]
    Aborted(String),
    #[error("{what} exceeds the limit of {limit}")]
    TooLarge { what: String, limit: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index: {0}")]
    Index(#[from] rusqlite::Error),
}

impl ServiceError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::InvalidPath(_) | ServiceError::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::RevisionMismatch { .. } | ServiceError::Conflict(_) => {
                Code::FailedPrecondition
            }
            ServiceError::OutOfRange(_) => Code::OutOfRange,
            ServiceError::Aborted(_) => Code::Aborted,
            ServiceError::TooLarge { .. } => Code::ResourceExhausted,
            ServiceError::Io { .. } | ServiceError::Index(_) => {
                tracing::error!(error = %e, "internal error");
                Code::Internal
            }
        };
        let mut status = Status::new(code, e.to_string());
        if let ServiceError::RevisionMismatch { current, .. } = e
            && let Ok(v) = current.to_string().parse()
        {
            status.metadata_mut().insert(CURRENT_REVISION_KEY, v);
        }
        status
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
