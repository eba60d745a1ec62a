//! The gateway's settings: every `settings.sh` variable of pod-gateway under its own name and
//! with its own default, plus ghostwire's additions, in one knob table ([`KNOBS`]) from which
//! the docs derive. Values come from, first one present wins: the process environment, then
//! `/config/settings.sh` (read by [`crate::shell`], never run), then the built-in default
//! (written like the seed's, e.g. `$gateway`, and expanded against the environment).

use crate::shell::{self, ShellError};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

knobs::knobs! {
    GATEWAY_NAME = "GATEWAY_NAME", "gateway-name", "$gateway",
        "Clients: DNS name (or address) of the gateway; the injector sets env `gateway` to the gateway Service.";
    K8S_DNS_IPS = "K8S_DNS_IPS", "k8s-dns-ips", "$K8S_DNS_ips",
        "Clients: cluster DNS addresses (blank separated), kept on the Pod's own route. Empty: the nameservers of /etc/resolv.conf.";
    NOT_ROUTED_TO_GATEWAY_CIDRS = "NOT_ROUTED_TO_GATEWAY_CIDRS", "not-routed-to-gateway-cidrs", "",
        "Clients: CIDRs (blank separated) kept on the Pod's own default gateway.";
    VXLAN_ID = "VXLAN_ID", "vxlan-id", "42",
        "VXLAN network identifier (0 to 16777215).";
    VXLAN_PORT = "VXLAN_PORT", "vxlan-port", "0",
        "VXLAN UDP port; 0 is the kernel's default (8472). Cilium clusters need 4789.";
    VXLAN_IP_NETWORK = "VXLAN_IP_NETWORK", "vxlan-ip-network", "172.16.0",
        "Tunnel IPv4 network: three octets (a /24, as the seed) or a CIDR. The gateway is its first address.";
    VXLAN_GATEWAY_FIRST_DYNAMIC_IP = "VXLAN_GATEWAY_FIRST_DYNAMIC_IP", "vxlan-gateway-first-dynamic-ip", "20",
        "First host number handed out by DHCP; those below are for nat.conf's static entries.";
    VPN_INTERFACE = "VPN_INTERFACE", "vpn-interface", "tun0",
        "Interface of the VPN client in the gateway Pod; port forwards arrive on it. Empty: no VPN.";
    VPN_BLOCK_OTHER_TRAFFIC = "VPN_BLOCK_OTHER_TRAFFIC", "vpn-block-other-traffic", "true",
        "Kill switch: only VPN_INTERFACE carries forwarded and outgoing traffic (plus VPN_TRAFFIC_PORT, VPN_LOCAL_CIDRS and the tunnel).";
    VPN_TRAFFIC_PORT = "VPN_TRAFFIC_PORT", "vpn-traffic-port", "443",
        "Kill switch: the VPN's own port (TCP and UDP), allowed out on any interface.";
    VPN_LOCAL_CIDRS = "VPN_LOCAL_CIDRS", "vpn-local-cidrs", "10.0.0.0/8 192.168.0.0/16",
        "Kill switch: CIDRs (blank separated, IPv4 or IPv6) exempt and routed via the Pod's own gateway.";
    DNS_LOCAL_CIDRS = "DNS_LOCAL_CIDRS", "dns-local-cidrs", "local",
        "DNS *domains* (blank separated, despite the name) answered by the cluster DNS; all others go upstream.";
    DNS_LOCAL_SERVER = "DNS_LOCAL_SERVER", "dns-local-server", "",
        "Cluster DNS server for DNS_LOCAL_CIDRS. Empty: the first nameserver of the saved resolv.conf.";
    RESOLV_CONF_COPY = "RESOLV_CONF_COPY", "resolv-conf-copy", "/etc/resolv_copy.conf",
        "Where the gateway keeps its copy of the Pod's original resolv.conf.";
    CONNECTION_RETRY_COUNT = "CONNECTION_RETRY_COUNT", "connection-retry-count", "1",
        "Clients: failed probes in a row before the tunnel is rebuilt.";
    GATEWAY_ENABLE_DNSSEC = "GATEWAY_ENABLE_DNSSEC", "gateway-enable-dnssec", "true",
        "Validate DNSSEC on upstream answers.";
    IPTABLES_NFT = "IPTABLES_NFT", "iptables-nft", "no",
        "Accepted for compatibility (yes/no); ghostwire writes its gateway rules with nftables either way.";
    SNAT_IP = "SNAT_IP", "snat-ip", "",
        "SNAT tunnel traffic leaving VPN_INTERFACE to this address. Empty: MASQUERADE.";
    VPN_INTERFACE_MTU = "VPN_INTERFACE_MTU", "vpn-interface-mtu", "",
        "MTU of VPN_INTERFACE; vxlan0 gets this minus the VXLAN overhead (50 bytes over IPv4, 70 over IPv6). Empty: from the underlay.";
    K8S_SERVICE_CIDRS = "K8S_SERVICE_CIDRS", "k8s-service-cidrs", "",
        "Clients: the cluster's Service CIDRs (blank separated), kept on the Pod's own route like NOT_ROUTED_TO_GATEWAY_CIDRS. (ghostwire; not in pod-gateway)";
    VXLAN_IPV6_NETWORK = "VXLAN_IPV6_NETWORK", "vxlan-ipv6-network", "",
        "Tunnel IPv6 network (a CIDR, /64 to /120). Empty: IPv4 only in the tunnel (clients still lose their IPv6 default route). (ghostwire; not in pod-gateway)";
    NAT_CONF = "NAT_CONF", "nat-conf", "/config/nat.conf",
        "Static addresses and port forwards (`name octet type:port[:target],...`). Missing at the default path: none; a path set otherwise must exist (exit 2). (ghostwire; not in pod-gateway)";
    NAT6_CONF = "NAT6_CONF", "nat6-conf", "/config/nat6.conf",
        "The IPv6 twin of nat.conf (`name hex-host-id type:port[:target],...`). Missing at the default path: none; a path set otherwise must exist (exit 2). (ghostwire; not in pod-gateway)";
    DHCP_LEASE_TIME = "DHCP_LEASE_TIME", "dhcp-lease-time", "12h",
        "DHCP lease time (`90s`, `30m`, `12h`, `1d`). (ghostwire; not in pod-gateway)";
    CLIENT_PROBE_INTERVAL = "CLIENT_PROBE_INTERVAL", "client-probe-interval", "150ms",
        "Clients: how often the sidecar probes the gateway through the tunnel. (ghostwire; not in pod-gateway)";
    DNSSEC_TRUST_ANCHOR = "DNSSEC_TRUST_ANCHOR", "dnssec-trust-anchor", "",
        "File of DNSKEY records (zone-file syntax) trusted by the DNSSEC validation; a key for a zone other than the root trusts that zone directly. DS records are not accepted. Empty: the root zone's (IANA KSKs 20326 and 38696). (ghostwire; not in pod-gateway)";
    GATEWAY_DNS_CACHE_SIZE = "GATEWAY_DNS_CACHE_SIZE", "gateway-dns-cache-size", "10000",
        "Answers the DNS forwarder caches (each for its TTL; negative answers for their SOA minimum). 0: no cache. (ghostwire; not in pod-gateway)";
    GATEWAY_ADMIN_ADDR = "GATEWAY_ADMIN_ADDR", "gateway-admin-addr", "0.0.0.0:8082",
        "Address of /healthz, /readyz and /metrics of the sidecars. (ghostwire; not in pod-gateway)";
}

/// The settings file read by default.
pub const SETTINGS_FILE: &str = "/config/settings.sh";

/// A setting that cannot be used, naming it, its value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}={value:?} (from {origin}) is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        origin: String,
        reason: String,
    },
    #[error(transparent)]
    Shell(#[from] ShellError),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Where a value came from, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Env,
    File { path: String, line: usize },
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env => f.write_str("the environment"),
            Origin::File { path, line } => write!(f, "{path} line {line}"),
            Origin::Default => f.write_str("the built-in default"),
        }
    }
}

/// The raw values of every knob, with their origin.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub values: BTreeMap<&'static str, (String, Origin)>,
    /// Names the settings file sets that are no knob (kept as helper variables; logged).
    pub unknown: Vec<String>,
}

impl Raw {
    /// Resolves every knob: env over the settings file over the default.
    pub fn resolve(
        settings_file: Option<(&str, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Raw, SettingsError> {
        let file = match settings_file {
            Some((path, text)) => Some((path, shell::parse(path, text, env)?)),
            None => None,
        };
        let mut raw = Raw::default();
        for k in KNOBS {
            let v = if let Some(v) = env(k.env) {
                (v, Origin::Env)
            } else if let Some((path, a)) =
                file.as_ref().and_then(|(p, f)| Some((p, f.get(k.env)?)))
            {
                (
                    a.value.clone(),
                    Origin::File {
                        path: path.to_string(),
                        line: a.line,
                    },
                )
            } else {
                let v = shell::expand(k.default, env).map_err(|reason| SettingsError::Invalid {
                    name: k.env,
                    value: k.default.into(),
                    origin: Origin::Default.to_string(),
                    reason,
                })?;
                (v, Origin::Default)
            };
            raw.values.insert(k.env, v);
        }
        if let Some((_, f)) = &file {
            raw.unknown = f
                .keys()
                .filter(|n| !KNOBS.iter().any(|k| k.env == n.as_str()))
                .cloned()
                .collect();
        }
        Ok(raw)
    }

    /// Reads `path` if it exists (a missing file means built-in defaults) and resolves.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Raw, SettingsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Raw::resolve(Some((&path.display().to_string(), &text)), env),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Raw::resolve(None, env),
            Err(e) => Err(SettingsError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn get(&self, name: &'static str) -> (&str, &Origin) {
        let (v, o) = &self.values[name];
        (v.trim(), o)
    }

    fn parse<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, SettingsError> {
        let (v, origin) = self.get(name);
        f(v).map_err(|reason| SettingsError::Invalid {
            name,
            value: v.to_string(),
            origin: origin.to_string(),
            reason,
        })
    }
}

/// The tunnel's address plan of one family: the network, the gateway's address and the
/// dynamic range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel4 {
    pub net: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub first_dynamic: Ipv4Addr,
    pub last_dynamic: Ipv4Addr,
}

impl Tunnel4 {
    /// The address of host number `n` in the tunnel network.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let base = u32::from(self.net.network());
        let a = Ipv4Addr::from(base.checked_add(n)?);
        (self.net.contains(&a) && a != self.net.broadcast() && n != 0).then_some(a)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel6 {
    pub net: Ipv6Net,
    pub gateway: Ipv6Addr,
}

impl Tunnel6 {
    pub fn host(&self, n: u128) -> Option<Ipv6Addr> {
        let base = u128::from(self.net.network());
        let a = Ipv6Addr::from(base.checked_add(n)?);
        (self.net.contains(&a) && n != 0).then_some(a)
    }
}

/// Every setting, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub gateway_name: String,
    pub k8s_dns_ips: Vec<IpAddr>,
    pub not_routed_to_gateway_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub vxlan_id: u32,
    pub vxlan_port: u16,
    pub tunnel4: Tunnel4,
    pub tunnel6: Option<Tunnel6>,
    /// None: no VPN interface.
    pub vpn_interface: Option<String>,
    pub vpn_block_other_traffic: bool,
    pub vpn_traffic_port: u16,
    pub vpn_local_cidrs: Vec<IpNet>,
    pub dns_local_domains: Vec<String>,
    pub dns_local_server: Option<IpAddr>,
    pub resolv_conf_copy: PathBuf,
    pub connection_retry_count: u32,
    pub dnssec: bool,
    pub iptables_nft: bool,
    pub snat_ip: Option<IpAddr>,
    pub vpn_interface_mtu: Option<u32>,
    pub nat_conf: PathBuf,
    pub nat6_conf: PathBuf,
    pub dhcp_lease_time: Duration,
    pub probe_interval: Duration,
    pub dnssec_trust_anchor: Option<PathBuf>,
    pub dns_cache_size: usize,
    pub admin_addr: std::net::SocketAddr,
}

/// VXLAN's overhead on the underlay: outer IP + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD_V4: u32 = 20 + 8 + 8 + 14;
pub const VXLAN_OVERHEAD_V6: u32 = 40 + 8 + 8 + 14;

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, String> {
    words(s)
        .map(|w| {
            w.parse()
                .map_err(|_| format!("{w:?} is not {what} (expected a blank-separated list)"))
        })
        .collect()
}

fn cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    words(s)
        .map(|w| {
            w.parse::<IpNet>()
                .or_else(|_| w.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{w:?} is not a CIDR or an address"))
        })
        .collect()
}

pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" | "" => Ok(false),
        _ => Err("expected true or false (yes/no)".into()),
    }
}

/// `90s`, `30m`, `12h`, `1d`, `150ms`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (expected e.g. 150ms, 90s, 30m, 12h, 1d)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().map_err(|_| bad())?;
    let d = match &s[split..] {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Linux interface names: 1 to 15 bytes, no `/`, blank or `:`.
pub fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ':']) || s.contains(char::is_whitespace) {
        return Err("not an interface name (1 to 15 characters, no '/', ':' or blanks)".into());
    }
    Ok(())
}

fn tunnel4(net: &str, first: &str) -> Result<Tunnel4, String> {
    let parsed = if net.contains('/') {
        net.parse::<Ipv4Net>().map_err(|_| {
            "expected three octets (172.16.0) or an IPv4 CIDR (172.16.0.0/24)".to_string()
        })?
    } else {
        let octets: Vec<&str> = net.split('.').collect();
        let addr: Ipv4Addr = (octets.len() == 3)
            .then(|| format!("{net}.0").parse().ok())
            .flatten()
            .ok_or("expected three octets (172.16.0) or an IPv4 CIDR (172.16.0.0/24)")?;
        Ipv4Net::new(addr, 24).map_err(|e| e.to_string())?
    };
    if parsed.prefix_len() > 29 {
        return Err("the network needs room for the gateway and clients (at most /29)".into());
    }
    let net = parsed.trunc();
    let gateway = Ipv4Addr::from(u32::from(net.network()) + 1);
    let hosts = (1u32 << (32 - net.prefix_len())) - 2;
    let n: u32 = first
        .parse()
        .map_err(|_| format!("VXLAN_GATEWAY_FIRST_DYNAMIC_IP={first:?} is not a number"))?;
    if n < 2 || n > hosts {
        return Err(format!(
            "VXLAN_GATEWAY_FIRST_DYNAMIC_IP={n} is outside 2..={hosts} for this network"
        ));
    }
    Ok(Tunnel4 {
        net,
        gateway,
        first_dynamic: Ipv4Addr::from(u32::from(net.network()) + n),
        last_dynamic: Ipv4Addr::from(u32::from(net.broadcast()) - 1),
    })
}

impl Settings {
    pub fn from_raw(raw: &Raw) -> Result<Settings, SettingsError> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let first = raw.get(VXLAN_GATEWAY_FIRST_DYNAMIC_IP).0.to_string();
        Ok(Settings {
            gateway_name: raw.get(GATEWAY_NAME).0.to_string(),
            k8s_dns_ips: raw.parse(K8S_DNS_IPS, |s| list(s, "an IP address"))?,
            not_routed_to_gateway_cidrs: raw.parse(NOT_ROUTED_TO_GATEWAY_CIDRS, cidrs)?,
            service_cidrs: raw.parse(K8S_SERVICE_CIDRS, cidrs)?,
            vxlan_id: raw.parse(VXLAN_ID, |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|&n| n < 1 << 24)
                    .ok_or_else(|| "expected a number from 0 to 16777215".into())
            })?,
            vxlan_port: raw.parse(VXLAN_PORT, |s| {
                s.parse::<u16>().map_err(|_| "expected a port number 0..=65535".into())
            })?,
            tunnel4: raw.parse(VXLAN_IP_NETWORK, |s| tunnel4(s, &first))?,
            tunnel6: raw.parse(VXLAN_IPV6_NETWORK, |s| {
                if s.is_empty() {
                    return Ok(None);
                }
                let net: Ipv6Net = s.parse().map_err(|_| "expected an IPv6 CIDR".to_string())?;
                if !(64..=120).contains(&net.prefix_len()) {
                    return Err("the prefix length must be from /64 to /120".into());
                }
                let net = net.trunc();
                Ok(Some(Tunnel6 {
                    net,
                    gateway: Ipv6Addr::from(u128::from(net.network()) + 1),
                }))
            })?,
            vpn_interface: raw.parse(VPN_INTERFACE, |s| {
                if s.is_empty() {
                    return Ok(None);
                }
                check_ifname(s).map(|()| Some(s.to_string()))
            })?,
            vpn_block_other_traffic: raw.parse(VPN_BLOCK_OTHER_TRAFFIC, parse_bool)?,
            vpn_traffic_port: raw.parse(VPN_TRAFFIC_PORT, |s| {
                s.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| "expected a port number 1..=65535".into())
            })?,
            vpn_local_cidrs: raw.parse(VPN_LOCAL_CIDRS, cidrs)?,
            dns_local_domains: raw.parse(DNS_LOCAL_CIDRS, |s| {
                words(s)
                    .map(|d| {
                        let d = d.trim_matches('.');
                        let ok = !d.is_empty()
                            && d.split('.').all(|l| {
                                !l.is_empty()
                                    && l.len() < 64
                                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                            });
                        if ok {
                            Ok(d.to_ascii_lowercase())
                        } else {
                            Err(format!("{d:?} is not a DNS domain (the list holds domains, e.g. `local cluster.local`)"))
                        }
                    })
                    .collect()
            })?,
            dns_local_server: raw.parse(DNS_LOCAL_SERVER, |s| {
                if s.is_empty() {
                    return Ok(None);
                }
                s.parse().map(Some).map_err(|_| "expected an IP address".into())
            })?,
            resolv_conf_copy: PathBuf::from(raw.get(RESOLV_CONF_COPY).0),
            connection_retry_count: raw.parse(CONNECTION_RETRY_COUNT, |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| "expected a number from 1".into())
            })?,
            dnssec: raw.parse(GATEWAY_ENABLE_DNSSEC, parse_bool)?,
            iptables_nft: raw.parse(IPTABLES_NFT, parse_bool)?,
            snat_ip: raw.parse(SNAT_IP, |s| {
                if s.is_empty() {
                    return Ok(None);
                }
                s.parse().map(Some).map_err(|_| "expected an IP address".into())
            })?,
            vpn_interface_mtu: raw.parse(VPN_INTERFACE_MTU, |s| {
                if s.is_empty() {
                    return Ok(None);
                }
                s.parse::<u32>()
                    .ok()
                    .filter(|m| (1280..=65535).contains(m))
                    .map(Some)
                    .ok_or_else(|| "expected an MTU from 1280 to 65535".into())
            })?,
            nat_conf: PathBuf::from(raw.get(NAT_CONF).0),
            nat6_conf: PathBuf::from(raw.get(NAT6_CONF).0),
            dhcp_lease_time: raw.parse(DHCP_LEASE_TIME, |s| {
                let d = parse_duration(s)?;
                if d < Duration::from_secs(60) {
                    return Err("a lease shorter than 60s is not useful".into());
                }
                Ok(d)
            })?,
            probe_interval: raw.parse(CLIENT_PROBE_INTERVAL, parse_duration)?,
            dnssec_trust_anchor: opt(raw.get(DNSSEC_TRUST_ANCHOR).0).map(PathBuf::from),
            dns_cache_size: raw.parse(GATEWAY_DNS_CACHE_SIZE, |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|&n| n <= 10_000_000)
                    .ok_or_else(|| "expected a number from 0 to 10000000".into())
            })?,
            admin_addr: raw.parse(GATEWAY_ADMIN_ADDR, |s| {
                s.parse().map_err(|_| "expected ADDRESS:PORT".into())
            })?,
        })
    }

    /// Reads and validates: env over `path` (if it exists) over the defaults.
    pub fn load(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let raw = Raw::load(path, env)?;
        for name in &raw.unknown {
            tracing::debug!(
                name,
                "settings file sets a variable that is no knob; ignored"
            );
        }
        Settings::from_raw(&raw)
    }

    /// The tunnel MTU for an underlay of MTU `underlay` reached over `family`: the VPN's MTU
    /// when set (traffic leaves through it), else the underlay's, minus VXLAN's overhead.
    pub fn vxlan_mtu(&self, underlay: u32, ipv6_underlay: bool) -> u32 {
        let overhead = if ipv6_underlay {
            VXLAN_OVERHEAD_V6
        } else {
            VXLAN_OVERHEAD_V4
        };
        let base = match self.vpn_interface_mtu {
            Some(vpn) => vpn.min(underlay),
            None => underlay,
        };
        base.saturating_sub(overhead).max(1280)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_are_the_seeds() {
        let env = env_of(&[("gateway", "pod-gateway"), ("K8S_DNS_ips", "10.96.0.10")]);
        let s = Settings::from_raw(&Raw::resolve(None, &env).unwrap()).unwrap();
        assert_eq!(s.gateway_name, "pod-gateway");
        assert_eq!(s.k8s_dns_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.vxlan_id, 42);
        assert_eq!(s.vxlan_port, 0);
        assert_eq!(s.tunnel4.net, "172.16.0.0/24".parse().unwrap());
        assert_eq!(s.tunnel4.gateway, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(s.tunnel4.first_dynamic, Ipv4Addr::new(172, 16, 0, 20));
        assert_eq!(s.tunnel4.last_dynamic, Ipv4Addr::new(172, 16, 0, 254));
        assert_eq!(s.vpn_interface.as_deref(), Some("tun0"));
        assert!(s.vpn_block_other_traffic);
        assert_eq!(s.vpn_traffic_port, 443);
        assert_eq!(s.vpn_local_cidrs.len(), 2);
        assert_eq!(s.dns_local_domains, vec!["local"]);
        assert!(s.dnssec);
        assert_eq!(s.dhcp_lease_time, Duration::from_secs(12 * 3600));
        assert_eq!(s.tunnel6, None);
    }

    #[test]
    fn env_over_file_over_default() {
        let env = env_of(&[("VXLAN_PORT", "4789")]);
        let file = "VXLAN_PORT=1\nVXLAN_ID=7\n";
        let raw = Raw::resolve(Some(("/config/settings.sh", file)), &env).unwrap();
        let s = Settings::from_raw(&raw).unwrap();
        assert_eq!(s.vxlan_port, 4789);
        assert_eq!(s.vxlan_id, 7);
        assert_eq!(
            raw.values[VXLAN_ID].1,
            Origin::File {
                path: "/config/settings.sh".into(),
                line: 2
            }
        );
    }

    #[test]
    fn network_in_both_forms() {
        for (net, first, gw, dyn0, last) in [
            ("10.1.2", "20", "10.1.2.1", "10.1.2.20", "10.1.2.254"),
            (
                "172.20.0.0/24",
                "20",
                "172.20.0.1",
                "172.20.0.20",
                "172.20.0.254",
            ),
            (
                "172.20.0.0/16",
                "300",
                "172.20.0.1",
                "172.20.1.44",
                "172.20.255.254",
            ),
            (
                "172.20.0.77/28",
                "5",
                "172.20.0.65",
                "172.20.0.69",
                "172.20.0.78",
            ),
        ] {
            let t = tunnel4(net, first).unwrap();
            assert_eq!(t.gateway.to_string(), gw, "{net}");
            assert_eq!(t.first_dynamic.to_string(), dyn0, "{net}");
            assert_eq!(t.last_dynamic.to_string(), last, "{net}");
        }
        for (net, first) in [
            ("10.1", "20"),
            ("10.1.2.3.4", "20"),
            ("x.y.z", "20"),
            ("10.0.0.0/30", "2"),
            ("10.1.2", "255"),
            ("10.1.2", "1"),
            ("fd00::/64", "2"),
        ] {
            assert!(tunnel4(net, first).is_err(), "{net} {first}");
        }
    }

    #[test]
    fn errors_name_the_setting_value_and_origin() {
        let env = env_of(&[]);
        for (file, name, value) in [
            ("VXLAN_ID=16777216", "VXLAN_ID", "16777216"),
            ("VXLAN_PORT=http", "VXLAN_PORT", "http"),
            (
                "VPN_INTERFACE=averyveryverylongname",
                "VPN_INTERFACE",
                "averyveryverylongname",
            ),
            (
                "VPN_LOCAL_CIDRS=\"10.0.0.0/8 nope\"",
                "VPN_LOCAL_CIDRS",
                "10.0.0.0/8 nope",
            ),
            (
                "GATEWAY_ENABLE_DNSSEC=maybe",
                "GATEWAY_ENABLE_DNSSEC",
                "maybe",
            ),
            ("VPN_INTERFACE_MTU=100", "VPN_INTERFACE_MTU", "100"),
            ("DHCP_LEASE_TIME=5s", "DHCP_LEASE_TIME", "5s"),
            (
                "DNS_LOCAL_CIDRS=10.0.0.0/8",
                "DNS_LOCAL_CIDRS",
                "10.0.0.0/8",
            ),
            (
                "K8S_DNS_IPS=\"10.96.0.10 ;; connection timed out\"",
                "K8S_DNS_IPS",
                "10.96.0.10 ;; connection timed out",
            ),
        ] {
            let raw = Raw::resolve(Some(("s.sh", &format!("\n{file}\n"))), &env).unwrap();
            let e = Settings::from_raw(&raw).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{name}={value:?} (from s.sh line 2) is invalid")),
                "{e}"
            );
        }
        let e = Raw::resolve(Some(("s.sh", "X=$(id)\n")), &env).unwrap_err();
        assert!(matches!(e, SettingsError::Shell(_)), "{e}");
    }

    #[test]
    fn mtu_takes_the_smaller_and_the_overhead_of_the_underlay() {
        let env = env_of(&[]);
        let mut s = Settings::from_raw(&Raw::resolve(None, &env).unwrap()).unwrap();
        assert_eq!(s.vxlan_mtu(1500, false), 1450);
        assert_eq!(s.vxlan_mtu(1500, true), 1430);
        // The seed always took VPN_INTERFACE_MTU, even above the underlay's.
        s.vpn_interface_mtu = Some(1420);
        assert_eq!(s.vxlan_mtu(1500, false), 1370);
        s.vpn_interface_mtu = Some(9000);
        assert_eq!(s.vxlan_mtu(1500, false), 1450);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("150ms").unwrap(), Duration::from_millis(150));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        for bad in ["", "0s", "1w", "-1s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod docs_tests {
    /// docs/configuration.md carries the gateway's knob table between markers;
    /// `GW_UPDATE_DOCS=1 cargo test -p gateway docs` rewrites it.
    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        knobs::check_doc_table(path, "gateway", super::KNOBS).unwrap();
    }
}
