//! Upstream connections, pooled per endpoint: HTTP/1.1 keeps idle connections for reuse,
//! HTTP/2 shares one multiplexed connection per endpoint. Most HTTP/1.1 requests take the
//! proxy's own client ([`crate::h1`]); the rest (upgrades, bodies of unknown length, HTTP/1.0)
//! take hyper's, each with its own idle connections. HTTP/2 requests, CONNECT tunnels among
//! them, take the proxy's own client on the `h2` crate ([`crate::http2`]). Every dial goes through
//! [`Pool::connect`], which only the proxy's own logic (original destination or configured
//! endpoint) ever calls. A meshed endpoint (one with an identity) is reached over mesh TLS,
//! and its connections are pooled apart from plaintext ones.

use bytes::Bytes;
use futures::future::Either;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::h1;
use crate::tls::MeshTls;

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
    /// Mesh TLS failed (the peer is not who the config says, or is not meshed): nothing sent.
    #[error("mesh TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    /// Through the proxy's own HTTP/2 client: the request may have reached the server, unless
    /// the server refused the stream.
    #[error("HTTP/2 with {addr}: {source}")]
    H2 {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    /// Through the proxy's own HTTP/1.1 client: the request may have reached the server.
    #[error("request to {addr}: {source}")]
    H1 {
        addr: SocketAddr,
        #[source]
        source: crate::h1::Error,
    },
}

impl SendError {
    /// Whether the request certainly never reached the server.
    pub fn not_sent(&self) -> bool {
        match self {
            SendError::Http { source, .. } => source.is_canceled(),
            // RFC 9113 §8.7: a refused stream was not processed.
            SendError::H2 { source, .. } => source.reason() == Some(h2::Reason::REFUSED_STREAM),
            SendError::H1 { source, .. } => matches!(source, crate::h1::Error::RequestBody(_)),
            _ => true,
        }
    }
}

/// Where an upstream connection goes: an address, and for a meshed endpoint the identity it
/// must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub identity: Option<Arc<str>>,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Target {
        Target {
            addr,
            identity: None,
        }
    }
}

/// A byte stream upstream: plain TCP or mesh TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}
pub type Upstream = Box<dyn Io>;

pub struct Pool {
    h1_idle: Mutex<HashMap<Target, Vec<http1::SendRequest<Body>>>>,
    /// Idle connections of the proxy's own HTTP/1.1 client, the most recent last.
    h1_conns: Mutex<HashMap<Target, Vec<h1::Conn>>>,
    /// The shared HTTP/2 connection per endpoint, numbered so that only a dead one is evicted.
    h2_conns: Mutex<HashMap<Target, (u64, h2::client::SendRequest<Bytes>)>>,
    h2_opened: AtomicU64,
    connect_timeout: Duration,
    max_idle_per_endpoint: usize,
    tls: Option<Arc<MeshTls>>,
    metrics: Option<crate::metrics::Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// With `tls`, targets that carry an identity are reached over mesh TLS; without it (mesh
    /// TLS off) every connection is plaintext.
    pub fn new(
        connect_timeout: Duration,
        max_idle_per_endpoint: usize,
        tls: Option<Arc<MeshTls>>,
    ) -> Pool {
        Pool {
            h1_idle: Mutex::default(),
            h1_conns: Mutex::default(),
            h2_conns: Mutex::default(),
            h2_opened: AtomicU64::new(0),
            connect_timeout,
            max_idle_per_endpoint,
            tls,
            metrics: None,
        }
    }

    /// Counts outbound mesh TLS handshakes in `m`.
    pub fn with_metrics(mut self, m: crate::metrics::Metrics) -> Pool {
        self.metrics = Some(m);
        self
    }

    fn handshake(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.tls_handshakes
                .get_or_create(&vec![
                    ("direction", "outbound".into()),
                    ("result", if ok { "ok" } else { "failed" }.into()),
                ])
                .inc();
        }
    }

    /// A connection to `target`: mesh TLS expecting its identity when it has one (and mesh TLS
    /// is on), else plain TCP.
    pub async fn open(&self, target: &Target) -> Result<Upstream, SendError> {
        let tcp = self.connect(target.addr).await?;
        self.secure(tcp, target).await
    }

    /// Mesh TLS on `tcp` when `target` is meshed (and mesh TLS is on), else `tcp` as it is.
    async fn secure(&self, tcp: TcpStream, target: &Target) -> Result<Upstream, SendError> {
        match (&self.tls, &target.identity) {
            (Some(tls), Some(id)) => {
                let addr = target.addr;
                let r = tokio::time::timeout(self.connect_timeout, tls.connect_io(tcp, id))
                    .await
                    .map_err(|_| SendError::ConnectTimeout {
                        addr,
                        after: self.connect_timeout,
                    })
                    .and_then(|r| r.map_err(|source| SendError::Tls { addr, source }));
                self.handshake(r.is_ok());
                r
            }
            _ => Ok(Box::new(tcp)),
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

    /// Sends one request to `addr`, over HTTP/2 when `h2`, else HTTP/1.1. With `upgrade` (an
    /// HTTP/1 upgrade or CONNECT) the connection is not returned to the pool: it becomes the
    /// tunnel.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        target: &'a Target,
        h2: bool,
        upgrade: bool,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<Body>, SendError>> + Send + 'a {
        // Not an `async fn`: that would keep the request in this future beside the copy in
        // the one it picks, and every layer above holds this future by value, copied into
        // place once per request. Boxed: hyper's client, as its handshakes are large.
        if h2 {
            Either::Left(self.h2_send(target, req))
        } else if !upgrade && h1::eligible(&req) {
            Either::Right(Either::Left(self.h1_send(target, req)))
        } else {
            Either::Right(Either::Right(Box::pin(
                self.send_hyper(target, upgrade, req),
            )))
        }
    }

    /// An HTTP/1 request through hyper's client: upgrades, CONNECT, bodies of unknown length,
    /// HTTP/1.0.
    async fn send_hyper(
        &self,
        target: &Target,
        upgrade: bool,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        let addr = target.addr;
        let mut sender = match self.h1_checkout(target) {
            Some(s) => s,
            None => {
                let io = TokioIo::new(self.open(target).await?);
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
            // Back to the pool now, still busy with the response body: a checkout takes only
            // a ready one. (Waiting for readiness in a task of its own cost a spawn and two
            // polls per request.)
            let mut idle = lock(&self.h1_idle);
            match idle.get_mut(target) {
                Some(v) if v.len() < self.max_idle_per_endpoint => v.push(sender),
                Some(_) => {}
                None => {
                    idle.insert(target.clone(), vec![sender]);
                }
            }
        }
        Ok(resp.map(crate::http::boxed))
    }

    /// A request through the proxy's own HTTP/1.1 client. A reused connection that turns out
    /// to be closed by the server (it failed before any byte of a response) is replaced by a
    /// new one once, for an idempotent request (RFC 9110 §9.2.2), as browsers do.
    fn h1_send<'a>(
        self: &'a Arc<Self>,
        target: &'a Target,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<Body>, SendError>> + Send + 'a {
        let addr = target.addr;
        let method = req.method().clone();
        let wire = h1::encode(req);
        async move {
            let wire = wire
                .await
                .map_err(|source| SendError::H1 { addr, source })?;
            let mut may_reuse = true;
            loop {
                let pooled = if may_reuse {
                    self.h1_take(target)
                } else {
                    None
                };
                let reused = pooled.is_some();
                let conn = match pooled {
                    Some(c) => c,
                    None => Box::pin(self.h1_open(target)).await?,
                };
                match h1::exchange(self, target, conn, &wire, &method).await {
                    Err(h1::Error::NoResponse(_))
                        if reused && crate::config::idempotent(&method) =>
                    {
                        may_reuse = false;
                    }
                    r => return r.map_err(|source| SendError::H1 { addr, source }),
                }
            }
        }
    }

    /// A new connection for the proxy's own HTTP/1.1 client.
    async fn h1_open(&self, target: &Target) -> Result<h1::Conn, SendError> {
        let tcp = self.connect(target.addr).await?;
        Ok(h1::Conn::new(self.secure(tcp, target).await?))
    }

    /// The most recently returned idle connection to `target` that is still usable.
    fn h1_take(&self, target: &Target) -> Option<h1::Conn> {
        let mut idle = lock(&self.h1_conns);
        let v = idle.get_mut(target)?;
        while let Some(mut c) = v.pop() {
            if c.reusable() {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `target`, up to the pool's limit per endpoint.
    pub(crate) fn h1_put(&self, target: Target, conn: h1::Conn) {
        let mut idle = lock(&self.h1_conns);
        let v = idle.entry(target).or_default();
        if v.len() < self.max_idle_per_endpoint {
            v.push(conn);
        }
    }

    /// The most recently returned connection to `target` that is free; closed ones are
    /// dropped, busy ones stay.
    fn h1_checkout(&self, target: &Target) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.h1_idle);
        let v = idle.get_mut(target)?;
        v.retain(|s| !s.is_closed());
        let i = v.iter().rposition(|s| s.is_ready())?;
        Some(v.swap_remove(i))
    }

    /// A request on the shared HTTP/2 connection to `target`. A connection found dead (the
    /// server went away) is replaced once by a new one; the request was not sent on it.
    fn h2_send<'a>(
        &'a self,
        target: &'a Target,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<Body>, SendError>> + Send + 'a {
        let addr = target.addr;
        let h2_err = move |source| SendError::H2 { addr, source };
        async move {
            let mut fresh = false;
            let ready = loop {
                let cached = match fresh {
                    false => lock(&self.h2_conns).get(target).cloned(),
                    true => None,
                };
                let (id, send) = match cached {
                    Some(c) => c,
                    None => {
                        fresh = true;
                        Box::pin(self.h2_open(target)).await?
                    }
                };
                match send.ready().await {
                    Ok(s) => break s,
                    Err(e) => {
                        let mut conns = lock(&self.h2_conns);
                        if conns.get(target).is_some_and(|(i, _)| *i == id) {
                            conns.remove(target);
                        }
                        drop(conns);
                        if fresh {
                            return Err(h2_err(e));
                        }
                        fresh = true;
                    }
                }
            };
            crate::http2::send(ready, req)
                .map_err(h2_err)?
                .await
                .map_err(h2_err)
        }
    }

    /// A new shared HTTP/2 connection to `target`, kept for the requests that follow.
    async fn h2_open(
        &self,
        target: &Target,
    ) -> Result<(u64, h2::client::SendRequest<Bytes>), SendError> {
        let addr = target.addr;
        let io = self.open(target).await?;
        let send = crate::http2::handshake(io, addr)
            .await
            .map_err(|source| SendError::H2 { addr, source })?;
        let id = self.h2_opened.fetch_add(1, Ordering::Relaxed);
        lock(&self.h2_conns).insert(target.clone(), (id, send.clone()));
        Ok((id, send))
    }
}
