//! The proxy's HTTP/2 client: the `h2` crate, driven from the request's own task.
//!
//! Why not hyper's client here: on HTTP/2 it hands each request to the connection's task over
//! a channel, spawns a task per request to wait for the response, and sends the response back
//! over a oneshot. Here the request's task opens the stream and awaits the response itself;
//! only the connection, and a request body that is still streaming, have tasks of their own.
//! CONNECT (a tunnel) still goes through hyper's client ([`crate::pool`]).

use crate::pool::{Body, BoxError, Upstream};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Flow-control windows and buffers, as hyper's client sets them: large enough that a single
/// connection carrying many streams is not held back by WINDOW_UPDATE round trips.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;

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

/// Sends `req` as a new stream on `send` and waits for the response head.
pub async fn send(
    send: SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<Response<Body>, h2::Error> {
    let mut send = send.ready().await?;
    let (parts, body) = req.into_parts();
    let eos = body.is_end_stream();
    let (response, stream) = send.send_request(Request::from_parts(parts, ()), eos)?;
    if !eos {
        // A body that may stream for as long as the response does (gRPC client streams).
        tokio::spawn(pipe(body, stream));
    }
    let response = response.await?;
    Ok(response.map(|recv| {
        RecvBody {
            recv,
            data_done: false,
        }
        .boxed()
    }))
}

/// Sends a request body on its stream, within the peer's flow-control window; stops when the
/// peer resets the stream.
async fn pipe(mut body: Body, mut tx: h2::SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| tx.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
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

/// A response body read from its stream, handing the flow-control window back as it goes.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
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
        if self.recv.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
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

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;

    fn streamed(frames: Frames) -> Body {
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
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
}
