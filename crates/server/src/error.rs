//! Errors of the Files service and how they reach clients.
//!
//! Policy: every error a client can cause names the path and what is wrong
//! with it, and maps to the gRPC code a client can act on (one `From` impl,
//! below). Client strings are echoed bounded ([`distribusync_core::echo`]).
//! A full disk (or quota) is RESOURCE_EXHAUSTED naming the server's disk:
//! the client can do nothing but wait, the operator must make room.
//! Other failures of the server itself (IO, the index) are logged with
//! their cause and reach the client as INTERNAL with a short description.

use std::path::Path;

use distribusync_core::{PathError, RemotePath, Revision};
use tonic::{Code, Status};

/// Metadata key carrying the current revision on FAILED_PRECONDITION.
pub const CURRENT_REVISION_KEY: &str = "x-distribusync-current-revision";

/// Longest status message sent, in bytes: gRPC carries it in a header, and
/// a header list past the peer's limit (16 KiB in hyper) turns the status
/// into a protocol error. Messages echo client strings bounded, so this is
/// only a safety net.
const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{}: no such file", .0.shown())]
    NotFound(RemotePath),
    #[error("{}: already exists", .0.shown())]
    AlreadyExists(RemotePath),
    #[error("{}: revision mismatch: expected {expected}, current is {current}", path.shown())]
    RevisionMismatch {
        path: RemotePath,
        expected: Revision,
        current: Revision,
    },
    #[error("{0}")]
    Conflict(String),
    /// A path outside the caller's token's folder (whether or not it
    /// exists: the answer must not tell).
    #[error("{}: outside this token's folder {}/", path.shown(), prefix.shown())]
    OutsidePrefix {
        path: RemotePath,
        prefix: RemotePath,
    },
    /// A write to a path a WebDAV client holds locked.
    #[error(
        "{}: locked by a WebDAV client (token {owner}, lock {token}); try again when {until}",
        path.shown()
    )]
    Locked {
        path: RemotePath,
        token: String,
        owner: String,
        until: String,
    },
    /// A LOCK past a bound of the WebDAV lock table.
    #[error(
        "token {who}: too many WebDAV locks (the limit is {limit}); unlock files no longer \
         open, or wait for their locks to expire"
    )]
    TooManyLocks { who: String, limit: String },
    #[error("{0}")]
    OutOfRange(String),
    /// The operation cannot go on as asked, but the same request from the
    /// start can (a resumed upload whose kept part is gone).
    #[error("{0}")]
    Aborted(String),
    #[error("{what} exceeds the limit of {limit}")]
    TooLarge { what: String, limit: String },
    /// The disk holding MASTER (or the user's quota on it) is full.
    #[error(
        "no space left on the server's disk{}: {context}",
        disk.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    NoSpace {
        /// The server's root, once known (see [`ServiceError::on_disk`]).
        disk: Option<String>,
        context: String,
    },
    /// A change made on disk that the index could not record yet; the
    /// server records it as soon as it can (a repair in the background), so
    /// the client must not assume it did not happen.
    #[error(
        "{what} was done on the server's disk but not yet recorded ({source}); \
         the server records it as soon as it can"
    )]
    Unrecorded {
        what: String,
        #[source]
        source: Box<ServiceError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index: {0}")]
    Index(rusqlite::Error),
    /// The metadata database of the cluster backend failed or cannot be
    /// reached (one line naming it, never its password): the request may
    /// be tried again.
    #[error("{0}")]
    Database(String),
    /// The cluster backend's object storage failed or cannot be reached
    /// (one line naming the bucket): the request may be tried again.
    #[error("{0}")]
    Blobs(String),
    /// Stored content no longer matches its hash (one line naming the
    /// object): never served.
    #[error("{0}")]
    Corrupt(String),
    /// What this server's backend does not offer (the cluster backend has
    /// no WebDAV, web page or delta transfer yet): the client falls back.
    #[error("{0}")]
    Unsupported(String),
}

/// True for the errors of a full disk or an exhausted quota.
fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl From<rusqlite::Error> for ServiceError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                Self::NoSpace {
                    disk: None,
                    context: format!("index: {e}"),
                }
            }
            _ => Self::Index(e),
        }
    }
}

impl ServiceError {
    /// An IO error while doing `context`; a full disk becomes
    /// [`ServiceError::NoSpace`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if is_no_space(&source) {
            return Self::NoSpace {
                disk: None,
                context: format!("{}: {source}", context.into()),
            };
        }
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Names the disk (the server's root) in a [`ServiceError::NoSpace`].
    #[must_use]
    pub fn on_disk(self, root: &Path) -> Self {
        match self {
            Self::Unrecorded { what, source } => Self::Unrecorded {
                what,
                source: Box::new(source.on_disk(root)),
            },
            Self::NoSpace {
                disk: None,
                context,
            } => Self::NoSpace {
                disk: Some(root.display().to_string()),
                context,
            },
            e => e,
        }
    }

    /// `self`, the failure to record `what`, which was done on disk.
    #[must_use]
    pub fn unrecorded(self, what: impl Into<String>) -> Self {
        Self::Unrecorded {
            what: what.into(),
            source: Box::new(self),
        }
    }
}

impl ServiceError {
    /// The gRPC code a client sees for this error.
    fn code(&self) -> Code {
        match self {
            ServiceError::InvalidPath(_) | ServiceError::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::RevisionMismatch { .. }
            | ServiceError::Conflict(_)
            | ServiceError::Locked { .. } => Code::FailedPrecondition,
            ServiceError::OutOfRange(_) => Code::OutOfRange,
            ServiceError::OutsidePrefix { .. } => Code::PermissionDenied,
            ServiceError::Aborted(_) => Code::Aborted,
            ServiceError::TooLarge { .. } => Code::ResourceExhausted,
            ServiceError::NoSpace { .. } | ServiceError::TooManyLocks { .. } => {
                Code::ResourceExhausted
            }
            ServiceError::Unrecorded { source, .. } => source.code(),
            ServiceError::Io { .. } | ServiceError::Index(_) => Code::Internal,
            ServiceError::Database(_) | ServiceError::Blobs(_) => Code::Unavailable,
            ServiceError::Corrupt(_) => Code::DataLoss,
            ServiceError::Unsupported(_) => Code::Unimplemented,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        // Not logged here: the `observe` layer logs every failed call once,
        // with its code and this message.
        let code = e.code();
        let message = e.to_string();
        let mut status = Status::new(code, echo_message(&message));
        if let ServiceError::RevisionMismatch { current, .. } = e
            && let Ok(v) = current.to_string().parse()
        {
            status.metadata_mut().insert(CURRENT_REVISION_KEY, v);
        }
        status
    }
}

/// `message` bounded to [`MAX_MESSAGE_BYTES`].
fn echo_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &message[..end], message.len())
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_is_resource_exhausted_naming_the_disk() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = ServiceError::io("a/b", std::io::Error::from_raw_os_error(errno))
                .on_disk(Path::new("/srv/MASTER"));
            let status = Status::from(e);
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(
                status
                    .message()
                    .starts_with("no space left on the server's disk (/srv/MASTER): a/b"),
                "{}",
                status.message()
            );
        }
        let other = ServiceError::io("a/b", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(Status::from(other).code(), Code::Internal);
    }

    #[test]
    fn a_full_index_is_resource_exhausted_too() {
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let status = Status::from(ServiceError::from(e));
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}
