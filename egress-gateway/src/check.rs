//! `egress-gateway check`: validate configuration for CI pipelines.

use std::io::Write;

use crate::cli::ConfigArgs;
use crate::config::{self, LoadError};

/// Validates, writes a summary to `out` and diagnostics to `err`; returns the exit status.
pub fn run(args: &ConfigArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match config::load(args) {
        Ok(loaded) => {
            summary(&loaded, out);
            for w in loaded.diagnostics.warnings() {
                let _ = writeln!(err, "{w}");
            }
            0
        }
        Err(e @ LoadError::Source(_)) => {
            let _ = writeln!(err, "{e}");
            1
        }
        Err(LoadError::Invalid(d)) => {
            for x in d.iter() {
                let _ = writeln!(err, "{x}");
            }
            let _ = writeln!(
                err,
                "configuration has {} error(s), {} warning(s)",
                d.errors().count(),
                d.warnings().count()
            );
            1
        }
    }
}

/// What the compiled policy holds, a line per resource in force.
fn summary(loaded: &config::Loaded, out: &mut dyn Write) {
    let reg = &loaded.policy.registry;
    let _ = writeln!(
        out,
        "configuration OK: {} file(s), {} service(s), outbound traffic policy {}",
        loaded.policy.config.sources.len(),
        reg.services().len(),
        reg.policy().as_str()
    );
    for se in reg.services() {
        let ports: Vec<String> = se
            .ports
            .iter()
            .map(|p| match p.target_port {
                Some(t) => format!("{}/{:?}->{t}", p.number, p.protocol),
                None => format!("{}/{:?}", p.number, p.protocol),
            })
            .collect();
        let _ = writeln!(
            out,
            "  {} {}: hosts [{}] ports [{}] resolution {:?}{}",
            se.kind,
            se.meta.id(),
            se.hosts.join(", "),
            ports.join(", "),
            se.resolution,
            if se.addresses.is_empty() {
                String::new()
            } else {
                format!(
                    " addresses [{}]",
                    se.addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    for vs in &loaded.policy.config.virtual_hosts {
        let _ = writeln!(
            out,
            "  {} {}: hosts [{}] {}{}",
            vs.kind,
            vs.meta.id(),
            vs.hosts.join(", "),
            route_counts(vs),
            if vs.gateways.is_empty() {
                String::new()
            } else {
                format!(" gateways [{}]", vs.gateways.join(", "))
            }
        );
    }
    for st in &loaded.policy.config.route_status {
        let _ = writeln!(
            out,
            "  {} -> {}: {} ({})",
            st.route, st.parent, st.reason, st.message
        );
    }
    if !loaded.binding.selected.is_empty() {
        let _ = writeln!(
            out,
            "  this gateway is selected by Gateway {}",
            loaded.binding.selected.join(", ")
        );
    }
    for skipped in loaded.policy.routes.summary().skipped {
        let _ = writeln!(out, "  skipped: {skipped}");
    }
    for p in loaded.policy.authz.summary() {
        if let Ok(rules) = p.applies {
            let _ = writeln!(
                out,
                "  AuthorizationPolicy {}: {} with {rules} rule(s){}",
                p.name,
                p.action.as_str(),
                if p.dry_run {
                    " (dry-run: reported, not enforced)"
                } else {
                    ""
                }
            );
        }
    }
    for issuer in loaded.policy.jwt.issuers() {
        let _ = writeln!(out, "  JWT issuer {issuer}");
    }
}

/// `N http route(s)`, and the `tls` and `tcp` routes when there are some.
fn route_counts(vs: &egress_policy::model::VirtualHost) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (vs.http.len(), "http"),
        (vs.tls.len(), "tls"),
        (vs.tcp.len(), "tcp"),
    ] {
        if n > 0 || (what == "http" && vs.tls.is_empty() && vs.tcp.is_empty()) {
            parts.push(format!("{n} {what} route(s)"));
        }
    }
    parts.join(", ")
}
