//! Name resolution: the system resolver with a small cache, and `--resolve` overrides.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::ctx::Host;
use crate::host::{parse_host, parse_port};

/// A resolver of DNS names to addresses. Implement it to plug in another resolver.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `name` (already validated and lower-cased) to its addresses.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<[IpAddr]>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread), with a cache.
///
/// The system resolver does not report TTLs, so answers are kept for a fixed time; the
/// cache is bounded and emptied when full rather than growing with the names clients try.
#[derive(Debug)]
pub struct SystemResolver {
    ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<Box<str>, (Instant, Arc<[IpAddr]>)>>,
}

impl SystemResolver {
    /// A resolver that caches answers for `ttl` (zero disables the cache).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            max_entries: 10_000,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        let cache = self.cache.lock().ok()?;
        let (at, addrs) = cache.get(name)?;
        (at.elapsed() < self.ttl).then(|| addrs.clone())
    }

    fn store(&self, name: &str, addrs: &Arc<[IpAddr]>) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= self.max_entries {
                cache.clear();
            }
            cache.insert(name.into(), (Instant::now(), addrs.clone()));
        }
    }
}

impl Default for SystemResolver {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<[IpAddr]>>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(addrs) = self.cached(name) {
                return Ok(addrs);
            }
            let mut addrs: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
                .await?
                .map(|sa| sa.ip())
                .collect();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
            }
            let addrs: Arc<[IpAddr]> = addrs.into();
            self.store(name, &addrs);
            Ok(addrs)
        })
    }
}

/// Fixed answers for `(name, port)` pairs, like curl's `--resolve HOST:PORT:ADDR[,ADDR]`.
///
/// They take precedence over the registry's endpoints and over DNS, and the operator who
/// wrote them vouches for them: internal addresses given here are dialled.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    map: HashMap<Box<str>, Vec<(u16, Arc<[OverrideAddr]>)>>,
}

/// One address of an override: an IP, and the port to dial instead of the requested one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OverrideAddr {
    /// The address.
    pub ip: IpAddr,
    /// The port to dial, when the override names one (`ADDR:PORT`).
    pub port: Option<u16>,
}

impl OverrideAddr {
    /// The socket address to dial when `port` was asked for.
    pub fn socket(&self, port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port.unwrap_or(port))
    }
}

/// A `--resolve` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid --resolve {value:?}: {why} (expected HOST:PORT:ADDR[,ADDR...])")]
pub struct OverrideParseError {
    value: String,
    why: &'static str,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `HOST:PORT:ADDR[,ADDR...]`; IPv6 addresses may be bracketed. An `ADDR` may carry
    /// a port of its own (`127.0.0.1:8080`, `[::1]:8080`), like curl's `--connect-to`, so that
    /// a manifest's port 80 can be served by a test origin on an ephemeral port.
    pub fn add(&mut self, spec: &str) -> Result<(), OverrideParseError> {
        let err = |why| OverrideParseError {
            value: spec.to_owned(),
            why,
        };
        let mut parts = spec.splitn(3, ':');
        let (Some(host), Some(port), Some(addrs)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("missing field"));
        };
        let Ok(Host::Name(name)) = parse_host(host) else {
            return Err(err("HOST must be a DNS name"));
        };
        let port = parse_port(port).map_err(|_| err("invalid PORT"))?;
        let addrs: Vec<OverrideAddr> = addrs
            .split(',')
            .map(|a| {
                let a = a.trim();
                if let Ok(sa) = a.parse::<std::net::SocketAddr>() {
                    return Ok(OverrideAddr {
                        ip: sa.ip(),
                        port: (sa.port() != 0).then_some(sa.port()),
                    });
                }
                let a = a
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(a);
                a.parse::<IpAddr>()
                    .map(|ip| OverrideAddr { ip, port: None })
                    .map_err(|_| err("invalid ADDR"))
            })
            .collect::<Result<_, _>>()?;
        if addrs.is_empty() {
            return Err(err("no ADDR"));
        }
        let ports = self.map.entry((*name).into()).or_default();
        ports.retain(|(p, _)| *p != port);
        ports.push((port, addrs.into()));
        Ok(())
    }

    /// The addresses for `name` on `port`, if overridden.
    pub fn get(&self, name: &str, port: u16) -> Option<&Arc<[OverrideAddr]>> {
        let ports = self.map.get(name)?;
        ports.iter().find(|(p, _)| *p == port).map(|(_, a)| a)
    }

    /// Whether there are no overrides.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every override as `(name, port, addresses)`, for config dumps.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u16, &[OverrideAddr])> {
        self.map
            .iter()
            .flat_map(|(n, ports)| ports.iter().map(move |(p, a)| (&**n, *p, &**a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overrides() {
        let mut o = Overrides::new();
        o.add("Example.com:443:127.0.0.1").unwrap();
        o.add("v6.test:80:[::1],10.0.0.1").unwrap();
        assert_eq!(
            o.get("example.com", 443).map(|a| a.to_vec()),
            Some(vec![OverrideAddr {
                ip: "127.0.0.1".parse().unwrap(),
                port: None
            }])
        );
        o.add("moved.test:80:127.0.0.1:8080,[::1]:9090").unwrap();
        let moved: Vec<_> = o
            .get("moved.test", 80)
            .unwrap()
            .iter()
            .map(|a| a.socket(80))
            .collect();
        assert_eq!(
            moved,
            [
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:9090".parse().unwrap()
            ]
        );
        assert_eq!(o.get("v6.test", 80).map(|a| a.len()), Some(2));
        assert!(o.get("example.com", 80).is_none());
        for bad in [
            "example.com:443",
            "example.com:x:127.0.0.1",
            "example.com:443:localhost",
            "127.0.0.1:443:127.0.0.1",
            "exa mple.com:443:127.0.0.1",
        ] {
            assert!(o.add(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn system_resolver_resolves_localhost() {
        let r = SystemResolver::default();
        let addrs = r.resolve("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.is_loopback()), "{addrs:?}");
        // Second answer comes from the cache and is the same.
        assert_eq!(r.resolve("localhost").await.unwrap(), addrs);
    }
}
