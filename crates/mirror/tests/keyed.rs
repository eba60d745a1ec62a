//! A change among many Services is mirrored by a keyed pass: the passes after it look only at
//! the names the change touches, never at all of them. Two lab APIs (east local, west remote)
//! without nodes; the mirror runs in-process with admin kubeconfigs. The 10,000-Service
//! timing is the `sync` benchmark's; this test counts passes and names, not time.

mod common;

use common::{NS, Replica, ReplicaOptions, global_json, namespace, until};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mirror::metrics::PassLabels;
use serde_json::json;
use std::time::Duration;

/// Remote Services, each with one slice.
const SERVICES: usize = 300;

fn counter(replica: &Replica, scope: &str) -> u64 {
    replica
        .metrics
        .passes
        .get_or_create(&PassLabels {
            scope: scope.into(),
        })
        .get()
}

async fn mirror_label(east: &Api<Service>, name: &str) -> Option<String> {
    let s = east.get_opt(name).await.ok()??;
    s.metadata.labels?.get("rev").cloned()
}

async fn mirrored_addresses(east: &Api<EndpointSlice>, name: &str) -> Vec<String> {
    east.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map(|l| {
            l.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_among_many_is_mirrored_by_a_keyed_pass() {
    let dir = std::env::temp_dir().join(format!("gw-mirror-keyed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut servers = Vec::new();
    for name in ["east", "west"] {
        servers.push(
            lab_api::Server::start(lab_api::Options {
                kubeconfig: Some(dir.join(format!("{name}.kubeconfig"))),
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    let east = servers[0].client().await.unwrap();
    let west = servers[1].client().await.unwrap();
    namespace(&east, NS).await;
    namespace(&west, "shop").await;
    let svcs: Api<Service> = Api::namespaced(west.clone(), "shop");
    let eps: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    let slice = |j: usize, last: u8| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("s{j}-x"), "labels": {
                "kubernetes.io/service-name": format!("s{j}"),
                "endpointslice.kubernetes.io/managed-by": "test"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("10.1.{}.{last}", j / 200)], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    };
    stream::iter(0..SERVICES)
        .map(|j| {
            let (svcs, eps) = (svcs.clone(), eps.clone());
            async move {
                let s: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("s{j}"), "labels": {"mirror": "true", "global": "true"}},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
                }))
                .unwrap();
                svcs.create(&PostParams::default(), &s).await?;
                eps.create(&PostParams::default(), &slice(j, (j % 200) as u8 + 1))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();

    let kc = |n: &str| dir.join(format!("{n}.kubeconfig"));
    let config = json!({
        "global": global_json(true),
        "localCluster": {"name": "east", "kubeConfigPath": kc("east")},
        "remoteClusters": [{"name": "west", "kubeConfigPath": kc("west"), "servicePrefix": "west"}]
    });
    // No resync and no probe failure within the test: only watch events bring passes.
    let replica = Replica::start(
        &config,
        ReplicaOptions {
            resync: Duration::from_secs(3600),
            probe_interval: Duration::from_secs(30),
            failover_grace: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .await;
    let local_svcs: Api<Service> = Api::namespaced(east.clone(), NS);
    let local_eps: Api<EndpointSlice> = Api::namespaced(east.clone(), NS);
    // Every mirror and global Service written by the full pass the listings bring.
    until("the initial sync", || async {
        let n = local_svcs
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        (n == 2 * SERVICES && admin::Health::readyz(replica.health.as_ref()).is_ok()).then_some(())
    })
    .await;
    assert!(counter(&replica, "full") >= 1);
    // A first change, so every pass queued before it (the listings' full ones too) is done.
    let patch = |rev: &str| Patch::Merge(json!({"metadata": {"labels": {"rev": rev}}}));
    svcs.patch("s1", &PatchParams::default(), &patch("warm"))
        .await
        .unwrap();
    until("the first change mirrored", || async {
        (mirror_label(&local_svcs, "west-shop-73736d-s1")
            .await
            .as_deref()
            == Some("warm"))
        .then_some(())
    })
    .await;
    let full = counter(&replica, "full");
    let keyed = counter(&replica, "keyed");
    let names = replica.metrics.reconciled_names.get();

    // A label, an endpoint and a deletion, each among 300.
    svcs.patch("s2", &PatchParams::default(), &patch("r2"))
        .await
        .unwrap();
    let mut moved = eps.get("s3-x").await.unwrap();
    moved.endpoints[0].addresses = vec!["10.9.9.9".into()];
    eps.replace("s3-x", &PostParams::default(), &moved)
        .await
        .unwrap();
    svcs.delete("s4", &DeleteParams::default()).await.unwrap();
    until("the label mirrored", || async {
        (mirror_label(&local_svcs, "west-shop-73736d-s2")
            .await
            .as_deref()
            == Some("r2"))
        .then_some(())
    })
    .await;
    until(
        "the endpoint mirrored, in the mirror and the global slices",
        || async {
            let want = vec!["10.9.9.9".to_string()];
            (mirrored_addresses(&local_eps, "west-shop-73736d-s3").await == want
                && mirrored_addresses(&local_eps, "gl-shop-73736d-s3").await == want)
                .then_some(())
        },
    )
    .await;
    until("the deleted source's mirror and global gone", || async {
        (local_svcs
            .get_opt("west-shop-73736d-s4")
            .await
            .ok()?
            .is_none()
            && local_svcs
                .get_opt("gl-shop-73736d-s4")
                .await
                .ok()?
                .is_none())
        .then_some(())
    })
    .await;
    // Untouched neighbours stay.
    assert_eq!(
        mirrored_addresses(&local_eps, "west-shop-73736d-s5").await,
        ["10.1.0.6"]
    );

    // Keyed passes only, each looking at the few names the changes touch (a full pass looks
    // at 2 × 300 here).
    assert_eq!(
        counter(&replica, "full"),
        full,
        "{}",
        replica.metrics_text()
    );
    assert!(counter(&replica, "keyed") > keyed);
    let looked_at = replica.metrics.reconciled_names.get() - names;
    assert!(
        looked_at <= 30,
        "{looked_at} names looked at for 3 changes: {}",
        replica.metrics_text()
    );
    replica.stop().await;
    for s in servers {
        s.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
