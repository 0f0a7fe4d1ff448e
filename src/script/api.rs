//! The functions a script calls — `next`, `send`, `header`, `trailer`, `fail`, `sleep` — registered
//! once on the shared engine, each acting on the current call's state ([`super::call`]); and the
//! conversions between gRPC metadata and what scripts see.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost_reflect::ReflectMessage;
use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, FLOAT, INT};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue, KeyAndValueRef,
    MetadataMap,
};
use tonic::Code;

use super::call::{
    api_error, stop, with_call, ApiError, CallState, MemoryMeter, ScriptEvent, Stop,
};
use super::convert::dynamic_to_message;
use super::lazy::{plain, LazyMessage};
use crate::budget::max_metadata_size;

/// Base64 for `-bin` metadata given by scripts: padding optional, as gRPC peers send both.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) fn register_api(engine: &mut Engine) {
    engine
        .register_type_with_name::<ApiError>("ScriptError")
        .register_fn("to_string", |e: &mut ApiError| e.message.clone())
        .register_fn("to_debug", |e: &mut ApiError| format!("{:?}", e.message));

    engine.register_fn("next", || with_call(next));
    engine.register_fn("send", |message: Dynamic| {
        with_call(|state| send(state, message))
    });
    engine.register_fn("header", |key: ImmutableString, value: Dynamic| {
        with_call(|state| {
            if state.headers_sent {
                return Err(api_error(
                    Code::Unknown,
                    "header(): headers were already sent; set them before the first send()",
                ));
            }
            let value = text(&value);
            check_room(&state.headers, &key, &value, "header")?;
            add_metadata(&mut state.headers, &key, &value)
                .map_err(|e| api_error(Code::Unknown, format!("header(): {e}")))
        })
    });
    engine.register_fn("trailer", |key: ImmutableString, value: Dynamic| {
        with_call(|state| {
            let value = text(&value);
            check_room(&state.trailers, &key, &value, "trailer")?;
            add_metadata(&mut state.trailers, &key, &value)
                .map_err(|e| api_error(Code::Unknown, format!("trailer(): {e}")))
        })
    });
    engine.register_fn("fail", |code: Dynamic, message: Dynamic| {
        fail(&code, text(&message))
    });
    engine.register_fn("fail", |code: Dynamic| fail(&code, String::new()));
    engine.register_fn("sleep", |ms: INT| {
        sleep(Duration::from_millis(ms.max(0).unsigned_abs()))
    });
    engine.register_fn("sleep", |ms: FLOAT| {
        match Duration::try_from_secs_f64(ms.max(0.0) / 1000.0) {
            Ok(duration) => sleep(duration),
            Err(_) => Err(api_error(
                Code::Unknown,
                format!("sleep(): {ms} is not a number of milliseconds"),
            )),
        }
    });
}

/// A value as text, as the script would print it (lazy messages as their maps).
fn text(value: &Dynamic) -> String {
    match plain(value) {
        Ok(plain) => plain.to_string(),
        Err(_) => value.to_string(),
    }
}

fn next(state: &mut CallState) -> Result<Dynamic, Box<EvalAltResult>> {
    let Some(incoming) = state.incoming.as_mut() else {
        return Err(api_error(
            Code::Unknown,
            "next() is only available in client-streaming and bidi calls",
        ));
    };
    use tokio::sync::mpsc::error::TryRecvError;
    let message = match incoming.try_recv() {
        Ok(message) => Some(message),
        Err(TryRecvError::Disconnected) => None,
        Err(TryRecvError::Empty) => block_on(
            state.runtime.as_ref(),
            &state.cancel,
            state.deadline,
            incoming.recv(),
        )?,
    };
    match message {
        Some(message) => {
            let name = message.descriptor().full_name().to_owned();
            LazyMessage::show(Arc::new(message)).map_err(|err| {
                api_error(
                    Code::Internal,
                    format!("next(): cannot show the {name} message: {err}"),
                )
            })
        }
        None => Ok(Dynamic::UNIT),
    }
}

fn send(state: &mut CallState, message: Dynamic) -> Result<(), Box<EvalAltResult>> {
    if !state.streaming_response {
        return Err(api_error(
            Code::Unknown,
            "send() is only available in server-streaming and bidi calls",
        ));
    }
    let before = alloc_meter::net_allocated();
    let message = dynamic_to_message(&message, &state.output).map_err(|err| {
        api_error(
            Code::Internal,
            format!("send(): not a valid {}: {err}", state.output.full_name()),
        )
    })?;
    // The message leaves this thread (it is freed by the one that writes it out).
    MemoryMeter::released(alloc_meter::net_allocated() - before);
    let sink = state
        .sink
        .as_ref()
        .ok_or_else(|| api_error(Code::Internal, "send(): no event sink"))?;
    if !state.headers_sent {
        state.headers_sent = true;
        if !sink.emit(ScriptEvent::Headers(std::mem::take(&mut state.headers))) {
            return Err(stop(Stop::ClientGone));
        }
    }
    if !sink.emit(ScriptEvent::Message(message)) {
        return Err(stop(Stop::ClientGone));
    }
    Ok(())
}

fn fail(code: &Dynamic, message: String) -> Result<(), Box<EvalAltResult>> {
    let code = parse_code(code).map_err(|e| api_error(Code::Unknown, format!("fail(): {e}")))?;
    Err(stop(Stop::Fail(code, message)))
}

fn sleep(duration: Duration) -> Result<(), Box<EvalAltResult>> {
    if duration.is_zero() {
        return Ok(());
    }
    // Only the handle, token and deadline are needed while blocking; don't hold the state borrowed.
    let (runtime, cancel, deadline) = with_call(|state| {
        if state.inline {
            // An async worker must not block: rerun where it may.
            return Err(stop(Stop::NotInline));
        }
        Ok((state.runtime.clone(), state.cancel.clone(), state.deadline))
    })?;
    // Lazy: the timer must be created inside the runtime that block_on enters.
    block_on(runtime.as_ref(), &cancel, deadline, async move {
        tokio::time::sleep(duration).await
    })
}

/// Blocks this (non-async) thread on `future`, stopping the script if the call is cancelled or
/// its `--script-timeout` passes first.
fn block_on<F: Future>(
    runtime: Option<&Handle>,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
    future: F,
) -> Result<F::Output, Box<EvalAltResult>> {
    let runtime = runtime
        .ok_or_else(|| api_error(Code::Internal, "scripts must run inside a tokio runtime"))?;
    runtime.block_on(async {
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(stop(Stop::Cancelled)),
            _ = timeout => Err(stop(Stop::TimedOut)),
            output = future => Ok(output),
        }
    })
}

/// A gRPC code given to `fail()`: a name in any case (`"NOT_FOUND"`, `"not_found"`, `"NotFound"`)
/// or its number.
fn parse_code(code: &Dynamic) -> Result<Code, String> {
    const NAMES: [(&str, Code); 16] = [
        ("CANCELLED", Code::Cancelled),
        ("UNKNOWN", Code::Unknown),
        ("INVALIDARGUMENT", Code::InvalidArgument),
        ("DEADLINEEXCEEDED", Code::DeadlineExceeded),
        ("NOTFOUND", Code::NotFound),
        ("ALREADYEXISTS", Code::AlreadyExists),
        ("PERMISSIONDENIED", Code::PermissionDenied),
        ("RESOURCEEXHAUSTED", Code::ResourceExhausted),
        ("FAILEDPRECONDITION", Code::FailedPrecondition),
        ("ABORTED", Code::Aborted),
        ("OUTOFRANGE", Code::OutOfRange),
        ("UNIMPLEMENTED", Code::Unimplemented),
        ("INTERNAL", Code::Internal),
        ("UNAVAILABLE", Code::Unavailable),
        ("DATALOSS", Code::DataLoss),
        ("UNAUTHENTICATED", Code::Unauthenticated),
    ];
    if let Ok(n) = code.as_int() {
        return match i32::try_from(n) {
            Ok(n @ 1..=16) => Ok(Code::from(n)),
            _ => Err(format!("{n} is not a gRPC error code (1 to 16)")),
        };
    }
    let Some(name) = code.read_lock::<ImmutableString>() else {
        return Err(format!(
            "the code must be a name or a number, not {}",
            code.type_name()
        ));
    };
    let key: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    NAMES
        .iter()
        .find(|(n, _)| *n == key)
        .map(|(_, code)| *code)
        .ok_or_else(|| format!("unknown gRPC error code {:?}", name.as_str()))
}

/// Request metadata as a Rhai map of string to string; `-bin` values as base64, the first value of
/// a repeated key.
pub(super) fn metadata_to_map(metadata: &MetadataMap) -> rhai::Map {
    let mut map = rhai::Map::new();
    for entry in metadata.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => {
                let text = value.to_str().map_or_else(
                    |_| String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
                    str::to_owned,
                );
                (key.as_str(), text)
            }
            KeyAndValueRef::Binary(key, value) => {
                let text = match value.to_bytes() {
                    Ok(bytes) => STANDARD.encode(bytes),
                    Err(_) => String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
                };
                (key.as_str(), text)
            }
        };
        map.entry(key.into()).or_insert_with(|| value.into());
    }
    map
}

/// Adds one response header or trailer. Keys are lower-cased; `-bin` keys take base64 values.
/// A script's headers (or trailers) stay within what a template's may build
/// ([`max_metadata_size`]): RESOURCE_EXHAUSTED before one that would pass it is added.
fn check_room(
    map: &MetadataMap,
    key: &str,
    value: &str,
    what: &str,
) -> Result<(), Box<EvalAltResult>> {
    let used: usize = map
        .as_ref()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let limit = max_metadata_size();
    if used + key.len() + value.len() > limit {
        return Err(api_error(
            Code::ResourceExhausted,
            format!(
                "{what}(): the response {what}s would be larger than the limit of \
                 {limit} bytes (--max-reply-metadata-size)"
            ),
        ));
    }
    Ok(())
}

fn add_metadata(map: &mut MetadataMap, key: &str, value: &str) -> Result<(), String> {
    let key = key.to_ascii_lowercase();
    if key.ends_with("-bin") {
        let bytes = BASE64_LENIENT
            .decode(value)
            .map_err(|err| format!("the value of {key:?} is not base64: {err}"))?;
        let name = BinaryMetadataKey::from_bytes(key.as_bytes())
            .map_err(|_| format!("invalid metadata key {key:?}"))?;
        map.append_bin(name, BinaryMetadataValue::from_bytes(&bytes));
    } else {
        let name = AsciiMetadataKey::from_bytes(key.as_bytes())
            .map_err(|_| format!("invalid metadata key {key:?}"))?;
        let value = AsciiMetadataValue::try_from(value).map_err(|_| {
            format!("the value of {key:?} must be printable ASCII (use a -bin key for bytes)")
        })?;
        map.append(name, value);
    }
    Ok(())
}
