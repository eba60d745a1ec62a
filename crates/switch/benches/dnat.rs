//! Preview-switch benchmark (needs root; uses throwaway network namespaces):
//!
//!   cargo bench -p switch --bench dnat
//!
//! 1. Apply time (render + one transaction + read-back + verify) for 10, 1,000 and
//!    10,000 pairs with nftables, iptables-nft and iptables-legacy, beside the naive
//!    one-`iptables`-process-per-rule approach at 1,000 pairs.
//! 2. Connection set-up through the DNAT: TCP connect + one echo round trip from a lab
//!    pod to a remapped ClusterIP, with 10 and with 10,000 pairs in the chain.
//!
//! Everything runs in one process, side by side, so ratios hold on a noisy machine.

use lab_net::{Lab, ServicePort};
use netrules::{Backend, BackendKind, IptablesFlavour, Protocol};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use switch::config::{Settings, Sources};
use switch::pairing::{Mapping, Plan};

fn settings() -> Settings {
    Settings::resolve(&Sources {
        cli: [(
            "GW_EXCLUDE_CIDRS".to_string(),
            "169.254.169.254/32".to_string(),
        )]
        .into(),
        ..Default::default()
    })
    .expect("settings")
}

/// `n` synthetic pairs in 10.95.0.0/16 → 10.97.0.0/16; they sort before the lab's
/// 10.96.x ClusterIPs, so with iptables a real mapping added last is scanned last.
fn synthetic(n: usize) -> Vec<Mapping> {
    (0..n)
        .map(|i| {
            let host =
                |net: u8| IpAddr::V4(Ipv4Addr::new(10, net, (i / 250) as u8, (i % 250 + 1) as u8));
            Mapping {
                active: format!("svc{i}"),
                preview: format!("svc{i}-preview"),
                port_name: None,
                protocol: Protocol::Tcp,
                active_addr: SocketAddr::new(host(95), 80),
                preview_addr: SocketAddr::new(host(97), 80),
            }
        })
        .collect()
}

struct Ns(netns::Netns);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("gwt-bench-{tag}-{}", std::process::id());
        let _ = netns::Netns::delete(&name);
        Ns(netns::Netns::create(&name).expect("create netns"))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::Netns::delete(self.0.name());
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn apply_time(kind: BackendKind, n: usize) -> Duration {
    let s = settings();
    let plan = Plan {
        mappings: synthetic(n),
        skipped: vec![],
    };
    let table = switch::rules::table(&plan, &s, true);
    let backend = Backend::new(kind);
    let runs: Vec<Duration> = (0..3)
        .map(|_| {
            let ns = Ns::new("apply");
            ns.0.run(|| {
                let t = Instant::now();
                backend.apply(&table).expect("apply");
                t.elapsed()
            })
            .expect("netns")
        })
        .collect();
    median(runs)
}

/// One `iptables -t nat -A` process per rule, as a shell loop would do it.
fn naive_time(n: usize) -> Duration {
    let ns = Ns::new("naive");
    ns.0.run(|| {
        let t = Instant::now();
        let ok = std::process::Command::new("iptables-legacy")
            .args(["-w", "5", "-t", "nat", "-N", "CANARY_DNAT"])
            .status()
            .expect("iptables")
            .success();
        assert!(ok);
        for m in synthetic(n) {
            let ok = std::process::Command::new("iptables-legacy")
                .args(["-w", "5", "-t", "nat", "-A", "CANARY_DNAT", "-d"])
                .arg(m.active_addr.ip().to_string())
                .args([
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    "DNAT",
                    "--to-destination",
                ])
                .arg(m.preview_addr.to_string())
                .status()
                .expect("iptables")
                .success();
            assert!(ok);
        }
        t.elapsed()
    })
    .expect("netns")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50/p99 of connect + echo through the switch's DNAT with `n` pairs in the chain.
fn connect_latency(kind: BackendKind, n: usize, samples: usize) -> (Duration, Duration) {
    let mut lab = Lab::new("bench").expect("lab");
    let ports = [ServicePort::tcp(80, 8080)];
    let active_be = lab.add_pod("active-be").expect("pod");
    let preview_be = lab.add_pod("preview-be").expect("pod");
    let _e1 = active_be.serve_echo("orders", &[8080], &[]).expect("echo");
    let _e2 = preview_be
        .serve_echo("orders-preview", &[8080], &[])
        .expect("echo");
    let orders = lab
        .add_service("orders", &ports, &[&active_be])
        .expect("svc");
    let preview = lab
        .add_service("orders-preview", &ports, &[&preview_be])
        .expect("svc");
    let client = lab.add_pod("client").expect("pod");
    let mut mappings = synthetic(n - 1);
    mappings.push(Mapping {
        active: "orders".into(),
        preview: "orders-preview".into(),
        port_name: None,
        protocol: Protocol::Tcp,
        active_addr: orders.addr_v4(80),
        preview_addr: preview.addr_v4(80),
    });
    let table = switch::rules::table(
        &Plan {
            mappings,
            skipped: vec![],
        },
        &settings(),
        true,
    );
    let backend = Backend::new(kind);
    client
        .netns()
        .run(|| backend.apply(&table).expect("apply"))
        .expect("netns");
    let target = orders.addr_v4(80);
    let mut lat = client
        .netns()
        .run(move || {
            // Warm up caches and the echo server, then measure.
            for _ in 0..50 {
                assert_eq!(
                    lab_net::client::tcp_request(target).expect("request"),
                    "orders-preview"
                );
            }
            (0..samples)
                .map(|_| {
                    let t = Instant::now();
                    let reply = lab_net::client::tcp_request(target).expect("request");
                    let d = t.elapsed();
                    assert_eq!(reply, "orders-preview");
                    d
                })
                .collect::<Vec<_>>()
        })
        .expect("netns");
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Issue 10 point 14: ghostwire's whole nftables apply of `n` pairs (pre-read, render,
/// one transaction, read-back, verify) beside a bare `nft -f` of the same ruleset text,
/// alternating in fresh namespaces; medians of `runs`.
fn apply_vs_bare(n: usize, runs: usize) -> (Duration, Duration) {
    let s = settings();
    let plan = Plan {
        mappings: synthetic(n),
        skipped: vec![],
    };
    let table = switch::rules::table(&plan, &s, true);
    let backend = Backend::new(BackendKind::Nftables);
    let text = backend.render(&table).expect("render");
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let ns = Ns::new("ratio");
        bare.push(
            ns.0.run(|| {
                use std::io::Write;
                let t = Instant::now();
                let mut child = std::process::Command::new("nft")
                    .args(["-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .expect("nft");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(text.as_bytes())
                    .expect("write");
                assert!(child.wait().expect("nft").success());
                t.elapsed()
            })
            .expect("netns"),
        );
        drop(ns);
        let ns = Ns::new("ratio");
        ours.push(
            ns.0.run(|| {
                let t = Instant::now();
                backend.apply(&table).expect("apply");
                t.elapsed()
            })
            .expect("netns"),
        );
    }
    (median(ours), median(bare))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list here.
    }
    if std::env::args().any(|a| a == "apply-ratio") {
        // Only the apply-versus-bare comparison: `cargo bench -p switch --bench dnat -- apply-ratio`.
        apply_vs_bare(10, 1);
        println!("| pairs | ghostwire apply (read-back included) | bare nft -f | ratio |");
        println!("|---|---|---|---|");
        for n in [1_000, 10_000] {
            let (ours, bare) = apply_vs_bare(n, 5);
            println!(
                "| {n} | {} | {} | {:.2}x |",
                ms(ours),
                ms(bare),
                ours.as_secs_f64() / bare.as_secs_f64()
            );
        }
        return;
    }
    let kinds = [
        BackendKind::Nftables,
        BackendKind::Iptables(IptablesFlavour::Nft),
        BackendKind::Iptables(IptablesFlavour::Legacy),
    ];
    // Warm up each tool once (binary and library loading, nft's caches), untimed.
    for &k in &kinds {
        apply_time(k, 10);
    }
    println!("## Apply time (render + transaction + read-back + verify), median of 3\n");
    println!("| pairs | nftables | iptables-nft | iptables-legacy |");
    println!("|---|---|---|---|");
    for n in [10, 1_000, 10_000] {
        let cells: Vec<String> = kinds.iter().map(|&k| ms(apply_time(k, n))).collect();
        println!("| {n} | {} |", cells.join(" | "));
    }
    println!(
        "\nnaive, one iptables-legacy process per rule, 1000 pairs: {}",
        ms(naive_time(1_000))
    );
    println!("\n## Connection set-up through the DNAT (connect + one echo), 2,000 samples\n");
    println!("| backend | pairs | p50 | p99 |");
    println!("|---|---|---|---|");
    for kind in [
        BackendKind::Nftables,
        BackendKind::Iptables(IptablesFlavour::Legacy),
    ] {
        for n in [10, 10_000] {
            let (p50, p99) = connect_latency(kind, n, 2_000);
            println!("| {kind} | {n} | {} | {} |", us(p50), us(p99));
        }
    }
}
