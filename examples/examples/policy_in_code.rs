//! A policy built in code and served by the custom proxy on 127.0.0.1:15102, in front of a
//! small origin of its own on 127.0.0.1:15103.
//!
//! Run: `cargo run -p egress-examples --example policy_in_code`, then
//! `curl -x http://127.0.0.1:15102 http://api.internal.test/hello` (allowed) and
//! `curl -x http://127.0.0.1:15102 http://api.internal.test/admin` (403).

use egress_policy::snapshot::PolicyStore;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let origin = tokio::net::TcpListener::bind("127.0.0.1:15103").await?;
    let policy = egress_examples::policy_in_code::policy(origin.local_addr()?)?;
    tokio::spawn(async move {
        while let Ok((io, _)) = origin.accept().await {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    bytes::Bytes::from_static(b"hello from origin\n"),
                )))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:15102").await?;
    eprintln!("proxy on {}", listener.local_addr()?);
    egress_examples::custom_proxy::serve(listener, PolicyStore::new(policy)).await;
    Ok(())
}
