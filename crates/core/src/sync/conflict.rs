//! Names of conflict copies: `NAME.conflict-<host>-<yyyymmdd-hhmmss>.EXT`.
//!
//! Invariant: the name is always a valid [`RemotePath`], whatever the
//! original's length and whatever the host and stamp hold. The host and
//! stamp are cut to ASCII letters, digits and `-` (anything else becomes
//! `_`, so no Unicode normalisation can change the name), the stem and then
//! the extension are shortened to fit the name and path limits, and when
//! the folder's path leaves no room for any conflict name the copy goes to
//! the top level instead.

use crate::RemotePath;
use crate::path::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES};

/// `s` in ASCII letters, digits and `-`, at most `max` characters.
fn portable(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// The longest prefix of `s` of at most `max` bytes.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The conflict copy name for `path`, or the first free variant (`-2`,
/// `-3`, …) for which `taken` is false.
pub fn conflict_name(
    path: &RemotePath,
    host: &str,
    stamp: &str,
    taken: impl Fn(&RemotePath) -> bool,
) -> RemotePath {
    let name = path.file_name();
    // A leading dot is part of the name, not an extension (".bashrc").
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let host = portable(host, 40);
    let stamp = portable(stamp, 32);
    for n in 1u64.. {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let marker = format!(".conflict-{host}-{stamp}{suffix}");
        // Beside the original when its folder leaves room for the marker
        // and one byte of name, else at the top level.
        let dir = path
            .parent()
            .filter(|d| d.as_str().len() + 1 + 1 + marker.len() <= MAX_PATH_BYTES);
        let room = dir.as_ref().map_or(MAX_SEGMENT_BYTES, |d| {
            MAX_SEGMENT_BYTES.min(MAX_PATH_BYTES - d.as_str().len() - 1)
        });
        // The marker stays whole; the extension too where it leaves a
        // byte of stem (else it is cut), and the stem takes what is left.
        let free = room - marker.len();
        let ext = cut(ext, free.saturating_sub(2));
        let stem = cut(stem, free - if ext.is_empty() { 0 } else { ext.len() + 1 });
        let file = if ext.is_empty() {
            format!("{stem}{marker}")
        } else {
            format!("{stem}{marker}.{ext}")
        };
        let candidate = match &dir {
            Some(dir) => dir.join(&file),
            None => RemotePath::parse(&file),
        }
        .expect("a conflict name is cut to the limits and made of valid pieces");
        if !taken(&candidate) {
            return candidate;
        }
    }
    unreachable!("some numbered variant is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    #[test]
    fn names_keep_folder_and_extension() {
        let n = conflict_name(
            &p("docs/report.final.pdf"),
            "laptop",
            "20261125-093000",
            |_| false,
        );
        assert_eq!(
            n.as_str(),
            "docs/report.final.conflict-laptop-20261125-093000.pdf"
        );
        let n = conflict_name(&p(".bashrc"), "my host", "20261125-093000", |_| false);
        assert_eq!(n.as_str(), ".bashrc.conflict-my_host-20261125-093000");
    }

    #[test]
    fn taken_names_get_a_number() {
        let first = conflict_name(&p("a.txt"), "h", "s", |_| false);
        let n = conflict_name(&p("a.txt"), "h", "s", |c| *c == first);
        assert_eq!(n.as_str(), "a.conflict-h-s-2.txt");
    }

    /// Found by fuzzing (planner target): a host name whose characters
    /// change under NFC made an invalid name and a panic.
    #[test]
    fn any_host_gives_a_valid_portable_name() {
        for host in ["4\u{fb2c}", "\u{1100}\u{1161}", "caf\u{e9}", "a/b\\c\n"] {
            let n = conflict_name(&p("a.txt"), host, "20261125-093000", |_| false);
            assert_eq!(RemotePath::parse(n.as_str()), Ok(n.clone()));
            let marker = n.as_str().strip_prefix("a.conflict-").unwrap();
            assert!(marker.is_ascii(), "{n}");
        }
    }

    /// Found by fuzzing: an extension past the name limit, and a folder
    /// whose path leaves no room for the marker.
    #[test]
    fn long_extensions_and_deep_folders_stay_valid() {
        let long_ext = format!("x.{}", "e".repeat(250));
        let n = conflict_name(&p(&long_ext), "host", "20261125-093000", |_| false);
        assert!(n.file_name().len() <= 255 && n.as_str().starts_with("x.conflict-host-"));
        let deep = format!(
            "{}/{}/f.txt",
            vec!["d".repeat(200); 20].join("/"),
            "d".repeat(66)
        );
        let n = conflict_name(&p(&deep), "host", "20261125-093000", |_| false);
        assert_eq!(RemotePath::parse(n.as_str()), Ok(n.clone()));
        assert_eq!(n.as_str(), "f.conflict-host-20261125-093000.txt");
        let roomy = format!("{}/f.txt", vec!["d".repeat(200); 20].join("/"));
        let n = conflict_name(&p(&roomy), "host", "20261125-093000", |_| false);
        assert_eq!(n.parent(), p(&roomy).parent());
    }

    #[test]
    fn long_names_stay_valid() {
        let long = format!("{}.txt", "x".repeat(250));
        let n = conflict_name(&p(&long), "host", "20261125-093000", |_| false);
        assert!(n.file_name().len() <= 255);
        assert!(n.as_str().ends_with(".conflict-host-20261125-093000.txt"));
    }
}
