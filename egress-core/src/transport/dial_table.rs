//! The addresses and TLS settings behind a pooled `https://{sni}:{port}` connection key.
//!
//! hyper-util's pool keys connections by URI authority. A request that originates TLS goes
//! out as `https://{sni}:{port}`, so connections are pooled per SNI and port, and the
//! connector finds here the addresses the [`Dialer`](super::Dialer) validated for that key
//! and the TLS settings to use: what is dialled is still only what passed the SSRF guard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::ctx::TlsSettings;

/// What the connector needs for one `sni:port` key.
#[derive(Clone, Debug)]
pub struct DialEntry {
    /// Validated addresses, in the order to try them (empty when going through a proxy).
    pub addrs: Vec<SocketAddr>,
    /// The TLS settings, when TLS is originated.
    pub tls: Option<Arc<TlsSettings>>,
    /// The upstream proxy to tunnel through, if any.
    pub proxy: Option<Arc<super::UpstreamProxy>>,
    /// The local address to connect from, when the plan fixes one.
    pub source: Option<std::net::IpAddr>,
    /// The TLS server name, when the key is not it (a key made distinct by `source`).
    pub sni: Option<Arc<str>>,
}

impl DialEntry {
    fn same_as(&self, other: &DialEntry) -> bool {
        self.addrs == other.addrs
            && same(&self.tls, &other.tls)
            && same(&self.proxy, &other.proxy)
            && self.source == other.source
            && self.sni == other.sni
    }
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Shared between the Upstream (writes before sending) and the connector (reads to dial).
#[derive(Clone, Debug, Default)]
pub struct DialTable {
    // Held only to copy an entry in or out, never across an await. Keyed by host, then
    // port, so that lookups and unchanged updates need no allocation.
    entries: Arc<Mutex<HashMap<String, Vec<(u16, DialEntry)>>>>,
}

impl DialTable {
    /// Records the entry for `host:port`. The table holds one entry per key, and keys come
    /// from configured TLS destinations, so it stays small; it is emptied if it ever grows
    /// past 10,000 keys.
    pub fn set(&self, host: &str, port: u16, entry: DialEntry) {
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        if let Some(ports) = m.get_mut(host) {
            match ports.iter_mut().find(|(p, _)| *p == port) {
                // The common case on the request path: the same addresses and settings again.
                Some((_, old)) if old.same_as(&entry) => {}
                Some((_, old)) => *old = entry,
                None => ports.push((port, entry)),
            }
            return;
        }
        if m.len() >= 10_000 {
            m.clear();
        }
        m.insert(host.to_owned(), vec![(port, entry)]);
    }

    /// The entry for `host:port`.
    pub fn get(&self, host: &str, port: u16) -> Option<DialEntry> {
        let m = self.entries.lock().ok()?;
        m.get(host)?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, e)| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_replace() {
        let t = DialTable::default();
        let tls = Arc::new(TlsSettings::default());
        let entry = |a: &str| DialEntry {
            addrs: vec![a.parse().unwrap()],
            tls: Some(tls.clone()),
            proxy: None,
            source: None,
            sni: None,
        };
        assert!(t.get("a.test", 443).is_none());
        t.set("a.test", 443, entry("127.0.0.1:1"));
        t.set("a.test", 8443, entry("127.0.0.1:2"));
        assert_eq!(
            t.get("a.test", 443).unwrap().addrs,
            entry("127.0.0.1:1").addrs
        );
        assert_eq!(
            t.get("a.test", 8443).unwrap().addrs,
            entry("127.0.0.1:2").addrs
        );
        t.set("a.test", 443, entry("127.0.0.1:3"));
        assert_eq!(
            t.get("a.test", 443).unwrap().addrs,
            entry("127.0.0.1:3").addrs
        );
        assert!(t.get("b.test", 443).is_none());
    }
}
