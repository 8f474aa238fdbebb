//! DistribuSync client library: [`compute::ComputeClient`] for remote
//! additions and sorts, synchronous or as jobs with callbacks.
#![forbid(unsafe_code)]

pub mod compute;

pub use compute::{ComputeClient, JobHandle};
