//! Object storage: JSON objects keyed by group/resource/namespace/name, one global increasing
//! resourceVersion, a bounded event history for watches (older versions answer 410 Gone), and
//! optional persistence through [`crate::persist`]. Each stored version is serialised to JSON
//! once, when it is stored ([`Stored`]); lists, gets and watch events send those bytes.

use crate::persist::{Persist, Record};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// The API group of Role, ClusterRole, RoleBinding and ClusterRoleBinding: writes to it bump
/// [`Store::rbac_generation`].
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Where an object lives. The version is not part of it: all versions of a resource share storage.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One stored version of an object and its JSON without `apiVersion` and `kind` (as list items
/// of built-in kinds are sent; [`crate::serial`] puts the served type in front for gets and
/// watch events). The JSON is made once, when the version is stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub object: Arc<Value>,
    pub json: Bytes,
}

/// One change, as watches see it. `prev` lets a filtered watch turn a change that moves an object
/// in or out of its selector into ADDED or DELETED, as the real server does.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    pub object: Arc<Value>,
    /// `object`'s JSON, as in [`Stored`].
    pub json: Bytes,
    pub prev: Option<Arc<Value>>,
    /// The watch lines made from this event, shared by every watcher that sends the same one.
    pub lines: crate::serial::Lines,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object already exists")]
    Exists,
    #[error("object not found")]
    NotFound,
    #[error("resourceVersion conflict")]
    Conflict,
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    #[error("storage write failed: {0}")]
    Persist(#[from] crate::persist::PersistError),
}

/// Events to replay and a receiver for the ones after them.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// How many events a watch can resume from before it must relist.
const HISTORY: usize = 20_000;

/// The object stored under `key`, if its resourceVersion is `expect` (when given).
fn current(inner: &Inner, key: &Key, expect: Option<u64>) -> Result<Arc<Value>, StoreError> {
    let prev = inner
        .objects
        .get(key)
        .map(|s| s.object.clone())
        .ok_or(StoreError::NotFound)?;
    if expect.is_some_and(|e| Some(e) != object_rv(&prev)) {
        return Err(StoreError::Conflict);
    }
    Ok(prev)
}

struct Inner {
    objects: BTreeMap<Key, Stored>,
    /// Which Service (namespace, name) holds each ClusterIP, kept with every write so that
    /// allocating one does not read every Service.
    service_ips: HashMap<IpAddr, (String, String)>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Watches must start at or after this version; older ones get 410.
    horizon: u64,
    persist: Option<Persist>,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    /// Bumped by every committed write to an RBAC object, so the authorizer rebuilds its
    /// compiled policy only when one changed.
    rbac_generation: AtomicU64,
    /// How many times an object was serialised for storage (see [`Store::serialisations`]).
    serialisations: AtomicU64,
}

fn is_service(key: &Key) -> bool {
    key.group.is_empty() && key.resource == "services"
}

/// The ClusterIPs a stored Service holds (none when headless or ExternalName).
fn cluster_ips(obj: &Value) -> impl Iterator<Item = IpAddr> + '_ {
    obj["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
}

fn index_service(index: &mut HashMap<IpAddr, (String, String)>, key: &Key, obj: &Value) {
    for ip in cluster_ips(obj) {
        index.insert(ip, (key.namespace.clone(), key.name.clone()));
    }
}

pub fn object_rv(obj: &Value) -> Option<u64> {
    obj.pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

fn with_rv(mut obj: Value, rv: u64) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    obj
}

/// The objects of one resource (in one namespace, or all), in key order.
fn in_range(inner: &Inner, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Stored> {
    let start = Key {
        group: group.into(),
        resource: resource.into(),
        namespace: namespace.unwrap_or("").into(),
        name: String::new(),
    };
    inner
        .objects
        .range(start..)
        .take_while(|(k, _)| {
            k.group == group
                && k.resource == resource
                && namespace.is_none_or(|ns| k.namespace == ns)
        })
        .map(|(_, v)| v.clone())
        .collect()
}

impl Store {
    /// An in-memory store, or one loaded from and written to `data_dir`.
    pub fn open(data_dir: Option<&Path>) -> Result<Self, StoreError> {
        let mut objects = BTreeMap::new();
        let mut rv = 1;
        let persist = match data_dir {
            Some(dir) => {
                let (p, loaded, last_rv) = Persist::open(dir)?;
                for (k, v) in loaded {
                    objects.insert(k, Arc::new(v));
                }
                rv = rv.max(last_rv);
                Some(p)
            }
            None => None,
        };
        let (events, _) = broadcast::channel(4096);
        let mut service_ips = HashMap::new();
        for (k, o) in objects.iter().filter(|(k, _)| is_service(k)) {
            index_service(&mut service_ips, k, o);
        }
        let serialisations = AtomicU64::new(objects.len() as u64);
        let objects = objects
            .into_iter()
            .map(|(k, object)| {
                let json = crate::serial::untyped(&object);
                (k, Stored { object, json })
            })
            .collect();
        Ok(Store {
            inner: Mutex::new(Inner {
                objects,
                service_ips,
                rv,
                history: VecDeque::new(),
                horizon: rv,
                persist,
            }),
            events,
            rbac_generation: AtomicU64::new(0),
            serialisations,
        })
    }

    /// How many object versions were serialised to JSON since the store opened: one per write
    /// (and one per object loaded from disk), none per list, get or watch event sent.
    pub fn serialisations(&self) -> u64 {
        self.serialisations.load(Ordering::Relaxed)
    }

    fn serialise(&self, obj: &Value) -> Bytes {
        self.serialisations.fetch_add(1, Ordering::Relaxed);
        crate::serial::untyped(obj)
    }

    /// How many writes to RBAC objects were committed. Read it before listing them: a list
    /// taken after reading `g` holds at least every write counted in `g`.
    pub fn rbac_generation(&self) -> u64 {
        self.rbac_generation.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock poisoned")
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The Service (namespace, name) holding a ClusterIP, if any.
    pub fn cluster_ip_holder(&self, ip: &IpAddr) -> Option<(String, String)> {
        self.lock().service_ips.get(ip).cloned()
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.get_stored(key).map(|s| s.object)
    }

    /// The object under `key` with its JSON.
    pub fn get_stored(&self, key: &Key) -> Option<Stored> {
        self.lock().objects.get(key).cloned()
    }

    /// All objects of a resource (in one namespace, or all), in key order, and the list's version.
    pub fn list(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> (Vec<Arc<Value>>, u64) {
        let (items, rv) = self.list_stored(group, resource, namespace);
        (items.into_iter().map(|s| s.object).collect(), rv)
    }

    /// [`Store::list`] with each object's JSON.
    pub fn list_stored(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> (Vec<Stored>, u64) {
        let inner = self.lock();
        (in_range(&inner, group, resource, namespace), inner.rv)
    }

    pub fn create(&self, key: &Key, obj: Value) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        if inner.objects.contains_key(key) {
            return Err(StoreError::Exists);
        }
        self.commit(&mut inner, key, Some(obj), None, EventType::Added)
    }

    /// Replaces an object; with `expect`, only if it is still at that resourceVersion.
    pub fn update(
        &self,
        key: &Key,
        expect: Option<u64>,
        obj: Value,
    ) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let prev = current(&inner, key, expect)?;
        self.commit(&mut inner, key, Some(obj), Some(prev), EventType::Modified)
    }

    /// Removes an object; returns it stamped with the deletion's resourceVersion.
    pub fn delete(&self, key: &Key, expect: Option<u64>) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let prev = current(&inner, key, expect)?;
        self.commit(&mut inner, key, None, Some(prev), EventType::Deleted)
    }

    fn commit(
        &self,
        inner: &mut Inner,
        key: &Key,
        obj: Option<Value>,
        prev: Option<Arc<Value>>,
        kind: EventType,
    ) -> Result<Arc<Value>, StoreError> {
        let rv = inner.rv + 1;
        let stored = obj.map(|o| {
            let object = Arc::new(with_rv(o, rv));
            Stored {
                json: self.serialise(&object),
                object,
            }
        });
        if let Some(p) = inner.persist.as_mut() {
            p.append(&Record {
                rv,
                key: key.clone(),
                object: stored.as_ref().map(|s| s.object.as_ref().clone()),
            })?;
        }
        inner.rv = rv;
        if key.group == RBAC_GROUP {
            // Under the store lock: a list taken after reading the new value waits for this
            // commit to finish, so it sees the change.
            self.rbac_generation.fetch_add(1, Ordering::AcqRel);
        }
        if is_service(key) {
            if let Some(p) = &prev {
                for ip in cluster_ips(p) {
                    if inner
                        .service_ips
                        .get(&ip)
                        .is_some_and(|(ns, name)| *ns == key.namespace && *name == key.name)
                    {
                        inner.service_ips.remove(&ip);
                    }
                }
            }
            if let Some(s) = &stored {
                index_service(&mut inner.service_ips, key, &s.object);
            }
        }
        let Stored { object, json } = match stored {
            Some(s) => {
                inner.objects.insert(key.clone(), s.clone());
                s
            }
            None => {
                inner.objects.remove(key);
                let object = Arc::new(with_rv(prev.as_deref().cloned().unwrap_or(Value::Null), rv));
                Stored {
                    json: self.serialise(&object),
                    object,
                }
            }
        };
        let event = Arc::new(Event {
            rv,
            kind,
            key: key.clone(),
            object: object.clone(),
            json,
            prev,
            lines: Default::default(),
        });
        if inner.history.len() >= HISTORY
            && let Some(old) = inner.history.pop_front()
        {
            inner.horizon = old.rv;
        }
        inner.history.push_back(event.clone());
        if inner
            .persist
            .as_ref()
            .is_some_and(Persist::wants_compaction)
        {
            let snapshot: Vec<(Key, Value)> = inner
                .objects
                .iter()
                .map(|(k, v)| (k.clone(), v.object.as_ref().clone()))
                .collect();
            if let Some(p) = inner.persist.as_mut() {
                p.compact(rv, &snapshot)?;
            }
        }
        // No receivers is normal: nobody watches.
        let _ = self.events.send(event);
        Ok(object)
    }

    /// The events after `since` (which must not be older than the history) and a receiver for
    /// later ones, taken together so that nothing falls between them.
    pub fn watch(&self, since: Option<u64>) -> Result<Subscription, StoreError> {
        let inner = self.lock();
        let rx = self.events.subscribe();
        let backlog = match since {
            None => Vec::new(),
            Some(r) if r < inner.horizon => {
                return Err(StoreError::Gone {
                    requested: r,
                    oldest: inner.horizon,
                });
            }
            Some(r) => inner.history.iter().filter(|e| e.rv > r).cloned().collect(),
        };
        Ok((backlog, rx))
    }

    /// A list and a receiver for the changes after it, taken together.
    pub fn list_and_watch(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> (Vec<Stored>, u64, broadcast::Receiver<Arc<Event>>) {
        let inner = self.lock();
        let rx = self.events.subscribe();
        (in_range(&inner, group, resource, namespace), inner.rv, rx)
    }

    /// Forgets the watch history up to and including the current version, as etcd compaction
    /// does: watches resuming from any version seen so far get 410.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.horizon = inner.rv + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(group: &str, resource: &str, name: &str) -> Key {
        Key {
            group: group.into(),
            resource: resource.into(),
            namespace: "d".into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_cluster_ip_index_follows_service_writes() {
        let store = Store::open(None).unwrap();
        let svc = |ips: &[&str]| json!({"metadata": {"name": "x", "namespace": "d"}, "spec": {"clusterIPs": ips}});
        let k = key("", "services", "x");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let holder = Some(("d".to_string(), "x".to_string()));
        store.create(&k, svc(&["10.96.0.5", "fd00::5"])).unwrap();
        assert_eq!(store.cluster_ip_holder(&ip("10.96.0.5")), holder);
        assert_eq!(store.cluster_ip_holder(&ip("fd00::5")), holder);
        store.update(&k, None, svc(&["10.96.0.5"])).unwrap();
        assert_eq!(store.cluster_ip_holder(&ip("fd00::5")), None);
        assert_eq!(store.cluster_ip_holder(&ip("10.96.0.5")), holder);
        // Another resource with the same shape is not a Service.
        store
            .create(&key("", "configmaps", "x"), svc(&["10.96.0.6"]))
            .unwrap();
        assert_eq!(store.cluster_ip_holder(&ip("10.96.0.6")), None);
        store.delete(&k, None).unwrap();
        assert_eq!(store.cluster_ip_holder(&ip("10.96.0.5")), None);
    }

    #[test]
    fn each_version_is_serialised_once_when_written() {
        let store = Store::open(None).unwrap();
        let obj = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "d"}, "data": {"v": v}});
        let k = key("", "configmaps", "x");
        store.create(&k, obj("1")).unwrap();
        store.create(&key("", "configmaps", "y"), obj("2")).unwrap();
        assert_eq!(store.serialisations(), 2);
        let (first, _) = store.list_stored("", "configmaps", Some("d"));
        for _ in 0..5 {
            let (again, _) = store.list_stored("", "configmaps", None);
            // The very same bytes, not an equal copy.
            let same = |a: &Stored, b: &Stored| a.json.as_ptr() == b.json.as_ptr();
            assert!(first.iter().zip(&again).all(|(a, b)| same(a, b)));
            assert!(same(&store.get_stored(&k).unwrap(), &first[0]));
        }
        let (_, mut rx) = store.watch(None).unwrap();
        assert_eq!(store.serialisations(), 2);
        // Stored without its type; the stored JSON is the object's, resourceVersion included.
        let v: Value = serde_json::from_slice(&first[0].json).unwrap();
        assert_eq!(
            v,
            json!({"metadata": {"name": "x", "namespace": "d", "resourceVersion": "2"}, "data": {"v": "1"}})
        );
        // A write serialises its version once, and its event carries those bytes.
        let updated = store.update(&k, None, obj("3")).unwrap();
        let ev = rx.try_recv().unwrap();
        assert_eq!(store.serialisations(), 3);
        assert!(Arc::ptr_eq(&ev.object, &updated));
        assert_eq!(
            ev.json.as_ptr(),
            store.get_stored(&k).unwrap().json.as_ptr()
        );
        // A delete's event is the last version stamped with the deletion's resourceVersion.
        store.delete(&k, None).unwrap();
        let ev = rx.try_recv().unwrap();
        assert_eq!(store.serialisations(), 4);
        let v: Value = serde_json::from_slice(&ev.json).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], json!(ev.rv.to_string()));
        assert_eq!(v["data"]["v"], "3");
    }

    #[test]
    fn only_rbac_writes_bump_the_rbac_generation() {
        let store = Store::open(None).unwrap();
        let obj = || json!({"metadata": {"name": "x", "namespace": "d"}});
        let cm = key("", "configmaps", "x");
        store.create(&cm, obj()).unwrap();
        store.update(&cm, None, obj()).unwrap();
        store.delete(&cm, None).unwrap();
        assert_eq!(store.rbac_generation(), 0);
        let mut seen = 0;
        for resource in [
            "roles",
            "rolebindings",
            "clusterroles",
            "clusterrolebindings",
        ] {
            let k = key(RBAC_GROUP, resource, "x");
            store.create(&k, obj()).unwrap();
            store.update(&k, None, obj()).unwrap();
            store.delete(&k, None).unwrap();
            assert_eq!(store.rbac_generation(), seen + 3, "{resource}");
            seen += 3;
        }
        // A refused write is no change.
        let k = key(RBAC_GROUP, "roles", "y");
        store.create(&k, obj()).unwrap();
        assert!(store.create(&k, obj()).is_err());
        assert!(store.update(&k, Some(1), obj()).is_err());
        assert_eq!(store.rbac_generation(), seen + 1);
    }
}
