//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and the resource lists of
//! each group/version, built from the registry (so CRDs appear as soon as they are served).

use crate::resources::Registry;
use crate::status::ApiError;
use serde_json::{Value, json};

/// The Kubernetes version the lab speaks (the k8s-openapi feature it is built against).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-lab",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn group_doc(registry: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = registry
        .versions_of(group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

pub fn groups(registry: &Registry) -> Value {
    let mut names: Vec<String> = Vec::new();
    for t in registry.all() {
        if !t.group.is_empty() && !names.contains(&t.group) {
            names.push(t.group.clone());
        }
    }
    let groups: Vec<Value> = names.iter().map(|g| group_doc(registry, g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, group: &str) -> Result<Value, ApiError> {
    if registry.versions_of(group).is_empty() {
        return Err(ApiError::no_route());
    }
    let mut doc = group_doc(registry, group);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(doc)
}

pub fn resources(registry: &Registry, group: &str, version: &str) -> Result<Value, ApiError> {
    let types: Vec<_> = registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut list = Vec::new();
    for t in &types {
        let mut r = json!({
            "name": t.resource,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
            "storageVersionHash": "",
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        list.push(r);
        for s in &t.subresources {
            let (kind, verbs, group_version) = match s.as_str() {
                "token" => (
                    "TokenRequest",
                    vec!["create"],
                    Some(("authentication.k8s.io", "v1")),
                ),
                "scale" => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some(("autoscaling", "v1")),
                ),
                "finalize" => (t.kind.as_str(), vec!["update"], None),
                "ephemeralcontainers" => (t.kind.as_str(), vec!["get", "patch", "update"], None),
                _ => (t.kind.as_str(), vec!["get", "patch", "update"], None),
            };
            let mut sr = json!({"name": format!("{}/{s}", t.resource), "singularName": "", "namespaced": t.namespaced, "kind": kind, "verbs": verbs});
            if let Some((g, v)) = group_version {
                sr["group"] = json!(g);
                sr["version"] = json!(v);
            }
            list.push(sr);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}
