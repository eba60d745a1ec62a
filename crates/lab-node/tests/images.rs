//! The image table's host-backed images in real pods: a Python app (the host's python3 running
//! a script from a ConfigMap, as a Deployment behind its readiness probe) and an openvpn peer
//! pair (Debian's openvpn, a point-to-point tunnel between two pods, pinged through; the second
//! peer created by the official Python `kubernetes` client, Ready once the tunnel answers).

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

fn openvpn_pod(name: &str, local: &str, remote: &str) -> String {
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
           --secret, /keys/static.key, --cipher, AES-256-CBC, --verb, "3"]
    securityContext: {{capabilities: {{add: [NET_ADMIN]}}}}
    volumeMounts: [{{name: keys, mountPath: /keys}}]
  volumes: [{{name: keys, secret: {{secretName: vpn-key}}}}]
"#
    )
}

/// The official Python client creates the openvpn peer `vpn-b` (the `kylemanna/openvpn` image,
/// the static key from Secret `vpn-key`, the peer at argv[2]) with a readiness probe that pings
/// 10.8.0.1 through the tunnel, waits for Ready through a watch, then runs `ip addr show tun0`
/// and a ping through exec. Prints one JSON object.
const PY_OPENVPN: &str = r#"
import json, sys
from kubernetes import client, config, watch
from kubernetes.stream import stream
config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
core.create_namespaced_pod("default", {"metadata": {"name": "vpn-b"}, "spec": {
    "terminationGracePeriodSeconds": 1,
    "containers": [{"name": "vpn", "image": "kylemanna/openvpn",
        "args": ["--dev", "tun0", "--proto", "udp", "--port", "1194",
                 "--ifconfig", "10.8.0.2", "10.8.0.1", "--secret", "/keys/static.key",
                 "--cipher", "AES-256-CBC", "--verb", "3", "--remote", sys.argv[2]],
        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
        "readinessProbe": {"exec": {"command": ["ping", "-c", "1", "-W", "1", "10.8.0.1"]},
                           "periodSeconds": 1, "timeoutSeconds": 2},
        "volumeMounts": [{"name": "keys", "mountPath": "/keys"}]}],
    "volumes": [{"name": "keys", "secret": {"secretName": "vpn-key"}}]}})
ready = False
w = watch.Watch()
for ev in w.stream(core.list_namespaced_pod, "default", field_selector="metadata.name=vpn-b",
                   timeout_seconds=90):
    p = ev["object"]
    if any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])):
        ready = True
        w.stop()
def run(cmd):
    return stream(core.connect_get_namespaced_pod_exec, "vpn-b", "default", command=cmd,
                  stderr=True, stdin=False, stdout=True, tty=False)
print(json.dumps({"ready": ready, "tun0": run(["ip", "-4", "-o", "addr", "show", "tun0"]),
                  "ping": run(["ping", "-c", "3", "-W", "2", "10.8.0.1"])}))
"#;

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
        &openvpn_pod("vpn-a", "10.8.0.1", "10.8.0.2"),
        "vpn-a.yaml",
    )
    .await;
    let a = wait_pod(&client, "default", "vpn-a", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
    let a_ip = a.status.unwrap().pod_ip.unwrap();
    // The second peer from the official Python client: Ready only once a ping through the
    // tunnel answers (its readiness probe), then asked through exec for its tun0 address.
    let got = python_json(cluster.kubeconfig_path(), PY_OPENVPN, &[&a_ip]).await;
    let (_, logs, _) = kubectl(&cluster, &["logs", "vpn-b"]).await;
    assert_eq!(got["ready"], true, "{got}\n{logs}");
    assert!(
        got["tun0"]
            .as_str()
            .is_some_and(|t| t.contains("inet 10.8.0.2 peer 10.8.0.1/32")),
        "{got}"
    );
    assert!(
        got["ping"]
            .as_str()
            .unwrap_or_default()
            .contains(" 0% packet loss"),
        "{got}"
    );
    assert!(logs.contains("Initialization Sequence Completed"), "{logs}");
    // And from the node's side of the Pod's namespace, the tunnel carries traffic.
    let b = cluster.node().pod_netns("default", "vpn-b").unwrap();
    let ping = b
        .command("ping")
        .args(["-c", "1", "-W", "5", "10.8.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    cluster.shutdown(Duration::from_secs(1)).await;
}
