//! The nftables read-back without `nft`: chains, rules, set and map declarations and
//! their elements over netlink, in process.
//!
//! `nft list` builds its whole cache (every element of every map) and prints it, which
//! costs as much as loading the table; this reads the same objects in a few netlink
//! dumps. Rules come back as the kernel's expressions (registers, payload offsets,
//! compare data), not as nft's text, so each rule of the model is also encoded into the
//! expressions nft generates for it ([`encode_rule`], the same dependency rules nft
//! applies: a `meta nfproto` before the first IPv4/IPv6 header match, a `meta l4proto`
//! before the first port match). A kernel rule equal to a model rule's encoding, comment
//! included, reads back as that rule's signature. Any rule that is not (tampered with, or
//! a shape this encoder does not know) makes [`read`] answer `None`, and the caller
//! reads the table the slow way through `nft -j`, which names every field: a
//! difference is found either way, only its description needs nft.

use crate::model::{Action, Family, Match, Protocol, Table};
use crate::netlink::{Attr, NFT_GETCHAIN, NFT_GETRULE, NFT_GETSET, nft_dump, nft_set_elements};
use crate::{Error, Observed, Result};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One expression of a rule: its name and its attributes, sorted by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub name: String,
    pub attrs: Vec<(u16, Attr)>,
}

fn expr(name: &str, mut attrs: Vec<(u16, Attr)>) -> Expr {
    attrs.sort_by_key(|a| a.0);
    Expr {
        name: name.to_string(),
        attrs,
    }
}

fn u32a(ty: u16, v: u32) -> (u16, Attr) {
    (ty, Attr::Bytes(v.to_be_bytes().to_vec()))
}

fn strz(s: &str) -> Attr {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    Attr::Bytes(b)
}

/// struct nft_data holding a value.
fn value(ty: u16, bytes: &[u8]) -> (u16, Attr) {
    (ty, Attr::Nested(vec![(1, Attr::Bytes(bytes.to_vec()))]))
}

// Expression constants (linux/netfilter/nf_tables.h).
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_SKUID: u32 = 10;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;

fn meta(key: u32) -> Expr {
    expr("meta", vec![u32a(1, REG_1), u32a(2, key)])
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    expr("cmp", vec![u32a(1, REG_1), u32a(2, op), value(3, data)])
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    expr(
        "payload",
        vec![u32a(1, dreg), u32a(2, base), u32a(3, offset), u32a(4, len)],
    )
}

fn bitwise(mask: &[u8]) -> Expr {
    let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
    expr(
        "bitwise",
        vec![
            u32a(1, REG_1),
            u32a(2, REG_1),
            u32a(3, len),
            value(4, mask),
            value(5, &vec![0; mask.len()]),
            u32a(6, 0),
        ],
    )
}

fn immediate(dreg: u32, data: &[u8]) -> Expr {
    expr("immediate", vec![u32a(1, dreg), value(2, data)])
}

fn verdict(code: i32, chain: Option<&str>) -> Expr {
    let mut v = vec![(1, Attr::Bytes(code.to_be_bytes().to_vec()))];
    if let Some(c) = chain {
        v.push((2, strz(c)));
    }
    expr(
        "immediate",
        vec![
            u32a(1, REG_VERDICT),
            (2, Attr::Nested(vec![(2, Attr::Nested(v))])),
        ],
    )
}

fn nfproto_byte(f: Family) -> u8 {
    match f {
        Family::Ipv4 => 2,
        Family::Ipv6 => 10,
    }
}

fn proto_byte(p: Protocol) -> u8 {
    crate::netlink::ip_proto(p)
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// What the rule so far has established, as nft tracks it to leave out dependencies.
#[derive(Default)]
struct Ctx {
    net: Option<Family>,
    l4: Option<Protocol>,
}

impl Ctx {
    fn net(&mut self, f: Family, out: &mut Vec<Expr>) {
        if self.net != Some(f) {
            out.push(meta(META_NFPROTO));
            out.push(cmp(CMP_EQ, &[nfproto_byte(f)]));
            self.net = Some(f);
        }
    }

    fn l4(&mut self, p: Protocol, out: &mut Vec<Expr>) {
        if self.l4 != Some(p) {
            out.push(meta(META_L4PROTO));
            out.push(cmp(CMP_EQ, &[proto_byte(p)]));
            self.l4 = Some(p);
        }
    }
}

fn ifname(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

/// `ip[6] saddr|daddr PREFIX`: a whole-byte prefix loads only its bytes, any other
/// (and /0) loads the address and masks it.
fn prefix(n: &IpNet, src: bool, ctx: &mut Ctx, out: &mut Vec<Expr>) {
    let f = crate::model::family_of_net(n);
    ctx.net(f, out);
    let (offset, width) = match (f, src) {
        (Family::Ipv4, true) => (12, 4),
        (Family::Ipv4, false) => (16, 4),
        (Family::Ipv6, true) => (8, 16),
        (Family::Ipv6, false) => (24, 16),
    };
    let bytes = addr_bytes(n.trunc().addr());
    let plen = usize::from(n.prefix_len());
    if plen > 0 && plen % 8 == 0 {
        out.push(payload(BASE_NETWORK, offset, (plen / 8) as u32, REG_1));
        out.push(cmp(CMP_EQ, &bytes[..plen / 8]));
    } else {
        out.push(payload(BASE_NETWORK, offset, width as u32, REG_1));
        let mask = addr_bytes(n.netmask());
        out.push(bitwise(&mask));
        out.push(cmp(CMP_EQ, &bytes));
    }
}

fn nat(ty: u32, f: Family, proto_reg: Option<u32>, flags: u32) -> Expr {
    let mut a = vec![
        u32a(1, ty),
        u32a(2, u32::from(nfproto_byte(f))),
        u32a(3, REG_1),
        u32a(4, REG_1),
        u32a(7, flags),
    ];
    if let Some(r) = proto_reg {
        a.push(u32a(5, r));
        a.push(u32a(6, r));
    }
    expr("nat", a)
}

/// The name an anonymous set's lookup reads back as: its elements' keys, so that a
/// lookup in `{ tcp, udp, sctp }` compares equal whatever number nft gave the set.
fn anon_set_name(mut keys: Vec<Vec<u8>>) -> Attr {
    keys.sort();
    let hex: Vec<String> = keys
        .iter()
        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    Attr::Bytes(format!("anonymous{{{}}}", hex.join(",")).into_bytes())
}

/// The expressions nft generates for `r` in table `t` (the rule as [`crate::nft`]
/// renders it).
pub fn encode_rule(t: &Table, r: &crate::Rule) -> Vec<Expr> {
    let mut out = Vec::new();
    let mut ctx = Ctx::default();
    for m in &r.matches {
        match m {
            Match::DstInSet(name) => {
                let f = t.set(name).map_or(Family::Ipv4, |s| s.family);
                ctx.net(f, &mut out);
                let (off, len) = match f {
                    Family::Ipv4 => (16, 4),
                    Family::Ipv6 => (24, 16),
                };
                out.push(payload(BASE_NETWORK, off, len, REG_1));
                out.push(expr(
                    "lookup",
                    vec![(1, strz(name)), u32a(2, REG_1), u32a(5, 0)],
                ));
            }
            Match::InIface(i) => {
                out.push(meta(META_IIFNAME));
                out.push(cmp(CMP_EQ, &ifname(i)));
            }
            Match::OutIface(i) => {
                out.push(meta(META_OIFNAME));
                out.push(cmp(CMP_EQ, &ifname(i)));
            }
            Match::Src(n) => prefix(n, true, &mut ctx, &mut out),
            Match::Dst(n) => prefix(n, false, &mut ctx, &mut out),
            Match::DstPort(p, port) => {
                ctx.l4(*p, &mut out);
                out.push(payload(BASE_TRANSPORT, 2, 2, REG_1));
                out.push(cmp(CMP_EQ, &port.to_be_bytes()));
            }
            Match::L4(p) => {
                out.push(meta(META_L4PROTO));
                out.push(cmp(CMP_EQ, &[proto_byte(*p)]));
                ctx.l4 = Some(*p);
            }
            Match::Established => {
                // ct state established,related: the state bits (host order) masked.
                out.push(expr("ct", vec![u32a(1, REG_1), u32a(2, 0)]));
                out.push(bitwise(&6u32.to_ne_bytes()));
                out.push(cmp(CMP_NEQ, &[0; 4]));
            }
            Match::TcpSyn => {
                ctx.l4(Protocol::Tcp, &mut out);
                out.push(payload(BASE_TRANSPORT, 13, 1, REG_1));
                out.push(bitwise(&[0x06]));
                out.push(cmp(CMP_EQ, &[0x02]));
            }
            Match::SkUid(u) => {
                out.push(meta(META_SKUID));
                out.push(cmp(CMP_EQ, &u.to_ne_bytes()));
            }
            Match::Nfproto(f) => {
                out.push(meta(META_NFPROTO));
                out.push(cmp(CMP_EQ, &[nfproto_byte(*f)]));
                ctx.net = Some(*f);
            }
        }
    }
    match &r.action {
        Action::Return => out.push(verdict(-5, None)),
        Action::Accept => out.push(verdict(1, None)),
        Action::Drop => out.push(verdict(0, None)),
        Action::Jump(c) => out.push(verdict(-3, Some(c))),
        Action::DnatMap(m) => {
            let f = t.map(m).map_or(Family::Ipv4, |m| m.family);
            out.push(meta(META_L4PROTO));
            out.push(expr(
                "lookup",
                vec![
                    (
                        1,
                        anon_set_name(Protocol::ALL.iter().map(|p| vec![proto_byte(*p)]).collect()),
                    ),
                    u32a(2, REG_1),
                    u32a(5, 0),
                ],
            ));
            ctx.net(f, &mut out);
            // The concatenation daddr . l4proto . dport fills 32-bit registers from
            // NFT_REG32_00 (8): the kernel names a register that starts a 16-byte one
            // by the 16-byte number (1..4), any other by its 32-bit number (8..23).
            let (off, len, proto_reg, port_reg) = match f {
                Family::Ipv4 => (16, 4, 9, 10),
                Family::Ipv6 => (24, 16, REG_2, 13),
            };
            out.push(payload(BASE_NETWORK, off, len, REG_1));
            out.push(expr(
                "meta",
                vec![u32a(1, proto_reg), u32a(2, META_L4PROTO)],
            ));
            out.push(payload(BASE_TRANSPORT, 2, 2, port_reg));
            out.push(expr(
                "lookup",
                vec![(1, strz(m)), u32a(2, REG_1), u32a(3, REG_1), u32a(5, 0)],
            ));
            out.push(nat(1, f, Some(proto_reg), 0x3));
        }
        Action::Masquerade => out.push(expr("masq", vec![])),
        Action::Snat(a) => {
            out.push(immediate(REG_1, &addr_bytes(*a)));
            out.push(nat(0, Family::of(a), None, 0x1));
        }
        Action::Dnat(to) => {
            out.push(immediate(REG_1, &addr_bytes(to.ip())));
            out.push(immediate(REG_2, &to.port().to_be_bytes()));
            out.push(nat(1, Family::of(&to.ip()), Some(REG_2), 0x3));
        }
        Action::ClampMss => {
            // tcp option maxseg size set rt mtu
            out.push(expr("rt", vec![u32a(1, REG_1), u32a(2, 3)])); // NFT_RT_TCPMSS
            out.push(expr(
                "byteorder",
                vec![
                    u32a(1, REG_1),
                    u32a(2, REG_1),
                    u32a(3, 1),
                    u32a(4, 2),
                    u32a(5, 2),
                ],
            ));
            out.push(expr(
                "exthdr",
                vec![
                    (2, Attr::Bytes(vec![2])), // NFTA_EXTHDR_TYPE is a u8: option 2, maxseg
                    u32a(3, 2),
                    u32a(4, 2),
                    u32a(5, 0),
                    u32a(6, 1),
                    u32a(7, REG_1),
                ],
            ));
        }
        Action::Redirect(p) => {
            out.push(immediate(REG_1, &p.to_be_bytes()));
            out.push(expr(
                "redir",
                vec![u32a(1, REG_1), u32a(2, REG_1), u32a(3, 0x2)],
            ));
        }
    }
    out
}

pub(crate) fn get(attrs: &[(u16, Attr)], ty: u16) -> Option<&Attr> {
    attrs.iter().find(|a| a.0 == ty).map(|a| &a.1)
}

pub(crate) fn bytes(a: Option<&Attr>) -> Option<&[u8]> {
    match a {
        Some(Attr::Bytes(b)) => Some(b),
        _ => None,
    }
}

pub(crate) fn string(a: Option<&Attr>) -> Option<String> {
    let b = bytes(a)?;
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    String::from_utf8(b.to_vec()).ok()
}

pub(crate) fn be_u32(a: Option<&Attr>) -> Option<u32> {
    Some(u32::from_be_bytes(bytes(a)?.get(..4)?.try_into().ok()?))
}

/// The comment nft stores in a rule's user data (TLV type 0, NUL-terminated); `None`
/// for anything else in there.
fn comment(udata: &[u8]) -> Option<String> {
    let (&ty, rest) = udata.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if ty != 0 || rest.len() != usize::from(len) {
        return None;
    }
    string(Some(&Attr::Bytes(rest.to_vec())))
}

fn nl_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Parse {
        tool: "netlink",
        reason: format!("{what}: {e}"),
    }
}

/// A kernel rule: its chain, its expressions (anonymous set lookups named by their
/// elements) and its comment.
struct KernelRule {
    chain: String,
    exprs: Vec<Expr>,
    comment: Option<String>,
}

fn decode_rule(table: &str, attrs: &[(u16, Attr)]) -> Result<KernelRule> {
    let chain = string(get(attrs, 2)).unwrap_or_default();
    let mut exprs = Vec::new();
    if let Some(list) = get(attrs, 4) {
        for (_, e) in list.inner() {
            let e = e.inner();
            let name = string(get(&e, 1)).unwrap_or_default();
            let mut data: Vec<(u16, Attr)> = get(&e, 2)
                .map(Attr::inner)
                .unwrap_or_default()
                .into_iter()
                .map(|(ty, a)| {
                    // struct nft_data: a value, or a verdict (code, chain) nested once more.
                    let data = matches!(
                        (name.as_str(), ty),
                        ("cmp", 3) | ("immediate", 2) | ("bitwise", 4 | 5 | 7) | ("range", 3 | 4)
                    );
                    if !data {
                        return (ty, a);
                    }
                    let inner = a
                        .inner()
                        .into_iter()
                        .map(|(t, v)| {
                            if t == 2 {
                                (t, Attr::Nested(v.inner()))
                            } else {
                                (t, v)
                            }
                        })
                        .collect();
                    (ty, Attr::Nested(inner))
                })
                .collect();
            if name == "lookup"
                && let Some(set) = string(get(&data, 1)).filter(|s| s.starts_with("__set"))
            {
                let keys = nft_set_elements(table, &set)
                    .map_err(nl_err(format!("reading the elements of {table} {set}")))?
                    .into_iter()
                    .map(|e| e.key)
                    .collect();
                if let Some(a) = data.iter_mut().find(|a| a.0 == 1) {
                    a.1 = anon_set_name(keys);
                }
            }
            exprs.push(expr(&name, data));
        }
    }
    Ok(KernelRule {
        chain,
        exprs,
        comment: bytes(get(attrs, 7)).and_then(comment),
    })
}

pub(crate) fn hook_name(num: u32) -> &'static str {
    match num {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        4 => "postrouting",
        5 => "ingress",
        _ => "?",
    }
}

/// A chain's first signature line, as [`crate::nft::expected`] writes it for a base chain.
fn chain_head(attrs: &[(u16, Attr)]) -> Option<String> {
    let hook = get(attrs, 4)?.inner();
    let hook = hook.as_slice();
    let num = be_u32(get(hook, 1)).unwrap_or(u32::MAX);
    let prio = be_u32(get(hook, 2)).map_or(0, |p| p as i32);
    let policy = match be_u32(get(attrs, 5)) {
        Some(0) => "drop",
        _ => "accept",
    };
    Some(format!(
        "hook {} {} {prio} policy {policy}",
        string(get(attrs, 7)).unwrap_or_default(),
        hook_name(num)
    ))
}

/// nft's datatype names, by number (datatypes.h), for the types a set's key or
/// a map's data is made of; a concatenation packs them 6 bits each, first highest.
fn type_names(mut packed: u32) -> String {
    let mut names = Vec::new();
    while packed != 0 {
        names.push(match packed & 0x3f {
            7 => "ipv4_addr".to_string(),
            8 => "ipv6_addr".to_string(),
            12 => "inet_proto".to_string(),
            13 => "inet_service".to_string(),
            n => format!("type{n}"),
        });
        packed >>= 6;
    }
    names.reverse();
    names.join(" . ")
}

/// A set's or map's declaration in the words of [`crate::nft::expected`].
fn set_decl(attrs: &[(u16, Attr)]) -> String {
    let flags = be_u32(get(attrs, 3)).unwrap_or(0);
    let mut d = format!("type {}", type_names(be_u32(get(attrs, 4)).unwrap_or(0)));
    if flags & 0x8 != 0 {
        d.push_str(" : ");
        d.push_str(&type_names(be_u32(get(attrs, 6)).unwrap_or(0)));
    }
    let shown: Vec<&str> = [
        (0x2, "constant"),
        (0x4, "interval"),
        (0x10, "timeout"),
        (0x20, "dynamic"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| *n)
    .collect();
    if !shown.is_empty() {
        d.push_str(" flags ");
        d.push_str(&shown.join(","));
    }
    d
}

/// Reads table `t` over netlink into the shape [`crate::nft::expected`] produces, or
/// `None` when a rule in the kernel is not the encoding of one of `t`'s rules.
pub fn read(t: &Table) -> Result<Option<Observed>> {
    let name = &t.name;
    let mut o = Observed::default();
    // A dump of a missing table's sets (or rules) is refused with ENOENT: nothing there.
    let dump = |msg, what: &str| match nft_dump(msg, name) {
        Err(e) if e.raw_os_error() == Some(2) => Ok(Vec::new()),
        r => r.map_err(nl_err(format!("listing the {what} of {name}"))),
    };
    let chains = dump(NFT_GETCHAIN, "chains")?;
    for c in &chains {
        let cname = string(get(c, 3)).unwrap_or_default();
        o.chains.insert(cname, chain_head(c).into_iter().collect());
    }
    for s in dump(NFT_GETSET, "sets")? {
        let flags = be_u32(get(&s, 3)).unwrap_or(0);
        if flags & 0x1 != 0 {
            continue; // anonymous: part of a rule
        }
        o.decls
            .insert(string(get(&s, 2)).unwrap_or_default(), set_decl(&s));
    }
    crate::nft::fill_elements(&mut o, |set| {
        nft_set_elements(name, set).map_err(nl_err(format!("reading the elements of {name} {set}")))
    })?;
    // Each rule of the model by its encoding and comment.
    let mut known: BTreeMap<(Vec<String>, String), String> = BTreeMap::new();
    let sigs = crate::nft::chain_signatures(t);
    for c in &t.chains {
        let skip = usize::from(c.hook.is_some());
        for (r, sig) in c.rules.iter().zip(sigs[&c.name].iter().skip(skip)) {
            known.insert(key(&encode_rule(t, r), &r.comment), sig.clone());
        }
    }
    for r in dump(NFT_GETRULE, "rules")? {
        let r = decode_rule(name, &r)?;
        let Some(comment) = &r.comment else {
            return Ok(None);
        };
        let Some(sig) = known.get(&key(&r.exprs, comment)) else {
            tracing::debug!(table = %name, chain = %r.chain, exprs = ?r.exprs, "a rule is not one of the model's: reading the table with nft");
            return Ok(None);
        };
        o.chains.entry(r.chain).or_default().push(sig.clone());
    }
    Ok(Some(o))
}

fn key(exprs: &[Expr], comment: &str) -> (Vec<String>, String) {
    (
        exprs.iter().map(|e| format!("{e:?}")).collect(),
        comment.to_string(),
    )
}

/// For a failing test: each kernel rule that is not a model rule's encoding, beside the
/// encodings of the model's rules with the same comment.
#[cfg(test)]
pub fn mismatches(t: &Table) -> String {
    let mut out = String::new();
    for r in nft_dump(NFT_GETRULE, &t.name).unwrap() {
        let r = decode_rule(&t.name, &r).unwrap();
        let comment = r.comment.clone().unwrap_or_default();
        let want: Vec<Vec<Expr>> = t
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|m| m.comment == comment)
            .map(|m| encode_rule(t, m))
            .collect();
        if !want.contains(&r.exprs) {
            out.push_str(&format!("\n{} {comment:?}\n", r.chain));
            for (i, e) in r.exprs.iter().enumerate() {
                let w = want.first().and_then(|w| w.get(i));
                let mark = if w == Some(e) { " " } else { "*" };
                out.push_str(&format!(" {mark} got  {e:?}\n"));
                if w != Some(e) {
                    out.push_str(&format!("   want {w:?}\n"));
                }
            }
            if let Some(w) = want.first() {
                for e in w.iter().skip(r.exprs.len()) {
                    out.push_str(&format!("   want {e:?} (extra)\n"));
                }
            }
        }
    }
    out
}
