//! Opt-in and settings through the owner chain and the defaults ConfigMap, against the lab API.

mod common;

use common::{Harness, apply, pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

async fn create(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    plural: &str,
    obj: Value,
) -> Value {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut obj = obj;
    obj["apiVersion"] = api_version.into();
    obj["kind"] = kind.into();
    let made = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("creating {kind}: {e}"));
    serde_json::to_value(made).unwrap()
}

fn owner_ref(obj: &Value) -> Value {
    json!([{
        "apiVersion": obj["apiVersion"], "kind": obj["kind"],
        "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    }])
}

fn template() -> Value {
    json!({"metadata": {"labels": {"app": "orders"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}})
}

fn workload_spec() -> Value {
    json!({"replicas": 1, "selector": {"matchLabels": {"app": "orders"}}, "template": template()})
}

async fn namespace(client: &kube::Client, name: &str) {
    create(
        client,
        "v1",
        "Namespace",
        "namespaces",
        json!({"metadata": {"name": name}}),
    )
    .await;
}

/// A Pod owned by `owner` (its ownerReferences), with `annotations`.
fn owned_pod(name: &str, owner: &Value, annotations: Value) -> Value {
    let mut p = pod(name, annotations);
    p["metadata"]["ownerReferences"] = owner_ref(owner);
    p
}

fn env_of(pod: &k8s_openapi::api::core::v1::Pod, var: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "ghostwire-watcher")?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == var)?
        .value
        .clone()
}

#[tokio::test]
async fn deployment_statefulset_and_rollout_opt_in() {
    let h = Harness::start("owners").await;
    let c = &h.client;
    namespace(c, "shop").await;
    let ann = json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/jumpHook": "PREROUTING", "ghostwire.dev/pollInterval": "7s"});

    // Pod → ReplicaSet → Deployment.
    let deploy = create(c, "apps/v1", "Deployment", "deployments", json!({
        "metadata": {"name": "orders", "namespace": "shop", "annotations": ann}, "spec": workload_spec()})).await;
    let rs = create(c, "apps/v1", "ReplicaSet", "replicasets", json!({
        "metadata": {"name": "orders-5d4f", "namespace": "shop", "ownerReferences": owner_ref(&deploy),
                     "annotations": {"ghostwire.dev/pollInterval": "3s"}},
        "spec": workload_spec()})).await;
    // The Pod's own annotation wins over the ReplicaSet's, which wins over the Deployment's.
    let input = owned_pod(
        "orders-5d4f-x",
        &rs,
        json!({"ghostwire.dev/jumpHook": "OUTPUT"}),
    );
    let resp = h.admit(input.clone()).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let (_, p) = apply(&input, &resp);
    assert_eq!(env_of(&p, "GW_JUMP_HOOK").as_deref(), Some("OUTPUT"));
    assert_eq!(env_of(&p, "GW_POLL_INTERVAL").as_deref(), Some("3s"));

    // The Pod can opt out of what its Deployment asks for.
    let resp = h
        .admit(owned_pod(
            "orders-5d4f-y",
            &rs,
            json!({"ghostwire.dev/enabled": "false"}),
        ))
        .await;
    assert!(resp.get("patch").is_none(), "{resp}");

    // Pod → StatefulSet.
    let mut sts_spec = workload_spec();
    sts_spec["serviceName"] = "db".into();
    let sts = create(c, "apps/v1", "StatefulSet", "statefulsets", json!({
        "metadata": {"name": "db", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "true"}}, "spec": sts_spec})).await;
    let resp = h.admit(owned_pod("db-0", &sts, json!({}))).await;
    assert!(resp["patch"].is_string(), "{resp}");

    // Pod → ReplicaSet → Argo Rollout (a CRD).
    create(c, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", json!({
        "metadata": {"name": "rollouts.argoproj.io"},
        "spec": {"group": "argoproj.io", "scope": "Namespaced",
                 "names": {"plural": "rollouts", "singular": "rollout", "kind": "Rollout", "listKind": "RolloutList"},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})).await;
    let rollout = create(c, "argoproj.io/v1alpha1", "Rollout", "rollouts", json!({
        "metadata": {"name": "checkout", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "true", "ghostwire.dev/roleLabelKey": "rollouts-pod-template-hash"}},
        "spec": workload_spec()})).await;
    let rs2 = create(c, "apps/v1", "ReplicaSet", "replicasets", json!({
        "metadata": {"name": "checkout-77f", "namespace": "shop", "ownerReferences": owner_ref(&rollout)},
        "spec": workload_spec()})).await;
    let input = owned_pod("checkout-77f-z", &rs2, json!({}));
    let resp = h.admit(input.clone()).await;
    let (_, p) = apply(&input, &resp);
    assert_eq!(
        env_of(&p, "GW_ROLE_LABEL_KEY").as_deref(),
        Some("rollouts-pod-template-hash")
    );

    // A bad value on the Deployment is denied, naming the annotation and the value.
    let bad = create(c, "apps/v1", "Deployment", "deployments", json!({
        "metadata": {"name": "bad", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "true", "ghostwire.dev/refreshInterval": "soon"}},
        "spec": workload_spec()})).await;
    let bad_rs = create(c, "apps/v1", "ReplicaSet", "replicasets", json!({
        "metadata": {"name": "bad-1", "namespace": "shop", "ownerReferences": owner_ref(&bad)}, "spec": workload_spec()})).await;
    let resp = h.admit(owned_pod("bad-1-a", &bad_rs, json!({}))).await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("ghostwire.dev/refreshInterval") && msg.contains("\"soon\""),
        "{msg}"
    );

    // An owner that is gone (or not yet visible) contributes nothing; the Pod is not refused.
    let mut ghost = rs.clone();
    ghost["metadata"]["name"] = "gone".into();
    let resp = h.admit(owned_pod("orphan", &ghost, json!({}))).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

#[tokio::test]
async fn defaults_configmap_sits_below_annotations() {
    let h = Harness::start("defaults").await;
    let c = &h.client;
    namespace(c, "ghostwire-system").await;
    create(c, "v1", "ConfigMap", "configmaps", json!({
        "metadata": {"name": "ghostwire-defaults", "namespace": "ghostwire-system"},
        "data": {"GW_NAT_CHAIN": "TEAM_DNAT", "GW_JUMP_HOOK": "PREROUTING", "GW_API_TIMEOUT": "5s", "GW_HTTP_ADDR": "0.0.0.0:9999"}})).await;
    let input = pod(
        "d",
        json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/jumpHook": "OUTPUT"}),
    );
    let resp = h.admit(input.clone()).await;
    let (_, p) = apply(&input, &resp);
    assert_eq!(env_of(&p, "GW_NAT_CHAIN").as_deref(), Some("TEAM_DNAT"));
    assert_eq!(env_of(&p, "GW_JUMP_HOOK").as_deref(), Some("OUTPUT"));
    // Knobs without an annotation can still be defaulted cluster-wide.
    assert_eq!(env_of(&p, "GW_API_TIMEOUT").as_deref(), Some("5s"));
    // Except the watcher's address: the injector owns its port (probe, containerPort).
    let watcher = p
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == "ghostwire-watcher")
        .unwrap();
    let addrs: Vec<_> = watcher
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "GW_HTTP_ADDR")
        .collect();
    assert_eq!(addrs.len(), 1);
    assert_eq!(addrs[0].value.as_deref(), Some("[::]:8081"));

    // A bad default is denied naming the ConfigMap key, and the annotation that overrides it.
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(c.clone(), "ghostwire-system");
    api.patch(
        "ghostwire-defaults",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"GW_NAT_CHAIN": "has space"}})),
    )
    .await
    .unwrap();
    let resp = h
        .admit(pod("e", json!({"ghostwire.dev/enabled": "true"})))
        .await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("GW_NAT_CHAIN=\"has space\"") && msg.contains("ghostwire.dev/natChain"),
        "{msg}"
    );
    let resp = h
        .admit(pod(
            "f",
            json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/natChain": "MINE"}),
        ))
        .await;
    assert_eq!(resp["allowed"], true, "{resp}");
}

/// Owners are read once per TTL (a rollout's Pods share their ReplicaSet), keyed by UID: a
/// recreated owner of the same name is not taken for the Pod's.
#[tokio::test]
async fn owner_reads_are_cached_by_uid() {
    let h = Harness::start("owner-cache").await;
    let c = &h.client;
    namespace(c, "shop").await;
    let deploy = create(c, "apps/v1", "Deployment", "deployments", json!({
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "true"}},
        "spec": workload_spec()})).await;
    let rs = create(
        c,
        "apps/v1",
        "ReplicaSet",
        "replicasets",
        json!({
        "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": owner_ref(&deploy)},
        "spec": workload_spec()}),
    )
    .await;
    let pod_meta = |name: &str| -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        serde_json::from_value(owned_pod(name, &rs, json!({}))["metadata"].clone()).unwrap()
    };
    let cached = injector::owner::Owners::new(c.clone(), std::time::Duration::from_secs(600));
    let uncached = injector::owner::Owners::new(c.clone(), std::time::Duration::ZERO);
    let enabled =
        |m: &std::collections::BTreeMap<String, String>| m.get("ghostwire.dev/enabled").cloned();
    assert_eq!(
        enabled(&cached.annotations("shop", &pod_meta("a")).await.unwrap()).as_deref(),
        Some("true")
    );

    // The Deployment is recreated under the same name, without the opt-in.
    let api: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "shop",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apps", "v1", "Deployment"),
            "deployments",
        ),
    );
    api.delete("web", &Default::default()).await.unwrap();
    create(c, "apps/v1", "Deployment", "deployments", json!({
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "false"}},
        "spec": workload_spec()})).await;

    // Within the TTL the chain is served from the cache, with no API read.
    assert_eq!(
        enabled(&cached.annotations("shop", &pod_meta("b")).await.unwrap()).as_deref(),
        Some("true")
    );
    // Read afresh, the new Deployment has another UID: it is not this ReplicaSet's owner.
    assert_eq!(
        enabled(&uncached.annotations("shop", &pod_meta("c")).await.unwrap()),
        None
    );
}

/// With the API gone, owners cannot be read. The Pod's own opt-in is checked first: a Pod that
/// asks for nothing by itself is admitted unchanged with a warning (`owners_unread`), unless
/// the policy is `fail`; a Pod that opted in itself fails the review (HTTP 500: the webhook's
/// failurePolicy decides) rather than be injected without its owners' settings; and a Pod of
/// an owner read before is admitted from that last read.
#[tokio::test]
async fn unreadable_owners_block_only_pods_that_opted_in() {
    use injector::review::OwnerReadFailure;
    for policy in [OwnerReadFailure::Admit, OwnerReadFailure::Fail] {
        let h = Harness::start_with("owners-down", |c| c.owner_read_failure = policy).await;
        let c = &h.client;
        namespace(c, "shop").await;
        let deploy = create(c, "apps/v1", "Deployment", "deployments", json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "true"}},
            "spec": workload_spec()})).await;
        let rs = |name: &str, owner: Option<&Value>| {
            let mut meta = json!({"name": name, "namespace": "shop"});
            if let Some(o) = owner {
                meta["ownerReferences"] = owner_ref(o);
            }
            create(
                c,
                "apps/v1",
                "ReplicaSet",
                "replicasets",
                json!({"metadata": meta, "spec": workload_spec()}),
            )
        };
        let web = rs("web-1", Some(&deploy)).await;
        let plain = rs("plain-1", None).await;
        // Read while the API is up: the opt-in on the Deployment is seen.
        let first = h.admit(owned_pod("web-1-a", &web, json!({}))).await;
        assert!(first["patch"].is_string(), "{first}");

        let Harness {
            lab,
            injector,
            ca_pem,
            ..
        } = h;
        lab.shutdown().await;
        let post = async |pod: Value| {
            let mut https = common::Https::connect(injector.webhook_addr, &ca_pem)
                .await
                .unwrap();
            let (status, body) = https
                .post("/mutate", common::review("CREATE", pod).to_string())
                .await;
            let body: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            (status, body)
        };

        // The owner read before: its last read stands in.
        let (status, again) = post(owned_pod("web-1-b", &web, json!({}))).await;
        assert_eq!(status, 200, "{again}");
        assert!(again["response"]["patch"].is_string(), "{again}");

        // Never read, and the Pod asks for nothing by itself.
        let (status, body) = post(owned_pod("plain-1-a", &plain, json!({}))).await;
        match policy {
            OwnerReadFailure::Admit => {
                assert_eq!(status, 200, "{body}");
                let r = &body["response"];
                assert_eq!(r["allowed"], true, "{body}");
                assert!(r["patch"].is_null(), "{body}");
                let warning = r["warnings"][0].as_str().unwrap_or_default();
                assert!(
                    warning.contains("plain-1") && warning.contains("not seen"),
                    "{body}"
                );
                let (_, metrics) = common::get(injector.admin_addr, "/metrics").await;
                assert!(
                    metrics.contains(
                        "ghostwire_injector_admissions_total{result=\"owners_unread\"} 1"
                    ),
                    "{metrics}"
                );
            }
            OwnerReadFailure::Fail => {
                assert_eq!(status, 500, "{body}");
                assert!(body.to_string().contains("plain-1"), "{body}");
            }
        }

        // The Pod opted in itself: its owners' settings matter, so no guess either way.
        let (status, body) = post(owned_pod(
            "plain-1-b",
            &plain,
            json!({"ghostwire.dev/enabled": "true"}),
        ))
        .await;
        assert_eq!(status, 500, "{body}");
        assert!(body.to_string().contains("plain-1"), "{body}");
        injector.stop().await;
    }
}
