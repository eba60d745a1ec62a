//! `ghostwire demo [CAPABILITY]`: each capability end to end on a lab cluster on this machine.
//!
//! Every capability has its own module with `run(&DemoArgs)`, which starts its own lab cluster,
//! prints what it shows, and returns Ok only if every check held. Plain `ghostwire demo` runs them
//! all in order and exits 0 only if every one passed; a failed capability does not stop the
//! others, so one run reports all of them.

mod encryption;
mod gateway;
mod mesh;
mod mirror;
mod switch;

use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The capability to show; all of them when omitted.
    #[arg(value_enum)]
    pub capability: Option<Capability>,
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

/// The capabilities `ghostwire demo` can show, in the order plain `ghostwire demo` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Capability {
    /// Preview switch: blue/green routing that follows a Pod's role label.
    Switch,
    /// Service mirror: a remote cluster's Service mirrored locally and reached by its ClusterIP.
    Mirror,
    /// Mesh: app-a → app-b through both injected proxies, 90/10 split, retries, metrics.
    Mesh,
    /// Egress gateway: an annotated Pod's traffic and DNS through the gateway Pod over VXLAN.
    Gateway,
    /// Pod identity: two attached Pods encrypt with mTLS; a capture sees no plaintext; an
    /// impostor is refused.
    Identity,
}

impl Capability {
    fn name(self) -> &'static str {
        match self {
            Capability::Switch => "switch",
            Capability::Mirror => "mirror",
            Capability::Mesh => "mesh",
            Capability::Gateway => "gateway",
            Capability::Identity => "identity",
        }
    }

    async fn run(self, args: &DemoArgs) -> Result<(), Exit> {
        match self {
            Capability::Switch => switch::run(args).await,
            Capability::Mirror => mirror::run(args).await,
            Capability::Mesh => mesh::run(args).await,
            Capability::Gateway => gateway::run(args).await,
            Capability::Identity => encryption::run(args).await,
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<(), Exit> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = run_all(&args) => r,
        _ = tokio::signal::ctrl_c() => interrupted(),
        _ = term.recv() => interrupted(),
    }
}

async fn run_all(args: &DemoArgs) -> Result<(), Exit> {
    let selected: Vec<Capability> = match args.capability {
        Some(c) => vec![c],
        None => Capability::value_variants().to_vec(),
    };
    if selected.len() == 1 {
        return selected[0].run(args).await;
    }
    let mut failed = Vec::new();
    for cap in &selected {
        println!("\n=== ghostwire demo {} ===", cap.name());
        if let Err(e) = cap.run(args).await {
            eprintln!(
                "ghostwire demo {}: error: {}",
                cap.name(),
                crate::exit::chain(&e.error)
            );
            failed.push(cap.name());
        }
    }
    println!("\n=== summary ===");
    for cap in &selected {
        let ok = !failed.contains(&cap.name());
        println!("  {:<10} {}", cap.name(), if ok { "✓" } else { "✗" });
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("demo failed for: {}", failed.join(", "))).code(Code::Failure)
    }
}

/// Runs after the demo's future (and with it the cluster: containers killed, namespaces
/// removed) was dropped.
fn interrupted() -> Result<(), Exit> {
    // A lab still held by a task that was running when the future was dropped (a blocking task
    // keeps its handle until it returns) would outlive the exit below: remove every lab of this
    // process first.
    if let Err(e) = lab_net::shutdown_all() {
        eprintln!("ghostwire demo: lab cleanup incomplete: {e}");
    }
    eprintln!("\nghostwire demo: interrupted, lab removed");
    std::process::exit(130);
}
