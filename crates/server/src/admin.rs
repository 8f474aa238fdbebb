//! `AdminService`: the token table over gRPC, for `distribusync token …
//! --server`.
//!
//! Invariant: only an unconfined identity may manage tokens (the layer has
//! checked the `admin` scope); a prefix token with `admin` could otherwise
//! make itself an unconfined one.

use std::sync::Arc;
use std::time::SystemTime;

use distribusync_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Identity, NewToken, TokenRow, TokenStore};

/// Implements `distribusync.v1.Admin` over a [`TokenStore`].
#[derive(Debug, Clone)]
pub struct AdminService {
    tokens: Arc<TokenStore>,
    auth: Auth,
}

impl AdminService {
    pub fn new(tokens: Arc<TokenStore>, auth: Auth) -> Self {
        Self { tokens, auth }
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
        let tokens = self.tokens.clone();
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
