//! The lab cluster: the API server and one node, started together.

use crate::gate::{ApiState, Gate};
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
    /// Pod and Service ranges (the API allocates ClusterIPs from the latter).
    pub network: lab_net::Network,
    /// The node's `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// Put a [`Gate`] in front of the API (at `listen`), so it can be stopped, started and
    /// black-holed ([`Cluster::set_api`]); the node and the kubeconfig go through it too.
    pub gated: bool,
    /// The names of the kubeconfig's cluster, context and user (`<name>-admin`); "lab" when
    /// `None`.
    pub context: Option<String>,
    /// Where cluster DNS forwards names outside `cluster.local` (default: nowhere, REFUSED).
    pub dns_upstream: Option<SocketAddr>,
    /// The node's resolv.conf for `dnsPolicy: Default` pods (default: none, so such pods
    /// resolve nothing; pass the host's `/etc/resolv.conf` to use the host's resolver).
    pub node_resolv_conf: Option<PathBuf>,
    /// What the API's `/version` reports (default 1.33; the API served stays 1.33's).
    pub kubernetes_version: lab_api::KubeVersion,
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
            network: lab_net::Network::default(),
            zone: None,
            gated: false,
            context: None,
            dns_upstream: None,
            node_resolv_conf: None,
            kubernetes_version: lab_api::KubeVersion::default(),
        }
    }
}

/// A running lab cluster; dropping it stops the node (killing its containers, removing its
/// namespaces) and the API.
pub struct Cluster {
    node: Option<Node>,
    gate: Option<Gate>,
    api: Option<lab_api::RunningServer>,
    kubeconfig: PathBuf,
    /// A field, so that it is removed after `Drop::drop` has stopped the node and the API.
    _scratch: Scratch,
    data_dir: PathBuf,
}

/// The cluster's own directory in the temp dir (when no data dir is given), removed when
/// dropped: with the [`Cluster`], or by [`Cluster::start`] when it fails or is cancelled half
/// way (Ctrl-C while the lab comes up).
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let (scratch, data_dir) = match &opts.data_dir {
            Some(d) => (Scratch(None), d.clone()),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "gw-lab-{}-{}",
                    std::process::id(),
                    lab_net::sanitize_label(&opts.label)
                ));
                let _ = std::fs::remove_dir_all(&d);
                (Scratch(Some(d.clone())), d)
            }
        };
        std::fs::create_dir_all(&data_dir).map_err(|source| Error::Io {
            what: data_dir.display().to_string(),
            source,
        })?;
        let node_resolv_conf = match &opts.node_resolv_conf {
            Some(p) => std::fs::read_to_string(p).map_err(|source| Error::Io {
                what: format!("node resolv.conf {}", p.display()),
                source,
            })?,
            None => String::new(),
        };
        let pods = PodTable::new();
        let kubeconfig = opts
            .kubeconfig
            .clone()
            .unwrap_or_else(|| data_dir.join("kubeconfig"));
        let net = &opts.network;
        let api = lab_api::Server::start(lab_api::Options {
            listen: if opts.gated {
                SocketAddr::new(opts.listen.ip(), 0)
            } else {
                opts.listen
            },
            data_dir: opts.data_dir.as_ref().map(|d| d.join("api")),
            kubeconfig: Some(if opts.gated {
                data_dir.join("api-direct.kubeconfig")
            } else {
                kubeconfig.clone()
            }),
            pod_logs: Some(pods.logs_handle()),
            service_cidrs: lab_api::ServiceCidrs {
                v4: (net.service_v4.network(), net.service_v4.prefix_len()),
                v6: (net.service_v6.network(), net.service_v6.prefix_len()),
            },
            pod_streams: Some(pods.streams_handle()),
            kubernetes_version: opts.kubernetes_version,
            ..Default::default()
        })
        .await?;
        let gate = if opts.gated {
            Some(
                Gate::start(opts.listen, api.addr())
                    .await
                    .map_err(|source| Error::Io {
                        what: format!("API gate on {}", opts.listen),
                        source,
                    })?,
            )
        } else {
            None
        };
        let public = gate.as_ref().map_or(api.addr(), Gate::addr);
        if gate.is_some() || opts.context.is_some() {
            let kc = read_kubeconfig(api.kubeconfig_path())?;
            let name = opts.context.as_deref().unwrap_or("lab");
            let kc = renamed(kc, name, &format!("https://{public}"));
            write_kubeconfig(&kubeconfig, &kc)?;
        }
        let mut config = api.kube_config().await?;
        config.cluster_url = format!("https://{public}")
            .parse()
            .map_err(|e| lab_api::Error::Client(format!("API URL: {e}")))?;
        let client =
            kube::Client::try_from(config).map_err(|e| lab_api::Error::Client(e.to_string()))?;
        let node = Node::start(NodeOptions {
            client,
            label: opts.label.clone(),
            ghostwire_bin: opts.ghostwire_bin.clone(),
            api_addr: public,
            ca_pem: api.ca_pem().to_string(),
            data_dir: data_dir.join("node"),
            pods,
            backoff_initial: opts.backoff_initial,
            backoff_max: Duration::from_secs(300).max(opts.backoff_initial),
            network: opts.network,
            zone: opts.zone.clone(),
            dns_upstream: opts
                .dns_upstream
                .map_or(lab_dns::Upstream::None, lab_dns::Upstream::Forward),
            node_resolv_conf,
        })
        .await?;
        Ok(Cluster {
            node: Some(node),
            gate,
            api: Some(api),
            kubeconfig,
            _scratch: scratch,
            data_dir,
        })
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node runs until shutdown")
    }

    pub fn api(&self) -> &lab_api::RunningServer {
        self.api.as_ref().expect("API runs until shutdown")
    }

    /// The admin kubeconfig (through the gate when there is one).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where clients reach the API (the gate's address when there is one).
    pub fn api_addr(&self) -> SocketAddr {
        self.gate.as_ref().map_or(self.api().addr(), Gate::addr)
    }

    /// Stops, starts or black-holes the API as clients see it; `Err` without a gate.
    pub fn set_api(&self, state: ApiState) -> Result<()> {
        match &self.gate {
            Some(g) => {
                tracing::info!(api = %g.addr(), %state, "lab API");
                g.set(state);
                Ok(())
            }
            None => Err(Error::Io {
                what: "changing the API's state".into(),
                source: std::io::Error::other("the cluster was started without a gate"),
            }),
        }
    }

    /// [`ApiState::Up`] without a gate.
    pub fn api_state(&self) -> ApiState {
        self.gate.as_ref().map_or(ApiState::Up, Gate::state)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// An admin client (through the gate when there is one).
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = read_kubeconfig(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| lab_api::Error::Client(e.to_string()))?;
        Ok(kube::Client::try_from(config).map_err(|e| lab_api::Error::Client(e.to_string()))?)
    }

    /// Stops pods (SIGTERM, up to `grace`, SIGKILL), the node and the API.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(node) = self.node.take() {
            node.shutdown(grace).await;
        }
        drop(self.gate.take());
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.node.take());
        drop(self.gate.take());
        drop(self.api.take());
    }
}

pub(crate) fn read_kubeconfig(path: &Path) -> Result<kube::config::Kubeconfig> {
    kube::config::Kubeconfig::read_from(path)
        .map_err(|e| lab_api::Error::Client(format!("{}: {e}", path.display())).into())
}

/// The kubeconfig with its (single) cluster, context and user named `name`, `name`,
/// `<name>-admin`, pointing at `server`.
pub(crate) fn renamed(
    mut kc: kube::config::Kubeconfig,
    name: &str,
    server: &str,
) -> kube::config::Kubeconfig {
    let user = format!("{name}-admin");
    for c in &mut kc.clusters {
        c.name = name.to_string();
        if let Some(cluster) = &mut c.cluster {
            cluster.server = Some(server.to_string());
        }
    }
    for u in &mut kc.auth_infos {
        u.name = user.clone();
    }
    for c in &mut kc.contexts {
        c.name = name.to_string();
        if let Some(ctx) = &mut c.context {
            ctx.cluster = name.to_string();
            ctx.user = Some(user.clone());
        }
    }
    kc.current_context = Some(name.to_string());
    kc
}

/// Writes a kubeconfig (as JSON, which kubectl and kube-rs read) whole, mode 0600.
pub(crate) fn write_kubeconfig(path: &Path, kc: &kube::config::Kubeconfig) -> Result<()> {
    let io = |source| Error::Io {
        what: path.display().to_string(),
        source,
    };
    let text = serde_json::to_vec_pretty(kc).map_err(|e| io(std::io::Error::other(e)))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    atomic_file::write(path, text, 0o600).map_err(io)
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
