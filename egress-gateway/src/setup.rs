//! What the command line builds before the gateway binds: the dialer, upstream and mirror
//! bounds, metrics and the access log, `--resolve` pins, the upstream proxy and the trace
//! exporter.

use egress_core::mirror::{MirrorConfig, MirrorLayer};
use egress_core::telemetry::Metrics;
use egress_core::transport::{Dialer, DialerConfig, Overrides, UpstreamConfig, UpstreamProxy};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::ResolveDump;
use crate::cli::RunArgs;

/// Why the gateway could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Per-request upstream bounds: the whole request, and the body's idle time.
pub(crate) fn upstream_config(args: &RunArgs) -> UpstreamConfig {
    UpstreamConfig::default()
        .with_request_timeout((!args.request_timeout.is_zero()).then_some(args.request_timeout))
        .with_body_idle_timeout(
            (!args.body_idle_timeout.is_zero()).then_some(args.body_idle_timeout),
        )
}

/// The shadow-traffic layer, bounded as the command line says.
pub(crate) fn mirror(args: &RunArgs) -> MirrorLayer {
    MirrorLayer::new(
        MirrorConfig::default()
            .with_max_concurrency(args.mirror_max_concurrency)
            .with_max_body_bytes(args.mirror_max_body)
            .with_timeout(args.mirror_timeout)
            .with_shadow_suffix(args.mirror_host_suffix),
    )
}

/// The one dialer of the gateway: timeouts, source address, upstream proxy, `--resolve`
/// pins, and the gateway's own listening addresses (never dialled, so no request loops).
pub(crate) fn dialer(
    args: &RunArgs,
    overrides: Overrides,
    upstream_proxy: Option<UpstreamProxy>,
    listening: Vec<SocketAddr>,
) -> Arc<Dialer> {
    Arc::new(Dialer::new(
        DialerConfig::default()
            .with_connect_timeout(args.connect_timeout)
            .with_dns_timeout(args.dns_timeout)
            .with_source(args.egress_source_ip)
            .with_upstream_proxy(upstream_proxy)
            .with_overrides(overrides)
            .with_listeners(listening),
    ))
}

/// Where traces and pushed metrics go, and the tracer.
pub(crate) struct Otlp {
    pub(crate) endpoint: Option<http::Uri>,
    pub(crate) protocol: crate::cli::OtlpProtocolArg,
    pub(crate) tls: Option<Arc<dyn egress_core::transport::ProxyTls>>,
    pub(crate) tracer: Option<Arc<egress_core::trace::Tracer>>,
}

/// `--otlp-endpoint`, else MeshConfig's default tracing provider (an `opentelemetry`
/// extension provider), reached through the registry as Envoy would.
pub(crate) fn otlp(
    args: &RunArgs,
    mesh: Option<&egress_policy::istio::mesh::MeshConfig>,
    registry: &egress_policy::Registry,
    overrides: &Overrides,
) -> Result<Otlp, StartError> {
    let (otlp_endpoint, otlp_protocol) = match &args.otlp_endpoint {
        Some(e) => (Some(e.clone()), args.otlp_protocol),
        None => match mesh.and_then(mesh_collector(registry, overrides)) {
            Some((uri, protocol, name)) => {
                tracing::info!(provider = %name, endpoint = %uri, "traces exported to MeshConfig's default tracing provider");
                (Some(uri), protocol)
            }
            None => (None, args.otlp_protocol),
        },
    };
    let otlp_tls: Option<Arc<dyn egress_core::transport::ProxyTls>> = match &otlp_endpoint {
        Some(e) if e.scheme_str() == Some("https") => {
            let alpn = match otlp_protocol {
                crate::cli::OtlpProtocolArg::Grpc => vec![b"h2".to_vec()],
                crate::cli::OtlpProtocolArg::Http => vec![b"http/1.1".to_vec()],
            };
            let client = egress_tls::ProxyTlsClient::with_alpn(args.otlp_ca.clone(), alpn)
                .map_err(|e| StartError(format!("--otlp-ca: {e}")))?;
            Some(Arc::new(client))
        }
        _ => None,
    };
    let tracer = otlp_endpoint.as_ref().map(|endpoint| {
        let mut c =
            egress_core::trace::TraceConfig::new(endpoint.clone(), &args.config.gateway_name);
        c.protocol = match otlp_protocol {
            crate::cli::OtlpProtocolArg::Http => egress_core::trace::OtlpProtocol::HttpProtobuf,
            crate::cli::OtlpProtocolArg::Grpc => egress_core::trace::OtlpProtocol::Grpc,
        };
        c.sampling = args.trace_sampling / 100.0;
        c.tls = otlp_tls.clone();
        egress_core::trace::Tracer::start(c)
    });
    Ok(Otlp {
        endpoint: otlp_endpoint,
        protocol: otlp_protocol,
        tls: otlp_tls,
        tracer,
    })
}

/// Request metrics, with the access log on stderr or in its own file.
pub(crate) fn metrics(args: &RunArgs) -> Result<Arc<Metrics>, StartError> {
    Ok(match &args.access_log_file {
        Some(path) => {
            let file = egress_core::access_log::AccessLogFile::open(
                path,
                args.access_log_format
                    .as_deref()
                    .unwrap_or(&args.log_format)
                    == "json",
            )
            .map_err(|e| StartError(format!("--access-log-file {}: {e}", path.display())))?;
            Metrics::with_access_file(&args.config.gateway_name, file)
        }
        None => Metrics::new(&args.config.gateway_name, args.access_log == "on"),
    })
}

/// `--resolve` pins, and how `/config_dump` shows them.
pub(crate) fn overrides(args: &RunArgs) -> Result<(Overrides, Vec<ResolveDump>), StartError> {
    let mut overrides = Overrides::new();
    for spec in &args.resolve {
        overrides.add(spec).map_err(|e| StartError(e.to_string()))?;
    }
    let resolve_dump = overrides
        .iter()
        .map(|(h, p, a)| ResolveDump {
            host: h.to_owned(),
            port: p,
            addresses: a
                .iter()
                .map(|a| match a.port {
                    Some(p) => std::net::SocketAddr::new(a.ip, p).to_string(),
                    None => a.ip.to_string(),
                })
                .collect(),
        })
        .collect();
    Ok((overrides, resolve_dump))
}

/// `--upstream-proxy`, with TLS to it for an `https://` URL.
pub(crate) fn upstream_proxy(args: &RunArgs) -> Result<Option<UpstreamProxy>, StartError> {
    Ok(match &args.upstream_proxy {
        None => None,
        Some(url) => {
            let mut proxy = UpstreamProxy::parse(url)
                .map_err(|e| StartError(e.to_string()))?
                .only_for(args.upstream_proxy_for.clone());
            if proxy.is_https() {
                let tls = egress_tls::ProxyTlsClient::new(args.upstream_proxy_ca.clone())
                    .map_err(|e| StartError(format!("--upstream-proxy-ca: {e}")))?;
                proxy = proxy.with_tls(Arc::new(tls));
            }
            Some(proxy)
        }
    })
}

/// The collector of MeshConfig's `defaultProviders.tracing`: the first name that is an
/// `opentelemetry` provider, dialled through the registry (`ServiceEntry` endpoints), then
/// `--resolve`, then DNS.
pub(crate) fn mesh_collector<'a>(
    registry: &'a egress_policy::Registry,
    overrides: &'a egress_core::transport::Overrides,
) -> impl FnOnce(
    &egress_policy::istio::mesh::MeshConfig,
) -> Option<(http::Uri, crate::cli::OtlpProtocolArg, String)>
+ 'a {
    move |mesh| {
        let p = mesh
            .default_tracing
            .iter()
            .find_map(|name| mesh.otel_providers.iter().find(|p| &p.name == name))?;
        let target = registry.service_target(&p.service, p.port);
        let authority = egress_policy::registry::dial_target(&target, p.port, overrides);
        let (path, protocol) = match &p.http_path {
            Some(path) => (path.as_str(), crate::cli::OtlpProtocolArg::Http),
            None => ("", crate::cli::OtlpProtocolArg::Grpc),
        };
        let uri = format!("http://{authority}{path}").parse().ok()?;
        Some((uri, protocol, p.name.clone()))
    }
}
