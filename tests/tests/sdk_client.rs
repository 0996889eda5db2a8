//! The SDK in an application's own client (the `registry_client` example), against a real
//! loopback origin.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::Origin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stack_allows_registered_and_refuses_the_rest() {
    let origin = Origin::start().await;
    let svc = egress_examples::registry_client::client(
        &egress_examples::registry_client::example_registry(origin.addr),
    )
    .unwrap();
    let get = |url: &'static str| egress_examples::registry_client::get(svc.clone(), url);
    let (status, denied, body) = get("http://api.internal.test/hello").await.unwrap();
    assert_eq!(
        (status, denied, body.as_str()),
        (200, None, "hello from origin")
    );
    assert_eq!(origin.requests()[0].headers["host"], "api.internal.test");

    let (status, denied, body) = get("http://unregistered.example.com/").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(denied.as_deref(), Some("registry-only"));
    assert!(body.contains("unregistered.example.com:80"), "{body}");
    let (status, denied, _) = get("http://0x7f.1/").await.unwrap();
    assert_eq!((status, denied.as_deref()), (400, Some("malformed")));
    assert_eq!(origin.count(), 1);
}

#[test]
fn example_binary_runs() {
    // The example itself, as a user runs it.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("registry_client");
    assert!(bin.exists(), "{} not built", bin.display());
    let out = std::process::Command::new(bin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("allowed: http://api.internal.test/hello -> 200"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "refused: http://unregistered.example.com/ -> 502 (x-egress-denied: registry-only)"
        ),
        "{stdout}"
    );
}

/// The transport is pluggable: a resolver of our own and a connector of our own (counting
/// connections around hyper-util's), through the same Upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_and_connector_are_pluggable() {
    use egress_core::ctx::{Destination, RequestForm, Scheme};
    use egress_core::transport::{Dialer, DialerConfig, Resolve, Upstream, UpstreamConfig};
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    struct Fixed;
    impl Resolve for Fixed {
        fn resolve<'a>(
            &'a self,
            name: &'a str,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<Arc<[IpAddr]>>> + Send + 'a>,
        > {
            Box::pin(async move {
                assert_eq!(name, "pluggable.test");
                // A public documentation address would be dialled; this test maps to an
                // address the guard accepts because the plan declares it.
                Ok(Arc::from(vec!["127.0.0.1".parse::<IpAddr>().unwrap()]))
            })
        }
    }

    let origin = Origin::start().await;
    let connects = Arc::new(AtomicUsize::new(0));
    let http = HttpConnector::new();
    let counter = connects.clone();
    let connector = tower::service_fn(move |uri: http::Uri| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut http = http.clone();
        Box::pin(async move { tower::Service::call(&mut http, uri).await })
    });
    let dialer = Arc::new(Dialer::with_resolver(
        DialerConfig::default(),
        Arc::new(Fixed),
    ));
    let upstream = Upstream::with_connector(connector, dialer, UpstreamConfig::default());
    let plan = egress_core::ctx::UpstreamPlan {
        trusted_nets: vec!["127.0.0.1/32".parse().unwrap()].into(),
        ..Default::default()
    };
    for _ in 0..3 {
        let (host, _) = egress_core::host::parse_authority("pluggable.test").unwrap();
        let mut req = http::Request::get("/p")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(Destination::new(
            host,
            origin.port(),
            Scheme::Http,
            RequestForm::Origin,
        ));
        req.extensions_mut().insert(plan.clone());
        let rsp = upstream.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let _ = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap();
        // The connection goes back to the pool from its own task once the body has ended.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(origin.count(), 3);
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "pooled connection not reused"
    );
    assert_eq!(
        origin.requests()[0].headers["host"],
        format!("pluggable.test:{}", origin.port())
    );
}

/// The authorization layers alone, in a stack of the application's own: the path is
/// normalised, a JWT validated, and DENY/ALLOW policies decide, before an inner service
/// that stands for the application's client.
#[tokio::test]
async fn authz_and_jwt_layers_alone() {
    use egress_core::destination::DestinationLayer;
    use egress_policy::authz::path::Normalization;
    use egress_policy::authz::{AuthzDecision, AuthzPolicies, Identity};
    use egress_policy::istio::{Binding, ConfigSet};
    use egress_policy::jwt::{JwksStore, JwtPolicy, RequestAuth};
    use egress_policy::layers::{AuthzLayer, JwtLayer, PathNormalizeLayer};
    use tower::{ServiceBuilder, ServiceExt};

    let signer = egress_tests::jwt::Signer::ec("k");
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: j}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.test\n    jwks: '{}'\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"https://issuer.test/*\"]}}}}]\n    to: [{{operation: {{hosts: [api.example.com], notPaths: [\"/admin*\"]}}}}]\n",
        egress_tests::jwt::jwks(&[&signer])
    );
    let set = ConfigSet::load_str("app.yaml", &yaml);
    assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
    let identity = Identity::new("default/my-app", &[], &Binding::default());
    let (authz, _) = AuthzPolicies::compile(&set, &identity).unwrap();
    let (jwt, _) = JwtPolicy::compile(&set, &identity);
    let app =
        tower::service_fn(|req: http::Request<String>| async move {
            let who = req
                .extensions()
                .get::<RequestAuth>()
                .map(|a| a.principal.to_string());
            let decided = req.extensions().get::<AuthzDecision>().is_some();
            Ok::<_, egress_core::BoxError>(http::Response::new(egress_core::BoxBody::from(
                format!("{} {} {decided}", req.uri().path(), who.unwrap_or_default()),
            )))
        });
    let svc = ServiceBuilder::new()
        .layer(DestinationLayer::new())
        .layer(PathNormalizeLayer::new(Normalization::MergeSlashes))
        .layer(JwtLayer::new(
            egress_policy::snapshot::Shared::new(jwt),
            JwksStore::default(),
        ))
        .layer(AuthzLayer::new(
            egress_policy::snapshot::Shared::new(authz),
            0,
        ))
        .service(app);
    let token = signer.token(&serde_json::json!({"iss": "https://issuer.test", "sub": "app"}));
    let send = |path: &str, token: Option<&str>| {
        let mut b = http::Request::get(format!("http://api.example.com{path}"))
            .header("host", "api.example.com");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        svc.clone().oneshot(b.body(String::new()).unwrap())
    };
    let rsp = send("/a/./b", Some(&token)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    use http_body_util::BodyExt;
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/a/b https://issuer.test/app true");
    assert_eq!(send("/a", None).await.unwrap().status(), 403);
    assert_eq!(send("//admin", Some(&token)).await.unwrap().status(), 403);
    assert_eq!(send("/a", Some("not.a.token")).await.unwrap().status(), 401);
}

/// The `custom_proxy` example: the SDK's layers in an embedder's own hyper server, from
/// Istio YAML, tried with real curl; a reload is one store of a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_proxy_example_enforces_the_policy_and_reloads_whole() {
    let origin = Origin::start().await;
    let yaml = |extra: &str| {
        format!(
            "{}{extra}",
            egress_examples::registry_client::example_registry(origin.addr)
        )
    };
    let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n";
    let policy = egress_policy::snapshot::PolicyStore::new(
        egress_examples::custom_proxy::policy(&yaml(deny)).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(egress_examples::custom_proxy::serve(
        listener,
        policy.clone(),
    ));
    let curl = |url: &'static str| {
        let proxy = proxy.clone();
        async move { egress_tests::curl_async(&["--path-as-is", "-x", &proxy, url]).await }
    };
    let r = curl("http://api.internal.test/hello").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{r:?}"
    );
    let r = curl("http://api.internal.test/x/..//admin").await;
    assert_eq!(
        (r.status, r.header("x-egress-denied").as_deref()),
        (403, Some("rbac-denied"))
    );
    let r = curl("http://unregistered.example.com/").await;
    assert_eq!(
        (r.status, r.header("x-egress-denied").as_deref()),
        (502, Some("registry-only"))
    );
    // Reload without the DENY: one store, and /admin goes through.
    policy.store(egress_examples::custom_proxy::policy(&yaml("")).unwrap());
    let r = curl("http://api.internal.test/admin").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(origin.count(), 2);
}

/// The `app_client` example: an application writes `http://`, the client stack refuses what
/// is not registered, originates TLS as the `DestinationRule` says (SNI and the CA given),
/// and counts every call in Istio's metrics, all from one YAML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_client_originates_tls_and_counts_calls() {
    use egress_tests::tls::{TestCa, TlsOrigin};
    use http_body_util::Empty;
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["api.internal.test"]), None).await;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: internal-api }}
spec:
  hosts: [api.internal.test]
  ports: [{{ number: 80, name: http, protocol: HTTP, targetPort: {port} }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1 }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: internal-api }}
spec:
  host: api.internal.test
  trafficPolicy:
    tls: {{ mode: SIMPLE, sni: api.internal.test, caCertificates: {ca} }}
"#,
        port = origin.addr.port(),
        ca = ca.pem_path.display()
    );
    let (svc, metrics) = egress_examples::app_client::client::<Empty<bytes::Bytes>>(&yaml).unwrap();
    let get = |url: &'static str| egress_examples::registry_client::get(svc.clone(), url);
    let (status, denied, body) = get("http://api.internal.test/hello").await.unwrap();
    assert_eq!(
        (status, denied, body.as_str()),
        (200, None, "hello over tls")
    );
    assert_eq!(
        origin.handshakes.lock().unwrap().as_slice(),
        &[Some("api.internal.test".to_owned())]
    );
    // A second call reuses the pooled TLS connection, once hyper-util's connection task has
    // put it back after the first body's end (asynchronously: without the pause, a loaded
    // machine sometimes sends the second call before, on a new connection).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, _, _) = get("http://api.internal.test/again").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(origin.handshakes.lock().unwrap().len(), 1);

    let (status, denied, _) = get("http://unregistered.example.com/").await.unwrap();
    assert_eq!((status, denied.as_deref()), (502, Some("registry-only")));
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    let text = metrics.encode();
    let calls = |code: &str| {
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(calls("200"), ["2"], "{text}");
    assert_eq!(calls("502"), ["1"], "{text}");
    assert!(
        text.contains("egress_refusals_total{reason=\"registry-only\"} 1"),
        "{text}"
    );
}

/// The `policy_in_code` example: a policy built from the model types without YAML, served
/// by the custom proxy and used with real curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_built_in_code_serves() {
    let origin = Origin::start().await;
    let policy = egress_examples::policy_in_code::policy(origin.addr).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(egress_examples::custom_proxy::serve(
        listener,
        egress_policy::snapshot::PolicyStore::new(policy),
    ));
    let curl = |url: &'static str| {
        let proxy = proxy.clone();
        async move { egress_tests::curl_async(&["--path-as-is", "-x", &proxy, url]).await }
    };
    let r = curl("http://api.internal.test/hello").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{r:?}"
    );
    let r = curl("http://api.internal.test//admin/users").await;
    assert_eq!(
        (r.status, r.header("x-egress-denied").as_deref()),
        (403, Some("rbac-denied"))
    );
    let r = curl("http://other.internal.test/").await;
    assert_eq!(
        (r.status, r.header("x-egress-denied").as_deref()),
        (502, Some("registry-only"))
    );
    assert_eq!(origin.count(), 1);
}
