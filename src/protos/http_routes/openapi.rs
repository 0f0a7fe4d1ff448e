//! The OpenAPI 3.1 document (JSON) of the HTTP/JSON routes: one operation per served binding of
//! one or more route tables, its schemas taken from the descriptors the routes hold.
//!
//! It describes what the transcoding in `protocol::http_json` accepts and answers, as grpc-gateway's
//! protoc-gen-openapiv2 describes grpc-gateway:
//!
//! - a path template becomes an OpenAPI path with one parameter per variable, named by the field's
//!   JSON path (`{book.name=shelves/*/books/*}` → `{book.name}`); a variable of several segments
//!   or with `**` keeps its shape as the parameter's `pattern` (`^shelves/[^/]+/books/[^/]+$`,
//!   `**` as `.*`), and says that its `/` are sent as they are. A `*` or `**` outside any variable
//!   is a parameter bound to no field (`wildcard1`, `rest`). Two bindings that come to one
//!   path and HTTP method (`/v1/{name=projects/*}` and `/v1/{name=folders/*}`) are told apart as
//!   grpc-gateway does: the later one's parameters get a suffix (`{name_1}`), which changes nothing
//!   for the server (a parameter's name is not sent);
//! - the request fields neither the path nor the body takes are query parameters, nested
//!   singular messages by dotted name (`filter.author`), repeated scalars as arrays (`tags=a&tags=b`);
//!   maps, repeated messages and recursion into a type already on the path are left out, as the
//!   server cannot take them from a query either;
//! - `body: "*"` is the request message, `body: "field"` that field, each without the fields the
//!   path takes at their top level; the reply is the response message or its `response_body` field,
//!   a server stream `application/x-ndjson`; every error is a `google.rpc.Status`;
//! - schemas follow the proto3 JSON mapping: JSON field names, 64-bit integers as strings, enums by
//!   name, bytes as base64, well-known types in their JSON forms (inlined: they are not objects);
//! - operationId `Service_Method` (`Service_Method2`, … for additional bindings; the full service
//!   name when two loaded services share a simple name), one tag per service, summaries and
//!   descriptions from the protos' comments (read from the files' source info only for the
//!   files the document needs, so nothing is kept in the pool).
//!
//! [`document`] takes any number of route tables (each holding descriptors of its own pool: the
//! user's protos, and a built-in service's own), so one document can describe them all. It is
//! built on demand, never at load: on a large tree it costs seconds and megabytes that a server
//! nobody asks for its document should not pay.

use std::collections::{BTreeMap, HashMap, HashSet};

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use prost::Message as _;
use prost_reflect::{
    EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};
use serde_json::{json, Map, Value as Json};

use super::pattern::Segment;
use super::{BodyRule, Route, Routes, Verb};

/// The document's `info`.
#[derive(Clone, Debug)]
pub(crate) struct Info {
    pub title: String,
    pub version: String,
    pub description: String,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            title: "protodrop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "The HTTP/JSON routes protodrop serves, generated from the \
                          google.api.http annotations of the loaded protos."
                .into(),
        }
    }
}

/// The schema every error body has.
const STATUS: &str = "google.rpc.Status";
/// The response every operation answers an error with (a component, not a copy per operation).
const ERROR: &str = "Error";

/// The HTTP methods an OpenAPI path item has an operation for.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What `Verb::Any` (`custom { kind: "*" }`) is listed under.
const ANY: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// How deep query parameters go into nested messages.
const QUERY_DEPTH: usize = 8;

/// The OpenAPI document of the routes that serve in `tables`, in order (of two bindings coming to
/// one path and method, the earlier table's keeps the plain names).
pub(crate) fn document(tables: &[&Routes], info: &Info) -> String {
    let mut doc = Document::default();
    doc.schemas
        .insert(STATUS.into(), status_schema().to_string());
    let routes: Vec<Vec<&Route>> = tables.iter().map(|t| t.served().collect()).collect();
    // A service's simple name is its operations' prefix unless two services share it.
    let mut full_names: HashMap<&str, HashSet<&str>> = HashMap::new();
    for route in routes.iter().flatten() {
        let service = route.method.parent_service();
        full_names
            .entry(simple(service.full_name()))
            .or_default()
            .insert(service.full_name());
    }
    let ambiguous: HashSet<&str> = full_names
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(simple, _)| simple)
        .collect();
    for routes in &routes {
        let mut generator = Generator {
            doc: &mut doc,
            comments: Comments::default(),
            queue: Vec::new(),
        };
        let mut bindings: HashMap<&str, usize> = HashMap::new();
        for route in routes {
            let count = bindings.entry(&route.grpc_path).or_default();
            *count += 1;
            let service = route.method.parent_service();
            let prefix = match ambiguous.contains(simple(service.full_name())) {
                true => service.full_name(),
                false => service.name(),
            };
            let base = match *count {
                1 => format!("{prefix}_{}", route.method.name()),
                n => format!("{prefix}_{}{n}", route.method.name()),
            };
            generator.route(route, &base);
        }
        generator.schemas();
    }
    doc.write(info)
}

/// The last part of a dotted name.
fn simple(full_name: &str) -> &str {
    full_name.rsplit('.').next().unwrap_or(full_name)
}

/// The document as it is made. Each operation and schema is kept as JSON text from the moment it is
/// made: a `serde_json::Value` tree of the whole would take several times the text (googleapis'
/// document is tens of megabytes).
#[derive(Default)]
struct Document {
    /// Path → HTTP method → the operation, as JSON text.
    paths: BTreeMap<String, BTreeMap<&'static str, String>>,
    /// Schema name (the full proto name) → the schema, as JSON text.
    schemas: BTreeMap<String, String>,
    /// Services with an operation, in the order first met, with their comments.
    tags: Vec<(String, Option<String>)>,
    tagged: HashSet<String>,
    operation_ids: HashSet<String>,
    /// Bindings OpenAPI 3.1 cannot list, each with why.
    unlisted: Vec<String>,
}

impl Document {
    fn write(&self, info: &Info) -> String {
        let size: usize = self.schemas.values().map(|s| s.len() + 64).sum::<usize>()
            + self
                .paths
                .values()
                .flat_map(|p| p.values())
                .map(|o| o.len() + 64)
                .sum::<usize>();
        let mut out = String::with_capacity(size + 4096);
        let key = |out: &mut String, k: &str| {
            out.push_str(&Json::from(k).to_string());
            out.push(':');
        };
        out.push_str("{\"openapi\":\"3.1.0\",\"info\":");
        out.push_str(
            &json!({
                "title": info.title,
                "version": info.version,
                "description": info.description,
            })
            .to_string(),
        );
        let tags: Vec<Json> = self
            .tags
            .iter()
            .map(|(name, description)| match description {
                Some(d) => json!({ "name": name, "description": d }),
                None => json!({ "name": name }),
            })
            .collect();
        out.push_str(",\"tags\":");
        out.push_str(&Json::from(tags).to_string());
        out.push_str(",\"paths\":{");
        for (i, (path, operations)) in self.paths.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            key(&mut out, path);
            out.push('{');
            for (j, (method, operation)) in operations.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                key(&mut out, method);
                out.push_str(operation);
            }
            out.push('}');
        }
        out.push_str("},\"components\":{\"responses\":");
        out.push_str(&json!({ ERROR: error_response() }).to_string());
        out.push_str(",\"schemas\":{");
        for (i, (name, schema)) in self.schemas.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            key(&mut out, name);
            out.push_str(schema);
        }
        out.push_str("}}");
        if !self.unlisted.is_empty() {
            out.push_str(",\"x-protodrop-unlisted\":");
            out.push_str(&Json::from(self.unlisted.clone()).to_string());
        }
        out.push('}');
        out
    }
}

/// A message or enum a schema refers to, to be written in `components`.
enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

/// Makes one table's operations and the schemas they need.
struct Generator<'d> {
    doc: &'d mut Document,
    comments: Comments,
    queue: Vec<Named>,
}

/// One path parameter of an OpenAPI path.
#[derive(Debug)]
pub(crate) struct PathParam {
    pub name: String,
    /// The field it sets (from the request message); `None` for a `*` or `**` outside variables.
    pub field: Option<Vec<FieldDescriptor>>,
    /// The value's shape when it is more than one `*`.
    pub pattern: Option<String>,
    /// It may hold several segments.
    pub several: bool,
}

/// Characters of a literal segment that must be percent-encoded in an OpenAPI path.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// The OpenAPI path of `route` and its parameters, in the template's order; `suffix` (when not 0)
/// is appended to every parameter's name, to tell the path apart from another binding's.
pub(crate) fn openapi_path(route: &Route, suffix: usize) -> (String, Vec<PathParam>) {
    let template = &route.template;
    let segments = &template.segments;
    let mut path = String::new();
    let mut params: Vec<PathParam> = Vec::new();
    let mut wildcards = 0;
    let fields: HashSet<String> = route.variables.iter().map(|p| json_path(p)).collect();
    // A name for a `*` or `**` outside variables that no field's parameter has.
    let free = |base: String| {
        let mut name = base.clone();
        let mut n = 1;
        while fields.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        name
    };
    let named = |name: String| match suffix {
        0 => name,
        n => format!("{name}_{n}"),
    };
    let mut i = 0;
    while i < segments.len() {
        path.push('/');
        let variable = template.variables.iter().position(|v| v.span().start == i);
        let param = match variable {
            Some(k) => {
                let span = template.variables[k].span();
                let taken = &segments[span.clone()];
                i = span.end;
                let single = taken == [Segment::Single];
                PathParam {
                    name: named(json_path(&route.variables[k])),
                    field: Some(route.variables[k].clone()),
                    pattern: (!single).then(|| span_pattern(taken)),
                    several: taken.len() > 1 || taken.contains(&Segment::Rest),
                }
            }
            None => {
                i += 1;
                match &segments[i - 1] {
                    Segment::Literal(literal) => {
                        path.extend(utf8_percent_encode(literal, PATH));
                        continue;
                    }
                    Segment::Single => {
                        wildcards += 1;
                        PathParam {
                            name: named(free(format!("wildcard{wildcards}"))),
                            field: None,
                            pattern: None,
                            several: false,
                        }
                    }
                    Segment::Rest => PathParam {
                        name: named(free("rest".into())),
                        field: None,
                        pattern: Some("^.*$".into()),
                        several: true,
                    },
                }
            }
        };
        path.push('{');
        path.push_str(&param.name);
        path.push('}');
        params.push(param);
    }
    if let Some(verb) = &template.verb {
        path.push(':');
        path.extend(utf8_percent_encode(verb, PATH));
    }
    (path, params)
}

/// The regular expression of the value a variable's segments take: `*` one segment, `**` zero
/// or more (`projects/*/documents/**` → `^projects/[^/]+/documents(?:/.*)?$`).
pub(crate) fn span_pattern(segments: &[Segment]) -> String {
    let mut re = String::from("^");
    for (j, segment) in segments.iter().enumerate() {
        // The separator before a segment; `**` carries its own, being optional with it.
        let separator = match j {
            0 => "",
            1 if segments[0] == Segment::Rest => "",
            _ => "/",
        };
        match segment {
            Segment::Literal(literal) => {
                re.push_str(separator);
                re.push_str(&regex::escape(literal));
            }
            Segment::Single => {
                re.push_str(separator);
                re.push_str("[^/]+");
            }
            Segment::Rest if segments.len() == 1 => re.push_str(".*"),
            Segment::Rest if j == 0 => re.push_str("(?:.*/)?"),
            Segment::Rest => re.push_str("(?:/.*)?"),
        }
    }
    re.push('$');
    re
}

/// `a.b` in JSON names.
fn json_path(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(|f| f.json_name())
        .collect::<Vec<_>>()
        .join(".")
}

/// `a.b` in proto names.
fn proto_path(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(".")
}

impl Generator<'_> {
    /// The operations of one route (one, or several for `custom { kind: "*" }`).
    fn route(&mut self, route: &Route, base: &str) {
        let methods: Vec<&'static str> = match &route.verb {
            Verb::Method(m) => match METHODS.iter().find(|k| k.eq_ignore_ascii_case(m.as_str())) {
                Some(k) => vec![*k],
                None => {
                    self.doc.unlisted.push(format!(
                        "{} {} ({}): OpenAPI 3.1 lists no operation for the HTTP method {}",
                        route.verb,
                        route.pattern,
                        grpc_name(route),
                        route.verb
                    ));
                    return;
                }
            },
            Verb::Any => ANY.to_vec(),
        };
        for method in methods {
            // Suffixes until the path is free for this method (grpc-gateway's way).
            let mut suffix = 0;
            let (path, params) = loop {
                let (path, params) = openapi_path(route, suffix);
                let taken = self
                    .doc
                    .paths
                    .get(&path)
                    .is_some_and(|ops| ops.contains_key(method));
                if !taken {
                    break (path, params);
                }
                if params.is_empty() || suffix >= 1000 {
                    if route.verb != Verb::Any {
                        self.doc.unlisted.push(format!(
                            "{} {} ({}): {path} is listed for {method} already",
                            route.verb,
                            route.pattern,
                            grpc_name(route)
                        ));
                    }
                    return;
                }
                suffix += 1;
            };
            let id = self.operation_id(match (&route.verb, method) {
                (Verb::Any, m) => format!("{base}_{}", m.to_ascii_uppercase()),
                _ => base.to_string(),
            });
            let operation = self.operation(route, id, &params);
            self.doc
                .paths
                .entry(path)
                .or_default()
                .insert(method, operation.to_string());
        }
    }

    fn operation_id(&mut self, base: String) -> String {
        let mut id = base.clone();
        let mut n = 1;
        while !self.doc.operation_ids.insert(id.clone()) {
            n += 1;
            id = format!("{base}_{n}");
        }
        id
    }

    fn operation(&mut self, route: &Route, id: String, path_params: &[PathParam]) -> Json {
        let method = &route.method;
        let service = method.parent_service();
        if self.doc.tagged.insert(service.full_name().to_string()) {
            let comment = self
                .comments
                .of(&service.parent_file(), service.path())
                .map(str::to_string);
            self.doc
                .tags
                .push((service.full_name().to_string(), comment));
        }
        let mut op = Map::new();
        op.insert("tags".into(), json!([service.full_name()]));
        op.insert("operationId".into(), id.into());
        if let Some(comment) = self
            .comments
            .of(&method.parent_file(), method.path())
            .map(str::to_string)
        {
            let (summary, rest) = match comment.split_once("\n\n") {
                Some((first, rest)) => (first.replace('\n', " "), Some(rest)),
                None => (comment.replace('\n', " "), None),
            };
            op.insert("summary".into(), summary.into());
            if rest.is_some() {
                op.insert("description".into(), comment.clone().into());
            }
        }
        if deprecated(method) {
            op.insert("deprecated".into(), true.into());
        }
        let mut parameters: Vec<Json> =
            path_params.iter().map(|p| self.path_parameter(p)).collect();
        let input = method.input();
        let bound: HashSet<String> = route.variables.iter().map(|p| proto_path(p)).collect();
        match &route.body {
            BodyRule::Whole => {}
            BodyRule::None => self.query(
                &input,
                "",
                "",
                &bound,
                None,
                &mut Vec::new(),
                &mut parameters,
            ),
            BodyRule::Field(body) => self.query(
                &input,
                "",
                "",
                &bound,
                Some(body),
                &mut Vec::new(),
                &mut parameters,
            ),
        }
        if !parameters.is_empty() {
            op.insert("parameters".into(), parameters.into());
        }
        if let Some(body) = self.request_body(route) {
            op.insert("requestBody".into(), body);
        }
        op.insert("responses".into(), self.responses(route));
        op.insert("x-protodrop-method".into(), grpc_name(route).into());
        Json::Object(op)
    }

    fn path_parameter(&mut self, param: &PathParam) -> Json {
        let mut schema = match &param.field {
            Some(fields) => self.kind_schema(&fields[fields.len() - 1].kind()),
            None => json!({ "type": "string" }),
        };
        if let (Some(pattern), Some(object)) = (&param.pattern, schema.as_object_mut()) {
            if object.get("type") == Some(&Json::from("string")) {
                object.insert("pattern".into(), pattern.clone().into());
            }
        }
        let mut description = Vec::new();
        match &param.field {
            Some(fields) => {
                let leaf = &fields[fields.len() - 1];
                if let Some(c) = self.comments.of(&leaf.parent_file(), leaf.path()) {
                    description.push(c.to_string());
                }
                if param.name != json_path(fields) {
                    description.push(format!("Sets the field `{}`.", proto_path(fields)));
                }
            }
            None => description
                .push("Any value: the route takes it but sets no field with it.".to_string()),
        }
        if param.several {
            description.push(
                "The value may span several path segments: send its `/` as they are (an \
                 encoded `%2F` stays inside one segment)."
                    .to_string(),
            );
        }
        let mut out = json!({
            "name": param.name,
            "in": "path",
            "required": true,
            "schema": schema,
        });
        if !description.is_empty() {
            out["description"] = description.join("\n\n").into();
        }
        out
    }

    /// The query parameters of `desc`'s fields (under `json_prefix`/`proto_prefix`) that the path
    /// does not take, nor the body.
    #[allow(clippy::too_many_arguments)]
    fn query(
        &mut self,
        desc: &MessageDescriptor,
        json_prefix: &str,
        proto_prefix: &str,
        bound: &HashSet<String>,
        body: Option<&FieldDescriptor>,
        stack: &mut Vec<String>,
        out: &mut Vec<Json>,
    ) {
        stack.push(desc.full_name().to_string());
        for field in desc.fields() {
            if body.is_some_and(|b| *b == field) {
                continue;
            }
            let proto = format!("{proto_prefix}{}", field.name());
            if bound.contains(&proto) || field.is_map() {
                continue;
            }
            let name = format!("{json_prefix}{}", field.json_name());
            let leaf = match field.kind() {
                Kind::Message(inner) if !scalar_json(inner.full_name()) => {
                    if !field.is_list()
                        && stack.len() < QUERY_DEPTH
                        && !stack.iter().any(|s| s == inner.full_name())
                    {
                        self.query(
                            &inner,
                            &format!("{name}."),
                            &format!("{proto}."),
                            bound,
                            None,
                            stack,
                            out,
                        );
                    }
                    continue;
                }
                kind => self.kind_schema(&kind),
            };
            let schema = match field.is_list() {
                true => json!({ "type": "array", "items": leaf }),
                false => leaf,
            };
            let mut param = json!({ "name": name, "in": "query", "schema": schema });
            if let Some(c) = self.comments.of(&field.parent_file(), field.path()) {
                param["description"] = c.into();
            }
            out.push(param);
        }
        stack.pop();
    }

    fn request_body(&mut self, route: &Route) -> Option<Json> {
        let input = route.method.input();
        let schema = match &route.body {
            BodyRule::None => return None,
            BodyRule::Whole => {
                // Top-level fields the path takes are not in the body.
                let taken: Vec<&str> = route
                    .variables
                    .iter()
                    .filter(|p| p.len() == 1)
                    .map(|p| p[0].name())
                    .collect();
                match taken.is_empty() || well_known(input.full_name()).is_some() {
                    true => self.message_ref(&input),
                    false => self.message_schema(&input, &taken),
                }
            }
            BodyRule::Field(field) => {
                let taken: Vec<&str> = route
                    .variables
                    .iter()
                    .filter(|p| p.len() == 2 && p[0] == *field)
                    .map(|p| p[1].name())
                    .collect();
                match field.kind() {
                    Kind::Message(inner)
                        if !taken.is_empty() && !field.is_list() && !field.is_map() =>
                    {
                        let mut schema = self.message_schema(&inner, &taken);
                        if let Some(c) = self.comments.of(&field.parent_file(), field.path()) {
                            schema["description"] = c.into();
                        }
                        schema
                    }
                    _ => self.field_schema(field),
                }
            }
        };
        let mut body = json!({ "content": { "application/json": { "schema": schema } } });
        if route.method.is_client_streaming() {
            body["description"] =
                "A client stream: the body is a sequence of JSON values, one message each.".into();
        }
        Some(body)
    }

    fn responses(&mut self, route: &Route) -> Json {
        let schema = match &route.response_body {
            Some(field) => self.field_schema(field),
            None => self.message_ref(&route.method.output()),
        };
        let (content_type, description) = match route.method.is_server_streaming() {
            true => (
                "application/x-ndjson",
                "A server stream: one JSON value per line, each a message; an error after the \
                 first message ends the stream as a last line {\"error\": google.rpc.Status}.",
            ),
            false => ("application/json", "The reply."),
        };
        json!({
            "200": {
                "description": description,
                "content": { content_type: { "schema": schema } },
            },
            "default": { "$ref": format!("#/components/responses/{ERROR}") },
        })
    }

    /// The schema of one field's value, with its comment.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Json {
        let mut schema = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                let value = entry.map_entry_value_field();
                json!({ "type": "object", "additionalProperties": self.kind_schema(&value.kind()) })
            }
            kind if field.is_list() => json!({ "type": "array", "items": self.kind_schema(&kind) }),
            kind => self.kind_schema(&kind),
        };
        if let Some(c) = self.comments.of(&field.parent_file(), field.path()) {
            if let Some(object) = schema.as_object_mut() {
                object.insert("description".into(), c.into());
            }
        }
        schema
    }

    /// The schema of a value of `kind`, as proto3 JSON writes it.
    fn kind_schema(&mut self, kind: &Kind) -> Json {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "uint32", "minimum": 0 })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => bytes_schema(),
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => {
                json!({ "type": "null" })
            }
            Kind::Enum(e) => {
                self.need(Named::Enum(e.clone()), e.full_name());
                reference(e.full_name())
            }
            Kind::Message(m) => self.message_ref(m),
        }
    }

    /// A well-known type's JSON form, or a reference to the message's schema.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Json {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        self.need(Named::Message(message.clone()), message.full_name());
        reference(message.full_name())
    }

    fn need(&mut self, named: Named, name: &str) {
        if !self.doc.schemas.contains_key(name) {
            self.queue.push(named);
        }
    }

    /// A message as an object of its fields (but `without`), by JSON name.
    fn message_schema(&mut self, message: &MessageDescriptor, without: &[&str]) -> Json {
        let mut properties = Map::new();
        for field in message.fields() {
            if without.contains(&field.name()) {
                continue;
            }
            let schema = self.field_schema(&field);
            properties.insert(field.json_name().to_string(), schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if let Some(c) = self.comments.of(&message.parent_file(), message.path()) {
            schema["description"] = c.into();
        }
        schema
    }

    fn enum_schema(&mut self, desc: &EnumDescriptor) -> Json {
        let names: Vec<String> = desc.values().map(|v| v.name().to_string()).collect();
        let mut text = Vec::new();
        if let Some(c) = self.comments.of(&desc.parent_file(), desc.path()) {
            text.push(c.to_string());
        }
        let values: Vec<String> = desc
            .values()
            .filter_map(|v| {
                let c = self.comments.of(&v.parent_file(), v.path())?;
                Some(format!("- {}: {}", v.name(), c.replace('\n', " ")))
            })
            .collect();
        if !values.is_empty() {
            text.push(values.join("\n"));
        }
        let mut schema = json!({ "type": "string", "enum": names });
        if !text.is_empty() {
            schema["description"] = text.join("\n\n").into();
        }
        schema
    }

    /// Writes the schemas the operations named, and those they name in turn.
    fn schemas(&mut self) {
        while let Some(named) = self.queue.pop() {
            let (name, schema) = match &named {
                Named::Message(m) if self.doc.schemas.contains_key(m.full_name()) => continue,
                Named::Enum(e) if self.doc.schemas.contains_key(e.full_name()) => continue,
                Named::Message(m) => (m.full_name().to_string(), self.message_schema(m, &[])),
                Named::Enum(e) => (e.full_name().to_string(), self.enum_schema(e)),
            };
            self.doc.schemas.insert(name, schema.to_string());
        }
    }
}

fn reference(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn bytes_schema() -> Json {
    json!({ "type": "string", "format": "byte", "contentEncoding": "base64" })
}

/// `pkg.Service/Method`, as a handler rule's `method` names it.
fn grpc_name(route: &Route) -> &str {
    route.grpc_path.trim_start_matches('/')
}

fn deprecated(method: &MethodDescriptor) -> bool {
    method
        .options()
        .get_field_by_name("deprecated")
        .is_some_and(|v| v.as_bool() == Some(true))
}

/// Well-known types whose JSON form is not an object of their fields (and `Any`, which adds
/// `@type`), inlined wherever they are used.
pub(crate) fn well_known(full_name: &str) -> Option<Json> {
    let integer = |format: &str| json!({ "type": "integer", "format": format });
    Some(match full_name.strip_prefix("google.protobuf.")? {
        "Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" }),
        "FieldMask" => json!({ "type": "string" }),
        "Struct" => json!({ "type": "object" }),
        "Value" => json!({}),
        "ListValue" => json!({ "type": "array", "items": {} }),
        "Empty" => json!({ "type": "object" }),
        "Any" => any_schema(),
        "DoubleValue" => json!({ "type": "number", "format": "double" }),
        "FloatValue" => json!({ "type": "number", "format": "float" }),
        "Int64Value" => json!({ "type": "string", "format": "int64" }),
        "UInt64Value" => json!({ "type": "string", "format": "uint64" }),
        "Int32Value" => integer("int32"),
        "UInt32Value" => json!({ "type": "integer", "format": "uint32", "minimum": 0 }),
        "BoolValue" => json!({ "type": "boolean" }),
        "StringValue" => json!({ "type": "string" }),
        "BytesValue" => bytes_schema(),
        _ => return None,
    })
}

/// The well-known types a query parameter sets from one text value (as `http_json::request`).
fn scalar_json(full_name: &str) -> bool {
    full_name != "google.protobuf.Struct"
        && full_name != "google.protobuf.ListValue"
        && full_name != "google.protobuf.Any"
        && full_name != "google.protobuf.Empty"
        && well_known(full_name).is_some()
}

fn any_schema() -> Json {
    json!({
        "type": "object",
        "description": "A message of any type: `@type` names it (type.googleapis.com/NAME), its fields follow.",
        "properties": { "@type": { "type": "string" } },
        "required": ["@type"],
    })
}

/// Every operation's `default` response.
fn error_response() -> Json {
    json!({
        "description": "An error: the HTTP status of its gRPC code, the google.rpc.Status as JSON.",
        "content": { "application/json": { "schema": reference(STATUS) } },
    })
}

/// `google.rpc.Status` as every error body is written.
fn status_schema() -> Json {
    json!({
        "type": "object",
        "description": "An error: its gRPC code (google.rpc.Code), a message, and details.",
        "properties": {
            "code": { "type": "integer", "format": "int32" },
            "message": { "type": "string" },
            "details": { "type": "array", "items": any_schema() },
        },
    })
}

/// `FileDescriptorProto` with only its `source_code_info`: the rest of an encoded file is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct SourceOnly {
    #[prost(message, optional, tag = "9")]
    source_code_info: Option<prost_types::SourceCodeInfo>,
}

/// Each file's comments by descriptor path, read from its source info once it is needed.
#[derive(Default)]
struct Comments {
    by_file: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.by_file
            .entry(file.name().to_string())
            .or_insert_with(|| read_comments(file))
            .get(path)
            .map(String::as_str)
    }
}

fn read_comments(file: &FileDescriptor) -> HashMap<Vec<i32>, String> {
    let Ok(only) = SourceOnly::decode(file.encode_to_vec().as_slice()) else {
        return HashMap::new();
    };
    let Some(info) = only.source_code_info else {
        return HashMap::new();
    };
    info.location
        .into_iter()
        .filter_map(|l| {
            let text = l.leading_comments.or(l.trailing_comments)?;
            Some((l.path, clean_comment(&text)?))
        })
        .collect()
}

/// A comment as prose: each line's leading space gone, `(-- internal --)` notes (googleapis'
/// linter directives) left out, paragraphs kept.
pub(crate) fn clean_comment(text: &str) -> Option<String> {
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("(--") {
        kept.push_str(&rest[..start]);
        match rest[start..].find("--)") {
            Some(end) => rest = &rest[start + end + 3..],
            None => {
                rest = "";
            }
        }
    }
    kept.push_str(rest);
    let lines: Vec<&str> = kept
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect();
    let mut out = String::new();
    let mut blank = false;
    for line in lines {
        if line.trim().is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank { "\n\n" } else { "\n" });
        }
        blank = false;
        out.push_str(line);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with every kind of field, well-known types, comments, and bindings of each kind.
    const PROTO: &str = r#"syntax = "proto3";
package lib.v1;
import "google/api/annotations.proto";
import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// Kinds of books.
enum Kind {
  KIND_UNSPECIFIED = 0;
  // A long story.
  NOVEL = 1;
}

// A book on a shelf.
message Book {
  // Resource name: shelves/*/books/*.
  string name = 1;
  int32 pages = 2;
  uint32 copies = 3;
  int64 words = 4;
  uint64 isbn = 5;
  double rating = 6;
  float weight = 7;
  bool signed = 8;
  bytes cover = 9;
  Kind kind = 10;
  repeated string tags = 11;
  map<string, int64> counts = 12;
  google.protobuf.Timestamp published = 13;
  google.protobuf.Duration read_time = 14;
  google.protobuf.FieldMask mask = 15;
  google.protobuf.Struct extra = 16;
  google.protobuf.Value anything = 17;
  google.protobuf.Any attachment = 18;
  google.protobuf.Int64Value big = 19;
  google.protobuf.BoolValue flag = 20;
  google.protobuf.NullValue nothing = 21;
  Book sequel = 22;
  repeated Book related = 23;
  fixed64 fixed = 24;
  sint32 delta = 25;
  map<int32, Book> by_page = 26;
}

message Filter { string author = 1; Kind kind = 2; Filter nested = 3; google.protobuf.Timestamp since = 4; }
message GetBookRequest { string name = 1; Filter filter = 2; repeated string fields = 3; map<string, string> labels = 4; repeated Filter more = 5; }
message UpdateBookRequest { Book book = 1; google.protobuf.FieldMask update_mask = 2; }
message CreateBookRequest { string parent = 1; Book book = 2; string book_id = 3; }
message ListBooksResponse { repeated Book books = 1; string next_page_token = 2; }

// Books, shelved.
service Library {
  // Gets a book.
  //
  // Any book, (-- api-linter: core::0131=disabled --)on any shelf.
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/{name=archives/*/books/*}" }
    };
  }
  rpc UpdateBook(UpdateBookRequest) returns (Book) {
    option (google.api.http) = { patch: "/v1/{book.name=shelves/*/books/*}" body: "book" };
  }
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/{parent=shelves/*}/books" body: "*" };
  }
  rpc MoveBook(GetBookRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { post: "/v1/{name=shelves/*/books/*}:move" body: "*" };
  }
  rpc ListBooks(CreateBookRequest) returns (ListBooksResponse) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*/docs/**}/books" response_body: "books" };
  }
  rpc WatchBooks(GetBookRequest) returns (stream Book) {
    option (google.api.http) = { get: "/v1/watch/*/{name=**}" };
  }
  rpc Anything(GetBookRequest) returns (Book) {
    option (google.api.http) = { custom { kind: "*" path: "/v1/any/{name}" } };
  }
  rpc Listing(GetBookRequest) returns (Book) {
    option (google.api.http) = { custom { kind: "LIST" path: "/v1/list" } };
  }
  rpc Old(GetBookRequest) returns (Book) {
    option deprecated = true;
    option (google.api.http) = { get: "/v1/old/{name}" };
  }
}
"#;

    const OTHER: &str = r#"syntax = "proto3";
package other.v2;
import "google/api/annotations.proto";
message M { string name = 1; }
service Library {
  rpc GetBook(M) returns (M) { option (google.api.http) = { get: "/v2/{name=shelves/*/books/*}" }; }
}
"#;

    fn document_of(files: &[(&str, &str)]) -> Json {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let protos = crate::protos::load(dir.path(), &[]).unwrap();
        let routes = Routes::build(&protos.pool, &[dir.path().to_path_buf()]);
        let text = document(&[&routes], &Info::default());
        serde_json::from_str(&text).expect("the document is JSON")
    }

    fn library() -> Json {
        document_of(&[("lib.proto", PROTO)])
    }

    fn names(params: &Json) -> Vec<String> {
        params
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        format!(
                            "{}:{}",
                            p["in"].as_str().unwrap(),
                            p["name"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn fields_are_written_as_proto3_json_writes_them() {
        let doc = library();
        let book = &doc["components"]["schemas"]["lib.v1.Book"];
        assert_eq!(book["type"], "object");
        assert_eq!(book["description"], "A book on a shelf.");
        let p = &book["properties"];
        assert_eq!(
            p["name"]["description"],
            "Resource name: shelves/*/books/*."
        );
        assert_eq!(p["pages"], json!({"type": "integer", "format": "int32"}));
        assert_eq!(p["copies"]["type"], "integer");
        assert_eq!(p["copies"]["minimum"], 0);
        assert_eq!(p["words"], json!({"type": "string", "format": "int64"}));
        assert_eq!(p["isbn"], json!({"type": "string", "format": "uint64"}));
        assert_eq!(p["fixed"], json!({"type": "string", "format": "uint64"}));
        assert_eq!(p["delta"], json!({"type": "integer", "format": "int32"}));
        assert_eq!(p["rating"], json!({"type": "number", "format": "double"}));
        assert_eq!(p["weight"], json!({"type": "number", "format": "float"}));
        assert_eq!(p["signed"], json!({"type": "boolean"}));
        assert_eq!(p["cover"]["contentEncoding"], "base64");
        assert_eq!(
            p["kind"],
            json!({"$ref": "#/components/schemas/lib.v1.Kind"})
        );
        assert_eq!(
            p["tags"],
            json!({"type": "array", "items": {"type": "string"}})
        );
        assert_eq!(
            p["counts"],
            json!({"type": "object", "additionalProperties": {"type": "string", "format": "int64"}})
        );
        assert_eq!(
            p["byPage"]["additionalProperties"],
            json!({"$ref": "#/components/schemas/lib.v1.Book"})
        );
        // JSON names, not proto names.
        assert!(p.get("read_time").is_none());
        assert_eq!(p["readTime"]["type"], "string");
        assert!(p["readTime"]["pattern"].as_str().unwrap().ends_with("s$"));
        assert_eq!(
            p["published"],
            json!({"type": "string", "format": "date-time"})
        );
        assert_eq!(p["mask"], json!({"type": "string"}));
        assert_eq!(p["extra"], json!({"type": "object"}));
        assert_eq!(p["anything"], json!({}));
        assert_eq!(p["attachment"]["required"], json!(["@type"]));
        assert_eq!(p["big"], json!({"type": "string", "format": "int64"}));
        assert_eq!(p["flag"], json!({"type": "boolean"}));
        assert_eq!(p["nothing"], json!({"type": "null"}));
        assert_eq!(
            p["sequel"],
            json!({"$ref": "#/components/schemas/lib.v1.Book"})
        );
        assert_eq!(
            p["related"]["items"]["$ref"],
            "#/components/schemas/lib.v1.Book"
        );
        // Well-known types are inlined, never components.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(
            schemas.keys().all(|k| !k.starts_with("google.protobuf.")),
            "{:?}",
            schemas.keys()
        );
        let kind = &schemas["lib.v1.Kind"];
        assert_eq!(kind["enum"], json!(["KIND_UNSPECIFIED", "NOVEL"]));
        assert_eq!(kind["type"], "string");
        assert!(kind["description"]
            .as_str()
            .unwrap()
            .contains("- NOVEL: A long story."));
        assert_eq!(
            schemas["google.rpc.Status"]["properties"]["code"]["type"],
            "integer"
        );
    }

    #[test]
    fn templates_become_paths_with_one_parameter_per_variable() {
        let doc = library();
        let paths = doc["paths"].as_object().unwrap();
        let mut keys: Vec<&String> = paths.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "/v1/any/{name}",
                "/v1/old/{name}",
                "/v1/watch/{wildcard1}/{name}",
                "/v1/{book.name}",
                "/v1/{name_1}",
                "/v1/{name}",
                "/v1/{name}:move",
                "/v1/{parent}/books",
            ]
        );
        let get = &paths["/v1/{name}"]["get"];
        assert_eq!(get["operationId"], "Library_GetBook");
        let name = &get["parameters"][0];
        assert_eq!(name["in"], "path");
        assert_eq!(name["required"], true);
        assert_eq!(name["schema"]["pattern"], "^shelves/[^/]+/books/[^/]+$");
        assert!(name["description"]
            .as_str()
            .unwrap()
            .contains("send its `/` as they are"));
        // The additional binding: same path shape and method, told apart by the suffix.
        let other = &paths["/v1/{name_1}"]["get"];
        assert_eq!(other["operationId"], "Library_GetBook2");
        assert_eq!(
            other["parameters"][0]["schema"]["pattern"],
            "^archives/[^/]+/books/[^/]+$"
        );
        assert!(other["parameters"][0]["description"]
            .as_str()
            .unwrap()
            .contains("Sets the field `name`."));
        // `**` in a variable, followed by more segments.
        let list = &paths["/v1/{parent}/books"]["get"];
        assert_eq!(
            list["parameters"][0]["schema"]["pattern"],
            "^shelves/[^/]+/docs(?:/.*)?$"
        );
        // A `*` outside variables, and a variable that is all `**`.
        let watch = &paths["/v1/watch/{wildcard1}/{name}"]["get"];
        assert_eq!(
            names(&watch["parameters"])[..2],
            ["path:wildcard1", "path:name"]
        );
        assert_eq!(watch["parameters"][1]["schema"]["pattern"], "^.*$");
        // custom "*": every method; custom "LIST": not listable.
        let any = paths["/v1/any/{name}"].as_object().unwrap();
        let mut methods: Vec<&String> = any.keys().collect();
        methods.sort();
        assert_eq!(methods, ["delete", "get", "patch", "post", "put"]);
        assert_eq!(any["get"]["operationId"], "Library_Anything_GET");
        let unlisted = doc["x-protodrop-unlisted"].as_array().unwrap();
        assert!(
            unlisted[0].as_str().unwrap().contains("LIST /v1/list"),
            "{unlisted:?}"
        );
        assert_eq!(paths["/v1/old/{name}"]["get"]["deprecated"], true);
    }

    #[test]
    fn span_patterns_take_double_star_as_zero_or_more_segments() {
        let segments = |t: &str| super::super::pattern::Template::parse(t).unwrap().segments;
        let re = |t: &str| regex::Regex::new(&span_pattern(&segments(t))).unwrap();
        let firestore = re("/projects/*/documents/**");
        assert!(firestore.is_match("projects/p/documents"));
        assert!(firestore.is_match("projects/p/documents/a/b"));
        assert!(!firestore.is_match("projects/p/documentsX"));
        assert!(!firestore.is_match("projects/p/q/documents"));
        let bots = re("/**/botSessions/*");
        assert!(bots.is_match("botSessions/1"));
        assert!(bots.is_match("a/b/botSessions/1"));
        assert!(!bots.is_match("xbotSessions/1"));
        let middle = re("/x/**/y");
        assert!(middle.is_match("x/y") && middle.is_match("x/a/b/y"));
        assert!(!middle.is_match("x/ay"));
        assert_eq!(span_pattern(&segments("/a.b/*")), "^a\\.b/[^/]+$");
    }

    #[test]
    fn query_parameters_are_the_fields_neither_path_nor_body_takes() {
        let doc = library();
        let paths = &doc["paths"];
        // GET: every field but the path's; nested messages by dotted JSON names, down to a
        // message already on the way; maps and repeated messages left out.
        let get = names(&paths["/v1/{name}"]["get"]["parameters"]);
        assert_eq!(
            get,
            [
                "path:name",
                "query:filter.author",
                "query:filter.kind",
                "query:filter.since",
                "query:fields",
            ]
        );
        let fields = &paths["/v1/{name}"]["get"]["parameters"][4];
        assert_eq!(
            fields["schema"],
            json!({"type": "array", "items": {"type": "string"}})
        );
        // body "field": the other fields are query parameters.
        let patch = &paths["/v1/{book.name}"]["patch"];
        assert_eq!(
            names(&patch["parameters"]),
            ["path:book.name", "query:updateMask"]
        );
        // body "*": no query parameters.
        let create = &paths["/v1/{parent}/books"]["post"];
        assert_eq!(names(&create["parameters"]), ["path:parent"]);
    }

    #[test]
    fn bodies_and_replies_follow_body_and_response_body() {
        let doc = library();
        let paths = &doc["paths"];
        // body "*" without the field the path takes.
        let create = &paths["/v1/{parent}/books"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        let props = create["properties"].as_object().unwrap();
        let mut keys: Vec<&String> = props.keys().collect();
        keys.sort();
        assert_eq!(keys, ["book", "bookId"]);
        // body "book", whose name the path takes.
        let patch = &paths["/v1/{book.name}"]["patch"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert!(patch["properties"].get("name").is_none());
        assert!(patch["properties"].get("pages").is_some());
        // No body on a GET.
        assert!(paths["/v1/{name}"]["get"].get("requestBody").is_none());
        // response_body: the field's schema.
        let list = &paths["/v1/{parent}/books"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"];
        assert_eq!(list["type"], "array");
        assert_eq!(list["items"]["$ref"], "#/components/schemas/lib.v1.Book");
        // Empty is an object; a server stream is NDJSON; errors are google.rpc.Status.
        let moved = &paths["/v1/{name}:move"]["post"]["responses"];
        assert_eq!(
            moved["200"]["content"]["application/json"]["schema"],
            json!({"type": "object"})
        );
        assert_eq!(moved["default"]["$ref"], "#/components/responses/Error");
        assert_eq!(
            doc["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/google.rpc.Status"
        );
        let watch = &paths["/v1/watch/{wildcard1}/{name}"]["get"]["responses"]["200"]["content"];
        assert!(watch.get("application/x-ndjson").is_some(), "{watch}");
    }

    #[test]
    fn operations_are_tagged_and_summarised_from_comments() {
        let doc = library();
        let get = &doc["paths"]["/v1/{name}"]["get"];
        assert_eq!(get["tags"], json!(["lib.v1.Library"]));
        assert_eq!(get["summary"], "Gets a book.");
        // The linter's note is left out.
        assert_eq!(
            get["description"],
            "Gets a book.\n\nAny book, on any shelf."
        );
        assert_eq!(get["x-protodrop-method"], "lib.v1.Library/GetBook");
        assert_eq!(
            doc["tags"],
            json!([{ "name": "lib.v1.Library", "description": "Books, shelved." }])
        );
    }

    #[test]
    fn services_sharing_a_simple_name_are_told_apart_by_their_full_name() {
        let doc = document_of(&[("lib.proto", PROTO), ("other.proto", OTHER)]);
        let v1 = &doc["paths"]["/v1/{name}"]["get"]["operationId"];
        let v2 = &doc["paths"]["/v2/{name}"]["get"]["operationId"];
        assert_eq!(v1, "lib.v1.Library_GetBook");
        assert_eq!(v2, "other.v2.Library_GetBook");
    }

    #[test]
    fn several_tables_make_one_document() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lib.proto"), PROTO).unwrap();
        let lib = crate::protos::load(dir.path(), &[]).unwrap();
        let lib = Routes::build(&lib.pool, &[dir.path().to_path_buf()]);
        let other_dir = tempfile::tempdir().unwrap();
        std::fs::write(other_dir.path().join("other.proto"), OTHER).unwrap();
        let other = crate::protos::load(other_dir.path(), &[]).unwrap();
        let other = Routes::build(&other.pool, &[other_dir.path().to_path_buf()]);
        let doc: Json = serde_json::from_str(&document(&[&lib, &other], &Info::default())).unwrap();
        assert!(doc["paths"]["/v2/{name}"]["get"].is_object());
        assert!(doc["paths"]["/v1/{name}"]["get"].is_object());
        assert!(doc["components"]["schemas"]["other.v2.M"].is_object());
        assert!(doc["components"]["schemas"]["lib.v1.Book"].is_object());
    }

    #[test]
    fn comments_lose_their_leading_space_and_linter_notes() {
        assert_eq!(
            clean_comment(" One line.\n Two (-- hidden\n note --)lines.\n\n Next.\n").as_deref(),
            Some("One line.\nTwo lines.\n\nNext.")
        );
        assert_eq!(clean_comment(" (-- only a note --)\n"), None);
    }
}
