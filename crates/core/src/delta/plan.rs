//! Planning a delta transfer: which chunks and pieces the receiver lacks,
//! which byte ranges the sender therefore sends, and how the receiver
//! assembles the new file from its own bytes and those ranges.
//!
//! Both ends compute their half from the same inputs (the new manifest, the
//! two bitmaps, the fine pieces of the requested chunks), so the literal
//! bytes the sender streams in [`ranges_to_send`] order are exactly what the
//! receiver's [`Op::Literal`]s consume, in the same order. Nothing here reads
//! a file: a [`Location`] names a byte offset in a source the caller chose
//! (and may read: confinement is the caller's, by what it adds to
//! [`KnownChunks`]).

use std::collections::{HashMap, HashSet};

use super::{ChunkRef, ChunkingParams, Manifest, ManifestError, validate_fine};
use crate::ContentHash;

/// A file the receiver can read bytes from, numbered by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

/// Where known bytes are: a source and the offset of their first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub source: SourceId,
    pub offset: u64,
}

/// A byte range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

/// Why a plan cannot be made or followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "chunks cut with parameters v{got} cannot be compared with chunks cut with v{expected}"
    )]
    ParamsMismatch { got: u32, expected: u32 },
    #[error("{got} lists of pieces for {expected} requested chunks")]
    PieceListCount { got: usize, expected: usize },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Bitmap(#[from] BitmapError),
    #[error("chunk {index} is requested but the file has only {count} chunks")]
    NoSuchChunk { index: usize, count: usize },
    #[error("range {offset}..{end} is past the end of the {size}-byte file")]
    RangePastEnd { offset: u64, end: u64, size: u64 },
}

/// Chunks and pieces the receiver holds, by hash. Add only what the caller
/// may read: the plan copies from whatever is here.
#[derive(Debug, Clone)]
pub struct KnownChunks {
    params: u32,
    map: HashMap<ContentHash, Location>,
}

impl KnownChunks {
    pub fn new(params: &ChunkingParams) -> Self {
        Self {
            params: params.id(),
            map: HashMap::new(),
        }
    }

    /// Adds every chunk of `manifest`, the manifest of `source`. The first
    /// location added for a hash is kept.
    ///
    /// # Errors
    /// [`PlanError::ParamsMismatch`] for a manifest cut with other parameters.
    pub fn add_manifest(&mut self, source: SourceId, manifest: &Manifest) -> Result<(), PlanError> {
        if manifest.params != self.params {
            return Err(PlanError::ParamsMismatch {
                got: manifest.params,
                expected: self.params,
            });
        }
        for (offset, c) in manifest.offsets() {
            self.map
                .entry(c.hash)
                .or_insert(Location { source, offset });
        }
        Ok(())
    }

    /// Adds the fine pieces of the chunk at `offset` in `source` (from
    /// [`super::fine_chunks`] with this set's parameters).
    pub fn add_pieces(&mut self, source: SourceId, offset: u64, pieces: &[ChunkRef]) {
        let mut at = offset;
        for p in pieces {
            self.map
                .entry(p.hash)
                .or_insert(Location { source, offset: at });
            at += u64::from(p.len);
        }
    }

    /// Cuts each of `regions` of `source` into fine pieces (each region is
    /// one whole coarse chunk, see [`regions_to_refine`]) and adds them.
    /// `read` fills the buffer with the region's bytes; this is the only
    /// IO, and it is the caller's.
    ///
    /// # Errors
    /// The first error `read` returns.
    pub fn add_regions<E>(
        &mut self,
        source: SourceId,
        regions: &[Region],
        params: &ChunkingParams,
        mut read: impl FnMut(Region, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut buf = Vec::new();
        for r in regions {
            // A region is one coarse chunk: at most `max` (<= 16 MiB) bytes.
            buf.resize(usize::try_from(r.len).unwrap_or(usize::MAX), 0);
            read(*r, &mut buf)?;
            let pieces = super::fine_chunks(&buf, params);
            self.add_pieces(source, r.offset, &pieces);
        }
        Ok(())
    }

    pub fn locate(&self, hash: &ContentHash) -> Option<Location> {
        self.map.get(hash).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The chunks of `base` where the receiver looks for fine pieces of the
/// chunks of `new` it lacks, in file order: every base chunk that `new` does
/// not reuse (the edited ones, wherever an insertion or deletion moved
/// them), plus every base chunk overlapping the offsets of a run of chunks
/// that `new` has and `base` lacks (an edit inside a chunk repeated
/// elsewhere, such as a run of zeros, still finds its old neighbourhood).
/// Each is one whole coarse chunk, to be cut with [`super::fine_chunks`] on
/// its own (fine cutting restarts at every coarse chunk).
pub fn regions_to_refine(base: &Manifest, new: &Manifest) -> Vec<Region> {
    let in_new: HashSet<ContentHash> = new.chunks.iter().map(|c| c.hash).collect();
    let in_base: HashSet<ContentHash> = base.chunks.iter().map(|c| c.hash).collect();
    // Offset ranges of the new file's runs of chunks unknown to `base`.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (offset, c) in new.offsets().filter(|(_, c)| !in_base.contains(&c.hash)) {
        let end = offset + u64::from(c.len);
        match runs.last_mut() {
            Some(run) if run.1 == offset => run.1 = end,
            _ => runs.push((offset, end)),
        }
    }
    let mut run = runs.iter().peekable();
    let mut out = Vec::new();
    for (offset, c) in base.offsets() {
        let end = offset + u64::from(c.len);
        while run.next_if(|r| r.1 <= offset).is_some() {}
        let overlaps = run.peek().is_some_and(|r| r.0 < end);
        if overlaps || !in_new.contains(&c.hash) {
            out.push(Region {
                offset,
                len: u64::from(c.len),
            });
        }
    }
    out
}

/// Most bytes of missing chunks, and most bytes of base regions, a fine
/// round is run for (256 MiB): both ends read and cut that much, and the
/// receiver holds the pieces' list (about 36 bytes per 8 KiB) meanwhile.
/// Past it the new file is mostly new content, where pieces find little.
pub const MAX_REFINE_BYTES: u64 = 256 << 20;

/// Whether a fine round is worth its round trip and its reading: some
/// chunks are missing, the receiver has base regions to look in, and
/// neither exceeds [`MAX_REFINE_BYTES`]. `missing_bytes` is the sum of the
/// missing chunks' lengths ([`DeltaPlan::literal_bytes`] before
/// refinement).
pub fn worth_refining(missing_bytes: u64, regions: &[Region]) -> bool {
    let region_bytes: u64 = regions.iter().map(|r| r.len).sum();
    missing_bytes > 0
        && region_bytes > 0
        && missing_bytes <= MAX_REFINE_BYTES
        && region_bytes <= MAX_REFINE_BYTES
}

/// One step of assembling the new file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `len` bytes the receiver already has at `from`.
    Copy {
        from: Location,
        len: u32,
        hash: ContentHash,
    },
    /// The next `len` bytes the sender sends.
    Literal { len: u32, hash: ContentHash },
}

impl Op {
    pub fn len(&self) -> u32 {
        match self {
            Op::Copy { len, .. } | Op::Literal { len, .. } => *len,
        }
    }

    pub fn hash(&self) -> &ContentHash {
        match self {
            Op::Copy { hash, .. } | Op::Literal { hash, .. } => hash,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fine piece of a missing chunk, and where the receiver has it (if it does).
type Piece = (ChunkRef, Option<Location>);

/// The receiver's plan for one new file, made in two steps: [`DeltaPlan::new`]
/// finds the coarse chunks it has; [`DeltaPlan::refine`] then finds the fine
/// pieces it has inside the chunks it lacks. Either way [`DeltaPlan::ops`]
/// says how to build the file.
#[derive(Debug, Clone)]
pub struct DeltaPlan {
    params: ChunkingParams,
    chunks: Vec<ChunkRef>,
    found: Vec<Option<Location>>,
    missing: Vec<usize>,
    /// After `refine`: for each missing chunk, its pieces and where the
    /// receiver has each.
    pieces: Option<Vec<Vec<Piece>>>,
}

impl DeltaPlan {
    /// Looks up every chunk of the (validated) `new` manifest in `known`.
    ///
    /// # Errors
    /// [`PlanError::ParamsMismatch`] when `new` or `known` was cut with
    /// parameters other than `params`.
    pub fn new(
        new: &Manifest,
        known: &KnownChunks,
        params: &ChunkingParams,
    ) -> Result<Self, PlanError> {
        for got in [new.params, known.params] {
            if got != params.id() {
                return Err(PlanError::ParamsMismatch {
                    got,
                    expected: params.id(),
                });
            }
        }
        let found: Vec<Option<Location>> =
            new.chunks.iter().map(|c| known.locate(&c.hash)).collect();
        let missing = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        Ok(Self {
            params: *params,
            chunks: new.chunks.clone(),
            found,
            missing,
            pieces: None,
        })
    }

    /// Indexes of the chunks the receiver lacks, in order.
    pub fn missing_chunks(&self) -> &[usize] {
        &self.missing
    }

    /// [`Self::missing_chunks`] as one bit per chunk of the manifest (what the
    /// receiver sends back).
    pub fn missing_bitmap(&self) -> Bitmap {
        Bitmap::from_bools(self.found.iter().map(Option::is_none))
    }

    /// Takes the sender's fine pieces of each missing chunk (in
    /// [`Self::missing_chunks`] order), validates them, and looks each piece up
    /// in `known` (which should by now hold the pieces of the receiver's
    /// [`regions_to_refine`]).
    ///
    /// # Errors
    /// [`PlanError::PieceListCount`] or [`ManifestError`] for lists that do
    /// not describe the missing chunks.
    pub fn refine(
        &mut self,
        pieces: Vec<Vec<ChunkRef>>,
        known: &KnownChunks,
    ) -> Result<(), PlanError> {
        if known.params != self.params.id() {
            return Err(PlanError::ParamsMismatch {
                got: known.params,
                expected: self.params.id(),
            });
        }
        if pieces.len() != self.missing.len() {
            return Err(PlanError::PieceListCount {
                got: pieces.len(),
                expected: self.missing.len(),
            });
        }
        let mut refined = Vec::with_capacity(pieces.len());
        for (&chunk, list) in self.missing.iter().zip(pieces) {
            validate_fine(&list, chunk, self.chunks[chunk].len, &self.params)?;
            refined.push(
                list.into_iter()
                    .map(|p| (p, known.locate(&p.hash)))
                    .collect(),
            );
        }
        self.pieces = Some(refined);
        Ok(())
    }

    /// After [`Self::refine`]: one bit per piece of the missing chunks, all
    /// lists end to end, set for the pieces the receiver lacks.
    pub fn missing_pieces_bitmap(&self) -> Option<Bitmap> {
        let pieces = self.pieces.as_ref()?;
        Some(Bitmap::from_bools(
            pieces.iter().flatten().map(|(_, at)| at.is_none()),
        ))
    }

    /// How to build the new file, first byte to last.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut refined = self.pieces.iter().flatten();
        for (chunk, at) in self.chunks.iter().zip(&self.found) {
            match at {
                Some(from) => ops.push(Op::Copy {
                    from: *from,
                    len: chunk.len,
                    hash: chunk.hash,
                }),
                None => match refined.next() {
                    Some(pieces) => ops.extend(pieces.iter().map(|(p, at)| match at {
                        Some(from) => Op::Copy {
                            from: *from,
                            len: p.len,
                            hash: p.hash,
                        },
                        None => Op::Literal {
                            len: p.len,
                            hash: p.hash,
                        },
                    })),
                    None => ops.push(Op::Literal {
                        len: chunk.len,
                        hash: chunk.hash,
                    }),
                },
            }
        }
        ops
    }

    /// Bytes the sender will send.
    pub fn literal_bytes(&self) -> u64 {
        self.ops()
            .iter()
            .filter(|op| matches!(op, Op::Literal { .. }))
            .map(|op| u64::from(op.len()))
            .sum()
    }
}

/// A chunk rebuilt from its fine pieces that is not the chunk the manifest
/// names: the pieces (each of which matched its own hash) do not describe
/// the chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "chunk {index} (bytes {offset}..{end}) rebuilt from its pieces has hash {got}, \
     the manifest names {expected}: the pieces sent for it are not that chunk's"
)]
pub struct RebuiltChunkError {
    pub index: usize,
    pub offset: u64,
    pub end: u64,
    pub got: ContentHash,
    pub expected: ContentHash,
}

/// Checks each chunk a refined plan rebuilds from fine pieces against the
/// chunk's own hash in the manifest, as the bytes of the new file are
/// written in order ([`RebuiltChunks::feed`]).
///
/// Each piece is checked against its hash as it is copied or received,
/// and the whole file against the manifest's hash at the end; but the
/// pieces' list comes from the sender, and nothing else ties it to the
/// coarse chunk it claims to cut: a list that rebuilds other bytes would
/// install a file whose recorded manifest names a chunk it does not hold.
/// Only refined chunks are hashed again (a copied or a whole literal
/// chunk is checked against the chunk's hash itself).
#[derive(Debug, Clone)]
pub struct RebuiltChunks {
    /// (chunk index, offset, len, hash) of each refined chunk, in order.
    spans: Vec<(usize, u64, u32, ContentHash)>,
    next: usize,
    at: u64,
    hasher: blake3::Hasher,
}

impl RebuiltChunks {
    /// The refined chunks of `plan` (none before [`DeltaPlan::refine`]).
    pub fn new(plan: &DeltaPlan) -> Self {
        let mut spans = Vec::new();
        if plan.pieces.is_some() {
            let mut offset = 0u64;
            let starts: Vec<u64> = plan
                .chunks
                .iter()
                .map(|c| {
                    let o = offset;
                    offset += u64::from(c.len);
                    o
                })
                .collect();
            for &i in &plan.missing {
                let c = plan.chunks[i];
                spans.push((i, starts[i], c.len, c.hash));
            }
        }
        Self {
            spans,
            next: 0,
            at: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Whether any chunk is rebuilt from pieces.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Takes the next bytes of the new file, in order from its first byte.
    ///
    /// # Errors
    /// [`RebuiltChunkError`] for the first refined chunk these bytes
    /// complete whose hash is not the manifest's.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), RebuiltChunkError> {
        while !bytes.is_empty() {
            let Some(&(index, offset, len, expected)) = self.spans.get(self.next) else {
                self.at += bytes.len() as u64;
                return Ok(());
            };
            let end = offset + u64::from(len);
            if self.at < offset {
                let skip = usize::try_from(offset - self.at)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = &bytes[skip..];
                self.at += skip as u64;
                continue;
            }
            let take = usize::try_from(end - self.at)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.hasher.update(&bytes[..take]);
            bytes = &bytes[take..];
            self.at += take as u64;
            if self.at == end {
                let got: ContentHash = self.hasher.finalize().into();
                self.hasher.reset();
                self.next += 1;
                if got != expected {
                    return Err(RebuiltChunkError {
                        index,
                        offset,
                        end,
                        got,
                        expected,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The sender's reading of the receiver's missing-chunk bitmap.
///
/// # Errors
/// [`BitmapError`] when the bitmap does not have one bit per chunk.
pub fn chunks_requested(new: &Manifest, bitmap: &Bitmap) -> Result<Vec<usize>, PlanError> {
    if bitmap.len() != new.chunks.len() {
        return Err(BitmapError::WrongBits {
            got: bitmap.len(),
            expected: new.chunks.len(),
        }
        .into());
    }
    Ok(bitmap.ones().collect())
}

/// The byte ranges of the new file the sender sends, in order, adjacent
/// ranges merged. `pieces` is `None` when the receiver asked for whole
/// chunks, else the fine pieces of each requested chunk (as the sender cut
/// them) and the receiver's missing-pieces bitmap.
///
/// # Errors
/// [`PlanError`] when the requests do not fit the file.
pub fn ranges_to_send(
    new: &Manifest,
    requested: &[usize],
    pieces: Option<(&[Vec<ChunkRef>], &Bitmap)>,
) -> Result<Vec<Region>, PlanError> {
    let starts: Vec<u64> = new.offsets().map(|(o, _)| o).collect();
    let mut out: Vec<Region> = Vec::new();
    let mut push = |offset: u64, len: u64| match out.last_mut() {
        Some(r) if r.offset + r.len == offset => r.len += len,
        _ => out.push(Region { offset, len }),
    };
    let chunk = |i: usize| {
        new.chunks
            .get(i)
            .map(|c| (starts[i], c.len))
            .ok_or(PlanError::NoSuchChunk {
                index: i,
                count: new.chunks.len(),
            })
    };
    match pieces {
        None => {
            for &i in requested {
                let (offset, len) = chunk(i)?;
                push(offset, u64::from(len));
            }
        }
        Some((lists, bitmap)) => {
            if lists.len() != requested.len() {
                return Err(PlanError::PieceListCount {
                    got: lists.len(),
                    expected: requested.len(),
                });
            }
            let total: usize = lists.iter().map(Vec::len).sum();
            if bitmap.len() != total {
                return Err(BitmapError::WrongBits {
                    got: bitmap.len(),
                    expected: total,
                }
                .into());
            }
            let mut bit = 0;
            for (&i, list) in requested.iter().zip(lists) {
                let (mut offset, _) = chunk(i)?;
                for p in list {
                    if bitmap.get(bit) {
                        push(offset, u64::from(p.len));
                    }
                    offset += u64::from(p.len);
                    bit += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Checks a requested range against the size of the file it is read from.
///
/// # Errors
/// [`PlanError::RangePastEnd`] naming the range and the size.
pub fn check_range(range: Region, size: u64) -> Result<(), PlanError> {
    match range.offset.checked_add(range.len) {
        Some(end) if end <= size => Ok(()),
        end => Err(PlanError::RangePastEnd {
            offset: range.offset,
            end: end.unwrap_or(u64::MAX),
            size,
        }),
    }
}

/// Why assembling failed: the file is not what the manifest promised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("source {} has no bytes at {offset}..{end}", .from.0)]
    SourceTooShort {
        from: SourceId,
        offset: u64,
        end: u64,
    },
    #[error("the sender sent {got} bytes, the plan needs {expected}")]
    LiteralBytes { got: u64, expected: u64 },
    #[error("the bytes at {offset}..{end} of the new file do not match their hash {hash}")]
    PieceHash {
        offset: u64,
        end: u64,
        hash: ContentHash,
    },
    #[error(transparent)]
    Rebuilt(#[from] RebuiltChunkError),
    #[error("the assembled file has hash {got}, the manifest announced {expected}")]
    WholeHash {
        got: ContentHash,
        expected: ContentHash,
    },
}

/// Builds the new file in memory from `ops`, the receiver's `sources`
/// (indexed by [`SourceId`]) and the sender's `literals`, checking every
/// piece against its hash and the result against the manifest's. A server
/// streams the same steps into a staging file; this is the reference.
///
/// # Errors
/// [`AssembleError`] naming the first piece or total that does not match.
pub fn assemble(
    new: &Manifest,
    ops: &[Op],
    sources: &[&[u8]],
    literals: &[u8],
) -> Result<Vec<u8>, AssembleError> {
    let expected: u64 = ops
        .iter()
        .filter(|op| matches!(op, Op::Literal { .. }))
        .map(|op| u64::from(op.len()))
        .sum();
    if expected != literals.len() as u64 {
        return Err(AssembleError::LiteralBytes {
            got: literals.len() as u64,
            expected,
        });
    }
    // The announced size is the peer's word: reserve at most 64 MiB on it.
    let mut out = Vec::with_capacity(usize::try_from(new.size.min(64 << 20)).unwrap_or(0));
    let mut lit = 0usize;
    for op in ops {
        let len = op.len() as usize;
        let bytes = match op {
            Op::Copy { from, .. } => {
                let end = from.offset + len as u64;
                sources
                    .get(from.source.0 as usize)
                    .and_then(|s| {
                        s.get(usize::try_from(from.offset).ok()?..usize::try_from(end).ok()?)
                    })
                    .ok_or(AssembleError::SourceTooShort {
                        from: from.source,
                        offset: from.offset,
                        end,
                    })?
            }
            Op::Literal { .. } => {
                lit += len;
                &literals[lit - len..lit]
            }
        };
        if ContentHash::of(bytes) != *op.hash() {
            return Err(AssembleError::PieceHash {
                offset: out.len() as u64,
                end: (out.len() + len) as u64,
                hash: *op.hash(),
            });
        }
        out.extend_from_slice(bytes);
    }
    // Every chunk the manifest names is what was built there (a chunk
    // rebuilt from pieces is checked by nothing else).
    for (index, (offset, c)) in new.offsets().enumerate() {
        let end = offset + u64::from(c.len);
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(a, b)| out.get(a..b));
        let got = bytes.map(ContentHash::of);
        if got != Some(c.hash) {
            return Err(RebuiltChunkError {
                index,
                offset,
                end,
                got: got.unwrap_or_else(|| ContentHash::of(&[])),
                expected: c.hash,
            }
            .into());
        }
    }
    let got = ContentHash::of(&out);
    if got != new.hash || out.len() as u64 != new.size {
        return Err(AssembleError::WholeHash {
            got,
            expected: new.hash,
        });
    }
    Ok(out)
}

/// One bit per item, least significant bit first in each byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bytes: Vec<u8>,
    len: usize,
}

/// A bitmap from the network that does not fit what it describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("a bitmap of {got} bits where {expected} were expected")]
    WrongBits { got: usize, expected: usize },
    #[error("a bitmap of {bits} bits is {expected} bytes, got {got}")]
    WrongBytes {
        got: usize,
        expected: usize,
        bits: usize,
    },
    #[error("a bitmap of {bits} bits has bits set past its end")]
    StrayBits { bits: usize },
}

impl Bitmap {
    pub fn from_bools(bits: impl IntoIterator<Item = bool>) -> Self {
        let mut b = Self {
            bytes: Vec::new(),
            len: 0,
        };
        for bit in bits {
            if b.len.is_multiple_of(8) {
                b.bytes.push(0);
            }
            if bit {
                *b.bytes.last_mut().expect("a byte was pushed for this bit") |= 1 << (b.len % 8);
            }
            b.len += 1;
        }
        b
    }

    /// A bitmap of `bits` bits received as bytes.
    ///
    /// # Errors
    /// [`BitmapError`] for a wrong byte count or bits set past the end.
    pub fn from_bytes(bytes: Vec<u8>, bits: usize) -> Result<Self, BitmapError> {
        if bytes.len() != bits.div_ceil(8) {
            return Err(BitmapError::WrongBytes {
                got: bytes.len(),
                expected: bits.div_ceil(8),
                bits,
            });
        }
        if !bits.is_multiple_of(8) && bytes.last().is_some_and(|&b| b >> (bits % 8) != 0) {
            return Err(BitmapError::StrayBits { bits });
        }
        Ok(Self { bytes, len: bits })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i` (false past the end).
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bytes[i / 8] & (1 << (i % 8)) != 0
    }

    /// Indexes of the set bits, in order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}
