//! Rhai scripts: compiled once per load, run per call with named limits.
//!
//! One shared [`ScriptEngine`] holds a `rhai::Engine` with the limits and the protodrop API
//! (`next`, `send`, `header`, `trailer`, `fail`, `sleep`). The engine is shared by every call, so
//! the per-call state those functions need (incoming stream, metadata being built, cancellation)
//! is installed in a thread-local for the duration of [`Script::run`], which is synchronous.
//!
//! Streamed responses are the one case where a registered function must reach the caller's
//! `events` callback while the script runs. That callback is a borrowed, non-`Send` closure, which
//! a `'static` registered function cannot hold without `unsafe`; so for server-streaming and bidi
//! calls the script runs on a scoped helper thread while the calling thread relays its events to
//! the callback, in order. Unary and client-streaming calls run on the calling thread, no helper.
//!
//! A unary script that cannot wait (see [`Script::try_run_inline`]) may instead run right on an
//! async worker, which saves the hop to tokio's blocking pool and back.
//!
//! This file sets the engine up (limits, sandbox, progress hook), compiles, and runs; the rest lies
//! below it, each part importing only what is under it: [`api`] the functions scripts call, on
//! [`call`]'s per-call state and stop reasons; [`lazy`] requests shown as maps converted where the
//! script looks, [`to_rhai`] messages as Rhai values, [`convert`] Rhai values back to messages.

mod api;
mod call;
mod convert;
mod lazy;
mod to_rhai;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use bytes::Bytes;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::diagnostic::Diagnostic;
use api::{metadata_to_map, register_api};
pub(crate) use call::ScriptEvent;
use call::{ApiError, CallState, EventSink, Installed, MemoryMeter, Stop, CURRENT};
use convert::{dynamic_to_message, encode_message};
use lazy::LazyMessage;

/// Maximum nesting of expressions at the top level of a script (checked when compiling).
const MAX_EXPR_DEPTH: usize = 64;
/// Maximum nesting of expressions inside script functions (checked when compiling).
const MAX_FUNCTION_EXPR_DEPTH: usize = 32;
/// How often (in operations) the progress hook looks at the cancel token and the clock.
const CANCEL_CHECK_EVERY: u64 = 256;
/// Names of the API functions that wait (and of `print`/`debug`, whose output a rerun would
/// repeat): a script naming none of them is tried inline first.
const WAITING_NAMES: [&str; 5] = ["sleep", "next", "send", "print", "debug"];
/// Events a streaming script may run ahead of the caller's `events` callback.
const EVENT_BUFFER: usize = 8;
/// Native stack per script call level for the helper thread of streaming calls. Rhai recurses on
/// the native stack: measured up to ~30 KiB per level in release builds (a function body at the
/// maximum expression depth) and ~45 KiB in debug builds for a plain recursive function. Only
/// touched pages cost memory, so this is generous.
const HELPER_STACK_PER_CALL_LEVEL: usize = 128 << 10;

/// Named limits for every script (they are CLI flags elsewhere). A zero means "unlimited" for the
/// operation count and the sizes, and "no function calls" for the call depth (Rhai's meaning).
#[derive(Clone, Debug)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Most bytes one call may hold, counted on the thread that runs it (see [`MemoryMeter`]).
    /// Zero means no limit.
    pub max_memory: usize,
    /// Longest one script call may run (wall clock), whatever its operation count; checked between
    /// operations and while the script waits. Zero means no limit.
    pub max_duration: std::time::Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_memory: 64 << 20,
            max_duration: std::time::Duration::from_secs(10),
        }
    }
}

/// One `rhai::Engine` configured with the limits and the protodrop API; cheap to clone.
#[derive(Clone)]
pub struct ScriptEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    limits: ScriptLimits,
    helper_stack_size: usize,
}

impl ScriptEngine {
    pub fn new(limits: ScriptLimits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FUNCTION_EXPR_DEPTH)
            // Undefined variables are load-time errors rather than `()` at run time.
            .set_strict_variables(true)
            // Sandbox: `Engine::new()` has no file, network or process access; modules are the
            // only way out, so `import` is not even parsed, and nothing could be resolved anyway.
            .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
            .disable_symbol("import")
            .on_print(|text| tracing::info!(target: "protodrop::script", "{text}"))
            .on_debug(|text, source, pos| {
                let source = source.unwrap_or("");
                tracing::debug!(target: "protodrop::script", source, %pos, "{text}")
            })
            .on_progress(|ops| {
                // Memory on every operation: one operation may allocate up to the largest value
                // the size limits allow, so checking less often would let a call overshoot by
                // hundreds of them.
                if MemoryMeter::exceeded() {
                    return Some(Dynamic::from(Stop::OutOfMemory));
                }
                if ops % CANCEL_CHECK_EVERY != 0 {
                    return None;
                }
                CURRENT
                    .with(|cell| match cell.try_borrow().as_deref() {
                        Ok(Some(state)) => state.interruption(ops),
                        _ => None,
                    })
                    .map(Dynamic::from)
            });
        register_api(&mut engine);
        lazy::register(&mut engine);
        let helper_stack_size = (limits.max_call_depth.saturating_add(1))
            .saturating_mul(HELPER_STACK_PER_CALL_LEVEL)
            .clamp(2 << 20, 1 << 30);
        Self {
            inner: Arc::new(EngineInner {
                engine,
                limits,
                helper_stack_size,
            }),
        }
    }

    /// Compiles a script once per load. `file` is where the text lives (a `.rhai` file, or the
    /// handler file for inline code); `line_offset` is the number of lines of `file` before the
    /// script text, so that positions point into `file`.
    pub(crate) fn compile(
        &self,
        file: &Path,
        source: &str,
        line_offset: usize,
    ) -> Result<Script, Diagnostic> {
        // The variables every call provides, so strict-variables mode accepts them. Not constants:
        // the optimizer would fold their placeholder values into the script.
        let mut scope = Scope::new();
        scope.push("request", ()).push("metadata", ());
        let mut ast = self
            .inner
            .engine
            .compile_with_scope(&scope, source)
            .map_err(|err| {
                let rhai::ParseError(kind, pos) = err;
                match pos.line() {
                    Some(line) => {
                        // The source line comes from the script text; the line number from `file`.
                        let column = pos.position().unwrap_or(1);
                        let mut d =
                            Diagnostic::at_line(file, Some(source), line, column, kind.to_string());
                        d.line += line_offset;
                        d
                    }
                    None => Diagnostic::file(file, kind.to_string()),
                }
            })?;
        ast.set_source(file.display().to_string());
        ast.combine(AST::new_from_module(lazy::accessors(source)));
        Ok(Script {
            inner: Arc::new(ScriptInner {
                engine: self.inner.clone(),
                ast,
                may_wait: names_any(source, &WAITING_NAMES),
                // `eval` could name it too.
                reads_metadata: names_any(source, &["metadata", "eval"]),
                file: file.to_path_buf(),
                line_offset,
            }),
        })
    }
}

impl fmt::Debug for ScriptEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptEngine")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// A compiled script (AST + engine); cheap to clone.
#[derive(Clone)]
pub(crate) struct Script {
    inner: Arc<ScriptInner>,
}

impl Script {
    /// The limits this script runs with.
    pub(crate) fn limits(&self) -> &ScriptLimits {
        &self.inner.engine.limits
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("file", &self.inner.file)
            .field("line_offset", &self.inner.line_offset)
            .finish_non_exhaustive()
    }
}

struct ScriptInner {
    engine: Arc<EngineInner>,
    ast: AST,
    /// The text names a function that waits: not worth trying inline.
    may_wait: bool,
    /// The text names `metadata`: only then is the map built.
    reads_metadata: bool,
    file: PathBuf,
    line_offset: usize,
}

pub(crate) struct ScriptCall {
    /// Unary / server-streaming calls: the request; `None` for client and bidi streams.
    pub request: Option<ScriptRequest>,
    /// Request metadata.
    pub metadata: MetadataMap,
    /// Client and bidi streams: the client's messages; closed when the client has finished.
    pub incoming: Option<tokio::sync::mpsc::Receiver<DynamicMessage>>,
    /// The method's response type.
    pub output: MessageDescriptor,
    /// Server-streaming or bidi: `send()` allowed.
    pub streaming_response: bool,
    /// Cancelled when the client goes away or the deadline passes.
    pub cancel: CancellationToken,
}

/// A request, shown to the script as a [`LazyMessage`].
#[derive(Clone)]
pub(crate) enum ScriptRequest {
    Decoded(Arc<DynamicMessage>),
    /// Canonical bytes of the type (see [`crate::codec::canonical`]), not decoded.
    Canonical(MessageDescriptor, Bytes),
}

impl ScriptRequest {
    fn show(&self) -> Result<Dynamic, Box<EvalAltResult>> {
        match self {
            ScriptRequest::Decoded(message) => LazyMessage::show(message.clone()),
            ScriptRequest::Canonical(desc, bytes) => {
                LazyMessage::show_canonical(desc.clone(), bytes.clone())
            }
        }
    }

    fn type_name(&self) -> String {
        match self {
            ScriptRequest::Decoded(message) => message.descriptor().full_name().to_owned(),
            ScriptRequest::Canonical(desc, _) => desc.full_name().to_owned(),
        }
    }
}

pub(crate) struct ScriptOutcome<R = DynamicMessage> {
    /// The script's final value converted to `output` (`None` when the script ended with `()`):
    /// a message, or its encoding ([`Script::try_run_inline_encoded`]).
    /// For streaming responses the caller sends it as the last message.
    pub reply: Option<R>,
    pub trailers: MetadataMap,
}

type EvalResult = Result<Dynamic, Box<EvalAltResult>>;

/// What [`Script::try_run_inline`] did.
pub(crate) enum Inline<R = DynamicMessage> {
    /// The script ran to its end: its headers (sent exactly once, also on failure) and its result.
    Ran {
        headers: MetadataMap,
        result: Result<ScriptOutcome<R>, Status>,
    },
    /// The script must run where blocking is allowed ([`Script::run`]); here is the call back,
    /// untouched.
    Declined(ScriptCall),
}

/// How one evaluation ended: done, or given up on the async worker to be run again elsewhere.
enum Ran<R> {
    Done(Result<ScriptOutcome<R>, Status>),
    NotInline(ScriptCall),
}

impl Script {
    /// Runs to completion, blocking the calling thread. Call it inside a tokio runtime from a
    /// thread where blocking is allowed (`tokio::task::spawn_blocking`): `next()` and `sleep()`
    /// block on the runtime, selecting against `cancel`. `events` gets headers and streamed
    /// messages as they are produced; when it returns false (client gone) the script is stopped.
    pub(crate) fn run(
        &self,
        call: ScriptCall,
        events: &mut dyn FnMut(ScriptEvent) -> bool,
    ) -> Result<ScriptOutcome, Status> {
        match self.run_on_this_thread(call, false, events, dynamic_to_message) {
            Ran::Done(result) => result,
            Ran::NotInline(_) => unreachable!("only inline runs are given up"),
        }
    }

    /// Runs a unary call on this (async) thread when the script cannot wait: it is not a stream
    /// and names no waiting function. Should it still reach `sleep()` (through a name built at
    /// run time) or run more than [`call::INLINE_OPERATIONS`], it is stopped with nothing sent, and the
    /// call is handed back to be run from the start by [`Script::run`] on a blocking thread. The
    /// only effects of the abandoned attempt were on state that the rerun builds afresh.
    pub(crate) fn try_run_inline(&self, call: ScriptCall) -> Inline {
        self.run_inline(call, dynamic_to_message)
    }

    /// [`Script::try_run_inline`], the reply encoded at the end of `out` (written from the
    /// script's values, see [`encode_message`]); its [`ScriptOutcome::reply`] is `Some(())` when
    /// there is one.
    pub(crate) fn try_run_inline_encoded(&self, call: ScriptCall, out: &mut Vec<u8>) -> Inline<()> {
        self.run_inline(call, |value, output| encode_message(value, output, out))
    }

    /// Whether [`Script::try_run_inline`] would try: a unary script naming no waiting function.
    pub(crate) fn may_run_inline(&self) -> bool {
        !self.inner.may_wait
    }

    fn run_inline<R>(
        &self,
        call: ScriptCall,
        convert: impl FnOnce(&Dynamic, &MessageDescriptor) -> Result<R, String>,
    ) -> Inline<R> {
        if self.inner.may_wait || call.streaming_response || call.incoming.is_some() {
            return Inline::Declined(call);
        }
        let mut headers = MetadataMap::new();
        let events = &mut |event| {
            if let ScriptEvent::Headers(h) = event {
                headers = h;
            }
            true
        };
        match self.run_on_this_thread(call, true, events, convert) {
            Ran::Done(result) => Inline::Ran { headers, result },
            Ran::NotInline(call) => Inline::Declined(call),
        }
    }

    fn run_on_this_thread<R>(
        &self,
        call: ScriptCall,
        inline: bool,
        events: &mut dyn FnMut(ScriptEvent) -> bool,
        convert: impl FnOnce(&Dynamic, &MessageDescriptor) -> Result<R, String>,
    ) -> Ran<R> {
        let ScriptCall {
            request,
            metadata,
            incoming,
            output,
            streaming_response,
            cancel,
        } = call;

        let before_show = alloc_meter::net_allocated();
        let shown = match &request {
            Some(request) => match request.show() {
                Ok(shown) => shown,
                Err(err) => {
                    return Ran::Done(Err(Status::internal(format!(
                        "cannot show the {} request to the script: {err}",
                        request.type_name()
                    ))))
                }
            },
            None => Dynamic::UNIT,
        };
        let mut scope = Scope::new();
        scope.push_dynamic("request", shown);
        if self.inner.reads_metadata {
            scope.push("metadata", metadata_to_map(&metadata));
        }
        // What the script is shown counts against its memory, wherever it then runs.
        let shown_bytes = alloc_meter::net_allocated() - before_show;

        let max_duration = self.limits().max_duration;
        let state = CallState {
            incoming,
            output: output.clone(),
            streaming_response,
            cancel,
            runtime: Handle::try_current().ok(),
            deadline: (!max_duration.is_zero())
                .then(|| Instant::now().checked_add(max_duration))
                .flatten(),
            inline,
            headers: MetadataMap::new(),
            trailers: MetadataMap::new(),
            headers_sent: false,
            sink: None,
        };
        let (result, mut state) = if streaming_response {
            match self.eval_relaying(scope, state, shown_bytes, events) {
                Ok(ran) => ran,
                Err(status) => return Ran::Done(Err(status)),
            }
        } else {
            self.eval(scope, state, shown_bytes)
        };

        if matches!(&result, Err(err) if is_stop(err, |s| matches!(s, Stop::NotInline))) {
            return Ran::NotInline(ScriptCall {
                request,
                metadata,
                incoming: state.incoming,
                output,
                streaming_response,
                cancel: state.cancel,
            });
        }
        if matches!(&result, Err(err) if is_stop(err, |s| matches!(s, Stop::ClientGone))) {
            return Ran::Done(Err(Status::cancelled("client went away")));
        }
        if !state.headers_sent && !events(ScriptEvent::Headers(std::mem::take(&mut state.headers)))
        {
            return Ran::Done(Err(Status::cancelled("client went away")));
        }

        let trailers = state.trailers;
        Ran::Done(match result {
            Ok(value) if value.is_unit() => Ok(ScriptOutcome {
                reply: None,
                trailers,
            }),
            Ok(value) => match convert(&value, &output) {
                Ok(reply) => Ok(ScriptOutcome {
                    reply: Some(reply),
                    trailers,
                }),
                Err(err) => Err(Status::with_metadata(
                    Code::Internal,
                    format!("script reply is not a valid {}: {err}", output.full_name()),
                    trailers,
                )),
            },
            Err(err) => {
                let (code, message) = self.describe(*err);
                Err(Status::with_metadata(code, message, trailers))
            }
        })
    }

    /// Evaluates on this thread with `state` installed for the registered functions, and the
    /// memory meter started with `charged` bytes already held (the request shown to it).
    fn eval(
        &self,
        mut scope: Scope<'static>,
        state: CallState,
        charged: isize,
    ) -> (EvalResult, CallState) {
        let _meter = MemoryMeter::start(self.limits().max_memory, charged);
        let installed = Installed::new(state);
        let result = self
            .inner
            .engine
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &self.inner.ast);
        (result, installed.finish())
    }

    /// Evaluates on a scoped helper thread while this thread hands its events to `events` (see the
    /// module comment for why).
    fn eval_relaying(
        &self,
        scope: Scope<'static>,
        mut state: CallState,
        charged: isize,
        events: &mut dyn FnMut(ScriptEvent) -> bool,
    ) -> Result<(EvalResult, CallState), Status> {
        std::thread::scope(move |s| {
            // A small buffer: the script need not wait for each delivery, and a slow client holds
            // it back. When the callback says the client is gone, the receiver is dropped and the
            // script's next send() stops it. The receiver lives in this closure so that a
            // panicking callback drops it too, releasing the helper before the scope joins it.
            let (event_tx, event_rx) = mpsc::sync_channel(EVENT_BUFFER);
            state.sink = Some(EventSink(event_tx));
            let worker = std::thread::Builder::new()
                .name("protodrop-script".into())
                .stack_size(self.inner.engine.helper_stack_size)
                .spawn_scoped(s, move || {
                    let (result, mut state) = self.eval(scope, state, charged);
                    state.sink = None; // closes the event channel, ending the relay loop below
                    (result, state)
                })
                .map_err(|err| {
                    Status::resource_exhausted(format!("cannot start a script thread: {err}"))
                })?;
            for event in event_rx {
                if !events(event) {
                    break;
                }
            }
            Ok(worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }

    /// The gRPC status for a script that did not finish normally.
    fn describe(&self, err: EvalAltResult) -> (Code, String) {
        let limits = &self.inner.engine.limits;
        let (mut err, call_site) = innermost(err);
        let exhausted = |what: String| (Code::ResourceExhausted, format!("script exceeded {what}"));
        match err {
            EvalAltResult::ErrorTerminated(token, _) => match token.try_cast::<Stop>() {
                Some(Stop::Fail(code, message)) => (code, message),
                Some(Stop::Cancelled) => (Code::Cancelled, "call cancelled".into()),
                Some(Stop::TimedOut) => (
                    Code::DeadlineExceeded,
                    format!(
                        "script ran longer than {} (--script-timeout)",
                        humantime::format_duration(limits.max_duration)
                    ),
                ),
                Some(Stop::ClientGone) => (Code::Cancelled, "client went away".into()),
                Some(Stop::NotInline) => (Code::Internal, "script stopped to be moved".into()),
                Some(Stop::OutOfMemory) => exhausted(format!(
                    "{} bytes of memory (--script-max-memory)",
                    limits.max_memory
                )),
                None => (Code::Unknown, "script terminated".into()),
            },
            EvalAltResult::ErrorTooManyOperations(_) => exhausted(format!(
                "{} operations (--script-max-operations)",
                limits.max_operations
            )),
            EvalAltResult::ErrorStackOverflow(_) => exhausted(format!(
                "the call depth of {} (--script-max-call-depth)",
                limits.max_call_depth
            )),
            EvalAltResult::ErrorDataTooLarge(ref what, _) if what.contains("string") => {
                exhausted(format!(
                    "the string size of {} bytes (--script-max-string-size)",
                    limits.max_string_size
                ))
            }
            EvalAltResult::ErrorDataTooLarge(ref what, _) if what.contains("map") => {
                exhausted(format!(
                    "the map size of {} (--script-max-map-size)",
                    limits.max_map_size
                ))
            }
            EvalAltResult::ErrorDataTooLarge(..) => exhausted(format!(
                "the array size of {} (--script-max-array-size)",
                limits.max_array_size
            )),
            EvalAltResult::ErrorRuntime(ref value, pos) if value.is::<ApiError>() => {
                let ApiError { code, message } = value.clone().cast::<ApiError>();
                (
                    code,
                    format!(
                        "script error at {}: {message}",
                        self.location(pos.or_else(call_site))
                    ),
                )
            }
            // `throw "text"`: the text is the message.
            EvalAltResult::ErrorRuntime(value, _) => (Code::Unknown, value.to_string()),
            _ => {
                let pos = err.take_position().or_else(call_site);
                (
                    Code::Unknown,
                    format!("script error at {}: {err}", self.location(pos)),
                )
            }
        }
    }

    /// `file:line:column` in the file the script text lives in.
    fn location(&self, pos: Position) -> String {
        let file = self.inner.file.display();
        match pos.line() {
            Some(line) => format!(
                "{file}:{}:{}",
                line + self.inner.line_offset,
                pos.position().unwrap_or(1)
            ),
            None => file.to_string(),
        }
    }
}

/// The error raised where it happened, out of the function calls wrapping it, with the position of
/// the innermost call site (for errors that have no position of their own).
fn innermost(mut err: EvalAltResult) -> (EvalAltResult, Position) {
    let mut call_site = Position::NONE;
    loop {
        match err {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, pos)
            | EvalAltResult::ErrorInModule(_, inner, pos) => {
                call_site = pos.or_else(call_site);
                err = *inner;
            }
            other => return (other, call_site),
        }
    }
}

/// Whether the script was stopped by the API for a reason `which` picks.
fn is_stop(err: &EvalAltResult, which: impl Fn(&Stop) -> bool) -> bool {
    match err.unwrap_inner() {
        EvalAltResult::ErrorTerminated(token, _) => {
            token.read_lock::<Stop>().is_some_and(|stop| which(&stop))
        }
        _ => false,
    }
}

/// Whether `source` contains one of `names` as a whole word (in code, strings or comments alike).
fn names_any(source: &str, names: &[&str]) -> bool {
    source
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| names.contains(&word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use tonic::metadata::{BinaryMetadataValue, KeyAndValueRef};

    use prost_reflect::{DescriptorPool, SerializeOptions};
    use serde_json::json;

    const PROTO: &str = r#"
        syntax = "proto3";
        package t;
        message Item { string name = 1; int64 big = 2; }
        message Req {
            string name = 1; int64 id = 2; int32 n = 3; repeated string tags = 4; Item item = 5;
        }
        message Reply {
            string message = 1; int64 total = 2; repeated Item items = 3; Item item = 4;
            repeated int32 nums = 5;
        }
    "#;

    fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| crate::protos::compile_texts(&[("t.proto", PROTO)]))
    }

    fn message(name: &str, json: serde_json::Value) -> DynamicMessage {
        let desc = pool().get_message_by_name(name).unwrap();
        DynamicMessage::deserialize(desc, json).unwrap()
    }

    fn to_json(message: &DynamicMessage) -> serde_json::Value {
        let options = SerializeOptions::new().stringify_64_bit_integers(false);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .unwrap()
    }

    fn engine(limits: ScriptLimits) -> ScriptEngine {
        ScriptEngine::new(limits)
    }

    fn compile(source: &str) -> Script {
        compile_with(ScriptLimits::default(), source)
    }

    fn compile_with(limits: ScriptLimits, source: &str) -> Script {
        engine(limits)
            .compile(Path::new("test.rhai"), source, 0)
            .unwrap_or_else(|d| panic!("{d}"))
    }

    fn call(request: Option<DynamicMessage>) -> ScriptCall {
        ScriptCall {
            request: request.map(|m| ScriptRequest::Decoded(Arc::new(m))),
            metadata: MetadataMap::new(),
            incoming: None,
            output: pool().get_message_by_name("t.Reply").unwrap(),
            streaming_response: false,
            cancel: CancellationToken::new(),
        }
    }

    /// What the events callback saw, in a comparable form.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Headers(Vec<(String, String)>),
        Message(serde_json::Value),
    }

    fn pairs(map: &MetadataMap) -> Vec<(String, String)> {
        map.iter()
            .map(|entry| match entry {
                KeyAndValueRef::Ascii(k, v) => (k.to_string(), v.to_str().unwrap().to_string()),
                KeyAndValueRef::Binary(k, v) => (
                    k.to_string(),
                    format!("{:?}", v.to_bytes().unwrap().as_ref()),
                ),
            })
            .collect()
    }

    /// Runs on this thread; `accept` = how many events the "client" takes before going away.
    fn run_seen(
        script: &Script,
        call: ScriptCall,
        accept: usize,
    ) -> (Result<ScriptOutcome, Status>, Vec<Seen>) {
        let mut seen = Vec::new();
        let result = script.run(call, &mut |event| {
            seen.push(match event {
                ScriptEvent::Headers(map) => Seen::Headers(pairs(&map)),
                ScriptEvent::Message(m) => Seen::Message(to_json(&m)),
            });
            seen.len() <= accept
        });
        (result, seen)
    }

    fn run(script: &Script, call: ScriptCall) -> Result<ScriptOutcome, Status> {
        run_seen(script, call, usize::MAX).0
    }

    fn run_err(script: &Script, call: ScriptCall) -> Status {
        match run(script, call) {
            Ok(outcome) => panic!(
                "expected an error, got {:?}",
                outcome.reply.as_ref().map(to_json)
            ),
            Err(status) => status,
        }
    }

    /// As a handler would: on a blocking thread of a multi-threaded runtime.
    async fn run_blocking(
        script: &Script,
        call: ScriptCall,
        accept: usize,
    ) -> (Result<ScriptOutcome, Status>, Vec<Seen>) {
        let script = script.clone();
        tokio::task::spawn_blocking(move || run_seen(&script, call, accept))
            .await
            .unwrap()
    }

    #[test]
    fn engine_and_script_are_send_sync() {
        fn check<T: Send + Sync + Clone + fmt::Debug>() {}
        check::<ScriptEngine>();
        check::<Script>();
    }

    #[test]
    fn map_reply_with_nested_repeated_and_int64() {
        let script = compile(
            r#"
            #{
                message: "hi " + request.name,
                total: request.id + 1,
                items: [
                    #{ name: request.tags[0], big: 1 },
                    #{ name: request.tags[1], big: request.item.big * 2 },
                ],
                item: request.item,
                nums: [1, 2, 3],
            }
            "#,
        );
        let request = message(
            "t.Req",
            json!({
                "name": "tom",
                "id": "9007199254740993",
                "tags": ["a", "b"],
                "item": { "name": "x", "big": 5 },
            }),
        );
        let outcome = run(&script, call(Some(request))).unwrap();
        assert_eq!(
            to_json(&outcome.reply.unwrap()),
            json!({
                "message": "hi tom",
                "total": 9007199254740994_i64,
                "items": [{ "name": "a", "big": 1 }, { "name": "b", "big": 10 }],
                "item": { "name": "x", "big": 5 },
                "nums": [1, 2, 3],
            })
        );
    }

    #[test]
    fn request_shows_default_fields_and_unit_reply_is_none() {
        let script = compile(
            r#"if request.n != 0 || request.tags.len() != 0 || request.name != "" { throw "defaults missing" }"#,
        );
        let outcome = run(&script, call(Some(message("t.Req", json!({}))))).unwrap();
        assert!(outcome.reply.is_none());
    }

    #[test]
    fn metadata_is_a_map_of_strings_with_base64_for_bin() {
        let script = compile(r#"#{ message: metadata["x-user"] + "|" + metadata["x-raw-bin"] }"#);
        let mut call = call(None);
        call.metadata.insert("x-user", "tom".parse().unwrap());
        call.metadata
            .insert_bin("x-raw-bin", BinaryMetadataValue::from_bytes(&[0, 1, 2]));
        let reply = run(&script, call).unwrap().reply.unwrap();
        assert_eq!(to_json(&reply), json!({ "message": "tom|AAEC" }));
    }

    #[test]
    fn fail_ends_the_call_with_its_code_and_message() {
        let status = run_err(&compile(r#"fail("not_found", "no such user")"#), call(None));
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "no such user")
        );

        let status = run_err(&compile(r#"fail(5, "numbered")"#), call(None));
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "numbered")
        );

        // From inside a function, and past a try/catch: fail() is not an exception.
        let script = compile(
            r#"fn check() { fail("PermissionDenied", "nope") } try { check() } catch { 1 } #{}"#,
        );
        let status = run_err(&script, call(None));
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "nope")
        );

        let status = run_err(&compile(r#"fail("NOPE", "x")"#), call(None));
        assert_eq!(status.code(), Code::Unknown);
        assert!(
            status
                .message()
                .contains(r#"unknown gRPC error code "NOPE""#),
            "{}",
            status.message()
        );
    }

    #[test]
    fn trailers_set_before_a_failure_are_in_the_status() {
        let status = run_err(
            &compile(r#"trailer("x-why", "because"); fail("ABORTED", "no")"#),
            call(None),
        );
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.metadata().get("x-why").unwrap(), "because");
    }

    #[test]
    fn throw_is_unknown_with_the_text() {
        let status = run_err(&compile(r#"throw "x""#), call(None));
        assert_eq!((status.code(), status.message()), (Code::Unknown, "x"));

        let status = run_err(&compile("fn f() { throw \"deep\" }\nf()"), call(None));
        assert_eq!((status.code(), status.message()), (Code::Unknown, "deep"));
    }

    #[test]
    fn other_runtime_errors_name_the_place() {
        let file = Path::new("dir/h.toml");
        let script = engine(ScriptLimits::default())
            .compile(file, "let x = 1;\nx.nothing()", 10)
            .unwrap();
        let status = run_err(&script, call(None));
        assert_eq!(status.code(), Code::Unknown);
        assert!(
            status
                .message()
                .starts_with("script error at dir/h.toml:12:3: Function not found"),
            "{}",
            status.message()
        );

        // API misuse: a script bug, reported with its place.
        let status = run_err(&compile("\n  send(#{})"), call(None));
        assert_eq!(
            status.message(),
            "script error at test.rhai:2:3: send() is only available in server-streaming and bidi calls"
        );
        let status = run_err(&compile("next()"), call(None));
        assert!(
            status.message().contains("next() is only available"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_reply_that_does_not_fit_the_output_is_internal() {
        let status = run_err(&compile("#{ nope: 1 }"), call(None));
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().contains("t.Reply") && status.message().contains("nope"),
            "{}",
            status.message()
        );

        let status = run_err(&compile(r#""just text""#), call(None));
        assert_eq!(status.code(), Code::Internal);
    }

    #[test]
    fn too_many_operations_is_resource_exhausted() {
        let script = compile_with(
            ScriptLimits {
                max_operations: 10_000,
                ..Default::default()
            },
            "loop { }",
        );
        let status = run_err(&script, call(None));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "script exceeded 10000 operations (--script-max-operations)"
        );
    }

    #[test]
    fn default_operation_limit_stops_a_loop_quickly() {
        let started = Instant::now();
        let status = run_err(&compile("loop { }"), call(None));
        assert_eq!(status.code(), Code::ResourceExhausted);
        println!(
            "1,000,000 operations of `loop {{}}` took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn endless_recursion_is_resource_exhausted() {
        // Default limits, so this also shows the default depth fits a test thread's stack.
        let status = run_err(&compile("fn f(x) { f(x + 1) }\nf(0)"), call(None));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "script exceeded the call depth of 64 (--script-max-call-depth)"
        );
    }

    #[test]
    fn oversized_data_is_resource_exhausted() {
        let limits = ScriptLimits {
            max_string_size: 1000,
            max_array_size: 100,
            max_map_size: 100,
            ..Default::default()
        };
        let cases = [
            (
                r#"let s = "x"; loop { s += s; }"#,
                "the string size of 1000 bytes (--script-max-string-size)",
            ),
            (
                "let a = []; loop { a.push(1); }",
                "the array size of 100 (--script-max-array-size)",
            ),
            // Rhai checks a map's size when it is assigned or passed on, not on `m[k] = v`.
            (
                "let m = #{}; for i in 0..1000 { m[`k${i}`] = i; m += #{}; }",
                "the map size of 100 (--script-max-map-size)",
            ),
        ];
        for (source, what) in cases {
            let status = run_err(&compile_with(limits.clone(), source), call(None));
            assert_eq!(status.code(), Code::ResourceExhausted, "{source}");
            assert_eq!(status.message(), format!("script exceeded {what}"));
        }
        // A huge string with the default limit.
        let status = run_err(
            &compile(r#"let s = "0123456789"; loop { s += s; }"#),
            call(None),
        );
        assert_eq!(
            status.message(),
            "script exceeded the string size of 1048576 bytes (--script-max-string-size)"
        );
    }

    #[test]
    fn headers_and_trailers_including_binary() {
        let script = compile(
            r#"header("X-Foo", "bar"); header("x-data-bin", "AAEC");
               trailer("x-t-bin", "AQ"); trailer("x-count", 3); #{}"#,
        );
        let (result, seen) = run_seen(&script, call(None), usize::MAX);
        let outcome = result.unwrap();
        assert_eq!(
            seen,
            [Seen::Headers(vec![
                ("x-foo".into(), "bar".into()),
                ("x-data-bin".into(), "[0, 1, 2]".into())
            ])]
        );
        assert_eq!(
            pairs(&outcome.trailers),
            [
                ("x-t-bin".to_string(), "[1]".to_string()),
                ("x-count".into(), "3".into())
            ]
        );
        assert_eq!(to_json(&outcome.reply.unwrap()), json!({}));

        let status = run_err(
            &compile(r#"header("x-bad-bin", "not base64!")"#),
            call(None),
        );
        assert!(
            status.message().contains("is not base64"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn headers_are_sent_once_even_without_messages_or_on_failure() {
        let (result, seen) = run_seen(
            &compile(r#"header("x-a", "1"); fail("INTERNAL", "boom")"#),
            call(None),
            usize::MAX,
        );
        assert_eq!(result.err().unwrap().code(), Code::Internal);
        assert_eq!(seen, [Seen::Headers(vec![("x-a".into(), "1".into())])]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn next_reads_the_client_stream_to_its_end() {
        let script = compile(
            r#"
            let total = 0;
            let count = 0;
            loop {
                let m = next();
                if m == () { break; }
                total += m.id;
                count += 1;
            }
            if next() != () { throw "next() after the end should stay ()"; }
            #{ total: total, message: `${count} messages` }
            "#,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut call = call(None);
        call.incoming = Some(rx);
        let sender = tokio::spawn(async move {
            for id in [1, 20, 300] {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.send(message("t.Req", json!({ "id": id })))
                    .await
                    .unwrap();
            }
        });
        let (result, _) = run_blocking(&script, call, usize::MAX).await;
        sender.await.unwrap();
        assert_eq!(
            to_json(&result.unwrap().reply.unwrap()),
            json!({ "total": 321, "message": "3 messages" })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_streams_headers_then_messages_in_order() {
        let script = compile(
            r#"
            header("x-a", "1");
            for i in 1..=3 { send(#{ message: `m${i}`, total: i }); sleep(1); }
            trailer("x-t", "done");
            try { header("x-late", "2"); } catch (e) { send(#{ message: `${e}` }); }
            #{ message: "last" }
            "#,
        );
        let mut call = call(Some(message("t.Req", json!({}))));
        call.streaming_response = true;
        let (result, seen) = run_blocking(&script, call, usize::MAX).await;
        let outcome = result.unwrap();
        assert_eq!(
            seen,
            [
                Seen::Headers(vec![("x-a".into(), "1".into())]),
                Seen::Message(json!({ "message": "m1", "total": 1 })),
                Seen::Message(json!({ "message": "m2", "total": 2 })),
                Seen::Message(json!({ "message": "m3", "total": 3 })),
                Seen::Message(
                    json!({ "message": "header(): headers were already sent; set them before the first send()" })
                ),
            ]
        );
        assert_eq!(
            to_json(&outcome.reply.unwrap()),
            json!({ "message": "last" })
        );
        assert_eq!(
            pairs(&outcome.trailers),
            [("x-t".to_string(), "done".to_string())]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gone_client_stops_a_streaming_script() {
        let script = compile(r#"loop { send(#{ message: "again" }); }"#);
        let mut call = call(None);
        call.streaming_response = true;
        let (result, seen) = run_blocking(&script, call, 3).await;
        let status = result.err().unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Cancelled, "client went away")
        );
        assert_eq!(seen.len(), 4); // headers, two messages, and the one that was refused
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_callback_does_not_hang_the_call() {
        let script = compile(r#"loop { send(#{ message: "again" }); }"#);
        let mut call = call(None);
        call.streaming_response = true;
        let task = tokio::task::spawn_blocking(move || {
            script.run(call, &mut |_| panic!("callback failed"))
        });
        let joined = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run() hung");
        assert!(matches!(joined, Err(err) if err.is_panic()));
    }

    /// Scripts that never end by themselves — a loop, a sleep, a wait for a client that sends
    /// nothing — each as a unary and as a streaming call (which runs on the helper thread), with
    /// the client's sender that keeps its stream open.
    fn endless_calls(
        limits: &ScriptLimits,
    ) -> Vec<(
        &'static str,
        Script,
        ScriptCall,
        tokio::sync::mpsc::Sender<DynamicMessage>,
    )> {
        let sources = ["loop { }", "sleep(60000); #{}", "let m = next(); #{}"];
        sources
            .into_iter()
            .flat_map(|s| [(s, false), (s, true)])
            .map(|(source, streaming)| {
                let mut call = call(None);
                call.streaming_response = streaming;
                let (client, rx) = tokio::sync::mpsc::channel(1);
                call.incoming = Some(rx);
                (source, compile_with(limits.clone(), source), call, client)
            })
            .collect()
    }

    /// `--script-timeout` is enforced by the engine itself: between operations, and in the waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_script_timeout_stops_an_endless_loop_a_sleep_and_a_wait_for_the_client() {
        let limits = ScriptLimits {
            max_operations: 0,
            max_duration: Duration::from_millis(100),
            ..Default::default()
        };
        for (source, script, call, _client) in endless_calls(&limits) {
            let started = Instant::now();
            let (result, _) = run_blocking(&script, call, usize::MAX).await;
            let status = result.err().unwrap();
            assert_eq!(
                (status.code(), status.message()),
                (
                    Code::DeadlineExceeded,
                    "script ran longer than 100ms (--script-timeout)"
                ),
                "{source}"
            );
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(100), "{source}: {took:?}");
            assert!(took < Duration::from_secs(5), "{source}: {took:?}");
        }
    }

    #[test]
    fn a_script_that_cannot_wait_runs_inline() {
        let script = compile(r#"header("x-a", "1"); #{ message: "hi " + request.name }"#);
        let Inline::Ran { headers, result } =
            script.try_run_inline(call(Some(message("t.Req", json!({ "name": "x" })))))
        else {
            panic!("declined");
        };
        assert_eq!(pairs(&headers), [("x-a".to_string(), "1".to_string())]);
        assert_eq!(
            to_json(&result.unwrap().reply.unwrap()),
            json!({ "message": "hi x" })
        );

        // Its failures too, with the headers set before.
        let script = compile(r#"header("x-a", "1"); fail("NOT_FOUND", "none")"#);
        let Inline::Ran { headers, result } = script.try_run_inline(call(None)) else {
            panic!("declined");
        };
        assert_eq!(headers.len(), 1);
        assert_eq!(result.err().unwrap().code(), Code::NotFound);
    }

    /// Streams, scripts that name a waiting function, and scripts that turn out to wait or to run
    /// long are handed back untouched, to run from the start on a blocking thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripts_that_may_wait_or_run_long_are_handed_back() {
        let mut streaming = call(None);
        streaming.streaming_response = true;
        let mut reading = call(None);
        reading.incoming = Some(tokio::sync::mpsc::channel(1).1);
        for (source, call) in [
            ("#{}", streaming),
            ("#{}", reading),
            ("sleep(1); #{}", call(None)),
            ("print(1); #{}", call(None)),
        ] {
            assert!(
                matches!(compile(source).try_run_inline(call), Inline::Declined(_)),
                "{source}"
            );
        }

        // A sleep reached through a name built at run time, after a header and a trailer; and a
        // loop past the inline budget. Both then run in full where blocking is allowed.
        for source in [
            r#"header("x-a", "1"); trailer("x-t", "2"); call(Fn("sl" + "eep"), 1); #{ total: 1 }"#,
            r#"header("x-a", "1"); trailer("x-t", "2"); let n = 0; for i in 0..100000 { n += 1 } #{ total: n / 100000 }"#,
        ] {
            let script = compile(source);
            let Inline::Declined(call) = script.try_run_inline(call(None)) else {
                panic!("ran inline: {source}");
            };
            let (result, seen) = run_blocking(&script, call, usize::MAX).await;
            let outcome = result.unwrap();
            assert_eq!(to_json(&outcome.reply.unwrap()), json!({ "total": 1 }));
            assert_eq!(seen, [Seen::Headers(vec![("x-a".into(), "1".into())])]);
            assert_eq!(
                pairs(&outcome.trailers),
                [("x-t".to_string(), "2".to_string())]
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancellation_stops_an_endless_loop_and_a_sleep() {
        let limits = ScriptLimits {
            max_operations: u64::MAX,
            ..Default::default()
        };
        for (source, script, call, _client) in endless_calls(&limits) {
            let cancel = call.cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                cancel.cancel();
            });
            let started = Instant::now();
            let (result, _) = run_blocking(&script, call, usize::MAX).await;
            let status = result.err().unwrap();
            assert_eq!(
                (status.code(), status.message()),
                (Code::Cancelled, "call cancelled"),
                "{source}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{source}: {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleep_waits() {
        let started = Instant::now();
        let (result, _) = run_blocking(
            &compile("sleep(30); sleep(0.5); #{}"),
            call(None),
            usize::MAX,
        )
        .await;
        result.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn syntax_errors_point_into_the_file() {
        let engine = engine(ScriptLimits::default());
        let d = engine
            .compile(Path::new("h.toml"), "let x = 1;\nlet y = ;\n", 3)
            .err()
            .unwrap();
        assert_eq!(
            (d.file.as_path(), d.line, d.column),
            (Path::new("h.toml"), 5, 9)
        );
        assert_eq!(d.source_line.as_deref(), Some("let y = ;"));

        let d = engine
            .compile(Path::new("s.rhai"), "#{ a: 1 ", 0)
            .err()
            .unwrap();
        assert_eq!(d.line, 1, "{d}");

        // Strict variables: a misspelt name is a load error, not `()` at run time.
        let d = engine
            .compile(Path::new("s.rhai"), "\nrequets.name", 0)
            .err()
            .unwrap();
        assert_eq!((d.line, d.column), (2, 1), "{d}");
        assert!(d.message.contains("requets"), "{d}");
    }

    #[test]
    fn no_imports_and_no_files() {
        let engine = engine(ScriptLimits::default());
        let d = engine
            .compile(Path::new("s.rhai"), "import \"/etc/passwd\" as p;\np::x", 0)
            .err()
            .unwrap();
        assert_eq!((d.line, d.column), (1, 1), "{d}");

        // Not through eval() either.
        let script = compile(r#"eval("import \"/etc/passwd\" as p; 1")"#);
        assert_eq!(run_err(&script, call(None)).code(), Code::Unknown);

        // And there is no function to read a file.
        for source in [
            r#"open_file("/etc/passwd")"#,
            r#"read_string("/etc/passwd")"#,
            r#"File("/etc/passwd")"#,
        ] {
            let status = run_err(&compile(source), call(None));
            assert!(
                status.message().contains("Function not found"),
                "{source}: {}",
                status.message()
            );
        }
    }

    /// Not an assertion: run with `cargo test --release -- --nocapture per_call_overhead`.
    #[test]
    fn per_call_overhead() {
        let script = compile(r#"#{ message: "hello " + request.name, total: 42 }"#);
        let request = message("t.Req", json!({ "name": "world" }));
        let iterations = if cfg!(debug_assertions) {
            2_000
        } else {
            200_000
        };
        for _ in 0..iterations / 10 {
            run(&script, call(Some(request.clone()))).unwrap();
        }
        let started = Instant::now();
        for _ in 0..iterations {
            run(&script, call(Some(request.clone()))).unwrap();
        }
        let per_call = started.elapsed() / iterations;
        println!("per-call overhead, unary script building a two-field map: {per_call:?}");

        // A streaming response pays for its helper thread.
        let script = compile(r#"send(#{ message: "hello " + request.name, total: 42 })"#);
        let iterations = iterations / 10;
        let started = Instant::now();
        for _ in 0..iterations {
            let mut call = call(Some(request.clone()));
            call.streaming_response = true;
            run(&script, call).unwrap();
        }
        let per_call = started.elapsed() / iterations;
        println!("per-call overhead, streaming script sending that map once: {per_call:?}");
    }
}
