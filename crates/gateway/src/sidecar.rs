//! The long-running halves: the gateway sidecar (DHCP server on vxlan0) and the client
//! sidecar (probe the gateway through the tunnel, rebuild the tunnel and renew the lease when
//! it stops answering, e.g. because the gateway Pod was replaced and has a new address).
//! Both are blocking loops that end when `stop` is set; the binary runs them on threads.

use crate::client::{self, ClientError, Tunnel};
use crate::dhcp::server::{self, Config, Leases};
use crate::gateway::VXLAN_DEV;
use crate::natconf::NatEntry;
use crate::settings::Settings;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The gateway sidecar's DHCP configuration, from the settings, nat.conf and vxlan0.
pub fn dhcp_config(s: &Settings, nat4: &[NatEntry]) -> Result<Config, crate::iproute::IpError> {
    let mtu = crate::iproute::link(VXLAN_DEV)?
        .and_then(|l| l["mtu"].as_u64())
        .and_then(|m| u16::try_from(m).ok());
    Ok(Config {
        tunnel: s.tunnel4,
        lease_time: s.dhcp_lease_time,
        mtu,
        reserved: nat4
            .iter()
            .filter_map(|e| match e.addr {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect(),
    })
}

/// The gateway sidecar's state, shared with /metrics and the probes.
#[derive(Debug, Clone)]
pub struct GatewayState {
    pub leases: Arc<Mutex<Leases>>,
    pub dhcp_up: Arc<AtomicBool>,
    pub dns: Arc<crate::dns::DnsCounts>,
}

impl GatewayState {
    pub fn new(cfg: Config) -> GatewayState {
        GatewayState {
            leases: Arc::new(Mutex::new(Leases::new(cfg))),
            dhcp_up: Arc::new(AtomicBool::new(false)),
            dns: Arc::default(),
        }
    }

    /// Runs the DHCP server on vxlan0 until `stop`.
    pub fn serve_dhcp(&self, stop: &AtomicBool) -> std::io::Result<()> {
        let r = server::serve(VXLAN_DEV, self.leases.clone(), stop, &self.dhcp_up);
        self.dhcp_up.store(false, Ordering::SeqCst);
        r
    }

    /// Runs the DNS forwarder on the tunnel address until `stop` (saving the original
    /// resolv.conf first, once).
    pub fn serve_dns(
        &self,
        s: &Settings,
        resolv_conf: &std::path::Path,
        stop: &AtomicBool,
    ) -> std::io::Result<()> {
        let original = crate::dns::save_original(resolv_conf, &s.resolv_conf_copy)?;
        let cfg = crate::dns::DnsConfig {
            domains: s.dns_local_domains.clone(),
            local_server: s.dns_local_server,
            original,
            resolv_conf: resolv_conf.to_path_buf(),
            dnssec: s.dnssec,
            trust_anchor: s.dnssec_trust_anchor.clone(),
            cache_size: s.dns_cache_size,
        };
        let bind = std::net::SocketAddr::new(IpAddr::V4(s.tunnel4.gateway), 53);
        crate::dns::serve(bind, cfg, self.dns.clone(), stop)
    }

    /// Registers `dhcp_*` and `dns_*` metrics that read the live counters at scrape time.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(LeaseCollector(
            self.leases.clone(),
            self.dns.clone(),
        )));
    }
}

#[derive(Debug)]
struct LeaseCollector(Arc<Mutex<Leases>>, Arc<crate::dns::DnsCounts>);

impl prometheus_client::collector::Collector for LeaseCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let (c, active) = {
            let l = self.0.lock().unwrap_or_else(|e| e.into_inner());
            (l.counts, l.active(Instant::now()))
        };
        let g = ConstGauge::new(active as i64);
        g.encode(encoder.encode_descriptor(
            "gateway_dhcp_leases",
            "Active DHCP leases",
            None,
            g.metric_type(),
        )?)?;
        for (name, help, v) in [
            ("gateway_dhcp_offers", "DHCP OFFERs sent", c.offers),
            ("gateway_dhcp_acks", "DHCP ACKs sent", c.acks),
            ("gateway_dhcp_naks", "DHCP NAKs sent", c.naks),
            (
                "gateway_dhcp_ignored",
                "DHCP messages not answered",
                c.ignored,
            ),
            (
                "gateway_dns_local_queries",
                "DNS queries sent to the cluster DNS",
                self.1.local.load(Ordering::Relaxed),
            ),
            (
                "gateway_dns_upstream_queries",
                "DNS queries sent upstream",
                self.1.upstream.load(Ordering::Relaxed),
            ),
            (
                "gateway_dns_failures",
                "DNS queries answered SERVFAIL (no upstream answered)",
                self.1.failures.load(Ordering::Relaxed),
            ),
            (
                "gateway_dns_reloads",
                "Upstream reloads after resolv.conf changed",
                self.1.reloads.load(Ordering::Relaxed),
            ),
            (
                "gateway_dns_cache_hits",
                "DNS queries answered from the cache",
                self.1.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "gateway_dns_dnssec_secure",
                "Upstream answers validated Secure (DNSSEC)",
                self.1.secure.load(Ordering::Relaxed),
            ),
            (
                "gateway_dns_dnssec_bogus",
                "Upstream answers that failed DNSSEC validation (answered SERVFAIL)",
                self.1.bogus.load(Ordering::Relaxed),
            ),
        ] {
            let m = ConstCounter::new(v);
            m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        Ok(())
    }
}

/// The client sidecar's metrics.
#[derive(Debug, Clone, Default)]
pub struct ClientMetrics {
    pub probe_failures: Counter,
    pub heals: Counter,
    pub heal_seconds: Arc<Mutex<Option<Histogram>>>,
    pub tunnel_up: Gauge,
    pub renewals: Counter,
}

impl ClientMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "client_probe_failures",
            "Probes of the gateway that got no answer",
            self.probe_failures.clone(),
        );
        registry.register("client_heals", "Tunnel rebuilds", self.heals.clone());
        registry.register(
            "client_tunnel_up",
            "1 while the gateway answers through the tunnel",
            self.tunnel_up.clone(),
        );
        registry.register(
            "client_dhcp_renewals",
            "Lease renewals",
            self.renewals.clone(),
        );
        let h = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]);
        registry.register(
            "client_heal_duration_seconds",
            "From the first failed probe to the gateway answering through the new tunnel",
            h.clone(),
        );
        *self.heal_seconds.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }
}

/// What the client sidecar needs to rebuild the tunnel.
#[derive(Debug, Clone)]
pub struct ClientInputs {
    pub settings: Settings,
    pub hostname: String,
    pub nat4: Vec<NatEntry>,
    pub nat6: Vec<NatEntry>,
    pub resolv_conf: String,
}

/// While the tunnel is broken but GATEWAY_NAME still names the same address, the sidecar waits
/// this long for that gateway to come back (a restarted container keeps its Pod and address,
/// and then the tunnel works again as it is) before it rebuilds the tunnel anyway.
pub const SAME_ADDRESS_GRACE: Duration = Duration::from_secs(3);
/// While the tunnel is broken: how often GATEWAY_NAME is resolved again (and the gateway
/// probed, with this as the timeout).
pub const BROKEN_RECHECK: Duration = Duration::from_millis(50);

/// Probes the gateway every `probe_interval`. After CONNECTION_RETRY_COUNT failures in a row
/// the tunnel is broken: every [`BROKEN_RECHECK`] the sidecar resolves GATEWAY_NAME again and
/// rebuilds the tunnel (asking DHCP for the same address) as soon as the name points at
/// another address — a replaced gateway Pod — or, after [`SAME_ADDRESS_GRACE`], anyway; if
/// the old gateway answers again first, nothing is rebuilt. Renews the lease at T1. Returns
/// when `stop` is set.
pub fn client_loop(inp: &ClientInputs, mut tunnel: Tunnel, stop: &AtomicBool, m: &ClientMetrics) {
    let s = &inp.settings;
    let gw = IpAddr::V4(s.tunnel4.gateway);
    let dns = client::cluster_dns(s, &inp.resolv_conf);
    let mut failures = 0u32;
    let mut seq = 0u16;
    let mut first_failure: Option<Instant> = None;
    m.tunnel_up.set(1);
    while !stop.load(Ordering::Relaxed) {
        seq = seq.wrapping_add(1);
        let t0 = Instant::now();
        if failures < s.connection_retry_count {
            let wait = s
                .probe_interval
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            match crate::probe::ping(gw, Some(VXLAN_DEV), seq, wait) {
                Ok(_) => {
                    failures = 0;
                    first_failure = None;
                    m.tunnel_up.set(1);
                    std::thread::sleep(s.probe_interval.saturating_sub(t0.elapsed()));
                }
                Err(e) => {
                    m.probe_failures.inc();
                    failures += 1;
                    first_failure.get_or_insert(t0);
                    tracing::debug!(error = %e, failures, "gateway probe failed");
                }
            }
        }
        if failures >= s.connection_retry_count {
            m.tunnel_up.set(0);
            let since = first_failure.get_or_insert(t0).elapsed();
            // Where does the name point now? No answer (no Ready gateway yet) or the same
            // address: the old tunnel is as good as a new one, so wait for the gateway there.
            let moved =
                match client::resolve_gateway(&s.gateway_name, &dns, Duration::from_millis(500)) {
                    Ok(ip) => ip != tunnel.gateway_ip || since >= SAME_ADDRESS_GRACE,
                    Err(e) => {
                        tracing::debug!(error = %e, "gateway name not resolved yet");
                        false
                    }
                };
            if !moved {
                if crate::probe::ping(gw, Some(VXLAN_DEV), seq, BROKEN_RECHECK).is_ok() {
                    tracing::info!(gateway = %tunnel.gateway_ip, took = ?since, "the gateway answers again");
                    failures = 0;
                    first_failure = None;
                    m.tunnel_up.set(1);
                } else {
                    std::thread::sleep(BROKEN_RECHECK.saturating_sub(t0.elapsed()));
                }
                continue;
            }
            let previous = tunnel.addr4.and_then(|a| match a.addr() {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            });
            match rebuild(inp, previous) {
                Ok(t) => {
                    let took = first_failure.map(|f| f.elapsed()).unwrap_or_default();
                    tracing::info!(gateway = %t.gateway_ip, addr = ?t.addr4, ?took, steps = ?t.steps, "tunnel rebuilt");
                    if let Some(h) = m
                        .heal_seconds
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                    {
                        h.observe(took.as_secs_f64());
                    }
                    m.heals.inc();
                    m.tunnel_up.set(1);
                    tunnel = t;
                    failures = 0;
                    first_failure = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel rebuild failed; retrying");
                    std::thread::sleep(BROKEN_RECHECK.saturating_sub(t0.elapsed()));
                }
            }
            continue;
        }
        if let Some(l) = tunnel.lease.clone()
            && Instant::now() >= l.renew_at()
        {
            match crate::dhcp::client::renew(&inp.hostname, &l) {
                Ok(n) => {
                    m.renewals.inc();
                    tunnel.lease = Some(n);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed; asking again");
                    if let Ok(n) = crate::dhcp::client::obtain(&inp.hostname, Some(l.addr.addr())) {
                        tunnel.lease = Some(n);
                    }
                }
            }
        }
    }
}

fn rebuild(inp: &ClientInputs, previous: Option<Ipv4Addr>) -> Result<Tunnel, ClientError> {
    client::init_with(
        &inp.settings,
        &inp.hostname,
        &inp.nat4,
        &inp.nat6,
        &inp.resolv_conf,
        previous,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Raw;

    #[test]
    fn metric_names_are_pinned() {
        let s = Settings::from_raw(&Raw::resolve(None, &|_| None).unwrap()).unwrap();
        let st = GatewayState::new(Config {
            tunnel: s.tunnel4,
            lease_time: s.dhcp_lease_time,
            mtu: None,
            reserved: Default::default(),
        });
        let mut r = Registry::with_prefix("ghostwire");
        st.register(&mut r);
        ClientMetrics::default().register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for name in [
            "ghostwire_gateway_dhcp_leases 0",
            "ghostwire_gateway_dhcp_offers_total 0",
            "ghostwire_gateway_dhcp_acks_total 0",
            "ghostwire_gateway_dhcp_naks_total 0",
            "ghostwire_gateway_dns_upstream_queries_total 0",
            "ghostwire_gateway_dns_reloads_total 0",
            "ghostwire_client_heals_total 0",
            "ghostwire_client_tunnel_up 0",
            "ghostwire_client_heal_duration_seconds_count 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
