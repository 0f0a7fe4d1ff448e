//! Unary gRPC calls: one framed message in, one out — the hot path.
//!
//! The request's one frame is read straight off the body, and the answer is a body that holds the
//! whole reply frame and the trailers: no per-call buffers, boxed streams or wakeups beyond what a
//! compiled tonic server pays too. The framing itself (codings, frames, headers, trailers) is
//! [`super::frame`]'s, shared with the streaming shapes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderMap;
use http_body::Frame;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::frame::{self, Codings};
use super::{Body, ServiceSettings};
use crate::engine::{self, End, Method};
use crate::observe::{self, Protocol, Seen};
use crate::protocol::deadline::Deadline;
use crate::protocol::envelope::PREFIX;

/// Answers one unary call. Every failure becomes a gRPC status, as tonic would send it.
pub(super) async fn serve(
    method: Arc<Method>,
    request: http::Request<Body>,
    settings: ServiceSettings,
    deadline: Deadline,
) -> http::Response<tonic::body::Body> {
    let (parts, body) = request.into_parts();
    let codings = match Codings::of(&parts.headers) {
        Ok(codings) => codings,
        Err(status) => return status.into_http(),
    };
    let limit = settings.max_message_size;
    let message = match frame::one_message(body, codings, limit).await {
        Ok(bytes) => bytes,
        Err(status) => return status.into_http(),
    };
    let seen = Seen::of(
        &parts.extensions,
        Protocol::Grpc,
        settings.peer,
        settings.observer,
    )
    .until(deadline.at());
    let call = engine::Call {
        method,
        metadata: MetadataMap::from_headers(parts.headers),
        requests: engine::Requests::One(engine::Request::Encoded(message)),
        limit,
        reserve: PREFIX,
        watch: None,
    };
    let ready = match observe::answer(call, seen).await {
        engine::Reply::Ready(ready) => ready,
        other => match other.whole().await {
            Ok(ready) => ready,
            Err(refused) => return refused.into_status().into_http(),
        },
    };
    let (data, end) = match ready
        .message
        .map(|m| frame::frame(m, codings.gzip_out, limit))
    {
        Some(Ok(data)) => (Some(data), ready.end),
        Some(Err(status)) => (None, status.into()),
        None => (None, ready.end),
    };
    http_response(ready.headers, data, end, codings.gzip_out)
}

/// A unary answer: headers, the reply frame if any, the status (with any custom trailers).
fn http_response(
    metadata: MetadataMap,
    data: Option<Bytes>,
    end: End,
    gzip_out: bool,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(UnaryBody {
        data,
        trailers: Some(frame::trailers(end)),
    }));
    *response.headers_mut() = frame::headers(metadata, gzip_out);
    response
}

/// A reply frame, then trailers: the whole body of a unary answer. No exact size hint: it would
/// become a `content-length` that leaves no room for the trailers gRPC-Web adds to the body.
struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}
