//! CUSTOM authorization through the real binary, against a real loopback authorizer
//! declared like Istio's `envoyExtAuthzHttp` in the `istio` ConfigMap.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::Bytes;
use egress_tests::{Gateway, Origin, curl_async, service_entry};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the authorizer saw of one check.
#[derive(Clone, Debug)]
struct Check {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

struct Authorizer {
    port: u16,
    checks: Arc<Mutex<Vec<Check>>>,
}

/// Decides by the `x-ext-authz` header of the check: `allow`, `deny`, `slow`, `error`.
async fn authorizer() -> Authorizer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let checks: Arc<Mutex<Vec<Check>>> = Arc::default();
    let log = checks.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let verdict = parts
                            .headers
                            .get("x-ext-authz")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("allow")
                            .to_owned();
                        log.lock().unwrap().push(Check {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        });
                        let mut rsp = Response::new(Full::new(Bytes::new()));
                        match verdict.as_str() {
                            "deny" => {
                                *rsp.status_mut() = StatusCode::FORBIDDEN;
                                *rsp.body_mut() =
                                    Full::new(Bytes::from_static(b"denied by ext_authz"));
                                rsp.headers_mut()
                                    .insert("x-ext-authz-check-result", "denied".parse().unwrap());
                                rsp.headers_mut()
                                    .insert("x-internal", "secret".parse().unwrap());
                            }
                            "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
                            "error" => *rsp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
                            _ => {
                                rsp.headers_mut()
                                    .insert("x-ext-authz-check-result", "allowed".parse().unwrap());
                                rsp.headers_mut().insert("x-user", "alice".parse().unwrap());
                            }
                        }
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    Authorizer { port, checks }
}

fn config(origin: &Origin, authz_port: u16, provider_extra: &str) -> String {
    service_entry(
        "api",
        "api.test",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    ) + &format!(
        r#"---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: {authz_port}
        timeout: 500ms
        pathPrefix: /check
        includeRequestHeadersInCheck: ["x-ext-authz"]
        includeAdditionalHeadersInCheck: {{x-from-gateway: egress}}
        headersToUpstreamOnAllow: ["x-user"]
        headersToDownstreamOnAllow: ["x-ext-authz-check-result", "content-*"]
        headersToDownstreamOnDeny: ["x-ext-authz-check-result"]
{provider_extra}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  action: CUSTOM
  provider: {{name: sample-ext-authz-http}}
  rules:
  - to: [{{operation: {{paths: ["/headers*", "/upload*"]}}}}]
"#
    )
}

async fn call(
    gw: &Gateway,
    origin: &Origin,
    path: &str,
    verdict: &str,
    extra: &[&str],
) -> egress_tests::CurlOutput {
    let url = format!("http://api.test:{}{path}", origin.port());
    let proxy = gw.proxy_url();
    let h = format!("x-ext-authz: {verdict}");
    let mut args = vec!["-x", proxy.as_str(), "-H", h.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl_async(&args).await
}

fn start(origin: &Origin, authz_port: u16, provider_extra: &str) -> Gateway {
    Gateway::start(
        &config(origin, authz_port, provider_extra),
        &[
            &format!("--resolve=api.test:{}:127.0.0.1", origin.port()),
            &format!("--resolve=ext-authz.foo.svc.cluster.local:{authz_port}:127.0.0.1"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_timeout_and_errors() {
    let origin = Origin::start().await;
    let authz = authorizer().await;
    let gw = start(&origin, authz.port, "");

    let r = call(&gw, &origin, "/headers?a=1", "allow", &[]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    // The authorizer's own framing headers never reach the response, whatever the patterns.
    assert_eq!(r.body, "hello from origin", "{r:?}");
    assert_eq!(r.header("content-length").as_deref(), Some("17"), "{r:?}");
    assert_eq!(
        r.header("x-ext-authz-check-result").as_deref(),
        Some("allowed")
    );
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.headers["x-user"], "alice", "headersToUpstreamOnAllow");
    let check = authz.checks.lock().unwrap().pop().unwrap();
    assert_eq!(
        (check.method.as_str(), check.path.as_str()),
        ("GET", "/check/headers?a=1")
    );
    assert_eq!(check.headers["x-from-gateway"], "egress");
    assert_eq!(check.headers["host"], format!("api.test:{}", origin.port()));
    assert!(
        !check.headers.contains_key("user-agent"),
        "only the listed headers"
    );

    // Not matched by the CUSTOM policy: no check at all.
    let before = authz.checks.lock().unwrap().len();
    assert_eq!(call(&gw, &origin, "/other", "deny", &[]).await.status, 200);
    assert_eq!(authz.checks.lock().unwrap().len(), before);

    let r = call(&gw, &origin, "/headers", "deny", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "denied by ext_authz"),
        "{r:?}"
    );
    assert_eq!(
        r.header("x-ext-authz-check-result").as_deref(),
        Some("denied")
    );
    assert_eq!(
        r.header("x-internal"),
        None,
        "only headersToDownstreamOnDeny"
    );

    let served = origin.count();
    let r = call(&gw, &origin, "/headers", "slow", &[]).await;
    assert_eq!(r.status, 403, "timeout -> statusOnError: {r:?}");
    let r = call(&gw, &origin, "/headers", "error", &[]).await;
    assert_eq!(r.status, 403, "5xx -> statusOnError: {r:?}");
    assert_eq!(origin.count(), served);
    assert!(
        gw.log().contains("external authorization failed"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_down_fails_closed_or_open() {
    let origin = Origin::start().await;
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = down.local_addr().unwrap().port();
    drop(down);
    let gw = start(&origin, port, "        statusOnError: \"503\"\n");
    let r = call(&gw, &origin, "/headers", "allow", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.header("x-egress-denied").as_deref(),
        Some("ext-authz-error")
    );
    assert_eq!(origin.count(), 0);
    let gw = start(&origin, port, "        failOpen: true\n");
    let r = call(&gw, &origin, "/headers", "allow", &[]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_in_check_and_its_limit() {
    let origin = Origin::start().await;
    let authz = authorizer().await;
    let body = "0123456789abcdefghij"; // 20 bytes
    let gw = start(
        &origin,
        authz.port,
        "        includeRequestBodyInCheck: {maxRequestBytes: 10}\n",
    );
    let r = call(&gw, &origin, "/upload", "allow", &["-d", "short"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(authz.checks.lock().unwrap().pop().unwrap().body, "short");
    assert_eq!(origin.requests().pop().unwrap().body, "short");
    let r = call(&gw, &origin, "/upload", "allow", &["-d", body]).await;
    assert_eq!(r.status, 413, "{r:?}");

    let gw = start(
        &origin,
        authz.port,
        "        includeRequestBodyInCheck: {maxRequestBytes: 10, allowPartialMessage: true}\n",
    );
    let r = call(&gw, &origin, "/upload", "allow", &["-d", body]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let check = authz.checks.lock().unwrap().pop().unwrap();
    assert_eq!(check.body, "0123456789");
    assert_eq!(check.headers["x-envoy-auth-partial-body"], "true");
    assert_eq!(
        origin.requests().pop().unwrap().body,
        body,
        "upstream gets it all"
    );
}

/// The authorizer is found as Envoy finds it, through the registry: a `ServiceEntry` with a
/// `STATIC` endpoint (and that endpoint's own port) is all it takes, no `--resolve`. And
/// what it may set upstream (`headersToUpstreamOnAllow`) is its alone: a client's copy is
/// removed whether or not a check ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_from_the_registry_and_its_headers_cannot_be_forged() {
    let origin = Origin::start().await;
    let authz = authorizer().await;
    let yaml = config(&origin, 9000, "")
        + &format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: foo}}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  ports: [{{number: 9000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
"#,
            authz.port
        );
    let gw = Gateway::start(
        &yaml,
        &[&format!("--resolve=api.test:{}:127.0.0.1", origin.port())],
    );
    let forged = ["-H", "x-user: mallory", "-H", "x-user: root"];
    let r = call(&gw, &origin, "/headers", "allow", &forged).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(
        authz.checks.lock().unwrap().len(),
        1,
        "checked by the registered endpoint"
    );
    let seen = origin.requests().pop().unwrap();
    let users: Vec<_> = seen.headers.get_all("x-user").iter().collect();
    assert_eq!(users, ["alice"], "only the authorizer's value");

    // No CUSTOM policy matches /other: no check, and still no client copy upstream.
    let r = call(&gw, &origin, "/other", "allow", &forged).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(authz.checks.lock().unwrap().len(), 1);
    let seen = origin.requests().pop().unwrap();
    assert!(!seen.headers.contains_key("x-user"), "{seen:?}");
}

/// A body the authorizer must see that breaks on the way in (a bad chunk) is the client's
/// fault: 400 malformed and closed, no check, nothing upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_for_the_check_is_a_400() {
    let origin = Origin::start().await;
    let authz = authorizer().await;
    let gw = start(
        &origin,
        authz.port,
        "        includeRequestBodyInCheck: {maxRequestBytes: 100}\n",
    );
    let p = origin.port();
    let req = format!(
        "POST http://api.test:{p}/upload HTTP/1.1\r\nHost: api.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    );
    let (reply, closed) = egress_tests::raw_exchange_async(gw.proxy, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}\n{}", gw.log());
    assert!(reply.contains("x-egress-denied: malformed"), "{reply}");
    assert!(closed);
    assert_eq!(authz.checks.lock().unwrap().len(), 0);
    assert_eq!(origin.count(), 0);
}
