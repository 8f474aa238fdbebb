//! Byte sizes as people write them on a command line (`1GiB`, `512MiB`,
//! `64k`, `1000000`): [`parse_byte_size`], and [`ByteSize`] to show one the
//! same way back.
//!
//! Units are binary (K, M, G, T = 1024^n), with or without `i` and `B`, in
//! any case: memory budgets are counted in pages, not in powers of ten.

use std::fmt;

/// Why a size is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a byte size (examples: 1GiB, 512MiB, 64K, 1048576)")]
pub struct SizeError(pub String);

/// Parses `N[K|M|G|T][i][B]` (binary units, any case, spaces allowed before
/// the unit).
///
/// # Errors
/// [`SizeError`] naming the text, for anything else or a size past `u64`.
pub fn parse_byte_size(text: &str) -> Result<u64, SizeError> {
    let bad = || SizeError(text.to_owned());
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// A byte count shown in the largest binary unit that divides it
/// (`1 GiB`, `1536 KiB`, `100 bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            let u = 1u64 << shift;
            if self.0 >= u && self.0.is_multiple_of(u) {
                return write!(f, "{} {unit}", self.0 / u);
            }
        }
        if self.0 >= 1 << 20 {
            return write!(f, "{:.1} MiB", self.0 as f64 / f64::from(1 << 20));
        }
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units_in_any_spelling() {
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("1g"), Ok(1 << 30));
        assert_eq!(parse_byte_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size("64K"), Ok(64 << 10));
        assert_eq!(parse_byte_size("64kb"), Ok(64 << 10));
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        for bad in ["", "GiB", "1.5GiB", "-1", "1 PiB", "1x", "99999999999T"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shows_the_largest_whole_unit() {
        assert_eq!(ByteSize(1 << 30).to_string(), "1 GiB");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536 KiB");
        assert_eq!(ByteSize(100).to_string(), "100 bytes");
        assert_eq!(ByteSize((1 << 20) + 1).to_string(), "1.0 MiB");
    }
}
