//! Resolve once, classify every address, dial only what passed.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::ctx::{Balance, Destination, Host, Target, UpstreamPlan};
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::ip::classify;
use crate::transport::{Overrides, Resolve, SystemResolver, UpstreamProxy, UpstreamStream};

/// Settings of a [`Dialer`].
#[derive(Clone, Debug)]
pub struct DialerConfig {
    dns_timeout: Duration,
    connect_timeout: Duration,
    overrides: Overrides,
    listeners: Vec<SocketAddr>,
    source: Option<std::net::IpAddr>,
    proxy: Option<Arc<UpstreamProxy>>,
}

impl Default for DialerConfig {
    fn default() -> Self {
        Self {
            dns_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            overrides: Overrides::default(),
            listeners: Vec::new(),
            source: None,
            proxy: None,
        }
    }
}

impl DialerConfig {
    /// How long a name may take to resolve (default 5 s).
    pub fn with_dns_timeout(mut self, t: Duration) -> Self {
        self.dns_timeout = t;
        self
    }

    /// How long a TCP connection may take (default 10 s).
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Fixed answers (`--resolve`) that win over endpoints and DNS.
    pub fn with_overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// The gateway's own listening addresses: never a destination.
    pub fn with_listeners(mut self, listeners: Vec<SocketAddr>) -> Self {
        self.listeners = listeners;
        self
    }

    /// The local address upstream connections leave from, so that firewalls can allow-list
    /// the gateway (a fixed egress IP); `None` lets the kernel choose.
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// Sends (some) destinations through an upstream HTTP proxy.
    pub fn with_upstream_proxy(mut self, proxy: Option<UpstreamProxy>) -> Self {
        self.proxy = proxy.map(Arc::new);
        self
    }

    /// The local source address, if fixed.
    pub fn source(&self) -> Option<std::net::IpAddr> {
        self.source
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The overrides.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }
}

/// Finds the addresses of a destination: overrides, then the registry's plan, then DNS.
pub struct Dialer {
    config: DialerConfig,
    resolver: Arc<dyn Resolve>,
    next: AtomicUsize,
    // Held only to add or remove one count, never across an await.
    inflight: std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>,
}

/// One request in flight to an address; see [`Dialer::begin`].
#[derive(Debug)]
pub struct InFlight {
    dialer: Arc<Dialer>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut m) = self.dialer.inflight.lock()
            && let Some(n) = m.get_mut(&self.addr)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

/// splitmix64's finaliser: a well-mixed value from a counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Lamping and Veach's jump consistent hash: a key keeps its bucket when buckets are added.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where an address came from, which decides whether an internal one may be dialled.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Origin {
    /// `--resolve`, a STATIC endpoint, or inside `ServiceEntry.addresses`.
    Declared,
    /// DNS, or an IP literal written by the client.
    Untrusted,
}

impl Dialer {
    /// A dialer with the system resolver.
    pub fn new(config: DialerConfig) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver::default()))
    }

    /// A dialer with another resolver.
    pub fn with_resolver(config: DialerConfig, resolver: Arc<dyn Resolve>) -> Self {
        Self {
            config,
            resolver,
            next: AtomicUsize::new(0),
            inflight: std::sync::Mutex::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DialerConfig {
        &self.config
    }

    /// The upstream proxy this destination goes through, if any. IP-literal destinations
    /// are checked by the SSRF guard here, since nothing is resolved locally for them.
    pub fn proxy_for(
        &self,
        dst: &Destination,
        plan: Option<&UpstreamPlan>,
    ) -> Result<Option<Arc<UpstreamProxy>>, UpstreamError> {
        let Some(proxy) = &self.config.proxy else {
            return Ok(None);
        };
        if !proxy.applies_to(&dst.host().to_string()) {
            return Ok(None);
        }
        if let Host::Ip(ip) = dst.host() {
            let port = plan.and_then(|p| p.port).unwrap_or(dst.port());
            self.check(
                dst,
                vec![(SocketAddr::new(*ip, port), trust_opt(plan, *ip))],
            )?;
        }
        Ok(Some(proxy.clone()))
    }

    /// Every address the destination may be dialled at, in the order to try them (rotated on
    /// each call, so load spreads over endpoints). Fails when nothing resolves, when any
    /// resolved address is internal and not declared (a name that mixes public and internal
    /// answers is refused whole), or when an address is one of the gateway's listeners.
    pub async fn addresses(
        &self,
        dst: &Destination,
        plan: Option<&UpstreamPlan>,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        self.addresses_for(dst, plan, None).await
    }

    /// Like [`Dialer::addresses`], ordered by the plan's [`Balance`]; `key` is the request's
    /// hash for consistent hashing (a header value or the client IP).
    pub async fn addresses_for(
        &self,
        dst: &Destination,
        plan: Option<&UpstreamPlan>,
        key: Option<u64>,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let balance = plan.map_or(&Balance::RoundRobin, |p| &p.balance);
        // PASSTHROUGH: the address the client asked for, not the service's endpoints.
        let plan = plan.filter(|_| *balance != Balance::Passthrough);
        let port = plan.and_then(|p| p.port).unwrap_or(dst.port());
        let mut found: Vec<(SocketAddr, Origin)> = Vec::new();
        // The name the overrides apply to: the one the plan resolves (a route's destination),
        // else the one the client asked for.
        let named = plan.and_then(|p| p.name.as_deref()).or(dst.name());
        let overridden = named.and_then(|name| {
            let o = &self.config.overrides;
            o.get(name, port).or_else(|| o.get(name, dst.port()))
        });
        if let Some(addrs) = overridden {
            found.extend(addrs.iter().map(|a| (a.socket(port), Origin::Declared)));
        } else if let Some(plan) = plan.filter(|p| !p.targets.is_empty()) {
            for target in plan.targets.iter() {
                match target {
                    Target::Addr(sa) => found.push((*sa, Origin::Declared)),
                    Target::Name(name, p) => {
                        let p = p.unwrap_or(port);
                        if let Some(addrs) = self.config.overrides.get(name, p) {
                            found.extend(addrs.iter().map(|a| (a.socket(p), Origin::Declared)));
                            continue;
                        }
                        for ip in self.resolve(dst, name).await?.iter() {
                            found.push((SocketAddr::new(*ip, p), trust(plan, *ip)));
                        }
                    }
                }
            }
        } else {
            match dst.host() {
                Host::Ip(ip) => found.push((SocketAddr::new(*ip, port), trust_opt(plan, *ip))),
                Host::Name(name) => {
                    for ip in self.resolve(dst, name).await?.iter() {
                        found.push((SocketAddr::new(*ip, port), trust_opt(plan, *ip)));
                    }
                }
            }
        }
        let mut addrs = self.check(dst, found)?;
        self.order(&mut addrs, balance, key);
        Ok(addrs)
    }

    async fn resolve(&self, dst: &Destination, name: &str) -> Result<Arc<[IpAddr]>, UpstreamError> {
        match tokio::time::timeout(self.config.dns_timeout, self.resolver.resolve(name)).await {
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(UpstreamError::new(
                UpstreamErrorKind::DnsFailed,
                format!("{dst}: cannot resolve {name}"),
            )
            .with_source(e)),
            Err(_) => Err(UpstreamError::new(
                UpstreamErrorKind::DnsTimeout,
                format!(
                    "{dst}: resolving {name} took longer than {:?}",
                    self.config.dns_timeout
                ),
            )),
        }
    }

    fn check(
        &self,
        dst: &Destination,
        found: Vec<(SocketAddr, Origin)>,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        if found.is_empty() {
            return Err(UpstreamError::new(
                UpstreamErrorKind::DnsFailed,
                format!("{dst}: no upstream address"),
            ));
        }
        if let Some((sa, _)) = found.iter().find(|(sa, _)| self.is_listener(*sa)) {
            return Err(UpstreamError::new(
                UpstreamErrorKind::LoopDetected,
                format!("{dst}: {sa} is this gateway's own listener"),
            ));
        }
        let mut denied = String::new();
        for (sa, origin) in &found {
            let class = classify(sa.ip());
            if class.is_internal() && *origin == Origin::Untrusted {
                let sep = if denied.is_empty() { "" } else { ", " };
                let _ = write!(denied, "{sep}{} ({})", sa.ip(), class.as_str());
            }
        }
        if !denied.is_empty() {
            return Err(UpstreamError::new(
                UpstreamErrorKind::IpDenied,
                format!(
                    "{dst} resolves to internal address {denied}, which is not declared \
                     (list it in the ServiceEntry's addresses or STATIC endpoints, or map it \
                     with --resolve)"
                ),
            ));
        }
        Ok(found.into_iter().map(|(sa, _)| sa).collect())
    }

    /// Puts the address to use first (the rest stay as fallbacks for tunnels).
    fn order(&self, addrs: &mut [SocketAddr], balance: &Balance, key: Option<u64>) {
        let n = addrs.len();
        if n < 2 {
            return;
        }
        let tick = self.next.fetch_add(1, Ordering::Relaxed);
        let first = match (balance, key) {
            (Balance::HashHeader(_) | Balance::HashSourceIp, Some(key)) => jump_hash(key, n),
            (Balance::Random, _) => (mix(tick as u64) % n as u64) as usize,
            (Balance::LeastRequest, _) => {
                // Power of two choices: the less busy of two random addresses.
                let r = mix(tick as u64);
                let (a, b) = ((r % n as u64) as usize, ((r >> 32) % n as u64) as usize);
                let busy = |i: usize| self.in_flight(addrs[i]);
                if busy(b) < busy(a) { b } else { a }
            }
            _ => tick % n,
        };
        addrs.swap(0, first);
    }

    /// Requests in flight to an address (for `LEAST_REQUEST`).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.inflight
            .lock()
            .map_or(0, |m| m.get(&addr).copied().unwrap_or(0))
    }

    /// Counts a request to `addr` until the guard is dropped.
    pub fn begin(self: &Arc<Self>, addr: SocketAddr) -> InFlight {
        if let Ok(mut m) = self.inflight.lock() {
            *m.entry(addr).or_insert(0) += 1;
        }
        InFlight {
            dialer: self.clone(),
            addr,
        }
    }

    fn is_listener(&self, sa: SocketAddr) -> bool {
        self.config.listeners.iter().any(|l| {
            l.port() == sa.port()
                && (l.ip() == sa.ip()
                    || (l.ip().is_unspecified()
                        && (sa.ip().is_loopback() || sa.ip().is_unspecified())))
        })
    }

    /// Opens a TCP connection to the destination, trying each address in turn within the
    /// connect timeout (used for `CONNECT` tunnels).
    pub async fn connect(
        &self,
        dst: &Destination,
        plan: Option<&UpstreamPlan>,
    ) -> Result<UpstreamStream, UpstreamError> {
        if let Some(proxy) = self.proxy_for(dst, plan)? {
            let port = plan.and_then(|p| p.port).unwrap_or(dst.port());
            let target = format!("{}:{port}", dst.host());
            return proxy
                .connect(
                    &target,
                    self.config.connect_timeout,
                    plan.and_then(|p| p.source).or(self.config.source),
                )
                .await;
        }
        let source = plan.and_then(|p| p.source).or(self.config.source);
        let addrs = self.addresses(dst, plan).await?;
        let mut last = None;
        for sa in addrs {
            match tokio::time::timeout(self.config.connect_timeout, super::tcp_connect(sa, source))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(UpstreamStream::Tcp(stream));
                }
                Ok(Err(e)) => {
                    last = Some(
                        UpstreamError::new(
                            UpstreamErrorKind::ConnectFailed,
                            format!("{dst}: connecting to {sa} failed"),
                        )
                        .with_source(e),
                    )
                }
                Err(_) => {
                    last = Some(UpstreamError::new(
                        UpstreamErrorKind::ConnectTimeout,
                        format!(
                            "{dst}: connecting to {sa} took longer than {:?}",
                            self.config.connect_timeout
                        ),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            UpstreamError::new(
                UpstreamErrorKind::ConnectFailed,
                format!("{dst}: no address"),
            )
        }))
    }
}

fn trust(plan: &UpstreamPlan, ip: IpAddr) -> Origin {
    if plan.trusted_nets.iter().any(|n| n.contains(&ip)) {
        Origin::Declared
    } else {
        Origin::Untrusted
    }
}

fn trust_opt(plan: Option<&UpstreamPlan>, ip: IpAddr) -> Origin {
    plan.map_or(Origin::Untrusted, |p| trust(p, ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::{RequestForm, Scheme};

    fn dst(host: &str, port: u16) -> Destination {
        let (h, _) = crate::host::parse_authority(host).unwrap();
        Destination::new(h, port, Scheme::Http, RequestForm::Absolute)
    }

    #[tokio::test]
    async fn guard_refuses_internal_unless_declared() {
        let d = Dialer::new(DialerConfig::default());
        let err = d.addresses(&dst("localhost", 80), None).await.unwrap_err();
        assert_eq!(err.kind(), UpstreamErrorKind::IpDenied, "{err}");
        for literal in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "[::ffff:127.0.0.1]",
            "[::1]",
        ] {
            let err = d.addresses(&dst(literal, 80), None).await.unwrap_err();
            assert_eq!(err.kind(), UpstreamErrorKind::IpDenied, "{literal}");
        }
        // A public literal passes untouched.
        let ok = d.addresses(&dst("93.184.216.34", 80), None).await.unwrap();
        assert_eq!(ok, vec!["93.184.216.34:80".parse().unwrap()]);
        // Declared through ServiceEntry.addresses.
        let plan = UpstreamPlan {
            trusted_nets: vec!["10.0.0.0/8".parse().unwrap()].into(),
            ..Default::default()
        };
        let ok = d
            .addresses(&dst("10.0.0.1", 80), Some(&plan))
            .await
            .unwrap();
        assert_eq!(ok.len(), 1);
        // STATIC endpoints, with targetPort.
        let plan = UpstreamPlan {
            targets: vec![Target::Addr("127.0.0.1:9000".parse().unwrap())].into(),
            port: Some(9000),
            ..Default::default()
        };
        let ok = d
            .addresses(&dst("static.test", 80), Some(&plan))
            .await
            .unwrap();
        assert_eq!(ok, vec!["127.0.0.1:9000".parse().unwrap()]);
    }

    #[tokio::test]
    async fn overrides_win_and_listeners_are_refused() {
        let mut o = Overrides::new();
        o.add("svc.test:80:127.0.0.1").unwrap();
        o.add("self.test:80:127.0.0.1").unwrap();
        let config = DialerConfig::default()
            .with_overrides(o)
            .with_listeners(vec!["0.0.0.0:80".parse().unwrap()]);
        let d = Dialer::new(config);
        let err = d.addresses(&dst("svc.test", 80), None).await.unwrap_err();
        assert_eq!(err.kind(), UpstreamErrorKind::LoopDetected);
        let d = Dialer::new(DialerConfig::default().with_overrides(d.config().overrides().clone()));
        let ok = d.addresses(&dst("svc.test", 80), None).await.unwrap();
        assert_eq!(ok, vec!["127.0.0.1:80".parse().unwrap()]);
        let err = d
            .addresses(&dst("nxdomain.invalid", 80), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), UpstreamErrorKind::DnsFailed);
    }

    #[tokio::test]
    async fn overrides_follow_the_plan_name() {
        // A route from a.test to b.test: b.test's override applies, not a.test's.
        let mut o = Overrides::new();
        o.add("a.test:80:127.0.0.1:1111").unwrap();
        o.add("b.test:80:127.0.0.1:2222").unwrap();
        let d = Dialer::new(DialerConfig::default().with_overrides(o));
        let plan = UpstreamPlan {
            targets: vec![Target::Name("b.test".into(), Some(80))].into(),
            port: Some(80),
            name: Some("b.test".into()),
            ..Default::default()
        };
        let got = d.addresses(&dst("a.test", 80), Some(&plan)).await.unwrap();
        assert_eq!(got, vec!["127.0.0.1:2222".parse().unwrap()]);
        let got = d.addresses(&dst("a.test", 80), None).await.unwrap();
        assert_eq!(got, vec!["127.0.0.1:1111".parse().unwrap()]);
    }
}
