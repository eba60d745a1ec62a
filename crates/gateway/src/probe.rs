//! ICMP echo from inside the process (no `ping` binary in the image): the client's check that
//! the gateway answers through the tunnel. Needs CAP_NET_RAW, which client containers have.

use socket2::{Domain, Protocol, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one echo request to `dst` (through whatever route the kernel picks; bind to `dev`
/// when given) and waits up to `timeout` for the matching reply.
pub fn ping(
    dst: IpAddr,
    dev: Option<&str>,
    seq: u16,
    timeout: Duration,
) -> std::io::Result<Duration> {
    let v6 = dst.is_ipv6();
    let (domain, proto, request, reply) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8)
    } else {
        (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8)
    };
    let sock = Socket::new(domain, Type::RAW, Some(proto))?;
    if let Some(dev) = dev {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    let id = (std::process::id() as u16) ^ 0x6777;
    let mut pkt = vec![request, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"ghostwire-probe!");
    if !v6 {
        // The kernel fills in the ICMPv6 checksum; ICMPv4's is ours.
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // Connected, the raw socket only receives what `dst` sends.
    sock.connect(&SocketAddr::new(dst, 0).into())?;
    let start = Instant::now();
    sock.send(&pkt)?;
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no echo reply from {dst} within {timeout:?}"),
            ));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let data = &buf[..n];
        // Raw IPv4 sockets deliver the IP header too; IPv6 ones do not.
        let icmp = if v6 {
            data
        } else {
            let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
            data.get(ihl..).unwrap_or_default()
        };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(start.elapsed());
        }
    }
}
