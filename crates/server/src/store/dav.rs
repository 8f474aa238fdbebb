//! The store's side of WebDAV: folder listings, MKCOL collections and dead
//! properties, each confined like every other [`View`] method.
//!
//! Invariants: nothing here changes a file or the change log; the file
//! operations WebDAV makes (PUT, DELETE, MOVE, COPY) go through the same
//! [`View`] methods as gRPC's, so sync clients see them as any other change.

use distribusync_core::RemotePath;

use super::{DeadProp, FileRecord, Inner, Store, View};
use crate::error::Result;

/// What a path is, as WebDAV sees it.
#[derive(Debug, Clone)]
pub enum Entry {
    File(FileRecord),
    /// A folder holding files, or an (empty) MKCOL collection.
    Folder(FolderTimes),
}

/// A folder's dates (ns since the epoch), as WebDAV shows them; the store
/// keeps no row per folder, so they come from where the folder lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FolderTimes {
    /// The folder's modification time on disk: when an entry was last
    /// added to it, removed or renamed in it (as `ls -l` and Apache's
    /// mod_dav show it). `None` for a collection with nothing on disk.
    pub modified_ns: Option<i64>,
    /// When MKCOL made it, for a collection.
    pub created_ns: Option<i64>,
}

impl FolderTimes {
    /// The last modification: on disk, else the collection's creation.
    pub fn modified(&self) -> Option<i64> {
        self.modified_ns.or(self.created_ns)
    }

    /// The creation: the collection's, else the first time known.
    pub fn created(&self) -> Option<i64> {
        self.created_ns.or(self.modified_ns)
    }
}

/// The dates of folder `path` (`None`: the server's root).
fn folder_times(inner: &Inner, path: Option<&RemotePath>) -> Result<FolderTimes> {
    let created_ns = match path {
        Some(p) => inner.index.collection_created(p)?,
        None => None,
    };
    Ok(FolderTimes {
        modified_ns: inner.disk.folder_modified_ns(path),
        created_ns,
    })
}

impl Store {
    async fn dav<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = self.clone();
        self.run(move || f(&s.inner)).await
    }
}

impl View {
    /// What is at `path`: a file, a folder, or nothing (`None`). The
    /// caller's own root (`None` path, or its prefix) is always a folder.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn entry(&self, path: Option<&RemotePath>) -> Result<Option<Entry>> {
        let root = path.is_none() || self.who().prefix.as_ref() == path;
        if !root && let Some(p) = path {
            self.who().confine(p)?;
        }
        let p = path.cloned();
        self.store()
            .dav(move |inner| {
                let Some(p) = p else {
                    return Ok(Some(Entry::Folder(folder_times(inner, None)?)));
                };
                if !root && let Some(f) = inner.index.get(&p)? {
                    return Ok(Some(Entry::File(f)));
                }
                if root || inner.index.is_folder(&p)? || inner.index.is_collection(&p)? {
                    return Ok(Some(Entry::Folder(folder_times(inner, Some(&p))?)));
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
    ) -> Result<(Vec<FileRecord>, Vec<(String, FolderTimes)>)> {
        if let Some(d) = dir
            && self.who().prefix.as_ref() != Some(d)
        {
            self.who().confine(d)?;
        }
        let d = dir.cloned();
        self.store()
            .dav(move |inner| {
                let index = &inner.index;
                let (files, mut folders) = index.children(d.as_ref())?;
                folders.extend(index.collections_in(d.as_ref())?);
                folders.sort();
                folders.dedup();
                // A file and a collection of one name: the file wins.
                folders.retain(|n| !files.iter().any(|f| f.path.file_name() == n));
                let mut dated = Vec::with_capacity(folders.len());
                for name in folders {
                    let full = match &d {
                        Some(d) => RemotePath::parse(&format!("{d}/{name}"))?,
                        None => RemotePath::parse(&name)?,
                    };
                    dated.push((name, folder_times(inner, Some(&full))?));
                }
                Ok((files, dated))
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
            .dav(move |inner| inner.index.add_collection(&p))
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
        self.store()
            .dav(move |inner| inner.index.forget_dav(&p))
            .await
    }

    /// Moves collections and dead properties along with a MOVE.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn move_dav(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        self.who().confine(from)?;
        self.who().confine(to)?;
        let (f, t) = (from.clone(), to.clone());
        self.store()
            .dav(move |inner| inner.index.move_dav(&f, &t))
            .await
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
            .dav(move |inner| inner.index.copy_props(&f, &t))
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
        self.store().dav(move |inner| inner.index.props(&key)).await
    }

    /// The dead properties of the paths directly in folder `dir` (`None`:
    /// the server's root), by path; paths without any are absent.
    ///
    /// # Errors
    /// [`crate::ServiceError::OutsidePrefix`], or the index's.
    pub async fn child_props(
        &self,
        dir: Option<&RemotePath>,
    ) -> Result<std::collections::HashMap<String, Vec<DeadProp>>> {
        if let Some(mine) = self.who().prefix.as_ref() {
            match dir {
                Some(d) if d == mine => {}
                Some(d) => self.who().confine(d)?,
                None => {
                    return Err(crate::ServiceError::InvalidArgument(
                        "the server's root lies outside this token's folder".into(),
                    ));
                }
            }
        }
        let d = dir.cloned();
        self.store()
            .dav(move |inner| inner.index.child_props(d.as_ref()))
            .await
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
            .dav(move |inner| inner.index.patch_props(&key, &patch))
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
