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
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    if sas.get_opt(sa).await.unwrap().is_none() {
        let account = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
        sas.create(&PostParams::default(), &account).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
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
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}
