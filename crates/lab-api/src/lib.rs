//! The lab's Kubernetes API server: a small, faithful stand-in for kube-apiserver, served over
//! HTTPS with its own CA, for `ghostwire lab`, `ghostwire demo` and every API-facing test.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lab_api::Error> {
//! let server = lab_api::Server::start(lab_api::Options::default()).await?;
//! let client = server.client().await?;
//! # let _ = client; Ok(()) }
//! ```
//!
//! Where it differs from a real API server, the real one is right; what it leaves out it refuses
//! with the status a real server would give.
#![forbid(unsafe_code)]

mod admission;
mod api;
mod authn;
mod authz;
pub mod clock;
mod crd;
mod discovery;
pub mod events;
mod http;
pub mod kubectl_create;
mod openapi;
mod patch;
mod persist;
mod pki;
mod pod_logs;
mod proto;
mod rbac;
mod resources;
mod scale;
mod selectors;
mod serial;
mod server;
mod ssa;
mod status;
mod store;
mod stream;
mod table;
mod typed;
mod validation;
mod watch;

pub use discovery::{BadVersion, KubeVersion};
pub use pod_logs::{LogRequest, PodLogError, PodLogs, PodLogsHandle};
pub use server::RunningServer;
pub use stream::{ExecRequest, ExecStreams, Kind as StreamKind, PodStreams, PodStreamsHandle};
pub use validation::ServiceCidrs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Keep state (objects and PKI) here across restarts; in memory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig; a private temp dir (removed on drop) when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Serves `pods/{name}/log` (the lab node); without one, log requests are refused.
    pub pod_logs: Option<PodLogsHandle>,
    /// Where ClusterIPs come from (default 10.96.0.0/12 and fd00:10:96::/108); the first IPv4
    /// address is the `kubernetes` Service's.
    pub service_cidrs: ServiceCidrs,
    /// Serves `pods/{name}/exec`, `attach` and `portforward` (the lab node); without one, those
    /// requests are refused.
    pub pod_streams: Option<PodStreamsHandle>,
    /// Authorize requests with RBAC (the default); without it every authenticated request is
    /// allowed (for comparing the cost of authorization).
    pub rbac: bool,
    /// The version `/version` reports (the API served is 1.33's whatever it says).
    pub kubernetes_version: KubeVersion,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            kubeconfig: None,
            bookmark_interval: Duration::from_secs(15),
            pod_logs: None,
            service_cidrs: ServiceCidrs::default(),
            pod_streams: None,
            rbac: true,
            kubernetes_version: KubeVersion::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("data dir: {0}")]
    Store(#[from] store::StoreError),
    #[error("building a client: {0}")]
    Client(String),
}

/// Entry point: `Server::start(options)`.
pub struct Server;

impl Server {
    pub async fn start(opts: Options) -> Result<RunningServer, Error> {
        RunningServer::start(opts).await
    }
}
