//! A local folder sent as a whole (`put -r`, the menu): which of its files
//! go where, and sending many files at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use distribusync_core::{RESERVED_DIR, RemotePath, limits};
use futures::{Stream, StreamExt};

use crate::error::{ClientError, Result};
use crate::files::{FileInfo, FilesClient, Progress};

/// Something under the folder that is not sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub local: PathBuf,
    pub why: String,
    /// An error (unreadable, a name the server cannot hold) rather than
    /// something left out by design (links, special files, sync state).
    pub failed: bool,
}

/// The regular files under a folder, each with its remote path, in remote
/// path order; and what was left out.
#[derive(Debug, Clone, Default)]
pub struct LocalTree {
    pub files: Vec<(PathBuf, RemotePath)>,
    pub skipped: Vec<Skipped>,
}

/// Lists the files under `dir` to be sent under `base` (`None`: at the top
/// of the server). Names the server could not hold (not UTF-8, breaking a
/// path rule), symbolic links and special files, folders that cannot be
/// read, and DistribuSync's own `.distribusync` folders (sync state) are
/// skipped and reported, never sent: one bad name does not stop the rest.
///
/// # Errors
/// Only when `dir` itself cannot be read.
pub fn local_tree(dir: &Path, base: Option<&RemotePath>) -> Result<LocalTree> {
    let mut tree = LocalTree::default();
    // Folders wait as paths, not open handles, so a tree with more folders
    // than the open-file limit is listed whole.
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((folder, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) if rel.is_empty() => return Err(ClientError::local(dir, e)),
            Err(e) => {
                tree.skipped.push(Skipped {
                    local: folder,
                    why: e.to_string(),
                    failed: true,
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tree.skipped.push(Skipped {
                        local: folder.clone(),
                        why: e.to_string(),
                        failed: true,
                    });
                    continue;
                }
            };
            let local = entry.path();
            let mut skip = |why: String, failed: bool| {
                tree.skipped.push(Skipped {
                    local: local.clone(),
                    why,
                    failed,
                })
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skip("name is not UTF-8".into(), true);
                continue;
            };
            let sub = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = match entry.file_type() {
                Ok(k) => k,
                Err(e) => {
                    skip(e.to_string(), true);
                    continue;
                }
            };
            if kind.is_dir() {
                if name == RESERVED_DIR {
                    skip("DistribuSync's own folder (sync state)".into(), false);
                    continue;
                }
                stack.push((local.clone(), sub));
            } else if kind.is_file() {
                let target = match base {
                    Some(b) => format!("{b}/{sub}"),
                    None => sub,
                };
                match RemotePath::normalized(&target) {
                    Ok(remote) => tree.files.push((local, remote)),
                    Err(e) => skip(e.to_string(), true),
                }
            } else if kind.is_symlink() {
                skip("a symbolic link (links are not followed)".into(), false);
            } else {
                skip("not a regular file".into(), false);
            }
        }
    }
    tree.files.sort_by(|a, b| a.1.cmp(&b.1));
    tree.skipped.sort_by(|a, b| a.local.cmp(&b.local));
    Ok(tree)
}

/// Makes the progress observer of one streamed file.
pub type ProgressFor = Arc<dyn Fn(&RemotePath) -> Arc<dyn Progress> + Send + Sync>;

impl FilesClient {
    /// Uploads many files, `parallel` requests at a time: small ones many
    /// to a batch, the rest one by one (resumable, with `progress_for`'s
    /// observer), as [`limits::plan_uploads`] says. Yields each file's
    /// result as it is known, in no particular order.
    pub fn upload_many(
        &self,
        files: Vec<(PathBuf, RemotePath)>,
        parallel: usize,
        progress_for: ProgressFor,
    ) -> impl Stream<Item = (PathBuf, Result<FileInfo>)> + use<> {
        type Results = Vec<(PathBuf, Result<FileInfo>)>;
        // A file whose size cannot be read goes alone, where the upload
        // reports why.
        let sizes: Vec<u64> = files
            .iter()
            .map(|(local, _)| std::fs::metadata(local).map_or(u64::MAX, |m| m.len()))
            .collect();
        let plan = limits::plan_uploads(&sizes);
        let mut files: Vec<Option<(PathBuf, RemotePath)>> = files.into_iter().map(Some).collect();
        let mut work: Vec<futures::future::BoxFuture<'static, Results>> = Vec::new();
        for batch in plan.batches {
            let items: Vec<(PathBuf, RemotePath)> =
                batch.iter().filter_map(|&i| files[i].take()).collect();
            let client = self.clone();
            work.push(Box::pin(async move {
                let locals: Vec<PathBuf> = items.iter().map(|(l, _)| l.clone()).collect();
                let request = items.into_iter().map(|(l, r)| (l, r, None)).collect();
                match client.upload_batch(request).await {
                    Ok(results) => locals.into_iter().zip(results).collect(),
                    // The whole batch failed, so every file in it did.
                    Err(e) => locals
                        .into_iter()
                        .map(|l| (l, Err(e.duplicate())))
                        .collect(),
                }
            }));
        }
        for i in plan.singles {
            let Some((local, remote)) = files[i].take() else {
                continue;
            };
            let client = self.clone();
            let progress_for = progress_for.clone();
            work.push(Box::pin(async move {
                // The bar appears when the transfer starts, not before.
                let progress = progress_for(&remote);
                let r = client.upload(&local, &remote, None, progress).await;
                vec![(local, r)]
            }));
        }
        futures::stream::iter(work)
            .buffer_unordered(parallel.max(1))
            .flat_map(futures::stream::iter)
    }
}
