//! The example apps of the DIY Service Mesh seed, as the lab's images `ghostwire/app-a` and
//! `ghostwire/app-b` (`ghostwire lab app-a`, `ghostwire lab app-b`):
//!
//! - **app-b** answers every HTTP/1.1 or HTTP/2 request with `<hostname> <VERSION>` and fails
//!   `FAIL_RATE` percent of them with 500 (drawn per request).
//! - **app-a** calls `TARGET_URL` (default `http://app-b.app-b.svc.cluster.local./hello`)
//!   every `INTERVAL` (default 1 s) over one keep-alive connection (reopened after an error),
//!   and prints one line per call: `<status> <body>` or `error <reason>`.
//!
//! Neither knows about the mesh: the proxies next to them do the routing, retries and
//! metrics.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub const DEFAULT_TARGET: &str = "http://app-b.app-b.svc.cluster.local./hello";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{name}={value:?} is invalid: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// app-b's settings, from its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct AppB {
    pub reply: String,
    /// Percent of requests answered with 500 (0–100).
    pub fail_rate: u8,
    pub port: u16,
}

/// The process environment, empty values as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl AppB {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<AppB, AppError> {
        let host = env("HOSTNAME").unwrap_or_else(|| "app-b".into());
        let version = env("VERSION").unwrap_or_else(|| "v1".into());
        let fail_rate = match env("FAIL_RATE") {
            None => 0,
            Some(v) => match v.trim().parse::<u8>() {
                Ok(n) if n <= 100 => n,
                _ => {
                    return Err(AppError::Env {
                        name: "FAIL_RATE",
                        value: v,
                        reason: "expected a percentage, 0 to 100",
                    });
                }
            },
        };
        let port = match env("PORT") {
            None => 8080,
            Some(v) => v.trim().parse().map_err(|_| AppError::Env {
                name: "PORT",
                value: v,
                reason: "expected a port number",
            })?,
        };
        Ok(AppB {
            reply: format!("{host} {version}"),
            fail_rate,
            port,
        })
    }

    fn answer(&self) -> Response<Full<Bytes>> {
        let fail = self.fail_rate > 0 && rand::random_range(0..100u8) < self.fail_rate;
        let (status, body) = if fail {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{} failed\n", self.reply),
            )
        } else {
            (StatusCode::OK, format!("{}\n", self.reply))
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    }

    /// Binds `[::]:port` (both families).
    pub async fn bind(&self) -> Result<TcpListener, AppError> {
        let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, self.port));
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Listen { addr, source })
    }

    /// Serves HTTP/1.1 and HTTP/2 on `listener` until the future is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let app = Arc::new(self);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // As Go's net/http and nginx do: a reply is not held back by Nagle's algorithm
            // while an earlier one on the same (HTTP/2: shared) connection awaits its ACK.
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let r = app.answer();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

/// app-a's settings, from its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct AppA {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub interval: Duration,
}

impl AppA {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<AppA, AppError> {
        let url = env("TARGET_URL").unwrap_or_else(|| DEFAULT_TARGET.into());
        let bad = |reason| AppError::Env {
            name: "TARGET_URL",
            value: url.clone(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://HOST[:PORT]/PATH"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.to_string(),
                p.parse().map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (authority.to_string(), 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let interval = match env("INTERVAL_MS") {
            None => Duration::from_secs(1),
            Some(v) => Duration::from_millis(v.trim().parse().map_err(|_| AppError::Env {
                name: "INTERVAL_MS",
                value: v,
                reason: "expected milliseconds",
            })?),
        };
        Ok(AppA {
            host,
            port,
            path: path.to_string(),
            interval,
        })
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((host, self.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", self.host, self.port))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// One call: `<status> <body>` or `error <reason>`; drops the connection after an error.
    async fn call(
        &self,
        conn: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    ) -> String {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            match self.connect().await {
                Ok(c) => *conn = Some(c),
                Err(e) => return format!("error {e}"),
            }
        }
        let Some(send) = conn.as_mut() else {
            return "error no connection".into();
        };
        let req = Request::get(self.path.as_str())
            .header(hyper::header::HOST, self.host.trim_end_matches('.'))
            .body(Empty::new())
            .expect("a valid request");
        let res = async {
            send.ready().await.map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(format!(
                "{status} {}",
                String::from_utf8_lossy(&body).trim_end()
            ))
        };
        match tokio::time::timeout(Duration::from_secs(10), res).await {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                *conn = None;
                format!("error {e}")
            }
            Err(_) => {
                *conn = None;
                "error no answer within 10s".into()
            }
        }
    }

    /// Calls forever, one line per call on stdout.
    pub async fn run(self) {
        let mut conn = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let line = self.call(&mut conn).await;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn app_a_calls_app_b_and_sees_its_failures() {
        let b = AppB {
            reply: "b-1 v2".into(),
            fail_rate: 0,
            port: 0,
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(b.serve(l));
        let a = AppA {
            host: "127.0.0.1".into(),
            port,
            path: "/hello".into(),
            interval: Duration::from_millis(1),
        };
        let mut conn = None;
        assert_eq!(a.call(&mut conn).await, "200 b-1 v2");
        server.abort();
        let failing = AppB {
            reply: "b-2 v1".into(),
            fail_rate: 100,
            port: 0,
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = AppA {
            port: l.local_addr().unwrap().port(),
            ..a
        };
        let server = tokio::spawn(failing.serve(l));
        let mut conn = None;
        assert_eq!(a.call(&mut conn).await, "500 b-2 v1 failed");
        server.abort();
        // Nothing listens any more: an error line, not a panic.
        let mut conn = None;
        assert!(a.call(&mut conn).await.starts_with("error connect"));
    }

    #[test]
    fn the_seed_url_and_bad_values() {
        let a = AppA::from_env(|_| None).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("app-b.app-b.svc.cluster.local.", 80, "/hello")
        );
        let a = AppA::from_env(|n| (n == "TARGET_URL").then(|| "http://10.96.0.9:8080".into()))
            .unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("10.96.0.9", 8080, "/")
        );
        let e = AppA::from_env(|n| (n == "TARGET_URL").then(|| "https://x/".into())).unwrap_err();
        assert!(
            e.to_string().starts_with("TARGET_URL=\"https://x/\""),
            "{e}"
        );
        let e = AppB::from_env(|n| (n == "FAIL_RATE").then(|| "130".into())).unwrap_err();
        assert!(e.to_string().starts_with("FAIL_RATE=\"130\""), "{e}");
        let b = AppB::from_env(|n| match n {
            "HOSTNAME" => Some("app-b-v2-x".into()),
            "VERSION" => Some("v2".into()),
            "FAIL_RATE" => Some("30".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (b.reply.as_str(), b.fail_rate, b.port),
            ("app-b-v2-x v2", 30, 8080)
        );
    }
}
