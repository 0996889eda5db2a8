//! CUSTOM authorization with a gRPC authorizer (`envoyExtAuthzGrpc`) through the real
//! binary: a tonic server implementing Envoy's `envoy.service.auth.v3.Authorization` with
//! Envoy's own generated types, on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async, service_entry};
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the authorizer saw of one check: method, path, host and headers.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    host: String,
    headers: std::collections::HashMap<String, String>,
    source: String,
    body: String,
}

#[derive(Clone, Default)]
struct Authz {
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = request.into_inner().attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let source = attrs
            .source
            .and_then(|s| s.address)
            .map(|a| format!("{a:?}"))
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method: http.method.clone(),
            path: http.path.clone(),
            host: http.host.clone(),
            headers: http.headers.clone(),
            source,
            body: http.body.clone(),
        });
        let verdict = http.headers.get("x-verdict").cloned().unwrap_or_default();
        let rsp = match verdict.as_str() {
            "allow" => CheckResponse {
                status: Some(Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-user", "alice")],
                    headers_to_remove: vec!["x-secret".into(), "host".into()],
                    response_headers_to_add: vec![header("x-authz", "grpc")],
                    ..Default::default()
                })),
                ..Default::default()
            },
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                CheckResponse::default()
            }
            "broken" => return Err(tonic::Status::internal("authorizer bug")),
            _ => CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![header("x-reason", "no token")],
                    body: "denied by the gRPC authorizer".into(),
                })),
                ..Default::default()
            },
        };
        Ok(tonic::Response::new(rsp))
    }
}

async fn authorizer() -> (Authz, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let authz = Authz::default();
    let server = AuthorizationServer::new(authz.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (authz, port)
}

fn config(origin: &Origin, authz_port: u16, extra: &str) -> String {
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
    - name: grpc-authz
      envoyExtAuthzGrpc:
        service: ext-authz-grpc.foo.svc.cluster.local
        port: {authz_port}
        timeout: 1s
{extra}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  action: CUSTOM
  provider: {{name: grpc-authz}}
  rules:
  - to: [{{operation: {{paths: ["/secure*"]}}}}]
"#
    )
}

fn start(origin: &Origin, authz_port: u16, extra: &str) -> Gateway {
    Gateway::start(
        &config(origin, authz_port, extra),
        &[
            &format!("--resolve=api.test:{}:127.0.0.1", origin.port()),
            &format!("--resolve=ext-authz-grpc.foo.svc.cluster.local:{authz_port}:127.0.0.1"),
        ],
    )
}

async fn get(
    gw: &Gateway,
    origin: &Origin,
    path: &str,
    headers: &[&str],
) -> egress_tests::CurlOutput {
    let url = format!("http://api.test:{}{path}", origin.port());
    let proxy = gw.proxy_url();
    let mut args = vec!["-x", proxy.as_str()];
    for h in headers {
        args.extend(["-H", *h]);
    }
    args.push(&url);
    curl_async(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_authorizer_allows_denies_and_sets_headers() {
    let origin = Origin::start().await;
    let (authz, port) = authorizer().await;
    let gw = start(&origin, port, "");

    // Allowed: the authorizer's x-user replaces the client's, x-secret is removed, the
    // response gets x-authz; Host stays the request's.
    let r = get(
        &gw,
        &origin,
        "/secure/data?q=1",
        &["x-verdict: allow", "x-user: mallory", "x-secret: s3cr3t"],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.header("x-authz").as_deref(), Some("grpc"), "{r:?}");
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.headers["x-user"], "alice", "{seen:?}");
    assert_eq!(seen.headers.get_all("x-user").iter().count(), 1);
    assert!(!seen.headers.contains_key("x-secret"), "{seen:?}");
    assert!(
        seen.headers["host"]
            .to_str()
            .unwrap()
            .starts_with("api.test"),
        "{seen:?}"
    );
    let check = authz.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (check.method.as_str(), check.path.as_str()),
        ("GET", "/secure/data?q=1")
    );
    assert!(check.host.starts_with("api.test"), "{check:?}");
    assert_eq!(
        check.headers.get("x-verdict").map(String::as_str),
        Some("allow")
    );
    assert!(check.source.contains("127.0.0.1"), "{check:?}");

    // Denied: the authorizer's status, body and headers, with the gateway's reason.
    let r = get(&gw, &origin, "/secure/data", &["x-verdict: deny"]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, "denied by the gRPC authorizer");
    assert_eq!(r.header("x-reason").as_deref(), Some("no token"));
    assert_eq!(
        r.header("x-egress-denied").as_deref(),
        Some("ext-authz-denied")
    );

    // A path no CUSTOM policy covers is not checked.
    let before = authz.seen.lock().unwrap().len();
    assert_eq!(
        get(&gw, &origin, "/public", &["x-verdict: deny"])
            .await
            .status,
        200
    );
    assert_eq!(authz.seen.lock().unwrap().len(), before);

    // A failing authorizer (gRPC error, or no answer within the timeout) fails closed
    // with statusOnError's 403, bounded in time.
    let r = get(&gw, &origin, "/secure/x", &["x-verdict: broken"]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.header("x-egress-denied").as_deref(),
        Some("ext-authz-error")
    );
    let started = Instant::now();
    let r = get(&gw, &origin, "/secure/x", &["x-verdict: slow"]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        gw.log().contains("external authorization failed"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_authorizer_down_fails_closed_or_open_and_sees_the_body() {
    let origin = Origin::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = start(&origin, closed, "        statusOnError: \"503\"\n");
    let r = get(&gw, &origin, "/secure/x", &["x-verdict: allow"]).await;
    assert_eq!(r.status, 503, "{r:?}");
    let gw = start(&origin, closed, "        failOpen: true\n");
    let r = get(
        &gw,
        &origin,
        "/secure/x",
        &["x-verdict: allow", "x-user: mallory"],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    // includeRequestBodyInCheck: the authorizer gets the body; the origin gets it whole.
    let (authz, port) = authorizer().await;
    let gw = start(
        &origin,
        port,
        "        includeRequestBodyInCheck: {maxRequestBytes: 1024}\n",
    );
    let url = format!("http://api.test:{}/secure/upload", origin.port());
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-H",
        "x-verdict: allow",
        "--data-binary",
        "hello body",
        &url,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let check = authz.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (check.method.as_str(), check.body.as_str()),
        ("POST", "hello body")
    );
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.body, "hello body");
}

/// The gRPC provider takes only Istio's fields for it: the HTTP provider's header lists
/// are unknown there (warned with their path), and a provider cannot be both.
#[test]
fn grpc_provider_fields_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    extensionProviders:\n    - name: g\n      envoyExtAuthzGrpc: {service: a.test, port: 9000, pathPrefix: /x}\n    - name: both\n      envoyExtAuthzGrpc: {service: a.test, port: 9000}\n      envoyExtAuthzHttp: {service: a.test, port: 9000}\n",
    )
    .unwrap();
    let out = std::process::Command::new(egress_tests::gateway_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("envoyExtAuthzGrpc.pathPrefix"), "{err}");
    assert!(
        err.contains("envoyExtAuthzHttp or envoyExtAuthzGrpc, not both"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
}
