//! The endpoints controller: one EndpointSlice per Service and address family, listing the Pods
//! its selector matches with their readiness, as kube-controller-manager's EndpointSlice
//! controller does. The `kubernetes` Service's slice points at the API relay on the node, as
//! kube-apiserver maintains it with its own address.
//!
//! Pure: Services and Pods (JSON) in, desired slices out; the controller loop in `lib.rs` diffs
//! them against the slices it owns and writes the difference.

use crate::util::{arr, str_of};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `endpointslice.kubernetes.io/managed-by` of the slices this controller owns.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Where the API relay listens in the node namespace (the `kubernetes` Service's endpoint).
pub const API_RELAY_PORT: u16 = 6443;

fn selects(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    selector
        .iter()
        .all(|(k, v)| pod["metadata"]["labels"].get(k) == Some(v))
}

fn condition(pod: &Value, ty: &str) -> bool {
    arr(pod, "/status/conditions")
        .iter()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

/// The container port named `name` in `pod`.
fn named_port(pod: &Value, name: &str, protocol: &str) -> Option<u64> {
    arr(pod, "/spec/containers").iter().find_map(|c| {
        arr(c, "/ports").iter().find_map(|p| {
            (p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == protocol)
                .then(|| p["containerPort"].as_u64())
                .flatten()
        })
    })
}

fn slice(svc: &Value, name: &str, family: &str, ports: Vec<Value>, endpoints: Vec<Value>) -> Value {
    let ns = str_of(svc, "/metadata/namespace");
    let svc_name = str_of(svc, "/metadata/name");
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/service-name".into(), json!(svc_name));
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        json!(MANAGED_BY),
    );
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc_name,
                                 "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// The node whose Pods the slices list.
#[derive(Debug, Clone, Copy)]
pub struct NodeRef<'a> {
    pub name: &'a str,
    /// Its bridge address: the API relay's, the `kubernetes` Service's endpoint.
    pub ipv4: std::net::Ipv4Addr,
    /// Its IPv6 bridge address (with `ipv4`, cluster DNS's endpoints).
    pub ipv6: std::net::Ipv6Addr,
    /// Its `topology.kubernetes.io/zone` label, copied into each endpoint's `zone`.
    pub zone: Option<&'a str>,
}

/// Desired slices for all Services, keyed by `namespace/name`.
pub fn desired(services: &[Value], pods: &[Value], node: &NodeRef) -> BTreeMap<String, Value> {
    let node_name = node.name;
    let mut out = BTreeMap::new();
    for svc in services {
        let ns = str_of(svc, "/metadata/namespace");
        let name = str_of(svc, "/metadata/name");
        if ns == "default" && name == "kubernetes" {
            let ports = vec![json!({"name": "https", "port": API_RELAY_PORT, "protocol": "TCP"})];
            let endpoints = vec![json!({"addresses": [node.ipv4.to_string()],
                                        "conditions": {"ready": true, "serving": true, "terminating": false}})];
            out.insert(
                format!("{ns}/kubernetes"),
                slice(svc, "kubernetes", "IPv4", ports, endpoints),
            );
            continue;
        }
        if ns == crate::dns::NAMESPACE
            && name == crate::dns::SERVICE
            && svc["spec"]["selector"]
                .as_object()
                .is_none_or(|s| s.is_empty())
        {
            // The node's own DNS server, on its bridge addresses (no selector, like `kubernetes`).
            let ports = vec![
                json!({"name": "dns", "port": crate::dns::PORT, "protocol": "UDP"}),
                json!({"name": "dns-tcp", "port": crate::dns::PORT, "protocol": "TCP"}),
            ];
            for (family, ip) in [
                ("IPv4", node.ipv4.to_string()),
                ("IPv6", node.ipv6.to_string()),
            ] {
                let endpoints = vec![json!({"addresses": [ip], "nodeName": node_name,
                                            "conditions": {"ready": true, "serving": true, "terminating": false}})];
                let slice_name = format!("{name}-{}", family.to_lowercase());
                out.insert(
                    format!("{ns}/{slice_name}"),
                    slice(svc, &slice_name, family, ports.clone(), endpoints),
                );
            }
            continue;
        }
        let Some(selector) = svc["spec"]["selector"]
            .as_object()
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        if str_of(svc, "/spec/type") == "ExternalName" {
            continue;
        }
        let publish_not_ready = svc["spec"]["publishNotReadyAddresses"] == true;
        let mut matched: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                str_of(p, "/metadata/namespace") == ns
                    && selects(selector, p)
                    && !arr(p, "/status/podIPs").is_empty()
                    && !matches!(str_of(p, "/status/phase"), "Succeeded" | "Failed")
            })
            .collect();
        matched.sort_by_key(|p| str_of(p, "/metadata/name").to_string());
        let ports: Vec<Value> = arr(svc, "/spec/ports")
            .iter()
            .filter_map(|p| {
                let protocol = p["protocol"].as_str().unwrap_or("TCP");
                let number = match &p["targetPort"] {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => match s.parse::<u64>() {
                        Ok(n) => Some(n),
                        Err(_) => matched.iter().find_map(|pod| named_port(pod, s, protocol)),
                    },
                    _ => p["port"].as_u64(),
                }?;
                let mut port = json!({"port": number, "protocol": protocol});
                if let Some(n) = p["name"].as_str() {
                    port["name"] = json!(n);
                }
                Some(port)
            })
            .collect();
        let families: Vec<String> = match arr(svc, "/spec/ipFamilies") {
            [] => vec!["IPv4".to_string()],
            f => f
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        };
        for family in families {
            let endpoints: Vec<Value> = matched
                .iter()
                .filter_map(|pod| {
                    let ip = arr(pod, "/status/podIPs").iter().find_map(|i| {
                        let ip = i["ip"].as_str()?;
                        (ip.contains(':') == (family == "IPv6")).then(|| ip.to_string())
                    })?;
                    let terminating = pod["metadata"]["deletionTimestamp"].is_string();
                    let ready = condition(pod, "Ready");
                    let mut endpoint = json!({
                        "addresses": [ip],
                        "conditions": {"ready": (ready || publish_not_ready) && !terminating,
                                       "serving": ready || publish_not_ready, "terminating": terminating},
                        "nodeName": node_name,
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]},
                    });
                    if let Some(zone) = node.zone {
                        endpoint["zone"] = json!(zone);
                    }
                    // As the EndpointSlice controller: a Pod's hostname names its endpoint when
                    // its subdomain is this Service (what StatefulSets' stable names rest on).
                    let hostname = str_of(pod, "/spec/hostname");
                    if !hostname.is_empty() && str_of(pod, "/spec/subdomain") == name {
                        endpoint["hostname"] = json!(hostname);
                    }
                    Some(endpoint)
                })
                .collect();
            let slice_name = format!("{name}-{}", family.to_lowercase());
            out.insert(
                format!("{ns}/{slice_name}"),
                slice(svc, &slice_name, &family, ports.clone(), endpoints),
            );
        }
    }
    out
}

/// Whether an existing slice already says what `want` says.
pub fn same(existing: &Value, want: &Value) -> bool {
    let list = |v: &Value| if v.is_null() { json!([]) } else { v.clone() };
    existing["addressType"] == want["addressType"]
        && list(&existing["endpoints"]) == list(&want["endpoints"])
        && list(&existing["ports"]) == list(&want["ports"])
        && existing["metadata"]["labels"] == want["metadata"]["labels"]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeRef = NodeRef {
        name: "lab-node",
        ipv4: lab_net::NODE_IPV4,
        ipv6: lab_net::NODE_IPV6,
        zone: None,
    };

    fn pod(name: &str, n: u8, labels: Value, ready: bool) -> Value {
        json!({"metadata": {"namespace": "default", "name": name, "uid": format!("u-{name}"), "labels": labels},
               "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIPs": [{"ip": format!("10.244.0.{n}")}, {"ip": format!("fd00:10:244::{n}")}],
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn svc(families: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": "web", "uid": "s1"},
               "spec": {"selector": {"app": "web"}, "ipFamilies": families,
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}})
    }

    #[test]
    fn endpoints_carry_the_node_zone() {
        let pods = [pod("a", 2, json!({"app": "web"}), true)];
        let zoned = NodeRef {
            zone: Some("east-a"),
            ..NODE
        };
        let got = desired(&[svc(json!(["IPv4"]))], &pods, &zoned);
        assert_eq!(got["default/web-ipv4"]["endpoints"][0]["zone"], "east-a");
        let got = desired(&[svc(json!(["IPv4"]))], &pods, &NODE);
        assert!(
            got["default/web-ipv4"]["endpoints"][0]
                .get("zone")
                .is_none()
        );
    }

    #[test]
    fn slices_follow_selector_and_readiness() {
        let pods = [
            pod("a", 2, json!({"app": "web"}), true),
            pod("b", 3, json!({"app": "web"}), false),
            pod("c", 4, json!({"app": "other"}), true),
        ];
        let got = desired(&[svc(json!(["IPv4", "IPv6"]))], &pods, &NODE);
        assert_eq!(got.len(), 2);
        let v4 = &got["default/web-ipv4"];
        assert_eq!(v4["addressType"], "IPv4");
        assert_eq!(
            v4["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        let eps = v4["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["addresses"], json!(["10.244.0.2"]));
        assert_eq!(eps[0]["conditions"]["ready"], true);
        assert_eq!(eps[1]["conditions"]["ready"], false);
        assert_eq!(
            got["default/web-ipv6"]["endpoints"][0]["addresses"],
            json!(["fd00:10:244::2"])
        );
        assert_eq!(
            v4["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
    }

    #[test]
    fn terminating_pods_are_not_ready() {
        let mut p = pod("a", 2, json!({"app": "web"}), true);
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let got = desired(&[svc(json!(["IPv4"]))], &[p], &NODE);
        let c = &got["default/web-ipv4"]["endpoints"][0]["conditions"];
        assert_eq!(
            c,
            &json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn kubernetes_service_points_at_the_relay() {
        let k = json!({"metadata": {"namespace": "default", "name": "kubernetes", "uid": "k"},
                       "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 6443}]}});
        let got = desired(&[k], &[], &NODE);
        assert_eq!(
            got["default/kubernetes"]["endpoints"][0]["addresses"],
            json!(["10.244.0.1"])
        );
        assert_eq!(got["default/kubernetes"]["ports"][0]["port"], 6443);
    }

    #[test]
    fn unchanged_slices_are_not_rewritten() {
        let got = desired(&[svc(json!(["IPv4"]))], &[], &NODE);
        let want = &got["default/web-ipv4"];
        let mut stored = want.clone();
        stored["endpoints"] = Value::Null;
        stored["metadata"]["resourceVersion"] = json!("7");
        assert!(same(&stored, want));
        stored["addressType"] = json!("IPv6");
        assert!(!same(&stored, want));
    }

    #[test]
    fn hostname_with_matching_subdomain_names_the_endpoint() {
        let mut a = pod("a", 2, json!({"app": "web"}), true);
        a["spec"]["hostname"] = json!("web-0");
        a["spec"]["subdomain"] = json!("web");
        let mut b = pod("b", 3, json!({"app": "web"}), true);
        b["spec"]["hostname"] = json!("web-1");
        b["spec"]["subdomain"] = json!("other");
        let got = desired(&[svc(json!(["IPv4"]))], &[a, b], &NODE);
        let eps = &got["default/web-ipv4"]["endpoints"];
        assert_eq!(eps[0]["hostname"], "web-0");
        assert!(
            eps[1].get("hostname").is_none(),
            "subdomain is another Service"
        );
    }

    #[test]
    fn kube_dns_points_at_the_node() {
        let mut s = crate::dns::service(&lab_net::Network::default());
        s["metadata"]["uid"] = json!("d");
        let got = desired(&[s], &[], &NODE);
        assert_eq!(
            got["kube-system/kube-dns-ipv4"]["endpoints"][0]["addresses"],
            json!(["10.244.0.1"])
        );
        assert_eq!(
            got["kube-system/kube-dns-ipv6"]["endpoints"][0]["addresses"],
            json!(["fd00:10:244::1"])
        );
        assert_eq!(
            got["kube-system/kube-dns-ipv4"]["ports"][1]["protocol"],
            "TCP"
        );
    }

    #[test]
    fn selectorless_services_are_left_alone() {
        let mut s = svc(json!(["IPv4"]));
        s["spec"]["selector"] = Value::Null;
        assert!(desired(&[s], &[pod("a", 2, json!({"app": "web"}), true)], &NODE).is_empty());
    }
}
