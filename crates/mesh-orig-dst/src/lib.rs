//! Where a connection that netfilter redirected (REDIRECT or DNAT) to a local listener was
//! going: the kernel keeps the pre-NAT destination in the connection's conntrack entry and
//! hands it out through `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6). Both go
//! through nix's typed socket options, so no `unsafe` is needed here.

use nix::libc;
use nix::sys::socket::{getsockopt, sockopt};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

/// The original destination of an accepted, redirected connection. `local` is the socket's
/// local address (which picks the address family of the lookup: an IPv4-mapped address on a
/// dual-stack socket is an IPv4 connection). Fails with `ENOENT` when the connection was not
/// redirected (no NAT binding).
pub fn original_dst(socket: &impl AsFd, local: SocketAddr) -> io::Result<SocketAddr> {
    let ipv4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if ipv4 {
        let sa: libc::sockaddr_in = getsockopt(socket, sockopt::OriginalDst)?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa: libc::sockaddr_in6 = getsockopt(socket, sockopt::Ip6tOriginalDst)?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )))
    }
}

/// `local` with an IPv4-mapped IPv6 address turned back into IPv4 (what a dual-stack listener
/// reports for an IPv4 client).
pub fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        // On a host without conntrack for loopback the lookup fails; with it, it is the
        // address itself. Either way it is not a panic and not some other address.
        match original_dst(&s, s.local_addr().unwrap()) {
            Ok(a) => assert_eq!(a, addr),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }

    #[test]
    fn unmaps_ipv4_mapped_addresses() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(unmap(a), "10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(unmap(b), b);
    }
}
