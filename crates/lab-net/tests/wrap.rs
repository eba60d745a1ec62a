//! Pod addresses wrap around after 10.244.0.254; a reused address must reach the new pod.

use lab_net::{EchoServer, Lab, Pod};
use std::net::{IpAddr, SocketAddr};

/// A lab with a client and a pod `first` that serves its name on port 8080, which the client
/// has reached (so its neighbour table holds first's MAC).
fn lab_with_first(name: &str) -> (Lab, Pod, Pod, EchoServer) {
    let mut lab = Lab::new(name).unwrap();
    let client = lab.add_pod("client").unwrap();
    let first = lab.add_pod("first").unwrap();
    let echo = first.serve_echo("first", &[8080], &[]).unwrap();
    answers(&client, &first, "first");
    (lab, client, first, echo)
}

/// `pod`, serving `name` on port 8080, answers the client on both its addresses.
fn answers(client: &Pod, pod: &Pod, name: &str) {
    for ip in [IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)] {
        let got = client.tcp_request(SocketAddr::new(ip, 8080));
        assert_eq!(got.unwrap(), name, "{ip}");
    }
}

#[test]
fn reused_address_reaches_the_new_pod() {
    let (mut lab, client, first, _first) = lab_with_first("wrap");
    // Use up the rest of the range, free first's address, and take it again.
    for i in 4..=254 {
        lab.add_pod(&format!("p{i}")).unwrap();
    }
    lab.remove_pod(&first).unwrap();
    let second = lab.add_pod("second").unwrap();
    assert_eq!(second.ipv4, first.ipv4);
    let _second = second.serve_echo("second", &[8080], &[]).unwrap();
    answers(&client, &second, "second");
    assert!(matches!(
        lab.add_pod("full"),
        Err(lab_net::Error::Exhausted { .. })
    ));
}

#[test]
fn a_pod_may_ask_for_a_freed_address() {
    let (mut lab, client, first, _first) = lab_with_first("ask");
    // Taken, or outside the pod range: refused, naming the address.
    let e = lab.add_pod_at("again", Some(first.ipv4)).unwrap_err();
    assert!(e.to_string().contains(&first.ipv4.to_string()), "{e}");
    assert!(e.to_string().contains("in use by pod first"), "{e}");
    let e = lab
        .add_pod_at("outside", Some("10.9.9.9".parse().unwrap()))
        .unwrap_err();
    assert!(e.to_string().contains("10.9.9.9"), "{e}");
    // Freed: the next pod may have it at once (no wrap-around needed).
    lab.remove_pod(&first).unwrap();
    let second = lab.add_pod_at("second", Some(first.ipv4)).unwrap();
    assert_eq!((second.ipv4, second.ipv6), (first.ipv4, first.ipv6));
    let _second = second.serve_echo("second", &[8080], &[]).unwrap();
    answers(&client, &second, "second");
}
