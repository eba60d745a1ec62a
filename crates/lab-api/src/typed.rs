//! Decoding through the real types (k8s-openapi) of the built-in resources: a value of the wrong
//! type is a 400, as in the real server, and fields the type does not know are found (for
//! `fieldValidation`) and dropped, as the real server's decoder drops them.

use crate::resources::ResourceType;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Outcome of decoding: the object as the type keeps it, and the paths of unknown fields.
pub struct Decoded {
    pub object: Value,
    pub unknown: Vec<String>,
}

fn unknown(input: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (input, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(w) => unknown(v, w, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn through<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Option<Decoded>, String> {
    match serde_json::from_value::<T>(obj.clone()) {
        Ok(t) => {
            let kept = serde_json::to_value(&t).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            unknown(obj, &kept, "", &mut out);
            Ok(Some(Decoded {
                object: kept,
                unknown: out,
            }))
        }
        // A missing required field is a validation error (422), reported later, not a decode error.
        Err(e) if e.to_string().starts_with("missing field") => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Decodes a built-in object through its type; `Ok(None)` for types without one (CRDs) or when
/// required fields are missing (validation reports those).
pub fn decode(rt: &ResourceType, obj: &Value) -> Result<Option<Decoded>, String> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, coordination::v1 as coord,
        core::v1 as core, discovery::v1 as disc,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    if rt.crd.is_some() {
        return Ok(None);
    }
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "namespaces") => through::<core::Namespace>(obj),
        ("", "services") => through::<core::Service>(obj),
        ("", "pods") => through::<core::Pod>(obj),
        ("", "configmaps") => through::<core::ConfigMap>(obj),
        ("", "secrets") => through::<core::Secret>(obj),
        ("", "serviceaccounts") => through::<core::ServiceAccount>(obj),
        ("", "events") => through::<core::Event>(obj),
        ("", "endpoints") => through::<core::Endpoints>(obj),
        ("", "nodes") => through::<core::Node>(obj),
        ("discovery.k8s.io", "endpointslices") => through::<disc::EndpointSlice>(obj),
        ("apps", "deployments") => through::<apps::Deployment>(obj),
        ("apps", "replicasets") => through::<apps::ReplicaSet>(obj),
        ("apps", "statefulsets") => through::<apps::StatefulSet>(obj),
        ("apps", "daemonsets") => through::<apps::DaemonSet>(obj),
        ("coordination.k8s.io", "leases") => through::<coord::Lease>(obj),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => {
            through::<adm::MutatingWebhookConfiguration>(obj)
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            through::<ext::CustomResourceDefinition>(obj)
        }
        _ => Ok(None),
    }
}
