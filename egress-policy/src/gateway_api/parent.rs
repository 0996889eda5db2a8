//! Which parent a route attaches to, and how: a `Gateway` listener (section, port,
//! hostname intersection, allowed namespaces and kinds) or, for the mesh, a `ServiceEntry`
//! or `Service`; and the model [`Gateway`] a Gateway API Gateway becomes.

use super::attach::ISTIO_GROUP;
use super::{ApiGateway, CLASS, From, Listener, Route, RouteKind};
use crate::model::{Config, Gateway, Protocol, Server, ServerPort};

/// Where one route attached: the gateway references and hosts of its routes, and the
/// listener ports it is limited to (empty: any).
pub(super) struct Attachment {
    pub(super) gateways: Vec<String>,
    pub(super) hosts: Vec<String>,
    pub(super) ports: Vec<u16>,
}

/// A Gateway API `Gateway`'s listeners as servers.
pub(super) fn model_gateway(g: &ApiGateway) -> Gateway {
    Gateway {
        meta: g.meta.clone(),
        selector: Vec::new(),
        servers: g
            .listeners
            .iter()
            .map(|l| Server {
                port: ServerPort {
                    number: l.port,
                    name: l.name.clone(),
                    protocol: l.protocol,
                },
                hosts: vec![l.hostname.clone().unwrap_or_else(|| "*".into())],
                tls_mode: l.tls_mode.clone(),
                tls_files: l.tls_files.clone(),
            })
            .collect(),
        class: Some(g.class.clone()),
    }
}

type Found = Result<Attachment, (&'static str, String)>;

/// Where a route attaches for one parentRef, or the status reason why not.
pub(super) fn attachment(
    route: &Route,
    parent: &super::ParentRef,
    gateways: &[&ApiGateway],
    config: &Config,
) -> (String, Found) {
    let ns = parent
        .namespace
        .clone()
        .unwrap_or_else(|| route.meta.namespace.clone());
    let id = format!("{} {ns}/{}", parent.kind, parent.name);
    let found = match (parent.group.as_str(), parent.kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway") => match gateways
            .iter()
            .find(|g| g.meta.name == parent.name && g.meta.namespace == ns)
        {
            Some(g) => to_gateway(route, parent, g),
            None => Err((
                "NoMatchingParent",
                format!(
                    "no Gateway {ns}/{} of class {CLASS:?} in the configuration",
                    parent.name
                ),
            )),
        },
        (ISTIO_GROUP, "ServiceEntry") => match config
            .services
            .iter()
            .find(|s| s.meta.name == parent.name && s.meta.namespace == ns)
        {
            Some(se) => Ok(mesh(se.hosts.clone(), parent.port)),
            None => Err((
                "NoMatchingParent",
                format!("no ServiceEntry {ns}/{} in the configuration", parent.name),
            )),
        },
        ("" | "core", "Service") => Ok(mesh(
            vec![format!("{}.{ns}.svc.cluster.local", parent.name)],
            parent.port,
        )),
        (group, kind) => Err((
            "NoMatchingParent",
            format!(
                "a parent of kind {kind:?} (group {group:?}) is not supported: Gateway, ServiceEntry or Service"
            ),
        )),
    };
    (id, found)
}

/// A mesh (GAMMA) attachment: the service's own hosts, for the sidecars.
fn mesh(hosts: Vec<String>, port: Option<u16>) -> Attachment {
    Attachment {
        gateways: vec!["mesh".into()],
        hosts,
        ports: port.into_iter().collect(),
    }
}

fn to_gateway(route: &Route, parent: &super::ParentRef, g: &ApiGateway) -> Found {
    let gw_ns = &g.meta.namespace;
    let candidates: Vec<&Listener> = g
        .listeners
        .iter()
        .filter(|l| parent.section.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if candidates.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener has that sectionName or port".into(),
        ));
    }
    let allowed: Vec<&Listener> = candidates
        .into_iter()
        .filter(|l| takes(l, route.kind))
        .filter(|l| match l.from {
            From::All => true,
            From::Same => route.meta.namespace == *gw_ns,
            // Namespace labels live in the cluster, which this gateway does not read.
            From::Selector => false,
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            format!(
                "no listener takes a {} from namespace {} (protocol, allowedRoutes; namespace selectors are not supported outside Kubernetes)",
                route.kind.as_str(),
                route.meta.namespace
            ),
        ));
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for l in &allowed {
        let matched = intersect(l.hostname.as_deref(), &route.hostnames);
        if !matched.is_empty() {
            ports.push(l.port);
        }
        for h in matched {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    if hosts.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            "no hostname of the route is a hostname of its listeners".into(),
        ));
    }
    // Limited to the ports it attached on, when the Gateway listens on others too.
    ports.sort_unstable();
    ports.dedup();
    let all: std::collections::BTreeSet<u16> = g.listeners.iter().map(|l| l.port).collect();
    if all.len() == ports.len() {
        ports.clear();
    }
    Ok(Attachment {
        gateways: vec![format!("{gw_ns}/{}", g.meta.name)],
        hosts,
        ports,
    })
}

/// Whether a listener takes this kind of route (its protocol, and `allowedRoutes.kinds`).
fn takes(l: &Listener, kind: RouteKind) -> bool {
    let by_protocol = match kind {
        RouteKind::Http | RouteKind::Grpc => {
            matches!(l.protocol, Protocol::Http | Protocol::Https)
        }
        RouteKind::Tls => l.protocol == Protocol::Tls,
        RouteKind::Tcp => l.protocol == Protocol::Tcp,
    };
    by_protocol && (l.kinds.is_empty() || l.kinds.iter().any(|k| k == kind.as_str()))
}

/// The hostnames a route serves on a listener: Gateway API's intersection, wildcards on
/// either side (`*.example.com` and `a.example.com` give `a.example.com`).
fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let covers = |wild: &str, host: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| host.len() > suffix.len() && host.ends_with(suffix))
    };
    match (listener, route.is_empty()) {
        (None, true) => vec!["*".into()],
        (Some(l), true) => vec![l.to_owned()],
        (None, false) => route.to_vec(),
        (Some(l), false) => route
            .iter()
            .filter_map(|h| {
                if h == l || covers(l, h) {
                    Some(h.clone())
                } else if covers(h, l) {
                    Some(l.to_owned())
                } else {
                    None
                }
            })
            .collect(),
    }
}
