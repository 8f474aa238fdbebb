//! FastCDC v2020 over a slice, a push-fed builder and a `Read`.
//!
//! All three call [`Cutter::cut`] on a window that holds at least `max` bytes
//! unless the input ends inside it, so they find the same cut points: the
//! v2020 cut of a window depends only on its first `max` bytes and on whether
//! fewer than `max` remain.

use std::io::{self, Read};

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

/// The manifest of everything `reader` yields, read in 1 MiB pieces; the
/// file is never held in memory whole.
///
/// # Errors
/// The first read error other than [`io::ErrorKind::Interrupted`].
pub fn manifest_of_reader<R: Read>(mut reader: R, params: &ChunkingParams) -> io::Result<Manifest> {
    let mut builder = ManifestBuilder::new(params);
    let mut piece = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut piece) {
            Ok(0) => return Ok(builder.finish()),
            Ok(n) => builder.update(&piece[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
