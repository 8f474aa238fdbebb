//! Manifests on the wire: a [`v1::ManifestHeader`] (with the chunk count)
//! followed by [`v1::ManifestPage`]s of at most [`PAGE_CHUNKS`] chunks.
//!
//! Invariant: a receiver learns the chunk count from the header and refuses
//! a count over its limit before it receives or allocates any chunk
//! ([`ManifestReceiver::new`]); a page that would take the manifest past
//! the announced count is refused. The assembled manifest is then checked
//! with [`Manifest::validate`] by the caller.

use distribusync_core::ContentHash;
use distribusync_core::delta::{ChunkRef, Manifest, ManifestLimits};

use crate::v1;

/// Most chunks in one page (2.3 MiB encoded, within the message limit).
pub const PAGE_CHUNKS: usize = 65_536;

/// A manifest from the wire that cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestWireError {
    #[error("the manifest lists {count} chunks, more than the limit of {limit}")]
    TooManyChunks { count: u64, limit: usize },
    #[error("the manifest's whole-file hash is {0} bytes, not 32")]
    Hash(usize),
    #[error(
        "a manifest page has {hashes} bytes of hashes for {lens} chunk lengths (32 bytes per chunk)"
    )]
    Page { hashes: usize, lens: usize },
    #[error("the manifest's pages list more chunks than the {count} its header announced")]
    PastCount { count: u64 },
    #[error("the manifest ended after {got} of the {count} chunks its header announced")]
    Short { got: usize, count: u64 },
    #[error("a list of {count} fine pieces for one chunk, more than the limit of {limit}")]
    TooManyPieces { count: usize, limit: usize },
}

/// The header of `m`.
pub fn manifest_header(m: &Manifest) -> v1::ManifestHeader {
    v1::ManifestHeader {
        params: m.params,
        size: m.size,
        hash: m.hash.0.to_vec(),
        chunk_count: m.chunks.len() as u64,
    }
}

/// The chunks of `m` as pages, in order.
pub fn manifest_pages(m: &Manifest) -> impl Iterator<Item = v1::ManifestPage> + '_ {
    m.chunks.chunks(PAGE_CHUNKS).map(|page| v1::ManifestPage {
        hashes: page.iter().flat_map(|c| c.hash.0).collect(),
        lens: page.iter().map(|c| c.len).collect(),
    })
}

/// The fine pieces of one chunk as one page (at most
/// `ChunkingParams::max_fine_per_chunk` pieces: 2,048 for v1, 72 KiB).
pub fn pieces_page(pieces: &[ChunkRef]) -> v1::ManifestPage {
    v1::ManifestPage {
        hashes: pieces.iter().flat_map(|c| c.hash.0).collect(),
        lens: pieces.iter().map(|c| c.len).collect(),
    }
}

/// The fine pieces of one chunk from a page, refused when it lists more
/// than `limit` (checked before anything is built). Sizes are checked by
/// the caller (`validate_fine`, through `DeltaPlan::refine`).
///
/// # Errors
/// [`ManifestWireError::TooManyPieces`] or a malformed page.
pub fn pieces_of_page(
    page: v1::ManifestPage,
    limit: usize,
) -> Result<Vec<ChunkRef>, ManifestWireError> {
    if page.lens.len() > limit {
        return Err(ManifestWireError::TooManyPieces {
            count: page.lens.len(),
            limit,
        });
    }
    if page.hashes.len() != 32 * page.lens.len() {
        return Err(ManifestWireError::Page {
            hashes: page.hashes.len(),
            lens: page.lens.len(),
        });
    }
    page.hashes
        .chunks_exact(32)
        .zip(&page.lens)
        .map(|(hash, &len)| {
            let hash =
                ContentHash::from_slice(hash).map_err(|_| ManifestWireError::Hash(hash.len()))?;
            Ok(ChunkRef { len, hash })
        })
        .collect()
}

/// A manifest being received: header first, then pages until complete.
#[derive(Debug)]
pub struct ManifestReceiver {
    manifest: Manifest,
    count: u64,
}

impl ManifestReceiver {
    /// Starts from a header.
    ///
    /// # Errors
    /// [`ManifestWireError::TooManyChunks`] over `limits.max_chunks`, or a
    /// malformed hash.
    pub fn new(h: &v1::ManifestHeader, limits: &ManifestLimits) -> Result<Self, ManifestWireError> {
        if h.chunk_count > limits.max_chunks as u64 {
            return Err(ManifestWireError::TooManyChunks {
                count: h.chunk_count,
                limit: limits.max_chunks,
            });
        }
        let hash =
            ContentHash::from_slice(&h.hash).map_err(|_| ManifestWireError::Hash(h.hash.len()))?;
        // The count is within the limit, but still the peer's word: reserve
        // at most one page ahead.
        let reserve = usize::try_from(h.chunk_count).unwrap_or(0).min(PAGE_CHUNKS);
        Ok(Self {
            manifest: Manifest {
                params: h.params,
                size: h.size,
                hash,
                chunks: Vec::with_capacity(reserve),
            },
            count: h.chunk_count,
        })
    }

    /// True once every announced chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.manifest.chunks.len() as u64 == self.count
    }

    /// Adds a page.
    ///
    /// # Errors
    /// A malformed page, or one past the announced count.
    pub fn add(&mut self, page: v1::ManifestPage) -> Result<(), ManifestWireError> {
        if page.hashes.len() != 32 * page.lens.len() {
            return Err(ManifestWireError::Page {
                hashes: page.hashes.len(),
                lens: page.lens.len(),
            });
        }
        if (self.manifest.chunks.len() + page.lens.len()) as u64 > self.count {
            return Err(ManifestWireError::PastCount { count: self.count });
        }
        for (hash, &len) in page.hashes.chunks_exact(32).zip(&page.lens) {
            let hash =
                ContentHash::from_slice(hash).map_err(|_| ManifestWireError::Hash(hash.len()))?;
            self.manifest.chunks.push(ChunkRef { len, hash });
        }
        Ok(())
    }

    /// The manifest, once complete.
    ///
    /// # Errors
    /// [`ManifestWireError::Short`] when chunks are still missing.
    pub fn finish(self) -> Result<Manifest, ManifestWireError> {
        if !self.is_complete() {
            return Err(ManifestWireError::Short {
                got: self.manifest.chunks.len(),
                count: self.count,
            });
        }
        Ok(self.manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distribusync_core::delta::{PARAMS_V1, manifest_of_bytes};

    #[test]
    fn a_manifest_survives_the_wire_and_an_oversized_count_is_refused_first() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let m = manifest_of_bytes(&data, &PARAMS_V1);
        let mut r =
            ManifestReceiver::new(&manifest_header(&m), &ManifestLimits::default()).unwrap();
        for p in manifest_pages(&m) {
            r.add(p).unwrap();
        }
        assert_eq!(r.finish().unwrap(), m);
        let mut h = manifest_header(&m);
        h.chunk_count = 10_000_000;
        let e = ManifestReceiver::new(&h, &ManifestLimits::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("10000000 chunks, more than the limit"),
            "{e}"
        );
    }
}
