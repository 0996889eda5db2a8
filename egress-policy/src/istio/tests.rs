use super::*;

fn load(text: &str) -> ConfigSet {
    ConfigSet::load_str("test.yaml", text)
}

fn errors(text: &str) -> Vec<String> {
    load(text)
        .diagnostics
        .errors()
        .map(|d| d.to_string())
        .collect()
}

fn warnings(text: &str) -> Vec<String> {
    load(text)
        .diagnostics
        .warnings()
        .map(|d| d.to_string())
        .collect()
}

const GOOD: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
  namespace: egress
spec:
  hosts:
  - Api.Example.com.
  - "*.wikipedia.org"
  addresses: ["203.0.113.0/24"]
  ports:
  - number: 80
    name: http
    protocol: http
  - number: 443
    name: tls
    protocol: TLS
    targetPort: 8443
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: 203.0.113.7
    ports: { http: 8080 }
    labels: { version: v1 }
    weight: 3
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: { name: default, namespace: istio-system }
spec:
  outboundTrafficPolicy:
    mode: ALLOW_ANY
"#;

#[test]
fn reads_service_entry_and_sidecar() {
    let set = load(GOOD);
    assert!(set.diagnostics.is_empty(), "{}", set.diagnostics);
    let se = &set.services[0];
    assert_eq!(se.meta.id(), "egress/external");
    assert_eq!(se.meta.line, 2);
    assert_eq!(se.hosts, ["api.example.com", "*.wikipedia.org"]);
    assert_eq!(
        se.addresses,
        ["203.0.113.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(se.ports[0].protocol, Protocol::Http);
    assert_eq!(se.ports[1].target_port, Some(8443));
    assert_eq!(se.resolution, Resolution::Static);
    assert_eq!(se.endpoints[0].ports, [("http".to_owned(), 8080)]);
    assert_eq!(se.endpoints[0].weight, Some(3));
    assert_eq!(se.export_to, ["."]);
    assert_eq!(
        set.outbound_settings[0].outbound,
        Some(OutboundPolicy::AllowAny)
    );
}

#[test]
fn every_api_version_is_accepted() {
    for v in ["v1", "v1beta1", "v1alpha3"] {
        let text = format!(
            "apiVersion: networking.istio.io/{v}\nkind: ServiceEntry\nmetadata: {{name: a}}\nspec:\n  hosts: [a.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
        );
        assert!(errors(&text).is_empty(), "{v}");
    }
    let bad = errors(
        "apiVersion: networking.istio.io/v2\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {}\n",
    );
    assert!(bad[0].contains("unsupported apiVersion"), "{bad:?}");
}

fn se(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bad\nspec:\n{spec}"
    )
}

#[test]
fn validation_errors_name_file_line_resource_field() {
    let cases: &[(&str, &str)] = &[
        (
            "  hosts: ['*']\n  ports: [{number: 80, name: http}]\n",
            "test.yaml:6:11: error: ServiceEntry default/bad: spec.hosts[0]: the wildcard host \"*\" is not allowed",
        ),
        (
            "  hosts: [a.com]\n  ports:\n  - {number: 80, name: a}\n  - {number: 80, name: b}\n",
            "test.yaml:9:5: error: ServiceEntry default/bad: spec.ports[1].number: port 80 is defined twice",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80, name: http}]\n  resolution: NONE\n  endpoints: [{address: 1.2.3.4}]\n",
            "spec.endpoints: no endpoints may be given with resolution NONE",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: \"80\", name: http}]\n",
            "test.yaml:7:20: error: ServiceEntry default/bad: spec.ports[0].number: expected a number, got \"80\" (quoted)",
        ),
        (
            "  hosts: a.com\n  ports: [{number: 80}]\n",
            "spec.hosts: expected a list, got scalar",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 0}]\n",
            "0 is out of range 1..=65535",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80, protocol: QUIC}]\n",
            "unknown protocol \"QUIC\"",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80, name: Bad_Name}]\n",
            "invalid port name",
        ),
        (
            "  hosts: [a.com]\n",
            "spec.ports: a ServiceEntry needs at least one port",
        ),
        (
            "  ports: [{number: 80}]\n",
            "spec.hosts: a ServiceEntry needs at least one host",
        ),
        (
            "  hosts: ['a.*.com']\n  ports: [{number: 80}]\n",
            "only allowed as a leading",
        ),
        (
            "  hosts: ['0x7f.1']\n  ports: [{number: 80}]\n",
            "ambiguous numeric host",
        ),
        (
            "  hosts: [a.com]\n  addresses: [300.1.1.1]\n  ports: [{number: 80}]\n",
            "is not an IP address or CIDR",
        ),
        (
            "  hosts: [a.com]\n  addresses: [10.0.0.0/8]\n  ports: [{number: 80}]\n  resolution: DNS\n",
            "CIDR addresses are allowed only with resolution NONE or STATIC",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80}]\n  resolution: STATIC\n",
            "resolution STATIC needs endpoints",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80}]\n  resolution: STATIC\n  endpoints: [{address: a.example}]\n",
            "is not an IP address (resolution STATIC)",
        ),
        (
            "  hosts: ['*.a.com']\n  ports: [{number: 80}]\n  resolution: DNS\n",
            "hosts must be FQDN",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80}]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: b.com}, {address: c.com}]\n",
            "at most one endpoint",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80}]\n  resolution: DYNAMIC_DNS\n",
            "only for wildcard hosts",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80}]\n  resolution: Dns\n",
            "invalid value \"Dns\"",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 1.2.3.4, ports: {https: 443}}]\n",
            "spec.endpoints[0].ports.https: endpoint port \"https\" is not defined",
        ),
    ];
    for (spec, want) in cases {
        let errs = errors(&se(spec));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "spec:\n{spec}\nwant: {want}\ngot: {errs:#?}"
        );
    }
}

#[test]
fn unknown_fields_warn_and_other_kinds_are_reported_once() {
    let text = format!(
        "{}  ports: [{{number: 80, name: http, protocl: HTTP}}]\n  hostz: [x]\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a}}\nspec: {{}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: b}}\nspec: {{}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n",
        se("  hosts: [a.com]\n").trim_end_matches('\n').to_owned() + "\n"
    );
    let set = load(&text);
    assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
    let w: Vec<String> = set.diagnostics.warnings().map(|d| d.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("spec.ports[0].protocl: unknown field, ignored")),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|w| w.contains("spec.hostz: unknown field")),
        "{w:#?}"
    );
    let vs: Vec<_> = w
        .iter()
        .filter(|w| w.contains("PeerAuthentication ("))
        .collect();
    assert_eq!(vs.len(), 1, "{w:#?}");
    assert!(
        vs[0].contains("not yet supported, ignored (2 resources"),
        "{}",
        vs[0]
    );
    assert!(
        w.iter()
            .any(|w| w.contains("ConfigMap (v1), which is not an Istio resource")),
        "{w:#?}"
    );
    assert_eq!(set.ignored.len(), 3);
}

#[test]
fn yaml_errors_and_envelopes() {
    let e = errors("a: [1\n");
    assert!(e[0].starts_with("test.yaml:"), "{e:?}");
    assert!(e[0].contains("invalid YAML"), "{e:?}");
    let e = errors("kind: ServiceEntry\n");
    assert!(e[0].contains("needs apiVersion and kind"), "{e:?}");
    let e = errors("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: {}\n");
    assert!(e.iter().any(|e| e.contains("metadata.name")), "{e:?}");
    let e = errors("- a\n- b\n");
    assert!(e[0].contains("expected a map"), "{e:?}");
    let e = errors(&se(
        "  hosts: [a.com]\n  hosts: [b.com]\n  ports: [{number: 80}]\n",
    ));
    assert!(
        e[0].contains("test.yaml:7:3") && e[0].contains("duplicate key"),
        "{e:?}"
    );
    // A kubectl List is unpacked.
    let set = load(&format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n",
        "{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: l}, spec: {hosts: [l.com], ports: [{number: 80}], resolution: DNS}}"
    ));
    assert_eq!(set.services.len(), 1, "{}", set.diagnostics);
}

#[test]
fn tcp_without_addresses_warns() {
    let w = warnings(&se(
        "  hosts: [db.com]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: DNS\n",
    ));
    assert!(
        w.iter()
            .any(|w| w.contains("TCP ports without spec.addresses")),
        "{w:?}"
    );
}

#[test]
fn loads_directories_sorted_and_skips_hidden() {
    let dir = std::env::temp_dir().join(format!("egress-policy-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    let one = |n: &str| {
        se(&format!(
            "  hosts: [{n}.com]\n  ports: [{{number: 80}}]\n  resolution: DNS\n"
        ))
        .replace("name: bad", &format!("name: {n}"))
    };
    std::fs::write(dir.join("b.yaml"), one("b")).unwrap();
    std::fs::write(dir.join("a.yml"), one("a")).unwrap();
    std::fs::write(dir.join("sub/c.yaml"), one("c")).unwrap();
    std::fs::write(dir.join("..data/d.yaml"), one("d")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
    let set = ConfigSet::load_paths(std::slice::from_ref(&dir)).unwrap();
    let names: Vec<_> = set.services.iter().map(|s| s.meta.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(ConfigSet::load_paths(&[dir.join("missing.yaml")]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn destination_rule_load_balancers() {
    let dr = |tp: &str| {
        load(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: a.com\n{tp}"
        ))
    };
    let set = dr(
        "  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    portLevelSettings:\n    - {port: {number: 8080}, loadBalancer: {consistentHash: {useSourceIp: true}}}\n  subsets:\n  - name: v1\n    labels: {v: '1'}\n    trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n",
    );
    assert!(set.diagnostics.is_empty(), "{}", set.diagnostics);
    let d = &set.destination_policies[0];
    assert_eq!(d.balance_for(80, None), Some(LoadBalancer::Random));
    assert_eq!(d.balance_for(8080, None), Some(LoadBalancer::HashSourceIp));
    assert_eq!(
        d.balance_for(80, Some("v1")),
        Some(LoadBalancer::LeastRequest)
    );
    for (tp, want) in [
        (
            "  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n",
            "invalid value \"FASTEST\"",
        ),
        (
            "  trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}\n",
            "exactly one of simple and consistentHash",
        ),
        (
            "  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: c}}}}\n",
            "cookies and query parameters are not supported",
        ),
    ] {
        let err = dr(tp).diagnostics.to_string();
        assert!(err.contains(want), "{tp}: {err}");
    }
}

const ASM: &str = r#"apiVersion: istio.alibabacloud.com/v1beta1
kind: ASMEgressTrafficPolicy
metadata: {name: egressgateway-a, namespace: istio-egress}
spec:
  byEgressGateway: {name: egressgateway-a}
  egressRules:
  - to:
    - name: up
      hosts: [www.httpbin.org, httpbin.org]
      port: {name: http, number: 80, protocol: HTTP}
      byEgressGateway:
        port: 80
        httpsUpgrade: {enabled: true}
    - name: direct
      hosts: ["*.aliyun.com"]
      port: {name: https, number: 443, protocol: HTTPS}
      byEgressGateway: {port: 445}
"#;

#[test]
fn asm_egress_traffic_policy_becomes_service_entries_and_tls_rules() {
    let set = load(ASM);
    assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
    assert_eq!(set.services.len(), 2);
    let up = &set.services[0];
    assert_eq!(up.meta.id(), "istio-egress/egressgateway-a-up");
    assert_eq!(up.hosts, ["www.httpbin.org", "httpbin.org"]);
    assert_eq!(up.ports[0].target_port, Some(443));
    assert_eq!(up.resolution, Resolution::Dns);
    let direct = &set.services[1];
    assert_eq!(direct.ports[0].target_port, None);
    assert_eq!(direct.resolution, Resolution::None);
    let hosts: Vec<_> = set
        .destination_policies
        .iter()
        .map(|d| d.host.as_str())
        .collect();
    assert_eq!(hosts, ["www.httpbin.org", "httpbin.org"]);
    let tls = set.destination_policies[0].tls_for(80, None).unwrap();
    assert_eq!((tls.mode.as_str(), tls.sni.as_deref()), ("SIMPLE", None));
}

#[test]
fn asm_egress_traffic_policy_errors_name_the_field() {
    let tcp = ASM.replace("protocol: HTTP}", "protocol: TCP}");
    let e = errors(&tcp);
    assert!(
        e.iter()
            .any(|e| e.contains("spec.egressRules[0].to[0].httpsUpgrade")
                && e.contains("upgrades plain HTTP")),
        "{e:?}"
    );
    let twice = ASM.replace(
        "      byEgressGateway:\n        port: 80\n",
        "      httpsUpgrade: {enabled: true}\n      byEgressGateway:\n        port: 80\n",
    );
    assert!(
        errors(&twice).iter().any(|e| e.contains("set twice")),
        "{:?}",
        errors(&twice)
    );
    let no_gw = ASM.replace("  byEgressGateway: {name: egressgateway-a}\n", "");
    assert!(
        errors(&no_gw)
            .iter()
            .any(|e| e.contains("spec.byEgressGateway.name")),
        "{:?}",
        errors(&no_gw)
    );
    let typo = ASM.replace(
        "httpsUpgrade: {enabled: true}",
        "httpsUpgrade: {enabled: true, prot: 443}",
    );
    assert!(
        warnings(&typo)
            .iter()
            .any(|w| w.contains("httpsUpgrade.prot") && w.contains("unknown field")),
        "{:?}",
        warnings(&typo)
    );
}

#[test]
fn jwt_output_headers_cannot_be_framing_or_credentials() {
    for header in ["content-length", "Host", "authorization", ":path"] {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: j}}\nspec:\n  jwtRules:\n  - issuer: https://i.test\n    jwksUri: https://i.test/keys\n    outputClaimToHeaders: [{{header: \"{header}\", claim: sub}}]\n"
        );
        let e = errors(&yaml);
        assert!(
            e.iter().any(|e| e.contains("outputClaimToHeaders")),
            "{header}: {e:?}"
        );
    }
    let ok = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: j}\nspec:\n  jwtRules:\n  - issuer: https://i.test\n    jwksUri: https://i.test/keys\n    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]\n";
    assert!(errors(ok).is_empty(), "{:?}", errors(ok));
}
