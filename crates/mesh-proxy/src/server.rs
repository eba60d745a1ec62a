//! The proxy's listeners, per-connection handling, admin endpoints and graceful drain.

use crate::Direction;
use crate::detect::{self, Prefixed, Protocol};
use crate::http::{Conn, Http, HttpService, boxed};
use crate::llm::{LlmLayer, PolicyHandle};
use crate::metrics::{Labels, Metrics};
use crate::pool::{Body, Pool};
use crate::preview::Preview;
use crate::store::{ConfigSource, Store};
use crate::tls::{self, FileIdentity, IdentityMetrics, IdentitySource, MeshTls};
use http::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_config::{ProxySettings, TlsMode};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mesh TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Inbound on an opaque (server-speaks-first) port with mesh TLS on: how long a client may
/// stay silent before its connection is taken as plaintext.
pub const OPAQUE_TLS_WINDOW: Duration = Duration::from_millis(300);

type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Counts live connections, so drain can wait for them.
#[derive(Default)]
struct Live {
    n: AtomicUsize,
    zero: Notify,
}

struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

struct Health {
    store: Store,
    draining: Arc<AtomicBool>,
    want_config: bool,
}

impl admin::Health for Health {
    fn healthz(&self) -> Result<(), String> {
        Ok(())
    }
    fn readyz(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".into());
        }
        if self.want_config && self.store.load().generation == 0 {
            return Err("no routing config loaded yet".into());
        }
        Ok(())
    }
    fn config_dump(&self) -> Option<String> {
        let snap = self.store.load();
        serde_json::to_string_pretty(&serde_json::json!({
            "generation": snap.generation,
            "config": snap.config,
        }))
        .ok()
    }
}

/// A bound proxy, ready to serve.
pub struct Proxy {
    settings: ProxySettings,
    inbound: TcpListener,
    outbound: TcpListener,
    admin: TcpListener,
    store: Store,
    http: Arc<Http>,
    metrics: Metrics,
    registry: Arc<Registry>,
    source: Option<Box<dyn ConfigSource>>,
    preview: Preview,
    preview_task: Option<Task>,
    tls: Option<Arc<MeshTls>>,
    tls_task: Option<Task>,
    llm: Option<PolicyHandle>,
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { what, addr, source })
}

impl Proxy {
    /// Binds the inbound, outbound and admin listeners; mesh TLS from the settings' files, if
    /// any.
    pub async fn bind(
        settings: ProxySettings,
        store: Store,
        source: Option<Box<dyn ConfigSource>>,
    ) -> Result<Proxy, Error> {
        Proxy::bind_with(settings, store, source, None).await
    }

    /// As [`Proxy::bind`]; `identity` (e.g. the controller's certificates) takes the place of
    /// the files. Neither: mesh TLS is off.
    pub async fn bind_with(
        settings: ProxySettings,
        store: Store,
        source: Option<Box<dyn ConfigSource>>,
        identity: Option<Arc<dyn IdentitySource>>,
    ) -> Result<Proxy, Error> {
        let mut registry = Registry::with_prefix("ghostwire");
        let metrics = Metrics::new(&mut registry);
        let mut tls_task: Option<Task> = None;
        let identity = match (identity, &settings.tls_files) {
            (Some(i), _) => Some(i),
            (None, Some(f)) => {
                let files = Arc::new(FileIdentity::new(
                    f.cert.clone(),
                    f.key.clone(),
                    f.roots.clone(),
                ));
                files.reload()?;
                let errors = metrics.tls_identity_errors.clone();
                tls_task = Some(Box::pin(files.clone().follow(
                    settings.config_poll,
                    move |_| {
                        errors.inc();
                    },
                )));
                Some(files as Arc<dyn IdentitySource>)
            }
            (None, None) => None,
        };
        if let Some(i) = &identity {
            registry
                .sub_registry_with_prefix("proxy")
                .register_collector(Box::new(IdentityMetrics(i.clone())));
        }
        let ktls = settings.ktls.then(|| {
            let m = ktls::Metrics::default();
            m.register(registry.sub_registry_with_prefix("proxy"));
            m
        });
        let tls = identity.map(|i| Arc::new(MeshTls::with_ktls(i, ktls)));
        let any: IpAddr = if settings.ipv6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let inbound = listen("inbound", SocketAddr::new(any, settings.inbound_port)).await?;
        let outbound = listen("outbound", SocketAddr::new(any, settings.outbound_port)).await?;
        let admin = listen("admin", settings.admin_addr).await?;
        let http = Arc::new(Http {
            store: store.clone(),
            pool: Arc::new(
                Pool::new(Duration::from_secs(5), 64, tls.clone()).with_metrics(metrics.clone()),
            ),
            metrics: metrics.clone(),
        });
        let (preview, preview_task) = match &settings.preview_map {
            Some(path) => {
                let (p, task) = crate::preview::follow(path.clone(), settings.config_poll);
                (p, Some(Box::pin(task) as Task))
            }
            None => (Preview::none(), None),
        };
        Ok(Proxy {
            settings,
            inbound,
            outbound,
            admin,
            store,
            http,
            metrics,
            registry: Arc::new(registry),
            source,
            preview,
            preview_task,
            tls,
            tls_task,
            llm: None,
        })
    }

    /// Rewrites the Pod's outbound model API requests by `policy` ([`crate::llm`]). In L4
    /// mode this turns protocol detection back on for outbound connections (except on the
    /// opaque ports), so plaintext HTTP takes the HTTP path and its layer.
    ///
    /// In L4 mode the choice is made per connection: HTTP only while a policy is in force
    /// (the Pod is opted in now), opaque TCP otherwise, so an opt-in or opt-out applies to
    /// the next connection.
    pub fn with_llm(mut self, policy: PolicyHandle) -> Proxy {
        self.llm = Some(policy);
        self
    }

    /// The counter of refused AI policies (`ghostwire_proxy_llm_policy_errors_total`), for
    /// whoever feeds the [`PolicyHandle`].
    pub fn llm_policy_errors(&self) -> prometheus_client::metrics::counter::Counter {
        self.metrics.llm_policy_errors.clone()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.settings.admin_addr)
    }

    /// Serves until `shutdown` completes, then drains: stops accepting, lets in-flight
    /// requests and connections finish for up to the drain timeout, then returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            settings,
            inbound,
            outbound,
            admin,
            store,
            http,
            metrics,
            registry,
            source,
            preview,
            preview_task,
            tls,
            tls_task,
            llm,
        } = self;
        let settings = Arc::new(settings);
        let draining = Arc::new(AtomicBool::new(false));
        let (drain_tx, drain_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let live = Arc::new(Live::default());
        let health = Arc::new(Health {
            store: store.clone(),
            draining: draining.clone(),
            want_config: settings.config.is_some(),
        });
        metrics
            .config_generation
            .set(store.load().generation as i64);
        let mut tasks = tokio::task::JoinSet::new();
        {
            let mut rx = store.subscribe();
            let m = metrics.clone();
            tasks.spawn(async move {
                while rx.changed().await.is_ok() {
                    let g = rx.borrow().generation;
                    m.config_generation.set(g as i64);
                }
            });
        }
        if let Some(src) = source {
            let m = metrics.clone();
            tasks.spawn(src.run(
                store.clone(),
                Box::new(move |_| {
                    m.config_errors.inc();
                }),
            ));
        }
        if let Some(t) = preview_task {
            tasks.spawn(t);
        }
        if let Some(t) = tls_task {
            tasks.spawn(t);
        }
        let mut admin_stop = stop_rx.clone();
        tasks.spawn(admin::serve(admin, registry, health, async move {
            until(&mut admin_stop).await;
        }));
        for (listener, direction) in [
            (inbound, Direction::Inbound),
            (outbound, Direction::Outbound),
        ] {
            let ctx = Ctx {
                settings: settings.clone(),
                http: http.clone(),
                metrics: metrics.clone(),
                drain: drain_rx.clone(),
                stop: stop_rx.clone(),
                live: live.clone(),
                direction,
                preview: preview.clone(),
                tls: tls.clone(),
                store: store.clone(),
                llm: match direction {
                    Direction::Outbound => llm
                        .clone()
                        .map(|p| LlmLayer::new(p, metrics.llm_requests.clone())),
                    Direction::Inbound => None,
                },
            };
            let mut drain = drain_rx.clone();
            let sem = Arc::new(Semaphore::new(settings.max_connections));
            tasks.spawn(async move {
                loop {
                    let permit = tokio::select! {
                        _ = until(&mut drain) => return,
                        p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    };
                    let (stream, _) = tokio::select! {
                        _ = until(&mut drain) => return,
                        a = listener.accept() => match a {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    // Replies are often several small writes (HTTP/2 HEADERS then DATA): with
                    // Nagle on, the second waits for the client's delayed ACK (~40 ms).
                    let _ = stream.set_nodelay(true);
                    ctx.live.n.fetch_add(1, Ordering::SeqCst);
                    let guard = LiveGuard(ctx.live.clone());
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        ctx.connection(stream).await;
                        drop((guard, permit));
                    });
                }
            });
        }
        shutdown.await;
        tracing::info!(timeout = ?settings.drain_timeout, "draining: no new connections; in-flight requests may finish");
        draining.store(true, Ordering::SeqCst);
        let _ = drain_tx.send(true);
        let wait = async {
            loop {
                let notified = live.zero.notified();
                if live.n.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(settings.drain_timeout, wait)
            .await
            .is_err()
        {
            tracing::warn!(
                open = live.n.load(Ordering::SeqCst),
                "drain timeout: closing the connections still open"
            );
        }
        let _ = stop_tx.send(true);
        tasks.abort_all();
    }
}

#[derive(Clone)]
struct Ctx {
    settings: Arc<ProxySettings>,
    http: Arc<Http>,
    metrics: Metrics,
    drain: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    live: Arc<Live>,
    direction: Direction,
    preview: Preview,
    tls: Option<Arc<MeshTls>>,
    store: Store,
    /// Outbound, for a Pod with AI rewriting.
    llm: Option<LlmLayer>,
}

impl Ctx {
    fn refuse(&self, reason: &'static str) {
        let l: Labels = vec![
            ("direction", self.direction.as_str().into()),
            ("reason", reason.into()),
        ];
        self.metrics.refused.get_or_create(&l).inc();
    }

    /// Whether `dst` is one of this proxy's own listeners (a connection to it would loop).
    fn is_self(&self, dst: SocketAddr, local: SocketAddr) -> bool {
        let s = &self.settings;
        [s.inbound_port, s.outbound_port, s.admin_addr.port()].contains(&dst.port())
            && (dst.ip() == local.ip() || dst.ip().is_loopback() || dst.ip().is_unspecified())
    }

    async fn connection(&self, mut stream: TcpStream) {
        let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
            return;
        };
        let peer = mesh_orig_dst::unmap(peer);
        // Never an open relay: only connections the kernel redirected have a destination.
        let orig = match mesh_orig_dst::original_dst(&stream, local) {
            Ok(a) => mesh_orig_dst::unmap(a),
            Err(e) => {
                tracing::debug!(error = %e, "connection was not redirected; closing it");
                return self.refuse("not_redirected");
            }
        };
        let local = mesh_orig_dst::unmap(local);
        if self.is_self(orig, local) {
            return self.refuse("loop");
        }
        // The preview switch, when it is a route here: active Service → its preview.
        let orig = match self.direction {
            Direction::Outbound => {
                let to = self.preview.resolve(orig);
                if to != orig {
                    self.metrics
                        .preview_switched
                        .get_or_create(&vec![("direction", "outbound".into())])
                        .inc();
                }
                to
            }
            Direction::Inbound => orig,
        };
        // L4 mode is opaque, but for the outbound of a Pod with AI rewriting in force, which
        // needs HTTP.
        let l4 = self.settings.l4_only && !self.llm.as_ref().is_some_and(LlmLayer::active);
        let opaque_port = l4 || self.settings.opaque_ports.contains(&orig.port());
        let (protocol, mut prefix) = match (opaque_port, self.direction, &self.tls) {
            // Server-speaks-first: the client may wait for the server, so do not wait for it.
            (true, Direction::Outbound, _) | (true, Direction::Inbound, None) => {
                (Protocol::Opaque, Vec::new())
            }
            // Inbound with mesh TLS on: a meshed client's proxy speaks first (its
            // ClientHello); a plaintext client that waits for the server is let through after
            // a short window.
            (true, Direction::Inbound, Some(_)) => {
                match detect::detect(&mut stream, OPAQUE_TLS_WINDOW).await {
                    Ok((Protocol::Tls, p)) => (Protocol::Tls, p),
                    Ok((_, p)) => (Protocol::Opaque, p),
                    Err(_) => return,
                }
            }
            (false, _, _) => {
                match detect::detect(&mut stream, self.settings.detect_timeout).await {
                    Ok(d) => d,
                    Err(_) => return,
                }
            }
        };
        if self.direction == Direction::Inbound {
            let mesh = protocol == Protocol::Tls
                && self.tls.is_some()
                && self.mesh_alpn(&mut stream, &mut prefix).await;
            if mesh {
                return self
                    .inbound_mesh(prefix, stream, orig, opaque_port, peer)
                    .await;
            }
            if self.settings.tls_mode == TlsMode::Strict {
                return self.refuse("not_mesh_tls");
            }
        }
        self.count(protocol);
        let io = Prefixed::new(prefix, stream);
        self.dispatch(io, orig, protocol, None).await;
    }

    fn count(&self, protocol: Protocol) {
        self.metrics
            .connections
            .get_or_create(&vec![
                ("direction", self.direction.as_str().into()),
                ("protocol", protocol.as_str().into()),
            ])
            .inc();
    }

    async fn dispatch<I>(
        &self,
        io: I,
        orig: SocketAddr,
        protocol: Protocol,
        client_id: Option<Arc<str>>,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let open = self
            .metrics
            .open_connections
            .get_or_create(&vec![("direction", self.direction.as_str().into())])
            .clone();
        open.inc();
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                self.serve_http(io, orig, protocol, client_id).await
            }
            Protocol::Tls | Protocol::Opaque => self.opaque(io, orig).await,
        }
        open.dec();
    }

    /// Reads the rest of a ClientHello (within the detection timeout) and tells whether it
    /// offers the mesh's ALPN.
    async fn mesh_alpn(&self, stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let deadline = tokio::time::Instant::now() + self.settings.detect_timeout;
        loop {
            if let Some(mesh) = tls::offers_mesh_alpn(buf) {
                return mesh;
            }
            if buf.len() > 64 * 1024 {
                return false;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
    }

    fn handshake(&self, ok: bool) {
        self.metrics
            .tls_handshakes
            .get_or_create(&vec![
                ("direction", self.direction.as_str().into()),
                ("result", if ok { "ok" } else { "failed" }.into()),
            ])
            .inc();
    }

    /// Mesh TLS in: terminate it, verify the client, then detect and proxy what it carries to
    /// the app (the original destination), telling HTTP apps who the client is. On a
    /// server-speaks-first port what it carries is opaque at once: its client waits for the
    /// app's greeting, so waiting for the client's first bytes would stall it until the
    /// detection timeout.
    async fn inbound_mesh(
        &self,
        read: Vec<u8>,
        stream: TcpStream,
        orig: SocketAddr,
        opaque_port: bool,
        peer: SocketAddr,
    ) {
        let Some(tls) = &self.tls else { return };
        let (mut s, client) =
            match tokio::time::timeout(self.settings.detect_timeout, tls.accept_io(read, stream))
                .await
            {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "inbound mesh TLS handshake failed");
                    return self.handshake(false);
                }
                Err(_) => return self.handshake(false),
            };
        self.handshake(true);
        if self.settings.l4_only {
            // The client's address is kept end to end here: it must be the Pod that owns it.
            let snap = self.store.load();
            let want = snap.pod_identity(peer.ip());
            if want.map(|w| &**w) != Some(client.as_str()) {
                tracing::info!(%peer, presented = %client, expected = ?want, "mesh client is not the Pod that owns its address");
                return self.refuse("wrong_client_identity");
            }
            self.count(Protocol::Opaque);
            return self
                .dispatch(s, orig, Protocol::Opaque, Some(client.into()))
                .await;
        }
        let (protocol, prefix) = if opaque_port {
            (Protocol::Opaque, Vec::new())
        } else {
            match detect::detect(&mut s, self.settings.detect_timeout).await {
                Ok(d) => d,
                Err(_) => return,
            }
        };
        self.count(protocol);
        self.dispatch(
            Prefixed::new(prefix, s),
            orig,
            protocol,
            Some(client.into()),
        )
        .await;
    }

    async fn serve_http<I>(
        &self,
        io: I,
        orig: SocketAddr,
        protocol: Protocol,
        client_id: Option<Arc<str>>,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let h2 = protocol == Protocol::Http2;
        let conn = Conn {
            direction: self.direction,
            orig_dst: orig,
            h2,
            client_id,
        };
        let base = HttpService {
            http: self.http.clone(),
            conn,
        };
        // Every service in this stack is always ready (no back-pressure layer), so `call`
        // goes without `poll_ready`. Both arms give the same boxed future: without the AI
        // layer a request costs no service clone and no second box.
        let llm = self
            .llm
            .as_ref()
            .map(|l| tower::Layer::layer(l, base.clone()));
        let handle = move |req: Request<Body>| match &llm {
            Some(l) => tower::Service::call(&mut l.clone(), req),
            None => base.serve(req),
        };
        let s = &self.settings;
        let mut drain = self.drain.clone();
        let mut stop = self.stop.clone();
        if h2 {
            let max_header_list = u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX);
            let drain = async move { until(&mut drain).await };
            let stop = async move { until(&mut stop).await };
            let idle = s.idle_timeout;
            return crate::http2::serve(io, max_header_list, idle, handle, drain, stop).await;
        }
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            handle(req.map(boxed))
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            .max_buf_size(s.max_header_bytes)
            .max_headers(s.max_headers);
        let c = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
        tokio::pin!(c);
        tokio::select! {
            _ = c.as_mut() => return,
            _ = until(&mut drain) => c.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = c.as_mut() => {}
            _ = until(&mut stop) => {}
        }
    }

    /// Bytes both ways to the original destination; outbound to a meshed endpoint over mesh
    /// TLS.
    async fn opaque<I>(&self, io: I, orig: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let snap = self.store.load();
        // L4 mode: a Service address goes to an endpoint picked here, so the identity checked
        // is the one of the endpoint the bytes really reach.
        let addr = match (self.direction, snap.service(orig)) {
            (Direction::Outbound, Some(svc)) if self.settings.l4_only => {
                match crate::http::pick_endpoint(
                    svc,
                    &svc.default_split,
                    tokio::time::Instant::now(),
                ) {
                    Some((_, ep)) => ep.addr,
                    None => return self.refuse("no_endpoint"),
                }
            }
            _ => orig,
        };
        let target = crate::pool::Target {
            addr,
            identity: match self.direction {
                Direction::Outbound => snap.identity(addr).cloned(),
                Direction::Inbound => None,
            },
        };
        drop(snap);
        let upstream = match self.http.pool.open(&target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "opaque TCP: cannot reach the original destination");
                return;
            }
        };
        let mut stop = self.stop.clone();
        tokio::select! {
            r = crate::tcp::relay(io, upstream, self.settings.idle_timeout) => {
                if let Ok((up, down)) = r {
                    crate::tcp::record(&self.metrics, self.direction.as_str(), up, down);
                }
            }
            _ = until(&mut stop) => {}
        }
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn until(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// Binds and serves until `shutdown`; the CLI's entry point.
pub async fn run(
    settings: ProxySettings,
    store: Store,
    source: Option<Box<dyn ConfigSource>>,
    identity: Option<Arc<dyn IdentitySource>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let p = Proxy::bind_with(settings, store, source, identity).await?;
    tracing::info!(admin = %p.admin_addr(), "proxy listening");
    p.serve(shutdown).await;
    Ok(())
}
