//! The journal: every call, every frame, bounded.
//!
//! A [`Record`] is made when a call reaches the engine and filled as it goes: each request message
//! as it is read, the reply headers, each reply message with the rule that wrote it, the end. Frames
//! are kept as bytes (copied, so that the journal holds no more than it counts) and turned into
//! JSON only when the journal is read, so that recording costs a call little.
//!
//! Bounds: at most `max_calls` calls and `max_bytes` bytes of recorded payload and metadata; the
//! oldest calls are dropped first, and counted. One call alone may not take more than the byte cap:
//! its frames past it are counted in the call, not kept. A record is locked while it is written and
//! while it is read, so a reader never sees half a frame; the list of calls is locked only to add,
//! drop or copy out calls. A call that ends is kept encoded, no longer as its record
//! ([`closed`] says why).

mod closed;
mod unary;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};
use smallvec::SmallVec;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::Code;

use super::{log, Protocol, Seen, WallTime};
use crate::engine::{self, End, Message, Method, Request, Requests, Watch};
use closed::{Body, Event};
pub(crate) use unary::Unary;
use unary::Unwritten;

/// What a stream's frames are timed with: the processor's time-stamp counter, calibrated once
/// (`quanta`; the system's clock where there is no steady counter). Reading the system's clock for
/// each frame took a bidi call with the journal a tenth of its time, the counter a few nanoseconds.
static COUNTER: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// [`Record::current`] before any rule answered.
const NO_RULE: usize = usize::MAX;

/// Rough bookkeeping cost of a record and of a frame beyond their payload, so that many empty
/// messages still count against the byte cap.
const RECORD_OVERHEAD: usize = 256;
const FRAME_OVERHEAD: usize = 48;

/// A stream's frames are added to the journal's byte count a batch at a time, not one by one
/// (each addition is a locked instruction on a counter every call shares): a record holds back
/// less than this much, or than a 64th of the byte cap if that is less, until the frame that
/// reaches it, its end, or its leaving the journal. The journal is trimmed to its cap that much
/// late, at most, per stream in flight; a call alone is kept within the cap frame by frame.
const COUNT_EVERY: usize = 16 << 10;

/// What a streaming call's frames start with room for (a `Vec` grows by doubling, each time
/// copying what it holds).
const FRAMES_ROOM: usize = 1 << 10;

/// Frames past this size take room for all the byte cap lets their call add, at once (see
/// [`Record::push_to`]).
const FRAMES_LARGE: usize = 1 << 20;

/// Room left after a large call's frames for the rest of its block (`Closed::write_around`).
const BLOCK_ROOM: usize = 4 << 10;

/// The journal's bounds (`--journal-max-calls`, `--journal-max-bytes`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub max_calls: usize,
    pub max_bytes: usize,
}

pub(crate) struct Journal {
    caps: Caps,
    calls: Mutex<Calls>,
    /// Bytes held by the calls in `calls`.
    bytes: AtomicUsize,
    /// Calls dropped to stay within the caps since the last clear.
    dropped: AtomicU64,
    /// [`COUNT_EVERY`], or less for a small byte cap.
    count_every: usize,
    next_id: AtomicU64,
}

/// Ended calls held unwritten ([`Unwritten`]) before their batch is written into blocks: at most
/// this many, and at most [`MOST_UNWRITTEN_BYTES`] of their requests and replies. A batch is
/// written when it is full or when the journal is read, whichever comes first.
const MOST_UNWRITTEN: usize = 64;
const MOST_UNWRITTEN_BYTES: usize = 1 << 20;

/// The calls kept: in flight (or settled by a reload) as records, ended as encoded blocks, and
/// the batch of ended calls not written into blocks yet.
#[derive(Default)]
struct Calls {
    live: BTreeMap<u64, Arc<Record>>,
    closed: closed::Closed,
    unwritten: Vec<Unwritten>,
    /// The unwritten calls' reply messages, back to back.
    replies: Vec<u8>,
    /// What the unwritten calls hold ([`Unwritten::size`]).
    unwritten_bytes: usize,
}

impl Calls {
    fn len(&self) -> usize {
        self.live.len() + self.closed.len()
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("caps", &self.caps)
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Journal {
    pub(crate) fn new(caps: Caps) -> Journal {
        // Calibrated now rather than in the first stream's first frame.
        LazyLock::force(&COUNTER);
        Journal {
            caps,
            calls: Mutex::new(Calls::default()),
            bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            count_every: COUNT_EVERY.min(caps.max_bytes / 64),
            next_id: AtomicU64::new(1),
        }
    }

    /// The calls, with every ended one written: what each reader, and each change but
    /// [`Journal::defer`]'s, starts from (a call is seen as soon as it has ended).
    fn calls(&self) -> MutexGuard<'_, Calls> {
        let mut calls = self.lock();
        self.write_unwritten(&mut calls);
        calls
    }

    fn lock(&self) -> MutexGuard<'_, Calls> {
        // A panic while the list was held leaves it whole (each step is one push or pop).
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An unlisted call ended with `message`: held with its batch, which is written if full.
    fn defer(&self, mut call: Unwritten, message: Option<&Message>) {
        let mut calls = self.lock();
        let calls = &mut *calls;
        if let Some(message) = message {
            let start = calls.replies.len();
            closed::Body::of_reply(message).append_to(&mut calls.replies);
            call.message = Some(start..calls.replies.len());
        }
        calls.unwritten_bytes += call.size();
        calls.unwritten.push(call);
        if calls.unwritten.len() >= MOST_UNWRITTEN || calls.unwritten_bytes >= MOST_UNWRITTEN_BYTES
        {
            self.write_unwritten(calls);
        }
    }

    /// Writes the unwritten calls into their blocks, in the order they ended, and trims.
    fn write_unwritten(&self, calls: &mut Calls) {
        if calls.unwritten.is_empty() {
            return;
        }
        let Calls {
            closed,
            unwritten,
            replies,
            ..
        } = calls;
        let mut counted = 0;
        for call in unwritten.drain(..) {
            closed.write(
                call.id(),
                call.method(),
                call.kept(self.caps.max_bytes),
                |out| {
                    let bytes = call.encode(replies, self.caps.max_bytes, out);
                    counted += bytes;
                    bytes
                },
            );
        }
        self.bytes.fetch_add(counted, Ordering::Relaxed);
        replies.clear();
        if replies.capacity() > MOST_UNWRITTEN_BYTES {
            replies.shrink_to(MOST_UNWRITTEN_BYTES);
        }
        calls.unwritten_bytes = 0;
        self.trim(calls);
    }

    /// Puts `record` in, its bytes so far counted: under the list's lock, so that no clear comes
    /// between the count and the call being there to clear.
    fn add(&self, record: Arc<Record>) {
        let mut calls = self.calls();
        {
            // Marked entered with its lock held, as `Record::grow` reads the mark: each byte is
            // counted once, here or there.
            let progress = record.progress();
            if record.entered.swap(true, Ordering::Relaxed) {
                return;
            }
            let held = progress.bytes + RECORD_OVERHEAD;
            self.bytes.fetch_add(held, Ordering::Relaxed);
        }
        calls.live.insert(record.id, record);
        self.trim(&mut calls);
    }

    /// `record`'s call (of `method`) ended: it is kept encoded from now on, its block written
    /// straight into the ring. Unless `entered`, it enters the journal so, its bytes counted now;
    /// else it was listed as a record, unless it left the journal meanwhile (then it stays out) or
    /// a reload settled it (then it stays a record, as JSON). `over`: its last frames put the
    /// journal over its cap. Its frames are bytes already: encoding it is mostly one copy, made
    /// with the list locked, and then the record's lock — in the order every trim takes them.
    fn close(&self, record: &Record, method: &Arc<Method>, entered: bool, over: bool) {
        let mut calls = self.calls();
        let mut progress = record.progress();
        if progress.method.is_some() {
            let counted = progress.bytes + RECORD_OVERHEAD;
            if !entered {
                self.bytes.fetch_add(counted, Ordering::Relaxed);
            }
            if !entered || calls.live.remove(&record.id).is_some() {
                if progress.frames.bytes.len() >= closed::OWN_CHUNK {
                    // The record is done with its frames: they become its block.
                    let mut head = Vec::new();
                    closed::encode_head(record, &progress, &mut head);
                    let mut tail = Vec::new();
                    closed::encode_tail(&progress, &mut tail);
                    let frames = std::mem::take(&mut progress.frames).bytes;
                    let closed = &mut calls.closed;
                    closed.write_around(record.id, method, head, frames, &tail, counted);
                } else {
                    let size = progress.frames.bytes.len();
                    calls.closed.write(record.id, method, size, |out| {
                        closed::encode(record, &progress, out);
                        counted
                    });
                }
            }
        }
        drop(progress);
        if over || !entered {
            self.trim(&mut calls);
        }
    }

    /// Trims when more bytes than the cap are held (after a call held more).
    fn check(&self) {
        if self.bytes.load(Ordering::Relaxed) > self.caps.max_bytes {
            self.trim(&mut self.calls());
        }
    }

    /// Drops the oldest calls until within both caps (the newest stays, however large).
    fn trim(&self, calls: &mut Calls) {
        while calls.len() > self.caps.max_calls
            || (calls.len() > 1 && self.bytes.load(Ordering::Relaxed) > self.caps.max_bytes)
        {
            let oldest_live = calls.live.first_key_value().map(|(&id, _)| id);
            let closed = calls.closed.front();
            if let Some(closed) = closed.filter(|c| oldest_live.is_none_or(|live| c.id < live)) {
                calls.closed.pop_front();
                self.bytes.fetch_sub(closed.counted, Ordering::Relaxed);
            } else if let Some((_, old)) = calls.live.pop_first() {
                self.release(&old);
            } else {
                break;
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call leaves the journal: its bytes are no longer the journal's. Under the record's lock,
    /// as every count of its bytes is ([`Record::grow`]), so exactly what was counted is taken off.
    /// A call in flight lets go of its frames and records no more ([`Record::push_to`]): nobody
    /// will read them, and they were kept up to the cap until the call ended, so that streams at
    /// once held the cap each (`tests/limits.rs`).
    fn release(&self, record: &Record) {
        let mut progress = record.progress();
        record.detached.store(true, Ordering::Relaxed);
        self.bytes.fetch_sub(
            progress.bytes - progress.uncounted + RECORD_OVERHEAD,
            Ordering::Relaxed,
        );
        progress.frames = Frames::default();
        drop(progress);
    }

    /// Empties the journal; the number of calls removed.
    pub(crate) fn clear(&self) -> usize {
        let mut calls = self.calls();
        let cleared = calls.len();
        for (_, record) in std::mem::take(&mut calls.live) {
            self.release(&record);
        }
        self.bytes
            .fetch_sub(calls.closed.counted(), Ordering::Relaxed);
        calls.closed.clear();
        self.dropped.store(0, Ordering::Relaxed);
        cleared
    }

    /// [`Journal::listing`], every call decoded.
    #[cfg(test)]
    pub(crate) fn list(&self, method: Option<&str>, limit: usize) -> Vec<Arc<Record>> {
        self.listing(method, limit).iter().collect()
    }

    /// The calls kept, oldest first (of `method` when given; the newest `limit`, the last begun,
    /// when not 0), each decoded only when it is reached: a reply of the admin API holds what fits
    /// in a message, and listing a full journal decoded and rendered all of it, to send the newest
    /// few hundred (`tests/journal.rs`).
    pub(crate) fn listing(&self, method: Option<&str>, limit: usize) -> Listed {
        let calls = self.calls();
        let mut listed: Vec<(u64, Place)> = calls
            .live
            .iter()
            .filter(|(_, r)| method.is_none_or(|m| r.method_name() == m))
            .map(|(&id, r)| (id, Place::Live(r.clone())))
            .collect();
        let closed = calls.closed.copy_newest(method, limit);
        drop(calls);
        let places = closed
            .places()
            .map(|(entry, at)| (entry.id, Place::Closed(at)));
        listed.extend(places);
        listed.sort_unstable_by_key(|&(id, _)| id);
        if limit > 0 && listed.len() > limit {
            listed.drain(..listed.len() - limit);
        }
        Listed {
            calls: listed,
            closed,
        }
    }

    /// Settles every call whose protos are not `pool` (a reload replaced them), so that the
    /// journal does not keep old descriptor pools alive; run by the reload, off the calls' path.
    /// Ended calls of those protos are taken back as records to be settled.
    pub(crate) fn settle(&'static self, pool: &DescriptorPool) {
        let mut calls = self.calls();
        for (entry, mut record) in calls.closed.take_stale(pool) {
            // Its bytes stay counted, now as the record's.
            record.journal = Some(self);
            record.detached = AtomicBool::new(false);
            calls.live.insert(entry.id, Arc::new(record));
        }
        let live: Vec<Arc<Record>> = calls.live.values().cloned().collect();
        drop(calls);
        for record in live {
            record.settle(pool);
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        drop(self.calls());
        self.dropped.load(Ordering::Relaxed)
    }

    /// Bytes held, as counted against `max_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        drop(self.calls());
        self.bytes.load(Ordering::Relaxed)
    }

    /// The bytes the ended calls' blocks have room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        let mut calls = self.lock();
        self.write_unwritten(&mut calls);
        calls.closed.capacity()
    }
}

/// Calls listed ([`Journal::listing`]): those in flight as they are, the ended ones copied out of
/// the ring, to be decoded as they are reached.
pub(crate) struct Listed {
    /// Oldest first.
    calls: Vec<(u64, Place)>,
    closed: closed::Copied,
}

enum Place {
    Live(Arc<Record>),
    /// Where its block is in the copy.
    Closed(Range<usize>),
}

impl Listed {
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// The calls, oldest first (`rev` for the newest first), each decoded as it is reached.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = Arc<Record>> + '_ {
        (0..self.len()).filter_map(|index| self.get(index))
    }

    /// The call at `index` (oldest first), decoded now.
    pub(crate) fn get(&self, index: usize) -> Option<Arc<Record>> {
        match self.calls.get(index)? {
            (_, Place::Live(record)) => Some(record.clone()),
            (id, Place::Closed(at)) => self.closed.record(*id, at.clone()).map(Arc::new),
        }
    }
}

/// One call in the journal (and the source of its log line).
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) protocol: Protocol,
    peer: Option<std::net::SocketAddr>,
    deadline: Option<Instant>,
    started: WallTime,
    clock: Instant,
    /// The rule answering now, the replies that follow being its (`NO_RULE` before any): told by
    /// the engine before the reply it writes, in the call's task.
    current: AtomicUsize,
    /// The processor's counter when the record was made (raw), and the call's time then (in
    /// nanoseconds): what the times of its frames as they pass are reckoned from ([`COUNTER`]).
    counter: (u64, u64),
    /// The journal it is in; `None` for an ended call decoded from the journal to be read.
    journal: Option<&'static Journal>,
    /// In the journal's list (see [`Record::enter`]).
    entered: AtomicBool,
    /// Left the journal (dropped or cleared): its bytes are no longer counted there.
    detached: AtomicBool,
    /// Itself, for entering the journal from where only a reference is at hand (the engine's
    /// `Watch::metadata`).
    me: std::sync::Weak<Record>,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    /// The request metadata: a streaming call's from the start, a call with one request's when
    /// answered (`Watch::metadata`: see [`Record::start`]).
    metadata: Option<Packed>,
    /// The method as served when the call started: its descriptors read the payloads, its rules
    /// name the rules by index. Let go when the record is settled.
    method: Option<Arc<Method>>,
    /// The record as JSON, once settled: its method's protos were replaced by a reload, and the
    /// record no longer holds them (see [`Journal::settle`]).
    settled: Option<Box<Settled>>,
    frames: Frames,
    /// Indices of the rules that answered, in the order they first did.
    rules: SmallVec<[usize; 2]>,
    unmatched: bool,
    end: Option<Ended>,
    /// Payload and metadata bytes recorded.
    bytes: usize,
    /// Of `bytes`, those not added to the journal's count yet ([`COUNT_EVERY`]).
    uncounted: usize,
    dropped_frames: u64,
}

struct Settled {
    name: String,
    json: Value,
}

/// The frames so far, back to back as a block holds them (`closed::put_request` and its kin): a
/// message is copied once, where it stays until the call ends, when the frames are copied into its
/// block whole — not kept frame by frame and encoded one by one then.
#[derive(Default)]
struct Frames {
    bytes: Vec<u8>,
    count: u32,
}

impl Frames {
    fn iter(&self) -> impl Iterator<Item = closed::Frame<'_>> {
        closed::frames(&self.bytes)
    }

    /// The request messages' bytes, in order.
    fn requests(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().filter_map(|frame| match frame.event {
            Event::Request(bytes) => Some(bytes),
            _ => None,
        })
    }
}

/// `{ json, binary }` as `protodrop.admin.v1.Payload` in proto3 JSON: `bytes` read as `desc`.
fn payload_json(bytes: &[u8], desc: &MessageDescriptor) -> Value {
    use base64::Engine as _;
    let json = DynamicMessage::decode(desc.clone(), bytes)
        .ok()
        .and_then(|m| {
            m.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
                .ok()
        })
        .unwrap_or(Value::Null);
    json!({ "json": json, "binary": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

struct Ended {
    code: Code,
    message: String,
    trailers: Packed,
    elapsed: Duration,
}

impl Record {
    pub(super) fn start(
        call: &engine::Call,
        seen: Seen,
        journal: Option<&'static Journal>,
        clock: Instant,
    ) -> Arc<Record> {
        let id = journal.map_or(0, |j| j.next_id.fetch_add(1, Ordering::Relaxed));
        // Only the journal reads the metadata; a call with one request hands it over when
        // answered (`Watch::metadata`), a streaming one is copied now.
        let streaming = call.method.client_streaming() || call.method.server_streaming();
        let metadata = (journal.is_some() && streaming).then(|| Packed::of(&call.metadata));
        let started = super::wall_clock(clock);
        let record = Record::new(id, seen, journal, clock, started, &call.method, metadata);
        if streaming {
            record.enter();
        }
        record.first_request(&call.requests);
        record
    }

    /// Call `id`'s record, not listed yet.
    fn new(
        id: u64,
        seen: Seen,
        journal: Option<&'static Journal>,
        clock: Instant,
        started: WallTime,
        method: &Arc<Method>,
        metadata: Option<Packed>,
    ) -> Arc<Record> {
        Arc::new_cyclic(|me| Record {
            id,
            entered: AtomicBool::new(false),
            me: me.clone(),
            protocol: seen.protocol,
            peer: seen.peer,
            deadline: seen.deadline,
            started,
            clock,
            current: AtomicUsize::new(NO_RULE),
            counter: (COUNTER.raw(), clock.elapsed().as_nanos() as u64),
            journal,
            detached: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                bytes: metadata.as_ref().map_or(0, Packed::size),
                // A journaled stream (the one kind of call whose metadata is copied at its start)
                // is likely to have many frames.
                frames: Frames {
                    bytes: Vec::with_capacity(if metadata.is_some() { FRAMES_ROOM } else { 0 }),
                    count: 0,
                },
                metadata,
                method: Some(method.clone()),
                ..Progress::default()
            }),
        })
    }

    fn current(&self) -> Option<usize> {
        Some(self.current.load(Ordering::Relaxed)).filter(|&rule| rule != NO_RULE)
    }

    /// The time of a frame passing now, in nanoseconds since the call started: the raw counter's
    /// delta scaled (a multiplication), with no `Duration` made (a division).
    fn frame_at(&self) -> u64 {
        let (from, then) = self.counter;
        then + COUNTER.delta_as_nanos(from, COUNTER.raw())
    }

    /// Puts the record in its journal, once: a streaming call's when it starts, a unary call's
    /// when its metadata is handed over while it waits (else it enters ended, see
    /// [`Journal::close`]), so that no call is listed without its metadata.
    fn enter(&self) {
        if self.entered.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(journal), Some(me)) = (self.journal, self.me.upgrade()) {
            journal.add(me);
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` more bytes recorded, counted in the journal unless the call has left it; with the
    /// record's lock held (`progress`), as [`Journal::release`] takes it: a clear in between would
    /// take off bytes never counted. Whether the journal is now over its byte cap (trim with the
    /// lock let go: trimming takes the list's lock, and the records' after it).
    fn grow(&self, progress: &mut Progress, n: usize) -> bool {
        progress.bytes += n;
        match self.journal {
            Some(journal) if self.counted() => {
                let n = n + std::mem::take(&mut progress.uncounted);
                journal.bytes.fetch_add(n, Ordering::Relaxed) + n > journal.caps.max_bytes
            }
            _ => false,
        }
    }

    /// [`Record::grow`] by a frame: held back while less than the journal's `count_every` is.
    #[inline]
    fn grow_by_frame(&self, progress: &mut Progress, n: usize) -> bool {
        match self.journal {
            Some(journal) if progress.uncounted + n < journal.count_every && self.counted() => {
                progress.bytes += n;
                progress.uncounted += n;
                false
            }
            _ => self.grow(progress, n),
        }
    }

    /// In the journal, and its bytes counted there.
    fn counted(&self) -> bool {
        self.entered.load(Ordering::Relaxed) && !self.detached.load(Ordering::Relaxed)
    }

    /// [`Record::grow`]'s trim, once the record's lock is let go.
    #[inline]
    fn trim_if(&self, over: bool) {
        if let (true, Some(journal)) = (over, self.journal) {
            journal.check();
        }
    }

    /// Adds the frame `write` writes (of `size` payload bytes), within the journal's byte cap.
    fn push(&self, size: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if self.journal.is_some() {
            let mut progress = self.progress();
            let over = self.push_to(&mut progress, size, write);
            drop(progress);
            self.trim_if(over);
        }
    }

    /// [`Record::push`] with the record locked; whether the journal is now over its byte cap.
    fn push_to(
        &self,
        progress: &mut Progress,
        size: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let Some(journal) = self.journal else {
            return false;
        };
        if progress.end.is_some() {
            // Not part of the call (a request read after the reply ended it), and a call that
            // ended is counted as it was then (see `close_locked`).
            return false;
        }
        if self.detached.load(Ordering::Relaxed) {
            // Out of the journal (see `Journal::release`).
            return false;
        }
        let size = size + FRAME_OVERHEAD;
        if progress.bytes + size > journal.caps.max_bytes {
            progress.dropped_frames += 1;
            return false;
        }
        let frames = &mut progress.frames.bytes;
        if frames.len() >= FRAMES_LARGE && frames.capacity() - frames.len() < size {
            // Room at once for all the cap lets the call add (a frame's encoding is smaller than
            // what it counts), and for its block's head: grown by doubling, each step left the
            // memory it moved from to the allocator, about the frames' size again at the peak.
            // Pages not written take no memory. Where the room cannot be had, doubling goes on.
            let room = journal.caps.max_bytes.saturating_sub(progress.bytes) + BLOCK_ROOM;
            let _ = frames.try_reserve_exact(room);
        }
        write(frames);
        progress.frames.count += 1;
        self.grow_by_frame(progress, size)
    }

    /// The one request of a call read whole ([`Requests::One`]), read with the call's start; a
    /// request stream's messages are told as the engine reads them ([`Watch::request`]).
    pub(super) fn first_request(&self, requests: &Requests) {
        if let Requests::One(request) = requests {
            self.push_request(0, request);
        }
    }

    /// A request frame at `at` (nanoseconds since the call started). Inlined: a stream calls it
    /// for every request.
    #[inline]
    fn push_request(&self, at: u64, request: &Request) {
        let body = Body::of_request(request);
        self.push(body.size(), |out| closed::put_request(out, at, &body));
    }

    /// A unary answer, whole: its headers, message and end, at one moment, with one lock. The
    /// time the call took.
    pub(super) fn ready(&self, ready: &engine::Ready) -> Duration {
        let at = self.clock.elapsed();
        let at_nanos = at.as_nanos() as u64;
        let mut progress = self.progress();
        let mut over = false;
        if self.journal.is_some() {
            if !ready.headers.is_empty() {
                let size = Packed::len_of(&ready.headers);
                over |= self.push_to(&mut progress, size, |out| {
                    closed::put_headers(out, at_nanos, &ready.headers, size)
                });
            }
            if let Some(message) = &ready.message {
                let body = Body::of_reply(message);
                let rule = self.current();
                over |= self.push_to(&mut progress, body.size(), |out| {
                    closed::put_reply(out, at_nanos, &body, rule)
                });
            }
        }
        let end = &ready.end;
        self.close_locked(progress, over, end.code, &end.message, &end.trailers, at);
        at
    }

    pub(super) fn headers(&self, headers: &MetadataMap) {
        if self.journal.is_some() && !headers.is_empty() {
            let at = self.frame_at();
            let size = Packed::len_of(headers);
            self.push(size, |out| closed::put_headers(out, at, headers, size));
        }
    }

    pub(super) fn reply(&self, message: &Message) {
        if self.journal.is_some() {
            let at = self.frame_at();
            let body = Body::of_reply(message);
            let mut progress = self.progress();
            let rule = self.current();
            let over = self.push_to(&mut progress, body.size(), |out| {
                closed::put_reply(out, at, &body, rule)
            });
            drop(progress);
            self.trim_if(over);
        }
    }

    /// The end; the time the call took.
    pub(super) fn end(&self, end: &End) -> Duration {
        let at = self.clock.elapsed();
        let progress = self.progress();
        self.close_locked(progress, false, end.code, &end.message, &end.trailers, at);
        at
    }

    /// The reply was dropped: unless its end was seen, the call was cut short.
    pub(super) fn cut(&self) {
        let at = self.clock.elapsed();
        let (code, message) = super::cut(self.deadline);
        let progress = self.progress();
        self.close_locked(progress, false, code, message, &MetadataMap::new(), at);
    }

    /// Records the end (unless one was) with the record locked (`progress`; `over`: a frame just
    /// pushed put the journal over its cap), lets the lock go, and writes the call's log line.
    fn close_locked(
        &self,
        mut progress: MutexGuard<'_, Progress>,
        over: bool,
        code: Code,
        message: &str,
        trailers: &MetadataMap,
        elapsed: Duration,
    ) {
        if progress.end.is_some() {
            return;
        }
        let trailers = Packed::of(trailers);
        let size = trailers.size() + message.len();
        progress.end = Some(Ended {
            code,
            message: message.to_owned(),
            trailers,
            elapsed,
        });
        let rule = progress.rules.first().copied();
        let unmatched = progress.unmatched;
        let method = progress.method.clone();
        let over = (self.journal.is_some() && self.grow(&mut progress, size)) || over;
        // Not in the journal yet (a call answered at once), or in it and not dropped since.
        let entered = self.entered.swap(true, Ordering::Relaxed);
        let kept = !self.detached.load(Ordering::Relaxed);
        match (self.journal, &method) {
            (Some(journal), Some(method)) if kept => {
                // Let go first: the journal's lock is taken before a record's.
                drop(progress);
                journal.close(self, method, entered, over);
            }
            _ => {
                drop(progress);
                self.trim_if(over);
            }
        }
        let Some(method) = method else { return };
        log::call_ended(log::Line {
            protocol: self.protocol,
            method: &method,
            peer: self.peer,
            code,
            message,
            rule,
            unmatched,
            elapsed,
            ended: self.started.after(elapsed),
        });
    }

    /// `pkg.Service/Method`.
    pub(crate) fn method_name(&self) -> String {
        let progress = self.progress();
        match (&progress.method, &progress.settled) {
            (Some(method), _) => method.name.clone(),
            (None, Some(settled)) => settled.name.clone(),
            (None, None) => String::new(),
        }
    }

    /// The call as `protodrop.admin.v1.Call` in proto3 JSON.
    pub(crate) fn to_json(&self) -> Value {
        let progress = self.progress();
        match (&progress.method, &progress.settled) {
            (Some(method), _) => self.render(&progress, method),
            (None, Some(settled)) => settled.json.clone(),
            (None, None) => Value::Null,
        }
    }

    fn render(&self, progress: &Progress, method: &Method) -> Value {
        let input = method.desc.input();
        let output = method.desc.output();
        let frames: Vec<Value> = progress
            .frames
            .iter()
            .map(|frame| {
                let at = duration_json(frame.at);
                match frame.event {
                    Event::Request(bytes) => {
                        json!({ "at": at, "request": payload_json(bytes, &input) })
                    }
                    Event::Headers(packed) => {
                        json!({ "at": at, "replyHeaders": { "metadata": metadata_json(&Packed::unpack_from(packed)) } })
                    }
                    Event::Reply(bytes, rule) => {
                        let rule = rule.map(|i| method.rule_origin(i)).unwrap_or_default();
                        json!({ "at": at, "reply": payload_json(bytes, &output), "rule": rule })
                    }
                }
            })
            .collect();
        let mut call = json!({
            "id": self.id.to_string(),
            "protocol": self.protocol.as_str(),
            "method": method.name,
            "peer": self.peer.map(|p| p.to_string()).unwrap_or_default(),
            "startTime": humantime::format_rfc3339_nanos(self.started.system()).to_string(),
            "requestMetadata": metadata_json(&progress.metadata.as_ref().map(Packed::unpack).unwrap_or_default()),
            "frames": frames,
            "rules": progress.rules.iter().map(|&i| method.rule_origin(i)).collect::<Vec<_>>(),
            "droppedFrames": progress.dropped_frames.to_string(),
        });
        if let Some(end) = &progress.end {
            call["duration"] = duration_json(end.elapsed);
            call["status"] = json!({
                "code": end.code as i32,
                "codeName": crate::codes::name(end.code),
                "message": end.message,
                "trailers": metadata_json(&end.trailers.unpack()),
            });
        }
        if progress.unmatched {
            call["nearMisses"] = Value::Array(self.near_misses(progress, method));
        }
        call
    }

    /// For a call no rule matched: each rule of the method with how many of its conditions held
    /// for the last request, closest first.
    fn near_misses(&self, progress: &Progress, method: &Method) -> Vec<Value> {
        let Some(rules) = &method.rules else {
            return Vec::new();
        };
        let input = method.desc.input();
        let request = progress
            .frames
            .requests()
            .last()
            .and_then(|bytes| DynamicMessage::decode(input, bytes).ok());
        let metadata = progress
            .metadata
            .as_ref()
            .map(Packed::unpack)
            .unwrap_or_default();
        let mut misses: Vec<(usize, usize, Value)> = rules
            .rules
            .iter()
            .map(|rule| {
                let miss = rule.near_miss(request.as_ref(), &metadata);
                let value = json!({
                    "rule": rule.origin,
                    "held": miss.held,
                    "conditions": miss.conditions,
                    "failed": miss.failed,
                });
                (miss.held, miss.conditions, value)
            })
            .collect();
        // Most conditions held first; of those, the one with the fewest left to hold.
        misses.sort_by(|a, b| b.0.cmp(&a.0).then((a.1 - a.0).cmp(&(b.1 - b.0))));
        misses.into_iter().map(|(_, _, v)| v).collect()
    }

    /// The request messages' bytes, for verification (which reads them with the protos its filter
    /// was written against).
    pub(crate) fn request_bytes(&self) -> Vec<Bytes> {
        self.progress()
            .frames
            .requests()
            .map(Bytes::copy_from_slice)
            .collect()
    }

    /// Lets go of the method (and with it the protos it was served from) when those are not
    /// `pool`'s: the record is kept as its JSON, and its requests as bytes for verification.
    fn settle(&self, pool: &DescriptorPool) {
        let mut progress = self.progress();
        let stale = progress
            .method
            .as_ref()
            .is_some_and(|m| m.desc.parent_pool() != pool);
        if !stale || progress.end.is_none() {
            return;
        }
        let Some(method) = progress.method.take() else {
            return;
        };
        let json = self.render(&progress, &method);
        let mut requests = Frames::default();
        let mut requests_size = 0;
        for frame in progress.frames.iter() {
            if let Event::Request(bytes) = frame.event {
                closed::put_request(
                    &mut requests.bytes,
                    frame.at.as_nanos() as u64,
                    &Body::Bytes(bytes),
                );
                requests.count += 1;
                requests_size += bytes.len() + FRAME_OVERHEAD;
            }
        }
        progress.frames = requests;
        let size = json.to_string().len()
            + requests_size
            + progress.metadata.as_ref().map_or(0, Packed::size);
        let before = progress.bytes;
        progress.settled = Some(Box::new(Settled {
            name: method.name.clone(),
            json,
        }));
        // Counted with the record's lock held, as `grow` does.
        let over = if size > before {
            self.grow(&mut progress, size - before)
        } else {
            progress.bytes = size;
            if let (Some(journal), false) = (self.journal, self.detached.load(Ordering::Relaxed)) {
                journal.bytes.fetch_sub(before - size, Ordering::Relaxed);
            }
            false
        };
        drop(progress);
        self.trim_if(over);
    }

    /// The request metadata (none yet for a call with one request still being answered).
    pub(crate) fn metadata(&self) -> MetadataMap {
        let progress = self.progress();
        progress
            .metadata
            .as_ref()
            .map(Packed::unpack)
            .unwrap_or_default()
    }

    /// The code the call ended with; `None` while it is in flight.
    pub(crate) fn code(&self) -> Option<Code> {
        self.progress().end.as_ref().map(|e| e.code)
    }
}

impl Watch for Record {
    fn request(&self, request: &Request) {
        if self.journal.is_some() {
            self.push_request(self.frame_at(), request);
        }
    }

    fn rule(&self, index: usize) {
        // The same rule again (each message of a stream, most often): nothing to lock for. Only
        // the call's task tells the rule, so a load and a store do (no locked swap).
        if self.current.load(Ordering::Relaxed) != index {
            self.current.store(index, Ordering::Relaxed);
            let mut progress = self.progress();
            if !progress.rules.contains(&index) {
                progress.rules.push(index);
            }
        }
    }

    fn unmatched(&self) {
        self.progress().unmatched = true;
    }

    fn metadata(&self, metadata: MetadataMap, waiting: bool) {
        if self.journal.is_none() {
            return;
        }
        let mut progress = self.progress();
        if progress.metadata.is_none() {
            let packed = Packed::of(&metadata);
            let over = self.grow(&mut progress, packed.size());
            progress.metadata = Some(packed);
            drop(progress);
            self.trim_if(over);
        }
        // A call answered at once enters the journal with its end, ended (one lock, not two).
        if waiting {
            self.enter();
        }
    }
}

/// `request` again: its bytes shared, not copied (a decoded one is cloned).
fn shared(request: &Request) -> Request {
    match request {
        Request::Encoded(bytes) => Request::Encoded(bytes.clone()),
        Request::Decoded(message) => Request::Decoded(message.clone()),
    }
}

fn duration_json(d: Duration) -> Value {
    Value::String(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))
}

/// Request metadata as the journal keeps it: every name and value in one allocation. The oldest
/// record is dropped as each new call comes once the journal is full, and its memory is long out
/// of the processor's caches by then: a map of several allocations cost a cache miss each.
struct Packed(Vec<u8>);

impl Packed {
    /// Each entry as the name's length (2 bytes), the name, the value's length (4 bytes), the value.
    fn of(metadata: &MetadataMap) -> Packed {
        let headers = metadata.as_ref();
        if headers.is_empty() {
            return Packed(Vec::new());
        }
        // One pass: a guess at the size rarely needs to grow (a second pass to measure cost more).
        let mut packed = Vec::with_capacity(headers.len() * 48);
        Packed::pack(metadata, &mut packed);
        Packed(packed)
    }

    /// The size of `metadata` packed.
    fn len_of(metadata: &MetadataMap) -> usize {
        metadata
            .as_ref()
            .iter()
            .map(|(name, value)| 6 + name.as_str().len() + value.len())
            .sum()
    }

    /// Appends `metadata` to `out` in the packed form.
    fn pack(metadata: &MetadataMap, out: &mut Vec<u8>) {
        for (name, value) in metadata.as_ref() {
            let name = name.as_str().as_bytes();
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
    }

    fn size(&self) -> usize {
        self.0.len()
    }

    fn unpack(&self) -> MetadataMap {
        Packed::unpack_from(&self.0)
    }

    /// Metadata packed as [`Packed::pack`] writes it, unpacked.
    fn unpack_from(packed: &[u8]) -> MetadataMap {
        let mut headers = http::HeaderMap::new();
        let mut rest = packed;
        while let Some((name, after)) = Packed::field(rest, 2) {
            let Some((value, after)) = Packed::field(after, 4) else {
                break;
            };
            rest = after;
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        MetadataMap::from_headers(headers)
    }

    /// A length of `width` bytes and that many bytes, at the start of `bytes`; and what follows.
    fn field(bytes: &[u8], width: usize) -> Option<(&[u8], &[u8])> {
        let (len, rest) = bytes.split_at_checked(width)?;
        let mut n = [0; 4];
        n[..width].copy_from_slice(len);
        rest.split_at_checked(u32::from_le_bytes(n) as usize)
    }
}

fn metadata_json(metadata: &MetadataMap) -> Value {
    use base64::Engine as _;
    let entries: Vec<Value> = metadata
        .iter()
        .map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => {
                json!({ "key": key.as_str(), "value": value.to_str().unwrap_or_default() })
            }
            KeyAndValueRef::Binary(key, value) => json!({
                "key": key.as_str(),
                "value": base64::engine::general_purpose::STANDARD.encode(value.as_encoded_bytes()),
            }),
        })
        .collect();
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::Packed;
    use tonic::metadata::{MetadataMap, MetadataValue};

    #[test]
    fn packed_metadata_unpacks_to_the_same_entries_in_order() {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-user", "ann".parse().unwrap());
        metadata.append("x-tag", "one".parse().unwrap());
        metadata.append("x-tag", "two".parse().unwrap());
        metadata.insert("x-empty", "".parse().unwrap());
        metadata.insert_bin("x-raw-bin", MetadataValue::from_bytes(&[0, 255, 10]));
        let packed = Packed::of(&metadata);
        let unpacked = packed.unpack();
        let pairs = |m: &MetadataMap| -> Vec<(String, Vec<u8>)> {
            m.as_ref()
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(pairs(&unpacked), pairs(&metadata));
        assert_eq!(Packed::of(&MetadataMap::new()).unpack().len(), 0);
    }
}
