//! Upstream connections, pooled per endpoint: HTTP/1.1 keeps idle connections for reuse,
//! HTTP/2 shares one multiplexed connection per endpoint. Every dial goes through
//! [`Pool::connect`], which only the proxy's own logic (original destination or configured
//! endpoint) ever calls.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing was sent: always safe to retry.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr}: timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The request may have reached the server.
    #[error("request to {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl SendError {
    /// Whether the request certainly never reached the server.
    pub fn not_sent(&self) -> bool {
        match self {
            SendError::Http { source, .. } => source.is_canceled(),
            _ => true,
        }
    }
}

pub struct Pool {
    h1_idle: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
    connect_timeout: Duration,
    max_idle_per_endpoint: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub fn new(connect_timeout: Duration, max_idle_per_endpoint: usize) -> Pool {
        Pool {
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
            connect_timeout,
            max_idle_per_endpoint,
        }
    }

    /// A TCP connection to `addr` (no delay on).
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, SendError> {
        let s = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout {
                addr,
                after: self.connect_timeout,
            })?
            .map_err(|source| SendError::Connect { addr, source })?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// Sends one request to `addr`, over HTTP/2 when `h2`, else HTTP/1.1. With `upgrade` the
    /// HTTP/1 connection is not returned to the pool (it becomes the tunnel).
    pub async fn send(
        self: &std::sync::Arc<Self>,
        addr: SocketAddr,
        h2: bool,
        upgrade: bool,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, SendError> {
        if h2 {
            let mut sender = self.h2_sender(addr).await?;
            return sender
                .send_request(req)
                .await
                .map_err(|source| SendError::Http { addr, source });
        }
        let mut sender = match self.h1_checkout(addr) {
            Some(s) => s,
            None => {
                let io = TokioIo::new(self.connect(addr).await?);
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|source| SendError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, %addr, "upstream HTTP/1 connection ended");
                    }
                });
                sender
            }
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| SendError::Http { addr, source })?;
        if !upgrade {
            // Back to the pool once the response body is read and the connection is free.
            let pool = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    let mut idle = lock(&pool.h1_idle);
                    let v = idle.entry(addr).or_default();
                    if v.len() < pool.max_idle_per_endpoint {
                        v.push(sender);
                    }
                }
            });
        }
        Ok(resp)
    }

    fn h1_checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.h1_idle);
        let v = idle.get_mut(&addr)?;
        while let Some(s) = v.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    async fn h2_sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<Body>, SendError> {
        if let Some(s) = lock(&self.h2).get(&addr).filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let io = TokioIo::new(self.connect(addr).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %addr, "upstream HTTP/2 connection ended");
            }
        });
        lock(&self.h2).insert(addr, sender.clone());
        Ok(sender)
    }
}
