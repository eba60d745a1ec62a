//! OpenAPI v3: a root index and one document per group/version. kubectl reads it to learn that
//! the server validates fields itself (the `fieldValidation` parameter on PATCH operations), so
//! it validates manifests server-side, and `kubectl explain` reads the kinds' schemas from it.
//! Built-in kinds have their full, deep schemas (from k8s-openapi's types); custom kinds their
//! CRD's `openAPIV3Schema`. PATCH bodies are declared JSON only, so kubectl still computes
//! strategic merge patches from its own built-in types (it uses the OpenAPI v3 schema for that
//! only when a PATCH operation lists the strategic merge patch media type).

use crate::http::{Body, json_response};
use crate::resources::{Registry, ResourceType};
use crate::server::State;
use crate::status::ApiError;
use crate::typed::{WithType, with_type};
use hyper::Response;
use k8s_openapi::schemars::JsonSchema;
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use std::sync::{Arc, OnceLock};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Schema name of a custom type (built-in kinds use their real names, `io.k8s.api.core.v1.Pod`).
fn custom_schema_name(rt: &ResourceType) -> String {
    format!("{}.{}.{}", rt.group, rt.version, rt.kind)
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn gvk(rt: &ResourceType) -> Value {
    json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}])
}

fn op(rt: &ResourceType, schema: &str, action: &str, params: Vec<Value>) -> Value {
    let body =
        json!({"content": {"application/json": {"schema": {"$ref": format!("{REF}{schema}")}}}});
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

const REF: &str = "#/components/schemas/";

/// The schemas of every built-in kind and of all they refer to, by name; generated once from
/// the k8s-openapi types, so `kubectl explain` reaches every nested field with its real docs.
pub fn builtin_definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        for rt in Registry::builtin().all() {
            with_type(&rt, Subschema(&mut generator));
        }
        let mut defs = generator.take_definitions(true);
        crate::ssa::markers::annotate(&mut defs);
        defs
    })
}

/// The Go zero value of a built-in kind (what a create is compared with); `None` for CRDs.
pub fn zero_object(rt: &ResourceType) -> Option<Value> {
    with_type(rt, SchemaName).map(|name| crate::ssa::zero(&name, builtin_definitions()))
}

/// A kind's schema for server-side apply: the built-in definition, or the CRD's schema with
/// `metadata` typed as ObjectMeta (the API server types it so for custom kinds too); `None` when
/// the kind has no schema (every field is then deduced from its value).
pub fn apply_schema(state: &State, rt: &ResourceType) -> Option<Value> {
    if let Some(name) = with_type(rt, SchemaName) {
        return Some(json!({"$ref": format!("{REF}{name}")}));
    }
    let mut s = crate::crd::schema_of(state, rt)?;
    if s.get("properties").is_some() {
        s["properties"]["metadata"] =
            json!({"$ref": format!("{REF}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")});
    }
    Some(s)
}

/// Adds a kind's schema, and those it refers to, to the generator's definitions.
struct Subschema<'a>(&'a mut SchemaGenerator);

impl WithType for Subschema<'_> {
    type Out = ();
    fn with<T: DeserializeOwned + Serialize + JsonSchema>(self) {
        self.0.subschema_for::<T>();
    }
}

/// Inserts schema `name` and, transitively, every built-in schema it refers to.
fn insert_with_refs(name: &str, defs: &Map<String, Value>, out: &mut Map<String, Value>) {
    fn refs<'v>(v: &'v Value, found: &mut Vec<&'v str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix(REF))
                {
                    found.push(r);
                }
                m.values().for_each(|x| refs(x, found));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, found)),
            _ => {}
        }
    }
    let mut todo = vec![name];
    while let Some(n) = todo.pop() {
        if out.contains_key(n) {
            continue;
        }
        let Some(s) = defs.get(n) else { continue };
        refs(s, &mut todo);
        out.insert(n.to_string(), s.clone());
    }
}

/// Adds a kind's schema (and what it refers to) to `schemas`, marked with its
/// group/version/kind as kubectl looks kinds up; gives the schema's name.
fn add_schema(state: &State, rt: &ResourceType, schemas: &mut Map<String, Value>) -> String {
    let (name, mut schema) = match with_type(rt, SchemaName) {
        Some(name) => {
            insert_with_refs(&name, builtin_definitions(), schemas);
            let s = schemas
                .get(&name)
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            (name, s)
        }
        None => (
            custom_schema_name(rt),
            crate::crd::schema_of(state, rt).unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            ),
        ),
    };
    schema["x-kubernetes-group-version-kind"] = gvk(rt);
    schemas.insert(name.clone(), schema);
    name
}

/// A kind's schema name (its definition's key).
struct SchemaName;

impl WithType for SchemaName {
    type Out = String;
    fn with<T: DeserializeOwned + Serialize + JsonSchema>(self) -> String {
        T::schema_name().into_owned()
    }
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
        let name = add_schema(state, rt, &mut schemas);
        let op = |action: &str, params: Vec<Value>| op(rt, &name, action, params);
        let writes = vec![dry.clone(), fm.clone(), fv.clone()];
        paths.insert(
            base.clone(),
            json!({"get": op("list", vec![]), "post": op("post", writes.clone())}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op("get", vec![]),
                "put": op("put", writes.clone()),
                "patch": op("patch", writes.clone()),
                "delete": op("delete", vec![dry.clone()]),
            }),
        );
        if rt.has_status() {
            paths.insert(format!("{base}/{{name}}/status"), json!({"get": op("get", vec![]), "put": op("put", writes.clone()), "patch": op("patch", writes.clone())}));
        }
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
