//! The address plan of one lab: its Pod range (the node's bridge is the first address), its
//! Service (ClusterIP) range, in both families. A single lab uses [`Network::default`]; several
//! labs on one machine whose Pod networks are routed to each other need ranges that do not
//! overlap, e.g. [`Network::indexed`].

use crate::{Error, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Pod and Service ranges of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// A /24: the node is `.1`, pods `.2` to `.254`.
    pub pod_v4: Ipv4Net,
    /// A /64: the node is `::1`, pods `::N` with the same N as in IPv4.
    pub pod_v6: Ipv6Net,
    /// /12 to /24: the API allocates ClusterIPs from it; the node routes it to itself.
    pub service_v4: Ipv4Net,
    /// /108 to /120.
    pub service_v6: Ipv6Net,
}

impl Default for Network {
    /// 10.244.0.0/24, fd00:10:244::/64, 10.96.0.0/16, fd00:10:96::/112.
    fn default() -> Network {
        Network::indexed(0)
    }
}

fn net4(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).expect("prefix length in range")
}

fn net6(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    Ipv6Net::new(addr, len).expect("prefix length in range")
}

impl Network {
    /// The `i`-th of a family of non-overlapping plans (`i` < 16): Pods 10.244.i.0/24 and
    /// fd00:10:244:i::/64, Services 10.(96+i).0.0/16 and fd00:10:96::i:0/112. `indexed(0)` is the
    /// single lab's default.
    pub fn indexed(i: u8) -> Network {
        let i = i.min(15);
        Network {
            pod_v4: net4(Ipv4Addr::new(10, 244, i, 0), 24),
            pod_v6: net6(Ipv6Addr::new(0xfd00, 0x10, 0x244, i.into(), 0, 0, 0, 0), 64),
            service_v4: net4(Ipv4Addr::new(10, 96 + i, 0, 0), 16),
            service_v6: net6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, i.into(), 0), 112),
        }
    }

    /// Checks the prefix lengths and that each range is its network address; the error names
    /// the range and the value.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, reason: &str| Error::Invalid {
            field,
            value,
            reason: reason.to_owned(),
        };
        if self.pod_v4.prefix_len() != 24 || self.pod_v4.addr() != self.pod_v4.network() {
            return Err(bad(
                "pod CIDR",
                self.pod_v4.to_string(),
                "must be a /24 network address (one node: .1 is the node, .2-.254 the pods)",
            ));
        }
        if self.pod_v6.prefix_len() != 64 || self.pod_v6.addr() != self.pod_v6.network() {
            return Err(bad(
                "pod IPv6 CIDR",
                self.pod_v6.to_string(),
                "must be a /64 network address",
            ));
        }
        if !(12..=24).contains(&self.service_v4.prefix_len())
            || self.service_v4.addr() != self.service_v4.network()
        {
            return Err(bad(
                "service CIDR",
                self.service_v4.to_string(),
                "must be a /12 to /24 network address",
            ));
        }
        if !(108..=120).contains(&self.service_v6.prefix_len())
            || self.service_v6.addr() != self.service_v6.network()
        {
            return Err(bad(
                "service IPv6 CIDR",
                self.service_v6.to_string(),
                "must be a /108 to /120 network address",
            ));
        }
        if self.pod_v4.contains(&self.service_v4) || self.service_v4.contains(&self.pod_v4) {
            return Err(bad(
                "service CIDR",
                self.service_v4.to_string(),
                &format!("overlaps the pod CIDR {}", self.pod_v4),
            ));
        }
        Ok(())
    }

    /// Whether any range of `self` overlaps any range of `other` (labs routed to each other
    /// must not).
    pub fn overlaps(&self, other: &Network) -> bool {
        let v4 = [self.pod_v4, self.service_v4];
        let w4 = [other.pod_v4, other.service_v4];
        let v6 = [self.pod_v6, self.service_v6];
        let w6 = [other.pod_v6, other.service_v6];
        v4.iter()
            .any(|a| w4.iter().any(|b| a.contains(b) || b.contains(a)))
            || v6
                .iter()
                .any(|a| w6.iter().any(|b| a.contains(b) || b.contains(a)))
    }

    /// The node's bridge address (the pods' gateway).
    pub fn node_ipv4(&self) -> Ipv4Addr {
        self.pod_ipv4(1)
    }

    pub fn node_ipv6(&self) -> Ipv6Addr {
        self.pod_ipv6(1)
    }

    /// Host `n` of the pod range.
    pub fn pod_ipv4(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_v4.network()) + n)
    }

    pub fn pod_ipv6(&self, n: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.pod_v6.network()) + u128::from(n))
    }

    /// Address `n` of the service range (1: the `kubernetes` Service, 10: cluster DNS).
    pub fn service_ipv4(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_v4.network()) + n)
    }

    pub fn service_ipv6(&self, n: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.service_v6.network()) + u128::from(n))
    }

    /// The `kubernetes` Service's ClusterIP.
    pub fn api_service_ipv4(&self) -> Ipv4Addr {
        self.service_ipv4(1)
    }

    /// Cluster DNS's ClusterIPs (kept out of allocation, as in kubeadm).
    pub fn dns_ipv4(&self) -> Ipv4Addr {
        self.service_ipv4(10)
    }

    pub fn dns_ipv6(&self) -> Ipv6Addr {
        self.service_ipv6(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_single_lab_plan() {
        let n = Network::default();
        assert_eq!(n.node_ipv4(), crate::NODE_IPV4);
        assert_eq!(n.node_ipv6(), crate::NODE_IPV6);
        assert_eq!(n.dns_ipv4(), crate::DNS_IPV4);
        assert_eq!(n.dns_ipv6(), crate::DNS_IPV6);
        assert_eq!(n.service_v4.to_string(), crate::SERVICE_CIDR_V4);
        assert_eq!(n.service_v6.to_string(), crate::SERVICE_CIDR_V6);
        assert_eq!(n.pod_ipv4(7).to_string(), "10.244.0.7");
        n.validate().unwrap();
    }

    #[test]
    fn indexed_plans_do_not_overlap() {
        let plans: Vec<Network> = (0..16).map(Network::indexed).collect();
        for (i, a) in plans.iter().enumerate() {
            a.validate().unwrap();
            assert!(a.overlaps(a));
            for b in &plans[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} {b:?}");
            }
        }
        let west = Network::indexed(2);
        assert_eq!(west.pod_ipv4(5).to_string(), "10.244.2.5");
        assert_eq!(west.pod_ipv6(5).to_string(), "fd00:10:244:2::5");
        assert_eq!(west.api_service_ipv4().to_string(), "10.98.0.1");
        assert_eq!(west.service_ipv6(11).to_string(), "fd00:10:96::2:b");
    }

    #[test]
    fn bad_plans_name_the_range() {
        let n = Network {
            pod_v4: "10.1.0.0/16".parse().unwrap(),
            ..Network::default()
        };
        assert!(n.validate().unwrap_err().to_string().contains("pod CIDR"));
        let n = Network {
            service_v4: "10.96.0.1/16".parse().unwrap(),
            ..Network::default()
        };
        assert!(
            n.validate()
                .unwrap_err()
                .to_string()
                .contains("10.96.0.1/16")
        );
        let n = Network {
            service_v4: "10.244.0.0/16".parse().unwrap(),
            ..Network::default()
        };
        assert!(n.validate().unwrap_err().to_string().contains("overlaps"));
    }
}
