//! Conversions between the Compute wire messages and
//! [`distribusync_core::compute`] types.

use distribusync_core::compute::{Number, Numbers, Order};

use crate::v1;

/// A wire message lacked a field it must carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing field `{0}`")]
pub struct MissingField(pub &'static str);

impl From<Numbers> for v1::Numbers {
    fn from(n: Numbers) -> Self {
        let kind = match n {
            Numbers::Ints(values) => v1::numbers::Kind::Ints(v1::IntList { values }),
            Numbers::Floats(values) => v1::numbers::Kind::Floats(v1::FloatList { values }),
        };
        v1::Numbers { kind: Some(kind) }
    }
}

impl From<&[i64]> for v1::Numbers {
    fn from(values: &[i64]) -> Self {
        v1::Numbers {
            kind: Some(v1::numbers::Kind::Ints(v1::IntList {
                values: values.to_vec(),
            })),
        }
    }
}

impl From<&[f64]> for v1::Numbers {
    fn from(values: &[f64]) -> Self {
        v1::Numbers {
            kind: Some(v1::numbers::Kind::Floats(v1::FloatList {
                values: values.to_vec(),
            })),
        }
    }
}

impl TryFrom<v1::Numbers> for Numbers {
    type Error = MissingField;
    /// Does not check finiteness: see [`Numbers::validate`].
    fn try_from(n: v1::Numbers) -> Result<Self, MissingField> {
        match n.kind {
            Some(v1::numbers::Kind::Ints(l)) => Ok(Numbers::Ints(l.values)),
            Some(v1::numbers::Kind::Floats(l)) => Ok(Numbers::Floats(l.values)),
            None => Err(MissingField("numbers.kind")),
        }
    }
}

impl From<Number> for v1::Number {
    fn from(n: Number) -> Self {
        let kind = match n {
            Number::Int(i) => v1::number::Kind::Int(i),
            Number::Float(x) => v1::number::Kind::Float(x),
        };
        v1::Number { kind: Some(kind) }
    }
}

impl TryFrom<v1::Number> for Number {
    type Error = MissingField;
    fn try_from(n: v1::Number) -> Result<Self, MissingField> {
        match n.kind {
            Some(v1::number::Kind::Int(i)) => Ok(Number::Int(i)),
            Some(v1::number::Kind::Float(x)) => Ok(Number::Float(x)),
            None => Err(MissingField("number.kind")),
        }
    }
}

impl From<v1::SortOrder> for Order {
    fn from(o: v1::SortOrder) -> Self {
        match o {
            v1::SortOrder::Descending => Order::Descending,
            v1::SortOrder::Ascending | v1::SortOrder::Unspecified => Order::Ascending,
        }
    }
}

impl From<Order> for v1::SortOrder {
    fn from(o: Order) -> Self {
        match o {
            Order::Ascending => v1::SortOrder::Ascending,
            Order::Descending => v1::SortOrder::Descending,
        }
    }
}

/// Wire duration from a std duration (saturating).
pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Std duration from a wire duration; `None` when negative or malformed.
pub fn std_duration(d: &prost_types::Duration) -> Option<std::time::Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for n in [Numbers::Ints(vec![1, -2]), Numbers::Floats(vec![0.5])] {
            let w: v1::Numbers = n.clone().into();
            assert_eq!(Numbers::try_from(w), Ok(n));
        }
        assert_eq!(
            Numbers::try_from(v1::Numbers { kind: None }),
            Err(MissingField("numbers.kind"))
        );
    }

    #[test]
    fn durations_round_trip() {
        let d = std::time::Duration::from_millis(1500);
        assert_eq!(std_duration(&duration(d)), Some(d));
        assert_eq!(
            std_duration(&prost_types::Duration {
                seconds: -1,
                nanos: 0
            }),
            None
        );
    }
}
