//! The real gateway binary, real origins on 127.0.0.1:0, real curl.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async, raw_exchange_async, service_entry};
use std::time::{Duration, Instant};

/// A gateway that registers `api.example.com` on the origin's port and maps it there.
fn api_gateway(origin: &Origin, extra: &[&str]) -> Gateway {
    let yaml = service_entry(
        "api",
        "api.example.com",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    );
    let mut args = vec![mapped("api.example.com", origin)];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start(&yaml, &refs)
}

fn mapped(name: &str, origin: &Origin) -> String {
    format!("--resolve={name}:{}:127.0.0.1", origin.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_allows_registered_and_refuses_the_rest() {
    let origin = Origin::start().await;
    let port = origin.port();
    let config = service_entry(
        "api",
        "api.example.com",
        port,
        "HTTP",
        "  resolution: DNS\n",
    );
    // Both names map to the origin: a refusal must come from the registry, not from DNS.
    let gw = Gateway::start(
        &config,
        &[
            &mapped("api.example.com", &origin),
            &mapped("evil.example.net", &origin),
        ],
    );

    let ok = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-U",
        "user:secret",
        &format!("http://API.example.com:{port}/get?q=1"),
    ])
    .await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gw.log());
    assert_eq!(ok.body, "hello from origin");
    assert_eq!(ok.header("x-origin").as_deref(), Some("1"));
    assert_eq!(ok.header("via").as_deref(), Some("1.1 egress-gateway"));
    assert_eq!(
        ok.header("x-hop"),
        None,
        "hop-by-hop response header named in Connection leaked"
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/get?q=1", "origin-form path upstream");
    assert_eq!(seen[0].headers["host"], format!("api.example.com:{port}"));
    assert_eq!(seen[0].headers["via"], "1.1 egress-gateway");
    assert!(
        seen[0].headers.get("proxy-authorization").is_none(),
        "Proxy-Authorization forwarded"
    );
    assert!(seen[0].headers.get("proxy-connection").is_none());

    let refused = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://evil.example.net:{port}/"),
    ])
    .await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(
        refused.header("x-egress-denied").as_deref(),
        Some("registry-only")
    );
    assert!(
        refused.body.contains(&format!("evil.example.net:{port}"))
            && refused.body.contains("REGISTRY_ONLY"),
        "{}",
        refused.body
    );
    assert_eq!(origin.count(), 1, "the origin saw the refused request");
    assert!(
        gw.wait_log("reason=\"registry-only\""),
        "refusal not logged:\n{}",
        gw.log()
    );

    // Host-routed (origin-form), as an Istio egress gateway receives traffic from sidecars.
    let hosted = curl_async(&[
        "-H",
        &format!("Host: api.example.com:{port}"),
        &format!("http://{}/hosted", gw.proxy),
    ])
    .await;
    assert_eq!(hosted.status, 200, "{hosted:?}");
    assert_eq!(origin.requests()[1].uri, "/hosted");
    let hosted = curl_async(&[
        "-H",
        &format!("Host: evil.example.net:{port}"),
        &format!("http://{}/", gw.proxy),
    ])
    .await;
    assert_eq!(hosted.status, 502);

    // A port that is not registered is refused even for a registered host.
    let other_port = curl_async(&["-x", &gw.proxy_url(), "http://api.example.com:81/"]).await;
    assert_eq!(other_port.status, 502);
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_and_h2c_works() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = api_gateway(&origin, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, "x".repeat(300_000)).unwrap();
    let data = format!("@{}", file.display());
    let post = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "--data-binary",
        &data,
        &format!("http://api.example.com:{port}/upload"),
    ])
    .await;
    assert_eq!(post.status, 200, "{post:?}");
    let seen = origin.requests();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body.len(), 300_000);

    let h2 = curl_async(&[
        "--http2-prior-knowledge",
        "-H",
        &format!("Host: api.example.com:{port}"),
        &format!("http://{}/h2", gw.proxy),
    ])
    .await;
    assert_eq!(h2.status, 200, "{h2:?}");
    assert!(h2.headers.starts_with("HTTP/2 200"), "{}", h2.headers);
    assert_eq!(origin.requests()[1].uri, "/h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused_upstream() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = api_gateway(&origin, &[]);
    let url = format!("http://api.example.com:{port}/");
    for _ in 0..3 {
        // Separate curl processes: separate client connections, one pooled upstream one.
        let r = curl_async(&["-x", &gw.proxy_url(), &url]).await;
        assert_eq!(r.status, 200);
        // The upstream connection returns to the pool from its own task after the body.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.count(), 3);
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "upstream connection not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_are_checked() {
    let origin = Origin::start().await;
    let port = origin.port();
    // TCP: an opaque port, so plain HTTP may travel in the tunnel (TLS ports are checked
    // for a ClientHello; see tls.rs).
    let config = service_entry(
        "tls",
        "secure.example.com",
        port,
        "TCP",
        "  resolution: DNS\n",
    ) + &service_entry(
        "plain",
        "plain.example.com",
        port,
        "HTTP",
        "  resolution: DNS\n",
    );
    let gw = Gateway::start(
        &config,
        &[
            &mapped("secure.example.com", &origin),
            &mapped("plain.example.com", &origin),
            &mapped("evil.example.net", &origin),
        ],
    );

    // curl -p tunnels even plain http:// through CONNECT; the origin answers inside.
    let ok = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://secure.example.com:{port}/in-tunnel"),
    ])
    .await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gw.log());
    assert_eq!(ok.body, "hello from origin");
    assert_eq!(origin.requests()[0].uri, "/in-tunnel");

    let refused = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://evil.example.net:{port}/"),
    ])
    .await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.headers.contains("x-egress-denied: registry-only"),
        "{}",
        refused.headers
    );
    let http_port = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://plain.example.com:{port}/"),
    ])
    .await;
    assert_eq!(http_port.status, 403);
    assert!(
        http_port
            .headers
            .contains("x-egress-denied: tunnel-not-allowed"),
        "{}",
        http_port.headers
    );
    assert_eq!(origin.count(), 1, "refused tunnels reached the origin");
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // A refused CONNECT closes the connection: bytes sent after it are never parsed as a
    // second request.
    let smuggled = format!(
        "CONNECT evil.example.net:{port} HTTP/1.1\r\nHost: evil.example.net:{port}\r\n\r\nGET http://secure.example.com:{port}/smuggled HTTP/1.1\r\nHost: secure.example.com:{port}\r\n\r\n"
    );
    let (rsp, closed) = raw_exchange_async(gw.proxy, smuggled.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 403"), "{rsp}");
    assert!(rsp.contains("connection: close"), "{rsp}");
    assert_eq!(
        rsp.matches("HTTP/1.1").count(),
        1,
        "second request was answered: {rsp}"
    );
    assert!(closed);
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_passes_unregistered_destinations() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = Gateway::start(
        "",
        &[
            "--outbound-policy",
            "allow-any",
            &mapped("anything.example.org", &origin),
        ],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://anything.example.org:{port}/free"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://anything.example.org:{port}/tunnel"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(origin.count(), 2);

    // A Sidecar in the config sets the policy too.
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n";
    let gw = Gateway::start(sidecar, &[&mapped("anything.example.org", &origin)]);
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://anything.example.org:{port}/sidecar"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_internal_addresses_unless_declared() {
    let origin = Origin::start().await;
    let port = origin.port();
    // `localhost` resolves to 127.0.0.1 through the system resolver: refused even though it
    // is registered, and even under ALLOW_ANY.
    let config = service_entry("local", "localhost", port, "HTTP", "  resolution: DNS\n")
        + &service_entry(
            "wild",
            "*.internal.test",
            port,
            "HTTP",
            "  resolution: NONE\n",
        );
    let gw = Gateway::start(&config, &[]);
    let r = curl_async(&["-x", &gw.proxy_url(), &format!("http://localhost:{port}/")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-egress-denied").as_deref(), Some("ip-denied"));
    assert!(r.body.contains("127.0.0.1 (loopback)"), "{}", r.body);
    let gw_any = Gateway::start("", &["--outbound-policy", "allow-any"]);
    for target in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://10.0.0.1/".to_owned(),
    ] {
        let r = curl_async(&["-x", &gw_any.proxy_url(), &target]).await;
        assert_eq!(r.status, 502, "{target}: {r:?}");
        assert_eq!(
            r.header("x-egress-denied").as_deref(),
            Some("ip-denied"),
            "{target}"
        );
        let r = curl_async(&["-p", "-x", &gw_any.proxy_url(), &target]).await;
        assert!(
            r.status == 502 && r.headers.contains("ip-denied"),
            "CONNECT {target}: {r:?}"
        );
    }
    assert_eq!(origin.count(), 0);

    // Declared: a STATIC endpoint, an address in spec.addresses, or --resolve.
    let config = service_entry(
        "static",
        "static.test",
        port,
        "HTTP",
        "  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n",
    ) + &service_entry(
        "byip",
        "127.0.0.1",
        port,
        "HTTP",
        "  addresses: [127.0.0.1]\n  resolution: NONE\n",
    ) + &service_entry("mapped", "mapped.test", port, "HTTP", "  resolution: DNS\n");
    let gw = Gateway::start(&config, &[&mapped("mapped.test", &origin)]);
    for host in ["static.test", "127.0.0.1", "mapped.test"] {
        let r = curl_async(&[
            "-x",
            &gw.proxy_url(),
            &format!("http://{host}:{port}/{host}"),
        ])
        .await;
        assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.log());
    }
    assert_eq!(origin.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_get_400_and_a_closed_connection() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = api_gateway(&origin, &["--outbound-policy", "allow-any"]);
    let h = format!("api.example.com:{port}");
    let cases = [
        format!("GET / HTTP/1.1\r\nHost: {h}\r\nHost: evil.example.net\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {h}, evil.example.net\r\n\r\n"),
        format!("GET http://{h}/ HTTP/1.1\r\nHost: evil.example.net\r\n\r\n"),
        format!("GET http://user:pw@{h}/ HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        "GET / HTTP/1.1\r\nHost: 2130706433\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: 0x7f.1\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: 0177.0.0.1\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: api.example.com:+80\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: api.example.com:0080\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\n\r\n".to_owned(),
        format!("CONNECT {h} HTTP/1.1\r\nHost: evil.example.net:443\r\n\r\n"),
        "CONNECT api.example.com HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_owned(),
    ];
    for raw in &cases {
        let (rsp, closed) = raw_exchange_async(gw.proxy, raw.as_bytes()).await;
        assert!(rsp.starts_with("HTTP/1.1 400"), "{raw:?} got {rsp:?}");
        assert!(closed, "{raw:?}: connection left open");
    }
    assert_eq!(origin.count(), 0, "an ambiguous request reached the origin");
    // Content-Length with Transfer-Encoding: hyper, the only parser, drops Content-Length,
    // decodes the chunked body and closes the connection after answering (RFC 9112 6.3),
    // so bytes hidden behind the declared length are never read as a second request.
    let smuggle = format!(
        "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"
    );
    let (rsp, closed) = raw_exchange_async(gw.proxy, smuggle.as_bytes()).await;
    assert!(closed, "{rsp}");
    assert!(rsp.contains("connection: close"), "{rsp}");
    assert!(
        !origin.requests().iter().any(|s| s.uri.contains("smuggled")),
        "smuggled request reached the origin"
    );
    for seen in origin.requests() {
        assert!(
            seen.headers.get("content-length").is_none_or(|v| v == "0"),
            "{seen:?}"
        );
    }
    // The gateway is still healthy.
    let r = curl_async(&["-x", &gw.proxy_url(), &format!("http://{h}/")]).await;
    assert_eq!(r.status, 200);
    assert!(gw.wait_log("reason=\"malformed\""), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_say_which() {
    let slow = Origin::start_with(Duration::from_secs(5)).await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = service_entry(
        "down",
        "down.test",
        closed_port,
        "HTTP",
        "  resolution: DNS\n",
    ) + &service_entry(
        "slow",
        "slow.test",
        slow.port(),
        "HTTP",
        "  resolution: DNS\n",
    ) + &service_entry("nx", "nx.invalid", 80, "HTTP", "  resolution: DNS\n");
    let gw = Gateway::start(
        &config,
        &[
            &format!("--resolve=down.test:{closed_port}:127.0.0.1"),
            &mapped("slow.test", &slow),
            "--request-timeout=500ms",
        ],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://down.test:{closed_port}/"),
    ])
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-egress-error").as_deref(),
        Some("connect-failed")
    );
    assert!(
        r.body.contains("down.test") && r.body.to_lowercase().contains("refused"),
        "{}",
        r.body
    );
    let started = Instant::now();
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://slow.test:{}/", slow.port()),
    ])
    .await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        r.header("x-egress-error").as_deref(),
        Some("upstream-timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let r = curl_async(&["-x", &gw.proxy_url(), "http://nx.invalid/"]).await;
    assert!(r.status == 503 || r.status == 504, "{r:?}");
    assert!(
        r.header("x-egress-error")
            .is_some_and(|e| e.starts_with("dns-")),
        "{r:?}"
    );
    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://down.test:{closed_port}/"),
    ])
    .await;
    assert_eq!(
        r.status, 403,
        "CONNECT to a registered HTTP port is refused before dialling: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_loop_into_the_gateway() {
    // Map a registered name to the gateway's own proxy port: the dialer refuses it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        service_entry("me", "me.test", port, "HTTP", "  resolution: DNS\n"),
    )
    .unwrap();
    let args = vec![
        "--config".to_owned(),
        dir.path().join("c.yaml").display().to_string(),
        format!("--resolve=me.test:{port}:127.0.0.1"),
    ];
    // Use the fixed port for the proxy listener (the only way to know it before start).
    let mut args_fixed = args.clone();
    args_fixed.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
    let gw = Gateway::start_raw(&args_fixed, dir);
    assert_eq!(gw.proxy.port(), port);
    let r = curl_async(&["-x", &gw.proxy_url(), &format!("http://me.test:{port}/")]).await;
    assert_eq!(r.status, 508, "{r:?}");
    assert_eq!(
        r.header("x-egress-denied").as_deref(),
        Some("loop-detected")
    );
    // A Via naming this gateway is a loop too.
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-H",
        "Via: 1.1 egress-gateway",
        &format!("http://me.test:{port}/"),
    ])
    .await;
    assert_eq!(r.status, 508, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let gw = Gateway::start("", &["--header-read-timeout=500ms"]);
    let (rsp, closed) = raw_exchange_async(
        gw.proxy,
        b"GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Slow: ",
    )
    .await;
    assert!(closed, "slowloris connection left open: {rsp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let origin = Origin::start().await;
    let gw = api_gateway(&origin, &[]);
    let ready = curl_async(&[&format!("http://{}/healthz/ready", gw.admin)]).await;
    assert_eq!(ready.status, 200);
    let dump = curl_async(&[&format!("http://{}/config_dump", gw.admin)]).await;
    assert_eq!(dump.status, 200);
    assert_eq!(
        dump.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        dump.body
            .contains("\"outboundTrafficPolicy\": \"REGISTRY_ONLY\""),
        "{}",
        dump.body
    );
    assert!(dump.body.contains("\"api.example.com\""), "{}", dump.body);
    assert!(dump.body.contains("\"resolve\""), "{}", dump.body);
    assert!(
        dump.body.contains("\"resources\"") && dump.body.contains("\"virtual_services\""),
        "{}",
        dump.body
    );
    assert!(dump.body.contains("\"lastReload\""), "{}", dump.body);
    let missing = curl_async(&[&format!("http://{}/nope", gw.admin)]).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_cut_off() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = api_gateway(&origin, &["--body-idle-timeout=500ms"]);
    let started = Instant::now();
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://api.example.com:{port}/stall"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "partial");
    assert_ne!(
        r.exit, 0,
        "a stalled body must end in an error, not look complete: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_leave_from_the_fixed_source_address() {
    let origin = Origin::start().await;
    let port = origin.port();
    let config = service_entry(
        "api",
        "api.example.com",
        port,
        "HTTP",
        "  resolution: DNS\n",
    ) + &service_entry(
        "tunnel",
        "tunnel.example.com",
        port,
        "TCP",
        "  resolution: DNS\n",
    );
    // Every 127.0.0.0/8 address is local on Linux: 127.0.0.7 stands for the egress IP.
    let gw = Gateway::start(
        &config,
        &[
            &mapped("api.example.com", &origin),
            &mapped("tunnel.example.com", &origin),
            "--egress-source-ip=127.0.0.7",
        ],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://api.example.com:{port}/"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://tunnel.example.com:{port}/"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let peers: Vec<String> = origin
        .requests()
        .iter()
        .map(|s| s.peer.ip().to_string())
        .collect();
    assert_eq!(peers, ["127.0.0.7", "127.0.0.7"]);
}

/// A ServiceEntry's `egress.io/source-ip` annotation fixes the source address of its own
/// upstream connections (HTTP, pooled, and tunnels), over the gateway-wide one; pooled
/// connections from one address are never reused for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_service_entry_source_address() {
    let origin = Origin::start().await;
    let port = origin.port();
    let annotated = |name: &str, host: &str, protocol: &str, ip: &str| {
        service_entry(name, host, port, protocol, "  resolution: DNS\n").replace(
            &format!("metadata:\n  name: {name}\n"),
            &format!(
                "metadata:\n  name: {name}\n  annotations: {{egress.io/source-ip: \"{ip}\"}}\n"
            ),
        )
    };
    let config = annotated("partner", "partner.example.com", "HTTP", "127.0.0.8")
        + &annotated("bank", "bank.example.com", "TCP", "127.0.0.9")
        + &service_entry(
            "plain",
            "plain.example.com",
            port,
            "HTTP",
            "  resolution: DNS\n",
        );
    assert!(
        config.contains("egress.io/source-ip: \"127.0.0.8\""),
        "{config}"
    );
    let gw = Gateway::start(
        &config,
        &[
            &mapped("partner.example.com", &origin),
            &mapped("bank.example.com", &origin),
            &mapped("plain.example.com", &origin),
            "--egress-source-ip=127.0.0.7",
        ],
    );
    for (flag, host) in [
        ("", "partner.example.com"),
        ("", "plain.example.com"),
        ("-p", "bank.example.com"),
        ("", "partner.example.com"),
        ("", "plain.example.com"),
    ] {
        let url = format!("http://{host}:{port}/");
        let proxy = gw.proxy_url();
        let mut args = vec!["-x", proxy.as_str()];
        if !flag.is_empty() {
            args.insert(0, flag);
        }
        args.push(&url);
        let r = curl_async(&args).await;
        assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.log());
    }
    let peers: Vec<(String, String)> = origin
        .requests()
        .iter()
        .map(|s| {
            (
                s.headers["host"].to_str().unwrap().to_owned(),
                s.peer.ip().to_string(),
            )
        })
        .collect();
    for (host, ip) in &peers {
        let want = match host.split(':').next().unwrap() {
            "partner.example.com" => "127.0.0.8",
            "bank.example.com" => "127.0.0.9",
            _ => "127.0.0.7",
        };
        assert_eq!(ip, want, "{host}: {peers:?}");
    }
    let bad = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: x\n  annotations: {egress.io/source-ip: \"not-an-ip\"}\nspec:\n  hosts: [x.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
    let set = egress_policy::istio::ConfigSet::load_str("bad.yaml", bad);
    assert!(
        set.diagnostics.errors().any(|d| d
            .to_string()
            .contains("metadata.annotations.egress.io/source-ip")),
        "{}",
        set.diagnostics
    );
}

/// A connection that sends nothing, or only the start of the HTTP/2 preface, is closed
/// after the header read timeout: telling HTTP/1.1 from HTTP/2 waits no longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start("", &["--header-read-timeout=500ms"]);
    for first in [&b""[..], b"PRI", b"PRI * HTTP/2.0\r\n"] {
        let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "connection that sent {first:?} left open"
        );
    }
    // Each is a refusal by a limit: counted (and logged).
    let metrics = curl_async(&[&format!("http://{}/stats/prometheus", gw.admin)]).await;
    assert!(
        metrics
            .body
            .contains("egress_limit_hits_total{limit=\"header_read_timeout\"} 3"),
        "{}",
        metrics.body
    );
    assert!(
        gw.log().contains("no request within --header-read-timeout"),
        "{}",
        gw.log()
    );
}
