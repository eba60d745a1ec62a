//! Real-kernel tests of the lab: namespaces, bridge, ClusterIP DNAT and echo backends.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lab_net::{Lab, Netns, Pod, ServicePort};

fn v4(pod: &Pod, port: u16) -> SocketAddr {
    (pod.ipv4, port).into()
}

fn v6(pod: &Pod, port: u16) -> SocketAddr {
    (pod.ipv6, port).into()
}

fn refused(err: &lab_net::Error) -> bool {
    matches!(err, lab_net::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let prefix = format!("{prefix}-");
    Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn pod_to_pod_direct_v4_and_v6() {
    let mut lab = Lab::new("pod_to_pod").unwrap();
    let a = lab.add_pod("a").unwrap();
    let b = lab.add_pod("b").unwrap();
    let _echo = b.serve_echo("b", &[8080], &[5353]).unwrap();
    assert_eq!(a.tcp_request(v4(&b, 8080)).unwrap(), "b");
    assert_eq!(a.tcp_request(v6(&b, 8080)).unwrap(), "b");
    assert_eq!(a.udp_request(v4(&b, 5353)).unwrap(), "b");
    assert_eq!(a.udp_request(v6(&b, 5353)).unwrap(), "b");
    assert_eq!(a.http_get(v6(&b, 8080), "/x").unwrap(), "b\n");
    // The pod reaches the node too, and commands run inside the pod.
    let out = a
        .command("ip")
        .args(["-4", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.244.0.2/24"));
}

#[test]
fn cluster_ip_tcp_udp_http_both_families() {
    let mut lab = Lab::new("cluster_ip").unwrap();
    let client = lab.add_pod("client").unwrap();
    let web = lab.add_pod("web").unwrap();
    let other = lab.add_pod("other").unwrap();
    let _web = web.serve_echo("web", &[8080], &[5353]).unwrap();
    let _other = other.serve_echo("other", &[8080], &[5353]).unwrap();
    let svc = lab
        .add_service(
            "web",
            &[
                ServicePort::tcp(80, 8080).named("http"),
                ServicePort::udp(53, 5353),
            ],
            &[&web],
        )
        .unwrap();
    assert_eq!(svc.ipv4.to_string(), "10.96.0.11");
    assert_eq!(svc.ipv6.to_string(), "fd00:10:96::b");
    for addr in [svc.addr_v4(80), svc.addr_v6(80)] {
        assert_eq!(client.tcp_request(addr).unwrap(), "web", "{addr}");
        assert_eq!(client.http_get(addr, "/").unwrap(), "web\n", "{addr}");
        let full = client.http(addr, "/").unwrap();
        assert_eq!(full.header("x-echo-name"), Some("web"));
    }
    for addr in [svc.addr_v4(53), svc.addr_v6(53)] {
        assert_eq!(client.udp_request(addr).unwrap(), "web", "{addr}");
    }
    // SCTP ports are programmed too (no SCTP echo: the ruleset must just apply).
    let sctp = ServicePort {
        name: Some("sctp".into()),
        port: 3868,
        target_port: 3868,
        protocol: lab_net::Protocol::Sctp,
    };
    lab.add_service("diameter", &[sctp], &[&web, &other])
        .unwrap();
    assert!(
        lab.ruleset()
            .contains("meta l4proto sctp dnat ip to numgen")
    );
    // A backend reaching its own service (hairpin) works too.
    assert_eq!(web.tcp_request(svc.addr_v4(80)).unwrap(), "web");
    assert_eq!(web.udp_request(svc.addr_v6(53)).unwrap(), "web");
}

#[test]
fn two_backends_are_both_reached() {
    let mut lab = Lab::new("spread").unwrap();
    let client = lab.add_pod("client").unwrap();
    let a = lab.add_pod("a").unwrap();
    let b = lab.add_pod("b").unwrap();
    let _a = a.serve_echo("a", &[8080], &[8080]).unwrap();
    let _b = b.serve_echo("b", &[8080], &[8080]).unwrap();
    let svc = lab
        .add_service(
            "ab",
            &[ServicePort::tcp(80, 8080), ServicePort::udp(80, 8080)],
            &[&a, &b],
        )
        .unwrap();
    for (family, addr) in [("v4", svc.addr_v4(80)), ("v6", svc.addr_v6(80))] {
        let tcp: BTreeSet<String> = (0..6).map(|_| client.tcp_request(addr).unwrap()).collect();
        let udp: BTreeSet<String> = (0..6).map(|_| client.udp_request(addr).unwrap()).collect();
        let both: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        assert_eq!(tcp, both, "tcp {family}");
        assert_eq!(udp, both, "udp {family}");
    }
}

#[test]
fn set_endpoints_moves_traffic_and_remove_service_stops_it() {
    let mut lab = Lab::new("endpoints").unwrap();
    let client = lab.add_pod("client").unwrap();
    let blue = lab.add_pod("blue").unwrap();
    let green = lab.add_pod("green").unwrap();
    let _blue = blue.serve_echo("blue", &[8080], &[]).unwrap();
    let _green = green.serve_echo("green", &[8080], &[]).unwrap();
    let svc = lab
        .add_service("app", &[ServicePort::tcp(80, 8080)], &[&blue])
        .unwrap();
    assert_eq!(client.tcp_request(svc.addr_v4(80)).unwrap(), "blue");
    lab.set_endpoints(&svc, &[&green]).unwrap();
    assert_eq!(client.tcp_request(svc.addr_v4(80)).unwrap(), "green");
    assert_eq!(client.tcp_request(svc.addr_v6(80)).unwrap(), "green");
    // Applying the same state again is harmless.
    lab.set_endpoints(&svc, &[&green]).unwrap();
    assert_eq!(client.tcp_request(svc.addr_v4(80)).unwrap(), "green");
    // No endpoints: refused at once, like kube-proxy's reject.
    lab.set_endpoints(&svc, &[]).unwrap();
    for addr in [svc.addr_v4(80), svc.addr_v6(80)] {
        let err = client.tcp_request(addr).unwrap_err();
        assert!(refused(&err), "{err}");
    }
    lab.set_endpoints(&svc, &[&blue]).unwrap();
    assert_eq!(client.tcp_request(svc.addr_v4(80)).unwrap(), "blue");
    lab.remove_service(&svc).unwrap();
    let err = client.tcp_request(svc.addr_v4(80)).unwrap_err();
    assert!(
        err.to_string().contains("10.96.0.11:80") && refused(&err),
        "{err}"
    );
    assert!(lab.set_endpoints(&svc, &[&blue]).is_err());
    // The freed ClusterIP is handed out again.
    let again = lab
        .add_service("again", &[ServicePort::tcp(80, 8080)], &[&green])
        .unwrap();
    assert_eq!(again.ipv4, svc.ipv4);
    assert_eq!(client.tcp_request(again.addr_v4(80)).unwrap(), "green");
}

#[test]
fn parallel_labs_with_same_addresses_do_not_interfere() {
    let mut one = Lab::new("twin").unwrap();
    let mut two = Lab::new("twin").unwrap();
    assert_ne!(one.prefix(), two.prefix());
    let c1 = one.add_pod("client").unwrap();
    let s1 = one.add_pod("server").unwrap();
    let c2 = two.add_pod("client").unwrap();
    let s2 = two.add_pod("server").unwrap();
    assert_eq!(s1.ipv4, s2.ipv4);
    let _e1 = s1.serve_echo("one", &[8080], &[]).unwrap();
    let _e2 = s2.serve_echo("two", &[8080], &[]).unwrap();
    let svc1 = one
        .add_service("svc", &[ServicePort::tcp(80, 8080)], &[&s1])
        .unwrap();
    let svc2 = two
        .add_service("svc", &[ServicePort::tcp(80, 8080)], &[&s2])
        .unwrap();
    assert_eq!(svc1.ipv4, svc2.ipv4);
    for _ in 0..3 {
        assert_eq!(c1.tcp_request(svc1.addr_v4(80)).unwrap(), "one");
        assert_eq!(c2.tcp_request(svc2.addr_v4(80)).unwrap(), "two");
        assert_eq!(c1.tcp_request(v6(&s1, 8080)).unwrap(), "one");
        assert_eq!(c2.tcp_request(v6(&s2, 8080)).unwrap(), "two");
    }
}

#[test]
fn drop_removes_all_namespaces_even_on_panic() {
    let prefix = std::panic::catch_unwind(|| {
        let mut lab = Lab::new("panicking").unwrap();
        lab.add_pod("a").unwrap();
        lab.add_pod("b").unwrap();
        let prefix = lab.prefix().to_owned();
        assert_eq!(lab_namespaces(&prefix).len(), 3);
        std::panic::panic_any(prefix);
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    assert!(lab_namespaces(&prefix).is_empty());
}

#[test]
fn shutdown_handle_removes_the_lab_and_blocks_changes() {
    let mut lab = Lab::new("shutdown").unwrap();
    let pod = lab.add_pod("a").unwrap();
    let handle = lab.shutdown_handle();
    std::thread::spawn(move || handle.shutdown().unwrap())
        .join()
        .unwrap();
    assert!(lab_namespaces(lab.prefix()).is_empty());
    assert!(matches!(lab.add_pod("b"), Err(lab_net::Error::ShutDown(_))));
    assert!(lab.shutdown().is_ok());
    drop(pod);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut lab = Lab::new("bad_input").unwrap();
    let a = lab.add_pod("a").unwrap();
    for name in ["", "A", "node", "a", "x y", "a/b"] {
        assert!(lab.add_pod(name).is_err(), "{name:?}");
    }
    assert!(lab.add_service("svc", &[], &[&a]).is_err());
    assert!(
        lab.add_service("svc", &[ServicePort::tcp(80, 0)], &[&a])
            .is_err()
    );
    let mut other = Lab::new("bad_input_other").unwrap();
    let stranger = other.add_pod("a").unwrap();
    let err = lab
        .add_service("svc", &[ServicePort::tcp(80, 80)], &[&stranger])
        .unwrap_err();
    assert!(err.to_string().contains("not a pod of this lab"), "{err}");
    assert!(a.http_get(v4(&a, 1), "no-slash").is_err());
    // Nothing listens there: refused, reported with pod and address.
    let err = a.tcp_request(v4(&a, 1)).unwrap_err();
    assert!(
        err.to_string().contains("10.244.0.2:1") && err.to_string().contains("pod a"),
        "{err}"
    );
}

#[test]
fn udp_to_service_without_endpoints_is_refused() {
    let mut lab = Lab::new("udp_refused").unwrap();
    let client = lab.add_pod("client").unwrap();
    let svc = lab
        .add_service("dns", &[ServicePort::udp(53, 53)], &[])
        .unwrap();
    for addr in [svc.addr_v4(53), svc.addr_v6(53)] {
        let err = client.udp_request(addr).unwrap_err();
        assert!(refused(&err), "{err}");
    }
}

#[test]
fn cleanup_stale_removes_dead_labs_only() {
    let live = Lab::new("live").unwrap();
    // A pid that surely ran and ended: our own finished child.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("gwl{dead_pid}-0-crashed-node");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Netns::delete(&self.0);
        }
    }
    let _guard = Remove(stale.clone());
    Netns::create(&stale).unwrap();
    let removed = lab_net::cleanup_stale().unwrap();
    assert!(!Netns::exists(&stale), "stale namespace left: {removed:?}");
    assert!(
        removed
            .iter()
            .all(|n| lab_net::owner_pid(n) != Some(std::process::id()))
    );
    assert_eq!(
        lab_namespaces(live.prefix()),
        [format!("{}-node", live.prefix())]
    );
}

#[test]
fn prefix_carries_pid_and_label() {
    let lab = Lab::new("My Test::Name").unwrap();
    let pid = std::process::id();
    assert!(
        lab.prefix().starts_with(&format!("gwl{pid}-")),
        "{}",
        lab.prefix()
    );
    assert!(lab.prefix().ends_with("-my-test-name"), "{}", lab.prefix());
    assert_eq!(lab.node().name(), format!("{}-node", lab.prefix()));
    assert_eq!(lab_net::owner_pid(lab.node().name()), Some(pid));
}

#[test]
fn remove_pod_drops_backend_and_frees_address() {
    let mut lab = Lab::new("remove_pod").unwrap();
    let client = lab.add_pod("client").unwrap();
    let a = lab.add_pod("a").unwrap();
    let b = lab.add_pod("b").unwrap();
    let _a = a.serve_echo("a", &[8080], &[]).unwrap();
    let _b = b.serve_echo("b", &[8080], &[]).unwrap();
    let svc = lab
        .add_service("svc", &[ServicePort::tcp(80, 8080)], &[&a, &b])
        .unwrap();
    // Warm the node's and the client's neighbour caches with a's MAC.
    let seen: BTreeSet<String> = (0..2)
        .map(|_| client.tcp_request(svc.addr_v4(80)).unwrap())
        .collect();
    assert_eq!(seen.len(), 2);
    assert_eq!(client.tcp_request(v4(&a, 8080)).unwrap(), "a");
    assert_eq!(client.tcp_request(v6(&a, 8080)).unwrap(), "a");
    // `a` (and its echo server) still hold the namespace open: removal must work regardless.
    lab.remove_pod(&a).unwrap();
    assert!(!Netns::exists(a.netns().name()));
    for _ in 0..4 {
        assert_eq!(client.tcp_request(svc.addr_v4(80)).unwrap(), "b");
    }
    let c = lab.add_pod("c").unwrap();
    // Addresses go round-robin: the freed one is not reused while others are free.
    assert_eq!(c.ipv4.to_string(), "10.244.0.5");
    let _c = c.serve_echo("c", &[8080], &[]).unwrap();
    lab.set_endpoints(&svc, &[&c]).unwrap();
    assert_eq!(client.tcp_request(svc.addr_v4(80)).unwrap(), "c");
    assert_eq!(client.tcp_request(svc.addr_v6(80)).unwrap(), "c");
    assert_eq!(client.tcp_request(v4(&c, 8080)).unwrap(), "c");
    assert_eq!(client.tcp_request(v6(&c, 8080)).unwrap(), "c");
    assert!(lab.remove_pod(&a).is_err());
    assert_eq!(lab.pods().len(), 3);
}
