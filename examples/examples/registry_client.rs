//! The registry check in an application's own HTTP client.
//!
//! Run:
//!   cargo run -p egress-examples --example registry_client
//!
//! Expected output:
//!   allowed: http://api.internal.test/hello -> 200 "hello from the internal API"
//!   refused: http://unregistered.example.com/ -> 502 (x-egress-denied: registry-only)
//!   refused: http://169.254.169.254/latest/meta-data/ -> 502 (x-egress-denied: registry-only)

use bytes::Bytes;
use egress_examples::registry_client::{client, example_registry, get};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // A stand-in for the internal API, on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"hello from the internal API"),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });

    let svc = client(&example_registry(origin))?;
    let mut out = std::io::stdout().lock();
    for url in [
        "http://api.internal.test/hello",
        "http://unregistered.example.com/",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        let (status, denied, body) = get(svc.clone(), url).await?;
        match denied {
            None => writeln!(out, "allowed: {url} -> {status} {body:?}")?,
            Some(reason) => writeln!(
                out,
                "refused: {url} -> {status} (x-egress-denied: {reason})"
            )?,
        }
    }
    Ok(())
}
