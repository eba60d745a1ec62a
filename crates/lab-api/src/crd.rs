//! CustomResourceDefinitions: validating them, and serving (or no longer serving) their
//! resources as soon as one is stored, like the real server's apiextensions controller.

use crate::resources::{PrinterColumn, ResourceType};
use crate::scale::ScalePaths;
use crate::server::State;
use crate::status::{ApiError, Cause};
use crate::store::Key;
use serde_json::{Value, json};
use std::collections::HashSet;

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.resource == "customresourcedefinitions"
}

/// Checks a CRD's names and versions (422 naming the field, as the real server does).
pub fn validate(
    _state: &State,
    rt: &ResourceType,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if !is_crd(rt) {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &obj["spec"];
    let mut causes = Vec::new();
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.names.kind"));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        _ => causes.push(Cause::not_supported(
            "spec.scope",
            &spec["scope"],
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = HashSet::new();
    for (i, v) in versions.iter().enumerate() {
        if !seen.insert(v["name"].as_str().unwrap_or_default().to_string()) {
            causes.push(Cause::duplicate(
                format!("spec.versions[{i}].name"),
                &v["name"],
            ));
        }
        let scale = &v["subresources"]["scale"];
        if scale.is_object() {
            for (key, prefix) in [
                ("specReplicasPath", ".spec."),
                ("statusReplicasPath", ".status."),
            ] {
                let field = format!("spec.versions[{i}].subresources.scale.{key}");
                match scale[key].as_str() {
                    None | Some("") => causes.push(Cause::required(field)),
                    Some(p) if !p.starts_with(prefix) => causes.push(Cause::invalid(
                        field,
                        &scale[key],
                        format!(
                            "should be a json path under {}",
                            prefix.trim_end_matches('.')
                        ),
                    )),
                    Some(_) => {}
                }
            }
        }
        if v["schema"]["openAPIV3Schema"].is_null() {
            causes.push(Cause::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            )));
        }
    }
    if let Some(old) = old
        && old["spec"]["scope"] != spec["scope"]
    {
        causes.push(Cause::invalid(
            "spec.scope",
            &spec["scope"],
            "field is immutable",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.group, &rt.kind, name, causes))
    }
}

/// The status a CRD gets once its names are accepted (the lab accepts at once).
pub fn default_status(obj: &mut Value) {
    let storage: Vec<Value> = obj["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    let now = crate::clock::now();
    obj["status"] = json!({
        "acceptedNames": obj["spec"]["names"],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": storage,
    });
}

/// A served version's printer columns; without any, Age (the real server's default).
fn printer_columns(version: &Value) -> Vec<PrinterColumn> {
    let columns = match version["additionalPrinterColumns"].as_array() {
        Some(c) if !c.is_empty() => c.clone(),
        _ => {
            vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
        }
    };
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    columns
        .iter()
        .map(|c| PrinterColumn {
            name: s(&c["name"]),
            ty: s(&c["type"]),
            format: s(&c["format"]),
            description: match c["description"].as_str() {
                Some(d) if !d.is_empty() => d.into(),
                _ => format!(
                    "Custom resource definition column (in JSONPath format): {}",
                    s(&c["jsonPath"])
                ),
            },
            priority: c["priority"].as_i64().unwrap_or(0),
            json_path: s(&c["jsonPath"]),
        })
        .collect()
}

fn served(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let mut versions: Vec<&Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] == json!(true))
        .collect();
    versions.sort_by_key(|v| v["storage"] != json!(true));
    versions
        .into_iter()
        .map(|v| {
            let mut subresources = Vec::new();
            if v["subresources"]["status"].is_object() {
                subresources.push("status".to_string());
            }
            let scale = &v["subresources"]["scale"];
            if scale.is_object() {
                subresources.push("scale".to_string());
            }
            let path = |k: &str| scale[k].as_str().map(String::from);
            ResourceType {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: v["name"].as_str().unwrap_or_default().into(),
                resource: names["plural"].as_str().unwrap_or_default().into(),
                singular: names["singular"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| kind.to_lowercase()),
                kind: kind.clone(),
                namespaced: spec["scope"] == "Namespaced",
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                subresources,
                field_labels: vec![],
                crd: crd["metadata"]["name"].as_str().map(String::from),
                scale: scale.is_object().then(|| ScalePaths {
                    spec_replicas: path("specReplicasPath").unwrap_or_default(),
                    status_replicas: path("statusReplicasPath").unwrap_or_default(),
                    label_selector: path("labelSelectorPath"),
                }),
                printer_columns: printer_columns(v),
            }
        })
        .collect()
}

/// Brings the registry in line with the stored CRDs; custom objects of a removed CRD go with it.
pub fn sync(state: &State) {
    let (crds, _) = state
        .store
        .list("apiextensions.k8s.io", "customresourcedefinitions", None);
    let mut live = HashSet::new();
    for crd in &crds {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if crd["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        state.registry.set_crd(&name, served(crd));
        live.insert(name);
    }
    for t in state.registry.all() {
        if let Some(name) = &t.crd
            && !live.contains(name)
        {
            state.registry.set_crd(name, vec![]);
            let (objs, _) = state.store.list(&t.group, &t.resource, None);
            for o in objs {
                let key = Key {
                    group: t.group.clone(),
                    resource: t.resource.clone(),
                    namespace: o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    name: o["metadata"]["name"].as_str().unwrap_or_default().into(),
                };
                if let Err(e) = state.store.delete(&key, None) {
                    tracing::warn!(error = %e, "removing a custom object of a deleted CRD");
                }
            }
        }
    }
}

/// The CRD's `openAPIV3Schema` for a served custom type (for OpenAPI documents).
pub fn schema_of(state: &State, rt: &ResourceType) -> Option<Value> {
    let name = rt.crd.as_ref()?;
    let key = Key {
        group: "apiextensions.k8s.io".into(),
        resource: "customresourcedefinitions".into(),
        namespace: String::new(),
        name: name.clone(),
    };
    let crd = state.store.get(&key)?;
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == json!(rt.version))
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
}
