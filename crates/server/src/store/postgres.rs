//! The cluster backend's metadata and change feed in PostgreSQL (issue 12):
//! [`PgMetadata`] (a [`Metadata`]) and [`PgFeed`] (a [`ChangeFeed`]),
//! shared by every server instance that opens the same database.
//!
//! Invariants:
//! - Every committing transaction first locks the one `head` row (`SELECT
//!   … FOR UPDATE`), then reads its preconditions, then takes each revision
//!   with `UPDATE head SET seq = seq + 1 RETURNING seq`. Writers are thus
//!   serialised across instances: a writer reads the state left by the one
//!   before it (READ COMMITTED takes a fresh snapshot per statement), so
//!   of two racing `if_revision` writers exactly one wins; and revisions
//!   become visible in the order they were given, without gaps (a bare
//!   sequence's values can commit out of order and make a reader skip one).
//! - `NOTIFY distribusync_changes` is sent inside the committing
//!   transaction, so PostgreSQL delivers it only on commit. It is a wake-up
//!   only: [`PgFeed`] then reads the log by revision from where it was, so
//!   a lost or coalesced notification, or a dropped connection (it listens
//!   again and catches up), never loses a change.
//! - The schema has a version row; a database of a newer version than this
//!   server knows is refused at open with one line saying so.
//! - Paths are `TEXT COLLATE "C"`: byte order, as SQLite's, so folder ranges
//!   (`"dir/" <= p < "dir0"`) and listing order are the local backend's.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use distribusync_core::delta::Manifest;
use distribusync_core::{ContentHash, RemotePath, Revision};
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::backend::{
    BoxFuture, ChangeFeed, Committed, Metadata, NewVersion, RenameFacts, check_put, check_rename,
    check_rename_paths, manifest_of, nothing_to_delete,
};
use super::{ChangeOp, ChangeRecord, FileRecord, chunks};
use crate::error::{Result, ServiceError};

/// The schema version this server writes and reads (2: chunk pins for the
/// collector; a version-1 database is brought up to it at open).
pub const SCHEMA_VERSION: i32 = 2;

/// The channel commits notify on.
const CHANNEL: &str = "distribusync_changes";

/// Connections one instance holds to the database at most.
const POOL_SIZE: usize = 16;

/// Taken (as a transaction-scoped advisory lock) while the schema is
/// created, so that instances starting together do not race on it.
const SCHEMA_LOCK: i64 = 0x6469_7374_7379_6e63; // "distsync"

/// The chunk collector's lock: taken exclusively while it decides and
/// removes, shared by each upload while it pins its chunks (see
/// [`PgMetadata::pin_chunks`]).
const COLLECTOR_LOCK: i64 = 0x6469_7374_6763_6f6c; // "distgcol"

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO head (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS files (
    path TEXT COLLATE "C" PRIMARY KEY,
    size BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    revision BIGINT NOT NULL,
    modified_ns BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGINT PRIMARY KEY,
    op SMALLINT NOT NULL,
    path TEXT NOT NULL,
    new_path TEXT,
    revision BIGINT NOT NULL,
    size BIGINT NOT NULL,
    hash BYTEA,
    modified_ns BIGINT NOT NULL,
    folder BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (
    path TEXT COLLATE "C" PRIMARY KEY,
    revision BIGINT NOT NULL,
    manifest BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    hash BYTEA NOT NULL,
    owner TEXT NOT NULL,
    until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (hash, owner)
);
"#;

const FILE_COLS: &str = "path, size, hash, revision, modified_ns";
const CHANGE_COLS: &str = "seq, op, path, new_path, revision, size, hash, modified_ns, folder";

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// `e` and its causes, one after the other, on one line (tokio-postgres
/// shows only the outermost in its `Display`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    // One line: a server's error may add DETAIL and HINT lines.
    out.replace('\n', "; ")
}

impl From<tokio_postgres::Error> for ServiceError {
    fn from(e: tokio_postgres::Error) -> Self {
        ServiceError::Database(format!("metadata database: {}", chain(&e)))
    }
}

fn damaged(what: impl std::fmt::Display) -> ServiceError {
    ServiceError::Database(format!("metadata database: damaged row: {what}"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn path_from(s: &str) -> Result<RemotePath> {
    RemotePath::parse(s).map_err(|e| damaged(format!("path {}: {e}", distribusync_core::echo(s))))
}

fn hash_from(b: &[u8]) -> Result<ContentHash> {
    ContentHash::from_slice(b).map_err(|e| damaged(format!("hash: {e}")))
}

fn file_from(row: &tokio_postgres::Row) -> Result<FileRecord> {
    Ok(FileRecord {
        path: path_from(row.try_get(0)?)?,
        size: row.try_get::<_, i64>(1)? as u64,
        hash: hash_from(row.try_get(2)?)?,
        revision: row.try_get::<_, i64>(3)? as u64,
        modified_ns: row.try_get(4)?,
    })
}

fn change_from(row: &tokio_postgres::Row) -> Result<ChangeRecord> {
    let op = match row.try_get::<_, i16>(1)? {
        1 => ChangeOp::Put,
        2 => ChangeOp::Delete,
        3 => ChangeOp::Rename,
        other => return Err(damaged(format!("change operation {other}"))),
    };
    Ok(ChangeRecord {
        seq: row.try_get::<_, i64>(0)? as u64,
        op,
        path: path_from(row.try_get(2)?)?,
        new_path: row
            .try_get::<_, Option<&str>>(3)?
            .map(path_from)
            .transpose()?,
        revision: row.try_get::<_, i64>(4)? as u64,
        size: row.try_get::<_, i64>(5)? as u64,
        hash: row
            .try_get::<_, Option<&[u8]>>(6)?
            .map(hash_from)
            .transpose()?,
        modified_ns: row.try_get(7)?,
        folder: row.try_get(8)?,
    })
}

/// The half-open key range `[lo, hi)` of every path inside folder `dir`
/// ('0' is the byte after '/').
fn folder_range(dir: &RemotePath) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

/// `url` with any password replaced, bounded: safe to print.
fn redacted(url: &str) -> String {
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    distribusync_core::echo(&shown).to_string()
}

/// The database `config` names, without its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    let at = if user.is_empty() { "" } else { "@" };
    format!("postgres://{user}{at}{host}:{port}/{db}")
}

/// Metadata in PostgreSQL; a cheap clone.
#[derive(Clone)]
pub struct PgMetadata {
    inner: Arc<PgInner>,
}

struct PgInner {
    pool: Pool,
    config: tokio_postgres::Config,
    /// The database, as printed (no password).
    shown: String,
    max_changes: u64,
}

impl std::fmt::Debug for PgMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMetadata")
            .field("database", &self.inner.shown)
            .field("max_changes", &self.inner.max_changes)
            .finish_non_exhaustive()
    }
}

impl PgMetadata {
    /// Connects to the database at `url` (`postgres://user:pass@host:port/db`),
    /// creating the schema if it is empty; keeps `max_changes` entries of
    /// the change log.
    ///
    /// # Errors
    /// [`ServiceError::Database`], one line naming the database (never its
    /// password) and what is wrong: a URL that does not parse, a server that
    /// cannot be reached or refuses the login, a schema newer than
    /// [`SCHEMA_VERSION`].
    pub async fn open(url: &str, max_changes: u64) -> Result<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            ServiceError::Database(format!(
                "--metadata {}: not a PostgreSQL URL ({}); expected postgres://USER:PASSWORD@HOST:PORT/DATABASE",
                redacted(url),
                chain(&e)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let shown = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| ServiceError::Database(format!("metadata database {shown}: {e}")))?;
        let m = Self {
            inner: Arc::new(PgInner {
                pool,
                config,
                shown,
                max_changes,
            }),
        };
        m.migrate().await?;
        tracing::info!(database = %m.inner.shown, schema = SCHEMA_VERSION, "metadata in PostgreSQL");
        Ok(m)
    }

    /// The database, as printed (no password).
    pub fn database(&self) -> &str {
        &self.inner.shown
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(|e| {
            let why = match &e {
                deadpool_postgres::PoolError::Backend(e) => chain(e),
                other => other.to_string(),
            };
            ServiceError::Database(format!(
                "cannot reach the metadata database {}: {why}",
                self.inner.shown
            ))
        })
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS distribusync_schema (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL
            )",
        )
        .await?;
        let found: Option<i32> = tx
            .query_opt("SELECT version FROM distribusync_schema WHERE id = 1", &[])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(ServiceError::Database(format!(
                    "the metadata database {} has schema version {v}, newer than the {SCHEMA_VERSION} \
                     this server knows: run the distribusync release that wrote it, or a newer one",
                    self.inner.shown
                )));
            }
            Some(v) if v == SCHEMA_VERSION => {}
            _ => {
                tx.batch_execute(SCHEMA).await?;
                tx.execute(
                    "INSERT INTO distribusync_schema (id, version) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET version = $1",
                    &[&SCHEMA_VERSION],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pins chunks an upload is about to store or reuse, for `ttl`: the
    /// collector removes no pinned chunk. Taken under the collector's lock
    /// (shared), so a pin is either seen by a collection or made after it
    /// has finished removing: an upload that pinned a chunk and then found
    /// it in the bucket can rely on it staying there.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn pin_chunks(
        &self,
        owner: &str,
        hashes: &[ContentHash],
        ttl: Duration,
    ) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[&COLLECTOR_LOCK],
        )
        .await?;
        let mut keys: Vec<&[u8]> = hashes.iter().map(|h| h.0.as_slice()).collect();
        // One row per chunk, and in one order: concurrent pins never
        // deadlock on each other's rows.
        keys.sort_unstable();
        keys.dedup();
        tx.execute(
            "INSERT INTO pins (hash, owner, until) \
             SELECT h, $2, clock_timestamp() + make_interval(secs => $3) \
             FROM unnest($1::bytea[]) AS h \
             ON CONFLICT (hash, owner) DO UPDATE SET until = GREATEST(pins.until, EXCLUDED.until)",
            &[&keys, &owner, &ttl.as_secs_f64()],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops the pins of `owner` (its files are committed, or refused).
    ///
    /// # Errors
    /// When the database fails (the pins then expire by themselves).
    pub async fn unpin(&self, owner: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Not worth a WAL flush: pins lost in a crash of the database only
        // linger until they expire, which keeps chunks a while longer.
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
        tx.execute("DELETE FROM pins WHERE owner = $1", &[&owner])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One collection: of the `stored` chunks, removes with `remove` those
    /// written more than `grace` ago that no manifest references and no
    /// upload has pinned. Decided and done under the collector's lock
    /// (exclusive): another instance collecting meanwhile is skipped
    /// (`None`), and no upload pins a chunk while its fate is decided.
    ///
    /// # Errors
    /// When the database fails, or `remove` does (what was removed before
    /// stays removed: each was garbage).
    pub async fn collect<F, Fut>(
        &self,
        stored: Vec<super::StoredChunk>,
        grace: Duration,
        mut remove: F,
    ) -> Result<Option<super::CollectReport>>
    where
        F: FnMut(ContentHash) -> Fut + Send,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&COLLECTOR_LOCK])
            .await?
            .try_get(0)?;
        if !locked {
            return Ok(None);
        }
        tx.execute("DELETE FROM pins WHERE until < clock_timestamp()", &[])
            .await?;
        let now: f64 = tx
            .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .await?
            .try_get(0)?;
        let mut live = std::collections::HashSet::new();
        for row in tx.query("SELECT hash FROM pins", &[]).await? {
            live.insert(hash_from(row.try_get(0)?)?);
        }
        for row in tx
            .query("SELECT path, manifest FROM manifests", &[])
            .await?
        {
            let path: &str = row.try_get(0)?;
            let m = chunks::decode(row.try_get(1)?).ok_or_else(|| {
                damaged(format!("the manifest of {}", distribusync_core::echo(path)))
            })?;
            live.extend(m.chunks.iter().map(|c| c.hash));
        }
        let before = now - grace.as_secs_f64();
        let mut report = super::CollectReport {
            stored: stored.len(),
            ..Default::default()
        };
        for chunk in stored {
            if live.contains(&chunk.hash) {
                continue;
            }
            // Written within the grace period: an upload may be storing
            // it (its pin is the guarantee; this is the margin).
            if chunk.written as f64 >= before {
                report.young += 1;
                continue;
            }
            remove(chunk.hash).await?;
            report.removed += 1;
        }
        tx.commit().await?;
        Ok(Some(report))
    }

    /// Starts a transaction that holds the `head` row: the one writer at a
    /// time, across every instance (see the module's invariants).
    async fn write<T: Send>(
        &self,
        f: impl for<'c> FnOnce(&'c Tx<'c>) -> BoxFuture<'c, Result<(T, Option<u64>)>> + Send,
    ) -> Result<T> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.query_one("SELECT seq FROM head WHERE id = 1 FOR UPDATE", &[])
            .await?;
        let (out, newest) = f(&tx).await?;
        if let Some(newest) = newest {
            let max = self.inner.max_changes;
            // Amortised, as the local index: in steps of 1/16 of the
            // allowed length.
            let step = (max / 16).max(1);
            if newest > max && newest.is_multiple_of(step) {
                tx.execute(
                    "DELETE FROM changes WHERE seq <= $1",
                    &[&to_i64(newest - max)],
                )
                .await?;
            }
            // Delivered on commit only: a wake-up for every instance's feed.
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &newest.to_string()])
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }
}

async fn get_in(tx: &Tx<'_>, path: &RemotePath) -> Result<Option<FileRecord>> {
    let st = tx
        .prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE path = $1"))
        .await?;
    tx.query_opt(&st, &[&path.as_str()])
        .await?
        .as_ref()
        .map(file_from)
        .transpose()
}

async fn folder_in(tx: &Tx<'_>, dir: &RemotePath) -> Result<bool> {
    let (lo, hi) = folder_range(dir);
    let st = tx
        .prepare_cached("SELECT 1 FROM files WHERE path >= $1 AND path < $2 LIMIT 1")
        .await?;
    Ok(tx.query_opt(&st, &[&lo, &hi]).await?.is_some())
}

/// Takes the next revision (the head row is held since the transaction
/// began).
async fn next_seq(tx: &Tx<'_>) -> Result<u64> {
    let st = tx
        .prepare_cached("UPDATE head SET seq = seq + 1 WHERE id = 1 RETURNING seq")
        .await?;
    let seq: i64 = tx.query_one(&st, &[]).await?.try_get(0)?;
    Ok(seq as u64)
}

/// Appends `change` to the log as number `seq`.
async fn append(tx: &Tx<'_>, seq: u64, change: &ChangeRecord) -> Result<()> {
    let revision = if change.op == ChangeOp::Delete {
        0
    } else {
        seq
    };
    let st = tx
        .prepare_cached(&format!(
            "INSERT INTO changes ({CHANGE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .await?;
    tx.execute(
        &st,
        &[
            &to_i64(seq),
            &(change.op as i16),
            &change.path.as_str(),
            &change.new_path.as_ref().map(RemotePath::as_str),
            &to_i64(revision),
            &to_i64(change.size),
            &change.hash.map(|h| h.0.to_vec()),
            &change.modified_ns,
            &change.folder,
        ],
    )
    .await?;
    Ok(())
}

async fn put_in(tx: &Tx<'_>, put: &NewVersion) -> Result<Result<(FileRecord, ChangeRecord)>> {
    if let Err(e) = check_put(put, get_in(tx, &put.path).await?.as_ref()) {
        return Ok(Err(e));
    }
    let seq = next_seq(tx).await?;
    let change = ChangeRecord::put(seq, put.path.clone(), put.size, put.hash, put.modified_ns);
    append(tx, seq, &change).await?;
    let st = tx
        .prepare_cached(
            "INSERT INTO files (path, size, hash, revision, modified_ns) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (path) DO UPDATE SET size = $2, hash = $3, revision = $4, modified_ns = $5",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &put.path.as_str(),
            &to_i64(put.size),
            &put.hash.0.as_slice(),
            &to_i64(seq),
            &put.modified_ns,
        ],
    )
    .await?;
    if let Some(m) = manifest_of(put) {
        let st = tx
            .prepare_cached(
                "INSERT INTO manifests (path, revision, manifest) VALUES ($1, $2, $3) \
                 ON CONFLICT (path) DO UPDATE SET revision = $2, manifest = $3",
            )
            .await?;
        tx.execute(&st, &[&put.path.as_str(), &to_i64(seq), &chunks::encode(m)])
            .await?;
    }
    let record = FileRecord {
        path: put.path.clone(),
        size: put.size,
        hash: put.hash,
        revision: seq,
        modified_ns: put.modified_ns,
    };
    Ok(Ok((record, change)))
}

async fn delete_in(
    tx: &Tx<'_>,
    path: RemotePath,
    if_revision: Option<Revision>,
) -> Result<(ChangeRecord, Option<u64>)> {
    let Some(current) = get_in(tx, &path).await? else {
        let folder = folder_in(tx, &path).await?;
        return Err(nothing_to_delete(path, folder));
    };
    super::check_revision(&path, Some(&current), if_revision)?;
    let seq = next_seq(tx).await?;
    let change = ChangeRecord::delete(seq, path);
    append(tx, seq, &change).await?;
    tx.execute(
        "DELETE FROM files WHERE path = $1",
        &[&change.path.as_str()],
    )
    .await?;
    tx.execute(
        "DELETE FROM manifests WHERE path = $1",
        &[&change.path.as_str()],
    )
    .await?;
    Ok((change, Some(seq)))
}

async fn rename_in(
    tx: &Tx<'_>,
    from: RemotePath,
    to: RemotePath,
    overwrite: bool,
    if_revision: Option<Revision>,
) -> Result<((ChangeRecord, u64), Option<u64>)> {
    let from_file = get_in(tx, &from).await?;
    let from_folder = from_file.is_none() && folder_in(tx, &from).await?;
    let longest_inside = if from_folder {
        let (lo, hi) = folder_range(&from);
        let n: Option<i32> = tx
            .query_one(
                "SELECT MAX(octet_length(path)) FROM files WHERE path >= $1 AND path < $2",
                &[&lo, &hi],
            )
            .await?
            .try_get(0)?;
        n.map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    } else {
        None
    };
    let facts = RenameFacts {
        from_file,
        from_folder,
        longest_inside,
        to_folder: folder_in(tx, &to).await?,
        to_file: get_in(tx, &to).await?.is_some(),
    };
    let folder = check_rename(&from, &to, overwrite, if_revision, &facts)?;
    let seq = next_seq(tx).await?;
    let single = facts.from_file.as_ref();
    let change = ChangeRecord::rename(seq, from.clone(), to.clone(), single, folder);
    append(tx, seq, &change).await?;
    // A manifest describes content, which a rename does not change: the
    // current one of each file moved goes with it, under its new revision
    // (in the cluster backend it is where the content is). Moved before the
    // files, whose revision it is matched on.
    let moved = if folder {
        let (lo, hi) = folder_range(&from);
        // Characters, as substr counts them: the part after `from`.
        let rest = i32::try_from(from.as_str().chars().count() + 1).unwrap_or(i32::MAX);
        let (to_lo, to_hi) = folder_range(&to);
        tx.execute(
            "DELETE FROM manifests WHERE path >= $1 AND path < $2",
            &[&to_lo, &to_hi],
        )
        .await?;
        tx.execute(
            "UPDATE manifests m SET path = $1::text || substr(m.path, $2::int), revision = $3 \
             FROM files f WHERE f.path = m.path AND f.revision = m.revision \
             AND m.path >= $4 AND m.path < $5",
            &[&to.as_str(), &rest, &to_i64(seq), &lo, &hi],
        )
        .await?;
        tx.execute(
            "DELETE FROM manifests WHERE path >= $1 AND path < $2",
            &[&lo, &hi],
        )
        .await?;
        tx.execute(
            "UPDATE files SET path = $1::text || substr(path, $2::int), revision = $3 \
             WHERE path >= $4 AND path < $5",
            &[&to.as_str(), &rest, &to_i64(seq), &lo, &hi],
        )
        .await?
    } else {
        tx.execute("DELETE FROM files WHERE path = $1", &[&to.as_str()])
            .await?;
        tx.execute("DELETE FROM manifests WHERE path = $1", &[&to.as_str()])
            .await?;
        tx.execute(
            "UPDATE manifests m SET path = $1, revision = $2 \
             FROM files f WHERE m.path = $3 AND f.path = m.path AND f.revision = m.revision",
            &[&to.as_str(), &to_i64(seq), &from.as_str()],
        )
        .await?;
        tx.execute("DELETE FROM manifests WHERE path = $1", &[&from.as_str()])
            .await?;
        tx.execute(
            "UPDATE files SET path = $1, revision = $2 WHERE path = $3",
            &[&to.as_str(), &to_i64(seq), &from.as_str()],
        )
        .await?
    };
    Ok(((change, moved), Some(seq)))
}

impl Metadata for PgMetadata {
    fn get(&self, path: RemotePath) -> BoxFuture<'_, Result<Option<FileRecord>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let st = client
                .prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE path = $1"))
                .await?;
            client
                .query_opt(&st, &[&path.as_str()])
                .await?
                .as_ref()
                .map(file_from)
                .transpose()
        })
    }

    fn is_folder(&self, dir: RemotePath) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let client = self.client().await?;
            let (lo, hi) = folder_range(&dir);
            let st = client
                .prepare_cached("SELECT 1 FROM files WHERE path >= $1 AND path < $2 LIMIT 1")
                .await?;
            Ok(client.query_opt(&st, &[&lo, &hi]).await?.is_some())
        })
    }

    fn list_page(
        &self,
        prefix: Option<RemotePath>,
        after: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FileRecord>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let after = after.unwrap_or_default();
            let limit = i64::from(limit);
            let rows = match &prefix {
                None => {
                    let st = client
                        .prepare_cached(&format!(
                            "SELECT {FILE_COLS} FROM files WHERE path > $1 ORDER BY path LIMIT $2"
                        ))
                        .await?;
                    client.query(&st, &[&after, &limit]).await?
                }
                Some(p) => {
                    let (lo, hi) = folder_range(p);
                    let st = client
                        .prepare_cached(&format!(
                            "SELECT {FILE_COLS} FROM files WHERE path > $1 \
                             AND (path = $2 OR (path >= $3 AND path < $4)) ORDER BY path LIMIT $5"
                        ))
                        .await?;
                    client
                        .query(&st, &[&after, &p.as_str(), &lo, &hi, &limit])
                        .await?
                }
            };
            rows.iter().map(file_from).collect()
        })
    }

    fn commit_puts(&self, puts: Vec<NewVersion>) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(async move {
            self.write(move |tx| {
                Box::pin(async move {
                    let mut out = Vec::with_capacity(puts.len());
                    let mut newest = None;
                    for put in &puts {
                        let done = put_in(tx, put).await?;
                        if let Ok((record, _)) = &done {
                            newest = Some(record.revision);
                        }
                        out.push(done);
                    }
                    Ok((out, newest))
                })
            })
            .await
        })
    }

    fn commit_delete(
        &self,
        path: RemotePath,
        if_revision: Option<Revision>,
    ) -> BoxFuture<'_, Result<ChangeRecord>> {
        Box::pin(async move {
            self.write(move |tx| Box::pin(delete_in(tx, path, if_revision)))
                .await
        })
    }

    fn commit_rename(
        &self,
        from: RemotePath,
        to: RemotePath,
        overwrite: bool,
        if_revision: Option<Revision>,
    ) -> BoxFuture<'_, Result<(ChangeRecord, u64)>> {
        Box::pin(async move {
            check_rename_paths(&from, &to)?;
            self.write(move |tx| Box::pin(rename_in(tx, from, to, overwrite, if_revision)))
                .await
        })
    }

    fn changes_since(&self, since: u64, limit: u32) -> BoxFuture<'_, Result<Vec<ChangeRecord>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let st = client
                .prepare_cached(&format!(
                    "SELECT {CHANGE_COLS} FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .await?;
            client
                .query(&st, &[&to_i64(since), &i64::from(limit)])
                .await?
                .iter()
                .map(change_from)
                .collect()
        })
    }

    fn log_bounds(&self) -> BoxFuture<'_, Result<(u64, u64)>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT (SELECT seq FROM head WHERE id = 1), (SELECT MIN(seq) FROM changes)",
                    &[],
                )
                .await?;
            let newest: i64 = row.try_get::<_, Option<i64>>(0)?.unwrap_or(0);
            let oldest: Option<i64> = row.try_get(1)?;
            let floor = oldest.map_or(newest, |o| o - 1);
            Ok((floor as u64, newest as u64))
        })
    }

    fn totals(&self) -> BoxFuture<'_, Result<(u64, u64)>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM files",
                    &[],
                )
                .await?;
            let files: i64 = row.try_get(0)?;
            let bytes: i64 = row.try_get(1)?;
            Ok((files as u64, bytes as u64))
        })
    }

    fn manifest(
        &self,
        path: RemotePath,
        revision: Revision,
    ) -> BoxFuture<'_, Result<Option<Manifest>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "SELECT m.manifest FROM manifests m JOIN files f ON f.path = m.path \
                     WHERE m.path = $1 AND m.revision = $2 AND f.revision = $2",
                )
                .await?;
            let Some(row) = client
                .query_opt(&st, &[&path.as_str(), &to_i64(revision)])
                .await?
            else {
                return Ok(None);
            };
            let bytes: &[u8] = row.try_get(0)?;
            chunks::decode(bytes)
                .map(Some)
                .ok_or_else(|| damaged(format!("the manifest of {}", path.shown())))
        })
    }
}

/// The change feed of the cluster backend: the changes committed through
/// any instance, read from the log by revision after each NOTIFY; a cheap
/// clone. Its task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PgFeed {
    changes: broadcast::Sender<ChangeRecord>,
    _stop: Arc<DropGuard>,
}

/// A session listening on [`CHANNEL`]: wakes once (or more) per commit.
struct Listener {
    _client: tokio_postgres::Client,
    wake: mpsc::Receiver<()>,
}

async fn listen(config: &tokio_postgres::Config, shown: &str) -> Result<Listener> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| {
        ServiceError::Database(format!(
            "cannot reach the metadata database {shown}: {}",
            chain(&e)
        ))
    })?;
    let (tx, wake) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                // Full: a wake-up is pending already, which reads all.
                let _ = tx.try_send(());
            }
        }
        // Dropping `tx` tells the feed the session is gone.
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok(Listener {
        _client: client,
        wake,
    })
}

/// A session listening on one channel (see [`PgMetadata::listen_to`]).
pub struct Notifications {
    _client: tokio_postgres::Client,
    /// The payload of each notification, in order; ends when the session
    /// does (the database went away).
    pub payloads: mpsc::UnboundedReceiver<String>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl PgMetadata {
    /// A new session (not from the pool) listening on `channel`.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn listen_to(&self, channel: &str) -> Result<Notifications> {
        let shown = &self.inner.shown;
        let (client, mut connection) = self.inner.config.connect(NoTls).await.map_err(|e| {
            ServiceError::Database(format!(
                "cannot reach the metadata database {shown}: {}",
                chain(&e)
            ))
        })?;
        let (tx, payloads) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            use futures::StreamExt;
            while let Some(Ok(m)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m
                    && tx.send(n.payload().to_owned()).is_err()
                {
                    return;
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok(Notifications {
            _client: client,
            payloads,
        })
    }
}

impl PgFeed {
    /// Starts following the log of `meta`'s database from its newest
    /// change.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn start(meta: PgMetadata) -> Result<Self> {
        let listener = listen(&meta.inner.config, &meta.inner.shown).await?;
        let (_, newest) = meta.log_bounds().await?;
        let (changes, _) = broadcast::channel(1024);
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            meta,
            changes.clone(),
            stop.clone(),
            newest,
            listener,
        ));
        Ok(Self {
            changes,
            _stop: Arc::new(stop.drop_guard()),
        })
    }
}

impl ChangeFeed for PgFeed {
    fn subscribe(&self) -> broadcast::Receiver<ChangeRecord> {
        self.changes.subscribe()
    }
}

/// Announces every change after `last`, in order; the last one announced.
async fn catch_up(
    meta: &PgMetadata,
    out: &broadcast::Sender<ChangeRecord>,
    mut last: u64,
) -> (u64, Result<()>) {
    loop {
        let batch = match meta.changes_since(last, 1000).await {
            Ok(b) => b,
            Err(e) => return (last, Err(e)),
        };
        if batch.is_empty() {
            return (last, Ok(()));
        }
        for c in batch {
            last = c.seq;
            // No receivers is fine: nobody is watching.
            let _ = out.send(c);
        }
    }
}

/// The feed's task: listen, catch up, wait for a wake-up, catch up, … On
/// any failure (the database went away) it listens again, backing off from
/// 100 ms to 5 s, and catches up from where it was.
async fn follow(
    meta: PgMetadata,
    out: broadcast::Sender<ChangeRecord>,
    stop: CancellationToken,
    mut last: u64,
    first: Listener,
) {
    let mut listener = Some(first);
    let mut pause = Duration::from_millis(100);
    loop {
        let mut session = match listener.take() {
            Some(l) => l,
            None => match listen(&meta.inner.config, &meta.inner.shown).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: cannot listen; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        loop {
            let (at, caught) = catch_up(&meta, &out, last).await;
            last = at;
            if let Err(e) = caught {
                tracing::warn!(error = %e, "change feed: cannot read the log; listening again");
                break;
            }
            pause = Duration::from_millis(100);
            tokio::select! {
                () = stop.cancelled() => return,
                woke = session.wake.recv() => {
                    if woke.is_none() {
                        tracing::warn!("change feed: the listening session ended; listening again");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redacted("postgres://ds:s3cret@db:5432/ds"),
            "postgres://ds:***@db:5432/ds"
        );
        assert_eq!(redacted("postgres://ds@db/ds"), "postgres://ds@db/ds");
        let config: tokio_postgres::Config = "postgres://ds:s3cret@db:6000/files".parse().unwrap();
        assert_eq!(describe(&config), "postgres://ds@db:6000/files");
    }
}
