//! The controller manager: one level-triggered loop on the node for Deployments, ReplicaSets,
//! StatefulSets, DaemonSets, Jobs and the garbage collector.
//!
//! Each pass lists every kind (pods first, owners last, so an owner that exists is always seen
//! with its dependents), asks each controller's pure `plan` what to change (observe → desired →
//! diff), and applies those changes. A pass runs after any watch event (debounced) and at least
//! every second, for the time-based parts (minReadySeconds, progressDeadlineSeconds). Because a
//! pass reads the API afresh, a write of the previous pass is always seen by the next one.

pub mod daemonset;
pub mod deployment;
pub mod events;
pub mod gc;
pub mod job;
pub mod replicaset;
pub mod statefulset;

use crate::util::str_of;
use futures::StreamExt;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The kinds the controllers read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    ReplicaSet,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Pod,
        Kind::ReplicaSet,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Job,
    ];

    fn gvk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Pod => ("", "v1", "Pod", "pods"),
            Kind::ReplicaSet => ("apps", "v1", "ReplicaSet", "replicasets"),
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
            Kind::DaemonSet => ("apps", "v1", "DaemonSet", "daemonsets"),
            Kind::Job => ("batch", "v1", "Job", "jobs"),
        }
    }

    pub fn name(self) -> &'static str {
        self.gvk().2
    }

    pub fn api_version(self) -> String {
        let (g, v, _, _) = self.gvk();
        if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        }
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    fn resource(self) -> ApiResource {
        let (g, v, k, plural) = self.gvk();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
    }
}

/// One change a controller asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create {
        kind: Kind,
        ns: String,
        obj: Value,
    },
    /// A JSON merge patch of the object (not its status).
    Patch {
        kind: Kind,
        ns: String,
        name: String,
        patch: Value,
    },
    /// A JSON merge patch of the status subresource: `{"status": …}`.
    Status {
        kind: Kind,
        ns: String,
        name: String,
        status: Value,
    },
    Delete {
        kind: Kind,
        ns: String,
        name: String,
        uid: String,
        propagation: Option<&'static str>,
    },
}

/// Everything a pass sees: the objects of each kind and the time.
#[derive(Debug, Default, Clone)]
pub struct World {
    pub objects: BTreeMap<Kind, Vec<Value>>,
    /// Seconds since the epoch.
    pub now: i64,
}

impl World {
    pub fn of(&self, kind: Kind) -> &[Value] {
        self.objects
            .get(&kind)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The objects of `kind` whose controller is `owner`.
    pub fn owned<'a>(&'a self, kind: Kind, owner: &'a Value) -> impl Iterator<Item = &'a Value> {
        let uid = str_of(owner, "/metadata/uid");
        self.of(kind)
            .iter()
            .filter(move |o| controller_uid(o) == Some(uid))
    }
}

/// The uid of an object's controller (its ownerReference with `controller: true`).
pub fn controller_uid(o: &Value) -> Option<&str> {
    o["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

/// An ownerReference naming `owner` as the controller.
pub fn owner_ref(kind: Kind, owner: &Value) -> Value {
    json!([{
        "apiVersion": kind.api_version(), "kind": kind.name(),
        "name": str_of(owner, "/metadata/name"), "uid": str_of(owner, "/metadata/uid"),
        "controller": true, "blockOwnerDeletion": true,
    }])
}

pub fn deleting(o: &Value) -> bool {
    o["metadata"]["deletionTimestamp"].is_string()
}

/// A pod that counts: not terminating and not finished.
pub fn active(p: &Value) -> bool {
    !deleting(p) && !matches!(str_of(p, "/status/phase"), "Succeeded" | "Failed")
}

/// A pod whose Ready condition is True; the time it became so.
pub fn ready_since(p: &Value) -> Option<i64> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .map(|c| lab_api::clock::parse(str_of(c, "/lastTransitionTime")).unwrap_or(0))
}

pub fn ready(p: &Value) -> bool {
    active(p) && ready_since(p).is_some()
}

/// Ready for at least `min_ready` seconds.
pub fn available(p: &Value, min_ready: i64, now: i64) -> bool {
    active(p) && ready_since(p).is_some_and(|t| min_ready <= 0 || now - t >= min_ready)
}

pub fn int(v: &Value, default: i64) -> i64 {
    v.as_i64().unwrap_or(default)
}

/// An int-or-percent against a total (`25%` of 10 is 3 rounding up, 2 rounding down).
pub fn int_or_percent(v: &Value, total: i64, default: &str, round_up: bool) -> i64 {
    let v = if v.is_null() {
        json!(default)
    } else {
        v.clone()
    };
    match &v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// Whether a field is as good as absent (Go clients write `creationTimestamp: null`,
/// `resources: {}`).
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// A JSON value with object keys sorted and empty fields left out, so equal objects print the
/// same.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().filter(|k| !empty(&m[*k])).collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A pod template without the labels controllers add, for comparing templates.
pub fn template_key(t: &Value) -> String {
    let mut t = t.clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove("pod-template-hash");
        l.remove("controller-revision-hash");
        if l.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    if t["metadata"].as_object().is_some_and(|m| m.is_empty()) {
        t.as_object_mut().map(|m| m.remove("metadata"));
    }
    canonical(&t)
}

/// A short, stable name-safe hash of a pod template (FNV-1a over its canonical form, written
/// with the consonants and digits Kubernetes uses so it never spells a word).
pub fn template_hash(t: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template_key(t).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// A pod from a controller's template: its labels (plus `extra_labels`), owned by `owner`.
pub fn pod_from_template(
    kind: Kind,
    owner: &Value,
    template: &Value,
    name: Option<String>,
    extra_labels: &[(&str, String)],
) -> Value {
    let owner_name = str_of(owner, "/metadata/name");
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    for (k, v) in extra_labels {
        meta["labels"][*k] = json!(v);
    }
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{owner_name}-")),
    }
    meta["namespace"] = json!(str_of(owner, "/metadata/namespace"));
    meta["ownerReferences"] = owner_ref(kind, owner);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

/// A condition list with `ty` set; its transition time kept when the status did not change.
pub fn set_condition(
    conditions: &Value,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let mut list: Vec<Value> = conditions.as_array().cloned().unwrap_or_default();
    let old = list.iter().position(|c| c["type"] == ty);
    let transition = old
        .and_then(|i| (list[i]["status"] == status).then(|| list[i]["lastTransitionTime"].clone()))
        .unwrap_or_else(|| json!(now));
    let c = json!({"type": ty, "status": status, "reason": reason, "message": message,
                   "lastTransitionTime": transition, "lastUpdateTime": now});
    match old {
        Some(i) => {
            // Unchanged but for the update time: keep the old one (no write every pass).
            let mut same = list[i].clone();
            same["lastUpdateTime"] = json!(now);
            if same != c {
                list[i] = c;
            }
        }
        None => list.push(c),
    }
    json!(list)
}

/// A status action when `status` differs from the object's.
pub fn status_if_changed(kind: Kind, obj: &Value, status: Value) -> Option<Action> {
    let mut merged = obj["status"].clone();
    if !merged.is_object() {
        merged = json!({});
    }
    for (k, v) in status.as_object().into_iter().flatten() {
        merged[k] = v.clone();
    }
    (merged != obj["status"]).then(|| Action::Status {
        kind,
        ns: str_of(obj, "/metadata/namespace").to_string(),
        name: str_of(obj, "/metadata/name").to_string(),
        status,
    })
}

/// Everything every controller wants changed now.
pub fn plan(world: &World, node: &str) -> Vec<Action> {
    let mut out = gc::plan(world);
    for d in world.of(Kind::Deployment) {
        out.extend(deployment::plan(world, d));
    }
    for rs in world.of(Kind::ReplicaSet) {
        out.extend(replicaset::plan(world, rs));
    }
    for s in world.of(Kind::StatefulSet) {
        out.extend(statefulset::plan(world, s));
    }
    for ds in world.of(Kind::DaemonSet) {
        out.extend(daemonset::plan(world, ds, node));
    }
    for j in world.of(Kind::Job) {
        out.extend(job::plan(world, j));
    }
    out
}

/// Lists every kind, dependents before owners.
async fn observe(client: &kube::Client) -> Result<World, kube::Error> {
    let mut world = World {
        now: lab_api::clock::unix_now(),
        ..Default::default()
    };
    for kind in Kind::ALL {
        let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &kind.resource());
        let list = api.list(&ListParams::default()).await?;
        let items = list
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        world.objects.insert(kind, items);
    }
    Ok(world)
}

/// The controllers' event recorders, one per component (as kube-controller-manager has one
/// per controller).
struct Recorders {
    client: kube::Client,
    by_component: std::sync::Mutex<BTreeMap<&'static str, lab_api::events::Recorder>>,
}

impl Recorders {
    fn record(&self, e: events::Emit) {
        let rec = crate::lock(&self.by_component)
            .entry(e.component)
            .or_insert_with(|| {
                lab_api::events::Recorder::new(self.client.clone(), e.component, None)
            })
            .clone();
        rec.record(&e.object, e.type_, e.reason, &e.message);
    }
}

/// What a pass wrote, for waiting until the caches show it.
#[derive(Debug, Clone, PartialEq)]
enum Written {
    /// An object of this kind at this resourceVersion (created, patched, status).
    Version(Kind, u64),
    /// An object of this kind and uid deleted (gone, or terminating).
    Deleted(Kind, String),
}

/// Carries out one action and records the events it calls for; what it wrote, if it did.
async fn act(
    client: &kube::Client,
    world: &World,
    recorders: &Recorders,
    a: Action,
) -> Option<Written> {
    let api = |kind: Kind, ns: &str| -> kube::Api<DynamicObject> {
        kube::Api::namespaced_with(client.clone(), ns, &kind.resource())
    };
    let version = |kind: Kind, o: &DynamicObject| {
        Written::Version(
            kind,
            o.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    };
    let result: Result<(Option<String>, Written), kube::Error> = match &a {
        Action::Create { kind, ns, obj } => {
            match serde_json::from_value::<DynamicObject>(obj.clone()) {
                Ok(o) => api(*kind, ns)
                    .create(&PostParams::default(), &o)
                    .await
                    .map(|o| (o.metadata.name.clone(), version(*kind, &o))),
                Err(e) => {
                    tracing::warn!(error = %e, "controller: object to create");
                    return None;
                }
            }
        }
        Action::Patch {
            kind,
            ns,
            name,
            patch,
        } => api(*kind, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|o| (None, version(*kind, &o))),
        Action::Status {
            kind,
            ns,
            name,
            status,
        } => api(*kind, ns)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .map(|o| (None, version(*kind, &o))),
        Action::Delete {
            kind,
            ns,
            name,
            uid,
            propagation,
        } => {
            let dp = DeleteParams {
                propagation_policy: propagation.map(|p| match p {
                    "Foreground" => kube::api::PropagationPolicy::Foreground,
                    "Orphan" => kube::api::PropagationPolicy::Orphan,
                    _ => kube::api::PropagationPolicy::Background,
                }),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            api(*kind, ns)
                .delete(name, &dp)
                .await
                .map(|_| (None, Written::Deleted(*kind, uid.clone())))
        }
    };
    let name_of = |a: &Action| match a {
        Action::Create { obj, .. } => str_of(obj, "/metadata/name").to_string(),
        Action::Patch { name, .. } | Action::Status { name, .. } | Action::Delete { name, .. } => {
            name.clone()
        }
    };
    let emits = match &result {
        Ok((created, _)) => {
            let name = created.clone().unwrap_or_else(|| name_of(&a));
            events::of(world, &a, events::Outcome::Done { name: &name })
        }
        // Gone or changed under us: the next pass sees the new state.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => Vec::new(),
        Err(kube::Error::Api(e)) => {
            tracing::warn!(action = ?a, error = %e, "controller action");
            events::of(world, &a, events::Outcome::Failed(&e.message))
        }
        Err(e) => {
            tracing::warn!(action = ?a, error = %e, "controller action");
            events::of(world, &a, events::Outcome::Failed(&e.to_string()))
        }
    };
    for e in emits {
        recorders.record(e);
    }
    result.ok().map(|(_, w)| w)
}

/// Each kind's informer: the objects its watch has delivered (a reflector store) and the newest
/// resourceVersion it has delivered.
struct Informer {
    store: reflector::Store<DynamicObject>,
    seen: tokio::sync::watch::Receiver<u64>,
}

/// The World as the informers hold it (what the watches delivered so far).
fn cached(informers: &BTreeMap<Kind, Informer>) -> World {
    let mut world = World {
        now: lab_api::clock::unix_now(),
        ..Default::default()
    };
    for (kind, inf) in informers {
        let items = inf
            .store
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(&**o).ok())
            .collect();
        world.objects.insert(*kind, items);
    }
    world
}

/// Whether the informers show every write: each written version delivered by its kind's watch
/// (a watch delivers in resourceVersion order), each deleted object gone or terminating.
fn shows(informers: &BTreeMap<Kind, Informer>, writes: &[Written]) -> bool {
    writes.iter().all(|w| match w {
        Written::Version(kind, rv) => informers.get(kind).is_some_and(|i| *i.seen.borrow() >= *rv),
        Written::Deleted(kind, uid) => informers.get(kind).is_some_and(|i| {
            !i.store.state().iter().any(|o| {
                o.metadata.uid.as_deref() == Some(uid.as_str())
                    && o.metadata.deletion_timestamp.is_none()
            })
        }),
    })
}

/// Runs the controller manager until the task is dropped.
///
/// A pass plans from the informers' caches, as kube-controller-manager does, instead of
/// listing every kind from the API (with a hundred Pods, that list was most of a pass's time on
/// a loaded machine, and a rollout takes one pass per step). A cache may lag the controller's own
/// writes, so after a pass that wrote, the next one waits until the caches show those writes
/// (bounded; past the bound it lists from the API as before). The garbage collector acts only on
/// a World listed from the API: an owner missing from one cache while its dependent is in
/// another must not get the dependent deleted.
pub async fn run(client: kube::Client, node: String) {
    let recorders = Recorders {
        client: client.clone(),
        by_component: Default::default(),
    };
    let kick = Arc::new(tokio::sync::Notify::new());
    let mut watches = tokio::task::JoinSet::new();
    let mut informers = BTreeMap::new();
    for kind in Kind::ALL {
        let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &kind.resource());
        let writer = reflector::store::Writer::<DynamicObject>::new(kind.resource());
        let store = writer.as_reader();
        let (seen_tx, seen) = tokio::sync::watch::channel(0u64);
        informers.insert(kind, Informer { store, seen });
        let kick = kick.clone();
        watches.spawn(async move {
            let mut stream =
                reflector::reflector(writer, watcher(api, watcher::Config::default())).boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        if let watcher::Event::Apply(o)
                        | watcher::Event::Delete(o)
                        | watcher::Event::InitApply(o) = &ev
                            && let Some(rv) = o
                                .metadata
                                .resource_version
                                .as_deref()
                                .and_then(|v| v.parse::<u64>().ok())
                        {
                            seen_tx.send_if_modified(|s| {
                                let newer = rv > *s;
                                *s = (*s).max(rv);
                                newer
                            });
                        }
                        kick.notify_one();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "controller watch");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    for inf in informers.values() {
        if inf.store.wait_until_ready().await.is_err() {
            return;
        }
    }
    // Whether the caches may be behind this controller's last writes.
    let mut stale = false;
    loop {
        let mut world = (!stale).then(|| cached(&informers));
        stale = false;
        // Garbage collection (rare) plans from the API, as does a pass after a bounded wait.
        if world.as_ref().is_some_and(|w| !gc::plan(w).is_empty()) {
            world = None;
        }
        let world = match world {
            Some(w) => w,
            None => match observe(&client).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "controller manager: listing");
                    stale = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let actions = plan(&world, &node);
        // Only a pass that changed something calls for the next one at once: actions that all
        // failed (a webhook denying pods, say) are retried on the next event or in a second.
        let writes: Vec<Written> = futures::stream::iter(actions)
            .map(|a| act(&client, &world, &recorders, a))
            .buffer_unordered(16)
            .filter_map(|w| async move { w })
            .collect()
            .await;
        if writes.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), kick.notified()).await;
        } else {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !shows(&informers, &writes) && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout(Duration::from_millis(50), kick.notified()).await;
            }
            stale = !shows(&informers, &writes);
        }
        // Let a burst of events settle into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_does() {
        assert_eq!(int_or_percent(&json!("25%"), 10, "25%", true), 3);
        assert_eq!(int_or_percent(&json!("25%"), 10, "25%", false), 2);
        assert_eq!(int_or_percent(&Value::Null, 4, "25%", false), 1);
        assert_eq!(int_or_percent(&json!(2), 10, "25%", true), 2);
    }

    #[test]
    fn template_hash_ignores_key_order_and_the_hash_label() {
        let a = json!({"metadata": {"labels": {"app": "a", "tier": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let b = json!({"spec": {"containers": [{"image": "i", "name": "c", "resources": {}}]},
                       "metadata": {"creationTimestamp": null, "labels": {"tier": "x", "app": "a", "pod-template-hash": "zz"}}});
        assert_eq!(template_hash(&a), template_hash(&b));
        let c = json!({"metadata": {"labels": {"app": "a", "tier": "x"}}, "spec": {"containers": [{"name": "c", "image": "j"}]}});
        assert_ne!(template_hash(&a), template_hash(&c));
        assert!(
            template_hash(&a)
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let c = set_condition(&Value::Null, "Available", "True", "R", "m", "t1");
        let same = set_condition(&c, "Available", "True", "R", "m", "t2");
        assert_eq!(same, c, "no rewrite when nothing changed");
        let flipped = set_condition(&c, "Available", "False", "R2", "m", "t3");
        assert_eq!(flipped[0]["lastTransitionTime"], "t3");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn obj(kind: &str, name: &str, uid: &str, spec: Value) -> Value {
        json!({"kind": kind, "metadata": {"name": name, "namespace": "default", "uid": uid,
                                          "generation": 1, "creationTimestamp": "t0"},
               "spec": spec})
    }

    pub fn world(objects: Vec<(Kind, Vec<Value>)>) -> World {
        World {
            objects: objects.into_iter().collect(),
            now: 1_000_000,
        }
    }

    pub fn owned_by(mut o: Value, owner: &str) -> Value {
        o["metadata"]["ownerReferences"] =
            json!([{"uid": owner, "controller": true, "kind": "X", "name": "x"}]);
        o
    }

    /// A running pod owned by `owner`, Ready since long ago when `is_ready`.
    pub fn pod(name: &str, owner: &str, is_ready: bool, created: &str) -> Value {
        let mut p = owned_by(obj("Pod", name, &format!("uid-{name}"), json!({})), owner);
        p["metadata"]["creationTimestamp"] = json!(created);
        p["status"] = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": if is_ready { "True" } else { "False" },
             "lastTransitionTime": "2000-01-01T00:00:00Z"}]});
        p
    }
}
