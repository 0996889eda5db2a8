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

use egress_core::ctx::{Outcome, Refusal, RejectionKind};
use egress_core::telemetry::Metrics;
use egress_core::transport::Dialer;
use egress_policy::connection::{passthrough_target, tcp_target};
use egress_policy::routes::ServerHosts;
use egress_policy::snapshot::PolicyStore;
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
    // One snapshot decides the connection: route, registry and policies alike.
    let policy = p.policy.load();
    let target = passthrough_target(&policy, &p.hosts, p.port, &sni, peer.ip()).map_err(refused)?;
    let (dst, plan) = (target.destination, target.plan);
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
    let target = tcp_target(&policy, &p.hosts, p.port, peer.ip()).map_err(refused)?;
    let dst = target.destination;
    let upstream = p
        .dialer
        .connect(&dst, target.plan.as_ref())
        .await
        .map_err(|e| (outcome_of(&e), e.to_string()))?;
    let tcp = p.metrics.tunnel_opened(None, "TCP", dst.to_string());
    let (sent, received) = crate::tunnel::splice(io, upstream, Vec::new(), p.idle, &dst).await;
    tcp.closed(sent, received);
    Ok(())
}

/// An engine's refusal as the outcome of a connection and its log message.
fn refused(r: Refusal) -> (Outcome, String) {
    (r.outcome(), r.why().to_owned())
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
