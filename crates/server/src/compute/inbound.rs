//! The bytes of a unary Compute request count against the compute memory
//! budget while they arrive, before tonic decodes them.
//!
//! Add and Submit carry all their numbers in one message. tonic buffers
//! the whole message and decodes it into a list before the handler runs,
//! so a handler that reserves the list's memory is too late: a dozen
//! concurrent 16M-number Submits held 1.7 GB under a 1 GiB budget. Here the
//! request body of those two methods reserves twice each data frame (the
//! buffered body and the list it becomes) as the frame arrives (evicting
//! kept results to make room, as every reservation does), and gives
//! it back when tonic drops the body, after decoding; the handler then
//! reserves the decoded input as before. Past the budget the body fails
//! with RESOURCE_EXHAUSTED naming `serve --compute-memory`, which tonic
//! answers as is. Streams (Sort, Callbacks, GetJobResult) are not wrapped:
//! a Sort reserves its runs as they arrive and frees each frame once it is
//! decoded.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::server::NamedService;

use super::budget::Reservation;
use super::jobs::Jobs;

/// Methods whose whole input arrives as one message.
fn one_message(path: &str) -> bool {
    path.ends_with("/Add") || path.ends_with("/Submit")
}

/// A request body that reserves what it buffers; see the module docs.
struct Reserving {
    inner: Body,
    jobs: Jobs,
    held: Reservation,
}

impl HttpBody for Reserving {
    type Data = <Body as HttpBody>::Data;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let bytes = 2 * data.len() as u64;
                    match this.jobs.reserve(bytes) {
                        Ok(r) => this.held.absorb(r),
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The Compute service with its unary requests' bodies budgeted.
#[derive(Debug, Clone)]
pub struct Budgeted<S> {
    inner: S,
    jobs: Jobs,
}

impl<S> Budgeted<S> {
    pub(crate) fn new(inner: S, jobs: Jobs) -> Self {
        Self { inner, jobs }
    }
}

impl<S: NamedService> NamedService for Budgeted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Budgeted<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !one_message(request.uri().path()) {
            return self.inner.call(request);
        }
        let (parts, inner) = request.into_parts();
        let body = Reserving {
            inner,
            held: self.jobs.unreserved(),
            jobs: self.jobs.clone(),
        };
        self.inner
            .call(http::Request::from_parts(parts, Body::new(body)))
    }
}
