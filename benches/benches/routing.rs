//! Routing cost with 10, 100 and 1,000 VirtualServices (each with an exact, a prefix and a
//! regex route): flat in the number of VirtualServices that do not cover the request's host.
//!
//! Run: `cargo bench -p egress-benches --bench routing`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use egress_policy::Registry;
use egress_policy::istio::{Binding, ConfigSet, OutboundPolicy};
use egress_policy::routes::RouteTable;
use std::fmt::Write;
use std::hint::black_box;

fn config(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se{i}}}\nspec:\n  hosts: [vs{i}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs{i}}}\nspec:\n  hosts: [vs{i}.example.com]\n  http:\n  - match: [{{uri: {{exact: /exact/{i}}}}}]\n    route: [{{destination: {{host: vs{i}.example.com}}}}]\n  - match: [{{uri: {{regex: \"/items/[0-9]+/{i}\"}}}}]\n    route: [{{destination: {{host: vs{i}.example.com}}}}]\n  - match: [{{uri: {{prefix: /api/}}, headers: {{x-tenant: {{exact: t{i}}}}}}}]\n    route: [{{destination: {{host: vs{i}.example.com}}}}]\n"
        )
        .unwrap();
    }
    y
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10usize, 100, 1_000] {
        let set = ConfigSet::load_str("bench.yaml", &config(n));
        assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
        let (registry, _) = Registry::compile(&set, Some(OutboundPolicy::RegistryOnly)).unwrap();
        let (table, _) = RouteTable::compile(&set, &registry, &Binding::default()).unwrap();
        let host = "vs0.example.com";
        let req = http::Request::get("/api/orders?id=7")
            .header("x-tenant", "t0")
            .body(())
            .unwrap();
        // The third route matches: every earlier route of this host is evaluated first.
        let found = table.route(host, 80, "http", host, &req).unwrap().unwrap();
        assert!(found.0.id.ends_with("#2"), "{}", found.0.id);
        group.bench_with_input(BenchmarkId::new("third_route_of_host", n), &req, |b, r| {
            b.iter(|| black_box(table.route(black_box(host), 80, "http", host, r).is_some()))
        });
        let miss = http::Request::get("/").body(()).unwrap();
        group.bench_with_input(BenchmarkId::new("host_without_routes", n), &miss, |b, r| {
            b.iter(|| {
                black_box(
                    table
                        .route(
                            "unrouted.example.org",
                            80,
                            "http",
                            "unrouted.example.org",
                            r,
                        )
                        .is_some(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
