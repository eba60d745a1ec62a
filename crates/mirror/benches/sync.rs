//! The service mirror at scale: 10,000 Services, each with an EndpointSlice of two endpoints,
//! across two remote clusters (5,000 each), mirrored into a local one.
//! - initial sync: mirror start → every mirror Service and slice written;
//! - memory: the mirror process's resident set before it starts and after the sync, and its peak;
//! - change → mirrored: a label changed on a remote Service (west and central in turn) until
//!   the local mirror has it (seen by a watch on the local API), p50/p99 over sequential
//!   changes;
//! - who does the work: CPU seconds of the lab APIs' process and of the mirror's during the
//!   sync and during the changes, and the mirror's passes (full or keyed) and names looked at.
//!
//! The three lab APIs run in a child process (this binary again, `GW_MIRROR_BENCH_ROLE=apis`),
//! so this process's memory and CPU are the mirror's (plus the bench's one watch). The mirror
//! runs in-process through the library, as `ghostwire mirror` runs it, with admin kubeconfigs.
//!
//! `cargo bench -p mirror --bench sync` (env: `GW_MIRROR_BENCH_SERVICES`, default 10000;
//! `GW_MIRROR_BENCH_CHANGES`, default 200).

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use mirror::config::{Access, Overrides, Settings};
use mirror::metrics::{Metrics, WriteLabels};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTERS: [&str; 3] = ["east", "west", "central"];
const MIRROR_NS: &str = "mirror";
const CONCURRENCY: usize = 32;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var("GW_MIRROR_BENCH_ROLE").as_deref() {
        Ok("apis") => rt.block_on(apis(PathBuf::from(
            std::env::var("GW_MIRROR_BENCH_DIR").unwrap(),
        ))),
        _ => rt.block_on(bench()),
    }
}

/// The child: three lab APIs, the remotes filled; `ready` written; runs until stdin closes.
async fn apis(dir: PathBuf) {
    let per_remote = env_usize("GW_MIRROR_BENCH_SERVICES", 10_000) / 2;
    let mut servers = Vec::new();
    for name in CLUSTERS {
        let s = lab_api::Server::start(lab_api::Options {
            kubeconfig: Some(dir.join(format!("{name}.kubeconfig"))),
            ..Default::default()
        })
        .await
        .expect("lab API starts");
        servers.push(s);
    }
    let started = Instant::now();
    for (i, name) in CLUSTERS.iter().enumerate() {
        let c = servers[i].client().await.unwrap();
        let ns = if i == 0 { MIRROR_NS } else { "shop" };
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(c.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
        if i == 0 {
            continue;
        }
        let svcs: Api<Service> = Api::namespaced(c.clone(), "shop");
        let eps: Api<EndpointSlice> = Api::namespaced(c.clone(), "shop");
        let octet = i;
        stream::iter(0..per_remote)
            .map(|j| {
                let (svcs, eps) = (svcs.clone(), eps.clone());
                async move {
                    let s: Service = serde_json::from_value(json!({
                        "metadata": {"name": format!("s{j}"), "labels": {"mirror": "true"}},
                        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
                    }))
                    .unwrap();
                    svcs.create(&PostParams::default(), &s).await?;
                    let ip = |k: usize| format!("10.{}.{}.{}", 100 + octet, j / 250, (j % 250) + k);
                    let e: EndpointSlice = serde_json::from_value(json!({
                        "metadata": {"name": format!("s{j}-x"), "labels": {
                            "kubernetes.io/service-name": format!("s{j}"),
                            "endpointslice.kubernetes.io/managed-by": "bench"}},
                        "addressType": "IPv4",
                        "endpoints": [{"addresses": [ip(1)], "conditions": {"ready": true}},
                                      {"addresses": [ip(2)], "conditions": {"ready": true}}],
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
                    }))
                    .unwrap();
                    eps.create(&PostParams::default(), &e).await.map(drop)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("filling {name}: {e}"));
    }
    let fill = started.elapsed();
    std::fs::write(dir.join("ready"), format!("{}", fill.as_secs_f64())).unwrap();
    // Until the parent goes (its end of our stdin closes).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .unwrap();
    for s in servers {
        s.shutdown().await;
    }
}

/// (resident, peak) KiB of this process.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let ticks = f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// CPU seconds of the lab APIs and of the mirror between two readings.
struct Cpu {
    apis: f64,
    mirror: f64,
}

impl Cpu {
    fn now(child: u32) -> Cpu {
        Cpu {
            apis: cpu_seconds(&child.to_string()),
            mirror: cpu_seconds("self"),
        }
    }

    fn report(&self, child: u32, what: &str, wall: Duration) {
        let now = Cpu::now(child);
        let (apis, mirror) = (now.apis - self.apis, now.mirror - self.mirror);
        println!(
            "CPU during {what} ({:.1} s wall): lab APIs {apis:.1} s, mirror (+ bench watch) {mirror:.1} s: the APIs' share {:.0} %",
            wall.as_secs_f64(),
            100.0 * apis / (apis + mirror).max(1e-9)
        );
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn client(dir: &Path, name: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(dir.join(format!("{name}.kubeconfig"))).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn bench() {
    let services = env_usize("GW_MIRROR_BENCH_SERVICES", 10_000);
    let changes = env_usize("GW_MIRROR_BENCH_CHANGES", 200);
    let dir = std::env::temp_dir().join(format!("gw-mirror-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("GW_MIRROR_BENCH_ROLE", "apis")
        .env("GW_MIRROR_BENCH_DIR", &dir)
        .env("GW_MIRROR_BENCH_SERVICES", services.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = dir.join("ready");
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the lab APIs never got ready");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the lab API process ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fill: f64 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    println!(
        "lab API: {services} Services + {services} EndpointSlices created in {fill:.1} s ({:.0} objects/s, {CONCURRENCY} in flight)",
        2.0 * services as f64 / fill
    );

    let kc = |n: &str| dir.join(format!("{n}.kubeconfig"));
    let config = json!({
        "global": {"globalSvcLabelSelector": "global=true", "globalSvcRoutingStrategyLabel": "routing=local-first",
                   "mirrorSvcLabelSelector": "mirror=true", "mirrorNamespace": MIRROR_NS, "serviceSync": true},
        "localCluster": {"name": "east", "kubeConfigPath": kc("east")},
        "remoteClusters": [
            {"name": "west", "kubeConfigPath": kc("west"), "servicePrefix": "west"},
            {"name": "central", "kubeConfigPath": kc("central"), "servicePrefix": "central"}
        ]
    });
    let settings = Settings::from_file(
        serde_json::from_value(config).unwrap(),
        &Overrides::default(),
    )
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let refresh = Duration::from_secs(60);
    let local = mirror::access::client_for(
        "east",
        Some(&Access::Kubeconfig(kc("east"))),
        metrics.clone(),
        refresh,
    )
    .await
    .unwrap();
    let mut remotes = Vec::new();
    for r in &settings.remotes {
        remotes.push(
            mirror::access::client_for(&r.name, Some(&r.access), metrics.clone(), refresh)
                .await
                .unwrap(),
        );
    }
    let (rss_before, _) = memory();
    let child_pid = child.id();
    let cpu = Cpu::now(child_pid);
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mirror::run::run(
        settings,
        mirror::run::RunOptions {
            local,
            remotes,
            failover_grace: Duration::from_secs(30),
            probe_interval: Duration::from_secs(5),
            lease: None,
            resync: Duration::from_secs(60),
        },
        metrics.clone(),
        Arc::new(mirror::run::MirrorHealth::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    let created = |kind: &str| {
        metrics
            .writes
            .get_or_create(&WriteLabels {
                verb: "create".into(),
                kind: kind.into(),
            })
            .get()
    };
    while created("Service") < services as u64 || created("EndpointSlice") < services as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "initial sync: {} Services, {} slices after 30 min",
            created("Service"),
            created("EndpointSlice")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync = started.elapsed();
    cpu.report(child_pid, "the initial sync", sync);
    let (rss_after, peak) = memory();
    println!(
        "initial sync: {services} mirror Services + {services} EndpointSlices written in {:.2} s",
        sync.as_secs_f64()
    );
    println!(
        "memory: resident {} MiB before the mirror started, {} MiB after the sync (+{} MiB), peak {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024,
        peak / 1024
    );

    // Change → mirrored: the local watch sees the mirror with the new label.
    let east = client(&dir, "east").await;
    let remote_svcs: Vec<(&str, Api<Service>)> = vec![
        ("west", Api::namespaced(client(&dir, "west").await, "shop")),
        (
            "central",
            Api::namespaced(client(&dir, "central").await, "shop"),
        ),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, Instant)>();
    let local_svcs: Api<Service> = Api::namespaced(east.clone(), MIRROR_NS);
    let watch = tokio::spawn(async move {
        let mut s = std::pin::pin!(
            watcher(local_svcs, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        while let Some(Ok(svc)) = s.next().await {
            let rev = svc
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("rev").cloned())
                .unwrap_or_default();
            let _ = tx.send((svc.metadata.name.unwrap_or_default(), rev, Instant::now()));
        }
    });
    // Let the mirror's passes over its own writes' events finish before timing changes.
    let settled = Instant::now();
    let mut last = metrics.queue_adds.get();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = metrics.queue_adds.get();
        if now == last && metrics.queue_depth.get() == 0 {
            break;
        }
        last = now;
    }
    println!(
        "settled {:.1} s after the sync",
        settled.elapsed().as_secs_f64()
    );
    while rx.try_recv().is_ok() {}
    let per_remote = services / 2;
    let mut lat = Vec::new();
    let names_before = metrics.reconciled_names.get();
    let passes = |scope: &str| {
        metrics
            .passes
            .get_or_create(&mirror::metrics::PassLabels {
                scope: scope.into(),
            })
            .get()
    };
    let (full_before, keyed_before) = (passes("full"), passes("keyed"));
    let cpu = Cpu::now(child_pid);
    let changing = Instant::now();
    for k in 0..changes {
        let j = (k * 7919) % per_remote;
        let rev = format!("r{k}");
        let (remote, api) = &remote_svcs[k % 2];
        let sent = Instant::now();
        api.patch(
            &format!("s{j}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"rev": rev}}})),
        )
        .await
        .unwrap();
        let want = format!("{remote}-shop-73736d-s{j}");
        loop {
            let (name, got, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("change mirrored within 60 s")
                .unwrap();
            if name == want && got == rev {
                lat.push(at - sent);
                break;
            }
        }
    }
    cpu.report(child_pid, "the changes", changing.elapsed());
    println!(
        "mirror passes during the changes: {} keyed, {} full; {} names looked at ({:.1} per change)",
        passes("keyed") - keyed_before,
        passes("full") - full_before,
        metrics.reconciled_names.get() - names_before,
        (metrics.reconciled_names.get() - names_before) as f64 / changes.max(1) as f64
    );
    lat.sort();
    println!(
        "change in a remote → mirrored locally ({changes} sequential label changes, west and central in turn): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for l in text.lines().filter(|l| {
        l.starts_with("ghostwire_mirror_reconcile_duration_seconds_sum")
            || l.starts_with("ghostwire_mirror_reconcile_duration_seconds_count")
            || l.starts_with("ghostwire_mirror_queue_latency_seconds_sum")
            || l.starts_with("ghostwire_mirror_queue_latency_seconds_count")
    }) {
        println!("  {l}");
    }
    watch.abort();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
