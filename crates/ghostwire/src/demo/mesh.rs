//! `ghostwire demo mesh`: the DIY Service Mesh seed's example, meshed, on a lab cluster.
//!
//! Starts a lab cluster and `ghostwire injector` as its mutating webhook for namespaces
//! labelled `ghostwire.dev/injection: enabled`, then applies deploy/examples/mesh-apps: app-b
//! (v1 ×2 and v2 ×1 Deployments, `FAIL_RATE=30`, opted in with the seed's label
//! `service-mesh: enabled`) and app-a (annotated `ghostwire.dev/mesh: "true"`), each in its own
//! namespace. The injector adds proxy-init, its validator and the proxy (native sidecar, uid
//! 1337) to every Pod. app-a's routes (filled in here from app-b's ClusterIP and Pod IPs, as
//! the mesh controller will) split app-b 90/10 between v1 and v2 and retry 500s. app-a calls
//! `http://app-b.app-b.svc.cluster.local./hello` (every 100 ms here instead of the seed's
//! second, to count more calls in less time), through its outbound proxy and app-b's inbound
//! proxy. The demo then counts app-a's log lines by version and status, and reads both proxies'
//! metrics. Exit 0 only if both proxies carried the calls, v2's share is within a wide
//! statistical bound of 10 %, the 30 % failures were mostly hidden by retries, and the metrics
//! say so.

use super::DemoArgs;
use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use lab_node::{Cluster, ClusterOptions, scenario};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const APP_B: &str = include_str!("../../../../deploy/examples/mesh-apps/app-b.yaml");
const APP_A: &str = include_str!("../../../../deploy/examples/mesh-apps/app-a.yaml");
const WAIT: Duration = Duration::from_secs(180);
/// How long app-a's calls are counted.
const COUNT_FOR: Duration = Duration::from_secs(20);

async fn apply_docs(client: &kube::Client, docs: &[Value]) -> Result<(), Exit> {
    let pp = PatchParams::apply("ghostwire-demo").force();
    for obj in docs.iter().filter(|d| d.is_object()) {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        let patch = Patch::Apply(obj);
        let what = format!("applying {} {ns}/{name}", obj["kind"]);
        match obj["kind"].as_str() {
            Some("Namespace") => Api::<Namespace>::all(client.clone())
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
            Some("Service") => Api::<Service>::namespaced(client.clone(), ns)
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
            Some("ConfigMap") => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
            Some("Deployment") => Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
            other => {
                return Err(anyhow!("the demo cannot apply kind {other:?}")).code(Code::Failure);
            }
        }
        .context(what)
        .code(Code::Api)?;
    }
    Ok(())
}

fn parse(text: &str) -> Result<Vec<Value>, Exit> {
    serde_saphyr::from_multiple(text)
        .map_err(|e| anyhow!("deploy/examples/mesh-apps: {e}"))
        .code(Code::Failure)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until `n` Pods match `selector` in `ns` and all are Ready; returns them.
async fn ready_pods(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    n: usize,
) -> Result<Vec<Pod>, Exit> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default().labels(selector))
            .await
            .context("listing Pods")
            .code(Code::Api)?
            .items;
        let live: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if live.len() == n && live.iter().all(is_ready) {
            return Ok(live);
        }
        if started.elapsed() > WAIT {
            let states: Vec<String> = live
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p.metadata.name.clone().unwrap_or_default(),
                        serde_json::to_string(
                            &p.status.as_ref().map(|s| &s.init_container_statuses)
                        )
                        .unwrap_or_default()
                    )
                })
                .collect();
            return Err(anyhow!(
                "{ns}: {n} ready Pods {selector} within {WAIT:?}; have {}",
                states.join("; ")
            ))
            .code(Code::Failure);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

/// The proxy's /metrics in `pod`, fetched from inside the Pod's namespace.
async fn metrics(cluster: &Cluster, ns: &str, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (Some(p), Some(ip)) = (
        cluster.node().pod_netns(ns, &name),
        pod_ip(pod).and_then(|i| i.parse::<std::net::IpAddr>().ok()),
    ) else {
        return String::new();
    };
    tokio::task::spawn_blocking(move || {
        p.http_get(SocketAddr::new(ip, 4191), "/metrics")
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// Sum of the samples whose line starts with `prefix` and contains every `has`.
fn sum(text: &str, prefix: &str, has: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && has.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The routes app-a's proxy gets: what the mesh controller (issue 14) will compute from the
/// Service and its EndpointSlices.
fn routes(cluster_ip: &str, v1: &[String], v2: &[String]) -> String {
    let eps = |ips: &[String]| {
        ips.iter()
            .map(|i| format!("\"{i}:8080\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"services:
  - name: app-b.app-b
    addresses: ["{cluster_ip}:80"]
    backends:
      - {{name: v1, weight: 90, endpoints: [{}]}}
      - {{name: v2, weight: 10, endpoints: [{}]}}
    # FAIL_RATE=30 would fail endpoints out of balancing: only eject on long runs of failures.
    failure_accrual: {{consecutive_failures: 20, eject_for: 5s}}
    routes:
      - name: canary
        match: {{headers: {{x-canary: "true"}}}}
        split: [{{backend: v2, weight: 1}}]
      - name: hello
        retry: {{attempts: 3, statuses: [500, 502, 503], backoff: 5ms}}
"#,
        eps(v1),
        eps(v2)
    )
}

pub async fn run(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    println!("ghostwire demo mesh: starting a lab cluster and the injector…");
    let mut opts = ClusterOptions::new("demo-mesh", exe);
    opts.backoff_initial = Duration::from_secs(1);
    let cluster = Cluster::start(opts)
        .await
        .context("starting the lab cluster (are you root?)")?;
    let client = cluster.client().await?;
    let injector = super::switch::start_injector(
        &client,
        None,
        json!({"namespaceSelector": {"matchLabels": {"ghostwire.dev/injection": "enabled"}}}),
    )
    .await?;
    let result = show(&cluster, &client, args).await;
    if args.hold && result.is_ok() {
        println!(
            "\nghostwire demo mesh: holding the lab; kubeconfig {} (kubectl --kubeconfig … -n app-a logs deploy/app-a). Ctrl-C removes it.",
            cluster.kubeconfig_path().display()
        );
        std::future::pending::<()>().await;
    }
    injector.stop().await;
    cluster.shutdown(Duration::from_secs(2)).await;
    result
}

async fn show(cluster: &Cluster, client: &kube::Client, _args: &DemoArgs) -> Result<(), Exit> {
    println!("  app-b: v1 ×2 and v2 ×1 Deployments, FAIL_RATE=30, label service-mesh=enabled…");
    apply_docs(client, &parse(APP_B)?).await?;
    let v1 = ready_pods(client, "app-b", "app=app-b,version=v1", 2).await?;
    let v2 = ready_pods(client, "app-b", "app=app-b,version=v2", 1).await?;
    let inits: Vec<String> = v1[0]
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect();
    println!("  app-b Pods as admitted: init containers {inits:?}");
    let ips = |ps: &[Pod]| ps.iter().filter_map(pod_ip).collect::<Vec<_>>();
    let (v1_ips, v2_ips) = (ips(&v1), ips(&v2));
    let cluster_ip = scenario::cluster_ips(client, "app-b", "app-b")
        .await?
        .into_iter()
        .find(|i| i.is_ipv4())
        .ok_or_else(|| anyhow!("Service app-b has no IPv4 ClusterIP"))
        .code(Code::Failure)?;
    let routes = routes(&cluster_ip.to_string(), &v1_ips, &v2_ips);
    println!("  app-a's routes (ConfigMap app-a/app-a-routes):");
    for l in routes.lines() {
        println!("    {l}");
    }
    let mut docs = parse(APP_A)?;
    for d in &mut docs {
        if d["kind"] == "ConfigMap" {
            d["data"]["routes.yaml"] = json!(routes);
        }
        if d["kind"] == "Deployment"
            && let Some(e) = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut()
        {
            e.push(json!({"name": "INTERVAL_MS", "value": "100"}));
        }
    }
    println!("  app-a: annotated ghostwire.dev/mesh=true, calling app-b every 100 ms…");
    apply_docs(client, &docs).await?;
    let a = ready_pods(client, "app-a", "app=app-a", 1).await?;
    let a_name = a[0].metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app-a");
    let log = |since: usize| {
        let pods = pods.clone();
        let name = a_name.clone();
        async move {
            let text = pods
                .logs(
                    &name,
                    &LogParams {
                        container: Some("app-a".into()),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_default();
            text.lines()
                .skip(since)
                .map(String::from)
                .collect::<Vec<_>>()
        }
    };
    // Count from now on, for COUNT_FOR.
    let skip = log(0).await.len();
    tokio::time::sleep(COUNT_FOR).await;
    let lines = log(skip).await;

    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let mut w = l.split(' ');
        let status = w.next().unwrap_or_default();
        let version = w.nth(1).unwrap_or_default();
        let key = match status {
            "200" => format!("200 {version}"),
            "error" => "error".into(),
            s => format!("{s} (not hidden)"),
        };
        *by.entry(key).or_default() += 1;
    }
    let total = lines.len();
    let ok_v1 = by.get("200 v1").copied().unwrap_or(0);
    let ok_v2 = by.get("200 v2").copied().unwrap_or(0);
    let failed = total - ok_v1 - ok_v2;
    println!(
        "\n  app-a's calls in {COUNT_FOR:?} (`kubectl -n app-a logs {a_name} -c app-a`): {total}"
    );
    for (k, n) in &by {
        println!("    {k:<16} {n:>5}");
    }
    if let Some(l) = lines.first() {
        println!("    e.g. {l:?}");
    }
    let a_metrics = metrics(cluster, "app-a", &a[0]).await;
    let mut b_metrics = String::new();
    for p in v1.iter().chain(&v2) {
        b_metrics.push_str(&metrics(cluster, "app-b", p).await);
        b_metrics.push('\n');
    }
    let req = "ghostwire_proxy_requests_total{";
    let out_v1 = sum(
        &a_metrics,
        req,
        &["direction=\"outbound\"", "backend=\"v1\"", "2xx"],
    );
    let out_v2 = sum(
        &a_metrics,
        req,
        &["direction=\"outbound\"", "backend=\"v2\"", "2xx"],
    );
    let retries = sum(&a_metrics, "ghostwire_proxy_retries_total{", &[]);
    let exhausted = sum(
        &a_metrics,
        "ghostwire_proxy_retry_budget_exhausted_total{",
        &[],
    ) + 0.0;
    let in_2xx = sum(&b_metrics, req, &["direction=\"inbound\"", "2xx"]);
    let in_5xx = sum(&b_metrics, req, &["direction=\"inbound\"", "5xx"]);
    println!("\n  metrics (GET :4191/metrics of each proxy):");
    println!(
        "    app-a outbound, service app-b.app-b: v1 2xx {out_v1}, v2 2xx {out_v2}, retries {retries}, budget exhausted {exhausted}"
    );
    println!(
        "    app-b inbound (all three Pods): 2xx {in_2xx}, 5xx {in_5xx} (FAIL_RATE=30 as the apps answered)"
    );
    for l in a_metrics.lines().filter(|l| {
        l.starts_with(
            "ghostwire_proxy_requests_total{direction=\"outbound\",service=\"app-b.app-b\"",
        )
    }) {
        println!("    {l}");
    }

    let mut checks: Vec<(String, bool)> = Vec::new();
    let share = ok_v2 as f64 / (ok_v1 + ok_v2).max(1) as f64;
    checks.push((format!("app-a made calls ({total} ≥ 50)"), total >= 50));
    // 10 % of n calls: the share stays within 2 %–25 % unless the split is broken (for n ≥ 50
    // that is more than 2.5 standard deviations on either side).
    checks.push((
        format!("v2's share {:.1} % is near 10 % (2–25 %)", share * 100.0),
        (0.02..=0.25).contains(&share),
    ));
    let fail_share = failed as f64 / total.max(1) as f64;
    checks.push((
        format!(
            "FAIL_RATE=30 hidden by retries: {:.1} % of app-a's calls failed (< 10 %)",
            fail_share * 100.0
        ),
        fail_share < 0.10,
    ));
    checks.push((
        format!(
            "app-b's proxies saw the apps fail ({in_5xx} inbound 5xx) and succeed ({in_2xx} 2xx)"
        ),
        in_5xx > 0.0 && in_2xx > 0.0,
    ));
    checks.push((
        format!("app-a's proxy retried ({retries}) and split (v1 {out_v1}, v2 {out_v2})"),
        retries > 0.0 && out_v1 > out_v2 && out_v2 > 0.0,
    ));
    println!();
    let mut ok = true;
    for (what, good) in &checks {
        ok &= good;
        println!("  {} {what}", if *good { "✓" } else { "✗" });
    }
    if ok {
        println!(
            "\nghostwire demo mesh: app-a → app-b through both proxies, split 90/10, failures retried away."
        );
        Ok(())
    } else {
        Err(anyhow!(
            "the mesh demo's checks failed: see the ✗ lines above"
        ))
        .code(Code::Failure)
    }
}
