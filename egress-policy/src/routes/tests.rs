use super::*;
use crate::diag::Diagnostics;
use crate::istio::ConfigSet;
use crate::model::{Binding, Config, OutboundPolicy};
use crate::registry::Registry;

const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other}
spec:
  hosts: [other.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: alt, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: none, labels: {version: v9}}
"#;

fn compile(vs: &str) -> Result<(RouteTable, Diagnostics), Diagnostics> {
    let set = ConfigSet::load_str("r.yaml", &format!("{REGISTRY}---\n{vs}"));
    assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
    let (registry, _) = Registry::compile(&set, None).unwrap();
    RouteTable::compile(&set, &registry, &Binding::default())
}

fn table(vs: &str) -> RouteTable {
    compile(vs).unwrap_or_else(|d| panic!("{d}")).0
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: routes}}\nspec:\n  hosts: [api.example.com]\n  http:\n{http}"
    )
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// The id of the route chosen for a request (or "404" / "none").
fn chosen(t: &RouteTable, r: &Request<()>, port: u16) -> String {
    match t.route("api.example.com", port, "http", "api.example.com", r) {
        None => "none".into(),
        Some(None) => "404".into(),
        Some(Some((route, _))) => route.id.rsplit('/').next().unwrap().to_owned(),
    }
}

#[test]
fn match_semantics() {
    let t = table(&vs(r#"
  - name: exact
    match: [{uri: {exact: /exact}}]
    route: [{destination: {host: api.example.com}}]
  - name: prefix-ci
    match: [{uri: {prefix: /CI/}, ignoreUriCase: true}]
    route: [{destination: {host: api.example.com}}]
  - name: regex
    match: [{uri: {regex: "/r/[0-9]+"}}]
    route: [{destination: {host: api.example.com}}]
  - name: header
    match: [{headers: {x-user: {exact: alice}}}]
    route: [{destination: {host: api.example.com}}]
  - name: present
    match: [{headers: {x-debug: {}}}]
    route: [{destination: {host: api.example.com}}]
  - name: method-and-query
    match: [{method: {exact: POST}, queryParams: {v: {exact: "2"}}}]
    route: [{destination: {host: api.example.com}}]
  - name: without
    match: [{uri: {prefix: /w}, withoutHeaders: {x-block: {exact: "1"}}}]
    route: [{destination: {host: api.example.com}}]
  - name: port-or-authority
    match: [{port: 8080}, {authority: {prefix: api.}, uri: {prefix: /auth}}]
    route: [{destination: {host: other.example.com}}]
  - name: scheme
    match: [{scheme: {exact: https}}]
    route: [{destination: {host: api.example.com}}]
"#));
    let cases: &[(&str, &str, &[(&str, &str)], u16, &str)] = &[
        ("GET", "/exact", &[], 80, "exact"),
        ("GET", "/exact/more", &[], 80, "404"),
        ("GET", "/ci/x", &[], 80, "prefix-ci"),
        ("GET", "/Ci/x", &[], 80, "prefix-ci"),
        ("GET", "/r/123", &[], 80, "regex"),
        // The regex must match the whole path.
        ("GET", "/r/123/x", &[], 80, "404"),
        ("GET", "/x/r/123", &[], 80, "404"),
        ("GET", "/any", &[("x-user", "alice")], 80, "header"),
        ("GET", "/any", &[("x-user", "Alice")], 80, "404"),
        ("GET", "/any", &[("x-debug", "")], 80, "present"),
        ("POST", "/any?a=1&v=2", &[], 80, "method-and-query"),
        ("POST", "/any?v=3", &[], 80, "404"),
        ("GET", "/any?v=2", &[], 80, "404"),
        ("GET", "/w1", &[], 80, "without"),
        ("GET", "/w1", &[("x-block", "1")], 80, "404"),
        ("GET", "/w1", &[("x-block", "2")], 80, "without"),
        ("GET", "/anything", &[], 8080, "port-or-authority"),
        ("GET", "/auth/x", &[], 80, "port-or-authority"),
        // First match wins: /exact on port 8080 is the exact route.
        ("GET", "/exact", &[], 8080, "exact"),
    ];
    for (method, uri, headers, port, want) in cases {
        let r = req(method, uri, headers);
        assert_eq!(
            chosen(&t, &r, *port),
            *want,
            "{method} {uri} {headers:?} :{port}"
        );
    }
    assert_eq!(
        t.route(
            "unrelated.example.com",
            80,
            "http",
            "x",
            &req("GET", "/", &[])
        )
        .map(|_| ()),
        None
    );
}

#[test]
fn weights_subsets_and_plans() {
    let t = table(&vs(r#"
  - route:
    - {destination: {host: api.example.com, subset: v1}, weight: 80}
    - {destination: {host: api.example.com, subset: v2}, weight: 20}
    - {destination: {host: other.example.com}, weight: 0}
"#));
    let r = req("GET", "/", &[]);
    let (route, _) = t
        .route("api.example.com", 80, "http", "api.example.com", &r)
        .unwrap()
        .unwrap();
    let Action::Route {
        destinations,
        total,
    } = &route.action
    else {
        panic!()
    };
    assert_eq!(*total, 100);
    let mut counts = [0u32; 3];
    for _ in 0..10_000 {
        let d = t.pick(destinations, *total).unwrap();
        let i = destinations
            .iter()
            .position(|x| std::ptr::eq(x, d))
            .unwrap();
        counts[i] += 1;
    }
    assert_eq!(counts[2], 0, "a zero weight got traffic");
    // Chi-square with one degree of freedom, p = 0.001: 10.83.
    let chi = (f64::from(counts[0]) - 8000.0).powi(2) / 8000.0
        + (f64::from(counts[1]) - 2000.0).powi(2) / 2000.0;
    assert!(chi < 10.83, "{counts:?} chi2 {chi}");
    // Subsets pick endpoints by label.
    let (_, v1) = destinations[0].plan(80).unwrap();
    assert_eq!(&*v1.targets, [Target::Addr("10.0.0.1:80".parse().unwrap())]);
    let (_, v2) = destinations[1].plan(80).unwrap();
    assert_eq!(&*v2.targets, [Target::Addr("10.0.0.2:80".parse().unwrap())]);
    // A DNS service without endpoints resolves the route's destination, on the request's port.
    let (port, other) = destinations[2].plan(8080).unwrap();
    assert_eq!(port, 8080);
    assert_eq!(
        &*other.targets,
        [Target::Name("other.example.com".into(), Some(8080))]
    );
    // One destination gets everything, whatever its weight.
    let t = table(&vs(
        "  - route: [{destination: {host: other.example.com, port: {number: 8080}}, weight: 5}]\n",
    ));
    let (route, _) = t
        .route("api.example.com", 80, "http", "a", &r)
        .unwrap()
        .unwrap();
    let Action::Route {
        destinations,
        total,
    } = &route.action
    else {
        panic!()
    };
    assert!(std::ptr::eq(
        t.pick(destinations, *total).unwrap(),
        &destinations[0]
    ));
    assert_eq!(destinations[0].plan(80).unwrap().0, 8080);
}

#[test]
fn validation() {
    let cases: &[(&str, &str)] = &[
        (
            "  - route: [{destination: {host: nowhere.example.net}}]\n",
            "spec.http[0].route[0].destination: route destination nowhere.example.net is not in the service registry",
        ),
        (
            "  - route: [{destination: {host: other.example.com, port: {number: 9999}}}]\n",
            "other.example.com port 9999 is not in the service registry",
        ),
        (
            "  - route: [{destination: {host: api.example.com, subset: v3}}]\n",
            "subset \"v3\" of api.example.com is not defined",
        ),
        (
            "  - route: [{destination: {host: api.example.com, subset: none}}]\n",
            "selects no endpoints",
        ),
    ];
    for (http, want) in cases {
        let err = compile(&vs(http))
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        assert!(err.contains(want), "{http}\nwant {want}\ngot {err}");
    }
    let reading: &[(&str, &str)] = &[
        (
            "  - route: [{destination: {host: api.example.com}}]\n    redirect: {uri: /x}\n",
            "exactly one of route, redirect and directResponse",
        ),
        (
            "  - match: [{uri: {prefix: /}}]\n",
            "exactly one of route, redirect and directResponse",
        ),
        (
            "  - route: [{destination: {host: api.example.com}, weight: 0}, {destination: {host: api.example.com}, weight: 0}]\n",
            "weights are all zero",
        ),
        (
            "  - match: [{uri: {prefix: /a, exact: /b}}]\n    directResponse: {status: 200}\n",
            "exactly one of exact, prefix and regex",
        ),
        (
            "  - match: [{uri: {regex: \"(\"}}]\n    directResponse: {status: 200}\n",
            "invalid regex",
        ),
        (
            "  - match: [{headers: {X-Up: {exact: a}}}]\n    directResponse: {status: 200}\n",
            "header names must be lower-case",
        ),
        ("  - directResponse: {status: 99}\n", "99 is out of range"),
        (
            "  - route: [{destination: {host: '*.example.com'}}]\n",
            "cannot be a wildcard host",
        ),
        (
            "  - route: [{destination: {host: api.example.com}}]\n    timeout: soon\n",
            "invalid duration",
        ),
    ];
    for (http, want) in reading {
        let set = ConfigSet::load_str("r.yaml", &format!("{REGISTRY}---\n{}", vs(http)));
        let err = set.diagnostics.to_string();
        assert!(err.contains(want), "{http}\nwant {want}\ngot {err}");
        assert!(
            err.contains("r.yaml:") && err.contains("VirtualService default/routes"),
            "{err}"
        );
    }
    // Under ALLOW_ANY an unregistered destination is a passthrough, not an error.
    let set = ConfigSet::load_str(
        "r.yaml",
        &format!(
            "{REGISTRY}---\n{}",
            vs("  - route: [{destination: {host: free.example.net}}]\n")
        ),
    );
    let (registry, _) = Registry::compile(&set, Some(OutboundPolicy::AllowAny)).unwrap();
    let (t, _) = RouteTable::compile(&set, &registry, &Binding::default()).unwrap();
    let r = req("GET", "/", &[]);
    let (route, _) = t
        .route("api.example.com", 80, "http", "a", &r)
        .unwrap()
        .unwrap();
    let Action::Route { destinations, .. } = &route.action else {
        panic!()
    };
    assert_eq!(
        &*destinations[0].plan(80).unwrap().1.targets,
        [Target::Name("free.example.net".into(), Some(80))]
    );
}

/// Istio's egress-gateway task: one VirtualService for both hops, told apart by the
/// `gateways` of each match block.
const TWO_HOP: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 80, name: http-port, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [edition.cnn.com]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-cnn}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets: [{name: cnn}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: cnn, port: {number: 80}}
      weight: 100
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 80}}
      weight: 100
"#;

#[test]
fn gateway_binding_picks_the_hop() {
    let set = ConfigSet::load_str("task.yaml", TWO_HOP);
    assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
    let (registry, _) = Registry::compile(&set, None).unwrap();
    let labels = vec![("istio".to_owned(), "egressgateway".to_owned())];
    let binding = Binding::new(&set.gateways, &labels);
    assert_eq!(binding.selected, ["default/istio-egressgateway"]);
    let (t, _) = RouteTable::compile(&set, &registry, &binding).unwrap_or_else(|d| panic!("{d}"));
    let r = req("GET", "/politics", &[]);
    let (route, _) = t
        .route("edition.cnn.com", 80, "http", "edition.cnn.com", &r)
        .unwrap()
        .unwrap();
    let Action::Route { destinations, .. } = &route.action else {
        panic!()
    };
    assert_eq!(&*destinations[0].host, "edition.cnn.com");
    assert_eq!(destinations[0].plan(80).unwrap().0, 80);

    // Not selected by any Gateway: this proxy is the mesh hop, whose destination (the
    // egress gateway's Kubernetes service) is not registered here.
    let other = vec![("app".to_owned(), "other".to_owned())];
    let err =
        RouteTable::compile(&set, &registry, &Binding::new(&set.gateways, &other)).unwrap_err();
    assert!(err.to_string().contains("istio-egressgateway.istio-system.svc.cluster.local port 80 is not in the service registry"), "{err}");

    // A mesh-only VirtualService is the sidecar hop for a gateway: skipped, reported.
    let mesh_only = format!(
        "{TWO_HOP}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: sidecar-only}}\nspec:\n  hosts: [edition.cnn.com]\n  http:\n  - route: [{{destination: {{host: edition.cnn.com}}}}]\n"
    );
    let set = ConfigSet::load_str("task.yaml", &mesh_only);
    let (t, warnings) = RouteTable::compile(&set, &registry, &binding).unwrap();
    assert!(
        t.summary()
            .skipped
            .iter()
            .any(|s| s.contains("sidecar-only") && s.contains("not to this gateway")),
        "{:?}",
        t.summary().skipped
    );
    assert!(!warnings.to_string().contains("sidecar-only"), "{warnings}");
}

/// Header matches read bytes; lines that a match reads differently are ambiguous, and a
/// regex that cannot read a value never takes its route.
#[test]
fn header_matches_on_bytes_and_lines() {
    let t = table(&vs(r#"  - name: exact
    match: [{headers: {x-user: {exact: alice}}}]
    directResponse: {status: 200}
  - name: without
    match: [{withoutHeaders: {x-debug: {regex: "on|yes"}}, uri: {prefix: /w}}]
    directResponse: {status: 200}
  - name: regex
    match: [{headers: {x-ver: {regex: "v[0-9]+"}}}]
    directResponse: {status: 200}
  - name: rest
    directResponse: {status: 200}
"#));
    let with = |lines: &[(&'static str, &'static [u8])], uri: &str| {
        let mut r = req("GET", uri, &[]);
        for (k, v) in lines {
            r.headers_mut().append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        r
    };
    let pick = |r: &Request<()>| {
        t.route_checked("api.example.com", 80, "http", "api.example.com", r)
            .map(|f| {
                f.unwrap()
                    .unwrap()
                    .0
                    .id
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
    };
    assert_eq!(pick(&with(&[("x-user", b"alice")], "/")).unwrap(), "exact");
    assert_eq!(
        pick(&with(&[("x-user", b" alice ")], "/")).unwrap(),
        "exact"
    );
    assert_eq!(
        pick(&with(&[("x-user", b"alice\xff")], "/")).unwrap(),
        "rest"
    );
    assert_eq!(
        pick(&with(&[("x-user", b"alice"), ("x-user", b"alice")], "/")).unwrap(),
        "exact"
    );
    assert_eq!(
        pick(&with(&[("x-user", b"alice"), ("x-user", b"bob")], "/")),
        Err("x-user".to_owned())
    );
    assert_eq!(pick(&with(&[("x-ver", b"v12")], "/")).unwrap(), "regex");
    assert_eq!(pick(&with(&[("x-ver", b"v1\xff")], "/")).unwrap(), "rest");
    assert_eq!(pick(&with(&[], "/w")).unwrap(), "without");
    assert_eq!(pick(&with(&[("x-debug", b"on")], "/w")).unwrap(), "rest");
    assert_eq!(
        pick(&with(&[("x-debug", b"\xff")], "/w")).unwrap(),
        "rest",
        "cannot read: excluded"
    );
}

/// Routes built in code, with no YAML: a prefix match with a weighted split between two
/// subsets (one with weight 0), the default route after it, and a reference to an unknown
/// subset refused at compile time.
#[test]
fn routes_built_in_code() {
    use crate::model::{
        DestinationPolicy, Endpoint, HttpRoute, Meta, Port, Protocol, Resolution, Service, Subset,
        VirtualHost, WeightedDestination,
    };
    let mut config = Config::default();
    let mut api = Service::new(
        Meta::new("api", "default"),
        ["api.example.com"],
        [Port::new(80, Protocol::Http, "http")],
        Resolution::Static,
    );
    for (ip, v) in [("10.0.0.1", "v1"), ("10.0.0.2", "v2")] {
        let mut e = Endpoint::new(ip);
        e.labels.push(("version".into(), v.into()));
        api.endpoints.push(e);
    }
    config.services.push(api);
    let mut dr = DestinationPolicy::new(Meta::new("api", "default"), "api.example.com");
    for v in ["v1", "v2"] {
        dr.subsets.push(Subset {
            name: v.into(),
            labels: vec![("version".into(), v.into())],
            lb: None,
            tls: None,
        });
    }
    config.destination_policies.push(dr);
    let v2 = HttpRoute {
        name: Some("v2-only".into()),
        matches: vec![HttpMatch {
            uri: Some(StringMatch::Prefix("/v2".into())),
            ..HttpMatch::default()
        }],
        route: vec![
            WeightedDestination::to("api.example.com", Some("v1"), 0),
            WeightedDestination::to("api.example.com", Some("v2"), 100),
        ],
        ..HttpRoute::default()
    };
    let rest = HttpRoute {
        name: Some("rest".into()),
        route: vec![WeightedDestination::to("api.example.com", Some("v1"), 100)],
        ..HttpRoute::default()
    };
    config.virtual_hosts.push(VirtualHost::new(
        Meta::new("routes", "default"),
        ["api.example.com"],
        vec![v2, rest],
    ));
    let (registry, _) = Registry::compile(&config, None).unwrap();
    let (t, _) = RouteTable::compile(&config, &registry, &Binding::default()).expect("valid");
    for _ in 0..20 {
        let r = req("GET", "http://api.example.com/v2/x", &[]);
        let (route, dest) = t
            .route("api.example.com", 80, "http", "api.example.com", &r)
            .flatten()
            .expect("routed");
        assert!(route.id.ends_with("v2-only"), "{}", route.id);
        assert_eq!(dest, Some(0), "its first match block applied");
        let Action::Route {
            destinations,
            total,
        } = &route.action
        else {
            panic!("a forwarding route");
        };
        let picked = t.pick(destinations, *total).expect("weight 100");
        assert_eq!(picked.subset.as_deref(), Some("v2"));
    }
    let r = req("GET", "http://api.example.com/other", &[]);
    assert_eq!(chosen(&t, &r, 80), "rest");

    config.virtual_hosts[0].http[1].route[0].destination.subset = Some("v9".into());
    let err = RouteTable::compile(&config, &registry, &Binding::default()).unwrap_err();
    assert!(err.to_string().contains("v9"), "{err}");
}

/// A subset without labels is the whole service: every endpoint of a STATIC service, the
/// host itself for a DNS one without endpoints (once refused as "selects no endpoints").
#[test]
fn subset_without_labels_selects_every_endpoint() {
    let rules = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: every}
spec:
  host: api.example.com
  subsets: [{name: every}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: other}
spec:
  host: other.example.com
  subsets: [{name: all}]
---
"#;
    let t = table(&format!(
        "{rules}{}",
        vs("  - route: [{destination: {host: api.example.com, subset: every}}]\n")
    ));
    let r = req("GET", "/", &[]);
    let (route, _) = t
        .route("api.example.com", 80, "http", "api.example.com", &r)
        .unwrap()
        .unwrap();
    let Action::Route { destinations, .. } = &route.action else {
        panic!("{:?}", route.action)
    };
    assert_eq!(destinations[0].plan(80).unwrap().1.targets.len(), 2);

    let to_other = vs(
        "  - route: [{destination: {host: other.example.com, subset: all, port: {number: 80}}}]\n",
    );
    let t = table(&format!("{rules}{to_other}"));
    let (route, _) = t
        .route("api.example.com", 80, "http", "api.example.com", &r)
        .unwrap()
        .unwrap();
    let Action::Route { destinations, .. } = &route.action else {
        panic!("{:?}", route.action)
    };
    let targets = destinations[0].plan(80).unwrap().1.targets;
    assert_eq!(targets.len(), 1);
    assert!(
        format!("{targets:?}").contains("other.example.com"),
        "{targets:?}"
    );
}

/// A VirtualService with only `tls` routes for a host leaves that host's plain HTTP to the
/// registry (it was once refused with 404 no-route).
#[test]
fn tls_only_virtual_service_does_not_capture_http() {
    let tls_only = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls-only}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{port: 443, sniHosts: [api.example.com]}]
    route: [{destination: {host: api.example.com, port: {number: 80}}}]
"#;
    let t = table(tls_only);
    let r = req("GET", "/", &[]);
    assert!(
        t.route("api.example.com", 80, "http", "api.example.com", &r)
            .is_none()
    );
    assert!(t.tls_route("api.example.com", 443).is_some());
}
