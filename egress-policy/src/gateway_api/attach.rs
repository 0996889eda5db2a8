//! Routes attached to their parents, in the model: Gateway API `Gateway`s of class `istio`
//! become [`Gateway`]s, each accepted (route, parent) pair becomes routes of a
//! [`VirtualHost`] bound to that Gateway (or to the mesh), and every pair has its
//! [`RouteStatus`].

use std::collections::BTreeMap;

use super::parent::{Attachment, attachment, model_gateway};
use super::{ApiGateway, Backend, CLASS, Documents, Route, RouteKind, Rule, WAYPOINT_CLASS};
use crate::diag::{Diagnostic, Severity};
use crate::model::{
    Config, DirectResponse, HttpMatch, HttpRoute, RouteStatus, RouteTarget, StringMatch, TcpRoute,
    TlsMatch, TlsRoute, VirtualHost, WeightedDestination,
};

pub(super) const ISTIO_GROUP: &str = "networking.istio.io";

/// HTTP rules of the same binding and host, to be ordered by Gateway API precedence as one
/// table: each with its sort key and file order, and the first route that named the slot.
#[derive(Default)]
struct HttpTables<'a> {
    http: BTreeMap<(Vec<String>, String), Vec<(SortKey, HttpRoute, usize)>>,
    first: BTreeMap<(Vec<String>, String), &'a Route>,
    seq: usize,
}

/// The warning for a Gateway of a class this gateway does not serve.
fn other_class(g: &ApiGateway) -> Diagnostic {
    let why = if g.class == WAYPOINT_CLASS {
        // Istio's ambient egress: the waypoint is where ServiceEntry-bound routes and
        // policies apply, which this gateway does when it acts for the mesh.
        "is a waypoint: its listeners (HBONE, from ztunnel) are not opened; clients reach this gateway on its proxy listener, where the routes and policies attached to ServiceEntries apply as at the waypoint".to_owned()
    } else {
        format!(
            "gatewayClassName {:?} is not served by this gateway (only {CLASS:?}); ignored",
            g.class
        )
    };
    warning(&g.meta, "Gateway", why)
}

impl Documents {
    /// Adds the Gateway API resources to `config`, Gateway API routes before the
    /// `VirtualService`s (they win for a host both configure), with a status per parent.
    pub(crate) fn attach(self, config: &mut Config) {
        let gateways: Vec<&ApiGateway> =
            self.gateways.iter().filter(|g| g.class == CLASS).collect();
        for g in self.gateways.iter().filter(|g| g.class != CLASS) {
            config.diagnostics.push(other_class(g));
        }
        for g in &gateways {
            config.gateways.push(model_gateway(g));
        }
        // HTTP routes of the same binding and host are one table, ordered by Gateway API
        // precedence; TLS and TCP routes keep their own order.
        let mut tables = HttpTables::default();
        let mut l4 = Vec::new();
        for route in &self.routes {
            let id = format!("{} {}", route.kind.as_str(), route.meta.id());
            for parent in &route.parents {
                let (parent_id, found) = attachment(route, parent, &gateways, config);
                let at = match found {
                    Ok(at) => at,
                    Err((reason, message)) => {
                        config.diagnostics.push(warning(
                            &route.meta,
                            route.kind.as_str(),
                            format!("{parent_id}: {reason}: {message}"),
                        ));
                        config.route_status.push(RouteStatus {
                            route: id.clone(),
                            parent: parent_id,
                            accepted: false,
                            reason,
                            message,
                        });
                        continue;
                    }
                };
                let mut refused = Vec::new();
                match route.kind {
                    RouteKind::Http | RouteKind::Grpc => {
                        self.http_rules(route, &at, config, &mut refused, &mut tables);
                    }
                    RouteKind::Tls | RouteKind::Tcp => {
                        l4.push(self.l4_host(route, &at, config, &mut refused));
                    }
                }
                let (reason, message) = match refused.first() {
                    Some((reason, message)) => (*reason, message.clone()),
                    None => ("Accepted", format!("routes {:?}", at.hosts)),
                };
                if reason != "Accepted" {
                    config.diagnostics.push(warning(
                        &route.meta,
                        route.kind.as_str(),
                        format!("{parent_id}: {reason}: {message} (a rule whose backend is refused answers 500; a refused mirror is left out)"),
                    ));
                }
                config.route_status.push(RouteStatus {
                    route: id.clone(),
                    parent: parent_id,
                    accepted: true,
                    reason,
                    message,
                });
            }
        }
        let mut hosts: Vec<VirtualHost> = Vec::new();
        for (slot, mut routes) in tables.http {
            routes.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
            let route = tables.first[&slot];
            let (gateways, host) = slot;
            hosts.push(VirtualHost {
                meta: route.meta.clone(),
                kind: "HTTPRoute",
                hosts: vec![host],
                gateways,
                http: routes.into_iter().map(|(_, r, _)| r).collect(),
                tls: Vec::new(),
                tcp: Vec::new(),
            });
        }
        hosts.extend(l4);
        hosts.append(&mut config.virtual_hosts);
        config.virtual_hosts = hosts;
    }

    /// Files the rules of an HTTP (or gRPC) route attached at `at` under each of its hosts,
    /// with what it may not reference added to `refused`.
    fn http_rules<'a>(
        &self,
        route: &'a Route,
        at: &Attachment,
        config: &Config,
        refused: &mut Vec<(&'static str, String)>,
        tables: &mut HttpTables<'a>,
    ) {
        for (i, rule) in route.rules.iter().enumerate() {
            let action = self.destinations(route, rule, config, refused);
            // A mirror that may not be referenced is left out (the request itself is
            // unaffected), and reported.
            let mirrors = rule
                .mirrors
                .iter()
                .filter_map(|(b, pct)| match self.target(route, b, config) {
                    Ok(t) => Some((t, *pct)),
                    Err(e) => {
                        refused.push(e);
                        None
                    }
                })
                .collect();
            for (key, r) in http_routes(route, i, rule, action, mirrors, at) {
                for host in &at.hosts {
                    let slot = (at.gateways.clone(), host.clone());
                    tables.first.entry(slot.clone()).or_insert(route);
                    tables
                        .http
                        .entry(slot)
                        .or_default()
                        .push((key.clone(), r.clone(), tables.seq));
                    tables.seq += 1;
                }
            }
        }
    }

    /// The weighted destinations of a rule, or why it answers 500 instead.
    fn destinations(
        &self,
        route: &Route,
        rule: &Rule,
        config: &Config,
        refused: &mut Vec<(&'static str, String)>,
    ) -> Result<Vec<WeightedDestination>, String> {
        let mut out = Vec::new();
        for b in &rule.backends {
            match self.target(route, b, config) {
                Ok(destination) => out.push(WeightedDestination {
                    destination,
                    weight: b.weight,
                    headers: b.headers.clone(),
                }),
                Err((reason, message)) => {
                    refused.push((reason, message.clone()));
                    return Err(message);
                }
            }
        }
        Ok(out)
    }

    /// Where a backendRef points: a Service's cluster name, a `Hostname`, a `ServiceEntry`'s
    /// first host; across namespaces only with a `ReferenceGrant`.
    fn target(
        &self,
        route: &Route,
        b: &Backend,
        config: &Config,
    ) -> Result<RouteTarget, (&'static str, String)> {
        let ns = b
            .namespace
            .clone()
            .unwrap_or_else(|| route.meta.namespace.clone());
        if ns != route.meta.namespace && !self.granted(route, b, &ns) {
            return Err((
                "RefNotPermitted",
                format!(
                    "backendRef {} {ns}/{} is in another namespace and no ReferenceGrant there permits it",
                    b.kind, b.name
                ),
            ));
        }
        let host = match (b.group.as_str(), b.kind.as_str()) {
            ("" | "core", "Service") => format!("{}.{ns}.svc.cluster.local", b.name),
            (ISTIO_GROUP, "Hostname") => b.name.to_ascii_lowercase(),
            (ISTIO_GROUP, "ServiceEntry") => match config
                .services
                .iter()
                .find(|s| s.meta.name == b.name && s.meta.namespace == ns)
                .and_then(|s| s.hosts.first())
            {
                Some(h) => h.clone(),
                None => {
                    return Err((
                        "BackendNotFound",
                        format!("ServiceEntry {ns}/{} is not in the configuration", b.name),
                    ));
                }
            },
            (group, kind) => {
                return Err((
                    "InvalidKind",
                    format!(
                        "backendRef kind {kind:?} of group {group:?} is not supported (Service, networking.istio.io Hostname or ServiceEntry)"
                    ),
                ));
            }
        };
        Ok(RouteTarget {
            host,
            subset: None,
            port: b.port,
        })
    }

    fn granted(&self, route: &Route, b: &Backend, ns: &str) -> bool {
        self.grants.iter().filter(|g| g.namespace == ns).any(|g| {
            g.from.iter().any(|(group, kind, from)| {
                group == "gateway.networking.k8s.io"
                    && kind == route.kind.as_str()
                    && *from == route.meta.namespace
            }) && g.to.iter().any(|(group, kind, name)| {
                group == &b.group && kind == &b.kind && name.as_ref().is_none_or(|n| *n == b.name)
            })
        })
    }

    /// A TLS or TCP route as the routes of one [`VirtualHost`].
    fn l4_host(
        &self,
        route: &Route,
        at: &Attachment,
        config: &Config,
        refused: &mut Vec<(&'static str, String)>,
    ) -> VirtualHost {
        let ports: Vec<Option<u16>> = if at.ports.is_empty() {
            vec![None]
        } else {
            at.ports.iter().copied().map(Some).collect()
        };
        let matches: Vec<TlsMatch> = ports
            .iter()
            .map(|port| TlsMatch {
                sni_hosts: if route.kind == RouteKind::Tls {
                    at.hosts.clone()
                } else {
                    vec!["*".into()]
                },
                port: *port,
                gateways: Vec::new(),
            })
            .collect();
        let mut host = VirtualHost::new(route.meta.clone(), at.hosts.iter(), Vec::new());
        host.kind = route.kind.as_str();
        host.gateways = at.gateways.clone();
        for rule in &route.rules {
            // A connection has no 500 to send: a rule with a refused backend is left out,
            // so its connections find no route.
            let Ok(dests) = self.destinations(route, rule, config, refused) else {
                continue;
            };
            match route.kind {
                RouteKind::Tls => host.tls.push(TlsRoute {
                    matches: matches.clone(),
                    route: dests,
                }),
                _ => host.tcp.push(TcpRoute {
                    matches: matches.clone(),
                    route: dests,
                }),
            }
        }
        host
    }
}

/// Gateway API precedence of a match: an exact path, then the longest path prefix, then
/// a regular expression, then a method, then the most header and query matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    queries: usize,
}

fn sort_key(m: Option<&HttpMatch>) -> SortKey {
    let (path_kind, path_len) = match m.and_then(|m| m.uri.as_ref()) {
        Some(StringMatch::Exact(p)) => (3, p.len()),
        Some(StringMatch::PathPrefix(p) | StringMatch::Prefix(p)) => (2, p.len()),
        Some(StringMatch::Regex(_)) => (1, 0),
        _ => (2, 1),
    };
    SortKey {
        path_kind,
        path_len,
        method: m.is_some_and(|m| m.method.is_some()),
        headers: m.map_or(0, |m| m.headers.len()),
        queries: m.map_or(0, |m| m.query_params.len()),
    }
}

/// One model route per match of a rule (each sorts on its own), limited to the ports of
/// the attachment; named `namespace.route.rule` as Istio names them.
fn http_routes(
    route: &Route,
    index: usize,
    rule: &Rule,
    action: Result<Vec<WeightedDestination>, String>,
    mirrors: Vec<(RouteTarget, f64)>,
    at: &Attachment,
) -> Vec<(SortKey, HttpRoute)> {
    let matches: Vec<Option<&HttpMatch>> = if rule.matches.is_empty() {
        vec![None]
    } else {
        rule.matches.iter().map(Some).collect()
    };
    let name = rule.name.clone().unwrap_or_else(|| index.to_string());
    let mut template = HttpRoute {
        name: Some(format!(
            "{}.{}.{name}",
            route.meta.namespace, route.meta.name
        )),
        headers: rule.headers.clone(),
        redirect: rule.redirect.clone(),
        rewrite: rule.rewrite.clone(),
        timeout: rule.timeout,
        retries: rule.retries.clone(),
        mirrors,
        ..HttpRoute::default()
    };
    match action {
        Ok(dests) if !dests.is_empty() => template.route = dests,
        _ if template.redirect.is_some() => {}
        Ok(_) => {
            template.direct_response = Some(DirectResponse {
                status: 500,
                body: Some("egress: this route rule has no backend\n".into()),
            })
        }
        Err(why) => {
            template.direct_response = Some(DirectResponse {
                status: 500,
                body: Some(format!("egress: {why}\n")),
            })
        }
    }
    let ports: Vec<Option<u16>> = if at.ports.is_empty() {
        vec![None]
    } else {
        at.ports.iter().copied().map(Some).collect()
    };
    let mut out = Vec::new();
    for m in matches {
        let mut r = template.clone();
        r.matches = ports
            .iter()
            .map(|port| {
                let mut m = m.cloned().unwrap_or_default();
                m.port = *port;
                m
            })
            .filter(|m| {
                m.uri.is_some()
                    || m.port.is_some()
                    || m.method.is_some()
                    || !m.headers.is_empty()
                    || !m.query_params.is_empty()
            })
            .collect();
        out.push((sort_key(m), r));
    }
    out
}

fn warning(meta: &crate::model::Meta, kind: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: meta.file.clone(),
        line: meta.line,
        col: 1,
        resource: Some(format!("{kind} {}", meta.id()).into()),
        field: String::new(),
        message,
    }
}
