//! The mirror against a three-cluster lab (east is local; west and central are remotes), run
//! in-process through the library: mirror, update, delete, global services with hints,
//! conflict, long name, a remote API stopped and black-holed, and a local Pod reaching a remote
//! Pod through the mirrored ClusterIP.

use k8s_openapi::api::core::v1::{Event, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use lab_node::scenario::{apply, client_pod, wait_ready};
use lab_node::{ApiState, MultiCluster, MultiOptions};
use mirror::config::{Overrides, Settings};
use mirror::metrics::Metrics;
use mirror::run::{MirrorHealth, RunOptions, run};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn ghostwire_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ghostwire")
}

/// Polls `f` until it returns `Some` (bounded).
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

fn service(name: &str, labels: Value, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
           "spec": {"selector": {"app": "orders"},
                    "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

async fn get_svc(c: &Client, name: &str) -> Option<Service> {
    Api::<Service>::namespaced(c.clone(), "mirror")
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

async fn slices_of(c: &Client, svc: &str) -> Vec<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(c.clone(), "mirror")
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn addresses(slices: &[EndpointSlice]) -> Vec<String> {
    let mut v: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
        .collect();
    v.sort();
    v
}

fn metrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_across_three_clusters() {
    let mut opts =
        MultiOptions::new("mirror-e2e", &["east", "west", "central"], ghostwire_bin()).unwrap();
    opts.backoff_initial = Duration::from_millis(200);
    let mc = MultiCluster::start(opts)
        .await
        .expect("three clusters start");
    let client = |n: &str| {
        let c = mc.cluster(n).unwrap();
        async move { c.client().await.unwrap() }
    };
    let (east, west, central) = (
        client("east").await,
        client("west").await,
        client("central").await,
    );
    for c in [&east, &west, &central] {
        namespace(c, "shop").await;
    }
    namespace(&east, "mirror").await;
    // A backend Pod `orders` in each cluster; the test serves from inside west's.
    for c in [&east, &west, &central] {
        let mut pod = client_pod("orders", "active", None, &[]);
        pod["metadata"]["labels"] = json!({"app": "orders"});
        apply(c, "shop", &pod).await.unwrap();
    }
    apply(&east, "shop", &client_pod("client", "active", None, &[]))
        .await
        .unwrap();
    for c in [&east, &west, &central] {
        wait_ready(c, "shop", &["orders"], TIMEOUT).await.unwrap();
    }
    wait_ready(&east, "shop", &["client"], TIMEOUT)
        .await
        .unwrap();
    let west_pod = mc
        .cluster("west")
        .unwrap()
        .node()
        .pod_netns("shop", "orders")
        .unwrap();
    let _echo = west_pod.serve_echo("orders-west", &[8080], &[]).unwrap();

    let both = json!({"mirror": "true", "global": "true", "routing": "local-first", "team": "a"});
    apply(&west, "shop", &service("orders", both.clone(), 80))
        .await
        .unwrap();
    apply(
        &east,
        "shop",
        &service(
            "orders",
            json!({"global": "true", "routing": "local-first"}),
            80,
        ),
    )
    .await
    .unwrap();
    // Central disagrees on the port: a conflict, resolved for the local cluster's definition.
    apply(
        &central,
        "shop",
        &service("orders", json!({"mirror": "true", "global": "true"}), 81),
    )
    .await
    .unwrap();
    let long = "l".repeat(50);
    apply(
        &west,
        "shop",
        &service(&long, json!({"mirror": "true"}), 80),
    )
    .await
    .unwrap();

    // What semaphore-service-mirror leaves behind: Endpoints next to its mirrors.
    let seed_eps: k8s_openapi::api::core::v1::Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "west-shop-73736d-orders", "labels": {"mirrored-svc": "true", "mirror-svc-prefix-sync": "west"}},
        "subsets": [{"addresses": [{"ip": "10.244.1.200"}], "ports": [{"port": 8080}]}]
    }))
    .unwrap();
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(east.clone(), "mirror");
    endpoints
        .create(&Default::default(), &seed_eps)
        .await
        .unwrap();
    let config = json!({
        "global": {"globalSvcLabelSelector": "global=true", "globalSvcRoutingStrategyLabel": "routing=local-first",
                   "mirrorSvcLabelSelector": "mirror=true", "mirrorNamespace": "mirror", "serviceSync": true},
        "localCluster": {"name": "east", "zones": ["east"]},
        "remoteClusters": [
            {"name": "west", "kubeConfigPath": mc.cluster("west").unwrap().kubeconfig_path(), "servicePrefix": "west", "resyncPeriod": "5s"},
            {"name": "central", "kubeConfigPath": mc.cluster("central").unwrap().kubeconfig_path(), "servicePrefix": "central"}
        ]
    });
    let settings = Settings::from_file(
        serde_json::from_value(config).unwrap(),
        &Overrides::default(),
    )
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let health = Arc::new(MirrorHealth::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run(
        settings,
        RunOptions {
            local: east.clone(),
            remotes: vec![west.clone(), central.clone()],
            failover_grace: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            lease: None,
            resync: Duration::from_secs(5),
        },
        metrics.clone(),
        health.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Mirror: Service with the remote's ports and labels, slices with the remote Pod's IP.
    let mirrored = until("west's mirror", || async {
        get_svc(&east, "west-shop-73736d-orders").await
    })
    .await;
    let labels = mirrored.metadata.labels.clone().unwrap();
    assert_eq!(labels["mirrored-svc"], "true");
    assert_eq!(labels["mirror-svc-prefix-sync"], "west");
    assert_eq!(labels["team"], "a");
    let ip = mirrored.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    until("west's endpoints mirrored", || async {
        (addresses(&slices_of(&east, "west-shop-73736d-orders").await)
            .contains(&west_pod.ipv4.to_string()))
        .then_some(())
    })
    .await;
    until("the seed's Endpoints removed", || async {
        endpoints
            .get_opt("west-shop-73736d-orders")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // A local Pod reaches the remote Pod through the mirrored ClusterIP.
    let local_client = mc
        .cluster("east")
        .unwrap()
        .node()
        .pod_netns("shop", "client")
        .unwrap();
    let mip: std::net::IpAddr = ip.parse().unwrap();
    mc.cluster("east")
        .unwrap()
        .node()
        .wait_for_rules("mirrored ClusterIP", TIMEOUT, |r| {
            r.iter().any(|p| p.ip == mip && !p.endpoints.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(
        local_client.tcp_request(SocketAddr::new(mip, 80)).unwrap(),
        "orders-west"
    );

    // Update: a label and a port change propagate.
    apply(
        &west,
        "shop",
        &service(
            "orders",
            json!({"mirror": "true", "global": "true", "routing": "local-first", "team": "b"}),
            80,
        ),
    )
    .await
    .unwrap();
    until("label change mirrored", || async {
        let s = get_svc(&east, "west-shop-73736d-orders").await?;
        (s.metadata.labels?.get("team").map(String::as_str) == Some("b")).then_some(())
    })
    .await;

    // Global: one Service, one slice per source cluster, every endpoint hinted.
    let gl = until("global service", || async {
        let s = get_svc(&east, "gl-shop-73736d-orders").await?;
        (slices_of(&east, "gl-shop-73736d-orders").await.len() == 3).then_some(s)
    })
    .await;
    let ann = gl.metadata.annotations.clone().unwrap();
    assert_eq!(ann["global-svc-clusters"], "central,east,west");
    assert_eq!(ann["service.kubernetes.io/topology-mode"], "Auto");
    assert_eq!(
        gl.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        80
    );
    for s in slices_of(&east, "gl-shop-73736d-orders").await {
        let cluster = s.metadata.labels.as_ref().unwrap()["mirror-endpointslice-sync-name"].clone();
        let want = if cluster == "east" { "east" } else { "remote" };
        assert!(!s.endpoints.is_empty(), "{cluster}");
        for e in &s.endpoints {
            let zones: Vec<&str> = e
                .hints
                .as_ref()
                .unwrap()
                .for_zones
                .as_ref()
                .unwrap()
                .iter()
                .map(|z| z.name.as_str())
                .collect();
            assert_eq!(zones, [want], "{cluster}");
            assert_eq!(e.zone.as_deref(), Some(want), "{cluster}");
        }
    }
    // Conflict (central's port) and the long name: events and metrics.
    let events = until("events", || async {
        let evs = Api::<Event>::namespaced(east.clone(), "mirror")
            .list(&Default::default())
            .await
            .ok()?
            .items;
        let reasons: Vec<String> = evs.iter().filter_map(|e| e.reason.clone()).collect();
        (reasons.iter().any(|r| r == "NameTooLong")
            && reasons.iter().any(|r| r == "GlobalServiceConflict"))
        .then_some(evs)
    })
    .await;
    let too_long = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("NameTooLong"))
        .unwrap();
    assert!(
        too_long
            .message
            .as_deref()
            .unwrap()
            .contains(&format!("shop/{long}"))
    );
    let text = metrics_text(&registry);
    assert!(text.contains(&format!("ghostwire_mirror_name_too_long_total{{cluster=\"west\",namespace=\"shop\",service=\"{long}\"}} 1")), "{text}");
    assert!(
        text.contains(
            "ghostwire_mirror_global_conflicts{service=\"gl-shop-73736d-orders\",field=\"ports\"} 1"
        ),
        "{text}"
    );
    assert!(
        get_svc(&east, &format!("west-shop-73736d-{long}")[..63])
            .await
            .is_none()
    );

    // West's API stopped: reported, its endpoints leave the global service after the grace
    // period, its mirror stays; started again, they come back.
    use admin::Health;
    mc.set_api("west", ApiState::Down).unwrap();
    until("west reported down", || async {
        health.healthz().err().filter(|e| e.contains("west"))
    })
    .await;
    until("west failed over", || async {
        let s = slices_of(&east, "gl-shop-73736d-orders").await;
        (s.len() == 2 && !addresses(&s).contains(&west_pod.ipv4.to_string())).then_some(())
    })
    .await;
    assert!(
        get_svc(&east, "west-shop-73736d-orders").await.is_some(),
        "never deleted on a failed list"
    );
    mc.set_api("west", ApiState::Up).unwrap();
    until("west back", || async {
        (health.healthz().is_ok() && slices_of(&east, "gl-shop-73736d-orders").await.len() == 3)
            .then_some(())
    })
    .await;

    // Central black-holed: connections hang; same failover.
    mc.set_api("central", ApiState::BlackHole).unwrap();
    until("central failed over", || async {
        let s = slices_of(&east, "gl-shop-73736d-orders").await;
        (health.healthz().is_err() && s.len() == 2).then_some(())
    })
    .await;
    assert!(get_svc(&east, "central-shop-73736d-orders").await.is_some());
    mc.set_api("central", ApiState::Up).unwrap();
    until("central back", || async {
        (slices_of(&east, "gl-shop-73736d-orders").await.len() == 3).then_some(())
    })
    .await;

    // Delete at the source: the mirror goes (serviceSync on).
    Api::<Service>::namespaced(west.clone(), "shop")
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    until("mirror deleted", || async {
        get_svc(&east, "west-shop-73736d-orders")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    until("west left the global service", || async {
        let s = get_svc(&east, "gl-shop-73736d-orders").await?;
        (s.metadata
            .annotations?
            .get("global-svc-clusters")
            .map(String::as_str)
            == Some("central,east"))
        .then_some(())
    })
    .await;

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), runner).await;
    mc.shutdown(Duration::from_secs(2)).await;
}
