//! ghostwire's mutating admission webhook: one webhook for every capability. A Pod CREATE is
//! answered with a JSON Patch that adds the init containers, sidecars, volumes and env of each
//! capability its workload's `ghostwire.dev/*` annotations ask for.
//!
//! AdmissionReview → effective settings (Pod annotations over owner annotations over the
//! defaults ConfigMap over built-ins) → [`capability::Capability`] patches → response.
//!
//! ```no_run
//! # async fn demo(client: kube::Client, config: injector::Config) -> Result<(), injector::Error> {
//! let running = injector::start(config, client).await?;
//! println!("webhook on https://{}/mutate", running.webhook_addr);
//! running.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod capability;
pub mod defaults;
pub mod gateway_client;
pub mod health;
pub mod mesh;
pub mod metrics;
pub mod owner;
pub mod preview_switch;
pub mod review;
pub mod server;
pub mod sidecars;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// Mounted files (cert-manager's Secret), reloaded when they change.
    Files {
        files: tls::CertFiles,
        reload_every: Duration,
    },
    /// A CA and certificate made at start-up for `names` (see [`tls::service_names`]); the CA
    /// goes into the MutatingWebhookConfiguration's `caBundle`. One replica only: each
    /// replica would make its own CA.
    SelfSigned {
        names: Vec<String>,
        webhook_config: String,
        recheck_every: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// HTTPS listener of `/mutate` and `/healthz`.
    pub listen: SocketAddr,
    /// Plain-HTTP listener of `/healthz` and `/metrics`.
    pub admin_listen: SocketAddr,
    pub tls: TlsMode,
    /// The injector's own namespace (of the defaults ConfigMap and the Service).
    pub namespace: String,
    /// Name of the defaults ConfigMap; `None`: built-in defaults only.
    pub defaults_configmap: Option<String>,
    /// How long a read of the defaults ConfigMap, or of a Pod's owner, is reused.
    pub defaults_ttl: Duration,
    /// The preview switch's images and ports.
    pub preview_switch: preview_switch::PreviewSwitch,
    /// Bounds of the HTTP edge (header time, connections, drain) and of the API's grace.
    pub limits: server::Limits,
    /// A Pod whose owners cannot be read and that asks for nothing by itself: admit or fail.
    pub owner_read_failure: review::OwnerReadFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving certificate: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started injector; [`Running::stop`] ends it.
pub struct Running {
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The CA to trust (self-signed mode only).
    pub ca_pem: Option<String>,
    shutdown: watch::Sender<bool>,
    health: Arc<health::Health>,
    /// The two listeners.
    servers: JoinSet<()>,
    /// Background work (certificate reloads, caBundle, detection, API checks).
    tasks: JoinSet<()>,
}

impl Running {
    /// Drains: `/healthz` says so, new connections are refused, the requests in flight finish
    /// (for up to [`server::Limits::drain_timeout`]); then background work stops.
    pub async fn stop(mut self) {
        self.health.draining();
        let _ = self.shutdown.send(true);
        while self.servers.join_next().await.is_some() {}
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })
}

/// Loads or makes the certificate, binds both listeners and starts serving.
pub async fn start(config: Config, client: kube::Client) -> Result<Running, Error> {
    let mut tasks = JoinSet::new();
    let (certs, ca_pem, ca_bundle) = match &config.tls {
        TlsMode::Files {
            files,
            reload_every,
        } => {
            let certs = tls::Reloading::new(files.load()?);
            tasks.spawn(certs.clone().follow(files.clone(), *reload_every));
            (certs, None, None)
        }
        TlsMode::SelfSigned {
            names,
            webhook_config,
            recheck_every,
        } => {
            let made = tls::SelfSigned::generate(names.clone())?;
            (
                tls::Reloading::new(made.certified_key()?),
                Some(made.ca_pem),
                Some((webhook_config.clone(), *recheck_every)),
            )
        }
    };
    let health = health::Health::new(certs.clone(), config.limits.api_grace);
    if let (Some(ca), Some((webhook_config, every))) = (&ca_pem, ca_bundle) {
        health.ca_bundle(Err("not written yet".into()));
        tasks.spawn(tls::keep_ca_bundle(
            client.clone(),
            webhook_config,
            ca.clone(),
            every,
            health.clone(),
        ));
    }
    tasks.spawn(health::keep_checking_api(
        client.clone(),
        health.clone(),
        config.limits.api_check_every,
    ));
    let tls_config = tls::server_config(certs)?;
    let webhook = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let webhook_addr = webhook.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| Error::Listen {
        addr: config.admin_listen,
        source,
    })?;

    if config.preview_switch.sidecars.needs_detection() {
        tasks.spawn(sidecars::keep_detecting(
            client.clone(),
            config.namespace.clone(),
            config.preview_switch.image.clone(),
            config.preview_switch.sidecars.clone(),
        ));
    }
    let defaults = defaults::Defaults::new(
        client.clone(),
        &config.namespace,
        config.defaults_configmap.clone(),
        config.defaults_ttl,
    );
    // The order here is the documented container order (see `capability::PodPatch`).
    let capabilities: Vec<Box<dyn capability::Capability>> = vec![
        Box::new(gateway_client::GatewayClient {
            image: config.preview_switch.image.clone(),
            pull_policy: config.preview_switch.pull_policy.clone(),
            cluster_domain: "cluster.local".into(),
            cluster_dns: std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| {
                    gateway::client::resolv_nameservers(&t)
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        }),
        Box::new(config.preview_switch.clone()),
        Box::new(mesh::Mesh {
            image: config.preview_switch.image.clone(),
            pull_policy: config.preview_switch.pull_policy.clone(),
        }),
    ];
    let app = Arc::new(server::App {
        injector: review::Injector::new(
            capabilities,
            owner::Owners::new(client, config.defaults_ttl),
            defaults,
            config.owner_read_failure,
        ),
        metrics: metrics::Metrics::default(),
        health: health.clone(),
    });
    let (shutdown, stop) = watch::channel(false);
    let mut servers = JoinSet::new();
    servers.spawn(server::serve(
        webhook,
        Some(tls_config),
        app.clone(),
        server::Routes::Webhook,
        config.limits.clone(),
        stop.clone(),
    ));
    servers.spawn(server::serve(
        admin,
        None,
        app,
        server::Routes::Admin,
        config.limits.clone(),
        stop,
    ));
    tracing::info!(%webhook_addr, %admin_addr, "injector serving");
    Ok(Running {
        webhook_addr,
        admin_addr,
        ca_pem,
        shutdown,
        health,
        servers,
        tasks,
    })
}
