//! `ghostwire gateway init`: the gateway Pod's side of the tunnel.
//!
//! Order matters: the rules (kill switch included) are applied first, in one nftables
//! transaction, then forwarding is switched on, then `vxlan0` is made and brought up — so no
//! packet is forwarded before the kill switch is in place. Every step is idempotent: running
//! init again leaves the same rules, link, addresses, routes and policy rule.

use crate::iproute::{self, IpError, NextHop};
use crate::natconf::NatEntry;
use crate::settings::Settings;
use ipnet::IpNet;
use netrules::{Action, Backend, BackendKind, Chain, Hook, Match, Protocol, Rule, Table};
use std::net::IpAddr;

/// The nftables table (family inet) that holds every gateway rule.
pub const TABLE: &str = "ghostwire_gateway";
/// The tunnel device, in the gateway and in every client.
pub const VXLAN_DEV: &str = "vxlan0";
/// Priority of the `suppress_prefixlength 0` policy rule (as pod-gateway).
pub const SUPPRESS_RULE_PREF: u32 = 50;
/// The kernel's VXLAN port when VXLAN_PORT is 0.
pub const KERNEL_VXLAN_PORT: u16 = 8472;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Ip(#[from] IpError),
    #[error("the kernel refused the gateway rules: {0}")]
    Rules(#[from] netrules::Error),
    #[error("cannot set sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no default route in this network namespace: cannot tell the Pod's own interface and gateway"
    )]
    NoDefaultRoute,
    #[error("after init, {what} is not as applied: {detail}")]
    Verify { what: &'static str, detail: String },
}

fn rule(matches: Vec<Match>, action: Action, comment: &str) -> Rule {
    Rule {
        matches,
        action,
        comment: format!("ghostwire gateway: {comment}"),
    }
}

/// The VXLAN port clients send to.
pub fn vxlan_port(s: &Settings) -> u16 {
    if s.vxlan_port == 0 {
        KERNEL_VXLAN_PORT
    } else {
        s.vxlan_port
    }
}

/// Every rule of the gateway, from the settings and the nat files. Pure.
pub fn table(s: &Settings, nat: &[NatEntry]) -> Table {
    let vx = VXLAN_DEV.to_string();
    let mut tunnels = vec![IpNet::V4(s.tunnel4.net)];
    tunnels.extend(s.tunnel6.map(|t| IpNet::V6(t.net)));

    // Forwarded traffic: MSS first (it must apply to every SYN that passes).
    let mut forward = vec![rule(
        vec![Match::TcpSyn],
        Action::ClampMss,
        "clamp TCP MSS to the route MTU",
    )];
    let mut output = vec![];
    let mut prerouting = vec![];
    let mut postrouting = vec![rule(
        vec![Match::OutIface(vx.clone())],
        Action::Return,
        "no NAT inside the tunnel",
    )];
    if let Some(vpn) = &s.vpn_interface {
        forward.push(rule(vec![Match::Established], Action::Accept, "replies"));
        for e in nat {
            for f in &e.forwards {
                prerouting.push(rule(
                    vec![
                        Match::InIface(vpn.clone()),
                        Match::DstPort(f.protocol, f.port),
                    ],
                    Action::Dnat(std::net::SocketAddr::new(e.addr, f.target)),
                    &format!("forward {}:{} to {}", f.protocol, f.port, e.name),
                ));
                forward.push(rule(
                    vec![
                        Match::InIface(vpn.clone()),
                        Match::Dst(IpNet::from(e.addr)),
                        Match::DstPort(f.protocol, f.target),
                    ],
                    Action::Accept,
                    &format!("forwarded {}:{} to {}", f.protocol, f.port, e.name),
                ));
            }
        }
        forward.push(rule(
            vec![Match::InIface(vpn.clone())],
            Action::Drop,
            "nothing else from the VPN",
        ));
        if let Some(ip) = s.snat_ip {
            let net = tunnels.iter().find(|n| same_family(n, &ip)).copied();
            if let Some(net) = net {
                postrouting.push(rule(
                    vec![Match::OutIface(vpn.clone()), Match::Src(net)],
                    Action::Snat(ip),
                    "SNAT_IP on the VPN",
                ));
            }
        }
    }
    for net in &tunnels {
        postrouting.push(rule(
            vec![Match::Src(*net)],
            Action::Masquerade,
            "tunnel traffic leaving",
        ));
    }
    if s.vpn_block_other_traffic {
        let vpn = s.vpn_interface.clone();
        forward.push(rule(
            vec![Match::InIface(vx.clone()), Match::OutIface(vx.clone())],
            Action::Accept,
            "kill switch: client to client",
        ));
        if let Some(vpn) = &vpn {
            forward.push(rule(
                vec![Match::InIface(vx.clone()), Match::OutIface(vpn.clone())],
                Action::Accept,
                "kill switch: clients out through the VPN",
            ));
            forward.push(rule(
                vec![Match::InIface(vpn.clone()), Match::OutIface(vx.clone())],
                Action::Accept,
                "kill switch: the VPN to clients",
            ));
        }
        output.push(rule(
            vec![Match::OutIface("lo".into())],
            Action::Accept,
            "kill switch: loopback",
        ));
        output.push(rule(
            vec![Match::OutIface(vx.clone())],
            Action::Accept,
            "kill switch: the tunnel",
        ));
        if let Some(vpn) = &vpn {
            output.push(rule(
                vec![Match::OutIface(vpn.clone())],
                Action::Accept,
                "kill switch: the VPN",
            ));
        }
        output.push(rule(
            vec![Match::DstPort(Protocol::Udp, vxlan_port(s))],
            Action::Accept,
            "kill switch: VXLAN to clients",
        ));
        for p in [Protocol::Tcp, Protocol::Udp] {
            output.push(rule(
                vec![Match::DstPort(p, s.vpn_traffic_port)],
                Action::Accept,
                "kill switch: VPN_TRAFFIC_PORT",
            ));
        }
        output.push(rule(
            vec![Match::Established],
            Action::Accept,
            "kill switch: replies",
        ));
        for net in &s.vpn_local_cidrs {
            output.push(rule(
                vec![Match::Dst(*net)],
                Action::Accept,
                "kill switch: VPN_LOCAL_CIDRS",
            ));
            forward.push(rule(
                vec![Match::InIface(vx.clone()), Match::Dst(*net)],
                Action::Accept,
                "kill switch: clients to VPN_LOCAL_CIDRS",
            ));
        }
        forward.push(rule(
            vec![],
            Action::Drop,
            "kill switch: nothing else is forwarded",
        ));
        output.push(rule(
            vec![],
            Action::Drop,
            "kill switch: nothing else leaves",
        ));
    }
    let chain = |name: &str, hook, rules| Chain {
        name: name.into(),
        hook: Some(hook),
        rules,
    };
    let mut chains = vec![
        chain("forward", Hook::FilterForward, forward),
        chain("prerouting", Hook::Prerouting, prerouting),
        chain("postrouting", Hook::Postrouting, postrouting),
    ];
    if !output.is_empty() {
        chains.push(chain("output", Hook::FilterOutput, output));
    }
    Table {
        name: TABLE.into(),
        sets: vec![],
        maps: vec![],
        chains,
    }
}

fn same_family(n: &IpNet, a: &IpAddr) -> bool {
    matches!(
        (n, a),
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
    )
}

/// What init needs to know of the Pod's own network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// The Pod's interface (of its IPv4 default route) and its MTU.
    pub dev: String,
    pub mtu: u32,
    /// The Pod's own IPv4 and IPv6 gateways, for VPN_LOCAL_CIDRS.
    pub gateway4: Option<NextHop>,
    pub gateway6: Option<NextHop>,
}

impl Underlay {
    /// Reads the default routes and the interface MTU.
    pub fn observe() -> Result<Underlay, InitError> {
        let gateway4 = iproute::default_routes("-4")?.into_iter().next();
        let gateway6 = iproute::default_routes("-6")?.into_iter().next();
        let dev = gateway4
            .as_ref()
            .or(gateway6.as_ref())
            .map(|h| h.dev.clone())
            .ok_or(InitError::NoDefaultRoute)?;
        let mtu = iproute::link(&dev)?
            .and_then(|l| l["mtu"].as_u64())
            .unwrap_or(1500) as u32;
        Ok(Underlay {
            dev,
            mtu,
            gateway4,
            gateway6,
        })
    }
}

/// The `ip -batch` scripts (IPv4/generic, then IPv6) that bring the link to the wanted state,
/// given whether vxlan0 exists as wanted and which suppress rules exist. Pure.
pub fn link_scripts(
    s: &Settings,
    u: &Underlay,
    vxlan_as_wanted: Option<bool>,
    suppress4: bool,
    suppress6: bool,
) -> (String, String) {
    let mut v4 = String::new();
    let mut v6 = String::new();
    if vxlan_as_wanted == Some(false) {
        v4.push_str(&format!("link del {VXLAN_DEV}\n"));
    }
    if vxlan_as_wanted != Some(true) {
        v4.push_str(&format!(
            "link add {VXLAN_DEV} type vxlan id {} dev {} dstport {}\n",
            s.vxlan_id, u.dev, s.vxlan_port
        ));
    }
    v4.push_str(&format!(
        "link set {VXLAN_DEV} mtu {}\naddr replace {}/{} dev {VXLAN_DEV}\n",
        s.vxlan_mtu(u.mtu, false),
        s.tunnel4.gateway,
        s.tunnel4.net.prefix_len()
    ));
    if let Some(t) = &s.tunnel6 {
        v4.push_str(&format!(
            "addr replace {}/{} dev {VXLAN_DEV} nodad\n",
            t.gateway,
            t.net.prefix_len()
        ));
    }
    v4.push_str(&format!("link set {VXLAN_DEV} up\n"));
    // VPN_LOCAL_CIDRS stay on the Pod's own gateway whatever routes the VPN adds.
    for net in &s.vpn_local_cidrs {
        let (hop, out) = match net {
            IpNet::V4(_) => (&u.gateway4, &mut v4),
            IpNet::V6(_) => (&u.gateway6, &mut v6),
        };
        if let Some(h) = hop {
            let via = h.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            out.push_str(&format!("route replace {net}{via} dev {}\n", h.dev));
        }
    }
    let suppress = format!(
        "rule add from all lookup main suppress_prefixlength 0 pref {SUPPRESS_RULE_PREF}\n"
    );
    if !suppress4 {
        v4.push_str(&suppress);
    }
    if !suppress6 {
        v6.push_str(&suppress);
    }
    (v4, v6)
}

/// Whether an existing vxlan0 is the one wanted (id, port, underlay device).
fn vxlan_matches(link: &serde_json::Value, s: &Settings, u: &Underlay) -> bool {
    let data = &link["linkinfo"]["info_data"];
    link["linkinfo"]["info_kind"].as_str() == Some("vxlan")
        && data["id"].as_u64() == Some(u64::from(s.vxlan_id))
        && data["port"].as_u64() == Some(u64::from(vxlan_port(s)))
        && data["link"].as_str().is_none_or(|l| l == u.dev)
}

fn sysctl(key: &str, value: &str) -> Result<(), InitError> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| InitError::Sysctl {
        key: key.replace('/', "."),
        source,
    })
}

/// What init did, for the log and the tests.
#[derive(Debug, Clone)]
pub struct Applied {
    pub underlay: Underlay,
    pub vxlan_mtu: u32,
    pub rules: netrules::Observed,
}

/// Applies everything in the current network namespace (see the module docs for the order).
pub fn init(s: &Settings, nat: &[NatEntry]) -> Result<Applied, InitError> {
    let t = table(s, nat);
    let rules = Backend::new(BackendKind::Nftables).apply(&t)?;
    tracing::info!(
        table = TABLE,
        kill_switch = s.vpn_block_other_traffic,
        "gateway rules applied"
    );
    sysctl("net/ipv4/ip_forward", "1")?;
    if s.tunnel6.is_some() {
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    let u = Underlay::observe()?;
    let existing = iproute::link(VXLAN_DEV)?.map(|l| vxlan_matches(&l, s, &u));
    let (v4, v6) = link_scripts(
        s,
        &u,
        existing,
        iproute::has_suppress_rule("-4", SUPPRESS_RULE_PREF)?,
        iproute::has_suppress_rule("-6", SUPPRESS_RULE_PREF)?,
    );
    iproute::batch("", &v4)?;
    iproute::batch("-6", &v6)?;
    // Read back what matters to clients.
    let link = iproute::link(VXLAN_DEV)?.ok_or(InitError::Verify {
        what: "vxlan0",
        detail: "missing".into(),
    })?;
    let mtu = s.vxlan_mtu(u.mtu, false);
    if !vxlan_matches(&link, s, &u) || link["mtu"].as_u64() != Some(u64::from(mtu)) {
        return Err(InitError::Verify {
            what: "vxlan0",
            detail: format!("{link}"),
        });
    }
    let addrs = iproute::addresses(VXLAN_DEV)?;
    let want = IpNet::new(IpAddr::V4(s.tunnel4.gateway), s.tunnel4.net.prefix_len()).ok();
    if want.is_some_and(|w| !addrs.contains(&w)) {
        return Err(InitError::Verify {
            what: "vxlan0 addresses",
            detail: format!("{addrs:?}"),
        });
    }
    tracing::info!(dev = VXLAN_DEV, mtu, underlay = u.dev, "tunnel up");
    Ok(Applied {
        underlay: u,
        vxlan_mtu: mtu,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natconf::{Plan, parse};
    use crate::settings::Raw;

    fn settings(env: &'static [(&'static str, &'static str)]) -> Settings {
        let f = move |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        Settings::from_raw(&Raw::resolve(None, &f).unwrap()).unwrap()
    }

    fn comments(t: &Table, chain: &str) -> Vec<String> {
        t.chain(chain)
            .map(|c| c.rules.iter().map(|r| r.comment.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn default_table_is_valid_and_ends_in_the_kill_switch() {
        let s = settings(&[]);
        let nat = parse("nat.conf", "web 10 tcp:8080:80", Plan::V4(&s.tunnel4)).unwrap();
        let t = table(&s, &nat);
        t.validate().unwrap();
        let fwd = comments(&t, "forward");
        assert!(
            fwd[0].contains("clamp"),
            "MSS clamping comes first: {fwd:?}"
        );
        assert!(fwd.last().unwrap().contains("nothing else is forwarded"));
        assert!(
            comments(&t, "output")
                .last()
                .unwrap()
                .contains("nothing else leaves")
        );
        let pre = &t.chain("prerouting").unwrap().rules[0];
        assert_eq!(
            pre.action,
            Action::Dnat("172.16.0.10:80".parse().unwrap()),
            "the target port of nat.conf"
        );
        assert!(pre.matches.contains(&Match::DstPort(Protocol::Tcp, 8080)));
    }

    #[test]
    fn without_kill_switch_nothing_is_dropped_but_vpn_input() {
        let s = settings(&[
            ("VPN_BLOCK_OTHER_TRAFFIC", "false"),
            ("SNAT_IP", "198.18.0.2"),
        ]);
        let t = table(&s, &[]);
        t.validate().unwrap();
        assert!(t.chain("output").is_none());
        let drops: Vec<&Rule> = t
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| r.action == Action::Drop)
            .collect();
        assert_eq!(drops.len(), 1);
        assert!(drops[0].matches.contains(&Match::InIface("tun0".into())));
        assert!(
            t.chain("postrouting")
                .unwrap()
                .rules
                .iter()
                .any(|r| r.action == Action::Snat("198.18.0.2".parse().unwrap()))
        );
    }

    #[test]
    fn link_scripts_only_do_what_is_missing() {
        let s = settings(&[("VXLAN_PORT", "4789"), ("VPN_INTERFACE_MTU", "1420")]);
        let u = Underlay {
            dev: "eth0".into(),
            mtu: 1500,
            gateway4: Some(NextHop {
                gateway: Some("10.244.0.1".parse().unwrap()),
                dev: "eth0".into(),
            }),
            gateway6: None,
        };
        let (v4, v6) = link_scripts(&s, &u, None, false, false);
        assert!(v4.contains("link add vxlan0 type vxlan id 42 dev eth0 dstport 4789\n"));
        assert!(v4.contains("link set vxlan0 mtu 1370\n"));
        assert!(v4.contains("route replace 10.0.0.0/8 via 10.244.0.1 dev eth0\n"));
        assert!(v6.contains("suppress_prefixlength 0 pref 50"));
        let (v4, v6) = link_scripts(&s, &u, Some(true), true, true);
        assert!(!v4.contains("link add") && !v4.contains("rule add") && v6.is_empty());
        let (v4, _) = link_scripts(&s, &u, Some(false), true, true);
        assert!(v4.starts_with("link del vxlan0\nlink add"));
    }
}
