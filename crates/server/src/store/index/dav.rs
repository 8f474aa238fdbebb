//! What WebDAV keeps beside the files: collections made with MKCOL, dead
//! properties set with PROPPATCH, and locks.
//!
//! Invariants: none of them touches the change log or a revision. A
//! collection row only makes an empty folder visible to WebDAV clients
//! (sync clients, like git, have no empty folders); a folder that holds
//! files exists whether or not it has a row. Rows are keyed by the full
//! path (`photos/2024`), so every caller names them alike. Dead properties
//! follow their file or folder: a rename moves them and a delete drops
//! them in the same transaction (see `commit_rename`, `commit_delete`).
//! Lock rows mirror the store's lock table (`store/dav_locks.rs`); expired
//! ones are dropped whenever a lock is written and when they are loaded.

use std::time::{Duration, SystemTime};

use distribusync_core::RemotePath;
use distribusync_proto::{from_unix_nanos, unix_nanos};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{FILE_COLS, FileRecord, Index, file_row, folder_range, path_from};
use crate::error::Result;
use crate::store::dav_locks::LockRecord;

/// Adds what older indexes lack: the creation time of collections (set to
/// now for the ones made before it was recorded).
pub(super) fn migrate(c: &rusqlite::Connection) -> Result<()> {
    let has: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('dav_collections') WHERE name = 'created_ns'")?
        .exists([])?;
    if !has {
        c.execute_batch(&format!(
            "ALTER TABLE dav_collections ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
             UPDATE dav_collections SET created_ns = {};",
            unix_nanos(SystemTime::now())
        ))?;
    }
    Ok(())
}

/// Moves the collections and dead properties at or under `from` to `to`,
/// replacing what `to` had (a folder rename, a MOVE).
pub(super) fn move_dav_rows(
    tx: &Transaction<'_>,
    from: &RemotePath,
    to: &RemotePath,
) -> rusqlite::Result<()> {
    let (lo, hi) = folder_range(from);
    let (tlo, thi) = folder_range(to);
    for table in ["dav_collections", "dav_props"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE path = ?1 OR (path >= ?2 AND path < ?3)"),
            params![to.as_str(), tlo, thi],
        )?;
        // New path: `to` followed by what came after `from`.
        tx.execute(
            &format!(
                "UPDATE OR REPLACE {table} SET path = ?4 || substr(path, length(?1) + 1) \
                 WHERE path = ?1 OR (path >= ?2 AND path < ?3)"
            ),
            params![from.as_str(), lo, hi, to.as_str()],
        )?;
    }
    Ok(())
}

/// Drops the dead properties of the folders above `path` that no longer
/// exist once it is gone (no file left in them, and no MKCOL collection):
/// a folder that comes back later starts without them. Deepest first; a
/// folder that still exists keeps every one above it alive.
pub(super) fn drop_vanished_folder_props(
    tx: &Transaction<'_>,
    path: &RemotePath,
) -> rusqlite::Result<()> {
    let mut folders = path.ancestors();
    folders.reverse();
    for folder in folders {
        let (lo, hi) = folder_range(&folder);
        let lives = tx
            .prepare_cached("SELECT 1 FROM files WHERE path >= ?1 AND path < ?2 LIMIT 1")?
            .exists(params![lo, hi])?
            || tx
                .prepare_cached("SELECT 1 FROM dav_collections WHERE path = ?1")?
                .exists([folder.as_str()])?;
        if lives {
            break;
        }
        tx.execute("DELETE FROM dav_props WHERE path = ?1", [folder.as_str()])?;
    }
    Ok(())
}

/// Moves a file's dead properties from `from` to `to`, replacing `to`'s.
pub(super) fn move_file_props(
    tx: &Transaction<'_>,
    from: &RemotePath,
    to: &RemotePath,
) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM dav_props WHERE path = ?1", [to.as_str()])?;
    tx.execute(
        "UPDATE dav_props SET path = ?2 WHERE path = ?1",
        [from.as_str(), to.as_str()],
    )?;
    Ok(())
}

/// One dead property: its namespace, local name and whole XML element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadProp {
    pub ns: String,
    pub name: String,
    pub xml: Vec<u8>,
}

/// The key range of `dir`'s contents, or of everything for the root.
fn range(dir: Option<&RemotePath>) -> (String, String) {
    match dir {
        Some(d) => folder_range(d),
        // Every path sorts below U+10FFFF.
        None => (String::new(), "\u{10FFFF}".to_owned()),
    }
}

/// The first segment of `path` below `lo` (the folder's `dir/` prefix), and
/// whether more segments follow it.
fn first_below<'p>(path: &'p str, lo: &str) -> Option<(&'p str, bool)> {
    let rest = path.strip_prefix(lo)?;
    Some(match rest.split_once('/') {
        Some((first, _)) => (first, true),
        None => (rest, false),
    })
}

impl Index {
    /// The files directly in `dir` (the root when `None`) and the names of
    /// its sub-folders that hold files, each found with one indexed lookup
    /// (a folder's contents are skipped over, not read).
    pub fn children(&self, dir: Option<&RemotePath>) -> Result<(Vec<FileRecord>, Vec<String>)> {
        let (lo, hi) = range(dir);
        self.with(|c| {
            let mut files = Vec::new();
            let mut folders = Vec::new();
            let mut st = c.prepare_cached(&format!(
                "SELECT {FILE_COLS} FROM files WHERE path >= ?1 AND path < ?2 \
                 AND path != ?1 ORDER BY path LIMIT 1"
            ))?;
            let mut cursor = lo.clone();
            while let Some(f) = st.query_row(params![cursor, hi], file_row).optional()? {
                let Some((first, deeper)) = first_below(f.path.as_str(), &lo) else {
                    break;
                };
                if deeper {
                    folders.push(first.to_owned());
                    // '0' is the byte after '/': past everything in it.
                    cursor = format!("{lo}{first}0");
                } else {
                    // The next key after this one.
                    cursor = format!("{}\u{1}", f.path.as_str());
                    files.push(f);
                }
            }
            Ok((files, folders))
        })
    }

    /// True when `path` was made a collection with MKCOL.
    pub fn is_collection(&self, path: &RemotePath) -> Result<bool> {
        Ok(self.collection_created(path)?.is_some())
    }

    /// When MKCOL made `path` a collection (ns since the epoch); `None`
    /// when it is none.
    pub fn collection_created(&self, path: &RemotePath) -> Result<Option<i64>> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT created_ns FROM dav_collections WHERE path = ?1")?
                    .query_row([path.as_str()], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// The names of the MKCOL collections directly in `dir`.
    pub fn collections_in(&self, dir: Option<&RemotePath>) -> Result<Vec<String>> {
        let (lo, hi) = range(dir);
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT path FROM dav_collections WHERE path >= ?1 AND path < ?2 ORDER BY path",
            )?;
            let rows = st
                .query_map(params![lo, hi], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .iter()
                .filter_map(|p| match first_below(p, &lo) {
                    Some((name, false)) => Some(name.to_owned()),
                    _ => None,
                })
                .collect())
        })
    }

    /// Records `path` and every folder above it as collections.
    pub fn add_collection(&self, path: &RemotePath) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let now = unix_nanos(SystemTime::now());
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO dav_collections (path, created_ns) VALUES (?1, ?2)",
                )?;
                for p in path.ancestors() {
                    st.execute(params![p.as_str(), now])?;
                }
                st.execute(params![path.as_str(), now])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Forgets the collections and dead properties at or under `path`.
    pub fn forget_dav(&self, path: &RemotePath) -> Result<()> {
        let (lo, hi) = folder_range(path);
        self.with(|c| {
            let tx = c.transaction()?;
            for table in ["dav_collections", "dav_props"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE path = ?1 OR (path >= ?2 AND path < ?3)"),
                    params![path.as_str(), lo, hi],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Moves the collections and dead properties at or under `from` to
    /// `to` (after a MOVE), replacing what `to` had.
    pub fn move_dav(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            move_dav_rows(&tx, from, to)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Copies the dead properties of `from` (itself only) to `to`.
    pub fn copy_props(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM dav_props WHERE path = ?1", [to.as_str()])?;
            tx.execute(
                "INSERT INTO dav_props (path, ns, name, xml) \
                 SELECT ?2, ns, name, xml FROM dav_props WHERE path = ?1",
                params![from.as_str(), to.as_str()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The dead properties of `path`.
    pub fn props(&self, path: &RemotePath) -> Result<Vec<DeadProp>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT ns, name, xml FROM dav_props WHERE path = ?1 ORDER BY ns, name",
            )?;
            let rows = st
                .query_map([path.as_str()], |r| {
                    Ok(DeadProp {
                        ns: r.get(0)?,
                        name: r.get(1)?,
                        xml: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// The dead properties of every path directly in `dir` (the root when
    /// `None`) that has any, in one query: a PROPFIND of a folder asks for
    /// each child's, and one look-up per child cost it a round trip to the
    /// blocking pool per file. Bounded as a listing of `dir` is (deeper
    /// paths are filtered out in the query).
    pub fn child_props(
        &self,
        dir: Option<&RemotePath>,
    ) -> Result<std::collections::HashMap<String, Vec<DeadProp>>> {
        let (lo, hi) = range(dir);
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT path, ns, name, xml FROM dav_props WHERE path >= ?1 AND path < ?2 \
                 AND path != ?1 AND instr(substr(path, length(?1) + 1), '/') = 0 \
                 ORDER BY path, ns, name",
            )?;
            let mut found: std::collections::HashMap<String, Vec<DeadProp>> =
                std::collections::HashMap::new();
            let rows = st.query_map(params![lo, hi], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    DeadProp {
                        ns: r.get(1)?,
                        name: r.get(2)?,
                        xml: r.get(3)?,
                    },
                ))
            })?;
            for row in rows {
                let (path, prop) = row?;
                found.entry(path).or_default().push(prop);
            }
            Ok(found)
        })
    }

    /// Sets (`Some`) and removes (`None`) dead properties of `path`, all in
    /// one transaction: PROPPATCH is all or nothing.
    pub fn patch_props(
        &self,
        path: &RemotePath,
        patch: &[(String, String, Option<Vec<u8>>)],
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (ns, name, xml) in patch {
                match xml {
                    Some(xml) => tx.execute(
                        "INSERT OR REPLACE INTO dav_props (path, ns, name, xml) \
                         VALUES (?1, ?2, ?3, ?4)",
                        params![path.as_str(), ns, name, xml],
                    )?,
                    None => tx.execute(
                        "DELETE FROM dav_props WHERE path = ?1 AND ns = ?2 AND name = ?3",
                        params![path.as_str(), ns, name],
                    )?,
                };
            }
            tx.commit()?;
            Ok(())
        })
    }
}

/// The lock row's path column: `NULL` for the server's root.
fn lock_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LockRecord> {
    let at: Option<String> = r.get(1)?;
    Ok(LockRecord {
        token: r.get(0)?,
        at: at.map(path_from).transpose()?,
        url: r.get(2)?,
        principal: r.get(3)?,
        owner_xml: r.get(4)?,
        shared: r.get(5)?,
        deep: r.get(6)?,
        timeout: Duration::from_secs(r.get::<_, i64>(7)?.max(0) as u64),
        until: from_unix_nanos(r.get(8)?),
    })
}

impl Index {
    /// Writes a lock (new or renewed), dropping the rows of expired ones.
    pub fn save_lock(&self, l: &LockRecord) -> Result<()> {
        let now = unix_nanos(SystemTime::now());
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM dav_locks WHERE until_ns <= ?1", [now])?;
            tx.execute(
                "INSERT OR REPLACE INTO dav_locks (token, path, url, principal, owner_xml, \
                 shared, deep, timeout_s, until_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    l.token,
                    l.at.as_ref().map(RemotePath::as_str),
                    l.url,
                    l.principal,
                    l.owner_xml,
                    l.shared,
                    l.deep,
                    i64::try_from(l.timeout.as_secs()).unwrap_or(i64::MAX),
                    unix_nanos(l.until),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Forgets the locks with these tokens.
    pub fn drop_locks(&self, tokens: &[String]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached("DELETE FROM dav_locks WHERE token = ?1")?;
                for t in tokens {
                    st.execute([t])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The locks not expired yet (the others are dropped).
    pub fn load_locks(&self) -> Result<Vec<LockRecord>> {
        let now = unix_nanos(SystemTime::now());
        self.with(|c| {
            c.execute("DELETE FROM dav_locks WHERE until_ns <= ?1", [now])?;
            let mut st = c.prepare(
                "SELECT token, path, url, principal, owner_xml, shared, deep, timeout_s, \
                 until_ns FROM dav_locks",
            )?;
            let rows = st
                .query_map([], lock_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).expect("valid path")
    }

    #[test]
    fn children_skip_over_folders_and_list_collections_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(&dir.path().join("i.db"), 100).expect("open");
        let h = distribusync_core::ContentHash::of(b"x");
        for f in ["a.txt", "b/1", "b/2", "b/c/3", "b-c", "d/e/f"] {
            index.commit_put(&p(f), 1, h, 0).expect("put");
        }
        let (files, folders) = index.children(None).expect("root");
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["a.txt", "b-c"]);
        assert_eq!(folders, ["b", "d"]);
        let (files, folders) = index.children(Some(&p("b"))).expect("b");
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["b/1", "b/2"]);
        assert_eq!(folders, ["c"]);

        index.add_collection(&p("x/y")).expect("mkcol");
        assert_eq!(index.collections_in(None).expect("root"), ["x"]);
        assert_eq!(index.collections_in(Some(&p("x"))).expect("x"), ["y"]);
        index.move_dav(&p("x"), &p("z")).expect("move");
        assert!(index.is_collection(&p("z/y")).expect("moved"));
        assert!(!index.is_collection(&p("x")).expect("gone"));
        index.forget_dav(&p("z")).expect("forget");
        assert!(index.collections_in(None).expect("root").is_empty());
    }

    #[test]
    fn collections_made_before_their_dates_were_kept_get_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.db");
        {
            let c = rusqlite::Connection::open(&path).expect("sqlite");
            c.execute_batch(
                "CREATE TABLE dav_collections (path TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
                 INSERT INTO dav_collections VALUES ('old');",
            )
            .expect("an index of before");
        }
        let index = Index::open(&path, 100).expect("open");
        let created = index.collection_created(&p("old")).expect("read");
        assert!(created.is_some_and(|ns| ns > 0), "{created:?}");
        index.add_collection(&p("new")).expect("mkcol");
        assert!(
            index
                .collection_created(&p("new"))
                .expect("read")
                .is_some_and(|ns| ns > 0)
        );
    }

    #[test]
    fn dead_properties_follow_renames_and_go_with_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(&dir.path().join("i.db"), 100).expect("open");
        let h = distribusync_core::ContentHash::of(b"x");
        let prop = |v: &str| {
            vec![(
                "urn:z".to_owned(),
                "c".to_owned(),
                Some(v.as_bytes().to_vec()),
            )]
        };
        index.commit_put(&p("f"), 1, h, 0).expect("put");
        index.commit_put(&p("d/g"), 1, h, 0).expect("put");
        index.patch_props(&p("f"), &prop("1")).expect("patch");
        index.patch_props(&p("d"), &prop("2")).expect("patch");
        index.patch_props(&p("d/g"), &prop("3")).expect("patch");
        index.add_collection(&p("d/empty")).expect("mkcol");

        index.commit_rename(&p("f"), &p("f2"), false).expect("file");
        assert!(index.props(&p("f")).expect("old").is_empty());
        assert_eq!(index.props(&p("f2")).expect("new")[0].xml, b"1");
        index.commit_rename(&p("d"), &p("e"), true).expect("folder");
        assert_eq!(index.props(&p("e")).expect("folder")[0].xml, b"2");
        assert_eq!(index.props(&p("e/g")).expect("inside")[0].xml, b"3");
        assert!(index.is_collection(&p("e/empty")).expect("moved"));
        assert!(index.props(&p("d/g")).expect("old").is_empty());

        index.commit_delete(&p("f2")).expect("delete");
        assert!(index.props(&p("f2")).expect("gone").is_empty());

        // A folder that goes with its last file takes its properties.
        index.commit_put(&p("x/y/z"), 1, h, 0).expect("put");
        index.commit_put(&p("x/w"), 1, h, 0).expect("put");
        index.patch_props(&p("x"), &prop("4")).expect("patch");
        index.patch_props(&p("x/y"), &prop("5")).expect("patch");
        index.commit_delete(&p("x/y/z")).expect("delete");
        assert!(index.props(&p("x/y")).expect("vanished").is_empty());
        assert_eq!(index.props(&p("x")).expect("still there")[0].xml, b"4");
        index
            .commit_rename(&p("x/w"), &p("v"), false)
            .expect("last file out");
        assert!(index.props(&p("x")).expect("vanished").is_empty());
    }
}
