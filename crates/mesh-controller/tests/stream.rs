//! The config stream end to end: a controller served on loopback, the lab API reviewing the
//! proxies' real Pod-bound tokens, and the proxy's own ConfigSource feeding a real Store.

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use lab_api::{Options, Server};
use mesh_api::v1;
use mesh_controller::auth::TokenReviewer;
use mesh_controller::feed::ControllerSource;
use mesh_controller::metrics::Metrics;
use mesh_controller::model::Model;
use mesh_controller::server::Controller;
use mesh_proxy::store::{ConfigSource, Store};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{AUDIENCE, pod_token, start, until};

fn service(weight_v2: u32, split_to: &str) -> v1::Service {
    v1::Service {
        name: "app-b.app-b".into(),
        addresses: vec!["10.96.0.11:80".into()],
        backends: vec![
            v1::Backend {
                name: "v1".into(),
                endpoints: vec!["10.244.0.5:8080".into()],
                weight: 100 - weight_v2,
                ..Default::default()
            },
            v1::Backend {
                name: "v2".into(),
                endpoints: vec!["10.244.0.6:8080".into()],
                weight: weight_v2,
                ..Default::default()
            },
        ],
        routes: vec![v1::Route {
            name: "canary".into(),
            r#match: Some(v1::RouteMatch {
                headers: [("x-canary".to_string(), "true".to_string())].into(),
                ..Default::default()
            }),
            split: vec![v1::Split {
                backend: split_to.into(),
                weight: 1,
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn v2_weight(store: &Store) -> Option<u32> {
    let snap = store.load();
    let s = snap.service("10.96.0.11:80".parse().unwrap())?;
    Some(s.default_split[1].1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_deltas_acks_nacks_and_resync() {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let (token, uid) = pod_token(&admin, "client-1", &[AUDIENCE]).await;
    let dir = std::env::temp_dir().join(format!("gw-meshctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_path = dir.join("token");
    std::fs::write(&token_path, &token).unwrap();

    let model = Model::default();
    model.replace([service(10, "v2")]);
    let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
    let metrics = Metrics::new(&mut registry);
    let auth = Arc::new(TokenReviewer::new(admin.clone(), AUDIENCE));
    let controller =
        Controller::new(model.clone(), auth, metrics.clone()).with_events(admin.clone());
    let running = start(controller.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = running.addr;

    let store = Store::default();
    let source = ControllerSource::new(vec![format!("http://{addr}")], token_path.clone());
    let applied = source.applied.clone();
    let feed = tokio::spawn(Box::new(source).run(store.clone(), Box::new(|_| {})));

    // The snapshot arrives; the controller knows the Pod from the review, not from the proxy.
    until("the snapshot", || v2_weight(&store) == Some(10)).await;
    until("the ack", || {
        controller
            .subscribers()
            .first()
            .is_some_and(|s| s.acked == 1)
    })
    .await;
    let sub = &controller.subscribers()[0];
    assert_eq!(sub.caller.pod(), "default/client-1");
    assert_eq!(sub.caller.pod_uid, uid);
    assert_eq!(sub.caller.service_account, "default");

    // A weight change arrives as a delta with the next version.
    assert_eq!(model.replace([service(30, "v2")]), 2);
    until("the delta", || v2_weight(&store) == Some(30)).await;
    until("ack of 2", || controller.subscribers()[0].acked == 2).await;
    assert_eq!(applied.load(std::sync::atomic::Ordering::Relaxed), 2);

    // A version the proxy refuses (a route to a backend that does not exist) is NACKed and
    // counted; the proxy keeps version 2.
    assert_eq!(model.replace([service(50, "v9")]), 3);
    until("the nack", || controller.subscribers()[0].nacked.is_some()).await;
    let (v, why) = controller.subscribers()[0].nacked.clone().unwrap();
    assert_eq!(v, 3);
    assert!(why.contains("v9"), "{why}");
    assert_eq!(metrics.nacks.get(), 1);
    assert_eq!(v2_weight(&store), Some(30));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("ghostwire_controller_nacks_total 1"),
        "{text}"
    );
    // ... and shown on the Pod as a Warning Event naming the version and the reason.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "default");
    let mut refused = None;
    for _ in 0..1200 {
        let list = events.list(&Default::default()).await.unwrap();
        refused = list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("ConfigRefused")
                && e.involved_object.name.as_deref() == Some("client-1")
        });
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused = refused.expect("a ConfigRefused Event on the Pod");
    assert_eq!(refused.type_.as_deref(), Some("Warning"));
    assert_eq!(refused.involved_object.uid.as_deref(), Some(uid.as_str()));
    let message = refused.message.unwrap_or_default();
    assert!(
        message.contains("version 3") && message.contains("v9"),
        "{message}"
    );

    // The controller goes away: the proxy keeps routing with its last good config.
    running.stop().await;
    assert_eq!(model.replace([service(70, "v2")]), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(v2_weight(&store), Some(30));
    // It comes back (same address): the proxy resyncs from a fresh snapshot.
    let again = start(controller.clone(), addr).await;
    until("the resync", || v2_weight(&store) == Some(70)).await;
    until("ack of 4", || {
        controller
            .subscribers()
            .first()
            .is_some_and(|s| s.acked == 4)
    })
    .await;
    assert!(
        metrics
            .updates
            .get_or_create(&vec![("kind", "snapshot".into())])
            .get()
            >= 2
    );

    feed.abort();
    again.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tokens_of_another_audience_or_a_deleted_pod_get_nothing() {
    use mesh_api::v1::mesh_control_client::MeshControlClient;
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let model = Model::default();
    model.replace([service(10, "v2")]);
    let metrics = Metrics::default();
    let auth = Arc::new(TokenReviewer::new(admin.clone(), AUDIENCE));
    let controller = Controller::new(model, auth, metrics.clone());
    let running = start(controller.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = running.addr;

    let subscribe = |token: String| async move {
        let mut client = MeshControlClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let first = v1::ProxyMessage {
            kind: Some(v1::proxy_message::Kind::Subscribe(v1::Subscribe::default())),
        };
        let mut req =
            tonic::Request::new(futures::stream::iter([first]).chain(futures::stream::pending()));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client.stream_config(req).await.map(|r| r.into_inner())
    };
    use futures::StreamExt;

    let (wrong_audience, _) = pod_token(&admin, "p-1", &["vault"]).await;
    let e = subscribe(wrong_audience).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // A token that is not bound to a Pod names no Pod: refused.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let tr = serde_json::from_value(json!({"spec": {"audiences": [AUDIENCE]}})).unwrap();
    let unbound = sas
        .create_token_request("default", &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let e = subscribe(unbound).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("not bound to a Pod"), "{e:?}");

    // A good token works; once its Pod is deleted it does not.
    let (good, _) = pod_token(&admin, "p-2", &[AUDIENCE]).await;
    let mut s = subscribe(good.clone()).await.unwrap();
    let first = s.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    assert_eq!(first.pod, "default/p-2");
    assert_eq!(first.services.len(), 1);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pods.delete("p-2", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let e = subscribe(good).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // No token at all.
    let mut client = MeshControlClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let e = client
        .stream_config(futures::stream::empty::<v1::ProxyMessage>())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let reasons: u64 = ["refused", "not_pod_bound", "missing"]
        .iter()
        .map(|r| {
            metrics
                .auth_failures
                .get_or_create(&vec![("reason", r.to_string())])
                .get()
        })
        .sum();
    assert_eq!(reasons, 4);
    drop(s);
    running.stop().await;
}
