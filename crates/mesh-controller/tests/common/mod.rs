//! What the controller's lab tests share: tokens bound to Pods, a controller on loopback, and a
//! bounded wait.

#![allow(dead_code)] // each test file uses its own part

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use mesh_controller::server::{Controller, serve};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const AUDIENCE: &str = mesh_controller::DEFAULT_AUDIENCE;

/// A Pod running as `default` and a token bound to it, for `audiences`.
pub async fn pod_token(admin: &kube::Client, pod: &str, audiences: &[&str]) -> (String, String) {
    pod_token_as(admin, pod, "default", audiences).await
}

/// A Pod running as ServiceAccount `sa` (both made if missing, in `default`) and a token bound
/// to it, for `audiences`.
pub async fn pod_token_as(
    admin: &kube::Client,
    pod: &str,
    sa: &str,
    audiences: &[&str],
) -> (String, String) {
    pod_token_in(admin, "default", pod, sa, audiences).await
}

/// [`pod_token_as`] in namespace `ns` (which must exist).
pub async fn pod_token_in(
    admin: &kube::Client,
    ns: &str,
    pod: &str,
    sa: &str,
    audiences: &[&str],
) -> (String, String) {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    if sas.get_opt(sa).await.unwrap().is_none() {
        let account = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
        sas.create(&PostParams::default(), &account).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let uid = match pods.get_opt(pod).await.unwrap() {
        Some(p) => p.metadata.uid.unwrap(),
        None => {
            let p: Pod = serde_json::from_value(json!({"metadata": {"name": pod}, "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "app"}]}})).unwrap();
            pods.create(&PostParams::default(), &p)
                .await
                .unwrap()
                .metadata
                .uid
                .unwrap()
        }
    };
    let tr = serde_json::from_value(json!({"spec": {"audiences": audiences, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}})).unwrap();
    let token = sas
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    (token, uid)
}

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

pub async fn start(controller: Controller, addr: SocketAddr) -> Running {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(serve(controller, listener, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Waits (bounded) until `f` holds.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A raw `StreamConfig` subscriber: every update it gets, in order (it ACKs none).
pub struct Recorder {
    pub updates: std::sync::Arc<std::sync::Mutex<Vec<mesh_api::v1::ConfigUpdate>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn subscribe(addr: SocketAddr, token: &str) -> Recorder {
        use futures::StreamExt;
        use mesh_api::v1;
        let mut client =
            v1::mesh_control_client::MeshControlClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        let first = v1::ProxyMessage {
            kind: Some(v1::proxy_message::Kind::Subscribe(v1::Subscribe::default())),
        };
        let mut req =
            tonic::Request::new(futures::stream::iter([first]).chain(futures::stream::pending()));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut stream = client.stream_config(req).await.unwrap().into_inner();
        let updates = std::sync::Arc::<std::sync::Mutex<Vec<v1::ConfigUpdate>>>::default();
        let u = updates.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                u.lock().unwrap().push(m);
            }
        });
        Recorder { updates, task }
    }

    pub fn get(&self) -> Vec<mesh_api::v1::ConfigUpdate> {
        self.updates.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
