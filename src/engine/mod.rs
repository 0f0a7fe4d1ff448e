//! The rule engine: answers one call of a method from its rules, whatever the protocol.
//!
//! A protocol hands in a [`Call`] — the method, the request metadata, the request messages (encoded
//! protobuf as it came, or already decoded from JSON) — and gets a [`Reply`] back: headers, messages
//! (encoded bytes or a `DynamicMessage`, whichever the engine had: a binary protocol sends bytes as
//! they are, a JSON one prints messages), and an [`End`] with the status and the trailers. A unary
//! answer comes back as a ready value; only the streaming shapes yield a stream of [`Event`]s.
//!
//! Every rule is executed in one place ([`run`]): selection, `delay`, headers, trailers, errors,
//! replies, server and client streams, bidi, scripts. How a reply is written is chosen there per
//! rule and per request: a request whose bytes are canonical, for a rule whose templates compiled to
//! emitters ([`emit`]), is answered from its bytes without decoding it (a unary script is shown it
//! lazily); any other request is decoded and the templates rendered. An emitter that declines falls
//! back to the template, so both ways give the same events.
//!
//! The engine knows the rules, scripts and codec below it and nothing above it: the registry holds
//! `Arc<engine::Method>`, and the protocols turn events into their wire form.

pub(crate) mod emit;
mod native;
mod run;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::metrics::{self, MethodSlot};
use crate::rules::MethodRules;
use emit::Direct;

pub(crate) use native::Native;
pub use run::answer;

/// One method as served: its descriptor, its rules, and their compiled form.
#[derive(Debug)]
pub struct Method {
    pub desc: MethodDescriptor,
    /// `pkg.Service/Method`
    pub name: String,
    /// `None` when no handler file has a rule for it.
    pub(crate) rules: Option<MethodRules>,
    /// The rules compiled to write replies straight from the request's bytes, when they can be.
    pub(crate) direct: Option<Direct>,
    /// The handlers folder, named in the answer to a method without rules (the message is built
    /// only when asked: thousands of methods of a large tree have none).
    handlers_dir: Arc<Path>,
    /// What answers a method of protodrop's own (the admin API) instead of rules: see [`native`].
    native: Option<Arc<dyn Native>>,
    /// Its counters (`crate::metrics`), found by name on its first call.
    metrics: OnceLock<MethodSlot>,
    /// The descriptor's shape, asked of every call (the descriptor looks it up each time).
    client_streaming: bool,
    server_streaming: bool,
}

impl Method {
    pub(crate) fn new(
        desc: MethodDescriptor,
        name: String,
        rules: Option<MethodRules>,
        handlers_dir: Arc<Path>,
    ) -> Method {
        let direct = rules.as_ref().and_then(|r| Direct::compile(&desc, r));
        Method {
            client_streaming: desc.is_client_streaming(),
            server_streaming: desc.is_server_streaming(),
            desc,
            name,
            rules,
            direct,
            handlers_dir,
            native: None,
            metrics: OnceLock::new(),
        }
    }

    /// Whether the client sends a stream of messages.
    pub fn client_streaming(&self) -> bool {
        self.client_streaming
    }

    /// Whether the server answers with a stream of messages.
    pub fn server_streaming(&self) -> bool {
        self.server_streaming
    }

    /// Where the rule at `index` of this method's rules came from (`file:line`).
    pub(crate) fn rule_origin(&self, index: usize) -> &str {
        self.rules
            .as_ref()
            .and_then(|r| r.rules.get(index))
            .map_or("?", |r| r.origin.as_str())
    }

    /// The same method with other rules (runtime rules layered over the files'), compiled anew.
    pub(crate) fn with_rules(&self, rules: Option<MethodRules>) -> Method {
        Method::new(
            self.desc.clone(),
            self.name.clone(),
            rules,
            self.handlers_dir.clone(),
        )
    }

    /// A method answered by `native`, not by rules.
    pub(crate) fn native(desc: MethodDescriptor, native: Arc<dyn Native>) -> Method {
        let name = format!("{}/{}", desc.parent_service().full_name(), desc.name());
        Method {
            client_streaming: desc.is_client_streaming(),
            server_streaming: desc.is_server_streaming(),
            desc,
            name,
            rules: None,
            direct: None,
            handlers_dir: Arc::from(Path::new("")),
            native: Some(native),
            metrics: OnceLock::new(),
        }
    }

    /// Whether protodrop's own code answers this method (the admin API): such a call is no call to
    /// the mock, so per-call rule work and the journal leave it out.
    pub(crate) fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Starts timing one call of this method over `protocol` (see [`metrics::CallTimer`]).
    pub(crate) fn call_timer(
        &self,
        protocol: metrics::Protocol,
        deadline: Option<std::time::Instant>,
    ) -> metrics::CallTimer {
        match self.metrics() {
            Some(slot) => slot.start(metrics::global(), protocol, deadline),
            None => metrics::CallTimer::OFF,
        }
    }

    /// Where this method's calls and rule hits are counted; `None` with `--no-metrics`.
    pub(crate) fn metrics(&self) -> Option<&MethodSlot> {
        let global = metrics::global();
        if !global.enabled() {
            return None;
        }
        Some(self.metrics.get_or_init(|| {
            let rules = self.rules.iter().flat_map(|r| &r.rules);
            let streaming = self.client_streaming || self.server_streaming;
            global.method(&self.name, rules.map(|r| r.origin.as_str()), streaming)
        }))
    }

    /// The `UNIMPLEMENTED` message for a method without rules: which file to add, and a starter
    /// rule to put in it.
    pub(crate) fn no_handler_message(&self) -> String {
        let stem = self
            .desc
            .parent_file()
            .name()
            .rsplit('/')
            .next()
            .unwrap_or("x")
            .trim_end_matches(".proto")
            .to_string();
        let file = self.handlers_dir.join(format!("{stem}.toml"));
        format!(
            "no handler for {name}: add a rule to {file}, e.g.\n{rule}",
            name = self.name,
            file = file.display(),
            rule = crate::rules::starter::rule(&self.desc).trim_end()
        )
    }
}

/// A call in: what a protocol read, in a form of no protocol.
pub struct Call {
    pub method: Arc<Method>,
    pub metadata: MetadataMap,
    pub requests: Requests,
    /// Largest reply message, in bytes (`--max-message-size`).
    pub limit: usize,
    /// Bytes left free at the start of a reply the engine encodes itself
    /// ([`Message::Reserved`]): a protocol that frames the reply writes its prefix there.
    pub reserve: usize,
    /// Told which rule answers each request (the journal and the call log); `None`: nobody asks.
    pub watch: Option<Arc<dyn Watch>>,
}

/// What the engine tells whoever watches a call about its rules, as it goes: the one thing about
/// a call that its messages and end do not show.
pub trait Watch: Send + Sync {
    /// The method's rule at `index` (in `MethodRules::rules`) answers the request just read; the
    /// replies that follow, up to the next call of this, are its.
    fn rule(&self, index: usize);
    /// No rule of the method matched the request just read.
    fn unmatched(&self);
    /// The request metadata of a call with one request, handed over when the engine is done with
    /// it, so that keeping it costs no copy (a streaming call's watcher copies it at the start).
    /// `waiting`: the call is not answered yet (a rule's delay, a script); else its answer follows
    /// at once.
    fn metadata(&self, metadata: MetadataMap, waiting: bool);
    /// A message of a request stream, just read. Told by the engine as it reads the stream
    /// ([`Incoming`]), not by a layer around the stream: such a layer moved every message once
    /// more, which cost a bidi echo with the journal about 8 % (`bench/AB.md`, session 20). The
    /// one request of a call read whole ([`Requests::One`]) is not told: the watcher has it with
    /// the call.
    fn request(&self, request: &Request);
    /// Whether [`Watch::request`] is wanted at all, asked once a call: a watcher that only
    /// counts rules (the call log's) is not told every message.
    fn wants_requests(&self) -> bool {
        true
    }
}

/// One request message: encoded protobuf as it came (the engine may answer from these bytes
/// without decoding them), or decoded (from JSON).
pub enum Request {
    Encoded(Bytes),
    Decoded(DynamicMessage),
}

/// The request messages of a call.
pub enum Requests {
    /// The one message of a unary call, read whole.
    One(Request),
    /// Messages as they arrive; an error ends the call with it.
    Stream(Pin<Box<dyn Stream<Item = Result<Request, Status>> + Send>>),
}

/// A request stream as the engine reads it: each message is told to the call's watcher
/// ([`Watch::request`]) as it comes out. A plain struct, polled inline by whoever reads it.
pub(crate) struct Incoming {
    messages: Pin<Box<dyn Stream<Item = Result<Request, Status>> + Send>>,
    watch: Option<Arc<dyn Watch>>,
}

impl Incoming {
    fn new(
        messages: Pin<Box<dyn Stream<Item = Result<Request, Status>> + Send>>,
        watch: Option<Arc<dyn Watch>>,
    ) -> Incoming {
        let watch = watch.filter(|w| w.wants_requests());
        Incoming { messages, watch }
    }

    /// The next message, not told yet: for a reader that tells it itself ([`Incoming::tell`])
    /// where it takes the message apart.
    #[inline]
    pub(crate) fn poll_untold(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Request, Status>>> {
        self.messages.as_mut().poll_next(cx)
    }

    #[inline]
    pub(crate) fn tell(&self, request: &Request) {
        if let Some(watch) = &self.watch {
            watch.request(request);
        }
    }
}

impl Stream for Incoming {
    type Item = Result<Request, Status>;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = std::task::ready!(this.poll_untold(cx));
        if let Some(Ok(request)) = &item {
            this.tell(request);
        }
        Poll::Ready(item)
    }
}

/// Request messages already decoded (from JSON), as they arrive.
pub(crate) type Decoded = Pin<Box<dyn Stream<Item = Result<DynamicMessage, Status>> + Send>>;

impl Requests {
    /// The one message of a call that takes one (unary, server stream): a stream of them must
    /// hold exactly one.
    pub(crate) async fn one(self, watch: Option<&Arc<dyn Watch>>) -> Result<Request, Status> {
        use futures::StreamExt as _;
        match self {
            Requests::One(request) => Ok(request),
            Requests::Stream(stream) => {
                let mut stream = Incoming::new(stream, watch.cloned());
                let first = stream
                    .next()
                    .await
                    .transpose()?
                    .ok_or_else(|| Status::internal("missing request message"))?;
                if stream.next().await.transpose()?.is_some() {
                    return Err(crate::limits::multiple_requests());
                }
                Ok(first)
            }
        }
    }

    /// The messages as a stream the engine reads, each told to `watch` (a stream's; the one
    /// request of a call read whole is not told, see [`Watch::request`]).
    pub(crate) fn incoming(self, watch: Option<&Arc<dyn Watch>>) -> Incoming {
        match self {
            Requests::Stream(stream) => Incoming::new(stream, watch.cloned()),
            Requests::One(request) => {
                Incoming::new(Box::pin(futures::stream::iter([Ok(request)])), None)
            }
        }
    }

    /// The messages of a JSON protocol, decoded as they were read.
    pub(crate) fn decoded(messages: Decoded) -> Requests {
        use futures::StreamExt as _;
        Requests::Stream(Box::pin(messages.map(|r| r.map(Request::Decoded))))
    }
}

/// One reply message.
pub enum Message {
    Decoded(DynamicMessage),
    /// Encoded protobuf.
    Encoded(Bytes),
    /// Encoded protobuf after [`Call::reserve`] free bytes, for the protocol's frame prefix.
    Reserved(Vec<u8>, usize),
}

impl Message {
    /// The encoded message, within `limit` (RESOURCE_EXHAUSTED beyond).
    pub(crate) fn into_bytes(self, limit: usize) -> Result<Bytes, Status> {
        match self {
            Message::Decoded(m) => crate::codec::encode_reply(&m, limit),
            Message::Encoded(bytes) => Ok(bytes),
            Message::Reserved(buf, reserve) => Ok(Bytes::from(buf).slice(reserve..)),
        }
    }

    /// The message decoded as `desc` (the method's output), for a protocol that prints it.
    pub fn into_decoded(self, desc: &MessageDescriptor) -> Result<DynamicMessage, Status> {
        let bytes = match self {
            Message::Decoded(m) => return Ok(m),
            Message::Encoded(bytes) => bytes,
            Message::Reserved(buf, reserve) => Bytes::from(buf).slice(reserve..),
        };
        DynamicMessage::decode(desc.clone(), bytes)
            .map_err(|e| Status::internal(format!("cannot read back the reply: {e}")))
    }
}

/// How a call ends: its status and its trailers, together.
#[derive(Debug, Clone)]
pub struct End {
    pub code: Code,
    pub message: String,
    /// `grpc-status-details-bin`: an encoded `google.rpc.Status`, or empty.
    pub details: Bytes,
    /// The rule's trailers; on an error answered before any header, its headers too.
    pub trailers: MetadataMap,
}

impl End {
    pub(crate) fn ok(trailers: MetadataMap) -> End {
        End {
            code: Code::Ok,
            message: String::new(),
            details: Bytes::new(),
            trailers,
        }
    }

    pub(crate) fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// The status a tonic-shaped protocol sends (for an OK end, only when it has trailers).
    pub(crate) fn into_status(self) -> Status {
        Status::with_details_and_metadata(self.code, self.message, self.details, self.trailers)
    }
}

impl From<Status> for End {
    fn from(status: Status) -> End {
        End {
            code: status.code(),
            message: status.message().to_owned(),
            details: Bytes::copy_from_slice(status.details()),
            trailers: status.metadata().clone(),
        }
    }
}

/// What happens in a streamed reply, after its headers: messages, then one [`End`], always last
/// (boxed: an event is moved through a few stream layers per message, and the end is large).
pub enum Event {
    Message(Message),
    End(Box<End>),
}

pub(crate) type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// A call's answer.
pub enum Reply {
    /// The call ends before any header (gRPC's trailers-only answer); the rule's headers, if any,
    /// are in the end's trailers.
    Refused(End),
    /// A unary (or client-streaming) answer, all of it ready.
    Ready(Ready),
    /// Headers, then events as they come.
    Stream(Streamed),
}

/// Headers, the message unless the call failed after its headers, the end.
pub struct Ready {
    pub headers: MetadataMap,
    pub message: Option<Message>,
    pub end: End,
}

pub struct Streamed {
    pub headers: MetadataMap,
    pub events: Events,
}

impl Reply {
    fn refused(status: Status) -> Reply {
        Reply::Refused(status.into())
    }

    /// The answer whole, for a protocol that sends one message: a stream is read to its end (a
    /// second message is INTERNAL). `Err`: the call was refused before its headers.
    pub(crate) async fn whole(self) -> Result<Ready, End> {
        let Streamed {
            headers,
            mut events,
        } = match self {
            Reply::Refused(end) => return Err(end),
            Reply::Ready(ready) => return Ok(ready),
            Reply::Stream(streamed) => streamed,
        };
        use futures::StreamExt as _;
        let (message, end) = match events.next().await {
            Some(Event::Message(m)) => match events.next().await {
                Some(Event::End(end)) => (Some(m), *end),
                None => (Some(m), End::ok(MetadataMap::new())),
                Some(Event::Message(_)) => (
                    None,
                    Status::internal("a unary method answered more than one message").into(),
                ),
            },
            Some(Event::End(end)) => (None, *end),
            None => (None, End::ok(MetadataMap::new())),
        };
        Ok(Ready {
            headers,
            message,
            end,
        })
    }

    /// The answer as a stream, for a protocol that streams: a ready one as its events. `Err`: the
    /// call was refused before its headers.
    // An `End` ends every call: boxing it to shrink this `Err` would allocate on every one.
    #[allow(clippy::result_large_err)]
    pub fn into_stream(self) -> Result<Streamed, End> {
        match self {
            Reply::Refused(end) => Err(end),
            Reply::Ready(Ready {
                headers,
                message,
                end,
            }) => {
                let events = message.map(Event::Message).into_iter();
                let events = events.chain(std::iter::once(Event::End(Box::new(end))));
                Ok(Streamed {
                    headers,
                    events: Box::pin(futures::stream::iter(events)),
                })
            }
            Reply::Stream(streamed) => Ok(streamed),
        }
    }
}
