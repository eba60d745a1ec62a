//! The lab DNS beside a real dnsmasq serving the same records, both measured with the real
//! `dnsperf` (Debian) in the same run.
//!
//! ```sh
//! cargo bench -p lab-dns --bench dnsperf                    # release profile
//! GW_BENCH_SERVICES=1000 GW_BENCH_SECONDS=10 GW_BENCH_ROUNDS=3 cargo bench -p lab-dns --bench dnsperf
//! ```
//!
//! The zone holds `GW_BENCH_SERVICES` dual-stack Services (`svc-<i>.bench.svc.cluster.local`,
//! A and AAAA); dnsmasq gets exactly the zone's A and AAAA records as a hosts file (and
//! `--local=/cluster.local/`, so it never looks further). Both listen on 127.0.0.1; the query
//! file asks every name for A and for AAAA. Each round runs dnsperf against the lab DNS, then
//! against dnsmasq, for the same time with the same options (`-c 4 -T 2 -q 100`). Everything
//! shares the machine's cores with dnsperf itself.

use lab_dns::peer::Dnsmasq;
use lab_dns::records::Rdata;
use lab_dns::{DnsServer, Upstream, ZoneHandle};
use lab_net::bench::dnsperf;
use serde_json::json;
use std::fmt::Write as _;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let services = env("GW_BENCH_SERVICES", 1000);
    let seconds = env("GW_BENCH_SECONDS", 10);
    let rounds = env("GW_BENCH_ROUNDS", 3);
    let svcs: Vec<_> = (0..services)
        .map(|i| {
            json!({"metadata": {"namespace": "bench", "name": format!("svc-{i}")},
                   "spec": {"clusterIPs": [format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250),
                                           format!("fd00:10:96::{:x}", 0x100 + i)],
                            "ports": [{"name": "http", "port": 80}]}})
        })
        .collect();
    let zone = lab_dns::Zone::build(lab_dns::ZoneConfig::default(), &svcs, &[], 1);

    let dir = std::env::temp_dir().join(format!("gw-dnsperf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut hosts, mut queries) = (String::new(), String::new());
    for (name, rdata) in zone.records() {
        let (ip, ty) = match rdata {
            Rdata::A(ip) => (ip.to_string(), "A"),
            Rdata::Aaaa(ip) => (ip.to_string(), "AAAA"),
            _ => continue,
        };
        if !name.ends_with(".bench.svc.cluster.local") {
            continue;
        }
        let _ = writeln!(hosts, "{ip} {name}");
        let _ = writeln!(queries, "{name} {ty}");
    }
    let hosts_file = dir.join("hosts");
    let queries_file = dir.join("queries");
    std::fs::write(&hosts_file, &hosts).unwrap();
    std::fs::write(&queries_file, &queries).unwrap();

    let (udp, tcp) = lab_dns::loopback_pair().unwrap();
    let lab_addr = udp.local_addr().unwrap();
    let _lab = DnsServer::start(vec![udp], vec![tcp], ZoneHandle::new(zone), Upstream::None)
        .expect("lab DNS starts");
    let dnsmasq = Dnsmasq::start(&[
        format!("--addn-hosts={}", hosts_file.display()),
        "--local=/cluster.local/".into(),
    ])
    .expect("dnsmasq (dnsmasq-base) starts");

    println!(
        "{} names x A/AAAA ({} queries in the file), {seconds} s per run, dnsperf -c 4 -T 2 -q 100",
        services,
        queries.lines().count()
    );
    for round in 1..=rounds {
        for (who, addr) in [("lab DNS", lab_addr), ("dnsmasq", dnsmasq.addr())] {
            let server = addr;
            let q = queries_file.clone();
            let r = tokio::task::spawn_blocking(move || {
                dnsperf(std::process::Command::new("dnsperf"), server, &q, seconds)
                    .expect("dnsperf (Debian package dnsperf) is installed")
            })
            .await
            .unwrap();
            println!(
                "round {round} {who:<8} {:>9.0} queries/s  avg latency {:>6.3} ms  lost {}",
                r.qps, r.avg_latency_ms, r.lost
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
