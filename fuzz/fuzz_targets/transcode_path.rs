//! (c) The HTTP/JSON transcoder's route matcher, `Routes::find`, over the routes of
//! `fuzz/transcode/protos/fuzzhttp.proto` (`{name=shelves/*/books/*}`, `{c=**}:verb`, segments after
//! `**` (`{name=shelves/*/docs/**}/{c}`, `{name=**/books/*}:run`), `custom` with
//! kind `*`, a first segment that is a variable or `**`, `/v1:run`, `additional_bindings`, …), then the
//! whole transcoded call (`protocol::http_json::serve`: path variables, query parameters and body into
//! the request, the handlers of `fuzz/transcode/handlers`, the reply as JSON).
//!
//! Input: byte 0 picks the HTTP method, then UTF-8 (lossy) text: the request target (path and query)
//! up to the first newline, the request body after it.
//!
//! Properties: nothing panics; `find` agrees with a brute-force search over every binding of the pool
//! (each template parsed and matched on its own, the most specific allowed one wins, ties to the first
//! loaded — the fixture is one file, so pool order is the routes' path order; 405 with the right `Allow` list, else 404); the served call ends within `CALL_LIMIT` with the
//! status the lookup implies, and a 200 JSON answer parses as JSON.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use prost_reflect::{DescriptorPool, Value};

use protodrop::fuzzing::protos::http_routes::pattern::Template;
use protodrop::fuzzing::protos::http_routes::{Lookup, Verb};
use protodrop::fuzzing::script::ScriptLimits;
use protodrop::fuzzing::state::{Sources, State};
use protodrop::fuzzing::protocol::ServiceSettings;

const CALL_LIMIT: Duration = Duration::from_secs(10);

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FUZZ",
];

/// One `google.api.http` binding as the oracle sees it: `None` is `custom { kind: "*" }`.
struct Binding {
    verb: Option<http::Method>,
    pattern: String,
    template: Template,
}

impl Binding {
    fn allows(&self, method: &http::Method) -> bool {
        self.verb.as_ref().is_none_or(|v| v == method)
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: Arc<State>,
    /// Every binding of the pool in load order (services, methods, the rule then its additional ones).
    bindings: Vec<Binding>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("transcode");
        let sources = Sources {
            protos: dir.join("protos"),
            handlers: dir.join("handlers"),
            include_roots: vec![],
            exclude: vec![],
            descriptor_sets: vec![],
            script_limits: ScriptLimits::default(),
            reflection: false,
            reads: Default::default(),
            natives: Vec::new(),
        };
        let state = State::build(&sources).unwrap_or_else(|d| panic!("transcode fixture: {d}"));
        let bindings = bindings(&state.protos.pool);
        assert_eq!(
            bindings.len(),
            state.routes.len(),
            "every binding is a route"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Fixture {
            runtime,
            state: Arc::new(state),
            bindings,
        }
    })
}

/// The bindings, read from the options without protodrop's route code.
fn bindings(pool: &DescriptorPool) -> Vec<Binding> {
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("google.api.http is loaded");
    let mut out = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                continue;
            };
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) = rule
                .get_field_by_name("additional_bindings")
                .map(|v| v.into_owned())
            {
                rules.extend(more.into_iter().filter_map(|v| match v {
                    Value::Message(m) => Some(m),
                    _ => None,
                }));
            }
            for rule in rules {
                let text = |m: &prost_reflect::DynamicMessage, name: &str| {
                    m.get_field_by_name(name)
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                };
                let mut found = None;
                for name in ["get", "put", "post", "delete", "patch"] {
                    if rule.has_field_by_name(name) {
                        let verb =
                            http::Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap();
                        found = Some((Some(verb), text(&rule, name)));
                    }
                }
                if rule.has_field_by_name("custom") {
                    let Some(Value::Message(custom)) =
                        rule.get_field_by_name("custom").map(|v| v.into_owned())
                    else {
                        unreachable!("custom is a message")
                    };
                    let kind = text(&custom, "kind");
                    let verb =
                        (kind != "*").then(|| http::Method::from_bytes(kind.as_bytes()).unwrap());
                    found = Some((verb, text(&custom, "path")));
                }
                let (verb, pattern) = found.expect("every binding has a pattern");
                let template = Template::parse(&pattern).expect("the fixture's templates parse");
                out.push(Binding {
                    verb,
                    pattern,
                    template,
                });
            }
        }
    }
    out
}

fn verb_of(verb: &Verb) -> Option<http::Method> {
    match verb {
        Verb::Method(m) => Some(m.clone()),
        Verb::Any => None,
    }
}

/// `find` against the brute-force answer.
fn check_find(fx: &Fixture, method: &http::Method, path: &str) {
    let matching: Vec<&Binding> = fx
        .bindings
        .iter()
        .filter(|b| b.template.matches(path).is_some())
        .collect();
    let mut best: Option<&Binding> = None;
    for b in matching.iter().copied().filter(|b| b.allows(method)) {
        if best.is_none_or(|x| b.template.compare(&x.template).is_lt()) {
            best = Some(b);
        }
    }
    match (fx.state.routes.find(method, path), best) {
        (Lookup::Found(route, bindings), Some(expected)) => {
            assert_eq!(
                (verb_of(&route.verb), route.pattern.as_str()),
                (expected.verb.clone(), expected.pattern.as_str()),
                "{method} {path:?}: found {} {}, the most specific is {:?} {}",
                route.verb,
                route.pattern,
                expected.verb,
                expected.pattern
            );
            assert_eq!(Some(&bindings), expected.template.matches(path).as_ref());
            assert_eq!(bindings.len(), route.variables.len());
            assert!(bindings.iter().all(|(i, _)| *i < route.variables.len()));
        }
        (Lookup::Found(route, _), None) => {
            panic!(
                "{method} {path:?}: found {} {}, but no binding allows it",
                route.verb, route.pattern
            )
        }
        (Lookup::WrongMethod(allowed), None) => {
            let mut expected: Vec<String> = matching
                .iter()
                .map(|b| b.verb.as_ref().map_or("*".to_string(), |m| m.to_string()))
                .collect();
            expected.sort();
            expected.dedup();
            assert!(
                !expected.is_empty(),
                "{method} {path:?}: 405 but no binding matches"
            );
            assert_eq!(allowed, expected, "{method} {path:?}: the Allow list");
        }
        (Lookup::NotFound, None) => {
            assert!(
                matching.is_empty(),
                "{method} {path:?}: not found, but {} matches",
                matching[0].pattern
            )
        }
        (Lookup::WrongMethod(_) | Lookup::NotFound, Some(expected)) => {
            panic!(
                "{method} {path:?}: no route found, but {:?} {} matches",
                expected.verb, expected.pattern
            )
        }
    }
}

/// The whole transcoded call, when the target is a valid request URI.
fn check_serve(fx: &Fixture, method: http::Method, target: &str, body: &str) {
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    if uri.scheme().is_some() || !uri.path().starts_with('/') {
        return;
    }
    // A GET with a `message` query parameter may be a Connect GET instead (the server's router sends
    // it to Connect when its path is a method's, or when no route takes the path): no expectation.
    let connect_get =
        method == http::Method::GET && form_urlencoded_has_message(uri.query().unwrap_or(""));
    let lookup = match fx.state.routes.find(&method, uri.path()) {
        _ if connect_get => None,
        Lookup::Found(..) => None,
        Lookup::WrongMethod(_) => Some(http::StatusCode::METHOD_NOT_ALLOWED),
        Lookup::NotFound => Some(http::StatusCode::NOT_FOUND),
    };
    let request = http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body.to_string()))))
        .expect("a request");
    let settings = ServiceSettings {
        max_message_size: 4 << 20,
        max_header_list_size: 16 << 10,
    };
    let state = fx.state.clone();
    let call = async move {
        static CUT: std::sync::LazyLock<tokio_util::sync::CancellationToken> =
            std::sync::LazyLock::new(Default::default);
        let response = protodrop::fuzzing::protocol::http_json::serve(state, request, settings, &CUT).await;
        let status = response.status();
        let json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/json");
        let body = response.into_body().collect().await.map(|c| c.to_bytes());
        (status, json, body)
    };
    let (status, json, body) = fx
        .runtime
        .block_on(async { tokio::time::timeout(CALL_LIMIT, call).await })
        .unwrap_or_else(|_| {
            panic!("{method} {target:?}: the call did not end within {CALL_LIMIT:?}")
        });
    if let Some(expected) = lookup {
        assert_eq!(status, expected, "{method} {target:?}");
    }
    if json {
        if let Ok(bytes) = body {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                panic!("{method} {target:?}: {status} answer is not JSON ({e}): {bytes:?}");
            }
        }
    }
}

/// Whether a query string has a `message` parameter (as `connect::is_get_request` reads it).
fn form_urlencoded_has_message(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        let name = name.replace('+', " ");
        percent_encoding::percent_decode_str(&name).decode_utf8_lossy() == "message"
    })
}

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else {
        return;
    };
    let method =
        http::Method::from_bytes(METHODS[usize::from(*selector) % METHODS.len()].as_bytes())
            .expect("a method name");
    let text = String::from_utf8_lossy(rest);
    let (target, body) = text.split_once('\n').unwrap_or((&text, ""));
    let fx = fixture();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    check_find(fx, &method, path);
    check_serve(fx, method, target, body);
});
