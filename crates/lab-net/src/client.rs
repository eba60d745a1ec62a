//! Blocking clients for the echo protocol, run in whatever namespace the calling thread is in.
//!
//! Timeouts only bound how long a broken path can hang a test; they are not assertions.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Longest wait for a TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for any read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-attempt wait for a UDP reply; UDP is retried [`UDP_ATTEMPTS`] times.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(2);
pub const UDP_ATTEMPTS: usize = 3;
/// Largest reply read, so a misbehaving server cannot exhaust memory.
const MAX_REPLY: u64 = 1024 * 1024;

/// Sends one line, returns the reply with its trailing newline trimmed.
pub fn tcp_request(addr: SocketAddr) -> io::Result<String> {
    let mut stream = connect(addr)?;
    stream.write_all(b"hello\n")?;
    let reply = read_to_end(&mut stream)?;
    Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

/// Sends `line` (a newline is added), returns the reply with its trailing newline trimmed
/// (empty when the server closed without answering).
pub fn line_request(addr: SocketAddr, line: &str) -> io::Result<String> {
    let mut stream = connect(addr)?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let reply = read_to_end(&mut stream)?;
    Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

/// [`tcp_request`] with every wait bounded by `within` (connect, then each read and write):
/// for polling a path that may be broken, where a connect whose SYN was lost should be
/// abandoned and tried afresh rather than wait for the kernel's 1 s SYN retransmission.
pub fn tcp_request_within(addr: SocketAddr, within: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, within)?;
    stream.set_read_timeout(Some(within))?;
    stream.set_write_timeout(Some(within))?;
    stream.write_all(b"hello\n")?;
    let reply = read_to_end(&mut stream)?;
    Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

/// Sends one datagram from a fresh socket (so a fresh conntrack entry), returns the trimmed reply.
pub fn udp_request(addr: SocketAddr) -> io::Result<String> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(UDP_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = io::Error::from(io::ErrorKind::TimedOut);
    for _ in 0..UDP_ATTEMPTS {
        socket.send(b"hello\n")?;
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Connection: close`; any status is returned.
pub fn http_request(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid request path {path:?}: must start with '/' and have no whitespace"),
        ));
    }
    let mut stream = connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: ghostwire-lab\r\nconnection: close\r\n\r\n"
    )?;
    let raw = read_to_end(&mut stream)?;
    parse_response(&raw)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut out)?;
    Ok(out)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a whole response read until EOF (content-length, chunked or close-delimited body).
pub fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of HTTP headers in reply"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| invalid(format!("bad status line {status_line:?}")))?,
        _ => return Err(invalid(format!("bad status line {status_line:?}"))),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body =
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            decode_chunked(rest)?
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
            rest.get(..len)
                .ok_or_else(|| invalid(format!("body shorter than content-length {len}")))?
                .to_vec()
        } else {
            rest.to_vec()
        };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Echo-Name: a\r\n\r\nab\nzz")
                .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ab\n"));
        assert_eq!(r.header("x-echo-name"), Some("a"));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1;x=y\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "abc"));
    }

    #[test]
    fn rejects_garbage_without_panic() {
        for raw in [
            &b""[..],
            b"hello\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nab",
        ] {
            assert!(parse_response(raw).is_err(), "{raw:?}");
        }
    }
}
