//! `ghostwire demo`: the preview switch end to end in a lab on this machine.
//!
//! Builds a lab (pods as network namespaces), runs the real `ghostwire init`
//! inside two client pods, turns the jump on in the preview one, and shows
//! which backend each pod reaches before and after. Exit 0 only if every
//! route is the expected one.

use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use clap::Args;
use lab_net::{Lab, Pod, Service, ServicePort};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Rule backend for the pods' init: auto, nftables, iptables, iptables-nft, iptables-legacy.
    #[arg(long, env = "GW_BACKEND", default_value = "auto")]
    pub backend: String,
    /// Use the Services' IPv6 ClusterIPs (dual-stack).
    #[arg(long)]
    pub ipv6: bool,
    /// Keep the lab up after the demo until Ctrl-C, to look around with `ip netns exec`.
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

/// Removes the demo's scratch directory on drop.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: DemoArgs) -> Result<(), Exit> {
    // Ctrl-C or SIGTERM: remove the lab's namespaces, then leave.
    tokio::spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        eprintln!("\nghostwire demo: interrupted, removing the lab");
        let _ = lab_net::shutdown_all();
        std::process::exit(130);
    });
    tokio::task::spawn_blocking(move || demo(&args))
        .await
        .context("demo task")?
}

fn reach(pod: &Pod, svc: &Service, v6: bool) -> String {
    let addr = if v6 { svc.addr_v6(80) } else { svc.addr_v4(80) };
    pod.tcp_request(addr)
        .unwrap_or_else(|e| format!("error: {e}"))
}

fn demo(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    let scratch =
        Scratch(std::env::temp_dir().join(format!("ghostwire-demo-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).context("scratch directory")?;

    println!("ghostwire demo: building a lab (node bridge, pods as network namespaces)…");
    let mut lab = Lab::new("demo").context("creating the lab (are you root?)")?;
    let ports = [ServicePort::tcp(80, 8080).named("http")];
    let mut servers = Vec::new();
    let mut services = Vec::new();
    for name in ["orders", "orders-preview", "payments"] {
        let pod = lab.add_pod(&format!("{name}-backend"))?;
        servers.push(pod.serve_echo(name, &[8080], &[])?);
        services.push(lab.add_service(name, &ports, &[&pod])?);
    }
    let (orders, payments) = (&services[0], &services[2]);
    for s in &services {
        println!("  Service {:<15} ClusterIP {} / {}", s.name, s.ipv4, s.ipv6);
    }
    let active = lab.add_pod("shop-active")?;
    let preview = lab.add_pod("shop-preview")?;
    let clients = [
        (&active, "shop-active", "active"),
        (&preview, "shop-preview", "preview"),
    ];

    let mut rows = Vec::new();
    for (pod, name, role) in clients {
        for (svc, sname) in [(orders, "orders"), (payments, "payments")] {
            let want = match (role, sname) {
                ("preview", "orders") => "orders-preview",
                _ => sname,
            };
            rows.push(Row {
                pod: name,
                role,
                service: sname,
                before: reach(pod, svc, args.ipv6),
                after: String::new(),
                want,
            });
        }
    }

    let file = scratch.0.join("services.json");
    let refs: Vec<&Service> = services.iter().collect();
    std::fs::write(&file, lab_net::kube_json::service_list(&refs, "default"))
        .context("writing services.json")?;
    for (pod, name, role) in clients {
        let map = scratch.0.join(format!("{name}.map"));
        let mut cmd = pod.command(&exe);
        cmd.arg("init")
            .arg("--from-file")
            .arg(&file)
            .arg("--dnat-map")
            .arg(&map)
            .args(["--backend", &args.backend])
            .args(["--ipv6", if args.ipv6 { "true" } else { "false" }]);
        if role == "preview" {
            // No watcher yet in this demo: init turns the jump on itself.
            cmd.arg("--activate");
        }
        println!(
            "  {name}: ghostwire init{}",
            if role == "preview" { " --activate" } else { "" }
        );
        let out = cmd.output().context("running ghostwire init")?;
        if !out.status.success() {
            return Err(anyhow!(
                "ghostwire init in {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
            .code(Code::Kernel);
        }
        if role == "preview" {
            println!("\n  DNAT map written by init in {name}:");
            for line in std::fs::read_to_string(&map).unwrap_or_default().lines() {
                println!("    {line}");
            }
        }
    }
    let mut i = 0;
    for (pod, _, _) in clients {
        for svc in [orders, payments] {
            rows[i].after = reach(pod, svc, args.ipv6);
            i += 1;
        }
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
            "\nghostwire demo: holding the lab; its namespaces start with {}. Ctrl-C removes it.",
            lab.prefix()
        );
        loop {
            std::thread::park();
        }
    }
    drop(servers);
    lab.shutdown().context("removing the lab")?;
    if ok {
        println!(
            "\nghostwire demo: routing is right — the preview pod reaches orders-preview through the orders ClusterIP; everything else stays on active."
        );
        Ok(())
    } else {
        Err(anyhow!("routing is wrong: see the ✗ rows above")).code(Code::Failure)
    }
}
