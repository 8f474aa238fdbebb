//! A certificate's SHA-256 fingerprint, as `openssl x509 -fingerprint
//! -sha256` shows it: 32 bytes in upper-case hex separated by colons.
//!
//! Invariant: a [`Fingerprint`] is always exactly 32 bytes. Parsing
//! accepts the colon form, plain hex, either case, and an optional
//! `sha256:`/`SHA256=` prefix (what people paste from other tools), and
//! nothing else: a truncated or mistyped fingerprint is refused rather
//! than silently pinning nothing.

use std::fmt;
use std::str::FromStr;

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why a string is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed, as `serve --print-fingerprint` prints)"
)]
pub struct FingerprintError(String);

impl Fingerprint {
    /// The fingerprint whose digest is `digest` (computed by the caller:
    /// this crate does no hashing of certificates).
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FingerprintError(crate::echo(s.trim()).to_string());
        let t = s.trim();
        let t = ["sha256:", "sha256=", "sha256 fingerprint="]
            .iter()
            .find_map(|p| {
                t.get(..p.len())
                    .filter(|h| h.eq_ignore_ascii_case(p))
                    .map(|_| &t[p.len()..])
            })
            .unwrap_or(t);
        let digits: Vec<u8> = t.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            *o = u8::try_from(hi * 16 + lo).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_openssl_does_and_parses_back() {
        let f = Fingerprint::from_digest(std::array::from_fn(|i| i as u8 * 7));
        let shown = f.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert!(shown.starts_with("00:07:0E:15"));
        assert_eq!(shown.parse::<Fingerprint>(), Ok(f));
        assert_eq!(shown.to_lowercase().replace(':', "").parse(), Ok(f));
        assert_eq!(format!("SHA256 Fingerprint={shown}").parse(), Ok(f));
        assert_eq!(format!("sha256:{shown}").parse(), Ok(f));
    }

    #[test]
    fn refuses_what_is_not_32_bytes_of_hex() {
        for s in [
            "",
            "00:11",
            &"G".repeat(64),
            &"0".repeat(63),
            &"0".repeat(66),
        ] {
            assert!(s.parse::<Fingerprint>().is_err(), "{s}");
        }
    }
}
