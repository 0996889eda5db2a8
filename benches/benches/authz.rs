//! AuthorizationPolicy evaluation with 100 policies of 10 rules each (issue goal: under
//! 2 µs per request): a request no rule matches (every rule is tried), one matched by the
//! last policy, and the path normalisation in front of it.
//!
//! Run: `cargo bench -p egress-benches --bench authz`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use egress_policy::authz::path::{Normalization, normalize};
use egress_policy::authz::{Attributes, AuthzPolicies, HttpAttributes, Identity};
use egress_policy::istio::{Binding, ConfigSet};
use std::fmt::Write;
use std::hint::black_box;
use std::net::IpAddr;

/// The same shape without `hosts`: nothing can be indexed, every rule is tried.
fn config_unindexed(policies: usize, rules: usize) -> String {
    let mut y = String::new();
    for p in 0..policies {
        let action = if p % 2 == 0 { "ALLOW" } else { "DENY" };
        write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{p}, namespace: istio-system}}\nspec:\n  action: {action}\n  rules:\n"
        )
        .unwrap();
        for r in 0..rules {
            write!(
                y,
                "  - from: [{{source: {{ipBlocks: [\"10.{p}.{r}.0/24\"], principals: [\"cluster.local/ns/team{p}/*\"]}}}}]\n    to: [{{operation: {{methods: [GET, POST], paths: [\"/api/v{r}/*\"]}}}}]\n    when: [{{key: \"request.headers[x-tenant]\", values: [\"t{p}-{r}\"]}}]\n"
            )
            .unwrap();
        }
    }
    y
}

fn config(policies: usize, rules: usize) -> String {
    let mut y = String::new();
    for p in 0..policies {
        let action = if p % 2 == 0 { "ALLOW" } else { "DENY" };
        write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{p}, namespace: istio-system}}\nspec:\n  action: {action}\n  rules:\n"
        )
        .unwrap();
        for r in 0..rules {
            write!(
                y,
                "  - from: [{{source: {{ipBlocks: [\"10.{p}.{r}.0/24\"], principals: [\"cluster.local/ns/team{p}/*\"]}}}}]\n    to: [{{operation: {{hosts: [\"svc{p}-{r}.example.com\", \"*.p{p}.example.com\"], methods: [GET, POST], paths: [\"/api/v{r}/*\"]}}}}]\n    when: [{{key: \"request.headers[x-tenant]\", values: [\"t{p}-{r}\"]}}]\n"
            )
            .unwrap();
        }
    }
    y
}

fn authz(c: &mut Criterion) {
    let set = ConfigSet::load_str("bench.yaml", &config(100, 10));
    assert!(!set.diagnostics.has_errors(), "{}", set.diagnostics);
    let identity = Identity::new("istio-system/istio-egressgateway", &[], &Binding::default());
    let (policies, _) = AuthzPolicies::compile(&set, &identity).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tenant", http::HeaderValue::from_static("t98-9"));
    let attrs = |host: &'static str, ip: [u8; 4], principal: &'static str| Attributes {
        http: Some(HttpAttributes {
            method: "GET",
            path: "/api/v9/orders",
            headers: &headers,
            auth: None,
        }),
        source_ip: Some(IpAddr::from(ip)),
        remote_ip: Some(IpAddr::from(ip)),
        principal: Some(principal),
        namespace: None,
        host,
        port: 80,
        destination_ip: None,
        sni: None,
    };
    let miss = attrs(
        "other.example.com",
        [192, 168, 1, 1],
        "cluster.local/ns/x/sa/y",
    );
    let hit = attrs(
        "svc98-9.example.com",
        [10, 98, 9, 7],
        "cluster.local/ns/team98/sa/app",
    );
    assert!(!policies.evaluate(&miss).allowed);
    assert!(policies.evaluate(&hit).allowed);
    let mut g = c.benchmark_group("authz_100x10");
    g.bench_function("no_match", |b| {
        b.iter(|| black_box(policies.evaluate(black_box(&miss))))
    });
    g.bench_function("last_allow_matches", |b| {
        b.iter(|| black_box(policies.evaluate(black_box(&hit))))
    });
    let set = ConfigSet::load_str("bench.yaml", &config_unindexed(100, 10));
    let (unindexed, _) = AuthzPolicies::compile(&set, &identity).unwrap();
    assert!(!unindexed.evaluate(&miss).allowed);
    g.bench_function("no_match_without_hosts", |b| {
        b.iter(|| black_box(unindexed.evaluate(black_box(&miss))))
    });
    g.finish();
    let mut g = c.benchmark_group("path_normalize");
    g.bench_function("clean", |b| {
        b.iter(|| normalize(black_box("/api/v9/orders/123"), Normalization::Base))
    });
    g.bench_function("dot_segments", |b| {
        b.iter(|| {
            normalize(
                black_box("/api/./v9/../v9/%6Frders"),
                Normalization::MergeSlashes,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, authz);
criterion_main!(benches);
