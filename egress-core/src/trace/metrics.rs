//! Metrics over OTLP: every `interval`, the same OpenMetrics exposition `/metrics` serves
//! is read back into OTLP `Sum` (counters, cumulative and monotonic), `Gauge` and
//! `Histogram` points and exported to the collector, so one set of numbers backs both the
//! scrape and the push.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::export::{OtlpProtocol, client, post, signal_uri};
use super::{attr_str, now_nanos};

const GRPC_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// What to export, where, how often.
pub struct MetricsExport {
    /// The collector.
    pub endpoint: http::Uri,
    /// HTTP/protobuf or gRPC.
    pub protocol: OtlpProtocol,
    /// How often.
    pub interval: Duration,
    /// `service.name`.
    pub service_name: String,
    /// The OpenMetrics text to export (what `/metrics` serves).
    pub source: Arc<dyn Fn() -> String + Send + Sync>,
    /// The TLS client for an `https://` endpoint.
    pub tls: Option<Arc<dyn crate::transport::ProxyTls>>,
}

/// Starts the periodic export on the current tokio runtime.
pub fn spawn_metrics_export(config: MetricsExport) {
    tokio::spawn(async move {
        let timeout = Duration::from_secs(10);
        let client = client(config.protocol, timeout, config.tls.clone());
        let uri = signal_uri(&config.endpoint, config.protocol, "metrics", GRPC_PATH);
        let start = now_nanos();
        let mut tick = tokio::time::interval(config.interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let text = (config.source)();
            let body = encode(&config.service_name, &text, start, now_nanos());
            if let Err(error) = post(&client, &uri, config.protocol, body, timeout).await {
                tracing::warn!(%error, endpoint = %uri, "metrics export failed");
            }
        }
    });
}

#[derive(Default)]
struct Family {
    kind: String,
    help: String,
    /// Label set (without `le`) -> value, or histogram parts.
    numbers: BTreeMap<Vec<(String, String)>, f64>,
    histograms: BTreeMap<Vec<(String, String)>, Hist>,
}

#[derive(Default)]
struct Hist {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Parses `name{a="b",…} value`.
fn sample(line: &str) -> Option<(&str, Vec<(String, String)>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let rest = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let bytes = rest;
    let mut key_start = 0;
    while let Some((i, c)) = chars.next() {
        if c != '=' {
            continue;
        }
        let key = bytes[key_start..i].trim_start_matches(',').to_owned();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut v = String::new();
        loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => v.push('\n'),
                    other => v.push(other),
                },
                (j, '"') => {
                    key_start = j + 1;
                    break;
                }
                (_, c) => v.push(c),
            }
        }
        labels.push((key, v));
    }
    Some((name, labels, value))
}

fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                families.entry(name.to_owned()).or_default().help = help.to_owned();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, mut labels, value)) = sample(line) else {
            continue;
        };
        // The family a sample belongs to: counters end in `_total`, histograms in
        // `_bucket`/`_sum`/`_count`.
        let (base, part) = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| {
                let b = name.strip_suffix(s)?;
                families.contains_key(b).then_some((b, *s))
            })
            .unwrap_or((name, ""));
        let Some(f) = families.get_mut(base) else {
            continue;
        };
        if f.kind == "histogram" {
            let le = labels
                .iter()
                .position(|(k, _)| k == "le")
                .map(|i| labels.remove(i).1);
            let h = f.histograms.entry(labels).or_default();
            match part {
                "_bucket" => {
                    let bound = match le.as_deref() {
                        Some("+Inf") | None => f64::INFINITY,
                        Some(b) => b.parse().unwrap_or(f64::INFINITY),
                    };
                    h.buckets.push((bound, value as u64));
                }
                "_sum" => h.sum = value,
                "_count" => h.count = value as u64,
                _ => {}
            }
        } else {
            f.numbers.insert(labels, value);
        }
    }
    families
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| attr_str(k, v.clone())).collect()
}

/// The OTLP message for one exposition.
pub(crate) fn encode(service: &str, text: &str, start: u64, now: u64) -> Vec<u8> {
    let mut metrics = Vec::new();
    for (name, f) in parse(text) {
        let data = match f.kind.as_str() {
            "counter" => metric::Data::Sum(Sum {
                data_points: f
                    .numbers
                    .iter()
                    .map(|(l, v)| number(l, *v, start, now))
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            "gauge" => metric::Data::Gauge(Gauge {
                data_points: f
                    .numbers
                    .iter()
                    .map(|(l, v)| number(l, *v, start, now))
                    .collect(),
            }),
            "histogram" => metric::Data::Histogram(Histogram {
                data_points: f
                    .histograms
                    .iter()
                    .map(|(l, h)| {
                        let mut buckets = h.buckets.clone();
                        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        // Cumulative counts per upper bound -> counts per bucket.
                        let mut prev = 0;
                        let counts: Vec<u64> = buckets
                            .iter()
                            .map(|(_, c)| {
                                let n = c.saturating_sub(prev);
                                prev = *c;
                                n
                            })
                            .collect();
                        HistogramDataPoint {
                            attributes: attributes(l),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: counts,
                            explicit_bounds: buckets
                                .iter()
                                .map(|(b, _)| *b)
                                .filter(|b| b.is_finite())
                                .collect(),
                            ..Default::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            _ => continue,
        };
        metrics.push(Metric {
            name: if f.kind == "counter" {
                format!("{name}_total")
            } else {
                name
            },
            description: f.help,
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attr_str("service.name", service.to_owned())],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "egress-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn number(labels: &[(String, String)], v: f64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn exposition_to_otlp() {
        let text = "# HELP istio_requests Requests.\n# TYPE istio_requests counter\nistio_requests_total{reporter=\"source\",destination_service=\"a \\\"b\\\"\"} 3\n# TYPE d histogram\nd_sum{x=\"1\"} 7.5\nd_count{x=\"1\"} 3\nd_bucket{x=\"1\",le=\"1.0\"} 1\nd_bucket{x=\"1\",le=\"10.0\"} 3\nd_bucket{x=\"1\",le=\"+Inf\"} 3\n# TYPE g gauge\ng 2\n# EOF\n";
        let msg = ExportMetricsServiceRequest::decode(&encode("gw", text, 1, 2)[..]).unwrap();
        let metrics = &msg.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["d", "g", "istio_requests_total"]);
        let Some(metric::Data::Histogram(h)) = &metrics[0].data else {
            panic!()
        };
        assert_eq!(h.data_points[0].bucket_counts, [1, 2, 0]);
        assert_eq!(h.data_points[0].explicit_bounds, [1.0, 10.0]);
        assert_eq!(
            (h.data_points[0].count, h.data_points[0].sum),
            (3, Some(7.5))
        );
        let Some(metric::Data::Sum(s)) = &metrics[2].data else {
            panic!()
        };
        assert!(s.is_monotonic);
        let p = &s.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(3.0)));
        let labels: Vec<(String, String)> = p
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().unwrap().value.as_ref().unwrap() {
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                        s.clone()
                    }
                    _ => String::new(),
                };
                (kv.key.clone(), v)
            })
            .collect();
        assert!(
            labels.contains(&("destination_service".into(), "a \"b\"".into())),
            "{labels:?}"
        );
    }
}
