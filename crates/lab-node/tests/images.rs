//! The image table's host-backed images in real pods: a Python app (the host's python3 running
//! a script from a ConfigMap, as a Deployment behind its readiness probe) and an openvpn peer
//! pair (Debian's openvpn, a point-to-point tunnel between two pods, pinged through).

mod common;

use common::*;
use std::time::Duration;

const PYTHON_APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data:
  app.py: |
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("python %d.%d says hi\n" % sys.version_info[:2]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    print("serving on 8000", flush=True)
    http.server.HTTPServer(("", 8000), H).serve_forever()
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: py}
spec:
  replicas: 1
  selector: {matchLabels: {app: py}}
  template:
    metadata: {labels: {app: py}}
    spec:
      containers:
      - name: app
        image: python:3.12-slim
        command: [python, /app/app.py]
        ports: [{containerPort: 8000}]
        readinessProbe: {httpGet: {path: /, port: 8000}, periodSeconds: 1}
        volumeMounts: [{name: app, mountPath: /app}]
      volumes: [{name: app, configMap: {name: app}}]
"#;

fn openvpn_pod(name: &str, local: &str, remote: &str, peer: Option<&str>) -> String {
    let remote_arg = peer
        .map(|ip| format!(", --remote, \"{ip}\""))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: vpn
    image: kylemanna/openvpn
    args: [--dev, tun0, --proto, udp, --port, "1194", --ifconfig, "{local}", "{remote}",
           --secret, /keys/static.key, --cipher, AES-256-CBC, --verb, "3"{remote_arg}]
    securityContext: {{capabilities: {{add: [NET_ADMIN]}}}}
    volumeMounts: [{{name: keys, mountPath: /keys}}]
  volumes: [{{name: keys, secret: {{secretName: vpn-key}}}}]
"#
    )
}

async fn apply_yaml(cluster: &lab_node::Cluster, yaml: &str, file: &str) {
    let path = cluster.data_dir().join(file);
    std::fs::write(&path, yaml).unwrap();
    let (ok, out, err) = kubectl(cluster, &["apply", "-f", path.to_str().unwrap()]).await;
    assert!(ok, "kubectl apply {file}: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_app_and_openvpn_peers_run_from_the_image_table() {
    let cluster = cluster("images").await;
    let client = cluster.client().await.unwrap();

    // The Python app: Ready only once the script answers HTTP on 8000.
    apply_yaml(&cluster, PYTHON_APP, "python.yaml").await;
    let (ok, out, err) = kubectl(
        &cluster,
        &["rollout", "status", "deployment/py", "--timeout=60s"],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, name, _) = kubectl(
        &cluster,
        &[
            "get",
            "pods",
            "-l",
            "app=py",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )
    .await;
    assert!(ok && !name.is_empty());
    let pod = wait_pod(&client, "default", &name, "Ready", ready).await;
    let ip: std::net::IpAddr = pod.status.unwrap().pod_ip.unwrap().parse().unwrap();
    let node_side = cluster.node().pod_netns("default", &name).unwrap();
    let body = tokio::task::spawn_blocking(move || {
        node_side.http_get(std::net::SocketAddr::new(ip, 8000), "/")
    })
    .await
    .unwrap()
    .unwrap();
    let host = std::process::Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&host.stdout).trim().to_string();
    assert!(
        body.contains(&format!("python {version} says hi")),
        "{body:?} (host python3 {version})"
    );
    let (_, logs, _) = kubectl(&cluster, &["logs", &name]).await;
    assert!(logs.contains("serving on 8000"), "{logs}");

    // Two openvpn peers: a static-key point-to-point tunnel over the pod network.
    let key = cluster.data_dir().join("static.key");
    let keygen = std::process::Command::new("openvpn")
        .args(["--genkey", "secret"])
        .arg(&key)
        .output()
        .expect("openvpn (Debian) is installed");
    assert!(keygen.status.success(), "{keygen:?}");
    let (ok, out, err) = kubectl(
        &cluster,
        &[
            "create",
            "secret",
            "generic",
            "vpn-key",
            &format!("--from-file=static.key={}", key.display()),
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    apply_yaml(
        &cluster,
        &openvpn_pod("vpn-a", "10.8.0.1", "10.8.0.2", None),
        "vpn-a.yaml",
    )
    .await;
    let a = wait_pod(&client, "default", "vpn-a", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
    let a_ip = a.status.unwrap().pod_ip.unwrap();
    apply_yaml(
        &cluster,
        &openvpn_pod("vpn-b", "10.8.0.2", "10.8.0.1", Some(&a_ip)),
        "vpn-b.yaml",
    )
    .await;
    wait_pod(&client, "default", "vpn-b", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
    let b = cluster.node().pod_netns("default", "vpn-b").unwrap();
    // The tunnel is up once b's pings through tun0 reach a (bounded retries, no timing asserted).
    let mut last = String::new();
    for _ in 0..30 {
        let out = b
            .command("ping")
            .args(["-c", "1", "-W", "1", "10.8.0.1"])
            .output()
            .unwrap();
        if out.status.success() {
            last.clear();
            break;
        }
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, logs, _) = kubectl(&cluster, &["logs", "vpn-b"]).await;
    assert!(
        last.is_empty(),
        "no ping through the tunnel: {last}\n{logs}"
    );
    assert!(logs.contains("Initialization Sequence Completed"), "{logs}");
    let route = b
        .command("ip")
        .args(["-4", "addr", "show", "tun0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&route.stdout).contains("10.8.0.2"),
        "{route:?}"
    );
    cluster.shutdown(Duration::from_secs(1)).await;
}
