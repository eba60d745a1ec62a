//! DHCP on the tunnel and healing, on the real kernel: our client and the real udhcpc,
//! dhclient and dhcpcd get leases from the gateway sidecar; when the gateway Pod is replaced
//! (new Pod IP, new server with no leases) the client sidecar rebuilds the tunnel and keeps its
//! address.

use gateway::settings::{Raw, Settings};
use gateway::sidecar::{ClientInputs, ClientMetrics, GatewayState};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, rdata::A};
use lab_net::internet::{self, Internet};
use lab_net::{Lab, Pod};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn settings(env: Vec<(&'static str, String)>) -> Settings {
    let f = move |n: &str| env.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
    Settings::from_raw(&Raw::resolve(None, &f).unwrap()).unwrap()
}

/// A stand-in DNS server (cluster DNS, or the VPN's resolver in the internet) on UDP and TCP:
/// answers A queries for any name with `answer`.
fn dns_server(ns: &lab_net::Netns, bind: &str, answer: Arc<Mutex<Ipv4Addr>>) {
    let bind = bind.to_string();
    let (sock, tcp) = ns
        .run(move || {
            (
                UdpSocket::bind(&bind).unwrap(),
                std::net::TcpListener::bind(&bind).unwrap(),
            )
        })
        .unwrap();
    let reply = move |query: &[u8]| -> Option<Vec<u8>> {
        let q = Message::from_vec(query).ok()?;
        let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
        r.metadata.response_code = ResponseCode::NoError;
        for query in &q.queries {
            r.add_query(query.clone());
            let ip = *answer.lock().unwrap();
            r.answers
                .push(Record::from_rdata(query.name().clone(), 5, RData::A(A(ip))));
        }
        r.to_vec().ok()
    };
    let tcp_reply = reply.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            while c.read_exact(&mut len).is_ok() {
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if c.read_exact(&mut q).is_err() {
                    break;
                }
                let Some(r) = tcp_reply(&q) else { break };
                let mut out = (r.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&r);
                let _ = c.write_all(&out);
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if let Some(r) = reply(&buf[..n]) {
                let _ = sock.send_to(&r, from);
            }
        }
    });
}

/// A running gateway: init done, DHCP server on a thread.
struct Gateway {
    pod: Pod,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    state: GatewayState,
}

fn start_gateway(lab: &mut Lab, inet: &Internet, name: &str, s: &Settings) -> Gateway {
    let pod = lab.add_pod(name).unwrap();
    inet.connect_vpn(&pod, "tun0").unwrap();
    let state = pod
        .netns()
        .run(|| {
            gateway::gateway::init(s, &[]).unwrap();
            GatewayState::new(gateway::sidecar::dhcp_config(s, &[]).unwrap())
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (st, stop2, ns) = (state.clone(), stop.clone(), pod.netns().clone());
    let thread = std::thread::spawn(move || {
        ns.run(move || st.serve_dhcp(&stop2).unwrap()).unwrap();
    });
    let t = Instant::now();
    while !state.dhcp_up.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "DHCP server did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Gateway {
        pod,
        stop,
        thread: Some(thread),
        state,
    }
}

impl Gateway {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base_env(dns: &Pod) -> Vec<(&'static str, String)> {
    vec![
        ("GATEWAY_NAME", "gateway.vpn.svc.cluster.local".into()),
        ("K8S_DNS_IPS", dns.ipv4.to_string()),
        ("VPN_TRAFFIC_PORT", "1194".into()),
        ("DHCP_LEASE_TIME", "10m".into()),
    ]
}

#[test]
fn client_sidecar_heals_when_the_gateway_pod_is_replaced() {
    let mut lab = Lab::new("gw_heal").unwrap();
    let dns = lab.add_pod("dns").unwrap();
    let client = lab.add_pod("client").unwrap();
    let inet = lab.add_internet().unwrap();
    let s = settings(base_env(&dns));
    let mut gw1 = start_gateway(&mut lab, &inet, "gw1", &s);
    let answer = Arc::new(Mutex::new(gw1.pod.ipv4));
    dns_server(dns.netns(), "0.0.0.0:53", answer.clone());
    let _who = inet.serve_whoami(7002).unwrap();

    let inputs = ClientInputs {
        settings: s.clone(),
        hostname: "app-6d4cf56db6-abcde".into(),
        nat4: vec![],
        nat6: vec![],
        resolv_conf: String::new(),
    };
    // Client init: the gateway by name through the cluster DNS, the address by DHCP.
    let mut tunnel = client
        .netns()
        .run(|| gateway::client::init(&s, &inputs.hostname, &[], &[], ""))
        .unwrap()
        .unwrap();
    assert_eq!(tunnel.gateway_ip, std::net::IpAddr::V4(gw1.pod.ipv4));
    let addr = tunnel.addr4.unwrap();
    assert_eq!(addr.to_string(), "172.16.0.20/24");
    assert_eq!(gw1.state.leases.lock().unwrap().active(Instant::now()), 1);
    let egress = SocketAddr::new(internet::HOST_V4.into(), 7002);
    let ask = || {
        client
            .netns()
            .run(move || lab_net::client::tcp_request(egress))
            .unwrap()
    };
    assert_eq!(ask().unwrap(), internet::VPN_CLIENT_V4.to_string());

    // The lease is past T1 (half of DHCP_LEASE_TIME, 10 m here): the sidecar renews it at
    // once, by unicast to the gateway that granted it, and then not again until the new T1.
    let lease = tunnel.lease.as_mut().expect("a DHCP lease");
    assert_eq!(lease.lease_time, Duration::from_secs(600));
    lease.obtained = Instant::now()
        .checked_sub(lease.lease_time / 2 + Duration::from_secs(1))
        .unwrap();
    let acks = gw1.state.leases.lock().unwrap().counts.acks;
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = ClientMetrics::default();
    let sidecar = {
        let (stop, metrics, inputs, ns) = (
            stop.clone(),
            metrics.clone(),
            inputs.clone(),
            client.netns().clone(),
        );
        std::thread::spawn(move || {
            ns.run(move || gateway::sidecar::client_loop(&inputs, tunnel, &stop, &metrics))
                .unwrap()
        })
    };

    let t = Instant::now();
    while metrics.renewals.get() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "no renewal at T1");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(gw1.state.leases.lock().unwrap().counts.acks, acks + 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(metrics.renewals.get(), 1, "renewed again before the new T1");

    // The gateway Pod goes away; a new one comes up with another Pod IP and no leases.
    gw1.stop();
    inet.disconnect_vpn(&gw1.pod, "tun0").unwrap();
    lab.remove_pod(&gw1.pod).unwrap();
    let gw2 = start_gateway(&mut lab, &inet, "gw2", &s);
    assert_ne!(gw2.pod.ipv4, gw1.pod.ipv4);
    *answer.lock().unwrap() = gw2.pod.ipv4;
    let ready = Instant::now();
    while metrics.heals.get() == 0 && ready.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "tunnel rebuilt {:?} after the new gateway was ready",
        ready.elapsed()
    );
    let healed = loop {
        if let Ok(r) = ask() {
            break r;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "no heal within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "traffic flows again {:?} after the new gateway was ready",
        ready.elapsed()
    );
    assert_eq!(healed, internet::VPN_CLIENT_V4.to_string());
    assert_eq!(metrics.heals.get(), 1);
    // Same address, granted by a server that never gave it out (INIT-REBOOT honoured).
    let addrs = client
        .netns()
        .run(|| gateway::iproute::addresses("vxlan0").unwrap())
        .unwrap();
    assert!(addrs.contains(&addr), "{addrs:?}");
    assert_eq!(gw2.state.leases.lock().unwrap().active(Instant::now()), 1);
    stop.store(true, Ordering::SeqCst);
    sidecar.join().unwrap();
}

/// A client Pod with only the tunnel towards the gateway, for a real DHCP client to use.
fn bare_tunnel(client: &Pod, gw: &Pod) {
    let out = client
        .command("ip")
        .args([
            "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dev", "eth0", "dstport", "0",
            "remote",
        ])
        .arg(gw.ipv4.to_string())
        .status()
        .unwrap();
    assert!(out.success());
    assert!(
        client
            .command("ip")
            .args(["link", "set", "vxlan0", "up"])
            .status()
            .unwrap()
            .success()
    );
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a real DHCP client in the client Pod (hooks off: it configures nothing outside the Pod's
/// own interface and never writes resolv.conf) and returns the address the server bound.
///
/// With `no_neighbour_entry`, also that the gateway answered without adding a neighbour entry
/// for the client: the kernel's neighbour table is one for all namespaces (gc_thresh3, 1,024
/// by default), so a server that needs an entry per client stops answering once a thousand
/// clients (or other namespaces) have filled it — what the DHCP benchmark's later rounds hit.
/// Only for a client that, like udhcpc without a script, configures nothing (a configured
/// client resolves the gateway by ARP, which adds an entry on the gateway's side).
fn real_client_gets_a_lease(test: &str, tool: &str, args: &[&str], no_neighbour_entry: bool) {
    assert!(
        have(tool),
        "{tool} is not installed (scripts/install-deps.sh installs it)"
    );
    let mut lab = Lab::new(test).unwrap();
    let dns = lab.add_pod("dns").unwrap();
    let client = lab.add_pod("client").unwrap();
    let inet = lab.add_internet().unwrap();
    let s = settings(base_env(&dns));
    let gw = start_gateway(&mut lab, &inet, "gw", &s);
    bare_tunnel(&client, &gw.pod);
    let tmp = std::env::temp_dir().join(format!("gw-dhcp-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{tmp}", &tmp.display().to_string()))
        .collect();
    let out = client
        .command("timeout")
        .arg("20")
        .arg(tool)
        .args(&args)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let l = gw.state.leases.lock().unwrap();
    assert!(
        l.counts.acks >= 1,
        "{tool} got no ACK: {:?}\n{log}",
        l.counts
    );
    assert_eq!(l.active(Instant::now()), 1, "{log}");
    if no_neighbour_entry {
        let neigh = gw
            .pod
            .command("ip")
            .args(["-4", "neigh", "show", "dev", "vxlan0"])
            .output()
            .unwrap();
        let neigh = String::from_utf8_lossy(&neigh.stdout);
        assert!(
            neigh.trim().is_empty(),
            "the DHCP server left neighbour entries: {neigh}"
        );
    }
}

#[test]
fn udhcpc_gets_a_lease() {
    // -s /bin/true: no script, so nothing is configured and resolv.conf is never touched.
    real_client_gets_a_lease(
        "gw_udhcpc",
        "udhcpc",
        &[
            "-i",
            "vxlan0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-s",
            "/bin/true",
        ],
        true,
    );
}

#[test]
fn dhclient_gets_a_lease() {
    real_client_gets_a_lease(
        "gw_dhclient",
        "dhclient",
        &[
            "-1",
            "-v",
            "-sf",
            "/bin/true",
            "-lf",
            "{tmp}/leases",
            "-pf",
            "{tmp}/pid",
            "vxlan0",
        ],
        false,
    );
}

#[test]
fn dhcpcd_gets_a_lease() {
    real_client_gets_a_lease(
        "gw_dhcpcd",
        "dhcpcd",
        &[
            "-1",
            "-4",
            "-B",
            "-t",
            "15",
            "-c",
            "/bin/true",
            "--nohook",
            "resolv.conf",
            "-C",
            "*",
            "vxlan0",
        ],
        false,
    );
}

#[test]
fn dns_forwarder_splits_local_and_outside_names_and_follows_resolv_conf() {
    let mut lab = Lab::new("gw_dns").unwrap();
    let dns = lab.add_pod("dns").unwrap();
    let client = lab.add_pod("client").unwrap();
    let inet = lab.add_internet().unwrap();
    let s = settings(base_env(&dns));
    let gw = start_gateway(&mut lab, &inet, "gw", &s);
    let cluster = Ipv4Addr::new(10, 96, 0, 99);
    dns_server(dns.netns(), "0.0.0.0:53", Arc::new(Mutex::new(cluster)));
    // The VPN's resolvers, in the internet: reached only through the gateway's VPN link.
    let vpn_a = Ipv4Addr::new(203, 0, 113, 98);
    let vpn_b = Ipv4Addr::new(203, 0, 113, 97);
    dns_server(inet.netns(), "203.0.113.53:53", Arc::new(Mutex::new(vpn_a)));
    dns_server(inet.netns(), "203.0.113.10:53", Arc::new(Mutex::new(vpn_b)));
    let tmp = std::env::temp_dir().join(format!("gw-dns-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let resolv = tmp.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 203.0.113.53\n").unwrap();
    let cfg = gateway::dns::DnsConfig {
        domains: s.dns_local_domains.clone(),
        local_server: None,
        original: format!(
            "search default.svc.cluster.local\nnameserver {}\n",
            dns.ipv4
        ),
        resolv_conf: resolv.clone(),
        dnssec: false,
        trust_anchor: None,
        cache_size: 10_000,
    };
    let counts = Arc::new(gateway::dns::DnsCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (stop, counts, ns) = (stop.clone(), counts.clone(), gw.pod.netns().clone());
        let bind = SocketAddr::new(s.tunnel4.gateway.into(), 53);
        std::thread::spawn(move || {
            ns.run(move || gateway::dns::serve(bind, cfg, counts, &stop).unwrap())
                .unwrap()
        })
    };
    // This test's cluster DNS answers every name with `cluster`: name the gateway by address.
    let mut cs = s.clone();
    cs.gateway_name = gw.pod.ipv4.to_string();
    client
        .netns()
        .run(|| gateway::client::init(&cs, "app-0", &[], &[], ""))
        .unwrap()
        .unwrap();
    let at = SocketAddr::new(s.tunnel4.gateway.into(), 53);
    let ask = |name: &'static str| {
        client
            .netns()
            .run(move || gateway::dnsquery::query_a_at(name, at, Duration::from_secs(3)))
            .unwrap()
            .unwrap()
    };
    // Wait for the forwarder to listen.
    let t = Instant::now();
    while client
        .netns()
        .run(move || gateway::dnsquery::query_a_at("x.local", at, Duration::from_millis(200)))
        .unwrap()
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(ask("web.default.svc.cluster.local"), Some(cluster));
    assert_eq!(ask("example.com"), Some(vpn_a));
    // The real dig, through our forwarder.
    let dig = client
        .command("dig")
        .args([
            "+short",
            "+time=3",
            "+tries=1",
            "@172.16.0.1",
            "example.org",
            "A",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        vpn_a.to_string()
    );
    // Over TCP: the client's connection to us, and ours upstream.
    for name in ["example.org", "web.default.svc.cluster.local"] {
        let dig = client
            .command("dig")
            .args([
                "+short",
                "+tcp",
                "+time=3",
                "+tries=1",
                "@172.16.0.1",
                name,
                "A",
            ])
            .output()
            .unwrap();
        let want = if name.ends_with(".local") {
            cluster
        } else {
            vpn_a
        };
        assert_eq!(
            String::from_utf8_lossy(&dig.stdout).trim(),
            want.to_string(),
            "dig +tcp {name}: {}",
            String::from_utf8_lossy(&dig.stderr)
        );
    }
    // Asked again in another spelling: answered from the cache, in the asker's spelling.
    let hits = counts.cache_hits.load(Ordering::Relaxed);
    let dig = client
        .command("dig")
        .args([
            "+noall",
            "+answer",
            "+time=3",
            "+tries=1",
            "@172.16.0.1",
            "ExAmple.ORG",
            "A",
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&dig.stdout);
    assert!(
        answer.starts_with("ExAmple.ORG.") && answer.trim_end().ends_with(&vpn_a.to_string()),
        "{answer}"
    );
    assert_eq!(counts.cache_hits.load(Ordering::Relaxed), hits + 1);
    // The VPN rewrites resolv.conf: outside names follow, cluster names do not move.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&resolv, "nameserver 203.0.113.10\n").unwrap();
    let t = Instant::now();
    while ask("example.com") != Some(vpn_b) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "resolv.conf change not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ask("web.default.svc.cluster.local"), Some(cluster));
    assert!(counts.reloads.load(Ordering::Relaxed) >= 1);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A child process killed (and reaped) on drop, even when the test fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/install-deps.sh installs ldnsutils)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// DNSSEC with a zone the test signs itself (ldns-keygen, ldns-signzone) and serves
/// authoritatively from the lab's internet (nsd), the zone's own key as the trust anchor (no
/// chain to the root: DNSSEC_TRUST_ANCHOR names a file with that DNSKEY). One record is
/// changed after signing. Validation on: the good name comes back with AD, the tampered one
/// is SERVFAIL; validation off: both come back, as nsd serves them.
#[test]
fn dnssec_validates_a_self_signed_zone_and_fails_a_tampered_answer() {
    let mut lab = Lab::new("gw_sec").unwrap();
    let pod = lab.add_pod("fwd").unwrap();
    let inet = lab.add_internet().unwrap();
    let tmp = std::env::temp_dir().join(format!("gw-dnssec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("lab.test.zone"),
        "$ORIGIN lab.test.\n$TTL 300\n\
         @ IN SOA ns.lab.test. admin.lab.test. 1 3600 600 86400 60\n\
         @ IN NS ns.lab.test.\n\
         ns IN A 203.0.113.53\n\
         good IN A 198.51.100.1\n\
         bogus IN A 198.51.100.2\n",
    )
    .unwrap();
    let key = run(std::process::Command::new("ldns-keygen")
        .current_dir(&tmp)
        .args(["-a", "ECDSAP256SHA256", "-k", "lab.test."]));
    run(std::process::Command::new("ldns-signzone")
        .current_dir(&tmp)
        .args(["lab.test.zone", &key]));
    let signed = tmp.join("lab.test.zone.signed");
    // Tamper: bogus.lab.test's address changes, its signature stays.
    let text = std::fs::read_to_string(&signed).unwrap();
    let tampered = text.replace("\tA\t198.51.100.2", "\tA\t198.51.100.66");
    assert_ne!(
        text, tampered,
        "the signed zone has bogus.lab.test's A record"
    );
    std::fs::write(&signed, tampered).unwrap();
    // The trust anchor: the zone's own DNSKEY, as ldns-keygen wrote it.
    let anchor = tmp.join("anchor.key");
    std::fs::copy(tmp.join(format!("{key}.key")), &anchor).unwrap();
    let d = tmp.display();
    std::fs::write(
        tmp.join("nsd.conf"),
        format!(
            "server:\n  ip-address: 203.0.113.53\n  port: 53\n  zonesdir: \"{d}\"\n  \
             pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             xfrdir: \"{d}\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  username: \"\"\n  chroot: \"\"\n  \
             logfile: \"{d}/nsd.log\"\n  server-count: 1\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: lab.test\n  zonefile: \"{d}/lab.test.zone.signed\"\n"
        ),
    )
    .unwrap();
    let _nsd = Child(
        std::process::Command::new("ip")
            .args(["netns", "exec", inet.netns().name(), "nsd", "-d", "-c"])
            .arg(tmp.join("nsd.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nsd (scripts/install-deps.sh installs it)"),
    );
    let resolv = tmp.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 203.0.113.53\n").unwrap();
    // Two forwarders in the pod: validating on the pod's address, not validating on loopback.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(gateway::dns::DnsCounts::default());
    let forwarders: Vec<_> = [
        (SocketAddr::new(pod.ipv4.into(), 53), true),
        (SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53), false),
    ]
    .into_iter()
    .map(|(bind, dnssec)| {
        let cfg = gateway::dns::DnsConfig {
            domains: vec!["local".into()],
            local_server: None,
            original: "nameserver 10.96.0.10\n".into(),
            resolv_conf: resolv.clone(),
            dnssec,
            trust_anchor: Some(anchor.clone()),
            cache_size: 100,
        };
        let (stop, ns) = (stop.clone(), pod.netns().clone());
        let counts = if dnssec {
            counts.clone()
        } else {
            Arc::default()
        };
        std::thread::spawn(move || {
            ns.run(move || gateway::dns::serve(bind, cfg, counts, &stop).unwrap())
                .unwrap()
        })
    })
    .collect();
    let dig = |server: String, name: &str| -> String {
        let out = pod
            .command("dig")
            .args([
                "+time=3",
                "+tries=1",
                "+dnssec",
                "+noall",
                "+comments",
                "+answer",
            ])
            .arg(format!("@{server}"))
            .args([name, "A"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (on, off) = (pod.ipv4.to_string(), "127.0.0.1".to_string());
    // Wait until nsd and both forwarders answer.
    let t = Instant::now();
    while !(dig(on.clone(), "good.lab.test").contains("198.51.100.1")
        && dig(off.clone(), "good.lab.test").contains("198.51.100.1"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no answer for good.lab.test: {} / {} (nsd log: {})",
            dig(on.clone(), "good.lab.test"),
            dig(off.clone(), "good.lab.test"),
            std::fs::read_to_string(tmp.join("nsd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let flags = |out: &str| {
        out.lines()
            .find(|l| l.starts_with(";; flags:"))
            .unwrap_or_default()
            .to_string()
    };
    let good = dig(on.clone(), "good.lab.test");
    assert!(good.contains("status: NOERROR"), "{good}");
    assert!(flags(&good).contains(" ad"), "validated: AD set: {good}");
    let bogus = dig(on.clone(), "bogus.lab.test");
    assert!(bogus.contains("status: SERVFAIL"), "tampered: {bogus}");
    assert!(!bogus.contains("198.51.100.66"), "{bogus}");
    assert!(counts.bogus.load(Ordering::Relaxed) >= 1);
    assert!(counts.secure.load(Ordering::Relaxed) >= 1);
    // Validation off: both as served, no AD.
    let good = dig(off.clone(), "good.lab.test");
    assert!(!flags(&good).contains(" ad"), "{good}");
    let bogus = dig(off.clone(), "bogus.lab.test");
    assert!(bogus.contains("status: NOERROR"), "{bogus}");
    assert!(bogus.contains("198.51.100.66"), "{bogus}");
    stop.store(true, Ordering::SeqCst);
    for f in forwarders {
        f.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
