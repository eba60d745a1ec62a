//! The proxy's own HTTP/1.1 client, for the common request: HTTP/1.1, no upgrade, a body of
//! known length up to [`MAX_BODY`] (most often none), on a kept-alive upstream connection.
//!
//! Why not hyper's client here: it drives every connection from a task of its own, so each
//! request crossed a channel to that task, a oneshot back, and a body channel, and woke two
//! tasks per hop. Here the request's own future writes the request and reads the response head
//! from the socket, and the response body reads straight from it, so a request costs one task's
//! polls and the fewest system calls. Upgrades, bodies of unknown length (full-duplex streams)
//! and HTTP/1.0 still go through hyper ([`crate::pool`]).

use crate::pool::{Body, BoxError, Pool, Target, Upstream};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWriteExt};

/// The largest request body this client takes. It is read whole before the request is sent
/// (so a stale connection can be retried), and a body this small fits the socket buffers, so
/// a server that answers early without reading it cannot stall the write.
pub const MAX_BODY: u64 = 64 * 1024;
/// The largest response head, and the most header fields, accepted from upstream.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// How much room each read from upstream asks for.
const READ_CHUNK: usize = 8 * 1024;
/// The longest chunk-size line of a chunked body (extensions included).
const MAX_CHUNK_LINE: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the request body: {0}")]
    RequestBody(#[source] crate::http::CollectError),
    /// The connection failed or closed before any byte of a response: on a reused connection,
    /// the server most likely closed it while idle.
    #[error("the connection closed before a response: {0}")]
    NoResponse(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("malformed response from upstream: {0}")]
    Malformed(String),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

impl Error {
    fn malformed(what: impl std::fmt::Display) -> Error {
        Error::Malformed(what.to_string())
    }
}

/// Whether `req` can go through this client.
pub fn eligible(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && http_body::Body::size_hint(req.body())
            .exact()
            .is_some_and(|n| n <= MAX_BODY)
}

/// The request's bytes on the wire, its body read whole first. `Content-Length` is written
/// from the body itself, so a layer that rewrote the body cannot leave a stale one.
pub fn encode(req: Request<Body>) -> impl Future<Output = Result<Vec<u8>, Error>> + Send {
    let (parts, body) = req.into_parts();
    // The usual request has no body: its bytes are ready now, and the future holds no body.
    let ready = body.is_end_stream().then(|| encode_parts(&parts, &[]));
    async move {
        if let Some(wire) = ready {
            return Ok(wire);
        }
        let body = crate::http::collect(body, MAX_BODY as usize)
            .await
            .map_err(Error::RequestBody)?;
        Ok(encode_parts(&parts, &body))
    }
}

fn encode_parts(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    // Writes to a Vec cannot fail.
    let _ = write!(out, "{} {} HTTP/1.1\r\n", parts.method, parts.uri);
    let had_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A GET without a body says nothing of one; a POST with an empty body says 0 (RFC 9110
    // §8.6), as does any request that said a length before.
    let bodiless = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !body.is_empty() || had_length || !bodiless {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A kept-alive upstream connection and what was read from it but not used yet.
pub struct Conn {
    io: Upstream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(io: Upstream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry another request: nothing from the server since
    /// the last response, neither bytes nor a close nor an error.
    ///
    /// One read that must not wait: it answers from the runtime's readiness, without a system
    /// call, when nothing arrived since the last read drained the socket. Over TLS it goes
    /// through the TLS layer, which takes session tickets in and reports a close_notify as
    /// the end of the stream.
    pub fn reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut one = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut one);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

/// Sends `wire` (from [`encode`]) on `conn` and reads the response head. The body reads from
/// the connection as it is polled; once read whole, a kept-alive connection goes back to
/// `pool` for `target`.
pub async fn exchange(
    pool: &Arc<Pool>,
    target: &Target,
    mut conn: Conn,
    wire: &[u8],
    method: &Method,
) -> Result<Response<Body>, Error> {
    let sent = async {
        conn.io.write_all(wire).await?;
        conn.io.flush().await
    };
    sent.await.map_err(Error::NoResponse)?;
    loop {
        let Some(head) = read_head(&mut conn).await? else {
            continue;
        };
        let (parts, framing, keep_alive) = head.into_response(method)?;
        let home = keep_alive.then(|| (pool.clone(), target.clone()));
        let mut body = ResponseBody {
            conn: Some(conn),
            framing,
            home,
        };
        if body.framing.done() {
            body.finish();
        }
        return Ok(Response::from_parts(parts, body.boxed()));
    }
}

/// A parsed response head, its field values sharing the bytes read.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Reads until a whole head is in the buffer and takes it; `None` for an interim (1xx)
/// response, which is dropped (the request was sent whole already).
async fn read_head(conn: &mut Conn) -> Result<Option<Head>, Error> {
    loop {
        if let Some(len) = head_len(&conn.buf)? {
            let bytes = conn.buf.split_to(len).freeze();
            return parse_head(&bytes);
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        let first = conn.buf.is_empty();
        conn.buf.reserve(READ_CHUNK);
        let n = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
        })
        .await;
        match n {
            Ok(0) if first => {
                return Err(Error::NoResponse(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(Error::Read(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if first => return Err(Error::NoResponse(e)),
            Err(e) => return Err(Error::Read(e)),
        }
    }
}

/// The length of the complete head at the start of `buf`, if it is all there.
fn head_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Response::new(&mut fields).parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(Error::malformed(e)),
    }
}

/// Parses a complete head (checked by [`head_len`]); `None` for a 1xx other than 101.
fn parse_head(bytes: &Bytes) -> Result<Option<Head>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    r.parse(bytes).map_err(Error::malformed)?;
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Error::malformed("no valid status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(None);
    }
    let version = match r.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(Error::malformed)?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice_ref(f.value)).map_err(Error::malformed)?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// Whether a comma-separated header's values hold `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Head {
    /// The response's parts, how its body is framed (RFC 9112 §6.3) and whether the
    /// connection can carry another request after it.
    fn into_response(
        self,
        method: &Method,
    ) -> Result<(http::response::Parts, Framing, bool), Error> {
        if self.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::malformed(
                "101 Switching Protocols to a request without Upgrade",
            ));
        }
        let h = &self.headers;
        let mut keep_alive = match self.version {
            Version::HTTP_10 => has_token(h, &header::CONNECTION, "keep-alive"),
            _ => !has_token(h, &header::CONNECTION, "close"),
        };
        let framing = if method == Method::HEAD
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if let Some(te) = h.get_all(header::TRANSFER_ENCODING).iter().next_back() {
            // With both, Transfer-Encoding wins and the connection ends after (§6.3 item 3).
            if h.contains_key(header::CONTENT_LENGTH) {
                keep_alive = false;
            }
            let last = te.to_str().ok().and_then(|v| v.rsplit(',').next());
            if last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")) {
                Framing::Chunked(Chunked::Size)
            } else {
                keep_alive = false;
                Framing::Close
            }
        } else if h.contains_key(header::CONTENT_LENGTH) {
            let mut lengths = h.get_all(header::CONTENT_LENGTH).iter().flat_map(|v| {
                v.to_str()
                    .unwrap_or("x")
                    .split(',')
                    .map(|n| n.trim().parse::<u64>().ok())
            });
            let first = lengths.next().flatten();
            match first {
                Some(n) if lengths.all(|m| m == Some(n)) => Framing::Length(n),
                _ => return Err(Error::malformed("an invalid Content-Length")),
            }
        } else {
            keep_alive = false;
            Framing::Close
        };
        let mut parts = Response::new(()).into_parts().0;
        parts.status = self.status;
        parts.version = Version::HTTP_11;
        parts.headers = self.headers;
        Ok((parts, framing, keep_alive))
    }
}

/// How the response body ends.
#[derive(Debug)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes the connection.
    Close,
    /// Read whole.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, PartialEq)]
enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What the decoder made of the buffer.
#[derive(Debug)]
enum Decoded {
    Frame(Frame<Bytes>),
    /// It needs more bytes.
    More,
    End,
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl Framing {
    fn done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// The next frame from `buf`, consuming what it uses.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Decoded::End);
                }
                Framing::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = (*n).min(buf.len() as u64);
                    *n -= take;
                    return Ok(Decoded::Frame(Frame::data(
                        buf.split_to(take as usize).freeze(),
                    )));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Frame(Frame::data(buf.split().freeze())));
                }
                Framing::Chunked(c) => match c {
                    Chunked::Size => {
                        let Some(i) = find_crlf(buf) else {
                            if buf.len() > MAX_CHUNK_LINE {
                                return Err(Error::malformed("a chunk-size line too long"));
                            }
                            return Ok(Decoded::More);
                        };
                        let line = &buf[..i];
                        let digits = line
                            .iter()
                            .position(|b| !b.is_ascii_hexdigit())
                            .unwrap_or(line.len());
                        let rest = &line[digits..];
                        if digits == 0
                            || digits > 15
                            || !(rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t'))
                        {
                            return Err(Error::malformed("a bad chunk size"));
                        }
                        let size = std::str::from_utf8(&line[..digits])
                            .ok()
                            .and_then(|d| u64::from_str_radix(d, 16).ok())
                            .ok_or_else(|| Error::malformed("a bad chunk size"))?;
                        let _ = buf.split_to(i + 2);
                        *c = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(n) => {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let take = (*n).min(buf.len() as u64);
                        *n -= take;
                        if *n == 0 {
                            *c = Chunked::DataEnd;
                        }
                        return Ok(Decoded::Frame(Frame::data(
                            buf.split_to(take as usize).freeze(),
                        )));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(Error::malformed("a chunk without its CRLF"));
                        }
                        let _ = buf.split_to(2);
                        *c = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        if buf.starts_with(b"\r\n") {
                            let _ = buf.split_to(2);
                            *self = Framing::Done;
                            return Ok(Decoded::End);
                        }
                        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let n = match httparse::parse_headers(buf, &mut fields) {
                            Ok(httparse::Status::Complete((n, _))) => n,
                            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                                return Ok(Decoded::More);
                            }
                            Ok(httparse::Status::Partial) => return Err(Error::HeadTooLarge),
                            Err(e) => return Err(Error::malformed(e)),
                        };
                        let bytes = buf.split_to(n).freeze();
                        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let Ok(httparse::Status::Complete((_, parsed))) =
                            httparse::parse_headers(&bytes, &mut fields)
                        else {
                            return Err(Error::malformed("trailers"));
                        };
                        let mut trailers = HeaderMap::new();
                        for f in parsed {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(Error::malformed)?;
                            let value = HeaderValue::from_maybe_shared(bytes.slice_ref(f.value))
                                .map_err(Error::malformed)?;
                            trailers.append(name, value);
                        }
                        *self = Framing::Done;
                        return Ok(Decoded::Frame(Frame::trailers(trailers)));
                    }
                },
            }
        }
    }
}

/// A response body read from its connection as it is polled.
struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    /// Where the connection goes back once the body is read whole (kept-alive responses).
    home: Option<(Arc<Pool>, Target)>,
}

impl ResponseBody {
    /// The body is read whole: the connection goes back to the pool (when kept alive and
    /// nothing unasked-for follows), else it is closed.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some((pool, target))) = (self.conn.take(), self.home.take())
            && conn.buf.is_empty()
        {
            pool.h1_put(target, conn);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut conn.buf) {
                Ok(Decoded::Frame(f)) => {
                    if this.framing.done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            conn.buf.reserve(READ_CHUNK);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            ));
            match read {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(
                        "the upstream closed the connection in the middle of the body".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<(http::response::Parts, Framing, bool), Error> {
        let bytes = Bytes::copy_from_slice(raw.as_bytes());
        assert_eq!(head_len(&bytes).unwrap(), Some(bytes.len()), "{raw:?}");
        parse_head(&bytes)?
            .expect("a final response")
            .into_response(&method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (p, f, keep) = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(p.headers["x-a"], "b");
        assert!(matches!(f, Framing::Length(5)) && keep);
        let (_, f, keep) =
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD).unwrap();
        assert!(matches!(f, Framing::Length(0)) && keep);
        let (_, f, keep) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(matches!(f, Framing::Chunked(Chunked::Size)) && keep);
        // Both lengths: chunked wins and the connection is not reused.
        let (_, f, keep) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(matches!(f, Framing::Chunked(_)) && !keep);
        let (_, f, keep) = head("HTTP/1.1 200 OK\r\n\r\n", Method::GET).unwrap();
        assert!(matches!(f, Framing::Close) && !keep);
        let (_, f, keep) = head("HTTP/1.1 204 No Content\r\n\r\n", Method::GET).unwrap();
        assert!(matches!(f, Framing::Length(0)) && keep);
        let (_, _, keep) = head(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(!keep);
        let (_, _, keep) =
            head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET).unwrap();
        assert!(!keep, "HTTP/1.0 closes unless it says keep-alive");
        let (_, f, _) = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(matches!(f, Framing::Length(7)));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, Method::GET), Err(Error::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn interim_responses_are_skipped_and_garbage_refused() {
        let b = Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(parse_head(&b).unwrap().is_none());
        assert!(matches!(
            head_len(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(Error::Malformed(_))
        ));
        assert_eq!(head_len(b"HTTP/1.1 200 OK\r\nA: b\r\n").unwrap(), None);
    }

    /// Feeds `wire` one byte at a time and collects what the decoder gives.
    fn decode_bytewise(mut f: Framing, wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut buf = BytesMut::new();
        let mut input = wire.iter();
        loop {
            match f.decode(&mut buf)? {
                Decoded::Frame(fr) => match fr.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(fr) => trailers = fr.into_trailers().ok(),
                },
                Decoded::End => return Ok((data, trailers)),
                Decoded::More => match input.next() {
                    Some(b) => buf.extend_from_slice(&[*b]),
                    None => return Err(Error::malformed("ran out")),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_from_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let (data, trailers) = decode_bytewise(Framing::Chunked(Chunked::Size), wire).unwrap();
        assert_eq!(data, b"hello, world");
        assert!(trailers.is_none());
        let wire = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n";
        let (data, trailers) = decode_bytewise(Framing::Chunked(Chunked::Size), wire).unwrap();
        assert_eq!(data, b"abc");
        let t = trailers.expect("trailers");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-t"], "1");
        let (data, _) = decode_bytewise(Framing::Length(4), b"abcd").unwrap();
        assert_eq!(data, b"abcd");
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcXY",
            b"\r\n",
            b"1ffffffffffffffff\r\n",
        ] {
            assert!(
                decode_bytewise(Framing::Chunked(Chunked::Size), bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn requests_say_their_length_only_where_they_must() {
        let enc = |method: Method, body: &[u8], cl: Option<&str>| {
            let mut b = Request::builder()
                .method(method)
                .uri("/hello?x=1")
                .header("host", "app-b");
            if let Some(cl) = cl {
                b = b.header("content-length", cl);
            }
            let (parts, _) = b.body(()).unwrap().into_parts();
            String::from_utf8(encode_parts(&parts, body)).unwrap()
        };
        assert_eq!(
            enc(Method::GET, b"", None),
            "GET /hello?x=1 HTTP/1.1\r\nhost: app-b\r\n\r\n"
        );
        assert_eq!(
            enc(Method::POST, b"", None),
            "POST /hello?x=1 HTTP/1.1\r\nhost: app-b\r\ncontent-length: 0\r\n\r\n"
        );
        // The length is the body's, whatever the header said.
        assert_eq!(
            enc(Method::PUT, b"abc", Some("99")),
            "PUT /hello?x=1 HTTP/1.1\r\nhost: app-b\r\ncontent-length: 3\r\n\r\nabc"
        );
    }

    /// A scripted upstream on loopback: per request path, the bytes it answers with. `/bye`
    /// closes the connection after its answer, without saying so; `/drop` closes it without
    /// answering when the connection has served a request before (a server that closed an
    /// idle connection just as the request came). Counts the connections it accepts.
    async fn upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.parse().unwrap());
                        while buf.len() < end + 4 + length {
                            let mut chunk = [0u8; 4096];
                            let n = s.read(&mut chunk).await.unwrap();
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body = buf[end + 4..end + 4 + length].to_vec();
                        buf.drain(..end + 4 + length);
                        let path = head.split(' ').nth(1).unwrap().to_string();
                        let answer: Vec<u8> = match path.as_str() {
                            "/drop" if served > 0 => return,
                            "/len" | "/bye" | "/drop" => {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()
                            }
                            "/echo" => {
                                let mut a = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                    body.len()
                                )
                                .into_bytes();
                                a.extend_from_slice(&body);
                                a
                            }
                            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n".to_vec(),
                            "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                            "/eof" => b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(),
                            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        };
                        // A HEAD's answer is the head alone.
                        let answer = match head.starts_with("HEAD ") {
                            true => {
                                let end = answer.windows(4).position(|w| w == b"\r\n\r\n");
                                answer[..end.unwrap() + 4].to_vec()
                            }
                            false => answer,
                        };
                        use tokio::io::AsyncWriteExt;
                        s.write_all(&answer).await.unwrap();
                        served += 1;
                        if path == "/bye" || path == "/eof" {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn call(
        pool: &Arc<Pool>,
        addr: std::net::SocketAddr,
        method: Method,
        path: &str,
        body: &'static str,
    ) -> Result<(StatusCode, Vec<u8>, Option<HeaderMap>), crate::pool::SendError> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "upstream")
            .body(
                http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
                    .map_err(|e| -> BoxError { match e {} })
                    .boxed(),
            )
            .unwrap();
        assert!(eligible(&req));
        let resp = pool.send(&Target::plain(addr), false, false, req).await?;
        let status = resp.status();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn talks_to_a_real_socket_and_reuses_connections() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = upstream().await;
        let pool = Arc::new(Pool::new(std::time::Duration::from_secs(5), 8, None));
        for _ in 0..3 {
            let (status, body, _) = call(&pool, addr, Method::GET, "/len", "").await.unwrap();
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
        let (_, body, trailers) = call(&pool, addr, Method::GET, "/chunked", "")
            .await
            .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.expect("trailers")["x-t"], "1");
        let (_, body, _) = call(&pool, addr, Method::POST, "/echo", "ping")
            .await
            .unwrap();
        assert_eq!(body, b"ping");
        let (status, body, _) = call(&pool, addr, Method::GET, "/continue", "")
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        let (status, body, _) = call(&pool, addr, Method::GET, "/empty", "").await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        let (status, _, _) = call(&pool, addr, Method::HEAD, "/len", "").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "still the one connection"
        );
        // A body until the server closes: read whole, and that connection is not reused.
        let (_, body, _) = call(&pool, addr, Method::GET, "/eof", "").await.unwrap();
        assert_eq!(body, b"until the end");
        call(&pool, addr, Method::GET, "/len", "").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_used_again() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = upstream().await;
        let pool = Arc::new(Pool::new(std::time::Duration::from_secs(5), 8, None));
        call(&pool, addr, Method::GET, "/bye", "").await.unwrap();
        // Let the server's FIN arrive: the idle check then sees the close before the next
        // request.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (_, body, _) = call(&pool, addr, Method::POST, "/echo", "a post")
            .await
            .unwrap();
        assert_eq!(
            body, b"a post",
            "a POST, never retried, still went out on a live connection"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The close comes only once the request is on its way: an idempotent request is sent
        // again on a new connection, a POST is not.
        let (status, _, _) = call(&pool, addr, Method::GET, "/drop", "").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let err = call(&pool, addr, Method::POST, "/drop", "")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::pool::SendError::H1 {
                    source: Error::NoResponse(_),
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A TLS server closing an idle connection sends close_notify before its FIN: bytes on
    /// the socket, which only the TLS layer can tell for a close.
    #[tokio::test]
    async fn an_idle_tls_connection_that_the_server_closed_is_not_reused() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        use tokio::io::AsyncWriteExt;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closing) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let _ = closing.await;
            tls.shutdown().await.unwrap();
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        let mut conn = Conn::new(Box::new(tls));
        // TLS 1.3 session tickets come after the handshake: the TLS layer takes them in.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            conn.reusable(),
            "an idle connection, nothing from the server"
        );
        close.send(()).unwrap();
        server.await.unwrap();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while conn.reusable() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert!(seen.await.is_ok(), "the close_notify was never seen");
    }
}
