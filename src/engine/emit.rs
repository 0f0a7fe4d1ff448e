//! Replies written straight to bytes: a rule's templates compiled at load into emitters that read the
//! request's canonical bytes (see [`crate::codec::canonical`]) and write the reply's, with no
//! `DynamicMessage` on either side.
//!
//! Only what can be written exactly as the general path would write it compiles: constants (encoded
//! once at load), copies of request fields into fields of the same type, text with string, integer
//! or boolean holes, `{{index}}`/`{{count}}`, metadata, nested message templates; and `when`
//! conditions on metadata and on scalar request fields; and unary scripts that run inline, shown
//! the canonical request lazily (see `script::lazy`). Anything else — a `for_each`, a conversion
//! between types, a condition on a list, a script that may wait — leaves the rule (or the method)
//! to the general path, and so does any request that is not canonical. `src/tests/encoding.rs`
//! compares both paths.

use std::sync::OnceLock;

use prost::encoding::{encode_key, encode_varint, WireType};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};
use tonic::metadata::MetadataMap;

use crate::codec::canonical::{self, Layouts};
use crate::codec::encode::{encode_to_vec, wire_type};
use crate::rules::matcher::{self, Condition, Subject};
use crate::rules::rule::{Answer, MethodRules, Rule, StreamSource};
use crate::rules::template::{
    is_integer_kind, MessageTemplate, Part, Path, Root, Step, Text, Ty, ValueTemplate,
};

/// What an emitter reads during one call.
#[derive(Clone, Copy)]
pub(crate) struct RawScope<'a> {
    /// The request's bytes, already checked canonical.
    pub request: &'a [u8],
    pub index: Option<u64>,
    pub count: Option<u64>,
    pub metadata: &'a MetadataMap,
}

/// The emitter cannot write this reply (an `{{index}}` out of its field's range): the general path
/// answers instead, and reports it as it does.
#[derive(Debug)]
pub(crate) struct Declined;

/// A method whose rules are answered by emitters.
#[derive(Debug)]
pub(crate) struct Direct {
    /// The method's input type.
    input: MessageDescriptor,
    /// Checks requests of the input type; built on the method's first call, not at load: every
    /// type reachable from the input is laid out, which for a large tree costs milliseconds per
    /// method and would make a reload of hundreds of methods take hundreds of them.
    layouts: OnceLock<Layouts>,
    /// The method's rules in the order they are tried. A streaming method has exactly one, without
    /// conditions (a bidi call selects a rule per message, which the general path does).
    choices: Vec<Choice>,
}

/// One rule, its conditions read from the request's bytes, its reply if it compiled.
#[derive(Debug)]
pub(crate) struct Choice {
    /// The engine runs rules by index ([`Direct::select_index`]); tests compare this with the rules.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests only"))]
    pub rule: Rule,
    conditions: Vec<RawCondition>,
    /// `None`: when this rule is selected, the general path answers (an error, a script, …).
    pub reply: Option<DirectReply>,
}

#[derive(Debug)]
pub(crate) enum DirectReply {
    One(Emitter),
    /// A `stream` answer of a server-streaming method (its delay and `then` are in the rule).
    Messages(Vec<Emitter>),
    Repeat(
        #[cfg_attr(
            not(test),
            allow(dead_code, reason = "the engine counts from the rule; tests read it")
        )]
        u64,
        Emitter,
    ),
    /// A unary script that may run inline ([`crate::script::Script::may_run_inline`]): shown the
    /// request's bytes lazily, its reply written from its values.
    Script,
}

impl Direct {
    /// The direct form of `rules` for `method`, when their conditions and at least one reply compile.
    pub(crate) fn compile(method: &MethodDescriptor, rules: &MethodRules) -> Option<Direct> {
        let (client, server) = (method.is_client_streaming(), method.is_server_streaming());
        let streaming = client || server;
        if client && !server
            || (streaming && (rules.rules.len() != 1 || !rules.rules[0].is_default()))
        {
            return None;
        }
        let choices = rules
            .rules
            .iter()
            .map(|rule| {
                Some(Choice {
                    conditions: rule
                        .conditions
                        .iter()
                        .map(RawCondition::compile)
                        .collect::<Option<_>>()?,
                    reply: compile_reply(rule, client, server),
                    rule: rule.clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        if choices.iter().all(|c| c.reply.is_none()) {
            return None;
        }
        Some(Direct {
            input: method.input(),
            layouts: OnceLock::new(),
            choices,
        })
    }

    /// Whether `request` is canonical, so that replies may be written from its bytes.
    pub(crate) fn is_canonical(&self, request: &[u8]) -> bool {
        self.layouts
            .get_or_init(|| Layouts::new(&self.input))
            .is_canonical(request)
    }

    /// The rule a (canonical) request selects, as the general path would; `None` when none matches.
    /// The engine asks for [`Direct::select_index`]; this is for tests comparing it with the rules.
    #[cfg(test)]
    pub fn select(&self, scope: &RawScope<'_>) -> Option<&Choice> {
        self.choices
            .iter()
            .find(|c| c.conditions.iter().all(|k| k.holds(scope)))
    }

    /// The one rule of a streaming method.
    #[cfg(test)]
    pub fn only(&self) -> &Choice {
        &self.choices[0]
    }

    /// The index, in the method's rules, of the rule a (canonical) request selects, as the general
    /// path would; `None` when none matches (choices are in the rules' order, one each).
    pub(crate) fn select_index(&self, scope: &RawScope<'_>) -> Option<usize> {
        self.choices
            .iter()
            .position(|c| c.conditions.iter().all(|k| k.holds(scope)))
    }

    /// The compiled reply of the method's `index`-th rule, if it compiled.
    pub(crate) fn reply(&self, index: usize) -> Option<&DirectReply> {
        self.choices.get(index)?.reply.as_ref()
    }
}

impl DirectReply {
    /// The emitter of the answer's `i`-th message template (the one template of a `repeat`, for
    /// every index), if any: the engine walks the rule's answer and asks for each.
    pub(crate) fn emitter(&self, i: usize) -> Option<&Emitter> {
        match self {
            DirectReply::One(e) => (i == 0).then_some(e),
            DirectReply::Messages(list) => list.get(i),
            DirectReply::Repeat(_, e) => Some(e),
            DirectReply::Script => None,
        }
    }
}

/// A rule's reply as emitters: headers and trailers may read only metadata.
fn compile_reply(rule: &Rule, client: bool, server: bool) -> Option<DirectReply> {
    let metadata_only = |t: &Text| t.parts.iter().all(|p| !needs_message(p));
    if !rule.headers.iter().all(|h| metadata_only(&h.value))
        || !rule.trailers.iter().all(|h| metadata_only(&h.value))
    {
        return None;
    }
    Some(match (&rule.answer, client, server) {
        (Answer::Reply(t), false, _) | (Answer::Reply(t), true, true) => {
            DirectReply::One(Emitter::compile(t)?)
        }
        (Answer::Script(script), false, false) if script.may_run_inline() => DirectReply::Script,
        (Answer::Stream(stream), false, true) => {
            if !stream
                .then
                .as_ref()
                .is_none_or(|e| metadata_only(&e.message))
            {
                return None;
            }
            match &stream.source {
                StreamSource::Messages(ts) => {
                    DirectReply::Messages(ts.iter().map(Emitter::compile).collect::<Option<_>>()?)
                }
                StreamSource::Repeat(n, t) => DirectReply::Repeat(*n, Emitter::compile(t)?),
                StreamSource::ForEach(..) => return None,
            }
        }
        _ => return None,
    })
}

/// A `when` condition evaluated without decoding the request.
#[derive(Debug)]
enum RawCondition {
    /// On metadata only: the general code, with no request.
    Metadata(Condition),
    /// On a scalar request field, read from its bytes as the general path reads it.
    Field {
        path: Vec<u32>,
        kind: Kind,
        op: matcher::Op,
    },
}

impl RawCondition {
    fn compile(condition: &Condition) -> Option<RawCondition> {
        let path = match &condition.subject {
            Subject::Metadata(_) => return Some(RawCondition::Metadata(condition.clone())),
            Subject::Field(path) => path,
        };
        let Ty::Proto {
            kind,
            list: false,
            map: false,
        } = &path.ty
        else {
            return None;
        };
        let supported = match (&condition.op, kind) {
            (_, Kind::Message(_)) => matches!(condition.op, matcher::Op::Present(_)),
            (matcher::Op::Eq(_) | matcher::Op::Present(_), _) => true,
            (matcher::Op::Contains(Value::String(_)) | matcher::Op::Regex(_), Kind::String) => true,
            _ => false,
        };
        if !supported || !matches!(path.root, Root::Request) {
            return None;
        }
        Some(RawCondition::Field {
            path: request_steps(path)?,
            kind: kind.clone(),
            op: condition.op.clone(),
        })
    }

    fn holds(&self, scope: &RawScope<'_>) -> bool {
        let (path, kind, op) = match self {
            RawCondition::Metadata(c) => {
                return c.holds(&crate::rules::template::Scope::new(None, scope.metadata))
            }
            RawCondition::Field { path, kind, op } => (path, kind, op),
        };
        let field = field_at(scope.request, path);
        if let matcher::Op::Present(want) = op {
            // Canonical bytes hold a field exactly when it is set (a default without presence is
            // never written).
            return field.is_some() == *want;
        }
        let Some(value) = scalar_value(kind, field.map(|f| f.value)) else {
            return false;
        };
        match (op, &value) {
            (matcher::Op::Eq(want), v) => v == want,
            (matcher::Op::Contains(Value::String(want)), Value::String(s)) => {
                s.contains(want.as_str())
            }
            (matcher::Op::Regex(re), Value::String(s)) => re.is_match(s),
            _ => false,
        }
    }
}

/// A scalar as found in canonical bytes (`None`: not set, so its default), as prost-reflect reads it.
fn scalar_value(kind: &Kind, raw: Option<&[u8]>) -> Option<Value> {
    let Some(mut raw) = raw else {
        return Some(Value::default_value(kind));
    };
    let fixed = |raw: &[u8]| -> Option<u64> {
        let mut b = [0u8; 8];
        b.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(u64::from_le_bytes(b))
    };
    let zigzag = |v: u64| (v >> 1) as i64 ^ -((v & 1) as i64);
    Some(match kind {
        Kind::String => Value::String(std::str::from_utf8(raw).ok()?.to_string()),
        Kind::Bytes => Value::Bytes(bytes::Bytes::copy_from_slice(raw)),
        Kind::Fixed32 => Value::U32(fixed(raw)? as u32),
        Kind::Sfixed32 => Value::I32(fixed(raw)? as u32 as i32),
        Kind::Fixed64 => Value::U64(fixed(raw)?),
        Kind::Sfixed64 => Value::I64(fixed(raw)? as i64),
        Kind::Float => Value::F32(f32::from_bits(fixed(raw)? as u32)),
        Kind::Double => Value::F64(f64::from_bits(fixed(raw)?)),
        Kind::Message(_) => return None,
        varint_kind => {
            let v = canonical::read_varint(&mut raw)?;
            match varint_kind {
                Kind::Int32 => Value::I32(v as i32),
                Kind::Int64 => Value::I64(v as i64),
                Kind::Uint32 => Value::U32(v as u32),
                Kind::Uint64 => Value::U64(v),
                Kind::Sint32 => Value::I32(zigzag(v) as i32),
                Kind::Sint64 => Value::I64(zigzag(v)),
                Kind::Bool => Value::Bool(v != 0),
                Kind::Enum(_) => Value::EnumNumber(v as i32),
                _ => return None,
            }
        }
    })
}

/// A template value that reads the call's messages (only metadata can be read without them).
fn needs_message(part: &Part) -> bool {
    matches!(part, Part::Value(p) if !matches!(p.root, Root::Metadata(_)))
}

/// One reply message's template, compiled.
#[derive(Debug)]
pub(crate) struct Emitter {
    /// By ascending field number, as the general encoder writes them.
    ops: Vec<Op>,
}

#[derive(Debug)]
enum Op {
    /// Fields that do not depend on the call, encoded at load.
    Const(Vec<u8>),
    /// The whole reply is the request's message at this path (`reply = "{{request}}"`).
    Whole(Vec<u32>),
    /// A sub-message copied from the request, when set there.
    Message {
        number: u32,
        path: Vec<u32>,
    },
    /// A scalar of the same kind copied from the request.
    Scalar {
        number: u32,
        wire: WireType,
        path: Vec<u32>,
        implicit: bool,
    },
    /// A repeated field copied from a repeated field of the same kind and packing.
    List {
        number: u32,
        wire: WireType,
        packed: bool,
        path: Vec<u32>,
    },
    Text {
        number: u32,
        implicit: bool,
        parts: Vec<TextPart>,
    },
    /// `{{index}}` or `{{count}}` into an integer field.
    Counter {
        number: u32,
        counter: Counter,
        kind: Kind,
        implicit: bool,
    },
    Nested {
        number: u32,
        emitter: Emitter,
    },
}

#[derive(Debug)]
enum TextPart {
    Literal(String),
    Str(Vec<u32>),
    /// An integer or boolean request field, in decimal / `true`/`false`.
    Scalar(Vec<u32>, Kind),
    Counter(Counter),
    Metadata(String),
}

#[derive(Clone, Copy, Debug)]
enum Counter {
    Index,
    Count,
}

impl Emitter {
    /// `None` when some part of `template` is left to the general path.
    pub(crate) fn compile(template: &MessageTemplate) -> Option<Emitter> {
        if let Some(message) = &template.constant {
            return Some(Emitter {
                ops: vec![Op::Const(encode_to_vec(message))],
            });
        }
        if let Some(path) = &template.whole {
            let same_type = matches!(&path.ty, Ty::Proto { kind: Kind::Message(d), list: false, map: false } if *d == template.desc);
            if !same_type || !matches!(path.root, Root::Request) {
                return None;
            }
            return Some(Emitter {
                ops: vec![Op::Whole(request_steps(path)?)],
            });
        }
        let mut fields: Vec<&(FieldDescriptor, ValueTemplate)> = template.fields.iter().collect();
        fields.sort_by_key(|(f, _)| f.number());
        // A field set twice, or two members of one oneof: the last one wins in the general path.
        let numbers = fields
            .windows(2)
            .all(|w| w[0].0.number() != w[1].0.number());
        let mut oneofs: Vec<String> = fields
            .iter()
            .filter_map(|(f, _)| f.containing_oneof().map(|o| o.full_name().to_string()))
            .collect();
        let total = oneofs.len();
        oneofs.sort();
        oneofs.dedup();
        if !numbers || oneofs.len() != total {
            return None;
        }
        let mut ops: Vec<Op> = Vec::new();
        for (field, value) in fields {
            let op = compile_field(&template.desc, field, value)?;
            match (ops.last_mut(), op) {
                (Some(Op::Const(prev)), Op::Const(next)) => prev.extend_from_slice(&next),
                (_, op) => ops.push(op),
            }
        }
        Some(Emitter { ops })
    }

    /// Whether the reply is the whole request as it came (`reply = "{{request}}"`, same type).
    pub(crate) fn is_echo(&self) -> bool {
        matches!(self.ops.as_slice(), [Op::Whole(path)] if path.is_empty())
    }

    /// Appends the reply's bytes to `out`.
    ///
    /// Declined as soon as `out` cannot fit the call's budget (see `budget`): the general path
    /// then reports the reply as too large, having built no more of it than this.
    pub(crate) fn emit(&self, scope: &RawScope<'_>, out: &mut Vec<u8>) -> Result<(), Declined> {
        for op in &self.ops {
            if !crate::budget::fits(out.len()) {
                return Err(Declined);
            }
            match op {
                Op::Const(bytes) => out.extend_from_slice(bytes),
                Op::Whole(path) => {
                    if let Some(message) = message_at(scope.request, path) {
                        out.extend_from_slice(message);
                    }
                }
                Op::Message { number, path } => {
                    if let Some(message) = message_at(scope.request, path) {
                        write_len_delimited(*number, message, out);
                    }
                }
                Op::Scalar {
                    number,
                    wire,
                    path,
                    implicit,
                } => match field_at(scope.request, path) {
                    Some(field) if *implicit && is_zero(*wire, field.value) => {}
                    Some(field) => write_value(*number, *wire, field.value, out),
                    None if *implicit => {}
                    None => write_default(*number, *wire, out),
                },
                Op::List {
                    number,
                    wire,
                    packed,
                    path,
                } => {
                    if let Some(field) = field_at(scope.request, path) {
                        if *packed {
                            write_len_delimited(*number, field.value, out);
                        } else {
                            for value in canonical::values(field.records) {
                                write_value(*number, *wire, value, out);
                            }
                        }
                    }
                }
                Op::Text {
                    number,
                    implicit,
                    parts,
                } => {
                    let text = render_text(parts, scope)?;
                    if !(*implicit && text.is_empty()) {
                        write_len_delimited(*number, text.as_bytes(), out);
                    }
                }
                Op::Counter {
                    number,
                    counter,
                    kind,
                    implicit,
                } => {
                    let n = counter_value(*counter, scope).ok_or(Declined)?;
                    if !(*implicit && n == 0) {
                        write_integer(*number, kind, n, out)?;
                    }
                }
                Op::Nested { number, emitter } => {
                    let mut nested = Vec::new();
                    emitter.emit(scope, &mut nested)?;
                    write_len_delimited(*number, &nested, out);
                }
            }
        }
        Ok(())
    }
}

fn compile_field(
    desc: &MessageDescriptor,
    field: &FieldDescriptor,
    value: &ValueTemplate,
) -> Option<Op> {
    let number = field.number();
    let implicit = !field.is_list() && !field.supports_presence();
    let kind = field.kind();
    if field.is_map() {
        return match value {
            ValueTemplate::Const(v) => Some(Op::Const(encode_one(desc, field, v))),
            _ => None,
        };
    }
    match value {
        ValueTemplate::Const(v) => Some(Op::Const(encode_one(desc, field, v))),
        ValueTemplate::Whole(path) => match (&path.root, &path.ty) {
            (Root::Index | Root::Count, _) if !field.is_list() => {
                let counter = counter_of(&path.root)?;
                if kind == Kind::String {
                    return Some(Op::Text {
                        number,
                        implicit,
                        parts: vec![TextPart::Counter(counter)],
                    });
                }
                is_integer_kind(&kind).then_some(Op::Counter {
                    number,
                    counter,
                    kind,
                    implicit,
                })
            }
            (Root::Metadata(key), _) if !field.is_list() && kind == Kind::String => {
                Some(Op::Text {
                    number,
                    implicit,
                    parts: vec![TextPart::Metadata(key.clone())],
                })
            }
            (
                Root::Request,
                Ty::Proto {
                    kind: from,
                    list,
                    map: false,
                },
            ) => {
                let path = request_steps(path)?;
                if *from != kind || matches!(kind, Kind::Float | Kind::Double) {
                    return None;
                }
                match (list, field.is_list()) {
                    (true, true) => {
                        let source = last_field(value)?;
                        (source.is_packed() == field.is_packed()).then(|| Op::List {
                            number,
                            wire: wire_type(&kind),
                            packed: field.is_packed(),
                            path,
                        })
                    }
                    (false, false) if matches!(kind, Kind::Message(_)) => {
                        Some(Op::Message { number, path })
                    }
                    (false, false) => Some(Op::Scalar {
                        number,
                        wire: wire_type(&kind),
                        path,
                        implicit,
                    }),
                    _ => None,
                }
            }
            _ => None,
        },
        ValueTemplate::Text(text) if !field.is_list() && kind == Kind::String => Some(Op::Text {
            number,
            implicit,
            parts: text
                .parts
                .iter()
                .map(compile_text_part)
                .collect::<Option<_>>()?,
        }),
        ValueTemplate::Message(template) if !field.is_list() => Some(Op::Nested {
            number,
            emitter: Emitter::compile(template)?,
        }),
        _ => None,
    }
}

/// The field a `Whole` template copies from.
fn last_field(value: &ValueTemplate) -> Option<FieldDescriptor> {
    match value {
        ValueTemplate::Whole(path) => path.last_field().map(|(f, _)| f),
        _ => None,
    }
}

fn compile_text_part(part: &Part) -> Option<TextPart> {
    let path = match part {
        Part::Literal(s) => return Some(TextPart::Literal(s.clone())),
        Part::Value(path) => path,
    };
    match (&path.root, &path.ty) {
        (Root::Index | Root::Count, _) => counter_of(&path.root).map(TextPart::Counter),
        (Root::Metadata(key), _) => Some(TextPart::Metadata(key.clone())),
        (
            Root::Request,
            Ty::Proto {
                kind,
                list: false,
                map: false,
            },
        ) => {
            let steps = request_steps(path)?;
            match kind {
                Kind::String => Some(TextPart::Str(steps)),
                k if *k == Kind::Bool || is_integer_kind(k) => {
                    Some(TextPart::Scalar(steps, k.clone()))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn counter_of(root: &Root) -> Option<Counter> {
    match root {
        Root::Index => Some(Counter::Index),
        Root::Count => Some(Counter::Count),
        _ => None,
    }
}

/// The field numbers of a `request.a.b` path whose every step but the last is a singular message.
fn request_steps(path: &Path) -> Option<Vec<u32>> {
    let mut numbers = Vec::with_capacity(path.steps.len());
    for (i, step) in path.steps.iter().enumerate() {
        let Step::Field(f) = step else { return None };
        let last = i + 1 == path.steps.len();
        if !last && (f.is_list() || f.is_map() || !matches!(f.kind(), Kind::Message(_))) {
            return None;
        }
        numbers.push(f.number());
    }
    Some(numbers)
}

/// The bytes of one field's value as the general encoder writes it in a message of type `desc`.
fn encode_one(
    desc: &MessageDescriptor,
    field: &FieldDescriptor,
    value: &prost_reflect::Value,
) -> Vec<u8> {
    let mut message = DynamicMessage::new(desc.clone());
    message.set_field(field, value.clone());
    encode_to_vec(&message)
}

/// The field at `path` in canonical bytes; `None` when it or a message on the way is not set.
fn field_at<'a>(request: &'a [u8], path: &[u32]) -> Option<canonical::RawField<'a>> {
    let (last, parents) = path.split_last()?;
    let mut message = request;
    for number in parents {
        message = canonical::find(message, *number)?.value;
    }
    canonical::find(message, *last)
}

fn message_at<'a>(request: &'a [u8], path: &[u32]) -> Option<&'a [u8]> {
    if path.is_empty() {
        return Some(request);
    }
    field_at(request, path).map(|f| f.value)
}

fn is_zero(wire: WireType, value: &[u8]) -> bool {
    match wire {
        WireType::LengthDelimited => value.is_empty(),
        _ => value.iter().all(|b| *b == 0),
    }
}

fn write_len_delimited(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A value as found in the request (a varint, fixed bytes, or a payload) under a new key.
fn write_value(number: u32, wire: WireType, value: &[u8], out: &mut Vec<u8>) {
    if wire == WireType::LengthDelimited {
        write_len_delimited(number, value, out);
    } else {
        encode_key(number, wire, out);
        out.extend_from_slice(value);
    }
}

fn write_default(number: u32, wire: WireType, out: &mut Vec<u8>) {
    encode_key(number, wire, out);
    let zeros: &[u8] = match wire {
        WireType::SixtyFourBit => &[0; 8],
        WireType::ThirtyTwoBit => &[0; 4],
        _ => &[0],
    };
    out.extend_from_slice(zeros);
}

fn counter_value(counter: Counter, scope: &RawScope<'_>) -> Option<u64> {
    match counter {
        Counter::Index => scope.index,
        Counter::Count => scope.count,
    }
}

/// `n` into an integer field, with the general path's range check (out of range: it reports it).
fn write_integer(number: u32, kind: &Kind, n: u64, out: &mut Vec<u8>) -> Result<(), Declined> {
    let fits32 = |signed: bool| {
        if signed {
            i32::try_from(n).is_ok()
        } else {
            u32::try_from(n).is_ok()
        }
    };
    match kind {
        Kind::Int32 | Kind::Uint32 | Kind::Int64 | Kind::Uint64 => {
            let ok = match kind {
                Kind::Int32 => fits32(true),
                Kind::Uint32 => fits32(false),
                Kind::Int64 => i64::try_from(n).is_ok(),
                _ => true,
            };
            if !ok {
                return Err(Declined);
            }
            encode_key(number, WireType::Varint, out);
            encode_varint(n, out);
        }
        Kind::Sint32 | Kind::Sint64 => {
            let ok = if *kind == Kind::Sint32 {
                fits32(true)
            } else {
                i64::try_from(n).is_ok()
            };
            if !ok {
                return Err(Declined);
            }
            encode_key(number, WireType::Varint, out);
            encode_varint(n << 1, out);
        }
        Kind::Fixed32 | Kind::Sfixed32 => {
            if !fits32(*kind == Kind::Sfixed32) {
                return Err(Declined);
            }
            encode_key(number, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        Kind::Fixed64 | Kind::Sfixed64 => {
            if *kind == Kind::Sfixed64 && i64::try_from(n).is_err() {
                return Err(Declined);
            }
            encode_key(number, WireType::SixtyFourBit, out);
            out.extend_from_slice(&n.to_le_bytes());
        }
        _ => return Err(Declined),
    }
    Ok(())
}

fn render_text(parts: &[TextPart], scope: &RawScope<'_>) -> Result<String, Declined> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for part in parts {
        match part {
            TextPart::Literal(s) => out.push_str(s),
            TextPart::Str(path) => {
                if let Some(field) = field_at(scope.request, path) {
                    out.push_str(std::str::from_utf8(field.value).map_err(|_| Declined)?);
                }
            }
            TextPart::Scalar(path, kind) => {
                let raw = field_at(scope.request, path).map(|f| f.value);
                match scalar_value(kind, raw).ok_or(Declined)? {
                    Value::I32(n) => write!(out, "{n}"),
                    Value::I64(n) => write!(out, "{n}"),
                    Value::U32(n) => write!(out, "{n}"),
                    Value::U64(n) => write!(out, "{n}"),
                    Value::Bool(b) => write!(out, "{b}"),
                    _ => return Err(Declined),
                }
                .expect("writing to a String");
            }
            TextPart::Counter(counter) => {
                let n = counter_value(*counter, scope).ok_or(Declined)?;
                write!(out, "{n}").expect("writing to a String");
            }
            TextPart::Metadata(key) => {
                if let Some(v) = crate::rules::metadata::text(scope.metadata, key) {
                    out.push_str(&v);
                }
            }
        }
        if !crate::budget::fits(out.len()) {
            return Err(Declined);
        }
    }
    Ok(out)
}
