//! Encryption between attached Pods in the lab (issue 17 points 3 and 7): two Pods opted in
//! and attached with `ghostwire attach`; the attached agents' mesh proxies (L4 mode) carry the
//! client's TCP to the server over mTLS, each checking the other against the identity the API
//! gives the address. A capture on the server Pod's eth0 sees the marker before and not after;
//! a valid mesh certificate presented from an address its identity does not own is refused by
//! the server; a server whose identity is not the one the API names for the endpoint (a
//! Service whose EndpointSlice says another Pod owns that address) is refused by the client.

mod common;

use common::{metric, parse_metrics, until};
use identity::controller::{Controller, Metrics};
use identity::proxy::SecretIdentity;
use identity::settings;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use lab_net::capture::Capture;
use lab_node::scenario::{apply, echo_pod, wait_ready};
use lab_node::{Cluster, ClusterOptions};
use mesh_controller::ca::{CaHandle, load_or_create};
use mesh_proxy::tls::MeshTls;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECS: u64 = 120;
const REPLY: &str = "gw-reply-from-server";

/// One line to `to` from inside `pod`; the reply (empty when the connection was closed).
fn say(pod: &lab_net::Pod, to: SocketAddr, line: &str) -> std::io::Result<String> {
    pod.line_request(to, line).map_err(std::io::Error::other)
}

/// A sample of the attached mesh proxy's /metrics in `pod` (at `ip`), 0 when absent.
fn mesh_metric(pod: &lab_net::Pod, ip: IpAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = pod
        .http_get(SocketAddr::new(ip, 18091), "/metrics")
        .unwrap_or_default();
    metric(&parse_metrics(&text), name, labels).unwrap_or(0.0)
}

/// The mesh's own client (ALPN gw.mesh/1, the server must be `server_id`) from inside `pod`
/// to `to`, presenting `identity`, then one line; the reply (empty when the server closed the
/// connection after the handshake).
async fn mesh_say(
    pod: &lab_net::Pod,
    to: SocketAddr,
    identity: Arc<SecretIdentity>,
    server_id: &str,
    line: &str,
) -> std::io::Result<String> {
    let tcp = pod
        .netns()
        .run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let mut s = MeshTls::new(identity).connect(tcp, server_id).await?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

fn ip_of(p: &Pod) -> IpAddr {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|ip| ip.parse().ok())
        .expect("a Pod IP")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_pods_encrypt_and_refuse_impostors() {
    let c = Cluster::start(ClusterOptions::new(
        "encrypt",
        env!("CARGO_BIN_EXE_ghostwire").into(),
    ))
    .await
    .expect("lab cluster (needs root)");
    let client = c.client().await.unwrap();
    let ns = serde_json::from_value(json!({"metadata": {"name": "ghostwire-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let s = settings::with(&[(settings::TRUST_DOMAIN, "lab.local")]).unwrap();
    let (authority, _) = load_or_create(&client, &s.ca).await.unwrap();
    let anchors = authority.anchors_pem().to_string();
    // A valid mesh certificate of the client's identity, in the hands of another Pod.
    let (stolen, stolen_key) = authority
        .issue(
            "spiffe://lab.local/ns/default/sa/client",
            &[],
            &[],
            SystemTime::now() - Duration::from_secs(1),
        )
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let controller = Controller {
        client: client.clone(),
        settings: s,
        ca: CaHandle::new(authority),
        metrics: Metrics::new(&mut registry),
    };
    struct Abort<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for Abort<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _task = Abort(tokio::spawn(controller.run(|| {})));

    for sa in ["client", "server"] {
        let a = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &a)
            .await
            .unwrap();
    }
    let mut server = echo_pod("server", None);
    server["metadata"]["annotations"] = json!({"ghostwire.dev/encrypt": "true"});
    server["spec"]["serviceAccountName"] = json!("server");
    server["spec"]["containers"][0]["args"] = json!(["--reply", REPLY]);
    apply(&client, "default", &server).await.unwrap();
    let sleeper = |name: &str, sa: &str, encrypt: bool| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"ghostwire.dev/encrypt": encrypt.to_string()}},
            "spec": {"terminationGracePeriodSeconds": 1, "serviceAccountName": sa,
                "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "1000000"]}]}})
    };
    apply(&client, "default", &sleeper("client", "client", true))
        .await
        .unwrap();
    apply(&client, "default", &sleeper("intruder", "default", false))
        .await
        .unwrap();
    wait_ready(
        &client,
        "default",
        &["server", "client", "intruder"],
        Duration::from_secs(SECS),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let server_ip = ip_of(&pods.get("server").await.unwrap());
    let client_ip = ip_of(&pods.get("client").await.unwrap());
    let to = SocketAddr::new(server_ip, 8080);
    let server_ns = c.node().pod_netns("default", "server").unwrap();
    let client_ns = c.node().pod_netns("default", "client").unwrap();
    let intruder_ns = c.node().pod_netns("default", "intruder").unwrap();
    let cap = Capture::start(server_ns.command("tcpdump"), "eth0", "tcp port 8080").unwrap();
    // All packets before a plaintext sentinel (from the unattached intruder) are in the
    // capture once the sentinel is.
    let mut sentinels = 0;
    let mut flush = |cap: &Capture| {
        sentinels += 1;
        let line = format!("gw-sentinel-{sentinels}");
        assert_eq!(say(&intruder_ns, to, &line).unwrap(), REPLY);
        assert!(
            cap.wait_for(&line, Duration::from_secs(20)),
            "{line} never captured:\n{}",
            cap.text()
        );
    };

    // Before: the client's bytes cross the wire as they are.
    assert_eq!(say(&client_ns, to, "gw-marker-before").unwrap(), REPLY);
    flush(&cap);
    assert!(cap.contains("gw-marker-before"), "{}", cap.text());

    // Both attached: the client's connection goes through both proxies over mTLS.
    for pod in ["server", "client"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ghostwire"))
            .args([
                "attach",
                pod,
                "--reload",
                "500ms",
                "--trust-domain",
                "lab.local",
            ])
            .env("KUBECONFIG", c.kubeconfig_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let inbound_ok = || {
        mesh_metric(
            &server_ns,
            server_ip,
            "ghostwire_proxy_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")],
        )
    };
    let mut n = 0;
    until("the client's traffic over mTLS", SECS, || {
        n += 1;
        let ok = say(&client_ns, to, &format!("gw-probe-{n}"))
            .ok()
            .as_deref()
            == Some(REPLY);
        let tls = inbound_ok();
        async move { (ok && tls >= 1.0).then_some(()) }
    })
    .await;
    let before = inbound_ok();
    assert_eq!(say(&client_ns, to, "gw-marker-after").unwrap(), REPLY);
    assert!(inbound_ok() > before, "the exchange was not over mesh TLS");
    flush(&cap);
    assert!(
        !cap.contains("gw-marker-after"),
        "plaintext on the wire with encryption on:\n{}",
        cap.text()
    );

    // An impostor client: a valid mesh certificate (the client's identity) presented from an
    // address the API gives to another Pod.
    let refused = || {
        mesh_metric(
            &server_ns,
            server_ip,
            "ghostwire_proxy_refused_connections_total",
            &[
                ("direction", "inbound"),
                ("reason", "wrong_client_identity"),
            ],
        )
    };
    let identity =
        Arc::new(SecretIdentity::from_pem(&stolen.chain_pem, &stolen_key, &anchors).unwrap());
    let answer = mesh_say(
        &intruder_ns,
        to,
        identity,
        "spiffe://lab.local/ns/default/sa/server",
        "gw-impostor",
    )
    .await
    .unwrap_or_default();
    assert!(
        !answer.contains(REPLY),
        "the impostor client got through: {answer}"
    );
    until("the impostor client refused for its identity", SECS, || {
        let r = refused();
        async move { (r >= 1.0).then_some(()) }
    })
    .await;

    // An impostor server: the API says the endpoint behind Service `liar` is the client Pod
    // (its EndpointSlice names it), but the address answers with the server's identity.
    let liar = serde_json::from_value(json!({"metadata": {"name": "liar"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &liar)
        .await
        .unwrap();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "liar-1", "labels": {"kubernetes.io/service-name": "liar"}},
        "addressType": "IPv4", "ports": [{"port": 8080}],
        "endpoints": [{"addresses": [server_ip.to_string()], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": "client", "namespace": "default"}}]});
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(slice).unwrap(),
        )
        .await
        .unwrap();
    let liar_ip: IpAddr = Api::<Service>::namespaced(client.clone(), "default")
        .get("liar")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("a ClusterIP");
    until("the client's proxy to know the liar Service", SECS, || {
        let dump = client_ns
            .http_get(SocketAddr::new(client_ip, 18091), "/config_dump")
            .unwrap_or_default();
        async move { dump.contains(&format!("{liar_ip}:80")).then_some(()) }
    })
    .await;
    let failed = || {
        mesh_metric(
            &client_ns,
            client_ip,
            "ghostwire_proxy_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "failed")],
        )
    };
    let before = failed();
    let answer =
        say(&client_ns, SocketAddr::new(liar_ip, 80), "gw-marker-liar").unwrap_or_default();
    assert!(
        !answer.contains(REPLY),
        "the client accepted a server of the wrong identity: {answer}"
    );
    assert!(failed() > before, "no failed handshake counted");
    flush(&cap);
    assert!(!cap.contains("gw-marker-liar"), "{}", cap.text());
}
