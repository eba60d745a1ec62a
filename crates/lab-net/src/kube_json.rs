//! Lab Services as the Kubernetes API shows them, for tools that read
//! `kubectl get svc -o json` output (e.g. `ghostwire init --from-file`).

use crate::{Protocol, Service};
use serde_json::{Value, json};

impl Service {
    /// This Service as a dual-stack `v1/Service` object in `namespace`.
    pub fn to_kube_json(&self, namespace: &str) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "port": p.port,
                    "targetPort": p.target_port,
                    "protocol": match p.protocol {
                        Protocol::Tcp => "TCP",
                        Protocol::Udp => "UDP",
                        Protocol::Sctp => "SCTP",
                    },
                })
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": namespace},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.ipv4.to_string(),
                "clusterIPs": [self.ipv4.to_string(), self.ipv6.to_string()],
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "PreferDualStack",
                "ports": ports,
            }
        })
    }
}

/// A `v1/List` of the Services, as `kubectl get svc -o json` prints it.
pub fn service_list(services: &[&Service], namespace: &str) -> String {
    let items: Vec<Value> = services.iter().map(|s| s.to_kube_json(namespace)).collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServicePort;

    #[test]
    fn dual_stack_service_list() {
        let s = Service {
            name: "orders".into(),
            ipv4: "10.96.0.11".parse().unwrap(),
            ipv6: "fd00:10:96::b".parse().unwrap(),
            ports: vec![ServicePort::udp(53, 5353).named("dns")],
        };
        let v: Value = serde_json::from_str(&service_list(&[&s], "shop")).unwrap();
        let item = &v["items"][0];
        assert_eq!(item["metadata"]["namespace"], "shop");
        assert_eq!(item["spec"]["clusterIPs"][1], "fd00:10:96::b");
        assert_eq!(item["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(item["spec"]["ports"][0]["targetPort"], 5353);
    }
}
