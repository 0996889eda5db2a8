//! The compiled service registry and the `REGISTRY_ONLY` check.
//!
//! [`Registry::compile`] turns `ServiceEntry` resources into an immutable index: a hash of
//! exact hosts, a hash of wildcard suffixes walked label by label (so a lookup costs the same
//! with 10 or 100,000 entries, and the most specific match wins), and an index of declared
//! IPs and CIDRs. Each registered port carries its precomputed [`UpstreamPlan`], so the check
//! on the request path is lookups and reference-count bumps only.

mod admit;
mod plan;

pub use admit::Admission;

use egress_core::ctx::{Destination, Host, Target, UpstreamPlan};
use ipnet::IpNet;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics, Severity};

// The tables are built from configuration only; clients can probe them but never insert, so
// a fast hash with a random seed (foldhash) is safe here where SipHash's cost is not needed.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use crate::model::{
    Config, DestinationPolicy, OutboundPolicy, OutboundSetting, Port, Resolution, Service,
};

/// One registered port of one service: what a lookup returns.
#[derive(Debug)]
pub struct RegisteredPort {
    /// The `ServiceEntry` it belongs to.
    pub service: Arc<Service>,
    /// The port.
    pub port: Port,
    /// How the transport reaches it.
    pub plan: UpstreamPlan,
    /// Telemetry labels: the service's (first) host and its name.
    pub labels: (Arc<str>, Arc<str>),
}

#[derive(Debug)]
struct HostPorts {
    /// Usually the list its service shares among all its hosts.
    ports: Arc<[(u16, Arc<RegisteredPort>)]>,
}

impl Default for HostPorts {
    fn default() -> Self {
        Self {
            ports: Arc::new([]),
        }
    }
}

impl HostPorts {
    #[inline]
    fn get(&self, port: u16) -> Option<&Arc<RegisteredPort>> {
        self.ports.iter().find(|(p, _)| *p == port).map(|(_, r)| r)
    }
}

/// The compiled registry and the outbound policy, swapped as a whole on reload.
#[derive(Debug)]
pub struct Registry {
    policy: OutboundPolicy,
    exact: HashMap<Box<str>, HostPorts>,
    wildcard: HashMap<Box<str>, HostPorts>,
    ips: HashMap<IpAddr, HostPorts>,
    /// CIDRs grouped by prefix length, longest first: one hash lookup per length in use.
    cidrs: Vec<(IpNet, HashMap<IpNet, HostPorts>)>,
    services: Vec<Arc<Service>>,
}

/// A summary of the registry, for `check` and `/config_dump`.
#[derive(Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct RegistrySummary<'a> {
    /// The outbound policy.
    #[cfg_attr(feature = "serde", serde(rename = "outboundTrafficPolicy"))]
    pub policy: OutboundPolicy,
    /// The registered services.
    #[cfg_attr(feature = "serde", serde(rename = "serviceEntries"))]
    pub services: &'a [Arc<Service>],
}

impl Registry {
    /// An empty registry with this policy.
    pub fn empty(policy: OutboundPolicy) -> Self {
        Self {
            policy,
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            ips: HashMap::default(),
            cidrs: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Compiles the `ServiceEntry` resources of a configuration. The policy is `override_`
    /// when given (the CLI flag), else the `Sidecar`'s, else `REGISTRY_ONLY`. Conflicts are
    /// reported as diagnostics; the registry is returned, with the warnings of the whole
    /// configuration, only when there are no errors.
    pub fn compile(
        config: &Config,
        override_: Option<OutboundPolicy>,
    ) -> Result<(Registry, Diagnostics), Diagnostics> {
        let mut diags = config.diagnostics.clone();
        let policy = override_.or_else(|| sidecar_policy(config, &mut diags));
        let mut reg = Registry::empty(policy.unwrap_or(OutboundPolicy::RegistryOnly));
        let mut seen = std::collections::HashMap::new();
        for se in &config.services {
            let id = se.meta.id();
            if let Some(first) = seen.insert(id.clone(), se.meta.line) {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: se.meta.file.clone(),
                    line: se.meta.line,
                    col: 1,
                    resource: Some(format!("ServiceEntry {id}").into()),
                    field: "metadata.name".into(),
                    message: format!("ServiceEntry {id} is defined twice (first at line {first})"),
                });
                continue;
            }
            reg.add(se, &config.destination_policies, &mut diags);
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok((reg, diags))
    }

    fn add(&mut self, se: &Service, rules: &[DestinationPolicy], diags: &mut Diagnostics) {
        let service = Arc::new(se.clone());
        self.services.push(service.clone());
        let trusted: Arc<[IpNet]> = se.trusted().into();
        let label: Arc<str> = se.meta.id().into();
        let labels: (Arc<str>, Arc<str>) = (
            se.hosts.first().map_or("", String::as_str).into(),
            se.meta.name.as_str().into(),
        );
        let list: Vec<(u16, Arc<RegisteredPort>)> = se
            .ports
            .iter()
            .map(|port| {
                let mut plan = plan_for(se, port, &trusted, &label);
                plan.balance = balance_for(rules, &se.hosts, port.number, None);
                plan.tls = tls_for(rules, &se.hosts, port.number, None);
                let entry = RegisteredPort {
                    service: service.clone(),
                    port: port.clone(),
                    plan,
                    labels: labels.clone(),
                };
                (port.number, Arc::new(entry))
            })
            .collect();
        // One port list for all the service's hosts: a million hosts cost a pointer each.
        let list: Arc<[(u16, Arc<RegisteredPort>)]> = list.into();
        for host in &se.hosts {
            let slot = match host.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.into()).or_default(),
                None => match host.parse::<IpAddr>() {
                    Ok(ip) => self.ips.entry(ip).or_default(),
                    Err(_) => self.exact.entry(host.as_str().into()).or_default(),
                },
            };
            insert(slot, &list, se, host, diags);
        }
        for net in &se.addresses {
            let slot = if net.prefix_len() == net.max_prefix_len() {
                self.ips.entry(net.addr()).or_default()
            } else {
                self.cidr_group(net).entry(*net).or_default()
            };
            insert(slot, &list, se, &net.to_string(), diags);
        }
    }

    /// The table of CIDRs with this one's prefix length, kept longest first.
    fn cidr_group(&mut self, net: &IpNet) -> &mut HashMap<IpNet, HostPorts> {
        let mask = match net {
            IpNet::V4(n) => IpNet::V4(ipnet::Ipv4Net::new_assert(n.netmask(), n.prefix_len())),
            IpNet::V6(n) => IpNet::V6(ipnet::Ipv6Net::new_assert(n.netmask(), n.prefix_len())),
        };
        if !self.cidrs.iter().any(|(m, _)| *m == mask) {
            self.cidrs.push((mask, HashMap::default()));
            self.cidrs
                .sort_by_key(|(m, _)| std::cmp::Reverse(m.prefix_len()));
        }
        let i = self.cidrs.iter().position(|(m, _)| *m == mask).unwrap_or(0);
        &mut self.cidrs[i].1
    }

    /// The outbound policy.
    pub fn policy(&self) -> OutboundPolicy {
        self.policy
    }

    /// The registered services, in the order read.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// A serialisable summary.
    pub fn summary(&self) -> RegistrySummary<'_> {
        RegistrySummary {
            policy: self.policy,
            services: &self.services,
        }
    }

    /// The registered port a destination maps to: an exact host, else the longest wildcard
    /// suffix, else (for IP literals) a declared address or the narrowest declared CIDR.
    #[inline]
    pub fn lookup(&self, dst: &Destination) -> Option<&Arc<RegisteredPort>> {
        match dst.host() {
            Host::Name(name) => self.lookup_name(name, dst.port()),
            Host::Ip(ip) => self.lookup_ip(*ip, dst.port()),
        }
    }

    /// Where a service the gateway itself calls (an `extensionProviders` authorizer or
    /// collector) is reached, as Envoy reaches it through its cluster: the first endpoint
    /// of the `ServiceEntry` registering that host and port (a `STATIC` address, or a `DNS`
    /// name with the endpoint's port), else the name itself on the registered target port.
    /// A name is then resolved by the caller (`--resolve`, then DNS).
    pub fn service_target(&self, service: &str, port: u16) -> egress_core::ctx::Target {
        use egress_core::ctx::Target;
        let name = service.trim_end_matches('.').to_ascii_lowercase();
        let Some(rp) = self.lookup_name(&name, port) else {
            return Target::Name(name.into(), Some(port));
        };
        let port = rp.plan.port.unwrap_or(port);
        match rp.plan.targets.first() {
            Some(Target::Addr(a)) => Target::Addr(*a),
            Some(Target::Name(n, np)) => Target::Name(n.clone(), Some(np.unwrap_or(port))),
            None => Target::Name(name.into(), Some(port)),
        }
    }

    /// Looks up a lower-case host name and port.
    pub fn lookup_name(&self, name: &str, port: u16) -> Option<&Arc<RegisteredPort>> {
        // Ports are matched per host, as Envoy matches per listener: an exact host without
        // this port falls through to a wildcard that has it.
        if let Some(found) = self.exact.get(name).and_then(|hp| hp.get(port)) {
            return Some(found);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // `*.example.com` matches `a.example.com` and `a.b.example.com`, never
        // `example.com`: try each proper suffix, longest (most specific) first.
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(found) = self.wildcard.get(rest).and_then(|hp| hp.get(port)) {
                return Some(found);
            }
        }
        None
    }

    /// Every registered port of a host name (exact entry first, else the most specific
    /// wildcard), for routing to a destination whose port is not given.
    pub fn ports_of(&self, name: &str) -> Vec<Arc<RegisteredPort>> {
        if let Some(hp) = self.exact.get(name) {
            return hp.ports.iter().map(|(_, r)| r.clone()).collect();
        }
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(hp) = self.wildcard.get(rest) {
                return hp.ports.iter().map(|(_, r)| r.clone()).collect();
            }
        }
        Vec::new()
    }

    /// Looks up an IP address and port among declared addresses.
    pub fn lookup_ip(&self, ip: IpAddr, port: u16) -> Option<&Arc<RegisteredPort>> {
        if let Some(found) = self.ips.get(&ip).and_then(|hp| hp.get(port)) {
            return Some(found);
        }
        for (mask, group) in &self.cidrs {
            let ((IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))) = (mask, ip) else {
                continue;
            };
            let Ok(net) = IpNet::new(ip, mask.prefix_len()) else {
                continue;
            };
            if let Some(found) = group.get(&net.trunc()).and_then(|hp| hp.get(port)) {
                return Some(found);
            }
        }
        None
    }
}

/// Gives a host (or address) the ports of a service: the service's shared list when the
/// host has none yet, else a list of its own with the ports not registered before (Istio
/// keeps the oldest resource; here, the first one read), each conflict a warning.
fn insert(
    slot: &mut HostPorts,
    list: &Arc<[(u16, Arc<RegisteredPort>)]>,
    se: &Service,
    host: &str,
    diags: &mut Diagnostics,
) {
    if slot.ports.is_empty() {
        slot.ports = list.clone();
        return;
    }
    let mut merged = slot.ports.to_vec();
    for (number, entry) in list.iter() {
        if let Some(existing) = slot.get(*number) {
            diags.push(Diagnostic {
                severity: Severity::Warning,
                file: se.meta.file.clone(),
                line: se.meta.line,
                col: 1,
                resource: Some(format!("ServiceEntry {}", se.meta.id()).into()),
                field: "spec.hosts".into(),
                message: format!(
                    "{host} port {number} is already registered by ServiceEntry {} ({}:{}); this one is ignored for it",
                    existing.service.meta.id(),
                    existing.service.meta.file,
                    existing.service.meta.line
                ),
            });
            continue;
        }
        merged.push((*number, entry.clone()));
    }
    slot.ports = merged.into();
}

fn plan_for(se: &Service, port: &Port, trusted: &Arc<[IpNet]>, label: &Arc<str>) -> UpstreamPlan {
    plan_with(se, port, trusted, label, &[])
}

/// The plan for one port of a service, over the endpoints whose labels include `labels`
/// (a `DestinationRule` subset; empty selects all).
pub(crate) fn plan_with(
    se: &Service,
    port: &Port,
    trusted: &Arc<[IpNet]>,
    label: &Arc<str>,
    labels: &[(String, String)],
) -> UpstreamPlan {
    let dial = port.target_port.unwrap_or(port.number);
    let targets: Vec<Target> = match se.resolution {
        Resolution::None | Resolution::DynamicDns => Vec::new(),
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => se
            .endpoints
            .iter()
            .filter(|e| e.weight != Some(0))
            .filter(|e| labels.iter().all(|l| e.labels.contains(l)))
            .map(|e| {
                let p = e
                    .ports
                    .iter()
                    .find(|(n, _)| *n == port.name)
                    .map(|(_, p)| *p)
                    .unwrap_or(dial);
                match e.address.parse::<IpAddr>() {
                    Ok(ip) => Target::Addr(SocketAddr::new(ip, p)),
                    Err(_) => Target::Name(e.address.as_str().into(), Some(p)),
                }
            })
            .collect(),
    };
    UpstreamPlan {
        targets: targets.into(),
        port: Some(dial),
        trusted_nets: trusted.clone(),
        service: Some(label.clone()),
        name: None,
        balance: Default::default(),
        tls: None,
        source: se.source_ip,
        http2: matches!(
            port.protocol,
            crate::model::Protocol::Http2 | crate::model::Protocol::Grpc
        ),
    }
}

/// The load balancer the `DestinationRule` of one of these hosts sets for a port and subset.
pub(crate) fn balance_for(
    rules: &[DestinationPolicy],
    hosts: &[String],
    port: u16,
    subset: Option<&str>,
) -> egress_core::ctx::Balance {
    rules
        .iter()
        .filter(|dr| hosts.contains(&dr.host))
        .find_map(|dr| dr.balance_for(port, subset))
        .map(|lb| lb.to_balance())
        .unwrap_or_default()
}

/// The TLS origination the `DestinationRule` of one of these hosts sets for a port and
/// subset (`None`: plain, or `DISABLE`).
pub(crate) fn tls_for(
    rules: &[DestinationPolicy],
    hosts: &[String],
    port: u16,
    subset: Option<&str>,
) -> Option<Arc<egress_core::ctx::TlsSettings>> {
    rules
        .iter()
        .filter(|dr| hosts.contains(&dr.host))
        .find_map(|dr| {
            dr.tls_for(port, subset)
                .map(|t| t.to_settings(&format!("DestinationRule {}", dr.meta.id())))
        })
        .flatten()
        .map(Arc::new)
}

fn sidecar_policy(config: &Config, diags: &mut Diagnostics) -> Option<OutboundPolicy> {
    let mut found: Option<(OutboundPolicy, &OutboundSetting)> = None;
    for sc in &config.outbound_settings {
        let Some(mode) = sc.outbound else { continue };
        match found {
            Some((first, at)) if first != mode => diags.push(Diagnostic {
                severity: Severity::Error,
                file: sc.meta.file.clone(),
                line: sc.meta.line,
                col: 1,
                resource: Some(format!("Sidecar {}", sc.meta.id()).into()),
                field: "spec.outboundTrafficPolicy.mode".into(),
                message: format!(
                    "{} conflicts with {} set by Sidecar {} ({}:{})",
                    mode.as_str(),
                    first.as_str(),
                    at.meta.id(),
                    at.meta.file,
                    at.meta.line
                ),
            }),
            Some(_) => {}
            None => found = Some((mode, sc)),
        }
    }
    // MeshConfig's mode is below any Sidecar's.
    found
        .map(|(m, _)| m)
        .or_else(|| config.mesh.as_ref().and_then(|m| m.outbound))
}

/// `host:port` (or `ip:port`) to dial for a [`Registry::service_target`]: an address as it
/// is, a name through `--resolve` when it pins one, else the name for DNS.
pub fn dial_target(
    target: &egress_core::ctx::Target,
    default_port: u16,
    overrides: &egress_core::transport::Overrides,
) -> String {
    match target {
        egress_core::ctx::Target::Addr(a) => a.to_string(),
        egress_core::ctx::Target::Name(n, port) => {
            let port = port.unwrap_or(default_port);
            match overrides.get(n, port).and_then(|a| a.first()) {
                Some(a) => a.socket(port).to_string(),
                None => format!("{n}:{port}"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
