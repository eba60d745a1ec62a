//! A small netlink client, in the calling thread's network namespace: the elements of
//! an nftables set or map (nf_tables: dump; the read-back of large maps), the
//! interfaces' addresses (rtnetlink), the conntrack entries of a destination
//! (ctnetlink: dump, delete) and the TCP sockets connected to it (sock_diag: dump,
//! SOCK_DESTROY).
//!
//! No `unsafe`: the socket comes from socket2 and is never bound or connected (the
//! kernel autobinds it on the first send, and an unconnected netlink socket sends to
//! the kernel); messages are built and parsed by hand, little-endian host order as the
//! kernel expects on the machines we run on, network order where the ABI says so.

use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const AF_NETLINK: i32 = 16;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NETLINK_ROUTE: i32 = 0;
const NETLINK_SOCK_DIAG: i32 = 4;
const NETLINK_NETFILTER: i32 = 12;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const IPPROTO_TCP: u8 = 6;

/// ctnetlink: subsystem 1, messages NEW=0, GET=1, DELETE=2.
const CT_GET: u16 = (1 << 8) | 1;
const CT_DELETE: u16 = (1 << 8) | 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;

const EOPNOTSUPP: i32 = 95;
const ENOENT: i32 = 2;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink socket of one protocol.
struct Nl {
    sock: Socket,
    seq: u32,
}

/// A reply message: its type and payload (after the 16-byte header).
struct Msg {
    ty: u16,
    payload: Vec<u8>,
}

impl Nl {
    fn open(protocol: i32) -> io::Result<Nl> {
        let sock = Socket::new(
            Domain::from(AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(protocol)),
        )?;
        // A kernel that never answers must not hold a flip.
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Nl { sock, seq: 0 })
    }

    /// Sends one request and collects its replies: all parts of a dump up to
    /// NLMSG_DONE, or the acknowledgement. A negative errno in the reply is an error.
    fn request(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<Vec<Msg>> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + payload.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(payload);
        self.sock.send(&buf)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rx = vec![0u8; 1 << 16];
        loop {
            let n = (&self.sock).read(&mut rx)?;
            let mut at = 0;
            while at + 16 <= n {
                let mlen = u32::from_ne_bytes(rx[at..at + 4].try_into().expect("4 bytes")) as usize;
                let mty = u16::from_ne_bytes(rx[at + 4..at + 6].try_into().expect("2 bytes"));
                let mseq = u32::from_ne_bytes(rx[at + 8..at + 12].try_into().expect("4 bytes"));
                if mlen < 16 || at + mlen > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink: truncated message",
                    ));
                }
                let body = &rx[at + 16..at + mlen];
                at += align(mlen);
                if mseq != self.seq {
                    continue; // A late answer to an earlier request.
                }
                match mty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {
                        out.push(Msg {
                            ty: mty,
                            payload: body.to_vec(),
                        });
                        if !dump {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

/// The attributes in `b`: (type without flags, payload, the whole attribute).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len], &b[..len]));
        b = &b[align(len).min(b.len())..];
    }
    out
}

fn find(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).into_iter().find(|a| a.0 == ty).map(|a| a.1)
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// The global addresses of this namespace's interfaces (loopback and link-local left out).
pub fn global_addresses() -> io::Result<Vec<IpAddr>> {
    let mut nl = Nl::open(NETLINK_ROUTE)?;
    // struct ifaddrmsg, all families.
    let msgs = nl.request(RTM_GETADDR, NLM_F_DUMP, &[0u8; 8])?;
    let mut out = Vec::new();
    for m in msgs
        .iter()
        .filter(|m| m.ty == RTM_NEWADDR && m.payload.len() >= 8)
    {
        let scope = m.payload[3];
        if scope != 0 {
            continue; // host or link scope
        }
        let a = &m.payload[8..];
        if let Some(ip) = find(a, IFA_LOCAL)
            .or_else(|| find(a, IFA_ADDRESS))
            .and_then(ip_from)
        {
            out.push(ip);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The IP protocol number of `p`.
pub fn ip_proto(p: crate::Protocol) -> u8 {
    match p {
        crate::Protocol::Tcp => 6,
        crate::Protocol::Udp => 17,
        crate::Protocol::Sctp => 132,
    }
}

/// Deletes the conntrack entries whose original direction goes to `dst` over
/// `protocol` (an IPPROTO number). Returns how many were deleted.
pub fn conntrack_delete(dst: SocketAddr, protocol: u8) -> io::Result<usize> {
    let mut nl = Nl::open(NETLINK_NETFILTER)?;
    let family = if dst.is_ipv4() { AF_INET } else { AF_INET6 };
    // struct nfgenmsg: family, version 0, res_id 0.
    let msgs = nl.request(CT_GET, NLM_F_DUMP, &[family, 0, 0, 0])?;
    let mut deleted = 0;
    for m in &msgs {
        let Some(body) = m.payload.get(4..) else {
            continue;
        };
        let Some((orig, raw)) = attrs(body)
            .into_iter()
            .find(|a| a.0 == CTA_TUPLE_ORIG)
            .map(|a| (a.1, a.2))
        else {
            continue;
        };
        let ip = find(orig, CTA_TUPLE_IP)
            .and_then(|ip| find(ip, CTA_IP_V4_DST).or_else(|| find(ip, CTA_IP_V6_DST)))
            .and_then(ip_from);
        let proto = find(orig, CTA_TUPLE_PROTO);
        let num = proto
            .and_then(|p| find(p, CTA_PROTO_NUM))
            .and_then(|n| n.first().copied());
        let port = proto
            .and_then(|p| find(p, CTA_PROTO_DST_PORT))
            .and_then(|p| Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?)));
        if ip != Some(dst.ip()) || num != Some(protocol) || port != Some(dst.port()) {
            continue;
        }
        // Delete by the entry's own original tuple, as the kernel gave it.
        let mut req = vec![family, 0, 0, 0];
        let mut tuple = raw.to_vec();
        let ty = u16::from_ne_bytes([tuple[2], tuple[3]]) | NLA_F_NESTED;
        tuple[2..4].copy_from_slice(&ty.to_ne_bytes());
        req.extend_from_slice(&tuple);
        req.resize(align(req.len()), 0);
        match nl.request(CT_DELETE, NLM_F_ACK, &req) {
            Ok(_) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(ENOENT) => {} // gone meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// One conntrack entry: the original direction's protocol, source and destination, and
/// the reply direction's source (where a DNAT sent the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub protocol: u8,
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub reply_src: SocketAddr,
}

/// This namespace's conntrack entries of one family (IPv4 or IPv6).
pub fn conntrack_entries(ipv6: bool) -> io::Result<Vec<CtEntry>> {
    const CTA_TUPLE_REPLY: u16 = 2;
    const CTA_IP_V4_SRC: u16 = 1;
    const CTA_IP_V6_SRC: u16 = 3;
    const CTA_PROTO_SRC_PORT: u16 = 2;
    let mut nl = Nl::open(NETLINK_NETFILTER)?;
    let family = if ipv6 { AF_INET6 } else { AF_INET };
    let msgs = nl.request(CT_GET, NLM_F_DUMP, &[family, 0, 0, 0])?;
    let tuple = |t: &[u8]| -> Option<(u8, SocketAddr, SocketAddr)> {
        let ip = find(t, CTA_TUPLE_IP)?;
        let proto = find(t, CTA_TUPLE_PROTO)?;
        let port = |ty| {
            Some(u16::from_be_bytes(
                find(proto, ty)?.get(..2)?.try_into().ok()?,
            ))
        };
        let src = find(ip, CTA_IP_V4_SRC)
            .or_else(|| find(ip, CTA_IP_V6_SRC))
            .and_then(ip_from)?;
        let dst = find(ip, CTA_IP_V4_DST)
            .or_else(|| find(ip, CTA_IP_V6_DST))
            .and_then(ip_from)?;
        Some((
            *find(proto, CTA_PROTO_NUM)?.first()?,
            SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?),
            SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?),
        ))
    };
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let body = m.payload.get(4..)?;
            let (protocol, orig_src, orig_dst) = tuple(find(body, CTA_TUPLE_ORIG)?)?;
            let (_, reply_src, _) = tuple(find(body, CTA_TUPLE_REPLY)?)?;
            Some(CtEntry {
                protocol,
                orig_src,
                orig_dst,
                reply_src,
            })
        })
        .collect())
}

/// TCP states whose sockets are cut: every one with a peer (not LISTEN, not CLOSE).
const CONNECTED_STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2) // SYN_SENT
    | (1 << 3) // SYN_RECV
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 11); // CLOSING

/// struct inet_diag_req_v2 with an all-zero socket id, or `id` (48 bytes).
fn diag_req(family: u8, states: u32, id: Option<&[u8]>) -> Vec<u8> {
    let mut req = vec![family, IPPROTO_TCP, 0, 0];
    req.extend_from_slice(&states.to_ne_bytes());
    match id {
        Some(id) => req.extend_from_slice(id),
        None => req.extend_from_slice(&[0u8; 48]),
    }
    req
}

/// Whether the kernel can destroy sockets (CONFIG_INET_DIAG_DESTROY): destroying a
/// socket that does not exist says ENOENT when it can, EOPNOTSUPP when it cannot.
pub fn sock_destroy_supported() -> io::Result<bool> {
    let mut nl = Nl::open(NETLINK_SOCK_DIAG)?;
    match nl.request(SOCK_DESTROY, NLM_F_ACK, &diag_req(AF_INET, u32::MAX, None)) {
        Err(e) if e.raw_os_error() == Some(EOPNOTSUPP) => Ok(false),
        Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(true),
        Ok(_) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Destroys (SOCK_DESTROY) this namespace's TCP sockets connected to `dst`, IPv4-mapped
/// IPv6 sockets included; their owners see ECONNABORTED and the peer a reset.
/// Returns how many were destroyed.
pub fn destroy_tcp_to(dst: SocketAddr) -> io::Result<usize> {
    let mut nl = Nl::open(NETLINK_SOCK_DIAG)?;
    let mut destroyed = 0;
    let families: &[u8] = if dst.is_ipv4() {
        &[AF_INET, AF_INET6]
    } else {
        &[AF_INET6]
    };
    for &family in families {
        let msgs = nl.request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_DUMP,
            &diag_req(family, CONNECTED_STATES, None),
        )?;
        for m in &msgs {
            // struct inet_diag_msg: family, state, timer, retrans, then the 48-byte id.
            let Some(id) = m.payload.get(4..52) else {
                continue;
            };
            let dport = u16::from_be_bytes([id[2], id[3]]);
            let raw = &id[20..36];
            let ip = if family == AF_INET {
                IpAddr::from(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            } else {
                let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(raw).expect("16 bytes"));
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            };
            if ip != dst.ip() || dport != dst.port() {
                continue;
            }
            match nl.request(
                SOCK_DESTROY,
                NLM_F_ACK,
                &diag_req(family, u32::MAX, Some(id)),
            ) {
                Ok(_) => destroyed += 1,
                Err(e) if e.raw_os_error() == Some(ENOENT) => {} // closed meanwhile
                Err(e) => return Err(e),
            }
        }
    }
    Ok(destroyed)
}

/// nf_tables: subsystem 10, message GETSETELEM = 13, family NFPROTO_INET = 1.
const NFT_GETSETELEM: u16 = (10 << 8) | 13;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

fn push_str_attr(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let len = 4 + s.len() + 1;
    buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    buf.resize(align(buf.len()), 0);
}

/// One element of an nftables set or map, as the kernel holds it: the key's and the
/// data's raw bytes (each field padded to 4 bytes, network order), and whether it is
/// the (exclusive) end of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElem {
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
    pub interval_end: bool,
}

/// The elements of set (or map) `set` of the `inet` table `table`, in one netlink dump,
/// without `nft`: reading 10,000 elements this way costs milliseconds, where `nft list`
/// builds and prints an expression per element.
pub fn nft_set_elements(table: &str, set: &str) -> io::Result<Vec<SetElem>> {
    let mut nl = Nl::open(NETLINK_NETFILTER)?;
    let mut req = vec![NFPROTO_INET, 0, 0, 0];
    push_str_attr(&mut req, NFTA_SET_ELEM_LIST_TABLE, table);
    push_str_attr(&mut req, NFTA_SET_ELEM_LIST_SET, set);
    let msgs = nl.request(NFT_GETSETELEM, NLM_F_DUMP, &req)?;
    let mut out = Vec::new();
    for m in &msgs {
        let Some(list) = m
            .payload
            .get(4..)
            .and_then(|b| find(b, NFTA_SET_ELEM_LIST_ELEMENTS))
        else {
            continue;
        };
        for (ty, e, _) in attrs(list) {
            if ty != NFTA_LIST_ELEM {
                continue;
            }
            let value = |a: u16| {
                find(e, a)
                    .and_then(|k| find(k, NFTA_DATA_VALUE))
                    .map(<[u8]>::to_vec)
            };
            let flags = find(e, NFTA_SET_ELEM_FLAGS)
                .and_then(|f| Some(u32::from_be_bytes(f.get(..4)?.try_into().ok()?)))
                .unwrap_or(0);
            out.push(SetElem {
                key: value(NFTA_SET_ELEM_KEY).unwrap_or_default(),
                data: value(NFTA_SET_ELEM_DATA),
                interval_end: flags & NFT_SET_ELEM_INTERVAL_END != 0,
            });
        }
    }
    Ok(out)
}

/// nf_tables messages (subsystem 10): GETCHAIN = 4, GETRULE = 7, GETSET = 10.
pub const NFT_GETCHAIN: u16 = (10 << 8) | 4;
pub const NFT_GETRULE: u16 = (10 << 8) | 7;
pub const NFT_GETSET: u16 = (10 << 8) | 10;

/// A netlink attribute: raw bytes, or the attributes inside a nested one. nf_tables does
/// not flag all of its nested attributes as such, so [`Attr::parse_all`] keeps every
/// attribute as bytes and the reader, who knows which ones nest, opens them with
/// [`Attr::inner`]. Types are without their flag bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    Bytes(Vec<u8>),
    Nested(Vec<(u16, Attr)>),
}

impl Attr {
    /// The attributes in `b`, each as bytes.
    pub fn parse_all(b: &[u8]) -> Vec<(u16, Attr)> {
        attrs(b)
            .into_iter()
            .map(|(ty, body, _)| (ty, Attr::Bytes(body.to_vec())))
            .collect()
    }

    /// The attributes inside this one.
    pub fn inner(&self) -> Vec<(u16, Attr)> {
        match self {
            Attr::Bytes(b) => Attr::parse_all(b),
            Attr::Nested(v) => v.clone(),
        }
    }
}

/// A message's attributes, by type.
pub type Attrs = Vec<(u16, Attr)>;

/// Every object of one kind (chains, rules, sets) of the `inet` table `table`, as
/// attribute lists, in the kernel's order (rules: chain order), in one netlink dump.
/// The table is asked for by name and filtered again here (attribute 1 of chains,
/// rules and sets names their table).
pub fn nft_dump(msg: u16, table: &str) -> io::Result<Vec<Vec<(u16, Attr)>>> {
    let mut nl = Nl::open(NETLINK_NETFILTER)?;
    let mut req = vec![NFPROTO_INET, 0, 0, 0];
    push_str_attr(&mut req, 1, table);
    let msgs = nl.request(msg, NLM_F_DUMP, &req)?;
    let mut want = table.as_bytes().to_vec();
    want.push(0);
    Ok(msgs
        .iter()
        .filter_map(|m| m.payload.get(4..))
        .map(Attr::parse_all)
        .filter(|a| {
            a.iter()
                .any(|(t, v)| *t == 1 && *v == Attr::Bytes(want.clone()))
        })
        .collect())
}

/// Every object of one kind in every table of every family (NFPROTO_UNSPEC), each with
/// its family (NFPROTO_*) and attributes.
pub fn nft_dump_all(msg: u16) -> io::Result<Vec<(u8, Attrs)>> {
    let mut nl = Nl::open(NETLINK_NETFILTER)?;
    let msgs = nl.request(msg, NLM_F_DUMP, &[0, 0, 0, 0])?;
    Ok(msgs
        .iter()
        .filter_map(|m| Some((*m.payload.first()?, Attr::parse_all(m.payload.get(4..)?))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_nested_and_stop_at_garbage() {
        // A nested attribute (type 1 | NESTED) holding a 4-byte attribute of type 2.
        let mut b = Vec::new();
        b.extend_from_slice(&12u16.to_ne_bytes());
        b.extend_from_slice(&(1u16 | NLA_F_NESTED).to_ne_bytes());
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&[10, 96, 0, 5]);
        // Then a length that runs past the end.
        b.extend_from_slice(&200u16.to_ne_bytes());
        b.extend_from_slice(&3u16.to_ne_bytes());
        let a = attrs(&b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 1);
        assert_eq!(
            find(a[0].1, 2).and_then(ip_from),
            Some("10.96.0.5".parse().unwrap())
        );
        assert_eq!(ip_from(&[1, 2, 3]), None);
    }
}
