//! A custom egress proxy built from the SDK's layers, on 127.0.0.1:15101.
//!
//! Run: `cargo run -p egress-examples --example custom_proxy`, then
//! `curl -x http://127.0.0.1:15101 http://example.com/` (refused: not registered) and
//! `curl -x http://127.0.0.1:15101 http://httpbin.org/admin` (refused by the DENY policy).

use egress_policy::snapshot::PolicyStore;

const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = PolicyStore::new(egress_examples::custom_proxy::policy(YAML)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:15101").await?;
    eprintln!("custom proxy on {}", listener.local_addr()?);
    egress_examples::custom_proxy::serve(listener, policy).await;
    Ok(())
}
