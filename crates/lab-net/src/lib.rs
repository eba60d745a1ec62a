//! The lab's network: a node namespace with a bridge, pods as namespaces on veths, ClusterIPs as
//! kube-proxy-style DNAT, and echo backends — on the real kernel, isolated from the host.
//!
//! Every namespace a [`Lab`] makes is named `<prefix>-<what>` with prefix
//! `gwl<pid>-<counter>-<label>`, so parallel labs never collide and [`cleanup_stale`] can tell a
//! crashed run's leftovers (dead pid) from a live lab's. Nothing is ever added to the host's
//! namespace: the bridge and all rules live in the lab's node namespace.
//!
//! Addresses (by default the same in every lab, as the labs are isolated from each other; labs
//! routed to each other through a [`Backbone`] get their own plans, see [`Network`]):
//! - node bridge [`BRIDGE`]: 10.244.0.1/24, fd00:10:244::1/64; pods from .2 / ::2 up;
//! - ClusterIPs: 10.96.0.N and fd00:10:96::N (same N) from N = 11; N = 10 is kept for cluster
//!   DNS ([`DNS_IPV4`], [`DNS_IPV6`]) as in a kubeadm cluster.
//!
//! ```no_run
//! use lab_net::{Lab, ServicePort};
//! # fn main() -> lab_net::Result<()> {
//! let mut lab = Lab::new("my_test")?;
//! let client = lab.add_pod("client")?;
//! let web = lab.add_pod("web")?;
//! let _echo = web.serve_echo("web", &[8080], &[8080])?;
//! let svc = lab.add_service("web", &[ServicePort::tcp(80, 8080)], &[&web])?;
//! assert_eq!(client.tcp_request(svc.addr_v4(80))?, "web");
//! assert_eq!(client.http_get(svc.addr_v6(80), "/")?, "web\n");
//! # Ok(())
//! # }
//! ```

mod backbone;
pub mod bench;
pub mod capture;
pub mod client;
pub mod echo;
pub mod internet;
pub mod kube_json;
pub mod network;
pub mod nft;
pub mod socket_lb;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

pub use backbone::Backbone;
pub use client::HttpResponse;
pub use echo::EchoServer;
pub use ipnet::{Ipv4Net, Ipv6Net};
pub use netns::Netns;
pub use network::Network;

/// The node's bridge; pods' veths are its ports.
pub const BRIDGE: &str = "gw0";
/// Node (gateway) addresses on the bridge.
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// ClusterIPs kept for cluster DNS, never handed to [`Lab::add_service`].
pub const DNS_IPV4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const DNS_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
/// ClusterIP ranges. The node routes them to itself, so a ClusterIP without endpoints (or an
/// unknown port) is refused at once (TCP reset, ICMP port unreachable) like kube-proxy's reject,
/// and node processes may bind ClusterIPs (e.g. a DNS server on [`DNS_IPV4`]).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";
/// The pod's interface name inside its namespace.
pub const POD_IFACE: &str = "eth0";

const FIRST_POD_HOST: u32 = 2;
const LAST_POD_HOST: u32 = 254;
const FIRST_SERVICE_ID: u32 = 11;
/// ClusterIPv6 lives in a /112, so ids fit in the last 16 bits.
const LAST_SERVICE_ID: u32 = 0xfffe;
const MAX_LABEL: usize = 24;
const MAX_NAME: usize = 40;

/// Errors of the lab; each names the namespace, command or input involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran and failed.
    #[error("`{command}` in namespace {netns} failed ({status}): {stderr}")]
    Command {
        command: String,
        netns: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started (is iproute2 / nftables installed?).
    #[error("cannot run `{command}` for namespace {netns} (is it installed?): {source}")]
    Spawn {
        command: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// A per-namespace sysctl could not be written.
    #[error("cannot set sysctl {key} in namespace {netns}: {source}")]
    Sysctl {
        key: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    /// Bad input from the caller.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// No address left in a pool.
    #[error("lab {lab}: no free {pool} left")]
    Exhausted { lab: String, pool: &'static str },
    /// A socket operation in a pod failed.
    #[error("{what} in pod {pod} (namespace {netns}): {source}")]
    Io {
        what: String,
        pod: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request got a non-2xx answer.
    #[error("GET {path} to {addr} from pod {pod}: status {status}, body {body:?}")]
    HttpStatus {
        pod: String,
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    /// The lab was shut down; it cannot be changed any more.
    #[error("lab {0} was shut down")]
    ShutDown(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A service protocol, as in a Kubernetes ServicePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// DNAT only: the echo servers speak TCP and UDP.
    Sctp,
}

/// One port of a service: `port` on the ClusterIP goes to `target_port` on the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

impl ServicePort {
    pub fn tcp(port: u16, target_port: u16) -> ServicePort {
        ServicePort {
            name: None,
            port,
            target_port,
            protocol: Protocol::Tcp,
        }
    }

    pub fn udp(port: u16, target_port: u16) -> ServicePort {
        ServicePort {
            protocol: Protocol::Udp,
            ..ServicePort::tcp(port, target_port)
        }
    }

    pub fn named(self, name: &str) -> ServicePort {
        ServicePort {
            name: Some(name.to_owned()),
            ..self
        }
    }
}

/// A ClusterIP service of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `ipv4:port`.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        (self.ipv4, port).into()
    }

    /// `[ipv6]:port`.
    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        (self.ipv6, port).into()
    }
}

/// A pod: its own namespace with `eth0` on the node's bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// N in 10.244.0.N and in the node-side veth name `vpN`.
    host: u32,
    netns: Netns,
}

/// Lab-wide state; shared with [`ShutdownHandle`]s and the process-wide list behind
/// [`shutdown_all`], so namespaces can be removed from a signal-handling path.
#[derive(Debug)]
struct Registry {
    prefix: String,
    state: Mutex<RegistryState>,
    /// Signalled when a namespace of this lab is no longer being created.
    created: Condvar,
}

#[derive(Debug, Default)]
struct RegistryState {
    namespaces: Vec<String>,
    shut_down: bool,
    /// Namespaces whose `ip netns add` is running now.
    creating: usize,
}

/// How long a shutdown waits for `ip netns add`s already running.
const CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

static LIVE_LABS: Mutex<Vec<Weak<Registry>>> = Mutex::new(Vec::new());
static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop cleanup.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// A new lab's registry, known to [`shutdown_all`].
    fn live(prefix: &str) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            prefix: prefix.to_owned(),
            state: Mutex::default(),
            created: Condvar::new(),
        });
        let mut live = lock(&LIVE_LABS);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&registry));
        drop(live);
        registry
    }

    /// Registers and creates a namespace of this lab. A shutdown on another thread (a Ctrl-C
    /// handler) waits for it (see [`Registry::shutdown`]), and a terminal's Ctrl-C may kill
    /// `ip netns add` half-way: either way the name is deleted here too.
    fn create(&self, name: &str) -> Result<Netns> {
        {
            let mut state = lock(&self.state);
            if state.shut_down {
                return Err(Error::ShutDown(self.prefix.clone()));
            }
            state.namespaces.push(name.to_owned());
            state.creating += 1;
        }
        let created: Result<Netns> = Netns::create(name).map_err(Into::into);
        let shut_down = {
            let mut state = lock(&self.state);
            state.creating -= 1;
            self.created.notify_all();
            state.shut_down
        };
        if created.is_err() || shut_down {
            let _ = delete_namespaces(&[name.to_owned()]);
            self.forget(name);
            created?;
            return Err(Error::ShutDown(self.prefix.clone()));
        }
        created
    }

    fn forget(&self, name: &str) {
        lock(&self.state).namespaces.retain(|n| n != name);
    }

    fn check_live(&self) -> Result<()> {
        if lock(&self.state).shut_down {
            return Err(Error::ShutDown(self.prefix.clone()));
        }
        Ok(())
    }

    /// Deletes every namespace of the lab, after the `ip netns add`s already running: one that
    /// finished after the deletion would outlive a process that exits next (the demo on
    /// Ctrl-C), its creating thread gone before it could delete it.
    fn shutdown(&self) -> Result<()> {
        let names = {
            let mut state = lock(&self.state);
            state.shut_down = true;
            let deadline = std::time::Instant::now() + CREATE_WAIT;
            while state.creating > 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .created
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::take(&mut state.namespaces)
        };
        delete_namespaces(&names)
    }
}

/// Removes a lab from another thread or a Ctrl-C handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<Registry>);

impl ShutdownHandle {
    /// Removes all namespaces of the lab; idempotent.
    pub fn shutdown(&self) -> Result<()> {
        self.0.shutdown()
    }
}

/// Removes every lab of this process that is still up (for a Ctrl-C handler that holds no lab).
pub fn shutdown_all() -> Result<()> {
    let labs: Vec<Arc<Registry>> = lock(&LIVE_LABS)
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    let mut first_error = None;
    for lab in labs {
        if let Err(e) = lab.shutdown() {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A lab: the node namespace plus the pods and services added to it. Dropping it (also while
/// unwinding from a panic) removes all its namespaces, and with them its links and rules.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    node: Netns,
    registry: Arc<Registry>,
    pods: Vec<Pod>,
    /// Last host number handed out: allocation goes round-robin like host-local IPAM, so a
    /// removed pod's address is reused as late as possible.
    last_host: u32,
    services: Vec<nft::ServiceSpec>,
    network: Network,
}

impl Lab {
    /// Creates the node namespace with bridge [`BRIDGE`], forwarding on, and an empty DNAT
    /// table. `label` (e.g. the test name) is sanitized into the prefix.
    pub fn new(label: &str) -> Result<Lab> {
        Lab::with_network(label, Network::default())
    }

    /// Like [`Lab::new`] with another address plan (see [`Network`]), e.g. for several labs
    /// whose pod networks are routed to each other through a [`Backbone`].
    pub fn with_network(label: &str, network: Network) -> Result<Lab> {
        network.validate()?;
        let label = sanitize_label(label);
        let pid = std::process::id();
        // A crashed run of an earlier process with our pid may have left names behind.
        let prefix = loop {
            let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("gwl{pid}-{n}-{label}");
            if !Netns::exists(&format!("{prefix}-node")) {
                break prefix;
            }
        };
        let registry = Registry::live(&prefix);
        let node_name = format!("{prefix}-node");
        // From here on, an early return drops `registry`'s owner below and cleans up.
        let mut guard = ShutdownOnDrop(Some(registry.clone()));
        let node = registry.create(&node_name)?;
        ip_batch(
            &node_name,
            &format!(
                "link set lo up\n\
                 link add {BRIDGE} address 02:00:0a:f4:00:01 type bridge\n\
                 addr add {node4}/24 dev {BRIDGE}\n\
                 addr add {node6}/64 dev {BRIDGE} nodad\n\
                 link set {BRIDGE} up\n\
                 route add local {svc4} dev lo\n\
                 route add local {svc6} dev lo\n",
                node4 = network.node_ipv4(),
                node6 = network.node_ipv6(),
                svc4 = network.service_v4,
                svc6 = network.service_v6,
            ),
        )?;
        set_sysctls(
            &node,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;
        // With br_netfilter loaded, DNAT would run at the bridge layer and a pod reaching its own
        // service (hairpin) would be dropped; keep the node a plain router, whatever the host
        // loaded. Absent files mean the module is not loaded: nothing to do.
        set_optional_sysctls(
            &node,
            &[
                ("net/bridge/bridge-nf-call-iptables", "0"),
                ("net/bridge/bridge-nf-call-ip6tables", "0"),
                ("net/bridge/bridge-nf-call-arptables", "0"),
            ],
        )?;
        let lab = Lab {
            prefix,
            node,
            registry,
            pods: Vec::new(),
            last_host: FIRST_POD_HOST - 1,
            services: Vec::new(),
            network,
        };
        lab.apply_services(&lab.services)?;
        guard.0 = None;
        tracing::debug!(prefix = lab.prefix, "lab up");
        Ok(lab)
    }

    /// The node namespace (bridge, routing, DNAT).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// `gwl<pid>-<counter>-<label>`: every namespace of this lab starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's address plan.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Pods added so far, in order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A handle that removes this lab from elsewhere (e.g. a Ctrl-C handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.registry.clone())
    }

    /// Removes all namespaces now; later changes fail with [`Error::ShutDown`]. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        self.registry.shutdown()
    }

    /// Adds pod `name` (namespace `<prefix>-<name>`): a veth `vpN` on the bridge, its peer
    /// `eth0` in the pod with 10.244.0.N/24 and fd00:10:244::N/64, default routes via the node.
    pub fn add_pod(&mut self, name: &str) -> Result<Pod> {
        self.add_pod_at(name, None)
    }

    /// Like [`Lab::add_pod`]; with `ipv4`, the pod gets that address (and the IPv6 address of
    /// the same host number) instead of the next free one, e.g. a deleted pod's old address.
    /// It must be in the pod range and free.
    pub fn add_pod_at(&mut self, name: &str, ipv4: Option<Ipv4Addr>) -> Result<Pod> {
        self.registry.check_live()?;
        validate_name("pod name", name)?;
        if name == "node" {
            return Err(invalid(
                "pod name",
                name,
                "\"node\" is the lab's node namespace",
            ));
        }
        if self.pods.iter().any(|p| p.name == name) {
            return Err(invalid("pod name", name, "already exists in this lab"));
        }
        let used: BTreeSet<u32> = self.pods.iter().map(|p| p.host).collect();
        let (host, reused) = match ipv4 {
            Some(want) => {
                let host = (FIRST_POD_HOST..=LAST_POD_HOST)
                    .find(|h| self.network.pod_ipv4(*h) == want)
                    .ok_or_else(|| {
                        invalid("pod address", &want.to_string(), "not in the pod range")
                    })?;
                if let Some(p) = self.pods.iter().find(|p| p.host == host) {
                    return Err(invalid(
                        "pod address",
                        &want.to_string(),
                        &format!("in use by pod {}", p.name),
                    ));
                }
                (host, true)
            }
            None => next_host(&used, self.last_host).ok_or_else(|| Error::Exhausted {
                lab: self.prefix.clone(),
                pool: "pod address",
            })?,
        };
        let ipv4 = self.network.pod_ipv4(host);
        let ipv6 = self.network.pod_ipv6(host);
        if reused {
            // Other pods may still hold the removed pod's MAC for this address.
            for pod in &self.pods {
                ip_batch(
                    pod.netns.name(),
                    &format!(
                        "neigh flush to {ipv4} dev {POD_IFACE}\nneigh flush to {ipv6} dev {POD_IFACE}\n"
                    ),
                )?;
            }
        }
        let ns_name = format!("{}-{name}", self.prefix);
        self.registry.check_live()?;
        let setup = || -> Result<Netns> {
            let netns = self.registry.create(&ns_name)?;
            ip_batch(
                &format!("{}-node", self.prefix),
                &format!(
                    "link add vp{host} type veth peer name {POD_IFACE} netns {ns_name}\n\
                     link set vp{host} master {BRIDGE}\n\
                     link set vp{host} up\n"
                ),
            )?;
            ip_batch(
                &ns_name,
                &format!(
                    "link set lo up\n\
                     addr add {ipv4}/24 dev {POD_IFACE}\n\
                     addr add {ipv6}/64 dev {POD_IFACE} nodad\n\
                     link set {POD_IFACE} up\n\
                     route add default via {node4} dev {POD_IFACE}\n\
                     route add default via {node6} dev {POD_IFACE}\n",
                    node4 = self.network.node_ipv4(),
                    node6 = self.network.node_ipv6(),
                ),
            )?;
            Ok(netns)
        };
        let netns = match setup() {
            Ok(netns) => netns,
            Err(e) => {
                // Best effort: the veth pair may not exist; deleting it is synchronous, unlike
                // the namespace teardown, so a retry can reuse the name `vpN`.
                let _ = ip_batch(self.node.name(), &format!("link del vp{host}\n"));
                let _ = delete_namespaces(std::slice::from_ref(&ns_name));
                self.registry.forget(&ns_name);
                return Err(e);
            }
        };
        self.last_host = host;
        let pod = Pod {
            name: name.to_owned(),
            ipv4,
            ipv6,
            host,
            netns,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Removes a pod: drops it from every service's backends, deletes its veth and namespace.
    /// Its address may be handed to a later pod.
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        self.registry.check_live()?;
        let index = self
            .pods
            .iter()
            .position(|p| p.netns.name() == pod.netns.name())
            .ok_or_else(|| invalid("pod", &pod.name, "not a pod of this lab"))?;
        let removed = &self.pods[index];
        let gone = nft::Backend {
            ipv4: removed.ipv4,
            ipv6: removed.ipv6,
        };
        let mut next = self.services.clone();
        for svc in &mut next {
            svc.backends.retain(|b| *b != gone);
        }
        if next != self.services {
            self.apply_services(&next)?;
            self.services = next;
        }
        // Deleting the veth is synchronous; a namespace lives on while handles to it are open,
        // and with it the veth, which would block reusing the name `vpN`.
        ip_batch(
            self.node.name(),
            &format!(
                "link del vp{}\nneigh flush to {} dev {BRIDGE}\nneigh flush to {} dev {BRIDGE}\n",
                removed.host, removed.ipv4, removed.ipv6
            ),
        )?;
        let ns_name = removed.netns.name().to_owned();
        delete_namespaces(std::slice::from_ref(&ns_name))?;
        self.registry.forget(&ns_name);
        self.pods.remove(index);
        Ok(())
    }

    /// Adds a ClusterIP service with DNAT to `backends` (which may be empty: the ClusterIP is
    /// then unreachable, which clients see at once).
    pub fn add_service(
        &mut self,
        name: &str,
        ports: &[ServicePort],
        backends: &[&Pod],
    ) -> Result<Service> {
        self.registry.check_live()?;
        validate_name("service name", name)?;
        if self.services.iter().any(|s| s.name == name) {
            return Err(invalid("service name", name, "already exists in this lab"));
        }
        validate_ports(ports)?;
        let backends = self.backends(backends)?;
        let used: BTreeSet<u32> = self.services.iter().map(|s| s.id).collect();
        let id = (FIRST_SERVICE_ID..=LAST_SERVICE_ID)
            .find(|id| {
                !used.contains(id)
                    && self
                        .network
                        .service_v4
                        .contains(&self.network.service_ipv4(*id))
                    && self
                        .network
                        .service_v6
                        .contains(&self.network.service_ipv6(*id))
            })
            .ok_or_else(|| Error::Exhausted {
                lab: self.prefix.clone(),
                pool: "ClusterIP",
            })?;
        let spec = nft::ServiceSpec {
            name: name.to_owned(),
            id,
            ipv4: self.network.service_ipv4(id),
            ipv6: self.network.service_ipv6(id),
            ports: ports.to_vec(),
            backends,
        };
        let mut next = self.services.clone();
        next.push(spec.clone());
        self.apply_services(&next)?;
        self.services = next;
        Ok(Service {
            name: spec.name,
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            ports: spec.ports,
        })
    }

    /// Replaces the service's backends in one atomic ruleset swap.
    pub fn set_endpoints(&mut self, svc: &Service, backends: &[&Pod]) -> Result<()> {
        self.registry.check_live()?;
        let index = self.service_index(svc)?;
        let mut next = self.services.clone();
        next[index].backends = self.backends(backends)?;
        self.apply_services(&next)?;
        self.services = next;
        Ok(())
    }

    /// Removes the service's ClusterIPs.
    pub fn remove_service(&mut self, svc: &Service) -> Result<()> {
        self.registry.check_live()?;
        let index = self.service_index(svc)?;
        let mut next = self.services.clone();
        next.remove(index);
        self.apply_services(&next)?;
        self.services = next;
        Ok(())
    }

    /// The nft script for the current services (what the node has applied).
    pub fn ruleset(&self) -> String {
        nft::render(&self.services)
    }

    fn service_index(&self, svc: &Service) -> Result<usize> {
        self.services
            .iter()
            .position(|s| s.name == svc.name && s.ipv4 == svc.ipv4)
            .ok_or_else(|| invalid("service", &svc.name, "not a service of this lab"))
    }

    fn backends(&self, pods: &[&Pod]) -> Result<Vec<nft::Backend>> {
        pods.iter()
            .map(|p| {
                if self
                    .pods
                    .iter()
                    .any(|own| own.netns.name() == p.netns.name())
                {
                    Ok(nft::Backend {
                        ipv4: p.ipv4,
                        ipv6: p.ipv6,
                    })
                } else {
                    Err(invalid("backend pod", &p.name, "not a pod of this lab"))
                }
            })
            .collect()
    }

    fn apply_services(&self, services: &[nft::ServiceSpec]) -> Result<()> {
        let script = nft::render(services);
        let netns = self.node.name().to_owned();
        self.node
            .run(|| run_command(Command::new("nft").args(["-f", "-"]), &netns, Some(&script)))??;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.registry.shutdown() {
            tracing::warn!(prefix = self.prefix, error = %e, "lab cleanup incomplete");
        }
    }
}

/// Shuts a half-built lab down when `Lab::new` fails.
struct ShutdownOnDrop(Option<Arc<Registry>>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(registry) = self.0.take() {
            let _ = registry.shutdown();
        }
    }
}

impl Pod {
    /// The pod's namespace, e.g. to bind sockets inside with [`Netns::run`].
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// A command that runs `program` inside the pod (via `ip netns exec`); add args and run it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"])
            .arg(self.netns.name())
            .arg(program);
        cmd
    }

    /// A TCP listener bound inside the pod, e.g. at `(Ipv6Addr::UNSPECIFIED, port)` for all of
    /// its addresses (dual-stack). Blocking, as std makes it: set it non-blocking before
    /// handing it to tokio.
    pub fn listen_tcp(&self, addr: impl Into<SocketAddr>) -> Result<std::net::TcpListener> {
        let addr = addr.into();
        self.netns
            .run(|| std::net::TcpListener::bind(addr))?
            .map_err(|e| self.io_error(format!("bind tcp {addr}"), e))
    }

    /// Serves the echo protocol on `[::]` (dual-stack) at the given ports; port 0 picks one
    /// (see [`EchoServer::tcp_addrs`]). Stops on drop.
    pub fn serve_echo(
        &self,
        reply: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<EchoServer> {
        let (tcp, udp) = self.netns.run(|| -> Result<_> {
            let any = Ipv6Addr::UNSPECIFIED;
            let tcp = tcp_ports
                .iter()
                .map(|&p| {
                    std::net::TcpListener::bind((any, p))
                        .map_err(|e| self.io_error(format!("bind tcp [::]:{p}"), e))
                })
                .collect::<Result<Vec<_>>>()?;
            let udp = udp_ports
                .iter()
                .map(|&p| {
                    std::net::UdpSocket::bind((any, p))
                        .map_err(|e| self.io_error(format!("bind udp [::]:{p}"), e))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((tcp, udp))
        })??;
        EchoServer::spawn(reply, tcp, udp)
            .map_err(|e| self.io_error(format!("start echo server {reply:?}"), e))
    }

    /// One line over TCP from inside the pod; returns the (trimmed) reply.
    pub fn tcp_request(&self, addr: SocketAddr) -> Result<String> {
        self.netns
            .run(|| client::tcp_request(addr))?
            .map_err(|e| self.io_error(format!("tcp request to {addr}"), e))
    }

    /// One line over TCP from inside the pod ([`client::line_request`]); returns the reply.
    pub fn line_request(&self, addr: SocketAddr, line: &str) -> Result<String> {
        self.netns
            .run(|| client::line_request(addr, line))?
            .map_err(|e| self.io_error(format!("tcp request to {addr}"), e))
    }

    /// One datagram from inside the pod (retried a few times); returns the (trimmed) reply.
    pub fn udp_request(&self, addr: SocketAddr) -> Result<String> {
        self.netns
            .run(|| client::udp_request(addr))?
            .map_err(|e| self.io_error(format!("udp request to {addr}"), e))
    }

    /// `GET path` from inside the pod; returns the body, or an error for a non-2xx status.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<String> {
        let response = self.http(addr, path)?;
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(Error::HttpStatus {
                pod: self.name.clone(),
                addr,
                path: path.to_owned(),
                status: response.status,
                body: response.body,
            })
        }
    }

    /// `GET path` from inside the pod; returns the whole response whatever its status.
    pub fn http(&self, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
        self.netns
            .run(|| client::http_request(addr, path))?
            .map_err(|e| self.io_error(format!("GET {path} to {addr}"), e))
    }

    fn io_error(&self, what: String, source: std::io::Error) -> Error {
        Error::Io {
            what,
            pod: self.name.clone(),
            netns: self.netns.name().to_owned(),
            source,
        }
    }
}

/// The next free host number after `last` (wrapping), and whether it wraps around to numbers
/// handed out before.
fn next_host(used: &BTreeSet<u32>, last: u32) -> Option<(u32, bool)> {
    let after = (last + 1).max(FIRST_POD_HOST)..=LAST_POD_HOST;
    let before = FIRST_POD_HOST..=last.min(LAST_POD_HOST);
    after
        .map(|h| (h, false))
        .chain(before.map(|h| (h, true)))
        .find(|(h, _)| !used.contains(h))
}

/// Removes the namespaces of labs whose owning process is gone (crashed runs); returns their
/// names. A live process's labs are never touched.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let stale: Vec<String> = Netns::list()?
        .into_iter()
        .filter(|name| {
            owner_pid(name)
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    delete_namespaces(&stale)?;
    Ok(stale)
}

/// The pid in a lab namespace name `gwl<pid>-<counter>-...`, `None` for other names.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("gwl")?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, _) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Lower-case alphanumerics and single dashes, at most 24 bytes; "lab" if empty.
pub fn sanitize_label(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= MAX_LABEL {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "lab".to_owned()
    } else {
        out.to_owned()
    }
}

fn invalid(field: &'static str, value: &str, reason: &str) -> Error {
    Error::Invalid {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// DNS-label-like: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most [`MAX_NAME`] bytes.
fn validate_name(field: &'static str, name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > MAX_NAME
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(invalid(
            field,
            name,
            &format!("must be 1-{MAX_NAME} lower-case letters, digits or inner '-'"),
        ));
    }
    Ok(())
}

fn validate_ports(ports: &[ServicePort]) -> Result<()> {
    if ports.is_empty() {
        return Err(invalid(
            "service ports",
            "[]",
            "a service needs at least one port",
        ));
    }
    let mut seen = BTreeSet::new();
    for p in ports {
        let shown = format!("{}/{:?}", p.port, p.protocol);
        if p.port == 0 || p.target_port == 0 {
            return Err(invalid(
                "service port",
                &shown,
                "port and target port must be 1-65535",
            ));
        }
        if !seen.insert((p.port, p.protocol)) {
            return Err(invalid("service port", &shown, "listed twice"));
        }
        if let Some(name) = &p.name {
            validate_name("service port name", name)?;
        }
    }
    Ok(())
}

pub(crate) fn set_sysctls(netns: &Netns, values: &[(&str, &str)]) -> Result<()> {
    write_sysctls(netns, values, false)
}

/// Like [`set_sysctls`], skipping keys that do not exist.
fn set_optional_sysctls(netns: &Netns, values: &[(&str, &str)]) -> Result<()> {
    write_sysctls(netns, values, true)
}

fn write_sysctls(netns: &Netns, values: &[(&str, &str)], optional: bool) -> Result<()> {
    netns.run(|| {
        for (key, value) in values {
            let path = format!("/proc/sys/{key}");
            if optional && !std::path::Path::new(&path).exists() {
                continue;
            }
            std::fs::write(path, value).map_err(|source| Error::Sysctl {
                key: key.replace('/', "."),
                netns: netns.name().to_owned(),
                source,
            })?;
        }
        Ok(())
    })?
}

/// Runs several `ip` commands in one process (`ip -n NS -batch -`), stopping at the first error.
pub(crate) fn ip_batch(netns: &str, script: &str) -> Result<()> {
    run_command(
        Command::new("ip").args(["-n", netns, "-batch", "-"]),
        netns,
        Some(script),
    )
    .map(drop)
}

/// Deletes named namespaces in one `ip -force -batch -`; those that remain are reported.
fn delete_namespaces(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let delete = |names: &[&String]| {
        let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        let shown: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        run_command(
            Command::new("ip").args(["-force", "-batch", "-"]),
            &shown.join(","),
            Some(&script),
        )
    };
    let all: Vec<&String> = names.iter().collect();
    let mut result = delete(&all);
    // Once more for what is left: a terminal's Ctrl-C reaches every process of the foreground
    // group, so the first `ip` may have been killed half-way; this one starts after the signal.
    let mut left: Vec<&String> = names.iter().filter(|n| Netns::exists(n)).collect();
    if !left.is_empty() {
        result = delete(&left);
        left.retain(|n| Netns::exists(n));
    }
    match (left.is_empty(), result) {
        (true, _) => Ok(()),
        (false, Err(e)) => Err(e),
        (false, Ok(_)) => Err(Error::Command {
            command: "ip -force -batch - (netns del)".to_owned(),
            netns: left
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            status: "namespaces still present".to_owned(),
            stderr: String::new(),
        }),
    }
}

/// Runs a command (in the calling thread's namespace), feeding `stdin`; returns stdout.
fn run_command(cmd: &mut Command, netns: &str, stdin: Option<&str>) -> Result<String> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = netns::output(cmd, stdin.map(str::as_bytes)).map_err(|source| Error::Spawn {
        command: shown.clone(),
        netns: netns.to_owned(),
        source,
    })?;
    tracing::trace!(command = shown, netns, status = %output.status, "ran");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: shown,
            netns: netns.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_go_round_robin() {
        let used = |hs: &[u32]| hs.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(next_host(&used(&[]), 1), Some((2, false)));
        assert_eq!(next_host(&used(&[2, 3]), 3), Some((4, false)));
        // 3 was freed, but 4.. come first.
        assert_eq!(next_host(&used(&[2, 4]), 4), Some((5, false)));
        assert_eq!(next_host(&used(&[2, 254]), 254), Some((3, true)));
        let all: Vec<u32> = (2..=254).collect();
        assert_eq!(next_host(&used(&all), 100), None);
    }

    #[test]
    fn labels_are_sanitized() {
        assert_eq!(sanitize_label("two_labs::Parallel"), "two-labs-parallel");
        assert_eq!(sanitize_label("--"), "lab");
        assert_eq!(sanitize_label(""), "lab");
        assert_eq!(sanitize_label(&"x".repeat(100)).len(), MAX_LABEL);
    }

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("gwl123-4-foo-node"), Some(123));
        assert_eq!(owner_pid("gwl123-4-foo-a"), Some(123));
        for other in [
            "gwl-4-foo",
            "gwlx-4-foo",
            "gwl12-foo",
            "gwl1-2",
            "gwl0-1-a",
            "cni-123",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn names_and_ports_are_validated() {
        assert!(validate_name("pod", "web-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(41)] {
            assert!(validate_name("pod", bad).is_err(), "{bad:?}");
        }
        assert!(validate_ports(&[]).is_err());
        assert!(validate_ports(&[ServicePort::tcp(0, 80)]).is_err());
        assert!(validate_ports(&[ServicePort::tcp(80, 80), ServicePort::tcp(80, 81)]).is_err());
        assert!(validate_ports(&[ServicePort::tcp(80, 80), ServicePort::udp(80, 80)]).is_ok());
        assert!(validate_ports(&[ServicePort::tcp(80, 80).named("Bad Name")]).is_err());
    }
}
