//! Command-line arguments.

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use egress_policy::istio::OutboundPolicy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use egress_policy::duration::parse_duration;

/// An egress gateway configured with Istio's own YAML.
///
/// With no arguments it runs on an embedded example registry, REGISTRY_ONLY, proxying on
/// 127.0.0.1:15001 (HTTP/1.1 and h2c: `curl -x`, `HTTP_PROXY`/`HTTPS_PROXY`, Host-routed
/// requests) with its admin endpoints on 127.0.0.1:15000.
#[derive(Debug, Parser)]
#[command(name = "egress-gateway", version, about, long_about)]
pub struct Cli {
    /// Validate configuration instead of running (`check --config PATH`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration and listener settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration, print a summary; exit status 1 on errors.
    Check(ConfigArgs),
}

/// Where configuration comes from.
#[derive(Debug, Clone, ClapArgs)]
pub struct ConfigArgs {
    /// Istio YAML file or directory (`.yaml`/`.yml`, multi-document); repeatable. Without it,
    /// the embedded default configuration is used.
    #[arg(short, long = "config", value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// Override the outbound traffic policy of the configuration (default REGISTRY_ONLY).
    #[arg(long, value_enum, value_name = "MODE")]
    pub outbound_policy: Option<PolicyArg>,
    /// This gateway's identity, `namespace/name` (shown in logs and /config_dump).
    #[arg(
        long,
        default_value = "istio-system/istio-egressgateway",
        value_name = "NS/NAME"
    )]
    pub gateway_name: String,
    /// A label of this gateway, `key=value`; repeatable. `Gateway` resources whose
    /// `selector` these labels satisfy configure this gateway, and VirtualServices bound to
    /// them apply; with none, the gateway acts for the mesh.
    /// The defaults are the labels of Istio's own egress gateway pods, so that manifests
    /// selecting either (`istio: egressgateway`, `app: istio-egressgateway`) apply.
    #[arg(long = "gateway-label", default_values = ["istio=egressgateway", "app=istio-egressgateway"], value_name = "KEY=VALUE", value_parser = parse_label)]
    pub gateway_labels: Vec<(String, String)>,
    /// Path normalisation before authorization and routing (default: MeshConfig's
    /// `pathNormalization`, else DECODE_AND_MERGE_SLASHES, the strictest).
    #[arg(long, value_enum, value_name = "MODE")]
    pub path_normalization: Option<NormalizationArg>,
    /// This gateway's mesh certificates, as Istio mounts them (`cert-chain.pem`, `key.pem`,
    /// `root-cert.pem`): `ISTIO_MUTUAL` Gateway servers and listeners terminate with them and
    /// require client certificates from the same root.
    #[arg(long, default_value = "/etc/certs", value_name = "DIR")]
    pub mesh_certs: PathBuf,
    /// Where the Kubernetes Secrets that `credentialName` and Gateway API `certificateRefs`
    /// name are mounted: `DIR/NAME/` holds Secret NAME's `tls.crt`, `tls.key`, `ca.crt`.
    #[arg(long, value_name = "DIR")]
    pub credentials: Option<PathBuf>,
}

/// `--otlp-protocol` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OtlpProtocolArg {
    /// OTLP/HTTP, protobuf bodies, `POST /v1/traces`.
    Http,
    /// OTLP/gRPC over HTTP/2 cleartext.
    Grpc,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

/// `--path-normalization` values (Istio's `pathNormalization.normalization`).
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NormalizationArg {
    /// The path as received.
    None,
    /// RFC 3986 normalisation (dot segments, unreserved percent-encodings, `\`).
    Base,
    /// BASE, and runs of `/` merged.
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then MERGE_SLASHES.
    DecodeAndMergeSlashes,
}

impl From<NormalizationArg> for egress_policy::authz::path::Normalization {
    fn from(a: NormalizationArg) -> Self {
        use egress_policy::authz::path::Normalization as N;
        match a {
            NormalizationArg::None => N::None,
            NormalizationArg::Base => N::Base,
            NormalizationArg::MergeSlashes => N::MergeSlashes,
            NormalizationArg::DecodeAndMergeSlashes => N::DecodeAndMergeSlashes,
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("invalid label {s:?} (expected KEY=VALUE)")),
    }
}

/// `--headers-with-underscores` values (Envoy's `headers_with_underscores_action`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UnderscoresArg {
    /// Forward them.
    Allow,
    /// Remove them.
    Drop,
    /// Refuse the request with 400.
    Reject,
}

impl From<UnderscoresArg> for egress_core::destination::Underscores {
    fn from(a: UnderscoresArg) -> Self {
        use egress_core::destination::Underscores as U;
        match a {
            UnderscoresArg::Allow => U::Allow,
            UnderscoresArg::Drop => U::Drop,
            UnderscoresArg::Reject => U::Reject,
        }
    }
}

/// `--outbound-policy` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Unregistered destinations pass (Istio's mesh default).
    AllowAny,
    /// Unregistered destinations are refused.
    RegistryOnly,
}

impl From<PolicyArg> for OutboundPolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::AllowAny => OutboundPolicy::AllowAny,
            PolicyArg::RegistryOnly => OutboundPolicy::RegistryOnly,
        }
    }
}

/// Settings of a running gateway.
#[derive(Debug, Clone, ClapArgs)]
pub struct RunArgs {
    /// Configuration sources and policy.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The proxy listener (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:15001", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The address that listeners of `Gateway` servers bind to.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub gateway_bind: std::net::IpAddr,
    /// Added to every `Gateway` server port, so that a manifest's port 80 can listen on
    /// 8080 (`--gateway-port-offset 8000`) without privileges.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub gateway_port_offset: u16,
    /// The admin listener (/healthz/ready, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Pin HOST:PORT to addresses, like curl's --resolve (HOST:PORT:ADDR, several ADDRs comma-separated); wins over
    /// endpoints and DNS, and lets internal addresses through the SSRF guard. Repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
    /// Upstream TCP connect timeout (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Time allowed for upstream response headers; 0 disables.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,
    /// How long a request or response body may stall (no bytes) before the exchange is
    /// aborted; 0 disables.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub body_idle_timeout: Duration,
    /// Fixed source address of upstream connections (the gateway's egress IP, for firewall
    /// allow-lists); by default the kernel chooses.
    #[arg(long, value_name = "IP")]
    pub egress_source_ip: Option<std::net::IpAddr>,
    /// Send upstream traffic through this HTTP proxy (`http://[user:password@]host:port`,
    /// or `https://…` to speak TLS to the proxy), with CONNECT: for a company's mandatory
    /// outbound proxy. The proxy resolves names.
    #[arg(long, value_name = "URL")]
    pub upstream_proxy: Option<String>,
    /// Proxies in front of the gateway that append to `X-Forwarded-For` and are trusted:
    /// `remote.ip` / `remoteIpBlocks` read the address this many entries from the right.
    /// 0 (the default): the header is never trusted and the remote address is the peer.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub xff_num_trusted_hops: usize,
    /// At most this many external authorization checks at once; more are refused with the
    /// provider's statusOnError (or let through with failOpen).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub ext_authz_max_in_flight: usize,
    /// How often keys of `jwksUri`s are fetched again (a failed fetch is retried sooner;
    /// the last good keys are kept meanwhile).
    #[arg(long, default_value = "20m", value_parser = parse_duration, value_name = "DURATION")]
    pub jwks_refresh_interval: Duration,
    /// Export traces over OTLP to this collector (`http://host:port`); off by default.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<http::Uri>,
    /// The OTLP transport: HTTP/protobuf (port 4318 by convention) or gRPC (4317).
    #[arg(long, value_enum, default_value = "http", value_name = "PROTOCOL")]
    pub otlp_protocol: OtlpProtocolArg,
    /// PEM roots trusted for an `https://` --otlp-endpoint (default: SSL_CERT_FILE, else
    /// the webpki roots).
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<std::path::PathBuf>,
    /// With --otlp-endpoint: export the metrics `/metrics` serves this often (0: never).
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub otlp_metrics_interval: Duration,
    /// Percentage of requests traced when the caller did not decide (Istio's default: 1).
    #[arg(long, default_value_t = 1.0, value_name = "PERCENT", value_parser = parse_percent)]
    pub trace_sampling: f64,
    /// PEM roots trusted for an `https://` --upstream-proxy (default: SSL_CERT_FILE, else
    /// the webpki roots).
    #[arg(long, value_name = "FILE")]
    pub upstream_proxy_ca: Option<std::path::PathBuf>,
    /// Only these destinations go through --upstream-proxy (exact or `*.suffix`);
    /// repeatable; default: all.
    #[arg(long, value_name = "HOST")]
    pub upstream_proxy_for: Vec<String>,
    /// Time allowed for DNS resolution.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_timeout: Duration,
    /// Time a client has to send complete request headers (slowloris guard).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_read_timeout: Duration,
    /// How long a CONNECT tunnel may stay silent in both directions before it is closed.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub tunnel_idle_timeout: Duration,
    /// Mirrored requests in flight at once; more are dropped (and counted), never queued.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub mirror_max_concurrency: usize,
    /// The largest request body that is mirrored, in bytes; larger ones are not mirrored.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub mirror_max_body: usize,
    /// How long a mirrored request may take before it is abandoned.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub mirror_timeout: Duration,
    /// Append `-shadow` to the Host of mirrored requests, as Istio 1.27 and earlier did.
    #[arg(long)]
    pub mirror_host_suffix: bool,
    /// How often the files under --config are checked for changes (0: only on SIGHUP). A
    /// changed configuration is compiled and swapped in only if it has no errors.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub watch_interval: Duration,
    /// On SIGTERM/SIGINT: how long in-flight requests and tunnels may take to finish after
    /// the listeners close (readiness turns 503 at once); then the process exits.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
    /// The access log: one `egress::access` line per request on stderr (`on`). Off by
    /// default, as in Istio and Envoy: at saturation it costs about 15% of throughput.
    #[arg(long, default_value = "off", value_parser = ["on", "off"], value_name = "on|off")]
    pub access_log: String,
    /// Write the access log to this file (appended; implies `--access-log on`) instead of
    /// stderr. Lines are written by a thread of their own, in batches.
    #[arg(long, value_name = "PATH")]
    pub access_log_file: Option<std::path::PathBuf>,
    /// The access log file's format: `text` (Envoy-like) or `json` (default: --log-format).
    #[arg(long, value_parser = ["text", "json"], value_name = "text|json")]
    pub access_log_format: Option<String>,
    /// Log line format on stderr, access log included: `text`, or `json` (one object per
    /// line, the event's fields at top level).
    #[arg(long, default_value = "text", value_parser = ["text", "json"], value_name = "text|json")]
    pub log_format: String,
    /// Request header names with `_`, which CGI-style origins read as `-` (`x_user` as
    /// `x-user`): `reject` (400, the default), `drop` (removed), or `allow` (Envoy's default).
    #[arg(long, value_enum, default_value = "reject", value_name = "ACTION")]
    pub headers_with_underscores: UnderscoresArg,
    /// Let paths with parameters (`;` in a segment, `/a;v=1`) through; by default they are
    /// refused 400, since origins that strip them read another path than the policy did.
    #[arg(long)]
    pub allow_path_parameters: bool,
    /// Maximum concurrent CONNECT tunnels and passthrough/TCP connections; one over the cap
    /// gets 429 with `Retry-After` (a passthrough connection is closed) and its slot is
    /// freed when a tunnel closes.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tunnels: usize,
    /// Maximum concurrent client connections; more are closed at once.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_connections: usize,
    /// Maximum size of a request head (request line and headers), in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_header_bytes: usize,
    /// Worker threads; default: the CPUs this process may run on. With 1, the gateway runs a
    /// single-threaded event loop (cheapest per request when pinned to one core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The pseudonym written in `Via`; a request that already carries it has looped.
    #[arg(long, default_value = "egress-gateway", value_name = "NAME")]
    pub via_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "egress-gateway",
            "--config",
            "a.yaml",
            "-c",
            "dir",
            "--outbound-policy",
            "allow-any",
            "--resolve",
            "a.com:80:127.0.0.1",
        ])
        .unwrap();
        assert_eq!(cli.run.config.config.len(), 2);
        assert!(matches!(
            cli.run.config.outbound_policy,
            Some(PolicyArg::AllowAny)
        ));
        let check = Cli::try_parse_from(["egress-gateway", "check", "--config", "x.yaml"]).unwrap();
        assert!(matches!(check.command, Some(Command::Check(_))));
    }
}
