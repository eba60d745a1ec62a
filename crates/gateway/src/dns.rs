//! The gateway's DNS forwarder on the tunnel address (clients' only nameserver): names under
//! DNS_LOCAL_CIDRS' domains go to the cluster DNS (DNS_LOCAL_SERVER, else the first nameserver
//! of the resolv.conf saved at start, RESOLV_CONF_COPY), everything else to the nameservers of
//! the Pod's current /etc/resolv.conf — which a VPN client rewrites to its own resolvers, so
//! the file is re-read when it changes. UDP and TCP (RFC 7766 framing, several queries per
//! connection): a UDP query goes upstream over UDP and a truncated answer is relayed as is, so
//! the client retries over TCP, which goes upstream over TCP. One short-lived upstream socket
//! per query. DNSSEC validation (GATEWAY_ENABLE_DNSSEC) is not implemented: answers are
//! relayed as is.

use crate::client::resolv_nameservers;
use hickory_proto::op::{Message, ResponseCode};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

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
}

/// Saves `resolv` to `copy` once (the first start of the Pod), and returns the copy's text.
pub fn save_original(resolv: &Path, copy: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(copy) {
        return Ok(t);
    }
    let t = std::fs::read_to_string(resolv)?;
    std::fs::write(copy, &t)?;
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

/// One length-prefixed DNS message from a TCP stream (RFC 1035 4.2.2); `None` at EOF.
fn read_framed(c: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match c.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut msg)?;
    Ok(Some(msg))
}

fn write_framed(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    c.write_all(&out)
}

fn forward_tcp(query: &[u8], servers: &[IpAddr]) -> Option<Vec<u8>> {
    servers.iter().find_map(|s| {
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(*s, 53), UPSTREAM_TIMEOUT).ok()?;
        c.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
        write_framed(&mut c, query).ok()?;
        read_framed(&mut c).ok()?
    })
}

fn forward(query: &[u8], servers: &[IpAddr]) -> Option<Vec<u8>> {
    for s in servers {
        let any: SocketAddr = if s.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(any) else {
            continue;
        };
        if sock.connect((*s, 53)).is_err()
            || sock.set_read_timeout(Some(UPSTREAM_TIMEOUT)).is_err()
            || sock.send(query).is_err()
        {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The answer to one query: forwarded to the servers its name routes to (over TCP when the
/// client asked over TCP), or SERVFAIL when none answers. `None` for what is not a query.
fn answer(
    query: &[u8],
    domains: &[String],
    current: &RwLock<Upstreams>,
    counts: &DnsCounts,
    tcp: bool,
) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let q = msg.queries.first()?;
    let r = route(domains, &q.name().to_ascii());
    let servers = match current.read() {
        Ok(u) => match r {
            Route::Local => u.local.clone(),
            Route::Upstream => u.upstream.clone(),
        },
        Err(_) => return None,
    };
    match r {
        Route::Local => &counts.local,
        Route::Upstream => &counts.upstream,
    }
    .fetch_add(1, Ordering::Relaxed);
    let got = if tcp {
        forward_tcp(query, &servers)
    } else {
        forward(query, &servers)
    };
    Some(got.unwrap_or_else(|| {
        counts.failures.fetch_add(1, Ordering::Relaxed);
        Message::error_msg(
            msg.metadata.id,
            msg.metadata.op_code,
            ResponseCode::ServFail,
        )
        .to_vec()
        .unwrap_or_default()
    }))
}

/// Shared by the UDP loop, the TCP listener and each query's thread.
struct Shared {
    domains: Vec<String>,
    current: RwLock<Upstreams>,
    counts: Arc<DnsCounts>,
}

/// Answers the queries of one TCP connection, in order, until the client closes it or is idle
/// for 10 s.
fn serve_tcp_conn(mut c: TcpStream, sh: &Shared) {
    if c.set_read_timeout(Some(Duration::from_secs(10))).is_err() {
        return;
    }
    while let Ok(Some(query)) = read_framed(&mut c) {
        let Some(reply) = answer(&query, &sh.domains, &sh.current, &sh.counts, true) else {
            return;
        };
        if write_framed(&mut c, &reply).is_err() {
            return;
        }
    }
}

fn serve_tcp(
    listener: TcpListener,
    sh: Arc<Shared>,
    stop: &AtomicBool,
    udp_done: &AtomicBool,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) && !udp_done.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false)?;
                let sh = sh.clone();
                std::thread::spawn(move || serve_tcp_conn(c, &sh));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves on `bind` (UDP and TCP) until `stop`; re-reads the upstreams when resolv.conf
/// changes.
pub fn serve(
    bind: SocketAddr,
    cfg: DnsConfig,
    counts: Arc<DnsCounts>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let sock = Arc::new(UdpSocket::bind(bind)?);
    let listener = TcpListener::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sh = Arc::new(Shared {
        domains: cfg.domains.clone(),
        current: RwLock::new(upstreams(&cfg)),
        counts,
    });
    let mut seen = mtime(&cfg.resolv_conf);
    let mut checked = Instant::now();
    tracing::info!(%bind, upstreams = ?sh.current.read().map(|u| u.clone()).ok(), "DNS forwarder listening (UDP and TCP)");
    let udp_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let tcp = scope.spawn(|| serve_tcp(listener, sh.clone(), stop, &udp_done));
        let mut buf = [0u8; 4096];
        let udp = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if checked.elapsed() >= Duration::from_millis(500) {
                checked = Instant::now();
                let now = mtime(&cfg.resolv_conf);
                if now != seen {
                    seen = now;
                    let u = upstreams(&cfg);
                    tracing::info!(upstreams = ?u, "resolv.conf changed; upstreams reloaded");
                    sh.counts.reloads.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut w) = sh.current.write() {
                        *w = u;
                    }
                }
            }
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => break Err(e),
            };
            let query = buf[..n].to_vec();
            let (sock, sh) = (sock.clone(), sh.clone());
            std::thread::spawn(move || {
                if let Some(reply) = answer(&query, &sh.domains, &sh.current, &sh.counts, false) {
                    let _ = sock.send_to(&reply, from);
                }
            });
        };
        udp_done.store(true, Ordering::SeqCst);
        let tcp = tcp.join().unwrap_or(Ok(()));
        udp.and(tcp)
    })
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
}
