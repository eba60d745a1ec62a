//! OpenAPI v3: a root index and one document per group/version. kubectl reads it to learn that
//! the server validates fields itself (the `fieldValidation` parameter on PATCH operations), so
//! it validates manifests server-side, and `kubectl explain` reads the kinds' schemas from it.
//! Schemas describe the top-level fields; kubectl computes strategic patches from its built-in
//! types when a schema does not go deeper.

use crate::http::{Body, json_response};
use crate::resources::ResourceType;
use crate::server::State;
use crate::status::ApiError;
use hyper::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn schema_name(rt: &ResourceType) -> String {
    let g = if rt.group.is_empty() {
        "core".to_string()
    } else {
        rt.group.clone()
    };
    format!("{g}.{}.{}", rt.version, rt.kind)
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn gvk(rt: &ResourceType) -> Value {
    json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}])
}

fn op(rt: &ResourceType, action: &str, params: Vec<Value>) -> Value {
    let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(rt))}}}});
    let mut o = json!({
        "description": format!("{action} the specified {}", rt.kind),
        "operationId": format!("{action}{}", rt.kind),
        "parameters": params,
        "responses": {"200": body.clone()},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(rt)[0],
    });
    if matches!(action, "put" | "post" | "patch") {
        o["requestBody"] = body;
    }
    o
}

fn schema(rt: &ResourceType, crd_schema: Option<Value>) -> Value {
    if let Some(mut s) = crd_schema {
        s["x-kubernetes-group-version-kind"] = gvk(rt);
        return s;
    }
    let string = |d: &str| json!({"type": "string", "description": d});
    let mut props = Map::new();
    props.insert(
        "apiVersion".into(),
        string("APIVersion defines the versioned schema of this representation of an object."),
    );
    props.insert(
        "kind".into(),
        string("Kind is a string value representing the REST resource this object represents."),
    );
    props.insert(
        "metadata".into(),
        json!({"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true}),
    );
    let top: &[&str] = match rt.kind.as_str() {
        "ConfigMap" => &["data", "binaryData", "immutable"],
        "Secret" => &["data", "stringData", "type", "immutable"],
        "ServiceAccount" => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        "Event" => &[
            "involvedObject",
            "reason",
            "message",
            "source",
            "type",
            "count",
            "firstTimestamp",
            "lastTimestamp",
        ],
        "Endpoints" => &["subsets"],
        "EndpointSlice" => &["addressType", "endpoints", "ports"],
        "MutatingWebhookConfiguration" => &["webhooks"],
        _ => &["spec", "status"],
    };
    for f in top {
        props.insert((*f).into(), json!({"description": format!("{} of the {}.", f, rt.kind), "x-kubernetes-preserve-unknown-fields": true}));
    }
    json!({
        "description": format!("{} (served by the ghostwire lab API).", rt.kind),
        "type": "object",
        "properties": props,
        "x-kubernetes-group-version-kind": gvk(rt),
    })
}

fn document(state: &State, group: &str, version: &str) -> Option<Value> {
    let types: Vec<Arc<ResourceType>> = state
        .registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let fv = param(
        "fieldValidation",
        "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.",
    );
    let dry = param(
        "dryRun",
        "When present, indicates that modifications should not be persisted.",
    );
    let fm = param(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
    );
    for rt in &types {
        let prefix = format!("/{}", gv_path(group, version));
        let base = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", rt.resource)
        } else {
            format!("{prefix}/{}", rt.resource)
        };
        let writes = vec![dry.clone(), fm.clone(), fv.clone()];
        paths.insert(
            base.clone(),
            json!({"get": op(rt, "list", vec![]), "post": op(rt, "post", writes.clone())}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op(rt, "get", vec![]),
                "put": op(rt, "put", writes.clone()),
                "patch": op(rt, "patch", writes.clone()),
                "delete": op(rt, "delete", vec![dry.clone()]),
            }),
        );
        if rt.has_status() {
            paths.insert(format!("{base}/{{name}}/status"), json!({"get": op(rt, "get", vec![]), "put": op(rt, "put", writes.clone()), "patch": op(rt, "patch", writes.clone())}));
        }
        schemas.insert(
            schema_name(rt),
            schema(rt, crate::crd::schema_of(state, rt)),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-lab"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

pub fn serve(state: &Arc<State>, segs: &[&str]) -> Result<Response<Body>, ApiError> {
    match segs {
        ["v3"] => {
            let mut gvs: Vec<(String, String)> = Vec::new();
            for t in state.registry.all() {
                if !gvs.iter().any(|(g, v)| *g == t.group && *v == t.version) {
                    gvs.push((t.group.clone(), t.version.clone()));
                }
            }
            let rv = state.store.current_rv();
            let mut paths = Map::new();
            for (g, v) in gvs {
                let p = gv_path(&g, &v);
                // The hash changes whenever anything might have (CRDs come and go).
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={rv:016X}")}),
                );
            }
            Ok(json_response(200, &json!({"paths": paths})))
        }
        ["v3", "api", v] => document(state, "", v)
            .map(|d| json_response(200, &d))
            .ok_or_else(ApiError::no_route),
        ["v3", "apis", g, v] => document(state, g, v)
            .map(|d| json_response(200, &d))
            .ok_or_else(ApiError::no_route),
        _ => Err(ApiError::no_route()),
    }
}
