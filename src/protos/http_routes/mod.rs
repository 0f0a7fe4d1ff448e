//! The route table: every `google.api.http` binding (the rule and its `additional_bindings`) of every
//! method in the pool, checked when the protos load.
//!
//! A binding with a problem — a template that does not parse, a variable or `body`/`response_body`
//! naming no field, a route another binding already took — is skipped with a warning at its place in
//! the proto file, never a load error: the method still answers gRPC, gRPC-Web and Connect, which
//! never needed the route (googleapis alone has hundreds of routes declared by two services of
//! different packages). Of a route declared twice, the first in path order serves it: services are
//! taken file by file, files sorted by name (as imports spell them), and in a file in the order written.

use std::collections::HashMap;
use std::path::PathBuf;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

pub(crate) mod pattern;

pub(crate) use self::pattern::Bindings;
use self::pattern::{Segment, Template};
use crate::diagnostic::{Diagnostic, Diagnostics};

/// Which HTTP method a route answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Method(http::Method),
    /// `custom { kind: "*" }`: any method.
    Any,
}

impl Verb {
    fn allows(&self, method: &http::Method) -> bool {
        match self {
            Verb::Method(m) => m == method,
            Verb::Any => true,
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verb::Method(m) => f.write_str(m.as_str()),
            Verb::Any => f.write_str("*"),
        }
    }
}

/// Where the request message comes from besides the path.
#[derive(Clone, Debug)]
pub enum BodyRule {
    /// No body: the other fields come from query parameters.
    None,
    /// `body: "*"`: the body is the message (path variables excepted); no query parameters.
    Whole,
    /// `body: "field"`: the body is that field; the other fields come from query parameters.
    Field(FieldDescriptor),
}

/// One HTTP binding of a method.
#[derive(Clone, Debug)]
pub struct Route {
    pub verb: Verb,
    pub template: Template,
    /// The template as written, for messages.
    pub pattern: String,
    /// `/pkg.Service/Method`, the key of `State::methods`.
    pub grpc_path: String,
    pub method: MethodDescriptor,
    /// The fields of the template's variables, in their order (each a path from the request type).
    pub variables: Vec<Vec<FieldDescriptor>>,
    pub body: BodyRule,
    pub response_body: Option<FieldDescriptor>,
}

/// What a request finds.
pub enum Lookup<'a> {
    Found(&'a Route, Bindings),
    /// The path has routes, none for this HTTP method: the ones it has.
    WrongMethod(Vec<String>),
    NotFound,
}

/// Every route, indexed by first literal segment.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// The bindings skipped, each a warning at its place (and, for a route taken already, naming
    /// the binding that serves it).
    pub skipped: Vec<Diagnostic>,
    by_first: HashMap<String, Vec<usize>>,
    /// Routes whose template starts with a wildcard or variable.
    wild_first: Vec<usize>,
    /// Each route by its shape, to find one bound twice without comparing it with every other.
    shapes: HashMap<Shape, usize>,
}

/// What makes two bindings one route: the HTTP method, the segments, the `:verb`.
type Shape = (Verb, Vec<Segment>, Option<String>);

fn shape(route: &Route) -> Shape {
    (
        route.verb.clone(),
        route.template.segments.clone(),
        route.template.verb.clone(),
    )
}

impl Routes {
    /// The routes of every method of `pool`. `roots` are the folders the proto files were read from
    /// (the protos folder, then the `-I` roots), to point problems at their line. Bindings with a
    /// problem are left out, each with a warning in [`Routes::skipped`].
    pub fn build(pool: &DescriptorPool, roots: &[PathBuf]) -> Routes {
        let mut routes = Routes::default();
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return routes;
        };
        let mut problems = Diagnostics::default();
        // The files problems are found in, each read once (hundreds of routes of one big file
        // can be skipped).
        let mut sources = HashMap::new();
        // Path order, so which of two bindings of one route serves it does not depend on imports
        // (the pool lists an imported file before the file importing it). The sort is stable: in a
        // file, services stay in the order written.
        let mut services: Vec<_> = pool.services().collect();
        services.sort_by(|a, b| a.parent_file().name().cmp(b.parent_file().name()));
        for service in services {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                    continue;
                };
                let mut bindings = vec![(rule.clone(), true)];
                if let Some(Value::List(more)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(|v| v.into_owned())
                {
                    bindings.extend(more.into_iter().filter_map(|v| match v {
                        Value::Message(m) => Some((m, false)),
                        _ => None,
                    }));
                }
                for (binding, top) in bindings {
                    match route(&method, &binding, top) {
                        Ok(route) => {
                            if let Some(other) = routes.same_as(&route) {
                                let first = locate(
                                    roots,
                                    &mut sources,
                                    &other.method,
                                    &other.pattern,
                                    String::new(),
                                );
                                let problem = format!(
                                    "{} {} of {} skipped: the route is already served by {} ({})",
                                    route.verb,
                                    route.pattern,
                                    method.full_name(),
                                    other.method.full_name(),
                                    place(&first)
                                );
                                problems.push(locate(
                                    roots,
                                    &mut sources,
                                    &method,
                                    &route.pattern,
                                    problem,
                                ));
                            } else {
                                routes.push(route);
                            }
                        }
                        Err(Problem { near, message }) => {
                            let message = format!(
                                "google.api.http of {}: {message}; the binding is skipped",
                                method.full_name()
                            );
                            problems.push(locate(roots, &mut sources, &method, &near, message));
                        }
                    }
                }
            }
        }
        if let Err(problems) = problems.into_result() {
            routes.skipped = problems.0;
        }
        routes
    }

    /// Logs the skipped bindings: each at WARN on one line, then how many.
    pub(crate) fn log_skipped(&self) {
        for d in &self.skipped {
            tracing::warn!("{}: {}", place(d), d.message);
        }
        if !self.skipped.is_empty() {
            tracing::warn!(
                "{} HTTP route(s) skipped (their methods still answer gRPC, gRPC-Web and Connect)",
                self.skipped.len()
            );
        }
    }

    fn push(&mut self, route: Route) {
        let index = self.routes.len();
        match route.template.first_literal() {
            Some(first) => self
                .by_first
                .entry(first.to_string())
                .or_default()
                .push(index),
            None => self.wild_first.push(index),
        }
        self.shapes.entry(shape(&route)).or_insert(index);
        self.routes.push(route);
    }

    /// A route already bound to the same method and path shape.
    fn same_as(&self, route: &Route) -> Option<&Route> {
        self.shapes.get(&shape(route)).map(|&i| &self.routes[i])
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The most specific route for `method` and `path` (still percent-encoded); among equally specific
    /// ones, the first loaded.
    pub fn find(&self, method: &http::Method, path: &str) -> Lookup<'_> {
        let trimmed = path.trim_start_matches('/');
        let first = trimmed.split('/').next().unwrap_or("");
        let first = percent_encoding::percent_decode_str(first).decode_utf8_lossy();
        let by_first = |key: &str| self.by_first.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let literal = by_first(first.as_ref());
        // When the first segment is also the last, it may carry the `:verb` (`/v1:run`), which the
        // template's literal does not.
        let before_verb = match first.rsplit_once(':') {
            Some((head, _)) if !trimmed.contains('/') && !head.is_empty() => by_first(head),
            _ => &[],
        };
        let mut best: Option<(usize, Bindings)> = None;
        let mut allowed = Vec::new();
        for &index in literal.iter().chain(before_verb).chain(&self.wild_first) {
            let route = &self.routes[index];
            let Some(bindings) = route.template.matches(path) else {
                continue;
            };
            if !route.verb.allows(method) {
                allowed.push(route.verb.to_string());
                continue;
            }
            let better = match &best {
                None => true,
                Some((b, _)) => {
                    let order = route.template.compare(&self.routes[*b].template);
                    order.is_lt() || (order.is_eq() && index < *b)
                }
            };
            if better {
                best = Some((index, bindings));
            }
        }
        match best {
            Some((index, bindings)) => Lookup::Found(&self.routes[index], bindings),
            None if !allowed.is_empty() => {
                allowed.sort();
                allowed.dedup();
                Lookup::WrongMethod(allowed)
            }
            None => Lookup::NotFound,
        }
    }
}

/// `file:line:column` of a diagnostic (`file` when it has no line).
fn place(d: &Diagnostic) -> String {
    if d.line == 0 {
        d.file.display().to_string()
    } else {
        format!("{}:{}:{}", d.file.display(), d.line, d.column)
    }
}

/// A problem with one binding, and the text to point at in the proto file.
struct Problem {
    near: String,
    message: String,
}

fn problem(near: &str, message: impl Into<String>) -> Problem {
    Problem {
        near: near.to_string(),
        message: message.into(),
    }
}

/// One binding (`HttpRule`) as a route.
fn route(method: &MethodDescriptor, rule: &DynamicMessage, top: bool) -> Result<Route, Problem> {
    let text = |name: &str| -> String {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    if !top && rule.has_field_by_name("additional_bindings") {
        return Err(problem(
            "additional_bindings",
            "an additional binding cannot have additional_bindings of its own",
        ));
    }
    let mut verb_and_pattern = None;
    for (name, method) in [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            verb_and_pattern = Some((Verb::Method(method), text(name)));
        }
    }
    if let Some(Value::Message(custom)) = rule
        .has_field_by_name("custom")
        .then(|| rule.get_field_by_name("custom").map(|v| v.into_owned()))
        .flatten()
    {
        let field = |name: &str| -> String {
            custom
                .get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let (kind, path) = (field("kind"), field("path"));
        let verb = if kind == "*" {
            Verb::Any
        } else {
            Verb::Method(
                http::Method::from_bytes(kind.as_bytes())
                    .map_err(|_| problem(&kind, format!("'{kind}' is not an HTTP method")))?,
            )
        };
        verb_and_pattern = Some((verb, path));
    }
    let Some((verb, pattern)) = verb_and_pattern else {
        return Err(problem(
            "google.api.http",
            "no pattern (one of get, put, post, delete, patch, custom)",
        ));
    };
    let template = Template::parse(&pattern).map_err(|e| problem(&pattern, e.to_string()))?;
    let input = method.input();
    let variables = template
        .variables
        .iter()
        .map(|v| variable_field(&input, &v.field_path).map_err(|m| problem(&pattern, m)))
        .collect::<Result<Vec<_>, _>>()?;

    let body_name = text("body");
    let body = match body_name.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        name => BodyRule::Field(
            top_field(&input, name)
                .map_err(|m| problem(&format!("\"{name}\""), format!("body: {m}")))?,
        ),
    };
    let response_name = text("response_body");
    let response_body = match response_name.as_str() {
        "" => None,
        name => Some(
            top_field(&method.output(), name)
                .map_err(|m| problem(&format!("\"{name}\""), format!("response_body: {m}")))?,
        ),
    };
    Ok(Route {
        verb,
        template,
        pattern,
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        method: method.clone(),
        variables,
        body,
        response_body,
    })
}

/// The fields a variable's path walks; it must end at a singular, non-message field.
fn variable_field(
    input: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut desc = input.clone();
    for (i, name) in path.iter().enumerate() {
        let field = desc.get_field_by_name(name).ok_or_else(|| {
            format!(
                "variable '{}': {} has no field '{name}' (fields: {})",
                path.join("."),
                desc.full_name(),
                field_names(&desc)
            )
        })?;
        let joined = path.join(".");
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() => desc = inner,
                _ => {
                    return Err(format!(
                        "variable '{joined}': '{name}' is not a singular message field"
                    ))
                }
            }
        } else if field.is_list() || field.is_map() {
            return Err(format!("variable '{joined}' names a repeated or map field"));
        } else if let Kind::Message(inner) = field.kind() {
            return Err(format!(
                "variable '{joined}' names a message field ({}); it must name a scalar or enum",
                inner.full_name()
            ));
        }
        fields.push(field);
    }
    Ok(fields)
}

fn top_field(desc: &MessageDescriptor, name: &str) -> Result<FieldDescriptor, String> {
    desc.get_field_by_name(name).ok_or_else(|| {
        format!(
            "{} has no field '{name}' (fields: {})",
            desc.full_name(),
            field_names(desc)
        )
    })
}

fn field_names(desc: &MessageDescriptor) -> String {
    let names: Vec<String> = desc.fields().map(|f| f.name().to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The problem at the first place `near` is written (quoted) after the method's `rpc` line in its
/// file, else at the `rpc` line, else the whole file.
fn locate(
    roots: &[PathBuf],
    sources: &mut HashMap<PathBuf, Option<String>>,
    method: &MethodDescriptor,
    near: &str,
    message: String,
) -> Diagnostic {
    let name = method.parent_file().name().to_string();
    let file = match roots.split_first() {
        Some((protos, include_roots)) => {
            crate::protos::path_or_folder(protos, include_roots, &name)
        }
        None => PathBuf::from(&name),
    };
    let source = sources
        .entry(file.clone())
        .or_insert_with(|| crate::protos::source::read_for_display(&file));
    let Some(source) = source.as_deref() else {
        return Diagnostic::file(file, message);
    };
    let rpc = rpc_offset(source, method.name()).unwrap_or(0);
    let quoted = if near.starts_with('"') {
        near.to_string()
    } else {
        format!("\"{near}\"")
    };
    let found = source[rpc..]
        .find(&quoted)
        .map(|i| rpc + i + usize::from(!near.starts_with('"')))
        .or_else(|| source[rpc..].find(near).map(|i| rpc + i))
        .or((rpc > 0).then_some(rpc));
    match found {
        Some(offset) => Diagnostic::at(file, source, offset..offset + 1, message),
        None => Diagnostic::file(file, message),
    }
}

/// Where `rpc Name` is written.
fn rpc_offset(source: &str, name: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = source[from..].find("rpc") {
        let at = from + i;
        let rest = source[at + 3..].trim_start();
        let before_ok = at == 0 || !source.as_bytes()[at - 1].is_ascii_alphanumeric();
        if before_ok
            && rest.starts_with(name)
            && !rest[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            return Some(at);
        }
        from = at + 3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"syntax = "proto3";
package t;
import "google/api/annotations.proto";
message R { string a = 1; string b = 2; }
service S {
  rpc M1(R) returns (R) { option (google.api.http) = { get: "/v1/{a=x/*/d/**}/{b}" }; }
  rpc M2(R) returns (R) { option (google.api.http) = { get: "/v1/{a=x/*/d/*}/{b}" }; }
  rpc M3(R) returns (R) { option (google.api.http) = { get: "/v1/{a=**/y/*}" }; }
  rpc M4(R) returns (R) { option (google.api.http) = { get: "/v1/{a=x/**}" }; }
  rpc M5(R) returns (R) { option (google.api.http) = { post: "/v1/{a=x/*/d/**}/{b}:run" }; }
  rpc M6(R) returns (R) { option (google.api.http) = { get: "/{a=**}/y" }; }
  rpc M7(R) returns (R) { option (google.api.http) = { get: "/v1/{a=x/*/d/*}/{b}" }; }
}
"#;

    fn routes() -> Routes {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.proto"), PROTO).unwrap();
        let protos = crate::protos::load(dir.path(), &[]).unwrap();
        Routes::build(&protos.pool, &[dir.path().to_path_buf()])
    }

    /// `find` against every route tried on its own (the fuzz target's oracle), over paths made of
    /// the templates' literals and other segments, with `**` in the middle of templates.
    #[test]
    fn find_agrees_with_brute_force_when_double_star_is_followed_by_segments() {
        let routes = routes();
        // M7 repeats M2's route: skipped, with a warning naming both.
        assert_eq!(routes.len(), 6);
        assert_eq!(routes.skipped.len(), 1);
        assert!(
            routes.skipped[0].message.contains("t.S.M7")
                && routes.skipped[0].message.contains("served by t.S.M2"),
            "{}",
            routes.skipped[0]
        );
        let words = ["v1", "x", "d", "y", "q", ""];
        let mut paths = vec![String::from("/")];
        for _ in 0..5 {
            let more: Vec<String> = paths
                .iter()
                .flat_map(|p| {
                    words.iter().map(move |w| {
                        if p == "/" {
                            format!("/{w}")
                        } else {
                            format!("{p}/{w}")
                        }
                    })
                })
                .collect();
            paths.extend(more);
        }
        paths.sort();
        paths.dedup();
        let mut found = 0;
        for path in paths.iter().flat_map(|p| [p.clone(), format!("{p}:run")]) {
            for method in [http::Method::GET, http::Method::POST] {
                let mut best: Option<&Route> = None;
                for r in routes.routes.iter().filter(|r| r.verb.allows(&method)) {
                    if r.template.matches(&path).is_some()
                        && best.is_none_or(|b| r.template.compare(&b.template).is_lt())
                    {
                        best = Some(r);
                    }
                }
                match (routes.find(&method, &path), best) {
                    (Lookup::Found(r, bindings), Some(b)) => {
                        assert_eq!(r.pattern, b.pattern, "{method} {path}");
                        assert_eq!(Some(bindings), b.template.matches(&path));
                        found += 1;
                    }
                    (Lookup::Found(r, _), None) => panic!("{method} {path}: found {}", r.pattern),
                    (_, Some(b)) => panic!("{method} {path}: missed {}", b.pattern),
                    (_, None) => {}
                }
            }
        }
        assert!(found > 100, "only {found} paths matched");
    }
}
