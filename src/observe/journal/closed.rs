//! Calls that ended, kept encoded.
//!
//! A call in flight is a [`Record`]: shared with the call, locked, growing. Once the call ends
//! nothing changes it, and a full journal holds thousands of them. Kept as records, each was half
//! a kilobyte plus an allocation or two, spread over the heap; once the journal was full each new
//! call dropped the oldest — memory long out of the processor's caches — and wrote its own
//! elsewhere: about a fifth of a call's time at the journal's default size, against nearly nothing
//! with a journal of a hundred calls (bench/AB.md). So a call that ends is encoded as one block at
//! the end of a ring of bytes, a few cache lines written in sequence; its record is let go while
//! still warm, for the next call's; and the oldest block goes first. Reading the journal is rare:
//! it copies the blocks out and decodes them back into records.
//!
//! A block names its method by an index into a table of the methods (a block holds no `Arc`),
//! written in its first four bytes so that the table can be compacted in place.
//!
//! The ring is a queue of chunks of about [`CHUNK`] bytes, a block never split between two. So a
//! block is written straight where it stays ([`Closed::write`]), not made elsewhere and copied in
//! (a batch of unary calls, and an ended record, whose frames are bytes already: one copy); and
//! the oldest block is dropped by moving an offset. A chunk emptied is kept for the next one. A
//! record whose frames are large ([`OWN_CHUNK`]) is not copied at all: its block is made around its
//! frames, where they are, and is a chunk of its own ([`Closed::write_around`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use prost::bytes::{Buf, BufMut};
use prost_reflect::{DescriptorPool, DynamicMessage};
use smallvec::SmallVec;
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::{Ended, Frames, Packed, Progress, Record, FRAME_OVERHEAD};
use crate::engine::{Message, Method, Request};
use crate::observe::{Protocol, WallTime};

/// The table is compacted when it has grown to this many methods more than it had after the last
/// compaction (handler reloads make new methods; the blocks of the old ones are dropped in time).
const COMPACT_AFTER: usize = 64;

/// A chunk of the ring's size. The next is begun when less than [`ROOM`] is left in the last, as
/// a block's size is known only once written (a larger one makes its chunk larger).
const CHUNK: usize = 64 << 10;
const ROOM: usize = 4 << 10;

/// Frames of this many bytes or more make their call's block a chunk of its own, where they are
/// ([`Closed::write_around`]).
pub(super) const OWN_CHUNK: usize = CHUNK;

#[derive(Default)]
pub(super) struct Closed {
    /// The blocks, oldest first, back to back in chunks (see the module's docs).
    chunks: VecDeque<Vec<u8>>,
    /// Where the oldest block starts in the first chunk.
    start: usize,
    /// The last chunk emptied, to be the next one begun.
    spare: Option<Vec<u8>>,
    entries: VecDeque<Entry>,
    /// The methods the blocks name, by index.
    methods: Vec<Arc<Method>>,
    /// A method's index in `methods`, by its address.
    index: HashMap<usize, u32>,
    /// The last method looked up (address, index): calls come in runs of one method.
    last: Option<(usize, u32)>,
    /// `methods.len()` after the last compaction.
    compacted: usize,
    /// What the blocks count against the journal's byte cap.
    counted: usize,
}

#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) id: u64,
    len: usize,
    /// What the call counts against the journal's byte cap (as its record did).
    pub(super) counted: usize,
}

impl Closed {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn counted(&self) -> usize {
        self.counted
    }

    pub(super) fn front(&self) -> Option<Entry> {
        self.entries.front().copied()
    }

    /// Appends the block `encode` writes at the end of the vector it is given (its first four
    /// bytes left for the method's slot) for call `id` of `method`, a block of about `size` bytes
    /// (at least its messages'); `encode` returns what the call counts against the byte cap.
    pub(super) fn write(
        &mut self,
        id: u64,
        method: &Arc<Method>,
        size: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> usize,
    ) {
        let slot = self.slot(method);
        let out = self.tail(size);
        let at = out.len();
        let counted = encode(out);
        out[at..at + 4].copy_from_slice(&slot.to_le_bytes());
        let len = out.len() - at;
        self.add(Entry { id, len, counted });
    }

    /// [`Closed::write`] for a call whose frames are large ([`OWN_CHUNK`] or more): its block is
    /// made around them where they are, `head` moved in before them and `tail` after, and is a
    /// chunk of its own. Copied into the ring, a large call's frames took twice their size while it
    /// ended, and the copy was a new allocation each time (`tests/limits.rs`).
    pub(super) fn write_around(
        &mut self,
        id: u64,
        method: &Arc<Method>,
        mut head: Vec<u8>,
        mut frames: Vec<u8>,
        tail: &[u8],
        counted: usize,
    ) {
        let slot = self.slot(method);
        head[..4].copy_from_slice(&slot.to_le_bytes());
        frames.reserve_exact(head.len() + tail.len());
        frames.splice(0..0, head);
        frames.extend_from_slice(tail);
        let len = frames.len();
        self.chunks.push_back(frames);
        self.add(Entry { id, len, counted });
    }

    fn append(&mut self, entry: Entry, block: &[u8]) {
        self.tail(block.len()).extend_from_slice(block);
        self.add(entry);
    }

    /// A block just put at the ring's end, and what it counts: the one place both are added
    /// (`pop_front` the one where they are taken off).
    fn add(&mut self, entry: Entry) {
        self.entries.push_back(entry);
        self.counted += entry.counted;
    }

    /// The chunk the next block, of about `size` bytes, goes in: the last one if the block fits in
    /// what is left of it, else a new one, which a block larger than a chunk has to itself, with
    /// room for it at once. A chunk that grew to take a block moved what it held into room for
    /// twice it (a 4 MB call's block: its request again, `tests/amplification.rs`).
    fn tail(&mut self, size: usize) -> &mut Vec<u8> {
        let room = size.max(ROOM);
        if self
            .chunks
            .back()
            .is_none_or(|chunk| chunk.len() + room > CHUNK)
        {
            let chunk = match self.spare.take() {
                Some(spare) if room < CHUNK => spare,
                _ => Vec::with_capacity(CHUNK.max(size + ROOM)),
            };
            self.chunks.push_back(chunk);
        }
        self.chunks.back_mut().expect("a chunk was just put in")
    }

    fn slot(&mut self, method: &Arc<Method>) -> u32 {
        let key = Arc::as_ptr(method) as usize;
        match self.last {
            Some((last, slot)) if last == key => return slot,
            _ => {}
        }
        if let Some(&slot) = self.index.get(&key) {
            self.last = Some((key, slot));
            return slot;
        }
        if self.methods.len() >= self.compacted + COMPACT_AFTER {
            self.compact(|_| true);
        }
        let slot = self.methods.len() as u32;
        self.methods.push(method.clone());
        self.index.insert(key, slot);
        self.last = Some((key, slot));
        slot
    }

    /// Drops the oldest call.
    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.start += entry.len;
        if self
            .chunks
            .front()
            .is_some_and(|chunk| self.start >= chunk.len())
        {
            self.start = 0;
            let mut chunk = self.chunks.pop_front().expect("the block was in it");
            // One much larger than a chunk (it held a large block) is let go.
            if chunk.capacity() <= 2 * CHUNK {
                chunk.clear();
                self.spare = Some(chunk);
            }
        }
        self.counted -= entry.counted;
        Some(entry)
    }

    pub(super) fn clear(&mut self) {
        *self = Closed::default();
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    /// The blocks, copied out to be decoded without the journal's lock.
    pub(super) fn copy(&self) -> Copied {
        let mut bytes = Vec::with_capacity(self.chunks.iter().map(Vec::len).sum());
        for (i, chunk) in self.chunks.iter().enumerate() {
            bytes.extend_from_slice(&chunk[if i == 0 { self.start } else { 0 }..]);
        }
        Copied {
            bytes,
            entries: self.entries.iter().copied().collect(),
            methods: self.methods.clone(),
        }
    }

    /// The newest `limit` blocks of `method` (every method when `None`; every block when `limit`
    /// is 0; the newest by id, the calls begun last), copied out to be decoded without the
    /// journal's lock. Listing the last call of a full journal copied and decoded all of it: twice
    /// the journal, each time (`tests/journal.rs`).
    pub(super) fn copy_newest(&self, method: Option<&str>, limit: usize) -> Copied {
        if limit == 0 && method.is_none() {
            return self.copy();
        }
        let mut chosen = self.blocks();
        chosen.retain(|(_, block)| method.is_none_or(|name| is_of(&self.methods, block, name)));
        if limit > 0 && chosen.len() > limit {
            // The newest are the last begun: blocks are in the order their calls ended.
            chosen.sort_unstable_by_key(|(entry, _)| entry.id);
            chosen.drain(..chosen.len() - limit);
        }
        let mut bytes = Vec::with_capacity(chosen.iter().map(|(_, block)| block.len()).sum());
        for (_, block) in &chosen {
            bytes.extend_from_slice(block);
        }
        Copied {
            bytes,
            entries: chosen.into_iter().map(|(entry, _)| entry).collect(),
            methods: self.methods.clone(),
        }
    }

    /// Each block, oldest first.
    fn blocks(&self) -> Vec<(Entry, &[u8])> {
        let places = self.places();
        places
            .into_iter()
            .map(|(chunk, at, entry)| (entry, &self.chunks[chunk][at..at + entry.len]))
            .collect()
    }

    /// Where each block is, oldest first: its chunk, where it starts there, and its entry.
    fn places(&self) -> Vec<(usize, usize, Entry)> {
        let mut places = Vec::with_capacity(self.entries.len());
        let mut entries = self.entries.iter();
        for (i, chunk) in self.chunks.iter().enumerate() {
            let mut at = if i == 0 { self.start } else { 0 };
            while at < chunk.len() {
                let Some(&entry) = entries.next() else {
                    return places;
                };
                places.push((i, at, entry));
                at += entry.len;
            }
        }
        places
    }

    /// Takes out the calls whose method is not `pool`'s (a reload replaced their protos), decoded,
    /// for the journal to settle; the others stay, in order.
    pub(super) fn take_stale(&mut self, pool: &DescriptorPool) -> Vec<(Entry, Record)> {
        let stale: Vec<bool> = self
            .methods
            .iter()
            .map(|m| m.desc.parent_pool() != pool)
            .collect();
        if !stale.contains(&true) {
            return Vec::new();
        }
        let copied = self.copy();
        let mut taken = Vec::new();
        let mut kept = Closed {
            methods: self.methods.clone(),
            ..Closed::default()
        };
        for (entry, block) in copied.blocks() {
            if stale[slot_of(block) as usize] {
                if let Some(record) = decode(entry.id, block, &copied.methods) {
                    taken.push((entry, record));
                }
            } else {
                kept.append(entry, block);
            }
        }
        kept.compact(|m| m.desc.parent_pool() == pool);
        *self = kept;
        taken
    }

    /// Keeps only the methods some block names (and `keep` accepts), renumbering the blocks.
    fn compact(&mut self, keep: impl Fn(&Method) -> bool) {
        let mut used = vec![false; self.methods.len()];
        self.each_block(|block| used[slot_of(block) as usize] = true);
        let mut renumbered = vec![u32::MAX; self.methods.len()];
        let mut methods = Vec::new();
        for (slot, method) in self.methods.iter().enumerate() {
            if used[slot] && keep(method) {
                renumbered[slot] = methods.len() as u32;
                methods.push(method.clone());
            }
        }
        self.each_block(|block| {
            let slot = renumbered[slot_of(block) as usize];
            block[..4].copy_from_slice(&slot.to_le_bytes());
        });
        self.index = methods
            .iter()
            .enumerate()
            .map(|(slot, m)| (Arc::as_ptr(m) as usize, slot as u32))
            .collect();
        self.compacted = methods.len();
        self.methods = methods;
        self.last = None;
    }

    /// Calls `f` with each block, oldest first.
    fn each_block(&mut self, mut f: impl FnMut(&mut [u8])) {
        for (chunk, at, entry) in self.places() {
            f(&mut self.chunks[chunk][at..at + entry.len]);
        }
    }
}

/// The closed calls as copied out of the journal.
pub(super) struct Copied {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    methods: Vec<Arc<Method>>,
}

impl Copied {
    fn blocks(&self) -> impl Iterator<Item = (Entry, &[u8])> {
        self.places().map(|(entry, at)| (entry, &self.bytes[at]))
    }

    /// Each call copied, and where its block is.
    pub(super) fn places(&self) -> impl Iterator<Item = (Entry, Range<usize>)> + '_ {
        starts(self.entries.iter())
            .zip(&self.entries)
            .map(|(start, entry)| (*entry, start..start + entry.len))
    }

    /// Call `id`, whose block is `at` ([`Copied::places`]), decoded.
    pub(super) fn record(&self, id: u64, at: Range<usize>) -> Option<Record> {
        decode(id, &self.bytes[at], &self.methods)
    }
}

/// Where each block starts, the blocks being back to back in the order of `entries`.
fn starts<'a>(entries: impl Iterator<Item = &'a Entry> + 'a) -> impl Iterator<Item = usize> + 'a {
    entries.scan(0, |offset, entry| {
        let start = *offset;
        *offset += entry.len;
        Some(start)
    })
}

fn slot_of(block: &[u8]) -> u32 {
    u32::from_le_bytes([block[0], block[1], block[2], block[3]])
}

/// Whether `block` is a call of the method named `name` (of `methods`, the table it names it by).
fn is_of(methods: &[Arc<Method>], block: &[u8], name: &str) -> bool {
    methods
        .get(slot_of(block) as usize)
        .is_some_and(|m| m.name == name)
}

const UNMATCHED: u8 = 1;
const PEER: u8 = 2;
const METADATA: u8 = 4;
const END: u8 = 8;

const REQUEST: u8 = 0;
const HEADERS: u8 = 1;
const REPLY: u8 = 2;

/// `record`'s call, ended, as a block appended to `out` (its first four bytes are left for
/// [`Closed::write`]).
pub(super) fn encode(record: &Record, progress: &Progress, out: &mut Vec<u8>) {
    encode_head(record, progress, out);
    out.extend_from_slice(&progress.frames.bytes);
    encode_tail(progress, out);
}

/// What [`encode`] writes before the frames (their count last).
pub(super) fn encode_head(record: &Record, progress: &Progress, out: &mut Vec<u8>) {
    let flags = u8::from(progress.unmatched) * UNMATCHED
        | u8::from(progress.metadata.is_some()) * METADATA
        | u8::from(progress.end.is_some()) * END;
    let counts = [progress.bytes as u64, progress.dropped_frames];
    put_head(
        out,
        record.protocol,
        flags,
        record.started,
        record.peer,
        counts,
    );
    if let Some(metadata) = &progress.metadata {
        put_bytes(out, &metadata.0);
    }
    put_rules(out, &progress.rules);
    out.put_u32_le(progress.frames.count);
}

/// What [`encode`] writes after the frames.
pub(super) fn encode_tail(progress: &Progress, out: &mut Vec<u8>) {
    if let Some(end) = &progress.end {
        put_status(out, end.code, &end.message);
        put_bytes(out, &end.trailers.0);
        out.put_u64_le(end.elapsed.as_nanos() as u64);
    }
}

/// A call with one request that ended without being listed ([`super::Unary`]), as it passed.
pub(super) struct Unlisted<'a> {
    pub protocol: Protocol,
    pub peer: Option<SocketAddr>,
    pub started: WallTime,
    pub metadata: Option<&'a MetadataMap>,
    pub rule: Option<usize>,
    pub unmatched: bool,
    pub request: &'a Request,
    /// The reply's headers (when not empty) and message.
    pub headers: Option<&'a MetadataMap>,
    pub message: Option<Body<'a>>,
    pub code: Code,
    pub text: &'a str,
    pub trailers: &'a MetadataMap,
    pub elapsed: Duration,
    /// The journal's byte cap, which one call's frames may not pass.
    pub max: usize,
}

/// `call` as a block appended to `out`: the block [`encode`] makes of a record that saw the same,
/// written straight from the call's parts; and the bytes it counts against the cap, as that
/// record would.
pub(super) fn encode_unlisted(call: &Unlisted<'_>, out: &mut Vec<u8>) -> usize {
    let flags =
        u8::from(call.unmatched) * UNMATCHED | u8::from(call.metadata.is_some()) * METADATA | END;
    let counts = put_head(out, call.protocol, flags, call.started, call.peer, [0, 0]);
    let (mut bytes, mut dropped) = (0, 0);
    // A record counts its request when the call starts, the metadata when it is handed over.
    let request = Some(Body::of_request(call.request))
        .filter(|body| fits(&mut bytes, &mut dropped, body.size(), call.max));
    if let Some(metadata) = call.metadata {
        bytes += put_metadata(out, metadata);
    }
    put_rules(out, call.rule.as_slice());
    let elapsed = call.elapsed.as_nanos() as u64;
    let count = out.len();
    out.put_u32_le(0);
    let mut frames = 0u32;
    if let Some(body) = request {
        put_request(out, 0, &body);
        frames += 1;
    }
    if let Some(headers) = call.headers {
        let size = Packed::len_of(headers);
        if fits(&mut bytes, &mut dropped, size, call.max) {
            put_headers(out, elapsed, headers, size);
            frames += 1;
        }
    }
    if let Some(body) = &call.message {
        if fits(&mut bytes, &mut dropped, body.size(), call.max) {
            put_reply(out, elapsed, body, call.rule);
            frames += 1;
        }
    }
    put_status(out, call.code, call.text);
    bytes += put_metadata(out, call.trailers) + call.text.len();
    out.put_u64_le(elapsed);
    out[counts..counts + 8].copy_from_slice(&(bytes as u64).to_le_bytes());
    out[counts + 8..counts + 16].copy_from_slice(&dropped.to_le_bytes());
    out[count..count + 4].copy_from_slice(&frames.to_le_bytes());
    bytes
}

/// Whether a frame of `size` payload bytes keeps the call within its byte cap `max` (as
/// `Record::push_to` decides); counted in `bytes` if so, in `dropped` if not.
pub(super) fn fits(bytes: &mut usize, dropped: &mut u64, size: usize, max: usize) -> bool {
    let size = size + FRAME_OVERHEAD;
    if *bytes + size > max {
        *dropped += 1;
        return false;
    }
    *bytes += size;
    true
}

/// What every block starts with: the method's slot (left blank for [`Closed::write`]), the
/// protocol, the flags, the start, the client's address, and the bytes counted and frames dropped
/// (`counts`); where in `out` those two begin.
fn put_head(
    out: &mut Vec<u8>,
    protocol: Protocol,
    flags: u8,
    started: WallTime,
    peer: Option<SocketAddr>,
    counts: [u64; 2],
) -> usize {
    // Made on the stack and copied in once: the block's first bytes, written field by field,
    // each checked the buffer's room.
    let mut head = [0; 4 + 1 + 1 + 8 + 4 + 1 + 16 + 2 + 8 + 8];
    head[4] = protocol as u8;
    head[5] = flags | u8::from(peer.is_some()) * PEER;
    head[6..14].copy_from_slice(&started.secs().to_le_bytes());
    head[14..18].copy_from_slice(&started.subsec_nanos().to_le_bytes());
    let len = match peer {
        None => 18,
        Some(peer) => {
            let port = match peer.ip() {
                IpAddr::V4(ip) => {
                    head[18] = 4;
                    head[19..23].copy_from_slice(&ip.octets());
                    23
                }
                IpAddr::V6(ip) => {
                    head[18] = 6;
                    head[19..35].copy_from_slice(&ip.octets());
                    35
                }
            };
            head[port..port + 2].copy_from_slice(&peer.port().to_le_bytes());
            port + 2
        }
    };
    head[len..len + 8].copy_from_slice(&counts[0].to_le_bytes());
    head[len + 8..len + 16].copy_from_slice(&counts[1].to_le_bytes());
    let at = out.len() + len;
    out.extend_from_slice(&head[..len + 16]);
    at
}

fn put_rules(out: &mut Vec<u8>, rules: &[usize]) {
    out.put_u32_le(rules.len() as u32);
    for &rule in rules {
        out.put_u32_le(rule as u32);
    }
}

/// A frame's time (`at`: nanoseconds since the call started) and kind and the length of what
/// follows, made on the stack and appended at once (a stream writes one a message).
fn put_frame_head(out: &mut Vec<u8>, at: u64, kind: u8, len: usize) {
    let mut head = [0; 8 + 1 + 4];
    head[..8].copy_from_slice(&at.to_le_bytes());
    head[8] = kind;
    head[9..].copy_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&head);
}

/// A request message at `at` since the call started, as a frame.
pub(super) fn put_request(out: &mut Vec<u8>, at: u64, body: &Body<'_>) {
    put_frame_head(out, at, REQUEST, body.size());
    body.append_to(out);
}

/// Reply headers as a frame, packed in `len` bytes (`Packed::len_of`, which the caller has
/// measured them with against the byte cap).
pub(super) fn put_headers(out: &mut Vec<u8>, at: u64, headers: &MetadataMap, len: usize) {
    put_frame_head(out, at, HEADERS, len);
    Packed::pack(headers, out);
}

/// A reply message and the rule that wrote it, as a frame.
pub(super) fn put_reply(out: &mut Vec<u8>, at: u64, body: &Body<'_>, rule: Option<usize>) {
    put_frame_head(out, at, REPLY, body.size());
    body.append_to(out);
    out.put_u32_le(rule.map_or(u32::MAX, |r| r as u32));
}

/// One frame as read back.
pub(super) struct Frame<'a> {
    /// Since the call started.
    pub(super) at: Duration,
    pub(super) event: Event<'a>,
}

pub(super) enum Event<'a> {
    /// A request message's bytes.
    Request(&'a [u8]),
    /// Reply headers, packed.
    Headers(&'a [u8]),
    /// A reply message's bytes and the rule that wrote it.
    Reply(&'a [u8], Option<usize>),
}

/// The frames written back to back in `bytes`.
pub(super) fn frames(mut bytes: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    std::iter::from_fn(move || take_frame(&mut bytes))
}

fn take_frame<'a>(buf: &mut &'a [u8]) -> Option<Frame<'a>> {
    let at = Duration::from_nanos(take_u64(buf)?);
    let event = match take_u8(buf)? {
        REQUEST => Event::Request(take_bytes(buf)?),
        HEADERS => Event::Headers(take_bytes(buf)?),
        _ => {
            let bytes = take_bytes(buf)?;
            let rule = take_u32(buf)?;
            Event::Reply(bytes, (rule != u32::MAX).then_some(rule as usize))
        }
    };
    Some(Frame { at, event })
}

/// The end's code and message (its trailers and time follow).
fn put_status(out: &mut Vec<u8>, code: Code, message: &str) {
    let mut head = [0; 4 + 4];
    head[..4].copy_from_slice(&(code as i32).to_le_bytes());
    head[4..].copy_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(message.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

/// `metadata` packed, as [`put_bytes`] writes bytes; its packed size.
fn put_metadata(out: &mut Vec<u8>, metadata: &MetadataMap) -> usize {
    let at = out.len();
    out.put_u32_le(0);
    Packed::pack(metadata, out);
    let len = out.len() - at - 4;
    out[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    len
}

/// A message as a block holds it: its bytes, or the decoded message, encoded when written.
pub(super) enum Body<'a> {
    Bytes(&'a [u8]),
    Decoded(&'a DynamicMessage),
}

impl<'a> Body<'a> {
    pub(super) fn of_request(request: &'a Request) -> Body<'a> {
        match request {
            Request::Encoded(bytes) => Body::Bytes(bytes),
            Request::Decoded(message) => Body::Decoded(message),
        }
    }

    pub(super) fn of_reply(message: &'a Message) -> Body<'a> {
        match message {
            Message::Encoded(bytes) => Body::Bytes(bytes),
            Message::Reserved(buf, reserve) => Body::Bytes(&buf[*reserve..]),
            Message::Decoded(message) => Body::Decoded(message),
        }
    }

    /// Its size, as counted against the journal's byte cap.
    pub(super) fn size(&self) -> usize {
        match self {
            Body::Bytes(bytes) => bytes.len(),
            Body::Decoded(message) => prost::Message::encoded_len(*message),
        }
    }

    /// Appends the message's bytes to `out`, encoding it if decoded.
    pub(super) fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Body::Bytes(bytes) => out.extend_from_slice(bytes),
            Body::Decoded(message) => prost::Message::encode_raw(*message, out),
        }
    }
}

/// The call a block holds, as a record of no journal (`None` for a block not made by [`encode`]).
fn decode(id: u64, block: &[u8], methods: &[Arc<Method>]) -> Option<Record> {
    let mut buf = block;
    let method = methods.get(take_u32(&mut buf)? as usize)?.clone();
    let protocol = match take_u8(&mut buf)? {
        0 => Protocol::Grpc,
        1 => Protocol::GrpcWeb,
        2 => Protocol::Connect,
        _ => Protocol::HttpJson,
    };
    let flags = take_u8(&mut buf)?;
    let secs = take_u64(&mut buf)?;
    let nanos = take_u32(&mut buf)?;
    let started = WallTime::of(UNIX_EPOCH + Duration::new(secs, nanos));
    let peer = if flags & PEER != 0 {
        let ip = match take_u8(&mut buf)? {
            4 => IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(take(&mut buf, 4)?).ok()?,
            )),
            _ => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(take(&mut buf, 16)?).ok()?,
            )),
        };
        let port = u16::from_le_bytes(take(&mut buf, 2)?.try_into().ok()?);
        Some(SocketAddr::new(ip, port))
    } else {
        None
    };
    let bytes = take_u64(&mut buf)? as usize;
    let dropped_frames = take_u64(&mut buf)?;
    let metadata = if flags & METADATA != 0 {
        Some(Packed(take_bytes(&mut buf)?.to_vec()))
    } else {
        None
    };
    let mut rules = SmallVec::new();
    for _ in 0..take_u32(&mut buf)? {
        rules.push(take_u32(&mut buf)? as usize);
    }
    let count = take_u32(&mut buf)?;
    let start = buf;
    for _ in 0..count {
        take_frame(&mut buf)?;
    }
    let frames = Frames {
        bytes: start[..start.len() - buf.len()].to_vec(),
        count,
    };
    let end = if flags & END != 0 {
        let code = Code::from_i32(take_u32(&mut buf)? as i32);
        let message = String::from_utf8_lossy(take_bytes(&mut buf)?).into_owned();
        let trailers = Packed(take_bytes(&mut buf)?.to_vec());
        let elapsed = Duration::from_nanos(take_u64(&mut buf)?);
        Some(Ended {
            code,
            message,
            trailers,
            elapsed,
        })
    } else {
        None
    };
    Some(Record {
        id,
        protocol,
        peer,
        deadline: None,
        started,
        clock: Instant::now(),
        current: AtomicUsize::new(super::NO_RULE),
        counter: (super::COUNTER.raw(), 0),
        journal: None,
        entered: AtomicBool::new(true),
        detached: AtomicBool::new(true),
        me: std::sync::Weak::new(),
        progress: Mutex::new(Progress {
            metadata,
            method: Some(method),
            settled: None,
            frames,
            rules,
            unmatched: flags & UNMATCHED != 0,
            end,
            bytes,
            uncounted: 0,
            dropped_frames,
        }),
    })
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = buf.split_at_checked(n)?;
    *buf = rest;
    Some(head)
}

fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    (buf.remaining() >= 4).then(|| buf.get_u32_le())
}

fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    (buf.remaining() >= 8).then(|| buf.get_u64_le())
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(buf)? as usize;
    take(buf, len)
}
