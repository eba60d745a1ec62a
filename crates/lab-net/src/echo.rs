//! Echo backends: every reply is the backend's name, so a test can tell which backend answered.
//!
//! TCP: a client whose first line is an HTTP/1.x request line gets `HTTP/1.1 200` with body
//! `<reply>\n` and header `x-echo-name: <reply>` (keep-alive honoured); any other client gets
//! `<reply>\n` after its first line (or EOF). UDP: every datagram gets `<reply>\n`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Longest request line or header line accepted, so a client cannot make us buffer without end.
const MAX_LINE: usize = 8 * 1024;
/// Most headers accepted in one HTTP request.
const MAX_HEADERS: usize = 100;

/// Serves on all listeners until the returned future is dropped (which stops every task) or a
/// UDP socket fails.
pub async fn serve(reply: &str, tcp: Vec<TcpListener>, udp: Vec<UdpSocket>) -> io::Result<()> {
    let reply: Arc<str> = reply.into();
    let mut tasks = JoinSet::new();
    for listener in tcp {
        tasks.spawn(serve_tcp(reply.clone(), listener));
    }
    for socket in udp {
        tasks.spawn(serve_udp(reply.clone(), socket));
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    Ok(())
}

async fn serve_tcp(reply: Arc<str>, listener: TcpListener) -> io::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let reply = reply.clone();
                    conns.spawn(async move {
                        if let Err(e) = handle_tcp(&reply, stream).await {
                            tracing::debug!(%peer, error = %e, "echo connection ended with an error");
                        }
                    });
                }
                // Per-connection failures (aborted handshakes, fd limits) must not stop the server.
                Err(e) => {
                    tracing::warn!(error = %e, "echo accept failed");
                    tokio::task::yield_now().await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_udp(reply: Arc<str>, socket: UdpSocket) -> io::Result<()> {
    let answer = format!("{reply}\n");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (_, peer) = socket.recv_from(&mut buf).await?;
        if let Err(e) = socket.send_to(answer.as_bytes(), peer).await {
            tracing::debug!(%peer, error = %e, "echo udp reply failed");
        }
    }
}

async fn handle_tcp(reply: &str, stream: TcpStream) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut first = true;
    loop {
        let Some(line) = read_line(&mut reader).await? else {
            if first {
                // EOF before any newline: still answer, as the line protocol promises.
                write.write_all(format!("{reply}\n").as_bytes()).await?;
            }
            break;
        };
        let Some(request) = RequestLine::parse(&line) else {
            if first {
                write.write_all(format!("{reply}\n").as_bytes()).await?;
            }
            break;
        };
        first = false;
        let head = read_headers(&mut reader).await?;
        let keep_alive = !head.close && request.http11;
        if head.chunked {
            // Bodies we cannot frame: answer, then close.
            write_response(&mut write, reply, &request, false).await?;
            break;
        }
        if head.content_length > 0 {
            let mut body = (&mut reader).take(head.content_length);
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        }
        write_response(&mut write, reply, &request, keep_alive).await?;
        if !keep_alive {
            break;
        }
    }
    write.shutdown().await
}

async fn write_response(
    write: &mut (impl AsyncWriteExt + Unpin),
    reply: &str,
    request: &RequestLine,
    keep_alive: bool,
) -> io::Result<()> {
    let body = format!("{reply}\n");
    let header_name: String = reply
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-echo-name: {header_name}\r\n\
         content-length: {}\r\nconnection: {connection}\r\n\r\n",
        body.len()
    );
    if !request.head {
        out.push_str(&body);
    }
    write.write_all(out.as_bytes()).await?;
    write.flush().await
}

/// The parts of an HTTP/1.x request line the echo needs.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine {
    head: bool,
    http11: bool,
}

impl RequestLine {
    /// `METHOD SP target SP HTTP/1.x`; anything else is the line protocol.
    fn parse(line: &[u8]) -> Option<RequestLine> {
        let line = std::str::from_utf8(line)
            .ok()?
            .trim_end_matches(['\r', '\n']);
        let mut parts = line.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
            || target.is_empty()
        {
            return None;
        }
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            _ => return None,
        };
        Some(RequestLine {
            head: method == "HEAD",
            http11,
        })
    }
}

#[derive(Debug, Default)]
struct Head {
    content_length: u64,
    chunked: bool,
    close: bool,
}

async fn read_headers(reader: &mut (impl AsyncBufRead + Unpin)) -> io::Result<Head> {
    let mut head = Head::default();
    for _ in 0..=MAX_HEADERS {
        let Some(line) = read_line(reader).await? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = value.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad content-length")
                })?;
            }
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many headers",
    ))
}

/// One line including its `\n`; `None` at EOF with nothing read. Fails past [`MAX_LINE`].
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            return Ok(Some(line));
        }
        if line.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

/// An echo server running on its own thread and runtime; dropping it stops it and closes its
/// sockets.
#[derive(Debug)]
pub struct EchoServer {
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts serving on already bound sockets (which may belong to another namespace).
    pub fn spawn(
        reply: &str,
        tcp: Vec<std::net::TcpListener>,
        udp: Vec<std::net::UdpSocket>,
    ) -> io::Result<EchoServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let tcp_addrs = tcp
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<_>>()?;
        let udp_addrs = udp
            .iter()
            .map(|s| s.local_addr())
            .collect::<io::Result<_>>()?;
        let (tcp, udp) = {
            let _guard = runtime.enter();
            let tcp = tcp
                .into_iter()
                .map(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                })
                .collect::<io::Result<Vec<_>>>()?;
            let udp = udp
                .into_iter()
                .map(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                })
                .collect::<io::Result<Vec<_>>>()?;
            (tcp, udp)
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let reply = reply.to_owned();
        let thread = std::thread::Builder::new()
            .name("lab-echo".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        result = serve(&reply, tcp, udp) => if let Err(e) = result {
                            tracing::warn!(reply, error = %e, "echo server stopped");
                        },
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(EchoServer {
            tcp: tcp_addrs,
            udp: udp_addrs,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Bound TCP addresses (useful with port 0).
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// Bound UDP addresses (useful with port 0).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_detection() {
        let get = RequestLine::parse(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(
            get,
            RequestLine {
                head: false,
                http11: true
            }
        );
        assert!(RequestLine::parse(b"HEAD /x HTTP/1.0\n").unwrap().head);
        for line in [
            &b"hello\n"[..],
            b"GET /\n",
            b"get / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET  HTTP/1.1\r\n",
            b"\xff\xfe\n",
            b"",
        ] {
            assert_eq!(RequestLine::parse(line), None, "{line:?}");
        }
    }
}
