//! Throughput and latency of the lab API through the real kube-rs client:
//! get and list of 1,000 Services (requests per second; lists decoded by kube-rs and read
//! whole), and watch latency from write to delivery (p50/p99).
//! Run with `cargo bench -p lab-api --bench api`.

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use lab_api::{Options, Server};
use serde_json::json;
use std::time::{Duration, Instant};

const SERVICES: usize = 1_000;
const GETS: usize = 20_000;
const LISTS: usize = 200;
const WATCH_SAMPLES: usize = 1_000;
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() {
    let server = Server::start(Options::default())
        .await
        .expect("server starts");
    let client = server.client().await.expect("client");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let start = Instant::now();
    stream::iter(0..SERVICES)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let s: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("a{}", i % 10)}},
                    "spec": {"selector": {"app": format!("a{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
                svcs.create(&PostParams::default(), &s).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    report("create Service", SERVICES, start.elapsed());

    let start = Instant::now();
    stream::iter(0..GETS)
        .map(|i| {
            let svcs = svcs.clone();
            async move { svcs.get(&format!("svc-{}", i % SERVICES)).await.map(|_| ()) }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    report("get Service", GETS, start.elapsed());

    let start = Instant::now();
    stream::iter(0..LISTS)
        .map(|_| {
            let svcs = svcs.clone();
            async move {
                let l = svcs.list(&ListParams::default()).await?;
                assert_eq!(l.items.len(), SERVICES);
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    report(
        "list 1,000 Services (decoded by kube-rs)",
        LISTS,
        start.elapsed(),
    );

    // The same lists with the reply read whole but not decoded: the server's share.
    let start = Instant::now();
    stream::iter(0..LISTS)
        .map(|_| {
            let client = client.clone();
            async move {
                let req = http::Request::get("/api/v1/namespaces/bench/services")
                    .body(Vec::new())
                    .unwrap();
                let text = client.request_text(req).await?;
                assert!(text.len() > SERVICES * 100);
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    report(
        "list 1,000 Services (reply read whole)",
        LISTS,
        start.elapsed(),
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");
    let rv = server.resource_version().to_string();
    let mut events = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut lat = Vec::with_capacity(WATCH_SAMPLES);
    for i in 0..WATCH_SAMPLES {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}")}})).unwrap();
        let t = Instant::now();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        loop {
            if let Some(WatchEvent::Added(o)) = events.try_next().await.unwrap()
                && o.metadata.name.as_deref() == Some(&format!("cm-{i}"))
            {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "watch latency (create request sent → ADDED received, {WATCH_SAMPLES} samples): p50 {:.2} ms, p99 {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    server.shutdown().await;
}

fn report(what: &str, n: usize, took: Duration) {
    println!(
        "{what}: {n} requests in {:.2} s = {:.0} req/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}
