//! One HTTP request through the proxy: hop-by-hop headers, service lookup, route, split,
//! endpoint, retries under the budget, the route's timeout, upgrades, metrics.

use crate::Direction;
use crate::balance;
use crate::config::idempotent;
use crate::metrics::{Labels, Metrics, ResponseLabels, RouteLabels};
use crate::pool::{Body, BoxError, Pool, SendError, Target};
use crate::store::{Route, Service, Store};
use crate::tls::CLIENT_ID_HEADER;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a request knows about its connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub direction: Direction,
    pub orig_dst: SocketAddr,
    pub h2: bool,
    /// Inbound over mesh TLS: the client's verified SPIFFE ID.
    pub client_id: Option<Arc<str>>,
}

pub struct Http {
    pub store: Store,
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
}

/// RFC 9110 §7.6.1: the connection-specific fields, and whatever `Connection` names. Names,
/// not strings: a `&str` key is parsed again on every lookup, twice per request per hop.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers. `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a
/// request (or 101 response) that switches protocols.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    // `TE: trailers` is end-to-end in effect for gRPC over HTTP/2 (RFC 9113 §8.2.2).
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::CONNECT
        || (req.version() <= http::Version::HTTP_11 && req.headers().contains_key(header::UPGRADE))
}

/// The empty label value (no service, route or backend), shared.
fn none() -> Arc<str> {
    static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
    NONE.clone()
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

pub fn error_response(status: StatusCode, direction: Direction, msg: &str) -> Response<Body> {
    let body = format!("ghostwire proxy ({}): {msg}\n", direction.as_str());
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| -> BoxError { match e {} })
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert("x-ghostwire-error", HeaderValue::from_static("1"));
    r
}

pub(crate) fn boxed(b: Incoming) -> Body {
    b.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the body: {0}")]
    Body(BoxError),
}

/// Reads a body whole, at most `limit` bytes (trailers are dropped). A loop over frames rather
/// than `http_body_util::Limited`: its `Into<BoxError>` bound on a boxed body's error trips
/// rustc's higher-ranked lifetime check in the `Send` futures hyper needs.
pub async fn collect(mut body: Body, limit: usize) -> Result<Bytes, CollectError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(CollectError::Body)?.into_data() {
            if out.len() + data.len() > limit {
                return Err(CollectError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// A request body that can be sent again, or one that can be sent once.
enum Replay {
    Buffered(Bytes),
    Once(Option<Body>),
}

impl Replay {
    fn take(&mut self) -> Option<Body> {
        match self {
            Replay::Buffered(b) => Some(
                Full::new(b.clone())
                    .map_err(|e| -> BoxError { match e {} })
                    .boxed(),
            ),
            Replay::Once(b) => b.take(),
        }
    }
}

// The request path is written as functions that return a future rather than as `async fn`s,
// so no layer keeps a second copy of what it hands the next: a future holds its arguments
// for as long as it lives, and a local that was borrowed until its scope ends. Each layer is
// held by value in the one above and all of them in the box a request costs, so every copy
// is bytes to allocate and move per request (a 4.7 KB future before, measured with
// `-Zprint-type-sizes`; docs/benchmarks.md, "Sixth run").
impl Http {
    pub fn handle(
        self: &Arc<Self>,
        conn: Conn,
        mut req: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        let this = self.clone();
        let started = Instant::now();
        let upgrade = is_upgrade(&req);
        // On HTTP/2 a CONNECT tunnel is the stream itself: its bodies carry the bytes both
        // ways, so it is sent as a streamed request (RFC 9113 §8.5). On HTTP/1 the connection
        // becomes the tunnel once both sides agree.
        let down_upgrade = (upgrade && !conn.h2).then(|| hyper::upgrade::on(&mut req));
        let snap = self.store.load();
        let service = match conn.direction {
            Direction::Outbound => snap.service(conn.orig_dst).cloned(),
            Direction::Inbound => None,
        };
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, down_upgrade.is_some());
        if conn.direction == Direction::Inbound {
            // Only this proxy says who the client is: a copy from the client is a forgery.
            parts.headers.remove(CLIENT_ID_HEADER);
            if let Some(id) = conn
                .client_id
                .as_deref()
                .and_then(|id| HeaderValue::from_str(id).ok())
            {
                parts.headers.insert(CLIENT_ID_HEADER, id);
            }
        }
        let service_name = service.as_ref().map_or_else(none, |s| s.name.clone());
        let dest = match service {
            Some(svc) if !upgrade => Dest::Routed(svc),
            service => {
                let addr = match &service {
                    // An upgrade to a configured service goes to one of its endpoints.
                    Some(svc) => pick_endpoint(svc, &svc.default_split, Instant::now())
                        .map_or(conn.orig_dst, |(_, e)| e.addr),
                    None => conn.orig_dst,
                };
                Dest::Direct(Target {
                    addr,
                    identity: match conn.direction {
                        Direction::Outbound => snap.identity(addr).cloned(),
                        Direction::Inbound => None,
                    },
                })
            }
        };
        drop(snap);
        let asked = Asked {
            conn,
            started,
            upgrade,
            down_upgrade,
            service: service_name,
        };
        async move {
            let (route_name, resp, backend) = match dest {
                Dest::Routed(svc) => {
                    let route = svc.route(&parts);
                    let (resp, backend) = this.routed(&asked.conn, &svc, route, parts, body).await;
                    (route.name.clone(), resp, backend)
                }
                Dest::Direct(target) => {
                    let resp = this
                        .pool
                        .send(
                            &target,
                            asked.conn.h2,
                            asked.down_upgrade.is_some(),
                            Request::from_parts(parts, body),
                        )
                        .await;
                    (none(), resp.map_err(Failure::Send), none())
                }
            };
            this.respond(asked, route_name, resp, backend)
        }
    }

    /// The response to a handled request: an upgrade joined, an error turned into a
    /// response, and the request counted.
    fn respond(
        &self,
        asked: Asked,
        route_name: Arc<str>,
        resp: Result<Response<Body>, Failure>,
        backend: Arc<str>,
    ) -> Response<Body> {
        let Asked {
            conn,
            started,
            upgrade,
            down_upgrade,
            service,
        } = asked;
        let mut resp = match resp {
            Ok(mut r) => {
                let switching = r.status() == StatusCode::SWITCHING_PROTOCOLS
                    || (upgrade && r.status().is_success() && down_upgrade.is_some());
                if let (true, Some(down)) = (switching, down_upgrade) {
                    let up = hyper::upgrade::on(&mut r);
                    tokio::spawn(async move {
                        match tokio::try_join!(down, up) {
                            Ok((d, u)) => {
                                let _ = tokio::io::copy_bidirectional(
                                    &mut hyper_util::rt::TokioIo::new(d),
                                    &mut hyper_util::rt::TokioIo::new(u),
                                )
                                .await;
                            }
                            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                        }
                    });
                }
                strip_hop_by_hop(r.headers_mut(), switching);
                r
            }
            Err(Failure::Timeout(after)) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                conn.direction,
                &format!("no response within the route's timeout of {after:?}"),
            ),
            Err(Failure::Send(e)) => {
                tracing::debug!(error = %e, "upstream request failed");
                error_response(StatusCode::BAD_GATEWAY, conn.direction, &e.to_string())
            }
            Err(Failure::Body(e)) => error_response(StatusCode::BAD_REQUEST, conn.direction, &e),
        };
        if conn.h2 {
            *resp.version_mut() = http::Version::HTTP_2;
        }
        let route = RouteLabels {
            direction: conn.direction.as_str(),
            service,
            route: route_name,
        };
        self.metrics
            .latency
            .get_or_create(&route)
            .observe(started.elapsed().as_secs_f64());
        let labels = ResponseLabels {
            route,
            backend,
            status_class: status_class(resp.status()),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        resp
    }

    /// A request to a configured service: split, endpoint, retries, timeout.
    fn routed<'a>(
        &'a self,
        conn: &'a Conn,
        svc: &'a Arc<Service>,
        route: &'a Route,
        parts: http::request::Parts,
        body: Body,
    ) -> impl Future<Output = Attempted> + Send + 'a {
        let split = if route.split.is_empty() {
            &svc.default_split
        } else {
            &route.split
        };
        let policy = route
            .retry
            .as_ref()
            .filter(|p| p.attempts > 0 && (p.non_idempotent || idempotent(&parts.method)));
        // Buffer the body for retries only when it is small and its size is known.
        let buffer = policy
            .filter(|p| {
                hyper::body::Body::size_hint(&body)
                    .upper()
                    .is_some_and(|n| n <= p.max_body_bytes as u64)
            })
            .map(|p| p.max_body_bytes);
        let mut head = Some(parts);
        async move {
            let mut replay = match buffer {
                Some(limit) => match collect(body, limit).await {
                    Ok(c) => Replay::Buffered(c),
                    Err(e) => return (Err(Failure::Body(e.to_string())), none()),
                },
                None => Replay::Once(Some(body)),
            };
            let attempts = match (&replay, policy) {
                (Replay::Buffered(_), Some(p)) => p.attempts + 1,
                _ => 1,
            };
            let labels = || -> Labels {
                vec![
                    ("service", svc.name.to_string()),
                    ("route", route.name.to_string()),
                ]
            };
            let now = Instant::now();
            svc.budget.deposit(now);
            let deadline = route.timeout.map(|t| now + t);
            let work = async {
                let mut last: Option<Attempted> = None;
                for attempt in 0..attempts {
                    if attempt > 0 {
                        if !svc.budget.withdraw(Instant::now()) {
                            self.metrics.budget_exhausted.get_or_create(&labels()).inc();
                            break;
                        }
                        self.metrics.retries.get_or_create(&labels()).inc();
                        let base = policy.map_or(Duration::ZERO, |p| p.backoff)
                            * (1 << (attempt - 1).min(8));
                        let jitter = base.mul_f64(rand::random_range(0.5..1.0));
                        tokio::time::sleep(jitter).await;
                    }
                    let Some((bi, ep)) = pick_endpoint(svc, split, Instant::now()) else {
                        break;
                    };
                    let backend = svc.backends[bi].name.clone();
                    // The head is copied only for an attempt that may be followed by another.
                    let Some(req) = attempt_request(&mut head, &mut replay, attempt + 1 < attempts)
                    else {
                        break;
                    };
                    let sent_at = Instant::now();
                    let guard = ep.start();
                    let target = Target {
                        addr: ep.addr,
                        identity: svc.identities.get(&ep.addr).cloned(),
                    };
                    let res = self.pool.send(&target, conn.h2, false, req).await;
                    drop(guard);
                    let rtt = sent_at.elapsed();
                    let (ok, retry) = match &res {
                        Ok(r) => (
                            !r.status().is_server_error(),
                            policy.is_some_and(|p| p.statuses.contains(&r.status().as_u16())),
                        ),
                        Err(e) => (false, e.not_sent() || policy.is_some()),
                    };
                    if ep.observe(rtt, ok, svc.accrual, Instant::now()) {
                        tracing::warn!(endpoint = %ep.addr, service = %svc.name, "endpoint ejected after consecutive failures");
                        self.metrics
                            .ejections
                            .get_or_create(&vec![("service", svc.name.to_string())])
                            .inc();
                    }
                    last = Some((res.map_err(Failure::Send), backend));
                    if !retry {
                        break;
                    }
                }
                last.unwrap_or_else(|| {
                    (
                        Err(Failure::Send(SendError::Connect {
                            addr: conn.orig_dst,
                            source: std::io::Error::other("no endpoint to send to"),
                        })),
                        none(),
                    )
                })
            };
            match deadline {
                Some(d) => match tokio::time::timeout_at(d, work).await {
                    Ok(r) => r,
                    Err(_) => (
                        Err(Failure::Timeout(route.timeout.unwrap_or_default())),
                        none(),
                    ),
                },
                None => work.await,
            }
        }
    }
}

/// The request of one attempt: the head (copied when another attempt may follow) and the body.
fn attempt_request(
    head: &mut Option<http::request::Parts>,
    replay: &mut Replay,
    more: bool,
) -> Option<Request<Body>> {
    let body = replay.take()?;
    let head = if more { head.clone() } else { head.take() }?;
    let mut req = Request::from_parts(head, body);
    *req.extensions_mut() = http::Extensions::new();
    Some(req)
}

/// [`Http::handle`] for one connection as a tower service, so layers (the LLM rewriting,
/// [`crate::llm`]) can wrap it.
#[derive(Clone)]
pub struct HttpService {
    pub http: Arc<Http>,
    pub conn: Conn,
}

impl HttpService {
    /// [`tower::Service::call`] without `&mut`: the service holds nothing a call changes.
    pub fn serve(&self, req: Request<Body>) -> <Self as tower::Service<Request<Body>>>::Future {
        Box::pin(futures::FutureExt::map(
            self.http.handle(self.conn.clone(), req),
            Ok,
        ))
    }
}

impl tower::Service<Request<Body>> for HttpService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.serve(req)
    }
}

/// The last attempt's outcome, and the backend it went to.
type Attempted = (Result<Response<Body>, Failure>, Arc<str>);

/// What [`Http::respond`] needs of the request, taken before it was sent.
struct Asked {
    conn: Conn,
    started: Instant,
    upgrade: bool,
    down_upgrade: Option<hyper::upgrade::OnUpgrade>,
    service: Arc<str>,
}

/// Where a request goes: through a configured service's routes, or to one address as it is.
enum Dest {
    Routed(Arc<Service>),
    Direct(Target),
}

enum Failure {
    Send(SendError),
    Timeout(Duration),
    Body(String),
}

/// A weighted backend, then an endpoint of it (retrying other backends if one is empty).
pub(crate) fn pick_endpoint(
    svc: &Service,
    split: &[(usize, u32)],
    now: Instant,
) -> Option<(usize, Arc<balance::Endpoint>)> {
    if let [(b, w)] = *split {
        // One backend: no weights to draw.
        return (w > 0)
            .then(|| balance::pick(&svc.backends[b].endpoints, now))
            .flatten()
            .map(|e| (b, e.clone()));
    }
    let weights: Vec<u32> = split
        .iter()
        .map(|&(b, w)| {
            if svc.backends[b].endpoints.is_empty() {
                0
            } else {
                w
            }
        })
        .collect();
    if weights.iter().all(|&w| w == 0) {
        return None;
    }
    let (b, _) = split[balance::weighted(&weights)];
    balance::pick(&svc.backends[b].endpoints, now).map(|e| (b, e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request in flight holds this future, boxed: its size is memory per request, and
    /// bytes moved per request. It was 4.7 KB while each layer was an `async fn` keeping a
    /// copy of what it passed on (see the comment above `impl Http`); the bound fails if that
    /// comes back.
    #[test]
    fn a_request_in_flight_holds_a_small_future() {
        // 2.1-2.2 KB with rustc 1.95, debug and release.
        const LIMIT: usize = 2560;
        let http = Arc::new(Http {
            store: Store::default(),
            pool: Arc::new(Pool::new(Duration::from_secs(1), 1, None)),
            metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
        });
        for h2 in [false, true] {
            let service = HttpService {
                http: http.clone(),
                conn: Conn {
                    direction: Direction::Outbound,
                    orig_dst: SocketAddr::from(([127, 0, 0, 1], 9)),
                    h2,
                    client_id: None,
                },
            };
            let fut = service.serve(Request::new(
                Full::new(Bytes::new()).map_err(|e| match e {}).boxed(),
            ));
            let size = std::mem::size_of_val(&*fut);
            assert!(
                size <= LIMIT,
                "a request's future is {size} bytes (h2: {h2}), over {LIMIT}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stays() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-canary", "true"),
            ("host", "app-b"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let mut names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "te", "x-canary"]);
        let mut up = h;
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up["upgrade"], "websocket");
        assert_eq!(up["connection"], "upgrade");
        assert!(!up.contains_key("x-private"));
    }
}
