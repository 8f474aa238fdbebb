//! `DIR/.distribusync/state.db`: the merge base per path, the last known
//! server view, and the last change-log sequence applied to it. Restarting
//! with this intact costs no transfers and no re-hashing.
//!
//! The server view (the `remote` table) and the merge base (`base`) live
//! here only, not in memory: the engine asks for the entries it needs by
//! path (a point look-up) or by folder (a range of the primary key: every
//! path inside `dir` sorts between `dir/` and `dir0`), or walks both in
//! path order for a full pass's merge. Invariant: what the engine set but
//! has not written yet (the steps of one operation, before their
//! transaction) is in a `pending` overlay, which every read consults
//! first; a write that carries an entry takes it out of `pending`. Where
//! many entries are set at once (a read of the change log, a batch's
//! results, a folder's rename) the caller writes them a page at a time
//! ([`PAGE`]), so `pending` holds at most about a page, whatever the size
//! of the tree or of the burst. A scan reads the base through its own
//! connection ([`State::reader`]), on its own thread.

use std::collections::BTreeMap;
use std::collections::HashMap;
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
    file: std::path::PathBuf,
    /// Remote entries set and not yet written (`None`: removed); see the
    /// module header.
    pending: BTreeMap<RemotePath, Option<RemoteFile>>,
    /// The same for the base.
    base_pending: BTreeMap<RemotePath, Option<BaseEntry>>,
    /// The most entries of the two views held in memory at once: the
    /// overlays, or a plan's own entries ([`State::note_held`]).
    held_peak: usize,
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
DROP INDEX IF EXISTS base_by_hash;
CREATE INDEX IF NOT EXISTS base_by_hash_big ON base (hash) WHERE size >= 65536;
";

// `base_by_hash_big`: files of at least 64 KiB are found by content in
// the base (`State::base_with_hash`, whose query repeats the index's
// `WHERE` so that SQLite uses it). Smaller ones are not indexed: content
// hashes are random keys, so indexing every file costs a random B-tree
// page per file recorded (a first sync of 100,000 small files wrote
// hundreds of MB of log for it), while fetching a small file again is one
// round trip, when its content does not come with its change already.

/// Entries set at most before the caller writes them (see the module
/// header): a change log read of any length, a batch of any size and a
/// folder of any size are recorded a page at a time, so the overlay (and
/// the transaction) stays this small. A few hundred rows make one SQLite
/// transaction cheap next to its commit, and a page is a few tens of KiB.
pub const PAGE: usize = 256;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One of the two views kept in the database: its queries and its rows.
trait Table {
    type Entry: Clone;
    /// `path, …` of one path (`?1`).
    const GET: &'static str;
    /// `path, …` at `?1` or in `[?2, ?3)`.
    const INSIDE: &'static str;
    /// How many paths in `[?1, ?2)`.
    const COUNT: &'static str;
    /// Every `path, …` in path order.
    const ALL: &'static str;
    /// `path, …` in `(?1, ?2)`, in path order, at most `?3` of them: one
    /// range of the primary key.
    const PAGE: &'static str;
    /// A row; `None` for one that no longer parses (skipped: the next scan
    /// and listing recreate it).
    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<(RemotePath, Self::Entry)>>;
}

struct RemoteTable;

impl Table for RemoteTable {
    type Entry = RemoteFile;
    const GET: &'static str = "SELECT path, revision, hash, size FROM remote WHERE path = ?1";
    const INSIDE: &'static str = "SELECT path, revision, hash, size FROM remote \
                                  WHERE path = ?1 OR (path >= ?2 AND path < ?3)";
    const COUNT: &'static str = "SELECT count(*) FROM remote WHERE path >= ?1 AND path < ?2";
    const ALL: &'static str = "SELECT path, revision, hash, size FROM remote ORDER BY path";
    const PAGE: &'static str = "SELECT path, revision, hash, size FROM remote \
                                WHERE path > ?1 AND path < ?2 ORDER BY path LIMIT ?3";
    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<(RemotePath, RemoteFile)>> {
        let Some((path, hash)) = path_and_hash(r)? else {
            return Ok(None);
        };
        Ok(Some((
            path,
            RemoteFile {
                revision: r.get::<_, i64>(1)? as u64,
                hash,
                size: r.get::<_, i64>(3)? as u64,
            },
        )))
    }
}

struct BaseTable;

impl Table for BaseTable {
    type Entry = BaseEntry;
    const GET: &'static str =
        "SELECT path, revision, hash, size, mtime_ns, inode FROM base WHERE path = ?1";
    const INSIDE: &'static str = "SELECT path, revision, hash, size, mtime_ns, inode FROM base \
                                  WHERE path = ?1 OR (path >= ?2 AND path < ?3)";
    const COUNT: &'static str = "SELECT count(*) FROM base WHERE path >= ?1 AND path < ?2";
    const ALL: &'static str =
        "SELECT path, revision, hash, size, mtime_ns, inode FROM base ORDER BY path";
    const PAGE: &'static str = "SELECT path, revision, hash, size, mtime_ns, inode FROM base \
                                WHERE path > ?1 AND path < ?2 ORDER BY path LIMIT ?3";
    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<(RemotePath, BaseEntry)>> {
        let Some((path, hash)) = path_and_hash(r)? else {
            return Ok(None);
        };
        let size = r.get::<_, i64>(3)? as u64;
        Ok(Some((
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
        )))
    }
}

/// The entry at `path`: `pending`'s, else the table's.
fn get<T: Table>(
    conn: &Connection,
    pending: &BTreeMap<RemotePath, Option<T::Entry>>,
    path: &RemotePath,
) -> rusqlite::Result<Option<T::Entry>> {
    if let Some(p) = pending.get(path) {
        return Ok(p.clone());
    }
    let mut st = conn.prepare_cached(T::GET)?;
    let found = st.query_row([path.as_str()], T::row).optional()?;
    Ok(found.flatten().map(|(_, e)| e))
}

/// The entries at `dir` or inside it, in path order.
fn inside<T: Table>(
    conn: &Connection,
    pending: &BTreeMap<RemotePath, Option<T::Entry>>,
    dir: &RemotePath,
) -> rusqlite::Result<BTreeMap<RemotePath, T::Entry>> {
    let (lo, hi) = folder_range(dir);
    let mut out = BTreeMap::new();
    let mut st = conn.prepare_cached(T::INSIDE)?;
    let mut rows = st.query([dir.as_str(), lo.as_str(), hi.as_str()])?;
    while let Some(r) = rows.next()? {
        if let Some((p, e)) = T::row(r)? {
            out.insert(p, e);
        }
    }
    for (p, e) in distribusync_core::path::at_or_inside(pending, dir) {
        match e {
            Some(e) => out.insert(p.clone(), e.clone()),
            None => out.remove(p),
        };
    }
    Ok(out)
}

/// A stretch of a folder's entries (see [`State::remote_inside_page`]).
#[derive(Debug)]
pub struct Page<E> {
    /// The entries, in path order (`pending` laid over the table's).
    pub entries: Vec<(RemotePath, E)>,
    /// Where the next page starts (after this path); `None`: this was the
    /// last one.
    pub next: Option<RemotePath>,
}

/// The entries at `dir` or inside it that sort after `after` (all of
/// them with `None`), in path order: the table's next `limit` rows, with
/// `pending` laid over the same stretch of paths (so a page can be
/// shorter, or a little longer, than `limit`; an empty one is not the
/// end, `next` says). Paging through a folder this way holds one page at
/// a time, and setting entries at or before a page's end does not
/// disturb the pages after it.
fn inside_page<T: Table>(
    conn: &Connection,
    pending: &BTreeMap<RemotePath, Option<T::Entry>>,
    dir: &RemotePath,
    after: Option<&RemotePath>,
    limit: usize,
) -> rusqlite::Result<Page<T::Entry>> {
    let limit = limit.max(1);
    let (lo, hi) = folder_range(dir);
    let mut out = BTreeMap::new();
    // `dir` itself on the first page; then the rows strictly inside it
    // after `after` (no path is `dir/` itself, so `> dir/` is "inside"):
    // one range of the primary key from where the last page ended.
    if after.is_none()
        && let Some((p, e)) = conn
            .prepare_cached(T::GET)?
            .query_row([dir.as_str()], T::row)
            .optional()?
            .flatten()
    {
        out.insert(p, e);
    }
    let from = match after {
        Some(a) if a.as_str() > lo.as_str() => a.as_str(),
        _ => lo.as_str(),
    };
    let mut st = conn.prepare_cached(T::PAGE)?;
    let mut rows = st.query(params![
        from,
        hi.as_str(),
        i64::try_from(limit).unwrap_or(i64::MAX)
    ])?;
    let mut read = 0;
    let mut last: Option<RemotePath> = None;
    while let Some(r) = rows.next()? {
        read += 1;
        if let Some((p, e)) = T::row(r)? {
            last = Some(p.clone());
            out.insert(p, e);
        }
    }
    // The stretch of paths this page covers: up to its last row, or to
    // the end of the folder when the table had no more.
    let next = if read >= limit { last } else { None };
    for (p, e) in distribusync_core::path::at_or_inside(pending, dir) {
        if after.is_some_and(|a| p <= a) || next.as_ref().is_some_and(|l| p > l) {
            continue;
        }
        match e {
            Some(e) => out.insert(p.clone(), e.clone()),
            None => out.remove(p),
        };
    }
    Ok(Page {
        entries: out.into_iter().collect(),
        next,
    })
}

/// How many entries are strictly inside the folder `dir`.
fn count_inside<T: Table>(
    conn: &Connection,
    pending: &BTreeMap<RemotePath, Option<T::Entry>>,
    dir: &RemotePath,
) -> rusqlite::Result<u64> {
    if distribusync_core::path::at_or_inside(pending, dir)
        .next()
        .is_some()
    {
        let all = inside::<T>(conn, pending, dir)?;
        return Ok(all.keys().filter(|p| *p != dir).count() as u64);
    }
    let (lo, hi) = folder_range(dir);
    let mut st = conn.prepare_cached(T::COUNT)?;
    let n: i64 = st.query_row([lo.as_str(), hi.as_str()], |r| r.get(0))?;
    Ok(n as u64)
}

/// A table's rows in path order, with `pending` laid over them: a cursor
/// holding one row at a time.
struct Merged<'s, 'p, T: Table> {
    rows: rusqlite::Rows<'s>,
    pending:
        std::iter::Peekable<std::collections::btree_map::Iter<'p, RemotePath, Option<T::Entry>>>,
    /// The next row of the table not yet handed on.
    head: Option<(RemotePath, T::Entry)>,
    done: bool,
}

impl<'s, 'p, T: Table> Merged<'s, 'p, T> {
    fn new(rows: rusqlite::Rows<'s>, pending: &'p BTreeMap<RemotePath, Option<T::Entry>>) -> Self {
        Self {
            rows,
            pending: pending.iter().peekable(),
            head: None,
            done: false,
        }
    }

    fn next(&mut self) -> rusqlite::Result<Option<(RemotePath, T::Entry)>> {
        loop {
            if self.head.is_none() && !self.done {
                match self.rows.next()? {
                    Some(r) => match T::row(r)? {
                        Some(e) => self.head = Some(e),
                        None => continue,
                    },
                    None => self.done = true,
                }
            }
            let pending_first = match (&self.head, self.pending.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((h, _)), Some((p, _))) => *p <= h,
            };
            if !pending_first {
                return Ok(self.head.take());
            }
            let Some((p, e)) = self.pending.next() else {
                return Ok(self.head.take());
            };
            // Pending replaces the row at the same path.
            if self.head.as_ref().is_some_and(|(h, _)| h == p) {
                self.head = None;
            }
            if let Some(e) = e {
                return Ok(Some((p.clone(), e.clone())));
            }
        }
    }
}

/// Every entry of a table in path order (pending included), each handed
/// to `f`, until `f` says false; false when it stopped early.
fn each<T: Table>(
    conn: &Connection,
    pending: &BTreeMap<RemotePath, Option<T::Entry>>,
    f: &mut dyn FnMut(&RemotePath, &T::Entry) -> bool,
) -> rusqlite::Result<bool> {
    let mut st = conn.prepare_cached(T::ALL)?;
    let mut cur = Merged::<T>::new(st.query([])?, pending);
    while let Some((p, e)) = cur.next()? {
        if !f(&p, &e) {
            return Ok(false);
        }
    }
    Ok(true)
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
        Ok(Self {
            conn,
            path: shown,
            file: path.to_owned(),
            pending: BTreeMap::new(),
            base_pending: BTreeMap::new(),
            held_peak: 0,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError {
            path: self.path.clone(),
            source,
        }
    }

    /// A read-only connection of its own, for a scan on another thread:
    /// it reads the base as last written (a scan starts between
    /// operations, when nothing is pending).
    ///
    /// # Errors
    /// When SQLite cannot open it.
    pub fn reader(&self) -> Result<BaseReader, StateError> {
        Ok(BaseReader {
            conn: self.read_only()?,
            none: BTreeMap::new(),
        })
    }

    /// A read-only connection of its own to the database, for a reader on
    /// another thread.
    fn read_only(&self) -> Result<Connection, StateError> {
        use rusqlite::OpenFlags;
        Connection::open_with_flags(
            &self.file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.err(e))
    }

    /// A read-only connection of its own to both views (see
    /// [`ViewsReader`]), reading them as last written. With paths
    /// pending (set and not written yet), those are what it cannot see:
    /// [`State::pending_paths`].
    ///
    /// # Errors
    /// When SQLite cannot open it.
    pub fn views_reader(&self) -> Result<ViewsReader, StateError> {
        Ok(ViewsReader {
            conn: self.read_only()?,
            path: self.path.clone(),
        })
    }

    /// The paths set in either view and not written yet.
    pub fn pending_paths(&self) -> impl Iterator<Item = &RemotePath> {
        self.pending.keys().chain(self.base_pending.keys())
    }

    /// The last change-log sequence applied (the views stay in the
    /// database: see the module header).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn last_seq(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
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
        })?;
        // Written: the database answers for these now.
        for w in batch {
            match w {
                StateWrite::Remote(p, _) => {
                    self.pending.remove(p);
                }
                StateWrite::Base(p, _) => {
                    self.base_pending.remove(p);
                }
                StateWrite::ClearRemote => self.pending.clear(),
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets one path of the remote view; read back at once, written by
    /// the next [`State::write`] that carries the same change (the caller
    /// pushes a [`StateWrite::Remote`] for it).
    pub fn stage_remote(&mut self, path: &RemotePath, file: Option<RemoteFile>) {
        self.pending.insert(path.clone(), file);
        self.note_held(0);
    }

    /// As [`State::stage_remote`], for the base ([`StateWrite::Base`]).
    pub fn stage_base(&mut self, path: &RemotePath, entry: Option<BaseEntry>) {
        self.base_pending.insert(path.clone(), entry);
        self.note_held(0);
    }

    /// Notes that `n` entries of the views are held in memory for a moment
    /// (a plan's own), for [`State::held_peak`].
    pub fn note_held(&mut self, n: usize) {
        let now = n + self.pending.len() + self.base_pending.len();
        self.held_peak = self.held_peak.max(now);
    }

    /// The most entries of the two views ever held in memory at once.
    pub fn held_peak(&self) -> usize {
        self.held_peak
    }

    /// The server's entry at `path`.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn remote_get(&self, path: &RemotePath) -> Result<Option<RemoteFile>, StateError> {
        get::<RemoteTable>(&self.conn, &self.pending, path).map_err(|e| self.err(e))
    }

    /// The base's entry at `path`.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn base_get(&self, path: &RemotePath) -> Result<Option<BaseEntry>, StateError> {
        get::<BaseTable>(&self.conn, &self.base_pending, path).map_err(|e| self.err(e))
    }

    /// Up to `limit` paths whose base entry has the content `hash` (an
    /// index on the hash), among files of at least 64 KiB
    /// (none for a smaller `hash`'s file): where a download may find those
    /// bytes on disk already, for files in sync that the local view does
    /// not hold.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn base_with_hash(
        &self,
        hash: &ContentHash,
        limit: usize,
    ) -> Result<Vec<RemotePath>, StateError> {
        let run = || -> rusqlite::Result<Vec<RemotePath>> {
            let mut st = self.conn.prepare_cached(
                // The size term selects the partial index (see the schema).
                "SELECT path FROM base WHERE hash = ?1 AND size >= 65536 LIMIT ?2",
            )?;
            let mut rows = st.query(params![
                hash.0.to_vec(),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                if let Ok(p) = RemotePath::parse(&r.get::<_, String>(0)?) {
                    out.push(p);
                }
            }
            Ok(out)
        };
        run().map_err(|e| self.err(e))
    }

    /// The server's entries at `dir` or inside it, in path order: a range
    /// of the primary key, so the cost follows the folder, not the tree.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn remote_inside(
        &self,
        dir: &RemotePath,
    ) -> Result<BTreeMap<RemotePath, RemoteFile>, StateError> {
        inside::<RemoteTable>(&self.conn, &self.pending, dir).map_err(|e| self.err(e))
    }

    /// As [`State::remote_inside`], for the base.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn base_inside(
        &self,
        dir: &RemotePath,
    ) -> Result<BTreeMap<RemotePath, BaseEntry>, StateError> {
        inside::<BaseTable>(&self.conn, &self.base_pending, dir).map_err(|e| self.err(e))
    }

    /// A page of [`State::remote_inside`]: the entries after `after`, the
    /// table's next `limit` rows with what is pending laid over them;
    /// the page says where the next one starts.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn remote_inside_page(
        &self,
        dir: &RemotePath,
        after: Option<&RemotePath>,
        limit: usize,
    ) -> Result<Page<RemoteFile>, StateError> {
        inside_page::<RemoteTable>(&self.conn, &self.pending, dir, after, limit)
            .map_err(|e| self.err(e))
    }

    /// As [`State::remote_inside_page`], for the base.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn base_inside_page(
        &self,
        dir: &RemotePath,
        after: Option<&RemotePath>,
        limit: usize,
    ) -> Result<Page<BaseEntry>, StateError> {
        inside_page::<BaseTable>(&self.conn, &self.base_pending, dir, after, limit)
            .map_err(|e| self.err(e))
    }

    /// How many entries the server has strictly inside the folder `dir`.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn remote_count_inside(&self, dir: &RemotePath) -> Result<u64, StateError> {
        count_inside::<RemoteTable>(&self.conn, &self.pending, dir).map_err(|e| self.err(e))
    }

    /// As [`State::remote_count_inside`], for the base.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn base_count_inside(&self, dir: &RemotePath) -> Result<u64, StateError> {
        count_inside::<BaseTable>(&self.conn, &self.base_pending, dir).map_err(|e| self.err(e))
    }

    /// Every entry of the server view in path order (what is pending
    /// included), each handed to `f`; stops early when `f` says false.
    /// Returns false when it stopped early. One pass over the primary
    /// key: nothing but the current row is held.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn remote_each(
        &self,
        mut f: impl FnMut(&RemotePath, &RemoteFile) -> bool,
    ) -> Result<bool, StateError> {
        each::<RemoteTable>(&self.conn, &self.pending, &mut f).map_err(|e| self.err(e))
    }

    /// As [`State::remote_each`], for the base.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn base_each(
        &self,
        mut f: impl FnMut(&RemotePath, &BaseEntry) -> bool,
    ) -> Result<bool, StateError> {
        each::<BaseTable>(&self.conn, &self.base_pending, &mut f).map_err(|e| self.err(e))
    }

    /// Every path the server view or the base holds, in path order, with
    /// its entry on each side: one merge of the two tables' primary keys,
    /// holding a row of each at a time. Stops when `f` says false.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn both_each(
        &self,
        mut f: impl FnMut(&RemotePath, Option<&RemoteFile>, Option<&BaseEntry>) -> bool,
    ) -> Result<(), StateError> {
        let mut run = || -> rusqlite::Result<()> {
            let mut rs = self.conn.prepare_cached(RemoteTable::ALL)?;
            let mut bs = self.conn.prepare_cached(BaseTable::ALL)?;
            let mut r = Merged::<RemoteTable>::new(rs.query([])?, &self.pending);
            let mut b = Merged::<BaseTable>::new(bs.query([])?, &self.base_pending);
            let (mut rc, mut bc) = (r.next()?, b.next()?);
            loop {
                let go_on = match (&rc, &bc) {
                    (None, None) => return Ok(()),
                    (Some((rp, re)), Some((bp, be))) if rp == bp => f(rp, Some(re), Some(be)),
                    (Some((rp, re)), Some((bp, _))) if rp < bp => f(rp, Some(re), None),
                    (Some((rp, re)), None) => f(rp, Some(re), None),
                    (_, Some((bp, be))) => f(bp, None, Some(be)),
                };
                if !go_on {
                    return Ok(());
                }
                let (r_at, b_at) = match (&rc, &bc) {
                    (Some((rp, _)), Some((bp, _))) => (rp <= bp, bp <= rp),
                    (Some(_), None) => (true, false),
                    (None, Some(_)) => (false, true),
                    (None, None) => (false, false),
                };
                if r_at {
                    rc = r.next()?;
                }
                if b_at {
                    bc = b.next()?;
                }
            }
        };
        run().map_err(|e| self.err(e))
    }
}

/// A read-only connection of its own to both views, for
/// [`ViewsReader::differing`] on another thread (see
/// [`State::views_reader`]).
#[derive(Debug)]
pub struct ViewsReader {
    conn: Connection,
    path: String,
}

impl ViewsReader {
    /// Every path where the server view and the base differ, as written:
    /// one side has it and the other not, or the revision, content or
    /// size differ. One merge of the two tables in path order comparing
    /// the columns as stored, so a tree in sync costs a read of each row
    /// and nothing per row kept or allocated; what is returned follows
    /// what differs.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn differing(&self) -> Result<Vec<RemotePath>, StateError> {
        self.merge().map_err(|source| StateError {
            path: self.path.clone(),
            source,
        })
    }

    fn merge(&self) -> rusqlite::Result<Vec<RemotePath>> {
        let mut rs = self
            .conn
            .prepare("SELECT path, revision, hash, size FROM remote ORDER BY path")?;
        let mut bs = self
            .conn
            .prepare("SELECT path, revision, hash, size FROM base ORDER BY path")?;
        let mut r = rs.query([])?;
        let mut b = bs.query([])?;
        let mut out = Vec::new();
        let mut keep = |p: &str| {
            // A row that no longer parses is skipped, as everywhere.
            if let Ok(p) = RemotePath::parse(p) {
                out.push(p);
            }
        };
        let (mut rc, mut bc) = (r.next()?, b.next()?);
        loop {
            let (rp, bp) = match (rc, bc) {
                (None, None) => break,
                (Some(rr), None) => {
                    keep(rr.get_ref(0)?.as_str()?);
                    rc = r.next()?;
                    continue;
                }
                (None, Some(br)) => {
                    keep(br.get_ref(0)?.as_str()?);
                    bc = b.next()?;
                    continue;
                }
                (Some(rr), Some(br)) => (rr, br),
            };
            let (rpath, bpath) = (rp.get_ref(0)?.as_str()?, bp.get_ref(0)?.as_str()?);
            match rpath.cmp(bpath) {
                std::cmp::Ordering::Less => {
                    keep(rpath);
                    rc = r.next()?;
                }
                std::cmp::Ordering::Greater => {
                    keep(bpath);
                    bc = b.next()?;
                }
                std::cmp::Ordering::Equal => {
                    let same = (1..4).try_fold(true, |same, i| {
                        Ok::<_, rusqlite::Error>(same && rp.get_ref(i)? == bp.get_ref(i)?)
                    })?;
                    if !same {
                        keep(rpath);
                    }
                    rc = r.next()?;
                    bc = b.next()?;
                }
            }
        }
        Ok(out)
    }
}

/// A scan's own read-only connection to the base (see [`State::reader`]).
#[derive(Debug)]
pub struct BaseReader {
    conn: Connection,
    /// Nothing is pending for a reader.
    none: BTreeMap<RemotePath, Option<BaseEntry>>,
}

impl BaseReader {
    /// The base's entry at `path`.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn get(&self, path: &RemotePath) -> rusqlite::Result<Option<BaseEntry>> {
        get::<BaseTable>(&self.conn, &self.none, path)
    }

    /// The base's files directly in the folder `dir` (`None`: the top),
    /// not deeper: a range of the primary key per run of files, each
    /// subfolder's subtree skipped with one seek (everything inside
    /// `dir/sub` sorts before `dir/sub0`). So a scan reads a folder's
    /// entries with a query or two instead of a look-up per file, and the
    /// cost follows the folder, not what is below it.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn files_in(
        &self,
        dir: Option<&RemotePath>,
    ) -> rusqlite::Result<HashMap<RemotePath, BaseEntry>> {
        let prefix = dir.map_or_else(String::new, |d| format!("{d}/"));
        let upper = dir.map(|d| format!("{d}0"));
        let mut out = HashMap::new();
        let mut from = prefix.clone();
        loop {
            let mut st = match upper {
                Some(_) => self.conn.prepare_cached(
                    "SELECT path, revision, hash, size, mtime_ns, inode FROM base \
                     WHERE path >= ?1 AND path < ?2 ORDER BY path",
                )?,
                None => self.conn.prepare_cached(
                    "SELECT path, revision, hash, size, mtime_ns, inode FROM base \
                     WHERE path >= ?1 ORDER BY path",
                )?,
            };
            let mut rows = match &upper {
                Some(u) => st.query(params![from, u])?,
                None => st.query(params![from])?,
            };
            let mut skip_to = None;
            while let Some(r) = rows.next()? {
                let path = r.get_ref(0)?.as_str()?;
                let rest = path.get(prefix.len()..).unwrap_or_default();
                if let Some(slash) = rest.find('/') {
                    skip_to = Some(format!("{prefix}{}0", &rest[..slash]));
                    break;
                }
                if let Some((p, e)) = BaseTable::row(r)? {
                    out.insert(p, e);
                }
            }
            match skip_to {
                Some(next) => from = next,
                None => return Ok(out),
            }
        }
    }

    /// The base's paths at `dir` or inside it.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn inside(&self, dir: &RemotePath) -> rusqlite::Result<Vec<RemotePath>> {
        Ok(inside::<BaseTable>(&self.conn, &self.none, dir)?
            .into_keys()
            .collect())
    }

    /// The base's entries at `dir` or inside it.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn inside_entries(
        &self,
        dir: &RemotePath,
    ) -> rusqlite::Result<BTreeMap<RemotePath, BaseEntry>> {
        inside::<BaseTable>(&self.conn, &self.none, dir)
    }

    /// Every path of the base, in path order, each handed to `f`: one
    /// pass over the primary key, a row held at a time.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn each_path(&self, mut f: impl FnMut(&RemotePath)) -> rusqlite::Result<()> {
        let mut st = self
            .conn
            .prepare_cached("SELECT path FROM base ORDER BY path")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if let Ok(p) = RemotePath::parse(&r.get::<_, String>(0)?) {
                f(&p);
            }
        }
        Ok(())
    }
}

/// The bounds of the paths strictly inside `dir`: from `dir/` (included)
/// to `dir0` (excluded; `0` follows `/`), in byte order, which is both
/// SQLite's text order and [`RemotePath`]'s.
fn folder_range(dir: &RemotePath) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> RemoteFile {
        RemoteFile {
            revision: u64::from(n),
            hash: ContentHash::of(&[n]),
            size: 1,
        }
    }

    fn p(s: &str) -> RemotePath {
        s.parse().unwrap()
    }

    fn base_entry(n: u8) -> BaseEntry {
        BaseEntry {
            revision: u64::from(n),
            hash: ContentHash::of(&[n]),
            size: 1,
            stat: FileStat {
                size: 1,
                mtime_ns: i64::from(n),
                inode: u64::from(n),
            },
        }
    }

    #[test]
    fn a_folder_s_own_files_read_back_without_what_is_below_or_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = State::open(&tmp.path().join("state.db")).unwrap();
        let names = [
            "top.txt", "d", "d-x", "d.txt", "d/a", "d/b/c", "d/b/e/f", "d/b.txt", "d/b0", "d/c",
            "d/z/y", "d0", "d1/x", "e",
        ];
        let writes: Vec<StateWrite> = names
            .iter()
            .enumerate()
            .map(|(i, n)| StateWrite::Base(p(n), Some(base_entry(i as u8))))
            .collect();
        st.write(&writes).unwrap();
        let reader = st.reader().unwrap();
        let names_in = |dir: Option<&str>| -> Vec<String> {
            let mut v: Vec<String> = reader
                .files_in(dir.map(p).as_ref())
                .unwrap()
                .into_keys()
                .map(|k| k.as_str().to_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names_in(Some("d")), ["d/a", "d/b.txt", "d/b0", "d/c"]);
        assert_eq!(names_in(Some("d/b")), ["d/b/c"]);
        assert_eq!(names_in(None), ["d", "d-x", "d.txt", "d0", "e", "top.txt"]);
        assert!(names_in(Some("nothing")).is_empty());
        assert_eq!(
            reader.files_in(Some(&p("d"))).unwrap()[&p("d/c")],
            base_entry(9)
        );
    }

    #[test]
    fn the_paths_where_the_server_view_and_the_base_differ_are_found_in_one_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = State::open(&tmp.path().join("state.db")).unwrap();
        let mut writes = Vec::new();
        for (i, n) in ["a", "b/same", "c", "d", "e/x"].iter().enumerate() {
            writes.push(StateWrite::Base(p(n), Some(base_entry(i as u8))));
        }
        let as_remote = |b: BaseEntry| RemoteFile {
            revision: b.revision,
            hash: b.hash,
            size: b.size,
        };
        // Agreeing: "a", "b/same" (a different stat is the local side's
        // business). Differing: "c" (content), "d" (revision), "e/x" (only
        // in the base), "f" (only on the server).
        writes.push(StateWrite::Remote(p("a"), Some(as_remote(base_entry(0)))));
        writes.push(StateWrite::Remote(
            p("b/same"),
            Some(as_remote(base_entry(1))),
        ));
        writes.push(StateWrite::Remote(
            p("c"),
            Some(RemoteFile {
                hash: ContentHash::of(b"other"),
                ..as_remote(base_entry(2))
            }),
        ));
        writes.push(StateWrite::Remote(
            p("d"),
            Some(RemoteFile {
                revision: 99,
                ..as_remote(base_entry(3))
            }),
        ));
        writes.push(StateWrite::Remote(p("f"), Some(file(7))));
        st.write(&writes).unwrap();
        let differing = st.views_reader().unwrap().differing().unwrap();
        assert_eq!(differing, vec![p("c"), p("d"), p("e/x"), p("f")]);
    }

    #[test]
    fn big_files_are_found_by_content_through_an_index_small_ones_are_not_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = State::open(&tmp.path().join("state.db")).unwrap();
        let entry = |size: u64, hash: ContentHash| BaseEntry {
            revision: 1,
            hash,
            size,
            stat: FileStat {
                size,
                mtime_ns: 1,
                inode: 1,
            },
        };
        let (big, small) = (ContentHash::of(b"big"), ContentHash::of(b"small"));
        st.write(&[
            StateWrite::Base(p("a/big.iso"), Some(entry(1 << 20, big))),
            StateWrite::Base(p("b/copy.iso"), Some(entry(1 << 20, big))),
            StateWrite::Base(p("a/note.txt"), Some(entry(100, small))),
        ])
        .unwrap();
        let found = st.base_with_hash(&big, 4).unwrap();
        assert_eq!(found, vec![p("a/big.iso"), p("b/copy.iso")]);
        assert!(st.base_with_hash(&small, 4).unwrap().is_empty());
        // The look-up is an index search, not a pass over the base; and
        // the index holds only the big files.
        let plan: String = st
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT path FROM base WHERE hash = ?1 AND size >= 65536 LIMIT 4",
                [big.0.to_vec()],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("base_by_hash_big"), "{plan}");
        let indexed: i64 = st
            .conn
            .query_row(
                "SELECT count(*) FROM base INDEXED BY base_by_hash_big WHERE size >= 65536",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 2);
    }

    #[test]
    fn the_server_view_reads_back_by_path_by_folder_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = State::open(&tmp.path().join("state.db")).unwrap();
        let names = ["d", "d.txt", "d/a", "d/b/c", "d0", "d1/x", "e"];
        let writes: Vec<StateWrite> = names
            .iter()
            .enumerate()
            .map(|(i, n)| StateWrite::Remote(p(n), Some(file(i as u8))))
            .collect();
        st.write(&writes).unwrap();
        assert_eq!(st.remote_get(&p("d/a")).unwrap(), Some(file(2)));
        assert_eq!(st.remote_get(&p("d/zz")).unwrap(), None);
        // At or inside `d`: not `d.txt`, `d0` or `d1/x`, which sort near it.
        let inside: Vec<String> = st
            .remote_inside(&p("d"))
            .unwrap()
            .into_keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(inside, ["d", "d/a", "d/b/c"]);
        assert_eq!(st.remote_count_inside(&p("d")).unwrap(), 2);

        // Set but not written: read back at once, in order, everywhere.
        st.stage_remote(&p("d/a"), None);
        st.stage_remote(&p("d/aa"), Some(file(9)));
        st.stage_remote(&p("a"), Some(file(8)));
        assert_eq!(st.remote_get(&p("d/a")).unwrap(), None);
        assert_eq!(st.remote_count_inside(&p("d")).unwrap(), 2);
        let mut all = Vec::new();
        assert!(
            st.remote_each(|p, f| {
                all.push((p.to_string(), f.revision));
                true
            })
            .unwrap()
        );
        let want = [
            ("a", 8),
            ("d", 0),
            ("d.txt", 1),
            ("d/aa", 9),
            ("d/b/c", 3),
            ("d0", 4),
            ("d1/x", 5),
            ("e", 6),
        ];
        let want: Vec<(String, u64)> = want.iter().map(|(p, r)| (p.to_string(), *r)).collect();
        assert_eq!(all, want);
        // Stops when told to.
        let mut seen = 0;
        assert!(
            !st.remote_each(|_, _| {
                seen += 1;
                seen < 3
            })
            .unwrap()
        );
        assert_eq!(seen, 3);
        assert_eq!(st.held_peak(), 3);
        // Written: pending is empty again, the database answers.
        st.write(&[
            StateWrite::Remote(p("d/a"), None),
            StateWrite::Remote(p("d/aa"), Some(file(9))),
            StateWrite::Remote(p("a"), Some(file(8))),
        ])
        .unwrap();
        assert!(st.pending.is_empty());
        assert_eq!(st.remote_get(&p("d/aa")).unwrap(), Some(file(9)));
        st.write(&[StateWrite::ClearRemote]).unwrap();
        assert!(st.remote_each(|_, _| false).unwrap(), "empty");
    }

    #[test]
    fn a_folder_reads_back_a_page_at_a_time_with_what_is_pending() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = State::open(&tmp.path().join("state.db")).unwrap();
        let names = ["c", "d", "d/a", "d/b", "d/c", "d/d/e", "d/f", "d.x", "d0"];
        let writes: Vec<StateWrite> = names
            .iter()
            .enumerate()
            .map(|(i, n)| StateWrite::Remote(p(n), Some(file(i as u8))))
            .collect();
        st.write(&writes).unwrap();
        // Set and not written: `d/b` gone, `d/bb` new, `d/f` changed.
        st.stage_remote(&p("d/b"), None);
        st.stage_remote(&p("d/bb"), Some(file(20)));
        st.stage_remote(&p("d/f"), Some(file(21)));
        st.stage_remote(&p("e"), Some(file(22)));
        let mut seen = Vec::new();
        let mut after: Option<RemotePath> = None;
        let mut pages = 0;
        loop {
            let page = st.remote_inside_page(&p("d"), after.as_ref(), 2).unwrap();
            pages += 1;
            assert!(page.entries.len() <= 3, "about a page: {page:?}");
            seen.extend(
                page.entries
                    .into_iter()
                    .map(|(p, f)| (p.to_string(), f.revision)),
            );
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<(String, u64)> = [
            ("d", 1),
            ("d/a", 2),
            ("d/bb", 20),
            ("d/c", 4),
            ("d/d/e", 5),
            ("d/f", 21),
        ]
        .iter()
        .map(|(p, r)| (p.to_string(), *r))
        .collect();
        assert_eq!(seen, want, "every entry once, in order, pending laid over");
        assert!(pages >= 3, "{pages} pages");
        // The base pages the same way.
        st.write(&[StateWrite::Base(
            p("d/a"),
            Some(BaseEntry {
                revision: 1,
                hash: ContentHash::of(b"a"),
                size: 1,
                stat: FileStat::default(),
            }),
        )])
        .unwrap();
        let base = st.base_inside_page(&p("d"), None, 10).unwrap();
        assert_eq!(base.entries.len(), 1);
        assert!(base.next.is_none());
        // A page whose rows are all gone in `pending` is empty, not the end.
        st.stage_remote(&p("d/a"), None);
        st.stage_remote(&p("d/bb"), None);
        let page = st.remote_inside_page(&p("d"), Some(&p("d")), 2).unwrap();
        assert!(page.entries.is_empty());
        assert_eq!(page.next, Some(p("d/b")));
    }
}
