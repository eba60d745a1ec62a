//! Encryption between attached Pods in the lab (issue 17 points 3 and 7): two Pods opted in
//! and attached with `ghostwire attach`; the attached agents' mesh proxies (L4 mode) carry the
//! client's TCP to the server over mTLS, each checking the other against the identity the API
//! gives the address. A capture on the server Pod's eth0 sees the marker before and not after;
//! a valid mesh certificate presented from an address its identity does not own is refused by
//! the server; a server whose identity is not the one the API names for the endpoint (a
//! Service whose EndpointSlice says another Pod owns that address) is refused by the client.

mod common;

use common::{metric, parse_metrics, until};
use identity::controller::InProcess;
use identity::proxy::SecretIdentity;
use identity::settings;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use lab_net::capture::Capture;
use lab_node::scenario::{apply, echo_pod, wait_ready};
use lab_node::{Cluster, ClusterOptions};
use mesh_proxy::tls::MeshTls;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECS: u64 = 120;
const REPLY: &str = "gw-reply-from-server";
const THIEF_REPLY: &str = "gw-reply-from-the-new-owner";

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
    // Certificates live 6 s (renewed every 4 s): rotation happens under the traffic below.
    let s = settings::with(&[
        (settings::TRUST_DOMAIN, "lab.local"),
        (settings::CERT_LIFETIME, "6s"),
    ])
    .unwrap();
    let running = InProcess::start(&client, s).await.unwrap();
    let anchors = running.anchors();
    // A valid mesh certificate of the client's identity, in the hands of another Pod (issued
    // when used: certificates live 6 s here).
    let stolen = || {
        let (cert, key) = running
            .ca
            .current()
            .issue(
                "spiffe://lab.local/ns/default/sa/client",
                &[],
                &[],
                SystemTime::now() - Duration::from_secs(1),
            )
            .unwrap();
        Arc::new(SecretIdentity::from_pem(&cert.chain_pem, &key, &anchors).unwrap())
    };

    for sa in ["client", "server", "thief"] {
        let a = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &a)
            .await
            .unwrap();
    }
    let mut server = echo_pod("server", None);
    // Both ask for kTLS: the kernel path where the kernel has the TLS module, else the
    // counted fallback (this machine's case).
    server["metadata"]["annotations"] =
        json!({"ghostwire.dev/encrypt": "true", "ghostwire.dev/ktls": "true"});
    server["spec"]["serviceAccountName"] = json!("server");
    server["spec"]["containers"][0]["args"] = json!(["--reply", REPLY]);
    apply(&client, "default", &server).await.unwrap();
    let sleeper = |name: &str, sa: &str, encrypt: bool| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"ghostwire.dev/encrypt": encrypt.to_string(),
                "ghostwire.dev/ktls": encrypt.to_string()}},
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
    let attach = |pod: &str| {
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
    };
    for pod in ["server", "client"] {
        attach(pod);
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

    // kTLS asked for: each proxy tried the hand-off on its mesh TLS connections; here the
    // kernel has no TLS module, so each fell back to userspace TLS (the traffic above) and
    // counted why. A kernel with the module (loaded now, if autoloaded) must have taken them.
    let kernel_tls = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .unwrap_or_default()
        .split_whitespace()
        .any(|u| u == "tls");
    let labels: &[(&str, &str)] = if kernel_tls {
        &[("result", "kernel"), ("reason", "")]
    } else {
        &[("result", "userspace"), ("reason", "no_tls_ulp")]
    };
    for (pod, ip) in [(&client_ns, client_ip), (&server_ns, server_ip)] {
        let n = mesh_metric(pod, ip, "ghostwire_proxy_ktls_offloads_total", labels);
        assert!(n >= 1.0, "no kTLS attempt counted {labels:?} in {ip}");
    }

    // Rotation under load: requests without pause while both Pods' certificates are renewed
    // twice (and loaded by their proxies); not one may fail, every one over mesh TLS.
    let loads = |pod: &lab_net::Pod, ip: IpAddr| {
        let text = pod
            .http_get(SocketAddr::new(ip, 18090), "/metrics")
            .unwrap_or_default();
        metric(
            &parse_metrics(&text),
            "ghostwire_identity_agent_certificate_loads_total",
            &[],
        )
        .unwrap_or(0.0)
    };
    let handshake_failures = || {
        mesh_metric(
            &client_ns,
            client_ip,
            "ghostwire_proxy_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "failed")],
        ) + mesh_metric(
            &server_ns,
            server_ip,
            "ghostwire_proxy_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "failed")],
        )
    };
    let (loads_c, loads_s) = (loads(&client_ns, client_ip), loads(&server_ns, server_ip));
    let (failed_before, ok_before) = (handshake_failures(), inbound_ok());
    let (mut sent, mut failures) = (0, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(SECS);
    while loads(&client_ns, client_ip) < loads_c + 2.0
        || loads(&server_ns, server_ip) < loads_s + 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "two renewals did not happen in {SECS} s"
        );
        for _ in 0..5 {
            sent += 1;
            match say(&client_ns, to, &format!("gw-rotate-{sent}")) {
                Ok(r) if r == REPLY => {}
                other => failures.push(format!("request {sent}: {other:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during rotation: {failures:?}",
        failures.len()
    );
    assert_eq!(
        handshake_failures(),
        failed_before,
        "handshakes failed during rotation"
    );
    assert!(
        inbound_ok() >= ok_before + sent as f64,
        "not every request went over mesh TLS"
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
    let answer = mesh_say(
        &intruder_ns,
        to,
        stolen(),
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

    // A Pod IP reused by another workload: the client Pod goes, a Pod of another
    // ServiceAccount gets its address (the lab's fixed-address annotation) and is attached. A
    // client that expects the old Pod there refuses it; the one that knows the new owner (the
    // server's proxy, from the API) reaches it.
    let old_id = "spiffe://lab.local/ns/default/sa/client";
    let thief_id = "spiffe://lab.local/ns/default/sa/thief";
    pods.delete("client", &Default::default()).await.unwrap();
    let mut thief = echo_pod("thief", None);
    let fixed_ip = lab_node::POD_IP_ANNOTATION;
    thief["metadata"]["annotations"] =
        json!({"ghostwire.dev/encrypt": "true", fixed_ip: client_ip.to_string()});
    thief["spec"]["serviceAccountName"] = json!("thief");
    thief["spec"]["containers"][0]["args"] = json!(["--reply", THIEF_REPLY]);
    apply(&client, "default", &thief).await.unwrap();
    wait_ready(&client, "default", &["thief"], Duration::from_secs(SECS))
        .await
        .unwrap();
    assert_eq!(ip_of(&pods.get("thief").await.unwrap()), client_ip);
    attach("thief");
    let thief_ns = c.node().pod_netns("default", "thief").unwrap();
    let reused = SocketAddr::new(client_ip, 8080);
    until(
        "the server's proxy to reach the new owner over mTLS",
        SECS,
        || {
            let ok = say(&server_ns, reused, "gw-to-the-new-owner")
                .ok()
                .as_deref()
                == Some(THIEF_REPLY);
            let tls = mesh_metric(
                &thief_ns,
                client_ip,
                "ghostwire_proxy_tls_handshakes_total",
                &[("direction", "inbound"), ("result", "ok")],
            );
            async move { (ok && tls >= 1.0).then_some(()) }
        },
    )
    .await;
    let expecting =
        |id: &'static str| mesh_say(&intruder_ns, reused, stolen(), id, "gw-who-is-there");
    let refused = expecting(old_id).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("NotValidForName")),
        "a client expecting {old_id} at {reused} accepted the new owner: {refused:?}"
    );
    // The control: expecting the new owner, the server's identity passes the client's check
    // (whatever the server then thinks of this client).
    let control = expecting(thief_id).await;
    assert!(
        !matches!(&control, Err(e) if e.to_string().contains("NotValidForName")),
        "{control:?}"
    );
}
