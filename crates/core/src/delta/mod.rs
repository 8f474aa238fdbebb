//! Delta transfer, the pure part: content-defined chunks, manifests, and the
//! plans both ends of a transfer compute from them.
//!
//! A file is cut twice with FastCDC (v2020, normalization level 1, gear seed
//! 0), both times with the sizes fixed by one [`ChunkingParams`]:
//!
//! - **coarse chunks** (about 1 MiB) cover the whole file. A file's
//!   [`Manifest`] is its size, its whole-file BLAKE3 and the list of its coarse
//!   chunks as ([`ChunkRef`]: length, BLAKE3). This is what is exchanged first,
//!   stored in the index and used to find known content in any file;
//! - **fine pieces** (about 8 KiB) are cut inside one coarse chunk only, the
//!   cutting restarting at the chunk's first byte, so a chunk's pieces are a
//!   function of that chunk's bytes alone ([`fine_chunks`]). They are computed
//!   on demand, only for the few coarse chunks that the receiver lacks, and
//!   compared with the pieces of the base chunks around the edit
//!   ([`regions_to_refine`]).
//!
//! Invariants (checked by the property tests in `tests/delta.rs`):
//! - chunking is deterministic, and feeding the bytes in any pieces
//!   ([`ManifestBuilder`], [`manifest_of_reader`]) gives the same manifest as
//!   [`manifest_of_bytes`];
//! - the chunks of a manifest cover the file exactly, in order; every chunk but
//!   the last is at least `min` and every chunk at most `max` bytes;
//! - a manifest carries the id of its parameters; manifests (and known-chunk
//!   sets) made with other parameters are refused, never mixed;
//! - assembling the [`DeltaPlan`]'s [`Op`]s from the receiver's own bytes plus
//!   the bytes the sender sends for [`ranges_to_send`] reproduces the new file,
//!   and [`assemble`] checks every piece, every chunk (one rebuilt from
//!   pieces too: [`RebuiltChunks`]) and the whole-file hash.
//!
//! Everything here is IO-free except [`manifest_of_reader`], which reads a
//! [`std::io::Read`] through a few bounded blocks. It and [`hash_checking`]
//! spread their hashing over threads of their own (scoped: none outlives
//! the call), as the CPU of a delta transfer is these hash passes.
//! docs/DESIGN.md ("Delta transfer (core)") describes the protocol built on it.

mod chunker;
mod copy;
mod manifest;
mod plan;

pub use chunker::{
    ManifestBuilder, fine_chunks, hash_checking, manifest_of_bytes, manifest_of_reader,
};
pub use copy::{CopyBlock, CopyError, copy_blocks, copy_pipelined};
pub use manifest::{
    ChunkRef, MAX_MANIFEST_CHUNKS, Manifest, ManifestError, ManifestLimits, validate_fine,
};
pub use plan::{
    AssembleError, Bitmap, BitmapError, DeltaPlan, KnownChunks, Location, MAX_REFINE_BYTES, Op,
    PlanError, RebuiltChunkError, RebuiltChunks, Region, SourceId, assemble, check_range,
    chunks_requested, ranges_to_send, regions_to_refine, worth_refining,
};

use std::fmt;

/// The sizes of one FastCDC level, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Level {
    /// No chunk but a file's (or a coarse chunk's) last is shorter.
    pub min: u32,
    /// The size the cut-point masks aim at.
    pub avg: u32,
    /// No chunk is longer: a cut is forced here.
    pub max: u32,
}

/// The fixed parameters of both chunking levels, named by an id that every
/// manifest carries. Two manifests can be compared only when their ids are
/// equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkingParams {
    id: u32,
    coarse: Level,
    fine: Level,
}

/// Parameters version 1, chosen by measurement (bench/RESULTS.md, "Delta
/// transfer parameters"): coarse 256 KiB / 1 MiB / 4 MiB, fine
/// 2 KiB / 8 KiB / 64 KiB.
pub const PARAMS_V1: ChunkingParams = ChunkingParams {
    id: 1,
    coarse: Level {
        min: 256 * 1024,
        avg: 1024 * 1024,
        max: 4 * 1024 * 1024,
    },
    fine: Level {
        min: 2 * 1024,
        avg: 8 * 1024,
        max: 64 * 1024,
    },
};

/// Parameters this build knows, by id.
pub fn known_params(id: u32) -> Option<&'static ChunkingParams> {
    [&PARAMS_V1].into_iter().find(|p| p.id == id)
}

/// Sizes that FastCDC v2020 cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error(
        "{level} chunk sizes must be even and within FastCDC's bounds \
         (min 64..=1MiB, avg 256..=4MiB, max 1KiB..=16MiB, min <= avg <= max); got {sizes}"
    )]
    OutOfBounds { level: &'static str, sizes: Level },
    #[error("fine pieces (max {fine_max}) must be smaller than coarse chunks (min {coarse_min})")]
    FineNotFiner { fine_max: u32, coarse_min: u32 },
}

impl ChunkingParams {
    /// Parameters other than the built-in ones, for measuring candidates.
    /// Give each set its own `id`: manifests compare by id alone.
    ///
    /// # Errors
    /// [`ParamsError`] when a level is outside what FastCDC v2020 accepts.
    pub fn new(id: u32, coarse: Level, fine: Level) -> Result<Self, ParamsError> {
        for (name, l) in [("coarse", coarse), ("fine", fine)] {
            use fastcdc::v2020::{
                AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
            };
            let (min, avg, max) = (l.min as usize, l.avg as usize, l.max as usize);
            let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
                && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
                && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
                && min <= avg
                && avg <= max
                && [min, avg, max].iter().all(|v| v % 2 == 0);
            if !ok {
                return Err(ParamsError::OutOfBounds {
                    level: name,
                    sizes: l,
                });
            }
        }
        if fine.max >= coarse.min {
            return Err(ParamsError::FineNotFiner {
                fine_max: fine.max,
                coarse_min: coarse.min,
            });
        }
        Ok(Self { id, coarse, fine })
    }

    /// The id manifests carry.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sizes of the chunks a manifest lists.
    pub const fn coarse(&self) -> Level {
        self.coarse
    }

    /// Sizes of the pieces inside one coarse chunk.
    pub fn fine(&self) -> Level {
        self.fine
    }

    /// Most fine pieces one coarse chunk can have.
    pub fn max_fine_per_chunk(&self) -> usize {
        (self.coarse.max as usize).div_ceil(self.fine.min as usize)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.min, self.avg, self.max)
    }
}

impl fmt::Display for ChunkingParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} (coarse {}, fine {})",
            self.id, self.coarse, self.fine
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_params_are_valid_and_known_by_id() {
        let p = PARAMS_V1;
        assert_eq!(ChunkingParams::new(p.id, p.coarse, p.fine), Ok(p));
        assert_eq!(known_params(1), Some(&PARAMS_V1));
        assert_eq!(known_params(2), None);
    }

    #[test]
    fn the_default_chunk_limit_admits_the_largest_file_cut_at_the_minimum() {
        assert_eq!(MAX_MANIFEST_CHUNKS, 4_194_304);
    }

    #[test]
    fn sizes_fastcdc_cannot_use_are_refused_naming_the_level() {
        let fine = PARAMS_V1.fine;
        let odd = Level {
            min: 1001,
            avg: 4096,
            max: 16384,
        };
        let e = ChunkingParams::new(9, odd, fine).unwrap_err();
        assert!(e.to_string().contains("coarse"), "{e}");
        let e = ChunkingParams::new(9, PARAMS_V1.coarse, PARAMS_V1.coarse).unwrap_err();
        assert!(matches!(e, ParamsError::FineNotFiner { .. }), "{e}");
    }
}
