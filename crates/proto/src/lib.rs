//! The wire contract of DistribuSync (package `distribusync.v1`), generated
//! from `proto/distribusync/v1/*.proto` by protox + tonic-prost-build, plus
//! conversions between wire messages and core types.
#![forbid(unsafe_code)]
#![allow(missing_debug_implementations)] // generated code

/// Generated messages, clients and servers.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("distribusync.v1");
}

pub mod compute;

/// Encoded `FileDescriptorSet` of every DistribuSync proto, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/distribusync_descriptor.bin"));

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wire timestamp from a system time (clamped to the Unix epoch).
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Latest second a wire timestamp may name: times are kept as i64
/// nanoseconds since the epoch ([`unix_nanos`]), which end in April 2262.
pub const MAX_TIMESTAMP_SECONDS: i64 = i64::MAX / 1_000_000_000 - 1;

/// A system time from a wire timestamp; `None` when before the epoch, after
/// [`MAX_TIMESTAMP_SECONDS`] (it could not be kept as it was given) or
/// malformed.
pub fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    if t.seconds > MAX_TIMESTAMP_SECONDS {
        return None;
    }
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Nanoseconds since the epoch, as stored in indexes.
pub fn unix_nanos(t: SystemTime) -> i64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The inverse of [`unix_nanos`].
pub fn from_unix_nanos(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(n).unwrap_or(0))
}
