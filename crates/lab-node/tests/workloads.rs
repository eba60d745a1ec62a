//! The controller manager with the real kubectl: Deployments (rollout status, restart, undo,
//! pause/resume, scale, the surge/unavailability bounds checked at every Pod event of a rolling
//! update and broken by a Recreate), StatefulSets, DaemonSets, Jobs and cascading deletion; the
//! official Python `kubernetes` client drives the same kinds in its own namespace, at the same time.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use std::time::Duration;

async fn kubectl_stdin(cluster: &lab_node::Cluster, args: &[&str], input: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn ok(cluster: &lab_node::Cluster, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(cluster, args).await;
    assert!(ok, "kubectl {args:?}: {out}{err}");
    out
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 2, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox
        command: [sleep, "1000000"]
        readinessProbe: {exec: {command: ["true"]}, initialDelaySeconds: 1, periodSeconds: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_within_its_bounds_and_kubectl_rollout_works() {
    let cluster = cluster("deploy").await;
    let client = cluster.client().await.unwrap();
    let (applied, out) = kubectl_stdin(&cluster, &["apply", "-f", "-"], DEPLOYMENT).await;
    assert!(applied, "{out}");
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let list = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1);
    let rs1 = list[0].clone();
    let hash = rs1.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(rs1.metadata.name.as_deref(), Some(&*format!("web-{hash}")));
    let owner = &rs1.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Deployment", Some(true))
    );
    let running = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(running.iter().filter(|p| is_ready(p)).count(), 6);
    assert!(running.iter().all(|p| {
        p.metadata
            .name
            .as_ref()
            .unwrap()
            .starts_with(&format!("web-{hash}-"))
            && p.metadata.owner_references.as_ref().unwrap()[0].name
                == *rs1.metadata.name.as_ref().unwrap()
    }));

    // A rolling update, checked at every Pod event the watch delivers while it runs: never
    // more than 6 + 2 Pods, never fewer than 6 - 1 Ready.
    let watch = lab_node::scenario::RolloutWatch::start(&client, "default", "app=web", TIMEOUT)
        .await
        .unwrap();
    watch.bounds().start();
    ok(&cluster, &["rollout", "restart", "deployment/web"]).await;
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    // `rollout status` is done once 6 are updated and available; the old Pods may still be
    // terminating: wait until the watch shows only the new ones.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while watch.bounds().active() != 6 || watch.bounds().ready() != 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            *watch.bounds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rolled = {
        let mut b = watch.bounds();
        b.stop();
        b.clone()
    };
    let new_hash = rss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|r| r.spec.as_ref().and_then(|s| s.replicas) == Some(6))
        .filter_map(|r| {
            r.metadata
                .labels
                .as_ref()?
                .get("pod-template-hash")
                .cloned()
        })
        .collect::<Vec<_>>();
    assert!(new_hash.len() == 1 && new_hash[0] != hash, "{new_hash:?}");
    // Every Pod changes at least three times (created, running, ready) and each old one at
    // least once (deleted): at least 6 * 3 + 6 events.
    assert!(rolled.events >= 24, "{rolled:?}");
    assert!(
        rolled.max_active <= 8,
        "maxSurge 2 broken: {} pods at once ({rolled:?})",
        rolled.max_active
    );
    assert!(
        rolled.min_ready >= 5,
        "maxUnavailable 1 broken: {} ready ({rolled:?})",
        rolled.min_ready
    );
    assert!(rolled.held(6, 2, 1));
    let history = ok(&cluster, &["rollout", "history", "deployment/web"]).await;
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    // Undo goes back to the first template: its ReplicaSet is scaled up again, as revision 3.
    ok(&cluster, &["rollout", "undo", "deployment/web"]).await;
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    let rs = rss.get(rs1.metadata.name.as_ref().unwrap()).await.unwrap();
    let all = ok(&cluster, &["get", "rs,deploy", "-o", "yaml"]).await;
    assert_eq!(rs.spec.unwrap().replicas, Some(6), "{all}");
    assert_eq!(
        rs.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );

    // kubectl scale (the scale subresource).
    ok(&cluster, &["scale", "deployment/web", "--replicas=2"]).await;
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    let ready_now = |list: Vec<Pod>| list.iter().filter(|p| is_active(p)).count();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while ready_now(pods.list(&ListParams::default()).await.unwrap().items) != 2 {
        assert!(tokio::time::Instant::now() < deadline, "scaled to 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Paused: a template change makes no new ReplicaSet until resumed.
    ok(&cluster, &["rollout", "pause", "deployment/web"]).await;
    ok(&cluster, &["set", "env", "deployment/web", "V=2"]).await;
    let gen_seen = "jsonpath={.metadata.generation} {.status.observedGeneration}";
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let out = ok(&cluster, &["get", "deployment/web", "-o", gen_seen]).await;
        let (g, o) = out.split_once(' ').unwrap();
        if g == o {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "observed: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    let reason = "jsonpath={.status.conditions[?(@.type=='Progressing')].reason}";
    assert_eq!(
        ok(&cluster, &["get", "deployment/web", "-o", reason]).await,
        "DeploymentPaused"
    );
    ok(&cluster, &["rollout", "resume", "deployment/web"]).await;
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );

    // The official Python client: scale through the scale subresource, then a rolling update
    // watched through the Deployment's status, every status the API stored is seen: available
    // never under 3 - maxUnavailable 1, pods never over 3 + maxSurge 2 (a controller that
    // deletes everything and recreates it shows 0 available).
    let script = r#"
import json, sys, time
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
apps = client.AppsV1Api()
def done(d):
    s = d.status
    return ((s.observed_generation or 0) >= d.metadata.generation and s.updated_replicas == 3
            and s.available_replicas == 3 and s.replicas == 3)
apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 3}})
deadline = time.time() + 90
while not done(apps.read_namespaced_deployment("web", "default")):
    assert time.time() < deadline, "scaled to 3"
    time.sleep(0.1)
apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"metadata": {
    "annotations": {"example.com/restarted-by": "python"}}}}})
min_available, max_replicas, seen = 3, 0, 0
w = watch.Watch()
for ev in w.stream(apps.list_namespaced_deployment, "default",
                   field_selector="metadata.name=web", timeout_seconds=90):
    d = ev["object"]
    seen += 1
    min_available = min(min_available, d.status.available_replicas or 0)
    max_replicas = max(max_replicas, d.status.replicas or 0)
    if done(d):
        w.stop()
rss = apps.list_namespaced_replica_set("default", label_selector="app=web").items
print(json.dumps({"done": done(apps.read_namespaced_deployment("web", "default")),
                  "min_available": min_available, "max_replicas": max_replicas, "seen": seen,
                  "sizes": sorted(r.spec.replicas for r in rss),
                  "owners": sorted({o.kind for r in rss for o in r.metadata.owner_references})}))
"#;
    let got = python_json(cluster.kubeconfig_path(), script, &[]).await;
    assert_eq!(got["done"], true, "{got}");
    assert!(
        got["min_available"].as_i64() >= Some(2),
        "maxUnavailable 1 broken: {got}"
    );
    assert!(
        got["max_replicas"].as_i64() <= Some(5),
        "maxSurge 2 broken: {got}"
    );
    assert!(got["seen"].as_i64() >= Some(3), "{got}");
    assert_eq!(got["sizes"], serde_json::json!([0, 0, 0, 3]), "{got}");
    assert_eq!(got["owners"], serde_json::json!(["Deployment"]), "{got}");

    // The same check fails a controller that deletes everything and recreates it: the
    // Recreate strategy does exactly that, so held to the RollingUpdate bounds it breaks them.
    let watch = lab_node::scenario::RolloutWatch::start(&client, "default", "app=web", TIMEOUT)
        .await
        .unwrap();
    ok(
        &cluster,
        &[
            "patch",
            "deployment/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
        ],
    )
    .await;
    watch.bounds().start();
    ok(&cluster, &["rollout", "restart", "deployment/web"]).await;
    ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    let recreated = {
        let mut b = watch.bounds();
        b.stop();
        b.clone()
    };
    assert_eq!(recreated.min_ready, 0, "{recreated:?}");
    assert!(!recreated.held(3, 2, 1), "{recreated:?}");

    // Foreground deletion: the Deployment goes only after its ReplicaSets and pods.
    ok(
        &cluster,
        &[
            "delete",
            "deployment/web",
            "--cascade=foreground",
            "--timeout=60s",
        ],
    )
    .await;
    assert!(
        rss.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// The official Python client, in namespace `py`: a StatefulSet watched from before its first
/// Pod (each ordinal appears only after the one before it is Ready; every Pod's hostname and
/// subdomain, `hostname` inside it and its DNS name through the headless Service; a deleted Pod
/// comes back under the same name), a DaemonSet on the node, a Job with completions and
/// parallelism, one failing past its backoffLimit, and deletions with foreground and orphan
/// propagation. Prints one JSON object of what it saw.
const PY_WORKLOADS: &str = r#"
import json, sys, time
from kubernetes import client, config, watch
from kubernetes.stream import stream
config.load_kube_config(config_file=sys.argv[1])
core, apps, batch = client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api()
ns = "py"
def ready(p):
    return p.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
def cond(obj, t):
    return next((c for c in (obj.status.conditions or []) if c.type == t and c.status == "True"), None)
def exists(read, name):
    try:
        read(name, ns)
        return True
    except client.ApiException as e:
        assert e.status == 404, e
        return False
def job(name, spec, cmd):
    spec["template"] = {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "work", "image": "busybox", "command": ["sh", "-c", cmd]}]}}
    batch.create_namespaced_job(ns, {"metadata": {"name": name}, "spec": spec})
core.create_namespace({"metadata": {"name": ns}})
core.create_namespaced_service(ns, {"metadata": {"name": "pydb"}, "spec": {"clusterIP": "None",
    "selector": {"app": "pydb"}, "ports": [{"name": "pg", "port": 5432}]}})
rv = core.list_namespaced_pod(ns).metadata.resource_version
apps.create_namespaced_stateful_set(ns, {"metadata": {"name": "pydb"}, "spec": {
    "replicas": 3, "serviceName": "pydb", "selector": {"matchLabels": {"app": "pydb"}},
    "template": {"metadata": {"labels": {"app": "pydb"}}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "db", "image": "busybox", "command": ["sleep", "1000000"],
            "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 1,
                               "periodSeconds": 1}}]}}}})
apps.create_namespaced_daemon_set(ns, {"metadata": {"name": "pyagent"}, "spec": {
    "selector": {"matchLabels": {"app": "pyagent"}},
    "template": {"metadata": {"labels": {"app": "pyagent"}}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "agent", "image": "busybox", "command": ["sleep", "1000000"]}]}}}})
job("pyjob", {"completions": 3, "parallelism": 2}, "echo done")
job("pyfail", {"backoffLimit": 1}, "exit 3")

# OrderedReady: every event is checked against the readiness seen so far.
order, early, is_ready = [], [], set()
w = watch.Watch()
for ev in w.stream(core.list_namespaced_pod, ns, label_selector="app=pydb",
                   resource_version=rv, timeout_seconds=90):
    p = ev["object"]
    n = p.metadata.name
    if n not in order:
        order.append(n)
        i = int(n.rsplit("-", 1)[1])
        if i > 0 and "pydb-%d" % (i - 1) not in is_ready:
            early.append(n)
    if ready(p):
        is_ready.add(n)
    if "pydb-2" in is_ready:
        w.stop()
pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns, label_selector="app=pydb").items}
names = [[n, pods[n].spec.hostname, pods[n].spec.subdomain] for n in sorted(pods)]
resolve = ("for i in $(seq 100); do getent hosts pydb-0.pydb >/dev/null && break; sleep 0.1; done;"
           " hostname; getent hosts pydb-0.pydb | cut -d' ' -f1")
inside = stream(core.connect_get_namespaced_pod_exec, "pydb-2", ns,
                command=["sh", "-c", resolve], stderr=True, stdin=False, stdout=True, tty=False)
dns_ok = inside.split() == ["pydb-2", pods["pydb-0"].status.pod_ip]
# A deleted member comes back under its name, with a new uid.
old_uid = pods["pydb-1"].metadata.uid
core.delete_namespaced_pod("pydb-1", ns)
back = wait("pydb-1 back", lambda: next((p for p in core.list_namespaced_pod(
    ns, label_selector="app=pydb").items if p.metadata.name == "pydb-1"
    and p.metadata.uid != old_uid and ready(p)), None))

done = wait("pyjob complete", lambda: cond(batch.read_namespaced_job_status("pyjob", ns), "Complete"))
pyjob = batch.read_namespaced_job_status("pyjob", ns)
failed = wait("pyfail failed", lambda: cond(batch.read_namespaced_job_status("pyfail", ns), "Failed"))
pyfail = batch.read_namespaced_job_status("pyfail", ns)
ds = wait("pyagent ready", lambda: (lambda d: d if d.status.number_ready == 1 else None)(
    apps.read_namespaced_daemon_set_status("pyagent", ns)))
agents = core.list_namespaced_pod(ns, label_selector="app=pyagent").items

# Foreground: the StatefulSet is gone only once its Pods are. Orphan: the Job goes, its Pods stay.
apps.delete_namespaced_stateful_set("pydb", ns, propagation_policy="Foreground")
left_when_gone = None
while left_when_gone is None:
    gone = not exists(apps.read_namespaced_stateful_set, "pydb")
    left = len(core.list_namespaced_pod(ns, label_selector="app=pydb").items)
    if gone:
        left_when_gone = left
    time.sleep(0.1)
batch.delete_namespaced_job("pyjob", ns, propagation_policy="Orphan")
wait("pyjob gone", lambda: not exists(batch.read_namespaced_job, "pyjob"))
orphans = core.list_namespaced_pod(ns, label_selector="job-name=pyjob").items
print(json.dumps({
    "order": order, "early": early, "names": names, "dns": [inside.split(), dns_ok],
    "replaced": [back.metadata.name, back.spec.hostname],
    "job": [done.reason, pyjob.status.succeeded, pyjob.spec.parallelism],
    "fail": [failed.reason, pyfail.status.failed],
    "daemonset": [ds.status.desired_number_scheduled, ds.status.number_ready,
                  [(p.spec.node_name, p.metadata.owner_references[0].kind) for p in agents]],
    "foreground_left": left_when_gone,
    "orphans": [len(orphans), sum(len(p.metadata.owner_references or []) for p in orphans)],
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_daemonset_job_and_orphans() {
    let cluster = cluster("workloads").await;
    let client = cluster.client().await.unwrap();
    let kubeconfig = cluster.kubeconfig_path().to_path_buf();
    let python = tokio::spawn(async move { python_json(&kubeconfig, PY_WORKLOADS, &[]).await });
    let manifests = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: db, image: busybox, command: [sh, -c, "hostname; exec sleep 1000000"],
         readinessProbe: {exec: {command: ["true"]}, initialDelaySeconds: 1, periodSeconds: 1}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: agent, image: busybox, command: [sleep, "1000000"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: batch}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: busybox, command: [sh, -c, "echo done"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: doomed}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: busybox, command: [sh, -c, "exit 3"]}]
"#;
    // OrderedReady, sampled: db-N never exists before db-(N-1) is ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sampler = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                let list = pods.list(&ListParams::default()).await.unwrap().items;
                let find = |n: &str| list.iter().find(|p| p.metadata.name.as_deref() == Some(n));
                for i in 1..3 {
                    if find(&format!("db-{i}")).is_some() {
                        let before = find(&format!("db-{}", i - 1));
                        assert!(
                            before.is_some_and(is_ready),
                            "db-{i} before db-{} was ready",
                            i - 1
                        );
                    }
                }
                if find("db-2").is_some_and(is_ready) || tokio::time::Instant::now() > deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (applied, out) = kubectl_stdin(&cluster, &["apply", "-f", "-"], manifests).await;
    assert!(applied, "{out}");
    ok(
        &cluster,
        &["rollout", "status", "statefulset/db", "--timeout=90s"],
    )
    .await;
    sampler.await.unwrap();
    assert_eq!(ok(&cluster, &["logs", "db-1"]).await, "db-1\n");
    let sub = ok(
        &cluster,
        &[
            "get",
            "pod",
            "db-2",
            "-o",
            "jsonpath={.spec.hostname}.{.spec.subdomain}",
        ],
    )
    .await;
    assert_eq!(sub, "db-2.db");
    ok(
        &cluster,
        &["rollout", "status", "daemonset/agent", "--timeout=90s"],
    )
    .await;
    let node = ok(
        &cluster,
        &[
            "get",
            "pods",
            "-l",
            "app=agent",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ],
    )
    .await;
    assert_eq!(node, "lab-node");
    ok(
        &cluster,
        &[
            "wait",
            "--for=condition=complete",
            "job/batch",
            "--timeout=90s",
        ],
    )
    .await;
    let job: Value =
        serde_json::from_str(&ok(&cluster, &["get", "job/batch", "-o", "json"]).await).unwrap();
    assert_eq!(job["status"]["succeeded"], 3, "{job}");
    ok(
        &cluster,
        &[
            "wait",
            "--for=condition=failed",
            "job/doomed",
            "--timeout=90s",
        ],
    )
    .await;
    let job: Value =
        serde_json::from_str(&ok(&cluster, &["get", "job/doomed", "-o", "json"]).await).unwrap();
    assert_eq!(job["status"]["failed"], 2, "{job}");

    // Scale the StatefulSet down: from the highest ordinal.
    ok(&cluster, &["scale", "statefulset/db", "--replicas=1"]).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let names: Vec<String> = pods
            .list(&ListParams::default().labels("app=db"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        if names == ["db-0"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Orphan: the StatefulSet goes, its pod stays, without the reference.
    ok(&cluster, &["delete", "statefulset/db", "--cascade=orphan"]).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (gone, _, _) = kubectl(&cluster, &["get", "statefulset/db"]).await;
        let p = pods.get("db-0").await.unwrap();
        if !gone && p.metadata.owner_references.unwrap_or_default().is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "orphaned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Background (kubectl's default): the DaemonSet's pod is deleted after it.
    ok(&cluster, &["delete", "daemonset/agent"]).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent pod collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pods.get("db-0").await.is_ok(), "the orphan stays");

    // What the Python client saw in its namespace meanwhile.
    let got = python.await.unwrap();
    assert_eq!(got["order"], json!(["pydb-0", "pydb-1", "pydb-2"]), "{got}");
    assert_eq!(got["early"], json!([]), "OrderedReady broken: {got}");
    assert_eq!(
        got["names"],
        json!([
            ["pydb-0", "pydb-0", "pydb"],
            ["pydb-1", "pydb-1", "pydb"],
            ["pydb-2", "pydb-2", "pydb"]
        ]),
        "{got}"
    );
    assert_eq!(got["dns"][1], true, "hostname and pydb-0.pydb: {got}");
    assert_eq!(got["replaced"], json!(["pydb-1", "pydb-1"]), "{got}");
    assert_eq!(got["job"], json!(["CompletionsReached", 3, 2]), "{got}");
    assert_eq!(got["fail"], json!(["BackoffLimitExceeded", 2]), "{got}");
    assert_eq!(
        got["daemonset"],
        json!([1, 1, [["lab-node", "DaemonSet"]]]),
        "{got}"
    );
    assert_eq!(got["foreground_left"], 0, "foreground deletion: {got}");
    assert_eq!(got["orphans"], json!([3, 0]), "orphaned Job pods: {got}");
}
