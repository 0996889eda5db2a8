//! VirtualService routing through the real gateway binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::Bytes;
use egress_tests::{Gateway, Origin, curl_async};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

fn split_config(a: &Origin, b: &Origin, http: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: split}}
spec:
  hosts: [split.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {pa}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {pb}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: split}}
spec:
  host: split.test
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: split}}
spec:
  hosts: [split.test]
  http:
{http}"#,
        pa = a.port(),
        pb = b.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_follows_the_weights() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let gw = Gateway::start(
        &split_config(
            &a,
            &b,
            "  - route:\n    - {destination: {host: split.test, subset: v1}, weight: 80}\n    - {destination: {host: split.test, subset: v2}, weight: 20}\n",
        ),
        &[],
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("http://{}/split", gw.proxy).parse().unwrap();
    let n = 10_000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 8 {
                let req = http::Request::get(url.clone())
                    .header("host", "split.test")
                    .body(Empty::new())
                    .unwrap();
                let rsp = client.request(req).await.unwrap();
                assert_eq!(rsp.status(), 200);
                rsp.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .unwrap()
            .unwrap();
    }
    let (ca, cb) = (a.count() as f64, b.count() as f64);
    assert_eq!(ca + cb, n as f64);
    // Chi-square, one degree of freedom, p = 0.001: 10.83.
    let chi = (ca - 8000.0).powi(2) / 8000.0 + (cb - 2000.0).powi(2) / 2000.0;
    assert!(chi < 10.83, "v1 {ca} v2 {cb}: chi2 {chi}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_actions_end_to_end() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let http = r#"  - name: direct
    match: [{uri: {exact: /health}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: docs.example.com, redirectCode: 308}
  - name: rewrite
    match: [{uri: {prefix: /api/v1/}}]
    rewrite: {uri: /v2/, authority: backend.internal}
    headers:
      request: {set: {x-route: rewrite}, remove: [x-secret]}
      response: {add: {x-served-by: egress}, remove: [x-origin]}
    route: [{destination: {host: split.test, subset: v1}}]
  - name: regex
    match: [{uri: {prefix: /users/}}]
    rewrite: {uriRegexRewrite: {match: "^/users/([0-9]+)/(.*)$", rewrite: '/v3/\2/by-id/\1/$0'}}
    route: [{destination: {host: split.test, subset: v1}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 300ms
    route: [{destination: {host: split.test, subset: v2}}]
  - name: only-get
    match: [{method: {exact: GET}, uri: {prefix: /get}}]
    route: [{destination: {host: split.test, subset: v2}}]
"#;
    let slow = Origin::start_with(Duration::from_secs(3)).await;
    let gw = Gateway::start(&split_config(&a, &slow, http), &[]);
    let base = format!("http://{}", gw.proxy);
    let host = ["-H", "Host: split.test"];

    let r = curl_async(&[host[0], host[1], &format!("{base}/health")]).await;
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));

    let r = curl_async(&[host[0], host[1], &format!("{base}/old/page?x=1")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://docs.example.com/new?x=1")
    );

    let r = curl_async(&[
        host[0],
        host[1],
        "-H",
        "x-secret: s",
        &format!("{base}/api/v1/items?q=1"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.header("x-served-by").as_deref(), Some("egress"));
    assert_eq!(r.header("x-origin"), None);
    let seen = a.requests();
    assert_eq!(seen[0].uri, "/v2/items?q=1");
    assert_eq!(seen[0].headers["host"], "backend.internal");
    assert_eq!(seen[0].headers["x-route"], "rewrite");
    assert!(seen[0].headers.get("x-secret").is_none());

    // Envoy's `\N` groups; a `$` in the replacement is literal, as in Envoy.
    let r = curl_async(&[host[0], host[1], &format!("{base}/users/42/posts?page=2")]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(a.requests()[1].uri, "/v3/posts/by-id/42/$0?page=2");

    let started = Instant::now();
    let r = curl_async(&[host[0], host[1], &format!("{base}/slow")]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        r.header("x-egress-error").as_deref(),
        Some("upstream-timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let r = curl_async(&[host[0], host[1], "-X", "DELETE", &format!("{base}/get")]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.header("x-egress-denied").as_deref(), Some("no-route"));
    assert_eq!(b.count(), 0);

    // Hosts without a VirtualService still go through the registry check.
    let r = curl_async(&["-H", "Host: elsewhere.test", &format!("{base}/")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("x-egress-denied").as_deref(),
        Some("registry-only")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_route_destination_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vs.yaml");
    std::fs::write(
        &path,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: team}\nspec:\n  hosts: [api.example.com]\n  http:\n  - route: [{destination: {host: nowhere.example.net}}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(egress_tests::gateway_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VirtualService team/bad: spec.http[0].route[0].destination: route destination nowhere.example.net is not in the service registry"),
        "{err}"
    );
}

/// Istio's "Egress Gateways" task, unchanged but for the origin: the Gateway selects this
/// proxy (default label istio=egressgateway), so the rules bound to it apply and the sidecar
/// hop (bound to `mesh`) is skipped.
const EGRESS_GATEWAY_TASK: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_egress_gateway_task() {
    let origin = Origin::start().await;
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let offset = (free - 80).to_string();
    let gw = Gateway::start(
        EGRESS_GATEWAY_TASK,
        &[
            &format!("--resolve=edition.cnn.com:80:127.0.0.1:{}", origin.port()),
            "--gateway-port-offset",
            &offset,
        ],
    );
    // Through the main listener, as a forward proxy and Host-routed.
    let r = curl_async(&["-x", &gw.proxy_url(), "http://edition.cnn.com/politics"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = curl_async(&[
        "-H",
        "Host: edition.cnn.com",
        &format!("http://{}/sport", gw.proxy),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Through the Gateway server's own listener (port 80 + offset).
    let server = format!("http://127.0.0.1:{free}");
    let r = curl_async(&["-H", "Host: edition.cnn.com", &format!("{server}/world")]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let seen: Vec<String> = origin.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/politics", "/sport", "/world"]);
    assert!(
        origin
            .requests()
            .iter()
            .all(|s| s.headers["host"] == "edition.cnn.com")
    );
    // That listener serves only the hosts of its server.
    let r = curl_async(&["-H", "Host: api.example.com", &format!("{server}/")]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.header("x-egress-denied").as_deref(), Some("no-route"));
    let dump = curl_async(&[&format!("http://{}/config_dump", gw.admin)]).await;
    assert!(
        dump.body.contains("\"default/istio-egressgateway\""),
        "{}",
        dump.body
    );
    assert!(
        dump.body.contains(&format!("127.0.0.1:{free}")),
        "{}",
        dump.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_faults() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let http = r#"  - match: [{uri: {prefix: /fail-first/retried}}]
    retries: {attempts: 2, retryOn: "5xx"}
    route: [{destination: {host: split.test, subset: v1}}]
  - match: [{uri: {prefix: /fail-first/codes}}]
    retries: {attempts: 1, retryOn: "503"}
    route: [{destination: {host: split.test, subset: v1}}]
  - match: [{uri: {prefix: /fail-first/plain}}]
    route: [{destination: {host: split.test, subset: v1}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: split.test, subset: v2}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: split.test, subset: v2}}]
  - match: [{uri: {prefix: /never}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 0}}}
    route: [{destination: {host: split.test, subset: v2}}]
"#;
    let gw = Gateway::start(&split_config(&a, &b, http), &[]);
    let get = |path: &'static str| {
        let url = format!("http://{}{path}", gw.proxy);
        async move { curl_async(&["-H", "Host: split.test", &url]).await }
    };
    // The origin fails the first request for each URI: a retry turns it into a 200.
    let r = get("/fail-first/retried").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get("/fail-first/codes").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get("/fail-first/plain").await;
    assert_eq!(r.status, 503, "no retries configured: {r:?}");
    let uris: Vec<String> = a.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        uris.iter()
            .filter(|u| u.as_str() == "/fail-first/retried")
            .count(),
        2
    );
    assert_eq!(
        uris.iter()
            .filter(|u| u.as_str() == "/fail-first/plain")
            .count(),
        1
    );

    let r = get("/abort").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-egress-fault").as_deref(), Some("abort"));
    let started = Instant::now();
    let r = get("/delay").await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let r = get("/never").await;
    assert_eq!(r.status, 200);
    let b_uris: Vec<String> = b.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        b_uris,
        ["/delay", "/never"],
        "an aborted request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_policies() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool}}
spec:
  hosts: [pool.test, sticky.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 81, name: http2, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {pa}, http2: {pa}}}}}
  - {{address: 127.0.0.1, ports: {{http: {pb}, http2: {pb}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: sticky}}
spec:
  host: sticky.test
  trafficPolicy:
    loadBalancer:
      consistentHash: {{httpHeaderName: x-user}}
    portLevelSettings:
    - port: {{number: 81}}
      loadBalancer: {{simple: ROUND_ROBIN}}
"#,
        pa = a.port(),
        pb = b.port()
    );
    let gw = Gateway::start(&yaml, &[]);
    let get = |host: &'static str, user: String| {
        let url = format!("http://{}/", gw.proxy);
        async move {
            let r = curl_async(&[
                "-H",
                &format!("Host: {host}"),
                "-H",
                &format!("x-user: {user}"),
                &url,
            ])
            .await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    };
    // Round robin (no DestinationRule for pool.test): both endpoints share the load.
    for i in 0..10 {
        get("pool.test", format!("u{i}")).await;
    }
    assert_eq!((a.count(), b.count()), (5, 5));
    // Consistent hash on x-user: each user sticks to one endpoint; users spread.
    let mut per_user = Vec::new();
    for i in 0..8 {
        let (ca, cb) = (a.count(), b.count());
        for _ in 0..3 {
            get("sticky.test", format!("user-{i}")).await;
        }
        let (da, db) = (a.count() - ca, b.count() - cb);
        assert!(da == 3 || db == 3, "user-{i} was split: {da}/{db}");
        per_user.push(da == 3);
    }
    assert!(
        per_user.iter().any(|x| *x) && per_user.iter().any(|x| !*x),
        "{per_user:?}"
    );
    // portLevelSettings: port 81 is round robin whatever the header.
    let (ca, cb) = (a.count(), b.count());
    for _ in 0..4 {
        let url = format!("http://{}/", gw.proxy);
        let r = curl_async(&["-H", "Host: sticky.test:81", "-H", "x-user: same", &url]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!((a.count() - ca, b.count() - cb), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_steer_connect_tunnels() {
    let origin = Origin::start().await;
    let port = origin.port();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db}}\nspec:\n  hosts: [db.example.com]\n  ports: [{{number: {port}, name: tcp, protocol: TCP}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db-alias}}\nspec:\n  hosts: [db.alias.test]\n  tcp:\n  - match: [{{port: {port}}}]\n    route: [{{destination: {{host: db.example.com, port: {{number: {port}}}}}}}]\n"
    );
    let gw = Gateway::start(
        &yaml,
        &[&format!("--resolve=db.example.com:{port}:127.0.0.1")],
    );
    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://db.alias.test:{port}/aliased"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(origin.requests()[0].uri, "/aliased");
    // Another port of the alias has no route and no registration.
    let r = curl_async(&["-p", "-x", &gw.proxy_url(), "http://db.alias.test:9/"]).await;
    assert_eq!(r.status, 403, "{r:?}");
}
