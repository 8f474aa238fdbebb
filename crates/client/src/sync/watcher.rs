//! Filesystem events from notify (inotify on Linux), reduced to "these
//! paths may have changed" plus whether the writer has finished.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// What the watcher reports.
#[derive(Debug)]
pub enum LocalEvent {
    /// `rel` may have changed; `settled` when its writer is done (closed
    /// after writing, renamed, removed), false while it may still be written.
    Path { rel: String, settled: bool },
    /// Events were lost (queue overflow, watcher error): rescan everything.
    Rescan,
}

/// Starts watching `dir` recursively. Keep the returned watcher alive.
///
/// # Errors
/// When the folder cannot be watched.
pub fn start(
    dir: &Path,
) -> notify::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<LocalEvent>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let root: PathBuf = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let root2 = root.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error; rescanning");
                let _ = tx.send(LocalEvent::Rescan);
                return;
            }
        };
        if event.need_rescan() {
            let _ = tx.send(LocalEvent::Rescan);
            return;
        }
        let settled = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => return,
            EventKind::Create(CreateKind::Folder) => true,
            EventKind::Create(_) => false,
            EventKind::Modify(ModifyKind::Name(_)) => true,
            EventKind::Modify(_) => false,
            // A deletion waits for the folder to be quiet: `rm -rf` of a
            // tree is seen whole, so the safety stop can judge it.
            EventKind::Remove(_) => false,
            EventKind::Any | EventKind::Other => true,
        };
        for path in event.paths {
            let Ok(rel) = path.strip_prefix(&root2) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            if rel.is_empty() || rel == ".distribusync" || rel.starts_with(".distribusync/") {
                continue;
            }
            let _ = tx.send(LocalEvent::Path {
                rel: rel.to_owned(),
                settled,
            });
        }
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}
