//! How fast the CPU parts of a delta transfer run on this machine: BLAKE3
//! (one thread and all), FastCDC cutting alone, the chunks' hashes, and
//! the manifest builders, over random data held in memory (or a file).
//!
//!   cargo run --profile release-inc -p distribusync-core --example chunk_speed [MIB|FILE]
//!
//! Prints MiB/s per step (best of 3). Used for bench/RESULTS.md, "Delta
//! transfer time".

use std::time::Instant;

use distribusync_core::delta::{ManifestBuilder, PARAMS_V1, hash_checking, manifest_of_reader};

fn best<T>(mib: f64, what: &str, mut f: impl FnMut() -> T) -> T {
    let mut out = None;
    let mut secs = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let r = f();
        secs = secs.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    println!("{what:<44} {:>8.0} MiB/s  {:>7.3} s", mib / secs, secs);
    out.expect("ran at least once")
}

fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "1024".into());
    if let Ok(mib) = arg.parse::<usize>() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..mib << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        in_memory(&data);
    } else {
        let mib = std::fs::metadata(&arg)?.len() as f64 / (1 << 20) as f64;
        best(mib, "manifest_of_reader(file)", || {
            manifest_of_reader(std::fs::File::open(&arg)?, &PARAMS_V1)
        })?;
    }
    Ok(())
}

fn in_memory(data: &[u8]) {
    let mib = data.len() as f64 / (1 << 20) as f64;
    best(mib, "blake3 one thread", || blake3::hash(data));
    best(mib, "blake3 update_rayon", || {
        blake3::Hasher::new().update_rayon(data).finalize()
    });
    best(mib, "memcpy", || std::hint::black_box(data.to_vec()));
    let c = PARAMS_V1.coarse();
    best(mib, "FastCDC cut alone (coarse)", || {
        fastcdc::v2020::FastCDC::with_level(
            data,
            c.min as usize,
            c.avg as usize,
            c.max as usize,
            fastcdc::v2020::Normalization::Level1,
        )
        .count()
    });
    let m = best(mib, "old: ManifestBuilder fed 1 MiB pieces", || {
        let mut b = ManifestBuilder::new(&PARAMS_V1);
        for piece in data.chunks(1 << 20) {
            b.update(piece);
        }
        b.finish()
    });
    let chunks: Vec<(usize, usize)> = m
        .offsets()
        .map(|(at, c)| (at as usize, c.len as usize))
        .collect();
    best(mib, "chunk hashes alone", || {
        chunks
            .iter()
            .map(|&(at, len)| blake3::hash(&data[at..at + len]))
            .collect::<Vec<_>>()
    });
    let m2 = best(mib, "new: manifest_of_reader (3 threads)", || {
        manifest_of_reader(data, &PARAMS_V1).expect("slice reader")
    });
    assert_eq!(m, m2);
    best(mib, "hash_checking in 8 MiB blocks", || {
        let mut whole = blake3::Hasher::new();
        let mut i = 0;
        while i < m.chunks.len() {
            let (start, _) = chunks[i];
            let mut j = i;
            let mut end = start;
            while j < m.chunks.len() && (j == i || end + chunks[j].1 - start <= 8 << 20) {
                end += chunks[j].1;
                j += 1;
            }
            hash_checking(&mut whole, &data[start..end], &m.chunks[i..j]).expect("matches");
            i = j;
        }
        whole.finalize()
    });
}
