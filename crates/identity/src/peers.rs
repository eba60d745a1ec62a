//! Whom an attached proxy expects at each address (pure): the routing config its mesh proxy
//! (L4 mode) runs on, from the Pods, Services and EndpointSlices the API reports now.
//!
//! - A Pod IP → the SPIFFE ID of the Pod that owns that IP now, when that Pod speaks mesh
//!   TLS: an opted-in Pod whose agent is running ([`encrypting`]), or a Pod with the mesh
//!   proxy as a sidecar (`mesh_controller::watch::pod_identity`). A Pod IP reused by another
//!   workload therefore expects the new owner's identity, and the old one's certificate
//!   (still valid for its lifetime) fails at that address.
//! - A Service address → its ready endpoints, each with the identity of the Pod behind it
//!   (the mesh controller's own computation, `mesh_controller::watch::desired`): the proxy
//!   picks the endpoint itself and checks that endpoint's identity.
//! - An address claimed by more than one live Pod gets no identity (and is dialled in
//!   plaintext, where policy allows): better than trusting either.

use crate::attach::CONTAINER;
use crate::desired::{Naming, want};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_proxy::config::{Config, ConfigError};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Whether the Pod's attached agent is running (its ephemeral container's state).
pub fn agent_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.ephemeral_container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.name == CONTAINER && c.state.as_ref().is_some_and(|s| s.running.is_some())
            })
        })
}

/// The identity an opted-in, attached Pod's proxy presents, and its IPs.
pub fn encrypting(pod: &Pod, trust_domain: &str) -> Option<(String, Vec<IpAddr>)> {
    if !agent_running(pod) {
        return None;
    }
    // The cluster domain only names DNS SANs, which are not compared here.
    let w = want(
        pod,
        Naming {
            trust_domain,
            cluster_domain: "cluster.local",
        },
    )?;
    Some((w.names.spiffe_id, w.names.ips))
}

fn live_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(st) = pod.status.as_ref() else {
        return vec![];
    };
    if pod.metadata.deletion_timestamp.is_some()
        || matches!(st.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return vec![];
    }
    let mut ips: Vec<IpAddr> = st
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(st.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
    }
    ips
}

/// The L4 proxy's config for the cluster as listed.
pub fn config(
    pods: &[Pod],
    services: &[Service],
    slices: &[EndpointSlice],
    trust_domain: &str,
) -> Result<Config, ConfigError> {
    let mut by_pod: HashMap<(String, String), String> = HashMap::new();
    let mut owners: BTreeMap<IpAddr, Vec<Option<String>>> = BTreeMap::new();
    for p in pods {
        let id = encrypting(p, trust_domain)
            .map(|(id, _)| id)
            .or_else(|| mesh_controller::watch::pod_identity(p, trust_domain));
        if let (Some(id), Some(ns), Some(name)) = (&id, &p.metadata.namespace, &p.metadata.name) {
            by_pod.insert((ns.clone(), name.clone()), id.clone());
        }
        for ip in live_ips(p) {
            owners.entry(ip).or_default().push(id.clone());
        }
    }
    let identity = |ns: &str, pod: &str| by_pod.get(&(ns.to_string(), pod.to_string())).cloned();
    let mut entries = vec![];
    for svc in services {
        let ns = svc.metadata.namespace.as_deref();
        let name = svc.metadata.name.as_deref();
        let mine = slices.iter().filter(|s| {
            s.metadata.namespace.as_deref() == ns
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == name
        });
        entries.extend(mesh_controller::watch::desired(svc, mine, &identity));
    }
    // Services with no ready endpoint have nothing to pick from: the proxy then passes the
    // connection to the Service address as it was.
    entries.retain(|e| e.backends.iter().any(|b| !b.endpoints.is_empty()));
    let mut c = mesh_controller::convert::to_config(&entries)?;
    c.pods = owners
        .into_iter()
        .filter_map(|(ip, ids)| match ids.as_slice() {
            [Some(id)] => Some((ip, id.clone())),
            _ => None,
        })
        .collect();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, sa: &str, ip: &str, encrypt: bool, agent: bool) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "shop", "uid": format!("u-{name}"),
                "annotations": {"ghostwire.dev/encrypt": encrypt.to_string()}},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip}});
        if agent {
            p["status"]["ephemeralContainerStatuses"] = json!([{"name": CONTAINER, "image": "ghostwire", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"running": {}}}]);
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn an_ip_expects_the_identity_of_the_pod_that_owns_it_now() {
        let web = pod("web", "web", "10.244.0.7", true, true);
        let plain = pod("plain", "plain", "10.244.0.8", false, false);
        let unattached = pod("soon", "soon", "10.244.0.9", true, false);
        let c = config(&[web.clone(), plain, unattached], &[], &[], "td").unwrap();
        assert_eq!(
            c.pods,
            BTreeMap::from([(
                "10.244.0.7".parse().unwrap(),
                "spiffe://td/ns/shop/sa/web".to_string()
            )])
        );
        // The IP is reused by another workload: it now expects that one.
        let mut gone = web.clone();
        gone.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let other = pod("other", "other", "10.244.0.7", true, true);
        let c = config(&[gone, other.clone()], &[], &[], "td").unwrap();
        assert_eq!(
            c.pods
                .get(&"10.244.0.7".parse().unwrap())
                .map(String::as_str),
            Some("spiffe://td/ns/shop/sa/other")
        );
        // Two live claims: neither is trusted.
        let c = config(&[web, other], &[], &[], "td").unwrap();
        assert!(c.pods.is_empty());
    }

    #[test]
    fn a_service_address_carries_its_endpoints_identities() {
        let web = pod("web", "web", "10.244.0.7", true, true);
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.244.0.7"], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": "web", "namespace": "shop"}}]}))
        .unwrap();
        let c = config(&[web], std::slice::from_ref(&svc), &[slice], "td").unwrap();
        let s = &c.services[0];
        assert_eq!(s.addresses, ["10.96.0.20:80".parse().unwrap()]);
        assert_eq!(
            s.backends[0].identities[&"10.244.0.7:8080".parse().unwrap()],
            "spiffe://td/ns/shop/sa/web"
        );
        // Without endpoints the Service is left out (passed through).
        let c = config(&[], &[svc], &[], "td").unwrap();
        assert!(c.services.is_empty());
    }
}
