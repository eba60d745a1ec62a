//! The lab's node: a tiny kubelet, endpoints controller and kube-proxy on the real kernel, so a
//! `kubectl apply` against the lab API behaves as on a real cluster. Where it differs from a real
//! Kubernetes, the real one is right.
//!
//! - **kubelet** (`pod`): every Pod the API holds is bound to this node (`spec.nodeName`), gets a
//!   network namespace on the lab's bridge with an IPv4 and an IPv6 address (`status.podIPs`),
//!   runs its init containers in order to completion (failures retried with back-off unless
//!   `restartPolicy: Never`; native sidecars, `restartPolicy: Always`, started in order, the next
//!   one waiting for the sidecar's startup probe, restarted whatever the pod's policy, stopped
//!   after the main containers), then its containers as processes inside the namespace (see
//!   `container` for how: env incl. downward API, volumes, user/group, capabilities), restarts
//!   them per `restartPolicy` with `CrashLoopBackOff`, runs startup/readiness/liveness probes
//!   and postStart/preStop hooks, runs ephemeral containers as they are added, and reports
//!   phase, conditions and container states as the kubelet does. Deleting a Pod sends
//!   SIGTERM, waits the grace period, sends SIGKILL, removes the namespace and finally deletes
//!   the object. `kubectl logs` (`-c`, `--previous`, `-f`) is served through
//!   [`lab_api::PodLogs`].
//! - **images** ([`images`]): image names map to local programs through a documented table;
//!   unknown images report `ErrImagePull` / `ImagePullBackOff`.
//! - **endpoints controller** ([`endpoints`]) and **kube-proxy** ([`proxy`]): EndpointSlices
//!   from Services' selectors and Pod readiness; ClusterIPs as DNAT in the node's namespace.
//! - **controller manager** ([`controllers`]): Deployments, ReplicaSets, StatefulSets,
//!   DaemonSets, Jobs and the garbage collector, as level-triggered passes over the API.
//! - **cluster DNS** ([`dns`]): the `kube-dns` Service on 10.96.0.10 / fd00:10:96::a, served by a
//!   [`lab_dns`] server on the node fed by the same watches; each Pod's `resolv.conf` (by
//!   `dnsPolicy`), `hosts` and `nsswitch.conf` are bind-mounted into its containers.
//! - **API access from pods** (`relay`): the `kubernetes` Service leads to a relay in the node
//!   namespace that forwards to the API on the host's loopback; pods get a service-account token
//!   (TokenRequest), the CA and their namespace at `/var/run/secrets/kubernetes.io/serviceaccount`.
//!
//! [`Cluster`] runs the API and a node together (used by `ghostwire lab up` and `ghostwire demo`).
#![forbid(unsafe_code)]

mod cluster;
mod console;
mod container;
pub mod controllers;
pub mod dns;
pub mod endpoints;
pub mod env;
pub mod gate;
pub mod images;
mod logs;
pub mod multi;
mod pod;
mod probes;
pub mod proxy;
mod relay;
pub mod scenario;
mod state;
mod streams;
mod util;
mod volumes;

pub use cluster::{Cluster, ClusterOptions, cleanup_stale};
pub use gate::ApiState;
pub use logs::NodeLogs;
pub use multi::{ClusterSpec, MultiCluster, MultiOptions};
pub use pod::POD_IP_ANNOTATION;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{reflector, watcher};
use kube::{Api, Resource};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use state::{PodRt, Stop};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The node's name (`spec.nodeName` of its pods).
pub const NODE_NAME: &str = "lab-node";

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Net(#[from] lab_net::Error),
    #[error(transparent)]
    Api(#[from] lab_api::Error),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pods a node runs, by uid; shared with [`NodeLogs`], which the API server needs before the
/// node starts.
#[derive(Clone, Default)]
pub struct PodTable(pub(crate) Arc<Mutex<HashMap<String, Arc<PodRt>>>>);

impl PodTable {
    pub fn new() -> PodTable {
        PodTable::default()
    }

    /// What to put into [`lab_api::Options::pod_logs`].
    pub fn logs_handle(&self) -> lab_api::PodLogsHandle {
        lab_api::PodLogsHandle(Arc::new(NodeLogs(self.clone())))
    }

    /// What to put into [`lab_api::Options::pod_streams`].
    pub fn streams_handle(&self) -> lab_api::PodStreamsHandle {
        lab_api::PodStreamsHandle(Arc::new(streams::NodeStreams(self.clone())))
    }
}

/// How to run a node.
pub struct NodeOptions {
    /// An admin client of the lab API.
    pub client: kube::Client,
    /// Names the lab's namespaces (e.g. the test name).
    pub label: String,
    /// This build's `ghostwire` binary (the ghostwire and echo images).
    pub ghostwire_bin: PathBuf,
    /// Where the API listens on the host (the relay's target).
    pub api_addr: SocketAddr,
    /// The API's CA (pods' `ca.crt`).
    pub ca_pem: String,
    /// Pods' volumes and logs live under `<data_dir>/pods/<uid>`.
    pub data_dir: PathBuf,
    /// Shared with the API's log subresource.
    pub pods: PodTable,
    /// First restart back-off (the kubelet's is 10 s), doubled per restart up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The node's address plan (pod and service ranges).
    pub network: lab_net::Network,
    /// `topology.kubernetes.io/zone` of the node (and `zone` of its endpoints).
    pub zone: Option<String>,
    /// Where cluster DNS sends names outside the cluster (none: it refuses them).
    pub dns_upstream: lab_dns::Upstream,
    /// The node's resolv.conf (pods with `dnsPolicy: Default`, and ClusterFirst's extra search
    /// domains); empty unless the lab is told to use one.
    pub node_resolv_conf: String,
}

pub(crate) struct Shared {
    pub client: kube::Client,
    pub ghostwire_bin: PathBuf,
    pub ca_pem: String,
    pub node_name: String,
    pub node_netns: netns::Netns,
    pub lab: Mutex<Option<lab_net::Lab>>,
    pub pods: PodTable,
    pub pgids: Mutex<HashSet<i32>>,
    pub data_dir: PathBuf,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub status_written: watch::Sender<u64>,
    /// Rules kube-proxy applied last.
    pub rules: watch::Sender<Vec<proxy::PortRule>>,
    pub network: lab_net::Network,
    pub zone: Option<String>,
    /// The zone cluster DNS answers from.
    pub dns_zone: lab_dns::ZoneHandle,
    pub node_resolv_conf: String,
    /// The kubelet's events (component `kubelet`, host the node).
    pub events: lab_api::events::Recorder,
    /// The scheduler's (`default-scheduler`): the lab's node binds pods itself.
    pub scheduler_events: lab_api::events::Recorder,
    counter: AtomicU64,
}

impl Shared {
    /// A lab pod name (namespace suffix) for a Pod: its name, shortened, and a counter.
    pub fn lab_pod_name(&self, name: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut base: String = lab_net::sanitize_label(name).chars().take(28).collect();
        while base.ends_with('-') {
            base.pop();
        }
        if base == "node" {
            base = "pod".into();
        }
        format!("{base}-{n}")
    }
}

/// A running node; dropping it kills every container and removes the lab's namespaces.
pub struct Node {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    dns: Option<lab_dns::DnsServer>,
}

impl Node {
    /// Creates the lab (node namespace and bridge) and starts the pod, endpoints and proxy loops.
    pub async fn start(opts: NodeOptions) -> Result<Node> {
        let label = opts.label.clone();
        let network = opts.network;
        let lab = tokio::task::spawn_blocking(move || lab_net::Lab::with_network(&label, network))
            .await
            .map_err(|e| Error::Io {
                what: "creating the lab".into(),
                source: std::io::Error::other(e),
            })??;
        let node_netns = lab.node().clone();
        let pods_dir = opts.data_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|source| Error::Io {
            what: pods_dir.display().to_string(),
            source,
        })?;
        let events =
            lab_api::events::Recorder::new(opts.client.clone(), "kubelet", Some(NODE_NAME));
        let scheduler_events =
            lab_api::events::Recorder::new(opts.client.clone(), "default-scheduler", None);
        let shared = Arc::new(Shared {
            events,
            scheduler_events,
            client: opts.client,
            ghostwire_bin: opts.ghostwire_bin,
            ca_pem: opts.ca_pem,
            node_name: NODE_NAME.to_string(),
            node_netns: node_netns.clone(),
            lab: Mutex::new(Some(lab)),
            pods: opts.pods,
            pgids: Mutex::default(),
            data_dir: opts.data_dir,
            backoff_initial: opts.backoff_initial,
            backoff_max: opts.backoff_max,
            status_written: watch::Sender::new(0),
            rules: watch::Sender::new(Vec::new()),
            network: opts.network,
            zone: opts.zone,
            dns_zone: lab_dns::ZoneHandle::default(),
            node_resolv_conf: opts.node_resolv_conf,
            counter: AtomicU64::new(0),
        });
        // Until kube-proxy's first sync, the node has no table of ours.
        proxy::apply(node_netns.name(), &proxy::render(&[]))
            .await
            .map_err(|e| Error::Io {
                what: "kube-proxy".into(),
                source: std::io::Error::other(e),
            })?;
        register(&shared).await?;
        let dns = dns::start(
            &shared.network,
            &node_netns,
            shared.dns_zone.clone(),
            opts.dns_upstream,
        )
        .map_err(|source| Error::Io {
            what: "cluster DNS on the node".into(),
            source,
        })?;
        register_dns(&shared).await?;
        let mut tasks = Vec::new();
        let relay_node = node_netns.clone();
        let api = opts.api_addr;
        tasks.push(tokio::spawn(async move {
            let addr = SocketAddr::from((network.node_ipv4(), endpoints::API_RELAY_PORT));
            if let Err(e) = relay::run(relay_node, addr, api).await {
                tracing::error!(error = %e, "API relay stopped");
            }
        }));
        tasks.push(tokio::spawn(pod_loop(shared.clone())));
        tasks.push(tokio::spawn(service_loop(shared.clone())));
        tasks.push(tokio::spawn(controllers::run(
            shared.client.clone(),
            shared.node_name.clone(),
        )));
        Ok(Node {
            shared,
            tasks,
            dns: Some(dns),
        })
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &netns::Netns {
        &self.shared.node_netns
    }

    /// The lab prefix of every namespace of this node.
    pub fn prefix(&self) -> String {
        lock(&self.shared.lab)
            .as_ref()
            .map(|l| l.prefix().to_string())
            .unwrap_or_default()
    }

    /// Adds the lab's "internet" beside the node (see [`lab_net::internet`]): Pods reach its
    /// public hosts through the node, unNATed; it goes away with the node.
    pub fn add_internet(&self) -> Result<lab_net::internet::Internet> {
        let mut lab = lock(&self.shared.lab);
        let lab = lab.as_mut().ok_or_else(|| Error::Io {
            what: "the node's lab".into(),
            source: std::io::Error::other("the node is shut down"),
        })?;
        Ok(lab.add_internet()?)
    }

    /// The node's address plan.
    pub fn network(&self) -> &lab_net::Network {
        &self.shared.network
    }

    /// The network namespace of a running Pod.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<lab_net::Pod> {
        lock(&self.shared.pods.0)
            .values()
            .find(|rt| rt.namespace == namespace && rt.name == name)
            .and_then(|rt| rt.lock().netns.clone())
    }

    /// The host directory of a running Pod's volume (e.g. an emptyDir).
    pub fn volume_dir(&self, namespace: &str, name: &str, volume: &str) -> Option<PathBuf> {
        lock(&self.shared.pods.0)
            .values()
            .find(|rt| rt.namespace == namespace && rt.name == name)
            .map(|rt| rt.dir.join("volumes").join(volume))
    }

    /// The rules kube-proxy applied last.
    pub fn rules(&self) -> watch::Receiver<Vec<proxy::PortRule>> {
        self.shared.rules.subscribe()
    }

    /// Waits until the applied rules satisfy `pred`.
    pub async fn wait_for_rules(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[proxy::PortRule]) -> bool,
    ) -> Result<()> {
        let mut rx = self.rules();
        tokio::time::timeout(timeout, rx.wait_for(|r| pred(r)))
            .await
            .map_err(|_| Error::Timeout(timeout, what.to_string()))?
            .map(drop)
            .map_err(|_| Error::Timeout(timeout, what.to_string()))
    }

    /// Stops every pod (SIGTERM, up to `grace`, SIGKILL), keeps their API objects, removes the lab.
    pub async fn shutdown(mut self, grace: Duration) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(dns) = self.dns.take() {
            dns.shutdown().await;
        }
        let pods: Vec<Arc<PodRt>> = lock(&self.shared.pods.0).values().cloned().collect();
        for rt in &pods {
            rt.stop.send_if_modified(|s| {
                if s.is_none() {
                    *s = Some(Stop::NodeShutdown {
                        grace: grace.as_secs() as i64,
                    });
                    true
                } else {
                    false
                }
            });
        }
        let deadline = grace + Duration::from_secs(5);
        let _ = tokio::time::timeout(deadline, async {
            while !lock(&self.shared.pods.0).is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        self.kill_all();
        let lab = lock(&self.shared.lab).take();
        if let Some(lab) = lab {
            let _ = tokio::task::spawn_blocking(move || drop(lab)).await;
        }
        self.tasks.clear();
    }

    fn kill_all(&self) {
        for p in lock(&self.shared.pgids).drain() {
            let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.kill_all();
        // Dropping the lab removes its namespaces (also while unwinding from a panic).
        drop(lock(&self.shared.lab).take());
    }
}

/// Registers the Node object with its status, as a kubelet does at start-up.
async fn register(shared: &Shared) -> Result<()> {
    use k8s_openapi::api::core::v1::Node as KNode;
    let api: Api<KNode> = Api::all(shared.client.clone());
    let name = shared.node_name.as_str();
    let net = &shared.network;
    let mut labels = serde_json::json!({
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH, "node-role.kubernetes.io/control-plane": ""});
    if let Some(zone) = &shared.zone {
        labels["topology.kubernetes.io/zone"] = serde_json::json!(zone);
    }
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": net.pod_v4.to_string(), "podCIDRs": [net.pod_v4.to_string(), net.pod_v6.to_string()]},
    });
    api.patch(
        name,
        &kube::api::PatchParams::apply("lab-node").force(),
        &kube::api::Patch::Apply(&node),
    )
    .await?;
    let now = util::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let condition = |ty: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"type": ty, "status": status, "reason": reason, "message": message,
                           "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let capacity = serde_json::json!({"cpu": cpus.to_string(), "memory": env::resource_field("limits.memory"), "pods": "253"});
    let status = serde_json::json!({"status": {
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": net.node_ipv4().to_string()},
                      {"type": "InternalIP", "address": net.node_ipv6().to_string()},
                      {"type": "Hostname", "address": name}],
        "capacity": capacity, "allocatable": capacity,
        "nodeInfo": {"kubeletVersion": "v1.33.0-lab", "kubeProxyVersion": "v1.33.0-lab",
                     "containerRuntimeVersion": "lab://0.1.0", "operatingSystem": "linux",
                     "architecture": std::env::consts::ARCH, "kernelVersion": kernel.trim(),
                     "osImage": "ghostwire lab", "machineID": "", "systemUUID": "", "bootID": ""},
    }});
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await?;
    Ok(())
}

/// Installs the `kube-dns` Service (as kubeadm's CoreDNS add-on does) with its fixed ClusterIPs.
async fn register_dns(shared: &Shared) -> Result<()> {
    let api: Api<Service> = Api::namespaced(shared.client.clone(), dns::NAMESPACE);
    api.patch(
        dns::SERVICE,
        &kube::api::PatchParams::apply("lab-node").force(),
        &kube::api::Patch::Apply(&dns::service(&shared.network)),
    )
    .await?;
    Ok(())
}

/// Watches Pods and runs each on the node.
async fn pod_loop(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut seen_in_init: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match ev {
            watcher::Event::Init => seen_in_init.clear(),
            watcher::Event::InitApply(p) => {
                seen_in_init.insert(p.meta().uid.clone().unwrap_or_default());
                on_pod(&shared, p).await;
            }
            watcher::Event::Apply(p) => on_pod(&shared, p).await,
            watcher::Event::Delete(p) => {
                let uid = p.meta().uid.clone().unwrap_or_default();
                if let Some(rt) = lock(&shared.pods.0).get(&uid).cloned() {
                    stop_pod(&rt, Stop::Gone);
                }
            }
            watcher::Event::InitDone => {
                let gone: Vec<Arc<PodRt>> = lock(&shared.pods.0)
                    .values()
                    .filter(|rt| !seen_in_init.contains(&rt.uid))
                    .cloned()
                    .collect();
                for rt in gone {
                    stop_pod(&rt, Stop::Gone);
                }
            }
        }
    }
}

fn stop_pod(rt: &PodRt, why: Stop) {
    rt.stop.send_if_modified(|s| {
        if s.is_none() {
            *s = Some(why);
            true
        } else {
            false
        }
    });
}

async fn on_pod(shared: &Arc<Shared>, p: Pod) {
    let v = serde_json::to_value(&p).unwrap_or(Value::Null);
    let uid = p.meta().uid.clone().unwrap_or_default();
    let node = util::str_of(&v, "/spec/nodeName");
    if !node.is_empty() && node != shared.node_name {
        return;
    }
    let deleting = p.meta().deletion_timestamp.is_some();
    let known = lock(&shared.pods.0).get(&uid).cloned();
    if let Some(rt) = known {
        {
            // Metadata (labels, annotations) changes reach the downward API of later starts.
            let mut st = rt.lock();
            let status = st.pod["status"].clone();
            st.pod = v.clone();
            st.pod["status"] = status;
        }
        pod::sync_ephemeral(shared, &rt);
        if deleting {
            let grace = p.meta().deletion_grace_period_seconds.unwrap_or(30);
            stop_pod(&rt, Stop::Delete { grace });
        }
        return;
    }
    let phase = util::str_of(&v, "/status/phase");
    if deleting {
        if node == shared.node_name || phase.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            // Nothing of it runs here (any more): finish the deletion as the kubelet does.
            let api: Api<Pod> = Api::namespaced(
                shared.client.clone(),
                p.meta().namespace.as_deref().unwrap_or("default"),
            );
            let _ = api
                .delete(
                    &p.meta().name.clone().unwrap_or_default(),
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await;
        }
        return;
    }
    if matches!(phase, "Succeeded" | "Failed") {
        return;
    }
    let dir = shared.data_dir.join("pods").join(&uid);
    let rt = Arc::new(PodRt::new(v, dir));
    lock(&shared.pods.0).insert(uid, rt.clone());
    tokio::spawn(pod::run(shared.clone(), rt));
}

/// The endpoints controller, kube-proxy and cluster DNS: reflectors on Services, Pods,
/// EndpointSlices and kube-system's ConfigMaps (the `coredns` one's Corefile gives the DNS its
/// rewrite rules); every change recomputes the slices (writing differences), the DNAT table
/// (applied when it changes) and the DNS zone.
async fn service_loop(shared: Arc<Shared>) {
    let client = shared.client.clone();
    let (svc_r, svc_w) = reflector::store::<Service>();
    let (pod_r, pod_w) = reflector::store::<Pod>();
    let (eps_r, eps_w) = reflector::store::<EndpointSlice>();
    let (cm_r, cm_w) = reflector::store::<ConfigMap>();
    let kick = Arc::new(tokio::sync::Notify::new());
    let mut streams = tokio::task::JoinSet::new();
    macro_rules! reflect {
        ($w:expr, $api:expr) => {{
            let kick = kick.clone();
            let stream = reflector::reflector($w, watcher($api, watcher::Config::default()));
            streams.spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(_) => kick.notify_one(),
                        Err(e) => {
                            tracing::warn!(error = %e, "endpoints/proxy watch");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
        }};
    }
    reflect!(svc_w, Api::<Service>::all(client.clone()));
    reflect!(pod_w, Api::<Pod>::all(client.clone()));
    reflect!(eps_w, Api::<EndpointSlice>::all(client.clone()));
    reflect!(
        cm_w,
        Api::<ConfigMap>::namespaced(client.clone(), dns::NAMESPACE)
    );
    if svc_r.wait_until_ready().await.is_err()
        || pod_r.wait_until_ready().await.is_err()
        || eps_r.wait_until_ready().await.is_err()
        || cm_r.wait_until_ready().await.is_err()
    {
        return;
    }
    let mut applied: Option<String> = None;
    let mut corefile = dns::Corefile::default();
    let mut serial: u32 = 0;
    loop {
        let to_json = |v: Vec<Arc<_>>| -> Vec<Value> {
            v.iter()
                .filter_map(|o: &Arc<_>| serde_json::to_value(&**o).ok())
                .collect()
        };
        let services: Vec<Value> = svc_r
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(&**o).ok())
            .collect();
        let pods: Vec<Value> = pod_r
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(&**o).ok())
            .collect();
        let slices: Vec<Value> = to_json(eps_r.state());
        reconcile_slices(&shared, &services, &pods, &slices).await;
        serial = serial.wrapping_add(1);
        let text = cm_r
            .get(&reflector::ObjectRef::new(dns::COREDNS_CONFIGMAP).within(dns::NAMESPACE))
            .and_then(|cm| cm.data.as_ref()?.get(dns::COREFILE_KEY).cloned());
        let rewrites = corefile.rewrites(text.as_deref());
        shared
            .dns_zone
            .set(dns::zone(&shared.network, &services, &slices, serial).with_rewrites(rewrites));
        let rules = proxy::desired(&services, &slices);
        let script = proxy::render(&rules);
        if applied.as_deref() != Some(&script) {
            match proxy::apply(shared.node_netns.name(), &script).await {
                Ok(()) => {
                    applied = Some(script);
                    shared.rules.send_replace(rules);
                }
                Err(e) => tracing::warn!(error = %e, "kube-proxy apply"),
            }
        }
        kick.notified().await;
    }
}

async fn reconcile_slices(shared: &Shared, services: &[Value], pods: &[Value], slices: &[Value]) {
    let node = endpoints::NodeRef {
        name: &shared.node_name,
        ipv4: shared.network.node_ipv4(),
        ipv6: shared.network.node_ipv6(),
        zone: shared.zone.as_deref(),
    };
    let want = endpoints::desired(services, pods, &node);
    let ours: HashMap<String, &Value> = slices
        .iter()
        .filter(|s| {
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                == endpoints::MANAGED_BY
        })
        .map(|s| {
            (
                format!(
                    "{}/{}",
                    util::str_of(s, "/metadata/namespace"),
                    util::str_of(s, "/metadata/name")
                ),
                s,
            )
        })
        .collect();
    for (key, slice) in &want {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(shared.client.clone(), ns);
        let result = match ours.get(key) {
            Some(cur) if endpoints::same(cur, slice) => continue,
            Some(cur) => {
                let mut next = slice.clone();
                next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                match serde_json::from_value::<EndpointSlice>(next) {
                    Ok(o) => api
                        .replace(name, &PostParams::default(), &o)
                        .await
                        .map(drop),
                    Err(e) => {
                        tracing::warn!(error = %e, "endpoint slice");
                        continue;
                    }
                }
            }
            None => match serde_json::from_value::<EndpointSlice>(slice.clone()) {
                Ok(o) => api.create(&PostParams::default(), &o).await.map(drop),
                Err(e) => {
                    tracing::warn!(error = %e, "endpoint slice");
                    continue;
                }
            },
        };
        if let Err(e) = result {
            // A conflict means our view is stale; the watch event that follows retries.
            tracing::debug!(slice = key, error = %e, "writing endpoint slice");
        }
    }
    for key in ours.keys().filter(|k| !want.contains_key(*k)) {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(shared.client.clone(), ns);
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}
