//! Two mirror replicas with a Lease: only the holder writes; when it stops, the other takes
//! the Lease over and carries on mirroring.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::{Api, Client};
use lab_node::scenario::apply;
use lab_node::{MultiCluster, MultiOptions};
use mirror::config::{Overrides, Settings};
use mirror::lease::LeaseConfig;
use mirror::metrics::Metrics;
use mirror::run::{MirrorHealth, RunOptions, run};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn namespace(c: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
}

fn svc(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"mirror": "true"}},
           "spec": {"ports": [{"port": 80}]}})
}

fn text(r: &prometheus_client::registry::Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, r).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_lease_holder_writes_and_the_other_takes_over() {
    let bin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ghostwire");
    let mc =
        MultiCluster::start(MultiOptions::new("mirror-lease", &["east", "west"], bin).unwrap())
            .await
            .unwrap();
    let east = mc.cluster("east").unwrap().client().await.unwrap();
    let west = mc.cluster("west").unwrap().client().await.unwrap();
    namespace(&west, "shop").await;
    namespace(&east, "mirror").await;
    apply(&west, "shop", &svc("first")).await.unwrap();
    let config = json!({
        "global": {"globalSvcLabelSelector": "global=true", "globalSvcRoutingStrategyLabel": "routing=local-first",
                   "mirrorSvcLabelSelector": "mirror=true", "mirrorNamespace": "mirror", "serviceSync": true},
        "localCluster": {"name": "east"},
        "remoteClusters": [{"name": "west", "kubeConfigPath": mc.cluster("west").unwrap().kubeconfig_path(), "servicePrefix": "west"}]
    });
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let settings = Settings::from_file(
            serde_json::from_value(config.clone()).unwrap(),
            &Overrides::default(),
        )
        .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            settings,
            RunOptions {
                local: east.clone(),
                remotes: vec![west.clone()],
                failover_grace: Duration::from_secs(5),
                probe_interval: Duration::from_secs(1),
                lease: Some(LeaseConfig {
                    namespace: "mirror".into(),
                    name: "ghostwire-mirror".into(),
                    identity: id.into(),
                    duration: Duration::from_secs(2),
                }),
                resync: Duration::from_secs(5),
            },
            metrics,
            Arc::new(MirrorHealth::default()),
            async move {
                let _ = stopped.await;
            },
        ));
        replicas.push((id, registry, stop, task));
    }
    let svcs: Api<Service> = Api::namespaced(east.clone(), "mirror");
    until("first mirrored", || async {
        svcs.get_opt("west-shop-73736d-first").await.ok().flatten()
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(east.clone(), "mirror");
    let holder = until("a lease holder", || async {
        leases
            .get_opt("ghostwire-mirror")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    })
    .await;
    let (leader_i, follower_i) = if holder == "a" { (0, 1) } else { (1, 0) };
    // Only the holder wrote; the other reports it does not lead.
    let follower_metrics = text(&replicas[follower_i].1);
    assert!(
        follower_metrics.contains("ghostwire_mirror_leader 0"),
        "{follower_metrics}"
    );
    assert!(
        !follower_metrics.contains("ghostwire_mirror_writes_total{"),
        "{follower_metrics}"
    );
    assert!(text(&replicas[leader_i].1).contains("ghostwire_mirror_leader 1"));

    // The leader stops: the follower takes the Lease when it runs out and mirrors what is new.
    let (_, _, stop, task) = replicas.remove(leader_i);
    let _ = stop.send(());
    let _ = task.await;
    let other = if holder == "a" { "b" } else { "a" };
    until("the other replica holds the Lease", || async {
        let h = leases
            .get_opt("ghostwire-mirror")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity?;
        (h == other).then_some(())
    })
    .await;
    apply(&west, "shop", &svc("second")).await.unwrap();
    until("second mirrored by the new leader", || async {
        svcs.get_opt("west-shop-73736d-second").await.ok().flatten()
    })
    .await;
    assert!(text(&replicas[0].1).contains("ghostwire_mirror_leader 1"));
    let (_, _, stop, task) = replicas.remove(0);
    let _ = stop.send(());
    let _ = task.await;
    mc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_stops_leading_and_the_other_takes_over() {
    let bin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ghostwire");
    let mc = MultiCluster::start(MultiOptions::new("mirror-part", &["east", "west"], bin).unwrap())
        .await
        .unwrap();
    let east = mc.cluster("east").unwrap().client().await.unwrap();
    let west = mc.cluster("west").unwrap().client().await.unwrap();
    namespace(&west, "shop").await;
    namespace(&east, "mirror").await;
    // Replica "a" reaches east's API through its own gate, which the test black-holes.
    let gate = lab_node::gate::Gate::start(
        "127.0.0.1:0".parse().unwrap(),
        mc.cluster("east").unwrap().api_addr(),
    )
    .await
    .unwrap();
    let kc =
        kube::config::Kubeconfig::read_from(mc.cluster("east").unwrap().kubeconfig_path()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.cluster_url = format!("https://{}", gate.addr()).parse().unwrap();
    let east_via_gate = Client::try_from(cfg).unwrap();
    let config = json!({
        "global": {"globalSvcLabelSelector": "global=true", "globalSvcRoutingStrategyLabel": "routing=local-first",
                   "mirrorSvcLabelSelector": "mirror=true", "mirrorNamespace": "mirror", "serviceSync": true},
        "localCluster": {"name": "east"},
        "remoteClusters": [{"name": "west", "kubeConfigPath": mc.cluster("west").unwrap().kubeconfig_path(), "servicePrefix": "west"}]
    });
    let leases: Api<Lease> = Api::namespaced(east.clone(), "mirror");
    let mut replicas = Vec::new();
    for (id, local) in [("a", east_via_gate.clone()), ("b", east.clone())] {
        let settings = Settings::from_file(
            serde_json::from_value(config.clone()).unwrap(),
            &Overrides::default(),
        )
        .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            settings,
            RunOptions {
                local,
                remotes: vec![west.clone()],
                failover_grace: Duration::from_secs(5),
                probe_interval: Duration::from_secs(1),
                lease: Some(LeaseConfig {
                    namespace: "mirror".into(),
                    name: "ghostwire-mirror".into(),
                    identity: id.into(),
                    duration: Duration::from_secs(2),
                }),
                resync: Duration::from_secs(5),
            },
            metrics,
            Arc::new(MirrorHealth::default()),
            async move {
                let _ = stopped.await;
            },
        ));
        replicas.push((registry, stop, task));
        if id == "a" {
            // "a" leads first.
            until("a holds the Lease", || async {
                (leases
                    .get_opt("ghostwire-mirror")
                    .await
                    .ok()
                    .flatten()?
                    .spec?
                    .holder_identity?
                    == "a")
                    .then_some(())
            })
            .await;
        }
    }
    until("a reports leading", || async {
        text(&replicas[0].0)
            .contains("ghostwire_mirror_leader 1")
            .then_some(())
    })
    .await;
    gate.set(lab_node::ApiState::BlackHole);
    until("b takes the Lease", || async {
        (leases
            .get_opt("ghostwire-mirror")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity?
            == "b")
            .then_some(())
    })
    .await;
    until("a stops leading once its Lease ran out", || async {
        text(&replicas[0].0)
            .contains("ghostwire_mirror_leader 0")
            .then_some(())
    })
    .await;
    apply(&west, "shop", &svc("after")).await.unwrap();
    let svcs: Api<Service> = Api::namespaced(east.clone(), "mirror");
    until("mirrored by b", || async {
        svcs.get_opt("west-shop-73736d-after").await.ok().flatten()
    })
    .await;
    // The partition heals: b keeps the Lease, a does not take it back.
    gate.set(lab_node::ApiState::Up);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = leases
        .get_opt("ghostwire-mirror")
        .await
        .unwrap()
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_eq!(h, "b");
    for (_, stop, task) in replicas {
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    mc.shutdown(Duration::from_secs(1)).await;
}
