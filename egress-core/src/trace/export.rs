//! The export task: batches span records into OTLP `ExportTraceServiceRequest`s and posts
//! them, over HTTP/1.1 (`application/x-protobuf` to `/v1/traces`) or gRPC (HTTP/2 without
//! TLS, `TraceService/Export`). A failed export loses its batch (counted); it never slows
//! requests down, which only ever push into the bounded queue.

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    if config.protocol == OtlpProtocol::Grpc {
        builder.http2_only(true);
    }
    let client: Client<HttpConnector, Full<Bytes>> = builder.build(http);
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
    let base = config.endpoint.to_string();
    let base = base.trim_end_matches('/');
    let full = match config.protocol {
        OtlpProtocol::Grpc => format!("{base}{GRPC_PATH}"),
        OtlpProtocol::HttpProtobuf if base.ends_with("/v1/traces") => base.to_owned(),
        OtlpProtocol::HttpProtobuf => format!("{base}/v1/traces"),
    };
    full.parse().unwrap_or_else(|_| config.endpoint.clone())
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
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &Uri,
    config: &TraceConfig,
    spans: Vec<SpanRecord>,
    stats: &TraceStats,
) {
    let n = spans.len() as u64;
    let body = encode(config, spans);
    let req = match config.protocol {
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
    let Ok(req) = req else {
        stats.failed.fetch_add(n, Ordering::Relaxed);
        return;
    };
    let outcome = tokio::time::timeout(config.timeout, async {
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
        if config.protocol == OtlpProtocol::Grpc {
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
        Ok(Ok(())) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(error)) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(%error, spans = n, endpoint = %uri, "trace export failed");
        }
        Err(_) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(spans = n, endpoint = %uri, "trace export timed out");
        }
    }
}
