//! Everything beside plain gRPC on the user's methods: server reflection and health (boxed tower
//! services chosen by path), and the other protocols on the same port, chosen by content type:
//! Connect and HTTP/JSON transcoding. gRPC-Web (translated to gRPC) and CORS are `web`, a layer that
//! `server` puts around everything.

pub mod connect;
pub mod health;
pub mod json;
pub mod reflection;
pub mod transcode;
pub mod web;
pub mod wire;

use std::convert::Infallible;

/// The built-in health service. It answers whatever the protos say: a vendored copy of
/// `grpc/health/v1/health.proto` (grpc-proto ships one) is compiled, but its service is not
/// served, with a warning (see `state::State::builtin_copies`).
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The built-in reflection services, which take precedence over copies in the protos as health
/// does, unless reflection is turned off (then a copy is served like any other service).
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

use tower::util::BoxCloneSyncService;

/// A boxed HTTP service, the common shape of every front.
pub type HttpService = BoxCloneSyncService<
    http::Request<axum::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// How a request asks to be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `application/grpc…` (gRPC-Web arrives here already translated).
    Grpc,
    /// `application/json`, `application/proto`, `application/connect+…` on `POST /pkg.Service/Method`.
    Connect,
    /// Anything else: HTTP/JSON transcoding by `google.api.http` routes, and Connect GET
    /// (`GET /pkg.Service/Method?encoding=…&message=…`), which `transcode::serve` hands to Connect.
    Http,
}

impl Protocol {
    pub fn of(request: &http::Request<axum::body::Body>) -> Protocol {
        let content_type =
            wire::header(request.headers(), http::header::CONTENT_TYPE).unwrap_or_default();
        if is_grpc_content_type(content_type) {
            return Protocol::Grpc;
        }
        let connect_type = content_type.starts_with("application/connect+")
            || content_type.starts_with("application/json")
            || content_type.starts_with("application/proto");
        if request.method() == http::Method::POST
            && connect_type
            && is_method_path(request.uri().path())
        {
            Protocol::Connect
        } else {
            Protocol::Http
        }
    }
}

/// gRPC's own content types: `application/grpc`, or it followed by `+subtype` or `;parameters`
/// (grpc-go's `ContentSubtype`). `application/grpcx` only looks like one: it is foreign (415).
pub fn is_grpc_content_type(content_type: &str) -> bool {
    content_type
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// `/pkg.Service/Method`: two segments, the first dotted.
fn is_method_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(s), Some(m), None) if s.contains('.') && !m.is_empty())
}
