//! Answers one call from its method's rules: one function per RPC shape.
//!
//! Responses are streams produced as they go: a server stream renders each message when it is due, a
//! bidi stream answers each incoming message as it arrives, and nothing is collected first.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::{Response, Status};

use crate::handlers::budget;
use crate::handlers::rule::{
    ok_with_trailers, ErrorTemplate, ScriptMetadata, StreamAnswer, StreamSource,
};
use crate::handlers::script::{
    Inline, Script, ScriptCall, ScriptEvent, ScriptOutcome, ScriptRequest,
};
use crate::handlers::template::{MessageTemplate, Scope};
use crate::handlers::{Answer, MethodRules, Rule};
use crate::registry::{Method, State};

/// The messages of a reply, then its end: `Err` with a status (an OK one when it carries trailers).
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<DynamicMessage, Status>> + Send>>;

/// The client's messages, whatever the protocol they came in (gRPC, gRPC-Web, Connect, HTTP/JSON).
pub type Incoming = Pin<Box<dyn Stream<Item = Result<DynamicMessage, Status>> + Send>>;

/// Answers a call of `method`, whatever its shape.
pub async fn respond(
    state: Arc<State>,
    method: Arc<Method>,
    metadata: MetadataMap,
    incoming: Incoming,
    limit: usize,
) -> Result<Response<ReplyStream>, Status> {
    if method.rules.is_none() {
        return Err(Status::unimplemented(state.no_handler_message(&method)));
    }
    drop(state);
    // A client or bidi stream answered by a script is the script's whole: it reads every message.
    if method.desc.is_client_streaming() {
        if let Some((rule, script)) = rules(&method).stream_script() {
            let script = script.clone();
            let base = ScriptMetadata::render(rule, &Scope::new(None, &metadata))?;
            return run_script(script, &method, None, metadata, Some(incoming), base).await;
        }
    }
    match (
        method.desc.is_client_streaming(),
        method.desc.is_server_streaming(),
    ) {
        (false, _) => single_request(method, metadata, incoming, limit).await,
        (true, false) => client_stream(method, metadata, incoming, limit).await,
        (true, true) => bidi_stream(method, metadata, incoming, limit).await,
    }
}

fn rules(method: &Method) -> &MethodRules {
    method.rules.as_ref().expect("checked in respond()")
}

fn select<'r>(method: &'r Method, scope: &Scope<'_>) -> Result<&'r Rule, Status> {
    let rules = rules(method);
    rules
        .select(scope)
        .ok_or_else(|| Status::unimplemented(rules.no_match_message(&method.name)))
}

/// Unary and server streaming: one request, then the rule it selects.
async fn single_request(
    method: Arc<Method>,
    metadata: MetadataMap,
    mut incoming: Incoming,
    limit: usize,
) -> Result<Response<ReplyStream>, Status> {
    let request = next_message(&mut incoming)
        .await?
        .ok_or_else(|| Status::internal("missing request message"))?;
    if next_message(&mut incoming).await?.is_some() {
        return Err(crate::service::multiple_requests());
    }
    let scope = Scope::new(Some(&request), &metadata);
    let rule = select(&method, &scope)?;
    if let Some(delay) = rule.delay {
        tokio::time::sleep(delay).await;
    }
    match &rule.answer {
        Answer::Script(script) => {
            let script = script.clone();
            let base = ScriptMetadata::render(rule, &scope)?;
            run_script(script, &method, Some(request), metadata, None, base).await
        }
        Answer::Stream(_) => {
            let headers = headers_of(rule, &scope)?;
            let trailers = trailers_of(rule, &scope)?;
            let rule_index = rules(&method)
                .rules
                .iter()
                .position(|r| std::ptr::eq(r, rule))
                .expect("rule of this method");
            // The stream owns the request and the method; it finds its rule again by index.
            let stream = async_stream::try_stream! {
                let scope = Scope::new(Some(&request), &metadata);
                let Answer::Stream(answer) = &rules(&method).rules[rule_index].answer else { unreachable!() };
                let mut messages = std::pin::pin!(render_stream(answer, scope, limit));
                while let Some(message) = messages.next().await {
                    yield message?;
                }
                end_with_trailers(trailers)?;
            };
            Ok(with_headers(headers, Box::pin(stream)))
        }
        Answer::Reply(_) | Answer::Error(_) => single_answer(rule, &scope, limit),
    }
}

/// A rule's one reply, or its error, with the rule's headers and trailers.
fn single_answer(
    rule: &Rule,
    scope: &Scope<'_>,
    limit: usize,
) -> Result<Response<ReplyStream>, Status> {
    let headers = headers_of(rule, scope)?;
    let trailers = trailers_of(rule, scope)?;
    match &rule.answer {
        Answer::Reply(template) => {
            let reply = render_reply(template, scope, limit)?;
            Ok(with_headers(
                headers,
                Box::pin(once_then_trailers(reply, trailers)),
            ))
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

/// Client streaming: read every message (keeping only the first, the last and the count), then answer.
async fn client_stream(
    method: Arc<Method>,
    metadata: MetadataMap,
    mut incoming: Incoming,
    limit: usize,
) -> Result<Response<ReplyStream>, Status> {
    let (mut first, mut last, mut count) = (None, None, 0u64);
    while let Some(message) = next_message(&mut incoming).await? {
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
    let rule = select(&method, &scope)?;
    if let Some(delay) = rule.delay {
        tokio::time::sleep(delay).await;
    }
    single_answer(rule, &scope, limit)
}

/// Bidi streaming: each incoming message is matched and answered at once. The first message's rule
/// gives the response headers, so the headers wait for it.
async fn bidi_stream(
    method: Arc<Method>,
    metadata: MetadataMap,
    mut incoming: Incoming,
    limit: usize,
) -> Result<Response<ReplyStream>, Status> {
    let Some(first) = next_message(&mut incoming).await? else {
        return Ok(Response::new(Box::pin(futures::stream::empty())));
    };
    let headers = {
        let scope = Scope {
            count: Some(1),
            ..Scope::new(Some(&first), &metadata)
        };
        headers_of(select(&method, &scope)?, &scope)?
    };
    let stream = async_stream::try_stream! {
        let mut next = Some(first);
        let mut count = 0;
        let mut trailers = MetadataMap::new();
        while let Some(message) = next.take() {
            count += 1;
            let scope = Scope { count: Some(count), ..Scope::new(Some(&message), &metadata) };
            let rule = select(&method, &scope)?;
            if let Some(delay) = rule.delay {
                tokio::time::sleep(delay).await;
            }
            extend_metadata(&mut trailers, trailers_of(rule, &scope)?);
            match &rule.answer {
                Answer::Reply(template) => yield render_reply(template, &scope, limit)?,
                Answer::Stream(answer) => {
                    let mut messages = std::pin::pin!(render_stream(answer, scope, limit));
                    while let Some(m) = messages.next().await {
                        yield m?;
                    }
                }
                Answer::Error(error) => Err(with_metadata(render_error(error, &scope), [std::mem::take(&mut trailers)]))?,
                Answer::Script(_) => Err(Status::internal("a bidi script must be the method's only rule"))?,
            }
            next = next_message(&mut incoming).await?;
        }
        end_with_trailers(trailers)?;
    };
    Ok(with_headers(headers, Box::pin(stream)))
}

/// The messages of a `stream` answer, each rendered when it is due.
fn render_stream<'a>(
    answer: &'a StreamAnswer,
    scope: Scope<'a>,
    limit: usize,
) -> impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'a {
    async_stream::try_stream! {
        let pause = || async {
            if let Some(d) = answer.delay {
                tokio::time::sleep(d).await;
            }
        };
        match &answer.source {
            StreamSource::Messages(templates) => {
                for template in templates {
                    pause().await;
                    yield render_reply(template, &scope, limit)?;
                }
            }
            StreamSource::Repeat(n, template) => {
                for i in 0..*n {
                    pause().await;
                    yield render_reply(template, &Scope { index: Some(i), ..scope }, limit)?;
                }
            }
            StreamSource::ForEach(path, template) => {
                let list = path.resolve(&scope);
                if let Some(Value::List(items)) = list.as_deref() {
                    for (i, item) in items.iter().enumerate() {
                        pause().await;
                        yield render_reply(template, &Scope { item: Some(item), index: Some(i as u64), ..scope }, limit)?;
                    }
                }
            }
        }
        if let Some(error) = &answer.then {
            Err(render_error(error, &scope))?;
        }
    }
}

/// Runs a script: at once on this worker when it cannot wait (a unary script that does not sleep,
/// see `Script::try_run_inline`), else on a blocking thread. There its headers wait for its first
/// event; its messages stream out as it sends them; it is cancelled when the call ends early (client
/// gone, deadline) because the response, which holds the cancellation guard, is dropped. The rule's
/// own headers and trailers (`base`) go under the script's.
async fn run_script(
    script: Script,
    method: &Method,
    request: Option<DynamicMessage>,
    metadata: MetadataMap,
    incoming: Option<Incoming>,
    base: ScriptMetadata,
) -> Result<Response<ReplyStream>, Status> {
    let streaming_response = method.desc.is_server_streaming();
    let call = ScriptCall {
        request: request.map(|m| ScriptRequest::Decoded(Arc::new(m))),
        metadata,
        incoming: None,
        output: method.desc.output(),
        streaming_response,
        cancel: CancellationToken::new(),
    };
    let call = match incoming {
        Some(_) => call,
        None => match script.try_run_inline(call) {
            Inline::Ran { headers, result } => {
                let result = base.finish(result, |o| &mut o.trailers);
                let stream = unary_outcome(result, method.desc.output());
                return Ok(with_headers(base.headers(headers), Box::pin(stream)));
            }
            Inline::Declined(call) => call,
        },
    };
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
    let (tx, mut events) = mpsc::channel(16);
    let mut run = tokio::task::spawn_blocking(move || {
        script.run(call, &mut |event| tx.blocking_send(event).is_ok())
    });

    let headers = match events.recv().await {
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
            let reply = outcome
                .reply
                .unwrap_or_else(|| DynamicMessage::new(method.desc.output()));
            let stream = once_then_trailers(reply, outcome.trailers);
            return Ok(with_headers(base.headers, Box::pin(stream)));
        }
    };
    let unary_response = !streaming_response;
    let output = method.desc.output();
    let stream = async_stream::try_stream! {
        let _guard = guard;
        let _feeder = feeder;
        while let Some(event) = events.recv().await {
            if let ScriptEvent::Message(m) = event {
                yield m;
            }
        }
        let outcome = base.finish(run.await.map_err(script_panicked)?, |o| &mut o.trailers)?;
        check_feed(&feed_error)?;
        match outcome.reply {
            Some(reply) => yield reply,
            None if unary_response => yield DynamicMessage::new(output),
            None => {}
        }
        end_with_trailers(outcome.trailers)?;
    };
    Ok(with_headers(headers, Box::pin(stream)))
}

/// Passes the client's messages to a script; a broken client stream is kept to end the call with.
async fn feed(
    mut stream: Incoming,
    tx: mpsc::Sender<DynamicMessage>,
    error: Arc<Mutex<Option<Status>>>,
) {
    loop {
        match next_message(&mut stream).await {
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

async fn next_message(incoming: &mut Incoming) -> Result<Option<DynamicMessage>, Status> {
    incoming.next().await.transpose()
}

pub(crate) fn script_panicked(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("script task failed: {e}"))
}

/// A reply rendered within `--max-message-size`, stopped as soon as it cannot fit (see
/// `handlers::budget`).
pub(crate) fn render_reply(
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

pub(crate) fn render_error(error: &ErrorTemplate, scope: &Scope<'_>) -> Status {
    budget::within(budget::max_metadata_size(), || error.render(scope))
        .unwrap_or_else(|_| budget::metadata_too_large("error message"))
}

pub(crate) fn reply_error(e: String) -> Status {
    Status::internal(format!("cannot build the reply: {e}"))
}

pub(crate) fn with_headers<S>(headers: MetadataMap, stream: S) -> Response<S> {
    let mut response = Response::new(stream);
    *response.metadata_mut() = headers;
    response
}

/// One message, then trailers (tonic sends custom trailers only from a status, so an OK one).
fn once_then_trailers(
    reply: DynamicMessage,
    trailers: MetadataMap,
) -> impl Stream<Item = Result<DynamicMessage, Status>> + Send {
    let end = (!trailers.is_empty()).then(|| Err(ok_with_trailers(trailers)));
    futures::stream::iter(std::iter::once(Ok(reply)).chain(end))
}

/// A unary script's whole answer once it has run: its reply (an empty `output` for `()`) then
/// trailers, or its error.
fn unary_outcome(
    result: Result<ScriptOutcome, Status>,
    output: MessageDescriptor,
) -> impl Stream<Item = Result<DynamicMessage, Status>> + Send {
    let (first, end) = match result {
        Ok(outcome) => (
            Ok(outcome.reply.unwrap_or_else(|| DynamicMessage::new(output))),
            end_with_trailers(outcome.trailers).err().map(Err),
        ),
        Err(status) => (Err(status), None),
    };
    futures::stream::iter(std::iter::once(first).chain(end))
}

pub(crate) fn end_with_trailers(trailers: MetadataMap) -> Result<(), Status> {
    if trailers.is_empty() {
        Ok(())
    } else {
        Err(ok_with_trailers(trailers))
    }
}

/// An error status also carries the rule's headers and trailers (it is sent as trailers only).
fn with_metadata<const N: usize>(mut status: Status, maps: [MetadataMap; N]) -> Status {
    for map in maps {
        extend_metadata(status.metadata_mut(), map);
    }
    status
}

pub(crate) fn extend_metadata(dst: &mut MetadataMap, src: MetadataMap) {
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
