//! `ghostwire lab …`: the lab's command-line entry points.

use crate::exit::{Code, Exit, WithCode};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Run the lab's Kubernetes API server in the foreground (until Ctrl-C or SIGTERM).
    Api(ApiArgs),
    /// Run a lab cluster (API + node) in the foreground; Ctrl-C or SIGTERM tears it down.
    Up(UpArgs),
    /// Remove what a crashed `lab up` (or test) left: processes and namespaces of dead labs.
    Down,
    /// The echo image's program: answers HTTP, TCP and UDP with the pod name and $VERSION.
    #[command(hide = true)]
    Echo(EchoArgs),
}

#[derive(Args)]
pub struct UpArgs {
    /// Address the API listens on (host loopback; pods reach it through the `kubernetes` Service).
    #[arg(long, env = "GW_LAB_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Keep API objects, keys and pod files here; a temporary directory when unset.
    #[arg(long, env = "GW_LAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig (default: lab.kubeconfig in the data dir, else here).
    #[arg(long, env = "GW_LAB_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct EchoArgs {
    /// TCP ports (HTTP or line protocol) on [::] (dual-stack).
    #[arg(long = "tcp", default_values_t = [8080])]
    tcp: Vec<u16>,
    /// UDP ports on [::].
    #[arg(long = "udp", default_values_t = [8080])]
    udp: Vec<u16>,
    /// The reply; default `$HOSTNAME` (the pod name), followed by ` $VERSION` when set.
    #[arg(long)]
    reply: Option<String>,
}

#[derive(Args)]
pub struct ApiArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "GW_LAB_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Keep objects and keys here so they survive a restart; in memory when unset.
    #[arg(long, env = "GW_LAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "GW_LAB_KUBECONFIG", default_value = "lab.kubeconfig")]
    kubeconfig: PathBuf,
}

pub async fn run(cmd: LabCommand) -> Result<(), Exit> {
    match cmd {
        LabCommand::Api(args) => api(args).await,
        LabCommand::Up(args) => up(args).await,
        LabCommand::Down => down(),
        LabCommand::Echo(args) => echo(args).await,
    }
}

async fn api(args: ApiArgs) -> Result<(), Exit> {
    let opts = lab_api::Options {
        listen: args.listen,
        data_dir: args.data_dir,
        kubeconfig: Some(args.kubeconfig),
        ..Default::default()
    };
    let server = lab_api::Server::start(opts)
        .await
        .context("starting the lab API")
        .code(Code::Config)?;
    let path = server.kubeconfig_path().display().to_string();
    println!("lab API serving at {}", server.url());
    println!("kubeconfig: {path}");
    println!("try: kubectl --kubeconfig {path} get namespaces");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

async fn up(args: UpArgs) -> Result<(), Exit> {
    let removed = lab_node::cleanup_stale().context("removing a crashed lab's leftovers")?;
    if !removed.is_empty() {
        println!("removed {} namespaces left by a crashed lab", removed.len());
    }
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    let mut opts = lab_node::ClusterOptions::new("up", exe);
    opts.listen = args.listen;
    opts.kubeconfig = Some(match (&args.kubeconfig, &args.data_dir) {
        (Some(k), _) => k.clone(),
        (None, Some(d)) => d.join("lab.kubeconfig"),
        (None, None) => PathBuf::from("lab.kubeconfig"),
    });
    opts.data_dir = args.data_dir;
    let cluster = lab_node::Cluster::start(opts)
        .await
        .context("starting the lab cluster (needs root, iproute2 and nftables)")
        .code(Code::Config)?;
    let path = std::path::absolute(cluster.kubeconfig_path())
        .unwrap_or_else(|_| cluster.kubeconfig_path().to_path_buf());
    println!(
        "lab cluster up: API {} , node {} (namespaces {}-*)",
        cluster.api().url(),
        lab_node::NODE_NAME,
        cluster.node().prefix()
    );
    println!("kubeconfig: {}", path.display());
    println!("use it:     export KUBECONFIG={}", path.display());
    println!("            kubectl get pods -A");
    println!(
        "images:     ghostwire:dev (this binary), ghostwire/echo (echo server), busybox (host tools)"
    );
    println!("Ctrl-C removes the cluster.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    println!("stopping pods and removing the lab…");
    cluster.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

fn down() -> Result<(), Exit> {
    let removed = lab_node::cleanup_stale()
        .context("removing leftovers of crashed labs")
        .code(Code::Failure)?;
    println!("removed {} lab namespaces", removed.len());
    for n in removed {
        println!("  {n}");
    }
    Ok(())
}

async fn echo(args: EchoArgs) -> Result<(), Exit> {
    let reply = args.reply.unwrap_or_else(|| {
        let name = std::env::var("HOSTNAME").unwrap_or_else(|_| "echo".into());
        match std::env::var("VERSION") {
            Ok(v) if !v.is_empty() => format!("{name} {v}"),
            _ => name,
        }
    });
    let any = std::net::Ipv6Addr::UNSPECIFIED;
    let mut tcp = Vec::new();
    for p in &args.tcp {
        tcp.push(
            tokio::net::TcpListener::bind((any, *p))
                .await
                .with_context(|| format!("bind tcp [::]:{p}"))
                .code(Code::Config)?,
        );
    }
    let mut udp = Vec::new();
    for p in &args.udp {
        udp.push(
            tokio::net::UdpSocket::bind((any, *p))
                .await
                .with_context(|| format!("bind udp [::]:{p}"))
                .code(Code::Config)?,
        );
    }
    println!("echo {reply:?} on tcp {:?} udp {:?}", args.tcp, args.udp);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = lab_net::echo::serve(&reply, tcp, udp) => r.context("echo server")?,
        _ = term.recv() => {}
    }
    Ok(())
}
