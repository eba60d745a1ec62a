//! Benchmark, not a test (ignored by default): admissions per second and latency over HTTPS
//! on loopback, against a lab API for owners and the defaults ConfigMap.
//!
//! ```sh
//! cargo test -p injector --release --test bench -- --ignored --nocapture
//! ```
//!
//! Open loop: each request has a scheduled send time. Latency counts from the actual send;
//! how late sends were against their schedule is reported beside it ("send lag"), so a slow
//! answer that delays the requests behind it shows up instead of hiding. (Tokio timers have
//! 1 ms granularity, so up to ~1 ms of lag is the load generator's own.)

mod common;

use common::{Https, pod, review, write_cert};
use injector::TlsMode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

const CONNECTIONS: u32 = 8;

struct Run {
    latencies: Vec<Duration>,
    lags: Vec<Duration>,
    elapsed: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn report(name: &str, mut run: Run) {
    run.latencies.sort();
    run.lags.sort();
    let l = &run.latencies;
    println!(
        "{name}: {} admissions in {:.2?} = {:.0}/s; latency p50 {:.2?} p90 {:.2?} p99 {:.2?} max {:.2?}; send lag p99 {:.2?}",
        l.len(),
        run.elapsed,
        l.len() as f64 / run.elapsed.as_secs_f64(),
        percentile(l, 0.50),
        percentile(l, 0.90),
        percentile(l, 0.99),
        l[l.len() - 1],
        percentile(&run.lags, 0.99),
    );
}

/// `rate` per second (None: as fast as each connection goes) for `secs`.
async fn drive(
    addr: std::net::SocketAddr,
    ca: &str,
    body: &str,
    rate: Option<u32>,
    secs: u64,
) -> Run {
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut https = Https::connect(addr, ca).await.unwrap();
        let body = body.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = rate.map(|r| {
                let period = Duration::from_secs_f64(CONNECTIONS as f64 / r as f64);
                let mut t = tokio::time::interval_at(
                    start + period.mul_f64(c as f64 / CONNECTIONS as f64),
                    period,
                );
                t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                t
            });
            tokio::time::sleep_until(start).await;
            loop {
                let scheduled = match &mut tick {
                    Some(t) => t.tick().await,
                    None => Instant::now(),
                };
                if scheduled >= end {
                    break;
                }
                let sent = Instant::now();
                let (status, resp) = https.post("/mutate", body.clone()).await;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
                out.push((sent.elapsed(), sent - scheduled));
            }
            out
        }));
    }
    let (mut latencies, mut lags) = (Vec::new(), Vec::new());
    for t in tasks {
        for (latency, lag) in t.await.unwrap() {
            latencies.push(latency);
            lags.push(lag);
        }
    }
    Run {
        latencies,
        lags,
        elapsed: start.elapsed().min(Duration::from_secs(secs)),
    }
}

/// The injector's own view (from /metrics): mean time from body read to answer.
async fn server_side(admin: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap()
    };
    let (sum, count) = (
        value("ghostwire_injector_admission_duration_seconds_sum"),
        value("ghostwire_injector_admission_duration_seconds_count"),
    );
    println!(
        "server side: {count} admissions, mean {:.0} µs from body read to answer",
        sum / count * 1e6
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn admissions_over_https() {
    let lab = lab_api::Server::start(lab_api::Options::default())
        .await
        .unwrap();
    let client = lab.client().await.unwrap();
    let dir = common::TempDir::new("bench");
    let files = injector::tls::CertFiles {
        cert: dir.0.join("tls.crt"),
        key: dir.0.join("tls.key"),
    };
    let ca = write_cert(&files);
    let config = injector::Config {
        // As deployed: the defaults ConfigMap is read at most every 10 s.
        defaults_ttl: Duration::from_secs(10),
        tls: TlsMode::Files {
            files: files.clone(),
            reload_every: Duration::from_secs(10),
        },
        ..common::config(&files)
    };
    let running = injector::start(config, client.clone()).await.unwrap();
    let addr = running.webhook_addr;

    // A Pod opted in by its own annotation (no owner lookups).
    let direct = review(
        "CREATE",
        pod(
            "bench",
            json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/jumpHook": "PREROUTING"}),
        ),
    )
    .to_string();
    // A Pod owned by a ReplicaSet of a Deployment: two API reads per admission.
    use kube::api::{Api, PostParams};
    let spec = json!({"selector": {"matchLabels": {"app": "b"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}});
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let d = deploys.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "b", "annotations": {"ghostwire.dev/enabled": "true"}}, "spec": spec}
    )).unwrap()).await.unwrap();
    let oref = |kind: &str, name: &str, uid: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(client.clone(), "default");
    let rs = rss.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "b-1", "ownerReferences": oref("Deployment", "b", d.metadata.uid.as_deref().unwrap())}, "spec": spec}
    )).unwrap()).await.unwrap();
    let mut owned: Value = pod("b-1-x", json!({}));
    owned["metadata"]["namespace"] = "default".into();
    owned["metadata"]["ownerReferences"] =
        oref("ReplicaSet", "b-1", rs.metadata.uid.as_deref().unwrap());
    let owned = review("CREATE", owned).to_string();

    // Warm up connections, allocator and caches.
    drive(addr, &ca, &direct, Some(200), 1).await;
    report(
        "pod annotation, 500/s",
        drive(addr, &ca, &direct, Some(500), 10).await,
    );
    report(
        "owner chain (2 API reads per owner TTL), 500/s",
        drive(addr, &ca, &owned, Some(500), 10).await,
    );
    report(
        "pod annotation, max rate, 8 connections",
        drive(addr, &ca, &direct, None, 5).await,
    );
    report(
        "owner chain, max rate, 8 connections",
        drive(addr, &ca, &owned, None, 5).await,
    );
    server_side(running.admin_addr).await;
    running.stop().await;
}
