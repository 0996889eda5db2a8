//! `TraceLayer`: the server span of each request, and the [`TraceContext`] it lives in.
//!
//! - Reads: `traceparent` / B3 headers, [`Destination`], [`ClientAddr`]. Inserts:
//!   [`TraceContext`].
//! - The span ends when the response headers are ready; it carries the method, path, host,
//!   port, peer, status and the gateway's reason token for refusals and errors.

use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use super::{
    B3Form, SpanRecord, TraceContext, Tracer, attr_int, attr_str, extract, new_span_id,
    new_trace_id, now_nanos,
};
use crate::ctx::{ClientAddr, Destination, DryRun, Failure, Rejection, TelemetrySlot};

/// Starts a trace context per request and records its server span when sampled.
#[derive(Clone, Debug)]
pub struct TraceLayer {
    tracer: Arc<Tracer>,
}

impl TraceLayer {
    /// The layer over a tracer.
    pub fn new(tracer: Arc<Tracer>) -> Self {
        Self { tracer }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            tracer: self.tracer.clone(),
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
    tracer: Arc<Tracer>,
}

struct Pending {
    record: SpanRecord,
    /// Where deeper layers report the dry-run decisions the span carries.
    slot: Option<Arc<TelemetrySlot>>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for TraceService<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let parent = extract(req.headers());
        let sampled = match parent.and_then(|p| p.sampled) {
            Some(s) => s,
            None => self.tracer.sample(),
        };
        if parent.is_none() && !sampled {
            // Nobody upstream of the gateway traces this request and the gateway does not
            // either: there is no trace to continue, and the request goes on untouched.
            return TraceFuture {
                future: self.inner.call(req),
                tracer: self.tracer.clone(),
                pending: None,
            };
        }
        let ctx = TraceContext {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            sampled,
            b3: parent.map_or(B3Form::None, |p| p.b3),
        };
        req.extensions_mut().insert(ctx);
        let pending = sampled.then(|| {
            let mut attributes = vec![
                attr_str("http.request.method", req.method().as_str()),
                attr_str("url.path", req.uri().path()),
            ];
            if let Some(d) = req.extensions().get::<Destination>() {
                attributes.push(attr_str("server.address", d.host().to_string()));
                attributes.push(attr_int("server.port", i64::from(d.port())));
            } else if let Some(h) = req.uri().host() {
                attributes.push(attr_str("server.address", h));
            } else if let Some(h) = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                attributes.push(attr_str("server.address", h));
            }
            if let Some(c) = req.extensions().get::<ClientAddr>() {
                attributes.push(attr_str("client.address", c.0.ip().to_string()));
            }
            Pending {
                slot: req.extensions().get::<Arc<TelemetrySlot>>().cloned(),
                record: SpanRecord {
                    trace_id: ctx.trace_id,
                    span_id: ctx.span_id,
                    parent: parent.map(|p| p.span_id),
                    name: format!("egress {}", req.method()),
                    server: true,
                    start: now_nanos(),
                    end: 0,
                    attributes,
                    error: false,
                },
            }
        });
        TraceFuture {
            future: self.inner.call(req),
            tracer: self.tracer.clone(),
            pending,
        }
    }
}

pin_project! {
    /// The future of [`TraceService`].
    pub struct TraceFuture<F> {
        #[pin]
        future: F,
        tracer: Arc<Tracer>,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        if let Some(mut p) = this.pending.take() {
            p.record.end = now_nanos();
            match &result {
                Ok(rsp) => {
                    let status = rsp.status().as_u16();
                    p.record
                        .attributes
                        .push(attr_int("http.response.status_code", i64::from(status)));
                    let reason = rsp
                        .extensions()
                        .get::<Rejection>()
                        .map(|r| r.kind().token())
                        .or_else(|| rsp.extensions().get::<Failure>().map(|f| f.token()));
                    if let Some(r) = reason {
                        p.record.attributes.push(attr_str("egress.reason", r));
                    }
                    p.record.error = status >= 500;
                }
                Err(_) => p.record.error = true,
            }
            if let Some(d) = p.slot.as_ref().and_then(|s| s.dry_run()) {
                dry_run_attributes(d, &mut p.record.attributes);
            }
            this.tracer.record(p.record);
        }
        Poll::Ready(result)
    }
}

/// Istio's span tags for dry-run policies:
/// `istio.authorization.dry_run.deny_policy.name` = `ns[foo]-policy[name]-rule[0]`, and
/// `….result` = `allowed` / `denied`, per shadow engine.
fn dry_run_attributes(d: &DryRun, out: &mut Vec<super::KeyValue>) {
    for (engine, r) in d.results() {
        let prefix = format!("istio.authorization.dry_run.{engine}_policy");
        if let Some(policy) = &r.policy {
            let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
            let rule = r.rule.unwrap_or(0);
            out.push(attr_str(
                &format!("{prefix}.name"),
                format!("ns[{ns}]-policy[{name}]-rule[{rule}]"),
            ));
        }
        out.push(attr_str(&format!("{prefix}.result"), r.decision()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::super::{ClientSpanLayer, TraceConfig};
    use super::*;
    use crate::BoxBody;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use tower::ServiceExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Server and client layers around an upstream that echoes the `traceparent` it got; the
    /// exporter points at a closed port, so the spans recorded show up as failed exports.
    #[tokio::test]
    async fn the_upstream_sees_the_clients_trace_under_a_new_span() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", closed.local_addr().unwrap());
        drop(closed);
        let mut config = TraceConfig::new(endpoint.parse().unwrap(), "gw");
        config.sampling = 0.0;
        config.interval = Duration::from_millis(20);
        config.timeout = Duration::from_secs(2);
        let tracer = Tracer::start(config);
        let upstream = tower::service_fn(|req: Request<()>| async move {
            let mut rsp = Response::new(BoxBody::empty());
            if let Some(tp) = req.headers().get("traceparent") {
                rsp.headers_mut().insert("x-upstream-saw", tp.clone());
            }
            Ok::<_, crate::BoxError>(rsp)
        });
        let svc = TraceLayer::new(tracer.clone())
            .layer(ClientSpanLayer::new(tracer.clone()).layer(upstream));
        let req = Request::get("http://api.example.com/")
            .header("traceparent", PARENT)
            .body(())
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        let saw = rsp.headers()["x-upstream-saw"].to_str().unwrap();
        let parts: Vec<&str> = saw.split('-').collect();
        assert_eq!(parts.len(), 4, "{saw}");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
        assert_ne!(parts[2], "00f067aa0ba902b7", "a span of the gateway's");
        // The parent's sampling decision wins over the ratio (0 here).
        assert_eq!(parts[3], "01");
        // A server and a client span were recorded, and fail to export to the closed port.
        let stats = tracer.stats().clone();
        let recorded = tokio::time::timeout(Duration::from_secs(10), async {
            while stats.failed.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(recorded.is_ok(), "failed exports: {stats:?}");

        // A parent that does not sample: continued under a new span, nothing recorded.
        let unsampled = PARENT.replace("-01", "-00");
        let req = Request::get("http://api.example.com/")
            .header("traceparent", unsampled.as_str())
            .body(())
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        let saw = rsp.headers()["x-upstream-saw"].to_str().unwrap();
        assert!(
            saw.starts_with("00-4bf92f35") && saw.ends_with("-00"),
            "{saw}"
        );
        // Nobody traces and the ratio is 0: the request goes on untouched.
        let req = Request::get("http://api.example.com/").body(()).unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert!(rsp.headers().get("x-upstream-saw").is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            stats.failed.load(Ordering::SeqCst),
            2,
            "only the sampled spans"
        );
    }
}
