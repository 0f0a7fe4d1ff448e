//! A call with one request, not listed in the journal.
//!
//! Most calls are unary and answered at once, and no reader can see such a call before it ends: a
//! call with one request is listed only if it waits (a rule's delay, a script: see
//! [`Record::enter`]). So it needs no [`Record`] — no lock, no frames, no allocation of its own
//! beyond this — while it runs: what the journal keeps of it is gathered here (the request,
//! shared; the rule that answered; the metadata the engine hands over). A call that waits, or
//! whose answer is a stream, is given its record then, and goes on as one.
//!
//! When it ends, it joins the journal's unwritten calls ([`Unwritten`]: its reply's message
//! copied, the rest held as it is), and is written into its block with the others of its batch,
//! the same block its record would have made (`closed::encode_unlisted`; the test
//! `a_unary_call_answered_at_once_reads_and_counts_as_its_record_would` holds the two alike).
//! Written one by one, as each call ended, the encoding ran cold every time: its code is out of
//! the instruction cache by the next call, and missing it cost more than running it
//! (`bench/AB.md`, session 17). Every reader of the journal writes the batch first
//! (`Journal::calls`), so a call is seen as soon as it has ended, as before.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::Code;

use super::closed::{self, Body, Unlisted};
use super::{shared, Journal, Record, RECORD_OVERHEAD};
use crate::engine::{self, End, Method, Request, Requests, Watch};
use crate::observe::{log, Seen, Told, WallTime};

pub(crate) struct Unary {
    id: u64,
    journal: &'static Journal,
    method: Arc<Method>,
    seen: Seen,
    clock: Instant,
    started: WallTime,
    request: Request,
    /// Which rule answered, or that none did, until the call has its record.
    told: Told,
    /// The request metadata, once handed over.
    metadata: Mutex<Option<MetadataMap>>,
    ended: AtomicBool,
    /// The call's record, once it has one: from then on, everything goes to it.
    record: OnceLock<Arc<Record>>,
}

impl Unary {
    /// Call `call` of `journal`, if it has one request read whole and its method answers with one
    /// message (a server stream is listed from its start).
    pub(in crate::observe) fn start(
        call: &engine::Call,
        seen: Seen,
        journal: &'static Journal,
        clock: Instant,
    ) -> Option<Arc<Unary>> {
        let Requests::One(request) = &call.requests else {
            return None;
        };
        if call.method.server_streaming() {
            return None;
        }
        Some(Arc::new(Unary {
            id: journal.next_id.fetch_add(1, Ordering::Relaxed),
            journal,
            method: call.method.clone(),
            seen,
            clock,
            started: crate::observe::wall_clock(clock),
            request: shared(request),
            told: Told::default(),
            metadata: Mutex::new(None),
            ended: AtomicBool::new(false),
            record: OnceLock::new(),
        }))
    }

    /// The call's record, made now if it has none, with what the call saw so far (not listed
    /// yet: see [`Record::enter`]).
    pub(in crate::observe) fn record(&self) -> &Arc<Record> {
        self.record.get_or_init(|| {
            let record = Record::new(
                self.id,
                self.seen,
                Some(self.journal),
                self.clock,
                self.started,
                &self.method,
                None,
            );
            // In the order a record is told them.
            record.first_request(&Requests::One(shared(&self.request)));
            if let Some(rule) = self.told.answered_by() {
                record.rule(rule);
            }
            if self.told.was_unmatched() {
                record.unmatched();
            }
            if let Some(metadata) = self.handed_over().take() {
                Watch::metadata(&*record, metadata, false);
            }
            record
        })
    }

    fn handed_over(&self) -> std::sync::MutexGuard<'_, Option<MetadataMap>> {
        self.metadata.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A unary answer, whole. The time the call took.
    pub(in crate::observe) fn ready(self: &Arc<Self>, ready: &engine::Ready) -> Duration {
        if let Some(record) = self.record.get() {
            return record.ready(ready);
        }
        let elapsed = self.clock.elapsed();
        let end = &ready.end;
        let headers = Some(&ready.headers).filter(|h| !h.is_empty());
        let status = (end.code, end.message.as_str(), &end.trailers);
        self.close(headers, ready.message.as_ref(), status, elapsed);
        elapsed
    }

    /// The call ended with `end` and no message. The time it took.
    pub(in crate::observe) fn end(self: &Arc<Self>, end: &End) -> Duration {
        if let Some(record) = self.record.get() {
            return record.end(end);
        }
        let elapsed = self.clock.elapsed();
        let status = (end.code, end.message.as_str(), &end.trailers);
        self.close(None, None, status, elapsed);
        elapsed
    }

    /// The call was dropped before its answer: cut short.
    pub(in crate::observe) fn cut(self: &Arc<Self>) {
        if let Some(record) = self.record.get() {
            return record.cut();
        }
        let elapsed = self.clock.elapsed();
        let (code, message) = crate::observe::cut(self.seen.deadline);
        self.close(None, None, (code, message, &MetadataMap::new()), elapsed);
    }

    /// Puts the ended call into the journal, to be written with its batch; and its log line.
    fn close(
        self: &Arc<Self>,
        headers: Option<&MetadataMap>,
        message: Option<&engine::Message>,
        (code, text, trailers): (Code, &str, &MetadataMap),
        elapsed: Duration,
    ) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let rule = self.told.answered_by();
        let unmatched = self.told.was_unmatched();
        let unwritten = Unwritten {
            unary: self.clone(),
            request_size: Body::of_request(&self.request).size(),
            headers: headers.map(|h| Box::new(h.clone())),
            message: None,
            code,
            text: text.to_owned(),
            trailers: (!trailers.is_empty()).then(|| Box::new(trailers.clone())),
            elapsed,
        };
        self.journal.defer(unwritten, message);
        log::call_ended(log::Line {
            protocol: self.seen.protocol,
            method: &self.method,
            peer: self.seen.peer,
            code,
            message: text,
            rule,
            unmatched,
            elapsed,
            ended: self.started.after(elapsed),
        });
    }
}

impl Watch for Unary {
    /// Never told: a call kept this way has one request, read whole (see [`Unary::start`]).
    fn request(&self, _: &Request) {}

    fn wants_requests(&self) -> bool {
        false
    }

    fn rule(&self, index: usize) {
        match self.record.get() {
            Some(record) => record.rule(index),
            None => self.told.rule(index),
        }
    }

    fn unmatched(&self) {
        match self.record.get() {
            Some(record) => record.unmatched(),
            None => self.told.unmatched(),
        }
    }

    fn metadata(&self, metadata: MetadataMap, waiting: bool) {
        // A call that waits is listed, with its record.
        if waiting || self.record.get().is_some() {
            return Watch::metadata(&**self.record(), metadata, waiting);
        }
        let mut slot = self.handed_over();
        if slot.is_none() {
            *slot = Some(metadata);
        }
    }
}

/// An ended call of the journal's, not written into its block yet: the call as it was kept, and
/// its end. The reply's message is copied into the batch's `replies` (it is the protocol's, to
/// frame and send); headers and trailers are cloned, boxed (most calls have none: this stays
/// small to move).
pub(super) struct Unwritten {
    unary: Arc<Unary>,
    /// Its request's encoded size, measured once (a decoded request is measured field by field).
    request_size: usize,
    headers: Option<Box<MetadataMap>>,
    /// The message's bytes in `replies`.
    pub(super) message: Option<Range<usize>>,
    code: Code,
    text: String,
    trailers: Option<Box<MetadataMap>>,
    elapsed: Duration,
}

impl Unwritten {
    pub(super) fn id(&self) -> u64 {
        self.unary.id
    }

    pub(super) fn method(&self) -> &Arc<Method> {
        &self.unary.method
    }

    /// The bytes it holds until written: its request and its reply's message.
    pub(super) fn size(&self) -> usize {
        self.request_size + self.message.as_ref().map_or(0, |m| m.len())
    }

    /// About what its block will keep of its messages within the byte cap `max`, as
    /// `closed::encode_unlisted` decides (`closed::fits`): a message past the cap is dropped, and
    /// room taken for it would stay with the ring, unwritten, until the call was.
    pub(super) fn kept(&self, max: usize) -> usize {
        let (mut bytes, mut dropped) = (0, 0);
        let mut keep = |size| {
            if closed::fits(&mut bytes, &mut dropped, size, max) {
                size
            } else {
                0
            }
        };
        keep(self.request_size) + keep(self.message.as_ref().map_or(0, |m| m.len()))
    }

    /// Writes the call's block at the end of `out` (its reply's message being in `replies`),
    /// within the byte cap `max`; what it counts against the journal's bytes.
    pub(super) fn encode(&self, replies: &[u8], max: usize, out: &mut Vec<u8>) -> usize {
        let unary = &self.unary;
        // Made once: an empty map costs as much to make and drop as a small block to write.
        static NO_TRAILERS: LazyLock<MetadataMap> = LazyLock::new(MetadataMap::new);
        let metadata = unary.handed_over().take();
        let call = Unlisted {
            protocol: unary.seen.protocol,
            peer: unary.seen.peer,
            started: unary.started,
            metadata: metadata.as_ref(),
            rule: unary.told.answered_by(),
            unmatched: unary.told.was_unmatched(),
            request: &unary.request,
            headers: self.headers.as_deref(),
            message: self.message.clone().map(|m| Body::Bytes(&replies[m])),
            code: self.code,
            text: &self.text,
            trailers: self.trailers.as_deref().unwrap_or(&NO_TRAILERS),
            elapsed: self.elapsed,
            max,
        };
        closed::encode_unlisted(&call, out) + RECORD_OVERHEAD
    }
}
