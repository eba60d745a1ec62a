//! A normalised dump of every NAT/filter rule in the calling thread's network
//! namespace, for checking that a namespace is left exactly as it was found.

use crate::Result;
use crate::exec::run;
use serde_json::Value;

/// Every rule, set, map and user chain in the namespace, from nftables (which
/// includes iptables-nft) and from legacy iptables, sorted, with kernel handles
/// and counter values dropped. Tables and built-in chains are left out: iptables-nft creates
/// those on first use and leaves them empty, which changes no packet.
pub fn fingerprint() -> Result<String> {
    let json: Value = serde_json::from_str(&run("nft", &["-j", "list", "ruleset"], None)?)
        .map_err(|e| crate::Error::Parse {
            tool: "nft -j list ruleset",
            reason: e.to_string(),
        })?;
    let mut items: Vec<String> = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i.get("rule").is_some()
                || i.get("set").is_some()
                || i.get("map").is_some()
                || i.get("chain").is_some_and(|c| c.get("hook").is_none())
        })
        .map(|i| {
            let mut i = i.clone();
            if let Some(obj) = i.as_object_mut() {
                for v in obj.values_mut() {
                    if let Some(inner) = v.as_object_mut() {
                        inner.remove("handle");
                        // Counters count packets, not rules: a packet through a chain
                        // (the switch's self-test probe, say) changes no rule.
                        for e in inner
                            .get_mut("expr")
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(c) = e.get_mut("counter") {
                                *c = Value::Null;
                            }
                        }
                    }
                }
            }
            i.to_string()
        })
        .collect();
    for tool in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        // Hosts without legacy iptables have nothing there to compare.
        let Ok(save) = run(tool, &[], None) else {
            continue;
        };
        items.extend(
            save.lines()
                .filter(|l| l.starts_with("-A") || (l.starts_with(':') && !l.contains("ACCEPT")))
                .map(|l| format!("{tool}: {l}")),
        );
    }
    items.sort();
    Ok(items.join("\n"))
}
