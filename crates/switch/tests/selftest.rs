//! The switch among other NAT users, and the self-test, against the real kernel: each
//! test in network namespaces of its own (a veth pair, a default route through it; the
//! probe's SYNs go nowhere else), removed on drop.

use lab_net::socket_lb::SocketLb;
use netns::Netns;
use netrules::{Backend, BackendKind, Hook};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;
use switch::config::{Settings, Sources};
use switch::pairing::{Mapping, Plan};
use switch::selftest::{Order, Outcome, other_nat_users, probe};

const ACTIVE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
const PREVIEW: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), 80);
/// A ClusterIP the switch does not remap.
const OTHER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
/// Where the emulated socket load balancer sends ACTIVE.
const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 9), 8080);
/// Where the emulated mesh redirects (the proxy's port on loopback).
const PROXY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001);

struct Ns(Netns);

impl Ns {
    fn new(test: &str) -> Ns {
        let name = format!("gwt-st-{test}-{}", std::process::id());
        let _ = Netns::delete(&name);
        let ns = Ns(Netns::create(&name).expect("netns"));
        for cmd in [
            "link set lo up",
            "link add v0 type veth peer name v1",
            "link set v0 up",
            "link set v1 up",
            "addr add 10.0.0.2/24 dev v0",
            "route add default dev v0",
        ] {
            ns.ip(cmd);
        }
        ns
    }

    fn ip(&self, args: &str) {
        let st = Command::new("ip")
            .args(["-n", self.0.name()])
            .args(args.split(' '))
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args}");
    }

    fn nft(&self, script: &str) {
        let st = Command::new("ip")
            .args(["netns", "exec", self.0.name(), "nft", script])
            .status()
            .expect("nft");
        assert!(st.success(), "nft {script}");
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f).expect("run in netns")
    }

    /// The switch's rules, the jump on: ACTIVE → PREVIEW.
    fn apply_switch(&self, s: &Settings) {
        let plan = Plan {
            mappings: vec![Mapping {
                active: "orders".into(),
                preview: "orders-preview".into(),
                port_name: None,
                protocol: netrules::Protocol::Tcp,
                active_addr: ACTIVE.into(),
                preview_addr: PREVIEW.into(),
            }],
            skipped: vec![],
        };
        let t = switch::rules::table(&plan, s, true);
        self.run(|| Backend::new(BackendKind::Nftables).apply(&t))
            .expect("apply");
    }

    /// A mesh's proxy-init as others write it: every TCP connection redirected to the
    /// proxy, from a NAT chain on the output hook at `priority`.
    fn add_mesh(&self, priority: i32) {
        self.nft("add table inet mesh");
        self.nft(&format!(
            "add chain inet mesh out {{ type nat hook output priority {priority}; }}"
        ));
        self.nft("add rule inet mesh out meta l4proto tcp redirect to :15001");
    }

    /// Where NAT sent a probe connection to `target`.
    fn nat_to(&self, target: SocketAddrV4) -> SocketAddr {
        match self.run(|| probe(target.into(), Duration::from_secs(10))) {
            Outcome::Passed { to, .. } => to,
            other => panic!("probe to {target}: {other:?}"),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Netns::delete(self.0.name());
    }
}

fn settings() -> Settings {
    Settings::resolve(&Sources {
        cli: [
            ("GW_IPV6".to_string(), "false".to_string()),
            (
                "GW_EXCLUDE_CIDRS".to_string(),
                "169.254.169.254/32".to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    })
    .expect("settings")
}

/// Netfilter applies only the first NAT binding of a connection. The switch's base chain
/// sits at dstnat - 10, so its DNAT runs before a mesh's redirect at dstnat whichever
/// was registered first (at equal priority the chain registered last would run first);
/// connections it does not remap still reach the mesh. A redirect at a lower priority
/// wins instead: the priorities decide, and init reports each such chain.
#[test]
fn the_switch_runs_before_a_mesh_redirect_at_dstnat_and_reports_it() {
    let s = settings();
    for mesh_first in [true, false] {
        let ns = Ns::new(if mesh_first { "meshfirst" } else { "meshlast" });
        if mesh_first {
            ns.add_mesh(-100);
        }
        ns.apply_switch(&s);
        if !mesh_first {
            ns.add_mesh(-100);
        }
        // The proxy's port answers, as a proxy would (a refused connection's conntrack
        // entry is dropped at once, before the probe could read it).
        let _proxy = ns.run(|| std::net::TcpListener::bind(PROXY)).unwrap();
        assert_eq!(
            ns.nat_to(ACTIVE),
            SocketAddr::from(PREVIEW),
            "mesh first: {mesh_first}"
        );
        assert_eq!(
            ns.nat_to(OTHER),
            SocketAddr::from(PROXY),
            "mesh first: {mesh_first}"
        );
        let users = ns.run(|| other_nat_users(Hook::Output)).unwrap();
        assert_eq!(users.len(), 1, "{users:?}");
        let (u, order) = &users[0];
        assert_eq!(
            (
                u.family,
                u.table.as_str(),
                u.chain.as_str(),
                u.hook,
                u.priority,
                u.rules
            ),
            ("inet", "mesh", "out", "output", -100, Some(1))
        );
        assert_eq!(*order, Order::After);
    }
    // A redirect that asks to run earlier does: the switch never sees what it takes.
    let ns = Ns::new("meshearly");
    ns.apply_switch(&s);
    ns.add_mesh(-120);
    let _proxy = ns.run(|| std::net::TcpListener::bind(PROXY)).unwrap();
    assert_eq!(ns.nat_to(ACTIVE), SocketAddr::from(PROXY));
    let users = ns.run(|| other_nat_users(Hook::Output)).unwrap();
    assert_eq!(users[0].1, Order::Before, "{users:?}");
    // iptables' nat table is another NAT user at dstnat (iptables-nft shows as family ip).
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.0.name(),
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
        ])
        .args([
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "REDIRECT",
            "--to-ports",
            "5353",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let users = ns.run(|| other_nat_users(Hook::Output)).unwrap();
    assert!(
        users.iter().any(|(u, o)| u.family == "ip"
            && u.table == "nat"
            && u.chain == "OUTPUT"
            && u.rules == Some(1)
            && *o == Order::After),
        "{users:?}"
    );
}

/// Where eBPF socket load balancing rewrites a ClusterIP in connect(), the switch's chain
/// never sees it: the self-test tells, from the probe connection's conntrack entry.
#[test]
fn self_test_fails_under_ebpf_socket_load_balancing() {
    let ns = Ns::new("socklb");
    ns.apply_switch(&settings());
    // A plain cluster: the probe connection reaches the switch's chain and is remapped.
    assert_eq!(
        ns.run(|| probe(ACTIVE.into(), Duration::from_secs(10))),
        Outcome::Passed {
            target: ACTIVE.into(),
            to: PREVIEW.into()
        }
    );
    // This process in a cgroup whose connect4 program sends ACTIVE to a backend.
    let lb = SocketLb::new("selftest", ACTIVE, BACKEND).expect("load the connect4 program");
    lb.enter().expect("enter the cgroup");
    let outcome = ns.run(|| probe(ACTIVE.into(), Duration::from_secs(10)));
    drop(lb);
    assert_eq!(
        outcome,
        Outcome::Rewritten {
            target: ACTIVE.into(),
            seen: BACKEND.into()
        }
    );
    // Back outside the cgroup, the switch is seen again.
    assert!(matches!(
        ns.run(|| probe(ACTIVE.into(), Duration::from_secs(10))),
        Outcome::Passed { .. }
    ));
}

/// A probe that cannot tell (no route to the ClusterIP; no conntrack entry because nothing
/// in the namespace uses connection tracking yet) is inconclusive, and an inconclusive
/// probe never fails init or readiness, whatever GW_SELF_TEST says.
#[test]
fn an_inconclusive_self_test_never_stops_a_pod() {
    use switch::config::SelfTest;
    let ns = Ns::new("inconcl");
    // Nothing registered a NAT or conntrack hook here: the SYN leaves untracked.
    let untracked = ns.run(|| probe(ACTIVE.into(), Duration::from_millis(500)));
    assert!(
        matches!(&untracked, Outcome::Inconclusive { reason } if reason.contains("no conntrack entry")),
        "{untracked:?}"
    );
    ns.ip("route del default dev v0");
    let unroutable = ns.run(|| probe(ACTIVE.into(), Duration::from_millis(500)));
    assert!(
        matches!(&unroutable, Outcome::Inconclusive { reason } if reason.contains(&ACTIVE.to_string())),
        "{unroutable:?}"
    );
    for o in [&untracked, &unroutable] {
        for mode in [SelfTest::Fail, SelfTest::Unready, SelfTest::Warn] {
            assert!(
                !o.fails_init(mode) && !o.makes_unready(mode),
                "{o:?} {mode:?}"
            );
        }
    }
}
