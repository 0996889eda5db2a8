//! The client side of every listener: binding the `Gateway` servers' ports, accepting
//! connections (bounded, TLS-terminated where a server says), and serving them with
//! HTTP/1.1 and h2 under the framing guard.

use egress_core::ctx::{ClientAddr, ClientCertificate, Outcome, RejectionKind, SourcePrincipal};
use egress_core::framing::{AmbiguousFraming, ConnectionFraming, FramingGuard};
use egress_core::telemetry::Metrics;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::cli::RunArgs;
use crate::config::Loaded;
use egress_policy::istio::{Protocol, ServerTlsFiles};
use egress_policy::routes::ServerHosts;

/// The listener of one port of the `Gateway` resources that select this gateway.
pub(crate) struct ServerListener {
    pub(crate) listener: TcpListener,
    pub(crate) addr: SocketAddr,
    pub(crate) hosts: ServerHosts,
    pub(crate) gateway: String,
    pub(crate) port: u16,
    pub(crate) passthrough: bool,
    /// A `protocol: TCP` server, served like passthrough but routed by port.
    pub(crate) tcp: bool,
    /// TLS termination (`SIMPLE`/`MUTUAL` servers).
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What a Gateway server's listener speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Passthrough,
    Tcp,
}

/// The client-facing HTTP/1.1 and h2 settings: header read timeout and size, streams,
/// keep-alive pings.
pub(crate) fn http_builder(args: &RunArgs) -> auto::Builder<TokioExecutor> {
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

/// Opens one listener per port of the selected `Gateway` servers that speak HTTP. A port
/// that cannot be bound (privileged, in use) is logged and skipped: the main listener still
/// serves every route.
pub(crate) async fn bind_servers(args: &RunArgs, loaded: &Loaded) -> Vec<ServerListener> {
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

pub(crate) async fn accept_loop<S>(
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
