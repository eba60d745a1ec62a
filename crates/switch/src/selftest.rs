//! Checks, in the Pod's namespace, that the switch can work here at all.
//!
//! [`probe`]: the switch rewrites destinations in netfilter's NAT hook, so it only sees
//! connections whose destination is still the ClusterIP when netfilter gets them. An
//! eBPF socket load balancer (Cilium's kube-proxy replacement) rewrites the address in
//! `connect()` itself, before any packet exists: the switch's chain then never meets a
//! ClusterIP and silently does nothing. The probe starts a TCP connection (hop limit 1)
//! to an active ClusterIP from a socket whose local port it knows, and reads the connection's
//! conntrack entry over netlink: netfilter tracked it to the ClusterIP (its NAT chains,
//! the switch's among them, were consulted; the reply side says where the NAT sent it),
//! or to some other address (rewritten before netfilter).
//!
//! [`other_nat_users`]: every other NAT chain in the namespace, and whether it runs
//! before or after the switch's (see `netrules::nat_users`).

use crate::config::SelfTest;
use crate::pairing::Plan;
use crate::rules;
use netrules::{Hook, NatUser, Protocol};
use socket2::{Domain, SockAddr, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Netfilter tracked the connection to the ClusterIP: the switch's chain is
    /// consulted. `to` is where NAT sent it (the ClusterIP itself when nothing did).
    Passed { target: SocketAddr, to: SocketAddr },
    /// Netfilter saw the connection going to `seen`, not to the ClusterIP: something
    /// rewrote the destination before netfilter (eBPF socket load balancing).
    Rewritten {
        target: SocketAddr,
        seen: SocketAddr,
    },
    /// The probe could not tell (no conntrack entry showed up, no route, no target).
    Inconclusive { reason: String },
}

impl Outcome {
    /// Whether init fails the Pod (exit 5) on this outcome: only a proven rewrite, and only
    /// with `GW_SELF_TEST=fail`. An inconclusive probe never does.
    pub fn fails_init(&self, mode: SelfTest) -> bool {
        matches!(self, Outcome::Rewritten { .. }) && mode == SelfTest::Fail
    }

    /// Whether the watcher reports not ready on this outcome: only a proven rewrite, with
    /// `GW_SELF_TEST=unready` (the default) or `fail`.
    pub fn makes_unready(&self, mode: SelfTest) -> bool {
        matches!(self, Outcome::Rewritten { .. })
            && matches!(mode, SelfTest::Unready | SelfTest::Fail)
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed { .. } => "passed",
            Outcome::Rewritten { .. } => "rewritten",
            Outcome::Inconclusive { .. } => "inconclusive",
        }
    }

    /// Logs the outcome: an error, naming the cause, when the switch cannot work here.
    pub fn log(&self) {
        match self {
            Outcome::Passed { target, to } => {
                tracing::info!(%target, nat_to = %to, "self-test passed: connections to ClusterIPs reach the switch's chain");
            }
            Outcome::Rewritten { target, seen } => tracing::error!(
                %target,
                %seen,
                "self-test FAILED: a connection to ClusterIP {target} reached netfilter as a connection to {seen}: \
                 something rewrites ClusterIPs before netfilter (eBPF socket load balancing, such as Cilium's \
                 kube-proxy replacement with socketLB), so the switch's DNAT chain never sees them and routes nothing; \
                 turn socket load balancing off for this Pod's namespace, or run the switch in mesh mode"
            ),
            Outcome::Inconclusive { reason } => {
                tracing::warn!(%reason, "self-test inconclusive: could not tell whether connections to ClusterIPs reach the switch's chain");
            }
        }
    }
}

/// The ClusterIP:port the probe connects to: the first active TCP Service with a
/// preview (an IPv4 one if there is one), else the API server's Service.
pub fn target(plan: &Plan, api_server: Option<IpAddr>) -> Option<SocketAddr> {
    let tcp = || plan.mappings.iter().filter(|m| m.protocol == Protocol::Tcp);
    tcp()
        .find(|m| m.active_addr.is_ipv4())
        .or_else(|| tcp().next())
        .map(|m| m.active_addr)
        .or_else(|| {
            let port = std::env::var("KUBERNETES_SERVICE_PORT")
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(443);
            api_server.map(|ip| SocketAddr::new(ip, port))
        })
}

/// Connects to `target` (without waiting for an answer) and finds the connection's
/// conntrack entry within `wait`. Blocking; run it in the Pod's namespace.
pub fn probe(target: SocketAddr, wait: Duration) -> Outcome {
    let inconclusive = |reason: String| Outcome::Inconclusive { reason };
    let sock = match Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    ) {
        Ok(s) => s,
        Err(e) => return inconclusive(format!("cannot open a TCP socket: {e}")),
    };
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // Bound first, so the local port is known before connect(); a connect-time rewrite
    // changes the destination, never the source port. A hop limit of 1: the SYN passes
    // this namespace's netfilter (where the entry is made) and dies at the first router,
    // so no service is really connected to, and no refusal (a reset, on which conntrack
    // drops a connection's entry at once) comes back before the entry is read.
    let hops = match target {
        SocketAddr::V4(_) => sock.set_ttl_v4(1),
        SocketAddr::V6(_) => sock.set_unicast_hops_v6(1),
    };
    let port = match hops
        .and_then(|()| sock.set_nonblocking(true))
        .and_then(|()| sock.bind(&SockAddr::from(any)))
        .and_then(|()| sock.local_addr())
    {
        Ok(a) => a.as_socket().map_or(0, |a| a.port()),
        Err(e) => return inconclusive(format!("cannot bind the probe socket: {e}")),
    };
    match sock.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(115) // EINPROGRESS
                || e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => return inconclusive(format!("connect to {target}: {e}")),
    }
    let deadline = Instant::now() + wait;
    loop {
        match netrules::netlink::conntrack_entries(target.is_ipv6()) {
            Ok(entries) => {
                if let Some(e) = entries
                    .iter()
                    .find(|e| e.protocol == 6 && e.orig_src.port() == port)
                {
                    return if e.orig_dst == target {
                        Outcome::Passed {
                            target,
                            to: e.reply_src,
                        }
                    } else {
                        Outcome::Rewritten {
                            target,
                            seen: e.orig_dst,
                        }
                    };
                }
            }
            Err(e) => return inconclusive(format!("cannot read conntrack over netlink: {e}")),
        }
        if Instant::now() >= deadline {
            return inconclusive(format!(
                "no conntrack entry for the probe connection to {target} from port {port} within {wait:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where another NAT chain runs relative to the switch's base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Lower priority: it runs first; a connection it rewrites never meets the switch.
    Before,
    /// Higher priority: the switch runs first; a connection the switch rewrites (an
    /// active Service with a preview, while the jump is on) never meets it.
    After,
    /// Same priority: the chain registered last runs first.
    Tie,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Before => "before",
            Order::After => "after",
            Order::Tie => "same-priority",
        }
    }
}

/// The other NAT chains on the switch's hook, each with where it runs, and the switch's
/// own priority. Chains on other hooks (source NAT after routing) do not compete.
pub fn other_nat_users(hook: Hook) -> netrules::Result<Vec<(NatUser, Order)>> {
    let own = rules::base_priority(hook);
    Ok(netrules::nat_users(crate::config::TABLE)?
        .into_iter()
        .filter(|u| u.hook == hook.nft_hook() && u.rules != Some(0))
        .map(|u| {
            let order = match u.priority.cmp(&own) {
                std::cmp::Ordering::Less => Order::Before,
                std::cmp::Ordering::Greater => Order::After,
                std::cmp::Ordering::Equal => Order::Tie,
            };
            (u, order)
        })
        .collect())
}

/// Logs each other NAT user at warn, saying who wins.
pub fn log_other_nat_users(users: &[(NatUser, Order)]) {
    for (u, order) in users {
        let rules = u.rules.map_or("unknown".to_string(), |n| n.to_string());
        let what = match order {
            Order::Before => {
                "runs BEFORE the switch: connections it rewrites (a mesh's redirect to its proxy) skip the switch's DNAT"
            }
            Order::After => {
                "runs after the switch: connections the switch rewrites (active Services with a preview, while the jump is on) skip its NAT, so they bypass e.g. a mesh proxy's redirect"
            }
            Order::Tie => {
                "has the switch's priority: the chain registered last runs first, and the first NAT of a connection wins"
            }
        };
        tracing::warn!(
            source = u.source,
            family = u.family,
            table = %u.table,
            chain = %u.chain,
            hook = u.hook,
            priority = u.priority,
            rules = %rules,
            "another NAT chain in this Pod: {what} (netfilter applies only the first NAT binding of a connection)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a proven rewrite stops anything; an inconclusive or passed probe never does,
    /// whatever the mode.
    #[test]
    fn only_a_proven_rewrite_fails_init_or_readiness() {
        let t: SocketAddr = "10.96.0.1:443".parse().unwrap();
        let passed = Outcome::Passed { target: t, to: t };
        let rewritten = Outcome::Rewritten {
            target: t,
            seen: "10.244.0.9:6443".parse().unwrap(),
        };
        let inconclusive = Outcome::Inconclusive {
            reason: "no conntrack entry".into(),
        };
        let modes = [
            SelfTest::Fail,
            SelfTest::Unready,
            SelfTest::Warn,
            SelfTest::Off,
        ];
        for mode in modes {
            for o in [&passed, &inconclusive] {
                assert!(!o.fails_init(mode), "{o:?} {mode:?}");
                assert!(!o.makes_unready(mode), "{o:?} {mode:?}");
            }
            assert_eq!(
                rewritten.fails_init(mode),
                mode == SelfTest::Fail,
                "{mode:?}"
            );
            assert_eq!(
                rewritten.makes_unready(mode),
                matches!(mode, SelfTest::Fail | SelfTest::Unready),
                "{mode:?}"
            );
        }
    }
}
