//! The one place where errors become responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::ctx::{ERROR_HEADER, Failure, Rejection, RejectionKind};
use crate::error::{BoxError, UpstreamError, UpstreamErrorKind, cause_ref};

/// Maps a failed call to a response that says which failure happened. Use it outermost, with
/// `ServiceBuilder::map_result`, so that no error escapes to the connection as a reset.
pub fn into_response<B, E>(result: Result<Response<B>, E>) -> Result<Response<B>, BoxError>
where
    B: From<Bytes>,
    E: Into<BoxError>,
{
    let error: BoxError = match result {
        Ok(rsp) => return Ok(rsp),
        Err(e) => e.into(),
    };
    Ok(error_response(&*error))
}

/// The response for one error: status, `x-egress-error` (or `x-egress-denied` for the SSRF
/// guard and loop refusals), and a body that names the destination and the cause.
pub fn error_response<B: From<Bytes>>(error: &(dyn std::error::Error + 'static)) -> Response<B> {
    if let Some(body) = cause_ref::<crate::body::ClientBodyError>(error)
        && cause_ref::<UpstreamError>(error).is_none()
    {
        let (kind, status) = if body.is_timeout() {
            (RejectionKind::BodyTimeout, StatusCode::REQUEST_TIMEOUT)
        } else {
            (RejectionKind::Malformed, StatusCode::BAD_REQUEST)
        };
        return Rejection::new(kind).respond(status, true, format!("egress: {body}\n"));
    }
    let Some(upstream) = cause_ref::<UpstreamError>(error) else {
        tracing::warn!(%error, "request failed");
        let mut rsp = Response::new(B::from(Bytes::from(format!(
            "egress: internal error: {error}\n"
        ))));
        *rsp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        rsp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static("internal"));
        rsp.extensions_mut().insert(Failure(None));
        return rsp;
    };
    let kind = upstream.kind();
    let status = status_for(kind);
    let body = format!("egress: {upstream}\n");
    if kind.is_refusal() {
        let (rejection, close) = match kind {
            UpstreamErrorKind::LoopDetected => (RejectionKind::LoopDetected, false),
            // The client's framing broke: nothing more can be read from its connection.
            UpstreamErrorKind::ClientBodyMalformed => (RejectionKind::Malformed, true),
            UpstreamErrorKind::ClientBodyTimeout => (RejectionKind::BodyTimeout, true),
            _ => (RejectionKind::IpDenied, false),
        };
        return Rejection::new(rejection).respond(status, close, body);
    }
    tracing::info!(error = kind.token(), %status, why = %upstream, "upstream failure");
    let mut rsp = Response::new(B::from(Bytes::from(body)));
    *rsp.status_mut() = status;
    let headers = rsp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(kind.token()));
    rsp.extensions_mut().insert(Failure(Some(kind)));
    rsp
}

/// The status reported for an upstream failure.
pub fn status_for(kind: UpstreamErrorKind) -> StatusCode {
    match kind {
        UpstreamErrorKind::ConnectTimeout
        | UpstreamErrorKind::ResponseTimeout
        | UpstreamErrorKind::DnsTimeout => StatusCode::GATEWAY_TIMEOUT,
        UpstreamErrorKind::LoopDetected => StatusCode::LOOP_DETECTED,
        UpstreamErrorKind::DnsFailed => StatusCode::SERVICE_UNAVAILABLE,
        UpstreamErrorKind::TlsHandshake => StatusCode::BAD_GATEWAY,
        UpstreamErrorKind::ClientBodyMalformed => StatusCode::BAD_REQUEST,
        UpstreamErrorKind::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

pin_project_lite::pin_project! {
    /// The future of a layer that either answers at once (a refusal) or calls its inner service.
    // Variant fields cannot carry docs inside this macro.
    #[allow(missing_docs)]
    #[project = RefuseOrProj]
    pub enum RefuseOr<F, R> {
        /// The layer answered on its own.
        Refused {
            response: Option<R>,
        },
        /// The inner service is answering.
        Inner {
            #[pin]
            future: F,
        },
    }
}

impl<F, R> RefuseOr<F, R> {
    /// A future that resolves to `response` at once.
    pub fn refused(response: R) -> Self {
        RefuseOr::Refused {
            response: Some(response),
        }
    }

    /// A future that delegates to the inner service's future.
    pub fn inner(future: F) -> Self {
        RefuseOr::Inner { future }
    }
}

impl<F, R, E> std::future::Future for RefuseOr<F, R>
where
    F: std::future::Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            RefuseOrProj::Inner { future } => future.poll(cx),
            // Polled again after completion would be a bug in the caller; answer with
            // `Pending` rather than panic (the response was already taken).
            RefuseOrProj::Refused { response } => match response.take() {
                Some(rsp) => std::task::Poll::Ready(Ok(rsp)),
                None => std::task::Poll::Pending,
            },
        }
    }
}

/// A boxed future resolving to a response or a boxed error.
pub type BoxResponseFuture<B> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<B>, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of a layer that either passes the inner future through (the common, cheap
    /// case) or runs a boxed sequence of its own (buffering, retrying).
    #[project = InnerOrBoxedProj]
    #[allow(missing_docs)]
    pub enum InnerOrBoxed<F, B> {
        Inner { #[pin] future: F },
        Boxed { future: BoxResponseFuture<B> },
    }
}

impl<F, B> InnerOrBoxed<F, B> {
    /// Passes `future` through.
    pub fn inner(future: F) -> Self {
        InnerOrBoxed::Inner { future }
    }

    /// Runs a boxed future.
    pub fn boxed(future: BoxResponseFuture<B>) -> Self {
        InnerOrBoxed::Boxed { future }
    }
}

impl<F, B, E> std::future::Future for InnerOrBoxed<F, B>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            InnerOrBoxedProj::Inner { future } => future.poll(cx).map_err(Into::into),
            InnerOrBoxedProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
