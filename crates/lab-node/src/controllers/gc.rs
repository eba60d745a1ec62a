//! The garbage collector for ownerReferences among the kinds the controllers know:
//! - background: an object whose owners (of those kinds) are all gone is deleted;
//! - foreground (`foregroundDeletion` finalizer, set by the API for
//!   `propagationPolicy: Foreground`): the owner's dependents are deleted (in the foreground
//!   too), and once none is left the finalizer is removed, which ends the owner's deletion;
//! - orphan (`orphan` finalizer): the dependents lose their ownerReference to it, then the
//!   finalizer is removed.
//!
//! Owners of other kinds (a Node, a custom resource) are never taken for gone.

use super::{Action, Kind, World, deleting};
use crate::util::str_of;
use serde_json::{Value, json};
use std::collections::HashSet;

fn refs(o: &Value) -> &[Value] {
    o["metadata"]["ownerReferences"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x == f))
}

fn without_finalizer(kind: Kind, o: &Value, f: &str) -> Action {
    let rest: Vec<Value> = o["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| *x != f)
        .cloned()
        .collect();
    Action::Patch {
        kind,
        ns: str_of(o, "/metadata/namespace").to_string(),
        name: str_of(o, "/metadata/name").to_string(),
        patch: json!({"metadata": {"finalizers": rest}}),
    }
}

fn delete(kind: Kind, o: &Value, propagation: Option<&'static str>) -> Action {
    Action::Delete {
        kind,
        ns: str_of(o, "/metadata/namespace").to_string(),
        name: str_of(o, "/metadata/name").to_string(),
        uid: str_of(o, "/metadata/uid").to_string(),
        propagation,
    }
}

pub fn plan(world: &World) -> Vec<Action> {
    let uids: HashSet<&str> = Kind::ALL
        .iter()
        .flat_map(|k| world.of(*k))
        .map(|o| str_of(o, "/metadata/uid"))
        .collect();
    let all = || {
        Kind::ALL
            .iter()
            .flat_map(|k| world.of(*k).iter().map(move |o| (*k, o)))
    };
    let dependents = |uid: &str| -> Vec<(Kind, &Value)> {
        all()
            .filter(|(_, o)| refs(o).iter().any(|r| r["uid"] == uid))
            .collect()
    };
    let mut out = Vec::new();
    for (kind, o) in all() {
        let uid = str_of(o, "/metadata/uid");
        // Background: every owner is of a known kind and none exists any more.
        let owners = refs(o);
        if !owners.is_empty()
            && !deleting(o)
            && owners.iter().all(|r| {
                Kind::from_name(str_of(r, "/kind")).is_some() && !uids.contains(str_of(r, "/uid"))
            })
        {
            out.push(delete(kind, o, None));
            continue;
        }
        if !deleting(o) {
            continue;
        }
        if has_finalizer(o, "foregroundDeletion") {
            let deps = dependents(uid);
            if deps.is_empty() {
                out.push(without_finalizer(kind, o, "foregroundDeletion"));
            }
            for (k, dep) in deps.into_iter().filter(|(_, d)| !deleting(d)) {
                out.push(delete(k, dep, Some("Foreground")));
            }
        } else if has_finalizer(o, "orphan") {
            let deps = dependents(uid);
            for (k, dep) in &deps {
                let rest: Vec<Value> = refs(dep)
                    .iter()
                    .filter(|r| r["uid"] != uid)
                    .cloned()
                    .collect();
                out.push(Action::Patch {
                    kind: *k,
                    ns: str_of(dep, "/metadata/namespace").to_string(),
                    name: str_of(dep, "/metadata/name").to_string(),
                    patch: json!({"metadata": {"ownerReferences": rest}}),
                });
            }
            if deps.is_empty() {
                out.push(without_finalizer(kind, o, "orphan"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;

    fn names(acts: &[Action]) -> Vec<String> {
        acts.iter()
            .map(|a| match a {
                Action::Delete {
                    name, propagation, ..
                } => format!("delete {name} {propagation:?}"),
                Action::Patch { name, patch, .. } => format!("patch {name} {patch}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn orphans_of_gone_owners_are_deleted_others_kept() {
        let mut rs = obj("ReplicaSet", "web-1", "rs1", json!({}));
        rs["metadata"]["ownerReferences"] =
            json!([{"kind": "Deployment", "uid": "gone", "name": "web"}]);
        let mut custom = obj("ReplicaSet", "roll-1", "rs2", json!({}));
        custom["metadata"]["ownerReferences"] =
            json!([{"kind": "Rollout", "uid": "gone2", "name": "r"}]);
        let mut p = pod("web-1-a", "rs1", true, "t");
        p["metadata"]["ownerReferences"][0]["kind"] = json!("ReplicaSet");
        let w = world(vec![
            (Kind::ReplicaSet, vec![rs, custom]),
            (Kind::Pod, vec![p]),
        ]);
        assert_eq!(names(&plan(&w)), ["delete web-1 None"]);
    }

    #[test]
    fn foreground_deletes_dependents_then_lets_go() {
        let mut rs = obj("ReplicaSet", "web-1", "rs1", json!({}));
        rs["metadata"]["deletionTimestamp"] = json!("t");
        rs["metadata"]["finalizers"] = json!(["foregroundDeletion", "other"]);
        let mut p = pod("web-1-a", "rs1", true, "t");
        p["metadata"]["ownerReferences"][0]["kind"] = json!("ReplicaSet");
        let mut w = world(vec![
            (Kind::ReplicaSet, vec![rs.clone()]),
            (Kind::Pod, vec![p]),
        ]);
        assert_eq!(names(&plan(&w)), ["delete web-1-a Some(\"Foreground\")"]);
        w.objects.insert(Kind::Pod, vec![]);
        assert_eq!(
            names(&plan(&w)),
            [r#"patch web-1 {"metadata":{"finalizers":["other"]}}"#]
        );
    }

    #[test]
    fn orphan_removes_the_reference_first() {
        let mut rs = obj("ReplicaSet", "web-1", "rs1", json!({}));
        rs["metadata"]["deletionTimestamp"] = json!("t");
        rs["metadata"]["finalizers"] = json!(["orphan"]);
        let mut p = pod("web-1-a", "rs1", true, "t");
        p["metadata"]["ownerReferences"][0]["kind"] = json!("ReplicaSet");
        let mut w = world(vec![
            (Kind::ReplicaSet, vec![rs.clone()]),
            (Kind::Pod, vec![p.clone()]),
        ]);
        assert_eq!(
            names(&plan(&w)),
            [r#"patch web-1-a {"metadata":{"ownerReferences":[]}}"#]
        );
        p["metadata"]["ownerReferences"] = json!([]);
        w.objects.insert(Kind::Pod, vec![p]);
        assert_eq!(
            names(&plan(&w)),
            [r#"patch web-1 {"metadata":{"finalizers":[]}}"#]
        );
    }
}
