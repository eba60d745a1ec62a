//! Where the Services come from: the Kubernetes API, or a file as
//! `kubectl get svc -o json|yaml` prints it.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error(transparent)]
    Api(#[from] kube_util::Error),
}

#[derive(Deserialize)]
struct Head {
    kind: Option<String>,
    #[serde(default)]
    items: Vec<ItemHead>,
}

#[derive(Deserialize)]
struct ItemHead {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct ListDoc {
    #[serde(default)]
    items: Vec<Service>,
}

fn decode<T: DeserializeOwned>(text: &str, yaml: bool) -> Result<T, String> {
    if yaml {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// Parses a Service, a `ServiceList` or a `List` of Services, in JSON or YAML.
/// Errors carry the position (line and column) the parser reports.
pub fn parse_services(text: &str) -> Result<Vec<Service>, String> {
    let yaml = !text.trim_start().starts_with('{');
    let head: Head = decode(text, yaml)?;
    match head.kind.as_deref() {
        Some("List") | Some("ServiceList") => {
            if let Some((i, k)) = head
                .items
                .iter()
                .enumerate()
                .find(|(_, it)| it.kind.as_deref().is_some_and(|k| k != "Service"))
            {
                return Err(format!(
                    "items[{i}] is a {}, not a Service",
                    k.kind.as_deref().unwrap_or_default()
                ));
            }
            Ok(decode::<ListDoc>(text, yaml)?.items)
        }
        Some("Service") => Ok(vec![decode::<Service>(text, yaml)?]),
        Some(other) => Err(format!(
            "kind {other:?} is not a Service, ServiceList or List"
        )),
        None => Err(
            "no \"kind\" field: expected the output of `kubectl get svc -o json` or `-o yaml`"
                .into(),
        ),
    }
}

pub fn services_from_file(path: &Path) -> Result<Vec<Service>, DiscoverError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DiscoverError::Read {
        path: p.clone(),
        source,
    })?;
    parse_services(&text).map_err(|reason| DiscoverError::Malformed { path: p, reason })
}

/// Lists the Services of `namespace` page by page, retrying transient failures within `budget`.
pub async fn services_from_api(
    client: kube::Client,
    namespace: &str,
    budget: Duration,
) -> Result<Vec<Service>, DiscoverError> {
    let api: Api<Service> = Api::namespaced(client, namespace);
    let what = format!("list Services in namespace {namespace:?}");
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = kube_util::retry(&what, budget, || api.list(&lp)).await?;
        out.extend(page.items);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The Pod's own IPs, for `GW_IPV6=auto`: `POD_IPS` (the downward API's `status.podIPs`)
/// when given, else the global addresses of the calling thread's network namespace.
/// Every entry that is left out is logged with its reason; empty when nothing is known.
pub fn pod_ips(pod_ips_env: Option<&str>) -> Vec<std::net::IpAddr> {
    if let Some(v) = pod_ips_env.filter(|v| !v.trim().is_empty()) {
        let (ips, bad) = crate::config::parse_pod_ips(v);
        for why in bad {
            tracing::warn!(reason = %why, "skipped");
        }
        return ips;
    }
    match netrules::netlink::global_addresses() {
        Ok(ips) => ips,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the Pod's addresses; GW_IPV6=auto maps IPv4 only");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders", "namespace": "shop"},
   "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}},
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders-preview"},
   "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 80, "targetPort": "http"}]}}
]}"#;

    #[test]
    fn reads_kubectl_json_and_yaml() {
        let s = parse_services(JSON).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].metadata.name.as_deref(), Some("orders-preview"));
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: orders\n  spec:\n    clusterIP: 10.96.0.5\n    ports:\n    - port: 80\n";
        let s = parse_services(yaml).unwrap();
        assert_eq!(
            s[0].spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.5")
        );
        let single = "apiVersion: v1\nkind: Service\nmetadata:\n  name: one\n";
        assert_eq!(parse_services(single).unwrap().len(), 1);
    }

    #[test]
    fn malformed_input_reports_a_position() {
        let broken = JSON.replace("\"port\": 80,", "\"port\": \"eighty\",");
        let e = parse_services(&broken).unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        let e = parse_services("{\"kind\": \"List\", \"items\": [").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_services("kind: List\nitems:\n- kind: Service\n  spec:\n    ports: 7\n")
            .unwrap_err();
        assert!(e.contains('5') || e.to_lowercase().contains("line"), "{e}");
        let e = parse_services("kind: List\nitems:\n- kind: Pod\n").unwrap_err();
        assert!(e.contains("items[0]") && e.contains("Pod"), "{e}");
        assert!(parse_services("").is_err());
        assert!(
            parse_services("kind: Deployment\n")
                .unwrap_err()
                .contains("Deployment")
        );
    }
}
