//! DistribuSync server: the Compute service ([`ComputeService`]).
#![forbid(unsafe_code)]

pub mod compute;

pub use compute::{ComputeConfig, ComputeService};
