//! The export task: batches span records into OTLP `ExportTraceServiceRequest`s and posts
//! them, over HTTP/1.1 (`application/x-protobuf` to `/v1/traces`) or gRPC (HTTP/2 without
//! TLS, `TraceService/Export`). A failed export loses its batch (counted); it never slows
//! requests down, which only ever push into the bounded queue.

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::transport::{ProxyTls, UpstreamStream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

use super::{SpanRecord, TraceConfig, TraceStats, attr_str};

/// The OTLP transport.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP/gRPC (HTTP/2 cleartext).
    Grpc,
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub(crate) async fn run(
    config: TraceConfig,
    mut rx: mpsc::Receiver<SpanRecord>,
    stats: Arc<TraceStats>,
) {
    let client = client(config.protocol, config.timeout, config.tls.clone());
    let uri = target(&config);
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(config.batch);
    loop {
        let deadline = tokio::time::sleep(config.interval);
        tokio::pin!(deadline);
        // Fill a batch until it is full or the interval passes.
        loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= config.batch {
                            break;
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            send(&client, &uri, &config, std::mem::take(&mut batch), &stats).await;
                        }
                        return;
                    }
                },
                () = &mut deadline => break,
            }
        }
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(config.batch));
            send(&client, &uri, &config, spans, &stats).await;
        }
    }
}

fn target(config: &TraceConfig) -> Uri {
    signal_uri(&config.endpoint, config.protocol, "traces", GRPC_PATH)
}

/// The URI of one signal below an OTLP endpoint: `/v1/{signal}` for HTTP (unless the
/// endpoint already names it), the service's method path for gRPC.
pub(crate) fn signal_uri(
    endpoint: &Uri,
    protocol: OtlpProtocol,
    signal: &str,
    grpc_path: &str,
) -> Uri {
    let base = endpoint.to_string();
    let base = base.trim_end_matches('/');
    let base = base
        .strip_suffix("/v1/traces")
        .or_else(|| base.strip_suffix("/v1/metrics"))
        .unwrap_or(base);
    let full = match protocol {
        OtlpProtocol::Grpc => format!("{base}{grpc_path}"),
        OtlpProtocol::HttpProtobuf => format!("{base}/v1/{signal}"),
    };
    full.parse().unwrap_or_else(|_| endpoint.clone())
}

fn encode(config: &TraceConfig, spans: Vec<SpanRecord>) -> Vec<u8> {
    let spans = spans
        .into_iter()
        .map(|s| Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: if s.server {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: s.start,
            end_time_unix_nano: s.end,
            attributes: s.attributes,
            status: Some(Status {
                code: if s.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr_str("service.name", config.service_name.clone())],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "egress-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

async fn send(
    client: &OtlpClient,
    uri: &Uri,
    config: &TraceConfig,
    spans: Vec<SpanRecord>,
    stats: &TraceStats,
) {
    let n = spans.len() as u64;
    let body = encode(config, spans);
    match post(client, uri, config.protocol, body, config.timeout).await {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Err(error) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(%error, spans = n, endpoint = %uri, "trace export failed");
        }
    }
}

/// The client OTLP exports go through.
pub(crate) type OtlpClient = Client<OtlpConnector, Full<Bytes>>;

/// A client for OTLP exports (HTTP/2 only for gRPC); `https://` endpoints need `tls`.
pub(crate) fn client(
    protocol: OtlpProtocol,
    timeout: Duration,
    tls: Option<Arc<dyn ProxyTls>>,
) -> OtlpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    if protocol == OtlpProtocol::Grpc {
        builder.http2_only(true);
    }
    builder.build(OtlpConnector { timeout, tls })
}

/// Dials the collector: TCP, and TLS for `https://` (the handshake comes from a
/// [`ProxyTls`], as egress-core does no TLS itself).
#[derive(Clone)]
pub(crate) struct OtlpConnector {
    timeout: Duration,
    tls: Option<Arc<dyn ProxyTls>>,
}

/// A connection to the collector.
pub(crate) struct OtlpConn(TokioIo<UpstreamStream>);

impl Connection for OtlpConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for OtlpConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for OtlpConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for OtlpConnector {
    type Response = OtlpConn;
    type Error = crate::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<OtlpConn, crate::BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .ok_or("OTLP endpoint without a host")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = tokio::time::timeout(
                this.timeout,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| format!("connecting to {host}:{port} took too long"))??;
            let _ = tcp.set_nodelay(true);
            if !https {
                return Ok(OtlpConn(TokioIo::new(UpstreamStream::Tcp(tcp))));
            }
            let tls = this
                .tls
                .ok_or("an https:// OTLP endpoint needs a TLS client")?;
            let io = tokio::time::timeout(this.timeout, tls.handshake(tcp, &host))
                .await
                .map_err(|_| format!("TLS handshake with {host}:{port} took too long"))??;
            Ok(OtlpConn(TokioIo::new(UpstreamStream::Tunnel(io))))
        })
    }
}

/// Posts one encoded OTLP message: as a protobuf body, or as one gRPC frame whose
/// `grpc-status` must be 0.
pub(crate) async fn post(
    client: &OtlpClient,
    uri: &Uri,
    protocol: OtlpProtocol,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let req = match protocol {
        OtlpProtocol::HttpProtobuf => Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body))),
        OtlpProtocol::Grpc => {
            let mut framed = BytesMut::with_capacity(body.len() + 5);
            framed.put_u8(0);
            framed.put_u32(body.len() as u32);
            framed.put_slice(&body);
            Request::post(uri.clone())
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .body(Full::new(framed.freeze()))
        }
    };
    let req = req.map_err(|e| e.to_string())?;
    let outcome = tokio::time::timeout(timeout, async {
        let rsp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let grpc_in_headers = rsp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let collected = Limited::new(rsp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("the collector answered {status}"));
        }
        if protocol == OtlpProtocol::Grpc {
            let code = grpc_in_headers.or_else(|| {
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
            if code.as_deref() != Some("0") {
                return Err(format!(
                    "grpc-status {}",
                    code.as_deref().unwrap_or("missing")
                ));
            }
        }
        Ok(())
    })
    .await;
    match outcome {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
