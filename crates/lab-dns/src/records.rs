//! The cluster's names, built from Services and EndpointSlices as CoreDNS's `kubernetes` plugin
//! serves them (with kubeadm's `pods insecure`). Pure: JSON objects in, a [`Zone`] out; a query is
//! answered by [`Zone::lookup`] without I/O.
//!
//! | name | type | answer |
//! |---|---|---|
//! | `<svc>.<ns>.svc.<domain>` | A/AAAA | the ClusterIPs; for a headless Service the ready endpoint addresses |
//! | `<svc>.<ns>.svc.<domain>` | CNAME | an ExternalName Service's `externalName` |
//! | `<host>.<svc>.<ns>.svc.<domain>` | A/AAAA | a headless Service's ready endpoint; `<host>` is the slice's `hostname` (a Pod's `hostname` with `subdomain` = the Service) or the address with `-` for `.`/`:` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<domain>` | SRV | each named port: to the Service name, or (headless) to each endpoint's name |
//! | `<svc>.<ns>.svc.<domain>` | SRV | every port, as above |
//! | `<a-b-c-d>.<ns>.pod.<domain>` | A/AAAA | the address written in the name (any namespace, as `pods insecure`) |
//! | reverse names of ClusterIPs and endpoint addresses | PTR | the Service or endpoint name |
//!
//! A name under the cluster domain (or a reverse name in one of the cluster's ranges) that does not
//! exist is NXDOMAIN with the zone's SOA; a name that exists without the asked type is NOERROR with
//! no answer and the SOA (NODATA). Any other name is not the zone's: the server forwards it.

use crate::rewrite::{self, Rewrite};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Seconds a record may be cached (kubeadm's CoreDNS sets `ttl 30`).
pub const TTL: u32 = 30;

/// The types a query can ask for that the zone knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Soa,
    Any,
    /// Another type: the name may exist, but never with this type.
    Other(u16),
}

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        /// Absolute name, without the trailing dot.
        target: String,
    },
    Ptr(String),
    Cname(String),
}

impl Rdata {
    fn qtype(&self) -> QType {
        match self {
            Rdata::A(_) => QType::A,
            Rdata::Aaaa(_) => QType::Aaaa,
            Rdata::Srv { .. } => QType::Srv,
            Rdata::Ptr(_) => QType::Ptr,
            Rdata::Cname(_) => QType::Cname,
        }
    }
}

/// A zone's start of authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// The zone's apex (e.g. `cluster.local`, `in-addr.arpa`).
    pub zone: String,
    pub mname: String,
    pub rname: String,
    pub serial: u32,
    pub refresh: i32,
    pub retry: i32,
    pub expire: i32,
    /// Negative-caching TTL.
    pub minimum: u32,
}

/// What the zone says about a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records (owner name, data); additional records (e.g. the A records of SRV targets).
    Records {
        answers: Vec<(String, Rdata)>,
        additionals: Vec<(String, Rdata)>,
    },
    /// The name exists, not with this type.
    NoData(Soa),
    /// The name does not exist.
    NxDomain(Soa),
    /// Not a name of the cluster: forward it (or refuse it when there is no upstream).
    NotOurs,
}

/// The settings a zone is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, without trailing dot (`cluster.local`).
    pub domain: String,
    /// Address ranges whose reverse names the zone owns (service and pod CIDRs).
    pub reverse: Vec<(IpAddr, u8)>,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            domain: "cluster.local".into(),
            reverse: vec![
                (Ipv4Addr::new(10, 96, 0, 0).into(), 12),
                (Ipv4Addr::new(10, 244, 0, 0).into(), 16),
                (Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0).into(), 108),
                (Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0).into(), 64),
            ],
        }
    }
}

/// The cluster's records at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    config: ZoneConfig,
    records: BTreeMap<String, BTreeSet<Rdata>>,
    /// Every owner name and its ancestors inside the domain (so `svc.cluster.local` is NODATA,
    /// not NXDOMAIN).
    names: BTreeSet<String>,
    /// Additional records for SRV targets, by target name.
    serial: u32,
    /// The Corefile's rewrite rules, applied to questions before the lookup.
    rewrites: Vec<Rewrite>,
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn list<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `10.244.0.5` → `10-244-0-5`; `fd00:10:244::5` → `fd00-10-244--5` (CoreDNS's endpoint names).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The reverse name of an address (`5.0.244.10.in-addr.arpa`, nibbles under `ip6.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut out = String::new();
            for b in a.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

/// The address a reverse name stands for, if it names a whole address.
fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut o: Vec<u8> = rest
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if o.len() != 4 {
            return None;
        }
        o.reverse();
        return Some(Ipv4Addr::new(o[0], o[1], o[2], o[3]).into());
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let v = nibbles
        .iter()
        .rev()
        .fold(0u128, |acc, n| (acc << 4) | u128::from(*n));
    Some(Ipv6Addr::from(v).into())
}

/// The network part of a reverse name (`0.244.10.in-addr.arpa` → 10.244.0.0 with 24 bits).
fn reverse_prefix(name: &str) -> Option<(IpAddr, u8)> {
    if let Some(rest) = name.strip_suffix("in-addr.arpa") {
        let labels: Vec<u8> = rest
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if labels.len() > 4 {
            return None;
        }
        let mut o = [0u8; 4];
        for (i, b) in labels.iter().rev().enumerate() {
            o[i] = *b;
        }
        return Some((Ipv4Addr::from(o).into(), (labels.len() * 8) as u8));
    }
    let rest = name.strip_suffix("ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
        .collect::<Option<_>>()?;
    if nibbles.len() > 32 {
        return None;
    }
    let mut v = 0u128;
    for (i, n) in nibbles.iter().rev().enumerate() {
        v |= u128::from(*n) << (124 - 4 * i);
    }
    Some((Ipv6Addr::from(v).into(), (nibbles.len() * 4) as u8))
}

fn in_range(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// Whether two prefixes overlap (one contains the other).
fn overlaps(a: (IpAddr, u8), b: (IpAddr, u8)) -> bool {
    let bits = a.1.min(b.1);
    in_range(a.0, b.0, bits)
}

fn is_ready(endpoint: &Value) -> bool {
    // A missing `ready` means ready (EndpointSlice API).
    endpoint
        .pointer("/conditions/ready")
        .and_then(Value::as_bool)
        != Some(false)
}

fn addr_rdata(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(a) => Rdata::A(a),
        IpAddr::V6(a) => Rdata::Aaaa(a),
    }
}

impl Zone {
    /// The zone for these Services and EndpointSlices. `serial` goes into the SOA (e.g. a
    /// counter of rebuilds, so secondaries and caches can tell versions apart).
    pub fn build(config: ZoneConfig, services: &[Value], slices: &[Value], serial: u32) -> Zone {
        let mut z = Zone {
            config,
            serial,
            ..Zone::default()
        };
        let domain = z.config.domain.clone();
        for svc in services {
            let (ns, name) = (s(svc, "/metadata/namespace"), s(svc, "/metadata/name"));
            if ns.is_empty() || name.is_empty() {
                continue;
            }
            let svc_name = format!("{name}.{ns}.svc.{domain}").to_lowercase();
            if s(svc, "/spec/type") == "ExternalName" {
                let target = s(svc, "/spec/externalName").trim_end_matches('.');
                if !target.is_empty() {
                    z.add(&svc_name, Rdata::Cname(target.to_lowercase()));
                }
                continue;
            }
            let ports: Vec<(&str, String, u16)> = list(svc, "/spec/ports")
                .iter()
                .filter_map(|p| {
                    let port = p
                        .get("port")?
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())?;
                    let proto = p
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_lowercase();
                    Some((
                        p.get("name").and_then(Value::as_str).unwrap_or(""),
                        proto,
                        port,
                    ))
                })
                .collect();
            let cluster_ips: Vec<IpAddr> = list(svc, "/spec/clusterIPs")
                .iter()
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect();
            // Ready endpoints of this Service: (owner name of the endpoint, address).
            let mut endpoints: Vec<(String, IpAddr)> = Vec::new();
            let mut endpoint_ports: Vec<(String, String, u16)> = Vec::new();
            for slice in slices.iter().filter(|sl| {
                s(sl, "/metadata/namespace") == ns
                    && sl
                        .pointer("/metadata/labels/kubernetes.io~1service-name")
                        .and_then(Value::as_str)
                        == Some(name)
            }) {
                for p in list(slice, "/ports") {
                    if let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                        endpoint_ports.push((
                            p["name"].as_str().unwrap_or("").to_string(),
                            p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                            port,
                        ));
                    }
                }
                for ep in list(slice, "/endpoints").iter().filter(|e| is_ready(e)) {
                    let hostname = s(ep, "/hostname").to_lowercase();
                    for a in list(ep, "/addresses") {
                        let Some(ip) = a.as_str().and_then(|a| a.parse::<IpAddr>().ok()) else {
                            continue;
                        };
                        let host = if hostname.is_empty() {
                            dashed(ip)
                        } else {
                            hostname.clone()
                        };
                        endpoints.push((format!("{host}.{svc_name}"), ip));
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
            let headless = cluster_ips.is_empty();
            z.names.insert(svc_name.clone());
            if headless {
                for (owner, ip) in &endpoints {
                    z.add(&svc_name, addr_rdata(*ip));
                    z.add(owner, addr_rdata(*ip));
                    z.add(&reverse_name(*ip), Rdata::Ptr(owner.clone()));
                }
            } else {
                for ip in &cluster_ips {
                    z.add(&svc_name, addr_rdata(*ip));
                    z.add(&reverse_name(*ip), Rdata::Ptr(svc_name.clone()));
                }
                // As CoreDNS: endpoint addresses of any Service resolve back to their names.
                for (owner, ip) in &endpoints {
                    z.add(&reverse_name(*ip), Rdata::Ptr(owner.clone()));
                }
            }
            // SRV: a headless Service's ports are its endpoints' (target) ports.
            let srv_ports: Vec<(String, String, u16)> = if headless {
                let mut p = endpoint_ports;
                p.sort();
                p.dedup();
                p
            } else {
                ports
                    .iter()
                    .map(|(n, pr, p)| (n.to_string(), pr.clone(), *p))
                    .collect()
            };
            let targets: Vec<String> = if headless {
                let mut t: Vec<String> = endpoints.iter().map(|(o, _)| o.clone()).collect();
                t.dedup();
                t
            } else {
                vec![svc_name.clone()]
            };
            if targets.is_empty() {
                continue;
            }
            let weight = (100 / targets.len()).max(1) as u16;
            for (pname, proto, port) in &srv_ports {
                for t in &targets {
                    let rd = Rdata::Srv {
                        priority: 0,
                        weight,
                        port: *port,
                        target: t.clone(),
                    };
                    if !pname.is_empty() {
                        z.add(&format!("_{pname}._{proto}.{svc_name}"), rd.clone());
                    }
                    z.add(&svc_name, rd);
                }
            }
        }
        z
    }

    fn add(&mut self, name: &str, rd: Rdata) {
        let name = name.to_lowercase();
        let mut n = name.as_str();
        loop {
            self.names.insert(n.to_string());
            match n.split_once('.') {
                Some((_, rest)) if rest.len() >= self.config.domain.len() => n = rest,
                _ => break,
            }
        }
        self.records.entry(name).or_default().insert(rd);
    }

    /// The SOA of the zone `name` belongs to, if the zone owns it.
    pub fn soa_for(&self, name: &str) -> Option<Soa> {
        let name = name.trim_end_matches('.').to_lowercase();
        let domain = &self.config.domain;
        let apex = if name == *domain || name.ends_with(&format!(".{domain}")) {
            domain.clone()
        } else if let Some((net, bits)) = reverse_prefix(&name) {
            let owned = self.config.reverse.iter().any(|r| {
                r.0.is_ipv4() == net.is_ipv4() && (overlaps(*r, (net, bits)) && bits >= r.1)
            });
            if !owned {
                return None;
            }
            if net.is_ipv4() {
                "in-addr.arpa".to_string()
            } else {
                "ip6.arpa".to_string()
            }
        } else {
            return None;
        };
        Some(Soa {
            mname: format!("ns.dns.{apex}"),
            rname: format!("hostmaster.{apex}"),
            zone: apex,
            serial: self.serial,
            refresh: 7200,
            retry: 1800,
            expire: 86400,
            minimum: TTL,
        })
    }

    /// The zone answering through `rewrites` (a Corefile's rules, see [`crate::rewrite`]).
    pub fn with_rewrites(mut self, rewrites: Vec<Rewrite>) -> Zone {
        self.rewrites = rewrites;
        self
    }

    /// Answers one question; a name a rewrite rule matches is answered from the rewritten name,
    /// with the answers' owner names rewritten back.
    pub fn lookup(&self, name: &str, qtype: QType) -> Answer {
        let name = name.trim_end_matches('.').to_lowercase();
        let Some((rule, to)) = rewrite::apply(&self.rewrites, &name) else {
            return self.lookup_name(name, qtype);
        };
        match self.lookup_name(to, qtype) {
            Answer::Records {
                answers,
                additionals,
            } => {
                let back = |v: Vec<(String, Rdata)>| -> Vec<(String, Rdata)> {
                    v.into_iter().map(|(n, r)| (rule.answer(&n), r)).collect()
                };
                Answer::Records {
                    answers: back(answers),
                    additionals: back(additionals),
                }
            }
            other => other,
        }
    }

    fn lookup_name(&self, name: String, qtype: QType) -> Answer {
        let Some(soa) = self.soa_for(&name) else {
            return Answer::NotOurs;
        };
        if qtype == QType::Soa && name == soa.zone {
            return Answer::NoData(soa); // the server adds the SOA itself as the answer
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let records: Vec<Rdata> = match self.records.get(&name) {
            Some(r) => r.iter().cloned().collect(),
            None => self.synthesised(&name).into_iter().collect(),
        };
        if records.is_empty() {
            return if self.names.contains(&name) || name == soa.zone || self.is_pod_zone(&name) {
                Answer::NoData(soa)
            } else {
                Answer::NxDomain(soa)
            };
        }
        let cname = records.iter().find_map(|r| match r {
            Rdata::Cname(t) => Some(t.clone()),
            _ => None,
        });
        for r in &records {
            if qtype == QType::Any || r.qtype() == qtype || cname.is_some() {
                answers.push((name.clone(), r.clone()));
            }
        }
        // A CNAME inside the zone is followed, as an authoritative server does.
        if let Some(t) = cname
            && qtype != QType::Cname
            && let Some(rs) = self.records.get(&t)
        {
            for r in rs
                .iter()
                .filter(|r| r.qtype() == qtype || qtype == QType::Any)
            {
                answers.push((t.clone(), r.clone()));
            }
        }
        if answers.is_empty() {
            return Answer::NoData(soa);
        }
        for (_, r) in &answers {
            if let Rdata::Srv { target, .. } = r
                && let Some(rs) = self.records.get(target)
            {
                for a in rs
                    .iter()
                    .filter(|a| matches!(a, Rdata::A(_) | Rdata::Aaaa(_)))
                {
                    additionals.push((target.clone(), a.clone()));
                }
            }
        }
        additionals.sort();
        additionals.dedup();
        Answer::Records {
            answers,
            additionals,
        }
    }

    /// `<dashed-ip>.<ns>.pod.<domain>`: the address in the name.
    fn synthesised(&self, name: &str) -> Option<Rdata> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.config.domain))?;
        let (host, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        if let Ok(a) = host.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(Rdata::A(a));
        }
        host.replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(Rdata::Aaaa)
    }

    /// `pod.<domain>` and `<ns>.pod.<domain>` exist as parents of every pod name.
    fn is_pod_zone(&self, name: &str) -> bool {
        let pod = format!("pod.{}", self.config.domain);
        name == pod
            || name
                .strip_suffix(&format!(".{pod}"))
                .is_some_and(|ns| !ns.contains('.'))
    }

    /// The addresses an owner name has (used by tests and the benchmark's record dump).
    pub fn records(&self) -> impl Iterator<Item = (&str, &Rdata)> {
        self.records
            .iter()
            .flat_map(|(n, rs)| rs.iter().map(move |r| (n.as_str(), r)))
    }

    /// Whether this answer came from a reverse name the zone owns.
    pub fn owns_reverse(&self, ip: IpAddr) -> bool {
        self.config
            .reverse
            .iter()
            .any(|(n, b)| in_range(ip, *n, *b))
    }

    /// The address of a whole reverse name (`…in-addr.arpa`, `…ip6.arpa`).
    pub fn reverse_address(name: &str) -> Option<IpAddr> {
        parse_reverse(name.trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ips: &[&str], ports: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name},
               "spec": {"type": "ClusterIP", "clusterIPs": ips, "ports": ports}})
    }

    fn slice(ns: &str, svc: &str, family: &str, ports: Value, eps: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": format!("{svc}-{family}"),
                            "labels": {"kubernetes.io/service-name": svc}},
               "addressType": family, "ports": ports, "endpoints": eps})
    }

    fn zone() -> Zone {
        let services = vec![
            svc(
                "shop",
                "web",
                &["10.96.4.7", "fd00:10:96::4:7"],
                json!([{"name": "http", "port": 80, "protocol": "TCP"},
                       {"name": "dns", "port": 53, "protocol": "UDP"}]),
            ),
            json!({"metadata": {"namespace": "shop", "name": "db"},
                   "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                            "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"namespace": "shop", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "Web.Shop.svc.cluster.local."}}),
        ];
        let slices = vec![
            slice(
                "shop",
                "web",
                "IPv4",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                json!([{"addresses": ["10.244.0.9"], "conditions": {"ready": true}}]),
            ),
            slice(
                "shop",
                "db",
                "IPv4",
                json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
                json!([
                    {"addresses": ["10.244.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.244.0.6"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.0.7"], "hostname": "db-2", "conditions": {"ready": false}},
                ]),
            ),
            slice(
                "shop",
                "db",
                "IPv6",
                json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
                json!([{"addresses": ["fd00:10:244::5"], "hostname": "db-0", "conditions": {}}]),
            ),
        ];
        Zone::build(ZoneConfig::default(), &services, &slices, 7)
    }

    fn answers(a: Answer) -> Vec<(String, Rdata)> {
        match a {
            Answer::Records { answers, .. } => answers,
            other => panic!("no records: {other:?}"),
        }
    }

    #[test]
    fn rewritten_questions_are_answered_under_the_asked_name() {
        let rules = crate::rewrite::parse_corefile(
            "cluster.west {\n rewrite continue {\n  name regex (.*)\\.(.*)\\.svc\\.cluster\\.west {1}.{2}.svc.cluster.local\n  answer name (.*)\\.(.*)\\.svc\\.cluster\\.local {1}.{2}.svc.cluster.west\n }\n}\n",
        )
        .unwrap();
        let z = zone().with_rewrites(rules);
        assert_eq!(
            answers(z.lookup("web.shop.svc.cluster.west.", QType::A)),
            [(
                "web.shop.svc.cluster.west".into(),
                Rdata::A("10.96.4.7".parse().unwrap())
            )]
        );
        assert!(matches!(
            z.lookup("nope.shop.svc.cluster.west", QType::A),
            Answer::NxDomain(_)
        ));
        // Without the rules the name is not the cluster's.
        assert_eq!(
            zone().lookup("web.shop.svc.cluster.west", QType::A),
            Answer::NotOurs
        );
    }

    #[test]
    fn cluster_ip_services_answer_their_cluster_ips() {
        let z = zone();
        assert_eq!(
            answers(z.lookup("web.shop.svc.cluster.local.", QType::A)),
            [(
                "web.shop.svc.cluster.local".into(),
                Rdata::A("10.96.4.7".parse().unwrap())
            )]
        );
        assert_eq!(
            answers(z.lookup("WEB.shop.svc.cluster.local", QType::Aaaa)),
            [(
                "web.shop.svc.cluster.local".into(),
                Rdata::Aaaa("fd00:10:96::4:7".parse().unwrap())
            )]
        );
    }

    #[test]
    fn headless_services_answer_ready_endpoints_and_their_hostnames() {
        let z = zone();
        let got = answers(z.lookup("db.shop.svc.cluster.local", QType::A));
        let ips: Vec<String> = got
            .iter()
            .map(|(_, r)| match r {
                Rdata::A(a) => a.to_string(),
                r => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(ips, ["10.244.0.5", "10.244.0.6"], "not-ready db-2 left out");
        assert_eq!(
            answers(z.lookup("db-0.db.shop.svc.cluster.local", QType::A))[0].1,
            Rdata::A("10.244.0.5".parse().unwrap())
        );
        assert_eq!(
            answers(z.lookup("db-0.db.shop.svc.cluster.local", QType::Aaaa))[0].1,
            Rdata::Aaaa("fd00:10:244::5".parse().unwrap())
        );
        // No hostname: the dashed address.
        assert!(matches!(
            z.lookup("10-244-0-6.db.shop.svc.cluster.local", QType::A),
            Answer::Records { .. }
        ));
        assert!(matches!(
            z.lookup("db-2.db.shop.svc.cluster.local", QType::A),
            Answer::NxDomain(_)
        ));
    }

    #[test]
    fn srv_for_named_ports_with_targets_and_additionals() {
        let z = zone();
        let Answer::Records {
            answers,
            additionals,
        } = z.lookup("_http._tcp.web.shop.svc.cluster.local", QType::Srv)
        else {
            panic!()
        };
        assert_eq!(
            answers[0].1,
            Rdata::Srv {
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.shop.svc.cluster.local".into()
            }
        );
        assert_eq!(additionals.len(), 2, "A and AAAA of the target");
        assert!(matches!(
            z.lookup("_dns._udp.web.shop.svc.cluster.local", QType::Srv),
            Answer::Records { .. }
        ));
        // Headless: one per ready endpoint, the endpoint's own port.
        let got = answers_of(z.lookup("_pg._tcp.db.shop.svc.cluster.local", QType::Srv));
        assert_eq!(got.len(), 2);
        assert!(got.contains(&Rdata::Srv {
            priority: 0,
            weight: 50,
            port: 5432,
            target: "db-0.db.shop.svc.cluster.local".into()
        }));
        assert!(matches!(
            z.lookup("_nope._tcp.web.shop.svc.cluster.local", QType::Srv),
            Answer::NxDomain(_)
        ));
    }

    fn answers_of(a: Answer) -> Vec<Rdata> {
        answers(a).into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn ptr_for_cluster_ips_and_endpoints() {
        let z = zone();
        assert_eq!(
            reverse_name("10.96.4.7".parse().unwrap()),
            "7.4.96.10.in-addr.arpa"
        );
        assert_eq!(
            answers_of(z.lookup("7.4.96.10.in-addr.arpa.", QType::Ptr)),
            [Rdata::Ptr("web.shop.svc.cluster.local".into())]
        );
        let v6 = reverse_name("fd00:10:244::5".parse().unwrap());
        assert!(v6.ends_with(".0.0.d.f.ip6.arpa") && v6.starts_with("5.0.0.0."));
        assert_eq!(
            Zone::reverse_address(&v6),
            Some("fd00:10:244::5".parse().unwrap())
        );
        assert_eq!(
            answers_of(z.lookup(&v6, QType::Ptr)),
            [Rdata::Ptr("db-0.db.shop.svc.cluster.local".into())]
        );
        assert_eq!(
            answers_of(z.lookup("9.0.244.10.in-addr.arpa", QType::Ptr)),
            [Rdata::Ptr("10-244-0-9.web.shop.svc.cluster.local".into())]
        );
        // In a cluster range but unknown: NXDOMAIN with the reverse zone's SOA.
        match z.lookup("99.0.244.10.in-addr.arpa", QType::Ptr) {
            Answer::NxDomain(soa) => assert_eq!(soa.zone, "in-addr.arpa"),
            other => panic!("{other:?}"),
        }
        // Outside every cluster range: not ours.
        assert_eq!(
            z.lookup("1.1.168.192.in-addr.arpa", QType::Ptr),
            Answer::NotOurs
        );
    }

    #[test]
    fn pod_names_carry_their_address() {
        let z = zone();
        assert_eq!(
            answers_of(z.lookup("10-244-0-5.shop.pod.cluster.local", QType::A)),
            [Rdata::A("10.244.0.5".parse().unwrap())]
        );
        assert_eq!(
            answers_of(z.lookup("fd00-10-244--5.default.pod.cluster.local", QType::Aaaa)),
            [Rdata::Aaaa("fd00:10:244::5".parse().unwrap())]
        );
        assert!(matches!(
            z.lookup("10-244-0-5.shop.pod.cluster.local", QType::Aaaa),
            Answer::NoData(_)
        ));
        assert!(matches!(
            z.lookup("nonsense.shop.pod.cluster.local", QType::A),
            Answer::NxDomain(_)
        ));
    }

    #[test]
    fn nxdomain_and_nodata_carry_the_soa() {
        let z = zone();
        match z.lookup("nope.shop.svc.cluster.local", QType::A) {
            Answer::NxDomain(soa) => {
                assert_eq!(soa.zone, "cluster.local");
                assert_eq!(soa.mname, "ns.dns.cluster.local");
                assert_eq!(soa.rname, "hostmaster.cluster.local");
                assert_eq!(soa.serial, 7);
                assert_eq!(soa.minimum, TTL);
            }
            other => panic!("{other:?}"),
        }
        // Empty non-terminals and existing names without the type are NODATA.
        assert!(matches!(
            z.lookup("shop.svc.cluster.local", QType::A),
            Answer::NoData(_)
        ));
        assert!(matches!(
            z.lookup("svc.cluster.local", QType::A),
            Answer::NoData(_)
        ));
        assert!(matches!(
            z.lookup("web.shop.svc.cluster.local", QType::Other(16)),
            Answer::NoData(_)
        ));
        // ndots:5 search expansions of a full name are NXDOMAIN, so the resolver moves on.
        assert!(matches!(
            z.lookup(
                "web.shop.svc.cluster.local.shop.svc.cluster.local",
                QType::A
            ),
            Answer::NxDomain(_)
        ));
        assert_eq!(z.lookup("example.com", QType::A), Answer::NotOurs);
        assert_eq!(z.lookup("cluster.localhost", QType::A), Answer::NotOurs);
    }

    #[test]
    fn external_name_is_a_cname_followed_inside_the_zone() {
        let z = zone();
        let got = answers(z.lookup("ext.shop.svc.cluster.local", QType::A));
        assert_eq!(
            got[0],
            (
                "ext.shop.svc.cluster.local".into(),
                Rdata::Cname("web.shop.svc.cluster.local".into())
            )
        );
        assert_eq!(got[1].1, Rdata::A("10.96.4.7".parse().unwrap()));
    }
}
