//! TLS passthrough listeners of `Gateway` servers (`protocol: TLS`, `tls.mode: PASSTHROUGH`).
//!
//! The ClientHello is read, not terminated. Its SNI must be present and among the server's
//! `hosts`; the connection then goes where a `VirtualService` `tls` route sends that SNI
//! (Istio's wildcard task routes every `*.wikipedia.org` to `www.wikipedia.org`), or, without
//! a route, to the SNI's own registration. Nothing matched under REGISTRY_ONLY: the
//! connection is closed without dialling anything (Istio's BlackHole), logged and counted.
//!
//! TCP servers (`protocol: TCP`) are served here too: a TCP connection names nothing, so it
//! goes where the `tcp` route of a VirtualService hosted by the server sends its port, and
//! is closed when there is none.

use egress_core::ctx::{
    Destination, Host, Outcome, RejectionKind, RequestForm, Scheme, UpstreamPlan,
};
use egress_core::host::parse_host;
use egress_core::telemetry::Metrics;
use egress_core::transport::Dialer;
use egress_policy::authz::Attributes;
use egress_policy::istio::OutboundPolicy;
use egress_policy::routes::ServerHosts;
use egress_policy::snapshot::{Policy, PolicyStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// What a passthrough listener needs.
pub(crate) struct Passthrough {
    pub(crate) hosts: Arc<ServerHosts>,
    pub(crate) port: u16,
    /// The configuration; one snapshot is taken per connection.
    pub(crate) policy: PolicyStore,
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tunnels: TaskTracker,
    pub(crate) idle: Duration,
    pub(crate) limit: Arc<Semaphore>,
    /// `--max-tunnels`, shared with `CONNECT`.
    pub(crate) tunnel_slots: Arc<Semaphore>,
    /// A `protocol: TCP` server (routed by port) rather than TLS passthrough (by SNI).
    pub(crate) tcp: bool,
}

impl Passthrough {
    /// The listener, for log lines about connections that never got a destination.
    fn hosts_label(&self) -> &'static str {
        if self.tcp {
            "tcp-listener"
        } else {
            "tls-listener"
        }
    }
}

/// Authorises a connection at L4 (source, destination host, port, SNI). A CUSTOM policy
/// cannot be asked about bytes that are not HTTP: when one matches, the connection is
/// refused (fail closed).
fn authorize(
    policy: &Policy,
    peer: std::net::SocketAddr,
    host: &str,
    port: u16,
    sni: Option<&str>,
) -> Result<(), (Outcome, String)> {
    let policies = &policy.authz;
    if policies.is_empty() {
        return Ok(());
    }
    let attrs = Attributes {
        http: None,
        source_ip: Some(peer.ip()),
        remote_ip: Some(peer.ip()),
        principal: None,
        namespace: None,
        host,
        port,
        destination_ip: host.parse().ok(),
        sni,
    };
    if let Some((provider, policy)) = policies.custom_match(&attrs) {
        return Err((
            Outcome::Denied(RejectionKind::ExtAuthzError),
            format!(
                "CUSTOM policy {policy} (provider {provider}) matches, and an HTTP authorizer cannot check an opaque connection"
            ),
        ));
    }
    let d = policies.evaluate(&attrs);
    if d.allowed {
        return Ok(());
    }
    Err((
        Outcome::Denied(RejectionKind::RbacDenied),
        format!(
            "RBAC: access denied (policy {}, rule {})",
            d.policy.as_deref().unwrap_or("-"),
            d.rule.map_or(-1, |r| r as i64)
        ),
    ))
}

pub(crate) async fn serve(listener: TcpListener, p: Passthrough) {
    let p = Arc::new(p);
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = p.limit.clone().try_acquire_owned() else {
            p.metrics.limit_hit("max_connections");
            continue;
        };
        let Ok(slot) = p.tunnel_slots.clone().try_acquire_owned() else {
            // Nothing can be said in a TLS or TCP byte stream: closed, counted, logged.
            p.metrics.limit_hit("max_tunnels");
            p.metrics
                .refused(Outcome::Denied(RejectionKind::TunnelLimit));
            tracing::info!(%peer, reason = "tunnel-limit", "connection closed: --max-tunnels reached");
            drop(io);
            continue;
        };
        let p = p.clone();
        p.tunnels.clone().spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let started = std::time::Instant::now();
            let result = if p.tcp {
                handle_tcp(&p, io, peer).await
            } else {
                handle(&p, io, peer).await
            };
            if let Err((reason, why)) = result {
                p.metrics.refused(reason);
                let kind = if p.tcp { "TCP" } else { "TLS" };
                let at = format!("{}:{}", p.hosts_label(), p.port);
                p.metrics.log_connection(kind, &at, Some(reason), "BlackHoleCluster", started.elapsed(), 0, 0);
                if p.tcp {
                    tracing::info!(%peer, port = p.port, reason = reason.token(), why, "TCP gateway connection closed");
                } else {
                    tracing::info!(%peer, port = p.port, reason = reason.token(), why, "TLS passthrough connection closed");
                }
            }
        });
    }
}

async fn handle(
    p: &Passthrough,
    mut io: TcpStream,
    peer: std::net::SocketAddr,
) -> Result<(), (Outcome, String)> {
    use egress_tls::sni::{HelloError, read_client_hello};
    let _ = io.set_nodelay(true);
    let (hello, sni) = read_client_hello(&mut io, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            HelloError::NotTls(_) => (Outcome::Denied(RejectionKind::NotTls), e.to_string()),
            _ => (Outcome::Denied(RejectionKind::NoClientHello), e.to_string()),
        })?;
    let sni = sni.ok_or((
        Outcome::Denied(RejectionKind::SniMissing),
        "the ClientHello carries no server name".to_owned(),
    ))?;
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    if !p.hosts.contains(&sni) {
        return Err((
            Outcome::Denied(RejectionKind::NoRoute),
            format!("{sni} is not among the hosts of this Gateway server"),
        ));
    }
    let Ok(Host::Name(name)) = parse_host(&sni) else {
        return Err((
            Outcome::Denied(RejectionKind::Malformed),
            format!("invalid SNI {sni:?}"),
        ));
    };
    // One snapshot decides the connection: route, registry and policies alike.
    let policy = p.policy.load();
    let (dst, plan): (Destination, Option<UpstreamPlan>) =
        match policy.routes.tls_route(&sni, p.port) {
            Some((host, port, plan)) => (
                Destination::new(Host::Name(host), port, Scheme::Https, RequestForm::Connect),
                Some(plan),
            ),
            None => {
                let registry = &policy.registry;
                let dst = Destination::new(
                    Host::Name(name),
                    p.port,
                    Scheme::Https,
                    RequestForm::Connect,
                );
                match registry.lookup_name(&sni, p.port) {
                    Some(found) if found.port.protocol.allows_tunnel() => {
                        let plan = found.plan.clone();
                        (dst, Some(plan))
                    }
                    None if registry.policy() == OutboundPolicy::AllowAny => (dst, None),
                    _ => {
                        return Err((
                            Outcome::Denied(RejectionKind::NotInRegistry),
                            format!(
                                "{sni}:{} is not registered for TLS and no tls route matches",
                                p.port
                            ),
                        ));
                    }
                }
            }
        };
    authorize(&policy, peer, &sni, p.port, Some(&sni))?;
    let upstream = p
        .dialer
        .connect(&dst, plan.as_ref())
        .await
        .map_err(|e| (outcome_of(&e), e.to_string()))?;
    let tcp = p.metrics.tunnel_opened(None, "TLS", dst.to_string());
    let (sent, received) = crate::tunnel::splice(io, upstream, hello, p.idle, &dst).await;
    tcp.closed(sent, received);
    Ok(())
}

async fn handle_tcp(
    p: &Passthrough,
    io: TcpStream,
    peer: std::net::SocketAddr,
) -> Result<(), (Outcome, String)> {
    let _ = io.set_nodelay(true);
    let policy = p.policy.load();
    let Some((host, port, plan)) = policy.routes.tcp_route_for_server(&p.hosts, p.port) else {
        return Err((
            Outcome::Denied(RejectionKind::NoRoute),
            format!(
                "no VirtualService tcp route covers port {} of this Gateway server",
                p.port
            ),
        ));
    };
    let host = match parse_host(&host) {
        Ok(h) => h,
        Err(e) => {
            return Err((
                Outcome::Denied(RejectionKind::Malformed),
                format!("route destination {host:?}: {e}"),
            ));
        }
    };
    authorize(&policy, peer, &host.to_string(), p.port, None)?;
    let dst = Destination::new(host, port, Scheme::Http, RequestForm::Connect);
    let upstream = p
        .dialer
        .connect(&dst, Some(&plan))
        .await
        .map_err(|e| (outcome_of(&e), e.to_string()))?;
    let tcp = p.metrics.tunnel_opened(None, "TCP", dst.to_string());
    let (sent, received) = crate::tunnel::splice(io, upstream, Vec::new(), p.idle, &dst).await;
    tcp.closed(sent, received);
    Ok(())
}

/// A dial failure as the outcome of a connection: the SSRF guard and loops are refusals,
/// the rest upstream failures.
fn outcome_of(e: &egress_core::error::UpstreamError) -> Outcome {
    use egress_core::error::UpstreamErrorKind as U;
    match e.kind() {
        U::IpDenied => Outcome::Denied(RejectionKind::IpDenied),
        U::LoopDetected => Outcome::Denied(RejectionKind::LoopDetected),
        k => Outcome::Failed(k),
    }
}
