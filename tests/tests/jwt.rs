//! RequestAuthentication through the real binary: tokens signed in the test (EC and RSA
//! keys made here), an inline JWKS and a real loopback HTTPS `jwksUri` with rotation and
//! outage, combined with an AuthorizationPolicy that requires an identity.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::Bytes;
use egress_tests::jwt::{Signer, jwks, now, unsigned};
use egress_tests::tls::TestCa;
use egress_tests::{Gateway, Origin, curl_async, service_entry};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const ISS: &str = "https://issuer.test";

/// A JWKS endpoint over TLS whose content and availability the test controls.
struct JwksServer {
    port: u16,
    body: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(ca: &TestCa, body: String) -> JwksServer {
    let leaf = ca.leaf(&["localhost"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = JwksServer {
        port: listener.local_addr().unwrap().port(),
        body: Arc::new(Mutex::new(body)),
        down: Arc::default(),
        hits: Arc::default(),
    };
    let (body, down, hits) = (
        server.body.clone(),
        server.down.clone(),
        server.hits.clone(),
    );
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let (acceptor, body, down, hits) =
                (acceptor.clone(), body.clone(), down.clone(), hits.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(io).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    // OpenID discovery: the configuration names /keys on this same server.
                    let text = if req.uri().path() == "/.well-known/openid-configuration" {
                        let host = req.headers()["host"].to_str().unwrap().to_owned();
                        format!(r#"{{"issuer":"https://{host}","jwks_uri":"https://{host}/keys"}}"#)
                    } else {
                        body.lock().unwrap().clone()
                    };
                    let mut rsp = Response::new(Full::new(Bytes::from(text)));
                    if down.load(Ordering::SeqCst) {
                        *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    async move { Ok::<_, std::convert::Infallible>(rsp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    server
}

fn config(origin: &Origin, jwt_rule: &str) -> String {
    service_entry(
        "api",
        "api.test",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    ) + &format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  jwtRules:
  - issuer: "{ISS}"
    audiences: [egress]
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
{jwt_rule}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISS}/*"]}}}}]
    to: [{{operation: {{paths: ["/private*"]}}}}]
  - to: [{{operation: {{paths: ["/public*"]}}}}]
"#
    )
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": ISS, "sub": sub, "aud": ["egress", "other"], "exp": now() + 600, "iat": now()})
}

async fn call(
    gw: &Gateway,
    origin: &Origin,
    path: &str,
    token: Option<&str>,
) -> egress_tests::CurlOutput {
    let url = format!("http://api.test:{}{path}", origin.port());
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let proxy = gw.proxy_url();
    let mut args = vec!["-x", proxy.as_str(), "-H", "x-jwt-sub: forged"];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(&url);
    curl_async(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_jwks_tokens_and_failures() {
    let origin = Origin::start().await;
    let ec = Signer::ec("ec-1");
    let rsa = Signer::rsa("rsa-1");
    let rule = format!("    jwks: '{}'\n", jwks(&[&ec, &rsa]));
    let gw = Gateway::start(
        &config(&origin, &rule),
        &[&format!("--resolve=api.test:{}:127.0.0.1", origin.port())],
    );

    // No token: allowed without identity where no identity is required...
    let r = call(&gw, &origin, "/public", None).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    // ...and the forged output header never reaches the origin.
    assert!(!origin.requests()[0].headers.contains_key("x-jwt-sub"));
    // ...denied where one is.
    let r = call(&gw, &origin, "/private", None).await;
    assert_eq!((r.status, r.body.as_str()), (403, "RBAC: access denied\n"));

    // Valid EC and RSA tokens: identity, claim header, token not forwarded.
    for (signer, sub) in [(&ec, "alice"), (&rsa, "bob")] {
        let t = signer.token(&claims(sub));
        let r = call(&gw, &origin, "/private", Some(&t)).await;
        assert_eq!(r.status, 200, "{sub}: {r:?}\n{}", gw.log());
        let seen = origin.requests().pop().unwrap();
        assert_eq!(seen.headers["x-jwt-sub"], sub);
        assert!(
            !seen.headers.contains_key("authorization"),
            "token forwarded"
        );
    }

    // Failures: 401 with the reason and a Bearer challenge, the audience too (as Envoy).
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("alice");
    early["nbf"] = json!(now() + 3600);
    let mut other_iss = claims("alice");
    other_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("someone-else");
    let good = ec.token(&claims("alice"));
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = egress_tests::jwt::unsigned(&claims("mallory"))
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        parts.join(".")
    };
    let stranger = Signer::ec("ec-1").token(&claims("alice"));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("expired", ec.token(&expired), 401, "Jwt is expired"),
        ("not yet valid", ec.token(&early), 401, "Jwt not yet valid"),
        (
            "unknown issuer",
            ec.token(&other_iss),
            401,
            "is not configured",
        ),
        (
            "audience",
            ec.token(&wrong_aud),
            401,
            "Audiences in Jwt are not allowed",
        ),
        ("tampered", tampered, 401, "Jwt verification fails"),
        ("unknown key", stranger, 401, "Jwt verification fails"),
        ("alg none", unsigned(&claims("alice")), 401, "not supported"),
        ("garbage", "abc.def".into(), 401, "Header.Payload.Signature"),
    ];
    let before = origin.count();
    for (what, token, status, body) in cases {
        let r = call(&gw, &origin, "/public", Some(&token)).await;
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(r.body.contains(body), "{what}: {}", r.body);
        if status == 401 {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer realm=\"http://api.test:")
                    && challenge.ends_with("error=\"invalid_token\""),
                "{what}: {challenge}"
            );
        }
    }
    assert_eq!(
        origin.count(),
        before,
        "no refused request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_is_fetched_rotated_and_kept_through_an_outage() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let first = Signer::ec("k1");
    let second = Signer::rsa("k2");
    let server = jwks_server(&ca, jwks(&[&first])).await;
    let rule = format!(
        "    jwksUri: https://localhost:{}/.well-known/jwks.json\n    forwardOriginalToken: true\n",
        server.port
    );
    let ca_file = ca.pem_path.display().to_string();
    let gw = Gateway::start_with_env(
        &config(&origin, &rule),
        &[
            &format!("--resolve=api.test:{}:127.0.0.1", origin.port()),
            "--jwks-refresh-interval=1s",
        ],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    assert!(gw.wait_log("JWKS fetched"), "{}", gw.log());
    let t1 = first.token(&claims("alice"));
    let r = call(&gw, &origin, "/private", Some(&t1)).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    // forwardOriginalToken: the origin sees the token.
    assert_eq!(
        origin.requests().pop().unwrap().headers["authorization"],
        format!("Bearer {t1}")
    );
    // A token of a key not yet published fails...
    let t2 = second.token(&claims("bob"));
    assert_eq!(call(&gw, &origin, "/private", Some(&t2)).await.status, 401);
    // ...until the rotation is fetched.
    *server.body.lock().unwrap() = jwks(&[&first, &second]);
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if call(&gw, &origin, "/private", Some(&t2)).await.status == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "rotated key never accepted\n{}", gw.log());
    // Outage: refreshes fail, the last good keys keep working.
    server.down.store(true, Ordering::SeqCst);
    let hits = server.hits.load(Ordering::SeqCst);
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if server.hits.load(Ordering::SeqCst) > hits {
            break;
        }
    }
    assert!(gw.wait_log("keeping the last good set"), "{}", gw.log());
    assert_eq!(call(&gw, &origin, "/private", Some(&t1)).await.status, 200);
    assert_eq!(call(&gw, &origin, "/private", Some(&t2)).await.status, 200);
}

/// istio.io's JWT tasks, adapted only in where the policy applies (the egress gateway
/// instead of httpbin) and where the keys are served (a loopback HTTPS server instead of
/// GitHub): Istio's own sample JWKS and demo token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_jwt_task_manifests() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/istio-jwt");
    let keys = std::fs::read_to_string(dir.join("jwks.json")).unwrap();
    let token = std::fs::read_to_string(dir.join("demo.jwt")).unwrap();
    let server = jwks_server(&ca, keys).await;
    let yaml = service_entry(
        "httpbin",
        "httpbin.test",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    ) + &format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: "jwt-example"
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: egressgateway
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://localhost:{}/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: egressgateway
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
"#,
        server.port
    );
    let ca_file = ca.pem_path.display().to_string();
    let gw = Gateway::start_with_env(
        &yaml,
        &[&format!(
            "--resolve=httpbin.test:{}:127.0.0.1",
            origin.port()
        )],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    assert!(gw.wait_log("JWKS fetched"), "{}", gw.log());
    let url = format!("http://httpbin.test:{}/headers", origin.port());
    let proxy = gw.proxy_url();
    let with = |auth: Option<String>| {
        let (proxy, url) = (proxy.clone(), url.clone());
        async move {
            let mut args = vec!["-x".to_owned(), proxy, url];
            if let Some(a) = auth {
                args.extend(["-H".to_owned(), a]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl_async(&args).await.status
        }
    };
    assert_eq!(
        with(Some(format!("Authorization: Bearer {token}"))).await,
        200
    );
    assert_eq!(
        with(Some("Authorization: Bearer invalidToken".into())).await,
        401
    );
    assert_eq!(with(None).await, 403);
}

/// No `jwks` nor `jwksUri`: the keys are found by OpenID discovery from the issuer URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_discovery_from_the_issuer() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let signer = Signer::ec("d1");
    let server = jwks_server(&ca, jwks(&[&signer])).await;
    let issuer = format!("https://localhost:{}", server.port);
    let yaml = service_entry(
        "api",
        "api.test",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    ) + &format!(
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: oidc}}\nspec:\n  jwtRules:\n  - issuer: \"{issuer}\"\n"
    );
    let ca_file = ca.pem_path.display().to_string();
    let gw = Gateway::start_with_env(
        &yaml,
        &[&format!("--resolve=api.test:{}:127.0.0.1", origin.port())],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    assert!(gw.wait_log("JWKS fetched"), "{}", gw.log());
    let token = signer.token(&json!({"iss": issuer, "sub": "svc", "exp": now() + 600}));
    let url = format!("http://api.test:{}/", origin.port());
    let auth = format!("Authorization: Bearer {token}");
    let r = curl_async(&["-x", &gw.proxy_url(), "-H", &auth, &url]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let stranger = Signer::ec("d1").token(&json!({"iss": issuer, "sub": "svc"}));
    let auth = format!("Authorization: Bearer {stranger}");
    let r = curl_async(&["-x", &gw.proxy_url(), "-H", &auth, &url]).await;
    assert_eq!(r.status, 401, "{r:?}");
}
