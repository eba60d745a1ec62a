//! The desired ruleset (pure) and applying it.

use ipnet::IpNet;
use mesh_config::{BackendChoice, InitSettings, TABLE};
use netrules::{
    Action, AddrSet, Backend, Chain, Family, Hook, Match, Observed, Protocol, Rule, Table,
};

/// Chain names, as an operator sees them in `nft list ruleset` / `iptables-save`.
pub const INBOUND_CHAIN: &str = "PROXY_INBOUND";
pub const OUTBOUND_CHAIN: &str = "PROXY_OUTBOUND";
const SKIP4: &str = "skip_out4";
const SKIP6: &str = "skip_out6";

fn rule(matches: Vec<Match>, action: Action, comment: &str) -> Rule {
    Rule {
        matches,
        action,
        comment: format!("ghostwire mesh: {comment}"),
    }
}

/// The ruleset `proxy-init` applies for these settings.
pub fn table(s: &InitSettings) -> Table {
    let set = |name: &str, family| AddrSet {
        name: name.into(),
        family,
        elements: s
            .skip_outbound_cidrs
            .iter()
            .filter(|c| netrules_family(c) == family)
            .copied()
            .collect(),
    };
    let mut sets = vec![set(SKIP4, Family::Ipv4)];
    if s.ipv6 {
        sets.push(set(SKIP6, Family::Ipv6));
    }

    let mut inbound: Vec<Rule> = s
        .skip_inbound_ports
        .iter()
        .map(|&p| {
            rule(
                vec![Match::DstPort(Protocol::Tcp, p)],
                Action::Return,
                "skipped inbound port",
            )
        })
        .collect();
    inbound.push(rule(
        vec![Match::L4(Protocol::Tcp)],
        Action::Redirect(s.inbound_port),
        "inbound to proxy",
    ));

    let mut outbound = vec![
        rule(
            vec![Match::SkUid(s.proxy_uid)],
            Action::Return,
            "traffic of the proxy uid",
        ),
        rule(
            vec![Match::OutIface("lo".into())],
            Action::Return,
            "pod-local traffic",
        ),
    ];
    outbound.extend(s.skip_outbound_ports.iter().map(|&p| {
        rule(
            vec![Match::DstPort(Protocol::Tcp, p)],
            Action::Return,
            "skipped outbound port",
        )
    }));
    outbound.extend(sets.iter().map(|set| {
        rule(
            vec![Match::DstInSet(set.name.clone())],
            Action::Return,
            "skipped outbound CIDRs",
        )
    }));
    outbound.push(rule(
        vec![Match::L4(Protocol::Tcp)],
        Action::Redirect(s.outbound_port),
        "outbound to proxy",
    ));

    // The nftables table is `inet` (both families); without IPv6, say so in the jumps.
    let mut jump_matches = vec![Match::L4(Protocol::Tcp)];
    if !s.ipv6 {
        jump_matches.insert(0, Match::Nfproto(Family::Ipv4));
    }
    let jump = |to: &str| {
        vec![rule(
            jump_matches.clone(),
            Action::Jump(to.into()),
            "redirect TCP",
        )]
    };
    Table {
        name: TABLE.into(),
        sets,
        maps: vec![],
        chains: vec![
            Chain {
                name: INBOUND_CHAIN.into(),
                hook: None,
                rules: inbound,
            },
            Chain {
                name: OUTBOUND_CHAIN.into(),
                hook: None,
                rules: outbound,
            },
            Chain {
                name: "prerouting".into(),
                hook: Some(Hook::Prerouting),
                rules: jump(INBOUND_CHAIN),
            },
            Chain {
                name: "output".into(),
                hook: Some(Hook::Output),
                rules: jump(OUTBOUND_CHAIN),
            },
        ],
    }
}

fn netrules_family(c: &IpNet) -> Family {
    match c {
        IpNet::V4(_) => Family::Ipv4,
        IpNet::V6(_) => Family::Ipv6,
    }
}

/// The backend the settings ask for (auto: nftables where it works, else iptables).
pub fn backend(s: &InitSettings) -> netrules::Result<Backend> {
    match s.backend {
        BackendChoice::Auto => Backend::detect(),
        BackendChoice::Fixed(kind) => Ok(Backend::new(kind)),
    }
}

/// Applies the ruleset in one transaction and reads it back; applying twice changes nothing.
pub fn apply(b: &Backend, s: &InitSettings) -> netrules::Result<Observed> {
    b.apply(&table(s))
}

/// Removes every rule of proxy-init (both families) and nothing else.
pub fn cleanup(b: &Backend) -> netrules::Result<()> {
    b.cleanup(TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::Sources;
    use netrules::{BackendKind, IptablesFlavour};

    fn settings(pairs: &[(&str, &str)]) -> InitSettings {
        Sources {
            given: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Sources::default()
        }
        .init_settings()
        .unwrap()
    }

    #[test]
    fn default_table_is_valid_and_exempts_uid_loopback_and_skips() {
        let t = table(&settings(&[(mesh_config::SKIP_OUTBOUND_PORTS, "443")]));
        t.validate().unwrap();
        let out = t.chain(OUTBOUND_CHAIN).unwrap();
        assert_eq!(out.rules[0].matches, vec![Match::SkUid(1337)]);
        assert_eq!(out.rules[1].matches, vec![Match::OutIface("lo".into())]);
        assert_eq!(out.rules.last().unwrap().action, Action::Redirect(5000));
        assert!(
            out.rules
                .iter()
                .any(|r| r.matches.contains(&Match::DstPort(Protocol::Tcp, 443)))
        );
        let inb = t.chain(INBOUND_CHAIN).unwrap();
        assert_eq!(inb.rules[0].matches[0], Match::DstPort(Protocol::Tcp, 4191));
        assert_eq!(inb.rules.last().unwrap().action, Action::Redirect(4000));
        assert_eq!(t.set(SKIP4).unwrap().elements.len(), 1);
        assert_eq!(t.set(SKIP6).unwrap().elements.len(), 1);
    }

    #[test]
    fn renders_for_both_backends() {
        let t = table(&settings(&[]));
        let nft = Backend::new(BackendKind::Nftables).render(&t).unwrap();
        assert!(nft.contains("meta skuid 1337 return"), "{nft}");
        assert!(nft.contains("oifname \"lo\" return"), "{nft}");
        assert!(nft.contains("tcp dport 4191 return"), "{nft}");
        assert!(nft.contains("meta l4proto tcp redirect to :5000"), "{nft}");
        let ipt = Backend::new(BackendKind::Iptables(IptablesFlavour::Legacy))
            .expected(&t)
            .unwrap();
        let out4 = &ipt.chains[&format!("{OUTBOUND_CHAIN}@ipv4")];
        assert!(out4[0].contains("-m owner --uid-owner 1337"), "{out4:?}");
        assert!(out4[1].starts_with("-A PROXY_OUTBOUND -o lo "), "{out4:?}");
        assert!(
            out4.iter()
                .any(|l| l.ends_with("-j REDIRECT --to-ports 5000")),
            "{out4:?}"
        );
        assert!(ipt.chains.contains_key(&format!("{INBOUND_CHAIN}@ipv6")));
        let no6 = table(&settings(&[(mesh_config::IPV6, "false")]));
        let ipt = Backend::new(BackendKind::Iptables(IptablesFlavour::Legacy))
            .expected(&no6)
            .unwrap();
        assert!(ipt.chains.keys().all(|k| k.ends_with("@ipv4")));
        let nft = Backend::new(BackendKind::Nftables).render(&no6).unwrap();
        assert!(
            nft.contains("meta nfproto ipv4 meta l4proto tcp jump"),
            "{nft}"
        );
    }
}
