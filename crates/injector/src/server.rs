//! HTTP plumbing: the HTTPS webhook listener (`/mutate`, `/healthz`) and the plain admin
//! listener (`/healthz`, `/metrics`), both answering through one router.

use crate::metrics::{Metrics, Outcome};
use crate::review::{Injector, ReviewError};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// Larger AdmissionReviews are refused with 413 (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What both listeners share.
pub struct App {
    pub injector: Injector,
    pub metrics: Metrics,
    pub health: Arc<crate::health::Health>,
}

/// Bounds of the HTTP edge.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client has this long to finish the TLS handshake, then to send its first request's
    /// headers (HTTP/1.1 and HTTP/2), and then each next request's headers once it started.
    pub header_read_timeout: Duration,
    /// Connections served at once per listener; more wait in the kernel's backlog.
    pub max_connections: u32,
    /// On stop, how long the requests in flight get to finish.
    pub drain_timeout: Duration,
    /// `/healthz` fails once the Kubernetes API has failed this long without an answer since.
    pub api_grace: Duration,
    /// How often the API is asked for its version (the `/healthz` API state).
    pub api_check_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(20),
            api_grace: Duration::from_secs(30),
            api_check_every: Duration::from_secs(10),
        }
    }
}

/// A connection with no request in flight is closed after this long without a new one. Longer
/// than the API server's own idle timeout for webhook connections (90 s), so that the client,
/// not the injector, closes an idle connection and no request races the close.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(120);

/// HTTP/2 bounds: an AdmissionReview's headers are small, and the API server sends a few
/// requests at a time per connection.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
const H2_MAX_STREAMS: u32 = 64;

/// Requests in flight on one connection, and when the last one began or ended. A request
/// counts from its complete headers, so a client that never finishes them (an HTTP/2
/// HEADERS frame waiting for its CONTINUATION, which hyper has no timeout for) stays idle.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<(Instant, bool)>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: 0.into(),
            since: std::sync::Mutex::new((Instant::now(), false)),
        })
    }

    fn mark(&self) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), true);
    }

    /// Resolves once no request has been in flight for the first request's header time (or
    /// [`KEEP_ALIVE_IDLE`] after one was served).
    async fn idle(&self, first: Duration) {
        use std::sync::atomic::Ordering;
        loop {
            let (at, served) = *self.since.lock().unwrap_or_else(|p| p.into_inner());
            let limit = if served { KEEP_ALIVE_IDLE } else { first };
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            match limit.checked_sub(at.elapsed()) {
                Some(left) if !left.is_zero() || busy => {
                    tokio::time::sleep(left.max(Duration::from_millis(50))).await;
                }
                _ if busy => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => return,
            }
        }
    }
}

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// HTTPS, for the API server (and kubelet probes): `/mutate`, `/healthz`.
    Webhook,
    /// Plain HTTP, for probes and Prometheus: `/healthz`, `/metrics`.
    Admin,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut b = body.into();
    b.push('\n');
    reply(status, "text/plain; charset=utf-8", b)
}

async fn route(app: Arc<App>, routes: Routes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (routes, req.method(), req.uri().path()) {
        (_, &Method::GET, "/healthz") => match app.health.check() {
            Ok(()) => text(StatusCode::OK, "ok"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (Routes::Admin, &Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.encode(),
        ),
        (Routes::Webhook, &Method::POST, "/mutate") => mutate(&app, req).await,
        (Routes::Webhook, _, "/mutate") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn mutate(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let (status, outcome, response) = match read_body(req).await {
        Err(r) => (r.status(), Outcome::Invalid, r),
        Ok(body) => match app.injector.review(&body).await {
            Ok(r) => (
                StatusCode::OK,
                r.outcome,
                reply(StatusCode::OK, "application/json", r.body),
            ),
            Err(e @ ReviewError::Malformed(_)) => {
                tracing::warn!(error = %e, "bad request");
                let r = text(StatusCode::BAD_REQUEST, e.to_string());
                (r.status(), Outcome::Invalid, r)
            }
            Err(e) => {
                // Not a verdict: the API server applies the webhook's failurePolicy.
                tracing::error!(error = %e, "cannot decide on an admission");
                let r = text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                (r.status(), Outcome::Error, r)
            }
        },
    };
    app.metrics.observe(outcome, start.elapsed());
    tracing::debug!(status = status.as_u16(), result = outcome.as_str(), took = ?start.elapsed(), "admission");
    response
}

/// The request body, bounded by [`MAX_BODY`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("AdmissionReview larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

/// Serves one connection; once `stop` turns true it finishes the request in flight and closes.
async fn connection<I>(
    io: I,
    app: Arc<App>,
    routes: Routes,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let activity = Activity::new();
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        let seen = seen.clone();
        seen.in_flight.fetch_add(1, Ordering::AcqRel);
        seen.mark();
        async move {
            let response = route(app, routes, req).await;
            seen.mark();
            seen.in_flight.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = activity.idle(limits.header_read_timeout) => {
            tracing::debug!("closing an idle connection");
            conn.as_mut().graceful_shutdown();
            // A peer that does not read our GOAWAY does not hold the slot either.
            match tokio::time::timeout(limits.header_read_timeout, conn).await {
                Ok(ended) => ended,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections (at most [`Limits::max_connections`] at once) until `shutdown` turns
/// true, then stops accepting and gives the connections up to [`Limits::drain_timeout`] to
/// finish their requests. TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
    routes: Routes,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max as usize));
    let limits = Arc::new(limits);
    loop {
        let mut stop = shutdown.clone();
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopping);
        // A slot first: past the bound, connections wait in the backlog, not in memory.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut stopping => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopping => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let limits = limits.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return connection(tcp, app, routes, &limits, stop).await;
            };
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => connection(tls, app, routes, &limits, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    // New connections are refused from here on.
    drop(listener);
    // Drained when every connection has given its slot back.
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!(routes = ?routes, "requests still in flight after the drain timeout; closing them");
    }
}
