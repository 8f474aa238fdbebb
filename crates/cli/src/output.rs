//! How files are printed: plain, long, or JSON Lines.

use std::io::Write;

use distribusync_client::FileInfo;
use serde::Serialize;

/// The JSON form of a file, shared by ls, stat and put.
#[derive(Debug, Serialize)]
pub struct FileJson<'a> {
    pub path: &'a str,
    pub size: u64,
    pub revision: u64,
    pub hash: String,
    pub modified: String,
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

impl<'a> From<&'a FileInfo> for FileJson<'a> {
    fn from(f: &'a FileInfo) -> Self {
        Self {
            path: f.path.as_str(),
            size: f.size,
            revision: f.revision,
            hash: f.hash.to_hex(),
            modified: rfc3339(f.modified),
        }
    }
}

pub fn json_line(out: &mut impl Write, f: &FileInfo) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &FileJson::from(f))?;
    writeln!(out)
}

pub fn long_line(out: &mut impl Write, f: &FileInfo) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>12}  {:>8}  {}  {}",
        f.size,
        f.revision,
        humantime::format_rfc3339_seconds(f.modified),
        f.path
    )
}
