//! `ProxyHeadersLayer`: what a proxy owes the headers it forwards (RFC 9110 section 7.6).
//!
//! On the way up it removes hop-by-hop headers (`Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`) and the client's
//! `Proxy-Authorization`, which was meant for this hop only; it appends this gateway to `Via`.
//! A request whose `Via` already names this gateway has looped and gets **508**. A request
//! with both `Transfer-Encoding` and `Content-Length` is framed ambiguously and gets **400**.
//! On the way down it removes hop-by-hop headers, `Proxy-Authenticate` and any `x-egress-*`
//! header an upstream sent (only this gateway may say those), and adds `Via`.
//!
//! - Reads: request headers. Refuses: [`RejectionKind::LoopDetected`] (508),
//!   [`RejectionKind::Malformed`] (400).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::ctx::{Rejection, RejectionKind};
use crate::respond::RefuseOr;

/// The configuration: the pseudonym this gateway writes in `Via`.
#[derive(Clone, Debug)]
pub struct ProxyHeadersConfig {
    pseudonym: Arc<str>,
    via: [HeaderValue; 3],
}

impl ProxyHeadersConfig {
    /// A configuration with this `Via` pseudonym (a token: letters, digits, `-`, `.`, `_`).
    pub fn new(pseudonym: &str) -> Result<Self, http::header::InvalidHeaderValue> {
        let v = |p: &str| HeaderValue::from_str(&format!("{p} {pseudonym}"));
        Ok(Self {
            pseudonym: pseudonym.into(),
            via: [v("1.0")?, v("1.1")?, v("2")?],
        })
    }

    fn via_for(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_09 | Version::HTTP_10 => &self.via[0],
            Version::HTTP_11 => &self.via[1],
            _ => &self.via[2],
        }
    }

    /// Whether a `Via` header already names this gateway.
    fn has_looped(&self, headers: &HeaderMap) -> bool {
        headers.get_all(header::VIA).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|hop| {
                    let mut parts = hop.split_whitespace();
                    let _protocol = parts.next();
                    parts.next() == Some(&*self.pseudonym)
                })
            })
        })
    }
}

impl Default for ProxyHeadersConfig {
    fn default() -> Self {
        Self {
            pseudonym: "egress-gateway".into(),
            via: [
                HeaderValue::from_static("1.0 egress-gateway"),
                HeaderValue::from_static("1.1 egress-gateway"),
                HeaderValue::from_static("2 egress-gateway"),
            ],
        }
    }
}

pub use crate::headers::remove_hop_by_hop;

fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    headers.append(header::VIA, via.clone());
}

/// Applies [`ProxyHeadersConfig`] to requests and responses.
#[derive(Clone, Debug, Default)]
pub struct ProxyHeadersLayer {
    config: Arc<ProxyHeadersConfig>,
}

impl ProxyHeadersLayer {
    /// The layer.
    pub fn new(config: ProxyHeadersConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for ProxyHeadersLayer {
    type Service = ProxyHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProxyHeaders {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`ProxyHeadersLayer`].
#[derive(Clone, Debug)]
pub struct ProxyHeaders<S> {
    inner: S,
    config: Arc<ProxyHeadersConfig>,
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for ProxyHeaders<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
    RspB: From<Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<RefuseOr<S::Future, S::Response>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let version = req.version();
        let via = self.config.via_for(version).clone();
        let headers = req.headers_mut();
        let future = if self.config.has_looped(headers) {
            let why = format!(
                "egress: loop detected: the request already passed through {}\n",
                self.config.pseudonym
            );
            RefuseOr::refused(Rejection::new(RejectionKind::LoopDetected).respond(
                StatusCode::LOOP_DETECTED,
                true,
                why,
            ))
        } else if headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH)
        {
            let why = "egress: malformed request: both Transfer-Encoding and Content-Length\n";
            RefuseOr::refused(Rejection::new(RejectionKind::Malformed).respond(
                StatusCode::BAD_REQUEST,
                true,
                why.to_owned(),
            ))
        } else {
            remove_hop_by_hop(headers);
            headers.remove(header::PROXY_AUTHORIZATION);
            append_via(headers, &via);
            RefuseOr::inner(self.inner.call(req))
        };
        ResponseFuture { future, via }
    }
}

pin_project! {
    /// Cleans the response headers of [`ProxyHeaders`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        via: HeaderValue,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = std::task::ready!(this.future.poll(cx))?;
        if rsp.extensions().get::<Rejection>().is_none() {
            let headers = rsp.headers_mut();
            remove_hop_by_hop(headers);
            headers.remove(header::PROXY_AUTHENTICATE);
            // Only this gateway speaks `x-egress-*`: an upstream must not forge a refusal,
            // an error or any other fact of the gateway's.
            crate::headers::remove_gateway_headers(headers);
            append_via(headers, this.via);
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::DENIED_HEADER;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn strips_and_adds() {
        let svc = ProxyHeadersLayer::default().layer(service_fn(|r: Request<()>| async move {
            let h = r.headers();
            assert!(h.get("x-drop").is_none());
            assert!(h.get(header::CONNECTION).is_none());
            assert!(h.get("keep-alive").is_none());
            assert!(h.get(header::PROXY_AUTHORIZATION).is_none());
            assert_eq!(h["x-keep"], "1");
            let via: Vec<_> = h.get_all(header::VIA).iter().collect();
            assert_eq!(via, ["1.1 other", "1.1 egress-gateway"]);
            let mut rsp = Response::new(Bytes::new());
            rsp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("x-secret"));
            rsp.headers_mut()
                .insert("x-secret", HeaderValue::from_static("s"));
            rsp.headers_mut()
                .insert(DENIED_HEADER, HeaderValue::from_static("forged"));
            rsp.headers_mut()
                .insert("x-egress-fault", HeaderValue::from_static("abort"));
            Ok::<_, Infallible>(rsp)
        }));
        let req = Request::builder()
            .header(header::CONNECTION, "x-drop, keep-alive")
            .header("x-drop", "1")
            .header("x-keep", "1")
            .header("keep-alive", "timeout=5")
            .header(header::PROXY_AUTHORIZATION, "Basic Zm9vOmJhcg==")
            .header(header::VIA, "1.1 other")
            .body(())
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert!(rsp.headers().get("x-secret").is_none());
        assert!(
            rsp.headers().get(DENIED_HEADER).is_none(),
            "upstream forged a refusal"
        );
        assert!(rsp.headers().get("x-egress-fault").is_none());
        assert_eq!(rsp.headers()[header::VIA], "1.1 egress-gateway");
    }

    #[tokio::test]
    async fn refuses_loops_and_double_framing() {
        let svc = ProxyHeadersLayer::default().layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Bytes::from("upstream")))
        }));
        let looped = Request::builder()
            .header(header::VIA, "1.0 a, 1.1 egress-gateway")
            .body(())
            .unwrap();
        let rsp = svc.clone().oneshot(looped).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::LOOP_DETECTED);
        assert_eq!(rsp.headers()[crate::ctx::DENIED_HEADER], "loop-detected");
        let framed = Request::builder()
            .header(header::TRANSFER_ENCODING, "chunked")
            .header(header::CONTENT_LENGTH, "3")
            .body(())
            .unwrap();
        let rsp = svc.oneshot(framed).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    }
}
