//! Events from the node (scheduler and kubelet), the controllers and admission, read back with
//! the real `kubectl get events` / `kubectl describe` and the official Python client: reasons,
//! types, involvedObject and reporting component as Kubernetes records them, repeats counted on
//! one Event.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use std::time::Duration;

/// A pod whose containers fail in the ways the kubelet reports: a readiness probe that prints
/// why it fails, a container that keeps crashing, a liveness probe that fails.
const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: [sleep, "100000"]
    readinessProbe: {exec: {command: [sh, -c, "echo database unreachable; exit 1"]}, periodSeconds: 1}
  - name: crash
    image: busybox
    command: [sh, -c, "exit 3"]
  - name: live
    image: busybox
    command: [sleep, "100000"]
    livenessProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: ghost}
spec:
  containers:
  - {name: app, image: "registry.invalid/nothing:1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: web, image: busybox, command: [sleep, "100000"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: done}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox, command: ["true"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: broken}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox, command: [sh, -c, "exit 1"]}]
"#;

/// A Deployment whose pods an admission webhook refuses.
const BLOCKED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: blocked}
spec:
  replicas: 1
  selector: {matchLabels: {app: blocked}}
  template:
    metadata: {labels: {app: blocked, team: unowned}}
    spec:
      containers: [{name: web, image: busybox, command: [sleep, "100000"]}]
"#;

const DENIAL: &str = "pods of team unowned need an owner label";

/// An HTTPS admission webhook in Python (stdlib only) that denies every review it gets.
const WEBHOOK: &str = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        resp = {"uid": req["request"]["uid"], "allowed": False,
                "status": {"code": 403, "reason": "Forbidden", "message": sys.argv[3]}}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Starts the webhook; returns the child (killed on drop), its port and its CA bundle (PEM).
async fn webhook(dir: &std::path::Path) -> (tokio::process::Child, u16, String) {
    use tokio::io::AsyncBufReadExt;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (crt, pem) = (dir.join("webhook.crt"), dir.join("webhook.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", WEBHOOK])
        .arg(&crt)
        .arg(&pem)
        .arg(DENIAL)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    tokio::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let port = line.trim().parse().expect("webhook port");
    (child, port, ca_cert.pem())
}

async fn kubectl_apply(cluster: &lab_node::Cluster, yaml: &str) {
    let file = cluster.data_dir().join(format!(
        "apply-{}.yaml",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&file, yaml).unwrap();
    let (ok, out, err) = kubectl(cluster, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(ok, "kubectl apply: {out}{err}");
}

async fn ok(cluster: &lab_node::Cluster, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(cluster, args).await;
    assert!(ok, "kubectl {args:?}: {out}{err}");
    out
}

fn has(evs: &[Event], kind: &str, name_prefix: &str, reason: &str, message: &str) -> bool {
    evs.iter().any(|e| {
        e.involved_object.kind.as_deref() == Some(kind)
            && e.involved_object
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(name_prefix))
            && e.reason.as_deref() == Some(reason)
            && e.message.as_deref().is_some_and(|m| m.contains(message))
    })
}

fn count(evs: &[Event], reason: &str, name_prefix: &str) -> i32 {
    evs.iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.involved_object
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .map(|e| e.count.unwrap_or(0))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_controllers_and_admission_record_events_as_kubernetes_does() {
    let cluster = cluster("events").await;
    let client = cluster.client().await.unwrap();
    let (_hook, port, ca) = webhook(cluster.data_dir()).await;
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    kubectl_apply(
        &cluster,
        &format!(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: owners}}
webhooks:
- name: owners.events.lab
  admissionReviewVersions: [v1]
  sideEffects: None
  objectSelector: {{matchLabels: {{team: unowned}}}}
  rules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}]
  clientConfig: {{url: "https://127.0.0.1:{port}/", caBundle: "{bundle}"}}
"#
        ),
    )
    .await;
    kubectl_apply(&cluster, PROBED).await;
    kubectl_apply(&cluster, BLOCKED).await;
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await;
    ok(&cluster, &["scale", "deployment/web", "--replicas=1"]).await;

    // Everything below is asynchronous: wait (bounded) until every event has been recorded.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let checks: &[(&str, &str, &str, &str)] = &[
        (
            "Pod",
            "probed",
            "Scheduled",
            "Successfully assigned default/probed to lab-node",
        ),
        (
            "Pod",
            "probed",
            "Pulled",
            "Container image \"busybox\" already present on machine",
        ),
        ("Pod", "probed", "Created", "Created container: web"),
        ("Pod", "probed", "Started", "Started container web"),
        (
            "Pod",
            "probed",
            "Unhealthy",
            "Readiness probe failed: database unreachable",
        ),
        ("Pod", "probed", "Unhealthy", "Liveness probe failed: "),
        (
            "Pod",
            "probed",
            "Killing",
            "Container live failed liveness probe, will be restarted",
        ),
        (
            "Pod",
            "probed",
            "BackOff",
            "Back-off restarting failed container crash in pod probed_default(",
        ),
        (
            "Pod",
            "ghost",
            "Failed",
            "Failed to pull image \"registry.invalid/nothing:1\"",
        ),
        (
            "Pod",
            "ghost",
            "BackOff",
            "Back-off pulling image \"registry.invalid/nothing:1\"",
        ),
        (
            "Deployment",
            "web",
            "ScalingReplicaSet",
            "Scaled up replica set web-",
        ),
        ("Deployment", "web", "ScalingReplicaSet", "from 2 to 1"),
        (
            "ReplicaSet",
            "web-",
            "SuccessfulCreate",
            "Created pod: web-",
        ),
        (
            "ReplicaSet",
            "web-",
            "SuccessfulDelete",
            "Deleted pod: web-",
        ),
        ("Pod", "web-", "Killing", "Stopping container web"),
        ("Job", "done", "SuccessfulCreate", "Created pod: done-"),
        ("Job", "done", "Completed", "Job completed"),
        (
            "Job",
            "broken",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ),
        (
            "ReplicaSet",
            "blocked-",
            "FailedCreate",
            "Error creating: admission webhook \"owners.events.lab\" denied the request: pods of team unowned need an owner label",
        ),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let evs = loop {
        let evs = events.list(&ListParams::default()).await.unwrap().items;
        let missing: Vec<_> = checks
            .iter()
            .filter(|(k, n, r, m)| !has(&evs, k, n, r, m))
            .collect();
        let counted = count(&evs, "FailedCreate", "blocked-") >= 2
            && count(&evs, "Unhealthy", "probed") >= 2
            && count(&evs, "BackOff", "probed") >= 2;
        if missing.is_empty() && counted {
            break evs;
        }
        if tokio::time::Instant::now() > deadline {
            let all: Vec<String> = evs
                .iter()
                .map(|e| {
                    format!(
                        "{:?} {:?} {:?} x{:?}",
                        e.involved_object.name, e.reason, e.message, e.count
                    )
                })
                .collect();
            panic!(
                "missing {missing:?} (counts ok: {counted}); recorded:\n{}",
                all.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Deduplicated: one Event per (object, reason, message), however often it happened.
    let mut keys: Vec<_> = evs
        .iter()
        .map(|e| {
            (
                e.involved_object.uid.clone(),
                e.involved_object.field_path.clone(),
                e.reason.clone(),
                e.message.clone(),
                e.source.as_ref().and_then(|s| s.component.clone()),
            )
        })
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        n,
        "an event was recorded twice instead of counted"
    );

    // The real kubectl: describe shows each object's events with their source, get events the
    // counts.
    let rs = ok(&cluster, &["describe", "rs", "-l", "app=blocked"]).await;
    let rs_events = rs.split("Events:").nth(1).unwrap_or_default();
    assert!(
        rs_events.lines().any(|l| l.contains("Warning")
            && l.contains("FailedCreate")
            && l.contains("replicaset-controller")
            && l.contains("denied the request: pods of team unowned need an owner label")),
        "{rs}"
    );
    let pod = ok(&cluster, &["describe", "pod", "probed"]).await;
    let pod_events = pod.split("Events:").nth(1).unwrap_or_default();
    for (ty, reason, from) in [
        ("Normal", "Scheduled", "default-scheduler"),
        ("Normal", "Started", "kubelet"),
        ("Warning", "Unhealthy", "kubelet"),
        ("Warning", "BackOff", "kubelet"),
        ("Normal", "Killing", "kubelet"),
    ] {
        assert!(
            pod_events
                .lines()
                .any(|l| l.contains(ty) && l.contains(reason) && l.contains(from)),
            "{ty} {reason} from {from}: {pod}"
        );
    }
    assert!(
        pod_events
            .lines()
            .any(|l| l.contains("Unhealthy") && l.contains("(x")),
        "repeated probe failures are shown counted: {pod}"
    );
    let deploy = ok(&cluster, &["describe", "deployment", "web"]).await;
    assert!(
        deploy.lines().any(|l| l.contains("ScalingReplicaSet")
            && l.contains("deployment-controller")
            && l.contains("from 0 to 2")),
        "{deploy}"
    );
    let table = ok(
        &cluster,
        &["get", "events", "--field-selector", "reason=FailedCreate"],
    )
    .await;
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("FailedCreate"))
        .collect();
    assert_eq!(lines.len(), 1, "{table}");
    assert!(
        lines[0].contains("replicaset/blocked-") && lines[0].contains("(x"),
        "{table}"
    );

    // The official Python client reads the same fields.
    let script = r#"
import json, sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
out = {}
for e in client.CoreV1Api().list_namespaced_event("default").items:
    o = e.involved_object
    if (e.reason, o.name.split("-")[0]) in [("FailedCreate", "blocked"), ("Scheduled", "probed"),
                                            ("Completed", "done"), ("ScalingReplicaSet", "web")]:
        out[e.reason] = [e.type, o.kind, o.api_version, e.reporting_component, e.source.component, e.count >= 1]
    if e.reason == "Unhealthy" and e.message.startswith("Readiness"):
        out["Unhealthy"] = [e.type, o.field_path, e.reporting_component, e.source.host, e.count >= 2]
print(json.dumps(out, sort_keys=True))
"#;
    let got = python_json(cluster.kubeconfig_path(), script, &[]).await;
    assert_eq!(
        got,
        serde_json::json!({
            "FailedCreate": ["Warning", "ReplicaSet", "apps/v1", "replicaset-controller", "replicaset-controller", true],
            "Scheduled": ["Normal", "Pod", "v1", "default-scheduler", "default-scheduler", true],
            "Completed": ["Normal", "Job", "batch/v1", "job-controller", "job-controller", true],
            "ScalingReplicaSet": ["Normal", "Deployment", "apps/v1", "deployment-controller", "deployment-controller", true],
            "Unhealthy": ["Warning", "spec.containers{web}", "kubelet", "lab-node", true],
        })
    );
    cluster.shutdown(Duration::from_secs(1)).await;
}
