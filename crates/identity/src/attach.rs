//! `ghostwire attach POD`: adds the agent to a running Pod as an ephemeral container (the
//! `ephemeralcontainers` subresource: the Pod's containers are not restarted), after granting
//! the Pod's ServiceAccount `get` on the Pod's identity Secret (a Role and RoleBinding owned by
//! the Pod).
//!
//! Why the Secret is read through the API and not mounted: an ephemeral container cannot add
//! volumes, and the Pod has no volume holding its Secret (it did not exist when the Pod was
//! made). It may mount the Pod's existing volumes, so it mounts the Pod's ServiceAccount token
//! volume (`kube-api-access-*`) where one exists, and reads the Secret with that token; reading
//! it again every `GW_IDENTITY_RELOAD` is also how a renewed certificate arrives without a
//! restart. The cost: every Pod of that ServiceAccount may read the Secret (it names the same
//! SPIFFE ID, but another Pod's IP).
//!
//! The attached proxy also lists Pods, Services and EndpointSlices (whom to expect at each
//! address, [`crate::peers`]): attach binds the account to the ClusterRole [`PEERS_ROLE`]
//! (`list` only). Cluster-scoped objects cannot be owned by a Pod: the binding stays after it.

use crate::desired::secret_name;
use crate::settings::{
    AGENT_ADMIN_ADDR, IMAGE, INBOUND_PORT, KNOBS, KTLS, LOCAL_PORT, MAX_RESTARTS, MESH_ADMIN_ADDR,
    MESH_TLS, PROXY_UID, REDIRECT_CIDRS, RELOAD, TLS_PORT, TRUST_DOMAIN,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The ephemeral container's name; one per Pod.
pub const CONTAINER: &str = "ghostwire-identity";
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The Pod annotation that asks for kTLS (overrides `GW_IDENTITY_KTLS`).
pub const KTLS_ANNOTATION: &str = "ghostwire.dev/ktls";
/// Pod annotations that override the redirected CIDRs (ours, then the seed's).
const CIDR_ANNOTATIONS: [&str; 2] = ["ghostwire.dev/identity-cidrs", "kube-gateway.io/podcidr"];

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("Pod {0} not found")]
    NotFound(String),
    #[error("Pod {0} has no containers to attach beside")]
    NoContainers(String),
    #[error(
        "Pod {0} uses hostNetwork: its network namespace is the node's, and the agent would redirect the node's own TCP; attach refuses"
    )]
    HostNetwork(String),
    #[error("Pod {pod}: annotation {annotation}={value:?} is invalid: {reason}")]
    Annotation {
        pod: String,
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] knobs::ConfigError),
    #[error("{what} for Pod {pod}: {source}")]
    Api {
        what: &'static str,
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// Pod annotations that win over a knob: their names, the knob, and the check of the value.
type Override = (
    &'static [&'static str],
    &'static str,
    fn(&str) -> Result<(), String>,
);

/// The ephemeral container for `pod` (pure). `given` are the flags/env of `ghostwire attach`;
/// the agent knobs are passed on resolved, so the agent runs with what attach was told.
pub fn container(pod: &Pod, given: &BTreeMap<String, String>) -> Result<Value, AttachError> {
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Err(AttachError::HostNetwork(name));
    }
    let target = spec
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .ok_or_else(|| AttachError::NoContainers(name.clone()))?;
    let file = BTreeMap::new();
    let r = knobs::Resolver {
        table: KNOBS,
        given,
        file: &file,
    };
    let mut env = vec![
        json!({"name": "POD_NAME", "value": pod.metadata.name}),
        json!({"name": "POD_NAMESPACE", "value": pod.metadata.namespace}),
    ];
    for knob in [
        LOCAL_PORT,
        TLS_PORT,
        INBOUND_PORT,
        MESH_TLS,
        MESH_ADMIN_ADDR,
        TRUST_DOMAIN,
        AGENT_ADMIN_ADDR,
        REDIRECT_CIDRS,
        PROXY_UID,
        MAX_RESTARTS,
        RELOAD,
        KTLS,
    ] {
        env.push(json!({"name": knob, "value": r.raw(knob)}));
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let overrides: [Override; 2] = [
        (&CIDR_ANNOTATIONS, REDIRECT_CIDRS, |v| {
            crate::agent::parse_cidrs(v).map(drop)
        }),
        (&[KTLS_ANNOTATION], KTLS, |v| knobs::parse_bool(v).map(drop)),
    ];
    for (names, knob, check) in overrides {
        let Some((annotation, value)) = names
            .iter()
            .find_map(|a| annotations.get(*a).map(|v| (*a, v.clone())))
        else {
            continue;
        };
        check(&value).map_err(|reason| AttachError::Annotation {
            pod: name.clone(),
            annotation,
            value: value.clone(),
            reason,
        })?;
        env.retain(|e| e["name"] != knob);
        env.push(json!({"name": knob, "value": value}));
    }
    // Mount the Pod's own ServiceAccount token volume where it has one.
    let mounts: Vec<Value> = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter(|v| v.name.starts_with("kube-api-access-"))
        .take(1)
        .map(|v| json!({"name": v.name, "mountPath": SA_MOUNT, "readOnly": true}))
        .collect();
    let mut c = json!({
        "name": CONTAINER,
        "image": r.raw(IMAGE),
        "command": ["ghostwire", "identity-agent"],
        "targetContainerName": target,
        "env": env,
        "securityContext": {
            "runAsUser": 0,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]},
        },
    });
    if !mounts.is_empty() {
        c["volumeMounts"] = Value::Array(mounts);
    }
    Ok(c)
}

/// The Role and RoleBinding that let the Pod's ServiceAccount read its Secret, and watch its
/// own Pod and AI ConfigMaps (pure).
pub fn grant(pod: &Pod) -> (Role, RoleBinding) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": name,
        "uid": pod.metadata.uid, "blockOwnerDeletion": false}]);
    let secret = secret_name(&name);
    let meta = json!({"name": secret, "namespace": ns, "ownerReferences": owner,
        "labels": {crate::settings::MANAGED_BY: crate::settings::MANAGER}});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"]},
            // The AI policy's inputs, watched by name (crate::ai).
            {"apiGroups": [""], "resources": ["pods"], "resourceNames": [name], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": crate::ai::configmap_names(&name),
             "verbs": ["get", "list", "watch"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": secret},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]});
    (
        serde_json::from_value(role).unwrap_or_default(),
        serde_json::from_value(binding).unwrap_or_default(),
    )
}

/// The ClusterRole every attached proxy's account is bound to: it reads which Pod owns each
/// address and which endpoints each Service has (cluster-scoped, so not owned by the Pod).
pub const PEERS_ROLE: &str = "ghostwire-identity-peers";

/// The ClusterRole and the Pod's ServiceAccount's binding to it (pure).
pub fn grant_peers(pod: &Pod) -> (ClusterRole, ClusterRoleBinding) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let labels = json!({crate::settings::MANAGED_BY: crate::settings::MANAGER});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": PEERS_ROLE, "labels": labels},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{PEERS_ROLE}-{ns}-{sa}"), "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PEERS_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]});
    (
        serde_json::from_value(role).unwrap_or_default(),
        serde_json::from_value(binding).unwrap_or_default(),
    )
}

/// What `attach` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Added,
    AlreadyThere,
}

/// Grants the Secret, then adds the agent; a Pod that has it already is left as it is.
pub async fn attach(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    given: &BTreeMap<String, String>,
) -> Result<Attached, AttachError> {
    let full = format!("{namespace}/{pod}");
    let api_err = |what| {
        let full = full.clone();
        move |source| AttachError::Api {
            what,
            pod: full,
            source,
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let p = pods
        .get_opt(pod)
        .await
        .map_err(api_err("reading"))?
        .ok_or_else(|| AttachError::NotFound(full.clone()))?;
    let there = p
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == CONTAINER));
    if there {
        return Ok(Attached::AlreadyThere);
    }
    let c = container(&p, given)?;
    let (role, binding) = grant(&p);
    let apply = PatchParams::apply(crate::settings::MANAGER).force();
    let name = secret_name(pod);
    Api::<Role>::namespaced(client.clone(), namespace)
        .patch(&name, &apply, &Patch::Apply(&role))
        .await
        .map_err(api_err("granting its Secret (Role)"))?;
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .patch(&name, &apply, &Patch::Apply(&binding))
        .await
        .map_err(api_err("granting its Secret (RoleBinding)"))?;
    let (role, binding) = grant_peers(&p);
    Api::<ClusterRole>::all(client.clone())
        .patch(PEERS_ROLE, &apply, &Patch::Apply(&role))
        .await
        .map_err(api_err("granting the peer list (ClusterRole)"))?;
    let bname = binding.metadata.name.clone().unwrap_or_default();
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&bname, &apply, &Patch::Apply(&binding))
        .await
        .map_err(api_err("granting the peer list (ClusterRoleBinding)"))?;
    pods.patch_ephemeral_containers(
        pod,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"ephemeralContainers": [c]}})),
    )
    .await
    .map_err(api_err("adding the ephemeral container"))?;
    Ok(Attached::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value, volumes: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "annotations": annotations},
            "spec": {"serviceAccountName": "api", "containers": [{"name": "app"}, {"name": "side"}], "volumes": volumes},
        }))
        .unwrap()
    }

    fn env(c: &Value, name: &str) -> Option<String> {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    }

    #[test]
    fn the_container_targets_the_first_container_and_carries_the_knobs() {
        let given = [(MAX_RESTARTS.to_string(), "1".to_string())].into();
        let c = container(
            &pod(json!({}), json!([{"name": "kube-api-access-x1", "projected": {}}, {"name": "data", "emptyDir": {}}])),
            &given,
        )
        .unwrap();
        assert_eq!(c["targetContainerName"], "app");
        assert_eq!(c["name"], CONTAINER);
        assert_eq!(env(&c, "POD_NAME").as_deref(), Some("web"));
        assert_eq!(env(&c, MAX_RESTARTS).as_deref(), Some("1"));
        assert_eq!(env(&c, LOCAL_PORT).as_deref(), Some("18000"));
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "kube-api-access-x1", "mountPath": SA_MOUNT, "readOnly": true}])
        );
        // The Pod's annotation wins over the flag; a bad one is named.
        let c = container(
            &pod(json!({"kube-gateway.io/podcidr": "10.1.0.0/16"}), json!([])),
            &given,
        )
        .unwrap();
        assert_eq!(env(&c, REDIRECT_CIDRS).as_deref(), Some("10.1.0.0/16"));
        assert!(c.get("volumeMounts").is_none());
        let e = container(
            &pod(json!({"ghostwire.dev/identity-cidrs": "nope"}), json!([])),
            &given,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ghostwire.dev/identity-cidrs=\"nope\""), "{e}");
        // kTLS: off unless asked for; the Pod's annotation wins; a bad value is named.
        assert_eq!(env(&c, KTLS).as_deref(), Some("false"));
        let c = container(&pod(json!({KTLS_ANNOTATION: "true"}), json!([])), &given).unwrap();
        assert_eq!(env(&c, KTLS).as_deref(), Some("true"));
        let e = container(&pod(json!({KTLS_ANNOTATION: "maybe"}), json!([])), &given)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ghostwire.dev/ktls=\"maybe\""), "{e}");
    }

    #[test]
    fn a_host_network_pod_is_refused() {
        let mut p = pod(json!({}), json!([]));
        p.spec.as_mut().unwrap().host_network = Some(true);
        let e = container(&p, &BTreeMap::new()).unwrap_err();
        assert!(matches!(e, AttachError::HostNetwork(_)), "{e}");
        assert!(e.to_string().contains("shop/web uses hostNetwork"), "{e}");
    }

    #[test]
    fn the_grant_is_one_secret_for_the_pods_account_owned_by_the_pod() {
        let (role, binding) = grant(&pod(json!({}), json!([])));
        let rule = &role.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["web-ghostwire-identity".to_string()][..])
        );
        assert_eq!(rule.verbs, ["get"]);
        // Its own Pod and AI ConfigMaps, by name only.
        let rules = role.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[1].resource_names.as_deref(),
            Some(&["web".to_string()][..])
        );
        assert_eq!(
            rules[2].resource_names.as_deref(),
            Some(
                &[
                    "web-ghostwire-ai".to_string(),
                    "web-kube-gateway".to_string()
                ][..]
            )
        );
        assert!(
            rules[1..]
                .iter()
                .all(|r| r.verbs == ["get", "list", "watch"])
        );
        let s = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("ServiceAccount", "api")
        );
        assert_eq!(
            role.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u1"
        );
    }
}
