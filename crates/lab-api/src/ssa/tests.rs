//! Field ownership with several managers on the real schemas of Deployment and Service.

use super::*;
use serde_json::json;

fn defs() -> &'static serde_json::Map<String, Value> {
    crate::openapi::builtin_definitions()
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn kind(s: &Value) -> Kind<'_> {
    Kind {
        ty: Ty::new(s, defs()),
        has_status: true,
    }
}

fn writer(manager: &str, now: &str) -> Writer {
    Writer {
        manager: manager.into(),
        api_version: "apps/v1".into(),
        subresource: String::new(),
        now: now.into(),
    }
}

fn deployment(replicas: Option<i64>, containers: Value) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}
        }
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

fn fields(entries: &[Entry], manager: &str) -> Value {
    entries
        .iter()
        .find(|e| e.manager == manager)
        .map(|e| e.set.to_fields_v1())
        .unwrap_or(Value::Null)
}

fn conflicts(r: Result<(Value, Vec<Entry>), SsaError>) -> String {
    match r {
        Err(SsaError::Conflicts(c)) => SsaError::message(&c),
        Err(SsaError::Invalid(e)) => panic!("invalid: {e}"),
        Ok((v, _)) => panic!("no conflict: {v}"),
    }
}

#[test]
fn fields_v1_of_an_apply_is_what_kubernetes_writes() {
    let s = schema("io.k8s.api.apps.v1.Deployment");
    let cfg = deployment(
        Some(3),
        json!([{"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}]}]),
    );
    let (obj, entries) = apply(
        &json!({}),
        &cfg,
        kind(&s),
        &[],
        &writer("kubectl", "2026-01-01T00:00:00Z"),
        false,
    )
    .unwrap();
    assert_eq!(obj, cfg);
    // Key fields with defaults (protocol: TCP) are part of the key; only list items carry ".".
    let want = json!({
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {
            "f:replicas": {},
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                    ".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                }}}
            }
        }
    });
    assert_eq!(fields(&entries, "kubectl"), want);
    let enc = encode(&entries);
    assert_eq!(enc[0]["operation"], "Apply");
    assert_eq!(enc[0]["fieldsType"], "FieldsV1");
    assert_eq!(enc[0]["time"], "2026-01-01T00:00:00Z");
    assert_eq!(
        decode(&json!({"metadata": {"managedFields": enc}})).unwrap(),
        entries
    );
}

#[test]
fn a_controller_owning_replicas_conflicts_with_an_applier() {
    let s = schema("io.k8s.api.apps.v1.Deployment");
    let k = kind(&s);
    let app = json!([{"name": "app", "image": "nginx:1"}]);
    let (live, entries) = apply(
        &json!({}),
        &deployment(Some(3), app.clone()),
        k,
        &[],
        &writer("kubectl", "2026-01-01T00:00:00Z"),
        false,
    )
    .unwrap();
    // A controller scales through an ordinary update: it takes `replicas` from kubectl.
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(5);
    let entries = update(
        &live,
        &scaled,
        k,
        &entries,
        &writer("autoscaler", "2026-01-01T00:01:00Z"),
    )
    .unwrap();
    assert_eq!(
        fields(&entries, "autoscaler"),
        json!({"f:spec": {"f:replicas": {}}})
    );
    assert!(
        fields(&entries, "kubectl")["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    // kubectl applying its old replica count again now conflicts.
    let msg = conflicts(apply(
        &scaled,
        &deployment(Some(3), app.clone()),
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:02:00Z"),
        false,
    ));
    assert_eq!(
        msg,
        "Apply failed with 1 conflict: conflict with \"autoscaler\" using apps/v1: .spec.replicas"
    );
    // Applying the same value the controller set is no conflict: both own it.
    let (same, shared) = apply(
        &scaled,
        &deployment(Some(5), app.clone()),
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:02:00Z"),
        false,
    )
    .unwrap();
    assert_eq!(same["spec"]["replicas"], 5);
    assert!(
        fields(&shared, "kubectl")["f:spec"]
            .get("f:replicas")
            .is_some()
    );
    assert!(
        fields(&shared, "autoscaler")["f:spec"]
            .get("f:replicas")
            .is_some()
    );
    // Leaving replicas out of the configuration leaves the controller's value alone.
    let (kept, entries2) = apply(
        &scaled,
        &deployment(None, app.clone()),
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:02:00Z"),
        false,
    )
    .unwrap();
    assert_eq!(kept["spec"]["replicas"], 5);
    assert_eq!(
        fields(&entries2, "autoscaler"),
        json!({"f:spec": {"f:replicas": {}}})
    );
    // Forcing takes the field over: the controller's entry owns nothing and goes.
    let (forced, entries3) = apply(
        &scaled,
        &deployment(Some(3), app),
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:03:00Z"),
        true,
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(entries3.iter().all(|e| e.manager != "autoscaler"));
    assert!(
        fields(&entries3, "kubectl")["f:spec"]
            .get("f:replicas")
            .is_some()
    );
}

#[test]
fn list_maps_merge_by_key_across_managers() {
    let s = schema("io.k8s.api.apps.v1.Deployment");
    let k = kind(&s);
    let (live, entries) = apply(
        &json!({}),
        &deployment(
            Some(1),
            json!([{"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}]}]),
        ),
        k,
        &[],
        &writer("kubectl", "2026-01-01T00:00:00Z"),
        false,
    )
    .unwrap();
    // kube-rs adds a sidecar and a port on `app` with a configuration that names only those.
    let partial = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 9090, "name": "metrics"}]},
            {"name": "proxy", "image": "envoy:1"}
        ]}}}
    });
    let (live, entries) = apply(
        &live,
        &partial,
        k,
        &entries,
        &writer("kube-rs", "2026-01-01T00:01:00Z"),
        false,
    )
    .unwrap();
    let c = &live["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        *c,
        json!([
            {"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}, {"containerPort": 9090, "name": "metrics"}]},
            {"name": "proxy", "image": "envoy:1"}
        ]),
        "last writer wins would have dropped the app container's image and first port"
    );
    // kubectl re-applies its own configuration with a new image: kube-rs' items survive.
    let (live, entries) = apply(
        &live,
        &deployment(
            Some(1),
            json!([{"name": "app", "image": "nginx:2", "ports": [{"containerPort": 80}]}]),
        ),
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:02:00Z"),
        false,
    )
    .unwrap();
    let c = &live["spec"]["template"]["spec"]["containers"];
    assert_eq!(c[0]["image"], "nginx:2");
    assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);
    assert_eq!(c[1]["name"], "proxy");
    // kube-rs stops applying the proxy: it is removed (no one else owns it), the port stays
    // with kube-rs, and the image kube-rs never set is untouched.
    let only_port = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 9090, "name": "metrics"}]}
        ]}}}
    });
    let (live, entries) = apply(
        &live,
        &only_port,
        k,
        &entries,
        &writer("kube-rs", "2026-01-01T00:03:00Z"),
        false,
    )
    .unwrap();
    let c = live["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);
    // kubectl changing the image kube-rs does not own is fine; changing kube-rs' port name is
    // a conflict naming the path by its keys.
    let mut steal = deployment(
        Some(1),
        json!([{"name": "app", "image": "nginx:2", "ports": [{"containerPort": 80}, {"containerPort": 9090, "name": "prom"}]}]),
    );
    let msg = conflicts(apply(
        &live,
        &steal,
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:04:00Z"),
        false,
    ));
    assert_eq!(
        msg,
        "Apply failed with 1 conflict: conflict with \"kube-rs\": .spec.template.spec.containers[name=\"app\"].ports[containerPort=9090,protocol=\"TCP\"].name"
    );
    steal["spec"]["replicas"] = json!(1);
    let (_, entries) = apply(
        &live,
        &steal,
        k,
        &entries,
        &writer("kubectl", "2026-01-01T00:04:00Z"),
        true,
    )
    .unwrap();
    let port = Pe::Key(vec![
        ("containerPort".into(), "9090".into()),
        ("protocol".into(), "\"TCP\"".into()),
    ]);
    let kube_rs = entries.iter().find(|e| e.manager == "kube-rs").unwrap();
    let name_path = [
        Pe::Field("spec".into()),
        Pe::Field("template".into()),
        Pe::Field("spec".into()),
        Pe::Field("containers".into()),
        Pe::Key(vec![("name".into(), "\"app\"".into())]),
        Pe::Field("ports".into()),
        port,
        Pe::Field("name".into()),
    ];
    assert!(!kube_rs.set.contains(&name_path));
}

#[test]
fn several_conflicts_are_listed_by_manager() {
    let s = schema("io.k8s.api.core.v1.Service");
    let k = Kind {
        ty: Ty::new(&s, defs()),
        has_status: true,
    };
    let w = |m: &str| Writer {
        manager: m.into(),
        api_version: "v1".into(),
        subresource: String::new(),
        now: "2026-01-01T00:00:00Z".into(),
    };
    let svc = |sel: &str, port: i64| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"tier": sel}},
               "spec": {"selector": {"app": sel}, "ports": [{"port": 80, "targetPort": port}]}})
    };
    let (live, entries) = apply(&json!({}), &svc("a", 8080), k, &[], &w("alpha"), false).unwrap();
    let (live, entries) = apply(
        &live,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"tier": "a"}}}),
        k,
        &entries,
        &w("beta"),
        false,
    )
    .unwrap();
    let msg = conflicts(apply(
        &live,
        &svc("b", 9090),
        k,
        &entries,
        &w("gamma"),
        false,
    ));
    assert_eq!(
        msg,
        "Apply failed with 4 conflicts: conflicts with \"alpha\":\n- .metadata.labels.tier\n- .spec.selector\n- .spec.ports[port=80,protocol=\"TCP\"].targetPort\nconflicts with \"beta\":\n- .metadata.labels.tier"
    );
}

#[test]
fn updates_record_what_they_add_as_kubernetes_does() {
    let s = schema("io.k8s.api.apps.v1.Deployment");
    let k = kind(&s);
    let old = deployment(Some(1), json!([{"name": "app", "image": "nginx:1"}]));
    let mut new = old.clone();
    new["metadata"]["annotations"] = json!({"note": "x"});
    new["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
    new["status"] = json!({"replicas": 1});
    let entries = update(
        &old,
        &new,
        k,
        &[],
        &writer("kubectl-edit", "2026-01-01T00:00:00Z"),
    )
    .unwrap();
    // A map or list that appears as a whole is itself owned ("."); status is not tracked
    // through the main resource.
    assert_eq!(
        fields(&entries, "kubectl-edit"),
        json!({
            "f:metadata": {"f:annotations": {".": {}, "f:note": {}}},
            "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                "f:env": {".": {}, "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}
            }}}}}
        })
    );
    // Removing a field takes it from its owner.
    let entries = update(
        &new,
        &old,
        k,
        &entries,
        &writer("other", "2026-01-01T00:01:00Z"),
    )
    .unwrap();
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn bad_managed_fields_are_named() {
    let e =
        decode(&json!({"metadata": {"managedFields": [{"manager": "x", "operation": "Bogus"}]}}))
            .unwrap_err();
    assert!(
        e.starts_with("metadata.managedFields[0].operation: Unsupported value"),
        "{e}"
    );
    let s = schema("io.k8s.api.apps.v1.Deployment");
    let bad = deployment(Some(1), json!([{"image": "x"}]));
    match apply(&json!({}), &bad, kind(&s), &[], &writer("m", "t"), false) {
        Err(SsaError::Invalid(m)) => assert!(
            m.starts_with(".spec.template.spec.containers: element 0: associative list with keys"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_create_is_compared_with_the_go_zero_value() {
    let z = zero("io.k8s.api.apps.v1.Deployment", defs());
    assert_eq!(
        z,
        json!({"metadata": {}, "status": {}, "spec": {"selector": null, "strategy": {},
               "template": {"metadata": {}, "spec": {"containers": null}}}})
    );
    let s = schema("io.k8s.api.apps.v1.Deployment");
    let mut new = deployment(Some(1), json!([{"name": "app", "image": "nginx:1"}]));
    new["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}});
    let entries = update(&z, &new, kind(&s), &[], &writer("kubectl-create", "t")).unwrap();
    // Structs Go keeps by value and lists it serializes as null carry no "."; pointers,
    // maps and new list items do.
    assert_eq!(
        fields(&entries, "kubectl-create"),
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {}, "f:selector": {},
                "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}}, "f:type": {}},
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}
                }
            }
        })
    );
}
