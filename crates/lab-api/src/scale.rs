//! The `scale` subresource: an `autoscaling/v1` Scale view of an object's replica count, which
//! `kubectl scale` and autoscalers read and write. Custom types say where the counts are (their
//! CRD's `subresources.scale`); the built-in workloads keep them at `.spec.replicas` and
//! `.status.replicas`, with the selector taken from `.spec.selector`.

use crate::resources::ResourceType;
use crate::status::{ApiError, Cause};
use serde_json::{Value, json};

/// Where a type keeps what its Scale shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// A CRD's `labelSelectorPath` (a string in the object); `None` for the built-in workloads,
    /// whose selector is `.spec.selector` written out.
    pub label_selector: Option<String>,
}

impl ScalePaths {
    pub fn builtin() -> Self {
        ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        }
    }
}

/// The value at a simple JSONPath (`.a.b`, `.a[0].b`), as CRD paths are written.
pub fn at_path<'v>(o: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = o;
    for part in path.strip_prefix('.')?.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for ix in indexes.split('[').filter(|s| !s.is_empty()) {
            v = v.get(ix.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

/// Sets the value at a dotted path (`.spec.replicas`), creating objects on the way.
fn set_path(o: &mut Value, path: &str, value: Value) {
    let mut v = o;
    for key in path.trim_start_matches('.').split('.') {
        if !v.is_object() {
            *v = json!({});
        }
        v = &mut v[key];
    }
    *v = value;
}

/// A LabelSelector written as a selector string (`app=web,tier in (a,b)`).
fn format_selector(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_string(),
        });
    }
    parts.join(",")
}

/// The Scale of `obj`.
pub fn to_scale(rt: &ResourceType, obj: &Value) -> Value {
    let paths = rt.scale.clone().unwrap_or_else(ScalePaths::builtin);
    let int = |path: &str| at_path(obj, path).and_then(Value::as_i64).unwrap_or(0);
    let selector = match &paths.label_selector {
        Some(p) => at_path(obj, p).cloned().unwrap_or(Value::Null),
        None => json!(format_selector(&obj["spec"]["selector"])),
    };
    let meta = &obj["metadata"];
    let mut status = json!({"replicas": int(&paths.status_replicas)});
    if selector.as_str().is_some_and(|s| !s.is_empty()) {
        status["selector"] = selector;
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": int(&paths.spec_replicas)},
        "status": status,
    })
}

/// The stored object `cur` with the replica count a client's Scale asks for (and the Scale's
/// resourceVersion, a precondition when set).
pub fn apply(rt: &ResourceType, cur: &Value, scale: &Value) -> Result<Value, ApiError> {
    let name = cur["metadata"]["name"].as_str().unwrap_or_default();
    let replicas = &scale["spec"]["replicas"];
    let n = match replicas {
        Value::Null => 0,
        v => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![Cause::invalid(
                    "spec.replicas",
                    v,
                    "must be greater than or equal to 0",
                )],
            )
        })?,
    };
    let paths = rt.scale.clone().unwrap_or_else(ScalePaths::builtin);
    let mut new = cur.clone();
    set_path(&mut new, &paths.spec_replicas, json!(n));
    match scale["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => new["metadata"]["resourceVersion"] = json!(rv),
        _ => {}
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_selectors() {
        let mut o = json!({"spec": {"ports": [{"port": 80}]}});
        assert_eq!(at_path(&o, ".spec.ports[0].port"), Some(&json!(80)));
        assert_eq!(at_path(&o, ".spec.missing"), None);
        set_path(&mut o, ".spec.deep.replicas", json!(3));
        assert_eq!(o["spec"]["deep"]["replicas"], 3);
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "gone", "operator": "DoesNotExist"}
        ]});
        assert_eq!(format_selector(&sel), "app=web,tier in (a,b),!gone");
    }
}
