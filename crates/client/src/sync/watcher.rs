//! Filesystem events from notify (inotify on Linux), reduced to "these
//! paths may have changed" plus whether the writer has finished.
//!
//! inotify needs one watch per folder, out of a per-user system limit
//! (`fs.inotify.max_user_watches`). A tree with more folders than that is
//! still synced: the folders watched before the limit was hit keep their
//! events, the watcher reports [`LocalEvent::LimitReached`] (at start or
//! when a new folder cannot be watched) and the engine finds the rest by
//! rescanning more often.

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
    /// Some folders could not be watched (the system's watch limit): their
    /// changes are only found by rescans.
    LimitReached,
}

/// True for notify's "the system's watch limit is reached" error.
fn is_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
}

/// The folders of `dir` (itself included, `.distribusync` not), breadth
/// first: what a recursive watch needs one inotify watch each for.
pub fn folders(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && !(i == 0 && e.file_name() == distribusync_core::RESERVED_DIR)
                {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Starts watching `dir` recursively. Keep the returned watcher alive.
/// With `limit` (tests stand in for a low system limit with it), at most
/// that many folders are watched, the first ones breadth first, as the
/// system would. Hitting either limit is reported as
/// [`LocalEvent::LimitReached`], not as an error.
///
/// # Errors
/// When the folder cannot be watched.
pub fn start(
    dir: &Path,
    limit: Option<usize>,
) -> notify::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<LocalEvent>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx_limit = tx.clone();
    let root: PathBuf = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let root2 = root.clone();
    // With a limit of our own: the folders to watch, and whether some
    // cannot be (then a new folder cannot be either, as with inotify).
    let listed = limit.map(|l| (l, folders(&root)));
    let over = listed.as_ref().is_some_and(|(l, all)| all.len() > *l);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(e) => e,
            Err(e) if is_limit(&e) => {
                let _ = tx.send(LocalEvent::LimitReached);
                return;
            }
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
        if over && matches!(event.kind, EventKind::Create(CreateKind::Folder)) {
            let _ = tx.send(LocalEvent::LimitReached);
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
    match listed {
        Some((limit, all)) => {
            if all.len() > limit {
                for folder in &all[..limit] {
                    watcher.watch(folder, RecursiveMode::NonRecursive)?;
                }
                let _ = tx_limit.send(LocalEvent::LimitReached);
            } else {
                watcher.watch(&root, RecursiveMode::Recursive)?;
            }
        }
        None => match watcher.watch(&root, RecursiveMode::Recursive) {
            // The folders watched before the limit stay watched.
            Err(e) if is_limit(&e) => {
                let _ = tx_limit.send(LocalEvent::LimitReached);
            }
            r => r?,
        },
    }
    Ok((watcher, rx))
}
