//! Three lab clusters up to ready, and what each API costs in memory (needs root).
//!
//! ```sh
//! sudo cargo bench -p lab-node --bench multi
//! ```
//!
//! - up → ready: `MultiCluster::start` for east, west and central until it returns (every API
//!   serving behind its gate, every node registered Ready, the backbone routed, the merged
//!   kubeconfig written), then one `kubectl --context X get nodes` per cluster; 3 runs.
//! - memory: the process's resident set before and after starting each of three bare lab API
//!   servers in it (the clusters share one process, so an API's cost is the growth it causes),
//!   then with one Service list served, and after a full three-cluster start.

use lab_node::{MultiCluster, MultiOptions};
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let base = rss_kib();
        let mut servers = Vec::new();
        let mut last = base;
        for i in 0..3 {
            let s = lab_api::Server::start(lab_api::Options::default()).await.unwrap();
            let c = s.client().await.unwrap();
            let _ = kube::Api::<k8s_openapi::api::core::v1::Service>::all(c)
                .list(&Default::default())
                .await
                .unwrap();
            let now = rss_kib();
            println!("bare API {}: RSS +{} KiB (total {} KiB)", i + 1, now - last, now);
            last = now;
            servers.push(s);
        }
        drop(servers);
        let mut times = Vec::new();
        for run in 0..3 {
            let before = rss_kib();
            let started = Instant::now();
            let mut opts = MultiOptions::new(
                "bench-multi",
                &["east", "west", "central"],
                "/nonexistent/ghostwire".into(),
            )
            .unwrap();
            opts.backoff_initial = Duration::from_secs(1);
            let mc = MultiCluster::start(opts).await.unwrap();
            let up = started.elapsed();
            for name in ["east", "west", "central"] {
                let out = tokio::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(mc.kubeconfig_path())
                    .args(["--context", name, "get", "nodes", "--no-headers"])
                    .output()
                    .await
                    .unwrap();
                assert!(String::from_utf8_lossy(&out.stdout).contains("lab-node"));
            }
            let ready = started.elapsed();
            let after = rss_kib();
            println!(
                "run {run}: three clusters started in {:.0} ms, kubectl answered in all three by {:.0} ms; process RSS {} → {} KiB",
                up.as_secs_f64() * 1e3,
                ready.as_secs_f64() * 1e3,
                before,
                after
            );
            times.push(up);
            mc.shutdown(Duration::from_secs(1)).await;
        }
        times.sort();
        println!("median start: {:.0} ms", times[1].as_secs_f64() * 1e3);
    });
}
