//! The index: every file's metadata and the change log, in SQLite.
//!
//! Each mutation takes the next value of one sequence (the change log's
//! `seq`), which becomes the file's revision, and writes the file row and the
//! log entry in one transaction. All methods are blocking; callers run them
//! off the async runtime.

use std::path::Path;
use std::sync::Mutex;

use distribusync_core::{ContentHash, RemotePath, Revision};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::Result;

pub(super) mod backend;
mod dav;
pub use dav::DeadProp;

/// One file as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub path: RemotePath,
    pub size: u64,
    pub hash: ContentHash,
    pub revision: Revision,
    /// Modification time (ns since the epoch), also set on the file on disk.
    pub modified_ns: i64,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Put = 1,
    Delete = 2,
    Rename = 3,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub seq: u64,
    pub op: ChangeOp,
    pub path: RemotePath,
    pub new_path: Option<RemotePath>,
    pub revision: Revision,
    pub size: u64,
    pub hash: Option<ContentHash>,
    pub modified_ns: i64,
    pub folder: bool,
}

/// The change-log entries each backend writes when it commits (one shape
/// for SQLite and PostgreSQL). `seq` is the entry's place in the log (0
/// while the log has not given one yet); a put's or rename's revision is
/// that place.
impl ChangeRecord {
    /// `path` now holds content `hash`.
    pub fn put(seq: u64, path: RemotePath, size: u64, hash: ContentHash, modified_ns: i64) -> Self {
        Self {
            seq,
            op: ChangeOp::Put,
            path,
            new_path: None,
            revision: seq,
            size,
            hash: Some(hash),
            modified_ns,
            folder: false,
        }
    }

    /// The file `path` is gone.
    pub fn delete(seq: u64, path: RemotePath) -> Self {
        Self {
            seq,
            op: ChangeOp::Delete,
            path,
            new_path: None,
            revision: 0,
            size: 0,
            hash: None,
            modified_ns: 0,
            folder: false,
        }
    }

    /// `from` is now `to`: one file (`single`, as it was) or a folder.
    pub fn rename(
        seq: u64,
        from: RemotePath,
        to: RemotePath,
        single: Option<&FileRecord>,
        folder: bool,
    ) -> Self {
        Self {
            seq,
            op: ChangeOp::Rename,
            path: from,
            new_path: Some(to),
            revision: seq,
            size: single.map_or(0, |f| f.size),
            hash: single.map(|f| f.hash),
            modified_ns: single.map_or(0, |f| f.modified_ns),
            folder,
        }
    }
}

/// The SQLite index at `ROOT/.distribusync/index.db`.
#[derive(Debug)]
pub struct Index {
    // A std Mutex: every use is a short synchronous transaction on a
    // blocking thread; no await happens while it is held.
    conn: Mutex<Connection>,
    max_changes: u64,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    hash BLOB NOT NULL,
    revision INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op INTEGER NOT NULL,
    path TEXT NOT NULL,
    new_path TEXT,
    revision INTEGER NOT NULL,
    size INTEGER NOT NULL,
    hash BLOB,
    modified_ns INTEGER NOT NULL,
    folder INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dav_collections (
    path TEXT PRIMARY KEY NOT NULL,
    created_ns INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dav_locks (
    token TEXT PRIMARY KEY NOT NULL,
    path TEXT,
    url TEXT NOT NULL,
    principal TEXT NOT NULL,
    owner_xml BLOB,
    shared INTEGER NOT NULL,
    deep INTEGER NOT NULL,
    timeout_s INTEGER NOT NULL,
    until_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dav_props (
    path TEXT NOT NULL,
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    xml BLOB NOT NULL,
    PRIMARY KEY (path, ns, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_renames (
    id INTEGER PRIMARY KEY,
    from_path TEXT NOT NULL,
    to_path TEXT NOT NULL,
    folder INTEGER NOT NULL
);
";

/// A rename recorded before it is made on disk (see
/// [`Index::begin_rename`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRename {
    pub id: i64,
    pub from: RemotePath,
    pub to: RemotePath,
    pub folder: bool,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn path_from(s: String) -> rusqlite::Result<RemotePath> {
    RemotePath::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn hash_from(b: Vec<u8>) -> rusqlite::Result<ContentHash> {
    ContentHash::from_slice(&b).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn file_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        path: path_from(row.get(0)?)?,
        size: row.get::<_, i64>(1)? as u64,
        hash: hash_from(row.get(2)?)?,
        revision: row.get::<_, i64>(3)? as u64,
        modified_ns: row.get(4)?,
    })
}

const FILE_COLS: &str = "path, size, hash, revision, modified_ns";

/// The half-open key range `[lo, hi)` of every path inside folder `dir`.
fn folder_range(dir: &RemotePath) -> (String, String) {
    // '0' is the byte after '/', so "dir/" <= p < "dir0" is exactly "inside dir".
    (format!("{dir}/"), format!("{dir}0"))
}

/// Longest path SQLite's unix file layer opens (`MAX_PATHNAME` in its
/// source, fixed at compile time), less the longest suffix it adds for its
/// own files (`-journal`).
const SQLITE_MAX_PATH: usize = 512 - 1 - "-journal".len();

/// Refuses up front an index path SQLite could not open, naming the limit
/// (else the server stops with "unable to open database file").
fn check_path_length(path: &Path) -> Result<()> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let len = absolute.as_os_str().len();
    if len > SQLITE_MAX_PATH {
        let over = len - SQLITE_MAX_PATH;
        return Err(crate::error::ServiceError::InvalidArgument(format!(
            "the index's path ({}) is {len} bytes; SQLite, which keeps the index, opens paths of at \
             most {SQLITE_MAX_PATH} bytes: choose a server folder (--root) at least {over} bytes shorter",
            distribusync_core::echo(&absolute.to_string_lossy())
        )));
    }
    Ok(())
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    ///
    /// # Errors
    /// When SQLite cannot open or initialise the database.
    pub fn open(path: &Path, max_changes: u64) -> Result<Self> {
        check_path_length(path)?;
        let conn = Connection::open(path)?;
        conn.execute_batch(SCHEMA)?;
        dav::migrate(&conn)?;
        conn.execute_batch(super::chunks::SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            max_changes,
        })
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().expect("index mutex poisoned");
        f(&mut conn)
    }

    pub fn get(&self, path: &RemotePath) -> Result<Option<FileRecord>> {
        self.with(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE path = ?1"))?
                    .query_row([path.as_str()], file_row)
                    .optional()?,
            )
        })
    }

    /// The records of several paths (in order), read in one transaction:
    /// one lock on the database instead of one per path.
    pub fn get_many<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p RemotePath>,
    ) -> Result<Vec<Option<FileRecord>>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::new();
            {
                let mut st =
                    tx.prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE path = ?1"))?;
                for p in paths {
                    out.push(st.query_row([p.as_str()], file_row).optional()?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// True when at least one file lies inside folder `dir`.
    pub fn is_folder(&self, dir: &RemotePath) -> Result<bool> {
        let (lo, hi) = folder_range(dir);
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM files WHERE path >= ?1 AND path < ?2 LIMIT 1")?
                    .query_row([lo, hi], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
    }

    /// The length in bytes of the longest file path inside folder `dir`
    /// (`None` when it holds no file): what a folder rename must check
    /// against the path limit before moving anything.
    pub fn longest_inside(&self, dir: &RemotePath) -> Result<Option<usize>> {
        let (lo, hi) = folder_range(dir);
        self.with(|c| {
            let longest: Option<i64> = c
                .prepare_cached(
                    "SELECT MAX(LENGTH(CAST(path AS BLOB))) FROM files WHERE path >= ?1 AND path < ?2",
                )?
                .query_row([lo, hi], |r| r.get(0))?;
            Ok(longest.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
        })
    }

    /// Up to `limit` files in path order, after `after`, restricted to the
    /// file `prefix` itself or everything inside it (all files when `None`).
    pub fn list_page(
        &self,
        prefix: Option<&RemotePath>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FileRecord>> {
        self.with(|c| {
            let after = after.unwrap_or("");
            let rows = match prefix {
                None => {
                    let mut st = c.prepare_cached(&format!(
                        "SELECT {FILE_COLS} FROM files WHERE path > ?1 ORDER BY path LIMIT ?2"
                    ))?;
                    st.query_map(params![after, limit], file_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                }
                Some(p) => {
                    let (lo, hi) = folder_range(p);
                    let mut st = c.prepare_cached(&format!(
                        "SELECT {FILE_COLS} FROM files WHERE path > ?1 \
                         AND (path = ?2 OR (path >= ?3 AND path < ?4)) ORDER BY path LIMIT ?5"
                    ))?;
                    st.query_map(params![after, p.as_str(), lo, hi, limit], file_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                }
            };
            Ok(rows)
        })
    }

    /// Every file, for the reconcile at start.
    pub fn all_files(&self) -> Result<Vec<FileRecord>> {
        self.list_page(None, None, u32::MAX)
    }

    /// The sequence number the next change will get.
    fn next_seq(tx: &Transaction<'_>) -> Result<u64> {
        let last: i64 = tx
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(last as u64 + 1)
    }

    /// Appends `change` to the log as number `seq` (from [`Self::next_seq`],
    /// counted up within one transaction). A deletion has no revision;
    /// everything else takes its own seq.
    fn append_at(tx: &Transaction<'_>, seq: u64, change: &ChangeRecord) -> Result<()> {
        let revision = if change.op == ChangeOp::Delete {
            0
        } else {
            seq
        };
        tx.prepare_cached(
            "INSERT INTO changes (seq, op, path, new_path, revision, size, hash, modified_ns, folder) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            to_i64(seq),
            change.op as i64,
            change.path.as_str(),
            change.new_path.as_ref().map(RemotePath::as_str),
            to_i64(revision),
            to_i64(change.size),
            change.hash.map(|h| h.0.to_vec()),
            change.modified_ns,
            change.folder,
        ])?;
        Ok(())
    }

    fn append(tx: &Transaction<'_>, change: &ChangeRecord) -> Result<u64> {
        let seq = Self::next_seq(tx)?;
        Self::append_at(tx, seq, change)?;
        Ok(seq)
    }

    fn prune(&self, tx: &Transaction<'_>, seq: u64) -> Result<()> {
        // Amortised: trim the log in steps of 1/16 of its allowed length.
        let step = (self.max_changes / 16).max(1);
        if seq > self.max_changes && seq.is_multiple_of(step) {
            tx.execute(
                "DELETE FROM changes WHERE seq <= ?1",
                [to_i64(seq - self.max_changes)],
            )?;
        }
        Ok(())
    }

    /// Records a new version of `path`; returns it with its new revision.
    pub fn commit_put(
        &self,
        path: &RemotePath,
        size: u64,
        hash: ContentHash,
        modified_ns: i64,
    ) -> Result<(FileRecord, ChangeRecord)> {
        let mut done = self.commit_puts(&[(path.clone(), size, hash, modified_ns)], &[])?;
        Ok(done.pop().expect("one record per put"))
    }

    /// Records new versions of several files in one transaction (group
    /// commit); each gets its own revision, in order. `manifests` is empty
    /// or has one entry per put: the manifest of that version, recorded in
    /// the same transaction (see `store/chunks.rs`).
    pub fn commit_puts(
        &self,
        puts: &[(RemotePath, u64, ContentHash, i64)],
        manifests: &[Option<&distribusync_core::delta::Manifest>],
    ) -> Result<Vec<(FileRecord, ChangeRecord)>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(puts.len());
            let first = Self::next_seq(&tx)?;
            for (seq, (path, size, hash, modified_ns)) in (first..).zip(puts) {
                let (size, hash, modified_ns) = (*size, *hash, *modified_ns);
                let mut change = ChangeRecord::put(0, path.clone(), size, hash, modified_ns);
                Self::append_at(&tx, seq, &change)?;
                tx.prepare_cached(
                    "INSERT INTO files (path, size, hash, revision, modified_ns) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT(path) DO UPDATE SET size = ?2, hash = ?3, revision = ?4, modified_ns = ?5",
                )?
                .execute(params![path.as_str(), to_i64(size), hash.0.to_vec(), to_i64(seq), modified_ns])?;
                self.prune(&tx, seq)?;
                if let Some(Some(m)) = manifests.get(out.len()) {
                    super::chunks::record(&tx, path, seq, m)?;
                }
                change.seq = seq;
                change.revision = seq;
                let record = FileRecord {
                    path: path.clone(),
                    size,
                    hash,
                    revision: seq,
                    modified_ns,
                };
                out.push((record, change));
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Records the deletion of `path`.
    pub fn commit_delete(&self, path: &RemotePath) -> Result<ChangeRecord> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut change = ChangeRecord::delete(0, path.clone());
            change.seq = Self::append(&tx, &change)?;
            tx.execute("DELETE FROM files WHERE path = ?1", [path.as_str()])?;
            // Its dead properties go with it, and those of folders it
            // was the last file of.
            tx.execute("DELETE FROM dav_props WHERE path = ?1", [path.as_str()])?;
            dav::drop_vanished_folder_props(&tx, path)?;
            self.prune(&tx, change.seq)?;
            tx.commit()?;
            Ok(change)
        })
    }

    /// Records that folder `from` is about to be renamed to `to` (file
    /// renames may use it too), before the disk changes: should the server stop between the rename on disk and its
    /// [`Index::commit_rename`] (which clears this), the next start
    /// completes it as one rename ([`Index::pending_renames`]) instead of
    /// seeing every file of a folder deleted and added anew.
    pub fn begin_rename(&self, from: &RemotePath, to: &RemotePath, folder: bool) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO pending_renames (from_path, to_path, folder) VALUES (?1, ?2, ?3)",
                params![from.as_str(), to.as_str(), folder],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Forgets a rename that was not made.
    pub fn drop_rename(&self, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM pending_renames WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Renames begun and not committed, oldest first.
    pub fn pending_renames(&self) -> Result<Vec<PendingRename>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, from_path, to_path, folder FROM pending_renames ORDER BY id",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(PendingRename {
                        id: r.get(0)?,
                        from: path_from(r.get(1)?)?,
                        to: path_from(r.get(2)?)?,
                        folder: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Records a file rename (`folder == false`, replacing any file at `to`)
    /// or a folder rename, and clears its [`Index::begin_rename`] record.
    /// Returns the change and how many files moved.
    pub fn commit_rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        folder: bool,
    ) -> Result<(ChangeRecord, u64)> {
        self.with(|c| {
            let tx = c.transaction()?;
            let moved: Vec<FileRecord> = if folder {
                let (lo, hi) = folder_range(from);
                let mut st = tx.prepare(&format!(
                    "SELECT {FILE_COLS} FROM files WHERE path >= ?1 AND path < ?2"
                ))?;
                st.query_map([lo, hi], file_row)?
                    .collect::<rusqlite::Result<_>>()?
            } else {
                tx.query_row(
                    &format!("SELECT {FILE_COLS} FROM files WHERE path = ?1"),
                    [from.as_str()],
                    file_row,
                )
                .optional()?
                .into_iter()
                .collect()
            };
            let single = (!folder).then(|| moved.first().cloned()).flatten();
            let mut change =
                ChangeRecord::rename(0, from.clone(), to.clone(), single.as_ref(), folder);
            let seq = Self::append(&tx, &change)?;
            if !folder {
                tx.execute("DELETE FROM files WHERE path = ?1", [to.as_str()])?;
            }
            for f in &moved {
                let new = f.path.rebase(from, to).expect("selected inside `from`");
                tx.execute(
                    "UPDATE files SET path = ?1, revision = ?2 WHERE path = ?3",
                    params![new.as_str(), to_i64(seq), f.path.as_str()],
                )?;
            }
            // Dead properties (and, for a folder, the collections inside
            // it) follow.
            if folder {
                dav::move_dav_rows(&tx, from, to)?;
            } else {
                dav::move_file_props(&tx, from, to)?;
            }
            dav::drop_vanished_folder_props(&tx, from)?;
            tx.execute(
                "DELETE FROM pending_renames WHERE from_path = ?1 AND to_path = ?2",
                [from.as_str(), to.as_str()],
            )?;
            self.prune(&tx, seq)?;
            tx.commit()?;
            change.seq = seq;
            change.revision = seq;
            Ok((change, moved.len() as u64))
        })
    }

    /// Updates the stored modification time without a new revision (the
    /// contents did not change).
    pub fn touch(&self, path: &RemotePath, modified_ns: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE files SET modified_ns = ?1 WHERE path = ?2",
                params![modified_ns, path.as_str()],
            )?;
            Ok(())
        })
    }

    /// Up to `limit` changes with `seq > since`, in order.
    pub fn changes_since(&self, since: u64, limit: u32) -> Result<Vec<ChangeRecord>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, op, path, new_path, revision, size, hash, modified_ns, folder \
                 FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st
                .query_map(params![to_i64(since), limit], |row| {
                    let op = match row.get::<_, i64>(1)? {
                        1 => ChangeOp::Put,
                        2 => ChangeOp::Delete,
                        _ => ChangeOp::Rename,
                    };
                    Ok(ChangeRecord {
                        seq: row.get::<_, i64>(0)? as u64,
                        op,
                        path: path_from(row.get(2)?)?,
                        new_path: row
                            .get::<_, Option<String>>(3)?
                            .map(path_from)
                            .transpose()?,
                        revision: row.get::<_, i64>(4)? as u64,
                        size: row.get::<_, i64>(5)? as u64,
                        hash: row
                            .get::<_, Option<Vec<u8>>>(6)?
                            .map(hash_from)
                            .transpose()?,
                        modified_ns: row.get(7)?,
                        folder: row.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// `(files, bytes)` the index records (one scan of the files table).
    pub fn totals(&self) -> Result<(u64, u64)> {
        self.with(|c| {
            let (files, bytes): (i64, i64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((files.max(0) as u64, bytes.max(0) as u64))
        })
    }

    /// `(oldest retained seq - 1, newest seq)`: a watcher whose `since` is
    /// below the first value has missed changes and must resync.
    pub fn log_bounds(&self) -> Result<(u64, u64)> {
        self.with(|c| {
            let newest: i64 = c
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let oldest: Option<i64> =
                c.query_row("SELECT MIN(seq) FROM changes", [], |r| r.get(0))?;
            let floor = oldest.map_or(newest, |o| o - 1);
            Ok((floor as u64, newest as u64))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    #[test]
    fn revisions_come_from_one_sequence_and_the_log_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Index::open(&dir.path().join("i.db"), 1000).unwrap();
        let h = ContentHash::of(b"x");
        let (a, _) = ix.commit_put(&p("a"), 1, h, 0).unwrap();
        let (b, _) = ix.commit_put(&p("d/b"), 1, h, 0).unwrap();
        assert_eq!((a.revision, b.revision), (1, 2));
        let (r, n) = ix.commit_rename(&p("d"), &p("e"), true).unwrap();
        assert_eq!((r.seq, n), (3, 1));
        assert_eq!(ix.get(&p("e/b")).unwrap().unwrap().revision, 3);
        ix.commit_delete(&p("a")).unwrap();
        let log = ix.changes_since(0, 100).unwrap();
        let ops: Vec<_> = log.iter().map(|c| (c.seq, c.op)).collect();
        assert_eq!(
            ops,
            [
                (1, ChangeOp::Put),
                (2, ChangeOp::Put),
                (3, ChangeOp::Rename),
                (4, ChangeOp::Delete)
            ]
        );
        assert_eq!(ix.log_bounds().unwrap(), (0, 4));
    }

    #[test]
    fn folder_listing_does_not_include_lookalike_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Index::open(&dir.path().join("i.db"), 1000).unwrap();
        let h = ContentHash::of(b"");
        for f in [
            "trips/a",
            "trips/2026/b",
            "trips-old/c",
            "tripsx",
            "trips0/d",
        ] {
            ix.commit_put(&p(f), 0, h, 0).unwrap();
        }
        let names: Vec<_> = ix
            .list_page(Some(&p("trips")), None, 100)
            .unwrap()
            .into_iter()
            .map(|f| f.path.to_string())
            .collect();
        assert_eq!(names, ["trips/2026/b", "trips/a"]);
    }

    #[test]
    fn old_changes_are_pruned_and_bounds_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Index::open(&dir.path().join("i.db"), 16).unwrap();
        for i in 0..40 {
            ix.commit_put(&p(&format!("f{i}")), 0, ContentHash::of(b""), 0)
                .unwrap();
        }
        let (floor, newest) = ix.log_bounds().unwrap();
        assert_eq!(newest, 40);
        assert!((40 - 17..40).contains(&floor), "{floor}");
    }
}

#[cfg(test)]
mod path_limit_tests {
    use super::*;

    #[test]
    fn an_index_path_sqlite_cannot_open_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_owned();
        while deep.as_os_str().len() <= SQLITE_MAX_PATH {
            deep.push("d".repeat(100));
        }
        std::fs::create_dir_all(&deep).unwrap();
        let Err(e) = Index::open(&deep.join("index.db"), 10) else {
            panic!("opened an index SQLite cannot keep");
        };
        let shown = e.to_string();
        assert!(shown.contains("opens paths of at most"), "{shown}");
        assert!(shown.contains("--root"), "{shown}");
        // Just under the limit works.
        let mut near = dir.path().to_owned();
        let room = SQLITE_MAX_PATH - near.as_os_str().len() - "/index.db".len() - 1;
        near.push("n".repeat(room.min(255)));
        std::fs::create_dir_all(&near).unwrap();
        Index::open(&near.join("index.db"), 10).unwrap();
    }
}
