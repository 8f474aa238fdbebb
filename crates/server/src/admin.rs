//! `AdminService`: the token table over gRPC, for `distribusync token …
//! --server`, and the server's status, for `distribusync status`.
//!
//! Invariant: only an unconfined identity may manage tokens (the layer has
//! checked the `admin` scope); a prefix token with `admin` could otherwise
//! make itself an unconfined one. The service is hosted even with
//! `--auth off` (for Status); token calls then answer FAILED_PRECONDITION.

use std::sync::Arc;
use std::time::SystemTime;

use distribusync_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Identity, NewToken, TokenRow, TokenStore};

/// Implements `distribusync.v1.Admin` over a [`TokenStore`] (`None`:
/// `--auth off`, no token table).
#[derive(Debug, Clone)]
pub struct AdminService {
    tokens: Option<Arc<TokenStore>>,
    auth: Auth,
    status: Option<StatusSource>,
}

/// What Status reads: the server's parts, shared with the metrics.
#[derive(Debug, Clone)]
pub(crate) struct StatusSource {
    pub store: Option<crate::store::Store>,
    pub compute: Option<crate::ComputeService>,
    pub live: Arc<crate::observe::Live>,
    pub started: std::time::Instant,
    pub root: Option<std::path::PathBuf>,
    pub tls: bool,
}

impl AdminService {
    pub fn new(tokens: Option<Arc<TokenStore>>, auth: Auth) -> Self {
        Self {
            tokens,
            auth,
            status: None,
        }
    }

    pub(crate) fn with_status(mut self, status: StatusSource) -> Self {
        self.status = Some(status);
        self
    }

    fn who<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let who = Identity::of(request);
        if let Some(p) = &who.prefix {
            return Err(Status::permission_denied(format!(
                "token `{}` is confined to {}/ and cannot manage tokens",
                who.name,
                p.shown()
            )));
        }
        Ok(who)
    }

    /// Runs `f` on the blocking pool, then makes the change visible to
    /// this server's checks at once (other processes see it within 1 s).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TokenStore) -> Result<T, crate::auth::TokenStoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let Some(tokens) = self.tokens.clone() else {
            return Err(Status::failed_precondition(
                "this server runs without tokens (--auth off)",
            ));
        };
        let auth = self.auth.clone();
        tokio::task::spawn_blocking(move || {
            let out = f(&tokens)?;
            auth.refresh()?;
            Ok::<_, crate::auth::TokenStoreError>(out)
        })
        .await
        .map_err(|e| Status::internal(format!("token table: {e}")))?
        .map_err(Status::from)
    }
}

/// A stored row as the wire shows it.
pub fn token_info(r: &TokenRow) -> v1::TokenInfo {
    let ts = |t: Option<SystemTime>| t.map(distribusync_proto::timestamp);
    v1::TokenInfo {
        name: r.name.clone(),
        scopes: r.scopes.iter().map(|s| s.name().to_owned()).collect(),
        prefix: r
            .prefix
            .as_ref()
            .map(|p| format!("{p}/"))
            .unwrap_or_default(),
        created: ts(Some(r.created)),
        last_used: ts(r.last_used),
        expires: ts(r.expires),
        revoked: ts(r.revoked),
    }
}

fn none_if_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(src) = &self.status else {
            return Err(Status::unimplemented("status is not available here"));
        };
        let stats = match &src.store {
            Some(store) => store.stats().await.map_err(Status::from)?,
            None => crate::store::StoreStats::default(),
        };
        let jobs = match &src.compute {
            Some(compute) => compute.job_counts().await,
            None => crate::compute::JobCounts::default(),
        };
        let mut services = Vec::new();
        if src.store.is_some() {
            services.push("files".to_owned());
        }
        if src.compute.is_some() {
            services.push("compute".to_owned());
        }
        let e = jobs.ended;
        Ok(Response::new(v1::StatusResponse {
            version: crate::VERSION.to_owned(),
            uptime_seconds: src.started.elapsed().as_secs(),
            backend: "local".to_owned(),
            root: src
                .root
                .as_ref()
                .map(|r| r.display().to_string())
                .unwrap_or_default(),
            services,
            files: stats.files,
            bytes: stats.bytes,
            open_streams: src.live.streams.load(Relaxed),
            uploads_in_progress: src.live.uploads.load(Relaxed),
            kept_parts: stats.kept.count as u64,
            kept_part_bytes: stats.kept.bytes,
            jobs_queued: jobs.queued,
            jobs_running: jobs.running,
            jobs_finished: e.succeeded + e.failed + e.cancelled + e.deadline_exceeded,
            tls: src.tls,
            auth_required: self.auth.required(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let now = SystemTime::now();
        let new = NewToken::parse(
            &r.name,
            &r.scopes.join(","),
            none_if_empty(&r.prefix),
            none_if_empty(&r.expires),
            now,
        )
        .map_err(Status::from)?;
        let (token, row) = self.run(move |t| t.create(&new, now)).await?;
        tracing::info!(by = %who.name, token = %row.name, scopes = %row.scopes, "token created");
        Ok(Response::new(v1::CreateTokenResponse {
            info: Some(token_info(&row)),
            token: token.reveal().to_owned(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        self.who(&request)?;
        let rows = self.run(TokenStore::list).await?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: rows.iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let who = self.who(&request)?;
        let name = request.into_inner().name;
        let now = SystemTime::now();
        let row = self.run(move |t| t.revoke(&name, now)).await?;
        tracing::info!(by = %who.name, token = %row.name, "token revoked");
        Ok(Response::new(v1::RevokeTokenResponse {
            info: Some(token_info(&row)),
        }))
    }
}
