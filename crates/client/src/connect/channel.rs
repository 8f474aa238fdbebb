//! [`AuthChannel`]: a tonic channel that adds the token to every request
//! and, when a call fails because the connection under it was refused at
//! the TLS level, fails with that reason instead of a bare transport error.
//!
//! Why not tonic's `InterceptedService`: hyper reports a connection that
//! died in its handshake (a plaintext client reading a TLS alert) only in
//! its connection task; the request sees "connection closed". The
//! connector records what it found in a slot shared with this channel, so
//! the request's error can name it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;

use super::{Bearer, ConnectError};

/// The last thing the connector found wrong with a connection; cleared
/// when a connection opens fine.
pub(crate) type FailureSlot = Arc<Mutex<Option<ConnectError>>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel whose every request carries the token (if any). Cheap to
/// clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct AuthChannel {
    inner: Channel,
    bearer: Bearer,
    failure: FailureSlot,
}

impl AuthChannel {
    /// `channel` with `bearer`'s token on each request.
    pub fn new(channel: Channel, bearer: Bearer) -> Self {
        Self::with_slot(channel, bearer, FailureSlot::default())
    }

    pub(crate) fn with_slot(channel: Channel, bearer: Bearer, failure: FailureSlot) -> Self {
        Self {
            inner: channel,
            bearer,
            failure,
        }
    }

    fn explain(failure: &FailureSlot, e: tonic::transport::Error) -> BoxError {
        let found = failure.lock().ok().and_then(|f| f.clone());
        match found {
            Some(c) => Box::new(c),
            None => Box::new(e),
        }
    }
}

impl tower_service::Service<http::Request<Body>> for AuthChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let failure = &self.failure;
        tower_service::Service::poll_ready(&mut self.inner, cx)
            .map_err(|e| Self::explain(failure, e))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(v) = self.bearer.header() {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, v.clone());
        }
        let call = tower_service::Service::call(&mut self.inner, request);
        let failure = self.failure.clone();
        Box::pin(async move { call.await.map_err(|e| Self::explain(&failure, e)) })
    }
}
