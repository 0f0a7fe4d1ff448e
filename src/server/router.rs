//! The one router: every request's protocol is told here, once, from its method, path and content
//! type, and the request goes to exactly one protocol module (or a built-in service), with what
//! every protocol checks done first (the header list size).
//!
//! | request | goes to |
//! |---|---|
//! | `application/grpc-web[-text][+proto]` | [`grpc_web`], which calls back into the gRPC branch here |
//! | `application/grpc[+…\|;…]` over HTTP/2 | the gRPC branch: [`grpc::admit`], then the user's method ([`grpc::serve`]) or a built-in service |
//! | `POST /pkg.Service/Method` with a Connect content type | [`connect::serve`] (a user's method, or a built-in through its bridge); [`http_json`] when only a route has the path |
//! | `GET /pkg.Service/Method?message=…` | [`connect::serve_get`] when the method is served or no route has the path |
//! | `GET /openapi.json` no route of the user's has | the OpenAPI document of the routes ([`OPENAPI_PATH`]) |
//! | `GET /metrics` | the Prometheus text of [`metrics`], unless a user's HTTP route has that path |
//! | anything else | [`http_json::serve`] |
//!
//! Not served: another `application/grpc-web…` type (415), gRPC over HTTP/1.1 (505: its status
//! travels in trailers, which HTTP/1.1 cannot carry here, so a client would read every answer as a
//! success; grpc-go refuses it the same way).
//!
//! The user's methods are looked up once, here, and handed to the protocol; their protos win over
//! the built-in services if they define them. The admin API's methods are in the same table (the
//! state puts them there, see `state::NativeService`), so they are found by the same lookup and
//! served as a user's method is. A call still waiting for its answer at the end of the
//! shutdown grace period ends with UNAVAILABLE in its protocol's error form.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::net::SocketAddr;

use http::header;
use http::{StatusCode, Version};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tower::ServiceExt as _;

use crate::builtin::{health, HttpService};
use crate::metrics;
use crate::observe::{FromGrpcWeb, Peer};
use crate::protocol::connect::{self, Codec, Framing, Target};
use crate::protocol::deadline::{bounded, shutdown_status, Deadline};
use crate::protocol::grpc_web::{self, GrpcWeb};
use crate::protocol::{
    grpc, http_json, json, wire, Body, HttpResponse, ResponseFuture, ServiceSettings,
};
use crate::state::{Registry, State};

/// The protocol a request speaks, as told from its method, path and content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// gRPC (a gRPC-Web request arrives as one, translated).
    Grpc,
    GrpcWeb,
    /// Connect's `POST`: the framing and codec its content type names, `None` for one that only
    /// looks like Connect's (`application/jsonx`), which Connect refuses.
    Connect(Option<(Framing, Codec)>),
    /// A `GET` that Connect or HTTP/JSON may answer (which one depends on the path).
    ConnectGet,
    HttpJson,
    /// Answered at once with this HTTP status.
    Refused(StatusCode),
}

impl Kind {
    fn of(request: &http::Request<Body>) -> Kind {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Some(rest) = content_type.strip_prefix("application/grpc") {
            if rest.starts_with("-web") {
                // tonic-web speaks protobuf only, and matches its types exactly.
                return match grpc_web::CONTENT_TYPES.contains(&content_type) {
                    true => Kind::GrpcWeb,
                    false => Kind::Refused(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                };
            }
            // `application/grpc`, or it followed by `+subtype` or `;parameters` (grpc-go's
            // `ContentSubtype`); `application/grpcx` only looks like one, and is foreign.
            if rest.is_empty() || rest.starts_with(['+', ';']) {
                return match request.version() < Version::HTTP_2 {
                    true => Kind::Refused(StatusCode::HTTP_VERSION_NOT_SUPPORTED),
                    false => Kind::Grpc,
                };
            }
        }
        let connect_type = content_type.starts_with("application/connect+")
            || content_type.starts_with("application/json")
            || content_type.starts_with("application/proto");
        let method = request.method();
        if method == http::Method::POST && connect_type && is_method_path(request.uri().path()) {
            Kind::Connect(connect::shape(content_type))
        } else if connect::is_get_request(request) {
            Kind::ConnectGet
        } else {
            Kind::HttpJson
        }
    }
}

/// Where the OpenAPI document of the HTTP/JSON routes is served, unless a route of the user's
/// takes the path.
pub(crate) const OPENAPI_PATH: &str = "/openapi.json";

/// The OpenAPI document of the state's routes: made on the blocking pool the first time it is asked
/// for (seconds on a large tree), then kept with the state, gzipped (a large tree's document is
/// tens of megabytes, a quarter of that gzipped). Sent gzipped to a client that accepts it
/// (`accept-encoding`), else inflated as it is sent, a chunk at a time.
fn openapi(state: Arc<State>, accept: Option<&str>) -> ResponseFuture {
    use crate::protocol::compression::Encoding;
    use crate::protos::http_routes::openapi;
    let gzip = Encoding::accepted(accept, Encoding::Identity) == Encoding::Gzip;
    Box::pin(async move {
        let tables = state.route_tables();
        let made = state
            .openapi
            .get_or_try_init(|| async move {
                let started = std::time::Instant::now();
                let document = tokio::task::spawn_blocking(move || {
                    let tables: Vec<&_> = tables.iter().map(|t| &**t).collect();
                    let document = openapi::document(&tables, &openapi::Info::default());
                    let plain = document.len();
                    let gzipped = Encoding::Gzip.compress(document.into_bytes());
                    // What making it took beyond the document itself (each file's comments, the
                    // pieces) goes back to the system, as after a load.
                    alloc_meter::release_free_memory();
                    (plain, gzipped)
                })
                .await?;
                let (plain, gzipped) = document;
                tracing::debug!(bytes = plain, gzipped = gzipped.len(), elapsed = ?started.elapsed(), "OpenAPI document made");
                Ok::<_, tokio::task::JoinError>(bytes::Bytes::from(gzipped))
            })
            .await
            .cloned();
        Ok(match made {
            Ok(document) => {
                let body = match gzip {
                    true => Body::new(http_body_util::Full::new(document)),
                    false => inflated(document),
                };
                let mut response = http::Response::new(body);
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                headers.insert(
                    header::VARY,
                    http::HeaderValue::from_static("accept-encoding"),
                );
                if gzip {
                    headers.insert(
                        header::CONTENT_ENCODING,
                        http::HeaderValue::from_static("gzip"),
                    );
                }
                response
            }
            Err(e) => http_json::error(
                &Status::internal(format!("the OpenAPI document could not be made: {e}")),
                &state.protos.pool,
                http::HeaderMap::new(),
            ),
        })
    })
}

/// The plain text of a gzipped document, inflated on the blocking pool as the body is sent: a
/// chunk at a time, never the whole document at once.
fn inflated(gzipped: bytes::Bytes) -> Body {
    const CHUNK: usize = 64 << 10;
    let (chunks, body) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut inflate = flate2::read::GzDecoder::new(&gzipped[..]);
        loop {
            let mut chunk = vec![0; CHUNK];
            let sent = match std::io::Read::read(&mut inflate, &mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    chunks.blocking_send(Ok(chunk.into()))
                }
                Err(e) => {
                    let _ = chunks.blocking_send(Err(e));
                    return;
                }
            };
            // The client went away.
            if sent.is_err() {
                return;
            }
        }
    });
    let frames = futures::stream::unfold(body, |mut body| async move {
        let chunk = body.recv().await?;
        Some((chunk.map(http_body::Frame::data), body))
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

/// `/pkg.Service/Method`: two segments, the first dotted.
fn is_method_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(s), Some(m), None) if s.contains('.') && !m.is_empty())
}

/// What the router needs of the server: the state, the settings, the shutdown cut. Cheap to clone
/// (tonic-web and the CORS layer wrap clones of it).
#[derive(Clone)]
struct Core {
    registry: Arc<Registry>,
    settings: ServiceSettings,
    /// Cancelled when the shutdown grace period is over. `'static` so that a call borrows it: a
    /// clone per call would take the token's lock twice.
    cut: &'static CancellationToken,
}

/// Routes every request of the server.
#[derive(Clone)]
pub(crate) struct Router {
    core: Core,
    grpc_web: GrpcWeb<GrpcBranch>,
}

impl Router {
    pub(crate) fn new(
        registry: Arc<Registry>,
        settings: ServiceSettings,
        cut: &'static CancellationToken,
    ) -> Self {
        let core = Core {
            registry,
            settings,
            cut,
        };
        Router {
            grpc_web: GrpcWeb::new(GrpcBranch(core.clone())),
            core,
        }
    }

    /// The answer to one request from `peer` (`&self`: the server calls one shared router, not a
    /// clone).
    pub(crate) fn answer(
        &self,
        request: http::Request<Body>,
        peer: Option<SocketAddr>,
    ) -> ResponseFuture {
        let kind = Kind::of(&request);
        match kind {
            Kind::Refused(status) => return refused(status),
            // Checked (and the headers counted) on the translated request, in the gRPC branch.
            Kind::GrpcWeb => {
                let mut request = request;
                request.extensions_mut().insert(FromGrpcWeb(peer));
                return self.grpc_web.serve(request);
            }
            Kind::Grpc => return self.core.grpc(request, peer),
            _ => {}
        }
        let core = &self.core;
        let settings = ServiceSettings {
            peer,
            ..core.settings
        };
        if let Some(status) = headers_too_large(&request, settings.max_header_list_size) {
            return ready(error_answer(kind, &status));
        }
        let state = core.registry.current();
        let path = request.uri().path();
        if path == OPENAPI_PATH
            && request.method() == http::Method::GET
            && !http_json::has_route(&state, request.method(), path)
        {
            let accept = request.headers().get(header::ACCEPT_ENCODING);
            return openapi(state, accept.and_then(|v| v.to_str().ok()));
        }
        // What a Connect request's path names: the user's method, else a built-in service, else an
        // HTTP/JSON route that looks like a method path (`POST /v1.files/upload`, or `/{x=**}`
        // taking a GET with a `message` parameter), else nothing (NOT_FOUND, in Connect's words).
        let target = match state.methods.get(path) {
            Some(method) => Target::Method(method.clone()),
            None if kind == Kind::HttpJson && is_metrics(&request, &state) => {
                return ready(metrics_answer())
            }
            None if kind == Kind::HttpJson => return self.http_json(state, request, settings),
            None => match builtin(&core.registry, &state, path) {
                // Connect GET is for the user's unary methods only.
                Some(service) if kind != Kind::ConnectGet => Target::Builtin(service),
                _ if http_json::has_route(&state, request.method(), path) => {
                    return self.http_json(state, request, settings)
                }
                _ => {
                    let status = unknown_path(&state, path);
                    let pool = &state.protos.pool;
                    return ready(connect::unary_error(&status, pool, StatusCode::NOT_FOUND));
                }
            },
        };
        match (kind, target) {
            (Kind::Connect(shape), target) => self.connect(connect::serve(
                state, target, shape, request, settings, core.cut,
            )),
            (_, Target::Method(method)) if kind == Kind::ConnectGet => {
                self.connect(connect::serve_get(state, method, request, settings))
            }
            _ => self.http_json(state, request, settings),
        }
    }

    /// `status` as the answer to `request`, in the protocol it speaks (its error form), without
    /// serving it: what the origin guard in front of the router (`cors.rs`) answers. A gRPC-Web
    /// request gets a trailers-only answer of its own content type (grpc-status in the headers).
    pub(crate) fn refusal(request: &http::Request<Body>, status: &Status) -> HttpResponse {
        let kind = Kind::of(request);
        let mut response = error_answer(kind, status);
        if kind == Kind::GrpcWeb {
            if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.clone());
            }
        }
        response
    }

    /// A Connect answer, unless the shutdown cut comes first (Connect's own deadline is inside it).
    fn connect(
        &self,
        answer: impl Future<Output = HttpResponse> + Send + 'static,
    ) -> ResponseFuture {
        let on_cut = || error_answer(Kind::Connect(None), &shutdown_status());
        Box::pin(bounded(
            answer,
            Deadline::NONE,
            self.core.cut,
            on_cut,
            on_cut,
        ))
    }

    fn http_json(
        &self,
        state: Arc<State>,
        request: http::Request<Body>,
        settings: ServiceSettings,
    ) -> ResponseFuture {
        let core = &self.core;
        let answer = http_json::serve(state, request, settings, core.cut);
        let on_cut = || error_answer(Kind::HttpJson, &shutdown_status());
        Box::pin(bounded(answer, Deadline::NONE, core.cut, on_cut, on_cut))
    }
}

impl Core {
    /// A gRPC request (or a gRPC-Web one, translated): the user's method, else a built-in service.
    fn grpc(&self, request: http::Request<Body>, peer: Option<SocketAddr>) -> ResponseFuture {
        if let Some(status) = headers_too_large(&request, self.settings.max_header_list_size) {
            return ready(grpc::error(&status));
        }
        let deadline = match grpc::admit(&request) {
            Ok(deadline) => deadline,
            Err(response) => return ready(response),
        };
        let state = self.registry.current();
        let path = request.uri().path();
        // The user's methods first (one lookup on the hot path), then the built-in services.
        let Some(method) = state.methods.get(path).cloned() else {
            if let Some(service) = builtin(&self.registry, &state, path) {
                return Box::pin(service.oneshot(request));
            }
            return ready(grpc::error(&unknown_path(&state, path)));
        };
        let settings = ServiceSettings {
            peer,
            ..self.settings
        };
        grpc::serve(method, request, deadline, settings, self.cut)
    }
}

/// The gRPC branch as a service, for tonic-web to call with the requests it translated.
#[derive(Clone)]
struct GrpcBranch(Core);

impl tower::Service<http::Request<Body>> for GrpcBranch {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Its client is in the `FromGrpcWeb` the router put in.
        self.0.grpc(request, None)
    }
}

/// For the CORS layer, which wraps the router.
impl tower::Service<http::Request<Body>> for Router {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Reached through the CORS layer, which keeps the client in the request.
        let peer = request.extensions().get::<Peer>().and_then(|p| p.0);
        self.answer(request, peer)
    }
}

fn ready(response: HttpResponse) -> ResponseFuture {
    Box::pin(futures::future::ready(Ok(response)))
}

fn refused(status: StatusCode) -> ResponseFuture {
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = status;
    ready(response)
}

/// A status as an answer that ends the call, in the request's protocol: Connect's error JSON, or
/// HTTP/JSON's `google.rpc.Status` (gRPC's are written in the gRPC branch). The status has no
/// details, so no pool is needed to write them.
fn error_answer(kind: Kind, status: &Status) -> HttpResponse {
    let pool = prost_reflect::DescriptorPool::global;
    match kind {
        Kind::Grpc | Kind::GrpcWeb | Kind::Refused(_) => grpc::error(status),
        Kind::Connect(_) => connect::unary_error(status, &pool(), json::http_status(status.code())),
        Kind::ConnectGet | Kind::HttpJson => {
            http_json::error(status, &pool(), http::HeaderMap::new())
        }
    }
}

/// `RESOURCE_EXHAUSTED` for a request whose headers are over `limit` (as HTTP/2 counts them: name,
/// value and 32 bytes each, the pseudo-headers included). h2 would refuse them with a bare HTTP 431
/// that a gRPC client reports as an unknown error; its limit is set above ours (4×) so that the
/// check is here.
fn headers_too_large<B>(request: &http::Request<B>, limit: usize) -> Option<Status> {
    const ENTRY: usize = 32;
    let uri = request.uri();
    let mut size = ":method".len() + request.method().as_str().len() + ENTRY;
    size += ":path".len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + ENTRY;
    if let Some(authority) = uri.authority() {
        size += ":authority".len() + authority.as_str().len() + ENTRY;
    }
    if let Some(scheme) = uri.scheme_str() {
        size += ":scheme".len() + scheme.len() + ENTRY;
    }
    for (name, value) in request.headers() {
        size += name.as_str().len() + value.len() + ENTRY;
    }
    (size > limit).then(|| {
        Status::resource_exhausted(format!(
            "request headers of {size} bytes are over the server's limit of {limit} \
             (--max-header-size)"
        ))
    })
}

/// Reflection and health, when `path` is theirs. The user's protos win if they define these services.
fn builtin(registry: &Registry, state: &State, path: &str) -> Option<HttpService> {
    if state.methods.contains_key(path) {
        return None;
    }
    if path.starts_with(health::PREFIX) {
        return Some(registry.health.service.clone());
    }
    state.reflection()?.route(path).cloned()
}

/// `GET /metrics`, with metrics on, when no `GET` route of the user's protos matches that path:
/// theirs wins, as their services win over the built-in ones, since a mock answers what the API
/// it stands in for declares.
fn is_metrics(request: &http::Request<Body>, state: &State) -> bool {
    let path = request.uri().path();
    path == metrics::PATH
        && request.method() == http::Method::GET
        && metrics::global().enabled()
        && !matches!(
            state.routes.find(request.method(), path),
            crate::protos::http_routes::Lookup::Found(..)
        )
}

/// The Prometheus text of every counter.
fn metrics_answer() -> HttpResponse {
    let text = metrics::global().render();
    wire::full_response(
        StatusCode::OK,
        http::HeaderMap::new(),
        metrics::CONTENT_TYPE,
        text.into_bytes(),
    )
}

/// `UNIMPLEMENTED`, naming what was asked for and what is there.
fn unknown_path(state: &State, path: &str) -> Status {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Status::unimplemented(format!(
            "'{path}' is not a gRPC method path (/package.Service/Method)"
        ));
    };
    match state.protos.pool.get_service_by_name(service) {
        Some(s) => {
            let names: Vec<String> = s.methods().map(|m| m.name().to_string()).collect();
            Status::unimplemented(format!(
                "service {service} has no method '{method}' (methods: {})",
                names.join(", ")
            ))
        }
        None => {
            let names: Vec<String> = state
                .protos
                .pool
                .services()
                .map(|s| s.full_name().to_string())
                .collect();
            Status::unimplemented(format!(
                "unknown service '{service}' (services: {})",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, path: &str, content_type: &str, version: Version) -> Kind {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .version(version)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::empty())
            .unwrap();
        Kind::of(&request)
    }

    #[test]
    fn each_request_is_told_its_protocol_once() {
        let h2 = Version::HTTP_2;
        let h1 = Version::HTTP_11;
        assert_eq!(kind("POST", "/a.S/M", "application/grpc", h2), Kind::Grpc);
        assert_eq!(
            kind("POST", "/a.S/M", "application/grpc+proto", h2),
            Kind::Grpc
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/grpc", h1),
            Kind::Refused(StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/grpc-web-text", h1),
            Kind::GrpcWeb
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/grpc-web+json", h1),
            Kind::Refused(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/json", h1),
            Kind::Connect(Some((Framing::Unary, Codec::Json)))
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/connect+proto", h2),
            Kind::Connect(Some((Framing::Streaming, Codec::Proto)))
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/jsonx", h1),
            Kind::Connect(None)
        );
        assert_eq!(
            kind("POST", "/v1/things", "application/json", h1),
            Kind::HttpJson
        );
        assert_eq!(
            kind("POST", "/a.S/M", "application/grpcx", h2),
            Kind::HttpJson
        );
        assert_eq!(kind("GET", "/a.S/M?message=e30", "", h1), Kind::ConnectGet);
        assert_eq!(kind("GET", "/v1/things/1", "", h1), Kind::HttpJson);
    }
}
