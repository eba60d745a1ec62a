//! `ghostwire injector`: the mutating admission webhook that adds each capability's
//! containers to opted-in Pods.

use crate::exit::{Code, Exit, WithCode};
use clap::Args;
use injector::preview_switch::{PreviewSwitch, Sidecars};
use injector::tls::{CertFiles, service_names};
use injector::{Config, TlsMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    switch::config::parse_duration(s)
}

#[derive(Args, Debug)]
pub struct InjectorArgs {
    /// HTTPS address of the webhook (`/mutate`, `/healthz`).
    #[arg(long, env = "GW_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address of `/healthz` and `/metrics`.
    #[arg(long, env = "GW_INJECTOR_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Serving certificate (PEM chain), e.g. cert-manager's `tls.crt`; reloaded when it changes.
    #[arg(
        long,
        env = "GW_INJECTOR_TLS_CERT",
        default_value = "/etc/ghostwire/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// Private key of the serving certificate (PEM), e.g. `tls.key`.
    #[arg(
        long,
        env = "GW_INJECTOR_TLS_KEY",
        default_value = "/etc/ghostwire/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// How often to check the certificate files for a change.
    #[arg(long, env = "GW_INJECTOR_TLS_RELOAD", default_value = "10s", value_parser = duration)]
    pub tls_reload: Duration,
    /// Make a CA and serving certificate at start instead of reading files, and write the CA
    /// into the MutatingWebhookConfiguration's caBundle (one replica only).
    #[arg(long, env = "GW_INJECTOR_SELF_SIGNED")]
    pub self_signed: bool,
    /// Extra names (DNS or IP) for the self-signed certificate, comma-separated.
    #[arg(long, env = "GW_INJECTOR_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle `--self-signed` keeps current.
    #[arg(
        long,
        env = "GW_INJECTOR_WEBHOOK_CONFIG",
        default_value = "ghostwire-injector"
    )]
    pub webhook_config: String,
    /// The injector's Service, for the self-signed certificate's names.
    #[arg(
        long,
        env = "GW_INJECTOR_SERVICE",
        default_value = "ghostwire-injector"
    )]
    pub service: String,
    /// The injector's own namespace (set from the downward API in deploy/).
    #[arg(
        long,
        env = "GW_INJECTOR_NAMESPACE",
        default_value = "ghostwire-system"
    )]
    pub namespace: String,
    /// ConfigMap (in the injector's namespace) of `GW_*` defaults below the annotations.
    /// Empty: built-in defaults only.
    #[arg(
        long,
        env = "GW_INJECTOR_DEFAULTS_CONFIGMAP",
        default_value = "ghostwire-defaults"
    )]
    pub defaults_configmap: String,
    /// How long one read of the defaults ConfigMap, or of a Pod's owner, is reused.
    #[arg(long, env = "GW_INJECTOR_DEFAULTS_TTL", default_value = "10s", value_parser = duration)]
    pub defaults_ttl: Duration,
    /// Image of the injected `ghostwire init` and `ghostwire watcher` containers.
    #[arg(
        long,
        env = "GW_INJECTOR_IMAGE",
        default_value = "ghcr.io/ghostwire/ghostwire:latest"
    )]
    pub image: String,
    /// imagePullPolicy of the injected containers.
    #[arg(long, env = "GW_INJECTOR_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub pull_policy: String,
    /// Port of the injected watcher's `/healthz`, `/readyz`, `/metrics` (its readiness probe).
    #[arg(long, env = "GW_INJECTOR_WATCHER_PORT", default_value_t = 8081)]
    pub watcher_port: u16,
    /// Inject the watcher as a native sidecar (init container with `restartPolicy: Always`
    /// and a startup probe on `/readyz`): `auto` asks the API server once with a dry-run,
    /// `always` and `never` force it.
    #[arg(long, env = "GW_INJECTOR_NATIVE_SIDECARS", default_value = "auto",
          value_parser = ["auto", "always", "never"])]
    pub native_sidecars: String,
    /// Connections served at once on each listener; more wait in the kernel's backlog.
    #[arg(long, env = "GW_INJECTOR_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: u32,
    /// A client has this long for the TLS handshake, and then for each request's headers.
    #[arg(long, env = "GW_INJECTOR_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// On SIGTERM, how long the requests in flight get to finish.
    #[arg(long, env = "GW_INJECTOR_DRAIN_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// A Pod whose owners (ReplicaSet, Deployment, …) cannot be read and that asks for nothing
    /// by its own annotations: `admit` it unchanged with a warning (an API hiccup does not
    /// block Pods that never opted in), or `fail` the review (the failurePolicy decides).
    #[arg(long, env = "GW_INJECTOR_OWNER_READ_FAILURE", default_value = "admit")]
    pub owner_read_failure: injector::review::OwnerReadFailure,
}

impl InjectorArgs {
    fn config(self) -> Config {
        let tls = if self.self_signed {
            let mut names = service_names(&self.service, &self.namespace);
            names.extend(self.tls_san);
            TlsMode::SelfSigned {
                names,
                webhook_config: self.webhook_config,
                recheck_every: Duration::from_secs(60),
            }
        } else {
            TlsMode::Files {
                files: CertFiles {
                    cert: self.tls_cert,
                    key: self.tls_key,
                },
                reload_every: self.tls_reload,
            }
        };
        Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            tls,
            namespace: self.namespace,
            defaults_configmap: Some(self.defaults_configmap).filter(|n| !n.is_empty()),
            defaults_ttl: self.defaults_ttl,
            preview_switch: PreviewSwitch {
                image: self.image,
                pull_policy: self.pull_policy,
                watcher_port: self.watcher_port,
                sidecars: match self.native_sidecars.as_str() {
                    "always" => Sidecars::forced(true),
                    "never" => Sidecars::forced(false),
                    _ => Sidecars::auto(),
                },
            },
            limits: injector::server::Limits {
                header_read_timeout: self.header_read_timeout,
                max_connections: self.max_connections,
                drain_timeout: self.drain_timeout,
                ..Default::default()
            },
            owner_read_failure: self.owner_read_failure,
        }
    }
}

/// Resolves when the process is asked to stop (SIGTERM from the kubelet, or Ctrl-C).
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run(args: InjectorArgs) -> Result<(), Exit> {
    let client = kube_util::client().await.code(Code::Api)?;
    let running = injector::start(args.config(), client)
        .await
        .map_err(|e| match e {
            injector::Error::Listen { .. } => Exit::from(e),
            e => Exit {
                code: Code::Config,
                error: e.into(),
            },
        })?;
    stop_signal().await;
    tracing::info!("stopping");
    running.stop().await;
    Ok(())
}
