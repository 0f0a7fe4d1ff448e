//! The call log: one line per call when it ends, at INFO under the target `protodrop::call`;
//! at WARN when no rule matched or a script failed, with the reason. The format (text or JSON)
//! and the filter are the process's log's (`--log-format`, `RUST_LOG`):
//! `RUST_LOG=info,protodrop::call=warn` (the default) keeps only the WARN lines, `=off` none.
//! The serving binary writes the lines itself ([`install`]); elsewhere they are tracing events.
//!
//! Where a call ends, its INFO line is only queued (what it says, the method shared): the log's
//! writer thread formats the queue in batches ([`drain`], see `observe::stderr` for why). A WARN
//! line is formatted at once, as its reason is text of the moment, and queued in its turn.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use tonic::Code;

use super::stderr::Stderr;
use super::{Protocol, WallTime};
use crate::engine::Method;
use crate::rules::Answer;

/// What the line of one call says.
pub(super) struct Line<'a> {
    pub protocol: Protocol,
    pub method: &'a Arc<Method>,
    pub peer: Option<std::net::SocketAddr>,
    pub code: Code,
    pub message: &'a str,
    /// The first rule that answered.
    pub rule: Option<usize>,
    pub unmatched: bool,
    pub elapsed: Duration,
    /// When the call ended, by the wall clock.
    pub ended: WallTime,
}

/// Whether any call's line may be written: at WARN (no rule matched, a script failed) when not
/// at INFO (every call).
pub(super) fn enabled() -> bool {
    match SINK.get() {
        Some(sink) => sink.warn,
        None => tracing::enabled!(target: TARGET, tracing::Level::WARN),
    }
}

/// Whether every call's line is written (INFO), not only the WARN ones.
pub(super) fn every_call() -> bool {
    match SINK.get() {
        Some(sink) => sink.info,
        None => tracing::enabled!(target: TARGET, tracing::Level::INFO),
    }
}

/// Whether a call that ended so may have a WARN line: cheap to ask of every call, and never false
/// for a call [`call_ended`] would warn of.
pub(super) fn may_warn(method: &Method, unmatched: bool, code: Code, message: &str) -> bool {
    unmatched || method.rules.is_none() || (code != Code::Ok && message.starts_with("script "))
}

/// Why a call is logged at WARN: no rule answered it, or its script failed.
enum Warning<'a> {
    Unanswered { reason: &'static str, tried: String },
    ScriptFailed(&'a str),
}

pub(super) fn call_ended(line: Line<'_>) {
    let warning = warning(&line);
    match (SINK.get(), &warning) {
        (Some(sink), None) if sink.info => sink.queue(Queued::Call(Said::of(&line))),
        (Some(sink), Some(warning)) if sink.warn => {
            let mut text = Vec::new();
            SCRATCH.with_borrow_mut(|scratch| {
                format(scratch, sink.json, &line, Some(warning), &mut text)
            });
            sink.queue(Queued::Text(text.into_boxed_slice()));
        }
        (Some(_), _) => {}
        (None, _) => event(&line, warning.as_ref()),
    }
}

/// A call's line as queued for the writer thread.
enum Queued {
    /// An INFO line, formatted when written.
    Call(Said),
    /// A WARN line, formatted where the call ended.
    Text(Box<[u8]>),
}

/// What an INFO line says, owned.
struct Said {
    protocol: Protocol,
    method: Arc<Method>,
    peer: Option<SocketAddr>,
    code: Code,
    rule: Option<usize>,
    elapsed: Duration,
    ended: WallTime,
}

impl Said {
    fn of(line: &Line<'_>) -> Said {
        Said {
            protocol: line.protocol,
            method: line.method.clone(),
            peer: line.peer,
            code: line.code,
            rule: line.rule,
            elapsed: line.elapsed,
            ended: line.ended,
        }
    }

    fn line(&self) -> Line<'_> {
        Line {
            protocol: self.protocol,
            method: &self.method,
            peer: self.peer,
            code: self.code,
            message: "",
            rule: self.rule,
            unmatched: false,
            elapsed: self.elapsed,
            ended: self.ended,
        }
    }
}

/// Most lines queued; past it, lines are dropped (and the drop said) until the writer catches up.
const MOST_QUEUED: usize = 64 << 10;
/// Lines queued that wake the writer before its period is up.
const BATCH: usize = 256;

impl Sink {
    fn queue(&self, queued: Queued) {
        let mut queue = self.lock();
        if queue.len() >= MOST_QUEUED {
            drop(queue);
            self.stderr.dropped();
            return;
        }
        queue.push(queued);
        let due = queue.len() == BATCH;
        drop(queue);
        if due {
            self.stderr.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Queued>> {
        // A panic while the queue was held leaves it whole (each step is one push or swap).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queued lines, formatted into `out`: run by the log's writer thread (or by a tracing line
/// about to be written, to keep the order).
fn drain(out: &mut Vec<u8>) {
    thread_local! {
        /// The queue as taken, reused from batch to batch.
        static TAKEN: RefCell<Vec<Queued>> = const { RefCell::new(Vec::new()) };
    }
    let Some(sink) = SINK.get() else { return };
    TAKEN.with_borrow_mut(|taken| {
        std::mem::swap(&mut *sink.lock(), taken);
        SCRATCH.with_borrow_mut(|scratch| {
            for queued in taken.drain(..) {
                match queued {
                    Queued::Call(said) => format(scratch, sink.json, &said.line(), None, out),
                    Queued::Text(text) => out.extend_from_slice(&text),
                }
            }
        });
    });
}

fn warning<'a>(line: &Line<'a>) -> Option<Warning<'a>> {
    let served = line.method;
    if !may_warn(served, line.unmatched, line.code, line.message) {
        return None;
    }
    if line.unmatched || served.rules.is_none() {
        let rules = served.rules.as_ref();
        let tried: Vec<&str> = rules.map_or(Vec::new(), |r| {
            r.rules.iter().map(|r| r.origin.as_str()).collect()
        });
        let reason = if rules.is_none() {
            "no handler file has a rule for this method"
        } else {
            "no rule matched"
        };
        return Some(Warning::Unanswered {
            reason,
            tried: tried.join(", "),
        });
    }
    let scripted = line.rule.is_some_and(|i| {
        served
            .rules
            .as_ref()
            .and_then(|r| r.rules.get(i))
            .is_some_and(|r| matches!(r.answer, Answer::Script(_)))
    });
    (scripted && line.code != Code::Ok && line.message.starts_with("script "))
        .then_some(Warning::ScriptFailed(line.message))
}

/// What a thread keeps between its call lines: the line being made, and the parts that repeat
/// from line to line, formatted once (the client's address, for the calls of one connection; the
/// time up to the second).
struct Scratch {
    peer: Option<Option<SocketAddr>>,
    /// The client's address as its field (` peer=…`), written when it changes.
    peer_text: Vec<u8>,
    second: u64,
    second_text: Vec<u8>,
    /// The fields of the last INFO line that the next one likely repeats (protocol, method, code,
    /// rule), as written: a client calling one method again and again gets the same ones.
    same: Same,
}

struct Same {
    protocol: &'static str,
    code: Code,
    /// The method as served (held, so that its address names it until the next line).
    method: Option<Arc<Method>>,
    rule: Option<usize>,
    text: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            peer: None,
            peer_text: Vec::new(),
            second: u64::MAX,
            second_text: Vec::new(),
            same: Same {
                protocol: "",
                code: Code::Ok,
                method: None,
                rule: None,
                text: Vec::new(),
            },
        })
    };
}

/// The line, appended to `out` (in JSON when `json`).
fn format(
    scratch: &mut Scratch,
    json: bool,
    line: &Line<'_>,
    warning: Option<&Warning<'_>>,
    out: &mut Vec<u8>,
) {
    if scratch.peer != Some(line.peer) {
        scratch.peer = Some(line.peer);
        scratch.peer_text.clear();
        Written {
            out: &mut scratch.peer_text,
            json,
        }
        .peer(line.peer);
    }
    let Scratch {
        peer_text,
        second,
        second_text,
        same,
        ..
    } = scratch;
    let message = match warning {
        None => "call",
        Some(Warning::Unanswered { .. }) => "call not answered by a rule",
        Some(Warning::ScriptFailed(_)) => "script failed",
    };
    Written { out, json }.start(warning.is_some(), message, |out| {
        write_time(out, line.ended, second, second_text)
    });
    let protocol = line.protocol.as_str();
    let method = line.method.name.as_str();
    let rule = line.rule.map_or("", |i| line.method.rule_origin(i));
    match warning {
        None => {
            // The same method as served and the same rule of it: the same text.
            let repeated = same.protocol == protocol
                && same.code == line.code
                && same.rule == line.rule
                && same
                    .method
                    .as_ref()
                    .is_some_and(|m| Arc::ptr_eq(m, line.method));
            if !repeated {
                same.text.clear();
                let mut w = Written {
                    out: &mut same.text,
                    json,
                };
                w.fields(protocol, method, line.code, rule);
                w.name("elapsed_us");
                same.protocol = protocol;
                same.code = line.code;
                same.method = Some(line.method.clone());
                same.rule = line.rule;
            }
            out.extend_from_slice(&same.text);
        }
        Some(Warning::Unanswered { tried, .. }) => {
            let mut w = Written { out, json };
            w.fields(protocol, method, line.code, "none");
            w.quoted("tried", tried);
            w.name("elapsed_us");
        }
        Some(Warning::ScriptFailed(_)) => {
            let mut w = Written { out, json };
            w.fields(protocol, method, line.code, rule);
            w.name("elapsed_us");
        }
    }
    // The names before the time taken and the client's address are in the text they follow.
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(line.elapsed.as_micros() as u64)
            .as_bytes(),
    );
    out.extend_from_slice(peer_text);
    let mut w = Written { out, json };
    match warning {
        Some(Warning::Unanswered { reason, .. }) => w.quoted("reason", reason),
        Some(Warning::ScriptFailed(message)) => w.quoted("reason", message),
        None => {}
    }
    w.end();
}

/// The line as a tracing event, when protodrop's own log is not installed (a library user's
/// subscriber takes it).
fn event(line: &Line<'_>, warning: Option<&Warning<'_>>) {
    let protocol = line.protocol.as_str();
    let method = line.method.name.as_str();
    let code = crate::codes::name(line.code);
    let peer = line.peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    let peer = peer.as_str();
    let elapsed_us = line.elapsed.as_micros() as u64;
    let rule = line.rule.map_or("", |i| line.method.rule_origin(i));
    match warning {
        Some(Warning::Unanswered { reason, tried }) => {
            tracing::warn!(target: TARGET, protocol, method, code, rule = "none", tried = tried.as_str(), elapsed_us, peer, reason, "call not answered by a rule")
        }
        Some(Warning::ScriptFailed(reason)) => {
            tracing::warn!(target: TARGET, protocol, method, code, rule, elapsed_us, peer, reason, "script failed")
        }
        None => {
            tracing::info!(target: TARGET, protocol, method, code, rule, elapsed_us, peer, "call")
        }
    }
}

/// A client's address as std writes it, or `-` when not known; an IPv4 one by hand (the calls of
/// a server's connections interleave, so the last address is seldom the same, and the formatting
/// machinery costs a line a third of its time).
fn write_peer(out: &mut Vec<u8>, peer: Option<SocketAddr>) {
    match peer {
        Some(SocketAddr::V4(v4)) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
                out.push(if i < 3 { b'.' } else { b':' });
            }
            out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        Some(peer) => {
            let _ = write!(out, "{peer}");
        }
        None => out.push(b'-'),
    }
}

pub(super) const TARGET: &str = "protodrop::call";

/// Where call lines go when the process's log is protodrop's own ([`install`]): straight into the
/// batched stderr buffer, formatted here. Through tracing, a call's line cost more than answering
/// the call: the dispatch, the filter, the visit of each field and the general formatter. The
/// level is read from the filter once, when installed (the filter is fixed for the process).
struct Sink {
    stderr: Stderr,
    json: bool,
    /// Every call's line is written (INFO), not only the unmatched and failed ones (WARN).
    info: bool,
    warn: bool,
    /// The lines not yet written, in order.
    queue: Mutex<Vec<Queued>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends call lines to `stderr` in the given form (text or JSON, the forms the other lines take)
/// at the levels the installed tracing filter lets through for [`TARGET`]. Call after the
/// subscriber is installed; without it, call lines are tracing events like any other.
pub(crate) fn install(stderr: Stderr, json: bool) {
    stderr.set_drain(drain);
    let _ = SINK.set(Sink {
        stderr,
        json,
        info: tracing::enabled!(target: TARGET, tracing::Level::INFO),
        warn: tracing::enabled!(target: TARGET, tracing::Level::WARN),
        queue: Mutex::new(Vec::new()),
    });
}

/// A call line's fields in order, written as text (`grpc pkg.S/M OK rule=… elapsed_us=…`: the
/// first three bare, strings with spaces quoted) or as tracing-subscriber's JSON
/// (`{"timestamp":…,"level":…,"fields":{"message":…,…},"target":…}`).
struct Written<'b> {
    out: &'b mut Vec<u8>,
    json: bool,
}

impl Written<'_> {
    /// The line's start: its time (written by `time`), level, and message or target.
    fn start(&mut self, warn: bool, message: &str, time: impl FnOnce(&mut Vec<u8>)) {
        let out = &mut *self.out;
        if self.json {
            out.extend_from_slice(b"{\"timestamp\":\"");
            time(out);
            out.extend_from_slice(if warn {
                b"\",\"level\":\"WARN"
            } else {
                b"\",\"level\":\"INFO"
            });
            out.extend_from_slice(b"\",\"fields\":{\"message\":");
            json_str(out, message);
        } else {
            time(out);
            out.extend_from_slice(if warn { b"  WARN " } else { b"  INFO " });
            out.extend_from_slice(TARGET.as_bytes());
            out.push(b':');
        }
    }

    /// The fields every line starts with.
    fn fields(&mut self, protocol: &str, method: &str, code: Code, rule: &str) {
        self.bare("protocol", protocol);
        self.bare("method", method);
        self.bare("code", crate::codes::name(code));
        self.str("rule", rule);
    }

    /// One of the first three fields: bare in text.
    fn bare(&mut self, name: &str, value: &str) {
        if self.json {
            self.str(name, value);
        } else {
            self.out.push(b' ');
            self.out.extend_from_slice(value.as_bytes());
        }
    }

    fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        match self.json {
            true => json_str(self.out, value),
            false => self.out.extend_from_slice(value.as_bytes()),
        }
    }

    /// A string that may hold spaces: quoted in text too.
    fn quoted(&mut self, name: &str, value: &str) {
        self.name(name);
        match self.json {
            true => json_str(self.out, value),
            false => self.out.extend_from_slice(format!("{value:?}").as_bytes()),
        }
    }

    /// The client's address (`-` when not known), as a field; quoted in JSON.
    fn peer(&mut self, peer: Option<SocketAddr>) {
        self.name("peer");
        if self.json {
            self.out.push(b'"');
        }
        write_peer(self.out, peer);
        if self.json {
            self.out.push(b'"');
        }
    }

    fn name(&mut self, name: &str) {
        if self.json {
            self.out.push(b',');
            json_str(self.out, name);
            self.out.push(b':');
        } else {
            self.out.push(b' ');
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'=');
        }
    }

    fn end(self) {
        if self.json {
            self.out.extend_from_slice(b"},\"target\":");
            json_str(self.out, TARGET);
            self.out.push(b'}');
        }
        self.out.push(b'\n');
    }
}

fn json_str(out: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Writes `at` as RFC 3339 with microseconds, as tracing-subscriber writes it; the part up to the
/// second is formatted once a second (`second`, `text`: the thread's last).
fn write_time(out: &mut Vec<u8>, at: WallTime, second: &mut u64, text: &mut Vec<u8>) {
    let micros = at.subsec_nanos() / 1000;
    if *second != at.secs() {
        *second = at.secs();
        let whole = UNIX_EPOCH + Duration::from_secs(at.secs());
        text.clear();
        let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
        text.pop(); // the `Z`
    }
    out.extend_from_slice(text);
    out.push(b'.');
    // Six digits, with the leading zeros.
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(&digits.format(1_000_000 + micros).as_bytes()[1..]);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::{write_peer, write_time, Queued, Sink, Stderr, WallTime, MOST_QUEUED};
    use std::sync::Mutex;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted() {
        let sink = Sink {
            stderr: Stderr::detached(),
            json: false,
            info: true,
            warn: true,
            queue: Mutex::new(Vec::new()),
        };
        for _ in 0..MOST_QUEUED + 2 {
            sink.queue(Queued::Text(b"line\n".to_vec().into_boxed_slice()));
        }
        assert_eq!(sink.lock().len(), MOST_QUEUED);
        assert_eq!(sink.stderr.dropped_lines(), 2);
    }

    #[test]
    fn numbers_addresses_and_times_are_written_as_std_and_tracing_write_them() {
        for addr in [
            "10.0.0.255:8080",
            "127.0.0.1:0",
            "255.255.255.255:65535",
            "[::1]:5",
        ] {
            let mut out = Vec::new();
            write_peer(&mut out, Some(addr.parse().unwrap()));
            assert_eq!(String::from_utf8(out).unwrap(), addr);
        }
        for n in 0..=255u16 {
            let addr = format!("{n}.{}.{n}.1:{}", 255 - n, n * 257);
            let mut out = Vec::new();
            write_peer(&mut out, Some(addr.parse().unwrap()));
            assert_eq!(String::from_utf8(out).unwrap(), addr);
        }
        let mut out = Vec::new();
        write_peer(&mut out, None);
        assert_eq!(out, b"-");
        let (mut second, mut text) = (u64::MAX, Vec::new());
        for micros in [0, 7, 999_999, 1_700_000_000_000_001] {
            let at = UNIX_EPOCH + Duration::from_micros(micros);
            let mut out = Vec::new();
            write_time(&mut out, WallTime::of(at), &mut second, &mut text);
            let expected = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
