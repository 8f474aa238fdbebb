//! Manifests and their validation when they come from the other side.
//!
//! A manifest from the network is untrusted until [`Manifest::validate`]
//! passes: it names known parameters, its chunk count is within a stated
//! limit, every chunk size is within the parameters' bounds, and the sizes
//! add up to the announced file size. A chunk's own bytes are checked against
//! its hash when they arrive ([`super::assemble`]).

use super::ChunkingParams;
use crate::ContentHash;

/// One chunk: its length and the BLAKE3 of its bytes (its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub len: u32,
    pub hash: ContentHash,
}

/// A file as a list of coarse chunks, plus its size and whole-file BLAKE3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Id of the [`ChunkingParams`] the chunks were cut with.
    pub params: u32,
    pub size: u64,
    pub hash: ContentHash,
    pub chunks: Vec<ChunkRef>,
}

/// Most chunks a manifest may list by default (4,194,304): the server's
/// default largest file (1 TiB) cut entirely into minimum-size chunks of
/// [`super::PARAMS_V1`] (256 KiB).
pub const MAX_MANIFEST_CHUNKS: usize =
    (crate::limits::DEFAULT_MAX_FILE_SIZE / super::PARAMS_V1.coarse.min as u64) as usize;

/// Bounds on what a peer may make this side hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Most chunks in one manifest.
    pub max_chunks: usize,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_chunks: MAX_MANIFEST_CHUNKS,
        }
    }
}

/// Why a manifest (or a chunk's list of fine pieces) from a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the manifest was cut with chunking parameters v{got}, this side uses v{expected}: \
         chunk the file again with v{expected}"
    )]
    UnknownParams { got: u32, expected: u32 },
    #[error("the manifest lists {count} chunks, more than the limit of {limit}")]
    TooManyChunks { count: usize, limit: usize },
    #[error(
        "chunk {index} is {len} bytes; chunks are {min} to {max} bytes (only the last may be shorter)"
    )]
    ChunkSize {
        index: usize,
        len: u32,
        min: u32,
        max: u32,
    },
    #[error(
        "the manifest's chunks add up to {sum} bytes but the file is announced as {size} bytes"
    )]
    SizeMismatch { sum: u64, size: u64 },
    #[error("chunk {chunk} is split into {count} pieces, more than the limit of {limit}")]
    TooManyPieces {
        chunk: usize,
        count: usize,
        limit: usize,
    },
    #[error(
        "piece {index} of chunk {chunk} is {len} bytes; pieces are {min} to {max} bytes \
         (only the last may be shorter)"
    )]
    PieceSize {
        chunk: usize,
        index: usize,
        len: u32,
        min: u32,
        max: u32,
    },
    #[error("the pieces of chunk {chunk} add up to {sum} bytes but the chunk is {len} bytes")]
    PiecesMismatch { chunk: usize, sum: u64, len: u32 },
}

impl Manifest {
    /// Checks a manifest received from a peer before anything is planned
    /// or allocated from it.
    ///
    /// # Errors
    /// The first problem found, as a [`ManifestError`] naming it.
    pub fn validate(
        &self,
        params: &ChunkingParams,
        limits: &ManifestLimits,
    ) -> Result<(), ManifestError> {
        if self.params != params.id() {
            return Err(ManifestError::UnknownParams {
                got: self.params,
                expected: params.id(),
            });
        }
        if self.chunks.len() > limits.max_chunks {
            return Err(ManifestError::TooManyChunks {
                count: self.chunks.len(),
                limit: limits.max_chunks,
            });
        }
        let level = params.coarse();
        let last = self.chunks.len().saturating_sub(1);
        let mut sum = 0u64;
        for (index, c) in self.chunks.iter().enumerate() {
            let min = if index == last { 1 } else { level.min };
            if c.len < min || c.len > level.max {
                return Err(ManifestError::ChunkSize {
                    index,
                    len: c.len,
                    min: level.min,
                    max: level.max,
                });
            }
            sum += u64::from(c.len);
        }
        if sum != self.size {
            return Err(ManifestError::SizeMismatch {
                sum,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Each chunk with the offset of its first byte in the file.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, ChunkRef)> + '_ {
        self.chunks.iter().scan(0u64, |pos, c| {
            let at = *pos;
            *pos += u64::from(c.len);
            Some((at, *c))
        })
    }
}

/// Checks the fine pieces a peer announced for coarse chunk number `chunk`
/// (`len` bytes long).
///
/// # Errors
/// The first problem found, as a [`ManifestError`] naming the chunk.
pub fn validate_fine(
    pieces: &[ChunkRef],
    chunk: usize,
    len: u32,
    params: &ChunkingParams,
) -> Result<(), ManifestError> {
    let limit = params.max_fine_per_chunk();
    if pieces.len() > limit {
        return Err(ManifestError::TooManyPieces {
            chunk,
            count: pieces.len(),
            limit,
        });
    }
    let level = params.fine();
    let last = pieces.len().saturating_sub(1);
    let mut sum = 0u64;
    for (index, p) in pieces.iter().enumerate() {
        let min = if index == last { 1 } else { level.min };
        if p.len < min || p.len > level.max {
            return Err(ManifestError::PieceSize {
                chunk,
                index,
                len: p.len,
                min: level.min,
                max: level.max,
            });
        }
        sum += u64::from(p.len);
    }
    if sum != u64::from(len) {
        return Err(ManifestError::PiecesMismatch { chunk, sum, len });
    }
    Ok(())
}
