//! Listeners: the proxy (HTTP/1.1 + h2c, CONNECT) and the admin endpoints.

use arc_swap::ArcSwap;
use egress_core::proxy_headers::ProxyHeadersConfig;
use egress_core::transport::{Dialer, DialerConfig, Overrides, UpstreamConfig};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::{AdminState, Listeners, ResolveDump, StaticDump};
use crate::cli::RunArgs;
use crate::config::Loaded;
use crate::stack::{self, StackConfig};

/// A gateway whose listeners are bound and which is ready to serve.
pub struct Gateway {
    proxy: TcpListener,
    admin: TcpListener,
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
        Ok(Self {
            proxy,
            admin,
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
        let mut overrides = Overrides::new();
        for spec in &args.resolve {
            overrides.add(spec).map_err(|e| StartError(e.to_string()))?;
        }
        let resolve_dump = overrides
            .iter()
            .map(|(h, p, a)| ResolveDump {
                host: h.to_owned(),
                port: p,
                addresses: a.iter().map(|ip| ip.to_string()).collect(),
            })
            .collect();
        let dialer = Arc::new(Dialer::new(
            DialerConfig::default()
                .with_connect_timeout(args.connect_timeout)
                .with_dns_timeout(args.dns_timeout)
                .with_overrides(overrides)
                .with_listeners(vec![proxy_addr, admin_addr]),
        ));
        let request_timeout = (!args.request_timeout.is_zero()).then_some(args.request_timeout);
        let proxy_headers = ProxyHeadersConfig::new(&args.via_name)
            .map_err(|_| StartError(format!("invalid --via-name {:?}", args.via_name)))?;
        let Loaded {
            registry,
            routes,
            config,
            diagnostics,
        } = self.loaded;
        for w in diagnostics.warnings() {
            tracing::warn!("{w}");
        }
        tracing::info!(
            sources = %config.sources.join(", "),
            service_entries = registry.services().len(),
            virtual_services = config.virtual_services.len(),
            policy = registry.policy().as_str(),
            "configuration loaded"
        );
        let registry = Arc::new(ArcSwap::from_pointee(registry));
        let routes = Arc::new(ArcSwap::from_pointee(routes));
        let svc = stack::build(StackConfig {
            registry: registry.clone(),
            routes: routes.clone(),
            dialer,
            upstream: UpstreamConfig::default()
                .with_request_timeout(request_timeout)
                .with_body_idle_timeout(
                    (!args.body_idle_timeout.is_zero()).then_some(args.body_idle_timeout),
                ),
            proxy_headers,
            tunnel_idle_timeout: args.tunnel_idle_timeout,
        });
        let state = Arc::new(AdminState {
            ready: AtomicBool::new(false),
            registry,
            routes,
            dump: StaticDump {
                sources: config.sources.clone(),
                listeners: Listeners {
                    proxy: proxy_addr,
                    admin: admin_addr,
                },
                resolve: resolve_dump,
                ignored: config.ignored.clone(),
                warnings: diagnostics.warnings().map(|d| d.to_string()).collect(),
            },
        });

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
        let builder = Arc::new(builder);
        let limit = Arc::new(Semaphore::new(args.max_connections));

        let proxy_task = {
            let listener = self.proxy;
            async move {
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
                        tracing::warn!(%peer, "connection refused: --max-connections reached");
                        drop(io);
                        continue;
                    };
                    let _ = io.set_nodelay(true);
                    let svc = TowerToHyperService::new(svc.clone());
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                        if let Err(error) = conn.await {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                    });
                }
            }
        };
        let admin_task = {
            let listener = self.admin;
            let state = state.clone();
            async move {
                loop {
                    let Ok((io, _)) = listener.accept().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req: http::Request<Incoming>| {
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
        };
        state.ready.store(true, Ordering::Release);
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "listening");
        tokio::select! {
            _ = proxy_task => {}
            _ = admin_task => {}
            _ = shutdown_signal() => tracing::info!("shutting down"),
        }
        Ok(())
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
