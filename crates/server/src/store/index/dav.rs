//! What WebDAV keeps beside the files: collections made with MKCOL and
//! dead properties set with PROPPATCH.
//!
//! Invariants: neither touches the change log or a revision. A collection
//! row only makes an empty folder visible to WebDAV clients (sync clients,
//! like git, have no empty folders); a folder that holds files exists
//! whether or not it has a row. Rows are keyed by the full path
//! (`photos/2024`), so every caller names them alike.

use distribusync_core::RemotePath;
use rusqlite::{OptionalExtension, params};

use super::{FILE_COLS, FileRecord, Index, file_row, folder_range};
use crate::error::Result;

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
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM dav_collections WHERE path = ?1")?
                    .query_row([path.as_str()], |_| Ok(()))
                    .optional()?
                    .is_some(),
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
                let mut st =
                    tx.prepare_cached("INSERT OR IGNORE INTO dav_collections (path) VALUES (?1)")?;
                for p in path.ancestors() {
                    st.execute([p.as_str()])?;
                }
                st.execute([path.as_str()])?;
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
        let (lo, hi) = folder_range(from);
        let (tlo, thi) = folder_range(to);
        self.with(|c| {
            let tx = c.transaction()?;
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
}
