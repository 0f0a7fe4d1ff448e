//! The streaming shapes of gRPC (server, client and bidi streams) on the framing unary calls use
//! ([`super::frame`]): request messages read with [`envelope::Reader`] as the engine asks for them,
//! and the reply written as a body that frames each [`Event::Message`] as it is polled, then the
//! trailers from the [`Event::End`]. A call the engine refuses before its headers is answered
//! trailers-only.
//!
//! The body produces frames only when hyper polls it, that is when the stream has room to send:
//! nothing of a reply is read ahead of the client beyond one piece of [`YIELD_AT`] bytes. Replies that
//! are ready together go out in that one piece, as tonic's encoder sends them, so that a stream of
//! small messages does not cost an HTTP/2 DATA frame each.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use http::header::HeaderMap;
use http_body::Frame;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::frame::{self, Codings};
use super::{Body, HttpResponse, ServiceSettings};
use crate::engine::{self, End, Event, Method};
use crate::observe::{self, Protocol, Seen};
use crate::protocol::deadline::{until_deadline, Deadline};
use crate::protocol::envelope::{Envelopes, ReadError};

/// Replies ready together are sent in one piece up to this size (tonic's encoder yields at it too).
const YIELD_AT: usize = 32 * 1024;
/// The first buffer of a reply's frames (as tonic's encoder's); it grows for larger messages.
const CHUNK: usize = 8 * 1024;

/// Answers one call of a streaming method. Every failure becomes a gRPC status.
pub(super) async fn serve(
    method: Arc<Method>,
    request: http::Request<Body>,
    settings: ServiceSettings,
    deadline: Deadline,
    cut: &'static CancellationToken,
) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let codings = match Codings::of(&parts.headers) {
        Ok(codings) => codings,
        Err(status) => return status.into_http(),
    };
    let limit = settings.max_message_size;
    let requests = if method.client_streaming() {
        engine::Requests::Stream(Box::pin(requests(body, codings, limit)))
    } else {
        // A server stream takes one message, read as a unary call's is.
        match frame::one_message(body, codings, limit).await {
            Ok(message) => engine::Requests::One(engine::Request::Encoded(message)),
            Err(status) => return status.into_http(),
        }
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
        requests,
        limit,
        reserve: 0,
        watch: None,
    };
    let streamed = match observe::answer(call, seen).await.into_stream() {
        Ok(streamed) => streamed,
        Err(refused) => return refused.into_status().into_http(),
    };
    let events = until_deadline(streamed.events.map(Ok::<_, Status>), deadline, cut);
    let body = StreamBody {
        events: Some(events),
        gzip: codings.gzip_out,
        limit,
        data: BytesMut::new(),
        trailers: None,
    };
    let mut response = http::Response::new(tonic::body::Body::new(body));
    *response.headers_mut() = frame::headers(streamed.headers, codings.gzip_out);
    response
}

/// The request messages, read as the engine asks for them; an error is the last item.
fn requests(
    body: Body,
    codings: Codings,
    limit: usize,
) -> impl Stream<Item = Result<engine::Request, Status>> + Send {
    Envelopes::new(
        frame::reader(body, codings, limit),
        move |read| match read {
            Ok(Some((flags, read))) => {
                Some(frame::message(flags, read, limit).map(engine::Request::Encoded))
            }
            Ok(None) => None,
            // The client reset its stream: nothing can reach it any more and the server drops the
            // answer; the requests end there, as tonic ends them.
            Err(ReadError::Body(status)) if status.code() == Code::Cancelled => None,
            Err(error) => Some(Err(frame::read_error(error, limit))),
        },
    )
}

/// A streamed answer's body: the frames of the replies, then the trailers of the end. `events`
/// is dropped at the end (and with it whatever produces the replies: a delay, a script).
struct StreamBody<S> {
    events: Option<S>,
    gzip: bool,
    limit: usize,
    /// Frames written and not yet handed to hyper.
    data: BytesMut,
    trailers: Option<HeaderMap>,
}

impl<S> StreamBody<S> {
    fn end(&mut self, end: End) {
        self.events = None;
        self.trailers = Some(frame::trailers(end));
    }

    /// The frames written so far, as one piece of the body.
    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(Some(Ok(Frame::data(self.data.split().freeze()))))
    }
}

impl<S> http_body::Body for StreamBody<S>
where
    S: Stream<Item = Result<Event, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        while let Some(events) = this.events.as_mut() {
            match Pin::new(events).poll_next(cx) {
                Poll::Ready(Some(Ok(Event::Message(reply)))) => {
                    if this.data.capacity() == 0 {
                        this.data = BytesMut::with_capacity(CHUNK);
                    }
                    match frame::append_frame(&mut this.data, reply, this.gzip, this.limit) {
                        Ok(()) if this.data.len() >= YIELD_AT => return this.flush(),
                        Ok(()) => {}
                        // A reply over the limit ends the call; the frames before it go out.
                        Err(status) => this.end(status.into()),
                    }
                }
                Poll::Ready(Some(Ok(Event::End(end)))) => this.end(*end),
                // The deadline or the shutdown cut.
                Poll::Ready(Some(Err(status))) => this.end(status.into()),
                Poll::Ready(None) => this.end(End::ok(MetadataMap::new())),
                Poll::Pending if this.data.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if !this.data.is_empty() {
            return this.flush();
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_none() && self.data.is_empty() && self.trailers.is_none()
    }
}
