//! `VirtualService`s → [`RouteTable`]: bindings applied, destinations checked against the
//! registry, subsets resolved to endpoint sets and a plan precomputed per destination port.

use egress_core::ctx::{RetryPolicy, Target};
use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::{Action, CompiledDestination, CompiledRoute, CompiledTlsRoute, CompiledVs, RouteTable};
use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::model::{
    Binding, Config, Headers, HttpMatch, OutboundPolicy, Retries, TlsMatch, VirtualHost,
    WeightedDestination,
};
use crate::registry::{Registry, plan_with};

/// What every part of one compilation reads.
struct Inputs<'a> {
    config: &'a Config,
    registry: &'a Registry,
    binding: &'a Binding,
}

impl RouteTable {
    /// Compiles the `VirtualService`s of a configuration against a compiled registry.
    pub fn compile(
        config: &Config,
        registry: &Registry,
        binding: &Binding,
    ) -> Result<(RouteTable, Diagnostics), Diagnostics> {
        let inputs = Inputs {
            config,
            registry,
            binding,
        };
        let mut diags = Diagnostics::default();
        let mut table = RouteTable::default();
        for vs in &config.virtual_hosts {
            if !binding.applies(&vs.gateways, &vs.meta.namespace) {
                table.skip(vs, binding, &mut diags);
                continue;
            }
            for (i, t) in vs.tls.iter().enumerate() {
                let matches = applicable(vs, binding, &t.matches);
                let field = format!("spec.tls[{i}]");
                if let Some(route) = inputs.l4_route(vs, matches, &t.route, &field, &mut diags) {
                    table.tls.push(route);
                }
            }
            for (i, t) in vs.tcp.iter().enumerate() {
                // A `tcp` route without match blocks takes every connection to the hosts.
                let matches = if t.matches.is_empty() {
                    vec![TlsMatch {
                        sni_hosts: vec!["*".into()],
                        ..Default::default()
                    }]
                } else {
                    applicable(vs, binding, &t.matches)
                };
                let field = format!("spec.tcp[{i}]");
                if let Some(route) = inputs.l4_route(vs, matches, &t.route, &field, &mut diags) {
                    table.tcp.push((vs.hosts.clone(), route));
                }
            }
            // A VirtualService with only `tls` or `tcp` routes leaves its hosts' plain HTTP
            // to the default route (the registry), as Istio does: it has no HTTP routes to
            // refuse a request with.
            if vs.http.is_empty() {
                continue;
            }
            if let Some(compiled) = inputs.http_routes(vs, &mut diags) {
                table.index(vs, Arc::new(compiled), &mut diags);
            }
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok((table, diags))
    }

    /// Records a `VirtualService` bound elsewhere; a warning only when nothing selects this
    /// proxy, since the sidecar hop of a two-hop egress configuration is expected.
    fn skip(&mut self, vs: &VirtualHost, binding: &Binding, diags: &mut Diagnostics) {
        let id = vs.meta.id();
        let gateways = if vs.gateways.is_empty() {
            vec!["mesh".to_owned()]
        } else {
            vs.gateways.clone()
        };
        if binding.is_mesh() {
            let why = format!(
                "{} {id} is bound to {gateways:?}, and no Gateway resource selects this proxy (labels set with --gateway-label); ignored",
                vs.kind
            );
            diags.push(diag(vs, Severity::Warning, "spec.gateways", why.clone()));
            self.skipped.push(why);
        } else {
            self.skipped.push(format!(
                "{} {id} is bound to {gateways:?}, not to this gateway ({})",
                vs.kind,
                binding.selected.join(", ")
            ));
        }
    }

    /// Files the HTTP routes under each host; the first `VirtualService` for a host wins.
    fn index(&mut self, vs: &VirtualHost, compiled: Arc<CompiledVs>, diags: &mut Diagnostics) {
        for host in &vs.hosts {
            let slot = if host == "*" {
                if self.any.is_none() {
                    self.any = Some(compiled.clone());
                }
                continue;
            } else if let Some(suffix) = host.strip_prefix("*.") {
                self.wildcard.entry(suffix.into())
            } else {
                self.exact.entry(host.as_str().into())
            };
            match slot {
                Entry::Vacant(v) => {
                    v.insert(compiled.clone());
                }
                Entry::Occupied(_) => diags.push(diag(
                    vs,
                    Severity::Warning,
                    "spec.hosts",
                    format!("host {host} already has routes (a Gateway API route, or an earlier VirtualService); this {} is ignored for it", vs.kind),
                )),
            }
        }
    }
}

/// The match blocks that apply to this proxy: those naming no gateway or one bound here.
fn applicable<M: Clone + HasGateways>(
    vs: &VirtualHost,
    binding: &Binding,
    matches: &[M],
) -> Vec<M> {
    matches
        .iter()
        .filter(|m| m.gateways().is_empty() || binding.applies(m.gateways(), &vs.meta.namespace))
        .cloned()
        .collect()
}

/// Match blocks that may name the gateways they apply to.
trait HasGateways {
    fn gateways(&self) -> &[String];
}

impl HasGateways for TlsMatch {
    fn gateways(&self) -> &[String] {
        &self.gateways
    }
}

impl HasGateways for HttpMatch {
    fn gateways(&self) -> &[String] {
        &self.gateways
    }
}

impl Inputs<'_> {
    /// One `tls` or `tcp` route (`None` when no match block applies here).
    fn l4_route(
        &self,
        vs: &VirtualHost,
        matches: Vec<TlsMatch>,
        route: &[WeightedDestination],
        path: &str,
        diags: &mut Diagnostics,
    ) -> Option<CompiledTlsRoute> {
        if matches.is_empty() {
            return None;
        }
        let destinations = self.destinations(vs, route, path, diags);
        let total = destinations.iter().map(|d| u64::from(d.weight)).sum();
        Some(CompiledTlsRoute {
            matches,
            destinations,
            total,
        })
    }

    fn destinations(
        &self,
        vs: &VirtualHost,
        route: &[WeightedDestination],
        path: &str,
        diags: &mut Diagnostics,
    ) -> Vec<CompiledDestination> {
        route
            .iter()
            .enumerate()
            .filter_map(|(j, d)| {
                let field = format!("{path}.route[{j}].destination");
                self.destination(vs, d, &field, diags)
            })
            .collect()
    }

    /// The HTTP routes of one `VirtualService` (`None` when any of them is in error).
    fn http_routes(&self, vs: &VirtualHost, diags: &mut Diagnostics) -> Option<CompiledVs> {
        let mut routes = Vec::new();
        let errors_before = diags.errors().count();
        for (i, r) in vs.http.iter().enumerate() {
            let path = format!("spec.http[{i}]");
            // Match blocks naming other gateways (or only `mesh`, when this proxy is a gateway)
            // never apply here; a route left without any applicable block is dropped.
            let matches = applicable(vs, self.binding, &r.matches);
            if !r.matches.is_empty() && matches.is_empty() {
                continue;
            }
            let action = if let Some(d) = &r.direct_response {
                Action::Direct(d.clone())
            } else if let Some(rd) = &r.redirect {
                Action::Redirect(rd.clone())
            } else {
                let destinations = self.destinations(vs, &r.route, &path, diags);
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
                if let Some(cd) = self.destination(vs, &as_route, &field, diags)
                    && *pct > 0.0
                {
                    mirrors.push((cd, *pct));
                }
            }
            let id = match &r.name {
                // Gateway API routes are named `namespace.route.rule` already, as Istio logs.
                Some(n) if vs.kind != "VirtualService" => n.clone(),
                Some(n) => format!("{}/{n}", vs.meta.id()),
                None => format!("{}#{i}", vs.meta.id()),
            };
            routes.push(CompiledRoute {
                id: id.into(),
                matches,
                action,
                rewrite: r.rewrite.clone(),
                // Compiled once here, not per request; the reader has validated it.
                uri_regex: r
                    .rewrite
                    .as_ref()
                    .and_then(|rw| rw.uri_regex.as_ref())
                    .and_then(|(pattern, replacement)| {
                        Some((
                            regex::Regex::new(pattern).ok()?,
                            envoy_substitution(replacement),
                        ))
                    }),
                timeout: r.timeout,
                headers: r.headers.clone(),
                mirrors,
                fault: r.fault.clone(),
                retries: r.retries.as_ref().map(retry_policy),
            });
        }
        (diags.errors().count() == errors_before).then_some(CompiledVs { routes })
    }

    /// One destination: registered (or passed through under `ALLOW_ANY`), its subset
    /// defined and selecting endpoints, with a plan for each registered port.
    fn destination(
        &self,
        vs: &VirtualHost,
        d: &WeightedDestination,
        field: &str,
        diags: &mut Diagnostics,
    ) -> Option<CompiledDestination> {
        let t = &d.destination;
        let registered = self.registry.ports_of(&t.host);
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
            if self.registry.policy() == OutboundPolicy::AllowAny && t.subset.is_none() {
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
                    self.registry.policy().as_str()
                ),
            ));
            return None;
        }
        let labels = self.subset_labels(vs, d, field, diags)?;
        let policies = &self.config.destination_policies;
        for rp in registered {
            let label: Arc<str> = rp.service.meta.id().into();
            let trusted: Arc<[ipnet::IpNet]> = rp.service.trusted().into();
            let mut plan = plan_with(&rp.service, &rp.port, &trusted, &label, &labels);
            let hosts = std::slice::from_ref(&t.host);
            let subset = t.subset.as_deref();
            plan.balance = crate::registry::balance_for(policies, hosts, rp.port.number, subset);
            plan.tls = crate::registry::tls_for(policies, hosts, rp.port.number, subset);
            // A subset without labels is the whole service (Istio): only labels that match
            // no endpoint leave it empty.
            if !labels.is_empty() && plan.targets.is_empty() {
                diags.push(diag(
                    vs,
                    Severity::Error,
                    field,
                    format!(
                        "subset {:?} of {} selects no endpoints of ServiceEntry {}",
                        subset.unwrap_or(""),
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

    /// The endpoint labels of the destination's subset (empty without one; `None` when the
    /// subset is not defined by any `DestinationRule`, reported).
    fn subset_labels(
        &self,
        vs: &VirtualHost,
        d: &WeightedDestination,
        field: &str,
        diags: &mut Diagnostics,
    ) -> Option<Vec<(String, String)>> {
        let t = &d.destination;
        let Some(name) = &t.subset else {
            return Some(Vec::new());
        };
        let subset = self
            .config
            .destination_policies
            .iter()
            .filter(|dr| dr.host == t.host)
            .flat_map(|dr| dr.subsets.iter())
            .find(|s| &s.name == name);
        if subset.is_none() {
            diags.push(diag(
                vs,
                Severity::Error,
                field,
                format!(
                    "subset {name:?} of {} is not defined by any DestinationRule",
                    t.host
                ),
            ));
        }
        subset.map(|s| s.labels.clone())
    }
}

fn diag(vs: &VirtualHost, severity: Severity, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: vs.meta.file.clone(),
        line: vs.meta.line,
        col: 1,
        resource: Some(format!("{} {}", vs.kind, vs.meta.id()).into()),
        field: field.into(),
        message,
    }
}

/// Envoy's `retryOn` conditions as a policy; a bare status code retries that status.
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

/// Envoy writes capture groups as `\1`; the regex crate as `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str("${");
                out.push(*d);
                out.push('}');
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}
