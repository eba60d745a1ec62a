//! `ghostwire demo mirror`: two lab clusters (east local, west remote) with routed pod networks;
//! an `orders` Service in west is mirrored into east's `mirror` namespace by the service mirror
//! (run in-process through its library), and a Pod in east reaches west's Pod through the
//! mirrored ClusterIP. Exit 0 only if it does.

use super::DemoArgs;
use crate::exit::{Code, Exit, WithCode};
use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Api;
use lab_node::{MultiCluster, MultiOptions, scenario};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

pub async fn run(args: &DemoArgs) -> Result<(), Exit> {
    let exe = std::env::current_exe().context("cannot find the ghostwire binary")?;
    println!("ghostwire demo mirror: starting two lab clusters, east (local) and west (remote)…");
    let mut opts = MultiOptions::new("demo-mirror", &["east", "west"], exe).code(Code::Config)?;
    opts.backoff_initial = Duration::from_secs(1);
    let mc = MultiCluster::start(opts)
        .await
        .context("starting the lab clusters (needs root, iproute2 and nftables)")
        .code(Code::Config)?;
    let east = mc
        .cluster("east")
        .expect("started")
        .client()
        .await
        .code(Code::Api)?;
    let west = mc
        .cluster("west")
        .expect("started")
        .client()
        .await
        .code(Code::Api)?;
    for (c, ns) in [(&east, "shop"), (&east, "mirror"), (&west, "shop")] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(c.clone())
            .create(&Default::default(), &obj)
            .await
            .code(Code::Api)?;
    }
    scenario::apply(&west, "shop", &scenario::echo_pod("orders", Some("west")))
        .await
        .code(Code::Api)?;
    let mut svc = scenario::service("orders", false);
    svc["metadata"]["labels"] = json!({"mirror": "true", "global": "true"});
    scenario::apply(&west, "shop", &svc).await.code(Code::Api)?;
    scenario::apply(
        &east,
        "shop",
        &scenario::client_pod("client", "active", None, &[]),
    )
    .await
    .code(Code::Api)?;
    scenario::wait_ready(&west, "shop", &["orders"], WAIT)
        .await
        .code(Code::Api)?;
    scenario::wait_ready(&east, "shop", &["client"], WAIT)
        .await
        .code(Code::Api)?;
    println!(
        "west: Service shop/orders (labelled mirror=true) → echo Pod answering \"orders west\""
    );

    let config = json!({
        "global": {"globalSvcLabelSelector": "global=true", "globalSvcRoutingStrategyLabel": "routing=local-first",
                   "mirrorSvcLabelSelector": "mirror=true", "mirrorNamespace": "mirror", "serviceSync": true},
        "localCluster": {"name": "east", "zones": ["east"]},
        "remoteClusters": [{"name": "west", "kubeConfigPath": mc.cluster("west").expect("started").kubeconfig_path(),
                            "servicePrefix": "west"}]
    });
    let settings =
        mirror::config::Settings::from_file(serde_json::from_value(config)?, &Default::default())
            .code(Code::Config)?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(mirror::metrics::Metrics::new(&mut registry));
    let health = Arc::new(mirror::run::MirrorHealth::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let runner = tokio::spawn(mirror::run::run(
        settings,
        mirror::run::RunOptions {
            local: east.clone(),
            remotes: vec![west.clone()],
            failover_grace: Duration::from_secs(10),
            probe_interval: Duration::from_secs(1),
            lease: None,
            resync: Duration::from_secs(30),
        },
        metrics,
        health,
        async move {
            let _ = stopped.await;
        },
    ));
    let mirrors: Api<Service> = Api::namespaced(east.clone(), "mirror");
    let name = "west-shop-73736d-orders";
    let ip = loop {
        if let Some(ip) = mirrors
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.spec?.cluster_ip)
        {
            break ip;
        }
        if started.elapsed() > WAIT {
            return Err(anyhow!("the mirror {name} never appeared in east")).code(Code::Failure);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "east: mirror/{name} ClusterIP {ip} after {:?}",
        started.elapsed()
    );
    let node = mc.cluster("east").expect("started").node();
    let addr = std::net::SocketAddr::new(ip.parse().context("mirrored ClusterIP")?, 80);
    node.wait_for_rules("the mirrored ClusterIP", WAIT, |r| {
        r.iter()
            .any(|p| p.ip == addr.ip() && !p.endpoints.is_empty())
    })
    .await
    .code(Code::Failure)?;
    let pod = node.pod_netns("shop", "client").context("client pod")?;
    let reply = tokio::task::spawn_blocking(move || pod.tcp_request(addr))
        .await
        .context("client")?
        .code(Code::Failure)?;
    println!("east: shop/client → {addr} (mirrored) → {reply:?}");
    if args.hold {
        println!(
            "holding: export KUBECONFIG={} ; kubectl --context east -n mirror get svc,endpointslices ; Ctrl-C ends",
            mc.kubeconfig_path().display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    let _ = runner.await;
    mc.shutdown(Duration::from_secs(2)).await;
    if reply == "orders west" {
        println!("✓ a Pod in east reached west's Pod through the mirrored ClusterIP");
        Ok(())
    } else {
        Err(anyhow!("expected \"orders west\", got {reply:?}")).code(Code::Failure)
    }
}
