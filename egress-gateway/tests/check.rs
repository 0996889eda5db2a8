//! `egress-gateway check`, run as a user would in a CI pipeline.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-gateway"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn embedded_default_config_checks() {
    let (code, out, err) = check(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("outbound traffic policy REGISTRY_ONLY"),
        "{out}"
    );
    assert!(
        out.contains("ServiceEntry egress-examples/httpbin: hosts [httpbin.org]"),
        "{out}"
    );
    assert!(out.contains("*.wikipedia.org"), "{out}");
}

#[test]
fn good_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: api, namespace: prod}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  resolution: DNS\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: later}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api-routes, namespace: prod}\nspec:\n  hosts: [api.example.com]\n  http:\n  - route:\n    - destination: {host: api.example.com}\n",
    )
    .unwrap();
    let (code, out, err) = check(&[
        "--config",
        good.to_str().unwrap(),
        "--outbound-policy",
        "allow-any",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("outbound traffic policy ALLOW_ANY"), "{out}");
    assert!(
        out.contains("AuthorizationPolicy default/no-admin: DENY with 1 rule(s)"),
        "{out}"
    );
    assert!(
        out.contains("prod/api: hosts [api.example.com] ports [443/Https]"),
        "{out}"
    );
    assert!(
        err.contains("PeerAuthentication (security.istio.io/v1) is not yet supported, ignored")
            && out.contains(
                "VirtualService prod/api-routes: hosts [api.example.com] 1 http route(s)"
            ),
        "{err}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild}\nspec:\n  hosts: ['*']\n  ports:\n  - {number: 80, name: http}\n  - {number: 80, name: http2}\n",
    )
    .unwrap();
    let (code, out, err) = check(&["--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let file = bad.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:5:11: error: ServiceEntry default/wild: spec.hosts[0]"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:8:5: error: ServiceEntry default/wild: spec.ports[1].number: port 80 is defined twice")), "{err}");
    assert!(err.contains("configuration has 2 error(s)"), "{err}");

    let (code, _, err) = check(&[
        "--config",
        dir.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read configuration") && err.contains("missing.yaml"),
        "{err}"
    );
}

#[test]
fn bad_config_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [a.com], ports: [{number: 99999}]}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egress-gateway"))
        .args([
            "--config",
            bad.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ports[0].number: 99999 is out of range"),
        "{err}"
    );
}
