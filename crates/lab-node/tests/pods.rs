//! Pod lifecycle on the real kernel with host images (busybox → the host's tools).

mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_pod_runs_reports_status_and_is_removed() {
    let cluster = cluster("simple-pod").await;
    let client = cluster.client().await.unwrap();
    apply(&client, "default", json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web", "role": "preview"}, "annotations": {"note": "hi"}},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", "echo name=$POD_NAME ns=$POD_NS ip=$POD_IP role=$ROLE note=$NOTE greet=$GREET; ip -4 -o addr show eth0; hostname; exec sleep 1000"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "ROLE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['role']"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "WHO", "value": "lab"},
                {"name": "GREET", "value": "hello-$(WHO)"}
            ]
        }]}
    })).await;
    let pod = wait_pod(&client, "default", "web", "Ready", ready).await;
    let status = pod.status.clone().unwrap();
    let ip = status.pod_ip.clone().unwrap();
    assert!(ip.starts_with("10.244.0."), "{ip}");
    let ips: Vec<String> = status.pod_ips.unwrap().into_iter().map(|i| i.ip).collect();
    assert_eq!(ips.len(), 2);
    assert!(ips[1].starts_with("fd00:10:244::"));
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("lab-node")
    );
    let cs = &status.container_statuses.unwrap()[0];
    assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());
    for c in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
        assert!(
            status
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .any(|x| x.type_ == c && x.status == "True"),
            "{c}"
        );
    }
    let ns_name = cluster
        .node()
        .pod_netns("default", "web")
        .unwrap()
        .netns()
        .name()
        .to_string();
    assert!(netns::Netns::exists(&ns_name));
    // The log shows env, downward API and that the process runs inside the pod's namespace.
    let (ok, out, err) = kubectl(&cluster, &["logs", "web"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "name=web ns=default ip={ip} role=preview note=hi greet=hello-lab"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("inet {ip}/24")), "{out}");
    assert!(out.lines().any(|l| l == "web"), "hostname: {out}");
    // The node registered itself, Ready.
    let ready = "jsonpath={.status.conditions[?(@.type=='Ready')].status}";
    let (ok, out, err) = kubectl(&cluster, &["get", "node", "lab-node", "-o", ready]).await;
    assert!(ok && out == "True", "{out}{err}");
    // kubectl wait works on the conditions the node writes.
    let (ok, _, err) = kubectl(
        &cluster,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"],
    )
    .await;
    assert!(ok, "{err}");
    // Delete: SIGTERM ends `sleep` at once; the namespace goes, then the object.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("web", &DeleteParams::default()).await.unwrap();
    wait_gone(&client, "default", "web").await;
    assert!(!netns::Netns::exists(&ns_name), "{ns_name} left behind");
    drop(cluster);
}

/// A cluster's own directory goes with it: when it stops, when its start fails, and when its
/// start is cancelled half way (as Ctrl-C during `ghostwire demo` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_directory_is_removed_however_the_cluster_ends() {
    let dir =
        |label: &str| std::env::temp_dir().join(format!("gw-lab-{}-{label}", std::process::id()));
    // A failed start: the node's resolv.conf is missing, after the directory was made.
    let mut opts = lab_node::ClusterOptions::new("dir-failed", ghostwire_bin());
    opts.node_resolv_conf = Some("/nonexistent/resolv.conf".into());
    let err = lab_node::Cluster::start(opts)
        .await
        .err()
        .expect("no resolv.conf");
    assert!(
        err.to_string().contains("/nonexistent/resolv.conf"),
        "{err}"
    );
    assert!(!dir("dir-failed").exists());
    // A cancelled start: dropped at its first await, the API server not yet up.
    let opts = lab_node::ClusterOptions::new("dir-cancelled", ghostwire_bin());
    let mut start = Some(Box::pin(lab_node::Cluster::start(opts)));
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(start.as_mut().unwrap().as_mut().poll(cx).is_pending())
    })
    .await;
    assert!(first, "the start finished in one poll");
    assert!(dir("dir-cancelled").exists(), "made before the first await");
    drop(start.take());
    assert!(!dir("dir-cancelled").exists());
    // A cluster that ran and stopped.
    let cluster = cluster("dir-stopped").await;
    assert!(dir("dir-stopped").exists());
    drop(cluster);
    assert!(!dir("dir-stopped").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let cluster = cluster("grace").await;
    let client = cluster.client().await.unwrap();
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"]}]}
        }),
    )
    .await;
    wait_pod(&client, "default", "stubborn", "Ready", ready).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&client, "default", "stubborn").await;
}

fn statuses(p: &Pod, init: bool) -> Vec<k8s_openapi::api::core::v1::ContainerStatus> {
    let s = p.status.clone().unwrap_or_default();
    if init {
        s.init_container_statuses.unwrap_or_default()
    } else {
        s.container_statuses.unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_failures_are_retried() {
    let cluster = cluster("init-order").await;
    let client = cluster.client().await.unwrap();
    apply(&client, "default", json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "inits"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "initContainers": [
                {"name": "one", "image": "busybox", "command": ["sh", "-c", "echo one >> /shared/order"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
                {"name": "two", "image": "busybox",
                 "command": ["sh", "-c", "if [ -f /shared/tried ]; then echo two >> /shared/order; else touch /shared/tried; echo failing; exit 3; fi"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "cat /shared/order; exec sleep 1000"],
                            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
            "volumes": [{"name": "shared", "emptyDir": {}}]}
    })).await;
    let pod = wait_pod(&client, "default", "inits", "Ready", ready).await;
    let inits = statuses(&pod, true);
    assert_eq!(inits[0].restart_count, 0);
    assert_eq!(inits[1].restart_count, 1, "{inits:?}");
    let last = inits[1]
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let now = inits[1]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(
        (now.exit_code, now.reason.as_deref()),
        (0, Some("Completed"))
    );
    let (ok, out, err) = kubectl(&cluster, &["logs", "inits", "-c", "main"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo\n");
    let (ok, out, err) = kubectl(&cluster, &["logs", "inits", "-c", "two", "--previous"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "failing\n");
    // Without a container name, a pod with one container defaults to it (kubectl picks it).
    let (ok, _, err) = kubectl(&cluster, &["logs", "inits", "-c", "nope"]).await;
    assert!(
        !ok && err.contains("container nope is not valid for pod inits"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_and_crash_loop() {
    let cluster = cluster("restarts").await;
    let client = cluster.client().await.unwrap();
    let pod = |name: &str, policy: &str, script: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}
        })
    };
    apply(
        &client,
        "default",
        pod("crash", "Always", "echo run; exit 1"),
    )
    .await;
    apply(&client, "default", pod("done", "Never", "echo bye")).await;
    apply(
        &client,
        "default",
        pod(
            "fails",
            "OnFailure",
            "if [ -n \"$X\" ]; then exit 0; fi; exit 2",
        ),
    )
    .await;
    apply(&client, "default", pod("never-fails", "Never", "exit 7")).await;
    let crash = wait_pod(&client, "default", "crash", "restarted twice", |p| {
        statuses(p, false)
            .first()
            .is_some_and(|c| c.restart_count >= 2)
    })
    .await;
    let c = &statuses(&crash, false)[0];
    assert_eq!(
        c.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        1
    );
    let (ok, out, err) = kubectl(&cluster, &["logs", "crash", "--previous"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "run\n");
    let crash = wait_pod(&client, "default", "crash", "in CrashLoopBackOff", |p| {
        statuses(p, false)
            .first()
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("CrashLoopBackOff")
    })
    .await;
    assert_eq!(phase(&crash), "Running");
    let done = wait_pod(&client, "default", "done", "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    let t = statuses(&done, false)[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let (ok, out, _) = kubectl(&cluster, &["logs", "done"]).await;
    assert!(ok);
    assert_eq!(out, "bye\n");
    // OnFailure restarts a failing container (it keeps failing here: X is unset).
    wait_pod(&client, "default", "fails", "restarted", |p| {
        statuses(p, false)
            .first()
            .is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    let nf = wait_pod(&client, "default", "never-fails", "Failed", |p| {
        phase(p) == "Failed"
    })
    .await;
    assert_eq!(
        statuses(&nf, false)[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap()
            .exit_code,
        7
    );
    assert_eq!(statuses(&nf, false)[0].restart_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_image_reports_image_pull_back_off() {
    let cluster = cluster("pull-error").await;
    let client = cluster.client().await.unwrap();
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nopull"},
            "spec": {"containers": [{"name": "main", "image": "example.com/nosuch:1.0"}]}
        }),
    )
    .await;
    let p = wait_pod(&client, "default", "nopull", "ImagePullBackOff", |p| {
        statuses(p, false)
            .first()
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    let w = statuses(&p, false)[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(
        w.message.as_deref(),
        Some("Back-off pulling image \"example.com/nosuch:1.0\"")
    );
    let (ok, _, err) = kubectl(&cluster, &["logs", "nopull"]).await;
    // The kubelet alternates ErrImagePull (each pull) and ImagePullBackOff (between pulls).
    assert!(
        !ok && (err.contains("is waiting to start: ImagePullBackOff")
            || err.contains("is waiting to start: ErrImagePull")),
        "{err}"
    );
    // Deleting a pod that never started still finishes.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("nopull", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&client, "default", "nopull").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_identity_and_capabilities() {
    let cluster = cluster("volumes").await;
    let client = cluster.client().await.unwrap();
    // (kubectl create configmap/secret send protobuf, which the lab API does not read.)
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let cm = json!({"metadata": {"name": "cfg"}, "data": {"key": "value1"}});
    cms.create(&Default::default(), &serde_json::from_value(cm).unwrap())
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    let sec = json!({"metadata": {"name": "sec"}, "stringData": {"pw": "s3cret"}});
    secrets
        .create(&Default::default(), &serde_json::from_value(sec).unwrap())
        .await
        .unwrap();
    apply(&client, "default", json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vols", "labels": {"app": "vols"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", concat!(
                "echo uid=$(id -u) gid=$(id -g); grep CapBnd /proc/self/status; ",
                "echo cfg=$(cat /etc/cfg/key) sec=$(cat /etc/sec/pw) env=$FROM_CM; ",
                "cat /etc/pod/labels; echo; echo podname=$(cat /etc/pod/name); ",
                "echo scratch=$(stat -c %a /scratch) cfgmode=$(stat -L -c %a /etc/cfg/key); ",
                "echo ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); ",
                "echo token=$(test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes); ",
                "echo ca=$(grep -c 'BEGIN CERTIFICATE' /var/run/secrets/kubernetes.io/serviceaccount/ca.crt); ",
                "echo projected=$(test -s /var/run/tok/token && echo yes); ",
                "exec sleep 1000")],
            "env": [{"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "key"}}}],
            "securityContext": {"runAsUser": 1234, "runAsGroup": 4321, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}},
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "sec", "mountPath": "/etc/sec"},
                {"name": "pod", "mountPath": "/etc/pod"}, {"name": "scratch", "mountPath": "/scratch"},
                {"name": "tok", "mountPath": "/var/run/tok"}]}],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o604}},
                {"name": "sec", "secret": {"secretName": "sec"}},
                {"name": "pod", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "audience": "lab"}}]}}]}
    })).await;
    wait_pod(&client, "default", "vols", "Ready", ready).await;
    let (ok, out, err) = kubectl(&cluster, &["logs", "vols"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("uid=1234 gid=4321"), "{out}");
    // Only NET_ADMIN (bit 12) is left in the bounding set.
    assert!(out.contains("CapBnd:\t0000000000001000"), "{out}");
    assert!(out.contains("cfg=value1 sec=s3cret env=value1"), "{out}");
    assert!(out.contains("app=\"vols\""), "{out}");
    assert!(out.contains("podname=vols"), "{out}");
    assert!(out.contains("scratch=777 cfgmode=604"), "{out}");
    assert!(out.contains("ns=default"), "{out}");
    assert!(out.contains("token=yes"), "{out}");
    assert!(out.contains("ca=1"), "{out}");
    assert!(out.contains("projected=yes"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_restart_on_liveness_failure() {
    let cluster = cluster("probes").await;
    let client = cluster.client().await.unwrap();
    apply(&client, "default", json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "busybox",
            // Healthy for a while, then not: liveness kills it, it restarts and is healthy again.
            "command": ["sh", "-c", "touch /data/healthy; touch /data/ready; exec sleep 1000"],
            "readinessProbe": {"exec": {"command": ["cat", "/data/ready"]}, "periodSeconds": 1},
            "livenessProbe": {"exec": {"command": ["cat", "/data/healthy"]}, "periodSeconds": 1, "failureThreshold": 2},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]}
    })).await;
    wait_pod(&client, "default", "probed", "Ready", ready).await;
    let dir = cluster
        .node()
        .volume_dir("default", "probed", "data")
        .unwrap();
    // Readiness failing: Ready goes False while the container keeps running.
    std::fs::remove_file(dir.join("ready")).unwrap();
    let p = wait_pod(&client, "default", "probed", "unready", |p| {
        !ready(p) && phase(p) == "Running"
    })
    .await;
    assert!(
        statuses(&p, false)[0]
            .state
            .as_ref()
            .unwrap()
            .running
            .is_some()
    );
    assert_eq!(statuses(&p, false)[0].restart_count, 0);
    // Liveness failing: killed and restarted (the restart touches both files again).
    std::fs::remove_file(dir.join("healthy")).unwrap();
    let p = wait_pod(&client, "default", "probed", "restarted and ready", |p| {
        statuses(p, false)
            .first()
            .is_some_and(|c| c.restart_count >= 1)
            && ready(p)
    })
    .await;
    let last = statuses(&p, false)[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 143, "SIGTERM'd: {last:?}");
}
