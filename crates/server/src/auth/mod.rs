//! Who is calling, and may they: tokens, scopes, the policy that decides
//! when they are required, and the per-address limit on failed attempts.
//!
//! Main types: [`Identity`] (what a handler learns about its caller, from
//! the request's extensions), [`AuthConfig`] and [`AuthMode`] (the policy),
//! [`Auth`] (the cache of the token table, refreshed by a poller),
//! [`AuthLayer`] (the one tower layer that checks every call) and
//! [`tokens::TokenStore`] (the table itself).
//!
//! Invariants:
//! - Every call passes [`AuthLayer`]; only health checks and reflection
//!   pass without an identity. Handlers never see a request without one
//!   (a service used without the layer, as in an embedding, sees
//!   [`Identity::local`]).
//! - An unknown, malformed, expired, revoked or wrong token is refused with
//!   the same UNAUTHENTICATED answer, so an answer says nothing about which.
//! - The check of a call reads only memory (the table is cached and
//!   reloaded when its generation changes, polled every
//!   [`POLL_INTERVAL`]); a revoked token's identity is cancelled on reload,
//!   which ends its open streams.

mod layer;
mod limit;
pub mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use distribusync_core::RemotePath;
use distribusync_core::token::{self, Scope, Scopes};
use tokio_util::sync::CancellationToken;

pub use layer::{AuthLayer, AuthService, required_scope};
use limit::FailureLimit;
pub use tokens::{NewToken, TokenRow, TokenStore, TokenStoreError};

use crate::error::ServiceError;

/// How often the token table's generation is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often `last used` times are written back.
const RECORD_USE_EVERY: Duration = Duration::from_secs(10);

/// When tokens are required (`serve --auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Required when listening beyond loopback or once any token was ever
    /// created on this root; open only on loopback with an empty table.
    #[default]
    Auto,
    /// Always required.
    On,
    /// Never required: everyone is [`Identity::local`]. Beyond loopback
    /// only with [`AuthConfig::insecure`].
    Off,
}

/// The authentication policy and its limits.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Allows `mode: Off` on a non-loopback address (with a warning at
    /// every start).
    pub insecure: bool,
    /// Failed attempts one address may make at once…
    pub failure_burst: u32,
    /// …and per second after that (more are answered RESOURCE_EXHAUSTED
    /// without looking at the token).
    pub failures_per_second: f64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            insecure: false,
            failure_burst: 20,
            failures_per_second: 2.0,
        }
    }
}

/// The caller of a request, as the layer established it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// What owns this caller's jobs: the token's id (stable, unique) or
    /// `local`.
    pub owner: Arc<str>,
    /// The token's name (for logs).
    pub name: Arc<str>,
    pub scopes: Scopes,
    /// The only folder this caller sees; `None`: all of ROOT.
    pub prefix: Option<RemotePath>,
    /// Cancelled when the token is revoked or expires.
    revoked: CancellationToken,
}

impl Identity {
    /// The caller when tokens are not required: every scope, all of ROOT.
    pub fn local() -> Identity {
        Identity {
            owner: Arc::from("local"),
            name: Arc::from("local"),
            scopes: Scopes::all(),
            prefix: None,
            revoked: CancellationToken::new(),
        }
    }

    /// The identity the layer put on `request` ([`Identity::local`] when
    /// the service runs without the layer).
    pub fn of<T>(request: &tonic::Request<T>) -> Identity {
        request
            .extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or_else(Identity::local)
    }

    /// Completes when the token is revoked (never for `local`).
    pub fn revoked(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.revoked.clone().cancelled_owned()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }

    /// True when `path` lies in this caller's folder.
    pub fn sees(&self, path: &RemotePath) -> bool {
        self.prefix.as_ref().is_none_or(|p| path.is_inside(p))
    }

    /// `Ok` when `path` lies in this caller's folder; PERMISSION_DENIED
    /// (whether or not it exists) otherwise.
    ///
    /// # Errors
    /// [`ServiceError::OutsidePrefix`].
    pub fn confine(&self, path: &RemotePath) -> Result<(), ServiceError> {
        match &self.prefix {
            Some(p) if !path.is_inside(p) => Err(ServiceError::OutsidePrefix {
                path: path.clone(),
                prefix: p.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The status a stream ends with when its token is revoked.
    pub fn revoked_status() -> tonic::Status {
        tonic::Status::unauthenticated("invalid or missing token (this token was revoked)")
    }
}

/// One live token in the cache.
#[derive(Debug)]
struct Entry {
    row: TokenRow,
    identity: Identity,
    /// Seconds since the epoch of the last accepted call; 0: none since
    /// the last write-back.
    used: AtomicI64,
}

#[derive(Debug, Default)]
struct Cache {
    /// The table's generation this cache reflects; `None`: not loaded.
    generation: Option<i64>,
    /// Live tokens by id.
    live: HashMap<String, Arc<Entry>>,
    /// The table has (or had) at least one token.
    any: bool,
}

/// Why the layer refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or not a live token (all alike).
    Unauthenticated,
    /// Too many failures from this address.
    Limited,
}

#[derive(Debug)]
struct Inner {
    /// `None` when `mode: Off`.
    store: Option<Arc<TokenStore>>,
    /// Tokens are required even with an empty table.
    always: bool,
    cache: RwLock<Cache>,
    // A std Mutex: held for a map lookup, never across an await.
    limit: Mutex<FailureLimit>,
    limited: std::sync::atomic::AtomicBool,
    /// [`Identity::local`], made once (handed out when tokens are not
    /// required).
    local: Identity,
}

/// The policy and the cached token table: a cheap `Clone` handle.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

/// Longest `authorization` value looked at; anything longer is refused
/// before any parsing.
const MAX_AUTHORIZATION_LEN: usize = 7 + distribusync_core::token::TOKEN_LEN + 8;

impl Auth {
    /// The policy for a server listening on a loopback address or not,
    /// over the token table `store` (`None` only with `mode: Off`).
    pub fn new(config: AuthConfig, store: Option<Arc<TokenStore>>, loopback: bool) -> Auth {
        let always = config.mode == AuthMode::On || (config.mode == AuthMode::Auto && !loopback);
        let limit = FailureLimit::new(config.failure_burst, config.failures_per_second);
        Auth {
            inner: Arc::new(Inner {
                store: if config.mode == AuthMode::Off {
                    None
                } else {
                    store
                },
                always,
                cache: RwLock::new(Cache::default()),
                limit: Mutex::new(limit),
                limited: Default::default(),
                local: Identity::local(),
            }),
        }
    }

    /// A policy that lets everyone in as [`Identity::local`].
    pub fn open() -> Auth {
        let config = AuthConfig {
            mode: AuthMode::Off,
            ..AuthConfig::default()
        };
        Auth::new(config, None, true)
    }

    pub fn store(&self) -> Option<&Arc<TokenStore>> {
        self.inner.store.as_ref()
    }

    /// True when calls need a token now.
    pub fn required(&self) -> bool {
        if self.inner.store.is_none() {
            return false;
        }
        self.inner.always || self.read_cache().any
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.inner.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Who sends `authorization` from `peer`, or why they are refused.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<IpAddr>,
    ) -> Result<Identity, Refusal> {
        if !self.required() {
            return Ok(self.inner.local.clone());
        }
        // Over the limit: refused before the token is looked at, so an
        // answer cannot tell a right guess from a wrong one.
        if self.inner.limited.load(Ordering::Relaxed) && self.limit().is_over(peer) {
            return Err(Refusal::Limited);
        }
        match self.verify(authorization) {
            Some(identity) => Ok(identity),
            None => {
                let over = self.limit().charge(peer);
                self.inner.limited.store(true, Ordering::Relaxed);
                Err(if over {
                    Refusal::Limited
                } else {
                    Refusal::Unauthenticated
                })
            }
        }
    }

    fn limit(&self) -> std::sync::MutexGuard<'_, FailureLimit> {
        self.inner.limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn verify(&self, authorization: Option<&[u8]>) -> Option<Identity> {
        let value = authorization.filter(|v| v.len() <= MAX_AUTHORIZATION_LEN)?;
        let value = std::str::from_utf8(value).ok()?;
        let text = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim();
        let id = token::id_of(text).ok()?;
        let store = self.inner.store.as_ref()?;
        let entry = self.read_cache().live.get(id).cloned()?;
        // blake3::Hash's == runs in constant time.
        if store.hash_text(text) != entry.row.hash {
            return None;
        }
        let now = SystemTime::now();
        if entry.row.is_dead(now) || entry.identity.is_revoked() {
            return None;
        }
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        entry.used.store(secs, Ordering::Relaxed);
        Some(entry.identity.clone())
    }

    /// Reads the token table if it changed since the last read; cancels the
    /// identities of tokens revoked or expired since.
    ///
    /// # Errors
    /// When the table cannot be read.
    pub fn refresh(&self) -> Result<(), TokenStoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let generation = store.generation()?;
        let now = SystemTime::now();
        let loaded = self.read_cache().generation;
        if loaded != Some(generation) {
            let rows = store.list()?;
            let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
            let mut live = HashMap::new();
            for row in &rows {
                if row.is_dead(now) {
                    continue;
                }
                let kept = cache
                    .live
                    .get(row.id.as_str())
                    .filter(|e| e.row.hash == row.hash)
                    .cloned();
                let entry = kept.unwrap_or_else(|| {
                    Arc::new(Entry {
                        identity: Identity {
                            owner: Arc::from(row.id.as_str()),
                            name: Arc::from(row.name.as_str()),
                            scopes: row.scopes,
                            prefix: row.prefix.clone(),
                            revoked: CancellationToken::new(),
                        },
                        row: row.clone(),
                        used: AtomicI64::new(0),
                    })
                });
                live.insert(row.id.as_str().to_owned(), entry);
            }
            for (id, old) in &cache.live {
                if !live.contains_key(id) {
                    tracing::info!(token = %old.row.name, "token revoked: ending its streams");
                    old.identity.revoked.cancel();
                }
            }
            cache.live = live;
            cache.any = !rows.is_empty();
            cache.generation = Some(generation);
            tracing::info!(generation, live = cache.live.len(), "token table read");
        } else {
            // Expiry needs no change of the table.
            let expired: Vec<String> = self
                .read_cache()
                .live
                .iter()
                .filter(|(_, e)| e.row.is_dead(now))
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
                for id in expired {
                    if let Some(e) = cache.live.remove(&id) {
                        tracing::info!(token = %e.row.name, "token expired: ending its streams");
                        e.identity.revoked.cancel();
                    }
                }
            }
        }
        if self.inner.limited.load(Ordering::Relaxed) {
            let empty = self.limit().forget_refilled();
            if empty {
                self.inner.limited.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Writes back when tokens were last used.
    fn record_use(&self) -> Result<(), TokenStoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let used: Vec<_> = self
            .read_cache()
            .live
            .values()
            .filter_map(|e| {
                let secs = e.used.swap(0, Ordering::Relaxed);
                (secs > 0).then(|| {
                    let t = SystemTime::UNIX_EPOCH
                        + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
                    (e.row.id.clone(), t)
                })
            })
            .collect();
        if used.is_empty() {
            return Ok(());
        }
        store.record_use(&used)
    }

    /// Loads the table, then keeps it fresh until `shutdown` (the task
    /// holds only a `Weak`, so it also ends with the server).
    ///
    /// # Errors
    /// When the table cannot be read at start.
    pub async fn start(&self, shutdown: CancellationToken) -> Result<(), TokenStoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.refresh())
            .await
            .map_err(|e| TokenStoreError::Io {
                context: "loading tokens".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        if self.inner.store.is_none() {
            return Ok(());
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        // The cluster's table: a change made through any instance wakes
        // this one at once (the poll stays, for a lost notification).
        let changed = Arc::new(tokio::sync::Notify::new());
        if let Some(db) = self.inner.store.as_ref().and_then(|s| s.cluster()) {
            tokio::spawn(follow_changes(
                db.clone(),
                changed.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(async move {
            let mut every = tokio::time::interval(POLL_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_record = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = every.tick() => {}
                    () = changed.notified() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let auth = Auth { inner };
                let record = last_record.elapsed() >= RECORD_USE_EVERY;
                if record {
                    last_record = tokio::time::Instant::now();
                }
                let done = tokio::task::spawn_blocking(move || {
                    if let Err(e) = auth.refresh() {
                        tracing::warn!(error = %e, "cannot read the token table; keeping the last one read");
                    }
                    if record && let Err(e) = auth.record_use() {
                        tracing::debug!(error = %e, "cannot record when tokens were used");
                    }
                    auth
                })
                .await;
                drop(done);
            }
        });
        Ok(())
    }

    /// Writes back when tokens were last used, now: the server calls it
    /// once its requests are drained, so a clean stop loses none of the
    /// uses since the last periodic write. (The background task did it
    /// at shutdown, through its `Weak`: on the cluster backend nothing
    /// held the registry any more by then, and the uses were lost.)
    pub async fn write_back_uses(&self) {
        let me = self.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.record_use()).await {
            tracing::warn!(error = %e, "cannot record when tokens were last used");
        }
    }

    /// The scope the method at `path` needs; see [`required_scope`].
    pub fn scope_for(path: &str) -> Option<Option<Scope>> {
        required_scope(path)
    }
}

/// Wakes `changed` on each change of the cluster's token table
/// (`NOTIFY distribusync_tokens`), listening again after a lost session.
async fn follow_changes(
    db: crate::store::PgMetadata,
    changed: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let session = tokio::select! {
            () = shutdown.cancelled() => return,
            s = db.listen_to(tokens::TOKENS_CHANNEL) => s,
        };
        match session {
            Ok(mut session) => {
                pause = Duration::from_millis(100);
                // Changes while no session listened are read now.
                changed.notify_one();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        p = session.payloads.recv() => match p {
                            Some(_) => changed.notify_one(),
                            None => break,
                        },
                    }
                }
                tracing::warn!("tokens: the listening session ended; listening again");
            }
            Err(e) => {
                tracing::warn!(error = %e, "tokens: cannot listen for changes; the poll continues")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
