//! Gateway API routes in the lab API: the CRDs from deploy/, HTTPRoutes and GRPCRoutes attached
//! to a Service become its entries' routes, their status.parents are written through the status
//! subresource, and per-proxy views keep one namespace's changes from the others' proxies.

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lab_api::{Options, Server};
use mesh_controller::auth::TokenReviewer;
use mesh_controller::gateway::{CONTROLLER_NAME, GRPCRoute, HTTPRoute};
use mesh_controller::metrics::Metrics;
use mesh_controller::model::Model;
use mesh_controller::server::Controller;
use serde_json::json;
use std::sync::Arc;

mod common;

use common::{AUDIENCE, Recorder, pod_token_in, start, until};

async fn service(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    ep: &str,
    annotations: serde_json::Value,
) {
    let svcs: Api<Service> = Api::namespaced(admin.clone(), ns);
    let s = serde_json::from_value(
        json!({"metadata": {"name": name, "annotations": annotations},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .unwrap();
    svcs.create(&PostParams::default(), &s).await.unwrap();
    slice(admin, ns, name, &[ep]).await;
}

/// Creates or replaces Service `name`'s one EndpointSlice.
async fn slice(admin: &kube::Client, ns: &str, name: &str, eps: &[&str]) {
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), ns);
    let s: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": format!("{name}-x"),
        "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": eps.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()}))
    .unwrap();
    slices
        .patch(
            &format!("{name}-x"),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&s),
        )
        .await
        .unwrap();
}

fn split(model: &Model, entry: &str) -> Option<Vec<(String, u32)>> {
    let st = model.load();
    let r = st.services.get(entry)?.routes.first()?.clone();
    Some(r.split.into_iter().map(|s| (s.backend, s.weight)).collect())
}

/// (type, status, reason) of our conditions on the route's first parent.
fn conditions(r: &HTTPRoute) -> Vec<(String, String, String)> {
    r.status
        .iter()
        .flat_map(|s| &s.parents)
        .filter(|p| p.controller_name == CONTROLLER_NAME)
        .flat_map(|p| &p.conditions)
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

async fn wait_status(api: &Api<HTTPRoute>, name: &str, want: &[(&str, &str, &str)]) {
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    let mut last = vec![];
    for _ in 0..1200 {
        last = conditions(&api.get(name).await.unwrap());
        if last == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("route {name}: conditions {last:?}, want {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_routes_become_routes_with_status_and_weight_changes_follow() {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    mesh_controller::gateway::install_crds(&admin)
        .await
        .unwrap();
    service(&admin, "default", "web", "10.244.0.5", json!({})).await;
    service(&admin, "default", "web-v2", "10.244.0.6", json!({})).await;
    let routes: Api<HTTPRoute> = Api::namespaced(admin.clone(), "default");
    let route: HTTPRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "canary"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 90},
                                            {"name": "web-v2", "port": 80, "weight": 10}],
                            "timeouts": {"request": "3s"},
                            "retry": {"attempts": 2, "codes": [503]}}]}}))
    .unwrap();
    routes.create(&PostParams::default(), &route).await.unwrap();

    let model = Model::default();
    let metrics = Metrics::default();
    let task = tokio::spawn(mesh_controller::watch::run_with_metrics(
        admin.clone(),
        model.clone(),
        "cluster.local".into(),
        metrics.clone(),
    ));
    let want = |a: u32, b: u32| {
        Some(vec![
            ("web:80".to_string(), a),
            ("web-v2:80".to_string(), b),
        ])
    };
    until("the route's split", || {
        split(&model, "web.default:80") == want(90, 10)
    })
    .await;
    let st = model.load();
    let e = &st.services["web.default:80"];
    assert_eq!(e.routes[0].timeout_ms, 3000);
    assert_eq!(e.routes[0].retry.as_ref().unwrap().statuses, [503]);
    assert_eq!(e.backends[2].endpoints, ["10.244.0.6:8080"]);
    // The backend Service's own entry has no routes.
    assert!(st.services["web-v2.default:80"].routes.is_empty());
    wait_status(
        &routes,
        "canary",
        &[
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ],
    )
    .await;
    let gen1 = routes.get("canary").await.unwrap().metadata.generation;
    let observed = routes.get("canary").await.unwrap().status.unwrap().parents[0].conditions[0]
        .observed_generation;
    assert_eq!(observed, gen1);

    // The weight changes: a new version with the new split.
    let before = model.load().version;
    routes
        .patch(
            "canary",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 50},
                {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 50}]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    until("the new split", || {
        split(&model, "web.default:80") == want(50, 50)
    })
    .await;
    assert!(model.load().version > before);

    // A backend Service's endpoints move: the parent's route backend follows.
    slice(&admin, "default", "web-v2", &["10.244.0.7"]).await;
    until("the moved backend", || {
        model.load().services["web.default:80"].backends[2].endpoints == ["10.244.0.7:8080"]
    })
    .await;

    // A backendRef to a Service that does not exist: ResolvedRefs False, BackendNotFound.
    routes
        .patch(
            "canary",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/rules/0/backendRefs/1/name", "value": "web-v3"}]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    wait_status(
        &routes,
        "canary",
        &[
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "False", "BackendNotFound"),
        ],
    )
    .await;
    // ... and it appears: resolved.
    service(&admin, "default", "web-v3", "10.244.0.8", json!({})).await;
    wait_status(
        &routes,
        "canary",
        &[
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ],
    )
    .await;

    // An exact path match is not supported: refused with the field, nothing applied.
    routes
        .patch(
            "canary",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                "backendRefs": [{"name": "web-v2", "port": 80}]}]}}),
            ),
        )
        .await
        .unwrap();
    wait_status(
        &routes,
        "canary",
        &[
            ("Accepted", "False", "UnsupportedValue"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ],
    )
    .await;
    let msg = routes.get("canary").await.unwrap().status.unwrap().parents[0].conditions[0]
        .message
        .clone();
    assert!(
        msg.contains("spec.rules[0].matches[0].path.type=\"Exact\""),
        "{msg}"
    );
    until("the refused route's removal", || {
        split(&model, "web.default:80").is_none()
    })
    .await;

    // A GRPCRoute on web-v2.
    let grpc: Api<GRPCRoute> = Api::namespaced(admin.clone(), "default");
    let g: GRPCRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "echo"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web-v2"}],
                 "rules": [{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                            "backendRefs": [{"name": "web", "port": 80}]}]}}))
    .unwrap();
    grpc.create(&PostParams::default(), &g).await.unwrap();
    until("the gRPC route", || {
        model.load().services["web-v2.default:80"]
            .routes
            .first()
            .is_some_and(|r| r.r#match.as_ref().unwrap().path_prefix == "/pkg.Echo/Say")
    })
    .await;
    for _ in 0..1200 {
        let s = grpc.get("echo").await.unwrap().status;
        if s.is_some_and(|s| {
            s.parents.iter().any(|p| {
                p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            })
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(grpc.get("echo").await.unwrap().status.is_some());

    // Deleting the route and the parent: entries without routes, then gone.
    grpc.delete("echo", &DeleteParams::default()).await.unwrap();
    until("the gRPC route's removal", || {
        model.load().services["web-v2.default:80"].routes.is_empty()
    })
    .await;
    assert!(
        metrics
            .route_status
            .get_or_create(&vec![("result", "written".into())])
            .get()
            >= 4
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_gets_its_own_view_and_nothing_from_other_namespaces_changes() {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let nss: Api<Namespace> = Api::all(admin.clone());
    for ns in ["ns-a", "ns-b"] {
        let n = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        nss.create(&PostParams::default(), &n).await.unwrap();
    }
    // a and b: only for their own namespace; shared: for everyone.
    service(
        &admin,
        "ns-a",
        "a",
        "10.244.1.5",
        json!({"ghostwire.dev/export-to": "."}),
    )
    .await;
    service(
        &admin,
        "ns-b",
        "b",
        "10.244.2.5",
        json!({"ghostwire.dev/export-to": "."}),
    )
    .await;
    service(&admin, "default", "shared", "10.244.3.5", json!({})).await;

    let model = Model::default();
    let task = tokio::spawn(mesh_controller::watch::run(
        admin.clone(),
        model.clone(),
        "cluster.local".into(),
    ));
    until("the first publication", || {
        let m = model.load();
        ["a.ns-a:80", "b.ns-b:80", "shared.default:80"]
            .iter()
            .all(|k| m.services.contains_key(*k))
    })
    .await;
    let metrics = Metrics::default();
    let auth = Arc::new(TokenReviewer::new(admin.clone(), AUDIENCE));
    let controller = Controller::new(model.clone(), auth, metrics.clone());
    let running = start(controller, "127.0.0.1:0".parse().unwrap()).await;
    let (ta, _) = pod_token_in(&admin, "ns-a", "pa", "default", &[AUDIENCE]).await;
    let (tb, _) = pod_token_in(&admin, "ns-b", "pb", "default", &[AUDIENCE]).await;
    let pa = Recorder::subscribe(running.addr, &ta).await;
    let pb = Recorder::subscribe(running.addr, &tb).await;
    until("both snapshots", || {
        !pa.get().is_empty() && !pb.get().is_empty()
    })
    .await;
    let names = |u: &mesh_api::v1::ConfigUpdate| -> Vec<String> {
        u.services
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| !n.starts_with("kubernetes."))
            .collect()
    };
    assert_eq!(names(&pa.get()[0]), ["a.ns-a:80", "shared.default:80"]);
    assert_eq!(names(&pb.get()[0]), ["b.ns-b:80", "shared.default:80"]);

    // A change in ns-a reaches A only ...
    slice(&admin, "ns-a", "a", &["10.244.1.5", "10.244.1.6"]).await;
    until("A's delta", || pa.get().len() == 2).await;
    assert_eq!(names(&pa.get()[1]), ["a.ns-a:80"]);
    // ... then a change everyone sees reaches both: B's next update is that one, so it was
    // never sent anything for ns-a's change.
    slice(&admin, "default", "shared", &["10.244.3.6"]).await;
    until("A's second delta", || pa.get().len() == 3).await;
    until("B's delta", || pb.get().len() == 2).await;
    let b = pb.get();
    assert_eq!(names(&b[1]), ["shared.default:80"]);
    assert!(
        b.iter()
            .all(|u| u.services.iter().all(|s| !s.name.contains("ns-a")))
    );
    // The views were updated incrementally (one version at a time, entries it changed only).
    assert!(
        metrics
            .recomputes
            .get_or_create(&vec![("how", "incremental".into())])
            .get()
            >= 3
    );

    // a is opened to ns-b: B gets it (and A nothing new for it).
    Api::<Service>::namespaced(admin.clone(), "ns-a")
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ghostwire.dev/export-to": "ns-b"}}}),
            ),
        )
        .await
        .unwrap();
    until("B's view of a", || pb.get().len() == 3).await;
    assert_eq!(names(&pb.get()[2]), ["a.ns-a:80"]);
    assert_eq!(pa.get().len(), 3);
    drop((pa, pb));
    running.stop().await;
    task.abort();
}
