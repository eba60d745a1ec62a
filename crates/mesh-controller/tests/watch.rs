//! The model follows the lab API's Services and EndpointSlices, one Service at a time.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lab_api::{Options, Server};
use mesh_controller::model::Model;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn slice(svc: &str, addrs: &[&str]) -> EndpointSlice {
    serde_json::from_value(json!({"metadata": {"name": format!("{svc}-abc"),
        "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_become_entries_recomputed_one_service_at_a_time() {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(admin.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    for name in ["app-a", "app-b"] {
        let s = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .unwrap();
        svcs.create(&PostParams::default(), &s).await.unwrap();
    }
    slices
        .create(&PostParams::default(), &slice("app-a", &["10.244.0.4"]))
        .await
        .unwrap();
    slices
        .create(&PostParams::default(), &slice("app-b", &["10.244.0.5"]))
        .await
        .unwrap();

    let model = Model::default();
    let task = tokio::spawn(mesh_controller::watch::run(
        admin.clone(),
        model.clone(),
        "cluster.local".into(),
    ));
    until("the first publication", || {
        model.load().services.contains_key("app-b.default:80")
    })
    .await;
    let first = model.load();
    let b = &first.services["app-b.default:80"];
    assert_eq!(b.backends[0].endpoints, ["10.244.0.5:8080"]);
    let ip = svcs
        .get("app-b")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    assert_eq!(b.addresses, [format!("{ip}:80")]);

    // One endpoint more for app-b: a new version where app-a's entry is the very same object.
    slices
        .replace("app-b-abc", &PostParams::default(), &{
            let mut s = slices.get("app-b-abc").await.unwrap();
            s.endpoints = slice("app-b", &["10.244.0.5", "10.244.0.6"]).endpoints;
            s
        })
        .await
        .unwrap();
    until("the new endpoint", || {
        model.load().services["app-b.default:80"].backends[0]
            .endpoints
            .len()
            == 2
    })
    .await;
    let second = model.load();
    assert!(second.version > first.version);
    assert!(Arc::ptr_eq(
        &first.services["app-a.default:80"],
        &second.services["app-a.default:80"]
    ));

    // A port change renames the entry; deleting the Service removes it.
    svcs.patch(
        "app-b",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"ports": [{"name": "http", "port": 8000, "targetPort": 8080}]}}),
        ),
    )
    .await
    .unwrap();
    until("the renamed entry", || {
        let m = model.load();
        m.services.contains_key("app-b.default:8000")
            && !m.services.contains_key("app-b.default:80")
    })
    .await;
    svcs.delete("app-b", &DeleteParams::default())
        .await
        .unwrap();
    until("the removal", || {
        !model
            .load()
            .services
            .keys()
            .any(|k| k.starts_with("app-b."))
    })
    .await;
    assert!(model.load().services.contains_key("app-a.default:80"));
    task.abort();
}
