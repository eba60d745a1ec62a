//! The lab cluster end to end with the real kubectl: `lab up` and `lab down`, endpoints and
//! ClusterIPs, the injector as the cluster's webhook, and the README's commands by hand. The
//! preview switch example, which runs on a real cluster too, is in e2e.rs.

mod common;

use lab_node::Cluster;
use lab_node::scenario::kubectl;
use std::process::Stdio;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

async fn cluster(test: &str) -> Cluster {
    common::target::lab_cluster(test).await
}

/// `kubectl logs -f` in the lab cluster until a line satisfies `pred`.
async fn follow_until(c: &Cluster, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
    common::target::follow_until(c.kubeconfig_path(), None, args, pred).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness_and_clusterips_follow_endpoints() {
    use lab_node::scenario;
    use serde_json::{Value, json};
    let c = cluster("endpoints").await;
    let client = c.client().await.unwrap();
    let mut svc = scenario::service("web", true);
    svc["spec"]["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "udp", "port": 53, "protocol": "UDP", "targetPort": 8080}));
    scenario::apply(&client, "default", &svc).await.unwrap();
    let mut a = scenario::echo_pod("web-a", None);
    a["metadata"]["labels"]["app"] = json!("web");
    scenario::apply(&client, "default", &a).await.unwrap();
    // web-b never passes its readiness probe (nothing listens on 9999).
    let mut b = scenario::echo_pod("web-b", None);
    b["metadata"]["labels"]["app"] = json!("web");
    b["spec"]["containers"][0]["readinessProbe"] =
        json!({"tcpSocket": {"port": 9999}, "periodSeconds": 1});
    scenario::apply(&client, "default", &b).await.unwrap();
    scenario::apply(
        &client,
        "default",
        &scenario::client_pod("client", "active", None, &[]),
    )
    .await
    .unwrap();
    scenario::wait_ready(&client, "default", &["web-a", "client"], TIMEOUT)
        .await
        .unwrap();
    let ips = scenario::cluster_ips(&client, "default", "web")
        .await
        .unwrap();
    assert_eq!(ips.len(), 2, "{ips:?}");
    let (v4, v6) = (ips[0], ips[1]);
    // The slices (as kubectl shows them): both pods, only web-a ready, the named port resolved.
    let (ok, out, err) = kubectl(
        &c,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{out}");
    for s in items {
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2, "{s}");
        let ready: Vec<&str> = eps
            .iter()
            .filter(|e| e["conditions"]["ready"] == true)
            .map(|e| e["targetRef"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(ready, ["web-a"], "{s}");
        assert!(
            s["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "http" && p["port"] == 8080)
        );
    }
    // kube-proxy: the ClusterIPs lead to web-a only, over TCP and UDP, IPv4 and IPv6.
    let only_a = |rules: &[lab_node::proxy::PortRule]| {
        rules.iter().filter(|r| r.ip == v4 || r.ip == v6).count() == 4
            && rules
                .iter()
                .filter(|r| r.ip == v4 || r.ip == v6)
                .all(|r| r.endpoints.len() == 1)
    };
    c.node()
        .wait_for_rules("web → web-a", TIMEOUT, only_a)
        .await
        .unwrap();
    let client_ns = c.node().pod_netns("default", "client").unwrap();
    let probe = client_ns.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(probe.tcp_request((v4, 80).into()).unwrap());
            got.push(probe.tcp_request((v6, 80).into()).unwrap());
        }
        got.push(probe.udp_request((v4, 53).into()).unwrap());
        got.push(probe.udp_request((v6, 53).into()).unwrap());
        got
    })
    .await
    .unwrap();
    assert!(got.iter().all(|g| g == "web-a"), "{got:?}");
    // web-a goes away and web-c comes: the DNAT follows.
    scenario::delete_pods(&client, "default", &["web-a"], TIMEOUT)
        .await
        .unwrap();
    c.node()
        .wait_for_rules("web without endpoints", TIMEOUT, |rules| {
            rules
                .iter()
                .filter(|r| r.ip == v4)
                .all(|r| r.endpoints.is_empty())
        })
        .await
        .unwrap();
    let probe = client_ns.clone();
    let refused = tokio::task::spawn_blocking(move || probe.tcp_request((v4, 80).into()))
        .await
        .unwrap();
    assert!(refused.is_err(), "{refused:?}");
    let mut cpod = scenario::echo_pod("web-c", None);
    cpod["metadata"]["labels"]["app"] = json!("web");
    scenario::apply(&client, "default", &cpod).await.unwrap();
    scenario::wait_ready(&client, "default", &["web-c"], TIMEOUT)
        .await
        .unwrap();
    c.node()
        .wait_for_rules("web → web-c", TIMEOUT, only_a)
        .await
        .unwrap();
    let probe = client_ns.clone();
    let got = tokio::task::spawn_blocking(move || probe.tcp_request((v4, 80).into()).unwrap())
        .await
        .unwrap();
    assert_eq!(got, "web-c");
    // Deleting the Service removes its slices and its ClusterIPs.
    let (ok, _, err) = kubectl(&c, &["delete", "service", "web"]).await;
    assert!(ok, "{err}");
    c.node()
        .wait_for_rules("no web rules", TIMEOUT, |rules| {
            rules.iter().all(|r| r.ip != v4)
        })
        .await
        .unwrap();
    let (_, out, _) = kubectl(
        &c,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(out.trim(), "");
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A directory removed on drop (also when the test fails).
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops a `lab up` child when the test ends early.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(self.0.id(), "TERM");
            let _ = self.0.wait();
        }
    }
}

fn lab_up(dir: &std::path::Path) -> (Up, String) {
    use std::io::BufRead;
    let mut child = Up(std::process::Command::new(env!("CARGO_BIN_EXE_ghostwire"))
        .args(["lab", "up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    let kubeconfig = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("kubeconfig: ").map(str::to_string))
        .expect("lab up prints the kubeconfig");
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, kubeconfig)
}

fn kubectl_sync(kubeconfig: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl")
        .args(["--kubeconfig", kubeconfig])
        .args(args)
        .output()
        .unwrap()
}

fn lab_namespaces(pid: u32) -> Vec<String> {
    netns::Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("gwl{pid}-")))
        .collect()
}

const ECHO_POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo"},
  "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "echo", "image": "ghostwire/echo:dev",
  "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}"#;

/// `lab up` with one echo pod applied by kubectl and Ready.
fn lab_up_with_echo(dir: &std::path::Path) -> (Up, String) {
    let (up, kubeconfig) = lab_up(dir);
    let manifest = dir.join("echo.json");
    std::fs::write(&manifest, ECHO_POD).unwrap();
    for args in [
        &["apply", "-f", manifest.to_str().unwrap()][..],
        &["wait", "--for=condition=Ready", "pod/echo", "--timeout=60s"],
    ] {
        let out = kubectl_sync(&kubeconfig, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (up, kubeconfig)
}

#[test]
fn lab_up_serves_kubectl_and_tears_down_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("gw-lab-up-{}", std::process::id()));
    let _cleanup = Dir(dir.clone());
    let (mut up, _) = lab_up_with_echo(&dir);
    let pid = up.0.id();
    assert!(!lab_namespaces(pid).is_empty());
    signal(pid, "TERM");
    let status = up.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(lab_namespaces(pid).is_empty(), "{:?}", lab_namespaces(pid));
}

#[test]
fn lab_down_removes_what_a_killed_lab_up_left() {
    let dir = std::env::temp_dir().join(format!("gw-lab-down-{}", std::process::id()));
    let _cleanup = Dir(dir.clone());
    let (mut up, _) = lab_up_with_echo(&dir);
    let pid = up.0.id();
    // The echo container: a child of lab up in the pod's namespace.
    let echo: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p: &u32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect();
    assert!(!echo.is_empty());
    // A crash: nothing gets to clean up.
    signal(pid, "KILL");
    up.0.wait().unwrap();
    assert!(!lab_namespaces(pid).is_empty());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ghostwire"))
        .args(["lab", "down"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab_namespaces(pid).is_empty(), "{:?}", lab_namespaces(pid));
    // Dead or a zombie (reaped by init in its own time) counts as gone.
    let alive: Vec<&u32> = echo
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| !r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(alive.is_empty(), "{alive:?}");
}

/// Issue 7's end to end: the real `ghostwire injector` process is the lab cluster's webhook;
/// a Pod owned by a ReplicaSet of an annotated Deployment (the Pod itself carries no
/// annotation) is created with the real kubectl; the injected init and watcher run in it, and
/// routing follows `kubectl label`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injector_with_kubectl() {
    let c = cluster("e2e-injector").await;
    // The backends (the first seven objects of the preview-switch example: the apps'
    // ConfigMap, three Services, three Deployments).
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/lab/preview-switch.yaml"
    ))
    .unwrap();
    let backends: Vec<&str> = example.split("\n---\n").take(7).collect();
    assert!(backends.last().unwrap().contains("name: payments"));
    apply_stdin(&c, &backends.join("\n---\n")).await;
    // The injected containers get exactly deploy/'s Roles (through the Pod's account).
    apply_stdin(&c, lab_node::scenario::WORKLOAD_RBAC).await;

    let mut injector = common::injector(&c).await;

    // Deployment (annotated) → ReplicaSet → Pod, made by the lab's Deployment controller.
    let shop_cmd = r#"while :; do curl -s --max-time 2 "http://$ORDERS_SERVICE_HOST/" || echo unreachable; sleep 0.2; done"#;
    apply_stdin(&c, &format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\n  annotations: {{ghostwire.dev/enabled: \"true\", ghostwire.dev/pollInterval: 1s}}\nspec:\n  selector: {{matchLabels: {{app: shop}}}}\n  template:\n    metadata: {{labels: {{app: shop, role: preview}}}}\n    spec:\n      serviceAccountName: ghostwire-switch\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: shop\n        image: busybox\n        command: [sh, -c, '{shop_cmd}']\n")).await;
    let (ok, out, err) = kubectl(
        &c,
        &["rollout", "status", "deployment/shop", "--timeout=90s"],
    )
    .await;
    assert!(
        ok,
        "{out}{err}\n{}",
        kubectl(&c, &["get", "pods", "-o", "yaml"]).await.1
    );
    let (_, pod_name, _) = kubectl(
        &c,
        &[
            "get",
            "pods",
            "-l",
            "app=shop",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )
    .await;
    let pod_name = pod_name.as_str();
    assert!(pod_name.starts_with("shop-"), "{pod_name}");
    let (_, names, _) = kubectl(
        &c,
        &[
            "get",
            "pod",
            pod_name,
            "-o",
            "jsonpath={.spec.initContainers[*].name}/{.spec.containers[*].name}",
        ],
    )
    .await;
    // The lab's API keeps native sidecars (the injector's dry-run sees it): the watcher is an
    // init container with restartPolicy Always, started before the app.
    assert_eq!(names, "ghostwire-init ghostwire-watcher/shop");
    let (_, policy, _) = kubectl(
        &c,
        &[
            "get",
            "pod",
            pod_name,
            "-o",
            "jsonpath={.spec.initContainers[1].restartPolicy}/{.spec.initContainers[1].startupProbe.httpGet.path}",
        ],
    )
    .await;
    assert_eq!(policy, "Always//readyz");
    // Routing is right from the app's first packet: init set the jump from the Pod's own
    // role label, and the app started only once the watcher was ready.
    let pod = [pod_name, "-c", "shop"];
    let first = follow_until(&c, &pod, |l| l != "unreachable").await;
    assert_eq!(first, "orders-preview v2", "the app's first answer");

    // Relabelling moves it back and forth; checked from inside the pod's namespace.
    let (_, ip, _) = kubectl(
        &c,
        &["get", "svc", "orders", "-o", "jsonpath={.spec.clusterIP}"],
    )
    .await;
    let orders: std::net::SocketAddr = format!("{ip}:80").parse().unwrap();
    let netns = c.node().pod_netns("default", pod_name).unwrap();
    for (role, want) in [
        ("active", "orders v1"),
        ("preview", "orders-preview v2"),
        ("active", "orders v1"),
    ] {
        let (ok, _, err) = kubectl(
            &c,
            &[
                "label",
                "pod",
                pod_name,
                &format!("role={role}"),
                "--overwrite",
            ],
        )
        .await;
        assert!(ok, "{err}");
        let ns = netns.clone();
        let reached = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let got = ns.http_get(orders, "/").unwrap_or_default();
                let got = got.trim_end().to_string();
                if got == want || std::time::Instant::now() > deadline {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        assert_eq!(reached, want, "after role={role}");
    }
    let (ok, logs, _) = kubectl(&c, &["logs", pod_name, "-c", "ghostwire-watcher"]).await;
    assert!(ok && logs.contains("jump flipped"), "{logs}");
    // The webhook selects app=shop: the Deployment goes first so that its ReplicaSet does not
    // count the run-once Pod.
    let (ok, _, err) = kubectl(&c, &["delete", "deployment", "shop", "--wait=false"]).await;
    assert!(ok, "{err}");
    // A run-once Pod (as a Job's) completes although the watcher never exits on its own, and
    // its only request went to the preview.
    apply_stdin(&c, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\n  labels: {app: shop, role: preview}\n  annotations: {ghostwire.dev/enabled: \"true\"}\nspec:\n  serviceAccountName: ghostwire-switch\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: once\n    image: busybox\n    command: [sh, -c, 'curl -s --max-time 5 \"http://$ORDERS_SERVICE_HOST/\"']\n").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, phase, _) = kubectl(
            &c,
            &["get", "pod", "once", "-o", "jsonpath={.status.phase}"],
        )
        .await;
        if phase == "Succeeded" {
            break;
        }
        assert!(
            phase != "Failed" && tokio::time::Instant::now() < deadline,
            "the run-once Pod is {phase:?}\n{}",
            kubectl(&c, &["get", "pod", "once", "-o", "yaml"]).await.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, once, _) = kubectl(&c, &["logs", "once", "-c", "once"]).await;
    assert_eq!(once.trim(), "orders-preview v2");
    injector.kill().await.unwrap();
    c.shutdown(Duration::from_secs(2)).await;
}

async fn apply_stdin(c: &Cluster, yaml: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig_path())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs kubectl and asserts it succeeded; its stdout.
async fn ok(c: &Cluster, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(c, args).await;
    assert!(ok, "kubectl {args:?}: {out}{err}");
    out
}

/// `kubectl exec deploy/shell -- curl -s URL` until the body satisfies `pred` (the Service's
/// endpoints follow the rollout a moment later); the last body.
async fn curl_until(c: &Cluster, url: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, out, err) = kubectl(c, &["exec", "deploy/shell", "--", "curl", "-s", url]).await;
        if pred(&out) {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "curl {url}: last answer {out:?} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The README's "lab cluster, by hand" commands, as a user types them: `create deployment`,
/// `expose`, `rollout status|history|undo`, `set env`, `scale`, `exec` (through cluster DNS and a
/// ClusterIP), `describe`, `get events`, `delete`, and the `lab/fake-llm` and `python` images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_by_hand_with_kubectl() {
    let c = cluster("byhand").await;
    let status = |d: &'static str| ["rollout", "status", d, "--timeout=90s"];
    ok(
        &c,
        &[
            "create",
            "deployment",
            "web",
            "--image=ghostwire/echo:dev",
            "--replicas=3",
            "--port=8080",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "create",
            "deployment",
            "shell",
            "--image=busybox",
            "--",
            "sleep",
            "infinity",
        ],
    )
    .await;
    ok(&c, &status("deployment/web")).await;
    ok(&c, &status("deployment/shell")).await;
    let resolv = ok(
        &c,
        &["exec", "deploy/shell", "--", "cat", "/etc/resolv.conf"],
    )
    .await;
    assert!(
        resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );
    let url = "http://web.default.svc.cluster.local/";
    let v1 = curl_until(&c, url, |b| b.starts_with("web-")).await;
    assert!(!v1.trim().ends_with(" 2"), "{v1:?}");

    ok(&c, &["set", "env", "deployment/web", "VERSION=2"]).await;
    ok(&c, &status("deployment/web")).await;
    curl_until(&c, url, |b| b.trim().ends_with(" 2")).await;
    let history = ok(&c, &["rollout", "history", "deployment/web"]).await;
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    ok(&c, &["rollout", "undo", "deployment/web"]).await;
    ok(&c, &status("deployment/web")).await;
    curl_until(&c, url, |b| {
        b.starts_with("web-") && !b.trim().ends_with(" 2")
    })
    .await;
    ok(&c, &["scale", "deployment/web", "--replicas=5"]).await;
    ok(&c, &status("deployment/web")).await;
    let ready = ok(
        &c,
        &[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
    )
    .await;
    assert_eq!(ready, "5");
    let described = ok(&c, &["describe", "deployment", "web"]).await;
    assert!(
        described.contains("ScalingReplicaSet") && described.contains("from 3 to 5"),
        "{described}"
    );
    let pods = ok(&c, &["describe", "pod", "-l", "app=web"]).await;
    assert!(
        pods.contains("Scheduled") && pods.contains("Started"),
        "{pods}"
    );
    let events = ok(&c, &["get", "events", "--sort-by=.lastTimestamp"]).await;
    assert!(events.contains("SuccessfulCreate"), "{events}");

    // The fake LLM behind a Service, asked from another Pod; a Python app's `python`.
    ok(
        &c,
        &[
            "create",
            "deployment",
            "llm",
            "--image=lab/fake-llm",
            "--port=8080",
        ],
    )
    .await;
    ok(&c, &["expose", "deployment", "llm", "--port=8080"]).await;
    ok(
        &c,
        &[
            "create",
            "deployment",
            "py",
            "--image=python:3.12-slim",
            "--",
            "python",
            "-m",
            "http.server",
            "8000",
        ],
    )
    .await;
    ok(&c, &status("deployment/llm")).await;
    let answer = ok(
        &c,
        &[
            "exec",
            "deploy/shell",
            "--",
            "curl",
            "-s",
            "http://llm:8080/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello lab"}]}"#,
        ],
    )
    .await;
    assert!(
        answer.contains(r#""model":"gpt-4o""#) && answer.contains("user: hello lab"),
        "{answer}"
    );
    ok(&c, &status("deployment/py")).await;
    let version = ok(&c, &["exec", "deploy/py", "--", "python", "--version"]).await;
    assert!(version.starts_with("Python 3."), "{version}");

    ok(&c, &["delete", "deployment", "web"]).await;
    ok(
        &c,
        &[
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app=web",
            "--timeout=90s",
        ],
    )
    .await;
    let left = ok(&c, &["get", "rs", "-l", "app=web", "-o", "name"]).await;
    assert!(left.trim().is_empty(), "{left}");
    c.shutdown(Duration::from_secs(2)).await;
}

/// The official Python `kubernetes` client runs the `lab/fake-llm` image: it creates the Pod
/// with an HTTP readiness probe, waits for Ready through a watch, then asks a chat completion
/// (OpenAI, port 8080) and an Ollama chat (port 11434) through its own port-forward.
const PY_FAKE_LLM: &str = r#"
import json, sys
from kubernetes import client, config, watch
from kubernetes.stream import portforward
config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
core.create_namespaced_pod("default", {"metadata": {"name": "llm"}, "spec": {
    "terminationGracePeriodSeconds": 1,
    "containers": [{"name": "llm", "image": "lab/fake-llm",
        "ports": [{"name": "openai", "containerPort": 8080}, {"name": "ollama", "containerPort": 11434}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "openai"}, "periodSeconds": 1}}]}})
ready = False
w = watch.Watch()
for ev in w.stream(core.list_namespaced_pod, "default", field_selector="metadata.name=llm",
                   timeout_seconds=90):
    if any(c.type == "Ready" and c.status == "True" for c in (ev["object"].status.conditions or [])):
        ready = True
        w.stop()
def post(port, path, body):
    pf = portforward(core.connect_get_namespaced_pod_portforward, "llm", "default", ports=str(port))
    s = pf.socket(port)
    s.setblocking(True)
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (path.encode(), len(data), data))
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    return head.split(b" ")[1].decode(), json.loads(body)
code, chat = post(8080, "/v1/chat/completions",
                  {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello from python"}]})
ocode, ollama = post(11434, "/api/chat", {"model": "llama3", "stream": False,
                     "messages": [{"role": "user", "content": "hi ollama"}]})
print(json.dumps({"ready": ready,
                  "openai": [code, chat["model"], chat["choices"][0]["message"]["content"]],
                  "ollama": [ocode, ollama["model"], ollama["message"]["content"]]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_runs_the_fake_llm() {
    let c = cluster("pyllm").await;
    let out = tokio::process::Command::new("python3")
        .args(["-c", PY_FAKE_LLM])
        .arg(c.kubeconfig_path())
        .output()
        .await
        .expect("python3 runs");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        got,
        serde_json::json!({"ready": true,
                           "openai": ["200", "gpt-4o", "user: hello from python"],
                           "ollama": ["200", "llama3", "user: hi ollama"]}),
        "{got}"
    );
    c.shutdown(Duration::from_secs(1)).await;
}
