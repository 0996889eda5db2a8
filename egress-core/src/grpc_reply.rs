//! `GrpcReplyLayer`: the gateway's own answers to a gRPC call, in gRPC's terms.
//!
//! A gRPC client reads the status of a call from `grpc-status`, not from the HTTP status,
//! and takes a body for length-prefixed messages: a plain-text `403` is to it a protocol
//! error. So when the request is gRPC (`content-type: application/grpc…`) and the answer is
//! the gateway's (a refusal or an upstream failure, never an upstream's own response), it is
//! sent as a *Trailers-Only* gRPC response, as Envoy's local replies are: HTTP 200,
//! `grpc-status` mapped from the HTTP status as Envoy maps it, `grpc-message` naming the
//! reason, no body. The `x-egress-*` headers and the typed outcome stay, so logs and
//! metrics (outside this layer) still report the refusal as it was decided.
//!
//! - Reads: the request's `content-type`; [`Rejection`] and [`Failure`] on the response.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use crate::ctx::{Failure, Outcome, Rejection};

/// Renders the gateway's answers to gRPC calls as gRPC statuses; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcReplyLayer;

impl<S> Layer<S> for GrpcReplyLayer {
    type Service = GrpcReply<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcReply { inner }
    }
}

/// The service of [`GrpcReplyLayer`].
#[derive(Clone, Debug)]
pub struct GrpcReply<S> {
    inner: S,
}

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// Envoy's mapping of an HTTP status to a gRPC status code (`Grpc::Utility::httpToGrpcStatus`).
pub fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GrpcReply<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = GrpcReplyFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        GrpcReplyFuture {
            grpc: is_grpc(&req),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The future of [`GrpcReply`].
    pub struct GrpcReplyFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, ResB, E> Future for GrpcReplyFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Default,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = std::task::ready!(this.inner.poll(cx))?;
        if !*this.grpc {
            return Poll::Ready(Ok(rsp));
        }
        Poll::Ready(Ok(as_grpc(rsp)))
    }
}

/// The Trailers-Only form of a gateway answer; anything else is returned as it is.
fn as_grpc<B: Default>(rsp: Response<B>) -> Response<B> {
    let ext = rsp.extensions();
    let outcome = ext
        .get::<Rejection>()
        .map(|r| Outcome::Denied(r.kind()))
        .or_else(|| ext.get::<Failure>().and_then(|f| f.0).map(Outcome::Failed));
    let token = match (outcome, ext.get::<Failure>()) {
        (Some(o), _) => o.token(),
        (None, Some(f)) => f.token(),
        (None, None) => return rsp,
    };
    let (mut parts, _) = rsp.into_parts();
    let code = grpc_status(parts.status);
    let message = format!("egress gateway: {token} (HTTP {})", parts.status.as_u16());
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(http::header::CONTENT_LENGTH);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        h.insert("grpc-message", v);
    }
    Response::from_parts(parts, B::default())
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, every other byte `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=x", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            let req = Request::builder()
                .header(CONTENT_TYPE, ct)
                .body(())
                .unwrap();
            assert_eq!(is_grpc(&req), want, "{ct}");
        }
        assert!(!is_grpc(&Request::new(())));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%c\u{e9}"), "a b%25c%C3%A9");
    }
}
