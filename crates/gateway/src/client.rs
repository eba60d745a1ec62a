//! `ghostwire client init`: a client Pod's side of the tunnel.
//!
//! 1. find the Pod's own gateway (its default route; on re-entry, from the routes init tagged);
//! 2. resolve GATEWAY_NAME (an address is taken as is);
//! 3. keep the gateway's address, the cluster DNS, K8S_SERVICE_CIDRS and
//!    NOT_ROUTED_TO_GATEWAY_CIDRS on the Pod's own gateway (routes tagged `proto 200`), and remove
//!    the default routes of both families — then check none is left (no leak);
//! 4. create `vxlan0` towards the gateway with the tunnel MTU;
//! 5. take the static address of nat.conf/nat6.conf (DHCP otherwise);
//! 6. check the gateway answers through the tunnel.

use crate::gateway::VXLAN_DEV;
use crate::iproute::{self, IpError, NextHop};
use crate::natconf::{self, NatEntry};
use crate::settings::Settings;
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The route protocol number that tags the routes client init adds.
pub const ROUTE_PROTO: &str = "200";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Ip(#[from] IpError),
    #[error(
        "no default route and no route tagged by an earlier init: cannot tell the Pod's own gateway"
    )]
    NoDefaultRoute,
    #[error("GATEWAY_NAME={name:?}: {reason}")]
    Resolve { name: String, reason: String },
    #[error(
        "default routes are left after removing them ({0}); refusing to continue, traffic would leak"
    )]
    Leak(String),
    #[error("the gateway {addr} does not answer through the tunnel: {reason}")]
    Unreachable { addr: IpAddr, reason: String },
    #[error("{0}")]
    Dhcp(String),
}

/// What client init set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub gateway_ip: IpAddr,
    pub own: NextHop,
    pub addr4: Option<IpNet>,
    pub addr6: Option<IpNet>,
    pub mtu: u32,
    /// The DHCP lease, when the address came from DHCP.
    pub lease: Option<crate::dhcp::client::Lease>,
    /// How long each step of init took, in order (`resolve`, `routes`, `link`, `address`,
    /// `gateway answers`): logged by the client sidecar when it rebuilds, shown by the heal
    /// benchmark. Empty for a tunnel found by [`current`].
    pub steps: Vec<(&'static str, Duration)>,
}

/// The Pod's own IPv4 (else IPv6) next hop: its default route, or on re-entry the hop of the
/// routes an earlier init tagged.
pub fn own_next_hop(family: &str) -> Result<Option<NextHop>, IpError> {
    if let Some(h) = iproute::default_routes(family)?.into_iter().next()
        && !h.dev.starts_with(VXLAN_DEV)
    {
        return Ok(Some(h));
    }
    Ok(iproute::routes_of_proto(family, ROUTE_PROTO)?
        .into_iter()
        .next())
}

/// The addresses of `name`: itself if it is an address, else an A query to the cluster DNS.
pub fn resolve_gateway(
    name: &str,
    dns: &[IpAddr],
    timeout: Duration,
) -> Result<IpAddr, ClientError> {
    let fail = |reason: String| ClientError::Resolve {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(fail(
            "empty; set GATEWAY_NAME (or env `gateway`) to the gateway Service's name".into(),
        ));
    }
    if let Ok(ip) = name.parse() {
        return Ok(ip);
    }
    let mut last = String::from("no cluster DNS server (K8S_DNS_IPS or resolv.conf) to ask");
    for server in dns {
        match crate::dnsquery::query_a(name, *server, timeout) {
            Ok(Some(ip)) => return Ok(IpAddr::V4(ip)),
            Ok(None) => last = format!("{server} has no A record for it"),
            Err(e) => last = format!("asking {server}: {e}"),
        }
    }
    Err(fail(last))
}

/// What client init found in the Pod's namespace before changing it.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub own4: Option<NextHop>,
    pub own6: Option<NextHop>,
    pub defaults4: usize,
    pub defaults6: usize,
    pub vxlan_exists: bool,
}

/// How many of `defaults` init must delete itself: those on vxlan0 go with the link, which a
/// rebuild deletes first (deleting one of them again would fail the whole batch).
pub fn defaults_off_tunnel(defaults: &[NextHop]) -> usize {
    defaults.iter().filter(|h| h.dev != VXLAN_DEV).count()
}

/// The `ip -batch` scripts (IPv4/generic and IPv6) that move the Pod onto the tunnel. Pure.
pub fn route_scripts(
    s: &Settings,
    gateway_ip: IpAddr,
    dns: &[IpAddr],
    f: &Found,
) -> (String, String) {
    let (own4, own6) = (f.own4.as_ref(), f.own6.as_ref());
    let mut v4 = String::new();
    let mut v6 = String::new();
    if f.vxlan_exists {
        v4.push_str(&format!("link del {VXLAN_DEV}\n"));
    }
    let keep = std::iter::once(IpNet::from(gateway_ip))
        .chain(dns.iter().map(|d| IpNet::from(*d)))
        .chain(s.service_cidrs.iter().copied())
        .chain(s.not_routed_to_gateway_cidrs.iter().copied());
    for net in keep {
        let (hop, out) = match net {
            IpNet::V4(_) => (own4, &mut v4),
            IpNet::V6(_) => (own6, &mut v6),
        };
        if let Some(h) = hop {
            let via = h.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            out.push_str(&format!(
                "route replace {net}{via} dev {} proto {ROUTE_PROTO}\n",
                h.dev
            ));
        }
    }
    v4.push_str(&"route del default\n".repeat(f.defaults4));
    v6.push_str(&"route del default\n".repeat(f.defaults6));
    (v4, v6)
}

/// The cluster DNS servers that GATEWAY_NAME is resolved at: K8S_DNS_IPS, else the
/// nameservers of the Pod's own resolv.conf (`resolv_conf`, its text).
pub fn cluster_dns(s: &Settings, resolv_conf: &str) -> Vec<IpAddr> {
    if s.k8s_dns_ips.is_empty() {
        resolv_nameservers(resolv_conf)
    } else {
        s.k8s_dns_ips.clone()
    }
}

/// The nameservers of a resolv.conf.
pub fn resolv_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()?.parse().ok())?
        })
        .collect()
}

/// Client init in the current network namespace. `hostname` picks the nat.conf entry.
pub fn init(
    s: &Settings,
    hostname: &str,
    nat4: &[NatEntry],
    nat6: &[NatEntry],
    resolv_conf: &str,
) -> Result<Tunnel, ClientError> {
    init_with(s, hostname, nat4, nat6, resolv_conf, None)
}

/// [`init`], asking DHCP for `previous` first (a rebuild keeps the Pod's address).
pub fn init_with(
    s: &Settings,
    hostname: &str,
    nat4: &[NatEntry],
    nat6: &[NatEntry],
    resolv_conf: &str,
    previous: Option<std::net::Ipv4Addr>,
) -> Result<Tunnel, ClientError> {
    let own4 = own_next_hop("-4")?;
    let own6 = own_next_hop("-6")?;
    let own = own4
        .clone()
        .or(own6.clone())
        .ok_or(ClientError::NoDefaultRoute)?;
    let dns = cluster_dns(s, resolv_conf);
    let mut steps = Vec::new();
    let mut lap = Instant::now();
    let mut step = |name: &'static str| {
        steps.push((name, lap.elapsed()));
        lap = Instant::now();
    };
    let gateway_ip = resolve_gateway(&s.gateway_name, &dns, Duration::from_secs(2))?;
    step("resolve");
    let found = Found {
        own4,
        own6,
        defaults4: defaults_off_tunnel(&iproute::default_routes("-4")?),
        defaults6: defaults_off_tunnel(&iproute::default_routes("-6")?),
        vxlan_exists: iproute::link(VXLAN_DEV)?.is_some(),
    };
    let (v4, v6) = route_scripts(s, gateway_ip, &dns, &found);
    iproute::batch("", &v4)?;
    iproute::batch("-6", &v6)?;
    let left: Vec<String> = iproute::default_routes("-4")?
        .into_iter()
        .chain(iproute::default_routes("-6")?)
        .map(|h| format!("{h:?}"))
        .collect();
    if !left.is_empty() {
        return Err(ClientError::Leak(left.join(", ")));
    }
    step("routes");
    let underlay_mtu = iproute::link(&own.dev)?
        .and_then(|l| l["mtu"].as_u64())
        .unwrap_or(1500) as u32;
    let mtu = s.vxlan_mtu(underlay_mtu, gateway_ip.is_ipv6());
    let mut script = format!(
        "link add {VXLAN_DEV} type vxlan id {} remote {gateway_ip} dev {} dstport {}\nlink set {VXLAN_DEV} mtu {mtu} up\n",
        s.vxlan_id, own.dev, s.vxlan_port
    );
    let mut script6 = String::new();
    let entry4 = natconf::lookup(nat4, hostname);
    let entry6 = natconf::lookup(nat6, hostname);
    let addr4 = match entry4 {
        Some(e) => {
            let net = IpNet::new(e.addr, s.tunnel4.net.prefix_len())
                .map_err(|e| ClientError::Dhcp(e.to_string()))?;
            script.push_str(&format!(
                "addr replace {net} dev {VXLAN_DEV}\nroute replace default via {} dev {VXLAN_DEV}\n",
                s.tunnel4.gateway
            ));
            Some(net)
        }
        None => None,
    };
    let addr6 = match (entry6, &s.tunnel6) {
        (Some(e), Some(t)) => {
            let net = IpNet::new(e.addr, t.net.prefix_len())
                .map_err(|e| ClientError::Dhcp(e.to_string()))?;
            script.push_str(&format!("addr replace {net} dev {VXLAN_DEV} nodad\n"));
            script6.push_str(&format!(
                "route replace default via {} dev {VXLAN_DEV}\n",
                t.gateway
            ));
            Some(net)
        }
        _ => None,
    };
    iproute::batch("", &script)?;
    iproute::batch("-6", &script6)?;
    step("link");
    let (addr4, lease) = match addr4 {
        Some(a) => (Some(a), None),
        None => {
            let l = match previous {
                Some(p) => crate::dhcp::client::reacquire(hostname, p),
                None => crate::dhcp::client::obtain(hostname, None),
            }
            .map_err(|e| ClientError::Dhcp(e.to_string()))?;
            (Some(IpNet::V4(l.addr)), Some(l))
        }
    };
    step("address");
    wait_for_gateway(IpAddr::V4(s.tunnel4.gateway), Duration::from_secs(10))?;
    step("gateway answers");
    tracing::info!(%gateway_ip, ?addr4, ?addr6, mtu, ?steps, "client tunnel up");
    Ok(Tunnel {
        gateway_ip,
        own,
        addr4,
        addr6,
        mtu,
        lease,
        steps,
    })
}

/// Probes `addr` through the tunnel until it answers or `within` has passed.
pub fn wait_for_gateway(addr: IpAddr, within: Duration) -> Result<(), ClientError> {
    let start = Instant::now();
    let mut seq = 0u16;
    loop {
        seq = seq.wrapping_add(1);
        match crate::probe::ping(addr, Some(VXLAN_DEV), seq, Duration::from_millis(300)) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() >= within => {
                return Err(ClientError::Unreachable {
                    addr,
                    reason: e.to_string(),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The tunnel as client init left it (for the client sidecar, which starts after init):
/// `None` when there is no vxlan0.
pub fn current(s: &Settings) -> Result<Option<Tunnel>, ClientError> {
    let Some(link) = iproute::link(VXLAN_DEV)? else {
        return Ok(None);
    };
    let data = &link["linkinfo"]["info_data"];
    let Some(gateway_ip) = data["remote"]
        .as_str()
        .or(data["remote6"].as_str())
        .and_then(|r| r.parse::<IpAddr>().ok())
    else {
        return Ok(None);
    };
    let own = own_next_hop("-4")?
        .or(own_next_hop("-6")?)
        .ok_or(ClientError::NoDefaultRoute)?;
    let addrs = iproute::addresses(VXLAN_DEV)?;
    let pick = |v6: bool| {
        addrs
            .iter()
            .find(|a| {
                a.addr().is_ipv6() == v6
                    && !matches!(a.addr(), IpAddr::V6(x) if x.segments()[0] == 0xfe80)
            })
            .copied()
    };
    Ok(Some(Tunnel {
        gateway_ip,
        own,
        addr4: pick(false)
            .filter(|a| matches!(a.addr(), IpAddr::V4(v) if s.tunnel4.net.contains(&v))),
        addr6: pick(true),
        mtu: link["mtu"].as_u64().unwrap_or(0) as u32,
        lease: None,
        steps: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_on_the_tunnel_go_with_the_link() {
        let hop = |dev: &str| NextHop {
            gateway: None,
            dev: dev.into(),
        };
        // A rebuild meets the DHCP default on vxlan0: `link del vxlan0` takes it away, so a
        // `route del default` for it would fail the batch (and the rebuild).
        assert_eq!(defaults_off_tunnel(&[hop(VXLAN_DEV)]), 0);
        assert_eq!(defaults_off_tunnel(&[hop("eth0"), hop(VXLAN_DEV)]), 1);
        assert_eq!(defaults_off_tunnel(&[hop("eth0")]), 1);
    }
}
