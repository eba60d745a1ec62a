//! The mirror against a three-cluster lab (east is local; west and central are remotes), run
//! in-process through the library: mirror, update, delete, global services with hints,
//! conflict, long name, a remote API stopped and black-holed, a local Pod reaching a remote
//! Pod through the mirrored ClusterIP, and resolving `orders.shop.svc.cluster.<remote>` and
//! `…cluster.global` through the CoreDNS blocks the CLI prints.

mod common;

use common::{NS, ReplicaOptions, TIMEOUT, admin, global_json, namespace, until};
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use lab_node::scenario::{apply, client_pod, kubectl, wait_ready};
use lab_node::{ApiState, MultiCluster, MultiOptions};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

fn service(name: &str, labels: Value, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
           "spec": {"selector": {"app": "orders"},
                    "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn headless(name: &str, labels: Value) -> Value {
    let mut s = service(name, labels, 80);
    s["spec"]["clusterIP"] = json!("None");
    s
}

/// Replaces the port of Service `shop/name` (server-side apply would add a port: ports merge
/// by port number).
async fn set_port(c: &Client, name: &str, port: i32) {
    let api = Api::<Service>::namespaced(c.clone(), "shop");
    let mut s = api.get(name).await.unwrap();
    s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = port;
    api.replace(name, &Default::default(), &s).await.unwrap();
}

fn cluster_ip(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default()
}

async fn get_svc(c: &Client, name: &str) -> Option<Service> {
    Api::<Service>::namespaced(c.clone(), NS)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

async fn slices_of(c: &Client, svc: &str) -> Vec<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(c.clone(), NS)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_across_three_clusters() {
    let mut opts = MultiOptions::new(
        "mirror-e2e",
        &["east", "west", "central"],
        common::ghostwire_bin(),
    )
    .unwrap();
    opts.backoff_initial = Duration::from_millis(200);
    let mc = MultiCluster::start(opts)
        .await
        .expect("three clusters start");
    let (east, west, central) = (
        admin(&mc, "east").await,
        admin(&mc, "west").await,
        admin(&mc, "central").await,
    );
    for c in [&east, &west, &central] {
        namespace(c, "shop").await;
    }
    // The mirror runs as deploy/mirror's ServiceAccounts with exactly its Roles: a verb
    // missing there fails here. The remotes are reached by API URL + CA URL + token file.
    let access = common::mirror_access(&mc, "east", &["west", "central"]).await;
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
    // A global Service whose chosen source (the local one) is a ClusterIP and another
    // (central) headless: a conflict; when the local one goes, the global flips to headless.
    apply(
        &east,
        "shop",
        &service("flip", json!({"global": "true"}), 80),
    )
    .await
    .unwrap();
    apply(
        &central,
        "shop",
        &headless("flip", json!({"global": "true"})),
    )
    .await
    .unwrap();
    apply(
        &west,
        "shop",
        &service("blocked", json!({"mirror": "true"}), 80),
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
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(east.clone(), NS);
    endpoints
        .create(&Default::default(), &seed_eps)
        .await
        .unwrap();
    // Stale: a mirror of west whose source is gone (serviceSync removes it at start), and a
    // Service of someone else in the namespace (left alone).
    for (name, labels) in [
        (
            "west-shop-73736d-gone",
            json!({"mirrored-svc": "true", "mirror-svc-prefix-sync": "west"}),
        ),
        ("not-ours", json!({"team": "x"})),
        // Someone else's Service squatting a mirror's name: creating the mirror fails until
        // it goes, and the pass is retried after a back-off.
        ("west-shop-73736d-blocked", json!({"team": "x"})),
    ] {
        apply(&east, NS, &service(name, labels, 80)).await.unwrap();
    }
    // West's token file starts out invalid: its API refuses (401) until the token is
    // replaced, which the mirror picks up without a restart.
    let west_token = access.remotes[0].3.clone();
    let good_token = std::fs::read_to_string(&west_token).unwrap();
    std::fs::write(&west_token, "not-a-token").unwrap();
    let mut west_cfg = access.remote_json("west", "west");
    west_cfg["resyncPeriod"] = json!("5s");
    let config = json!({
        "global": global_json(true),
        "localCluster": {"name": "east", "zones": ["east"], "kubeConfigPath": access.local_kubeconfig},
        "remoteClusters": [west_cfg, access.remote_json("central", "central")]
    });
    let replica = common::Replica::start(
        &config,
        ReplicaOptions {
            failover_grace: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            ca_refresh: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    let health = replica.health.clone();
    until("west answering 401 to the invalid token", || async {
        replica
            .metrics_text()
            .contains(
                "ghostwire_mirror_api_requests_total{cluster=\"west\",verb=\"GET\",code=\"401\"}",
            )
            .then_some(())
    })
    .await;
    std::fs::write(&west_token, good_token).unwrap();

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
    until("the stale mirror removed at start", || async {
        get_svc(&east, "west-shop-73736d-gone")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(get_svc(&east, "not-ours").await.is_some());
    // The squatter: its create fails, the pass is retried (the seed's workqueue retries);
    // once it is gone, a retry or the delete's event writes the mirror.
    until("a failed pass retried", || async {
        let text = replica.metrics_text();
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("ghostwire_mirror_queue_retries_total "))?
            .parse()
            .ok()?;
        (n > 0).then_some(())
    })
    .await;
    Api::<Service>::namespaced(east.clone(), NS)
        .delete("west-shop-73736d-blocked", &DeleteParams::default())
        .await
        .unwrap();
    until("the squatted mirror written", || async {
        let s = get_svc(&east, "west-shop-73736d-blocked").await?;
        (s.metadata.labels?.get("mirrored-svc").map(String::as_str) == Some("true")).then_some(())
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
    set_port(&west, "orders", 90).await;
    let moved = until("port change mirrored", || async {
        let s = get_svc(&east, "west-shop-73736d-orders").await?;
        (s.spec.as_ref()?.ports.as_ref()?[0].port == 90).then_some(s)
    })
    .await;
    assert_eq!(cluster_ip(&moved), ip, "updated in place, ClusterIP kept");
    set_port(&west, "orders", 80).await;

    // Headless flip: the global "flip" is a ClusterIP while the local source chooses; when
    // the local source goes, central's headless definition wins and the global is recreated
    // headless (clusterIP is immutable).
    let flip = until("global flip", || async {
        get_svc(&east, "gl-shop-73736d-flip").await
    })
    .await;
    assert_ne!(cluster_ip(&flip), "None");
    Api::<Service>::namespaced(east.clone(), "shop")
        .delete("flip", &DeleteParams::default())
        .await
        .unwrap();
    until("global flip recreated headless", || async {
        let s = get_svc(&east, "gl-shop-73736d-flip").await?;
        (cluster_ip(&s) == "None").then_some(())
    })
    .await;
    assert!(
        replica
            .metrics_text()
            .contains("ghostwire_mirror_writes_total{verb=\"recreate\",kind=\"Service\"}"),
        "{}",
        replica.metrics_text()
    );

    // West's CA URL now serves another CA (central's): refused, the pinned one stays in use.
    access
        .ca("west")
        .serve(mc.cluster("central").unwrap().api().ca_pem());
    until("the swapped CA refused", || async {
        replica
            .metrics_text()
            .contains("ghostwire_mirror_ca_refused_total{cluster=\"west\"}")
            .then_some(())
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
    // The lab's API says v1.33: trafficDistribution, not the older annotations.
    assert_eq!(
        gl.spec.as_ref().unwrap().traffic_distribution.as_deref(),
        Some("PreferClose")
    );
    assert!(!ann.contains_key("service.kubernetes.io/topology-mode"));
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
    // The CoreDNS blocks `ghostwire mirror coredns-config` prints for this config, put in the
    // local cluster's `coredns` ConfigMap as an operator would: the lab DNS takes its rewrite
    // rules from there, so a Pod resolves the remote and global names to the mirrors.
    let config_file = access.dir.join("mirror.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let out = std::process::Command::new(common::ghostwire_bin())
        .args(["mirror", "coredns-config", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let corefile = String::from_utf8(out.stdout).unwrap();
    let coredns: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "coredns"}, "data": {"Corefile": corefile}}),
    )
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(east.clone(), "kube-system")
        .create(&Default::default(), &coredns)
        .await
        .unwrap();
    let east_cluster = mc.cluster("east").unwrap();
    for (name, want) in [
        ("orders.shop.svc.cluster.west", ip.clone()),
        ("orders.shop.svc.cluster.global", cluster_ip(&gl)),
    ] {
        // `getent ahostsv4` in the Pod (its resolv.conf → kube-dns): `IP STREAM NAME` first.
        let got = until(name, || async {
            let (ok, out, _) = kubectl(
                east_cluster,
                &[
                    "exec", "-n", "shop", "client", "--", "getent", "ahostsv4", name,
                ],
            )
            .await;
            ok.then_some(out)
        })
        .await;
        let first: Vec<&str> = got.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(first, [want.as_str(), "STREAM", name], "{got}");
    }

    // Conflict (central's port) and the long name: events and metrics.
    let events = until("events", || async {
        let evs = Api::<Event>::namespaced(east.clone(), NS)
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
    let text = replica.metrics_text();
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

    let text = replica.metrics_text();
    for want in [
        "ghostwire_mirror_api_request_duration_seconds_count{cluster=\"central\",verb=\"WATCH\"}",
        "ghostwire_mirror_api_requests_total{cluster=\"east\",verb=\"POST\",code=\"201\"}",
        "ghostwire_mirror_queue_adds_total",
        "ghostwire_mirror_queue_latency_seconds_count",
        "ghostwire_mirror_watched_objects{cluster=\"west\",kind=\"Service\"}",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    replica.stop().await;
    drop(access);
    mc.shutdown(Duration::from_secs(2)).await;
}
