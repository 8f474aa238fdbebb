//! `DIR/.distribusync/state.db`: the merge base per path, the last known
//! server view, and the last change-log sequence applied to it. Restarting
//! with this intact costs no transfers and no re-hashing.

use std::collections::BTreeMap;
use std::path::Path;

use distribusync_core::sync::RemoteFile;
use distribusync_core::{ContentHash, RemotePath};
use rusqlite::{Connection, OptionalExtension, params};

/// The merge base of one path, plus the local file's identity when it was
/// recorded (so an unchanged file is never re-hashed). The planner's own
/// type, so the engine lends its map to the planner instead of copying it.
pub type BaseEntry = distribusync_core::sync::BaseFile;

/// What identifies a local file's version without reading it.
pub use distribusync_core::sync::FileStat;

#[derive(Debug, thiserror::Error)]
#[error("sync state ({path}): {source}")]
pub struct StateError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

/// The state database.
#[derive(Debug)]
pub struct State {
    conn: Connection,
    path: String,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS base (
    path TEXT PRIMARY KEY NOT NULL, revision INTEGER NOT NULL, hash BLOB NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS remote (
    path TEXT PRIMARY KEY NOT NULL, revision INTEGER NOT NULL, hash BLOB NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl State {
    /// Opens or creates the database.
    ///
    /// # Errors
    /// When SQLite cannot open it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        let err = |source| StateError {
            path: shown.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self { conn, path: shown })
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError {
            path: self.path.clone(),
            source,
        }
    }

    /// Every base entry and the remote view, and the last sequence applied.
    ///
    /// # Errors
    /// When the database cannot be read.
    #[allow(clippy::type_complexity)]
    pub fn load(
        &self,
    ) -> Result<
        (
            BTreeMap<RemotePath, BaseEntry>,
            BTreeMap<RemotePath, RemoteFile>,
            u64,
        ),
        StateError,
    > {
        let load = || -> rusqlite::Result<_> {
            let mut base = BTreeMap::new();
            let mut st = self
                .conn
                .prepare("SELECT path, revision, hash, size, mtime_ns, inode FROM base")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let Some((path, hash)) = path_and_hash(r)? else {
                    continue;
                };
                let size = r.get::<_, i64>(3)? as u64;
                base.insert(
                    path,
                    BaseEntry {
                        revision: r.get::<_, i64>(1)? as u64,
                        hash,
                        size,
                        stat: FileStat {
                            size,
                            mtime_ns: r.get(4)?,
                            inode: r.get::<_, i64>(5)? as u64,
                        },
                    },
                );
            }
            let mut remote = BTreeMap::new();
            let mut st = self
                .conn
                .prepare("SELECT path, revision, hash, size FROM remote")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let Some((path, hash)) = path_and_hash(r)? else {
                    continue;
                };
                remote.insert(
                    path,
                    RemoteFile {
                        revision: r.get::<_, i64>(1)? as u64,
                        hash,
                        size: r.get::<_, i64>(3)? as u64,
                    },
                );
            }
            let seq: i64 = self
                .conn
                .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0);
            Ok((base, remote, seq as u64))
        };
        load().map_err(|e| self.err(e))
    }

    /// True when a first pass (see `SyncEngine::pass`) started and never
    /// finished: the next start sends as it scans again.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn first_pass_unfinished(&self) -> Result<bool, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'first_pass'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v == Some(1))
            .map_err(|e| self.err(e))
    }

    /// Applies a batch of changes in one transaction.
    ///
    /// # Errors
    /// When the write fails.
    pub fn write(&mut self, batch: &[StateWrite]) -> Result<(), StateError> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for w in batch {
                match w {
                    StateWrite::Base(p, Some(b)) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO base VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            p.as_str(),
                            i(b.revision),
                            b.hash.0.to_vec(),
                            i(b.size),
                            b.stat.mtime_ns,
                            i(b.stat.inode)
                        ])?;
                    }
                    StateWrite::Base(p, None) => {
                        tx.prepare_cached("DELETE FROM base WHERE path = ?1")?
                            .execute([p.as_str()])?;
                    }
                    StateWrite::Remote(p, Some(r)) => {
                        tx.prepare_cached("INSERT OR REPLACE INTO remote VALUES (?1, ?2, ?3, ?4)")?
                            .execute(params![
                                p.as_str(),
                                i(r.revision),
                                r.hash.0.to_vec(),
                                i(r.size)
                            ])?;
                    }
                    StateWrite::Remote(p, None) => {
                        tx.prepare_cached("DELETE FROM remote WHERE path = ?1")?
                            .execute([p.as_str()])?;
                    }
                    StateWrite::ClearRemote => {
                        tx.prepare_cached("DELETE FROM remote")?.execute([])?;
                    }
                    StateWrite::FirstPass(unfinished) => {
                        tx.prepare_cached("INSERT OR REPLACE INTO meta VALUES ('first_pass', ?1)")?
                            .execute([i64::from(*unfinished)])?;
                    }
                    StateWrite::LastSeq(seq) => {
                        tx.prepare_cached("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?1)")?
                            .execute([i(*seq)])?;
                    }
                }
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| StateError {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// Column 0 as a path and column 2 as a hash; `None` for a row that no
/// longer parses (skipped: the next scan and listing recreate it).
fn path_and_hash(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<(RemotePath, ContentHash)>> {
    let path = RemotePath::parse(&r.get::<_, String>(0)?).ok();
    let hash = ContentHash::from_slice(&r.get::<_, Vec<u8>>(2)?).ok();
    Ok(path.zip(hash))
}

/// One write to the state database.
#[derive(Debug, Clone)]
pub enum StateWrite {
    Base(RemotePath, Option<BaseEntry>),
    Remote(RemotePath, Option<RemoteFile>),
    ClearRemote,
    LastSeq(u64),
    /// A first pass has started (`true`) or finished (`false`).
    FirstPass(bool),
}
