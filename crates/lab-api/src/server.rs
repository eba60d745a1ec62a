//! The server's shared state, its start-up (bootstrap objects, PKI, listener, kubeconfig) and
//! the bits of controller behaviour the API itself owes its clients: namespace termination,
//! default ServiceAccounts, serving CRDs.

use crate::api::new_uid;
use crate::http;
use crate::pki::{self, Pki};
use crate::resources::{Registry, ResourceType};
use crate::store::{Key, Store, StoreError};
use crate::validation::ServiceCidrs;
use crate::{Error, Options};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub struct State {
    pub store: Store,
    pub registry: Registry,
    pub cidrs: ServiceCidrs,
    /// Held from ClusterIP/NodePort allocation until the Service is stored.
    pub alloc: Mutex<()>,
    /// Whether requests are authorized with RBAC.
    pub rbac: bool,
    /// The policy last compiled from the RBAC objects, and the store's RBAC generation then.
    pub rbac_cache: std::sync::RwLock<Option<crate::authz::PolicyCache>>,
    pub bookmark_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Bumped to end every open watch (clients resume from their last version).
    pub watch_reset: watch::Sender<u64>,
    pub pki: Pki,
    /// Where `pods/{name}/log` requests go (the lab node).
    pub pod_logs: Option<crate::PodLogsHandle>,
    /// Where `pods/{name}/exec`, `attach` and `portforward` sessions go (the lab node).
    pub pod_streams: Option<crate::PodStreamsHandle>,
    /// What `/version` reports.
    pub version: crate::KubeVersion,
}

fn key(group: &str, resource: &str, ns: &str, name: &str) -> Key {
    Key {
        group: group.into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": new_uid(), "creationTimestamp": crate::clock::now()});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

/// Creates an object if it is missing (bootstrap and controller duties).
fn ensure(state: &State, k: &Key, obj: Value) {
    match state.store.create(k, obj) {
        Ok(_) | Err(StoreError::Exists) => {}
        Err(e) => tracing::warn!(error = %e, name = %k.name, "could not create a built-in object"),
    }
}

/// What the ServiceAccount and root-CA controllers put into every new namespace.
fn namespace_contents(state: &State, ns: &str) {
    ensure(
        state,
        &key("", "serviceaccounts", ns, "default"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("default", Some(ns))}),
    );
    ensure(
        state,
        &key("", "configmaps", ns, "kube-root-ca.crt"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("kube-root-ca.crt", Some(ns)), "data": {"ca.crt": state.pki.ca_pem}}),
    );
}

fn bootstrap(state: &State) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let k = key("", "namespaces", "", ns);
        if state.store.get(&k).is_none() {
            let mut obj =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None)});
            if let Some(rt) = state.registry.find("", "v1", "namespaces") {
                crate::validation::default_object(&rt, &mut obj);
            }
            ensure(state, &k, obj);
        }
        namespace_contents(state, ns);
    }
    let api_ip = state.cidrs.api_ipv4().to_string();
    ensure(
        state,
        &key("", "services", "default", "kubernetes"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"labels": {"component": "apiserver", "provider": "kubernetes"}, "name": "kubernetes", "namespace": "default", "uid": new_uid(), "creationTimestamp": crate::clock::now()},
               "spec": {"type": "ClusterIP", "clusterIP": api_ip, "clusterIPs": [api_ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
               "status": {"loadBalancer": {}}}),
    );
    for obj in crate::rbac::bootstrap_objects() {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let resource = match obj["kind"].as_str() {
            Some("ClusterRole") => "clusterroles",
            _ => "clusterrolebindings",
        };
        let mut obj = obj;
        obj["metadata"]["uid"] = json!(new_uid());
        obj["metadata"]["creationTimestamp"] = json!(crate::clock::now());
        ensure(
            state,
            &key("rbac.authorization.k8s.io", resource, "", &name),
            obj,
        );
    }
    crate::authz::sync_aggregation(state);
    crate::crd::sync(state);
}

/// Follow-up work after an object was created.
pub fn after_create(state: &State, rt: &ResourceType, obj: &Value) {
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "namespaces") => {
            namespace_contents(state, obj["metadata"]["name"].as_str().unwrap_or_default())
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => crate::crd::sync(state),
        _ if crate::authz::aggregates(rt) => crate::authz::sync_aggregation(state),
        _ => {}
    }
}

/// Follow-up work after an object changed or went away.
pub fn after_change(state: &State, rt: &ResourceType) {
    if rt.group == "apiextensions.k8s.io" && rt.resource == "customresourcedefinitions" {
        crate::crd::sync(state);
    }
    if crate::authz::aggregates(rt) {
        crate::authz::sync_aggregation(state);
    }
}

/// Deletes everything in a terminating namespace, then the namespace itself once nothing is
/// left (objects with finalizers keep it until they are gone), as the namespace controller does.
pub fn terminate_namespace(state: &Arc<State>, ns: &str) {
    let state = state.clone();
    let ns = ns.to_string();
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let Ok((_, mut events)) = state.store.watch(None) else {
            return;
        };
        loop {
            let mut left = 0;
            for t in state.registry.all().iter().filter(|t| t.namespaced) {
                let (objs, _) = state.store.list(&t.group, &t.resource, Some(&ns));
                for o in objs {
                    left += 1;
                    let k = key(
                        &t.group,
                        &t.resource,
                        &ns,
                        o["metadata"]["name"].as_str().unwrap_or_default(),
                    );
                    if o["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty())
                    {
                        if o["metadata"]["deletionTimestamp"].is_null() {
                            let mut next = (*o).clone();
                            next["metadata"]["deletionTimestamp"] = json!(crate::clock::now());
                            next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                            let _ = state.store.update(&k, crate::store::object_rv(&o), next);
                        }
                    } else if state.store.delete(&k, None).is_ok() {
                        left -= 1;
                    }
                }
            }
            if left == 0 {
                let k = key("", "namespaces", "", &ns);
                let _ = state.store.delete(&k, None);
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                r = events.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
            }
        }
    });
}

/// A server that is running; dropping it stops it (use [`RunningServer::shutdown`] to wait).
pub struct RunningServer {
    pub(crate) state: Arc<State>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    scratch: Option<PathBuf>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub(crate) async fn start(opts: Options) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: opts.listen,
            source,
        })?;
        let pki = Pki::load_or_create(
            opts.data_dir.as_deref().map(|d| d.join("pki")).as_deref(),
            &[addr.ip()],
        )?;
        let tls = Arc::new(pki.server_config()?);
        let store = Store::open(opts.data_dir.as_deref().map(|d| d.join("store")).as_deref())?;
        let (stop, shutdown) = watch::channel(false);
        let state = Arc::new(State {
            store,
            registry: Registry::builtin(),
            cidrs: opts.service_cidrs,
            alloc: Mutex::new(()),
            rbac: opts.rbac,
            version: opts.kubernetes_version,
            rbac_cache: std::sync::RwLock::new(None),
            bookmark_interval: opts.bookmark_interval,
            shutdown,
            watch_reset: watch::Sender::new(0),
            pki,
            pod_logs: opts.pod_logs,
            pod_streams: opts.pod_streams,
        });
        bootstrap(&state);
        let (scratch, kubeconfig) = match opts.kubeconfig {
            Some(p) => (None, p),
            None => {
                let dir = scratch_dir()?;
                (Some(dir.clone()), dir.join("kubeconfig"))
            }
        };
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let url = if addr.is_ipv6() {
            format!("https://[{host}]:{}", addr.port())
        } else {
            format!("https://{host}:{}", addr.port())
        };
        write_private(&kubeconfig, pki::kubeconfig(&state.pki, &url).as_bytes())?;
        let task = tokio::spawn(http::accept_loop(state.clone(), listener, tls));
        tracing::info!(%url, kubeconfig = %kubeconfig.display(), "lab API serving");
        Ok(RunningServer {
            state,
            addr,
            kubeconfig,
            scratch,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            "127.0.0.1".parse().expect("literal")
        } else {
            self.addr.ip()
        };
        format!("https://{}", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn kubeconfig_path(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.state.pki.ca_pem
    }

    /// The admin bearer token (an alternative to the kubeconfig's client certificate).
    pub fn token(&self) -> &str {
        &self.state.pki.token
    }

    /// A kube-rs configuration for the admin user.
    pub async fn kube_config(&self) -> Result<kube::Config, Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| Error::Client(e.to_string()))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Client(e.to_string()))
    }

    /// A kube-rs client for the admin user.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        kube::Client::try_from(self.kube_config().await?).map_err(|e| Error::Client(e.to_string()))
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.current_rv()
    }

    /// How many object versions the store has serialised to JSON: one per write, none per
    /// list, get or watch event it serves (a test asserts this).
    pub fn serialisations(&self) -> u64 {
        self.state.store.serialisations()
    }

    /// Compacts the watch history and ends every open watch, as an etcd compaction followed by
    /// an API server restart does: clients resuming from any version seen so far get 410 Gone
    /// and must relist.
    pub fn compact(&self) {
        self.state.store.compact();
        self.state.watch_reset.send_modify(|n| *n += 1);
    }

    /// Stops accepting, ends open connections and watches, and waits until the port is free.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn scratch_dir() -> Result<PathBuf, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lab-api-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Writes a secret-bearing file (mode 0600) whole, creating its directory.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    atomic_file::write(path, bytes, 0o600).map_err(io)
}
