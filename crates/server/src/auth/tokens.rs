//! The token table in the index (`ROOT/.distribusync/index.db`) and the
//! server's hashing key (`ROOT/.distribusync/token.key`, mode 0600).
//!
//! Invariants: a token's secret is never stored, only
//! `blake3::keyed_hash(key, token text)`; the key never leaves its file.
//! Every change to the table bumps `token_meta.generation` in the same
//! transaction, so a running server notices a change made by another
//! process (`distribusync token …` on the same ROOT) by reading one row.
//! A revoked token keeps its row (marked) so `token list` can show it; a
//! new token may take a revoked token's name, which replaces that row.
//!
//! On the cluster backend (`serve --metadata …`) the same table and the
//! key live in PostgreSQL instead ([`TokenStore::open_cluster`]), shared by
//! every instance: a token made through any instance, or with `token
//! create --metadata URL`, works on all of them, and each change also
//! sends `NOTIFY distribusync_tokens` (see [`TOKENS_CHANNEL`]) so that
//! every instance reads the table again at once, not at its next poll.
//!
//! All methods block; async callers run them on the blocking pool (the
//! PostgreSQL table's methods wait there for the runtime's connections).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use distribusync_core::token::{
    self, ExpiryError, ID_BYTES, NameError, SECRET_BYTES, ScopeError, Scopes, Token, TokenId,
};
use distribusync_core::{PathError, RemotePath};
use distribusync_proto::{from_unix_nanos, unix_nanos};
use rusqlite::{Connection, OptionalExtension, params};

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Expiry(#[from] ExpiryError),
    #[error("--prefix: {0}")]
    Prefix(#[from] PathError),
    #[error("a token named `{0}` already exists (revoke it first, or pick another name)")]
    Duplicate(String),
    #[error("no token named `{}` (see `distribusync token list`)", distribusync_core::echo(.0))]
    Unknown(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token table: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The cluster's token table (its message names the database).
    #[error("token table: {0}")]
    Database(String),
}

impl From<crate::ServiceError> for TokenStoreError {
    fn from(e: crate::ServiceError) -> Self {
        TokenStoreError::Database(e.to_string())
    }
}

impl From<tokio_postgres::Error> for TokenStoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        crate::ServiceError::from(e).into()
    }
}

impl From<TokenStoreError> for tonic::Status {
    fn from(e: TokenStoreError) -> Self {
        use TokenStoreError as E;
        let msg = e.to_string();
        match e {
            E::Name(_) | E::Scope(_) | E::Expiry(_) | E::Prefix(_) => {
                tonic::Status::invalid_argument(msg)
            }
            E::Duplicate(_) => tonic::Status::already_exists(msg),
            E::Unknown(_) => tonic::Status::not_found(msg),
            E::Io { .. } | E::Sqlite(_) => {
                tracing::error!(error = %msg, "token table");
                tonic::Status::internal("the server cannot read its token table")
            }
            E::Database(_) => {
                tracing::warn!(error = %msg, "token table");
                tonic::Status::unavailable(msg)
            }
        }
    }
}

type Result<T, E = TokenStoreError> = std::result::Result<T, E>;

/// One token as stored (without its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: TokenId,
    pub name: String,
    pub scopes: Scopes,
    /// The folder the token is confined to; `None`: the whole root.
    pub prefix: Option<RemotePath>,
    pub created: SystemTime,
    pub last_used: Option<SystemTime>,
    pub expires: Option<SystemTime>,
    pub revoked: Option<SystemTime>,
    /// The keyed hash of the token's text.
    pub hash: blake3::Hash,
}

impl TokenRow {
    /// True when the token lets nobody in at `now`.
    pub fn is_dead(&self, now: SystemTime) -> bool {
        self.revoked.is_some() || self.expires.is_some_and(|e| e <= now)
    }
}

/// What `token create` asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scopes: Scopes,
    pub prefix: Option<RemotePath>,
    pub expires: Option<SystemTime>,
}

impl NewToken {
    /// Checks command-line style input: `scopes` as `read,write`, `prefix`
    /// as `photos/` (trailing slash optional), `expires` as `90d` or
    /// `2027-01-01`.
    ///
    /// # Errors
    /// The first thing that does not parse.
    pub fn parse(
        name: &str,
        scopes: &str,
        prefix: Option<&str>,
        expires: Option<&str>,
        now: SystemTime,
    ) -> Result<NewToken> {
        token::check_name(name)?;
        let scopes = Scopes::parse(scopes)?;
        let prefix = match prefix.map(|p| p.trim_end_matches('/')) {
            None | Some("") => None,
            Some(p) => Some(RemotePath::parse(p)?),
        };
        let expires = expires.map(|e| token::parse_expiry(e, now)).transpose()?;
        Ok(NewToken {
            name: name.to_owned(),
            scopes,
            prefix,
            expires,
        })
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    hash BLOB NOT NULL,
    scopes TEXT NOT NULL,
    prefix TEXT,
    created_ns INTEGER NOT NULL,
    last_used_ns INTEGER,
    expires_ns INTEGER,
    revoked_ns INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS token_meta (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    generation INTEGER NOT NULL
);
INSERT OR IGNORE INTO token_meta (one, generation) VALUES (1, 0);
";

/// The cluster's token table (in PostgreSQL): the same columns, and the
/// key in the one row of `token_meta`.
const PG_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    hash BYTEA NOT NULL,
    scopes TEXT NOT NULL,
    prefix TEXT,
    created_ns BIGINT NOT NULL,
    last_used_ns BIGINT,
    expires_ns BIGINT,
    revoked_ns BIGINT
);
CREATE TABLE IF NOT EXISTS token_meta (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    generation BIGINT NOT NULL,
    key BYTEA NOT NULL
);
"#;

/// The channel every change of the cluster's token table is announced on.
pub const TOKENS_CHANNEL: &str = "distribusync_tokens";

/// Taken (transaction-scoped) while the cluster's token table is made.
const TOKENS_SCHEMA_LOCK: i64 = 0x6469_7374_746f_6b6e; // "disttokn"

/// Where a [`TokenStore`]'s table is.
#[derive(Debug)]
enum Table {
    /// `ROOT/.distribusync/index.db`.
    // A std Mutex: every use is one short statement on a blocking thread.
    Sqlite(Mutex<Connection>),
    /// The cluster's database; `rt` runs its statements.
    Postgres {
        db: crate::store::PgMetadata,
        rt: tokio::runtime::Handle,
    },
}

/// The token table of one ROOT (or of the cluster) and the key its hashes
/// are made with.
#[derive(Debug)]
pub struct TokenStore {
    table: Table,
    key: [u8; 32],
}

/// `ROOT/.distribusync`.
pub fn meta_dir(root: &Path) -> PathBuf {
    root.join(distribusync_core::RESERVED_DIR)
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TokenStoreError {
    let context = context.into();
    move |source| TokenStoreError::Io { context, source }
}

/// Reads the server's key, making it (32 bytes from the OS RNG, mode 0600)
/// the first time.
fn load_or_make_key(dir: &Path) -> Result<[u8; 32]> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("token.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            return bytes.try_into().map_err(|_| TokenStoreError::Io {
                context: format!("{}", path.display()),
                source: std::io::Error::other("not a 32-byte key; remove it to make a new one (every token then stops working)"),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("{}", path.display()))(e)),
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| TokenStoreError::Io {
        context: "the OS random number generator".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // Written under a temporary name, then linked: two processes making
    // the key at once agree on the one that landed first.
    let tmp = dir.join(format!("token.key.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("{}", tmp.display())))?;
    f.write_all(&key)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("{}", tmp.display())))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_make_key(dir),
        Err(e) => Err(io(format!("{}", path.display()))(e)),
    }
}

/// A row's columns as either database gives them.
struct RawRow {
    id: String,
    name: String,
    hash: Vec<u8>,
    scopes: String,
    prefix: Option<String>,
    created: i64,
    last_used: Option<i64>,
    expires: Option<i64>,
    revoked: Option<i64>,
}

impl RawRow {
    /// The row; `Err(what)` names the column that does not parse.
    fn parse(self) -> Result<TokenRow, &'static str> {
        let hash: [u8; 32] = self.hash.try_into().map_err(|_| "hash")?;
        Ok(TokenRow {
            id: TokenId::parse(&self.id).map_err(|_| "id")?,
            name: self.name,
            hash: blake3::Hash::from_bytes(hash),
            scopes: Scopes::parse(&self.scopes).map_err(|_| "scopes")?,
            prefix: self
                .prefix
                .map(|p| RemotePath::parse(&p))
                .transpose()
                .map_err(|_| "prefix")?,
            created: from_unix_nanos(self.created),
            last_used: self.last_used.map(from_unix_nanos),
            expires: self.expires.map(from_unix_nanos),
            revoked: self.revoked.map(from_unix_nanos),
        })
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    let raw = RawRow {
        id: r.get(0)?,
        name: r.get(1)?,
        hash: r.get(2)?,
        scopes: r.get(3)?,
        prefix: r.get(4)?,
        created: r.get(5)?,
        last_used: r.get(6)?,
        expires: r.get(7)?,
        revoked: r.get(8)?,
    };
    raw.parse().map_err(|what| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} in the token table").into(),
        )
    })
}

fn pg_row(r: &tokio_postgres::Row) -> Result<TokenRow> {
    let raw = RawRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        hash: r.try_get(2)?,
        scopes: r.try_get(3)?,
        prefix: r.try_get(4)?,
        created: r.try_get(5)?,
        last_used: r.try_get(6)?,
        expires: r.try_get(7)?,
        revoked: r.try_get(8)?,
    };
    raw.parse()
        .map_err(|what| TokenStoreError::Database(format!("bad {what} in the token table")))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| TokenStoreError::Io {
        context: "the OS random number generator".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(b)
}

const COLUMNS: &str =
    "id, name, hash, scopes, prefix, created_ns, last_used_ns, expires_ns, revoked_ns";

impl TokenStore {
    /// Opens (creating if needed) the token table of `root`.
    ///
    /// # Errors
    /// When the folder, the key or the index cannot be opened.
    pub fn open(root: &Path) -> Result<TokenStore> {
        let dir = meta_dir(root);
        std::fs::create_dir_all(&dir).map_err(io(format!("{}", dir.display())))?;
        let key = load_or_make_key(&dir)?;
        let conn = Connection::open(dir.join("index.db"))?;
        conn.execute_batch(SCHEMA)?;
        Ok(TokenStore {
            table: Table::Sqlite(Mutex::new(conn)),
            key,
        })
    }

    /// Opens (creating if needed) the cluster's token table in `db`, with
    /// the key stored beside it (made by the first instance to open it):
    /// every instance on the database checks tokens alike.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn open_cluster(db: crate::store::PgMetadata) -> Result<TokenStore> {
        let fresh: [u8; 32] = random_bytes()?;
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKENS_SCHEMA_LOCK])
            .await?;
        tx.batch_execute(PG_SCHEMA).await?;
        tx.execute(
            "INSERT INTO token_meta (one, generation, key) VALUES (1, 0, $1) ON CONFLICT (one) DO NOTHING",
            &[&fresh.as_slice()],
        )
        .await?;
        let key: Vec<u8> = tx
            .query_one("SELECT key FROM token_meta WHERE one = 1", &[])
            .await?
            .try_get(0)?;
        tx.commit().await?;
        drop(client);
        let key = key.try_into().map_err(|_| {
            TokenStoreError::Database("the token key in the database is not 32 bytes".into())
        })?;
        Ok(TokenStore {
            table: Table::Postgres {
                db,
                rt: tokio::runtime::Handle::current(),
            },
            key,
        })
    }

    /// The cluster's database, when the table is there.
    pub fn cluster(&self) -> Option<&crate::store::PgMetadata> {
        match &self.table {
            Table::Postgres { db, .. } => Some(db),
            Table::Sqlite(_) => None,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let Table::Sqlite(conn) = &self.table else {
            return Err(TokenStoreError::Database("not a local token table".into()));
        };
        let mut conn = conn.lock().expect("token store mutex poisoned");
        f(&mut conn)
    }

    /// Runs `f` with a connection to the cluster's database (`None`: the
    /// table is local), waiting on this blocking thread.
    fn with_pg<T, F>(&self, f: impl FnOnce(deadpool_postgres::Object) -> F) -> Option<Result<T>>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let Table::Postgres { db, rt } = &self.table else {
            return None;
        };
        Some(rt.block_on(async {
            let client = db.client().await?;
            f(client).await
        }))
    }

    /// The keyed hash the table stores for `token`.
    pub fn hash(&self, token: &Token) -> blake3::Hash {
        token.keyed_hash(&self.key)
    }

    /// [`TokenStore::hash`] of a token's text checked by
    /// [`token::id_of`].
    pub fn hash_text(&self, text: &str) -> blake3::Hash {
        token::keyed_hash(&self.key, text)
    }

    /// Makes a token; its text is returned once and stored nowhere.
    ///
    /// # Errors
    /// [`TokenStoreError::Duplicate`] when a live token has the name.
    pub fn create(&self, new: &NewToken, now: SystemTime) -> Result<(Token, TokenRow)> {
        let id: [u8; ID_BYTES] = random_bytes()?;
        let secret: [u8; SECRET_BYTES] = random_bytes()?;
        let token = Token::from_parts(id, secret);
        let row = TokenRow {
            id: token.id().clone(),
            name: new.name.clone(),
            scopes: new.scopes,
            prefix: new.prefix.clone(),
            created: now,
            last_used: None,
            expires: new.expires,
            revoked: None,
            hash: self.hash(&token),
        };
        if let Some(done) = self.with_pg(|mut c| {
            let row = row.clone();
            async move {
                let tx = c.transaction().await?;
                // Taken first: writers of the table go one at a time.
                tx.execute("UPDATE token_meta SET generation = generation + 1", &[])
                    .await?;
                let live: Option<Option<i64>> = tx
                    .query_opt(
                        "SELECT revoked_ns FROM tokens WHERE name = $1",
                        &[&row.name],
                    )
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                match live {
                    Some(None) => return Err(TokenStoreError::Duplicate(row.name.clone())),
                    Some(Some(_)) => {
                        tx.execute("DELETE FROM tokens WHERE name = $1", &[&row.name])
                            .await?;
                    }
                    None => {}
                }
                tx.execute(
                    "INSERT INTO tokens (id, name, hash, scopes, prefix, created_ns, expires_ns) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &row.id.as_str(),
                        &row.name,
                        &row.hash.as_bytes().as_slice(),
                        &row.scopes.to_string(),
                        &row.prefix.as_ref().map(RemotePath::as_str),
                        &unix_nanos(now),
                        &row.expires.map(unix_nanos),
                    ],
                )
                .await?;
                tx.execute("SELECT pg_notify($1, 'created')", &[&TOKENS_CHANNEL])
                    .await?;
                tx.commit().await?;
                Ok::<(), TokenStoreError>(())
            }
        }) {
            done?;
            return Ok((token, row));
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let live: Option<Option<i64>> = tx
                .query_row(
                    "SELECT revoked_ns FROM tokens WHERE name = ?1",
                    [&row.name],
                    |r| r.get(0),
                )
                .optional()?;
            match live {
                Some(None) => return Err(TokenStoreError::Duplicate(row.name.clone())),
                Some(Some(_)) => {
                    tx.execute("DELETE FROM tokens WHERE name = ?1", [&row.name])?;
                }
                None => {}
            }
            tx.execute(
                "INSERT INTO tokens (id, name, hash, scopes, prefix, created_ns, expires_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    row.id.as_str(),
                    row.name,
                    row.hash.as_bytes().as_slice(),
                    row.scopes.to_string(),
                    row.prefix.as_ref().map(RemotePath::as_str),
                    unix_nanos(now),
                    row.expires.map(unix_nanos),
                ],
            )?;
            tx.execute("UPDATE token_meta SET generation = generation + 1", [])?;
            tx.commit()?;
            Ok(())
        })?;
        Ok((token, row))
    }

    /// Marks the live token `name` revoked.
    ///
    /// # Errors
    /// [`TokenStoreError::Unknown`] when no live token has that name.
    pub fn revoke(&self, name: &str, now: SystemTime) -> Result<TokenRow> {
        if let Some(done) = self.with_pg(|mut c| async move {
            let tx = c.transaction().await?;
            tx.execute("UPDATE token_meta SET generation = generation + 1", &[])
                .await?;
            let revoked = tx
                .query_opt(
                    &format!(
                        "UPDATE tokens SET revoked_ns = $2 WHERE name = $1 AND revoked_ns IS NULL \
                         RETURNING {COLUMNS}"
                    ),
                    &[&name, &unix_nanos(now)],
                )
                .await?;
            let Some(revoked) = revoked else {
                return Err(TokenStoreError::Unknown(name.to_owned()));
            };
            tx.execute("SELECT pg_notify($1, 'revoked')", &[&TOKENS_CHANNEL])
                .await?;
            tx.commit().await?;
            pg_row(&revoked)
        }) {
            return done;
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE tokens SET revoked_ns = ?2 WHERE name = ?1 AND revoked_ns IS NULL",
                params![name, unix_nanos(now)],
            )?;
            if n == 0 {
                return Err(TokenStoreError::Unknown(name.to_owned()));
            }
            tx.execute("UPDATE token_meta SET generation = generation + 1", [])?;
            let r = tx.query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE name = ?1"),
                [name],
                row,
            )?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// Every token, live or not, by name.
    ///
    /// # Errors
    /// When the table cannot be read.
    pub fn list(&self) -> Result<Vec<TokenRow>> {
        if let Some(done) = self.with_pg(|c| async move {
            let rows = c
                .query(&format!("SELECT {COLUMNS} FROM tokens ORDER BY name"), &[])
                .await?;
            rows.iter().map(pg_row).collect::<Result<Vec<_>>>()
        }) {
            return done;
        }
        self.with(|c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens ORDER BY name"))?;
            let rows = st
                .query_map([], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// The table's change counter: differs whenever a token was created or
    /// revoked since it was last read (by any process).
    ///
    /// # Errors
    /// When the table cannot be read.
    pub fn generation(&self) -> Result<i64> {
        if let Some(done) = self.with_pg(|c| async move {
            Ok::<i64, TokenStoreError>(
                c.query_one("SELECT generation FROM token_meta WHERE one = 1", &[])
                    .await?
                    .try_get(0)?,
            )
        }) {
            return done;
        }
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT generation FROM token_meta WHERE one = 1")?
                    .query_row([], |r| r.get(0))?,
            )
        })
    }

    /// Records when tokens were last used (not a change of the table: the
    /// generation stays).
    ///
    /// # Errors
    /// When the table cannot be written.
    pub fn record_use(&self, used: &[(TokenId, SystemTime)]) -> Result<()> {
        if let Some(done) = self.with_pg(|mut c| async move {
            let tx = c.transaction().await?;
            for (id, t) in used {
                tx.execute(
                    "UPDATE tokens SET last_used_ns = GREATEST(coalesce(last_used_ns, 0), $2) WHERE id = $1",
                    &[&id.as_str(), &unix_nanos(*t)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<(), TokenStoreError>(())
        }) {
            return done;
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE tokens SET last_used_ns = max(coalesce(last_used_ns, 0), ?2) WHERE id = ?1",
                )?;
                for (id, t) in used {
                    st.execute(params![id.as_str(), unix_nanos(*t)])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn create_list_revoke_and_reuse_a_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::open(dir.path()).expect("open");
        let now = SystemTime::now();
        let g0 = store.generation().expect("generation");
        let new = NewToken::parse("laptop", "read,write", Some("photos/"), Some("90d"), now)
            .expect("valid");
        let (token, row) = store.create(&new, now).expect("create");
        assert_eq!(store.hash(&token), row.hash);
        assert_ne!(store.generation().expect("generation"), g0);
        assert!(matches!(
            store.create(&new, now),
            Err(TokenStoreError::Duplicate(_))
        ));
        let listed = store.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].prefix.as_ref().map(RemotePath::as_str),
            Some("photos")
        );
        assert_eq!(listed[0].scopes.to_string(), "read,write");
        store
            .record_use(&[(row.id.clone(), now + Duration::from_secs(1))])
            .expect("use");
        assert!(store.list().expect("list")[0].last_used.is_some());
        store.revoke("laptop", now).expect("revoke");
        assert!(matches!(
            store.revoke("laptop", now),
            Err(TokenStoreError::Unknown(_))
        ));
        assert!(store.list().expect("list")[0].is_dead(now));
        let (again, _) = store.create(&new, now).expect("the name is free again");
        assert_ne!(again, token);
        // The key file is private and the same on reopening.
        let reopened = TokenStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.hash(&again), store.hash(&again));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(meta_dir(dir.path()).join("token.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
