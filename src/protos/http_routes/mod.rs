//! The route table: every `google.api.http` binding (the rule and its `additional_bindings`) of every
//! method in the pool, checked when the protos load.
//!
//! A binding with a problem — a template that does not parse, a variable or `body`/`response_body`
//! naming no field, a route another binding already took — is skipped with a warning at its place in
//! the proto file, never a load error: the method still answers gRPC, gRPC-Web and Connect, which
//! never needed the route (googleapis alone has hundreds of routes declared by two services of
//! different packages). Of a route declared twice, the first in path order serves it: services are
//! taken file by file, files sorted by name (as imports spell them), and in a file in the order written.
//!
//! The bindings are kept per file: a file's routes depend only on it and what it imports, so an
//! incremental reload (see `protos::incremental`) makes again only the routes of the files it
//! compiled again and rebinds the others' descriptors to the new pool ([`Routes::of`]). Which of two
//! bindings of one route serves is then decided over all files, as a full build decides it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, FileDescriptor, Kind,
    MessageDescriptor, MethodDescriptor, Value,
};

pub(crate) mod openapi;
pub(crate) mod pattern;

pub(crate) use self::pattern::Bindings;
use self::pattern::{Segment, Template};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::protos::{Generation, Protos};

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
    /// Shared: a reload that keeps the route's file hands it to the next table as it is.
    pub template: Arc<Template>,
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
    /// Every binding that makes a route, served or not (one bound before takes it), in path order.
    routes: Vec<Route>,
    /// Whether each of `routes` serves: the first of its shape.
    served: Vec<bool>,
    /// Where each of `routes` is written, once a warning needed it.
    places: Vec<Option<Diagnostic>>,
    /// The bindings of each file with services, in path order: what a reload keeps of the files it
    /// did not compile again.
    files: Vec<FileRoutes>,
    /// How many of `routes` serve.
    count: usize,
    /// How many files' bindings were taken from the routes of an earlier load.
    kept_files: usize,
    /// The bindings skipped, each a warning at its place (and, for a route taken already, naming
    /// the binding that serves it).
    pub skipped: Vec<Diagnostic>,
    by_first: HashMap<String, Vec<usize>>,
    /// Routes whose template starts with a wildcard or variable.
    wild_first: Vec<usize>,
}

/// One file's bindings as written, before routes of different files are compared: a route depends
/// only on its file and what it imports, which of two routes of one shape serves on the path order
/// of all files.
#[derive(Debug)]
struct FileRoutes {
    name: String,
    bindings: Vec<Binding>,
}

#[derive(Debug)]
enum Binding {
    /// An index into `Routes::routes`.
    Route(usize),
    /// Why the binding makes no route.
    Problem(Diagnostic),
}

/// What makes two bindings one route: the HTTP method, the segments, the `:verb`.
type Shape<'a> = (&'a Verb, &'a [Segment], Option<&'a str>);

fn shape(route: &Route) -> Shape<'_> {
    (
        &route.verb,
        &route.template.segments,
        route.template.verb.as_deref(),
    )
}

impl Route {
    /// This route with the descriptors of `pool`, which holds its file as it was compiled where the
    /// route was made; `None` if it does not (then the file's routes are made again).
    fn rebind(&self, pool: &DescriptorPool) -> Option<Route> {
        let service = pool.get_service_by_name(self.method.parent_service().full_name())?;
        let method = service.methods().nth(self.method.index())?;
        if method.name() != self.method.name() {
            return None;
        }
        let input = method.input();
        let variables = self
            .variables
            .iter()
            .map(|path| rebind_path(&input, path))
            .collect::<Option<Vec<_>>>()?;
        let body = match &self.body {
            BodyRule::Field(field) => BodyRule::Field(input.get_field(field.number())?),
            other => other.clone(),
        };
        let response_body = match &self.response_body {
            Some(field) => Some(method.output().get_field(field.number())?),
            None => None,
        };
        Some(Route {
            verb: self.verb.clone(),
            template: self.template.clone(),
            pattern: self.pattern.clone(),
            grpc_path: self.grpc_path.clone(),
            method,
            variables,
            body,
            response_body,
        })
    }
}

/// The fields of `path` (from another pool) in `input`'s pool, walked by number.
fn rebind_path(
    input: &MessageDescriptor,
    path: &[FieldDescriptor],
) -> Option<Vec<FieldDescriptor>> {
    let mut desc = input.clone();
    let mut fields = Vec::with_capacity(path.len());
    for (i, old) in path.iter().enumerate() {
        let field = desc.get_field(old.number())?;
        if field.name() != old.name() {
            return None;
        }
        if i + 1 < path.len() {
            desc = match field.kind() {
                Kind::Message(inner) => inner,
                _ => return None,
            };
        }
        fields.push(field);
    }
    Some(fields)
}

/// The last routes built for each set of roots, with the load they were built from: what the next
/// incremental load's routes are made from.
static LAST: Mutex<Vec<(Vec<PathBuf>, Generation, Arc<Routes>)>> = Mutex::new(Vec::new());
/// Unit tests build routes for many folders at once in one process.
const KEPT: usize = if cfg!(test) { 256 } else { 4 };

impl Routes {
    /// The routes of `protos`, read from `roots` (the protos folder, then the `-I` roots): made
    /// again only for the files an incremental load compiled again, the others' taken from the
    /// routes of the load it was made from (when they were the last built for `roots`). The same
    /// routes, in the same order, with the same warnings as [`Routes::build`].
    pub fn of(protos: &Protos, roots: &[PathBuf]) -> Arc<Routes> {
        let before = protos.reloaded.as_ref().and_then(|reloaded| {
            let last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
            last.iter()
                .find(|(r, generation, _)| r == roots && *generation == reloaded.from)
                .map(|(_, _, routes)| (routes.clone(), reloaded.recompiled.clone()))
        });
        let routes = Arc::new(match &before {
            Some((before, recompiled)) => {
                Routes::make(&protos.pool, roots, Some((before, recompiled)))
            }
            None => Routes::make(&protos.pool, roots, None),
        });
        drop(before);
        let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        last.retain(|(r, _, _)| r != roots);
        if last.len() >= KEPT {
            last.remove(0);
        }
        last.push((roots.to_vec(), protos.generation, routes.clone()));
        routes
    }

    /// The routes of every method of `pool`. `roots` are the folders the proto files were read from
    /// (the protos folder, then the `-I` roots), to point problems at their line. Bindings with a
    /// problem are left out, each with a warning in [`Routes::skipped`].
    pub fn build(pool: &DescriptorPool, roots: &[PathBuf]) -> Routes {
        Routes::make(pool, roots, None)
    }

    /// [`Routes::build`], taking the routes of files not `recompiled` from `before` when given.
    fn make(
        pool: &DescriptorPool,
        roots: &[PathBuf],
        before: Option<(&Routes, &HashSet<String>)>,
    ) -> Routes {
        let started = std::time::Instant::now();
        let mut routes = Routes::default();
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return routes;
        };
        // The files problems are found in, each read once (hundreds of routes of one big file
        // can be skipped).
        let mut sources = HashMap::new();
        let earlier: HashMap<&str, &FileRoutes> = before
            .map(|(b, _)| b.files.iter().map(|f| (f.name.as_str(), f)).collect())
            .unwrap_or_default();
        // Path order, so which of two bindings of one route serves it does not depend on imports
        // (the pool lists an imported file before the file importing it). In a file, services and
        // methods in the order written.
        let mut files: Vec<_> = pool
            .files()
            .filter(|f| f.services().next().is_some())
            .collect();
        files.sort_by(|a, b| a.name().cmp(b.name()));
        let (mut kept, mut made) = (0, 0);
        for file in files {
            let reusable = before
                .filter(|(_, recompiled)| !recompiled.contains(file.name()))
                .and_then(|(b, _)| Some((b, *earlier.get(file.name())?)));
            if let Some((b, group)) = reusable {
                if routes.keep(pool, b, group) {
                    kept += 1;
                    continue;
                }
            }
            made += 1;
            routes.compile(&file, &http, roots, &mut sources);
        }
        routes.kept_files = kept;
        let compiled = started.elapsed();
        routes.index(roots, &mut sources);
        tracing::debug!(
            kept_files = kept,
            made_files = made,
            routes = routes.routes.len(),
            ?compiled,
            elapsed = ?started.elapsed(),
            "HTTP routes built"
        );
        routes
    }

    /// Takes `group` (of `before`) bound to `pool`; false, taking nothing, when a route cannot be.
    fn keep(&mut self, pool: &DescriptorPool, before: &Routes, group: &FileRoutes) -> bool {
        let first = self.routes.len();
        let mut bindings = Vec::with_capacity(group.bindings.len());
        for binding in &group.bindings {
            bindings.push(match binding {
                Binding::Route(i) => match before.routes[*i].rebind(pool) {
                    Some(route) => {
                        self.routes.push(route);
                        self.places.push(before.places[*i].clone());
                        Binding::Route(self.routes.len() - 1)
                    }
                    None => {
                        self.routes.truncate(first);
                        self.places.truncate(first);
                        return false;
                    }
                },
                Binding::Problem(d) => Binding::Problem(d.clone()),
            });
        }
        self.files.push(FileRoutes {
            name: group.name.clone(),
            bindings,
        });
        true
    }

    /// Makes the bindings of `file`'s methods.
    fn compile(
        &mut self,
        file: &FileDescriptor,
        http: &ExtensionDescriptor,
        roots: &[PathBuf],
        sources: &mut HashMap<PathBuf, Option<String>>,
    ) {
        let mut bindings = Vec::new();
        for service in file.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(http) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(http).into_owned() else {
                    continue;
                };
                let mut all = vec![(rule.clone(), true)];
                if let Some(Value::List(more)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(|v| v.into_owned())
                {
                    all.extend(more.into_iter().filter_map(|v| match v {
                        Value::Message(m) => Some((m, false)),
                        _ => None,
                    }));
                }
                for (binding, top) in all {
                    bindings.push(match route(&method, &binding, top) {
                        Ok(route) => {
                            self.routes.push(route);
                            self.places.push(None);
                            Binding::Route(self.routes.len() - 1)
                        }
                        Err(Problem { near, message }) => {
                            let message = format!(
                                "google.api.http of {}: {message}; the binding is skipped",
                                method.full_name()
                            );
                            Binding::Problem(locate(roots, sources, &method, &near, message))
                        }
                    });
                }
            }
        }
        self.files.push(FileRoutes {
            name: file.name().to_string(),
            bindings,
        });
    }

    /// Decides which routes serve (of one shape, the first in path order), indexes them, and
    /// lists the skipped bindings.
    fn index(&mut self, roots: &[PathBuf], sources: &mut HashMap<PathBuf, Option<String>>) {
        let mut problems = Diagnostics::default();
        let mut served = vec![false; self.routes.len()];
        // Each route by its shape, to find one bound twice without comparing it with every other.
        let mut shapes: HashMap<Shape<'_>, usize> = HashMap::with_capacity(self.routes.len());
        let mut places = std::mem::take(&mut self.places);
        let mut place_of = |i: usize, routes: &[Route]| -> Diagnostic {
            places[i]
                .get_or_insert_with(|| {
                    let route = &routes[i];
                    locate(roots, sources, &route.method, &route.pattern, String::new())
                })
                .clone()
        };
        for group in &self.files {
            for binding in &group.bindings {
                let index = match binding {
                    Binding::Route(index) => *index,
                    Binding::Problem(d) => {
                        problems.push(d.clone());
                        continue;
                    }
                };
                let route = &self.routes[index];
                match shapes.entry(shape(route)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        let other = &self.routes[*first.get()];
                        let first = place_of(*first.get(), &self.routes);
                        let mut here = place_of(index, &self.routes);
                        here.message = format!(
                            "{} {} of {} skipped: the route is already served by {} ({})",
                            route.verb,
                            route.pattern,
                            route.method.full_name(),
                            other.method.full_name(),
                            place(&first)
                        );
                        problems.push(here);
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(index);
                        served[index] = true;
                        match route.template.first_literal() {
                            Some(first) => self
                                .by_first
                                .entry(first.to_string())
                                .or_default()
                                .push(index),
                            None => self.wild_first.push(index),
                        }
                    }
                }
            }
        }
        drop(shapes);
        self.count = served.iter().filter(|s| **s).count();
        self.served = served;
        self.places = places;
        if let Err(problems) = problems.into_result() {
            self.skipped = problems.0;
        }
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

    /// How many routes serve.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The routes that serve, in path order.
    pub fn served(&self) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .zip(&self.served)
            .filter_map(|(route, served)| served.then_some(route))
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
        template: Arc::new(template),
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

    /// Each write dated apart, as the incremental tests write (a file written twice within a file
    /// system's time granularity would look unchanged to a reload).
    use crate::protos::incremental_tests::write;

    /// What a request sees of a table: the routes that serve, in order, with their descriptors'
    /// names, and every warning.
    fn table(routes: &Routes) -> (Vec<String>, Vec<String>) {
        let served = routes
            .served()
            .map(|r| {
                let vars: Vec<String> = r
                    .variables
                    .iter()
                    .map(|p| p.iter().map(|f| f.full_name().to_string()).collect())
                    .collect::<Vec<Vec<String>>>()
                    .iter()
                    .map(|p| p.join("."))
                    .collect();
                let body = match &r.body {
                    BodyRule::None => String::new(),
                    BodyRule::Whole => "*".into(),
                    BodyRule::Field(f) => f.full_name().to_string(),
                };
                format!(
                    "{} {} -> {} {} vars={vars:?} body={body} response={:?}",
                    r.verb,
                    r.pattern,
                    r.grpc_path,
                    r.method.full_name(),
                    r.response_body.as_ref().map(|f| f.full_name().to_string())
                )
            })
            .collect();
        let skipped = routes.skipped.iter().map(|d| d.to_string()).collect();
        (served, skipped)
    }

    const COMMON: &str = "syntax = \"proto3\";\npackage c;\n\
        message Req { string name = 1; string parent = 2; Inner inner = 3; }\n\
        message Inner { string id = 1; }\nmessage Res { string text = 1; }\n";

    fn service(package: &str, name: &str, rpcs: &str) -> String {
        format!(
            "syntax = \"proto3\";\npackage {package};\nimport \"google/api/annotations.proto\";\n\
             import \"common.proto\";\nservice {name} {{\n{rpcs}}}\n"
        )
    }

    fn rpc(name: &str, http: &str) -> String {
        format!(
            "  rpc {name}(c.Req) returns (c.Res) {{ option (google.api.http) = {{ {http} }}; }}\n"
        )
    }

    /// A reload makes again only the routes of the files it compiled again, takes the others' from
    /// the load before, and comes to the table a full build of the new pool makes: the same
    /// routes served (which of two files' bindings of one route serves included), the same
    /// warnings, every descriptor of the new pool.
    #[test]
    fn a_reload_makes_only_the_recompiled_files_routes_and_the_table_a_full_build_makes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let roots = [d.to_path_buf()];
        let a = |get: &str| {
            service(
                "a",
                "A",
                &[
                    rpc("Get", get),
                    rpc("List", "get: \"/v1/things\" response_body: \"text\""),
                ]
                .concat(),
            )
        };
        write(d, "common.proto", COMMON);
        write(d, "a.proto", &a("get: \"/v1/{name}\""));
        // B's Get repeats A's route: A's serves while a.proto declares it.
        write(
            d,
            "b.proto",
            &service(
                "b",
                "B",
                &[
                    rpc("Get", "get: \"/v1/{name}\""),
                    rpc("Sub", "post: \"/v2/{inner.id}\" body: \"parent\""),
                ]
                .concat(),
            ),
        );
        write(
            d,
            "d.proto",
            &service(
                "d",
                "D",
                &[
                    rpc("Bad", "get: \"/v1/d/{nope}\""),
                    rpc("Any", "post: \"/v1/d\" body: \"*\""),
                ]
                .concat(),
            ),
        );
        let load = || {
            let protos = crate::protos::load(d, &[]).unwrap();
            let routes = Routes::of(&protos, &roots);
            let full = Routes::build(&protos.pool, &roots);
            assert_eq!(table(&routes), table(&full));
            for r in routes.served() {
                assert!(r.method.parent_pool() == &protos.pool);
                for f in r.variables.iter().flatten() {
                    assert!(f.parent_pool() == &protos.pool);
                }
            }
            (protos, routes)
        };
        let (protos, routes) = load();
        assert!(protos.reloaded.is_none(), "the first load is cold");
        assert_eq!(routes.kept_files, 0);
        assert_eq!(routes.len(), 4);
        let (served, skipped) = table(&routes);
        assert!(
            served.iter().any(|r| r.contains("-> /a.A/Get")),
            "{served:?}"
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");

        // A's Get moves: B's binding of /v1/{name} serves now; b.proto and d.proto are kept.
        write(d, "a.proto", &a("get: \"/v1/a/{name}\""));
        let (protos, routes) = load();
        assert!(protos.reloaded.is_some(), "the reload is incremental");
        assert_eq!(routes.kept_files, 2);
        let (served, skipped) = table(&routes);
        assert!(
            served
                .iter()
                .any(|r| r.contains("GET /v1/{name} -> /b.B/Get")),
            "{served:?}"
        );
        assert!(
            served
                .iter()
                .any(|r| r.contains("GET /v1/a/{name} -> /a.A/Get")),
            "{served:?}"
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        let get = |path: &str| match routes.find(&http::Method::GET, path) {
            Lookup::Found(route, _) => route.grpc_path.clone(),
            _ => String::new(),
        };
        assert_eq!(get("/v1/x"), "/b.B/Get");
        assert_eq!(get("/v1/a/x"), "/a.A/Get");
        assert_eq!(get("/v1/things"), "/a.A/List");

        // A field every route's request has is renamed in the file they all import: every file is
        // compiled again, the `{name}` bindings skipped.
        write(
            d,
            "common.proto",
            &COMMON.replace("string name = 1", "string title = 1"),
        );
        let (_, routes) = load();
        assert_eq!(routes.kept_files, 0);
        let (served, skipped) = table(&routes);
        assert!(!served.iter().any(|r| r.contains("{name}")), "{served:?}");
        assert_eq!(skipped.len(), 3, "{skipped:?}");

        // Back as it was, and A's route back: A serves /v1/{name} again.
        write(d, "common.proto", COMMON);
        write(d, "a.proto", &a("get: \"/v1/{name}\""));
        let (_, routes) = load();
        assert_eq!(routes.kept_files, 0);
        assert_eq!(get_path(&routes, "/v1/x"), "/a.A/Get");
        // Nothing changed: every file's routes are kept.
        let (protos, routes) = load();
        assert!(protos.reloaded.is_some());
        assert_eq!(routes.kept_files, 3);
        assert_eq!(get_path(&routes, "/v1/x"), "/a.A/Get");
    }

    fn get_path(routes: &Routes, path: &str) -> String {
        match routes.find(&http::Method::GET, path) {
            Lookup::Found(route, _) => route.grpc_path.clone(),
            _ => String::new(),
        }
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
                for r in routes.served().filter(|r| r.verb.allows(&method)) {
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
