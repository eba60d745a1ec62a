//! Events, recorded as the kubelet and the controllers record them (client-go's `record`
//! package, core/v1 Events): one Event per distinct (source, object, type, reason, message); the
//! same one again bumps its `count` and `lastTimestamp` instead of adding another, so `kubectl
//! describe` shows `(x3 over 20s)` and `kubectl get events` one line.
//!
//! Any lab component records through a [`Recorder`] (the node, the controllers, whoever creates
//! objects an admission webhook may deny):
//!
//! ```no_run
//! # async fn f(client: kube::Client, pod: serde_json::Value) {
//! use lab_api::events::{ObjectRef, Recorder};
//! let rec = Recorder::new(client, "kubelet", Some("lab-node"));
//! let obj = ObjectRef::from_object(&pod).with_field_path("spec.containers{web}");
//! rec.normal(&obj, "Pulled", "Container image \"busybox\" already present on machine");
//! rec.warning(&obj, "BackOff", "Back-off restarting failed container web in pod web_default(…)");
//! rec.flush().await; // only where the caller must see them written (tests)
//! # }
//! ```
//!
//! `normal`/`warning` never block and never fail the caller: one task writes the events in order,
//! and a write the API refuses is logged and dropped, as client-go does. The correlation is pure
//! ([`Correlator`]) and unit-tested. Not done: client-go's aggregation of more than ten similar
//! events into one "(combined from similar events)" event, and its per-object spam filter.

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use tokio::sync::{mpsc, oneshot};

/// How many distinct events a recorder remembers for deduplication (client-go: 4096).
pub const CACHE_SIZE: usize = 4096;

/// The object an event is about (`involvedObject`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// E.g. `spec.containers{web}` for a container of a Pod.
    pub field_path: String,
}

impl ObjectRef {
    /// The reference to an API object (JSON with `apiVersion`, `kind`, `metadata`).
    pub fn from_object(o: &Value) -> ObjectRef {
        let s = |p: &str| {
            o.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        ObjectRef {
            api_version: s("/apiVersion"),
            kind: s("/kind"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
            uid: s("/metadata/uid"),
            resource_version: s("/metadata/resourceVersion"),
            field_path: String::new(),
        }
    }

    pub fn with_field_path(mut self, field_path: impl Into<String>) -> ObjectRef {
        self.field_path = field_path.into();
        self
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"apiVersion": self.api_version, "kind": self.kind, "name": self.name});
        for (k, val) in [
            ("namespace", &self.namespace),
            ("uid", &self.uid),
            ("resourceVersion", &self.resource_version),
            ("fieldPath", &self.field_path),
        ] {
            if !val.is_empty() {
                v[k] = json!(val);
            }
        }
        v
    }
}

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NewEvent {
    pub object: ObjectRef,
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// What to write for an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A new Event object.
    Create { namespace: String, event: Value },
    /// Bump an existing one (merge patch).
    Patch {
        namespace: String,
        name: String,
        patch: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    object: (String, String, String, String, String, String),
    type_: EventType,
    reason: String,
    message: String,
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: i64,
}

/// Client-go's event correlation, without I/O: remembers what was recorded and turns a repeat
/// into a count bump.
#[derive(Debug)]
pub struct Correlator {
    component: String,
    host: String,
    seen: HashMap<Key, Seen>,
    order: VecDeque<Key>,
    counter: u64,
}

impl Correlator {
    pub fn new(component: &str, host: Option<&str>) -> Correlator {
        Correlator {
            component: component.to_string(),
            host: host.unwrap_or_default().to_string(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            counter: 0,
        }
    }

    fn key(e: &NewEvent) -> Key {
        let o = &e.object;
        Key {
            object: (
                o.kind.clone(),
                o.namespace.clone(),
                o.name.clone(),
                o.uid.clone(),
                o.api_version.clone(),
                o.field_path.clone(),
            ),
            type_: e.type_,
            reason: e.reason.clone(),
            message: e.message.clone(),
        }
    }

    /// The namespace an event about `o` lives in (cluster-scoped objects: `default`).
    fn namespace(o: &ObjectRef) -> String {
        if o.namespace.is_empty() {
            "default".into()
        } else {
            o.namespace.clone()
        }
    }

    /// What to write for `e` at `now` (RFC 3339); `unique` makes the new Event's name unique
    /// (client-go uses the time in nanoseconds, as hex).
    pub fn observe(&mut self, e: &NewEvent, now: &str, unique: u64) -> Action {
        let key = Self::key(e);
        let namespace = Self::namespace(&e.object);
        if let Some(seen) = self.seen.get_mut(&key) {
            seen.count += 1;
            return Action::Patch {
                namespace,
                name: seen.name.clone(),
                patch: json!({"count": seen.count, "lastTimestamp": now}),
            };
        }
        self.counter += 1;
        let name = format!("{}.{:x}", e.object.name, unique.wrapping_add(self.counter));
        let mut source = json!({"component": self.component});
        if !self.host.is_empty() {
            source["host"] = json!(self.host);
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": e.object.to_json(),
            "reason": e.reason, "message": e.message, "type": e.type_.as_str(),
            "source": source,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host,
        });
        self.seen.insert(key.clone(), Seen { name, count: 1 });
        self.order.push_back(key);
        while self.order.len() > CACHE_SIZE {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        Action::Create { namespace, event }
    }

    /// Forgets an event whose object is gone (its patch was refused), so the next one is new.
    pub fn forget(&mut self, e: &NewEvent) {
        let key = Self::key(e);
        self.seen.remove(&key);
        self.order.retain(|k| *k != key);
    }
}

enum Msg {
    Event(Box<NewEvent>),
    Flush(oneshot::Sender<()>),
}

/// Records events for one component; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

fn events_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn write(client: &kube::Client, action: &Action) -> Result<(), kube::Error> {
    match action {
        Action::Create { namespace, event } => {
            let obj: DynamicObject =
                serde_json::from_value(event.clone()).map_err(kube::Error::SerdeError)?;
            events_api(client, namespace)
                .create(&PostParams::default(), &obj)
                .await
                .map(drop)
        }
        Action::Patch {
            namespace,
            name,
            patch,
        } => events_api(client, namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop),
    }
}

impl Recorder {
    /// A recorder whose events say they come from `component` (e.g. `kubelet`,
    /// `replicaset-controller`) on `host`. Must be called within a tokio runtime.
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut c = Correlator::new(component, host);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let e = match msg {
                    Msg::Event(e) => *e,
                    Msg::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let action = c.observe(&e, &crate::clock::now(), unique());
                let mut result = write(&client, &action).await;
                if let (Action::Patch { .. }, Err(kube::Error::Api(s))) = (&action, &result)
                    && s.code == 404
                {
                    // The Event expired or was deleted: record it anew.
                    c.forget(&e);
                    result = write(&client, &c.observe(&e, &crate::clock::now(), unique())).await;
                }
                if let Err(err) = result {
                    tracing::debug!(reason = e.reason, error = %err, "recording an event");
                }
            }
        });
        Recorder { tx }
    }

    /// Records an event (queued; written in order by the recorder's task).
    pub fn record(&self, object: &ObjectRef, type_: EventType, reason: &str, message: &str) {
        let _ = self.tx.send(Msg::Event(Box::new(NewEvent {
            object: object.clone(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        })));
    }

    pub fn normal(&self, object: &ObjectRef, reason: &str, message: impl AsRef<str>) {
        self.record(object, EventType::Normal, reason, message.as_ref());
    }

    pub fn warning(&self, object: &ObjectRef, reason: &str, message: impl AsRef<str>) {
        self.record(object, EventType::Warning, reason, message.as_ref());
    }

    /// Waits until every event recorded before this call was written (or refused).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, message: &str) -> NewEvent {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"namespace": "shop", "name": "web", "uid": "u1", "resourceVersion": "7"}});
        NewEvent {
            object: ObjectRef::from_object(&pod).with_field_path("spec.containers{web}"),
            type_: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn first_event_is_created_with_source_and_reference() {
        let mut c = Correlator::new("kubelet", Some("lab-node"));
        let Action::Create { namespace, event } = c.observe(&ev("BackOff", "m"), "T1", 0x10) else {
            panic!()
        };
        assert_eq!(namespace, "shop");
        assert_eq!(event["metadata"]["name"], "web.11");
        assert_eq!(
            event["involvedObject"],
            json!({"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "web",
                   "uid": "u1", "resourceVersion": "7", "fieldPath": "spec.containers{web}"})
        );
        assert_eq!(
            event["source"],
            json!({"component": "kubelet", "host": "lab-node"})
        );
        assert_eq!(event["count"], 1);
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["firstTimestamp"], "T1");
    }

    #[test]
    fn repeats_bump_the_count_and_others_are_new() {
        let mut c = Correlator::new("kubelet", None);
        let _ = c.observe(&ev("BackOff", "m"), "T1", 1);
        assert_eq!(
            c.observe(&ev("BackOff", "m"), "T2", 2),
            Action::Patch {
                namespace: "shop".into(),
                name: "web.2".into(),
                patch: json!({"count": 2, "lastTimestamp": "T2"})
            }
        );
        assert!(matches!(
            c.observe(&ev("BackOff", "m"), "T3", 3),
            Action::Patch { patch, .. } if patch["count"] == 3
        ));
        assert!(matches!(
            c.observe(&ev("BackOff", "other message"), "T4", 4),
            Action::Create { .. }
        ));
        c.forget(&ev("BackOff", "m"));
        assert!(matches!(
            c.observe(&ev("BackOff", "m"), "T5", 5),
            Action::Create { .. }
        ));
    }

    #[test]
    fn cluster_scoped_objects_get_events_in_default_and_the_cache_is_bounded() {
        let mut c = Correlator::new("c", None);
        let mut e = ev("R", "m");
        e.object.namespace.clear();
        let Action::Create { namespace, .. } = c.observe(&e, "T", 0) else {
            panic!()
        };
        assert_eq!(namespace, "default");
        for i in 0..CACHE_SIZE + 10 {
            let _ = c.observe(&ev("R", &i.to_string()), "T", 0);
        }
        assert_eq!(c.seen.len(), CACHE_SIZE);
    }
}
