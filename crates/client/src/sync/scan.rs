//! Reading the local folder: which files exist, and their content hashes.
//! A file whose size, mtime and inode match what is already known is not
//! read again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use distribusync_core::{ContentHash, RemotePath};

use super::ignore::IgnoreRules;
use super::state::{BaseEntry, FileStat};

/// A local file as last scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    pub stat: FileStat,
    pub hash: ContentHash,
    /// The name on disk when it differs from the remote path (a name in
    /// Unicode NFD, as macOS writes them).
    pub disk_name: Option<String>,
}

/// The local view of the folder.
#[derive(Debug, Default, Clone)]
pub struct LocalView {
    pub files: BTreeMap<RemotePath, LocalEntry>,
    /// Files that exist but could not be read (or named) this time; sync
    /// leaves them alone and tries again later.
    pub unreadable: BTreeSet<RemotePath>,
}

pub fn stat_of(meta: &fs::Metadata) -> FileStat {
    FileStat {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        inode: meta.ino(),
    }
}

/// Scans one synced folder.
#[derive(Debug)]
pub struct Scanner {
    pub dir: PathBuf,
    pub ignore: IgnoreRules,
}

impl Scanner {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ignore: IgnoreRules::load(dir),
        }
    }

    /// The local path of a remote path (using the on-disk name if known).
    pub fn local_path(&self, path: &RemotePath, view: &LocalView) -> PathBuf {
        let rel = view
            .files
            .get(path)
            .and_then(|e| e.disk_name.clone())
            .unwrap_or_else(|| path.to_string());
        self.dir.join(rel)
    }

    /// Scans the whole folder.
    pub fn full(&self, old: &LocalView, base: &BTreeMap<RemotePath, BaseEntry>) -> LocalView {
        let mut view = LocalView::default();
        self.walk("", old, base, &mut view);
        view
    }

    /// Re-reads just the given paths (relative, as on disk): files,
    /// folders (recursively) or paths that no longer exist.
    pub fn refresh(
        &self,
        view: &mut LocalView,
        rels: &BTreeSet<String>,
        base: &BTreeMap<RemotePath, BaseEntry>,
    ) {
        let old = view.clone();
        for rel in rels {
            // Forget what was known at or under `rel`, then read it afresh.
            let under = |name: &str| name == rel || name.starts_with(&format!("{rel}/"));
            view.files
                .retain(|p, e| !under(e.disk_name.as_deref().unwrap_or(p.as_str())));
            view.unreadable.retain(|p| !under(p.as_str()));
            if self.ignore.is_ignored(rel, false) {
                continue;
            }
            match fs::symlink_metadata(self.dir.join(rel)) {
                Ok(m) if m.is_dir() => self.walk(rel, &old, base, view),
                Ok(m) if m.is_file() => self.add_file(rel, &m, &old, base, view),
                _ => {}
            }
        }
    }

    fn walk(
        &self,
        rel: &str,
        old: &LocalView,
        base: &BTreeMap<RemotePath, BaseEntry>,
        view: &mut LocalView,
    ) {
        let mut stack = vec![rel.to_owned()];
        while let Some(dir_rel) = stack.pop() {
            let dir = if dir_rel.is_empty() {
                self.dir.clone()
            } else {
                self.dir.join(&dir_rel)
            };
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read folder; skipped this time");
                    if let Ok(p) = RemotePath::normalized(&dir_rel) {
                        // Everything known below it stays as it was.
                        for (k, v) in old.files.range(p.clone()..) {
                            if !k.is_inside(&p) {
                                break;
                            }
                            view.unreadable.insert(k.clone());
                            let _ = v;
                        }
                    }
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    tracing::warn!(dir = %dir.display(), name = ?name, "file name is not UTF-8; not synced");
                    continue;
                };
                let sub = if dir_rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{dir_rel}/{name}")
                };
                let Ok(meta) = entry.metadata() else { continue };
                let ft = meta.file_type();
                if self.ignore.is_ignored(&sub, ft.is_dir()) {
                    continue;
                }
                if ft.is_dir() {
                    stack.push(sub);
                } else if ft.is_file() {
                    self.add_file(&sub, &meta, old, base, view);
                } else if ft.is_symlink() {
                    tracing::debug!(path = %sub, "symbolic link: not synced");
                }
            }
        }
    }

    fn add_file(
        &self,
        rel: &str,
        meta: &fs::Metadata,
        old: &LocalView,
        base: &BTreeMap<RemotePath, BaseEntry>,
        view: &mut LocalView,
    ) {
        let path = match RemotePath::normalized(rel) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "local file not synced");
                return;
            }
        };
        let disk_name = (path.as_str() != rel).then(|| rel.to_owned());
        if view.files.contains_key(&path) {
            tracing::warn!(%path, "two local names differ only in Unicode form; the second is not synced");
            view.unreadable.insert(path);
            return;
        }
        let stat = stat_of(meta);
        let known = old
            .files
            .get(&path)
            .filter(|e| e.stat == stat)
            .map(|e| e.hash)
            .or_else(|| base.get(&path).filter(|b| b.stat == stat).map(|b| b.hash));
        let hash = match known {
            Some(h) => h,
            None => match crate::files::hash_local(&self.dir.join(rel)) {
                // The file changed while it was read: hash what is there
                // next time rather than trust a torn read.
                Ok((h, n)) if n == stat.size => h,
                Ok(_) => {
                    view.unreadable.insert(path);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%path, error = %e, "cannot read local file; skipped, will retry");
                    view.unreadable.insert(path);
                    return;
                }
            },
        };
        view.files.insert(
            path,
            LocalEntry {
                stat,
                hash,
                disk_name,
            },
        );
    }
}
