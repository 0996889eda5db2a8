//! The decision engines alone, each over a policy built in code (no YAML, no tower): the
//! registry (destination → service, and whether it is admitted), the route table (request →
//! route, weighted split), and the authorization policies (request facts → decision, with
//! the policy and rule that decided). The connection engine has its own tests beside it.

#![allow(clippy::unwrap_used, reason = "tests")]

use egress_core::ctx::{Destination, Host, RejectionKind, RequestForm, Scheme};
use http::Request;
use std::net::IpAddr;

use crate::authz::{Attributes, HttpAttributes};
use crate::compile::{Settings, compile};
use crate::model::{
    AccessPolicy, AuthzAction, Config, HttpMatch, HttpRoute, Meta, Operation, OutboundPolicy, Port,
    Protocol, Resolution, Rule, Service, Source, StringMatch, VirtualHost, WeightedDestination,
};
use crate::registry::Admission;
use crate::routes::Action;
use crate::snapshot::Policy;

fn service(name: &str, hosts: &[&str], port: u16, protocol: Protocol) -> Service {
    Service::new(
        Meta::new(name, "default"),
        hosts.iter().copied(),
        [Port::new(port, protocol, "p")],
        Resolution::Dns,
    )
}

fn policy(config: &Config, outbound: OutboundPolicy) -> Policy {
    let settings = Settings {
        outbound: Some(outbound),
        ..Settings::default()
    };
    compile(config, &settings).unwrap().policy
}

fn dst(host: &str, port: u16, form: RequestForm) -> Destination {
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(host.into()),
    };
    Destination::new(host, port, Scheme::Http, form)
}

/// Which service a destination maps to, or the refusal's reason token.
fn admit(p: &Policy, host: &str, port: u16, form: RequestForm) -> String {
    match p.registry.admit(&dst(host, port, form)) {
        Ok(Admission::Registered(found)) => found.service.meta.name.clone(),
        Ok(Admission::Passthrough) => "passthrough".into(),
        Err(refusal) => refusal.kind().token().into(),
    }
}

#[test]
fn registry_maps_destinations_and_admits_by_outbound_policy() {
    let mut config = Config::default();
    config
        .services
        .push(service("wiki", &["*.wikipedia.org"], 443, Protocol::Tls));
    config
        .services
        .push(service("www", &["www.wikipedia.org"], 443, Protocol::Tls));
    config
        .services
        .push(service("api", &["api.example.com"], 80, Protocol::Http));
    let mut net = service("net", &["net.internal"], 5432, Protocol::Tcp);
    net.addresses.push("10.1.0.0/16".parse().unwrap());
    config.services.push(net);

    let strict = policy(&config, OutboundPolicy::RegistryOnly);
    let origin = RequestForm::Origin;
    // Exact beats wildcard; a wildcard covers any depth but not its apex or look-alikes.
    assert_eq!(
        admit(&strict, "www.wikipedia.org", 443, RequestForm::Connect),
        "www"
    );
    assert_eq!(
        admit(&strict, "a.b.wikipedia.org", 443, RequestForm::Connect),
        "wiki"
    );
    assert_eq!(
        admit(&strict, "wikipedia.org", 443, RequestForm::Connect),
        "registry-only"
    );
    assert_eq!(
        admit(&strict, "evilwikipedia.org", 443, RequestForm::Connect),
        "registry-only"
    );
    // Ports are part of the registration; an address inside a declared CIDR maps too.
    assert_eq!(admit(&strict, "api.example.com", 80, origin), "api");
    assert_eq!(
        admit(&strict, "api.example.com", 8080, origin),
        "registry-only"
    );
    assert_eq!(
        admit(&strict, "10.1.2.3", 5432, RequestForm::Connect),
        "net"
    );
    assert_eq!(
        admit(&strict, "10.2.0.1", 5432, RequestForm::Connect),
        "registry-only"
    );
    // A tunnel to a port declared HTTP would hide its requests: refused.
    assert_eq!(
        admit(&strict, "api.example.com", 80, RequestForm::Connect),
        "tunnel-not-allowed"
    );

    let open = policy(&config, OutboundPolicy::AllowAny);
    assert_eq!(admit(&open, "example.org", 80, origin), "passthrough");
    assert_eq!(admit(&open, "api.example.com", 80, origin), "api");
    let refused = strict
        .registry
        .admit(&dst("example.org", 80, origin))
        .unwrap_err();
    assert_eq!(refused.kind(), RejectionKind::NotInRegistry);
    assert!(refused.why().contains("REGISTRY_ONLY"), "{}", refused.why());
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// The id of the route a request takes: `none` when no VirtualService covers the host,
/// `unmatched` when one does and no route matches.
fn route(p: &Policy, host: &str, req: &Request<()>) -> String {
    match p.routes.route(host, 80, "http", host, req) {
        None => "none".into(),
        Some(None) => "unmatched".into(),
        Some(Some((r, _))) => r.id.to_string(),
    }
}

#[test]
fn routes_match_in_order_and_split_by_weight() {
    let mut config = Config::default();
    for name in ["api", "canary"] {
        config.services.push(service(
            name,
            &[&format!("{name}.example.com")],
            80,
            Protocol::Http,
        ));
    }
    let beta = HttpRoute {
        name: Some("beta".into()),
        matches: vec![HttpMatch {
            headers: vec![("x-beta".into(), StringMatch::Exact("1".into()))],
            ..HttpMatch::default()
        }],
        route: vec![WeightedDestination::to("canary.example.com", None, 100)],
        ..HttpRoute::default()
    };
    let items = HttpRoute {
        name: Some("items".into()),
        matches: vec![HttpMatch {
            uri: Some(StringMatch::Prefix("/items".into())),
            method: Some(StringMatch::Exact("GET".into())),
            ..HttpMatch::default()
        }],
        route: vec![
            WeightedDestination::to("api.example.com", None, 75),
            WeightedDestination::to("canary.example.com", None, 25),
        ],
        ..HttpRoute::default()
    };
    config.virtual_hosts.push(VirtualHost::new(
        Meta::new("api", "default"),
        ["api.example.com"],
        vec![beta, items],
    ));
    let p = policy(&config, OutboundPolicy::RegistryOnly);

    // The first route that matches wins, whatever follows.
    let both = get("/items", &[("x-beta", "1")]);
    assert!(route(&p, "api.example.com", &both).ends_with("beta"));
    assert!(route(&p, "api.example.com", &get("/items/7", &[])).ends_with("items"));
    assert_eq!(
        route(&p, "api.example.com", &get("/other", &[])),
        "unmatched"
    );
    assert_eq!(route(&p, "canary.example.com", &get("/items", &[])), "none");
    let post = Request::post("/items").body(()).unwrap();
    assert_eq!(route(&p, "api.example.com", &post), "unmatched");

    // 75/25: over 4,000 picks the shares land within a point of the weights.
    let req = get("/items", &[]);
    let (r, _) = p
        .routes
        .route("api.example.com", 80, "http", "api.example.com", &req)
        .unwrap()
        .unwrap();
    let Action::Route {
        destinations,
        total,
    } = &r.action
    else {
        panic!("{:?}", r.action);
    };
    let canary = (0..4000)
        .filter(|_| &*p.routes.pick(destinations, *total).unwrap().host == "canary.example.com")
        .count();
    assert!((960..=1040).contains(&canary), "{canary} of 4000");
}

/// Facts of a request from `peer` for `path` on `host`.
fn facts<'a>(
    host: &'a str,
    path: &'a str,
    headers: &'a http::HeaderMap,
    peer: &str,
) -> Attributes<'a> {
    let peer: IpAddr = peer.parse().unwrap();
    Attributes {
        http: Some(HttpAttributes {
            method: "GET",
            path,
            headers,
            auth: None,
        }),
        source_ip: Some(peer),
        remote_ip: Some(peer),
        principal: None,
        namespace: None,
        host,
        port: 80,
        destination_ip: None,
        sni: None,
    }
}

#[test]
fn authz_denies_first_then_allows_and_names_the_deciding_rule() {
    let paths = |p: &str| Operation {
        paths: vec![p.into()],
        ..Operation::default()
    };
    let mut config = Config::default();
    config.access_policies.push(AccessPolicy::new(
        Meta::new("no-admin", "istio-system"),
        AuthzAction::Deny,
        vec![Rule {
            to: vec![paths("/admin*")],
            ..Rule::default()
        }],
    ));
    config.access_policies.push(AccessPolicy::new(
        Meta::new("office", "istio-system"),
        AuthzAction::Allow,
        vec![
            Rule {
                to: vec![paths("/public*")],
                ..Rule::default()
            },
            Rule {
                from: vec![Source {
                    ip_blocks: vec!["10.0.0.0/8".parse().unwrap()],
                    ..Source::default()
                }],
                ..Rule::default()
            },
        ],
    ));
    let p = policy(&config, OutboundPolicy::RegistryOnly);
    let h = http::HeaderMap::new();
    let decide =
        |path: &str, peer: &str| p.authz.evaluate(&facts("api.example.com", path, &h, peer));

    // DENY before ALLOW: the office network does not reach /admin either.
    let d = decide("/admin/users", "10.1.1.1");
    assert!(!d.allowed);
    assert_eq!(d.policy.as_deref(), Some("istio-system/no-admin"));
    assert_eq!((d.action, d.rule), (Some(AuthzAction::Deny), Some(0)));
    // Allowed by the second rule of the ALLOW policy.
    let d = decide("/private", "10.1.1.1");
    assert!(d.allowed);
    assert_eq!(d.policy.as_deref(), Some("istio-system/office"));
    assert_eq!(d.rule, Some(1));
    let d = decide("/public/x", "192.0.2.1");
    assert!(d.allowed && d.rule == Some(0), "{d:?}");
    // ALLOW policies exist and none matches: denied, no policy named.
    let d = decide("/private", "192.0.2.1");
    assert!(!d.allowed && d.policy.is_none(), "{d:?}");
}

#[test]
fn dry_run_policies_report_their_decision_and_enforce_nothing() {
    let mut config = Config::default();
    let mut shadow = AccessPolicy::new(
        Meta::new("shadow-deny", "istio-system"),
        AuthzAction::Deny,
        vec![Rule {
            to: vec![Operation {
                paths: vec!["/headers".into()],
                ..Operation::default()
            }],
            ..Rule::default()
        }],
    );
    shadow.dry_run = true;
    config.access_policies.push(shadow);
    let p = policy(&config, OutboundPolicy::RegistryOnly);
    let h = http::HeaderMap::new();
    let a = facts("api.example.com", "/headers", &h, "192.0.2.1");
    assert!(p.authz.evaluate(&a).allowed, "dry-run is never enforced");
    let dry = p.authz.dry_run(&a).unwrap();
    assert_eq!(dry.to_string(), "deny:denied:istio-system/shadow-deny");
    assert!(dry.allow.is_none());
    let other = facts("api.example.com", "/ip", &h, "192.0.2.1");
    assert_eq!(
        p.authz.dry_run(&other).unwrap().to_string(),
        "deny:allowed:-"
    );
    // Without dry-run policies nothing is computed.
    let none = policy(&Config::default(), OutboundPolicy::RegistryOnly);
    assert!(none.authz.dry_run(&a).is_none());
}
