//! The resource types the server serves: the built-in ones and those CustomResourceDefinitions
//! add at run time. Discovery, routing and storage all read this one registry.

use crate::scale::ScalePaths;
use std::sync::{Arc, RwLock};

/// One served resource (a group/version/plural), as discovery describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served below an object (`status`, `ephemeralcontainers`, `token`, …).
    pub subresources: Vec<String>,
    /// Field selector labels beyond `metadata.name`/`metadata.namespace` (as the real type registers).
    pub field_labels: Vec<String>,
    /// Set for types defined by a CustomResourceDefinition (its name).
    pub crd: Option<String>,
    /// Where the `scale` subresource reads and writes replicas (types that serve it).
    pub scale: Option<ScalePaths>,
    /// A custom type's Table columns after Name (its CRD's `additionalPrinterColumns`).
    pub printer_columns: Vec<PrinterColumn>,
}

/// One of a CRD version's `additionalPrinterColumns`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    /// integer, number, string, boolean or date.
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s == "status")
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if crate::authz::is_review(self) {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    sub: &'static [&'static str],
    fields: &'static [&'static str],
}

const ALL: &[&str] = &["all"];

#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    Builtin { group: "", version: "v1", resource: "namespaces", kind: "Namespace", namespaced: false, short: &["ns"], sub: &["status", "finalize"], fields: &["status.phase"] },
    Builtin { group: "", version: "v1", resource: "services", kind: "Service", namespaced: true, short: &["svc"], sub: &["status"], fields: &[] },
    Builtin { group: "", version: "v1", resource: "pods", kind: "Pod", namespaced: true, short: &["po"], sub: &["status", "ephemeralcontainers"], fields: &["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"] },
    Builtin { group: "", version: "v1", resource: "configmaps", kind: "ConfigMap", namespaced: true, short: &["cm"], sub: &[], fields: &[] },
    Builtin { group: "", version: "v1", resource: "secrets", kind: "Secret", namespaced: true, short: &[], sub: &[], fields: &["type"] },
    Builtin { group: "", version: "v1", resource: "serviceaccounts", kind: "ServiceAccount", namespaced: true, short: &["sa"], sub: &["token"], fields: &[] },
    Builtin { group: "", version: "v1", resource: "events", kind: "Event", namespaced: true, short: &["ev"], sub: &[], fields: &["involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"] },
    Builtin { group: "", version: "v1", resource: "endpoints", kind: "Endpoints", namespaced: true, short: &["ep"], sub: &[], fields: &[] },
    Builtin { group: "", version: "v1", resource: "nodes", kind: "Node", namespaced: false, short: &["no"], sub: &["status"], fields: &["spec.unschedulable"] },
    Builtin { group: "discovery.k8s.io", version: "v1", resource: "endpointslices", kind: "EndpointSlice", namespaced: true, short: &[], sub: &[], fields: &[] },
    Builtin { group: "apps", version: "v1", resource: "deployments", kind: "Deployment", namespaced: true, short: &["deploy"], sub: &["status", "scale"], fields: &[] },
    Builtin { group: "apps", version: "v1", resource: "replicasets", kind: "ReplicaSet", namespaced: true, short: &["rs"], sub: &["status", "scale"], fields: &[] },
    Builtin { group: "apps", version: "v1", resource: "statefulsets", kind: "StatefulSet", namespaced: true, short: &["sts"], sub: &["status", "scale"], fields: &[] },
    Builtin { group: "apps", version: "v1", resource: "daemonsets", kind: "DaemonSet", namespaced: true, short: &["ds"], sub: &["status"], fields: &[] },
    Builtin { group: "batch", version: "v1", resource: "jobs", kind: "Job", namespaced: true, short: &[], sub: &["status"], fields: &[] },
    Builtin { group: "coordination.k8s.io", version: "v1", resource: "leases", kind: "Lease", namespaced: true, short: &[], sub: &[], fields: &[] },
    Builtin { group: "admissionregistration.k8s.io", version: "v1", resource: "mutatingwebhookconfigurations", kind: "MutatingWebhookConfiguration", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "apiextensions.k8s.io", version: "v1", resource: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false, short: &["crd", "crds"], sub: &["status"], fields: &[] },
    Builtin { group: "", version: "v1", resource: "resourcequotas", kind: "ResourceQuota", namespaced: true, short: &["quota"], sub: &["status"], fields: &[] },
    Builtin { group: "batch", version: "v1", resource: "cronjobs", kind: "CronJob", namespaced: true, short: &["cj"], sub: &["status"], fields: &[] },
    Builtin { group: "networking.k8s.io", version: "v1", resource: "ingresses", kind: "Ingress", namespaced: true, short: &["ing"], sub: &["status"], fields: &[] },
    Builtin { group: "policy", version: "v1", resource: "poddisruptionbudgets", kind: "PodDisruptionBudget", namespaced: true, short: &["pdb"], sub: &["status"], fields: &[] },
    Builtin { group: "scheduling.k8s.io", version: "v1", resource: "priorityclasses", kind: "PriorityClass", namespaced: false, short: &["pc"], sub: &[], fields: &[] },
    Builtin { group: "rbac.authorization.k8s.io", version: "v1", resource: "roles", kind: "Role", namespaced: true, short: &[], sub: &[], fields: &[] },
    Builtin { group: "rbac.authorization.k8s.io", version: "v1", resource: "rolebindings", kind: "RoleBinding", namespaced: true, short: &[], sub: &[], fields: &[] },
    Builtin { group: "rbac.authorization.k8s.io", version: "v1", resource: "clusterroles", kind: "ClusterRole", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "rbac.authorization.k8s.io", version: "v1", resource: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "authorization.k8s.io", version: "v1", resource: "selfsubjectaccessreviews", kind: "SelfSubjectAccessReview", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "authorization.k8s.io", version: "v1", resource: "selfsubjectrulesreviews", kind: "SelfSubjectRulesReview", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "authorization.k8s.io", version: "v1", resource: "subjectaccessreviews", kind: "SubjectAccessReview", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "authorization.k8s.io", version: "v1", resource: "localsubjectaccessreviews", kind: "LocalSubjectAccessReview", namespaced: true, short: &[], sub: &[], fields: &[] },
    Builtin { group: "authentication.k8s.io", version: "v1", resource: "tokenreviews", kind: "TokenReview", namespaced: false, short: &[], sub: &[], fields: &[] },
    Builtin { group: "authentication.k8s.io", version: "v1", resource: "selfsubjectreviews", kind: "SelfSubjectReview", namespaced: false, short: &[], sub: &[], fields: &[] },
];

/// Kinds that `kubectl get all` covers (the `all` category).
const IN_ALL: &[&str] = &[
    "pods",
    "services",
    "deployments",
    "replicasets",
    "statefulsets",
    "daemonsets",
    "jobs",
];

/// The served resource types; CRDs add and remove theirs while the server runs.
#[derive(Debug)]
pub struct Registry {
    types: RwLock<Vec<Arc<ResourceType>>>,
}

impl Registry {
    pub fn builtin() -> Self {
        let types = BUILTINS
            .iter()
            .map(|b| {
                Arc::new(ResourceType {
                    group: b.group.into(),
                    version: b.version.into(),
                    resource: b.resource.into(),
                    singular: b.kind.to_lowercase(),
                    kind: b.kind.into(),
                    namespaced: b.namespaced,
                    short_names: b.short.iter().map(|s| s.to_string()).collect(),
                    categories: if IN_ALL.contains(&b.resource) {
                        ALL.iter().map(|s| s.to_string()).collect()
                    } else {
                        vec![]
                    },
                    subresources: b.sub.iter().map(|s| s.to_string()).collect(),
                    field_labels: b.fields.iter().map(|s| s.to_string()).collect(),
                    crd: None,
                    scale: b.sub.contains(&"scale").then(ScalePaths::builtin),
                    printer_columns: vec![],
                })
            })
            .collect();
        Registry {
            types: RwLock::new(types),
        }
    }

    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().expect("registry lock").clone()
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<Arc<ResourceType>> {
        self.types
            .read()
            .expect("registry lock")
            .iter()
            .find(|t| t.group == group && t.version == version && t.resource == resource)
            .cloned()
    }

    /// The versions served for a group, in the order they were registered (preferred first).
    pub fn versions_of(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for t in self.types.read().expect("registry lock").iter() {
            if t.group == group && !v.contains(&t.version) {
                v.push(t.version.clone());
            }
        }
        v
    }

    /// Replaces the types served for one CRD (an empty list stops serving it).
    pub fn set_crd(&self, crd: &str, served: Vec<ResourceType>) {
        let mut types = self.types.write().expect("registry lock");
        types.retain(|t| t.crd.as_deref() != Some(crd));
        types.extend(served.into_iter().map(Arc::new));
    }
}
