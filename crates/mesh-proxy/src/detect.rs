//! Protocol detection: read a connection's first bytes (with a deadline) and decide how to
//! proxy it. The bytes read are replayed to whoever handles the connection ([`Prefixed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (gRPC).
    Http2,
    /// A TLS ClientHello: not ours to read (the app's own TLS, or mesh TLS once it is on).
    Tls,
    /// Anything else, server-speaks-first ports and detection timeouts: bytes pass untouched.
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Decides from the bytes so far; `None`: need more.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // HTTP/1: a known method, then a space. (`PRI` diverged from the preface above.)
    let word_end = buf.iter().position(|&b| b == b' ');
    let word = &buf[..word_end.unwrap_or(buf.len())];
    let could_be = METHODS
        .iter()
        .any(|m| m.as_bytes().starts_with(word) || m.as_bytes() == word);
    match (word_end, could_be) {
        (_, false) => Some(Protocol::Opaque),
        (Some(_), true) if METHODS.iter().any(|m| m.as_bytes() == word) => Some(Protocol::Http1),
        (Some(_), true) => Some(Protocol::Opaque),
        (None, true) => None,
    }
}

/// Reads until [`classify`] decides, the peer stops sending, or `timeout` passes (then opaque).
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    timeout: Duration,
) -> io::Result<(Protocol, Vec<u8>)> {
    let mut buf = Vec::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = classify(&buf) {
            return Ok((p, buf));
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) => return Ok((Protocol::Opaque, buf)),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// An I/O object that first yields bytes already read from it.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Prefixed<T> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        use Protocol::*;
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Http1)),
            (b"POST /x", Some(Http1)),
            (b"CONNECT h:443", Some(Http1)),
            (b"GE", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http2)),
            (b"PRI * HTTP/2", None),
            (b"\x16\x03\x01\x02\x00", Some(Tls)),
            (b"\x16", None),
            (b"SSH-2.0-OpenSSH\r\n", Some(Opaque)),
            (b"GETX / HTTP/1.1", Some(Opaque)),
            (b"\x00\x00\x00\x08", Some(Opaque)),
            (b"*1\r\n$4\r\nPING\r\n", Some(Opaque)),
        ] {
            assert_eq!(
                classify(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_into_opaque_and_bytes_are_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let (p, buf) = detect(&mut server, Duration::from_secs(10)).await.unwrap();
        assert_eq!((p, buf.len()), (Protocol::Opaque, 0));
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (p, buf) = detect(&mut server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut replay = Prefixed::new(buf, server);
        let mut out = vec![0; 16];
        replay.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"GET / HTTP/1.1\r\n");
    }
}
