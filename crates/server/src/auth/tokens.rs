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
//! All methods block; async callers run them on the blocking pool.

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

/// The token table of one ROOT and the key its hashes are made with.
#[derive(Debug)]
pub struct TokenStore {
    // A std Mutex: every use is one short statement on a blocking thread.
    conn: Mutex<Connection>,
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

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    let id: String = r.get(0)?;
    let scopes: String = r.get(3)?;
    let prefix: Option<String> = r.get(4)?;
    let hash: Vec<u8> = r.get(2)?;
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} in the token table").into(),
        )
    };
    let hash: [u8; 32] = hash.try_into().map_err(|_| bad("hash"))?;
    Ok(TokenRow {
        id: TokenId::parse(&id).map_err(|_| bad("id"))?,
        name: r.get(1)?,
        hash: blake3::Hash::from_bytes(hash),
        scopes: Scopes::parse(&scopes).map_err(|_| bad("scopes"))?,
        prefix: prefix
            .map(|p| RemotePath::parse(&p))
            .transpose()
            .map_err(|_| bad("prefix"))?,
        created: from_unix_nanos(r.get(5)?),
        last_used: r.get::<_, Option<i64>>(6)?.map(from_unix_nanos),
        expires: r.get::<_, Option<i64>>(7)?.map(from_unix_nanos),
        revoked: r.get::<_, Option<i64>>(8)?.map(from_unix_nanos),
    })
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
            conn: Mutex::new(conn),
            key,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().expect("token store mutex poisoned");
        f(&mut conn)
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
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id)
            .and_then(|()| getrandom::fill(&mut secret))
            .map_err(|e| TokenStoreError::Io {
                context: "the OS random number generator".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
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
