//! [`LocalMetadata`]: the SQLite index behind the [`Metadata`] and
//! [`ChangeFeed`] traits, for one process.
//!
//! Invariants: every precondition of a change (`if_revision`, a folder in
//! the way, a name taken) is read inside the transaction that commits it;
//! SQLite has one writer at a time, so that transaction sees the state it
//! changes. A change is announced to subscribers after its transaction
//! committed. The [`super::super::Store`] keeps its own path locks and
//! checks before it changes the disk; this adapter is the same index seen
//! through the backend traits, and what the backend test suite runs against
//! beside PostgreSQL.

use std::path::Path;
use std::sync::Arc;

use distribusync_core::delta::Manifest;
use distribusync_core::{RemotePath, Revision};
use rusqlite::{OptionalExtension, Transaction, params};
use tokio::sync::broadcast;

use super::{ChangeRecord, FILE_COLS, FileRecord, Index, file_row, folder_range, to_i64};
use crate::error::Result;
use crate::store::backend::{
    BoxFuture, ChangeFeed, Committed, Metadata, NewVersion, RenameFacts, check_put, check_rename,
    manifest_of, nothing_to_delete,
};
use crate::store::{ChunkIndex, chunks};

/// The SQLite index as a metadata backend; a cheap clone.
#[derive(Debug, Clone)]
pub struct LocalMetadata {
    index: Arc<Index>,
    changes: broadcast::Sender<ChangeRecord>,
}

fn get_in(tx: &Transaction<'_>, path: &RemotePath) -> Result<Option<FileRecord>> {
    Ok(tx
        .prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE path = ?1"))?
        .query_row([path.as_str()], file_row)
        .optional()?)
}

fn folder_in(tx: &Transaction<'_>, dir: &RemotePath) -> Result<bool> {
    let (lo, hi) = folder_range(dir);
    Ok(tx
        .prepare_cached("SELECT 1 FROM files WHERE path >= ?1 AND path < ?2 LIMIT 1")?
        .query_row([lo, hi], |_| Ok(()))
        .optional()?
        .is_some())
}

fn longest_in(tx: &Transaction<'_>, dir: &RemotePath) -> Result<Option<usize>> {
    let (lo, hi) = folder_range(dir);
    let longest: Option<i64> = tx
        .prepare_cached(
            "SELECT MAX(LENGTH(CAST(path AS BLOB))) FROM files WHERE path >= ?1 AND path < ?2",
        )?
        .query_row([lo, hi], |r| r.get(0))?;
    Ok(longest.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
}

impl LocalMetadata {
    /// Opens (creating if needed) the SQLite index at `path`, keeping
    /// `max_changes` entries of the change log.
    ///
    /// # Errors
    /// When SQLite cannot open or initialise the database.
    pub fn open(path: &Path, max_changes: u64) -> Result<Self> {
        let index = Index::open(path, max_changes)?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Self {
            index: Arc::new(index),
            changes,
        })
    }

    /// Runs `f` on the index on the blocking pool.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let index = self.index.clone();
        Box::pin(crate::store::blocking(move || f(&index)))
    }

    fn announce(&self, changes: impl IntoIterator<Item = ChangeRecord>) {
        for c in changes {
            // No receivers is fine: nobody is watching.
            let _ = self.changes.send(c);
        }
    }
}

fn commit_puts(ix: &Index, puts: &[NewVersion]) -> Result<Committed> {
    ix.with(|c| {
        let tx = c.transaction()?;
        let mut out = Vec::with_capacity(puts.len());
        for put in puts {
            if let Err(e) = check_put(put, get_in(&tx, &put.path)?.as_ref()) {
                out.push(Err(e));
                continue;
            }
            let mut change =
                ChangeRecord::put(0, put.path.clone(), put.size, put.hash, put.modified_ns);
            let seq = Index::append(&tx, &change)?;
            tx.prepare_cached(
                "INSERT INTO files (path, size, hash, revision, modified_ns) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(path) DO UPDATE SET size = ?2, hash = ?3, revision = ?4, modified_ns = ?5",
            )?
            .execute(params![
                put.path.as_str(),
                to_i64(put.size),
                put.hash.0.to_vec(),
                to_i64(seq),
                put.modified_ns
            ])?;
            ix.prune(&tx, seq)?;
            if let Some(m) = manifest_of(put) {
                chunks::record(&tx, &put.path, seq, m)?;
            }
            change.seq = seq;
            change.revision = seq;
            let record = FileRecord {
                path: put.path.clone(),
                size: put.size,
                hash: put.hash,
                revision: seq,
                modified_ns: put.modified_ns,
            };
            out.push(Ok((record, change)));
        }
        tx.commit()?;
        Ok(out)
    })
}

fn commit_delete(
    ix: &Index,
    path: RemotePath,
    if_revision: Option<Revision>,
) -> Result<ChangeRecord> {
    ix.with(|c| {
        let tx = c.transaction()?;
        let Some(current) = get_in(&tx, &path)? else {
            let folder = folder_in(&tx, &path)?;
            return Err(nothing_to_delete(path, folder));
        };
        crate::store::check_revision(&path, Some(&current), if_revision)?;
        let mut change = ChangeRecord::delete(0, path);
        change.seq = Index::append(&tx, &change)?;
        tx.execute("DELETE FROM files WHERE path = ?1", [change.path.as_str()])?;
        ix.prune(&tx, change.seq)?;
        tx.commit()?;
        Ok(change)
    })
}

fn commit_rename(
    ix: &Index,
    from: RemotePath,
    to: RemotePath,
    overwrite: bool,
    if_revision: Option<Revision>,
) -> Result<(ChangeRecord, u64)> {
    crate::store::backend::check_rename_paths(&from, &to)?;
    ix.with(|c| {
        let tx = c.transaction()?;
        let from_file = get_in(&tx, &from)?;
        let from_folder = from_file.is_none() && folder_in(&tx, &from)?;
        let facts = RenameFacts {
            longest_inside: if from_folder {
                longest_in(&tx, &from)?
            } else {
                None
            },
            from_file,
            from_folder,
            to_folder: folder_in(&tx, &to)?,
            to_file: get_in(&tx, &to)?.is_some(),
        };
        let folder = check_rename(&from, &to, overwrite, if_revision, &facts)?;
        let moved: Vec<FileRecord> = if folder {
            let (lo, hi) = folder_range(&from);
            let mut st = tx.prepare(&format!(
                "SELECT {FILE_COLS} FROM files WHERE path >= ?1 AND path < ?2"
            ))?;
            st.query_map([lo, hi], file_row)?
                .collect::<rusqlite::Result<_>>()?
        } else {
            facts.from_file.clone().into_iter().collect()
        };
        let single = facts.from_file.as_ref();
        let mut change = ChangeRecord::rename(0, from.clone(), to.clone(), single, folder);
        let seq = Index::append(&tx, &change)?;
        if !folder {
            tx.execute("DELETE FROM files WHERE path = ?1", [to.as_str()])?;
        }
        for f in &moved {
            let Some(new) = f.path.rebase(&from, &to) else {
                continue;
            };
            tx.execute(
                "UPDATE files SET path = ?1, revision = ?2 WHERE path = ?3",
                params![new.as_str(), to_i64(seq), f.path.as_str()],
            )?;
        }
        ix.prune(&tx, seq)?;
        tx.commit()?;
        change.seq = seq;
        change.revision = seq;
        Ok((change, moved.len() as u64))
    })
}

impl Metadata for LocalMetadata {
    fn get(&self, path: RemotePath) -> BoxFuture<'_, Result<Option<FileRecord>>> {
        self.run(move |ix| ix.get(&path))
    }

    fn is_folder(&self, dir: RemotePath) -> BoxFuture<'_, Result<bool>> {
        self.run(move |ix| ix.is_folder(&dir))
    }

    fn list_page(
        &self,
        prefix: Option<RemotePath>,
        after: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FileRecord>>> {
        self.run(move |ix| ix.list_page(prefix.as_ref(), after.as_deref(), limit))
    }

    fn commit_puts(&self, puts: Vec<NewVersion>) -> BoxFuture<'_, Result<Committed>> {
        let done = self.run(move |ix| commit_puts(ix, &puts));
        Box::pin(async move {
            let done = done.await?;
            self.announce(
                done.iter()
                    .filter_map(|r| r.as_ref().ok())
                    .map(|(_, c)| c.clone()),
            );
            Ok(done)
        })
    }

    fn commit_delete(
        &self,
        path: RemotePath,
        if_revision: Option<Revision>,
    ) -> BoxFuture<'_, Result<ChangeRecord>> {
        let done = self.run(move |ix| commit_delete(ix, path, if_revision));
        Box::pin(async move {
            let change = done.await?;
            self.announce([change.clone()]);
            Ok(change)
        })
    }

    fn commit_rename(
        &self,
        from: RemotePath,
        to: RemotePath,
        overwrite: bool,
        if_revision: Option<Revision>,
    ) -> BoxFuture<'_, Result<(ChangeRecord, u64)>> {
        let done = self.run(move |ix| commit_rename(ix, from, to, overwrite, if_revision));
        Box::pin(async move {
            let (change, moved) = done.await?;
            self.announce([change.clone()]);
            Ok((change, moved))
        })
    }

    fn changes_since(&self, since: u64, limit: u32) -> BoxFuture<'_, Result<Vec<ChangeRecord>>> {
        self.run(move |ix| ix.changes_since(since, limit))
    }

    fn log_bounds(&self) -> BoxFuture<'_, Result<(u64, u64)>> {
        self.run(Index::log_bounds)
    }

    fn totals(&self) -> BoxFuture<'_, Result<(u64, u64)>> {
        self.run(Index::totals)
    }

    fn manifest(
        &self,
        path: RemotePath,
        revision: Revision,
    ) -> BoxFuture<'_, Result<Option<Manifest>>> {
        self.run(move |ix| ChunkIndex::manifest(ix, &path, revision))
    }
}

impl ChangeFeed for LocalMetadata {
    fn subscribe(&self) -> broadcast::Receiver<ChangeRecord> {
        self.changes.subscribe()
    }
}
