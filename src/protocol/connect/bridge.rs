//! Connect for the built-in services (server reflection, health), whose tonic services speak gRPC
//! only. A Connect `+proto` envelope is byte for byte a gRPC length-prefixed message (flag 1 is
//! "compressed" in both), so a streaming request is relabelled and streamed through as it arrives,
//! and the gRPC answer's frames come back as they are, its status (trailers) becoming the end-stream
//! message. A unary request is framed, and its answer unframed. (This is what lets `buf curl
//! --protocol connect` use reflection.) JSON would need these services' descriptors: not offered.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body::{Body as _, Frame};
use prost_reflect::DescriptorPool;
use tonic::{Code, Status};
use tower::ServiceExt as _;

use super::{end_stream, only_end, unary_error, until, Codec, Framing};
use crate::builtin::HttpService;
use crate::protocol::compression::Encoding;
use crate::protocol::deadline::Deadline;
use crate::protocol::wire;
use crate::protocol::{envelope, json, Body, HttpResponse};

/// The one unary method among the built-in services.
const UNARY_BUILT_IN: &str = "/grpc.health.v1.Health/Check";

/// How the Connect request asks to be served.
pub(crate) struct Call {
    pub framing: Framing,
    pub codec: Codec,
    pub deadline: Deadline,
    pub limit: usize,
}

/// Serves a Connect request with a gRPC service.
pub(crate) async fn serve(
    service: HttpService,
    request: http::Request<Body>,
    call: Call,
    pool: &DescriptorPool,
) -> HttpResponse {
    let Call {
        framing,
        codec,
        deadline,
        limit,
    } = call;
    if codec != Codec::Proto {
        let status = Status::unimplemented(format!(
            "{} speaks binary protobuf only over Connect: use {}",
            request.uri().path(),
            match framing {
                Framing::Unary => "application/proto",
                Framing::Streaming => "application/connect+proto",
            }
        ));
        return unary_error(&status, pool, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    // Of the built-in methods only Health/Check is unary; the others stream without end (Watch) or
    // both ways (reflection), and a unary answer would wait for them forever.
    if framing == Framing::Unary && request.uri().path() != UNARY_BUILT_IN {
        let status = Status::unimplemented(format!(
            "{} is a streaming method: call it with {} (messages in 5-byte envelopes), or over gRPC",
            request.uri().path(),
            Codec::Proto.streaming_type()
        ));
        return unary_error(&status, pool, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let (mut parts, body) = request.into_parts();
    let connect_headers = parts.headers.clone();
    let headers = &mut parts.headers;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let body = match framing {
        Framing::Streaming => {
            for (from, to) in [
                ("connect-content-encoding", "grpc-encoding"),
                ("connect-accept-encoding", "grpc-accept-encoding"),
            ] {
                if let Some(v) = connect_headers.get(from) {
                    headers.insert(HeaderName::from_static(to), v.clone());
                }
            }
            body
        }
        Framing::Unary => {
            let message = async {
                let raw = wire::read_body(body, limit).await?;
                Encoding::parse(wire::header(&connect_headers, header::CONTENT_ENCODING))?
                    .decompress(raw, limit)
            }
            .await;
            match message {
                Ok(message) => Body::new(http_body_util::Full::new(envelope::encode(0, &message))),
                Err(status) => return unary_error(&status, pool, json::http_status(status.code())),
            }
        }
    };
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    // The deadline is kept here: tonic's own grpc-timeout handling sits before this service.
    let call = async {
        let Ok(response) = service
            .oneshot(http::Request::from_parts(parts, body))
            .await;
        Ok(response)
    };
    let response = match until(deadline, call).await {
        Ok(response) => response,
        Err(status) => {
            return match framing {
                Framing::Unary => unary_error(&status, pool, json::http_status(status.code())),
                Framing::Streaming => only_end(HeaderMap::new(), Codec::Proto, &status, pool),
            }
        }
    };
    match framing {
        Framing::Streaming => streaming(response, pool.clone(), deadline),
        Framing::Unary => match until(deadline, unary(response, limit)).await {
            Ok(response) => response,
            Err(status) => unary_error(&status, pool, json::http_status(status.code())),
        },
    }
}

/// The gRPC status in `headers` (trailers, or the headers of a trailers-only answer), its other
/// entries as the status' metadata.
fn grpc_status(headers: &HeaderMap) -> Option<Status> {
    headers.get("grpc-status")?;
    let mut headers = headers.clone();
    for name in [
        "content-type",
        "content-length",
        "grpc-encoding",
        "grpc-accept-encoding",
        "date",
    ] {
        headers.remove(name);
    }
    Some(Status::from_header_map(&headers).unwrap_or_else(|| Status::unknown("no grpc-status")))
}

/// A gRPC answer as a Connect stream: frames through, the status as the end-stream message.
fn streaming(
    response: http::Response<tonic::body::Body>,
    pool: DescriptorPool,
    deadline: Deadline,
) -> HttpResponse {
    let (parts, body) = response.into_parts();
    if let Some(status) = grpc_status(&parts.headers) {
        return only_end(HeaderMap::new(), Codec::Proto, &status, &pool);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        match name.as_str() {
            "grpc-encoding" => {
                headers.insert("connect-content-encoding", value.clone());
            }
            n if n.starts_with("grpc-") || n == "content-type" || n == "content-length" => {}
            _ => {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let mut body = Box::pin(body);
    let frames = async_stream::stream! {
        loop {
            let next = futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
            let frame = match until(deadline, async { Ok(next.await) }).await {
                Ok(frame) => frame,
                Err(status) => {
                    yield Frame::data(end_stream(&status, &pool));
                    return;
                }
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => yield Frame::data(data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let status = grpc_status(&trailers)
                            .unwrap_or_else(|| Status::unknown("the gRPC answer has no grpc-status"));
                        yield Frame::data(end_stream(&status, &pool));
                        return;
                    }
                },
                Some(Err(e)) => {
                    yield Frame::data(end_stream(&Status::internal(format!("gRPC answer: {e}")), &pool));
                    return;
                }
                None => {
                    let status = Status::unknown("the gRPC answer ended without a status");
                    yield Frame::data(end_stream(&status, &pool));
                    return;
                }
            }
        }
    };
    wire::streaming_response(headers, Codec::Proto.streaming_type(), frames)
}

/// A gRPC answer as a Connect unary answer: the one message unframed, or the error.
async fn unary(
    response: http::Response<tonic::body::Body>,
    limit: usize,
) -> Result<HttpResponse, Status> {
    let (parts, body) = response.into_parts();
    if let Some(status) = grpc_status(&parts.headers) {
        return Err(status);
    }
    let mut body = Box::pin(body);
    let mut data = BytesMut::new();
    let mut status = None;
    while let Some(frame) = futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        match frame.map(Frame::into_data) {
            Ok(Ok(chunk)) => {
                // One message and its 5-byte prefix, at most.
                if data.len() + chunk.len() > limit.saturating_add(5) {
                    return Err(Status::resource_exhausted(format!(
                        "answer larger than the limit of {limit} bytes (--max-message-size)"
                    )));
                }
                data.extend_from_slice(&chunk)
            }
            Ok(Err(frame)) => status = grpc_status(&frame.into_trailers().unwrap_or_default()),
            Err(e) => status = Some(Status::internal(format!("gRPC answer: {e}"))),
        }
    }
    let status = status.unwrap_or_else(|| Status::unknown("the gRPC answer has no grpc-status"));
    if status.code() != Code::Ok {
        return Err(status);
    }
    let (flags, message) = unframe(data.freeze())?;
    let message = match flags & 1 {
        0 => message,
        _ => Encoding::parse(wire::header(&parts.headers, "grpc-encoding"))?
            .decompress(message, limit)?,
    };
    let mut headers = HeaderMap::new();
    wire::add_metadata(&mut headers, status.metadata(), "trailer-");
    Ok(wire::full_response(
        StatusCode::OK,
        headers,
        "application/proto",
        message.to_vec(),
    ))
}

/// The one length-prefixed message of a unary gRPC answer.
fn unframe(data: Bytes) -> Result<(u8, Bytes), Status> {
    if data.len() < envelope::PREFIX {
        return Err(Status::internal("the gRPC answer has no message"));
    }
    envelope::single(data).ok_or_else(|| Status::internal("the gRPC answer is not one message"))
}
