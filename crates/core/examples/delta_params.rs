//! Measures candidate delta-transfer chunking parameters (bench/delta-params.sh
//! runs it and rsync side by side; figures in bench/RESULTS.md).
//!
//! For random files of the given sizes (MiB; default 64 and 1024) and the
//! cases of issue 11 (1 byte changed in the middle, 100 bytes inserted at
//! offset 1000, 1 MiB appended, the same file under a new name), it runs
//! both ends of the planned protocol (docs/DESIGN.md, "Delta transfer
//! (core)") in memory through `distribusync_core::delta`, checks that the
//! receiver rebuilds the new file, and prints the bytes that would cross the
//! wire in both directions, counted as the protobuf messages of that design
//! would be encoded, plus gRPC (5 B) and HTTP/2 (9 B) framing per message and
//! 64 B per message for the request's path and ids. It also prints manifest
//! sizes and single-core chunking throughput.
//!
//! Then, for one 64 MiB file, the mean and worst case over `SPREAD_ROUNDS`
//! (default 16) random positions of the 1-byte change and the 100-byte insert.
//!
//! `cargo run --release -p distribusync-core --example delta_params -- [MiB...]`
#![allow(clippy::print_stdout)]

use std::time::Instant;

use distribusync_core::delta::{
    Bitmap, ChunkRef, ChunkingParams, DeltaPlan, KnownChunks, Level, Manifest, SourceId, assemble,
    chunks_requested, fine_chunks, manifest_of_bytes, ranges_to_send, regions_to_refine,
};

const KIB: u32 = 1024;
const MIB: usize = 1 << 20;

/// Bytes of a protobuf varint.
fn varint(v: u64) -> u64 {
    u64::from((64 - v.max(1).leading_zeros()).div_ceil(7))
}

/// A length-delimited field (tag 1 byte: field numbers < 16).
fn field_bytes(payload: u64) -> u64 {
    1 + varint(payload) + payload
}

/// One message on a stream: its encoded fields plus framing and ids.
fn message(fields: u64) -> u64 {
    fields + 5 + 9 + 64
}

/// `repeated ChunkRef` as two packed fields: hashes end to end, lengths as
/// packed varints.
fn chunk_list(chunks: &[ChunkRef]) -> u64 {
    let lens: u64 = chunks.iter().map(|c| varint(u64::from(c.len))).sum();
    field_bytes(32 * chunks.len() as u64) + field_bytes(lens)
}

/// The manifest message: params (varint), size (varint), hash, chunks.
fn manifest_message(m: &Manifest) -> u64 {
    message(
        1 + varint(u64::from(m.params))
            + 1
            + varint(m.size)
            + field_bytes(32)
            + chunk_list(&m.chunks),
    )
}

fn bitmap_message(b: &Bitmap) -> u64 {
    message(field_bytes(b.as_bytes().len() as u64))
}

/// What one transfer moved, in wire bytes.
#[derive(Debug, Default)]
struct Wire {
    manifest: u64,
    exchange: u64,
    data: u64,
    literal: u64,
    missing_chunks: usize,
}

impl Wire {
    fn total(&self) -> u64 {
        self.manifest + self.exchange + self.data
    }
}

/// Both ends of a transfer of `new` to a receiver holding `old` (under the
/// same name, or under another when `rename`). `refine` false: whole
/// missing chunks, one level only.
fn transfer(old: &[u8], base: &Manifest, new: &[u8], p: &ChunkingParams, refine: bool) -> Wire {
    let mut w = Wire::default();
    let m = manifest_of_bytes(new, p);
    w.manifest = manifest_message(&m);
    let mut known = KnownChunks::new(p);
    known.add_manifest(SourceId(0), base).expect("same params");
    let mut plan = DeltaPlan::new(&m, &known, p).expect("same params");
    let bitmap = plan.missing_bitmap();
    w.exchange += bitmap_message(&bitmap);
    let requested = chunks_requested(&m, &bitmap).expect("own bitmap");
    w.missing_chunks = requested.len();
    let regions = regions_to_refine(base, &m);
    let ranges = if requested.is_empty() {
        Vec::new()
    } else if refine && !regions.is_empty() {
        let starts: Vec<u64> = m.offsets().map(|(o, _)| o).collect();
        let lists: Vec<Vec<ChunkRef>> = requested
            .iter()
            .map(|&i| fine_chunks(&new[starts[i] as usize..][..m.chunks[i].len as usize], p))
            .collect();
        w.exchange += message(lists.iter().map(|l| field_bytes(chunk_list(l))).sum());
        for r in &regions {
            let bytes = &old[r.offset as usize..(r.offset + r.len) as usize];
            known.add_pieces(SourceId(0), r.offset, &fine_chunks(bytes, p));
        }
        plan.refine(lists.clone(), &known).expect("own pieces");
        let pieces = plan.missing_pieces_bitmap().expect("refined");
        w.exchange += bitmap_message(&pieces);
        ranges_to_send(&m, &requested, Some((&lists, &pieces))).expect("own requests")
    } else {
        ranges_to_send(&m, &requested, None).expect("own requests")
    };
    let mut literals = Vec::new();
    for r in &ranges {
        literals.extend_from_slice(&new[r.offset as usize..(r.offset + r.len) as usize]);
    }
    w.literal = literals.len() as u64;
    // Data in messages of at most 1 MiB, then the receiver's answer (hash
    // and revision).
    for piece in literals.chunks(MIB) {
        w.data += message(field_bytes(piece.len() as u64));
    }
    w.exchange += message(field_bytes(32) + 1 + 8);
    let rebuilt =
        assemble(&m, &plan.ops(), &[old], &literals).expect("the receiver rebuilds the file");
    assert!(rebuilt == new);
    w
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn kib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1024.0)
}

/// Spread over many edit positions: one position says little, as the cost
/// depends on where the pieces around the edit happen to be cut.
fn spread(candidates: &[(&str, ChunkingParams, bool)], rounds: u64) {
    let size = 64 * MIB;
    println!(
        "\n## Spread: {rounds} random positions each in one 64 MiB random file (total on wire KiB)\n"
    );
    println!("| parameters | 1 byte changed: mean | max | 100 B inserted: mean | max |");
    println!("|---|---:|---:|---:|---:|");
    let old = random_bytes(64, size);
    for (name, p, refine) in candidates.iter().filter(|c| c.2) {
        let base = manifest_of_bytes(&old, p);
        let (mut flips, mut inserts) = (Vec::new(), Vec::new());
        for k in 0..rounds {
            let at = u64::from_le_bytes(random_bytes(1000 + k, 8).try_into().expect("8 bytes"))
                as usize
                % size;
            let mut flipped = old.clone();
            flipped[at] ^= 0x55;
            flips.push(transfer(&old, &base, &flipped, p, *refine).total());
            let mut inserted = old[..at].to_vec();
            inserted.extend_from_slice(&random_bytes(k, 100));
            inserted.extend_from_slice(&old[at..]);
            inserts.push(transfer(&old, &base, &inserted, p, *refine).total());
        }
        let mean = |v: &[u64]| kib(v.iter().sum::<u64>() / v.len() as u64);
        let max = |v: &[u64]| kib(*v.iter().max().expect("rounds > 0"));
        println!(
            "| {name} | {} | {} | {} | {} |",
            mean(&flips),
            max(&flips),
            mean(&inserts),
            max(&inserts)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: u64 = std::env::var("SPREAD_ROUNDS")
        .map_or(16, |v| v.parse().expect("SPREAD_ROUNDS is a number"));
    let sizes: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("sizes in MiB"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![64, 1024]
    } else {
        sizes
    };
    let lvl = |min: u32, avg: u32, max: u32| Level {
        min: min * KIB,
        avg: avg * KIB,
        max: max * KIB,
    };
    let tiny = lvl(1, 1, 1); // fine level of a one-level set: never used
    let candidates: Vec<(&str, ChunkingParams, bool)> = vec![
        ("A 1M + 8K (v1)", distribusync_core::delta::PARAMS_V1, true),
        (
            "B 1M + 4K",
            ChunkingParams::new(102, lvl(256, 1024, 4096), lvl(1, 4, 32)).expect("valid"),
            true,
        ),
        (
            "C 1M + 16K",
            ChunkingParams::new(103, lvl(256, 1024, 4096), lvl(4, 16, 128)).expect("valid"),
            true,
        ),
        (
            "D 2M + 8K",
            ChunkingParams::new(104, lvl(512, 2048, 8192), lvl(2, 8, 64)).expect("valid"),
            true,
        ),
        (
            "E 512K + 8K",
            ChunkingParams::new(105, lvl(128, 512, 2048), lvl(2, 8, 64)).expect("valid"),
            true,
        ),
        (
            "F 1M only",
            ChunkingParams::new(106, lvl(256, 1024, 4096), tiny).expect("valid"),
            false,
        ),
        (
            "G 8K only",
            ChunkingParams::new(107, lvl(2, 8, 64), tiny).expect("valid"),
            false,
        ),
    ];
    for &size in &sizes {
        let old = random_bytes(size as u64, size * MIB);
        let mid = old.len() / 2;
        let mut flipped = old.clone();
        flipped[mid] ^= 0x55;
        let mut inserted = old[..1000].to_vec();
        inserted.extend_from_slice(&random_bytes(1, 100));
        inserted.extend_from_slice(&old[1000..]);
        let mut appended = old.clone();
        appended.extend_from_slice(&random_bytes(2, MIB));
        let cases: [(&str, &[u8]); 4] = [
            ("1 byte changed", &flipped),
            ("100 B inserted", &inserted),
            ("1 MiB appended", &appended),
            ("new name", &old),
        ];
        println!("\n## {size} MiB random file\n");
        println!(
            "| parameters | case | total on wire KiB | data KiB | manifest KiB | exchange KiB | chunks sent |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|");
        let mut speed = Vec::new();
        for (name, p, refine) in &candidates {
            let t = Instant::now();
            let base = manifest_of_bytes(&old, p);
            let secs = t.elapsed().as_secs_f64();
            speed.push((
                name,
                base.chunks.len(),
                manifest_message(&base),
                size as f64 / secs,
            ));
            for (case, new) in &cases {
                // "new name": the receiver has the content under another
                // name; the same known chunks, found by hash.
                let w = transfer(&old, &base, new, p, *refine);
                println!(
                    "| {name} | {case} | {} | {} | {} | {} | {} |",
                    kib(w.total()),
                    kib(w.literal),
                    kib(w.manifest),
                    kib(w.exchange),
                    w.missing_chunks
                );
            }
        }
        println!(
            "\n| parameters | chunks in manifest | manifest KiB | manifest (chunking + BLAKE3) MiB/s, 1 core |"
        );
        println!("|---|---:|---:|---:|");
        for (name, n, bytes, mibs) in speed {
            println!("| {name} | {n} | {} | {mibs:.0} |", kib(bytes));
        }
        let t = Instant::now();
        let mut pieces = 0usize;
        for c in old.chunks(4 * MIB) {
            pieces += fine_chunks(c, &distribusync_core::delta::PARAMS_V1).len();
        }
        println!(
            "\nFine level of v1 over the whole file (done only for chunks that differ): {pieces} pieces, {:.0} MiB/s",
            size as f64 / t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let h = blake3::hash(&old);
        println!(
            "Whole-file BLAKE3 alone, 1 core: {:.0} MiB/s ({})",
            size as f64 / t.elapsed().as_secs_f64(),
            &h.to_hex()[..8]
        );
    }
    if rounds > 0 {
        spread(&candidates, rounds);
    }
}
