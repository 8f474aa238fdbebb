//! Names of conflict copies: `NAME.conflict-<host>-<yyyymmdd-hhmmss>.EXT`.

use crate::RemotePath;

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
        Some(i) if i > 0 => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    for n in 1.. {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let mut tail = format!(".conflict-{host}-{stamp}{suffix}");
        if let Some(ext) = ext {
            tail.push('.');
            tail.push_str(ext);
        }
        // Keep within the name limit by shortening the stem.
        let budget = crate::path::MAX_SEGMENT_BYTES
            .saturating_sub(tail.len())
            .max(1);
        let mut cut = stem.len().min(budget);
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        let file = format!("{}{tail}", &stem[..cut]);
        let candidate = match path.parent() {
            Some(dir) => dir.join(&file),
            None => RemotePath::parse(&file),
        }
        .expect("a conflict name keeps the original's valid segments");
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

    #[test]
    fn long_names_stay_valid() {
        let long = format!("{}.txt", "x".repeat(250));
        let n = conflict_name(&p(&long), "host", "20261125-093000", |_| false);
        assert!(n.file_name().len() <= 255);
        assert!(n.as_str().ends_with(".conflict-host-20261125-093000.txt"));
    }
}
