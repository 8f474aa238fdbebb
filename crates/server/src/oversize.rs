//! A message over the size limit answers RESOURCE_EXHAUSTED, gRPC's code
//! for "a message larger than the peer accepts", as other gRPC servers do.
//!
//! tonic's decoder reports it as OUT_OF_RANGE, before any of our code sees
//! the request (unary calls) or as the error of a stream's next message;
//! the code cannot be configured. So a layer around every service rewrites
//! that one status wherever it travels: in the response headers or in the
//! trailers (tonic answers a unary request it cannot decode with a body
//! whose trailers carry the status). Every other status passes untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

/// How tonic's decoder starts the message of an oversized message.
const TONIC_OVERSIZE: &str = "Error, decoded message length too large";

/// Rewrites the oversized-message status in `headers`, if that is what
/// they carry.
fn fix(headers: &mut HeaderMap) {
    // Cheap test first: this runs on every answer.
    if headers.get("grpc-status").is_none_or(|v| v != "11") {
        return;
    }
    let oversize = tonic::Status::from_header_map(headers)
        .is_some_and(|s| s.message().starts_with(TONIC_OVERSIZE));
    if oversize {
        let code = i32::from(tonic::Code::ResourceExhausted);
        if let Ok(v) = code.to_string().parse() {
            headers.insert("grpc-status", v);
        }
    }
}

/// The layer; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

/// The service [`OversizeLayer`] makes.
#[derive(Debug, Clone)]
pub struct Oversize<S>(S);

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Oversize<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            fix(response.headers_mut());
            Ok(response.map(|b| Body::new(FixTrailers(b))))
        })
    }
}

/// A response body whose trailers get [`fix`]ed.
struct FixTrailers(Body);

impl HttpBody for FixTrailers {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx).map(|frame| {
            frame.map(|r| {
                r.map(|mut f| {
                    if let Some(t) = f.trailers_mut() {
                        fix(t);
                    }
                    f
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
