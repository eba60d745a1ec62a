//! The in-process DHCP client of client init and the client sidecar.
//!
//! Requests go out as broadcasts on `vxlan0` (the client's VXLAN sends them to the gateway).
//! The server answers to the offered address at the hardware address, before that address is
//! configured, so answers are read from a packet socket (as udhcpc and dhclient do), not from
//! the UDP socket. The client id is `0x00 + hostname`, so the gateway keeps the Pod's address
//! when the tunnel (and its MAC) is rebuilt.

use super::{CLIENT_PORT, SERVER_PORT};
use crate::gateway::VXLAN_DEV;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use ipnet::Ipv4Net;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP on {dev}: {what}: {source}")]
    Io {
        dev: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "DHCP on {dev}: no {waiting} from the gateway after {tries} tries (is `ghostwire gateway sidecar` running?)"
    )]
    NoAnswer {
        dev: String,
        waiting: &'static str,
        tries: u32,
    },
    #[error("DHCP on {dev}: the gateway's offer is unusable: {0}", dev = VXLAN_DEV)]
    BadOffer(String),
    #[error(transparent)]
    Ip(#[from] crate::iproute::IpError),
}

/// A lease as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Net,
    pub router: Ipv4Addr,
    pub server: Ipv4Addr,
    pub lease_time: Duration,
    pub obtained: Instant,
}

impl Lease {
    /// When to renew (T1: half the lease).
    pub fn renew_at(&self) -> Instant {
        self.obtained + self.lease_time / 2
    }
}

struct Sockets {
    send: std::net::UdpSocket,
    recv: Socket,
    mac: Vec<u8>,
    client_id: Vec<u8>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DhcpError {
    move |source| DhcpError::Io {
        dev: VXLAN_DEV.into(),
        what,
        source,
    }
}

fn open(hostname: &str) -> Result<Sockets, DhcpError> {
    let mac = crate::iproute::link(VXLAN_DEV)?
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .map(|m| {
            m.split(':')
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect::<Vec<u8>>()
        })
        .filter(|m| m.len() == 6)
        .ok_or_else(|| DhcpError::BadOffer(format!("{VXLAN_DEV} has no hardware address")))?;
    let send = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io("socket"))?;
    send.set_reuse_address(true).map_err(io("SO_REUSEADDR"))?;
    send.set_broadcast(true).map_err(io("SO_BROADCAST"))?;
    send.bind_device(Some(VXLAN_DEV.as_bytes()))
        .map_err(io("bind to device"))?;
    send.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT).into())
        .map_err(io("bind port 68"))?;
    // ETH_P_IP in network byte order: IPv4 packets, link header stripped.
    let recv = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0x0008)))
        .map_err(io("packet socket (needs CAP_NET_RAW)"))?;
    let mut client_id = vec![0u8];
    client_id.extend_from_slice(hostname.as_bytes());
    Ok(Sockets {
        send: send.into(),
        recv,
        mac,
        client_id,
    })
}

impl Sockets {
    fn message(&self, kind: MessageType, xid: u32, ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ClientIdentifier(self.client_id.clone()));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::InterfaceMtu,
        ]));
        m
    }

    fn send(&self, m: &Message, to: Ipv4Addr) -> Result<(), DhcpError> {
        let bytes = m.to_vec().map_err(|e| DhcpError::BadOffer(e.to_string()))?;
        self.send
            .send_to(&bytes, SocketAddrV4::new(to, SERVER_PORT))
            .map_err(io("send"))?;
        Ok(())
    }

    /// Waits for a reply with our xid, one of `kinds`, until `deadline`.
    fn wait(&self, xid: u32, kinds: &[MessageType], deadline: Instant) -> Option<Message> {
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() || self.recv.set_read_timeout(Some(left)).is_err() {
                return None;
            }
            let n = match (&self.recv).read(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let Some(payload) = udp_payload(&buf[..n], CLIENT_PORT) else {
                continue;
            };
            let Ok(m) = Message::from_bytes(payload) else {
                continue;
            };
            if m.opcode() == Opcode::BootReply
                && m.xid() == xid
                && m.chaddr() == self.mac.as_slice()
                && m.opts().msg_type().is_some_and(|k| kinds.contains(&k))
            {
                return Some(m);
            }
        }
    }

    /// Sends `m` up to `tries` times, waiting `each` for an answer.
    fn exchange(
        &self,
        m: &Message,
        to: Ipv4Addr,
        kinds: &[MessageType],
        tries: u32,
        each: Duration,
        waiting: &'static str,
    ) -> Result<Message, DhcpError> {
        for attempt in 0..tries {
            self.send(m, to)?;
            // Quick first tries (a rebuild after a gateway restart), then more patience.
            let wait = each * (1 + attempt / 2);
            if let Some(r) = self.wait(m.xid(), kinds, Instant::now() + wait) {
                return Ok(r);
            }
        }
        Err(DhcpError::NoAnswer {
            dev: VXLAN_DEV.into(),
            waiting,
            tries,
        })
    }
}

/// The UDP payload of an IPv4 packet to `port`, if it is one.
pub fn udp_payload(ip: &[u8], port: u16) -> Option<&[u8]> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len.max(8))
}

fn lease_of(ack: &Message) -> Result<Lease, DhcpError> {
    let o = ack.opts();
    let mask = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => return Err(DhcpError::BadOffer("no subnet mask".into())),
    };
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) if !r.is_empty() => r[0],
        _ => return Err(DhcpError::BadOffer("no router".into())),
    };
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => router,
    };
    let secs = match o.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => *s,
        _ => 3600,
    };
    let prefix = u32::from(mask).leading_ones() as u8;
    let addr =
        Ipv4Net::new(ack.yiaddr(), prefix).map_err(|e| DhcpError::BadOffer(e.to_string()))?;
    Ok(Lease {
        addr,
        router,
        server,
        lease_time: Duration::from_secs(u64::from(secs)),
        obtained: Instant::now(),
    })
}

fn configure(l: &Lease) -> Result<(), DhcpError> {
    crate::iproute::batch(
        "",
        &format!(
            "addr replace {} dev {VXLAN_DEV} valid_lft {} preferred_lft {}\nroute replace default via {} dev {VXLAN_DEV}\n",
            l.addr,
            l.lease_time.as_secs().max(1),
            l.lease_time.as_secs().max(1),
            l.router
        ),
    )?;
    Ok(())
}

/// Gets a lease on vxlan0 and configures it. With `previous`, asks for that address first
/// (INIT-REBOOT), so a Pod keeps its address across tunnel rebuilds and gateway restarts.
pub fn obtain(hostname: &str, previous: Option<Ipv4Addr>) -> Result<Lease, DhcpError> {
    obtain_with(hostname, previous, false)
}

/// [`obtain`] for a tunnel just rebuilt: asks for `previous` and, when nothing at all answers
/// within 0.4 s, gives up at once. The tunnel then most likely points at a gateway that is
/// gone (GATEWAY_NAME still named the old Pod): resolving it again is quicker than waiting
/// through the seconds of a full DISCOVER.
pub fn reacquire(hostname: &str, previous: Ipv4Addr) -> Result<Lease, DhcpError> {
    obtain_with(hostname, Some(previous), true)
}

fn obtain_with(
    hostname: &str,
    previous: Option<Ipv4Addr>,
    quick: bool,
) -> Result<Lease, DhcpError> {
    let s = open(hostname)?;
    let kinds = [MessageType::Ack, MessageType::Nak];
    if let Some(prev) = previous {
        let mut m = s.message(MessageType::Request, rand_xid(), Ipv4Addr::UNSPECIFIED);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(prev));
        let (tries, each) = if quick {
            (2, Duration::from_millis(200))
        } else {
            (3, Duration::from_millis(400))
        };
        match s.exchange(&m, Ipv4Addr::BROADCAST, &kinds, tries, each, "ACK") {
            Ok(r) if r.opts().msg_type() == Some(MessageType::Ack) => {
                let l = lease_of(&r)?;
                configure(&l)?;
                return Ok(l);
            }
            Err(e) if quick => return Err(e),
            // A NAK (the address is taken), or a slow server: a fresh DISCOVER.
            _ => {}
        }
    }
    for _ in 0..3 {
        let xid = rand_xid();
        let offer = s.exchange(
            &s.message(MessageType::Discover, xid, Ipv4Addr::UNSPECIFIED),
            Ipv4Addr::BROADCAST,
            &[MessageType::Offer],
            6,
            Duration::from_millis(250),
            "OFFER",
        )?;
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => *a,
            _ => return Err(DhcpError::BadOffer("no server identifier".into())),
        };
        let mut req = s.message(MessageType::Request, xid, Ipv4Addr::UNSPECIFIED);
        req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        let r = s.exchange(
            &req,
            Ipv4Addr::BROADCAST,
            &kinds,
            4,
            Duration::from_millis(500),
            "ACK",
        )?;
        if r.opts().msg_type() == Some(MessageType::Ack) {
            let l = lease_of(&r)?;
            configure(&l)?;
            return Ok(l);
        }
    }
    Err(DhcpError::NoAnswer {
        dev: VXLAN_DEV.into(),
        waiting: "ACK (every REQUEST was refused)",
        tries: 3,
    })
}

/// Renews `l` with its server (RENEWING, unicast from the leased address).
pub fn renew(hostname: &str, l: &Lease) -> Result<Lease, DhcpError> {
    let s = open(hostname)?;
    let m = s.message(MessageType::Request, rand_xid(), l.addr.addr());
    let r = s.exchange(
        &m,
        l.server,
        &[MessageType::Ack, MessageType::Nak],
        3,
        Duration::from_millis(500),
        "ACK",
    )?;
    if r.opts().msg_type() != Some(MessageType::Ack) {
        return Err(DhcpError::BadOffer(
            "the gateway refused the renewal (NAK)".into(),
        ));
    }
    let n = lease_of(&r)?;
    configure(&n)?;
    Ok(n)
}

/// A transaction id: std's randomly keyed hasher is random enough to tell transactions apart.
fn rand_xid() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_payload_checks_port_and_protocol() {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        p.extend_from_slice(&[0, 67, 0, 68, 0, 11, 0, 0, b'a', b'b', b'c']);
        assert_eq!(udp_payload(&p, 68), Some(&b"abc"[..]));
        assert_eq!(udp_payload(&p, 67), None);
        p[9] = 6;
        assert_eq!(udp_payload(&p, 68), None);
        assert_eq!(udp_payload(&[0x45], 68), None);
    }
}
