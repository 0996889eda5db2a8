//! The bottom of the stack: finds the upstream addresses of a [`Destination`] and sends the
//! request there.
//!
//! Addresses are resolved exactly once per request by the [`Dialer`], every address is
//! classified by the SSRF guard, and only the addresses that passed are dialled: the hyper
//! client is given an IP literal, so nothing downstream can resolve the name a second time
//! and get another answer (DNS rebinding). The resolver ([`Resolve`]) and the connector (any
//! hyper-util connector `Service<Uri>`) are both replaceable.
//!
//! [`Destination`]: crate::ctx::Destination

mod dial_table;
mod dialer;
mod proxy;
mod resolve;
mod upstream;

pub use dial_table::{DialEntry, DialTable};
pub use dialer::{Dialer, DialerConfig, InFlight};
pub use proxy::{Io, ProxyParseError, ProxyTls, UpstreamProxy, UpstreamStream};
pub use resolve::{OverrideAddr, OverrideParseError, Overrides, Resolve, SystemResolver};
pub use upstream::{Upstream, UpstreamConfig};

/// Opens a TCP connection to `addr`, from `source` when the egress address is fixed, with
/// Nagle off (request/response traffic). Every upstream dial goes through here.
pub async fn tcp_connect(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = match source {
        None => tokio::net::TcpStream::connect(addr).await?,
        Some(src) => {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(src, 0))?;
            socket.connect(addr).await?
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
