//! `TelemetryLayer`: Istio's standard request metrics and an access log line per request.
//!
//! Metrics are kept with `prometheus-client` (the Prometheus project's own Rust client:
//! label sets are typed, encoding is the text format Prometheus scrapes) under Istio's names,
//! so existing dashboards work: `istio_requests_total` and
//! `istio_request_duration_milliseconds` with `reporter`, `source_workload`,
//! `destination_service`, `destination_service_name`, `response_code`, `response_flags`,
//! `request_protocol`, plus `egress_refusals_total{reason}` for every refusal the gateway
//! makes. Destinations the registry does not know are labelled `PassthroughCluster`
//! (ALLOW_ANY) or `BlackHoleCluster` (refused), as Istio does, so label values stay bounded.
//!
//! The layer sits outermost: it sees every answer, refusals and mapped errors included.
//! Deeper layers report the service and route through a shared [`TelemetrySlot`].

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::BoxBody;
use crate::ctx::{Failure, FaultInjected, Outcome, Rejection, RejectionKind, TelemetrySlot};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A label value that is cheap to clone.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
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
struct ReasonLabels {
    reason: &'static str,
}

/// The metrics of the gateway; encode them with [`Metrics::encode`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    refusals: Family<ReasonLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
    workload: Label,
    /// `unknown`, shared so that an unlabelled request allocates nothing.
    unknown: Arc<str>,
    access_log: bool,
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

impl Metrics {
    /// New, empty metrics; `workload` is the `source_workload` label (the gateway's name);
    /// `access_log` turns the per-request `egress::access` log line on.
    pub fn new(workload: &str, access_log: bool) -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0, 30000.0, 60000.0, 300000.0,
            ])
        });
        // Istio's byte buckets: 1 to 10^8, by decades.
        let bytes = || {
            Histogram::new([
                1.0,
                10.0,
                100.0,
                1_000.0,
                10_000.0,
                100_000.0,
                1_000_000.0,
                10_000_000.0,
                100_000_000.0,
            ])
        };
        let request_bytes = Family::<RequestLabels, Histogram>::new_with_constructor(bytes);
        let response_bytes = Family::<RequestLabels, Histogram>::new_with_constructor(bytes);
        let refusals = Family::<ReasonLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let limits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "egress_limit_hits",
            "Times a configured limit refused work (max_connections, ...)",
            limits.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections (CONNECT tunnels) opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections (CONNECT tunnels) closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent upstream through tunnels",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from upstream through tunnels",
            tcp_received.clone(),
        );
        registry.register(
            "istio_requests",
            "Requests through the gateway",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            response_bytes.clone(),
        );
        registry.register(
            "egress_refusals",
            "Requests the gateway refused, by x-egress-denied reason",
            refusals.clone(),
        );
        Arc::new(Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            refusals,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            limits,
            workload: Label(workload.into()),
            unknown: Arc::from("unknown"),
            access_log,
            access_file: None,
        })
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

/// Records metrics and an access log line for every request.
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    metrics: Arc<Metrics>,
}

impl TelemetryLayer {
    /// The layer.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`TelemetryLayer`].
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for Telemetry<S>
where
    S: Service<Request<CountBody<ReqB>>, Response = Response<RspB>>,
    RspB: Body<Data = Bytes> + From<BoxBody> + Unpin + Send + 'static,
    RspB::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let slot = Arc::new(TelemetrySlot::default());
        req.extensions_mut().insert(slot.clone());
        // Path and authority are copied only for the access log: without it the request's
        // own strings are not duplicated.
        let logged = self.metrics.access_log;
        let info = RequestInfo {
            principal: req
                .extensions()
                .get::<crate::ctx::SourcePrincipal>()
                .map(|p| p.0.clone()),
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .filter(|_| logged)
                .map(|p| p.as_str().to_owned()),
            authority: req
                .uri()
                .authority()
                .filter(|_| logged)
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    if !logged {
                        return None;
                    }
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                }),
            version: req.version(),
        };
        let req = req.map(|inner| CountBody {
            inner,
            slot: slot.clone(),
        });
        ResponseFuture {
            future: self.inner.call(req),
            metrics: self.metrics.clone(),
            slot,
            info: Some(info),
            start: Instant::now(),
        }
    }
}

pin_project! {
    /// A request body that counts its bytes into the request's [`TelemetrySlot`].
    pub struct CountBody<B> {
        #[pin]
        inner: B,
        slot: Arc<TelemetrySlot>,
    }
}

impl<B> Body for CountBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            this.slot.add_request_bytes(d.len() as u64);
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body of unknown length that records its size when it ends (or is dropped).
struct CountResponse<B> {
    inner: B,
    bytes: u64,
    record: Option<(Arc<Metrics>, RequestLabels)>,
}

impl<B> CountResponse<B> {
    fn finish(&mut self) {
        if let Some((m, labels)) = self.record.take() {
            m.response_bytes
                .get_or_create(&labels)
                .observe(self.bytes as f64);
        }
    }
}

impl<B> Drop for CountResponse<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for CountResponse<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            _ => self.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
struct RequestInfo {
    principal: Option<Arc<str>>,
    method: http::Method,
    path: Option<String>,
    authority: Option<String>,
    version: http::Version,
}

pin_project! {
    /// The future of [`Telemetry`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        metrics: Arc<Metrics>,
        slot: Arc<TelemetrySlot>,
        info: Option<RequestInfo>,
        start: Instant,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + From<BoxBody> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.future.poll(cx));
        if let (Ok(rsp), Some(info)) = (&mut result, this.info.take()) {
            let labels = record(this.metrics, this.slot, &info, rsp, this.start.elapsed());
            match rsp.body().size_hint().exact() {
                Some(n) => this
                    .metrics
                    .response_bytes
                    .get_or_create(&labels)
                    .observe(n as f64),
                None => {
                    // Streaming: counted as it goes, recorded when it ends.
                    let metrics = this.metrics.clone();
                    let body = std::mem::replace(rsp.body_mut(), B::from(BoxBody::empty()));
                    *rsp.body_mut() = B::from(BoxBody::new(CountResponse {
                        inner: body,
                        bytes: 0,
                        record: Some((metrics, labels)),
                    }));
                }
            }
        }
        Poll::Ready(result)
    }
}

fn record<B>(
    metrics: &Metrics,
    slot: &TelemetrySlot,
    info: &RequestInfo,
    rsp: &Response<B>,
    elapsed: std::time::Duration,
) -> RequestLabels {
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
    metrics.requests.get_or_create(&labels).inc();
    metrics.duration.get_or_create(&labels).observe(ms);
    metrics
        .request_bytes
        .get_or_create(&labels)
        .observe(slot.request_bytes() as f64);
    if let Some(r) = denied {
        metrics
            .refusals
            .get_or_create(&ReasonLabels { reason: r.token() })
            .inc();
    }
    if !metrics.access_log {
        return labels;
    }
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
            cluster: &cluster(&service, slot),
            route: slot.route().map_or("-", |r| &**r),
            upstream_host: slot.upstream(),
        });
        return labels;
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
        upstream_cluster = %cluster(&service, slot),
        upstream_host = %slot.upstream().map_or_else(|| "-".to_owned(), |a| a.to_string()),
        route = slot.route().map_or("-", |r| &**r),
        "access"
    );
    labels
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A response whose length is not known up front is counted as it streams and recorded
    /// when it ends; a request body is counted as it is read.
    #[tokio::test]
    async fn streaming_bodies_are_counted() {
        let metrics = Metrics::new("gw", false);
        let svc = TelemetryLayer::new(metrics.clone()).layer(tower::service_fn(
            |req: Request<CountBody<http_body_util::Full<Bytes>>>| async move {
                let got = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(got.len(), 4);
                let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
                tokio::spawn(async move {
                    for chunk in ["abc", "defgh"] {
                        let _ = tx.send_data(Bytes::from_static(chunk.as_bytes())).await;
                    }
                });
                Ok::<_, BoxError>(Response::new(BoxBody::new(rx)))
            },
        ));
        let req = Request::post("http://x/")
            .body(http_body_util::Full::new(Bytes::from_static(b"wxyz")))
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        let text = metrics.encode();
        assert!(
            text.contains("istio_request_bytes_sum{") && text.contains("} 4.0"),
            "{text}"
        );
        assert!(
            !text.contains("istio_response_bytes_count{"),
            "recorded before the end: {text}"
        );
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 8);
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_response_bytes_sum{"))
            .unwrap();
        assert!(line.ends_with(" 8.0"), "{line}");
    }
}
