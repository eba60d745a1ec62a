//! Three lab clusters in one process: own APIs and contexts, zones, non-overlapping ranges, pod
//! networks routed to each other, ClusterIPs local, APIs stopped, started and black-holed.

mod common;

use common::TIMEOUT;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use lab_node::scenario::{apply, client_pod, cluster_ips, wait_ready};
use lab_node::{ApiState, MultiCluster, MultiOptions};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

async fn kubectl(mc: &MultiCluster, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(mc.kubeconfig_path())
        .arg("--request-timeout=5s")
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_clusters_flat_pod_network_and_api_outages() {
    let mut opts = MultiOptions::new(
        "mc-three",
        &["east", "west", "central"],
        common::ghostwire_bin(),
    )
    .unwrap();
    opts.backoff_initial = Duration::from_millis(200);
    opts.cluster_mut("central").unwrap().zone = "central-b".into();
    let mc = MultiCluster::start(opts)
        .await
        .expect("three clusters start");

    // Each context is its own API with its own CA, node, zone and ranges.
    let mut cas = std::collections::BTreeSet::new();
    for (name, zone, cidr) in [
        ("east", "east", "10.244.0.0/24"),
        ("west", "west", "10.244.1.0/24"),
        ("central", "central-b", "10.244.2.0/24"),
    ] {
        let (ok, out, err) = kubectl(
            &mc,
            &[
                "--context",
                name,
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[0].metadata.labels.topology\\.kubernetes\\.io/zone} {.items[0].spec.podCIDR}",
            ],
        )
        .await;
        assert!(ok, "{name}: {err}");
        assert_eq!(out, format!("{zone} {cidr}"), "{name}");
        cas.insert(mc.cluster(name).unwrap().api().ca_pem().to_string());
    }
    assert_eq!(cas.len(), 3, "each cluster has its own CA");
    let (ok, out, _) = kubectl(&mc, &["config", "get-contexts", "-o", "name"]).await;
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["central", "east", "west"]);
    // Objects live in one cluster only.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "only-west"}})).unwrap();
    let wc = mc.cluster("west").unwrap().client().await.unwrap();
    Api::<Namespace>::all(wc.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    let (ok, _, _) = kubectl(&mc, &["--context", "east", "get", "namespace", "only-west"]).await;
    assert!(!ok);

    // A pod in each of east and west; the test serves from inside west's pod.
    let east = mc.cluster("east").unwrap();
    let west = mc.cluster("west").unwrap();
    let ec = east.client().await.unwrap();
    apply(&ec, "default", &client_pod("a", "active", None, &[]))
        .await
        .unwrap();
    let mut b = client_pod("b", "active", None, &[]);
    b["metadata"]["labels"] = json!({"app": "b"});
    apply(&wc, "default", &b).await.unwrap();
    wait_ready(&ec, "default", &["a"], TIMEOUT).await.unwrap();
    wait_ready(&wc, "default", &["b"], TIMEOUT).await.unwrap();
    let a = east.node().pod_netns("default", "a").unwrap();
    let b = west.node().pod_netns("default", "b").unwrap();
    assert!(west.node().network().pod_v4.contains(&b.ipv4));
    let _echo = b.serve_echo("b", &[8080], &[]).unwrap();
    assert_eq!(
        a.tcp_request(SocketAddr::from((b.ipv4, 8080))).unwrap(),
        "b"
    );
    assert_eq!(
        a.tcp_request(SocketAddr::from((b.ipv6, 8080))).unwrap(),
        "b"
    );

    // West's ClusterIP serves west, is not routed from east.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"},
                     "spec": {"selector": {"app": "b"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    apply(&wc, "default", &svc).await.unwrap();
    let ip = cluster_ips(&wc, "default", "b").await.unwrap()[0];
    assert!(west.node().network().service_v4.contains(&match ip {
        std::net::IpAddr::V4(v4) => v4,
        _ => panic!("{ip}"),
    }));
    west.node()
        .wait_for_rules("west ClusterIP", TIMEOUT, |r| {
            r.iter().any(|p| p.ip == ip && !p.endpoints.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(b.tcp_request(SocketAddr::new(ip, 80)).unwrap(), "b");
    assert!(a.tcp_request(SocketAddr::new(ip, 80)).is_err());

    // An east Service without selector whose slice names west's pod: east's ClusterIP reaches
    // the remote pod (what a service mirror sets up).
    let mirror = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "remote-b"},
                        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    apply(&ec, "default", &mirror).await.unwrap();
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "remote-b-1", "labels": {"kubernetes.io/service-name": "remote-b"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [b.ipv4.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(ec.clone(), "default")
        .create(&Default::default(), &slice)
        .await
        .unwrap();
    let mip = cluster_ips(&ec, "default", "remote-b").await.unwrap()[0];
    east.node()
        .wait_for_rules("east's mirror ClusterIP", TIMEOUT, |r| {
            r.iter().any(|p| p.ip == mip && !p.endpoints.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(a.tcp_request(SocketAddr::new(mip, 80)).unwrap(), "b");

    // Stop west's API: refused at once; east unaffected; start: same objects again.
    mc.set_api("west", ApiState::Down).unwrap();
    let (ok, _, err) = kubectl(&mc, &["--context", "west", "get", "ns", "only-west"]).await;
    assert!(!ok && err.contains("refused"), "{err}");
    let (ok, _, err) = kubectl(&mc, &["--context", "east", "get", "pod", "a"]).await;
    assert!(ok, "{err}");
    mc.set_api("west", ApiState::Up).unwrap();
    let (ok, _, err) = kubectl(&mc, &["--context", "west", "get", "ns", "only-west"]).await;
    assert!(ok, "{err}");

    // Black-hole central's API: a request hangs (it neither answers nor fails) until the hole
    // closes, then completes.
    let cc = mc.cluster("central").unwrap().client().await.unwrap();
    mc.set_api("central", ApiState::BlackHole).unwrap();
    let (ok, _, err) = kubectl(
        &mc,
        &["--context", "central", "--request-timeout=2s", "get", "ns"],
    )
    .await;
    assert!(!ok, "a black-holed API must not answer");
    assert!(!err.contains("refused"), "{err}");
    let pending = tokio::spawn(async move { Api::<Namespace>::all(cc).get("default").await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pending.is_finished(),
        "a request to a black-holed API hangs"
    );
    mc.set_api("central", ApiState::Up).unwrap();
    let ns = tokio::time::timeout(TIMEOUT, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ns.unwrap().metadata.name.as_deref(), Some("default"));

    mc.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn bad_cluster_lists_are_refused_by_name() {
    let bin = common::ghostwire_bin();
    let err = MultiOptions::new("x", &["east", "east"], bin.clone()).unwrap_err();
    assert!(err.to_string().contains("\"east\""), "{err}");
    let err = MultiOptions::new("x", &["East"], bin.clone()).unwrap_err();
    assert!(err.to_string().contains("cluster name"), "{err}");
    let mut opts = MultiOptions::new("x", &["a", "b"], bin).unwrap();
    opts.cluster_mut("b").unwrap().network = opts.clusters[0].network;
    let err = opts.validate().unwrap_err().to_string();
    assert!(
        err.contains("b: 10.244.0.0/24") && err.contains("overlap a"),
        "{err}"
    );
}
