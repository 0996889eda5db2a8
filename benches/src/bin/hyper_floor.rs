//! The floor under the gateway: a bare hyper server forwarding every request to one origin
//! through hyper-util's pooled client, with no policy at all. Comparing it with the gateway
//! in peer-bench separates the cost of our layers from the cost of the HTTP stack itself.
//!
//! Run (as a peer-bench system under test):
//!   cargo build --release -p egress-benches --bin hyper_floor
//!   SUT_CMD='exec target/release/hyper_floor' SUT_PORT=19000 SUT_NAME=hyper-floor \
//!     TARGETS="origin nginx" bash ../shared/bench/peer-bench.sh
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark tool")]

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;

fn main() {
    let port: u16 = std::env::var("BENCH_SUT_PORT").map_or(19000, |p| p.parse().unwrap());
    let origin: SocketAddr = std::env::var("BENCH_ORIGIN_HTTP")
        .unwrap_or_else(|_| "127.0.0.1:38100".into())
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(256)
            .build(http);
        let authority = http::uri::Authority::try_from(origin.to_string()).unwrap();
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let _ = io.set_nodelay(true);
            let client = client.clone();
            let authority = authority.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                    let client = client.clone();
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(http::uri::Scheme::HTTP);
                    parts.authority = Some(authority.clone());
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() = http::Uri::from_parts(parts).unwrap();
                    async move { client.request(req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
}
