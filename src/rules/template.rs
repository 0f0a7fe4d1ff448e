//! `{{path}}` templates: parsed and type-checked against the descriptors when handlers load, rendered
//! per call into `DynamicMessage`s.
//!
//! A string that is exactly one template keeps the value's own type (a whole sub-message, a number);
//! any other string is text with values written into it.

use std::borrow::Cow;

use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use tonic::metadata::MetadataMap;

/// What a template can see during one call.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub request: Option<&'a DynamicMessage>,
    pub first: Option<&'a DynamicMessage>,
    pub count: Option<u64>,
    pub item: Option<&'a Value>,
    pub index: Option<u64>,
    pub metadata: &'a MetadataMap,
}

impl<'a> Scope<'a> {
    pub(crate) fn new(request: Option<&'a DynamicMessage>, metadata: &'a MetadataMap) -> Self {
        Self {
            request,
            first: None,
            count: None,
            item: None,
            index: None,
            metadata,
        }
    }
}

/// The static type a path ends at, as far as load-time checks need it.
#[derive(Clone, Debug)]
pub(crate) enum Ty {
    /// A value of one protobuf kind; `list` when it is a whole repeated field.
    Proto {
        kind: Kind,
        list: bool,
        map: bool,
    },
    Number,
    Text,
}

impl Ty {
    fn describe(&self) -> String {
        match self {
            Ty::Proto {
                list: true, kind, ..
            } => format!("a list of {}", kind_name(kind)),
            Ty::Proto { map: true, .. } => "a map".into(),
            Ty::Proto { kind, .. } => kind_name(kind),
            Ty::Number => "a number".into(),
            Ty::Text => "a string".into(),
        }
    }
}

/// Names of the template roots available where a template is written, with their types.
#[derive(Clone, Debug, Default)]
pub(crate) struct Roots {
    /// `request` (and `first` when `first` is set): the input message type.
    pub request: Option<MessageDescriptor>,
    pub first: bool,
    pub count: bool,
    /// `item`: the element kind of the `for_each` list.
    pub item: Option<Kind>,
    pub index: bool,
}

impl Roots {
    fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.request.is_some() {
            v.push("request");
        }
        if self.first {
            v.push("first");
        }
        if self.count {
            v.push("count");
        }
        if self.item.is_some() {
            v.push("item");
        }
        if self.index {
            v.push("index");
        }
        v.push("metadata.KEY");
        v
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Root {
    Request,
    First,
    Count,
    Item,
    Index,
    Metadata(String),
}

#[derive(Clone, Debug)]
pub(crate) enum Step {
    Field(FieldDescriptor),
    Index(usize),
}

/// A checked path such as `request.lo.latitude`.
#[derive(Clone, Debug)]
pub(crate) struct Path {
    text: String,
    pub(crate) root: Root,
    pub(crate) steps: Vec<Step>,
    pub ty: Ty,
}

impl Path {
    /// Parses and checks `text` against the roots available here.
    pub(crate) fn parse(text: &str, roots: &Roots) -> Result<Path, String> {
        let text = text.trim();
        let mut parts = text.split('.');
        let head = parts.next().unwrap_or_default();
        let unknown_root = || {
            format!(
                "unknown template value '{text}': available here are {}",
                roots.names().join(", ")
            )
        };
        let (root, mut ty) = match head {
            "request" | "first" => {
                let desc = roots.request.clone().ok_or_else(unknown_root)?;
                if head == "first" && !roots.first {
                    return Err(unknown_root());
                }
                let root = if head == "first" {
                    Root::First
                } else {
                    Root::Request
                };
                (
                    root,
                    Ty::Proto {
                        kind: Kind::Message(desc),
                        list: false,
                        map: false,
                    },
                )
            }
            "count" if roots.count => (Root::Count, Ty::Number),
            "index" if roots.index => (Root::Index, Ty::Number),
            "item" => {
                let kind = roots.item.clone().ok_or_else(unknown_root)?;
                (
                    Root::Item,
                    Ty::Proto {
                        kind,
                        list: false,
                        map: false,
                    },
                )
            }
            "metadata" => {
                let key: Vec<&str> = parts.collect();
                if key.is_empty() || key.iter().any(|k| k.is_empty()) {
                    return Err(format!(
                        "'{text}': write metadata.KEY, e.g. metadata.x-user"
                    ));
                }
                let key = key.join(".").to_ascii_lowercase();
                return Ok(Path {
                    text: text.to_string(),
                    root: Root::Metadata(key),
                    steps: vec![],
                    ty: Ty::Text,
                });
            }
            _ => return Err(unknown_root()),
        };
        let mut steps = Vec::new();
        for part in parts {
            match &ty {
                Ty::Proto {
                    kind: _,
                    list: true,
                    ..
                }
                | Ty::Proto {
                    kind: _, map: true, ..
                } => {
                    let Ty::Proto { kind, map, .. } = &ty else {
                        unreachable!()
                    };
                    if *map {
                        return Err(format!(
                            "'{text}': cannot index into a map field with '{part}'"
                        ));
                    }
                    let i: usize = part
                        .parse()
                        .map_err(|_| format!("'{text}': '{part}' is not a list index (0, 1, …)"))?;
                    steps.push(Step::Index(i));
                    ty = Ty::Proto {
                        kind: kind.clone(),
                        list: false,
                        map: false,
                    };
                }
                Ty::Proto {
                    kind: Kind::Message(desc),
                    ..
                } => {
                    let field = find_field(desc, part).ok_or_else(|| {
                        format!(
                            "'{text}': {} has no field '{part}' (fields: {})",
                            desc.full_name(),
                            field_names(desc)
                        )
                    })?;
                    ty = Ty::Proto {
                        kind: field.kind(),
                        list: field.is_list(),
                        map: field.is_map(),
                    };
                    steps.push(Step::Field(field));
                }
                other => {
                    return Err(format!(
                        "'{text}': {} has no field '{part}'",
                        other.describe()
                    ))
                }
            }
        }
        Ok(Path {
            text: text.to_string(),
            root,
            steps,
            ty,
        })
    }

    /// The value at this path in `scope`; unset fields give their defaults, indexes past the end `None`.
    pub(crate) fn resolve<'s>(&self, scope: &Scope<'s>) -> Option<Cow<'s, Value>> {
        let mut current: Cow<'s, Value> = match &self.root {
            Root::Request => return resolve_in(scope.request?, &self.steps),
            Root::First => return resolve_in(scope.first?, &self.steps),
            Root::Count => Cow::Owned(Value::U64(scope.count?)),
            Root::Index => Cow::Owned(Value::U64(scope.index?)),
            Root::Metadata(key) => Cow::Owned(Value::String(
                super::metadata::text(scope.metadata, key)?.into_owned(),
            )),
            Root::Item => Cow::Borrowed(scope.item?),
        };
        for step in &self.steps {
            current = step_into(current, step)?;
        }
        Some(current)
    }

    /// [`Path::resolve`] for a value put whole into a field of `kind`: binary (`-bin`) metadata
    /// goes into a `bytes` field as its bytes, not as its base64 text.
    fn resolve_into(&self, scope: &Scope<'_>, kind: &Kind) -> Option<Value> {
        if let (Root::Metadata(key), Kind::Bytes) = (&self.root, kind) {
            if super::metadata::is_binary(key) {
                return super::metadata::bytes(scope.metadata, key).map(Value::Bytes);
            }
        }
        self.resolve(scope).map(Cow::into_owned)
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The field the path ends at, and whether it ends at one element of it (`xs.0`).
    pub(crate) fn last_field(&self) -> Option<(FieldDescriptor, bool)> {
        match self.steps.as_slice() {
            [.., Step::Field(f)] => Some((f.clone(), false)),
            [.., Step::Field(f), Step::Index(_)] => Some((f.clone(), true)),
            _ => None,
        }
    }

    /// Whether the field at the path is set: a sub-message present, a scalar not default, a list not empty.
    pub(crate) fn is_present(&self, scope: &Scope<'_>) -> bool {
        match self.steps.split_last() {
            Some((Step::Field(f), [])) if matches!(self.root, Root::Request | Root::First) => {
                let message = if matches!(self.root, Root::Request) {
                    scope.request
                } else {
                    scope.first
                };
                message.is_some_and(|m| m.has_field(f))
            }
            Some((Step::Field(f), parent_steps)) => {
                let parent = Path {
                    steps: parent_steps.to_vec(),
                    ..self.clone()
                };
                match parent.resolve(scope).as_deref() {
                    Some(Value::Message(m)) => m.has_field(f),
                    _ => false,
                }
            }
            Some((Step::Index(_), _)) => self.resolve(scope).is_some(),
            None => match self.root {
                Root::Request | Root::First => true,
                _ => self.resolve(scope).is_some(),
            },
        }
    }
}

fn resolve_in<'s>(message: &'s DynamicMessage, steps: &[Step]) -> Option<Cow<'s, Value>> {
    let Some((Step::Field(first), rest)) = steps.split_first() else {
        // `request` itself. Cloning here is what "copy the whole request" costs.
        return Some(Cow::Owned(Value::Message(message.clone())));
    };
    let mut current = message.get_field(first);
    for step in rest {
        current = step_into(current, step)?;
    }
    Some(current)
}

fn step_into<'s>(value: Cow<'s, Value>, step: &Step) -> Option<Cow<'s, Value>> {
    match (value, step) {
        (Cow::Borrowed(Value::Message(m)), Step::Field(f)) => Some(m.get_field(f)),
        (Cow::Owned(Value::Message(m)), Step::Field(f)) => {
            Some(Cow::Owned(m.get_field(f).into_owned()))
        }
        (Cow::Borrowed(Value::List(l)), Step::Index(i)) => l.get(*i).map(Cow::Borrowed),
        (Cow::Owned(Value::List(mut l)), Step::Index(i)) => {
            (*i < l.len()).then(|| Cow::Owned(l.swap_remove(*i)))
        }
        _ => None,
    }
}

/// Finds a field by its proto name or its JSON name.
pub(crate) fn find_field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

pub(crate) fn field_names(desc: &MessageDescriptor) -> String {
    let names: Vec<String> = desc.fields().map(|f| f.name().to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub(crate) fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A string with `{{path}}` holes.
#[derive(Clone, Debug)]
pub(crate) struct Text {
    pub(crate) parts: Vec<Part>,
}

#[derive(Clone, Debug)]
pub(crate) enum Part {
    Literal(String),
    Value(Path),
}

impl Text {
    /// Parses `s`; errors give a message and the byte offset in `s` they are about.
    pub(crate) fn parse(s: &str, roots: &Roots) -> Result<Text, (String, usize)> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            let Some(close) = rest[open..].find("}}") else {
                return Err(("'{{' without a closing '}}'".into(), offset + open));
            };
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let inner = &rest[open + 2..open + close];
            parts.push(Part::Value(
                Path::parse(inner, roots).map_err(|e| (e, offset + open))?,
            ));
            offset += open + close + 2;
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Text { parts })
    }

    /// The text of one value.
    pub(crate) fn whole(path: Path) -> Text {
        Text {
            parts: vec![Part::Value(path)],
        }
    }

    /// The single path when the string is exactly one `{{path}}`.
    pub(crate) fn as_whole(&self) -> Option<&Path> {
        match self.parts.as_slice() {
            [Part::Value(p)] => Some(p),
            _ => None,
        }
    }

    pub(crate) fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    pub(crate) fn render(&self, scope: &Scope<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Value(p) => {
                    if let Some(v) = p.resolve(scope) {
                        write_text(&mut out, &v, &p.ty);
                    }
                }
            }
            // Stop building as soon as the text cannot fit the call's budget.
            if !crate::budget::fits(out.len()) {
                break;
            }
        }
        out
    }
}

/// A value written into text: strings as they are, numbers in decimal, enums by name, messages as JSON.
fn write_text(out: &mut String, value: &Value, ty: &Ty) {
    use std::fmt::Write;
    let enum_kind = match ty {
        Ty::Proto {
            kind: Kind::Enum(e),
            ..
        } => Some(e),
        _ => None,
    };
    match value {
        Value::String(s) => out.push_str(s),
        Value::Bool(b) => write!(out, "{b}").unwrap(),
        Value::I32(n) => write!(out, "{n}").unwrap(),
        Value::I64(n) => write!(out, "{n}").unwrap(),
        Value::U32(n) => write!(out, "{n}").unwrap(),
        Value::U64(n) => write!(out, "{n}").unwrap(),
        Value::F32(n) => write!(out, "{n}").unwrap(),
        Value::F64(n) => write!(out, "{n}").unwrap(),
        Value::Bytes(b) => out.push_str(&String::from_utf8_lossy(b)),
        Value::EnumNumber(n) => match enum_kind.and_then(|e| e.get_value(*n)) {
            Some(v) => out.push_str(v.name()),
            None => write!(out, "{n}").unwrap(),
        },
        Value::Message(m) => out.push_str(&message_json(m)),
        Value::List(items) => {
            let elem = match ty {
                Ty::Proto { kind, .. } => Ty::Proto {
                    kind: kind.clone(),
                    list: false,
                    map: false,
                },
                other => other.clone(),
            };
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_text(out, item, &elem);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write!(out, "{k:?}: ").unwrap();
                write_text(out, v, &Ty::Text);
            }
            out.push('}');
        }
    }
}

fn message_json(m: &DynamicMessage) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

/// A field value to build: constant, or computed from the scope.
#[derive(Clone, Debug)]
pub(crate) enum ValueTemplate {
    Const(Value),
    /// `"{{path}}"`: the value itself, converted to the field's kind.
    Whole(Path),
    /// Text with holes, then converted to the field's kind (string, bytes, enum name, number, bool).
    Text(Text),
    Message(MessageTemplate),
    List(Vec<ValueTemplate>),
    /// `{ for_each = "request.xs", value = "…{{item}}…{{index}}…" }`
    ForEach {
        source: Path,
        value: Box<ValueTemplate>,
    },
    Map(Vec<(MapKey, ValueTemplate)>),
}

/// A message to build, field by field, or copied whole from a path.
#[derive(Clone, Debug)]
pub(crate) struct MessageTemplate {
    pub desc: MessageDescriptor,
    pub fields: Vec<(FieldDescriptor, ValueTemplate)>,
    /// The whole message when nothing in it depends on the call: cloned, never rebuilt.
    pub constant: Option<DynamicMessage>,
    /// `reply = "{{request}}"`
    pub whole: Option<Path>,
}

impl MessageTemplate {
    pub(crate) fn constant(message: DynamicMessage) -> Self {
        Self {
            desc: message.descriptor(),
            fields: vec![],
            constant: Some(message),
            whole: None,
        }
    }

    pub(crate) fn render(&self, scope: &Scope<'_>) -> Result<DynamicMessage, String> {
        if let Some(m) = &self.constant {
            return Ok(m.clone());
        }
        if let Some(path) = &self.whole {
            let value = path.resolve(scope).map(Cow::into_owned);
            return match coerce(value, &path.ty, &Kind::Message(self.desc.clone()))? {
                Value::Message(m) => Ok(m),
                _ => Err(format!(
                    "{} is not a {}",
                    path.text(),
                    self.desc.full_name()
                )),
            };
        }
        let mut message = DynamicMessage::new(self.desc.clone());
        for (field, template) in &self.fields {
            if let ValueTemplate::Whole(path) = template {
                // Copying an unset sub-message leaves the target unset too, as in the request.
                let copies_message = matches!(
                    path.ty,
                    Ty::Proto {
                        kind: Kind::Message(_),
                        list: false,
                        map: false
                    }
                );
                if copies_message && !field.is_list() && !path.is_present(scope) {
                    continue;
                }
            }
            let value = template.render(scope, &field.kind(), field)?;
            message.set_field(field, value);
        }
        Ok(message)
    }
}

impl ValueTemplate {
    fn render(
        &self,
        scope: &Scope<'_>,
        kind: &Kind,
        field: &FieldDescriptor,
    ) -> Result<Value, String> {
        match self {
            ValueTemplate::Const(v) => Ok(v.clone()),
            ValueTemplate::Whole(path) => {
                let value = path.resolve_into(scope, kind);
                if field.is_list() && matches!(path.ty, Ty::Proto { list: true, .. }) {
                    let Some(Value::List(items)) = value else {
                        return Ok(Value::List(vec![]));
                    };
                    let elem = elem_ty(&path.ty);
                    return items
                        .into_iter()
                        .map(|v| coerce(Some(v), &elem, kind))
                        .collect::<Result<_, _>>()
                        .map(Value::List)
                        .and_then(charge);
                }
                if field.is_map() {
                    return Ok(value.unwrap_or_else(|| Value::Map(Default::default())));
                }
                let v = charge(coerce(value, &path.ty, kind)?)?;
                Ok(if field.is_list() {
                    Value::List(vec![v])
                } else {
                    v
                })
            }
            ValueTemplate::Text(text) => {
                let v = charge(parse_text(text.render(scope), kind)?)?;
                Ok(if field.is_list() {
                    Value::List(vec![v])
                } else {
                    v
                })
            }
            ValueTemplate::Message(m) => {
                let v = Value::Message(m.render(scope)?);
                Ok(if field.is_list() {
                    Value::List(vec![v])
                } else {
                    v
                })
            }
            ValueTemplate::List(items) => items
                .iter()
                .map(|t| t.render_elem(scope, kind))
                .collect::<Result<_, _>>()
                .map(Value::List),
            ValueTemplate::ForEach { source, value } => {
                let Some(list) = source.resolve(scope) else {
                    return Ok(Value::List(vec![]));
                };
                let Value::List(items) = list.as_ref() else {
                    return Ok(Value::List(vec![]));
                };
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let inner = Scope {
                        item: Some(item),
                        index: Some(i as u64),
                        ..*scope
                    };
                    out.push(value.render_elem(&inner, kind)?);
                }
                Ok(Value::List(out))
            }
            ValueTemplate::Map(entries) => {
                let Kind::Message(entry) = kind else {
                    return Err("map without entry type".into());
                };
                let value_kind = entry.map_entry_value_field().kind();
                let mut map = std::collections::HashMap::new();
                for (k, t) in entries {
                    map.insert(k.clone(), t.render_elem(scope, &value_kind)?);
                }
                Ok(Value::Map(map))
            }
        }
    }

    /// One element of a list (or a map value): never wrapped in a list.
    fn render_elem(&self, scope: &Scope<'_>, kind: &Kind) -> Result<Value, String> {
        // Each element is at least one byte encoded.
        if !crate::budget::spend(1) {
            return Err(OVER_BUDGET.into());
        }
        match self {
            ValueTemplate::Const(v) => Ok(v.clone()),
            ValueTemplate::Whole(path) => {
                charge(coerce(path.resolve_into(scope, kind), &path.ty, kind)?)
            }
            ValueTemplate::Text(text) => charge(parse_text(text.render(scope), kind)?),
            ValueTemplate::Message(m) => m.render(scope).map(Value::Message),
            _ => Err("nested lists are not allowed in protobuf".into()),
        }
    }
}

const OVER_BUDGET: &str = "over the size limit";

/// Counts a value built for a reply against the call's budget (see `budget`): the contents of
/// strings and bytes, one byte per list element — each written at least that long.
fn charge(value: Value) -> Result<Value, String> {
    fn len(value: &Value) -> usize {
        match value {
            Value::String(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::List(items) => items.iter().map(|v| 1 + len(v)).sum(),
            _ => 0,
        }
    }
    if crate::budget::spend(len(&value)) {
        Ok(value)
    } else {
        Err(OVER_BUDGET.into())
    }
}

fn elem_ty(ty: &Ty) -> Ty {
    match ty {
        Ty::Proto { kind, .. } => Ty::Proto {
            kind: kind.clone(),
            list: false,
            map: false,
        },
        other => other.clone(),
    }
}

/// Can a value of type `from` be put in a field of kind `to`? Checked at load.
pub(crate) fn check_assignable(from: &Ty, to: &Kind, to_list: bool) -> Result<(), String> {
    let ok = match (from, to) {
        (Ty::Proto { list: true, .. }, _) if !to_list => false,
        (Ty::Proto { map: true, .. }, _) => false,
        (
            Ty::Proto {
                kind: Kind::Message(a),
                ..
            },
            Kind::Message(b),
        ) => a.full_name() == b.full_name() || compatible_messages(a, b),
        (
            Ty::Proto {
                kind: Kind::Message(_),
                ..
            },
            Kind::String,
        ) => true,
        (
            Ty::Proto {
                kind: Kind::Message(_),
                ..
            },
            _,
        ) => false,
        (_, Kind::Message(_)) => false,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} cannot be written into a field of type {}",
            from.describe(),
            kind_name(to)
        ))
    }
}

/// Different message types with the same fields (by number and kind) can be copied into each other.
fn compatible_messages(a: &MessageDescriptor, b: &MessageDescriptor) -> bool {
    a.fields().all(|f| {
        b.get_field(f.number())
            .is_some_and(|g| g.kind() == f.kind() && g.cardinality() == f.cardinality())
    })
}

/// Converts a resolved value to the kind of the field it goes into.
fn coerce(value: Option<Value>, from: &Ty, to: &Kind) -> Result<Value, String> {
    let Some(value) = value else {
        return Ok(Value::default_value(to));
    };
    Ok(match (value, to) {
        (Value::Message(m), Kind::Message(d)) if m.descriptor() == *d => Value::Message(m),
        (Value::Message(m), Kind::Message(d)) => {
            // Same shape, other name: re-read the bytes as the target type.
            let bytes = m.encode_to_vec();
            Value::Message(
                DynamicMessage::decode(d.clone(), bytes.as_slice()).map_err(|e| e.to_string())?,
            )
        }
        (Value::Message(m), Kind::String) => Value::String(message_json(&m)),
        (v @ Value::String(_), Kind::String) => v,
        // Bytes stay bytes (through text, anything not UTF-8 would be mangled).
        (v @ Value::Bytes(_), Kind::Bytes) => v,
        (Value::EnumNumber(n), Kind::Enum(_)) => Value::EnumNumber(n),
        // Integer to integer (`{{index}}` into an int32) without the trip through text; the same
        // range check as `parse_num`.
        (v @ (Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_)), kind)
            if integer_of(&v).is_some() && is_integer_kind(kind) =>
        {
            let n = integer_of(&v).expect("checked");
            let bad = |what: &str| format!("'{n}' is not {what}");
            match kind {
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                    Value::I32(i32::try_from(n).map_err(|_| bad("an int32"))?)
                }
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                    Value::I64(i64::try_from(n).map_err(|_| bad("an int64"))?)
                }
                Kind::Uint32 | Kind::Fixed32 => {
                    Value::U32(u32::try_from(n).map_err(|_| bad("a uint32"))?)
                }
                _ => Value::U64(u64::try_from(n).map_err(|_| bad("a uint64"))?),
            }
        }
        (other, kind) => {
            let mut text = String::new();
            write_text(&mut text, &other, from);
            parse_text(text, kind)?
        }
    })
}

fn integer_of(value: &Value) -> Option<i128> {
    match value {
        Value::I32(n) => Some(i128::from(*n)),
        Value::I64(n) => Some(i128::from(*n)),
        Value::U32(n) => Some(i128::from(*n)),
        Value::U64(n) => Some(i128::from(*n)),
        _ => None,
    }
}

pub(crate) fn is_integer_kind(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Sint32
            | Kind::Sfixed32
            | Kind::Int64
            | Kind::Sint64
            | Kind::Sfixed64
            | Kind::Uint32
            | Kind::Fixed32
            | Kind::Uint64
            | Kind::Fixed64
    )
}

/// Reads text as a value of `kind`.
pub(crate) fn parse_text(text: String, kind: &Kind) -> Result<Value, String> {
    let bad = |what: &str| format!("'{text}' is not {what}");
    Ok(match kind {
        Kind::String => Value::String(text),
        Kind::Bytes => Value::Bytes(text.into_bytes().into()),
        Kind::Bool => Value::Bool(match text.as_str() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            _ => return Err(bad("a boolean")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(parse_num(&text).ok_or_else(|| bad("an int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(parse_num(&text).ok_or_else(|| bad("an int64"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(parse_num(&text).ok_or_else(|| bad("a uint32"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(parse_num(&text).ok_or_else(|| bad("a uint64"))?)
        }
        Kind::Float => Value::F32(text.trim().parse().map_err(|_| bad("a float"))?),
        Kind::Double => Value::F64(text.trim().parse().map_err(|_| bad("a double"))?),
        Kind::Enum(e) => match e.get_value_by_name(text.trim()) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(
                text.trim()
                    .parse()
                    .map_err(|_| bad(&format!("a value of {}", e.full_name())))?,
            ),
        },
        Kind::Message(d) => {
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| bad(&format!("a {} (as JSON)", d.full_name())))?;
            Value::Message(DynamicMessage::deserialize(d.clone(), json).map_err(|e| e.to_string())?)
        }
    })
}

/// Integers from text; a float-looking value with no fraction (`3.0`, from a float field) is accepted.
fn parse_num<T: TryFrom<i128>>(text: &str) -> Option<T> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i128>() {
        return T::try_from(n).ok();
    }
    let f: f64 = t.parse().ok()?;
    (f.fract() == 0.0 && f.is_finite())
        .then(|| T::try_from(f as i128).ok())
        .flatten()
}
