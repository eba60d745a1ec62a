//! `ghostwire mirror`: the service mirror's entry (flags and `SSM_*` env over the JSON config).

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{KnobArgs, Mirror};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::sync::Arc;

#[derive(Args)]
pub struct MirrorArgs {
    #[command(subcommand)]
    command: Option<MirrorCommand>,
    #[command(flatten)]
    knobs: KnobArgs<Mirror>,
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Print the CoreDNS server blocks for the configured remotes and cluster.global.
    CorednsConfig(KnobArgs<Mirror>),
}

/// The file with the `SSM_*` values given by flag or env on top.
fn settings(
    given: &std::collections::BTreeMap<String, String>,
) -> Result<(mirror::config::Settings, mirror::config::RunKnobs), Exit> {
    let knobs = mirror::config::RunKnobs::resolve(given).code(Code::Config)?;
    let overrides = mirror::config::Overrides::from_given(given);
    let settings = mirror::config::Settings::load(&knobs.config, &overrides).code(Code::Config)?;
    Ok((settings, knobs))
}

pub async fn run(args: MirrorArgs) -> Result<(), Exit> {
    let mut given = args.knobs.0;
    if let Some(MirrorCommand::CorednsConfig(sub)) = args.command {
        given.extend(sub.0);
        let (settings, _) = settings(&given)?;
        print!("{}", mirror::coredns::render(&settings));
        return Ok(());
    }
    let (settings, args) = settings(&given)?;
    let local_access = settings
        .local_kubeconfig
        .clone()
        .map(mirror::config::Access::Kubeconfig);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(mirror::metrics::Metrics::new(&mut registry));
    let local = mirror::access::client_for(
        &settings.local_name,
        local_access.as_ref(),
        metrics.clone(),
        args.ca_refresh,
    )
    .await
    .code(Code::Config)?;
    let mut remotes = Vec::new();
    for r in &settings.remotes {
        remotes.push(
            mirror::access::client_for(&r.name, Some(&r.access), metrics.clone(), args.ca_refresh)
                .await
                .code(Code::Config)?,
        );
    }
    let lease = args.lease.clone().map(|name| mirror::lease::LeaseConfig {
        namespace: settings.mirror_namespace.clone(),
        name,
        identity: args.identity.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "mirror".into()),
                std::process::id()
            )
        }),
        duration: args.lease_duration,
    });
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
