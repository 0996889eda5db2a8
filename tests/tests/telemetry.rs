//! Metrics and access log after known traffic, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async, service_entry};

/// The value of the first sample whose name and labels contain all of `parts`.
fn sample(text: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_and_access_log() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = Gateway::start(
        &service_entry(
            "api",
            "api.example.com",
            port,
            "HTTP",
            "  resolution: DNS\n",
        ),
        &[
            &format!("--resolve=api.example.com:{port}:127.0.0.1"),
            "--access-log",
            "on",
        ],
    );
    for _ in 0..3 {
        let r = curl_async(&[
            "-x",
            &gw.proxy_url(),
            &format!("http://api.example.com:{port}/ok"),
        ])
        .await;
        assert_eq!(r.status, 200);
    }
    // Request bodies: one with a length, one chunked (counted as it streams).
    let url = format!("http://api.example.com:{port}/ok");
    let r = curl_async(&["-x", &gw.proxy_url(), "-d", "abcde", &url]).await;
    assert_eq!(r.status, 200);
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        "abcdef",
        &url,
    ])
    .await;
    assert_eq!(r.status, 200);
    for _ in 0..2 {
        let r = curl_async(&["-x", &gw.proxy_url(), "http://evil.example.net/"]).await;
        assert_eq!(r.status, 502);
    }
    let r = curl_async(&["-H", "Host: 0x7f.1", &format!("http://{}/", gw.proxy)]).await;
    assert_eq!(r.status, 400);

    let m = curl_async(&[&format!("http://{}/metrics", gw.admin)]).await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{m:?}"
    );
    let text = m.body;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(
        sample(
            &text,
            &[
                "istio_requests_total{",
                "destination_service=\"api.example.com\"",
                "destination_service_name=\"api\"",
                "response_code=\"200\""
            ]
        ),
        Some(5.0),
        "{text}"
    );
    // Bytes: 5 + 6 request body bytes; "hello from origin" (17 bytes) five times.
    let ok = |name: &'static str| {
        sample(
            &text,
            &[
                name,
                "destination_service_name=\"api\"",
                "response_code=\"200\"",
            ],
        )
    };
    assert_eq!(ok("istio_request_bytes_sum{"), Some(11.0), "{text}");
    assert_eq!(ok("istio_request_bytes_count{"), Some(5.0), "{text}");
    assert_eq!(ok("istio_response_bytes_sum{"), Some(85.0), "{text}");
    assert_eq!(ok("istio_response_bytes_count{"), Some(5.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &[
                "istio_requests_total{",
                "destination_service=\"BlackHoleCluster\"",
                "response_code=\"502\"",
                "response_flags=\"NR\""
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &["egress_refusals_total{reason=\"registry-only\"}"]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &["egress_refusals_total{reason=\"malformed\"}"]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &[
                "istio_request_duration_milliseconds_count{",
                "response_code=\"200\""
            ]
        ),
        Some(5.0),
        "{text}"
    );
    // Istio's path for the same text.
    let p = curl_async(&[&format!("http://{}/stats/prometheus", gw.admin)]).await;
    assert_eq!(p.status, 200);

    assert!(gw.wait_log("status=400"), "{}", gw.log());
    let log = gw.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("egress::access"))
        .collect();
    assert_eq!(access.len(), 8, "{log}");
    assert!(
        access.iter().any(|l| l.contains("status=200")
            && l.contains(&format!(
                "upstream_cluster=outbound|{port}||api.example.com"
            ))
            && l.contains("bytes_sent=17")),
        "{log}"
    );
    assert!(
        access.iter().any(|l| l.contains("status=502")
            && l.contains("reason=\"registry-only\"")
            && l.contains("BlackHoleCluster")),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("status=400") && l.contains("reason=\"malformed\"")),
        "{log}"
    );

    // Off by default: metrics stay, the lines go.
    let quiet = Gateway::start("", &[]);
    let r = curl_async(&["-x", &quiet.proxy_url(), "http://evil.example.net/"]).await;
    assert_eq!(r.status, 502);
    let text = curl_async(&[&format!("http://{}/metrics", quiet.admin)])
        .await
        .body;
    assert_eq!(
        sample(&text, &["egress_refusals_total{reason=\"registry-only\"}"]),
        Some(1.0)
    );
    assert!(!quiet.log().contains("egress::access"), "{}", quiet.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_metrics() {
    let origin = Origin::start().await;
    let port = origin.port();
    let gw = Gateway::start(
        &service_entry("db", "db.example.com", port, "TCP", "  resolution: DNS\n"),
        &[&format!("--resolve=db.example.com:{port}:127.0.0.1")],
    );
    let r = curl_async(&[
        "-p",
        "-x",
        &gw.proxy_url(),
        &format!("http://db.example.com:{port}/through"),
    ])
    .await;
    assert_eq!(r.status, 200);
    let mut text = String::new();
    for _ in 0..100 {
        text = curl_async(&[&format!("http://{}/metrics", gw.admin)])
            .await
            .body;
        if sample(&text, &["istio_tcp_connections_closed_total{"]).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let labels = "destination_service=\"db.example.com\",destination_service_name=\"db\"";
    assert_eq!(
        sample(&text, &["istio_tcp_connections_opened_total{", labels]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &["istio_tcp_connections_closed_total{", labels]),
        Some(1.0),
        "{text}"
    );
    let sent = sample(&text, &["istio_tcp_sent_bytes_total{", labels]).unwrap();
    let received = sample(&text, &["istio_tcp_received_bytes_total{", labels]).unwrap();
    assert!(
        sent > 40.0 && received > 100.0,
        "sent {sent} received {received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log() {
    let gw = Gateway::start("", &["--access-log", "on", "--log-format", "json"]);
    let r = curl_async(&["-x", &gw.proxy_url(), "http://evil.example.net/x"]).await;
    assert_eq!(r.status, 502);
    assert!(gw.wait_log("\"target\":\"egress::access\""), "{}", gw.log());
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("egress::access"))
        .unwrap()
        .to_owned();
    for want in [
        "\"status\":502",
        "\"reason\":\"registry-only\"",
        "\"path\":\"/x\"",
        "\"authority\":\"evil.example.net\"",
        "\"flags\":\"NR\"",
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_enforced_and_counted() {
    let gw = Gateway::start("", &["--max-connections", "1"]);
    // Hold the only slot with an idle keep-alive connection.
    let held = std::net::TcpStream::connect(gw.proxy).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = curl_async(&["-x", &gw.proxy_url(), "http://evil.example.net/"]).await;
    assert_eq!(r.status, 0, "a connection over the limit was served: {r:?}");
    drop(held);
    let text = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert_eq!(
        sample(
            &text,
            &["egress_limit_hits_total{limit=\"max_connections\"}"]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(gw.wait_log("--max-connections reached"));
    // The slot frees when the held connection closes.
    let mut served = false;
    for _ in 0..50 {
        if curl_async(&["-x", &gw.proxy_url(), "http://evil.example.net/"])
            .await
            .status
            == 502
        {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_refusals_are_logged_and_counted() {
    let gw = Gateway::start(
        "",
        &[
            "--max-header-bytes",
            "8192",
            "--header-read-timeout",
            "300ms",
        ],
    );
    let (rsp, closed) = egress_tests::raw_exchange_async(
        gw.proxy,
        b"GET / HTTP/1.1\r\nHost: a.com\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(closed);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (rsp, _) = egress_tests::raw_exchange_async(gw.proxy, big.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "{rsp}");
    let (_, closed) =
        egress_tests::raw_exchange_async(gw.proxy, b"GET / HTTP/1.1\r\nHost: a.c").await;
    assert!(closed);
    assert!(gw.wait_log("reason=\"header-timeout\""), "{}", gw.log());
    let text = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert_eq!(
        sample(&text, &["egress_refusals_total{reason=\"malformed\"}"]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &["egress_refusals_total{reason=\"header-too-large\"}"]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &["egress_refusals_total{reason=\"header-timeout\"}"]),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_to_a_file_with_the_subset_cluster() {
    let origin = Origin::start().await;
    let port = origin.port();
    let yaml = service_entry(
        "api",
        "api.example.com",
        port,
        "HTTP",
        "  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, labels: {version: v2}}]\n",
    ) + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api}\nspec:\n  host: api.example.com\n  subsets: [{name: v2, labels: {version: v2}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  http:\n  - route: [{destination: {host: api.example.com, subset: v2}}]\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let gw = Gateway::start(&yaml, &[&format!("--access-log-file={}", file.display())]);
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-d",
        "abc",
        &format!("http://api.example.com:{port}/file"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let r = curl_async(&["-x", &gw.proxy_url(), "http://evil.example.net/"]).await;
    assert_eq!(r.status, 502);
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(&format!(
            "upstream_cluster=outbound|{port}|v2|api.example.com"
        )) && lines[0].contains("bytes_received=3")
            && lines[0].contains("route=\"default/api#0\"")
            || lines[0].contains(&format!(
                "upstream_cluster=outbound|{port}|v2|api.example.com"
            )),
        "{text}"
    );
    assert!(
        lines[1].contains("\"GET /\" authority=\"evil.example.net\"")
            && lines[1].contains("status=502 flags=NR reason=registry-only"),
        "{text}"
    );
    assert!(
        !gw.log().contains("egress::access"),
        "access lines stay out of stderr"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_file() {
    let origin = Origin::start().await;
    let port = origin.port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    let gw = Gateway::start(
        &service_entry(
            "api",
            "api.example.com",
            port,
            "HTTP",
            "  resolution: DNS\n",
        ),
        &[
            &format!("--resolve=api.example.com:{port}:127.0.0.1"),
            &format!("--access-log-file={}", file.display()),
            "--access-log-format=json",
        ],
    );
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://api.example.com:{port}/j?q=%22x%22"),
    ])
    .await;
    assert_eq!(r.status, 200);
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = text.lines().next().unwrap_or_else(|| panic!("{text}"));
    // A JSON object a parser can read, fields typed.
    assert!(
        line.starts_with("{\"time\":\"") && line.ends_with('}'),
        "{line}"
    );
    for part in [
        "\"method\":\"GET\"",
        "\"status\":200",
        "\"bytes_sent\":17",
        &format!("\"upstream_host\":\"127.0.0.1:{port}\""),
        &format!("\"upstream_cluster\":\"outbound|{port}||api.example.com\""),
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
}
