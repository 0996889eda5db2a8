//! Heap allocations of one proxied request through the gateway's whole stack (registry,
//! VirtualService route with a header match and a header set, DENY and ALLOW policies,
//! path normalisation, metrics), counted by a global allocator on the one thread that runs
//! everything: the client, the gateway's stack and the origin. The budget is the count
//! measured when the test was written, so that a change that allocates more per request
//! fails here and is looked at.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local `Cell` that never allocates.
#[allow(unsafe_code, reason = "a counting global allocator")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per request: 36 measured on 2026-12-06 (client, stack and origin together; see
/// benches/README.md), with a little slack
/// for allocator-independent noise such as a hash map growing at a different request.
const BUDGET: u64 = 38;

#[test]
fn one_proxied_request_allocates_within_budget() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_request = rt.block_on(run());
    eprintln!("allocations per proxied request: {per_request}");
    assert!(
        per_request <= BUDGET,
        "{per_request} allocations per request, over the budget of {BUDGET}"
    );
}

async fn run() -> u64 {
    use egress_core::mirror::{MirrorConfig, MirrorLayer};
    use egress_core::proxy_headers::ProxyHeadersConfig;
    use egress_core::telemetry::Metrics;
    use egress_core::transport::{Dialer, DialerConfig, Overrides, UpstreamConfig};
    use egress_gateway::stack::{self, Security, StackConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = origin.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((io, _)) = origin.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"hello")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: origin}}
spec:
  hosts: [origin.test]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: origin}}
spec:
  hosts: [origin.test]
  http:
  - match: [{{headers: {{x-debug: {{exact: "1"}}}}}}]
    directResponse: {{status: 418}}
  - route: [{{destination: {{host: origin.test, port: {{number: {port}}}}}}}]
    headers: {{request: {{set: {{x-via: egress}}}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: istio-system}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - when: [{{key: "request.headers[x-team]", values: ["blue"]}}]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let loaded = egress_gateway::config::load(&egress_gateway::cli::ConfigArgs {
        config: vec![file],
        outbound_policy: None,
        gateway_name: "istio-system/istio-egressgateway".into(),
        gateway_labels: vec![("istio".into(), "egressgateway".into())],
        path_normalization: None,
        mesh_certs: "/etc/certs".into(),
        credentials: None,
    })
    .unwrap();
    let mut overrides = Overrides::new();
    overrides
        .add(&format!("origin.test:{port}:127.0.0.1"))
        .unwrap();
    let config = StackConfig {
        policy: egress_policy::snapshot::PolicyStore::new(loaded.into_policy().0),
        dialer: Arc::new(Dialer::new(
            DialerConfig::default().with_overrides(overrides),
        )),
        upstream: UpstreamConfig::default(),
        proxy_headers: ProxyHeadersConfig::default(),
        mirror: MirrorLayer::new(MirrorConfig::default()),
        tunnel_idle_timeout: Duration::from_secs(10),
        tunnels: tokio_util::task::TaskTracker::new(),
        tunnel_slots: Arc::new(tokio::sync::Semaphore::new(4)),
        metrics: Metrics::new("alloc-test", false),
        security: Security {
            ext_authz: egress_policy::ext_authz::ExtAuthzLayer::from_snapshot(4, 0),
            jwks: egress_policy::jwt::JwksStore::default(),
            allow_path_parameters: false,
            underscores: egress_core::destination::Underscores::Reject,
            xff_hops: 0,
        },
        tracer: None,
        conn_stats: Arc::default(),
    };
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway.local_addr().unwrap();
    let svc = stack::build(config, None);
    tokio::spawn(async move {
        while let Ok((io, peer)) = gateway.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc =
                    hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                        svc,
                        move |mut req: http::Request<hyper::body::Incoming>| {
                            req.extensions_mut()
                                .insert(egress_core::ctx::ClientAddr(peer));
                            req
                        },
                    ));
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc)
                .await;
            });
        }
    });
    let mut client = tokio::net::TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "GET http://origin.test:{port}/api/items?x=1 HTTP/1.1\r\nHost: origin.test:{port}\r\nx-team: blue\r\n\r\n"
    );
    let mut buf = vec![0u8; 4096];
    let mut exchange = async |client: &mut tokio::net::TcpStream| {
        client.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    };
    // Warm up: the upstream connection is pooled, metric label sets exist.
    for _ in 0..5 {
        exchange(&mut client).await;
    }
    let n = 50;
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..n {
        exchange(&mut client).await;
    }
    (ALLOCATIONS.with(Cell::get) - before) / n
}
