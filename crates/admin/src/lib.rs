//! The admin endpoints of a long-running ghostwire component, on their own port:
//! `/healthz` and `/readyz` (200, or 503 with the reason as the body; `/live` and `/ready`
//! are the same, by the names Linkerd's proxy uses), `/metrics` (Prometheus text format) and,
//! for components that have one, `/config_dump` (JSON). Components plug in through [`Health`].

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What a component reports to its probes. `Err` carries the reason shown to the operator.
pub trait Health: Send + Sync + 'static {
    fn healthz(&self) -> Result<(), String>;
    fn readyz(&self) -> Result<(), String>;
    /// The component's current configuration as JSON, served at `/config_dump`; `None`: 404.
    fn config_dump(&self) -> Option<String> {
        None
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn probe(r: Result<(), String>) -> Response<Full<Bytes>> {
    match r {
        Ok(()) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{reason}\n"),
        ),
    }
}

fn handle(
    req: &Request<Incoming>,
    registry: &Registry,
    health: &dyn Health,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" | "/live" => probe(health.healthz()),
        "/readyz" | "/ready" => probe(health.readyz()),
        "/config_dump" => match health.config_dump() {
            Some(json) => text(StatusCode::OK, "application/json", json),
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "this component has no config dump\n".into(),
            ),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

/// Serves until `shutdown` completes. Each connection is handled on its own task.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<dyn Health>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    continue;
                }
            },
        };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = handle(&req, &registry, health.as_ref());
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Flag(AtomicBool);

    impl Health for Flag {
        fn healthz(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("chain missing".into())
            }
        }
        fn readyz(&self) -> Result<(), String> {
            Ok(())
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let mut registry = Registry::with_prefix("ghostwire");
        let c = Counter::<u64>::default();
        registry.register("test_events", "Events seen", c.clone());
        c.inc();
        let health = Arc::new(Flag(AtomicBool::new(false)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), health.clone(), async {
            let _ = rx.await;
        }));
        let r = get(addr, "/healthz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("chain missing\n"),
            "{r}"
        );
        health.0.store(true, Ordering::SeqCst);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/config_dump").await.starts_with("HTTP/1.1 404"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("ghostwire_test_events_total 1"), "{m}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
