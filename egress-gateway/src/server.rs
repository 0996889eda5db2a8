//! Listeners: the proxy (HTTP/1.1 + h2c, CONNECT) and the admin endpoints.

use egress_core::proxy_headers::ProxyHeadersConfig;
use egress_core::transport::Overrides;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::{AdminState, GatewayDump, Listeners, ResolveDump, StaticDump};
use crate::cli::RunArgs;
use crate::client_conn::http_builder;
use crate::config::Loaded;
use crate::listeners::{ServerListener, accept_loop, bind_servers};
pub use crate::setup::StartError;
use crate::setup::{
    Otlp, dialer, metrics, mirror, otlp, overrides, upstream_config, upstream_proxy,
};
use crate::stack::{self, StackConfig};
use egress_policy::snapshot::PolicyStore;
use tokio_util::task::TaskTracker;

/// A gateway whose listeners are bound and which is ready to serve.
pub struct Gateway {
    proxy: TcpListener,
    admin: TcpListener,
    servers: Vec<ServerListener>,
    args: RunArgs,
    loaded: Loaded,
}

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
        let (policy, binding, diagnostics) = self.loaded.into_policy();
        let config = policy.config.clone();
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
        let graceful = Arc::new(crate::client_conn::Drain::new());
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
        let listeners = Listeners {
            proxy: proxy_addr,
            admin: admin_addr,
            gateway_servers: self
                .servers
                .iter()
                .map(|s| format!("{} ({} port {})", s.addr, s.gateway, s.port))
                .collect(),
        };
        let dump = static_dump(args, listeners, &binding, resolve_dump);
        let state = admin_state(args, &stack_config, &mirror, dump);
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

/// Ready, serving until SIGINT or SIGTERM (or a listener stops), then drained.
async fn serve_until_shutdown(
    admin_listener: TcpListener,
    state: Arc<AdminState>,
    mut tasks: tokio::task::JoinSet<()>,
    tunnels: &TaskTracker,
    graceful: Arc<crate::client_conn::Drain>,
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

/// What the admin endpoints serve: readiness, stats, the reloader and the dump.
fn admin_state(
    args: &RunArgs,
    stack: &StackConfig,
    mirror: &egress_core::mirror::MirrorLayer,
    dump: StaticDump,
) -> Arc<AdminState> {
    Arc::new(AdminState {
        ready: AtomicBool::new(false),
        mirror_stats: mirror.stats(),
        metrics: stack.metrics.clone(),
        reloader: Arc::new(crate::reload::Reloader::new(
            args.config.clone(),
            stack.policy.clone(),
        )),
        policy: stack.policy.clone(),
        security: stack.security.clone(),
        tracer: stack.tracer.clone(),
        conn_stats: stack.conn_stats.clone(),
        dump,
    })
}

/// The parts of `/config_dump` fixed at start (the listeners, and so the `Gateway`
/// binding that opened them, stay until a restart).
fn static_dump(
    args: &RunArgs,
    listeners: Listeners,
    binding: &egress_policy::model::Binding,
    resolve: Vec<ResolveDump>,
) -> StaticDump {
    StaticDump {
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
    }
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
    builder: Arc<crate::client_conn::HttpServers>,
    limit: Arc<Semaphore>,
    graceful: Arc<crate::client_conn::Drain>,
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
    graceful: Arc<crate::client_conn::Drain>,
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
