//! Compiled `VirtualService` routing: which destination (and subset) serves a request.
//!
//! [`RouteTable::compile`] indexes `VirtualService` hosts like the registry (exact hash plus
//! wildcard suffixes, so unrelated routes cost nothing), checks every route destination
//! against the registry (under `REGISTRY_ONLY` an unregistered destination is a config
//! error naming the `VirtualService`), resolves `DestinationRule` subsets to endpoint sets,
//! and precomputes an [`UpstreamPlan`] for each destination and port. [`RouteLayer`](crate::layers::RouteLayer) applies
//! it per request.

mod server_hosts;

pub use server_hosts::{ListenerPort, ServerHosts, ServerHostsCheck, ServerHostsLayer};

mod compile;
mod matching;

use egress_core::ctx::{RetryPolicy, Target, UpstreamPlan};
use http::Request;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{
    DirectResponse, Fault, Headers, HttpMatch, Redirect, Rewrite, StringMatch, TlsMatch,
};

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
    /// `rewrite.uriRegexRewrite`, compiled, with its replacement in the regex crate's syntax.
    pub uri_regex: Option<(regex::Regex, String)>,
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
#[derive(Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct RouteSummary {
    /// Hosts with routes.
    pub hosts: Vec<String>,
    /// VirtualServices not applied, and why.
    pub skipped: Vec<String>,
}

impl RouteTable {
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
            StringMatch::Prefix(p) | StringMatch::PathPrefix(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
