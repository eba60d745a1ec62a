//! Who else rewrites addresses in this network namespace: every NAT base chain of
//! every nftables table (iptables-nft's `nat` table included) and the iptables-legacy
//! `nat` table, with its hook, its priority and how many rules it holds.
//!
//! Netfilter gives a connection one destination NAT binding: the NAT chains of a hook
//! run in priority order (at equal priority the chain registered last runs first), and
//! once one of them rewrites the destination the rest are not consulted for that
//! connection. So a second redirector in the namespace either bypasses ours or is
//! bypassed by it, and the priorities tell which.

use crate::netlink::{NFT_GETCHAIN, NFT_GETRULE, nft_dump_all};
use crate::nft_read::{be_u32, get, hook_name, string};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// One NAT chain in this namespace that is not ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatUser {
    /// `nftables` (iptables-nft shows up here too, as family ip/ip6 table `nat`) or
    /// `iptables-legacy`.
    pub source: &'static str,
    /// `ip`, `ip6` or `inet`.
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// `prerouting`, `output`, `postrouting` or `input`.
    pub hook: &'static str,
    pub priority: i32,
    /// How many rules the chain holds (iptables-legacy: in the built-in chain, jumps
    /// included); `None` when they could not be read.
    pub rules: Option<usize>,
}

fn family_name(f: u8) -> Option<&'static str> {
    match f {
        1 => Some("inet"),
        2 => Some("ip"),
        10 => Some("ip6"),
        _ => None,
    }
}

/// The NAT base chains of this namespace, leaving out table `own` of family inet.
pub fn nat_users(own: &str) -> Result<Vec<NatUser>> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| Error::Parse {
            tool: "netlink",
            reason: format!("{what}: {e}"),
        }
    };
    let mut out = Vec::new();
    let mut counts: BTreeMap<(u8, String, String), usize> = BTreeMap::new();
    for (f, r) in nft_dump_all(NFT_GETRULE).map_err(err("listing the rules of the namespace"))? {
        let key = (
            f,
            string(get(&r, 1)).unwrap_or_default(),
            string(get(&r, 2)).unwrap_or_default(),
        );
        *counts.entry(key).or_default() += 1;
    }
    for (f, c) in nft_dump_all(NFT_GETCHAIN).map_err(err("listing the chains of the namespace"))? {
        let Some(family) = family_name(f) else {
            continue;
        };
        let table = string(get(&c, 1)).unwrap_or_default();
        let chain = string(get(&c, 3)).unwrap_or_default();
        if (family == "inet" && table == own) || string(get(&c, 7)).as_deref() != Some("nat") {
            continue;
        }
        let Some(hook) = get(&c, 4).map(crate::netlink::Attr::inner) else {
            continue;
        };
        let hook = hook.as_slice();
        out.push(NatUser {
            source: "nftables",
            family,
            hook: hook_name(be_u32(get(hook, 1)).unwrap_or(u32::MAX)),
            priority: be_u32(get(hook, 2)).map_or(0, |p| p as i32),
            rules: Some(
                counts
                    .get(&(f, table.clone(), chain.clone()))
                    .copied()
                    .unwrap_or(0),
            ),
            table,
            chain,
        });
    }
    out.extend(legacy_nat_users(own));
    Ok(out)
}

/// The iptables-legacy `nat` table, if this namespace has one (the kernel lists the
/// x_tables it instantiated per namespace in /proc/thread-self/net): its built-in
/// chains with rules, read with `iptables-legacy-save`, leaving out ours (`own:` tags).
fn legacy_nat_users(own: &str) -> Vec<NatUser> {
    let mut out = Vec::new();
    for (names, family, save) in [
        ("ip_tables_names", "ip", "iptables-legacy-save"),
        ("ip6_tables_names", "ip6", "ip6tables-legacy-save"),
    ] {
        let listed = std::fs::read_to_string(format!("/proc/thread-self/net/{names}"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == "nat"));
        if !listed {
            continue;
        }
        let saved = crate::exec::run(save, &["-t", "nat"], None).ok();
        let tag = format!("{own}:");
        let mut rules: BTreeMap<&'static str, usize> = BTreeMap::new();
        for chain in ["PREROUTING", "OUTPUT", "INPUT", "POSTROUTING"] {
            rules.insert(chain, 0);
        }
        if let Some(text) = &saved {
            for l in text.lines().filter(|l| !l.contains(&tag)) {
                let mut w = l.split_whitespace();
                if w.next() != Some("-A") {
                    continue;
                }
                if let Some(n) = w.next().and_then(|c| rules.get_mut(c)) {
                    *n += 1;
                }
            }
        }
        for (chain, n) in rules {
            let (hook, priority) = match chain {
                "PREROUTING" => ("prerouting", -100),
                "OUTPUT" => ("output", -100),
                "INPUT" => ("input", 100),
                _ => ("postrouting", 100),
            };
            out.push(NatUser {
                source: "iptables-legacy",
                family,
                table: "nat".into(),
                chain: chain.into(),
                hook,
                priority,
                rules: saved.as_ref().map(|_| n),
            });
        }
    }
    out
}
