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
pub use proxy::{ProxyParseError, UpstreamProxy};
pub use resolve::{OverrideAddr, OverrideParseError, Overrides, Resolve, SystemResolver};
pub use upstream::{Upstream, UpstreamConfig};
