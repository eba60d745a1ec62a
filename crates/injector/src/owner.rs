//! Workload annotations live on the Deployment, StatefulSet or Rollout, not on the Pods they
//! create; this walks a Pod's controller chain through the API (Pod → ReplicaSet → Deployment
//! or Rollout; Pod → StatefulSet) and collects the `ghostwire.dev/*` annotations on the way.
//!
//! A rollout admits many Pods of the same ReplicaSet within seconds, so each owner read is
//! kept for a short while (keyed by UID, so a recreated owner is read afresh): a burst of
//! Pods costs one read per owner instead of two API round trips per Pod.

use crate::capability::ANNOTATION_PREFIX;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Entries kept at most; past this, expired ones are dropped first, then everything.
const MAX_CACHED: usize = 4096;

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

/// What is kept of one owner: its ghostwire annotations and its own controller.
#[derive(Clone)]
struct Node {
    annotations: BTreeMap<String, String>,
    controller: Option<OwnerReference>,
}

/// Reads owner chains, keeping each owner for `ttl`.
pub struct Owners {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Node)>>,
}

impl Owners {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Owners {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The kept read of `uid`: fresh only (younger than the TTL), or of any age.
    fn cached(&self, uid: &str, fresh: bool) -> Option<Node> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(uid)
            .filter(|(at, _)| !fresh || at.elapsed() < self.ttl)
            .map(|(_, n)| n.clone())
    }

    fn keep(&self, uid: &str, node: Node) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(uid.to_string(), (Instant::now(), node));
    }

    /// One owner: from the cache, or read through the API. `None`: gone (or not yet visible).
    /// When the read fails, an older read of the same owner (same UID) is used instead: a
    /// rollout during an API hiccup keeps the annotations its first Pods were admitted with.
    async fn node(
        &self,
        namespace: &str,
        owner: &OwnerReference,
        api_version: &str,
        kind: &str,
        plural: &str,
    ) -> Result<Option<Node>, OwnerError> {
        if let Some(n) = self.cached(&owner.uid, true) {
            return Ok(Some(n));
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let obj = match api.get_opt(&owner.name).await {
            Ok(obj) => obj,
            Err(source) => {
                if let Some(n) = self.cached(&owner.uid, false) {
                    tracing::warn!(kind, name = %owner.name, error = %source, "cannot read the owner; using the last read of it");
                    return Ok(Some(n));
                }
                return Err(OwnerError {
                    kind: kind.into(),
                    namespace: namespace.into(),
                    name: owner.name.clone(),
                    source: Box::new(source),
                });
            }
        };
        // A different UID is a newer object of the same name, not this Pod's owner.
        let Some(obj) = obj.filter(|o| o.metadata.uid.as_deref() == Some(owner.uid.as_str()))
        else {
            tracing::debug!(kind, name = %owner.name, "owner not found");
            return Ok(None);
        };
        let node = Node {
            annotations: ghostwire_annotations(&obj.metadata),
            controller: controller(&obj.metadata).cloned(),
        };
        self.keep(&owner.uid, node.clone());
        Ok(Some(node))
    }

    /// The `ghostwire.dev/*` annotations of a Pod's controllers, nearest last overriding
    /// farthest, so that the caller can lay the Pod's own on top.
    pub async fn annotations(
        &self,
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
            let Some(node) = self
                .node(namespace, &owner, api_version, kind, plural)
                .await?
            else {
                break;
            };
            next = node.controller.filter(|_| chain.len() + 1 < MAX_DEPTH);
            chain.push(node.annotations);
        }
        let mut merged = BTreeMap::new();
        for a in chain.into_iter().rev() {
            merged.extend(a);
        }
        Ok(merged)
    }
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
