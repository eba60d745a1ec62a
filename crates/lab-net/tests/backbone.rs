//! Several labs on one backbone: pods reach each other across labs by IP, ClusterIPs stay local.

use lab_net::{Backbone, Lab, Netns, Network, ServicePort};
use std::net::SocketAddr;

#[test]
fn pods_route_across_labs_and_cluster_ips_stay_local() {
    let backbone = Backbone::new("bb-flat").unwrap();
    let mut east = Lab::with_network("bb-east", Network::indexed(1)).unwrap();
    let mut west = Lab::with_network("bb-west", Network::indexed(2)).unwrap();
    backbone.attach(east.node(), east.network()).unwrap();
    backbone.attach(west.node(), west.network()).unwrap();
    // A third plan overlapping the first is refused, naming the ranges.
    let clash = Lab::with_network("bb-clash", Network::indexed(1)).unwrap();
    let err = backbone
        .attach(clash.node(), clash.network())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.244.1.0/24") && err.contains("overlaps"),
        "{err}"
    );
    drop(clash);

    let a = east.add_pod("a").unwrap();
    let b = west.add_pod("b").unwrap();
    assert_eq!(a.ipv4.to_string(), "10.244.1.2");
    assert_eq!(b.ipv4.to_string(), "10.244.2.2");
    let _echo_b = b.serve_echo("b", &[8080], &[5353]).unwrap();
    let _echo_a = a.serve_echo("a", &[8080], &[]).unwrap();
    assert_eq!(
        a.tcp_request(SocketAddr::from((b.ipv4, 8080))).unwrap(),
        "b"
    );
    assert_eq!(
        a.tcp_request(SocketAddr::from((b.ipv6, 8080))).unwrap(),
        "b"
    );
    assert_eq!(
        a.udp_request(SocketAddr::from((b.ipv4, 5353))).unwrap(),
        "b"
    );
    assert_eq!(
        b.tcp_request(SocketAddr::from((a.ipv4, 8080))).unwrap(),
        "a"
    );
    // No NAT on the way: b sees a's own address.
    let ss = b.command("ss").args(["-tan"]).output().unwrap();
    let seen = String::from_utf8_lossy(&ss.stdout).into_owned();
    assert!(seen.contains("10.244.1.2"), "{seen}");

    // West's ClusterIP works in west, is not routed from east.
    let svc = west
        .add_service("web", &[ServicePort::tcp(80, 8080)], &[&b])
        .unwrap();
    assert_eq!(svc.ipv4.to_string(), "10.98.0.11");
    assert_eq!(b.tcp_request(svc.addr_v4(80)).unwrap(), "b");
    assert!(a.tcp_request(svc.addr_v4(80)).is_err());

    let wan = backbone.netns().name().to_owned();
    drop(backbone);
    assert!(!Netns::exists(&wan));
}
