//! WebDAV locks (RFC 4918 §6–7): one table, in the store, that the WebDAV
//! front consults for LOCK, UNLOCK and `dav-server`'s checks, and that
//! every write obeys when it commits, whoever sends it.
//!
//! Invariants:
//! - Bounded: at most [`LockLimits::max_locks`] live locks on the server
//!   and [`LockLimits::max_per_token`] per token name; past either a LOCK
//!   is refused with [`ServiceError::TooManyLocks`], naming the limit.
//! - Every lock expires: it lives what the client asked for, at most
//!   [`LockLimits::max_lifetime`] (a LOCK without Timeout, or with
//!   `Infinite`, gets that). An expired lock is never obeyed, and is purged
//!   at the next access to the table (and from the index at the next lock
//!   written, or at the next start).
//! - Durable: a lock is written to the index before it is granted, and
//!   [`Store::open`] loads the live ones, so a restart does not release a
//!   file someone has open. A lock whose write fails is not granted.
//! - Ordered with writes: a lock is granted, and a write checks the table,
//!   under the store's path lock of that path, so a write that commits
//!   after a LOCK was granted obeys it; one that committed before is what
//!   the holder then reads.
//! - A write passes a lock only with its token and as the token name that
//!   took it ([`LockPass`]): gRPC writes carry no token and pass none.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use distribusync_core::RemotePath;

use super::Store;
use crate::error::{Result, ServiceError};

/// One WebDAV lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// `urn:uuid:…`, what the holder submits to pass it.
    pub token: String,
    /// The full path locked (`None`: the server's root).
    pub at: Option<RemotePath>,
    /// The full URL path as it was locked (percent-encoded; a folder's
    /// with its trailing slash), for the `lockroot` WebDAV shows.
    pub url: String,
    /// The name of the token that took it.
    pub principal: String,
    /// The client's `<D:owner>` element, as XML.
    pub owner_xml: Option<Vec<u8>>,
    pub shared: bool,
    /// Covers everything under a folder too (Depth: infinity).
    pub deep: bool,
    /// The lifetime granted at the last LOCK or refresh.
    pub timeout: Duration,
    pub until: SystemTime,
}

/// A lock asked for (see [`Store::dav_lock`]).
#[derive(Debug, Clone)]
pub struct NewLock {
    pub at: Option<RemotePath>,
    pub url: String,
    pub principal: String,
    pub owner_xml: Option<Vec<u8>>,
    pub shared: bool,
    pub deep: bool,
    /// What the client asked for; `None`: no Timeout header, or `Infinite`.
    pub timeout: Option<Duration>,
}

/// How many locks may live and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLimits {
    pub max_locks: usize,
    pub max_per_token: usize,
    pub max_lifetime: Duration,
}

impl Default for LockLimits {
    fn default() -> Self {
        Self {
            max_locks: 10_000,
            max_per_token: 1_000,
            // As sabre/dav (Nextcloud's WebDAV) grants every lock: see
            // docs/DESIGN.md, "WebDAV".
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

/// What lets a write through WebDAV locks: the lock tokens its request
/// submitted and the token name it comes from. The default passes none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockPass {
    pub owner: String,
    pub tokens: Vec<String>,
}

/// The live locks by token.
// A std Mutex: held for lookups and, when a lock is granted, refreshed or
// released, for its index write (short, on a blocking thread); never
// across an await.
#[derive(Debug, Default)]
pub(crate) struct DavLocks(std::sync::Mutex<HashMap<String, LockRecord>>);

impl DavLocks {
    pub(crate) fn new(loaded: Vec<LockRecord>) -> Self {
        Self(std::sync::Mutex::new(
            loaded.into_iter().map(|l| (l.token.clone(), l)).collect(),
        ))
    }

    /// The table with expired locks purged.
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LockRecord>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        map.retain(|_, l| l.until > now);
        map
    }
}

/// `a` is `b` or a folder above it (`None`, the root, is above all).
fn at_or_above(a: Option<&RemotePath>, b: Option<&RemotePath>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a == b || b.is_inside(a),
    }
}

/// The lock applies to `path` itself: it is there, or deep above it.
fn covers(l: &LockRecord, path: Option<&RemotePath>) -> bool {
    l.at.as_ref() == path || (l.deep && at_or_above(l.at.as_ref(), path))
}

/// The lock is on `path` or on something below it.
fn at_or_below(l: &LockRecord, path: Option<&RemotePath>) -> bool {
    at_or_above(path, l.at.as_ref())
}

/// The lock that keeps `pass` from changing `path` (and, with `deep`,
/// anything below it), if any: an exclusive lock not held, or shared ones
/// of which none is held; below, any lock not held. As `dav-server`'s own
/// lock system decides.
fn blocker<'a>(
    locks: impl Iterator<Item = &'a LockRecord> + Clone,
    path: Option<&RemotePath>,
    pass: &LockPass,
    ignore_principal: bool,
    deep: bool,
) -> Option<&'a LockRecord> {
    let held = |l: &LockRecord| {
        pass.tokens.contains(&l.token) && (ignore_principal || l.principal == pass.owner)
    };
    let mut holds = false;
    let mut shared = None;
    for l in locks.clone().filter(|l| covers(l, path)) {
        if held(l) {
            holds = true;
        } else if !l.shared {
            return Some(l);
        } else {
            shared.get_or_insert(l);
        }
    }
    if !holds && shared.is_some() {
        return shared;
    }
    if deep {
        return locks.filter(|l| at_or_below(l, path)).find(|l| !held(l));
    }
    None
}

/// The lock in the way of a new lock on `path`: any exclusive one, or
/// any at all for an exclusive request; with `deep`, also below it.
fn in_the_way<'a>(
    locks: impl Iterator<Item = &'a LockRecord> + Clone,
    path: Option<&RemotePath>,
    shared: bool,
    deep: bool,
) -> Option<&'a LockRecord> {
    let clash = |l: &&LockRecord| !l.shared || !shared;
    locks
        .clone()
        .filter(|l| covers(l, path))
        .find(clash)
        .or_else(|| {
            deep.then(|| locks.filter(|l| at_or_below(l, path)).find(clash))
                .flatten()
        })
}

impl LockRecord {
    /// "it is unlocked or expires (in N s)", for refusals.
    fn until_text(&self, now: SystemTime) -> String {
        let left = self.until.duration_since(now).unwrap_or_default().as_secs();
        format!("it is unlocked or expires (in {left} s)")
    }

    /// Why a write this lock blocks is refused (after the path).
    pub fn refusal_reason(&self) -> String {
        format!(
            "locked by a WebDAV client (token {}, lock {}); try again when {}",
            self.principal,
            self.token,
            self.until_text(SystemTime::now())
        )
    }

    /// The refusal of a write to `path` this lock blocks.
    pub fn refusal(&self, path: &RemotePath) -> ServiceError {
        ServiceError::Locked {
            path: path.clone(),
            token: self.token.clone(),
            owner: self.principal.clone(),
            until: self.until_text(SystemTime::now()),
        }
    }
}

impl Store {
    /// Grants a lock (`Ok(Ok(lock))`) or names the lock in its way
    /// (`Ok(Err(lock))`).
    ///
    /// # Errors
    /// [`ServiceError::TooManyLocks`] past a bound; the index's (then no
    /// lock is granted).
    pub async fn dav_lock(
        &self,
        new: NewLock,
        limits: LockLimits,
    ) -> Result<std::result::Result<LockRecord, LockRecord>> {
        // Under the path lock: ordered with the commits of writes to it.
        let _guard = match &new.at {
            Some(p) => Some(self.inner.locks.lock(&[p]).await),
            None => None,
        };
        let s = self.clone();
        self.run(move || s.grant(new, limits)).await
    }

    fn grant(
        &self,
        new: NewLock,
        limits: LockLimits,
    ) -> Result<std::result::Result<LockRecord, LockRecord>> {
        let mut map = self.inner.dav_locks.live();
        if let Some(l) = in_the_way(map.values(), new.at.as_ref(), new.shared, new.deep) {
            return Ok(Err(l.clone()));
        }
        if map.len() >= limits.max_locks {
            return Err(ServiceError::TooManyLocks {
                who: new.principal,
                limit: format!("{} locks on this server", limits.max_locks),
            });
        }
        let mine = map
            .values()
            .filter(|l| l.principal == new.principal)
            .count();
        if mine >= limits.max_per_token {
            return Err(ServiceError::TooManyLocks {
                limit: format!("{} locks per token", limits.max_per_token),
                who: new.principal,
            });
        }
        let timeout = new
            .timeout
            .map_or(limits.max_lifetime, |t| t.min(limits.max_lifetime));
        let record = LockRecord {
            token: uuid::Uuid::new_v4().urn().to_string(),
            at: new.at,
            url: new.url,
            principal: new.principal,
            owner_xml: new.owner_xml,
            shared: new.shared,
            deep: new.deep,
            timeout,
            until: SystemTime::now() + timeout,
        };
        self.inner.index.save_lock(&record)?;
        tracing::info!(path = ?record.at, token = %record.token, owner = %record.principal,
            secs = timeout.as_secs(), deep = record.deep, shared = record.shared, "WebDAV lock granted");
        map.insert(record.token.clone(), record.clone());
        Ok(Ok(record))
    }

    /// Renews the lock `token` found at or above `path` for `timeout`
    /// (capped as at [`Store::dav_lock`]); `None` when there is none.
    ///
    /// # Errors
    /// The index's.
    pub async fn dav_refresh(
        &self,
        path: Option<RemotePath>,
        token: String,
        timeout: Option<Duration>,
        limits: LockLimits,
    ) -> Result<Option<LockRecord>> {
        let s = self.clone();
        self.run(move || {
            let mut map = s.inner.dav_locks.live();
            let Some(l) = map
                .get_mut(&token)
                .filter(|l| at_or_above(l.at.as_ref(), path.as_ref()))
            else {
                return Ok(None);
            };
            let mut renewed = l.clone();
            renewed.timeout = timeout.map_or(limits.max_lifetime, |t| t.min(limits.max_lifetime));
            renewed.until = SystemTime::now() + renewed.timeout;
            s.inner.index.save_lock(&renewed)?;
            *l = renewed.clone();
            Ok(Some(renewed))
        })
        .await
    }

    /// Releases the lock `token` found at or above `path`; false when
    /// there is none.
    ///
    /// # Errors
    /// The index's (the lock is released all the same: a failed write
    /// leaves a row the next start drops once it expires).
    pub async fn dav_unlock(&self, path: Option<RemotePath>, token: String) -> Result<bool> {
        let s = self.clone();
        self.run(move || {
            let mut map = s.inner.dav_locks.live();
            let found = map
                .get(&token)
                .is_some_and(|l| at_or_above(l.at.as_ref(), path.as_ref()));
            if found {
                map.remove(&token);
                s.inner.index.drop_locks(&[token])?;
            }
            Ok(found)
        })
        .await
    }

    /// Releases every lock at or below `path` (it was deleted or moved).
    ///
    /// # Errors
    /// The index's, as for [`Store::dav_unlock`].
    pub async fn dav_release_under(&self, path: Option<RemotePath>) -> Result<()> {
        let s = self.clone();
        self.run(move || {
            let mut map = s.inner.dav_locks.live();
            let gone: Vec<String> = map
                .values()
                .filter(|l| at_or_below(l, path.as_ref()))
                .map(|l| l.token.clone())
                .collect();
            for t in &gone {
                map.remove(t);
            }
            if !gone.is_empty() {
                s.inner.index.drop_locks(&gone)?;
            }
            Ok(())
        })
        .await
    }

    /// The lock that keeps `pass` from changing `path` (`deep`: or
    /// anything below it), if any (see `dav-server`'s `check`).
    pub fn dav_blocker(
        &self,
        path: Option<&RemotePath>,
        pass: &LockPass,
        ignore_principal: bool,
        deep: bool,
    ) -> Option<LockRecord> {
        let map = self.inner.dav_locks.live();
        blocker(map.values(), path, pass, ignore_principal, deep).cloned()
    }

    /// The locks at `path` and at every folder above it.
    pub fn dav_locks_along(&self, path: Option<&RemotePath>) -> Vec<LockRecord> {
        let map = self.inner.dav_locks.live();
        let mut found: Vec<LockRecord> = map
            .values()
            .filter(|l| at_or_above(l.at.as_ref(), path))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.url.cmp(&b.url).then_with(|| a.token.cmp(&b.token)));
        found
    }

    /// Refuses a change to any of `paths` (and anything below them) that a
    /// lock `pass` does not hold covers. Called by every write under its
    /// path lock, just before it changes anything.
    ///
    /// # Errors
    /// [`ServiceError::Locked`] naming the path and the lock.
    pub(crate) fn obey_dav_locks(&self, paths: &[&RemotePath], pass: &LockPass) -> Result<()> {
        let map = self.inner.dav_locks.live();
        if map.is_empty() {
            return Ok(());
        }
        for path in paths {
            if let Some(l) = blocker(map.values(), Some(*path), pass, false, true) {
                return Err(l.refusal(path));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).expect("valid")
    }

    fn lock(at: Option<&str>, token: &str, shared: bool, deep: bool) -> LockRecord {
        LockRecord {
            token: token.into(),
            at: at.map(p),
            url: String::new(),
            principal: "alice".into(),
            owner_xml: None,
            shared,
            deep,
            timeout: Duration::from_secs(60),
            until: SystemTime::now() + Duration::from_secs(60),
        }
    }

    fn pass(owner: &str, tokens: &[&str]) -> LockPass {
        LockPass {
            owner: owner.into(),
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn a_lock_binds_its_path_deep_ones_what_is_below_and_a_folder_write_what_is_inside() {
        let locks = [lock(Some("a/b"), "t1", false, false)];
        let none = LockPass::default();
        let b = |path: &str, deep| blocker(locks.iter(), Some(&p(path)), &none, false, deep);
        assert!(b("a/b", false).is_some());
        assert!(b("a/b/c", false).is_none(), "not deep");
        assert!(b("a", false).is_none());
        assert!(b("a", true).is_some(), "a folder write moves a/b");
        assert!(b("a/bc", true).is_none(), "a look-alike sibling");
        let deep = [lock(Some("a"), "t2", false, true)];
        assert!(blocker(deep.iter(), Some(&p("a/x/y")), &none, false, false).is_some());
        let root = [lock(None, "t3", false, true)];
        assert!(blocker(root.iter(), Some(&p("z")), &none, false, false).is_some());
    }

    #[test]
    fn only_the_holder_with_its_token_passes() {
        let locks = [lock(Some("f"), "t1", false, false)];
        let f = Some(p("f"));
        assert!(
            blocker(
                locks.iter(),
                f.as_ref(),
                &pass("alice", &["t1"]),
                false,
                true
            )
            .is_none()
        );
        assert!(blocker(locks.iter(), f.as_ref(), &pass("bob", &["t1"]), false, true).is_some());
        assert!(blocker(locks.iter(), f.as_ref(), &pass("bob", &["t1"]), true, true).is_none());
        assert!(
            blocker(
                locks.iter(),
                f.as_ref(),
                &pass("alice", &["t9"]),
                false,
                true
            )
            .is_some()
        );
        // Shared locks: holding one of them is enough.
        let shared = [
            lock(Some("f"), "s1", true, false),
            lock(Some("f"), "s2", true, false),
        ];
        assert!(
            blocker(
                shared.iter(),
                f.as_ref(),
                &pass("alice", &["s2"]),
                false,
                false
            )
            .is_none()
        );
        assert!(
            blocker(
                shared.iter(),
                f.as_ref(),
                &LockPass::default(),
                false,
                false
            )
            .is_some()
        );
    }

    #[test]
    fn shared_locks_share_and_exclusive_ones_do_not() {
        let f = Some(p("f"));
        let shared = [lock(Some("f"), "s1", true, false)];
        assert!(in_the_way(shared.iter(), f.as_ref(), true, false).is_none());
        assert!(in_the_way(shared.iter(), f.as_ref(), false, false).is_some());
        let below = [lock(Some("d/x"), "e1", false, false)];
        assert!(in_the_way(below.iter(), Some(&p("d")), true, false).is_none());
        assert!(in_the_way(below.iter(), Some(&p("d")), true, true).is_some());
    }
}
