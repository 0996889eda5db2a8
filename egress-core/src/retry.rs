//! `RetryLayer`: another attempt when an upstream fails in a way the route allows.
//!
//! Only requests whose body can be sent again are retried: an empty body, or one the mirror
//! layer already holds in memory. Streaming bodies get one attempt. Between attempts the
//! layer waits 25 ms, doubling up to 250 ms (Envoy's defaults). A per-try timeout that
//! expires counts as a failed attempt (retried under `5xx` / `gateway-error`); when
//! attempts run out, the last response or error stands.
//!
//! - Reads: [`RetryPolicy`].

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

use crate::ctx::RetryPolicy;
use crate::error::{BoxError, UpstreamError, UpstreamErrorKind, cause_ref};
use crate::mirror::MirrorBody;
use crate::respond::InnerOrBoxed;

/// Retries requests that carry a [`RetryPolicy`].
#[derive(Clone, Debug, Default)]
pub struct RetryLayer(());

impl RetryLayer {
    /// The layer.
    pub fn new() -> Self {
        Self(())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner }
    }
}

/// The service of [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
}

impl<S, B, RspB> Service<Request<MirrorBody<B>>> for Retry<S>
where
    S: Service<Request<MirrorBody<B>>, Response = Response<RspB>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    RspB: Send + 'static,
{
    type Response = Response<RspB>;
    type Error = BoxError;
    type Future = InnerOrBoxed<S::Future, RspB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<MirrorBody<B>>) -> Self::Future {
        let policy = match req.extensions().get::<RetryPolicy>() {
            Some(p) if p.attempts > 0 => p.clone(),
            _ => {
                return InnerOrBoxed::inner(self.inner.call(req));
            }
        };
        let replay = match req.body() {
            Either::Right(full) => Some(full.clone()),
            Either::Left(body) if body.is_end_stream() => Some(Full::new(Bytes::new())),
            Either::Left(_) => None,
        };
        let Some(body) = replay else {
            return InnerOrBoxed::inner(self.inner.call(req));
        };
        // The service made ready by `poll_ready` goes with the request (tower's idiom: a
        // clone takes its place here); every attempt uses it, made ready again after the
        // first, so attempts clone no service.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let (parts, _) = req.into_parts();
        InnerOrBoxed::boxed(
            // Boxed: attempts loop over clones of the request.
            Box::pin(async move {
                let mut backoff = Duration::from_millis(25);
                let mut attempt = 0;
                loop {
                    let mut req = Request::new(Either::Right(body.clone()));
                    *req.method_mut() = parts.method.clone();
                    *req.uri_mut() = parts.uri.clone();
                    *req.version_mut() = parts.version;
                    *req.headers_mut() = parts.headers.clone();
                    *req.extensions_mut() = parts.extensions.clone();
                    if attempt > 0 {
                        svc.ready().await.map_err(Into::into)?;
                    }
                    let call = svc.call(req);
                    let result: Result<Response<RspB>, BoxError> = match policy.per_try_timeout {
                        Some(t) => match tokio::time::timeout(t, call).await {
                            Ok(r) => r.map_err(Into::into),
                            Err(_) => Err(UpstreamError::new(
                                UpstreamErrorKind::ResponseTimeout,
                                format!("no response within the per-try timeout {t:?}"),
                            )
                            .into()),
                        },
                        None => call.await.map_err(Into::into),
                    };
                    let last = attempt >= policy.attempts;
                    let again = match &result {
                        Ok(rsp) => policy.retries_status(rsp.status().as_u16()),
                        Err(e) => retries_error(&policy, &**e),
                    };
                    if last || !again {
                        return result;
                    }
                    attempt += 1;
                    tracing::debug!(attempt, "retrying upstream request");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
            }),
        )
    }
}

fn retries_error(policy: &RetryPolicy, e: &(dyn std::error::Error + 'static)) -> bool {
    let Some(up) = cause_ref::<UpstreamError>(e) else {
        return false;
    };
    match up.kind() {
        UpstreamErrorKind::ConnectFailed | UpstreamErrorKind::ConnectTimeout => {
            policy.on_connect_failure || policy.on_5xx || policy.on_gateway_error
        }
        UpstreamErrorKind::Protocol => policy.on_reset || policy.on_5xx,
        UpstreamErrorKind::ResponseTimeout => policy.on_5xx || policy.on_gateway_error,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::BoxBody;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that answers 503 to its first `failures` calls (sleeping `stall` on the
    /// first), then 200; it counts the calls.
    fn upstream(
        failures: usize,
        stall: Duration,
    ) -> (
        impl Service<
            Request<MirrorBody<BoxBody>>,
            Response = Response<BoxBody>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let svc = tower::service_fn(move |_req: Request<MirrorBody<BoxBody>>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    tokio::time::sleep(stall).await;
                }
                let mut rsp = Response::new(BoxBody::empty());
                if n < failures {
                    *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, BoxError>(rsp)
            }
        });
        (svc, calls)
    }

    fn request(
        policy: Option<RetryPolicy>,
        body: MirrorBody<BoxBody>,
    ) -> Request<MirrorBody<BoxBody>> {
        let mut req = Request::new(body);
        if let Some(p) = policy {
            req.extensions_mut().insert(p);
        }
        req
    }

    fn gateway_errors(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            on_gateway_error: true,
            ..RetryPolicy::default()
        }
    }

    #[tokio::test]
    async fn retries_until_success_or_attempts_run_out() {
        let empty = || Either::Left(BoxBody::empty());
        let (svc, calls) = upstream(2, Duration::ZERO);
        let rsp = RetryLayer::new()
            .layer(svc)
            .oneshot(request(Some(gateway_errors(2)), empty()))
            .await
            .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (200, 3)
        );

        let (svc, calls) = upstream(5, Duration::ZERO);
        let rsp = RetryLayer::new()
            .layer(svc)
            .oneshot(request(Some(gateway_errors(1)), empty()))
            .await
            .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 2)
        );

        // No policy, or a status the policy does not name: one attempt.
        let (svc, calls) = upstream(5, Duration::ZERO);
        let rsp = RetryLayer::new()
            .layer(svc)
            .oneshot(request(None, empty()))
            .await
            .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
        let only_409 = RetryPolicy {
            attempts: 3,
            statuses: Arc::from([409]),
            ..RetryPolicy::default()
        };
        let (svc, calls) = upstream(5, Duration::ZERO);
        let rsp = RetryLayer::new()
            .layer(svc)
            .oneshot(request(Some(only_409), empty()))
            .await
            .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
    }

    /// A body that is still streaming cannot be sent twice; a buffered one is.
    #[tokio::test]
    async fn only_replayable_bodies_are_retried() {
        let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let (svc, calls) = upstream(5, Duration::ZERO);
        let streaming = request(Some(gateway_errors(3)), Either::Left(BoxBody::new(rx)));
        let rsp = RetryLayer::new()
            .layer(svc)
            .oneshot(streaming)
            .await
            .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
        drop(tx);
        let (svc, calls) = upstream(1, Duration::ZERO);
        let held = Either::Right(Full::new(Bytes::from_static(b"payload")));
        let rsp = RetryLayer::new()
            .layer(svc)
            .oneshot(request(Some(gateway_errors(3)), held))
            .await
            .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (200, 2)
        );
    }

    /// An attempt over the per-try timeout counts as a failed one and is retried.
    #[tokio::test]
    async fn a_stalled_attempt_times_out_and_is_retried() {
        let (svc, calls) = upstream(0, Duration::from_secs(30));
        let policy = RetryPolicy {
            per_try_timeout: Some(Duration::from_millis(50)),
            ..gateway_errors(1)
        };
        let rsp = tokio::time::timeout(
            Duration::from_secs(10),
            RetryLayer::new()
                .layer(svc)
                .oneshot(request(Some(policy), Either::Left(BoxBody::empty()))),
        )
        .await
        .expect("bounded by the per-try timeout")
        .unwrap();
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (200, 2)
        );
    }
}
