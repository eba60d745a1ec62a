//! The controller under 1,000 proxies (issue 14 point 8; docs/benchmarks.md, "Mesh controller").
//!
//! The controller runs in a child process (this binary again, `GW_BENCH_ROLE=controller`), so
//! its CPU time and RSS are its own: the real `Controller` and `serve` on loopback, its model
//! filled with a stated cluster (`GW_BENCH_SERVICES` Services, `GW_BENCH_ENDPOINTS` endpoints
//! spread over them, ten namespaces, every endpoint meshed with its identity), a CA made at
//! start. This process runs the simulated proxies: each its own HTTP/2 connection and
//! `StreamConfig` stream, its own identity (see [`BenchAuth`]), merging every update into its
//! view and ACKing it.
//!
//! Measured: a route change (a new split on one Service, written into the model as the watch
//! would) → ACKed by every subscriber, p50/p99 over `GW_BENCH_CHANGES` changes, and the same per
//! single proxy; bytes per delta and per snapshot; controller CPU per change and per delta
//! pushed; controller RSS per subscriber; `SignCertificate` calls per second
//! (`GW_BENCH_CSRS` CSRs made beforehand, `GW_BENCH_CSR_CONCURRENCY` in flight).
//!
//! `cargo bench -p mesh-controller --bench controller` (release: the lead's run); small sizes in
//! the dev profile: `GW_BENCH_SUBSCRIBERS=50 GW_BENCH_SERVICES=100 GW_BENCH_ENDPOINTS=1000
//! cargo bench --profile dev -p mesh-controller --bench controller`.

use futures::StreamExt;
use mesh_api::v1;
use mesh_api::v1::mesh_control_client::MeshControlClient;
use mesh_api::v1::proxy_message::Kind;
use mesh_controller::auth::{AuthError, Authenticate, Caller};
use mesh_controller::ca::{Authority, CaHandle, spiffe_id};
use mesh_controller::metrics::Metrics;
use mesh_controller::model::Model;
use mesh_controller::server::{Controller, serve};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const NAMESPACES: usize = 10;
const TRUST_DOMAIN: &str = "cluster.local";

fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?}: not a number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

/// Identities without an API server: a subscriber's token is `namespace/sa/pod`, taken as its
/// verified identity. TokenReview (one API call per stream or CSR) is not part of what is
/// measured; everything after it is (per-identity views, per-identity CSR checks).
struct BenchAuth;

impl Authenticate for BenchAuth {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            let mut parts = token.split('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(ns), Some(sa), Some(pod)) => Ok(Caller {
                    namespace: ns.into(),
                    service_account: sa.into(),
                    pod_name: pod.into(),
                    pod_uid: format!("uid-{pod}"),
                }),
                _ => Err(AuthError::Refused(format!("bench token {token:?}"))),
            }
        })
    }
}

/// Subscriber `i`'s token: its namespace, ServiceAccount and Pod.
fn token(i: usize) -> String {
    let ns = i % NAMESPACES;
    format!("ns-{ns}/sa-{}/proxy-{i}", i % 50)
}

/// The stated cluster: `services` Services (port 80) over ten namespaces, `endpoints` endpoints
/// spread evenly, two backends per Service (v1, v2) and one route splitting between them.
fn cluster(services: usize, endpoints: usize) -> Vec<v1::Service> {
    let mut next = 0usize;
    (0..services)
        .map(|i| {
            let ns = format!("ns-{}", i % NAMESPACES);
            let count = endpoints / services + usize::from(i < endpoints % services);
            let mut backends: Vec<v1::Backend> = ["v1", "v2"]
                .iter()
                .map(|b| v1::Backend {
                    name: (*b).into(),
                    weight: 1,
                    ..Default::default()
                })
                .collect();
            for j in 0..count {
                let ep = format!(
                    "10.{}.{}.{}:8080",
                    64 + (next >> 16),
                    (next >> 8) & 255,
                    next & 255
                );
                next += 1;
                let b = &mut backends[j % 2];
                b.identities.insert(
                    ep.clone(),
                    spiffe_id(TRUST_DOMAIN, &ns, &format!("svc-{i}")),
                );
                b.endpoints.push(ep);
            }
            v1::Service {
                name: format!("svc-{i}.{ns}:80"),
                addresses: vec![format!("10.96.{}.{}:80", i >> 8, i & 255)],
                backends,
                routes: vec![route(90)],
                ..Default::default()
            }
        })
        .collect()
}

fn route(v1_weight: u32) -> v1::Route {
    v1::Route {
        name: "split".into(),
        r#match: Some(v1::RouteMatch {
            path_prefix: "/".into(),
            ..Default::default()
        }),
        split: vec![
            v1::Split {
                backend: "v1".into(),
                weight: v1_weight,
            },
            v1::Split {
                backend: "v2".into(),
                weight: 100 - v1_weight,
            },
        ],
        ..Default::default()
    }
}

/// The child: the controller, commands on stdin (`change N`, answered `version V`; `quit`).
fn controller_main() {
    let services = knob("GW_BENCH_SERVICES", 1000);
    let endpoints = knob("GW_BENCH_ENDPOINTS", 10_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let model = Model::default();
    model.replace(cluster(services, endpoints));
    let (authority, _) = Authority::generate(
        TRUST_DOMAIN,
        Duration::from_secs(24 * 3600),
        SystemTime::now(),
    )
    .unwrap();
    let controller = Controller::new(model.clone(), Arc::new(BenchAuth), Metrics::default())
        .with_ca(CaHandle::new(authority));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(serve(controller, listener, std::future::pending()));
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {addr}").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let Some(n) = line.strip_prefix("change ") else {
            break;
        };
        let n: usize = n.parse().unwrap();
        let name = format!("svc-{}.ns-{}:80", n % services, n % services % NAMESPACES);
        // A weight it did not have before: 1..=89 (the cluster starts at 90).
        let w = (n % 89) as u32 + 1;
        let version = model.update(|m| {
            let mut s = (*m[&name]).clone();
            s.routes = vec![route(w)];
            m.insert(name.clone(), Arc::new(s));
        });
        writeln!(out, "version {version}").unwrap();
        out.flush().unwrap();
    }
}

/// (utime + stime) of `pid` in seconds (USER_HZ is 100 on Linux), and its RSS in bytes.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (ticks as f64 / 100.0, rss_kb * 1024)
}

/// What the simulated proxies record: per version, when each ACK was sent; bytes received.
#[derive(Default)]
struct Record {
    acks: HashMap<u64, Vec<Instant>>,
    snapshot_bytes: Vec<usize>,
    delta_bytes: Vec<usize>,
}

/// One simulated proxy: subscribes as `token`, merges each update into its view, ACKs it.
async fn subscriber(address: String, token: String, record: Arc<Mutex<Record>>) {
    let channel = tonic::transport::Endpoint::from_shared(address)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = MeshControlClient::new(channel);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<v1::ProxyMessage>(4);
    tx.send(v1::ProxyMessage {
        kind: Some(Kind::Subscribe(v1::Subscribe::default())),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut updates = client.stream_config(req).await.unwrap().into_inner();
    let mut view: BTreeMap<String, v1::Service> = BTreeMap::new();
    while let Some(Ok(u)) = updates.next().await {
        let bytes = u.encoded_len();
        if u.snapshot {
            view.clear();
        }
        for r in &u.removed {
            view.remove(r);
        }
        for s in u.services {
            view.insert(s.name.clone(), s);
        }
        let ack = v1::ProxyMessage {
            kind: Some(Kind::Ack(v1::Ack { version: u.version })),
        };
        if tx.send(ack).await.is_err() {
            return;
        }
        let now = Instant::now();
        let mut r = record.lock().unwrap();
        r.acks.entry(u.version).or_default().push(now);
        if u.snapshot {
            r.snapshot_bytes.push(bytes);
        } else {
            r.delta_bytes.push(bytes);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Waits until `n` ACKs of `version` are in; false after `limit`.
fn wait_acks(record: &Mutex<Record>, version: u64, n: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if record
            .lock()
            .unwrap()
            .acks
            .get(&version)
            .is_some_and(|a| a.len() >= n)
        {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn main() {
    if std::env::var("GW_BENCH_ROLE").as_deref() == Ok("controller") {
        return controller_main();
    }
    let subscribers = knob("GW_BENCH_SUBSCRIBERS", 1000);
    let services = knob("GW_BENCH_SERVICES", 1000);
    let endpoints = knob("GW_BENCH_ENDPOINTS", 10_000);
    let changes = knob("GW_BENCH_CHANGES", 20);
    let csrs = knob("GW_BENCH_CSRS", 500);
    let concurrency = knob("GW_BENCH_CSR_CONCURRENCY", 16).max(1);
    let limit = Duration::from_secs(knob("GW_BENCH_TIMEOUT_S", 120) as u64);
    println!(
        "mesh controller: {subscribers} subscribers, {services} Services, {endpoints} endpoints \
         ({NAMESPACES} namespaces), {changes} route changes, {csrs} CSRs ({concurrency} in flight)"
    );

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("GW_BENCH_ROLE", "controller")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read = || from_child.next().unwrap().unwrap();
    let address = format!("http://{}", read().strip_prefix("listening ").unwrap());
    let (_, rss_idle) = usage(pid);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let record = Arc::new(Mutex::new(Record::default()));
    let start = Instant::now();
    for i in 0..subscribers {
        rt.spawn(subscriber(address.clone(), token(i), record.clone()));
    }
    assert!(
        wait_acks(&record, 1, subscribers, limit),
        "not every subscriber ACKed its snapshot within {limit:?}"
    );
    let subscribed = start.elapsed();
    // Let the controller settle (its per-stream tasks are idle now) before reading its RSS.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, rss_subscribed) = usage(pid);

    let mut all = vec![];
    let mut each = vec![];
    for c in 0..changes {
        let t0 = Instant::now();
        writeln!(to_child, "change {c}").unwrap();
        let version: u64 = read().strip_prefix("version ").unwrap().parse().unwrap();
        assert!(
            wait_acks(&record, version, subscribers, limit),
            "change {c}: not every subscriber ACKed version {version} within {limit:?}"
        );
        let r = record.lock().unwrap();
        let times = &r.acks[&version];
        each.extend(times.iter().map(|t| t.duration_since(t0)));
        all.push(times.iter().max().unwrap().duration_since(t0));
    }
    let (cpu1, _) = usage(pid);
    all.sort();
    each.sort();

    // CSRs, made here beforehand (the key stays with the proxy; only the CSR travels).
    let requests: Vec<(String, String)> = (0..csrs)
        .map(|i| {
            let t = token(i % subscribers.max(1));
            let mut p = t.split('/');
            let (ns, sa) = (p.next().unwrap(), p.next().unwrap());
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![rcgen::SanType::URI(
                spiffe_id(TRUST_DOMAIN, ns, sa).try_into().unwrap(),
            )];
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            (t, csr)
        })
        .collect();
    let (cpu2, _) = usage(pid);
    let signing = Instant::now();
    let signed = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        futures::stream::iter(requests)
            .map(|(t, csr_pem)| {
                let mut client = MeshControlClient::new(channel.clone());
                async move {
                    let mut req = tonic::Request::new(v1::CertificateRequest { csr_pem });
                    req.metadata_mut()
                        .insert("authorization", format!("Bearer {t}").parse().unwrap());
                    client.sign_certificate(req).await.is_ok()
                }
            })
            .buffer_unordered(concurrency)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await
    });
    let signing = signing.elapsed();
    let (cpu3, _) = usage(pid);
    assert_eq!(signed, csrs, "every CSR signed");

    let r = record.lock().unwrap();
    let avg = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let pushes = (changes * subscribers).max(1) as f64;
    println!(
        "subscribe: all {subscribers} snapshots ACKed in {}",
        ms(subscribed)
    );
    println!(
        "route change -> ACKed by all {subscribers}: p50 {} p99 {} max {} (over {changes} changes)",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    println!(
        "route change -> ACKed by one proxy: p50 {} p99 {} (over {} ACKs)",
        ms(percentile(&each, 0.5)),
        ms(percentile(&each, 0.99)),
        each.len()
    );
    println!(
        "bytes: snapshot {:.0} B, delta {:.0} B per push",
        avg(&r.snapshot_bytes),
        avg(&r.delta_bytes)
    );
    println!(
        "controller CPU: {:.2} ms per change, {:.1} us per delta pushed",
        (cpu1 - cpu0) * 1000.0 / changes.max(1) as f64,
        (cpu1 - cpu0) * 1e6 / pushes
    );
    println!(
        "controller RSS: {:.1} MiB with the model, {:.1} MiB with {subscribers} subscribers: \
         {:.1} KiB per subscriber",
        rss_idle as f64 / 1048576.0,
        rss_subscribed as f64 / 1048576.0,
        rss_subscribed.saturating_sub(rss_idle) as f64 / 1024.0 / subscribers.max(1) as f64
    );
    println!(
        "SignCertificate: {csrs} in {} = {:.0}/s, controller CPU {:.2} ms per signature",
        ms(signing),
        csrs as f64 / signing.as_secs_f64(),
        (cpu3 - cpu2) * 1000.0 / csrs.max(1) as f64
    );
    drop(r);
    let _ = writeln!(to_child, "quit");
    drop(to_child);
    let _ = child.wait();
}
