//! The one function that assembles the gateway's request stack.

use egress_core::ctx::{
    Destination, Outcome, Rejection, RejectionKind, RequestForm, Scheme, TunnelInspection,
    UpstreamPlan,
};
use egress_core::destination::DestinationLayer;
use egress_core::gateway_headers::GatewayHeadersLayer;
use egress_core::mirror::MirrorLayer;
use egress_core::proxy_headers::{ProxyHeadersConfig, ProxyHeadersLayer};
use egress_core::respond::{self, error_response};
use egress_core::retry::RetryLayer;
use egress_core::telemetry::{Metrics, TelemetryLayer};
use egress_core::trace::{ClientSpanLayer, TraceLayer, Tracer};
use egress_core::transport::{DialTable, Dialer, Upstream, UpstreamConfig};
use egress_core::{BoxBody, BoxError};
use egress_policy::ext_authz::ExtAuthzLayer;
use egress_policy::jwt::JwksStore;
use egress_policy::layers::{
    AuthzLayer, JwtLayer, PathNormalizeLayer, RegistryOnlyLayer, RouteLayer,
};
use egress_policy::routes::{ServerHosts, ServerHostsLayer};
use egress_policy::snapshot::{PolicyStore, SnapshotLayer};
use egress_tls::EgressConnector;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceBuilder};

use crate::tunnel;

/// Everything the stack is built from.
#[derive(Clone)]
pub struct StackConfig {
    /// The compiled configuration, swapped as one on reload and loaded once per request.
    pub policy: PolicyStore,
    /// Resolution, SSRF guard and dialling.
    pub dialer: Arc<Dialer>,
    /// Upstream pool settings.
    pub upstream: UpstreamConfig,
    /// `Via` pseudonym.
    pub proxy_headers: ProxyHeadersConfig,
    /// Shadow copies (shared counters and concurrency bound across listeners).
    pub mirror: MirrorLayer,
    /// How long a `CONNECT` tunnel may stay silent in both directions.
    pub tunnel_idle_timeout: Duration,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Spliced tunnels, so that a drain can wait for them.
    pub tunnels: TaskTracker,
    /// `--max-tunnels`: one permit per open tunnel, shared with passthrough listeners.
    pub tunnel_slots: Arc<Semaphore>,
    /// Authentication and authorization.
    pub security: Security,
    /// Traces, when an OTLP endpoint is configured.
    pub tracer: Option<Arc<Tracer>>,
    /// Upstream connections open and made, across listeners.
    pub conn_stats: Arc<egress_tls::ConnStats>,
}

/// Security settings and what the security layers share across listeners (their policies
/// are in the snapshot).
#[derive(Clone)]
pub struct Security {
    /// Keys of `jwksUri`s.
    pub jwks: JwksStore,
    /// `--allow-path-parameters`.
    pub allow_path_parameters: bool,
    /// `--headers-with-underscores`.
    pub underscores: egress_core::destination::Underscores,
    /// Trusted `X-Forwarded-For` hops.
    pub xff_hops: usize,
    /// The external authorizer client (pooled, bounded), shared by every listener.
    pub ext_authz: ExtAuthzLayer,
}

/// Builds the request stack. The first layer listed sees the request first.
pub fn build(
    config: StackConfig,
    server_hosts: Option<ServerHosts>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<BoxBody>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<BoxBody>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    let http = ServiceBuilder::new()
        // Hop-by-hop headers, Via, loop detection: only for requests that are forwarded.
        .layer(ProxyHeadersLayer::new(config.proxy_headers))
        // Fire-and-forget shadow copies for routes with mirrors; bounded, never waited for.
        .layer(config.mirror)
        // Route retries, for bodies that can be sent again.
        .layer(RetryLayer::new())
        // A client span per attempt (and per mirror copy); `traceparent` for the next hop.
        .option_layer(config.tracer.clone().map(ClientSpanLayer::new))
        // Resolve once, SSRF guard, pooled keep-alive connections; TLS origination where a
        // DestinationRule asks for it (connections pooled per SNI and port).
        .service({
            let table = DialTable::default();
            let connector = EgressConnector::new(
                table.clone(),
                config.dialer.config().connect_timeout(),
                config.dialer.config().source(),
            )
            .with_stats(config.conn_stats.clone());
            Upstream::with_connector(
                connector,
                config.dialer.clone(),
                config.upstream.with_dial_table(table),
            )
        });
    ServiceBuilder::new()
        // A gRPC call gets the gateway's refusals as gRPC statuses (Trailers-Only); outside
        // telemetry, which records the HTTP status that was decided.
        .layer(egress_core::grpc_reply::GrpcReplyLayer)
        // Metrics and the access log: they see every answer.
        .layer(TelemetryLayer::new(config.metrics.clone()))
        // One configuration snapshot for the whole request: every layer below reads it.
        .layer(SnapshotLayer::new(config.policy))
        // The server span, around everything the gateway answers.
        .option_layer(config.tracer.map(TraceLayer::new))
        // Errors become 502/503/504 with `x-egress-error` and a body; nothing escapes as a reset.
        .map_result(respond::into_response)
        // The only parser of where a request goes; 400 and close on anything ambiguous.
        .layer(DestinationLayer::new().with_underscores(config.security.underscores))
        // What only the gateway writes (x-egress-*, x-forwarded-client-cert) is never taken
        // from the client; a verified client certificate sets x-forwarded-client-cert.
        .layer(GatewayHeadersLayer::new())
        // One path for everything below: what is authorised is what goes upstream.
        .layer(
            PathNormalizeLayer::from_snapshot()
                .allow_path_parameters(config.security.allow_path_parameters),
        )
        // On a Gateway server's listener: only the hosts that server declares (404 else).
        .option_layer(server_hosts.map(ServerHostsLayer::new))
        // RequestAuthentication: 401 for a bad token, identity for the policies below.
        .layer(JwtLayer::from_snapshot(config.security.jwks))
        // CUSTOM policies: the external authorizer decides first.
        .layer(config.security.ext_authz)
        // DENY, then ALLOW: 403 `RBAC: access denied`.
        .layer(AuthzLayer::from_snapshot(config.security.xff_hops))
        // VirtualService routes: choose the destination (checked against the registry when
        // compiled), or answer directly, redirect, or 404 when no route matches.
        .layer(RouteLayer::from_snapshot())
        // Unrouted requests: unregistered destinations never reach the network.
        .layer(RegistryOnlyLayer::from_snapshot())
        .service(Dispatch {
            http,
            dialer: config.dialer,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
            tunnels: config.tunnels,
            tunnel_slots: config.tunnel_slots,
            metrics: config.metrics,
        })
}

/// Sends `CONNECT` to a tunnel and every other request to the HTTP forwarding stack.
#[derive(Clone)]
pub struct Dispatch<H> {
    http: H,
    dialer: Arc<Dialer>,
    tunnel_idle_timeout: Duration,
    tunnels: TaskTracker,
    tunnel_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl<H, B> Service<Request<B>> for Dispatch<H>
where
    H: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError>,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = DispatchFuture<H::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(dst) = req.extensions().get::<Destination>() else {
            return DispatchFuture::Ready {
                response: Some(Rejection::new(RejectionKind::MissingDestination).respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    false,
                    "egress: no destination was determined for this request\n".to_owned(),
                )),
            };
        };
        if req.method() == Method::CONNECT {
            let Ok(slot) = self.tunnel_slots.clone().try_acquire_owned() else {
                self.metrics.limit_hit("max_tunnels");
                let mut rsp: Response<BoxBody> = Rejection::new(RejectionKind::TunnelLimit)
                    .respond(
                        StatusCode::TOO_MANY_REQUESTS,
                        true,
                        "egress: too many tunnels are open (--max-tunnels); try again later\n"
                            .to_owned(),
                    );
                rsp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return DispatchFuture::Ready {
                    response: Some(rsp),
                };
            };
            let dialer = self.dialer.clone();
            let idle = self.tunnel_idle_timeout;
            let tunnels = self.tunnels.clone();
            let metrics = self.metrics.clone();
            return DispatchFuture::Tunnel {
                future: Box::pin(connect(req, dialer, idle, tunnels, metrics, slot)),
            };
        }
        if dst.scheme() == Scheme::Https && dst.form() == RequestForm::Absolute {
            let why = format!(
                "egress: https://{dst} as a proxy request target is not supported: TLS origination \
                 is not configured for it; send it through a CONNECT tunnel (curl -x does)\n"
            );
            return DispatchFuture::Ready {
                // Closed: the client meant TLS to the origin and may already be sending
                // what it thinks is protected.
                response: Some(Rejection::new(RejectionKind::Unsupported).respond(
                    StatusCode::BAD_REQUEST,
                    true,
                    why,
                )),
            };
        }
        DispatchFuture::Http {
            future: self.http.call(req),
        }
    }
}

/// Dials the destination, answers 200, and splices the upgraded connection to it. A failed
/// dial answers with the failure and `Connection: close`: hyper would otherwise read the
/// bytes the client sent after `CONNECT` as a new request.
async fn connect<B>(
    mut req: Request<B>,
    dialer: Arc<Dialer>,
    idle: Duration,
    tunnels: TaskTracker,
    metrics: Arc<Metrics>,
    slot: OwnedSemaphorePermit,
) -> Result<Response<BoxBody>, BoxError> {
    let Some(dst) = req.extensions().get::<Destination>().cloned() else {
        return Err("tunnel: no destination".into());
    };
    let plan = req.extensions().get::<UpstreamPlan>().cloned();
    let upstream = match dialer.connect(&dst, plan.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            let mut rsp: Response<BoxBody> = error_response(&e);
            rsp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(rsp);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tcp = metrics.tunnel_opened(
        req.extensions()
            .get::<Arc<egress_core::ctx::TelemetrySlot>>()
            .map(|s| &**s),
        "CONNECT",
        dst.to_string(),
    );
    let inspection = req
        .extensions()
        .get::<TunnelInspection>()
        .copied()
        .unwrap_or(TunnelInspection::Opaque);
    // A `tls` route may send the tunnel elsewhere; the SNI still names the host asked for.
    let sni_host = req
        .extensions()
        .get::<egress_core::ctx::TunnelAuthority>()
        .map_or_else(|| dst.host().clone(), |a| a.0.clone());
    tunnels.spawn(async move {
        // The slot is the tunnel's until it closes.
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let initial = match inspection {
                    TunnelInspection::Opaque => Vec::new(),
                    TunnelInspection::Tls => match tunnel::inspect(&mut client, &sni_host).await {
                        Ok(bytes) => bytes,
                        Err((reason, why)) => {
                            metrics.refused(Outcome::Denied(reason));
                            tracing::info!(%dst, reason = reason.token(), why, "tunnel closed: ClientHello refused");
                            tcp.closed_because(Outcome::Denied(reason), 0, 0);
                            return;
                        }
                    },
                };
                let (sent, received) = tunnel::splice(client, upstream, initial, idle, &dst).await;
                tcp.closed(sent, received);
            }
            Err(error) => {
                tcp.closed(0, 0);
                tracing::debug!(%dst, %error, "CONNECT upgrade failed");
            }
        }
    });
    Ok(Response::new(BoxBody::empty()))
}

pin_project! {
    /// The future of [`Dispatch`].
    #[project = DispatchProj]
    #[allow(missing_docs)]
    pub enum DispatchFuture<F> {
        Ready { response: Option<Response<BoxBody>> },
        // Boxed: a tunnel set-up is rare next to forwarded requests and awaits a dial.
        Tunnel { future: Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>> },
        Http { #[pin] future: F },
    }
}

impl<F> Future for DispatchFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, BoxError>>,
{
    type Output = Result<Response<BoxBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DispatchProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            DispatchProj::Tunnel { future } => future.as_mut().poll(cx),
            DispatchProj::Http { future } => future.poll(cx),
        }
    }
}
