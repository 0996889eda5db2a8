//! Chaining through an upstream HTTP proxy (`CONNECT`), as companies with a mandatory
//! outbound proxy need.
//!
//! When a destination is sent through the proxy, the gateway does not resolve it: the proxy
//! does, and the gateway asks it for `CONNECT host:port` with the validated name. IP-literal
//! destinations still pass the SSRF guard first.

use base64::Engine as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{UpstreamError, UpstreamErrorKind};

/// An upstream proxy and the destinations it is used for.
#[derive(Clone, Debug)]
pub struct UpstreamProxy {
    host: String,
    port: u16,
    authorization: Option<String>,
    /// Exact hosts and `*.suffix` wildcards; empty means every destination.
    only: Vec<String>,
}

/// A `--upstream-proxy` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream proxy {0:?}: {1}")]
pub struct ProxyParseError(String, &'static str);

impl UpstreamProxy {
    /// Parses `http://[user:password@]host:port`. (`https://` proxies are not supported yet.)
    pub fn parse(url: &str) -> Result<Self, ProxyParseError> {
        let err = |why| ProxyParseError(url.to_owned(), why);
        let rest = match url.strip_prefix("http://") {
            Some(r) => r,
            None if url.starts_with("https://") => {
                return Err(err("https:// proxies are not supported yet; use http://"));
            }
            None => return Err(err("expected http://")),
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (host, port) = hostport.rsplit_once(':').ok_or(err("a port is required"))?;
        let port: u16 = port.parse().map_err(|_| err("invalid port"))?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let authorization = auth.map(|a| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authorization,
            only: Vec::new(),
        })
    }

    /// Restricts the proxy to these hosts (`*.suffix` allowed); empty: all.
    pub fn only_for(mut self, hosts: Vec<String>) -> Self {
        self.only = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        self
    }

    /// Whether `host` goes through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|h| match h.strip_prefix("*.") {
                Some(s) => {
                    host.len() > s.len()
                        && host.ends_with(s)
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                }
                None => h == host,
            })
    }

    /// `host:port` of the proxy, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Opens a tunnel to `target` (`host:port`) through the proxy, within `timeout`.
    pub async fn connect(
        &self,
        target: &str,
        timeout: Duration,
        source: Option<std::net::IpAddr>,
    ) -> Result<TcpStream, UpstreamError> {
        let fail = |kind, what: String| {
            UpstreamError::new(kind, format!("upstream proxy {}: {what}", self.address()))
        };
        let work = async {
            let addr: SocketAddr = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(UpstreamErrorKind::DnsFailed, format!("cannot resolve: {e}")))?
                .next()
                .ok_or_else(|| fail(UpstreamErrorKind::DnsFailed, "no address".into()))?;
            let mut stream = super::tcp_connect(addr, source)
                .await
                .map_err(|e| fail(UpstreamErrorKind::ConnectFailed, format!("connecting: {e}")))?;
            let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
            if let Some(a) = &self.authorization {
                head.push_str("Proxy-Authorization: ");
                head.push_str(a);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| fail(UpstreamErrorKind::ConnectFailed, e.to_string()))?;
            // Read the answer's head byte by byte: nothing of the tunnel may be consumed.
            let mut answer = Vec::with_capacity(256);
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"\r\n\r\n") {
                if answer.len() > 8192 {
                    return Err(fail(
                        UpstreamErrorKind::Protocol,
                        "answer head too large".into(),
                    ));
                }
                let n = stream
                    .read(&mut byte)
                    .await
                    .map_err(|e| fail(UpstreamErrorKind::Protocol, e.to_string()))?;
                if n == 0 {
                    return Err(fail(
                        UpstreamErrorKind::Protocol,
                        "closed before answering CONNECT".into(),
                    ));
                }
                answer.push(byte[0]);
            }
            let status_line = String::from_utf8_lossy(&answer);
            let status = status_line.split_whitespace().nth(1).unwrap_or("");
            if !status.starts_with('2') {
                let line = status_line.lines().next().unwrap_or("").to_owned();
                return Err(fail(
                    UpstreamErrorKind::ConnectFailed,
                    format!("refused CONNECT {target}: {line}"),
                ));
            }
            Ok(stream)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(fail(
                UpstreamErrorKind::ConnectTimeout,
                format!("no tunnel to {target} within {timeout:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_scopes() {
        let p = UpstreamProxy::parse("http://user:pw@proxy.corp:3128").unwrap();
        assert_eq!(p.address(), "proxy.corp:3128");
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwdw=="));
        assert!(p.applies_to("anything.example"));
        let p = p.only_for(vec!["*.example.com".into(), "api.test".into()]);
        assert!(p.applies_to("a.example.com") && p.applies_to("api.test"));
        assert!(!p.applies_to("example.com") && !p.applies_to("other.test"));
        for bad in [
            "proxy:3128",
            "http://proxy",
            "https://proxy:443",
            "http://:80",
        ] {
            assert!(UpstreamProxy::parse(bad).is_err(), "{bad}");
        }
    }
}
