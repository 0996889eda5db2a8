#![no_main]
//! Any bytes as an HTTP/1.1 request head through the gateway's whole stack, in process:
//! never a panic, never a hang (each exchange is bounded), and every refusal the stack
//! writes says why (`x-egress-denied` or `x-egress-error`). No name is ever resolved: the
//! resolver answers 127.0.0.1, which the SSRF guard refuses, so nothing leaves the process.

use egress_core::mirror::{MirrorConfig, MirrorLayer};
use egress_core::proxy_headers::ProxyHeadersConfig;
use egress_core::telemetry::Metrics;
use egress_core::transport::{Dialer, DialerConfig, Resolve, UpstreamConfig};
use egress_gateway::cli::ConfigArgs;
use egress_gateway::stack::{self, Security, StackConfig};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http:
  - match: [{headers: {x-route: {exact: admin}}}]
    directResponse: {status: 403}
  - match: [{uri: {prefix: /r/}, headers: {x-v: {regex: "v[0-9]+"}}}]
    route: [{destination: {host: api.example.com, port: {number: 80}}}]
  - route: [{destination: {host: api.example.com, port: {number: 80}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-user]", values: ["evil*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET, POST, CONNECT, HEAD]}}]
"#;

struct Loopback;

impl Resolve for Loopback {
    fn resolve<'a>(
        &'a self,
        _name: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<[IpAddr]>>> + Send + 'a>> {
        Box::pin(async { Ok(Arc::from([IpAddr::V4(Ipv4Addr::LOCALHOST)])) })
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    config: StackConfig,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("egress-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, CONFIG).unwrap();
        let loaded = egress_gateway::config::load(&ConfigArgs {
            config: vec![file],
            outbound_policy: None,
            gateway_name: "istio-system/istio-egressgateway".into(),
            gateway_labels: vec![("istio".into(), "egressgateway".into())],
            path_normalization: None,
            mesh_certs: "/etc/certs".into(),
            credentials: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = rt.block_on(async {
            let policy = egress_policy::snapshot::PolicyStore::new(loaded.into_policy().0);
            StackConfig {
                policy,
                dialer: Arc::new(Dialer::with_resolver(
                    DialerConfig::default().with_connect_timeout(Duration::from_millis(100)),
                    Arc::new(Loopback),
                )),
                upstream: UpstreamConfig::default()
                    .with_request_timeout(Some(Duration::from_millis(200))),
                proxy_headers: ProxyHeadersConfig::default(),
                mirror: MirrorLayer::new(MirrorConfig::default()),
                tunnel_idle_timeout: Duration::from_millis(100),
                tunnels: tokio_util::task::TaskTracker::new(),
                tunnel_slots: Arc::new(tokio::sync::Semaphore::new(4)),
                metrics: Metrics::new("fuzz", false),
                security: Security {
                    ext_authz: egress_policy::ext_authz::ExtAuthzLayer::from_snapshot(4, 0),
                    jwks: egress_policy::jwt::JwksStore::default(),
                    allow_path_parameters: false,
                    underscores: egress_core::destination::Underscores::Reject,
                    xff_hops: 1,
                },
                tracer: None,
                conn_stats: Arc::default(),
            }
        });
        World { rt, config }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let svc = stack::build(w.config.clone(), None);
    let reply = w.rt.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        // As the server does: the framing guard sees the bytes, the stack hears of it.
        let (server, framing) = egress_core::framing::FramingGuard::new(server);
        let svc = hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
            svc,
            move |mut req: http::Request<hyper::body::Incoming>| {
                if framing.take() {
                    req.extensions_mut()
                        .insert(egress_core::framing::AmbiguousFraming);
                }
                req
            },
        ));
        let conn = tokio::spawn(async move {
            let mut b = hyper_util::server::conn::auto::Builder::new(
                hyper_util::rt::TokioExecutor::new(),
            );
            b.http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(200));
            let _ = b
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(server), svc)
                .await;
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), rd.read_to_end(&mut out)).await;
        conn.abort();
        out
    });
    check(&reply);
});

/// Every response the stack wrote for a refusal names its reason. hyper's own answers to
/// what it cannot parse (400, 431, no body) come before the stack and are not its refusals.
fn check(mut reply: &[u8]) {
    while !reply.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut rsp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = rsp.parse(reply) else {
            return;
        };
        let status = rsp.code.unwrap_or(0);
        let header = |name: &str| {
            rsp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let len: usize = header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .unwrap_or(0);
        let reason = header("x-egress-denied").or(header("x-egress-error"));
        let direct = status == 403 && len == 0 && header("x-egress-denied").is_none();
        if status >= 400 && len > 0 && !direct {
            assert!(
                reason.is_some(),
                "a {status} without a reason: {:?}",
                String::from_utf8_lossy(&reply[..n])
            );
        }
        reply = reply.get(n + len..).unwrap_or(&[]);
    }
}
