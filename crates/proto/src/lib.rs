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
pub mod delta;

/// Encoded `FileDescriptorSet` of every DistribuSync proto, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/distribusync_descriptor.bin"));

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wire timestamp from a system time (clamped to the Unix epoch).
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        // Before the epoch: protobuf counts whole seconds back, then
        // nanoseconds forward (1969-12-31T23:59:59.75 is -1 s + 750 ms).
        Err(e) => {
            let d = e.duration();
            let mut seconds = i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                seconds = seconds.saturating_sub(1);
                nanos = 1_000_000_000 - nanos;
            }
            prost_types::Timestamp {
                seconds,
                nanos: i32::try_from(nanos).unwrap_or(0),
            }
        }
    }
}

/// Latest second a wire timestamp may name: times are kept as i64
/// nanoseconds since the epoch ([`unix_nanos`]), which end in April 2262.
pub const MAX_TIMESTAMP_SECONDS: i64 = i64::MAX / 1_000_000_000 - 1;

/// Earliest second a wire timestamp may name (September 1677, the start
/// of i64 nanoseconds since the epoch; see [`unix_nanos`]).
pub const MIN_TIMESTAMP_SECONDS: i64 = i64::MIN / 1_000_000_000 + 1;

/// A system time from a wire timestamp; `None` when outside
/// [`MIN_TIMESTAMP_SECONDS`]..=[`MAX_TIMESTAMP_SECONDS`] (it could not be
/// kept as it was given) or malformed. Times before 1970 are kept: file
/// systems hold them, and a file dated 1969 must not come back as 1970.
pub fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds) {
        return None;
    }
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    let whole = match u64::try_from(t.seconds) {
        Ok(secs) => UNIX_EPOCH.checked_add(Duration::from_secs(secs))?,
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(t.seconds.unsigned_abs()))?,
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// Nanoseconds since the epoch, as stored in indexes.
pub fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The inverse of [`unix_nanos`].
pub fn from_unix_nanos(n: i64) -> SystemTime {
    match u64::try_from(n) {
        Ok(n) => UNIX_EPOCH + Duration::from_nanos(n),
        Err(_) => UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs()),
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip_through_the_wire_and_the_index() {
        let cases = [
            UNIX_EPOCH - Duration::from_millis(250),
            UNIX_EPOCH - Duration::from_secs(86_400 * 365),
            UNIX_EPOCH - Duration::new(2_000_000_000, 123_456_789),
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 1),
        ];
        for t in cases {
            let wire = timestamp(t);
            assert!((0..1_000_000_000).contains(&wire.nanos), "{wire:?}");
            assert_eq!(system_time(&wire), Some(t), "{wire:?}");
            assert_eq!(from_unix_nanos(unix_nanos(t)), t);
        }
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_millis(250)),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 750_000_000
            }
        );
        let too_early = prost_types::Timestamp {
            seconds: MIN_TIMESTAMP_SECONDS - 1,
            nanos: 0,
        };
        assert_eq!(system_time(&too_early), None);
    }
}
