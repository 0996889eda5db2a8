//! An application's HTTP client with the registry check and the SSRF guard built in.

use bytes::Bytes;
use egress_core::destination::DestinationLayer;
use egress_core::respond;
use egress_core::transport::{Dialer, DialerConfig, Upstream, UpstreamConfig};
use egress_core::{BoxBody, BoxError};
use egress_policy::istio::ConfigSet;
use egress_policy::{Registry, RegistryOnlyLayer};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Builds a client stack that allows only what `yaml` registers (REGISTRY_ONLY).
///
/// The layers are the gateway's own; only the destination layer differs: requests built by
/// the application carry their authority in the URI, so no `Host` header is required.
pub fn client(
    yaml: &str,
) -> Result<
    impl Service<Request<Empty<Bytes>>, Response = Response<BoxBody>, Error = BoxError> + Clone + use<>,
    String,
> {
    let config = ConfigSet::load_str("client.yaml", yaml);
    let (registry, _warnings) = Registry::compile(&config, None).map_err(|d| d.to_string())?;
    let dialer = Arc::new(Dialer::new(DialerConfig::default()));
    Ok(ServiceBuilder::new()
        .map_result(respond::into_response)
        .layer(DestinationLayer::for_client())
        .layer(RegistryOnlyLayer::new(Arc::new(registry)))
        .service(Upstream::tcp(dialer, UpstreamConfig::default())))
}

/// The registry the example uses: `api.internal.test` at a fixed loopback address (a STATIC
/// endpoint, which the SSRF guard accepts because the operator declared it).
pub fn example_registry(origin: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: internal-api }}
spec:
  hosts: [api.internal.test]
  ports: [{{ number: 80, name: http, protocol: HTTP, targetPort: {port} }}]
  resolution: STATIC
  endpoints: [{{ address: {ip} }}]
"#,
        port = origin.port(),
        ip = origin.ip()
    )
}

/// Sends a GET through the stack; returns the status, the `x-egress-denied` header and the body.
pub async fn get<S>(svc: S, url: &str) -> Result<(u16, Option<String>, String), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<BoxBody>, Error = BoxError>,
{
    let req = Request::get(url).body(Empty::new())?;
    let rsp = svc.oneshot(req).await?;
    let status = rsp.status().as_u16();
    let denied = rsp
        .headers()
        .get("x-egress-denied")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, denied, String::from_utf8_lossy(&body).into_owned()))
}
