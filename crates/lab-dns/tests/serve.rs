//! The server on loopback, asked by the real `dig`: answers from the zone, NXDOMAIN with the
//! SOA, TCP, outside names REFUSED without an upstream and forwarded to a real `dnsmasq` with one.

use lab_dns::peer::Dnsmasq;
use lab_dns::{DnsServer, Upstream, ZoneHandle};
use serde_json::json;
use std::net::SocketAddr;

fn zone() -> lab_dns::Zone {
    let svc = json!({"metadata": {"namespace": "shop", "name": "web"},
                     "spec": {"clusterIPs": ["10.96.7.7", "fd00:10:96::7:7"],
                              "ports": [{"name": "http", "port": 80}]}});
    lab_dns::Zone::build(lab_dns::ZoneConfig::default(), &[svc], &[], 1)
}

fn serve(upstream: Upstream) -> (DnsServer, SocketAddr) {
    let (udp, tcp) = lab_dns::loopback_pair().unwrap();
    let addr = udp.local_addr().unwrap();
    let s = DnsServer::start(vec![udp], vec![tcp], ZoneHandle::new(zone()), upstream).unwrap();
    (s, addr)
}

async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=5", "+tries=3"])
        .args(args)
        .output()
        .await
        .expect("dig (dnsutils) is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn answers_from_the_zone_over_udp_and_tcp() {
    let (_s, addr) = serve(Upstream::None);
    assert_eq!(
        dig(addr, &["+short", "web.shop.svc.cluster.local", "A"])
            .await
            .trim(),
        "10.96.7.7"
    );
    assert_eq!(
        dig(
            addr,
            &["+short", "+tcp", "web.shop.svc.cluster.local", "AAAA"]
        )
        .await
        .trim(),
        "fd00:10:96::7:7"
    );
    assert_eq!(
        dig(addr, &["+short", "-x", "10.96.7.7"]).await.trim(),
        "web.shop.svc.cluster.local."
    );
    assert_eq!(
        dig(
            addr,
            &["+short", "_http._tcp.web.shop.svc.cluster.local", "SRV"]
        )
        .await
        .trim(),
        "0 100 80 web.shop.svc.cluster.local."
    );
    let nx = dig(addr, &["nope.shop.svc.cluster.local", "A"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("flags: qr aa rd;"), "authoritative: {nx}");
    assert!(
        nx.contains(
            "cluster.local.\t\t30\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30"
        ),
        "{nx}"
    );
}

#[tokio::test]
async fn outside_names_are_refused_without_an_upstream_and_forwarded_with_one() {
    let (_s, addr) = serve(Upstream::None);
    let out = dig(addr, &["outside.test", "A"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");

    let dnsmasq = Dnsmasq::start(&["--address=/outside.test/192.0.2.7".into()]).unwrap();
    let (_s, addr) = serve(Upstream::Forward(dnsmasq.addr()));
    // dnsmasq may take a moment to bind; a bounded number of tries, no timing asserted.
    let mut got = String::new();
    for _ in 0..300 {
        got = dig(addr, &["+short", "outside.test", "A"]).await;
        if got.trim() == "192.0.2.7" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got.trim(), "192.0.2.7");
    // The cluster's own names still come from the zone, not the upstream.
    assert_eq!(
        dig(addr, &["+short", "web.shop.svc.cluster.local"])
            .await
            .trim(),
        "10.96.7.7"
    );
}
