//! Errors of the transport, and helpers to find them in a chain of causes.

use std::error::Error as StdError;
use std::fmt;

/// The boxed error type used between layers.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Which upstream step failed; each maps to one status and one `x-egress-error` token (or
/// `x-egress-denied` for the refusals among them).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// The name did not resolve (NXDOMAIN, no addresses, resolver failure).
    DnsFailed,
    /// Resolution took longer than its timeout.
    DnsTimeout,
    /// Every address was refused by the SSRF guard.
    IpDenied,
    /// The address is one of the gateway's own listeners.
    LoopDetected,
    /// The TCP connection was refused or reset.
    ConnectFailed,
    /// The TCP connection did not complete within the connect timeout.
    ConnectTimeout,
    /// The response headers did not arrive within the request timeout.
    ResponseTimeout,
    /// The upstream closed the connection or spoke invalid HTTP.
    Protocol,
    /// The TLS handshake with the upstream failed (untrusted or mismatched certificate...).
    TlsHandshake,
    /// The client's request body was malformed (a bad chunk) after the upstream request
    /// had started: 400, and the upstream connection is discarded.
    ClientBodyMalformed,
    /// The client's request body stalled for longer than the body idle timeout: 408.
    ClientBodyTimeout,
}

impl UpstreamErrorKind {
    /// The stable token sent in `x-egress-error` (or `x-egress-denied`).
    pub fn token(self) -> &'static str {
        match self {
            UpstreamErrorKind::DnsFailed => "dns-failed",
            UpstreamErrorKind::DnsTimeout => "dns-timeout",
            UpstreamErrorKind::IpDenied => "ip-denied",
            UpstreamErrorKind::LoopDetected => "loop-detected",
            UpstreamErrorKind::ConnectFailed => "connect-failed",
            UpstreamErrorKind::ConnectTimeout => "connect-timeout",
            UpstreamErrorKind::ResponseTimeout => "upstream-timeout",
            UpstreamErrorKind::Protocol => "upstream-protocol-error",
            UpstreamErrorKind::TlsHandshake => "tls-handshake-failed",
            UpstreamErrorKind::ClientBodyMalformed => "malformed",
            UpstreamErrorKind::ClientBodyTimeout => "request-body-timeout",
        }
    }

    /// Whether this is a policy refusal (reported in `x-egress-denied`) rather than a failure.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            UpstreamErrorKind::IpDenied
                | UpstreamErrorKind::LoopDetected
                | UpstreamErrorKind::ClientBodyMalformed
                | UpstreamErrorKind::ClientBodyTimeout
        )
    }
}

/// An upstream step failed for the destination named in the message.
#[derive(Debug)]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl UpstreamError {
    /// A new error; `message` says what failed for which destination.
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Which step failed.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
            // hyper-util's errors keep the useful part ("connection refused") in their source.
            let mut cause = source.source();
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The first error of type `E` in the chain of causes.
pub fn cause_ref<'a, E: StdError + 'static>(
    mut error: &'a (dyn StdError + 'static),
) -> Option<&'a E> {
    loop {
        if let Some(e) = error.downcast_ref::<E>() {
            return Some(e);
        }
        error = error.source()?;
    }
}

/// Whether an error of type `E` is in the chain of causes.
pub fn is_caused_by<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    cause_ref::<E>(error).is_some()
}
