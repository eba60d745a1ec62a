//! The seam between the webhook plumbing and what gets injected: each ghostwire capability
//! (preview switch today; mesh, gateway, identity later) is one [`Capability`], and adds its
//! containers and volumes through a [`PodPatch`], which turns them into JSON Patch operations
//! that apply to the incoming Pod and refuses names that are already taken.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use std::collections::{BTreeMap, BTreeSet};

/// The prefix of every workload annotation ghostwire reads.
pub const ANNOTATION_PREFIX: &str = "ghostwire.dev/";

/// What the webhook knows about a Pod's workload when a capability decides.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Every `ghostwire.dev/*` annotation in effect: the Pod's over its owners'.
    pub annotations: BTreeMap<String, String>,
    /// The injector's defaults ConfigMap (`GW_*` keys), below the annotations.
    pub defaults: crate::defaults::Values,
    /// The namespace the Pod is created in.
    pub namespace: String,
    /// The Pod's own labels (the seed's mesh opt-in is a label).
    pub labels: BTreeMap<String, String>,
    /// The names of every capability this Pod gets, so that capabilities that meet in one
    /// Pod can adapt to each other (the preview switch becomes a route in the mesh proxy).
    pub wanted: Vec<&'static str>,
}

/// Why a Pod is refused. The message goes back to whoever created the Pod, so it names the
/// annotation (or ConfigMap key) and the value to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("annotation {annotation}={value:?} is invalid: {reason}")]
    Annotation {
        annotation: String,
        value: String,
        reason: String,
    },
    #[error(
        "the injector's defaults ConfigMap has {key}={value:?}, which is invalid: {reason} (fix the ConfigMap or override it with annotation {annotation})"
    )]
    Default {
        key: String,
        value: String,
        reason: String,
        annotation: String,
    },
    #[error(
        "{what} {name:?} already exists in the Pod; ghostwire would add its own (rename yours, or drop the ghostwire.dev/ annotations that ask for injection)"
    )]
    Clash { what: &'static str, name: String },
    #[error("the Pod has no spec")]
    NoSpec,
}

/// Capabilities that program the Pod's network namespace refuse a hostNetwork Pod: there that
/// namespace is the node's own, and their rules or routes would take the node's traffic.
pub(crate) fn deny_host_network(
    pod: &Pod,
    annotation: &str,
    value: &str,
    what: &str,
) -> Result<(), Denial> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Err(Denial::Annotation {
            annotation: annotation.into(),
            value: value.into(),
            reason: format!(
                "the Pod uses hostNetwork: {what} the node's own network namespace; drop the opt-in or hostNetwork"
            ),
        });
    }
    Ok(())
}

/// A capability's knobs as one workload sets them, keyed by env name: by its annotations, and
/// by the injector's defaults ConfigMap below them.
pub struct KnobValues {
    pub given: BTreeMap<String, String>,
    pub defaults: BTreeMap<String, String>,
}

impl KnobValues {
    pub fn of(table: &[knobs::Knob], w: &Workload) -> Self {
        let mut values = KnobValues {
            given: BTreeMap::new(),
            defaults: BTreeMap::new(),
        };
        for k in table {
            if let Some(v) = k.annotation.and_then(|a| w.annotations.get(a)) {
                values.given.insert(k.env.to_string(), v.clone());
            }
            if let Some(v) = w.defaults.get(k.env) {
                values.defaults.insert(k.env.to_string(), v.clone());
            }
        }
        values
    }

    /// A value the capability's settings refused, named where the user wrote it: the
    /// annotation, or the ConfigMap key (with the annotation that would override it).
    pub fn denial(&self, table: &[knobs::Knob], e: knobs::ConfigError) -> Denial {
        let annotation = table
            .iter()
            .find(|k| k.env == e.knob)
            .and_then(|k| k.annotation)
            .unwrap_or("(none)");
        if self.given.contains_key(e.knob) {
            Denial::Annotation {
                annotation: annotation.into(),
                value: e.value,
                reason: e.reason,
            }
        } else {
            Denial::Default {
                key: e.knob.into(),
                value: e.value,
                reason: e.reason,
                annotation: annotation.into(),
            }
        }
    }

    /// The containers' env: the ConfigMap's values with the annotations' over them.
    pub fn env(self, table: &'static [knobs::Knob]) -> BTreeMap<&'static str, String> {
        let mut env = BTreeMap::new();
        for (k, v) in self.defaults.into_iter().chain(self.given) {
            if let Some(knob) = table.iter().find(|n| n.env == k) {
                env.insert(knob.env, v);
            }
        }
        env
    }
}

/// One thing the injector can add to a Pod.
pub trait Capability: Send + Sync {
    /// Stable name, recorded in the `ghostwire.dev/injected` annotation so reinvocations and
    /// re-created Pods are not injected twice.
    fn name(&self) -> &'static str;
    /// The `ghostwire.dev/*` annotations this capability reads (others draw a warning).
    fn annotations(&self) -> Vec<&'static str>;
    /// Whether the workload asks for this capability; a malformed opt-in is a denial.
    fn wants(&self, workload: &Workload) -> Result<bool, Denial>;
    /// Adds this capability's pieces to the Pod.
    fn patch(&self, pod: &Pod, workload: &Workload, out: &mut PodPatch) -> Result<(), Denial>;
}

/// JSON Patch operations against one Pod, built by name-checked additions.
///
/// Paths are only valid against the Pod as it came in, so every operation appends (`/-`) or
/// creates a missing list or map whole; the names already in the Pod, plus those added, are
/// tracked so that nothing is added twice.
///
/// **Container order** (the same for every capability and every combination): the Pod's own
/// init containers and containers keep their places; injected init containers come after the
/// Pod's own, first every capability's run-to-completion init containers (kernel and file
/// set-up, validators), then every capability's native sidecars (`restartPolicy: Always`);
/// within each group, capabilities in the injector's order (gateway client, preview switch,
/// mesh) and each capability's containers in the order it added them. Injected regular
/// containers come after the Pod's own. So every sidecar starts after all set-up is done, and
/// the app's containers start after every native sidecar is started (and ready, where it has
/// a startup probe).
#[derive(Debug)]
pub struct PodPatch {
    ops: Vec<PatchOperation>,
    /// Injected init containers, emitted in the documented order by [`PodPatch::into_parts`]:
    /// (native sidecar?, container).
    inits: Vec<(bool, serde_json::Value)>,
    /// Lists and maps that exist (in the Pod or made by an earlier operation).
    present: BTreeSet<&'static str>,
    containers: BTreeSet<String>,
    volumes: BTreeSet<String>,
    ports: BTreeSet<(i32, String)>,
    warnings: Vec<String>,
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

impl PodPatch {
    pub fn new(pod: &Pod) -> Result<Self, Denial> {
        let spec = pod.spec.as_ref().ok_or(Denial::NoSpec)?;
        let mut present = BTreeSet::from(["containers"]);
        if spec.init_containers.is_some() {
            present.insert("initContainers");
        }
        if spec.volumes.is_some() {
            present.insert("volumes");
        }
        if pod.metadata.annotations.is_some() {
            present.insert("annotations");
        }
        let all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        let ports = all
            .clone()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (p.container_port, p.protocol.clone().unwrap_or("TCP".into())))
            .collect();
        let containers = all
            .map(|c| c.name.clone())
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone()),
            )
            .collect();
        let volumes = spec.volumes.iter().flatten().map(|v| v.name.clone());
        Ok(PodPatch {
            ops: Vec::new(),
            inits: Vec::new(),
            present,
            containers,
            volumes: volumes.collect(),
            ports,
            warnings: Vec::new(),
        })
    }

    /// Appends to a list under `parent`, creating the list if the Pod has none.
    fn append(&mut self, parent: &'static str, list: &'static str, value: serde_json::Value) {
        let op = if self.present.insert(list) {
            AddOperation {
                path: ptr(&[parent, list]),
                value: serde_json::Value::Array(vec![value]),
            }
        } else {
            AddOperation {
                path: ptr(&[parent, list, "-"]),
                value,
            }
        };
        self.ops.push(PatchOperation::Add(op));
    }

    fn claim_container(&mut self, c: &Container) -> Result<(), Denial> {
        if !self.containers.insert(c.name.clone()) {
            return Err(Denial::Clash {
                what: "container",
                name: c.name.clone(),
            });
        }
        for p in c.ports.iter().flatten() {
            let key = (p.container_port, p.protocol.clone().unwrap_or("TCP".into()));
            if !self.ports.insert(key) {
                return Err(Denial::Clash {
                    what: "container port",
                    name: p.container_port.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Adds an init container; one with `restartPolicy: Always` is a native sidecar and goes
    /// after every run-to-completion init container (see the order on [`PodPatch`]).
    pub fn add_init_container(&mut self, c: Container) -> Result<(), Denial> {
        self.claim_container(&c)?;
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        self.inits.push((sidecar, to_value(&c)));
        Ok(())
    }

    pub fn add_container(&mut self, c: Container) -> Result<(), Denial> {
        self.claim_container(&c)?;
        self.append("spec", "containers", to_value(&c));
        Ok(())
    }

    pub fn add_volume(&mut self, v: Volume) -> Result<(), Denial> {
        if !self.volumes.insert(v.name.clone()) {
            return Err(Denial::Clash {
                what: "volume",
                name: v.name.clone(),
            });
        }
        self.append("spec", "volumes", to_value(&v));
        Ok(())
    }

    /// Sets an annotation (JSON Patch `add` replaces an existing member).
    pub fn set_annotation(&mut self, key: &str, value: &str) {
        let op = if self.present.insert("annotations") {
            AddOperation {
                path: ptr(&["metadata", "annotations"]),
                value: serde_json::json!({ key: value }),
            }
        } else {
            AddOperation {
                path: ptr(&["metadata", "annotations", key]),
                value: value.into(),
            }
        };
        self.ops.push(PatchOperation::Add(op));
    }

    /// Sets a field of the Pod's spec (`dnsPolicy`, `dnsConfig`, …), replacing what is there.
    pub fn set_spec(&mut self, key: &str, value: serde_json::Value) {
        self.ops.push(PatchOperation::Add(AddOperation {
            path: ptr(&["spec", key]),
            value,
        }));
    }

    /// A warning for the client that created the Pod (`kubectl` prints it).
    pub fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.inits.is_empty()
    }

    pub fn into_parts(mut self) -> (json_patch::Patch, Vec<String>) {
        let mut inits = std::mem::take(&mut self.inits);
        // Stable: set-up containers first, then sidecars, each group in the order added.
        inits.sort_by_key(|(sidecar, _)| *sidecar);
        for (_, c) in inits {
            self.append("spec", "initContainers", c);
        }
        (json_patch::Patch(self.ops), self.warnings)
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    // k8s-openapi types serialize infallibly (string keys, no non-finite floats).
    serde_json::to_value(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn apply(p: &Pod, patch: PodPatch) -> Pod {
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, &patch.into_parts().0).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn container(name: &str, port: Option<i32>) -> Container {
        serde_json::from_value(json!({
            "name": name,
            "ports": port.map(|p| vec![json!({"containerPort": p})]),
        }))
        .unwrap()
    }

    #[test]
    fn creates_missing_lists_then_appends() {
        let p = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}));
        let mut patch = PodPatch::new(&p).unwrap();
        patch.add_init_container(container("i1", None)).unwrap();
        patch.add_init_container(container("i2", None)).unwrap();
        patch.add_container(container("c", Some(9))).unwrap();
        patch
            .add_volume(serde_json::from_value(json!({"name": "v", "emptyDir": {}})).unwrap())
            .unwrap();
        patch.set_annotation("ghostwire.dev/x", "1");
        patch.set_annotation("ghostwire.dev/y", "2");
        let text = serde_json::to_string(&patch.ops).unwrap();
        let out = apply(&p, patch);
        let spec = out.spec.unwrap();
        let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(spec.init_containers.as_deref().unwrap()),
            ["i1", "i2"]
        );
        assert_eq!(names(&spec.containers), ["app", "c"]);
        assert_eq!(spec.volumes.unwrap()[0].name, "v");
        let ann = out.metadata.annotations.unwrap();
        assert_eq!(ann["ghostwire.dev/x"], "1");
        assert_eq!(ann["ghostwire.dev/y"], "2");
        // The `/` of the annotation key is escaped in the pointer.
        assert!(text.contains("ghostwire.dev~1y"), "{text}");
    }

    #[test]
    fn refuses_taken_names_and_ports() {
        let p = pod(json!({"spec": {
            "containers": [{"name": "app", "ports": [{"containerPort": 8081}]}],
            "initContainers": [{"name": "setup"}],
            "ephemeralContainers": [{"name": "debug"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }}));
        let mut patch = PodPatch::new(&p).unwrap();
        for name in ["app", "setup", "debug"] {
            let e = patch.add_container(container(name, None)).unwrap_err();
            assert_eq!(e.to_string().split(' ').next(), Some("container"), "{e}");
        }
        let e = patch.add_container(container("w", Some(8081))).unwrap_err();
        assert!(e.to_string().contains("container port \"8081\""), "{e}");
        let v: Volume = serde_json::from_value(json!({"name": "data", "emptyDir": {}})).unwrap();
        assert!(matches!(
            patch.add_volume(v),
            Err(Denial::Clash { what: "volume", .. })
        ));
        patch.add_init_container(container("new", None)).unwrap();
        assert!(patch.add_container(container("new", None)).is_err());
        assert_eq!(PodPatch::new(&pod(json!({}))).unwrap_err(), Denial::NoSpec);
    }
}
