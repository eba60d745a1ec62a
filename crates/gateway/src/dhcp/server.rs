//! The DHCP server of the gateway sidecar. The protocol logic ([`Leases::handle`]) is pure:
//! it takes a request and the time and returns the reply, so it is tested without sockets or
//! sleeps. [`serve`] runs it on `vxlan0`.
//!
//! A new gateway Pod starts with no leases. Clients that still hold an address then ask for it
//! again (INIT-REBOOT: REQUEST with the address and no server id; RENEWING/REBINDING: REQUEST
//! from `ciaddr`): the server grants any address of its network that is free or already that
//! client's, instead of NAKing what it does not know, so clients keep their addresses across
//! gateway restarts. Leases are kept by client id (see [`super::ClientKey`]).

use super::{CLIENT_PORT, ClientKey};
use crate::settings::Tunnel4;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    key: ClientKey,
    chaddr: Vec<u8>,
    expires: Instant,
    /// Offered but not yet requested: short-lived.
    offered: bool,
}

/// The server's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tunnel: Tunnel4,
    pub lease_time: Duration,
    pub mtu: Option<u16>,
    /// Addresses never handed out dynamically (nat.conf's static entries).
    pub reserved: BTreeSet<Ipv4Addr>,
}

/// Where and what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub msg: Message,
    /// The destination: `ciaddr` when the client has one, else the offered address (delivered
    /// to `chaddr` at the link layer, see [`serve`]).
    pub to: Ipv4Addr,
    pub chaddr: Vec<u8>,
}

/// Counters for /metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub releases: u64,
    pub ignored: u64,
}

#[derive(Debug)]
pub struct Leases {
    cfg: Config,
    by_addr: BTreeMap<Ipv4Addr, Lease>,
    declined: BTreeMap<Ipv4Addr, Instant>,
    pub counts: Counts,
}

const OFFER_HOLD: Duration = Duration::from_secs(30);

impl Leases {
    pub fn new(cfg: Config) -> Leases {
        Leases {
            cfg,
            by_addr: BTreeMap::new(),
            declined: BTreeMap::new(),
            counts: Counts::default(),
        }
    }

    /// Live leases (not offers), for /metrics.
    pub fn active(&self, now: Instant) -> usize {
        self.by_addr
            .values()
            .filter(|l| !l.offered && l.expires > now)
            .count()
    }

    fn in_pool(&self, a: Ipv4Addr) -> bool {
        a >= self.cfg.tunnel.first_dynamic
            && a <= self.cfg.tunnel.last_dynamic
            && !self.cfg.reserved.contains(&a)
    }

    /// Any address of the network a returning client may keep (pool or not, not the gateway's).
    fn grantable(&self, a: Ipv4Addr) -> bool {
        let t = &self.cfg.tunnel;
        t.net.contains(&a)
            && a != t.gateway
            && a != t.net.network()
            && a != t.net.broadcast()
            && !self.cfg.reserved.contains(&a)
    }

    fn free_for(&self, a: Ipv4Addr, key: &ClientKey, now: Instant) -> bool {
        if self.declined.get(&a).is_some_and(|until| *until > now) {
            return false;
        }
        match self.by_addr.get(&a) {
            None => true,
            Some(l) => l.key == *key || l.expires <= now,
        }
    }

    fn held_by(&self, key: &ClientKey, now: Instant) -> Option<Ipv4Addr> {
        self.by_addr
            .iter()
            .find(|(_, l)| l.key == *key && l.expires > now)
            .map(|(a, _)| *a)
    }

    fn pick(&self, key: &ClientKey, wanted: Option<Ipv4Addr>, now: Instant) -> Option<Ipv4Addr> {
        if let Some(a) = self.held_by(key, now) {
            return Some(a);
        }
        if let Some(a) = wanted.filter(|a| self.in_pool(*a) && self.free_for(*a, key, now)) {
            return Some(a);
        }
        let first = u32::from(self.cfg.tunnel.first_dynamic);
        let last = u32::from(self.cfg.tunnel.last_dynamic);
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| self.in_pool(*a) && self.free_for(*a, key, now))
    }

    fn bind(&mut self, a: Ipv4Addr, msg: &Message, key: ClientKey, now: Instant, offered: bool) {
        // One address per client: an older binding of this key goes.
        self.by_addr.retain(|addr, l| *addr == a || l.key != key);
        let hold = if offered {
            OFFER_HOLD
        } else {
            self.cfg.lease_time
        };
        self.by_addr.insert(
            a,
            Lease {
                key,
                chaddr: msg.chaddr().to_vec(),
                expires: now + hold,
                offered,
            },
        );
    }

    fn reply(&self, req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Message {
        let t = &self.cfg.tunnel;
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply);
        m.set_flags(req.flags());
        if kind != MessageType::Nak {
            m.set_ciaddr(req.ciaddr());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(t.gateway));
        if kind == MessageType::Nak {
            return m;
        }
        let secs = u32::try_from(self.cfg.lease_time.as_secs()).unwrap_or(u32::MAX);
        if kind != MessageType::Ack || yiaddr != Ipv4Addr::UNSPECIFIED {
            o.insert(DhcpOption::AddressLeaseTime(secs));
            o.insert(DhcpOption::Renewal(secs / 2));
            o.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
        o.insert(DhcpOption::SubnetMask(t.net.netmask()));
        o.insert(DhcpOption::BroadcastAddr(t.net.broadcast()));
        o.insert(DhcpOption::Router(vec![t.gateway]));
        o.insert(DhcpOption::DomainNameServer(vec![t.gateway]));
        if let Some(mtu) = self.cfg.mtu {
            o.insert(DhcpOption::InterfaceMtu(mtu));
        }
        m
    }

    fn nak(&mut self, req: &Message, to: Ipv4Addr) -> Option<Reply> {
        self.counts.naks += 1;
        Some(Reply {
            msg: self.reply(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED),
            to,
            chaddr: req.chaddr().to_vec(),
        })
    }

    /// Answers one request received at `now`; `None` means no answer is due.
    pub fn handle(&mut self, req: &Message, now: Instant) -> Option<Reply> {
        if req.opcode() != Opcode::BootRequest {
            self.counts.ignored += 1;
            return None;
        }
        let key = ClientKey::of(req);
        let opt_ip = |code| match req.opts().get(code) {
            Some(DhcpOption::RequestedIpAddress(a)) | Some(DhcpOption::ServerIdentifier(a)) => {
                Some(*a)
            }
            _ => None,
        };
        let requested = opt_ip(OptionCode::RequestedIpAddress);
        let server_id = opt_ip(OptionCode::ServerIdentifier);
        let ciaddr = req.ciaddr();
        match req.opts().msg_type() {
            Some(MessageType::Discover) => {
                let a = self.pick(&key, requested, now)?;
                self.bind(a, req, key, now, true);
                self.counts.offers += 1;
                Some(Reply {
                    msg: self.reply(req, MessageType::Offer, a),
                    to: a,
                    chaddr: req.chaddr().to_vec(),
                })
            }
            Some(MessageType::Request) => {
                let (a, to) = match (server_id, requested) {
                    // SELECTING: an answer to an offer, ours or another server's.
                    (Some(sid), _) if sid != self.cfg.tunnel.gateway => {
                        if let Some(a) = requested
                            && self
                                .by_addr
                                .get(&a)
                                .is_some_and(|l| l.key == key && l.offered)
                        {
                            self.by_addr.remove(&a);
                        }
                        self.counts.ignored += 1;
                        return None;
                    }
                    (Some(_), Some(a)) => (a, a),
                    (Some(_), None) => {
                        self.counts.ignored += 1;
                        return None;
                    }
                    // INIT-REBOOT: the address it had, maybe from a previous gateway.
                    (None, Some(a)) if ciaddr.is_unspecified() => (a, a),
                    // RENEWING / REBINDING: from its address.
                    (None, _) if !ciaddr.is_unspecified() => (ciaddr, ciaddr),
                    (None, _) => {
                        self.counts.ignored += 1;
                        return None;
                    }
                };
                let ok = self.grantable(a)
                    && self.free_for(a, &key, now)
                    && self.held_by(&key, now).is_none_or(|h| h == a);
                if !ok {
                    return self.nak(req, to);
                }
                self.bind(a, req, key, now, false);
                self.counts.acks += 1;
                Some(Reply {
                    msg: self.reply(req, MessageType::Ack, a),
                    to,
                    chaddr: req.chaddr().to_vec(),
                })
            }
            Some(MessageType::Release) => {
                if self.by_addr.get(&ciaddr).is_some_and(|l| l.key == key) {
                    self.by_addr.remove(&ciaddr);
                    self.counts.releases += 1;
                }
                None
            }
            Some(MessageType::Decline) => {
                if let Some(a) = requested {
                    if self.by_addr.get(&a).is_some_and(|l| l.key == key) {
                        self.by_addr.remove(&a);
                    }
                    self.declined.insert(a, now + Duration::from_secs(600));
                }
                None
            }
            Some(MessageType::Inform) if !ciaddr.is_unspecified() => {
                self.counts.acks += 1;
                let mut m = self.reply(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
                m.set_ciaddr(ciaddr);
                Some(Reply {
                    msg: m,
                    to: ciaddr,
                    chaddr: req.chaddr().to_vec(),
                })
            }
            _ => {
                self.counts.ignored += 1;
                None
            }
        }
    }
}

/// ETH_P_IP in network byte order, as a packet socket's protocol.
const ETH_P_IP_BE: i32 = 0x0008;

/// A classic BPF program for a packet socket (link header stripped): keeps UDP datagrams to
/// port 67 that arrived on interface `ifindex` and are not fragments, drops everything else,
/// so that the gateway's forwarded traffic never reaches the server's socket.
fn request_filter(ifindex: u32) -> [socket2::SockFilter; 11] {
    use socket2::SockFilter as F;
    // BPF_LD|BPF_W|BPF_ABS of SKF_AD_OFF + SKF_AD_IFINDEX (-4096 + 8): the receiving interface.
    const IFINDEX: u32 = 0xFFFF_F008;
    [
        F::new(0x20, 0, 0, IFINDEX), // 0: A = ifindex
        F::new(0x15, 0, 7, ifindex), // 1: A == ifindex ? 2 : drop
        F::new(0x30, 0, 0, 9),       // 2: A = ip protocol
        F::new(0x15, 0, 5, 17),      // 3: A == UDP ? 4 : drop
        F::new(0x28, 0, 0, 6),       // 4: A = flags and fragment offset
        F::new(0x45, 3, 0, 0x1FFF),  // 5: a fragment after the first ? drop : 6
        F::new(0xB1, 0, 0, 0),       // 6: X = IP header length
        F::new(0x48, 0, 0, 2),       // 7: A = UDP destination port
        F::new(0x15, 1, 0, 67),      // 8: A == 67 ? accept : drop
        F::new(0x06, 0, 0, 0),       // 9: drop
        F::new(0x06, 0, 0, 0xFFFF),  // 10: accept
    ]
}

/// The Internet checksum (RFC 1071) of `parts`, laid end to end (each part of even length
/// but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet from `src`:67 to `dst`:68 carrying `payload` (a DHCP reply), checksums
/// filled in; what a packet socket sends below the link header.
pub fn reply_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&super::SERVER_PORT.to_be_bytes());
    p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, 17],
        &(udp_len as u16).to_be_bytes()[..],
    ]
    .concat();
    let udp_sum = match checksum(&[&pseudo, &p[20..]]) {
        0 => 0xFFFF,
        s => s,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// Serves on `dev` (port 67) until `stop` is set. Requests are read from a packet socket
/// (filtered in the kernel to UDP port 67 on `dev`), and each reply goes back on it as an
/// IPv4/UDP packet to the link-layer address the request came from, with the client's
/// address as the IP destination. No neighbour entry is needed: the tunnel carries no
/// broadcasts from the gateway (its VXLAN device has no flood list; it learns where each
/// client is), and an entry per client — what this server added before — fills the kernel's
/// neighbour table, which is one for all namespaces (gc_thresh3, 1,024 by default): past it
/// the entry cannot be added and the client gets no answer. A UDP socket holds port 67 on
/// `dev` (never read), so that unicast renewals meet no ICMP port unreachable. `ready` is set
/// once both sockets are bound.
pub fn serve(
    dev: &str,
    leases: std::sync::Arc<std::sync::Mutex<Leases>>,
    stop: &std::sync::atomic::AtomicBool,
    ready: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    let ifindex = crate::iproute::link(dev)
        .map_err(std::io::Error::other)?
        .and_then(|l| l["ifindex"].as_u64())
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| std::io::Error::other(format!("no interface {dev}")))?;
    let hold = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    hold.set_reuse_address(true)?;
    hold.bind_device(Some(dev.as_bytes()))?;
    hold.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, super::SERVER_PORT).into())?;
    hold.set_recv_buffer_size(0)?;
    let sock = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(ETH_P_IP_BE)),
    )?;
    sock.attach_filter(&request_filter(ifindex))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let server = leases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .cfg
        .tunnel
        .gateway;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut buf = [0u8; 2048];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // The sender's link-layer address, then the packet itself (both safe calls).
        let again = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            )
        };
        let from = match sock.peek_sender() {
            Ok(a) => a,
            Err(e) if again(&e) => continue,
            Err(e) => return Err(e),
        };
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) if again(&e) => continue,
            Err(e) => return Err(e),
        };
        // What was queued before the filter was attached is checked here too.
        let Some(payload) = super::client::udp_payload(&buf[..n], super::SERVER_PORT) else {
            continue;
        };
        let Ok(req) = Message::from_bytes(payload) else {
            tracing::debug!(bytes = payload.len(), "not a DHCP message; ignored");
            continue;
        };
        let reply = {
            let mut l = leases.lock().unwrap_or_else(|e| e.into_inner());
            l.handle(&req, Instant::now())
        };
        let Some(reply) = reply else { continue };
        let Ok(bytes) = reply.msg.to_vec() else {
            continue;
        };
        let packet = reply_packet(server, reply.to, &bytes);
        if let Err(e) = sock.send_to(&packet, &from) {
            tracing::warn!(to = %reply.to, error = %e, "cannot send a DHCP reply");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Raw, Settings};

    fn leases(lease: u64) -> Leases {
        let s = Settings::from_raw(&Raw::resolve(None, &|_| None).unwrap()).unwrap();
        Leases::new(Config {
            tunnel: s.tunnel4,
            lease_time: Duration::from_secs(lease),
            mtu: Some(1450),
            reserved: [Ipv4Addr::new(172, 16, 0, 21)].into(),
        })
    }

    fn msg(kind: MessageType, mac: u8, id: Option<&str>) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, mac],
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(id) = id {
            let mut v = vec![0];
            v.extend_from_slice(id.as_bytes());
            m.opts_mut().insert(DhcpOption::ClientIdentifier(v));
        }
        m
    }

    fn with(mut m: Message, o: DhcpOption) -> Message {
        m.opts_mut().insert(o);
        m
    }

    fn kind(r: &Option<Reply>) -> Option<MessageType> {
        r.as_ref().and_then(|r| r.msg.opts().msg_type())
    }

    const GW: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);

    #[test]
    fn discover_offer_request_ack_with_options() {
        let mut l = leases(3600);
        let now = Instant::now();
        let offer = l.handle(&msg(MessageType::Discover, 1, None), now).unwrap();
        assert_eq!(offer.msg.yiaddr(), Ipv4Addr::new(172, 16, 0, 20));
        assert_eq!(offer.to, Ipv4Addr::new(172, 16, 0, 20));
        let o = offer.msg.opts();
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![GW]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![GW]))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        let req = with(
            with(
                msg(MessageType::Request, 1, None),
                DhcpOption::ServerIdentifier(GW),
            ),
            DhcpOption::RequestedIpAddress(offer.msg.yiaddr()),
        );
        let ack = l.handle(&req, now);
        assert_eq!(kind(&ack), Some(MessageType::Ack));
        assert_eq!(l.active(now), 1);
        // A second client skips .20 (taken) and .21 (reserved for nat.conf).
        let offer2 = l.handle(&msg(MessageType::Discover, 2, None), now).unwrap();
        assert_eq!(offer2.msg.yiaddr(), Ipv4Addr::new(172, 16, 0, 22));
        // Lease time is the configured one, and the lease runs out.
        assert_eq!(l.active(now + Duration::from_secs(3601)), 0);
    }

    #[test]
    fn a_new_server_honours_what_clients_still_hold() {
        let mut l = leases(3600);
        let now = Instant::now();
        // INIT-REBOOT for an address this server never gave out: granted.
        let reboot = with(
            msg(MessageType::Request, 1, Some("web-0")),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(172, 16, 0, 57)),
        );
        let r = l.handle(&reboot, now);
        assert_eq!(kind(&r), Some(MessageType::Ack));
        assert_eq!(r.unwrap().msg.yiaddr(), Ipv4Addr::new(172, 16, 0, 57));
        // RENEWING from ciaddr, unknown to the server: granted.
        let mut renew = msg(MessageType::Request, 2, Some("web-1"));
        renew.set_ciaddr(Ipv4Addr::new(172, 16, 0, 58));
        let r = l.handle(&renew, now).unwrap();
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.to, Ipv4Addr::new(172, 16, 0, 58));
        // Another client asking for .57 gets a NAK; outside the network too; the gateway too.
        let steal = with(
            msg(MessageType::Request, 3, Some("web-2")),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(172, 16, 0, 57)),
        );
        assert_eq!(kind(&l.handle(&steal, now)), Some(MessageType::Nak));
        let outside = with(
            msg(MessageType::Request, 3, Some("web-2")),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5)),
        );
        assert_eq!(kind(&l.handle(&outside, now)), Some(MessageType::Nak));
        let gw = with(
            msg(MessageType::Request, 3, Some("web-2")),
            DhcpOption::RequestedIpAddress(GW),
        );
        assert_eq!(kind(&l.handle(&gw, now)), Some(MessageType::Nak));
    }

    #[test]
    fn client_id_keeps_the_address_when_the_mac_changes() {
        let mut l = leases(3600);
        let now = Instant::now();
        let a = l
            .handle(&msg(MessageType::Discover, 1, Some("web-0")), now)
            .unwrap()
            .msg
            .yiaddr();
        let req = with(
            with(
                msg(MessageType::Request, 1, Some("web-0")),
                DhcpOption::ServerIdentifier(GW),
            ),
            DhcpOption::RequestedIpAddress(a),
        );
        assert_eq!(kind(&l.handle(&req, now)), Some(MessageType::Ack));
        // The tunnel was rebuilt: new MAC, same client id, same address.
        let again = l
            .handle(&msg(MessageType::Discover, 9, Some("web-0")), now)
            .unwrap();
        assert_eq!(again.msg.yiaddr(), a);
        assert_eq!(again.chaddr, vec![2, 0, 0, 0, 0, 9]);
        // Without a client id, a new MAC is a new client.
        let other = l.handle(&msg(MessageType::Discover, 9, None), now).unwrap();
        assert_ne!(other.msg.yiaddr(), a);
    }

    #[test]
    fn release_decline_and_other_servers() {
        let mut l = leases(3600);
        let now = Instant::now();
        let a = l
            .handle(&msg(MessageType::Discover, 1, None), now)
            .unwrap()
            .msg
            .yiaddr();
        // The client took another server's offer: ours is dropped, no answer.
        let other = with(
            with(
                msg(MessageType::Request, 1, None),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(172, 16, 0, 2)),
            ),
            DhcpOption::RequestedIpAddress(a),
        );
        assert!(l.handle(&other, now).is_none());
        let b = l
            .handle(&msg(MessageType::Discover, 2, None), now)
            .unwrap()
            .msg
            .yiaddr();
        assert_eq!(a, b, "the dropped offer's address is free again");
        let req = with(
            with(
                msg(MessageType::Request, 2, None),
                DhcpOption::ServerIdentifier(GW),
            ),
            DhcpOption::RequestedIpAddress(b),
        );
        l.handle(&req, now);
        let mut rel = msg(MessageType::Release, 2, None);
        rel.set_ciaddr(b);
        assert!(l.handle(&rel, now).is_none());
        assert_eq!(l.active(now), 0);
        let dec = with(
            msg(MessageType::Decline, 3, None),
            DhcpOption::RequestedIpAddress(b),
        );
        l.handle(&dec, now);
        assert_ne!(
            l.handle(&msg(MessageType::Discover, 3, None), now)
                .unwrap()
                .msg
                .yiaddr(),
            b
        );
    }

    #[test]
    fn the_pool_runs_out_and_expired_leases_come_back() {
        let mut l = leases(60);
        let now = Instant::now();
        let mut got = BTreeSet::new();
        for mac in 0..=255u8 {
            let Some(o) = l.handle(&msg(MessageType::Discover, mac, None), now) else {
                break;
            };
            let a = o.msg.yiaddr();
            let req = with(
                with(
                    msg(MessageType::Request, mac, None),
                    DhcpOption::ServerIdentifier(GW),
                ),
                DhcpOption::RequestedIpAddress(a),
            );
            assert_eq!(kind(&l.handle(&req, now)), Some(MessageType::Ack));
            got.insert(a);
        }
        // .20 to .254 without the reserved .21.
        assert_eq!(got.len(), 234);
        let mut late = msg(MessageType::Discover, 1, Some("late"));
        late.set_xid(1);
        assert!(l.handle(&late, now).is_none());
        assert!(l.handle(&late, now + Duration::from_secs(61)).is_some());
    }

    #[test]
    fn a_reply_packet_has_right_headers_and_checksums() {
        let (src, dst) = (GW, Ipv4Addr::new(172, 16, 0, 20));
        for payload in [&b"odd"[..], &[7u8; 300][..]] {
            let p = reply_packet(src, dst, payload);
            assert_eq!(p.len(), 28 + payload.len());
            assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header checksum");
            assert_eq!(&p[12..16], &src.octets());
            assert_eq!(&p[16..20], &dst.octets());
            let udp_len = (8 + payload.len()) as u16;
            let pseudo = [
                &src.octets()[..],
                &dst.octets()[..],
                &[0, 17],
                &udp_len.to_be_bytes()[..],
            ]
            .concat();
            assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "UDP checksum");
            assert_eq!(
                crate::dhcp::client::udp_payload(&p, CLIENT_PORT),
                Some(payload)
            );
        }
    }

    #[test]
    fn garbage_is_ignored() {
        let mut l = leases(60);
        let mut m = msg(MessageType::Offer, 1, None);
        assert!(l.handle(&m, Instant::now()).is_none());
        m.set_opcode(Opcode::BootReply);
        assert!(l.handle(&m, Instant::now()).is_none());
        assert!(Message::from_bytes(&[1, 2, 3]).is_err());
    }
}
