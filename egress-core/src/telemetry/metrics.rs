//! The metrics under Istio's names, and what one answered request records into them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::time::Instant;

use crate::ctx::{Failure, FaultInjected, Outcome, Rejection, RejectionKind, TelemetrySlot};
use http::Response;

/// A label value that is cheap to clone.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    reporter: &'static str,
    source_workload: Label,
    source_principal: Label,
    destination_service: Label,
    destination_service_name: Label,
    response_code: u16,
    response_flags: &'static str,
    request_protocol: &'static str,
    egress_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    reporter: &'static str,
    source_workload: Label,
    destination_service: Label,
    destination_service_name: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DryRunLabels {
    /// Istio's label names (`deny` / `allow`, `denied` / `allowed`).
    authz_dry_run_action: &'static str,
    authz_dry_run_result: &'static str,
    policy: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The request series of one label set (handles into the four request families).
#[derive(Clone, Debug)]
pub(super) struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    /// Observed when the response body's size is known (at once, or when it ends).
    pub(super) response_bytes: Histogram,
}

/// The metrics of the gateway; encode them with [`Metrics::encode`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    /// The four series of each label set, resolved once: a request then hashes its labels
    /// once instead of once per family. The handles share their values with the families.
    series: std::sync::RwLock<std::collections::HashMap<RequestLabels, RequestSeries>>,
    refusals: Family<ReasonLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
    dry_runs: Family<DryRunLabels, Counter>,
    workload: Label,
    /// `unknown`, shared so that an unlabelled request allocates nothing.
    unknown: Arc<str>,
    pub(super) access_log: bool,
    access_file: Option<Arc<crate::access_log::AccessLogFile>>,
}

/// One tunnel's (CONNECT, TLS passthrough, TCP) metrics and access log line;
/// [`Metrics::tunnel_opened`] starts it.
#[derive(Debug)]
pub struct TunnelMetrics {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    kind: &'static str,
    authority: String,
    start: Instant,
}

impl TunnelMetrics {
    /// Records the close of the tunnel and the bytes each way (client to upstream is
    /// `sent`, upstream to client `received`, from the gateway's view as Istio's reporter).
    pub fn closed(self, sent: u64, received: u64) {
        self.end(None, sent, received);
    }

    /// [`closed`](Self::closed), for a tunnel the gateway ended for `outcome`.
    pub fn closed_because(self, outcome: Outcome, sent: u64, received: u64) {
        self.end(Some(outcome), sent, received);
    }

    fn end(self, outcome: Option<Outcome>, sent: u64, received: u64) {
        let m = &self.metrics;
        m.tcp_closed.get_or_create(&self.labels).inc();
        m.tcp_sent.get_or_create(&self.labels).inc_by(sent);
        m.tcp_received.get_or_create(&self.labels).inc_by(received);
        m.log_connection(
            self.kind,
            &self.authority,
            outcome,
            &self.labels.destination_service.0,
            self.start.elapsed(),
            sent,
            received,
        );
    }
}

/// Istio's duration buckets, in milliseconds.
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0,
    ])
}

/// Istio's byte buckets: 1 to 10^8, by decades.
fn bytes_histogram() -> Histogram {
    Histogram::new([1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8])
}

/// Registers a metric family under `name` and returns it (families share their state with
/// their clones).
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    family: M,
) -> M {
    registry.register(name, help, family.clone());
    family
}

impl Metrics {
    /// New, empty metrics; `workload` is the `source_workload` label (the gateway's name);
    /// `access_log` turns the per-request `egress::access` log line on.
    pub fn new(workload: &str, access_log: bool) -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = register(
            &mut registry,
            "istio_requests",
            "Requests through the gateway",
            Family::<RequestLabels, Counter>::default(),
        );
        let duration = register(
            &mut registry,
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            Family::<RequestLabels, Histogram>::new_with_constructor(duration_histogram),
        );
        let request_bytes = register(
            &mut registry,
            "istio_request_bytes",
            "Request body sizes in bytes",
            Family::<RequestLabels, Histogram>::new_with_constructor(bytes_histogram),
        );
        let response_bytes = register(
            &mut registry,
            "istio_response_bytes",
            "Response body sizes in bytes",
            Family::<RequestLabels, Histogram>::new_with_constructor(bytes_histogram),
        );
        let refusals = register(
            &mut registry,
            "egress_refusals",
            "Requests the gateway refused, by x-egress-denied reason",
            Family::<ReasonLabels, Counter>::default(),
        );
        let tcp_opened = register(
            &mut registry,
            "istio_tcp_connections_opened",
            "TCP connections (CONNECT tunnels) opened",
            Family::<TcpLabels, Counter>::default(),
        );
        let tcp_closed = register(
            &mut registry,
            "istio_tcp_connections_closed",
            "TCP connections (CONNECT tunnels) closed",
            Family::<TcpLabels, Counter>::default(),
        );
        let tcp_sent = register(
            &mut registry,
            "istio_tcp_sent_bytes",
            "Bytes sent upstream through tunnels",
            Family::<TcpLabels, Counter>::default(),
        );
        let tcp_received = register(
            &mut registry,
            "istio_tcp_received_bytes",
            "Bytes received from upstream through tunnels",
            Family::<TcpLabels, Counter>::default(),
        );
        let limits = register(
            &mut registry,
            "egress_limit_hits",
            "Times a configured limit refused work (max_connections, ...)",
            Family::<LimitLabels, Counter>::default(),
        );
        let dry_runs = register(
            &mut registry,
            "egress_authz_dry_run",
            "Would-be decisions of dry-run AuthorizationPolicies (istio.io/dry-run), by shadow engine, decision and deciding policy",
            Family::<DryRunLabels, Counter>::default(),
        );
        Arc::new(Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            series: std::sync::RwLock::default(),
            refusals,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            limits,
            dry_runs,
            workload: Label(workload.into()),
            unknown: Arc::from("unknown"),
            access_log,
            access_file: None,
        })
    }

    /// The series of `labels`, made on first use.
    fn series(&self, labels: &RequestLabels) -> RequestSeries {
        if let Some(s) = self.series.read().ok().and_then(|m| m.get(labels).cloned()) {
            return s;
        }
        let s = RequestSeries {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        };
        if let Ok(mut m) = self.series.write() {
            m.insert(labels.clone(), s.clone());
        }
        s
    }

    /// Counts what dry-run policies would have decided: one sample per shadow engine.
    pub fn count_dry_run(&self, d: &crate::ctx::DryRun) {
        for (engine, r) in d.results() {
            let policy = r.policy.clone().unwrap_or_else(|| Arc::from("-"));
            self.dry_runs
                .get_or_create(&DryRunLabels {
                    authz_dry_run_action: engine,
                    authz_dry_run_result: r.decision(),
                    policy: Label(policy),
                })
                .inc();
        }
    }

    /// The same metrics with the access log written to a file by
    /// [`AccessLogFile`](crate::access_log::AccessLogFile) (instead of `tracing`).
    pub fn with_access_file(
        workload: &str,
        file: Arc<crate::access_log::AccessLogFile>,
    ) -> Arc<Self> {
        let mut m = Self::new(workload, true);
        if let Some(m) = Arc::get_mut(&mut m) {
            m.access_file = Some(file);
        }
        m
    }

    /// The access log file, if one is written.
    pub fn access_file(&self) -> Option<&Arc<crate::access_log::AccessLogFile>> {
        self.access_file.as_ref()
    }

    /// Counts a refusal made outside the request stack (the HTTP parser's own 400 and 431).
    pub fn refused(&self, outcome: Outcome) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: outcome.token(),
            })
            .inc();
    }

    /// Counts one refusal by a limit (`max_connections`, ...).
    pub fn limit_hit(&self, limit: &'static str) {
        self.limits.get_or_create(&LimitLabels { limit }).inc();
    }

    /// One access log line for a connection (`kind`: `CONNECT`, `TLS`, `TCP`) that ended,
    /// or was refused (`reason`), when the access log is on.
    #[allow(clippy::too_many_arguments, reason = "the fields of one log line")]
    pub fn log_connection(
        &self,
        kind: &'static str,
        authority: &str,
        outcome: Option<Outcome>,
        cluster: &str,
        duration: std::time::Duration,
        sent: u64,
        received: u64,
    ) {
        if !self.access_log {
            return;
        }
        let ms = duration.as_secs_f64() * 1000.0;
        let reason = outcome.map_or("-", Outcome::token);
        let flags = outcome.map_or("-", Outcome::flags);
        if let Some(file) = &self.access_file {
            file.log(&crate::access_log::Entry {
                method: kind,
                path: "-",
                authority,
                status: 0,
                flags,
                reason,
                duration_ms: ms,
                bytes_received: sent,
                bytes_sent: Some(received),
                cluster: &cluster,
                route: "-",
                upstream_host: None,
                dry_run: None,
            });
            return;
        }
        tracing::info!(
            target: "egress::access",
            method = kind,
            authority,
            flags,
            reason,
            duration_ms = format_args!("{ms:.3}"),
            bytes_received = sent,
            bytes_sent = received,
            upstream_cluster = cluster,
            "access"
        );
    }

    /// Counts a tunnel as opened, for the service the registry check reported.
    pub fn tunnel_opened(
        self: &Arc<Self>,
        slot: Option<&TelemetrySlot>,
        kind: &'static str,
        authority: String,
    ) -> TunnelMetrics {
        let (service, name) = slot
            .and_then(TelemetrySlot::service)
            .cloned()
            .unwrap_or_else(unknown);
        let labels = TcpLabels {
            reporter: "source",
            source_workload: self.workload.clone(),
            destination_service: Label(service),
            destination_service_name: Label(name),
        };
        self.tcp_opened.get_or_create(&labels).inc();
        TunnelMetrics {
            metrics: self.clone(),
            labels,
            kind,
            authority,
            start: Instant::now(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[derive(Debug)]
/// What the access log and labels need of the request, taken before it is passed on.
pub(super) struct RequestInfo {
    pub(super) principal: Option<Arc<str>>,
    pub(super) method: http::Method,
    pub(super) path: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) version: http::Version,
}

/// Counts one answered request and writes its access log line; the series are returned
/// for the response size, recorded when the body ends.
pub(super) fn record<B>(
    metrics: &Metrics,
    slot: &TelemetrySlot,
    info: &RequestInfo,
    rsp: &Response<B>,
    elapsed: std::time::Duration,
) -> RequestSeries {
    // What the gateway answered, as typed facts: never re-read from the headers that only
    // render them for the client.
    let ext = rsp.extensions();
    let denied = ext.get::<Rejection>().map(Rejection::kind);
    let failed = ext.get::<Failure>().copied();
    let outcome = denied
        .map(Outcome::Denied)
        .or(failed.and_then(|f| f.0).map(Outcome::Failed));
    let reason = match (outcome, failed) {
        (Some(o), _) => o.token(),
        (None, Some(f)) => f.token(),
        (None, None) => "-",
    };
    let fault = ext.get::<FaultInjected>().is_some();
    let (service, name) = match slot.service() {
        Some((h, n)) => (h.clone(), n.clone()),
        None if denied == Some(RejectionKind::NotInRegistry) => blackhole(),
        None => unknown(),
    };
    let labels = RequestLabels {
        reporter: "source",
        source_workload: metrics.workload.clone(),
        source_principal: Label(
            info.principal
                .clone()
                .unwrap_or_else(|| metrics.unknown.clone()),
        ),
        destination_service: Label(service.clone()),
        destination_service_name: Label(name),
        response_code: rsp.status().as_u16(),
        response_flags: if fault {
            "FI"
        } else {
            outcome.map_or("-", Outcome::flags)
        },
        request_protocol: if info.version >= http::Version::HTTP_2 {
            "grpc_or_http2"
        } else {
            "http"
        },
        egress_reason: reason,
    };
    let ms = elapsed.as_secs_f64() * 1000.0;
    let series = metrics.series(&labels);
    series.requests.inc();
    series.duration.observe(ms);
    series.request_bytes.observe(slot.request_bytes() as f64);
    if let Some(d) = slot.dry_run() {
        metrics.count_dry_run(d);
    }
    if let Some(r) = denied {
        metrics
            .refusals
            .get_or_create(&ReasonLabels { reason: r.token() })
            .inc();
    }
    if metrics.access_log {
        access_log(metrics, slot, info, rsp, &labels, ms);
    }
    series
}

/// The request's access log line: to the access log file when there is one, else as a
/// `tracing` event of target `egress::access`.
fn access_log<B>(
    metrics: &Metrics,
    slot: &TelemetrySlot,
    info: &RequestInfo,
    rsp: &Response<B>,
    labels: &RequestLabels,
    ms: f64,
) {
    let reason = labels.egress_reason;
    let service = &labels.destination_service.0;
    if let Some(file) = &metrics.access_file {
        file.log(&crate::access_log::Entry {
            method: info.method.as_str(),
            path: info.path.as_deref().unwrap_or("-"),
            authority: info.authority.as_deref().unwrap_or("-"),
            status: rsp.status().as_u16(),
            flags: labels.response_flags,
            reason,
            duration_ms: ms,
            bytes_received: slot.request_bytes(),
            bytes_sent: rsp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            cluster: &cluster(service, slot),
            route: slot.route().map_or("-", |r| &**r),
            upstream_host: slot.upstream(),
            dry_run: slot.dry_run(),
        });
        return;
    }
    tracing::info!(
        target: "egress::access",
        method = %info.method,
        path = info.path.as_deref().unwrap_or("-"),
        authority = info.authority.as_deref().unwrap_or("-"),
        status = rsp.status().as_u16(),
        flags = labels.response_flags,
        reason,
        duration_ms = format_args!("{ms:.3}"),
        bytes_received = slot.request_bytes(),
        bytes_sent = %rsp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        upstream_cluster = %cluster(service, slot),
        upstream_host = %slot.upstream().map_or_else(|| "-".to_owned(), |a| a.to_string()),
        route = slot.route().map_or("-", |r| &**r),
        dry_run = slot.dry_run().map(tracing::field::display),
        "access"
    );
}

fn blackhole() -> (Arc<str>, Arc<str>) {
    ("BlackHoleCluster".into(), "BlackHoleCluster".into())
}

fn unknown() -> (Arc<str>, Arc<str>) {
    ("unknown".into(), "unknown".into())
}

/// Istio's `outbound|port|subset|host` cluster name form, for the access log; written
/// straight into the line, never into a string of its own.
pub(crate) struct Cluster<'a> {
    service: &'a str,
    slot: &'a TelemetrySlot,
}

impl std::fmt::Display for Cluster<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.slot.service(), self.slot.cluster()) {
            (Some(_), Some((port, subset))) => write!(
                f,
                "outbound|{port}|{}|{}",
                subset.as_deref().unwrap_or(""),
                self.service
            ),
            (Some(_), None) => write!(f, "outbound|||{}", self.service),
            _ => f.write_str(self.service),
        }
    }
}

fn cluster<'a>(service: &'a str, slot: &'a TelemetrySlot) -> Cluster<'a> {
    Cluster { service, slot }
}
