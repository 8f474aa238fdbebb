//! The `.distribusyncignore` parser (`client::sync::IgnoreRules`): any text
//! gives rules without a panic; matching any relative path a scan can meet
//! never panics; our own folder is always ignored; the built-in editor
//! temporaries stay ignored unless the file re-includes something; and
//! what is inside an ignored folder is ignored (the scan never descends
//! into one, so the watcher must agree or a file would flicker in and out
//! of the local view).
#![no_main]

use std::path::Path;

use distribusync_client::sync::IgnoreRules;
use libfuzzer_sys::fuzz_target;

/// A path as a scan or the watcher can produce it: relative, plain
/// segments, no NUL.
fn scannable(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

fuzz_target!(|input: (&str, Vec<&str>)| {
    let (text, paths) = input;
    let rules = IgnoreRules::parse(Path::new("/folder"), text);
    assert!(rules.is_ignored(".distribusync", true));
    assert!(rules.is_ignored(".distribusync/state.db", false));
    if !text.lines().any(|l| l.trim_start().starts_with('!')) {
        for temp in [
            "a.swp",
            "d/notes~",
            ".#lock",
            "~$doc.docx",
            "x/.DS_Store",
            "f.distribusync-part",
        ] {
            assert!(rules.is_ignored(temp, false), "{temp:?} with {text:?}");
        }
    }
    for p in paths.into_iter().filter(|p| scannable(p)) {
        let as_file = rules.is_ignored(p, false);
        let as_dir = rules.is_ignored(p, true);
        if as_dir {
            for inner in ["x", "y/z.txt"] {
                let path = format!("{p}/{inner}");
                assert!(
                    rules.is_ignored(&path, false),
                    "{path:?} under ignored {p:?} with {text:?}"
                );
                assert!(
                    rules.is_ignored(&path, true),
                    "{path:?} under ignored {p:?} with {text:?}"
                );
            }
        }
        let _ = as_file;
    }
});
