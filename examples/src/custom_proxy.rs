//! A custom egress proxy: the policy layers composed into an embedder's own hyper server,
//! configured from Istio YAML and reloadable as one snapshot.

use egress_core::destination::DestinationLayer;
use egress_core::gateway_headers::GatewayHeadersLayer;
use egress_core::proxy_headers::{ProxyHeadersConfig, ProxyHeadersLayer};
use egress_core::respond;
use egress_core::transport::{Dialer, DialerConfig, Upstream, UpstreamConfig};
use egress_core::{BoxBody, BoxError};
use egress_policy::compile::{Settings, compile};
use egress_policy::istio::ConfigSet;
use egress_policy::layers::{AuthzLayer, PathNormalizeLayer, RegistryOnlyLayer, RouteLayer};
use egress_policy::snapshot::{Policy, PolicyStore, SnapshotLayer};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// Compiles Istio YAML into the one [`Policy`] the layers read; the error lists every
/// problem with its file, line and field.
pub fn policy(yaml: &str) -> Result<Policy, String> {
    let config = ConfigSet::load_str("proxy.yaml", yaml);
    let settings = Settings {
        gateway_name: "default/custom-proxy".into(),
        ..Settings::default()
    };
    Ok(compile(&config, &settings)
        .map_err(|d| d.to_string())?
        .policy)
}

/// The request stack, outermost first: one snapshot per request, the one destination
/// parser, the gateway's own headers, path normalisation, DENY/ALLOW, routes, the registry
/// check, proxy headers, and the pooled upstream (resolve once, SSRF guard).
pub fn stack(
    policy: PolicyStore,
) -> impl tower::Service<
    http::Request<Incoming>,
    Response = http::Response<BoxBody>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<BoxBody>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    let dialer = Arc::new(Dialer::new(DialerConfig::default()));
    ServiceBuilder::new()
        .layer(SnapshotLayer::new(policy))
        .map_result(respond::into_response)
        .layer(DestinationLayer::new())
        .layer(GatewayHeadersLayer::new())
        .layer(PathNormalizeLayer::from_snapshot())
        .layer(AuthzLayer::from_snapshot(0))
        .layer(RouteLayer::from_snapshot())
        .layer(RegistryOnlyLayer::from_snapshot())
        .layer(ProxyHeadersLayer::new(ProxyHeadersConfig::default()))
        .service(Upstream::tcp(dialer, UpstreamConfig::default()))
}

/// Serves `listener` as a forward proxy (`curl -x`) under `policy`; `store` a new
/// [`Policy`] in it to reload: requests in flight finish on the one they started with.
pub async fn serve(listener: TcpListener, policy: PolicyStore) {
    let svc = stack(policy);
    while let Ok((io, peer)) = listener.accept().await {
        let svc =
            tower::ServiceExt::map_request(svc.clone(), move |mut req: http::Request<Incoming>| {
                req.extensions_mut()
                    .insert(egress_core::ctx::ClientAddr(peer));
                req
            });
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}
