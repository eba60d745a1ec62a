//! `ghostwire demo` end to end on the lab cluster: passes, and leaves nothing behind (no
//! namespaces, no container processes), also when stopped by a signal.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn leftovers(pid: u32) -> Vec<String> {
    netns::Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("gwl{pid}-")))
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may contain spaces, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live process below `root`.
fn descendants(root: u32) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut out = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &all {
            if !out.contains(&p) && ppid(p).is_some_and(|pp| out.contains(&pp)) {
                out.push(p);
                grew = true;
            }
        }
    }
    out.retain(|&p| p != root);
    out
}

/// The processes still running, each with its state and command line. A zombie counts as gone:
/// it is only waiting for its new parent to reap it.
fn alive(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            if state == 'Z' {
                return None;
            }
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            Some(format!("{p} ({state}) {}", cmd.trim()))
        })
        .collect()
}

fn run_demo(args: &[&str]) {
    let child = Command::new(common::ghostwire())
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preview_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("shop-preview") && l.contains(" orders "))
        .unwrap_or_else(|| panic!("no preview row in:\n{text}"));
    assert!(
        preview_row.contains("orders-preview") && preview_row.ends_with('✓'),
        "{preview_row}"
    );
    // Before init every pod reached the active backend.
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("shop-") && l.ends_with('✓'))
            .all(|l| !l.contains("before")
                && l.split_whitespace().nth(3) == l.split_whitespace().nth(2)),
        "{text}"
    );
    // The injector added init and watcher; the watcher made routing follow every flip.
    assert!(
        text.contains(
            r#"init containers ["ghostwire-init"], containers ["shop", "ghostwire-watcher"]"#
        ),
        "{text}"
    );
    let flips: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("role="))
        .collect();
    assert_eq!(flips.len(), 4, "{text}");
    assert!(flips.iter().all(|l| l.ends_with('✓')), "{text}");
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

#[test]
fn demo_routes_right_and_cleans_up() {
    run_demo(&["--backend", "nftables"]);
}

#[test]
fn demo_routes_right_over_ipv6_with_iptables() {
    run_demo(&["--backend", "iptables-nft", "--ipv6"]);
}

/// `ghostwire demo gateway`: deploy/gateway/base in the lab cluster, a Pod injected through
/// the webhook, its traffic and DNS through the gateway Pod (the `gateway sidecar` binary's
/// DHCP, DNS and /metrics), and healed after the gateway Pod is replaced.
#[test]
fn demo_gateway_sends_an_injected_pod_through_the_gateway_and_heals() {
    let child = Command::new(common::ghostwire())
        .args(["demo", "gateway"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(r#"init containers ["gateway-client-init", "gateway-client-sidecar"], containers ["app"], dnsPolicy None"#),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with('✓') || l.ends_with('✗'))
        .collect();
    assert_eq!(rows.len(), 7, "{text}");
    assert!(rows.iter().all(|l| l.ends_with('✓')), "{text}");
    let row = |start: &str| {
        rows.iter()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in:\n{text}"))
            .split_whitespace()
            .rev()
            .nth(1)
            .unwrap()
            .to_string()
    };
    // The plain Pod is seen as itself, the injected one as the gateway, then its replacement.
    let gateways: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(" is Ready at ").nth(1))
        .collect();
    assert_eq!(gateways.len(), 2, "{text}");
    assert_ne!(gateways[0], gateways[1]);
    assert_ne!(row("plain:"), gateways[0]);
    assert_eq!(row("web: the outside sees the gateway Pod"), gateways[0]);
    assert_eq!(
        row("web: the outside sees the new gateway Pod"),
        gateways[1]
    );
    assert_eq!(row("web: web.outside.test via"), "203.0.113.10");
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

/// Stops a held demo if the test fails before it does (SIGTERM: the demo removes its lab).
struct Held(std::process::Child);

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            nix_kill(self.0.id());
            let _ = self.0.wait();
        }
    }
}

#[test]
fn sigterm_removes_the_lab() {
    let mut child = Held(
        Command::new(common::ghostwire())
            .args(["demo", "--hold", "--backend", "iptables-legacy"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    // Wait until the lab is up and held (the line is printed only then).
    let held = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("holding the lab"))
        .expect("demo never reached the hold");
    assert!(!leftovers(pid).is_empty(), "the held lab should exist");
    // The held cluster answers the real kubectl.
    let kubeconfig = held
        .split_once("kubeconfig ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .expect("kubeconfig path in the hold line");
    let out = Command::new("kubectl")
        .args(["--kubeconfig", kubeconfig, "get", "pods", "--no-headers"])
        .output()
        .unwrap();
    let pods = String::from_utf8_lossy(&out.stdout);
    assert!(
        pods.lines()
            .any(|l| l.starts_with("shop-preview") && l.contains("Running")),
        "{pods}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Container processes (echo servers, sleeps) run below the demo until it stops.
    let procs = descendants(pid);
    assert!(!procs.is_empty());
    nix_kill(pid);
    stops_and_removes_its_lab(child, &procs);
}

/// Ctrl-C in a terminal, in the middle of a capability: SIGINT to the demo's whole process
/// group, so the helpers it runs at that moment (`ip`, `nft`, `kubectl`…) get it as well. The
/// demo removes its lab all the same and exits 130, as it does on SIGTERM.
#[test]
fn ctrl_c_in_the_middle_removes_the_lab() {
    let mut child = Held(
        Command::new(common::ghostwire())
            .args(["demo", "--backend", "iptables-legacy"])
            // Its own process group, as a shell's foreground job has.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("=== ghostwire demo mesh ==="))
        .expect("the demo never reached the mesh");
    // Keep reading its output (a full pipe would stall it) while the mesh's lab comes up.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let mut procs = Vec::new();
    common::wait_for("the mesh's lab with containers running", 120, || {
        procs = descendants(pid);
        !leftovers(pid).is_empty() && !procs.is_empty()
    });
    let st = Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(st.success());
    stops_and_removes_its_lab(child, &procs);
    let _ = drain.join();
}

/// The signalled demo exits 130 having removed its lab: no namespace and no directory of its
/// run, and none of `procs` (its container processes) left running.
fn stops_and_removes_its_lab(mut child: Held, procs: &[u32]) {
    let pid = child.0.id();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
    // Nor its directories (kubeconfig, the node's pod directories).
    let dirs: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("gw-lab-{pid}-")))
        .collect();
    assert!(dirs.is_empty(), "left in the temp dir: {dirs:?}");
    // SIGKILL is delivered before the demo exits, but a killed process leaves /proc only once
    // it has died; give the kernel a bounded moment (no timing is asserted).
    let mut left = alive(procs);
    for _ in 0..400 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = alive(procs);
    }
    assert!(left.is_empty(), "processes left: {left:?}");
}

fn nix_kill(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
