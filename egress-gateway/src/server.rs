//! Listeners: the proxy (HTTP/1.1 + h2c, CONNECT) and the admin endpoints.

use egress_core::ctx::{ClientAddr, ClientCertificate, Outcome, RejectionKind, SourcePrincipal};
use egress_core::framing::{AmbiguousFraming, ConnectionFraming, FramingGuard};
use egress_core::mirror::{MirrorConfig, MirrorLayer};
use egress_core::proxy_headers::ProxyHeadersConfig;
use egress_core::telemetry::Metrics;
use egress_core::transport::{Dialer, DialerConfig, Overrides, UpstreamConfig, UpstreamProxy};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::{AdminState, GatewayDump, Listeners, ResolveDump, StaticDump};
use crate::cli::RunArgs;
use crate::config::Loaded;
use crate::stack::{self, StackConfig};
use egress_policy::istio::{Protocol, ServerTlsFiles};
use egress_policy::routes::ServerHosts;
use egress_policy::snapshot::PolicyStore;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::task::TaskTracker;

/// A gateway whose listeners are bound and which is ready to serve.
pub struct Gateway {
    proxy: TcpListener,
    admin: TcpListener,
    servers: Vec<ServerListener>,
    args: RunArgs,
    loaded: Loaded,
}

/// The listener of one port of the `Gateway` resources that select this gateway.
struct ServerListener {
    listener: TcpListener,
    addr: SocketAddr,
    hosts: ServerHosts,
    gateway: String,
    port: u16,
    passthrough: bool,
    /// A `protocol: TCP` server, served like passthrough but routed by port.
    tcp: bool,
    /// TLS termination (`SIMPLE`/`MUTUAL` servers).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What a Gateway server's listener speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Passthrough,
    Tcp,
}

/// Why the gateway could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl Gateway {
    /// Binds both listeners.
    pub async fn bind(args: RunArgs, loaded: Loaded) -> Result<Self, StartError> {
        let proxy = TcpListener::bind(args.listen)
            .await
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", args.listen)))?;
        let admin = TcpListener::bind(args.admin)
            .await
            .map_err(|e| StartError(format!("cannot listen on {} (admin): {e}", args.admin)))?;
        let servers = bind_servers(&args, &loaded).await;
        Ok(Self {
            proxy,
            admin,
            servers,
            args,
            loaded,
        })
    }

    /// The bound proxy address.
    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<(), StartError> {
        let proxy_addr = self
            .proxy
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        let admin_addr = self
            .admin
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        let args = &self.args;
        let (overrides, resolve_dump) = overrides(args)?;
        let upstream_proxy = upstream_proxy(args)?;
        let dialer = Arc::new(Dialer::new(
            DialerConfig::default()
                .with_connect_timeout(args.connect_timeout)
                .with_dns_timeout(args.dns_timeout)
                .with_source(args.egress_source_ip)
                .with_upstream_proxy(upstream_proxy)
                .with_overrides(overrides.clone())
                .with_listeners(
                    [proxy_addr, admin_addr]
                        .into_iter()
                        .chain(self.servers.iter().map(|s| s.addr))
                        .collect(),
                ),
        ));
        let request_timeout = (!args.request_timeout.is_zero()).then_some(args.request_timeout);
        let proxy_headers = ProxyHeadersConfig::new(&args.via_name)
            .map_err(|_| StartError(format!("invalid --via-name {:?}", args.via_name)))?;
        let ext_authz_overrides = overrides;
        let ext_authz_dial = ext_authz_overrides.clone();
        let (policy, config, binding, diagnostics) = self.loaded.into_policy();
        let (services, outbound) = (
            policy.registry.services().len(),
            policy.registry.policy().as_str(),
        );
        // The one swappable snapshot every request layer reads (a reload stores a new one).
        let policy = PolicyStore::new(policy);
        let security = crate::stack::Security {
            ext_authz: egress_policy::ext_authz::ExtAuthzLayer::from_snapshot(
                args.ext_authz_max_in_flight,
                args.xff_num_trusted_hops,
            )
            .with_overrides(ext_authz_overrides),
            jwks: egress_policy::jwt::JwksStore::default(),
            allow_path_parameters: args.allow_path_parameters,
            underscores: args.headers_with_underscores.into(),
            xff_hops: args.xff_num_trusted_hops,
        };
        {
            // Keys of jwksUris: fetched now, then kept fresh in the background.
            let fetcher: Arc<dyn egress_policy::jwt::FetchJwks> = Arc::new(
                crate::jwks::Fetcher::new().map_err(|e| StartError(format!("JWKS client: {e}")))?,
            );
            let store = security.jwks.clone();
            let current = policy.clone();
            let interval = args.jwks_refresh_interval;
            tokio::spawn(store.run_with(move || current.load().jwt.uris(), fetcher, interval));
        }
        for w in diagnostics.warnings() {
            tracing::warn!("{w}");
        }
        tracing::info!(
            sources = %config.sources.join(", "),
            services,
            virtual_hosts = config.virtual_hosts.len(),
            policy = outbound,
            gateway = %args.config.gateway_name,
            selected_by = %binding.selected.join(", "),
            "configuration loaded"
        );
        let mirror = MirrorLayer::new(
            MirrorConfig::default()
                .with_max_concurrency(args.mirror_max_concurrency)
                .with_max_body_bytes(args.mirror_max_body)
                .with_timeout(args.mirror_timeout)
                .with_shadow_suffix(args.mirror_host_suffix),
        );
        // Traces go to --otlp-endpoint, else to MeshConfig's default tracing provider (an
        // `opentelemetry` extension provider), reached through the registry as Envoy would.
        let otlp = otlp(
            args,
            config.mesh.as_ref(),
            &policy.load().registry,
            &ext_authz_dial,
        )?;
        let tracer = otlp.tracer.clone();
        let conn_stats = Arc::new(egress_tls::ConnStats::default());
        let tunnels = TaskTracker::new();
        let tunnel_slots = Arc::new(Semaphore::new(args.max_tunnels));
        let metrics = metrics(args)?;
        let graceful = Arc::new(GracefulShutdown::new());
        let stack_config = StackConfig {
            policy: policy.clone(),
            dialer,
            upstream: UpstreamConfig::default()
                .with_request_timeout(request_timeout)
                .with_body_idle_timeout(
                    (!args.body_idle_timeout.is_zero()).then_some(args.body_idle_timeout),
                ),
            proxy_headers,
            mirror: mirror.clone(),
            tunnel_idle_timeout: args.tunnel_idle_timeout,
            tunnels: tunnels.clone(),
            tunnel_slots: tunnel_slots.clone(),
            metrics: metrics.clone(),
            security: security.clone(),
            tracer: tracer.clone(),
            conn_stats: conn_stats.clone(),
        };
        let svc = stack::build(stack_config.clone(), None);
        let state = Arc::new(AdminState {
            ready: AtomicBool::new(false),
            mirror_stats: mirror.stats(),
            metrics: metrics.clone(),
            reloader: Arc::new(crate::reload::Reloader::new(
                args.config.clone(),
                config.clone(),
                policy.clone(),
            )),
            policy,
            security: security.clone(),
            tracer: tracer.clone(),
            conn_stats,
            dump: StaticDump {
                sources: config.sources.clone(),
                listeners: Listeners {
                    proxy: proxy_addr,
                    admin: admin_addr,
                    gateway_servers: self
                        .servers
                        .iter()
                        .map(|s| format!("{} ({} port {})", s.addr, s.gateway, s.port))
                        .collect(),
                },
                gateway: GatewayDump {
                    name: args.config.gateway_name.clone(),
                    labels: args
                        .config
                        .gateway_labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect(),
                    selected_by: binding.selected.clone(),
                },
                resolve: resolve_dump,
                ignored: config.ignored.clone(),
                warnings: diagnostics.warnings().map(|d| d.to_string()).collect(),
            },
        });

        let builder = Arc::new(http_builder(args));
        let limit = Arc::new(Semaphore::new(args.max_connections));

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(accept_loop(
            self.proxy,
            svc,
            builder.clone(),
            limit.clone(),
            graceful.clone(),
            metrics.clone(),
            None,
        ));
        for server in self.servers {
            tracing::info!(listener = %server.addr, gateway = %server.gateway, port = server.port, passthrough = server.passthrough, tcp = server.tcp, "Gateway server listener open");
            if server.passthrough || server.tcp {
                tasks.spawn(crate::passthrough::serve(
                    server.listener,
                    crate::passthrough::Passthrough {
                        hosts: Arc::new(server.hosts),
                        port: server.port,
                        policy: stack_config.policy.clone(),
                        dialer: stack_config.dialer.clone(),
                        metrics: metrics.clone(),
                        tunnels: tunnels.clone(),
                        idle: args.tunnel_idle_timeout,
                        limit: limit.clone(),
                        tunnel_slots: tunnel_slots.clone(),
                        tcp: server.tcp,
                    },
                ));
                continue;
            }
            let svc = stack::build(stack_config.clone(), Some(server.hosts));
            tasks.spawn(accept_loop(
                server.listener,
                svc,
                builder.clone(),
                limit.clone(),
                graceful.clone(),
                metrics.clone(),
                server.tls,
            ));
        }
        if let Some(endpoint) = &otlp.endpoint
            && !args.otlp_metrics_interval.is_zero()
        {
            let state = state.clone();
            egress_core::trace::spawn_metrics_export(egress_core::trace::MetricsExport {
                endpoint: endpoint.clone(),
                protocol: match otlp.protocol {
                    crate::cli::OtlpProtocolArg::Http => {
                        egress_core::trace::OtlpProtocol::HttpProtobuf
                    }
                    crate::cli::OtlpProtocolArg::Grpc => egress_core::trace::OtlpProtocol::Grpc,
                },
                interval: args.otlp_metrics_interval,
                service_name: args.config.gateway_name.clone(),
                source: Arc::new(move || crate::admin::metrics_text(&state)),
                tls: otlp.tls.clone(),
            });
        }
        let admin_task = serve_admin(self.admin, state.clone());
        let reloader = state.reloader.clone();
        tokio::spawn(reloader.run(args.watch_interval));
        state.ready.store(true, Ordering::Release);
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "listening");
        let admin = tokio::spawn(admin_task);
        tokio::select! {
            _ = tasks.join_next() => tracing::error!("a listener stopped"),
            _ = shutdown_signal() => {}
        }
        drain(&state, tasks, &tunnels, graceful, args.drain_timeout).await;
        admin.abort();
        if let Some(f) = metrics.access_file() {
            f.flush();
        }
        Ok(())
    }
}

/// Drain: readiness turns 503 (load balancers stop sending), listeners close, idle
/// keep-alive connections close, in-flight requests and tunnels get `deadline`.
async fn drain(
    state: &AdminState,
    mut tasks: tokio::task::JoinSet<()>,
    tunnels: &TaskTracker,
    graceful: Arc<GracefulShutdown>,
    deadline: std::time::Duration,
) {
    state.ready.store(false, Ordering::Release);
    tasks.shutdown().await;
    tunnels.close();
    tracing::info!(
        connections = graceful.count(),
        tunnels = tunnels.len(),
        ?deadline,
        "draining"
    );
    let drained = tokio::time::timeout(deadline, async {
        // The accept loops, which held the other references, are gone.
        if let Ok(graceful) = Arc::try_unwrap(graceful) {
            graceful.shutdown().await;
        }
        tunnels.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(
            tunnels = tunnels.len(),
            "drain deadline reached; closing what is left"
        ),
    }
}

/// The client-facing HTTP/1.1 and h2 settings: header read timeout and size, streams,
/// keep-alive pings.
fn http_builder(args: &RunArgs) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_read_timeout)
        .max_buf_size(args.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(args.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    builder
}

/// The admin listener: readiness, `/config_dump`, metrics.
async fn serve_admin(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((io, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                crate::admin::handle(state.clone(), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

/// Where traces and pushed metrics go, and the tracer.
struct Otlp {
    endpoint: Option<http::Uri>,
    protocol: crate::cli::OtlpProtocolArg,
    tls: Option<Arc<dyn egress_core::transport::ProxyTls>>,
    tracer: Option<Arc<egress_core::trace::Tracer>>,
}

/// `--otlp-endpoint`, else MeshConfig's default tracing provider (an `opentelemetry`
/// extension provider), reached through the registry as Envoy would.
fn otlp(
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
fn metrics(args: &RunArgs) -> Result<Arc<Metrics>, StartError> {
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
fn overrides(args: &RunArgs) -> Result<(Overrides, Vec<ResolveDump>), StartError> {
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
fn upstream_proxy(args: &RunArgs) -> Result<Option<UpstreamProxy>, StartError> {
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
fn mesh_collector<'a>(
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Opens one listener per port of the selected `Gateway` servers that speak HTTP. A port
/// that cannot be bound (privileged, in use) is logged and skipped: the main listener still
/// serves every route.
async fn bind_servers(args: &RunArgs, loaded: &Loaded) -> Vec<ServerListener> {
    let mut by_port: Vec<(u16, Vec<String>, String, Kind, Option<ServerTlsFiles>)> = Vec::new();
    for gw in &loaded.config.gateways {
        if !loaded.binding.selected.contains(&gw.meta.id()) {
            continue;
        }
        for server in &gw.servers {
            let passthrough = server.tls_mode.as_deref() == Some("PASSTHROUGH")
                && matches!(server.port.protocol, Protocol::Tls | Protocol::Https);
            let terminate = matches!(server.tls_mode.as_deref(), Some("SIMPLE" | "MUTUAL"))
                && matches!(
                    server.port.protocol,
                    Protocol::Https | Protocol::Http | Protocol::Http2
                );
            let tcp = server.tls_mode.is_none()
                && matches!(
                    server.port.protocol,
                    Protocol::Tcp | Protocol::Mongo | Protocol::Mysql | Protocol::Redis
                );
            if !passthrough
                && !terminate
                && !tcp
                && (!server.port.protocol.is_http() || server.tls_mode.is_some())
            {
                tracing::warn!(
                    gateway = %gw.meta.id(),
                    port = server.port.number,
                    protocol = ?server.port.protocol,
                    tls_mode = ?server.tls_mode,
                    "Gateway server not opened: HTTP, TCP, TLS PASSTHROUGH and terminating (SIMPLE/MUTUAL) servers are served; this combination is not"
                );
                continue;
            }
            let kind = if passthrough {
                Kind::Passthrough
            } else if tcp {
                Kind::Tcp
            } else {
                Kind::Http
            };
            match by_port
                .iter_mut()
                .find(|(p, _, _, _, _)| *p == server.port.number)
            {
                Some((_, _, _, other, _)) if *other != kind => {
                    tracing::warn!(
                        gateway = %gw.meta.id(),
                        port = server.port.number,
                        "Gateway server not opened: another server on this port speaks another protocol"
                    );
                }
                Some((_, hosts, _, _, _)) => hosts.extend(server.hosts.iter().cloned()),
                None => by_port.push((
                    server.port.number,
                    server.hosts.clone(),
                    gw.meta.id(),
                    kind,
                    terminate.then(|| server.tls_files.clone()),
                )),
            }
        }
    }
    let mut out = Vec::new();
    for (port, hosts, gateway, kind, tls_files) in by_port {
        let tls = match tls_files {
            None => None,
            Some(files) => {
                let (Some(cert), Some(key)) = (&files.server_certificate, &files.private_key)
                else {
                    continue;
                };
                let ca = files.ca_certificates.as_deref().map(std::path::Path::new);
                match egress_tls::server_config(cert.as_ref(), key.as_ref(), ca) {
                    Ok(config) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
                    Err(error) => {
                        tracing::error!(%gateway, port, %error, "Gateway server not opened: invalid TLS settings");
                        continue;
                    }
                }
            }
        };
        let Some(listen_port) = port.checked_add(args.gateway_port_offset) else {
            tracing::error!(
                port,
                offset = args.gateway_port_offset,
                "Gateway server port + offset overflows"
            );
            continue;
        };
        let addr = SocketAddr::new(args.gateway_bind, listen_port);
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap_or(addr);
                out.push(ServerListener {
                    listener,
                    addr,
                    hosts: ServerHosts::new(hosts.iter().map(String::as_str), port),
                    gateway,
                    port,
                    passthrough: kind == Kind::Passthrough,
                    tcp: kind == Kind::Tcp,
                    tls,
                });
            }
            Err(error) => tracing::error!(
                %addr,
                %gateway,
                port,
                %error,
                "cannot listen for a Gateway server (use --gateway-port-offset for unprivileged ports)"
            ),
        }
    }
    out
}

/// The refusal reason of an HTTP parser error, if the connection ended with one.
fn parser_refusal(error: &(dyn std::error::Error + 'static)) -> Option<RejectionKind> {
    let hyper = egress_core::error::cause_ref::<hyper::Error>(error)?;
    if hyper.is_parse_too_large() {
        Some(RejectionKind::HeaderTooLarge)
    } else if hyper.is_parse() {
        Some(RejectionKind::Malformed)
    } else if hyper.is_timeout() {
        Some(RejectionKind::HeaderTimeout)
    } else {
        None
    }
}

/// The service for one connection: its client address, principal and verified certificate
/// go into every request.
fn with_client<S>(
    svc: S,
    peer: SocketAddr,
    principal: Option<SourcePrincipal>,
    cert: Option<ClientCertificate>,
    framing: Arc<ConnectionFraming>,
) -> TowerToHyperService<
    impl tower::Service<
        http::Request<Incoming>,
        Response = S::Response,
        Error = S::Error,
        Future = S::Future,
    > + Clone,
>
where
    S: tower::Service<http::Request<Incoming>> + Clone,
{
    TowerToHyperService::new(tower::ServiceExt::map_request(
        svc,
        move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            if framing.take() {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            if let Some(p) = &principal {
                req.extensions_mut().insert(p.clone());
            }
            if let Some(c) = &cert {
                req.extensions_mut().insert(c.clone());
            }
            req
        },
    ))
}

async fn accept_loop<S>(
    listener: TcpListener,
    svc: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limit: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    metrics: Arc<Metrics>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<egress_core::BoxBody>,
            Error = egress_core::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics.limit_hit("max_connections");
            tracing::warn!(%peer, "connection refused: --max-connections reached");
            drop(io);
            continue;
        };
        let _ = io.set_nodelay(true);
        let svc = svc.clone();
        let builder = builder.clone();
        let metrics = metrics.clone();
        // A watcher, not the shutdown handle: the drain must be able to take the handle back.
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The client's address travels with each of its requests (consistent hashing by
            // source IP, authorization by ipBlocks), and so does a proven principal.
            let result = match tls {
                None => {
                    let (io, framing) = FramingGuard::new(io);
                    let svc = with_client(svc, peer, None, None, framing);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(io),
                    );
                    let stream = match handshake.await {
                        Ok(Ok(s)) => s,
                        Ok(Err(error)) => {
                            metrics.refused(Outcome::Denied(RejectionKind::ClientTlsHandshake));
                            tracing::info!(%peer, %error, "TLS handshake with a client failed");
                            return;
                        }
                        Err(_) => {
                            metrics.refused(Outcome::Denied(RejectionKind::ClientTlsHandshake));
                            tracing::info!(%peer, "TLS handshake with a client timed out");
                            return;
                        }
                    };
                    // Only a verifying (MUTUAL) server has peer certificates here: rustls
                    // hands them over only once they chain to the server's CA.
                    let (principal, cert) = match stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                    {
                        Some(cert) => (
                            egress_tls::certificate_principal(cert)
                                .map(|p| SourcePrincipal(p.into())),
                            http::HeaderValue::from_str(&egress_tls::forwarded_client_cert(cert))
                                .ok()
                                .map(ClientCertificate),
                        ),
                        None => (None, None),
                    };
                    let (stream, framing) = FramingGuard::new(stream);
                    let svc = with_client(svc, peer, principal, cert, framing);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(error) = result {
                // hyper answers what it cannot parse itself (400, 431) and closes; those
                // refusals never reach the stack, so they are logged and counted here.
                match parser_refusal(&*error) {
                    Some(reason) => {
                        metrics.refused(Outcome::Denied(reason));
                        tracing::info!(%peer, reason = reason.token(), %error, "request refused by the HTTP parser");
                    }
                    None => tracing::debug!(%peer, %error, "connection ended with an error"),
                }
            }
        });
    }
}
