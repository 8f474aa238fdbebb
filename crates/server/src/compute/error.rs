//! Error policy of the Compute service: every way a request can fail is a
//! [`ComputeError`] variant whose message names the problem (and the limit or
//! setting involved); the one `From<ComputeError> for tonic::Status` below
//! chooses the gRPC code. Handlers never build a `Status` themselves.

use distribusync_core::{compute::ArithError, size::ByteSize};
use tonic::{Code, Status};

/// Why a Compute request or job failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComputeError {
    /// Bad numbers (too few, NaN, infinity) or an overflow.
    #[error(transparent)]
    Arith(#[from] ArithError),
    #[error(
        "{count} numbers exceed this server's limit of {limit} numbers per request (max_numbers)"
    )]
    TooMany { count: u64, limit: usize },
    #[error(
        "the job queue is full ({capacity} jobs queued or running, the server's job_queue_capacity); retry later"
    )]
    QueueFull { capacity: usize },
    #[error("no job {:?}: unknown, or finished and its result evicted", distribusync_core::echo(.0))]
    NotFound(String),
    /// Past the compute memory budget (`serve --compute-memory`).
    #[error("{}", budget_message(*needed, *limit))]
    MemoryBudget { needed: u64, limit: u64 },
    #[error(
        "job {0}'s result was evicted to make room for newer work in the compute memory budget (serve --compute-memory); submit the job again"
    )]
    Evicted(String),
    #[error(
        "too many callback streams open {scope} (limit {limit}); close one, or try again later"
    )]
    TooManyStreams { scope: &'static str, limit: usize },
    #[error("job {id} has no sorted result to stream: {why}")]
    NoStreamedResult { id: String, why: &'static str },
    #[error("job {id} already finished: {state}")]
    AlreadyFinished { id: String, state: &'static str },
    #[error("job id {0} is already in use")]
    AlreadyExists(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("job exceeded its deadline of {0:?}")]
    DeadlineExceeded(std::time::Duration),
    #[error("job cancelled")]
    Cancelled,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the computation failed unexpectedly (a bug: see the server log)")]
    WorkerLost,
    /// The cluster backend's job queue cannot be used (its message names
    /// the metadata database and why).
    #[error("compute jobs: {0}")]
    JobStore(String),
}

impl ComputeError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            ComputeError::Arith(ArithError::IntegerOverflow | ArithError::FloatOverflow) => {
                Code::OutOfRange
            }
            ComputeError::Arith(ArithError::Cancelled) | ComputeError::Cancelled => Code::Cancelled,
            ComputeError::Arith(_) | ComputeError::InvalidArgument(_) => Code::InvalidArgument,
            ComputeError::TooMany { .. }
            | ComputeError::QueueFull { .. }
            | ComputeError::MemoryBudget { .. }
            | ComputeError::TooManyStreams { .. } => Code::ResourceExhausted,
            ComputeError::NotFound(_) | ComputeError::Evicted(_) => Code::NotFound,
            ComputeError::AlreadyFinished { .. } | ComputeError::NoStreamedResult { .. } => {
                Code::FailedPrecondition
            }
            ComputeError::AlreadyExists(_) => Code::AlreadyExists,
            ComputeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ComputeError::ShuttingDown | ComputeError::JobStore(_) => Code::Unavailable,
            ComputeError::WorkerLost => Code::Internal,
        }
    }
}

fn budget_message(needed: u64, limit: u64) -> String {
    if needed > super::budget::usable(limit) {
        format!(
            "this request needs {} of compute memory, more than the whole compute memory budget ({}, serve --compute-memory) lets requests hold ({})",
            ByteSize(needed),
            ByteSize(limit),
            ByteSize(super::budget::usable(limit))
        )
    } else {
        format!(
            "the compute memory budget ({}, serve --compute-memory) is in use; try again later (this request needs {})",
            ByteSize(limit),
            ByteSize(needed)
        )
    }
}

impl From<ComputeError> for Status {
    fn from(e: ComputeError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<distribusync_proto::compute::MissingField> for ComputeError {
    fn from(e: distribusync_proto::compute::MissingField) -> Self {
        ComputeError::InvalidArgument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_name_the_problem() {
        let s = Status::from(ComputeError::TooMany {
            count: 11,
            limit: 10,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("limit of 10"), "{}", s.message());
        assert_eq!(
            Status::from(ComputeError::Arith(ArithError::IntegerOverflow)).code(),
            Code::OutOfRange
        );
        assert_eq!(
            Status::from(ComputeError::Arith(ArithError::TooFew(1))).code(),
            Code::InvalidArgument
        );
        let s = Status::from(ComputeError::AlreadyFinished {
            id: "x".into(),
            state: "succeeded",
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("already finished"));
        let s = Status::from(ComputeError::MemoryBudget {
            needed: 1 << 20,
            limit: 1 << 30,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message()
                .contains("compute memory budget (1 GiB, serve --compute-memory) is in use"),
            "{}",
            s.message()
        );
        let s = Status::from(ComputeError::MemoryBudget {
            needed: 2 << 30,
            limit: 1 << 30,
        });
        assert!(
            s.message().contains("more than the whole"),
            "{}",
            s.message()
        );
    }
}
