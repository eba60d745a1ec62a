//! A backbone routes the pod networks of several labs to each other, as a flat multi-cluster
//! network does (every pod reaches every other pod by its IP, without NAT), while ClusterIPs
//! stay local to their lab: only pod ranges are routed.
//!
//! The backbone is one more namespace, `<prefix>-wan`, holding a bridge `wan0`. Each attached
//! lab's node gets a veth `wan` on that bridge with a transit address (100.64.0.N/24,
//! fd00:64::N/64) and a route to every other attached lab's pod ranges via that lab's transit
//! address. Like a [`Lab`](crate::Lab), it lives in namespaces named after its owner's pid and
//! is removed on drop (and by [`shutdown_all`](crate::shutdown_all) and
//! [`cleanup_stale`](crate::cleanup_stale)); nothing touches the host's namespace.

use crate::{
    Error, LAB_COUNTER, Network, Registry, Result, ShutdownOnDrop, invalid, ip_batch, lock,
    sanitize_label, set_sysctls,
};
use netns::Netns;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The backbone's bridge.
pub const WAN_BRIDGE: &str = "wan0";
/// A node's interface on the backbone.
pub const WAN_IFACE: &str = "wan";

#[derive(Debug, Clone)]
struct Member {
    index: u32,
    node: String,
    network: Network,
}

/// Pod networks of several labs, routed to each other.
#[derive(Debug)]
pub struct Backbone {
    prefix: String,
    netns: Netns,
    registry: Arc<Registry>,
    members: Mutex<Vec<Member>>,
}

/// The transit IPv4 of the `index`-th attached node (1-based).
pub fn transit_ipv4(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, index as u8)
}

/// The transit IPv6 of the `index`-th attached node (1-based).
pub fn transit_ipv6(index: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, index as u16)
}

impl Backbone {
    /// Creates the backbone namespace and its bridge; `label` names it.
    pub fn new(label: &str) -> Result<Backbone> {
        let label = sanitize_label(label);
        let pid = std::process::id();
        let prefix = loop {
            let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("gwl{pid}-{n}-{label}");
            if !Netns::exists(&format!("{prefix}-wan")) {
                break prefix;
            }
        };
        let registry = Registry::live(&prefix);
        let name = format!("{prefix}-wan");
        let netns = registry.create(&name)?;
        let mut guard = ShutdownOnDrop(Some(registry.clone()));
        ip_batch(
            &name,
            &format!(
                "link set lo up\nlink add {WAN_BRIDGE} type bridge\nlink set {WAN_BRIDGE} up\n"
            ),
        )?;
        guard.0 = None;
        Ok(Backbone {
            prefix,
            netns,
            registry,
            members: Mutex::default(),
        })
    }

    /// The backbone's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// `gwl<pid>-<counter>-<label>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Connects a lab's node namespace (with the lab's address plan) to the backbone and routes
    /// its pod ranges to and from every lab attached before. Refuses a plan that overlaps one
    /// already attached.
    pub fn attach(&self, node: &Netns, network: &Network) -> Result<()> {
        self.registry.check_live()?;
        let mut members = lock(&self.members);
        if let Some(other) = members.iter().find(|m| m.network.overlaps(network)) {
            return Err(invalid(
                "network",
                &format!("{} / {}", network.pod_v4, network.service_v4),
                &format!(
                    "overlaps {} / {} of the lab in {}",
                    other.network.pod_v4, other.network.service_v4, other.node
                ),
            ));
        }
        if members.iter().any(|m| m.node == node.name()) {
            return Err(invalid("node", node.name(), "already attached"));
        }
        let index = members.iter().map(|m| m.index).max().unwrap_or(0) + 1;
        if index > 250 {
            return Err(Error::Exhausted {
                lab: self.prefix.clone(),
                pool: "backbone transit address",
            });
        }
        let wan = self.netns.name();
        ip_batch(
            wan,
            &format!(
                "link add w{index} type veth peer name {WAN_IFACE} netns {node}\n\
                 link set w{index} master {WAN_BRIDGE}\n\
                 link set w{index} up\n",
                node = node.name()
            ),
        )?;
        set_sysctls(
            node,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                // No duplicate address detection on the link: while its link-local address is
                // tentative, neighbour discovery (hence IPv6 routing over it) would fail.
                ("net/ipv6/conf/wan/accept_dad", "0"),
            ],
        )?;
        let mut script = format!(
            "addr add {}/24 dev {WAN_IFACE}\naddr add {}/64 dev {WAN_IFACE} nodad\nlink set {WAN_IFACE} up\n",
            transit_ipv4(index),
            transit_ipv6(index)
        );
        for m in members.iter() {
            script.push_str(&routes_to(m.index, &m.network));
            ip_batch(&m.node, &routes_to(index, network))?;
        }
        ip_batch(node.name(), &script)?;
        members.push(Member {
            index,
            node: node.name().to_owned(),
            network: *network,
        });
        Ok(())
    }

    /// Removes the backbone's namespace now (the nodes' `wan` links go with it). Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        self.registry.shutdown()
    }
}

fn routes_to(index: u32, network: &Network) -> String {
    format!(
        "route add {} via {}\nroute add {} via {}\n",
        network.pod_v4,
        transit_ipv4(index),
        network.pod_v6,
        transit_ipv6(index)
    )
}

impl Drop for Backbone {
    fn drop(&mut self) {
        if let Err(e) = self.registry.shutdown() {
            tracing::warn!(prefix = self.prefix, error = %e, "backbone cleanup incomplete");
        }
    }
}
