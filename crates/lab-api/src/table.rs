//! Server-side printing: `meta.k8s.io/v1` Tables, which `kubectl get` asks for, with the columns
//! the real server shows for the common types, and for custom types their CRD's printer columns.

use crate::clock;
use crate::resources::{PrinterColumn, ResourceType};
use serde_json::{Value, json};

/// Whether the Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// The columns of a built-in type.
fn columns(rt: &ResourceType) -> Vec<(&'static str, &'static str, i32)> {
    if rt.resource == "events" && rt.group.is_empty() {
        return vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ];
    }
    let mut c = vec![("Name", "string", 0)];
    match rt.resource.as_str() {
        "pods" => c.extend([
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
        ]),
        "services" => c.extend([
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
        ]),
        "deployments" => c.extend([
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
        ]),
        "namespaces" => c.push(("Status", "string", 0)),
        "configmaps" => c.push(("Data", "integer", 0)),
        "secrets" => c.extend([("Type", "string", 0), ("Data", "integer", 0)]),
        _ => {}
    }
    c.push(("Age", "string", 0));
    if rt.resource == "pods" {
        c.extend([("IP", "string", 1), ("Node", "string", 1)]);
    }
    c
}

/// A custom column's cell: typed as the column says, null (shown `<none>`) when absent or
/// of another type.
fn custom_cell(col: &PrinterColumn, o: &Value) -> Value {
    let Some(v) = crate::scale::at_path(o, &col.json_path) else {
        return Value::Null;
    };
    match (col.ty.as_str(), v) {
        ("integer", Value::Number(n)) => n.as_i64().map_or(Value::Null, |i| json!(i)),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => v.clone(),
        ("date", Value::String(ts)) => json!(clock::age(ts)),
        ("string", Value::String(_)) => v.clone(),
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

/// The cells of a built-in type's row.
fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_string()
    };
    if rt.resource == "events" && rt.group.is_empty() {
        return event_cells(o);
    }
    let mut c = vec![json!(o["metadata"]["name"])];
    match rt.resource.as_str() {
        "pods" => {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c["ready"] == json!(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            let status = if o["metadata"]["deletionTimestamp"].is_string() {
                "Terminating".into()
            } else {
                s("/status/phase")
            };
            c.extend([
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
            ]);
        }
        "services" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_i64() {
                    Some(n) => format!(
                        "{}:{n}/{}",
                        p["port"],
                        p["protocol"].as_str().unwrap_or("TCP")
                    ),
                    None => format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")),
                })
                .collect();
            let ext = o["spec"]["externalName"].as_str().unwrap_or("<none>");
            let ports = if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            };
            c.extend([
                json!(s("/spec/type")),
                json!(s("/spec/clusterIP")),
                json!(ext),
                json!(ports),
            ]);
        }
        "deployments" => {
            let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            c.extend([
                json!(format!(
                    "{}/{}",
                    n("/status/readyReplicas"),
                    n("/spec/replicas")
                )),
                json!(n("/status/updatedReplicas")),
                json!(n("/status/availableReplicas")),
            ]);
        }
        "namespaces" => c.push(json!(s("/status/phase"))),
        "configmaps" => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            c.push(json!(n));
        }
        "secrets" => c.extend([
            json!(s("/type")),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
        ]),
        _ => {}
    }
    c.push(json!(clock::age(
        o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
    )));
    if rt.resource == "pods" {
        c.extend([json!(s("/status/podIP")), json!(s("/spec/nodeName"))]);
    }
    c
}

/// An Event's row as the real server prints it (`(x3 over 2m)` when it repeated).
fn event_cells(o: &Value) -> Vec<Value> {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let or_created = |p: &str| {
        let t = s(p);
        if t.is_empty() {
            s("/metadata/creationTimestamp")
        } else {
            t
        }
    };
    let last = or_created("/lastTimestamp");
    let first = or_created("/firstTimestamp");
    let count = o["count"].as_i64().unwrap_or(1);
    let last_seen = if count > 1 {
        format!(
            "{} (x{count} over {})",
            clock::age(&last),
            clock::age(&first)
        )
    } else {
        clock::age(&last)
    };
    let mut source = s("/source/component");
    let host = s("/source/host");
    if !host.is_empty() {
        source = format!("{source}, {host}");
    }
    vec![
        json!(last_seen),
        json!(s("/type")),
        json!(s("/reason")),
        json!(format!(
            "{}/{}",
            s("/involvedObject/kind").to_lowercase(),
            s("/involvedObject/name")
        )),
        json!(s("/involvedObject/fieldPath")),
        json!(source),
        json!(s("/message")),
        json!(clock::age(&first)),
        json!(count.to_string()),
        o["metadata"]["name"].clone(),
    ]
}

/// A Table of `items`; each row carries the object's metadata (`includeObject=Metadata`).
pub fn render(
    rt: &ResourceType,
    items: &[&Value],
    list_meta: Value,
    include_object: &str,
) -> Value {
    let defs: Vec<Value> = if rt.crd.is_some() {
        let name = json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0});
        std::iter::once(name)
            .chain(rt.printer_columns.iter().map(|c| json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})))
            .collect()
    } else {
        columns(rt)
            .into_iter()
            .map(|(name, ty, priority)| json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority}))
            .collect()
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let object = match include_object {
                "None" => Value::Null,
                "Object" => (*o).clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            };
            let cells = if rt.crd.is_some() {
                std::iter::once(o["metadata"]["name"].clone())
                    .chain(rt.printer_columns.iter().map(|c| custom_cell(c, o)))
                    .collect()
            } else {
                cells(rt, o)
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_columns_read_simple_json_paths() {
        let o = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}, "status": {"phase": "Healthy"}});
        let col = |ty: &str, path: &str| PrinterColumn {
            name: "x".into(),
            ty: ty.into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            json_path: path.into(),
        };
        assert_eq!(custom_cell(&col("integer", ".spec.replicas"), &o), json!(2));
        assert_eq!(
            custom_cell(&col("integer", ".spec.ports[0].port"), &o),
            json!(80)
        );
        assert_eq!(
            custom_cell(&col("string", ".status.phase"), &o),
            json!("Healthy")
        );
        assert_eq!(
            custom_cell(&col("string", ".spec.replicas"), &o),
            json!("2")
        );
        assert_eq!(
            custom_cell(&col("integer", ".status.missing"), &o),
            Value::Null
        );
        assert_eq!(
            custom_cell(&col("integer", ".status.phase"), &o),
            Value::Null
        );
    }
}
