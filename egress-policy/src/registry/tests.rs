use super::*;
use crate::istio::ConfigSet;
use crate::layers::RegistryOnlyLayer;
use egress_core::ctx::{Rejection, RejectionKind, RequestForm, Scheme};
use egress_core::host::parse_authority;
use std::convert::Infallible;
use tower::{Layer, ServiceExt, service_fn};

fn registry(yaml: &str, policy: Option<OutboundPolicy>) -> Registry {
    let set = ConfigSet::load_str("r.yaml", yaml);
    Registry::compile(&set, policy)
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

fn entry(name: &str, hosts: &str, ports: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: {hosts}\n  ports: {ports}\n{extra}"
    )
}

fn names(r: &Registry, host: &str, port: u16) -> Option<String> {
    r.lookup_name(host, port)
        .map(|p| p.service.meta.name.clone())
}

#[test]
fn exact_wildcard_depth_and_specificity() {
    let yaml = [
        entry("wiki", "['*.wikipedia.org']", "[{number: 443, name: tls, protocol: TLS}]", "  resolution: NONE\n"),
        entry("en", "['*.en.wikipedia.org']", "[{number: 443, name: tls, protocol: TLS}]", "  resolution: NONE\n"),
        entry("exact", "[www.wikipedia.org]", "[{number: 443, name: tls, protocol: TLS}]", "  resolution: DNS\n"),
        entry("api", "[api.example.com]", "[{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]", "  resolution: DNS\n"),
    ]
    .concat();
    let r = registry(&yaml, None);
    assert_eq!(
        names(&r, "www.wikipedia.org", 443).as_deref(),
        Some("exact")
    );
    assert_eq!(names(&r, "de.wikipedia.org", 443).as_deref(), Some("wiki"));
    assert_eq!(
        names(&r, "a.b.c.wikipedia.org", 443).as_deref(),
        Some("wiki")
    );
    assert_eq!(names(&r, "m.en.wikipedia.org", 443).as_deref(), Some("en"));
    assert_eq!(
        names(&r, "x.m.en.wikipedia.org", 443).as_deref(),
        Some("en")
    );
    // The apex is not matched by its wildcard.
    assert_eq!(names(&r, "wikipedia.org", 443), None);
    assert_eq!(names(&r, "en.wikipedia.org", 443).as_deref(), Some("wiki"));
    // Ports must match.
    assert_eq!(names(&r, "de.wikipedia.org", 80), None);
    assert_eq!(names(&r, "api.example.com", 80).as_deref(), Some("api"));
    assert_eq!(names(&r, "api.example.com", 443).as_deref(), Some("api"));
    assert_eq!(names(&r, "api.example.com", 8080), None);
    // Suffix tricks.
    assert_eq!(names(&r, "evilwikipedia.org", 443), None);
    assert_eq!(names(&r, "api.example.com.evil.net", 80), None);
    assert_eq!(names(&r, "xapi.example.com", 80), None);
}

#[test]
fn destinations_are_normalised_before_lookup() {
    let r = registry(
        &entry(
            "api",
            "[Api.Example.COM]",
            "[{number: 80, name: http, protocol: HTTP}]",
            "  resolution: DNS\n",
        ),
        None,
    );
    for authority in ["api.example.com", "API.EXAMPLE.COM.", "Api.example.com:80"] {
        let (host, port) = parse_authority(authority).unwrap();
        let dst = Destination::new(host, port.unwrap_or(80), Scheme::Http, RequestForm::Origin);
        assert!(r.lookup(&dst).is_some(), "{authority}");
    }
}

#[test]
fn addresses_and_cidrs() {
    let yaml = [
        entry(
            "net",
            "[db.internal]",
            "[{number: 5432, name: pg, protocol: TCP}]",
            "  addresses: [10.0.0.0/8, 10.1.0.0/16, '2001:db8::/32']\n  resolution: NONE\n",
        ),
        entry(
            "one",
            "[one.internal]",
            "[{number: 5432, name: pg, protocol: TCP}]",
            "  addresses: [10.1.2.3]\n  resolution: NONE\n",
        ),
    ]
    .concat();
    let r = registry(&yaml, None);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let name = |s: &str, p| r.lookup_ip(ip(s), p).map(|e| e.service.meta.name.clone());
    assert_eq!(name("10.1.2.3", 5432).as_deref(), Some("one"));
    assert_eq!(name("10.1.2.4", 5432).as_deref(), Some("net"));
    assert_eq!(name("10.200.0.1", 5432).as_deref(), Some("net"));
    assert_eq!(name("2001:db8::5", 5432).as_deref(), Some("net"));
    assert_eq!(name("11.0.0.1", 5432), None);
    assert_eq!(name("10.0.0.1", 80), None);
}

#[test]
fn plans_follow_resolution() {
    let yaml = [
        entry("static", "[s.test]", "[{number: 80, name: http, protocol: HTTP, targetPort: 8080}]", "  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}, {address: 127.0.0.2, ports: {http: 9090}}, {address: 127.0.0.3, weight: 0}]\n"),
        entry("dns", "[d.test]", "[{number: 80, name: http, protocol: HTTP}]", "  resolution: DNS\n  endpoints: [{address: backend.d.test}]\n"),
        entry("none", "[n.test]", "[{number: 80, name: http, protocol: HTTP}]", "  resolution: NONE\n  addresses: [192.168.0.0/16]\n"),
    ]
    .concat();
    let r = registry(&yaml, None);
    let s = &r.lookup_name("s.test", 80).unwrap().plan;
    assert_eq!(s.port, Some(8080));
    assert_eq!(
        &*s.targets,
        [
            Target::Addr("127.0.0.1:8080".parse().unwrap()),
            Target::Addr("127.0.0.2:9090".parse().unwrap())
        ]
    );
    let d = &r.lookup_name("d.test", 80).unwrap().plan;
    assert_eq!(
        &*d.targets,
        [Target::Name("backend.d.test".into(), Some(80))]
    );
    let n = &r.lookup_name("n.test", 80).unwrap().plan;
    assert!(n.targets.is_empty());
    assert_eq!(n.trusted_nets.len(), 1);
    assert_eq!(n.service.as_deref(), Some("default/none"));
}

#[test]
fn policy_precedence_and_conflicts() {
    let sidecar = |name: &str, mode: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}}}\nspec:\n  outboundTrafficPolicy: {{mode: {mode}}}\n"
        )
    };
    assert_eq!(registry("", None).policy(), OutboundPolicy::RegistryOnly);
    assert_eq!(
        registry(&sidecar("a", "ALLOW_ANY"), None).policy(),
        OutboundPolicy::AllowAny
    );
    assert_eq!(
        registry(
            &sidecar("a", "ALLOW_ANY"),
            Some(OutboundPolicy::RegistryOnly)
        )
        .policy(),
        OutboundPolicy::RegistryOnly
    );
    let both = sidecar("a", "ALLOW_ANY") + &sidecar("b", "REGISTRY_ONLY");
    let err = Registry::compile(&ConfigSet::load_str("p.yaml", &both), None).unwrap_err();
    assert!(
        err.to_string().contains("conflicts with ALLOW_ANY"),
        "{err}"
    );
    // Duplicate resource names are an error; overlapping hosts a warning.
    let dup = entry("a", "[a.com]", "[{number: 80}]", "  resolution: DNS\n").repeat(2);
    let err = Registry::compile(&ConfigSet::load_str("d.yaml", &dup), None).unwrap_err();
    assert!(err.to_string().contains("defined twice"), "{err}");
    let overlap = entry("a", "[a.com]", "[{number: 80}]", "  resolution: DNS\n")
        + &entry("b", "[a.com]", "[{number: 80}]", "  resolution: DNS\n");
    let set = ConfigSet::load_str("o.yaml", &overlap);
    let (r, warnings) = Registry::compile(&set, None).unwrap();
    assert_eq!(names(&r, "a.com", 80).as_deref(), Some("a"));
    assert!(
        warnings
            .to_string()
            .contains("already registered by ServiceEntry default/a"),
        "{warnings}"
    );
}

fn dst_req(authority: &str, form: RequestForm) -> http::Request<()> {
    let (host, port) = parse_authority(authority).unwrap();
    let scheme = if form == RequestForm::Connect {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let dst = Destination::new(host, port.unwrap_or(80), scheme, form);
    let mut req = http::Request::new(());
    req.extensions_mut().insert(dst);
    req
}

async fn call(r: Registry, req: http::Request<()>) -> http::Response<bytes::Bytes> {
    let svc = RegistryOnlyLayer::new(Arc::new(r)).layer(service_fn(
        |req: http::Request<()>| async move {
            let tag = if req.extensions().get::<UpstreamPlan>().is_some() {
                "plan"
            } else if req
                .extensions()
                .get::<egress_core::ctx::Passthrough>()
                .is_some()
            {
                "passthrough"
            } else {
                "none"
            };
            Ok::<_, Infallible>(http::Response::new(bytes::Bytes::from(tag)))
        },
    ));
    svc.oneshot(req).await.unwrap()
}

#[tokio::test]
async fn layer_allows_refuses_and_marks() {
    let yaml = entry(
        "api",
        "[api.example.com]",
        "[{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]",
        "  resolution: DNS\n",
    );
    let rsp = call(
        registry(&yaml, None),
        dst_req("api.example.com", RequestForm::Absolute),
    )
    .await;
    assert_eq!(rsp.into_body(), "plan");

    let rsp = call(
        registry(&yaml, None),
        dst_req("evil.example.net", RequestForm::Absolute),
    )
    .await;
    assert_eq!(rsp.status(), http::StatusCode::BAD_GATEWAY);
    assert_eq!(rsp.headers()["x-egress-denied"], "registry-only");
    assert_eq!(
        rsp.extensions().get::<Rejection>().map(Rejection::kind),
        Some(RejectionKind::NotInRegistry)
    );
    let body = String::from_utf8(rsp.into_body().to_vec()).unwrap();
    assert!(
        body.contains("evil.example.net:80") && body.contains("REGISTRY_ONLY"),
        "{body}"
    );

    let rsp = call(
        registry(&yaml, None),
        dst_req("evil.example.net:443", RequestForm::Connect),
    )
    .await;
    assert_eq!(rsp.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(rsp.headers()["connection"], "close");

    let rsp = call(
        registry(&yaml, None),
        dst_req("api.example.com:443", RequestForm::Connect),
    )
    .await;
    assert_eq!(rsp.into_body(), "plan");
    let rsp = call(
        registry(&yaml, None),
        dst_req("api.example.com:80", RequestForm::Connect),
    )
    .await;
    assert_eq!(rsp.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(rsp.headers()["x-egress-denied"], "tunnel-not-allowed");

    let rsp = call(
        registry(&yaml, Some(OutboundPolicy::AllowAny)),
        dst_req("evil.example.net", RequestForm::Absolute),
    )
    .await;
    assert_eq!(rsp.into_body(), "passthrough");

    let rsp = call(registry(&yaml, None), http::Request::new(())).await;
    assert_eq!(rsp.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(rsp.headers()["x-egress-denied"], "missing-destination");
}

/// The registry over services built in code, with no YAML: exact before wildcard, ports per
/// host, a declared CIDR for IP destinations, static endpoints in the plan, TLS origination
/// from a destination policy, and a duplicate port reported rather than silently replaced.
#[test]
fn services_built_in_code() {
    use crate::model::{
        ClientTls, DestinationPolicy, Endpoint, Meta, Port, Protocol, Resolution, Service,
    };
    let mut config = Config::default();
    let mut api = Service::new(
        Meta::new("api", "default"),
        ["API.example.com."],
        [Port::new(80, Protocol::Http, "http")],
        Resolution::Static,
    );
    api.endpoints.push(Endpoint::new("10.0.0.7"));
    config.services.push(api);
    let mut wild = Service::new(
        Meta::new("wild", "default"),
        ["*.example.com"],
        [
            Port::new(80, Protocol::Http, "http"),
            Port::new(443, Protocol::Tls, "tls"),
        ],
        Resolution::None,
    );
    wild.addresses.push("192.0.2.0/24".parse().unwrap());
    config.services.push(wild);
    config.services.push(Service::new(
        Meta::new("again", "default"),
        ["api.example.com"],
        [Port::new(80, Protocol::Http, "http")],
        Resolution::Dns,
    ));
    let mut dr = DestinationPolicy::new(Meta::new("api", "default"), "api.example.com");
    dr.tls = Some(ClientTls {
        mode: "SIMPLE".into(),
        ca_certificates: None,
        ca_crl: None,
        client_certificate: None,
        private_key: None,
        sni: Some("api.example.com".into()),
        subject_alt_names: Vec::new(),
        insecure_skip_verify: false,
    });
    config.destination_policies.push(dr);

    let (r, diags) = Registry::compile(&config, None).expect("compiles");
    assert_eq!(r.policy(), OutboundPolicy::RegistryOnly);
    assert_eq!(names(&r, "api.example.com", 80).as_deref(), Some("api"));
    assert_eq!(names(&r, "api.example.com", 443).as_deref(), Some("wild"));
    assert_eq!(names(&r, "a.b.example.com", 80).as_deref(), Some("wild"));
    assert_eq!(names(&r, "example.com", 80), None);
    let ip = r
        .lookup_ip("192.0.2.9".parse().unwrap(), 443)
        .expect("CIDR");
    assert_eq!(ip.service.meta.name, "wild");
    assert!(r.lookup_ip("192.0.3.9".parse().unwrap(), 443).is_none());

    let api = r.lookup_name("api.example.com", 80).unwrap();
    assert_eq!(
        &*api.plan.targets,
        &[Target::Addr("10.0.0.7:80".parse().unwrap())]
    );
    let tls = api.plan.tls.as_ref().expect("TLS origination");
    assert_eq!(tls.sni.as_deref(), Some("api.example.com"));
    assert!(!tls.mutual);

    let dup: Vec<String> = diags.warnings().map(|d| d.to_string()).collect();
    assert!(
        dup.iter()
            .any(|d| d.contains("api.example.com port 80 is already registered")),
        "{dup:?}"
    );
}
