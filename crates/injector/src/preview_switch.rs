//! The preview switch as a [`Capability`]: the `ghostwire init` init container, the
//! `ghostwire watcher` sidecar and the volume they share, configured from the workload's
//! `ghostwire.dev/*` annotations through the switch's own knob table.

use crate::capability::{Capability, Denial, KnobValues, PodPatch, Workload, deny_host_network};
use k8s_openapi::api::core::v1::{Container, Pod, Volume, VolumeMount};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use switch::config::{BACKEND, DNAT_MAP, HTTP_ADDR, KNOBS, LABELS_FILE, MODE, Settings, Sources};

/// The opt-in annotation (the seed's "enable injection").
pub const ENABLED: &str = "ghostwire.dev/enabled";
pub const INIT: &str = "ghostwire-init";
pub const WATCHER: &str = "ghostwire-watcher";
pub const SHARED_VOLUME: &str = "ghostwire-shared";
/// Where the shared volume is mounted; the default `GW_IPTABLES_DNAT_MAP` lives here.
pub const SHARED_PATH: &str = "/shared";
/// The downward-API volume of the Pod's own labels, read by init (`GW_LABELS_FILE`).
pub const PODINFO_VOLUME: &str = "ghostwire-podinfo";
pub const PODINFO_PATH: &str = "/etc/ghostwire/podinfo";
/// Where the ServiceAccount admission plugin mounts the API token.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Whether the watcher goes in as a native sidecar (an init container with
/// `restartPolicy: Always`, so the app starts only once routing matches the label, and Job
/// Pods complete). Forced either way by the injector's `--native-sidecars`, or detected
/// once by a server-side dry-run (see [`crate::sidecars`]); until then, a regular container.
#[derive(Debug, Clone, Default)]
pub struct Sidecars {
    forced: Option<bool>,
    detected: Arc<OnceLock<bool>>,
}

impl Sidecars {
    /// Detect with a dry-run.
    pub fn auto() -> Sidecars {
        Sidecars::default()
    }

    /// Always (`true`) or never (`false`), without asking the API server.
    pub fn forced(native: bool) -> Sidecars {
        Sidecars {
            forced: Some(native),
            detected: Arc::default(),
        }
    }

    /// Whether a dry-run is wanted and has not answered yet.
    pub fn needs_detection(&self) -> bool {
        self.forced.is_none() && self.detected.get().is_none()
    }

    /// Records the dry-run's answer (the first one wins).
    pub fn detected(&self, native: bool) {
        let _ = self.detected.set(native);
    }

    /// Whether to inject the watcher as a native sidecar now.
    pub fn native(&self) -> bool {
        self.forced
            .or_else(|| self.detected.get().copied())
            .unwrap_or(false)
    }
}

/// What the injector's own configuration says about the switch's containers.
#[derive(Debug, Clone)]
pub struct PreviewSwitch {
    pub image: String,
    pub pull_policy: String,
    /// The watcher's HTTP port (`/healthz`, `/readyz`, `/metrics`), set as `GW_HTTP_ADDR`.
    pub watcher_port: u16,
    pub sidecars: Sidecars,
}

impl PreviewSwitch {
    /// The `GW_*` env the workload sets (annotations over ConfigMap defaults), validated by
    /// resolving the switch's settings exactly as the containers will.
    pub fn env(&self, w: &Workload) -> Result<BTreeMap<&'static str, String>, Denial> {
        let values = KnobValues::of(KNOBS, w);
        let sources = Sources {
            cli: values.given.clone(),
            file: values.defaults.clone(),
            pod_namespace: Some(w.namespace.clone()),
            ..Default::default()
        };
        if let Err(e) = Settings::resolve(&sources) {
            return Err(values.denial(KNOBS, e));
        }
        Ok(values.env(KNOBS))
    }

    /// One of the switch's containers: root with NET_ADMIN and nothing else, because the
    /// kernel drops a non-root process's capabilities on exec and Kubernetes sets no
    /// ambient ones; a read-only root filesystem, no privilege escalation. `caps` is
    /// NET_ADMIN, plus NET_RAW only where legacy iptables may be used (it opens a raw socket).
    fn container(
        &self,
        name: &str,
        subcommand: &str,
        env: &[serde_json::Value],
        mounts: &[serde_json::Value],
        caps: &[&str],
    ) -> serde_json::Value {
        json!({
            "name": name,
            "image": self.image,
            "imagePullPolicy": self.pull_policy,
            "args": [subcommand],
            "env": env,
            "volumeMounts": mounts,
            "securityContext": {
                "capabilities": {"add": caps, "drop": ["ALL"]},
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "runAsUser": 0,
                "runAsNonRoot": false,
            },
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "200m", "memory": "64Mi"},
            },
        })
    }
}

/// Where the switch writes its map for this workload (annotation over defaults over built-in);
/// in mesh mode the proxy reads it there.
pub fn map_path(w: &Workload) -> String {
    let knob = KNOBS
        .iter()
        .find(|k| k.env == DNAT_MAP)
        .expect("knob in table");
    knob.annotation
        .and_then(|a| w.annotations.get(a))
        .or_else(|| w.defaults.get(DNAT_MAP))
        .cloned()
        .unwrap_or_else(|| knob.default.to_string())
}

fn downward(name: &str, field: &str) -> serde_json::Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}})
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("the switch's container and volume literals are valid")
}

/// The API token mount of the Pod's own containers. Admission plugins that add it run before
/// webhooks, so containers added here would otherwise have no credentials.
fn token_mount(pod: &Pod) -> Option<VolumeMount> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .find(|m| m.mount_path == TOKEN_PATH)
        .cloned()
}

impl Capability for PreviewSwitch {
    fn name(&self) -> &'static str {
        "preview-switch"
    }

    fn annotations(&self) -> Vec<&'static str> {
        std::iter::once(ENABLED)
            .chain(KNOBS.iter().filter_map(|k| k.annotation))
            .collect()
    }

    fn wants(&self, w: &Workload) -> Result<bool, Denial> {
        match w.annotations.get(ENABLED).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Denial::Annotation {
                annotation: ENABLED.into(),
                value: other.into(),
                reason: "expected \"true\" or \"false\"".into(),
            }),
        }
    }

    fn patch(&self, pod: &Pod, w: &Workload, out: &mut PodPatch) -> Result<(), Denial> {
        deny_host_network(pod, ENABLED, "true", "the switch's rules would change")?;
        // The watcher's address is the injector's to choose: its port is also the probe's
        // and the declared containerPort's, so a GW_HTTP_ADDR default does not apply.
        let mut env = self.env(w)?;
        // With the mesh in the same Pod the switch becomes a route in the proxy: no kernel
        // rules (netfilter would apply only one of the two NAT bindings), so no capabilities.
        let mesh = w.wanted.contains(&"mesh");
        if mesh {
            env.insert(MODE, "mesh".into());
        }
        // Legacy iptables talks to the kernel over a raw socket, which needs NET_RAW;
        // nftables and iptables-nft (and `auto`, which prefers nftables) need NET_ADMIN only.
        let caps: &[&str] = match env.get(BACKEND).map(String::as_str) {
            _ if mesh => &[],
            Some("iptables-legacy" | "iptables") => &["NET_ADMIN", "NET_RAW"],
            _ => &["NET_ADMIN"],
        };
        let knobs: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| *k != HTTP_ADDR)
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        // Only these two containers mount the shared volume, so no other container of the
        // Pod can read or write the map, whatever the emptyDir's file mode.
        let mut mounts = vec![json!({"name": SHARED_VOLUME, "mountPath": SHARED_PATH})];
        match token_mount(pod) {
            Some(m) => mounts.push(serde_json::to_value(m).unwrap_or_default()),
            None => out.warn(format!(
                "ghostwire: no container of this Pod mounts a service account token at {TOKEN_PATH}; {INIT} and {WATCHER} need one to read Services and their Pod"
            )),
        }

        // Init sets the jump from the Pod's own role label, read from a downward-API volume:
        // no API call, no RBAC, and routing matches the label before the app's first packet.
        // POD_IPS: the Pod's own families decide which ClusterIPs are mapped (GW_IPV6=auto).
        let mut init_env = vec![
            downward("POD_NAMESPACE", "metadata.namespace"),
            downward("POD_IPS", "status.podIPs"),
            json!({"name": LABELS_FILE, "value": format!("{PODINFO_PATH}/labels")}),
        ];
        init_env.extend(knobs.iter().filter(|k| k["name"] != LABELS_FILE).cloned());
        let mut init_mounts = mounts.clone();
        init_mounts
            .push(json!({"name": PODINFO_VOLUME, "mountPath": PODINFO_PATH, "readOnly": true}));
        let init: Container =
            from_json(self.container(INIT, "init", &init_env, &init_mounts, caps));

        let mut watcher_env = vec![
            downward("POD_NAME", "metadata.name"),
            downward("POD_NAMESPACE", "metadata.namespace"),
            downward("POD_IPS", "status.podIPs"),
            // Dual-stack: the kubelet probes whichever of the Pod's IPs comes first.
            json!({"name": HTTP_ADDR, "value": format!("[::]:{}", self.watcher_port)}),
        ];
        watcher_env.extend(knobs);
        let mut watcher = self.container(WATCHER, "watcher", &watcher_env, &mounts, caps);
        watcher["ports"] =
            json!([{"name": "gw-watcher", "containerPort": self.watcher_port, "protocol": "TCP"}]);
        watcher["readinessProbe"] = json!({
            "httpGet": {"path": "/healthz", "port": self.watcher_port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        });

        let native = self.sidecars.native();
        if native {
            // A native sidecar: started after init, and the app's containers only once its
            // startup probe says the jump matches the label. The kubelet stops it when the
            // app's containers are done, so Job Pods complete.
            watcher["restartPolicy"] = json!("Always");
            watcher["startupProbe"] = json!({
                "httpGet": {"path": "/readyz", "port": self.watcher_port},
                "periodSeconds": 1,
                "failureThreshold": 120,
            });
        }

        let shared: Volume =
            from_json(json!({"name": SHARED_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}}));
        let podinfo: Volume = from_json(json!({"name": PODINFO_VOLUME, "downwardAPI": {
            "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}));
        out.add_volume(shared)?;
        out.add_volume(podinfo)?;
        out.add_init_container(init)?;
        if native {
            out.add_init_container(from_json(watcher))?;
        } else {
            out.add_container(from_json(watcher))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::PodPatch;

    fn patched(sidecars: Sidecars) -> serde_json::Value {
        let cap = PreviewSwitch {
            image: "gw:1".into(),
            pull_policy: "IfNotPresent".into(),
            watcher_port: 8081,
            sidecars,
        };
        let w = Workload {
            annotations: BTreeMap::from([(ENABLED.to_string(), "true".to_string())]),
            defaults: BTreeMap::new().into(),
            namespace: "shop".into(),
            labels: BTreeMap::new(),
            wanted: vec!["preview-switch"],
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app"}]}
        }))
        .unwrap();
        let mut p = PodPatch::new(&pod).unwrap();
        cap.patch(&pod, &w, &mut p).unwrap();
        let mut doc = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut doc, &p.into_parts().0).unwrap();
        doc
    }

    #[test]
    fn init_reads_the_role_label_from_a_downward_api_volume() {
        let doc = patched(Sidecars::forced(false));
        let spec = &doc["spec"];
        let init = &spec["initContainers"][0];
        assert_eq!(init["name"], INIT);
        assert!(
            init["env"].as_array().unwrap().contains(
                &json!({"name": "GW_LABELS_FILE", "value": "/etc/ghostwire/podinfo/labels"})
            ),
            "{init}"
        );
        assert!(
            init["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == PODINFO_VOLUME && m["mountPath"] == PODINFO_PATH),
            "{init}"
        );
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == PODINFO_VOLUME)
            .unwrap();
        assert_eq!(
            vol["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.labels"
        );
        // Without native sidecars: the watcher is a regular container, as before.
        assert_eq!(spec["containers"][1]["name"], WATCHER);
        assert_eq!(spec["initContainers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_watcher_is_a_native_sidecar_when_the_cluster_has_them() {
        let auto = Sidecars::auto();
        // Not yet detected: a regular container, the safe choice.
        assert!(auto.needs_detection() && !auto.native());
        auto.detected(true);
        assert!(!auto.needs_detection() && auto.native());
        let doc = patched(auto);
        let spec = &doc["spec"];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        let w = &spec["initContainers"][1];
        assert_eq!(spec["initContainers"][0]["name"], INIT);
        assert_eq!(w["name"], WATCHER);
        assert_eq!(w["restartPolicy"], "Always");
        assert_eq!(w["startupProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(w["readinessProbe"]["httpGet"]["path"], "/healthz");
        // Forced off wins over a detection.
        let off = Sidecars::forced(false);
        off.detected(true);
        assert!(!off.native());
    }
}
