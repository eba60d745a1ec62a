//! Pod addresses wrap around after 10.244.0.254; a reused address must reach the new pod.

use lab_net::Lab;

#[test]
fn reused_address_reaches_the_new_pod() {
    let mut lab = Lab::new("wrap").unwrap();
    let client = lab.add_pod("client").unwrap();
    let first = lab.add_pod("first").unwrap();
    let _first = first.serve_echo("first", &[8080], &[]).unwrap();
    // The client learns first's MAC.
    assert_eq!(
        client.tcp_request((first.ipv4, 8080).into()).unwrap(),
        "first"
    );
    assert_eq!(
        client.tcp_request((first.ipv6, 8080).into()).unwrap(),
        "first"
    );
    // Use up the rest of the range, free first's address, and take it again.
    for i in 4..=254 {
        lab.add_pod(&format!("p{i}")).unwrap();
    }
    lab.remove_pod(&first).unwrap();
    let second = lab.add_pod("second").unwrap();
    assert_eq!(second.ipv4, first.ipv4);
    let _second = second.serve_echo("second", &[8080], &[]).unwrap();
    assert_eq!(
        client.tcp_request((second.ipv4, 8080).into()).unwrap(),
        "second"
    );
    assert_eq!(
        client.tcp_request((second.ipv6, 8080).into()).unwrap(),
        "second"
    );
    assert!(matches!(
        lab.add_pod("full"),
        Err(lab_net::Error::Exhausted { .. })
    ));
}

#[test]
fn a_pod_may_ask_for_a_freed_address() {
    let mut lab = Lab::new("ask").unwrap();
    let client = lab.add_pod("client").unwrap();
    let first = lab.add_pod("first").unwrap();
    let _first = first.serve_echo("first", &[8080], &[]).unwrap();
    assert_eq!(
        client.tcp_request((first.ipv4, 8080).into()).unwrap(),
        "first"
    );
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
    assert_eq!(
        client.tcp_request((second.ipv4, 8080).into()).unwrap(),
        "second"
    );
}
