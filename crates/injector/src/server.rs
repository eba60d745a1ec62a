//! HTTP plumbing: the HTTPS webhook listener (`/mutate`, `/healthz`) and the plain admin
//! listener (`/healthz`, `/metrics`), both answering through one router.

use crate::metrics::{Metrics, Outcome};
use crate::review::{Injector, ReviewError};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Larger AdmissionReviews are refused with 413 (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What both listeners share.
pub struct App {
    pub injector: Injector,
    pub metrics: Metrics,
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
        (_, &Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
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

async fn connection<I>(io: I, app: Arc<App>, routes: Routes)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(route(app, routes, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections until `shutdown` turns true; TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
    routes: Routes,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
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
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return connection(tcp, app, routes).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => connection(tls, app, routes).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
