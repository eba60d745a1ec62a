//! The gateway behind a real VPN: Debian's `openvpn` as the server in the lab's internet
//! namespace and as the client in the gateway Pod (a real tun device, UDP 1194, a static key),
//! the kill switch on from the start. A client Pod's traffic leaves through the VPN (the outside
//! sees the VPN address); when the VPN client dies, a capture of the whole internet sees nothing
//! from the cluster.

use gateway::settings::{Raw, Settings};
use lab_net::Lab;
use lab_net::internet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The VPN's point-to-point addresses (outside the kill switch's VPN_LOCAL_CIDRS).
const VPN_SERVER: &str = "100.64.0.1";
const VPN_CLIENT: &str = "100.64.0.2";

/// A process this test started; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts openvpn in namespace `ns` with `args` and waits (30 s at most) until it logs `ready`.
fn openvpn(ns: &str, ready: &str, args: &[&str]) -> Proc {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "openvpn"])
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
        .stderr(Stdio::null())
        .spawn()
        .expect("openvpn (scripts/install-deps.sh installs it)");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let proc = Proc(child);
    // A thread reads (and keeps draining) its log, so it never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return proc,
            Ok(line) => log.push(line),
            Err(_) => break,
        }
    }
    panic!("openvpn in {ns} did not log {ready:?}:\n{}", log.join("\n"));
}

fn capture_lines(ns: &str) -> (Proc, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "tcpdump", "-i", "any", "-n", "-l", "-p"])
        .arg("ip or (ip6 and not ip6 multicast)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/install-deps.sh installs it)");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "tcpdump did not start");
    }
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines = std::thread::spawn(move || out.lines().map_while(Result::ok).collect());
    (Proc(child), lines)
}

#[test]
fn client_traffic_leaves_through_openvpn_and_nothing_when_it_dies() {
    let mut lab = Lab::new("gw_ovpn").unwrap();
    let gw = lab.add_pod("gw").unwrap();
    let client = lab.add_pod("client").unwrap();
    let inet = lab.add_internet().unwrap();
    let dir = std::env::temp_dir().join(format!("gw-ovpn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("static.key");
    let st = Command::new("openvpn")
        .args(["--genkey", "secret"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let key = key.display().to_string();

    // The gateway Pod as deployed: init (kill switch on) before the VPN container is up.
    let env = [
        ("GATEWAY_NAME", gw.ipv4.to_string()),
        ("VPN_INTERFACE", "tun0".to_string()),
        ("VPN_BLOCK_OTHER_TRAFFIC", "true".to_string()),
        ("VPN_TRAFFIC_PORT", "1194".to_string()),
    ];
    let lookup = move |n: &str| env.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
    let s = Settings::from_raw(&Raw::resolve(None, &lookup).unwrap()).unwrap();
    gw.netns()
        .run(|| gateway::gateway::init(&s, &[]).unwrap())
        .unwrap();

    let server_addr = internet::UPLINK_INET_V4.to_string();
    let _server = openvpn(
        inet.netns().name(),
        "UDPv4 link local",
        &[
            "--local",
            &server_addr,
            "--lport",
            "1194",
            "--ifconfig",
            VPN_SERVER,
            VPN_CLIENT,
            "--secret",
            &key,
            "0",
        ],
    );
    let vpn_client = openvpn(
        gw.netns().name(),
        "Initialization Sequence Completed",
        &[
            "--remote",
            &server_addr,
            "1194",
            "--nobind",
            "--ifconfig",
            VPN_CLIENT,
            VPN_SERVER,
            "--secret",
            &key,
            "1",
            "--route-gateway",
            VPN_SERVER,
            "--redirect-gateway",
            "def1",
        ],
    );
    let _who = inet.serve_whoami(7003).unwrap();
    client
        .netns()
        .run(|| gateway::client::init(&s, "app-0", &[], &[], "").unwrap())
        .unwrap();
    let to = SocketAddr::new(internet::HOST_V4.into(), 7003);
    let seen = client
        .netns()
        .run(move || lab_net::client::tcp_request(to))
        .unwrap()
        .unwrap();
    assert_eq!(seen, VPN_CLIENT, "the outside sees the VPN's address");

    // The VPN client dies: tun0 and its routes go; the kill switch lets nothing else out.
    drop(vpn_client);
    let t = Instant::now();
    while gw
        .netns()
        .run(|| gateway::iproute::link("tun0").unwrap())
        .unwrap()
        .is_some()
    {
        assert!(t.elapsed() < Duration::from_secs(10), "tun0 stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cap, lines) = capture_lines(inet.netns().name());
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
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    let packets = lines.join().unwrap();
    // Only the dead VPN's own port may appear (the server's keepalives towards the gateway).
    let leaked: Vec<&String> = packets.iter().filter(|l| !l.contains(".1194")).collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
