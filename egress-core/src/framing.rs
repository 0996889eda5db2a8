//! `FramingGuard`: sees the HTTP/1.1 request heads of a connection as they arrive, to find
//! what the HTTP parser resolves silently.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is framed by its chunks and
//! the length is dropped by hyper before any layer sees the request (RFC 9112 section 6.3
//! allows that, and hyper then closes the connection after the answer). Two parsers can
//! read such a request differently, which is how requests are smuggled, so the gateway
//! refuses it instead: this wrapper of the client connection's byte stream follows the
//! framing of each request (heads, `Content-Length` bodies, chunks) and marks the first
//! request whose head carries both; [`ConnectionFraming::take`] tells the request's service
//! so, and [`DestinationLayer`](crate::destination::DestinationLayer) answers it 400 with
//! `Connection: close`.
//!
//! The guard never changes a byte and never decides framing for hyper: when it cannot
//! follow the stream (HTTP/2, an upgrade or `CONNECT`, anything it cannot parse) it stops
//! looking, and hyper's own checks apply as before.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request head followed; longer ones are left to hyper's limit.
const MAX_HEAD: usize = 128 * 1024;

/// A request whose head had both `Content-Length` and `Transfer-Encoding`.
///
/// - Inserted by: the server, from [`ConnectionFraming`]. - Read by: `DestinationLayer`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AmbiguousFraming;

/// What the guard of one connection found, shared with the connection's service.
#[derive(Debug, Default)]
pub struct ConnectionFraming {
    /// 1 + the index of the first request with conflicting framing; 0: none.
    conflict: AtomicU64,
    /// Requests handed to the service so far.
    seen: AtomicU64,
}

impl ConnectionFraming {
    /// Called once per request, in order: whether this request's head was ambiguous.
    pub fn take(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        self.conflict.load(Ordering::Acquire) == n
    }
}

#[derive(Debug)]
enum State {
    /// Reading a head; its bytes so far are in `FramingGuard::head`.
    Head,
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    /// Not followed any further.
    Done,
}

/// Follows request framing over the bytes a connection reads; see the module docs.
#[derive(Debug)]
pub struct FramingGuard<IO> {
    io: IO,
    state: State,
    /// A head split across reads (reused: most heads arrive whole and never touch it).
    head: Vec<u8>,
    heads: u64,
    shared: Arc<ConnectionFraming>,
}

impl<IO> FramingGuard<IO> {
    /// Wraps a client connection; the returned handle goes to its service.
    pub fn new(io: IO) -> (Self, Arc<ConnectionFraming>) {
        let shared = Arc::new(ConnectionFraming::default());
        let guard = Self {
            io,
            state: State::Head,
            head: Vec::new(),
            heads: 0,
            shared: shared.clone(),
        };
        (guard, shared)
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Head => {
                    // Leading empty lines before a request line are tolerated (RFC 9112 2.2).
                    if self.head.is_empty() {
                        let skip = bytes.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                        bytes = &bytes[skip.count()..];
                        if bytes.is_empty() {
                            return;
                        }
                        // The common case: the whole head in this read, parsed in place.
                        if let Some(end) = find_end(bytes, 0) {
                            self.state = self.after_head(&bytes[..end]);
                            bytes = &bytes[end..];
                            continue;
                        }
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(bytes);
                    match find_end(&self.head, before) {
                        None if self.head.len() > MAX_HEAD => self.state = State::Done,
                        None => return,
                        Some(end) => {
                            let used = end - before;
                            let head = std::mem::take(&mut self.head);
                            self.state = self.after_head(&head[..end]);
                            // Keep the allocation for the next split head.
                            self.head = head;
                            self.head.clear();
                            bytes = &bytes[used..];
                        }
                    }
                }
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize(line) => match bytes.iter().position(|b| *b == b'\n') {
                    None if line.len() + bytes.len() > 4096 => self.state = State::Done,
                    None => {
                        line.extend_from_slice(bytes);
                        return;
                    }
                    Some(i) => {
                        line.extend_from_slice(&bytes[..i]);
                        bytes = &bytes[i + 1..];
                        self.state = match chunk_size(line) {
                            Some(0) => State::Trailers(Vec::new()),
                            Some(n) => State::ChunkData(n),
                            None => State::Done,
                        };
                    }
                },
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    // The CRLF after a chunk's data.
                    *left -= 1;
                    bytes = &bytes[1..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match bytes.iter().position(|b| *b == b'\n') {
                    None if line.len() + bytes.len() > MAX_HEAD => self.state = State::Done,
                    None => {
                        line.extend_from_slice(bytes);
                        return;
                    }
                    Some(i) => {
                        let empty = line.iter().chain(&bytes[..i]).all(|b| *b == b'\r');
                        line.clear();
                        bytes = &bytes[i + 1..];
                        if empty {
                            self.state = State::Head;
                        }
                    }
                },
            }
        }
    }

    /// The state after a complete head: its body, or the next head.
    fn after_head(&mut self, head: &[u8]) -> State {
        // Only the names that decide framing are looked for; hyper parses the head itself
        // and refuses what is malformed, so a lean scan of lines is enough here.
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let Some(request_line) = lines.next() else {
            return State::Done;
        };
        self.heads += 1;
        let method = request_line
            .split(|b| *b == b' ')
            .next()
            .unwrap_or_default();
        let http1 = request_line.ends_with(b" HTTP/1.1") || request_line.ends_with(b" HTTP/1.0");
        if !http1 || method == b"CONNECT" || method == b"PRI" {
            return State::Done;
        }
        let mut length: Option<&[u8]> = None;
        let mut chunked = false;
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                return State::Done;
            }
        }
        if chunked && length.is_some() {
            self.shared.conflict.store(self.heads, Ordering::Release);
            // hyper closes the connection after this request: nothing more to follow.
            return State::Done;
        }
        if chunked {
            return State::ChunkSize(Vec::new());
        }
        match length.map(|v| {
            std::str::from_utf8(v.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        }) {
            None | Some(Some(0)) => State::Head,
            Some(Some(n)) => State::Body(n),
            Some(None) => State::Done,
        }
    }
}

/// The end of a head (after `\r\n\r\n`), searching from a little before `from`.
fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    memchr::memmem::find(&buf[start..], b"\r\n\r\n").map(|i| start + i + 4)
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if !matches!(this.state, State::Done) && buf.filled().len() > before {
            this.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflicts(stream: &[u8], split: usize) -> u64 {
        let (mut g, shared) = FramingGuard::new(());
        let split = split.min(stream.len());
        g.feed(&stream[..split]);
        g.feed(&stream[split..]);
        shared.conflict.load(Ordering::Relaxed)
    }

    #[test]
    fn finds_the_request_with_both_lengths_behind_any_framing() {
        let good_cl = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let good_te =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n"
                .as_slice();
        let get = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let bad = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice();
        // A body that looks like a head is not one.
        let inner = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        let decoy = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let decoy = decoy.as_bytes();
        let stream = [good_cl, good_te, decoy, get, bad, get].concat();
        for split in 0..stream.len() {
            assert_eq!(conflicts(&stream, split), 5, "split at {split}");
        }
        let clean = [good_cl, good_te, decoy, get].concat();
        for split in 0..clean.len() {
            assert_eq!(conflicts(&clean, split), 0, "split at {split}");
        }
        // HTTP/2, CONNECT and upgrades are not followed.
        assert_eq!(
            conflicts(
                &[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), bad].concat(),
                0
            ),
            0
        );
        assert_eq!(
            conflicts(
                &[
                    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".as_slice(),
                    bad
                ]
                .concat(),
                0
            ),
            0
        );
    }

    #[test]
    fn the_service_learns_it_for_the_right_request() {
        let shared = ConnectionFraming::default();
        shared.conflict.store(2, Ordering::Relaxed);
        assert!(!shared.take());
        assert!(shared.take());
        assert!(!shared.take());
    }
}
