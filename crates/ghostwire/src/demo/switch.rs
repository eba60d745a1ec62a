//! `ghostwire demo switch`: the preview switch end to end on the lab cluster on this machine.
//!
//! Starts the lab cluster (API + node), creates orders, orders-preview and payments (echo
//! Deployments behind ClusterIP Services) and two shop pods, and records which backend each shop
//! pod reaches.
//! Then it registers `ghostwire injector` as the cluster's mutating webhook and rolls the shop
//! pods out again with `ghostwire.dev/enabled: "true"`: the injector adds the `init` container
//! and the `watcher` sidecar, which reach the API in-cluster. It records the routes again, then
//! flips the preview pod's role label back and forth through the API (as `kubectl label`
//! would) and times how long routing takes to follow each flip. Exit 0 only if every route is
//! the expected one.

use super::DemoArgs;
use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use lab_node::{Cluster, ClusterOptions, scenario};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The webhook configuration the demo registers (and the injector keeps the caBundle of).
const WEBHOOK: &str = "ghostwire-injector";

const WAIT: Duration = Duration::from_secs(120);

struct Row {
    pod: &'static str,
    role: &'static str,
    service: &'static str,
    before: String,
    after: String,
    want: &'static str,
}

const CLIENTS: [(&str, &str); 2] = [("shop-active", "active"), ("shop-preview", "preview")];

async fn reach(cluster: &Cluster, pod: &str, addr: SocketAddr) -> String {
    let Some(p) = cluster.node().pod_netns("default", pod) else {
        return format!("error: pod {pod} not running");
    };
    tokio::task::spawn_blocking(move || {
        p.tcp_request(addr)
            .unwrap_or_else(|e| format!("error: {e}"))
    })
    .await
    .unwrap_or_else(|e| format!("error: {e}"))
}

/// Runs the preview switch demo on its own lab cluster; Ok only if every route is right.
pub async fn run(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    println!(
        "ghostwire demo switch: starting a lab cluster (Kubernetes API + node, pods as network namespaces)…"
    );
    let mut opts = ClusterOptions::new("demo", exe);
    opts.backoff_initial = Duration::from_secs(1);
    let cluster = Cluster::start(opts)
        .await
        .context("starting the lab cluster (are you root?)")?;
    let client = cluster.client().await?;
    for name in ["orders", "orders-preview", "payments"] {
        scenario::apply(&client, "default", &scenario::service(name, args.ipv6)).await?;
        scenario::apply(
            &client,
            "default",
            &scenario::echo_deployment(name, None, 1),
        )
        .await?;
    }
    scenario::wait_available(
        &client,
        "default",
        &["orders", "orders-preview", "payments"],
        WAIT,
    )
    .await?;
    let mut addrs = Vec::new();
    for name in ["orders", "orders-preview", "payments"] {
        let ips = scenario::cluster_ips(&client, "default", name).await?;
        let shown: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        println!("  Service {name:<15} ClusterIPs {}", shown.join(" / "));
        let ip = ips
            .iter()
            .find(|i| i.is_ipv6() == args.ipv6)
            .copied()
            .ok_or_else(|| {
                anyhow!(
                    "Service {name} has no {} ClusterIP",
                    if args.ipv6 { "IPv6" } else { "IPv4" }
                )
            })?;
        addrs.push(SocketAddr::new(ip, 80));
    }
    let (orders, payments) = (addrs[0], addrs[2]);

    println!("  shop pods without ghostwire…");
    for (name, role) in CLIENTS {
        scenario::apply(
            &client,
            "default",
            &scenario::client_pod(name, role, None, &[]),
        )
        .await?;
    }
    scenario::wait_ready(&client, "default", &["shop-active", "shop-preview"], WAIT).await?;
    let mut rows = Vec::new();
    for (pod, role) in CLIENTS {
        for (service, addr) in [("orders", orders), ("payments", payments)] {
            let want = if role == "preview" && service == "orders" {
                "orders-preview"
            } else {
                service
            };
            rows.push(Row {
                pod,
                role,
                service,
                before: reach(&cluster, pod, addr).await,
                after: String::new(),
                want,
            });
        }
    }

    println!(
        "  registering `ghostwire injector` as the mutating webhook for pods labelled app=shop…"
    );
    let injector = start_injector(
        &client,
        None,
        json!({"objectSelector": {"matchLabels": {"app": "shop"}}}),
    )
    .await?;
    println!(
        "  shop pods again, annotated ghostwire.dev/enabled=true (the injector adds init + watcher)…"
    );
    scenario::delete_pods(&client, "default", &["shop-active", "shop-preview"], WAIT).await?;
    // The injected containers run as the account deploy/ grants their Roles to, nothing more.
    scenario::workload_rbac(&client, "default").await?;
    let ipv6 = if args.ipv6 { "true" } else { "false" };
    for (name, role) in CLIENTS {
        let mut pod = scenario::client_pod(name, role, None, &[]);
        pod["spec"]["serviceAccountName"] = json!(scenario::SWITCH_ACCOUNT);
        pod["metadata"]["annotations"] = json!({
            "ghostwire.dev/enabled": "true",
            "ghostwire.dev/backend": args.backend,
            "ghostwire.dev/ipv6": ipv6,
            "ghostwire.dev/pollInterval": "1s",
        });
        scenario::apply(&client, "default", &pod).await?;
    }
    if let Err(e) =
        scenario::wait_ready(&client, "default", &["shop-active", "shop-preview"], WAIT).await
    {
        return Err(anyhow!(
            "{e}; see `kubectl logs <pod> -c ghostwire-init` and `-c ghostwire-watcher`"
        ))
        .code(Code::Kernel);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let injected = pods
        .get("shop-preview")
        .await
        .context("reading shop-preview")?;
    let names = |l: &Option<Vec<k8s_openapi::api::core::v1::Container>>| -> Vec<String> {
        l.iter().flatten().map(|c| c.name.clone()).collect()
    };
    let spec = injected.spec.unwrap_or_default();
    println!(
        "  shop-preview as admitted: init containers {:?}, containers {:?}",
        names(&spec.init_containers),
        names(&Some(spec.containers))
    );
    if let Some(dir) = cluster
        .node()
        .volume_dir("default", "shop-preview", "ghostwire-shared")
    {
        println!("\n  DNAT map written by init in shop-preview (/shared/dnat.map):");
        for line in std::fs::read_to_string(dir.join("dnat.map"))
            .unwrap_or_default()
            .lines()
        {
            println!("    {line}");
        }
    }
    for row in &mut rows {
        let addr = if row.service == "orders" {
            orders
        } else {
            payments
        };
        row.after = reach(&cluster, row.pod, addr).await;
    }

    println!(
        "\n  {:<13} {:<8} {:<9} {:<16} {:<16} ok",
        "pod", "role", "calls", "no ghostwire", "injected"
    );
    let mut ok = true;
    for r in &rows {
        let good = r.after == r.want;
        ok &= good;
        println!(
            "  {:<13} {:<8} {:<9} {:<16} {:<16} {}",
            r.pod,
            r.role,
            r.service,
            r.before,
            r.after,
            if good { "✓" } else { "✗" }
        );
    }
    println!(
        "\n  flips (the role label of shop-preview, patched through the API as `kubectl label` does):"
    );
    for (role, want) in [
        ("active", "orders"),
        ("preview", "orders-preview"),
        ("active", "orders"),
        ("preview", "orders-preview"),
    ] {
        let patch = json!({"metadata": {"labels": {"role": role}}});
        pods.patch(
            "shop-preview",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("patching the role label")?;
        let started = Instant::now();
        let mut got = reach(&cluster, "shop-preview", orders).await;
        while got != want && started.elapsed() < Duration::from_secs(30) {
            got = reach(&cluster, "shop-preview", orders).await;
        }
        let good = got == want;
        ok &= good;
        println!(
            "    role={role:<8} orders reached: {got:<16} after {:>6.1} ms {}",
            started.elapsed().as_secs_f64() * 1e3,
            if good { "✓" } else { "✗" }
        );
    }
    if args.hold {
        println!(
            "\nghostwire demo switch: holding the lab; kubeconfig {} (kubectl --kubeconfig … get pods); its namespaces start with {}. Ctrl-C removes it.",
            cluster.kubeconfig_path().display(),
            cluster.node().prefix()
        );
        std::future::pending::<()>().await;
    }
    injector.stop().await;
    cluster.shutdown(Duration::from_secs(2)).await;
    if ok {
        println!(
            "\nghostwire demo switch: routing is right — the preview pod reaches orders-preview through the orders ClusterIP and follows its label; everything else stays on active."
        );
        Ok(())
    } else {
        Err(anyhow!("routing is wrong: see the ✗ rows above")).code(Code::Failure)
    }
}

/// Registers the webhook (URL on loopback, where the lab API calls it) for the Pods that
/// `selector` picks (`objectSelector` and/or `namespaceSelector`), starts the injector in this
/// process with a self-signed CA, and waits until it has written the caBundle.
pub(super) async fn start_injector(
    client: &kube::Client,
    defaults: Option<&str>,
    selector: serde_json::Value,
) -> Result<injector::Running, Exit> {
    let config = injector::Config {
        listen: "127.0.0.1:0".parse().expect("literal"),
        admin_listen: "127.0.0.1:0".parse().expect("literal"),
        tls: injector::TlsMode::SelfSigned {
            names: vec!["127.0.0.1".into()],
            webhook_config: WEBHOOK.into(),
            recheck_every: Duration::from_secs(1),
        },
        namespace: "default".into(),
        defaults_configmap: defaults.map(str::to_string),
        defaults_ttl: Duration::from_secs(10),
        preview_switch: injector::preview_switch::PreviewSwitch {
            image: "ghostwire:dev".into(),
            pull_policy: "IfNotPresent".into(),
            watcher_port: 8081,
            // The demo shows the watcher beside the app (tests/demo.rs pins that shape).
            sidecars: injector::preview_switch::Sidecars::forced(false),
        },
        limits: Default::default(),
        owner_read_failure: Default::default(),
    };
    // The webhook's port is only known once the injector is bound: register the configuration
    // first (nothing it selects exists yet), then point it at the injector.
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let selector = &selector;
    let register = |url: String| {
        let api = api.clone();
        async move {
            let webhook = webhook_config(&url, selector);
            api.patch(
                WEBHOOK,
                &PatchParams::apply("ghostwire-demo").force(),
                &Patch::Apply(&webhook),
            )
            .await
            .context("registering the webhook")
        }
    };
    register("https://127.0.0.1:1/mutate".into()).await?;
    let running = injector::start(config, client.clone())
        .await
        .context("starting the injector")?;
    register(format!("https://{}/mutate", running.webhook_addr)).await?;
    let started = Instant::now();
    loop {
        let has_ca = api
            .get(WEBHOOK)
            .await
            .ok()
            .and_then(|w| w.webhooks)
            .is_some_and(|hooks| hooks.iter().all(|h| h.client_config.ca_bundle.is_some()));
        if has_ca {
            return Ok(running);
        }
        if started.elapsed() > WAIT {
            return Err(anyhow!("the injector did not write the webhook's caBundle"))
                .code(Code::Api);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo's MutatingWebhookConfiguration: Pod CREATE of the Pods `selector` picks.
fn webhook_config(url: &str, selector: &serde_json::Value) -> serde_json::Value {
    let mut w = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "inject.ghostwire.dev",
            "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 10,
            "clientConfig": {"url": url},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        }],
    });
    if let (Some(hook), Some(sel)) = (w["webhooks"][0].as_object_mut(), selector.as_object()) {
        hook.extend(sel.clone());
    }
    w
}
