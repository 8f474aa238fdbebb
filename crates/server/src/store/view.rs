//! [`View`]: the store as one caller may see it. The one place where a
//! token's folder (its prefix) is enforced.
//!
//! Invariants: a path outside the caller's folder is refused
//! PERMISSION_DENIED whether or not it exists (the answer must not tell);
//! List answers only files inside it; a rename must start and end inside
//! it; the change log is filtered so that a change crossing the folder's
//! edge reads as deletes (files that left) and puts (files that came in).
//! Paths keep their full form (`photos/a.jpg`, not `a.jpg`): the same file
//! has the same name for every caller, in listings, the log and errors.

use distribusync_core::{RemotePath, Revision};

use super::{
    ChangeOp, ChangeRecord, DeltaHeader, DeltaSources, DeltaWrite, FileRecord, LockPass, Store,
    Upload, UploadHeader,
};
use crate::auth::Identity;
use crate::error::{Result, ServiceError};

/// Files listed per index read when a folder rename is translated.
const RENAME_PAGE: u32 = 1000;

/// The store seen by `who`: a cheap clone of both.
#[derive(Debug, Clone)]
pub struct View {
    store: Store,
    who: Identity,
    /// The WebDAV lock tokens this caller's writes may pass (a WebDAV
    /// request's, from its `If` header; none for anyone else).
    locks: LockPass,
}

/// True when `a` and `b` are equal or one lies inside the other.
fn overlaps(a: &RemotePath, b: &RemotePath) -> bool {
    a == b || a.is_inside(b) || b.is_inside(a)
}

impl Store {
    /// This store as `who` sees it.
    pub fn view(&self, who: Identity) -> View {
        View {
            store: self.clone(),
            locks: LockPass {
                owner: who.name.to_string(),
                tokens: Vec::new(),
            },
            who,
        }
    }
}

impl View {
    /// This view for a WebDAV request that submitted these lock tokens.
    #[must_use]
    pub fn with_lock_tokens(mut self, tokens: Vec<String>) -> View {
        self.locks.tokens = tokens;
        self
    }

    /// This view, also passing the lock `token` (one this request was
    /// just granted).
    #[must_use]
    pub fn passing(mut self, token: String) -> View {
        self.locks.tokens.push(token);
        self
    }

    /// Refuses up front a write to a path a WebDAV lock this caller does
    /// not hold covers (a fast answer: the store checks again when the
    /// write commits).
    fn unlocked(&self, paths: &[&RemotePath]) -> Result<()> {
        self.store.obey_dav_locks(paths, &self.locks)
    }

    pub fn who(&self) -> &Identity {
        &self.who
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// See [`Store::begin_upload`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn begin_upload(&self, mut header: UploadHeader) -> Result<Upload> {
        self.who.confine(&header.path)?;
        self.unlocked(&[&header.path])?;
        header.locks = self.locks.clone();
        self.store.begin_upload(header).await
    }

    /// See [`Store::upload_offset`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn upload_offset(
        &self,
        path: RemotePath,
        size: u64,
        modified: std::time::SystemTime,
    ) -> Result<u64> {
        self.who.confine(&path)?;
        self.store.upload_offset(path, size, modified).await
    }

    /// See [`Store::upload_batch`]; a file outside the folder gets its own
    /// PERMISSION_DENIED result, the others are uploaded.
    ///
    /// # Errors
    /// The store's, for the whole group.
    pub async fn upload_batch(
        &self,
        files: Vec<(UploadHeader, Vec<u8>)>,
    ) -> Result<Vec<Result<FileRecord>>> {
        let mut slots: Vec<Option<Result<FileRecord>>> = Vec::with_capacity(files.len());
        let mut inside = Vec::with_capacity(files.len());
        for mut f in files {
            f.0.locks = self.locks.clone();
            match self
                .who
                .confine(&f.0.path)
                .and_then(|()| self.unlocked(&[&f.0.path]))
            {
                Ok(()) => {
                    slots.push(None);
                    inside.push(f);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        let mut done = if inside.is_empty() {
            Vec::new()
        } else {
            self.store.upload_batch(inside).await?
        }
        .into_iter();
        Ok(slots
            .into_iter()
            .map(|s| {
                s.or_else(|| done.next())
                    .unwrap_or_else(|| Err(ServiceError::InvalidArgument("lost a result".into())))
            })
            .collect())
    }

    /// See [`Store::delta_plan`]: sources are only files this caller may
    /// read.
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn delta_plan(&self, header: &DeltaHeader) -> Result<DeltaSources> {
        self.who.confine(&header.path)?;
        self.store.delta_plan(&self.who, header).await
    }

    /// See [`Store::find_chunks`]: only files this caller may read count.
    ///
    /// # Errors
    /// The store's.
    pub async fn find_chunks(
        &self,
        chunks: Vec<distribusync_core::delta::ChunkRef>,
    ) -> Result<Vec<bool>> {
        self.store.find_chunks(&self.who, chunks).await
    }

    /// See [`Store::begin_delta`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn begin_delta(
        &self,
        mut header: DeltaHeader,
        sources: DeltaSources,
    ) -> Result<DeltaWrite> {
        self.who.confine(&header.path)?;
        self.unlocked(&[&header.path])?;
        header.locks = self.locks.clone();
        self.store.begin_delta(header, sources).await
    }

    /// See [`Store::refine_delta`] (the sources were confined when planned).
    ///
    /// # Errors
    /// The store's.
    pub async fn refine_delta(
        &self,
        sources: DeltaSources,
        regions: Vec<distribusync_core::delta::Region>,
        lists: Vec<Vec<distribusync_core::delta::ChunkRef>>,
    ) -> Result<DeltaSources> {
        self.store.refine_delta(sources, regions, lists).await
    }

    /// See [`Store::fine_pieces`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn fine_pieces(
        &self,
        path: &RemotePath,
        revision: Revision,
        chunks: Vec<u32>,
    ) -> Result<Vec<Vec<distribusync_core::delta::ChunkRef>>> {
        self.who.confine(path)?;
        self.store.fine_pieces(path, revision, chunks).await
    }

    /// See [`Store::manifest_of`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn manifest_of(
        &self,
        path: &RemotePath,
    ) -> Result<(FileRecord, distribusync_core::delta::Manifest)> {
        self.who.confine(path)?;
        if let Some(c) = self.store.cluster() {
            // The cluster records every file's manifest with it.
            return Store::cluster_manifest(c, path).await;
        }
        let (record, m, _) = self.store.manifest_of(path).await?;
        Ok((record, m))
    }

    /// See [`Store::stat`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn stat(&self, path: &RemotePath) -> Result<FileRecord> {
        self.who.confine(path)?;
        self.store.stat(path).await
    }

    /// See [`Store::open_read`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn open_read(&self, path: &RemotePath) -> Result<(FileRecord, std::fs::File)> {
        self.who.confine(path)?;
        self.store.open_read(path).await
    }

    /// See [`Store::open_content`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn open_content(&self, path: &RemotePath) -> Result<(FileRecord, super::Content)> {
        self.who.confine(path)?;
        self.store.open_content(path).await
    }

    /// See [`Store::delete`].
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn delete(&self, path: &RemotePath, if_revision: Option<Revision>) -> Result<u64> {
        self.who.confine(path)?;
        self.unlocked(&[path])?;
        self.store.delete(path, if_revision, &self.locks).await
    }

    /// See [`Store::rename`]: both ends must lie inside the folder.
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`], or the store's.
    pub async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        overwrite: bool,
        if_revision: Option<Revision>,
    ) -> Result<(u64, u64)> {
        self.who.confine(from)?;
        self.who.confine(to)?;
        self.unlocked(&[from, to])?;
        self.store
            .rename(from, to, overwrite, if_revision, &self.locks)
            .await
    }

    /// What `prefix` (a List's) lists for this caller: `None` when nothing
    /// (it lies outside the folder).
    pub fn list_prefix(&self, prefix: Option<RemotePath>) -> Option<Option<RemotePath>> {
        let Some(mine) = &self.who.prefix else {
            return Some(prefix);
        };
        match prefix {
            None => Some(Some(mine.clone())),
            Some(p) if p.is_inside(mine) => Some(Some(p)),
            Some(p) if mine.is_inside(&p) || &p == mine => Some(Some(mine.clone())),
            Some(_) => None,
        }
    }

    /// See [`Store::list_page`]; `prefix` comes from [`View::list_prefix`].
    ///
    /// # Errors
    /// The store's.
    pub async fn list_page(
        &self,
        prefix: Option<RemotePath>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<FileRecord>> {
        let mut page = self.store.list_page(prefix, after, limit).await?;
        // A file named as the folder itself (`photos` beside no `photos/`)
        // is not inside it.
        page.retain(|f| self.who.sees(&f.path));
        Ok(page)
    }

    /// `change` as this caller sees it: itself, nothing, or (for a rename
    /// across the folder's edge) deletes and puts, all with its `seq`.
    ///
    /// # Errors
    /// The index's, while a folder rename's files are read.
    pub async fn visible(&self, change: ChangeRecord) -> Result<Vec<ChangeRecord>> {
        let Some(mine) = &self.who.prefix else {
            return Ok(vec![change]);
        };
        let sees = |p: &RemotePath| p.is_inside(mine);
        match change.op {
            ChangeOp::Put | ChangeOp::Delete => Ok(if sees(&change.path) {
                vec![change]
            } else {
                Vec::new()
            }),
            ChangeOp::Rename => {
                let Some(to) = change.new_path.clone() else {
                    return Ok(Vec::new());
                };
                let from = change.path.clone();
                if sees(&from) && sees(&to) {
                    return Ok(vec![change]);
                }
                if !change.folder {
                    return Ok(if sees(&from) {
                        vec![ChangeRecord {
                            op: ChangeOp::Delete,
                            new_path: None,
                            hash: None,
                            size: 0,
                            ..change
                        }]
                    } else if sees(&to) {
                        vec![ChangeRecord {
                            op: ChangeOp::Put,
                            path: to,
                            new_path: None,
                            ..change
                        }]
                    } else {
                        Vec::new()
                    });
                }
                if !overlaps(&from, mine) && !overlaps(&to, mine) {
                    return Ok(Vec::new());
                }
                self.translate_folder_rename(&change, &from, &to).await
            }
        }
    }

    /// The files now under `to` that were (as `from/…`) or are inside the
    /// folder, as deletes of their old paths and puts of their new ones.
    /// They are read as they are now: a later change to one of them comes
    /// after in the log anyway.
    async fn translate_folder_rename(
        &self,
        change: &ChangeRecord,
        from: &RemotePath,
        to: &RemotePath,
    ) -> Result<Vec<ChangeRecord>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_page(Some(to.clone()), after.clone(), RENAME_PAGE)
                .await?;
            let last = page.len() < RENAME_PAGE as usize;
            after = page.last().map(|f| f.path.to_string());
            for f in page {
                let Some(old) = f.path.rebase(to, from) else {
                    continue;
                };
                let (was, is) = (self.who.sees(&old), self.who.sees(&f.path));
                if was && !is {
                    out.push(ChangeRecord {
                        seq: change.seq,
                        op: ChangeOp::Delete,
                        path: old,
                        new_path: None,
                        revision: f.revision,
                        size: 0,
                        hash: None,
                        modified_ns: f.modified_ns,
                        folder: false,
                    });
                } else if is && !was {
                    out.push(ChangeRecord {
                        seq: change.seq,
                        op: ChangeOp::Put,
                        path: f.path,
                        new_path: None,
                        revision: f.revision,
                        size: f.size,
                        hash: Some(f.hash),
                        modified_ns: f.modified_ns,
                        folder: false,
                    });
                }
            }
            if last {
                return Ok(out);
            }
        }
    }
}
