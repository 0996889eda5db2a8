use super::*;
use crate::identity::RequestAuth;
use crate::istio::{Binding, ConfigSet};
use http::HeaderMap;

fn identity() -> Identity {
    Identity::new(
        "istio-system/istio-egressgateway",
        &[("istio".into(), "egressgateway".into())],
        &Binding::default(),
    )
}

fn policies(yaml: &str) -> AuthzPolicies {
    let set = ConfigSet::load_str("t.yaml", yaml);
    assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
    AuthzPolicies::compile(&set, &identity())
        .expect("compiles")
        .0
}

fn policy(action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{}, namespace: istio-system}}\nspec:\n  action: {action}\n{rules}",
        action.to_lowercase()
    )
}

struct Req {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    port: u16,
    peer: &'static str,
    principal: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    http: bool,
    auth: Option<RequestAuth>,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            method: "GET",
            path: "/",
            host: "api.example.com",
            port: 80,
            peer: "10.0.0.5",
            principal: None,
            headers: Vec::new(),
            http: true,
            auth: None,
        }
    }
}

fn decide(p: &AuthzPolicies, r: &Req) -> bool {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        );
    }
    let (principal, namespace) = match r.principal {
        Some(p) => {
            let (p, ns) = Attributes::split_principal(p);
            (Some(p), ns)
        }
        None => (None, None),
    };
    let peer: IpAddr = r.peer.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let a = Attributes {
        http: r.http.then_some(HttpAttributes {
            method: r.method,
            path: r.path,
            headers: &headers,
            auth: r.auth.as_ref(),
        }),
        source_ip: Some(peer),
        remote_ip: Some(peer),
        principal,
        namespace,
        host: r.host,
        port: r.port,
        destination_ip: r.host.parse().ok(),
        sni: None,
    };
    p.evaluate(&a).allowed
}

#[test]
fn evaluation_order_and_empty_rules() {
    // No policy: allowed.
    assert!(decide(&policies(""), &Req::default()));
    // ALLOW with no rules matches nothing: everything denied.
    let p = policies(&policy("ALLOW", ""));
    assert!(!decide(&p, &Req::default()));
    // `rules: [{}]` matches everything.
    let p = policies(&policy("ALLOW", "  rules: [{}]\n"));
    assert!(decide(&p, &Req::default()));
    // DENY wins over ALLOW.
    let both = policy("ALLOW", "  rules: [{}]\n")
        + "---\n"
        + &policy(
            "DENY",
            "  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n",
        );
    let p = policies(&both);
    assert!(decide(&p, &Req::default()));
    assert!(!decide(
        &p,
        &Req {
            path: "/admin/x",
            ..Req::default()
        }
    ));
    // AUDIT never changes the outcome.
    let p = policies(&policy("AUDIT", "  rules: [{}]\n"));
    assert!(decide(&p, &Req::default()));
    // DENY with no rules denies nothing.
    let p = policies(&policy("DENY", ""));
    assert!(decide(&p, &Req::default()));
}

#[test]
fn every_field_and_its_not_form() {
    let cases: &[(&str, Req, bool)] = &[
        (
            "  - to: [{operation: {hosts: [API.example.com]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - to: [{operation: {hosts: [\"*.example.com\"]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - to: [{operation: {hosts: [\"api.example.com:80\"]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - to: [{operation: {hosts: [\"api.example.com:443\"]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - to: [{operation: {hosts: [\"[2001:db8::1]:80\"]}}]\n",
            Req {
                host: "2001:db8::1",
                ..Req::default()
            },
            true,
        ),
        (
            "  - to: [{operation: {hosts: [\"2001:db8::1\"]}}]\n",
            Req {
                host: "2001:db8::1",
                ..Req::default()
            },
            true,
        ),
        (
            "  - to: [{operation: {notHosts: [\"api.*\"]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - to: [{operation: {ports: [\"80\"]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - to: [{operation: {notPorts: [\"80\"]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - to: [{operation: {methods: [GET, HEAD]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - to: [{operation: {methods: [POST]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - to: [{operation: {notMethods: [GET]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - to: [{operation: {paths: [\"/ok\"]}}]\n",
            Req {
                path: "/ok",
                ..Req::default()
            },
            true,
        ),
        (
            "  - to: [{operation: {paths: [\"/OK\"]}}]\n",
            Req {
                path: "/ok",
                ..Req::default()
            },
            false,
        ),
        (
            "  - to: [{operation: {paths: [\"*.json\"]}}]\n",
            Req {
                path: "/a.json",
                ..Req::default()
            },
            true,
        ),
        (
            "  - to: [{operation: {notPaths: [\"/a*\"]}}]\n",
            Req {
                path: "/a.json",
                ..Req::default()
            },
            false,
        ),
        (
            "  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - from: [{source: {ipBlocks: [\"10.0.0.5\"]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - from: [{source: {notIpBlocks: [10.0.0.0/8]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - from: [{source: {ipBlocks: [192.168.0.0/16]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - from: [{source: {principals: [\"cluster.local/ns/apps/sa/client\"]}}]\n",
            Req {
                principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
                ..Req::default()
            },
            true,
        ),
        (
            "  - from: [{source: {principals: [\"*\"]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - from: [{source: {notPrincipals: [\"*/sa/client\"]}}]\n",
            Req {
                principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
                ..Req::default()
            },
            false,
        ),
        (
            "  - from: [{source: {namespaces: [apps]}}]\n",
            Req {
                principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
                ..Req::default()
            },
            true,
        ),
        (
            "  - from: [{source: {notNamespaces: [apps]}}]\n",
            Req {
                principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
                ..Req::default()
            },
            false,
        ),
        (
            "  - from: [{source: {requestPrincipals: [\"*\"]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]\n",
            Req::default(),
            true,
        ),
        (
            "  - when: [{key: \"request.headers[x-team]\", values: [blue]}]\n",
            Req {
                headers: vec![("x-team", "blue")],
                ..Req::default()
            },
            true,
        ),
        (
            "  - when: [{key: \"request.headers[x-team]\", values: [blue]}]\n",
            Req::default(),
            false,
        ),
        (
            "  - when: [{key: \"request.headers[x-team]\", notValues: [red]}]\n",
            Req::default(),
            true,
        ),
        (
            "  - when: [{key: \"request.headers[x-team]\", notValues: [red]}]\n",
            Req {
                headers: vec![("x-team", "red")],
                ..Req::default()
            },
            false,
        ),
        (
            "  - when: [{key: source.ip, values: [10.0.0.0/24]}]\n",
            Req::default(),
            true,
        ),
        (
            "  - when: [{key: destination.port, values: [\"80\"]}]\n",
            Req::default(),
            true,
        ),
        (
            "  - when: [{key: destination.port, values: [\"443\"]}]\n",
            Req::default(),
            false,
        ),
        (
            "  - when: [{key: destination.ip, values: [203.0.113.0/24]}]\n",
            Req {
                host: "203.0.113.7",
                ..Req::default()
            },
            true,
        ),
        (
            "  - when: [{key: source.namespace, values: [apps]}]\n",
            Req {
                principal: Some("spiffe://td/ns/apps/sa/x"),
                ..Req::default()
            },
            true,
        ),
        (
            "  - when: [{key: source.principal, values: [\"td/ns/apps/sa/x\"]}]\n",
            Req {
                principal: Some("spiffe://td/ns/apps/sa/x"),
                ..Req::default()
            },
            true,
        ),
        // Fields of one rule are ANDed; entries of a list are ORed.
        (
            "  - to: [{operation: {methods: [GET], paths: [\"/x\"]}}]\n",
            Req::default(),
            false,
        ),
        (
            "  - to: [{operation: {methods: [POST]}}, {operation: {paths: [\"/\"]}}]\n",
            Req::default(),
            true,
        ),
    ];
    for (rules, req, want) in cases {
        let p = policies(&policy("ALLOW", &format!("  rules:\n{rules}")));
        assert_eq!(decide(&p, req), *want, "{rules}");
    }
}

#[test]
fn jwt_fields() {
    let auth = RequestAuth {
        principal: "https://issuer.test/alice".into(),
        audiences: vec!["egress".into()],
        presenter: Some("cli".into()),
        claims: serde_json::json!({"groups": ["dev", "ops"], "org": {"team": "blue"}, "level": 3}),
    };
    let with = || Req {
        auth: Some(auth.clone()),
        ..Req::default()
    };
    let cases: &[(&str, bool, bool)] = &[
        (
            "  - from: [{source: {requestPrincipals: [\"https://issuer.test/*\"]}}]\n",
            true,
            false,
        ),
        (
            "  - from: [{source: {notRequestPrincipals: [\"*\"]}}]\n",
            false,
            true,
        ),
        (
            "  - when: [{key: request.auth.principal, values: [\"https://issuer.test/alice\"]}]\n",
            true,
            false,
        ),
        (
            "  - when: [{key: request.auth.audiences, values: [egress]}]\n",
            true,
            false,
        ),
        (
            "  - when: [{key: request.auth.presenter, values: [cli]}]\n",
            true,
            false,
        ),
        (
            "  - when: [{key: \"request.auth.claims[groups]\", values: [ops]}]\n",
            true,
            false,
        ),
        (
            "  - when: [{key: \"request.auth.claims[org][team]\", values: [blue]}]\n",
            true,
            false,
        ),
        (
            "  - when: [{key: \"request.auth.claims[level]\", values: [\"3\"]}]\n",
            true,
            false,
        ),
        (
            "  - when: [{key: \"request.auth.claims[groups]\", notValues: [ops]}]\n",
            false,
            true,
        ),
    ];
    for (rules, with_token, without) in cases {
        let p = policies(&policy("ALLOW", &format!("  rules:\n{rules}")));
        assert_eq!(decide(&p, &with()), *with_token, "with token: {rules}");
        assert_eq!(decide(&p, &Req::default()), *without, "without: {rules}");
    }
}

#[test]
fn http_only_fields_on_l4_traffic() {
    let l4 = Req {
        http: false,
        port: 443,
        ..Req::default()
    };
    // ALLOW: a rule with an HTTP-only field is dropped, so nothing matches.
    let p = policies(&policy(
        "ALLOW",
        "  rules:\n  - to: [{operation: {hosts: [api.example.com], methods: [GET]}}]\n",
    ));
    assert!(!decide(&p, &l4));
    // ...while the same host without the HTTP-only field matches.
    let p = policies(&policy(
        "ALLOW",
        "  rules:\n  - to: [{operation: {hosts: [api.example.com], ports: [\"443\"]}}]\n",
    ));
    assert!(decide(&p, &l4));
    // DENY: the HTTP-only field is ignored, so the rest still denies.
    let p = policies(&policy(
        "DENY",
        "  rules:\n  - to: [{operation: {hosts: [api.example.com], paths: [\"/admin\"]}}]\n",
    ));
    assert!(!decide(&p, &l4));
    let p = policies(&policy(
        "DENY",
        "  rules:\n  - when: [{key: \"request.headers[x-a]\", values: [b]}]\n    to: [{operation: {hosts: [other.com]}}]\n",
    ));
    assert!(decide(&p, &l4));
}

#[test]
fn scope_decides_which_policies_apply() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other, namespace: apps}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: wrong-labels, namespace: istio-system}\nspec: {selector: {matchLabels: {app: other}}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mine, namespace: istio-system}\nspec: {selector: {matchLabels: {istio: egressgateway}}, rules: [{}]}\n";
    let set = ConfigSet::load_str("t.yaml", yaml);
    let (p, warnings) = AuthzPolicies::compile(&set, &identity()).expect("compiles");
    assert_eq!(
        p.summary()
            .iter()
            .filter(|s| s.applies.is_ok())
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["istio-system/mine"]
    );
    assert_eq!(warnings.warnings().count(), 2, "{warnings}");
    assert!(decide(&p, &Req::default()));
    // No namespace written: meant for this gateway.
    let p = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: plain}\nspec: {}\n",
    );
    assert!(!decide(&p, &Req::default()));
}

#[test]
fn invalid_policies_name_the_field() {
    let bad: &[(&str, &str)] = &[
        (
            "  rules:\n  - to: [{operation: {paths: [\"/a*b\"]}}]\n",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "  rules:\n  - when: [{key: request.nope, values: [x]}]\n",
            "unknown condition key",
        ),
        (
            "  rules:\n  - when: [{key: source.ip, values: [not-an-ip]}]\n",
            "not an IP address",
        ),
        (
            "  rules:\n  - from: [{source: {ipBlocks: [300.1.1.1]}}]\n",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            "  rules:\n  - to: [{operation: {ports: [\"http\"]}}]\n",
            "not a port number",
        ),
        (
            "  rules:\n  - from: [{source: {}}]\n",
            "a source needs at least one field",
        ),
        (
            "  rules:\n  - when: [{key: source.ip}]\n",
            "needs values or notValues",
        ),
    ];
    for (rules, want) in bad {
        let set = ConfigSet::load_str("t.yaml", &policy("ALLOW", rules));
        let errs: Vec<String> = set.diagnostics.errors().map(|d| d.to_string()).collect();
        assert!(errs.iter().any(|e| e.contains(want)), "{rules}\n{errs:#?}");
    }
    let set = ConfigSet::load_str("t.yaml", &policy("CUSTOM", "  rules: [{}]\n"));
    assert!(
        set.diagnostics
            .errors()
            .any(|d| d.to_string().contains("CUSTOM needs provider.name")),
        "{}",
        set.diagnostics
    );
    let set = ConfigSet::load_str(
        "t.yaml",
        &policy("CUSTOM", "  provider: {name: nowhere}\n  rules: [{}]\n"),
    );
    assert!(!set.diagnostics.has_errors());
    let e = AuthzPolicies::compile(&set, &identity()).unwrap_err();
    assert!(e.to_string().contains("nowhere"), "{e}");
}

#[test]
fn remote_ip_uses_trusted_hops_only() {
    let mut h = HeaderMap::new();
    h.insert(
        "x-forwarded-for",
        "1.1.1.1, 2.2.2.2"
            .parse()
            .unwrap_or_else(|_| http::HeaderValue::from_static("")),
    );
    let peer = Some(IpAddr::from([10, 0, 0, 1]));
    assert_eq!(remote_ip(&h, peer, 0), Ok(peer));
    assert_eq!(remote_ip(&h, peer, 1), Ok(Some(IpAddr::from([2, 2, 2, 2]))));
    assert_eq!(remote_ip(&h, peer, 2), Ok(Some(IpAddr::from([1, 1, 1, 1]))));
    assert_eq!(remote_ip(&h, peer, 3), Ok(peer));
    h.insert("x-forwarded-for", http::HeaderValue::from_static("junk"));
    assert!(remote_ip(&h, peer, 1).is_err());
}

#[test]
fn the_host_index_keeps_declaration_order() {
    // The first DENY policy cannot be indexed (no hosts); the second is filed by host.
    let yaml = policy(
        "DENY",
        "  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]\n",
    )
    .replace("p-deny", "first")
        + "---\n"
        + &policy(
            "DENY",
            "  rules:\n  - to: [{operation: {hosts: [api.example.com, \"*.example.org\"]}}]\n",
        )
        .replace("p-deny", "second");
    let p = policies(&yaml);
    let a = |host: &'static str, peer: &'static str| Req {
        host,
        peer,
        ..Req::default()
    };
    let who = |r: &Req| -> Option<String> {
        let headers = HeaderMap::new();
        let peer: IpAddr = r.peer.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let attrs = Attributes {
            http: Some(HttpAttributes {
                method: "GET",
                path: "/",
                headers: &headers,
                auth: None,
            }),
            source_ip: Some(peer),
            remote_ip: Some(peer),
            principal: None,
            namespace: None,
            host: r.host,
            port: 80,
            destination_ip: None,
            sni: None,
        };
        p.evaluate(&attrs).policy.map(|s| s.to_string())
    };
    assert_eq!(
        who(&a("api.example.com", "10.1.1.1")).as_deref(),
        Some("istio-system/first")
    );
    assert_eq!(
        who(&a("api.example.com", "192.0.2.1")).as_deref(),
        Some("istio-system/second")
    );
    assert_eq!(
        who(&a("a.b.example.org", "192.0.2.1")).as_deref(),
        Some("istio-system/second")
    );
    assert_eq!(who(&a("example.org", "192.0.2.1")), None);
    assert_eq!(who(&a("other.com", "192.0.2.1")), None);
}

/// Header conditions read bytes, and several lines never help a client: a DENY fires on any
/// line, an ALLOW needs every line.
#[test]
fn header_conditions_on_bytes_and_lines() {
    let deny = policies(&policy(
        "DENY",
        "  rules:\n  - when: [{key: \"request.headers[X-User]\", values: [\"evil*\"]}]\n  - when: [{key: \"request.headers[x-env]\", notValues: [\"prod\"]}]\n",
    ));
    let allow = policies(&policy(
        "ALLOW",
        "  rules:\n  - when: [{key: \"request.headers[x-team]\", values: [\"blue\", \"*-ops\"]}]\n",
    ));
    let run = |p: &AuthzPolicies, lines: &[(&'static str, &[u8])]| {
        let mut headers = HeaderMap::new();
        for (k, v) in lines {
            headers.append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let a = Attributes {
            http: Some(HttpAttributes {
                method: "GET",
                path: "/",
                headers: &headers,
                auth: None,
            }),
            source_ip: None,
            remote_ip: None,
            principal: None,
            namespace: None,
            host: "api.example.com",
            port: 80,
            destination_ip: None,
            sni: None,
        };
        p.evaluate(&a).allowed
    };
    let prod: (&str, &[u8]) = ("x-env", b"prod");
    assert!(run(&deny, &[prod]));
    assert!(
        !run(&deny, &[prod, ("x-user", b"evil\xff")]),
        "obs-text prefix"
    );
    assert!(!run(&deny, &[prod, ("x-user", b"  evil  ")]), "trimmed");
    assert!(
        !run(&deny, &[prod, ("x-user", b"ok"), ("x-user", b"evil")]),
        "any line"
    );
    assert!(
        !run(&deny, &[prod, ("x-env", b"dev")]),
        "notValues on any line"
    );
    assert!(!run(&deny, &[]), "notValues of an absent header");
    assert!(run(&deny, &[prod, ("x-user", b"\xffevil")]));

    assert!(run(&allow, &[("x-team", b"blue")]));
    assert!(run(&allow, &[("x-team", b"blue"), ("x-team", b"db-ops")]));
    assert!(
        !run(&allow, &[("x-team", b"blue"), ("x-team", b"red")]),
        "every line"
    );
    assert!(!run(&allow, &[("x-team", b"blue\xff")]), "exact bytes");
    assert!(run(&allow, &[("x-team", b"\xff-ops")]), "suffix of bytes");
    assert!(!run(&allow, &[]));
}

/// The engine over policies built in code, with no YAML: DENY before ALLOW, the deciding
/// policy and rule reported, and an ALLOW policy denying what none of its rules match.
#[test]
fn policies_built_in_code() {
    use crate::model::{AccessPolicy, Meta};
    let mut config = Config::default();
    config.access_policies.push(AccessPolicy::new(
        Meta::new("no-admin", "istio-system"),
        AuthzAction::Deny,
        vec![Rule {
            to: vec![Operation {
                paths: vec!["/admin*".into()],
                ..Operation::default()
            }],
            ..Rule::default()
        }],
    ));
    config.access_policies.push(AccessPolicy::new(
        Meta::new("only-get", "istio-system"),
        AuthzAction::Allow,
        vec![Rule {
            to: vec![Operation {
                methods: vec!["GET".into()],
                hosts: vec!["*.example.com".into()],
                ..Operation::default()
            }],
            ..Rule::default()
        }],
    ));
    let (p, diags) = AuthzPolicies::compile(&config, &identity()).expect("compiles");
    assert!(diags.is_empty(), "{diags}");
    assert!(decide(&p, &Req::default()));
    let post = Req {
        method: "POST",
        ..Req::default()
    };
    assert!(!decide(&p, &post));
    let other_host = Req {
        host: "example.org",
        ..Req::default()
    };
    assert!(!decide(&p, &other_host));
    let admin = Req {
        path: "/admin/users",
        ..Req::default()
    };
    assert!(!decide(&p, &admin));
    let headers = HeaderMap::new();
    let a = Attributes {
        http: Some(HttpAttributes {
            method: "GET",
            path: "/admin/users",
            headers: &headers,
            auth: None,
        }),
        source_ip: None,
        remote_ip: None,
        principal: None,
        namespace: None,
        host: "api.example.com",
        port: 80,
        destination_ip: None,
        sni: None,
    };
    let d = p.evaluate(&a);
    assert_eq!(d.policy.as_deref(), Some("istio-system/no-admin"));
    assert_eq!((d.rule, d.action), (Some(0), Some(AuthzAction::Deny)));
}

/// `targetRefs` naming a ServiceEntry (or a core Service) attach a policy to that service:
/// it governs requests for its hosts and ports only; beside a ref to this gateway it governs
/// every request; a ServiceEntry that does not exist attaches to nothing, with a warning.
#[test]
fn policies_attached_to_services_govern_only_them() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: egress}\nspec:\n  hosts: [api.example.com, \"*.api.example.com\"]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: NONE\n---\n";
    let attached = |refs: &str, action: &str| {
        format!(
            "{se}apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: egress}}\nspec:\n  targetRefs: {refs}\n  action: {action}\n  rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]\n"
        )
    };
    let to_se = "[{kind: ServiceEntry, group: networking.istio.io, name: api}]";
    let allow = policies(&attached(to_se, "ALLOW"));
    let req = |host, port, method| Req {
        host,
        port,
        method,
        ..Req::default()
    };
    assert!(decide(&allow, &req("api.example.com", 80, "GET")));
    assert!(!decide(&allow, &req("api.example.com", 80, "POST")));
    assert!(!decide(&allow, &req("v2.api.example.com", 80, "POST")));
    // Another service, or another port of the host: not this service's policy.
    assert!(decide(&allow, &req("other.example.com", 80, "POST")));
    assert!(decide(&allow, &req("api.example.com", 8080, "POST")));
    let deny = policies(&attached(to_se, "DENY"));
    assert!(!decide(&deny, &req("api.example.com", 80, "GET")));
    assert!(decide(&deny, &req("other.example.com", 80, "GET")));
    // Also attached to this gateway: every request.
    let both = policies(&attached(
        "[{kind: ServiceEntry, group: networking.istio.io, name: api}, {kind: Gateway, group: gateway.networking.k8s.io, name: istio-egressgateway, namespace: istio-system}]",
        "DENY",
    ));
    assert!(!decide(&both, &req("other.example.com", 80, "GET")));
    // A core Service by its cluster name.
    let svc = policies(&attached("[{kind: Service, name: api}]", "DENY"));
    assert!(!decide(
        &svc,
        &req("api.egress.svc.cluster.local", 80, "GET")
    ));
    assert!(decide(&svc, &req("api.example.com", 80, "GET")));
    // A ServiceEntry that is not there.
    let set = ConfigSet::load_str(
        "t.yaml",
        &attached(
            "[{kind: ServiceEntry, group: networking.istio.io, name: gone}]",
            "ALLOW",
        ),
    );
    let (missing, diags) = AuthzPolicies::compile(&set, &identity()).unwrap();
    assert!(
        diags
            .to_string()
            .contains("spec.targetRefs[0]: ServiceEntry egress/gone is not in the configuration"),
        "{diags}"
    );
    assert!(decide(&missing, &req("api.example.com", 80, "POST")));
}
