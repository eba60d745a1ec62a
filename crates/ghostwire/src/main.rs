//! `ghostwire`: one binary, one subcommand per container role.
//!
//! This crate only parses the command line, sets up logging and dispatches
//! to the capability libraries; the work lives in those crates.

mod attach;
mod controller;
#[cfg(feature = "lab")]
mod demo;
mod exit;
mod gateway;
mod identity;
mod init;
mod injector;
mod knobs;
#[cfg(feature = "lab")]
mod lab;
mod logging;
mod mirror;
mod proxy;
mod proxy_init;
mod watcher;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ghostwire",
    version,
    about = "Steers Kubernetes pod traffic from inside the pod's own network namespace",
    long_about = None,
)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Preview switch init container: pair Services and build the DNAT chain.
    Init(init::InitArgs),
    /// Preview switch sidecar: follow the Pod's role label and flip the jump.
    Watcher(watcher::WatcherArgs),
    /// Mesh init container: redirect the Pod's TCP to its proxy (or `--validate` that it is).
    ProxyInit(proxy_init::ProxyInitArgs),
    /// Egress gateway Pod: `init` (kill switch, NAT, forwards, vxlan0), `sidecar` (DHCP).
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Egress gateway client Pod: `init` (route through the gateway), `sidecar` (probe, heal).
    #[command(subcommand)]
    Client(gateway::ClientCommand),
    /// Mesh sidecar: the transparent proxy (inbound and outbound), with admin on 4191.
    Proxy(proxy::ProxyArgs),
    /// Mesh control plane: streams routing config to the proxies over gRPC (ghostwire.mesh.v1).
    Controller(controller::ControllerArgs),
    /// Pod identity: a certificate from the mesh CA for each opted-in Pod, in a Secret the Pod owns.
    Identity(identity::IdentityArgs),
    /// Attach the identity agent to a running Pod (an ephemeral container; nothing restarts).
    Attach(Box<attach::AttachArgs>),
    /// What `attach` runs in the Pod: redirects its outbound TCP to a supervised proxy.
    #[command(hide = true)]
    IdentityAgent(Box<attach::AgentArgs>),
    /// Mutating admission webhook: adds the containers each workload's ghostwire.dev/* annotations ask for.
    Injector(Box<injector::InjectorArgs>),
    /// Service mirror: remote clusters' Services and endpoints mirrored locally; global Services.
    Mirror(Box<mirror::MirrorArgs>),
    /// Show each capability end to end in a lab cluster on this machine (needs root).
    #[cfg(feature = "lab")]
    Demo(demo::DemoArgs),
    /// Lab: an embedded Kubernetes API and pods as network namespaces on this machine.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log) {
        eprintln!("ghostwire: {e}");
        return exit::Code::Config.into();
    }
    // The proxy sizes its own runtime (a sidecar's CPU budget); everything else takes one
    // worker per core.
    let runtime = match &cli.command {
        Command::Proxy(args) => match proxy::settings(args) {
            Ok(s) => proxy::runtime(&s),
            Err(e) => return exit::report(Err(e)),
        },
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ghostwire: cannot start the async runtime: {e}");
            return exit::Code::Failure.into();
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init(args) => init::run(args).await,
            Command::Watcher(args) => watcher::run(args).await,
            Command::Injector(args) => injector::run(*args).await,
            Command::ProxyInit(args) => proxy_init::run(args).await,
            Command::Gateway(cmd) => gateway::run_gateway(cmd).await,
            Command::Client(cmd) => gateway::run_client(cmd).await,
            Command::Mirror(args) => mirror::run(*args).await,
            Command::Proxy(args) => proxy::run(proxy::settings(&args)?).await,
            Command::Controller(args) => controller::run(args).await,
            Command::Identity(args) => identity::run(args).await,
            Command::Attach(args) => attach::attach(*args).await,
            Command::IdentityAgent(args) => attach::agent(*args).await,
            #[cfg(feature = "lab")]
            Command::Demo(args) => demo::run(args).await,
            #[cfg(feature = "lab")]
            Command::Lab(cmd) => lab::run(cmd).await,
        }
    });
    exit::report(result)
}
