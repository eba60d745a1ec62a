//! The lab API at the service mirror's scale, and what authorization costs, in one run:
//! - get Service as a ServiceAccount (token, RBAC `view`) against a server with RBAC and one
//!   without, alternating rounds so both see the same machine load;
//! - list of 10,000 Services (the whole JSON reply read, not decoded, and decoded by kube-rs);
//! - one Service write fanned out to 100 watchers (time until every watcher has it).
//!
//! `cargo bench -p lab-api --bench scale`; `GW_BENCH_ROUNDS` (default 5) and `GW_BENCH_LISTS`
//! (default 20) shorten a run.

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use lab_api::{Options, RunningServer, Server};
use serde_json::json;
use std::time::{Duration, Instant};

const SERVICES: usize = 10_000;
const GETS: usize = 10_000;

/// This process's resident set (both servers, the clients and the runtime), in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A count from the environment, or its default.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const WATCHERS: usize = 100;
const WRITES: usize = 200;
const CONCURRENCY: usize = 16;

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("a{}", i % 10)}},
        "spec": {"selector": {"app": format!("a{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

async fn fill(client: &kube::Client, n: usize) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    stream::iter(0..n)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                svcs.create(&PostParams::default(), &service(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// A client authenticating as ServiceAccount bench/reader, bound to `view` in `bench`.
async fn reader(server: &RunningServer) -> kube::Client {
    let admin = server.client().await.unwrap();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "bench");
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "bench"}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "bench")
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let tr = serde_json::from_value(json!({"spec": {}})).unwrap();
    let token = sas
        .create_token_request("reader", &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let base = server.kube_config().await.unwrap();
    let mut c = kube::Config::new(base.cluster_url.clone());
    c.root_cert = base.root_cert.clone();
    c.auth_info.token = Some(token.into());
    kube::Client::try_from(c).unwrap()
}

async fn gets(client: &kube::Client) -> Duration {
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let start = Instant::now();
    stream::iter(0..GETS)
        .map(|i| {
            let svcs = svcs.clone();
            async move { svcs.get(&format!("svc-{}", i % 100)).await.map(|_| ()) }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    start.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let rounds = knob("GW_BENCH_ROUNDS", 5);
    let lists = knob("GW_BENCH_LISTS", 20);
    // RBAC on and off, side by side: 100 Services each is enough for gets.
    let on = Server::start(Options::default()).await.unwrap();
    let off = Server::start(Options {
        rbac: false,
        ..Default::default()
    })
    .await
    .unwrap();
    fill(&on.client().await.unwrap(), 100).await;
    fill(&off.client().await.unwrap(), 100).await;
    let (c_on, c_off) = (reader(&on).await, reader(&off).await);
    gets(&c_on).await;
    gets(&c_off).await;
    let (mut t_on, mut t_off) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        t_on += gets(&c_on).await;
        t_off += gets(&c_off).await;
    }
    let (r_on, r_off) = (rate(GETS * rounds, t_on), rate(GETS * rounds, t_off));
    println!(
        "get Service as a ServiceAccount token ({CONCURRENCY} concurrent, {rounds}×{GETS} each, alternating): RBAC on {r_on:.0} req/s, off {r_off:.0} req/s, authorization costs {:.1} %",
        (1.0 - r_on / r_off) * 100.0
    );
    drop(off);

    // 10,000 Services in one namespace, created in chunks of 1,000 so that a create whose cost
    // grows with the number of Services shows in the per-chunk rates.
    let admin = on.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(admin.clone(), "bench");
    let mut chunks = Vec::new();
    let total = Instant::now();
    for chunk in (100..SERVICES).step_by(1_000) {
        let end = (chunk + 1_000).min(SERVICES);
        let start = Instant::now();
        stream::iter(chunk..end)
            .map(|i| {
                let svcs = svcs.clone();
                async move {
                    svcs.create(&PostParams::default(), &service(i))
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        chunks.push(format!("{:.0}", rate(end - chunk, start.elapsed())));
    }
    println!(
        "create Service ({CONCURRENCY} concurrent, 100 → {SERVICES} Services): {:.0} req/s; per 1,000 in order: {} req/s",
        rate(SERVICES - 100, total.elapsed()),
        chunks.join(", ")
    );
    println!(
        "process RSS with {SERVICES} Services stored: {:.1} MiB",
        rss_mib()
    );
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..lists {
        let req = http::Request::get("/api/v1/namespaces/bench/services")
            .body(Vec::new())
            .unwrap();
        bytes = admin.request_text(req).await.unwrap().len();
    }
    println!(
        "list 10,000 Services, reply read whole ({} MB): {:.1} req/s",
        bytes / 1_000_000,
        rate(lists, start.elapsed())
    );
    let start = Instant::now();
    for _ in 0..lists {
        let l = svcs.list(&ListParams::default()).await.unwrap();
        assert_eq!(l.items.len(), SERVICES);
    }
    println!(
        "list 10,000 Services, decoded by kube-rs: {:.1} req/s",
        rate(lists, start.elapsed())
    );

    // One write, 100 watchers.
    let rv = on.resource_version().to_string();
    let mut watches = Vec::new();
    for _ in 0..WATCHERS {
        watches.push(
            svcs.watch(&WatchParams::default(), &rv)
                .await
                .unwrap()
                .boxed(),
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for mut w in watches {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = w.try_next().await {
                if let WatchEvent::Modified(s) = ev {
                    let i: usize = s.metadata.labels.unwrap()["seq"].parse().unwrap();
                    let _ = tx.send((i, Instant::now()));
                }
            }
        });
    }
    let mut fanout = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let patch = json!({"metadata": {"labels": {"seq": i.to_string()}}});
        let t = Instant::now();
        svcs.patch(
            "svc-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
        let mut got = 0;
        let mut last = t;
        while got < WATCHERS {
            let (seq, at) = rx.recv().await.unwrap();
            if seq == i {
                got += 1;
                last = at;
            }
        }
        fanout.push(last - t);
    }
    fanout.sort();
    let pct = |p: f64| fanout[((fanout.len() as f64 * p) as usize).min(fanout.len() - 1)];
    println!(
        "one write to {WATCHERS} watchers, patch sent → the last watcher has it ({WRITES} writes): p50 {:.2} ms, p99 {:.2} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    on.shutdown().await;
}
