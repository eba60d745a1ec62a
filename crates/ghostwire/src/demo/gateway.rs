//! `ghostwire demo gateway`: the egress gateway end to end on a lab cluster on this machine.
//!
//! Starts a lab cluster beside a small "internet" (a namespace the node routes to, with a
//! who-am-I server on 203.0.113.10 and a real dnsmasq that the cluster DNS forwards outside names
//! to), installs deploy/gateway/base as it is (settings ConfigMap, ServiceAccount, Deployment,
//! headless Service; only settings.sh is edited for a lab without VPN: no `tun0`, kill switch
//! off), and registers `ghostwire injector` as the webhook. Then it compares a plain Pod with one
//! annotated `ghostwire.dev/gateway: vpn-gateway`: what the outside sees, where DNS goes, and the
//! gateway's metrics; finally it deletes the gateway Pod and times how long the client takes to
//! send through its replacement. Exit 0 only if every check held.

use super::DemoArgs;
use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use lab_net::internet;
use lab_node::{Cluster, ClusterOptions, scenario};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "default";
const GATEWAY_LABEL: &str = "app.kubernetes.io/name=vpn-gateway";
/// deploy/gateway/base, applied in this order.
const MANIFESTS: [(&str, &str); 4] = [
    (
        "deploy/gateway/base/settings.yaml",
        include_str!("../../../../deploy/gateway/base/settings.yaml"),
    ),
    (
        "deploy/gateway/base/rbac.yaml",
        include_str!("../../../../deploy/gateway/base/rbac.yaml"),
    ),
    (
        "deploy/gateway/base/service.yaml",
        include_str!("../../../../deploy/gateway/base/service.yaml"),
    ),
    (
        "deploy/gateway/base/deployment.yaml",
        include_str!("../../../../deploy/gateway/base/deployment.yaml"),
    ),
];
/// The outside's who-am-I port and the name its DNS serves.
const WHOAMI_PORT: u16 = 7000;
const OUTSIDE_NAME: &str = "web.outside.test";

/// The lab has no VPN here: the gateway's own uplink carries the clients' traffic. Nor a signed
/// internet: the outside's dnsmasq has no root zone to validate `outside.test` against, so
/// DNSSEC validation is off (the gateway's tests validate a zone they sign themselves).
fn lab_settings(yaml: &str) -> String {
    yaml.replace("VPN_INTERFACE=tun0", "VPN_INTERFACE=\"\"")
        .replace(
            "VPN_BLOCK_OTHER_TRAFFIC=true",
            "VPN_BLOCK_OTHER_TRAFFIC=false\n    GATEWAY_ENABLE_DNSSEC=false",
        )
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready gateway Pod other than `not`: (name, Pod IP).
async fn ready_gateway(pods: &Api<Pod>, not: Option<&str>) -> Result<(String, IpAddr), Exit> {
    let started = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(GATEWAY_LABEL))
            .await
            .context("listing the gateway Pods")
            .code(Code::Api)?;
        for p in list.items.iter().filter(|p| is_ready(p)) {
            let name = p.metadata.name.clone().unwrap_or_default();
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|i| i.parse().ok());
            if let Some(ip) = ip
                && not != Some(name.as_str())
            {
                return Ok((name, ip));
            }
        }
        if started.elapsed() > WAIT {
            return Err(anyhow!(
                "no Ready gateway Pod after {WAIT:?}; see `kubectl logs -l {GATEWAY_LABEL} -c gateway-init` and `-c gateway-sidecar`"
            ))
            .code(Code::Kernel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `f` in a Pod's network namespace on a blocking thread.
async fn in_pod<T: Send + 'static>(
    cluster: &Cluster,
    pod: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let Some(p) = cluster.node().pod_netns(NS, pod) else {
        return Err(format!("pod {pod} not running"));
    };
    tokio::task::spawn_blocking(move || p.netns().run(f).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?
}

/// What the outside's who-am-I server sees when `pod` connects to it.
async fn seen_from_outside(cluster: &Cluster, pod: &str) -> String {
    let to = SocketAddr::new(internet::HOST_V4.into(), WHOAMI_PORT);
    in_pod(cluster, pod, move || {
        lab_net::client::tcp_request(to).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| format!("error: {e}"))
}

/// What the outside's who-am-I server sees of `pod` on a fresh TCP connection, or an error if
/// any step took over 50 ms.
async fn quick_seen_from_outside(cluster: &Cluster, pod: &str) -> String {
    let to = SocketAddr::new(internet::HOST_V4.into(), WHOAMI_PORT);
    in_pod(cluster, pod, move || {
        lab_net::client::tcp_request_within(to, Duration::from_millis(50))
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| format!("error: {e}"))
}

/// An A query from `pod` to `server`.
async fn resolve(cluster: &Cluster, pod: &str, name: &'static str, server: IpAddr) -> String {
    in_pod(cluster, pod, move || {
        gateway::dnsquery::query_a(name, server, Duration::from_secs(3))
    })
    .await
    .map(|a| a.map_or("no address".to_string(), |a| a.to_string()))
    .unwrap_or_else(|e| format!("error: {e}"))
}

struct Checks {
    ok: bool,
}

impl Checks {
    fn row(&mut self, what: &str, got: &str, good: bool) {
        self.ok &= good;
        println!("  {what:<52} {got:<22} {}", if good { "✓" } else { "✗" });
    }
}

/// Runs the gateway demo on its own lab cluster; Ok only if every check held.
pub async fn run(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    println!(
        "ghostwire demo gateway: starting a lab cluster and its internet (203.0.113.0/24, a dnsmasq for *.outside.test)…"
    );
    let outside_dns = lab_dns::peer::Dnsmasq::start(&[format!(
        "--address=/{OUTSIDE_NAME}/{}",
        internet::HOST_V4
    )])
    .context("starting dnsmasq (scripts/install-deps.sh installs dnsmasq-base)")?;
    let mut opts = ClusterOptions::new("demo-gw", exe);
    opts.backoff_initial = Duration::from_secs(1);
    opts.dns_upstream = Some(outside_dns.addr());
    let cluster = Cluster::start(opts)
        .await
        .context("starting the lab cluster (are you root?)")?;
    let r = demo(args, &cluster).await;
    cluster.shutdown(Duration::from_secs(2)).await;
    drop(outside_dns);
    r
}

async fn demo(args: &DemoArgs, cluster: &Cluster) -> Result<(), Exit> {
    let inet = cluster
        .node()
        .add_internet()
        .context("adding the lab's internet")?;
    let _who = inet.serve_whoami(WHOAMI_PORT).context("serving who-am-I")?;
    let client = cluster.client().await?;
    let net = *cluster.node().network();

    println!("  installing deploy/gateway/base (settings.sh edited: no VPN in this lab)…");
    for (what, yaml) in MANIFESTS {
        let yaml = if what.ends_with("settings.yaml") {
            lab_settings(yaml)
        } else {
            yaml.to_string()
        };
        scenario::apply_yaml(&client, NS, what, &yaml)
            .await
            .with_context(|| format!("applying {what}"))
            .code(Code::Api)?;
    }
    // What the injector tells injected clients (its defaults ConfigMap, pod-gateway's names).
    let defaults = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ghostwire-defaults"},
        "data": {"K8S_DNS_IPS": net.dns_ipv4().to_string(),
                 "K8S_SERVICE_CIDRS": net.service_v4.to_string()},
    });
    Api::<ConfigMap>::namespaced(client.clone(), NS)
        .patch(
            "ghostwire-defaults",
            &PatchParams::apply("ghostwire-demo").force(),
            &Patch::Apply(&defaults),
        )
        .await
        .context("writing the injector's defaults")
        .code(Code::Api)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let (gw1, gw1_ip) = ready_gateway(&pods, None).await?;
    println!("  gateway Pod {gw1} is Ready at {gw1_ip}");

    let injector = super::switch::start_injector(
        &client,
        Some("ghostwire-defaults"),
        json!({"objectSelector": {"matchLabels": {"app": "web"}}}),
    )
    .await?;
    println!("  two client Pods: `plain`, and `web` annotated ghostwire.dev/gateway=vpn-gateway…");
    let plain = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "plain", "labels": {"app": "plain"}},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "1000000"]}]}});
    let mut web = plain.clone();
    web["metadata"] = json!({"name": "web", "labels": {"app": "web"}, "annotations": {
        "ghostwire.dev/gateway": "vpn-gateway",
        "ghostwire.dev/gateway-config": "gateway-config",
    }});
    scenario::apply(&client, NS, &plain).await?;
    scenario::apply(&client, NS, &web).await?;
    if let Err(e) = scenario::wait_ready(&client, NS, &["plain", "web"], WAIT).await {
        let mut logs = String::new();
        for c in ["gateway-client-init", "gateway-client-sidecar"] {
            let lp = kube::api::LogParams {
                container: Some(c.into()),
                tail_lines: Some(20),
                ..Default::default()
            };
            let text = pods.logs("web", &lp).await.unwrap_or_default();
            logs.push_str(&format!(
                "\n--- kubectl logs web -c {c} (last 20 lines)\n{text}"
            ));
        }
        return Err(anyhow!("{e}{logs}")).code(Code::Kernel);
    }
    let admitted = pods.get("web").await.context("reading web")?;
    let spec = admitted.spec.unwrap_or_default();
    let names = |l: &[k8s_openapi::api::core::v1::Container]| -> Vec<String> {
        l.iter().map(|c| c.name.clone()).collect()
    };
    println!(
        "  web as admitted: init containers {:?}, containers {:?}, dnsPolicy {}",
        names(spec.init_containers.as_deref().unwrap_or_default()),
        names(&spec.containers),
        spec.dns_policy.as_deref().unwrap_or_default()
    );
    let dns_server: IpAddr = spec
        .dns_config
        .as_ref()
        .and_then(|d| d.nameservers.as_ref())
        .and_then(|n| n.first())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("the injector set no nameserver on web"))
        .code(Code::Failure)?;

    let mut c = Checks { ok: true };
    println!("\n  {:<52} {:<22} ok", "check", "got");
    let plain_ip = pods
        .get("plain")
        .await
        .ok()
        .and_then(|p| p.status?.pod_ip)
        .unwrap_or_default();
    let got = seen_from_outside(cluster, "plain").await;
    c.row(
        "plain: the outside sees the Pod itself",
        &got,
        got == plain_ip,
    );
    let got = seen_from_outside(cluster, "web").await;
    c.row(
        "web: the outside sees the gateway Pod",
        &got,
        got == gw1_ip.to_string(),
    );
    let got = resolve(
        cluster,
        "web",
        "vpn-gateway.default.svc.cluster.local",
        dns_server,
    )
    .await;
    c.row(
        &format!("web: cluster name via {dns_server} (cluster DNS)"),
        &got,
        got == gw1_ip.to_string(),
    );
    let got = resolve(cluster, "web", OUTSIDE_NAME, dns_server).await;
    c.row(
        &format!("web: {OUTSIDE_NAME} via {dns_server} (upstream)"),
        &got,
        got == internet::HOST_V4.to_string(),
    );
    let metrics = SocketAddr::new(gw1_ip, 8082);
    let text = in_pod(cluster, "plain", move || {
        lab_net::client::http_request(metrics, "/metrics")
            .map(|r| r.body)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_default();
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let (acks, local, upstream) = (
        metric("ghostwire_gateway_dhcp_acks_total "),
        metric("ghostwire_gateway_dns_local_queries_total "),
        metric("ghostwire_gateway_dns_upstream_queries_total "),
    );
    c.row(
        "gateway /metrics: DHCP acks, DNS local, upstream",
        &format!("{acks}, {local}, {upstream}"),
        acks >= 1 && local >= 1 && upstream >= 1,
    );

    println!(
        "\n  deleting the gateway Pod; the Deployment replaces it (new Pod, new IP, no leases)…"
    );
    pods.delete(&gw1, &DeleteParams::default())
        .await
        .context("deleting the gateway Pod")
        .code(Code::Api)?;
    let (gw2, gw2_ip) = ready_gateway(&pods, Some(&gw1)).await?;
    let ready = Instant::now();
    println!("  new gateway Pod {gw2} is Ready at {gw2_ip}");
    // Short-lived connections: a connect whose SYN is lost while the tunnel is rebuilt would
    // only retry after the kernel's 1 s initial retransmission timeout, and time that instead.
    let mut got = quick_seen_from_outside(cluster, "web").await;
    while got != gw2_ip.to_string() && ready.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        got = quick_seen_from_outside(cluster, "web").await;
    }
    let healed_after = ready.elapsed();
    let got = seen_from_outside(cluster, "web").await;
    let healed = got == gw2_ip.to_string();
    c.row("web: the outside sees the new gateway Pod", &got, healed);
    println!(
        "  traffic flowed again {:.0} ms after the new gateway Pod was Ready (a new connection every 50 ms at most)",
        healed_after.as_secs_f64() * 1e3
    );
    let got = resolve(cluster, "web", OUTSIDE_NAME, dns_server).await;
    c.row(
        &format!("web: {OUTSIDE_NAME} through the new gateway"),
        &got,
        got == internet::HOST_V4.to_string(),
    );

    if args.hold {
        println!(
            "\nghostwire demo gateway: holding the lab; kubeconfig {}. Ctrl-C removes it.",
            cluster.kubeconfig_path().display()
        );
        std::future::pending::<()>().await;
    }
    injector.stop().await;
    if c.ok {
        println!(
            "\nghostwire demo gateway: the annotated Pod's traffic and DNS go through the gateway Pod, and follow it when it is replaced."
        );
        Ok(())
    } else {
        Err(anyhow!("the gateway is not working: see the ✗ rows above")).code(Code::Failure)
    }
}
