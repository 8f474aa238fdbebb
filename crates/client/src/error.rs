//! Errors of the client library. Each variant is one thing a caller can act
//! on; messages name the path and say what to do where that helps.

use std::path::PathBuf;

use distribusync_core::{PathError, Revision};
use tonic::Code;

/// Metadata key the server uses to carry the current revision.
pub const CURRENT_REVISION_KEY: &str = "x-distribusync-current-revision";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach server at {addr} (is \"distribusync serve\" running?)")]
    Unreachable { addr: String },
    /// The server answered UNAVAILABLE itself (a store it depends on is
    /// down, it is shutting down): its reason, worth retrying later.
    #[error("the server at {addr} is unavailable: {message}")]
    Unavailable { addr: String, message: String },
    #[error("lost the connection to the server at {addr}; run it again to resume")]
    ConnectionLost { addr: String },
    #[error("invalid server address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    /// TLS or connection set-up: a changed fingerprint, an untrusted
    /// certificate, TLS spoken to a plaintext server or the reverse.
    #[error(transparent)]
    Connect(crate::connect::ConnectError),
    /// The server wants a valid token (none was sent, or it was refused).
    #[error(
        "the server refused the token: {0} (give one with --token-file or DISTRIBUSYNC_TOKEN, or run `distribusync login`)"
    )]
    Unauthenticated(String),
    /// The token is valid but may not do this.
    #[error("not allowed: {0}")]
    PermissionDenied(String),
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{message}")]
    RevisionMismatch {
        message: String,
        current: Option<Revision>,
    },
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("server error: {0}")]
    Server(String),
    /// The IO error is in the message, not also a source, so that a
    /// chain printed whole names it once.
    #[error("{path}: {error}")]
    Local {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Stale(String),
    /// The server cannot go on with this request as it stands but would
    /// take it from the start (a resumed upload whose kept part is gone).
    #[error("{0}")]
    Restart(String),
    #[error("{path}: downloaded data does not match the server's hash; try again")]
    Corrupt { path: String },
}

impl ClientError {
    pub(crate) fn local(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Local {
            path: path.into(),
            error: source,
        }
    }

    /// Maps a status from the server at `addr` to an error.
    pub(crate) fn from_status(status: tonic::Status, addr: &str) -> Self {
        if let Some(c) = crate::connect::find_connect_error(&status) {
            return c.into();
        }
        let msg = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthenticated(msg),
            Code::PermissionDenied => Self::PermissionDenied(msg),
            Code::Unavailable if is_transport(&status) => Self::Unreachable {
                addr: addr.to_owned(),
            },
            // A connection that broke mid-call (the server stopped, the
            // network failed) surfaces as UNKNOWN with a transport source.
            Code::Unknown if is_transport(&status) => Self::ConnectionLost {
                addr: addr.to_owned(),
            },
            Code::NotFound => Self::NotFound(msg),
            Code::AlreadyExists => Self::AlreadyExists(msg),
            Code::FailedPrecondition if status.metadata().contains_key(CURRENT_REVISION_KEY) => {
                let current = status
                    .metadata()
                    .get(CURRENT_REVISION_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                Self::RevisionMismatch {
                    message: msg,
                    current,
                }
            }
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                Self::Rejected(msg)
            }
            Code::ResourceExhausted => Self::LimitExceeded(msg),
            Code::Aborted => Self::Restart(msg),
            // The server's own reason (a transport failure was matched
            // above): "cannot reach server" would hide what is down.
            Code::Unavailable if !msg.is_empty() => Self::Unavailable {
                addr: addr.to_owned(),
                message: msg,
            },
            Code::Unavailable | Code::Cancelled => Self::Unreachable {
                addr: addr.to_owned(),
            },
            _ => Self::Server(format!("{:?}: {msg}", status.code())),
        }
    }

    /// The same error again, for each of several files one failure hit:
    /// unreachable stays unreachable, anything else keeps its message.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unreachable { addr } => Self::Unreachable { addr: addr.clone() },
            Self::Unavailable { addr, message } => Self::Unavailable {
                addr: addr.clone(),
                message: message.clone(),
            },
            Self::ConnectionLost { addr } => Self::ConnectionLost { addr: addr.clone() },
            Self::Connect(c) => Self::Connect(c.clone()),
            other => Self::Rejected(other.to_string()),
        }
    }

    /// True when the server could not be reached or the connection broke
    /// (worth retrying later).
    ///
    /// A connection refused at the TLS level (a changed fingerprint, a
    /// protocol mismatch) counts: no request can be made until someone
    /// fixes it, and a daemon waits and retries rather than failing paths.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Unavailable { .. }
                | Self::ConnectionLost { .. }
                | Self::Connect(_)
        )
    }
}

fn is_transport(status: &tonic::Status) -> bool {
    // Connection failures carry a transport error as their source.
    std::error::Error::source(status).is_some() || status.message().contains("transport")
}

impl From<crate::connect::ConnectError> for ClientError {
    /// A server that cannot be reached is [`ClientError::Unreachable`], as
    /// it always was; everything else about connecting is `Connect`.
    fn from(c: crate::connect::ConnectError) -> Self {
        match c {
            crate::connect::ConnectError::Unreachable { addr, .. } => Self::Unreachable { addr },
            crate::connect::ConnectError::BadAddress { addr, why } => {
                Self::BadAddress { addr, why }
            }
            c => Self::Connect(c),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
