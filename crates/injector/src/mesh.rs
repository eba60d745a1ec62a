//! The mesh as a [`Capability`]: `ghostwire.dev/mesh: "true"` (or the DIY Service Mesh seed's
//! Pod label `service-mesh: enabled`) adds
//!
//! 1. `ghostwire-proxy-init` (`ghostwire proxy-init`): root with NET_ADMIN, the redirection
//!    rules in one transaction;
//! 2. `ghostwire-proxy-validate` (`ghostwire proxy-init --validate`): as uid 2102, no
//!    capabilities, proves that an outbound connection lands on the outbound port before
//!    anything else runs (it listens there in place of the proxy, so it must come first);
//! 3. `ghostwire-proxy` (`ghostwire proxy`): uid 1337, a native sidecar (an init container with
//!    `restartPolicy: Always` and a startup probe on `/ready`), so the app starts only once the
//!    proxy serves and a Job's Pod completes when its app does. `ghostwire.dev/mesh-native-sidecar:
//!    "false"` makes it a regular container instead, for clusters older than 1.29.
//!
//! `ghostwire.dev/mesh-routes: <ConfigMap>` mounts that ConfigMap's `routes.yaml` as the proxy's
//! routing config (reloaded when the kubelet updates the file).
//!
//! **With the preview switch in the same Pod**, netfilter would apply only the first NAT
//! binding of a connection (the switch's DNAT or the mesh's REDIRECT, never both), and the proxy
//! dials endpoints itself, so the switch's DNAT could not act. The switch then runs in its mesh
//! mode (`GW_SWITCH_MODE=mesh`): no kernel rules; its init and watcher write the pairing and
//! whether it is on (the Pod's role says preview) to the shared volume, and the proxy, which
//! mounts it read-only, sends connections to an active Service's address to its preview.

use crate::capability::{Capability, Denial, KnobValues, PodPatch, Workload, deny_host_network};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use mesh_config::{ADMIN_ADDR, KNOBS, SEED_LABEL, Sources};
use serde_json::json;
use std::collections::BTreeMap;

/// The opt-in annotation.
pub const MESH: &str = "ghostwire.dev/mesh";
/// Optional: the ConfigMap with the proxy's `routes.yaml`.
pub const MESH_ROUTES: &str = "ghostwire.dev/mesh-routes";
/// `"false"`: the proxy as a regular container (clusters without native sidecars).
pub const MESH_NATIVE_SIDECAR: &str = "ghostwire.dev/mesh-native-sidecar";
pub const PROXY_INIT: &str = "ghostwire-proxy-init";
pub const PROXY_VALIDATE: &str = "ghostwire-proxy-validate";
pub const PROXY: &str = "ghostwire-proxy";
pub const ROUTES_VOLUME: &str = "ghostwire-mesh-routes";
/// The trust domain of the identities the injector names: the controller's default
/// (`GW_CONTROLLER_TRUST_DOMAIN`). A controller with another one needs `GW_MESH_IDENTITY` set
/// per workload.
const TRUST_DOMAIN: &str = "cluster.local";

/// The projected token the proxy presents to the controller.
pub const TOKEN_VOLUME: &str = "ghostwire-mesh-token";
/// Where the routes ConfigMap is mounted in the proxy.
pub const ROUTES_PATH: &str = "/etc/ghostwire/mesh";
/// The proxy's own Pod name (downward API), for [`mesh_config::AI_POD`].
pub const POD_NAME_ENV: &str = "GW_POD_NAME";
/// The uid the validator runs as: neither root nor the proxy's (as linkerd2-proxy-init's).
pub const VALIDATOR_UID: i64 = 2102;

/// What the injector's own configuration says about the mesh's containers.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub image: String,
    pub pull_policy: String,
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("the mesh's container and volume literals are valid")
}

fn flag(w: &Workload, annotation: &str) -> Result<Option<bool>, Denial> {
    match w.annotations.get(annotation).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(Denial::Annotation {
            annotation: annotation.into(),
            value: other.into(),
            reason: "expected \"true\" or \"false\"".into(),
        }),
    }
}

impl Mesh {
    /// The mesh knobs the workload sets (annotations over ConfigMap defaults), validated by
    /// resolving them as proxy-init and the proxy will.
    pub fn env(&self, w: &Workload) -> Result<BTreeMap<&'static str, String>, Denial> {
        let values = KnobValues::of(KNOBS, w);
        let sources = Sources {
            given: values.given.clone(),
            file: values.defaults.clone(),
            ..Sources::default()
        };
        if let Err(e) = sources
            .init_settings()
            .and_then(|_| sources.proxy_settings())
        {
            return Err(values.denial(KNOBS, e));
        }
        Ok(values.env(KNOBS))
    }

    fn container(&self, name: &str, args: &[&str], env: &[serde_json::Value]) -> serde_json::Value {
        json!({
            "name": name,
            "image": self.image,
            "imagePullPolicy": self.pull_policy,
            "args": args,
            "env": env,
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "1", "memory": "128Mi"},
            },
        })
    }
}

impl Capability for Mesh {
    fn name(&self) -> &'static str {
        "mesh"
    }

    fn annotations(&self) -> Vec<&'static str> {
        [MESH, MESH_ROUTES, MESH_NATIVE_SIDECAR]
            .into_iter()
            .chain([mesh_config::ai::AI, mesh_config::ai::MODEL[0]])
            .chain(KNOBS.iter().filter_map(|k| k.annotation))
            .collect()
    }

    fn wants(&self, w: &Workload) -> Result<bool, Denial> {
        let seed = w.labels.get(SEED_LABEL.0).map(String::as_str) == Some(SEED_LABEL.1);
        Ok(match flag(w, MESH)? {
            Some(on) => on,
            None => seed,
        })
    }

    fn patch(&self, pod: &Pod, w: &Workload, out: &mut PodPatch) -> Result<(), Denial> {
        deny_host_network(
            pod,
            MESH,
            "true",
            "proxy-init would redirect the traffic of",
        )?;
        let native = flag(w, MESH_NATIVE_SIDECAR)?.unwrap_or(true);
        let knobs = self.env(w)?;
        let settings = Sources {
            given: knobs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Sources::default()
        };
        let proxy_settings = settings.proxy_settings().expect("validated by Mesh::env");
        let admin_port = proxy_settings.admin_addr.port();
        let caps: &[&str] = match knobs.get(mesh_config::BACKEND).map(String::as_str) {
            Some("iptables-legacy" | "iptables") => &["NET_ADMIN", "NET_RAW"],
            _ => &["NET_ADMIN"],
        };
        let env: Vec<_> = knobs
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();

        let mut init = self.container(PROXY_INIT, &["proxy-init"], &env);
        init["securityContext"] = json!({
            "capabilities": {"add": caps, "drop": ["ALL"]},
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": 0,
            "runAsNonRoot": false,
        });
        let mut validate = self.container(PROXY_VALIDATE, &["proxy-init", "--validate"], &env);
        validate["securityContext"] = json!({
            "capabilities": {"drop": ["ALL"]},
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": VALIDATOR_UID,
            "runAsGroup": VALIDATOR_UID,
            "runAsNonRoot": true,
        });

        let mut proxy_env = env.clone();
        let mut mounts = Vec::new();
        if let Some(cm) = w.annotations.get(MESH_ROUTES) {
            if !cm.split('.').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }) {
                return Err(Denial::Annotation {
                    annotation: MESH_ROUTES.into(),
                    value: cm.clone(),
                    reason: "expected a ConfigMap name".into(),
                });
            }
            out.add_volume(from_json::<Volume>(json!({
                "name": ROUTES_VOLUME,
                "configMap": {"name": cm, "optional": false},
            })))?;
            mounts.push(json!({"name": ROUTES_VOLUME, "mountPath": ROUTES_PATH, "readOnly": true}));
            proxy_env.retain(|e| e["name"] != mesh_config::CONFIG);
            proxy_env.push(
                json!({"name": mesh_config::CONFIG, "value": format!("{ROUTES_PATH}/routes.yaml")}),
            );
        }
        if !proxy_settings.controller.is_empty()
            && !knobs.contains_key(mesh_config::IDENTITY)
            && !knobs.contains_key(mesh_config::TLS_CERT)
        {
            // The proxy's identity, so that it asks the controller for its certificate and
            // peers dial it with mTLS: the Pod's ServiceAccount in the controller's default
            // trust domain (the controller signs only this name for this Pod's token).
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            proxy_env.push(json!({
                "name": mesh_config::IDENTITY,
                "value": format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{sa}", w.namespace),
            }));
        }
        if !proxy_settings.controller.is_empty() {
            // A token for the mesh's audience only, bound to this Pod, rotated by the kubelet
            // (the proxy reads it again on every connect), where GW_MESH_TOKEN says.
            let path = &proxy_settings.token;
            let (dir, file) = match (path.parent(), path.file_name()) {
                (Some(d), Some(f)) if path.is_absolute() && d != std::path::Path::new("/") => {
                    (d.display().to_string(), f.to_string_lossy().into_owned())
                }
                _ => {
                    return Err(Denial::Annotation {
                        annotation: "ghostwire.dev/mesh-token".into(),
                        value: path.display().to_string(),
                        reason: "expected an absolute file path below a directory, e.g. /var/run/secrets/ghostwire/mesh/token".into(),
                    });
                }
            };
            out.add_volume(from_json::<Volume>(json!({
                "name": TOKEN_VOLUME,
                "projected": {"sources": [{"serviceAccountToken": {
                    "audience": mesh_config::TOKEN_AUDIENCE,
                    "expirationSeconds": 3600,
                    "path": file,
                }}]},
            })))?;
            mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": dir, "readOnly": true}));
        }
        if w.wanted.contains(&"preview-switch") {
            // The switch's shared volume, read-only: the switch writes, the proxy reads.
            mounts.push(json!({
                "name": crate::preview_switch::SHARED_VOLUME,
                "mountPath": crate::preview_switch::SHARED_PATH,
                "readOnly": true,
            }));
            proxy_env.retain(|e| e["name"] != mesh_config::PREVIEW_MAP);
            proxy_env.push(json!({
                "name": mesh_config::PREVIEW_MAP,
                "value": crate::preview_switch::map_path(w),
            }));
        }
        if mesh_config::ai::opted_in(&w.annotations) && !knobs.contains_key(mesh_config::AI_POD) {
            // LLM rewriting: the proxy follows this Pod's annotations and ConfigMap through
            // the API (the Pod's name is only known once it exists: the downward API).
            proxy_env.push(json!({"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
            proxy_env.push(json!({
                "name": mesh_config::AI_POD,
                "value": format!("{}/$({POD_NAME_ENV})", w.namespace),
            }));
        }
        let mut proxy = self.container(PROXY, &["proxy"], &proxy_env);
        proxy["volumeMounts"] = json!(mounts);
        proxy["securityContext"] = json!({
            "capabilities": {"drop": ["ALL"]},
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": proxy_uid(&knobs),
            "runAsGroup": proxy_uid(&knobs),
            "runAsNonRoot": true,
        });
        proxy["ports"] =
            json!([{"name": "gw-proxy-admin", "containerPort": admin_port, "protocol": "TCP"}]);
        let probe = |path: &str| json!({"httpGet": {"path": path, "port": admin_port}, "periodSeconds": 1, "failureThreshold": 3});
        proxy["readinessProbe"] = probe("/ready");
        proxy["livenessProbe"] = probe("/live");
        if native {
            proxy["restartPolicy"] = json!("Always");
            proxy["startupProbe"] = json!({"httpGet": {"path": "/ready", "port": admin_port}, "periodSeconds": 1, "failureThreshold": 120});
        }
        out.add_init_container(from_json::<Container>(init))?;
        out.add_init_container(from_json::<Container>(validate))?;
        if native {
            out.add_init_container(from_json::<Container>(proxy))?;
        } else {
            out.add_container(from_json::<Container>(proxy))?;
        }
        // The admin port stays reachable for probes: proxy-init skips it inbound by default;
        // say so if the workload moved it without skipping it.
        let skipped = knobs
            .get(mesh_config::SKIP_INBOUND_PORTS)
            .cloned()
            .unwrap_or_else(|| "4191".into());
        if !skipped
            .split(',')
            .any(|p| p.trim() == admin_port.to_string())
            && knobs.contains_key(ADMIN_ADDR)
        {
            out.warn(format!(
                "ghostwire: the proxy's admin port {admin_port} is not in {}; kubelet probes will go through the proxy",
                mesh_config::SKIP_INBOUND_PORTS
            ));
        }
        Ok(())
    }
}

fn proxy_uid(knobs: &BTreeMap<&'static str, String>) -> i64 {
    knobs
        .get(mesh_config::PROXY_UID)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1337)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Mesh {
        Mesh {
            image: "ghostwire:dev".into(),
            pull_policy: "IfNotPresent".into(),
        }
    }

    fn workload(ann: &[(&str, &str)], labels: &[(&str, &str)]) -> Workload {
        let m = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        Workload {
            annotations: m(ann),
            labels: m(labels),
            namespace: "app-a".into(),
            wanted: vec!["mesh"],
            ..Default::default()
        }
    }

    fn patched(w: &Workload) -> serde_json::Value {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app"}]}
        }))
        .unwrap();
        let mut p = PodPatch::new(&pod).unwrap();
        cap().patch(&pod, w, &mut p).unwrap();
        let mut doc = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut doc, &p.into_parts().0).unwrap();
        doc
    }

    #[test]
    fn opt_in_by_annotation_or_the_seed_label() {
        assert!(cap().wants(&workload(&[(MESH, "true")], &[])).unwrap());
        assert!(
            cap()
                .wants(&workload(&[], &[("service-mesh", "enabled")]))
                .unwrap()
        );
        // The annotation wins over the label either way.
        assert!(
            !cap()
                .wants(&workload(
                    &[(MESH, "false")],
                    &[("service-mesh", "enabled")]
                ))
                .unwrap()
        );
        assert!(
            !cap()
                .wants(&workload(&[], &[("service-mesh", "off")]))
                .unwrap()
        );
        let e = cap().wants(&workload(&[(MESH, "yes")], &[])).unwrap_err();
        assert!(e.to_string().contains("ghostwire.dev/mesh=\"yes\""), "{e}");
    }

    #[test]
    fn init_validator_then_the_proxy_as_a_native_sidecar() {
        let doc = patched(&workload(
            &[(MESH, "true"), (MESH_ROUTES, "app-a-routes")],
            &[],
        ));
        let inits = doc["spec"]["initContainers"].as_array().unwrap();
        let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, [PROXY_INIT, PROXY_VALIDATE, PROXY]);
        assert_eq!(inits[0]["args"], json!(["proxy-init"]));
        assert_eq!(inits[0]["securityContext"]["runAsUser"], 0);
        assert_eq!(inits[1]["args"], json!(["proxy-init", "--validate"]));
        assert_eq!(inits[1]["securityContext"]["runAsUser"], VALIDATOR_UID);
        let proxy = &inits[2];
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 4191);
        assert!(proxy["env"].as_array().unwrap().contains(
            &json!({"name": "GW_MESH_CONFIG", "value": "/etc/ghostwire/mesh/routes.yaml"})
        ));
        assert_eq!(
            doc["spec"]["volumes"][0]["configMap"]["name"],
            "app-a-routes"
        );
        assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_ai_pod_gets_its_own_name_for_the_proxys_policy_watch() {
        let env = |ann: &[(&str, &str)]| {
            let doc = patched(&workload(ann, &[]));
            doc["spec"]["initContainers"][2]["env"]
                .as_array()
                .unwrap()
                .clone()
        };
        let ai = env(&[(MESH, "true"), (mesh_config::ai::AI, "true")]);
        let at = |name: &str| ai.iter().position(|e| e["name"] == name);
        // The Pod's name from the downward API, defined before the knob that expands it.
        let name = at(POD_NAME_ENV).expect("the downward API name");
        assert_eq!(
            ai[name]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        let knob = at(mesh_config::AI_POD).unwrap();
        assert!(name < knob);
        assert_eq!(ai[knob]["value"], "app-a/$(GW_POD_NAME)");
        for ann in [
            &[(MESH, "true")][..],
            &[(MESH, "true"), (mesh_config::ai::AI, "false")],
        ] {
            assert!(
                env(ann)
                    .iter()
                    .all(|e| e["name"] != mesh_config::AI_POD && e["name"] != POD_NAME_ENV),
                "{ann:?}"
            );
        }
        assert!(cap().annotations().contains(&"ghostwire.dev/ai-model"));
    }

    #[test]
    fn a_controller_brings_the_projected_token_for_the_mesh_audience() {
        let doc = patched(&workload(
            &[
                (MESH, "true"),
                (
                    "ghostwire.dev/mesh-controller",
                    "http://ghostwire-controller.ghostwire-system:8090",
                ),
            ],
            &[],
        ));
        let proxy = &doc["spec"]["initContainers"][2];
        assert!(proxy["env"].as_array().unwrap().contains(&json!({
            "name": "GW_MESH_CONTROLLER",
            "value": "http://ghostwire-controller.ghostwire-system:8090"
        })));
        assert!(proxy["volumeMounts"].as_array().unwrap().contains(&json!({
            "name": TOKEN_VOLUME, "mountPath": "/var/run/secrets/ghostwire/mesh", "readOnly": true
        })));
        let volume = doc["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == TOKEN_VOLUME)
            .unwrap();
        let token = &volume["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], mesh_config::TOKEN_AUDIENCE);
        assert_eq!(token["path"], "token");
        // ... and the Pod's identity, so the proxy gets its certificate and peers use mTLS.
        assert!(proxy["env"].as_array().unwrap().contains(&json!({
            "name": "GW_MESH_IDENTITY",
            "value": "spiffe://cluster.local/ns/app-a/sa/default"
        })));
        // Certificates from files (the defaults ConfigMap): no identity is made up.
        let mut w = workload(
            &[
                (MESH, "true"),
                ("ghostwire.dev/mesh-controller", "http://c:8090"),
            ],
            &[],
        );
        w.defaults = std::sync::Arc::new(
            [
                ("GW_MESH_TLS_CERT", "/certs/tls.crt"),
                ("GW_MESH_TLS_KEY", "/certs/tls.key"),
                ("GW_MESH_TLS_ROOTS", "/certs/ca.crt"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let files = patched(&w);
        let env = files["spec"]["initContainers"][2]["env"]
            .as_array()
            .unwrap();
        assert!(
            env.iter().all(|e| e["name"] != "GW_MESH_IDENTITY"),
            "{env:?}"
        );
        // Without a controller there is no token to mount and no identity.
        let plain = patched(&workload(&[(MESH, "true")], &[]));
        let env = plain["spec"]["initContainers"][2]["env"]
            .as_array()
            .unwrap();
        assert!(env.iter().all(|e| e["name"] != "GW_MESH_IDENTITY"));
        assert!(
            plain["spec"]["volumes"]
                .as_array()
                .is_none_or(|v| v.iter().all(|v| v["name"] != TOKEN_VOLUME))
        );
        // A token path the volume cannot be mounted for is refused, naming the annotation.
        let w = workload(
            &[
                (MESH, "true"),
                ("ghostwire.dev/mesh-controller", "http://c:8090"),
                ("ghostwire.dev/mesh-token", "/token"),
            ],
            &[],
        );
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "app"}]}})).unwrap();
        let e = cap()
            .patch(&pod, &w, &mut PodPatch::new(&pod).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("ghostwire.dev/mesh-token"), "{e}");
    }

    #[test]
    fn knobs_from_annotations_and_a_regular_container_when_asked() {
        let doc = patched(&workload(
            &[
                (MESH, "true"),
                (MESH_NATIVE_SIDECAR, "false"),
                ("ghostwire.dev/meshProxyUid", "2000"),
            ],
            &[],
        ));
        let proxy = &doc["spec"]["containers"][1];
        assert_eq!(proxy["name"], PROXY);
        assert_eq!(proxy["securityContext"]["runAsUser"], 2000);
        assert!(proxy.get("restartPolicy").is_none());
        let init = &doc["spec"]["initContainers"][0];
        assert!(
            init["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "GW_MESH_PROXY_UID", "value": "2000"}))
        );
        let bad = workload(
            &[(MESH, "true"), ("ghostwire.dev/meshProxyUid", "root")],
            &[],
        );
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "app"}]}})).unwrap();
        let mut p = PodPatch::new(&pod).unwrap();
        let e = cap().patch(&pod, &bad, &mut p).unwrap_err().to_string();
        assert!(e.contains("ghostwire.dev/meshProxyUid=\"root\""), "{e}");
    }
}
