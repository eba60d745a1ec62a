//! The lab cluster: the API server and one node, started together.

use crate::{Error, Node, NodeOptions, PodTable, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to run a lab cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Names the lab's namespaces.
    pub label: String,
    /// Where the API listens (host loopback); port 0 picks one.
    pub listen: SocketAddr,
    /// Keep API state and pod files here; a private temp dir (removed at the end) when `None`.
    pub data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig (default: in the data dir).
    pub kubeconfig: Option<PathBuf>,
    /// This build's `ghostwire` binary.
    pub ghostwire_bin: PathBuf,
    /// First restart back-off (kubelet: 10 s).
    pub backoff_initial: Duration,
}

impl ClusterOptions {
    pub fn new(label: &str, ghostwire_bin: PathBuf) -> ClusterOptions {
        ClusterOptions {
            label: label.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            kubeconfig: None,
            ghostwire_bin,
            backoff_initial: Duration::from_secs(10),
        }
    }
}

/// A running lab cluster; dropping it stops the node (killing its containers, removing its
/// namespaces) and the API.
pub struct Cluster {
    node: Option<Node>,
    api: Option<lab_api::RunningServer>,
    scratch: Option<PathBuf>,
    data_dir: PathBuf,
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let (scratch, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "gw-lab-{}-{}",
                    std::process::id(),
                    lab_net::sanitize_label(&opts.label)
                ));
                let _ = std::fs::remove_dir_all(&d);
                (Some(d.clone()), d)
            }
        };
        std::fs::create_dir_all(&data_dir).map_err(|source| Error::Io {
            what: data_dir.display().to_string(),
            source,
        })?;
        let pods = PodTable::new();
        let api = lab_api::Server::start(lab_api::Options {
            listen: opts.listen,
            data_dir: opts.data_dir.as_ref().map(|d| d.join("api")),
            kubeconfig: Some(
                opts.kubeconfig
                    .clone()
                    .unwrap_or_else(|| data_dir.join("kubeconfig")),
            ),
            pod_logs: Some(pods.logs_handle()),
            ..Default::default()
        })
        .await?;
        let client = api.client().await?;
        let node = Node::start(NodeOptions {
            client,
            label: opts.label.clone(),
            ghostwire_bin: opts.ghostwire_bin.clone(),
            api_addr: api.addr(),
            ca_pem: api.ca_pem().to_string(),
            data_dir: data_dir.join("node"),
            pods,
            backoff_initial: opts.backoff_initial,
            backoff_max: Duration::from_secs(300).max(opts.backoff_initial),
        })
        .await?;
        Ok(Cluster {
            node: Some(node),
            api: Some(api),
            scratch,
            data_dir,
        })
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node runs until shutdown")
    }

    pub fn api(&self) -> &lab_api::RunningServer {
        self.api.as_ref().expect("API runs until shutdown")
    }

    pub fn kubeconfig_path(&self) -> &Path {
        self.api().kubeconfig_path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(self.api().client().await?)
    }

    /// Stops pods (SIGTERM, up to `grace`, SIGKILL), the node and the API.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(node) = self.node.take() {
            node.shutdown(grace).await;
        }
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.node.take());
        drop(self.api.take());
        if let Some(d) = &self.scratch {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What a crashed run left behind: processes in lab namespaces whose owner is gone are killed,
/// then those namespaces are removed. Returns the namespaces removed.
pub fn cleanup_stale() -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let stale: Vec<String> = netns::Netns::list()
        .map_err(lab_net::Error::from)?
        .into_iter()
        .filter(|n| {
            lab_net::owner_pid(n).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    let inodes: Vec<(u64, u64)> = stale
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new(netns::NETNS_RUN_DIR).join(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let mut killed = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.filter_map(|e| e.ok()) {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(m) = std::fs::metadata(p.path().join("ns/net"))
                && inodes.contains(&(m.dev(), m.ino()))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.push(pid);
            }
        }
    }
    // SIGKILL is delivered asynchronously: wait (bounded) until each is dead or a zombie.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while killed.iter().any(|p| running(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(lab_net::cleanup_stale()?)
}

/// Whether a process exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}
