//! `RemotePath`: whatever is accepted obeys every rule of `core::path`,
//! round-trips through text, is already normalised (NFC), and cannot leave
//! the folder it is joined to; derived paths (parent, ancestors, join,
//! rebase) are valid paths too.
#![no_main]

use std::path::{Component, Path};

use distribusync_core::path::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES};
use distribusync_core::{RESERVED_DIR, RemotePath};
use libfuzzer_sys::fuzz_target;
use unicode_normalization::{UnicodeNormalization, is_nfc};

/// Every rule an accepted path must obey, checked from scratch.
fn check_valid(p: &RemotePath) {
    let s = p.as_str();
    assert!(!s.is_empty() && s.len() <= MAX_PATH_BYTES, "{s:?}");
    assert!(is_nfc(s), "not NFC: {s:?}");
    assert!(!s.chars().any(char::is_control), "{s:?}");
    assert!(!s.starts_with('/') && !s.contains('\\'), "{s:?}");
    for seg in s.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{s:?}");
        assert!(seg.len() <= MAX_SEGMENT_BYTES, "{s:?}");
    }
    assert_ne!(s.split('/').next(), Some(RESERVED_DIR), "{s:?}");
    // Round trip through text.
    assert_eq!(s.parse::<RemotePath>().as_ref(), Ok(p));
    assert_eq!(RemotePath::normalized(s).as_ref(), Ok(p));
    // Joined to a root it stays inside: only plain names, as many as segments.
    let root = Path::new("/srv/root");
    let joined = root.join(s);
    assert!(joined.starts_with(root), "{s:?} escapes");
    let names: Vec<_> = joined.strip_prefix(root).unwrap().components().collect();
    assert!(
        names.iter().all(|c| matches!(c, Component::Normal(_))),
        "{s:?}"
    );
    assert_eq!(names.len(), p.segments().count(), "{s:?}");
}

fn check_derived(p: &RemotePath, other: &RemotePath) {
    for a in p.ancestors() {
        check_valid(&a);
        assert!(p.is_inside(&a));
    }
    match p.parent() {
        Some(dir) => {
            check_valid(&dir);
            assert_eq!(dir.join(p.file_name()).as_ref(), Ok(p));
        }
        None => assert_eq!(p.file_name(), p.as_str()),
    }
    if let Ok(j) = p.join(other.as_str()) {
        check_valid(&j);
        assert!(j.is_inside(p));
    }
    // Moving `other` (or what is inside it) under `p` gives a valid path.
    for inner in [other.clone()].into_iter().chain(other.ancestors()) {
        if let Some(moved) = other.rebase(&inner, p) {
            check_valid(&moved);
        }
    }
}

fuzz_target!(|input: (&str, &str)| {
    let (a, b) = input;
    let strict = RemotePath::parse(a);
    if let Ok(p) = &strict {
        check_valid(p);
        assert_eq!(p.as_str(), a);
    }
    match RemotePath::normalized(a) {
        Ok(p) => {
            check_valid(&p);
            assert_eq!(p.as_str(), a.nfc().collect::<String>());
            if let Ok(other) = RemotePath::normalized(b) {
                check_derived(&p, &other);
            }
        }
        // What is valid in NFC is valid when normalised.
        Err(e) => assert!(strict.is_err(), "{a:?}: {e}"),
    }
});
