//! [`RemotePath`]: a path on the server, validated once and trusted after.
//!
//! Rules: relative, `/`-separated, UTF-8 in Unicode NFC, no empty, `.` or
//! `..` segment, no NUL or other control character, no backslash, no leading
//! or trailing `/`, each segment at most 255 bytes, the whole at most 4096
//! bytes, nothing under the reserved `.distribusync` folder.

use std::fmt;

use unicode_normalization::{UnicodeNormalization, is_nfc};

/// The folder name reserved for DistribuSync's own files (index, staging,
/// sync state). No remote path may live under it.
pub const RESERVED_DIR: &str = ".distribusync";

/// Longest segment (file or folder name), in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// A validated path relative to the root of a synced folder or of MASTER.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(String);

/// Why a string is not a valid [`RemotePath`]. The message names the path and
/// the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid path {0:?}: the path is empty")]
    Empty(String),
    #[error("invalid path {0:?}: absolute paths are not allowed (remove the leading '/')")]
    Absolute(String),
    #[error("invalid path {0:?}: backslash is not a separator; use '/'")]
    Backslash(String),
    #[error("invalid path {0:?}: contains a NUL or control character")]
    ControlChar(String),
    #[error("invalid path {0:?}: empty segment ('//' or a trailing '/')")]
    EmptySegment(String),
    #[error("invalid path {0:?}: '.' and '..' segments are not allowed")]
    DotSegment(String),
    #[error("invalid path {0:?}: a name is longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong(String),
    #[error("invalid path {path:?}: longer than {MAX_PATH_BYTES} bytes ({len} bytes)")]
    TooLong { path: String, len: usize },
    #[error("invalid path {0:?}: not in Unicode NFC")]
    NotNfc(String),
    #[error("invalid path {0:?}: {RESERVED_DIR} is reserved for DistribuSync's own files")]
    Reserved(String),
}

impl PathError {
    /// Short name of the rule broken, stable for tests and scripts.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Empty(_) => "empty",
            Self::Absolute(_) => "absolute",
            Self::Backslash(_) => "backslash",
            Self::ControlChar(_) => "control-char",
            Self::EmptySegment(_) => "empty-segment",
            Self::DotSegment(_) => "dot-segment",
            Self::SegmentTooLong(_) => "segment-too-long",
            Self::TooLong { .. } => "too-long",
            Self::NotNfc(_) => "not-nfc",
            Self::Reserved(_) => "reserved",
        }
    }
}

impl RemotePath {
    /// Validates `s` strictly: it must already be in NFC.
    ///
    /// # Errors
    /// A [`PathError`] naming the first rule `s` breaks.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        // An invalid path is echoed in the error, bounded.
        let owned = || crate::echo(s).into_owned();
        if s.is_empty() {
            return Err(PathError::Empty(owned()));
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                path: crate::echo(s).into_owned(),
                len: s.len(),
            });
        }
        if s.chars().any(char::is_control) {
            return Err(PathError::ControlChar(owned()));
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute(owned()));
        }
        if s.contains('\\') {
            return Err(PathError::Backslash(owned()));
        }
        for seg in s.split('/') {
            if seg.is_empty() {
                return Err(PathError::EmptySegment(owned()));
            }
            if seg == "." || seg == ".." {
                return Err(PathError::DotSegment(owned()));
            }
            if seg.len() > MAX_SEGMENT_BYTES {
                return Err(PathError::SegmentTooLong(owned()));
            }
        }
        if !is_nfc(s) {
            return Err(PathError::NotNfc(owned()));
        }
        if s.split('/').next() == Some(RESERVED_DIR) {
            return Err(PathError::Reserved(owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// Brings a name from a local filesystem (which may use NFD, as macOS
    /// does) into NFC, then validates it.
    ///
    /// # Errors
    /// A [`PathError`] as for [`RemotePath::parse`].
    pub fn normalized(s: &str) -> Result<Self, PathError> {
        if is_nfc(s) {
            Self::parse(s)
        } else {
            Self::parse(&s.nfc().collect::<String>())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as an error message shows it: cut past
    /// [`MAX_ECHO_BYTES`](crate::echo::MAX_ECHO_BYTES) (see [`crate::echo()`]).
    pub fn shown(&self) -> std::borrow::Cow<'_, str> {
        crate::echo(&self.0)
    }

    /// The segments, root first.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The folder holding this path, or `None` at the top level.
    pub fn parent(&self) -> Option<RemotePath> {
        self.0.rfind('/').map(|i| Self(self.0[..i].to_owned()))
    }

    /// Every proper ancestor folder, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> Vec<RemotePath> {
        self.0
            .match_indices('/')
            .map(|(i, _)| Self(self.0[..i].to_owned()))
            .collect()
    }

    /// `self/name`.
    ///
    /// # Errors
    /// A [`PathError`] when `name` is not a valid single segment or the result
    /// breaks a rule.
    pub fn join(&self, name: &str) -> Result<RemotePath, PathError> {
        Self::parse(&format!("{}/{}", self.0, name))
    }

    /// True when `self` lies inside folder `dir` (not equal to it).
    pub fn is_inside(&self, dir: &RemotePath) -> bool {
        self.0.len() > dir.0.len()
            && self.0.starts_with(dir.as_str())
            && self.0.as_bytes()[dir.0.len()] == b'/'
    }

    /// Rewrites the `from` prefix of `self` to `to` (for folder renames).
    /// Returns `None` when `self` is neither `from` nor inside it.
    pub fn rebase(&self, from: &RemotePath, to: &RemotePath) -> Option<RemotePath> {
        if self == from {
            Some(to.clone())
        } else if self.is_inside(from) {
            Some(Self(format!("{}{}", to.0, &self.0[from.0.len()..])))
        } else {
            None
        }
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for RemotePath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Paths compare as their strings (`Ord`, `Eq` and `Hash` are the
/// string's), so maps keyed by `RemotePath` can be searched by `&str`.
impl std::borrow::Borrow<str> for RemotePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The entries of `map` at `dir` or inside it, in order. Paths inside a
/// folder sort together (every one starts with `dir/`), so this is a
/// range query: O(log n + found), never a pass over the map.
pub fn at_or_inside<'m, V>(
    map: &'m std::collections::BTreeMap<RemotePath, V>,
    dir: &RemotePath,
) -> impl Iterator<Item = (&'m RemotePath, &'m V)> + 'm {
    use std::ops::Bound;
    let prefix = format!("{}/", dir.0);
    let inside = map
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .take_while(move |(p, _)| p.0.starts_with(&prefix));
    map.get_key_value(dir.as_str()).into_iter().chain(inside)
}

impl AsRef<str> for RemotePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(s: &str) -> &'static str {
        RemotePath::parse(s).expect_err("must be rejected").rule()
    }

    #[test]
    fn hostile_paths_are_rejected_with_their_rule() {
        assert_eq!(rule("../x"), "dot-segment");
        assert_eq!(rule("/etc/passwd"), "absolute");
        assert_eq!(rule("a/../../b"), "dot-segment");
        assert_eq!(rule("a\\b"), "backslash");
        assert_eq!(rule("a//b"), "empty-segment");
        assert_eq!(rule("a/"), "empty-segment");
        assert_eq!(rule("."), "dot-segment");
        assert_eq!(rule(".."), "dot-segment");
        assert_eq!(rule(""), "empty");
        assert_eq!(rule("a\0b"), "control-char");
        assert_eq!(rule("a\nb"), "control-char");
        assert_eq!(rule(&"x".repeat(300)), "segment-too-long");
        assert_eq!(rule(&"abcd/".repeat(1000)), "too-long");
        assert_eq!(rule(".distribusync/index.db"), "reserved");
        assert_eq!(rule(".distribusync"), "reserved");
        assert_eq!(rule("e\u{301}"), "not-nfc");
    }

    #[test]
    fn message_names_path_and_rule() {
        let e = RemotePath::parse("../x").unwrap_err().to_string();
        assert!(e.contains("\"../x\"") && e.contains("'..'"), "{e}");
    }

    #[test]
    fn ordinary_paths_are_accepted() {
        for p in [
            "a",
            "report.pdf",
            "trips/2026/a.jpg",
            "with space/é.txt",
            ".hidden",
            "a/.distribusync",
            "...",
        ] {
            assert_eq!(RemotePath::parse(p).unwrap().as_str(), p);
        }
        assert!(RemotePath::parse(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn nfd_names_are_normalized_when_asked() {
        let p = RemotePath::normalized("cafe\u{301}.txt").unwrap();
        assert_eq!(p.as_str(), "caf\u{e9}.txt");
    }

    #[test]
    fn ancestors_parent_and_rebase() {
        let p = RemotePath::parse("a/b/c").unwrap();
        let names: Vec<_> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(names, ["a", "a/b"]);
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        let from = RemotePath::parse("a").unwrap();
        let to = RemotePath::parse("z/y").unwrap();
        assert_eq!(p.rebase(&from, &to).unwrap().as_str(), "z/y/b/c");
        let ab = RemotePath::parse("ab/c").unwrap();
        assert!(ab.rebase(&from, &to).is_none());
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _\\-\\.éü中]{1,40}".prop_filter("no dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn valid_paths_round_trip(segs in prop::collection::vec(segment(), 1..8)) {
            let s = segs.join("/");
            prop_assume!(!s.starts_with(RESERVED_DIR));
            let s: String = s.nfc().collect();
            let p = RemotePath::parse(&s).unwrap();
            prop_assert_eq!(p.as_str(), s.as_str());
            prop_assert_eq!(p.to_string().parse::<RemotePath>().unwrap(), p.clone());
            prop_assert_eq!(p.segments().count(), segs.len());
        }

        #[test]
        fn inserting_a_bad_piece_is_rejected(
            segs in prop::collection::vec(segment(), 1..5),
            at in 0usize..5,
            bad in prop::sample::select(vec!["..", ".", "", "a\\b", "x\0y", "t\tu"]),
        ) {
            let mut segs = segs;
            let at = at.min(segs.len());
            segs.insert(at, bad.to_owned());
            let s = segs.join("/");
            let err = RemotePath::parse(&s).unwrap_err();
            let expected = match bad {
                ".." | "." => "dot-segment",
                "" => "empty-segment",
                "a\\b" => "backslash",
                _ => "control-char",
            };
            // An empty segment at the front reads as an absolute path.
            if bad.is_empty() && at == 0 {
                prop_assert_eq!(err.rule(), "absolute");
            } else {
                prop_assert_eq!(err.rule(), expected);
            }
        }

        #[test]
        fn anything_accepted_obeys_every_rule(s in "\\PC{0,64}") {
            if let Ok(p) = RemotePath::parse(&s) {
                prop_assert!(!p.as_str().starts_with('/'));
                prop_assert!(p.segments().all(|g| !g.is_empty() && g != "." && g != ".."));
                prop_assert!(!p.as_str().contains('\\'));
            }
        }
    }
}
