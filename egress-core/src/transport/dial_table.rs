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
}

/// Shared between the Upstream (writes before sending) and the connector (reads to dial).
#[derive(Clone, Debug, Default)]
pub struct DialTable {
    // Held only to copy an entry in or out, never across an await.
    entries: Arc<Mutex<HashMap<(String, u16), DialEntry>>>,
}

impl DialTable {
    /// Records the entry for `host:port`. The table holds one entry per key, and keys come
    /// from configured TLS destinations, so it stays small; it is emptied if it ever grows
    /// past 10,000 keys.
    pub fn set(&self, host: &str, port: u16, entry: DialEntry) {
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= 10_000 && !m.contains_key(&(host.to_owned(), port)) {
                m.clear();
            }
            m.insert((host.to_owned(), port), entry);
        }
    }

    /// The entry for `host:port`.
    pub fn get(&self, host: &str, port: u16) -> Option<DialEntry> {
        self.entries
            .lock()
            .ok()?
            .get(&(host.to_owned(), port))
            .cloned()
    }
}
