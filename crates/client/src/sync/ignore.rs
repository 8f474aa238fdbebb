//! What sync leaves alone: `.distribusyncignore` (gitignore syntax), our own
//! files, and editors' temporaries.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Editor and tool temporaries that are never synced.
pub const BUILTIN: &[&str] = &[
    "*.swp",
    "*.swx",
    "*~",
    ".#*",
    "~$*",
    "4913",
    ".goutputstream-*",
    "*.distribusync-part",
    ".DS_Store",
];

/// The ignore rules for one synced folder.
#[derive(Debug)]
pub struct IgnoreRules {
    rules: Gitignore,
}

impl IgnoreRules {
    /// Reads `DIR/.distribusyncignore` (if any) on top of the built-ins.
    /// Bad lines are reported and skipped.
    pub fn load(dir: &Path) -> Self {
        let mut b = Self::builder(dir);
        let file = dir.join(".distribusyncignore");
        if file.exists()
            && let Some(e) = b.add(&file)
        {
            tracing::warn!(error = %e, "some lines of .distribusyncignore were skipped");
        }
        Self::build(b)
    }

    /// The rules of an ignore file's `text` for the folder `dir`, on top
    /// of the built-ins, as [`IgnoreRules::load`] reads them from disk
    /// (bad lines are reported and skipped).
    pub fn parse(dir: &Path, text: &str) -> Self {
        let mut b = Self::builder(dir);
        for line in text.lines() {
            if let Err(e) = b.add_line(None, line) {
                tracing::warn!(error = %e, "a line of .distribusyncignore was skipped");
            }
        }
        Self::build(b)
    }

    fn builder(dir: &Path) -> GitignoreBuilder {
        let mut b = GitignoreBuilder::new(dir);
        for pat in BUILTIN {
            let _ = b.add_line(None, pat);
        }
        b
    }

    fn build(b: GitignoreBuilder) -> Self {
        let rules = b.build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignore rules could not be built; using none");
            Gitignore::empty()
        });
        Self { rules }
    }

    /// True when `rel` (relative to the folder, '/'-separated) is ignored.
    /// Whether `rel` itself is ignored, its folders being known not to be
    /// (a walk that does not enter ignored folders checks each entry with
    /// this: one match per entry instead of one per folder above it).
    pub fn is_ignored_entry(&self, rel: &str, is_dir: bool) -> bool {
        rel == distribusync_core::RESERVED_DIR
            || rel.starts_with(".distribusync/")
            || self.rules.matched(rel, is_dir).is_ignore()
    }

    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel == distribusync_core::RESERVED_DIR || rel.starts_with(".distribusync/") {
            return true;
        }
        // As git: nothing inside an ignored folder can be re-included (the
        // scan never descends into one, so the watcher must agree, or a
        // file would flicker in and out of the local view and its next
        // full scan would read as a deletion).
        for (i, _) in rel.match_indices('/') {
            if self.rules.matched(&rel[..i], true).is_ignore() {
                return true;
            }
        }
        self.rules.matched(rel, is_dir).is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_user_rules_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".distribusyncignore"),
            "build/\n*.log\n!keep.log\n",
        )
        .unwrap();
        let r = IgnoreRules::load(dir.path());
        for ignored in [
            ".a.txt.swp",
            "notes~",
            ".#lock",
            "~$doc.docx",
            "4913",
            "build/x/y",
            "x.log",
            ".distribusync/state.db",
        ] {
            assert!(r.is_ignored(ignored, false), "{ignored}");
        }
        for kept in ["a.txt", "keep.log", "builder", "docs/build.md"] {
            assert!(!r.is_ignored(kept, false), "{kept}");
        }
    }

    /// Found by fuzzing (ignore target): `build/` with `!keep.txt`
    /// re-included `build/keep.txt` for the watcher while the scan never
    /// looks inside `build/`.
    #[test]
    fn a_file_inside_an_ignored_folder_cannot_be_re_included() {
        let r = IgnoreRules::parse(Path::new("/folder"), "build/\n!keep.txt\n");
        assert!(r.is_ignored("build", true));
        assert!(r.is_ignored("build/keep.txt", false));
        assert!(r.is_ignored("build/sub/keep.txt", false));
        assert!(!r.is_ignored("keep.txt", false));
        assert!(!r.is_ignored("src/keep.txt", false));
    }
}
