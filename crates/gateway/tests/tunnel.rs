//! The gateway and a client in the lab, on the real kernel: egress through the tunnel, the
//! port forward, the kill switch, idempotent init. Each test has its own lab (namespaces named
//! after it, removed on drop).

use gateway::natconf::{self, NatEntry, Plan};
use gateway::settings::{Raw, Settings};
use lab_net::internet::{self, Internet};
use lab_net::{Lab, Pod};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Settings as a settings.sh in the seed's style plus env overrides.
fn settings(file: &str, env: &[(&str, String)]) -> Settings {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let lookup = move |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    Settings::from_raw(&Raw::resolve(Some(("settings.sh", file)), &lookup).unwrap()).unwrap()
}

const SETTINGS_SH: &str = r#"#!/bin/sh
# as pod-gateway's config/settings.sh
export GATEWAY_NAME="${GATEWAY_NAME:-gateway}"
export K8S_DNS_IPS="${K8S_DNS_IPS:-10.96.0.10}"
export VXLAN_ID="${VXLAN_ID:-42}"
export VXLAN_PORT="${VXLAN_PORT:-0}"
export VXLAN_IP_NETWORK="${VXLAN_IP_NETWORK:-172.16.0}"
export VXLAN_GATEWAY_FIRST_DYNAMIC_IP="${VXLAN_GATEWAY_FIRST_DYNAMIC_IP:-20}"
export VPN_INTERFACE="${VPN_INTERFACE:-tun0}"
export VPN_BLOCK_OTHER_TRAFFIC="${VPN_BLOCK_OTHER_TRAFFIC:-true}"
export VPN_TRAFFIC_PORT="${VPN_TRAFFIC_PORT:-1194}"
export VPN_LOCAL_CIDRS="${VPN_LOCAL_CIDRS:-10.0.0.0/8 192.168.0.0/16}"
export DNS_LOCAL_CIDRS="${DNS_LOCAL_CIDRS:-local}"
"#;

const NAT_CONF: &str = "# name octet ports\nclient 10 tcp:8080:80,udp:5353\n";
const NAT6_CONF: &str = "client a tcp:8080:80\n";

struct Env {
    lab: Lab,
    gw: Pod,
    client: Pod,
    inet: Internet,
    s: Settings,
    nat4: Vec<NatEntry>,
    nat6: Vec<NatEntry>,
}

fn env(test: &str, extra: &[(&str, &str)]) -> Env {
    let mut lab = Lab::new(test).unwrap();
    let gw = lab.add_pod("gw").unwrap();
    let client = lab.add_pod("client").unwrap();
    let inet = lab.add_internet().unwrap();
    inet.connect_vpn(&gw, "tun0").unwrap();
    let mut vars = vec![
        ("GATEWAY_NAME", gw.ipv4.to_string()),
        ("VXLAN_IPV6_NETWORK", "fd00:16::/64".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let s = settings(SETTINGS_SH, &vars);
    let nat4 = natconf::parse("nat.conf", NAT_CONF, Plan::V4(&s.tunnel4)).unwrap();
    let nat6 = natconf::parse(
        "nat6.conf",
        NAT6_CONF,
        Plan::V6(s.tunnel6.as_ref().unwrap()),
    )
    .unwrap();
    Env {
        lab,
        gw,
        client,
        inet,
        s,
        nat4,
        nat6,
    }
}

impl Env {
    fn gateway_init(&self) -> gateway::gateway::Applied {
        let all: Vec<NatEntry> = self.nat4.iter().chain(&self.nat6).cloned().collect();
        self.gw
            .netns()
            .run(|| gateway::gateway::init(&self.s, &all))
            .unwrap()
            .unwrap()
    }

    fn client_init(&self) -> gateway::client::Tunnel {
        self.client
            .netns()
            .run(|| {
                gateway::client::init(&self.s, "client-5f7d9-x2x4k", &self.nat4, &self.nat6, "")
            })
            .unwrap()
            .unwrap()
    }
}

fn tcp_line(pod_ns: &lab_net::Netns, to: SocketAddr) -> std::io::Result<String> {
    pod_ns.run(|| lab_net::client::tcp_request(to)).unwrap()
}

#[test]
fn client_egress_leaves_through_the_gateways_vpn_and_forwards_come_back() {
    let e = env("gw_egress", &[]);
    let applied = e.gateway_init();
    assert_eq!(applied.vxlan_mtu, 1450);
    let t = e.client_init();
    assert_eq!(t.addr4.unwrap().to_string(), "172.16.0.10/24");
    assert_eq!(t.addr6.unwrap().to_string(), "fd00:16::a/64");
    assert_eq!(t.mtu, 1450);
    let _who = e.inet.serve_whoami(7000).unwrap();

    // The outside sees the gateway's VPN address, for both families.
    let v4 = tcp_line(
        e.client.netns(),
        SocketAddr::new(internet::HOST_V4.into(), 7000),
    )
    .unwrap();
    assert_eq!(v4, internet::VPN_CLIENT_V4.to_string());
    let v6 = tcp_line(
        e.client.netns(),
        SocketAddr::new(internet::HOST_V6.into(), 7000),
    )
    .unwrap();
    assert_eq!(v6, internet::VPN_CLIENT_V6.to_string());

    // nat.conf's forward: outside port 8080 on the VPN reaches the client's port 80.
    let _echo = e.client.serve_echo("client", &[80], &[5353]).unwrap();
    let got = tcp_line(
        e.inet.netns(),
        SocketAddr::new(internet::VPN_CLIENT_V4.into(), 8080),
    )
    .unwrap();
    assert_eq!(got, "client");
    let got = e
        .inet
        .netns()
        .run(|| lab_net::client::udp_request(SocketAddr::new(internet::VPN_CLIENT_V4.into(), 5353)))
        .unwrap()
        .unwrap();
    assert_eq!(got, "client");
    let got = tcp_line(
        e.inet.netns(),
        SocketAddr::new(internet::VPN_CLIENT_V6.into(), 8080),
    )
    .unwrap();
    assert_eq!(got, "client");
    // A port that is not forwarded does not reach the client.
    assert!(
        tcp_line(
            e.inet.netns(),
            SocketAddr::new(internet::VPN_CLIENT_V4.into(), 80)
        )
        .is_err()
    );

    // The client lost its own default routes (no leak outside the tunnel)…
    let routes = e
        .client
        .netns()
        .run(|| gateway::iproute::default_routes("-4").unwrap())
        .unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].dev, "vxlan0");
    // …but keeps the cluster DNS on its own route.
    let dns = e
        .client
        .netns()
        .run(|| gateway::iproute::json(&["route", "get", "10.96.0.10"]).unwrap())
        .unwrap();
    assert_eq!(dns[0]["dev"], "eth0", "{dns}");
    drop(e.lab);
}

#[test]
fn gateway_init_twice_changes_nothing() {
    let e = env("gw_idem", &[]);
    e.gateway_init();
    let snap = || {
        e.gw.netns()
            .run(|| {
                let rules = netrules::fingerprint().unwrap();
                let link = gateway::iproute::json(&["-d", "link", "show", "vxlan0"]).unwrap();
                let addrs = gateway::iproute::addresses("vxlan0").unwrap();
                let ip_rules = gateway::iproute::json(&["rule", "show"]).unwrap();
                let ip6_rules = gateway::iproute::json(&["-6", "rule", "show"]).unwrap();
                let routes = gateway::iproute::json(&["route", "show"]).unwrap();
                format!(
                    "{rules}\n{}\n{addrs:?}\n{ip_rules}\n{ip6_rules}\n{routes}",
                    link[0]["linkinfo"]
                )
            })
            .unwrap()
    };
    let first = snap();
    assert!(first.contains("suppress_prefixlen"), "{first}");
    e.gateway_init();
    assert_eq!(first, snap());
}

/// A real packet capture (`tcpdump`) on every interface of a namespace, listening before
/// this returns; [`Capture::stop`] gives one line per packet seen.
struct Capture {
    child: std::process::Child,
    lines: std::thread::JoinHandle<Vec<String>>,
}

fn capture(ns: &lab_net::Netns, filter: &str) -> Capture {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "tcpdump",
            "-i",
            "any",
            "-n",
            "-l",
            "-p",
        ])
        .arg(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/install-deps.sh installs it)");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start"
        );
    }
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines = std::thread::spawn(move || out.lines().map_while(Result::ok).collect());
    Capture { child, lines }
}

impl Capture {
    fn stop(mut self) -> Vec<String> {
        // SIGTERM-like: tcpdump flushes what it printed; its stdout closes when it exits.
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.lines, std::thread::spawn(Vec::new))
            .join()
            .unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With the VPN down, nothing the client sends reaches the internet when the kill switch is
/// on: neither the server there nor a capture of every interface of the internet sees a
/// packet (UDP and TCP, both families). With the kill switch off the same packets do arrive
/// (over the cluster's own uplink), which shows the test can see a leak.
fn vpn_down_leak(test: &str, kill_switch: bool) -> (Vec<IpAddr>, Vec<String>) {
    let e = env(
        test,
        &[(
            "VPN_BLOCK_OTHER_TRAFFIC",
            if kill_switch { "true" } else { "false" },
        )],
    );
    e.gateway_init();
    e.client_init();
    let who = e.inet.serve_whoami(7001).unwrap();
    e.inet.disconnect_vpn(&e.gw, "tun0").unwrap();
    // Whatever reaches the internet from the cluster (not the links' own IPv6 multicast:
    // neighbour discovery, listener reports).
    let cap = capture(e.inet.netns(), "ip or (ip6 and not ip6 multicast)");
    let to4 = SocketAddr::new(internet::HOST_V4.into(), 7001);
    let to6 = SocketAddr::new(internet::HOST_V6.into(), 7001);
    e.client
        .netns()
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let s6 = UdpSocket::bind("[::]:0").unwrap();
            for _ in 0..5 {
                let _ = s.send_to(b"leak?\n", to4);
                let _ = s6.send_to(b"leak?\n", to6);
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::net::TcpStream::connect_timeout(&to4, Duration::from_millis(300));
        })
        .unwrap();
    // Anything still in flight has arrived by now (the lab is all in one kernel).
    std::thread::sleep(Duration::from_millis(300));
    let seen = who.udp_sources();
    let packets = cap.stop();
    drop(e.lab);
    (seen, packets)
}

#[test]
fn kill_switch_lets_nothing_out_when_the_vpn_is_down() {
    let (seen, packets) = vpn_down_leak("gw_kill_on", true);
    assert_eq!(seen, Vec::<IpAddr>::new());
    assert_eq!(packets, Vec::<String>::new());
}

#[test]
fn without_kill_switch_the_same_traffic_leaks() {
    let (seen, packets) = vpn_down_leak("gw_kill_off", false);
    assert!(!seen.is_empty());
    assert!(
        packets
            .iter()
            .any(|l| l.contains("> 203.0.113.10.7001: ") && !l.contains("Flags")),
        "{packets:?}"
    );
    assert!(
        packets
            .iter()
            .any(|l| l.contains("203.0.113.10.7001: Flags [S]")),
        "{packets:?}"
    );
}

/// A process this test started in a lab namespace; killed (SIGKILL) on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The point-to-point addresses of the real VPN (outside VPN_LOCAL_CIDRS and the lab's ranges).
const OVPN_SERVER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 1);
const OVPN_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 2);

/// Starts Debian's `openvpn` in `ns` on a real tun device `tun0` (UDP, static key) with `args`
/// and returns once its log shows `ready` (60 s at most: the client retries its first packet).
fn openvpn(ns: &lab_net::Netns, ready: &str, args: &[String]) -> Proc {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "openvpn"])
        .args(args)
        .args([
            "--dev",
            "tun0",
            "--proto",
            "udp",
            "--cipher",
            "AES-256-CBC",
            "--auth",
            "SHA256",
            "--verb",
            "3",
            "--script-security",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openvpn (scripts/install-deps.sh installs it)");
    let out = BufReader::new(child.stdout.take().unwrap());
    let err = BufReader::new(child.stderr.take().unwrap());
    let proc = Proc(child);
    // Threads keep draining its output, so it never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        out.lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    std::thread::spawn(move || {
        err.lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx2.send(l)))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return proc,
            Ok(line) => log.push(line),
            Err(_) => break,
        }
    }
    panic!(
        "openvpn in {} did not log {ready:?}:\n{}",
        ns.name(),
        log.join("\n")
    );
}

/// The gateway behind a real VPN: Debian's openvpn as the server in the internet namespace and
/// as the client in the gateway Pod (tun0, UDP 1194, a static key), the seed-style settings.sh
/// with the kill switch on from init. The client's egress leaves through the VPN (the outside
/// sees the VPN's address), outside names resolve through the VPN's resolver (a dnsmasq that
/// listens only on the VPN server's tunnel address), nat.conf's forward reaches the client
/// from the far end of the VPN; once the VPN client dies, a capture of the whole internet sees
/// nothing from the cluster and names no longer resolve.
#[test]
fn client_traffic_and_names_go_through_openvpn_and_nothing_leaves_when_it_dies() {
    let mut lab = Lab::new("gw_ovpn").unwrap();
    let gw = lab.add_pod("gw").unwrap();
    let client = lab.add_pod("client").unwrap();
    let inet = lab.add_internet().unwrap();
    let s = settings(SETTINGS_SH, &[("GATEWAY_NAME", gw.ipv4.to_string())]);
    assert!(s.vpn_block_other_traffic);
    let nat4 = natconf::parse("nat.conf", NAT_CONF, Plan::V4(&s.tunnel4)).unwrap();
    let tmp = std::env::temp_dir().join(format!("gw-ovpn-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let key = tmp.join("static.key");
    let st = std::process::Command::new("openvpn")
        .args(["--genkey", "secret"])
        .arg(&key)
        .output()
        .expect("openvpn (scripts/install-deps.sh installs it)");
    assert!(st.status.success(), "{st:?}");
    let key = key.display().to_string();

    // The gateway Pod as deployed: init (kill switch on) before the VPN container starts.
    gw.netns()
        .run(|| gateway::gateway::init(&s, &nat4).unwrap())
        .unwrap();
    let server = internet::UPLINK_INET_V4.to_string();
    let (vs, vc) = (OVPN_SERVER.to_string(), OVPN_CLIENT.to_string());
    let own = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let _server = openvpn(
        inet.netns(),
        "UDPv4 link local",
        &own(&[
            "--local",
            &server,
            "--lport",
            "1194",
            "--ifconfig",
            &vs,
            &vc,
            "--secret",
            &key,
            "0",
        ]),
    );
    let vpn_client = openvpn(
        gw.netns(),
        "Initialization Sequence Completed",
        &own(&[
            "--remote",
            &server,
            "1194",
            "--nobind",
            "--ifconfig",
            &vc,
            &vs,
            "--secret",
            &key,
            "1",
            "--route-gateway",
            &vs,
            "--redirect-gateway",
            "def1",
        ]),
    );
    // The VPN's resolver, as the VPN's up script would write it into the gateway's resolv.conf:
    // a dnsmasq that listens only on the server's tunnel address and knows one outside name.
    let outside = std::net::Ipv4Addr::new(203, 0, 113, 77);
    let _resolver = Proc(
        std::process::Command::new("ip")
            .args(["netns", "exec", inet.netns().name(), "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                "--user=root",
                "--port=53",
            ])
            .arg(format!("--listen-address={vs}"))
            .arg(format!("--address=/vpn.example/{outside}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (scripts/install-deps.sh installs dnsmasq-base)"),
    );
    let resolv = tmp.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {vs}\n")).unwrap();
    let cfg = gateway::dns::DnsConfig {
        domains: s.dns_local_domains.clone(),
        local_server: None,
        original: "nameserver 10.96.0.10\n".into(),
        resolv_conf: resolv,
        dnssec: false,
        trust_anchor: None,
        // No cache: after the VPN dies, no answer may come from anywhere but the VPN.
        cache_size: 0,
    };
    let counts = std::sync::Arc::new(gateway::dns::DnsCounts::default());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forwarder = {
        let (stop, counts, ns) = (stop.clone(), counts.clone(), gw.netns().clone());
        let bind = SocketAddr::new(s.tunnel4.gateway.into(), 53);
        std::thread::spawn(move || {
            ns.run(move || gateway::dns::serve(bind, cfg, counts, &stop).unwrap())
                .unwrap()
        })
    };
    let _who = inet.serve_whoami(7003).unwrap();
    let t = client
        .netns()
        .run(|| gateway::client::init(&s, "client", &nat4, &[], ""))
        .unwrap()
        .unwrap();
    assert_eq!(t.addr4.unwrap().to_string(), "172.16.0.10/24");

    // Egress: the outside sees the VPN client's address.
    let to = SocketAddr::new(internet::HOST_V4.into(), 7003);
    assert_eq!(tcp_line(client.netns(), to).unwrap(), vc);
    // Names: through our forwarder, upstream to the VPN's resolver (the forwarder may still be
    // binding: ask until it answers).
    let dns = SocketAddr::new(s.tunnel4.gateway.into(), 53);
    let ask = |wait: Duration| {
        client
            .netns()
            .run(move || gateway::dnsquery::query_a_at("www.vpn.example", dns, wait))
            .unwrap()
    };
    let start = std::time::Instant::now();
    loop {
        let got = ask(Duration::from_secs(2));
        if got == Ok(Some(outside)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "www.vpn.example through the forwarder: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(counts.upstream.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // nat.conf's forward, from the far end of the VPN: its port 8080 reaches the client's 80.
    let _echo = client.serve_echo("client", &[80], &[]).unwrap();
    let fwd = SocketAddr::new(OVPN_CLIENT.into(), 8080);
    assert_eq!(tcp_line(inet.netns(), fwd).unwrap(), "client");

    // The VPN client dies (SIGKILL: no clean-up of its own): tun0 and its routes go with it.
    drop(vpn_client);
    let start = std::time::Instant::now();
    while gw
        .netns()
        .run(|| gateway::iproute::link("tun0").unwrap())
        .unwrap()
        .is_some()
    {
        assert!(start.elapsed() < Duration::from_secs(20), "tun0 stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cap = capture(inet.netns(), "ip or (ip6 and not ip6 multicast)");
    client
        .netns()
        .run(move || {
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..5 {
                let _ = u.send_to(b"leak?\n", to);
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300));
        })
        .unwrap();
    // The forwarder still answers, but nothing reaches the VPN's resolver any more.
    assert_ne!(ask(Duration::from_secs(3)), Ok(Some(outside)));
    // Anything still in flight has arrived by now (the lab is all in one kernel).
    std::thread::sleep(Duration::from_millis(300));
    let packets = cap.stop();
    // A leak is a packet that arrives in the internet from the cluster. The VPN server's own
    // UDP port is exempt (VPN_TRAFFIC_PORT): the server still sends to the dead client, whose
    // kernel answers port unreachable. What the internet sends itself does not count either.
    let vpn_port = format!("{server}.1194");
    let leaked: Vec<&String> = packets
        .iter()
        .filter(|l| l.contains(" In "))
        .filter(|l| {
            !(l.contains(&vpn_port)
                || l.contains(&format!("{} > {server}: ICMP", gw.ipv4)) && l.contains("udp port"))
        })
        .collect();
    assert_eq!(
        leaked,
        Vec::<&String>::new(),
        "all packets seen: {packets:#?}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    forwarder.join().unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    drop(lab);
}
