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

mod metrics;

pub use metrics::{Label, Metrics, TunnelMetrics};

use http::{Request, Response};
use metrics::{RequestInfo, record};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::BoxBody;
use crate::ctx::TelemetrySlot;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

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
    record: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl<B> CountResponse<B> {
    fn finish(&mut self) {
        if let Some(response_bytes) = self.record.take() {
            response_bytes.observe(self.bytes as f64);
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
            let series = record(this.metrics, this.slot, &info, rsp, this.start.elapsed());
            match rsp.body().size_hint().exact() {
                Some(n) => series.response_bytes.observe(n as f64),
                None => {
                    // Streaming: counted as it goes, recorded when it ends.
                    let body = std::mem::replace(rsp.body_mut(), B::from(BoxBody::empty()));
                    *rsp.body_mut() = B::from(BoxBody::new(CountResponse {
                        inner: body,
                        bytes: 0,
                        record: Some(series.response_bytes),
                    }));
                }
            }
        }
        Poll::Ready(result)
    }
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
        // The series exists from the request on (its handles are resolved once); its
        // sample comes only when the body has ended.
        let count = text
            .lines()
            .find(|l| l.starts_with("istio_response_bytes_count{"))
            .unwrap();
        assert!(count.ends_with(" 0"), "recorded before the end: {count}");
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
