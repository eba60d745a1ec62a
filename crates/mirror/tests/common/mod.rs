//! The mirror tests' lab setup: clusters, namespaces, deploy/mirror's RBAC and tokens, the
//! remotes' CA served by URL, and mirror replicas run in-process through the library.
#![allow(dead_code)]

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{Api, Client};
use lab_node::MultiCluster;
use mirror::config::{Access, Overrides, Settings};
use mirror::lease::LeaseConfig;
use mirror::metrics::Metrics;
use mirror::run::{MirrorHealth, RunOptions, run};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The mirror namespace: deploy/mirror's own namespace, so its RBAC applies unchanged.
pub const NS: &str = "ghostwire-mirror";

pub fn ghostwire_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ghostwire")
}

/// Polls `f` until it returns `Some` (bounded).
pub async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates namespace `name` (already there is fine: several mirrors may share a cluster).
pub async fn namespace(c: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(c.clone())
        .create(&Default::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

pub fn metrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s
}

/// The admin client of cluster `name`.
pub async fn admin(mc: &MultiCluster, name: &str) -> Client {
    mc.cluster(name).unwrap().client().await.unwrap()
}

/// Applies every object of a deploy/ YAML file (server-side apply), namespaced ones in `ns`.
async fn apply_file(c: &Client, file: &str, ns: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    lab_node::scenario::apply_yaml(c, ns, file, &text)
        .await
        .unwrap_or_else(|e| panic!("{file}: {e}"));
}

/// A token of ServiceAccount `ns/name`, issued by the cluster (TokenRequest).
pub async fn token(c: &Client, ns: &str, name: &str) -> String {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(c.clone(), ns)
        .create_token_request(name, &Default::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

/// Serves a PEM over plain HTTP on loopback (a remote's `remoteCAURL`); the test may swap
/// what it serves.
pub struct CaServer {
    pub url: String,
    pub pem: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaServer {
    pub async fn start(pem: &str) -> CaServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ca.crt", listener.local_addr().unwrap());
        let served = Arc::new(Mutex::new(pem.as_bytes().to_vec()));
        let body = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = body.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-pem-file\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        CaServer {
            url,
            pem: served,
            task,
        }
    }

    pub fn serve(&self, pem: &str) {
        *self.pem.lock().unwrap() = pem.as_bytes().to_vec();
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mirror's identities, made exactly as deploy/mirror grants them: in `local`, the
/// ServiceAccount `ghostwire-mirror` with deploy/mirror/rbac.yaml; in each remote,
/// `ghostwire-mirror-reader` with deploy/mirror/remote/rbac.yaml. Their tokens are files in
/// `dir`; each remote's CA is served by URL.
pub struct MirrorAccess {
    pub dir: PathBuf,
    /// The local cluster's kubeconfig with the mirror's token.
    pub local_kubeconfig: PathBuf,
    /// remote name → (API URL, CA server, token file).
    pub remotes: Vec<(String, String, CaServer, PathBuf)>,
}

pub async fn mirror_access(mc: &MultiCluster, local: &str, remotes: &[&str]) -> MirrorAccess {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "gw-mirror-access-{}-{local}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let lc = admin(mc, local).await;
    namespace(&lc, NS).await;
    apply_file(&lc, "mirror/rbac.yaml", NS).await;
    let local_token = token(&lc, NS, "ghostwire-mirror").await;
    let cluster = mc.cluster(local).unwrap();
    let kc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "mirror",
        "clusters": [{"name": local, "cluster": {"server": format!("https://{}", cluster.api_addr()),
            "certificate-authority-data": b64(cluster.api().ca_pem().as_bytes())}}],
        "users": [{"name": "ghostwire-mirror", "user": {"token": local_token}}],
        "contexts": [{"name": "mirror", "context": {"cluster": local, "user": "ghostwire-mirror"}}]
    });
    let local_kubeconfig = dir.join("local.kubeconfig");
    std::fs::write(&local_kubeconfig, kc.to_string()).unwrap();
    let mut out = Vec::new();
    for r in remotes {
        let rc = admin(mc, r).await;
        namespace(&rc, NS).await;
        apply_file(&rc, "mirror/remote/rbac.yaml", NS).await;
        let t = token(&rc, NS, "ghostwire-mirror-reader").await;
        let path = dir.join(format!("{r}.token"));
        std::fs::write(&path, t).unwrap();
        // Through the cluster's gate, so the test can stop or black-hole it.
        let cluster = mc.cluster(r).unwrap();
        let ca = CaServer::start(cluster.api().ca_pem()).await;
        out.push((
            r.to_string(),
            format!("https://{}", cluster.api_addr()),
            ca,
            path,
        ));
    }
    MirrorAccess {
        dir,
        local_kubeconfig,
        remotes: out,
    }
}

impl Drop for MirrorAccess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl MirrorAccess {
    /// The `remoteClusters[]` entry of remote `name` (API URL, CA URL, token path).
    pub fn remote_json(&self, name: &str, prefix: &str) -> Value {
        let (_, url, ca, token) = self.remotes.iter().find(|r| r.0 == name).unwrap();
        json!({"name": name, "remoteAPIURL": url, "remoteCAURL": ca.url,
               "remoteSATokenPath": token, "servicePrefix": prefix})
    }

    pub fn ca(&self, name: &str) -> &CaServer {
        &self.remotes.iter().find(|r| r.0 == name).unwrap().2
    }
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The `global` block every test uses.
pub fn global_json(service_sync: bool) -> Value {
    json!({"globalSvcLabelSelector": "global=true", "globalSvcRoutingStrategyLabel": "routing=local-first",
           "mirrorSvcLabelSelector": "mirror=true", "mirrorNamespace": NS, "serviceSync": service_sync})
}

/// One mirror replica running in-process.
pub struct Replica {
    pub registry: prometheus_client::registry::Registry,
    pub metrics: Arc<Metrics>,
    pub health: Arc<MirrorHealth>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// How a replica runs, besides its config.
pub struct ReplicaOptions {
    /// Replaces the local client the config's kubeconfig gives (e.g. one through a gate).
    pub local: Option<Client>,
    pub failover_grace: Duration,
    pub probe_interval: Duration,
    pub lease: Option<LeaseConfig>,
    pub ca_refresh: Duration,
    /// How often every name is reconciled without events.
    pub resync: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            local: None,
            failover_grace: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            lease: None,
            ca_refresh: Duration::from_secs(60),
            resync: Duration::from_secs(5),
        }
    }
}

/// A Lease config for replica `id` with a short duration.
pub fn lease(id: &str) -> Option<LeaseConfig> {
    Some(LeaseConfig {
        namespace: NS.into(),
        name: "ghostwire-mirror".into(),
        identity: id.into(),
        duration: Duration::from_secs(2),
    })
}

impl Replica {
    /// Starts a replica of `config` (the seed's JSON), with clients made by the library as
    /// `ghostwire mirror` makes them.
    pub async fn start(config: &Value, o: ReplicaOptions) -> Replica {
        let settings = Settings::from_file(
            serde_json::from_value(config.clone()).unwrap(),
            &Overrides::default(),
        )
        .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let local = match o.local {
            Some(c) => c,
            None => mirror::access::client_for(
                &settings.local_name,
                settings
                    .local_kubeconfig
                    .clone()
                    .map(Access::Kubeconfig)
                    .as_ref(),
                metrics.clone(),
                o.ca_refresh,
            )
            .await
            .unwrap(),
        };
        let mut remotes = Vec::new();
        for r in &settings.remotes {
            remotes.push(
                mirror::access::client_for(&r.name, Some(&r.access), metrics.clone(), o.ca_refresh)
                    .await
                    .unwrap(),
            );
        }
        let resync = o.resync;
        let health = Arc::new(MirrorHealth::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            settings,
            RunOptions {
                local,
                remotes,
                failover_grace: o.failover_grace,
                probe_interval: o.probe_interval,
                lease: o.lease,
                resync,
            },
            metrics.clone(),
            health.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Replica {
            registry,
            metrics,
            health,
            stop,
            task,
        }
    }

    pub fn metrics_text(&self) -> String {
        metrics_text(&self.registry)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
