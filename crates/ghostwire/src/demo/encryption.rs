//! `ghostwire demo identity`: two Pods opted in to encryption (`ghostwire.dev/encrypt`), each
//! given a certificate by the identity controller (run in-process through its library) and
//! attached with `ghostwire attach`'s library call; a capture on the server Pod's eth0 shows a
//! marker in plaintext before and not after; a Pod presenting a valid mesh certificate of
//! another identity is refused. Each check is printed; the demo fails if one does not hold.

use super::DemoArgs;
use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use identity::proxy::SecretIdentity;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use lab_net::capture::Capture;
use lab_node::{Cluster, ClusterOptions, scenario};
use mesh_proxy::tls::MeshTls;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(120);
const REPLY: &str = "gw-reply-from-server";
const TRUST_DOMAIN: &str = "lab.local";

pub async fn run(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    println!("ghostwire demo identity: starting a lab cluster and the identity controller…");
    let mut opts = ClusterOptions::new("demo-identity", exe);
    opts.backoff_initial = Duration::from_secs(1);
    let cluster = Cluster::start(opts)
        .await
        .context("starting the lab cluster (are you root?)")?;
    let result = show(&cluster).await;
    if args.hold && result.is_ok() {
        println!(
            "\nghostwire demo identity: holding the lab; kubeconfig {}. Ctrl-C removes it.",
            cluster.kubeconfig_path().display()
        );
        std::future::pending::<()>().await;
    }
    cluster.shutdown(Duration::from_secs(2)).await;
    result
}

fn check(ok: bool, what: &str, failed: &mut Vec<String>) {
    println!("  {} {what}", if ok { "✓" } else { "✗" });
    if !ok {
        failed.push(what.to_string());
    }
}

async fn show(cluster: &Cluster) -> Result<(), Exit> {
    let client = cluster.client().await?;
    let s = identity::settings::with(&[(identity::settings::TRUST_DOMAIN, TRUST_DOMAIN)])
        .code(Code::Config)?;
    // Stops when the demo ends, however it ends.
    let running = identity::controller::InProcess::start(&client, s)
        .await
        .code(Code::Api)?;
    let anchors = running.anchors();
    // What an impostor holds: a valid certificate of the client's identity.
    let (stolen, stolen_key) = running
        .ca
        .current()
        .issue(
            &format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/client"),
            &[],
            &[],
            SystemTime::now() - Duration::from_secs(1),
        )
        .map_err(|e| anyhow!("issuing the impostor's certificate: {e}"))?;

    for sa in ["client", "server"] {
        let a: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa}}))?;
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(&Default::default(), &a)
            .await
            .code(Code::Api)?;
    }
    let mut server = scenario::echo_pod("server", None);
    server["metadata"]["annotations"] = json!({"ghostwire.dev/encrypt": "true"});
    server["spec"]["serviceAccountName"] = json!("server");
    server["spec"]["containers"][0]["args"] = json!(["--reply", REPLY]);
    scenario::apply(&client, "default", &server)
        .await
        .code(Code::Api)?;
    let sleeper = |name: &str, sa: &str, encrypt: bool| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"ghostwire.dev/encrypt": encrypt.to_string()}},
            "spec": {"terminationGracePeriodSeconds": 1, "serviceAccountName": sa,
                "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "1000000"]}]}})
    };
    for (name, sa, encrypt) in [("client", "client", true), ("intruder", "default", false)] {
        scenario::apply(&client, "default", &sleeper(name, sa, encrypt))
            .await
            .code(Code::Api)?;
    }
    scenario::wait_ready(&client, "default", &["server", "client", "intruder"], WAIT)
        .await
        .code(Code::Api)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ip = |p: Pod| -> Option<IpAddr> { p.status?.pod_ip?.parse().ok() };
    let server_ip = ip(pods.get("server").await.code(Code::Api)?)
        .ok_or_else(|| anyhow!("the server Pod has no IP"))?;
    let to = SocketAddr::new(server_ip, 8080);
    let node = cluster.node();
    let netns = |name: &str| {
        node.pod_netns("default", name)
            .ok_or_else(|| anyhow!("no network namespace for Pod {name}"))
    };
    let (server_ns, client_ns, intruder_ns) =
        (netns("server")?, netns("client")?, netns("intruder")?);
    println!(
        "  Pods: server (sa server, echo on :8080 answering {REPLY:?}), client (sa client), intruder (not opted in)"
    );
    let cap = Capture::start(server_ns.command("tcpdump"), "eth0", "tcp port 8080")
        .context("starting tcpdump in the server Pod")?;
    // Everything sent before a plaintext sentinel (from the intruder, not attached) is in the
    // capture once the sentinel is.
    let flush = |n: u32| -> Result<(), Exit> {
        let line = format!("gw-sentinel-{n}");
        intruder_ns.line_request(to, &line)?;
        if !cap.wait_for(&line, Duration::from_secs(20)) {
            return Err(anyhow!("the capture never showed {line}")).code(Code::Failure);
        }
        Ok(())
    };
    let mut failed = Vec::new();

    let reply = client_ns.line_request(to, "gw-marker-before")?;
    flush(1)?;
    check(
        reply == REPLY && cap.contains("gw-marker-before"),
        "before: the client's marker crosses the wire in plaintext",
        &mut failed,
    );

    let given: BTreeMap<String, String> = [
        (identity::settings::RELOAD, "500ms"),
        (identity::settings::TRUST_DOMAIN, TRUST_DOMAIN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for pod in ["server", "client"] {
        identity::attach::attach(&client, "default", pod, &given)
            .await
            .code(Code::Api)?;
    }
    println!("  attached ghostwire-identity to server and client (ephemeral containers)");
    let server_metrics = || {
        server_ns
            .http_get(SocketAddr::new(server_ip, 18091), "/metrics")
            .unwrap_or_default()
    };
    // The value of one series of the server proxy's metrics (0 when absent).
    let series = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let handshakes = |text: &str| {
        series(
            text,
            "ghostwire_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"} ",
        )
    };
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let ok = client_ns
            .line_request(to, &format!("gw-probe-{n}"))
            .is_ok_and(|r| r == REPLY);
        if ok && handshakes(&server_metrics()) >= 1.0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the client's traffic never went over mTLS")).code(Code::Failure);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = handshakes(&server_metrics());
    let reply = client_ns.line_request(to, "gw-marker-after")?;
    let after = handshakes(&server_metrics());
    flush(2)?;
    check(
        reply == REPLY && after > before,
        "after: the client's request is answered, over mesh mTLS (server handshakes counted)",
        &mut failed,
    );
    check(
        !cap.contains("gw-marker-after"),
        "after: no plaintext marker in the capture",
        &mut failed,
    );

    let stolen = Arc::new(
        SecretIdentity::from_pem(&stolen.chain_pem, &stolen_key, &anchors)
            .map_err(|e| anyhow!("{e}"))?,
    );
    let tcp = intruder_ns
        .netns()
        .run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))??;
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let server_id = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/server");
    let mut answer = Vec::new();
    if let Ok(mut s) = MeshTls::new(stolen).connect(tcp, &server_id).await {
        let _ = s.write_all(b"gw-impostor\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    }
    // The refusal is counted by the server's proxy on its own time: wait for it.
    let refusals = "ghostwire_proxy_refused_connections_total{direction=\"inbound\",reason=\"wrong_client_identity\"} ";
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let seen = series(&server_metrics(), refusals) >= 1.0;
        if seen || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    check(
        !String::from_utf8_lossy(&answer).contains(REPLY) && refused,
        "impostor: the intruder Pod with a valid certificate of the client's identity is refused",
        &mut failed,
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("failed: {}", failed.join("; "))).code(Code::Failure)
    }
}
