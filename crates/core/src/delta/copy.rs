//! Copying the bytes a receiver already has into the file it assembles,
//! as a pipeline: block n+1 is read while block n is hashed and block n-1
//! is written, each on its own thread, so that reading, hashing and
//! writing cost the wall time of the slowest of them rather than their sum.
//!
//! The IO is the caller's (a `read` and a `write` closure, as
//! [`super::KnownChunks::add_regions`] takes one), so this stays free of
//! files and runtimes.
//!
//! Invariants: blocks are hashed and written in order, each exactly once;
//! a block is written only after it is hashed (and, when `check` is set,
//! after each of its pieces matched its hash); the whole-file hasher is
//! fed every byte written, in order. At most three blocks are held at once
//! (one being read, one hashed, one written; rendezvous channels), plus
//! the buffers handed back for reuse.

use std::io;
use std::sync::mpsc;

use super::{ChunkRef, Op, SourceId, hash_checking};

/// Consecutive bytes of one source, copied as one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyBlock {
    pub source: SourceId,
    /// Where the bytes are in the source.
    pub offset: u64,
    pub len: u64,
    /// The chunks (or pieces) the block holds, end to end.
    pub pieces: Vec<ChunkRef>,
    /// Check each piece against its hash. Unset for a source whose bytes
    /// the receiver trusts to be what it hashed them to (docs/DESIGN.md,
    /// "Time (round 7)" under "Delta transfer on the wire"): only the
    /// whole-file hash takes them then.
    pub check: bool,
}

/// The copy ops at the start of `ops` (up to the first literal, or `max_run`
/// bytes, at least one op), grouped into blocks of consecutive bytes of one
/// source of at most `max_block` bytes (at least one op each). Returns the
/// blocks and how many ops they cover. `check` says which sources' bytes
/// are checked piece by piece.
pub fn copy_blocks(
    ops: &[Op],
    max_block: u64,
    max_run: u64,
    check: impl Fn(SourceId) -> bool,
) -> (Vec<CopyBlock>, usize) {
    let mut blocks: Vec<CopyBlock> = Vec::new();
    let mut used = 0usize;
    let mut run = 0u64;
    for op in ops {
        let Op::Copy { from, len, hash } = *op else {
            break;
        };
        let len64 = u64::from(len);
        if used > 0 && run + len64 > max_run {
            break;
        }
        let piece = ChunkRef { len, hash };
        match blocks.last_mut() {
            Some(b)
                if b.source == from.source
                    && b.offset + b.len == from.offset
                    && b.len + len64 <= max_block =>
            {
                b.len += len64;
                b.pieces.push(piece);
            }
            _ => blocks.push(CopyBlock {
                source: from.source,
                offset: from.offset,
                len: len64,
                pieces: vec![piece],
                check: check(from.source),
            }),
        }
        run += len64;
        used += 1;
    }
    (blocks, used)
}

/// Why [`copy_pipelined`] stopped.
#[derive(Debug)]
pub enum CopyError<E> {
    /// Block `block` could not be read.
    Read { block: usize, error: io::Error },
    /// Piece `piece` of block `block` (a checked one) is not what its hash
    /// says: the source changed since it was hashed.
    Mismatch { block: usize, piece: usize },
    /// The caller's `write` failed.
    Write(E),
}

/// Reads each of `blocks` with `read`, feeds it to `whole` (checking its
/// pieces when the block says so) and hands it to `write`, in order, on
/// three threads (scoped: none outlives the call).
///
/// # Errors
/// The first read error, piece mismatch or write error; nothing after the
/// block that failed is written (a mismatching block is not written).
pub fn copy_pipelined<E: Send>(
    blocks: &[CopyBlock],
    whole: &mut blake3::Hasher,
    read: impl Fn(&CopyBlock, &mut [u8]) -> io::Result<()> + Sync,
    mut write: impl FnMut(&[u8]) -> Result<(), E> + Send,
) -> Result<(), CopyError<E>> {
    if blocks.is_empty() {
        return Ok(());
    }
    std::thread::scope(|s| {
        // Rendezvous channels: the reader waits with block n+1 read until
        // the hasher takes it, the hasher with block n hashed until the
        // writer takes it.
        let (read_tx, read_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(0);
        let (write_tx, write_rx) = mpsc::sync_channel::<Vec<u8>>(0);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let read = &read;
        s.spawn(move || {
            for b in blocks {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                // A block is at most the caller's `max_block` (a few MiB).
                buf.resize(usize::try_from(b.len).unwrap_or(usize::MAX), 0);
                let r = read(b, &mut buf).map(|()| buf);
                let failed = r.is_err();
                if read_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        let writer = s.spawn(move || -> Result<(), E> {
            for buf in write_rx {
                write(&buf)?;
                let _ = back_tx.send(buf);
            }
            Ok(())
        });
        let hashed = (|| {
            for (i, b) in blocks.iter().enumerate() {
                let buf = match read_rx.recv() {
                    Ok(Ok(buf)) => buf,
                    Ok(Err(error)) => return Err(CopyError::Read { block: i, error }),
                    Err(_) => {
                        let error = io::Error::other("the reading thread stopped");
                        return Err(CopyError::Read { block: i, error });
                    }
                };
                if b.check {
                    hash_checking(whole, &buf, &b.pieces)
                        .map_err(|piece| CopyError::Mismatch { block: i, piece })?;
                } else {
                    whole.update(&buf);
                }
                if write_tx.send(buf).is_err() {
                    break; // the writer failed: its error says why
                }
            }
            Ok(())
        })();
        drop((write_tx, read_rx));
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        hashed?;
        written.map_err(CopyError::Write)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContentHash;
    use crate::delta::Location;

    fn copy(source: u32, offset: u64, bytes: &[u8]) -> Op {
        Op::Copy {
            from: Location {
                source: SourceId(source),
                offset,
            },
            len: bytes.len() as u32,
            hash: ContentHash::of(bytes),
        }
    }

    #[test]
    fn blocks_group_consecutive_copies_of_one_source_and_stop_at_a_literal() {
        let a: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8).collect();
        let ops = [
            copy(0, 0, &a[..1000]),
            copy(0, 1000, &a[1000..2000]),
            copy(0, 3000, &a[3000..4000]), // not consecutive
            copy(1, 4000, &a[..1000]),     // another source
            Op::Literal {
                len: 10,
                hash: ContentHash::of(b"x"),
            },
            copy(0, 0, &a[..1000]),
        ];
        let (blocks, used) = copy_blocks(&ops, 1 << 20, 1 << 30, |s| s.0 == 1);
        assert_eq!(used, 4);
        let spans: Vec<(u32, u64, u64, usize, bool)> = blocks
            .iter()
            .map(|b| (b.source.0, b.offset, b.len, b.pieces.len(), b.check))
            .collect();
        assert_eq!(
            spans,
            [
                (0, 0, 2000, 2, false),
                (0, 3000, 1000, 1, false),
                (1, 4000, 1000, 1, true)
            ]
        );
        // Block and run bounds: at least one op each.
        let (blocks, used) = copy_blocks(&ops, 1500, 1 << 30, |_| true);
        assert_eq!((blocks.len(), used), (4, 4));
        let (blocks, used) = copy_blocks(&ops, 1 << 20, 10, |_| true);
        assert_eq!((blocks.len(), used), (1, 1));
    }

    #[test]
    fn the_pipeline_writes_every_block_in_order_and_stops_at_a_bad_one() {
        let src: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ops: Vec<Op> = (0..30)
            .map(|i| copy(0, i * 100_000, &src[i as usize * 100_000..][..100_000]))
            .collect();
        for check in [true, false] {
            let (blocks, used) = copy_blocks(&ops, 700_000, u64::MAX, |_| check);
            assert_eq!(used, 30);
            let mut whole = blake3::Hasher::new();
            let mut out = Vec::new();
            copy_pipelined(
                &blocks,
                &mut whole,
                |b, buf| {
                    buf.copy_from_slice(&src[b.offset as usize..][..buf.len()]);
                    Ok(())
                },
                |bytes| {
                    out.extend_from_slice(bytes);
                    Ok::<(), ()>(())
                },
            )
            .expect("copies");
            assert!(out == src, "check {check}");
            assert_eq!(whole.finalize(), blake3::hash(&src));
        }
        // A source that changed: a checked block stops the copy before it
        // is written; an unchecked one goes through (the whole-file hash
        // is the caller's check).
        let mut changed = src.clone();
        changed[1_500_000] ^= 1;
        let (blocks, _) = copy_blocks(&ops, 700_000, u64::MAX, |_| true);
        let mut out = Vec::new();
        let e = copy_pipelined(
            &blocks,
            &mut blake3::Hasher::new(),
            |b, buf| {
                buf.copy_from_slice(&changed[b.offset as usize..][..buf.len()]);
                Ok(())
            },
            |bytes| {
                out.extend_from_slice(bytes);
                Ok::<(), ()>(())
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, CopyError::Mismatch { block: 2, piece: 1 }),
            "{e:?}"
        );
        assert_eq!(out.len(), 1_400_000, "the blocks before it, no more");
        // Read and write errors are the caller's, named.
        let e = copy_pipelined(
            &blocks,
            &mut blake3::Hasher::new(),
            |b, buf| {
                if b.offset > 0 {
                    return Err(io::Error::other("gone"));
                }
                buf.copy_from_slice(&src[..buf.len()]);
                Ok(())
            },
            |_| Ok::<(), ()>(()),
        )
        .unwrap_err();
        assert!(matches!(e, CopyError::Read { block: 1, .. }), "{e:?}");
        let mut n = 0;
        let e = copy_pipelined(
            &blocks,
            &mut blake3::Hasher::new(),
            |b, buf| {
                buf.copy_from_slice(&src[b.offset as usize..][..buf.len()]);
                Ok(())
            },
            |_| {
                n += 1;
                if n == 3 { Err("full") } else { Ok(()) }
            },
        )
        .unwrap_err();
        assert!(matches!(e, CopyError::Write("full")), "{e:?}");
    }
}
