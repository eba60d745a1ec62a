//! The backend-neutral rule model.

use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

/// Where a base chain hooks into the packet path. The first three hold NAT rules, the
/// `Filter*` ones accept or drop (nftables only, for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Locally generated packets (a pod's own traffic).
    Output,
    /// Packets arriving on an interface, before routing.
    Prerouting,
    /// [`Hook::Output`] at priority dstnat - 10 (-110): runs before the NAT chains that
    /// sit at dstnat (iptables' `nat` table, a mesh's redirect). Netfilter applies only
    /// the first NAT binding of a connection, so this one wins whatever was registered
    /// first. iptables has no priorities: there it is [`Hook::Output`].
    EarlyOutput,
    /// [`Hook::Prerouting`] at priority dstnat - 10, as [`Hook::EarlyOutput`].
    EarlyPrerouting,
    /// Packets leaving, after routing.
    Postrouting,
    /// Filter: packets for this host.
    FilterInput,
    /// Filter: packets routed through this host.
    FilterForward,
    /// Filter: packets this host sends.
    FilterOutput,
}

impl Hook {
    /// The iptables built-in chain (of the `nat` table, or `filter` for filter hooks).
    pub fn iptables_chain(self) -> &'static str {
        match self {
            Hook::Output | Hook::EarlyOutput | Hook::FilterOutput => "OUTPUT",
            Hook::Prerouting | Hook::EarlyPrerouting => "PREROUTING",
            Hook::Postrouting => "POSTROUTING",
            Hook::FilterInput => "INPUT",
            Hook::FilterForward => "FORWARD",
        }
    }

    pub fn nft_hook(self) -> &'static str {
        match self {
            Hook::Output | Hook::EarlyOutput | Hook::FilterOutput => "output",
            Hook::Prerouting | Hook::EarlyPrerouting => "prerouting",
            Hook::Postrouting => "postrouting",
            Hook::FilterInput => "input",
            Hook::FilterForward => "forward",
        }
    }

    /// Whether the chain filters (accept/drop) rather than rewrites addresses.
    pub fn is_filter(self) -> bool {
        matches!(
            self,
            Hook::FilterInput | Hook::FilterForward | Hook::FilterOutput
        )
    }

    /// The nftables chain type.
    pub fn nft_type(self) -> &'static str {
        if self.is_filter() { "filter" } else { "nat" }
    }

    /// nftables priority: dstnat (-100) for rewriting destinations (-110 for the early
    /// ones), srcnat (100) after routing, filter (0).
    pub fn nft_priority(self) -> i32 {
        match self {
            Hook::Output | Hook::Prerouting => -100,
            Hook::EarlyOutput | Hook::EarlyPrerouting => -110,
            Hook::Postrouting => 100,
            Hook::FilterInput | Hook::FilterForward | Hook::FilterOutput => 0,
        }
    }
}

impl std::str::FromStr for Hook {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "OUTPUT" | "output" => Ok(Hook::Output),
            "PREROUTING" | "prerouting" => Ok(Hook::Prerouting),
            "POSTROUTING" | "postrouting" => Ok(Hook::Postrouting),
            _ => Err(format!(
                "unknown hook {s:?} (expected OUTPUT, PREROUTING or POSTROUTING)"
            )),
        }
    }
}

/// A named set of address prefixes of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    pub name: String,
    pub family: Family,
    pub elements: BTreeSet<IpNet>,
}

impl AddrSet {
    /// The set's elements as the kernel gets them: see [`normalize_prefixes`].
    pub fn normalized(&self) -> BTreeSet<IpNet> {
        normalize_prefixes(&self.elements)
    }
}

/// The same addresses as `nets`, with host bits cleared and every prefix that another
/// one covers dropped (`10.0.0.0/8, 10.96.0.10/32` is `10.0.0.0/8`). nftables refuses
/// an interval set whose elements overlap ("conflicting intervals"); iptables would
/// carry dead rules. Prefixes never partly overlap: two are nested or disjoint, so
/// in address order a covered prefix always follows the one that covers it.
pub fn normalize_prefixes(nets: &BTreeSet<IpNet>) -> BTreeSet<IpNet> {
    let mut sorted: Vec<IpNet> = nets.iter().map(IpNet::trunc).collect();
    // By network address, the shorter (wider) prefix first among equals.
    sorted.sort_by_key(|n| (family_of_net(n), n.network(), n.prefix_len()));
    let mut out: Vec<IpNet> = Vec::with_capacity(sorted.len());
    for n in sorted {
        match out.last() {
            Some(last) if last.contains(&n) => {}
            _ => out.push(n),
        }
    }
    out.into_iter().collect()
}

/// One mapping: packets to `dst:port/protocol` are rewritten to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnatEntry {
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub to: SocketAddr,
}

/// A destination-NAT lookup table of one family. With nftables it is one map
/// (one lookup per packet); iptables has no maps, so it becomes one rule per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatMap {
    pub name: String,
    pub family: Family,
    pub entries: BTreeSet<DnatEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Destination address is in the named [`AddrSet`].
    DstInSet(String),
    /// Arrived on this interface (by name, so the interface may come later).
    InIface(String),
    /// Leaves on this interface (by name).
    OutIface(String),
    /// Source address in this prefix (also restricts the rule to its family).
    Src(IpNet),
    /// Destination address in this prefix (also restricts the rule to its family).
    Dst(IpNet),
    /// This transport protocol and destination port.
    DstPort(Protocol, u16),
    /// This transport protocol (use [`Match::DstPort`] instead when a port is matched too).
    L4(Protocol),
    /// Part of a connection already allowed (conntrack state established or related).
    Established,
    /// A TCP segment opening a connection (SYN without RST).
    TcpSyn,
    /// The owner uid of a locally generated packet's socket (nft `meta skuid`, iptables
    /// `-m owner --uid-owner`); output hook only.
    SkUid(u32),
    /// Only packets of this address family (nft `meta nfproto`; with iptables the rule is
    /// written for that family only).
    Nfproto(Family),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Return,
    Jump(String),
    /// Rewrite the destination through the named [`DnatMap`]; no entry, no change.
    DnatMap(String),
    /// Filter chains: let the packet through (this table's chain only).
    Accept,
    /// Filter chains: drop the packet (final, whatever other tables say).
    Drop,
    /// Postrouting: source NAT to the outgoing interface's address.
    Masquerade,
    /// Postrouting: source NAT to this address.
    Snat(IpAddr),
    /// Prerouting or Output: destination NAT to this address and port (needs a
    /// [`Match::DstPort`]).
    Dnat(SocketAddr),
    /// Filter chains: set the TCP MSS option of SYNs to the route's MTU (needs
    /// [`Match::TcpSyn`]).
    ClampMss,
    /// NAT chains: rewrite the destination to this port on the local host (the address of
    /// the interface the packet came in on, loopback for local traffic); `SO_ORIGINAL_DST`
    /// tells the listener where the packet was going.
    Redirect(u16),
}

impl Match {
    /// The family this match restricts a rule to, if any.
    pub fn family(&self) -> Option<Family> {
        match self {
            Match::Src(n) | Match::Dst(n) => Some(family_of_net(n)),
            Match::Nfproto(f) => Some(*f),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
    /// Tags the rule in the kernel, so that operators (and read-back) can tell what it is.
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// A base chain hooks into the packet path; with iptables its rules go into
    /// the built-in chain of that hook, tagged with the table's comment.
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// Everything one ghostwire component owns in the kernel's NAT rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// nftables table name (family `inet`); with iptables the tag in every rule's comment.
    pub name: String,
    pub sets: Vec<AddrSet>,
    pub maps: Vec<DnatMap>,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{what} name {name:?} is invalid: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("{what} {name:?} is defined twice")]
    Duplicate { what: &'static str, name: String },
    #[error("rule in chain {chain:?} refers to unknown {what} {name:?}")]
    Unknown {
        chain: String,
        what: &'static str,
        name: String,
    },
    #[error("comment {comment:?} in chain {chain:?} is invalid: {reason}")]
    BadComment {
        chain: String,
        comment: String,
        reason: &'static str,
    },
    #[error("{what} {name:?}: {reason}")]
    Mismatch {
        what: &'static str,
        name: String,
        reason: String,
    },
}

/// iptables limits chain names to 28 characters; we keep that limit for both backends
/// so a model that works on one works on the other.
const MAX_NAME: usize = 28;

/// Checks a table, chain, set or map name against the rules of both backends.
pub fn check_name(what: &'static str, name: &str) -> Result<(), ModelError> {
    let bad = |reason| {
        Err(ModelError::BadName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 28 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return bad("only letters, digits, '_' and '-' are allowed");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("it must start with a letter");
    }
    if ["OUTPUT", "PREROUTING", "POSTROUTING", "INPUT", "FORWARD"].contains(&name)
        || [
            "RETURN",
            "ACCEPT",
            "DROP",
            "DNAT",
            "SNAT",
            "MASQUERADE",
            "REDIRECT",
        ]
        .contains(&name)
    {
        return bad("it is a built-in chain or target name");
    }
    Ok(())
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| c.name == name)
    }

    pub fn set(&self, name: &str) -> Option<&AddrSet> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn map(&self, name: &str) -> Option<&DnatMap> {
        self.maps.iter().find(|m| m.name == name)
    }

    /// The tag written into every iptables rule's comment.
    pub fn tag(&self) -> String {
        format!("{}:", self.name)
    }

    /// Checks names, references and family consistency before anything is rendered.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_name("table", &self.name)?;
        let mut seen = BTreeSet::new();
        for (what, name) in self
            .sets
            .iter()
            .map(|s| ("set", &s.name))
            .chain(self.maps.iter().map(|m| ("map", &m.name)))
            .chain(self.chains.iter().map(|c| ("chain", &c.name)))
        {
            check_name(what, name)?;
            if !seen.insert(name.clone()) {
                return Err(ModelError::Duplicate {
                    what,
                    name: name.clone(),
                });
            }
        }
        let mut hooks = BTreeSet::new();
        for c in &self.chains {
            if let Some(h) = c.hook
                && !hooks.insert((h.nft_type(), h.nft_hook()))
            {
                return Err(ModelError::Duplicate {
                    what: "base chain for hook",
                    name: h.iptables_chain().to_string(),
                });
            }
        }
        for s in &self.sets {
            if let Some(e) = s.elements.iter().find(|e| family_of_net(e) != s.family) {
                return Err(ModelError::Mismatch {
                    what: "set",
                    name: s.name.clone(),
                    reason: format!("element {e} is not of the set's family {:?}", s.family),
                });
            }
        }
        for m in &self.maps {
            if let Some(e) = m
                .entries
                .iter()
                .find(|e| Family::of(&e.dst) != m.family || Family::of(&e.to.ip()) != m.family)
            {
                return Err(ModelError::Mismatch {
                    what: "map",
                    name: m.name.clone(),
                    reason: format!(
                        "entry {} -> {} is not of the map's family {:?}",
                        e.dst, e.to, m.family
                    ),
                });
            }
        }
        for c in &self.chains {
            for r in &c.rules {
                check_comment(&c.name, &r.comment)?;
                let unknown = |what, name: &String| ModelError::Unknown {
                    chain: c.name.clone(),
                    what,
                    name: name.clone(),
                };
                for m in &r.matches {
                    match m {
                        Match::DstInSet(s) if self.set(s).is_none() => {
                            return Err(unknown("set", s));
                        }
                        Match::InIface(i) | Match::OutIface(i) => check_iface(&c.name, i)?,
                        _ => {}
                    }
                }
                check_placement(c, r)?;
                match &r.action {
                    Action::Jump(t) => match self.chain(t) {
                        Some(target) if target.hook.is_none() => {}
                        Some(_) => return Err(unknown("regular chain (it is a base chain)", t)),
                        None => return Err(unknown("chain", t)),
                    },
                    Action::DnatMap(m) if self.map(m).is_none() => {
                        return Err(unknown("map", m));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn check_iface(chain: &str, name: &str) -> Result<(), ModelError> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'/')
    {
        return Err(ModelError::Mismatch {
            what: "chain",
            name: chain.to_string(),
            reason: format!(
                "interface name {name:?} is invalid (1 to 15 visible characters, no quotes, '/' or '\\')"
            ),
        });
    }
    Ok(())
}

/// Which actions fit which chains, and the matches some actions need.
fn check_placement(c: &Chain, r: &Rule) -> Result<(), ModelError> {
    let bad = |reason: &str| {
        Err(ModelError::Mismatch {
            what: "chain",
            name: c.name.clone(),
            reason: format!("rule {:?}: {reason}", r.comment),
        })
    };
    let families: BTreeSet<Family> = r.matches.iter().filter_map(Match::family).collect();
    if families.len() > 1 {
        return bad("it matches addresses of both families");
    }
    let filter = c.hook.is_some_and(Hook::is_filter);
    match &r.action {
        Action::Accept | Action::Drop if !filter && c.hook.is_some() => {
            bad("accept and drop belong in filter chains")
        }
        Action::ClampMss if !filter => bad("MSS clamping belongs in a filter chain"),
        Action::Redirect(_) if filter || c.hook == Some(Hook::Postrouting) => {
            bad("redirect belongs in the prerouting or output chain (or a chain they jump to)")
        }
        Action::Redirect(0) => bad("redirect to port 0"),
        Action::ClampMss if !r.matches.contains(&Match::TcpSyn) => {
            bad("MSS clamping needs the TCP SYN match")
        }
        Action::Masquerade | Action::Snat(_) if c.hook != Some(Hook::Postrouting) => {
            bad("source NAT belongs in the postrouting chain")
        }
        Action::Dnat(_)
            if !matches!(
                c.hook,
                Some(Hook::Prerouting | Hook::Output | Hook::EarlyPrerouting | Hook::EarlyOutput)
            ) =>
        {
            bad("destination NAT belongs in the prerouting or output chain")
        }
        Action::Dnat(_)
            if !r.matches.iter().any(|m| {
                matches!(
                    m,
                    Match::DstPort(Protocol::Tcp | Protocol::Udp | Protocol::Sctp, _)
                )
            }) =>
        {
            bad("destination NAT to a port needs a destination port match")
        }
        _ => {
            let nat = match &r.action {
                Action::Snat(a) => Some(*a),
                Action::Dnat(s) => Some(s.ip()),
                _ => None,
            };
            if let Some(a) = nat
                && families.iter().any(|f| *f != Family::of(&a))
            {
                return bad("the NAT address is of the other family than the address matches");
            }
            Ok(())
        }
    }
}

fn check_comment(chain: &str, comment: &str) -> Result<(), ModelError> {
    let reason = if comment.is_empty() {
        Some("every rule needs a comment so it can be identified in the kernel")
    } else if comment.len() > 200 {
        Some("longer than 200 characters")
    } else if comment.contains(['"', '\\', '\n', '\'']) {
        Some("quotes, backslashes and newlines are not allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ModelError::BadComment {
            chain: chain.to_string(),
            comment: comment.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(crate) fn family_of_net(n: &IpNet) -> Family {
    match n {
        IpNet::V4(_) => Family::Ipv4,
        IpNet::V6(_) => Family::Ipv6,
    }
}

/// Formats an address for a `host:port` position (IPv6 in brackets).
pub(crate) fn addr_port(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small table used by the renderer tests of both backends.
    pub fn sample() -> Table {
        let entry = |d: &str, p, port, to: &str| DnatEntry {
            dst: d.parse().unwrap(),
            protocol: p,
            port,
            to: to.parse().unwrap(),
        };
        Table {
            name: "ghostwire".into(),
            sets: vec![
                AddrSet {
                    name: "exclude4".into(),
                    family: Family::Ipv4,
                    elements: ["169.254.169.254/32", "10.96.0.10/32", "10.3.0.0/16"]
                        .iter()
                        .map(|s| s.parse().unwrap())
                        .collect(),
                },
                AddrSet {
                    name: "exclude6".into(),
                    family: Family::Ipv6,
                    elements: BTreeSet::new(),
                },
            ],
            maps: vec![
                DnatMap {
                    name: "dnat4".into(),
                    family: Family::Ipv4,
                    entries: [
                        entry("10.96.0.5", Protocol::Tcp, 80, "10.96.0.6:8080"),
                        entry("10.96.0.5", Protocol::Udp, 53, "10.96.0.6:53"),
                    ]
                    .into(),
                },
                DnatMap {
                    name: "dnat6".into(),
                    family: Family::Ipv6,
                    entries: [entry("fd00::5", Protocol::Sctp, 80, "[fd00::6]:81")].into(),
                },
            ],
            chains: vec![
                Chain {
                    name: "CANARY_DNAT".into(),
                    hook: None,
                    rules: vec![
                        Rule {
                            matches: vec![Match::DstInSet("exclude4".into())],
                            action: Action::Return,
                            comment: "ghostwire: excluded destinations".into(),
                        },
                        Rule {
                            matches: vec![Match::DstInSet("exclude6".into())],
                            action: Action::Return,
                            comment: "ghostwire: excluded destinations".into(),
                        },
                        Rule {
                            matches: vec![],
                            action: Action::DnatMap("dnat4".into()),
                            comment: "ghostwire: active to preview".into(),
                        },
                        Rule {
                            matches: vec![],
                            action: Action::DnatMap("dnat6".into()),
                            comment: "ghostwire: active to preview".into(),
                        },
                    ],
                },
                Chain {
                    name: "output".into(),
                    hook: Some(Hook::Output),
                    rules: vec![Rule {
                        matches: vec![],
                        action: Action::Jump("CANARY_DNAT".into()),
                        comment: "ghostwire: preview jump".into(),
                    }],
                },
            ],
        }
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn validation_names_the_problem() {
        let mut t = sample();
        t.chains[0].name = "BAD NAME".into();
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("BAD NAME"), "{e}");

        let mut t = sample();
        t.chains[1].rules[0].action = Action::Jump("MISSING".into());
        assert!(matches!(t.validate(), Err(ModelError::Unknown { .. })));

        let mut t = sample();
        t.chains[0].rules[0].comment = "has \"quotes\"".into();
        assert!(matches!(t.validate(), Err(ModelError::BadComment { .. })));

        let mut t = sample();
        t.sets[0].elements.insert("fd00::/8".parse().unwrap());
        assert!(matches!(t.validate(), Err(ModelError::Mismatch { .. })));

        let mut t = sample();
        t.chains[0].name = "x".repeat(29);
        assert!(t.validate().is_err());

        let mut t = sample();
        t.chains.push(t.chains[1].clone());
        assert!(matches!(t.validate(), Err(ModelError::Duplicate { .. })));
    }

    #[test]
    fn actions_must_fit_their_chain() {
        let chain = |hook, matches, action| Table {
            name: "t".into(),
            sets: vec![],
            maps: vec![],
            chains: vec![Chain {
                name: "c".into(),
                hook,
                rules: vec![Rule {
                    matches,
                    action,
                    comment: "x".into(),
                }],
            }],
        };
        let v4: IpNet = "10.0.0.0/8".parse().unwrap();
        let v6: IpNet = "fd00::/8".parse().unwrap();
        let dnat = Action::Dnat("10.0.0.1:80".parse().unwrap());
        let port = Match::DstPort(Protocol::Tcp, 80);
        for (hook, matches, action, ok) in [
            (Some(Hook::FilterForward), vec![], Action::Drop, true),
            (Some(Hook::Postrouting), vec![], Action::Drop, false),
            (Some(Hook::Postrouting), vec![], Action::Masquerade, true),
            (Some(Hook::Prerouting), vec![], Action::Masquerade, false),
            (
                Some(Hook::Prerouting),
                vec![port.clone()],
                dnat.clone(),
                true,
            ),
            (Some(Hook::Prerouting), vec![], dnat.clone(), false),
            (
                Some(Hook::Prerouting),
                vec![port.clone(), Match::Dst(v6)],
                dnat,
                false,
            ),
            (
                Some(Hook::FilterForward),
                vec![Match::Src(v4), Match::Dst(v6)],
                Action::Accept,
                false,
            ),
            (Some(Hook::FilterForward), vec![], Action::ClampMss, false),
            (
                Some(Hook::FilterForward),
                vec![Match::TcpSyn],
                Action::ClampMss,
                true,
            ),
            (
                Some(Hook::FilterForward),
                vec![Match::InIface("a\"b".into())],
                Action::Accept,
                false,
            ),
        ] {
            let r = chain(hook, matches.clone(), action.clone()).validate();
            assert_eq!(r.is_ok(), ok, "{hook:?} {matches:?} {action:?}: {r:?}");
        }
    }
}

#[cfg(test)]
mod hook_tests {
    use super::*;

    #[test]
    fn hook_parsing_and_its_message_agree() {
        let msg = "nope".parse::<Hook>().unwrap_err();
        let named: Vec<&str> = msg
            .split(|c: char| !c.is_ascii_uppercase())
            .filter(|w| w.len() > 1)
            .collect();
        assert_eq!(named, ["OUTPUT", "PREROUTING", "POSTROUTING"], "{msg}");
        for n in &named {
            let h: Hook = n.parse().unwrap();
            assert_eq!(h.iptables_chain(), *n);
            assert_eq!(n.to_lowercase().parse::<Hook>().unwrap(), h);
        }
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn covered_prefixes_are_dropped() {
        assert_eq!(
            normalize_prefixes(&nets(&["10.96.0.10/32", "10.0.0.0/8", "10.96.0.0/12"])),
            nets(&["10.0.0.0/8"])
        );
        // Host bits are cleared; adjacent and disjoint prefixes stay as they are.
        assert_eq!(
            normalize_prefixes(&nets(&[
                "10.0.0.1/25",
                "10.0.0.128/25",
                "fd00::/8",
                "fd00::1/128"
            ])),
            nets(&["10.0.0.0/25", "10.0.0.128/25", "fd00::/8"])
        );
        assert_eq!(
            normalize_prefixes(&nets(&["0.0.0.0/0", "192.0.2.1/32", "::1/128"])),
            nets(&["0.0.0.0/0", "::1/128"])
        );
    }

    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            // Few distinct high bits, so that nesting is common.
            (0u32..8, 0u8..=32).prop_map(|(hi, len)| IpNet::V4(
                ipnet::Ipv4Net::new((hi << 29).into(), len).unwrap()
            )),
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, len)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), len).unwrap())),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, len)| IpNet::V6(ipnet::Ipv6Net::new(a.into(), len).unwrap())),
        ]
    }

    proptest! {
        #[test]
        fn normalised_sets_cover_the_same_addresses_without_overlap(
            input in proptest::collection::btree_set(net(), 0..24)
        ) {
            let out = normalize_prefixes(&input);
            // Nothing new: every output prefix was in the input.
            for n in &out {
                prop_assert!(input.iter().any(|i| i.trunc() == *n), "{n} is new");
            }
            // Nothing lost: every input prefix lies within an output prefix.
            for i in &input {
                prop_assert!(out.iter().any(|o| o.contains(&i.trunc())), "{i} lost");
            }
            // No two output prefixes overlap (nftables' condition).
            for a in &out {
                for b in &out {
                    prop_assert!(a == b || !(a.contains(b) || b.contains(a)), "{a} and {b} overlap");
                }
            }
            // Normalising again changes nothing.
            prop_assert_eq!(normalize_prefixes(&out), out);
        }
    }
}
