//! Two mirror replicas with a Lease: only the holder writes; when it stops, the other takes
//! the Lease over and carries on mirroring. A leader cut off from its API stops leading.
//! The replicas run as deploy/mirror's ServiceAccount (its Lease RBAC included).

mod common;

use common::{NS, Replica, ReplicaOptions, admin, global_json, namespace, until};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use lab_node::scenario::apply;
use lab_node::{MultiCluster, MultiOptions};
use serde_json::json;
use std::time::Duration;

fn svc(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"mirror": "true"}},
           "spec": {"ports": [{"port": 80}]}})
}

/// Two clusters, `shop` in west, deploy/mirror's identities; the config of a mirror in east.
async fn setup(label: &str) -> (MultiCluster, common::MirrorAccess, serde_json::Value) {
    let mc = MultiCluster::start(
        MultiOptions::new(label, &["east", "west"], common::ghostwire_bin()).unwrap(),
    )
    .await
    .unwrap();
    namespace(&admin(&mc, "west").await, "shop").await;
    let access = common::mirror_access(&mc, "east", &["west"]).await;
    let config = json!({
        "global": global_json(true),
        "localCluster": {"name": "east", "kubeConfigPath": access.local_kubeconfig},
        "remoteClusters": [access.remote_json("west", "west")]
    });
    (mc, access, config)
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ghostwire-mirror")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_lease_holder_writes_and_the_other_takes_over() {
    let (mc, access, config) = setup("mirror-lease").await;
    let east = admin(&mc, "east").await;
    let west = admin(&mc, "west").await;
    apply(&west, "shop", &svc("first")).await.unwrap();
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let o = ReplicaOptions {
            lease: common::lease(id),
            ..Default::default()
        };
        replicas.push((id, Replica::start(&config, o).await));
    }
    let svcs: Api<Service> = Api::namespaced(east.clone(), NS);
    until("first mirrored", || async {
        svcs.get_opt("west-shop-73736d-first").await.ok().flatten()
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(east.clone(), NS);
    let holder_id = until("a lease holder", || holder(&leases)).await;
    let (leader_i, follower_i) = if holder_id == "a" { (0, 1) } else { (1, 0) };
    // Only the holder wrote; the other reports it does not lead.
    let follower_metrics = replicas[follower_i].1.metrics_text();
    assert!(
        follower_metrics.contains("ghostwire_mirror_leader 0"),
        "{follower_metrics}"
    );
    assert!(
        !follower_metrics.contains("ghostwire_mirror_writes_total{"),
        "{follower_metrics}"
    );
    assert!(
        replicas[leader_i]
            .1
            .metrics_text()
            .contains("ghostwire_mirror_leader 1")
    );

    // The leader stops: the follower takes the Lease when it runs out and mirrors what is new.
    let (_, leader) = replicas.remove(leader_i);
    leader.stop().await;
    let other = if holder_id == "a" { "b" } else { "a" };
    until("the other replica holds the Lease", || async {
        (holder(&leases).await? == other).then_some(())
    })
    .await;
    apply(&west, "shop", &svc("second")).await.unwrap();
    until("second mirrored by the new leader", || async {
        svcs.get_opt("west-shop-73736d-second").await.ok().flatten()
    })
    .await;
    assert!(
        replicas[0]
            .1
            .metrics_text()
            .contains("ghostwire_mirror_leader 1")
    );
    let (_, last) = replicas.remove(0);
    last.stop().await;
    drop(access);
    mc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_stops_leading_and_the_other_takes_over() {
    let (mc, access, config) = setup("mirror-part").await;
    let east = admin(&mc, "east").await;
    let west = admin(&mc, "west").await;
    // Replica "a" reaches east's API through its own gate, which the test black-holes.
    let gate = lab_node::gate::Gate::start(
        "127.0.0.1:0".parse().unwrap(),
        mc.cluster("east").unwrap().api_addr(),
    )
    .await
    .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&access.local_kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.cluster_url = format!("https://{}", gate.addr()).parse().unwrap();
    let east_via_gate = Client::try_from(cfg).unwrap();
    let leases: Api<Lease> = Api::namespaced(east.clone(), NS);
    let mut replicas = Vec::new();
    for (id, local) in [("a", Some(east_via_gate.clone())), ("b", None)] {
        let o = ReplicaOptions {
            local,
            lease: common::lease(id),
            ..Default::default()
        };
        replicas.push(Replica::start(&config, o).await);
        if id == "a" {
            // "a" leads first.
            until("a holds the Lease", || async {
                (holder(&leases).await? == "a").then_some(())
            })
            .await;
        }
    }
    until("a reports leading", || async {
        replicas[0]
            .metrics_text()
            .contains("ghostwire_mirror_leader 1")
            .then_some(())
    })
    .await;
    gate.set(lab_node::ApiState::BlackHole);
    until("b takes the Lease", || async {
        (holder(&leases).await? == "b").then_some(())
    })
    .await;
    until("a stops leading once its Lease ran out", || async {
        replicas[0]
            .metrics_text()
            .contains("ghostwire_mirror_leader 0")
            .then_some(())
    })
    .await;
    apply(&west, "shop", &svc("after")).await.unwrap();
    let svcs: Api<Service> = Api::namespaced(east.clone(), NS);
    until("mirrored by b", || async {
        svcs.get_opt("west-shop-73736d-after").await.ok().flatten()
    })
    .await;
    // The partition heals: b keeps the Lease, a does not take it back.
    gate.set(lab_node::ApiState::Up);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&leases).await.unwrap(), "b");
    for r in replicas {
        r.stop().await;
    }
    drop(access);
    mc.shutdown(Duration::from_secs(1)).await;
}
