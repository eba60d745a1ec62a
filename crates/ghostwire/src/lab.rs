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
    /// Stop, start or black-hole one cluster's API in a running `lab up --clusters`.
    ApiState(ApiStateArgs),
    /// The echo image's program: answers HTTP, TCP and UDP with the pod name and $VERSION.
    #[command(hide = true)]
    Echo(EchoArgs),
    /// The `ghostwire/app-a` image's program: calls TARGET_URL every second, prints each answer.
    #[command(hide = true)]
    AppA,
    /// The `ghostwire/app-b` image's program: hostname + VERSION, FAIL_RATE percent 500s.
    #[command(hide = true)]
    AppB,
    /// The fake-llm image's program: OpenAI and Ollama APIs answering with the model and prompt
    /// they were asked (streamed as SSE or NDJSON when asked).
    #[command(hide = true)]
    FakeLlm(FakeLlmArgs),
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
    /// With --clusters, one file with a context per cluster.
    #[arg(long, env = "GW_LAB_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Several clusters in this one process (e.g. `east,west,central`): each its own API (the
    /// i-th on the --listen port + i, or a free port with port 0), CA, context, node and ranges;
    /// pod networks routed to each other, ClusterIPs local.
    #[arg(long, env = "GW_LAB_CLUSTERS", value_delimiter = ',')]
    clusters: Vec<String>,
    /// A cluster's pod range, `NAME=CIDR` (a /24; default 10.244.i.0/24 for the i-th).
    #[arg(long = "pod-cidr", value_name = "NAME=CIDR")]
    pod_cidrs: Vec<String>,
    /// A cluster's Service range, `NAME=CIDR` (/12 to /24; default 10.(96+i).0.0/16).
    #[arg(long = "service-cidr", value_name = "NAME=CIDR")]
    service_cidrs: Vec<String>,
    /// A cluster's node zone (`topology.kubernetes.io/zone`), `NAME=ZONE` (default: its name).
    #[arg(long = "zone", value_name = "NAME=ZONE")]
    zones: Vec<String>,
    /// The control socket of `lab api-state` (with --clusters; default: control.sock in the
    /// data dir, else lab-control.sock here).
    #[arg(long, env = "GW_LAB_CONTROL")]
    control: Option<PathBuf>,
    /// DNS server (IP:PORT, on this host, e.g. loopback) that cluster DNS forwards names outside
    /// `cluster.local` to. Unset: such names are answered REFUSED and nothing leaves the machine.
    #[arg(long, env = "GW_LAB_DNS_UPSTREAM")]
    dns_upstream: Option<SocketAddr>,
    /// The node's resolv.conf, for pods with `dnsPolicy: Default` (e.g. /etc/resolv.conf to use
    /// the host's resolver). Unset: such pods get an empty one.
    #[arg(long, env = "GW_LAB_NODE_RESOLV_CONF")]
    node_resolv_conf: Option<PathBuf>,
    /// The Kubernetes version the API's `/version` reports (default 1.33; what it serves stays
    /// 1.33's): `1.29`, or with --clusters `NAME=1.29` per cluster. For clients that pick their
    /// behaviour by version (e.g. `mirror`'s topology fields).
    #[arg(long = "kubernetes-version", value_name = "[NAME=]VERSION")]
    kubernetes_versions: Vec<String>,
}

#[derive(Args)]
pub struct ApiStateArgs {
    /// The cluster, as named in `lab up --clusters`.
    cluster: String,
    /// `stop` (connections refused and closed), `start`, or `blackhole` (connections hang).
    state: String,
    /// The control socket `lab up --clusters` printed.
    #[arg(long, env = "GW_LAB_CONTROL", default_value = "lab-control.sock")]
    control: PathBuf,
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
pub struct FakeLlmArgs {
    /// TCP ports on [::] (dual-stack), each serving every API: 8080 (OpenAI-style servers) and
    /// 11434 (Ollama's) by default.
    #[arg(long = "port", default_values_t = [8080, 11434])]
    ports: Vec<u16>,
    /// Pause between the pieces of a streamed answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
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
        LabCommand::Up(args) if !args.clusters.is_empty() => up_many(args).await,
        LabCommand::Up(args) => up(args).await,
        LabCommand::ApiState(args) => api_state(args).await,
        LabCommand::Down => down(),
        LabCommand::Echo(args) => echo(args).await,
        LabCommand::AppA => app_a().await,
        LabCommand::AppB => app_b().await,
        LabCommand::FakeLlm(args) => fake_llm(args).await,
    }
}

async fn fake_llm(args: FakeLlmArgs) -> Result<(), Exit> {
    let mut listeners = Vec::new();
    for p in &args.ports {
        listeners.push(
            tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, *p))
                .await
                .with_context(|| format!("bind tcp [::]:{p}"))
                .code(Code::Config)?,
        );
    }
    println!("fake-llm on tcp {:?}", args.ports);
    let opts = lab_llm::Options {
        chunk_delay: std::time::Duration::from_millis(args.chunk_delay_ms),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = lab_llm::serve(listeners, opts) => r.context("fake-llm server")?,
        _ = term.recv() => {}
    }
    Ok(())
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
    opts.dns_upstream = args.dns_upstream;
    opts.node_resolv_conf = args.node_resolv_conf;
    match args.kubernetes_versions.as_slice() {
        [] => {}
        [v] => {
            opts.kubernetes_version = v
                .parse()
                .context("--kubernetes-version")
                .code(Code::Config)?
        }
        more => {
            return Err(anyhow::anyhow!(
                "--kubernetes-version given {} times: one lab cluster takes one version",
                more.len()
            ))
            .code(Code::Config);
        }
    }
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
        "images:     ghostwire:dev (this binary), ghostwire/echo (echo server), busybox (host tools),\n            \
         python (host python3), lab/openvpn (host openvpn), lab/fake-llm (OpenAI/Ollama fake): the README's image table"
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

/// `NAME=VALUE` flags into (name, parsed value), each name one of the clusters.
fn per_cluster<T: std::str::FromStr>(
    flag: &str,
    values: &[String],
    clusters: &[String],
) -> Result<Vec<(String, T)>, Exit>
where
    T::Err: std::fmt::Display,
{
    values
        .iter()
        .map(|v| {
            let (name, value) = v
                .split_once('=')
                .with_context(|| format!("--{flag} {v:?}: expected NAME=VALUE"))
                .code(Code::Config)?;
            if !clusters.iter().any(|c| c == name) {
                return Err(anyhow::anyhow!(
                    "--{flag} {v:?}: {name:?} is not one of --clusters {}",
                    clusters.join(",")
                ))
                .code(Code::Config);
            }
            let parsed = value
                .parse::<T>()
                .map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
                .code(Code::Config)?;
            Ok((name.to_string(), parsed))
        })
        .collect()
}

async fn up_many(args: UpArgs) -> Result<(), Exit> {
    let removed = lab_node::cleanup_stale().context("removing a crashed lab's leftovers")?;
    if !removed.is_empty() {
        println!("removed {} namespaces left by a crashed lab", removed.len());
    }
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    let names: Vec<&str> = args.clusters.iter().map(String::as_str).collect();
    let mut opts = lab_node::MultiOptions::new("up", &names, exe)
        .context("--clusters")
        .code(Code::Config)?;
    for (i, spec) in opts.clusters.iter_mut().enumerate() {
        let port = if args.listen.port() == 0 {
            0
        } else {
            args.listen
                .port()
                .checked_add(i as u16)
                .context("--listen: port + number of clusters exceeds 65535")
                .code(Code::Config)?
        };
        spec.listen = SocketAddr::new(args.listen.ip(), port);
    }
    for (name, cidr) in
        per_cluster::<lab_net::Ipv4Net>("pod-cidr", &args.pod_cidrs, &args.clusters)?
    {
        opts.cluster_mut(&name).code(Code::Config)?.network.pod_v4 = cidr;
    }
    for (name, cidr) in
        per_cluster::<lab_net::Ipv4Net>("service-cidr", &args.service_cidrs, &args.clusters)?
    {
        opts.cluster_mut(&name)
            .code(Code::Config)?
            .network
            .service_v4 = cidr;
    }
    for (name, zone) in per_cluster::<String>("zone", &args.zones, &args.clusters)? {
        opts.cluster_mut(&name).code(Code::Config)?.zone = zone;
    }
    for (name, v) in per_cluster::<lab_api::KubeVersion>(
        "kubernetes-version",
        &args.kubernetes_versions,
        &args.clusters,
    )? {
        opts.cluster_mut(&name)
            .code(Code::Config)?
            .kubernetes_version = v;
    }
    opts.validate()
        .context("cluster ranges")
        .code(Code::Config)?;
    opts.kubeconfig = Some(match (&args.kubeconfig, &args.data_dir) {
        (Some(k), _) => k.clone(),
        (None, Some(d)) => d.join("lab.kubeconfig"),
        (None, None) => PathBuf::from("lab.kubeconfig"),
    });
    let control = match (&args.control, &args.data_dir) {
        (Some(c), _) => c.clone(),
        (None, Some(d)) => d.join("control.sock"),
        (None, None) => PathBuf::from("lab-control.sock"),
    };
    opts.data_dir = args.data_dir;
    let mc = lab_node::MultiCluster::start(opts)
        .await
        .context("starting the lab clusters (needs root, iproute2 and nftables)")
        .code(Code::Config)?;
    let path = std::path::absolute(mc.kubeconfig_path())
        .unwrap_or_else(|_| mc.kubeconfig_path().to_path_buf());
    for name in mc.names() {
        let (spec, c) = (
            mc.spec(name).expect("named"),
            mc.cluster(name).expect("named"),
        );
        println!(
            "cluster {name}: API https://{} , zone {}, pods {}, services {} (namespaces {}-*)",
            c.api_addr(),
            spec.zone,
            spec.network.pod_v4,
            spec.network.service_v4,
            c.node().prefix()
        );
    }
    let control_shown = std::path::absolute(&control).unwrap_or_else(|_| control.clone());
    println!("kubeconfig: {}", path.display());
    println!("use it:     export KUBECONFIG={}", path.display());
    println!("            kubectl --context {} get nodes", names[0]);
    println!(
        "outages:    ghostwire lab api-state --control {} {} stop|start|blackhole",
        control_shown.display(),
        names[0]
    );
    println!("Ctrl-C removes the clusters.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
        r = mc.serve_control(&control) => r.context("control socket").code(Code::Config)?,
    }
    let _ = std::fs::remove_file(&control);
    println!("stopping pods and removing the labs…");
    mc.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

async fn api_state(args: ApiStateArgs) -> Result<(), Exit> {
    let state: lab_node::ApiState = args
        .state
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{e}"))
        .code(Code::Config)?;
    let answer = lab_node::multi::send_control(&args.control, &args.cluster, state)
        .await
        .with_context(|| {
            format!(
                "no lab at control socket {} (is `lab up --clusters` running?)",
                args.control.display()
            )
        })
        .code(Code::Api)?;
    match answer.strip_prefix("error ") {
        None => {
            println!("{answer}");
            Ok(())
        }
        Some(reason) => Err(anyhow::anyhow!("{reason}")).code(Code::Config),
    }
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

async fn app_a() -> Result<(), Exit> {
    let a = mesh_apps::AppA::from_env(mesh_apps::process_env).code(Code::Config)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = a.run() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn app_b() -> Result<(), Exit> {
    let b = mesh_apps::AppB::from_env(mesh_apps::process_env).code(Code::Config)?;
    let listener = b.bind().await.code(Code::Config)?;
    println!(
        "app-b {:?} on [::]:{}, FAIL_RATE {}%",
        b.reply, b.port, b.fail_rate
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = b.serve(listener) => {}
        _ = term.recv() => {}
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
