//! `GatewayHeadersLayer`: the request headers that only this gateway may write.
//!
//! An upstream trusts some headers because a gateway wrote them: the client certificate a
//! `MUTUAL` server verified (`x-forwarded-client-cert`), this gateway's own `x-egress-*`
//! facts. A client that sends its own copy must not be believed, by the policies below or by
//! the upstream, so every such header is removed from the request before anything reads it.
//! `x-forwarded-client-cert` then follows Envoy's `forward_client_cert_details`:
//! `SANITIZE_SET` on a connection whose client certificate was verified (the header is the
//! gateway's description of that certificate, [`ClientCertificate`]), `SANITIZE` elsewhere
//! (removed). Headers written from tokens or by an external authorizer are cleaned by their
//! own layers, which know the configured names.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1, and those `Connection` names) are removed
//! here first, so that policies evaluate the headers the upstream will receive and a client
//! cannot name a header the gateway writes in `Connection` to have it removed later.
//!
//! - Reads: [`ClientCertificate`]. Writes: `x-forwarded-client-cert`.

use http::header::{HeaderMap, HeaderName};
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::ctx::ClientCertificate;
pub use crate::headers::{GATEWAY_PREFIX, remove_gateway_headers};

/// Envoy's header for the client certificate a proxy verified.
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Removes what the gateway alone writes; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct GatewayHeadersLayer {
    extra: Arc<[HeaderName]>,
}

impl GatewayHeadersLayer {
    /// The layer for the gateway's own headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also removes these names (headers an embedding application writes itself).
    pub fn with_names(names: impl IntoIterator<Item = HeaderName>) -> Self {
        Self {
            extra: names.into_iter().collect(),
        }
    }
}

impl<S> Layer<S> for GatewayHeadersLayer {
    type Service = GatewayHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayHeaders {
            inner,
            extra: self.extra.clone(),
        }
    }
}

/// The service of [`GatewayHeadersLayer`].
#[derive(Clone, Debug)]
pub struct GatewayHeaders<S> {
    inner: S,
    extra: Arc<[HeaderName]>,
}

/// Removes every `x-egress-*` header and `x-forwarded-client-cert`, and the `extra` names.
pub fn sanitize(headers: &mut HeaderMap, extra: &[HeaderName]) {
    remove_gateway_headers(headers);
    headers.remove(FORWARDED_CLIENT_CERT);
    for n in extra {
        headers.remove(n);
    }
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for GatewayHeaders<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // Hop-by-hop headers first, so that policies see what the upstream will be sent and
        // `Connection: <name>` cannot remove a header the gateway writes below.
        crate::headers::remove_hop_by_hop(req.headers_mut());
        sanitize(req.headers_mut(), &self.extra);
        if let Some(cert) = req.extensions().get::<ClientCertificate>() {
            let value = cert.0.clone();
            req.headers_mut().insert(FORWARDED_CLIENT_CERT, value);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tower::{ServiceExt, service_fn};

    async fn seen(req: Request<()>, layer: GatewayHeadersLayer) -> HeaderMap {
        let svc = layer.layer(service_fn(|r: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(r.headers().clone()))
        }));
        svc.oneshot(req).await.unwrap().into_body()
    }

    #[tokio::test]
    async fn forged_headers_are_removed_and_xfcc_is_the_gateways() {
        let req = || {
            Request::builder()
                .header("X-Egress-Denied", "none")
                .header("x-egress-mirrored", "1")
                .header(
                    "x-forwarded-client-cert",
                    "URI=spiffe://evil/ns/admin/sa/root",
                )
                .header("x-forwarded-client-cert", "Hash=00")
                .header("x-app", "kept")
                .header("x-egressive", "kept too")
                .body(())
                .unwrap()
        };
        let h = seen(req(), GatewayHeadersLayer::new()).await;
        assert!(!h.contains_key("x-egress-denied"));
        assert!(!h.contains_key("x-egress-mirrored"));
        assert!(!h.contains_key(FORWARDED_CLIENT_CERT));
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["x-egressive"], "kept too");

        let mut r = req();
        r.extensions_mut()
            .insert(ClientCertificate(HeaderValue::from_static("Hash=ab;URI=x")));
        let h = seen(
            r,
            GatewayHeadersLayer::with_names([HeaderName::from_static("x-app")]),
        )
        .await;
        let xfcc: Vec<_> = h.get_all(FORWARDED_CLIENT_CERT).iter().collect();
        assert_eq!(xfcc, ["Hash=ab;URI=x"]);
        assert!(!h.contains_key("x-app"));
    }
}
