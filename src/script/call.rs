//! The state of the call a script is running for, where the registered API functions find it: a
//! thread-local installed for the length of one run ([`Installed`]), the memory meter of
//! `--script-max-memory`, and the two ways the API stops a script ([`Stop`], which `try`/`catch`
//! cannot catch, and [`ApiError`], a script bug it can). Below both the runner (`mod.rs`) and the
//! API functions (`api`), which share it.

use std::cell::{Cell, RefCell};
use std::sync::mpsc;
use std::time::Instant;

use prost_reflect::{DynamicMessage, MessageDescriptor};
use rhai::{Dynamic, EvalAltResult, Position};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::Code;

/// Operations a script may run on an async worker before it is moved to a blocking thread: a few
/// hundred microseconds at most, so a busy script cannot stall the other calls of its worker.
pub(super) const INLINE_OPERATIONS: u64 = 20_000;

pub(crate) enum ScriptEvent {
    /// Exactly once: before the first `Message`, or before `run()` returns when no message was
    /// sent (also when it returns an error). All headers set so far.
    Headers(MetadataMap),
    Message(DynamicMessage),
}

thread_local! {
    /// The state of the call running on this thread, if any.
    pub(super) static CURRENT: RefCell<Option<CallState>> = const { RefCell::new(None) };
}

pub(super) struct CallState {
    pub(super) incoming: Option<tokio::sync::mpsc::Receiver<DynamicMessage>>,
    pub(super) output: MessageDescriptor,
    pub(super) streaming_response: bool,
    pub(super) cancel: CancellationToken,
    /// Captured by `run()`: the helper thread of a streaming call is outside the runtime.
    pub(super) runtime: Option<Handle>,
    /// `--script-timeout` from the start of the run.
    pub(super) deadline: Option<Instant>,
    /// Running on an async worker: must not block, nor run long (see `Script::try_run_inline`).
    pub(super) inline: bool,
    pub(super) headers: MetadataMap,
    pub(super) trailers: MetadataMap,
    pub(super) headers_sent: bool,
    /// Where `send()` delivers events; set only on the helper thread of a streaming call.
    pub(super) sink: Option<EventSink>,
}

impl CallState {
    /// Why the progress hook should stop the script now, if it should.
    pub(super) fn interruption(&self, ops: u64) -> Option<Stop> {
        if self.cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Stop::TimedOut)
        } else if self.inline && ops >= INLINE_OPERATIONS {
            Some(Stop::NotInline)
        } else {
            None
        }
    }
}

/// The helper thread's end of the relay to the caller's `events` callback.
pub(super) struct EventSink(pub(super) mpsc::SyncSender<ScriptEvent>);

impl EventSink {
    /// Queues `event` for the caller's callback; false when the client is gone.
    pub(super) fn emit(&self, event: ScriptEvent) -> bool {
        self.0.send(event).is_ok()
    }
}

thread_local! {
    /// The net allocation (`alloc_meter::net_allocated`) past which the script evaluating on this
    /// thread is stopped; `None` when none is, or it has no limit.
    static MEMORY_CEILING: Cell<Option<isize>> = const { Cell::new(None) };
}

/// `--script-max-memory`. A script evaluates on one thread from start to end (inline on an async
/// worker, on a blocking thread, or on a streaming call's helper thread — a run moved off a worker
/// starts again from the beginning), so what it holds is the growth of that thread's net
/// allocation since it started, which the global allocator keeps (`alloc_meter`). Checked by the
/// progress hook on every operation; values handed to another thread (`send()`) are taken off.
pub(super) struct MemoryMeter;

impl MemoryMeter {
    /// Starts metering this thread, `charged` bytes already held; stops when dropped.
    pub(super) fn start(limit: usize, charged: isize) -> Option<MemoryMeter> {
        if limit == 0 {
            return None;
        }
        let ceiling = alloc_meter::net_allocated()
            .saturating_sub(charged)
            .saturating_add(isize::try_from(limit).unwrap_or(isize::MAX));
        MEMORY_CEILING.with(|c| c.set(Some(ceiling)));
        Some(MemoryMeter)
    }

    pub(super) fn exceeded() -> bool {
        MEMORY_CEILING
            .with(Cell::get)
            .is_some_and(|ceiling| alloc_meter::net_allocated() > ceiling)
    }

    /// `bytes` allocated here now belong to another thread.
    pub(super) fn released(bytes: isize) {
        MEMORY_CEILING.with(|c| c.set(c.get().map(|ceiling| ceiling.saturating_add(bytes))));
    }
}

impl Drop for MemoryMeter {
    fn drop(&mut self) {
        MEMORY_CEILING.with(|c| c.set(None));
    }
}

/// Puts a call's state where the registered functions find it, and clears it even on unwind.
pub(super) struct Installed;

impl Installed {
    pub(super) fn new(state: CallState) -> Self {
        CURRENT.with(|cell| *cell.borrow_mut() = Some(state));
        Self
    }

    pub(super) fn finish(self) -> CallState {
        CURRENT
            .with(|cell| cell.borrow_mut().take())
            .expect("call state installed by Installed::new")
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|cell| cell.borrow_mut().take());
    }
}

/// Runs `f` on the current call's state.
pub(super) fn with_call<R>(
    f: impl FnOnce(&mut CallState) -> Result<R, Box<EvalAltResult>>,
) -> Result<R, Box<EvalAltResult>> {
    CURRENT.with(|cell| {
        let mut state = cell
            .try_borrow_mut()
            .map_err(|_| api_error(Code::Internal, "script API re-entered"))?;
        let state = state
            .as_mut()
            .ok_or_else(|| api_error(Code::Internal, "script API used outside a call"))?;
        f(state)
    })
}

/// Why the API stopped a script. Carried by `ErrorTerminated`, which `try`/`catch` cannot catch.
#[derive(Clone, Debug)]
pub(super) enum Stop {
    Fail(Code, String),
    Cancelled,
    /// Past `--script-timeout`.
    TimedOut,
    ClientGone,
    /// An inline run must move to a blocking thread (see `Script::try_run_inline`).
    NotInline,
    /// Past `--script-max-memory`.
    OutOfMemory,
}

pub(super) fn stop(reason: Stop) -> Box<EvalAltResult> {
    EvalAltResult::ErrorTerminated(Dynamic::from(reason), Position::NONE).into()
}

/// A misuse of the API (a script bug, catchable). Reported as "script error at FILE:LINE:COL" —
/// a plain string would be indistinguishable from `throw "text"`.
#[derive(Clone, Debug)]
pub(super) struct ApiError {
    pub(super) code: Code,
    pub(super) message: String,
}

pub(super) fn api_error(code: Code, message: impl Into<String>) -> Box<EvalAltResult> {
    // Position::NONE is filled in by Rhai with the call site.
    EvalAltResult::ErrorRuntime(
        Dynamic::from(ApiError {
            code,
            message: message.into(),
        }),
        Position::NONE,
    )
    .into()
}
