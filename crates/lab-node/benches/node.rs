//! Lab node latencies (needs root): Pod create → Ready, and endpoint change → ClusterIP DNAT
//! updated in the node's kernel.
//!
//! ```sh
//! sudo cargo bench -p lab-node --bench node
//! ```
//!
//! - create → Ready: from the create request to the client seeing `Ready=True` through a watch;
//!   100 Pods one after another (each alone on the node), then 100 Pods created at once.
//! - endpoint change → DNAT: a Pod's label is patched so the Service selects it (or not); from
//!   the patch request to kube-proxy having applied the new table (`nft -f -` returned) — the
//!   whole path: API → endpoints controller → EndpointSlice → API → kube-proxy → kernel.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use lab_node::{Cluster, ClusterOptions, scenario};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const PODS: usize = 100;
const CHANGES: usize = 100;

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "100000"]}]}
    }))
    .unwrap()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn report(what: &str, v: Vec<Duration>) {
    println!(
        "{what:<44} n={:<4} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        v.len(),
        pct(v.clone(), 0.5).as_secs_f64() * 1e3,
        pct(v.clone(), 0.99).as_secs_f64() * 1e3,
        pct(v, 1.0).as_secs_f64() * 1e3,
    );
}

/// Creates pods `prefix-0..n` (all at once when `burst`); returns each one's create → Ready.
async fn create_to_ready(
    client: &kube::Client,
    prefix: &str,
    n: usize,
    burst: bool,
) -> Vec<Duration> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let watch_api = api.clone();
    let watching = tokio::spawn(async move {
        let mut s = watcher(watch_api, watcher::Config::default()).boxed();
        let mut listed = Some(listed_tx);
        let mut seen = HashSet::new();
        while let Some(Ok(ev)) = s.next().await {
            match ev {
                watcher::Event::InitDone => {
                    if let Some(tx) = listed.take() {
                        let _ = tx.send(());
                    }
                }
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if is_ready(&p) && seen.insert(name.clone()) {
                        let _ = ready_tx.send((name, Instant::now()));
                    }
                }
                _ => {}
            }
        }
    });
    listed_rx.await.unwrap();
    let mut started = HashMap::new();
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let t0 = Instant::now();
        api.create(
            &PostParams::default(),
            &pod(&name, json!({"bench": prefix})),
        )
        .await
        .unwrap();
        started.insert(name.clone(), t0);
        if !burst {
            let (got, t1) = tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, name);
            out.push(t1 - t0);
        }
    }
    while burst && out.len() < n {
        let (got, t1) = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .unwrap()
            .unwrap();
        out.push(t1 - started[&got]);
    }
    watching.abort();
    out
}

async fn endpoint_changes(cluster: &Cluster, client: &kube::Client) -> Vec<Duration> {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench"},
        "spec": {"selector": {"svc": "bench"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    scenario::apply(client, "default", &svc).await.unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod("ep-steady", json!({"svc": "bench"})),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &pod("ep-toggle", json!({})))
        .await
        .unwrap();
    scenario::wait_ready(
        client,
        "default",
        &["ep-steady", "ep-toggle"],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let ip: IpAddr = scenario::cluster_ips(client, "default", "bench")
        .await
        .unwrap()[0];
    let count = |want: usize| {
        move |rules: &[lab_node::proxy::PortRule]| {
            rules
                .iter()
                .any(|r| r.ip == ip && r.endpoints.len() == want)
        }
    };
    let node = cluster.node();
    node.wait_for_rules("one endpoint", Duration::from_secs(30), count(1))
        .await
        .unwrap();
    let mut out = Vec::new();
    for i in 0..CHANGES {
        let (label, want) = if i % 2 == 0 {
            (json!("bench"), 2)
        } else {
            (json!(null), 1)
        };
        let patch = json!({"metadata": {"labels": {"svc": label}}});
        let t0 = Instant::now();
        api.patch("ep-toggle", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        node.wait_for_rules("endpoint change", Duration::from_secs(30), count(want))
            .await
            .unwrap();
        out.push(t0.elapsed());
    }
    out
}

async fn delete_all(client: &kube::Client, prefix: &str) {
    let names: Vec<String> = (0..PODS).map(|i| format!("{prefix}-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    scenario::delete_pods(client, "default", &refs, Duration::from_secs(120))
        .await
        .unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = ClusterOptions::new("bench", "/nonexistent/ghostwire".into());
        opts.backoff_initial = Duration::from_millis(500);
        let cluster = Cluster::start(opts)
            .await
            .expect("lab cluster (root needed)");
        let client = cluster.client().await.unwrap();
        println!("lab node benchmark ({PODS} pods, {CHANGES} endpoint changes)");
        let one = create_to_ready(&client, "seq", PODS, false).await;
        report("pod create → Ready, one at a time", one);
        delete_all(&client, "seq").await;
        let burst = create_to_ready(&client, "burst", PODS, true).await;
        report("pod create → Ready, 100 created at once", burst);
        delete_all(&client, "burst").await;
        let changes = endpoint_changes(&cluster, &client).await;
        report("endpoint change → ClusterIP DNAT applied", changes);
        cluster.shutdown(Duration::from_secs(1)).await;
    });
}
