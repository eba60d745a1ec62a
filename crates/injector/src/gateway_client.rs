//! The egress gateway's client side as a [`Capability`]: `ghostwire.dev/gateway: <Service>`
//! adds `ghostwire client init` (init container) and `ghostwire client sidecar` (a native
//! sidecar: an init container with `restartPolicy: Always`, so it runs beside the app and
//! starts before it), and points the Pod's DNS at the gateway (`dnsPolicy: None` with the
//! search list and `ndots` that ClusterFirst would give).
//!
//! Settings come from the gateway's `settings.sh` ConfigMap, mounted at `/config` when
//! `ghostwire.dev/gateway-config` names it, and from the injector's defaults ConfigMap (its
//! `VXLAN_IP_NETWORK`, `K8S_DNS_IPS`, … keys, pod-gateway's names), validated here so a bad
//! value denies the Pod instead of failing its init container.

use crate::capability::{Capability, Denial, PodPatch, Workload, deny_host_network};
use gateway::settings::{Raw, Settings};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::json;

/// The opt-in: the gateway's (headless) Service name, `name` or `name.namespace`.
pub const GATEWAY: &str = "ghostwire.dev/gateway";
/// Optional: the ConfigMap holding `settings.sh` (and `nat.conf`), mounted at `/config`.
pub const GATEWAY_CONFIG: &str = "ghostwire.dev/gateway-config";
pub const CLIENT_INIT: &str = "gateway-client-init";
pub const CLIENT_SIDECAR: &str = "gateway-client-sidecar";
pub const CONFIG_VOLUME: &str = "ghostwire-gateway-config";

/// What the injector's own configuration says about the client containers.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    pub image: String,
    pub pull_policy: String,
    pub cluster_domain: String,
    /// The cluster DNS, for `K8S_DNS_IPS` when the defaults do not set it (the seed took the
    /// webhook's own resolv.conf nameservers; so does this).
    pub cluster_dns: Vec<String>,
}

fn dns1123(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl GatewayClient {
    /// The tunnel settings as the client containers will resolve them from the defaults.
    fn settings(&self, w: &Workload) -> Result<Settings, Denial> {
        let defaults = w.defaults.clone();
        let lookup = move |n: &str| defaults.get(n).cloned();
        let raw = Raw::resolve(None, &lookup).map_err(|e| Denial::Default {
            key: "(settings)".into(),
            value: String::new(),
            reason: e.to_string(),
            annotation: GATEWAY.into(),
        })?;
        Settings::from_raw(&raw).map_err(|e| match e {
            gateway::settings::SettingsError::Invalid {
                name,
                value,
                reason,
                ..
            } => Denial::Default {
                key: name.into(),
                value,
                reason,
                annotation: GATEWAY.into(),
            },
            other => Denial::Default {
                key: "(settings)".into(),
                value: String::new(),
                reason: other.to_string(),
                annotation: GATEWAY.into(),
            },
        })
    }

    fn container(
        &self,
        name: &str,
        args: &[&str],
        env: &[serde_json::Value],
        config: bool,
    ) -> serde_json::Value {
        let mut c = json!({
            "name": name,
            "image": self.image,
            "imagePullPolicy": self.pull_policy,
            "args": args,
            "env": env,
            "securityContext": {
                // NET_BIND_SERVICE: the DHCP client binds port 68.
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"], "drop": ["ALL"]},
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsUser": 0,
                "runAsNonRoot": false,
            },
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "200m", "memory": "64Mi"},
            },
        });
        if config {
            c["volumeMounts"] =
                json!([{"name": CONFIG_VOLUME, "mountPath": "/config", "readOnly": true}]);
        }
        c
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Denial> {
    serde_json::from_value(v).map_err(|_| Denial::NoSpec)
}

impl Capability for GatewayClient {
    fn name(&self) -> &'static str {
        "gateway-client"
    }

    fn annotations(&self) -> Vec<&'static str> {
        vec![GATEWAY, GATEWAY_CONFIG]
    }

    fn wants(&self, w: &Workload) -> Result<bool, Denial> {
        let Some(v) = w.annotations.get(GATEWAY) else {
            return Ok(false);
        };
        let mut parts = v.split('.');
        let ok = parts.next().is_some_and(dns1123)
            && parts.next().is_none_or(dns1123)
            && parts.next().is_none();
        if !ok {
            return Err(Denial::Annotation {
                annotation: GATEWAY.into(),
                value: v.clone(),
                reason: "expected the gateway Service's name, `name` or `name.namespace` (lower-case letters, digits, '-')".into(),
            });
        }
        if let Some(c) = w.annotations.get(GATEWAY_CONFIG)
            && !c.split('.').all(dns1123)
        {
            return Err(Denial::Annotation {
                annotation: GATEWAY_CONFIG.into(),
                value: c.clone(),
                reason: "expected a ConfigMap name".into(),
            });
        }
        Ok(true)
    }

    fn patch(&self, pod: &Pod, w: &Workload, out: &mut PodPatch) -> Result<(), Denial> {
        let service = &w.annotations[GATEWAY];
        deny_host_network(
            pod,
            GATEWAY,
            service,
            "client init would send through the tunnel the default route of",
        )?;
        let s = self.settings(w)?;
        let fqdn = if service.contains('.') {
            format!("{service}.svc.{}", self.cluster_domain)
        } else {
            format!("{service}.{}.svc.{}", w.namespace, self.cluster_domain)
        };
        let dns_ips = w
            .defaults
            .get("K8S_DNS_IPS")
            .cloned()
            .unwrap_or_else(|| self.cluster_dns.join(" "));
        let mut env = vec![
            json!({"name": "gateway", "value": fqdn}),
            json!({"name": "K8S_DNS_IPS", "value": dns_ips}),
        ];
        for (k, v) in w.defaults.iter() {
            if k != "K8S_DNS_IPS" && gateway::settings::KNOBS.iter().any(|n| n.env == k) {
                env.push(json!({"name": k, "value": v}));
            }
        }
        let config = w.annotations.get(GATEWAY_CONFIG);
        if let Some(cm) = config {
            out.add_volume(from_json::<Volume>(json!({
                "name": CONFIG_VOLUME,
                "configMap": {"name": cm, "optional": false},
            }))?)?;
        }
        let init: Container =
            from_json(self.container(CLIENT_INIT, &["client", "init"], &env, config.is_some()))?;
        let mut sidecar = self.container(
            CLIENT_SIDECAR,
            &["client", "sidecar"],
            &env,
            config.is_some(),
        );
        sidecar["restartPolicy"] = json!("Always");
        out.add_init_container(init)?;
        out.add_init_container(from_json(sidecar)?)?;
        let d = &self.cluster_domain;
        out.set_spec("dnsPolicy", json!("None"));
        out.set_spec(
            "dnsConfig",
            json!({
                "nameservers": [s.tunnel4.gateway.to_string()],
                "searches": [format!("{}.svc.{d}", w.namespace), format!("svc.{d}"), d.clone()],
                "options": [{"name": "ndots", "value": "5"}],
            }),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cap() -> GatewayClient {
        GatewayClient {
            image: "ghostwire:dev".into(),
            pull_policy: "IfNotPresent".into(),
            cluster_domain: "cluster.local".into(),
            cluster_dns: vec!["10.96.0.10".into()],
        }
    }

    fn workload(ann: &[(&str, &str)], defaults: &[(&str, &str)]) -> Workload {
        Workload {
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            defaults: defaults
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
                .into(),
            namespace: "media".into(),
            ..Default::default()
        }
    }

    fn patched(w: &Workload) -> serde_json::Value {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app"}], "dnsPolicy": "ClusterFirst"}
        }))
        .unwrap();
        let mut p = PodPatch::new(&pod).unwrap();
        cap().patch(&pod, w, &mut p).unwrap();
        let mut doc = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut doc, &p.into_parts().0).unwrap();
        doc
    }

    #[test]
    fn adds_init_native_sidecar_and_dns_through_the_gateway() {
        let w = workload(
            &[
                (GATEWAY, "vpn-gateway"),
                (GATEWAY_CONFIG, "vpn-gateway-settings"),
            ],
            &[("VXLAN_IP_NETWORK", "172.20.0.0/24")],
        );
        assert!(cap().wants(&w).unwrap());
        let doc = patched(&w);
        let spec = &doc["spec"];
        assert_eq!(spec["initContainers"][0]["name"], CLIENT_INIT);
        assert_eq!(spec["initContainers"][1]["name"], CLIENT_SIDECAR);
        assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
        assert_eq!(spec["initContainers"][0]["args"], json!(["client", "init"]));
        assert_eq!(spec["dnsPolicy"], "None");
        assert_eq!(spec["dnsConfig"]["nameservers"], json!(["172.20.0.1"]));
        assert_eq!(
            spec["dnsConfig"]["searches"],
            json!([
                "media.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ])
        );
        let env = &spec["initContainers"][0]["env"];
        assert!(
            env.as_array().unwrap().contains(
                &json!({"name": "gateway", "value": "vpn-gateway.media.svc.cluster.local"})
            )
        );
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "K8S_DNS_IPS", "value": "10.96.0.10"}))
        );
        assert_eq!(
            spec["volumes"][0]["configMap"]["name"],
            "vpn-gateway-settings"
        );
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"][0]["mountPath"],
            "/config"
        );
    }

    #[test]
    fn bad_values_deny_with_their_name() {
        assert!(!cap().wants(&workload(&[], &[])).unwrap());
        let e = cap()
            .wants(&workload(&[(GATEWAY, "Bad_Name")], &[]))
            .unwrap_err();
        assert!(
            e.to_string().contains("ghostwire.dev/gateway=\"Bad_Name\""),
            "{e}"
        );
        let w = workload(&[(GATEWAY, "gw")], &[("VXLAN_ID", "x")]);
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "app"}]}})).unwrap();
        let mut p = PodPatch::new(&pod).unwrap();
        let e = cap().patch(&pod, &w, &mut p).unwrap_err().to_string();
        assert!(e.contains("VXLAN_ID=\"x\""), "{e}");
    }
}
