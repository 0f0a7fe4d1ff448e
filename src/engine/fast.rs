//! Calls of methods whose rule compiled to emitters ([`crate::engine::emit`]): the reply is
//! written from the request's bytes, never decoded (a unary script is shown those bytes lazily). A
//! request that is not canonical, or a reply an emitter declines, goes the general way
//! ([`crate::engine::general`]) with the same outcome.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost_reflect::DynamicMessage;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status, Streaming};

use crate::codec::encode::Measured;
use crate::codec::{decode_request, encode_reply};
use crate::engine::emit::{Choice, Declined, Direct, DirectReply, Emitter, RawScope};
use crate::engine::general::{
    end_with_trailers, extend_metadata, render_error, render_reply, script_panicked, with_headers,
};
use crate::front::wire::check_reply_len;
use crate::handlers::budget::{self, Exceeded};
use crate::handlers::rule::{ScriptMetadata, StreamSource};
use crate::handlers::script::{Inline, Script, ScriptCall, ScriptEvent, ScriptRequest};
use crate::handlers::template::{MessageTemplate, Scope};
use crate::handlers::Answer;
use crate::registry::Method;
use crate::service::EncodedStream;

/// A unary reply: headers, the encoded message, trailers.
pub(crate) struct UnaryReply {
    pub headers: MetadataMap,
    pub message: Vec<u8>,
    pub trailers: MetadataMap,
}

/// How a unary call went here.
pub(crate) enum Unary {
    Reply(UnaryReply),
    /// The call ends with this status, after these headers.
    Failed(MetadataMap, Status),
    /// The call ends with this status alone (trailers-only).
    Status(Status),
    /// The general path must answer: the call, given back.
    General(Bytes, MetadataMap),
}

/// The direct answer to a unary call, with `reserve` bytes left free at the start of the message
/// (for the frame prefix).
pub(crate) async fn unary(
    direct: &Direct,
    request: Bytes,
    metadata: MetadataMap,
    reserve: usize,
    limit: usize,
) -> Unary {
    if !direct.is_canonical(&request) {
        return Unary::General(request, metadata);
    }
    let raw = raw_scope(&request, None, &metadata);
    let Some(choice) = direct.select(&raw) else {
        return Unary::General(request, metadata);
    };
    // Replies that copy from the request are about its size.
    let mut message = Vec::with_capacity(reserve + request.len() + 32);
    message.resize(reserve, 0);
    let rule = &choice.rule;
    let script = match &choice.reply {
        Some(DirectReply::One(emitter)) => {
            match budget::within(limit, || emitter.emit(&raw, &mut message)) {
                Ok(Ok(())) => {}
                Ok(Err(Declined)) => return Unary::General(request, metadata),
                Err(Exceeded) => return Unary::Status(budget::reply_too_large(limit)),
            }
            None
        }
        Some(DirectReply::Script) => {
            let Answer::Script(script) = &rule.answer else {
                unreachable!("compiled from a script")
            };
            Some(script)
        }
        _ => return Unary::General(request, metadata),
    };
    if let Some(delay) = rule.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(script) = script {
        let base = match ScriptMetadata::render(rule, &Scope::new(None, &metadata)) {
            Ok(base) => base,
            Err(status) => return Unary::Status(status),
        };
        return script_reply(script, direct, request, metadata, message, base).await;
    }
    let scope = Scope::new(None, &metadata);
    let rendered =
        budget::bounded_metadata("headers", || rule.headers(&scope)).and_then(|headers| {
            Ok((
                headers,
                budget::bounded_metadata("trailers", || rule.trailers(&scope))?,
            ))
        });
    match rendered {
        Ok((headers, trailers)) => Unary::Reply(UnaryReply {
            headers,
            message,
            trailers,
        }),
        Err(status) => Unary::Status(status),
    }
}

/// A unary script's answer, its reply written after what `message` holds: inline when it may run
/// there (its request shown lazily from the canonical bytes, its reply written from its values),
/// else on a blocking thread. The rule's own headers and trailers (`base`) go under the script's.
async fn script_reply(
    script: &Script,
    direct: &Direct,
    request: Bytes,
    metadata: MetadataMap,
    mut message: Vec<u8>,
    base: ScriptMetadata,
) -> Unary {
    let call = ScriptCall {
        request: Some(ScriptRequest::Canonical(direct.input().clone(), request)),
        metadata,
        incoming: None,
        output: direct.output().clone(),
        streaming_response: false,
        cancel: CancellationToken::new(),
    };
    let (headers, result) = match script.try_run_inline_encoded(call, &mut message) {
        Inline::Ran { headers, result } => (headers, result.map(|o| o.trailers)),
        Inline::Declined(call) => {
            // Stops the script if this call is dropped (client gone, deadline).
            let _cancel = call.cancel.clone().drop_guard();
            let script = script.clone();
            let ran = tokio::task::spawn_blocking(move || {
                let mut headers = MetadataMap::new();
                let result = script.run(call, &mut |event| {
                    if let ScriptEvent::Headers(h) = event {
                        headers = h;
                    }
                    true
                });
                (headers, result)
            })
            .await;
            match ran {
                Ok((headers, result)) => (
                    headers,
                    result.map(|outcome| {
                        if let Some(reply) = outcome.reply {
                            Measured::new(&reply).write(&mut message);
                        }
                        outcome.trailers
                    }),
                ),
                Err(e) => (MetadataMap::new(), Err(script_panicked(e))),
            }
        }
    };
    let headers = base.headers(headers);
    match base.finish(result, |trailers| trailers) {
        Ok(trailers) => Unary::Reply(UnaryReply {
            headers,
            message,
            trailers,
        }),
        Err(status) => Unary::Failed(headers, status),
    }
}

fn raw_scope<'a>(request: &'a [u8], count: Option<u64>, metadata: &'a MetadataMap) -> RawScope<'a> {
    RawScope {
        request,
        index: None,
        count,
        metadata,
    }
}

/// How a streaming call went here.
pub(crate) enum Streamed {
    Answered(Result<Response<EncodedStream>, Status>),
    /// The first message (if any) shows the general path must answer: the call, as read so far.
    General {
        first: Option<Bytes>,
        rest: Box<Streaming<Bytes>>,
        metadata: MetadataMap,
    },
}

/// A server-streaming or bidi call of a method with a direct form.
pub(crate) async fn streaming(
    method: Arc<Method>,
    metadata: MetadataMap,
    mut rest: Streaming<Bytes>,
    limit: usize,
) -> Streamed {
    let direct = method.direct.as_ref().expect("called for a direct method");
    let first = match next(&mut rest).await {
        Ok(Some(first)) => first,
        Ok(None) if method.desc.is_client_streaming() => {
            // A bidi call without messages: no headers, no replies (as the general path).
            return Streamed::Answered(Ok(Response::new(Box::pin(futures::stream::empty()))));
        }
        Ok(None) => {
            return Streamed::General {
                first: None,
                rest: Box::new(rest),
                metadata,
            }
        }
        Err(status) => return Streamed::Answered(Err(status)),
    };
    if !method.desc.is_client_streaming() {
        // A server stream answers one message: the request must end after it.
        match next(&mut rest).await {
            Ok(None) => {}
            Ok(Some(_)) => return Streamed::Answered(Err(crate::service::multiple_requests())),
            Err(status) => return Streamed::Answered(Err(status)),
        }
    }
    if !direct.is_canonical(&first) {
        return Streamed::General {
            first: Some(first),
            rest: Box::new(rest),
            metadata,
        };
    }
    Streamed::Answered(if method.desc.is_client_streaming() {
        bidi(method, metadata, first, rest, limit)
    } else {
        server_stream(method, metadata, first, limit).await
    })
}

/// One (canonical) request, then the rule's messages, each written when it is due.
async fn server_stream(
    method: Arc<Method>,
    metadata: MetadataMap,
    request: Bytes,
    limit: usize,
) -> Result<Response<EncodedStream>, Status> {
    let choice = only(&method);
    if let Some(delay) = choice.rule.delay {
        tokio::time::sleep(delay).await;
    }
    let scope = Scope::new(None, &metadata);
    let headers = budget::bounded_metadata("headers", || choice.rule.headers(&scope))?;
    let trailers = budget::bounded_metadata("trailers", || choice.rule.trailers(&scope))?;
    let stream = async_stream::try_stream! {
        let choice = only(&method);
        let reply = choice.reply.as_ref().expect("a streaming method's one rule has a direct reply");
        let Answer::Stream(answer) = &choice.rule.answer else {
            // `reply` on a server-streaming method: one message.
            let (DirectReply::One(emitter), Answer::Reply(template)) = (reply, &choice.rule.answer) else {
                unreachable!("compiled from a reply")
            };
            yield message(emitter, template, &method, &request, true, None, None, &metadata, limit)?;
            end_with_trailers(trailers)?;
            return;
        };
        let emitters: Box<dyn Iterator<Item = (&Emitter, Option<u64>)> + Send> = match reply {
            DirectReply::Messages(list) => Box::new(list.iter().map(|e| (e, None))),
            DirectReply::Repeat(n, emitter) => Box::new((0..*n).map(move |i| (emitter, Some(i)))),
            DirectReply::One(_) | DirectReply::Script => unreachable!("a stream answer compiles to messages"),
        };
        for (i, (emitter, index)) in emitters.enumerate() {
            if let Some(d) = answer.delay {
                tokio::time::sleep(d).await;
            }
            let template = match &answer.source {
                StreamSource::Messages(list) => &list[i],
                StreamSource::Repeat(_, t) | StreamSource::ForEach(_, t) => t,
            };
            yield message(emitter, template, &method, &request, true, index, None, &metadata, limit)?;
        }
        if let Some(error) = &answer.then {
            Err(render_error(error, &Scope::new(None, &metadata)))?;
        }
        end_with_trailers(trailers)?;
    };
    Ok(with_headers(headers, Box::pin(stream)))
}

/// Each incoming message answered at once; the headers wait for the first (as the general path).
fn bidi(
    method: Arc<Method>,
    metadata: MetadataMap,
    first: Bytes,
    incoming: Streaming<Bytes>,
    limit: usize,
) -> Result<Response<EncodedStream>, Status> {
    let rule = &only(&method).rule;
    let headers =
        budget::bounded_metadata("headers", || rule.headers(&Scope::new(None, &metadata)))?;
    if rule.delay.is_none() && rule.trailers.is_empty() {
        let replies = BidiReplies {
            method,
            metadata,
            incoming,
            next: Some(first),
            count: 0,
            done: false,
            limit,
        };
        return Ok(with_headers(headers, Box::pin(replies)));
    }
    let stream = async_stream::try_stream! {
        let choice = only(&method);
        let mut trailers = MetadataMap::new();
        let mut incoming = incoming;
        let mut next_message = Some(first);
        let mut count = 0;
        while let Some(request) = next_message.take() {
            count += 1;
            if let Some(delay) = choice.rule.delay {
                tokio::time::sleep(delay).await;
            }
            if !choice.rule.trailers.is_empty() {
                extend_metadata(&mut trailers, budget::bounded_metadata("trailers", || choice.rule.trailers(&Scope::new(None, &metadata)))?);
            }
            yield bidi_reply(&method, request, count, &metadata, limit)?;
            next_message = next(&mut incoming).await?;
        }
        end_with_trailers(trailers)?;
    };
    Ok(with_headers(headers, Box::pin(stream)))
}

/// The replies of a bidi call whose rule has no delay and no trailers: each one written as its
/// message is polled in, by a plain stream (the generator above costs more per message than the
/// echo itself).
struct BidiReplies {
    method: Arc<Method>,
    metadata: MetadataMap,
    incoming: Streaming<Bytes>,
    /// A message read and not yet answered.
    next: Option<Bytes>,
    count: u64,
    done: bool,
    limit: usize,
}

impl futures::Stream for BidiReplies {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The request is answered from a local, not stored in `next` and read back: the per-message
        // path is short enough that the round trip through `self` showed in profiles.
        let request = match this.next.take() {
            Some(request) => request,
            None if this.done => return Poll::Ready(None),
            None => match std::task::ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
                Some(Ok(request)) => request,
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(crate::service::size_status(status))));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            },
        };
        this.count += 1;
        let reply = bidi_reply(
            &this.method,
            request,
            this.count,
            &this.metadata,
            this.limit,
        );
        this.done = reply.is_err();
        Poll::Ready(Some(reply))
    }
}

/// The answer to one message of a bidi call.
fn bidi_reply(
    method: &Method,
    request: Bytes,
    count: u64,
    metadata: &MetadataMap,
    limit: usize,
) -> Result<Bytes, Status> {
    let (direct, choice) = (method.direct.as_ref().expect("direct method"), only(method));
    let (Some(DirectReply::One(emitter)), Answer::Reply(template)) =
        (&choice.reply, &choice.rule.answer)
    else {
        unreachable!("a bidi method compiles from a reply")
    };
    let canonical = direct.is_canonical(&request);
    if canonical && emitter.is_echo() {
        // The request itself, moved rather than shared with the one dropped here.
        return echoed(request, limit);
    }
    message(
        emitter,
        template,
        method,
        &request,
        canonical,
        None,
        Some(count),
        metadata,
        limit,
    )
}

/// One reply: emitted from the request's bytes, or — when the request is not canonical or the
/// emitter declines — decoded and rendered by the template, as the general path does.
#[allow(clippy::too_many_arguments)]
fn message(
    emitter: &Emitter,
    template: &MessageTemplate,
    method: &Method,
    request: &Bytes,
    canonical: bool,
    index: Option<u64>,
    count: Option<u64>,
    metadata: &MetadataMap,
    limit: usize,
) -> Result<Bytes, Status> {
    if canonical && emitter.is_echo() {
        return echoed(request.clone(), limit);
    }
    if canonical {
        let mut out = Vec::new();
        let scope = RawScope {
            index,
            ..raw_scope(request, count, metadata)
        };
        // Declined: the general path below answers, or reports why it cannot.
        match budget::within(limit, || emitter.emit(&scope, &mut out)) {
            Ok(Ok(())) => {
                check_reply_len(out.len(), limit)?;
                return Ok(out.into());
            }
            Ok(Err(Declined)) => {}
            Err(Exceeded) => return Err(budget::reply_too_large(limit)),
        }
    }
    let decoded: DynamicMessage = decode_request(&method.desc.input(), request.clone())?;
    let scope = Scope {
        index,
        count,
        ..Scope::new(Some(&decoded), metadata)
    };
    let reply = render_reply(template, &scope, limit)?;
    encode_reply(&reply, limit)
}

/// A canonical request as its own reply: the general path would re-encode it to the same bytes.
fn echoed(request: Bytes, limit: usize) -> Result<Bytes, Status> {
    check_reply_len(request.len(), limit)?;
    Ok(request)
}

/// The one rule of a streaming method with a direct form.
fn only(method: &Method) -> &Choice {
    method.direct.as_ref().expect("direct method").only()
}

/// The next message's bytes; over-size is RESOURCE_EXHAUSTED (see `crate::service::incoming`).
pub(crate) async fn next(streaming: &mut Streaming<Bytes>) -> Result<Option<Bytes>, Status> {
    streaming
        .message()
        .await
        .map_err(crate::service::size_status)
}
