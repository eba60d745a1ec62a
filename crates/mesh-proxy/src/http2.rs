//! The proxy's HTTP/2 client and server: the `h2` crate, driven directly.
//!
//! Why not hyper's: on HTTP/2 its client hands each request to the connection's task over a
//! channel, spawns a task per request to wait for the response, and sends the response back
//! over a oneshot; its server spawns a task per stream besides the connection's. Here the
//! client's request task opens the stream and awaits the response itself, and the server runs
//! every stream of a connection in the connection's own task ([`serve`]).
//!
//! CONNECT needs nothing of its own: on HTTP/2 a tunnel is a stream whose request and response
//! bodies are the two directions (RFC 9113 §8.5), so it passes through as any streamed request.

use crate::pool::{Body, BoxError, Upstream};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use h2::client::SendRequest;
use http::HeaderValue;
use http::header::{CONTENT_LENGTH, DATE};
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

/// Flow-control windows and buffers, as hyper's client sets them: large enough that a single
/// connection carrying many streams is not held back by WINDOW_UPDATE round trips.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a client may have open at once on one downstream connection (hyper's default).
const MAX_CONCURRENT_STREAMS: u32 = 200;

/// Opens an HTTP/2 connection on `io`; its task runs until the connection ends.
pub async fn handshake(io: Upstream, addr: SocketAddr) -> Result<SendRequest<Bytes>, h2::Error> {
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %addr, "upstream HTTP/2 connection ended");
        }
    });
    Ok(send)
}

/// Sends `req` as a new stream on `send`, which must be ready (`SendRequest::ready`); the
/// future waits for the response head.
pub fn send(
    mut send: SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<impl Future<Output = Result<Response<Body>, h2::Error>> + Send, h2::Error> {
    // The request goes out now, so the future that waits for the response does not hold it.
    let (parts, body) = req.into_parts();
    let eos = body.is_end_stream();
    let (response, stream) = send.send_request(Request::from_parts(parts, ()), eos)?;
    if !eos {
        // A body that may stream for as long as the response does (gRPC client streams).
        tokio::spawn(pipe(body, stream));
    }
    Ok(async move {
        let response = response.await?;
        let (parts, recv) = response.into_parts();
        let body = RecvBody::open(recv, &parts.headers);
        Ok(Response::from_parts(parts, body))
    })
}

/// Serves HTTP/2 on `io` (its preface not read yet) until the client goes or `stop` resolves:
/// each stream's request goes to `handle`, every stream in this one task. After `drain`
/// resolves, or once no stream has been open for `idle`, a GOAWAY refuses new streams and
/// those in flight finish.
pub async fn serve<I, H, F>(
    io: I,
    max_header_list: u32,
    idle: Duration,
    handle: H,
    drain: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<Body>) -> F,
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    tokio::pin!(drain, stop);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(max_header_list)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        c = handshake => match c {
            Ok(c) => c,
            Err(e) => return tracing::debug!(error = %e, "HTTP/2 handshake failed"),
        },
        _ = &mut stop => return,
    };
    let mut streams = FuturesUnordered::new();
    let mut draining = false;
    // Re-armed only when the last stream ends, so a busy connection costs no timer work.
    let mut idle_timer = Box::pin(tokio::time::sleep(idle));
    let mut busy = false;
    // One poll: new streams, then every stream that can move. What those queue wakes this
    // task again, and the next poll's accept writes it out: one write for many responses.
    // (A select over the two would write after each stream.)
    poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !draining && drain.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.graceful_shutdown();
        }
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams.push(answer(req, respond, &handle));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "HTTP/2 connection failed");
                    return Poll::Ready(());
                }
                // Closed, or drained: every stream is done.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        if !streams.is_empty() {
            busy = true;
        } else if !draining {
            if busy {
                busy = false;
                idle_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle);
            }
            if idle_timer.as_mut().poll(cx).is_ready() {
                draining = true;
                conn.graceful_shutdown();
                // The GOAWAY is written, and the connection closed, by the next poll.
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    })
    .await
}

/// One stream: the request to `handle`, its response back. A reset from the client while the
/// response is awaited drops the work (and with it the upstream request).
async fn answer<H, F>(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    handle: &H,
) where
    H: Fn(Request<Body>) -> F,
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    let (parts, recv) = req.into_parts();
    let body = RecvBody::open(recv, &parts.headers);
    let work = handle(Request::from_parts(parts, body));
    // Biased: the work first, so a stream whose answer is ready costs no look at (and no
    // waker on) its reset state; tokio's random order did that half the time.
    let resp = tokio::select! {
        biased;
        r = work => match r {
            Ok(r) => r,
            Err(e) => match e {},
        },
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut parts, body) = resp.into_parts();
    // A response forwarded without a Date gets one (RFC 9110 §6.6.1), as hyper's HTTP/1
    // server does.
    if !parts.headers.contains_key(DATE)
        && let Ok(now) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
    {
        parts.headers.insert(DATE, now);
    }
    let eos = body.is_end_stream();
    if !eos && let Some(n) = body.size_hint().exact() {
        parts
            .headers
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(n));
    }
    match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(tx) if !eos => pipe(body, tx).await,
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "cannot send the response head");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

/// A last chunk up to this size is sent without waiting for flow-control capacity.
const SMALL_LAST: usize = 16 * 1024;

/// Sends a body on its stream (a request's upstream, a response's downstream), within the
/// peer's flow-control window; stops when the peer resets the stream.
async fn pipe(mut body: Body, mut tx: h2::SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            _ = poll_fn(|cx| tx.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "body failed; resetting its stream");
                tx.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(f)) => f,
        };
        let mut data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                }
                return;
            }
        };
        let last = body.is_end_stream();
        if data.is_empty() {
            if last && tx.send_data(data, true).is_err() {
                return;
            }
            continue;
        }
        // A small last chunk (most responses' whole body) goes without asking for capacity
        // first: h2 holds it until the peer's window allows, and nothing follows it, so at
        // most SMALL_LAST bytes wait beyond the window.
        if last && data.len() <= SMALL_LAST {
            let _ = tx.send_data(data, true);
            return;
        }
        while !data.is_empty() {
            tx.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ => return,
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            if tx.send_data(chunk, last && data.is_empty()).is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// A body read from its stream (a response upstream, a request downstream), handing the
/// flow-control window back as it goes.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// What Content-Length still promises (the h2 crate holds the peer to it), so that the
    /// size is known exactly: retries buffer only bodies of known size.
    remaining: Option<u64>,
}

impl RecvBody {
    fn open(recv: h2::RecvStream, headers: &http::HeaderMap) -> Body {
        let remaining = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        RecvBody {
            recv,
            data_done: false,
            remaining,
        }
        .boxed()
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(n) = &mut self.remaining {
                        *n = n.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR or CANCEL ends the body without failing it (the server
                // sent what it had to; RFC 9113 §8.1).
                Some(Err(e))
                    if matches!(e.reason(), Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)) =>
                {
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) if matches!(e.reason(), Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)) => {
                Poll::Ready(None)
            }
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, SendError, Target};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::watch;

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;

    fn streamed(frames: Frames) -> Body {
        BodyExt::boxed(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn empty() -> Body {
        http_body_util::Empty::new().map_err(|e| match e {}).boxed()
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(std::time::Duration::from_secs(5), 8, None))
    }

    fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert(name, HeaderValue::from_static(value));
        t
    }

    /// An HTTP/2 server on loopback (hyper's): `/hello` answers with a body and trailers,
    /// `/count` with the request body's length and its trailer `x-in`, `/goaway` answers and
    /// then closes its connection gracefully. Counts the connections it accepts.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (bye_tx, mut bye_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let bye = bye_tx.clone();
                    async move {
                        let frames: Frames = match req.uri().path() {
                            "/hello" => vec![
                                Ok(Frame::data(Bytes::from_static(b"hello"))),
                                Ok(Frame::trailers(trailers("x-t", "1"))),
                            ],
                            "/count" => {
                                let got = req.into_body().collect().await.unwrap();
                                let t = got.trailers().and_then(|t| t.get("x-in").cloned());
                                let n = got.to_bytes().len();
                                let mut out = HeaderMap::new();
                                out.insert("x-in", t.unwrap_or(HeaderValue::from_static("none")));
                                vec![
                                    Ok(Frame::data(Bytes::from(n.to_string()))),
                                    Ok(Frame::trailers(out)),
                                ]
                            }
                            _ => {
                                let _ = bye.send(());
                                vec![Ok(Frame::data(Bytes::from_static(b"bye")))]
                            }
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(streamed(frames)))
                    }
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = bye_rx.recv() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        (addr, accepted)
    }

    async fn call(
        pool: &Arc<Pool>,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<(StatusCode, Bytes, Option<HeaderMap>), SendError> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .version(http::Version::HTTP_2)
            .body(body)
            .unwrap();
        let resp = pool.send(&Target::plain(addr), true, false, req).await?;
        let status = resp.status();
        let got = resp.into_body().collect().await.unwrap();
        let t = got.trailers().cloned();
        Ok((status, got.to_bytes(), t))
    }

    #[tokio::test]
    async fn streams_bodies_and_trailers_both_ways_on_one_connection() {
        let (addr, accepted) = upstream().await;
        let pool = pool();
        let (status, body, t) = call(&pool, addr, Method::GET, "/hello", empty())
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        assert_eq!(t.expect("trailers")["x-t"], "1");
        // A streamed body three times the server's window, then trailers: the pipe waits for
        // window updates and sends the trailers last.
        let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
        let body = streamed(vec![
            Ok(Frame::data(chunk.clone())),
            Ok(Frame::data(chunk.clone())),
            Ok(Frame::data(chunk)),
            Ok(Frame::trailers(trailers("x-in", "done"))),
        ]);
        let (_, body, t) = call(&pool, addr, Method::POST, "/count", body)
            .await
            .unwrap();
        assert_eq!(&body[..], b"3145728");
        assert_eq!(t.expect("trailers")["x-in"], "done");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one shared connection");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (addr, accepted) = upstream().await;
        let pool = pool();
        let (_, body, _) = call(&pool, addr, Method::GET, "/goaway", empty())
            .await
            .unwrap();
        assert_eq!(&body[..], b"bye");
        // The GOAWAY and the close reach the connection's task.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (status, _, _) = call(&pool, addr, Method::GET, "/hello", empty())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A stream the server refuses (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7) was not
    /// processed: the error says so, and the retry policy may send the request again.
    #[tokio::test]
    async fn a_refused_stream_counts_as_not_sent() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut conn = h2::server::handshake(s).await.unwrap();
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
        });
        let err = call(&pool(), addr, Method::GET, "/", empty())
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::H2 { .. }), "{err}");
        assert!(err.not_sent(), "{err}");
    }

    /// [`serve`] on loopback with `handle`, one task per connection; the drain switch, and
    /// whether every connection's `serve` has returned.
    async fn server<H, F>(
        idle: Duration,
        handle: H,
    ) -> (SocketAddr, watch::Sender<bool>, Arc<AtomicUsize>)
    where
        H: Fn(Request<Body>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (drain, draining) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let handle = Arc::new(handle);
        let count = open.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let (h, mut d, count) = (handle.clone(), draining.clone(), count.clone());
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let drain = async move {
                        let _ = d.wait_for(|v| *v).await;
                    };
                    let handle = move |r| h(r);
                    serve(s, 16 * 1024, idle, handle, drain, std::future::pending()).await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, drain, open)
    }

    /// An idle timeout no test reaches.
    const LONG: Duration = Duration::from_secs(300);

    /// A client connection (the `h2` crate's) to `addr`.
    async fn client(addr: SocketAddr) -> SendRequest<Bytes> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        send
    }

    fn get(path: &str) -> Request<()> {
        Request::get(format!("http://test{path}")).body(()).unwrap()
    }

    fn text(s: &'static str) -> Response<Body> {
        Response::new(
            http_body_util::Full::new(Bytes::from_static(s.as_bytes()))
                .map_err(|e| match e {})
                .boxed(),
        )
    }

    async fn read_all(mut body: h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
        let mut out = Vec::new();
        while let Some(d) = body.data().await {
            let d = d?;
            let _ = body.flow_control().release_capacity(d.len());
            out.extend_from_slice(&d);
        }
        Ok(out)
    }

    /// CONNECT through the server and the client: the tunnel is one stream, its bytes the two
    /// bodies, to an upstream that answers each chunk in upper case.
    #[tokio::test]
    async fn a_connect_tunnel_passes_through_as_a_stream() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut conn = h2::server::handshake(s).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                assert_eq!(req.method(), Method::CONNECT);
                assert_eq!(req.uri().authority().unwrap(), "tunnel.test:7");
                tokio::spawn(async move {
                    let mut tx = respond.send_response(Response::new(()), false).unwrap();
                    let mut rx = req.into_body();
                    while let Some(Ok(d)) = rx.data().await {
                        let _ = rx.flow_control().release_capacity(d.len());
                        tx.send_data(Bytes::from(d.to_ascii_uppercase()), false)
                            .unwrap();
                    }
                    let _ = tx.send_data(Bytes::new(), true);
                });
            }
        });
        let pool = pool();
        let (addr, _drain, _) = server(LONG, move |req| {
            let pool = pool.clone();
            async move {
                let r = pool.send(&Target::plain(up), true, false, req).await;
                Ok(r.unwrap())
            }
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let req = Request::connect("tunnel.test:7").body(()).unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut rx = resp.into_body();
        for word in ["ping", "pong"] {
            tx.send_data(Bytes::from_static(word.as_bytes()), false)
                .unwrap();
            let mut got = Vec::new();
            while got.len() < 4 {
                let d = rx.data().await.expect("open").unwrap();
                let _ = rx.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            assert_eq!(got, word.to_ascii_uppercase().as_bytes());
        }
        // Our side ends; the upstream ends its side, and the tunnel closes both ways.
        tx.send_data(Bytes::new(), true).unwrap();
        assert_eq!(read_all(rx).await.unwrap(), b"");
    }

    /// A drain: the stream in flight gets its answer, a new one is refused once the final
    /// GOAWAY is out, and the connection ends after the last stream.
    #[tokio::test]
    async fn a_drain_finishes_streams_in_flight_and_refuses_new_ones() {
        let release = Arc::new(tokio::sync::Notify::new());
        let r = release.clone();
        let (addr, drain, open) = server(LONG, move |req| {
            let r = r.clone();
            async move {
                if req.uri().path() == "/slow" {
                    r.notified().await;
                    return Ok(text("late"));
                }
                Ok(text("quick"))
            }
        })
        .await;
        let send = client(addr).await;
        let (slow, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(get("/slow"), true)
            .unwrap();
        let slow = tokio::spawn(slow);
        let quick = |send: SendRequest<Bytes>| async move {
            let (r, _) = send.ready().await?.send_request(get("/quick"), true)?;
            read_all(r.await?.into_body()).await
        };
        assert_eq!(quick(send.clone()).await.unwrap(), b"quick");
        drain.send(true).unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            while quick(send.clone()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(
            refused.await.is_ok(),
            "new streams still taken while draining"
        );
        assert_eq!(
            open.load(Ordering::SeqCst),
            1,
            "the slow stream holds it open"
        );
        release.notify_one();
        let slow = slow.await.unwrap().unwrap();
        assert_eq!(read_all(slow.into_body()).await.unwrap(), b"late");
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(closed.await.is_ok(), "the drained connection did not end");
    }

    /// A client reset drops the work for its stream; a request's Content-Length makes its
    /// body's size exact (retries buffer only such bodies); a response gets a Date.
    #[tokio::test]
    async fn a_reset_drops_the_work_and_lengths_are_exact() {
        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let (addr, _drain, _) = server(LONG, move |req| {
            let guard = Dropped(d.clone());
            async move {
                if req.uri().path() == "/hang" {
                    std::future::pending::<()>().await;
                }
                drop(guard);
                let exact = req.body().size_hint().exact();
                Ok(text(if exact == Some(5) { "exact" } else { "unknown" }))
            }
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let post = Request::post("http://test/len")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let (resp, mut tx) = send.send_request(post, false).unwrap();
        tx.send_data(Bytes::from_static(b"hello"), true).unwrap();
        let resp = resp.await.unwrap();
        assert!(resp.headers().contains_key("date"), "{:?}", resp.headers());
        let body = read_all(resp.into_body()).await.unwrap();
        assert_eq!(body, b"exact");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        let mut send = send.ready().await.unwrap();
        let (resp, mut tx) = send.send_request(get("/hang"), false).unwrap();
        tx.send_reset(h2::Reason::CANCEL);
        drop(resp);
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while dropped.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(gone.await.is_ok(), "the reset stream's work was kept");
    }

    /// A connection with no stream open for the idle timeout is closed with a GOAWAY; one whose
    /// stream outlasts the timeout stays open for the next request.
    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let idle = Duration::from_millis(500);
        let (addr, _drain, open) = server(idle, |req: Request<Body>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Ok(text("ok"))
        })
        .await;
        let send = client(addr).await;
        for path in ["/slow", "/quick"] {
            let (resp, _) = send
                .clone()
                .ready()
                .await
                .unwrap()
                .send_request(get(path), true)
                .unwrap();
            let body = read_all(resp.await.unwrap().into_body()).await.unwrap();
            assert_eq!(body, b"ok", "{path}");
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(closed.await.is_ok(), "the idle connection stayed open");
    }
}
