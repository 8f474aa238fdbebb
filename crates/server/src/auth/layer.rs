//! The tower layer that checks every call: keyed on the method path
//! (`/distribusync.v1.Files/Upload`), which a tonic interceptor cannot see.
//!
//! Invariants: health checks and reflection pass untouched; every other
//! call either carries an [`Identity`] into its handler (in the request's
//! extensions) or is answered here, before any handler runs:
//! UNAUTHENTICATED "invalid or missing token" for every kind of bad token,
//! RESOURCE_EXHAUSTED for an address over its failure limit,
//! PERMISSION_DENIED naming the scope a valid token lacks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use distribusync_core::token::Scope;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use super::{Auth, Identity, Refusal};

/// What the method at `path` needs: `None` when it is open (health,
/// reflection), `Some(None)` a valid token with any scope (a method this
/// table does not know: tonic answers it UNIMPLEMENTED after the check),
/// `Some(Some(scope))` a token with `scope`.
pub fn required_scope(path: &str) -> Option<Option<Scope>> {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Some(None);
    };
    let scope = match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => return None,
        "distribusync.v1.Files" => match method {
            "List" | "Stat" | "Download" | "Watch" | "GetManifest" | "GetPieces" => Scope::Read,
            "Upload" | "UploadOffset" | "UploadBatch" | "Delete" | "Rename" | "DeltaUpload"
            // The probe before a DeltaUpload: it tells what DeltaNeed would.
            | "FindChunks" => Scope::Write,
            // Server-wide traffic figures: not any one folder's business.
            "Stats" => Scope::Admin,
            _ => return Some(None),
        },
        "distribusync.v1.Compute" => Scope::Compute,
        "distribusync.v1.Admin" => Scope::Admin,
        _ => return Some(None),
    };
    Some(Some(scope))
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Auth,
}

impl AuthLayer {
    pub fn new(auth: Auth) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Auth,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The short name of a method for messages: `Files/Upload`.
fn method_name(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    path.strip_prefix("distribusync.v1.").unwrap_or(path)
}

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let Some(needed) = required_scope(path) else {
            return Box::pin(self.inner.call(req));
        };
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|a| a.ip());
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let refused = match self.auth.authenticate(authorization, peer) {
            Ok(identity) => match needed {
                Some(scope) if !identity.scopes.contains(scope) => {
                    Some(tonic::Status::permission_denied(format!(
                        "token `{}` lacks the `{scope}` scope, which {} needs",
                        identity.name,
                        method_name(path)
                    )))
                }
                _ => {
                    // Mutations log inside this span: each log line names
                    // who made the change.
                    let span = matches!(needed, Some(Scope::Write | Scope::Admin))
                        .then(|| tracing::info_span!("call", who = %identity.name));
                    req.extensions_mut().insert::<Identity>(identity);
                    if let Some(span) = span {
                        use tracing::Instrument;
                        return Box::pin(self.inner.call(req).instrument(span));
                    }
                    None
                }
            },
            Err(Refusal::Unauthenticated) => {
                Some(tonic::Status::unauthenticated("invalid or missing token"))
            }
            Err(Refusal::Limited) => {
                tracing::debug!(?peer, "failed authentications over the limit");
                Some(tonic::Status::resource_exhausted(
                    "too many failed authentications from this address; wait a few seconds",
                ))
            }
        };
        match refused {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http::<Body>()))),
            None => Box::pin(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_maps_to_its_scope() {
        let read = Some(Some(Scope::Read));
        let write = Some(Some(Scope::Write));
        for m in [
            "List",
            "Stat",
            "Download",
            "Watch",
            "GetManifest",
            "GetPieces",
        ] {
            assert_eq!(required_scope(&format!("/distribusync.v1.Files/{m}")), read);
        }
        for m in [
            "Upload",
            "UploadOffset",
            "UploadBatch",
            "Delete",
            "Rename",
            "DeltaUpload",
            "FindChunks",
        ] {
            assert_eq!(
                required_scope(&format!("/distribusync.v1.Files/{m}")),
                write
            );
        }
        assert_eq!(
            required_scope("/distribusync.v1.Compute/Add"),
            Some(Some(Scope::Compute))
        );
        assert_eq!(
            required_scope("/distribusync.v1.Admin/ListTokens"),
            Some(Some(Scope::Admin))
        );
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(required_scope("/distribusync.v1.Files/Nope"), Some(None));
        assert_eq!(required_scope("garbage"), Some(None));
    }
}
