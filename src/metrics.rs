//! Prometheus metrics (`GET /metrics`, the text format 0.0.4): calls by method, protocol and code,
//! their latency, rule hits, unmatched calls, reloads, open connections and open streams.
//!
//! Counting is on the hot path, so it is a few relaxed atomic adds per call and nothing else: no
//! label set is hashed, no string allocated, no lock taken. Each method's counters sit in one
//! [`MethodMetrics`] — a fixed array per protocol and status code, and one of histogram buckets
//! per protocol — which the served `engine::Method` holds ([`MethodSlot`]), resolved once, on its
//! first call, by name from the [`Metrics`] it reports to. Counters are kept by name, not by the
//! `Method` value, so that they survive a reload (which builds every `Method` again), and only
//! methods that were called have any: a large tree's methods cost nothing until they are.
//! Rule hits are kept per method by the rule's origin (`file:line`): a rule that keeps its place
//! across a reload keeps counting, and an edited one starts a series of its own.
//!
//! The text is written at scrape time, by walking the counters, through `prometheus-client`'s
//! encoder (names, escaping, histogram lines as Prometheus reads them). A histogram's count is the
//! sum of its buckets, so a scrape that races calls never shows a count below its `+Inf` bucket.
//!
//! Fed by `observe::answer` (each call's end, whatever the protocol: a [`CallTimer`]), the engine
//! where it selects a rule (hits, unmatched calls), the server (connections) and the reload loop.
//!
//! One [`Metrics`] per process ([`global`]), turned off by `--no-metrics` ([`Metrics::set_enabled`]):
//! then nothing is counted and `/metrics` is not served. Tests make their own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tonic::Code;

/// What `/metrics` answers with (the Prometheus text format).
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The path metrics are served on.
pub(crate) const PATH: &str = "/metrics";

/// The protocol a call came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Grpc = 0,
    GrpcWeb = 1,
    Connect = 2,
    HttpJson = 3,
}

impl Protocol {
    const ALL: [Protocol; 4] = [
        Protocol::Grpc,
        Protocol::GrpcWeb,
        Protocol::Connect,
        Protocol::HttpJson,
    ];

    /// Its name, as logs, the journal and the `protocol` label write it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Connect => "connect",
            Protocol::HttpJson => "http-json",
        }
    }
}

const PROTOCOLS: usize = Protocol::ALL.len();

/// gRPC's status codes by number, as handler files name them (the `code` label).
use crate::codes::NAMES as CODES;

/// Upper bounds of the latency buckets, in microseconds: a mock answers in microseconds, a rule
/// with a `delay` or a script in milliseconds to seconds. `+Inf` is the bucket after them.
const BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

/// The bucket of a duration: the first whose bound it does not pass.
fn bucket(elapsed: Duration) -> usize {
    let micros = elapsed.as_micros();
    BOUNDS_MICROS
        .iter()
        .position(|&bound| micros <= u128::from(bound))
        .unwrap_or(BUCKETS - 1)
}

/// Every counter of one process.
pub(crate) struct Metrics {
    enabled: AtomicBool,
    /// Counters of the methods called so far, by name (sorted: the scrape's order).
    methods: Mutex<BTreeMap<Box<str>, Arc<MethodMetrics>>>,
    connections_open: AtomicI64,
    connections_accepted: AtomicU64,
    streams_open: [AtomicI64; PROTOCOLS],
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

static GLOBAL: Metrics = Metrics::new();

/// The process's metrics: what the server counts into and `/metrics` shows.
pub(crate) fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    pub(crate) const fn new() -> Metrics {
        Metrics {
            enabled: AtomicBool::new(true),
            methods: Mutex::new(BTreeMap::new()),
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            streams_open: [const { AtomicI64::new(0) }; PROTOCOLS],
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// `--no-metrics` turns counting and `/metrics` off (set before serving).
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// The counters of method `name` and of its rules (by their origins, in rule order): what an
    /// `engine::Method` resolves once and keeps. The same counters for the same name and origin,
    /// reload after reload. `streaming`: the method has a client or server stream (its calls are
    /// counted in the open streams).
    pub(crate) fn method<'a>(
        &self,
        name: &str,
        origins: impl Iterator<Item = &'a str>,
        streaming: bool,
    ) -> MethodSlot {
        let counters = {
            let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
            match methods.get(name) {
                Some(m) => m.clone(),
                None => {
                    let m = Arc::new(MethodMetrics::new());
                    methods.insert(name.into(), m.clone());
                    m
                }
            }
        };
        let rules = {
            let mut known = counters.rules.lock().unwrap_or_else(|e| e.into_inner());
            origins
                .map(|origin| match known.iter().find(|(o, _)| &**o == origin) {
                    Some((_, hits)) => hits.clone(),
                    None => {
                        let hits = Arc::new(AtomicU64::new(0));
                        known.push((origin.into(), hits.clone()));
                        hits
                    }
                })
                .collect()
        };
        MethodSlot {
            counters,
            rules,
            streaming,
        }
    }

    /// A connection was accepted; it is counted open until the guard is dropped.
    pub(crate) fn connection_opened(&'static self) -> OpenConnection {
        self.connections_accepted.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
        OpenConnection(self)
    }

    /// A reload was swapped in (`true`) or failed, the previous state still serving (`false`).
    pub(crate) fn reloaded(&self, swapped: bool) {
        match swapped {
            true => self.reloads.fetch_add(1, Relaxed),
            false => self.reload_failures.fetch_add(1, Relaxed),
        };
    }

    /// The text `/metrics` answers with.
    pub(crate) fn render(&'static self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self)));
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }

    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let methods: Vec<(Box<str>, Arc<MethodMetrics>)> = self
            .methods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, m)| (name.clone(), m.clone()))
            .collect();

        let mut family = encoder.encode_descriptor(
            "protodrop_calls",
            "Calls answered, by method, protocol and status code.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &methods {
            for protocol in Protocol::ALL {
                for (code, count) in m.calls[protocol as usize].iter().enumerate() {
                    let count = count.load(Relaxed);
                    if count == 0 {
                        continue;
                    }
                    let labels = [
                        ("method", &**name),
                        ("protocol", protocol.as_str()),
                        ("code", CODES[code]),
                    ];
                    ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "protodrop_call_duration_seconds",
            "Time from a call's start to its end (its status), by method and protocol.",
            None,
            MetricType::Histogram,
        )?;
        for (name, m) in &methods {
            for protocol in Protocol::ALL {
                let p = protocol as usize;
                let counts: Vec<u64> = m.latency[p].iter().map(|b| b.load(Relaxed)).collect();
                let count: u64 = counts.iter().sum();
                if count == 0 {
                    continue;
                }
                let buckets: Vec<(f64, u64)> = BOUNDS_MICROS
                    .iter()
                    .map(|&b| b as f64 / 1e6)
                    .chain([f64::INFINITY])
                    .zip(counts)
                    .collect();
                let sum = m.latency_nanos[p].load(Relaxed) as f64 / 1e9;
                let labels = [("method", &**name), ("protocol", protocol.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "protodrop_rule_hits",
            "Request messages each rule answered (a bidi call counts each message), by method and \
             rule (file:line).",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &methods {
            let rules = m.rules.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (origin, hits) in rules {
                let hits = hits.load(Relaxed);
                if hits == 0 {
                    continue;
                }
                let labels = [("method", &**name), ("rule", &*origin)];
                ConstCounter::new(hits).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "protodrop_unmatched_calls",
            "Calls no rule answered (UNIMPLEMENTED: no rule matched, or the method has none), by \
             method.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &methods {
            let count = m.unmatched.load(Relaxed);
            if count > 0 {
                let labels = [("method", &**name)];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        let counter = |encoder: &mut DescriptorEncoder, name, help, value: &AtomicU64| {
            let value = ConstCounter::new(value.load(Relaxed));
            value.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
        };
        counter(
            &mut encoder,
            "protodrop_reloads",
            "Reloads of the protos or handlers swapped in.",
            &self.reloads,
        )?;
        counter(
            &mut encoder,
            "protodrop_reload_failures",
            "Reloads that failed (the previous state kept serving).",
            &self.reload_failures,
        )?;
        counter(
            &mut encoder,
            "protodrop_connections_accepted",
            "Connections accepted.",
            &self.connections_accepted,
        )?;
        let open = ConstGauge::new(self.connections_open.load(Relaxed));
        open.encode(encoder.encode_descriptor(
            "protodrop_connections_open",
            "Connections open now.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "protodrop_streams_open",
            "Calls of streaming methods (client, server or bidi) open now, by protocol.",
            None,
            MetricType::Gauge,
        )?;
        for protocol in Protocol::ALL {
            let open = ConstGauge::new(self.streams_open[protocol as usize].load(Relaxed));
            open.encode(family.encode_family(&[("protocol", protocol.as_str())])?)?;
        }
        Ok(())
    }
}

/// The collector `prometheus-client` calls at each scrape.
#[derive(Debug)]
struct Scrape(&'static Metrics);

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// One method's counters, kept by name across reloads.
pub(crate) struct MethodMetrics {
    calls: [[AtomicU64; CODES.len()]; PROTOCOLS],
    /// Non-cumulative bucket counts (the scrape adds them up).
    latency: [[AtomicU64; BUCKETS]; PROTOCOLS],
    latency_nanos: [AtomicU64; PROTOCOLS],
    unmatched: AtomicU64,
    /// Each rule's hits by origin, in the order the rules were first seen.
    rules: Mutex<Vec<(Box<str>, Arc<AtomicU64>)>>,
}

impl MethodMetrics {
    fn new() -> MethodMetrics {
        MethodMetrics {
            calls: [const { [const { AtomicU64::new(0) }; CODES.len()] }; PROTOCOLS],
            latency: [const { [const { AtomicU64::new(0) }; BUCKETS] }; PROTOCOLS],
            latency_nanos: [const { AtomicU64::new(0) }; PROTOCOLS],
            unmatched: AtomicU64::new(0),
            rules: Mutex::new(Vec::new()),
        }
    }

    fn call_ended(&self, protocol: Protocol, code: Code, elapsed: Duration) {
        let p = protocol as usize;
        let code = (code as usize).min(CODES.len() - 1);
        self.calls[p][code].fetch_add(1, Relaxed);
        self.latency[p][bucket(elapsed)].fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos[p].fetch_add(nanos, Relaxed);
    }
}

/// What a served method holds: its counters and one hit counter per rule, by rule index.
pub(crate) struct MethodSlot {
    counters: Arc<MethodMetrics>,
    rules: Box<[Arc<AtomicU64>]>,
    streaming: bool,
}

impl std::fmt::Debug for MethodSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodSlot").finish_non_exhaustive()
    }
}

impl MethodSlot {
    /// A call of this method over `protocol` ended with `code` after `elapsed`: three atomic adds.
    /// For a caller that times calls itself; `observe::answer` uses a [`CallTimer`], which ends
    /// the same way.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn call_ended(&self, protocol: Protocol, code: Code, elapsed: Duration) {
        self.counters.call_ended(protocol, code, elapsed);
    }

    /// The method's `index`-th rule answered a request message.
    pub(crate) fn rule_hit(&self, index: usize) {
        if let Some(hits) = self.rules.get(index) {
            hits.fetch_add(1, Relaxed);
        }
    }

    /// No rule answered a call (none matched, or the method has none).
    pub(crate) fn unmatched(&self) {
        self.counters.unmatched.fetch_add(1, Relaxed);
    }

    /// Times one call of this method over `protocol` until [`CallTimer::end`]; a streaming call is
    /// counted open meanwhile.
    pub(crate) fn start(
        &self,
        metrics: &'static Metrics,
        protocol: Protocol,
        deadline: Option<Instant>,
    ) -> CallTimer {
        let streaming = self.streaming;
        if streaming {
            metrics.streams_open[protocol as usize].fetch_add(1, Relaxed);
        }
        CallTimer(Some(Timing {
            counters: self.counters.clone(),
            metrics,
            protocol,
            streaming,
            started: Instant::now(),
            deadline,
        }))
    }
}

/// One call being timed: ended once, by [`CallTimer::end`] or, if it never is (the client went
/// away, its deadline or the shutdown cut dropped the answer), when dropped: DEADLINE_EXCEEDED
/// past its deadline, else CANCELLED ([`crate::codes::cut_short`]), as the journal and the call
/// log record such a call. A no-op when metrics are off.
pub(crate) struct CallTimer(Option<Timing>);

struct Timing {
    counters: Arc<MethodMetrics>,
    metrics: &'static Metrics,
    protocol: Protocol,
    streaming: bool,
    started: Instant,
    deadline: Option<Instant>,
}

impl CallTimer {
    /// A timer that counts nothing (metrics off, or no method).
    pub(crate) const OFF: CallTimer = CallTimer(None);

    /// Whether it counts nothing.
    pub(crate) fn is_off(&self) -> bool {
        self.0.is_none()
    }

    /// When the call started (`None` when off): a caller that times the call too reads this
    /// clock rather than its own.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.0.as_ref().map(|t| t.started)
    }

    /// The call ended with `code`.
    pub(crate) fn end(&mut self, code: Code) {
        if let Some(t) = &self.0 {
            let elapsed = t.started.elapsed();
            self.end_after(code, elapsed);
        }
    }

    /// The call ended with `code`, `elapsed` after [`CallTimer::started`].
    pub(crate) fn end_after(&mut self, code: Code, elapsed: Duration) {
        let Some(t) = self.0.take() else { return };
        if t.streaming {
            t.metrics.streams_open[t.protocol as usize].fetch_sub(1, Relaxed);
        }
        t.counters.call_ended(t.protocol, code, elapsed);
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let code = crate::codes::cut_short(t.deadline);
            self.end(code);
        }
    }
}

/// An open connection, counted until dropped.
pub(crate) struct OpenConnection(&'static Metrics);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    /// The scrape, parsed as Prometheus parses it.
    fn scrape(metrics: &'static Metrics) -> prometheus_parse::Scrape {
        let text = metrics.render();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("the text format parses")
    }

    fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {metric} {labels:?}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is a {:?}", sample.value),
        }
    }

    #[test]
    fn calls_are_counted_by_method_protocol_and_code() {
        let metrics = leaked();
        let say = metrics.method(
            "hello.Hello/Say",
            ["h.toml:1", "h.toml:5"].into_iter(),
            false,
        );
        let list = metrics.method("hello.Hello/List", [].into_iter(), false);
        say.call_ended(Protocol::Grpc, Code::Ok, Duration::from_micros(50));
        say.call_ended(Protocol::Grpc, Code::Ok, Duration::from_millis(3));
        say.call_ended(Protocol::Connect, Code::NotFound, Duration::from_secs(20));
        say.rule_hit(1);
        say.rule_hit(1);
        say.rule_hit(0);
        list.unmatched();
        list.call_ended(Protocol::HttpJson, Code::Unimplemented, Duration::ZERO);

        let s = scrape(metrics);
        let calls = |m, p, c| {
            value(
                &s,
                "protodrop_calls_total",
                &[("method", m), ("protocol", p), ("code", c)],
            )
        };
        assert_eq!(calls("hello.Hello/Say", "grpc", "OK"), 2.0);
        assert_eq!(calls("hello.Hello/Say", "connect", "NOT_FOUND"), 1.0);
        assert_eq!(calls("hello.Hello/List", "http-json", "UNIMPLEMENTED"), 1.0);
        // Only what happened has a series.
        assert!(!s.samples.iter().any(
            |x| x.metric == "protodrop_calls_total" && x.labels.get("code") == Some("INTERNAL")
        ));
        let rule = |r| value(&s, "protodrop_rule_hits_total", &[("rule", r)]);
        assert_eq!(rule("h.toml:5"), 2.0);
        assert_eq!(rule("h.toml:1"), 1.0);
        let unmatched = value(
            &s,
            "protodrop_unmatched_calls_total",
            &[("method", "hello.Hello/List")],
        );
        assert_eq!(unmatched, 1.0);
    }

    #[test]
    fn latency_is_a_histogram_per_method_and_protocol() {
        let metrics = leaked();
        let say = metrics.method("a.S/M", [].into_iter(), false);
        say.call_ended(Protocol::Grpc, Code::Ok, Duration::from_micros(50));
        say.call_ended(Protocol::Grpc, Code::Internal, Duration::from_millis(3));
        say.call_ended(Protocol::Grpc, Code::Ok, Duration::from_secs(20));
        say.call_ended(Protocol::GrpcWeb, Code::Ok, Duration::from_millis(1));

        let s = scrape(metrics);
        let histogram = |protocol: &str| {
            let sample = s
                .samples
                .iter()
                .find(|x| {
                    x.metric == "protodrop_call_duration_seconds"
                        && x.labels.get("protocol") == Some(protocol)
                })
                .unwrap_or_else(|| panic!("no histogram for {protocol}"));
            match &sample.value {
                prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
                other => panic!("not a histogram: {other:?}"),
            }
        };
        let grpc = histogram("grpc");
        let le = |bound: f64| {
            grpc.iter()
                .find(|b| b.less_than == bound || (b.less_than - bound).abs() < 1e-9)
                .unwrap_or_else(|| panic!("no bucket {bound}"))
                .count
        };
        // Cumulative, as Prometheus reads them.
        assert_eq!(le(0.0001), 1.0);
        assert_eq!(le(0.0025), 1.0);
        assert_eq!(le(0.005), 2.0);
        assert_eq!(le(10.0), 2.0);
        assert_eq!(le(f64::INFINITY), 3.0);
        assert_eq!(histogram("grpc-web").last().unwrap().count, 1.0);
        let count = |p| {
            value(
                &s,
                "protodrop_call_duration_seconds_count",
                &[("protocol", p)],
            )
        };
        assert_eq!(count("grpc"), 3.0);
        let sum = value(
            &s,
            "protodrop_call_duration_seconds_sum",
            &[("protocol", "grpc")],
        );
        assert!((sum - 20.00305).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn counters_outlive_a_reload_by_method_name_and_rule_origin() {
        let metrics = leaked();
        let before = metrics.method("a.S/M", ["a.toml:1", "a.toml:4"].into_iter(), false);
        before.rule_hit(0);
        before.call_ended(Protocol::Grpc, Code::Ok, Duration::ZERO);
        // The reload moved the second rule first and added one.
        let after = metrics.method(
            "a.S/M",
            ["a.toml:4", "a.toml:1", "b.toml:2"].into_iter(),
            false,
        );
        after.rule_hit(1);
        after.rule_hit(2);
        after.call_ended(Protocol::Grpc, Code::Ok, Duration::ZERO);

        let s = scrape(metrics);
        let calls = &[("method", "a.S/M"), ("code", "OK")];
        assert_eq!(value(&s, "protodrop_calls_total", calls), 2.0);
        let rule = |r| value(&s, "protodrop_rule_hits_total", &[("rule", r)]);
        assert_eq!(rule("a.toml:1"), 2.0);
        assert_eq!(rule("b.toml:2"), 1.0);
    }

    #[test]
    fn gauges_and_reloads() {
        let metrics = leaked();
        let stream = metrics.method("a.S/Stream", [].into_iter(), true);
        let unary = metrics.method("a.S/Unary", [].into_iter(), false);
        let connection = metrics.connection_opened();
        let _second = metrics.connection_opened();
        let mut open = stream.start(metrics, Protocol::Connect, None);
        let _unary = unary.start(metrics, Protocol::Connect, None);
        metrics.reloaded(true);
        metrics.reloaded(true);
        metrics.reloaded(false);

        let s = scrape(metrics);
        assert_eq!(value(&s, "protodrop_connections_open", &[]), 2.0);
        assert_eq!(value(&s, "protodrop_connections_accepted_total", &[]), 2.0);
        let streams = |p| value(&s, "protodrop_streams_open", &[("protocol", p)]);
        assert_eq!(streams("connect"), 1.0);
        assert_eq!(streams("grpc"), 0.0);
        assert_eq!(value(&s, "protodrop_reloads_total", &[]), 2.0);
        assert_eq!(value(&s, "protodrop_reload_failures_total", &[]), 1.0);

        open.end(Code::Ok);
        drop(connection);
        let s = scrape(metrics);
        assert_eq!(value(&s, "protodrop_connections_open", &[]), 1.0);
        assert_eq!(streams_of(&s, "connect"), 0.0);
        let ok = &[("method", "a.S/Stream"), ("code", "OK")];
        assert_eq!(value(&s, "protodrop_calls_total", ok), 1.0);
    }

    fn streams_of(s: &prometheus_parse::Scrape, protocol: &str) -> f64 {
        value(s, "protodrop_streams_open", &[("protocol", protocol)])
    }

    #[test]
    fn a_call_never_ended_counts_as_cancelled() {
        let metrics = leaked();
        let m = metrics.method("a.S/M", [].into_iter(), true);
        drop(m.start(metrics, Protocol::Grpc, None));
        let mut ended = m.start(metrics, Protocol::Grpc, None);
        ended.end(Code::Ok);
        drop(ended);

        let s = scrape(metrics);
        let code = |c| value(&s, "protodrop_calls_total", &[("code", c)]);
        assert_eq!(code("CANCELLED"), 1.0);
        assert_eq!(code("OK"), 1.0);
        assert_eq!(streams_of(&s, "grpc"), 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = leaked();
        let m = metrics.method("a.S/M", [r#"C:\h "x".toml:1"#].into_iter(), false);
        m.rule_hit(0);
        // prometheus-parse does not read escapes: the line itself, as the format writes it.
        let line = r#"protodrop_rule_hits_total{method="a.S/M",rule="C:\\h \"x\".toml:1"} 1"#;
        assert!(
            metrics.render().lines().any(|l| l == line),
            "{}",
            metrics.render()
        );
    }
}
