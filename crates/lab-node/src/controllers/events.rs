//! The Events the controllers record, worded as kube-controller-manager's controllers word them
//! (reason, type, message, which object, which component). Pure: derived from an action the
//! manager carried out, its outcome, and the world the action was planned from.
//!
//! | component | object | reason (type) | when |
//! |---|---|---|---|
//! | `deployment-controller` | Deployment | `ScalingReplicaSet` | a ReplicaSet created with replicas, or its `spec.replicas` changed |
//! | `replicaset-controller`, `job-controller`, `daemonset-controller` | the owner | `SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate` (Warning), `FailedDelete` (Warning) | a pod created or deleted, or refused (e.g. by an admission webhook: its denial is the message) |
//! | `statefulset-controller` | StatefulSet | the same reasons, StatefulSet wording | as above |
//! | `job-controller` | Job | `Completed`, `BackoffLimitExceeded` (Warning) | the Job's Complete or Failed condition written |
//!
//! The garbage collector records nothing (as in Kubernetes).

use super::{Action, Kind, World, controller_uid, deleting};
use crate::util::str_of;
use lab_api::events::{EventType, ObjectRef};
use serde_json::Value;

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub component: &'static str,
    pub object: ObjectRef,
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// How an action ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Written; `name` is the object's name (a generated one for `generateName`).
    Done { name: &'a str },
    /// Refused or failed, with the API's message.
    Failed(&'a str),
}

/// The component that records events for objects of `kind` (as their controller).
pub fn component(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Deployment => "deployment-controller",
        Kind::ReplicaSet => "replicaset-controller",
        Kind::StatefulSet => "statefulset-controller",
        Kind::DaemonSet => "daemonset-controller",
        Kind::Job => "job-controller",
        Kind::Pod => return None,
    })
}

/// The object of `kind` with this uid, if the world has it.
fn find<'a>(world: &'a World, kind: Kind, uid: &str) -> Option<&'a Value> {
    world
        .of(kind)
        .iter()
        .find(|o| str_of(o, "/metadata/uid") == uid)
}

fn find_by_name<'a>(world: &'a World, kind: Kind, ns: &str, name: &str) -> Option<&'a Value> {
    world
        .of(kind)
        .iter()
        .find(|o| str_of(o, "/metadata/namespace") == ns && str_of(o, "/metadata/name") == name)
}

/// The reference to an object of `kind` (its kind and version set, whatever the list held).
pub fn object_ref(kind: Kind, o: &Value) -> ObjectRef {
    let mut r = ObjectRef::from_object(o);
    r.kind = kind.name().to_string();
    r.api_version = kind.api_version();
    r
}

/// The controlling owner of an object (a kind the controllers run), from the world.
fn owner<'a>(world: &'a World, o: &Value) -> Option<(Kind, &'a Value)> {
    let uid = controller_uid(o)?;
    let r = o["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["uid"] == uid)?;
    let kind = Kind::from_name(str_of(r, "/kind"))?;
    let obj = find(world, kind, uid)?;
    (!deleting(obj)).then_some((kind, obj))
}

fn emit(
    kind: Kind,
    o: &Value,
    type_: EventType,
    reason: &'static str,
    message: String,
) -> Option<Emit> {
    Some(Emit {
        component: component(kind)?,
        object: object_ref(kind, o),
        type_,
        reason,
        message,
    })
}

/// Pod creation and deletion, worded per controller.
fn pod_event(
    owner_kind: Kind,
    owner_obj: &Value,
    create: bool,
    pod: &str,
    outcome: Outcome<'_>,
) -> Option<Emit> {
    use EventType::{Normal, Warning};
    let set = str_of(owner_obj, "/metadata/name");
    let (type_, reason, message) = match (owner_kind, create, outcome) {
        (Kind::StatefulSet, true, Outcome::Done { name }) => (
            Normal,
            "SuccessfulCreate",
            format!("create Pod {name} in StatefulSet {set} successful"),
        ),
        (Kind::StatefulSet, true, Outcome::Failed(e)) => (
            Warning,
            "FailedCreate",
            format!("create Pod {pod} in StatefulSet {set} failed error: {e}"),
        ),
        (Kind::StatefulSet, false, Outcome::Done { name }) => (
            Normal,
            "SuccessfulDelete",
            format!("delete Pod {name} in StatefulSet {set} successful"),
        ),
        (Kind::StatefulSet, false, Outcome::Failed(e)) => (
            Warning,
            "FailedDelete",
            format!("delete Pod {pod} in StatefulSet {set} failed error: {e}"),
        ),
        (_, true, Outcome::Done { name }) => {
            (Normal, "SuccessfulCreate", format!("Created pod: {name}"))
        }
        (_, true, Outcome::Failed(e)) => (Warning, "FailedCreate", format!("Error creating: {e}")),
        (_, false, Outcome::Done { name }) => {
            (Normal, "SuccessfulDelete", format!("Deleted pod: {name}"))
        }
        (_, false, Outcome::Failed(e)) => (Warning, "FailedDelete", format!("Error deleting: {e}")),
    };
    emit(owner_kind, owner_obj, type_, reason, message)
}

fn condition_true(status: &Value, ty: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty && c["status"] == "True")
        .cloned()
}

/// The events for `action`, carried out with `outcome`, as planned from `world`.
pub fn of(world: &World, action: &Action, outcome: Outcome<'_>) -> Vec<Emit> {
    let mut out = Vec::new();
    match action {
        Action::Create {
            kind: Kind::Pod,
            obj,
            ..
        } => {
            if let Some((k, o)) = owner(world, obj) {
                let planned = match str_of(obj, "/metadata/name") {
                    "" => str_of(obj, "/metadata/generateName"),
                    n => n,
                };
                out.extend(pod_event(k, o, true, planned, outcome));
            }
        }
        Action::Delete {
            kind: Kind::Pod,
            name,
            uid,
            ..
        } => {
            if let Some((k, o)) = find(world, Kind::Pod, uid).and_then(|p| owner(world, p)) {
                out.extend(pod_event(k, o, false, name, outcome));
            }
        }
        Action::Create {
            kind: Kind::ReplicaSet,
            obj,
            ..
        } => {
            let to = obj["spec"]["replicas"].as_i64().unwrap_or(0);
            if let (Outcome::Done { name }, Some((Kind::Deployment, d))) =
                (outcome, owner(world, obj))
                && to > 0
            {
                out.extend(emit(
                    Kind::Deployment,
                    d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {to}"),
                ));
            }
        }
        Action::Patch {
            kind: Kind::ReplicaSet,
            ns,
            name,
            patch,
        } => {
            let rs = find_by_name(world, Kind::ReplicaSet, ns, name);
            if let (Outcome::Done { .. }, Some(rs), Some(to)) =
                (outcome, rs, patch["spec"]["replicas"].as_i64())
                && let Some((Kind::Deployment, d)) = owner(world, rs)
            {
                let from = rs["spec"]["replicas"].as_i64().unwrap_or(1);
                if from != to {
                    let dir = if to > from { "up" } else { "down" };
                    out.extend(emit(
                        Kind::Deployment,
                        d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled {dir} replica set {name} from {from} to {to}"),
                    ));
                }
            }
        }
        Action::Status {
            kind: Kind::Job,
            ns,
            name,
            status,
        } => {
            let Some(job) = find_by_name(world, Kind::Job, ns, name) else {
                return out;
            };
            if !matches!(outcome, Outcome::Done { .. }) {
                return out;
            }
            let was = &job["status"];
            if condition_true(status, "Complete").is_some()
                && condition_true(was, "Complete").is_none()
            {
                out.extend(emit(
                    Kind::Job,
                    job,
                    EventType::Normal,
                    "Completed",
                    "Job completed".into(),
                ));
            }
            if let Some(c) = condition_true(status, "Failed")
                && condition_true(was, "Failed").is_none()
            {
                let reason = match str_of(&c, "/reason") {
                    "BackoffLimitExceeded" => "BackoffLimitExceeded",
                    "DeadlineExceeded" => "DeadlineExceeded",
                    _ => "Failed",
                };
                out.extend(emit(
                    Kind::Job,
                    job,
                    EventType::Warning,
                    reason,
                    str_of(&c, "/message").to_string(),
                ));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;
    use serde_json::json;

    fn rs(uid: &str, replicas: i64) -> Value {
        owned_by(
            obj("ReplicaSet", "web-abc", uid, json!({"replicas": replicas})),
            "d1",
        )
    }

    fn with_kind(mut o: Value, kind: &str) -> Value {
        o["metadata"]["ownerReferences"][0]["kind"] = json!(kind);
        o
    }

    #[test]
    fn pods_created_and_deleted_by_a_replica_set() {
        let r = rs("rs1", 2);
        let p = with_kind(pod("web-abc-x", "rs1", true, "t"), "ReplicaSet");
        let w = world(vec![
            (Kind::ReplicaSet, vec![r.clone()]),
            (Kind::Pod, vec![p.clone()]),
        ]);
        let create = Action::Create {
            kind: Kind::Pod,
            ns: "default".into(),
            obj: with_kind(
                owned_by(json!({"metadata": {"generateName": "web-abc-"}}), "rs1"),
                "ReplicaSet",
            ),
        };
        let e = of(&w, &create, Outcome::Done { name: "web-abc-zz" });
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].component, "replicaset-controller");
        assert_eq!(
            (e[0].type_, e[0].reason, e[0].message.as_str()),
            (
                EventType::Normal,
                "SuccessfulCreate",
                "Created pod: web-abc-zz"
            )
        );
        assert_eq!(
            (e[0].object.kind.as_str(), e[0].object.api_version.as_str()),
            ("ReplicaSet", "apps/v1")
        );
        assert_eq!(e[0].object.uid, "rs1");
        let denied = "admission webhook \"deny.lab\" denied the request: no";
        let e = of(&w, &create, Outcome::Failed(denied));
        assert_eq!(
            (e[0].type_, e[0].reason, e[0].message.clone()),
            (
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {denied}")
            )
        );
        let delete = Action::Delete {
            kind: Kind::Pod,
            ns: "default".into(),
            name: "web-abc-x".into(),
            uid: "uid-web-abc-x".into(),
            propagation: None,
        };
        let e = of(&w, &delete, Outcome::Done { name: "web-abc-x" });
        assert_eq!(e[0].reason, "SuccessfulDelete");
        assert_eq!(e[0].message, "Deleted pod: web-abc-x");
        // The garbage collector deleting a pod whose owner is gone records nothing.
        let orphan = world(vec![(Kind::Pod, vec![p])]);
        assert!(of(&orphan, &delete, Outcome::Done { name: "web-abc-x" }).is_empty());
    }

    #[test]
    fn deployments_record_scaling_of_their_replica_sets() {
        let d = obj("Deployment", "web", "d1", json!({}));
        let r = with_kind(rs("rs1", 2), "Deployment");
        let w = world(vec![
            (Kind::Deployment, vec![d]),
            (Kind::ReplicaSet, vec![r.clone()]),
        ]);
        let patch = |p: Value| Action::Patch {
            kind: Kind::ReplicaSet,
            ns: "default".into(),
            name: "web-abc".into(),
            patch: p,
        };
        let up = patch(json!({"spec": {"replicas": 5}}));
        let e = of(&w, &up, Outcome::Done { name: "web-abc" });
        assert_eq!(e[0].component, "deployment-controller");
        assert_eq!(e[0].object.kind, "Deployment");
        assert_eq!(e[0].reason, "ScalingReplicaSet");
        assert_eq!(e[0].message, "Scaled up replica set web-abc from 2 to 5");
        let down = patch(json!({"spec": {"replicas": 0}}));
        assert_eq!(
            of(&w, &down, Outcome::Done { name: "web-abc" })[0].message,
            "Scaled down replica set web-abc from 2 to 0"
        );
        assert!(of(&w, &down, Outcome::Failed("conflict")).is_empty());
        let annotations_only = patch(json!({"metadata": {"annotations": {"a": "b"}}}));
        assert!(of(&w, &annotations_only, Outcome::Done { name: "web-abc" }).is_empty());
        let create = Action::Create {
            kind: Kind::ReplicaSet,
            ns: "default".into(),
            obj: r,
        };
        assert_eq!(
            of(&w, &create, Outcome::Done { name: "web-abc" })[0].message,
            "Scaled up replica set web-abc from 0 to 2"
        );
    }

    #[test]
    fn jobs_record_completion_and_failure_once() {
        let j = obj("Job", "batch", "j1", json!({}));
        let w = world(vec![(Kind::Job, vec![j.clone()])]);
        let status = |ty: &str, reason: &str| Action::Status {
            kind: Kind::Job,
            ns: "default".into(),
            name: "batch".into(),
            status: json!({"conditions": [{"type": ty, "status": "True", "reason": reason,
                                             "message": "Job has reached the specified backoff limit"}]}),
        };
        let e = of(
            &w,
            &status("Complete", "CompletionsReached"),
            Outcome::Done { name: "batch" },
        );
        assert_eq!(
            (e[0].reason, e[0].message.as_str()),
            ("Completed", "Job completed")
        );
        assert_eq!(e[0].component, "job-controller");
        let e = of(
            &w,
            &status("Failed", "BackoffLimitExceeded"),
            Outcome::Done { name: "batch" },
        );
        assert_eq!(
            (e[0].type_, e[0].reason, e[0].message.as_str()),
            (
                EventType::Warning,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit"
            )
        );
        let mut done = j;
        done["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}]});
        let w = world(vec![(Kind::Job, vec![done])]);
        assert!(
            of(
                &w,
                &status("Complete", "CompletionsReached"),
                Outcome::Done { name: "batch" }
            )
            .is_empty()
        );
    }

    #[test]
    fn stateful_sets_word_their_events_their_own_way() {
        let s = obj("StatefulSet", "db", "s1", json!({}));
        let w = world(vec![(Kind::StatefulSet, vec![s])]);
        let create = Action::Create {
            kind: Kind::Pod,
            ns: "default".into(),
            obj: with_kind(
                owned_by(json!({"metadata": {"name": "db-0"}}), "s1"),
                "StatefulSet",
            ),
        };
        let e = of(&w, &create, Outcome::Done { name: "db-0" });
        assert_eq!(e[0].component, "statefulset-controller");
        assert_eq!(e[0].message, "create Pod db-0 in StatefulSet db successful");
        let e = of(&w, &create, Outcome::Failed("denied"));
        assert_eq!(
            e[0].message,
            "create Pod db-0 in StatefulSet db failed error: denied"
        );
    }
}
