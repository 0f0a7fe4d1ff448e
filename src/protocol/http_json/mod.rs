//! HTTP/JSON transcoding from `google.api.http` annotations, as grpc-gateway and Envoy do it, in
//! process: the route a request matches (`protos::http_routes` and its `pattern`) names the method,
//! the request message is built from path, query and body ([`request`]), and the reply is written as
//! proto3 JSON — the whole message or its `response_body` field; a server stream as newline-delimited
//! JSON.
//! Errors are the HTTP status of their code (google.rpc.Code's mapping) with a `google.rpc.Status`
//! JSON body. A client stream reads the body as a sequence of JSON values, one message each.
//!
//! A call has a deadline when it sends `Grpc-Timeout`, as grpc-gateway's runtime honours it: past it,
//! the answer is HTTP 504 with DEADLINE_EXCEEDED (or, once a stream has started, its error line).
//!
//! The route table itself is built with the protos (`protos::http_routes`), below the state that
//! holds it; this module is the mux over it ([`serve`]), the request message ([`request`]) and the
//! reply ([`marshal`]).

mod marshal;
mod request;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use http_body::Frame;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub(crate) use self::marshal::error;
use self::marshal::{reply_json, ErrorLine};
use super::compression::Encoding;
use super::deadline::{until, until_deadline, Deadline};
use super::wire;
use super::{json, Body, HttpResponse, ServiceSettings};
use crate::engine::{self, End, Event};
use crate::observe::{self, Protocol, Seen};
use crate::protos::http_routes::{Bindings, BodyRule, Lookup, Route};
use crate::state::State;

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

/// What a call past its `Grpc-Timeout` answers.
const DEADLINE_PASSED: &str = "Grpc-Timeout elapsed";

/// Serves one plain HTTP request by the route it matches.
pub async fn serve(
    state: Arc<State>,
    request: http::Request<Body>,
    settings: ServiceSettings,
    cut: &'static CancellationToken,
) -> HttpResponse {
    let path = request.uri().path().to_string();
    match state.route(request.method(), &path) {
        Lookup::Found(route, bindings) => {
            let pool = state.protos.pool.clone();
            call(&state, route, bindings, request, settings, cut)
                .await
                .unwrap_or_else(|status| error(&status, &pool, HeaderMap::new()))
        }
        Lookup::WrongMethod(allowed) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                headers.insert(http::header::ALLOW, v);
            }
            let status = Status::unimplemented(format!(
                "{} {path} has no route; this path answers {}",
                request.method(),
                allowed.join(", ")
            ));
            let mut response = error(&status, &state.protos.pool, headers);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
        }
        // A method's own path with a content type no protocol here speaks: 415, as gRPC asks, naming
        // what is spoken (a 404 would read as if the method did not exist).
        Lookup::NotFound
            if request.method() == http::Method::POST && state.methods.contains_key(&path) =>
        {
            let status = Status::invalid_argument(format!(
                "POST {path}: content type {:?} is not served here; use application/grpc (gRPC), \
                 application/grpc-web (gRPC-Web), application/json or application/proto (Connect)",
                wire::header(request.headers(), http::header::CONTENT_TYPE).unwrap_or("")
            ));
            let mut response = error(&status, &state.protos.pool, HeaderMap::new());
            *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            response
        }
        Lookup::NotFound => {
            let status = Status::not_found(format!(
                "no HTTP route for {} {path} ({} google.api.http routes loaded; \
                 Connect and gRPC clients call POST /package.Service/Method)",
                request.method(),
                state.routes.len()
            ));
            error(&status, &state.protos.pool, HeaderMap::new())
        }
    }
}

/// Whether some route has this path, with this HTTP method or another (the router sends a request
/// that could be Connect's here when a route has its path, so that the route answers or says 405).
pub(crate) fn has_route(state: &State, method: &http::Method, path: &str) -> bool {
    !matches!(state.route(method, path), Lookup::NotFound)
}

async fn call(
    state: &Arc<State>,
    route: &Route,
    bindings: Bindings,
    request: http::Request<Body>,
    settings: ServiceSettings,
    cut: &'static CancellationToken,
) -> Result<HttpResponse, Status> {
    let limit = settings.max_message_size;
    let method = state
        .methods
        .get(&route.grpc_path)
        .cloned()
        .ok_or_else(|| {
            Status::internal(format!("route {} names no served method", route.pattern))
        })?;
    let seen = Seen::of(
        request.extensions(),
        Protocol::HttpJson,
        settings.peer,
        settings.observer,
    );
    let (parts, body) = request.into_parts();
    let deadline = Deadline::http(&parts.headers)?;
    let seen = seen.until(deadline.at());
    let query = wire::query_pairs(parts.uri.query());
    // A route without `body` ignores the request body, as grpc-gateway does.
    let incoming: engine::Decoded = if matches!(route.body, BodyRule::None) {
        let message = request::build(route, None, &bindings, &query)?;
        Box::pin(futures::stream::iter([Ok(message)]))
    } else {
        let body = wire::read_body(body, limit).await?;
        let body = Encoding::parse(wire::header(&parts.headers, http::header::CONTENT_ENCODING))?
            .decompress(body, limit)?;
        crate::codec::decoded::check_json(method.desc.input().full_name(), &body)?;
        let mut values = JsonValues::new(body);
        if method.client_streaming() {
            // One message per value, built as the method reads them.
            let route = route.clone();
            Box::pin(futures::stream::unfold(Some(values), move |values| {
                let route = route.clone();
                let bindings = bindings.clone();
                let query = query.clone();
                async move {
                    let mut values = values?;
                    match values.next()? {
                        Ok(value) => {
                            let message = request::build(&route, Some(value), &bindings, &query);
                            let rest = message.is_ok().then_some(values);
                            Some((message, rest))
                        }
                        Err(status) => Some((Err(status), None)),
                    }
                }
            }))
        } else {
            let first = values.next().transpose()?;
            if values.next().transpose()?.is_some() {
                return Err(Status::invalid_argument(
                    "the request body holds more than one JSON value",
                ));
            }
            let message = request::build(route, first, &bindings, &query)?;
            Box::pin(futures::stream::iter([Ok(message)]))
        }
    };
    let metadata = wire::request_metadata(&parts.headers);
    let output = method.desc.output();
    let server_streaming = method.server_streaming();
    let call = engine::Call {
        method,
        metadata,
        requests: engine::Requests::decoded(incoming),
        limit,
        reserve: 0,
        watch: None,
    };
    // Dropping the answer at the deadline stops what it runs (a delay, a script).
    until(deadline, DEADLINE_PASSED, async {
        let reply = observe::answer(call, seen).await;
        if server_streaming {
            return stream_reply(state, route, reply, &output, limit, deadline, cut).await;
        }
        let reply = wire::single_reply(reply, limit).await?;
        let message = reply.message.into_decoded(&output)?;
        let body = reply_json(&message, route.response_body.as_ref())?;
        let mut headers = HeaderMap::new();
        wire::add_metadata(&mut headers, &reply.headers, "");
        wire::add_metadata(&mut headers, &reply.trailers, "");
        Ok(wire::full_response(StatusCode::OK, headers, JSON, body))
    })
    .await
}

/// The JSON values of a body, read one at a time (none for an empty body).
struct JsonValues {
    body: Bytes,
    offset: usize,
}

impl JsonValues {
    fn new(body: Bytes) -> JsonValues {
        JsonValues { body, offset: 0 }
    }

    /// The next value; `None` at the end of the body. After an error the rest is not read.
    fn next(&mut self) -> Option<Result<Json, Status>> {
        let rest = self.body.get(self.offset..)?;
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Json>();
        let value = values.next();
        self.offset = match value {
            Some(Ok(_)) => self.offset + values.byte_offset(),
            _ => self.body.len() + 1,
        };
        Some(
            value?.map_err(|e| {
                Status::invalid_argument(format!("the request body is not JSON: {e}"))
            }),
        )
    }
}

/// A server stream as newline-delimited JSON. An error before the first message is an HTTP error;
/// a later one (the deadline, the shutdown cut among them) is a last line
/// `{"error": <google.rpc.Status>}`. Trailers become HTTP trailers.
async fn stream_reply(
    state: &Arc<State>,
    route: &Route,
    reply: engine::Reply,
    output: &prost_reflect::MessageDescriptor,
    limit: usize,
    deadline: Deadline,
    cut: &'static CancellationToken,
) -> Result<HttpResponse, Status> {
    let streamed = reply.into_stream().map_err(End::into_status)?;
    let metadata = streamed.headers;
    // The deadline and the shutdown cut end the stream with an error event.
    let mut events = Box::pin(
        until_deadline(streamed.events.map(Ok), deadline, cut)
            .map(|event| event.unwrap_or_else(|status| Event::End(Box::new(status.into())))),
    );
    let first = match events.next().await {
        Some(Event::End(end)) if !end.is_ok() => {
            return Err(wire::with_headers((*end).into_status(), &metadata))
        }
        first => first,
    };
    let pool = state.protos.pool.clone();
    let response_body = route.response_body.clone();
    let output = output.clone();
    let lines = async_stream::stream! {
        let mut next = first;
        while let Some(event) = next {
            let line = match event {
                Event::Message(m) => m.into_decoded(&output).and_then(|m| {
                    wire::check_reply_size(&m, limit)?;
                    reply_json(&m, response_body.as_ref())
                }),
                Event::End(end) if end.is_ok() => {
                    let mut trailers = HeaderMap::new();
                    wire::add_metadata(&mut trailers, &end.trailers, "");
                    if !trailers.is_empty() {
                        yield Frame::trailers(trailers);
                    }
                    return;
                }
                Event::End(end) => Err((*end).into_status()),
            };
            match line {
                Ok(mut bytes) => {
                    bytes.push(b'\n');
                    yield Frame::data(Bytes::from(bytes));
                }
                Err(status) => {
                    let mut bytes = json::to_vec(&ErrorLine { error: json::rpc_status(&status, &pool) });
                    bytes.push(b'\n');
                    yield Frame::data(Bytes::from(bytes));
                    return;
                }
            }
            next = events.next().await;
        }
    };
    let mut headers = HeaderMap::new();
    wire::add_metadata(&mut headers, &metadata, "");
    Ok(wire::streaming_response(headers, NDJSON, lines))
}
