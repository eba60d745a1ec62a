//! Decoding through the real types (k8s-openapi) of the built-in resources: a value of the wrong
//! type is a 400, as in the real server, and fields the type does not know are found (for
//! `fieldValidation`) and dropped, as the real server's decoder drops them. The same types give
//! the OpenAPI schemas (their `JsonSchema`, generated from the real API's definitions).

use crate::resources::ResourceType;
use k8s_openapi::schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Outcome of decoding: the object as the type keeps it, and the paths of unknown fields.
pub struct Decoded {
    pub object: Value,
    pub unknown: Vec<String>,
}

fn unknown(input: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (input, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(w) => unknown(v, w, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn through<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Option<Decoded>, String> {
    match serde_json::from_value::<T>(obj.clone()) {
        Ok(t) => {
            let kept = serde_json::to_value(&t).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            unknown(obj, &kept, "", &mut out);
            Ok(Some(Decoded {
                object: kept,
                unknown: out,
            }))
        }
        // A missing required field is a validation error (422), reported later, not a decode error.
        Err(e) if e.to_string().starts_with("missing field") => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Something done with the k8s-openapi type of a built-in kind: decoding an object through it,
/// or generating its schema. One trait, so the kind-to-type table exists once.
pub trait WithType {
    type Out;
    fn with<T: DeserializeOwned + Serialize + JsonSchema>(self) -> Self::Out;
}

/// Calls `f` with the type of a built-in kind; `None` for CRDs and kinds without one.
pub fn with_type<F: WithType>(rt: &ResourceType, f: F) -> Option<F::Out> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, authentication::v1 as authn,
        authorization::v1 as authz, batch::v1 as batch, coordination::v1 as coord,
        core::v1 as core, discovery::v1 as disc, networking::v1 as net, policy::v1 as policy,
        rbac::v1 as rbac, scheduling::v1 as sched,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    if rt.crd.is_some() {
        return None;
    }
    Some(match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "namespaces") => f.with::<core::Namespace>(),
        ("", "services") => f.with::<core::Service>(),
        ("", "pods") => f.with::<core::Pod>(),
        ("", "configmaps") => f.with::<core::ConfigMap>(),
        ("", "secrets") => f.with::<core::Secret>(),
        ("", "serviceaccounts") => f.with::<core::ServiceAccount>(),
        ("", "events") => f.with::<core::Event>(),
        ("", "endpoints") => f.with::<core::Endpoints>(),
        ("", "nodes") => f.with::<core::Node>(),
        ("discovery.k8s.io", "endpointslices") => f.with::<disc::EndpointSlice>(),
        ("apps", "deployments") => f.with::<apps::Deployment>(),
        ("apps", "replicasets") => f.with::<apps::ReplicaSet>(),
        ("apps", "statefulsets") => f.with::<apps::StatefulSet>(),
        ("apps", "daemonsets") => f.with::<apps::DaemonSet>(),
        ("batch", "jobs") => f.with::<batch::Job>(),
        ("coordination.k8s.io", "leases") => f.with::<coord::Lease>(),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => {
            f.with::<adm::MutatingWebhookConfiguration>()
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            f.with::<ext::CustomResourceDefinition>()
        }
        ("", "resourcequotas") => f.with::<core::ResourceQuota>(),
        ("batch", "cronjobs") => f.with::<batch::CronJob>(),
        ("networking.k8s.io", "ingresses") => f.with::<net::Ingress>(),
        ("policy", "poddisruptionbudgets") => f.with::<policy::PodDisruptionBudget>(),
        ("scheduling.k8s.io", "priorityclasses") => f.with::<sched::PriorityClass>(),
        ("rbac.authorization.k8s.io", "roles") => f.with::<rbac::Role>(),
        ("rbac.authorization.k8s.io", "rolebindings") => f.with::<rbac::RoleBinding>(),
        ("rbac.authorization.k8s.io", "clusterroles") => f.with::<rbac::ClusterRole>(),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            f.with::<rbac::ClusterRoleBinding>()
        }
        ("authorization.k8s.io", "selfsubjectaccessreviews") => {
            f.with::<authz::SelfSubjectAccessReview>()
        }
        ("authorization.k8s.io", "selfsubjectrulesreviews") => {
            f.with::<authz::SelfSubjectRulesReview>()
        }
        ("authorization.k8s.io", "subjectaccessreviews") => f.with::<authz::SubjectAccessReview>(),
        ("authorization.k8s.io", "localsubjectaccessreviews") => {
            f.with::<authz::LocalSubjectAccessReview>()
        }
        ("authentication.k8s.io", "tokenreviews") => f.with::<authn::TokenReview>(),
        ("authentication.k8s.io", "selfsubjectreviews") => f.with::<authn::SelfSubjectReview>(),
        _ => return None,
    })
}

struct Decode<'a>(&'a Value);

impl WithType for Decode<'_> {
    type Out = Result<Option<Decoded>, String>;
    fn with<T: DeserializeOwned + Serialize + JsonSchema>(self) -> Self::Out {
        through::<T>(self.0)
    }
}

/// Decodes a built-in object through its type; `Ok(None)` for types without one (CRDs) or when
/// required fields are missing (validation reports those).
pub fn decode(rt: &ResourceType, obj: &Value) -> Result<Option<Decoded>, String> {
    with_type(rt, Decode(obj)).unwrap_or(Ok(None))
}
