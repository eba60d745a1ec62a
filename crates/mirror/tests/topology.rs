//! How a global Service asks for topology-aware routing follows the local cluster's version:
//! one lab of four clusters whose APIs report 1.33, 1.29, 1.25 and 1.33, and a mirror in each
//! of the first three. `new` (1.33) gathers `orders` from itself and the three others
//! (`spec.trafficDistribution`), `mid` (1.29) writes `service.kubernetes.io/topology-mode:
//! Auto`, `old` (1.25) the seed's `service.kubernetes.io/topology-aware-hints: auto`; every
//! endpoint of every slice written is hinted (local zone or "remote").

mod common;

use common::{NS, Replica, ReplicaOptions, TIMEOUT, admin, global_json, namespace, until};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use lab_node::scenario::{apply, client_pod, wait_ready};
use lab_node::{MultiCluster, MultiOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const CLUSTERS: [&str; 4] = ["new", "mid", "old", "far"];
const GLOBAL: &str = "gl-shop-73736d-orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topology_form_follows_the_local_clusters_version() {
    let mut opts = MultiOptions::new("mirror-topo", &CLUSTERS, common::ghostwire_bin()).unwrap();
    opts.backoff_initial = Duration::from_millis(200);
    opts.cluster_mut("mid").unwrap().kubernetes_version = "1.29".parse().unwrap();
    opts.cluster_mut("old").unwrap().kubernetes_version = "v1.25.4".parse().unwrap();
    let mc = MultiCluster::start(opts)
        .await
        .expect("four clusters start");
    for name in CLUSTERS {
        let c = admin(&mc, name).await;
        namespace(&c, "shop").await;
        let mut pod = client_pod("orders", "active", None, &[]);
        pod["metadata"]["labels"] = json!({"app": "orders"});
        apply(&c, "shop", &pod).await.unwrap();
        apply(
            &c,
            "shop",
            &json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "orders", "labels": {"global": "true", "routing": "local-first"}},
                    "spec": {"selector": {"app": "orders"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await
        .unwrap();
    }
    for name in CLUSTERS {
        wait_ready(&admin(&mc, name).await, "shop", &["orders"], TIMEOUT)
            .await
            .unwrap();
    }
    // A mirror in each of new, mid and old; new's reads all three others.
    let mut replicas = Vec::new();
    for (local, remotes) in [
        ("new", &["mid", "old", "far"][..]),
        ("mid", &["new"][..]),
        ("old", &["new"][..]),
    ] {
        let access = common::mirror_access(&mc, local, remotes).await;
        let config = json!({
            "global": global_json(false),
            "localCluster": {"name": local, "zones": [local], "kubeConfigPath": access.local_kubeconfig},
            "remoteClusters": remotes.iter().map(|r| access.remote_json(r, r)).collect::<Vec<_>>(),
        });
        replicas.push((
            Replica::start(&config, ReplicaOptions::default()).await,
            access,
        ));
    }

    for (local, sources) in [("new", 4), ("mid", 2), ("old", 2)] {
        let c = admin(&mc, local).await;
        let (svc, slices) = until(&format!("{local}'s global service"), || async {
            let s = Api::<Service>::namespaced(c.clone(), NS)
                .get_opt(GLOBAL)
                .await
                .ok()??;
            let slices = Api::<EndpointSlice>::namespaced(c.clone(), NS)
                .list(
                    &ListParams::default().labels(&format!("kubernetes.io/service-name={GLOBAL}")),
                )
                .await
                .ok()?
                .items;
            let filled = slices.iter().filter(|s| !s.endpoints.is_empty()).count();
            (filled == sources).then_some((s, slices))
        })
        .await;
        let ann: BTreeMap<String, String> = svc.metadata.annotations.clone().unwrap_or_default();
        let td = svc.spec.as_ref().unwrap().traffic_distribution.clone();
        let mode = ann.get("service.kubernetes.io/topology-mode").cloned();
        let hints = ann
            .get("service.kubernetes.io/topology-aware-hints")
            .cloned();
        let got = (td.as_deref(), mode.as_deref(), hints.as_deref());
        match local {
            "new" => {
                assert_eq!(got, (Some("PreferClose"), None, None), "{local}");
                assert_eq!(ann["global-svc-clusters"], "far,mid,new,old");
            }
            "mid" => assert_eq!(got, (None, Some("Auto"), None), "{local}"),
            _ => assert_eq!(got, (None, None, Some("auto")), "{local}"),
        }
        for s in &slices {
            let cluster = &s.metadata.labels.as_ref().unwrap()["mirror-endpointslice-sync-name"];
            let want = if cluster == local { local } else { "remote" };
            for e in &s.endpoints {
                let zones: Vec<&str> = e
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.as_str()).collect())
                    .unwrap_or_default();
                assert_eq!(zones, [want], "{local}: slice of {cluster}");
            }
        }
    }
    for (r, access) in replicas {
        r.stop().await;
        drop(access);
    }
    mc.shutdown(Duration::from_secs(2)).await;
}
