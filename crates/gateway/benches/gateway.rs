//! The egress gateway beside its peers, each comparison in one run on the real kernel (root:
//! it builds throwaway lab namespaces and removes them; nothing leaves the machine).
//!
//! ```sh
//! cargo bench -p gateway --bench gateway                       # all four parts
//! cargo bench -p gateway --bench gateway -- throughput dns     # some of them
//! GW_BENCH_SECONDS=10 GW_BENCH_ROUNDS=3 GW_BENCH_LEASES=2000 cargo bench -p gateway --bench gateway
//! ```
//!
//! - `throughput`: `iperf3` (TCP, one stream) from a client Pod through the tunnel, the gateway
//!   and its VPN link to the internet namespace, against the same from a plain Pod straight out
//!   over the node's veth uplink (no tunnel).
//! - `dns`: `dnsperf` from the client Pod through the tunnel against our forwarder and against
//!   dnsmasq configured as pod-gateway configures it (same upstream: a dnsmasq in the internet
//!   that answers `*.bench.example`), with a query file of many names and one of few names.
//! - `dhcp`: leases per second granted by our server and by dnsmasq (the same range), to a
//!   load generator in the client Pod that keeps 16 DISCOVER/REQUEST exchanges in flight.
//! - `heal`: the gateway Pod is replaced (new Pod, new IP, no leases); the cluster DNS (a dnsmasq
//!   standing in for it) names the new Pod once its DHCP server is up ("Ready"); how long until
//!   the client's traffic flows again, and the client sidecar's rebuild steps.

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use gateway::natconf::{self, Plan};
use gateway::settings::{Raw, Settings};
use gateway::sidecar::{ClientInputs, ClientMetrics, GatewayState};
use lab_net::internet::{self, Internet};
use lab_net::{Lab, Pod};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(vars: Vec<(&'static str, String)>) -> Settings {
    let f = move |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
    Settings::from_raw(&Raw::resolve(None, &f).expect("settings")).expect("settings")
}

/// A process the benchmark started; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program args…` in network namespace `ns`, output discarded, killed on drop.
fn spawn_in(ns: &str, program: &str, args: &[String]) -> Proc {
    Proc(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}")),
    )
}

/// dnsmasq's options that make it read nothing of this machine's configuration.
fn dnsmasq_base() -> Vec<String> {
    [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gw-bench-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A gateway Pod with init done and its VPN stand-in linked to the internet.
fn gateway_pod(lab: &mut Lab, inet: &Internet, name: &str, s: &Settings) -> Pod {
    let pod = lab.add_pod(name).unwrap();
    inet.connect_vpn(&pod, "tun0").unwrap();
    pod.netns()
        .run(|| gateway::gateway::init(s, &[]).unwrap())
        .unwrap();
    pod
}

/// A running DHCP server of ours (the gateway sidecar's), stopped on drop.
struct OurDhcp {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OurDhcp {
    fn start(pod: &Pod, s: &Settings) -> OurDhcp {
        let state = pod
            .netns()
            .run(|| GatewayState::new(gateway::sidecar::dhcp_config(s, &[]).unwrap()))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2, ns) = (state.clone(), stop.clone(), pod.netns().clone());
        let thread = std::thread::spawn(move || {
            ns.run(move || st.serve_dhcp(&stop2).unwrap()).unwrap();
        });
        while !state.dhcp_up.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        OurDhcp {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for OurDhcp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// throughput

/// iperf3 from `pod` to the internet's host; received bits per second.
fn iperf3(pod: &Pod, seconds: u64) -> f64 {
    for _ in 0..50 {
        let out = pod
            .command("iperf3")
            .args([
                "-c",
                &internet::HOST_V4.to_string(),
                "-p",
                "5201",
                "-J",
                "-t",
            ])
            .arg(seconds.to_string())
            .output()
            .expect("iperf3 (Debian package iperf3)");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps;
        }
        // The server is not listening yet, or still busy with the last test.
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("iperf3 from {} never ran", pod.netns().name());
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A shell line run in network namespace `ns`; its standard output.
fn sh_in(ns: &str, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What decides the tunnel's cost, printed beside the numbers: vxlan0's MTU and offloads
/// (both ends), the underlay's, and the gateway's MSS clamp.
fn tunnel_settings(client: &Pod, gw: &Pod) {
    let features = "ethtool -k vxlan0 | grep -E '^(rx-checksumming|tx-checksumming|generic-segmentation-offload|generic-receive-offload|tx-udp_tnl-segmentation|rx-gro-list|rx-udp-gro-forwarding):' | tr -s ' \\n' ' '";
    for (who, pod) in [("client", client), ("gateway", gw)] {
        let ns = pod.netns().name();
        let mtu = sh_in(
            ns,
            "cat /sys/class/net/vxlan0/mtu /sys/class/net/eth0/mtu | tr '\\n' ' '",
        );
        println!(
            "{who}: vxlan0/eth0 MTU {}| vxlan0 {}| eth0 GRO {}",
            mtu,
            sh_in(ns, features).trim(),
            sh_in(
                ns,
                "ethtool -k eth0 | grep '^generic-receive-offload:' | cut -d: -f2"
            )
            .trim()
        );
    }
    let clamp = sh_in(
        gw.netns().name(),
        "nft list ruleset | grep -o 'tcp option maxseg size set [a-z ]*' | sort -u | tr '\\n' ';'",
    );
    println!("gateway MSS clamp: {}", clamp.trim());
}

/// `ethtool -K DEV gro on` on every veth of namespace `ns` (veth GRO is off by default).
fn gro_on(ns: &str) {
    sh_in(
        ns,
        "ip -o link show type veth | cut -d: -f2 | cut -d@ -f1 | while read d; do ethtool -K $d gro on >/dev/null; done",
    );
}

/// Tunnel against direct, `rounds` pairs, the order alternating (tunnel first in odd pairs,
/// direct first in even ones) so that a drift of the machine's load does not favour one;
/// prints each pair's ratio and, at the end, the ratio of the medians. With GW_BENCH_GRO=1
/// every veth of the lab gets GRO on first (both paths alike).
fn throughput(seconds: u64, rounds: u64) {
    let mut lab = Lab::new("gwb_tput").unwrap();
    let inet = lab.add_internet().unwrap();
    let plain = lab.add_pod("plain").unwrap();
    let client = lab.add_pod("client").unwrap();
    let s = settings(vec![("VPN_BLOCK_OTHER_TRAFFIC", "true".into())]);
    let gw = gateway_pod(&mut lab, &inet, "gw", &s);
    let mut s = s;
    s.gateway_name = gw.ipv4.to_string();
    let nat4 = natconf::parse("nat.conf", "client 10\n", Plan::V4(&s.tunnel4)).unwrap();
    client
        .netns()
        .run(|| gateway::client::init(&s, "client", &nat4, &[], "").unwrap())
        .unwrap();
    let gro = env("GW_BENCH_GRO", 0) == 1;
    if gro {
        for ns in [
            lab.node(),
            plain.netns(),
            client.netns(),
            gw.netns(),
            inet.netns(),
        ] {
            gro_on(ns.name());
        }
    }
    let _server = spawn_in(
        inet.netns().name(),
        "iperf3",
        &["-s", "-B", &internet::HOST_V4.to_string(), "-p", "5201"].map(String::from),
    );
    println!(
        "\n## throughput: iperf3 -c {} -t {seconds} (TCP, one stream), {rounds} pairs, order alternating{}",
        internet::HOST_V4,
        if gro { ", GRO on every veth" } else { "" }
    );
    tunnel_settings(&client, &gw);
    let (mut tunnels, mut directs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (tunnel, direct) = if round % 2 == 1 {
            let t = iperf3(&client, seconds);
            (t, iperf3(&plain, seconds))
        } else {
            let d = iperf3(&plain, seconds);
            (iperf3(&client, seconds), d)
        };
        println!(
            "pair {round} ({}): tunnel {:>6.2} Gbit/s   direct veth {:>6.2} Gbit/s   tunnel/direct {:>5.1} %",
            if round % 2 == 1 {
                "tunnel first"
            } else {
                "direct first"
            },
            tunnel / 1e9,
            direct / 1e9,
            100.0 * tunnel / direct
        );
        tunnels.push(tunnel);
        directs.push(direct);
    }
    let ratios: Vec<f64> = tunnels.iter().zip(&directs).map(|(t, d)| t / d).collect();
    println!(
        "throughput: median tunnel {:.2} Gbit/s, median direct {:.2} Gbit/s, ratio of the medians {:.1} %, median of the pair ratios {:.1} % (pairs {:.0}-{:.0} %)",
        median(&tunnels) / 1e9,
        median(&directs) / 1e9,
        100.0 * median(&tunnels) / median(&directs),
        100.0 * median(&ratios),
        100.0 * ratios.iter().copied().fold(f64::INFINITY, f64::min),
        100.0 * ratios.iter().copied().fold(0.0, f64::max),
    );
}

// ---------------------------------------------------------------------------------------------
// dns

fn dns(seconds: u64, rounds: u64) {
    let mut lab = Lab::new("gwb_dns").unwrap();
    let inet = lab.add_internet().unwrap();
    let client = lab.add_pod("client").unwrap();
    let s = settings(vec![]);
    let gw = gateway_pod(&mut lab, &inet, "gw", &s);
    let mut s = s;
    s.gateway_name = gw.ipv4.to_string();
    let nat4 = natconf::parse("nat.conf", "client 10\n", Plan::V4(&s.tunnel4)).unwrap();
    client
        .netns()
        .run(|| gateway::client::init(&s, "client", &nat4, &[], "").unwrap())
        .unwrap();
    // The VPN's resolver, in the internet: answers every *.bench.example name, TTL 300 s.
    let upstream = Ipv4Addr::new(203, 0, 113, 53);
    let mut args = dnsmasq_base();
    args.extend([
        format!("--listen-address={upstream}"),
        "--port=53".into(),
        "--address=/bench.example/203.0.113.10".into(),
        "--local-ttl=300".into(),
    ]);
    let _upstream = spawn_in(inet.netns().name(), "dnsmasq", &args);
    let dir = temp_dir("dns");
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {upstream}\n")).unwrap();
    let tunnel_ip = s.tunnel4.gateway;
    // Ours, as the gateway sidecar runs it.
    let cfg = gateway::dns::DnsConfig {
        domains: s.dns_local_domains.clone(),
        local_server: None,
        original: "nameserver 10.96.0.10\n".into(),
        resolv_conf: resolv.clone(),
        dnssec: false,
        trust_anchor: None,
        cache_size: 10_000,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ours = SocketAddr::new(tunnel_ip.into(), 53);
    let server = {
        let (stop, ns) = (stop.clone(), gw.netns().clone());
        std::thread::spawn(move || {
            ns.run(move || gateway::dns::serve(ours, cfg, Arc::default(), &stop).unwrap())
                .unwrap()
        })
    };
    // dnsmasq as pod-gateway's gateway sidecar configures it: the DNS_LOCAL_CIDRS domain to the
    // cluster DNS, everything else to the resolv.conf's upstream, its default cache (150).
    let theirs = SocketAddr::new(tunnel_ip.into(), 5353);
    let mut args = dnsmasq_base();
    args.extend([
        format!("--listen-address={tunnel_ip}"),
        format!("--port={}", theirs.port()),
        "--server=/local/10.96.0.10".into(),
        format!("--server={upstream}"),
    ]);
    let _dnsmasq = spawn_in(gw.netns().name(), "dnsmasq", &args);
    // The same with a cache as large as ours (10,000), so a cache's size is not all we compare.
    let big = SocketAddr::new(tunnel_ip.into(), 5354);
    for a in args.iter_mut().filter(|a| a.starts_with("--port=")) {
        *a = format!("--port={}", big.port());
    }
    args.push("--cache-size=10000".into());
    let _dnsmasq_big = spawn_in(gw.netns().name(), "dnsmasq", &args);
    // All answer before the clock starts.
    for at in [ours, theirs, big] {
        let t = Instant::now();
        while client
            .netns()
            .run(move || {
                gateway::dnsquery::query_a_at("warm.bench.example", at, Duration::from_millis(300))
            })
            .unwrap()
            != Ok(Some(internet::HOST_V4))
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{at} does not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let files: Vec<(usize, PathBuf)> = [1000usize, 20]
        .iter()
        .map(|&n| {
            let f = dir.join(format!("queries-{n}"));
            let text: String = (0..n).map(|i| format!("n{i}.bench.example A\n")).collect();
            std::fs::write(&f, text).unwrap();
            (n, f)
        })
        .collect();
    println!(
        "\n## dns: dnsperf {} -l {seconds}, from the client Pod through the tunnel",
        lab_net::bench::DNSPERF_OPTIONS.join(" ")
    );
    for round in 1..=rounds {
        for (n, f) in &files {
            for (who, at) in [("ours", ours), ("dnsmasq", theirs), ("dnsmasq-10k", big)] {
                let p = lab_net::bench::dnsperf(client.command("dnsperf"), at, f, seconds)
                    .expect("dnsperf (Debian package dnsperf)");
                println!(
                    "round {round}: {n:>4} names  {who:<11} {:>8.0} queries/s  avg latency {:>6.3} ms  lost {}",
                    p.qps, p.avg_latency_ms, p.lost
                );
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// dhcp

/// One client's exchange in the load generator.
struct Exchange {
    client_id: Vec<u8>,
    sent: Instant,
    request: Option<Message>,
    last: Message,
}

/// What one load generator run saw.
struct Leases {
    per_second: f64,
    resent: u64,
    /// Exchanges given up after 3 s without any progress at all.
    unanswered: usize,
}

/// Takes `n` leases on vxlan0 (one hardware address, a distinct client id each, `window`
/// exchanges in flight), until all are granted or nothing has moved for 3 s; the rate counts
/// the leases granted up to the last ACK.
fn take_leases(tag: &str, n: usize, window: usize) -> Leases {
    use socket2::{Domain, Protocol, Socket, Type};
    let mac: Vec<u8> = gateway::iproute::link("vxlan0")
        .unwrap()
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let send = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    send.set_reuse_address(true).unwrap();
    send.set_broadcast(true).unwrap();
    send.bind_device(Some(b"vxlan0")).unwrap();
    send.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .unwrap();
    let send: UdpSocket = send.into();
    // The servers answer by unicast to the offered address: only a packet socket sees that.
    let recv = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0x0008))).unwrap();
    recv.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let message = |kind, xid, cid: &[u8]| {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(cid.to_vec()));
        m
    };
    let mut flight: HashMap<u32, Exchange> = HashMap::new();
    let (mut next, mut done, mut resent) = (0usize, 0usize, 0u64);
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut last_ack = start;
    while done < n && last_ack.elapsed() < Duration::from_secs(3) {
        while flight.len() < window && next < n {
            let xid = 0x4000_0000 | next as u32;
            let mut cid = vec![0u8];
            cid.extend_from_slice(format!("{tag}-{next}").as_bytes());
            let m = message(MessageType::Discover, xid, &cid);
            send.send_to(&m.to_vec().unwrap(), to).unwrap();
            flight.insert(
                xid,
                Exchange {
                    client_id: cid,
                    sent: Instant::now(),
                    request: None,
                    last: m,
                },
            );
            next += 1;
        }
        let got = {
            use std::io::Read;
            (&recv).read(&mut buf)
        };
        if let Ok(len) = got
            && let Some(payload) = gateway::dhcp::client::udp_payload(&buf[..len], 68)
            && let Ok(r) = Message::decode(&mut dhcproto::Decoder::new(payload))
            && r.opcode() == Opcode::BootReply
            && let Some(x) = flight.get_mut(&r.xid())
        {
            match r.opts().msg_type() {
                Some(MessageType::Offer) if x.request.is_none() => {
                    let mut q = message(MessageType::Request, r.xid(), &x.client_id);
                    if let Some(DhcpOption::ServerIdentifier(sid)) =
                        r.opts().get(OptionCode::ServerIdentifier)
                    {
                        q.opts_mut().insert(DhcpOption::ServerIdentifier(*sid));
                    }
                    q.opts_mut()
                        .insert(DhcpOption::RequestedIpAddress(r.yiaddr()));
                    send.send_to(&q.to_vec().unwrap(), to).unwrap();
                    x.sent = Instant::now();
                    x.request = Some(q.clone());
                    x.last = q;
                }
                Some(MessageType::Ack) if x.request.is_some() => {
                    flight.remove(&r.xid());
                    done += 1;
                    last_ack = Instant::now();
                }
                Some(MessageType::Nak) => panic!("NAK for exchange {:#x}", r.xid()),
                _ => {}
            }
        }
        for x in flight.values_mut() {
            if x.sent.elapsed() > Duration::from_secs(1) {
                send.send_to(&x.last.to_vec().unwrap(), to).unwrap();
                x.sent = Instant::now();
                resent += 1;
            }
        }
    }
    Leases {
        per_second: done as f64 / (last_ack - start).as_secs_f64().max(1e-6),
        resent,
        unanswered: n - done,
    }
}

fn dhcp(leases: usize, rounds: u64) {
    let mut lab = Lab::new("gwb_dhcp").unwrap();
    let inet = lab.add_internet().unwrap();
    let client = lab.add_pod("client").unwrap();
    // A /16, so that thousands of leases fit.
    let s = settings(vec![
        ("VXLAN_IP_NETWORK", "172.16.0.0/16".into()),
        ("DHCP_LEASE_TIME", "10m".into()),
    ]);
    let gw = gateway_pod(&mut lab, &inet, "gw", &s);
    let script = format!(
        "link add vxlan0 type vxlan id {} remote {} dev eth0 dstport {}\nlink set vxlan0 up\n",
        s.vxlan_id, gw.ipv4, s.vxlan_port
    );
    let mut ip = client
        .command("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        ip.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    assert!(ip.wait().unwrap().success());
    let dir = temp_dir("dhcp");
    let first = s.tunnel4.first_dynamic;
    let last = s.tunnel4.last_dynamic;
    println!(
        "\n## dhcp: {leases} leases (DISCOVER, OFFER, REQUEST, ACK), 16 in flight, range {first}-{last}"
    );
    for round in 1..=rounds {
        let ours = {
            let _server = OurDhcp::start(&gw, &s);
            client
                .netns()
                .run(|| take_leases(&format!("ours-{round}"), leases, 16))
                .unwrap()
        };
        // dnsmasq as pod-gateway runs it, plus --no-ping (which only spares dnsmasq a wait) and a
        // lease limit above the benchmark's.
        let leasefile = dir.join(format!("leases-{round}"));
        let mut args = dnsmasq_base();
        args.extend([
            "--port=0".into(),
            "--interface=vxlan0".into(),
            format!(
                "--dhcp-range={first},{last},{},10m",
                s.tunnel4.net.netmask()
            ),
            format!("--dhcp-option=option:router,{}", s.tunnel4.gateway),
            format!("--dhcp-option=option:dns-server,{}", s.tunnel4.gateway),
            format!("--dhcp-leasefile={}", leasefile.display()),
            "--dhcp-authoritative".into(),
            "--no-ping".into(),
            // Its default stops at 1,000 leases.
            "--dhcp-lease-max=100000".into(),
        ]);
        let theirs = {
            let _dnsmasq = spawn_in(gw.netns().name(), "dnsmasq", &args);
            std::thread::sleep(Duration::from_millis(500));
            client
                .netns()
                .run(|| take_leases(&format!("dnsmasq-{round}"), leases, 16))
                .unwrap()
        };
        println!(
            "round {round}: ours {:>6.0} leases/s ({} resent, {} unanswered)   dnsmasq {:>6.0} leases/s ({} resent, {} unanswered)",
            ours.per_second,
            ours.resent,
            ours.unanswered,
            theirs.per_second,
            theirs.resent,
            theirs.unanswered
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// heal

/// One who-am-I exchange from the current namespace on a fresh TCP connection, 50 ms for each
/// step (a SYN lost in a broken tunnel is given up, not retransmitted a second later).
fn whoami(to: SocketAddr) -> Option<String> {
    lab_net::client::tcp_request_within(to, Duration::from_millis(50)).ok()
}

fn heal(rounds: u64) {
    let mut lab = Lab::new("gwb_heal").unwrap();
    let inet = lab.add_internet().unwrap();
    let dns = lab.add_pod("dns").unwrap();
    let client = lab.add_pod("client").unwrap();
    let name = "vpn-gateway.default.svc.cluster.local";
    let s = settings(vec![
        ("GATEWAY_NAME", name.into()),
        ("K8S_DNS_IPS", dns.ipv4.to_string()),
        ("DHCP_LEASE_TIME", "10m".into()),
    ]);
    // The cluster DNS: a dnsmasq that answers the gateway's name from a hosts file, re-read on
    // SIGHUP (answers carry TTL 0, as a headless Service's do in practice).
    let dir = temp_dir("heal");
    let hosts = dir.join("hosts");
    let mut gw = gateway_pod(&mut lab, &inet, "gw0", &s);
    let mut server = OurDhcp::start(&gw, &s);
    std::fs::write(&hosts, format!("{} {name}\n", gw.ipv4)).unwrap();
    let mut args = dnsmasq_base();
    args.extend([
        format!("--listen-address={}", dns.ipv4),
        "--port=53".into(),
        format!("--addn-hosts={}", hosts.display()),
        "--local=/cluster.local/".into(),
    ]);
    let cluster_dns = spawn_in(dns.netns().name(), "dnsmasq", &args);
    let inputs = ClientInputs {
        settings: s.clone(),
        hostname: "app-0".into(),
        nat4: vec![],
        nat6: vec![],
        resolv_conf: String::new(),
    };
    let t = Instant::now();
    let tunnel = loop {
        match client
            .netns()
            .run(|| gateway::client::init(&s, "app-0", &[], &[], ""))
            .unwrap()
        {
            Ok(t) => break t,
            Err(e) if t.elapsed() > Duration::from_secs(20) => panic!("client init: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _who = inet.serve_whoami(7004).unwrap();
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
    let to = SocketAddr::new(internet::HOST_V4.into(), 7004);
    let vpn = internet::VPN_CLIENT_V4.to_string();
    let t = Instant::now();
    while client.netns().run(move || whoami(to)).unwrap().as_ref() != Some(&vpn) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no traffic before any restart"
        );
    }
    println!(
        "\n## heal: gateway Pod replaced; CLIENT_PROBE_INTERVAL {:?}, CONNECTION_RETRY_COUNT {}",
        s.probe_interval, s.connection_retry_count
    );
    let mut took = Vec::new();
    for round in 1..=rounds {
        // The old gateway goes (its DHCP server, its VPN link, its Pod), a new one comes up.
        drop(server);
        inet.disconnect_vpn(&gw, "tun0").unwrap();
        lab.remove_pod(&gw).unwrap();
        let heals = metrics.heals.get();
        let new = gateway_pod(&mut lab, &inet, &format!("gw{round}"), &s);
        assert_ne!(new.ipv4, gw.ipv4);
        gw = new;
        server = OurDhcp::start(&gw, &s);
        // Ready: the cluster DNS names the new Pod.
        std::fs::write(&hosts, format!("{} {name}\n", gw.ipv4)).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &cluster_dns.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let ready = Instant::now();
        while client.netns().run(move || whoami(to)).unwrap().as_ref() != Some(&vpn) {
            assert!(ready.elapsed() < Duration::from_secs(60), "no heal in 60 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        let flowing = ready.elapsed();
        while metrics.heals.get() == heals {
            std::thread::sleep(Duration::from_millis(2));
        }
        took.push(flowing);
        println!(
            "round {round}: traffic flows again {:>4} ms after Ready",
            flowing.as_millis()
        );
    }
    took.sort();
    println!(
        "heal: median {} ms, max {} ms over {} rounds",
        took[took.len() / 2].as_millis(),
        took[took.len() - 1].as_millis(),
        took.len()
    );
    stop.store(true, Ordering::SeqCst);
    let _ = sidecar.join();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gateway::sidecar=info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // `cargo bench` passes `--bench`; the rest picks the parts.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| picked.is_empty() || picked.iter().any(|a| a == p);
    let seconds = env("GW_BENCH_SECONDS", 5);
    let rounds = env("GW_BENCH_ROUNDS", 3);
    if want("throughput") {
        throughput(seconds, rounds);
    }
    if want("dns") {
        dns(seconds, rounds);
    }
    if want("dhcp") {
        dhcp(env("GW_BENCH_LEASES", 2000) as usize, rounds);
    }
    if want("heal") {
        heal(env("GW_BENCH_HEAL_ROUNDS", 10));
    }
}
