//! Mirroring through the real gateway binary: fire-and-forget, bounded, counted.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::Bytes;
use egress_tests::{Gateway, Origin, curl_async};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

fn config(primary: &Origin, shadow_port: u16, http: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: primary}}
spec:
  hosts: [api.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {p}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shadow}}
spec:
  hosts: [shadow.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {s}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.test]
  http:
{http}"#,
        p = primary.port(),
        s = shadow_port
    )
}

async fn timed_get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    gw: &Gateway,
    path: &str,
) -> Duration {
    let req = http::Request::get(format!("http://{}{path}", gw.proxy))
        .header("host", "api.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.into_body().collect().await.unwrap();
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn stats(gw: &Gateway) -> String {
    curl_async(&[&format!("http://{}/stats", gw.admin)])
        .await
        .body
}

async fn wait_for(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_dead_mirrors_never_slow_the_primary() {
    let primary = Origin::start().await;
    let slow_mirror = Origin::start_with(Duration::from_secs(2)).await;
    let routes = "  - match: [{uri: {prefix: /mirrored}}]\n    route: [{destination: {host: api.test}}]\n    mirror: {host: shadow.test}\n  - route: [{destination: {host: api.test}}]\n";
    let gw = Gateway::start(&config(&primary, slow_mirror.port(), routes), &[]);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..20 {
        without.push(timed_get(&client, &gw, "/plain").await);
        with.push(timed_get(&client, &gw, "/mirrored").await);
    }
    let (w, wo) = (median(with), median(without));
    // The mirror sleeps 2 s per request; a primary that waited for it would show it.
    assert!(
        w < wo + Duration::from_millis(200),
        "median with mirror {w:?}, without {wo:?}"
    );
    assert!(
        wait_for(|| slow_mirror.count() == 20).await,
        "mirror saw {}",
        slow_mirror.count()
    );
    let copy = &slow_mirror.requests()[0];
    assert_eq!(copy.uri, "/mirrored");
    assert_eq!(copy.headers["host"], "api.test");
    assert_eq!(copy.headers["x-egress-mirrored"], "true");
    assert_eq!(primary.count(), 40);
    assert!(
        primary
            .requests()
            .iter()
            .all(|s| s.headers.get("x-egress-mirrored").is_none())
    );

    // A mirror that refuses connections: the primary is unaffected, failures are counted.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&config(&primary, dead, routes), &[]);
    for _ in 0..5 {
        let r = curl_async(&[
            "-H",
            "Host: api.test",
            &format!("http://{}/mirrored", gw.proxy),
        ])
        .await;
        assert_eq!((r.status, r.body.as_str()), (200, "hello from origin"));
    }
    let mut text = String::new();
    for _ in 0..50 {
        text = stats(&gw).await;
        if text.contains("egress_mirror_requests_total{outcome=\"failed\"} 5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("egress_mirror_requests_total{outcome=\"failed\"} 5"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_share_bound_bodies_and_shadow_host() {
    let primary = Origin::start().await;
    let mirror = Origin::start().await;
    let routes = "  - match: [{uri: {prefix: /half}}]\n    route: [{destination: {host: api.test}}]\n    mirror: {host: shadow.test}\n    mirrorPercentage: {value: 50}\n  - match: [{uri: {prefix: /none}}]\n    route: [{destination: {host: api.test}}]\n    mirrors: [{destination: {host: shadow.test}, percentage: {value: 0}}]\n  - route: [{destination: {host: api.test}}]\n    mirrors: [{destination: {host: shadow.test}}]\n";
    let gw = Gateway::start(
        &config(&primary, mirror.port(), routes),
        &["--mirror-max-body=1000", "--mirror-host-suffix"],
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    let n = 1000;
    for _ in 0..n {
        timed_get(&client, &gw, "/half").await;
    }
    for _ in 0..20 {
        timed_get(&client, &gw, "/none").await;
    }
    assert!(wait_for(|| mirror.count() > 0).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = mirror.count() as f64;
    let chi = (got - 500.0).powi(2) / 500.0 + ((n as f64 - got) - 500.0).powi(2) / 500.0;
    assert!(chi < 10.83, "mirrored {got} of {n}: chi2 {chi}");
    assert!(mirror.requests().iter().all(|s| s.uri == "/half"));
    assert_eq!(mirror.requests()[0].headers["host"], "api.test-shadow");

    // Bodies: a small one is copied whole, a large one is not mirrored but reaches the primary.
    let before = mirror.count();
    let small = curl_async(&[
        "-H",
        "Host: api.test",
        "--data-binary",
        "small body",
        &format!("http://{}/post", gw.proxy),
    ])
    .await;
    assert_eq!(small.status, 200);
    assert!(wait_for(|| mirror.count() == before + 1).await);
    assert_eq!(mirror.requests().last().unwrap().body, "small body");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, "y".repeat(5000)).unwrap();
    let big = curl_async(&[
        "-H",
        "Host: api.test",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{}/post", gw.proxy),
    ])
    .await;
    assert_eq!(big.status, 200);
    assert_eq!(primary.requests().last().unwrap().body.len(), 5000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mirror.count(),
        before + 1,
        "a body over --mirror-max-body was mirrored"
    );
    assert!(
        stats(&gw)
            .await
            .contains("egress_mirror_requests_total{outcome=\"dropped_body\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_beyond_the_bound_are_dropped_and_counted() {
    let primary = Origin::start().await;
    let slow = Origin::start_with(Duration::from_secs(2)).await;
    let routes = "  - route: [{destination: {host: api.test}}]\n    mirror: {host: shadow.test}\n";
    let gw = Gateway::start(
        &config(&primary, slow.port(), routes),
        &["--mirror-max-concurrency=2"],
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..10 {
        timed_get(&client, &gw, "/x").await;
    }
    let text = stats(&gw).await;
    assert!(
        text.contains("egress_mirror_requests_total{outcome=\"sent\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("egress_mirror_requests_total{outcome=\"dropped_overload\"} 8"),
        "{text}"
    );
    assert_eq!(primary.count(), 10);
}

/// Istio's "Mirroring" task: its DestinationRule and VirtualService unchanged, with a
/// ServiceEntry standing in for the Kubernetes Service whose pods carry version labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mirroring_task() {
    let (v1, v2) = (Origin::start().await, Origin::start().await);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {p1}}}, labels: {{app: httpbin, version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {p2}}}, labels: {{app: httpbin, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
"#,
        p1 = v1.port(),
        p2 = v2.port()
    );
    let gw = Gateway::start(&yaml, &[]);
    for _ in 0..5 {
        let r = curl_async(&[
            "-H",
            "Host: httpbin:8000",
            &format!("http://{}/headers", gw.proxy),
        ])
        .await;
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    }
    assert_eq!(v1.count(), 5);
    assert!(wait_for(|| v2.count() == 5).await, "v2 saw {}", v2.count());
    assert!(
        v2.requests()
            .iter()
            .all(|s| s.headers["host"] == "httpbin:8000")
    );
}
