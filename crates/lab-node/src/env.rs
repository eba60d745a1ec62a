//! Container environment: `env` values with `$(VAR)` expansion, the downward API's field paths,
//! and the variables every container gets.

use serde_json::Value;
use std::collections::BTreeMap;

/// `$(VAR)` → value of an earlier variable; `$$(VAR)` → literal `$(VAR)`; unknown stays as is.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            // `$$` is an escaped `$`.
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn map_lines(m: &Value) -> String {
    let mut lines: Vec<String> = m
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        Value::String(v.as_str().unwrap_or_default().into())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines.join("\n")
}

/// A downward API `fieldRef.fieldPath` of `pod` (whose status carries the pod IPs).
/// `metadata.labels` / `metadata.annotations` (whole maps) are only valid in volumes.
pub fn field(pod: &Value, path: &str) -> Option<String> {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).map(str::to_string);
    let keyed = |prefix: &str, map: &str| -> Option<Option<String>> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(Some(
            pod["metadata"][map][key]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ))
    };
    if let Some(v) = keyed("metadata.labels", "labels") {
        return v;
    }
    if let Some(v) = keyed("metadata.annotations", "annotations") {
        return v;
    }
    match path {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "metadata.uid" => s("/metadata/uid"),
        "metadata.labels" => Some(map_lines(&pod["metadata"]["labels"])),
        "metadata.annotations" => Some(map_lines(&pod["metadata"]["annotations"])),
        "spec.nodeName" => s("/spec/nodeName"),
        "spec.serviceAccountName" => s("/spec/serviceAccountName"),
        "status.podIP" => s("/status/podIP"),
        "status.hostIP" => s("/status/hostIP"),
        "status.podIPs" | "status.hostIPs" => {
            let key = if path == "status.podIPs" {
                "podIPs"
            } else {
                "hostIPs"
            };
            let ips: Vec<&str> = pod["status"][key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str())
                .collect();
            Some(ips.join(","))
        }
        _ => None,
    }
}

/// `resourceFieldRef`: the lab sets no limits, so limits read as the node's capacity and requests
/// as 0, as in a cluster without them (CPU in cores rounded up, memory in bytes, by `divisor` 1).
pub fn resource_field(resource: &str) -> String {
    match resource {
        "limits.cpu" => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
        "limits.memory" | "limits.ephemeral-storage" => node_memory().to_string(),
        _ => "0".to_string(),
    }
}

fn node_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `FOO_SERVICE_HOST`-style variables (`enableServiceLinks`) for one Service.
pub fn service_link_vars(name: &str, ip: &str, ports: &[Value], out: &mut Vec<(String, String)>) {
    let prefix = name.to_uppercase().replace('-', "_");
    let Some(first) = ports.first() else {
        return;
    };
    let port = |p: &Value| p["port"].as_i64().unwrap_or_default();
    out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
    out.push((format!("{prefix}_SERVICE_PORT"), port(first).to_string()));
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
    out.push((
        format!("{prefix}_PORT"),
        format!("{}://{host}:{}", proto(first).to_lowercase(), port(first)),
    ));
    for p in ports {
        if let Some(pname) = p["name"].as_str() {
            out.push((
                format!(
                    "{prefix}_SERVICE_PORT_{}",
                    pname.to_uppercase().replace('-', "_")
                ),
                port(p).to_string(),
            ));
        }
        let base = format!("{prefix}_PORT_{}_{}", port(p), proto(p));
        out.push((
            base.clone(),
            format!("{}://{host}:{}", proto(p).to_lowercase(), port(p)),
        ));
        out.push((format!("{base}_PROTO"), proto(p).to_lowercase()));
        out.push((format!("{base}_PORT"), port(p).to_string()));
        out.push((format!("{base}_ADDR"), ip.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$A $", &vars), "$A $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn downward_fields() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                         "labels": {"role": "preview", "app": "shop"}, "annotations": {"a": "x\"y"}},
            "spec": {"nodeName": "lab-node", "serviceAccountName": "default"},
            "status": {"podIP": "10.244.0.2", "podIPs": [{"ip": "10.244.0.2"}, {"ip": "fd00:10:244::2"}]}
        });
        assert_eq!(field(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(field(&pod, "metadata.labels['role']").unwrap(), "preview");
        assert_eq!(field(&pod, "metadata.labels['none']").unwrap(), "");
        assert_eq!(
            field(&pod, "metadata.labels").unwrap(),
            "app=\"shop\"\nrole=\"preview\""
        );
        assert_eq!(field(&pod, "metadata.annotations").unwrap(), "a=\"x\\\"y\"");
        assert_eq!(
            field(&pod, "status.podIPs").unwrap(),
            "10.244.0.2,fd00:10:244::2"
        );
        assert_eq!(field(&pod, "spec.nodeName").unwrap(), "lab-node");
        assert_eq!(field(&pod, "status.nope"), None);
    }

    #[test]
    fn service_links() {
        let mut out = Vec::new();
        service_link_vars(
            "orders-preview",
            "10.96.0.11",
            &[json!({"name": "http", "port": 80, "protocol": "TCP"})],
            &mut out,
        );
        assert!(out.contains(&("ORDERS_PREVIEW_SERVICE_HOST".into(), "10.96.0.11".into())));
        assert!(out.contains(&("ORDERS_PREVIEW_SERVICE_PORT_HTTP".into(), "80".into())));
        assert!(out.contains(&(
            "ORDERS_PREVIEW_PORT_80_TCP".into(),
            "tcp://10.96.0.11:80".into()
        )));
    }
}
