//! Workload annotations live on the Deployment, StatefulSet or Rollout, not on the Pods they
//! create; this walks a Pod's controller chain through the API (Pod → ReplicaSet → Deployment
//! or Rollout; Pod → StatefulSet) and collects the `ghostwire.dev/*` annotations on the way.

use crate::capability::ANNOTATION_PREFIX;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use std::collections::BTreeMap;

/// The controllers followed: (apiVersion, kind, plural). Others end the walk.
const KINDS: &[(&str, &str, &str)] = &[
    ("apps/v1", "ReplicaSet", "replicasets"),
    ("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("argoproj.io/v1alpha1", "Rollout", "rollouts"),
];

/// Pod → ReplicaSet → Deployment is the longest chain followed.
const MAX_DEPTH: usize = 3;

#[derive(Debug, thiserror::Error)]
#[error("reading owner {kind} {namespace}/{name}: {source}")]
pub struct OwnerError {
    kind: String,
    namespace: String,
    name: String,
    #[source]
    source: Box<kube::Error>,
}

/// The `ghostwire.dev/*` annotations of a Pod's controllers, nearest last overriding farthest,
/// so that the caller can lay the Pod's own on top.
pub async fn annotations(
    client: &kube::Client,
    namespace: &str,
    pod: &ObjectMeta,
) -> Result<BTreeMap<String, String>, OwnerError> {
    let mut chain = Vec::new();
    let mut next = controller(pod).cloned();
    while let Some(owner) = next.take() {
        let Some(&(api_version, kind, plural)) = KINDS
            .iter()
            .find(|(v, k, _)| *v == owner.api_version && *k == owner.kind)
        else {
            break;
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let obj = match api.get_opt(&owner.name).await {
            Ok(Some(obj)) => obj,
            // Gone already (or not yet visible): nothing to inherit from it.
            Ok(None) => {
                tracing::debug!(kind, name = %owner.name, "owner not found");
                break;
            }
            Err(source) => {
                return Err(OwnerError {
                    kind: kind.into(),
                    namespace: namespace.into(),
                    name: owner.name.clone(),
                    source: Box::new(source),
                });
            }
        };
        next = controller(&obj.metadata)
            .filter(|_| chain.len() + 1 < MAX_DEPTH)
            .cloned();
        chain.push(ghostwire_annotations(&obj.metadata));
    }
    let mut merged = BTreeMap::new();
    for a in chain.into_iter().rev() {
        merged.extend(a);
    }
    Ok(merged)
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The annotations of one object that ghostwire reads.
pub fn ghostwire_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
