//! The Connect protocol (<https://connectrpc.com/docs/protocol>) on `/package.Service/Method`:
//!
//! * **unary** — `POST` with `application/json` or `application/proto`, the message as the whole
//!   body (or `GET ?encoding=…&message=…[&base64=1][&compression=…]`). The answer has the handler's
//!   headers, its trailers as `trailer-`-prefixed headers, and the message as the body; an error is
//!   the HTTP status of its code with Connect's error JSON.
//! * **streaming** — `application/connect+json` / `+proto`, messages in 5-byte envelopes both ways;
//!   the answer is always 200 and ends with an end-stream envelope (flag `0x02`) holding the error, if
//!   any, and the trailers. Server streaming works with any client; client streaming needs the body
//!   sent before the answer is read, which every HTTP/1.1 client does; bidi needs a client that reads
//!   while it sends (HTTP/2).
//!
//! `connect-timeout-ms` bounds the call (`deadline_exceeded`), `Connect-Protocol-Version` is checked
//! when present, and bodies may be gzip-compressed either way (or identity).
//!
//! The router has found what the path names before a request gets here ([`Target`]: a user's
//! method, or a built-in service reached through [`bridge`]), and told POST from GET.

pub(crate) mod bridge;

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures::{Future, StreamExt as _};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body::Frame;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::compression::Encoding;
use super::deadline::{until_deadline, Deadline};
use super::envelope::{
    self, ReadError, COMPRESSED as FLAG_COMPRESSED, END_STREAM as FLAG_END_STREAM,
};
use super::wire;
use super::{json, Body, HttpResponse, ServiceSettings};
use crate::builtin::HttpService;
use crate::engine::{self, End, Event};
use crate::limits::too_large;
use crate::observe::{self, Protocol, Seen};
use crate::state::{Method, State};

/// What a Connect request's path names, as the router found it.
pub(crate) enum Target {
    /// A user's method.
    Method(Arc<Method>),
    /// A built-in gRPC service (reflection, health), which the user's protos do not define.
    Builtin(HttpService),
}

/// How messages are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Json,
    Proto,
}

impl Codec {
    fn decode(self, desc: &MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, Status> {
        match self {
            Codec::Json => json::decode(desc, bytes),
            Codec::Proto => {
                crate::codec::decoded::check(desc, bytes)?;
                DynamicMessage::decode(desc.clone(), bytes).map_err(|e| {
                    Status::invalid_argument(format!(
                        "request is not a valid {}: {e}",
                        desc.full_name()
                    ))
                })
            }
        }
    }

    fn encode(self, message: &DynamicMessage) -> Result<Vec<u8>, Status> {
        match self {
            Codec::Json => json::encode(message),
            Codec::Proto => Ok(crate::codec::encode::encode_to_vec(message)),
        }
    }

    fn unary_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        }
    }

    fn streaming_type(self) -> &'static str {
        match self {
            Codec::Json => "application/connect+json",
            Codec::Proto => "application/connect+proto",
        }
    }
}

/// The two request shapes: a bare message, or enveloped messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Unary,
    Streaming,
}

/// The framing and codec a content type names (parameters such as `charset` ignored).
pub(crate) fn shape(content_type: &str) -> Option<(Framing, Codec)> {
    let media = content_type.split(';').next()?.trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Some((Framing::Unary, Codec::Json)),
        "application/proto" => Some((Framing::Unary, Codec::Proto)),
        "application/connect+json" => Some((Framing::Streaming, Codec::Json)),
        "application/connect+proto" => Some((Framing::Streaming, Codec::Proto)),
        _ => None,
    }
}

/// Serves one Connect `POST` for `target`; `shape` is what its content type names (`None`: a
/// content type that only looks like Connect's, refused here).
pub(crate) async fn serve(
    state: Arc<State>,
    target: Target,
    shape: Option<(Framing, Codec)>,
    request: http::Request<Body>,
    settings: ServiceSettings,
    cut: &'static CancellationToken,
) -> HttpResponse {
    let pool = state.protos.pool.clone();
    let Some((framing, codec)) = shape else {
        let status = Status::unimplemented(format!(
            "content type '{}' is not supported: use application/json, application/proto, \
             application/connect+json or application/connect+proto",
            wire::header(request.headers(), header::CONTENT_TYPE).unwrap_or_default()
        ));
        return unary_error(&status, &pool, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    };
    if let Err(status) = check_version(request.headers()) {
        return unary_error(&status, &pool, StatusCode::BAD_REQUEST);
    }
    let deadline = match Deadline::connect(request.headers()) {
        Ok(d) => d,
        Err(status) => return unary_error(&status, &pool, StatusCode::BAD_REQUEST),
    };
    let method = match target {
        Target::Method(method) => method,
        Target::Builtin(service) => {
            let call = bridge::Call {
                framing,
                codec,
                deadline,
                limit: settings.max_message_size,
            };
            return bridge::serve(service, request, call, &pool).await;
        }
    };
    match framing {
        Framing::Unary => {
            let how = format!(
                "call it with {} (messages in 5-byte envelopes), or over gRPC",
                codec.streaming_type()
            );
            if let Some(refusal) =
                refuse_streaming(&method, &how, StatusCode::UNSUPPORTED_MEDIA_TYPE, &pool)
            {
                return refusal;
            }
            let seen = Seen::of(
                request.extensions(),
                Protocol::Connect,
                settings.peer,
                settings.observer,
            )
            .until(deadline.at());
            let (parts, body) = request.into_parts();
            let limit = settings.max_message_size;
            let payload = async {
                let encoding =
                    Encoding::parse(wire::header(&parts.headers, header::CONTENT_ENCODING))?;
                let raw = wire::read_body(body, limit).await?;
                Ok((encoding.decompress(raw, limit)?, encoding))
            }
            .await;
            unary(
                state,
                method,
                &parts.headers,
                payload,
                codec,
                deadline,
                limit,
                seen,
            )
            .await
        }
        Framing::Streaming => {
            streaming(state, method, request, codec, deadline, settings, cut).await
        }
    }
}

/// The refusal of a request that only a unary method takes (a bare message, a GET) when `method`
/// streams; `None` for a unary method.
fn refuse_streaming(
    method: &Method,
    how: &str,
    http_status: StatusCode,
    pool: &DescriptorPool,
) -> Option<HttpResponse> {
    if !(method.client_streaming() || method.server_streaming()) {
        return None;
    }
    let status = Status::unimplemented(format!("{} is a streaming method: {how}", method.name));
    Some(unary_error(&status, pool, http_status))
}

/// `Connect-Protocol-Version` may be absent (curl); when present it must be 1.
fn check_version(headers: &HeaderMap) -> Result<(), Status> {
    match wire::header(headers, "connect-protocol-version") {
        None | Some("1") => Ok(()),
        Some(other) => Err(Status::invalid_argument(format!(
            "connect-protocol-version '{other}' is not supported (only 1)"
        ))),
    }
}

/// Runs `call` until `deadline`, else DEADLINE_EXCEEDED (dropping the call stops its script).
async fn until<T>(
    deadline: Deadline,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    super::deadline::until(deadline, "connect-timeout-ms elapsed", call).await
}

/// One unary call from its payload as read (decompressed, with the coding it came in, which is the
/// answer's unless `accept-encoding` says otherwise), or the error reading it.
#[allow(clippy::too_many_arguments)]
async fn unary(
    state: Arc<State>,
    method: Arc<Method>,
    headers: &HeaderMap,
    payload: Result<(Bytes, Encoding), Status>,
    codec: Codec,
    deadline: Deadline,
    limit: usize,
    seen: Seen,
) -> HttpResponse {
    let pool = state.protos.pool.clone();
    let (payload, encoding) = match payload {
        Ok(p) => p,
        Err(status) => return unary_error(&status, &pool, json::http_status(status.code())),
    };
    let answer_encoding =
        Encoding::accepted(wire::header(headers, header::ACCEPT_ENCODING), encoding);
    let metadata = wire::request_metadata(headers);
    let reply = until(deadline, async {
        // Canonical protobuf is handed on as bytes: a rule compiled to emitters answers from them.
        let canonical = codec == Codec::Proto
            && method
                .direct
                .as_ref()
                .is_some_and(|d| d.is_canonical(&payload));
        let request = match canonical {
            true => engine::Request::Encoded(payload),
            false => engine::Request::Decoded(codec.decode(&method.desc.input(), &payload)?),
        };
        let output = method.desc.output();
        let requests = engine::Requests::One(request);
        let call = engine::Call {
            method,
            metadata,
            requests,
            limit,
            reserve: 0,
            watch: None,
        };
        let mut reply = wire::single_reply(observe::answer(call, seen).await, limit).await?;
        let message = std::mem::replace(&mut reply.message, engine::Message::Encoded(Bytes::new()));
        let body = match (codec, message) {
            (Codec::Proto, engine::Message::Decoded(m)) => codec.encode(&m)?,
            (Codec::Proto, encoded) => encoded.into_bytes(limit)?.into(),
            (Codec::Json, m) => codec.encode(&m.into_decoded(&output)?)?,
        };
        Ok((reply, body))
    })
    .await;
    match reply {
        Ok((reply, body)) => {
            let mut headers = HeaderMap::new();
            wire::add_metadata(&mut headers, &reply.headers, "");
            wire::add_metadata(&mut headers, &reply.trailers, "trailer-");
            if answer_encoding != Encoding::Identity {
                headers.insert(
                    header::CONTENT_ENCODING,
                    HeaderValue::from_static(answer_encoding.name()),
                );
            }
            wire::full_response(
                StatusCode::OK,
                headers,
                codec.unary_type(),
                answer_encoding.compress(body),
            )
        }
        Err(status) => unary_error(&status, &pool, json::http_status(status.code())),
    }
}

/// A unary error: `http_status` and Connect's error JSON; the status' metadata as headers (an error
/// answer has no other place for them).
pub(crate) fn unary_error(
    status: &Status,
    pool: &DescriptorPool,
    http_status: StatusCode,
) -> HttpResponse {
    let mut headers = HeaderMap::new();
    wire::add_metadata(&mut headers, status.metadata(), "");
    let body = json::to_vec(&json::connect_error(status, pool));
    wire::full_response(http_status, headers, "application/json", body)
}

/// A streaming call: enveloped messages in, enveloped messages out, then the end-stream message.
async fn streaming(
    state: Arc<State>,
    method: Arc<Method>,
    request: http::Request<Body>,
    codec: Codec,
    deadline: Deadline,
    settings: ServiceSettings,
    cut: &'static CancellationToken,
) -> HttpResponse {
    let limit = settings.max_message_size;
    let pool = state.protos.pool.clone();
    let seen = Seen::of(
        request.extensions(),
        Protocol::Connect,
        settings.peer,
        settings.observer,
    )
    .until(deadline.at());
    let (parts, body) = request.into_parts();
    let encodings =
        Encoding::parse(wire::header(&parts.headers, "connect-content-encoding")).map(|request| {
            let accept = wire::header(&parts.headers, "connect-accept-encoding");
            (request, Encoding::accepted(accept, request))
        });
    let (request_encoding, answer_encoding) = match encodings {
        Ok(e) => e,
        Err(status) => return only_end(HeaderMap::new(), codec, &status, &pool),
    };
    let incoming = envelopes(body, codec, method.desc.input(), request_encoding, limit);
    let metadata = wire::request_metadata(&parts.headers);
    let output = method.desc.output();
    let call = engine::Call {
        method,
        metadata,
        requests: engine::Requests::decoded(incoming),
        limit,
        reserve: 0,
        watch: None,
    };
    let answer = until(deadline, async {
        observe::answer(call, seen)
            .await
            .into_stream()
            .map_err(End::into_status)
    })
    .await;
    let mut headers = HeaderMap::new();
    if answer_encoding != Encoding::Identity {
        headers.insert(
            HeaderName::from_static("connect-content-encoding"),
            HeaderValue::from_static(answer_encoding.name()),
        );
    }
    let replies = match answer {
        Ok(streamed) => {
            wire::add_metadata(&mut headers, &streamed.headers, "");
            // Connect's end-stream message is a status with metadata: the end as one, OK or not.
            streamed.events.map(move |event| match event {
                Event::Message(m) => m.into_decoded(&output),
                Event::End(end) => Err((*end).into_status()),
            })
        }
        Err(status) => return only_end(headers, codec, &status, &pool),
    };
    // The deadline and the shutdown cut end the stream with an error the end-stream message carries
    // (at shutdown, the body was cut without one).
    let mut replies = Box::pin(until_deadline(replies, deadline, cut));
    let frames = async_stream::stream! {
        loop {
            let message = match replies.next().await {
                Some(Ok(message)) => message,
                Some(Err(status)) => {
                    yield Frame::data(end_stream(&status, &pool));
                    return;
                }
                None => {
                    yield Frame::data(end_stream(&Status::ok(""), &pool));
                    return;
                }
            };
            let encoded = wire::check_reply_size(&message, limit).and_then(|()| codec.encode(&message));
            match encoded {
                Ok(bytes) => {
                    let (flags, bytes) = match answer_encoding {
                        Encoding::Identity => (0, bytes),
                        gzip => (FLAG_COMPRESSED, gzip.compress(bytes)),
                    };
                    yield Frame::data(envelope::encode(flags, &bytes));
                }
                Err(status) => {
                    yield Frame::data(end_stream(&status, &pool));
                    return;
                }
            }
        }
    };
    wire::streaming_response(headers, codec.streaming_type(), frames)
}

/// A streaming answer that is only its end-stream message.
fn only_end(
    headers: HeaderMap,
    codec: Codec,
    status: &Status,
    pool: &DescriptorPool,
) -> HttpResponse {
    wire::streaming_response(
        headers,
        codec.streaming_type(),
        futures::stream::iter([Frame::data(end_stream(status, pool))]),
    )
}

/// The end-stream envelope: `{"error": {...}}` unless the status is OK, and `"metadata"` (trailers, or
/// an error's metadata) when there is any.
fn end_stream(status: &Status, pool: &DescriptorPool) -> Bytes {
    #[derive(Serialize)]
    struct EndStream {
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<json::ConnectError>,
        #[serde(skip_serializing_if = "Map::is_empty")]
        metadata: Map<String, Json>,
    }
    let end = EndStream {
        error: (status.code() != Code::Ok).then(|| json::connect_error(status, pool)),
        metadata: metadata_json(status.metadata()),
    };
    envelope::encode(FLAG_END_STREAM, &json::to_vec(&end))
}

/// Metadata as Connect writes trailers in JSON: each key to its list of values.
fn metadata_json(metadata: &MetadataMap) -> Map<String, Json> {
    let mut out = Map::new();
    for (name, value) in metadata.clone().into_headers().iter() {
        let entry = out
            .entry(name.as_str().to_string())
            .or_insert_with(|| json!([]));
        if let Json::Array(values) = entry {
            values.push(Json::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    out
}

/// The request body's envelopes as messages, read as they arrive.
fn envelopes(
    body: Body,
    codec: Codec,
    desc: MessageDescriptor,
    encoding: Encoding,
    limit: usize,
) -> engine::Decoded {
    // Every flag is read; `unwrap` refuses the ones a request may not carry.
    let reader = envelope::Reader::new(body, u8::MAX, limit);
    Box::pin(envelope::Envelopes::new(reader, move |read| match read {
        Ok(Some((flags, message))) => Some(
            unwrap(flags, message, encoding, limit).and_then(|bytes| codec.decode(&desc, &bytes)),
        ),
        Ok(None) => None,
        Err(e) => Some(Err(read_error(e, limit))),
    }))
}

/// Why a request envelope could not be read, in Connect's words.
fn read_error(e: ReadError, limit: usize) -> Status {
    match e {
        ReadError::Body(status) => Status::cancelled(format!("reading the request: {status}")),
        ReadError::TooLarge(len) => too_large(&format!("request message of {len} bytes"), limit),
        ReadError::Truncated(left) => Status::invalid_argument(format!(
            "the request ends inside an envelope ({left} bytes left over)"
        )),
        // Not asked for: every flag is accepted by the reader.
        ReadError::Flags(flags) => {
            Status::invalid_argument(format!("request envelope flags {flags:#04x}"))
        }
    }
}

/// An envelope's message, decompressed; flags a request may not carry are refused.
fn unwrap(flags: u8, message: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, Status> {
    if flags & FLAG_END_STREAM != 0 {
        return Err(Status::invalid_argument(
            "a request envelope has the end-stream flag (0x02), which only responses use",
        ));
    }
    if flags & FLAG_COMPRESSED == 0 {
        return Ok(message);
    }
    if encoding == Encoding::Identity {
        return Err(Status::invalid_argument(
            "a request envelope is flagged compressed but connect-content-encoding names none",
        ));
    }
    encoding.decompress(message, limit)
}

/// A Connect GET: `GET /pkg.Service/Method?message=…` (the router sends it here when the path is a
/// served method, or when no HTTP/JSON route has it either).
pub(crate) fn is_get_request(request: &http::Request<Body>) -> bool {
    request.method() == http::Method::GET
        && request
            .uri()
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "message"))
}

/// Serves a Connect GET (`?encoding=json|proto&message=…[&base64=1][&compression=gzip][&connect=v1]`).
pub(crate) async fn serve_get(
    state: Arc<State>,
    method: Arc<Method>,
    request: http::Request<Body>,
    settings: ServiceSettings,
) -> HttpResponse {
    let pool = state.protos.pool.clone();
    let how = "GET is for unary methods only";
    if let Some(refusal) = refuse_streaming(&method, how, StatusCode::METHOD_NOT_ALLOWED, &pool) {
        return refusal;
    }
    let query = wire::query_pairs(request.uri().query());
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let codec = match param("encoding") {
        Some("json") => Codec::Json,
        Some("proto") => Codec::Proto,
        other => {
            let status = Status::unimplemented(format!(
                "encoding '{}' is not supported (json or proto)",
                other.unwrap_or_default()
            ));
            return unary_error(&status, &pool, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    };
    if let Some(version) = param("connect").filter(|v| *v != "v1") {
        let status = Status::invalid_argument(format!("connect={version} is not supported (v1)"));
        return unary_error(&status, &pool, StatusCode::BAD_REQUEST);
    }
    let limit = settings.max_message_size;
    let payload = (|| {
        let message = param("message").unwrap_or_default();
        let raw: Bytes = if param("base64") == Some("1") {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(message.trim_end_matches('='))
                .map_err(|e| Status::invalid_argument(format!("message is not base64: {e}")))?
                .into()
        } else {
            Bytes::copy_from_slice(message.as_bytes())
        };
        if raw.len() > limit {
            return Err(too_large("request", limit));
        }
        let encoding = Encoding::parse(param("compression"))?;
        Ok::<_, Status>((encoding.decompress(raw, limit)?, encoding))
    })();
    let deadline = match Deadline::connect(request.headers()) {
        Ok(d) => d,
        Err(status) => return unary_error(&status, &pool, StatusCode::BAD_REQUEST),
    };
    let seen = Seen::of(
        request.extensions(),
        Protocol::Connect,
        settings.peer,
        settings.observer,
    )
    .until(deadline.at());
    unary(
        state,
        method,
        request.headers(),
        payload,
        codec,
        deadline,
        limit,
        seen,
    )
    .await
}
