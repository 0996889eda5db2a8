//! Authorization through the real binary: AuthorizationPolicy (DENY/ALLOW, on HTTP and
//! CONNECT), path normalisation, with real curl and a recording origin.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async, service_entry};

fn registry(origin: &Origin) -> String {
    let port = origin.port();
    service_entry("api", "api.test", port, "HTTP", "  resolution: DNS\n")
        + &service_entry("db", "db.test", port, "TCP", "  resolution: DNS\n")
}

fn resolve_args(origin: &Origin) -> Vec<String> {
    let port = origin.port();
    vec![
        format!("--resolve=api.test:{port}:127.0.0.1"),
        format!("--resolve=db.test:{port}:127.0.0.1"),
    ]
}

const DENY_ADMIN: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: egressgateway
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin", "/admin/*"]
"#;

async fn get(gw: &Gateway, url: &str) -> egress_tests::CurlOutput {
    curl_async(&["--path-as-is", "-x", &gw.proxy_url(), url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_policy_and_path_normalisation() {
    let origin = Origin::start().await;
    let yaml = registry(&origin);
    let args = resolve_args(&origin);
    let port = origin.port();
    let base = format!("http://api.test:{port}");

    // DECODE_AND_MERGE_SLASHES (the default): dot segments, encoded unreserved characters,
    // backslashes, runs of slashes and encoded slashes cannot hide /admin.
    let gw = Gateway::start(&(yaml.clone() + DENY_ADMIN), &[&args[0], &args[1]]);
    for path in [
        "/admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/admin/",
        "/a/..\\admin",
        "//admin",
        "/%2Fadmin",
        "/x%2F..%2F%2Fadmin",
        "/x%5c..%5cadmin",
        "/.%2e/admin",
    ] {
        let r = get(&gw, &format!("{base}{path}")).await;
        assert_eq!(r.status, 403, "{path}: {r:?}\n{}", gw.log());
        assert_eq!(r.body, "RBAC: access denied\n", "{path}");
        assert_eq!(r.header("x-egress-denied").as_deref(), Some("rbac-denied"));
    }
    assert_eq!(
        origin.count(),
        0,
        "a denied request never reaches the origin"
    );
    // Paths are case-sensitive, as in Istio.
    let r = get(&gw, &format!("{base}/ADMIN")).await;
    assert_eq!(r.status, 200, "{r:?}");
    // What is forwarded is the path that was checked; the query is never part of it and
    // goes up unchanged.
    let r = get(&gw, &format!("{base}/admin%2F..?next=/admin/../x&a=%2F")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(&gw, &format!("{base}/pub//a/./b%2Fc?q=1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen: Vec<String> = origin.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        seen,
        ["/ADMIN", "/?next=/admin/../x&a=%2F", "/pub/a/b/c?q=1"]
    );
    // Ambiguous paths are refused before any policy or upstream, and the connection closes.
    for bad in [
        "/a%zz",
        "/a%00b",
        "/admin;x=1",
        "/a/..;/admin",
        "/pub;jsessionid=1",
    ] {
        let r = get(&gw, &format!("{base}{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert_eq!(
            r.header("x-egress-denied").as_deref(),
            Some("malformed"),
            "{bad}"
        );
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{bad}");
    }
    assert!(gw.wait_log("authorization denied"), "{}", gw.log());
    assert!(gw.log().contains("istio-system/deny-admin"), "{}", gw.log());
    let metrics = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        metrics.contains("egress_refusals_total{reason=\"rbac-denied\"} 11"),
        "{metrics}"
    );
    assert_eq!(origin.count(), 3);
    drop(gw);

    // --allow-path-parameters: the `;` is part of the segment the policy sees.
    let gw = Gateway::start(
        &(yaml.clone() + DENY_ADMIN),
        &[&args[0], &args[1], "--allow-path-parameters"],
    );
    let r = get(&gw, &format!("{base}/pub;v=1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(origin.requests().last().unwrap().uri, "/pub;v=1");
    let r = get(&gw, &format!("{base}/admin/;x")).await;
    assert_eq!(r.status, 403, "{r:?}");
    drop(gw);

    // BASE, as Istio's default, when asked for: `//` and `%2F` are kept, and the path that is
    // forwarded is still the path that was checked.
    let gw = Gateway::start(
        &(yaml.clone() + DENY_ADMIN),
        &[&args[0], &args[1], "--path-normalization=BASE"],
    );
    let r = get(&gw, &format!("{base}//admin")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(&gw, &format!("{base}/admin%2F..")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(&gw, &format!("{base}/x/../admin")).await;
    assert_eq!(r.status, 403, "{r:?}");
    let seen: Vec<String> = origin.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen[seen.len() - 2..], ["//admin", "/admin%2F.."]);
    drop(gw);

    // MERGE_SLASHES: `//admin` is `/admin`.
    let gw = Gateway::start(
        &(yaml.clone() + DENY_ADMIN),
        &[&args[0], &args[1], "--path-normalization=MERGE_SLASHES"],
    );
    let r = get(&gw, &format!("{base}//admin")).await;
    assert_eq!(r.status, 403, "{r:?}");
    drop(gw);

    // DECODE_AND_MERGE_SLASHES from MeshConfig: `/admin%2F..` is `/`, and `/` is what the
    // origin receives.
    let mesh = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    pathNormalization:\n      normalization: DECODE_AND_MERGE_SLASHES\n";
    let gw = Gateway::start(&(yaml + DENY_ADMIN + mesh), &[&args[0], &args[1]]);
    let r = get(&gw, &format!("{base}/admin%2F..")).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = get(&gw, &format!("{base}/x%2F..%2F%2Fadmin")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(origin.requests().last().unwrap().uri, "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_policies_on_http_and_connect() {
    let origin = Origin::start().await;
    let yaml = registry(&origin);
    let args = resolve_args(&origin);
    let port = origin.port();
    // Only GET to api.test, and tunnels to db.test's port, from loopback.
    let policy = format!(
        r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-reads
  namespace: istio-system
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{ipBlocks: ["127.0.0.0/8"]}}}}]
    to: [{{operation: {{hosts: ["api.test"], methods: ["GET"]}}}}]
  - to: [{{operation: {{hosts: ["db.test"], ports: ["{port}"]}}}}]
  - to: [{{operation: {{hosts: ["api.test"], methods: ["CONNECT"]}}}}]
"#
    );
    let gw = Gateway::start(&(yaml + &policy), &[&args[0], &args[1]]);
    let url = format!("http://api.test:{port}/x");
    let r = curl_async(&["-x", &gw.proxy_url(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = curl_async(&["-x", &gw.proxy_url(), "-X", "POST", "-d", "x", &url]).await;
    assert_eq!((r.status, r.body.as_str()), (403, "RBAC: access denied\n"));
    // A header claiming another client changes nothing without trusted hops.
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-H",
        "x-forwarded-for: 10.9.9.9",
        &url,
    ])
    .await;
    assert_eq!(r.status, 200);
    // CONNECT is authorised at L4: db.test's port is allowed...
    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://db.test:{port}/t"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    // ...and a rule with an HTTP-only field (methods) never matches a tunnel.
    let r = curl_async(&["-p", "-x", &gw.proxy_url(), &url]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(origin.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_ip_blocks_with_trusted_hops() {
    let origin = Origin::start().await;
    let yaml = registry(&origin);
    let args = resolve_args(&origin);
    let policy = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-office}
spec:
  action: DENY
  rules:
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
"#;
    let gw = Gateway::start(
        &(yaml + policy),
        &[&args[0], &args[1], "--xff-num-trusted-hops=1"],
    );
    let url = format!("http://api.test:{}/", origin.port());
    let with = |xff: &'static str| {
        let proxy = gw.proxy_url();
        let url = url.clone();
        async move { curl_async(&["-x", &proxy, "-H", xff, &url]).await.status }
    };
    assert_eq!(with("x-forwarded-for: 203.0.113.9").await, 403);
    // The client cannot push the trusted entry away by prepending its own.
    assert_eq!(
        with("x-forwarded-for: 198.51.100.1, 203.0.113.9").await,
        403
    );
    assert_eq!(
        with("x-forwarded-for: 203.0.113.9, 198.51.100.1").await,
        200
    );
    assert_eq!(with("x-forwarded-for: not-an-ip").await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_reload_atomically_and_a_bad_reload_keeps_the_old_ones() {
    let origin = Origin::start().await;
    let yaml = registry(&origin);
    let args = resolve_args(&origin);
    let gw = Gateway::start(&yaml, &[&args[0], &args[1]]);
    let base = format!("http://api.test:{}", origin.port());
    assert_eq!(get(&gw, &format!("{base}/admin")).await.status, 200);
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let file = gw.config_dir().join("config.yaml");
    std::fs::write(&file, yaml.clone() + DENY_ADMIN).unwrap();
    hup();
    assert!(gw.wait_log("configuration reloaded"), "{}", gw.log());
    assert_eq!(get(&gw, &format!("{base}/admin")).await.status, 403);
    let dump = curl_async(&[&format!("http://{}/config_dump", gw.admin)])
        .await
        .body;
    assert!(
        dump.contains("\"name\": \"istio-system/deny-admin\"")
            && dump.contains("\"pathNormalization\": \"DECODE_AND_MERGE_SLASHES\""),
        "{dump}"
    );
    // A policy with an unknown condition key is refused; the DENY stays in force.
    std::fs::write(
        &file,
        yaml + &DENY_ADMIN.replace(
            "  - to:",
            "  - when: [{key: request.nope, values: [x]}]\n    to:",
        ),
    )
    .unwrap();
    hup();
    assert!(gw.wait_log("configuration reload rejected"), "{}", gw.log());
    assert!(gw.log().contains("unknown condition key"), "{}", gw.log());
    assert_eq!(get(&gw, &format!("{base}/admin")).await.status, 403);
    assert_eq!(get(&gw, &format!("{base}/ok")).await.status, 200);
}

/// Istio's egress-gateway manifests select the gateway by `app: istio-egressgateway` as
/// often as by `istio: egressgateway`; both are this gateway's default labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_egress_gateway_selectors_apply_by_default() {
    let origin = Origin::start().await;
    let yaml = registry(&origin)
        + r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing-but-get
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-egressgateway
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#;
    let args = resolve_args(&origin);
    let gw = Gateway::start(&yaml, &[&args[0], &args[1]]);
    let url = format!("http://api.test:{}/", origin.port());
    assert_eq!(curl_async(&["-x", &gw.proxy_url(), &url]).await.status, 200);
    let r = curl_async(&["-x", &gw.proxy_url(), "-X", "DELETE", &url]).await;
    assert_eq!(r.status, 403, "{r:?}\n{}", gw.log());
    assert!(!gw.log().contains("does not apply"), "{}", gw.log());
}

/// Istio's "Dry Run" task: a DENY policy annotated `istio.io/dry-run: "true"` denies
/// nothing, and its would-be decision is logged ("shadow denied"), counted (Istio's
/// `authz_dry_run_action` / `authz_dry_run_result` labels) and put in the access log. The
/// same policy without the annotation is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_policies_are_reported_not_enforced() {
    let origin = Origin::start().await;
    let port = origin.port();
    let policy = |name: &str, dry: &str, action: &str, path: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: istio-system\n  annotations:\n    \"istio.io/dry-run\": \"{dry}\"\nspec:\n  action: {action}\n  rules:\n  - to:\n    - operation:\n        paths: [\"{path}\"]\n"
        )
    };
    let yaml = registry(&origin)
        + &policy("deny-path-headers", "true", "DENY", "/headers")
        + &policy("allow-ip", "true", "ALLOW", "/ip")
        + &policy("deny-admin", "false", "DENY", "/admin");
    let mut args = resolve_args(&origin);
    args.push("--access-log=on".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start(&yaml, &args);
    let base = format!("http://api.test:{port}");
    for _ in 0..3 {
        assert_eq!(get(&gw, &format!("{base}/headers")).await.status, 200);
    }
    assert_eq!(get(&gw, &format!("{base}/ip")).await.status, 200);
    assert_eq!(get(&gw, &format!("{base}/admin")).await.status, 403);
    assert_eq!(origin.count(), 4, "dry-run denied nothing");

    assert!(gw.wait_log("shadow denied"), "{}", gw.log());
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("shadow denied"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("istio-system/deny-path-headers"), "{line}");
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("egress::access"))
        .collect();
    let headers = access.iter().find(|l| l.contains("/headers")).unwrap();
    assert!(
        headers.contains("deny:denied:istio-system/deny-path-headers allow:denied:-"),
        "{headers}"
    );
    let ip = access.iter().find(|l| l.contains("/ip")).unwrap();
    assert!(
        ip.contains("deny:allowed:- allow:allowed:istio-system/allow-ip"),
        "{ip}"
    );

    let stats = curl_async(&[&format!("http://{}/stats", gw.admin)])
        .await
        .body;
    let count = |action: &str, result: &str, policy: &str| {
        let key = format!(
            "egress_authz_dry_run_total{{authz_dry_run_action=\"{action}\",authz_dry_run_result=\"{result}\",policy=\"{policy}\"}}"
        );
        stats
            .lines()
            .find(|l| l.starts_with(&key))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(
        count("deny", "denied", "istio-system/deny-path-headers").as_deref(),
        Some("3"),
        "{stats}"
    );
    assert_eq!(
        count("allow", "allowed", "istio-system/allow-ip").as_deref(),
        Some("1"),
        "{stats}"
    );
    // The enforced /admin request ran the shadow engines too: nothing matched there.
    assert_eq!(
        count("deny", "allowed", "-").as_deref(),
        Some("2"),
        "{stats}"
    );

    let dump = curl_async(&[&format!("http://{}/config_dump", gw.admin)])
        .await
        .body;
    assert!(dump.contains("\"dryRun\": true"), "{dump}");
}

/// The annotation takes only Istio's two spellings, and CUSTOM has no shadow mode.
#[test]
fn dry_run_annotation_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (annotation, action, want) in [
        (
            "yes",
            "DENY",
            "metadata.annotations.istio.io/dry-run: expected \"true\" or \"false\", got \"yes\"",
        ),
        (
            "true",
            "CUSTOM\n  provider: {name: ext}",
            "dry-run is not supported for CUSTOM",
        ),
    ] {
        let path = dir.path().join("p.yaml");
        std::fs::write(
            &path,
            format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: {{istio.io/dry-run: \"{annotation}\"}}\nspec:\n  action: {action}\n  rules: [{{}}]\n"),
        )
        .unwrap();
        let out = std::process::Command::new(egress_tests::gateway_bin())
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{annotation}: {err}");
        assert!(
            err.contains("p.yaml:") && err.contains(want),
            "{annotation}: {err}"
        );
    }
}
