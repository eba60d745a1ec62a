//! The gateway's DNS forwarder on the tunnel address (clients' only nameserver): names under
//! DNS_LOCAL_CIDRS' domains go to the cluster DNS (DNS_LOCAL_SERVER, else the first nameserver
//! of the resolv.conf saved at start, RESOLV_CONF_COPY), everything else to the nameservers of
//! the Pod's current /etc/resolv.conf — which a VPN client rewrites to its own resolvers, so
//! the file is re-read when it changes (and the cache emptied).
//!
//! One tokio runtime on one thread (every socket is made on the caller's thread, so in the
//! caller's network namespace): a task per UDP query and per TCP connection (RFC 7766 framing,
//! several queries per connection). A UDP query goes upstream over UDP and a truncated answer
//! is relayed as is, so the client retries over TCP, which goes upstream over TCP. Answers are
//! kept in a bounded TTL cache ([`cache`]), positive and negative.
//!
//! With GATEWAY_ENABLE_DNSSEC, upstream (not cluster) answers are validated ([`dnssec`]): a
//! secure answer gets the AD bit (when the client set DO or AD), a bogus one — or one that
//! cannot be validated — becomes SERVFAIL; a client that sets CD gets the answer unvalidated.
//! Cluster names are never validated (the cluster zone is not signed).

pub mod cache;
pub mod dnssec;

use crate::client::resolv_nameservers;
use hickory_proto::dnssec::TrustAnchors;
use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use std::borrow::Borrow;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where one query goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local,
    Upstream,
}

/// Whether `qname` is in one of the local `domains` (case-insensitive, trailing dot ignored).
pub fn route(domains: &[String], qname: &str) -> Route {
    let q = qname.trim_end_matches('.').to_ascii_lowercase();
    let local = domains
        .iter()
        .any(|d| q == *d || q.ends_with(&format!(".{d}")));
    if local { Route::Local } else { Route::Upstream }
}

/// `domains` in wire form (length-prefixed labels, root label included), for [`route_wire`].
fn wire_domains(domains: &[String]) -> Vec<Vec<u8>> {
    domains
        .iter()
        .map(|d| {
            let mut w = Vec::new();
            for label in d.trim_matches('.').split('.').filter(|l| !l.is_empty()) {
                w.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
                w.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
            }
            w.push(0);
            w
        })
        .collect()
}

/// [`route`] for a name in wire form, lower case ([`cache::WireQuery::name`]): local when the
/// name ends, at a label boundary, with one of `domains` ([`wire_domains`]).
fn route_wire(domains: &[Vec<u8>], name: &[u8]) -> Route {
    let mut at = 0;
    while at < name.len() {
        let rest = &name[at..];
        if domains.iter().any(|d| d.len() > 1 && rest == d.as_slice()) {
            return Route::Local;
        }
        at += 1 + usize::from(name[at]);
    }
    Route::Upstream
}

/// The forwarder's upstreams, swapped whole when resolv.conf changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    pub local: Vec<IpAddr>,
    pub upstream: Vec<IpAddr>,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct DnsCounts {
    pub local: AtomicU64,
    pub upstream: AtomicU64,
    pub failures: AtomicU64,
    pub reloads: AtomicU64,
    /// Answers served from the cache.
    pub cache_hits: AtomicU64,
    /// Upstream answers validated Secure, and those that failed validation (SERVFAIL).
    pub secure: AtomicU64,
    pub bogus: AtomicU64,
}

/// Saves `resolv` to `copy` once (the first start of the Pod), and returns the copy's text.
pub fn save_original(resolv: &Path, copy: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(copy) {
        return Ok(t);
    }
    let t = std::fs::read_to_string(resolv)?;
    // Whole or not at all: a crash mid-write must not leave half a file that the next start
    // would take for the original.
    atomic_file::write(copy, &t, 0o644)?;
    Ok(t)
}

/// The forwarder's inputs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub domains: Vec<String>,
    pub local_server: Option<IpAddr>,
    /// The saved original resolv.conf (cluster DNS).
    pub original: String,
    /// The live resolv.conf whose nameservers are the upstreams.
    pub resolv_conf: PathBuf,
    /// GATEWAY_ENABLE_DNSSEC: validate upstream answers.
    pub dnssec: bool,
    /// DNSSEC_TRUST_ANCHOR: a file of DNSKEY records; `None` is the root zone's anchor.
    pub trust_anchor: Option<PathBuf>,
    /// GATEWAY_DNS_CACHE_SIZE: at most this many cached answers (0: no cache).
    pub cache_size: usize,
}

fn upstreams(cfg: &DnsConfig) -> Upstreams {
    let live = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
    Upstreams {
        local: match cfg.local_server {
            Some(s) => vec![s],
            None => resolv_nameservers(&cfg.original)
                .into_iter()
                .take(1)
                .collect(),
        },
        upstream: resolv_nameservers(&live),
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client's TCP connection may stay idle.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// One length-prefixed DNS message from a TCP stream (RFC 1035 4.2.2); `None` at EOF.
async fn read_framed<R: AsyncReadExt + Unpin>(c: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match c.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed<W: AsyncWriteExt + Unpin>(c: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    c.write_all(&out).await
}

async fn forward_tcp(query: &[u8], servers: &[IpAddr]) -> Option<Vec<u8>> {
    for s in servers {
        let once = async {
            let mut c = tokio::net::TcpStream::connect(SocketAddr::new(*s, 53)).await?;
            write_framed(&mut c, query).await?;
            read_framed(&mut c).await
        };
        if let Ok(Ok(Some(reply))) = tokio::time::timeout(UPSTREAM_TIMEOUT, once).await {
            return Some(reply);
        }
    }
    None
}

/// `query` to each server in turn over UDP (a fresh socket, so a fresh source port, per
/// query) until one answers with the query's id.
async fn forward_udp(query: &[u8], servers: &[IpAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for s in servers {
        let any: SocketAddr = if s.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let once = async {
            let sock = tokio::net::UdpSocket::bind(any).await?;
            sock.connect((*s, 53)).await?;
            sock.send(query).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut buf).await?;
                if buf.get(..2) == Some(id) {
                    buf.truncate(n);
                    return Ok::<_, std::io::Error>(buf);
                }
            }
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, once).await {
            return Some(reply);
        }
    }
    None
}

/// The upstreams in use, and a validating handle per upstream server when DNSSEC is on.
struct Current {
    servers: Upstreams,
    validators: Vec<dnssec::Validator>,
}

impl Current {
    /// Must run inside the runtime (validators spawn their exchange tasks).
    fn new(servers: Upstreams, anchors: Option<&Arc<TrustAnchors>>) -> Current {
        let validators = match anchors {
            Some(a) => servers
                .upstream
                .iter()
                .map(|s| dnssec::validator(*s, a.clone(), UPSTREAM_TIMEOUT))
                .collect(),
            None => Vec::new(),
        };
        Current {
            servers,
            validators,
        }
    }
}

/// Shared by every task of the forwarder.
struct Forwarder {
    domains: Vec<String>,
    /// `domains` in wire form, for the hot path.
    wire_domains: Vec<Vec<u8>>,
    current: RwLock<Arc<Current>>,
    cache: Mutex<cache::Cache>,
    counts: Arc<DnsCounts>,
    anchors: Option<Arc<TrustAnchors>>,
}

fn servfail(query: &Message) -> Message {
    let mut m = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::ServFail,
    );
    m.queries = query.queries.clone();
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m
}

/// `reply` (from upstream or the cache) made the answer to `query`: its id, its question
/// (the client's spelling), its EDNS (an OPT only if the client sent one).
fn answer_to(query: &Message, mut reply: Message) -> Message {
    reply.metadata.id = query.metadata.id;
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.queries = query.queries.clone();
    reply.edns = query.edns.as_ref().map(|e| {
        let mut o = Edns::new();
        o.set_max_payload(dnssec::EDNS_PAYLOAD);
        o.set_dnssec_ok(e.flags().dnssec_ok);
        o
    });
    reply
}

/// The wire form of `m` for a client that asked over UDP (`udp`) or TCP: a UDP answer larger
/// than the client can take goes out empty with TC set, so the client asks again over TCP.
fn encode(m: &Message, query: &Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    let limit = query
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload().max(512)));
    if !udp || bytes.len() <= limit {
        return Some(bytes);
    }
    let mut tc = m.clone();
    tc.answers.clear();
    tc.authorities.clear();
    tc.additionals.clear();
    tc.metadata.truncation = true;
    tc.to_vec().ok()
}

/// What the cache made of one query.
enum Lookup {
    NotAQuery,
    /// The answer is in the caller's buffer.
    Hit,
    Miss {
        query: Box<Message>,
        key: cache::Key,
        route: Route,
    },
}

/// A cached answer in `wire` (kept as [`answer_to`] made it for the first client that asked,
/// TTLs aged) made, in place, the answer to `raw`, whose question section is `question` bytes
/// long: its id, its RD bit and its question's spelling patched in. A UDP answer larger than
/// `udp_limit` (what the client takes) goes the slow way through [`encode`], which sets TC.
/// `false` when the two questions do not line up byte for byte (then the caller asks
/// upstream).
fn from_cache(
    wire: &mut Vec<u8>,
    raw: &[u8],
    question: usize,
    udp_limit: usize,
    udp: bool,
) -> bool {
    const RD: u8 = 0x01;
    if raw.len() < 12 + question
        || wire.len() < 12 + question
        || cache::question_len(wire) != Some(question)
        || !wire[12..12 + question].eq_ignore_ascii_case(&raw[12..12 + question])
    {
        return false;
    }
    wire[..2].copy_from_slice(&raw[..2]);
    wire[2] = (wire[2] & !RD) | (raw[2] & RD);
    wire[12..12 + question].copy_from_slice(&raw[12..12 + question]);
    if udp && wire.len() > udp_limit {
        let truncated = Message::from_vec(wire)
            .ok()
            .zip(Message::from_vec(raw).ok())
            .and_then(|(m, q)| encode(&m, &q, udp));
        let Some(t) = truncated else {
            return false;
        };
        *wire = t;
    }
    true
}

impl Forwarder {
    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, cache::Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads one query and answers it from the cache into `out` when it can ([`Lookup::Hit`]),
    /// without leaving the caller's task. The hot path reads a plain query's wire form only
    /// ([`cache::WireQuery`]): no parse, no allocation, no encode; what it cannot answer takes
    /// the slow path, which parses the query with hickory.
    fn lookup(&self, raw: &[u8], udp: bool, out: &mut Vec<u8>) -> Lookup {
        if let Some(w) = cache::WireQuery::parse(raw) {
            let hit = self.cache().get_into(w.key(), Instant::now(), out);
            if hit && from_cache(out, raw, w.question_len, w.udp_limit, udp) {
                self.count(route_wire(&self.wire_domains, w.name()));
                self.counts.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit;
            }
        }
        let Ok(query) = Message::from_vec(raw) else {
            return Lookup::NotAQuery;
        };
        if query.metadata.message_type != MessageType::Query {
            return Lookup::NotAQuery;
        }
        let Some(q) = query.queries.first() else {
            return Lookup::NotAQuery;
        };
        let route = route(&self.domains, &q.name().to_ascii());
        self.count(route);
        let Some(key) = cache::Key::of(&query) else {
            return Lookup::NotAQuery;
        };
        let hit = self.cache().get_into(key.borrow(), Instant::now(), out);
        if hit && let Some(question) = cache::question_len(raw) {
            let limit = query
                .edns
                .as_ref()
                .map_or(512, |e| usize::from(e.max_payload().max(512)));
            if from_cache(out, raw, question, limit, udp) {
                self.counts.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit;
            }
        }
        Lookup::Miss {
            query: Box::new(query),
            key,
            route,
        }
    }

    fn count(&self, route: Route) {
        match route {
            Route::Local => &self.counts.local,
            Route::Upstream => &self.counts.upstream,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The answer to one query (UDP when `udp`), or `None` for what is not a query.
    async fn answer(&self, raw: &[u8], udp: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self.lookup(raw, udp, &mut out) {
            Lookup::NotAQuery => None,
            Lookup::Hit => Some(out),
            Lookup::Miss { query, key, route } => self.resolve(raw, query, key, route, udp).await,
        }
    }

    /// Asks upstream for what the cache did not have, and keeps the answer.
    async fn resolve(
        &self,
        raw: &[u8],
        query: Box<Message>,
        key: cache::Key,
        r: Route,
        udp: bool,
    ) -> Option<Vec<u8>> {
        let cur = self.current();
        let validate =
            r == Route::Upstream && self.anchors.is_some() && !query.metadata.checking_disabled;
        if validate {
            let reply = self.validated(&query, &cur).await;
            if reply.metadata.response_code != ResponseCode::ServFail {
                self.cache().put(key, &reply, Instant::now());
            }
            return encode(&reply, &query, udp);
        }
        let servers = match r {
            Route::Local => &cur.servers.local,
            Route::Upstream => &cur.servers.upstream,
        };
        let got = if udp {
            forward_udp(raw, servers).await
        } else {
            forward_tcp(raw, servers).await
        };
        let Some(bytes) = got else {
            self.counts.failures.fetch_add(1, Ordering::Relaxed);
            return servfail(&query).to_vec().ok();
        };
        if let Ok(m) = Message::from_vec(&bytes) {
            self.cache().put(key, &answer_to(&query, m), Instant::now());
        }
        Some(bytes)
    }

    /// The validated answer to `query` from the first upstream that gives one that is not
    /// SERVFAIL; SERVFAIL when none does or validation fails.
    async fn validated(&self, query: &Message, cur: &Current) -> Message {
        let asked = query.queries.first().map(|q| q.query_type());
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let mut why = String::from("no upstream nameserver");
        for v in &cur.validators {
            let (mut m, secure) = match dnssec::ask(v, query).await {
                dnssec::Verdict::Secure(m) => (m, true),
                dnssec::Verdict::Insecure(m) => (m, false),
                dnssec::Verdict::Bogus(e) => {
                    why = e;
                    continue;
                }
            };
            if secure {
                self.counts.secure.fetch_add(1, Ordering::Relaxed);
            }
            if !dnssec_ok && let Some(t) = asked {
                dnssec::strip_dnssec(&mut m, t);
            }
            m.metadata.authentic_data = secure && (dnssec_ok || query.metadata.authentic_data);
            m.metadata.checking_disabled = false;
            m.metadata.recursion_available = true;
            m.metadata.authoritative = false;
            return answer_to(query, m);
        }
        let name = query
            .queries
            .first()
            .map(|q| q.name().to_string())
            .unwrap_or_default();
        tracing::warn!(%name, reason = %why, "DNSSEC validation failed: SERVFAIL");
        self.counts.bogus.fetch_add(1, Ordering::Relaxed);
        servfail(query)
    }

    /// Re-reads the upstreams (and empties the cache) when resolv.conf changed.
    fn reload(&self, cfg: &DnsConfig) {
        let u = upstreams(cfg);
        tracing::info!(upstreams = ?u, "resolv.conf changed; upstreams reloaded");
        self.counts.reloads.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(Current::new(u, self.anchors.as_ref()));
        if let Ok(mut w) = self.current.write() {
            *w = next;
        }
        self.cache().clear();
    }
}

/// Answers the queries of one TCP connection, in order, until the client closes it or is idle
/// for [`TCP_IDLE`].
async fn serve_tcp_conn(mut c: tokio::net::TcpStream, fwd: Arc<Forwarder>) {
    while let Ok(Ok(Some(query))) = tokio::time::timeout(TCP_IDLE, read_framed(&mut c)).await {
        let Some(reply) = fwd.answer(&query, false).await else {
            return;
        };
        if write_framed(&mut c, &reply).await.is_err() {
            return;
        }
    }
}

/// Serves on `bind` (UDP and TCP) until `stop`; re-reads the upstreams when resolv.conf
/// changes. Blocks the calling thread, which runs the forwarder's runtime. Fails at once on a
/// trust anchor that cannot be read (the error names DNSSEC_TRUST_ANCHOR and the file).
pub fn serve(
    bind: SocketAddr,
    cfg: DnsConfig,
    counts: Arc<DnsCounts>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let anchors = if cfg.dnssec {
        Some(dnssec::trust_anchor(cfg.trust_anchor.as_deref()).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve_async(bind, cfg, counts, anchors, stop))
}

async fn serve_async(
    bind: SocketAddr,
    cfg: DnsConfig,
    counts: Arc<DnsCounts>,
    anchors: Option<Arc<TrustAnchors>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let fwd = Arc::new(Forwarder {
        domains: cfg.domains.clone(),
        wire_domains: wire_domains(&cfg.domains),
        current: RwLock::new(Arc::new(Current::new(upstreams(&cfg), anchors.as_ref()))),
        cache: Mutex::new(cache::Cache::new(cfg.cache_size)),
        counts,
        anchors,
    });
    let mut seen = mtime(&cfg.resolv_conf);
    let mut checked = Instant::now();
    tracing::info!(
        %bind,
        upstreams = ?fwd.current().servers,
        dnssec = cfg.dnssec,
        cache = cfg.cache_size,
        "DNS forwarder listening (UDP and TCP)"
    );
    tokio::spawn(serve_udp(sock, fwd.clone()));
    let reload_fwd = fwd.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((c, _)) => {
                    tokio::spawn(serve_tcp_conn(c, fwd.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "DNS: accept failed"),
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            // Returning ends the runtime, and with it every task.
            return Ok(());
        }
        if checked.elapsed() >= Duration::from_millis(500) {
            checked = Instant::now();
            let now = mtime(&cfg.resolv_conf);
            if now != seen {
                seen = now;
                reload_fwd.reload(&cfg);
            }
        }
    }
}

/// How many UDP queries one wake-up of [`serve_udp`] answers before it lets the other tasks
/// (TCP, upstream answers, the reload tick) run.
const UDP_BATCH: usize = 64;

/// Answers the UDP queries: each time the socket is readable, every query waiting in it
/// (up to [`UDP_BATCH`]) is read and, when the cache has the answer, answered right there with
/// one reused buffer; a miss goes to a task of its own that asks upstream.
async fn serve_udp(sock: tokio::net::UdpSocket, fwd: Arc<Forwarder>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        if let Err(e) = sock.readable().await {
            tracing::debug!(error = %e, "DNS: socket not readable");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        for _ in 0..UDP_BATCH {
            let (n, from) = match sock.try_recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS: receive failed");
                    continue;
                }
            };
            let raw = &buf[..n];
            let (query, key, route) = match fwd.lookup(raw, true, &mut out) {
                Lookup::NotAQuery => continue,
                Lookup::Hit => {
                    // A full socket buffer drops the answer, as it would drop the query.
                    let _ = sock.try_send_to(&out, from);
                    continue;
                }
                Lookup::Miss { query, key, route } => (query, key, route),
            };
            let raw = raw.to_vec();
            let (sock, fwd) = (sock.clone(), fwd.clone());
            tokio::spawn(async move {
                if let Some(reply) = fwd.resolve(&raw, query, key, route, true).await {
                    let _ = sock.send_to(&reply, from).await;
                }
            });
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_domains_match_whole_labels_only() {
        let d = vec!["local".to_string(), "corp.example".to_string()];
        assert_eq!(route(&d, "web.default.svc.cluster.local."), Route::Local);
        assert_eq!(route(&d, "LOCAL"), Route::Local);
        assert_eq!(route(&d, "a.CORP.example"), Route::Local);
        assert_eq!(route(&d, "notlocal."), Route::Upstream);
        assert_eq!(route(&d, "example.com"), Route::Upstream);
        assert_eq!(route(&d, "corp.example.com"), Route::Upstream);
        assert_eq!(route(&[], "x.local"), Route::Upstream);
    }

    fn a_query(name: &str, id: u16, rd: bool) -> Message {
        use hickory_proto::op::Query;
        use hickory_proto::rr::{Name, RecordType};
        let mut q = Message::query();
        q.metadata.id = id;
        q.metadata.recursion_desired = rd;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        q
    }

    fn a_reply(query: &Message, addresses: u8) -> Message {
        use hickory_proto::rr::{RData, Record};
        let mut r = query.clone();
        r.metadata.message_type = MessageType::Response;
        let name = query.queries[0].name().clone();
        for i in 0..addresses {
            r.answers.push(Record::from_rdata(
                name.clone(),
                300,
                RData::A(std::net::Ipv4Addr::new(192, 0, 2, i).into()),
            ));
        }
        r
    }

    /// [`from_cache`] as the slow path calls it, on a copy.
    fn patched(mut wire: Vec<u8>, raw: &[u8], query: &Message, udp: bool) -> Option<Vec<u8>> {
        let question = cache::question_len(raw)?;
        let limit = query
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload().max(512)));
        from_cache(&mut wire, raw, question, limit, udp).then_some(wire)
    }

    #[test]
    fn the_wire_route_is_the_route() {
        let d = vec!["local".to_string(), "corp.example".to_string()];
        let w = wire_domains(&d);
        for name in [
            "web.default.svc.cluster.local.",
            "LOCAL.",
            "a.CORP.example.",
            "notlocal.",
            "example.com.",
            "corp.example.com.",
            "xlocal.",
            "corp.example.",
            "example.",
            ".",
        ] {
            let q = a_query(name, 1, true);
            let wq = cache::WireQuery::parse(&q.to_vec().unwrap()).unwrap();
            assert_eq!(route_wire(&w, wq.name()), route(&d, name), "{name}");
            assert_eq!(route_wire(&[], wq.name()), Route::Upstream);
        }
    }

    #[test]
    fn the_wire_key_is_the_parsed_key() {
        let mut queries = vec![a_query("Web.Example.", 1, true), a_query(".", 2, false)];
        let mut cd = a_query("a.example.", 3, true);
        cd.metadata.checking_disabled = true;
        queries.push(cd);
        for (dnssec_ok, payload) in [(false, 1232), (true, 4096), (true, 100)] {
            let mut q = a_query("a.EXAMPLE.", 4, true);
            let mut e = Edns::new();
            e.set_dnssec_ok(dnssec_ok);
            e.set_max_payload(payload);
            q.edns = Some(e);
            queries.push(q);
        }
        let mut aaaa = a_query("a.example.", 5, true);
        aaaa.queries[0].set_query_type(hickory_proto::rr::RecordType::AAAA);
        queries.push(aaaa);
        let mut keys = std::collections::HashSet::new();
        for q in &queries {
            let raw = q.to_vec().unwrap();
            let w = cache::WireQuery::parse(&raw).expect("a plain query");
            let key = cache::Key::of(q).unwrap();
            assert_eq!(w.key(), Borrow::<[u8]>::borrow(&key), "{q:?}");
            assert_eq!(w.name(), key.name());
            assert_eq!(Some(w.question_len), cache::question_len(&raw));
            let limit = q
                .edns
                .as_ref()
                .map_or(512, |e| usize::from(e.max_payload().max(512)));
            assert_eq!(w.udp_limit, limit);
            keys.insert(key);
        }
        assert_eq!(
            keys.len(),
            queries.len() - 1,
            "only the case of a name is folded"
        );
        // What is not a plain query takes the slow path.
        let plain = a_query("a.example.", 6, true).to_vec().unwrap();
        let mut response = plain.clone();
        response[2] |= 0x80;
        let mut notify = plain.clone();
        notify[2] |= 4 << 3;
        let mut two = plain.clone();
        two[5] = 2;
        let mut trailing = plain.clone();
        trailing.push(0);
        let mut compressed = plain.clone();
        compressed[12] = 0xC0;
        for bad in [
            response,
            notify,
            two,
            trailing,
            compressed,
            plain[..20].to_vec(),
        ] {
            assert!(cache::WireQuery::parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_cached_answer_takes_the_askers_id_rd_bit_and_spelling() {
        let first = a_query("web.example.", 1, false);
        let mut c = cache::Cache::new(10);
        let key = cache::Key::of(&first).unwrap();
        c.put(
            key.clone(),
            &answer_to(&first, a_reply(&first, 2)),
            Instant::now(),
        );
        let second = a_query("WeB.ExAmple.", 4242, true);
        let raw = second.to_vec().unwrap();
        let wire = c.get(&key, Instant::now()).unwrap();
        let got = Message::from_vec(&patched(wire, &raw, &second, true).unwrap()).unwrap();
        assert_eq!(got.metadata.id, 4242);
        assert!(got.metadata.recursion_desired);
        assert_eq!(got.metadata.message_type, MessageType::Response);
        assert_eq!(got.queries[0].name().to_ascii(), "WeB.ExAmple.");
        assert_eq!(got.answers.len(), 2);
        // A question that does not line up (another name of the same length) is not answered
        // from this entry.
        let other = a_query("wef.example.", 9, true);
        let wire = c.get(&key, Instant::now()).unwrap();
        assert!(patched(wire, &other.to_vec().unwrap(), &other, true).is_none());
    }

    #[test]
    fn a_cached_answer_too_large_for_udp_is_truncated() {
        let q = a_query("big.example.", 3, true);
        let mut c = cache::Cache::new(10);
        let key = cache::Key::of(&q).unwrap();
        c.put(key.clone(), &answer_to(&q, a_reply(&q, 40)), Instant::now());
        let raw = q.to_vec().unwrap();
        let udp = patched(c.get(&key, Instant::now()).unwrap(), &raw, &q, true).unwrap();
        let udp = Message::from_vec(&udp).unwrap();
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let tcp = patched(c.get(&key, Instant::now()).unwrap(), &raw, &q, false).unwrap();
        assert_eq!(Message::from_vec(&tcp).unwrap().answers.len(), 40);
    }
}
