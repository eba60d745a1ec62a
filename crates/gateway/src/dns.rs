//! The gateway's DNS forwarder on the tunnel address (clients' only nameserver): names under
//! DNS_LOCAL_CIDRS' domains go to the cluster DNS (DNS_LOCAL_SERVER, else the first nameserver
//! of the resolv.conf saved at start, RESOLV_CONF_COPY), everything else to the nameservers of
//! the Pod's current /etc/resolv.conf — which a VPN client rewrites to its own resolvers, so
//! the file is re-read when it changes. UDP only; one short-lived upstream socket per query.
//! DNSSEC validation (GATEWAY_ENABLE_DNSSEC) is not implemented: answers are relayed as is.

use crate::client::resolv_nameservers;
use hickory_proto::op::{Message, ResponseCode};
use std::net::{IpAddr, SocketAddr, UdpSocket};
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
            || sock.set_read_timeout(Some(Duration::from_secs(2))).is_err()
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

/// Serves on `bind` until `stop`; re-reads the upstreams when resolv.conf changes.
pub fn serve(
    bind: SocketAddr,
    cfg: DnsConfig,
    counts: Arc<DnsCounts>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let sock = Arc::new(UdpSocket::bind(bind)?);
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let current = Arc::new(RwLock::new(upstreams(&cfg)));
    let mut seen = mtime(&cfg.resolv_conf);
    let mut checked = Instant::now();
    tracing::info!(%bind, upstreams = ?current.read().map(|u| u.clone()).ok(), "DNS forwarder listening");
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if checked.elapsed() >= Duration::from_millis(500) {
            checked = Instant::now();
            let now = mtime(&cfg.resolv_conf);
            if now != seen {
                seen = now;
                let u = upstreams(&cfg);
                tracing::info!(upstreams = ?u, "resolv.conf changed; upstreams reloaded");
                counts.reloads.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut w) = current.write() {
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
            Err(e) => return Err(e),
        };
        let query = buf[..n].to_vec();
        let Ok(msg) = Message::from_vec(&query) else {
            continue;
        };
        let Some(q) = msg.queries.first() else {
            continue;
        };
        let r = route(&cfg.domains, &q.name().to_ascii());
        let servers = match current.read() {
            Ok(u) => match r {
                Route::Local => u.local.clone(),
                Route::Upstream => u.upstream.clone(),
            },
            Err(_) => continue,
        };
        let (sock, counts) = (sock.clone(), counts.clone());
        std::thread::spawn(move || {
            let c = match r {
                Route::Local => &counts.local,
                Route::Upstream => &counts.upstream,
            };
            c.fetch_add(1, Ordering::Relaxed);
            let answer = forward(&query, &servers).unwrap_or_else(|| {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                Message::error_msg(
                    msg.metadata.id,
                    msg.metadata.op_code,
                    ResponseCode::ServFail,
                )
                .to_vec()
                .unwrap_or_default()
            });
            let _ = sock.send_to(&answer, from);
        });
    }
    Ok(())
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
