//! `ClientSpanLayer`: a client span per upstream attempt (retries and mirror copies each
//! get their own), and the trace context written into the forwarded request.
//!
//! - Reads: [`TraceContext`], [`Destination`], [`Mirrored`]. Writes: `traceparent` (and B3
//!   headers when the request came with them) naming the client span.

use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use super::{SpanRecord, TraceContext, Tracer, attr_int, attr_str, inject, new_span_id, now_nanos};
use crate::ctx::{Destination, Mirrored};

/// Records client spans and propagates the context upstream.
#[derive(Clone, Debug)]
pub struct ClientSpanLayer {
    tracer: Arc<Tracer>,
}

impl ClientSpanLayer {
    /// The layer over a tracer.
    pub fn new(tracer: Arc<Tracer>) -> Self {
        Self { tracer }
    }
}

impl<S> Layer<S> for ClientSpanLayer {
    type Service = ClientSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientSpan {
            inner,
            tracer: self.tracer.clone(),
        }
    }
}

/// The service of [`ClientSpanLayer`].
#[derive(Clone, Debug)]
pub struct ClientSpan<S> {
    inner: S,
    tracer: Arc<Tracer>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for ClientSpan<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<TraceContext>().copied() else {
            return ClientFuture {
                future: self.inner.call(req),
                tracer: self.tracer.clone(),
                pending: None,
            };
        };
        let span_id = new_span_id();
        inject(req.headers_mut(), &ctx, &span_id);
        let pending = ctx.sampled.then(|| {
            let mirror = req.extensions().get::<Mirrored>().is_some();
            let mut attributes = vec![attr_str("http.request.method", req.method().as_str())];
            if let Some(d) = req.extensions().get::<Destination>() {
                attributes.push(attr_str("server.address", d.host().to_string()));
                attributes.push(attr_int("server.port", i64::from(d.port())));
            }
            if mirror {
                attributes.push(attr_str("egress.mirror", "true"));
            }
            SpanRecord {
                trace_id: ctx.trace_id,
                span_id,
                parent: Some(ctx.span_id),
                name: if mirror {
                    format!("egress upstream {} (mirror)", req.method())
                } else {
                    format!("egress upstream {}", req.method())
                },
                server: false,
                start: now_nanos(),
                end: 0,
                attributes,
                error: false,
            }
        });
        ClientFuture {
            future: self.inner.call(req),
            tracer: self.tracer.clone(),
            pending,
        }
    }
}

pin_project! {
    /// The future of [`ClientSpan`].
    pub struct ClientFuture<F> {
        #[pin]
        future: F,
        tracer: Arc<Tracer>,
        pending: Option<SpanRecord>,
    }
}

impl<F, B, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: std::fmt::Display,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        if let Some(mut span) = this.pending.take() {
            span.end = now_nanos();
            match &result {
                Ok(rsp) => {
                    let status = rsp.status().as_u16();
                    span.attributes
                        .push(attr_int("http.response.status_code", i64::from(status)));
                    span.error = status >= 500;
                }
                Err(e) => {
                    span.attributes
                        .push(attr_str("error.message", e.to_string()));
                    span.error = true;
                }
            }
            this.tracer.record(span);
        }
        Poll::Ready(result)
    }
}
