//! The journal as a test suite reads it: every frame of every shape, in order, with the rule that
//! wrote each reply; bounded by its caps with the drops counted; read and cleared while calls are
//! being recorded without a lost or torn entry.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use tonic::metadata::{MetadataMap, MetadataValue};

use super::journal::{Caps, Journal};
use super::{answer, Observer, Protocol, Seen};
use crate::engine::{Call, Event, Method, Reply, Request, Requests};

const PROTO: &str = r#"
    syntax = "proto3";
    package o;
    message Req { string name = 1; int32 n = 2; }
    message Rep { string text = 1; int32 n = 2; }
    service S {
        rpc Unary(Req) returns (Rep);
        rpc Chat(stream Req) returns (stream Rep);
        rpc Picky(Req) returns (Rep);
        rpc Slow(Req) returns (Rep);
        rpc Bare(Req) returns (Rep);
        rpc Tagged(Req) returns (Rep);
        rpc TaggedStream(Req) returns (stream Rep);
        rpc Reloaded(Req) returns (Rep);
    }
"#;

const RULES: &str = r##"
[[rule]]
method = "o.S/Unary"
reply = { text = "hello {{request.name}}", n = "{{request.n}}" }

[[rule]]
method = "o.S/Chat"
when.request.n = 0
reply = { text = "zero" }

[[rule]]
method = "o.S/Chat"
reply = { text = "#{{request.n}}", n = "{{request.n}}" }

[[rule]]
method = "o.S/Picky"
when.request.name = "tom"
when.request.n = 7
reply = { text = "yes" }

[[rule]]
method = "o.S/Picky"
when.metadata.x-key = "k"
reply = { text = "key" }

[[rule]]
method = "o.S/Tagged"
headers.x-who = "{{request.name}}"
reply = { text = "tagged" }

[[rule]]
method = "o.S/TaggedStream"
headers.x-who = "{{request.name}}"
stream.repeat = 2
stream.message = { text = "tagged" }

[[rule]]
method = "o.S/Reloaded"
reply = { text = "hello {{request.name}}" }

[[rule]]
method = "o.S/Slow"
delay = "300ms"
reply = { text = "late" }
"##;

fn methods() -> &'static (DescriptorPool, Vec<Arc<Method>>) {
    static METHODS: OnceLock<(DescriptorPool, Vec<Arc<Method>>)> = OnceLock::new();
    METHODS.get_or_init(|| {
        let pool = crate::protos::compile_texts(&[("o.proto", PROTO)]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("o.toml"), RULES).unwrap();
        let engine = crate::script::ScriptEngine::new(Default::default());
        let mut handlers =
            crate::rules::load(dir.path(), &pool, &engine).unwrap_or_else(|e| panic!("rules: {e}"));
        let service = pool.get_service_by_name("o.S").unwrap();
        let handlers_dir: Arc<std::path::Path> = Arc::from(dir.path());
        let methods = service
            .methods()
            .map(|desc| {
                let name = format!("o.S/{}", desc.name());
                let rules = handlers.methods.remove(&name);
                Arc::new(Method::new(desc, name, rules, handlers_dir.clone()))
            })
            .collect();
        (pool, methods)
    })
}

fn method(name: &str) -> Arc<Method> {
    methods()
        .1
        .iter()
        .find(|m| m.name == format!("o.S/{name}"))
        .unwrap()
        .clone()
}

fn req(name: &str, n: i32) -> Bytes {
    let desc = methods().0.get_message_by_name("o.Req").unwrap();
    let mut m = DynamicMessage::new(desc);
    m.set_field_by_name("name", prost_reflect::Value::String(name.into()));
    m.set_field_by_name("n", prost_reflect::Value::I32(n));
    m.encode_to_vec().into()
}

fn observer(caps: Caps) -> &'static Observer {
    Box::leak(Box::new(Observer::new(Some(Journal::new(caps)))))
}

const ROOMY: Caps = Caps {
    max_calls: 100_000,
    max_bytes: 1 << 30,
};

fn seen(observer: &'static Observer) -> Seen {
    Seen {
        protocol: Protocol::Grpc,
        peer: Some("127.0.0.1:5000".parse().unwrap()),
        observer,
        deadline: None,
    }
}

fn call(name: &str, requests: Requests, metadata: MetadataMap) -> Call {
    Call {
        method: method(name),
        metadata,
        requests,
        limit: 4 << 20,
        reserve: 5,
        watch: None,
    }
}

/// Runs a call to its end, as a protocol would, and returns how many reply messages it had.
async fn run(call: Call, seen: Seen) -> usize {
    match answer(call, seen).await {
        Reply::Ready(ready) => usize::from(ready.message.is_some()),
        Reply::Refused(_) => 0,
        Reply::Stream(streamed) => {
            let events: Vec<Event> = streamed.events.collect().await;
            events
                .iter()
                .filter(|e| matches!(e, Event::Message(_)))
                .count()
        }
    }
}

fn calls(observer: &Observer) -> Vec<Value> {
    let journal = observer.journal().unwrap();
    journal.list(None, 0).iter().map(|r| r.to_json()).collect()
}

#[tokio::test]
async fn a_unary_call_is_journaled_with_its_request_reply_rule_and_status() {
    let observer = observer(ROOMY);
    let mut metadata = MetadataMap::new();
    metadata.insert("x-user", "ann".parse().unwrap());
    let one = Requests::One(Request::Encoded(req("ann", 3)));
    assert_eq!(run(call("Unary", one, metadata), seen(observer)).await, 1);
    let calls = calls(observer);
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c["method"], "o.S/Unary");
    assert_eq!(c["protocol"], "grpc");
    assert_eq!(c["peer"], "127.0.0.1:5000");
    assert_eq!(c["status"]["codeName"], "OK");
    assert!(c["requestMetadata"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["key"] == "x-user" && m["value"] == "ann"));
    let frames = c["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 2, "{frames:#?}");
    assert_eq!(frames[0]["request"]["json"]["name"], "ann");
    assert_eq!(frames[1]["reply"]["json"]["text"], "hello ann");
    assert_eq!(frames[1]["reply"]["json"]["n"], 3);
    let rule = frames[1]["rule"].as_str().unwrap();
    assert!(rule.ends_with("o.toml:2"), "{rule}");
    assert_eq!(c["rules"][0], rule);
    // The bytes are the message's bytes as they were sent.
    use base64::Engine as _;
    let binary = base64::engine::general_purpose::STANDARD
        .decode(frames[0]["request"]["binary"].as_str().unwrap())
        .unwrap();
    assert_eq!(binary, req("ann", 3));
}

#[tokio::test]
async fn a_bidi_call_of_1000_messages_each_way_is_journaled_whole_and_in_order() {
    let observer = observer(ROOMY);
    let requests = futures::stream::iter((0..1000).map(|n| Ok(Request::Encoded(req("x", n)))));
    let requests = Requests::Stream(Box::pin(requests));
    assert_eq!(
        run(call("Chat", requests, MetadataMap::new()), seen(observer)).await,
        1000
    );
    let calls = calls(observer);
    let frames = calls[0]["frames"].as_array().unwrap();
    let requests: Vec<&Value> = frames.iter().filter_map(|f| f.get("request")).collect();
    let replies: Vec<&Value> = frames.iter().filter(|f| f.get("reply").is_some()).collect();
    assert_eq!((requests.len(), replies.len()), (1000, 1000));
    for (n, (request, reply)) in requests.iter().zip(&replies).enumerate() {
        // proto3 JSON leaves out a zero: the first request has no `n`.
        assert_eq!(request["json"]["n"].as_i64().unwrap_or(0), n as i64);
        let text = if n == 0 {
            "zero".to_string()
        } else {
            format!("#{n}")
        };
        assert_eq!(reply["reply"]["json"]["text"], text);
        // The first message matched the `when` rule, the others the default one.
        let line = if n == 0 { "o.toml:6" } else { "o.toml:11" };
        assert!(reply["rule"].as_str().unwrap().ends_with(line), "{reply}");
    }
    // Each reply follows its request.
    let kinds: Vec<bool> = frames.iter().map(|f| f.get("request").is_some()).collect();
    assert!(kinds.chunks(2).all(|pair| pair == [true, false]));
    assert_eq!(calls[0]["status"]["codeName"], "OK");
    assert_eq!(calls[0]["rules"].as_array().unwrap().len(), 2);
}

/// A call whose frames pass a mebibyte (they take room for all the cap allows then) and become a
/// block of their own (`Closed::write_around`) reads back whole and in order, between small calls
/// kept in the ring's chunks; so do the small ones.
#[tokio::test]
async fn a_large_call_between_small_ones_reads_back_whole_and_in_order() {
    let observer = observer(Caps {
        max_calls: 100,
        max_bytes: 8 << 20,
    });
    let stream = |name: String, count: i32| {
        let requests = (0..count).map(move |n| Ok(Request::Encoded(req(&name, n))));
        Requests::Stream(Box::pin(futures::stream::iter(requests)))
    };
    let large = "x".repeat(1100);
    for (name, count) in [("a", 3), (large.as_str(), 1000), ("b", 3)] {
        let chat = call("Chat", stream(name.to_string(), count), MetadataMap::new());
        assert_eq!(run(chat, seen(observer)).await, count as usize);
    }
    let calls = calls(observer);
    assert_eq!(calls.len(), 3);
    for call in &calls {
        let frames = call["frames"].as_array().unwrap();
        let requests: Vec<&Value> = frames.iter().filter_map(|f| f.get("request")).collect();
        let name = requests[0]["json"]["name"].as_str().unwrap();
        let count = if name == large { 1000 } else { 3 };
        assert_eq!(frames.len(), 2 * count, "{name}");
        for (n, request) in requests.iter().enumerate() {
            assert_eq!(request["json"]["name"], name);
            assert_eq!(request["json"]["n"].as_i64().unwrap_or(0), n as i64);
        }
        let kinds: Vec<bool> = frames.iter().map(|f| f.get("request").is_some()).collect();
        assert!(kinds.chunks(2).all(|pair| pair == [true, false]), "{name}");
        assert_eq!(call["status"]["codeName"], "OK");
        assert_eq!(call["droppedFrames"], "0");
    }
}

/// A unary call of 2 MB, answered at once, is kept in a block of about its size: the block was
/// grown from a chunk's size by doubling, and the last doubling moved the whole request again
/// to room for twice it (a peak of three times the request while the call was written; four
/// calls of 4 MB at a time peaked 4 MiB higher: `tests/amplification.rs`).
#[tokio::test]
async fn a_large_unary_call_is_kept_in_about_its_size() {
    let observer = observer(ROOMY);
    let large = "x".repeat(2 << 20);
    let one = Requests::One(Request::Encoded(req(&large, 1)));
    // Answered by no rule: its reply is not the request again.
    run(call("Bare", one, MetadataMap::new()), seen(observer)).await;
    let capacity = observer.journal().unwrap().capacity();
    assert!(
        capacity < large.len() * 5 / 4,
        "a call of {} bytes kept in {capacity}",
        large.len()
    );
    assert_eq!(
        calls(observer)[0]["frames"][0]["request"]["json"]["name"],
        large
    );
}

/// A unary call larger than the journal's byte cap is kept without its request (counted as a
/// dropped frame), and takes no room for it.
#[tokio::test]
async fn a_unary_call_larger_than_the_cap_takes_no_room_for_what_it_drops() {
    let observer = observer(Caps {
        max_calls: 100,
        max_bytes: 1 << 20,
    });
    let large = "x".repeat(2 << 20);
    let one = Requests::One(Request::Encoded(req(&large, 1)));
    run(call("Bare", one, MetadataMap::new()), seen(observer)).await;
    let capacity = observer.journal().unwrap().capacity();
    // A chunk of the ring's size (64 KiB), not room for the request.
    assert!(
        capacity < 256 << 10,
        "a call of which nothing is kept took {capacity} bytes"
    );
    let calls = calls(observer);
    assert_eq!(calls[0]["droppedFrames"], "1");
    assert_eq!(calls[0]["frames"][0].get("request"), None);
}

#[tokio::test]
async fn an_unmatched_call_lists_the_rules_that_came_closest() {
    let observer = observer(ROOMY);
    let one = Requests::One(Request::Encoded(req("tom", 6)));
    run(call("Picky", one, MetadataMap::new()), seen(observer)).await;
    let calls = calls(observer);
    assert_eq!(calls[0]["status"]["codeName"], "UNIMPLEMENTED");
    let misses = calls[0]["nearMisses"].as_array().unwrap();
    assert_eq!(misses.len(), 2);
    // name held, n did not: one of two; the metadata rule: none of one.
    assert_eq!(misses[0]["held"], 1);
    assert_eq!(misses[0]["conditions"], 2);
    assert_eq!(misses[0]["failed"], "request.n = 7");
    assert_eq!(misses[1]["failed"], "metadata.x-key = \"k\"");
}

#[tokio::test]
async fn the_oldest_calls_are_dropped_first_and_counted() {
    let observer = observer(Caps {
        max_calls: 3,
        max_bytes: 1 << 30,
    });
    for n in 0..5 {
        let one = Requests::One(Request::Encoded(req("a", n)));
        run(call("Unary", one, MetadataMap::new()), seen(observer)).await;
    }
    let journal = observer.journal().unwrap();
    let kept: Vec<i64> = calls(observer)
        .iter()
        .map(|c| c["frames"][0]["request"]["json"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, [2, 3, 4]);
    assert_eq!(journal.dropped(), 2);
    assert_eq!(journal.clear(), 3);
    assert_eq!((journal.dropped(), calls(observer).len()), (0, 0));
}

#[tokio::test]
async fn the_byte_cap_holds_and_a_call_larger_than_it_keeps_its_first_frames() {
    let cap = 64 * 1024;
    let observer = observer(Caps {
        max_calls: 1000,
        max_bytes: cap,
    });
    let big = "x".repeat(10_000);
    for _ in 0..20 {
        let one = Requests::One(Request::Encoded(req(&big, 1)));
        run(call("Unary", one, MetadataMap::new()), seen(observer)).await;
    }
    let journal = observer.journal().unwrap();
    assert!(journal.bytes() <= cap, "{} > {cap}", journal.bytes());
    let kept = calls(observer).len();
    assert!((2..20).contains(&kept), "{kept}");
    assert_eq!(journal.dropped() as usize + kept, 20);
    // One stream of 100 messages of 10 kB: it keeps what fits, and counts the rest.
    journal.clear();
    let requests: Vec<_> = (0..100)
        .map(|n| Ok(Request::Encoded(req(&big, n))))
        .collect();
    let requests = futures::stream::iter(requests);
    run(
        call(
            "Chat",
            Requests::Stream(Box::pin(requests)),
            MetadataMap::new(),
        ),
        seen(observer),
    )
    .await;
    let calls = calls(observer);
    let frames = calls[0]["frames"].as_array().unwrap().len();
    let dropped: usize = calls[0]["droppedFrames"].as_str().unwrap().parse().unwrap();
    assert!(frames > 0 && dropped > 0, "{frames} {dropped}");
    assert_eq!(frames + dropped, 200);
    assert!(journal.bytes() <= cap + 1024);
}

#[test]
fn calls_are_journaled_while_the_journal_is_read_and_cleared_with_none_lost_or_torn() {
    let observer = observer(ROOMY);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let (workers, each) = (8, 200);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let journal = observer.journal().unwrap();
            let mut cleared = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for record in journal.list(None, 0) {
                    let c = record.to_json();
                    let frames = c["frames"].as_array().unwrap();
                    // A finished call is whole; one in flight has at most its two frames.
                    if c.get("status").is_some() {
                        assert_eq!(frames.len(), 2, "{c}");
                        assert_eq!(frames[1]["reply"]["json"]["text"], "hello w");
                    } else {
                        assert!(frames.len() <= 2, "{c}");
                    }
                }
                cleared += journal.clear();
            }
            cleared
        })
    };
    runtime.block_on(async {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                tokio::spawn(async move {
                    for n in 0..each {
                        let one = Requests::One(Request::Encoded(req("w", n)));
                        run(call("Unary", one, MetadataMap::new()), seen(observer)).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let cleared = reader.join().unwrap();
    let journal = observer.journal().unwrap();
    let left = journal.list(None, 0).len();
    assert_eq!(journal.dropped(), 0);
    assert_eq!(cleared + left, workers * each as usize);
}

/// Its method is called by no other test: the count of its references is this test's alone (with
/// `Unary`, another test's call running meanwhile made it fail one run in three).
#[tokio::test]
async fn a_reload_lets_go_of_the_old_protos_and_the_call_reads_the_same() {
    let observer = observer(ROOMY);
    let one = Requests::One(Request::Encoded(req("old", 1)));
    let unary = method("Reloaded");
    run(call("Reloaded", one, MetadataMap::new()), seen(observer)).await;
    let journal = observer.journal().unwrap();
    let before = calls(observer);
    let held = Arc::strong_count(&unary);
    // The same pool: nothing to let go of.
    journal.settle(&methods().0);
    assert_eq!(Arc::strong_count(&unary), held);
    // A reload's new pool: the record no longer holds the method (nor its pool).
    let reloaded = crate::protos::compile_texts(&[("o.proto", PROTO)]);
    journal.settle(&reloaded);
    assert_eq!(Arc::strong_count(&unary), held - 1);
    assert_eq!(calls(observer), before);
    assert_eq!(journal.list(Some("o.S/Reloaded"), 0).len(), 1);
    let bytes = journal.list(None, 0)[0].request_bytes();
    assert_eq!(bytes, [req("old", 1)]);
}

/// The journal's byte count stays true while calls with metadata are recorded and the journal is
/// cleared under them: a clear between a record's bytes being noted and being counted must not
/// take away bytes the journal never counted (the count wrapped below zero, an overflow panic in a
/// debug build, and a release build's trim then dropped the calls).
#[test]
fn the_byte_count_stays_true_while_calls_are_cleared_under_them() {
    let dropped = count_while_cleared(ROOMY, 3000, |n| {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-tag", "a-long-enough-value".parse().unwrap());
        let one = Requests::One(Request::Encoded(req("w", n)));
        call("Unary", one, metadata)
    });
    assert_eq!(dropped, 0);
}

/// The same for streams, whose frames are added to the count a batch at a time: a stream cleared
/// or dropped (the byte cap is small, so trims drop streams in flight) with frames not counted yet
/// must take off only what was counted.
#[test]
fn the_byte_count_stays_true_while_streams_are_cleared_and_dropped_under_them() {
    let small = Caps {
        max_calls: 100_000,
        max_bytes: 64 << 10,
    };
    count_while_cleared(small, 300, |n| {
        let requests: Vec<_> = (0..40)
            .map(|i| Ok(Request::Encoded(req("a-stream-message", n * 40 + i))))
            .collect();
        let requests = Requests::Stream(Box::pin(futures::stream::iter(requests)));
        call("Chat", requests, MetadataMap::new())
    });
}

/// Three threads make `calls` calls each while a fourth clears the journal over and over; the
/// count must never wrap below zero, and must be zero once cleared. The calls dropped since the
/// last clear.
fn count_while_cleared(caps: Caps, calls: i32, make: fn(i32) -> Call) -> u64 {
    let observer = observer(caps);
    let journal = observer.journal().unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clearer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                journal.clear();
                most = most.max(journal.bytes());
            }
            most
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    for n in 0..calls {
                        run(make(n), seen(observer)).await;
                    }
                })
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a call panicked");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = clearer.join().unwrap();
    assert!(most < 1 << 30, "the count wrapped: {most}");
    let dropped = journal.dropped();
    journal.clear();
    assert_eq!(journal.bytes(), 0);
    dropped
}

#[tokio::test]
async fn a_request_read_from_a_larger_buffer_is_kept_alone_not_with_the_buffer() {
    // A protocol's request bytes may be a slice of the connection's read buffer: the journal
    // counts the message's bytes, so it must not keep the whole buffer alive through a slice.
    let observer = observer(ROOMY);
    // Larger than a message kept inside its frame.
    let message = req(&"ann".repeat(40), 3);
    let mut buffer = message.to_vec();
    buffer.resize(1 << 20, 0);
    let buffer = Bytes::from(buffer);
    let request = buffer.slice(..message.len());
    let one = Requests::One(Request::Encoded(request));
    run(call("Unary", one, MetadataMap::new()), seen(observer)).await;
    let records = observer.journal().unwrap().list(None, 0);
    let kept = records[0].request_bytes();
    assert_eq!(kept, [message]);
    assert!(
        !buffer.as_ptr_range().contains(&kept[0].as_ptr()),
        "the journal keeps the connection's 1 MiB buffer for a {}-byte request",
        kept[0].len()
    );
}

fn request_metadata(call: &Value, key: &str) -> Option<String> {
    call["requestMetadata"]
        .as_array()?
        .iter()
        .find(|m| m["key"] == key)
        .map(|m| m["value"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_unary_calls_metadata_is_kept_however_it_ends_and_shown_while_it_waits() {
    // A unary call's metadata reaches the journal when the engine is done with it: on every way
    // out (answered, no rule matched, a bad request), and at once when a rule's delay holds it.
    let observer = observer(ROOMY);
    let with_user = || {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-user", "ann".parse().unwrap());
        metadata
    };
    let answered = Requests::One(Request::Encoded(req("ann", 3)));
    run(call("Unary", answered, with_user()), seen(observer)).await;
    let unmatched = Requests::One(Request::Encoded(req("tom", 6)));
    run(call("Picky", unmatched, with_user()), seen(observer)).await;
    let garbage = Requests::One(Request::Encoded(Bytes::from_static(&[0xff, 0xff])));
    run(call("Unary", garbage, with_user()), seen(observer)).await;
    let no_rules = Requests::One(Request::Encoded(req("ann", 3)));
    run(call("Bare", no_rules, with_user()), seen(observer)).await;
    let ended = calls(observer);
    let codes: Vec<&Value> = ended.iter().map(|c| &c["status"]["codeName"]).collect();
    let want = ["OK", "UNIMPLEMENTED", "INTERNAL", "UNIMPLEMENTED"];
    assert_eq!(codes, want, "{ended:#?}");
    for c in &ended {
        assert_eq!(
            request_metadata(c, "x-user").as_deref(),
            Some("ann"),
            "{c:#}"
        );
    }

    let slow = Requests::One(Request::Encoded(req("ann", 3)));
    let waiting = tokio::spawn(run(call("Slow", slow, with_user()), seen(observer)));
    // Within the delay (300 ms), the call is listed with its metadata and without an end.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
    let in_flight = loop {
        let seen = calls(observer).get(4).cloned();
        match seen {
            Some(c) if request_metadata(&c, "x-user").is_some() => break c,
            seen if std::time::Instant::now() > until => panic!("in flight: {seen:#?}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    };
    assert_eq!(in_flight["method"], "o.S/Slow");
    assert!(in_flight.get("status").is_none(), "{in_flight:#}");
    waiting.await.unwrap();
}

/// A `Slow` call of `request` (its rule waits 300 ms) to an empty journal, running, once the
/// journal lists it.
async fn slow_call_listed(
    observer: &'static Observer,
    request: Bytes,
) -> tokio::task::JoinHandle<usize> {
    let slow = Requests::One(Request::Encoded(request));
    let waiting = tokio::spawn(run(call("Slow", slow, MetadataMap::new()), seen(observer)));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while calls(observer).is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "the call never reached the journal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    waiting
}

/// The newest calls are the last begun, whichever ended last: a call that waited (300 ms) ends
/// after three begun after it, and is kept after them; asked for the newest, the journal gives
/// the last of those three, and the call that waited only among the newest four.
#[tokio::test]
async fn the_newest_calls_are_the_last_begun_not_the_last_ended() {
    let observer = observer(ROOMY);
    let waiting = slow_call_listed(observer, req("first", 0)).await;
    for n in 1..=3 {
        let one = Requests::One(Request::Encoded(req("later", n)));
        run(call("Unary", one, MetadataMap::new()), seen(observer)).await;
    }
    waiting.await.unwrap();
    let journal = observer.journal().unwrap();
    let names = |limit| -> Vec<(String, i64)> {
        let listed = journal.list(None, limit);
        listed
            .iter()
            .map(|r| {
                let call = r.to_json();
                let request = &call["frames"][0]["request"]["json"];
                let name = request["name"].as_str().unwrap_or_default().to_string();
                (name, request["n"].as_i64().unwrap_or(0))
            })
            .collect()
    };
    assert_eq!(names(1), [("later".to_string(), 3)]);
    let four = names(4);
    assert_eq!(four.first(), Some(&("first".to_string(), 0)), "{four:?}");
    assert_eq!(four.len(), 4);
}

#[tokio::test]
async fn a_unary_call_dropped_while_its_rule_waits_is_journaled_as_cancelled() {
    // The client goes away during a rule's delay: the protocol drops the call's future before the
    // engine answers. The journal closes the call rather than listing it in flight for ever.
    let observer = observer(ROOMY);
    let waiting = slow_call_listed(observer, req("ann", 3)).await;
    waiting.abort();
    let _ = waiting.await;
    let c = &calls(observer)[0];
    assert_eq!(c["status"]["codeName"], "CANCELLED", "{c:#}");
    assert!(c["duration"].is_string(), "{c:#}");
}

#[tokio::test]
async fn an_ended_call_is_kept_in_little_more_than_its_messages_and_metadata() {
    // A full journal drops its oldest call for each new one: what a call is kept in is memory the
    // server writes, and later reads to drop, on every call, long after it left the caches.
    let observer = observer(Caps {
        max_calls: 10_000,
        max_bytes: 1 << 30,
    });
    let mut metadata = MetadataMap::new();
    metadata.insert("user-agent", "grpc-python/1.68.0".parse().unwrap());
    metadata.insert("x-request-id", "0123456789abcdef".parse().unwrap());
    let unary = || {
        let one = Requests::One(Request::Encoded(req("ann", 3)));
        call("Unary", one, metadata.clone())
    };
    run(unary(), seen(observer)).await;
    let calls = 2_000;
    let before = alloc_meter::net_allocated();
    for _ in 0..calls {
        run(unary(), seen(observer)).await;
    }
    let per_call = (alloc_meter::net_allocated() - before) / calls;
    let recorded = observer.journal().unwrap().list(None, 1)[0].to_json();
    assert_eq!(recorded["frames"].as_array().map(Vec::len), Some(2));
    // The messages (7 and 13 bytes) and the metadata (~70 bytes packed) take ~90 of these.
    assert!(
        per_call <= 320,
        "{per_call} bytes kept for each ended unary call"
    );
}

#[tokio::test]
async fn an_ended_call_reads_as_it_was_recorded_whatever_its_form() {
    // An ended call is kept encoded (`journal::closed`): what it reads as is decoded from there.
    // An IPv6 peer, a request handed over decoded (HTTP/JSON), a delay and a message of more than
    // a frame's inline bytes all come back as they went in.
    let observer = observer(ROOMY);
    let desc = methods().0.get_message_by_name("o.Req").unwrap();
    let long = "ann".repeat(40);
    let request = DynamicMessage::decode(desc, req(&long, -5)).unwrap();
    let one = Requests::One(Request::Decoded(request));
    let seen = Seen {
        protocol: Protocol::HttpJson,
        peer: Some("[2001:db8::7]:6000".parse().unwrap()),
        ..seen(observer)
    };
    assert_eq!(run(call("Unary", one, MetadataMap::new()), seen).await, 1);
    let c = &calls(observer)[0];
    assert_eq!(c["protocol"], "http-json");
    assert_eq!(c["peer"], "[2001:db8::7]:6000");
    let frames = c["frames"].as_array().unwrap();
    assert_eq!(frames[0]["request"]["json"]["name"], long.as_str());
    assert_eq!(frames[0]["request"]["json"]["n"], -5);
    assert_eq!(frames[1]["reply"]["json"]["text"], format!("hello {long}"));
    assert_eq!(c["status"]["codeName"], "OK");
    assert!(c["duration"].as_str().unwrap().ends_with('s'));
    let started = humantime::parse_rfc3339(c["startTime"].as_str().unwrap()).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap();
    assert!(age < std::time::Duration::from_secs(60), "{c:#}");

    let slow = Requests::One(Request::Encoded(req("bo", 1)));
    run(call("Slow", slow, MetadataMap::new()), seen).await;
    let c = &calls(observer)[1];
    assert!(c["frames"][1]["at"].as_str().unwrap() >= "0.3", "{c:#}");
    assert!(c["rules"][0].as_str().unwrap().contains("o.toml"), "{c:#}");
}

#[tokio::test]
async fn a_unary_call_answered_at_once_reads_and_counts_as_its_record_would() {
    // A call with one request answered at once is written into the journal without a record
    // (`journal::unary`); one whose request comes as a stream (as HTTP/JSON hands it over) has a
    // record. The same call either way reads the same and counts the same bytes against the cap,
    // the timings aside — also when no rule matches, and when the cap drops its reply. (A method
    // without rules reads no request from a stream, so it is not compared here.)
    fn without_times(mut call: Value) -> Value {
        for key in ["id", "startTime", "duration"] {
            call.as_object_mut().unwrap().remove(key);
        }
        for frame in call["frames"].as_array_mut().unwrap() {
            frame.as_object_mut().unwrap().remove("at");
        }
        call
    }
    let mut metadata = MetadataMap::new();
    metadata.insert("x-user", "ann".parse().unwrap());
    metadata.append("x-tag", "one".parse().unwrap());
    metadata.append("x-tag", "two".parse().unwrap());
    metadata.insert_bin("x-raw-bin", MetadataValue::from_bytes(&[0, 255, 10]));
    let long = "ann".repeat(20);
    let cases = [
        ("Unary", req(&long, 3), ROOMY),
        ("Picky", req("tim", 7), ROOMY),
        (
            "Unary",
            req("bo", 2),
            Caps {
                max_calls: 10,
                // Room for the request and the metadata, not for the reply too.
                max_bytes: 160,
            },
        ),
    ];
    for (name, request, caps) in cases {
        let mut read = Vec::new();
        for streamed in [false, true] {
            let observer = observer(caps);
            let requests = match streamed {
                false => Requests::One(Request::Encoded(request.clone())),
                true => Requests::Stream(Box::pin(futures::stream::iter([Ok(Request::Encoded(
                    request.clone(),
                ))]))),
            };
            run(call(name, requests, metadata.clone()), seen(observer)).await;
            let journal = observer.journal().unwrap();
            let c = calls(observer).remove(0);
            read.push((without_times(c), journal.bytes()));
        }
        assert_eq!(read[0], read[1], "{name}, cap {}", caps.max_bytes);
        let dropped = if caps.max_bytes == 160 { "1" } else { "0" };
        assert_eq!(read[0].0["droppedFrames"], dropped, "{:#}", read[0].0);
    }
}

#[tokio::test]
async fn calls_kept_over_many_chunks_read_back_in_order_after_drops_and_a_reload() {
    // Ended calls are kept in a ring of chunks (`journal::closed`), a block never split between
    // two; the oldest are dropped by moving an offset and an emptied chunk is used again. Enough
    // calls to fill a few dozen chunks and drop the first ones: every call kept reads back whole
    // and in order, also once the methods' table has been compacted under them, and again after a
    // reload has taken out the calls of the old protos, leaving those of the new ones in place.
    let observer = observer(Caps {
        max_calls: 2_000,
        max_bytes: 1 << 30,
    });
    let reloaded = crate::protos::compile_texts(&[("o.proto", PROTO)]);
    // A method of its own for each call (as if a reload came between each two): the table of the
    // methods the blocks name is compacted every 64, the ring's first chunk part dropped.
    let new_unary = || {
        Arc::new(Method::new(
            reloaded
                .get_service_by_name("o.S")
                .unwrap()
                .methods()
                .next()
                .unwrap(),
            "o.S/Unary".into(),
            None,
            Arc::from(std::path::Path::new(".")),
        ))
    };
    let long = "x".repeat(300);
    let one = |n: i32| {
        let mut call = call(
            if n % 7 == 0 { "Picky" } else { "Unary" },
            Requests::One(Request::Encoded(req(&long, n))),
            MetadataMap::new(),
        );
        if n >= 3_000 && n % 2 == 0 {
            call.method = new_unary();
        }
        call
    };
    let read = |from: i32, to: i32| {
        let ns: Vec<i32> = calls(observer)
            .iter()
            .map(|c| {
                let n = c["frames"][0]["request"]["json"]["n"].as_i64().unwrap_or(0) as i32;
                let (method, answered) = match n {
                    n if n >= 3_000 && n % 2 == 0 => ("o.S/Unary", false),
                    n if n % 7 == 0 => ("o.S/Picky", false),
                    _ => ("o.S/Unary", true),
                };
                assert_eq!(c["method"], method, "{c:#}");
                assert_eq!(c["frames"][0]["request"]["json"]["name"], long.as_str());
                if answered {
                    assert_eq!(c["frames"][1]["reply"]["json"]["n"], n, "{c:#}");
                }
                n
            })
            .collect();
        assert_eq!(ns, (from..to).collect::<Vec<_>>());
    };
    for n in 0..3_000 {
        run(one(n), seen(observer)).await;
    }
    let journal = observer.journal().unwrap();
    read(1_000, 3_000);
    assert_eq!(journal.dropped(), 1_000);
    for n in 3_000..4_000 {
        run(one(n), seen(observer)).await;
    }
    read(2_000, 4_000);
    journal.settle(&reloaded);
    read(2_000, 4_000);
    for n in 4_000..4_500 {
        run(one(n), seen(observer)).await;
    }
    read(2_500, 4_500);
}

#[tokio::test]
async fn a_streams_frames_are_timed_as_they_pass_within_the_calls_duration() {
    // A stream's frames are timed by the processor's counter (`journal::COUNTER`), its end by the
    // system's clock: each frame's time is when it passed, in order, and none after the end.
    let observer = observer(ROOMY);
    let gap = std::time::Duration::from_millis(30);
    let requests = futures::stream::unfold(0, move |n| async move {
        if n == 3 {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok(Request::Encoded(req("x", n + 1))), n + 1))
    });
    let requests = Requests::Stream(Box::pin(requests));
    let chat = call("Chat", requests, MetadataMap::new());
    assert_eq!(run(chat, seen(observer)).await, 3);
    let calls = calls(observer);
    let seconds = |v: &Value| -> f64 {
        let text = v.as_str().unwrap();
        text.strip_suffix('s').unwrap().parse().unwrap()
    };
    let times: Vec<f64> = calls[0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| seconds(&f["at"]))
        .collect();
    assert_eq!(times.len(), 6, "{:#}", calls[0]);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for (k, pair) in times.chunks(2).enumerate() {
        // The k-th request came after k + 1 gaps (its reply follows it, as checked above).
        assert!(pair[0] >= gap.as_secs_f64() * (k + 1) as f64, "{times:?}");
    }
    assert!(
        times[5] <= seconds(&calls[0]["duration"]) + 1e-3,
        "{:#}",
        calls[0]
    );
}

#[tokio::test]
async fn reply_headers_are_journaled_before_the_reply_whichever_way_the_call_is_kept() {
    // Reply headers are written as a frame by each of the journal's paths: a unary call answered
    // at once (`journal::unary`), one with a record (its request read as a stream), and a stream
    // (its headers as they are sent). Each reads back with its headers, then its replies.
    let one = || Requests::One(Request::Encoded(req("ann", 1)));
    let streamed = || {
        Requests::Stream(Box::pin(futures::stream::iter([Ok(Request::Encoded(
            req("ann", 1),
        ))])))
    };
    let cases: [(&str, Requests, usize); 3] = [
        ("Tagged", one(), 1),
        ("Tagged", streamed(), 1),
        ("TaggedStream", one(), 2),
    ];
    for (name, requests, replies) in cases {
        let observer = observer(ROOMY);
        assert_eq!(
            run(call(name, requests, MetadataMap::new()), seen(observer)).await,
            replies
        );
        let calls = calls(observer);
        let frames = calls[0]["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 2 + replies, "{name}: {:#}", calls[0]);
        let headers = frames[1]["replyHeaders"]["metadata"].as_array().unwrap();
        let who: Vec<&Value> = headers.iter().filter(|m| m["key"] == "x-who").collect();
        assert_eq!(who.len(), 1, "{name}: {headers:?}");
        assert_eq!(who[0]["value"], "ann", "{name}");
        for frame in &frames[2..] {
            assert_eq!(frame["reply"]["json"]["text"], "tagged", "{name}: {frame}");
        }
    }
}
