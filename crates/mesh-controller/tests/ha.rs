//! Two controller replicas serve at once, each from its own watch of the API (nothing shared
//! but the API), and a proxy whose replica goes away fails over to the other and keeps
//! following changes.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use lab_api::{Options, Server};
use mesh_controller::auth::TokenReviewer;
use mesh_controller::feed::ControllerSource;
use mesh_controller::metrics::Metrics;
use mesh_controller::model::Model;
use mesh_controller::server::Controller;
use mesh_proxy::store::{ConfigSource, Store};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

mod common;

use common::{AUDIENCE, pod_token, start, until};

fn slice(addrs: &[&str]) -> EndpointSlice {
    serde_json::from_value(json!({"metadata": {"name": "app-b-abc",
        "labels": {"kubernetes.io/service-name": "app-b"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()}))
    .unwrap()
}

/// The endpoints a proxy's store has for `dst`, sorted.
fn endpoints(store: &Store, dst: SocketAddr) -> Vec<String> {
    let snap = store.load();
    let mut got: Vec<String> = snap
        .service(dst)
        .map(|s| {
            s.backends
                .iter()
                .flat_map(|b| b.endpoints.iter().map(|e| e.addr.to_string()))
                .collect()
        })
        .unwrap_or_default();
    got.sort();
    got
}

/// One replica: its own model fed by its own watch, its own server.
async fn replica(admin: &kube::Client) -> (Controller, common::Running) {
    let model = Model::default();
    tokio::spawn(mesh_controller::watch::run(
        admin.clone(),
        model.clone(),
        "cluster.local".into(),
    ));
    let mut registry = prometheus_client::registry::Registry::default();
    let auth = Arc::new(TokenReviewer::new(admin.clone(), AUDIENCE));
    let controller = Controller::new(model, auth, Metrics::new(&mut registry));
    let running = start(controller.clone(), "127.0.0.1:0".parse().unwrap()).await;
    (controller, running)
}

fn serves(controller: &Controller, pod: &str) -> bool {
    controller
        .subscribers()
        .iter()
        .any(|s| s.caller.pod() == format!("default/{pod}") && s.acked > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_at_once_and_proxies_fail_over() {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(admin.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    let svc = serde_json::from_value(json!({"metadata": {"name": "app-b"},
        "spec": {"selector": {"app": "app-b"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    let made = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let dst: SocketAddr = format!("{}:80", made.spec.unwrap().cluster_ip.unwrap())
        .parse()
        .unwrap();
    slices
        .create(&PostParams::default(), &slice(&["10.244.0.5"]))
        .await
        .unwrap();

    let (a, running_a) = replica(&admin).await;
    let (b, running_b) = replica(&admin).await;
    let dir = std::env::temp_dir().join(format!("gw-meshctl-ha-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // proxy-1 prefers A, proxy-2 prefers B.
    let mut stores = Vec::new();
    let mut feeds = Vec::new();
    for (pod, order) in [
        ("proxy-1", [running_a.addr, running_b.addr]),
        ("proxy-2", [running_b.addr, running_a.addr]),
    ] {
        let (token, _) = pod_token(&admin, pod, &[AUDIENCE]).await;
        let path = dir.join(pod);
        std::fs::write(&path, token).unwrap();
        let source =
            ControllerSource::new(order.iter().map(|a| format!("http://{a}")).collect(), path);
        let store = Store::default();
        feeds.push(tokio::spawn(
            Box::new(source).run(store.clone(), Box::new(|_| {})),
        ));
        stores.push(store);
    }

    // Both replicas serve at once, each to the proxy that prefers it.
    until("both proxies configured", || {
        stores
            .iter()
            .all(|s| endpoints(s, dst) == ["10.244.0.5:8080"])
    })
    .await;
    until("A serves proxy-1 and B proxy-2", || {
        serves(&a, "proxy-1") && serves(&b, "proxy-2")
    })
    .await;
    assert!(!serves(&a, "proxy-2") && !serves(&b, "proxy-1"));

    // A goes away: proxy-1 keeps its config and moves to B.
    running_a.stop().await;
    assert_eq!(endpoints(&stores[0], dst), ["10.244.0.5:8080"]);
    until("proxy-1 failed over to B", || serves(&b, "proxy-1")).await;

    // A change in the API reaches both proxies through the replica left.
    slices
        .replace("app-b-abc", &PostParams::default(), &{
            let mut s = slices.get("app-b-abc").await.unwrap();
            s.endpoints = slice(&["10.244.0.5", "10.244.0.6"]).endpoints;
            s
        })
        .await
        .unwrap();
    until("the new endpoint on both proxies", || {
        stores
            .iter()
            .all(|s| endpoints(s, dst) == ["10.244.0.5:8080", "10.244.0.6:8080"])
    })
    .await;

    for f in feeds {
        f.abort();
    }
    running_b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
