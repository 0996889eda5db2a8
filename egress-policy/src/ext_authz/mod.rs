//! `ExtAuthzLayer`: the CUSTOM action. When a CUSTOM `AuthorizationPolicy` matches, the
//! request is checked with the provider's authorizer before anything else decides: an HTTP
//! authorizer (Istio's `envoyExtAuthzHttp`, below) or a gRPC one (`envoyExtAuthzGrpc`,
//! [`grpc`]: Envoy's `Authorization/Check` with every header, the body when asked for; an
//! OK status allows with the headers it sets, appends and removes upstream and adds to the
//! response, any other status denies with its status (403 unless given), headers and body).
//! Both share the timeout, `failOpen`, `statusOnError` and `includeRequestBodyInCheck`.
//!
//! - The check is an HTTP request to `service:port` with the original method, the path
//!   `pathPrefix + path`, the original `Host`, `Content-Length`, the client headers named by
//!   `includeRequestHeadersInCheck`, `includeAdditionalHeadersInCheck`, and the body (up to
//!   `maxRequestBytes`) when `includeRequestBodyInCheck` is set.
//! - `200`: allowed; `headersToUpstreamOnAllow` are copied to the upstream request and
//!   `headersToDownstreamOnAllow` to the response.
//! - Another status below 500: denied with the authorizer's status, body and the headers
//!   `headersToDownstreamOnDeny` names (all when empty).
//! - Unreachable, timeout, 5xx, or too many checks in flight: `statusOnError` (403),
//!   unless `failOpen`.
//! - A body over `maxRequestBytes` without `allowPartialMessage`: **413**.
//!
//! Checks reuse pooled connections, have the provider's timeout, and are bounded in number:
//! a slow authorizer cannot hold the gateway's memory or tasks.

pub mod grpc;

use crate::snapshot::{Shared, Source};
use bytes::Bytes;
use egress_core::ctx::{Rejection, RejectionKind};
use egress_core::{BoxBody, BoxError};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::authz::{AuthzPolicies, Pattern};
use crate::authz::{RequestFacts, bad_xff};
use crate::model::HttpAuthorizer;

/// The request body below this layer: the original, or the bytes read for the check
/// followed by the rest.
pub type CheckedBody<B> = Either<B, Prefixed<B>>;

pin_project_lite::pin_project! {
    /// A body whose first bytes were already read: those, then the rest of the stream.
    pub struct Prefixed<B> {
        prefix: Option<Bytes>,
        #[pin]
        rest: B,
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(p) = this.prefix.take()
            && !p.is_empty()
        {
            return Poll::Ready(Some(Ok(http_body::Frame::data(p))));
        }
        this.rest.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty) && self.rest.is_end_stream()
    }
}

/// Checks matching requests with the CUSTOM provider of a swappable [`AuthzPolicies`].
#[derive(Clone)]
pub struct ExtAuthzLayer {
    policies: Source<AuthzPolicies>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// HTTP/2 only (prior knowledge), for gRPC authorizers.
    grpc_client: Client<HttpConnector, Full<Bytes>>,
    limit: Arc<Semaphore>,
    xff_hops: usize,
    overrides: Arc<egress_core::transport::Overrides>,
    registry: Option<Source<crate::Registry>>,
}

impl std::fmt::Debug for ExtAuthzLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthzLayer").finish_non_exhaustive()
    }
}

impl ExtAuthzLayer {
    /// A layer with at most `max_in_flight` checks at once.
    pub fn new(policies: Shared<AuthzPolicies>, max_in_flight: usize, xff_hops: usize) -> Self {
        Self::with_source(Source::Own(policies), max_in_flight, xff_hops)
    }

    /// A layer reading the policies and the registry of each request's
    /// [`Policy`](crate::snapshot::Policy).
    pub fn from_snapshot(max_in_flight: usize, xff_hops: usize) -> Self {
        let mut layer = Self::with_source(Source::Snapshot(|p| &p.authz), max_in_flight, xff_hops);
        layer.registry = Some(Source::Snapshot(|p| &p.registry));
        layer
    }

    fn with_source(policies: Source<AuthzPolicies>, max_in_flight: usize, xff_hops: usize) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(http.clone());
        let grpc_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .http2_only(true)
            .build(http);
        Self {
            policies,
            client,
            grpc_client,
            limit: Arc::new(Semaphore::new(max_in_flight.max(1))),
            xff_hops,
            overrides: Arc::default(),
            registry: None,
        }
    }

    /// The registry, consulted first for a provider's `service`, as Envoy reaches an
    /// authorizer through its cluster: a `ServiceEntry` for that host and port gives its
    /// endpoints (`STATIC` addresses, `DNS` names).
    pub fn with_registry(mut self, registry: Shared<crate::Registry>) -> Self {
        self.registry = Some(Source::Own(registry));
        self
    }

    /// Where a provider's checks are sent: a registered endpoint of its `service`, else
    /// `--resolve`, else the name itself (resolved by DNS when dialled).
    fn target<B>(&self, p: &HttpAuthorizer, req: &Request<B>) -> String {
        let target = match self.registry.as_ref().and_then(|r| r.load(req)) {
            Some(r) => r.service_target(&p.service, p.port),
            None => egress_core::ctx::Target::Name(p.service.as_str().into(), Some(p.port)),
        };
        crate::registry::dial_target(&target, p.port, &self.overrides)
    }

    /// Addresses for authorizer names (the gateway's `--resolve`), tried before DNS.
    pub fn with_overrides(mut self, overrides: egress_core::transport::Overrides) -> Self {
        self.overrides = Arc::new(overrides);
        self
    }
}

impl<S> Layer<S> for ExtAuthzLayer {
    type Service = ExtAuthz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ExtAuthz {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ExtAuthzLayer`].
#[derive(Clone, Debug)]
pub struct ExtAuthz<S> {
    inner: S,
    layer: ExtAuthzLayer,
}

/// Either the inner future directly, or the boxed check-then-call.
pub type ExtAuthzFuture = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;

impl<S, B> Service<Request<B>> for ExtAuthz<S>
where
    S: Service<Request<CheckedBody<B>>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = egress_core::respond::InnerOrBoxed<ErrInto<S::Future>, BoxBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use egress_core::respond::InnerOrBoxed;
        let Some(policies) = self.layer.policies.load(&req) else {
            return InnerOrBoxed::boxed(Box::pin(async { Ok(crate::snapshot::missing()) }));
        };
        if policies.custom_is_empty() {
            return InnerOrBoxed::inner(ErrInto(self.inner.call(req.map(Either::Left))));
        }
        let facts = match RequestFacts::of(&req, self.layer.xff_hops) {
            Ok(Some(f)) => f,
            Ok(None) => return InnerOrBoxed::boxed(Box::pin(async { Ok(error_response(403)) })),
            Err(_) => return InnerOrBoxed::boxed(Box::pin(async { Ok(bad_xff()) })),
        };
        let provider = {
            let attrs = facts.attributes(&req);
            policies
                .custom_match(&attrs)
                .map(|(name, policy)| (policies.provider(name), name.clone(), policy.clone()))
        };
        let Some((provider, provider_name, policy)) = provider else {
            // No authorizer was asked: none of its headers can be the authorizer's.
            policies.remove_authorizer_headers(req.headers_mut());
            return InnerOrBoxed::inner(ErrInto(self.inner.call(req.map(Either::Left))));
        };
        let authorizer_headers = policies.authorizer_headers();
        let Some(provider) = provider else {
            // Compilation refuses unknown providers; fail closed if one slips through.
            return InnerOrBoxed::boxed(Box::pin(async { Ok(error_response(403)) }));
        };
        let target = self.layer.target(&provider, &req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        InnerOrBoxed::boxed(Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // 1. The body, when the provider wants it.
            let (body, check_body) = match body_for_check(&provider, body).await? {
                Ok(split) => split,
                Err(too_large) => return Ok(too_large),
            };
            // 2. The check, bounded in number and time.
            let verdict = ask(&layer, &provider, &parts, check_body, &target).await;
            match verdict {
                Ok(answer) if answer.status == StatusCode::OK => {
                    // The authorizer saw the client's copies (when asked to); upstream sees
                    // only what the authorizer answered.
                    crate::authz::remove_matching(&authorizer_headers, &mut parts.headers);
                    match &answer.grpc {
                        Some(changes) => apply_grpc(changes, &mut parts.headers),
                        None => allowed_upstream(&provider, &answer.headers, &mut parts.headers),
                    }
                    let req = Request::from_parts(parts, body);
                    let mut rsp = inner.call(req).await.map_err(Into::into)?;
                    let downstream = answer.grpc.as_ref().map(|g| &g.downstream);
                    for (name, value) in downstream.into_iter().flatten() {
                        if !is_framing(name) {
                            rsp.headers_mut().append(name.clone(), value.clone());
                        }
                    }
                    for (name, value) in answer.headers.iter() {
                        if !is_framing(name)
                            && matches_any(&provider.headers_to_downstream_on_allow, name)
                        {
                            rsp.headers_mut().append(name.clone(), value.clone());
                        }
                    }
                    Ok(rsp)
                }
                Ok(answer) if answer.from_grpc || answer.status.as_u16() < 500 => {
                    tracing::info!(provider = %provider_name, %policy, status = answer.status.as_u16(), "external authorization denied");
                    Ok(denial(&provider, answer))
                }
                other => {
                    let why = match other {
                        Ok(answer) => format!("the authorizer answered {}", answer.status),
                        Err(e) => e,
                    };
                    if provider.fail_open {
                        tracing::warn!(provider = %provider_name, %policy, error = %why, "external authorization failed; failOpen lets the request through");
                        crate::authz::remove_matching(&authorizer_headers, &mut parts.headers);
                        let req = Request::from_parts(parts, body);
                        return inner.call(req).await.map_err(Into::into);
                    }
                    tracing::warn!(provider = %provider_name, %policy, error = %why, "external authorization failed; refused");
                    Ok(error_response(provider.status_on_error))
                }
            }
        }))
    }
}

/// The body the request goes on with, and what of it the authorizer sees (its first
/// `maxRequestBytes`, and whether that is partial); `Ok(Err(413))` when the body is over the
/// limit and partial messages are not allowed.
async fn body_for_check<B>(
    provider: &HttpAuthorizer,
    mut body: B,
) -> Result<Result<(CheckedBody<B>, (Bytes, bool)), Response<BoxBody>>, BoxError>
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError>,
{
    let Some(cfg) = &provider.include_request_body_in_check else {
        return Ok(Ok((Either::Left(body), (Bytes::new(), false))));
    };
    let max = cfg.max_request_bytes as usize;
    // A broken body is the client's: 400, never a 500 of the gateway's.
    let (read, complete) = read_up_to(&mut body, max)
        .await
        .map_err(egress_core::body::ClientBodyError)?;
    if !complete && !cfg.allow_partial_message {
        return Ok(Err(Rejection::new(RejectionKind::BodyTooLarge).respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            true,
            format!("egress: the request body is over the {max} bytes the authorizer accepts\n"),
        )));
    }
    // The authorizer sees at most `max` bytes; upstream gets the whole body.
    let check = read.slice(..read.len().min(max));
    let body = Either::Right(Prefixed {
        prefix: Some(read),
        rest: body,
    });
    Ok(Ok((body, (check, !complete))))
}

/// The authorizer saw the client's copies of its headers (when asked to); upstream sees only
/// what the authorizer answered, and never framing or routing headers: the authorizer cannot
/// change how the request is delimited or where it goes.
fn allowed_upstream(provider: &HttpAuthorizer, answer: &HeaderMap, request: &mut HeaderMap) {
    for (name, value) in answer {
        if !is_framing(name) && matches_any(&provider.headers_to_upstream_on_allow, name) {
            request.insert(name.clone(), value.clone());
        }
    }
}

/// What a gRPC authorizer's allowing answer changes: set, appended and removed request
/// headers (never framing or routing ones, which decide how the request is delimited and
/// where it goes).
fn apply_grpc(changes: &grpc::OkChanges, request: &mut HeaderMap) {
    for (name, value, append) in &changes.upstream {
        if is_framing(name) {
            continue;
        }
        if *append {
            request.append(name.clone(), value.clone());
        } else {
            request.insert(name.clone(), value.clone());
        }
    }
    for name in &changes.remove {
        if !is_framing(name) {
            request.remove(name);
        }
    }
}

/// An authorizer's answer: an HTTP authorizer's status, headers and body, or a gRPC
/// authorizer's decision in the same terms (with the changes it asks for when allowing).
#[derive(Debug)]
pub(crate) struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    grpc: Option<grpc::OkChanges>,
    /// A gRPC answer: any status but OK is a denial, whatever HTTP status it gives.
    from_grpc: bool,
}

/// Asks the authorizer, bounded in number (`--ext-authz-max-in-flight`) and in time (the
/// provider's `timeout`, for the answer's head and its body): its answer, or why there is
/// none.
async fn ask(
    layer: &ExtAuthzLayer,
    provider: &HttpAuthorizer,
    parts: &http::request::Parts,
    check_body: (Bytes, bool),
    target: &str,
) -> Result<Answer, String> {
    let Ok(_permit) = layer.limit.clone().try_acquire_owned() else {
        return Err("too many authorization checks in flight".to_owned());
    };
    if provider.grpc {
        let peer = parts
            .extensions
            .get::<egress_core::ctx::ClientAddr>()
            .map(|c| c.0);
        let principal = parts
            .extensions
            .get::<egress_core::ctx::SourcePrincipal>()
            .map(|p| p.0.clone());
        let check = grpc::check_request(parts, check_body, peer, principal.as_deref());
        let rsp = grpc::call(&layer.grpc_client, target, check, provider.timeout).await?;
        return Ok(grpc::answer(rsp));
    }
    let check = build_check(provider, parts, check_body, target);
    let rsp = match tokio::time::timeout(provider.timeout, layer.client.request(check)).await {
        Err(_) => return Err(format!("no answer within {:?}", provider.timeout)),
        Ok(Err(e)) => return Err(format!("{e}")),
        Ok(Ok(rsp)) => rsp,
    };
    let (rparts, rbody) = rsp.into_parts();
    match tokio::time::timeout(provider.timeout, Limited::new(rbody, 64 * 1024).collect()).await {
        Ok(Ok(b)) => Ok(Answer {
            status: rparts.status,
            headers: rparts.headers,
            body: b.to_bytes(),
            grpc: None,
            from_grpc: false,
        }),
        Ok(Err(e)) => Err(format!("reading the answer: {e}")),
        Err(_) => Err("the answer's body did not arrive in time".into()),
    }
}

/// The authorizer's denial as the client gets it: its status, body and the headers
/// `headersToDownstreamOnDeny` lets through (never framing ones), with the gateway's reason.
fn denial(provider: &HttpAuthorizer, answer: Answer) -> Response<BoxBody> {
    let mut rsp = Response::new(BoxBody::from(answer.body));
    *rsp.status_mut() = answer.status;
    for (name, value) in answer.headers.iter() {
        let pass = !is_framing(name)
            && (provider.headers_to_downstream_on_deny.is_empty()
                || matches_any(&provider.headers_to_downstream_on_deny, name));
        if pass {
            rsp.headers_mut().append(name.clone(), value.clone());
        }
    }
    rsp.headers_mut().insert(
        egress_core::ctx::DENIED_HEADER,
        HeaderValue::from_static("ext-authz-denied"),
    );
    rsp.extensions_mut()
        .insert(Rejection::new(RejectionKind::ExtAuthzDenied));
    rsp
}

fn error_response(status: u16) -> Response<BoxBody> {
    Rejection::new(RejectionKind::ExtAuthzError).respond(
        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        false,
        "egress: the external authorization check failed\n".into(),
    )
}

fn is_framing(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::HOST
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn matches_any(patterns: &[String], name: &HeaderName) -> bool {
    patterns
        .iter()
        .any(|p| Pattern::new(p).matches(name.as_str()))
}

/// Reads at most `max` bytes; `complete` says whether that was the whole body.
async fn read_up_to<B>(body: &mut B, max: usize) -> Result<(Bytes, bool), BoxError>
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > max {
                return Ok((buf.freeze(), false));
            }
        }
    }
    Ok((buf.freeze(), true))
}

fn build_check(
    p: &HttpAuthorizer,
    parts: &http::request::Parts,
    (body, partial): (Bytes, bool),
    target: &str,
) -> Request<Full<Bytes>> {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = if parts.method == http::Method::CONNECT {
        "/"
    } else {
        path
    };
    let uri = format!(
        "http://{target}{}{}",
        p.path_prefix.trim_end_matches('/'),
        path
    );
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    let headers: &mut HeaderMap = req.headers_mut();
    for (name, value) in parts.headers.iter() {
        if name == header::CONTENT_LENGTH || name == header::HOST {
            continue;
        }
        if matches_any(&p.include_request_headers_in_check, name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
    for (k, v) in &p.include_additional_headers_in_check {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if partial {
        headers.insert(
            "x-envoy-auth-partial-body",
            HeaderValue::from_static("true"),
        );
    }
    req
}

pin_project_lite::pin_project! {
    /// Maps an inner future's error into a [`BoxError`].
    pub struct ErrInto<F> {
        #[pin]
        inner: F,
    }
}

#[allow(
    non_snake_case,
    reason = "a tuple-like constructor for the pin-projected struct"
)]
fn ErrInto<F>(inner: F) -> ErrInto<F> {
    ErrInto { inner }
}

impl<F, T, E> Future for ErrInto<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests;
