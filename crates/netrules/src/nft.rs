//! nftables: render a [`Table`] as one `nft -f -` transaction, parse `nft -j` read-back.
//!
//! The table lives in family `inet`, so one table serves IPv4 and IPv6. An apply
//! to an existing table flushes and refills its chains, sets and maps in one
//! transaction, so base chains keep their hook registration (and their order
//! against other NAT users); only a changed declaration deletes and re-creates
//! the table, also in one transaction. Either way the kernel swaps old for new
//! at once, with no moment without rules.

use crate::model::{
    Action, AddrSet, Chain, DnatEntry, DnatMap, Family, Match, Protocol, Table, addr_port,
    family_of_net,
};
use crate::netlink::SetElem;
use crate::{Error, Observed, Result};
use ipnet::IpNet;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4_addr",
        Family::Ipv6 => "ipv6_addr",
    }
}

fn l3(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

/// Declares the set and fills it; with `flush`, emptying what an existing one holds first.
fn set_decl(t: &str, s: &AddrSet, flush: bool, out: &mut String) {
    let _ = writeln!(
        out,
        "add set inet {t} {} {{ type {}; flags interval; }}",
        s.name,
        addr_type(s.family)
    );
    if flush {
        let _ = writeln!(out, "flush set inet {t} {}", s.name);
    }
    let elements = s.normalized();
    if !elements.is_empty() {
        let elems: Vec<String> = elements.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(
            out,
            "add element inet {t} {} {{ {} }}",
            s.name,
            elems.join(", ")
        );
    }
}

/// Declares the map and fills it; with `flush`, emptying what an existing one holds first.
fn map_decl(t: &str, m: &DnatMap, flush: bool, out: &mut String) {
    let a = addr_type(m.family);
    let _ = writeln!(
        out,
        "add map inet {t} {} {{ type {a} . inet_proto . inet_service : {a} . inet_service; }}",
        m.name
    );
    if flush {
        let _ = writeln!(out, "flush map inet {t} {}", m.name);
    }
    if !m.entries.is_empty() {
        let elems: Vec<String> = m
            .entries
            .iter()
            .map(|e| {
                format!(
                    "{} . {} . {} : {} . {}",
                    e.dst,
                    e.protocol,
                    e.port,
                    e.to.ip(),
                    e.to.port()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "add element inet {t} {} {{ {} }}",
            m.name,
            elems.join(", ")
        );
    }
}

fn chain_decl(t: &str, c: &Chain, out: &mut String) {
    match c.hook {
        None => {
            let _ = writeln!(out, "add chain inet {t} {}", c.name);
        }
        Some(h) => {
            let _ = writeln!(
                out,
                "add chain inet {t} {} {{ type {} hook {} priority {}; policy accept; }}",
                c.name,
                h.nft_type(),
                h.nft_hook(),
                h.nft_priority()
            );
        }
    }
}

fn nfproto(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

fn net_text(n: &IpNet) -> String {
    // A host prefix prints as a bare address in the kernel's read-back; write it so too.
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.trunc().to_string()
    }
}

fn match_text(table: &Table, m: &Match) -> String {
    match m {
        Match::DstInSet(name) => {
            let fam = table.set(name).map_or(Family::Ipv4, |s| s.family);
            format!("{} daddr @{name}", l3(fam))
        }
        Match::InIface(i) => format!("iifname \"{i}\""),
        Match::OutIface(i) => format!("oifname \"{i}\""),
        Match::Src(n) => format!("{} saddr {}", l3(family_of_net(n)), net_text(n)),
        Match::Dst(n) => format!("{} daddr {}", l3(family_of_net(n)), net_text(n)),
        Match::DstPort(p, port) => format!("{p} dport {port}"),
        Match::L4(p) => format!("meta l4proto {p}"),
        Match::Established => "ct state established,related".into(),
        Match::TcpSyn => "tcp flags & (syn|rst) == syn".into(),
        Match::SkUid(u) => format!("meta skuid {u}"),
        Match::Nfproto(f) => format!("meta nfproto {}", nfproto(*f)),
    }
}

fn rule_text(table: &Table, r: &crate::Rule) -> String {
    let mut s = String::new();
    for m in &r.matches {
        s.push_str(&match_text(table, m));
        s.push(' ');
    }
    match &r.action {
        Action::Return => s.push_str("return"),
        Action::Jump(c) => {
            let _ = write!(s, "jump {c}");
        }
        Action::DnatMap(m) => {
            let f = l3(table.map(m).map_or(Family::Ipv4, |m| m.family));
            let _ = write!(
                s,
                "meta l4proto {{ tcp, udp, sctp }} dnat {f} to {f} daddr . meta l4proto . th dport map @{m}"
            );
        }
        Action::Accept => s.push_str("accept"),
        Action::Drop => s.push_str("drop"),
        Action::Masquerade => s.push_str("masquerade"),
        Action::Snat(a) => {
            let _ = write!(s, "snat {} to {a}", l3(Family::of(a)));
        }
        Action::Dnat(to) => {
            let _ = write!(s, "dnat {} to {}", l3(Family::of(&to.ip())), addr_port(to));
        }
        Action::ClampMss => s.push_str("tcp option maxseg size set rt mtu"),
        Action::Redirect(p) => {
            let _ = write!(s, "redirect to :{p}");
        }
    }
    let _ = write!(s, " comment \"{}\"", r.comment);
    s
}

/// The read-back signature of one match: the same text [`json_expr_sig`] gives for what the
/// kernel prints. A match the kernel folds into another prints nothing.
fn match_sig(t: &Table, m: &Match) -> Option<String> {
    Some(match m {
        Match::DstInSet(s) => {
            let fam = t.set(s).map_or(Family::Ipv4, |s| s.family);
            format!("{}.daddr==@{s}", l3(fam))
        }
        Match::InIface(i) => format!("iif={i}"),
        Match::OutIface(i) => format!("oif={i}"),
        Match::Src(n) => format!("saddr={}", n.trunc()),
        Match::Dst(n) => format!("daddr={}", n.trunc()),
        Match::DstPort(p, port) => format!("{p}.dport={port}"),
        Match::L4(p) => format!("l4={p}"),
        Match::Established => "ct=established,related".into(),
        Match::TcpSyn => "tcp-syn".into(),
        Match::SkUid(u) => format!("skuid={u}"),
        Match::Nfproto(f) => format!("nfproto={}", nfproto(*f)),
    })
}

/// The l4 protocols a map DNAT rule applies to, as it renders and reads them back.
const DNAT_MAP_PROTOCOLS: &str = "l4={tcp,udp,sctp}";

fn action_sig(t: &Table, a: &Action) -> String {
    match a {
        Action::Return => "return".into(),
        Action::Jump(j) => format!("jump {j}"),
        Action::DnatMap(m) => {
            let f = l3(t.map(m).map_or(Family::Ipv4, |m| m.family));
            format!("{DNAT_MAP_PROTOCOLS} dnat {f} {f}.daddr.l4proto.th.dport@{m}")
        }
        Action::Accept => "accept".into(),
        Action::Drop => "drop".into(),
        Action::Masquerade => "masquerade".into(),
        Action::Snat(a) => format!("snat={a}"),
        Action::Dnat(to) => format!("dnat={}", addr_port(to)),
        Action::ClampMss => "clamp-mss".into(),
        Action::Redirect(p) => format!("redirect :{p}"),
    }
}

fn chain_rules(t: &Table, c: &Chain, out: &mut String) {
    for r in &c.rules {
        let _ = writeln!(
            out,
            "add rule inet {} {} {}",
            t.name,
            c.name,
            rule_text(t, r)
        );
    }
}

/// The whole table, replacing whatever is there, in one transaction.
pub fn render_table(t: &Table) -> String {
    let n = &t.name;
    let mut out = format!("add table inet {n}\ndelete table inet {n}\nadd table inet {n}\n");
    for s in &t.sets {
        set_decl(n, s, false, &mut out);
    }
    for m in &t.maps {
        map_decl(n, m, false, &mut out);
    }
    declare_and_fill_chains(t, &mut out);
    out
}

/// Turns the table the kernel holds (`current`, as read back) into `t` without deleting
/// the table or its base chains, so their hooks stay registered where they are (their
/// order against other NAT users in the namespace does not change): every chain is
/// flushed and refilled, sets and maps are flushed and refilled, objects the model no
/// longer has are deleted. One transaction. The kernel refuses it if a declaration
/// changed (a set's type, a base chain's hook); then [`render_table`] replaces the table.
pub fn render_update(t: &Table, current: &Observed) -> String {
    let n = &t.name;
    let mut out = format!("add table inet {n}\n");
    for c in current.chains.keys() {
        let _ = writeln!(out, "flush chain inet {n} {c}");
    }
    for c in current.chains.keys().filter(|c| t.chain(c).is_none()) {
        let _ = writeln!(out, "delete chain inet {n} {c}");
    }
    for s in current.sets.keys().filter(|s| t.set(s).is_none()) {
        let _ = writeln!(out, "delete set inet {n} {s}");
    }
    for m in current.maps.keys().filter(|m| t.map(m).is_none()) {
        let _ = writeln!(out, "delete map inet {n} {m}");
    }
    for s in &t.sets {
        set_decl(n, s, current.sets.contains_key(&s.name), &mut out);
    }
    for m in &t.maps {
        map_decl(n, m, current.maps.contains_key(&m.name), &mut out);
    }
    declare_and_fill_chains(t, &mut out);
    out
}

fn declare_and_fill_chains(t: &Table, out: &mut String) {
    let n = &t.name;
    // Regular chains first, so jumps from base chains always find their target.
    let mut chains: Vec<&Chain> = t.chains.iter().collect();
    chains.sort_by_key(|c| c.hook.is_some());
    for c in &chains {
        chain_decl(n, c, out);
    }
    for c in &chains {
        chain_rules(t, c, out);
    }
}

/// Only one chain's rules, leaving the rest of the table as it is. Fails (and
/// changes nothing) if the chain refers to something missing from the kernel.
pub fn render_chain(t: &Table, c: &Chain) -> String {
    let mut out = format!("add table inet {}\n", t.name);
    chain_decl(&t.name, c, &mut out);
    let _ = writeln!(out, "flush chain inet {} {}", t.name, c.name);
    chain_rules(t, c, &mut out);
    out
}

/// A transaction that builds, in a scratch table, what a NAT-map table needs (an inet NAT
/// base chain and a DNAT through a concatenated map, both families) and deletes it again:
/// the kernel checks every statement, and either way nothing is left behind.
pub fn render_probe(table: &str) -> String {
    let mut out = format!(
        "add table inet {table}
"
    );
    let _ = writeln!(
        out,
        "add chain inet {table} probe {{ type nat hook output priority -100; policy accept; }}"
    );
    for f in [Family::Ipv4, Family::Ipv6] {
        let (a, l) = (addr_type(f), l3(f));
        let _ = writeln!(
            out,
            "add map inet {table} m{l} {{ type {a} . inet_proto . inet_service : {a} . inet_service; }}"
        );
        let _ = writeln!(
            out,
            "add rule inet {table} probe meta l4proto {{ tcp, udp, sctp }} dnat {l} to {l} daddr . meta l4proto . th dport map @m{l}"
        );
    }
    let _ = writeln!(out, "delete table inet {table}");
    out
}

pub fn render_cleanup(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// What the read-back of `t` must look like.
pub fn expected(t: &Table) -> Observed {
    let mut o = Observed::default();
    for s in &t.sets {
        o.decls.insert(
            s.name.clone(),
            format!("type {} flags interval", addr_type(s.family)),
        );
        o.sets.insert(s.name.clone(), s.normalized());
    }
    for m in &t.maps {
        let a = addr_type(m.family);
        o.decls.insert(
            m.name.clone(),
            format!("type {a} . inet_proto . inet_service : {a} . inet_service"),
        );
        o.maps.insert(m.name.clone(), m.entries.clone());
    }
    o.chains = chain_signatures(t);
    o
}

/// What the read-back of `t`'s chains must look like: per chain, the base chain's hook
/// line, then one signature per rule.
pub fn chain_signatures(t: &Table) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut chains = std::collections::BTreeMap::new();
    for c in &t.chains {
        let mut sigs = Vec::new();
        if let Some(h) = c.hook {
            sigs.push(format!(
                "hook {} {} {} policy accept",
                h.nft_type(),
                h.nft_hook(),
                h.nft_priority()
            ));
        }
        for r in &c.rules {
            let mut sig = String::new();
            for m in r.matches.iter().filter_map(|m| match_sig(t, m)) {
                let _ = write!(sig, "{m} ");
            }
            sig.push_str(&action_sig(t, &r.action));
            let _ = write!(sig, " # {}", r.comment);
            sigs.push(sig);
        }
        chains.insert(c.name.clone(), sigs);
    }
    chains
}

fn perr(reason: impl Into<String>) -> Error {
    Error::Parse {
        tool: "nft -j",
        reason: reason.into(),
    }
}

fn parse_addr(v: &Value) -> Result<IpAddr> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| perr(format!("expected an address, got {v}")))
}

fn parse_net(v: &Value) -> Result<IpNet> {
    if let Some(e) = v.get("elem") {
        return parse_net(e.get("val").unwrap_or(e));
    }
    if let Some(p) = v.get("prefix") {
        let addr = parse_addr(&p["addr"])?;
        let len = p["len"]
            .as_u64()
            .and_then(|l| u8::try_from(l).ok())
            .ok_or_else(|| perr(format!("bad prefix length in {v}")))?;
        return IpNet::new(addr, len).map_err(|e| perr(format!("{v}: {e}")));
    }
    if v.get("range").is_some() {
        return Err(perr(format!("unexpected address range {v}")));
    }
    Ok(IpNet::from(parse_addr(v)?))
}

fn parse_proto(v: &Value) -> Result<Protocol> {
    match v {
        Value::String(s) => s.parse().map_err(perr),
        Value::Number(n) => match n.as_u64() {
            Some(6) => Ok(Protocol::Tcp),
            Some(17) => Ok(Protocol::Udp),
            Some(132) => Ok(Protocol::Sctp),
            _ => Err(perr(format!("unexpected protocol {n}"))),
        },
        _ => Err(perr(format!("unexpected protocol {v}"))),
    }
}

fn parse_port(v: &Value) -> Result<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| perr(format!("expected a port, got {v}")))
}

fn parse_map_elem(v: &Value) -> Result<DnatEntry> {
    let pair = v
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| perr(format!("expected a key/value pair, got {v}")))?;
    let key = pair[0]
        .get("concat")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 3)
        .ok_or_else(|| perr(format!("unexpected map key {}", pair[0])))?;
    let val = pair[1]
        .get("concat")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| perr(format!("unexpected map value {}", pair[1])))?;
    Ok(DnatEntry {
        dst: parse_addr(&key[0])?,
        protocol: parse_proto(&key[1])?,
        port: parse_port(&key[2])?,
        to: SocketAddr::new(parse_addr(&val[0])?, parse_port(&val[1])?),
    })
}

/// The signature of one `match` expression as [`match_sig`] writes it; `None` for the
/// protocol set the DNAT map rule carries (folded into its action's signature).
fn json_match_sig(m: &Value) -> Option<String> {
    let left = &m["left"];
    let right = &m["right"];
    // Only equality (and set membership) is ever rendered: any other operator is a difference.
    if !matches!(m["op"].as_str(), Some("==" | "in")) {
        return Some(format!("match{m}"));
    }
    if let Some(set) = right.as_str().filter(|s| s.starts_with('@')) {
        let p = &left["payload"];
        return Some(match (p["protocol"].as_str(), p["field"].as_str()) {
            (Some(proto), Some(field)) => format!("{proto}.{field}=={set}"),
            _ => format!("match{m}"),
        });
    }
    if let Some(key) = left["meta"]["key"].as_str() {
        return match (key, right) {
            ("iifname", Value::String(i)) => Some(format!("iif={i}")),
            ("oifname", Value::String(i)) => Some(format!("oif={i}")),
            ("l4proto", Value::String(p)) => Some(format!("l4={p}")),
            ("l4proto", Value::Object(o)) if o.contains_key("set") => {
                let names: Vec<String> = o["set"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
                    .collect();
                Some(format!("l4={{{}}}", names.join(",")))
            }
            ("skuid", Value::Number(u)) => Some(format!("skuid={u}")),
            ("nfproto", Value::String(f)) => Some(format!("nfproto={f}")),
            _ => Some(format!("match{m}")),
        };
    }
    if left["ct"]["key"].as_str() == Some("state") {
        let states: Vec<&str> = match right {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => vec![s.as_str()],
            _ => vec![],
        };
        return Some(format!("ct={}", states.join(",")));
    }
    if let Some(p) = left.get("payload") {
        let proto = p["protocol"].as_str().unwrap_or("?");
        let field = p["field"].as_str().unwrap_or("?");
        return Some(match (proto, field) {
            ("ip" | "ip6", "saddr" | "daddr") => match parse_net(right) {
                Ok(n) => format!("{field}={}", n.trunc()),
                Err(_) => format!("match{m}"),
            },
            (_, "dport") => format!("{proto}.dport={right}"),
            _ => format!("match{m}"),
        });
    }
    if left.get("&").is_some() && right.as_str() == Some("syn") {
        return Some("tcp-syn".into());
    }
    Some(format!("match{m}"))
}

fn rule_signature(rule: &Value) -> String {
    let mut sig = String::new();
    for e in rule["expr"].as_array().into_iter().flatten() {
        if let Some(m) = e.get("match") {
            if let Some(s) = json_match_sig(m) {
                let _ = write!(sig, "{s} ");
            }
        } else if let Some(d) = e.get("dnat") {
            if let Some(data) = d["addr"]["map"]["data"].as_str() {
                let key: Vec<String> = d["addr"]["map"]["key"]["concat"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| match (&k["payload"], &k["meta"]) {
                        (p, _) if p.is_object() => format!(
                            "{}.{}",
                            p["protocol"].as_str().unwrap_or("?"),
                            p["field"].as_str().unwrap_or("?")
                        ),
                        (_, m) if m.is_object() => m["key"].as_str().unwrap_or("?").to_string(),
                        _ => k.to_string(),
                    })
                    .collect();
                let fam = d["family"].as_str().unwrap_or("?");
                let _ = write!(sig, "dnat {fam} {}{data}", key.join("."));
            } else {
                let addr = parse_addr(&d["addr"]).ok();
                let port = d["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                match (addr, port) {
                    (Some(a), Some(p)) => {
                        let _ = write!(sig, "dnat={}", addr_port(&SocketAddr::new(a, p)));
                    }
                    _ => {
                        let _ = write!(sig, "{e}");
                    }
                }
            }
        } else if let Some(sn) = e.get("snat") {
            let _ = write!(sig, "snat={}", sn["addr"].as_str().unwrap_or("?"));
        } else if let Some(j) = e.get("jump") {
            let _ = write!(sig, "jump {}", j["target"].as_str().unwrap_or("?"));
        } else if e.get("return").is_some() {
            sig.push_str("return");
        } else if e.get("accept").is_some() {
            sig.push_str("accept");
        } else if e.get("drop").is_some() {
            sig.push_str("drop");
        } else if let Some(r) = e.get("redirect") {
            let _ = write!(sig, "redirect :{}", r["port"]);
        } else if e.get("masquerade").is_some() {
            sig.push_str("masquerade");
        } else if e["mangle"]["key"]["tcp option"]["name"].as_str() == Some("maxseg")
            && e["mangle"]["value"]["rt"]["key"].as_str() == Some("mtu")
        {
            sig.push_str("clamp-mss");
        } else {
            let _ = write!(sig, "{e} ");
        }
    }
    let _ = write!(sig, " # {}", rule["comment"].as_str().unwrap_or(""));
    sig
}

/// A set's or map's declaration as `nft -j` prints it, in the words [`expected`] uses:
/// `type K [: D] [flags F,G]`. Type and flags may each be one string or a list.
fn decl_signature(d: &Value) -> String {
    let words = |v: &Value, sep: &str| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(sep),
        _ => String::new(),
    };
    let mut sig = format!("type {}", words(&d["type"], " . "));
    if let Some(data) = d.get("map") {
        let _ = write!(sig, " : {}", words(data, " . "));
    }
    let flags = words(&d["flags"], ",");
    if !flags.is_empty() {
        let _ = write!(sig, " flags {flags}");
    }
    sig
}

/// Parses `nft -j list table inet NAME` into the shape [`expected`] produces.
pub fn parse(json: &str) -> Result<Observed> {
    let doc: Value = serde_json::from_str(json).map_err(|e| perr(e.to_string()))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or_else(|| perr("no \"nftables\" array"))?;
    let mut o = Observed::default();
    for item in items {
        if let Some(d) = item.get("set").or_else(|| item.get("map")) {
            o.decls.insert(
                d["name"].as_str().unwrap_or_default().to_string(),
                decl_signature(d),
            );
        }
        if let Some(s) = item.get("set") {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let elems = s["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .map(parse_net)
                .collect::<Result<BTreeSet<_>>>()?;
            o.sets.insert(name, elems);
        } else if let Some(m) = item.get("map") {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            let elems = m["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .map(parse_map_elem)
                .collect::<Result<BTreeSet<_>>>()?;
            o.maps.insert(name, elems);
        } else if let Some(c) = item.get("chain") {
            let mut sigs = Vec::new();
            if let Some(hook) = c["hook"].as_str() {
                sigs.push(format!(
                    "hook {} {hook} {} policy {}",
                    c["type"].as_str().unwrap_or("?"),
                    c["prio"],
                    c["policy"].as_str().unwrap_or("accept")
                ));
            }
            o.chains
                .insert(c["name"].as_str().unwrap_or_default().to_string(), sigs);
        } else if let Some(r) = item.get("rule") {
            let chain = r["chain"].as_str().unwrap_or_default();
            o.chains
                .entry(chain.to_string())
                .or_default()
                .push(rule_signature(r));
        }
    }
    Ok(o)
}

/// Fills the elements of every set and map of `o` (read with `nft -t`, which leaves
/// them out) from `elements`, which dumps one set's elements by name over netlink.
pub fn fill_elements(
    o: &mut Observed,
    mut elements: impl FnMut(&str) -> Result<Vec<SetElem>>,
) -> Result<()> {
    for (name, decl) in o.decls.clone() {
        let raw = elements(&name)?;
        let decoded = if decl.contains(" : ") {
            raw.iter()
                .map(|e| decode_map_elem(&name, e))
                .collect::<Result<BTreeSet<_>>>()
                .map(|entries| {
                    o.maps.insert(name.clone(), entries);
                })
        } else {
            decode_intervals(&name, &raw).map(|nets| {
                o.sets.insert(name.clone(), nets);
            })
        };
        // Elements of another shape than the switch writes (a set replaced by one of
        // another type): a difference to repair, not a read that failed.
        if let Err(e) = decoded {
            o.decls.insert(name, format!("{decl} ({e})"));
        }
    }
    Ok(())
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// A DNAT map element: key `addr . proto . port`, data `addr . port`, each field
/// padded to 4 bytes (4 + 4 + 4 or 16 + 4 + 4; data 4 + 4 or 16 + 4).
fn decode_map_elem(map: &str, e: &SetElem) -> Result<DnatEntry> {
    let bad = || perr(format!("map {map}: unexpected element {e:?}"));
    let a = match e.key.len() {
        12 => 4,
        24 => 16,
        _ => return Err(bad()),
    };
    let data = e
        .data
        .as_deref()
        .filter(|d| d.len() == a + 4)
        .ok_or_else(bad)?;
    let protocol = match e.key[a] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return Err(bad()),
    };
    Ok(DnatEntry {
        dst: ip_of(&e.key[..a]).ok_or_else(bad)?,
        protocol,
        port: u16::from_be_bytes([e.key[a + 4], e.key[a + 5]]),
        to: SocketAddr::new(
            ip_of(&data[..a]).ok_or_else(bad)?,
            u16::from_be_bytes([data[a], data[a + 1]]),
        ),
    })
}

/// An interval set's elements (starts, and exclusive ends flagged as such) as the
/// prefixes that cover exactly the same addresses.
fn decode_intervals(set: &str, raw: &[SetElem]) -> Result<BTreeSet<IpNet>> {
    let mut bounds: Vec<(u128, bool, u8)> = Vec::new();
    for e in raw {
        let (v, bits) = match ip_of(&e.key) {
            Some(IpAddr::V4(a)) => (u128::from(u32::from(a)), 32),
            Some(IpAddr::V6(a)) => (u128::from(a), 128),
            None => return Err(perr(format!("set {set}: unexpected element {e:?}"))),
        };
        bounds.push((v, !e.interval_end, bits));
    }
    // At one address an end closes the previous interval before a start opens the next.
    bounds.sort();
    let mut out = BTreeSet::new();
    let mut open: Option<(u128, u8)> = None;
    for (v, start, bits) in bounds {
        match (start, open) {
            (true, None) => open = Some((v, bits)),
            (true, Some(_)) => {
                return Err(perr(format!(
                    "set {set}: two interval starts without an end"
                )));
            }
            (false, Some((s, b))) if v > s => {
                cover(s, v - 1, b, &mut out);
                open = None;
            }
            // An end with nothing open (nft may mark the bottom of the address space).
            (false, _) => open = None,
        }
    }
    if let Some((s, b)) = open {
        let max = if b == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        cover(s, max, b, &mut out);
    }
    Ok(out)
}

/// The prefixes covering `first..=last` exactly, in a `bits`-wide address space.
fn cover(mut first: u128, last: u128, bits: u8, out: &mut BTreeSet<IpNet>) {
    let low = |n: u8| {
        if n >= 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        }
    };
    loop {
        let mut n = 0u8;
        while n < bits
            && first & low(n + 1) == 0
            && first.checked_add(low(n + 1)).is_some_and(|x| x <= last)
        {
            n += 1;
        }
        let len = bits - n;
        let net = if bits == 32 {
            IpNet::from(
                ipnet::Ipv4Net::new(
                    std::net::Ipv4Addr::from(u32::try_from(first).unwrap_or(u32::MAX)),
                    len,
                )
                .expect("prefix length"),
            )
        } else {
            IpNet::from(
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(first), len).expect("prefix length"),
            )
        };
        out.insert(net);
        match first.checked_add(low(n)).and_then(|x| x.checked_add(1)) {
            Some(next) if next <= last => first = next,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;

    #[test]
    fn renders_one_replacing_transaction() {
        let s = render_table(&sample());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            &lines[..3],
            &[
                "add table inet ghostwire",
                "delete table inet ghostwire",
                "add table inet ghostwire"
            ]
        );
        assert!(s.contains(
            "add element inet ghostwire dnat4 { 10.96.0.5 . tcp . 80 : 10.96.0.6 . 8080, 10.96.0.5 . udp . 53 : 10.96.0.6 . 53 }"
        ));
        assert!(
            s.contains("add element inet ghostwire dnat6 { fd00::5 . sctp . 80 : fd00::6 . 81 }")
        );
        assert!(s.contains(
            "add element inet ghostwire exclude4 { 10.3.0.0/16, 10.96.0.10/32, 169.254.169.254/32 }"
        ));
        // The empty set is declared, but gets no (invalid) empty element list.
        assert!(s.contains("add set inet ghostwire exclude6 { type ipv6_addr; flags interval; }"));
        assert!(!s.contains("exclude6 { }"));
        assert!(s.contains(
            "add rule inet ghostwire CANARY_DNAT meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6 comment \"ghostwire: active to preview\""
        ));
        // The regular chain is declared before the base chain that jumps to it.
        let regular = s.find("add chain inet ghostwire CANARY_DNAT").unwrap();
        let base = s.find("add chain inet ghostwire output {").unwrap();
        assert!(regular < base);
    }

    #[test]
    fn chain_update_only_touches_that_chain() {
        let t = sample();
        let s = render_chain(&t, t.chain("output").unwrap());
        assert!(!s.contains("delete"));
        assert!(s.contains("flush chain inet ghostwire output"));
        assert!(!s.contains("CANARY_DNAT ip"));
        assert_eq!(s.matches("add rule").count(), 1);
    }

    #[test]
    fn parses_what_the_kernel_prints() {
        // Shape of `nft -j list table` (nftables 1.0.6) for a table like the sample.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "inet", "name": "ghostwire", "handle": 2}},
 {"set": {"family": "inet", "name": "exclude4", "table": "ghostwire", "type": "ipv4_addr", "flags": ["interval"],
   "elem": [{"prefix": {"addr": "10.3.0.0", "len": 16}}, "10.96.0.10", "169.254.169.254"]}},
 {"set": {"family": "inet", "name": "exclude6", "table": "ghostwire", "type": "ipv6_addr", "flags": ["interval"]}},
 {"map": {"family": "inet", "name": "dnat4", "table": "ghostwire", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
   "elem": [[{"concat": ["10.96.0.5", "tcp", 80]}, {"concat": ["10.96.0.6", 8080]}], [{"concat": ["10.96.0.5", "udp", 53]}, {"concat": ["10.96.0.6", 53]}]]}},
 {"map": {"family": "inet", "name": "dnat6", "table": "ghostwire", "type": ["ipv6_addr", "inet_proto", "inet_service"], "map": "ipv6_addr . inet_service",
   "elem": [[{"concat": ["fd00::5", "sctp", 80]}, {"concat": ["fd00::6", 81]}]]}},
 {"chain": {"family": "inet", "table": "ghostwire", "name": "CANARY_DNAT", "handle": 1}},
 {"chain": {"family": "inet", "table": "ghostwire", "name": "output", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "ghostwire", "chain": "CANARY_DNAT", "handle": 7, "comment": "ghostwire: excluded destinations",
   "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@exclude4"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "ghostwire", "chain": "CANARY_DNAT", "handle": 8, "comment": "ghostwire: excluded destinations",
   "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@exclude6"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "ghostwire", "chain": "CANARY_DNAT", "handle": 10, "comment": "ghostwire: active to preview",
   "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp", "sctp"]}}},
            {"dnat": {"family": "ip", "addr": {"map": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@dnat4"}}}}]}},
 {"rule": {"family": "inet", "table": "ghostwire", "chain": "CANARY_DNAT", "handle": 12, "comment": "ghostwire: active to preview",
   "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp", "sctp"]}}},
            {"dnat": {"family": "ip6", "addr": {"map": {"key": {"concat": [{"payload": {"protocol": "ip6", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@dnat6"}}}}]}},
 {"rule": {"family": "inet", "table": "ghostwire", "chain": "output", "handle": 13, "comment": "ghostwire: preview jump",
   "expr": [{"jump": {"target": "CANARY_DNAT"}}]}}]}"#;
        let observed = parse(json).unwrap();
        assert_eq!(observed, expected(&sample()));

        // A flushed chain or a lost element is a difference.
        let mut t = sample();
        t.maps[0].entries.pop_first();
        assert_ne!(observed, expected(&t));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(parse("not json").is_err());
        assert!(parse("{}").is_err());
        assert!(
            parse(
                r#"{"nftables":[{"set":{"name":"s","elem":[{"range":["1.1.1.1","1.1.1.9"]}]}}]}"#
            )
            .is_err()
        );
    }
}
