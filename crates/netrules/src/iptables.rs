//! iptables: render a [`Table`] as one `iptables-restore --noflush` transaction
//! per address family, and parse `iptables-save` read-back.
//!
//! iptables has no owned tables, so ownership is carried by comments: every
//! rule ghostwire writes is commented `"<table>: …"`, and every chain it owns
//! ends with a tagged marker rule. Rules of others are never named, so they
//! survive every apply. Sets and maps are expanded into one rule per element.

use crate::model::{Action, Family, Match, ModelError, Table, addr_port};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

pub const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Our part of one family's `nat` table as `iptables-save` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owned {
    /// Chain name (built-in name for hooks) to the `-A …` lines that are ours, in order.
    pub chains: BTreeMap<String, Vec<String>>,
}

fn comment(tag: &str, c: &str) -> String {
    format!("-m comment --comment \"{tag} {c}\"")
}

/// The marker that makes an own chain recognisable even when it has no other rule.
fn marker(tag: &str, chain: &str) -> String {
    format!("-A {chain} {} -j RETURN", comment(tag, "owned chain"))
}

/// Which families a table has content for; IPv4 at least.
pub fn families(t: &Table) -> BTreeSet<Family> {
    let mut f: BTreeSet<Family> = t
        .sets
        .iter()
        .map(|s| s.family)
        .chain(t.maps.iter().map(|m| m.family))
        .collect();
    f.insert(Family::Ipv4);
    f
}

/// The `-A` lines of `t` for one family, exactly as `iptables-save` prints them.
pub fn expected(t: &Table, family: Family) -> Result<Owned> {
    let tag = t.tag();
    let mut owned = Owned::default();
    let unsupported = |chain: &str, what: &str| {
        Error::Model(ModelError::Mismatch {
            what: "chain",
            name: chain.to_string(),
            reason: format!("the iptables backend does not support {what} yet; use nftables"),
        })
    };
    for c in &t.chains {
        if c.hook.is_some_and(|h| h.is_filter()) {
            return Err(unsupported(&c.name, "filter chains"));
        }
        for r in &c.rules {
            if let Some(m) = r.matches.iter().find(|m| {
                matches!(
                    m,
                    Match::InIface(_)
                        | Match::Src(_)
                        | Match::Dst(_)
                        | Match::Established
                        | Match::TcpSyn
                )
            }) {
                return Err(unsupported(&c.name, &format!("the match {m:?}")));
            }
        }
        let name = c.hook.map_or(c.name.as_str(), |h| h.iptables_chain());
        let lines = owned.chains.entry(name.to_string()).or_default();
        for r in &c.rules {
            let cm = comment(&tag, &r.comment);
            let mut dsts: Vec<Option<String>> = vec![None];
            // Options in the order iptables-save prints them: -d, -o, -p, then modules.
            let (mut oif, mut proto, mut mods) = (String::new(), String::new(), String::new());
            let mut other_family = false;
            let mut sets = 0;
            for m in &r.matches {
                match m {
                    Match::DstInSet(s) => {
                        sets += 1;
                        let set = t.set(s).ok_or_else(|| ModelError::Unknown {
                            chain: c.name.clone(),
                            what: "set",
                            name: s.clone(),
                        })?;
                        other_family |= set.family != family;
                        dsts = set
                            .normalized()
                            .iter()
                            .map(|e| Some(e.to_string()))
                            .collect();
                    }
                    Match::OutIface(i) => oif = format!(" -o {i}"),
                    Match::L4(p) => proto = format!(" -p {p}"),
                    Match::DstPort(p, n) => proto = format!(" -p {p} -m {p} --dport {n}"),
                    Match::SkUid(u) => mods.push_str(&format!(" -m owner --uid-owner {u}")),
                    Match::Nfproto(f) => other_family |= *f != family,
                    _ => {}
                }
            }
            if sets > 1 {
                return Err(Error::Model(ModelError::Mismatch {
                    what: "chain",
                    name: c.name.clone(),
                    reason: "the iptables backend supports at most one set match per rule".into(),
                }));
            }
            if other_family {
                continue;
            }
            for d in dsts {
                let d = d.map(|d| format!(" -d {d}")).unwrap_or_default();
                let head = format!("-A {name}{d}{oif}{proto}{mods}");
                match &r.action {
                    Action::Return => lines.push(format!("{head} {cm} -j RETURN")),
                    Action::Jump(j) => lines.push(format!("{head} {cm} -j {j}")),
                    Action::Redirect(p) => {
                        lines.push(format!("{head} {cm} -j REDIRECT --to-ports {p}"))
                    }
                    Action::Accept
                    | Action::Drop
                    | Action::Masquerade
                    | Action::Snat(_)
                    | Action::Dnat(_)
                    | Action::ClampMss => return Err(unsupported(&c.name, "this action")),
                    Action::DnatMap(m) => {
                        let Some(map) = t.map(m).filter(|m| m.family == family) else {
                            continue;
                        };
                        let host = if family == Family::Ipv4 { 32 } else { 128 };
                        for e in &map.entries {
                            lines.push(format!(
                                "{head} -d {}/{host} -p {p} -m {p} --dport {} {cm} -j DNAT --to-destination {}",
                                e.dst,
                                e.port,
                                addr_port(&e.to),
                                p = e.protocol,
                            ));
                        }
                    }
                }
            }
        }
        if c.hook.is_none() {
            lines.push(marker(&tag, name));
        }
    }
    // A built-in chain with none of our rules is not ours: it reads back as absent.
    owned
        .chains
        .retain(|c, lines| !(BUILTIN.contains(&c.as_str()) && lines.is_empty()));
    Ok(owned)
}

/// Parses `iptables-save -t nat` and keeps what carries `tag`.
pub fn parse_save(save: &str, tag: &str) -> Result<Owned> {
    let quoted = format!("--comment \"{tag} ");
    let mut all: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut in_nat = false;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_nat = t == "nat";
        } else if !in_nat {
            continue;
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().ok_or_else(|| Error::Parse {
                tool: "iptables-save",
                reason: format!("bad chain line {line:?}"),
            })?;
            all.entry(name).or_default();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            all.entry(chain).or_default().push(line);
        }
    }
    let mut owned = Owned::default();
    for (chain, lines) in all {
        let ours: Vec<String> = lines
            .iter()
            .filter(|l| l.contains(&quoted))
            .map(|l| l.to_string())
            .collect();
        if BUILTIN.contains(&chain) {
            if !ours.is_empty() {
                owned.chains.insert(chain.to_string(), ours);
            }
        } else if !ours.is_empty() {
            // An own chain: keep all its lines, so a stray foreign rule shows as a difference.
            owned.chains.insert(
                chain.to_string(),
                lines.iter().map(|l| l.to_string()).collect(),
            );
        }
    }
    Ok(owned)
}

/// One `iptables-restore --noflush` input that turns `current` into `want`.
pub fn render(want: &Owned, current: &Owned) -> String {
    let is_builtin = |c: &str| BUILTIN.contains(&c);
    let mut out = String::from("*nat\n");
    let own_now: BTreeSet<&String> = current.chains.keys().filter(|c| !is_builtin(c)).collect();
    let own_want: BTreeSet<&String> = want.chains.keys().filter(|c| !is_builtin(c)).collect();
    // Declaring a chain with --noflush creates it, or empties it if it exists.
    for c in own_want.union(&own_now) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for (c, lines) in &current.chains {
        if is_builtin(c) {
            for l in lines {
                out.push_str(&format!("-D{}\n", &l[2..]));
            }
        }
    }
    for c in own_now.difference(&own_want) {
        out.push_str(&format!("-X {c}\n"));
    }
    // Our rules in a built-in chain go to its top, in order (`-I chain 1`, `-I chain 2`…):
    // iptables runs a chain's rules in order and the first NAT of a connection wins, so
    // appending would let whatever another NAT user put there first (a mesh's redirect
    // of all TCP) take the connection before our jump is reached.
    for (c, lines) in &want.chains {
        for (i, l) in lines.iter().enumerate() {
            match l
                .strip_prefix(&format!("-A {c} "))
                .filter(|_| is_builtin(c))
            {
                Some(rest) => out.push_str(&format!("-I {c} {} {rest}", i + 1)),
                None => out.push_str(l),
            }
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;

    #[test]
    fn expands_sets_and_maps_in_canonical_form() {
        let t = sample();
        let v4 = expected(&t, Family::Ipv4).unwrap();
        let c = &v4.chains["CANARY_DNAT"];
        assert_eq!(
            c,
            &vec![
                "-A CANARY_DNAT -d 10.3.0.0/16 -m comment --comment \"ghostwire: ghostwire: excluded destinations\" -j RETURN".to_string(),
                "-A CANARY_DNAT -d 10.96.0.10/32 -m comment --comment \"ghostwire: ghostwire: excluded destinations\" -j RETURN".into(),
                "-A CANARY_DNAT -d 169.254.169.254/32 -m comment --comment \"ghostwire: ghostwire: excluded destinations\" -j RETURN".into(),
                "-A CANARY_DNAT -d 10.96.0.5/32 -p tcp -m tcp --dport 80 -m comment --comment \"ghostwire: ghostwire: active to preview\" -j DNAT --to-destination 10.96.0.6:8080".into(),
                "-A CANARY_DNAT -d 10.96.0.5/32 -p udp -m udp --dport 53 -m comment --comment \"ghostwire: ghostwire: active to preview\" -j DNAT --to-destination 10.96.0.6:53".into(),
                "-A CANARY_DNAT -m comment --comment \"ghostwire: owned chain\" -j RETURN".into(),
            ]
        );
        assert_eq!(
            v4.chains["OUTPUT"],
            vec!["-A OUTPUT -m comment --comment \"ghostwire: ghostwire: preview jump\" -j CANARY_DNAT".to_string()]
        );
        let v6 = expected(&t, Family::Ipv6).unwrap();
        assert_eq!(
            v6.chains["CANARY_DNAT"][0],
            "-A CANARY_DNAT -d fd00::5/128 -p sctp -m sctp --dport 80 -m comment --comment \"ghostwire: ghostwire: active to preview\" -j DNAT --to-destination [fd00::6]:81"
        );
    }

    const SAVE: &str = "# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
-A INPUT -m comment --comment \"ghostwire: not nat\" -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CANARY_DNAT - [0:0]
:OLD_GW - [0:0]
:THEIRS - [0:0]
-A OUTPUT -d 10.0.0.1/32 -j THEIRS
-A OUTPUT -m comment --comment \"ghostwire: ghostwire: preview jump\" -j CANARY_DNAT
-A CANARY_DNAT -m comment --comment \"ghostwire: owned chain\" -j RETURN
-A OLD_GW -m comment --comment \"ghostwire: owned chain\" -j RETURN
-A THEIRS -j RETURN
COMMIT
";

    #[test]
    fn parses_only_what_is_ours() {
        let o = parse_save(SAVE, "ghostwire:").unwrap();
        assert_eq!(
            o.chains.keys().collect::<Vec<_>>(),
            ["CANARY_DNAT", "OLD_GW", "OUTPUT"]
        );
        assert_eq!(o.chains["OUTPUT"].len(), 1);
        // Another table's tag is not ours.
        assert!(parse_save(SAVE, "other:").unwrap().chains.is_empty());
    }

    #[test]
    fn render_replaces_ours_and_names_nothing_else() {
        let current = parse_save(SAVE, "ghostwire:").unwrap();
        let want = expected(&sample(), Family::Ipv4).unwrap();
        let s = render(&want, &current);
        assert!(s.starts_with("*nat\n:CANARY_DNAT - [0:0]\n:OLD_GW - [0:0]\n"));
        assert!(s.contains(
            "-D OUTPUT -m comment --comment \"ghostwire: ghostwire: preview jump\" -j CANARY_DNAT\n"
        ));
        assert!(s.contains("-X OLD_GW\n"));
        // Our jump goes to the top of the built-in chain, ahead of other NAT users' rules.
        assert!(s.contains(
            "-I OUTPUT 1 -m comment --comment \"ghostwire: ghostwire: preview jump\" -j CANARY_DNAT\n"
        ));
        assert!(!s.contains("-A OUTPUT"));
        assert!(!s.contains("THEIRS"));
        assert!(s.ends_with("COMMIT\n"));
        // Removing everything is the same mechanism with nothing wanted.
        let gone = render(&Owned::default(), &current);
        assert!(gone.contains("-X CANARY_DNAT") && gone.contains("-D OUTPUT"));
    }
}
