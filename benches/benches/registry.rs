//! Registry lookup cost with 10, 10k and 100k ServiceEntries (10% wildcards): it must stay
//! flat, since a lookup is a hash probe per label, whatever the number of entries.
//!
//! Run: `cargo bench -p egress-benches --bench registry`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use egress_core::ctx::{Destination, RequestForm, Scheme};
use egress_core::destination::destination_of;
use egress_core::host::parse_authority;
use egress_policy::Registry;
use egress_policy::istio::{ConfigSet, Location, Meta, Port, Protocol, Resolution, ServiceEntry};
use std::hint::black_box;

fn entries(n: usize) -> ConfigSet {
    let mut set = ConfigSet::default();
    for i in 0..n {
        let host = if i % 10 == 0 {
            format!("*.svc{i}.example.com")
        } else {
            format!("api{i}.example.com")
        };
        set.services.push(ServiceEntry {
            meta: Meta {
                name: format!("se{i}"),
                namespace: "bench".into(),
                file: "bench".into(),
                line: 1,
            },
            hosts: vec![host],
            addresses: Vec::new(),
            ports: vec![Port {
                number: 443,
                protocol: Protocol::Https,
                name: "https".into(),
                target_port: None,
            }],
            location: Location::MeshExternal,
            resolution: if i % 10 == 0 {
                Resolution::None
            } else {
                Resolution::Dns
            },
            endpoints: Vec::new(),
            export_to: Vec::new(),
            source_ip: None,
            trusted_nets: Vec::new(),
            kind: "ServiceEntry",
        });
    }
    set
}

fn dst(authority: &str) -> Destination {
    let (host, port) = parse_authority(authority).unwrap();
    Destination::new(
        host,
        port.unwrap_or(443),
        Scheme::Https,
        RequestForm::Connect,
    )
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry_lookup");
    for n in [10usize, 10_000, 100_000] {
        let (registry, _) = Registry::compile(&entries(n), None).unwrap();
        let exact = dst(&format!("api{}.example.com:443", n - 1));
        let wildcard = dst("a.b.c.svc0.example.com:443");
        let miss = dst("www.unregistered.example.org:443");
        assert!(registry.lookup(&exact).is_some());
        assert!(registry.lookup(&wildcard).is_some());
        assert!(registry.lookup(&miss).is_none());
        group.bench_with_input(BenchmarkId::new("exact", n), &exact, |b, d| {
            b.iter(|| black_box(registry.lookup(black_box(d)).is_some()))
        });
        group.bench_with_input(BenchmarkId::new("wildcard_depth4", n), &wildcard, |b, d| {
            b.iter(|| black_box(registry.lookup(black_box(d)).is_some()))
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, d| {
            b.iter(|| black_box(registry.lookup(black_box(d)).is_some()))
        });
    }
    group.finish();
}

fn destination(c: &mut Criterion) {
    let req = http::Request::get("http://api.example.com:8080/path?q=1")
        .header("host", "api.example.com:8080")
        .body(())
        .unwrap();
    c.bench_function("destination_of/absolute_form", |b| {
        b.iter(|| black_box(destination_of(black_box(&req)).is_ok()))
    });
}

criterion_group!(benches, lookups, destination);
criterion_main!(benches);
