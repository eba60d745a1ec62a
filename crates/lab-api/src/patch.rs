//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch
//! with the merge keys of the built-in types.

use crate::status::ApiError;
use serde_json::{Map, Value};

pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "invalid JSON pointer: {path:?}"
        )));
    }
    let idx = path.rfind('/').expect("starts with /");
    Ok((path[..idx].to_string(), unescape(&path[idx + 1..])))
}

fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<&'a mut Value, ApiError> {
    doc.pointer_mut(path)
        .ok_or_else(|| ApiError::unprocessable_patch(format!("doc is missing path: \"{path}\"")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (p, last) = split_pointer(path)?;
    match parent(doc, &p)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| {
                        ApiError::unprocessable_patch(format!(
                            "add operation does not apply: doc is missing path: \"{path}\""
                        ))
                    })?
            };
            a.insert(i, value);
        }
        _ => {
            return Err(ApiError::unprocessable_patch(format!(
                "doc is missing path: \"{path}\""
            )));
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (p, last) = split_pointer(path)?;
    let missing = || {
        ApiError::unprocessable_patch(format!(
            "remove operation does not apply: doc is missing path: \"{path}\""
        ))
    };
    match parent(doc, &p)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 patch; a failed operation leaves the document unchanged.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    let mut out = doc.clone();
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| ApiError::bad_request("json patch operation has no path"))?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("json patch {} operation has no value", op["op"]))
            })
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| ApiError::bad_request("json patch operation has no from"))
        };
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                let slot = out.pointer_mut(path).ok_or_else(|| {
                    ApiError::unprocessable_patch(format!(
                        "replace operation does not apply: doc is missing key: {path}"
                    ))
                })?;
                *slot = value()?;
            }
            "move" => {
                let v = remove(&mut out, from()?)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = out.pointer(from()?).cloned().ok_or_else(|| {
                    ApiError::unprocessable_patch(format!("copy from missing path: {path}"))
                })?;
                add(&mut out, path, v)?;
            }
            "test" => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(ApiError::unprocessable_patch(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => return Err(ApiError::bad_request(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(out)
}

/// The merge key of a list field of the built-in types (`None`: the list is replaced whole).
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => match field {
            "readinessGates" => "conditionType",
            _ => "name",
        },
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "taints" => "key",
        _ => return None,
    })
}

/// Primitive lists whose strategy is merge (union) rather than replace.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch. Lists with a merge key merge element-wise; `$patch`
/// (`replace`, `delete`, `merge`), `$retainKeys`, `$setElementOrder/…` and
/// `$deleteFromPrimitiveList/…` directives are honoured.
pub fn strategic(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = target.clone();
    strategic_into(&mut out, patch)?;
    Ok(out)
}

fn strategic_into(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            v.as_object_mut().expect("object").remove("$patch");
            *target = v;
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x == k) || p.contains_key(k));
    }
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Some(del)) = (t.get_mut(field), v.as_array()) {
                have.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        match v {
            Value::Array(items) => {
                let key = merge_key(
                    k,
                    items
                        .first()
                        .or_else(|| slot.as_array().and_then(|a| a.first())),
                );
                merge_list(slot, items, key, merges_primitives(k))?;
            }
            Value::Object(_) => strategic_into(slot, v)?,
            _ => *slot = v.clone(),
        }
        if slot.is_null() {
            t.remove(k);
        }
    }
    Ok(())
}

fn merge_list(
    slot: &mut Value,
    items: &[Value],
    key: Option<&str>,
    union: bool,
) -> Result<(), ApiError> {
    let replace_all = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if replace_all || (key.is_none() && !union) || !slot.is_array() {
        let kept: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        *slot = Value::Array(kept);
        return Ok(());
    }
    let have = slot.as_array_mut().expect("checked above");
    match key {
        None => {
            for i in items {
                if !have.contains(i) {
                    have.push(i.clone());
                }
            }
        }
        Some(key) => {
            for item in items {
                let Some(id) = item.get(key) else {
                    return Err(ApiError::bad_request(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = have.iter().position(|h| h.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        have.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_into(&mut have[i], item)?,
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_into(&mut fresh, item)?;
                        have.push(fresh);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}});
        let out = strategic(&t, &p).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c", "image": "w"}])
        );
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        assert_eq!(
            strategic(&out, &del).unwrap()["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn json_patch_ops() {
        let d = json!({"a": [1, 2], "b": {"c": 1}});
        let p = json!([{"op": "add", "path": "/a/-", "value": 3}, {"op": "remove", "path": "/b/c"}, {"op": "replace", "path": "/a/0", "value": 0}]);
        assert_eq!(
            json_patch(&d, &p).unwrap(),
            json!({"a": [0, 2, 3], "b": {}})
        );
        assert!(json_patch(&d, &json!([{"op": "remove", "path": "/x"}])).is_err());
    }

    #[test]
    fn merge_patch_removes_nulls() {
        let mut d = json!({"a": 1, "b": {"c": 1, "d": 2}});
        merge(&mut d, &json!({"a": null, "b": {"c": 3}}));
        assert_eq!(d, json!({"b": {"c": 3, "d": 2}}));
    }
}
