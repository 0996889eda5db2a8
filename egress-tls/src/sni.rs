//! Reading the `ClientHello` at the start of a tunnel, without terminating TLS.
//!
//! rustls's `Acceptor` parses the hello (fragmented records included) from the bytes the
//! client sent; those bytes are kept and handed back so that they can be forwarded upstream
//! unchanged.

use rustls::server::Acceptor;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest `ClientHello` accepted (several records' worth).
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// Why no server name could be taken from the start of a stream.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The bytes are not a TLS handshake.
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
    /// The client closed before sending a complete hello.
    #[error("the client closed before its ClientHello was complete")]
    Closed,
    /// More than [`MAX_HELLO_BYTES`] without a complete hello.
    #[error("ClientHello larger than {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    /// The hello did not arrive in time.
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    /// Reading failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads until a complete `ClientHello`; returns the bytes read (to forward) and the SNI.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<String>), HelloError> {
    match tokio::time::timeout(timeout, read(r)).await {
        Ok(result) => result,
        Err(_) => Err(HelloError::Timeout(timeout)),
    }
}

/// What a complete buffer says: the hello's SNI, `Ok(None)`-like "need more" as
/// `Err(None)`, or why it is not a hello. Synchronous, for fuzzing and for callers that
/// already hold the bytes.
pub fn parse_client_hello(bytes: &[u8]) -> Result<Option<String>, Option<HelloError>> {
    if bytes.len() > MAX_HELLO_BYTES {
        return Err(Some(HelloError::TooLarge));
    }
    match crate::probe(bytes) {
        crate::TlsProbe::NotTls => {
            return Err(Some(HelloError::NotTls(
                "not a TLS handshake record".into(),
            )));
        }
        crate::TlsProbe::NeedMore => return Err(None),
        crate::TlsProbe::Handshake => {}
    }
    let mut acceptor = Acceptor::default();
    let mut fed = bytes;
    while !fed.is_empty() {
        acceptor
            .read_tls(&mut fed)
            .map_err(|e| Some(HelloError::NotTls(e.to_string())))?;
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(accepted.client_hello().server_name().map(str::to_owned)),
        Ok(None) => Err(None),
        Err((e, _)) => Err(Some(HelloError::NotTls(e.to_string()))),
    }
}

async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Vec<u8>, Option<String>), HelloError> {
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        if crate::probe(&[&seen[..], &chunk[..n]].concat()) == crate::TlsProbe::NotTls {
            return Err(HelloError::NotTls(
                "the stream does not start with a TLS handshake record".into(),
            ));
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let mut fed = &chunk[..n];
        while !fed.is_empty() {
            acceptor
                .read_tls(&mut fed)
                .map_err(|e| HelloError::NotTls(e.to_string()))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((seen, sni));
            }
            Ok(None) => continue,
            Err((e, _alert)) => return Err(HelloError::NotTls(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello from rustls for `name`, as the bytes on the wire.
    fn hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name.to_owned().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Splits the first record's payload into records of at most `size` bytes.
    fn fragment(bytes: &[u8], size: usize) -> Vec<u8> {
        let (header, payload) = bytes.split_at(5);
        let mut out = Vec::new();
        for chunk in payload.chunks(size) {
            out.extend_from_slice(&header[..3]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A reader that hands out `step` bytes at a time.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            let head: Vec<u8> = self.0.drain(..n).collect();
            buf.put_slice(&head);
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn reads_sni_whole_trickled_and_fragmented() {
        let t = Duration::from_secs(1);
        let whole = hello("api.example.com");
        for (bytes, step) in [
            (whole.clone(), 4096),
            (whole.clone(), 1),
            (fragment(&whole, 7), 3),
        ] {
            let mut r = Trickle(bytes.clone(), step);
            let (seen, sni) = read_client_hello(&mut r, t).await.unwrap();
            assert_eq!(sni.as_deref(), Some("api.example.com"));
            assert_eq!(seen, bytes, "the bytes read are forwarded unchanged");
        }
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors_not_panics() {
        let t = Duration::from_secs(1);
        let whole = hello("a.example");
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0u8; 64],
            vec![22, 3, 1, 0xff, 0xff, 1, 2, 3],
            whole[..whole.len() / 2].to_vec(),
            vec![22, 3, 3, 0, 4, 1, 0, 0, 0],
        ];
        for bytes in cases {
            let mut r = Trickle(bytes.clone(), 5);
            assert!(read_client_hello(&mut r, t).await.is_err(), "{bytes:?}");
        }
        // The synchronous parser (the fuzz target's entry) agrees.
        assert_eq!(
            parse_client_hello(&whole).unwrap().as_deref(),
            Some("a.example")
        );
        assert!(matches!(parse_client_hello(&whole[..10]), Err(None)));
        assert!(matches!(parse_client_hello(b"GET /"), Err(Some(_))));
        // Pseudo-random garbage, many shapes.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 1..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut r = Trickle(bytes, 3);
            let _ = read_client_hello(&mut r, t).await;
        }
    }
}

#[cfg(test)]
mod mutation {
    //! A stable-toolchain stand-in for the cargo-fuzz target: 20,000 deterministic
    //! mutations of a real ClientHello (bit flips, truncations, length-field edits,
    //! splices). None may panic.

    use super::parse_client_hello;
    use std::sync::Arc;

    #[test]
    fn mutated_hellos_never_panic() {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            "fuzz.example".to_owned().try_into().unwrap(),
        )
        .unwrap();
        let mut base = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut base).unwrap();
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % m.len();
                match next() % 4 {
                    0 => m[i] ^= 1 << (next() % 8),
                    1 => m.truncate(i.max(1)),
                    2 => m[i] = next() as u8,
                    _ => {
                        let j = (next() as usize) % base.len();
                        m.splice(i..i, base[j..].iter().take(16).copied());
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            let _ = parse_client_hello(&m);
        }
    }
}
