//! Compiled `VirtualService` routing: which destination (and subset) serves a request.
//!
//! [`RouteTable::compile`] indexes `VirtualService` hosts like the registry (exact hash plus
//! wildcard suffixes, so unrelated routes cost nothing), checks every route destination
//! against the registry (under `REGISTRY_ONLY` an unregistered destination is a config
//! error naming the `VirtualService`), resolves `DestinationRule` subsets to endpoint sets,
//! and precomputes an [`UpstreamPlan`] for each destination and port. [`RouteLayer`](crate::layers::RouteLayer) applies
//! it per request.

mod server_hosts;

pub use server_hosts::{ServerHosts, ServerHostsCheck, ServerHostsLayer};

mod matching;

use egress_core::ctx::{RetryPolicy, Target, UpstreamPlan};
use http::Request;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::model::{
    Binding, Config, DirectResponse, Fault, Headers, HttpMatch, OutboundPolicy, Redirect, Retries,
    Rewrite, StringMatch, TlsMatch, VirtualHost, WeightedDestination,
};
use crate::registry::{Registry, plan_with};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One destination of a route, ready to use.
#[derive(Debug)]
pub struct CompiledDestination {
    /// `host`.
    pub host: Arc<str>,
    /// `subset`.
    pub subset: Option<Arc<str>>,
    /// `port.number`, if given.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
    /// Per-destination header operations.
    pub headers: Headers,
    /// Plans per port of the destination (one entry when the port is fixed).
    plans: Vec<(u16, UpstreamPlan)>,
    /// The plan for any port when the destination is unregistered under `ALLOW_ANY`.
    passthrough: bool,
}

impl CompiledDestination {
    /// The plan for this destination when the request came on `request_port`: the
    /// destination's port, else its only port, else the request's port.
    pub fn plan(&self, request_port: u16) -> Option<(u16, UpstreamPlan)> {
        let fallback = match self.plans.as_slice() {
            [(only, _)] => *only,
            _ => request_port,
        };
        let port = self.port.unwrap_or(fallback);
        if self.passthrough {
            return Some((
                port,
                UpstreamPlan {
                    targets: vec![Target::Name(self.host.clone(), Some(port))].into(),
                    name: Some(self.host.clone()),
                    port: Some(port),
                    ..Default::default()
                },
            ));
        }
        self.plans
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(p, plan)| (*p, plan.clone()))
    }
}

/// What a matched route does.
#[derive(Debug)]
pub enum Action {
    /// Forward to one of these, by weight.
    Route {
        /// The destinations.
        destinations: Vec<CompiledDestination>,
        /// Sum of their weights.
        total: u64,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct(DirectResponse),
}

/// One compiled `HTTPRoute`.
#[derive(Debug)]
pub struct CompiledRoute {
    /// `namespace/name` of the `VirtualService` and the route's index or name.
    pub id: Arc<str>,
    /// The match blocks (empty: everything).
    pub matches: Vec<HttpMatch>,
    /// What to do.
    pub action: Action,
    /// `rewrite`.
    pub rewrite: Option<Rewrite>,
    /// `timeout`.
    pub timeout: Option<std::time::Duration>,
    /// Route-level header operations.
    pub headers: Headers,
    /// Mirror destinations and the percentage of requests each receives.
    pub mirrors: Vec<(CompiledDestination, f64)>,
    /// `fault`.
    pub fault: Fault,
    /// `retries`, compiled.
    pub retries: Option<RetryPolicy>,
}

#[derive(Debug)]
struct CompiledVs {
    routes: Vec<CompiledRoute>,
}

/// One compiled `tls` route of a `VirtualService`.
#[derive(Debug)]
struct CompiledTlsRoute {
    matches: Vec<TlsMatch>,
    destinations: Vec<CompiledDestination>,
    total: u64,
}

/// The routing table, swapped as a whole with the registry.
#[derive(Debug, Default)]
pub struct RouteTable {
    tls: Vec<CompiledTlsRoute>,
    /// `tcp` routes with the hosts of their VirtualService.
    tcp: Vec<(Vec<String>, CompiledTlsRoute)>,
    exact: HashMap<Box<str>, Arc<CompiledVs>>,
    wildcard: HashMap<Box<str>, Arc<CompiledVs>>,
    any: Option<Arc<CompiledVs>>,
    next: AtomicU64,
    skipped: Vec<String>,
}

/// A summary for `/config_dump` and `check`.
#[derive(Debug, Serialize)]
pub struct RouteSummary {
    /// Hosts with routes.
    pub hosts: Vec<String>,
    /// VirtualServices not applied, and why.
    pub skipped: Vec<String>,
}

impl RouteTable {
    /// Compiles the `VirtualService`s of a configuration against a compiled registry.
    pub fn compile(
        config: &Config,
        registry: &Registry,
        binding: &Binding,
    ) -> Result<(RouteTable, Diagnostics), Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut table = RouteTable::default();
        for vs in &config.virtual_hosts {
            let id = vs.meta.id();
            if !binding.applies(&vs.gateways, &vs.meta.namespace) {
                let gateways = if vs.gateways.is_empty() {
                    vec!["mesh".to_owned()]
                } else {
                    vs.gateways.clone()
                };
                if binding.is_mesh() {
                    let why = format!(
                        "VirtualService {id} is bound to {gateways:?}, and no Gateway resource selects this proxy (labels set with --gateway-label); ignored"
                    );
                    diags.push(diag(vs, Severity::Warning, "spec.gateways", why.clone()));
                    table.skipped.push(why);
                } else {
                    // The sidecar hop of a two-hop egress configuration: expected, not a warning.
                    table.skipped.push(format!(
                        "VirtualService {id} is bound to {gateways:?}, not to this gateway ({})",
                        binding.selected.join(", ")
                    ));
                }
                continue;
            }
            for (i, t) in vs.tls.iter().enumerate() {
                let matches: Vec<_> = t
                    .matches
                    .iter()
                    .filter(|m| {
                        m.gateways.is_empty() || binding.applies(&m.gateways, &vs.meta.namespace)
                    })
                    .cloned()
                    .collect();
                if matches.is_empty() {
                    continue;
                }
                let mut destinations = Vec::new();
                for (j, d) in t.route.iter().enumerate() {
                    let field = format!("spec.tls[{i}].route[{j}].destination");
                    if let Some(cd) =
                        compile_destination(vs, d, &field, config, registry, &mut diags)
                    {
                        destinations.push(cd);
                    }
                }
                let total = destinations.iter().map(|d| u64::from(d.weight)).sum();
                table.tls.push(CompiledTlsRoute {
                    matches,
                    destinations,
                    total,
                });
            }
            for (i, t) in vs.tcp.iter().enumerate() {
                let matches: Vec<_> = if t.matches.is_empty() {
                    vec![TlsMatch {
                        sni_hosts: vec!["*".into()],
                        ..Default::default()
                    }]
                } else {
                    t.matches
                        .iter()
                        .filter(|m| {
                            m.gateways.is_empty()
                                || binding.applies(&m.gateways, &vs.meta.namespace)
                        })
                        .cloned()
                        .collect()
                };
                if matches.is_empty() {
                    continue;
                }
                let mut destinations = Vec::new();
                for (j, d) in t.route.iter().enumerate() {
                    let field = format!("spec.tcp[{i}].route[{j}].destination");
                    if let Some(cd) =
                        compile_destination(vs, d, &field, config, registry, &mut diags)
                    {
                        destinations.push(cd);
                    }
                }
                let total = destinations.iter().map(|d| u64::from(d.weight)).sum();
                table.tcp.push((
                    vs.hosts.clone(),
                    CompiledTlsRoute {
                        matches,
                        destinations,
                        total,
                    },
                ));
            }
            let Some(compiled) = compile_vs(vs, config, registry, binding, &mut diags) else {
                continue;
            };
            let compiled = Arc::new(compiled);
            for host in &vs.hosts {
                let slot = if host == "*" {
                    if table.any.is_none() {
                        table.any = Some(compiled.clone());
                    }
                    continue;
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    table.wildcard.entry(suffix.into())
                } else {
                    table.exact.entry(host.as_str().into())
                };
                match slot {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(compiled.clone());
                    }
                    std::collections::hash_map::Entry::Occupied(_) => diags.push(diag(
                        vs,
                        Severity::Warning,
                        "spec.hosts",
                        format!("host {host} already has a VirtualService; this one is ignored for it (Istio merges only on gateways)"),
                    )),
                }
            }
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok((table, diags))
    }

    /// The destination of the first `tls` route whose match covers this SNI and port, and
    /// its plan (`None`: no route; the caller falls back to the SNI's own registration).
    pub fn tls_route(&self, sni: &str, port: u16) -> Option<(Arc<str>, u16, UpstreamPlan)> {
        let route = self.tls.iter().find(|r| {
            r.matches
                .iter()
                .any(|m| m.port.is_none_or(|p| p == port) && m.sni_matches(sni))
        })?;
        let d = self.pick(&route.destinations, route.total)?;
        let (p, plan) = d.plan(port)?;
        Some((d.host.clone(), p, plan))
    }

    /// The destination of the first `tcp` route of a VirtualService covering `host` whose
    /// match covers the port, for `CONNECT` tunnels.
    pub fn tcp_route(&self, host: &str, port: u16) -> Option<(Arc<str>, u16, UpstreamPlan)> {
        let covers = |h: &String| match h.strip_prefix("*.") {
            Some(s) => {
                host.len() > s.len() + 1
                    && host.ends_with(s)
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
            }
            None => h == "*" || h == host,
        };
        let (_, route) = self.tcp.iter().find(|(hosts, r)| {
            hosts.iter().any(covers) && r.matches.iter().any(|m| m.port.is_none_or(|p| p == port))
        })?;
        let d = self.pick(&route.destinations, route.total)?;
        let (p, plan) = d.plan(port)?;
        Some((d.host.clone(), p, plan))
    }

    /// The destination of the first `tcp` route for a TCP `Gateway` server: its
    /// VirtualService's hosts must be among the server's `hosts` and a match must cover the
    /// server's port. A TCP connection names no host, so the server's hosts stand for it.
    pub fn tcp_route_for_server(
        &self,
        server: &ServerHosts,
        port: u16,
    ) -> Option<(Arc<str>, u16, UpstreamPlan)> {
        let (_, route) = self.tcp.iter().find(|(hosts, r)| {
            hosts.iter().any(|h| server.contains(h))
                && r.matches.iter().any(|m| m.port.is_none_or(|p| p == port))
        })?;
        let d = self.pick(&route.destinations, route.total)?;
        let (p, plan) = d.plan(port)?;
        Some((d.host.clone(), p, plan))
    }

    /// Whether any host has routes.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }

    /// A summary.
    pub fn summary(&self) -> RouteSummary {
        let mut hosts: Vec<String> = self.exact.keys().map(|h| h.to_string()).collect();
        hosts.extend(self.wildcard.keys().map(|h| format!("*.{h}")));
        if self.any.is_some() {
            hosts.push("*".into());
        }
        hosts.sort();
        RouteSummary {
            hosts,
            skipped: self.skipped.clone(),
        }
    }

    fn lookup(&self, host: &str) -> Option<&Arc<CompiledVs>> {
        if let Some(vs) = self.exact.get(host) {
            return Some(vs);
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(vs) = self.wildcard.get(rest) {
                return Some(vs);
            }
        }
        self.any.as_ref()
    }

    /// The first route of the host's `VirtualService` whose match applies, with the index
    /// of the match block that applied. `None` when no `VirtualService` covers the host;
    /// `Some(None)` when one does but no route matches (Envoy's 404 `NR`).
    pub fn route<B>(
        &self,
        host: &str,
        port: u16,
        scheme: &str,
        authority: &str,
        req: &Request<B>,
    ) -> Option<Option<(&CompiledRoute, Option<usize>)>> {
        match self.route_checked(host, port, scheme, authority, req) {
            Ok(found) => found,
            Err(_) => self.lookup(host).map(|_| None),
        }
    }

    /// [`RouteTable::route`], or the name of a header that a route matches and that the
    /// request sends on several lines which the match reads differently (ambiguous: refuse).
    pub fn route_checked<B>(
        &self,
        host: &str,
        port: u16,
        scheme: &str,
        authority: &str,
        req: &Request<B>,
    ) -> Result<Option<Option<(&CompiledRoute, Option<usize>)>>, String> {
        let Some(vs) = self.lookup(host) else {
            return Ok(None);
        };
        let mut ambiguous = None;
        for route in &vs.routes {
            if route.matches.is_empty() {
                return Ok(Some(Some((route, None))));
            }
            let hit = route
                .matches
                .iter()
                .position(|m| matches(m, port, scheme, authority, req, &mut ambiguous));
            if let Some(name) = ambiguous {
                return Err(name);
            }
            if let Some(i) = hit {
                return Ok(Some(Some((route, Some(i)))));
            }
        }
        Ok(Some(None))
    }

    /// Whether a request falls within `percent` of all (from the same sequence as
    /// [`RouteTable::pick`]).
    pub fn sample(&self, percent: f64) -> bool {
        if percent >= 100.0 {
            return true;
        }
        if percent <= 0.0 {
            return false;
        }
        let z = self.next_random();
        (z >> 11) as f64 / (1u64 << 53) as f64 * 100.0 < percent
    }

    fn next_random(&self) -> u64 {
        let mut z = self
            .next
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Picks a destination by weight: a deterministic, well-mixed sequence (splitmix64 over
    /// a counter), so shares converge quickly and runs are reproducible.
    pub fn pick<'a>(
        &self,
        destinations: &'a [CompiledDestination],
        total: u64,
    ) -> Option<&'a CompiledDestination> {
        if destinations.len() == 1 {
            return destinations.first();
        }
        if total == 0 {
            return None;
        }
        let mut n = self.next_random() % total;
        for d in destinations {
            if n < u64::from(d.weight) {
                return Some(d);
            }
            n -= u64::from(d.weight);
        }
        destinations.last()
    }
}

fn diag(vs: &VirtualHost, severity: Severity, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: vs.meta.file.clone(),
        line: vs.meta.line,
        col: 1,
        resource: Some(format!("VirtualService {}", vs.meta.id()).into()),
        field: field.into(),
        message,
    }
}

fn compile_vs(
    vs: &VirtualHost,
    config: &Config,
    registry: &Registry,
    binding: &Binding,
    diags: &mut Diagnostics,
) -> Option<CompiledVs> {
    let mut routes = Vec::new();
    let errors_before = diags.errors().count();
    for (i, r) in vs.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        // Match blocks naming other gateways (or only `mesh`, when this proxy is a gateway)
        // never apply here; a route left without any applicable block is dropped.
        let matches: Vec<HttpMatch> = r
            .matches
            .iter()
            .filter(|m| m.gateways.is_empty() || binding.applies(&m.gateways, &vs.meta.namespace))
            .cloned()
            .collect();
        if !r.matches.is_empty() && matches.is_empty() {
            continue;
        }
        let action = if let Some(d) = &r.direct_response {
            Action::Direct(d.clone())
        } else if let Some(rd) = &r.redirect {
            Action::Redirect(rd.clone())
        } else {
            let mut destinations = Vec::new();
            for (j, d) in r.route.iter().enumerate() {
                let field = format!("{path}.route[{j}].destination");
                if let Some(cd) = compile_destination(vs, d, &field, config, registry, diags) {
                    destinations.push(cd);
                }
            }
            let total = destinations.iter().map(|d| u64::from(d.weight)).sum();
            Action::Route {
                destinations,
                total,
            }
        };
        let mut mirrors = Vec::new();
        for (j, (target, pct)) in r.mirrors.iter().enumerate() {
            let field = format!("{path}.mirrors[{j}]");
            let as_route = WeightedDestination {
                destination: target.clone(),
                weight: 1,
                headers: Headers::default(),
            };
            if let Some(cd) = compile_destination(vs, &as_route, &field, config, registry, diags)
                && *pct > 0.0
            {
                mirrors.push((cd, *pct));
            }
        }
        let id = match &r.name {
            Some(n) => format!("{}/{n}", vs.meta.id()),
            None => format!("{}#{i}", vs.meta.id()),
        };
        routes.push(CompiledRoute {
            id: id.into(),
            matches,
            action,
            rewrite: r.rewrite.clone(),
            timeout: r.timeout,
            headers: r.headers.clone(),
            mirrors,
            fault: r.fault.clone(),
            retries: r.retries.as_ref().map(retry_policy),
        });
    }
    (diags.errors().count() == errors_before).then_some(CompiledVs { routes })
}

fn compile_destination(
    vs: &VirtualHost,
    d: &WeightedDestination,
    field: &str,
    config: &Config,
    registry: &Registry,
    diags: &mut Diagnostics,
) -> Option<CompiledDestination> {
    let t = &d.destination;
    let registered = registry.ports_of(&t.host);
    let registered: Vec<_> = match t.port {
        Some(p) => registered
            .into_iter()
            .filter(|r| r.port.number == p)
            .collect(),
        None => registered,
    };
    let mut out = CompiledDestination {
        host: t.host.as_str().into(),
        subset: t.subset.as_deref().map(Into::into),
        port: t.port,
        weight: d.weight,
        headers: d.headers.clone(),
        plans: Vec::new(),
        passthrough: false,
    };
    if registered.is_empty() {
        if registry.policy() == OutboundPolicy::AllowAny && t.subset.is_none() {
            out.passthrough = true;
            return Some(out);
        }
        let port = t.port.map(|p| format!(" port {p}")).unwrap_or_default();
        diags.push(diag(
            vs,
            Severity::Error,
            field,
            format!(
                "route destination {}{port} is not in the service registry (outbound traffic policy {}); add a ServiceEntry for it",
                t.host,
                registry.policy().as_str()
            ),
        ));
        return None;
    }
    let labels: Vec<(String, String)> = match &t.subset {
        None => Vec::new(),
        Some(name) => {
            let subset = config
                .destination_policies
                .iter()
                .filter(|dr| dr.host == t.host)
                .flat_map(|dr| dr.subsets.iter())
                .find(|s| &s.name == name);
            match subset {
                Some(s) => s.labels.clone(),
                None => {
                    diags.push(diag(
                        vs,
                        Severity::Error,
                        field,
                        format!(
                            "subset {name:?} of {} is not defined by any DestinationRule",
                            t.host
                        ),
                    ));
                    return None;
                }
            }
        }
    };
    for rp in registered {
        let label: Arc<str> = rp.service.meta.id().into();
        let trusted: Arc<[ipnet::IpNet]> = rp.service.addresses.clone().into();
        let mut plan = plan_with(&rp.service, &rp.port, &trusted, &label, &labels);
        plan.balance = crate::registry::balance_for(
            &config.destination_policies,
            std::slice::from_ref(&t.host),
            rp.port.number,
            t.subset.as_deref(),
        );
        plan.tls = crate::registry::tls_for(
            &config.destination_policies,
            std::slice::from_ref(&t.host),
            rp.port.number,
            t.subset.as_deref(),
        );
        if t.subset.is_some() && plan.targets.is_empty() {
            diags.push(diag(
                vs,
                Severity::Error,
                field,
                format!(
                    "subset {:?} of {} selects no endpoints of ServiceEntry {}",
                    t.subset.as_deref().unwrap_or(""),
                    t.host,
                    rp.service.meta.id()
                ),
            ));
            return None;
        }
        if plan.targets.is_empty() {
            // Resolve the route's destination, not the name the client asked for.
            plan.targets = vec![Target::Name(out.host.clone(), plan.port)].into();
        }
        // `--resolve` applies to the route's destination, not to the requested name.
        plan.name = Some(out.host.clone());
        out.plans.push((rp.port.number, plan));
    }
    Some(out)
}

fn retry_policy(r: &Retries) -> RetryPolicy {
    let has = |c: &str| r.retry_on.iter().any(|x| x == c);
    RetryPolicy {
        attempts: r.attempts,
        per_try_timeout: r.per_try_timeout,
        on_5xx: has("5xx"),
        on_gateway_error: has("gateway-error"),
        on_connect_failure: has("connect-failure"),
        on_reset: has("reset") || has("refused-stream"),
        statuses: r
            .retry_on
            .iter()
            .filter_map(|c| c.parse().ok())
            .chain(has("retriable-4xx").then_some(409))
            .chain(has("unavailable").then_some(503))
            .collect(),
    }
}

/// Whether one match block applies (AND of its conditions).
fn matches<B>(
    m: &HttpMatch,
    port: u16,
    scheme: &str,
    authority: &str,
    req: &Request<B>,
    ambiguous: &mut Option<String>,
) -> bool {
    if m.port.is_some_and(|p| p != port) {
        return false;
    }
    if let Some(u) = &m.uri
        && !u.matches(req.uri().path(), m.ignore_uri_case)
    {
        return false;
    }
    if let Some(s) = &m.scheme
        && !s.matches(scheme, false)
    {
        return false;
    }
    if let Some(meth) = &m.method
        && !meth.matches(req.method().as_str(), false)
    {
        return false;
    }
    if let Some(a) = &m.authority
        && !a.matches(authority, false)
    {
        return false;
    }
    for (name, sm) in &m.headers {
        match header_verdict(req, name, sm, ambiguous) {
            Verdict::Yes => {}
            _ => return false,
        }
    }
    for (name, sm) in &m.without_headers {
        match header_verdict(req, name, sm, ambiguous) {
            Verdict::Absent | Verdict::No => {}
            // A value this matcher cannot read may be the one it excludes.
            _ => return false,
        }
    }
    for (name, sm) in &m.query_params {
        let found = req.uri().query().is_some_and(|q| {
            q.split('&').any(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                k == name && sm.matches(v, false)
            })
        });
        if !found {
            return false;
        }
    }
    true
}

/// What one header match says of a request's header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Absent,
    Yes,
    No,
    /// Some line cannot be evaluated (a regex over bytes that are not UTF-8).
    Unknown,
}

/// Matches every line of the header (bytes, surrounding whitespace trimmed). Lines that
/// disagree make the request ambiguous: an origin reading the first line and one reading
/// the last would be routed differently, so `ambiguous` names the header and the request is
/// refused by the caller.
fn header_verdict<B>(
    req: &Request<B>,
    name: &str,
    sm: &StringMatch,
    ambiguous: &mut Option<String>,
) -> Verdict {
    let mut verdict = Verdict::Absent;
    for line in req.headers().get_all(name) {
        let v = match sm.matches_bytes(egress_core::headers::trim_ows(line.as_bytes()), false) {
            Some(true) => Verdict::Yes,
            Some(false) => Verdict::No,
            None => return Verdict::Unknown,
        };
        if verdict != Verdict::Absent && verdict != v {
            ambiguous.get_or_insert_with(|| name.to_owned());
            return Verdict::Unknown;
        }
        verdict = v;
    }
    verdict
}

impl StringMatch {
    /// The literal prefix of a prefix match, for `rewrite.uri`.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            StringMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
