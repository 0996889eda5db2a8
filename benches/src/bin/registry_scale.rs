//! Registry scale: writes a configuration of N `ServiceEntry` hosts (mixed exact and
//! wildcard, several ports each; not committed, made on demand), then measures what the
//! gateway does with it: reading, compiling, the memory that costs beyond the YAML text,
//! and the cost of one lookup, for hosts spread over the whole registry.
//!
//!   cargo run --release -p egress-benches --bin registry_scale -- 1000000 /tmp/registry.yaml
//!
//! Prints one line: hosts, file size, read and compile seconds, peak RSS and bytes per host
//! above the text, and nanoseconds per lookup (exact hits, wildcard hits, misses).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "benchmark tool"
)]

use egress_core::ctx::{Destination, Host, RequestForm, Scheme};
use egress_policy::compile::{Settings, compile_owned};
use egress_policy::istio::ConfigSet;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes, so that what the registry keeps is measured exactly (RSS also
/// holds pages the allocator has not returned).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
#[allow(unsafe_code, reason = "a counting global allocator")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let now = if new_size >= layout.size() {
            LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size()
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed) - (layout.size() - new_size)
        };
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Hosts per `ServiceEntry`, as an organisation registers a provider's many names.
const PER_ENTRY: usize = 20;

/// The host with index `i`: one in ten a wildcard (`*.wI.example.com`), the others exact
/// (`apiI.example.com`).
fn host(i: usize) -> String {
    if i.is_multiple_of(10) {
        format!("*.w{i}.example.com")
    } else {
        format!("api{i}.example.com")
    }
}

/// Writes `n` hosts in entries of [`PER_ENTRY`]; the entries with wildcards resolve NONE,
/// the others DNS; each entry has two ports, every other one a third.
fn generate(n: usize, path: &std::path::Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for (e, start) in (0..n).step_by(PER_ENTRY).enumerate() {
        let end = (start + PER_ENTRY).min(n);
        // Wildcards and exact hosts in separate entries: DNS resolution takes no wildcard.
        let (exact, wild): (Vec<usize>, Vec<usize>) =
            (start..end).partition(|i| !i.is_multiple_of(10));
        for (k, hosts, resolution) in [(0, exact, "DNS"), (1, wild, "NONE")] {
            if hosts.is_empty() {
                continue;
            }
            let list: Vec<String> = hosts.iter().map(|&i| format!("\"{}\"", host(i))).collect();
            let extra = if e.is_multiple_of(2) {
                ", {number: 8443, name: tls, protocol: TLS}"
            } else {
                ""
            };
            writeln!(
                out,
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se{e}-{k}, namespace: scale}}\nspec:\n  hosts: [{}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 443, name: https, protocol: HTTPS}}{extra}]\n  resolution: {resolution}\n---",
                list.join(", ")
            )
            .unwrap();
        }
    }
    out.flush().unwrap();
}

/// Peak resident memory of this process, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    status_kb("VmHWM:")
}

/// Resident memory now, in bytes (`VmRSS`).
fn rss() -> u64 {
    status_kb("VmRSS:")
}

fn status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dst(host: String) -> Destination {
    Destination::new(
        Host::Name(host.into()),
        80,
        Scheme::Http,
        RequestForm::Absolute,
    )
}

/// Nanoseconds per `lookup` of these destinations, a few rounds over them.
fn per_lookup(reg: &egress_policy::Registry, dsts: &[Destination], want: bool) -> f64 {
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        for d in dsts {
            assert_eq!(std::hint::black_box(reg.lookup(d)).is_some(), want, "{d}");
        }
    }
    started.elapsed().as_nanos() as f64 / (rounds * dsts.len()) as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100_000, |a| a.parse().unwrap());
    let path: std::path::PathBuf = args.next().map_or_else(
        || std::env::temp_dir().join("registry-scale.yaml"),
        Into::into,
    );
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0
        || std::env::var_os("REGENERATE").is_some()
    {
        generate(n, &path);
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let base = peak_rss();
    let started = Instant::now();
    let config = ConfigSet::load_paths(std::slice::from_ref(&path)).unwrap();
    let read = started.elapsed();
    assert!(!config.diagnostics.has_errors(), "{}", config.diagnostics);
    let started = Instant::now();
    let compiled = compile_owned(config, &Settings::default()).unwrap_or_else(|d| panic!("{d}"));
    let compiling = started.elapsed();
    let peak = peak_rss();
    // What stays while the gateway runs: the compiled snapshot (the text and the parse are
    // gone). Freed pages may stay mapped to the allocator, so this is an upper bound.
    let steady = rss();
    let live = LIVE.load(Ordering::Relaxed);
    let heap_peak = PEAK.load(Ordering::Relaxed);
    let hosts: usize = compiled
        .policy
        .registry
        .services()
        .iter()
        .map(|s| s.hosts.len())
        .sum();
    // Lookups across the registry: exact hosts, names under wildcards, and names that are
    // not registered.
    let sample = 10_000.min(n);
    let step = (n / sample).max(1);
    let exact: Vec<_> = (1..n)
        .step_by(step)
        .filter(|i| !i.is_multiple_of(10))
        .map(|i| dst(host(i)))
        .collect();
    let wild: Vec<_> = (0..n)
        .step_by(step * 10)
        .map(|i| dst(format!("x.w{}.example.com", i - i % 10)))
        .collect();
    let miss: Vec<_> = (0..sample)
        .map(|i| dst(format!("none{i}.example.net")))
        .collect();
    let reg = &compiled.policy.registry;
    println!(
        "hosts {hosts} file {:.1} MB read {:.2} s compile {:.2} s peak RSS {:.0} MB ({:.0} B/host above the text) after {:.0} MB; heap: peak {:.0} MB, kept {:.0} MB ({:.0} B/host) lookup ns: exact {:.0} wildcard {:.0} miss {:.0}",
        size as f64 / 1e6,
        read.as_secs_f64(),
        compiling.as_secs_f64(),
        peak as f64 / 1e6,
        (peak.saturating_sub(base).saturating_sub(size)) as f64 / hosts as f64,
        steady as f64 / 1e6,
        heap_peak as f64 / 1e6,
        live as f64 / 1e6,
        live as f64 / hosts as f64,
        per_lookup(reg, &exact, true),
        per_lookup(reg, &wild, true),
        per_lookup(reg, &miss, false),
    );
}
