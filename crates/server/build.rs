//! Names the commit the binary was built from (`DISTRIBUSYNC_COMMIT`), for
//! `--version` and `status`. Tolerant: without git or a repository (a
//! source tarball, a Docker build context without .git) the commit is
//! "unknown"; `DISTRIBUSYNC_COMMIT` set in the build environment wins.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DISTRIBUSYNC_COMMIT");
    let commit = std::env::var("DISTRIBUSYNC_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DISTRIBUSYNC_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself, and the branch it points to
    // (worktrees keep HEAD in their own git dir, refs in the common one).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let (Some(common), Some(head)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        println!("cargo:rerun-if-changed={common}/{head}");
        println!("cargo:rerun-if-changed={common}/packed-refs");
    }
}
