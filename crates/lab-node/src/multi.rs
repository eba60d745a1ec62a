//! Several lab clusters on one machine, in one process: each its own API (own CA, own port,
//! behind a [`Gate`](crate::gate::Gate) so it can be stopped, started and black-holed), its own
//! node, Pod and Service ranges that do not overlap, a `topology.kubernetes.io/zone` on its node,
//! and one merged kubeconfig with a context per cluster. The clusters' pod networks are routed
//! to each other through a [`lab_net::Backbone`] (flat, no NAT), as multi-cluster service mirrors
//! assume; ClusterIPs stay local to their cluster.
//!
//! One process rather than one per cluster: the clusters share nothing but the backbone, so a
//! process per cluster buys no isolation that matters here, while one process starts them
//! concurrently, tears everything down together on drop or Ctrl-C (also on a test's panic), and
//! gives tests a library handle ([`MultiCluster::set_api`]) instead of signals to other processes.

use crate::cluster::{read_kubeconfig, write_kubeconfig};
use crate::gate::ApiState;
use crate::{Cluster, ClusterOptions, Error, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One cluster of a multi-cluster lab.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// A DNS label; names the kubeconfig context.
    pub name: String,
    pub network: lab_net::Network,
    /// The node's `topology.kubernetes.io/zone`.
    pub zone: String,
    /// Where its API listens (host loopback); port 0 picks one.
    pub listen: SocketAddr,
    /// What its API's `/version` reports (default 1.33).
    pub kubernetes_version: lab_api::KubeVersion,
}

/// How to run several clusters.
#[derive(Debug, Clone)]
pub struct MultiOptions {
    /// Names the lab's namespaces (e.g. the test name).
    pub label: String,
    pub clusters: Vec<ClusterSpec>,
    /// Each cluster keeps its files under `<data_dir>/<name>`; a private temp dir when `None`.
    pub data_dir: Option<PathBuf>,
    /// The merged kubeconfig (default: `kubeconfig` in the data dir).
    pub kubeconfig: Option<PathBuf>,
    pub ghostwire_bin: PathBuf,
    pub backoff_initial: Duration,
}

fn invalid(field: &'static str, value: &str, reason: &str) -> Error {
    Error::Net(lab_net::Error::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    })
}

impl MultiOptions {
    /// Clusters named `names`, the i-th with [`lab_net::Network::indexed`]`(i)` (so the first
    /// has the single lab's ranges), zone = its name, APIs on loopback ports picked by the
    /// kernel.
    pub fn new(label: &str, names: &[&str], ghostwire_bin: PathBuf) -> Result<MultiOptions> {
        if names.is_empty() || names.len() > 16 {
            return Err(invalid(
                "clusters",
                &names.join(","),
                "give 1 to 16 cluster names",
            ));
        }
        let mut clusters = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let label_ok = !name.is_empty()
                && name.len() <= 20
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label_ok {
                return Err(invalid(
                    "cluster name",
                    name,
                    "must be 1-20 lower-case letters, digits or inner '-'",
                ));
            }
            if names[..i].contains(name) {
                return Err(invalid("cluster name", name, "given twice"));
            }
            clusters.push(ClusterSpec {
                name: name.to_string(),
                network: lab_net::Network::indexed(i as u8),
                zone: name.to_string(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                kubernetes_version: lab_api::KubeVersion::default(),
            });
        }
        Ok(MultiOptions {
            label: label.to_string(),
            clusters,
            data_dir: None,
            kubeconfig: None,
            ghostwire_bin,
            backoff_initial: Duration::from_secs(10),
        })
    }

    /// The spec of cluster `name`, to change its ranges, zone or address.
    pub fn cluster_mut(&mut self, name: &str) -> Result<&mut ClusterSpec> {
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| invalid("cluster", name, "not one of the clusters"))
    }

    /// Every plan valid and no two overlapping; errors name the clusters and ranges.
    pub fn validate(&self) -> Result<()> {
        for (i, a) in self.clusters.iter().enumerate() {
            a.network.validate()?;
            if let Some(b) = self.clusters[..i]
                .iter()
                .find(|b| b.network.overlaps(&a.network))
            {
                return Err(invalid(
                    "cluster ranges",
                    &format!(
                        "{}: {} / {}",
                        a.name, a.network.pod_v4, a.network.service_v4
                    ),
                    &format!(
                        "overlap {}: {} / {}",
                        b.name, b.network.pod_v4, b.network.service_v4
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Running clusters; dropping it stops them all and removes every namespace.
pub struct MultiCluster {
    clusters: Vec<(ClusterSpec, Cluster)>,
    backbone: Option<lab_net::Backbone>,
    kubeconfig: PathBuf,
    scratch: Option<PathBuf>,
}

impl MultiCluster {
    pub async fn start(opts: MultiOptions) -> Result<MultiCluster> {
        opts.validate()?;
        let (scratch, base) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "gw-multi-{}-{}",
                    std::process::id(),
                    lab_net::sanitize_label(&opts.label)
                ));
                let _ = std::fs::remove_dir_all(&d);
                (Some(d.clone()), d)
            }
        };
        let label = opts.label.clone();
        let backbone = tokio::task::spawn_blocking(move || lab_net::Backbone::new(&label))
            .await
            .map_err(|e| Error::Io {
                what: "creating the backbone".into(),
                source: std::io::Error::other(e),
            })??;
        let starts = opts.clusters.iter().map(|spec| {
            let mut c = ClusterOptions::new(
                &format!("{}-{}", opts.label, spec.name),
                opts.ghostwire_bin.clone(),
            );
            c.listen = spec.listen;
            c.data_dir = Some(base.join(&spec.name));
            c.kubeconfig = Some(base.join(&spec.name).join("kubeconfig"));
            c.backoff_initial = opts.backoff_initial;
            c.network = spec.network;
            c.zone = Some(spec.zone.clone());
            c.kubernetes_version = spec.kubernetes_version;
            c.gated = true;
            c.context = Some(spec.name.clone());
            let spec = spec.clone();
            async move { Cluster::start(c).await.map(|c| (spec, c)) }
        });
        let clusters = futures::future::try_join_all(starts).await?;
        for (spec, cluster) in &clusters {
            backbone
                .attach(cluster.node().netns(), &spec.network)
                .map_err(|e| {
                    tracing::warn!(cluster = spec.name, error = %e, "backbone");
                    e
                })?;
        }
        let kubeconfig = opts
            .kubeconfig
            .clone()
            .unwrap_or_else(|| base.join("kubeconfig"));
        let mut merged = kube::config::Kubeconfig::default();
        for (_, cluster) in &clusters {
            let kc = read_kubeconfig(cluster.kubeconfig_path())?;
            merged.clusters.extend(kc.clusters);
            merged.auth_infos.extend(kc.auth_infos);
            merged.contexts.extend(kc.contexts);
        }
        merged.current_context = clusters.first().map(|(s, _)| s.name.clone());
        merged.api_version = Some("v1".into());
        merged.kind = Some("Config".into());
        write_kubeconfig(&kubeconfig, &merged)?;
        Ok(MultiCluster {
            clusters,
            backbone: Some(backbone),
            kubeconfig,
            scratch,
        })
    }

    /// The merged kubeconfig: one context per cluster, named after it.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn names(&self) -> Vec<&str> {
        self.clusters.iter().map(|(s, _)| s.name.as_str()).collect()
    }

    pub fn spec(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(s, _)| s)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, c)| c)
    }

    /// Stops, starts or black-holes one cluster's API.
    pub fn set_api(&self, name: &str, state: ApiState) -> Result<()> {
        self.cluster(name)
            .ok_or_else(|| invalid("cluster", name, "not one of the clusters"))?
            .set_api(state)
    }

    /// Serves `<cluster> <start|stop|blackhole>` lines on a Unix socket (what
    /// `ghostwire lab api-state` sends); answers `ok <cluster> <state>` or `error <reason>`.
    /// Runs until the future is dropped.
    pub async fn serve_control(&self, socket: &Path) -> Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).map_err(|source| Error::Io {
            what: socket.display().to_string(),
            source,
        })?;
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [name, state] => match state.parse::<ApiState>() {
                        Ok(s) => match self.set_api(name, s) {
                            Ok(()) => format!("ok {name} {s}"),
                            Err(e) => format!("error {e}"),
                        },
                        Err(e) => format!("error {e}"),
                    },
                    _ => "error expected `<cluster> <start|stop|blackhole>`".to_string(),
                };
                if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Stops every cluster (pods get `grace`), then the backbone.
    pub async fn shutdown(mut self, grace: Duration) {
        let clusters = std::mem::take(&mut self.clusters);
        futures::future::join_all(clusters.into_iter().map(|(_, c)| c.shutdown(grace))).await;
        if let Some(b) = self.backbone.take() {
            let _ = tokio::task::spawn_blocking(move || drop(b)).await;
        }
    }
}

/// Sends one control line to a running multi-cluster lab; returns its answer.
pub async fn send_control(socket: &Path, cluster: &str, state: ApiState) -> Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let io = |source| Error::Io {
        what: socket.display().to_string(),
        source,
    };
    let conn = tokio::net::UnixStream::connect(socket).await.map_err(io)?;
    let (r, mut w) = conn.into_split();
    w.write_all(format!("{cluster} {state}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.map_err(io)?;
    Ok(line.trim().to_string())
}

impl Drop for MultiCluster {
    fn drop(&mut self) {
        self.clusters.clear();
        drop(self.backbone.take());
        if let Some(d) = &self.scratch {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
