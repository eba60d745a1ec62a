//! Deployments at scale on a lab cluster (needs root): a Deployment of `GW_BENCH_REPLICAS` (100)
//! replicas from apply to all Ready, then a rolling update of all of them, `GW_BENCH_RUNS` (3)
//! times on one cluster.
//!
//! ```sh
//! sudo cargo bench -p lab-node --bench workloads
//! GW_BENCH_REPLICAS=100 GW_BENCH_RUNS=5 GW_BENCH_PROBE=exec sudo -E cargo bench -p lab-node --bench workloads
//! ```
//!
//! Pods are `busybox` running `sleep` with an exec readiness probe (`true`) every second
//! (`GW_BENCH_PROBE=none`: without), `terminationGracePeriodSeconds: 1`, the default
//! RollingUpdate (25 % surge, 25 % unavailable).
//!
//! - apply → all Ready: from the create request to the Deployment's status saying every
//!   replica is ready and updated; also each Pod's create → Ready (its first `Ready=True` seen
//!   through a watch), as p50/p99 over all Pods of the run.
//! - rolling update: from the template patch (an annotation, as `kubectl rollout restart`
//!   does) to the Deployment having `replicas` updated, available pods and no old ones; the
//!   bounds are checked at every Pod event the watch delivers meanwhile: Pods not being deleted
//!   at most `replicas + maxSurge`, Ready ones at least `replicas - maxUnavailable` (25 % each,
//!   rounded up and down as Kubernetes does). The run stops with an error if they are broken.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use lab_node::scenario::RolloutBounds;
use lab_node::{Cluster, ClusterOptions};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn deployment(name: &str, replicas: i32, probe: &str) -> Deployment {
    let mut c = json!({"name": "main", "image": "busybox", "command": ["sleep", "1000000"]});
    match probe {
        "none" => {}
        _ => c["readinessProbe"] = json!({"exec": {"command": ["true"]}, "periodSeconds": 1}),
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [c]}}}
    }))
    .unwrap()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the Deployment's rollout is complete at `generation` with `replicas` ready pods.
fn complete(d: &Deployment, replicas: i32, generation: i64) -> bool {
    let Some(s) = &d.status else { return false };
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.ready_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
}

/// Waits until the rollout is complete; past `GW_BENCH_LIMIT_SECONDS` (1800) stops the run with
/// the Deployment's and its ReplicaSets' status, so a stuck rollout shows where it stopped.
async fn wait_complete(client: &kube::Client, name: &str, replicas: i32, generation: i64) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let limit = Duration::from_secs(env("GW_BENCH_LIMIT_SECONDS", 1800));
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(d) = api.get(name).await
            && complete(&d, replicas, generation)
        {
            return;
        }
        if Instant::now() > deadline {
            let d = api.get(name).await.ok();
            let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
            let sets: Vec<String> = rss
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    format!(
                        "{} spec {:?} status {}",
                        r.metadata.name.as_deref().unwrap_or_default(),
                        r.spec.as_ref().and_then(|s| s.replicas),
                        serde_json::to_string(&r.status).unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "deployment {name} not complete after {limit:?}: generation {:?} status {}\nreplica sets:\n{}",
                d.as_ref().and_then(|d| d.metadata.generation),
                serde_json::to_string(&d.and_then(|d| d.status)).unwrap_or_default(),
                sets.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let replicas = env("GW_BENCH_REPLICAS", 100) as i32;
    let runs = env("GW_BENCH_RUNS", 3);
    let probe = std::env::var("GW_BENCH_PROBE").unwrap_or_else(|_| "exec".into());
    // busybox pods only: the ghostwire binary is never started.
    let bin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ghostwire");
    let cluster = Cluster::start(ClusterOptions::new("bench-workloads", bin))
        .await
        .expect("lab cluster (root needed)");
    let client = cluster.client().await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    println!("{replicas} replicas, readiness probe: {probe}, {runs} runs");
    let (mut applies, mut rolls) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let name = format!("bench-{run}");
        // Each pod's first Ready, seen through a watch.
        let ready_at: std::sync::Arc<std::sync::Mutex<HashMap<String, (Instant, Instant)>>> =
            Default::default();
        let seen = ready_at.clone();
        let tracker: std::sync::Arc<std::sync::Mutex<RolloutBounds>> = Default::default();
        let track = tracker.clone();
        let watch_api = pods.clone();
        let selector = format!("app={name}");
        let watching = tokio::spawn(async move {
            let cfg = watcher::Config::default().labels(&selector);
            let mut s = watcher(watch_api, cfg).boxed();
            let mut first_seen: HashMap<String, Instant> = HashMap::new();
            while let Some(Ok(ev)) = s.next().await {
                track.lock().unwrap().observe(&ev);
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    let n = p.metadata.name.clone().unwrap_or_default();
                    let born = *first_seen.entry(n.clone()).or_insert_with(Instant::now);
                    if is_ready(&p) {
                        seen.lock()
                            .unwrap()
                            .entry(n)
                            .or_insert((born, Instant::now()));
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        deploys
            .create(&PostParams::default(), &deployment(&name, replicas, &probe))
            .await
            .unwrap();
        wait_complete(&client, &name, replicas, 1).await;
        let apply = t0.elapsed();
        let per_pod: Vec<Duration> = ready_at
            .lock()
            .unwrap()
            .values()
            .map(|(born, ready)| ready.duration_since(*born))
            .collect();
        println!(
            "run {run}: apply → {replicas} Ready {:>8.0} ms   per pod create → Ready p50 {:>7.0} ms p99 {:>7.0} ms (n={})",
            ms(apply),
            ms(pct(per_pod.clone(), 0.5)),
            ms(pct(per_pod.clone(), 0.99)),
            per_pod.len()
        );
        applies.push(apply);

        tracker.lock().unwrap().start();
        let t1 = Instant::now();
        let patched = deploys
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": format!("run-{run}")}}}}})),
            )
            .await
            .unwrap();
        let generation = patched.metadata.generation.unwrap_or(2);
        wait_complete(&client, &name, replicas, generation).await;
        // The old pods are gone too (not only scaled away).
        loop {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .unwrap()
                .items;
            if list.len() == replicas as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let roll = t1.elapsed();
        // 25 % of replicas: surge rounded up, unavailable rounded down.
        let (surge, unavailable) = ((replicas as usize).div_ceil(4), replicas as usize / 4);
        let (max_active, min_ready, events) = {
            let mut t = tracker.lock().unwrap();
            t.stop();
            (t.max_active, t.min_ready, t.events)
        };
        println!(
            "run {run}: rolling update of {replicas}  {:>8.0} ms   at {events} Pod events: at most {max_active} Pods (bound {}), at least {min_ready} Ready (bound {})",
            ms(roll),
            replicas as usize + surge,
            replicas as usize - unavailable
        );
        assert!(
            max_active <= replicas as usize + surge && min_ready >= replicas as usize - unavailable,
            "rolling update bounds broken"
        );
        rolls.push(roll);
        watching.abort();

        deploys
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        loop {
            let left = pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .unwrap()
                .items
                .len();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "apply → all Ready over {runs} runs: p50 {:.0} ms, p99 {:.0} ms; rolling update: p50 {:.0} ms, p99 {:.0} ms",
        ms(pct(applies.clone(), 0.5)),
        ms(pct(applies, 0.99)),
        ms(pct(rolls.clone(), 0.5)),
        ms(pct(rolls, 0.99)),
    );
    cluster.shutdown(Duration::from_secs(2)).await;
}
