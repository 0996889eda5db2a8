//! Listeners: the proxy (HTTP/1.1 + h2c, CONNECT) and the admin endpoints.

use egress_core::mirror::{MirrorConfig, MirrorLayer};
use egress_core::proxy_headers::ProxyHeadersConfig;
use egress_core::telemetry::Metrics;
use egress_core::transport::{Dialer, DialerConfig, Overrides, UpstreamConfig, UpstreamProxy};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::{AdminState, GatewayDump, Listeners, ResolveDump, StaticDump};
use crate::cli::RunArgs;
use crate::config::Loaded;
use crate::listeners::{ServerListener, accept_loop, bind_servers, http_builder};
use crate::stack::{self, StackConfig};
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
        let listening: Vec<SocketAddr> = [proxy_addr, admin_addr]
            .into_iter()
            .chain(self.servers.iter().map(|s| s.addr))
            .collect();
        let dialer = dialer(args, overrides.clone(), upstream_proxy, listening);
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
        let security = security(args, ext_authz_overrides);
        spawn_jwks(&security, &policy, args)?;
        log_loaded(args, &config, &binding, &diagnostics, services, outbound);
        let mirror = mirror(args);
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
            upstream: upstream_config(args),
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
            dump: static_dump(
                args,
                Listeners {
                    proxy: proxy_addr,
                    admin: admin_addr,
                    gateway_servers: self
                        .servers
                        .iter()
                        .map(|s| format!("{} ({} port {})", s.addr, s.gateway, s.port))
                        .collect(),
                },
                &binding,
                &config,
                &diagnostics,
                resolve_dump,
            ),
        });

        let builder = Arc::new(http_builder(args));
        let limit = Arc::new(Semaphore::new(args.max_connections));

        let tasks = spawn_listeners(
            self.proxy,
            self.servers,
            svc,
            &stack_config,
            builder,
            limit,
            graceful.clone(),
            args,
        );
        spawn_metrics_export(&otlp, args, &state);
        serve_until_shutdown(self.admin, state, tasks, &tunnels, graceful, args).await;
        if let Some(f) = metrics.access_file() {
            f.flush();
        }
        Ok(())
    }
}

/// Logs the configuration that loaded: its warnings, then one line of what it holds.
fn log_loaded(
    args: &RunArgs,
    config: &egress_policy::istio::ConfigSet,
    binding: &egress_policy::model::Binding,
    diagnostics: &egress_policy::diag::Diagnostics,
    services: usize,
    outbound: &str,
) {
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
}

/// Per-request upstream bounds: the whole request, and the body's idle time.
fn upstream_config(args: &RunArgs) -> UpstreamConfig {
    UpstreamConfig::default()
        .with_request_timeout((!args.request_timeout.is_zero()).then_some(args.request_timeout))
        .with_body_idle_timeout(
            (!args.body_idle_timeout.is_zero()).then_some(args.body_idle_timeout),
        )
}

/// Ready, serving until SIGINT or SIGTERM (or a listener stops), then drained.
async fn serve_until_shutdown(
    admin_listener: TcpListener,
    state: Arc<AdminState>,
    mut tasks: tokio::task::JoinSet<()>,
    tunnels: &TaskTracker,
    graceful: Arc<GracefulShutdown>,
    args: &RunArgs,
) {
    let proxy_addr = state.dump.listeners.proxy;
    let admin_addr = state.dump.listeners.admin;
    let admin_task = serve_admin(admin_listener, state.clone());
    let reloader = state.reloader.clone();
    tokio::spawn(reloader.run(args.watch_interval));
    state.ready.store(true, Ordering::Release);
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "listening");
    let admin = tokio::spawn(admin_task);
    tokio::select! {
        _ = tasks.join_next() => tracing::error!("a listener stopped"),
        _ = shutdown_signal() => {}
    }
    drain(&state, tasks, tunnels, graceful, args.drain_timeout).await;
    admin.abort();
}

/// The shadow-traffic layer, bounded as the command line says.
fn mirror(args: &RunArgs) -> MirrorLayer {
    MirrorLayer::new(
        MirrorConfig::default()
            .with_max_concurrency(args.mirror_max_concurrency)
            .with_max_body_bytes(args.mirror_max_body)
            .with_timeout(args.mirror_timeout)
            .with_shadow_suffix(args.mirror_host_suffix),
    )
}

/// The parts of `/config_dump` fixed at start.
fn static_dump(
    args: &RunArgs,
    listeners: Listeners,
    binding: &egress_policy::model::Binding,
    config: &egress_policy::istio::ConfigSet,
    diagnostics: &egress_policy::diag::Diagnostics,
    resolve: Vec<ResolveDump>,
) -> StaticDump {
    StaticDump {
        sources: config.sources.clone(),
        listeners,
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
        resolve,
        ignored: config.ignored.clone(),
        warnings: diagnostics.warnings().map(|d| d.to_string()).collect(),
    }
}

/// The one dialer of the gateway: timeouts, source address, upstream proxy, `--resolve`
/// pins, and the gateway's own listening addresses (never dialled, so no request loops).
fn dialer(
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

/// The security layers' settings from the command line.
fn security(args: &RunArgs, ext_authz_overrides: Overrides) -> crate::stack::Security {
    crate::stack::Security {
        ext_authz: egress_policy::ext_authz::ExtAuthzLayer::from_snapshot(
            args.ext_authz_max_in_flight,
            args.xff_num_trusted_hops,
        )
        .with_overrides(ext_authz_overrides),
        jwks: egress_policy::jwt::JwksStore::default(),
        allow_path_parameters: args.allow_path_parameters,
        underscores: args.headers_with_underscores.into(),
        xff_hops: args.xff_num_trusted_hops,
    }
}

/// Keys of `jwksUri`s: fetched now, then kept fresh in the background for whatever policy
/// is current.
fn spawn_jwks(
    security: &crate::stack::Security,
    policy: &PolicyStore,
    args: &RunArgs,
) -> Result<(), StartError> {
    let fetcher: Arc<dyn egress_policy::jwt::FetchJwks> =
        Arc::new(crate::jwks::Fetcher::new().map_err(|e| StartError(format!("JWKS client: {e}")))?);
    let store = security.jwks.clone();
    let current = policy.clone();
    let interval = args.jwks_refresh_interval;
    tokio::spawn(store.run_with(move || current.load().jwt.uris(), fetcher, interval));
    Ok(())
}

/// Starts the proxy listener and one per `Gateway` server: HTTP servers through the request
/// stack (restricted to the server's hosts), TLS passthrough and TCP servers at L4.
#[allow(
    clippy::too_many_arguments,
    reason = "the shared parts every listener is given"
)]
fn spawn_listeners<S>(
    proxy: TcpListener,
    servers: Vec<ServerListener>,
    svc: S,
    stack_config: &StackConfig,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limit: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    args: &RunArgs,
) -> tokio::task::JoinSet<()>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<egress_core::BoxBody>,
            Error = egress_core::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let metrics = &stack_config.metrics;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_loop(
        proxy,
        svc,
        builder.clone(),
        limit.clone(),
        graceful.clone(),
        metrics.clone(),
        None,
    ));
    for server in servers {
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
                    tunnels: stack_config.tunnels.clone(),
                    idle: args.tunnel_idle_timeout,
                    limit: limit.clone(),
                    tunnel_slots: stack_config.tunnel_slots.clone(),
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
    tasks
}

/// Pushes the metrics to the OTLP collector every `--otlp-metrics-interval`, when traces
/// have one.
fn spawn_metrics_export(otlp: &Otlp, args: &RunArgs, state: &Arc<AdminState>) {
    if let Some(endpoint) = &otlp.endpoint
        && !args.otlp_metrics_interval.is_zero()
    {
        let state = state.clone();
        egress_core::trace::spawn_metrics_export(egress_core::trace::MetricsExport {
            endpoint: endpoint.clone(),
            protocol: match otlp.protocol {
                crate::cli::OtlpProtocolArg::Http => egress_core::trace::OtlpProtocol::HttpProtobuf,
                crate::cli::OtlpProtocolArg::Grpc => egress_core::trace::OtlpProtocol::Grpc,
            },
            interval: args.otlp_metrics_interval,
            service_name: args.config.gateway_name.clone(),
            source: Arc::new(move || crate::admin::metrics_text(&state)),
            tls: otlp.tls.clone(),
        });
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
