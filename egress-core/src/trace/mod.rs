//! OTLP export: traces, and the metrics `/metrics` serves ([`spawn_metrics_export`]).
//!
//! Traces: a server span per request ([`TraceLayer`]) and a client span per upstream attempt,
//! mirror copies included ([`ClientSpanLayer`]), exported over OTLP (HTTP/protobuf or gRPC).
//!
//! Context comes in as W3C `traceparent` (`tracestate` passes through untouched) or B3 (the
//! single `b3` header or the `X-B3-*` ones) and goes out as `traceparent` naming the client
//! span, with B3 headers rewritten when the request came with them. Sampling follows the
//! parent's decision when there is one, else the configured ratio (Istio's default: 1%).
//!
//! Why not the OpenTelemetry SDK: its batch processor runs on a thread of its own and its
//! exporters bring a second HTTP stack (reqwest or tonic); the gateway already has hyper and
//! tokio. Spans here are plain records pushed into a bounded queue (never blocking, dropped
//! and counted when full); one task batches them into the OTLP protobuf messages of
//! `opentelemetry-proto` (the OpenTelemetry project's own generated types) and posts them.

mod client;
mod export;
mod metrics;
mod server;

pub use client::{ClientSpan, ClientSpanLayer};
pub use export::OtlpProtocol;
pub use metrics::{MetricsExport, spawn_metrics_export};
pub use server::{TraceLayer, TraceService};

use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Where and how to export.
#[derive(Clone)]
pub struct TraceConfig {
    /// The collector, `http://host:port` (OTLP/HTTP posts to `/v1/traces` below it).
    pub endpoint: http::Uri,
    /// HTTP/protobuf or gRPC.
    pub protocol: OtlpProtocol,
    /// The share of requests without a sampled parent that are traced (0.0 to 1.0).
    pub sampling: f64,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Spans waiting for export at most; more are dropped (and counted).
    pub queue: usize,
    /// Spans per export at most.
    pub batch: usize,
    /// The longest a span waits before its batch is sent.
    pub interval: Duration,
    /// The time one export may take.
    pub timeout: Duration,
    /// The TLS client for an `https://` endpoint.
    pub tls: Option<Arc<dyn crate::transport::ProxyTls>>,
}

impl TraceConfig {
    /// Defaults for `endpoint`: HTTP/protobuf, 1% sampling, 4,096 queued spans, batches of
    /// 512, every second, 10 s per export.
    pub fn new(endpoint: http::Uri, service_name: &str) -> Self {
        Self {
            endpoint,
            protocol: OtlpProtocol::HttpProtobuf,
            sampling: 0.01,
            service_name: service_name.to_owned(),
            queue: 4096,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Counters of the trace pipeline.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Spans accepted by the collector.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost in failed exports.
    pub failed: AtomicU64,
}

/// The span sink shared by the layers.
#[derive(Debug)]
pub struct Tracer {
    threshold: u64,
    tx: mpsc::Sender<SpanRecord>,
    stats: Arc<TraceStats>,
}

/// A finished span, waiting for export.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) name: String,
    pub(crate) server: bool,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) error: bool,
}

impl Tracer {
    /// Starts the exporter task (on the current tokio runtime) and returns the sink.
    pub fn start(config: TraceConfig) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(TraceStats::default());
        let ratio = config.sampling.clamp(0.0, 1.0);
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * u64::MAX as f64) as u64
        };
        tokio::spawn(export::run(config, rx, stats.clone()));
        Arc::new(Self {
            threshold,
            tx,
            stats,
        })
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<TraceStats> {
        &self.stats
    }

    fn sample(&self) -> bool {
        self.threshold == u64::MAX || (self.threshold > 0 && random_u64() < self.threshold)
    }

    pub(crate) fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The trace a request belongs to and its server span.
///
/// - Inserted by: [`TraceLayer`]. - Read by: [`ClientSpanLayer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The server span (the parent of client spans).
    pub span_id: [u8; 8],
    /// Whether spans are recorded.
    pub sampled: bool,
    /// The request came with B3 headers, which are then rewritten too.
    pub b3: B3Form,
}

/// Which B3 form a request used.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum B3Form {
    /// None.
    None,
    /// `b3: trace-span-sampled`.
    Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`.
    Multi,
}

/// A parent context read from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The caller's span.
    pub span_id: [u8; 8],
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
    /// Where it came from.
    pub b3: B3Form,
}

fn hex_into(s: &str, out: &mut [u8]) -> bool {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        match (d(b[2 * i]), d(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    out.iter().any(|x| *x != 0)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Parses W3C `traceparent` (version 00, and later versions by their first four fields).
pub fn parse_traceparent(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    if version.len() != 2 || version == "ff" || !lower_hex(version) {
        return None;
    }
    if version == "00" && (parts.next().is_some() || v.trim().len() != 55) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut fl = [0u8; 1];
    if !hex_into(trace, &mut trace_id) || !hex_into(span, &mut span_id) {
        return None;
    }
    if flags.len() != 2 || (!hex_into(flags, &mut fl) && flags != "00") {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(fl[0] & 1 == 1),
        b3: B3Form::None,
    })
}

fn b3_trace(s: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match s.len() {
        32 => hex_into(s, &mut id).then_some(id),
        16 => hex_into(s, &mut id[8..]).then_some(id),
        _ => None,
    }
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Reads the parent context: `traceparent` first, then B3.
pub fn extract(headers: &HeaderMap) -> Option<Parent> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(p) = get("traceparent").and_then(parse_traceparent) {
        return Some(p);
    }
    if let Some(b3) = get("b3") {
        let mut f = b3.split('-');
        let (t, s) = (f.next()?, f.next()?);
        let mut span_id = [0u8; 8];
        let trace_id = b3_trace(t)?;
        if !hex_into(s, &mut span_id) {
            return None;
        }
        return Some(Parent {
            trace_id,
            span_id,
            sampled: f.next().and_then(b3_sampled),
            b3: B3Form::Single,
        });
    }
    let trace_id = b3_trace(get("x-b3-traceid")?)?;
    let mut span_id = [0u8; 8];
    if !hex_into(get("x-b3-spanid")?, &mut span_id) {
        return None;
    }
    let sampled = if get("x-b3-flags") == Some("1") {
        Some(true)
    } else {
        get("x-b3-sampled").and_then(b3_sampled)
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        b3: B3Form::Multi,
    })
}

/// Writes the context for the next hop: `traceparent` naming `span_id`, and B3 headers when
/// the request came with them.
pub fn inject(headers: &mut HeaderMap, ctx: &TraceContext, span_id: &[u8; 8]) {
    let flags = if ctx.sampled { "01" } else { "00" };
    let tp = format!("00-{}-{}-{flags}", hex(&ctx.trace_id), hex(span_id));
    if let Ok(v) = HeaderValue::from_str(&tp) {
        headers.insert("traceparent", v);
    }
    let sampled = if ctx.sampled { "1" } else { "0" };
    match ctx.b3 {
        B3Form::None => {}
        B3Form::Single => {
            let v = format!("{}-{}-{sampled}", hex(&ctx.trace_id), hex(span_id));
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert("b3", v);
            }
        }
        B3Form::Multi => {
            for (name, value) in [
                ("x-b3-traceid", hex(&ctx.trace_id)),
                ("x-b3-spanid", hex(span_id)),
                ("x-b3-parentspanid", hex(&ctx.span_id)),
                ("x-b3-sampled", sampled.to_owned()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
            headers.remove("x-b3-flags");
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
        h.finish() | 1
    });
}

/// A fast per-thread random number (xorshift64*, seeded from the OS-keyed hasher): span ids
/// need uniqueness, not secrecy.
fn random_u64() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

pub(crate) fn new_span_id() -> [u8; 8] {
    loop {
        let v = random_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

pub(crate) fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&new_span_id());
    id[8..].copy_from_slice(&new_span_id());
    id
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn attr_str(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

pub(crate) fn attr_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_and_b3_parsing() {
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(p.sampled, Some(true));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let p = extract(&h).unwrap();
        assert_eq!((p.b3, p.sampled), (B3Form::Single, Some(true)));
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("a3ce929d0e0e4736"));
        h.insert("x-b3-spanid", HeaderValue::from_static("00f067aa0ba902b7"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let p = extract(&h).unwrap();
        assert_eq!(hex(&p.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert_eq!((p.b3, p.sampled), (B3Form::Multi, Some(false)));
        let ctx = TraceContext {
            trace_id: p.trace_id,
            span_id: p.span_id,
            sampled: false,
            b3: p.b3,
        };
        inject(&mut h, &ctx, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            h["traceparent"],
            "00-0000000000000000a3ce929d0e0e4736-0102030405060708-00"
        );
        assert_eq!(h["x-b3-spanid"], "0102030405060708");
        assert_eq!(h["x-b3-parentspanid"], "00f067aa0ba902b7");
    }

    #[test]
    fn ids_are_distinct() {
        let a: std::collections::HashSet<[u8; 8]> = (0..10_000).map(|_| new_span_id()).collect();
        assert_eq!(a.len(), 10_000);
    }
}
