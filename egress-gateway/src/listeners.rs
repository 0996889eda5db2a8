//! The client side of every listener: binding the `Gateway` servers' ports, accepting
//! connections (bounded, TLS-terminated where a server says), and serving them with
//! HTTP/1.1 and h2 under the framing guard.

use egress_core::ctx::{ClientAddr, ClientCertificate, Outcome, RejectionKind, SourcePrincipal};
use egress_core::framing::{AmbiguousFraming, ConnectionFraming, FramingGuard};
use egress_core::telemetry::Metrics;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::cli::RunArgs;
use crate::client_conn::{
    Drain, FirstBytes, HttpServers, Silent, serve_http1, silent_for, speaks_http1,
};
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

/// The servers of the selected `Gateway`s that share one port.
struct PortGroup {
    port: u16,
    hosts: Vec<String>,
    gateway: String,
    kind: Kind,
    tls_files: Option<ServerTlsFiles>,
}

/// Opens one listener per port of the selected `Gateway` servers that speak HTTP. A port
/// that cannot be bound (privileged, in use) is logged and skipped: the main listener still
/// serves every route.
pub(crate) async fn bind_servers(args: &RunArgs, loaded: &Loaded) -> Vec<ServerListener> {
    let mut out = Vec::new();
    for group in by_port(loaded) {
        let (port, gateway) = (group.port, &group.gateway);
        let tls = match group.tls_files.as_ref().map(acceptor) {
            None => None,
            Some(Ok(Some(acceptor))) => Some(acceptor),
            Some(Ok(None)) => continue,
            Some(Err(error)) => {
                tracing::error!(%gateway, port, %error, "Gateway server not opened: invalid TLS settings");
                continue;
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
                    hosts: ServerHosts::new(group.hosts.iter().map(String::as_str), port),
                    gateway: group.gateway,
                    port,
                    passthrough: group.kind == Kind::Passthrough,
                    tcp: group.kind == Kind::Tcp,
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

/// The servers this gateway opens, grouped by port; a server of a combination not served,
/// or of another protocol than the port's first, is logged and left out.
fn by_port(loaded: &Loaded) -> Vec<PortGroup> {
    let mut groups: Vec<PortGroup> = Vec::new();
    let selected = loaded
        .policy
        .config
        .gateways
        .iter()
        .filter(|gw| loaded.binding.selected.contains(&gw.meta.id()));
    for gw in selected {
        for server in &gw.servers {
            let Some((kind, terminate)) = server_kind(server) else {
                tracing::warn!(
                    gateway = %gw.meta.id(),
                    port = server.port.number,
                    protocol = ?server.port.protocol,
                    tls_mode = ?server.tls_mode,
                    "Gateway server not opened: HTTP, TCP, TLS PASSTHROUGH and terminating (SIMPLE/MUTUAL/ISTIO_MUTUAL) servers are served; this combination is not"
                );
                continue;
            };
            match groups.iter_mut().find(|g| g.port == server.port.number) {
                Some(g) if g.kind != kind => {
                    tracing::warn!(
                        gateway = %gw.meta.id(),
                        port = server.port.number,
                        "Gateway server not opened: another server on this port speaks another protocol"
                    );
                }
                Some(g) => g.hosts.extend(server.hosts.iter().cloned()),
                None => groups.push(PortGroup {
                    port: server.port.number,
                    hosts: server.hosts.clone(),
                    gateway: gw.meta.id(),
                    kind,
                    tls_files: terminate.then(|| server.tls_files.clone()),
                }),
            }
        }
    }
    groups
}

/// What a server's listener speaks, and whether it terminates TLS; `None` for a
/// combination of protocol and TLS mode that is not served.
fn server_kind(server: &egress_policy::model::Server) -> Option<(Kind, bool)> {
    let protocol = server.port.protocol;
    let mode = server.tls_mode.as_deref();
    if mode == Some("PASSTHROUGH") && matches!(protocol, Protocol::Tls | Protocol::Https) {
        return Some((Kind::Passthrough, false));
    }
    if matches!(mode, Some("SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL"))
        && matches!(protocol, Protocol::Https | Protocol::Http | Protocol::Http2)
    {
        return Some((Kind::Http, true));
    }
    if mode.is_none()
        && matches!(
            protocol,
            Protocol::Tcp | Protocol::Mongo | Protocol::Mysql | Protocol::Redis
        )
    {
        return Some((Kind::Tcp, false));
    }
    (protocol.is_http() && mode.is_none()).then_some((Kind::Http, false))
}

/// The TLS acceptor of a terminating server (`Ok(None)`: its files are incomplete, which
/// the configuration check has already reported).
fn acceptor(files: &ServerTlsFiles) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&files.server_certificate, &files.private_key) else {
        return Ok(None);
    };
    let ca = files.ca_certificates.as_deref().map(std::path::Path::new);
    let config = egress_tls::server_config(cert.as_ref(), key.as_ref(), ca)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
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

/// A connection closed before it sent a byte: counted and logged when it was the deadline
/// (`--header-read-timeout`) that closed it; a client that just hung up is not a refusal.
fn log_silent(silent: Silent, peer: SocketAddr, metrics: &Metrics) {
    if silent == Silent::TimedOut {
        metrics.limit_hit("header_read_timeout");
        tracing::info!(%peer, "connection closed: no request within --header-read-timeout");
    }
}

/// The next connection and its slot under `--max-connections`; `None` when accepting
/// failed or the limit was hit (logged, counted, and the connection closed).
async fn accept_one(
    listener: &TcpListener,
    limit: &Arc<Semaphore>,
    metrics: &Metrics,
) -> Option<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let (io, peer) = match listener.accept().await {
        Ok(c) => c,
        Err(error) => {
            // EMFILE and friends: back off instead of spinning.
            tracing::warn!(%error, "accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return None;
        }
    };
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        metrics.limit_hit("max_connections");
        tracing::warn!(%peer, "connection refused: --max-connections reached");
        return None;
    };
    Some((io, peer, permit))
}

pub(crate) async fn accept_loop<S>(
    listener: TcpListener,
    svc: S,
    builder: Arc<HttpServers>,
    limit: Arc<Semaphore>,
    drain: Arc<Drain>,
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
        let Some((io, peer, permit)) = accept_one(&listener, &limit, &metrics).await else {
            continue;
        };
        let _ = io.set_nodelay(true);
        let svc = svc.clone();
        let builder = builder.clone();
        let metrics = metrics.clone();
        let watcher = drain.graceful.watcher();
        let started = drain.started.subscribe();
        let Some(acceptor) = tls.clone() else {
            // Two tasks of their own types: each is sized for the server it runs.
            tokio::spawn(async move {
                let _permit = permit;
                let http1 = match speaks_http1(&io, builder.first_bytes).await {
                    Ok(http1) => http1,
                    Err(silent) => return log_silent(silent, peer, &metrics),
                };
                // The client's address travels with each of its requests (consistent hashing
                // by source IP, authorization by ipBlocks), and so does a proven principal.
                let (io, framing) = FramingGuard::new(io);
                let svc = with_client(svc, peer, None, None, framing);
                let result = if http1 {
                    let conn = builder
                        .http1
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades();
                    // Counted by the drain, which waits for it, though not watched by it.
                    let _counted = watcher;
                    serve_http1(conn, started).await.map_err(Into::into)
                } else {
                    let conn = builder
                        .auto
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .into_owned();
                    watcher.watch(conn).await
                };
                if let Err(error) = result {
                    log_connection_error(&*error, peer, &metrics);
                }
            });
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let Some((stream, principal, cert)) =
                client_handshake(&acceptor, io, peer, &metrics).await
            else {
                return;
            };
            // ALPN said which protocol: HTTP/1.1 gets its own server, as on plain
            // listeners, whose header read timeout also bounds a client that sends nothing.
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let (stream, framing) = FramingGuard::new(stream);
            let svc = with_client(svc, peer, principal, cert, framing);
            let result = if h2 {
                // h2 has no deadline for the client's preface: the first bytes get one.
                let (stream, seen) = FirstBytes::new(stream);
                let conn = builder
                    .auto
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                tokio::select! {
                    result = watcher.watch(conn) => result,
                    () = silent_for(builder.first_bytes, &seen) => {
                        return log_silent(Silent::TimedOut, peer, &metrics);
                    }
                }
            } else {
                let conn = builder
                    .http1
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                let _counted = watcher;
                serve_http1(conn, started).await.map_err(Into::into)
            };
            if let Err(error) = result {
                log_connection_error(&*error, peer, &metrics);
            }
        });
    }
}

/// The TLS handshake with a client of a terminating server, bounded in time, and the
/// identity its certificate proves. Only a verifying (MUTUAL) server has peer certificates
/// here: rustls hands them over only once they chain to the server's CA.
async fn client_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: tokio::net::TcpStream,
    peer: SocketAddr,
    metrics: &Metrics,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Option<SourcePrincipal>,
    Option<ClientCertificate>,
)> {
    let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(io));
    let stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            metrics.refused(Outcome::Denied(RejectionKind::ClientTlsHandshake));
            tracing::info!(%peer, %error, "TLS handshake with a client failed");
            return None;
        }
        Err(_) => {
            metrics.refused(Outcome::Denied(RejectionKind::ClientTlsHandshake));
            tracing::info!(%peer, "TLS handshake with a client timed out");
            return None;
        }
    };
    let (principal, cert) = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        Some(cert) => (
            egress_tls::certificate_principal(cert).map(|p| SourcePrincipal(p.into())),
            http::HeaderValue::from_str(&egress_tls::forwarded_client_cert(cert))
                .ok()
                .map(ClientCertificate),
        ),
        None => (None, None),
    };
    Some((stream, principal, cert))
}

/// hyper answers what it cannot parse itself (400, 431) and closes; those refusals never
/// reach the stack, so they are logged and counted here.
fn log_connection_error(
    error: &(dyn std::error::Error + 'static),
    peer: SocketAddr,
    metrics: &Metrics,
) {
    match parser_refusal(error) {
        Some(reason) => {
            metrics.refused(Outcome::Denied(reason));
            tracing::info!(%peer, reason = reason.token(), %error, "request refused by the HTTP parser");
        }
        None => tracing::debug!(%peer, %error, "connection ended with an error"),
    }
}
