//! The store's state behind traits, so that it can live elsewhere than in
//! one folder and one SQLite file (issue 12): [`Metadata`] (files,
//! revisions, the change log, manifests) and [`ChangeFeed`] (what Watch
//! follows).
//!
//! Implementations: [`super::LocalMetadata`] (the SQLite index, in one
//! process) and [`super::PgMetadata`] with [`super::PgFeed`] (PostgreSQL,
//! shared by several server instances). The [`super::Store`] is the local
//! change feed.
//!
//! Invariants every implementation keeps (one test suite,
//! `crates/server/tests/backends.rs`, runs against each):
//! - revisions come from one counter, are gapless and are taken inside the
//!   committing transaction, so they are visible in the order they were
//!   given: a reader that has seen revision `n` has seen every change
//!   before it;
//! - `if_revision` (and every other precondition of a change) is checked
//!   inside the transaction that commits the change: of two writers racing
//!   with the same `if_revision`, exactly one wins, also when they go
//!   through different server instances;
//! - a change and its log entry commit together, and the feed announces a
//!   change only after it is committed.

use std::future::Future;
use std::pin::Pin;

use distribusync_core::delta::Manifest;
use distribusync_core::{ContentHash, RemotePath, Revision};
use tokio::sync::broadcast;

use super::{ChangeRecord, FileRecord, Store, check_rebased_lengths};
use crate::error::{Result, ServiceError};

/// A boxed future, so that the traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`Metadata::commit_puts`] answers: per file, its new record and
/// change, or why it was refused.
pub type Committed = Vec<Result<(FileRecord, ChangeRecord)>>;

/// A new version of a file, as [`Metadata::commit_puts`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub path: RemotePath,
    pub size: u64,
    pub hash: ContentHash,
    /// Modification time, ns since the epoch.
    pub modified_ns: i64,
    /// The revision the file must have now (`Some(0)`: must not exist),
    /// checked inside the committing transaction.
    pub if_revision: Option<Revision>,
    /// The manifest of this content, recorded with it when it describes it
    /// (same size and hash).
    pub manifest: Option<Manifest>,
}

/// Files, revisions, the change log and manifests.
pub trait Metadata: Send + Sync + std::fmt::Debug {
    /// The record of one file.
    ///
    /// # Errors
    /// The backend's.
    fn get(&self, path: RemotePath) -> BoxFuture<'_, Result<Option<FileRecord>>>;

    /// True when at least one file lies inside folder `dir`.
    ///
    /// # Errors
    /// The backend's.
    fn is_folder(&self, dir: RemotePath) -> BoxFuture<'_, Result<bool>>;

    /// Up to `limit` files in path (byte) order after `after`, restricted
    /// to the file `prefix` itself or everything inside it.
    ///
    /// # Errors
    /// The backend's.
    fn list_page(
        &self,
        prefix: Option<RemotePath>,
        after: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FileRecord>>>;

    /// Records new versions of several files in one transaction (a group
    /// commit). Each is checked against its `if_revision` inside it; one
    /// that fails gets its own error and the others are recorded, each with
    /// its own revision, in order. The outer error is a failure of the
    /// whole group (nothing recorded).
    ///
    /// # Errors
    /// The backend's.
    fn commit_puts(&self, puts: Vec<NewVersion>) -> BoxFuture<'_, Result<Committed>>;

    /// Records the deletion of the file at `path`.
    ///
    /// # Errors
    /// NotFound, a revision mismatch, Conflict for a folder, the backend's.
    fn commit_delete(
        &self,
        path: RemotePath,
        if_revision: Option<Revision>,
    ) -> BoxFuture<'_, Result<ChangeRecord>>;

    /// Records the rename of a file or of a whole folder; returns the change
    /// and how many files moved. The same rules as [`Store::rename`].
    ///
    /// # Errors
    /// See [`check_rename`], and the backend's.
    fn commit_rename(
        &self,
        from: RemotePath,
        to: RemotePath,
        overwrite: bool,
        if_revision: Option<Revision>,
    ) -> BoxFuture<'_, Result<(ChangeRecord, u64)>>;

    /// Up to `limit` changes with `seq > since`, in order.
    ///
    /// # Errors
    /// The backend's.
    fn changes_since(&self, since: u64, limit: u32) -> BoxFuture<'_, Result<Vec<ChangeRecord>>>;

    /// `(floor, newest)`: a watcher with `since < floor` must resync.
    ///
    /// # Errors
    /// The backend's.
    fn log_bounds(&self) -> BoxFuture<'_, Result<(u64, u64)>>;

    /// `(files, bytes)`: how many files there are and their total size.
    ///
    /// # Errors
    /// The backend's.
    fn totals(&self) -> BoxFuture<'_, Result<(u64, u64)>>;

    /// The manifest of `path` at `revision`, if one is recorded and that
    /// revision is still the file's current one.
    ///
    /// # Errors
    /// The backend's.
    fn manifest(
        &self,
        path: RemotePath,
        revision: Revision,
    ) -> BoxFuture<'_, Result<Option<Manifest>>>;
}

/// What Watch follows: changes announced after they are committed.
///
/// A receiver may see a change twice, miss some (it lagged) or see them out
/// of order; a watcher fills any gap from [`Metadata::changes_since`], which
/// has every change in order.
pub trait ChangeFeed: Send + Sync + std::fmt::Debug {
    fn subscribe(&self) -> broadcast::Receiver<ChangeRecord>;
}

impl ChangeFeed for Store {
    fn subscribe(&self) -> broadcast::Receiver<ChangeRecord> {
        Store::subscribe(self)
    }
}

/// What a metadata backend knows about a rename before it commits it.
#[derive(Debug, Clone, Default)]
pub struct RenameFacts {
    /// The file at `from`, if one is there.
    pub from_file: Option<FileRecord>,
    /// True when files lie inside folder `from`.
    pub from_folder: bool,
    /// The longest path inside folder `from`, in bytes.
    pub longest_inside: Option<usize>,
    /// True when files lie inside folder `to`.
    pub to_folder: bool,
    /// True when a file is at `to`.
    pub to_file: bool,
}

/// The rules of a rename, checked by every backend inside the transaction
/// that commits it (the same as [`Store::rename`]'s); `Ok(folder)`: whether
/// it renames a folder.
///
/// # Errors
/// InvalidArgument for a rename onto or into itself, of a folder with an
/// `if_revision`, or whose files would get too long a path; NotFound for a
/// missing source; a revision mismatch; Conflict when `to` is a folder;
/// AlreadyExists when a file is at `to` and `overwrite` is false (a folder
/// never overwrites).
pub fn check_rename(
    from: &RemotePath,
    to: &RemotePath,
    overwrite: bool,
    if_revision: Option<Revision>,
    facts: &RenameFacts,
) -> Result<bool> {
    check_rename_paths(from, to)?;
    let folder = facts.from_file.is_none() && facts.from_folder;
    if facts.from_file.is_none() && !folder {
        return Err(ServiceError::NotFound(from.clone()));
    }
    if folder && if_revision.is_some() {
        return Err(ServiceError::InvalidArgument(format!(
            "{}: is a folder; if_revision applies to files only",
            from.shown()
        )));
    }
    super::check_revision(from, facts.from_file.as_ref(), if_revision)?;
    if folder {
        check_rebased_lengths(from, to, facts.longest_inside)?;
    }
    if facts.to_folder {
        return Err(ServiceError::Conflict(format!(
            "{}: is a folder; a rename never replaces a folder",
            to.shown()
        )));
    }
    if facts.to_file && (folder || !overwrite) {
        return Err(ServiceError::AlreadyExists(to.clone()));
    }
    Ok(folder)
}

/// The rules of a rename that need no lookup.
///
/// # Errors
/// InvalidArgument for a rename onto or into itself.
pub fn check_rename_paths(from: &RemotePath, to: &RemotePath) -> Result<()> {
    if from == to {
        return Err(ServiceError::InvalidArgument(format!(
            "cannot rename {} onto itself",
            from.shown()
        )));
    }
    if to.is_inside(from) {
        return Err(ServiceError::InvalidArgument(format!(
            "cannot move {} into itself ({})",
            from.shown(),
            to.shown()
        )));
    }
    Ok(())
}

/// The error of a delete of `path` where no file is: Conflict for a folder,
/// else NotFound.
pub(super) fn nothing_to_delete(path: RemotePath, folder: bool) -> ServiceError {
    if folder {
        ServiceError::Conflict(format!(
            "{}: is a folder; delete the files in it one by one",
            path.shown()
        ))
    } else {
        ServiceError::NotFound(path)
    }
}

/// Checks a new version's precondition against the current record.
///
/// # Errors
/// A revision mismatch.
pub(super) fn check_put(put: &NewVersion, current: Option<&FileRecord>) -> Result<()> {
    super::check_revision(&put.path, current, put.if_revision)
}

/// The manifest of `put`, when it describes the content recorded.
pub(super) fn manifest_of(put: &NewVersion) -> Option<&Manifest> {
    put.manifest
        .as_ref()
        .filter(|m| m.hash == put.hash && m.size == put.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    fn file(path: &str, revision: Revision) -> FileRecord {
        FileRecord {
            path: p(path),
            size: 1,
            hash: ContentHash::of(b"x"),
            revision,
            modified_ns: 0,
        }
    }

    #[test]
    fn rename_rules_are_those_of_the_store() {
        let a = file("a", 3);
        let facts = RenameFacts {
            from_file: Some(a.clone()),
            ..Default::default()
        };
        assert_eq!(
            check_rename(&p("a"), &p("b"), false, Some(3), &facts).ok(),
            Some(false)
        );
        assert!(matches!(
            check_rename(&p("a"), &p("b"), false, Some(2), &facts),
            Err(ServiceError::RevisionMismatch { current: 3, .. })
        ));
        assert!(matches!(
            check_rename(&p("a"), &p("a"), false, None, &facts),
            Err(ServiceError::InvalidArgument(_))
        ));
        assert!(matches!(
            check_rename(&p("a"), &p("a/b"), false, None, &facts),
            Err(ServiceError::InvalidArgument(_))
        ));
        let taken = RenameFacts {
            to_file: true,
            ..facts.clone()
        };
        assert!(matches!(
            check_rename(&p("a"), &p("b"), false, None, &taken),
            Err(ServiceError::AlreadyExists(_))
        ));
        assert!(check_rename(&p("a"), &p("b"), true, None, &taken).is_ok());
        let folder = RenameFacts {
            from_folder: true,
            longest_inside: Some(3),
            ..Default::default()
        };
        assert_eq!(
            check_rename(&p("d"), &p("e"), false, None, &folder).ok(),
            Some(true)
        );
        assert!(matches!(
            check_rename(&p("d"), &p("e"), false, Some(1), &folder),
            Err(ServiceError::InvalidArgument(_))
        ));
        assert!(matches!(
            check_rename(&p("x"), &p("e"), false, None, &RenameFacts::default()),
            Err(ServiceError::NotFound(_))
        ));
    }
}
