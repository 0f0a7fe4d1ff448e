//! Every call seen once, at the engine's boundary: the per-call log line and the journal.
//!
//! A protocol hands its [`engine::Call`] to [`answer`] rather than to `engine::answer`, with what
//! only it knows ([`Seen`]: its name, the client's address). Here the call's requests are seen as
//! the engine reads them (it tells each message of a stream, [`engine::Watch::request`]) and its
//! reply events as the protocol writes them, and when the call ends — its `End` passes, or the
//! protocol drops the reply (client gone, deadline, shutdown) — it is logged and its journal
//! record closed. Nothing above the engine is told twice and no protocol records anything itself,
//! so all four protocols and all four shapes are recorded alike.
//!
//! The engine tells which rule answered through [`engine::Watch`] (the one fact the events do not
//! carry). A [`Record`] is kept only for the journal (on unless `--no-journal`); for the call log
//! alone — which writes a line only for a call no rule matched or whose script failed, or a line
//! per call at INFO — the engine tells a small lock-free [`Told`] and the line is written from it
//! and the reply; with neither, a call goes straight to the engine, counted in the metrics only.

pub(crate) mod journal;
mod log;
pub(crate) mod stderr;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt as _};
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::engine::{self, Event, Reply};
use crate::metrics::CallTimer;
use journal::{Journal, Record, Unary};
pub(crate) use log::install as install_call_log;

/// The protocol a call came in by (defined with the metrics, below, which count by it).
pub(crate) use crate::metrics::Protocol;

/// What a protocol knows of a call that the engine does not.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub protocol: Protocol,
    pub peer: Option<SocketAddr>,
    /// Where the server records its calls.
    pub observer: &'static Observer,
    /// When the call must be answered by: a call cut short after it ended DEADLINE_EXCEEDED.
    pub deadline: Option<Instant>,
}

/// The client's address, in the extensions of a request that reaches the router through a tower
/// service (tonic-web, the CORS layer) rather than a call that can carry it: the router is called
/// with the client's address otherwise, which costs a request no extension map.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub Option<SocketAddr>);

/// Marks a gRPC-Web request translated to gRPC, so that the gRPC branch records it as gRPC-Web.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FromGrpcWeb(pub Option<SocketAddr>);

impl Seen {
    /// A call of `protocol` from `peer`, whose request carried `extensions`.
    pub(crate) fn of(
        extensions: &http::Extensions,
        protocol: Protocol,
        peer: Option<SocketAddr>,
        observer: &'static Observer,
    ) -> Seen {
        match (protocol, extensions.get::<FromGrpcWeb>()) {
            (Protocol::Grpc, Some(web)) => Seen {
                protocol: Protocol::GrpcWeb,
                peer: web.0,
                observer,
                deadline: None,
            },
            _ => Seen {
                protocol,
                peer,
                observer,
                deadline: None,
            },
        }
    }

    /// The same, for a call with `deadline`.
    pub(crate) fn until(self, deadline: Option<Instant>) -> Seen {
        Seen { deadline, ..self }
    }
}

/// The journal and the call log, shared by every call of the server.
#[derive(Debug)]
pub(crate) struct Observer {
    journal: Option<Journal>,
}

impl Observer {
    pub(crate) fn new(journal: Option<Journal>) -> Observer {
        Observer { journal }
    }

    pub(crate) fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// How calls are recorded: in a [`Record`] for the journal; only told what a log line needs
    /// when that is all; not at all when the call log is off too.
    fn recording(&self) -> Recording {
        match (self.journal.is_some(), log::enabled()) {
            (true, _) => Recording::Record,
            (false, true) => Recording::Line,
            (false, false) => Recording::Nothing,
        }
    }
}

/// The wall-clock time of `at`: the wall clock is read once a second per thread and carried
/// forward by the monotonic one, so that a call reads one clock, not two.
pub(crate) fn wall_clock(at: Instant) -> WallTime {
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, WallTime)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        if let Some((then, wall)) = anchor.get() {
            match at.checked_duration_since(then) {
                Some(since) if since < Duration::from_secs(1) => return wall.after(since),
                _ => {}
            }
        }
        let wall = WallTime::of(SystemTime::now());
        anchor.set(Some((at, wall)));
        wall
    })
}

/// A wall-clock time as nanoseconds since the Unix epoch (good until 2554), as the journal keeps
/// it and the log prints it: `SystemTime`'s arithmetic and conversions took a few hundred
/// instructions a call with both on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WallTime(u64);

impl WallTime {
    pub(crate) fn of(at: SystemTime) -> WallTime {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        WallTime(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// `elapsed` later.
    pub(crate) fn after(self, elapsed: Duration) -> WallTime {
        let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        WallTime(self.0.saturating_add(elapsed))
    }

    /// Whole seconds since the epoch.
    pub(crate) fn secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// The nanoseconds past [`WallTime::secs`].
    pub(crate) fn subsec_nanos(self) -> u32 {
        (self.0 % 1_000_000_000) as u32
    }

    pub(crate) fn system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }
}

/// Answers `call` with the engine, recording it, and counting it in the metrics (`crate::metrics`:
/// its status, protocol and time; the engine counts the rules' hits).
///
/// Not an `async fn`, and inlined: the engine's own future is returned with the step that sees its
/// reply ([`Answer`]), made where the protocol's future holds it. A call's future is large, and
/// each layer around it, or each move of it before its first poll, is one more copy of it a call.
#[inline(always)]
pub(crate) fn answer(mut call: engine::Call, seen: Seen) -> Answer<impl Future<Output = Reply>> {
    let after = watched(&mut call, seen);
    Answer {
        after,
        answer: engine::answer(call),
    }
}

/// What is done with `call`'s reply; the call is watched, if it is recorded.
fn watched(call: &mut engine::Call, seen: Seen) -> After {
    // An admin API call is no call to the mock: neither recorded nor counted.
    if call.method.is_native() {
        return After::Nothing;
    }
    let observer = seen.observer;
    let timer = call.method.call_timer(seen.protocol, seen.deadline);
    match observer.recording() {
        Recording::Nothing => After::Count(timer),
        Recording::Line => {
            let told = Arc::new(Told::default());
            call.watch = Some(told.clone());
            let line = Line {
                told,
                method: call.method.clone(),
                seen,
                clock: timer.started().unwrap_or_else(Instant::now),
                every: log::every_call(),
                open: true,
            };
            After::Line(line, timer)
        }
        Recording::Record => {
            let clock = timer.started().unwrap_or_else(Instant::now);
            let journal = observer.journal.as_ref();
            // A call with one request goes without a record unless it waits (see
            // `journal::unary`).
            let kept = match journal.and_then(|j| Unary::start(call, seen, j, clock)) {
                Some(unary) => {
                    call.watch = Some(unary.clone());
                    Kept::Unary(unary)
                }
                None => {
                    let record = Record::start(call, seen, journal, clock);
                    call.watch = Some(record.clone());
                    Kept::Record(record)
                }
            };
            After::Record(Unseen(Some(kept)), timer)
        }
    }
}

pin_project_lite::pin_project! {
    /// The engine's answer to a call, and what is done with its reply when it comes ([`After`]).
    ///
    /// Not `FutureExt::map` over a future made out of line: moved from there into the protocol's
    /// future, the engine's future (a unary answer's whole state, over a kilobyte) was copied
    /// whole, twice a call. Made inline, only what is set before the first poll is copied (the
    /// call and this step). The reply is seen where the engine's poll put it, not moved through
    /// a closure (`bench/AB.md`, session 17).
    pub(crate) struct Answer<F> {
        after: After,
        #[pin]
        answer: F,
    }
}

impl<F: Future<Output = Reply>> Future for Answer<F> {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = self.project();
        // Seen in place: a unary reply is large to move.
        let mut poll = this.answer.poll(cx);
        if let Poll::Ready(reply) = &mut poll {
            this.after.seen(reply);
        }
        poll
    }
}

enum Recording {
    Nothing,
    Line,
    Record,
}

/// What the engine tells of a call that its log line needs (see [`Recording::Line`]): much less
/// than a [`Record`] keeps, and without a lock. A call kept for the journal without a record
/// (`journal::Unary`) is told the same.
struct Told {
    /// The first rule that answered; `usize::MAX` for none.
    rule: AtomicUsize,
    unmatched: AtomicBool,
}

impl Default for Told {
    fn default() -> Told {
        Told {
            rule: AtomicUsize::new(usize::MAX),
            unmatched: AtomicBool::new(false),
        }
    }
}

impl Told {
    /// The first rule that answered, if one did.
    fn answered_by(&self) -> Option<usize> {
        let rule = self.rule.load(Ordering::Relaxed);
        (rule != usize::MAX).then_some(rule)
    }

    fn was_unmatched(&self) -> bool {
        self.unmatched.load(Ordering::Relaxed)
    }
}

impl engine::Watch for Told {
    fn rule(&self, index: usize) {
        let _ = self
            .rule
            .compare_exchange(usize::MAX, index, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn unmatched(&self) {
        self.unmatched.store(true, Ordering::Relaxed);
    }

    fn metadata(&self, _: MetadataMap, _: bool) {}

    fn request(&self, _: &engine::Request) {}

    fn wants_requests(&self) -> bool {
        false
    }
}

/// A call whose only record is its log line, if it has one (a WARN line, or with `every` a line
/// per call). Dropped before its end was seen (the client went away, the deadline or the shutdown
/// cut the call), it is logged as [`cut`] says.
struct Line {
    told: Arc<Told>,
    method: Arc<engine::Method>,
    seen: Seen,
    clock: Instant,
    /// A line per call (INFO), not only the WARN ones.
    every: bool,
    /// Not logged yet.
    open: bool,
}

impl Line {
    /// [`Line::ended`], and `timer` ended with it: the line's clock is the timer's, so the time
    /// the call took is read once when the line read it.
    fn end(&mut self, code: Code, message: &str, timer: &mut CallTimer) {
        match self.ended(code, message) {
            Some(elapsed) => timer.end_after(code, elapsed),
            None => timer.end(code),
        }
    }

    /// The call ended with `end`: its line, if it has one; the time the call took, if read.
    fn ended(&mut self, code: Code, message: &str) -> Option<Duration> {
        self.open = false;
        let unmatched = self.told.was_unmatched();
        if !self.every && !log::may_warn(&self.method, unmatched, code, message) {
            return None;
        }
        let elapsed = self.clock.elapsed();
        log::call_ended(log::Line {
            protocol: self.seen.protocol,
            method: &self.method,
            peer: self.seen.peer,
            code,
            message,
            rule: self.told.answered_by(),
            unmatched,
            elapsed,
            ended: wall_clock(self.clock + elapsed),
        });
        Some(elapsed)
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.open {
            let (code, message) = cut(self.seen.deadline);
            self.ended(code, message);
        }
    }
}

/// What a call whose reply was dropped before its end is recorded as: DEADLINE_EXCEEDED past its
/// deadline (what the client was told), else CANCELLED.
fn cut(deadline: Option<Instant>) -> (Code, &'static str) {
    match crate::codes::cut_short(deadline) {
        Code::DeadlineExceeded => (
            Code::DeadlineExceeded,
            "the call's deadline passed before its end",
        ),
        code => (
            code,
            "the reply was dropped before its end: the client went away, or the shutdown ended the call",
        ),
    }
}

/// What is done with a call's reply when the engine gives it.
enum After {
    Nothing,
    /// Counted in the metrics.
    Count(CallTimer),
    /// Counted, and logged if it should be.
    Line(Line, CallTimer),
    /// Recorded, and counted.
    Record(Unseen, CallTimer),
}

/// What keeps a call for the journal: its record, or for a call with one request not listed (yet)
/// its [`Unary`].
enum Kept {
    Record(Arc<Record>),
    Unary(Arc<Unary>),
}

impl Kept {
    /// A unary answer, whole; the time the call took.
    fn ready(&self, ready: &engine::Ready) -> Duration {
        match self {
            Kept::Record(record) => record.ready(ready),
            Kept::Unary(unary) => unary.ready(ready),
        }
    }

    /// The end, with no message; the time the call took.
    fn end(&self, end: &engine::End) -> Duration {
        match self {
            Kept::Record(record) => record.end(end),
            Kept::Unary(unary) => unary.end(end),
        }
    }

    fn cut(&self) {
        match self {
            Kept::Record(record) => record.cut(),
            Kept::Unary(unary) => unary.cut(),
        }
    }

    /// The call's record, for a reply that streams.
    fn into_record(self) -> Arc<Record> {
        match self {
            Kept::Record(record) => record,
            Kept::Unary(unary) => unary.record().clone(),
        }
    }
}

/// A call whose reply has not been seen: if the call is dropped before the engine answers (the
/// client went away during a rule's delay), it is closed as cut, as a dropped stream is.
struct Unseen(Option<Kept>);

impl Drop for Unseen {
    fn drop(&mut self) {
        if let Some(kept) = self.0.take() {
            kept.cut();
        }
    }
}

impl After {
    /// Sees `reply`, in place (a unary one is large to move): a whole one ends the call, a stream
    /// is wrapped to be seen event by event.
    fn seen(&mut self, reply: &mut Reply) {
        let (end, ready) = match reply {
            Reply::Ready(ready) => (&ready.end, Some(&*ready)),
            Reply::Refused(end) => (&*end, None),
            Reply::Stream(streamed) => return self.streams(streamed),
        };
        match self {
            After::Nothing => {}
            After::Count(timer) => timer.end(end.code),
            After::Line(line, timer) => line.end(end.code, &end.message, timer),
            After::Record(unseen, timer) => {
                let Some(kept) = unseen.0.take() else {
                    return;
                };
                // The record's clock is the timer's: the time taken is read once.
                let elapsed = match ready {
                    Some(ready) => kept.ready(ready),
                    None => kept.end(end),
                };
                timer.end_after(end.code, elapsed);
            }
        }
    }

    /// Sees a reply that streams: its events are wrapped, to be seen as they pass.
    fn streams(&mut self, streamed: &mut engine::Streamed) {
        let (recorder, timer) = match std::mem::replace(self, After::Nothing) {
            After::Nothing => return,
            After::Count(timer) if timer.is_off() => return,
            After::Count(timer) => (Recorder::Nothing, timer),
            After::Line(line, timer) => (Recorder::Line(line), timer),
            After::Record(mut unseen, timer) => {
                let Some(kept) = unseen.0.take() else {
                    return;
                };
                let record = kept.into_record();
                record.headers(&streamed.headers);
                (Recorder::Record(record), timer)
            }
        };
        // Replaced at once by the same events, observed (an empty stream is a box of nothing).
        let events = std::mem::replace(&mut streamed.events, Box::pin(futures::stream::empty()));
        streamed.events = Box::pin(Observed {
            events,
            record: recorder,
            timer,
        });
    }
}

/// A streamed reply, recorded event by event as the protocol polls it, and its end counted.
struct Observed {
    events: engine::Events,
    record: Recorder,
    timer: CallTimer,
}

/// What records a streamed reply's events.
enum Recorder {
    Nothing,
    Line(Line),
    Record(Arc<Record>),
}

impl Stream for Observed {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let event = std::task::ready!(self.events.poll_next_unpin(cx));
        match (&event, &self.record) {
            (Some(Event::Message(message)), Recorder::Record(record)) => record.reply(message),
            (Some(Event::End(end)), Recorder::Record(record)) => {
                let elapsed = record.end(end);
                self.timer.end_after(end.code, elapsed);
            }
            (Some(Event::End(end)), _) => {
                let Observed { record, timer, .. } = &mut *self;
                match record {
                    Recorder::Line(line) => line.end(end.code, &end.message, timer),
                    _ => timer.end(end.code),
                }
            }
            _ => {}
        }
        Poll::Ready(event)
    }
}

impl Drop for Observed {
    /// A reply dropped before its end: the client went away, or the deadline or the shutdown cut
    /// it. Recorded (and counted, by the timer's own drop) as `codes::cut_short` says —
    /// DEADLINE_EXCEEDED past the call's deadline, else CANCELLED — unless the end was seen.
    fn drop(&mut self) {
        if let Recorder::Record(record) = &self.record {
            record.cut();
        }
    }
}
