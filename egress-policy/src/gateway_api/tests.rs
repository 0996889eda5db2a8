//! The Gateway API front end: reading, attachment and status, precedence, over YAML as
//! users write it.

#![allow(clippy::unwrap_used, reason = "tests")]

use crate::compile::{Settings, compile};
use crate::istio::ConfigSet;
use crate::model::Config;
use http::Request;

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com, a.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com", allowedRoutes: {namespaces: {from: Same}}}
"#;

fn http_route(name: &str, namespace: &str, hostnames: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  parentRefs: [{{name: egress, namespace: default}}]\n  hostnames: {hostnames}\n  rules:\n{rules}"
    )
}

fn load(extra: &str) -> Config {
    ConfigSet::load_str("gw.yaml", &format!("{SERVICES}{extra}"))
}

/// The route id a GET for `path` on `host` takes.
fn chosen(config: &Config, host: &str, path: &str) -> String {
    let compiled = compile(config, &Settings::default()).unwrap_or_else(|d| panic!("{d}"));
    let req = Request::get(path).body(()).unwrap();
    match compiled.policy.routes.route(host, 80, "http", host, &req) {
        None => "none".into(),
        Some(None) => "404".into(),
        Some(Some((r, _))) => r.id.to_string(),
    }
}

fn status(config: &Config, route: &str) -> (bool, &'static str) {
    let s = config
        .route_status
        .iter()
        .find(|s| s.route.ends_with(route))
        .unwrap_or_else(|| panic!("{:?}", config.route_status));
    (s.accepted, s.reason)
}

#[test]
fn rules_of_every_route_for_a_host_follow_gateway_api_precedence() {
    let config = load(
        &(http_route(
            "catch-all",
            "default",
            "[api.example.com]",
            "  - backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n",
        ) + &http_route(
            "specific",
            "default",
            "[api.example.com]",
            r#"  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]
  - matches: [{path: {type: Exact, value: /login}}, {path: {type: PathPrefix, value: /api/v2/}}]
    backendRefs: [{kind: Hostname, group: networking.istio.io, name: a.example.com, port: 80}]
"#,
        )),
    );
    assert!(!config.diagnostics.has_errors(), "{}", config.diagnostics);
    let at = |path: &str| chosen(&config, "api.example.com", path);
    assert_eq!(at("/login"), "default.specific.1");
    assert_eq!(at("/api/v2/items"), "default.specific.1");
    assert_eq!(at("/api/v2"), "default.specific.1");
    assert_eq!(at("/api/items"), "default.specific.0");
    assert_eq!(at("/api"), "default.specific.0");
    // By segments: /apix is not under /api.
    assert_eq!(at("/apix"), "default.catch-all.0");
    assert_eq!(at("/"), "default.catch-all.0");
    assert_eq!(status(&config, "specific"), (true, "Accepted"));
}

#[test]
fn hostnames_intersect_with_the_listener_and_namespaces_are_checked() {
    let to_api = "  - backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n";
    let config = load(
        &(http_route("both", "default", "[a.example.com, other.org]", to_api)
            + &http_route("elsewhere", "default", "[other.org]", to_api)
            + &http_route("foreign", "team", "[api.example.com]", to_api)),
    );
    assert_eq!(chosen(&config, "a.example.com", "/"), "default.both.0");
    assert_eq!(chosen(&config, "other.org", "/"), "none");
    assert_eq!(
        status(&config, "elsewhere"),
        (false, "NoMatchingListenerHostname")
    );
    // allowedRoutes From: Same, and the route is in another namespace.
    assert_eq!(status(&config, "foreign"), (false, "NotAllowedByListeners"));
    assert_eq!(chosen(&config, "api.example.com", "/"), "none");
    let warnings = config.diagnostics.to_string();
    assert!(
        warnings.contains("gw.yaml:") && warnings.contains("NotAllowedByListeners"),
        "{warnings}"
    );
}

#[test]
fn backends_in_other_namespaces_need_a_reference_grant() {
    let rules = "  - backendRefs: [{name: api, namespace: backends, port: 80}]\n";
    let registry = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cluster}\nspec:\n  hosts: [api.backends.svc.cluster.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
    let route = http_route("cross", "default", "[api.example.com]", rules);
    let config = load(&format!("{registry}{route}"));
    assert_eq!(status(&config, "cross"), (true, "RefNotPermitted"));
    let compiled = compile(&config, &Settings::default()).unwrap();
    let req = Request::get("/").body(()).unwrap();
    let (r, _) = compiled
        .policy
        .routes
        .route("api.example.com", 80, "http", "api.example.com", &req)
        .unwrap()
        .unwrap();
    assert!(
        matches!(&r.action, crate::routes::Action::Direct(d) if d.status == 500),
        "{:?}",
        r.action
    );

    let grant = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: backends}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]\n  to: [{group: \"\", kind: Service}]\n";
    let config = load(&format!("{registry}{route}{grant}"));
    assert_eq!(status(&config, "cross"), (true, "Accepted"));
    assert_eq!(chosen(&config, "api.example.com", "/"), "default.cross.0");
}

/// For a host that both APIs route on the same gateway, the Gateway API route is used and
/// the VirtualService is reported as ignored for it.
#[test]
fn gateway_api_routes_win_over_a_virtual_service_for_the_same_host() {
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: legacy}\nspec:\n  hosts: [api.example.com]\n  gateways: [egress]\n  http:\n  - route: [{destination: {host: a.example.com}}]\n";
    let route = http_route(
        "new",
        "default",
        "[api.example.com]",
        "  - backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n",
    );
    let config = load(&format!("{vs}{route}"));
    assert_eq!(chosen(&config, "api.example.com", "/"), "default.new.0");
    let compiled = compile(&config, &Settings::default()).unwrap();
    let warnings = compiled.diagnostics.to_string();
    assert!(
        warnings.contains("VirtualService default/legacy") && warnings.contains("ignored"),
        "{warnings}"
    );
}

#[test]
fn filters_rewrite_redirect_and_set_headers() {
    let config = load(&http_route(
        "filters",
        "default",
        "[api.example.com]",
        r#"  - matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301}
  - matches: [{path: {value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Env, value: prod}], remove: [x-debug]}
    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]
"#,
    ));
    assert!(!config.diagnostics.has_errors(), "{}", config.diagnostics);
    let hosts = &config.virtual_hosts[0];
    let redirect = hosts.http.iter().find(|r| r.redirect.is_some()).unwrap();
    let rd = redirect.redirect.as_ref().unwrap();
    assert_eq!(
        (rd.scheme.as_deref(), rd.redirect_code),
        (Some("https"), 301)
    );
    let rewrite = hosts.http.iter().find(|r| r.rewrite.is_some()).unwrap();
    assert_eq!(rewrite.rewrite.as_ref().unwrap().uri.as_deref(), Some("/"));
    assert_eq!(
        rewrite.headers.request.set,
        [("x-env".to_owned(), "prod".to_owned())]
    );
    assert_eq!(rewrite.headers.request.remove, ["x-debug"]);
}

#[test]
fn errors_name_file_line_and_field() {
    for (yaml, want) in [
        (
            http_route("r", "default", "[api.example.com]", "  - filters: [{type: CORS}]\n"),
            "spec.rules[0].filters[0].type: filter \"CORS\" is not supported here",
        ),
        (
            http_route("r", "default", "[api.example.com]", "  - matches: [{path: {type: Exact, value: nope}}]\n"),
            "spec.rules[0].matches[0].path.value: a path starts with /",
        ),
        (
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: https, port: 443, protocol: HTTPS}]\n".to_owned(),
            "spec.listeners[0].tls: an HTTPS listener terminates TLS",
        ),
        (
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: secret}]}}]\n".to_owned(),
            "spec.listeners[0].tls.certificateRefs[0].name: \"secret\" names a Kubernetes Secret: give --credentials DIR",
        ),
        (
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {options: {gateway.istio.io/tls-terminate-mode: PERMISSIVE}}}]\n".to_owned(),
            "spec.listeners[0].tls.options: gateway.istio.io/tls-terminate-mode: \"PERMISSIVE\" is not one of",
        ),
        (
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {options: {gateway.istio.io/tls-terminate-mode: MUTUAL, egress.io/server-certificate: Cargo.toml, egress.io/private-key: Cargo.toml}}}]\n".to_owned(),
            "a MUTUAL listener needs egress.io/ca-certificates",
        ),
    ] {
        let config = load(&yaml);
        let text = config.diagnostics.to_string();
        assert!(text.contains("gw.yaml:") && text.contains(want), "want {want}\n{text}");
    }
}

/// Two Gateway API Gateways: none is assumed; the gateway-name label picks one.
#[test]
fn a_gateway_api_gateway_is_chosen_by_label_when_there_are_several() {
    let second = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: other}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 8080, protocol: HTTP}]\n";
    let config = load(second);
    let compiled = compile(&config, &Settings::default()).unwrap();
    assert!(
        compiled.binding.selected.is_empty(),
        "{:?}",
        compiled.binding.selected
    );
    let settings = Settings {
        gateway_labels: vec![(crate::identity::GATEWAY_NAME_LABEL.into(), "other".into())],
        ..Settings::default()
    };
    let compiled = compile(&config, &settings).unwrap();
    assert_eq!(compiled.binding.selected, ["default/other"]);
}

/// `ISTIO_MUTUAL` listeners take the mesh certificates of `Settings::mesh_certs` (chain, key,
/// and root to verify clients); without them the Gateway is refused at its listener.
#[test]
fn istio_mutual_listeners_terminate_with_the_mesh_certificates() {
    let yaml = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: mtls}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {mode: Terminate, options: {gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL}}}]\n";
    let config = ConfigSet::load_str("gw.yaml", yaml);
    assert!(config.diagnostics.is_empty(), "{}", config.diagnostics);
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        mesh_certs: dir.path().to_owned(),
        ..Settings::default()
    };
    let err = compile(&config, &settings).unwrap_err().to_string();
    assert!(
        err.contains("gw.yaml:2:1")
            && err.contains("spec.listeners[0].tls.options")
            && err.contains("cert-chain.pem cannot be read"),
        "{err}"
    );
    for f in crate::compile::MESH_CERT_FILES {
        std::fs::write(dir.path().join(f), "pem").unwrap();
    }
    let compiled = compile(&config, &settings).unwrap();
    let server = &compiled.policy.config.gateways[0].servers[0];
    assert_eq!(server.tls_mode.as_deref(), Some("ISTIO_MUTUAL"));
    let root = dir.path().join("root-cert.pem").display().to_string();
    assert_eq!(
        server.tls_files.ca_certificates.as_deref(),
        Some(root.as_str())
    );
}

/// `GRPCRoute` method matches are paths `/{service}/{method}`: both names exact, a service
/// alone (its segment, not a longer service name), a method alone, regular expressions;
/// the rest is an HTTPRoute's (header filters, backends, attachment).
#[test]
fn grpc_routes_match_service_and_method() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: egress}]\n  hostnames: [api.example.com]\n  rules:\n  - matches: [{method: {service: grpc.health.v1.Health, method: Check}}]\n    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n  - matches: [{method: {service: pkg.Users}}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-svc, value: users}]}}]\n    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n  - matches: [{method: {method: Watch}}]\n    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n  - matches: [{method: {type: RegularExpression, service: \"pkg\\\\.v[0-9]+\\\\.Orders\"}}]\n    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]\n";
    let config = load(route);
    assert!(config.diagnostics.is_empty(), "{}", config.diagnostics);
    assert_eq!(status(&config, "GRPCRoute default/g"), (true, "Accepted"));
    for (path, want) in [
        ("/grpc.health.v1.Health/Check", "default.g.0"),
        ("/grpc.health.v1.Health/Watch", "default.g.2"),
        ("/pkg.Users/Get", "default.g.1"),
        ("/pkg.Orders/Watch", "default.g.2"),
        ("/pkg.v2.Orders/List", "default.g.3"),
        ("/pkg.UsersExtra/Get", "404"),
        ("/pkg.v2.Orders/List/extra", "404"),
    ] {
        assert_eq!(chosen(&config, "api.example.com", path), want, "{path}");
    }
    for (yaml, want) in [
        (
            route.replace("{method: {method: Watch}}", "{method: {}}"),
            "spec.rules[2].matches[0].method: an Exact method match needs a service, a method, or both",
        ),
        (
            route.replace("method: Check", "method: a/b"),
            "spec.rules[0].matches[0].method.method: \"a/b\" is not a gRPC method name",
        ),
        (
            route.replace("type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-svc, value: users}]}", "type: URLRewrite, urlRewrite: {hostname: x}"),
            "spec.rules[1].filters[0].type: filter \"URLRewrite\" is not supported here",
        ),
    ] {
        let text = load(&yaml).diagnostics.to_string();
        assert!(text.contains(want), "want {want}\n{text}");
    }
}
