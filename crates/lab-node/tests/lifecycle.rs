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
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(cluster.kubeconfig_path())
        .output()
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
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
