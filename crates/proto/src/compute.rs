//! Conversions between the Compute wire messages and
//! [`distribusync_core::compute`] types.

use distribusync_core::compute::{Number, Numbers, Order};
use prost::{
    DecodeError,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
};

use crate::v1;

/// Values per stack buffer while encoding.
const ENCODE_BATCH: usize = 512;

/// `IntList` and `FloatList` (`repeated sfixed64` / `repeated double`,
/// packed) are coded by hand rather than generated: prost decodes a packed
/// fixed-width list one value at a time, which made decoding ten million
/// numbers cost more than sorting them. These impls read and write the same
/// wire format (and accept the unpacked form too, through prost's own code)
/// a whole buffer slice at a time.
macro_rules! fixed64_list {
    ($(#[$doc:meta])* $name:ident, $t:ty, $fallback:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Default, Debug)]
        pub struct $name {
            pub values: Vec<$t>,
        }

        impl prost::Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                if self.values.is_empty() {
                    return;
                }
                prost::encoding::encode_key(1, WireType::LengthDelimited, buf);
                prost::encoding::encode_varint((self.values.len() * 8) as u64, buf);
                let mut tmp = [0u8; 8 * ENCODE_BATCH];
                for chunk in self.values.chunks(ENCODE_BATCH) {
                    let n = chunk.len() * 8;
                    for (dst, x) in tmp[..n].chunks_exact_mut(8).zip(chunk) {
                        dst.copy_from_slice(&x.to_le_bytes());
                    }
                    buf.put_slice(&tmp[..n]);
                }
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                if tag != 1 {
                    return prost::encoding::skip_field(wire_type, tag, buf, ctx);
                }
                if wire_type != WireType::LengthDelimited {
                    return prost::encoding::$fallback::merge_repeated(
                        wire_type,
                        &mut self.values,
                        buf,
                        ctx,
                    );
                }
                let len = prost::encoding::decode_varint(buf)?;
                if len > buf.remaining() as u64 || len % 8 != 0 {
                    // prost offers no other way to build a decode error.
                    #[allow(deprecated)]
                    return Err(DecodeError::new("invalid length of a packed 64-bit list"));
                }
                let mut left = len as usize;
                self.values.reserve(left / 8);
                while left > 0 {
                    let chunk = buf.chunk();
                    let whole = chunk.len().min(left) / 8 * 8;
                    if whole == 0 {
                        // A value split between two buffer segments.
                        self.values
                            .push(<$t>::from_le_bytes(buf.get_u64_le().to_le_bytes()));
                        left -= 8;
                        continue;
                    }
                    self.values.extend(chunk[..whole].chunks_exact(8).map(|b| {
                        <$t>::from_le_bytes(b.try_into().expect("chunks_exact(8) yields 8 bytes"))
                    }));
                    buf.advance(whole);
                    left -= whole;
                }
                Ok(())
            }

            fn encoded_len(&self) -> usize {
                if self.values.is_empty() {
                    return 0;
                }
                let n = self.values.len() * 8;
                prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(n as u64) + n
            }

            fn clear(&mut self) {
                self.values.clear();
            }
        }
    };
}

fixed64_list!(
    /// Wire message `distribusync.v1.IntList`.
    IntList,
    i64,
    sfixed64
);
fixed64_list!(
    /// Wire message `distribusync.v1.FloatList`.
    FloatList,
    f64,
    double
);

/// A wire message lacked a field it must carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing field `{0}`")]
pub struct MissingField(pub &'static str);

impl From<Numbers> for v1::Numbers {
    fn from(n: Numbers) -> Self {
        let kind = match n {
            Numbers::Ints(values) => v1::numbers::Kind::Ints(IntList { values }),
            Numbers::Floats(values) => v1::numbers::Kind::Floats(FloatList { values }),
        };
        v1::Numbers { kind: Some(kind) }
    }
}

impl From<&[i64]> for v1::Numbers {
    fn from(values: &[i64]) -> Self {
        v1::Numbers {
            kind: Some(v1::numbers::Kind::Ints(IntList {
                values: values.to_vec(),
            })),
        }
    }
}

impl From<&[f64]> for v1::Numbers {
    fn from(values: &[f64]) -> Self {
        v1::Numbers {
            kind: Some(v1::numbers::Kind::Floats(FloatList {
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
    fn hand_coded_lists_match_the_protobuf_wire_format() {
        use prost::Message;
        // What prost generates for `repeated sfixed64 values = 1` (packed).
        #[derive(Clone, PartialEq, prost::Message)]
        struct Generated {
            #[prost(sfixed64, repeated, tag = "1")]
            values: Vec<i64>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Unpacked {
            #[prost(sfixed64, repeated, packed = "false", tag = "1")]
            values: Vec<i64>,
        }
        let values: Vec<i64> = (0..2000).map(|i| i * 7919 - 1_000_000_007).collect();
        let ours = IntList {
            values: values.clone(),
        };
        let theirs = Generated {
            values: values.clone(),
        };
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
        assert_eq!(ours.encoded_len(), theirs.encoded_len());
        assert_eq!(IntList::decode(&*theirs.encode_to_vec()).unwrap(), ours);
        let unpacked = Unpacked {
            values: values.clone(),
        };
        assert_eq!(IntList::decode(&*unpacked.encode_to_vec()).unwrap(), ours);
        // A value split across two buffer segments.
        let bytes = theirs.encode_to_vec();
        let (a, b) = bytes.split_at(13);
        let chained = prost::bytes::Buf::chain(a, b);
        assert_eq!(IntList::decode(chained).unwrap(), ours);
        assert!(IntList::decode(&[0x0a, 0x03, 1, 2, 3][..]).is_err());
        assert_eq!(IntList::decode(&[][..]).unwrap(), IntList::default());
        let f = FloatList {
            values: vec![1.5, -0.0, 1e300],
        };
        assert_eq!(FloatList::decode(&*f.encode_to_vec()).unwrap(), f);
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
