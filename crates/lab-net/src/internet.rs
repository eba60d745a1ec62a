//! The outside world of a lab: one namespace `<prefix>-inet` that stands for the internet.
//!
//! - It holds the "public" hosts [`HOST_V4`] and [`HOST_V6`] (on its loopback), where tests
//!   run servers (echo, DNS, a VPN server).
//! - The node reaches it over the link `inet0`/`up0` (198.18.1.0/30, 2001:db8:f::/64): that is
//!   the cluster's own way out, which a VPN kill switch must keep traffic off.
//! - [`Internet::connect_vpn`] links one pod straight to it (a VPN stand-in): the pod gets a
//!   `tun0`-like interface and the routes a VPN client adds (`0.0.0.0/1` and `128.0.0.0/1`, and
//!   the IPv6 halves), so its traffic leaves through that link.
//!
//! Nothing here touches the host's interfaces; the namespace goes away with the lab.

use crate::{Lab, Pod, Result, ip_batch};
use netns::Netns;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};

/// Public hosts in the internet namespace.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// The internet's side of the node's uplink, and the node's.
pub const UPLINK_INET_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const UPLINK_NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The internet's and the pod's ends of a VPN link.
pub const VPN_SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const VPN_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VPN_SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const VPN_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

/// The lab's internet namespace.
#[derive(Debug, Clone)]
pub struct Internet {
    netns: Netns,
}

impl Lab {
    /// Adds the internet namespace and the node's uplink to it (once per lab).
    pub fn add_internet(&mut self) -> Result<Internet> {
        self.registry.check_live()?;
        let name = format!("{}-inet", self.prefix);
        let netns = self.registry.create(&name)?;
        ip_batch(
            self.node.name(),
            &format!(
                "link add inet0 type veth peer name up0 netns {name}\n\
                 addr add {UPLINK_NODE_V4}/30 dev inet0\n\
                 addr add 2001:db8:f::2/64 dev inet0 nodad\n\
                 link set inet0 up\n\
                 route add 203.0.113.0/24 via {UPLINK_INET_V4}\n\
                 route add 198.18.0.0/24 via {UPLINK_INET_V4}\n\
                 route add 2001:db8:ff::/48 via 2001:db8:f::1\n"
            ),
        )?;
        let (pods4, pods6) = (self.network().pod_v4, self.network().pod_v6);
        ip_batch(
            &name,
            &format!(
                "link set lo up\n\
                 addr add {HOST_V4}/32 dev lo\n\
                 addr add 203.0.113.53/32 dev lo\n\
                 addr add {HOST_V6}/128 dev lo\n\
                 addr add {UPLINK_INET_V4}/30 dev up0\n\
                 addr add 2001:db8:f::1/64 dev up0 nodad\n\
                 link set up0 up\n\
                 route add {pods4} via {UPLINK_NODE_V4}\n\
                 route add {pods6} via 2001:db8:f::2\n"
            ),
        )?;
        crate::set_sysctls(
            &netns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;
        Ok(Internet { netns })
    }
}

impl Internet {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Links `pod` straight to the internet through interface `dev` in the pod (a VPN
    /// stand-in), with the routes a VPN client would add.
    pub fn connect_vpn(&self, pod: &Pod, dev: &str) -> Result<()> {
        let inet = self.netns.name();
        ip_batch(
            pod.netns().name(),
            &format!(
                "link add {dev} type veth peer name vpn0 netns {inet}\n\
                 addr add {VPN_CLIENT_V4}/30 dev {dev}\n\
                 addr add {VPN_CLIENT_V6}/64 dev {dev} nodad\n\
                 link set {dev} up\n"
            ),
        )?;
        ip_batch(
            inet,
            &format!(
                "addr add {VPN_SERVER_V4}/30 dev vpn0\n\
                 addr add {VPN_SERVER_V6}/64 dev vpn0 nodad\n\
                 link set vpn0 up\n"
            ),
        )?;
        ip_batch(
            pod.netns().name(),
            &format!(
                "route add 0.0.0.0/1 via {VPN_SERVER_V4} dev {dev}\n\
                 route add 128.0.0.0/1 via {VPN_SERVER_V4} dev {dev}\n\
                 route add ::/1 via {VPN_SERVER_V6} dev {dev}\n\
                 route add 8000::/1 via {VPN_SERVER_V6} dev {dev}\n"
            ),
        )
    }

    /// Takes the VPN link of `pod` down (deletes `dev`): its routes go with it.
    pub fn disconnect_vpn(&self, pod: &Pod, dev: &str) -> Result<()> {
        ip_batch(pod.netns().name(), &format!("link del {dev}\n"))
    }

    /// Serves "who am I" on `port` (TCP and UDP, both families, every address of the
    /// internet): each connection and datagram is answered with the peer's address and a
    /// newline — the address the outside sees. Every UDP source is recorded in the result.
    pub fn serve_whoami(&self, port: u16) -> Result<WhoAmI> {
        let (tcp, udp) = self
            .netns
            .run(move || -> std::io::Result<_> {
                Ok((
                    TcpListener::bind(("::", port))?,
                    UdpSocket::bind(("::", port))?,
                ))
            })?
            .map_err(|e| crate::Error::Invalid {
                field: "whoami port",
                value: port.to_string(),
                reason: e.to_string(),
            })?;
        std::thread::spawn(move || {
            for mut c in tcp.incoming().flatten() {
                let Ok(peer) = c.peer_addr() else { continue };
                let mut line = [0u8; 64];
                let _ = c.read(&mut line);
                let _ = c.write_all(format!("{}\n", peer.ip().to_canonical()).as_bytes());
            }
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let ip = from.ip().to_canonical();
                log.lock().unwrap_or_else(|e| e.into_inner()).push(ip);
                let _ = udp.send_to(format!("{ip}\n").as_bytes(), from);
            }
        });
        Ok(WhoAmI { seen })
    }
}

/// A running [`Internet::serve_whoami`] (its threads end with the namespace's sockets).
#[derive(Debug, Clone)]
pub struct WhoAmI {
    seen: Arc<Mutex<Vec<IpAddr>>>,
}

impl WhoAmI {
    /// The source of every UDP datagram received so far.
    pub fn udp_sources(&self) -> Vec<IpAddr> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
