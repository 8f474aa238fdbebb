//! Compiles every `.proto` under `proto/distribusync/v1/` with protox (no
//! protoc needed) and writes the descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("distribusync/v1");
    let mut protos: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let fds = protox::compile(&protos, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("distribusync_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Hand-coded for speed in src/compute.rs (same wire format).
        .extern_path(".distribusync.v1.IntList", "crate::compute::IntList")
        .extern_path(".distribusync.v1.FloatList", "crate::compute::FloatList")
        // A small file's content sent with its change: one buffer shared
        // by every watcher's message (the server's `inline.rs`), not a
        // copy each.
        .bytes(".distribusync.v1.Change.content")
        .compile_fds(fds)?;
    Ok(())
}
