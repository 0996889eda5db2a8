//! Decisions for connections that carry no HTTP request: TLS passthrough, routed by the
//! ClientHello's SNI, and TCP Gateway servers, routed by port.
//!
//! They ask the engines HTTP requests and `CONNECT` tunnels ask, over the connection's one
//! snapshot: the route table (`tls` and `tcp` routes), the registry's
//! [`admit`](crate::registry::Registry::admit) and the authorization policies (with the
//! HTTP-only parts of rules treated as Istio treats them for TCP). Every answer is a
//! [`Refusal`] or a target; the caller only reads bytes and dials.
//!
//! ```
//! use egress_policy::compile::{Settings, compile};
//! use egress_policy::connection::passthrough_target;
//! use egress_policy::model::{Config, Meta, Port, Protocol, Resolution, Service};
//! use egress_policy::routes::ServerHosts;
//!
//! let mut config = Config::default();
//! config.services.push(Service::new(
//!     Meta::new("api", "default"),
//!     ["api.example.com"],
//!     [Port::new(443, Protocol::Tls, "tls")],
//!     Resolution::Dns,
//! ));
//! let policy = compile(&config, &Settings::default()).expect("valid").policy;
//! let hosts = ServerHosts::new(["*.example.com"], 443);
//! let peer = "10.1.2.3".parse().unwrap();
//! let target = passthrough_target(&policy, &hosts, 443, "API.example.com.", peer).expect("admitted");
//! assert_eq!(target.destination.to_string(), "api.example.com:443");
//! let refused = passthrough_target(&policy, &hosts, 443, "other.example.com", peer).unwrap_err();
//! assert_eq!(refused.kind().token(), "registry-only");
//! ```

use egress_core::ctx::{
    Destination, Host, Refusal, RejectionKind, RequestForm, Scheme, UpstreamPlan,
};
use egress_core::host::parse_host;
use http::StatusCode;
use std::net::IpAddr;

use crate::authz::Attributes;
use crate::registry::Admission;
use crate::routes::ServerHosts;
use crate::snapshot::Policy;

/// Where a connection goes: the destination dialled and, unless it is let through under
/// `ALLOW_ANY` without a registration, the plan to reach it.
#[derive(Clone, Debug)]
pub struct ConnectionTarget {
    /// The host and port dialled.
    pub destination: Destination,
    /// How it is reached (endpoints, balancing, source address).
    pub plan: Option<UpstreamPlan>,
}

/// The target of a TLS passthrough connection from `peer` whose ClientHello names `sni`, on
/// a Gateway server listening on `port` for `hosts`: the SNI must be one of the server's
/// hosts; then the first `tls` route matching it decides, else the SNI's own registration;
/// last, the policies are asked about the SNI.
pub fn passthrough_target(
    policy: &Policy,
    hosts: &ServerHosts,
    port: u16,
    sni: &str,
    peer: IpAddr,
) -> Result<ConnectionTarget, Refusal> {
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    if !hosts.contains(&sni) {
        return Err(refusal(
            RejectionKind::NoRoute,
            format!("{sni} is not among the hosts of this Gateway server"),
        ));
    }
    let Ok(Host::Name(name)) = parse_host(&sni) else {
        return Err(refusal(
            RejectionKind::Malformed,
            format!("invalid SNI {sni:?}"),
        ));
    };
    let target = match policy.routes.tls_route(&sni, port) {
        Some((host, to_port, plan)) => ConnectionTarget {
            destination: Destination::new(
                Host::Name(host),
                to_port,
                Scheme::Https,
                RequestForm::Connect,
            ),
            plan: Some(plan),
        },
        None => {
            let destination =
                Destination::new(Host::Name(name), port, Scheme::Https, RequestForm::Connect);
            let plan = match policy.registry.admit(&destination)? {
                Admission::Registered(found) => Some(found.plan.clone()),
                Admission::Passthrough => None,
            };
            ConnectionTarget { destination, plan }
        }
    };
    authorize_connection(policy, peer, &sni, port, Some(&sni))?;
    Ok(target)
}

/// The target of a connection from `peer` to a TCP Gateway server on `port` for `hosts`:
/// the `tcp` route of a `VirtualService` hosted by the server that covers the port, if the
/// policies allow the connection to the route's destination.
pub fn tcp_target(
    policy: &Policy,
    hosts: &ServerHosts,
    port: u16,
    peer: IpAddr,
) -> Result<ConnectionTarget, Refusal> {
    let Some((host, to_port, plan)) = policy.routes.tcp_route_for_server(hosts, port) else {
        return Err(refusal(
            RejectionKind::NoRoute,
            format!("no VirtualService tcp route covers port {port} of this Gateway server"),
        ));
    };
    let host = parse_host(&host).map_err(|e| {
        refusal(
            RejectionKind::Malformed,
            format!("route destination {host:?}: {e}"),
        )
    })?;
    authorize_connection(policy, peer, &host.to_string(), port, None)?;
    Ok(ConnectionTarget {
        destination: Destination::new(host, to_port, Scheme::Http, RequestForm::Connect),
        plan: Some(plan),
    })
}

/// Authorises a connection from `peer` to `host` (the SNI, or the route's destination for
/// TCP) on the server's `port`. A CUSTOM policy cannot be asked about bytes that are not
/// HTTP: when one matches, the connection is refused (fail closed).
pub fn authorize_connection(
    policy: &Policy,
    peer: IpAddr,
    host: &str,
    port: u16,
    sni: Option<&str>,
) -> Result<(), Refusal> {
    let policies = &policy.authz;
    if policies.is_empty() {
        return Ok(());
    }
    let attrs = Attributes {
        http: None,
        source_ip: Some(peer),
        remote_ip: Some(peer),
        principal: None,
        namespace: None,
        host,
        port,
        destination_ip: host.parse().ok(),
        sni,
    };
    if let Some((provider, policy)) = policies.custom_match(&attrs) {
        return Err(refusal(
            RejectionKind::ExtAuthzError,
            format!(
                "CUSTOM policy {policy} (provider {provider}) matches, and an HTTP authorizer cannot check an opaque connection"
            ),
        ));
    }
    if let Some(dry) = policies.dry_run(&attrs) {
        crate::authz::log_dry_run(&dry, host, port);
    }
    let d = policies.evaluate(&attrs);
    if d.allowed {
        return Ok(());
    }
    Err(refusal(
        RejectionKind::RbacDenied,
        format!(
            "RBAC: access denied (policy {}, rule {})",
            d.policy.as_deref().unwrap_or("-"),
            d.rule.map_or(-1, |r| r as i64)
        ),
    ))
}

/// A connection refusal: there is no response to send, so the status is only nominal.
fn refusal(kind: RejectionKind, why: String) -> Refusal {
    Refusal::new(kind, StatusCode::FORBIDDEN, true, why)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::compile::{Settings, compile};
    use crate::model::{
        AccessPolicy, AuthzAction, Config, Meta, OutboundPolicy, Port, Protocol, Resolution, Rule,
        Service, Source, TcpRoute, TlsMatch, TlsRoute, VirtualHost, WeightedDestination,
    };

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    fn service(name: &str, host: &str, port: u16, protocol: Protocol) -> Service {
        Service::new(
            Meta::new(name, "default"),
            [host],
            [Port::new(port, protocol, "p")],
            Resolution::Dns,
        )
    }

    /// `www.wikipedia.org` registered for TLS, `plain.example.com` on 443 declared HTTP, a
    /// `tls` route sending every `*.wikipedia.org` SNI to `www`, and a `tcp` route for the
    /// database port.
    fn config() -> Config {
        let mut config = Config::default();
        config
            .services
            .push(service("wiki", "www.wikipedia.org", 443, Protocol::Tls));
        config
            .services
            .push(service("plain", "plain.example.com", 443, Protocol::Http));
        config
            .services
            .push(service("db", "db.example.com", 5432, Protocol::Tcp));
        let mut vh = VirtualHost::new(Meta::new("wiki", "default"), ["*.wikipedia.org"], vec![]);
        vh.tls.push(TlsRoute {
            matches: vec![TlsMatch {
                sni_hosts: vec!["*.wikipedia.org".into()],
                port: Some(443),
                ..TlsMatch::default()
            }],
            route: vec![WeightedDestination::to("www.wikipedia.org", None, 100)],
        });
        config.virtual_hosts.push(vh);
        let mut db = VirtualHost::new(Meta::new("db", "default"), ["db.example.com"], vec![]);
        let mut to = WeightedDestination::to("db.example.com", None, 100);
        to.destination.port = Some(5432);
        db.tcp.push(TcpRoute {
            matches: Vec::new(),
            route: vec![to],
        });
        config.virtual_hosts.push(db);
        config
    }

    fn policy(config: &Config, outbound: OutboundPolicy) -> Policy {
        let settings = Settings {
            outbound: Some(outbound),
            ..Settings::default()
        };
        compile(config, &settings).unwrap().policy
    }

    fn refused(r: Result<ConnectionTarget, Refusal>) -> &'static str {
        r.unwrap_err().kind().token()
    }

    #[test]
    fn passthrough_asks_routes_then_registry() {
        let p = policy(&config(), OutboundPolicy::RegistryOnly);
        let hosts = ServerHosts::new(["*.wikipedia.org", "*.example.com"], 443);
        // The tls route decides for every matching SNI, whatever its own registration.
        let t = passthrough_target(&p, &hosts, 443, "EN.wikipedia.org.", PEER).unwrap();
        assert_eq!(t.destination.to_string(), "www.wikipedia.org:443");
        assert!(t.plan.is_some());
        // Without a route: the registry's admission, as for CONNECT.
        let plain = passthrough_target(&p, &hosts, 443, "plain.example.com", PEER);
        assert_eq!(refused(plain), "tunnel-not-allowed");
        let other = passthrough_target(&p, &hosts, 443, "other.example.com", PEER);
        assert_eq!(refused(other), "registry-only");
        // Outside the server's hosts: nothing is looked up.
        let outside = passthrough_target(&p, &hosts, 443, "example.org", PEER);
        assert_eq!(refused(outside), "no-route");
        let bad = passthrough_target(&p, &ServerHosts::new(["*"], 443), 443, "a..b", PEER);
        assert_eq!(refused(bad), "malformed");
    }

    #[test]
    fn passthrough_under_allow_any_has_no_plan() {
        let p = policy(&config(), OutboundPolicy::AllowAny);
        let hosts = ServerHosts::new(["*.example.com"], 443);
        let t = passthrough_target(&p, &hosts, 443, "other.example.com", PEER).unwrap();
        assert_eq!(t.destination.to_string(), "other.example.com:443");
        assert!(t.plan.is_none());
    }

    #[test]
    fn tcp_goes_where_the_route_of_the_port_sends_it() {
        let p = policy(&config(), OutboundPolicy::RegistryOnly);
        let t = tcp_target(&p, &ServerHosts::new(["db.example.com"], 5432), 5432, PEER).unwrap();
        assert_eq!(t.destination.to_string(), "db.example.com:5432");
        let none = tcp_target(
            &p,
            &ServerHosts::new(["other.example.com"], 5432),
            5432,
            PEER,
        );
        assert_eq!(refused(none), "no-route");
    }

    /// A DENY on the source address refuses both kinds of connection, after the target is
    /// known; an address outside the block passes.
    #[test]
    fn policies_decide_last() {
        let mut config = config();
        config.access_policies.push(AccessPolicy::new(
            Meta::new("no-lab", "istio-system"),
            AuthzAction::Deny,
            vec![Rule {
                from: vec![Source {
                    ip_blocks: vec!["10.1.0.0/16".parse().unwrap()],
                    ..Source::default()
                }],
                ..Rule::default()
            }],
        ));
        let p = policy(&config, OutboundPolicy::RegistryOnly);
        let hosts = ServerHosts::new(["*.wikipedia.org"], 443);
        let denied = passthrough_target(&p, &hosts, 443, "en.wikipedia.org", PEER);
        assert_eq!(refused(denied), "rbac-denied");
        let db = ServerHosts::new(["db.example.com"], 5432);
        assert_eq!(refused(tcp_target(&p, &db, 5432, PEER)), "rbac-denied");
        let elsewhere: IpAddr = "10.2.0.1".parse().unwrap();
        assert!(passthrough_target(&p, &hosts, 443, "en.wikipedia.org", elsewhere).is_ok());
        // The registry still refuses first: a refusal names the first reason found.
        let other = ServerHosts::new(["*.example.com"], 443);
        let unregistered = passthrough_target(&p, &other, 443, "x.example.com", PEER);
        assert_eq!(refused(unregistered), "registry-only");
    }
}
