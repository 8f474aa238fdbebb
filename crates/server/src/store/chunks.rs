//! Manifests of stored files and the chunk index, behind [`ChunkIndex`] so
//! a second backend (issue 12) can keep them elsewhere.
//!
//! Invariants: a manifest is stored for one `(path, revision)` and is only
//! ever answered for that revision of that path (a file replaced, renamed
//! or deleted since has no manifest until one is recorded or computed
//! again); a chunk location names the `(path, revision)` it was cut from,
//! and [`ChunkIndex::locate`] answers only locations whose revision is the
//! path's current one. A location is a hint, never trusted: every byte
//! copied from it is checked against the chunk's hash (`store/delta.rs`).
//! Who may read a location is the caller's to decide (see `View`).

use distribusync_core::delta::{ChunkRef, Manifest};
use distribusync_core::{ContentHash, RemotePath, Revision};
use rusqlite::{OptionalExtension, Transaction, params};

use super::index::Index;
use crate::error::{Result, ServiceError};

/// Where a stored file holds a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub path: RemotePath,
    pub revision: Revision,
    pub offset: u64,
    pub len: u32,
}

/// Most locations [`ChunkIndex::locate`] answers per chunk.
pub const LOCATIONS_PER_CHUNK: u32 = 16;

/// The store's manifests and chunk index.
pub trait ChunkIndex {
    /// The manifest of `path` at `revision`, if one is recorded.
    ///
    /// # Errors
    /// The backend's.
    fn manifest(&self, path: &RemotePath, revision: Revision) -> Result<Option<Manifest>>;

    /// Records the manifest of `path` at `revision` (computed after the
    /// fact: a file found by hand, a renamed one) and indexes its chunks;
    /// ignored when `revision` is no longer current.
    ///
    /// # Errors
    /// The backend's.
    fn set_manifest(&self, path: &RemotePath, revision: Revision, m: &Manifest) -> Result<()>;

    /// Current locations of the chunk named `hash` (at most
    /// [`LOCATIONS_PER_CHUNK`]).
    ///
    /// # Errors
    /// The backend's.
    fn locate(&self, hash: &ContentHash) -> Result<Vec<ChunkLocation>>;
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS manifests (
    path TEXT PRIMARY KEY NOT NULL,
    revision INTEGER NOT NULL,
    manifest BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    hash BLOB NOT NULL,
    path TEXT NOT NULL,
    revision INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY (hash, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path);
";

/// A manifest as stored: params (u32), size (u64), hash, then per chunk
/// its length (u32) and hash; little-endian.
pub(super) fn encode(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + 36 * m.chunks.len());
    out.extend_from_slice(&m.params.to_le_bytes());
    out.extend_from_slice(&m.size.to_le_bytes());
    out.extend_from_slice(&m.hash.0);
    for c in &m.chunks {
        out.extend_from_slice(&c.len.to_le_bytes());
        out.extend_from_slice(&c.hash.0);
    }
    out
}

pub(super) fn decode(b: &[u8]) -> Option<Manifest> {
    let (head, rest) = b.split_at_checked(44)?;
    if !rest.len().is_multiple_of(36) {
        return None;
    }
    let params = u32::from_le_bytes(head[..4].try_into().ok()?);
    let size = u64::from_le_bytes(head[4..12].try_into().ok()?);
    let hash = ContentHash::from_slice(&head[12..44]).ok()?;
    let chunks = rest
        .chunks_exact(36)
        .map(|c| {
            Some(ChunkRef {
                len: u32::from_le_bytes(c[..4].try_into().ok()?),
                hash: ContentHash::from_slice(&c[4..]).ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Manifest {
        params,
        size,
        hash,
        chunks,
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Records `m` for `path` at `revision` inside a transaction: replaces the
/// path's manifest and its chunk locations.
pub(super) fn record(
    tx: &Transaction<'_>,
    path: &RemotePath,
    revision: Revision,
    m: &Manifest,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO manifests (path, revision, manifest) VALUES (?1, ?2, ?3) \
         ON CONFLICT(path) DO UPDATE SET revision = ?2, manifest = ?3",
    )?
    .execute(params![path.as_str(), to_i64(revision), encode(m)])?;
    tx.prepare_cached("DELETE FROM chunks WHERE path = ?1")?
        .execute([path.as_str()])?;
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO chunks (hash, path, revision, offset, len) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (offset, c) in m.offsets() {
        insert.execute(params![
            c.hash.0.to_vec(),
            path.as_str(),
            to_i64(revision),
            to_i64(offset),
            c.len
        ])?;
    }
    Ok(())
}

impl ChunkIndex for Index {
    fn manifest(&self, path: &RemotePath, revision: Revision) -> Result<Option<Manifest>> {
        let blob: Option<Vec<u8>> = self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT m.manifest FROM manifests m JOIN files f ON f.path = m.path \
                 WHERE m.path = ?1 AND m.revision = ?2 AND f.revision = ?2",
            )?
            .query_row(params![path.as_str(), to_i64(revision)], |r| r.get(0))
            .optional()?)
        })?;
        match blob {
            None => Ok(None),
            Some(b) => decode(&b).map(Some).ok_or_else(|| {
                ServiceError::io(
                    "index",
                    std::io::Error::other(format!(
                        "the stored manifest of {} is damaged",
                        path.shown()
                    )),
                )
            }),
        }
    }

    fn set_manifest(&self, path: &RemotePath, revision: Revision, m: &Manifest) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT revision FROM files WHERE path = ?1",
                    [path.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if current == Some(to_i64(revision)) {
                record(&tx, path, revision, m)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn locate(&self, hash: &ContentHash) -> Result<Vec<ChunkLocation>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT c.path, c.revision, c.offset, c.len FROM chunks c \
                 JOIN files f ON f.path = c.path AND f.revision = c.revision \
                 WHERE c.hash = ?1 LIMIT ?2",
            )?;
            let rows = st
                .query_map(params![hash.0.to_vec(), LOCATIONS_PER_CHUNK], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, u32>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(p, rev, offset, len)| {
                    Some(ChunkLocation {
                        path: RemotePath::parse(&p).ok()?,
                        revision: rev as u64,
                        offset: offset as u64,
                        len,
                    })
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distribusync_core::delta::{PARAMS_V1, manifest_of_bytes};

    #[test]
    fn manifests_are_answered_for_their_revision_only_and_chunks_where_current() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db"), 1000).unwrap();
        let p = RemotePath::parse("a.bin").unwrap();
        // Incompressible bytes, so the file is cut into several chunks.
        let mut data = vec![0u8; 4_000_000];
        blake3::Hasher::new()
            .update(b"chunks test")
            .finalize_xof()
            .fill(&mut data);
        let m = manifest_of_bytes(&data, &PARAMS_V1);
        assert_eq!(decode(&encode(&m)), Some(m.clone()));
        let (rec, _) = index
            .commit_puts(&[(p.clone(), m.size, m.hash, 0)], &[Some(&m)])
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(index.manifest(&p, rec.revision).unwrap(), Some(m.clone()));
        let at = index.locate(&m.chunks[1].hash).unwrap();
        assert_eq!(at.len(), 1);
        assert_eq!(at[0].offset, u64::from(m.chunks[0].len));
        // A new version without a manifest: the old one is not answered.
        let (rec2, _) = index.commit_put(&p, 1, ContentHash::of(b"x"), 0).unwrap();
        assert_eq!(index.manifest(&p, rec2.revision).unwrap(), None);
        assert!(index.locate(&m.chunks[1].hash).unwrap().is_empty());
        // Recorded late for a revision no longer current: ignored.
        index.set_manifest(&p, rec.revision, &m).unwrap();
        assert_eq!(index.manifest(&p, rec.revision).unwrap(), None);
    }
}
