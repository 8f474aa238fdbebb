//! Per-path locks, hierarchical so that folder renames exclude work inside
//! the folder, without any global lock.
//!
//! An operation on `a/b/c` takes shared locks on `a` and `a/b` and an
//! exclusive lock on `a/b/c`. Renaming the folder `a` takes an exclusive lock
//! on `a`, so it waits for (and blocks) every operation below it, while work
//! on other paths goes on. Locks are always taken in one global order (byte
//! order of the path), so two operations can never deadlock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use distribusync_core::RemotePath;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The lock table. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct PathLocks {
    // A std Mutex: held only to look up or insert an entry, never across
    // an await.
    table: Mutex<HashMap<String, Weak<RwLock<()>>>>,
}

/// Held locks; dropping it releases them.
#[derive(Debug)]
pub struct PathGuard {
    _held: Vec<Held>,
}

#[derive(Debug)]
enum Held {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

impl PathLocks {
    /// Locks every path in `targets` exclusively and their ancestors shared.
    pub async fn lock(&self, targets: &[&RemotePath]) -> PathGuard {
        let mut wanted: BTreeMap<String, bool> = BTreeMap::new();
        for t in targets {
            for a in t.ancestors() {
                wanted.entry(a.as_str().to_owned()).or_insert(false);
            }
            wanted.insert(t.as_str().to_owned(), true);
        }
        let locks: Vec<(Arc<RwLock<()>>, bool)> = {
            let mut table = self.table.lock().expect("lock table poisoned");
            if table.len() > 4096 {
                table.retain(|_, w| w.strong_count() > 0);
            }
            wanted
                .into_iter()
                .map(|(path, exclusive)| {
                    let entry = table.entry(path).or_default();
                    let lock = entry.upgrade().unwrap_or_else(|| {
                        let fresh = Arc::new(RwLock::new(()));
                        *entry = Arc::downgrade(&fresh);
                        fresh
                    });
                    (lock, exclusive)
                })
                .collect()
        };
        let mut held = Vec::with_capacity(locks.len());
        for (lock, exclusive) in locks {
            held.push(if exclusive {
                Held::Exclusive(lock.write_owned().await)
            } else {
                Held::Shared(lock.read_owned().await)
            });
        }
        PathGuard { _held: held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    #[tokio::test]
    async fn different_paths_do_not_wait_for_each_other() {
        let locks = PathLocks::default();
        let _a = locks.lock(&[&p("a/x")]).await;
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock(&[&p("a/y")])).await;
        assert!(b.is_ok());
    }

    #[tokio::test]
    async fn a_folder_lock_excludes_work_inside_it() {
        let locks = Arc::new(PathLocks::default());
        let folder = locks.lock(&[&p("a")]).await;
        let l2 = locks.clone();
        let inside = tokio::spawn(async move {
            let _g = l2.lock(&[&p("a/b/c")]).await;
        });
        tokio::task::yield_now().await;
        assert!(!inside.is_finished());
        drop(folder);
        tokio::time::timeout(Duration::from_secs(5), inside)
            .await
            .expect("released")
            .unwrap();
    }
}
