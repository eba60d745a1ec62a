//! From a pairing plan to the netrules table: pure.

use crate::config::{Settings, TABLE};
use crate::pairing::Plan;
use netrules::{Action, AddrSet, Chain, DnatEntry, DnatMap, Family, Hook, Match, Rule, Table};

fn suffix(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "4",
        Family::Ipv6 => "6",
    }
}

/// The base chain that holds the jump (named after its hook).
pub fn base_chain(s: &Settings) -> &'static str {
    match s.jump_hook {
        Hook::Prerouting => "prerouting",
        _ => "output",
    }
}

/// The hook of the switch's base chain: `GW_JUMP_HOOK` at priority dstnat - 10, so the
/// switch's DNAT runs before other NAT users at dstnat (iptables' nat table, a mesh's
/// redirect) whichever registered first: netfilter applies only the first NAT binding.
pub fn base_hook(s: &Settings) -> Hook {
    match s.jump_hook {
        Hook::Prerouting | Hook::EarlyPrerouting => Hook::EarlyPrerouting,
        _ => Hook::EarlyOutput,
    }
}

/// The nftables priority of the switch's base chain on `hook` (`GW_JUMP_HOOK`).
pub fn base_priority(hook: Hook) -> i32 {
    match hook {
        Hook::Prerouting | Hook::EarlyPrerouting => Hook::EarlyPrerouting.nft_priority(),
        _ => Hook::EarlyOutput.nft_priority(),
    }
}

/// The switch's whole table. Exclusions come first, then one map lookup per
/// family; the base chain holds the single jump when `jump` is on.
pub fn table(plan: &Plan, s: &Settings, jump: bool) -> Table {
    let families = s.families();
    let families = families.as_slice();
    let mut t = Table {
        name: TABLE.to_string(),
        sets: vec![],
        maps: vec![],
        chains: vec![],
    };
    let mut nat = Chain {
        name: s.nat_chain.clone(),
        hook: None,
        rules: vec![],
    };
    for &f in families {
        let set = format!("exclude{}", suffix(f));
        t.sets.push(AddrSet {
            name: set.clone(),
            family: f,
            elements: s
                .exclude_cidrs
                .iter()
                .filter(|c| {
                    matches!(
                        (c, f),
                        (ipnet::IpNet::V4(_), Family::Ipv4) | (ipnet::IpNet::V6(_), Family::Ipv6)
                    )
                })
                .map(|c| c.trunc())
                .collect(),
        });
        nat.rules.push(Rule {
            matches: vec![Match::DstInSet(set)],
            action: Action::Return,
            comment: "excluded destinations (GW_EXCLUDE_CIDRS)".into(),
        });
    }
    for &f in families {
        let map = format!("preview{}", suffix(f));
        t.maps.push(DnatMap {
            name: map.clone(),
            family: f,
            entries: plan
                .mappings
                .iter()
                .filter(|m| m.family() == f)
                .map(|m| DnatEntry {
                    dst: m.active_addr.ip(),
                    protocol: m.protocol,
                    port: m.active_addr.port(),
                    to: m.preview_addr,
                })
                .collect(),
        });
        nat.rules.push(Rule {
            matches: vec![],
            action: Action::DnatMap(map),
            comment: "active ClusterIP to preview ClusterIP".into(),
        });
    }
    let jump_rules = if jump {
        vec![Rule {
            matches: vec![],
            action: Action::Jump(s.nat_chain.clone()),
            comment: "preview jump".into(),
        }]
    } else {
        vec![]
    };
    t.chains.push(nat);
    t.chains.push(Chain {
        name: base_chain(s).to_string(),
        hook: Some(base_hook(s)),
        rules: jump_rules,
    });
    t
}

/// Whether the kernel holds the jump as `table(.., jump = true)` would put it.
pub fn jump_is_on(
    backend: &netrules::Backend,
    observed: &netrules::Observed,
    with_jump: &Table,
    s: &Settings,
) -> netrules::Result<bool> {
    let want = backend.expected(with_jump)?;
    let base = base_chain(s);
    let hook = s.jump_hook.iptables_chain();
    let keys: Vec<&String> = want
        .chains
        .keys()
        .filter(|k| {
            let c = k.split('@').next().unwrap_or_default();
            c == base || c == hook
        })
        .collect();
    Ok(!keys.is_empty()
        && keys
            .iter()
            .all(|k| observed.chains.get(*k) == want.chains.get(*k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::{
        plan,
        tests::{settings, svc},
    };
    use netrules::Protocol;

    #[test]
    fn builds_exclusions_first_then_maps_and_an_optional_jump() {
        let s = settings(&[
            ("GW_IPV6", "true"),
            ("GW_EXCLUDE_CIDRS", "169.254.169.254/32,fd00::/8"),
        ]);
        let p = plan(
            &[
                svc(
                    "a",
                    &["10.96.0.5", "fd00:96::5"],
                    &[(None, 80, Protocol::Tcp)],
                ),
                svc(
                    "a-preview",
                    &["10.96.0.6", "fd00:96::6"],
                    &[(None, 80, Protocol::Tcp)],
                ),
            ],
            &s,
        );
        let t = table(&p, &s, false);
        t.validate().unwrap();
        let nat = t.chain("CANARY_DNAT").unwrap();
        assert!(matches!(nat.rules[0].action, Action::Return));
        assert!(matches!(nat.rules[1].action, Action::Return));
        assert!(matches!(nat.rules[2].action, Action::DnatMap(_)));
        assert_eq!(t.map("preview4").unwrap().entries.len(), 1);
        assert_eq!(t.map("preview6").unwrap().entries.len(), 1);
        assert_eq!(t.set("exclude6").unwrap().elements.len(), 1);
        assert!(t.chain("output").unwrap().rules.is_empty());
        let on = table(&p, &s, true);
        assert_eq!(on.chain("output").unwrap().rules.len(), 1);
        // Only the jump differs between on and off.
        assert_eq!(on.maps, t.maps);
    }

    #[test]
    fn hook_and_chain_name_come_from_settings() {
        let s = settings(&[
            ("GW_JUMP_HOOK", "PREROUTING"),
            ("GW_NAT_CHAIN", "CANARY_V2"),
        ]);
        let t = table(&Plan::default(), &s, true);
        t.validate().unwrap();
        let base = t.chain("prerouting").unwrap();
        assert_eq!(base.hook, Some(Hook::EarlyPrerouting));
        assert_eq!(base.hook.unwrap().nft_priority(), -110);
        assert_eq!(base.rules[0].action, Action::Jump("CANARY_V2".into()));
        assert!(t.map("preview6").is_none());
    }
}
