//! `MirrorLayer`: fire-and-forget shadow copies of requests.
//!
//! For a request that carries [`Mirrors`], the layer sends a copy to each mirror target in a
//! task of its own and never waits for it: the primary response is neither delayed nor
//! changed by a slow, failing or unreachable mirror. Copies run under a concurrency bound;
//! when it is reached the copy is dropped and counted, never queued. The body of a mirrored
//! request is read into memory when its size is known and within the limit (the primary then
//! goes out from that buffer); a larger or unsized body is not mirrored (counted) and the
//! primary streams as usual. Copies carry `x-egress-mirrored: true` and, when the Istio
//! ≤ 1.27 compatibility switch is on, a `-shadow` suffix on their `Host`.
//!
//! - Reads: [`Destination`], [`Mirrors`]. Inserts into copies: [`Mirrored`], their own
//!   [`UpstreamPlan`](crate::ctx::UpstreamPlan).

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use crate::ctx::{Destination, Host, Mirrored, Mirrors};
use crate::error::BoxError;
use crate::respond::InnerOrBoxed;

/// The body the layer hands on: the client's stream, or a buffer it could copy.
pub type MirrorBody<B> = Either<B, Full<Bytes>>;

/// The header that marks a shadow copy.
pub const MIRRORED_HEADER: &str = "x-egress-mirrored";

/// Settings of [`MirrorLayer`].
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    max_concurrency: usize,
    max_body_bytes: usize,
    timeout: Duration,
    shadow_suffix: bool,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            max_body_bytes: 64 * 1024,
            timeout: Duration::from_secs(10),
            shadow_suffix: false,
        }
    }
}

impl MirrorConfig {
    /// How many copies may be in flight at once (default 64); more are dropped.
    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// The largest body that is mirrored (default 64 KiB).
    pub fn with_max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// How long a copy may take before it is abandoned (default 10 s).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Append `-shadow` to the copies' `Host`, as Istio ≤ 1.27 did (default off).
    pub fn with_shadow_suffix(mut self, on: bool) -> Self {
        self.shadow_suffix = on;
        self
    }
}

/// Counters of the mirror layer, shared by every clone of it.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Copies sent (whatever their outcome).
    pub sent: AtomicU64,
    /// Copies that got a response.
    pub completed: AtomicU64,
    /// Copies that failed (error, timeout).
    pub failed: AtomicU64,
    /// Copies dropped because the concurrency bound was reached.
    pub dropped_overload: AtomicU64,
    /// Copies not made because the body was too large or of unknown size.
    pub dropped_body: AtomicU64,
}

/// Sends shadow copies of requests that carry [`Mirrors`].
#[derive(Clone, Debug)]
pub struct MirrorLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: MirrorConfig,
    permits: Arc<Semaphore>,
    stats: Arc<MirrorStats>,
}

impl MirrorLayer {
    /// A layer with these settings.
    pub fn new(config: MirrorConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(config.max_concurrency)),
                config,
                stats: Arc::default(),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<MirrorStats> {
        self.shared.stats.clone()
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Mirror {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`MirrorLayer`].
#[derive(Clone, Debug)]
pub struct Mirror<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RspB> Service<Request<B>> for Mirror<S>
where
    S: Service<Request<MirrorBody<B>>, Response = Response<RspB>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RspB: Send + 'static,
{
    type Response = Response<RspB>;
    type Error = BoxError;
    type Future = InnerOrBoxed<S::Future, RspB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mirrors = match req.extensions().get::<Mirrors>() {
            Some(m) if req.extensions().get::<Mirrored>().is_none() => m.clone(),
            _ => {
                return InnerOrBoxed::inner(self.inner.call(req.map(Either::Left)));
            }
        };
        let limit = self.shared.config.max_body_bytes as u64;
        let size = req.body().size_hint().exact();
        let fits = req.body().is_end_stream() || size.is_some_and(|n| n <= limit);
        if !fits {
            self.shared
                .stats
                .dropped_body
                .fetch_add(mirrors.0.len() as u64, Ordering::Relaxed);
            tracing::debug!("request body too large or unsized to mirror; not mirrored");
            return InnerOrBoxed::inner(self.inner.call(req.map(Either::Left)));
        }
        // The inner service was made ready for the primary; copies use clones of it.
        let clone = self.inner.clone();
        let mut primary = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        InnerOrBoxed::boxed(
            // Boxed: reading the body must finish before the primary can be sent.
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let bytes = Limited::new(body, limit as usize)
                    .collect()
                    .await
                    // The client's body broke (or is over the limit it declared): its fault.
                    .map_err(|e| -> BoxError { Box::new(crate::body::ClientBodyError(e)) })?
                    .to_bytes();
                for target in mirrors.0.iter() {
                    shared.spawn_copy(&parts, &bytes, target, primary.clone());
                }
                let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
                primary.call(req).await.map_err(Into::into)
            }),
        )
    }
}

impl Shared {
    fn spawn_copy<S, B, RspB>(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        target: &crate::ctx::MirrorTarget,
        svc: S,
    ) where
        S: Service<Request<MirrorBody<B>>, Response = Response<RspB>> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Send + 'static,
        RspB: Send + 'static,
    {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(mirror = %target.host, "mirror dropped: too many in flight");
            return;
        };
        let mut req = Request::new(Either::Right(Full::new(body.clone())));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        req.headers_mut()
            .insert(MIRRORED_HEADER, HeaderValue::from_static("true"));
        if let Some(dst) = parts.extensions.get::<Destination>() {
            let mut dst = dst.clone();
            if self.config.shadow_suffix {
                dst = shadow(dst);
            }
            req.extensions_mut().insert(dst);
        }
        req.extensions_mut().insert(target.plan.clone());
        req.extensions_mut().insert(Mirrored);
        // A copy is a client span of the same trace.
        if let Some(t) = parts.extensions.get::<crate::trace::TraceContext>() {
            req.extensions_mut().insert(*t);
        }
        let stats = self.stats.clone();
        let timeout = self.config.timeout;
        let host = target.host.clone();
        stats.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, svc.oneshot(req)).await {
                Ok(Ok(_)) => {
                    stats.completed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    let e: BoxError = e.into();
                    tracing::debug!(mirror = %host, error = %e, "mirror failed");
                }
                Err(_) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(mirror = %host, "mirror timed out");
                }
            }
        });
    }
}

/// `host-shadow[:port]`, as Istio ≤ 1.27 wrote the mirrored `Host`.
fn shadow(dst: Destination) -> Destination {
    let header = dst.host_header().to_str().unwrap_or("").to_owned();
    let shadowed = match (dst.host(), header.rsplit_once(':')) {
        (Host::Name(_), Some((h, p))) => format!("{h}-shadow:{p}"),
        (Host::Name(_), None) => format!("{header}-shadow"),
        (Host::Ip(_), _) => return dst,
    };
    match HeaderValue::from_str(&shadowed) {
        Ok(v) => dst.with_host_header(v),
        Err(_) => dst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::{MirrorTarget, UpstreamPlan};
    use std::pin::Pin;
    use tower::{ServiceExt, service_fn};

    /// Five bytes announced, an error delivered: a client whose body breaks.
    struct Broken;

    impl Body for Broken {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("connection reset mid-body".into())))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(5)
        }
    }

    #[tokio::test]
    async fn a_broken_body_being_buffered_is_the_clients_fault() {
        let svc = MirrorLayer::new(MirrorConfig::default()).layer(service_fn(
            |_: Request<MirrorBody<Broken>>| async {
                Ok::<_, BoxError>(http::Response::new(Bytes::new()))
            },
        ));
        let mut req = Request::new(Broken);
        req.extensions_mut()
            .insert(Mirrors(Arc::from([MirrorTarget {
                host: "shadow.test".into(),
                plan: UpstreamPlan::default(),
            }])));
        let rsp = crate::respond::into_response(svc.oneshot(req).await).unwrap();
        assert_eq!(rsp.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(rsp.headers()[crate::ctx::DENIED_HEADER], "malformed");
    }
}
