//! The store's side of WebDAV: folder listings, MKCOL collections and dead
//! properties, each confined like every other [`View`] method.
//!
//! Invariants: nothing here changes a file or the change log; the file
//! operations WebDAV makes (PUT, DELETE, MOVE, COPY) go through the same
//! [`View`] methods as gRPC's, so sync clients see them as any other change.

use std::collections::HashMap;
use std::time::SystemTime;

use distribusync_core::RemotePath;

use super::{DeadProp, FileRecord, Store, View};
use crate::error::{Result, ServiceError};

/// A WebDAV lock as the rest of the server sees it: gRPC writes to a
/// locked path are refused naming it (WebDAV requests are checked by
/// `dav-server` itself, against the tokens they submit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavLockNote {
    pub token: String,
    /// Who took it (the token's name).
    pub owner: String,
    /// Covers everything under a folder too.
    pub deep: bool,
    pub until: Option<SystemTime>,
}

/// The WebDAV locks held, by full path (`None`: the server's root).
/// Kept in memory: a lock is a short lease a client renews, and a restart
/// ends them as it ends the connections that hold them.
// A std Mutex: held for a map lookup, never across an await.
#[derive(Debug, Default)]
pub(crate) struct DavLocks(std::sync::Mutex<LockMap>);

/// Locks by token: where each is and what it is.
type LockMap = HashMap<String, (Option<RemotePath>, DavLockNote)>;

impl DavLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, LockMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// True when a lock at `at` (deep or not) covers a write to `path`: the
/// path itself, anything under a deep lock, anything a folder write at
/// `path` would move or remove.
fn covers(at: Option<&RemotePath>, note: &DavLockNote, path: &RemotePath) -> bool {
    match at {
        None => note.deep,
        Some(at) => at == path || (note.deep && path.is_inside(at)) || at.is_inside(path),
    }
}

impl Store {
    /// Records a WebDAV lock (taken or refreshed).
    pub fn note_dav_lock(&self, at: Option<RemotePath>, note: DavLockNote) {
        self.inner
            .dav_locks
            .map()
            .insert(note.token.clone(), (at, note));
    }

    /// Forgets the WebDAV lock with `token`, or every lock at or under
    /// `at` (a resource deleted) when `token` is `None`.
    pub fn drop_dav_lock(&self, at: Option<&RemotePath>, token: Option<&str>) {
        self.inner.dav_locks.map().retain(|_, (p, n)| match token {
            Some(t) => n.token != t,
            None => match (at, p) {
                (None, _) => false,
                (Some(a), Some(p)) => !(p == a || p.is_inside(a)),
                (Some(_), None) => true,
            },
        });
    }

    /// The first live WebDAV lock covering a write to one of `paths`.
    ///
    /// # Errors
    /// [`ServiceError::Locked`] naming the path and the lock.
    pub fn check_dav_locks(&self, paths: &[&RemotePath]) -> Result<()> {
        let now = SystemTime::now();
        let mut map = self.inner.dav_locks.map();
        map.retain(|_, (_, n)| n.until.is_none_or(|u| u > now));
        for path in paths {
            if let Some((_, note)) = map.values().find(|(at, n)| covers(at.as_ref(), n, path)) {
                return Err(ServiceError::Locked {
                    path: (*path).clone(),
                    token: note.token.clone(),
                    owner: note.owner.clone(),
                    until: note.until.map_or_else(
                        || "it is unlocked".to_owned(),
                        |u| {
                            let left = u.duration_since(now).unwrap_or_default().as_secs();
                            format!("it is unlocked or expires (in {left} s)")
                        },
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What a path is, as WebDAV sees it.
#[derive(Debug, Clone)]
pub enum Entry {
    File(FileRecord),
    /// A folder holding files, or an (empty) MKCOL collection.
    Folder,
}

impl Store {
    async fn dav<T: Send + 'static>(
        &self,
        f: impl FnOnce(&super::Index) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = self.clone();
        self.run(move || f(&s.inner.index)).await
    }
}

impl View {
    /// What is at `path`: a file, a folder, or nothing (`None`). The
    /// caller's own root (`None` path, or its prefix) is always a folder.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn entry(&self, path: Option<&RemotePath>) -> Result<Option<Entry>> {
        let Some(path) = path else {
            return Ok(Some(Entry::Folder));
        };
        if self.who().prefix.as_ref() == Some(path) {
            return Ok(Some(Entry::Folder));
        }
        self.who().confine(path)?;
        let p = path.clone();
        self.store()
            .dav(move |index| {
                if let Some(f) = index.get(&p)? {
                    return Ok(Some(Entry::File(f)));
                }
                if index.is_folder(&p)? || index.is_collection(&p)? {
                    return Ok(Some(Entry::Folder));
                }
                Ok(None)
            })
            .await
    }

    /// The files directly in `dir` and the names of its folders (with files
    /// or made by MKCOL), sorted, without repeats.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn children(
        &self,
        dir: Option<&RemotePath>,
    ) -> Result<(Vec<FileRecord>, Vec<String>)> {
        if let Some(d) = dir
            && self.who().prefix.as_ref() != Some(d)
        {
            self.who().confine(d)?;
        }
        let d = dir.cloned();
        self.store()
            .dav(move |index| {
                let (files, mut folders) = index.children(d.as_ref())?;
                folders.extend(index.collections_in(d.as_ref())?);
                folders.sort();
                folders.dedup();
                // A file and a collection of one name: the file wins.
                folders.retain(|n| !files.iter().any(|f| f.path.file_name() == n));
                Ok((files, folders))
            })
            .await
    }

    /// Makes `path` an (empty) collection (MKCOL).
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn make_collection(&self, path: &RemotePath) -> Result<()> {
        self.who().confine(path)?;
        let p = path.clone();
        self.store()
            .dav(move |index| index.add_collection(&p))
            .await?;
        tracing::info!(%path, "collection made (WebDAV)");
        Ok(())
    }

    /// Forgets the collections and dead properties at or under `path`
    /// (after its files were deleted or moved away).
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn forget_dav(&self, path: &RemotePath) -> Result<()> {
        self.who().confine(path)?;
        let p = path.clone();
        self.store().dav(move |index| index.forget_dav(&p)).await
    }

    /// Moves collections and dead properties along with a MOVE.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn move_dav(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        self.who().confine(from)?;
        self.who().confine(to)?;
        let (f, t) = (from.clone(), to.clone());
        self.store().dav(move |index| index.move_dav(&f, &t)).await
    }

    /// Copies a file's dead properties along with a COPY.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn copy_props(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        self.who().confine(from)?;
        self.who().confine(to)?;
        let (f, t) = (from.clone(), to.clone());
        self.store()
            .dav(move |index| index.copy_props(&f, &t))
            .await
    }

    /// The dead properties of `path` (`None`: the caller's root, which
    /// has none unless it is a token's folder).
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn props(&self, path: Option<&RemotePath>) -> Result<Vec<DeadProp>> {
        let Some(key) = self.prop_key(path)? else {
            return Ok(Vec::new());
        };
        self.store().dav(move |index| index.props(&key)).await
    }

    /// Sets and removes dead properties of `path`, all or nothing.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`]; InvalidArgument for the
    /// server's root (it has no name to store them under); the index's.
    pub async fn patch_props(
        &self,
        path: Option<&RemotePath>,
        patch: Vec<(String, String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let Some(key) = self.prop_key(path)? else {
            return Err(crate::ServiceError::InvalidArgument(
                "the server's root has no properties of its own".into(),
            ));
        };
        self.store()
            .dav(move |index| index.patch_props(&key, &patch))
            .await
    }

    /// The key dead properties of `path` are stored under: the path
    /// (a token's root: its folder); `None` for the server's root.
    fn prop_key(&self, path: Option<&RemotePath>) -> Result<Option<RemotePath>> {
        match path.or(self.who().prefix.as_ref()) {
            Some(p) => {
                if self.who().prefix.as_ref() != Some(p) {
                    self.who().confine(p)?;
                }
                Ok(Some(p.clone()))
            }
            None => Ok(None),
        }
    }
}
