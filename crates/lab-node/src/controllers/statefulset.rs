//! StatefulSet: pods `<name>-<ordinal>` with stable hostnames (`hostname` = pod name,
//! `subdomain` = `serviceName`, for DNS). `OrderedReady` (the default) creates ordinal N only once
//! 0..N-1 are Running and Ready, removes from the highest ordinal down, one at a time, and rolls
//! a new template from the highest ordinal down; `Parallel` creates and removes all at once.
//! Not done: volumeClaimTemplates (no PersistentVolumes in the lab), partitions, OnDelete.

use super::{
    Action, Kind, World, active, available, deleting, int, pod_from_template, ready, template_hash,
};
use crate::util::str_of;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const REVISION_LABEL: &str = "controller-revision-hash";

fn ordinal<'a>(name: &str, p: &'a Value) -> Option<(i64, &'a Value)> {
    str_of(p, "/metadata/name")
        .strip_prefix(name)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .map(|i| (i, p))
}

pub fn plan(world: &World, s: &Value) -> Vec<Action> {
    if deleting(s) {
        return Vec::new();
    }
    let ns = str_of(s, "/metadata/namespace");
    let name = str_of(s, "/metadata/name");
    let spec = &s["spec"];
    let replicas = int(&spec["replicas"], 1).max(0);
    let parallel = spec["podManagementPolicy"] == "Parallel";
    let on_delete = spec["updateStrategy"]["type"] == "OnDelete";
    let revision = format!("{name}-{}", template_hash(&spec["template"]));
    let min_ready = int(&spec["minReadySeconds"], 0);
    let pods: BTreeMap<i64, &Value> = world
        .owned(Kind::Pod, s)
        .filter_map(|p| ordinal(name, p))
        .collect();
    let mut out = Vec::new();
    let make = |i: i64| {
        let pod_name = format!("{name}-{i}");
        let mut p = pod_from_template(
            Kind::StatefulSet,
            s,
            &spec["template"],
            Some(pod_name.clone()),
            &[
                ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                ("apps.kubernetes.io/pod-index", i.to_string()),
                (REVISION_LABEL, revision.clone()),
            ],
        );
        p["spec"]["hostname"] = json!(pod_name);
        if let Some(svc) = spec["serviceName"].as_str().filter(|s| !s.is_empty()) {
            p["spec"]["subdomain"] = json!(svc);
        }
        Action::Create {
            kind: Kind::Pod,
            ns: ns.to_string(),
            obj: p,
        }
    };
    let del = |p: &Value| Action::Delete {
        kind: Kind::Pod,
        ns: ns.to_string(),
        name: str_of(p, "/metadata/name").to_string(),
        uid: str_of(p, "/metadata/uid").to_string(),
        propagation: None,
    };
    let terminating = pods.values().any(|p| deleting(p));
    let mut blocked = false;
    for i in 0..replicas {
        match pods.get(&i) {
            None => {
                if !blocked || parallel {
                    out.push(make(i));
                }
                blocked = true;
            }
            // A finished pod is replaced (deleted, then made again).
            Some(p) if !deleting(p) && !active(p) => {
                out.push(del(p));
                blocked = true;
            }
            Some(p) => blocked |= !ready(p),
        }
        if blocked && !parallel {
            break;
        }
    }
    let healthy = !blocked && !terminating;
    // Scale down from the highest ordinal.
    let extra: Vec<&&Value> = pods
        .range(replicas..)
        .rev()
        .map(|(_, p)| p)
        .filter(|p| !deleting(p))
        .collect();
    if parallel {
        out.extend(extra.iter().map(|p| del(p)));
    } else if healthy && let Some(p) = extra.first() {
        out.push(del(p));
    }
    // Roll the template, highest ordinal first, one at a time once all are ready.
    let outdated = pods
        .range(..replicas)
        .rev()
        .map(|(_, p)| *p)
        .find(|p| p["metadata"]["labels"][REVISION_LABEL] != revision.as_str());
    if !on_delete
        && healthy
        && extra.is_empty()
        && let Some(p) = outdated
    {
        out.push(del(p));
    }
    let current: Vec<&Value> = pods
        .range(..replicas)
        .map(|(_, p)| *p)
        .filter(|p| active(p))
        .collect();
    let updated = current
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == revision.as_str())
        .count() as i64;
    let current_revision = if updated == replicas {
        revision.clone()
    } else {
        s["status"]["currentRevision"]
            .as_str()
            .map_or_else(|| revision.clone(), str::to_string)
    };
    let all_active = pods.values().filter(|p| active(p)).count();
    let status = json!({
        "observedGeneration": int(&s["metadata"]["generation"], 1),
        "replicas": all_active,
        "readyReplicas": pods.values().filter(|p| ready(p)).count(),
        "availableReplicas": pods.values().filter(|p| available(p, min_ready, world.now)).count(),
        "currentReplicas": if current_revision == revision { updated } else { current.len() as i64 - updated },
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    out.extend(super::status_if_changed(Kind::StatefulSet, s, status));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;

    fn sts(replicas: i64) -> Value {
        obj(
            "StatefulSet",
            "db",
            "s1",
            json!({"replicas": replicas, "serviceName": "db",
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": []}}}),
        )
    }

    fn created(acts: &[Action]) -> Vec<String> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Create { obj, .. } => obj["metadata"]["name"].as_str().map(String::from),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_with_stable_names() {
        let s = sts(3);
        let mut w = world(vec![(Kind::StatefulSet, vec![s.clone()])]);
        let acts = plan(&w, &s);
        assert_eq!(created(&acts), ["db-0"]);
        let Action::Create { obj, .. } = &acts[0] else {
            unreachable!()
        };
        assert_eq!(obj["spec"]["hostname"], "db-0");
        assert_eq!(obj["spec"]["subdomain"], "db");
        assert_eq!(
            obj["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            "0"
        );
        // db-0 exists but is not ready: nothing more.
        w.objects
            .insert(Kind::Pod, vec![pod("db-0", "s1", false, "t")]);
        assert!(created(&plan(&w, &s)).is_empty());
        w.objects
            .insert(Kind::Pod, vec![pod("db-0", "s1", true, "t")]);
        assert_eq!(created(&plan(&w, &s)), ["db-1"]);
    }

    #[test]
    fn scale_down_takes_the_highest_ordinal_first() {
        let s = sts(1);
        let w = world(vec![
            (Kind::StatefulSet, vec![s.clone()]),
            (
                Kind::Pod,
                vec![
                    pod("db-0", "s1", true, "t"),
                    pod("db-1", "s1", true, "t"),
                    pod("db-2", "s1", true, "t"),
                ],
            ),
        ]);
        let deleted: Vec<String> = plan(&w, &s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Delete { name, .. } => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["db-2"]);
    }
}
