//! Messages shown to scripts as maps, converted where the script looks.
//!
//! A script's `request` (and each message `next()` returns) is a [`LazyMessage`]: to the script an
//! object map — `type_of` says `"map"`, `request.name` and `request["name"]` give what the map would
//! hold, every map function works on it — but nothing is converted before it is read. Reading a
//! message field gives another lazy message (a slice of the request's canonical bytes, or the
//! decoded sub-message) in O(1); reading anything else, writing, or calling a map function turns
//! that one level into a map (its message fields staying lazy). A lazy message the script hands
//! back untouched as a message of its own type is sent as it came: from canonical bytes, the same
//! bytes (what `#{ response: request.request }` costs is a copy); from a decoded message, that
//! message. (A map round trip would give the same message, save what JSON numbers lose: `uint64`
//! values above 2^63 and NaN payloads, which now pass through exactly.)

use std::sync::Arc;

use bytes::Bytes;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use rhai::{
    Dynamic, Engine, EvalAltResult, FnPtr, FuncRegistration, ImmutableString, NativeCallContext,
};

use super::to_rhai::{has_own_json_form, message_to_dynamic, value_to_dynamic};
use crate::codec::canonical;

type RhaiResult<T = Dynamic> = Result<T, Box<EvalAltResult>>;

/// A message the script has not looked into yet, or the map it became.
#[derive(Clone)]
pub(super) struct LazyMessage(State);

#[derive(Clone)]
enum State {
    /// Canonical bytes of `desc` (see [`canonical`]): they decode and re-encode to themselves.
    Canonical {
        desc: MessageDescriptor,
        bytes: Bytes,
    },
    Decoded(Arc<DynamicMessage>),
    /// The map this level became; its message fields are lazy messages.
    Map(Dynamic),
}

impl LazyMessage {
    /// `message` as a script sees it. Types with JSON forms of their own (well-known types) and
    /// messages with extensions are converted at once, as they always were.
    pub(super) fn show(message: Arc<DynamicMessage>) -> RhaiResult {
        if !lazy_type(&message.descriptor()) || message.extensions().next().is_some() {
            return message_to_dynamic(&message);
        }
        Ok(Dynamic::from(LazyMessage(State::Decoded(message))))
    }

    /// Canonical `bytes` of `desc` as a script sees them (see [`LazyMessage::show`]).
    pub(super) fn show_canonical(desc: MessageDescriptor, bytes: Bytes) -> RhaiResult {
        if !lazy_type(&desc) {
            let message = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
            return message_to_dynamic(&message);
        }
        Ok(Dynamic::from(LazyMessage(State::Canonical { desc, bytes })))
    }

    /// The encoded message, when this is still the untouched canonical bytes of `desc`.
    pub(super) fn bytes_of(&self, desc: &MessageDescriptor) -> Option<&Bytes> {
        match &self.0 {
            State::Canonical { desc: d, bytes } if d == desc => Some(bytes),
            _ => None,
        }
    }

    /// The message, when this is still an untouched message of type `desc`.
    pub(super) fn message_of(&self, desc: &MessageDescriptor) -> Option<DynamicMessage> {
        match &self.0 {
            State::Canonical { desc: d, bytes } if d == desc => {
                DynamicMessage::decode(desc.clone(), bytes.clone()).ok()
            }
            State::Decoded(m) if &m.descriptor() == desc => Some(DynamicMessage::clone(m)),
            _ => None,
        }
    }

    /// The map this message is (converting it now if it was not yet).
    pub(super) fn map(&mut self) -> RhaiResult<&mut Dynamic> {
        let map = match &self.0 {
            State::Map(_) => None,
            State::Canonical { desc, bytes } => {
                let message = DynamicMessage::decode(desc.clone(), bytes.clone())
                    .map_err(|e| format!("cannot decode the {} message: {e}", desc.full_name()))?;
                Some(self.level(&message)?)
            }
            State::Decoded(message) => Some(self.level(message)?),
        };
        if let Some(map) = map {
            self.0 = State::Map(map);
        }
        match &mut self.0 {
            State::Map(map) => Ok(map),
            _ => unreachable!("converted above"),
        }
    }

    /// The map, owned.
    pub(super) fn into_map(mut self) -> RhaiResult {
        self.map()?;
        match self.0 {
            State::Map(map) => Ok(map),
            _ => unreachable!("converted by map()"),
        }
    }

    /// This level as a map: what `message_to_dynamic` gives, but with message fields lazy.
    fn level(&self, message: &DynamicMessage) -> RhaiResult {
        let mut map = rhai::Map::new();
        for field in message.descriptor().fields() {
            // Fields with presence (messages, oneofs, `optional`) only when set, the others always.
            if field.supports_presence() && !message.has_field(&field) {
                continue;
            }
            let value = match self.message_field(&field) {
                Some(lazy) => lazy,
                None => value_to_dynamic(&message.get_field(&field), &field.kind())?,
            };
            map.insert(field.json_name().into(), value);
        }
        Ok(map.into())
    }

    /// The value of a message field (lazy, or `()` when unset) or of a repeated message field (an
    /// array of lazy messages), without converting this level; `None` for other fields.
    fn message_field(&self, field: &FieldDescriptor) -> Option<Dynamic> {
        let Kind::Message(of) = field.kind() else {
            return None;
        };
        if !lazy_type(&of) || field.is_map() {
            return None;
        }
        match &self.0 {
            State::Canonical { bytes, .. } => {
                let slice = |value: &[u8]| {
                    Dynamic::from(LazyMessage(State::Canonical {
                        desc: of.clone(),
                        bytes: bytes.slice_ref(value),
                    }))
                };
                let found = canonical::find(bytes, field.number());
                Some(if field.is_list() {
                    let items = found.map(|f| canonical::values(f.records).map(slice).collect());
                    Dynamic::from_array(items.unwrap_or_default())
                } else {
                    found.map_or(Dynamic::UNIT, |f| slice(f.value))
                })
            }
            State::Decoded(message) => {
                let lazy = |m: &DynamicMessage| {
                    Dynamic::from(LazyMessage(State::Decoded(Arc::new(m.clone()))))
                };
                // (Messages with extensions show them the serde route's way: not lazily.)
                let plain = |m: &DynamicMessage| m.extensions().next().is_none();
                Some(match message.get_field(field).as_ref() {
                    Value::List(items) => {
                        let items: Vec<_> = items.iter().filter_map(Value::as_message).collect();
                        if !items.iter().all(|m| plain(m)) {
                            return None;
                        }
                        items.into_iter().map(lazy).collect::<rhai::Array>().into()
                    }
                    Value::Message(m) if message.has_field(field) => {
                        if !plain(m) {
                            return None;
                        }
                        lazy(m)
                    }
                    _ => Dynamic::UNIT,
                })
            }
            State::Map(_) => None,
        }
    }

    /// `self[name]`, as the map would give it.
    fn get(&mut self, name: &str) -> RhaiResult {
        if !matches!(self.0, State::Map(_)) {
            if let Some(field) = self.descriptor().get_field_by_json_name(name) {
                if let Some(value) = self.message_field(&field) {
                    return Ok(value);
                }
            }
        }
        let map = self.map()?.read_lock::<rhai::Map>().expect("a map");
        Ok(map.get(name).cloned().unwrap_or(Dynamic::UNIT))
    }

    /// `self[name] = value`, as on the map.
    fn set(&mut self, name: &str, value: Dynamic) -> RhaiResult<()> {
        let mut map = self.map()?.write_lock::<rhai::Map>().expect("a map");
        map.insert(name.into(), value);
        Ok(())
    }

    fn descriptor(&self) -> MessageDescriptor {
        match &self.0 {
            State::Canonical { desc, .. } => desc.clone(),
            State::Decoded(m) => m.descriptor(),
            State::Map(_) => unreachable!("asked of lazy states only"),
        }
    }
}

/// Whether messages of `desc` are shown lazily: not the well-known types, whose script forms are
/// their JSON forms (a Timestamp is a string), and only where the map would be by field.
fn lazy_type(desc: &MessageDescriptor) -> bool {
    !has_own_json_form(desc) && !desc.is_map_entry()
}

/// `value` with every lazy message in it (at any depth of maps and arrays) turned into its map,
/// for the code that reads plain Rhai values (serde, JSON, display).
pub(super) fn plain(value: &Dynamic) -> RhaiResult {
    if let Some(lazy) = value.read_lock::<LazyMessage>() {
        let map = lazy.clone().into_map()?;
        return plain(&map);
    }
    if value.is_map() {
        let map = value.read_lock::<rhai::Map>().expect("is a map");
        let mut out = rhai::Map::new();
        for (k, v) in map.iter() {
            out.insert(k.clone(), plain(v)?);
        }
        return Ok(out.into());
    }
    if value.is_array() {
        let items = value.read_lock::<rhai::Array>().expect("is an array");
        return Ok(items
            .iter()
            .map(plain)
            .collect::<RhaiResult<rhai::Array>>()?
            .into());
    }
    Ok(value.clone())
}

/// Makes lazy messages behave as maps: indexing (and property access, which falls back on it), the
/// map functions of Rhai's standard library, display, JSON. Each converts the level it touches
/// and then does what it does on maps, by calling the map function itself.
pub(super) fn register(engine: &mut Engine) {
    engine.register_type_with_name::<LazyMessage>("map");

    engine.register_indexer_get(|lazy: &mut LazyMessage, name: ImmutableString| lazy.get(&name));
    engine.register_indexer_set(
        |lazy: &mut LazyMessage, name: ImmutableString, value: Dynamic| lazy.set(&name, value),
    );

    // The map functions with the lazy message first; `pure` as Rhai declares them for maps (a
    // function that changes its map may not be called on a constant).
    macro_rules! on_lazy {
        ($name:expr, $pure:expr, $arg:ty) => {{
            let name: &'static str = $name;
            FuncRegistration::new(name)
                .with_purity($pure)
                .register_into_engine(
                    engine,
                    move |ctx: NativeCallContext,
                          lazy: &mut LazyMessage,
                          arg: $arg|
                          -> RhaiResult {
                        let mut arg = Dynamic::from(arg);
                        if arg.is::<LazyMessage>() {
                            arg = arg.cast::<LazyMessage>().into_map()?;
                        }
                        ctx.call_native_fn_raw(name, true, &mut [lazy.map()?, &mut arg])
                    },
                );
        }};
    }
    for name in ["len", "is_empty", "keys", "values", "to_string", "to_debug"] {
        FuncRegistration::new(name)
            .with_purity(true)
            .register_into_engine(
                engine,
                move |ctx: NativeCallContext, lazy: &mut LazyMessage| -> RhaiResult {
                    ctx.call_native_fn_raw(name, true, &mut [lazy.map()?])
                },
            );
    }
    FuncRegistration::new("clear")
        .with_purity(false)
        .register_into_engine(
            engine,
            |ctx: NativeCallContext, lazy: &mut LazyMessage| -> RhaiResult {
                ctx.call_native_fn_raw("clear", true, &mut [lazy.map()?])
            },
        );
    FuncRegistration::new("to_json")
        .with_purity(true)
        .register_into_engine(engine, |lazy: &mut LazyMessage| -> RhaiResult<String> {
            to_json(lazy.map()?)
        });
    FuncRegistration::new("to_json")
        .with_purity(true)
        .register_into_engine(engine, |map: &mut rhai::Map| -> RhaiResult<String> {
            to_json(&Dynamic::from_map(map.clone()))
        });
    for name in ["contains", "get"] {
        on_lazy!(name, true, ImmutableString);
    }
    on_lazy!("remove", false, ImmutableString);
    for name in ["map", "filter"] {
        on_lazy!(name, true, FnPtr);
    }
    for name in ["drain", "retain"] {
        on_lazy!(name, false, FnPtr);
    }
    for (name, pure) in [
        ("==", true),
        ("!=", true),
        ("mixin", false),
        ("+=", false),
        ("fill_with", false),
    ] {
        on_lazy!(name, pure, rhai::Map);
        on_lazy!(name, pure, LazyMessage);
        // A map first, the lazy message second.
        FuncRegistration::new(name)
            .with_purity(pure)
            .register_into_engine(
                engine,
                move |ctx: NativeCallContext,
                      map: &mut rhai::Map,
                      lazy: LazyMessage|
                      -> RhaiResult {
                    let mut this = Dynamic::from_map(std::mem::take(map));
                    let result =
                        ctx.call_native_fn_raw(name, true, &mut [&mut this, &mut lazy.into_map()?]);
                    *map = this.cast::<rhai::Map>();
                    result
                },
            );
    }
    FuncRegistration::new("set")
        .with_purity(false)
        .register_into_engine(
            engine,
            |ctx: NativeCallContext,
             lazy: &mut LazyMessage,
             name: ImmutableString,
             value: Dynamic|
             -> RhaiResult {
                ctx.call_native_fn_raw(
                    "set",
                    true,
                    &mut [lazy.map()?, &mut name.into(), &mut value.clone()],
                )
            },
        );
    // `+` makes a new map: by value on both sides.
    let plus = |ctx: NativeCallContext, a: Dynamic, b: Dynamic| -> RhaiResult {
        let as_map = |v: Dynamic| match v.try_cast_result::<LazyMessage>() {
            Ok(lazy) => lazy.into_map(),
            Err(v) => Ok(v),
        };
        ctx.call_native_fn_raw("+", false, &mut [&mut as_map(a)?, &mut as_map(b)?])
    };
    engine.register_fn(
        "+",
        move |ctx: NativeCallContext, a: LazyMessage, b: LazyMessage| {
            plus(ctx, Dynamic::from(a), Dynamic::from(b))
        },
    );
    engine.register_fn(
        "+",
        move |ctx: NativeCallContext, a: LazyMessage, b: rhai::Map| {
            plus(ctx, Dynamic::from(a), Dynamic::from(b))
        },
    );
    engine.register_fn(
        "+",
        move |ctx: NativeCallContext, a: rhai::Map, b: LazyMessage| {
            plus(ctx, Dynamic::from(a), Dynamic::from(b))
        },
    );
}

/// Getters and setters on lazy messages for every name `source` reads or writes as a property,
/// to be merged into its AST. Without them, `request.name` still works — Rhai falls back on the
/// indexer — but only after failing to find `get$name`, which costs an error built and dropped
/// (its message formatted) on every access. Names are taken from the text (any identifier after
/// a `.`), so a few may never be properties: a getter that is never called costs nothing.
pub(super) fn accessors(source: &str) -> rhai::Module {
    let mut module = rhai::Module::new();
    let mut names: Vec<&str> = Vec::new();
    let bytes = source.as_bytes();
    for (i, _) in source.match_indices('.') {
        let rest = &source[i + 1..];
        let start = rest.len() - rest.trim_start().len();
        let word = &rest[start..];
        let end = word
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(word.len());
        let word = &word[..end];
        let starts_well = word.starts_with(|c: char| c.is_alphabetic() || c == '_');
        if starts_well && bytes.get(i.wrapping_sub(1)) != Some(&b'.') && !names.contains(&word) {
            names.push(word);
        }
    }
    for name in names {
        let owned: ImmutableString = name.into();
        module.set_getter_fn(name, move |lazy: &mut LazyMessage| lazy.get(&owned));
        let owned: ImmutableString = name.into();
        module.set_setter_fn(name, move |lazy: &mut LazyMessage, value: Dynamic| {
            lazy.set(&owned, value)
        });
    }
    module
}

/// What Rhai's `to_json` writes for the map, lazy messages in it converted.
fn to_json(map: &Dynamic) -> RhaiResult<String> {
    let plain = plain(map)?;
    let map = plain.read_lock::<rhai::Map>().expect("a map");
    Ok(rhai::format_map_as_json(&map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::DescriptorPool;
    use rhai::Scope;
    use serde_json::json;

    use crate::codec::encode::encode_to_vec;
    use crate::script::convert::{dynamic_to_message, encode_message};

    const PROTO: &str = r#"
        syntax = "proto3";
        package l;
        import "google/protobuf/timestamp.proto";
        enum Color { BLACK = 0; WHITE = 1; RED = 3; }
        message Inner { string name = 1; Color color = 2; repeated int32 nums = 3; Leaf leaf = 4; }
        message Leaf { int64 n = 1; bytes raw = 2; }
        message All {
            string s = 1; int64 i64 = 2; uint64 u64 = 3; double d = 4; bool b = 5; Color color = 6;
            Inner inner = 7; repeated Inner inners = 8; map<string, Inner> by_name = 9;
            oneof choice { string c1 = 10; Inner c2 = 11; }
            optional int32 maybe = 12; google.protobuf.Timestamp ts = 13; Leaf leaf = 14;
        }
        message Other { string name = 1; Color color = 2; repeated int32 nums = 3; }
    "#;

    /// Extensions, shown the serde route's way (`"[x.more]"`).
    const PROTO2: &str = r#"
        syntax = "proto2";
        package x;
        message Ext { optional string a = 1; extensions 100 to 200; }
        extend Ext { optional int32 more = 100; }
        message Holder { optional Ext ext = 1; repeated Ext exts = 2; optional string s = 3; }
        message WithGroup { optional group Grp = 1 { optional int32 v = 2; } optional int32 n = 3; }
    "#;

    fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| {
            crate::protos::compile_texts(&[("l.proto", PROTO), ("x.proto", PROTO2)])
        })
    }

    fn desc(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).unwrap()
    }

    fn engine() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let mut engine = Engine::new();
            engine.set_max_operations(100_000);
            register(&mut engine);
            engine
        })
    }

    /// Messages of `l.All` from a seed: fields set or not, empty and full lists, a oneof either way.
    fn message(seed: u64) -> DynamicMessage {
        let bit = |n: u32| seed >> n & 1 == 1;
        let inner = |k: u64| {
            let color = ["RED", "WHITE", "BLACK"][k as usize % 3];
            json!({ "name": format!("n{k}"), "color": color,
                    "nums": (0..k % 4).map(|i| i as i64 * 7 - 3).collect::<Vec<_>>(),
                    "leaf": { "n": k, "raw": "AAEC" } })
        };
        let mut m = serde_json::Map::new();
        if bit(0) {
            m.insert("s".into(), json!("héllo"));
        }
        m.insert("i64".into(), json!(-(seed as i64 % 1000)));
        m.insert("u64".into(), json!(seed % (1 << 40)));
        m.insert("d".into(), json!(if bit(1) { 2.5 } else { 0.0 }));
        m.insert("b".into(), json!(bit(2)));
        m.insert(
            "color".into(),
            json!(if bit(3) { json!(7) } else { json!("RED") }),
        );
        if bit(4) {
            m.insert("inner".into(), inner(seed % 5));
        }
        let n = seed % 3;
        m.insert(
            "inners".into(),
            json!((0..n).map(inner).collect::<Vec<_>>()),
        );
        if bit(5) {
            m.insert("byName".into(), json!({ "a": inner(1), "b": inner(2) }));
        }
        match seed % 3 {
            0 => m.insert("c1".into(), json!("")),
            1 => m.insert("c2".into(), if bit(6) { inner(3) } else { json!({}) }),
            _ => None,
        };
        if bit(7) {
            m.insert("maybe".into(), json!(0));
        }
        if bit(8) {
            m.insert("ts".into(), json!("2026-11-23T10:00:00Z"));
        }
        if bit(9) {
            m.insert("leaf".into(), json!({ "n": 5 }));
        }
        DynamicMessage::deserialize(desc("l.All"), serde_json::Value::Object(m)).unwrap()
    }

    /// Scripts that use `request` every way a map can be used (`!`: see below).
    const SCRIPTS: &[&str] = &[
        "request",
        "request.inner",
        "request.inners",
        "request.inners[0]",
        "request.inner.name",
        "request.inner.leaf.raw",
        r#"request["inner"]["nums"]"#,
        "request.c2",
        "request.ts",
        "request.by_name",
        "request.byName.a.leaf",
        "request.nothing",
        "request.keys()",
        "request.values().len()",
        "request.inner.len() + request.len()",
        "[request.is_empty(), request.contains(\"inner\"), \"c2\" in request, request.get(\"s\")]",
        "[type_of(request), type_of(request.inner), type_of(request.inners)]",
        "request.to_json()",
        "#{ x: request.inner }.to_json()",
        "request.inner.to_string()",
        "request.inner.to_debug()",
        "`${request.inner} and ${request.inners}`",
        "\"x\" + request.leaf",
        "let r = request; r.s = \"x\"; r",
        "request.inner.name = \"changed\"; request",
        "request.inner.nums += [1]; request.inner",
        "let i = request.inner; i.nums.push(5); #{ inner: i }",
        "request + #{ s: \"y\" }",
        "#{ s: \"y\" } + request",
        "request.inner + request.leaf",
        "request.mixin(#{ b: true }); request",
        "let m = #{ s: \"m\" }; m += request; m",
        "let m = #{ s: \"m\" }; m.mixin(request.inner); m",
        "let m = #{ s: \"m\" }; m.fill_with(request); m",
        "request.fill_with(request.inner); request",
        "request.set(\"s\", \"set\"); request",
        "[request == request, request.inner == request.inner, request != #{}, request.inner == ()]",
        "[#{} == request, request.inner != request.leaf, request == request.inner]",
        "[[request.inner].contains(request.inner), request.inners.index_of(request.inner)]",
        "let x = request.remove(\"inner\"); [x, request]",
        "request.clear(); request",
        "request.map(|k| type_of(this))",
        "request.filter(|k, v| k.len() > 2)",
        "let d = request.drain(|k, v| k == \"s\" || k == \"inner\"); [d, request]",
        "request.retain(|k, v| k.len() < 3); request",
        "const r = request; r.clear()",
        // (`!`: an error both ways, worded differently: Rhai names the indexer it would call.)
        "!const r = request; r.inner.name = \"x\"",
        "const r = request; r.keys()",
        "fn f(m) { m.s = \"z\"; m } [f(request), request]",
        "fn g() { this.inner } request.g()",
        "fn h() { this.s = \"this\"; } request.h(); request",
        "let n = 0; for k in request.keys() { n += k.len() } n",
        "request.inners.map(|i| i.name)",
        "request.inners.filter(|i| i.nums.len() > 0)",
        "switch type_of(request) { \"map\" => 1, _ => 2 }",
        "request.inner?.leaf?.n",
        "request.c2?.name ?? \"none\"",
        "request.inner.nums[0] = 9; request.inner",
        "request + 1",
        "request.no_such_fn()",
        "let copy = request.inner; copy.name = \"c\"; [copy, request.inner]",
        "#{ inner: request.inner, inners: request.inners, leaf: request.leaf }",
        "#{ c2: request.inner, byName: request.byName }",
        "#{ inner: request.c2, i64: request.inner?.leaf?.n ?? 0 }",
        "#{ inner: request.leaf }",
        "#{ inners: [request.inner, request.c2] }",
        "#{ ts: request.ts, maybe: request.maybe }",
        "let r = request; r.inner.name = \"w\"; r",
        // Captured by closures, values become shared.
        "let f = || request; f.call()",
        "let f = || request.inner; #{ inner: f.call(), c2: request.inner }",
        "let r = request; let g = || r.s; r.s = \"q\"; [g.call(), r, r.keys()]",
        "let r = request.inner; let g = || r; #{ inner: g.call(), inners: [r] }",
    ];

    /// What a script gives: its value with lazy messages as maps, or its error. With
    /// `with_accessors`, its properties are read through [`accessors`], as scripts are compiled.
    fn run_with(
        script: &str,
        request: Dynamic,
        with_accessors: bool,
    ) -> (Result<Dynamic, String>, String) {
        let mut scope = Scope::new();
        scope.push_dynamic("request", request);
        let mut ast = engine().compile(script).unwrap();
        if with_accessors {
            ast.combine(rhai::AST::new_from_module(accessors(script)));
        }
        let result = engine()
            .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            .map_err(|e| e.to_string());
        let shown = match &result {
            Ok(value) => format!("{:?}", plain(value).unwrap()),
            Err(e) => e.clone(),
        };
        (result, shown)
    }

    fn run(script: &str, request: Dynamic) -> (Result<Dynamic, String>, String) {
        run_with(script, request, true)
    }

    /// The script's value as an `l.All` reply, shown as JSON (compact, and map entries in order).
    fn as_reply(value: &Result<Dynamic, String>) -> Option<Result<serde_json::Value, String>> {
        let value = value.as_ref().ok()?;
        (value.is_map() || value.is::<LazyMessage>())
            .then(|| dynamic_to_message(value, &desc("l.All")).map(|m| to_json(&m)))
    }

    fn to_json(message: &DynamicMessage) -> serde_json::Value {
        serde_json::to_value(message).unwrap()
    }

    fn check(seed: u64) {
        let message = message(seed);
        let bytes = Bytes::from(message.encode_to_vec());
        for script in SCRIPTS {
            let (script, both_fail) = match script.strip_prefix('!') {
                Some(script) => (script, true),
                None => (*script, false),
            };
            // What scripts saw before lazy messages: the whole map.
            let (old, old_shown) = run(script, message_to_dynamic(&message).unwrap());
            let lazies = [
                LazyMessage::show(Arc::new(message.clone())).unwrap(),
                LazyMessage::show_canonical(desc("l.All"), bytes.clone()).unwrap(),
            ];
            let both_ways = lazies
                .into_iter()
                .flat_map(|lazy| [(lazy.clone(), true), (lazy, false)]);
            for (lazy, with_accessors) in both_ways {
                let (new, new_shown) = run_with(script, lazy, with_accessors);
                if both_fail {
                    assert!(old.is_err() && new.is_err(), "{script} (seed {seed})");
                    continue;
                }
                assert_eq!(new_shown, old_shown, "{script} (seed {seed})");
                let reply = as_reply(&old);
                assert_eq!(as_reply(&new), reply, "{script} (seed {seed})");
                // Written straight to bytes: the encoded message (maps compared decoded: their
                // entries come in hash order).
                if let (Some(Ok(_)), Ok(value)) = (reply, &new) {
                    let expected = dynamic_to_message(value, &desc("l.All")).unwrap();
                    let mut out = Vec::new();
                    encode_message(value, &desc("l.All"), &mut out).unwrap();
                    if expected
                        .get_field_by_name("by_name")
                        .unwrap()
                        .as_map()
                        .unwrap()
                        .is_empty()
                    {
                        assert_eq!(out, encode_to_vec(&expected), "{script} (seed {seed})");
                    }
                    let decoded = DynamicMessage::decode(desc("l.All"), &out[..]).unwrap();
                    assert_eq!(
                        to_json(&decoded),
                        to_json(&expected),
                        "{script} (seed {seed})"
                    );
                }
            }
        }
    }

    #[test]
    fn lazy_messages_behave_as_the_maps_they_stand_for() {
        for seed in [
            0,
            1,
            0b11_1111_1111,
            0b10_1010_1010,
            0b01_0101_0101,
            17,
            1000,
        ] {
            check(seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn lazy_messages_behave_as_maps_for_any_message(seed in 0u64..1 << 12) {
            check(seed);
        }
    }

    #[test]
    fn an_untouched_message_passes_through_exactly() {
        // A map would carry uint64 as a float and NaN as text: the lazy message carries the value.
        let mut inner = DynamicMessage::new(desc("l.All"));
        inner.set_field_by_name("u64", Value::U64(u64::MAX - 1));
        inner.set_field_by_name("d", Value::F64(f64::from_bits(0x7ff8_0000_0000_0001)));
        let bytes = Bytes::from(inner.encode_to_vec());
        for request in [
            LazyMessage::show(Arc::new(inner.clone())).unwrap(),
            LazyMessage::show_canonical(desc("l.All"), bytes.clone()).unwrap(),
        ] {
            let (value, _) = run("request", request);
            let value = value.unwrap();
            let reply = dynamic_to_message(&value, &desc("l.All")).unwrap();
            assert_eq!(reply.encode_to_vec(), bytes);
            let mut out = Vec::new();
            encode_message(&value, &desc("l.All"), &mut out).unwrap();
            assert_eq!(out, bytes);
        }
        // Through a map (touched), the uint64 is rounded as before.
        let (value, _) = run(
            "request.s = \"t\"; request",
            LazyMessage::show(Arc::new(inner)).unwrap(),
        );
        let reply = dynamic_to_message(&value.unwrap(), &desc("l.All")).unwrap();
        assert_ne!(
            reply.get_field_by_name("u64").unwrap().as_u64(),
            Some(u64::MAX - 1)
        );
    }

    #[test]
    fn sub_messages_with_extensions_show_as_they_always_did() {
        let json =
            json!({ "ext": { "a": "x", "[x.more]": 5 }, "exts": [{ "[x.more]": 6 }], "s": "t" });
        let message = DynamicMessage::deserialize(desc("x.Holder"), json).unwrap();
        for script in [
            "request",
            "request.ext",
            "request.exts",
            "request.s",
            "request.keys()",
        ] {
            let (_, old) = run(script, message_to_dynamic(&message).unwrap());
            let (_, new) = run(
                script,
                LazyMessage::show(Arc::new(message.clone())).unwrap(),
            );
            assert_eq!(new, old, "{script}");
        }
        let (_, shown) = run("request.ext", message_to_dynamic(&message).unwrap());
        assert!(shown.contains("x.more"), "{shown}");
    }

    #[test]
    fn replies_written_from_values_match_the_encoder_for_proto2_groups() {
        let desc = desc("x.WithGroup");
        let (value, _) = run("#{ grp: #{ v: 5 }, n: 0 }", Dynamic::UNIT);
        let value = value.unwrap();
        let mut out = Vec::new();
        encode_message(&value, &desc, &mut out).unwrap();
        assert_eq!(
            out,
            encode_to_vec(&dynamic_to_message(&value, &desc).unwrap())
        );
        // (start group 1, v = 5, end group 1, n = 0: proto2 writes a set default)
        assert_eq!(out, [0x0b, 0x10, 0x05, 0x0c, 0x18, 0x00]);
    }

    #[test]
    fn a_lazy_message_of_another_type_converts_by_name() {
        let message = message(0b1_0000);
        let bytes = Bytes::from(message.encode_to_vec());
        let request = LazyMessage::show_canonical(desc("l.All"), bytes).unwrap();
        let (value, _) = run("request.inner", request);
        let other = dynamic_to_message(&value.unwrap(), &desc("l.Other"));
        // Inner has a `leaf` that Other lacks: the map conversion's error, as before.
        assert!(other.unwrap_err().contains("leaf"));
    }
}
