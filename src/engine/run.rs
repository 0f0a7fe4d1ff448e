//! Executes a method's rules for one call: one function per RPC shape, each rule step written once.
//!
//! Replies are produced as they go: a server stream renders each message when it is due, a bidi
//! stream answers each incoming message as it arrives, and nothing is collected first.
//!
//! Each request is an [`Input`]: its canonical bytes when the method's rules compiled
//! ([`super::emit::Direct`]) and the bytes are canonical, else the decoded message. The rule is
//! selected from either form; a canonical request whose selected rule did not compile is decoded
//! then. A reply template is written by its emitter from the bytes when it has one, else (or when
//! the emitter declines) rendered from the decoded request: the same message either way
//! (`src/tests/encoding.rs` and the tests below compare them).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::Status;

use super::emit::{Declined, DirectReply, Emitter, RawScope};
use super::{
    Call, Decoded, End, Event, Events, Incoming, Message, Method, Ready, Reply, Request, Requests,
    Streamed, Watch,
};
use crate::budget::{self, Exceeded};
use crate::codec::decode_request;
use crate::limits::check_reply_len;
use crate::rules::rule::{ErrorTemplate, ScriptMetadata, StreamAnswer, StreamSource};
use crate::rules::template::{MessageTemplate, Scope};
use crate::rules::{Answer, MethodRules, Rule};
use crate::script::{Inline, Script, ScriptCall, ScriptEvent, ScriptOutcome, ScriptRequest};

/// Answers a call, whatever its method's shape.
pub async fn answer(call: Call) -> Reply {
    let Call {
        method,
        metadata,
        requests,
        limit,
        reserve,
        watch,
    } = call;
    let Some(rules) = &method.rules else {
        if let Some(native) = &method.native {
            // Boxed: the call's own future stays the size the rules' path needs.
            return Box::pin(super::native::answer(
                &method, &**native, metadata, requests, limit,
            ))
            .await;
        }
        if let Some(metrics) = method.metrics() {
            metrics.unmatched();
        }
        if let Some(watch) = &watch {
            watch.metadata(metadata, false);
        }
        return Reply::refused(Status::unimplemented(method.no_handler_message()));
    };
    let (client, server) = (method.client_streaming(), method.server_streaming());
    // A client or bidi stream answered by a script is the script's whole: it reads every message.
    let answered = match client.then(|| rules.stream_script()).flatten() {
        Some((rule, script)) => {
            let index = rules.rules.iter().position(|r| std::ptr::eq(r, rule));
            answered_by(&method, watch.as_deref(), index.unwrap_or(0));
            let script = script.clone();
            match ScriptMetadata::render(rule, &Scope::new(None, &metadata)) {
                Ok(base) => {
                    let incoming = decoded(&method, requests, watch.as_ref());
                    let script = ScriptRun::new(script, &method, None, metadata, base);
                    Box::pin(script.run(Some(incoming))).await
                }
                Err(status) => Err(status),
            }
        }
        None => match (client, server) {
            (false, _) => {
                let watch = watch.as_ref();
                single_request(method, metadata, requests, limit, reserve, watch).await
            }
            // Boxed, as the blocking script: only unary answers stay in the call's own future.
            (true, false) => {
                let watch = watch.as_ref();
                Box::pin(client_stream(
                    method, metadata, requests, limit, reserve, watch,
                ))
                .await
            }
            (true, true) => Box::pin(bidi(method, metadata, requests, limit, watch)).await,
        },
    };
    answered.unwrap_or_else(Reply::refused)
}

/// The method's rule at `index` answers the request just read: told to whoever watches the call,
/// and counted in the method's metrics.
fn answered_by(method: &Method, watch: Option<&dyn Watch>, index: usize) {
    if let Some(watch) = watch {
        watch.rule(index);
    }
    if let Some(metrics) = method.metrics() {
        metrics.rule_hit(index);
    }
}

/// No rule of the method matched the request just read (the call ends): told and counted.
fn unmatched(method: &Method, watch: Option<&dyn Watch>) {
    if let Some(watch) = watch {
        watch.unmatched();
    }
    if let Some(metrics) = method.metrics() {
        metrics.unmatched();
    }
}

/// A request as the rules read it.
enum Input {
    /// Canonical bytes, for a method whose rules compiled: replies may be written from them.
    Canonical(Bytes),
    Decoded(DynamicMessage),
}

impl Input {
    fn new(method: &Method, request: Request) -> Result<Input, Status> {
        match request {
            Request::Encoded(bytes) => match &method.direct {
                Some(direct) if direct.is_canonical(&bytes) => Ok(Input::Canonical(bytes)),
                _ => decode_request(&method.desc.input(), bytes).map(Input::Decoded),
            },
            Request::Decoded(message) => Ok(Input::Decoded(message)),
        }
    }

    /// What templates see. A canonical request is absent from it: only a compiled rule reads a
    /// canonical request, and its headers, trailers and errors read metadata only.
    fn scope<'a>(&'a self, metadata: &'a MetadataMap) -> Scope<'a> {
        match self {
            Input::Canonical(_) => Scope::new(None, metadata),
            Input::Decoded(m) => Scope::new(Some(m), metadata),
        }
    }

    fn decode(&mut self, method: &Method) -> Result<(), Status> {
        if let Input::Canonical(bytes) = self {
            *self = Input::Decoded(decode_request(&method.desc.input(), bytes.clone())?);
        }
        Ok(())
    }

    fn into_decoded(self, method: &Method) -> Result<DynamicMessage, Status> {
        match self {
            Input::Canonical(bytes) => decode_request(&method.desc.input(), bytes),
            Input::Decoded(m) => Ok(m),
        }
    }

    fn canonical(&self) -> Option<&Bytes> {
        match self {
            Input::Canonical(bytes) => Some(bytes),
            Input::Decoded(_) => None,
        }
    }
}

fn rules_of(method: &Method) -> Result<&MethodRules, Status> {
    method
        .rules
        .as_ref()
        .ok_or_else(|| Status::unimplemented(method.no_handler_message()))
}

/// The rule `input` selects (its index among the method's rules). A canonical request whose rule
/// did not compile is decoded here, for the general way.
fn select(
    method: &Method,
    input: &mut Input,
    count: Option<u64>,
    metadata: &MetadataMap,
    watch: Option<&dyn Watch>,
) -> Result<usize, Status> {
    let index = select_untold(method, input, count, metadata, watch)?;
    answered_by(method, watch, index);
    Ok(index)
}

/// [`select`], with the rule not told to `watch` nor counted: for a bidi call's first message,
/// whose rule gives the headers and is selected again (and told) when the message is answered.
/// No rule matching is told: the call ends there.
fn select_untold(
    method: &Method,
    input: &mut Input,
    count: Option<u64>,
    metadata: &MetadataMap,
    watch: Option<&dyn Watch>,
) -> Result<usize, Status> {
    let rules = rules_of(method)?;
    let index = match (&*input, &method.direct) {
        (Input::Canonical(request), Some(direct)) => direct.select_index(&RawScope {
            request,
            index: None,
            count,
            metadata,
        }),
        _ => {
            let scope = Scope {
                count,
                ..input.scope(metadata)
            };
            rules.rules.iter().position(|r| r.matches(&scope))
        }
    };
    let Some(index) = index else {
        unmatched(method, watch);
        return Err(Status::unimplemented(rules.no_match_message(&method.name)));
    };
    if chosen(method, index, input)?.1.is_none() {
        input.decode(method)?;
    }
    Ok(index)
}

/// The method's `index`-th rule, and its compiled reply when `input` is canonical.
fn chosen<'m>(
    method: &'m Method,
    index: usize,
    input: &Input,
) -> Result<(&'m Rule, Option<&'m DirectReply>), Status> {
    let rule = rules_of(method)?
        .rules
        .get(index)
        .ok_or_else(|| Status::internal("rule index out of range"))?;
    let compiled = match (input, &method.direct) {
        (Input::Canonical(_), Some(direct)) => direct.reply(index),
        _ => None,
    };
    Ok((rule, compiled))
}

/// Unary and server streaming: one request, then the rule it selects.
async fn single_request(
    method: Arc<Method>,
    metadata: MetadataMap,
    requests: Requests,
    limit: usize,
    reserve: usize,
    told: Option<&Arc<dyn Watch>>,
) -> Result<Reply, Status> {
    let watch = told.map(|w| &**w);
    // A unary call's metadata goes to its watcher when answered, however the answer goes; a
    // server stream's watcher has its own copy (the stream keeps the metadata to the end).
    let mut metadata = HandOver {
        metadata,
        watch: watch.filter(|_| !method.server_streaming()),
    };
    let request = requests.one(told).await?;
    let mut input = Input::new(&method, request)?;
    let index = select(&method, &mut input, None, &metadata, watch)?;
    let (rule, compiled) = chosen(&method, index, &input)?;
    if let Some(delay) = rule.delay {
        // The journal shows the metadata of a call in flight.
        metadata.now();
        tokio::time::sleep(delay).await;
    }
    match &rule.answer {
        Answer::Script(script) => {
            metadata.now();
            let metadata = std::mem::take(&mut metadata.metadata);
            let base = ScriptMetadata::render(rule, &input.scope(&metadata))?;
            let request = match input {
                // Shown lazily from its bytes (see `script_lazy`).
                Input::Canonical(bytes) if matches!(compiled, Some(DirectReply::Script)) => {
                    ScriptRequest::Canonical(method.desc.input(), bytes)
                }
                input => ScriptRequest::Decoded(Arc::new(input.into_decoded(&method)?)),
            };
            let script = ScriptRun::new(script.clone(), &method, Some(request), metadata, base);
            // Inline: no future; else a boxed one, so that a call's future stays small (it is
            // moved whole when the call starts).
            match script.try_inline(reserve) {
                Ok(reply) => Ok(reply),
                Err(script) => Box::pin(script.run(None)).await,
            }
        }
        Answer::Stream(_) => {
            let metadata = std::mem::take(&mut metadata.metadata);
            let scope = input.scope(&metadata);
            let headers = headers_of(rule, &scope)?;
            let trailers = trailers_of(rule, &scope)?;
            // The stream owns the request and the method; it finds its rule again by index.
            let stream = async_stream::try_stream! {
                let (rule, compiled) = chosen(&method, index, &input)?;
                if let Answer::Stream(answer) = &rule.answer {
                    let scope = input.scope(&metadata);
                    let list = for_each_list(answer, &scope);
                    for (template, emitter, index, item) in Steps::new(answer, compiled, &list) {
                        if let Some(d) = answer.delay {
                            tokio::time::sleep(d).await;
                        }
                        let scope = Scope { index, item, ..scope };
                        yield Event::Message(render(&method, template, emitter, input.canonical(), &scope, limit, 0)?);
                    }
                    if let Some(error) = &answer.then {
                        Err(render_error(error, &scope))?;
                    }
                }
                yield Event::End(Box::new(End::ok(trailers)));
            };
            Ok(Reply::Stream(Streamed {
                headers,
                events: events(stream),
            }))
        }
        Answer::Reply(_) | Answer::Error(_) => {
            let scope = input.scope(&metadata);
            single_answer(
                &method,
                rule,
                compiled,
                input.canonical(),
                &scope,
                limit,
                reserve,
            )
        }
    }
}

/// A call's metadata, given to the watcher ([`Watch::metadata`]) when dropped, or at once by
/// [`HandOver::now`] (a copy, for a call that goes on with it).
struct HandOver<'w> {
    metadata: MetadataMap,
    watch: Option<&'w dyn Watch>,
}

impl HandOver<'_> {
    fn now(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.metadata(self.metadata.clone(), true);
        }
    }
}

impl std::ops::Deref for HandOver<'_> {
    type Target = MetadataMap;

    fn deref(&self) -> &MetadataMap {
        &self.metadata
    }
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        if let Some(watch) = self.watch {
            watch.metadata(std::mem::take(&mut self.metadata), false);
        }
    }
}

/// A rule's one reply, or its error, with the rule's headers and trailers.
fn single_answer(
    method: &Method,
    rule: &Rule,
    compiled: Option<&DirectReply>,
    canonical: Option<&Bytes>,
    scope: &Scope<'_>,
    limit: usize,
    reserve: usize,
) -> Result<Reply, Status> {
    let headers = headers_of(rule, scope)?;
    let trailers = trailers_of(rule, scope)?;
    match &rule.answer {
        Answer::Reply(template) => {
            let emitter = compiled.and_then(|c| c.emitter(0));
            let message = render(method, template, emitter, canonical, scope, limit, reserve)?;
            Ok(Reply::Ready(Ready {
                headers,
                message: Some(message),
                end: End::ok(trailers),
            }))
        }
        Answer::Error(error) => Err(with_metadata(
            render_error(error, scope),
            [headers, trailers],
        )),
        Answer::Stream(_) | Answer::Script(_) => Err(Status::internal(format!(
            "the rule at {} cannot answer with a single message",
            rule.origin
        ))),
    }
}

/// One reply message: written by its emitter from a canonical request's bytes, or — when there is
/// none or it declines — rendered from the decoded request by the template. `scope` gives the
/// index and count (and the request, when decoded).
fn render(
    method: &Method,
    template: &MessageTemplate,
    emitter: Option<&Emitter>,
    canonical: Option<&Bytes>,
    scope: &Scope<'_>,
    limit: usize,
    reserve: usize,
) -> Result<Message, Status> {
    let Some(request) = canonical else {
        return render_reply(template, scope, limit).map(Message::Decoded);
    };
    if let Some(emitter) = emitter {
        if reserve == 0 && emitter.is_echo() {
            // The request itself: the template would re-encode it to the same bytes.
            check_reply_len(request.len(), limit)?;
            return Ok(Message::Encoded(request.clone()));
        }
        // Replies that copy from the request are about its size.
        let mut out = Vec::with_capacity(reserve + request.len() + 32);
        out.resize(reserve, 0);
        let raw = RawScope {
            request,
            index: scope.index,
            count: scope.count,
            metadata: scope.metadata,
        };
        // Declined: the template below answers, or reports why it cannot.
        match budget::within(limit, || emitter.emit(&raw, &mut out)) {
            Ok(Ok(())) => {
                check_reply_len(out.len() - reserve, limit)?;
                return Ok(match reserve {
                    0 => Message::Encoded(out.into()),
                    _ => Message::Reserved(out, reserve),
                });
            }
            Ok(Err(Declined)) => {}
            Err(Exceeded) => return Err(budget::reply_too_large(limit)),
        }
    }
    let decoded = decode_request(&method.desc.input(), request.clone())?;
    let scope = Scope {
        request: Some(&decoded),
        ..*scope
    };
    render_reply(template, &scope, limit).map(Message::Decoded)
}

/// Client streaming: read every message (keeping only the first, the last and the count), then answer.
async fn client_stream(
    method: Arc<Method>,
    metadata: MetadataMap,
    requests: Requests,
    limit: usize,
    reserve: usize,
    told: Option<&Arc<dyn Watch>>,
) -> Result<Reply, Status> {
    let mut incoming = decoded(&method, requests, told);
    let watch = told.map(|w| &**w);
    let (mut first, mut last, mut count) = (None, None, 0u64);
    while let Some(message) = incoming.next().await.transpose()? {
        count += 1;
        if first.is_none() {
            first = Some(message);
        } else {
            last = Some(message);
        }
    }
    let last = last.as_ref().or(first.as_ref());
    let scope = Scope {
        first: first.as_ref(),
        count: Some(count),
        ..Scope::new(last, &metadata)
    };
    let rules = rules_of(&method)?;
    let Some(index) = rules.rules.iter().position(|r| r.matches(&scope)) else {
        unmatched(&method, watch);
        return Err(Status::unimplemented(rules.no_match_message(&method.name)));
    };
    answered_by(&method, watch, index);
    let rule = &rules.rules[index];
    if let Some(delay) = rule.delay {
        tokio::time::sleep(delay).await;
    }
    single_answer(&method, rule, None, None, &scope, limit, reserve)
}

/// Bidi streaming: each incoming message is matched and answered at once. The first message's rule
/// gives the response headers, so the headers wait for it.
async fn bidi(
    method: Arc<Method>,
    metadata: MetadataMap,
    requests: Requests,
    limit: usize,
    watch: Option<Arc<dyn Watch>>,
) -> Result<Reply, Status> {
    let mut incoming = requests.incoming(watch.as_ref());
    let Some(first) = incoming.next().await.transpose()? else {
        // No messages: no headers, no replies.
        return Ok(Reply::Stream(Streamed {
            headers: MetadataMap::new(),
            events: Box::pin(futures::stream::iter([Event::End(Box::new(End::ok(
                MetadataMap::new(),
            )))])),
        }));
    };
    let mut first = Input::new(&method, first)?;
    let index = select_untold(&method, &mut first, Some(1), &metadata, watch.as_deref())?;
    let (rule, _) = chosen(&method, index, &first)?;
    let headers = headers_of(
        rule,
        &Scope {
            count: Some(1),
            ..first.scope(&metadata)
        },
    )?;
    // The usual echo-like bidi: one rule, one reply each, nothing to wait for or gather.
    if method.direct.is_some()
        && rule.delay.is_none()
        && rule.trailers.is_empty()
        && matches!(rule.answer, Answer::Reply(_))
    {
        let echo = matches!(
            method.direct.as_ref().and_then(|d| d.reply(index)),
            Some(DirectReply::One(e)) if e.is_echo()
        );
        let replies = BidiReplies {
            echo,
            method,
            metadata,
            incoming,
            next: Some(first),
            count: 0,
            done: false,
            limit,
            watch,
        };
        return Ok(Reply::Stream(Streamed {
            headers,
            events: Box::pin(replies),
        }));
    }
    let stream = async_stream::try_stream! {
        let mut next = Some(first);
        let mut count = 0;
        let mut trailers = MetadataMap::new();
        while let Some(mut input) = next.take() {
            count += 1;
            let index = select(&method, &mut input, Some(count), &metadata, watch.as_deref())?;
            let (rule, compiled) = chosen(&method, index, &input)?;
            if let Some(delay) = rule.delay {
                tokio::time::sleep(delay).await;
            }
            let scope = Scope { count: Some(count), ..input.scope(&metadata) };
            extend_metadata(&mut trailers, trailers_of(rule, &scope)?);
            match &rule.answer {
                Answer::Reply(template) => {
                    let emitter = compiled.and_then(|c| c.emitter(0));
                    yield Event::Message(render(&method, template, emitter, input.canonical(), &scope, limit, 0)?);
                }
                Answer::Stream(answer) => {
                    let list = for_each_list(answer, &scope);
                    for (template, emitter, index, item) in Steps::new(answer, compiled, &list) {
                        if let Some(d) = answer.delay {
                            tokio::time::sleep(d).await;
                        }
                        let scope = Scope { index, item, ..scope };
                        yield Event::Message(render(&method, template, emitter, input.canonical(), &scope, limit, 0)?);
                    }
                    if let Some(error) = &answer.then {
                        Err(render_error(error, &scope))?;
                    }
                }
                Answer::Error(error) => Err(with_metadata(render_error(error, &scope), [std::mem::take(&mut trailers)]))?,
                Answer::Script(_) => Err(Status::internal("a bidi script must be the method's only rule"))?,
            }
            next = match incoming.next().await.transpose()? {
                Some(request) => Some(Input::new(&method, request)?),
                None => None,
            };
        }
        yield Event::End(Box::new(End::ok(trailers)));
    };
    Ok(Reply::Stream(Streamed {
        headers,
        events: events(stream),
    }))
}

/// The replies of a bidi call whose one rule replies with no delay and no trailers: each written
/// as its message is polled in, by a plain stream (a generator costs more per message than an echo
/// itself).
struct BidiReplies {
    /// The rule echoes the request: a canonical one is its own reply.
    echo: bool,
    method: Arc<Method>,
    metadata: MetadataMap,
    incoming: Incoming,
    /// A message read and not yet answered.
    next: Option<Input>,
    count: u64,
    done: bool,
    limit: usize,
    watch: Option<Arc<dyn Watch>>,
}

impl Stream for BidiReplies {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let ended = |this: &mut Self, end: End| {
            this.done = true;
            Poll::Ready(Some(Event::End(Box::new(end))))
        };
        let input = match this.next.take() {
            Some(input) => input,
            None => match std::task::ready!(this.incoming.poll_untold(cx)) {
                Some(Ok(request)) => {
                    this.incoming.tell(&request);
                    match Input::new(&this.method, request) {
                        Ok(input) => input,
                        Err(status) => return ended(this, status.into()),
                    }
                }
                Some(Err(status)) => return ended(this, status.into()),
                None => return ended(this, End::ok(MetadataMap::new())),
            },
        };
        this.count += 1;
        let reply = match input {
            Input::Canonical(request) if this.echo => {
                answered_by(&this.method, this.watch.as_deref(), 0);
                // The request itself, moved rather than shared with the one dropped here.
                check_reply_len(request.len(), this.limit).map(|()| Message::Encoded(request))
            }
            input => bidi_reply(
                &this.method,
                input,
                this.count,
                &this.metadata,
                this.limit,
                this.watch.as_deref(),
            ),
        };
        match reply {
            Ok(message) => Poll::Ready(Some(Event::Message(message))),
            Err(status) => ended(this, status.into()),
        }
    }
}

/// The answer to one message of a [`BidiReplies`] call.
fn bidi_reply(
    method: &Method,
    mut input: Input,
    count: u64,
    metadata: &MetadataMap,
    limit: usize,
    watch: Option<&dyn Watch>,
) -> Result<Message, Status> {
    let index = select(method, &mut input, Some(count), metadata, watch)?;
    let (rule, compiled) = chosen(method, index, &input)?;
    let scope = Scope {
        count: Some(count),
        ..input.scope(metadata)
    };
    // `BidiReplies` is made for a method whose rules compiled (one rule) and reply.
    let Answer::Reply(template) = &rule.answer else {
        return Err(Status::internal("a bidi rule that does not reply"));
    };
    let emitter = compiled.and_then(|c| c.emitter(0));
    render(
        method,
        template,
        emitter,
        input.canonical(),
        &scope,
        limit,
        0,
    )
}

/// The list a `for_each` stream answer walks, resolved in the call's scope.
fn for_each_list<'s>(answer: &StreamAnswer, scope: &Scope<'s>) -> Option<Cow<'s, Value>> {
    match &answer.source {
        StreamSource::ForEach(path, _) => path.resolve(scope),
        _ => None,
    }
}

/// The messages of a `stream` answer, in order: each one's template, its emitter (when the request
/// is canonical and the answer compiled), its `{{index}}` and its `for_each` item. A plain
/// iterator, so that the one generator of a stream renders each message when it is due.
struct Steps<'a> {
    answer: &'a StreamAnswer,
    compiled: Option<&'a DirectReply>,
    items: &'a [Value],
    next: usize,
}

impl<'a> Steps<'a> {
    fn new(
        answer: &'a StreamAnswer,
        compiled: Option<&'a DirectReply>,
        list: &'a Option<Cow<'_, Value>>,
    ) -> Self {
        let items = match list.as_deref() {
            Some(Value::List(items)) => items.as_slice(),
            _ => &[],
        };
        Steps {
            answer,
            compiled,
            items,
            next: 0,
        }
    }
}

type Step<'a> = (
    &'a MessageTemplate,
    Option<&'a Emitter>,
    Option<u64>,
    Option<&'a Value>,
);

impl<'a> Iterator for Steps<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        let i = self.next;
        self.next += 1;
        let emitter = |j: usize| self.compiled.and_then(|c| c.emitter(j));
        match &self.answer.source {
            StreamSource::Messages(templates) => {
                templates.get(i).map(|t| (t, emitter(i), None, None))
            }
            StreamSource::Repeat(n, t) => {
                ((i as u64) < *n).then(|| (t, emitter(0), Some(i as u64), None))
            }
            StreamSource::ForEach(_, t) => {
                let item = self.items.get(i)?;
                Some((t, None, Some(i as u64), Some(item)))
            }
        }
    }
}

/// A script's call: what it is shown, and the rule's own headers and trailers (`base`), which go
/// under the script's.
struct ScriptRun {
    script: Script,
    call: ScriptCall,
    base: ScriptMetadata,
}

impl ScriptRun {
    fn new(
        script: Script,
        method: &Method,
        request: Option<ScriptRequest>,
        metadata: MetadataMap,
        base: ScriptMetadata,
    ) -> ScriptRun {
        let call = ScriptCall {
            request,
            metadata,
            incoming: None,
            output: method.desc.output(),
            streaming_response: method.server_streaming(),
            cancel: CancellationToken::new(),
        };
        ScriptRun { script, call, base }
    }

    /// Runs the script at once on this worker when it cannot wait (a unary script that does not
    /// sleep, see `Script::try_run_inline`; its reply written straight to bytes when its request
    /// is canonical), else gives it back for [`ScriptRun::run`]: on a blocking thread, where its
    /// headers wait for its first event, its messages stream out as it sends them, and it is
    /// cancelled when the call ends early (client gone, deadline) because the reply, which holds
    /// the cancellation guard, is dropped.
    fn try_inline(self, reserve: usize) -> Result<Reply, ScriptRun> {
        let ScriptRun { script, call, base } = self;
        let output = call.output.clone();
        let call = if matches!(call.request, Some(ScriptRequest::Canonical(..))) {
            let mut out = Vec::with_capacity(reserve + 64);
            out.resize(reserve, 0);
            match script.try_run_inline_encoded(call, &mut out) {
                Inline::Ran { headers, result } => {
                    let headers = base.headers(headers);
                    return Ok(match base.finish(result, |o| &mut o.trailers) {
                        Ok(outcome) => Reply::Ready(Ready {
                            headers,
                            message: Some(match reserve {
                                0 => Message::Encoded(out.into()),
                                _ => Message::Reserved(out, reserve),
                            }),
                            end: End::ok(outcome.trailers),
                        }),
                        Err(status) => Reply::Ready(Ready {
                            headers,
                            message: None,
                            end: status.into(),
                        }),
                    });
                }
                Inline::Declined(call) => call,
            }
        } else {
            match script.try_run_inline(call) {
                Inline::Ran { headers, result } => {
                    let result = base.finish(result, |o| &mut o.trailers);
                    return Ok(unary_outcome(base.headers(headers), result, output));
                }
                Inline::Declined(call) => call,
            }
        };
        Err(ScriptRun { script, call, base })
    }

    /// The script on a blocking thread (see [`ScriptRun::try_inline`] for what runs at once).
    async fn run(self, incoming: Option<Decoded>) -> Result<Reply, Status> {
        let ScriptRun { script, call, base } = self;
        let output = call.output.clone();
        let streaming_response = call.streaming_response;
        let cancel = call.cancel.clone();
        let guard = cancel.clone().drop_guard();
        let feed_error = Arc::new(Mutex::new(None::<Status>));
        let (feeder, incoming) = match incoming {
            Some(stream) => {
                let (tx, rx) = mpsc::channel(16);
                (
                    Some(AbortOnDropHandle::new(tokio::spawn(feed(
                        stream,
                        tx,
                        feed_error.clone(),
                    )))),
                    Some(rx),
                )
            }
            None => (None, None),
        };
        let call = ScriptCall { incoming, ..call };
        let (tx, mut events_rx) = mpsc::channel(16);
        let mut run = tokio::task::spawn_blocking(move || {
            script.run(call, &mut |event| tx.blocking_send(event).is_ok())
        });

        let headers = match events_rx.recv().await {
            Some(ScriptEvent::Headers(h)) => base.headers(h),
            Some(ScriptEvent::Message(_)) => {
                return Err(Status::internal("script sent a message before its headers"))
            }
            // The script ended without a word: its result (often an error) is the whole answer.
            None => {
                let result = (&mut run).await.map_err(script_panicked)?;
                let outcome = base
                    .finish(result, |o| &mut o.trailers)
                    .map_err(|status| with_metadata(status, [base.headers.clone()]))?;
                check_feed(&feed_error)?;
                let reply = outcome.reply.unwrap_or_else(|| DynamicMessage::new(output));
                return Ok(Reply::Ready(Ready {
                    headers: base.headers,
                    message: Some(Message::Decoded(reply)),
                    end: End::ok(outcome.trailers),
                }));
            }
        };
        if !streaming_response && feeder.is_none() {
            // A unary script sends no messages: its answer is whole once it has run.
            let _guard = guard;
            let result = run.await.map_err(script_panicked);
            let result = result.and_then(|r| base.finish(r, |o| &mut o.trailers));
            return Ok(unary_outcome(headers, result, output));
        }
        let stream = async_stream::try_stream! {
            let _guard = guard;
            let _feeder = feeder;
            while let Some(event) = events_rx.recv().await {
                if let ScriptEvent::Message(m) = event {
                    yield Event::Message(Message::Decoded(m));
                }
            }
            let outcome = base.finish(run.await.map_err(script_panicked)?, |o| &mut o.trailers)?;
            check_feed(&feed_error)?;
            match outcome.reply {
                Some(reply) => yield Event::Message(Message::Decoded(reply)),
                None if !streaming_response => yield Event::Message(Message::Decoded(DynamicMessage::new(output))),
                None => {}
            }
            yield Event::End(Box::new(End::ok(outcome.trailers)));
        };
        Ok(Reply::Stream(Streamed {
            headers,
            events: events(stream),
        }))
    }
}

/// A unary script's whole answer once it has run: its reply (an empty `output` for `()`) then
/// trailers, or its error after the headers.
fn unary_outcome(
    headers: MetadataMap,
    result: Result<ScriptOutcome, Status>,
    output: MessageDescriptor,
) -> Reply {
    match result {
        Ok(outcome) => Reply::Ready(Ready {
            headers,
            message: Some(Message::Decoded(
                outcome.reply.unwrap_or_else(|| DynamicMessage::new(output)),
            )),
            end: End::ok(outcome.trailers),
        }),
        Err(status) => Reply::Ready(Ready {
            headers,
            message: None,
            end: status.into(),
        }),
    }
}

/// The client's messages decoded, each told to `watch` as read: what scripts and client streams
/// read.
fn decoded(method: &Method, requests: Requests, watch: Option<&Arc<dyn Watch>>) -> Decoded {
    let input = method.desc.input();
    let decode = move |request: Request| match request {
        Request::Encoded(bytes) => decode_request(&input, bytes),
        Request::Decoded(message) => Ok(message),
    };
    match requests {
        Requests::One(request) => Box::pin(futures::stream::iter([decode(request)])),
        stream => Box::pin(stream.incoming(watch).map(move |r| r.and_then(&decode))),
    }
}

/// A generator's messages and end as events: an error ends the stream as its [`End`].
fn events(stream: impl Stream<Item = Result<Event, Status>> + Send + 'static) -> Events {
    Box::pin(stream.map(|item| item.unwrap_or_else(|status| Event::End(Box::new(status.into())))))
}

/// Passes the client's messages to a script; a broken client stream is kept to end the call with.
async fn feed(
    mut stream: Decoded,
    tx: mpsc::Sender<DynamicMessage>,
    error: Arc<Mutex<Option<Status>>>,
) {
    loop {
        match stream.next().await.transpose() {
            Ok(Some(m)) => {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                *error.lock().unwrap() = Some(status);
                return;
            }
        }
    }
}

fn check_feed(error: &Mutex<Option<Status>>) -> Result<(), Status> {
    match error.lock().unwrap().take() {
        Some(status) => Err(status),
        None => Ok(()),
    }
}

fn script_panicked(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("script task failed: {e}"))
}

/// A reply rendered within `--max-message-size`, stopped as soon as it cannot fit (see
/// `crate::budget`).
fn render_reply(
    template: &MessageTemplate,
    scope: &Scope<'_>,
    limit: usize,
) -> Result<DynamicMessage, Status> {
    budget::within(limit, || template.render(scope))
        .map_err(|_| budget::reply_too_large(limit))?
        .map_err(reply_error)
}

/// A rule's headers and trailers, and an error's status, are built within
/// [`budget::max_metadata_size`]: a value copied from a large request field is refused, not sent.
fn headers_of(rule: &Rule, scope: &Scope<'_>) -> Result<MetadataMap, Status> {
    budget::bounded_metadata("headers", || rule.headers(scope))
}

fn trailers_of(rule: &Rule, scope: &Scope<'_>) -> Result<MetadataMap, Status> {
    budget::bounded_metadata("trailers", || rule.trailers(scope))
}

fn render_error(error: &ErrorTemplate, scope: &Scope<'_>) -> Status {
    budget::within(budget::max_metadata_size(), || error.render(scope))
        .unwrap_or_else(|_| budget::metadata_too_large("error message"))
}

fn reply_error(e: String) -> Status {
    Status::internal(format!("cannot build the reply: {e}"))
}

/// An error status also carries the rule's headers and trailers (it is sent as trailers only).
fn with_metadata<const N: usize>(mut status: Status, maps: [MetadataMap; N]) -> Status {
    for map in maps {
        extend_metadata(status.metadata_mut(), map);
    }
    status
}

fn extend_metadata(dst: &mut MetadataMap, src: MetadataMap) {
    for entry in src.iter() {
        match entry {
            KeyAndValueRef::Ascii(k, v) => {
                dst.append(k.clone(), v.clone());
            }
            KeyAndValueRef::Binary(k, v) => {
                dst.append_bin(k.clone(), v.clone());
            }
        }
    }
}
