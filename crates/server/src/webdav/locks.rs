//! [`LockFront`]: `dav-server`'s lock system over the store's one lock
//! table (`store/dav_locks.rs`), seen from one caller's root.
//!
//! Invariants: paths are made full (`/team/a` for a token of folder
//! `team` locking `/a`) on the way in and relative on the way out, so
//! callers of different folders see the same locks. Nothing is kept here:
//! the store's table is the only one, so what WebDAV grants is what every
//! write obeys, bounded, expiring and kept across restarts as the store
//! says. A refusal `dav-server` can only answer as a bare 423 is told to
//! [`Said`], which gives the answer its reason (and, for a bound, its 503).

use std::time::Duration;

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use distribusync_core::RemotePath;
use http::StatusCode;

use super::Said;
use super::fs::remote_path;
use crate::ServiceError;
use crate::store::{LockLimits, LockPass, LockRecord, NewLock, Store};

/// The lock table as one request sees it.
#[derive(Debug, Clone)]
pub(super) struct LockFront {
    pub store: Store,
    pub prefix: Option<RemotePath>,
    pub limits: LockLimits,
    /// The lifetime the request's `Timeout` header asked for (`None`:
    /// none, or `Infinite`), read by the front: `dav-server`'s own reading
    /// caps it at 600 s, and it is capped here by `limits`.
    pub asked: Option<Duration>,
    pub said: Said,
}

/// Percent-encodes a path for a URL (everything but unreserved bytes and
/// `/`).
pub(super) fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `<D:owner>` element as stored (no XML declaration), written on
/// its own: `dav-server` gives it the prefix `D`, bound only in its
/// answers, so the binding is declared on the element itself.
fn owner_bytes(owner: &xmltree::Element) -> Option<Vec<u8>> {
    let mut owner = owner.clone();
    if let (Some(prefix), Some(ns)) = (owner.prefix.clone(), owner.namespace.clone()) {
        let mut declared = owner
            .namespaces
            .take()
            .unwrap_or_else(xmltree::Namespace::empty);
        declared.force_put(prefix, ns);
        owner.namespaces = Some(declared);
    }
    let mut out = Vec::new();
    let config = xmltree::EmitterConfig::new().write_document_declaration(false);
    match owner.write_with_config(&mut out, config) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::debug!(error = %e, "a lock's owner element could not be kept");
            None
        }
    }
}

impl LockFront {
    fn url_prefix(&self) -> String {
        self.prefix
            .as_ref()
            .map(|p| format!("/{}", encode(p.as_str())))
            .unwrap_or_default()
    }

    fn full(&self, path: &DavPath) -> DavPath {
        let pre = self.url_prefix();
        if pre.is_empty() {
            return path.clone();
        }
        DavPath::new(&format!("{pre}{}", path.as_url_string())).unwrap_or_else(|_| path.clone())
    }

    /// The store's path of a full lock path (`None`: the server's root).
    fn remote(full: &DavPath) -> Option<RemotePath> {
        remote_path(full.as_bytes(), None).ok().flatten()
    }

    /// A lock of the table as `dav-server` sees it, relative to the root.
    fn dav(&self, l: LockRecord) -> DavLock {
        let full = DavPath::new(&l.url)
            .unwrap_or_else(|_| DavPath::new("/").expect("the root is a valid path"));
        let pre = self.url_prefix();
        let mut path = full.clone();
        if !pre.is_empty()
            && let Some(rest) = full.as_url_string().strip_prefix(&pre)
            && let Ok(p) = DavPath::new(if rest.is_empty() { "/" } else { rest })
        {
            path = p;
        }
        DavLock {
            owner: l
                .owner_xml
                .as_deref()
                .and_then(|x| xmltree::Element::parse(x).ok())
                .map(Box::new),
            token: l.token,
            path: Box::new(path),
            principal: Some(l.principal),
            timeout_at: Some(l.until),
            timeout: Some(l.timeout),
            shared: l.shared,
            deep: l.deep,
        }
    }

    /// Tells why `path` is refused: `l` holds it.
    fn refuse_locked(&self, path: &DavPath, l: &LockRecord) {
        let text = match Self::remote(&self.full(path)) {
            Some(p) => l.refusal(&p).to_string(),
            None => format!("/: {}", l.refusal_reason()),
        };
        self.said.say(Some(StatusCode::LOCKED), text);
    }
}

impl DavLockSystem for LockFront {
    fn lock(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&xmltree::Element>,
        _timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let full = self.full(path);
        let new = NewLock {
            at: Self::remote(&full),
            url: full.as_url_string(),
            principal: principal.unwrap_or_default().to_owned(),
            owner_xml: owner.and_then(owner_bytes),
            shared,
            deep,
            timeout: self.asked,
        };
        let path = path.clone();
        Box::pin(async move {
            match self.store.dav_lock(new.clone(), self.limits).await {
                Ok(Ok(l)) => {
                    self.said.granted_lock(l.token.clone());
                    Ok(self.dav(l))
                }
                Ok(Err(l)) => {
                    self.refuse_locked(&path, &l);
                    Err(self.dav(l))
                }
                Err(e) => {
                    let status = match e {
                        ServiceError::TooManyLocks { .. } => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    tracing::warn!(error = %e, "webdav LOCK refused");
                    self.said.say(Some(status), e.to_string());
                    // `dav-server` answers any refusal as 423; `Said`
                    // turns it into `status`.
                    Err(DavLock {
                        token: String::new(),
                        path: Box::new(path),
                        principal: Some(new.principal),
                        owner: None,
                        timeout_at: None,
                        timeout: None,
                        shared,
                        deep,
                    })
                }
            }
        })
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let at = Self::remote(&self.full(path));
        let token = token.to_owned();
        Box::pin(async move {
            match self.store.dav_unlock(at, token).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(()),
                Err(e) => {
                    // Released in memory; only its row may come back at a
                    // restart, to expire then.
                    tracing::warn!(error = %e, "a WebDAV lock released could not be forgotten in the index");
                    Ok(())
                }
            }
        })
    }

    fn refresh(
        &'_ self,
        path: &DavPath,
        token: &str,
        _timeout: Option<Duration>,
    ) -> LsFuture<'_, Result<DavLock, ()>> {
        let at = Self::remote(&self.full(path));
        let token = token.to_owned();
        Box::pin(async move {
            match self
                .store
                .dav_refresh(at, token, self.asked, self.limits)
                .await
            {
                Ok(Some(l)) => Ok(self.dav(l)),
                Ok(None) => Err(()),
                Err(e) => {
                    tracing::warn!(error = %e, "a WebDAV lock could not be renewed");
                    Err(())
                }
            }
        })
    }

    fn check(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let at = Self::remote(&self.full(path));
        let pass = LockPass {
            owner: principal.unwrap_or_default().to_owned(),
            tokens: submitted_tokens.to_vec(),
        };
        let blocker = self
            .store
            .dav_blocker(at.as_ref(), &pass, ignore_principal, deep);
        let r = match blocker {
            None => Ok(()),
            Some(l) => {
                self.refuse_locked(path, &l);
                Err(self.dav(l))
            }
        };
        Box::pin(std::future::ready(r))
    }

    fn discover(&'_ self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let at = Self::remote(&self.full(path));
        let found = self
            .store
            .dav_locks_along(at.as_ref())
            .into_iter()
            .map(|l| self.dav(l))
            .collect();
        Box::pin(std::future::ready(found))
    }

    fn delete(&'_ self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let at = Self::remote(&self.full(path));
        Box::pin(async move {
            if let Err(e) = self.store.dav_release_under(at).await {
                tracing::warn!(error = %e, "WebDAV locks released could not be forgotten in the index");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_percent_encoded() {
        assert_eq!(encode("a b/ü"), "a%20b/%C3%BC");
    }

    #[test]
    fn an_owner_element_survives_being_kept() {
        let owner = xmltree::Element::parse(
            &br#"<D:owner xmlns:D="DAV:"><D:href>mailto:a@example.org</D:href></D:owner>"#[..],
        )
        .expect("xml");
        let kept = owner_bytes(&owner).expect("written");
        let back = xmltree::Element::parse(&kept[..]).expect("parsed back");
        assert_eq!(back, owner);

        // As litmus sends it (a default namespace), with the prefix
        // `dav-server` gives it.
        let info = xmltree::Element::parse(
            &br#"<lockinfo xmlns='DAV:'><owner>litmus test suite</owner></lockinfo>"#[..],
        )
        .expect("xml");
        let mut owner = info.get_child("owner").expect("owner").clone();
        owner.prefix = Some("D".into());
        let kept = owner_bytes(&owner).expect("written");
        let back = xmltree::Element::parse(&kept[..]).expect("parsed back");
        assert_eq!(back.prefix.as_deref(), Some("D"));
        assert_eq!(back.namespace.as_deref(), Some("DAV:"));
        assert_eq!(back.get_text().as_deref(), Some("litmus test suite"));
    }
}
