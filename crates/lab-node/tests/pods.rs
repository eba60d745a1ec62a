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
