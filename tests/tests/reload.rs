//! Hot reload through the real binary: file changes and SIGHUP swap in a good configuration;
//! a broken one is rejected with its errors and the old one keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use egress_tests::{Gateway, Origin, curl_async, service_entry};
use std::time::Duration;

fn mapped(name: &str, origin: &Origin) -> String {
    format!("--resolve={name}:{}:127.0.0.1", origin.port())
}

async fn status(gw: &Gateway, host: &str, port: u16) -> u16 {
    curl_async(&["-x", &gw.proxy_url(), &format!("http://{host}:{port}/")])
        .await
        .status
}

async fn eventually(gw: &Gateway, host: &str, port: u16, want: u16) -> bool {
    for _ in 0..100 {
        if status(gw, host, port).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_reload_and_bad_config_keeps_the_old() {
    let origin = Origin::start().await;
    let port = origin.port();
    let a = service_entry("a", "a.test", port, "HTTP", "  resolution: DNS\n");
    let b = service_entry("b", "b.test", port, "HTTP", "  resolution: DNS\n");
    let gw = Gateway::start(
        &a,
        &[
            &mapped("a.test", &origin),
            &mapped("b.test", &origin),
            "--watch-interval=100ms",
        ],
    );
    let file = gw.config_dir().join("config.yaml");
    assert_eq!(status(&gw, "a.test", port).await, 200);
    assert_eq!(status(&gw, "b.test", port).await, 502);

    std::fs::write(&file, format!("{a}{b}")).unwrap();
    assert!(eventually(&gw, "b.test", port, 200).await, "{}", gw.log());

    // Broken: rejected, logged with file and line, counted; both hosts keep working.
    std::fs::write(&file, format!("{a}{b}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: c}}\nspec:\n  hosts: ['*']\n  ports: [{{number: 80}}]\n")).unwrap();
    assert!(gw.wait_log("configuration reload rejected"), "{}", gw.log());
    assert!(
        gw.log().contains("config.yaml:") && gw.log().contains("spec.hosts[0]"),
        "{}",
        gw.log()
    );
    assert_eq!(status(&gw, "a.test", port).await, 200, "{}", gw.log());
    assert_eq!(status(&gw, "b.test", port).await, 200, "{}", gw.log());
    let stats = curl_async(&[&format!("http://{}/stats", gw.admin)])
        .await
        .body;
    assert!(
        stats.contains("egress_config_reloads_total{outcome=\"failure\"} 1"),
        "{stats}"
    );
    let dump = curl_async(&[&format!("http://{}/config_dump", gw.admin)])
        .await
        .body;
    assert!(dump.contains("\"outcome\": \"failure\""), "{dump}");

    // Fixed again: only a remains registered.
    std::fs::write(&file, &a).unwrap();
    assert!(eventually(&gw, "b.test", port, 502).await, "{}", gw.log());
    assert_eq!(status(&gw, "a.test", port).await, 200);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let origin = Origin::start().await;
    let port = origin.port();
    let a = service_entry("a", "a.test", port, "HTTP", "  resolution: DNS\n");
    let b = service_entry("b", "b.test", port, "HTTP", "  resolution: DNS\n");
    let gw = Gateway::start(&a, &[&mapped("b.test", &origin), "--watch-interval=0"]);
    std::fs::write(gw.config_dir().join("config.yaml"), format!("{a}{b}")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status(&gw, "b.test", port).await,
        502,
        "reloaded without a signal"
    );
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(eventually(&gw, "b.test", port, 200).await, "{}", gw.log());
    assert!(gw.log().contains("trigger=\"SIGHUP\""), "{}", gw.log());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let slow = Origin::start_with(Duration::from_millis(800)).await;
    let port = slow.port();
    let mut gw = Gateway::start(
        &service_entry("slow", "slow.test", port, "HTTP", "  resolution: DNS\n"),
        &[&mapped("slow.test", &slow), "--drain-timeout=5s"],
    );
    let proxy = gw.proxy_url();
    let in_flight = tokio::spawn(async move {
        curl_async(&["-x", &proxy, &format!("http://slow.test:{port}/in-flight")]).await
    });
    // Let the request reach the origin, then ask the gateway to stop.
    for _ in 0..100 {
        if slow.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = curl_async(&[&format!("http://{}/healthz/ready", gw.admin)]).await;
    assert_eq!(ready.status, 503, "readiness during the drain: {ready:?}");
    let refused = curl_async(&[
        "-x",
        &gw.proxy_url(),
        &format!("http://slow.test:{port}/late"),
    ])
    .await;
    assert_eq!(
        refused.status, 0,
        "a new request was accepted while draining: {refused:?}"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from origin"),
        "{}",
        gw.log()
    );
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// The drain closes idle keep-alive connections at once instead of waiting out the drain
/// timeout for them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let port = origin.port();
    let mut gw = Gateway::start(
        &service_entry("o", "o.test", port, "HTTP", "  resolution: DNS\n"),
        &[&mapped("o.test", &origin), "--drain-timeout=30s"],
    );
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: o.test:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let eof = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection kept open: {eof:?}"
    );
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "the drain waited for an idle connection");
}

/// 100 reloads while requests flow: none fails, and memory stays put.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let origin = Origin::start().await;
    let port = origin.port();
    let a = service_entry("a", "a.test", port, "HTTP", "  resolution: DNS\n");
    let b = service_entry("b", "b.test", port, "HTTP", "  resolution: DNS\n");
    let gw = Gateway::start(&a, &[&mapped("a.test", &origin), "--watch-interval=0"]);
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        let url: http::Uri = format!("http://{}/", gw.proxy).parse().unwrap();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(url.clone())
                    .header("host", format!("a.test:{port}"))
                    .body(Empty::new())
                    .unwrap();
                match client.request(req).await {
                    Ok(rsp) if rsp.status() == 200 => {
                        rsp.into_body().collect().await.unwrap();
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(gw.pid());
    let file = gw.config_dir().join("config.yaml");
    for i in 0..100 {
        let body = if i % 2 == 0 {
            format!("{a}{b}")
        } else {
            a.clone()
        };
        std::fs::write(&file, body).unwrap();
        let kill = std::process::Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..100 {
        let stats = curl_async(&[&format!("http://{}/stats", gw.admin)])
            .await
            .body;
        if stats.contains("egress_config_reloads_total{outcome=\"success\"} 100") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let after = rss(gw.pid());
    let stats = curl_async(&[&format!("http://{}/stats", gw.admin)])
        .await
        .body;
    // Signals sent close together may coalesce into fewer reloads; none may fail.
    assert!(
        stats.contains("egress_config_reloads_total{outcome=\"failure\"} 0"),
        "{stats}"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    eprintln!(
        "reload under load: {} requests ok, 0 failed; RSS {before} kB -> {after} kB",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        after < before + 20_000,
        "RSS grew from {before} kB to {after} kB"
    );
}

/// `/config_dump` after a reload shows the configuration in force, whole: its resources,
/// what it ignored and its warnings come from the same snapshot as its decisions (they
/// were once fixed at start, so a reload left the dump describing the old files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_follows_a_reload() {
    let origin = Origin::start().await;
    let port = origin.port();
    let a = service_entry("a", "a.test", port, "HTTP", "  resolution: DNS\n");
    let gw = Gateway::start(&a, &[&mapped("b.test", &origin), "--watch-interval=100ms"]);
    let dump = || async {
        curl_async(&[&format!("http://{}/config_dump", gw.admin)])
            .await
            .body
    };
    let before: serde_json::Value = serde_json::from_str(&dump().await).unwrap();
    let hosts = before["resources"]["service_entries"].to_string();
    assert!(
        hosts.contains("\"a.test\"") && !hosts.contains("b.test"),
        "{before}"
    );
    assert_eq!(before["ignored"], serde_json::json!([]), "{before}");

    let b = service_entry("b", "b.test", port, "HTTP", "  resolution: DNS\n");
    let later = "---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: default}\nspec: {}\n";
    std::fs::write(
        gw.config_dir().join("config.yaml"),
        format!("{a}{b}{later}"),
    )
    .unwrap();
    assert!(eventually(&gw, "b.test", port, 200).await, "{}", gw.log());
    let after: serde_json::Value = serde_json::from_str(&dump().await).unwrap();
    let hosts = after["resources"]["service_entries"].to_string();
    assert!(hosts.contains("\"b.test\""), "{after}");
    let ignored = after["ignored"].to_string();
    assert!(ignored.contains("EnvoyFilter"), "{after}");
    let warnings = after["warnings"].to_string();
    assert!(warnings.contains("EnvoyFilter"), "{after}");
    assert_eq!(after["lastReload"]["outcome"], "success", "{after}");
}
