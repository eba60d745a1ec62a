//! `ghostwire demo`: the preview switch end to end on the lab cluster on this machine.
//!
//! Starts the lab cluster (API + node), creates orders, orders-preview and payments (echo pods
//! behind ClusterIP Services) and two shop pods, and records which backend each shop pod reaches.
//! Then it rolls the shop pods out again with `ghostwire init` as their init container (the
//! preview one with `--activate`, as no watcher runs here), which reaches the API in-cluster,
//! and records again. Exit 0 only if every route is the expected one.

use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use clap::Args;
use lab_node::{Cluster, ClusterOptions, scenario};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Rule backend for the pods' init: auto, nftables, iptables, iptables-nft, iptables-legacy.
    #[arg(long, env = "GW_BACKEND", default_value = "auto")]
    pub backend: String,
    /// Use the Services' IPv6 ClusterIPs (dual-stack Services).
    #[arg(long)]
    pub ipv6: bool,
    /// Keep the lab cluster up after the demo until Ctrl-C, to look around with kubectl.
    #[arg(long)]
    pub hold: bool,
}

struct Row {
    pod: &'static str,
    role: &'static str,
    service: &'static str,
    before: String,
    after: String,
    want: &'static str,
}

const CLIENTS: [(&str, &str); 2] = [("shop-active", "active"), ("shop-preview", "preview")];

pub async fn run(args: DemoArgs) -> Result<(), Exit> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = demo(&args) => r,
        _ = tokio::signal::ctrl_c() => interrupted(),
        _ = term.recv() => interrupted(),
    }
}

/// Runs after the demo's future (and with it the cluster: containers killed, namespaces
/// removed) was dropped.
fn interrupted() -> Result<(), Exit> {
    eprintln!("\nghostwire demo: interrupted, lab removed");
    std::process::exit(130);
}

async fn reach(cluster: &Cluster, pod: &str, addr: SocketAddr) -> String {
    let Some(p) = cluster.node().pod_netns("default", pod) else {
        return format!("error: pod {pod} not running");
    };
    tokio::task::spawn_blocking(move || {
        p.tcp_request(addr)
            .unwrap_or_else(|e| format!("error: {e}"))
    })
    .await
    .unwrap_or_else(|e| format!("error: {e}"))
}

async fn demo(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    println!(
        "ghostwire demo: starting a lab cluster (Kubernetes API + node, pods as network namespaces)…"
    );
    let mut opts = ClusterOptions::new("demo", exe);
    opts.backoff_initial = Duration::from_secs(1);
    let cluster = Cluster::start(opts)
        .await
        .context("starting the lab cluster (are you root?)")?;
    let client = cluster.client().await?;
    for name in ["orders", "orders-preview", "payments"] {
        scenario::apply(&client, "default", &scenario::service(name, args.ipv6)).await?;
        scenario::apply(&client, "default", &scenario::echo_pod(name, None)).await?;
    }
    scenario::wait_ready(
        &client,
        "default",
        &["orders", "orders-preview", "payments"],
        WAIT,
    )
    .await?;
    let mut addrs = Vec::new();
    for name in ["orders", "orders-preview", "payments"] {
        let ips = scenario::cluster_ips(&client, "default", name).await?;
        let shown: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        println!("  Service {name:<15} ClusterIPs {}", shown.join(" / "));
        let ip = ips
            .iter()
            .find(|i| i.is_ipv6() == args.ipv6)
            .copied()
            .ok_or_else(|| {
                anyhow!(
                    "Service {name} has no {} ClusterIP",
                    if args.ipv6 { "IPv6" } else { "IPv4" }
                )
            })?;
        addrs.push(SocketAddr::new(ip, 80));
    }
    let (orders, payments) = (addrs[0], addrs[2]);

    println!("  shop pods without ghostwire…");
    for (name, role) in CLIENTS {
        scenario::apply(
            &client,
            "default",
            &scenario::client_pod(name, role, None, &[]),
        )
        .await?;
    }
    scenario::wait_ready(&client, "default", &["shop-active", "shop-preview"], WAIT).await?;
    let mut rows = Vec::new();
    for (pod, role) in CLIENTS {
        for (service, addr) in [("orders", orders), ("payments", payments)] {
            let want = if role == "preview" && service == "orders" {
                "orders-preview"
            } else {
                service
            };
            rows.push(Row {
                pod,
                role,
                service,
                before: reach(&cluster, pod, addr).await,
                after: String::new(),
                want,
            });
        }
    }

    println!(
        "  shop pods again, with the init container `ghostwire init` (in-cluster API access)…"
    );
    scenario::delete_pods(&client, "default", &["shop-active", "shop-preview"], WAIT).await?;
    let ipv6 = if args.ipv6 { "true" } else { "false" };
    for (name, role) in CLIENTS {
        // No watcher in this demo: init turns the preview pod's jump on itself.
        let init: &[&str] = if role == "preview" {
            &["init", "--activate", "--ipv6", ipv6]
        } else {
            &["init", "--ipv6", ipv6]
        };
        println!("  {name}: ghostwire {}", init.join(" "));
        let pod = scenario::client_pod(name, role, Some(init), &[("GW_BACKEND", &args.backend)]);
        scenario::apply(&client, "default", &pod).await?;
    }
    if let Err(e) =
        scenario::wait_ready(&client, "default", &["shop-active", "shop-preview"], WAIT).await
    {
        return Err(anyhow!("{e}; see `kubectl logs <pod> -c ghostwire-init`")).code(Code::Kernel);
    }
    if let Some(dir) = cluster
        .node()
        .volume_dir("default", "shop-preview", "shared")
    {
        println!("\n  DNAT map written by init in shop-preview (/shared/dnat.map):");
        for line in std::fs::read_to_string(dir.join("dnat.map"))
            .unwrap_or_default()
            .lines()
        {
            println!("    {line}");
        }
    }
    for row in &mut rows {
        let addr = if row.service == "orders" {
            orders
        } else {
            payments
        };
        row.after = reach(&cluster, row.pod, addr).await;
    }

    println!(
        "\n  {:<13} {:<8} {:<9} {:<16} {:<16} ok",
        "pod", "role", "calls", "before init", "after init"
    );
    let mut ok = true;
    for r in &rows {
        let good = r.after == r.want;
        ok &= good;
        println!(
            "  {:<13} {:<8} {:<9} {:<16} {:<16} {}",
            r.pod,
            r.role,
            r.service,
            r.before,
            r.after,
            if good { "✓" } else { "✗" }
        );
    }
    if args.hold {
        println!(
            "\nghostwire demo: holding the lab; kubeconfig {} (kubectl --kubeconfig … get pods); its namespaces start with {}. Ctrl-C removes it.",
            cluster.kubeconfig_path().display(),
            cluster.node().prefix()
        );
        std::future::pending::<()>().await;
    }
    cluster.shutdown(Duration::from_secs(2)).await;
    if ok {
        println!(
            "\nghostwire demo: routing is right — the preview pod reaches orders-preview through the orders ClusterIP; everything else stays on active."
        );
        Ok(())
    } else {
        Err(anyhow!("routing is wrong: see the ✗ rows above")).code(Code::Failure)
    }
}
