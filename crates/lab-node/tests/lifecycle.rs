//! Pod lifecycle the capabilities rely on: native sidecars, startup probes, postStart/preStop
//! hooks and ephemeral containers, on the real kernel with host images.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

/// Order of events, each step appending a line to /shared/order. The sidecar waits for its
/// postStart hook's file, so the order does not depend on timing; the init container after it
/// only runs once the sidecar's startup probe has seen /shared/up; the sidecar's first instance
/// crashes and is restarted although the pod says `restartPolicy: Never`; the main container
/// waits for that restart, completes, and only then is the sidecar stopped (preStop, SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sidecar_starts_first_restarts_and_stops_after_the_job() {
    let cluster = cluster("sidecar").await;
    let client = cluster.client().await.unwrap();
    let shared = json!([{"name": "shared", "mountPath": "/shared"}]);
    let sidecar = concat!(
        "if [ -f /shared/up ]; then echo sidecar-restarted >> /shared/order; touch /shared/restarted; ",
        "trap 'echo sidecar-stop >> /shared/order; exit 0' TERM; while :; do sleep 0.1; done; fi; ",
        "until [ -f /shared/posted ]; do sleep 0.1; done; sleep 1; ",
        "echo sidecar-up >> /shared/order; touch /shared/up; ",
        "until [ -f /shared/init-done ]; do sleep 0.1; done; exit 1"
    );
    apply(&client, "default", json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "job"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
            "initContainers": [
                {"name": "proxy", "image": "busybox", "restartPolicy": "Always",
                 "command": ["sh", "-c", sidecar], "volumeMounts": shared,
                 "startupProbe": {"exec": {"command": ["test", "-f", "/shared/up"]}, "periodSeconds": 1, "failureThreshold": 30},
                 "lifecycle": {
                     "postStart": {"exec": {"command": ["sh", "-c", "[ -f /shared/posted ] || echo poststart >> /shared/order; touch /shared/posted"]}},
                     "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /shared/order"]}}}},
                {"name": "setup", "image": "busybox", "volumeMounts": shared,
                 "command": ["sh", "-c", "echo init >> /shared/order; touch /shared/init-done"]}],
            "containers": [{"name": "main", "image": "busybox", "volumeMounts": shared,
                "command": ["sh", "-c", "until [ -f /shared/restarted ]; do sleep 0.1; done; echo main >> /shared/order"]}],
            "volumes": [{"name": "shared", "emptyDir": {}}]}
    })).await;
    let pod = wait_pod(&client, "default", "job", "Succeeded", |p| {
        phase(p) == "Succeeded"
            && p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .is_some_and(|s| s[0].state.as_ref().is_some_and(|s| s.terminated.is_some()))
    })
    .await;
    let dir = cluster
        .node()
        .volume_dir("default", "job", "shared")
        .unwrap();
    let order = std::fs::read_to_string(dir.join("order")).unwrap();
    assert_eq!(
        order,
        "poststart\nsidecar-up\ninit\nsidecar-restarted\nmain\nprestop\nsidecar-stop\n"
    );
    let st = pod.status.unwrap();
    let proxy = &st.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(proxy.restart_count, 1, "{proxy:?}");
    let last = proxy.last_state.as_ref().unwrap().terminated.as_ref();
    assert_eq!(last.map(|t| t.exit_code), Some(1), "{proxy:?}");
    let now = proxy.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(now.exit_code, 0, "stopped by SIGTERM after main: {proxy:?}");
    let main = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        main.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    // The official Python client reads the same Pod: the sidecar's restartPolicy survives its
    // model, and the statuses say what happened (restarted once, stopped after main).
    let script = r#"
import json, sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
p = client.CoreV1Api().read_namespaced_pod("job", "default")
s = p.status.init_container_statuses[0]
print(json.dumps({"phase": p.status.phase,
                  "sidecar": [p.spec.init_containers[0].restart_policy, s.restart_count,
                              s.last_state.terminated.exit_code, s.state.terminated.exit_code],
                  "main": p.status.container_statuses[0].state.terminated.exit_code}))
"#;
    let got = python_json(cluster.kubeconfig_path(), script, &[]).await;
    assert_eq!(
        got,
        json!({"phase": "Succeeded", "sidecar": ["Always", 1, 1, 0], "main": 0})
    );
}

/// An exec postStart and an HTTP preStop hook, an HTTP startup probe against a server in the container, and ephemeral containers
/// (`kubectl debug`, and one with its own securityContext) running in the pod's namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hooks_startup_probe_and_ephemeral_containers() {
    let cluster = cluster("hooks").await;
    let client = cluster.client().await.unwrap();
    let host = std::env::temp_dir().join(format!("gw-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&host).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(host.clone());
    // The server answers 404 for anything else: a hook or probe on a missing path fails.
    for f in ["startup", "poststart", "prestop"] {
        std::fs::write(host.join(f), "ok\n").unwrap();
    }
    let http = |path: &str| json!({"httpGet": {"path": path, "port": "http"}});
    apply(&client, "default", json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"terminationGracePeriodSeconds": 5,
            "containers": [{"name": "web", "image": "busybox",
                "command": ["sh", "-c", "cd /host && exec python3 -u -m http.server 8000 2>>/host/access.log"],
                "ports": [{"name": "http", "containerPort": 8000}],
                "startupProbe": {"httpGet": {"path": "/startup", "port": "http"}, "periodSeconds": 1, "failureThreshold": 60},
                // postStart runs beside the program (a real kubelet does not wait for a port either):
                // an exec hook that waits for the server, inside the pod's namespaces.
                "lifecycle": {
                    "postStart": {"exec": {"command": ["sh", "-c", "until curl -sf http://127.0.0.1:8000/poststart; do sleep 0.1; done"]}},
                    "preStop": http("/prestop")},
                "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
            "volumes": [{"name": "host", "hostPath": {"path": host.display().to_string()}}]}
    })).await;
    let pod = wait_pod(&client, "default", "web", "Ready", ready).await;
    let st = pod.status.unwrap();
    assert_eq!(st.container_statuses.unwrap()[0].started, Some(true));
    let ip = st.pod_ip.unwrap();
    let log = std::fs::read_to_string(host.join("access.log")).unwrap();
    assert!(log.contains("\"GET /poststart HTTP/1.1\""), "{log}");
    assert!(log.contains("\"GET /startup HTTP/1.1\""), "{log}");

    // kubectl debug adds an ephemeral container that runs in the pod's network namespace.
    let (ok, _, err) = kubectl(
        &cluster,
        &[
            "debug",
            "web",
            "--image=busybox",
            "-c",
            "dbg",
            "--",
            "sh",
            "-c",
            "ip -4 -o addr show eth0; echo uid=$(id -u); hostname",
        ],
    )
    .await;
    assert!(ok, "{err}");
    // One with its own securityContext, through the API.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.patch_ephemeral_containers(
        "web",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"ephemeralContainers": [{
            "name": "locked", "image": "busybox",
            "command": ["sh", "-c", "echo uid=$(id -u); grep CapBnd /proc/self/status; curl -sf http://127.0.0.1:8000/startup >/dev/null && echo reached"],
            "securityContext": {"runAsUser": 1234, "capabilities": {"drop": ["ALL"]}}}]}})),
    )
    .await
    .unwrap();
    wait_pod(
        &client,
        "default",
        "web",
        "ephemeral containers done",
        |p| {
            let done = p
                .status
                .as_ref()
                .and_then(|s| s.ephemeral_container_statuses.as_ref())
                .map_or(0, |cs| {
                    cs.iter()
                        .filter(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
                        .count()
                });
            done == 2
        },
    )
    .await;
    let (ok, out, err) = kubectl(&cluster, &["logs", "web", "-c", "dbg"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("inet {ip}/24")), "{out}");
    assert!(out.contains("uid=0\nweb\n"), "{out}");
    let (ok, out, err) = kubectl(&cluster, &["logs", "web", "-c", "locked"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("uid=1234"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("reached"), "{out}");

    // Deleting the pod runs its preStop hook before SIGTERM.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    wait_gone(&client, "default", "web").await;
    let log = std::fs::read_to_string(host.join("access.log")).unwrap();
    assert!(log.contains("\"GET /prestop HTTP/1.1\""), "{log}");
}

/// Driven by the official Python `kubernetes` client: a Pod whose native sidecar serves HTTP
/// (python3) with an exec postStart and an HTTP preStop hook, and whose main container has an
/// exec startup probe on a file the test creates, an HTTP postStart and an exec preStop hook.
/// The script waits until the startup probe has failed twice (its Unhealthy event) and sees the
/// container running but not started and the Pod not Ready, creates the file, and sees it
/// started and Ready; adds an ephemeral container through the `ephemeralcontainers`
/// subresource with its own securityContext and reads its log; deletes the Pod and reads the
/// server's access log. Prints one JSON object of what it saw.
const PY_LIFECYCLE: &str = r#"
import json, os, sys, time
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
host = sys.argv[2]
core = client.CoreV1Api()
def pod():
    return core.read_namespaced_pod("hooks", "default")
def main(p):
    return next((s for s in (p.status.container_statuses or []) if s.name == "main"), None)
def pod_ready(p):
    return any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
def startup_failures():
    return sum(e.count or 1 for e in core.list_namespaced_event("default").items
               if e.reason == "Unhealthy" and e.involved_object.name == "hooks"
               and e.involved_object.field_path == "spec.containers{main}"
               and e.message.startswith("Startup probe failed"))
def paths():
    with open(os.path.join(host, "access.log")) as f:
        return [l.split('"GET ', 1)[1].split(" ", 1)[0] for l in f if '"GET ' in l]
mount = [{"name": "host", "mountPath": "/host"}]
core.create_namespaced_pod("default", {"metadata": {"name": "hooks"}, "spec": {
    "terminationGracePeriodSeconds": 5,
    "initContainers": [{"name": "web", "image": "python:3.12-slim", "restartPolicy": "Always",
        "command": ["sh", "-c", "cd /host && exec python3 -u -m http.server 8000 2>>/host/access.log"],
        "startupProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1, "failureThreshold": 60},
        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "hostname > /host/poststart-exec"]}},
                      "preStop": {"httpGet": {"path": "/prestop-web", "port": 8000}}},
        "volumeMounts": mount}],
    "containers": [{"name": "main", "image": "busybox",
        "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"],
        "startupProbe": {"exec": {"command": ["test", "-f", "/host/gate"]}, "periodSeconds": 1,
                         "failureThreshold": 300},
        "lifecycle": {"postStart": {"httpGet": {"path": "/poststart-main", "port": 8000}},
                      "preStop": {"exec": {"command": ["curl", "-sf", "http://127.0.0.1:8000/prestop-main"]}}},
        "volumeMounts": mount}],
    "volumes": [{"name": "host", "hostPath": {"path": host}}]}})

# Running, its startup probe failing: not started, not Ready.
wait("main running", lambda: (lambda s: s and s.state.running)(main(pod())))
wait("two startup probe failures", lambda: startup_failures() >= 2)
p = pod()
gated = {"running": main(p).state.running is not None, "started": main(p).started,
         "ready": main(p).ready, "pod_ready": pod_ready(p), "failures": startup_failures() >= 2,
         "poststart": "/poststart-main" in paths()}
open(os.path.join(host, "gate"), "w").close()
p = wait("main started and the Pod Ready", lambda: (lambda p: p if main(p).started and pod_ready(p) else None)(pod()))
opened = {"started": main(p).started, "ready": main(p).ready, "pod_ready": pod_ready(p)}
ip = p.status.pod_ip

# An ephemeral container with its own securityContext, through the subresource.
dbg = "echo uid=$(id -u); ip -4 -o addr show eth0; grep CapEff /proc/self/status; curl -sf http://127.0.0.1:8000/ephemeral >/dev/null && echo reached"
core.patch_namespaced_pod_ephemeralcontainers("hooks", "default", {"spec": {"ephemeralContainers": [{
    "name": "dbg", "image": "busybox", "command": ["sh", "-c", dbg],
    "securityContext": {"runAsUser": 4321, "capabilities": {"drop": ["ALL"]}}}]}})
def dbg_done():
    s = pod().status.ephemeral_container_statuses or []
    return s[0].state.terminated if s and s[0].state.terminated else None
done = wait("the ephemeral container ran", dbg_done)
log = core.read_namespaced_pod_log("hooks", "default", container="dbg")

core.delete_namespaced_pod("hooks", "default")
def gone():
    try:
        pod()
        return False
    except client.ApiException as e:
        assert e.status == 404, e
        return True
wait("pod gone", gone, timeout=60)
def read(f):
    try:
        return open(os.path.join(host, f)).read().strip()
    except FileNotFoundError:
        return None
print(json.dumps({"events": sorted({"%s %s: %s" % (e.involved_object.field_path, e.reason, e.message)
                                     for e in core.list_namespaced_event("default").items
                                     if e.involved_object.name == "hooks" and e.type == "Warning"}),"gated": gated, "opened": opened, "ip": ip,
                  "ephemeral": [done.exit_code, log], "paths": paths(),
                  "poststart_exec": read("poststart-exec")}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_startup_probe_hooks_and_ephemeral_container() {
    let cluster = cluster("pyhooks").await;
    let host = cluster.data_dir().join("pyhooks-host");
    std::fs::create_dir_all(&host).unwrap();
    // The server answers 404 for anything else: a hook on a missing path fails.
    for f in ["poststart-main", "prestop-main", "prestop-web", "ephemeral"] {
        std::fs::write(host.join(f), "ok\n").unwrap();
    }
    let host = host.to_str().expect("a UTF-8 path");
    let got = python_json(cluster.kubeconfig_path(), PY_LIFECYCLE, &[host]).await;
    // Before the file exists: running, the startup probe failing, neither started nor Ready;
    // the HTTP postStart hook has already run.
    assert_eq!(
        got["gated"],
        json!({"running": true, "started": false, "ready": false, "pod_ready": false,
               "failures": true, "poststart": true}),
        "{got}"
    );
    assert_eq!(
        got["opened"],
        json!({"started": true, "ready": true, "pod_ready": true}),
        "{got}"
    );
    // The sidecar's exec postStart ran in its UTS namespace (the Pod's hostname).
    assert_eq!(got["poststart_exec"], "hooks", "{got}");
    // The ephemeral container: its user, no capabilities, the Pod's eth0 and loopback.
    let ip = got["ip"].as_str().unwrap();
    let log = got["ephemeral"][1].as_str().unwrap();
    assert_eq!(got["ephemeral"][0], 0, "{got}");
    assert!(log.contains("uid=4321\n"), "{log}");
    assert!(log.contains(&format!("inet {ip}/")), "{log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    assert!(log.contains("reached"), "{log}");
    // The hooks in order: main's postStart, the ephemeral container, then on deletion main's
    // exec preStop and only after main stopped the sidecar's HTTP preStop.
    let paths: Vec<&str> = got["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/poststart-main",
            "/ephemeral",
            "/prestop-main",
            "/prestop-web"
        ],
        "{got}"
    );
}
