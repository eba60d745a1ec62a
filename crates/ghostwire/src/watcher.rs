//! `ghostwire watcher`: the preview switch's sidecar.

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::KnobArgs;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use switch::watcher::{self, Health, Kernel, Metrics, Options, Stopped};

#[derive(Args, Debug)]
pub struct WatcherArgs {
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Defaults file: KEY=VALUE lines, or a directory with one file per key (a mounted ConfigMap).
    #[arg(long, env = "GW_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// This Pod's name (downward API `metadata.name`).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// This Pod's namespace (downward API `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    /// Manage the rules of this named network namespace (/run/netns/NAME) instead of the
    /// watcher's own, as an agent outside the pod would.
    #[arg(long, env = "GW_NETNS", value_name = "NAME")]
    pub netns: Option<String>,
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives early must not kill the process with the
/// default action (the watcher leaves the rules as they are and exits 0).
pub(crate) fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term.take()) => {}
            _ = wait(int.take()) => {}
        }
    }
}

pub async fn run(args: WatcherArgs) -> Result<(), Exit> {
    let shutdown = signal();
    let netns = match &args.netns {
        Some(name) => Some(
            netns::Netns::open(name)
                .with_context(|| format!("GW_NETNS={name:?}: cannot open the network namespace"))
                .code(Code::Config)?,
        ),
        None => None,
    };
    let settings = crate::init::settings(&args.knobs, args.config.as_ref(), netns.as_ref())?;
    let backend = if settings.mode == switch::config::Mode::Mesh {
        // Mesh mode touches no rules; the backend is never used (and the container may
        // have no NET_ADMIN to detect one).
        netrules::Backend::new(netrules::BackendKind::Nftables)
    } else {
        let s = settings.clone();
        match &netns {
            // Detect the backend where the rules live.
            Some(ns) => ns
                .run(move || switch::init::backend(&s))
                .context("entering the network namespace")
                .code(Code::Kernel)?,
            None => switch::init::backend(&s),
        }
        .code(Code::Kernel)?
    };
    // Every read is bounded, so a half-open connection to the API cannot hold the watcher.
    let client = kube_util::client_with_read_timeout(watcher::read_timeout(&settings))
        .await
        .code(Code::Api)?;

    let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
    let metrics = Metrics::new(&mut registry);
    let health = Health::default();
    let listener = watcher::listen(settings.http_addr)
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("GW_HTTP_ADDR={}: cannot listen", settings.http_addr))
        .code(Code::Config)?;
    let addr = listener.local_addr().context("admin address")?;
    tracing::info!(%addr, "admin endpoints listening (/healthz, /readyz, /metrics)");
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(
        listener,
        Arc::new(registry),
        Arc::new(health.clone()),
        async {
            let _ = admin_stopped.await;
        },
    ));
    tracing::info!(
        pod = %args.pod_name,
        namespace = %args.pod_namespace,
        backend = %backend,
        chain = %settings.nat_chain,
        hook = settings.jump_hook.iptables_chain(),
        "watching the Pod's role label"
    );
    let opts = Options {
        settings,
        pod_name: args.pod_name,
        pod_namespace: args.pod_namespace,
        kernel: Kernel { backend, netns },
    };
    let stopped = watcher::run(opts, client, metrics, health, shutdown).await;
    let _ = stop_admin.send(());
    let _ = admin.await;
    match stopped {
        Stopped::Shutdown => tracing::info!("stopped by signal"),
        Stopped::PodDeleted => tracing::info!("stopped: the Pod is gone"),
    }
    Ok(())
}
