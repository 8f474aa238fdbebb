//! FastCDC v2020 over a slice, a push-fed builder and a `Read`.
//!
//! All three call [`Cutter::cut`] on a window that holds at least `max` bytes
//! unless the input ends inside it, so they find the same cut points: the
//! v2020 cut of a window depends only on its first `max` bytes and on whether
//! fewer than `max` remain.

use std::io::{self, Read};
use std::sync::{Arc, mpsc};

use fastcdc::v2020::{Normalization, select_masks};

use super::{ChunkRef, ChunkingParams, Level, Manifest};
use crate::ContentHash;

/// One level's sizes and masks, ready to cut.
#[derive(Debug, Clone, Copy)]
struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    fn new(level: Level) -> Self {
        let (mask_s, mask_l) = select_masks(level.avg as usize, Normalization::Level1);
        Self {
            min: level.min as usize,
            avg: level.avg as usize,
            max: level.max as usize,
            mask_s,
            mask_l,
        }
    }

    /// Length of the chunk starting at `window[0]`. `window` holds at least
    /// `max` bytes, or all that is left of the input.
    fn cut(&self, window: &[u8]) -> usize {
        let (_, len) = fastcdc::v2020::cut(
            window,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }

    /// Cuts all of `data` (the whole input of this level).
    fn cut_all(&self, data: &[u8], mut each: impl FnMut(&[u8])) {
        let mut pos = 0;
        while pos < data.len() {
            let len = self.cut(&data[pos..]);
            each(&data[pos..pos + len]);
            pos += len;
        }
    }
}

fn chunk_ref(bytes: &[u8]) -> ChunkRef {
    ChunkRef {
        // A chunk is at most `max` <= 16 MiB bytes long (ChunkingParams::new).
        len: u32::try_from(bytes.len()).expect("chunks are at most 16 MiB"),
        hash: ContentHash::of(bytes),
    }
}

/// The manifest of a file held in memory.
pub fn manifest_of_bytes(data: &[u8], params: &ChunkingParams) -> Manifest {
    let mut chunks = Vec::new();
    Cutter::new(params.coarse).cut_all(data, |c| chunks.push(chunk_ref(c)));
    Manifest {
        params: params.id,
        size: data.len() as u64,
        hash: ContentHash::of(data),
        chunks,
    }
}

/// The fine pieces of one coarse chunk (`chunk` is all of its bytes).
pub fn fine_chunks(chunk: &[u8], params: &ChunkingParams) -> Vec<ChunkRef> {
    let mut pieces = Vec::new();
    Cutter::new(params.fine).cut_all(chunk, |c| pieces.push(chunk_ref(c)));
    pieces
}

/// Builds a manifest from bytes fed in pieces of any size, as they arrive
/// (an upload streaming in, a file being read). Holds at most about two
/// coarse chunks plus the piece being fed.
#[derive(Debug)]
pub struct ManifestBuilder {
    params: ChunkingParams,
    cutter: Cutter,
    /// Bytes not yet cut are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    size: u64,
    whole: blake3::Hasher,
    chunks: Vec<ChunkRef>,
}

impl ManifestBuilder {
    pub fn new(params: &ChunkingParams) -> Self {
        let cutter = Cutter::new(params.coarse);
        Self {
            params: *params,
            cutter,
            // Grows with the input up to two coarse maxima: a small file
            // never holds more than itself.
            buf: Vec::new(),
            start: 0,
            size: 0,
            whole: blake3::Hasher::new(),
            chunks: Vec::new(),
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.size += data.len() as u64;
        let cap = 2 * self.cutter.max;
        while !data.is_empty() {
            if self.start > 0 && self.buf.len() == cap {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let take = (cap - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            // Cut only while a whole window is buffered: what follows could
            // still move a cut point inside a shorter one.
            while self.buf.len() - self.start >= self.cutter.max {
                let len = self.cutter.cut(&self.buf[self.start..]);
                self.chunks
                    .push(chunk_ref(&self.buf[self.start..self.start + len]));
                self.start += len;
            }
        }
    }

    /// The whole-file hash state of the bytes fed so far.
    pub fn hasher(&self) -> blake3::Hasher {
        self.whole.clone()
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chunks cut so far: final, whatever is fed next (a cut is made
    /// only once a whole window follows it). A probe of a file's first
    /// bytes sends these.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// Cuts what is left (the end of the file) and returns the manifest.
    pub fn finish(mut self) -> Manifest {
        let rest = &self.buf[self.start..];
        self.cutter
            .cut_all(rest, |c| self.chunks.push(chunk_ref(c)));
        Manifest {
            params: self.params.id,
            size: self.size,
            hash: self.whole.finalize().into(),
            chunks: self.chunks,
        }
    }
}

/// New bytes read per block by [`manifest_of_reader`].
const READ_BLOCK: usize = 4 << 20;

/// The manifest of everything `reader` yields; the file is never held in
/// memory whole (a few blocks of 4 MiB plus one coarse maximum each, about
/// 32 MiB at most).
///
/// Three threads share the work, so that a 1 GiB file is chunked in about
/// the time of one BLAKE3 pass on two cores rather than of three passes on
/// one (bench/RESULTS.md, "Delta transfer time"): this one reads and cuts,
/// one hashes the chunks, one hashes the whole file. Blocks go to both
/// hashers through channels of one block each and come back for reuse.
///
/// # Errors
/// The first read error other than [`io::ErrorKind::Interrupted`].
pub fn manifest_of_reader<R: Read>(reader: R, params: &ChunkingParams) -> io::Result<Manifest> {
    manifest_in_blocks(reader, params, READ_BLOCK)
}

/// A block read: `data[..fresh]` is the end of the previous block not yet
/// cut (the carry), `data[fresh..end]` the bytes read into this one.
struct Block {
    data: Arc<Vec<u8>>,
    fresh: usize,
    end: usize,
}

fn manifest_in_blocks<R: Read>(
    mut reader: R,
    params: &ChunkingParams,
    block: usize,
) -> io::Result<Manifest> {
    let cutter = Cutter::new(params.coarse);
    // A block can always hold the carry (< max) and `block` new bytes.
    let capacity = block + cutter.max;
    std::thread::scope(|s| {
        let (whole_tx, whole_rx) = mpsc::sync_channel::<Block>(1);
        let (chunks_tx, chunks_rx) = mpsc::sync_channel::<(Arc<Vec<u8>>, Vec<(usize, usize)>)>(1);
        let (back_tx, back_rx) = mpsc::channel::<Arc<Vec<u8>>>();
        let back = back_tx.clone();
        let whole = s.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            for b in whole_rx {
                hasher.update(&b.data[b.fresh..b.end]);
                let _ = back_tx.send(b.data);
            }
            hasher
        });
        let chunks = s.spawn(move || {
            let mut out = Vec::new();
            for (data, cuts) in chunks_rx {
                out.extend(
                    cuts.into_iter()
                        .map(|(at, len)| chunk_ref(&data[at..at + len])),
                );
                let _ = back.send(data);
            }
            out
        });
        let read = (|| -> io::Result<u64> {
            let mut spare: Vec<Vec<u8>> = Vec::new();
            let mut carry: Option<(Arc<Vec<u8>>, usize, usize)> = None;
            let mut size = 0u64;
            loop {
                // Blocks both hashers are done with come back here.
                while let Ok(b) = back_rx.try_recv() {
                    if let Ok(v) = Arc::try_unwrap(b) {
                        spare.push(v);
                    }
                }
                let mut data = spare.pop().unwrap_or_else(|| vec![0u8; capacity]);
                let fresh = match carry.take() {
                    Some((prev, from, to)) => {
                        data[..to - from].copy_from_slice(&prev[from..to]);
                        // Reused now if both hashers are done with it, else
                        // when the last one hands it back.
                        if let Ok(v) = Arc::try_unwrap(prev) {
                            spare.push(v);
                        }
                        to - from
                    }
                    None => 0,
                };
                let mut end = fresh;
                let mut eof = false;
                while end < fresh + block {
                    match reader.read(&mut data[end..fresh + block]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                size += (end - fresh) as u64;
                // Cut only while a whole window is held (or the input has
                // ended): what follows could still move a cut point.
                let mut cuts = Vec::new();
                let mut at = 0;
                while at < end && (eof || end - at >= cutter.max) {
                    let len = cutter.cut(&data[at..end]);
                    cuts.push((at, len));
                    at += len;
                }
                let data = Arc::new(data);
                let sent = whole_tx
                    .send(Block {
                        data: data.clone(),
                        fresh,
                        end,
                    })
                    .is_ok()
                    && chunks_tx.send((data.clone(), cuts)).is_ok();
                if !sent {
                    return Err(io::Error::other("a chunk hashing thread stopped"));
                }
                if eof {
                    return Ok(size);
                }
                carry = Some((data, at, end));
            }
        })();
        drop((whole_tx, chunks_tx));
        let hasher = whole.join();
        let chunks = chunks.join();
        let size = read?;
        let (Ok(hasher), Ok(chunks)) = (hasher, chunks) else {
            return Err(io::Error::other("a chunk hashing thread panicked"));
        };
        Ok(Manifest {
            params: params.id,
            size,
            hash: hasher.finalize().into(),
            chunks,
        })
    })
}

/// Blocks smaller than this are hashed on the calling thread alone: a
/// thread costs more than it saves.
const PARALLEL_MIN: usize = 1 << 20;

/// Feeds `block` to `whole` and checks that `pieces`, laid end to end
/// from the block's first byte, are its bytes (length and BLAKE3); on two
/// threads for a block of 1 MiB or more, so that checking what is written
/// and hashing the whole file cost one pass of wall time, not two.
///
/// # Errors
/// The index of the first piece whose bytes do not match (a piece past
/// the block's end, or pieces that stop short of it, count as not
/// matching). `whole` has been fed the block either way.
pub fn hash_checking(
    whole: &mut blake3::Hasher,
    block: &[u8],
    pieces: &[ChunkRef],
) -> Result<(), usize> {
    let check = || {
        let mut at = 0usize;
        for (i, p) in pieces.iter().enumerate() {
            let end = at + p.len as usize;
            if end > block.len() || ContentHash::of(&block[at..end]) != p.hash {
                return Err(i);
            }
            at = end;
        }
        if at == block.len() {
            Ok(())
        } else {
            Err(pieces.len())
        }
    };
    if block.len() < PARALLEL_MIN {
        whole.update(block);
        return check();
    }
    std::thread::scope(|s| {
        let hashing = s.spawn(|| {
            whole.update(block);
        });
        let checked = check();
        // blake3 does not panic on a slice; a panic would be a bug to see.
        hashing.join().expect("the whole-file hash does not panic");
        checked
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small sizes, so that tiny blocks cross many cut points.
    fn small() -> ChunkingParams {
        let level = |min, avg, max| Level { min, avg, max };
        ChunkingParams::new(7, level(2048, 4096, 16384), level(64, 256, 1024)).expect("valid sizes")
    }

    #[test]
    fn hash_checking_feeds_the_whole_block_and_names_the_first_bad_piece() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let piece = |r: std::ops::Range<usize>| chunk_ref(&data[r]);
        let good = [piece(0..1_000_000), piece(1_000_000..3_000_000)];
        for len in [3_000_000, 1_000_000] {
            let pieces = if len == 1_000_000 {
                &good[..1]
            } else {
                &good[..]
            };
            let mut h = blake3::Hasher::new();
            assert_eq!(hash_checking(&mut h, &data[..len], pieces), Ok(()));
            assert_eq!(h.finalize(), blake3::hash(&data[..len]));
        }
        let mut bad = good;
        bad[1].hash = ContentHash::of(b"other");
        let mut h = blake3::Hasher::new();
        assert_eq!(hash_checking(&mut h, &data, &bad), Err(1));
        assert_eq!(
            h.finalize(),
            blake3::hash(&data),
            "fed even when a piece is bad"
        );
        assert_eq!(
            hash_checking(&mut blake3::Hasher::new(), &data, &good[..1]),
            Err(1),
            "short"
        );
        assert_eq!(
            hash_checking(&mut blake3::Hasher::new(), &data[..10], &good),
            Err(0),
            "past the end"
        );
    }

    #[test]
    fn the_block_reader_cuts_as_the_whole_slice_whatever_the_block_size() {
        let p = small();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in [0, 1, 1000, 16384, 16385, 300_000] {
            let want = manifest_of_bytes(&data[..len], &p);
            for block in [1, 7, 1000, 16384, 50_000, 1 << 20] {
                let got = manifest_in_blocks(&data[..len], &p, block).expect("slice reader");
                assert_eq!(got, want, "len {len}, block {block}");
            }
        }
    }
}
