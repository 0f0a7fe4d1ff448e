//! CORS (`--cors-origin`), a layer around the router and so around every protocol on the port:
//! preflights are answered here, and answers to an allowed origin carry
//! `access-control-allow-origin` and expose the gRPC status headers plus every header the answer
//! has (handler `headers` included). A request from an origin that is not allowed gets `403`.
//! Requests without an `Origin` header skip all of this.
//!
//! The admin API is guarded here too (`--admin-cors-origin`): a request to an admin path that
//! carries an `Origin` the flag does not name is answered PERMISSION_DENIED in its protocol's form
//! ([`Router::refusal`]) before anything is routed, preflights included, whatever `--cors-origin`
//! says (with CORS off a page can still *send* a simple `text/plain` POST; it only cannot read the
//! answer). Only browsers send `Origin`, so curl, grpcio, grpcurl and buf curl are not affected. It
//! sits in this layer, not further in, because the `Origin` lookup is already made here for every
//! request (a request without one pays nothing more) and because a preflight never reaches the
//! router. Not even the server's own origin passes: protodrop serves no page that could call it,
//! and a `Host` that matches the `Origin` is what a DNS-rebinding page sends.

use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
use futures::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, Cors, CorsLayer, ExposeHeaders};

use super::router::Router;
use crate::admin;
use crate::observe::Peer;
use crate::protocol::{Body, ResponseFuture};

/// Response headers a browser may always read; the others must be exposed.
const SAFELISTED: [&str; 7] = [
    "cache-control",
    "content-language",
    "content-length",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
];

/// How long a browser may cache a preflight answer (Chromium caps it at 2 hours).
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// Which origins' pages may call the server (`--cors-origin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CorsOrigins {
    /// No CORS at all: browsers on other origins cannot read any answer.
    Off,
    /// Any origin (`*`): the development default.
    Any,
    /// Exactly these origins (`scheme://host[:port]`, lower case).
    List(Vec<String>),
}

impl CorsOrigins {
    /// From the values of `--cors-origin` (each already checked by [`parse_origin`]): `*` alone is any
    /// origin, `none` alone turns CORS off, anything else is a list of origins.
    pub(crate) fn from_flags(values: &[String]) -> Result<Self, String> {
        let special = |v: &String| v == "*" || v == "none";
        match values {
            [] => Ok(Self::Any),
            [v] if v == "*" => Ok(Self::Any),
            [v] if v == "none" => Ok(Self::Off),
            _ if values.iter().any(special) => Err(format!(
                "--cors-origin: '*' and 'none' cannot be combined with other values (got: {})",
                values.join(", ")
            )),
            _ => Ok(Self::List(values.to_vec())),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.allows_bytes(origin.as_bytes())
    }

    fn allows_str(&self, origin: &str) -> bool {
        self.allows_bytes(origin.as_bytes())
    }

    fn allows_bytes(&self, origin: &[u8]) -> bool {
        match self {
            Self::Off => false,
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o.as_bytes() == origin),
        }
    }
}

/// What `--cors-origin` and `--admin-cors-origin` allow together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CorsPolicy {
    /// Origins whose pages may call the server's methods.
    pub(crate) calls: CorsOrigins,
    /// Origins whose pages may call the admin API as well (`Off`, none, by default).
    pub(crate) admin: CorsOrigins,
}

impl CorsPolicy {
    /// From the values of both flags (each already checked by [`parse_origin`]). An admin origin
    /// must also pass `--cors-origin`, or its pages could send calls but never read an answer.
    pub(crate) fn from_flags(calls: &[String], admin: &[String]) -> Result<Self, String> {
        let calls = CorsOrigins::from_flags(calls)?;
        let admin = match admin {
            [] => CorsOrigins::Off,
            [v] if v == "*" => CorsOrigins::Any,
            _ if admin.iter().any(|v| v == "*" || v == "none") => {
                return Err(format!(
                    "--admin-cors-origin: '*' stands alone and 'none' is the default (got: {})",
                    admin.join(", ")
                ))
            }
            _ => CorsOrigins::List(admin.to_vec()),
        };
        let refused: Vec<&str> = match &admin {
            CorsOrigins::Off => Vec::new(),
            CorsOrigins::Any if calls != CorsOrigins::Any => vec!["*"],
            CorsOrigins::Any => Vec::new(),
            CorsOrigins::List(list) => list
                .iter()
                .filter(|o| !calls.allows_str(o))
                .map(String::as_str)
                .collect(),
        };
        if !refused.is_empty() {
            return Err(format!(
                "--admin-cors-origin {} is not allowed by --cors-origin ({calls}): add it there too",
                refused.join(", ")
            ));
        }
        Ok(CorsPolicy { calls, admin })
    }
}

impl std::fmt::Display for CorsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.admin {
            CorsOrigins::Off => write!(f, "{}; admin API: no origin", self.calls),
            admin => write!(f, "{}; admin API: {admin}", self.calls),
        }
    }
}

impl std::fmt::Display for CorsOrigins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Any => f.write_str("any origin"),
            Self::List(list) => f.write_str(&list.join(", ")),
        }
    }
}

/// One `--cors-origin` value: `*`, `none`, `null`, or an origin `scheme://host[:port]` (no path; a
/// trailing `/` is dropped; scheme and host are lower-cased, as browsers send them).
pub(crate) fn parse_origin(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v == "*" || v == "none" || v == "null" {
        return Ok(v.to_string());
    }
    let v = v.strip_suffix('/').unwrap_or(v);
    let bad = |why: &str| {
        format!("'{value}' is not an origin ({why}); write it as scheme://host[:port], e.g. http://localhost:3000, or * for any, none for no CORS")
    };
    let (scheme, rest) = v.split_once("://").ok_or_else(|| bad("no scheme://"))?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(bad("bad scheme"));
    }
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    if rest.contains(['/', '?', '#', '*', ' ', '@']) {
        return Err(bad("only scheme, host and port"));
    }
    let origin = format!("{scheme}://{rest}").to_ascii_lowercase();
    HeaderValue::from_str(&origin).map_err(|_| bad("not a valid header value"))?;
    Ok(origin)
}

fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .map(|o| HeaderValue::from_str(o).expect("checked by parse_origin")),
        ),
        _ => AllowOrigin::any(),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        // POST for gRPC-Web and Connect, GET for Connect's GET calls, the rest for HTTP/JSON routes.
        .allow_methods(AllowMethods::list([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ]))
        // content-type, x-grpc-web, x-user-agent, grpc-timeout, connect-protocol-version, and any
        // metadata a page sends: whatever the preflight asks for.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ]))
        .max_age(PREFLIGHT_MAX_AGE)
}

/// CORS around the router: one for the whole server.
pub(crate) struct WithCors {
    origins: CorsOrigins,
    /// Origins whose pages may call the admin API (`--admin-cors-origin`).
    admin_origins: CorsOrigins,
    /// `None` when CORS is off.
    cors: Option<Cors<Router>>,
    router: Router,
}

impl WithCors {
    pub(crate) fn new(policy: CorsPolicy, router: Router) -> Self {
        let CorsPolicy {
            calls: origins,
            admin: admin_origins,
        } = policy;
        let cors = match &origins {
            CorsOrigins::Off => None,
            origins => Some(cors_layer(origins).layer(router.clone())),
        };
        WithCors {
            origins,
            admin_origins,
            cors,
            router,
        }
    }

    /// PERMISSION_DENIED for a page's request to the admin API, in the request's protocol (a
    /// preflight gets HTTP/JSON's 403): its origin is not in `--admin-cors-origin`.
    fn refuse_admin(&self, request: &Request<Body>, origin: &HeaderValue) -> ResponseFuture {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let path = request.uri().path();
        tracing::warn!(%origin, path, "refused: a page's call to the admin API (origin not in --admin-cors-origin)");
        let status = tonic::Status::permission_denied(format!(
            "protodrop: pages from origin {origin} may not call the admin API (allowed: {}); \
             start protodrop with --admin-cors-origin {origin} to allow them",
            match &self.admin_origins {
                CorsOrigins::Off => "none".to_string(),
                allowed => allowed.to_string(),
            }
        ));
        let mut response = Router::refusal(request, &status);
        // A page that may call the server's methods may read why this call was refused; a
        // preflight gets no CORS header at all (it grants nothing).
        let preflight = request.method() == Method::OPTIONS;
        if !preflight && self.cors.is_some() && self.origins.allows_str(&origin) {
            if let Ok(value) = HeaderValue::from_str(&origin) {
                let headers = response.headers_mut();
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
                headers.insert(header::VARY, HeaderValue::from_static("origin"));
            }
            expose_all(&mut response);
        }
        futures::future::ready(Ok(response)).boxed()
    }

    /// The answer to one request. Takes `&self`, as hyper's services do: the server shares one
    /// `WithCors` between all connections instead of cloning the stack for every request.
    pub(crate) fn answer(
        &self,
        request: Request<Body>,
        peer: Option<SocketAddr>,
    ) -> ResponseFuture {
        let origin = request.headers().get(header::ORIGIN);
        if let Some(origin) = origin {
            if admin::is_admin_path(request.uri().path()) && !self.admin_origins.allows(origin) {
                return self.refuse_admin(&request, origin);
            }
        }
        let cors = match (&self.cors, origin) {
            (Some(cors), Some(origin)) => {
                if !self.origins.allows(origin) {
                    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
                    tracing::info!(%origin, path = request.uri().path(), "refused: origin not in --cors-origin");
                    let text = format!(
                        "protodrop: origin {origin} may not call this server (--cors-origin allows: {})\n",
                        self.origins
                    );
                    let body = Body::new(http_body_util::Full::new(Bytes::from(text)));
                    let mut response = Response::new(body);
                    *response.status_mut() = StatusCode::FORBIDDEN;
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    return futures::future::ready(Ok(response)).boxed();
                }
                cors.clone()
            }
            // No CORS, or no Origin (not a browser's cross-origin request): nothing to add.
            _ => return self.router.answer(request, peer),
        };
        // Through the layer, the router gets the client from the request.
        let mut request = request;
        request.extensions_mut().insert(Peer(peer));
        async move {
            let mut response = cors.oneshot(request).await?;
            expose_all(&mut response);
            Ok(response)
        }
        .boxed()
    }
}

/// Adds every header of an answer a page could not read otherwise to `access-control-expose-headers`
/// (handlers may set any header; listing them by name also works for credentialed requests).
fn expose_all(response: &mut Response<Body>) {
    let headers = response.headers();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    let mut exposed: Vec<String> = headers
        .get_all(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in headers.keys() {
        let name = name.as_str();
        let hidden =
            !SAFELISTED.contains(&name) && !name.starts_with("access-control-") && name != "vary";
        if hidden && !exposed.iter().any(|e| e == name) {
            exposed.push(name.to_string());
        }
    }
    if exposed.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&exposed.join(", ")) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_normalized() {
        assert_eq!(
            parse_origin("http://localhost:3000/").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(
            parse_origin("HTTPS://Example.COM").unwrap(),
            "https://example.com"
        );
        assert_eq!(parse_origin("*").unwrap(), "*");
        assert_eq!(parse_origin("none").unwrap(), "none");
        for bad in [
            "localhost:3000",
            "http://",
            "http://a.com/path",
            "http://*.a.com",
            "://x",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn special_values_stand_alone() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(CorsOrigins::from_flags(&v(&["*"])), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::from_flags(&v(&["none"])), Ok(CorsOrigins::Off));
        assert_eq!(
            CorsOrigins::from_flags(&v(&["http://a", "http://b"])),
            Ok(CorsOrigins::List(v(&["http://a", "http://b"])))
        );
        assert!(CorsOrigins::from_flags(&v(&["*", "http://a"])).is_err());
        assert!(CorsOrigins::from_flags(&v(&["none", "http://a"])).is_err());
    }

    #[test]
    fn admin_origins_default_to_none_and_must_pass_cors_origin() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let policy = CorsPolicy::from_flags(&v(&["*"]), &[]).unwrap();
        assert_eq!(policy.admin, CorsOrigins::Off);
        let policy = CorsPolicy::from_flags(&v(&["*"]), &v(&["http://a"])).unwrap();
        assert_eq!(policy.admin, CorsOrigins::List(v(&["http://a"])));
        let policy = CorsPolicy::from_flags(&v(&["http://a", "http://b"]), &v(&["http://b"]));
        assert!(policy.is_ok());
        let refused = CorsPolicy::from_flags(&v(&["http://a"]), &v(&["http://b"])).unwrap_err();
        assert!(refused.contains("http://b"), "{refused}");
        assert!(CorsPolicy::from_flags(&v(&["none"]), &v(&["http://a"])).is_err());
        assert!(CorsPolicy::from_flags(&v(&["http://a"]), &v(&["*"])).is_err());
        assert!(CorsPolicy::from_flags(&v(&["*"]), &v(&["*", "http://a"])).is_err());
        assert_eq!(
            CorsPolicy::from_flags(&v(&["*"]), &v(&["*"]))
                .unwrap()
                .admin,
            CorsOrigins::Any
        );
    }
}
