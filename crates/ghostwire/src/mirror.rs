//! `ghostwire mirror`: the service mirror's entry (flags and `SSM_*` env over the JSON config).

use crate::exit::{Code, Exit, WithCode};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    mirror::config::parse_duration("value", &serde_json::Value::String(s.into()))
        .map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct MirrorArgs {
    #[command(subcommand)]
    command: Option<MirrorCommand>,
    /// The JSON config (the seed's format: global, localCluster, remoteClusters).
    #[arg(long, env = "SSM_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The local cluster's kubeconfig; in-cluster when neither this nor the file gives one.
    #[arg(long, env = "SSM_KUBE_CONFIG")]
    kube_config: Option<String>,
    /// The namespace mirrors are written to (over global.mirrorNamespace).
    #[arg(long, env = "SSM_MIRROR_NS")]
    mirror_ns: Option<String>,
    /// Services to mirror, `key=value[,…]` (over global.mirrorSvcLabelSelector).
    #[arg(long, env = "SSM_MIRROR_SVC_LABEL_SELECTOR")]
    mirror_svc_label_selector: Option<String>,
    /// Services to gather into global Services (over global.globalSvcLabelSelector).
    #[arg(long, env = "SSM_GLOBAL_SVC_LABEL_SELECTOR")]
    global_svc_label_selector: Option<String>,
    /// Global sources that ask for topology-aware routing (over
    /// global.globalSvcRoutingStrategyLabel).
    #[arg(long, env = "SSM_GLOBAL_SVC_TOPOLOGY_LABEL")]
    global_svc_routing_strategy_label: Option<String>,
    /// /healthz, /readyz and /metrics.
    #[arg(long, env = "GW_MIRROR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// A remote that does not answer for this long leaves the global Services.
    #[arg(long, env = "GW_MIRROR_FAILOVER_GRACE", default_value = "30s", value_parser = duration)]
    failover_grace: Duration,
    /// How often each remote API is probed.
    #[arg(long, env = "GW_MIRROR_PROBE_INTERVAL", default_value = "5s", value_parser = duration)]
    probe_interval: Duration,
    /// Reconcile at least this often (0: only on changes).
    #[arg(long, env = "GW_MIRROR_RESYNC", default_value = "60s", value_parser = duration)]
    resync: Duration,
    /// Lease name for leader election among replicas (empty: no election, this replica writes).
    #[arg(long, env = "GW_MIRROR_LEASE", default_value = "ghostwire-mirror")]
    lease: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease holds without renewal.
    #[arg(long, env = "GW_MIRROR_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    lease_duration: Duration,
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Print the CoreDNS server blocks for the configured remotes and cluster.global.
    CorednsConfig,
}

fn settings(args: &MirrorArgs) -> Result<mirror::config::Settings, Exit> {
    let path = args
        .config
        .as_ref()
        .context("--config (SSM_CONFIG) is required: the JSON config file")
        .code(Code::Config)?;
    let overrides = mirror::config::Overrides {
        kube_config: args.kube_config.clone(),
        mirror_ns: args.mirror_ns.clone(),
        mirror_svc_label_selector: args.mirror_svc_label_selector.clone(),
        global_svc_label_selector: args.global_svc_label_selector.clone(),
        global_svc_routing_strategy_label: args.global_svc_routing_strategy_label.clone(),
    };
    mirror::config::Settings::load(path, &overrides).code(Code::Config)
}

pub async fn run(args: MirrorArgs) -> Result<(), Exit> {
    let settings = settings(&args)?;
    if let Some(MirrorCommand::CorednsConfig) = args.command {
        print!("{}", mirror::coredns::render(&settings));
        return Ok(());
    }
    let local_access = settings
        .local_kubeconfig
        .clone()
        .map(mirror::config::Access::Kubeconfig);
    let local = mirror::run::client_for(&settings.local_name, local_access.as_ref())
        .await
        .code(Code::Config)?;
    let mut remotes = Vec::new();
    for r in &settings.remotes {
        remotes.push(
            mirror::run::client_for(&r.name, Some(&r.access))
                .await
                .code(Code::Config)?,
        );
    }
    let lease = (!args.lease.is_empty()).then(|| mirror::lease::LeaseConfig {
        namespace: settings.mirror_namespace.clone(),
        name: args.lease.clone(),
        identity: args.identity.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "mirror".into()),
                std::process::id()
            )
        }),
        duration: args.lease_duration,
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(mirror::metrics::Metrics::new(&mut registry));
    let health = Arc::new(mirror::run::MirrorHealth::default());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))
        .code(Code::Config)?;
    let admin_health: Arc<dyn admin::Health> = health.clone();
    let admin = tokio::spawn(admin::serve(
        listener,
        Arc::new(registry),
        admin_health,
        std::future::pending(),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tracing::info!(
        remotes = settings.remotes.len(),
        namespace = settings.mirror_namespace,
        "service mirror starting"
    );
    mirror::run::run(
        settings,
        mirror::run::RunOptions {
            local,
            remotes,
            failover_grace: args.failover_grace,
            probe_interval: args.probe_interval,
            lease,
            resync: args.resync,
        },
        metrics,
        health,
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        },
    )
    .await;
    admin.abort();
    Ok(())
}
