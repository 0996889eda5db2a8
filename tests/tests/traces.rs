//! Traces through the real binary, exported to OTLP receivers started here (HTTP/protobuf
//! and gRPC), whose protobuf is decoded and checked: span names, kinds, parent ids,
//! attributes, and the context the origin receives.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::{Buf, Bytes};
use egress_tests::tls::TestCa;
use egress_tests::{Gateway, Origin, curl_async, service_entry};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    /// Metric name and the sum of its number points, from the latest metrics export.
    metrics: Arc<Mutex<Vec<(String, f64)>>>,
}

/// An OTLP receiver: HTTP/1.1 `POST /v1/traces`, or gRPC `TraceService/Export` over h2c.
async fn receiver(grpc: bool, tls: Option<&TestCa>) -> (Receiver, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = Receiver::default();
    let rr = r.clone();
    let acceptor = tls.map(|ca| {
        let leaf = ca.leaf(&["localhost"]);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let rr = rr.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let rr = rr.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ctype = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let mut body = req.into_body().collect().await.unwrap().to_bytes();
                        if grpc {
                            assert_eq!(body.get_u8(), 0, "uncompressed");
                            let len = body.get_u32() as usize;
                            assert_eq!(len, body.len());
                        }
                        if path.contains("metrics") {
                            use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
                            use opentelemetry_proto::tonic::metrics::v1::{
                                metric::Data, number_data_point::Value as N,
                            };
                            let msg = ExportMetricsServiceRequest::decode(body).unwrap();
                            let mut seen = Vec::new();
                            for rm in msg.resource_metrics {
                                for sm in rm.scope_metrics {
                                    for m in sm.metrics {
                                        let total = match &m.data {
                                            Some(Data::Sum(s)) => s
                                                .data_points
                                                .iter()
                                                .map(|p| match p.value {
                                                    Some(N::AsDouble(v)) => v,
                                                    Some(N::AsInt(v)) => v as f64,
                                                    None => 0.0,
                                                })
                                                .sum(),
                                            Some(Data::Histogram(h)) => {
                                                h.data_points.iter().map(|p| p.count as f64).sum()
                                            }
                                            _ => 0.0,
                                        };
                                        seen.push((m.name, total));
                                    }
                                }
                            }
                            *rr.metrics.lock().unwrap() = seen;
                            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                                if grpc {
                                    let mut trailers = http::HeaderMap::new();
                                    trailers.insert("grpc-status", "0".parse().unwrap());
                                    vec![
                                        Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                        Ok(Frame::trailers(trailers)),
                                    ]
                                } else {
                                    vec![Ok(Frame::data(Bytes::new()))]
                                };
                            return Ok(Response::new(frames_body(frames)));
                        }
                        let msg = ExportTraceServiceRequest::decode(body).unwrap();
                        rr.requests.lock().unwrap().push((path, ctype));
                        for rs in msg.resource_spans {
                            let service = rs.resource.unwrap().attributes;
                            assert!(service.iter().any(|kv| kv.key == "service.name"));
                            for ss in rs.scope_spans {
                                rr.spans.lock().unwrap().extend(ss.spans);
                            }
                        }
                        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = if grpc {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            vec![
                                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers(trailers)),
                            ]
                        } else {
                            vec![Ok(Frame::data(Bytes::new()))]
                        };
                        let mut rsp = Response::new(frames_body(frames));
                        if grpc {
                            rsp.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(io), svc).await;
                    }
                    Some(a) => {
                        if let Ok(tls) = a.accept(io).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                }
            });
        }
    });
    (r, port)
}

/// A body of ready frames (data, then trailers for gRPC).
fn frames_body(
    items: Vec<Result<Frame<Bytes>, std::convert::Infallible>>,
) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Unpin + Send {
    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::convert::Infallible>>);
    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front())
        }
    }
    Frames(items.into_iter().collect())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

async fn spans_of(r: &Receiver, trace: &str, n: usize) -> Vec<Span> {
    for _ in 0..100 {
        let found: Vec<Span> = r
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.spans.lock().unwrap().clone()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

async fn check(grpc: bool) {
    check_with(grpc, false).await;
}

async fn check_with(grpc: bool, tls: bool) {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let (recv, port) = receiver(grpc, tls.then_some(&ca)).await;
    // A dry-run policy's would-be decision is a span tag, as in Istio's "Dry Run" task.
    let yaml = service_entry(
        "api",
        "api.test",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    ) + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-traced\n  namespace: istio-system\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/traced]}}]}]\n";
    let endpoint = if tls {
        format!("--otlp-endpoint=https://localhost:{port}")
    } else {
        format!("--otlp-endpoint=http://127.0.0.1:{port}")
    };
    let ca_file = ca.pem_path.display().to_string();
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            &format!("--resolve=api.test:{}:127.0.0.1", origin.port()),
            &endpoint,
            if grpc {
                "--otlp-protocol=grpc"
            } else {
                "--otlp-protocol=http"
            },
            "--trace-sampling=0",
            "--otlp-metrics-interval=200ms",
        ],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    let url = format!("http://api.test:{}/traced", origin.port());
    // A sampled parent is followed even with 0% sampling.
    let tp = format!("traceparent: 00-{TRACE}-{PARENT}-01");
    let r = curl_async(&["-x", &gw.proxy_url(), "-H", &tp, &url]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let spans = spans_of(&recv, TRACE, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}\n{}", gw.log());
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let client = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(server.name, "egress GET");
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(client.name, "egress upstream GET");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "url.path").as_deref(), Some("/traced"));
    assert_eq!(
        attr(server, "istio.authorization.dry_run.deny_policy.name").as_deref(),
        Some("ns[istio-system]-policy[deny-traced]-rule[0]")
    );
    assert_eq!(
        attr(server, "istio.authorization.dry_run.deny_policy.result").as_deref(),
        Some("denied")
    );
    assert_eq!(attr(client, "server.address").as_deref(), Some("api.test"));
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    // The origin is told the client span as its parent.
    let seen = origin.requests().pop().unwrap();
    assert_eq!(
        seen.headers["traceparent"],
        format!("00-{TRACE}-{}-01", hex(&client.span_id))
    );

    // No context and not sampled by the 0% ratio: the request goes on untouched.
    assert_eq!(curl_async(&["-x", &gw.proxy_url(), &url]).await.status, 200);
    assert!(
        !origin
            .requests()
            .pop()
            .unwrap()
            .headers
            .contains_key("traceparent")
    );

    // Not sampled by the caller, nor by the 0% ratio: propagated, not recorded.
    let quiet = "5bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("traceparent: 00-{quiet}-{PARENT}-00");
    assert_eq!(
        curl_async(&["-x", &gw.proxy_url(), "-H", &tp, &url])
            .await
            .status,
        200
    );
    let seen = origin.requests().pop().unwrap();
    let forwarded = seen.headers["traceparent"].to_str().unwrap().to_owned();
    assert!(
        forwarded.starts_with(&format!("00-{quiet}-")) && forwarded.ends_with("-00"),
        "{forwarded}"
    );
    assert!(!forwarded.contains(PARENT), "a new span id: {forwarded}");

    // B3 is accepted (single header), and rewritten for the next hop.
    let b3trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3 = format!("b3: {b3trace}-e457b5a2e4d86bd1-1");
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-H",
        &b3,
        &format!("http://api.test:{}/denied-later", origin.port()),
    ])
    .await;
    assert_eq!(r.status, 200);
    let spans = spans_of(&recv, b3trace, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let seen = origin.requests().pop().unwrap();
    assert!(seen.headers["b3"].to_str().unwrap().starts_with(b3trace));

    // A refusal is a server span with the reason, and no client span.
    let refused = "6bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("traceparent: 00-{refused}-{PARENT}-01");
    let r = curl_async(&[
        "-x",
        &gw.proxy_url(),
        "-H",
        &tp,
        "http://unregistered.test/",
    ])
    .await;
    assert_eq!(r.status, 502);
    let spans = spans_of(&recv, refused, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(
        attr(&spans[0], "egress.reason").as_deref(),
        Some("registry-only")
    );
    assert_eq!(spans[0].status.as_ref().unwrap().code, 2, "error status");

    let (path, ctype) = recv.requests.lock().unwrap()[0].clone();
    if grpc {
        assert_eq!(
            path,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert_eq!(ctype, "application/grpc");
    } else {
        assert_eq!(
            (path.as_str(), ctype.as_str()),
            ("/v1/traces", "application/x-protobuf")
        );
    }
    let metrics = curl_async(&[&format!("http://{}/metrics", gw.admin)])
        .await
        .body;
    assert!(
        metrics.contains("egress_trace_spans_total{outcome=\"exported\"} 5"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_export() {
    check(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_export() {
    check(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_tls_to_a_verified_collector() {
    check_with(false, true).await;
    check_with(true, true).await;

    // A collector whose certificate is not trusted gets nothing.
    let ca = TestCa::new();
    let (recv, port) = receiver(false, Some(&ca)).await;
    let other = TestCa::new();
    let origin = Origin::start().await;
    let yaml = service_entry(
        "api",
        "api.test",
        origin.port(),
        "HTTP",
        "  resolution: DNS\n",
    );
    let other_file = other.pem_path.display().to_string();
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            &format!("--resolve=api.test:{}:127.0.0.1", origin.port()),
            &format!("--otlp-endpoint=https://localhost:{port}"),
            "--trace-sampling=100",
            "--otlp-metrics-interval=0",
        ],
        &[("SSL_CERT_FILE", &other_file)],
    );
    let url = format!("http://api.test:{}/", origin.port());
    assert_eq!(curl_async(&["-x", &gw.proxy_url(), &url]).await.status, 200);
    let mut metrics = String::new();
    for _ in 0..60 {
        metrics = curl_async(&[&format!("http://{}/metrics", gw.admin)])
            .await
            .body;
        if metrics.contains("egress_trace_spans_total{outcome=\"failed\"} 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("egress_trace_spans_total{outcome=\"failed\"} 2"),
        "{metrics}\n{}",
        gw.log()
    );
    assert!(recv.spans.lock().unwrap().is_empty());
}

/// Without `--otlp-endpoint`, traces go to MeshConfig's `defaultProviders.tracing`: an
/// `opentelemetry` extension provider whose collector is found through the registry (a
/// `ServiceEntry` with a `STATIC` endpoint and that endpoint's own port), as Envoy reaches it
/// through its cluster; both its gRPC and HTTP forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_go_to_the_mesh_default_provider_found_in_the_registry() {
    for grpc in [true, false] {
        let origin = Origin::start().await;
        let (recv, port) = receiver(grpc, None).await;
        let http = if grpc {
            ""
        } else {
            "\n        http: {path: /v1/traces}"
        };
        let yaml = service_entry(
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
    defaultProviders:
      tracing: [otel]
    extensionProviders:
    - name: otel
      opentelemetry:
        service: opentelemetry-collector.observability.svc.cluster.local
        port: 4317{http}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: collector, namespace: observability}}
spec:
  hosts: [opentelemetry-collector.observability.svc.cluster.local]
  ports: [{{number: 4317, name: otlp, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{otlp: {port}}}}}]
"#
        );
        let gw = Gateway::start(
            &yaml,
            &[
                &format!("--resolve=api.test:{}:127.0.0.1", origin.port()),
                "--trace-sampling=0",
            ],
        );
        let tp = format!("traceparent: 00-{TRACE}-{PARENT}-01");
        let url = format!("http://api.test:{}/traced", origin.port());
        let r = curl_async(&["-x", &gw.proxy_url(), "-H", &tp, &url]).await;
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
        let spans = spans_of(&recv, TRACE, 2).await;
        assert_eq!(spans.len(), 2, "grpc={grpc}: {spans:#?}\n{}", gw.log());
        assert!(
            gw.log().contains("default tracing provider") && gw.log().contains("provider=otel"),
            "{}",
            gw.log()
        );
    }
}
