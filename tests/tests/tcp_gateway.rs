//! TCP `Gateway` servers: Istio's TCP egress-gateway pattern (a `protocol: TCP` server, a
//! VirtualService `tcp` route bound to the gateway, a registered TCP ServiceEntry), through
//! the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_gateway_servers_follow_tcp_routes_and_close_without_one() {
    let origin = Origin::start().await;
    // Port 7777 of the manifest is served at `routed`, the second server's at `unrouted`:
    // one offset moves both, so pick ports it can move.
    let (routed, unrouted, offset) = loop {
        let (a, b) = (free_port(), free_port());
        if b > a - 7777 && b - (a - 7777) != 7777 {
            break (a, b, a - 7777);
        }
    };
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-db}}
spec:
  hosts: [my-db.tcp.test]
  ports:
  - {{number: {db}, name: tcp, protocol: TCP}}
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector:
    istio: egressgateway
  servers:
  - port: {{number: 7777, name: tcp, protocol: TCP}}
    hosts: [my-db.tcp.test]
  - port: {{number: {other}, name: tcp-other, protocol: TCP}}
    hosts: [unrouted.tcp.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-db-through-egress-gateway}}
spec:
  hosts: [my-db.tcp.test]
  gateways: [mesh, istio-egressgateway]
  tcp:
  - match:
    - gateways: [mesh]
      port: {db}
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port: {{number: 7777}}
  - match:
    - gateways: [istio-egressgateway]
      port: 7777
    route:
    - destination:
        host: my-db.tcp.test
        port: {{number: {db}}}
"#,
        db = origin.port(),
        other = unrouted - offset,
    );
    let logs = tempfile::tempdir().unwrap();
    let access = logs.path().join("access.log");
    let gw = Gateway::start(
        &yaml,
        &[
            &format!("--resolve=my-db.tcp.test:{}:127.0.0.1", origin.port()),
            "--gateway-port-offset",
            &offset.to_string(),
            &format!("--access-log-file={}", access.display()),
        ],
    );
    // The bytes are opaque to the gateway; HTTP is just a convenient protocol to check them.
    let r = curl_async(&[&format!("http://127.0.0.1:{routed}/over-tcp")]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{r:?}\n{}",
        gw.log()
    );
    assert_eq!(origin.requests()[0].uri, "/over-tcp");

    let r = curl_async(&[&format!("http://127.0.0.1:{unrouted}/nowhere")]).await;
    assert_eq!(r.status, 0, "{r:?}");
    assert!(gw.wait_log("TCP gateway connection closed"), "{}", gw.log());
    assert_eq!(origin.requests().len(), 1);
    let metrics = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        metrics.contains("egress_refusals_total{reason=\"no-route\"} 1"),
        "{metrics}"
    );
    // One access line per connection: the routed one with its bytes, the refused one with
    // its reason.
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&access).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let routed_line = text
        .lines()
        .find(|l| {
            l.contains(&format!(
                "\"TCP -\" authority=\"my-db.tcp.test:{}\"",
                origin.port()
            ))
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        routed_line.contains("reason=-") && !routed_line.contains("bytes_received=0 "),
        "{routed_line}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("\"TCP -\"") && l.contains("reason=no-route")),
        "{text}"
    );
    drop(gw);

    // Authorised at L4: a DENY naming the routed host closes the connection before any dial.
    let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-db}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {hosts: [my-db.tcp.test], ports: [\"7777\"], methods: [GET]}}]\n";
    let gw = Gateway::start(
        &(yaml.clone() + deny),
        &[
            &format!("--resolve=my-db.tcp.test:{}:127.0.0.1", origin.port()),
            "--gateway-port-offset",
            &offset.to_string(),
        ],
    );
    let r = curl_async(&[&format!("http://127.0.0.1:{routed}/denied")]).await;
    assert_eq!(r.status, 0, "{r:?}");
    assert!(gw.wait_log("rbac-denied"), "{}", gw.log());
    assert_eq!(origin.requests().len(), 1);
    let metrics = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        metrics.contains("egress_refusals_total{reason=\"rbac-denied\"} 1"),
        "{metrics}"
    );
}

/// `--max-tunnels` caps TCP Gateway connections with CONNECT tunnels: one over the cap is
/// closed at once (nothing can be said in a TCP stream), counted; a closed one frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_gateway_connections_count_against_max_tunnels() {
    use std::io::{Read, Write};
    let origin = Origin::start().await;
    let listen = free_port();
    let offset = listen - 7777;
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-db}}
spec:
  hosts: [my-db.tcp.test]
  ports: [{{number: {db}, name: tcp, protocol: TCP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 7777, name: tcp, protocol: TCP}}
    hosts: [my-db.tcp.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db}}
spec:
  hosts: [my-db.tcp.test]
  gateways: [istio-egressgateway]
  tcp:
  - match: [{{gateways: [istio-egressgateway], port: 7777}}]
    route: [{{destination: {{host: my-db.tcp.test, port: {{number: {db}}}}}}}]
"#,
        db = origin.port(),
    );
    let gw = Gateway::start(
        &yaml,
        &[
            &format!("--resolve=my-db.tcp.test:{}:127.0.0.1", origin.port()),
            "--gateway-port-offset",
            &offset.to_string(),
            "--max-tunnels",
            "1",
        ],
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
    let request = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /t HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    tokio::task::block_in_place(|| {
        // The first connection holds the only slot while the second tries.
        let first = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut second = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(request(&mut second), "", "over the cap: closed");
        drop(first);
        let mut ok = false;
        for _ in 0..50 {
            let mut third = std::net::TcpStream::connect(addr).unwrap();
            if request(&mut third).ends_with("hello from origin") {
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(ok, "the freed slot was never reused\n{}", gw.log());
    });
    assert!(gw.wait_log("--max-tunnels reached"), "{}", gw.log());
}
