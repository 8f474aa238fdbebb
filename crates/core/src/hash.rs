//! Content hashes: BLAKE3, 32 bytes, shown as lowercase hex.

use std::fmt;

/// BLAKE3 hash of a file's contents.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

/// A hash that is not 32 bytes (or 64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a content hash is 32 bytes (BLAKE3), got {0} bytes")]
pub struct HashLengthError(pub usize);

impl ContentHash {
    /// Hash of a byte slice held in memory.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The hash from its 32 raw bytes.
    ///
    /// # Errors
    /// [`HashLengthError`] when `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, HashLengthError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| HashLengthError(bytes.len()))
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_hash_is_blake3_of_nothing() {
        assert_eq!(
            ContentHash::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn wrong_length_is_refused() {
        assert_eq!(ContentHash::from_slice(&[0; 31]), Err(HashLengthError(31)));
    }
}
